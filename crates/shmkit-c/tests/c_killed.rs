//! A C process SIGKILLed inside an allocator operation is recovered from
//! exactly as a Rust one is (`shmkit`'s tests/crash_points.rs): the kill
//! lands at a named crash point inside the operation (armed from C), the
//! allocator calls what it left a crash's traces (never corruption), the
//! application frees what the child held and what the hand-off log names,
//! the recovery pass mends the rest, and no block or byte of capacity is
//! lost. Needs the `crash-points` feature (the test command runs it so).

#![cfg(feature = "crash-points")]

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::ExitStatusExt;

use common::{build, repo, run, unique, Unlink};
use shmkit::{
    Error, FreeListAllocator, MemContext, SegmentAllocator, SegmentOptions, ShmAllocator,
};

fn blocks_until_full(heap: &dyn ShmAllocator) -> Vec<u64> {
    let ctx = MemContext::default();
    let mut blocks = Vec::new();
    while let Ok(offset) = heap.allocate_offset(&ctx, 4000, 16) {
        blocks.push(offset);
    }
    blocks
}

fn killed_inside(point: &str, operation: &str) {
    let name = unique(&format!("killed-{}", point.replace('.', "-")));
    let _unlink = Unlink(name.clone());
    let options = SegmentOptions::shm(&name).size(1 << 20);
    let heap = FreeListAllocator::create(&options).unwrap();
    let program = build(&repo().join("crates/shmkit-c/tests/c/killed.c"), &[]);
    let output = run(&program, &[&name, point, operation], false);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGKILL),
        "the C process was not killed at {point}: {:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let announced = |what: &str| -> BTreeSet<u64> {
        stdout
            .lines()
            .filter_map(|line| line.strip_prefix(what)?.trim().parse().ok())
            .collect()
    };
    let (held, freeing) = (announced("held "), announced("freeing "));
    assert_eq!(held.len(), 1, "{stdout}");

    // Before any repair: a crash's traces, never "corrupt".
    match heap.check() {
        Ok(()) | Err(Error::NeedsRecovery { .. }) => {}
        Err(other) => panic!("{point}: check calls a crash's traces {other}"),
    }
    let ctx = MemContext::default();
    let handed: BTreeSet<u64> = heap.take_dead_handoffs().into_iter().collect();
    for &offset in handed.difference(&held) {
        // SAFETY: the dead child's block; nothing uses it.
        unsafe { heap.free_offset(&ctx, offset) }.unwrap();
    }
    for &offset in held.difference(&freeing) {
        // SAFETY: as above.
        unsafe { heap.free_offset(&ctx, offset) }.unwrap();
    }
    // SAFETY: no other thread of this process uses this segment, and the
    // child that mapped it is dead.
    unsafe { heap.recover() }.unwrap_or_else(|e| panic!("{point}: recovery: {e}"));
    for &offset in &freeing {
        // The free the child was in: done, or undone (the block is live).
        if heap.usable_size(offset).is_ok() {
            // SAFETY: as above.
            unsafe { heap.free_offset(&ctx, offset) }.unwrap();
        }
    }
    heap.check()
        .unwrap_or_else(|e| panic!("{point}: check after recovery: {e}"));
    let stats = heap.stats();
    assert_eq!(
        (stats.live_allocations, stats.allocated_bytes),
        (0, 0),
        "{point}: blocks lost to the kill"
    );
    // Every byte comes back: as many blocks as a fresh segment holds.
    let again = blocks_until_full(&heap);
    let fresh_name = unique(&format!("killed-fresh-{}", point.replace('.', "-")));
    let _fresh_unlink = Unlink(fresh_name.clone());
    let fresh = FreeListAllocator::create(&SegmentOptions::shm(&fresh_name).size(1 << 20)).unwrap();
    let history = [
        fresh.allocate_offset(&ctx, 8192, 16).unwrap(),
        fresh.allocate_offset(&ctx, 8192, 16).unwrap(),
    ];
    for offset in history {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { fresh.free_offset(&ctx, offset) }.unwrap();
    }
    let reference = blocks_until_full(&fresh);
    assert!(
        again.len() >= reference.len(),
        "{point}: capacity lost ({} blocks; a fresh segment holds {})",
        again.len(),
        reference.len()
    );
}

#[test]
fn a_c_allocation_killed_before_its_commit_is_rolled_back() {
    killed_inside("free_list.alloc.intended", "allocate-large");
}

#[test]
fn a_c_allocation_killed_after_its_commit_is_rolled_back() {
    killed_inside("free_list.alloc.committed", "allocate-large");
}

#[test]
fn a_c_free_killed_under_the_lock_completes() {
    killed_inside("free_list.free.committed", "free-large");
}
