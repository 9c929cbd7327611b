//! A mutex that lives in a segment, sleeps in the kernel and survives the
//! death of its owner.
//!
//! # Protocol
//!
//! One 32-bit word is the whole lock: `0` when free, else the owner's kernel
//! thread id (`gettid`) in the low 31 bits and [`WAITERS`] in the top bit,
//! set by a waiter before it sleeps on the word (a shared futex, so waiters
//! in other processes are woken too).
//!
//! * **Lock**: compare-and-swap `0 → tid`; no system call when free. Else
//!   spin briefly, set `WAITERS` and sleep on the word for a short quantum,
//!   then look again. A waiter that has slept takes the lock as
//!   `tid | WAITERS`, since others may still sleep.
//! * **Unlock**: compare-and-swap `tid → 0`; only if the word also carried
//!   `WAITERS` is a sleeper woken (one system call).
//! * **Who owns it**: right after taking the word, the owner records its
//!   [identity](super::identity) (thread id and start time) in a second,
//!   64-bit word, so a waiter can tell the owner from a later thread that
//!   got the same id.
//! * **Dead owner**: a dead process wakes nobody, so sleeps are bounded and
//!   a waiter re-checks the owner every few milliseconds with
//!   [`DeathWatch`]: the thread is gone or a zombie, or its id names a
//!   thread started at another time than the recorded owner (a reused id);
//!   while no identity is recorded, an id that lives but, after a short
//!   wait, does not map the lock's object is dead too (garbage). The waiter
//!   then takes the word over by compare-and-swap from exactly the value it
//!   judged, so only one waiter wins.
//! * **Consistency**: a second word says whether the protected value may be
//!   half-updated. A takeover (or a holder that panics) sets it; it stays set
//!   until a guard calls [`ShmMutexGuard::mark_consistent`], and every
//!   locker meanwhile is told through [`ShmMutexGuard::owner_died`].
//!
//! Any bit pattern is a valid lock: an owner id that is not a live thread
//! mapping the lock is taken over, `WAITERS` alone is a free lock, and a
//! non-zero consistency word only makes lockers repair.
//!
//! Limit: an owner that dies between taking the word and recording its
//! identity (a few instructions), and whose id a new thread mapping the
//! lock gets before anyone judges it, is waited on like a live one, until
//! the waiter's patience runs out.

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::robust_lock::DeathWatch;
use crate::error::{Error, Result};
use crate::os::futex;
use crate::os::identity::Identity;
use crate::os::thread_id;
use crate::ptr::ShmSafe;

/// Top bit of an owner word: a waiter may be asleep on it.
pub(super) const WAITERS: u32 = 1 << 31;
/// The owner's thread id in an owner word (0: free).
pub(super) const OWNER: u32 = !WAITERS;
/// A consistency word's value when the protected data may be half-updated
/// (every non-zero value reads so).
pub(super) const INCONSISTENT: u32 = 1;

/// How many times a locker re-reads a held word before it sleeps.
const SPINS: u32 = 100;
/// The longest sleep between two looks at the owner: a dead process never
/// wakes anyone, so this bounds how late its death is noticed.
pub(super) const QUANTUM: Duration = Duration::from_millis(5);

/// The error for a lock asked for again by the thread that holds it.
pub(super) const RELOCK: Error =
    Error::Unsupported("the lock is already held by this thread (it would wait for itself)");

/// How long a locker may wait, as the caller asked.
#[derive(Clone, Copy, Debug)]
pub(super) enum Wait {
    /// Not at all (`try_*`): a live holder means "busy".
    Try,
    /// At most this long, then [`Error::LockTimeout`].
    For(Duration),
    /// As long as the holder lives.
    Forever,
}

/// A [`Wait`] under way: when it started and when it ends.
#[derive(Clone, Copy, Debug)]
pub(super) struct Patience {
    try_only: bool,
    started: Instant,
    deadline: Option<Instant>,
}

impl Patience {
    /// Starts the clock on `wait`.
    pub(super) fn start(wait: Wait) -> Patience {
        let started = Instant::now();
        let (try_only, deadline) = match wait {
            Wait::Try => (true, Some(started)),
            Wait::For(limit) => (false, started.checked_add(limit)),
            Wait::Forever => (false, None),
        };
        Patience {
            try_only,
            started,
            deadline,
        }
    }

    /// Whether the caller asked not to wait at all.
    pub(super) fn try_only(&self) -> bool {
        self.try_only
    }

    /// Whether the caller's patience is used up.
    pub(super) fn expired(&self) -> bool {
        self.deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
    }

    /// How long the next sleep may last: a quantum, less near the deadline.
    pub(super) fn next_sleep(&self) -> Duration {
        match self.deadline {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_micros(50), QUANTUM),
            None => QUANTUM,
        }
    }

    /// The error for a wait on `owner` (a thread id) that ran out.
    pub(super) fn timeout(&self, owner: u32) -> Error {
        Error::LockTimeout {
            owner_pid: thread_id::process_of(owner),
            waited: self.started.elapsed(),
        }
    }
}

/// The calling thread as a lock sees it: its owner value (the thread id)
/// and its packed identity, recorded beside the word once taken.
#[derive(Clone, Copy, Debug)]
pub(super) struct Me {
    pub tid: u32,
    pub identity: u64,
}

/// The calling thread's owner value and identity, or an error when its id
/// does not fit the owner bits.
#[inline]
pub(super) fn me() -> Result<Me> {
    let identity = thread_id::current_identity_word();
    let tid = Identity::unpack(identity).tid;
    if tid == 0 || tid & WAITERS != 0 {
        return Err(Error::Unsupported(
            "this thread's id does not fit a lock word",
        ));
    }
    Ok(Me { tid, identity })
}

/// How a slow acquire ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Got {
    /// The word was free: taken (or, for [`Take::OnlyFromDead`], seen free
    /// and left so).
    Free,
    /// The owner was dead: the caller now holds the word.
    FromDead,
    /// [`Wait::Try`] only: a live owner holds it.
    Busy,
}

/// Whether a slow acquire takes a free word or only waits for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Take {
    /// Take the word (a locker).
    Always,
    /// Wait until it is free, taking it only from a dead owner (a reader
    /// of the reader-writer lock, which then clears it again).
    OnlyFromDead,
}

/// The fast path of taking owner word `word` for `me`: one compare-and-swap.
#[inline]
pub(super) fn try_take(word: &AtomicU32, me: u32) -> bool {
    word.compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
        .is_ok()
}

/// The slow path of taking (or waiting for) owner word `word`, whose
/// owner's identity `recorded` holds: spin, sleep in bounded quanta, take
/// over a dead owner.
#[cold]
pub(super) fn acquire_slow(
    word: &AtomicU32,
    recorded: &AtomicU64,
    caller: &mut Me,
    take: Take,
    patience: &Patience,
) -> Result<Got> {
    let mut me = caller.tid;
    let mut watch = DeathWatch::new(word as *const AtomicU32 as usize);
    // The first look at the owner's liveness comes after a quantum of
    // waiting (at once for a try): a live owner, the common case, costs
    // no system call beyond the futex.
    let mut last_check = Instant::now();
    let mut spins = 0;
    let mut slept = false;
    loop {
        let current = word.load(Ordering::Relaxed);
        let owner = current & OWNER;
        // Once slept, take the word with WAITERS: others may sleep too.
        let keep = (current & WAITERS) | if slept { WAITERS } else { 0 };
        if owner == 0 {
            if take == Take::OnlyFromDead {
                return Ok(Got::Free);
            }
            match word.compare_exchange(current, me | keep, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => return Ok(Got::Free),
                Err(_) => continue,
            }
        }
        if owner == me {
            if thread_id::forget_if_inherited() {
                // The cache named our parent: go on as ourselves.
                *caller = self::me()?;
                me = caller.tid;
                continue;
            }
            return Err(RELOCK);
        }
        if spins < SPINS && !patience.try_only() {
            spins += 1;
            std::hint::spin_loop();
            continue;
        }
        if patience.try_only() || last_check.elapsed() >= QUANTUM {
            last_check = Instant::now();
            if watch.is_dead(Identity::of_owner(owner, recorded.load(Ordering::Relaxed))) {
                match word.compare_exchange(
                    current,
                    me | keep,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Ok(Got::FromDead),
                    Err(_) => continue,
                }
            }
        }
        if patience.try_only() {
            return Ok(Got::Busy);
        }
        if patience.expired() {
            return Err(patience.timeout(owner));
        }
        if current & WAITERS == 0
            && word
                .compare_exchange(
                    current,
                    current | WAITERS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_err()
        {
            continue;
        }
        futex::wait(word, current | WAITERS, Some(patience.next_sleep()));
        slept = true;
    }
}

/// Releases owner word `word` held by `me`, waking one sleeper (or all, for
/// `wake_all`) if the word says someone may sleep.
#[inline]
pub(super) fn release(word: &AtomicU32, me: u32, wake_all: bool) {
    if let Err(current) = word.compare_exchange(me, 0, Ordering::Release, Ordering::Relaxed) {
        release_slow(word, me, current, wake_all);
    }
}

#[cold]
fn release_slow(word: &AtomicU32, me: u32, mut current: u32, wake_all: bool) {
    loop {
        if current & OWNER != me {
            // Not ours (any more): another thread judged us dead and took
            // the word over, or this is a forked child's copy of a guard.
            // Leave the word to its owner.
            return;
        }
        match word.compare_exchange(current, 0, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(actual) => current = actual,
        }
    }
    if current & WAITERS != 0 {
        if wake_all {
            futex::wake_all(word);
        } else {
            futex::wake(word, 1);
        }
    }
}

/// A mutual-exclusion lock that can live in shared memory, protecting a
/// value of type `T`.
///
/// Threads of any process that maps the lock exclude each other; waiters
/// sleep in the kernel. When a holder dies (its process is killed, or its
/// thread exits holding the lock), the next locker takes the lock over and
/// is told so by [`ShmMutexGuard::owner_died`], like a robust POSIX mutex.
/// The mutex then stays flagged *inconsistent*: every later locker is told
/// too, until one of them repairs the value and calls
/// [`ShmMutexGuard::mark_consistent`]. (Unlike POSIX, a recovering holder
/// that unlocks or dies without marking leaves the mutex usable and the next
/// locker is simply told again.) A holder that panics also leaves it flagged.
///
/// Relocking from the thread that holds the lock is an error, not a hang.
///
/// Protocol: one 32-bit word holds the owner's kernel thread id and a
/// "waiters" bit. Locking a free mutex is one compare-and-swap, unlocking
/// one more (plus a futex wake only if someone may sleep). Waiters spin
/// briefly, then sleep on the word (a shared futex) in quanta of a few
/// milliseconds, checking between sleeps whether the owner thread still
/// exists (and, after a short wait, still maps the lock's memory); a dead
/// owner is replaced by compare-and-swap from exactly the word they judged.
/// Any bit pattern is a valid mutex: a bogus owner is waited for or taken
/// over, never trusted further.
///
/// ```
/// use shmkit::sync::ShmMutex;
///
/// // Usually placed in a segment (`make_handle`, `new_obj`) and found by
/// // every process through a root; any memory works.
/// let counter = ShmMutex::new(0u64);
/// {
///     let mut guard = counter.lock()?;
///     if guard.owner_died() {
///         // Repair the value here, then:
///         guard.mark_consistent();
///     }
///     *guard += 1;
/// }
/// assert_eq!(*counter.try_lock()?.expect("free"), 1);
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct ShmMutex<T> {
    /// The owner word: 0, or owner thread id | [`WAITERS`].
    word: AtomicU32,
    /// 0, or (any other value) the value may be half-updated.
    consistency: AtomicU32,
    /// The identity of the owner the word names, once it has recorded it
    /// (stale, naming an earlier owner, until then).
    owner: AtomicU64,
    value: UnsafeCell<T>,
}

// SAFETY: the layout is `#[repr(C)]`: two `AtomicU32` words and an
// `AtomicU64`, which hold no address and accept every bit pattern (each
// value has a meaning, see the module docs, and none leads to undefined
// behaviour: a bogus owner or identity is at worst waited for or taken
// over), then a `T`, which is `ShmSafe` itself (`UnsafeCell<T>` has `T`'s
// layout and validity). Padding before the value carries no validity
// requirement.
unsafe impl<T: ShmSafe> ShmSafe for ShmMutex<T> {}

// SAFETY: the mutex owns its `T`; sending it sends the `T`.
unsafe impl<T: Send> Send for ShmMutex<T> {}
// SAFETY: shared access hands out `&mut T` to one guard at a time (the
// owner word excludes all others), so `T: Send` suffices, as for
// `std::sync::Mutex`.
unsafe impl<T: Send> Sync for ShmMutex<T> {}

impl<T> ShmMutex<T> {
    /// A free, consistent mutex holding `value`.
    pub const fn new(value: T) -> ShmMutex<T> {
        ShmMutex {
            word: AtomicU32::new(0),
            consistency: AtomicU32::new(0),
            owner: AtomicU64::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Locks the mutex, waiting as long as the holder lives; a dead holder
    /// is taken over (see [`ShmMutexGuard::owner_died`]).
    ///
    /// Errors: the calling thread already holds it
    /// ([`Error::Unsupported`]).
    #[inline]
    pub fn lock(&self) -> Result<ShmMutexGuard<'_, T>> {
        self.acquire(Wait::Forever)
    }

    /// Locks the mutex if that needs no waiting: `None` while a live holder
    /// has it. A dead holder is taken over.
    #[inline]
    pub fn try_lock(&self) -> Result<Option<ShmMutexGuard<'_, T>>> {
        match self.acquire(Wait::Try) {
            Ok(guard) => Ok(Some(guard)),
            Err(Error::LockTimeout { .. }) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Locks the mutex, waiting at most `patience` for a live holder:
    /// [`Error::LockTimeout`] (with the holder's process id) after that.
    #[inline]
    pub fn lock_timeout(&self, patience: Duration) -> Result<ShmMutexGuard<'_, T>> {
        self.acquire(Wait::For(patience))
    }

    /// Whether some thread holds the mutex now (a snapshot, for
    /// diagnostics: it may change at once).
    pub fn is_locked(&self) -> bool {
        self.word.load(Ordering::Relaxed) & OWNER != 0
    }

    /// The value, through exclusive access to the mutex (no locking).
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }

    #[inline]
    fn acquire(&self, wait: Wait) -> Result<ShmMutexGuard<'_, T>> {
        let mut me = me()?;
        let from_dead = if try_take(&self.word, me.tid) {
            false
        } else {
            self.acquire_contended(&mut me, wait)?
        };
        self.owner.store(me.identity, Ordering::Relaxed);
        if from_dead {
            self.consistency.store(INCONSISTENT, Ordering::Relaxed);
        }
        Ok(ShmMutexGuard {
            mutex: self,
            owner_died: from_dead || self.consistency.load(Ordering::Relaxed) != 0,
            _not_send: PhantomData,
        })
    }

    /// Takes the held word; whether its owner was dead. A try on a live
    /// holder is a `LockTimeout` that [`try_lock`](Self::try_lock) turns
    /// into `None` (without looking up the holder's process).
    #[cold]
    fn acquire_contended(&self, me: &mut Me, wait: Wait) -> Result<bool> {
        let patience = Patience::start(wait);
        match acquire_slow(&self.word, &self.owner, me, Take::Always, &patience)? {
            Got::Free => Ok(false),
            Got::FromDead => Ok(true),
            Got::Busy => Err(Error::LockTimeout {
                owner_pid: 0,
                waited: Duration::ZERO,
            }),
        }
    }
}

impl<T: Default> Default for ShmMutex<T> {
    fn default() -> ShmMutex<T> {
        ShmMutex::new(T::default())
    }
}

impl<T> std::fmt::Debug for ShmMutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = self.word.load(Ordering::Relaxed);
        f.debug_struct("ShmMutex")
            .field("owner_tid", &(word & OWNER))
            .field("waiters", &(word & WAITERS != 0))
            .field(
                "consistent",
                &(self.consistency.load(Ordering::Relaxed) == 0),
            )
            .finish_non_exhaustive()
    }
}

/// Holds a [`ShmMutex`] locked; gives access to the value and unlocks on
/// drop. Tied to the thread that locked (the lock word names it), so not
/// `Send`.
#[must_use = "the mutex unlocks as soon as the guard is dropped"]
pub struct ShmMutexGuard<'a, T> {
    mutex: &'a ShmMutex<T>,
    owner_died: bool,
    /// The lock word names this thread: the guard must stay on it.
    _not_send: PhantomData<*const ()>,
}

// SAFETY: a shared guard only hands out `&T`.
unsafe impl<T: Sync> Sync for ShmMutexGuard<'_, T> {}

impl<T> ShmMutexGuard<'_, T> {
    /// Whether the value may be half-updated: this lock took the mutex over
    /// from a dead holder, or an earlier one did and nobody has called
    /// [`mark_consistent`](Self::mark_consistent) since (or a holder
    /// panicked). Fixed when the lock was taken.
    pub fn owner_died(&self) -> bool {
        self.owner_died
    }

    /// Declares the value repaired: later lockers are no longer told that an
    /// owner died (until one dies again).
    pub fn mark_consistent(&mut self) {
        self.mutex.consistency.store(0, Ordering::Relaxed);
    }
}

impl<T> Deref for ShmMutexGuard<'_, T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: the guard holds the lock, so no `&mut T` exists elsewhere.
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T> DerefMut for ShmMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard holds the lock and is borrowed mutably, so this
        // is the only reference to the value.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T> Drop for ShmMutexGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A holder that panics may have left the value half-updated.
            self.mutex
                .consistency
                .store(INCONSISTENT, Ordering::Relaxed);
        }
        // The current id, not one saved at lock time: a forked child's copy
        // of the guard must not release its parent's lock.
        release(&self.mutex.word, thread_id::current(), false);
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for ShmMutexGuard<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// Helpers for tests that forge what a dead holder leaves behind.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Marks the mutex as held by thread `tid` (with sleepers, if asked).
    pub(crate) fn forge_owner<T>(mutex: &ShmMutex<T>, tid: u32, waiters: bool) {
        let bit = if waiters { WAITERS } else { 0 };
        mutex.word.store(tid | bit, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::thread_id::testing::{dead_tid, live_tid};

    #[test]
    fn threads_exclude_each_other() {
        let mutex = ShmMutex::new(0u64);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..5000 {
                        let mut guard = mutex.lock().unwrap();
                        // A non-atomic read-modify-write, stretched so the
                        // threads overlap inside it if the lock failed.
                        let value = *guard;
                        std::hint::spin_loop();
                        *guard = value + 1;
                    }
                });
            }
        });
        assert_eq!(*mutex.lock().unwrap(), 20_000);
        // Every holder released: nobody left a sleeper flag or a stale owner.
        assert_eq!(mutex.word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn try_lock_on_a_held_lock_is_none_until_released() {
        let mutex = ShmMutex::new(7u32);
        assert!(!mutex.is_locked());
        let guard = mutex.lock().unwrap();
        assert!(mutex.is_locked());
        std::thread::scope(|scope| {
            let other = scope.spawn(|| mutex.try_lock().map(|g| g.is_some()));
            assert!(!other.join().unwrap().unwrap(), "try_lock got a held lock");
        });
        drop(guard);
        std::thread::scope(|scope| {
            let other = scope.spawn(|| mutex.try_lock().map(|g| g.map(|g| *g)));
            assert_eq!(other.join().unwrap().unwrap(), Some(7));
        });
    }

    #[test]
    fn a_live_owner_makes_lock_timeout_fail_with_its_pid() {
        let mutex = ShmMutex::new(());
        let guard = mutex.lock().unwrap();
        std::thread::scope(|scope| {
            let result = scope
                .spawn(|| mutex.lock_timeout(Duration::from_millis(30)).map(|_| ()))
                .join()
                .unwrap();
            match result {
                Err(Error::LockTimeout { owner_pid, waited }) => {
                    assert_eq!(owner_pid, std::process::id());
                    assert!(waited >= Duration::from_millis(30), "{waited:?}");
                }
                other => panic!("expected a timeout, got {other:?}"),
            }
        });
        drop(guard);
        assert!(mutex.lock_timeout(Duration::from_millis(30)).is_ok());
    }

    #[test]
    fn a_waiter_sleeps_until_the_holder_unlocks() {
        let mutex = ShmMutex::new(0u32);
        let mut guard = mutex.lock().unwrap();
        std::thread::scope(|scope| {
            let waiter = scope.spawn(|| *mutex.lock().unwrap());
            // Let the waiter get past its spin and asleep with WAITERS set.
            let started = Instant::now();
            while mutex.word.load(Ordering::Relaxed) & WAITERS == 0 {
                assert!(started.elapsed().as_secs() < 10, "the waiter never slept");
                std::thread::yield_now();
            }
            *guard = 42;
            drop(guard);
            assert_eq!(waiter.join().unwrap(), 42);
        });
        assert_eq!(mutex.word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_dead_owner_is_taken_over_and_reported_until_marked_consistent() {
        for dead in [dead_tid(), crate::sync::robust_lock::testing::dead_pid()] {
            let mutex = ShmMutex::new(5u64);
            testing::forge_owner(&mutex, dead, true);
            let mut guard = mutex.lock().unwrap();
            assert!(guard.owner_died(), "dead owner {dead} not reported");
            *guard = 6;
            drop(guard);
            // Unlocked without marking: the next locker is told again.
            let mut guard = mutex.try_lock().unwrap().expect("free");
            assert!(guard.owner_died());
            guard.mark_consistent();
            drop(guard);
            let guard = mutex.lock().unwrap();
            assert!(!guard.owner_died());
            assert_eq!(*guard, 6);
        }
    }

    #[test]
    fn try_lock_takes_over_a_dead_owner() {
        let mutex = ShmMutex::new(());
        testing::forge_owner(&mutex, dead_tid(), false);
        let guard = mutex.try_lock().unwrap().expect("dead owner taken over");
        assert!(guard.owner_died());
    }

    #[test]
    fn a_live_thread_that_does_not_map_the_lock_is_taken_over() {
        let segment =
            crate::Segment::create(&crate::SegmentOptions::memfd("shm-mutex").size(1 << 16))
                .unwrap();
        let at = segment
            .resolve(crate::Offset::<ShmMutex<u64>>::from_raw(
                segment.data_offset(),
            ))
            .unwrap();
        // SAFETY: in bounds and aligned (checked); zero bytes are a free,
        // consistent mutex holding 0; the segment outlives the reference.
        let mutex = unsafe { at.as_ref() };
        // Our parent (the test runner) lives but does not map this memfd.
        // SAFETY: no preconditions.
        testing::forge_owner(mutex, unsafe { libc::getppid() } as u32, false);
        let guard = mutex.lock_timeout(Duration::from_secs(10)).unwrap();
        assert!(guard.owner_died());
    }

    #[test]
    fn a_thread_that_exits_holding_the_lock_is_taken_over() {
        let mutex = ShmMutex::new(0u32);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut guard = mutex.lock().unwrap();
                    *guard = 1;
                    std::mem::forget(guard);
                })
                .join()
                .unwrap();
        });
        let guard = mutex.lock_timeout(Duration::from_secs(10)).unwrap();
        assert!(guard.owner_died());
        assert_eq!(*guard, 1);
    }

    #[test]
    fn relocking_from_the_holding_thread_is_an_error() {
        let mutex = ShmMutex::new(());
        let guard = mutex.lock().unwrap();
        assert!(matches!(mutex.lock(), Err(Error::Unsupported(_))));
        assert!(matches!(mutex.try_lock(), Err(Error::Unsupported(_))));
        assert!(matches!(
            mutex.lock_timeout(Duration::from_secs(1)),
            Err(Error::Unsupported(_))
        ));
        drop(guard);
        assert!(mutex.try_lock().unwrap().is_some());
    }

    #[test]
    fn a_thread_with_an_inherited_identity_takes_over_instead_of_relocking() {
        // A holder dies holding the lock; a thread whose caches name it (a
        // child made by a raw clone, which runs no fork handler) asks for
        // the lock: it must find out who it really is and take it over,
        // not be told that it holds the lock already.
        let mutex = ShmMutex::new(0u32);
        let holder = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    std::mem::forget(mutex.lock().unwrap());
                    thread_id::current_identity_word()
                })
                .join()
                .unwrap()
        });
        std::thread::spawn(move || {
            thread_id::testing::inherit_identity(holder);
            let guard = mutex
                .lock_timeout(Duration::from_secs(10))
                .expect("a takeover, not a relock");
            assert!(guard.owner_died());
            assert_ne!(thread_id::current_identity_word(), holder);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_forked_childs_copy_of_a_guard_does_not_unlock() {
        let mutex = ShmMutex::new(0u32);
        let guard = mutex.lock().unwrap();
        // SAFETY: the child only drops the guard (a thread-id lookup, a
        // failing compare-and-swap) and reads an atomic before `_exit`.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            drop(guard);
            let still_held = mutex.word.load(Ordering::Relaxed) & OWNER != 0;
            // SAFETY: ends the child without running the test harness.
            unsafe { libc::_exit(if still_held { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        drop(guard);
        assert_eq!(mutex.word.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn garbage_words_give_a_usable_lock() {
        let mutex = ShmMutex::new(0u8);
        // WAITERS alone: free.
        testing::forge_owner(&mutex, 0, true);
        assert!(!mutex.try_lock().unwrap().expect("free").owner_died());
        // An owner id no thread has: dead.
        testing::forge_owner(&mutex, OWNER, true);
        assert!(mutex.lock().unwrap().owner_died());
        // Any non-zero consistency word reads as inconsistent.
        mutex.consistency.store(0xdead_beef, Ordering::Relaxed);
        let mut guard = mutex.lock().unwrap();
        assert!(guard.owner_died());
        guard.mark_consistent();
        drop(guard);
        assert!(!mutex.lock().unwrap().owner_died());
    }

    #[test]
    fn a_panicking_holder_leaves_the_mutex_flagged() {
        let mutex = ShmMutex::new(0u32);
        std::thread::scope(|scope| {
            let panicked = scope
                .spawn(|| {
                    let _guard = mutex.lock().unwrap();
                    panic!("while holding the lock");
                })
                .join();
            assert!(panicked.is_err());
        });
        assert!(mutex.lock().unwrap().owner_died());
    }

    #[test]
    fn a_live_owner_is_not_taken_over() {
        // A live thread of ours holds the word (forged, so it never
        // unlocks): waiters must time out, not take over.
        let (tid, stop, handle) = live_tid();
        let mutex = ShmMutex::new(());
        testing::forge_owner(&mutex, tid, false);
        assert!(mutex.try_lock().unwrap().is_none());
        assert!(matches!(
            mutex.lock_timeout(Duration::from_millis(30)),
            Err(Error::LockTimeout { .. })
        ));
        drop(stop);
        handle.join().unwrap();
    }
}
