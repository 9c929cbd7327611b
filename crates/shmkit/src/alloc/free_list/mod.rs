//! The general-purpose free-list allocator: two-level segregated fit (TLSF)
//! over boundary-tagged blocks, with its whole state in the segment.
//!
//! # Layout
//!
//! The heap runs from the data area (rounded up to 16 bytes) to the
//! segment's current size, and is tiled, without gaps, by blocks. Every
//! block starts with a 32-byte header of four words (offsets from the block
//! start):
//!
//! ```text
//! +0   size_flags  size in bytes (header included, a multiple of 16) | FREE (1) | PREV_FREE (2) | QUARANTINED (4)
//! +8   prev_phys   offset of the previous physical block (0 for the first)
//! +16  seal        a keyed hash of (block offset, size | FREE, requested)
//! +24  requested   bytes the caller asked for (0 when free)
//! +32  payload     (16-aligned; the offset handed out)
//! ```
//!
//! A small block a thread freed may sit in that thread's cache instead,
//! marked `CACHED` (8) in its size word: see [`thread_cache`].
//!
//! A free block keeps its free-list links in its first payload words:
//! `+32 next_free`, `+40 prev_free` (offsets, 0 for none). The smallest block
//! is 48 bytes.
//!
//! The state area holds, in this order: the [`RobustLock`] word (`+0`:
//! `pid << 32 | thread + 1`, 0 when free), a magic word, the heap start and
//! end, the last physical block, the free bytes and free block count, a
//! "needs repair" flag, the number of repairs, the first-level bitmap, 48
//! second-level bitmaps, the 48 × 16 list heads (offsets), and the
//! allocation counters.
//!
//! Free blocks are filed by size in 48 × 16 classes: the first level is the
//! power of two, the second splits it into 16 equal ranges (below 256 bytes
//! every class is one exact size). A search rounds the request up to the
//! next class, so the head of any non-empty list at or above it fits: one
//! bitmap lookup per level, O(1). When that finds nothing, the lists the
//! rounding skipped are scanned, so a request as large as the largest free
//! block still succeeds.
//!
//! # Write order and recovery
//!
//! Every allocate, free and resize runs under the robust lock. A process can
//! die at any instruction while holding it, so headers are written in an
//! order that keeps the *physical chain* (start, start + size, ...) walkable
//! at every instant:
//!
//! 1. a new header (a split remainder, front padding, new space at the end)
//!    is written completely *before* anything points at it: it lies inside
//!    an existing block or past the heap end, where no walk looks;
//! 2. the next block's `prev_phys` and `PREV_FREE` are updated;
//! 3. the commit is one 8-byte store: of the size word of the block that
//!    shrinks (split), grows (merge) or changes its free bit, or of the heap
//!    end (growth); the seal follows it.
//!
//! The free lists, bitmaps and totals are derived data: they are updated in
//! whatever order is convenient, because recovery recomputes them.
//!
//! At any instant the chain therefore tiles the heap; what a crash can leave
//! behind is a stale `prev_phys` or `PREV_FREE`, a seal that does not match
//! yet, two adjacent free blocks, or free lists and bitmaps that disagree
//! with the chain. The next locker is told the owner died
//! (`RobustGuard::recovered`) and rebuilds: it walks the chain from the
//! heap start, rewrites every `prev_phys` and `PREV_FREE`, coalesces
//! adjacent free blocks, reseals every header (a torn one, whose size is
//! committed but not yet its seal, is taken as its size word says), refiles
//! every free block and recomputes the counters from the live blocks. A size word that cannot be right (below the
//! minimum, not a multiple of 16, past the heap end) is not something this
//! order produces (a stray write through a stale pointer is): the operation
//! that meets it reports [`Error::CorruptHeader`], and the rebuild that
//! follows *quarantines* the damage instead of giving up on the heap. It
//! looks past the broken header for the first sealed header from which the
//! chain, every block linking back to the one before it, reaches the heap
//! end, and fences the bytes in between off as one `QUARANTINED` block:
//! never handed out, freed or merged, so a live block inside it keeps its
//! bytes and its owner's free of it is refused. The rest of the heap stays
//! usable, and [`recover`](ShmAllocator::recover) reports the bytes fenced
//! off. A block the dying process was allocating
//! may stay allocated with nobody to free it; a free whose free bit was
//! committed completes; no block is ever handed out twice.
//!
//! An inconsistency found in the middle of an ordinary operation (a broken
//! list link, say) is reported as [`Error::CorruptHeader`], and the
//! structure is rebuilt before the lock is released.

/// Block headers: reading, sealing, committing.
mod blocks;
/// The integrity walk and the free figures.
mod check;
/// The segregated free lists and the search for a fit.
mod lists;
/// The rebuild from the physical chain, and quarantine.
mod rebuild;
mod thread_cache;

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use self::thread_cache::{
    cached_bytes, cached_entries, magazine_of, CachedFree, ThreadCaches, CACHED,
};

use super::counters::AllocCounters;
use super::handoff;
use super::in_segment::InSegment;
use super::memory_resource::impl_allocator_api2;
use super::segment_allocator::SegmentAllocator;
use super::shm_allocator::power_of_two_align;
use super::{AllocStats, AllocatorKind, MemContext, RecoveryReport, Region, ShmAllocator};
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::ptr::{FullPtr, Offset};
use crate::segment::header::PARAM_WORDS;
use crate::segment::Segment;
use crate::sync::repair::{self, Repair};
use crate::sync::robust_lock::{Patience, RobustLock};

/// Block sizes and payloads are multiples of this.
const GRANULE: u64 = 16;
/// Bytes of the block header before the payload.
const HEADER: u64 = 32;
/// The smallest block: a header and the two free-list links (rounded).
const MIN_BLOCK: u64 = 48;
/// Low bits of the size word that hold flags.
const FLAGS: u64 = GRANULE - 1;
/// The block is free.
const FREE: u64 = 1;
/// The previous physical block is free.
const PREV_FREE: u64 = 2;
/// The block holds bytes whose headers were destroyed (not by a crash: a
/// stray write): a rebuild fenced them off, and they are never handed out,
/// freed or merged again.
const QUARANTINED: u64 = 4;

/// log2 of the number of second-level lists per first-level class.
const SL_LOG2: u32 = 4;
const SL_COUNT: usize = 1 << SL_LOG2;
/// The bits of a second-level bitmap that name a list.
const SL_MASK: u32 = ((1u64 << SL_COUNT) - 1) as u32;
/// Sizes below `1 << FL_SHIFT` share first-level class 0.
const FL_SHIFT: u32 = SL_LOG2 + GRANULE.trailing_zeros();
const SMALL: u64 = 1 << FL_SHIFT;
/// First-level classes: enough for any segment (at most 2^47 bytes).
const FL_COUNT: usize = 48;

/// Version 2 added the thread caches, version 3 cached blocks up to 512
/// bytes (segments of earlier versions are refused: their state is laid
/// out otherwise).
const STATE_MAGIC: u64 = u64::from_ne_bytes(*b"TLSFv003");
const SEAL_KEY: u64 = 0x6b1d_f3a5_9e27_c40f;

/// How long an operation waits for the lock held by a live process.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

#[repr(C)]
struct FreeListState {
    lock: RobustLock,
    magic: AtomicU64,
    heap_start: AtomicU64,
    heap_end: AtomicU64,
    last_block: AtomicU64,
    /// Sum of the sizes (headers included) of the filed free blocks.
    free_bytes: AtomicU64,
    free_blocks: AtomicU64,
    /// Set while a rebuild runs, and left set when it fails.
    needs_repair: AtomicU64,
    repairs: AtomicU64,
    fl_bitmap: AtomicU64,
    sl_bitmap: [AtomicU32; FL_COUNT],
    heads: [[AtomicU64; SL_COUNT]; FL_COUNT],
    counters: AllocCounters,
    caches: ThreadCaches,
}

#[repr(C)]
struct BlockHeader {
    size_flags: AtomicU64,
    prev_phys: AtomicU64,
    seal: AtomicU64,
    requested: AtomicU64,
}

#[repr(C)]
struct FreeLinks {
    next: AtomicU64,
    prev: AtomicU64,
}

const _: () = assert!(std::mem::size_of::<BlockHeader>() as u64 == HEADER);
const _: () = assert!(HEADER + std::mem::size_of::<FreeLinks>() as u64 <= MIN_BLOCK);
const _: () = assert!(MIN_BLOCK % GRANULE == 0);

/// The seal of a block: binds its offset, size, free bit and requested
/// length, so a pointer into the middle of a block (or a stale header left
/// inside a merged block) is not taken for a block start.
fn seal(block: u64, size_free: u64, requested: u64) -> u64 {
    let mut x = block.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ size_free.rotate_left(23)
        ^ requested.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ SEAL_KEY;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The class (first level, second level) that a block of `size` is filed in.
fn class_of(size: u64) -> Option<(usize, usize)> {
    if size < SMALL {
        return Some((0, (size / (SMALL / SL_COUNT as u64)) as usize));
    }
    let msb = 63 - size.leading_zeros();
    let fl = (msb - FL_SHIFT + 1) as usize;
    if fl >= FL_COUNT {
        return None;
    }
    let sl = ((size >> (msb - SL_LOG2)) as usize) ^ SL_COUNT;
    Some((fl, sl))
}

/// The first class whose every block holds at least `size` bytes.
fn search_class(size: u64) -> Option<(usize, usize)> {
    if size < SMALL {
        return class_of(size);
    }
    let msb = 63 - size.leading_zeros();
    class_of(size.checked_add((1u64 << (msb - SL_LOG2)) - 1)?)
}

/// The block size that serves a request of `requested` bytes.
fn block_size_for(requested: u64) -> Option<u64> {
    let bytes = requested.max(1).checked_add(HEADER + GRANULE - 1)? & !(GRANULE - 1);
    Some(bytes.max(MIN_BLOCK))
}

/// Bytes to split off the front of the free block at `block` so that the
/// payload after them is aligned to `align`: 0, or at least a minimal block.
fn front_gap(block: u64, align: u64) -> u64 {
    if align <= GRANULE {
        return 0;
    }
    let payload = (block + HEADER).next_multiple_of(align);
    let gap = payload - HEADER - block;
    if gap != 0 && gap < MIN_BLOCK {
        gap + align
    } else {
        gap
    }
}

/// The general-purpose allocator: variable sizes, any power-of-two alignment
/// up to the page size, O(1) allocate and free with splitting and
/// coalescing, shared by every process that attaches the segment.
///
/// The free lists sit behind a lock that survives its owner: if a process
/// dies in the middle of an operation, the next one to lock rebuilds the
/// structure from the blocks themselves (see the module documentation for
/// the write order that makes this possible). A free is validated (in the
/// heap, aligned, a sealed block start, live) and a bad one is
/// [`Error::InvalidFree`] with nothing changed. When the segment may grow,
/// running out grows it. [`reallocate`](ShmAllocator::reallocate) grows into
/// a free neighbour or shrinks in place when it can, without copying.
///
/// ```
/// use shmkit::{FreeListAllocator, SegmentAllocator, SegmentOptions, ShmAllocator};
///
/// let heap = FreeListAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let a = heap.allocate(100)?;
/// let b = heap.allocate_aligned(300, 256)?;
/// assert_eq!(b.offset().raw() % 256, 0);
/// // SAFETY: no block is used after its free or move.
/// unsafe {
///     heap.free(a)?;
///     assert!(heap.free(a).is_err()); // a double free is refused
///     let b = heap.reallocate(b, 600)?; // grows in place into the free space
///     heap.free(b)?;
/// }
/// heap.check()?;
/// assert_eq!(heap.stats().live_allocations, 0);
/// assert_eq!(heap.stats().fragmentation(), 0.0);
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct FreeListAllocator {
    shell: InSegment<FreeListState>,
    heap_start: u64,
}

impl Drop for FreeListAllocator {
    /// Gives the calling thread's cached blocks back to the heap (a thread
    /// that goes on to use the segment through another handle just caches
    /// anew).
    fn drop(&mut self) {
        self.give_back_on_drop();
    }
}

impl std::fmt::Debug for FreeListAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreeListAllocator")
            .field("segment", self.segment())
            .field("stats", &self.stats())
            .finish()
    }
}

impl SegmentAllocator for FreeListAllocator {
    const KIND: AllocatorKind = AllocatorKind::FreeList;
    type Params = ();

    fn encode_params(_: &()) -> [u64; PARAM_WORDS] {
        [0; PARAM_WORDS]
    }

    fn state_len(_: &()) -> u64 {
        std::mem::size_of::<FreeListState>() as u64
    }

    fn initialize(segment: &Segment, _: &()) -> Result<()> {
        let ptr = segment.allocator_state::<FreeListState>()?;
        // SAFETY: the creator runs this before *ready*, so nobody else uses
        // the state; `allocator_state` checked size and alignment. All-zero
        // bytes are a valid state (atomics), written before any reference.
        unsafe {
            ptr.as_ptr().write_bytes(0, 1);
            std::ptr::addr_of_mut!((*ptr.as_ptr()).lock).write(RobustLock::new());
        }
        // SAFETY: just initialized; atomics only.
        let state = unsafe { ptr.as_ref() };
        let start = heap_start_of(segment);
        let end = segment.size() & !(GRANULE - 1);
        if end < start || end - start < MIN_BLOCK {
            return Err(Error::invalid_size(format!(
                "the segment leaves {} bytes for the heap, at least {MIN_BLOCK} are needed",
                end.saturating_sub(start)
            )));
        }
        state.heap_start.store(start, Ordering::Relaxed);
        state.heap_end.store(end, Ordering::Relaxed);
        state.last_block.store(start, Ordering::Relaxed);
        let mut heap = Heap {
            segment,
            state,
            start,
            end,
        };
        heap.write_header(start, end - start, FREE, 0, 0)?;
        heap.insert(start, end - start)?;
        state.magic.store(STATE_MAGIC, Ordering::Release);
        Ok(())
    }

    fn from_segment(segment: Segment) -> Result<Self> {
        segment.expect_allocator(Self::KIND, None)?;
        let heap_start = heap_start_of(&segment);
        let allocator = FreeListAllocator {
            shell: InSegment::new(segment)?,
            heap_start,
        };
        let recorded = allocator.state().heap_start.load(Ordering::Acquire);
        if allocator.state().magic.load(Ordering::Acquire) != STATE_MAGIC {
            return Err(Error::corrupt("free-list state has a bad magic word"));
        }
        if recorded != heap_start {
            return Err(Error::corrupt(format!(
                "free-list heap starts at {recorded}, expected {heap_start}"
            )));
        }
        Ok(allocator)
    }
}

fn heap_start_of(segment: &Segment) -> u64 {
    segment.data_offset().next_multiple_of(GRANULE)
}

impl FreeListAllocator {
    /// The segment this allocator manages.
    #[inline]
    pub fn segment(&self) -> &Segment {
        self.shell.segment()
    }

    /// How many times the structure was rebuilt from its blocks (after a
    /// process died holding the lock, or after an inconsistency was found).
    pub fn repairs(&self) -> u64 {
        self.state().repairs.load(Ordering::Acquire)
    }

    /// Rebuilds the free lists, bitmaps and counters from the physical
    /// chain of blocks now, as the recovery after a dead lock owner does,
    /// quarantining what a broken header makes unreadable; returns the
    /// bytes it fenced off.
    pub fn repair(&self) -> Result<u64> {
        self.locked(false, |heap| heap.rebuild())
    }

    /// The accounting, with the free-space figures of a walk under the lock
    /// (`(free bytes, largest free block), heap bytes`) when there is one,
    /// else what the shared words say, plus the room to grow; `free_tail` is
    /// the free block at the heap's end that growth would merge with.
    fn stats_from(&self, walked: Option<((u64, u64), u64)>, free_tail: u64) -> AllocStats {
        let state = self.state();
        let (allocated_bytes, live_allocations, peak_bytes) =
            state.counters.snapshot(self.segment());
        let ((free_bytes, largest_free_block), capacity) = walked.unwrap_or_else(|| {
            let end = state.heap_end.load(Ordering::Acquire);
            let bytes = state.free_bytes.load(Ordering::Acquire);
            let blocks = state.free_blocks.load(Ordering::Acquire);
            (
                (bytes.saturating_sub(blocks.saturating_mul(HEADER)), 0),
                end.saturating_sub(self.heap_start),
            )
        });
        let heap_end = self.heap_start.saturating_add(capacity);
        let (room, grown) = room_to_grow(self.segment(), heap_end, free_tail);
        AllocStats {
            allocated_bytes,
            peak_bytes,
            live_allocations,
            free_bytes,
            largest_free_block,
            capacity,
        }
        .with_room_to_grow(room, grown)
    }

    #[inline]
    fn state(&self) -> &FreeListState {
        self.shell.state()
    }

    /// Runs `op` under the lock by the one repair rule (`sync::repair`). A
    /// `mutating` operation that meets a torn header asks for a rebuild,
    /// which runs before the lock is released; the error is reported, and
    /// the operation does not run again (the rebuild may have fenced off
    /// the very block it was about).
    fn locked<R>(&self, mutating: bool, op: impl FnOnce(&mut Heap<'_>) -> Result<R>) -> Result<R> {
        self.locked_noting_takeover(Patience::Wait(LOCK_PATIENCE), mutating, |heap, _| op(heap))
    }

    /// [`locked`](Self::locked) for an operation of the trait, which waits
    /// for the lock as `ctx` allows.
    fn locked_for<R>(
        &self,
        ctx: &MemContext,
        op: impl FnOnce(&mut Heap<'_>) -> Result<R>,
    ) -> Result<R> {
        self.locked_noting_takeover(ctx.patience(LOCK_PATIENCE), true, |heap, _| op(heap))
    }

    /// [`locked`](Self::locked), telling `op` whether the lock was taken
    /// over from a dead owner.
    fn locked_noting_takeover<R>(
        &self,
        patience: Patience,
        mutating: bool,
        op: impl FnOnce(&mut Heap<'_>, bool) -> Result<R>,
    ) -> Result<R> {
        let state = self.state();
        let guard = state.lock.lock_with(patience)?;
        let mut heap = Heap {
            segment: self.segment(),
            state,
            start: self.heap_start,
            end: state.heap_end.load(Ordering::Acquire),
        };
        let took_over = guard.recovered();
        // Runs at most once: free-list operations are not retried.
        let mut op = Some(op);
        let result = repair::run(&guard, &mut heap, |heap| {
            let op = op.take().expect("a free-list operation runs once");
            let result = heap.check_end().and_then(|()| op(heap, took_over));
            if mutating && matches!(result, Err(Error::CorruptHeader { .. })) {
                heap.state.needs_repair.store(1, Ordering::Release);
            }
            result
        });
        drop(guard);
        result
    }
}

impl Repair for Heap<'_> {
    /// A rebuild may quarantine a torn block: what a failed operation was
    /// about may be gone, so it is reported, not run again.
    const RETRY_AFTER_REPAIR: bool = false;

    fn repair_wanted(&self) -> bool {
        self.state.needs_repair.load(Ordering::Acquire) != 0
    }

    fn repair(&mut self) -> Result<()> {
        self.rebuild().map(drop)
    }

    fn settle_dead_holder(&mut self, dead: u64) {
        self.settle_allocation_of(dead);
    }
}

impl Heap<'_> {
    /// Settles the allocation the dead owner of the lock had in progress
    /// (see `alloc::handoff`): a block it committed but never handed out
    /// is freed.
    fn settle_allocation_of(&mut self, dead: u64) {
        let segment = self.segment;
        handoff::settle_tentative(segment, dead, |payload| {
            // Not a live block: the commit never happened, nothing to undo.
            if let Ok(requested) = self.free(payload) {
                self.state.counters.on_free(segment, requested);
            }
        });
    }
}

/// The heap as seen under the lock: the segment, the state and the bounds.
struct Heap<'a> {
    segment: &'a Segment,
    state: &'a FreeListState,
    start: u64,
    end: u64,
}

/// A live block, validated.
struct UsedBlock<'a> {
    header: &'a BlockHeader,
    block: u64,
    size: u64,
    flags: u64,
    requested: u64,
}

impl<'a> Heap<'a> {
    /// Turns the free block `block` (`size` bytes) into a live block of
    /// `need` bytes aligned to `align`, splitting off front padding and the
    /// tail as free blocks. Returns the live block's offset.
    fn carve(
        &mut self,
        block: u64,
        size: u64,
        need: u64,
        align: u64,
        requested: u64,
    ) -> Result<u64> {
        let (header, _, flags) = self.block(block)?;
        self.unlink(block, size)?;
        let last = self.state.last_block.load(Ordering::Acquire);
        let gap = front_gap(block, align);
        let (mut live, mut live_size, mut live_flags) = (block, size, flags);
        if gap > 0 {
            // `block` keeps the first `gap` bytes, free; the rest follows.
            live = block + gap;
            live_size = size - gap;
            live_flags = FREE | PREV_FREE;
            self.write_header(live, live_size, live_flags, block, 0)?;
            self.link_next(live + live_size, live, true)?;
            self.commit(header, block, gap, flags, 0);
            self.insert(block, gap)?;
            if last == block {
                self.state.last_block.store(live, Ordering::Release);
            }
        }
        let live_header = self.header(live)?;
        if live_size - need >= MIN_BLOCK {
            let rest = live + need;
            let rest_size = live_size - need;
            self.write_header(rest, rest_size, FREE, live, 0)?;
            self.link_next(rest + rest_size, rest, true)?;
            self.commit(live_header, live, need, live_flags, 0);
            self.insert(rest, rest_size)?;
            if self.state.last_block.load(Ordering::Acquire) == live {
                self.state.last_block.store(rest, Ordering::Release);
            }
            live_size = need;
        }
        // The hand-off log (see `alloc::handoff`): tentative before the
        // commit, final after it, both under the lock.
        let log = handoff::my_slot(self.segment);
        if let Some(log) = log {
            log.intend(live + HEADER);
        }
        crash_point!("free_list.alloc.intended");
        // A block of a cached size is committed marked cached, then the mark
        // goes: a racing cached free of a stale offset (a double free of
        // this block's last life) swaps from an unmarked word, so it cannot
        // take the block between the commit and its hand-out.
        let mark = if magazine_of(live_size).is_some() {
            CACHED
        } else {
            0
        };
        self.commit(
            live_header,
            live,
            live_size,
            (live_flags & PREV_FREE) | mark,
            requested,
        );
        if mark != 0 {
            live_header.size_flags.fetch_and(!CACHED, Ordering::AcqRel);
        }
        self.link_next(live + live_size, live, false)?;
        crash_point!("free_list.alloc.committed");
        if let Some(log) = log {
            log.record(live + HEADER);
        }
        Ok(live)
    }

    /// Validates `offset` as the payload of a live block; anything else is
    /// [`Error::InvalidFree`].
    fn used_block(&self, offset: u64) -> Result<UsedBlock<'a>> {
        self.used_block_as(offset, false)
    }

    /// [`used_block`](Self::used_block) for a block in use that is (when
    /// `cached`) or is not in a thread cache.
    fn used_block_as(&self, offset: u64, cached: bool) -> Result<UsedBlock<'a>> {
        let invalid = Error::InvalidFree { offset };
        if offset % GRANULE != 0 || offset < self.start + HEADER || offset >= self.end {
            return Err(invalid);
        }
        let block = offset - HEADER;
        let (header, size, flags) = self
            .block(block)
            .map_err(|_| Error::InvalidFree { offset })?;
        let requested = header.requested.load(Ordering::Acquire);
        if flags & (FREE | QUARANTINED) != 0
            || (flags & CACHED != 0) != cached
            || requested > size - HEADER
            || header.seal.load(Ordering::Acquire) != seal(block, size, requested)
        {
            return Err(invalid);
        }
        // A real block start is where its neighbours say it is. A neighbour
        // that cannot be read means either that `offset` is no real block
        // or that the heap is damaged: the chain tells which.
        let unreadable = |_| self.broken_chain().unwrap_or(Error::InvalidFree { offset });
        let prev = header.prev_phys.load(Ordering::Acquire);
        if block == self.start {
            if prev != 0 || flags & PREV_FREE != 0 {
                return Err(invalid);
            }
        } else {
            let (_, prev_size, prev_flags) = self.block(prev).map_err(unreadable)?;
            if prev.checked_add(prev_size) != Some(block)
                || (prev_flags & FREE != 0) != (flags & PREV_FREE != 0)
            {
                return Err(invalid);
            }
        }
        let next = block + size;
        if next < self.end {
            let (next_header, _, next_flags) = self.block(next).map_err(unreadable)?;
            if next_header.prev_phys.load(Ordering::Acquire) != block || next_flags & PREV_FREE != 0
            {
                return Err(invalid);
            }
        }
        Ok(UsedBlock {
            header,
            block,
            size,
            flags,
            requested,
        })
    }

    /// Frees every block still marked cached once every magazine is empty:
    /// the ones a killed thread left between its cache and the heap.
    /// Returns how many.
    fn free_orphans(&mut self) -> Result<u64> {
        let mut orphans = Vec::new();
        let mut block = self.start;
        while block < self.end {
            let (_, size, flags) = self.block(block)?;
            if flags & CACHED != 0 {
                orphans.push(block + HEADER);
            }
            block += size;
        }
        for &offset in &orphans {
            self.free_as(offset, true)?;
        }
        Ok(orphans.len() as u64)
    }

    /// The error of the first header the physical chain cannot pass, if
    /// any (a reason to rebuild, which quarantines it).
    fn broken_chain(&self) -> Option<Error> {
        let mut block = self.start;
        while block < self.end {
            match self.block(block) {
                Ok((_, size, _)) => block += size,
                Err(err) => return Some(err),
            }
        }
        None
    }

    /// Frees the live block whose payload is at `offset`, coalescing it
    /// with free neighbours; returns the length it recorded.
    fn free(&mut self, offset: u64) -> Result<u64> {
        self.free_as(offset, false)
    }

    /// [`free`](Self::free) of a block that is (when `cached`: a thread
    /// cache gives it back) or is not cached.
    fn free_as(&mut self, offset: u64, cached: bool) -> Result<u64> {
        let used = self.used_block_as(offset, cached)?;
        let UsedBlock {
            header,
            block,
            size,
            flags,
            requested,
        } = used;
        // Under the lock the block is ours alone (a cached free racing to
        // take it loses, or makes the commit below fail).
        self.segment.scrub(offset, size - HEADER);
        let last = self.state.last_block.load(Ordering::Acquire);
        let mut is_last = last == block;
        // Mark it free (the commit), then tell the next block.
        let own_flags = FREE | (flags & PREV_FREE);
        self.commit_live(&used, size, own_flags, 0)?;
        let next = block + size;
        crash_point!("free_list.free.committed");
        self.link_next(next, block, true)?;
        let (mut merged, mut merged_size) = (block, size);
        if next < self.end {
            let (_, next_size, next_flags) = self.block(next)?;
            if next_flags & FREE != 0 {
                self.unlink(next, next_size)?;
                merged_size += next_size;
                self.commit(header, block, merged_size, own_flags, 0);
                self.link_next(block + merged_size, block, true)?;
                is_last |= last == next;
            }
        }
        if flags & PREV_FREE != 0 {
            let prev = header.prev_phys.load(Ordering::Acquire);
            let (prev_header, prev_size, prev_flags) = self.block(prev)?;
            if prev_flags & FREE == 0 || prev + prev_size != block {
                return Err(Error::corrupt(format!(
                    "block {block} says its previous block {prev} is free; it is not"
                )));
            }
            self.unlink(prev, prev_size)?;
            merged = prev;
            merged_size += prev_size;
            self.commit(prev_header, prev, merged_size, prev_flags, 0);
            self.link_next(prev + merged_size, prev, true)?;
        }
        if is_last {
            self.state.last_block.store(merged, Ordering::Release);
        }
        self.insert(merged, merged_size)?;
        Ok(requested)
    }

    /// Resizes the live block at `offset` in place if it can: shrinking
    /// splits the tail off, growing takes from a free next neighbour.
    fn resize(&mut self, offset: u64, new_size: u64) -> Result<Option<u64>> {
        let used = self.used_block(offset)?;
        let Some(need) = block_size_for(new_size) else {
            return Ok(None);
        };
        let UsedBlock {
            block,
            size,
            flags,
            requested,
            ..
        } = used;
        let next = block + size;
        let next_free = if next < self.end {
            let (_, next_size, next_flags) = self.block(next)?;
            (next_flags & FREE != 0).then_some(next_size)
        } else {
            None
        };
        let available = size + next_free.unwrap_or(0);
        if need > available {
            return Ok(None);
        }
        let last = self.state.last_block.load(Ordering::Acquire);
        let flags = flags & PREV_FREE;
        if need <= size && size - need < MIN_BLOCK {
            // Fits as it is: only the recorded length changes.
            self.commit_live(&used, size, flags, new_size)?;
            return Ok(Some(requested));
        }
        if let Some(next_size) = next_free {
            self.unlink(next, next_size)?;
        }
        let end = block + available;
        if available - need >= MIN_BLOCK {
            let rest = block + need;
            self.write_header(rest, available - need, FREE, block, 0)?;
            self.link_next(end, rest, true)?;
            self.commit_live_or_repair(&used, need, flags, new_size)?;
            self.insert(rest, available - need)?;
            if last == block || (next_free.is_some() && last == next) {
                self.state.last_block.store(rest, Ordering::Release);
            }
        } else {
            self.commit_live_or_repair(&used, available, flags, new_size)?;
            self.link_next(end, block, false)?;
            if next_free.is_some() && last == next {
                self.state.last_block.store(block, Ordering::Release);
            }
        }
        Ok(Some(requested))
    }

    /// The largest request that would succeed, growing the heap if need be
    /// (what an out-of-memory error reports as available).
    fn largest_request(&self) -> Result<u64> {
        let (_, largest) = room_to_grow(self.segment, self.end, self.free_tail()?);
        Ok(self.free_summary()?.1.max(largest))
    }

    /// The size of the last block if it is free (growth merges with it).
    fn free_tail(&self) -> Result<u64> {
        let last = self.state.last_block.load(Ordering::Acquire);
        let (_, size, flags) = self.block(last)?;
        Ok(if flags & FREE != 0 { size } else { 0 })
    }

    /// Turns the space between the heap end and the segment's current size
    /// into a free block (merged with a free last block).
    fn absorb_growth(&mut self) -> Result<()> {
        let new_end = self.segment.size() & !(GRANULE - 1);
        if new_end <= self.end || new_end - self.end < MIN_BLOCK {
            return Ok(());
        }
        let old_end = self.end;
        let last = self.state.last_block.load(Ordering::Acquire);
        let (last_header, last_size, last_flags) = self.block(last)?;
        if last + last_size != old_end {
            return Err(Error::corrupt(format!(
                "last block {last} does not reach the heap end {old_end}"
            )));
        }
        let last_free = last_flags & FREE != 0;
        let extra = new_end - old_end;
        let prev_flag = if last_free { PREV_FREE } else { 0 };
        self.write_header(old_end, extra, FREE | prev_flag, last, 0)?;
        // Commit: the chain now ends with the new block.
        self.state.heap_end.store(new_end, Ordering::Release);
        self.end = new_end;
        if last_free {
            self.unlink(last, last_size)?;
            let total = last_size + extra;
            self.commit(last_header, last, total, last_flags, 0);
            self.insert(last, total)?;
        } else {
            self.state.last_block.store(old_end, Ordering::Release);
            self.insert(old_end, extra)?;
        }
        Ok(())
    }
}

impl ShmAllocator for FreeListAllocator {
    fn backing_segment(&self) -> Option<&Segment> {
        Some(self.segment())
    }

    fn kind(&self) -> AllocatorKind {
        AllocatorKind::FreeList
    }

    fn allocate_offset(&self, ctx: &MemContext, size: usize, align: usize) -> Result<u64> {
        let align = power_of_two_align(align, self.segment().max_align())? as u64;
        let requested = size as u64;
        let out_of_memory = |available| Error::OutOfMemory {
            requested,
            available,
        };
        let need = block_size_for(requested).ok_or_else(|| out_of_memory(0))?;
        let search = if align <= GRANULE {
            Some(need)
        } else {
            need.checked_add(align + HEADER)
        }
        .ok_or_else(|| out_of_memory(0))?;
        if align <= GRANULE {
            if let Some(offset) = self.cached_allocate(need, requested) {
                return Ok(offset);
            }
        }
        // A miss of a cached size refills the caller's magazine too.
        let refill = if align <= GRANULE {
            self.empty_magazine_for(need)
        } else {
            None
        };
        let locked_allocation = || {
            self.locked_for(ctx, |heap| {
                heap.absorb_growth()?;
                if let Some(magazine) = refill {
                    if let Some(payload) = heap.allocate_refilling(need, requested, magazine)? {
                        heap.state.counters.on_allocate(heap.segment, requested);
                        return Ok(payload);
                    }
                }
                loop {
                    if let Some((block, block_size)) = heap.find(need, search, align)? {
                        let live = heap.carve(block, block_size, need, align, requested)?;
                        heap.state.counters.on_allocate(heap.segment, requested);
                        return Ok(live + HEADER);
                    }
                    // Past the current size at least: a search that failed
                    // although the tail would seem to hold it still needs room.
                    // A minimum block past the request, so the rest stays a
                    // block, unless that is beyond the maximum and the request
                    // alone is not (it then takes the whole tail).
                    let current = heap.segment.size();
                    let top = heap.segment.max_size() & !(GRANULE - 1);
                    let wanted = (heap.end - heap.free_tail()?)
                        .checked_add(search)
                        .map(|end| end.saturating_add(MIN_BLOCK).min(top).max(end))
                        .map(|wanted| wanted.max(current.saturating_add(1)));
                    match wanted {
                        Some(wanted) if heap.segment.grow_to_fit(wanted)? => {
                            let before = heap.end;
                            heap.absorb_growth()?;
                            if heap.end == before {
                                return Err(out_of_memory(heap.largest_request()?));
                            }
                        }
                        _ => return Err(out_of_memory(heap.largest_request()?)),
                    }
                }
            })
        };
        match locked_allocation() {
            // Cached blocks may be what is missing: give the caller's and
            // the idle slots' back, and try once more.
            Err(Error::OutOfMemory { .. })
                if self.locked_for(ctx, |heap| Ok(self.give_back_idle(heap)))? =>
            {
                locked_allocation()
            }
            result => result,
        }
    }

    unsafe fn free_offset(&self, ctx: &MemContext, offset: u64) -> Result<()> {
        if let CachedFree::Cached = self.cached_free(offset)? {
            return Ok(());
        }
        handoff::forget_mine(self.segment(), offset);
        self.locked_for(ctx, |heap| {
            let requested = heap.free(offset)?;
            heap.state.counters.on_free(heap.segment, requested);
            Ok(())
        })
    }

    fn usable_size(&self, offset: u64) -> Result<usize> {
        self.locked(false, |heap| {
            let used = heap.used_block(offset)?;
            Ok((used.size - HEADER) as usize)
        })
    }

    fn full_ptr(&self, offset: u64) -> Result<FullPtr<u8>> {
        if offset % GRANULE != 0
            || offset < self.heap_start + HEADER
            || offset >= self.segment().size()
        {
            return Err(Error::InvalidFree { offset });
        }
        self.segment()
            .full_ptr_from_offset(Offset::from_raw(offset))
    }

    fn offset_of_local(&self, ptr: NonNull<u8>) -> Result<u64> {
        self.segment()
            .offset_of(ptr.as_ptr().cast_const())
            .map(|offset| offset.raw())
    }

    fn stats(&self) -> AllocStats {
        self.try_stats()
            .unwrap_or_else(|_| self.stats_from(None, 0))
    }

    /// Gives the caller's cached blocks back to the heap first, so that
    /// the figures are exact while one thread allocates.
    fn try_stats(&self) -> Result<AllocStats> {
        let (summary, tail) = self.locked(false, |heap| {
            self.give_back_mine(heap);
            heap.state.caches.recount_if_wanted(|| heap.recount())?;
            Ok((
                (heap.free_summary()?, heap.end - heap.start),
                heap.free_tail()?,
            ))
        })?;
        Ok(self.stats_from(Some(summary), tail))
    }

    /// Walks the chain and the lists under the lock; the thread caches and
    /// the accounting are compared too when a pass sees no cached operation
    /// begin or end (cached frees and allocations take no lock), which with
    /// other threads busy may not come: those checks are then skipped.
    fn check(&self) -> Result<()> {
        self.locked(false, |heap| heap.check_beside_caches())
    }

    /// Takes the lock (over from a dead owner, if one holds it) and rebuilds
    /// the lists and counters from the chain, as the next locker after a
    /// crash would. `before` is what the shared words said (a walk would
    /// take the lock, and with it repair first).
    unsafe fn recovery_pass(&self) -> Result<RecoveryReport> {
        let before = self.stats_from(None, 0);
        let (took_over, quarantined, orphans) =
            self.locked_noting_takeover(Patience::Wait(LOCK_PATIENCE), true, |heap, took_over| {
                // The rebuild first: it fences off damage a walk of the
                // cached blocks would stop at.
                let quarantined = heap.rebuild()?;
                let orphans = self.give_back_everything(heap)?;
                // A cached allocation a killed thread had begun: its block,
                // if the thread took it, was never handed out.
                handoff::settle_dead_tentatives(heap.segment, |payload| {
                    let _ = heap.free(payload);
                });
                // What the killed threads' cached operations left is mended:
                // count again, alone.
                heap.state.caches.forget_interrupted();
                heap.recount()?;
                Ok((took_over, quarantined, orphans))
            })?;
        let report = Ok(RecoveryReport {
            locks_taken_over: u64::from(took_over),
            bytes_quarantined: quarantined,
            blocks_reclaimed: orphans,
            ..RecoveryReport::rebuilt(before, self.stats())
        }
        .with_handoffs(self.segment()));
        // Records of blocks the pass freed (a killed thread's cached block
        // it was taking) name nothing now.
        handoff::forget_dead_records(self.segment(), |offset| self.usable_size(offset).is_err());
        report
    }

    /// Every block in offset order, after giving the caller's cached blocks
    /// back (as [`try_stats`](ShmAllocator::try_stats) does); a cached block
    /// counts as free.
    fn regions(&self, visit: &mut dyn FnMut(Region)) -> Result<()> {
        self.locked(false, |heap| {
            self.give_back_mine(heap);
            let mut block = heap.start;
            while block < heap.end {
                let (_, size, flags) = heap.block(block)?;
                let used = if flags & (FREE | CACHED) != 0 {
                    0
                } else {
                    size
                };
                visit(Region {
                    offset: block,
                    len: size,
                    used,
                });
                block += size;
            }
            Ok(())
        })
    }

    unsafe fn resize_in_place(
        &self,
        ctx: &MemContext,
        offset: u64,
        new_size: usize,
    ) -> Result<bool> {
        self.locked_for(ctx, |heap| {
            Ok(match heap.resize(offset, new_size as u64)? {
                Some(old) => {
                    heap.state
                        .counters
                        .on_resize(heap.segment, old, new_size as u64);
                    true
                }
                None => false,
            })
        })
    }
}

impl_allocator_api2!(FreeListAllocator);

/// Read-modify-write of a word that only the holder of the heap's lock
/// writes: a plain load and a release store, with no locked instruction
/// (the lock already orders every writer). Returns the old value.
#[inline]
fn locked_update(word: &AtomicU64, change: impl FnOnce(u64) -> u64) -> u64 {
    let old = word.load(Ordering::Relaxed);
    word.store(change(old), Ordering::Release);
    old
}

/// [`locked_update`] for 32-bit words.
#[inline]
fn locked_update32(word: &AtomicU32, change: impl FnOnce(u32) -> u32) -> u32 {
    let old = word.load(Ordering::Relaxed);
    word.store(change(old), Ordering::Release);
    old
}

/// Rewrites a block in use (cached or not) for a rebuild: its `PREV_FREE`,
/// and its length and seal where they are torn, keeping `CACHED`, which a
/// cached free or allocation may flip meanwhile.
fn reseal_live(header: &BlockHeader, block: u64, size: u64, prev_free: u64) {
    let _ = header
        .size_flags
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| {
            Some(size | prev_free | (word & CACHED))
        });
    // The seal before the length: a cached allocation writes the length
    // first, so a new seal read here comes with its new length.
    let sealed = header.seal.load(Ordering::Acquire);
    let recorded = header.requested.load(Ordering::Acquire);
    let requested = recorded.min(size - HEADER);
    if requested != recorded {
        header.requested.store(requested, Ordering::Relaxed);
    }
    let expected = seal(block, size, requested);
    if sealed != expected {
        header.seal.store(expected, Ordering::Release);
    }
}

/// The room the heap may still grow into (up to the maximum size), and the
/// largest request growth would serve: growth turns the room into one free
/// block merged with a free block at the heap's end (`free_tail`).
fn room_to_grow(segment: &Segment, heap_end: u64, free_tail: u64) -> (u64, u64) {
    let room = (segment.max_size() & !(GRANULE - 1)).saturating_sub(heap_end);
    let largest = if room >= MIN_BLOCK {
        (free_tail + room).saturating_sub(HEADER)
    } else {
        0
    };
    (room, largest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_takes_over_a_lock_a_dead_process_held() {
        use crate::sync::robust_lock::testing;
        let heap =
            FreeListAllocator::create(&crate::SegmentOptions::private().size(1 << 20)).unwrap();
        let ctx = MemContext::default();
        let kept = heap.allocate_offset(&ctx, 100, 8).unwrap();
        testing::forge_owner(&heap.state().lock, testing::dead_pid());
        // SAFETY: no other thread of this process uses the allocator meanwhile.
        let report = unsafe { heap.recover() }.unwrap();
        assert_eq!(report.locks_taken_over, 1, "{report}");
        assert!(report.rebuilt);
        assert_eq!(report.after.live_allocations, 1);
        // SAFETY: no other thread of this process uses the allocator meanwhile.
        assert_eq!(unsafe { heap.recover() }.unwrap().locks_taken_over, 0);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, kept) }.unwrap();
        heap.check().unwrap();
    }

    /// The smallest block size filed in `class`.
    fn class_floor((fl, sl): (usize, usize)) -> u64 {
        if fl == 0 {
            return sl as u64 * (SMALL / SL_COUNT as u64);
        }
        let base = 1u64 << (fl as u32 + FL_SHIFT - 1);
        base + sl as u64 * (base >> SL_LOG2)
    }

    #[test]
    fn classes_cover_sizes_in_order() {
        let mut last = (0, 0);
        let sizes = (MIN_BLOCK..1 << 20).step_by(GRANULE as usize).chain(
            (20..47).flat_map(|shift| [(1u64 << shift) - 16, 1 << shift, (1 << shift) + 16]),
        );
        for size in sizes {
            let class = class_of(size).unwrap();
            assert!(class >= last, "size {size}");
            last = class;
            assert!(class_floor(class) <= size, "size {size}");
            // Every block of the search class (and above) holds `size`.
            let search = search_class(size).unwrap();
            assert!(search >= class);
            assert!(class_floor(search) >= size, "size {size}");
            assert_eq!(class_of(class_floor(search)), Some(search));
        }
        assert_eq!(class_of(1 << 47).map(|c| c.0), Some(40));
    }

    #[test]
    fn front_gaps_align_and_leave_room() {
        for align in [32u64, 64, 128, 256, 4096] {
            for block in (0..8192u64).step_by(16) {
                let gap = front_gap(block, align);
                assert_eq!((block + gap + HEADER) % align, 0);
                assert!(gap == 0 || gap >= MIN_BLOCK);
                assert!(gap <= align + HEADER);
            }
        }
    }

    #[test]
    fn a_stray_second_level_bit_is_reported_not_followed() {
        let mut buffer = vec![0u8; 1 << 20];
        let heap = FreeListAllocator::in_buffer(&mut buffer).unwrap();
        let ctx = MemContext::default();
        let block = heap.allocate_offset(&ctx, 100, 8).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, block) }.unwrap();
        // Mark a list past the last one in every class, as a flipped bit would.
        for fl in 0..FL_COUNT {
            heap.state().sl_bitmap[fl].fetch_or(1 << SL_COUNT, Ordering::Relaxed);
        }
        let err = heap.check().unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        // Allocation ignores the bit instead of indexing past the lists.
        let again = heap.allocate_offset(&ctx, 100, 8).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, again) }.unwrap();
        let _ = heap.stats();
    }
}
