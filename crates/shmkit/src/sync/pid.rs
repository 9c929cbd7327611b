//! The process id without a system call: cached, and forgotten in a forked
//! child (which has a new pid) through a `pthread_atfork` hook.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

static PID: AtomicU32 = AtomicU32::new(0);

extern "C" fn forget_pid_in_child() {
    PID.store(0, Ordering::Relaxed);
}

/// The process id without a system call per lock; a forked child (which has
/// a new pid) drops the cached value through a `pthread_atfork` hook.
#[inline]
pub(crate) fn cached_pid() -> u32 {
    let pid = PID.load(Ordering::Relaxed);
    if pid != 0 {
        return pid;
    }
    learn_pid()
}

#[cold]
fn learn_pid() -> u32 {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        // SAFETY: registers a plain function with no captured state; it
        // only stores to an atomic, which is async-signal-safe.
        unsafe { libc::pthread_atfork(None, None, Some(forget_pid_in_child)) };
    });
    let pid = std::process::id();
    PID.store(pid, Ordering::Relaxed);
    pid
}
