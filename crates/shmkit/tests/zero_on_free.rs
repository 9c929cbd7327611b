//! Data must not linger: a segment created with `zero_on_free` has every
//! freed block zeroed (by whichever process frees it), and the linear
//! allocators' `secure_reset` zeroes what they handed out.

mod common;

use common::fresh_shm;
use shmkit::{
    BuddyAllocator, BumpAllocator, FreeListAllocator, LinearAlloc, MemContext, Offset,
    PoolAllocator, Segment, SegmentAllocator, SegmentOptions, ShmAllocator, SizeClassAllocator,
    StackAllocator, ThreadLocalAllocator,
};

/// What the user writes; an allocator's own links and keys never equal it.
const SECRET: u64 = 0xabab_abab_abab_abab;

/// The 8-byte words of `len` bytes at `offset` that still hold the secret.
fn lingering(segment: &Segment, offset: u64, len: usize) -> usize {
    let words = segment
        .resolve_array(Offset::<u64>::from_raw(offset), (len / 8) as u64)
        .unwrap();
    // SAFETY: in bounds and aligned (checked by `resolve_array`); the block
    // is free and nobody else uses this segment.
    let words = unsafe { std::slice::from_raw_parts(words.as_ptr(), len / 8) };
    words.iter().filter(|&&w| w == SECRET).count()
}

/// Allocates blocks of several sizes from `writer`, fills them with the
/// secret, frees them through `freer` (another attachment of the same
/// segment), and returns the secret words left behind, read through a third
/// attachment.
fn freed_secrets(
    name: &str,
    writer: &dyn ShmAllocator,
    freer: &dyn ShmAllocator,
    sizes: &[usize],
) -> usize {
    let ctx = MemContext::default();
    let blocks: Vec<(u64, usize)> = sizes
        .iter()
        .map(|&size| {
            let offset = writer.allocate_offset(&ctx, size, 16).unwrap();
            let usable = writer.usable_size(offset).unwrap();
            let block = writer.full_ptr(offset).unwrap();
            // SAFETY: a live block of `usable` bytes, ours alone; 16-aligned.
            unsafe {
                std::slice::from_raw_parts_mut(block.as_ptr() as *mut u64, usable / 8).fill(SECRET)
            };
            (offset, usable)
        })
        .collect();
    for &(offset, _) in &blocks {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { freer.free_offset(&ctx, offset) }.unwrap();
    }
    let reader = Segment::attach(&SegmentOptions::shm(name)).unwrap();
    blocks
        .iter()
        .map(|&(offset, usable)| lingering(&reader, offset, usable))
        .sum()
}

/// With the option every freed block is clean; without it (the control,
/// which shows the check can fail) the data is still there.
fn check_kind<A: SegmentAllocator + ShmAllocator>(kind: &str, params: &A::Params, sizes: &[usize]) {
    for zero in [true, false] {
        let (options, _cleanup) = fresh_shm(kind);
        let name = common::shm_name(&options);
        let writer =
            A::create_with(&options.clone().size(8 << 20).zero_on_free(zero), params).unwrap();
        let freer = A::attach_with(&options, params).unwrap();
        assert_eq!(Segment::attach(&options).unwrap().zero_on_free(), zero);
        let left = freed_secrets(&name, &writer, &freer, sizes);
        if zero {
            assert_eq!(left, 0, "{kind}: freed data lingers with zero_on_free");
        } else {
            assert!(
                left > 0,
                "{kind}: without zero_on_free the data should linger"
            );
        }
        writer.check().unwrap();
    }
}

const SIZES: [usize; 5] = [16, 64, 500, 3000, 200 << 10];

#[test]
fn the_pool_zeroes_freed_slots() {
    let params = shmkit::PoolParams::new(&[64, 512, 4096]).unwrap();
    check_kind::<PoolAllocator>("zero-pool", &params, &[16, 64, 500, 3000]);
}

#[test]
fn the_free_list_zeroes_freed_blocks() {
    check_kind::<FreeListAllocator>("zero-free-list", &Default::default(), &SIZES);
}

#[test]
fn the_buddy_allocator_zeroes_freed_blocks() {
    check_kind::<BuddyAllocator>("zero-buddy", &Default::default(), &SIZES);
}

#[test]
fn the_size_class_allocator_zeroes_freed_blocks_and_runs() {
    check_kind::<SizeClassAllocator>("zero-size-class", &Default::default(), &SIZES);
}

#[test]
fn the_thread_local_allocator_zeroes_blocks_it_caches() {
    check_kind::<ThreadLocalAllocator>("zero-thread-local", &Default::default(), &SIZES);
}

#[test]
fn secure_reset_zeroes_what_the_linear_allocators_handed_out() {
    let mut bump = BumpAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
    let mut stack = StackAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
    let blocks = [
        bump.alloc(4000, 16).unwrap(),
        stack.alloc(4000, 16).unwrap(),
        stack.alloc(100, 16).unwrap(),
    ];
    for block in blocks {
        // SAFETY: live blocks of at least 96 bytes, 16-aligned, ours alone.
        unsafe { std::slice::from_raw_parts_mut(block.as_ptr() as *mut u64, 12).fill(SECRET) };
    }
    bump.secure_reset();
    stack.secure_reset();
    assert_eq!(lingering(bump.segment(), blocks[0].offset().raw(), 4000), 0);
    assert_eq!(
        lingering(stack.segment(), blocks[1].offset().raw(), 4000),
        0
    );
    assert_eq!(lingering(stack.segment(), blocks[2].offset().raw(), 96), 0);
    assert_eq!(stack.used(), 0);
    assert_eq!(bump.used(), 0);
}
