//! Random bytes from the kernel (`getrandom`).

use std::io;

/// Fills `bytes` from the kernel's random pool, retrying on `EINTR`. With
/// `wait_for_entropy` false, an early-boot pool not yet initialized gives
/// `EAGAIN` instead of blocking.
pub(crate) fn fill(bytes: &mut [u8], wait_for_entropy: bool) -> io::Result<()> {
    let flags = if wait_for_entropy {
        0
    } else {
        libc::GRND_NONBLOCK
    };
    let mut filled = 0;
    while filled < bytes.len() {
        let rest = &mut bytes[filled..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), flags) };
        if n >= 0 {
            filled += n as usize;
            continue;
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
    Ok(())
}
