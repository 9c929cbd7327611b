//! The size-class allocator: classes, page reuse across sizes, validation,
//! alignment, growth, threads, real processes and a model-based proptest.

mod common;

use common::child_env;
use common::paged::{self, ctx, op, verify_block, PAGE};
use proptest::prelude::*;
use shmkit::{SegmentAllocator, SegmentOptions, ShmAllocator, SizeClassAllocator};

fn private(size: u64) -> SizeClassAllocator {
    SizeClassAllocator::create(&SegmentOptions::private().size(size)).unwrap()
}

#[test]
fn allocate_free_and_reuse() {
    paged::allocate_free_and_reuse::<SizeClassAllocator>();
}

#[test]
fn memory_freed_at_one_size_is_reusable_at_another() {
    paged::memory_freed_at_one_size_is_reusable_at_another(|heap: &SizeClassAllocator, blocks| {
        for offset in blocks {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
        }
    });
}

#[test]
fn bad_frees_are_refused_and_change_nothing() {
    paged::bad_frees_are_refused_and_change_nothing::<SizeClassAllocator>();
}

#[test]
fn alignment_of_every_power_of_two() {
    paged::alignment_of_every_power_of_two::<SizeClassAllocator>();
}

#[test]
fn out_of_memory_then_growth() {
    paged::out_of_memory_then_growth::<SizeClassAllocator>("sizeclass-grow");
}

#[test]
fn threads_allocate_tag_and_free_each_others_blocks() {
    paged::threads_allocate_tag_and_free_each_others_blocks(|heap: &SizeClassAllocator, rest| {
        for (offset, size) in rest {
            verify_block(heap, offset, size);
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
        }
    });
}

#[test]
#[ignore = "child process of processes_share_one_size_class_allocator"]
fn child_size_class_worker() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let worker: u64 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    let heap = SizeClassAllocator::attach(&SegmentOptions::shm(name)).unwrap();
    let freed_foreign = paged::exchange_blocks(&heap, worker);
    println!("freed-foreign {freed_foreign}");
}

#[test]
fn processes_share_one_size_class_allocator() {
    let (parent, _cleanup) = paged::share_between_processes::<SizeClassAllocator>(
        "sizeclass-multi",
        "child_size_class_worker",
    );
    let stats = parent.stats();
    assert_eq!(
        (stats.live_allocations, stats.allocated_bytes),
        (0, 0),
        "{stats:?}"
    );
    parent.check().unwrap();
}

#[test]
fn stats_and_check() {
    let heap = private(2 << 20);
    let empty = heap.stats();
    assert_eq!(empty.free_bytes, empty.capacity);
    assert_eq!(empty.largest_free_block, empty.capacity);
    assert_eq!(empty.fragmentation(), 0.0);
    let a = heap.allocate_offset(&ctx(), 40, 8).unwrap();
    let b = heap.allocate_offset(&ctx(), 70_000, 8).unwrap();
    let stats = heap.stats();
    assert_eq!(stats.allocated_bytes, 70_040);
    assert_eq!(stats.live_allocations, 2);
    assert_eq!(stats.peak_bytes, 70_040);
    // One small page and a two-page run are in use.
    assert!(stats.free_bytes < empty.capacity - 2 * PAGE);
    assert!(stats.free_bytes > empty.capacity - 3 * PAGE);
    assert_eq!(stats.capacity, empty.capacity);
    heap.check().unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free_offset(&ctx(), a) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free_offset(&ctx(), b) }.unwrap();
    let after = heap.stats();
    assert_eq!(after.allocated_bytes, 0);
    assert_eq!(after.peak_bytes, 70_040);
    assert_eq!(after.free_bytes, empty.capacity);
    heap.check().unwrap();
    // Reallocation keeps contents, in place within a class.
    let block = heap.allocate(100).unwrap();
    // SAFETY: 100 bytes of ours.
    unsafe { std::ptr::write_bytes(block.as_ptr(), 0xab, 100) };
    // SAFETY: nothing uses the block after it is freed.
    let same = unsafe { heap.reallocate(block, 110) }.unwrap();
    assert_eq!(same.offset(), block.offset());
    // SAFETY: nothing uses the block after it is freed.
    let moved = unsafe { heap.reallocate(same, 5000) }.unwrap();
    // SAFETY: at least 100 bytes kept.
    assert!(unsafe { std::slice::from_raw_parts(moved.as_ptr(), 100) }
        .iter()
        .all(|&b| b == 0xab));
    assert_eq!(heap.stats().allocated_bytes, 5000);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(moved) }.unwrap();
    heap.check().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn random_sequences_match_a_model(ops in proptest::collection::vec(op(), 1..40)) {
        paged::random_sequence_matches_a_model::<SizeClassAllocator>(ops)?;
    }
}
