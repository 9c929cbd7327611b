//! Always-on accounting that lives in the segment, shared by every process.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

/// Bytes and blocks in use, and the peak, updated on every allocate and
/// free. Kept on a cache line of its own, away from allocation cursors.
#[repr(C)]
pub(crate) struct AllocCounters {
    inner: CachePadded<Counters>,
}

#[repr(C)]
struct Counters {
    allocated_bytes: AtomicU64,
    live_allocations: AtomicU64,
    peak_bytes: AtomicU64,
}

impl AllocCounters {
    pub(crate) fn new() -> AllocCounters {
        AllocCounters {
            inner: CachePadded::new(Counters {
                allocated_bytes: AtomicU64::new(0),
                live_allocations: AtomicU64::new(0),
                peak_bytes: AtomicU64::new(0),
            }),
        }
    }

    #[inline]
    pub(crate) fn on_allocate(&self, bytes: u64) {
        let now = self
            .inner
            .allocated_bytes
            .fetch_add(bytes, Ordering::Relaxed)
            .wrapping_add(bytes);
        self.inner.live_allocations.fetch_add(1, Ordering::Relaxed);
        // The peak line is only written when a new peak is reached.
        if now > self.inner.peak_bytes.load(Ordering::Relaxed) {
            self.inner.peak_bytes.fetch_max(now, Ordering::Relaxed);
        }
    }

    #[inline]
    pub(crate) fn on_free(&self, bytes: u64) {
        self.inner
            .allocated_bytes
            .fetch_sub(bytes, Ordering::Relaxed);
        self.inner.live_allocations.fetch_sub(1, Ordering::Relaxed);
    }

    /// Overwrites the live totals with ones recounted from the allocator's
    /// blocks (after a repair); the peak only ever rises.
    pub(crate) fn reset_to(&self, allocated_bytes: u64, live_allocations: u64) {
        self.inner
            .allocated_bytes
            .store(allocated_bytes, Ordering::Relaxed);
        self.inner
            .live_allocations
            .store(live_allocations, Ordering::Relaxed);
        self.inner
            .peak_bytes
            .fetch_max(allocated_bytes, Ordering::Relaxed);
    }

    /// [`on_allocate`](Self::on_allocate) for allocators that update these
    /// counters only under one lock: plain loads and stores, no locked
    /// instruction.
    #[inline]
    pub(crate) fn on_allocate_locked(&self, bytes: u64) {
        let c = &self.inner;
        let now = single_writer_add(&c.allocated_bytes, bytes);
        single_writer_add(&c.live_allocations, 1);
        if now > c.peak_bytes.load(Ordering::Relaxed) {
            c.peak_bytes.store(now, Ordering::Relaxed);
        }
    }

    /// [`on_free`](Self::on_free) for allocators that update these counters
    /// only under one lock.
    #[inline]
    pub(crate) fn on_free_locked(&self, bytes: u64) {
        let c = &self.inner;
        single_writer_add(&c.allocated_bytes, bytes.wrapping_neg());
        single_writer_add(&c.live_allocations, 1u64.wrapping_neg());
    }

    /// (allocated bytes, live allocations, peak bytes).
    pub(crate) fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.inner.allocated_bytes.load(Ordering::Relaxed),
            self.inner.live_allocations.load(Ordering::Relaxed),
            self.inner.peak_bytes.load(Ordering::Relaxed),
        )
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
