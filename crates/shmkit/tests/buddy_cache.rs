//! The buddy allocator's per-thread caches (`alloc/buddy/thread_cache.rs`)
//! under attack.
//!
//! Run with `cargo test -p shmkit --test buddy_cache`.

mod common;

use common::fresh_shm;
use shmkit::{BuddyAllocator, MemContext, SegmentAllocator, ShmAllocator};

/// A request of a cached order (a 128-byte block with 64-byte units).
const SMALL: usize = 100;

/// A cached block whose unit lies past the heap this handle has seen (its
/// process-local `tables_backed`) is dropped from the magazine by
/// `take_cached`, not handed out and not given back: a block cached in no
/// magazine, with no crash at all. Here the two handles are in one process
/// (one thread holds one slot of the segment for both); across processes
/// the same happens when a thread of a process that attached before the
/// heap grew claims a slot an exited thread left with blocks cached.
#[test]
fn a_cached_block_past_the_heap_a_handle_has_seen_is_not_lost() {
    let (options, _cleanup) = fresh_shm("buddy-cache-seen");
    let first =
        BuddyAllocator::create(&options.clone().size(256 << 10).max_size(16 << 20)).unwrap();
    // Attached while the heap is small: its tables_backed is the heap end now.
    let second = BuddyAllocator::attach(&options).unwrap();
    let initial = first.segment().size();
    let ctx = MemContext::current();
    // Grow the heap through the first handle until a small block lies past
    // what the second handle has seen.
    let mut kept = Vec::new();
    let far = loop {
        let offset = first.allocate_offset(&ctx, SMALL, 8).unwrap();
        if offset >= initial {
            break offset;
        }
        kept.push(offset);
        kept.push(first.allocate_offset(&ctx, 16 << 10, 8).unwrap());
    };
    // Cached in this thread's magazine (the slot is the thread's, whichever
    // handle it frees through).
    // SAFETY: nothing uses the block after it is freed.
    unsafe { first.free_offset(&ctx, far) }.unwrap();
    first.check().unwrap();
    // The second handle pops it (and, with refills, the rest of the
    // magazine), cannot read its state byte (past its `tables_backed`) and
    // drops it: `check` then reports blocks cached in no magazine.
    let again = second.allocate_offset(&ctx, SMALL, 8).unwrap();
    let checked = first.check();
    assert!(
        again == far || checked.is_ok(),
        "the cached block {far} was dropped from the magazine, not handed out \
         (got {again}); check: {checked:?}"
    );
    assert!(checked.is_ok(), "{checked:?}");
    // SAFETY: nothing uses the blocks after they are freed.
    unsafe {
        second.free_offset(&ctx, again).unwrap();
        for offset in kept {
            first.free_offset(&ctx, offset).unwrap();
        }
    }
    first.check().unwrap();
}

/// Two threads free the same block at the same instant, round after round:
/// exactly one free succeeds each time, whichever path it takes (both
/// threads have caches; once a magazine is full, its thread's frees take
/// the lock, so cached and locked frees race too), and no block is ever
/// handed out twice.
#[test]
fn racing_double_frees_are_refused_exactly() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const ROUNDS: u64 = 3000;
    let buddy = BuddyAllocator::create(&shmkit::SegmentOptions::private().size(8 << 20)).unwrap();
    let barrier = std::sync::Barrier::new(3);
    let target = AtomicU64::new(0);
    let (wins, refused) = (AtomicU64::new(0), AtomicU64::new(0));
    let done = AtomicBool::new(false);
    let freer = || {
        let ctx = MemContext::current();
        loop {
            barrier.wait();
            if done.load(Ordering::Acquire) {
                return;
            }
            let block = target.load(Ordering::Acquire);
            // SAFETY: a double free on purpose; the block is not used.
            match unsafe { buddy.free_offset(&ctx, block) } {
                Ok(()) => wins.fetch_add(1, Ordering::AcqRel),
                Err(shmkit::Error::InvalidFree { .. }) => refused.fetch_add(1, Ordering::AcqRel),
                Err(other) => panic!("{other}"),
            };
            barrier.wait();
        }
    };
    let mut handed = std::collections::BTreeSet::new();
    std::thread::scope(|scope| {
        scope.spawn(freer);
        scope.spawn(freer);
        let ctx = MemContext::current();
        let mut held = Vec::new();
        for round in 0..ROUNDS {
            let block = buddy.allocate_offset(&ctx, SMALL, 16).unwrap();
            target.store(block, Ordering::Release);
            barrier.wait();
            barrier.wait();
            // Now and then keep a block, so that later hand-outs can be
            // compared with it: none may be a block still held.
            if round % 7 == 0 {
                let kept = buddy.allocate_offset(&ctx, SMALL, 16).unwrap();
                assert!(handed.insert(kept), "block {kept} handed out twice");
                held.push(kept);
            }
        }
        done.store(true, Ordering::Release);
        barrier.wait();
        for block in held {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { buddy.free_offset(&ctx, block) }.unwrap();
        }
    });
    assert_eq!(wins.load(Ordering::Acquire), ROUNDS);
    assert_eq!(refused.load(Ordering::Acquire), ROUNDS);
    buddy.check().unwrap();
    assert_eq!(buddy.stats().live_allocations, 0);
}
