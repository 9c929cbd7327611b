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
        let now = c
            .allocated_bytes
            .load(Ordering::Relaxed)
            .wrapping_add(bytes);
        c.allocated_bytes.store(now, Ordering::Relaxed);
        let live = c.live_allocations.load(Ordering::Relaxed);
        c.live_allocations
            .store(live.wrapping_add(1), Ordering::Relaxed);
        if now > c.peak_bytes.load(Ordering::Relaxed) {
            c.peak_bytes.store(now, Ordering::Relaxed);
        }
    }

    /// [`on_free`](Self::on_free) for allocators that update these counters
    /// only under one lock.
    #[inline]
    pub(crate) fn on_free_locked(&self, bytes: u64) {
        let c = &self.inner;
        let now = c
            .allocated_bytes
            .load(Ordering::Relaxed)
            .wrapping_sub(bytes);
        c.allocated_bytes.store(now, Ordering::Relaxed);
        let live = c.live_allocations.load(Ordering::Relaxed);
        c.live_allocations
            .store(live.wrapping_sub(1), Ordering::Relaxed);
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
