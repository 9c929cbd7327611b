//! Per-thread magazines kept in a segment: small arrays of freed blocks,
//! one set per hand-off slot (see `handoff`), for the allocators that cache
//! blocks in front of a lock (the free list, the buddy allocator).
//!
//! The magazines of slot `i` are used only by the thread that holds
//! hand-off slot `i`, with plain loads and stores: a block enters by its
//! entry then the count (so a reader never meets a count past the
//! entries), and leaves by the count first (so a thread killed with the
//! block in hand leaves it in no magazine, never in two places). Whoever
//! else empties a set holds the slot meanwhile (`handoff::with_idle_slots`)
//! or runs alone (a recovery pass). What a cached block is, and how it is
//! told apart from a live or free one, is the allocator's business.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use super::handoff::{self, HandoffSlot};
use crate::segment::Segment;

/// Blocks a magazine holds.
pub(crate) const MAGAZINE: usize = 8;
/// Hand-off slots with magazines: the first 16 (threads claim the lowest
/// free slot, so these are the long-lived workers'); a thread on a later
/// slot goes straight to the allocator's lock.
pub(crate) const CACHE_SLOTS: usize = 16;

#[repr(C)]
pub(crate) struct Magazine {
    count: AtomicU64,
    /// Payload offsets of cached blocks; the first `count` are valid.
    items: [AtomicU64; MAGAZINE],
}

impl Magazine {
    fn new() -> Magazine {
        Magazine {
            count: AtomicU64::new(0),
            items: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The entries that may be read (a corrupt count is capped).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        (self.count.load(Ordering::Acquire) as usize).min(MAGAZINE)
    }

    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.len() == MAGAZINE
    }

    /// Adds `offset` (the owner only, and not when full).
    #[inline]
    pub(crate) fn push(&self, offset: u64) {
        let count = self.len();
        debug_assert!(count < MAGAZINE, "push into a full magazine");
        if let Some(item) = self.items.get(count) {
            item.store(offset, Ordering::Relaxed);
            self.count.store(count as u64 + 1, Ordering::Release);
        }
    }

    /// Takes the newest entry out (the owner, or whoever holds the slot).
    #[inline]
    pub(crate) fn pop(&self) -> Option<u64> {
        let count = self.len().checked_sub(1)?;
        let offset = self.items[count].load(Ordering::Relaxed);
        self.count.store(count as u64, Ordering::Release);
        Some(offset)
    }

    /// Pops entries into `give` until `keep` remain.
    pub(crate) fn drain(&self, keep: usize, mut give: impl FnMut(u64)) {
        while self.len() > keep {
            if let Some(offset) = self.pop() {
                give(offset);
            }
        }
    }
}

/// One hand-off slot's magazines, one per cached class, on lines of their
/// own.
#[repr(C, align(128))]
pub(crate) struct ThreadCache<const CLASSES: usize> {
    magazines: [Magazine; CLASSES],
}

impl<const CLASSES: usize> ThreadCache<CLASSES> {
    #[inline]
    pub(crate) fn magazine(&self, class: usize) -> Option<&Magazine> {
        self.magazines.get(class)
    }

    fn is_empty(&self) -> bool {
        self.magazines.iter().all(|magazine| magazine.len() == 0)
    }

    fn drain(&self, mut give: impl FnMut(usize, u64)) {
        for (class, magazine) in self.magazines.iter().enumerate() {
            magazine.drain(0, |offset| give(class, offset));
        }
    }
}

/// Every slot's caches, and the switch that turns them off.
#[repr(C)]
pub(crate) struct ThreadCaches<const CLASSES: usize> {
    /// Non-zero once the allocator turned its caches off for good (after
    /// damage that the lock-free checks would not see).
    off: CachePadded<AtomicU64>,
    slots: [ThreadCache<CLASSES>; CACHE_SLOTS],
}

impl<const CLASSES: usize> ThreadCaches<CLASSES> {
    /// Empty caches, switched on.
    pub(crate) fn new() -> Self {
        ThreadCaches {
            off: CachePadded::new(AtomicU64::new(0)),
            slots: std::array::from_fn(|_| ThreadCache {
                magazines: std::array::from_fn(|_| Magazine::new()),
            }),
        }
    }

    pub(crate) fn switch_off(&self) {
        self.off.store(1, Ordering::Release);
    }

    #[inline]
    pub(crate) fn on(&self) -> bool {
        self.off.load(Ordering::Relaxed) == 0
    }

    /// The calling thread's hand-off slot in `segment` and its cache, when
    /// the caches are on and the slot has one.
    #[inline]
    pub(crate) fn mine<'a>(
        &'a self,
        segment: &'a Segment,
    ) -> Option<(&'a HandoffSlot, &'a ThreadCache<CLASSES>)> {
        if !self.on() {
            return None;
        }
        let (index, slot) = handoff::my_indexed_slot(segment)?;
        Some((slot, self.slots.get(index as usize)?))
    }

    /// The cache of the slot the calling thread holds, without claiming
    /// one (a thread that holds none has nothing cached).
    fn held(&self, segment: &Segment) -> Option<&ThreadCache<CLASSES>> {
        self.slots.get(handoff::my_held_index(segment)? as usize)
    }

    /// Whether the calling thread's cache holds any block.
    pub(crate) fn mine_holds_any(&self, segment: &Segment) -> bool {
        self.held(segment).is_some_and(|cache| !cache.is_empty())
    }

    /// Empties the calling thread's cache into `give` (class, offset).
    pub(crate) fn drain_mine(&self, segment: &Segment, give: impl FnMut(usize, u64)) {
        if let Some(cache) = self.held(segment) {
            cache.drain(give);
        }
    }

    /// Empties the calling thread's cache and those of the slots no live
    /// thread holds into `give`; returns whether there was any block.
    pub(crate) fn drain_idle(&self, segment: &Segment, mut give: impl FnMut(usize, u64)) -> bool {
        let mut any = false;
        let mut empty = |index: u32| {
            if let Some(cache) = self.slots.get(index as usize) {
                any |= !cache.is_empty();
                cache.drain(&mut give);
            }
        };
        if let Some(index) = handoff::my_held_index(segment) {
            empty(index);
        }
        handoff::with_idle_slots(segment, empty);
        any
    }

    /// Empties every cache into `give`: only for a pass that runs alone.
    pub(crate) fn drain_all(&self, mut give: impl FnMut(usize, u64)) {
        for cache in &self.slots {
            cache.drain(&mut give);
        }
    }

    /// The number of blocks each class's magazines hold, summed over the
    /// slots.
    pub(crate) fn counts(&self) -> [u64; CLASSES] {
        let mut counts = [0; CLASSES];
        for cache in &self.slots {
            for (count, magazine) in counts.iter_mut().zip(&cache.magazines) {
                *count += magazine.len() as u64;
            }
        }
        counts
    }

    /// Every entry as (slot, class, offset); a count beyond its magazine is
    /// reported as `Err`.
    pub(crate) fn entries(&self) -> std::result::Result<Vec<(usize, usize, u64)>, String> {
        let mut entries = Vec::new();
        for (slot, cache) in self.slots.iter().enumerate() {
            for (class, magazine) in cache.magazines.iter().enumerate() {
                let count = magazine.count.load(Ordering::Acquire);
                if count > MAGAZINE as u64 {
                    return Err(format!(
                        "thread cache {slot} counts {count} blocks of class {class}, it holds {MAGAZINE}"
                    ));
                }
                for item in &magazine.items[..count as usize] {
                    entries.push((slot, class, item.load(Ordering::Relaxed)));
                }
            }
        }
        Ok(entries)
    }
}
