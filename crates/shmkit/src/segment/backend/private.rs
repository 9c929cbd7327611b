//! Private anonymous memory: a segment for one process (and its threads).

use std::ptr::NonNull;

use super::Mapping;
use crate::error::{Error, Result};

/// Maps `len` bytes of private, zero-filled memory. Pages are committed only
/// when touched, so a large maximum size costs address space, not memory.
pub(crate) fn map_private(len: u64) -> Result<Mapping> {
    let len = usize::try_from(len).map_err(|_| Error::invalid_size("segment too large"))?;
    // SAFETY: a fresh anonymous mapping chosen by the kernel cannot overlap
    // any existing Rust object.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(Error::last_os("mapping private memory"));
    }
    let base = NonNull::new(addr.cast()).ok_or_else(|| Error::last_os("mmap returned null"))?;
    // SAFETY: we own this fresh mapping; hand it to a `Mapping` that unmaps it.
    let mut mapping = unsafe { Mapping::borrowed(base, len) };
    mapping.owned = true;
    Ok(mapping)
}
