//! What every call returns: a status code, one per kind of
//! [`shmkit::Error`], plus the C API's own (a null argument, a handle that
//! is not one, a Rust panic caught at the boundary). The message of the last
//! failed call is kept per thread.

use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use shmkit::Error;

/// The outcome of a call. `SHMKIT_OK` is 0; every other value is a failure
/// whose message `shmkit_last_error()` gives on the same thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum shmkit_status {
    /// Success.
    SHMKIT_OK = 0,
    /// An argument was null, or not valid UTF-8 where a name is expected.
    SHMKIT_E_NULL_ARGUMENT = 1,
    /// A handle that is not a live handle of this API (closed, or another
    /// object).
    SHMKIT_E_BAD_HANDLE = 2,
    /// The named segment does not exist.
    SHMKIT_E_NOT_FOUND = 3,
    /// A segment with that name exists already.
    SHMKIT_E_ALREADY_EXISTS = 4,
    /// The operating system refused access.
    SHMKIT_E_PERMISSION_DENIED = 5,
    /// The object is not a shmkit segment (a foreign file, say).
    SHMKIT_E_NOT_SHMKIT = 6,
    /// A segment of a format version this build does not read.
    SHMKIT_E_UNSUPPORTED_VERSION = 7,
    /// A header or structure in the segment is damaged.
    SHMKIT_E_CORRUPT = 8,
    /// A process died mid-operation: `shmkit_heap_recover` mends it.
    SHMKIT_E_NEEDS_RECOVERY = 9,
    /// The segment is managed by another kind of allocator (or other
    /// parameters).
    SHMKIT_E_WRONG_ALLOCATOR = 10,
    /// The creator died, or creation failed, or the segment never became
    /// ready.
    SHMKIT_E_NOT_READY = 11,
    /// The allocator has no room for the request.
    SHMKIT_E_OUT_OF_MEMORY = 12,
    /// The backing file system has no room to grow the segment.
    SHMKIT_E_NO_SPACE = 13,
    /// A size or alignment that cannot be served.
    SHMKIT_E_INVALID_SIZE = 14,
    /// A name that is too long or holds a forbidden character.
    SHMKIT_E_INVALID_NAME = 15,
    /// The segment is in use by others (a recovery refused while they run).
    SHMKIT_E_IN_USE = 16,
    /// The operation is not supported (by this allocator or backend).
    SHMKIT_E_UNSUPPORTED = 17,
    /// An offset or pointer outside the segment, misaligned, or null.
    SHMKIT_E_OUT_OF_BOUNDS = 18,
    /// A free of a block that is not live: a double free, a stale offset.
    SHMKIT_E_INVALID_FREE = 19,
    /// A wait ran out: a lock stayed held, or a queue stayed full or empty,
    /// past the time allowed.
    SHMKIT_E_TIMEOUT = 20,
    /// A named root or object that does not exist.
    SHMKIT_E_NAME_NOT_FOUND = 21,
    /// A named root or object that exists already.
    SHMKIT_E_NAME_EXISTS = 22,
    /// A named object of another size or type.
    SHMKIT_E_WRONG_TYPE = 23,
    /// A system call failed (the message names it and the reason).
    SHMKIT_E_IO = 24,
    /// A Rust panic was caught at the boundary (a bug in shmkit: please
    /// report the message).
    SHMKIT_E_PANIC = 25,
    /// A failure this version of the C API has no code for (see the
    /// message).
    SHMKIT_E_OTHER = 26,
}

use shmkit_status::*;

/// The status for a library error.
pub(crate) fn status_of(error: &Error) -> shmkit_status {
    match error {
        Error::NotFound { .. } => SHMKIT_E_NOT_FOUND,
        Error::AlreadyExists { .. } => SHMKIT_E_ALREADY_EXISTS,
        Error::PermissionDenied { .. } => SHMKIT_E_PERMISSION_DENIED,
        Error::NotShmkit { .. } => SHMKIT_E_NOT_SHMKIT,
        Error::UnsupportedVersion { .. } => SHMKIT_E_UNSUPPORTED_VERSION,
        Error::CorruptHeader { .. } | Error::CorruptData { .. } | Error::Truncated { .. } => {
            SHMKIT_E_CORRUPT
        }
        Error::NeedsRecovery { .. } => SHMKIT_E_NEEDS_RECOVERY,
        Error::WrongAllocator { .. } | Error::WrongAllocatorParams { .. } => {
            SHMKIT_E_WRONG_ALLOCATOR
        }
        Error::CreatorDied { .. } | Error::CreationFailed { .. } | Error::NotReady { .. } => {
            SHMKIT_E_NOT_READY
        }
        Error::OutOfMemory { .. } | Error::PoolExhausted { .. } => SHMKIT_E_OUT_OF_MEMORY,
        Error::NoSpace { .. } | Error::GrowBeyondMax { .. } => SHMKIT_E_NO_SPACE,
        Error::InvalidSize { .. } | Error::InvalidAlignment { .. } => SHMKIT_E_INVALID_SIZE,
        Error::InvalidName { .. } => SHMKIT_E_INVALID_NAME,
        Error::InUse { .. } => SHMKIT_E_IN_USE,
        Error::Unsupported(_) | Error::ReadOnlyMapping { .. } => SHMKIT_E_UNSUPPORTED,
        Error::NullOffset
        | Error::OutOfBounds { .. }
        | Error::Misaligned { .. }
        | Error::ForeignPointer
        | Error::IndexOutOfRange { .. } => SHMKIT_E_OUT_OF_BOUNDS,
        Error::InvalidFree { .. } | Error::NotTopOfStack { .. } => SHMKIT_E_INVALID_FREE,
        Error::LockTimeout { .. } | Error::WouldBlock { .. } | Error::LockLimit { .. } => {
            SHMKIT_E_TIMEOUT
        }
        Error::NameNotFound { .. } => SHMKIT_E_NAME_NOT_FOUND,
        Error::NameExists { .. } | Error::Root { .. } => SHMKIT_E_NAME_EXISTS,
        Error::WrongType { .. } => SHMKIT_E_WRONG_TYPE,
        Error::Io { .. } => SHMKIT_E_IO,
        _ => SHMKIT_E_OTHER,
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// A failure as the boundary reports it: a status and its message.
pub(crate) struct Failure(pub(crate) shmkit_status, pub(crate) String);

impl From<Error> for Failure {
    fn from(error: Error) -> Failure {
        Failure(status_of(&error), error.to_string())
    }
}

impl Failure {
    pub(crate) fn null(what: &str) -> Failure {
        Failure(SHMKIT_E_NULL_ARGUMENT, format!("{what} is null"))
    }

    pub(crate) fn bad_handle(what: &str) -> Failure {
        Failure(
            SHMKIT_E_BAD_HANDLE,
            format!("{what} is not a live handle (closed, or another object)"),
        )
    }
}

/// Records `failure` as this thread's last error and returns its status.
#[cold]
pub(crate) fn fail(failure: Failure) -> shmkit_status {
    let message = CString::new(failure.1.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = message);
    failure.0
}

/// Runs the body of an exported function: its failure becomes a status and
/// this thread's last error, and a panic never crosses into C.
#[inline(always)]
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> shmkit_status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => SHMKIT_OK,
        Ok(Err(failure)) => fail(failure),
        Err(panic) => fail(Failure(SHMKIT_E_PANIC, panic_message(&*panic))),
    }
}

#[cold]
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into());
    format!("internal error (a panic in shmkit): {text}")
}

/// The message of the last call that failed on this thread ("" if none
/// has). The string stays valid until the next failing call on this
/// thread.
#[no_mangle]
pub extern "C" fn shmkit_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// The name of a status ("SHMKIT_E_OUT_OF_MEMORY"), or "SHMKIT_E_UNKNOWN"
/// for a value that is none.
#[no_mangle]
pub extern "C" fn shmkit_status_name(status: i32) -> *const c_char {
    macro_rules! names {
        ($($name:ident),* $(,)?) => {
            match status {
                $(s if s == $name as i32 => concat!(stringify!($name), "\0"),)*
                _ => "SHMKIT_E_UNKNOWN\0",
            }
        };
    }
    let name: &'static str = names!(
        SHMKIT_OK,
        SHMKIT_E_NULL_ARGUMENT,
        SHMKIT_E_BAD_HANDLE,
        SHMKIT_E_NOT_FOUND,
        SHMKIT_E_ALREADY_EXISTS,
        SHMKIT_E_PERMISSION_DENIED,
        SHMKIT_E_NOT_SHMKIT,
        SHMKIT_E_UNSUPPORTED_VERSION,
        SHMKIT_E_CORRUPT,
        SHMKIT_E_NEEDS_RECOVERY,
        SHMKIT_E_WRONG_ALLOCATOR,
        SHMKIT_E_NOT_READY,
        SHMKIT_E_OUT_OF_MEMORY,
        SHMKIT_E_NO_SPACE,
        SHMKIT_E_INVALID_SIZE,
        SHMKIT_E_INVALID_NAME,
        SHMKIT_E_IN_USE,
        SHMKIT_E_UNSUPPORTED,
        SHMKIT_E_OUT_OF_BOUNDS,
        SHMKIT_E_INVALID_FREE,
        SHMKIT_E_TIMEOUT,
        SHMKIT_E_NAME_NOT_FOUND,
        SHMKIT_E_NAME_EXISTS,
        SHMKIT_E_WRONG_TYPE,
        SHMKIT_E_IO,
        SHMKIT_E_PANIC,
        SHMKIT_E_OTHER,
    );
    name.as_ptr().cast()
}
