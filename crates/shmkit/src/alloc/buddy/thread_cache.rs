//! The buddy allocator's per-thread caches: freed blocks of the small
//! orders (up to [`CACHED_MAX_ORDER`], 1 KiB) kept in the segment, one set
//! of magazines per hand-off slot (see `alloc::magazine`), so that freeing
//! and reusing them takes no lock and writes no line other workers write.
//!
//! A cached block stays live in the state table; its size entry holds
//! [`CACHED_SIZE`] instead of the caller's length (a length of a cached
//! order never reaches it). That entry is the whole protocol:
//!
//! * **Free** checks the tables without the lock (a live block starts at
//!   the offset, of a cached order, inside the heap this process has seen),
//!   then swaps the size entry from the length it read to `CACHED_SIZE` by
//!   compare-and-swap. Of two frees of one block, even at the same instant,
//!   exactly one wins; the other is refused by the locked free, as a double
//!   free. It reads the state byte again after the swap (nothing can change
//!   it while the entry says cached): a block that changed under it (freed,
//!   merged and reallocated meanwhile) gets its length back and goes to the
//!   locked free, which decides. Then the block goes into the calling
//!   thread's magazine of its order, or, when that is full, to the locked
//!   free.
//! * **Allocate** of a cached order pops the magazine, checks the state
//!   byte, and swaps the size entry from `CACHED_SIZE` to the new length.
//! * **The locked code** never overwrites a cached entry: a free or resize
//!   of a block of a cached order swaps its entry from the length it read
//!   (a locked free marks the block cached first, then frees it as the
//!   cache gives blocks back, so a free killed halfway is completed by
//!   recovery). A block with a cached entry is neither free nor live to
//!   it: never merged or handed out, and a locked free or resize of it is
//!   refused.
//! * **Accounting**, **ownership**, **crashes**: as for the free list's
//!   cache (see `alloc::free_list::thread_cache`): a block leaves a
//!   magazine before anything else happens to it; one a killed thread left
//!   in no magazine is reported by [`check`] and given back by [`recover`].
//!
//! [`check`]: crate::ShmAllocator::check
//! [`recover`]: crate::ShmAllocator::recover

use std::sync::atomic::Ordering;

use super::{BuddyAllocator, Heap, ALLOCATED, HEAD};
use crate::alloc::handoff::{self, HandoffSlot};
use crate::alloc::magazine;
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::sync::repair;
use crate::sync::robust_lock::Patience;

/// The size entry of a cached block.
pub(super) const CACHED_SIZE: u32 = u32::MAX;
/// The largest cached order (1 KiB blocks).
pub(super) const CACHED_MAX_ORDER: u32 = 10;
/// Magazines per slot: one per order from the smallest minimum block
/// (16 bytes, order 4) to [`CACHED_MAX_ORDER`].
const CACHED_ORDERS: usize = (CACHED_MAX_ORDER - 4 + 1) as usize;
/// How long dropping a handle waits for the lock to give its cache back.
const DROP_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

/// The caches in the buddy allocator's state.
/// Blocks a magazine holds: a whole refill chunk of the smallest order
/// (see [`Heap::allocate_refilling`]).
pub(super) const MAGAZINE: usize = 16;

pub(super) type ThreadCaches = magazine::ThreadCaches<CACHED_ORDERS, MAGAZINE>;

/// What a free through the cache did.
pub(super) enum CachedFree {
    /// The block is in the caller's magazine.
    Cached,
    /// Not for the cache: the locked free decides.
    Uncached,
}

/// Units of a refill chunk (see [`Heap::allocate_refilling`]): one cache
/// line of the size table.
const CHUNK_UNITS_LOG2: u32 = 4;
const _: () = assert!(1 << CHUNK_UNITS_LOG2 <= MAGAZINE);

impl Heap<'_> {
    /// Allocates a block of `order` for `size` bytes for a thread whose
    /// `magazine` of that order is empty: a block of a small order comes out
    /// of a chunk of 16 units (one 64-byte line of the size table) split
    /// whole, the rest of it cached in the magazine. So each thread's small
    /// blocks have their size entries, which its cached frees and
    /// allocations write, on lines of its own, and one lock serves a
    /// magazine's worth of allocations.
    ///
    /// The chunk is allocated as one live block (recorded in the hand-off
    /// log, as any allocation), then its upper blocks are written (size
    /// entry cached, then state byte) inside it, where no walk looks, and
    /// the commit is the chunk's own state byte shrinking to `order`. A
    /// kill before it leaves the chunk live (the reaper frees the recorded
    /// offset, the chunk); after it, the upper blocks are cached in no
    /// magazine until they are pushed (`recover` frees them).
    pub(super) fn allocate_refilling(
        &self,
        size: u64,
        order: u32,
        magazine: &magazine::Magazine<MAGAZINE>,
    ) -> Result<u64> {
        let chunk_order = self.geo.min_order + CHUNK_UNITS_LOG2;
        if order >= chunk_order || magazine.len() != 0 || !self.cacheable(chunk_order) {
            return self.allocate_locked(size, order);
        }
        let offset = match self.allocate_locked(size, chunk_order) {
            Ok(offset) => offset,
            // No chunk left: the block alone.
            Err(Error::OutOfMemory { .. }) => return self.allocate_locked(size, order),
            Err(other) => return Err(other),
        };
        let Some(unit) = self.unit(offset) else {
            return Err(Error::corrupt(format!(
                "refill chunk {offset} is off the unit grid"
            )));
        };
        // Tentative again until the split is done: a kill in between has
        // the lock's next taker free what the record names (the chunk, or
        // its first block), and `recover` the cached rest.
        let log = handoff::my_slot(self.segment);
        if let Some(log) = log {
            log.intend(offset);
        }
        let span = self.span(order);
        let blocks = self.span(chunk_order) / span;
        for upper in (1..blocks).rev().map(|i| unit + i * span) {
            // The length's high word (a block of two units or more has one)
            // is 0 for every cached order; the low word says cached.
            if span > 1 {
                if let Some(high) = self.sizes.get(upper + 1) {
                    high.store(0, Ordering::Relaxed);
                }
            }
            if let Some(entry) = self.sizes.get(upper) {
                entry.store(CACHED_SIZE, Ordering::Relaxed);
            }
            self.set(upper, HEAD | ALLOCATED | order as u8);
        }
        // The commit: the chunk is `blocks` blocks from here on.
        self.set(unit, HEAD | ALLOCATED | order as u8);
        crash_point!("buddy.cache.refill_split");
        // At most 15 of them: room stays for the caller's next free.
        for upper in (1..blocks).rev().map(|i| unit + i * span) {
            magazine.push(self.offset(upper));
        }
        if let Some(log) = log {
            log.record(offset);
        }
        Ok(offset)
    }

    /// Whether blocks of `order` may be cached.
    #[inline]
    pub(super) fn cacheable(&self, order: u32) -> bool {
        order <= CACHED_MAX_ORDER
    }

    /// The magazine index of `order`.
    #[inline]
    fn magazine_of(&self, order: u32) -> Option<usize> {
        self.cacheable(order)
            .then(|| (order - self.geo.min_order) as usize)
    }

    /// Whether the live block at `unit` of `order` is cached.
    #[inline]
    pub(super) fn is_cached(&self, unit: usize, order: u32) -> bool {
        self.cacheable(order)
            && self
                .sizes
                .get(unit)
                .is_some_and(|entry| entry.load(Ordering::Acquire) == CACHED_SIZE)
    }

    /// Swaps the size entry of the block at `unit` from `from` to `to`;
    /// `false` if it held something else.
    #[inline]
    pub(super) fn swap_size(&self, unit: usize, from: u32, to: u32) -> bool {
        self.sizes.get(unit).is_some_and(|entry| {
            entry
                .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        })
    }

    /// The live block of a cached order at `offset` and its length, read
    /// without the lock, only as far as this process has seen the heap
    /// (the tables past it may be unbacked here).
    #[inline]
    fn cacheable_live_block(&self, offset: u64) -> Option<(usize, u32)> {
        let unit = self.unit(offset)?;
        // Past what this process has seen, the locked free decides.
        let seen = ((self.tables_backed.load(Ordering::Acquire) - self.geo.heap_start)
            >> self.geo.min_order) as usize;
        match self.head_at(unit, seen)? {
            (order, true) if self.cacheable(order) => Some((unit, order)),
            _ => None,
        }
    }

    /// [`head_at`](Self::head_at) without the lock: as far as this process
    /// has seen the heap, and past that after looking at the heap end again
    /// (which backs the table pages up to it here), as a slot's magazine
    /// may hold blocks another handle or process put there.
    #[inline]
    fn head_seen(&self, unit: usize) -> Option<(u32, bool)> {
        let seen = ((self.tables_backed.load(Ordering::Acquire) - self.geo.heap_start)
            >> self.geo.min_order) as usize;
        if unit < seen {
            self.head_at(unit, seen)
        } else {
            self.head_past_seen(unit)
        }
    }

    /// [`head_seen`](Self::head_seen) past what this process has seen: out
    /// of the hot path's way (inlined, it cost 8 ns per operation).
    #[cold]
    #[inline(never)]
    fn head_past_seen(&self, unit: usize) -> Option<(u32, bool)> {
        self.head_at(unit, self.end_units().ok()?)
    }

    /// Whether the state byte at `unit` still says a live block of `order`.
    #[inline]
    fn still_live(&self, unit: usize, order: u32) -> bool {
        self.byte(unit) == HEAD | ALLOCATED | order as u8
    }

    /// Gives a block a magazine gave up back to the heap (counted as freed
    /// when it was cached); an entry that is not a cached block (a stray
    /// write) is dropped.
    fn give_back(&self, offset: u64) {
        crash_point!("buddy.cache.giving_back");
        let _ = self.free_as(offset, true);
    }

    /// Frees every block still marked cached once every magazine is empty:
    /// the ones a killed thread left between its cache and the heap.
    /// Returns how many.
    fn free_orphans(&self) -> Result<u64> {
        let end = self.end_units()?;
        let mut orphans = Vec::new();
        let mut unit = 0;
        while unit < end {
            let (order, allocated) = self.walked_head(unit, end)?;
            if allocated && self.is_cached(unit, order) {
                orphans.push(self.offset(unit));
            }
            unit += self.span(order);
        }
        for &offset in &orphans {
            self.free_as(offset, true)?;
        }
        Ok(orphans.len() as u64)
    }

    /// Checks every magazine entry against the cached blocks a walk found
    /// (offset, order), removing them: what stays is cached in no magazine.
    pub(super) fn check_cached(
        &self,
        cached: &mut std::collections::BTreeMap<u64, u32>,
    ) -> Result<()> {
        for (slot, index, offset) in self.state.caches.entries().map_err(Error::corrupt)? {
            let order = self.geo.min_order + index as u32;
            if cached.remove(&offset) != Some(order) {
                return Err(Error::corrupt(format!(
                    "thread cache {slot} holds {offset} among blocks of order {order}: \
                     no cached block of that order (or one held twice)"
                )));
            }
        }
        if !cached.is_empty() {
            return Err(Error::needs_recovery(
                cached.len() as u64,
                0,
                format!("blocks cached in no thread cache: {:?}", cached.keys()),
            ));
        }
        Ok(())
    }

    /// Resets the accounting to what the tables say, in a still picture of
    /// the caches if one comes (see `alloc::magazine`).
    pub(super) fn recount(&self) -> Result<()> {
        self.state.caches.recount_still(self.segment, || {
            let end = self.end_units()?;
            let (mut live, mut bytes) = (0u64, 0u64);
            let mut unit = 0;
            while unit < end {
                let (order, allocated) = self.walked_head(unit, end)?;
                if allocated && !self.is_cached(unit, order) {
                    live += 1;
                    bytes = bytes.saturating_add(self.read_size(unit, order));
                }
                unit += self.span(order);
            }
            self.state.counters.reset_to(self.segment, bytes, live);
            Ok(())
        })
    }

    /// Bytes of the blocks in every magazine (free to the user).
    pub(super) fn cached_bytes(&self) -> u64 {
        let min_order = self.geo.min_order;
        self.state
            .caches
            .counts()
            .iter()
            .enumerate()
            .map(|(index, &count)| count << (min_order + index as u32))
            .sum()
    }
}

impl BuddyAllocator {
    /// Frees the block at `offset` into the caller's magazine, if it is a
    /// live block of a cached order (see the module docs).
    #[inline]
    pub(super) fn cached_free(&self, offset: u64) -> Result<CachedFree> {
        let heap = self.heap();
        let Some((slot, cache)) = heap.state.caches.mine(self.segment()) else {
            return Ok(CachedFree::Uncached);
        };
        let Some((unit, order)) = heap.cacheable_live_block(offset) else {
            return Ok(CachedFree::Uncached);
        };
        let Some(magazine) = heap.magazine_of(order).and_then(|i| cache.magazine(i)) else {
            return Ok(CachedFree::Uncached);
        };
        let requested = heap.read_size(unit, order);
        let Ok(low) = u32::try_from(requested) else {
            return Ok(CachedFree::Uncached);
        };
        if requested > 1 << order {
            return Ok(CachedFree::Uncached);
        }
        // A full magazine leaves the block to the locked free: a run of frees
        // (a batch given back) then costs what it costs without a cache.
        if magazine.is_full() {
            return Ok(CachedFree::Uncached);
        }
        let operation = cache.begin();
        // The record goes before the free can take effect (see
        // `handoff::forget_mine`).
        slot.forget(offset);
        if !heap.swap_size(unit, low, CACHED_SIZE) {
            operation.end();
            return Ok(CachedFree::Uncached);
        }
        if !heap.still_live(unit, order) {
            // Not the block the checks saw: put the length back.
            heap.swap_size(unit, CACHED_SIZE, low);
            operation.end();
            return Ok(CachedFree::Uncached);
        }
        crash_point!("buddy.cache.flagged");
        heap.state.counters.on_free_to(Some(&slot.share), requested);
        self.segment().scrub(offset, 1 << order);
        magazine.push(offset);
        operation.end();
        Ok(CachedFree::Cached)
    }

    /// Hands out a cached block of `order` for a request of `requested`
    /// bytes, from the caller's magazine.
    #[inline]
    pub(super) fn cached_allocate(&self, order: u32, requested: u64) -> Option<u64> {
        let heap = self.heap();
        let index = heap.magazine_of(order)?;
        let (slot, cache) = heap.state.caches.mine(self.segment())?;
        cache.take_from(index, |offset| {
            crash_point!("buddy.cache.popped");
            self.take_cached(&heap, slot, offset, order, requested)
        })
    }

    /// The caller's magazine of `order`, for a refill (see
    /// [`Heap::allocate_refilling`]).
    pub(super) fn empty_magazine_of(&self, order: u32) -> Option<&magazine::Magazine<MAGAZINE>> {
        let state = self.heap().state;
        let (_, cache) = state.caches.mine(self.segment())?;
        let index = order.checked_sub(self.geo.min_order)? as usize;
        (order <= CACHED_MAX_ORDER).then_some(())?;
        cache.magazine(index)
    }

    /// Swaps the size entry of the cached block at `offset` (of `order`) to
    /// `requested`; `None` if the entry was not a cached block of that
    /// order.
    #[inline]
    fn take_cached(
        &self,
        heap: &Heap<'_>,
        slot: &HandoffSlot,
        offset: u64,
        order: u32,
        requested: u64,
    ) -> Option<u64> {
        let unit = heap.unit(offset)?;
        if heap.head_seen(unit) != Some((order, true)) {
            return None;
        }
        // A tentative record, and the count, before the swap (see the free
        // list's cache): a kill leaves a record `recover` settles, and a
        // cached block in no magazine that `check` reports first.
        slot.intend(offset);
        let counters = &heap.state.counters;
        counters.on_allocate_to(Some(&slot.share), requested);
        if !heap.swap_size(unit, CACHED_SIZE, requested as u32) {
            counters.on_free_to(Some(&slot.share), requested);
            slot.forget_intent(offset);
            return None;
        }
        if !heap.still_live(unit, order) {
            // Not the block the checks saw (an entry held twice, which a
            // stray write would make): put the mark back, take nothing.
            heap.swap_size(unit, requested as u32, CACHED_SIZE);
            counters.on_free_to(Some(&slot.share), requested);
            slot.forget_intent(offset);
            return None;
        }
        crash_point!("buddy.cache.taken");
        slot.record(offset);
        Some(offset)
    }

    /// Gives the caller's cached blocks back to the heap, and those of the
    /// slots no live thread holds; returns whether there were any.
    pub(super) fn give_back_idle(&self, heap: &Heap<'_>) -> bool {
        heap.state
            .caches
            .drain_idle(self.segment(), |_, offset| heap.give_back(offset))
    }

    /// Gives the caller's cached blocks back, if there are any, waiting for
    /// the lock only as long as `patience` allows (the blocks otherwise
    /// stay cached, for the slot's next holder).
    /// Also recounts the accounting if a recount is wanted.
    pub(super) fn give_back_mine(&self, patience: Patience) {
        let mut heap = self.heap();
        let caches = &heap.state.caches;
        if !caches.mine_holds_any(self.segment()) && !caches.recount_wanted() {
            return;
        }
        let Ok(guard) = heap.state.lock.lock_with(patience) else {
            return;
        };
        if repair::before_operation(&guard, &mut heap).is_ok() {
            caches.drain_mine(self.segment(), |_, offset| heap.give_back(offset));
            let _ = caches.recount_if_wanted(|| heap.recount());
        }
    }

    /// Gives the caller's cached blocks back as a handle goes away.
    pub(super) fn give_back_on_drop(&self) {
        self.give_back_mine(Patience::Wait(DROP_PATIENCE));
    }

    /// Gives every magazine's blocks back to the heap, then every block
    /// still marked cached (one a killed thread left in no magazine).
    /// Only for a pass that runs alone, under the lock.
    pub(super) fn give_back_everything(&self, heap: &Heap<'_>) -> Result<u64> {
        heap.state
            .caches
            .drain_all(|_, offset| heap.give_back(offset));
        heap.free_orphans()
    }
}
