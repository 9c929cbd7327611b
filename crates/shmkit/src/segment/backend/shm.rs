//! POSIX shared memory objects (`shm_open`), the default backend.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};

use super::{open_error, Access};
use crate::error::{Error, Result};

/// Checks a POSIX shared-memory name and returns it in `/name` form.
///
/// A leading `/` is optional; no other `/` is allowed, nor `.`, `..`, an empty
/// name, a NUL byte or more than 255 bytes.
pub(crate) fn shm_name(name: &str) -> Result<CString> {
    let bare = name.strip_prefix('/').unwrap_or(name);
    let reason = if bare.is_empty() {
        Some("is empty")
    } else if bare.contains('/') {
        Some("contains `/`")
    } else if bare == "." || bare == ".." {
        Some("is `.` or `..`")
    } else if bare.len() > 255 {
        Some("is longer than 255 bytes")
    } else if bare.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    };
    if let Some(reason) = reason {
        return Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        });
    }
    CString::new(format!("/{bare}")).map_err(|_| Error::InvalidName {
        name: name.to_owned(),
        reason: "contains a NUL byte",
    })
}

/// Creates a new object; fails with `AlreadyExists` if the name is taken.
pub(crate) fn create_shm(name: &str, mode: u32) -> Result<OwnedFd> {
    let c_name = shm_name(name)?;
    open(
        name,
        &c_name,
        libc::O_CREAT | libc::O_EXCL | libc::O_RDWR,
        mode,
    )
}

/// Opens an existing object with the access asked for.
pub(crate) fn open_shm(name: &str, access: Access) -> Result<OwnedFd> {
    let c_name = shm_name(name)?;
    open(name, &c_name, access.open_flags(), 0)
}

fn open(name: &str, c_name: &CString, flags: i32, mode: u32) -> Result<OwnedFd> {
    // SAFETY: `c_name` is a valid NUL-terminated string for the call.
    let fd = unsafe {
        libc::shm_open(
            c_name.as_ptr(),
            flags | libc::O_CLOEXEC | libc::O_NOFOLLOW,
            mode as libc::mode_t,
        )
    };
    if fd < 0 {
        return Err(open_error(
            std::io::Error::last_os_error(),
            name,
            "opening shared memory",
        ));
    }
    // SAFETY: `fd` was just returned by `shm_open` and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Removes the name. Processes that have the segment mapped keep using it.
pub(crate) fn unlink_shm(name: &str) -> Result<()> {
    let c_name = shm_name(name)?;
    // SAFETY: `c_name` is a valid NUL-terminated string.
    if unsafe { libc::shm_unlink(c_name.as_ptr()) } != 0 {
        return Err(open_error(
            std::io::Error::last_os_error(),
            name,
            "unlinking shared memory",
        ));
    }
    Ok(())
}
