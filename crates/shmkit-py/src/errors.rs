//! shmkit errors as the Python exceptions a Python user expects.

use pyo3::exceptions::{
    PyFileExistsError, PyFileNotFoundError, PyMemoryError, PyNotImplementedError, PyOSError,
    PyPermissionError, PyValueError,
};
use pyo3::{create_exception, PyErr};
use shmkit_lib::Error;

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
    "The bytes at that name are not an intact shmkit segment."
);

/// Maps a library error onto the closest Python exception, keeping its
/// message.
pub fn to_py(err: Error) -> PyErr {
    let message = err.to_string();
    match err {
        Error::NotFound { .. } => PyFileNotFoundError::new_err(message),
        Error::AlreadyExists { .. } => PyFileExistsError::new_err(message),
        Error::PermissionDenied { .. } => PyPermissionError::new_err(message),
        Error::WrongAllocator { .. } | Error::WrongAllocatorParams { .. } => {
            WrongAllocatorError::new_err(message)
        }
        Error::NotShmkit { .. }
        | Error::UnsupportedVersion { .. }
        | Error::CorruptHeader { .. }
        | Error::Truncated { .. } => CorruptSegmentError::new_err(message),
        Error::OutOfMemory { .. } | Error::NoSpace { .. } => PyMemoryError::new_err(message),
        Error::Unsupported(_) => PyNotImplementedError::new_err(message),
        Error::Io { .. }
        | Error::CreatorDied { .. }
        | Error::CreationFailed { .. }
        | Error::NotReady { .. } => PyOSError::new_err(message),
        _ => PyValueError::new_err(message),
    }
}
