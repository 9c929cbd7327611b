//! SIGINT, SIGTERM and SIGHUP as a flag. A command that made something to
//! clean up (a segment) installs the handler, polls [`received`] at every
//! stage, stops, cleans up and exits with 128 + the signal's number, as
//! shells, `timeout`, systemd and container runtimes expect (130 for
//! Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).

use std::process::ExitCode;
use std::sync::atomic::{AtomicI32, Ordering};

static RECEIVED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    RECEIVED.store(signal, Ordering::SeqCst);
}

/// Catches the three signals from now on. Each is caught once: the handler
/// puts the default action back (`SA_RESETHAND`), so a second Ctrl-C ends
/// a command that is stuck on its way out.
pub fn catch_termination() -> Result<(), String> {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed `sigaction` is valid; its handler only stores to
        // an atomic, which is async-signal-safe; the old action is not
        // asked for.
        let installed = unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            libc::sigaction(signal, &action, std::ptr::null_mut())
        };
        if installed != 0 {
            return Err(format!(
                "installing the handler for signal {signal}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}

/// The signal received since [`catch_termination`], if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// What to call the signal in a message.
pub fn describe(signal: i32) -> &'static str {
    match signal {
        libc::SIGINT => "interrupted (SIGINT)",
        libc::SIGTERM => "terminated (SIGTERM)",
        libc::SIGHUP => "hung up (SIGHUP)",
        _ => "stopped by a signal",
    }
}

/// The exit code after `signal`: 128 + its number.
pub fn exit_code(signal: i32) -> ExitCode {
    ExitCode::from(128u8.saturating_add(u8::try_from(signal).unwrap_or(0)))
}
