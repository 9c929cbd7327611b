//! The bump and stack allocators: alignment, sizes, exhaustion, scopes,
//! resets and contention between threads.

mod common;

use std::sync::atomic::AtomicU32;

use common::{assert_disjoint, ranges_from_threads};

use shmkit::{
    BumpAllocator, Error, LinearAlloc, SegmentAllocator, SegmentOptions, StackAllocator,
    CACHE_LINE, SIMD_ALIGN,
};

fn bump(size: u64) -> BumpAllocator {
    BumpAllocator::create(&SegmentOptions::private().size(size)).unwrap()
}

#[test]
fn every_alignment_is_honoured() {
    let bump = bump(1 << 20);
    for align in [0usize, 1, 2, 3, 4, 8, 12, 16, 24, 64, 100, 256, 4096] {
        for size in [1usize, 3, 17] {
            let block = bump.alloc(size, align).unwrap();
            let align = align.max(1);
            assert_eq!(
                block.offset().raw() % align as u64,
                0,
                "offset, align {align}"
            );
            let power_of_two_part = align & align.wrapping_neg();
            assert_eq!(
                block.as_ptr() as usize % power_of_two_part,
                0,
                "address, align {align}"
            );
        }
    }
    assert_eq!(
        bump.alloc_cache_aligned(10).unwrap().as_ptr() as usize % CACHE_LINE,
        0
    );
    assert_eq!(
        bump.alloc_simd_aligned(10).unwrap().as_ptr() as usize % SIMD_ALIGN,
        0
    );
    assert!(matches!(
        bump.alloc(8, 8192),
        Err(Error::InvalidAlignment { align: 8192, .. })
    ));
}

#[test]
fn zero_size_requests_get_distinct_offsets() {
    let bump = bump(1 << 20);
    let a = bump.alloc_handle(0, 1).unwrap();
    let b = bump.alloc_handle(0, 1).unwrap();
    assert_ne!(a, b);
    assert!(bump.owns_offset(a.raw()));
}

#[test]
fn a_request_that_does_not_fit_consumes_nothing() {
    let bump = bump(64 << 10);
    bump.alloc(1000, 8).unwrap();
    let used = bump.used();
    match bump.alloc(1 << 20, 8) {
        Err(Error::OutOfMemory {
            requested,
            available,
        }) => {
            assert_eq!(requested, 1 << 20);
            assert_eq!(available, bump.remaining());
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert_eq!(bump.used(), used);
    // The rest of the space is still usable to the last byte.
    let rest = bump.remaining() as usize;
    bump.alloc(rest, 1).unwrap();
    assert_eq!(bump.remaining(), 0);
    assert!(bump.alloc(1, 1).is_err());
}

#[test]
fn typed_allocation_checks_overflow_and_places_values() {
    let bump = bump(1 << 20);
    assert!(matches!(
        bump.allocate::<u64>(usize::MAX / 4),
        Err(Error::InvalidSize { .. })
    ));
    let array = bump.allocate_handle::<u32>(10).unwrap();
    assert_eq!(array.raw() % 4, 0);
    let value = bump.make([1u16, 2, 3]).unwrap();
    // SAFETY: freshly placed, aligned value.
    assert_eq!(unsafe { *value.as_ptr() }, [1, 2, 3]);
    let counter = bump.make_handle(AtomicU32::new(3)).unwrap();
    // SAFETY: resolved, aligned, atomics.
    let counter = unsafe { bump.segment().resolve(counter).unwrap().as_ref() };
    assert_eq!(counter.load(std::sync::atomic::Ordering::Relaxed), 3);
}

#[test]
fn owns_covers_exactly_the_handed_out_part() {
    let bump = bump(1 << 20);
    let block = bump.alloc(100, 8).unwrap();
    assert!(bump.owns(block.as_ptr()));
    assert!(bump.owns(block.as_ptr().wrapping_add(99)));
    assert!(!bump.owns(block.as_ptr().wrapping_add(100)));
    let elsewhere = 0u8;
    assert!(!bump.owns(&elsewhere));
}

#[test]
fn reset_rewinds_and_secure_reset_zeroes() {
    let mut bump = bump(1 << 20);
    let block = bump.alloc(4096, 8).unwrap();
    // SAFETY: the block is ours and 4096 bytes long.
    unsafe { std::ptr::write_bytes(block.as_ptr(), 0xEE, 4096) };
    bump.reset();
    assert_eq!(bump.used(), 0);
    let again = bump.alloc(4096, 8).unwrap();
    assert_eq!(again.offset(), block.offset());
    // SAFETY: as above.
    assert_eq!(
        unsafe { *again.as_ptr() },
        0xEE,
        "plain reset keeps the bytes"
    );
    bump.secure_reset();
    assert_eq!(bump.used(), 0);
    // SAFETY: the bytes are inside the segment; nobody uses them now.
    let bytes = unsafe { std::slice::from_raw_parts(again.as_ptr(), 4096) };
    assert!(
        bytes.iter().all(|&b| b == 0),
        "secure reset left data behind"
    );
}

#[test]
fn scopes_give_memory_back_and_nest() {
    let bump = bump(1 << 20);
    bump.alloc(10, 1).unwrap();
    let before = bump.used();
    {
        let outer = bump.scope();
        outer.alloc(1000, 8).unwrap();
        {
            let inner = bump.scope();
            inner.alloc(5000, 64).unwrap();
            assert!(inner.will_rewind());
        }
        assert!(bump.used() < before + 2000);
        outer.make(5u64).unwrap();
        assert!(outer.will_rewind());
    }
    assert_eq!(bump.used(), before);
}

#[test]
fn a_scope_never_frees_what_someone_else_allocated() {
    let bump = bump(1 << 20);
    let scope = bump.scope();
    scope.alloc(100, 8).unwrap();
    // Someone else allocates after the scope's block...
    let theirs = bump.alloc_handle(64, 8).unwrap();
    // ...so the scope keeps working but may not rewind.
    scope.alloc(100, 8).unwrap();
    assert!(!scope.will_rewind());
    assert!(!scope.finish());
    assert!(bump.owns_offset(theirs.raw()));
    let next = bump.alloc_handle(8, 8).unwrap();
    assert!(
        next.raw() > theirs.raw(),
        "their block was handed out again"
    );
}

#[test]
fn a_scope_that_grows_the_segment_still_rewinds() {
    let bump = BumpAllocator::create(&SegmentOptions::private().size(64 << 10).max_size(16 << 20))
        .unwrap();
    let before = bump.used();
    {
        let scope = bump.scope();
        scope.alloc(1 << 20, 8).unwrap();
        assert!(scope.will_rewind());
    }
    assert_eq!(bump.used(), before);
}

#[test]
fn threads_contending_never_receive_overlapping_blocks() {
    let bump = bump(64 << 20);
    let threads = 4;
    let mut ranges = ranges_from_threads(threads, |t| {
        let mut mine = Vec::new();
        for i in 0..20_000u64 {
            let size = 1 + (i * 7 + t) % 200;
            let align = [1, 8, 16, 24][(i % 4) as usize];
            match bump.alloc_handle(size as usize, align) {
                Ok(offset) => mine.push((offset.raw(), size)),
                Err(Error::OutOfMemory { .. }) => break,
                Err(other) => panic!("{other}"),
            }
        }
        mine
    });
    assert_eq!(ranges.len(), threads as usize * 20_000);
    assert_disjoint(&mut ranges);
    let last = ranges.last().unwrap();
    assert!(last.0 + last.1 <= bump.segment().size());
}

#[test]
fn threads_filling_a_large_bump_get_every_byte_exactly_once() {
    // Large, so that a cursor with a different path far from the end
    // (a fetch_add, say) would be exercised too.
    let mut bump = bump(24 << 20);
    let capacity = bump.capacity();
    for round in 0..2 {
        let mut ranges = ranges_from_threads(4, |_| {
            let mut mine = Vec::new();
            loop {
                match bump.alloc_handle(64, 8) {
                    Ok(offset) => mine.push((offset.raw(), 64)),
                    Err(Error::OutOfMemory { .. }) => break,
                    Err(other) => panic!("{other}"),
                }
            }
            mine
        });
        assert!(ranges.iter().all(|r| r.0 % 8 == 0), "round {round}");
        assert_disjoint(&mut ranges);
        let last = ranges.last().unwrap();
        assert!(last.0 + last.1 <= bump.segment().size(), "round {round}");
        // Every byte handed out once, none lost: the data area, less what
        // cannot hold one more block.
        let handed_out = ranges.len() as u64 * 64;
        assert_eq!(bump.used(), handed_out, "round {round}");
        assert!(
            capacity - handed_out < 64,
            "round {round}: {handed_out} of {capacity}"
        );
        // A reset makes the whole area usable again, fast path included.
        bump.reset();
        assert_eq!(bump.used(), 0);
    }
}

#[test]
fn misaligned_neighbours_never_break_alignment() {
    let bump = bump(32 << 20);
    let mut ranges = ranges_from_threads(3, |t| {
        let mut mine = Vec::new();
        for i in 0..50_000u64 {
            // One thread leaves the cursor odd; the others ask for aligned
            // blocks of multiples of 8.
            let (size, align) = if t == 0 && i % 3 == 0 {
                (7, 1)
            } else {
                (64, 8)
            };
            let offset = bump.alloc_handle(size, align).unwrap().raw();
            assert_eq!(offset % align as u64, 0);
            mine.push((offset, size as u64));
        }
        mine
    });
    assert_disjoint(&mut ranges);
}

#[test]
fn odd_alignments_hold_far_from_the_end_too() {
    let bump = bump(32 << 20);
    for align in [3usize, 5, 6, 7, 12, 24] {
        for size in [8usize, 24, 64] {
            let offset = bump.alloc_handle(size, align).unwrap().raw();
            assert_eq!(offset % align as u64, 0, "size {size} align {align}");
        }
    }
    // Small alignments after an odd size pack as tightly as before: no
    // request wastes more than its alignment.
    let before = bump.used();
    bump.alloc_handle(4, 4).unwrap();
    for _ in 0..1000 {
        bump.alloc_handle(8, 4).unwrap();
    }
    assert_eq!(bump.used() - before, 4 + 8 * 1000 + padding_to(before, 4));
}

/// Bytes from `at` (relative to the data area, which is 8-aligned or more)
/// to the next multiple of `align`.
fn padding_to(at: u64, align: u64) -> u64 {
    (align - at % align) % align
}

#[test]
fn a_buffer_backed_allocator_stays_in_its_buffer() {
    let mut buffer = vec![0u8; 64 << 10];
    let range = buffer.as_ptr_range();
    let mut bump = BumpAllocator::in_buffer(&mut buffer).unwrap();
    let mut count = 0;
    while let Ok(block) = bump.alloc(100, 8) {
        let ptr = block.as_ptr() as *const u8;
        assert!(range.contains(&ptr) && range.contains(&ptr.wrapping_add(99)));
        count += 1;
    }
    assert!(count > 500);
    bump.reset();
    assert_eq!(bump.used(), 0);
    assert!(matches!(
        bump.alloc(8, 4096),
        Err(Error::InvalidAlignment { .. })
    ));
}

fn stack(size: u64) -> StackAllocator {
    StackAllocator::create(&SegmentOptions::private().size(size)).unwrap()
}

#[test]
fn the_stack_frees_in_lifo_order_only() {
    let stack = stack(1 << 20);
    let a = stack.alloc_handle(100, 8).unwrap();
    let b = stack.alloc_handle(50, 64).unwrap();
    let c = stack.alloc_handle(7, 1).unwrap();
    assert_eq!(b.raw() % 64, 0);
    // SAFETY: nothing uses the block after it is freed.
    assert!(matches!(
        unsafe { stack.free(a) },
        Err(Error::NotTopOfStack { .. })
    ));
    // SAFETY: nothing uses the block after it is freed.
    assert!(matches!(
        unsafe { stack.free(b) },
        Err(Error::NotTopOfStack { .. })
    ));
    // SAFETY: nothing uses the block after it is freed.
    unsafe { stack.free(c) }.unwrap();
    let used_after_c = stack.used();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { stack.free(b) }.unwrap();
    assert!(stack.used() < used_after_c);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { stack.free(a) }.unwrap();
    assert_eq!(stack.used(), 0);
    // The space is reused at once.
    assert_eq!(stack.alloc_handle(100, 8).unwrap(), a);
}

#[test]
fn the_stack_refuses_double_and_bogus_frees_without_damage() {
    let stack = stack(1 << 20);
    let a = stack.alloc_handle(64, 8).unwrap();
    let b = stack.alloc_handle(64, 8).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { stack.free(b) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    assert!(matches!(
        unsafe { stack.free(b) },
        Err(Error::InvalidFree { .. })
    ));
    let used = stack.used();
    for bogus in [
        0u64,
        1,
        8,
        a.raw() + 8,
        a.raw() - 8,
        stack.segment().size() + 64,
        u64::MAX,
    ] {
        // SAFETY: nothing uses the block after it is freed.
        let result = unsafe { stack.free(shmkit::Offset::<u8>::from_raw(bogus)) };
        assert!(
            matches!(
                result,
                Err(Error::InvalidFree { .. }) | Err(Error::NotTopOfStack { .. })
            ),
            "free({bogus}) gave {result:?}"
        );
    }
    assert_eq!(stack.used(), used, "a refused free changed the stack");
    // SAFETY: nothing uses the block after it is freed.
    unsafe { stack.free(a) }.unwrap();
    assert!(matches!(
        stack.alloc(1 << 21, 8),
        Err(Error::OutOfMemory { .. })
    ));
    assert_eq!(stack.used(), 0);
}

#[test]
fn a_full_stack_grows_its_segment_up_to_the_maximum() {
    let stack = StackAllocator::create(&SegmentOptions::private().size(64 << 10).max_size(1 << 20))
        .unwrap();
    let before = stack.segment().size();
    let mut blocks = Vec::new();
    while let Ok(block) = stack.alloc_handle(4000, 8) {
        blocks.push(block);
    }
    assert!(stack.segment().size() > before, "the segment grew");
    assert_eq!(stack.segment().size(), 1 << 20, "up to the maximum");
    // Most of the maximum was handed out (each block has a 16-byte header).
    assert!(
        blocks.len() as u64 * 4016 > (1 << 20) - (64 << 10),
        "{}",
        blocks.len()
    );
    assert!(matches!(
        stack.alloc_handle(4000, 8),
        Err(Error::OutOfMemory { .. })
    ));
    for block in blocks.into_iter().rev() {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { stack.free(block) }.unwrap();
    }
    assert_eq!(stack.used(), 0);
}

#[test]
fn threads_share_one_stack_without_overlap() {
    let stack = stack(16 << 20);
    let mut ranges = ranges_from_threads(4, |t| {
        (0..5000u64)
            .map(|i| {
                let size = 1 + (i + t) % 100;
                (stack.alloc_handle(size as usize, 8).unwrap().raw(), size)
            })
            .collect()
    });
    assert_eq!(ranges.len(), 4 * 5000);
    assert_disjoint(&mut ranges);
}

#[test]
fn a_reset_stack_never_accepts_a_stale_block() {
    let mut stack = stack(1 << 20);
    let old = stack.alloc_handle(100, 8).unwrap();
    stack.reset();
    // A new block whose padding covers the old block's header.
    let live = stack.alloc_handle(52, 64).unwrap();
    assert!(live.raw() > old.raw());
    // SAFETY: nothing uses the block after it is freed.
    assert!(matches!(
        unsafe { stack.free(old) },
        Err(Error::InvalidFree { .. })
    ));
    // SAFETY: nothing uses the block after it is freed.
    unsafe { stack.free(live) }.unwrap();
}

#[test]
fn a_local_front_end_carves_chunks_and_gives_back_its_tail() {
    let bump = bump(16 << 20);
    let before = bump.used();
    let mut ranges = ranges_from_threads(3, |_| {
        let local = bump.local(4096);
        let mut mine = Vec::new();
        for i in 0..5000u64 {
            let size = 1 + i % 300;
            mine.push((local.alloc_handle(size as usize, 16).unwrap().raw(), size));
        }
        // Large requests bypass the chunk.
        mine.push((local.alloc_handle(10_000, 8).unwrap().raw(), 10_000));
        mine
    });
    assert_disjoint(&mut ranges);
    for &(offset, _) in &ranges {
        assert_eq!(offset % 8, 0);
    }
    // Alone, a local front end gives back everything past its last block.
    let solo = bump.local(1 << 16);
    let last = solo.alloc_handle(10, 8).unwrap();
    drop(solo);
    assert_eq!(bump.used() + bump.segment().data_offset(), last.raw() + 10);
    assert!(bump.used() > before);
}
