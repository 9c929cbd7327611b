//! A reader-writer lock that lives in a segment, sleeps in the kernel and
//! survives the death of a reader or of the writer.
//!
//! # Protocol
//!
//! * **Writer word**: the [`ShmMutex`](super::ShmMutex) owner word (writer's
//!   thread id | `WAITERS`), with the same takeover of a dead owner. Writers
//!   take it first, so they exclude each other and turn new readers away.
//! * **Reader slots**: [`READER_SLOTS`] words, each 0 or a reader's thread
//!   id. A reader claims a free slot (compare-and-swap `0 → tid`), then reads
//!   the writer word; a writer, holding the writer word, scans the slots.
//!   A sequentially consistent fence sits between the two steps on both
//!   sides, so a reader that registers and a writer that arrives cannot both
//!   miss each other. A reader that finds a writer steps back (frees its
//!   slot) and sleeps on the writer word until it is free: writers are
//!   preferred and cannot starve.
//! * **Exits**: a writer waiting for a slot to empty (or a reader waiting for
//!   a free slot) sets the `SLEEPERS` bit of the exits word and sleeps on it;
//!   a leaving reader that sees the bit bumps the word and wakes them (the
//!   same fence pairing makes sure one of the two notices the other).
//! * **Dead holders**: a writer clears a slot whose reader is dead (by
//!   compare-and-swap from exactly that id); a reader or writer that finds
//!   the writer dead takes the writer word over, flags the value
//!   inconsistent and (a reader) releases it again so reads proceed. Sleeps
//!   are bounded, so a death that wakes nobody is noticed within
//!   milliseconds.
//! * **Consistency**: as for the mutex, a takeover of a dead writer (or a
//!   writer that panics) flags the value; every guard reports it through
//!   `owner_died()` until a write guard calls `mark_consistent()`. A dead
//!   reader changes nothing, so it flags nothing.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::atomic_word::Atomic32;
use super::mutex::{
    acquire_slow, me, release, try_take, Got, Me, Patience, Take, Wait, INCONSISTENT, OWNER,
    QUANTUM, RELOCK, WAITERS,
};
use super::robust_lock::DeathWatch;
use crate::error::{Error, Result};
use crate::os::futex;
use crate::os::identity::Identity;
use crate::os::thread_id;
use crate::ptr::ShmSafe;

/// How many readers (threads, in any process) may hold a [`ShmRwLock`] at
/// once; more wait for a slot.
pub const READER_SLOTS: usize = 64;

/// Bit 0 of the exits word: someone sleeps until a reader leaves. The other
/// bits count the wakes.
const SLEEPERS: u32 = 1;

/// How many times a writer re-reads a busy reader slot before it sleeps.
const SPINS: u32 = 100;

// The reader-register / writer-scan handshake runs on any `Atomic32`:
// `std`'s in a segment, `loom`'s in the model check.

/// A reader claims free `slot` for `me`; on success, the writer word as read
/// after the fence (an owner in it means: step back).
#[inline]
pub(crate) fn register_reader<W: Atomic32>(slot: &W, writer: &W, me: u32) -> Option<u32> {
    slot.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        .ok()?;
    W::fence(Ordering::SeqCst);
    Some(writer.load(Ordering::Acquire))
}

/// A writer that holds the writer word fences before it scans the slots
/// (or a sleeper that set `SLEEPERS` before it re-reads a slot).
#[inline]
pub(crate) fn before_scan<W: Atomic32>() {
    W::fence(Ordering::SeqCst);
}

/// The reader in a slot, as a scanning writer reads it: acquire, so the
/// reads of a reader that left happen before the writer's writes.
#[inline]
pub(crate) fn reader_in<W: Atomic32>(slot: &W) -> u32 {
    slot.load(Ordering::Acquire)
}

/// A reader frees its slot (if it still names `me`), then fences before it
/// looks for sleepers; whether the slot was still ours.
#[inline]
pub(crate) fn unregister_reader<W: Atomic32>(slot: &W, me: u32) -> bool {
    let ours = slot
        .compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed)
        .is_ok();
    W::fence(Ordering::SeqCst);
    ours
}

/// A reader-writer lock that can live in shared memory, protecting a value
/// of type `T`: many readers (up to [`READER_SLOTS`] threads at once, in any
/// processes) or one writer.
///
/// Robust like [`ShmMutex`](super::ShmMutex): a writer that dies holding the
/// lock is taken over by the next reader or writer, and the value stays
/// flagged inconsistent (every guard's `owner_died()` says so) until a write
/// guard calls [`ShmRwLockWriteGuard::mark_consistent`]. A reader that dies
/// holding its slot is cleared by the next writer and flags nothing. Waiting
/// writers turn new readers away, so writers do not starve. Asking for the
/// lock again from a thread that holds it for writing, or for writing from a
/// thread that holds it for reading, is an error instead of a deadlock (so
/// is a second read while a writer waits for the first).
///
/// Protocol: the writer word is the mutex's owner word; readers register
/// their thread id in a slot, then check the writer word, while a writer
/// takes the writer word, then waits until every slot is empty or names a
/// dead thread (sequentially consistent fences order the two handshakes).
///
/// ```
/// use shmkit::sync::ShmRwLock;
///
/// let table = ShmRwLock::new([0u64; 4]);
/// table.write()?[2] = 7;
/// let first = table.read()?;
/// let second = table.try_read()?.expect("readers share");
/// assert_eq!(first[2] + second[2], 14);
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct ShmRwLock<T> {
    /// The writer word: 0, or writer thread id | `WAITERS`.
    writer: AtomicU32,
    /// 0, or (any other value) the value may be half-updated.
    consistency: AtomicU32,
    /// `SLEEPERS` and a wake count.
    exits: AtomicU32,
    /// Each 0 or a reader's thread id.
    readers: [AtomicU32; READER_SLOTS],
    /// The identity of the writer the writer word names, once recorded.
    writer_identity: AtomicU64,
    /// The identity of each slot's reader, once recorded.
    reader_identities: [AtomicU64; READER_SLOTS],
    value: UnsafeCell<T>,
}

// SAFETY: the layout is `#[repr(C)]`: `AtomicU32` and `AtomicU64` words,
// which hold no address and accept every bit pattern (a bogus writer or
// reader id or identity is at worst waited for, or taken over or cleared
// when no such thread lives; a bogus exits word at worst costs a wake; a
// non-zero consistency word asks for repair), then a `T`, which is `ShmSafe` itself (`UnsafeCell<T>`
// has `T`'s layout and validity). Padding carries no validity requirement.
unsafe impl<T: ShmSafe> ShmSafe for ShmRwLock<T> {}

// SAFETY: the lock owns its `T`; sending it sends the `T`.
unsafe impl<T: Send> Send for ShmRwLock<T> {}
// SAFETY: readers share `&T` across threads (so `T: Sync`) and a writer gets
// `&mut T` from any thread (so `T: Send`), as for `std::sync::RwLock`.
unsafe impl<T: Send + Sync> Sync for ShmRwLock<T> {}

impl<T> ShmRwLock<T> {
    /// A free, consistent lock holding `value`.
    pub const fn new(value: T) -> ShmRwLock<T> {
        ShmRwLock {
            writer: AtomicU32::new(0),
            consistency: AtomicU32::new(0),
            exits: AtomicU32::new(0),
            readers: [const { AtomicU32::new(0) }; READER_SLOTS],
            writer_identity: AtomicU64::new(0),
            reader_identities: [const { AtomicU64::new(0) }; READER_SLOTS],
            value: UnsafeCell::new(value),
        }
    }

    /// Locks for reading, waiting as long as a writer (or, when every slot
    /// is taken, a reader) lives. A dead writer is taken over.
    #[inline]
    pub fn read(&self) -> Result<ShmRwLockReadGuard<'_, T>> {
        self.acquire_read(Wait::Forever)
    }

    /// Locks for reading if that needs no waiting: `None` while a live
    /// writer holds or waits for the lock, or every slot is taken.
    #[inline]
    pub fn try_read(&self) -> Result<Option<ShmRwLockReadGuard<'_, T>>> {
        busy_is_none(self.acquire_read(Wait::Try))
    }

    /// Locks for reading, waiting at most `patience`, then
    /// [`Error::LockTimeout`].
    #[inline]
    pub fn read_timeout(&self, patience: Duration) -> Result<ShmRwLockReadGuard<'_, T>> {
        self.acquire_read(Wait::For(patience))
    }

    /// Locks for writing, waiting as long as the holders live. A dead
    /// writer is taken over, dead readers' slots are cleared.
    #[inline]
    pub fn write(&self) -> Result<ShmRwLockWriteGuard<'_, T>> {
        self.acquire_write(Wait::Forever)
    }

    /// Locks for writing if that needs no waiting: `None` while a live
    /// writer or reader holds the lock.
    #[inline]
    pub fn try_write(&self) -> Result<Option<ShmRwLockWriteGuard<'_, T>>> {
        busy_is_none(self.acquire_write(Wait::Try))
    }

    /// Locks for writing, waiting at most `patience`, then
    /// [`Error::LockTimeout`] (naming the writer or a reader in the way).
    #[inline]
    pub fn write_timeout(&self, patience: Duration) -> Result<ShmRwLockWriteGuard<'_, T>> {
        self.acquire_write(Wait::For(patience))
    }

    /// The value, through exclusive access to the lock (no locking).
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    #[inline]
    fn acquire_read(&self, wait: Wait) -> Result<ShmRwLockReadGuard<'_, T>> {
        let me = me()?;
        let home = me.tid as usize % READER_SLOTS;
        if let Some((slot, writer)) = self.claim_any_slot(me, home) {
            if writer & OWNER == 0 {
                return Ok(self.read_guard(slot, false));
            }
            self.leave_slot(slot, me.tid);
        }
        self.acquire_read_slow(me, home, wait)
    }

    #[cold]
    fn acquire_read_slow(
        &self,
        me: Me,
        home: usize,
        wait: Wait,
    ) -> Result<ShmRwLockReadGuard<'_, T>> {
        let mut identity = me;
        let mut me = me.tid;
        let patience = Patience::start(wait);
        let mut took_over = false;
        let mut checked_recursion = false;
        let mut full = FullWait::new(self);
        loop {
            let Some((slot, writer)) = self.claim_any_slot(identity, home) else {
                full.wait(me, &patience)?;
                continue;
            };
            if writer & OWNER == 0 {
                return Ok(self.read_guard(slot, took_over));
            }
            // A writer holds the word or waits for readers: step back.
            self.leave_slot(slot, me);
            if writer & OWNER == me {
                if thread_id::forget_if_inherited() {
                    // The cache named our parent: go on as ourselves.
                    identity = super::mutex::me()?;
                    me = identity.tid;
                    continue;
                }
                return Err(RELOCK);
            }
            if !checked_recursion && !patience.try_only() {
                // A thread that already reads would wait for a writer that
                // waits for it.
                checked_recursion = true;
                if self.readers.iter().any(|s| s.load(Ordering::Relaxed) == me) {
                    return Err(Error::Unsupported(
                        "this thread already holds the lock for reading and a writer waits",
                    ));
                }
            }
            match acquire_slow(
                &self.writer,
                &self.writer_identity,
                &mut identity,
                Take::OnlyFromDead,
                &patience,
            )? {
                Got::Free => {}
                Got::Busy => return Err(busy()),
                Got::FromDead => {
                    // We hold the writer word of a dead writer: flag the
                    // value, then let everybody in.
                    self.consistency.store(INCONSISTENT, Ordering::Relaxed);
                    took_over = true;
                    release(&self.writer, me, true);
                }
            }
        }
    }

    /// Claims a free slot, starting at `home`, and records who holds it;
    /// the slot and the writer word as read after registering. `None` when
    /// every slot is taken.
    #[inline]
    fn claim_any_slot(&self, me: Me, home: usize) -> Option<(usize, u32)> {
        (0..READER_SLOTS)
            .map(|step| (home + step) % READER_SLOTS)
            .find_map(|slot| {
                if self.readers[slot].load(Ordering::Relaxed) != 0 {
                    return None;
                }
                let writer = register_reader(&self.readers[slot], &self.writer, me.tid)?;
                self.reader_identities[slot].store(me.identity, Ordering::Relaxed);
                Some((slot, writer))
            })
    }

    /// The reader in slot `slot`, as a waiter judges it.
    fn reader_identity(&self, slot: usize, reader: u32) -> Identity {
        Identity::of_owner(reader, self.reader_identities[slot].load(Ordering::Relaxed))
    }

    fn read_guard(&self, slot: usize, took_over: bool) -> ShmRwLockReadGuard<'_, T> {
        ShmRwLockReadGuard {
            lock: self,
            slot,
            owner_died: took_over || self.consistency.load(Ordering::Relaxed) != 0,
            _not_send: PhantomData,
        }
    }

    /// Frees reader slot `slot` held by `me` and wakes anyone waiting for a
    /// reader to leave.
    #[inline]
    fn leave_slot(&self, slot: usize, me: u32) {
        unregister_reader(&self.readers[slot], me);
        if self.exits.load(Ordering::Relaxed) & SLEEPERS != 0 {
            self.wake_exits();
        }
    }

    #[cold]
    fn wake_exits(&self) {
        // Clear SLEEPERS and count the wake in one step (the carry of +1 on
        // an odd word), so a sleeper's expected value is stale either way.
        let cleared = self
            .exits
            .fetch_update(Ordering::Release, Ordering::Relaxed, |exits| {
                (exits & SLEEPERS != 0).then(|| exits.wrapping_add(1))
            });
        if cleared.is_ok() {
            futex::wake_all(&self.exits);
        }
    }

    /// Sleeps (a bounded quantum at most) until a reader may have left,
    /// unless `still` no longer holds once `SLEEPERS` is visible.
    fn sleep_on_exits(&self, patience: &Patience, still: impl Fn() -> bool) {
        let expected = self.exits.fetch_or(SLEEPERS, Ordering::Relaxed) | SLEEPERS;
        before_scan::<AtomicU32>();
        if still() {
            futex::wait(&self.exits, expected, Some(patience.next_sleep()));
        }
    }

    #[inline]
    fn acquire_write(&self, wait: Wait) -> Result<ShmRwLockWriteGuard<'_, T>> {
        let mut caller = me()?;
        let mut patience = None;
        let from_dead = if try_take(&self.writer, caller.tid) {
            false
        } else {
            let started = patience.insert(Patience::start(wait));
            match acquire_slow(
                &self.writer,
                &self.writer_identity,
                &mut caller,
                Take::Always,
                started,
            )? {
                Got::Free => false,
                Got::FromDead => true,
                Got::Busy => return Err(busy()),
            }
        };
        let Me { tid: me, identity } = caller;
        self.writer_identity.store(identity, Ordering::Relaxed);
        if from_dead {
            self.consistency.store(INCONSISTENT, Ordering::Relaxed);
        }
        before_scan::<AtomicU32>();
        if self.readers.iter().any(|slot| reader_in(slot) != 0) {
            let patience = patience.get_or_insert_with(|| Patience::start(wait));
            if let Err(error) = self.wait_for_readers(me, patience) {
                release(&self.writer, me, true);
                return Err(error);
            }
        }
        Ok(ShmRwLockWriteGuard {
            lock: self,
            owner_died: from_dead || self.consistency.load(Ordering::Relaxed) != 0,
            _not_send: PhantomData,
        })
    }

    /// Holding the writer word, waits until no live reader holds a slot,
    /// clearing the slots of dead ones.
    #[cold]
    fn wait_for_readers(&self, me: u32, patience: &Patience) -> Result<()> {
        let mut watch = DeathWatch::new(self as *const Self as usize);
        let mut last_check = Instant::now();
        let mut spins = 0;
        let mut index = 0;
        while index < READER_SLOTS {
            let slot = &self.readers[index];
            let reader = reader_in(slot);
            if reader == 0 {
                index += 1;
                continue;
            }
            if reader == me {
                return Err(Error::Unsupported(
                    "this thread holds the lock for reading and asks to write",
                ));
            }
            if spins < SPINS && !patience.try_only() {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            if patience.try_only() || last_check.elapsed() >= QUANTUM {
                if watch.is_dead(self.reader_identity(index, reader)) {
                    // From exactly the dead id: a new reader that got the
                    // slot meanwhile keeps it. The next busy slot is
                    // checked at once: a crash often leaves several.
                    let _ = slot.compare_exchange(reader, 0, Ordering::Relaxed, Ordering::Relaxed);
                    continue;
                }
                last_check = Instant::now();
            }
            if patience.try_only() {
                return Err(busy());
            }
            if patience.expired() {
                return Err(patience.timeout(reader));
            }
            self.sleep_on_exits(patience, || reader_in(slot) == reader);
        }
        Ok(())
    }
}

/// A reader waiting for a free slot: clears dead readers' slots, sleeps
/// until a reader leaves.
struct FullWait<'a, T> {
    lock: &'a ShmRwLock<T>,
    watch: DeathWatch,
    last_check: Option<Instant>,
}

impl<'a, T> FullWait<'a, T> {
    fn new(lock: &'a ShmRwLock<T>) -> FullWait<'a, T> {
        FullWait {
            lock,
            watch: DeathWatch::new(lock as *const ShmRwLock<T> as usize),
            last_check: None,
        }
    }

    /// Every slot was taken: make room or wait a little.
    fn wait(&mut self, me: u32, patience: &Patience) -> Result<()> {
        let due = self.last_check.is_none_or(|last| last.elapsed() >= QUANTUM);
        if due {
            self.last_check = Some(Instant::now());
            let mut cleared = false;
            for (index, slot) in self.lock.readers.iter().enumerate() {
                let reader = slot.load(Ordering::Relaxed);
                if reader != 0
                    && reader != me
                    && self.watch.is_dead(self.lock.reader_identity(index, reader))
                {
                    cleared |= slot
                        .compare_exchange(reader, 0, Ordering::Relaxed, Ordering::Relaxed)
                        .is_ok();
                }
            }
            if cleared {
                return Ok(());
            }
        }
        if patience.try_only() {
            return Err(busy());
        }
        if patience.expired() {
            let reader = self.lock.readers[0].load(Ordering::Relaxed) & OWNER;
            return Err(patience.timeout(reader));
        }
        let readers = &self.lock.readers;
        self.lock.sleep_on_exits(patience, || {
            readers.iter().all(|slot| slot.load(Ordering::Relaxed) != 0)
        });
        Ok(())
    }
}

/// The internal "a try found a live holder" outcome, which the `try_*`
/// methods turn into `None`.
fn busy() -> Error {
    Error::LockTimeout {
        owner_pid: 0,
        waited: Duration::ZERO,
    }
}

fn busy_is_none<G>(result: Result<G>) -> Result<Option<G>> {
    match result {
        Ok(guard) => Ok(Some(guard)),
        Err(Error::LockTimeout { .. }) => Ok(None),
        Err(other) => Err(other),
    }
}

impl<T: Default> Default for ShmRwLock<T> {
    fn default() -> ShmRwLock<T> {
        ShmRwLock::new(T::default())
    }
}

impl<T> std::fmt::Debug for ShmRwLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let writer = self.writer.load(Ordering::Relaxed);
        let readers = self
            .readers
            .iter()
            .filter(|slot| slot.load(Ordering::Relaxed) != 0)
            .count();
        f.debug_struct("ShmRwLock")
            .field("writer_tid", &(writer & OWNER))
            .field("waiters", &(writer & WAITERS != 0))
            .field("readers", &readers)
            .field(
                "consistent",
                &(self.consistency.load(Ordering::Relaxed) == 0),
            )
            .finish_non_exhaustive()
    }
}

/// Holds a [`ShmRwLock`] for reading (one reader slot); unlocks on drop.
/// Tied to the thread that locked (the slot names it), so not `Send`.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ShmRwLockReadGuard<'a, T> {
    lock: &'a ShmRwLock<T>,
    slot: usize,
    owner_died: bool,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared guard only hands out `&T`.
unsafe impl<T: Sync> Sync for ShmRwLockReadGuard<'_, T> {}

impl<T> ShmRwLockReadGuard<'_, T> {
    /// Whether the value may be half-updated: a writer died holding the
    /// lock (this reader or an earlier locker took it over) and no writer
    /// has called `mark_consistent` since. Fixed when the lock was taken.
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }
}

impl<T> Deref for ShmRwLockReadGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: our slot is registered and no writer held the writer word
        // when we checked after registering; a writer that came later waits
        // until the slot is free, so only shared references exist.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> Drop for ShmRwLockReadGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        // The current id: a forked child's copy of the guard frees nothing.
        self.lock.leave_slot(self.slot, thread_id::current());
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ShmRwLockReadGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// Holds a [`ShmRwLock`] for writing; unlocks on drop. Tied to the thread
/// that locked (the writer word names it), so not `Send`.
#[must_use = "the lock is released as soon as the guard is dropped"]
pub struct ShmRwLockWriteGuard<'a, T> {
    lock: &'a ShmRwLock<T>,
    owner_died: bool,
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared guard only hands out `&T`.
unsafe impl<T: Sync> Sync for ShmRwLockWriteGuard<'_, T> {}

impl<T> ShmRwLockWriteGuard<'_, T> {
    /// Whether the value may be half-updated: a writer died holding the
    /// lock and nobody has called [`mark_consistent`](Self::mark_consistent)
    /// since. Fixed when the lock was taken.
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }

    /// Declares the value repaired: later guards no longer report a dead
    /// owner (until a writer dies again).
    pub fn mark_consistent(&mut self) {
        self.lock.consistency.store(0, Ordering::Relaxed);
    }
}

impl<T> Deref for ShmRwLockWriteGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: we hold the writer word and every reader slot was empty
        // (or dead) after we took it; new readers step back.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for ShmRwLockWriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and the guard is borrowed mutably.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for ShmRwLockWriteGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.lock.consistency.store(INCONSISTENT, Ordering::Relaxed);
        }
        // Readers and writers both sleep on the writer word: wake them all.
        release(&self.lock.writer, thread_id::current(), true);
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ShmRwLockWriteGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::thread_id::testing::{dead_tid, live_tid};
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    #[test]
    fn two_readers_hold_the_lock_at_once() {
        let lock = ShmRwLock::new(3u32);
        let (first_in, wait_first) = std::sync::mpsc::channel();
        let (second_in, wait_second) = std::sync::mpsc::channel();
        let lock = &lock;
        std::thread::scope(|scope| {
            scope.spawn(move || {
                let guard = lock.read().unwrap();
                first_in.send(()).unwrap();
                // Hold on until the second reader is in too (or gave up).
                let _ = wait_second.recv_timeout(Duration::from_secs(20));
                drop(guard);
            });
            scope.spawn(move || {
                wait_first.recv().unwrap();
                // The first reader still holds its guard: a lock that
                // excluded readers would time out here.
                let guard = lock.read_timeout(Duration::from_secs(10)).unwrap();
                assert_eq!(*guard, 3);
                second_in.send(()).unwrap();
            });
        });
        // And a held read lets another thread's try_read in.
        let guard = lock.read().unwrap();
        std::thread::scope(|scope| {
            let other = scope.spawn(|| lock.try_read().unwrap().map(|g| *g));
            assert_eq!(other.join().unwrap(), Some(3));
        });
        drop(guard);
    }

    #[test]
    fn a_writer_excludes_readers_and_writers() {
        let lock = ShmRwLock::new(0u32);
        let guard = lock.write().unwrap();
        std::thread::scope(|scope| {
            let other = scope.spawn(|| {
                (
                    lock.try_read().unwrap().is_some(),
                    lock.try_write().unwrap().is_some(),
                    matches!(
                        lock.read_timeout(Duration::from_millis(20)),
                        Err(Error::LockTimeout { owner_pid, .. }) if owner_pid == std::process::id()
                    ),
                )
            });
            assert_eq!(other.join().unwrap(), (false, false, true));
        });
        drop(guard);
        // A reader keeps writers out too.
        let reader = lock.read().unwrap();
        std::thread::scope(|scope| {
            let other = scope.spawn(|| {
                (
                    lock.try_write().unwrap().is_some(),
                    matches!(
                        lock.write_timeout(Duration::from_millis(20)),
                        Err(Error::LockTimeout { .. })
                    ),
                    // The failed writers gave the writer word back.
                    lock.try_read().unwrap().is_some(),
                )
            });
            assert_eq!(other.join().unwrap(), (false, true, true));
        });
        drop(reader);
        assert!(lock.try_write().unwrap().is_some());
    }

    #[test]
    fn readers_never_see_a_half_written_value() {
        // Halfway, each writer waits until every reader has read a value
        // from the middle of the run, so the reads provably overlap the
        // writes (a reader that ran only before or after would not count).
        const READERS: usize = 2;
        let lock = ShmRwLock::new([0u64; 8]);
        let overlapped: [AtomicUsize; READERS] = Default::default();
        let writers_done = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| {
                    for round in 1..=500u64 {
                        if round == 250 {
                            let deadline = Instant::now() + Duration::from_secs(10);
                            while overlapped.iter().any(|n| n.load(Ordering::Acquire) == 0) {
                                assert!(Instant::now() < deadline, "a reader never read");
                                std::thread::yield_now();
                            }
                        }
                        let mut guard = lock.write().unwrap();
                        for (i, word) in guard.iter_mut().enumerate() {
                            *word = round;
                            if i == 3 {
                                std::hint::spin_loop();
                            }
                        }
                    }
                    writers_done.fetch_add(1, Ordering::Release);
                });
            }
            for overlapped in &overlapped {
                let writers_done = &writers_done;
                let lock = &lock;
                scope.spawn(move || {
                    while writers_done.load(Ordering::Acquire) < 2 {
                        let guard = lock.read().unwrap();
                        assert!(guard.iter().all(|&w| w == guard[0]), "torn: {guard:?}");
                        if (1..500).contains(&guard[0]) {
                            overlapped.fetch_add(1, Ordering::Release);
                        }
                    }
                });
            }
        });
        assert!(overlapped.iter().all(|n| n.load(Ordering::Relaxed) > 0));
        assert_eq!(*lock.read().unwrap(), [500; 8]);
        assert!(lock.readers.iter().all(|s| s.load(Ordering::Relaxed) == 0));
        assert_eq!(lock.writer.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_waiting_writer_is_not_starved_by_overlapping_readers() {
        let lock = ShmRwLock::new(0u32);
        let stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            for _ in 0..3 {
                scope.spawn(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let _guard = lock.read().unwrap();
                        std::thread::sleep(Duration::from_millis(2));
                    }
                });
            }
            // Three readers that each hold for 2 ms, back to back, always
            // leave one inside: only writer preference lets the writer in.
            std::thread::sleep(Duration::from_millis(20));
            let result = lock
                .write_timeout(Duration::from_secs(10))
                .map(|mut g| *g = 1);
            stop.store(true, Ordering::Relaxed);
            result.unwrap();
        });
        assert_eq!(*lock.read().unwrap(), 1);
    }

    #[test]
    fn a_dead_readers_slot_is_cleared_by_a_writer() {
        let lock = ShmRwLock::new(0u32);
        let dead = dead_tid();
        lock.readers[5].store(dead, Ordering::Relaxed);
        assert!(lock.try_write().unwrap().is_some());
        assert_eq!(lock.readers[5].load(Ordering::Relaxed), 0);
        lock.readers[9].store(dead, Ordering::Relaxed);
        let guard = lock.write().unwrap();
        assert!(!guard.owner_died(), "a dead reader changes nothing");
        assert_eq!(lock.readers[9].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_live_reader_keeps_a_writer_out() {
        let (tid, stop, handle) = live_tid();
        let lock = ShmRwLock::new(0u32);
        lock.readers[1].store(tid, Ordering::Relaxed);
        assert!(lock.try_write().unwrap().is_none());
        assert!(matches!(
            lock.write_timeout(Duration::from_millis(30)),
            Err(Error::LockTimeout { owner_pid, .. }) if owner_pid == std::process::id()
        ));
        // Readers still get in after the writer gave up.
        assert!(lock.try_read().unwrap().is_some());
        drop(stop);
        handle.join().unwrap();
        // Now dead: taken over.
        assert!(lock.write_timeout(Duration::from_secs(10)).is_ok());
    }

    #[test]
    fn a_dead_writer_is_taken_over_by_a_reader() {
        let lock = ShmRwLock::new(1u32);
        lock.writer.store(dead_tid() | WAITERS, Ordering::Relaxed);
        let first = lock.read().unwrap();
        assert!(first.owner_died());
        // The reader let go of the writer word: others read along.
        let second = lock.try_read().unwrap().expect("readers share");
        assert!(second.owner_died(), "still flagged");
        drop((first, second));
        let mut writer = lock.write().unwrap();
        assert!(writer.owner_died());
        writer.mark_consistent();
        drop(writer);
        assert!(!lock.read().unwrap().owner_died());
    }

    #[test]
    fn a_dead_writer_is_taken_over_by_a_writer() {
        let lock = ShmRwLock::new(1u32);
        lock.writer.store(dead_tid(), Ordering::Relaxed);
        let mut writer = lock.write().unwrap();
        assert!(writer.owner_died());
        *writer = 2;
        drop(writer);
        // Not marked: the next writer is told again.
        let mut writer = lock.try_write().unwrap().expect("free");
        assert!(writer.owner_died());
        writer.mark_consistent();
        drop(writer);
        let reader = lock.read().unwrap();
        assert!(!reader.owner_died());
        assert_eq!(*reader, 2);
    }

    #[test]
    fn asking_again_from_the_holding_thread_is_an_error() {
        let lock = ShmRwLock::new(());
        let writer = lock.write().unwrap();
        assert!(matches!(lock.read(), Err(Error::Unsupported(_))));
        assert!(matches!(lock.write(), Err(Error::Unsupported(_))));
        drop(writer);
        let reader = lock.read().unwrap();
        assert!(matches!(lock.write(), Err(Error::Unsupported(_))));
        // The failed write left nothing behind.
        assert_eq!(lock.writer.load(Ordering::Relaxed), 0);
        drop(reader);
        assert!(lock.try_write().unwrap().is_some());
    }

    #[test]
    fn a_second_read_while_a_writer_waits_is_an_error() {
        let lock = ShmRwLock::new(());
        let reader = lock.read().unwrap();
        std::thread::scope(|scope| {
            let writer = scope.spawn(|| lock.write().map(|_| ()));
            let started = Instant::now();
            while lock.writer.load(Ordering::Relaxed) & OWNER == 0 {
                assert!(started.elapsed().as_secs() < 10, "the writer never came");
                std::thread::yield_now();
            }
            assert!(matches!(lock.read(), Err(Error::Unsupported(_))));
            drop(reader);
            writer.join().unwrap().unwrap();
        });
    }

    #[test]
    fn readers_wait_for_a_free_slot() {
        let (tid, stop, handle) = live_tid();
        let dead = dead_tid();
        let lock = ShmRwLock::new(());
        for slot in &lock.readers {
            slot.store(tid, Ordering::Relaxed);
        }
        assert!(lock.try_read().unwrap().is_none());
        assert!(matches!(
            lock.read_timeout(Duration::from_millis(20)),
            Err(Error::LockTimeout { .. })
        ));
        // A dead reader's slot is reused.
        lock.readers[17].store(dead, Ordering::Relaxed);
        let guard = lock.read_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(guard.slot, 17);
        drop(guard);
        // A sleeping reader is woken when a slot frees.
        lock.readers[17].store(tid, Ordering::Relaxed);
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| lock.read().map(|g| g.slot));
            let started = Instant::now();
            while lock.exits.load(Ordering::Relaxed) & SLEEPERS == 0 {
                assert!(started.elapsed().as_secs() < 10, "the reader never slept");
                std::thread::yield_now();
            }
            // Leave slot 40 as its reader would.
            lock.leave_slot(40, tid);
            assert_eq!(waiter.join().unwrap().unwrap(), 40);
        });
        drop(stop);
        handle.join().unwrap();
    }

    #[test]
    fn garbage_words_give_a_usable_lock() {
        let lock = ShmRwLock::new(0u8);
        lock.writer.store(OWNER | WAITERS, Ordering::Relaxed);
        lock.exits.store(u32::MAX, Ordering::Relaxed);
        for slot in &lock.readers {
            slot.store(OWNER, Ordering::Relaxed);
        }
        let mut guard = lock.write_timeout(Duration::from_secs(10)).unwrap();
        assert!(guard.owner_died());
        guard.mark_consistent();
        drop(guard);
        assert!(lock.readers.iter().all(|s| s.load(Ordering::Relaxed) == 0));
        assert!(!lock.read().unwrap().owner_died());
    }
}

#[cfg(test)]
mod loom_models {
    //! The reader-register / writer-scan handshake under every interleaving
    //! `loom` explores, with the futex sleeps replaced by yields. The value
    //! is a `loom` cell, which fails the model on any read that overlaps a
    //! write.

    use super::*;
    use loom::sync::atomic::AtomicU32 as LoomU32;
    use loom::sync::Arc;

    struct Model {
        writer: LoomU32,
        slots: [LoomU32; 1],
        value: loom::cell::UnsafeCell<u64>,
    }

    const WRITER: u32 = 10;

    impl Model {
        /// One read attempt by reader `me` in `slot`: whether it read.
        fn read(&self, slot: usize, me: u32) -> bool {
            let writer = register_reader(&self.slots[slot], &self.writer, me).expect("own slot");
            let read = writer == 0;
            if read {
                let value = self.value.with(|v| {
                    // SAFETY: loom checks that no write overlaps.
                    unsafe { *v }
                });
                assert!(value <= 1);
            }
            unregister_reader(&self.slots[slot], me);
            read
        }

        fn write(&self) {
            while self
                .writer
                .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                loom::thread::yield_now();
            }
            before_scan::<LoomU32>();
            for slot in &self.slots {
                while reader_in(slot) != 0 {
                    loom::thread::yield_now();
                }
            }
            self.value.with_mut(|v| {
                // SAFETY: loom checks that no read overlaps.
                unsafe { *v += 1 }
            });
            self.writer.store(0, Ordering::Release);
        }
    }

    #[test]
    fn a_reader_and_a_writer_never_overlap() {
        loom::model(|| {
            let model = Arc::new(Model {
                writer: LoomU32::new(0),
                slots: [LoomU32::new(0)],
                value: loom::cell::UnsafeCell::new(0),
            });
            // One reader is enough: each reader pairs with the writer
            // alone, and a second one multiplies the interleavings.
            let reader = {
                let model = model.clone();
                loom::thread::spawn(move || model.read(0, 1))
            };
            model.write();
            reader.join().unwrap();
            // SAFETY: every thread has been joined.
            assert_eq!(model.value.with(|v| unsafe { *v }), 1);
        });
    }
}
