//! The page size and the kernel's memory placement call.

use std::io;

/// The system page size (4096 if the system will not say).
pub(crate) fn page_size() -> u64 {
    // SAFETY: `sysconf` has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// `bytes` rounded up to a whole number of pages (saturating).
pub(crate) fn round_to_page(bytes: u64) -> u64 {
    let page = page_size();
    bytes.div_ceil(page).saturating_mul(page)
}

/// Move pages the calling process alone maps to the new policy's node.
const MPOL_MF_MOVE: libc::c_uint = 1 << 1;

/// `mbind(start, span, MPOL_BIND, mask, MPOL_MF_MOVE)`: bind the pages of a
/// page-aligned range to the nodes whose bits `mask` sets. `ENOSYS` (a
/// kernel without NUMA support) comes back as the error it is.
pub(crate) fn bind_pages(start: usize, span: usize, mask: &[libc::c_ulong]) -> io::Result<()> {
    // The kernel reads one bit fewer than `maxnode` says (a historic quirk
    // that every caller works around), so pass the mask's bits plus one.
    let max_node = mask.len() as libc::c_ulong * libc::c_ulong::from(libc::c_ulong::BITS) + 1;
    // SAFETY: `mbind` reads `mask`, which lives across the call and holds
    // `max_node - 1` bits, and changes only the placement policy of the
    // pages in `start..start + span` (moving a page keeps its contents), so
    // no memory that Rust can see changes. A range that is not mapped is
    // refused with an error, not touched.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mbind,
            start,
            span,
            libc::MPOL_BIND,
            mask.as_ptr(),
            max_node,
            MPOL_MF_MOVE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
