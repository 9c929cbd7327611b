//! The allocation methods shared by linear allocators (bump, stack) and
//! bump scopes: raw blocks, typed arrays, placed values, aligned helpers.

use crate::error::{Error, Result};
use crate::ptr::{FullPtr, Offset, ShmSafe};
use crate::segment::Segment;

/// A cache line on the machines shmkit targets.
pub const CACHE_LINE: usize = 64;

/// The widest SIMD register of the target (AVX-512 on x86-64, NEON/SVE
/// granule elsewhere), so vector loads of a block never split a register.
#[cfg(target_arch = "x86_64")]
pub const SIMD_ALIGN: usize = 64;
/// The widest SIMD register of the target (AVX-512 on x86-64, NEON/SVE
/// granule elsewhere), so vector loads of a block never split a register.
#[cfg(not(target_arch = "x86_64"))]
pub const SIMD_ALIGN: usize = 16;

/// Allocation by carving blocks from a segment: everything here is provided
/// on top of one carving primitive that shmkit's linear allocators implement.
///
/// **Alignment.** `align == 0` is treated as 1. Alignment is a property of
/// the *offset*, so it means the same in every process. For a power of two up
/// to [`Segment::max_align`] (a page for mapped segments) the local address is
/// aligned too; a larger power of two is refused with `InvalidAlignment`. A
/// non-power-of-two alignment (24, say) makes the offset a multiple of it; the
/// address then honours its largest power-of-two factor.
///
/// **Size 0.** A zero-size request is served as a one-byte request, so every
/// successful allocation has an offset of its own.
///
/// The trait is sealed: only shmkit's allocators implement it, because the
/// provided methods write into the blocks it returns and rely on every block
/// being fresh, in bounds and owned by the caller alone.
pub trait LinearAlloc: sealed::Carve {
    /// The segment blocks are carved from.
    fn segment(&self) -> &Segment {
        self.carve_segment()
    }

    /// Allocates `size` bytes aligned to `align`.
    #[inline]
    fn alloc(&self, size: usize, align: usize) -> Result<FullPtr<u8>> {
        let offset = self.alloc_handle(size, align)?;
        self.segment().full_ptr_from_offset(offset)
    }

    /// Allocates `size` bytes aligned to `align` and returns only the offset.
    #[inline]
    fn alloc_handle(&self, size: usize, align: usize) -> Result<Offset<u8>> {
        let align = normalize_align(align, self.segment().max_align())?;
        let size = (size as u64).max(1);
        self.carve(size, align).map(Offset::from_raw)
    }

    /// Allocates `size` bytes on a cache line of their own (64-byte aligned).
    fn alloc_cache_aligned(&self, size: usize) -> Result<FullPtr<u8>> {
        self.alloc(size, CACHE_LINE)
    }

    /// Allocates `size` bytes aligned for the target's widest SIMD loads.
    fn alloc_simd_aligned(&self, size: usize) -> Result<FullPtr<u8>> {
        self.alloc(size, SIMD_ALIGN)
    }

    /// Allocates room for `count` values of `T` (contents are whatever the
    /// bytes hold, which `T: ShmSafe` accepts). Overflow is an error.
    #[inline]
    fn allocate<T: ShmSafe>(&self, count: usize) -> Result<FullPtr<T>> {
        let offset = self.allocate_handle::<T>(count)?;
        self.segment().full_ptr_from_offset(offset)
    }

    /// Like [`allocate`](Self::allocate), returning only the offset.
    #[inline]
    fn allocate_handle<T: ShmSafe>(&self, count: usize) -> Result<Offset<T>> {
        let size = std::mem::size_of::<T>().checked_mul(count).ok_or_else(|| {
            Error::invalid_size(format!(
                "{count} x {} bytes overflows",
                std::mem::size_of::<T>()
            ))
        })?;
        self.alloc_handle(size, std::mem::align_of::<T>())
            .map(Offset::cast)
    }

    /// Places `value` in the segment and returns its pointer.
    #[inline]
    fn make<T: ShmSafe>(&self, value: T) -> Result<FullPtr<T>> {
        let offset = self.make_handle(value)?;
        self.segment().full_ptr_from_offset(offset)
    }

    /// Places `value` in the segment and returns its offset.
    #[inline]
    fn make_handle<T: ShmSafe>(&self, value: T) -> Result<Offset<T>> {
        let offset = self.allocate_handle::<T>(1)?;
        let ptr = self.segment().resolve(offset)?;
        // SAFETY: `resolve` checked that a whole, aligned `T` fits at `ptr`;
        // `carve` (implemented only inside shmkit) returns blocks that are
        // fresh and handed to this call alone.
        unsafe { ptr.as_ptr().write(value) };
        Ok(offset)
    }
}

pub(crate) mod sealed {
    use crate::error::Result;
    use crate::segment::Segment;

    /// What a linear allocator must provide; not nameable outside shmkit.
    pub trait Carve {
        /// The segment blocks are carved from.
        fn carve_segment(&self) -> &Segment;

        /// Carves `size` (non-zero) bytes aligned to `align` (non-zero,
        /// checked by `normalize_align`) and returns the block's offset. The
        /// block must lie in the data area, inside the segment, and belong to
        /// no one else.
        fn carve(&self, size: u64, align: u64) -> Result<u64>;
    }
}

/// Checks and normalizes an alignment request (see [`LinearAlloc`]).
#[inline(always)]
pub(crate) fn normalize_align(align: usize, max_align: usize) -> Result<u64> {
    let align = align.max(1);
    // The largest power of two dividing `align`: what addresses must honour.
    let power_of_two_part = align & align.wrapping_neg();
    if power_of_two_part > max_align {
        return Err(unsupported_alignment(align, max_align));
    }
    Ok(align as u64)
}

#[cold]
#[inline(never)]
fn unsupported_alignment(align: usize, max: usize) -> Error {
    Error::InvalidAlignment { align, max }
}
