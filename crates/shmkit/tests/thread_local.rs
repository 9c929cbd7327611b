//! The thread-local caching allocator: caches, validation, alignment,
//! growth, threads (past the slot bound too), real processes (dead ones
//! included) and a model-based proptest.

mod common;

use common::paged::{self, ctx, op, tag_block, verify_block, PAGE, PROCESSES};
use common::{child_env, fresh_shm};
use proptest::prelude::*;
use shmkit::{
    Error, MemContext, SegmentAllocator, SegmentOptions, ShmAllocator, ThreadLocalAllocator,
};

fn private(size: u64) -> ThreadLocalAllocator {
    ThreadLocalAllocator::create(&SegmentOptions::private().size(size)).unwrap()
}

#[test]
fn allocate_free_and_reuse() {
    paged::allocate_free_and_reuse::<ThreadLocalAllocator>();
}

#[test]
fn memory_freed_at_one_size_is_reusable_at_another() {
    paged::memory_freed_at_one_size_is_reusable_at_another(
        |heap: &ThreadLocalAllocator, blocks| {
            // Freed by another thread, whose cache goes back to the pages when
            // it exits.
            std::thread::scope(|scope| {
                let handle = scope.spawn(|| {
                    for offset in blocks {
                        // SAFETY: nothing uses the block after it is freed.
                        unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
                    }
                    let (_, cached) = heap.cache_usage();
                    assert!(cached > 0, "the freeing thread caches some blocks");
                    heap.check().unwrap();
                });
                handle.join().unwrap();
            });
            assert_eq!(heap.cache_usage().1, 0, "the thread's cache was given back");
        },
    );
}

#[test]
fn bad_frees_are_refused_and_change_nothing() {
    paged::bad_frees_are_refused_and_change_nothing::<ThreadLocalAllocator>();
}

#[test]
fn alignment_of_every_power_of_two() {
    paged::alignment_of_every_power_of_two::<ThreadLocalAllocator>();
}

#[test]
fn out_of_memory_then_growth() {
    paged::out_of_memory_then_growth::<ThreadLocalAllocator>("tl-grow");
}

#[test]
fn threads_allocate_tag_and_free_each_others_blocks() {
    paged::threads_allocate_tag_and_free_each_others_blocks(|heap: &ThreadLocalAllocator, rest| {
        assert_eq!(heap.cache_usage(), (0, 0), "exited threads keep no slot");
        std::thread::scope(|scope| {
            let handle = scope.spawn(|| {
                for (offset, size) in rest {
                    verify_block(heap, offset, size);
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
                }
            });
            handle.join().unwrap();
        });
        assert_eq!(heap.cache_usage(), (0, 0));
    });
}

#[test]
#[ignore = "child process of processes_share_one_thread_local_allocator"]
fn child_thread_local_worker() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let worker: u64 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    let heap = ThreadLocalAllocator::attach(&SegmentOptions::shm(name)).unwrap();
    let freed_foreign = paged::exchange_blocks(&heap, worker);
    println!("freed-foreign {freed_foreign}");
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    // SAFETY: ends the process at once; nothing runs afterwards.
    unsafe { libc::_exit(0) };
}

#[test]
fn processes_share_one_thread_local_allocator() {
    let (parent, _cleanup) = paged::share_between_processes::<ThreadLocalAllocator>(
        "tl-multi",
        "child_thread_local_worker",
    );
    // The dead children's slots are still claimed, their caches counted.
    let (slots, _) = parent.cache_usage();
    assert!(slots as u64 > PROCESSES, "{slots} slots");
    // Before recovery, check names them as a crash's traces, not corruption.
    match parent.check() {
        Err(Error::NeedsRecovery { caches, .. }) => assert_eq!(caches, PROCESSES),
        other => panic!("the dead children's caches need recovery: {other:?}"),
    }
    assert_eq!(parent.reclaim_dead_slots(), PROCESSES as usize);
    assert_eq!(parent.reclaim_dead_slots(), 0);
    assert_eq!(
        parent.cache_usage().0,
        1,
        "only the parent's own slot is left"
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
    assert!(after.free_bytes > empty.capacity - 2 * PAGE, "{after:?}");
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
        paged::random_sequence_matches_a_model::<ThreadLocalAllocator>(ops)?;
    }
}

#[test]
fn the_cache_serves_the_same_thread_and_is_given_back_at_thread_exit() {
    let heap = private(2 << 20);
    std::thread::scope(|scope| {
        let handle = scope.spawn(|| {
            let a = heap.allocate_offset(&ctx(), 40, 8).unwrap();
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free_offset(&ctx(), a) }.unwrap();
            assert_eq!(heap.cache_usage(), (1, 1));
            // The cached block is not live: every use of it is refused.
            assert!(heap.usable_size(a).is_err());
            assert!(heap.full_ptr(a).is_err());
            assert!(matches!(
                // SAFETY: nothing uses the block after it is freed.
                unsafe { heap.free_offset(&ctx(), a) },
                Err(Error::InvalidFree { .. })
            ));
            heap.check().unwrap();
            let b = heap.allocate_offset(&ctx(), 48, 8).unwrap();
            assert_eq!(a, b, "served from the cache");
            assert_eq!(heap.cache_usage(), (1, 0));
            // A full magazine sends the rest to the pages.
            let blocks: Vec<u64> = (0..20)
                .map(|_| heap.allocate_offset(&ctx(), 40, 8).unwrap())
                .collect();
            for offset in blocks {
                // SAFETY: nothing uses the block after it is freed.
                unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
            }
            assert_eq!(heap.cache_usage(), (1, 8));
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free_offset(&ctx(), b) }.unwrap();
            heap.check().unwrap();
        });
        handle.join().unwrap();
    });
    assert_eq!(heap.cache_usage(), (0, 0));
    let stats = heap.stats();
    assert_eq!((stats.live_allocations, stats.allocated_bytes), (0, 0));
    assert_eq!(stats.free_bytes, stats.capacity);
    heap.check().unwrap();
}

#[test]
fn mem_context_thread_picks_the_slot_and_dropping_the_view_releases_it() {
    let (options, _cleanup) = fresh_shm("tl-ctx");
    let heap = ThreadLocalAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let other = ThreadLocalAllocator::attach(&options).unwrap();
    let ctx = MemContext {
        thread: Some(7),
        ..MemContext::default()
    };
    let a = heap.allocate_offset(&ctx, 100, 8).unwrap();
    // Freed through another view of the same segment (as another process
    // would): the block lands in that view's cache for this thread.
    // SAFETY: nothing uses the block after it is freed.
    unsafe { other.free_offset(&MemContext::current(), a) }.unwrap();
    assert_eq!(heap.cache_usage(), (2, 1));
    heap.check().unwrap();
    drop(other);
    assert_eq!(
        heap.cache_usage(),
        (1, 0),
        "the dropped view gave its slot back"
    );
    heap.check().unwrap();
    assert_eq!(heap.stats().allocated_bytes, 0);
}

#[test]
fn more_threads_than_slots_fall_back_to_the_shared_pages() {
    let heap = private(8 << 20);
    let threads = ThreadLocalAllocator::THREAD_SLOTS + 16;
    let barrier = common::PatientBarrier::new(threads);
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for thread in 0..threads as u64 {
            let heap = &heap;
            let barrier = &barrier;
            handles.push(scope.spawn(move || {
                let first = heap.allocate_offset(&ctx(), 64, 8).unwrap();
                // SAFETY: nothing uses the block after it is freed.
                unsafe { heap.free_offset(&ctx(), first) }.unwrap();
                // Everyone holds (or failed to get) a slot at once.
                barrier.wait();
                let mut blocks = Vec::new();
                for seq in 0..50u64 {
                    let size = 16 + (seq as usize * 40) % 2000;
                    let offset = heap.allocate_offset(&ctx(), size, 8).unwrap();
                    tag_block(heap, offset, size, thread, seq);
                    blocks.push((offset, size, seq));
                }
                for (offset, size, seq) in blocks {
                    assert_eq!(verify_block(heap, offset, size), (thread, seq));
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
                }
                barrier.wait();
                let (slots, _) = heap.cache_usage();
                // No thread exits (giving its slot back) before all looked.
                barrier.wait();
                assert_eq!(slots, ThreadLocalAllocator::THREAD_SLOTS);
            }));
        }
        // Explicit joins wait for the threads' TLS destructors too.
        for handle in handles {
            handle.join().unwrap();
        }
    });
    assert_eq!(heap.cache_usage(), (0, 0));
    let stats = heap.stats();
    assert_eq!((stats.live_allocations, stats.allocated_bytes), (0, 0));
    heap.check().unwrap();
}

#[test]
fn a_forked_child_claims_its_own_slot_and_leaves_the_parents_alone() {
    let (options, _cleanup) = fresh_shm("tl-fork");
    let heap = ThreadLocalAllocator::create(&options.size(4 << 20)).unwrap();
    let cached = heap.allocate(64).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(cached) }.unwrap(); // now in this thread's magazine
                                           // SAFETY: the child only allocates, frees and checks through the
                                           // allocator (whose locks no other thread holds), then leaves with _exit.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork failed");
    if child == 0 {
        // The parent's cached block must not come out of the child's
        // allocate: the child has a slot of its own.
        let code = match heap.allocate(64) {
            Ok(block) if block.offset() != cached.offset() => {
                // SAFETY: nothing uses the block after it is freed.
                i32::from(unsafe { heap.free(block) }.is_err() || heap.check().is_err())
            }
            _ => 2,
        };
        // SAFETY: leave without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: our own child.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFEXITED(status), "child status {status:#x}");
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the child used the parent's slot"
    );
    // The parent's cache is intact; the dead child's slot is reclaimed.
    assert_eq!(heap.allocate(64).unwrap().offset(), cached.offset());
    assert_eq!(heap.reclaim_dead_slots(), 1);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(cached) }.unwrap();
    heap.check().unwrap();
}
