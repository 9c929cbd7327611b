//! The kernel thread id (`gettid`) without a system call per lock: cached
//! per thread, and forgotten in a forked child (whose only thread has a new
//! id) through a `pthread_atfork` hook, as [`process`](super::process) does for the
//! process id.
//!
//! What is assumed: a child made without glibc's `fork` (a raw `clone`)
//! runs no hook and starts with its parent's caches. Where that would
//! decide ownership wrongly (the cache claims a held lock word as this
//! thread's), the lock paths check with [`forget_if_inherited`] and go on
//! under the real identity. A guard such a child inherited still releases
//! with the cached identity (the release path makes no system call): it
//! must not be dropped there, as no guard copied into another process
//! should be.

use std::cell::Cell;
use std::sync::Once;

use crate::os::identity::{self, Identity};

thread_local! {
    /// This thread's id, 0 until first asked for.
    static TID: Cell<u32> = const { Cell::new(0) };
    /// This thread's packed identity (id and start time), 0 until first
    /// asked for.
    static IDENTITY: Cell<u64> = const { Cell::new(0) };
}

extern "C" fn forget_tid_in_child() {
    // The child's one thread is the one that called `fork`: its copy of the
    // caches names the parent's thread. Constant-initialized cells without
    // a destructor are plain thread-local memory, safe to touch here.
    let _ = TID.try_with(|tid| tid.set(0));
    let _ = IDENTITY.try_with(|identity| identity.set(0));
}

/// The calling thread's kernel thread id.
#[inline]
pub(crate) fn current() -> u32 {
    match TID.try_with(Cell::get) {
        Ok(tid) if tid != 0 => tid,
        _ => learn_tid(),
    }
}

/// The calling thread's identity (id and start time), packed: what a
/// lock records of its owner.
#[inline]
pub(crate) fn current_identity_word() -> u64 {
    match IDENTITY.try_with(Cell::get) {
        Ok(word) if word != 0 => word,
        _ => learn_identity(),
    }
}

/// The calling thread's identity.
#[cfg(test)]
pub(crate) fn current_identity() -> Identity {
    Identity::unpack(current_identity_word())
}

#[cold]
fn learn_identity() -> u64 {
    let word = Identity {
        tid: current(),
        start: identity::own_start(),
    }
    .pack();
    let _ = IDENTITY.try_with(|cell| cell.set(word));
    word
}

#[cold]
fn learn_tid() -> u32 {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a plain function with no captured state; it only
        // writes this thread's own cache cells.
        unsafe { libc::pthread_atfork(None, None, Some(forget_tid_in_child)) };
    });
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    let _ = TID.try_with(|cell| cell.set(tid));
    tid
}

/// Whether the cached id was inherited rather than learnt by this thread:
/// a child made without glibc's `fork` (a raw `clone`, a runtime that
/// bypasses it) runs no `pthread_atfork` handler, so its caches name the
/// parent's thread. Checked with one `gettid` on the paths that decide
/// ownership when the cache claims a lock word as this thread's own (a
/// relock); a stale cache is forgotten, so the caller can try again under
/// its real identity.
#[cold]
pub(crate) fn forget_if_inherited() -> bool {
    // SAFETY: gettid has no preconditions and cannot fail.
    let real = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    let cached = TID.try_with(Cell::get).unwrap_or(0);
    if cached == 0 || cached == real {
        return false;
    }
    forget_tid_in_child();
    true
}

/// The process (thread group) that thread `tid` belongs to, from
/// `/proc/TID/status`; `tid` itself when `/proc` cannot say. For messages
/// and errors only (slow).
pub(crate) fn process_of(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Tgid:"))
                .and_then(|pid| pid.trim().parse().ok())
        })
        .unwrap_or(tid)
}

/// Helpers for tests that forge what a dead thread leaves behind.
/// A dense, process-unique index for the calling thread (0, 1, 2...).
pub fn current_thread_index() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    thread_local! {
        static INDEX: u32 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    INDEX.with(|index| *index)
}

#[cfg(test)]
pub(crate) mod testing {
    /// Makes this thread's caches name another thread, as a child made
    /// without `fork`'s handlers inherits them.
    pub(crate) fn inherit_identity(word: u64) {
        let identity = super::Identity::unpack(word);
        super::TID.with(|tid| tid.set(identity.tid));
        super::IDENTITY.with(|cell| cell.set(word));
    }

    /// The id of a thread that has exited (and whose id the kernel freed).
    pub(crate) fn dead_tid() -> u32 {
        let tid = std::thread::spawn(super::current).join().unwrap();
        // A joined thread's id is released at its exit; wait until the
        // kernel agrees, so a test never races the thread's last steps.
        let started = std::time::Instant::now();
        while crate::os::process::process_alive(tid) {
            assert!(started.elapsed().as_secs() < 10, "thread {tid} never went");
            std::thread::yield_now();
        }
        tid
    }

    /// A thread that stays alive (parked) until the returned sender is
    /// dropped, and its id.
    pub(crate) fn live_tid() -> (
        u32,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            tid_tx.send(super::current()).unwrap();
            let _ = stop_rx.recv();
        });
        (tid_rx.recv().unwrap(), stop_tx, handle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_per_thread_and_name_this_process() {
        let mine = current();
        assert_eq!(mine, current(), "cached");
        assert_eq!(process_of(mine), std::process::id());
        let (other, stop, handle) = testing::live_tid();
        assert_ne!(other, mine);
        // A live thread's id answers `kill(tid, 0)`; an exited one does not.
        assert!(crate::os::process::process_alive(other));
        assert_eq!(process_of(other), std::process::id());
        drop(stop);
        handle.join().unwrap();
        assert!(!crate::os::process::process_alive(testing::dead_tid()));
    }

    #[test]
    fn a_forked_child_learns_its_own_id() {
        let parent = current();
        // SAFETY: the child only calls async-signal-safe functions (getpid,
        // gettid through our cache, _exit) before exiting.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork failed");
        if child == 0 {
            let ok = current() != parent
                // SAFETY: no preconditions.
                && current() == unsafe { libc::getpid() } as u32;
            // SAFETY: ends the child without running the parent's atexit
            // handlers or test harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        let waited = unsafe { libc::waitpid(child, &mut status, 0) };
        assert_eq!(waited, child);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
