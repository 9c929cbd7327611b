//! `MemoryResource`: one object-safe trait over every allocator, so code can
//! take `&dyn MemoryResource` and work with whichever the caller chose.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr::NonNull;

use super::{MemContext, ShmAllocator};
use crate::error::{Error, Result};

/// An allocator seen through raw blocks and layouts, callable through
/// `&dyn MemoryResource` (the trait is dyn-compatible).
///
/// Every [`ShmAllocator`] is one (the layout's alignment is honoured, and a
/// bad free is reported as the allocator reports it), as are the process
/// [`Arena`](crate::local::arena::Arena), [`System`] and the trackers of
/// [`crate::local::tracker`]. `dyn MemoryResource` is itself an
/// `allocator_api2` allocator, so `allocator_api2::vec::Vec::new_in(resource)`
/// works with a `&dyn MemoryResource`.
///
/// ```
/// use std::alloc::Layout;
/// use shmkit::alloc::MemoryResource;
/// use shmkit::local::arena::Arena;
/// use shmkit::MallocAllocator;
///
/// fn fill(resource: &dyn MemoryResource, byte: u8) -> shmkit::Result<u8> {
///     let layout = Layout::from_size_align(256, 16).unwrap();
///     let block = resource.allocate_layout(layout)?;
///     // SAFETY: a fresh block of 256 bytes.
///     let last = unsafe {
///         block.as_ptr().write_bytes(byte, 256);
///         *block.as_ptr().add(255)
///     };
///     // SAFETY: the block came from this resource with this layout.
///     unsafe { resource.deallocate_layout(block, layout)? };
///     Ok(last)
/// }
///
/// assert_eq!(fill(&MallocAllocator::new(), 7)?, 7);
/// let arena: Arena = Arena::new();
/// assert_eq!(fill(&arena, 9)?, 9);
/// # Ok::<(), shmkit::Error>(())
/// ```
pub trait MemoryResource {
    /// Allocates a block of at least `layout.size()` bytes (a zero-size
    /// layout still gets a distinct block) aligned to `layout.align()`.
    fn allocate_layout(&self, layout: Layout) -> Result<NonNull<u8>>;

    /// Gives a block back. Resources that can tell (every [`ShmAllocator`])
    /// refuse a block that is not a live one of theirs with an error and
    /// change nothing.
    ///
    /// # Safety
    ///
    /// `ptr` must come from [`allocate_layout`](Self::allocate_layout) of this resource
    /// with this `layout`, and must not be used afterwards. (Resources that
    /// check turn a violation into an error; the others cannot.)
    unsafe fn deallocate_layout(&self, ptr: NonNull<u8>, layout: Layout) -> Result<()>;

    /// A short name for diagnostics.
    fn name(&self) -> &'static str;

    /// Whether blocks from `other` may be given back to `self` (they are the
    /// same resource). The default compares addresses.
    fn is_equal(&self, other: &dyn MemoryResource) -> bool {
        std::ptr::addr_eq(std::ptr::from_ref(self), std::ptr::from_ref(other))
    }
}

impl<A: ShmAllocator + ?Sized> MemoryResource for A {
    fn allocate_layout(&self, layout: Layout) -> Result<NonNull<u8>> {
        let offset =
            self.allocate_offset(&MemContext::default(), layout.size().max(1), layout.align())?;
        Ok(self.full_ptr(offset)?.local())
    }

    unsafe fn deallocate_layout(&self, ptr: NonNull<u8>, _layout: Layout) -> Result<()> {
        let offset = self.offset_of_local(ptr)?;
        // SAFETY: the caller gives the block up (this method's contract).
        unsafe { self.free_offset(&MemContext::default(), offset) }
    }

    fn name(&self) -> &'static str {
        self.kind().name()
    }
}

impl MemoryResource for System {
    fn allocate_layout(&self, layout: Layout) -> Result<NonNull<u8>> {
        let layout = nonzero(layout);
        // SAFETY: the layout has a non-zero size.
        NonNull::new(unsafe { GlobalAlloc::alloc(self, layout) }).ok_or(Error::OutOfMemory {
            requested: layout.size() as u64,
            available: 0,
        })
    }

    unsafe fn deallocate_layout(&self, ptr: NonNull<u8>, layout: Layout) -> Result<()> {
        // SAFETY: the caller guarantees `ptr` came from `allocate` with this
        // layout, which allocated with the same non-zero layout.
        unsafe { GlobalAlloc::dealloc(self, ptr.as_ptr(), nonzero(layout)) };
        Ok(())
    }

    fn name(&self) -> &'static str {
        "system"
    }
}

/// The layout actually requested for `layout`: at least one byte.
pub(crate) fn nonzero(layout: Layout) -> Layout {
    Layout::from_size_align(layout.size().max(1), layout.align())
        .expect("growing a valid layout's size from 0 to 1 keeps it valid")
}

/// Implements `allocator_api2::alloc::Allocator` for a type that is a
/// [`MemoryResource`], so `allocator_api2::vec::Vec`, `Box` and
/// `hashbrown::HashMap` can use it inside one process. Such containers hold
/// local addresses: they are not shareable across processes.
///
/// `impl_allocator_api2!(FreeListAllocator)`, or with generics
/// `impl_allocator_api2!([A: ShmAllocator] Tracked<A>)`.
macro_rules! impl_allocator_api2 {
    ([$($generics:tt)*] $t:ty) => {
        // SAFETY: blocks come from `MemoryResource::allocate_layout`, which
        // hands out distinct blocks of at least the layout's size and
        // alignment that stay valid until given back; `deallocate` gives
        // back exactly such a block.
        unsafe impl<$($generics)*> allocator_api2::alloc::Allocator for $t {
            fn allocate(
                &self,
                layout: std::alloc::Layout,
            ) -> std::result::Result<std::ptr::NonNull<[u8]>, allocator_api2::alloc::AllocError>
            {
                let block = $crate::alloc::MemoryResource::allocate_layout(self, layout)
                    .map_err(|_| allocator_api2::alloc::AllocError)?;
                Ok(std::ptr::NonNull::slice_from_raw_parts(block, layout.size()))
            }

            unsafe fn deallocate(&self, ptr: std::ptr::NonNull<u8>, layout: std::alloc::Layout) {
                // SAFETY: forwarded from the caller. A resource that detects
                // a bad free has changed nothing; the allocator API cannot
                // report it.
                let _ = unsafe { $crate::alloc::MemoryResource::deallocate_layout(self, ptr, layout) };
            }
        }
    };
    ($t:ty) => {
        $crate::alloc::memory_resource::impl_allocator_api2!([] $t);
    };
}
pub(crate) use impl_allocator_api2;

impl_allocator_api2!(dyn MemoryResource + '_);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FreeListAllocator, SegmentAllocator, SegmentOptions};

    #[test]
    fn a_shared_allocator_refuses_a_double_free_through_the_trait() {
        let free_list =
            FreeListAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        let resource: &dyn MemoryResource = &free_list;
        let layout = Layout::from_size_align(100, 64).unwrap();
        let block = resource.allocate_layout(layout).unwrap();
        assert_eq!(block.as_ptr().addr() % 64, 0);
        // SAFETY: the block came from this resource.
        unsafe { resource.deallocate_layout(block, layout) }.unwrap();
        // SAFETY: deliberately wrong: the free list detects it.
        let again = unsafe { resource.deallocate_layout(block, layout) };
        assert!(matches!(again, Err(Error::InvalidFree { .. })), "{again:?}");
        assert_eq!(resource.name(), "free-list");
    }

    #[test]
    fn resources_are_equal_only_to_themselves() {
        let a = crate::MallocAllocator::new();
        let b = crate::MallocAllocator::new();
        let (a, b): (&dyn MemoryResource, &dyn MemoryResource) = (&a, &b);
        assert!(a.is_equal(a));
        assert!(!a.is_equal(b));
    }

    #[test]
    fn the_system_resource_serves_zero_size_and_wide_alignment() {
        for layout in [
            Layout::from_size_align(0, 1).unwrap(),
            Layout::from_size_align(24, 4096).unwrap(),
        ] {
            let block = System.allocate_layout(layout).unwrap();
            assert_eq!(block.as_ptr().addr() % layout.align(), 0);
            // SAFETY: allocated just above with this layout.
            unsafe { System.deallocate_layout(block, layout) }.unwrap();
        }
    }
}
