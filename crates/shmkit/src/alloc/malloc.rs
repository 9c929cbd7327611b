//! The system allocator behind the same trait, for code that switches
//! allocators. Process-local: it lives in no segment.

use std::alloc::Layout;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::ptr::NonNull;
use std::sync::Mutex;

use crossbeam_utils::CachePadded;

use super::counters::{AllocCounters, Share};
use super::memory_resource::impl_allocator_api2;
use super::shm_allocator::{power_of_two_align, AddressHasher};
use super::{AllocStats, AllocatorKind, MemContext, ShmAllocator};
use crate::error::{Error, Result};
use crate::os::thread_id::current_thread_index;
use crate::ptr::{FullPtr, Offset, SegmentId, ShmPtr};
use crate::segment::SegmentOptions;

/// Shards of the table of live blocks, so threads rarely share a lock.
const SHARDS: usize = 16;
/// log2 of the size of a glibc thread arena's heap (`HEAP_MAX_SIZE`).
const ARENA_SHIFT: u32 = 26;
/// Threads with a share of the accounting of their own (by thread index;
/// later threads share the common counters).
const SHARE_THREADS: usize = 64;

type LiveBlocks = HashMap<usize, Layout, BuildHasherDefault<AddressHasher>>;

/// The process's system allocator as a [`ShmAllocator`].
///
/// Offsets are local addresses and the segment id is
/// [`SegmentId::PROCESS_LOCAL`]: nothing it hands out means anything in
/// another process, and [`attach`](Self::attach) says so. Every live block is
/// recorded, so a double free or a foreign pointer is an error, not undefined
/// behaviour.
///
/// ```
/// use shmkit::{MallocAllocator, ShmAllocator};
///
/// let malloc = MallocAllocator::new();
/// let block = malloc.allocate(100)?;
/// // SAFETY: nothing uses the block after its free.
/// unsafe {
///     malloc.free(block)?;
///     assert!(malloc.free(block).is_err()); // double free
/// }
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct MallocAllocator {
    /// One cache line or more per shard: neighbours never share a line.
    live: [CachePadded<Mutex<LiveBlocks>>; SHARDS],
    counters: AllocCounters,
    /// Each thread's share of the accounting, by thread index.
    shares: Box<[CachePadded<Share>]>,
}

impl Default for MallocAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MallocAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MallocAllocator")
            .field("stats", &self.stats())
            .finish()
    }
}

impl MallocAllocator {
    /// A new, empty allocator.
    pub fn new() -> MallocAllocator {
        MallocAllocator {
            live: std::array::from_fn(|_| CachePadded::new(Mutex::new(LiveBlocks::default()))),
            counters: AllocCounters::new(),
            shares: (0..SHARE_THREADS).map(|_| CachePadded::default()).collect(),
        }
    }

    /// The calling thread's share of the accounting, if it has one.
    #[inline]
    fn my_share(&self) -> Option<&Share> {
        self.shares
            .get(current_thread_index() as usize)
            .map(|share| &**share)
    }

    fn snapshot(&self) -> (u64, u64, u64) {
        self.counters
            .snapshot_of(self.shares.iter().map(|share| &**share))
    }

    /// Always an error: the system allocator of one process cannot be
    /// attached from another.
    pub fn attach(_options: &SegmentOptions) -> Result<MallocAllocator> {
        Err(Error::Unsupported(
            "the malloc allocator is process-local; it cannot be attached from another process",
        ))
    }

    fn shard(&self, addr: usize) -> std::sync::MutexGuard<'_, LiveBlocks> {
        // By the 64 MiB region the block lies in, not by its exact address:
        // glibc gives each thread an arena of its own, 64 MiB-aligned heaps,
        // so each thread's blocks fall in a shard of their own and two
        // threads rarely pass a shard's line back and forth.
        let index = (addr >> ARENA_SHIFT) % SHARDS;
        // A panic while holding a shard cannot leave the map half-updated
        // (each operation is one insert or remove), so poisoning is ignored.
        self.live[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn layout_of(&self, offset: u64) -> Result<Layout> {
        let addr = usize::try_from(offset).map_err(|_| Error::InvalidFree { offset })?;
        self.shard(addr)
            .get(&addr)
            .copied()
            .ok_or(Error::InvalidFree { offset })
    }
}

impl ShmAllocator for MallocAllocator {
    fn kind(&self) -> AllocatorKind {
        AllocatorKind::Malloc
    }

    fn allocate_offset(&self, _ctx: &MemContext, size: usize, align: usize) -> Result<u64> {
        let align = power_of_two_align(align, 1 << 29)?;
        let layout = Layout::from_size_align(size.max(1), align)
            .map_err(|_| Error::invalid_size(format!("{size} bytes aligned to {align}")))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return Err(Error::OutOfMemory {
                requested: size as u64,
                available: 0,
            });
        }
        self.shard(ptr as usize).insert(ptr as usize, layout);
        self.counters.on_allocate_to(self.my_share(), size as u64);
        Ok(ptr as u64)
    }

    unsafe fn free_offset(&self, _ctx: &MemContext, offset: u64) -> Result<()> {
        let addr = usize::try_from(offset).map_err(|_| Error::InvalidFree { offset })?;
        let layout = self
            .shard(addr)
            .remove(&addr)
            .ok_or(Error::InvalidFree { offset })?;
        // SAFETY: the block was allocated above with exactly this layout and
        // was live until removed from the table just now.
        unsafe { std::alloc::dealloc(addr as *mut u8, layout) };
        self.counters
            .on_free_to(self.my_share(), layout.size() as u64);
        Ok(())
    }

    fn usable_size(&self, offset: u64) -> Result<usize> {
        self.layout_of(offset).map(|layout| layout.size())
    }

    fn full_ptr(&self, offset: u64) -> Result<FullPtr<u8>> {
        self.layout_of(offset)?;
        let local = NonNull::new(offset as usize as *mut u8).ok_or(Error::NullOffset)?;
        Ok(FullPtr::new(
            local,
            ShmPtr::new(SegmentId::PROCESS_LOCAL, Offset::from_raw(offset)),
        ))
    }

    fn offset_of_local(&self, ptr: NonNull<u8>) -> Result<u64> {
        Ok(ptr.as_ptr() as usize as u64)
    }

    fn stats(&self) -> AllocStats {
        let (allocated_bytes, live_allocations, peak_bytes) = self.snapshot();
        AllocStats {
            allocated_bytes,
            peak_bytes,
            live_allocations,
            // The system allocator's free memory is not this allocator's to know.
            free_bytes: 0,
            largest_free_block: 0,
            capacity: 0,
        }
    }

    fn check(&self) -> Result<()> {
        let recorded: u64 = self
            .live
            .iter()
            .map(|shard| shard.lock().unwrap_or_else(|e| e.into_inner()).len() as u64)
            .sum();
        let (_, live, _) = self.snapshot();
        if recorded != live {
            return Err(Error::corrupt(format!(
                "{recorded} blocks recorded, {live} counted live"
            )));
        }
        Ok(())
    }
}

impl Drop for MallocAllocator {
    fn drop(&mut self) {
        for shard in &self.live {
            let map = std::mem::take(&mut *shard.lock().unwrap_or_else(|e| e.into_inner()));
            for (addr, layout) in map {
                // SAFETY: every recorded block is live and was allocated with
                // its recorded layout; nothing can use it after the allocator
                // that owns it is gone.
                unsafe { std::alloc::dealloc(addr as *mut u8, layout) };
            }
        }
    }
}

impl_allocator_api2!(MallocAllocator);
