//! The malloc allocator: the shared trait over the system allocator, typed
//! helpers, and containers of the allocator-api2 ecosystem.

use allocator_api2::boxed::Box as ApiBox;
use allocator_api2::vec::Vec as ApiVec;
use shmkit::{Error, MallocAllocator, MemContext, SegmentId, SegmentOptions, ShmAllocator};

#[test]
fn blocks_round_trip_and_bad_frees_are_refused() {
    let malloc = MallocAllocator::new();
    let a = malloc.allocate(100).unwrap();
    assert_eq!(a.segment_id(), SegmentId::PROCESS_LOCAL);
    assert_eq!(malloc.usable_size(a.offset().raw()).unwrap(), 100);
    let stats = malloc.stats();
    assert_eq!((stats.allocated_bytes, stats.live_allocations), (100, 1));
    // A pointer into the middle, a stack address and a double free: refused,
    // and the accounting does not move.
    let local = 7u64;
    for bogus in [a.offset().raw() + 8, &local as *const u64 as u64, 0] {
        assert!(matches!(
            // SAFETY: nothing uses the block after it is freed.
            unsafe { malloc.free_offset(&MemContext::default(), bogus) },
            Err(Error::InvalidFree { .. })
        ));
    }
    assert_eq!(malloc.stats(), stats);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { malloc.free(a) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    assert!(matches!(
        // SAFETY: nothing uses the block after it is freed.
        unsafe { malloc.free(a) },
        Err(Error::InvalidFree { .. })
    ));
    assert_eq!(malloc.stats().live_allocations, 0);
    assert_eq!(malloc.stats().peak_bytes, 100);
    malloc.check().unwrap();
}

#[test]
fn alignment_is_honoured_and_checked() {
    let malloc = MallocAllocator::new();
    for shift in 0..=12 {
        let align = 1usize << shift;
        let block = malloc.allocate_aligned(24, align).unwrap();
        assert_eq!(block.as_ptr() as usize % align, 0);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { malloc.free(block) }.unwrap();
    }
    assert!(matches!(
        malloc.allocate_aligned(8, 24),
        Err(Error::InvalidAlignment { .. })
    ));
}

#[test]
fn reallocation_keeps_contents_both_ways() {
    let malloc = MallocAllocator::new();
    let block = malloc.allocate(64).unwrap();
    // SAFETY: a live 64-byte block.
    unsafe { std::ptr::copy_nonoverlapping(b"0123456789abcdef".as_ptr(), block.as_ptr(), 16) };
    // SAFETY: nothing uses the block after it is freed.
    let grown = unsafe { malloc.reallocate(block, 4096) }.unwrap();
    // SAFETY: at least 16 bytes were copied into the new block.
    assert_eq!(
        unsafe { std::slice::from_raw_parts(grown.as_ptr(), 16) },
        b"0123456789abcdef"
    );
    // SAFETY: nothing uses the block after it is freed.
    let shrunk = unsafe { malloc.reallocate(grown, 4) }.unwrap();
    // SAFETY: 4 bytes kept.
    assert_eq!(
        unsafe { std::slice::from_raw_parts(shrunk.as_ptr(), 4) },
        b"0123"
    );
    assert_eq!(malloc.stats().live_allocations, 1);
    assert_eq!(malloc.stats().allocated_bytes, 4);
}

#[test]
fn typed_objects_and_arrays_run_their_destructors() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static DROPS: AtomicU64 = AtomicU64::new(0);

    shmkit::shm_struct! {
        struct Counted { value: u64 }
    }
    impl Drop for Counted {
        fn drop(&mut self) {
            DROPS.fetch_add(self.value, Ordering::Relaxed);
        }
    }
    impl Default for Counted {
        fn default() -> Self {
            Counted { value: 1 }
        }
    }

    let malloc = MallocAllocator::new();
    let one = malloc.new_obj(Counted { value: 100 }).unwrap();
    // SAFETY: made by new_obj above, not used afterwards.
    unsafe { malloc.del_obj(one).unwrap() };
    assert_eq!(DROPS.load(Ordering::Relaxed), 100);

    let array = malloc.new_objs::<Counted>(10).unwrap();
    // SAFETY: 10 live values; shrinking to 4 drops 6 of them.
    let array = unsafe { malloc.realloc_objs(array, 10, 4).unwrap() };
    assert_eq!(DROPS.load(Ordering::Relaxed), 106);
    // SAFETY: growing to 8 keeps 4 and defaults 4 more.
    let array = unsafe { malloc.realloc_objs(array, 4, 8).unwrap() };
    // SAFETY: 8 live values, freed once.
    unsafe { malloc.del_objs(array, 8).unwrap() };
    assert_eq!(DROPS.load(Ordering::Relaxed), 114);

    let from_iter = malloc.new_objs_from(3, [5u32, 6, 7]).unwrap();
    // SAFETY: three values were written.
    assert_eq!(
        unsafe { std::slice::from_raw_parts(from_iter.as_ptr(), 3) },
        [5, 6, 7]
    );
    assert!(matches!(
        malloc.new_objs_from(5, [1u32, 2]),
        Err(Error::InvalidSize { .. })
    ));
    assert_eq!(
        malloc.stats().live_allocations,
        1,
        "the short array was given back"
    );
}

#[test]
fn ecosystem_containers_run_on_it() {
    let malloc = MallocAllocator::new();
    let mut numbers = ApiVec::new_in(&malloc);
    numbers.extend(0..10_000u64);
    assert_eq!(numbers.iter().sum::<u64>(), 49_995_000);
    let boxed = ApiBox::new_in([7u8; 300], &malloc);
    assert_eq!(boxed[299], 7);
    let mut map = hashbrown::HashMap::new_in(&malloc);
    for i in 0..1000u32 {
        map.insert(i, i * 2);
    }
    assert_eq!(map[&500], 1000);
    assert!(malloc.stats().live_allocations >= 3);
    drop((numbers, boxed, map));
    assert_eq!(malloc.stats().live_allocations, 0);
}

#[test]
fn attaching_malloc_is_a_clear_error() {
    assert!(matches!(
        MallocAllocator::attach(&SegmentOptions::shm("anything")),
        Err(Error::Unsupported(_))
    ));
}

#[test]
fn the_trait_works_behind_a_trait_object() {
    let boxed: Box<dyn ShmAllocator> = Box::new(MallocAllocator::new());
    let block = boxed.allocate(32).unwrap();
    assert_eq!(boxed.kind(), shmkit::AllocatorKind::Malloc);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { boxed.free(block) }.unwrap();
    boxed.check().unwrap();
}
