//! The free list's per-thread caches: small freed blocks kept in the
//! segment, one set of magazines per hand-off slot (see `alloc::handoff`),
//! so that freeing and reusing them takes no lock and writes no line other
//! workers write.
//!
//! A cached block stays a block of the physical chain, in use as far as
//! the heap is concerned, with the [`CACHED`] bit in its size word. That
//! bit is the whole protocol:
//!
//! * **Free** validates the header without the lock (a sealed, live block
//!   of a cached size, inside the segment), then sets `CACHED` by
//!   compare-and-swap from the very word it validated. Of two frees of one
//!   block, even at the same instant, exactly one wins; the other finds the
//!   bit set and is refused as a double free, as under the lock. Anything
//!   the lock-free check does not accept goes to the locked free, which
//!   decides. Then the block goes into the calling thread's magazine of its
//!   size; when that is full, the block goes to the locked free instead
//!   (so a batch of frees costs what it costs without a cache).
//! * **Allocate** of a cached size (alignment up to 16) pops the magazine,
//!   clears `CACHED` by compare-and-swap and writes the requested length
//!   (and the seal) if it changed.
//! * **The locked code** never overwrites the bit: it sets a neighbour's
//!   `PREV_FREE` with an atomic or/and, commits a free or a resize of a live
//!   block by compare-and-swap from the word it validated, and a rebuild
//!   keeps the bit. A block with the bit is neither free nor live to it:
//!   never merged, never handed out, and a locked free or resize of it is
//!   refused.
//! * **Accounting**: a cached free counts as a free, a cached allocation as
//!   an allocation, in the thread's share (`alloc::counters`).
//! * **Ownership**: the magazines of slot `i` are used only by the thread
//!   that holds hand-off slot `i` (see `alloc::magazine`: the first 16
//!   slots have them). Dropping an allocator handle gives the calling thread's blocks
//!   back; a thread that exits leaves them to the next holder of its slot;
//!   [`stats`](crate::ShmAllocator::stats) gives the caller's own back
//!   first, so its figures are exact for one thread; an allocation that runs
//!   out gives back the caller's and those of slots no live thread holds,
//!   then tries again.
//! * **Crashes**: a block leaves a magazine (the count drops) before
//!   anything else happens to it. A thread killed between the bit and the
//!   magazine leaves a block cached in no magazine: [`check`] reports it
//!   as needing recovery and [`recover`] gives it back, with every magazine
//!   of the segment. Nothing is handed out twice.
//! * **Quarantine**: after a rebuild fenced damaged bytes off, the caches
//!   are switched off (a live block inside the fence must stay refused),
//!   and every operation takes the lock, which validates neighbours too.
//!
//! [`check`]: crate::ShmAllocator::check
//! [`recover`]: crate::ShmAllocator::recover

use std::sync::atomic::Ordering;

use super::{
    seal, BlockHeader, FreeListAllocator, Heap, FREE, GRANULE, HEADER, MIN_BLOCK, PREV_FREE,
    QUARANTINED,
};
use crate::alloc::handoff;
use crate::alloc::handoff::HandoffSlot;
use crate::alloc::magazine;
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::ptr::Offset;
use crate::sync::robust_lock::Patience;

/// A cached block: in use as far as the heap is concerned, held by a
/// thread's magazine.
pub(super) const CACHED: u64 = 8;

/// The largest cached block (header included): 512 bytes, so that a
/// 256-byte slot of the Python drop-in's free list (272 bytes with its
/// block header) is cached too.
const CACHED_MAX: u64 = 512;
/// Block sizes with a magazine: every multiple of [`GRANULE`] from
/// [`MIN_BLOCK`] to [`CACHED_MAX`].
const CACHED_SIZES: usize = ((CACHED_MAX - MIN_BLOCK) / GRANULE + 1) as usize;
/// How long dropping a handle waits for the lock to give its cache back.
const DROP_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);
/// How often a free retries its compare-and-swap when only a neighbour's
/// flag moved under it, before it leaves the free to the lock.
const CAS_RETRIES: u32 = 4;

/// The caches in the free list's state.
/// Blocks a magazine holds.
const MAGAZINE: usize = 8;

pub(super) type ThreadCaches = magazine::ThreadCaches<CACHED_SIZES, MAGAZINE>;

/// The magazine of a block of `size` bytes, if that size is cached.
#[inline]
pub(super) fn magazine_of(size: u64) -> Option<usize> {
    (MIN_BLOCK..=CACHED_MAX)
        .contains(&size)
        .then(|| ((size - MIN_BLOCK) / GRANULE) as usize)
}

/// The block size of magazine `index`.
#[inline]
fn size_of_magazine(index: usize) -> u64 {
    MIN_BLOCK + index as u64 * GRANULE
}

/// Payload bytes of the blocks in every magazine (free to the user).
pub(super) fn cached_bytes(caches: &ThreadCaches) -> u64 {
    caches
        .counts()
        .iter()
        .enumerate()
        .map(|(index, &count)| count * (size_of_magazine(index) - HEADER))
        .sum()
}

/// Every cached offset a magazine holds, with its slot and block size.
pub(super) fn cached_entries(
    caches: &ThreadCaches,
) -> std::result::Result<Vec<(usize, u64, u64)>, String> {
    Ok(caches
        .entries()?
        .into_iter()
        .map(|(slot, index, offset)| (slot, offset, size_of_magazine(index)))
        .collect())
}

/// What a free through the cache did.
pub(super) enum CachedFree {
    /// The block is in the caller's magazine.
    Cached,
    /// Not for the cache (too large, not validated without the lock, or
    /// the caches are off): the locked free decides.
    Uncached,
}

impl FreeListAllocator {
    /// The header of the block whose payload is at `offset`, if it can be
    /// read at all (inside the segment, aligned, past the heap start).
    #[inline]
    fn header_of_payload(&self, offset: u64) -> Option<&BlockHeader> {
        if offset % GRANULE != 0 || offset < self.heap_start + HEADER {
            return None;
        }
        let ptr = self
            .segment()
            .resolve(Offset::<BlockHeader>::from_raw(offset - HEADER))
            .ok()?;
        // SAFETY: `resolve` checked bounds and alignment; the header is made
        // of atomics, valid for any bytes, and lives as long as the segment.
        Some(unsafe { ptr.as_ref() })
    }

    /// Frees the block at `offset` into the caller's magazine, if it is a
    /// live block of a cached size (see the module docs).
    #[inline]
    pub(super) fn cached_free(&self, offset: u64) -> Result<CachedFree> {
        let Some((slot, cache)) = self.state().caches.mine(self.segment()) else {
            return Ok(CachedFree::Uncached);
        };
        let Some(header) = self.header_of_payload(offset) else {
            return Ok(CachedFree::Uncached);
        };
        let block = offset - HEADER;
        let mut word = header.size_flags.load(Ordering::Acquire);
        let mut retries = 0;
        let (magazine, size, requested, operation) = loop {
            let size = word & !super::FLAGS;
            let Some(index) = magazine_of(size) else {
                return Ok(CachedFree::Uncached);
            };
            let requested = header.requested.load(Ordering::Acquire);
            // Only a live, sealed block: free, quarantined, cached or
            // anything odd is the locked free's to judge.
            if word & (super::FREE | super::QUARANTINED | CACHED) != 0
                || requested > size - HEADER
                || block + size > self.segment().size()
                || header.seal.load(Ordering::Acquire) != seal(block, size, requested)
            {
                return Ok(CachedFree::Uncached);
            }
            let Some(magazine) = cache.magazine(index) else {
                return Ok(CachedFree::Uncached);
            };
            // A full magazine leaves the block to the locked free: a run of frees
            // (a batch given back) then costs what it costs without a cache.
            if magazine.is_full() {
                return Ok(CachedFree::Uncached);
            }
            let operation = cache.begin();
            // The record goes before the free can take effect (see
            // `handoff::forget_mine`).
            slot.forget(offset);
            match header.size_flags.compare_exchange(
                word,
                word | CACHED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break (magazine, size, requested, operation),
                // Only a neighbour's PREV_FREE may move under a live block;
                // anything else (a racing free won) is for the lock to see.
                Err(now) if now ^ word == super::PREV_FREE && retries < CAS_RETRIES => {
                    operation.end();
                    word = now;
                    retries += 1;
                }
                Err(_) => {
                    operation.end();
                    return Ok(CachedFree::Uncached);
                }
            }
        };
        crash_point!("free_list.cache.flagged");
        self.state()
            .counters
            .on_free_to(Some(&slot.share), requested);
        self.segment().scrub(offset, size - HEADER);
        magazine.push(offset);
        operation.end();
        Ok(CachedFree::Cached)
    }

    /// Hands out a cached block of `need` bytes (header included) for a
    /// request of `requested` bytes, from the caller's magazine.
    #[inline]
    pub(super) fn cached_allocate(&self, need: u64, requested: u64) -> Option<u64> {
        let index = magazine_of(need)?;
        let (slot, cache) = self.state().caches.mine(self.segment())?;
        cache.take_from(index, |offset| {
            crash_point!("free_list.cache.popped");
            self.take_cached(slot, offset, need, requested)
        })
    }

    /// Clears `CACHED` on the block at `offset` (of `size` bytes) for a new
    /// request; `None` if the entry was not a cached block of that size.
    #[inline]
    fn take_cached(
        &self,
        slot: &HandoffSlot,
        offset: u64,
        size: u64,
        requested: u64,
    ) -> Option<u64> {
        let header = self.header_of_payload(offset)?;
        let block = offset - HEADER;
        let mut word = header.size_flags.load(Ordering::Acquire);
        let recorded = header.requested.load(Ordering::Relaxed);
        // A cached block of this size, sealed (an entry a stray write made
        // is dropped, never followed).
        if word & !super::FLAGS != size
            || word & (super::FREE | super::QUARANTINED | CACHED) != CACHED
            || block + size > self.segment().size()
            || header.seal.load(Ordering::Acquire) != seal(block, size, recorded)
        {
            return None;
        }
        // A tentative record until the block is the caller's: a thread
        // killed in between leaves it for `recover`, which frees the block
        // (never handed out), and `take_dead_handoffs` passes it over. The
        // count goes first too: a kill before the bit leaves a cached block
        // in no magazine, which `check` reports before any count.
        slot.intend(offset);
        let counters = &self.state().counters;
        counters.on_allocate_to(Some(&slot.share), requested);
        // The length and its seal while the block is still cached (a kill
        // in between leaves a cached block in no magazine, not a live one
        // with a torn seal).
        if recorded != requested {
            header.requested.store(requested, Ordering::Relaxed);
            header
                .seal
                .store(seal(block, size, requested), Ordering::Release);
        }
        loop {
            match header.size_flags.compare_exchange(
                word,
                word & !CACHED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) if now ^ word == super::PREV_FREE => word = now,
                Err(_) => {
                    // Not ours after all (a duplicate entry a stray write
                    // made): take nothing.
                    counters.on_free_to(Some(&slot.share), requested);
                    slot.forget_intent(offset);
                    return None;
                }
            }
        }
        crash_point!("free_list.cache.taken");
        slot.record(offset);
        Some(offset)
    }

    /// The caller's magazine for blocks of `need` bytes, for a refill (see
    /// [`Heap::allocate_refilling`]).
    pub(super) fn empty_magazine_for(&self, need: u64) -> Option<&magazine::Magazine<MAGAZINE>> {
        let (_, cache) = self.state().caches.mine(self.segment())?;
        cache.magazine(magazine_of(need)?)
    }

    /// Gives the caller's cached blocks back to the heap, and those of the
    /// slots no live thread holds; returns whether there were any.
    pub(super) fn give_back_idle(&self, heap: &mut Heap<'_>) -> bool {
        let caches = &self.state().caches;
        caches.drain_idle(self.segment(), |_, offset| heap.give_back(offset))
    }

    /// Gives the caller's cached blocks back to the heap (for figures that
    /// are exact for one thread).
    pub(super) fn give_back_mine(&self, heap: &mut Heap<'_>) {
        let caches = &self.state().caches;
        caches.drain_mine(self.segment(), |_, offset| heap.give_back(offset));
    }

    /// Gives the caller's cached blocks back as a handle goes away: only if
    /// there are any, and without waiting long for a busy lock (the blocks
    /// then stay cached, for the slot's next holder).
    pub(super) fn give_back_on_drop(&self) {
        if !self.state().caches.mine_holds_any(self.segment()) {
            return;
        }
        let _ = self.locked_noting_takeover(Patience::Wait(DROP_PATIENCE), true, |heap, _| {
            self.give_back_mine(heap);
            Ok(())
        });
    }

    /// Gives every magazine's blocks back to the heap, then every block
    /// still marked cached (one a killed thread left in no magazine).
    /// Only for a pass that runs alone.
    pub(super) fn give_back_everything(&self, heap: &mut Heap<'_>) -> Result<u64> {
        let caches = &self.state().caches;
        caches.drain_all(|_, offset| heap.give_back(offset));
        heap.free_orphans()
    }
}

impl Heap<'_> {
    /// Allocates a block of `need` bytes (header included) for `requested`
    /// bytes for a thread whose `magazine` of that size is empty: carves a
    /// chunk of a magazine's worth and splits it, the caller's block first
    /// and the rest cached in the magazine, so one lock serves that many
    /// allocations. `None` when no free block holds a chunk (the caller
    /// then allocates the block alone, growing the heap if need be).
    ///
    /// The chunk is carved as one live block (recorded tentatively again
    /// until the split is done), the headers of its later blocks are
    /// written inside it, where no walk looks, and the commit is the first
    /// block's size word shrinking. A kill before it leaves the chunk live,
    /// which the lock's next taker frees; after it, the later blocks are
    /// cached in no magazine until they are pushed (`recover` frees them).
    pub(super) fn allocate_refilling(
        &mut self,
        need: u64,
        requested: u64,
        magazine: &magazine::Magazine<MAGAZINE>,
    ) -> Result<Option<u64>> {
        if magazine.len() != 0 {
            return Ok(None);
        }
        // The caller's block and a magazine less one: room stays for the
        // caller's next free.
        let blocks = MAGAZINE as u64;
        let chunk = need * blocks;
        let Some((block, block_size)) = self.find(chunk, chunk, GRANULE)? else {
            return Ok(None);
        };
        let live = self.carve(block, block_size, chunk, GRANULE, requested)?;
        let (header, size, flags) = self.block(live)?;
        let log = handoff::my_slot(self.segment);
        if let Some(log) = log {
            log.intend(live + HEADER);
        }
        let last = live + (blocks - 1) * need;
        // The last block also takes what the carve left over.
        for at in (1..blocks).rev().map(|i| live + i * need) {
            let len = if at == last { live + size - last } else { need };
            self.write_header(at, len, CACHED, at - need, 0)?;
        }
        // The commit, marked cached until the block is the caller's (see
        // `carve`).
        self.commit(header, live, need, (flags & PREV_FREE) | CACHED, requested);
        header.size_flags.fetch_and(!CACHED, Ordering::AcqRel);
        crash_point!("free_list.cache.refill_split");
        self.link_next(live + size, last, false)?;
        if self.state.last_block.load(Ordering::Acquire) == live {
            self.state.last_block.store(last, Ordering::Release);
        }
        for at in (1..blocks).rev().map(|i| live + i * need) {
            if at == last && live + size - last != need {
                // A block of another size: back to the heap.
                self.give_back(at + HEADER);
            } else {
                magazine.push(at + HEADER);
            }
        }
        if let Some(log) = log {
            log.record(live + HEADER);
        }
        Ok(Some(live + HEADER))
    }

    /// Moves a block a magazine gave up back into the heap (it was counted
    /// as freed when it was cached); an entry that is not a cached block (a
    /// stray write) is dropped.
    fn give_back(&mut self, offset: u64) {
        crash_point!("free_list.cache.giving_back");
        match self.free_as(offset, true) {
            Ok(_) | Err(Error::InvalidFree { .. }) => {}
            // A free that failed halfway: the next locker rebuilds.
            Err(_) => self.state.needs_repair.store(1, Ordering::Release),
        }
    }

    /// Resets the accounting to what the blocks say, in a still picture of
    /// the caches if one comes (see `alloc::magazine`).
    pub(super) fn recount(&self) -> Result<()> {
        self.state.caches.recount_still(self.segment, || {
            let (live, bytes) = self.count_live()?;
            self.state.counters.reset_to(self.segment, bytes, live);
            Ok(())
        })
    }

    /// (live blocks, their requested bytes) from a walk of the chain; a
    /// cached block is not live.
    fn count_live(&self) -> Result<(u64, u64)> {
        let (mut live, mut bytes) = (0, 0);
        let mut block = self.start;
        while block < self.end {
            let (header, size, flags) = self.block(block)?;
            if flags & (FREE | QUARANTINED | CACHED) == 0 {
                live += 1;
                bytes += header.requested.load(Ordering::Acquire).min(size - HEADER);
            }
            block += size;
        }
        Ok((live, bytes))
    }
}
