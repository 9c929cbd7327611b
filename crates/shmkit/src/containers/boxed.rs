//! `ShmBox<T>`: one value in its own block of a segment.

use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;

use crate::alloc::ShmAllocator;
use crate::error::{Error, Result};
use crate::ptr::{Offset, SegmentId, ShmPtr, ShmSafe};

use super::storage::{allocate_block, free_block, Storage, UNBOUND};

/// One value of type `T` in its own block of a segment; the shared-memory
/// counterpart of `Box<T>`.
///
/// The box itself is 16 bytes (block offset and segment id), so it can be
/// stored in the segment, inside another container or under a root, and
/// opened from any process that attaches the segment. Reading it takes the
/// segment's allocator and checks that the offset is a live block of that
/// allocator, large and aligned enough for a `T` (an allocator of another
/// segment is refused with [`Error::ForeignPointer`]).
///
/// A `ShmBox` has no `Drop`: call [`free`](Self::free) or
/// [`into_inner`](Self::into_inner) to return the block; forgetting both
/// leaks it, like a leaked `Box`.
///
/// ```
/// use shmkit::containers::ShmBox;
/// use shmkit::{SegmentAllocator, SegmentOptions, SizeClassAllocator};
///
/// let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let mut counter = ShmBox::new_in(&heap, 41u64)?;
/// *counter.get_mut(&heap)? += 1;
/// assert_eq!(*counter.get(&heap)?, 42);
/// assert_eq!(counter.into_inner(&heap)?, 42);
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct ShmBox<T> {
    /// Offset of the value's block.
    offset: u64,
    /// Id of the segment the block came from.
    segment: u64,
    _type: PhantomData<T>,
}

// SAFETY: `repr(C)` of two `u64`s and a zero-sized marker: no address, no
// padding, every bit pattern is a value (each use checks the fields).
unsafe impl<T: ShmSafe> ShmSafe for ShmBox<T> {}

impl<T: ShmSafe> ShmBox<T> {
    const WHAT: &'static str = "box";

    /// Moves `value` into a new block from `alloc`.
    pub fn new_in<A: ShmAllocator + ?Sized>(alloc: &A, value: T) -> Result<Self> {
        let block = allocate_block(alloc, UNBOUND, size_of::<T>(), align_of::<T>())?;
        // SAFETY: the block is fresh, ours alone, and at least `size_of::<T>()`
        // bytes aligned for `T`.
        unsafe { block.ptr.cast::<T>().as_ptr().write(value) };
        Ok(ShmBox {
            offset: block.offset,
            segment: block.segment,
            _type: PhantomData,
        })
    }

    /// Checks the fields against `alloc` and returns the value's address.
    fn resolve<A: ShmAllocator + ?Sized>(&self, alloc: &A) -> Result<NonNull<T>> {
        if self.offset == 0 {
            return Err(Error::corrupt_data(Self::WHAT, "its offset is null"));
        }
        let storage = Storage {
            what: Self::WHAT,
            segment: self.segment,
            offset: self.offset,
        };
        let ptr = storage.resolve(alloc, size_of::<T>(), align_of::<T>(), self)?;
        Ok(ptr.cast())
    }

    /// The value.
    pub fn get<'a, A: ShmAllocator + ?Sized>(&'a self, alloc: &'a A) -> Result<&'a T> {
        let ptr = self.resolve(alloc)?;
        // SAFETY: `resolve` checked a live, aligned block of at least one `T`
        // that does not contain `self`; every bit pattern is a `T`
        // (`T: ShmSafe`). The borrow of `self` keeps this API from changing
        // or freeing it meanwhile, and any other free of the block is
        // `unsafe` and promises no borrow into it lives (`free_offset`).
        Ok(unsafe { ptr.as_ref() })
    }

    /// The value, mutably.
    pub fn get_mut<'a, A: ShmAllocator + ?Sized>(&'a mut self, alloc: &'a A) -> Result<&'a mut T> {
        let mut ptr = self.resolve(alloc)?;
        // SAFETY: as in `get`; the exclusive borrow of `self` makes this the
        // only path to the value through this API.
        Ok(unsafe { ptr.as_mut() })
    }

    /// The offset of the value's block, to store or send elsewhere.
    pub fn offset(&self) -> Offset<T> {
        Offset::from_raw(self.offset)
    }

    /// The value's shared pointer (segment id and offset).
    pub fn shm_ptr(&self) -> ShmPtr<T> {
        ShmPtr::new(SegmentId(self.segment), self.offset())
    }

    /// Moves the value out and frees its block.
    pub fn into_inner<A: ShmAllocator + ?Sized>(self, alloc: &A) -> Result<T> {
        let ptr = self.resolve(alloc)?;
        // SAFETY: checked by `resolve`; the box is consumed, so the value is
        // moved out once and its block freed right after.
        let value = unsafe { ptr.as_ptr().read() };
        // SAFETY: the box owned the block and is consumed.
        unsafe { free_block(alloc, self.offset)? };
        Ok(value)
    }

    /// Drops the value and frees its block.
    pub fn free<A: ShmAllocator + ?Sized>(self, alloc: &A) -> Result<()> {
        let ptr = self.resolve(alloc)?;
        // SAFETY: checked by `resolve`; the box is consumed, so the value is
        // dropped once, before its block is freed.
        unsafe { std::ptr::drop_in_place(ptr.as_ptr()) };
        // SAFETY: the box owned the block and is consumed.
        unsafe { free_block(alloc, self.offset) }
    }
}

impl<T> fmt::Debug for ShmBox<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmBox")
            .field("offset", &Offset::<T>::from_raw(self.offset))
            .field("segment", &SegmentId(self.segment))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::vec::tests::{free_list, heap};
    use crate::containers::ShmVec;

    #[test]
    fn holds_reads_and_gives_back() {
        let heap = heap(1 << 20);
        let mut b = ShmBox::new_in(&heap, [1u64, 2, 3]).unwrap();
        assert!(!b.offset().is_null());
        assert_eq!(b.shm_ptr().offset, b.offset());
        b.get_mut(&heap).unwrap()[1] = 20;
        assert_eq!(b.get(&heap).unwrap(), &[1, 20, 3]);
        assert_eq!(b.into_inner(&heap).unwrap(), [1, 20, 3]);
        assert_eq!(heap.stats().live_allocations, 0);

        // A box of a vector: the inner storage is the caller's to free first.
        let mut nested = ShmBox::new_in(&heap, ShmVec::<u32>::new()).unwrap();
        nested.get_mut(&heap).unwrap().push(&heap, 5).unwrap();
        assert_eq!(nested.get(&heap).unwrap().as_slice(&heap).unwrap(), &[5]);
        nested.get_mut(&heap).unwrap().free(&heap).unwrap();
        nested.free(&heap).unwrap();
        assert_eq!(heap.stats().live_allocations, 0);

        let unit = ShmBox::new_in(&heap, [0u8; 0]).unwrap();
        assert_eq!(unit.get(&heap).unwrap(), &[0u8; 0]);
        unit.free(&heap).unwrap();
        assert_eq!(heap.stats().live_allocations, 0);
    }

    #[test]
    fn foreign_allocator_is_refused() {
        let (home, other) = (heap(1 << 20), heap(1 << 20));
        let b = ShmBox::new_in(&home, 7u32).unwrap();
        assert!(matches!(b.get(&other), Err(Error::ForeignPointer)));
        assert!(matches!(b.into_inner(&other), Err(Error::ForeignPointer)));
        assert_eq!(home.stats().live_allocations, 1);
        assert_eq!(other.stats().live_allocations, 0);

        let (a, z) = (free_list(1 << 20), free_list(1 << 20));
        let b = ShmBox::new_in(&a, 7u32).unwrap();
        assert!(matches!(b.get(&z), Err(Error::ForeignPointer)));
        b.free(&a).unwrap();
    }

    #[test]
    fn forged_fields_are_corrupt_data() {
        let heap = heap(1 << 20);
        let corrupt =
            |b: &ShmBox<u64>| matches!(b.get(&heap), Err(Error::CorruptData { what: "box", .. }));
        let small = ShmBox::new_in(&heap, 1u8).unwrap();
        // Offsets from other bits: null, far out, inside a block, a block too small.
        for offset in [0, u64::MAX - 3, small.offset + 1, small.offset] {
            let forged = ShmBox::<u64> {
                offset,
                segment: small.segment,
                _type: PhantomData,
            };
            // A 1-byte request gets a class of at least 8 bytes, so the small
            // block is big enough: only the first three are corrupt.
            assert_eq!(
                corrupt(&forged),
                offset != small.offset,
                "offset {offset:#x}"
            );
        }
        let tiny = ShmBox::<[u8; 64]> {
            offset: small.offset,
            segment: small.segment,
            _type: PhantomData,
        };
        assert!(matches!(tiny.get(&heap), Err(Error::CorruptData { .. })));

        // A box that points at its own block.
        let placed = heap.new_obj([0u64; 2]).unwrap();
        // SAFETY: a fresh 16-byte block, aligned for a box, ours alone.
        let own = unsafe { &mut *placed.as_ptr().cast::<ShmBox<u64>>() };
        own.offset = placed.offset().raw();
        own.segment = placed.segment_id().0;
        assert!(matches!(own.get_mut(&heap), Err(Error::CorruptData { .. })));

        small.free(&heap).unwrap();
    }

    #[test]
    fn double_free_is_refused() {
        let heap = free_list(1 << 20);
        let b = ShmBox::new_in(&heap, 3u64).unwrap();
        let copy = ShmBox::<u64> {
            offset: b.offset,
            segment: b.segment,
            _type: PhantomData,
        };
        b.free(&heap).unwrap();
        assert!(copy.free(&heap).is_err());
        heap.check().unwrap();
    }
}
