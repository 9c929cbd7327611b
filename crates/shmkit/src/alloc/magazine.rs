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
//!
//! Each set also has a sequence word, odd while its owner is inside a
//! cached operation (a sequence lock with one writer): a reader that needs a
//! still picture of blocks, magazines and counts together (a recount after
//! a repair, `check`) runs until it saw no cached operation begin or end
//! ([`ThreadCaches::read_still`]). A word left odd by a thread that died
//! marks the operation it was killed in.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use super::handoff::{self, HandoffSlot};
use crate::error::{Error, Result};
use crate::segment::Segment;

/// Hand-off slots with magazines: the first 16 (threads claim the lowest
/// free slot, so these are the long-lived workers'); a thread on a later
/// slot goes straight to the allocator's lock.
pub(crate) const CACHE_SLOTS: usize = 16;

/// Up to `CAP` cached blocks of one class.
#[repr(C)]
pub(crate) struct Magazine<const CAP: usize> {
    count: AtomicU64,
    /// Payload offsets of cached blocks; the first `count` are valid.
    items: [AtomicU64; CAP],
}

impl<const CAP: usize> Magazine<CAP> {
    fn new() -> Self {
        Magazine {
            count: AtomicU64::new(0),
            items: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// The entries that may be read (a corrupt count is capped).
    #[inline]
    pub(crate) fn len(&self) -> usize {
        (self.count.load(Ordering::Acquire) as usize).min(CAP)
    }

    #[inline]
    pub(crate) fn is_full(&self) -> bool {
        self.len() == CAP
    }

    /// Adds `offset` (the owner only, and not when full).
    #[inline]
    pub(crate) fn push(&self, offset: u64) {
        let count = self.len();
        debug_assert!(count < CAP, "push into a full magazine");
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

    /// Pops every entry into `give`.
    pub(crate) fn drain(&self, mut give: impl FnMut(u64)) {
        while let Some(offset) = self.pop() {
            give(offset);
        }
    }
}

/// One hand-off slot's magazines, one per cached class, on lines of their
/// own.
#[repr(C, align(128))]
pub(crate) struct ThreadCache<const CLASSES: usize, const CAP: usize> {
    /// Odd while the owner is inside a cached operation.
    sequence: AtomicU64,
    magazines: [Magazine<CAP>; CLASSES],
}

/// A cached operation under way (see the module docs); [`end`] it.
///
/// [`end`]: Operation::end
#[must_use]
pub(crate) struct Operation<'a> {
    sequence: &'a AtomicU64,
    even: u64,
}

impl Operation<'_> {
    #[inline]
    pub(crate) fn end(self) {
        self.sequence.store(self.even + 2, Ordering::Release);
    }
}

impl<const CLASSES: usize, const CAP: usize> ThreadCache<CLASSES, CAP> {
    /// Marks the start of a cached operation (the owner only).
    #[inline]
    pub(crate) fn begin(&self) -> Operation<'_> {
        // A word a killed owner left odd is taken as ended.
        let even = (self.sequence.load(Ordering::Relaxed) + 1) & !1;
        self.sequence.store(even + 1, Ordering::Relaxed);
        // What the operation writes is seen only with the odd word.
        fence(Ordering::Release);
        Operation {
            sequence: &self.sequence,
            even,
        }
    }

    #[inline]
    pub(crate) fn magazine(&self, class: usize) -> Option<&Magazine<CAP>> {
        self.magazines.get(class)
    }

    /// Pops entries of magazine `class` until `take` accepts one (and
    /// returns the block), inside one cached operation; an entry `take`
    /// refuses is dropped (it named no cached block of that class).
    #[inline]
    pub(crate) fn take_from(
        &self,
        class: usize,
        mut take: impl FnMut(u64) -> Option<u64>,
    ) -> Option<u64> {
        let magazine = self.magazine(class)?;
        if magazine.len() == 0 {
            return None;
        }
        let operation = self.begin();
        let mut taken = None;
        // The entry leaves the magazine before anything else.
        while let Some(offset) = magazine.pop() {
            taken = take(offset);
            if taken.is_some() {
                break;
            }
        }
        operation.end();
        taken
    }

    fn is_empty(&self) -> bool {
        self.magazines.iter().all(|magazine| magazine.len() == 0)
    }

    fn drain(&self, mut give: impl FnMut(usize, u64)) {
        for (class, magazine) in self.magazines.iter().enumerate() {
            magazine.drain(|offset| give(class, offset));
        }
    }
}

/// Every slot's caches, and the words about them all.
#[repr(C)]
pub(crate) struct ThreadCaches<const CLASSES: usize, const CAP: usize> {
    flags: CachePadded<Flags>,
    slots: [ThreadCache<CLASSES, CAP>; CACHE_SLOTS],
}

#[repr(C)]
struct Flags {
    /// Non-zero once the allocator turned its caches off for good (after
    /// damage that the lock-free checks would not see).
    off: AtomicU64,
    /// Non-zero while the accounting may be off: a recount could not get a
    /// still picture (cached operations never paused, or one was killed).
    recount_wanted: AtomicU64,
}

/// What [`ThreadCaches::read_still`] saw.
pub(crate) enum Still<R> {
    /// A run during which no cached operation began or ended.
    Quiet(R),
    /// Cached operations ran during every try.
    Busy,
    /// These slots were left inside an operation by threads that died.
    Interrupted(Vec<usize>),
}

impl<const CLASSES: usize, const CAP: usize> ThreadCaches<CLASSES, CAP> {
    /// Empty caches, switched on.
    pub(crate) fn new() -> Self {
        ThreadCaches {
            flags: CachePadded::new(Flags {
                off: AtomicU64::new(0),
                recount_wanted: AtomicU64::new(0),
            }),
            slots: std::array::from_fn(|_| ThreadCache {
                sequence: AtomicU64::new(0),
                magazines: std::array::from_fn(|_| Magazine::new()),
            }),
        }
    }

    pub(crate) fn switch_off(&self) {
        self.flags.off.store(1, Ordering::Release);
    }

    #[inline]
    pub(crate) fn on(&self) -> bool {
        self.flags.off.load(Ordering::Relaxed) == 0
    }

    /// Whether the accounting may be off (see [`Flags::recount_wanted`]).
    pub(crate) fn recount_wanted(&self) -> bool {
        self.flags.recount_wanted.load(Ordering::Acquire) != 0
    }

    /// Runs `read` (at most `tries` times) until a run saw no cached
    /// operation begin or end, for a reader that needs blocks, magazines
    /// and counts to agree.
    pub(crate) fn read_still<R>(
        &self,
        segment: &Segment,
        tries: usize,
        mut read: impl FnMut() -> R,
    ) -> Still<R> {
        for _ in 0..tries {
            let before: Vec<u64> = self
                .slots
                .iter()
                .map(|cache| cache.sequence.load(Ordering::Acquire))
                .collect();
            let odd: Vec<usize> = (0..before.len()).filter(|&i| before[i] & 1 != 0).collect();
            if !odd.is_empty() {
                let dead: Vec<usize> = odd
                    .into_iter()
                    .filter(|&i| !handoff::held_by_live_thread(segment, i))
                    .collect();
                if !dead.is_empty() {
                    return Still::Interrupted(dead);
                }
                std::thread::yield_now();
                continue;
            }
            let result = read();
            fence(Ordering::Acquire);
            if self
                .slots
                .iter()
                .zip(&before)
                .all(|(cache, &seen)| cache.sequence.load(Ordering::Relaxed) == seen)
            {
                return Still::Quiet(result);
            }
        }
        Still::Busy
    }

    /// Recounts with `recount` (which also resets the counters) in a still
    /// picture; when none comes, keeps the last count and marks the
    /// accounting as possibly off until a later recount gets one.
    pub(crate) fn recount_still<E>(
        &self,
        segment: &Segment,
        mut recount: impl FnMut() -> Result<(), E>,
    ) -> Result<(), E> {
        let exact = match self.read_still(segment, 3, &mut recount) {
            Still::Quiet(result) => {
                result?;
                true
            }
            Still::Busy | Still::Interrupted(_) => {
                recount()?;
                false
            }
        };
        self.flags
            .recount_wanted
            .store(u64::from(!exact), Ordering::Release);
        Ok(())
    }

    /// Runs an allocator's `check` (told whether the caches are still) in a
    /// still picture if one comes, else without the caches and the
    /// accounting; a cached operation a killed thread left is a crash trace
    /// (what it left, a half-written header or a block in no magazine, is
    /// recovery's to mend and a check after it to judge). Recounts first if
    /// a recount is wanted, with `recount`.
    pub(crate) fn check_beside(
        &self,
        segment: &Segment,
        recount: impl FnOnce() -> Result<()>,
        check: impl Fn(bool) -> Result<()>,
    ) -> Result<()> {
        self.recount_if_wanted(recount)?;
        match self.read_still(segment, 3, || check(true)) {
            Still::Quiet(result) => result,
            Still::Interrupted(slots) => Err(Error::needs_recovery(
                0,
                slots.len() as u64,
                format!(
                    "thread caches {slots:?} were left inside an operation by threads that died"
                ),
            )),
            Still::Busy => check(false),
        }
    }

    /// Runs `recount` if an earlier recount could not get a still picture
    /// (the next quiet moment makes the accounting exact again).
    pub(crate) fn recount_if_wanted(&self, recount: impl FnOnce() -> Result<()>) -> Result<()> {
        if self.recount_wanted() {
            recount()
        } else {
            Ok(())
        }
    }

    /// The error for accounting (`what`) that disagrees with the blocks:
    /// corruption, unless a repair ran beside cached operations and could
    /// not recount (see [`Flags::recount_wanted`]).
    pub(crate) fn accounting_error(&self, what: String) -> Error {
        if self.recount_wanted() {
            Error::needs_recovery(
                0,
                0,
                format!("{what} (a repair ran beside cached operations)"),
            )
        } else {
            Error::corrupt(what)
        }
    }

    /// Takes the operations dead threads were killed in as ended, once a
    /// pass that runs alone mended what they left (see
    /// [`Still::Interrupted`]).
    pub(crate) fn forget_interrupted(&self) {
        for cache in &self.slots {
            let sequence = cache.sequence.load(Ordering::Acquire);
            if sequence & 1 != 0 {
                cache.sequence.store(sequence + 1, Ordering::Release);
            }
        }
    }

    /// The calling thread's hand-off slot in `segment` and its cache, when
    /// the caches are on and the slot has one.
    #[inline]
    pub(crate) fn mine<'a>(
        &'a self,
        segment: &'a Segment,
    ) -> Option<(&'a HandoffSlot, &'a ThreadCache<CLASSES, CAP>)> {
        if !self.on() {
            return None;
        }
        let (index, slot) = handoff::my_indexed_slot(segment)?;
        Some((slot, self.slots.get(index as usize)?))
    }

    /// The cache of the slot the calling thread holds, without claiming
    /// one (a thread that holds none has nothing cached).
    fn held(&self, segment: &Segment) -> Option<&ThreadCache<CLASSES, CAP>> {
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
                if count > CAP as u64 {
                    return Err(format!(
                        "thread cache {slot} counts {count} blocks of class {class}, it holds {CAP}"
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

/// The sequence protocol of [`ThreadCache::begin`], [`Operation::end`] and
/// [`ThreadCaches::read_still`], line for line on `loom`'s atomics (the
/// segment's words are `std`'s): a cached operation marks a block and
/// counts it, a reader takes both in one still picture.
#[cfg(test)]
mod loom_models {
    use loom::sync::atomic::{fence, AtomicU64, Ordering};
    use loom::sync::Arc;

    /// A reader that saw the same even word before and after its reads saw
    /// all of an operation's writes or none.
    #[test]
    fn a_still_read_never_sees_half_an_operation() {
        loom::model(|| {
            let sequence = Arc::new(AtomicU64::new(0));
            // The block's mark (a compare-and-swap in the allocators) and
            // the owner's count (plain stores on its own line).
            let mark = Arc::new(AtomicU64::new(0));
            let count = Arc::new(AtomicU64::new(0));
            let writer = {
                let (sequence, mark, count) = (sequence.clone(), mark.clone(), count.clone());
                loom::thread::spawn(move || {
                    // `begin`
                    let even = (sequence.load(Ordering::Relaxed) + 1) & !1;
                    sequence.store(even + 1, Ordering::Relaxed);
                    fence(Ordering::Release);
                    // The operation.
                    mark.compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
                        .unwrap();
                    count.store(1, Ordering::Relaxed);
                    // `end`
                    sequence.store(even + 2, Ordering::Release);
                })
            };
            // One try of `read_still`.
            let before = sequence.load(Ordering::Acquire);
            if before & 1 == 0 {
                let marked = mark.load(Ordering::Acquire);
                let counted = count.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if sequence.load(Ordering::Relaxed) == before {
                    assert_eq!(marked, counted, "a still picture with half an operation");
                }
            }
            writer.join().unwrap();
        });
    }

    /// Of two frees of one block at the same instant (each a
    /// compare-and-swap from the live word to the marked one), exactly one
    /// wins, and a take after both sees the block marked once.
    #[test]
    fn two_racing_frees_mark_a_block_once() {
        const LIVE: u64 = 96;
        const CACHED: u64 = LIVE | 8;
        loom::model(|| {
            let word = Arc::new(AtomicU64::new(LIVE));
            let wins = Arc::new(AtomicU64::new(0));
            let freers: Vec<_> = (0..2)
                .map(|_| {
                    let (word, wins) = (word.clone(), wins.clone());
                    loom::thread::spawn(move || {
                        if word
                            .compare_exchange(LIVE, CACHED, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok()
                        {
                            wins.fetch_add(1, Ordering::AcqRel);
                        }
                    })
                })
                .collect();
            for freer in freers {
                freer.join().unwrap();
            }
            assert_eq!(wins.load(Ordering::Acquire), 1);
            assert_eq!(
                word.compare_exchange(CACHED, LIVE, Ordering::AcqRel, Ordering::Acquire),
                Ok(CACHED)
            );
        });
    }
}
