//! The Linux futex, on a 32-bit word that may live in shared memory.
//!
//! Waits and wakes are *shared* futexes (no `FUTEX_PRIVATE_FLAG`): the kernel
//! keys them by the physical page, so a waiter in one process is woken by a
//! waker in another, whatever address each mapped the segment at.

use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Why a [`wait`] returned. Every outcome may be spurious: callers re-check
/// their condition in a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Woken {
    /// A wake, a signal, or a spurious return.
    Maybe,
    /// The word no longer held the expected value when the call was made.
    Changed,
    /// The timeout passed.
    TimedOut,
}

/// Sleeps while `word` holds `expected`, at most `timeout` (forever when
/// `None`).
pub(crate) fn wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> Woken {
    let timespec = timeout.map(|timeout| libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    });
    let timespec_ptr = timespec
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a live, aligned 32-bit atomic for the whole call; the
    // kernel only reads it (atomically) and compares it with `expected`. The
    // timespec outlives the call; the unused arguments are ignored by
    // FUTEX_WAIT.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            timespec_ptr,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    if rc == 0 {
        return Woken::Maybe;
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::EAGAIN) => Woken::Changed,
        Some(libc::ETIMEDOUT) => Woken::TimedOut,
        _ => Woken::Maybe,
    }
}

/// Wakes up to `count` waiters on `word`; returns how many were woken.
pub(crate) fn wake(word: &AtomicU32, count: u32) -> u32 {
    let count = count.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: as in `wait`; FUTEX_WAKE does not dereference the word.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            count,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    rc.max(0) as u32
}

/// Wakes every waiter on `word`.
pub(crate) fn wake_all(word: &AtomicU32) -> u32 {
    wake(word, u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    #[test]
    fn a_wait_on_a_changed_word_returns_at_once() {
        let word = AtomicU32::new(1);
        assert_eq!(wait(&word, 0, None), Woken::Changed);
    }

    #[test]
    fn a_wait_times_out() {
        let word = AtomicU32::new(0);
        let started = Instant::now();
        assert_eq!(
            wait(&word, 0, Some(Duration::from_millis(20))),
            Woken::TimedOut
        );
        assert!(started.elapsed() >= Duration::from_millis(15));
    }

    #[test]
    fn a_wake_reaches_a_sleeping_thread() {
        // The word never changes, so only a wake can end the sleep before
        // its 10 s timeout. The waker repeats until the kernel reports that
        // it woke one sleeper, which proves the sleeper was asleep.
        let word = AtomicU32::new(0);
        let timeout = Duration::from_secs(10);
        std::thread::scope(|scope| {
            let sleeper = scope.spawn(|| {
                let started = Instant::now();
                (wait(&word, 0, Some(timeout)), started.elapsed())
            });
            let deadline = Instant::now() + Duration::from_secs(5);
            while wake_all(&word) == 0 {
                assert!(
                    Instant::now() < deadline,
                    "no wake reached a sleeper within 5 s"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let (woken, slept) = sleeper.join().unwrap();
            assert_eq!(woken, Woken::Maybe);
            assert!(
                slept < timeout / 2,
                "the sleeper slept {slept:?}: its timeout ended it, not the wake"
            );
        });
        assert_eq!(word.load(Ordering::Relaxed), 0);
    }
}
