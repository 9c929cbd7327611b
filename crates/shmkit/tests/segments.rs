//! Segment features: several mappings, growth, backends, custom headers,
//! named roots and pointer decoding.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use common::{fresh_file, fresh_shm};
use shmkit::{
    shm_struct, BumpAllocator, Error, FullPtr, LinearAlloc, Offset, Segment, SegmentAllocator,
    SegmentId, SegmentOptions, ShmPtr,
};

#[test]
fn two_mappings_resolve_offsets_to_the_same_bytes() {
    let (options, _cleanup) = fresh_shm("two-maps");
    let a = BumpAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let b = BumpAllocator::attach(&options).unwrap();
    assert_ne!(
        a.segment().base(),
        b.segment().base(),
        "expected two mappings"
    );

    let offset = a.make_handle(0xfeed_beef_u64).unwrap();
    let in_b = b.segment().resolve(offset).unwrap();
    // SAFETY: resolved, aligned, in bounds; nobody else writes it.
    assert_eq!(unsafe { *in_b.as_ptr() }, 0xfeed_beef);
    // SAFETY: as above.
    unsafe { *in_b.as_ptr() = 7 };
    let in_a = a.segment().resolve(offset).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { *in_a.as_ptr() }, 7);

    // Both views share one cursor: B's next block comes after A's.
    let next = b.alloc_handle(8, 8).unwrap();
    assert!(next.raw() >= offset.raw() + 8);
    assert_eq!(a.used(), b.used());
}

#[test]
fn full_pointers_build_from_either_side() {
    let bump = BumpAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
    let segment = bump.segment();
    let made: FullPtr<u64> = bump.make(99u64).unwrap();
    assert!(!made.is_null());
    assert_eq!(made.segment_id(), segment.id());

    let from_shm = segment.full_ptr(made.shm()).unwrap();
    let from_local = segment.full_ptr_from_local(made.as_ptr()).unwrap();
    assert_eq!(from_shm, made);
    assert_eq!(from_local, made);
    let bytes: FullPtr<[u8; 8]> = made.cast();
    assert_eq!(bytes.offset().raw(), made.offset().raw());

    // Another segment's pointer, a stack address and null are refused.
    let foreign = ShmPtr::new(SegmentId(segment.id().0 ^ 1), made.offset());
    assert!(matches!(
        segment.full_ptr(foreign),
        Err(Error::ForeignPointer)
    ));
    let on_stack = 5u64;
    assert!(matches!(
        segment.full_ptr_from_local(&on_stack as *const u64),
        Err(Error::ForeignPointer)
    ));
    assert!(matches!(
        segment.full_ptr(ShmPtr::<u64>::new(segment.id(), Offset::null())),
        Err(Error::NullOffset)
    ));
}

#[test]
fn decoding_checks_bounds_and_alignment() {
    let segment = Segment::create(&SegmentOptions::private().size(1 << 16)).unwrap();
    let size = segment.size();
    assert!(matches!(
        segment.resolve(Offset::<u64>::from_raw(size - 4)),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        segment.resolve(Offset::<u64>::from_raw(u64::MAX - 2)),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        segment.resolve(Offset::<u64>::from_raw(4099)),
        Err(Error::Misaligned { align: 8, .. })
    ));
    assert!(matches!(
        segment.resolve_array(Offset::<u64>::from_raw(4096), u64::MAX / 4),
        Err(Error::InvalidSize { .. })
    ));
    assert!(segment.resolve(Offset::<u64>::from_raw(size - 8)).is_ok());
    assert!(segment
        .resolve_array(Offset::<u64>::from_raw(4096), (size - 4096) / 8)
        .is_ok());
}

#[test]
fn growth_is_seen_by_every_mapping_without_moving() {
    let (options, _cleanup) = fresh_shm("grow");
    let options = options.size(1 << 20).max_size(64 << 20);
    let a = BumpAllocator::create(&options).unwrap();
    let b = BumpAllocator::attach(&options).unwrap();
    let base_a = a.segment().base();
    let base_b = b.segment().base();
    assert_eq!(a.capacity(), b.capacity());

    a.segment().grow(8 << 20).unwrap();
    assert_eq!(b.segment().size(), 8 << 20);
    // B writes at the far end of the new space through its old mapping.
    let far = Offset::<u64>::from_raw((8 << 20) - 8);
    // SAFETY: in bounds after the growth; aligned.
    unsafe { *b.segment().resolve(far).unwrap().as_ptr() = 0xabc };
    // SAFETY: as above.
    assert_eq!(
        unsafe { *a.segment().resolve(far).unwrap().as_ptr() },
        0xabc
    );
    assert_eq!(a.segment().base(), base_a);
    assert_eq!(b.segment().base(), base_b);

    // Allocation grows the segment by itself when it runs out.
    let big = b.alloc_handle(20 << 20, 8).unwrap();
    assert!(a.segment().size() >= big.raw() + (20 << 20));
    // Past the maximum: a clear error, and nothing consumed.
    let used = a.used();
    assert!(matches!(
        a.alloc_handle(100 << 20, 8),
        Err(Error::OutOfMemory { .. })
    ));
    assert_eq!(a.used(), used);
    assert!(matches!(
        a.segment().grow(128 << 20),
        Err(Error::GrowBeyondMax { .. })
    ));
}

#[test]
fn file_segments_persist_across_handles() {
    let (path, _cleanup) = fresh_file("file");
    let options = SegmentOptions::file(&path).size(1 << 20);
    let offset = {
        let bump = BumpAllocator::create(&options).unwrap();
        bump.make_handle(1234u32).unwrap()
    };
    let bump = BumpAllocator::attach(&options).unwrap();
    // SAFETY: resolved and aligned.
    assert_eq!(
        unsafe { *bump.segment().resolve(offset).unwrap().as_ptr() },
        1234
    );
}

#[test]
fn a_memfd_segment_is_attached_through_its_descriptor() {
    let created = BumpAllocator::create(&SegmentOptions::memfd("test").size(1 << 20)).unwrap();
    let offset = created.make_handle(77u64).unwrap();
    let fd = created
        .segment()
        .fd()
        .unwrap()
        .try_clone_to_owned()
        .unwrap();
    let attached = BumpAllocator::attach(&SegmentOptions::fd(fd)).unwrap();
    assert_ne!(attached.segment().base(), created.segment().base());
    // SAFETY: resolved and aligned.
    assert_eq!(
        unsafe { *attached.segment().resolve(offset).unwrap().as_ptr() },
        77
    );
}

shm_struct! {
    /// An application header for the test.
    struct AppHeader {
        generation: AtomicU64,
        flags: [u32; 4],
    }
}

#[test]
fn the_custom_header_is_shared_and_sized() {
    let (options, _cleanup) = fresh_shm("custom");
    let options = options.size(1 << 20).custom_header_len(64);
    let a = Segment::create(&options).unwrap();
    let b = Segment::attach(&options).unwrap();
    // SAFETY: checked pointer; the field we touch is an atomic.
    let header_a = unsafe { a.custom_header::<AppHeader>().unwrap().as_ref() };
    header_a.generation.store(41, Ordering::Release);
    // SAFETY: as above; `flags` is only read, and nobody writes it.
    let header_b = unsafe { b.custom_header::<AppHeader>().unwrap().as_ref() };
    assert_eq!(header_b.generation.fetch_add(1, Ordering::AcqRel), 41);
    assert_eq!(header_b.flags, [0; 4]);
    assert!(matches!(
        a.custom_header::<[u64; 9]>(),
        Err(Error::InvalidSize { .. })
    ));
}

#[test]
fn named_roots_let_processes_meet() {
    let (options, _cleanup) = fresh_shm("roots");
    let a = BumpAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let b = BumpAllocator::attach(&options).unwrap();
    let config = a.make_handle(5u64).unwrap();
    a.segment().set_root("config", config).unwrap();
    assert_eq!(b.segment().root::<u64>("config"), Some(config));
    assert_eq!(b.segment().root::<u64>("other"), None);
    assert!(matches!(
        b.segment().set_root("config", config),
        Err(Error::Root { .. })
    ));
    // Fill the table; every name is found, the 33rd is refused.
    for i in 1..32 {
        let name = format!("root-{i}");
        b.segment()
            .set_root(&name, Offset::<u8>::from_raw(4096 + i))
            .unwrap();
    }
    for i in 1..32 {
        assert_eq!(
            a.segment()
                .root::<u8>(&format!("root-{i}"))
                .map(Offset::raw),
            Some(4096 + i)
        );
    }
    assert_eq!(a.segment().roots().len(), 32);
    assert!(matches!(
        a.segment().set_root("one-too-many", config),
        Err(Error::Root { .. })
    ));
    assert!(a.segment().set_root(&"x".repeat(49), config).is_err());
    assert!(a
        .segment()
        .set_root("out-of-range", Offset::<u8>::from_raw(u64::MAX))
        .is_err());
}

#[test]
fn racing_root_publishers_agree_on_one_winner() {
    let segment = Segment::create(&SegmentOptions::private().size(1 << 20)).unwrap();
    // All four publish at once, so the claim really races.
    let start = std::sync::Barrier::new(4);
    let wins = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4u64)
            .map(|i| {
                let (segment, start) = (&segment, &start);
                scope.spawn(move || {
                    start.wait();
                    segment
                        .set_root("leader", Offset::<u8>::from_raw(4096 + i))
                        .is_ok()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|&won| won)
            .count()
    });
    assert_eq!(wins, 1, "exactly one publisher wins");
    let winners = segment
        .roots()
        .iter()
        .filter(|(name, _)| name == "leader")
        .count();
    assert_eq!(winners, 1);
}

#[test]
fn a_hostile_size_word_cannot_push_blocks_past_the_mapping() {
    let bump = BumpAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
    let mapped = bump.segment().size();
    // The size word lives at offset 32 of the header; claim a terabyte.
    // SAFETY: the test owns the segment; the word is in the header.
    unsafe {
        let word = bump.segment().base().as_ptr().add(32).cast::<u64>();
        word.write_volatile(1 << 40);
    }
    assert_eq!(
        bump.segment().size(),
        mapped,
        "size must stay within the mapping"
    );
    assert!(matches!(
        bump.alloc_handle(2 << 20, 8),
        Err(Error::OutOfMemory { .. })
    ));
    assert!(matches!(
        bump.segment().resolve(Offset::<u64>::from_raw(mapped)),
        Err(Error::OutOfBounds { .. })
    ));
}
