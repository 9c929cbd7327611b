//! A lock in shared memory that survives the death of its owner.
//!
//! The lock word records its owner's [identity](super::identity): the
//! owner thread's kernel id and start time. A waiter that finds that thread
//! gone, a zombie, or its id now naming a thread started at another time (a
//! reused id) takes the lock over and is told so, through
//! [`RobustGuard::recovered`], so it can repair or roll back the half-done
//! step. Nobody waits forever: a lock that stays busy past the caller's
//! patience is an error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::os::identity::{self, Identity};
use crate::os::mapped_by::{self, MappedObject};
use crate::os::process::process_alive;
use crate::os::thread_id;

/// The lock word: 0 when free, else the owner's packed [`Identity`].
#[repr(C)]
pub(crate) struct RobustLock {
    owner: AtomicU64,
}

/// Holds a [`RobustLock`]; releases it on drop.
pub(crate) struct RobustGuard<'a> {
    lock: &'a RobustLock,
    /// The packed identity of the dead owner the lock was taken from, or 0.
    dead_owner: u64,
}

impl RobustGuard<'_> {
    /// Whether the previous owner died holding the lock: the protected data
    /// may be half-updated and must be repaired before use.
    pub(crate) fn recovered(&self) -> bool {
        self.dead_owner != 0
    }

    /// The packed identity of the owner that died holding the lock (the
    /// thread whose half-done step the repair completes), if it did.
    pub(crate) fn dead_owner(&self) -> Option<u64> {
        (self.dead_owner != 0).then_some(self.dead_owner)
    }
}

impl Drop for RobustGuard<'_> {
    fn drop(&mut self) {
        // The current identity, not the one saved at lock time: a forked
        // child's copy of the guard (its thread has another identity) must
        // not release its parent's lock.
        let _ =
            self.lock
                .owner
                .compare_exchange(own_token(), 0, Ordering::Release, Ordering::Relaxed);
    }
}

/// How many times a caller that refuses to wait re-reads a busy lock word
/// before it reports [`Error::WouldBlock`]: long enough to ride out a holder
/// in the middle of a short operation, far shorter than a system call.
const SPINS_BEFORE_REFUSING: u32 = 64;

/// How long a caller of [`RobustLock::lock`] waits for a live holder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Patience {
    /// Up to this long (then [`Error::LockTimeout`]).
    Wait(Duration),
    /// Not at all: a few spins, then [`Error::WouldBlock`] (a dead holder
    /// is judged by the next patient caller).
    Refuse,
}

/// How often a waiter checks whether the owner is still alive.
const LIVENESS_PERIOD: Duration = Duration::from_millis(2);

/// How long a waiter waits before it also checks, every this long, that a
/// live owner maps the lock's segment (reading `/proc`, too slow for every
/// contended lock).
const MAPS_CHECK_AFTER: Duration = Duration::from_millis(50);

impl RobustLock {
    pub(crate) const fn new() -> RobustLock {
        RobustLock {
            owner: AtomicU64::new(0),
        }
    }

    /// Takes the lock, waiting for a live holder at most `patience`.
    #[inline]
    pub(crate) fn lock(&self, patience: Duration) -> Result<RobustGuard<'_>> {
        self.lock_with(Patience::Wait(patience))
    }

    /// Takes the lock with the given patience.
    #[inline]
    pub(crate) fn lock_with(&self, patience: Patience) -> Result<RobustGuard<'_>> {
        let token = own_token();
        match (self.take_from(0, token, false), patience) {
            (Some(guard), _) => Ok(guard),
            (None, Patience::Wait(patience)) => self.lock_slow(token, patience),
            (None, Patience::Refuse) => self.lock_or_refuse(token),
        }
    }

    /// Moves the lock word from `expected` to `token`; `recovered` says
    /// whether `expected` was a dead owner.
    #[inline]
    fn take_from(&self, expected: u64, token: u64, recovered: bool) -> Option<RobustGuard<'_>> {
        self.owner
            .compare_exchange(expected, token, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| RobustGuard {
                lock: self,
                dead_owner: if recovered { expected } else { 0 },
            })
    }

    #[cold]
    fn lock_slow(&self, mut token: u64, patience: Duration) -> Result<RobustGuard<'_>> {
        let mut watch = DeathWatch::new(self as *const RobustLock as usize);
        let mut last_check = Instant::now();
        let backoff = crossbeam_utils::Backoff::new();
        loop {
            let owner = self.owner.load(Ordering::Relaxed);
            if owner == 0 {
                if let Some(guard) = self.take_from(0, token, false) {
                    return Ok(guard);
                }
                continue;
            }
            if owner == token {
                if thread_id::forget_if_inherited() {
                    // The cache named our parent: go on as ourselves.
                    token = own_token();
                    continue;
                }
                return Err(Error::Unsupported(
                    "the lock is already held by this thread",
                ));
            }
            let now = Instant::now();
            if now.duration_since(last_check) >= LIVENESS_PERIOD {
                last_check = now;
                let holder = Identity::unpack(owner);
                if watch.is_dead(holder) {
                    if let Some(guard) = self.take_from(owner, token, true) {
                        return Ok(guard);
                    }
                }
                let waited = watch.waited();
                if waited >= patience {
                    return Err(Error::LockTimeout {
                        owner_pid: thread_id::process_of(holder.tid),
                        waited,
                    });
                }
            }
            if backoff.is_completed() {
                std::thread::yield_now();
            } else {
                backoff.snooze();
            }
        }
    }
}

impl RobustLock {
    /// The slow path of [`Patience::Refuse`]: a few spins, then
    /// [`Error::WouldBlock`] (the patient path judges whether the owner died).
    fn lock_or_refuse(&self, mut token: u64) -> Result<RobustGuard<'_>> {
        let mut owner = 0;
        for _ in 0..SPINS_BEFORE_REFUSING {
            owner = self.owner.load(Ordering::Relaxed);
            if owner == 0 {
                if let Some(guard) = self.take_from(0, token, false) {
                    return Ok(guard);
                }
            } else if owner == token {
                if thread_id::forget_if_inherited() {
                    token = own_token();
                    continue;
                }
                return Err(Error::Unsupported(
                    "the lock is already held by this thread",
                ));
            }
            std::hint::spin_loop();
        }
        Err(Error::WouldBlock {
            owner_pid: thread_id::process_of(Identity::unpack(owner).tid),
        })
    }
}

/// The rule by which a lock waiter decides that the owner a lock word
/// names is dead, over one wait. With the owner's start time known: its id
/// is gone or a zombie, or names a thread started at another time (a reused
/// id). Without it (a 32-bit owner word whose owner has not recorded its
/// start yet, or no `/proc`): its id does not answer `kill(id, 0)`, or,
/// once the wait has lasted [`MAPS_CHECK_AFTER`] (and then every that
/// long), it answers but does not map the object the lock lives in (an
/// unrelated process, or garbage in the word). Shared by every lock of this
/// module, so they all judge owners alike.
pub(crate) struct DeathWatch {
    /// Where the lock lives, to find its mapped object on first need.
    addr: usize,
    started: Instant,
    last_maps_check: Instant,
    /// The object the lock lives in (`None` inside: anonymous memory, no
    /// maps check possible), found on first need.
    object: Option<Option<MappedObject>>,
}

impl DeathWatch {
    /// Starts watching for a wait on the lock at `addr`.
    pub(crate) fn new(addr: usize) -> DeathWatch {
        let now = Instant::now();
        DeathWatch {
            addr,
            started: now,
            last_maps_check: now,
            object: None,
        }
    }

    /// Checks the maps of a live owner from the first judgement on: for a
    /// caller that judges once instead of waiting.
    pub(crate) fn judging_at_once(mut self) -> DeathWatch {
        if let Some(past) = self.last_maps_check.checked_sub(MAPS_CHECK_AFTER) {
            self.last_maps_check = past;
        }
        self
    }

    /// How long the wait has lasted.
    pub(crate) fn waited(&self) -> Duration {
        self.started.elapsed()
    }

    /// Whether owner `holder` is dead by the rule above (one read of its
    /// `/proc` stat; sometimes of its maps).
    pub(crate) fn is_dead(&mut self, holder: Identity) -> bool {
        if let Some(dead) = identity::is_dead(holder) {
            return dead;
        }
        let id = holder.tid;
        if !process_alive(id) {
            return true;
        }
        let now = Instant::now();
        if now.duration_since(self.last_maps_check) < MAPS_CHECK_AFTER {
            return false;
        }
        self.last_maps_check = now;
        let addr = self.addr;
        self.object
            .get_or_insert_with(|| mapped_by::object_at(addr))
            .as_ref()
            .is_some_and(|object| mapped_by::process_maps(id, object) == Some(false))
    }
}

/// This thread's lock token: its packed identity.
#[inline]
fn own_token() -> u64 {
    thread_id::current_identity_word()
}

/// Helpers for tests that forge what a crashed process leaves behind.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// The pid of a process that has exited and been reaped.
    pub(crate) fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    /// Marks the lock as held by thread `tid`, start time unknown.
    pub(crate) fn forge_owner(lock: &RobustLock, tid: u32) {
        lock.owner
            .store(Identity { tid, start: 0 }.pack(), Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_owner_is_taken_over_and_reported() {
        let lock = RobustLock::new();
        testing::forge_owner(&lock, testing::dead_pid());
        let guard = lock.lock(Duration::from_secs(5)).unwrap();
        assert!(guard.recovered());
        drop(guard);
        let again = lock.lock(Duration::from_secs(5)).unwrap();
        assert!(!again.recovered());
    }

    #[test]
    fn a_live_pid_that_does_not_map_the_segment_is_taken_over() {
        let segment =
            crate::Segment::create(&crate::SegmentOptions::memfd("robust-lock").size(1 << 16))
                .unwrap();
        let at = segment
            .resolve(crate::Offset::<RobustLock>::from_raw(segment.data_offset()))
            .unwrap();
        // SAFETY: in bounds and aligned (checked); zero bytes are a free
        // lock; the segment outlives the reference.
        let lock = unsafe { at.as_ref() };
        // Our parent (the test runner) lives but does not map this memfd.
        // SAFETY: no preconditions.
        testing::forge_owner(lock, unsafe { libc::getppid() } as u32);
        let guard = lock.lock(Duration::from_secs(5)).unwrap();
        assert!(guard.recovered());
    }

    #[test]
    fn a_live_owner_makes_waiters_time_out() {
        let lock = RobustLock::new();
        let held = lock.lock(Duration::from_secs(1)).unwrap();
        std::thread::scope(|scope| {
            let result = scope
                .spawn(|| lock.lock(Duration::from_millis(20)).map(|_| ()))
                .join()
                .unwrap();
            assert!(
                matches!(result, Err(Error::LockTimeout { .. })),
                "{result:?}"
            );
        });
        drop(held);
        assert!(lock.lock(Duration::from_millis(20)).is_ok());
    }

    #[test]
    fn a_caller_that_refuses_to_wait_is_told_at_once_and_can_retry() {
        let lock = RobustLock::new();
        let held = lock.lock(Duration::from_secs(1)).unwrap();
        std::thread::scope(|scope| {
            // A patient wait would end in `LockTimeout` (the holder never
            // lets go here); a refusal is `WouldBlock`.
            let refused = scope
                .spawn(|| lock.lock_with(Patience::Refuse).map(|_| ()))
                .join()
                .unwrap();
            assert!(
                matches!(refused, Err(Error::WouldBlock { owner_pid }) if owner_pid == std::process::id()),
                "{refused:?}"
            );
        });
        drop(held);
        // A free lock is taken at once, refusing or not.
        assert!(lock.lock_with(Patience::Refuse).is_ok());
    }

    #[test]
    fn a_thread_with_an_inherited_identity_takes_over_instead_of_relocking() {
        let lock = RobustLock::new();
        let holder = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    std::mem::forget(lock.lock(Duration::from_secs(1)).unwrap());
                    thread_id::current_identity_word()
                })
                .join()
                .unwrap()
        });
        std::thread::scope(|scope| {
            scope.spawn(|| {
                thread_id::testing::inherit_identity(holder);
                let guard = lock
                    .lock(Duration::from_secs(10))
                    .expect("a takeover, not a relock");
                assert!(guard.recovered());
            });
        });
    }

    #[test]
    fn a_forked_childs_copy_of_a_guard_does_not_unlock() {
        let segment =
            crate::Segment::create(&crate::SegmentOptions::memfd("robust-fork").size(1 << 16))
                .unwrap();
        let at = segment
            .resolve(crate::Offset::<RobustLock>::from_raw(segment.data_offset()))
            .unwrap();
        // SAFETY: in bounds and aligned (checked); zero bytes are a free
        // lock; the mapping is shared with the child and outlives both.
        let lock = unsafe { at.as_ref() };
        let guard = lock.lock(Duration::from_secs(1)).unwrap();
        // SAFETY: the child drops its copy of the guard (a compare-and-swap
        // on shared memory and a thread-local read) and leaves with _exit.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            drop(guard);
            // SAFETY: leaves without running the test harness.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
        assert!(
            lock.owner.load(Ordering::Relaxed) != 0,
            "the parent still holds it"
        );
        drop(guard);
        assert_eq!(lock.owner.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn threads_exclude_each_other() {
        let lock = RobustLock::new();
        let counter = AtomicU64::new(0);
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..2000 {
                        let _guard = lock.lock(Duration::from_secs(10)).unwrap();
                        // A non-atomic read-modify-write under the lock.
                        let value = counter.load(Ordering::Relaxed);
                        counter.store(value + 1, Ordering::Relaxed);
                    }
                });
            }
        });
        assert_eq!(counter.load(Ordering::Relaxed), 8000);
    }
}
