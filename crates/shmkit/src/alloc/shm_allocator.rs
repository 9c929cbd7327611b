//! `ShmAllocator`: the one trait of every allocator that can free.
//!
//! In Rust idiom, the operations of the Hermes SHM allocator API: allocate,
//! allocate aligned, reallocate and free on [`FullPtr`]s, typed object
//! helpers, a per-thread [`MemContext`], always-on accounting ([`AllocStats`])
//! and an integrity walk ([`ShmAllocator::check`]).

use std::hash::Hasher;
use std::ptr::NonNull;

use crate::error::{Error, Result};
use crate::ptr::{FullPtr, Offset, ShmSafe};
use crate::segment::Segment;

use super::{AllocStats, AllocatorKind, RecoveryReport};

/// Per-call information an allocator may use: who calls (the thread-local
/// allocator picks its cache slot from it) and whether the call may wait.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemContext {
    /// A small number that identifies the calling thread within its process;
    /// `None` lets the allocator find out for itself.
    pub thread: Option<u32>,
    /// When set, an allocate, free or resize that finds the allocator's
    /// lock held by another thread or process (after a few spins) returns
    /// [`Error::WouldBlock`] at once, having changed nothing, instead of
    /// waiting. For bindings that hold a lock of their own while they call
    /// (an interpreter lock): try refusing, and on `WouldBlock` release
    /// that lock and call again, patiently. Only the free-list and buddy
    /// allocators take a lock; the others never wait on another process.
    ///
    /// ```
    /// use shmkit::{Error, FreeListAllocator, MemContext, SegmentAllocator, SegmentOptions, ShmAllocator};
    ///
    /// let heap = FreeListAllocator::create(&SegmentOptions::private().size(1 << 20))?;
    /// let block = match heap.allocate_offset(&MemContext::refusing_waits(), 64, 8) {
    ///     Err(Error::WouldBlock { .. }) => heap.allocate_offset(&MemContext::default(), 64, 8)?,
    ///     other => other?,
    /// };
    /// // SAFETY: nothing uses the block after this.
    /// unsafe { heap.free_offset(&MemContext::default(), block)? };
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub refuse_waits: bool,
}

impl MemContext {
    /// The context of the calling thread.
    pub fn current() -> MemContext {
        MemContext {
            thread: Some(crate::os::thread_id::current_thread_index()),
            refuse_waits: false,
        }
    }

    /// How long a call under this context waits for a lock: not at all when
    /// it refuses waits, else `wait`.
    pub(crate) fn patience(&self, wait: std::time::Duration) -> crate::sync::robust_lock::Patience {
        if self.refuse_waits {
            crate::sync::robust_lock::Patience::Refuse
        } else {
            crate::sync::robust_lock::Patience::Wait(wait)
        }
    }

    /// A context whose calls refuse to wait for a lock (see
    /// [`refuse_waits`](Self::refuse_waits)).
    pub fn refusing_waits() -> MemContext {
        MemContext {
            refuse_waits: true,
            ..MemContext::default()
        }
    }
}

/// A stretch of a segment's data area, as [`ShmAllocator::regions`] reports
/// it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// Where it starts (segment offset).
    pub offset: u64,
    /// Its length in bytes.
    pub len: u64,
    /// Bytes of it in use: `len` for a live block, 0 for a free one, in
    /// between for a page whose slots are partly in use.
    pub used: u64,
}

/// An allocator that allocates and frees blocks, whose state (for every
/// allocator but [`MallocAllocator`](crate::MallocAllocator)) lives in a
/// segment, so every attached process shares it.
///
/// The required methods work on offsets; the provided ones add `FullPtr`s,
/// typed objects and arrays. The trait is dyn-compatible
/// (`Box<dyn ShmAllocator>`) for everything but the typed helpers.
pub trait ShmAllocator: Send + Sync {
    /// The kind recorded in the segment header.
    fn kind(&self) -> AllocatorKind;

    /// Allocates `size` bytes aligned to `align` (a power of two; 0 means 1)
    /// and returns the block's offset.
    fn allocate_offset(&self, ctx: &MemContext, size: usize, align: usize) -> Result<u64>;

    /// Frees the block at `offset`. A block that this allocator did not hand
    /// out, or that is not live any more, is refused with an error and
    /// nothing changes.
    ///
    /// # Safety
    ///
    /// Nothing in this process may still use the block: no reference a
    /// container handed out into it (a [`ShmBox`](crate::ShmBox),
    /// [`ShmVec`](crate::ShmVec), [`ShmString`](crate::ShmString) or
    /// [`ShmHashMap`](crate::ShmHashMap) owns its blocks and frees them
    /// itself), no ring handle over it, no pointer that will be read or
    /// written after this call. Once freed, the bytes may be handed to
    /// anyone, so a use afterwards aliases another owner's data, as after
    /// [`GlobalAlloc::dealloc`](std::alloc::GlobalAlloc::dealloc). The
    /// allocator's own state is safe whatever the offset: a wrong, foreign
    /// or already freed offset is refused with an error, never undefined
    /// behaviour inside the allocator. For frees that need no `unsafe`,
    /// own the block through a container.
    ///
    /// Freeing a container's storage behind its back takes `unsafe`, so
    /// safe code cannot make the borrow below dangle:
    ///
    /// ```compile_fail,E0133
    /// use shmkit::{MemContext, SegmentAllocator, SegmentOptions, ShmAllocator, ShmVec, SizeClassAllocator};
    ///
    /// let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20))?;
    /// let mut numbers = ShmVec::<u64>::with_capacity(&heap, 4)?;
    /// numbers.push(&heap, 1)?;
    /// let storage = numbers.storage_offset().raw();
    /// let slice = numbers.as_mut_slice(&heap)?;
    /// heap.free_offset(&MemContext::default(), storage)?; // error[E0133]: needs `unsafe`
    /// slice[0] = 2;
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    ///
    /// The container frees it safely, once no borrow of it lives:
    ///
    /// ```
    /// use shmkit::{SegmentAllocator, SegmentOptions, ShmAllocator, ShmVec, SizeClassAllocator};
    ///
    /// let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20))?;
    /// let mut numbers = ShmVec::<u64>::with_capacity(&heap, 4)?;
    /// numbers.push(&heap, 1)?;
    /// numbers.as_mut_slice(&heap)?[0] = 2;
    /// numbers.free(&heap)?;
    /// assert_eq!(heap.stats().live_allocations, 0);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    unsafe fn free_offset(&self, ctx: &MemContext, offset: u64) -> Result<()>;

    /// The number of bytes usable in the live block at `offset` (at least the
    /// size requested).
    fn usable_size(&self, offset: u64) -> Result<usize>;

    /// The local and shared form of the block at `offset`.
    fn full_ptr(&self, offset: u64) -> Result<FullPtr<u8>>;

    /// The offset of a local pointer into this allocator's memory.
    fn offset_of_local(&self, ptr: NonNull<u8>) -> Result<u64>;

    /// Current accounting. Never fails: where exact figures need a lock
    /// that stays busy (the free list's free-space walk), the figures the
    /// shared words give stand in for them (a largest free block of 0).
    fn stats(&self) -> AllocStats;

    /// [`stats`](Self::stats), or the error that kept it from being exact
    /// ([`Error::LockTimeout`], say) instead of figures that stand in.
    fn try_stats(&self) -> Result<AllocStats> {
        Ok(self.stats())
    }

    /// The segment whose memory this allocator hands out, when it has one
    /// (every shmkit allocator but [`MallocAllocator`](crate::MallocAllocator)).
    /// Named objects and the registry reach the segment through it.
    fn backing_segment(&self) -> Option<&Segment> {
        None
    }

    /// Walks the allocator's structures and reports the first inconsistency.
    fn check(&self) -> Result<()>;

    /// Calls `visit` for each region of the data area, in offset order: a
    /// block, a page or a run, with how many of its bytes are in use (for
    /// pictures of a segment). The default says the allocator cannot.
    fn regions(&self, visit: &mut dyn FnMut(Region)) -> Result<()> {
        let _ = visit;
        Err(Error::Unsupported("this allocator cannot list its regions"))
    }

    /// Mends what processes that died in the middle of an operation left
    /// behind, as far as the allocator's own records prove it: takes over
    /// locks a dead process held, empties dead processes' thread caches,
    /// puts free blocks that sit on no free structure back, and recounts the
    /// accounting from the blocks. Blocks still marked in use stay in use
    /// (the allocator does not know who owned them).
    ///
    /// The pass rebuilds shared structures that a concurrent operation would
    /// be changing, so it runs alone: it holds the segment's recovery lock
    /// ([`Segment::lock_for_recovery`]), so no process attaches meanwhile,
    /// and refuses with [`Error::InUse`] while another process uses the
    /// segment, or another live process holds part of the allocator's
    /// state. A process-local allocator just runs the pass.
    ///
    /// # Safety
    ///
    /// No other thread of this process may use the segment's allocators
    /// during the call (allocate, free, or a container or ring that does):
    /// the pass cannot tell another thread's allocation in flight from one
    /// a dead process left, and would give its block to the next taker.
    /// The lock keeps other processes out; this process's threads are the
    /// caller's to stop.
    unsafe fn recover(&self) -> Result<RecoveryReport> {
        // SAFETY: forwarded from the caller.
        unsafe { recover_alone(self, false) }
    }

    /// [`recover`](Self::recover) even though other processes use the
    /// segment: only for processes known to be idle (stopped, or waiting on
    /// something other than this segment).
    ///
    /// # Safety
    ///
    /// As for [`recover`](Self::recover).
    unsafe fn recover_forced(&self) -> Result<RecoveryReport> {
        // SAFETY: forwarded from the caller.
        unsafe { recover_alone(self, true) }
    }

    /// Takes the hand-off records of threads that died: for each, the
    /// offset of the last block an allocator of this segment handed it.
    /// Each record is taken once, and the dead thread's slot is freed.
    ///
    /// A thread killed right after an allocation returned may not have
    /// stored the offset anywhere, and then nobody would ever free that
    /// block. Only the application can tell: a reaper that knows what its
    /// dead workers held frees each returned offset that nothing of its
    /// own names. A record names a block its thread had not begun to free
    /// (a thread's own free forgets it first), so it is still allocated
    /// unless another thread freed it: an application that passes blocks
    /// between threads checks its own records before freeing one. Blocks
    /// an allocator had not finished handing out are not returned here:
    /// the lock's next taker or [`recover`](Self::recover) frees them.
    /// Safe while other processes run.
    fn take_dead_handoffs(&self) -> Vec<u64> {
        self.backing_segment()
            .map(|segment| {
                super::handoff::take_dead(segment, |offset| self.usable_size(offset).is_ok())
            })
            .unwrap_or_default()
    }

    /// The recovery pass itself, what an allocator implements: callers use
    /// [`recover`](Self::recover), which makes sure it runs alone. The
    /// default has nothing to mend.
    ///
    /// # Safety
    ///
    /// As for [`recover`](Self::recover), and the caller holds
    /// [`Segment::lock_for_recovery`] (or the allocator is process-local).
    unsafe fn recovery_pass(&self) -> Result<RecoveryReport> {
        Ok(RecoveryReport::unchanged(self.stats()))
    }

    /// Tries to resize the block in place; returns whether it did. The
    /// default never does.
    ///
    /// # Safety
    ///
    /// As for [`free_offset`](Self::free_offset), for the bytes past
    /// `new_size` when it shrinks the block: nothing may use them afterwards.
    unsafe fn resize_in_place(
        &self,
        _ctx: &MemContext,
        _offset: u64,
        _new_size: usize,
    ) -> Result<bool> {
        Ok(false)
    }

    /// Allocates `size` bytes (aligned to 8).
    #[inline]
    fn allocate(&self, size: usize) -> Result<FullPtr<u8>> {
        self.allocate_aligned(size, 8)
    }

    /// Allocates `size` bytes aligned to `align`.
    #[inline]
    fn allocate_aligned(&self, size: usize, align: usize) -> Result<FullPtr<u8>> {
        let offset = self.allocate_offset(&MemContext::default(), size, align)?;
        ptr_to_known_block(self, offset)
    }

    /// Frees a block.
    ///
    /// # Safety
    ///
    /// As for [`free_offset`](Self::free_offset): nothing may use the block
    /// afterwards.
    #[inline]
    unsafe fn free(&self, ptr: FullPtr<u8>) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.free_offset(&MemContext::default(), ptr.offset().raw()) }
    }

    /// Resizes a block, keeping its contents up to the smaller of the two
    /// sizes (a shrink never copies more than the new size). On error the
    /// old block is untouched and still live.
    ///
    /// # Safety
    ///
    /// As for [`free_offset`](Self::free_offset): on success the old block
    /// may be gone, so nothing may use `ptr` afterwards (use the returned
    /// pointer).
    unsafe fn reallocate(&self, ptr: FullPtr<u8>, new_size: usize) -> Result<FullPtr<u8>> {
        let ctx = MemContext::default();
        let offset = ptr.offset().raw();
        let old_size = self.usable_size(offset)?;
        // SAFETY: the caller gives up `ptr`; a shrink in place cuts off
        // bytes nobody uses.
        if unsafe { self.resize_in_place(&ctx, offset, new_size)? } {
            return ptr_to_known_block(self, offset);
        }
        let new_offset = self.allocate_offset(&ctx, new_size, 8)?;
        let new = ptr_to_known_block(self, new_offset)?;
        let old = ptr_to_known_block(self, offset)?;
        // SAFETY: both blocks are live, distinct allocations of this
        // allocator, each at least as long as the bytes copied.
        unsafe {
            std::ptr::copy_nonoverlapping(old.as_ptr(), new.as_ptr(), old_size.min(new_size));
        }
        // SAFETY: the contents moved to `new`; the caller gives up `ptr`.
        unsafe { self.free_offset(&ctx, offset)? };
        Ok(new)
    }

    /// Places `value` in a new block.
    fn new_obj<T: ShmSafe>(&self, value: T) -> Result<FullPtr<T>>
    where
        Self: Sized,
    {
        let block = self.allocate_aligned(std::mem::size_of::<T>(), std::mem::align_of::<T>())?;
        let ptr = block.cast::<T>();
        // SAFETY: the block is fresh, ours alone, and sized and aligned for T.
        unsafe { ptr.as_ptr().write(value) };
        Ok(ptr)
    }

    /// Drops the object and frees its block.
    ///
    /// # Safety
    ///
    /// `ptr` must come from [`new_obj`](Self::new_obj) of this allocator, be
    /// live, and not be used afterwards.
    unsafe fn del_obj<T: ShmSafe>(&self, ptr: FullPtr<T>) -> Result<()>
    where
        Self: Sized,
    {
        // Check the block before running any destructor on it.
        self.usable_size(ptr.offset().raw())?;
        // SAFETY: the caller guarantees a live `T` at `ptr`.
        unsafe { std::ptr::drop_in_place(ptr.as_ptr()) };
        // SAFETY: the caller does not use `ptr` afterwards.
        unsafe { self.free(ptr.cast()) }
    }

    /// Allocates `count` values, each `T::default()`.
    fn new_objs<T: ShmSafe + Default>(&self, count: usize) -> Result<FullPtr<T>>
    where
        Self: Sized,
    {
        self.new_objs_from(count, std::iter::repeat_with(T::default))
    }

    /// Allocates `count` values taken from `values` (which must yield at
    /// least `count`).
    fn new_objs_from<T: ShmSafe>(
        &self,
        count: usize,
        values: impl IntoIterator<Item = T>,
    ) -> Result<FullPtr<T>>
    where
        Self: Sized,
    {
        let bytes = array_bytes::<T>(count)?;
        let block = self
            .allocate_aligned(bytes, std::mem::align_of::<T>())?
            .cast::<T>();
        let mut values = values.into_iter();
        for index in 0..count {
            let Some(value) = values.next() else {
                // Too few values: give the block back, report.
                // SAFETY: `index` values were written and are dropped here.
                unsafe { drop_prefix(block.local(), index) };
                // SAFETY: the fresh block never left this function.
                unsafe { self.free(block.cast())? };
                return Err(Error::invalid_size(format!(
                    "the iterator yielded {index} values, {count} were asked for"
                )));
            };
            // SAFETY: `index < count`, inside the fresh block.
            unsafe { block.as_ptr().add(index).write(value) };
        }
        Ok(block)
    }

    /// Resizes an array of `old_count` values to `new_count`, dropping the
    /// values cut off and filling new slots with `T::default()`.
    ///
    /// # Safety
    ///
    /// `ptr` must be a live array of `old_count` values from this allocator,
    /// not used afterwards (use the returned pointer).
    unsafe fn realloc_objs<T: ShmSafe + Default>(
        &self,
        ptr: FullPtr<T>,
        old_count: usize,
        new_count: usize,
    ) -> Result<FullPtr<T>>
    where
        Self: Sized,
    {
        if new_count < old_count {
            // SAFETY: values `new_count..old_count` are live and cut off.
            unsafe { drop_prefix(ptr.local().add(new_count), old_count - new_count) };
        }
        let bytes = array_bytes::<T>(new_count)?;
        // SAFETY: the caller's live array, which it gives up for the result.
        let moved = unsafe { self.reallocate(ptr.cast(), bytes)? }.cast::<T>();
        for index in old_count..new_count {
            // SAFETY: inside the resized block, past the kept values.
            unsafe { moved.as_ptr().add(index).write(T::default()) };
        }
        Ok(moved)
    }

    /// Drops `count` values and frees the array.
    ///
    /// # Safety
    ///
    /// `ptr` must be a live array of `count` values from this allocator.
    unsafe fn del_objs<T: ShmSafe>(&self, ptr: FullPtr<T>, count: usize) -> Result<()>
    where
        Self: Sized,
    {
        self.usable_size(ptr.offset().raw())?;
        // SAFETY: the caller guarantees `count` live values.
        unsafe { drop_prefix(ptr.local(), count) };
        // SAFETY: the caller does not use `ptr` afterwards.
        unsafe { self.free(ptr.cast()) }
    }
}

/// The pointer to a block the allocator has just validated or handed out:
/// only the mapping is looked up, the block is not checked a second time.
#[inline]
fn ptr_to_known_block<A: ShmAllocator + ?Sized>(allocator: &A, offset: u64) -> Result<FullPtr<u8>> {
    match allocator.backing_segment() {
        Some(segment) => segment.full_ptr_from_offset(Offset::from_raw(offset)),
        None => allocator.full_ptr(offset),
    }
}

fn array_bytes<T>(count: usize) -> Result<usize> {
    std::mem::size_of::<T>().checked_mul(count).ok_or_else(|| {
        Error::invalid_size(format!(
            "{count} x {} bytes overflows",
            std::mem::size_of::<T>()
        ))
    })
}

/// Drops `count` values starting at `first`.
///
/// # Safety
///
/// The values must be live and not used afterwards.
unsafe fn drop_prefix<T>(first: NonNull<T>, count: usize) {
    // SAFETY: forwarded from the caller.
    unsafe { std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(first.as_ptr(), count)) };
}

/// Hashes a block address with one multiply: addresses are unique and not
/// chosen by an adversary, and SipHash cost more than the malloc it guarded.
#[derive(Default)]
pub(crate) struct AddressHasher(u64);

impl Hasher for AddressHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }
    #[inline]
    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    #[inline]
    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits (which pick the bucket) as weak
        // as the aligned address's: fold the high half down.
        self.0 ^ (self.0 >> 32)
    }
}

/// Runs `allocator`'s recovery pass under its segment's recovery lock.
///
/// # Safety
///
/// As for [`ShmAllocator::recover`].
unsafe fn recover_alone<A: ShmAllocator + ?Sized>(
    allocator: &A,
    force: bool,
) -> Result<RecoveryReport> {
    let _alone = match allocator.backing_segment() {
        Some(segment) => Some(segment.lock_for_recovery(force)?),
        None => None,
    };
    // SAFETY: the lock is held; the rest is the caller's promise.
    unsafe { allocator.recovery_pass() }
}

/// Normalizes an alignment that must be a power of two (0 means 1) and at
/// most `max`.
#[inline]
pub(crate) fn power_of_two_align(align: usize, max: usize) -> Result<usize> {
    let align = align.max(1);
    if !align.is_power_of_two() || align > max {
        return Err(Error::InvalidAlignment { align, max });
    }
    Ok(align)
}
