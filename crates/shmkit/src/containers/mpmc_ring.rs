//! A bounded multi-producer multi-consumer queue that lives in a segment:
//! Dmitry Vyukov's ring of cells, each with a sequence number.
//!
//! Every cell holds a sequence word and a value. Position `p` (a 64-bit
//! counter that never wraps in practice) maps to cell `p & mask`. A
//! producer at position `p` may write the cell when its sequence is `p`: it
//! claims `p` by moving the tail from `p` to `p + 1` (compare-and-swap),
//! writes the value, then publishes the cell by storing `p + 1` (release).
//! A consumer at position `p` may read the cell when its sequence is
//! `p + 1`: it claims `p` by moving the head, reads the value, then releases
//! the cell for the next lap by storing `p + capacity`. Head and tail sit on
//! cache lines of their own, so producers and consumers only meet on the
//! cells they hand over.
//!
//! What both rings share (the environment the algorithms run in, the
//! fixed header and its validation, the futex *signal* the blocking
//! operations sleep on) lives in `ring_core`.
//!
//! ## Sleeping without lost wake-ups
//!
//! Each direction (not-empty for consumers, not-full for producers) has a
//! waiter count and an event sequence, both 32-bit words on a line of their
//! own. A sleeper raises the count, issues a `SeqCst` fence, reads the event
//! sequence, tries its operation once more, and only then sleeps on the
//! event word (futex) while it still holds the value it read. A push or pop
//! that changed the ring issues a `SeqCst` fence and reads the count: only
//! when it is not zero does it bump the event sequence and wake one sleeper
//! (a system call). The two fences are ordered, so either the sleeper's
//! re-check sees the change, or the changer sees the sleeper and changes
//! the word the sleeper waits on (the kernel compares it atomically): a
//! wake-up cannot be lost. The loom models below check exactly this code.
//! Sleeps are still cut into slices (the *recheck interval*, 100 ms by
//! default), so even a changer killed between its change and its wake
//! delays a sleeper by at most one slice.

use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::ring_core::{
    clamp_recheck, deadline_after, fixed_for, new_signal, Env, Fixed, Line, Os, SeqCells, Shape,
    Signal, Values, DEFAULT_RECHECK,
};
use crate::alloc::handoff;
use crate::alloc::ShmAllocator;
use crate::crash_point::crash_point;
use crate::error::Result;
use crate::ptr::{Offset, ShmSafe};
use crate::sync::atomic_word::Atomic64;

/// One cell of the MPMC ring in a segment.
#[repr(C)]
struct Slot<T> {
    seq: AtomicU64,
    value: T,
}

/// The cells of an MPMC ring in a segment.
struct SegSlots<T> {
    first: NonNull<Slot<T>>,
}

impl<T: Copy> Values<T> for SegSlots<T> {
    #[inline]
    unsafe fn write(&self, index: usize, value: T) {
        // SAFETY: the caller keeps `index` below the validated capacity, so
        // the slot lies inside the ring's block; it holds the cell alone.
        unsafe { (&raw mut (*self.first.as_ptr().add(index)).value).write(value) }
    }

    #[inline]
    unsafe fn read(&self, index: usize) -> T {
        // SAFETY: as in `write`; `T: ShmSafe` accepts whatever bytes the
        // cell holds.
        unsafe { (&raw const (*self.first.as_ptr().add(index)).value).read() }
    }
}

impl<T: Copy> SeqCells<T> for SegSlots<T> {
    type Seq = AtomicU64;

    #[inline]
    unsafe fn seq(&self, index: usize) -> &AtomicU64 {
        // SAFETY: inside the block (the caller's bound); an atomic.
        unsafe { &(*self.first.as_ptr().add(index)).seq }
    }
}

// ------------------------------------------------------------- the algorithm

/// The shared words of an MPMC ring, generic over the atomics so the loom
/// models run the same code.
#[repr(C)]
pub(super) struct MpmcWords<A64, A32> {
    pub(super) fixed: Line<Fixed<A64>>,
    /// The next position to push to (producers).
    pub(super) tail: Line<A64>,
    /// The next position to pop from (consumers).
    pub(super) head: Line<A64>,
    /// Consumers sleep here while the ring is empty.
    pub(super) not_empty: Line<Signal<A32>>,
    /// Producers sleep here while the ring is full.
    pub(super) not_full: Line<Signal<A32>>,
}

/// The side of an unfinished claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    /// A push claimed the position (moved the tail) and has not published.
    Push,
    /// A pop claimed the position (moved the head) and has not released.
    Pop,
}

/// Who claims a cell, for the repair of claims whose process died (see
/// "When a process dies in the middle" on [`MpmcRing`]). Outside a segment
/// (and in the loom models) nobody records anything and nothing is
/// repaired.
pub(super) trait Claims {
    /// Where this thread's notes go, found once per operation.
    type Note: Copy;
    /// Before the compare-and-swap that would claim `position` for `side`.
    fn claiming(&self, side: Side, position: u64) -> Self::Note;
    /// The compare-and-swap won the claim.
    #[inline]
    fn won(&self, _note: Self::Note, _side: Side, _position: u64) {}
    /// After the claimed cell was published or released, or after the
    /// compare-and-swap lost.
    #[inline]
    fn finished(&self, _note: Self::Note) {}
    /// Whether this handle has seen `position` unfinished for `side` long
    /// enough to judge its claimer (checked first, before any shared word
    /// is read: an empty ring looks the same until the index is read).
    #[inline]
    fn stuck(&self, _side: Side, _position: u64) -> bool {
        false
    }
    /// Whether the unfinished claim of `position` for `side` belongs to a
    /// thread that died.
    #[inline]
    fn claimer_died(&self, _side: Side, _position: u64) -> bool {
        false
    }
    /// The claim was finished on a dead thread's behalf.
    #[inline]
    fn repaired(&self, _side: Side, _position: u64) {}
}

/// Records nothing: a ring outside a segment, or a loom model.
pub(super) struct NoClaims;

impl Claims for NoClaims {
    type Note = ();
    #[inline]
    fn claiming(&self, _side: Side, _position: u64) {}
}

/// Claims noted in the calling thread's slot of the segment's hand-off log
/// (`alloc::handoff`), under the ring's offset; nothing for a ring outside
/// a segment.
pub(super) struct LoggedClaims<'a> {
    segment: Option<&'a crate::segment::Segment>,
    ring: u64,
    /// Per side, the position this handle last found unfinished, how many
    /// times in a row, and since when (nanoseconds since [`since_start`]'s
    /// origin): a claim is judged only once it has stayed unfinished for
    /// [`STUCK_FOR`], so an ordinary claim in flight (or an empty ring)
    /// costs a few loads and stores of this handle's own memory.
    suspect: [AtomicU64; 2],
    sightings: [AtomicU64; 2],
    suspected_at: [AtomicU64; 2],
}

/// Sightings of the same position between two readings of the clock.
const SIGHTINGS_PER_CLOCK: u64 = 8;

/// How long a claim must stay unfinished before its thread is judged.
const STUCK_FOR: Duration = Duration::from_millis(10);

/// Nanoseconds since a fixed instant of this process.
fn since_start() -> u64 {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// A claim as the hand-off log keeps it: the position, and the side in the
/// top bit (positions never get there).
#[inline]
fn claim_word(side: Side, position: u64) -> u64 {
    (position & ((1 << 62) - 1)) | (u64::from(side == Side::Pop) << 63)
}

impl<'a> Claims for LoggedClaims<'a> {
    type Note = Option<&'a handoff::HandoffSlot>;

    #[inline]
    fn claiming(&self, side: Side, position: u64) -> Self::Note {
        let log = self.segment.and_then(handoff::my_slot);
        if let Some(log) = log {
            log.intend_claim(self.ring, claim_word(side, position));
        }
        log
    }

    #[inline]
    fn won(&self, note: Self::Note, side: Side, position: u64) {
        if let Some(log) = note {
            log.claim_won(claim_word(side, position));
        }
    }

    #[inline]
    fn finished(&self, note: Self::Note) {
        if let Some(log) = note {
            log.claim_done();
        }
    }

    #[inline]
    fn stuck(&self, side: Side, position: u64) -> bool {
        if self.segment.is_none() {
            return false;
        }
        let which = usize::from(side == Side::Pop);
        if self.suspect[which].load(Ordering::Relaxed) != position {
            self.suspect[which].store(position, Ordering::Relaxed);
            self.sightings[which].store(0, Ordering::Relaxed);
            return false;
        }
        let seen = self.sightings[which].load(Ordering::Relaxed) + 1;
        self.sightings[which].store(seen, Ordering::Relaxed);
        // The clock is read only for a position seen unfinished again and
        // again: an ordinary claim in flight is gone long before.
        if seen % SIGHTINGS_PER_CLOCK != 0 {
            return false;
        }
        if seen == SIGHTINGS_PER_CLOCK {
            self.suspected_at[which].store(since_start(), Ordering::Relaxed);
            return false;
        }
        since_start().saturating_sub(self.suspected_at[which].load(Ordering::Relaxed))
            >= STUCK_FOR.as_nanos() as u64
    }

    #[cold]
    fn claimer_died(&self, side: Side, position: u64) -> bool {
        self.segment.is_some_and(|segment| {
            handoff::ring_claim_died(segment, self.ring, claim_word(side, position))
        })
    }

    #[cold]
    fn repaired(&self, side: Side, position: u64) {
        if let Some(segment) = self.segment {
            handoff::forget_ring_claim(segment, self.ring, claim_word(side, position));
        }
    }
}

/// Vyukov's algorithm over some words, cells and environment.
pub(super) struct MpmcCore<'r, T, E: Env, S, C: Claims = NoClaims> {
    pub(super) words: &'r MpmcWords<E::U64, E::U32>,
    pub(super) cells: S,
    pub(super) mask: u64,
    pub(super) env: &'r E,
    pub(super) claims: &'r C,
    pub(super) _values: PhantomData<fn(T) -> T>,
}

impl<T: Copy, E: Env, S: SeqCells<T, Seq = E::U64>, C: Claims> MpmcCore<'_, T, E, S, C> {
    #[inline]
    fn seq(&self, position: u64) -> &E::U64 {
        // SAFETY: masked, so below the capacity (`mask + 1`).
        unsafe { self.cells.seq((position & self.mask) as usize) }
    }

    /// Pushes unless the ring is full (or its shared words contradict each
    /// other, which also reads as full).
    #[inline]
    pub(super) fn try_push(&self, value: T) -> std::result::Result<(), T> {
        self.try_push_checking(value, true)
    }

    /// [`try_push`](Self::try_push); with `repair`, a full ring is also
    /// checked for a cell a dead pop holds (left out while spinning).
    #[inline]
    fn try_push_checking(&self, value: T, repair: bool) -> std::result::Result<(), T> {
        let tail = &self.words.tail.0;
        let mut position = tail.load(Ordering::Relaxed);
        loop {
            let seq = self.seq(position);
            let lap = seq.load(Ordering::Acquire);
            let ahead = lap.wrapping_sub(position) as i64;
            if ahead == 0 {
                let note = self.claims.claiming(Side::Push, position);
                // Acquire-release: a repairer that sees the tail moved also
                // sees the claim noted before it.
                match tail.compare_exchange_weak(
                    position,
                    position.wrapping_add(1),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        self.claims.won(note, Side::Push, position);
                        crash_point!("mpmc.push.claimed");
                        // SAFETY: masked index; claiming `position` gave us
                        // the cell until we publish it.
                        unsafe { self.cells.write((position & self.mask) as usize, value) };
                        seq.store(position.wrapping_add(1), Ordering::Release);
                        self.claims.finished(note);
                        self.words.not_empty.0.notify(self.env);
                        return Ok(());
                    }
                    Err(actual) => {
                        self.claims.finished(note);
                        position = actual;
                    }
                }
            } else if ahead < 0 {
                // The cell still holds last lap's value: full, unless a pop
                // claimed that value (moved the head past it) and its thread
                // died before releasing the cell: then release it on the
                // dead thread's behalf (its value is lost with it).
                if repair && self.released_for_dead_pop(seq, lap, position) {
                    continue;
                }
                return Err(value);
            } else {
                // Another producer took this position: the tail has moved
                // (the acquire load above saw its publication, which
                // follows its claim). If it has not, the words are corrupt.
                let now = tail.load(Ordering::Relaxed);
                if now == position {
                    return Err(value);
                }
                position = now;
            }
        }
    }

    /// Pops unless the ring is empty (or inconsistent, which reads as
    /// empty).
    #[inline]
    pub(super) fn try_pop(&self) -> Option<T> {
        self.try_pop_checking(true)
    }

    /// [`try_pop`](Self::try_pop); with `repair`, an empty-looking ring is
    /// also checked for a cell a dead push holds (left out while spinning).
    #[inline]
    fn try_pop_checking(&self, repair: bool) -> Option<T> {
        let head = &self.words.head.0;
        let mut position = head.load(Ordering::Relaxed);
        // Skipped cells (see below) are at most a ring's worth; past that
        // the words are corrupt, which reads as empty.
        let mut skips = 0u64;
        loop {
            let seq = self.seq(position);
            let lap = seq.load(Ordering::Acquire);
            let ahead = lap.wrapping_sub(position.wrapping_add(1)) as i64;
            let next_lap = position.wrapping_add(self.mask).wrapping_add(1);
            if ahead == 0 {
                let note = self.claims.claiming(Side::Pop, position);
                // Acquire-release, as for the tail in `try_push`.
                match head.compare_exchange_weak(
                    position,
                    position.wrapping_add(1),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        self.claims.won(note, Side::Pop, position);
                        crash_point!("mpmc.pop.claimed");
                        // SAFETY: masked index; the cell was published and
                        // claiming `position` gave it to us.
                        let value = unsafe { self.cells.read((position & self.mask) as usize) };
                        seq.store(next_lap, Ordering::Release);
                        self.claims.finished(note);
                        self.words.not_full.0.notify(self.env);
                        return Some(value);
                    }
                    Err(actual) => {
                        self.claims.finished(note);
                        position = actual;
                    }
                }
            } else if ahead < 0 {
                // Not published yet: empty at this position, unless a push
                // claimed it (moved the tail past it) and its thread died
                // before publishing: then skip the cell (release it for the
                // next lap; the dead thread's value never arrived).
                if repair && self.skipped_dead_push(seq, lap, position) {
                    continue;
                }
                return None;
            } else {
                let now = head.load(Ordering::Relaxed);
                if now != position {
                    position = now;
                    continue;
                }
                // The head has not moved, yet the cell is already released
                // for a later lap: a skip (above) in progress. Move the head
                // past it on the skipper's behalf.
                if skips <= self.mask && self.helped_past_skip(lap, position) {
                    skips += 1;
                    position = head.load(Ordering::Relaxed);
                    continue;
                }
                return None;
            }
        }
    }

    /// For a push that found its cell still holding last lap's value: if a
    /// pop claimed that value (the head moved past it) and its thread died
    /// before releasing the cell, releases it on the dead thread's behalf
    /// (the value is lost with it). Whether the push should try again.
    #[cold]
    #[inline(never)]
    fn released_for_dead_pop(&self, seq: &E::U64, lap: u64, position: u64) -> bool {
        let behind = position.wrapping_sub(self.mask).wrapping_sub(1);
        let died = lap == behind.wrapping_add(1) && self.claimed_by_the_dead(Side::Pop, behind);
        if died
            && seq
                .compare_exchange_weak(lap, position, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.claims.repaired(Side::Pop, behind);
            self.words.not_full.0.notify(self.env);
        }
        died
    }

    /// Whether `side`'s claim at `position` belongs to the dead: the cell is
    /// stuck, the side's cursor has moved past it (so it was claimed), and
    /// the claimer's note says it died.
    fn claimed_by_the_dead(&self, side: Side, position: u64) -> bool {
        let cursor = match side {
            Side::Push => &self.words.tail.0,
            Side::Pop => &self.words.head.0,
        };
        self.claims.stuck(side, position)
            && cursor.load(Ordering::Acquire).wrapping_sub(position) as i64 > 0
            && self.claims.claimer_died(side, position)
    }

    /// For a pop that found its cell unpublished: if a push claimed it (the
    /// tail moved past it) and its thread died before publishing, skips
    /// the cell (releases it for the next lap; the value never arrived).
    /// Whether the pop should try again.
    #[cold]
    #[inline(never)]
    fn skipped_dead_push(&self, seq: &E::U64, lap: u64, position: u64) -> bool {
        let died = lap == position && self.claimed_by_the_dead(Side::Push, position);
        let next_lap = position.wrapping_add(self.mask).wrapping_add(1);
        if died
            && seq
                .compare_exchange_weak(lap, next_lap, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.claims.repaired(Side::Push, position);
        }
        died
    }

    /// For a pop at a head that has not moved although its cell is already
    /// released for a later lap (a skip in progress, see
    /// [`skipped_dead_push`](Self::skipped_dead_push)): moves the head past
    /// it. Whether it did (or someone did).
    #[cold]
    #[inline(never)]
    fn helped_past_skip(&self, lap: u64, position: u64) -> bool {
        let next_lap = position.wrapping_add(self.mask).wrapping_add(1);
        // A skipped cell holds the next lap's number, or one more once a
        // push of the next lap published into it (the lap after needs this
        // head to move first); anything else is corrupt words, which read
        // as empty.
        if (lap == next_lap || lap == next_lap.wrapping_add(1))
            && self
                .words
                .tail
                .0
                .load(Ordering::Acquire)
                .wrapping_sub(position) as i64
                > 0
        {
            if self
                .words
                .head
                .0
                .compare_exchange_weak(
                    position,
                    position.wrapping_add(1),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                self.words.not_full.0.notify(self.env);
            }
            return true;
        }
        false
    }

    pub(super) fn push_until(
        &self,
        value: T,
        deadline: Option<Instant>,
        recheck: Duration,
    ) -> std::result::Result<(), T> {
        if self.try_push(value).is_ok() {
            return Ok(());
        }
        match self
            .words
            .not_full
            .0
            .block_until(self.env, deadline, recheck, |slow| {
                self.try_push_checking(value, slow).ok()
            }) {
            Some(()) => Ok(()),
            None => Err(value),
        }
    }

    pub(super) fn pop_until(&self, deadline: Option<Instant>, recheck: Duration) -> Option<T> {
        if let Some(value) = self.try_pop() {
            return Some(value);
        }
        self.words
            .not_empty
            .0
            .block_until(self.env, deadline, recheck, |slow| {
                self.try_pop_checking(slow)
            })
    }

    /// Values in the ring, clamped to the capacity (a snapshot: approximate
    /// under concurrency).
    pub(super) fn len(&self) -> u64 {
        // Head first: the tail read after it is at least as new.
        let head = self.words.head.0.load(Ordering::Acquire);
        let tail = self.words.tail.0.load(Ordering::Acquire);
        tail.wrapping_sub(head).min(self.mask + 1)
    }

    /// Visits the published values from head to tail without taking them.
    ///
    /// # Safety
    ///
    /// No other thread or process pushes or pops meanwhile (see
    /// [`MpmcHandle::for_each_waiting`]).
    pub(super) unsafe fn for_each_waiting(&self, mut visit: impl FnMut(T)) {
        let head = self.words.head.0.load(Ordering::Acquire);
        let tail = self.words.tail.0.load(Ordering::Acquire);
        for step in 0..tail.wrapping_sub(head).min(self.mask + 1) {
            let position = head.wrapping_add(step);
            // A cell claimed by a push that died is not published: skipped,
            // as the next pop skips it.
            if self.seq(position).load(Ordering::Acquire) == position.wrapping_add(1) {
                // SAFETY: masked index; the cell was published, and nobody
                // pops or pushes meanwhile (the caller's promise), so
                // nothing writes it while it is read.
                visit(unsafe { self.cells.read((position & self.mask) as usize) });
            }
        }
    }

    pub(super) fn in_flight(&self) -> InFlight {
        let head = self.words.head.0.load(Ordering::Acquire);
        let tail = self.words.tail.0.load(Ordering::Acquire);
        let capacity = self.mask + 1;
        // The next pop's cell was claimed by a push that has not published.
        let push_at = (tail.wrapping_sub(head) as i64 > 0
            && self.seq(head).load(Ordering::Acquire) == head)
            .then_some(head);
        // The next push's cell was claimed by a pop that has not released.
        let behind = tail.wrapping_sub(capacity);
        let pop_at = (head.wrapping_sub(behind) as i64 > 0
            && self.seq(tail).load(Ordering::Acquire) == behind.wrapping_add(1))
        .then_some(behind);
        InFlight { push_at, pop_at }
    }
}

// ------------------------------------------------------------- public face

const MPMC_MAGIC: u64 = 0x314d_504d_4b4d_4853; // "SHMKMPM1"

/// A bounded lock-free multi-producer multi-consumer queue of `T` that
/// lives in a segment (Vyukov's ring of sequenced cells).
///
/// This is the in-segment part: fixed fields, head and tail on cache lines
/// of their own, the two sleeper signals, followed in the same block by
/// the cells. It holds offsets and atomics only. Create one with
/// [`create`](Self::create), publish its offset (a root, a named object, a
/// field of another shared structure), and use it through a process-side
/// [`MpmcHandle`] from [`open`](Self::open).
///
/// All operations of a handle may be called from any number of threads and
/// processes at once: pushes, pops, lengths, blocking and non-blocking.
///
/// The element type is checked by size and alignment (recorded in the
/// ring), not by name: opening a ring of `u64` as `[u8; 8]` succeeds and
/// reinterprets the bytes, which `T: ShmSafe` makes harmless.
///
/// # When a process dies in the middle
///
/// A push claims its position (moves the tail), writes the value, then
/// publishes the cell; a pop claims its position (moves the head), reads,
/// then releases the cell. A process killed *between claim and
/// publish/release* leaves that cell half-done. In a segment, each claim
/// is first noted in the claiming thread's slot of the segment's hand-off
/// log (two stores to the thread's own cache line, and one to clear it
/// afterwards), so whoever meets a half-done cell can tell a slow claimer
/// from a dead one:
///
/// * a dead **producer**'s cell is skipped by the next pop that meets it
///   (released for the next lap; the dead producer's value never arrived);
/// * a dead **consumer**'s cell is released by the next push that comes
///   round to it (the value it took is lost with it).
///
/// Either way only the victim's own message is lost. A claim is judged
/// once it has stayed unfinished for 10 ms over sixteen looks, so a pop or
/// push that keeps retrying repairs it at once, and a blocked one within
/// sixteen recheck intervals (under 2 s by default). A claim is not
/// repaired while its thread lives (one exception: a winner with no slot
/// whose claim only dead threads noted, having died between noting it and
/// losing the race to it). What cannot be
/// repaired: a claim by a thread that had no slot in the log (more than 64
/// threads allocating or using rings in the segment at once), which stalls
/// the ring as it would without the log; and a ring outside a segment
/// (process-local memory), whose threads cannot die alone.
///
/// Killed anywhere else (before the claim, after the publication), a
/// process leaves the ring consistent; a sleeper it should have woken waits
/// at most one recheck interval longer. A process killed while *sleeping*
/// leaves its waiter registration behind, so every later operation of the
/// other side makes one futex wake system call (slower, still correct).
/// [`MpmcHandle::in_flight`] reports a claimed-but-unfinished cell at the
/// head or tail.
///
/// ```
/// use shmkit::containers::MpmcRing;
/// use shmkit::{SegmentAllocator, SegmentOptions, SizeClassAllocator};
///
/// let alloc = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let offset = MpmcRing::<u64>::create(&alloc, 8)?;
/// alloc.segment().set_root("jobs", offset)?;
///
/// // In any attached process:
/// let found = alloc.segment().root::<MpmcRing<u64>>("jobs").expect("published");
/// // SAFETY: "jobs" names a ring `create` made, used only through handles.
/// let jobs = unsafe { MpmcRing::<u64>::open(&alloc, found)? };
/// jobs.push(7);
/// assert_eq!(jobs.try_push(8), Ok(()));
/// assert_eq!(jobs.pop(), 7);
/// assert_eq!(jobs.try_pop(), Some(8));
/// assert_eq!(jobs.try_pop(), None);
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct MpmcRing<T> {
    words: MpmcWords<AtomicU64, AtomicU32>,
    _elements: PhantomData<fn() -> T>,
}

// SAFETY: `repr(C)`, made of atomics only (any bit pattern is a value) and
// explicit alignment; no address. The cells after it are reached through
// a validated handle, never through this type.
unsafe impl<T: ShmSafe> ShmSafe for MpmcRing<T> {}

impl<T: ShmSafe + Copy> MpmcRing<T> {
    fn shape() -> Shape {
        Shape {
            what: "mpmc ring",
            magic: MPMC_MAGIC,
            header_size: size_of::<MpmcRing<T>>(),
            header_align: align_of::<MpmcRing<T>>(),
            elem_size: size_of::<T>(),
            elem_align: align_of::<T>(),
            stride: size_of::<Slot<T>>(),
            cell_align: align_of::<Slot<T>>(),
            type_name: std::any::type_name::<T>(),
        }
    }

    /// Bytes of segment memory a ring of `capacity` values takes.
    pub fn bytes_for(capacity: usize) -> Result<usize> {
        Self::shape().bytes_for(capacity)
    }

    /// Creates an empty ring of `capacity` values (a power of two, at least
    /// 2) in memory from `alloc`, and returns its offset.
    ///
    /// ```
    /// use shmkit::containers::MpmcRing;
    /// use shmkit::{Error, MallocAllocator};
    ///
    /// let alloc = MallocAllocator::new();
    /// assert!(MpmcRing::<u32>::create(&alloc, 16).is_ok());
    /// assert!(matches!(MpmcRing::<u32>::create(&alloc, 12), Err(Error::InvalidSize { .. })));
    /// ```
    pub fn create<A: ShmAllocator + ?Sized>(
        alloc: &A,
        capacity: usize,
    ) -> Result<Offset<MpmcRing<T>>> {
        let shape = Self::shape();
        let (offset, block, extent, capacity) = shape.allocate(alloc, capacity)?;
        let ring = block.cast::<MpmcRing<T>>();
        // SAFETY: the block is fresh, ours alone, aligned and long enough
        // for the header and `capacity` slots after `cells_at`.
        unsafe {
            ring.as_ptr().write(MpmcRing {
                words: MpmcWords {
                    fixed: Line(fixed_for(&shape, capacity, &extent)),
                    tail: Line(AtomicU64::new(0)),
                    head: Line(AtomicU64::new(0)),
                    not_empty: new_signal(),
                    not_full: new_signal(),
                },
                _elements: PhantomData,
            });
            let first = block.as_ptr().add(extent.cells_at).cast::<Slot<T>>();
            for index in 0..capacity {
                (&raw mut (*first.add(index as usize)).seq).write(AtomicU64::new(index));
            }
            // Published last: an opener that sees the magic sees the rest.
            (*ring.as_ptr())
                .words
                .fixed
                .0
                .magic
                .store(MPMC_MAGIC, Ordering::Release);
        }
        Ok(Offset::from_raw(offset))
    }

    /// Opens the ring at `offset` (created by [`create`](Self::create) in
    /// any process) for use from this process.
    ///
    /// Validated once: the offset must be a live block of `alloc`, aligned,
    /// holding an MPMC ring ([`Error::CorruptData`] otherwise) of elements
    /// with `T`'s size and alignment ([`Error::WrongType`] otherwise), with
    /// a power-of-two capacity whose cells fit in the block. The handle
    /// keeps the checked capacity and cell address, so nothing written to
    /// the shared bytes later can make it reach outside the block.
    ///
    /// # Safety
    ///
    /// The checks cannot tell a ring from bytes that merely look like one:
    /// `offset` must name a ring that [`create`](Self::create) made, whose
    /// block this process reaches only through ring handles (no container
    /// owns it, no reference into it lives), and which nobody destroys or
    /// frees while the handle lives.
    pub unsafe fn open<A: ShmAllocator + ?Sized>(
        alloc: &A,
        offset: Offset<MpmcRing<T>>,
    ) -> Result<MpmcHandle<'_, T>> {
        let shape = Self::shape();
        let (block, capacity, extent) = shape.validate(alloc, offset.raw())?;
        // SAFETY: validated: inside the block, aligned; the cells start
        // `cells_at` bytes in and `capacity` of them fit.
        let first = unsafe { block.add(extent.cells_at) }.cast::<Slot<T>>();
        Ok(MpmcHandle {
            ring: block.cast(),
            slots: SegSlots { first },
            claims: LoggedClaims {
                segment: alloc.backing_segment(),
                ring: offset.raw(),
                suspect: [AtomicU64::new(u64::MAX), AtomicU64::new(u64::MAX)],
                sightings: [AtomicU64::new(0), AtomicU64::new(0)],
                suspected_at: [AtomicU64::new(0), AtomicU64::new(0)],
            },
            mask: capacity - 1,
            offset,
            recheck: DEFAULT_RECHECK,
            _memory: PhantomData,
        })
    }

    /// Frees the ring's memory, after checking that `offset` holds a ring
    /// of `T` (its magic is cleared first, so later opens fail).
    ///
    /// # Safety
    ///
    /// No handle of this ring, in any process, may be used afterwards (the
    /// block may be handed out again at once).
    pub unsafe fn destroy<A: ShmAllocator + ?Sized>(
        alloc: &A,
        offset: Offset<MpmcRing<T>>,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { Self::shape().destroy(alloc, offset.raw())? };
        // Notes of claims on this ring must not describe a ring made later
        // at the same offset.
        if let Some(segment) = alloc.backing_segment() {
            handoff::forget_ring(segment, offset.raw());
        }
        Ok(())
    }
}

/// What holds an MPMC ring up, from [`MpmcHandle::in_flight`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InFlight {
    /// The position the next pop needs, when a push has claimed it but not
    /// published it yet.
    pub push_at: Option<u64>,
    /// The position of the value the next push must wait for, when a pop
    /// has claimed it but not released its cell yet.
    pub pop_at: Option<u64>,
}

/// A process-side handle on an [`MpmcRing`]: validated once, it borrows the
/// allocator (hence the mapping) the ring lives in.
///
/// Every method may be called from many threads at once (the handle is
/// `Sync`), and from many processes, each with its own handle.
pub struct MpmcHandle<'a, T> {
    ring: NonNull<MpmcRing<T>>,
    slots: SegSlots<T>,
    claims: LoggedClaims<'a>,
    mask: u64,
    offset: Offset<MpmcRing<T>>,
    recheck: Duration,
    _memory: PhantomData<&'a MpmcRing<T>>,
}

// SAFETY: the handle holds addresses into a mapping that outlives `'a` and
// only touches the ring through atomics and cells it has claimed; values
// of `T` move between threads, hence `T: Send`.
unsafe impl<T: Send> Send for MpmcHandle<'_, T> {}
// SAFETY: as above; every operation is safe to run concurrently (that is
// the algorithm's point).
unsafe impl<T: Send> Sync for MpmcHandle<'_, T> {}

impl<T> std::fmt::Debug for MpmcHandle<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MpmcHandle")
            .field("offset", &self.offset)
            .field("capacity", &(self.mask + 1))
            .finish()
    }
}

impl<T: ShmSafe + Copy> MpmcHandle<'_, T> {
    #[inline]
    fn core(&self) -> MpmcCore<'_, T, Os, &SegSlots<T>, LoggedClaims<'_>> {
        MpmcCore {
            // SAFETY: validated at open; the mapping lives as long as the
            // borrow of the allocator, and the block until `destroy` or a
            // free of it, both `unsafe` and promising no handle is used
            // afterwards; only atomics are reached through it.
            words: unsafe { &self.ring.as_ref().words },
            cells: &self.slots,
            mask: self.mask,
            env: &Os,
            claims: &self.claims,
            _values: PhantomData,
        }
    }

    /// Pushes `value` unless the ring is full; gives it back if so.
    #[inline]
    pub fn try_push(&self, value: T) -> std::result::Result<(), T> {
        self.core().try_push(value)
    }

    /// Pops the oldest value, if any is ready.
    #[inline]
    pub fn try_pop(&self) -> Option<T> {
        self.core().try_pop()
    }

    /// Pushes `value`, sleeping while the ring is full.
    pub fn push(&self, value: T) {
        // Without a deadline the wait only ends in success.
        let _ = self.core().push_until(value, None, self.recheck);
    }

    /// Pops the oldest value, sleeping while the ring is empty.
    pub fn pop(&self) -> T {
        loop {
            if let Some(value) = self.core().pop_until(None, self.recheck) {
                return value;
            }
        }
    }

    /// Pushes `value`, sleeping at most `timeout` while the ring is full;
    /// gives the value back if it stayed full.
    pub fn push_timeout(&self, value: T, timeout: Duration) -> std::result::Result<(), T> {
        self.core()
            .push_until(value, deadline_after(timeout), self.recheck)
    }

    /// Pops the oldest value, sleeping at most `timeout` while the ring is
    /// empty.
    pub fn pop_timeout(&self, timeout: Duration) -> Option<T> {
        self.core().pop_until(deadline_after(timeout), self.recheck)
    }

    /// The number of values in the ring: a snapshot, approximate while
    /// others push and pop.
    pub fn len(&self) -> usize {
        self.core().len() as usize
    }

    /// Whether the ring held no value at the moment of the call.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many values the ring holds at most.
    pub fn capacity(&self) -> usize {
        (self.mask + 1) as usize
    }

    /// The ring's offset in its segment.
    pub fn offset(&self) -> Offset<MpmcRing<T>> {
        self.offset
    }

    /// The longest a blocked operation sleeps before it re-checks the ring
    /// by itself (a safety net against a process that died between its
    /// change and its wake-up; ordinary wake-ups come at once). Default
    /// 100 ms, at least 1 ms.
    pub fn set_recheck_interval(&mut self, interval: Duration) {
        self.recheck = clamp_recheck(interval);
    }

    /// Calls `visit` with a copy of each value waiting in the ring, oldest
    /// first, without taking them: what a recovery pass needs to learn
    /// which blocks the ring still names.
    ///
    /// # Safety
    ///
    /// No other thread or process pushes or pops meanwhile (a racing push
    /// could write a cell while it is read): call it alone, as under
    /// [`Segment::lock_for_recovery`](crate::Segment::lock_for_recovery).
    pub unsafe fn for_each_waiting(&self, visit: impl FnMut(T)) {
        // SAFETY: forwarded from the caller.
        unsafe { self.core().for_each_waiting(visit) }
    }

    /// Cells claimed but not finished at the head or the tail: ordinary
    /// operations in flight, or (when the same position stays reported)
    /// an operation whose process died, which stalls the ring (see
    /// [`MpmcRing`]). Costs two loads of each index; nothing on the
    /// ordinary operations.
    pub fn in_flight(&self) -> InFlight {
        self.core().in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, MallocAllocator, SegmentAllocator, SegmentOptions, SizeClassAllocator};

    #[test]
    fn for_each_waiting_sees_the_waiting_values_in_order() {
        let alloc = MallocAllocator::new();
        let ring =
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            unsafe { MpmcRing::<u64>::open(&alloc, MpmcRing::create(&alloc, 4).unwrap()) }.unwrap();
        for round in 0..3u64 {
            // Pushes and pops move head and tail round the ring's end.
            for value in 0..3 {
                ring.try_push(round * 10 + value).unwrap();
            }
            assert_eq!(ring.try_pop(), Some(round * 10));
            let mut seen = Vec::new();
            // SAFETY: this thread alone uses the ring.
            unsafe { ring.for_each_waiting(|value| seen.push(value)) };
            assert_eq!(seen, [round * 10 + 1, round * 10 + 2]);
            assert_eq!(ring.len(), 2, "nothing was taken");
            while ring.try_pop().is_some() {}
        }
    }

    #[test]
    fn fifo_through_wrap_around() {
        let alloc = MallocAllocator::new();
        let ring =
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            unsafe { MpmcRing::<u64>::open(&alloc, MpmcRing::create(&alloc, 4).unwrap()) }.unwrap();
        let mut next_in = 0;
        let mut next_out = 0;
        for round in 0..50 {
            for _ in 0..(round % 5) {
                if ring.try_push(next_in).is_ok() {
                    next_in += 1;
                }
            }
            assert!(ring.len() <= 4);
            while let Some(value) = ring.try_pop() {
                assert_eq!(value, next_out);
                next_out += 1;
            }
        }
        assert_eq!(next_in, next_out);
        assert!(next_in > 40);
    }

    #[test]
    fn full_and_empty_give_the_value_back() {
        let alloc = MallocAllocator::new();
        let ring =
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            unsafe { MpmcRing::<u32>::open(&alloc, MpmcRing::create(&alloc, 2).unwrap()) }.unwrap();
        assert_eq!(ring.try_pop(), None);
        assert!(ring.is_empty());
        ring.try_push(1).unwrap();
        ring.try_push(2).unwrap();
        assert_eq!(ring.try_push(3), Err(3));
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.push_timeout(4, Duration::from_millis(5)), Err(4));
        assert_eq!(ring.pop(), 1);
        assert_eq!(ring.pop_timeout(Duration::from_millis(5)), Some(2));
        assert_eq!(ring.pop_timeout(Duration::from_millis(5)), None);
    }

    /// A push that claimed its cell and never published it (its process
    /// died) stalls the consumers, and `in_flight` says where.
    #[test]
    fn a_claimed_unpublished_push_is_reported() {
        let alloc = MallocAllocator::new();
        let ring =
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            unsafe { MpmcRing::<u64>::open(&alloc, MpmcRing::create(&alloc, 4).unwrap()) }.unwrap();
        ring.try_push(10).unwrap();
        assert_eq!(ring.in_flight(), InFlight::default());
        // A producer claims position 1 and dies.
        ring.core().words.tail.0.fetch_add(1, Ordering::Relaxed);
        ring.try_push(12).unwrap();
        assert_eq!(ring.try_pop(), Some(10));
        assert_eq!(ring.try_pop(), None, "position 1 never becomes ready");
        assert_eq!(
            ring.in_flight(),
            InFlight {
                push_at: Some(1),
                pop_at: None
            }
        );
        assert_eq!(ring.len(), 2);
    }

    #[test]
    fn a_claimed_unreleased_pop_is_reported() {
        let alloc = MallocAllocator::new();
        let ring =
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            unsafe { MpmcRing::<u64>::open(&alloc, MpmcRing::create(&alloc, 2).unwrap()) }.unwrap();
        ring.try_push(1).unwrap();
        ring.try_push(2).unwrap();
        // A consumer claims position 0 and dies before releasing the cell.
        ring.core().words.head.0.fetch_add(1, Ordering::Relaxed);
        assert_eq!(ring.try_pop(), Some(2));
        assert_eq!(ring.try_push(3), Err(3), "cell 0 is never released");
        assert_eq!(
            ring.in_flight(),
            InFlight {
                push_at: None,
                pop_at: Some(0)
            }
        );
    }

    #[test]
    fn corrupt_words_read_as_full_or_empty_never_loop() {
        let alloc = MallocAllocator::new();
        let ring =
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            unsafe { MpmcRing::<u64>::open(&alloc, MpmcRing::create(&alloc, 4).unwrap()) }.unwrap();
        let core = ring.core();
        // Cell 0 claims to hold position 7's value while the head says 0.
        // SAFETY: index 0 < 4.
        unsafe { core.cells.seq(0) }.store(9, Ordering::Relaxed);
        assert_eq!(ring.try_pop(), None);
        assert_eq!(ring.try_push(5), Err(5));
        // Indices far apart only ever select cells inside the ring.
        core.words.head.0.store(u64::MAX - 1, Ordering::Relaxed);
        core.words.tail.0.store(3, Ordering::Relaxed);
        assert!(ring.len() <= 4);
        let _ = ring.try_pop();
        let _ = ring.try_push(1);
    }

    #[test]
    fn open_validates_and_destroy_frees() {
        let alloc = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        let offset = MpmcRing::<u64>::create(&alloc, 8).unwrap();
        assert!(matches!(
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            unsafe { MpmcRing::<u32>::open(&alloc, offset.cast()) },
            Err(Error::WrongType { .. })
        ));
        assert!(matches!(
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            unsafe { crate::containers::SpscRing::<u64>::producer(&alloc, offset.cast()) },
            Err(Error::CorruptData { .. })
        ));
        let live = alloc.stats().live_allocations;
        // SAFETY: no handle is open.
        unsafe { MpmcRing::destroy(&alloc, offset) }.unwrap();
        assert_eq!(alloc.stats().live_allocations, live - 1);
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        assert!(unsafe { MpmcRing::open(&alloc, offset) }.is_err());
    }
}

#[cfg(test)]
mod loom_models {
    //! The ring's own code under every interleaving loom explores, on a
    //! capacity-2 ring so that positions wrap around.

    use super::super::ring_core::loom_support::*;
    use super::*;
    use loom::sync::atomic::{AtomicU32 as LoomU32, AtomicU64 as LoomU64};
    use loom::sync::Arc;

    struct Cells {
        seqs: Vec<LoomU64>,
        values: LoomValues,
    }

    impl Values<u64> for Cells {
        unsafe fn write(&self, index: usize, value: u64) {
            // SAFETY: forwarded.
            unsafe { self.values.write(index, value) }
        }
        unsafe fn read(&self, index: usize) -> u64 {
            // SAFETY: forwarded.
            unsafe { self.values.read(index) }
        }
    }

    impl SeqCells<u64> for Cells {
        type Seq = LoomU64;
        unsafe fn seq(&self, index: usize) -> &LoomU64 {
            &self.seqs[index]
        }
    }

    struct Shared {
        words: MpmcWords<LoomU64, LoomU32>,
        cells: Cells,
        env: LoomEnv,
    }

    const CAPACITY: u64 = 2;

    impl Shared {
        fn new() -> Arc<Shared> {
            let shared = Arc::new(Shared {
                words: MpmcWords {
                    fixed: fixed(),
                    tail: Line(LoomU64::new(0)),
                    head: Line(LoomU64::new(0)),
                    not_empty: signal(),
                    not_full: signal(),
                },
                cells: Cells {
                    seqs: (0..CAPACITY).map(LoomU64::new).collect(),
                    values: LoomValues(
                        (0..CAPACITY)
                            .map(|_| loom::cell::UnsafeCell::new(0))
                            .collect(),
                    ),
                },
                env: LoomEnv::new(),
            });
            shared
                .env
                .bind(&shared.words.not_empty.0, &shared.words.not_full.0);
            shared
        }

        fn core(&self) -> MpmcCore<'_, u64, LoomEnv, &Cells> {
            MpmcCore {
                words: &self.words,
                cells: &self.cells,
                mask: CAPACITY - 1,
                env: &self.env,
                claims: &NoClaims,
                _values: PhantomData,
            }
        }

        /// Pops whatever is left once every thread is done.
        fn drain(&self) -> Vec<u64> {
            std::iter::from_fn(|| self.core().try_pop()).collect()
        }
    }

    /// Checks one run: every value whose push succeeded was popped exactly
    /// once (by a thread or by the final drain), and nothing else was.
    fn assert_exactly_once(mut pushed: Vec<u64>, mut popped: Vec<u64>) {
        pushed.sort_unstable();
        popped.sort_unstable();
        assert_eq!(pushed, popped, "pushed and popped values differ");
    }

    // The exactly-once models make a fixed number of non-blocking calls
    // per thread and drain the ring at the end, instead of retrying until
    // done: loom cannot bound executions in which two threads spin at once
    // (say a producer on a full ring and a consumer on an empty one while
    // a third is mid-push). A full ring, an empty one and a cell claimed
    // but not yet published are all among the states they reach.

    /// Two producers push one value each into a two-cell ring that already
    /// holds one, while a consumer pops twice: three values for two cells,
    /// so a push may find the ring full and positions wrap around.
    #[test]
    fn two_producers_one_consumer_deliver_each_value_once() {
        model(4, || {
            let shared = Shared::new();
            assert_eq!(shared.core().try_push(1), Ok(()));
            let producers: Vec<_> = [2, 3]
                .into_iter()
                .map(|value| {
                    let shared = shared.clone();
                    loom::thread::spawn(move || shared.core().try_push(value).ok().map(|_| value))
                })
                .collect();
            let core = shared.core();
            let mine: Vec<u64> = (0..2).filter_map(|_| core.try_pop()).collect();
            // The oldest value leaves first.
            assert!(mine.first().is_none_or(|&first| first == 1));
            let mut pushed = vec![1];
            for producer in producers {
                pushed.extend(producer.join().unwrap());
            }
            let mut popped = mine;
            popped.extend(shared.drain());
            assert_exactly_once(pushed, popped);
        });
    }

    /// One producer pushes two values into a two-cell ring that already
    /// holds one, while two consumers pop once each.
    #[test]
    fn one_producer_two_consumers_deliver_each_value_once() {
        model(4, || {
            let shared = Shared::new();
            assert_eq!(shared.core().try_push(1), Ok(()));
            let consumers: Vec<_> = (0..2)
                .map(|_| {
                    let shared = shared.clone();
                    loom::thread::spawn(move || shared.core().try_pop())
                })
                .collect();
            let core = shared.core();
            let pushed: Vec<u64> = [1, 2, 3]
                .into_iter()
                .filter(|&value| value == 1 || core.try_push(value).is_ok())
                .collect();
            let mut popped = Vec::new();
            for consumer in consumers {
                popped.extend(consumer.join().unwrap());
            }
            popped.extend(shared.drain());
            assert_exactly_once(pushed, popped);
        });
    }

    // ---- the repair of dead claims (see "When a process dies in the
    // middle" on `MpmcRing`), with the hand-off log's notes and its
    // judgement (`alloc::handoff::ring_claim_died`) modelled on loom
    // atomics: each thread notes its claims in its own word, and a dead
    // thread is one whose claim the model sets up, never running again.

    /// A note: the claim word, marked present and, once won, confirmed.
    const NOTED: u64 = 1 << 61;
    const WON: u64 = 1 << 62 | NOTED;
    /// The claim's side, in the note.
    const POP: u64 = 1 << 60;

    fn note_of(side: Side, position: u64) -> u64 {
        NOTED | position | if side == Side::Pop { POP } else { 0 }
    }

    /// Every thread's note, and which threads are dead.
    struct Notes {
        words: [LoomU64; 3],
        dead: [bool; 3],
    }

    impl Notes {
        /// Threads 0 and 1 live, with no note; thread 2 dead holding
        /// `claim` (won), or live too when there is none.
        fn new(dead_claim: Option<(Side, u64)>) -> Arc<Notes> {
            let dead_note = dead_claim.map_or(0, |(side, position)| note_of(side, position) | WON);
            Arc::new(Notes {
                words: [LoomU64::new(0), LoomU64::new(0), LoomU64::new(dead_note)],
                dead: [false, false, dead_claim.is_some()],
            })
        }
    }

    /// One thread's view: where its notes go. Judges a claim stuck at once
    /// (no clock in a model).
    struct ModelClaims<'n> {
        notes: &'n Notes,
        me: usize,
    }

    impl Claims for ModelClaims<'_> {
        type Note = ();
        fn claiming(&self, side: Side, position: u64) {
            self.notes.words[self.me].store(note_of(side, position), Ordering::Release);
        }
        fn won(&self, _note: (), side: Side, position: u64) {
            self.notes.words[self.me].store(note_of(side, position) | WON, Ordering::Release);
        }
        fn finished(&self, _note: ()) {
            self.notes.words[self.me].store(0, Ordering::Release);
        }
        fn stuck(&self, _side: Side, _position: u64) -> bool {
            true
        }
        /// The log's rule: a confirmed note decides; else only dead noters.
        fn claimer_died(&self, side: Side, position: u64) -> bool {
            let claim = note_of(side, position);
            let mut noted_by_dead = false;
            for (word, &dead) in self.notes.words.iter().zip(&self.notes.dead) {
                let note = word.load(Ordering::Acquire);
                if note & !WON != claim & !WON || note == 0 {
                    continue;
                }
                if note & WON == WON {
                    return dead;
                }
                if !dead {
                    return false;
                }
                noted_by_dead = true;
            }
            noted_by_dead
        }
    }

    impl Shared {
        fn core_of<'s>(
            &'s self,
            claims: &'s ModelClaims<'s>,
        ) -> MpmcCore<'s, u64, LoomEnv, &'s Cells, ModelClaims<'s>> {
            MpmcCore {
                words: &self.words,
                cells: &self.cells,
                mask: CAPACITY - 1,
                env: &self.env,
                claims,
                _values: PhantomData,
            }
        }
    }

    /// Spawns thread 1 (noting its claims in `notes`) popping twice
    /// without waiting; it returns what it got.
    fn pop_twice_as_thread_1(
        shared: &Arc<Shared>,
        notes: &Arc<Notes>,
    ) -> loom::thread::JoinHandle<Vec<u64>> {
        let (shared, notes) = (shared.clone(), notes.clone());
        loom::thread::spawn(move || {
            let claims = ModelClaims {
                notes: &notes,
                me: 1,
            };
            let core = shared.core_of(&claims);
            (0..2).filter_map(|_| core.try_pop()).collect()
        })
    }

    /// A producer died holding position 0 of a two-cell ring (tail moved,
    /// cell never published). A live producer pushes into position 1 while
    /// two consumers pop: the dead cell is skipped, the live value is
    /// delivered exactly once, and the ring goes on into the next lap.
    #[test]
    fn a_dead_producers_cell_is_skipped_and_nothing_else_is_lost() {
        model(3, || {
            let notes = Notes::new(Some((Side::Push, 0)));
            let shared = Shared::new();
            shared.words.tail.0.store(1, Ordering::Relaxed);
            let consumer = pop_twice_as_thread_1(&shared, &notes);
            let claims = ModelClaims {
                notes: &notes,
                me: 0,
            };
            let core = shared.core_of(&claims);
            let pushed = core.try_push(5).is_ok();
            let mut popped: Vec<u64> = core.try_pop().into_iter().collect();
            popped.extend(consumer.join().unwrap());
            popped.extend(std::iter::from_fn(|| core.try_pop()));
            assert_eq!(popped, if pushed { vec![5] } else { vec![] }, "{popped:?}");
            // The next lap works: the dead cell was released for it.
            assert_eq!(core.try_push(6), Ok(()));
            assert_eq!(core.try_push(7), Ok(()));
            assert_eq!((core.try_pop(), core.try_pop()), (Some(6), Some(7)));
        });
    }

    /// A consumer died holding position 0 (head moved, cell never
    /// released) of a full two-cell ring holding 1 and 2. A live producer
    /// pushes 3 (its cell is the dead one's) while a live consumer pops: 1
    /// is lost with the dead consumer, 2 and 3 arrive exactly once.
    #[test]
    fn a_dead_consumers_cell_is_released_and_only_its_value_is_lost() {
        model(3, || {
            let notes = Notes::new(Some((Side::Pop, 0)));
            let shared = Shared::new();
            {
                let core = shared.core();
                assert_eq!(core.try_push(1), Ok(()));
                assert_eq!(core.try_push(2), Ok(()));
            }
            shared.words.head.0.store(1, Ordering::Relaxed);
            let consumer = pop_twice_as_thread_1(&shared, &notes);
            let claims = ModelClaims {
                notes: &notes,
                me: 0,
            };
            let core = shared.core_of(&claims);
            // Position 2's cell is the dead consumer's: released for it
            // whatever the live consumer does meanwhile.
            assert_eq!(
                core.try_push(3),
                Ok(()),
                "the dead consumer's cell stayed taken"
            );
            let mut popped = consumer.join().unwrap();
            popped.extend(std::iter::from_fn(|| core.try_pop()));
            assert_eq!(popped, vec![2, 3]);
        });
    }

    /// Live threads only, every claim noted and every unfinished claim
    /// judged at once: the judgement never condemns a live claimer (a
    /// wrong repair would lose or duplicate a value, or jam the ring).
    #[test]
    fn live_claims_are_never_repaired() {
        model(3, || {
            let notes = Notes::new(None);
            let shared = Shared::new();
            let producer = {
                let (shared, notes) = (shared.clone(), notes.clone());
                loom::thread::spawn(move || {
                    let claims = ModelClaims {
                        notes: &notes,
                        me: 1,
                    };
                    let core = shared.core_of(&claims);
                    [1, 2]
                        .into_iter()
                        .filter(|&v| core.try_push(v).is_ok())
                        .collect::<Vec<_>>()
                })
            };
            let claims = ModelClaims {
                notes: &notes,
                me: 0,
            };
            let core = shared.core_of(&claims);
            let mut popped: Vec<u64> = (0..2).filter_map(|_| core.try_pop()).collect();
            let pushed = producer.join().unwrap();
            popped.extend(std::iter::from_fn(|| core.try_pop()));
            assert_eq!(popped, pushed, "in order, each once");
        });
    }

    /// The blocking handshake with the futex replaced by a stand-in that
    /// never times out: a consumer that sleeps on an empty ring and a
    /// producer that sleeps on a full one always wake each other (a lost
    /// wake-up would be a deadlock, which loom reports).
    #[test]
    fn blocking_push_and_pop_never_lose_a_wake_up() {
        model(3, || {
            let shared = Shared::new();
            let consumer = {
                let shared = shared.clone();
                loom::thread::spawn(move || {
                    let core = shared.core();
                    let first = core.pop_until(None, DEFAULT_RECHECK);
                    let second = core.pop_until(None, DEFAULT_RECHECK);
                    let third = core.pop_until(None, DEFAULT_RECHECK);
                    [first, second, third]
                })
            };
            let core = shared.core();
            for value in 1..=3 {
                assert_eq!(core.push_until(value, None, DEFAULT_RECHECK), Ok(()));
            }
            assert_eq!(consumer.join().unwrap(), [Some(1), Some(2), Some(3)]);
        });
    }
}
