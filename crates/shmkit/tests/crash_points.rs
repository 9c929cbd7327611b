//! Kills that land inside an operation: a child process arms one of the
//! allocators' named crash points (the `crash-points` feature) and is
//! SIGKILLed by the thread that reaches it, mid-allocation or mid-free.
//! For every point, this process then finds what the child left:
//!
//! - `check()` reports the traces as [`Error::NeedsRecovery`] or passes,
//!   never as corruption;
//! - the hand-off log gives back the block the child was handed and had not
//!   recorded anywhere, and nothing else;
//! - after the application's own reaping (the blocks the child said it
//!   held, its unfinished free) and [`ShmAllocator::recover`], `check()`
//!   passes, no block is lost, and the whole segment allocates again.
//!
//! Run with `cargo test -p shmkit --features crash-points --test crash_points`.
#![cfg(feature = "crash-points")]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;

use common::{child_env, fresh_shm, shm_name, spawn_self};
use shmkit::containers::{MpmcRing, ShmHashMap, ShmVec};
use shmkit::{
    shm_struct, BuddyAllocator, Error, FreeListAllocator, LinearAlloc, MemContext, Offset,
    PoolAllocator, PoolParams, Segment, SegmentAllocator, SegmentOptions, ShmAllocator,
    SizeClassAllocator, StackAllocator, ThreadLocalAllocator,
};

const SEGMENT_SIZE: u64 = 8 << 20;
const SMALL: usize = 200;
const LARGE: usize = 100 << 10;

fn create(kind: &str, options: &SegmentOptions) -> Box<dyn ShmAllocator> {
    let options = options.clone().size(SEGMENT_SIZE);
    match kind {
        "pool" => Box::new(
            PoolAllocator::create_with(&options, &PoolParams::new(&[256, 4096]).unwrap()).unwrap(),
        ),
        "free_list" => Box::new(FreeListAllocator::create(&options).unwrap()),
        "buddy" => Box::new(BuddyAllocator::create(&options).unwrap()),
        "size_class" => Box::new(SizeClassAllocator::create(&options).unwrap()),
        "thread_local" => Box::new(ThreadLocalAllocator::create(&options).unwrap()),
        other => panic!("unknown allocator {other}"),
    }
}

fn attach(kind: &str, options: &SegmentOptions) -> Box<dyn ShmAllocator> {
    match kind {
        "pool" => Box::new(PoolAllocator::attach(options).unwrap()),
        "free_list" => Box::new(FreeListAllocator::attach(options).unwrap()),
        "buddy" => Box::new(BuddyAllocator::attach(options).unwrap()),
        "size_class" => Box::new(SizeClassAllocator::attach(options).unwrap()),
        "thread_local" => Box::new(ThreadLocalAllocator::attach(options).unwrap()),
        other => panic!("unknown allocator {other}"),
    }
}

/// Tells the parent about a block the child holds, before anything that
/// may kill it (what an application writes to its own records).
fn announce(what: &str, offset: u64) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{what} {offset}").unwrap();
    out.flush().unwrap();
}

/// Runs the ignored test `child` as a process on `options`' segment (told
/// its name in `SHMKIT_TEST_SEGMENT`, and `env`), checks that it was
/// SIGKILLed at its crash point, and returns what it printed.
fn killed_child(child: &str, options: &SegmentOptions, env: &[(&str, &str)]) -> String {
    let segment = shm_name(options);
    let mut vars: Vec<(&str, String)> = vec![("SHMKIT_TEST_SEGMENT", segment)];
    vars.extend(env.iter().map(|&(key, value)| (key, value.to_owned())));
    let output = spawn_self(child, &vars).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGKILL),
        "{child} {env:?} did not die at its crash point: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The child: holds one block, then arms the point and runs the operation
/// that reaches it. Reaching the point kills it; surviving is a failure.
#[test]
#[ignore = "child process of the crash-point tests"]
fn child_dies_at_a_crash_point() {
    let kind = child_env("SHMKIT_CRASH_KIND");
    let point: &'static str = child_env("SHMKIT_CRASH_POINT").leak();
    let operation = child_env("SHMKIT_CRASH_OPERATION");
    let heap = attach(
        &kind,
        &SegmentOptions::shm(child_env("SHMKIT_TEST_SEGMENT")),
    );
    let ctx = MemContext::current();
    let size = if operation == "allocate-large" {
        LARGE
    } else {
        SMALL
    };
    if operation == "allocate-first" {
        shmkit::crash_point::arm(point);
    }
    let held_size = if operation == "free-large" {
        LARGE
    } else {
        SMALL
    };
    let held = heap.allocate_offset(&ctx, held_size, 16).unwrap();
    announce("held", held);
    match operation.as_str() {
        "allocate" | "allocate-large" => {
            // A block freed to this thread's cache first (the thread-local
            // allocator hands it out again from there).
            let cached = heap.allocate_offset(&ctx, size, 16).unwrap();
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free_offset(&ctx, cached) }.unwrap();
            shmkit::crash_point::arm(point);
            let _ = heap.allocate_offset(&ctx, size, 16);
        }
        "allocate-next" => {
            shmkit::crash_point::arm(point);
            let _ = heap.allocate_offset(&ctx, size, 16);
        }
        "returned" => {
            // Killed after the allocation returned, before the offset went
            // anywhere: only the hand-off log knows the block.
            let _ = heap.allocate_offset(&ctx, size, 16).unwrap();
            // SAFETY: raise has no memory preconditions.
            unsafe { libc::raise(libc::SIGKILL) };
        }
        "free-many" => {
            // More frees than a magazine holds: the last gives half back
            // to the heap.
            let blocks: Vec<u64> = (0..9)
                .map(|_| heap.allocate_offset(&ctx, size, 16).unwrap())
                .collect();
            for &block in &blocks {
                announce("held", block);
                announce("freeing", block);
            }
            shmkit::crash_point::arm(point);
            for block in blocks {
                // SAFETY: nothing uses the block after it is freed.
                let _ = unsafe { heap.free_offset(&ctx, block) };
            }
        }
        "free" | "free-large" => {
            announce("freeing", held);
            shmkit::crash_point::arm(point);
            // SAFETY: nothing uses the block after it is freed.
            let _ = unsafe { heap.free_offset(&ctx, held) };
        }
        "thread-exit" => {
            // A thread whose cache goes back to the pages as it exits.
            std::thread::scope(|scope| {
                scope.spawn(|| {
                    let ctx = MemContext::current();
                    let cached = heap.allocate_offset(&ctx, size, 16).unwrap();
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { heap.free_offset(&ctx, cached) }.unwrap();
                    shmkit::crash_point::arm(point);
                });
            });
        }
        other => panic!("unknown operation {other}"),
    }
    panic!("{kind}: the child survived crash point {point} ({operation})");
}

/// Runs the child to its death at `point` and checks what it left behind.
fn dies_at(kind: &str, point: &str, operation: &str) {
    dies_at_then(kind, point, operation, |_, _| {});
}

/// [`dies_at`], with `inspect` run on the allocator and the blocks the child
/// held as soon as it is dead, before any repair.
fn dies_at_then(
    kind: &str,
    point: &str,
    operation: &str,
    inspect: impl Fn(&dyn ShmAllocator, &BTreeSet<u64>),
) {
    let (options, _cleanup) = fresh_shm(&format!("crash-{kind}"));
    let heap = create(kind, &options);
    let empty = heap.stats();
    let stdout = killed_child(
        "child_dies_at_a_crash_point",
        &options,
        &[
            ("SHMKIT_CRASH_KIND", kind),
            ("SHMKIT_CRASH_POINT", point),
            ("SHMKIT_CRASH_OPERATION", operation),
        ],
    );
    let announced = |what: &str| -> BTreeSet<u64> {
        stdout
            .lines()
            // The test harness may have begun the line ("test ... ").
            .filter_map(|line| line.split(what).nth(1)?.trim().parse().ok())
            .collect()
    };
    let (held, freeing) = (announced("held "), announced("freeing "));
    inspect(&*heap, &held);

    // Before any repair: a crash's traces, never "corrupt".
    match heap.check() {
        Ok(()) | Err(Error::NeedsRecovery { .. }) => {}
        Err(other) => panic!("{kind} at {point}: check calls a crash's traces {other}"),
    }
    // The application's reaper: the hand-off log names the block the child
    // was handed and recorded nowhere; what it announced, it holds.
    let ctx = MemContext::default();
    let handed: BTreeSet<u64> = heap.take_dead_handoffs().into_iter().collect();
    for &offset in handed.difference(&held) {
        assert_eq!(
            operation, "returned",
            "{kind} at {point}: the hand-off log names {offset}, which was never handed out"
        );
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, offset) }.unwrap();
    }
    if operation == "returned" {
        assert_eq!(
            handed.difference(&held).count(),
            1,
            "{kind}: the block handed out just before the kill is in the log"
        );
    }
    for &offset in held.difference(&freeing) {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, offset) }.unwrap();
    }
    // The child is dead (other tests fork theirs meanwhile: see the helper).
    let report = common::recover_once_alone(&*heap);
    // The free the child was in: done, undone (the block is still live) or
    // taken over by recovery.
    for &offset in &freeing {
        if heap.usable_size(offset).is_ok() {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free_offset(&ctx, offset) }.unwrap();
        }
    }
    heap.check()
        .unwrap_or_else(|e| panic!("{kind} at {point}: check after recovery: {e}"));
    let after = heap.stats();
    assert_eq!(
        (after.live_allocations, after.allocated_bytes),
        (0, 0),
        "{kind} at {point} ({operation}): blocks lost to the kill (recovery: {report})"
    );
    assert!(heap.take_dead_handoffs().is_empty(), "{kind}: records left");
    // Every byte is allocatable again: as many blocks as fit in a segment
    // that saw the same sizes come and go without a kill (pools and pages
    // stay with the sizes they first served, and this thread's cache keeps
    // what it freed).
    let mut again = Vec::new();
    while let Ok(offset) = heap.allocate_offset(&ctx, 4000, 16) {
        again.push(offset);
    }
    let mut fresh_blocks = Vec::new();
    {
        let (fresh_options, _fresh_cleanup) = fresh_shm(&format!("crash-fresh-{kind}"));
        let fresh = create(kind, &fresh_options);
        let sizes: &[usize] = match operation {
            "allocate-large" => &[SMALL, LARGE],
            "free-large" => &[LARGE],
            _ => &[SMALL, SMALL],
        };
        let history: Vec<u64> = sizes
            .iter()
            .map(|&size| fresh.allocate_offset(&ctx, size, 16).unwrap())
            .collect();
        for offset in history {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { fresh.free_offset(&ctx, offset) }.unwrap();
        }
        while let Ok(offset) = fresh.allocate_offset(&ctx, 4000, 16) {
            fresh_blocks.push(offset);
        }
    }
    // At least as many: the fresh segment's thread cache may still hold
    // its small blocks where the recovered one gave everything back.
    assert!(
        again.len() >= fresh_blocks.len(),
        "{kind} at {point}: capacity lost ({} blocks; a fresh segment holds {})",
        again.len(),
        fresh_blocks.len()
    );
    for offset in again {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, offset) }.unwrap();
    }
    assert_eq!(heap.stats().allocated_bytes, empty.allocated_bytes);
}

#[test]
fn a_pool_allocation_killed_before_its_record_is_rolled_back() {
    dies_at("pool", "pool.alloc.pending", "allocate");
}

#[test]
fn a_pool_allocation_killed_after_its_record_is_rolled_back() {
    dies_at("pool", "pool.alloc.recorded", "allocate");
}

#[test]
fn a_pool_free_killed_before_the_slot_is_listed_completes() {
    dies_at("pool", "pool.free.unlisted", "free");
}

#[test]
fn a_pool_block_handed_out_to_a_killed_thread_is_in_the_log() {
    dies_at("pool", "", "returned");
}

#[test]
fn a_size_class_allocation_killed_after_its_claim_is_rolled_back() {
    dies_at("size_class", "size_class.alloc.claimed", "allocate");
}

#[test]
fn a_stale_free_of_a_block_being_handed_out_is_refused() {
    // The child claimed the bit of the block after its held one (a fresh
    // page's second block) and died before setting its slack: a free of
    // that offset (a stale copy from the block's earlier life) is refused
    // and changes nothing, so recovery can still tell the block was never
    // handed out.
    dies_at_then(
        "size_class",
        "size_class.alloc.claimed",
        "allocate-next",
        |heap, held| {
            let first = *held.iter().next().expect("the child held a block");
            let stride = heap.usable_size(first).unwrap() as u64;
            let ctx = MemContext::default();
            assert!(matches!(
                // SAFETY: nothing uses the block after it is freed.
                unsafe { heap.free_offset(&ctx, first + stride) },
                Err(Error::InvalidFree { .. })
            ));
            assert!(matches!(
                heap.usable_size(first + stride),
                Err(Error::InvalidFree { .. })
            ));
        },
    );
}

#[test]
fn a_size_class_allocation_killed_after_its_record_is_rolled_back() {
    dies_at("size_class", "size_class.alloc.recorded", "allocate");
}

#[test]
fn a_size_class_allocation_killed_on_a_fresh_page_is_rolled_back() {
    dies_at(
        "size_class",
        "size_class.alloc.fresh_page",
        "allocate-first",
    );
}

#[test]
fn a_large_size_class_allocation_killed_before_its_record_is_rolled_back() {
    dies_at(
        "size_class",
        "size_class.alloc.large_pending",
        "allocate-large",
    );
}

#[test]
fn a_large_size_class_allocation_killed_between_its_tails_and_its_head_is_rolled_back() {
    dies_at(
        "size_class",
        "size_class.alloc.large_tails",
        "allocate-large",
    );
}

#[test]
fn a_large_size_class_free_killed_before_its_tails_are_cleared_completes() {
    dies_at(
        "size_class",
        "size_class.free.large_head_freed",
        "free-large",
    );
}

#[test]
fn a_size_class_free_killed_after_marking_completes() {
    dies_at("size_class", "size_class.free.marked", "free");
}

#[test]
fn a_size_class_block_handed_out_to_a_killed_thread_is_in_the_log() {
    dies_at("size_class", "", "returned");
}

#[test]
fn a_cached_allocation_killed_before_its_record_is_rolled_back() {
    dies_at("thread_local", "thread_local.alloc.cached", "allocate");
}

#[test]
fn a_cached_allocation_killed_after_its_record_is_rolled_back() {
    dies_at("thread_local", "thread_local.alloc.recorded", "allocate");
}

#[test]
fn a_cache_given_back_by_a_killed_thread_is_reclaimed() {
    dies_at(
        "thread_local",
        "thread_local.give_back.unheld",
        "thread-exit",
    );
}

#[test]
fn a_thread_local_block_handed_out_to_a_killed_thread_is_in_the_log() {
    dies_at("thread_local", "", "returned");
}

// Large blocks: small ones go through the thread cache, without the lock.
#[test]
fn a_free_list_allocation_killed_before_its_commit_is_rolled_back() {
    dies_at("free_list", "free_list.alloc.intended", "allocate-large");
}

#[test]
fn a_free_list_allocation_killed_after_its_commit_is_rolled_back() {
    dies_at("free_list", "free_list.alloc.committed", "allocate-large");
}

#[test]
fn a_free_list_free_killed_under_the_lock_completes() {
    dies_at("free_list", "free_list.free.committed", "free-large");
}

#[test]
fn a_free_list_cached_free_killed_before_its_magazine_is_recovered() {
    dies_at("free_list", "free_list.cache.flagged", "free");
}

#[test]
fn a_free_list_cached_allocation_killed_after_the_pop_is_recovered() {
    dies_at("free_list", "free_list.cache.popped", "allocate");
}

#[test]
fn a_free_list_cached_allocation_killed_after_the_take_is_rolled_back() {
    dies_at("free_list", "free_list.cache.taken", "allocate");
}

#[test]
fn a_free_list_refill_killed_splitting_its_chunk_is_recovered() {
    dies_at(
        "free_list",
        "free_list.cache.refill_split",
        "allocate-first",
    );
}

#[test]
fn a_free_list_cache_killed_giving_blocks_back_is_recovered() {
    dies_at("free_list", "free_list.cache.giving_back", "free-many");
}

#[test]
fn a_free_list_block_handed_out_to_a_killed_thread_is_in_the_log() {
    dies_at("free_list", "", "returned");
}

#[test]
fn a_buddy_allocation_killed_before_its_commit_is_rolled_back() {
    dies_at("buddy", "buddy.alloc.intended", "allocate-large");
}

#[test]
fn a_buddy_allocation_killed_after_its_commit_is_rolled_back() {
    dies_at("buddy", "buddy.alloc.committed", "allocate-large");
}

#[test]
fn a_buddy_free_killed_under_the_lock_completes() {
    dies_at("buddy", "buddy.free.committed", "free-large");
}

#[test]
fn a_buddy_locked_free_of_a_small_block_killed_is_completed() {
    // Blocks of a cached order are marked cached before the commit: the
    // free a kill interrupts is completed by recovery. (The child's free of
    // its small block goes to its cache; the handle's drop gives it back
    // under the lock, where the kill lands.)
    dies_at("buddy", "buddy.free.committed", "free");
}

#[test]
fn a_buddy_cached_free_killed_before_its_magazine_is_recovered() {
    dies_at("buddy", "buddy.cache.flagged", "free");
}

#[test]
fn a_buddy_cached_allocation_killed_after_the_pop_is_recovered() {
    dies_at("buddy", "buddy.cache.popped", "allocate");
}

#[test]
fn a_buddy_cached_allocation_killed_after_the_take_is_rolled_back() {
    dies_at("buddy", "buddy.cache.taken", "allocate");
}

#[test]
fn a_buddy_refill_killed_splitting_its_chunk_is_recovered() {
    dies_at("buddy", "buddy.cache.refill_split", "allocate-first");
}

#[test]
fn a_buddy_cache_killed_giving_blocks_back_is_recovered() {
    dies_at("buddy", "buddy.cache.giving_back", "free-many");
}

#[test]
fn a_buddy_block_handed_out_to_a_killed_thread_is_in_the_log() {
    dies_at("buddy", "", "returned");
}

/// The stack child: holds one block, then dies inside the carve of the
/// next, between moving the top and writing the block's header.
#[test]
#[ignore = "child process of the stack crash-point test"]
fn child_dies_carving_a_stack_block() {
    let stack =
        StackAllocator::attach(&SegmentOptions::shm(child_env("SHMKIT_TEST_SEGMENT"))).unwrap();
    let held = stack.alloc_handle(100, 8).unwrap();
    announce("held", held.raw());
    shmkit::crash_point::arm("stack.carve.claimed");
    let _ = stack.alloc_handle(300, 8);
    panic!("the child survived the stack's crash point");
}

#[test]
fn a_stack_carve_killed_before_its_header_is_rolled_back() {
    let (options, _cleanup) = fresh_shm("crash-stack");
    let stack = StackAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let stdout = killed_child("child_dies_carving_a_stack_block", &options, &[]);
    let held: u64 = stdout
        .split("held ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .expect("the child announced its block");
    // A block carved and freed above the dead carve: the top comes back to
    // the dead carve's word.
    let above = stack.alloc_handle(64, 8).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { stack.free(above) }.unwrap();
    assert!(stack.used() > 400, "the dead carve holds the top");
    // The free of the block under it rolls the dead carve back first.
    // SAFETY: nothing uses the block after it is freed.
    unsafe { stack.free(Offset::<u8>::from_raw(held)) }.unwrap();
    assert_eq!(stack.used(), 0);
    // And the stack carves and frees as before.
    let again = stack.alloc_handle(300, 8).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { stack.free(again) }.unwrap();
    assert_eq!(stack.used(), 0);
}

/// The named-root child: dies publishing a root, its slot claimed and
/// half-written.
#[test]
#[ignore = "child process of the named-root crash-point test"]
fn child_dies_publishing_a_root() {
    let segment = Segment::attach(&SegmentOptions::shm(child_env("SHMKIT_TEST_SEGMENT"))).unwrap();
    shmkit::crash_point::arm("root.claimed");
    let _ = segment.set_root("crash.root", Offset::<u64>::from_raw(segment.data_offset()));
    panic!("the child survived the root's crash point");
}

#[test]
fn a_root_slot_left_half_written_by_a_killed_publisher_is_taken_over() {
    let (options, _cleanup) = fresh_shm("crash-root");
    let segment = Segment::create(&options.clone().size(1 << 20)).unwrap();
    killed_child("child_dies_publishing_a_root", &options, &[]);
    assert_eq!(segment.root::<u64>("crash.root"), None, "never published");
    // The same name (whose probe starts at the dead writer's slot) is
    // published at once, and found.
    let at = Offset::<u64>::from_raw(segment.data_offset() + 64);
    segment.set_root("crash.root", at).unwrap();
    assert_eq!(segment.root::<u64>("crash.root"), Some(at));
    assert!(matches!(
        segment.set_root("crash.root", at),
        Err(Error::Root { .. })
    ));
}

shm_struct! {
    /// A child's containers, published under the root `owned`.
    pub struct Owned {
        pub vec: ShmVec<u64>,
        pub map: ShmHashMap<u64, u64>,
    }
}

/// The container child: fills its vector or map until the storage moves,
/// with the point armed after the first move, so it dies between recording
/// the new storage and freeing the old.
#[test]
#[ignore = "child process of the container crash-point tests"]
fn child_dies_moving_container_storage() {
    let heap =
        FreeListAllocator::attach(&SegmentOptions::shm(child_env("SHMKIT_TEST_SEGMENT"))).unwrap();
    let which = child_env("SHMKIT_CRASH_CONTAINER");
    let at = heap.segment().root::<Owned>("owned").unwrap();
    // SAFETY: resolved and aligned; only this process touches it until it
    // dies.
    let owned = unsafe { heap.segment().resolve(at).unwrap().as_mut() };
    let ctx = MemContext::current();
    for i in 0..10_000u64 {
        if i >= 64 {
            if i == 64 {
                let point = if which == "vec" {
                    "vec.storage_moved"
                } else {
                    "hash_map.table_moved"
                };
                shmkit::crash_point::arm(point);
            }
            announce("filled", i);
        }
        if which == "vec" {
            owned.vec.push(&heap, i).unwrap();
            // A block after the storage, so that it moves to grow.
            heap.allocate_offset(&ctx, 16, 16).unwrap();
        } else {
            owned.map.insert(&heap, i, !i).unwrap();
        }
    }
    panic!("the child survived the container's crash point");
}

fn container_dies_moving_its_storage(which: &str) {
    let (options, _cleanup) = fresh_shm(&format!("crash-{which}"));
    let heap = FreeListAllocator::create(&options.clone().size(4 << 20)).unwrap();
    let owned = heap
        .new_obj(Owned {
            vec: ShmVec::new(),
            map: ShmHashMap::new(),
        })
        .unwrap()
        .offset();
    heap.segment().set_root("owned", owned).unwrap();
    let stdout = killed_child(
        "child_dies_moving_container_storage",
        &options,
        &[("SHMKIT_CRASH_CONTAINER", which)],
    );
    // The child was adding element `filled` when it died, after the move.
    let filled: u64 = stdout
        .split("filled ")
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .max()
        .unwrap();
    assert!(filled >= 64, "the storage moved after the point was armed");
    // SAFETY: resolved and aligned; the child is dead.
    let owned = unsafe { heap.segment().resolve(owned).unwrap().as_mut() };
    let check = |owned: &Owned| {
        if which == "vec" {
            let items = owned
                .vec
                .as_slice(&heap)
                .expect("the vector names a live block");
            assert_eq!(
                items.len() as u64,
                filled,
                "the element being added is not in"
            );
            assert!(items.iter().enumerate().all(|(i, &v)| v == i as u64));
        } else {
            assert_eq!(owned.map.len() as u64, filled);
            for i in 0..filled {
                assert_eq!(owned.map.get(&heap, &i).unwrap(), Some(&!i), "key {i}");
            }
        }
    };
    check(owned);
    // Whatever is allocated now, and written, is not the container's.
    let ctx = MemContext::default();
    let mut others = Vec::new();
    while let Ok(offset) = heap.allocate_offset(&ctx, 256, 16) {
        let block = heap.full_ptr(offset).unwrap();
        // SAFETY: a live block of 256 bytes, ours.
        unsafe { std::ptr::write_bytes(block.as_ptr(), 0xab, 256) };
        others.push(offset);
    }
    check(owned);
    for offset in others {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, offset) }.unwrap();
    }
    // The container frees its own storage; the old one the child never
    // freed is the one block the kill leaked (with the vector child's
    // fence blocks, which it kept on purpose).
    let before = heap.stats().live_allocations;
    if which == "vec" {
        owned.vec.free(&heap).unwrap();
    } else {
        owned.map.free(&heap).unwrap();
    }
    assert_eq!(heap.stats().live_allocations, before - 1);
    let fences = if which == "vec" { filled } else { 0 };
    assert_eq!(
        heap.stats().live_allocations,
        2 + fences,
        "the root object, the old storage and the fences"
    );
}

#[test]
fn a_vector_killed_while_moving_its_storage_names_a_live_block() {
    container_dies_moving_its_storage("vec");
}

#[test]
fn a_hash_map_killed_while_moving_its_table_names_a_live_block() {
    container_dies_moving_its_storage("map");
}

/// The MPMC child: pushes 1 and 2, then dies inside the push of 3 (cell
/// claimed, not published), or pops once and dies inside that pop (cell
/// claimed, not released).
#[test]
#[ignore = "child process of the MPMC crash-point tests"]
fn child_dies_inside_a_ring_operation() {
    let heap =
        SizeClassAllocator::attach(&SegmentOptions::shm(child_env("SHMKIT_TEST_SEGMENT"))).unwrap();
    let at = heap.segment().root::<MpmcRing<u64>>("ring").unwrap();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::open(&heap, at) }.unwrap();
    if child_env("SHMKIT_CRASH_OPERATION") == "push" {
        ring.push(1);
        ring.push(2);
        shmkit::crash_point::arm("mpmc.push.claimed");
        ring.push(3);
    } else {
        shmkit::crash_point::arm("mpmc.pop.claimed");
        let _ = ring.try_pop();
    }
    panic!("the child survived the ring's crash point");
}

/// Runs the ring child to its death inside `operation` on the ring
/// published in `options`' segment.
fn ring_child_dies(options: &SegmentOptions, operation: &str) {
    killed_child(
        "child_dies_inside_a_ring_operation",
        options,
        &[("SHMKIT_CRASH_OPERATION", operation)],
    );
}

const RING_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

#[test]
fn a_producer_killed_inside_a_push_costs_only_its_own_message() {
    let (options, _cleanup) = fresh_shm("crash-mpmc-push");
    let heap = SizeClassAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let at = MpmcRing::<u64>::create(&heap, 8).unwrap();
    heap.segment().set_root("ring", at).unwrap();
    ring_child_dies(&options, "push");
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::open(&heap, at) }.unwrap();
    assert_eq!(ring.in_flight().push_at, None, "1 and 2 are ready");
    for value in [4, 5] {
        ring.push_timeout(value, RING_PATIENCE).unwrap();
    }
    // 1 and 2, then the dead push's cell is skipped, then 4 and 5: in
    // bounded time, through both the blocking and the non-blocking pops.
    assert_eq!(ring.pop_timeout(RING_PATIENCE), Some(1));
    assert_eq!(ring.try_pop(), Some(2));
    assert_eq!(ring.pop_timeout(RING_PATIENCE), Some(4));
    assert_eq!(ring.try_pop(), Some(5));
    assert_eq!(ring.try_pop(), None);
    // And the ring goes on, round every cell.
    for value in 10..30 {
        ring.push_timeout(value, RING_PATIENCE).unwrap();
        assert_eq!(ring.pop_timeout(RING_PATIENCE), Some(value));
    }
    assert_eq!(ring.in_flight(), Default::default());
}

#[test]
fn a_consumer_killed_inside_a_pop_costs_only_the_message_it_took() {
    let (options, _cleanup) = fresh_shm("crash-mpmc-pop");
    let heap = SizeClassAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let at = MpmcRing::<u64>::create(&heap, 8).unwrap();
    heap.segment().set_root("ring", at).unwrap();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::open(&heap, at) }.unwrap();
    for value in 1..=8 {
        ring.push(value);
    }
    ring_child_dies(&options, "pop");
    // The dead pop took 1; the rest come out, and the producers get the
    // dead pop's cell back when they come round to it.
    for value in 2..=8 {
        assert_eq!(ring.pop_timeout(RING_PATIENCE), Some(value));
    }
    for value in 9..=16 {
        ring.push_timeout(value, RING_PATIENCE)
            .unwrap_or_else(|_| panic!("push {value} found the ring full"));
    }
    for value in 9..=16 {
        assert_eq!(ring.pop_timeout(RING_PATIENCE), Some(value));
    }
    assert_eq!(ring.try_pop(), None);
}
