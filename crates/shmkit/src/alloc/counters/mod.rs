//! Always-on accounting that lives in the segment, sharded per thread.
//!
//! Each thread counts its allocations and frees in a [`Share`] of its own
//! (its hand-off slot in a segment, see `handoff`), with plain loads and
//! stores on a line no other thread writes; threads without a slot use the
//! shared [`AllocCounters`] line with locked adds. Readers sum the shares.
//! A share stays with its slot from owner to owner, so the sum is exact
//! whoever came and went (a share may be negative: any thread may free a
//! block another allocated).
//!
//! The peak cannot be summed. Each share also keeps the highest and lowest
//! value it ever held; `high_i + sum over j != i of low_j` is a total the
//! allocator really reached (at the moment share `i` peaked, every other
//! share was at least its low), so the largest such sum, and every total a
//! reader sees, raise the recorded peak. The peak is therefore a lower
//! bound, exact while one thread allocates.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

pub(crate) use share::{single_writer_add, Share};

use super::handoff;
use crate::segment::Segment;

/// One thread's share of the accounting, in its hand-off slot.
mod share;

/// A snapshot of an allocator's accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AllocStats {
    /// Bytes in live allocations, as requested (Hermes SHM's
    /// `GetCurrentlyAllocatedSize`).
    pub allocated_bytes: u64,
    /// The most `allocated_bytes` has ever been.
    pub peak_bytes: u64,
    /// Number of live allocations.
    pub live_allocations: u64,
    /// Bytes the allocator could still hand out (free blocks, free slots,
    /// untouched space), counting the room the segment may still grow into
    /// (its data area is backed as it fills; see
    /// [`SegmentOptions::size`](crate::SegmentOptions::size)).
    pub free_bytes: u64,
    /// The largest single request that would succeed now (growing the
    /// segment if need be).
    pub largest_free_block: u64,
    /// Bytes the allocator manages once the segment is grown to its maximum
    /// size.
    pub capacity: u64,
}

impl AllocStats {
    /// Adds `room`, the bytes the heap may still grow into (backed on
    /// demand), to figures measured over what is backed now; `largest` is
    /// the largest block growing would make.
    pub(crate) fn with_room_to_grow(mut self, room: u64, largest: u64) -> AllocStats {
        self.free_bytes = self.free_bytes.saturating_add(room);
        self.capacity = self.capacity.saturating_add(room);
        self.largest_free_block = self.largest_free_block.max(largest);
        self
    }

    /// External fragmentation: `1 - largest_free_block / free_bytes`
    /// (0 when all free memory is one block, close to 1 when it is scattered).
    pub fn fragmentation(&self) -> f64 {
        if self.free_bytes == 0 {
            0.0
        } else {
            1.0 - (self.largest_free_block.min(self.free_bytes) as f64 / self.free_bytes as f64)
        }
    }
}

/// The shared part: what threads without a slot count, the base a repair
/// sets, and the recorded peak. On a cache line of its own, away from
/// allocation cursors.
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

    /// Counts an allocation of `bytes` in `segment` by the calling thread
    /// (in its slot's share).
    #[inline]
    pub(crate) fn on_allocate(&self, segment: &Segment, bytes: u64) {
        self.on_allocate_to(handoff::my_share(segment), bytes);
    }

    /// Counts a free of a block of `bytes`.
    #[inline]
    pub(crate) fn on_free(&self, segment: &Segment, bytes: u64) {
        self.on_free_to(handoff::my_share(segment), bytes);
    }

    /// Counts a block resized in place from `old` to `new` bytes.
    #[inline]
    pub(crate) fn on_resize(&self, segment: &Segment, old: u64, new: u64) {
        self.add(handoff::my_share(segment), new.wrapping_sub(old), 0);
    }

    /// (allocated bytes, live allocations, peak bytes) of `segment`'s
    /// allocator.
    pub(crate) fn snapshot(&self, segment: &Segment) -> (u64, u64, u64) {
        self.snapshot_of(handoff::shares(segment))
    }

    /// Compares the counted totals with the live blocks and bytes recounted
    /// from the allocator's own structure (`source` names it: "the heap
    /// has", "pages hold"): the disagreement, described, if any.
    pub(crate) fn disagreement(
        &self,
        segment: &Segment,
        live: u64,
        bytes: u64,
        source: &str,
    ) -> Option<String> {
        let (counted_bytes, counted_live, _) = self.snapshot(segment);
        ((counted_live, counted_bytes) != (live, bytes)).then(|| {
            format!(
                "counters say {counted_live} blocks / {counted_bytes} bytes live, \
                 {source} {live} / {bytes}"
            )
        })
    }

    /// Sets the totals to ones recounted from the blocks (see
    /// [`reset_shares_to`](Self::reset_shares_to)).
    pub(crate) fn reset_to(&self, segment: &Segment, allocated_bytes: u64, live_allocations: u64) {
        self.reset_shares_to(handoff::shares(segment), allocated_bytes, live_allocations);
    }

    /// Counts an allocation in `mine`, or in the shared counters for a
    /// thread without a share.
    #[inline]
    pub(crate) fn on_allocate_to(&self, mine: Option<&Share>, bytes: u64) {
        self.add(mine, bytes, 1);
    }

    /// Counts a free in `mine`, or in the shared counters.
    #[inline]
    pub(crate) fn on_free_to(&self, mine: Option<&Share>, bytes: u64) {
        self.add(mine, bytes.wrapping_neg(), 1u64.wrapping_neg());
    }

    #[inline]
    fn add(&self, mine: Option<&Share>, bytes: u64, live: u64) {
        match mine {
            Some(share) => share.add(bytes, live),
            None => {
                // The base alone is no total: readers raise the peak.
                self.inner
                    .allocated_bytes
                    .fetch_add(bytes, Ordering::Relaxed);
                self.inner
                    .live_allocations
                    .fetch_add(live, Ordering::Relaxed);
            }
        }
    }

    /// Makes the totals (shared base plus `shares`) equal the ones recounted
    /// from the allocator's blocks, after a repair that runs alone (or under
    /// the lock every count is made under); the peak only ever rises.
    pub(crate) fn reset_shares_to<'a>(
        &self,
        shares: impl Iterator<Item = &'a Share> + Clone,
        allocated_bytes: u64,
        live_allocations: u64,
    ) {
        let (in_shares, live_in_shares) = sum(shares);
        let c = &self.inner;
        c.allocated_bytes
            .store(allocated_bytes.wrapping_sub(in_shares), Ordering::Relaxed);
        c.live_allocations.store(
            live_allocations.wrapping_sub(live_in_shares),
            Ordering::Relaxed,
        );
        c.peak_bytes.fetch_max(allocated_bytes, Ordering::Relaxed);
    }

    /// (allocated bytes, live allocations, peak bytes): the shared base plus
    /// every share, and the peak raised to what the shares show (see the
    /// module docs).
    pub(crate) fn snapshot_of<'a>(
        &self,
        shares: impl Iterator<Item = &'a Share> + Clone,
    ) -> (u64, u64, u64) {
        let c = &self.inner;
        let base = c.allocated_bytes.load(Ordering::Relaxed);
        let (in_shares, live_in_shares) = sum(shares.clone());
        let bytes = base.wrapping_add(in_shares);
        let live = c
            .live_allocations
            .load(Ordering::Relaxed)
            .wrapping_add(live_in_shares);
        // Lows of every share, then each share's high in place of its low.
        let lows = shares.clone().fold(base as i64, |acc, share| {
            acc.wrapping_add(share.low.load(Ordering::Relaxed) as i64)
        });
        let reached = shares
            .map(|share| {
                let low = share.low.load(Ordering::Relaxed) as i64;
                let high = share.high.load(Ordering::Relaxed) as i64;
                lows.wrapping_sub(low).wrapping_add(high)
            })
            .chain([bytes as i64])
            .max()
            .unwrap_or(0)
            .max(0) as u64;
        let peak = c
            .peak_bytes
            .fetch_max(reached, Ordering::Relaxed)
            .max(reached);
        (bytes, live, peak)
    }
}

/// (bytes, live blocks) summed over `shares`, wrapping.
fn sum<'a>(shares: impl Iterator<Item = &'a Share>) -> (u64, u64) {
    shares.fold((0u64, 0u64), |(bytes, live), share| {
        (
            bytes.wrapping_add(share.bytes.load(Ordering::Relaxed)),
            live.wrapping_add(share.live.load(Ordering::Relaxed)),
        )
    })
}
