//! Memory-mapped files, on any file system (tmpfs, ext4, xfs, a DAX mount...).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{open_error, Access};
use crate::error::{Error, Result};

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::InvalidName {
        name: path.display().to_string(),
        reason: "contains a NUL byte",
    })
}

/// Creates a new file; refuses an existing path and a symbolic link.
pub(crate) fn create_file(path: &Path, mode: u32) -> Result<OwnedFd> {
    open(
        path,
        libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_NOFOLLOW,
        mode,
    )
}

/// Opens an existing file with the access asked for.
pub(crate) fn open_file(path: &Path, access: Access) -> Result<OwnedFd> {
    open(path, access.open_flags(), 0)
}

fn open(path: &Path, flags: i32, mode: u32) -> Result<OwnedFd> {
    let c_path = c_path(path)?;
    // SAFETY: `c_path` is a valid NUL-terminated string for the call.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(open_error(
            std::io::Error::last_os_error(),
            &path.display().to_string(),
            "opening file",
        ));
    }
    // SAFETY: `fd` was just returned by `open` and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
