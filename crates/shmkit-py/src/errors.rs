//! What the Python API refuses, and shmkit's errors, as the Python
//! exceptions a Python user expects.

use pyo3::exceptions::{
    PyBufferError, PyFileExistsError, PyFileNotFoundError, PyMemoryError, PyNotImplementedError,
    PyOSError, PyPermissionError, PyRuntimeError, PyTimeoutError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::PyType;
use pyo3::{create_exception, PyErr, Python};
use shmkit_lib::Error;

use crate::heap::Kind;

create_exception!(
    shmkit,
    WrongAllocatorError,
    PyValueError,
    "The segment exists but was made for another allocator kind or layout."
);

create_exception!(
    shmkit,
    CorruptSegmentError,
    PyValueError,
    "The bytes at that name are not an intact shmkit segment, or a structure in it is damaged."
);

create_exception!(
    shmkit,
    NeedsRecoveryError,
    CorruptSegmentError,
    "The segment holds what processes killed mid-operation left (their caches, half-done blocks); recover() mends it. Nothing is corrupt."
);

create_exception!(
    shmkit,
    SegmentInUseError,
    PyRuntimeError,
    "Other processes still map the segment, so it cannot be repaired now (pass force=True once they are stopped)."
);

/// Why a call was refused.
#[derive(Debug)]
pub enum Fault {
    /// An error of the library.
    Lib(Error),
    /// `offset` does not start a live block of this heap.
    NotABlock { offset: u64 },
    /// `len` bytes at `offset` pass the end of its `block`-byte block.
    PastBlock { offset: u64, len: u64, block: u64 },
    /// The block at `offset` (0: the whole heap) has live views here.
    HasViews { offset: u64, views: usize },
    /// An argument out of range.
    BadArgument(String),
    /// The heap is attached read-only.
    ReadOnly,
    /// A lock is held elsewhere and the caller asked not to wait.
    WouldBlock,
    /// Calls of this process on the segment are waiting for its lock.
    Busy(usize),
    /// The segment was made by another Python class.
    WrongClass { expected: Kind, found: Kind },
}

impl From<Error> for Fault {
    fn from(err: Error) -> Fault {
        match err {
            Error::WouldBlock { .. } => Fault::WouldBlock,
            other => Fault::Lib(other),
        }
    }
}

impl Fault {
    pub fn into_py(self, py: Python<'_>) -> PyErr {
        match self {
            Fault::Lib(err) => lib_to_py(err),
            Fault::NotABlock { offset } => PyValueError::new_err(format!(
                "offset {offset} is not the start of a live block (never allocated here, \
                 already freed, or inside another block)"
            )),
            Fault::PastBlock { offset, len, block } => PyValueError::new_err(format!(
                "{len} bytes at offset {offset} pass the end of its {block}-byte block"
            )),
            Fault::HasViews { offset: 0, views } => PyBufferError::new_err(format!(
                "{views} views of blocks are alive in this process; release them \
                 (del, memoryview.release()) or pass force=True"
            )),
            Fault::HasViews { offset, views } => PyBufferError::new_err(format!(
                "the block at offset {offset} has {views} live view(s) in this process; \
                 release them (del, memoryview.release()) or pass force=True"
            )),
            Fault::BadArgument(message) => PyValueError::new_err(message),
            Fault::ReadOnly => {
                let message = "the segment is attached read-only";
                let unsupported = py
                    .import("io")
                    .and_then(|io| io.getattr("UnsupportedOperation"))
                    .map(|class| class.cast_into::<PyType>());
                match unsupported {
                    Ok(Ok(class)) => PyErr::from_type(class, message),
                    _ => PyValueError::new_err(message),
                }
            }
            Fault::WouldBlock => PyRuntimeError::new_err("a lock is held elsewhere"),
            Fault::Busy(calls) => SegmentInUseError::new_err(format!(
                "{calls} call(s) of this process on the segment are waiting for its lock; \
                 recover once they are done"
            )),
            Fault::WrongClass { expected, found } => WrongAllocatorError::new_err(format!(
                "the segment was made by {}, not {}",
                found.class_name(),
                expected.class_name()
            )),
        }
    }
}

/// Maps a library error onto the closest Python exception, keeping its
/// message.
pub fn lib_to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::NotFound { .. } => PyFileNotFoundError::new_err(message),
        Error::AlreadyExists { .. } => PyFileExistsError::new_err(message),
        Error::PermissionDenied { .. } => PyPermissionError::new_err(message),
        Error::WrongAllocator { .. } | Error::WrongAllocatorParams { .. } => {
            WrongAllocatorError::new_err(message)
        }
        Error::NeedsRecovery { .. } => NeedsRecoveryError::new_err(message),
        Error::NotShmkit { .. }
        | Error::UnsupportedVersion { .. }
        | Error::CorruptHeader { .. }
        | Error::CorruptData { .. }
        | Error::Truncated { .. } => CorruptSegmentError::new_err(message),
        Error::OutOfMemory { .. } | Error::NoSpace { .. } => PyMemoryError::new_err(message),
        Error::LockTimeout { .. } => PyTimeoutError::new_err(message),
        Error::Unsupported(_) => PyNotImplementedError::new_err(message),
        Error::InUse { .. } => SegmentInUseError::new_err(message),
        Error::Io { .. }
        | Error::CreatorDied { .. }
        | Error::CreationFailed { .. }
        | Error::NotReady { .. } => PyOSError::new_err(message),
        _ => PyValueError::new_err(message),
    }
}
