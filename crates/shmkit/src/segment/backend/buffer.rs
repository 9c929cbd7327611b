//! A caller's buffer as a segment (`linear_allocator(buffer, size)` style).

use crate::error::{Error, Result};

/// Alignment of a segment placed in a caller's buffer.
pub(crate) const BUFFER_ALIGN: usize = 128;
const _: () = assert!(BUFFER_ALIGN >= std::mem::align_of::<super::super::header::Header>());

/// The 128-byte-aligned part of `[ptr, ptr + len)`: (start, usable length).
pub(crate) fn align_buffer(ptr: *mut u8, len: usize) -> Result<(*mut u8, usize)> {
    let skip = ptr.align_offset(BUFFER_ALIGN);
    if skip >= len {
        return Err(Error::invalid_size(format!(
            "a buffer of {len} bytes has no {BUFFER_ALIGN}-byte aligned room"
        )));
    }
    Ok((ptr.wrapping_add(skip), len - skip))
}
