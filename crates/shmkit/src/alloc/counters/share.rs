//! One thread slot's counters: written by that thread alone, with plain
//! loads and stores.

use std::sync::atomic::{AtomicU64, Ordering};

/// One thread slot's part of an allocator's accounting. Written only by
/// the thread that holds the slot.
#[repr(C)]
#[derive(Default)]
pub(crate) struct Share {
    /// Requested bytes and live blocks (wrapping: read as signed).
    pub(super) bytes: AtomicU64,
    pub(super) live: AtomicU64,
    /// The highest and lowest `bytes` ever held (signed).
    pub(super) high: AtomicU64,
    pub(super) low: AtomicU64,
}

impl Share {
    #[inline]
    pub(super) fn add(&self, bytes: u64, live: u64) {
        let now = single_writer_add(&self.bytes, bytes);
        single_writer_add(&self.live, live);
        if now as i64 > self.high.load(Ordering::Relaxed) as i64 {
            self.high.store(now, Ordering::Relaxed);
        } else if (now as i64) < self.low.load(Ordering::Relaxed) as i64 {
            self.low.store(now, Ordering::Relaxed);
        }
    }
}

/// Adds `delta` (wrapping) to a word that only one writer at a time updates
/// (the holder of a lock, or the owner of a thread slot): a plain load and
/// store, no locked instruction. Returns the new value.
#[inline]
pub(crate) fn single_writer_add(word: &AtomicU64, delta: u64) -> u64 {
    let now = word.load(Ordering::Relaxed).wrapping_add(delta);
    word.store(now, Ordering::Relaxed);
    now
}
