//! Named points inside allocator operations where a test can have the
//! process killed, so that crash tests land *inside* an operation rather
//! than around it.
//!
//! Compiled in only with the `crash-points` feature (for tests); without it
//! [`crash_point!`] expands to nothing. A test process calls [`arm`] with a
//! point's name; the next thread to reach that point sends its process
//! SIGKILL, as an OOM killer or an operator would.

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

    /// Has the next thread that reaches the point `name` kill this process
    /// with SIGKILL.
    pub fn arm(name: &'static str) {
        *ARMED.lock().unwrap_or_else(|poison| poison.into_inner()) = Some(name);
    }

    /// Called at each point: kills the process when the point is armed.
    pub fn reached(name: &'static str) {
        let armed = *ARMED.lock().unwrap_or_else(|poison| poison.into_inner());
        if armed == Some(name) {
            // SAFETY: raise has no memory preconditions; SIGKILL cannot be
            // caught, so nothing of this process runs afterwards.
            unsafe { libc::raise(libc::SIGKILL) };
        }
    }
}

#[cfg(feature = "crash-points")]
pub use armed::{arm, reached};
