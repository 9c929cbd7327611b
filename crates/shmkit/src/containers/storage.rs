//! The storage block behind every container of this module: allocating
//! it, and checking a container's recorded offset, segment and size against
//! the allocator before any element is touched.

use std::mem::size_of;
use std::ptr::NonNull;

use crate::alloc::{MemContext, ShmAllocator};
use crate::error::{Error, Result};
use crate::ptr::SegmentId;

/// The `segment` field of a container that has not allocated yet (no
/// segment has id 0).
pub(super) const UNBOUND: u64 = 0;

/// A container's record of its storage block, as read from the container's
/// (untrusted) fields.
#[derive(Clone, Copy)]
pub(super) struct Storage {
    /// Which container, for error messages (`"vector"`, `"hash map"`...).
    pub what: &'static str,
    /// The recorded segment id, or [`UNBOUND`].
    pub segment: u64,
    /// The recorded block offset (not null).
    pub offset: u64,
}

impl Storage {
    /// Decodes the block through `alloc` and checks everything the container
    /// is about to rely on: the allocator serves the recorded segment, the
    /// offset names a live block of at least `bytes` bytes, aligned to
    /// `align`, and the block does not contain the container `owner` itself
    /// (which would let a `&mut` to the elements alias the container).
    pub fn resolve<A, O>(
        self,
        alloc: &A,
        bytes: usize,
        align: usize,
        owner: &O,
    ) -> Result<NonNull<u8>>
    where
        A: ShmAllocator + ?Sized,
    {
        let full = alloc
            .full_ptr(self.offset)
            .map_err(|err| self.not_live(alloc, err))?;
        check_segment(self.segment, full.segment_id())?;
        let usable = alloc
            .usable_size(self.offset)
            .map_err(|err| self.not_live(alloc, err))?;
        if usable < bytes {
            return Err(Error::corrupt_data(
                self.what,
                format!(
                    "its storage block at offset {:#x} has {usable} usable bytes, {bytes} are recorded",
                    self.offset
                ),
            ));
        }
        let start = full.local().as_ptr() as usize;
        if start % align.max(1) != 0 {
            return Err(Error::corrupt_data(
                self.what,
                format!(
                    "its storage block at offset {:#x} is not aligned to {align}",
                    self.offset
                ),
            ));
        }
        let owner_start = owner as *const O as usize;
        let owner_end = owner_start.saturating_add(size_of::<O>());
        if owner_start < start.saturating_add(bytes) && start < owner_end {
            return Err(Error::corrupt_data(
                self.what,
                format!(
                    "its storage block at offset {:#x} contains the {} itself",
                    self.offset, self.what
                ),
            ));
        }
        Ok(full.local())
    }

    /// The error for a recorded offset that the allocator does not know as a
    /// live block: `ForeignPointer` when the allocator serves another segment
    /// than the recorded one, corrupt data otherwise.
    fn not_live<A: ShmAllocator + ?Sized>(self, alloc: &A, err: Error) -> Error {
        if self.segment != UNBOUND {
            if let Some(id) = allocator_segment(alloc) {
                if id.0 != self.segment {
                    return Error::ForeignPointer;
                }
            }
        }
        Error::corrupt_data(
            self.what,
            format!(
                "its storage offset {:#x} is not a live block of this allocator ({err})",
                self.offset
            ),
        )
    }
}

/// Refuses a block of another segment than the one recorded.
pub(super) fn check_segment(recorded: u64, found: SegmentId) -> Result<()> {
    if recorded != UNBOUND && recorded != found.0 {
        return Err(Error::ForeignPointer);
    }
    Ok(())
}

/// The segment `alloc` serves, when it has one.
fn allocator_segment<A: ShmAllocator + ?Sized>(alloc: &A) -> Option<SegmentId> {
    alloc.backing_segment().map(|segment| segment.id())
}

/// A block fresh from the allocator.
pub(super) struct NewBlock {
    /// Its offset.
    pub offset: u64,
    /// Its address in this process.
    pub ptr: NonNull<u8>,
    /// The segment it belongs to.
    pub segment: u64,
}

/// Allocates `bytes` (at least one) aligned to `align` for a container whose
/// recorded segment is `segment`; a block of another segment is given back
/// and refused with `ForeignPointer`.
pub(super) fn allocate_block<A: ShmAllocator + ?Sized>(
    alloc: &A,
    segment: u64,
    bytes: usize,
    align: usize,
) -> Result<NewBlock> {
    let ctx = MemContext::default();
    let offset = alloc.allocate_offset(&ctx, bytes.max(1), align)?;
    let checked = alloc.full_ptr(offset).and_then(|full| {
        check_segment(segment, full.segment_id())?;
        if full.local().as_ptr() as usize % align.max(1) != 0 {
            return Err(Error::InvalidAlignment {
                align,
                max: 1 << (full.local().as_ptr() as usize).trailing_zeros(),
            });
        }
        Ok(full)
    });
    match checked {
        Ok(full) => Ok(NewBlock {
            offset,
            ptr: full.local(),
            segment: full.segment_id().0,
        }),
        Err(err) => {
            // SAFETY: the fresh block never left this function.
            let _ = unsafe { alloc.free_offset(&ctx, offset) };
            Err(err)
        }
    }
}

/// Frees a container's block.
/// Called between recording a container's new storage (or none) and
/// freeing the old block: the record must be in memory first, so that a
/// process killed at any instruction leaves a container that names a live
/// block (at worst the old block stays allocated, unnamed), never a freed
/// one that someone else may get next. The fields are plain memory behind
/// `&mut self`, which the compiler may otherwise write after the free.
#[inline]
pub(super) fn recorded_before_free() {
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
}

/// Frees a block a container owns.
///
/// # Safety
///
/// The calling container owns the block, no longer records it, and is
/// held by `&mut self` or by value, so no borrow it handed out into the
/// block is alive.
pub(super) unsafe fn free_block<A: ShmAllocator + ?Sized>(alloc: &A, offset: u64) -> Result<()> {
    // SAFETY: forwarded from the caller.
    unsafe { alloc.free_offset(&MemContext::default(), offset) }
}

/// A count recorded in shared memory, as a `usize`.
pub(super) fn recorded_count(what: &'static str, field: &str, value: u64) -> Result<usize> {
    usize::try_from(value).map_err(|_| {
        Error::corrupt_data(what, format!("its {field} {value} does not fit in memory"))
    })
}

/// The error for an index past the end.
pub(super) fn index_error(index: usize, len: usize) -> Error {
    Error::IndexOutOfRange { index, len }
}
