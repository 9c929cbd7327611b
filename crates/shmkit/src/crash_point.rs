//! Named points inside allocator operations where a test can have the
//! process killed, so that crash tests land *inside* an operation rather
//! than around it.
//!
//! Compiled in only with the `crash-points` feature (for tests); without it
//! [`crash_point!`] expands to nothing. A test process calls [`arm`] with a
//! point's name; the next thread to reach that point sends its process
//! SIGKILL, as an OOM killer or an operator would. Or it installs a hook
//! with [`on_reach`], called at every point: a soak's worker uses it to say
//! "inside" and wait there for a kill from outside, so that random kills
//! land inside operations (holding a lock, where the point is under one).

/// Marks a point where a test may kill the process (see the module docs).
macro_rules! crash_point {
    ($name:literal) => {
        #[cfg(feature = "crash-points")]
        $crate::crash_point::reached($name);
    };
}
pub(crate) use crash_point;

#[cfg(feature = "crash-points")]
mod armed {
    use std::sync::Mutex;

    static ARMED: Mutex<Option<&'static str>> = Mutex::new(None);
    static HOOK: Mutex<Option<fn(&'static str)>> = Mutex::new(None);

    /// Has the next thread that reaches the point `name` kill this process
    /// with SIGKILL.
    pub fn arm(name: &'static str) {
        *ARMED.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(name);
    }

    /// Has every thread that reaches any point call `hook` with its name
    /// first (replacing an earlier hook).
    pub fn on_reach(hook: fn(&'static str)) {
        *HOOK.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(hook);
    }

    /// Called at each point: runs the hook, then kills the process when the
    /// point is armed.
    pub fn reached(name: &'static str) {
        let hook = *HOOK.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(hook) = hook {
            hook(name);
        }
        let armed = *ARMED.lock().unwrap_or_else(|poison| poison.into_inner());
        if armed == Some(name) {
            // SAFETY: raise has no memory preconditions; SIGKILL cannot be
            // caught, so nothing of this process runs afterwards.
            unsafe { libc::raise(libc::SIGKILL) };
        }
    }
}

#[cfg(feature = "crash-points")]
pub use armed::{arm, on_reach, reached};
