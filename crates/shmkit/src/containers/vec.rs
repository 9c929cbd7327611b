//! `ShmVec<T>`: a growable array that lives in a segment.

use std::fmt;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;

use super::storage::{
    allocate_block, free_block, index_error, recorded_before_free, recorded_count, Storage, UNBOUND,
};
use crate::alloc::{MemContext, ShmAllocator};
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::ptr::{Offset, SegmentId, ShmSafe};

/// A growable array whose elements live in a segment; the shared-memory
/// counterpart of `Vec<T>`.
///
/// The `ShmVec` value itself is 32 bytes of plain numbers (storage offset,
/// length, capacity, segment id), so it can sit anywhere: on the stack, in a
/// block from [`new_obj`](crate::ShmAllocator::new_obj), under a named root,
/// or inside another container. Every operation that touches the elements
/// takes the segment's allocator, and checks the recorded fields against it
/// first (they may have been written by another process, or by a crashed
/// one): a length beyond the capacity, a capacity beyond the storage block,
/// an offset that is not a live block, or an allocator of another segment
/// ([`Error::ForeignPointer`]) is reported as an error, never read through.
///
/// A `ShmVec` has no `Drop`: it cannot know its allocator. Call
/// [`free`](Self::free) to drop the elements and return the storage;
/// forgetting it leaks the storage like a leaked `Box`. Elements that own
/// storage themselves (a `ShmVec<ShmString>`, say) must be freed first, one
/// by one, through [`as_mut_slice`](Self::as_mut_slice).
///
/// Not synchronized: see the [module documentation](crate::containers).
///
/// ```
/// use shmkit::containers::ShmVec;
/// use shmkit::{SegmentAllocator, SegmentOptions, ShmAllocator, SizeClassAllocator};
///
/// let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let mut squares = ShmVec::<u64>::new();
/// for i in 0..100 {
///     squares.push(&heap, i * i)?;
/// }
/// assert_eq!(squares.as_slice(&heap)?[12], 144);
///
/// // The vector can itself be placed in the segment, and found by offset.
/// let placed = heap.new_obj(squares)?;
/// // SAFETY: freshly placed, and no other process knows the offset yet.
/// let squares = unsafe { &mut *placed.as_ptr() };
/// assert_eq!(squares.pop(&heap)?, Some(99 * 99));
/// squares.free(&heap)?; // the elements' storage...
/// // SAFETY: `placed` came from `new_obj` and is not used again.
/// unsafe { heap.del_obj(placed)? }; // ...and the block holding the vector
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct ShmVec<T> {
    /// Offset of the storage block; 0 when there is none.
    storage: u64,
    /// Number of initialized elements.
    len: u64,
    /// Number of elements the storage block holds.
    capacity: u64,
    /// Id of the segment the storage came from, or [`UNBOUND`].
    segment: u64,
    _type: PhantomData<T>,
}

// SAFETY: `repr(C)` of four `u64`s and a zero-sized marker: no address, no
// padding, and every bit pattern is a value (each use checks the fields).
unsafe impl<T: ShmSafe> ShmSafe for ShmVec<T> {}

/// The checked view of a vector's fields.
struct Raw<T> {
    ptr: NonNull<T>,
    len: usize,
    cap: usize,
}

/// Bytes of `count` values of `T`, or `None` past what a slice may span.
fn array_bytes<T>(count: usize) -> Option<usize> {
    count
        .checked_mul(size_of::<T>())
        .filter(|&bytes| bytes <= isize::MAX as usize)
}

fn capacity_overflow() -> Error {
    Error::invalid_size("vector capacity overflows")
}

impl<T: ShmSafe> ShmVec<T> {
    const WHAT: &'static str = "vector";

    /// An empty vector; it allocates on the first push.
    pub const fn new() -> Self {
        ShmVec {
            storage: 0,
            len: 0,
            capacity: 0,
            segment: UNBOUND,
            _type: PhantomData,
        }
    }

    /// An empty vector with room for `capacity` elements.
    pub fn with_capacity<A: ShmAllocator + ?Sized>(alloc: &A, capacity: usize) -> Result<Self> {
        let mut vec = Self::new();
        if size_of::<T>() != 0 && capacity != 0 {
            let empty = Raw {
                ptr: NonNull::dangling(),
                len: 0,
                cap: 0,
            };
            vec.move_to(alloc, &empty, capacity)?;
        }
        Ok(vec)
    }

    /// The number of elements, as recorded (every access checks it).
    pub fn len(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }

    /// Whether the vector has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The number of elements the storage holds, as recorded
    /// (`usize::MAX` for zero-sized elements, which need no storage).
    pub fn capacity(&self) -> usize {
        if size_of::<T>() == 0 {
            return usize::MAX;
        }
        usize::try_from(self.capacity).unwrap_or(usize::MAX)
    }

    /// Checks the fields against `alloc` and returns the storage.
    fn raw<A: ShmAllocator + ?Sized>(&self, alloc: &A) -> Result<Raw<T>> {
        let len = recorded_count(Self::WHAT, "length", self.len)?;
        if size_of::<T>() == 0 {
            if self.storage != 0 {
                return Err(Error::corrupt_data(
                    Self::WHAT,
                    "a vector of zero-sized values records a storage block",
                ));
            }
            return Ok(Raw {
                ptr: NonNull::dangling(),
                len,
                cap: usize::MAX,
            });
        }
        let cap = recorded_count(Self::WHAT, "capacity", self.capacity)?;
        if self.storage == 0 {
            if len != 0 || cap != 0 {
                return Err(Error::corrupt_data(
                    Self::WHAT,
                    format!("no storage, yet length {len} and capacity {cap}"),
                ));
            }
            return Ok(Raw {
                ptr: NonNull::dangling(),
                len: 0,
                cap: 0,
            });
        }
        if len > cap {
            return Err(Error::corrupt_data(
                Self::WHAT,
                format!("length {len} exceeds capacity {cap}"),
            ));
        }
        let bytes = array_bytes::<T>(cap).ok_or_else(|| {
            Error::corrupt_data(
                Self::WHAT,
                format!("capacity {cap} x {} bytes overflows", size_of::<T>()),
            )
        })?;
        let storage = Storage {
            what: Self::WHAT,
            segment: self.segment,
            offset: self.storage,
        };
        let ptr = storage.resolve(alloc, bytes, align_of::<T>(), self)?;
        Ok(Raw {
            ptr: ptr.cast(),
            len,
            cap,
        })
    }

    /// Makes room for `additional` more elements past `raw.len`; returns the
    /// (possibly moved) storage. On error nothing changed.
    fn reserve_raw<A: ShmAllocator + ?Sized>(
        &mut self,
        alloc: &A,
        raw: &Raw<T>,
        additional: usize,
    ) -> Result<NonNull<T>> {
        let needed = raw
            .len
            .checked_add(additional)
            .ok_or_else(capacity_overflow)?;
        if needed <= raw.cap {
            return Ok(raw.ptr);
        }
        let minimum = match size_of::<T>() {
            1 => 8,
            2..=1024 => 4,
            _ => 1,
        };
        let doubled = needed.max(raw.cap.saturating_mul(2)).max(minimum);
        match self.move_to(alloc, raw, doubled) {
            // Doubling asks for more than needed; settle for what is needed
            // when only that fits.
            Err(Error::OutOfMemory { .. }) if doubled > needed => self.move_to(alloc, raw, needed),
            other => other,
        }
    }

    /// Gives the vector storage for exactly `new_cap` (>= `raw.len`)
    /// elements: in place when the allocator can, else in a new block that
    /// the elements are moved to. On error nothing changed.
    fn move_to<A: ShmAllocator + ?Sized>(
        &mut self,
        alloc: &A,
        raw: &Raw<T>,
        new_cap: usize,
    ) -> Result<NonNull<T>> {
        let bytes = array_bytes::<T>(new_cap).ok_or_else(capacity_overflow)?;
        let ctx = MemContext::default();
        // SAFETY: the vector owns its storage and `&mut self` outlives every
        // borrow it handed out; `new_cap` keeps every element.
        if self.storage != 0 && unsafe { alloc.resize_in_place(&ctx, self.storage, bytes)? } {
            self.capacity = new_cap as u64;
            return Ok(raw.ptr);
        }
        let block = allocate_block(alloc, self.segment, bytes, align_of::<T>())?;
        let new = block.ptr.cast::<T>();
        if self.storage != 0 {
            // SAFETY: `raw` was checked: `raw.len` initialized elements at
            // `raw.ptr`; the new block is distinct, aligned and holds
            // `new_cap >= raw.len` elements. The move is bitwise; the old
            // copies are never used again once the old block is freed.
            unsafe { std::ptr::copy_nonoverlapping(raw.ptr.as_ptr(), new.as_ptr(), raw.len) };
        }
        let old = (self.storage, self.capacity, self.segment);
        (self.storage, self.capacity, self.segment) = (block.offset, new_cap as u64, block.segment);
        if old.0 != 0 {
            // The new storage is recorded before the old is freed (see
            // `storage::recorded_before_free`).
            recorded_before_free();
            crash_point!("vec.storage_moved");
            // SAFETY: the vector owns the old storage, no longer records it,
            // and `&mut self` outlives every borrow it handed out.
            if let Err(err) = unsafe { alloc.free_offset(&ctx, old.0) } {
                // Keep the old block (still holding every element) instead.
                (self.storage, self.capacity, self.segment) = old;
                // SAFETY: the fresh block, recorded nowhere now.
                let _ = unsafe { alloc.free_offset(&ctx, block.offset) };
                return Err(err);
            }
        }
        Ok(new)
    }

    /// Appends `value`. On error (out of memory, say) the vector is
    /// unchanged and `value` is dropped.
    pub fn push<A: ShmAllocator + ?Sized>(&mut self, alloc: &A, value: T) -> Result<()> {
        let raw = self.raw(alloc)?;
        let ptr = self.reserve_raw(alloc, &raw, 1)?;
        // SAFETY: after `reserve_raw` the storage holds more than `raw.len`
        // elements; slot `raw.len` is past the initialized ones.
        unsafe { ptr.as_ptr().add(raw.len).write(value) };
        self.len = raw.len as u64 + 1;
        Ok(())
    }

    /// Removes and returns the last element.
    pub fn pop<A: ShmAllocator + ?Sized>(&mut self, alloc: &A) -> Result<Option<T>> {
        let raw = self.raw(alloc)?;
        let Some(last) = raw.len.checked_sub(1) else {
            return Ok(None);
        };
        self.len = last as u64;
        // SAFETY: `last < raw.len` is initialized; the new length no longer
        // covers it, so it is moved out exactly once.
        Ok(Some(unsafe { raw.ptr.as_ptr().add(last).read() }))
    }

    /// Inserts `value` at `index`, shifting the later elements up; an index
    /// past the length is an error ([`Error::IndexOutOfRange`]).
    pub fn insert<A: ShmAllocator + ?Sized>(
        &mut self,
        alloc: &A,
        index: usize,
        value: T,
    ) -> Result<()> {
        let raw = self.raw(alloc)?;
        if index > raw.len {
            return Err(index_error(index, raw.len));
        }
        let ptr = self.reserve_raw(alloc, &raw, 1)?;
        // SAFETY: the storage holds more than `raw.len` elements, so both the
        // shifted range `index..raw.len` and its destination one up are
        // inside it; then slot `index` is written once.
        unsafe {
            let at = ptr.as_ptr().add(index);
            std::ptr::copy(at, at.add(1), raw.len - index);
            at.write(value);
        }
        self.len = raw.len as u64 + 1;
        Ok(())
    }

    /// Removes and returns the element at `index`, shifting the later ones
    /// down; an index past the end is an error.
    pub fn remove<A: ShmAllocator + ?Sized>(&mut self, alloc: &A, index: usize) -> Result<T> {
        let raw = self.raw(alloc)?;
        if index >= raw.len {
            return Err(index_error(index, raw.len));
        }
        // SAFETY: `index < raw.len`: the value is initialized and moved out
        // once; the later elements move down over it, inside the storage.
        let value = unsafe {
            let at = raw.ptr.as_ptr().add(index);
            let value = at.read();
            std::ptr::copy(at.add(1), at, raw.len - index - 1);
            value
        };
        self.len = raw.len as u64 - 1;
        Ok(value)
    }

    /// Removes and returns the element at `index`, moving the last element
    /// into its place (O(1), does not keep the order).
    pub fn swap_remove<A: ShmAllocator + ?Sized>(&mut self, alloc: &A, index: usize) -> Result<T> {
        let raw = self.raw(alloc)?;
        if index >= raw.len {
            return Err(index_error(index, raw.len));
        }
        let last = raw.len - 1;
        // SAFETY: `index <= last < raw.len`: both initialized. The value at
        // `index` is moved out, then the last one (if another) moved over it.
        let value = unsafe {
            let base = raw.ptr.as_ptr();
            let value = base.add(index).read();
            if index != last {
                std::ptr::copy_nonoverlapping(base.add(last), base.add(index), 1);
            }
            value
        };
        self.len = last as u64;
        Ok(value)
    }

    /// Drops the elements past `len` (nothing when the vector is shorter).
    pub fn truncate<A: ShmAllocator + ?Sized>(&mut self, alloc: &A, len: usize) -> Result<()> {
        let raw = self.raw(alloc)?;
        if len >= raw.len {
            return Ok(());
        }
        self.len = len as u64;
        // SAFETY: elements `len..raw.len` are initialized and, with the
        // length lowered first, dropped exactly once.
        unsafe {
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(
                raw.ptr.as_ptr().add(len),
                raw.len - len,
            ));
        }
        Ok(())
    }

    /// Drops every element; the storage stays for reuse.
    pub fn clear<A: ShmAllocator + ?Sized>(&mut self, alloc: &A) -> Result<()> {
        self.truncate(alloc, 0)
    }

    /// Sets the length to 0 without touching the storage; for element types
    /// without drop glue (`Copy`), where clearing needs no memory access.
    pub(super) fn clear_copy(&mut self)
    where
        T: Copy,
    {
        self.len = 0;
    }

    /// Makes room for at least `additional` more elements (growing by
    /// doubling, so repeated calls stay amortized O(1)). On error the vector
    /// is unchanged.
    pub fn reserve<A: ShmAllocator + ?Sized>(
        &mut self,
        alloc: &A,
        additional: usize,
    ) -> Result<()> {
        let raw = self.raw(alloc)?;
        self.reserve_raw(alloc, &raw, additional)?;
        Ok(())
    }

    /// Shrinks the storage to the length (freeing it when the vector is
    /// empty). On error the vector is unchanged.
    pub fn shrink_to_fit<A: ShmAllocator + ?Sized>(&mut self, alloc: &A) -> Result<()> {
        let raw = self.raw(alloc)?;
        if size_of::<T>() == 0 || self.storage == 0 || raw.cap == raw.len {
            return Ok(());
        }
        if raw.len == 0 {
            self.release_storage(alloc)?;
            return Ok(());
        }
        self.move_to(alloc, &raw, raw.len)?;
        Ok(())
    }

    /// Appends copies of `items`. On error the vector is unchanged.
    pub fn extend_from_slice<A: ShmAllocator + ?Sized>(
        &mut self,
        alloc: &A,
        items: &[T],
    ) -> Result<()>
    where
        T: Copy,
    {
        let raw = self.raw(alloc)?;
        let ptr = self.reserve_raw(alloc, &raw, items.len())?;
        // SAFETY: the storage holds at least `raw.len + items.len()`
        // elements. `items` cannot point into this vector's storage: that is
        // reachable only through borrows of `self`, and `&mut self` is held.
        unsafe {
            std::ptr::copy_nonoverlapping(items.as_ptr(), ptr.as_ptr().add(raw.len), items.len())
        };
        self.len = (raw.len + items.len()) as u64;
        Ok(())
    }

    /// The elements, as a slice in this process's mapping.
    pub fn as_slice<'a, A: ShmAllocator + ?Sized>(&'a self, alloc: &'a A) -> Result<&'a [T]> {
        let raw = self.raw(alloc)?;
        // SAFETY: `raw` checked that `raw.len` elements lie inside a live,
        // aligned block that does not contain `self`; they are initialized
        // (every bit pattern is a `T`, as `T: ShmSafe`). The borrow of
        // `self` keeps this API from changing or freeing them meanwhile, and
        // any other free of the block is `unsafe` and promises no borrow
        // into it lives (`free_offset`).
        Ok(unsafe { std::slice::from_raw_parts(raw.ptr.as_ptr(), raw.len) })
    }

    /// The elements, as a mutable slice.
    pub fn as_mut_slice<'a, A: ShmAllocator + ?Sized>(
        &'a mut self,
        alloc: &'a A,
    ) -> Result<&'a mut [T]> {
        let raw = self.raw(alloc)?;
        // SAFETY: as in `as_slice`; the exclusive borrow of `self` (whose
        // bytes are outside the block, as checked) makes this the only path
        // to the elements through this API.
        Ok(unsafe { std::slice::from_raw_parts_mut(raw.ptr.as_ptr(), raw.len) })
    }

    /// The element at `index`, or `None` past the end.
    pub fn get<'a, A: ShmAllocator + ?Sized>(
        &'a self,
        alloc: &'a A,
        index: usize,
    ) -> Result<Option<&'a T>> {
        Ok(self.as_slice(alloc)?.get(index))
    }

    /// The element at `index`, mutably, or `None` past the end.
    pub fn get_mut<'a, A: ShmAllocator + ?Sized>(
        &'a mut self,
        alloc: &'a A,
        index: usize,
    ) -> Result<Option<&'a mut T>> {
        Ok(self.as_mut_slice(alloc)?.get_mut(index))
    }

    /// Drops every element and returns the storage to `alloc`; the vector
    /// is then empty and may be used again (with an allocator of the same
    /// segment).
    pub fn free<A: ShmAllocator + ?Sized>(&mut self, alloc: &A) -> Result<()> {
        self.clear(alloc)?;
        if self.storage != 0 {
            self.release_storage(alloc)?;
        }
        Ok(())
    }

    /// Forgets the storage block, then frees it (a process killed in
    /// between leaks the block rather than record a freed one). On error
    /// the vector is unchanged.
    fn release_storage<A: ShmAllocator + ?Sized>(&mut self, alloc: &A) -> Result<()> {
        let old = (self.storage, self.capacity);
        (self.storage, self.capacity) = (0, 0);
        recorded_before_free();
        // SAFETY: owned, forgotten above, and `&mut self` outlives every
        // borrow the vector handed out.
        if let Err(err) = unsafe { free_block(alloc, old.0) } {
            (self.storage, self.capacity) = old;
            return Err(err);
        }
        Ok(())
    }

    /// The offset of the storage block (null when there is none).
    pub fn storage_offset(&self) -> Offset<T> {
        Offset::from_raw(self.storage)
    }
}

impl<T: ShmSafe> Default for ShmVec<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> fmt::Debug for ShmVec<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmVec")
            .field("len", &self.len)
            .field("capacity", &self.capacity)
            .field("storage", &Offset::<T>::from_raw(self.storage))
            .field("segment", &SegmentId(self.segment))
            .finish()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::alloc::SegmentAllocator;
    use crate::{FreeListAllocator, SegmentOptions, SizeClassAllocator};
    use proptest::prelude::*;

    /// A private size-class heap of `bytes`.
    pub fn heap(bytes: u64) -> SizeClassAllocator {
        SizeClassAllocator::create(&SegmentOptions::private().size(bytes)).unwrap()
    }

    /// A memfd free-list heap of `bytes`.
    pub fn free_list(bytes: u64) -> FreeListAllocator {
        FreeListAllocator::create(&SegmentOptions::memfd("containers").size(bytes)).unwrap()
    }

    fn is_corrupt(err: &Error) -> bool {
        matches!(err, Error::CorruptData { what: "vector", .. })
    }

    #[test]
    fn push_pop_insert_remove() {
        let heap = heap(4 << 20);
        let mut v = ShmVec::<u32>::new();
        assert!(v.is_empty());
        for i in 0..1000 {
            v.push(&heap, i).unwrap();
        }
        assert_eq!(v.len(), 1000);
        assert!(v.capacity() >= 1000);
        v.insert(&heap, 0, 7777).unwrap();
        v.insert(&heap, 1001, 8888).unwrap();
        assert_eq!(v.remove(&heap, 0).unwrap(), 7777);
        assert_eq!(v.pop(&heap).unwrap(), Some(8888));
        assert_eq!(v.swap_remove(&heap, 0).unwrap(), 0);
        assert_eq!(v.get(&heap, 0).unwrap(), Some(&999));
        assert_eq!(v.get(&heap, 999).unwrap(), None);
        assert!(matches!(
            v.insert(&heap, 5000, 1),
            Err(Error::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            v.remove(&heap, 999),
            Err(Error::IndexOutOfRange { .. })
        ));
        v.truncate(&heap, 10).unwrap();
        assert_eq!(v.as_slice(&heap).unwrap().len(), 10);
        v.shrink_to_fit(&heap).unwrap();
        assert_eq!(v.capacity(), 10);
        assert_eq!(v.as_slice(&heap).unwrap()[1..4], [1, 2, 3]);
        v.free(&heap).unwrap();
        assert_eq!(heap.stats().live_allocations, 0);
    }

    #[test]
    fn works_through_dyn_allocator_and_free_list() {
        let list = free_list(1 << 20);
        let alloc: &dyn ShmAllocator = &list;
        let mut v = ShmVec::<u64>::with_capacity(alloc, 3).unwrap();
        assert_eq!(v.capacity(), 3);
        v.extend_from_slice(alloc, &[1, 2, 3, 4, 5]).unwrap();
        v.as_mut_slice(alloc).unwrap()[4] = 50;
        *v.get_mut(alloc, 0).unwrap().unwrap() = 10;
        assert_eq!(v.as_slice(alloc).unwrap(), &[10, 2, 3, 4, 50]);
        v.clear(alloc).unwrap();
        v.shrink_to_fit(alloc).unwrap();
        assert!(v.storage_offset().is_null());
        assert_eq!(list.stats().live_allocations, 0);
    }

    #[test]
    fn strict_alignment_and_zero_sized_elements() {
        let heap = heap(1 << 20);
        let mut wide = ShmVec::<u128>::new();
        for i in 0..50u128 {
            wide.push(&heap, i << 70).unwrap();
        }
        let slice = wide.as_slice(&heap).unwrap();
        assert_eq!(slice.as_ptr() as usize % align_of::<u128>(), 0);
        assert_eq!(slice[49], 49u128 << 70);
        wide.free(&heap).unwrap();

        let mut unit = ShmVec::<[u8; 0]>::new();
        for _ in 0..10 {
            unit.push(&heap, []).unwrap();
        }
        assert_eq!(unit.as_slice(&heap).unwrap().len(), 10);
        assert!(unit.storage_offset().is_null());
        unit.free(&heap).unwrap();
        assert_eq!(heap.stats().live_allocations, 0);
    }

    #[test]
    fn foreign_allocator_is_refused() {
        let home = heap(1 << 20);
        let other = heap(1 << 20);
        let mut v = ShmVec::<u64>::new();
        v.push(&home, 1).unwrap();
        assert!(matches!(v.as_slice(&other), Err(Error::ForeignPointer)));
        assert!(matches!(v.push(&other, 2), Err(Error::ForeignPointer)));
        // Emptied, the vector still belongs to its first segment.
        v.free(&home).unwrap();
        assert!(matches!(v.push(&other, 2), Err(Error::ForeignPointer)));
        assert_eq!(other.stats().live_allocations, 0);
        assert_eq!(v.len(), 0);

        // Free lists resolve any in-range offset: the segment id decides.
        let (a, b) = (free_list(1 << 20), free_list(1 << 20));
        let mut w = ShmVec::<u64>::new();
        w.push(&a, 1).unwrap();
        assert!(matches!(w.as_slice(&b), Err(Error::ForeignPointer)));
        w.free(&a).unwrap();
    }

    #[test]
    fn forged_fields_are_corrupt_data() {
        let heap = heap(1 << 20);
        let mut v = ShmVec::<u64>::new();
        v.extend_from_slice(&heap, &[1, 2, 3, 4]).unwrap();
        let good = (v.storage, v.len, v.capacity);

        v.len = v.capacity + 1;
        assert!(is_corrupt(&v.as_slice(&heap).unwrap_err()));
        v.len = good.1;

        v.capacity = u64::MAX / 4;
        assert!(is_corrupt(&v.as_slice(&heap).unwrap_err()));
        v.capacity = 1000; // fits the arithmetic, not the block
        let err = v.as_slice(&heap).unwrap_err();
        assert!(
            is_corrupt(&err) && err.to_string().contains("usable"),
            "{err}"
        );
        v.capacity = good.2;

        v.storage = good.0 + 8; // inside the block, not its start
        assert!(is_corrupt(&v.as_slice(&heap).unwrap_err()));
        v.storage = u64::MAX - 7;
        assert!(is_corrupt(&v.push(&heap, 5).unwrap_err()));
        v.storage = 0; // no storage, but a length
        assert!(is_corrupt(&v.as_slice(&heap).unwrap_err()));
        v.storage = good.0;
        assert_eq!(v.as_slice(&heap).unwrap(), &[1, 2, 3, 4]);

        // A vector whose recorded storage is the block it lives in.
        let placed = heap.new_obj(ShmVec::<u64>::new()).unwrap();
        // SAFETY: a fresh block holding a vector, ours alone.
        let inner = unsafe { &mut *placed.as_ptr() };
        inner.storage = placed.offset().raw();
        inner.capacity = 1;
        inner.len = 1;
        assert!(is_corrupt(&inner.as_mut_slice(&heap).unwrap_err()));

        // Zero-sized elements never have storage.
        let mut unit = ShmVec::<[u8; 0]>::new();
        unit.storage = good.0;
        assert!(is_corrupt(&unit.as_slice(&heap).unwrap_err()));
        v.free(&heap).unwrap();
    }

    #[test]
    fn out_of_memory_leaves_the_vector_unchanged() {
        let heap = free_list(256 << 10);
        let mut v = ShmVec::<u64>::new();
        let err = loop {
            match v.push(&heap, v.len() as u64) {
                Ok(()) => {}
                Err(err) => break err,
            }
        };
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        let (len, cap, storage) = (v.len(), v.capacity(), v.storage);
        assert_eq!(len, cap, "only a full vector asks for memory");
        assert_eq!(v.storage, storage);
        let slice = v.as_slice(&heap).unwrap();
        assert!(slice.iter().enumerate().all(|(i, &x)| x == i as u64));
        assert!(matches!(
            v.reserve(&heap, 1 << 30),
            Err(Error::OutOfMemory { .. })
        ));
        assert!(matches!(
            v.reserve(&heap, usize::MAX),
            Err(Error::InvalidSize { .. })
        ));
        assert_eq!((v.len(), v.capacity(), v.storage), (len, cap, storage));
        // Still usable: make room and go on.
        v.truncate(&heap, len / 2).unwrap();
        v.shrink_to_fit(&heap).unwrap();
        v.push(&heap, 1).unwrap();
        v.free(&heap).unwrap();
        heap.check().unwrap();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Push(u32),
        Pop,
        Insert(usize, u32),
        Remove(usize),
        SwapRemove(usize),
        Truncate(usize),
        Clear,
        Reserve(usize),
        ShrinkToFit,
        Extend(Vec<u32>),
        Set(usize, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => any::<u32>().prop_map(Op::Push),
            2 => Just(Op::Pop),
            2 => (0..80usize, any::<u32>()).prop_map(|(i, x)| Op::Insert(i, x)),
            2 => (0..80usize).prop_map(Op::Remove),
            2 => (0..80usize).prop_map(Op::SwapRemove),
            1 => (0..80usize).prop_map(Op::Truncate),
            1 => Just(Op::Clear),
            1 => (0..100usize).prop_map(Op::Reserve),
            1 => Just(Op::ShrinkToFit),
            2 => proptest::collection::vec(any::<u32>(), 0..20).prop_map(Op::Extend),
            2 => (0..80usize, any::<u32>()).prop_map(|(i, x)| Op::Set(i, x)),
        ]
    }

    fn run_model(alloc: &dyn ShmAllocator, ops: &[Op]) {
        let mut v = ShmVec::<u32>::new();
        let mut model: Vec<u32> = Vec::new();
        for op in ops {
            match op.clone() {
                Op::Push(x) => {
                    v.push(alloc, x).unwrap();
                    model.push(x);
                }
                Op::Pop => assert_eq!(v.pop(alloc).unwrap(), model.pop()),
                Op::Insert(i, x) => {
                    let r = v.insert(alloc, i, x);
                    if i <= model.len() {
                        r.unwrap();
                        model.insert(i, x);
                    } else {
                        assert!(r.is_err());
                    }
                }
                Op::Remove(i) => {
                    let r = v.remove(alloc, i);
                    if i < model.len() {
                        assert_eq!(r.unwrap(), model.remove(i));
                    } else {
                        assert!(r.is_err());
                    }
                }
                Op::SwapRemove(i) => {
                    let r = v.swap_remove(alloc, i);
                    if i < model.len() {
                        assert_eq!(r.unwrap(), model.swap_remove(i));
                    } else {
                        assert!(r.is_err());
                    }
                }
                Op::Truncate(n) => {
                    v.truncate(alloc, n).unwrap();
                    model.truncate(n);
                }
                Op::Clear => {
                    v.clear(alloc).unwrap();
                    model.clear();
                }
                Op::Reserve(n) => {
                    v.reserve(alloc, n).unwrap();
                    assert!(v.capacity() >= model.len() + n);
                }
                Op::ShrinkToFit => {
                    v.shrink_to_fit(alloc).unwrap();
                    assert_eq!(v.capacity(), model.len());
                }
                Op::Extend(items) => {
                    v.extend_from_slice(alloc, &items).unwrap();
                    model.extend_from_slice(&items);
                }
                Op::Set(i, x) => match v.get_mut(alloc, i).unwrap() {
                    Some(slot) => {
                        *slot = x;
                        model[i] = x;
                    }
                    None => assert!(i >= model.len()),
                },
            }
            assert_eq!(v.len(), model.len());
            assert!(v.capacity() >= v.len());
            assert_eq!(v.as_slice(alloc).unwrap(), &model[..]);
        }
        v.free(alloc).unwrap();
        assert_eq!(alloc.stats().live_allocations, 0);
        alloc.check().unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn behaves_like_std_vec(ops in proptest::collection::vec(op(), 0..200)) {
            run_model(&heap(4 << 20), &ops);
            run_model(&free_list(1 << 20), &ops);
        }
    }
}
