//! Anonymous memory files (`memfd_create`): shared with children by fork or by
//! passing the descriptor.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::error::{Error, Result};

/// Creates an anonymous file; `name` only labels it in `/proc/*/fd`.
pub(crate) fn create_memfd(name: &str) -> Result<OwnedFd> {
    let c_name = CString::new(name).map_err(|_| Error::InvalidName {
        name: name.to_owned(),
        reason: "contains a NUL byte",
    })?;
    // SAFETY: `c_name` is a valid NUL-terminated string for the call.
    let fd = unsafe { libc::memfd_create(c_name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(Error::last_os(format!("memfd_create `{name}`")));
    }
    // SAFETY: `fd` was just returned by `memfd_create` and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
