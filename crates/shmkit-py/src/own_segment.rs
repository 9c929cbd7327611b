//! What the structures that own a whole segment (`shmkit.Queue`,
//! `shmkit.Dict`) share: counting their calls that run without the
//! interpreter lock, their accounting, and the sweep by which `recover()`
//! frees the blocks a dead process left that the structure no longer
//! names.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use shmkit_lib::{Error, MemContext, ShmAllocator, SizeClassAllocator};

/// Counts a call that runs without the interpreter lock, for as long as it
/// lives: a recovery pass must not run while one of this process's calls
/// is inside the segment with the lock released.
pub struct Detached<'a>(&'a AtomicUsize);

impl<'a> Detached<'a> {
    pub fn enter(count: &'a AtomicUsize) -> Detached<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Detached(count)
    }
}

impl Drop for Detached<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The segment allocator's accounting: `(live blocks, allocated bytes,
/// free bytes, capacity)`.
pub fn heap_stats(heap: &SizeClassAllocator) -> (u64, u64, u64, u64) {
    let stats = heap.stats();
    (
        stats.live_allocations,
        stats.allocated_bytes,
        stats.free_bytes,
        stats.capacity,
    )
}

/// Frees every live block of `heap` that `named` does not hold; how many.
///
/// # Safety
///
/// The segment is the structure's alone, and nobody else uses it during
/// the call (the caller holds its recovery lock, and no other thread of
/// this process is inside it), so a block it does not name is one a dead
/// process was making or retiring.
pub unsafe fn free_unnamed(heap: &SizeClassAllocator, named: &HashSet<u64>) -> Result<u64, Error> {
    // The dead threads' hand-off records name some of those blocks; the
    // walk below finds them all, so the records are only cleared.
    drop(heap.take_dead_handoffs());
    let mut unnamed = Vec::new();
    heap.live_blocks(&mut |offset| {
        if !named.contains(&offset) {
            unnamed.push(offset);
        }
    })?;
    let ctx = MemContext::default();
    for &offset in &unnamed {
        // SAFETY: a live block nothing names, and no one else runs (the
        // caller's promise).
        unsafe { heap.free_offset(&ctx, offset) }?;
    }
    Ok(unnamed.len() as u64)
}
