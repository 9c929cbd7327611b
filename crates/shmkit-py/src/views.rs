//! What this process knows about each segment it has attached, shared by
//! every handle on it (a second `create=False` handle, an unpickled one):
//!
//! - which blocks have live views, so that freeing one is refused
//!   (`BufferError`, as `bytearray` refuses to resize while a view exists)
//!   instead of leaving a view that writes into someone else's block;
//! - how many calls are running on it without the interpreter lock (a wait
//!   for another process's lock, a long copy), so that `recover()`, which
//!   runs holding the interpreter lock, knows no call of this process is
//!   inside the allocator.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// One segment's process-wide record, keyed by the segment's id.
#[derive(Default)]
pub struct Views {
    /// Views out in all; checked first, so a segment without views pays
    /// one load per free.
    total: AtomicUsize,
    per_block: Mutex<HashMap<u64, usize>>,
    /// Calls on this segment running without the interpreter lock.
    detached: AtomicUsize,
}

/// The records of every segment this process has attached and not yet
/// let go of completely.
static SEGMENTS: Mutex<Option<HashMap<u64, Weak<Views>>>> = Mutex::new(None);

impl Views {
    /// The record of segment `id`, shared with every other handle on it in
    /// this process.
    pub fn of_segment(id: u64) -> Arc<Views> {
        let mut segments = SEGMENTS.lock().unwrap_or_else(|e| e.into_inner());
        let segments = segments.get_or_insert_with(HashMap::new);
        if let Some(views) = segments.get(&id).and_then(Weak::upgrade) {
            return views;
        }
        segments.retain(|_, views| views.strong_count() > 0);
        let views = Arc::new(Views::default());
        segments.insert(id, Arc::downgrade(&views));
        views
    }

    /// A view of the block at `block` was made.
    pub fn opened(&self, block: u64) {
        let mut per_block = self.per_block.lock().unwrap_or_else(|e| e.into_inner());
        *per_block.entry(block).or_insert(0) += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// A view of the block at `block` is gone.
    pub fn closed(&self, block: u64) {
        let mut per_block = self.per_block.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_block.get_mut(&block) {
            *count -= 1;
            if *count == 0 {
                per_block.remove(&block);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Live views of the block at `block`.
    #[inline]
    pub fn of(&self, block: u64) -> usize {
        if self.total.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let per_block = self.per_block.lock().unwrap_or_else(|e| e.into_inner());
        per_block.get(&block).copied().unwrap_or(0)
    }

    /// Live views of every block.
    #[inline]
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts a call that runs without the interpreter lock until the guard
    /// drops.
    pub fn detached(&self) -> DetachedCall<'_> {
        self.detached.fetch_add(1, Ordering::AcqRel);
        DetachedCall { views: self }
    }

    /// Calls running without the interpreter lock now.
    pub fn detached_calls(&self) -> usize {
        self.detached.load(Ordering::Acquire)
    }
}

/// A call running without the interpreter lock (see [`Views::detached`]).
pub struct DetachedCall<'a> {
    views: &'a Views,
}

impl Drop for DetachedCall<'_> {
    fn drop(&mut self) {
        self.views.detached.fetch_sub(1, Ordering::AcqRel);
    }
}
