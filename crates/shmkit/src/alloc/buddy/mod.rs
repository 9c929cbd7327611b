//! The buddy allocator: power-of-two blocks that split on allocate and merge
//! with their buddy on free, shared by every process that attaches the
//! segment.
//!
//! # Layout
//!
//! ```text
//! allocator state area (BuddyState, 128-aligned)
//!   byte   0  lock word (RobustLock: 0, or owner pid << 32 | thread + 1)
//!   byte   8  min order            } fixed at creation, recomputed and
//!   byte  16  heap start           } compared on attach
//!   byte  24  units per table      }
//!   byte  32  heap end             (grows with the segment)
//!   byte  40  repair pending       (1 while the lists must be rebuilt)
//!   byte  64  free-list heads      [u64; 48], one per order, 0 = empty
//!   byte 448  free-list lengths    [u64; 48]
//!   byte 896  AllocCounters        (its own cache lines)
//! data area
//!   state table  one byte per minimum-size unit of the heap at max_size
//!   size table   one u32 per unit: the size the caller asked for
//!   heap         starts page-aligned; block of order k is 2^k-aligned
//!                relative to it
//! ```
//!
//! A state byte is `0x80 | allocated << 6 | order` for the unit where a
//! block starts and 0 for every other unit. Free blocks carry two links
//! (next, previous: segment offsets) in their first 16 bytes; everything
//! else about a block, including whether it is live, is in the tables,
//! outside the blocks, so `free` can validate any offset.
//!
//! The tables are sized from the segment's *maximum* size so it can grow;
//! the trait gives `state_len` only the parameters, so they sit at the start
//! of the data area instead of the state area. They cost 5 bytes per
//! minimum block of the maximum size (8 % with the default 64-byte minimum),
//! but only as the heap reaches the units they describe: creation extends
//! the segment over them without backing them, and every growth of the heap
//! backs the table pages of its new units before it writes them. Nothing
//! reads an entry past the heap end (such a page may be unbacked, and a fault
//! on it would commit memory, or raise SIGBUS on a full file system).
//!
//! # Crash consistency
//!
//! Every change happens under one `RobustLock`. The state table is the
//! authority; the free lists are derived from it. The table is read as a
//! walk from the heap start that jumps from block start to block start (bytes
//! inside a block are ignored), and each step writes it so that the walk
//! always sees a valid tiling:
//!
//! - split: the upper half's byte is written first, then the lower half's
//!   (shrinking) byte;
//! - merge: the lower buddy's (growing) byte is written first, then the
//!   upper buddy's byte is cleared;
//! - allocate: the size entry is written, then the byte's allocated bit is
//!   set (the commit); free clears the bit first, then merges;
//! - growth: a new block's interior bytes are cleared, its byte written, then
//!   the heap end moves past it, then it merges.
//!
//! Small blocks a thread frees may stay live in the table, marked cached in
//! their size entry, in that thread's cache: see [`thread_cache`].
//!
//! A locker told that the previous owner died (`RobustGuard::recovered`)
//! rebuilds: it validates the walk, clears stale bytes inside blocks, merges
//! free buddies, relinks every free block and re-derives the live count and
//! bytes from the tables. A half-done allocation is then either free again
//! or a live block that nobody holds (lost, as the design allows).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

use self::thread_cache::{CachedFree, ThreadCaches, CACHED_SIZE};

use super::counters::AllocCounters;
use super::handoff;
use super::in_segment::{InSegment, StatePtr};
use super::memory_resource::impl_allocator_api2;
use super::segment_allocator::SegmentAllocator;
use super::shm_allocator::power_of_two_align;
use super::{AllocStats, AllocatorKind, MemContext, RecoveryReport, Region, ShmAllocator};
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::os::memory::page_size;
use crate::ptr::{FullPtr, Offset};
use crate::segment::header::PARAM_WORDS;
use crate::segment::Segment;
use crate::sync::repair::{self, Repair};
use crate::sync::robust_lock::{Patience, RobustLock};

/// The integrity walk, the regions, and the rebuild from the table.
mod check;
/// Growth: absorbing the segment's new end into the heap.
mod growth;
/// The free lists: push, unlink, pop, coalesce, split.
mod lists;
mod thread_cache;

/// Orders 0..=47: a segment is at most 2^47 bytes.
const ORDERS: usize = 48;
const MAX_ORDER: u32 = ORDERS as u32 - 1;

/// State byte: a block starts at this unit.
const HEAD: u8 = 0x80;
/// State byte: the block is live.
const ALLOCATED: u8 = 0x40;
const ORDER_MASK: u8 = 0x3f;

/// How long an operation waits for the lock before reporting a timeout.
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// Smallest and largest minimum block sizes accepted.
const MIN_BLOCK_FLOOR: u64 = 16;
const MIN_BLOCK_CEILING: u64 = 1 << 20;

/// Parameters of a [`BuddyAllocator`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BuddyParams {
    /// The smallest block handed out, in bytes: a power of two from 16 to
    /// 1 MiB (64 by default). Smaller blocks waste less on tiny requests;
    /// the state tables cost 5 bytes per minimum block of the segment's
    /// maximum size.
    pub min_block: u64,
}

impl Default for BuddyParams {
    fn default() -> Self {
        BuddyParams { min_block: 64 }
    }
}

impl BuddyParams {
    fn min_order(&self) -> Result<u32> {
        let min = self.min_block;
        if !min.is_power_of_two() || !(MIN_BLOCK_FLOOR..=MIN_BLOCK_CEILING).contains(&min) {
            return Err(Error::invalid_size(format!(
                "buddy minimum block {min} is not a power of two from \
                 {MIN_BLOCK_FLOOR} to {MIN_BLOCK_CEILING}"
            )));
        }
        Ok(min.trailing_zeros())
    }
}

#[repr(C)]
struct BuddyState {
    lock: RobustLock,
    min_order: AtomicU64,
    heap_start: AtomicU64,
    units: AtomicU64,
    heap_end: AtomicU64,
    repair_pending: AtomicU64,
    _reserved: [AtomicU64; 2],
    heads: [AtomicU64; ORDERS],
    counts: [AtomicU64; ORDERS],
    counters: AllocCounters,
    caches: ThreadCaches,
}

/// The two links at the start of every free block.
#[repr(C)]
struct FreeLinks {
    next: AtomicU64,
    prev: AtomicU64,
}

/// Where the tables and the heap go; a pure function of the data offset,
/// the maximum size, the minimum order and the page size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Geometry {
    min_order: u32,
    table_offset: u64,
    sizes_offset: u64,
    /// Entries in each table.
    units: u64,
    heap_start: u64,
    /// The heap's end once the segment has its maximum size.
    heap_limit: u64,
}

impl Geometry {
    fn new(data_offset: u64, max_size: u64, min_order: u32, page: u64) -> Result<Geometry> {
        let min = 1u64 << min_order;
        let units = max_size.saturating_sub(data_offset) >> min_order;
        // All terms are below 2^48 (a segment is at most 2^47 bytes).
        // A line of its own for every 16 units' entries (a thread's refill
        // chunk, see `thread_cache`).
        let sizes_offset = align_up(data_offset + units, 64);
        let heap_start = align_up(sizes_offset + units * 4, page.max(8));
        if heap_start.saturating_add(min) > max_size {
            return Err(Error::invalid_size(format!(
                "a segment of at most {max_size} bytes has no room for a buddy heap \
                 after its tables ({heap_start} bytes)"
            )));
        }
        let heap_limit = heap_start + ((max_size - heap_start) & !(min - 1));
        Ok(Geometry {
            min_order,
            table_offset: data_offset,
            sizes_offset,
            units,
            heap_start,
            heap_limit,
        })
    }
}

impl Geometry {
    /// The largest block the heap could hold in `[from, to)` (offsets):
    /// blocks are aligned to their size relative to the heap start. Blocks
    /// already free below `from` that growth would merge with are not
    /// counted, so this is a lower bound.
    fn largest_block_between(&self, from: u64, to: u64) -> u64 {
        let (from, to) = (from - self.heap_start, to.saturating_sub(self.heap_start));
        (self.min_order..=MAX_ORDER)
            .rev()
            .map(|k| 1u64 << k)
            .find(|&block| align_up(from, block).saturating_add(block) <= to)
            .unwrap_or(0)
    }
}

fn align_up(value: u64, align: u64) -> u64 {
    value.div_ceil(align) * align
}

/// A buddy allocator whose whole state lives in the segment.
///
/// Blocks are powers of two from the minimum block size
/// ([`BuddyParams::min_block`], 64 bytes by default) up to the largest power
/// of two that fits the heap. Allocating takes the smallest free block that
/// fits and splits it; freeing merges a block with its buddy as long as the
/// buddy is free too. A block of order k starts at a multiple of 2^k from the
/// page-aligned heap start, so any power-of-two alignment up to the page
/// size is met by the block size alone. One robust, cross-process lock
/// guards the free lists; a process that dies holding it leaves a state that
/// the next locker repairs. When the segment was created with a maximum size
/// above its initial size, running out grows it.
///
/// ```
/// use shmkit::{BuddyAllocator, SegmentAllocator, SegmentOptions, ShmAllocator};
///
/// let buddy = BuddyAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let block = buddy.allocate(100)?;                     // a 128-byte block
/// assert_eq!(buddy.usable_size(block.offset().raw())?, 128);
/// assert_eq!(block.offset().raw() % 128, 0);
/// // SAFETY: nothing uses the block after its free (freeing by offset is
/// // `unsafe`, like `GlobalAlloc::dealloc`; a second free is refused).
/// unsafe {
///     buddy.free(block)?;
///     assert!(buddy.free(block).is_err());              // double free
/// }
/// buddy.check()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct BuddyAllocator {
    shell: InSegment<BuddyState>,
    table: StatePtr<AtomicU8>,
    sizes: StatePtr<AtomicU32>,
    geo: Geometry,
    /// The heap end up to which this process has backed (or seen backed)
    /// the table pages: a heap end word past it, written by another process
    /// or forged, has its tables backed here before any entry is read.
    tables_backed: AtomicU64,
    /// The heap end `absorb` last failed to back the tables for (0: none):
    /// allocations the free lists can serve do not try again at that size.
    absorb_stalled: AtomicU64,
}

impl Drop for BuddyAllocator {
    /// Gives the calling thread's cached blocks back to the heap.
    fn drop(&mut self) {
        self.give_back_on_drop();
    }
}

impl std::fmt::Debug for BuddyAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuddyAllocator")
            .field("segment", self.segment())
            .field("min_block", &(1u64 << self.geo.min_order))
            // Not `stats`: printing a handle takes no lock and gives no
            // cached block back.
            .field("stats", &self.stats_now())
            .finish()
    }
}

fn encode(params: &BuddyParams) -> [u64; PARAM_WORDS] {
    [params.min_block, 0, 0, 0]
}

fn decode(words: [u64; PARAM_WORDS]) -> Result<BuddyParams> {
    let params = BuddyParams {
        min_block: words[0],
    };
    if words[1..].iter().any(|&w| w != 0) {
        return Err(Error::corrupt("unknown buddy allocator parameters"));
    }
    params
        .min_order()
        .map_err(|_| Error::corrupt(format!("buddy minimum block {} is invalid", words[0])))?;
    Ok(params)
}

impl SegmentAllocator for BuddyAllocator {
    const KIND: AllocatorKind = AllocatorKind::Buddy;
    type Params = BuddyParams;

    fn encode_params(params: &BuddyParams) -> [u64; PARAM_WORDS] {
        encode(params)
    }

    fn state_len(_: &BuddyParams) -> u64 {
        std::mem::size_of::<BuddyState>() as u64
    }

    fn initialize(segment: &Segment, params: &BuddyParams) -> Result<()> {
        let min_order = params.min_order()?;
        let geo = Geometry::new(
            segment.data_offset(),
            segment.max_size(),
            min_order,
            page_size(),
        )?;
        // The tables must lie inside the current size, with some heap
        // after. Their pages are backed as the heap reaches the units they
        // describe (see `absorb`), so a large maximum costs nothing until
        // used.
        segment.grow_unbacked(geo.heap_start)?;
        segment.grow(geo.heap_start + (1u64 << min_order))?;
        let state = segment.allocator_state::<BuddyState>()?;
        // SAFETY: runs in the creator before *ready*, so no other process
        // uses the state yet; `allocator_state` checked size and alignment.
        unsafe {
            state.as_ptr().write(BuddyState {
                lock: RobustLock::new(),
                min_order: AtomicU64::new(u64::from(min_order)),
                heap_start: AtomicU64::new(geo.heap_start),
                units: AtomicU64::new(geo.units),
                heap_end: AtomicU64::new(geo.heap_start),
                repair_pending: AtomicU64::new(0),
                _reserved: [const { AtomicU64::new(0) }; 2],
                heads: [const { AtomicU64::new(0) }; ORDERS],
                counts: [const { AtomicU64::new(0) }; ORDERS],
                counters: AllocCounters::new(),
                caches: ThreadCaches::new(),
            })
        };
        let (table, sizes) = resolve_tables(segment, &geo)?;
        let tables_backed = AtomicU64::new(geo.heap_start);
        let absorb_stalled = AtomicU64::new(0);
        let heap = Heap {
            segment,
            tables_backed: &tables_backed,
            absorb_stalled: &absorb_stalled,
            // SAFETY: just written; lives in the segment, atomics only.
            state: unsafe { state.as_ref() },
            // SAFETY: `resolve_tables` checked bounds and alignment.
            table: unsafe { std::slice::from_raw_parts(table.as_ptr(), geo.units as usize) },
            // SAFETY: as above.
            sizes: unsafe { std::slice::from_raw_parts(sizes.as_ptr(), geo.units as usize) },
            geo,
        };
        heap.absorb(true)?;
        Ok(())
    }

    fn from_segment(segment: Segment) -> Result<Self> {
        segment.expect_allocator(Self::KIND, None)?;
        let params = decode(segment.allocator_params())?;
        let geo = Geometry::new(
            segment.data_offset(),
            segment.max_size(),
            params.min_order()?,
            page_size(),
        )?;
        let shell = InSegment::<BuddyState>::new(segment)?;
        let shared = shell.state();
        let recorded = (
            shared.min_order.load(Ordering::Acquire),
            shared.heap_start.load(Ordering::Acquire),
            shared.units.load(Ordering::Acquire),
        );
        if recorded != (u64::from(geo.min_order), geo.heap_start, geo.units) {
            return Err(Error::corrupt(format!(
                "buddy geometry (min order, heap start, units) is {recorded:?}, expected \
                 ({}, {}, {}); was the segment made on a machine with another page size?",
                geo.min_order, geo.heap_start, geo.units
            )));
        }
        let (table, sizes) = resolve_tables(shell.segment(), &geo)?;
        let buddy = BuddyAllocator {
            shell,
            table: StatePtr::new(table),
            sizes: StatePtr::new(sizes),
            geo,
            tables_backed: AtomicU64::new(geo.heap_start),
            absorb_stalled: AtomicU64::new(0),
        };
        buddy.heap().heap_end()?;
        Ok(buddy)
    }
}

fn resolve_tables(
    segment: &Segment,
    geo: &Geometry,
) -> Result<(NonNull<AtomicU8>, NonNull<AtomicU32>)> {
    let table = segment.resolve_array(Offset::<AtomicU8>::from_raw(geo.table_offset), geo.units)?;
    let sizes =
        segment.resolve_array(Offset::<AtomicU32>::from_raw(geo.sizes_offset), geo.units)?;
    Ok((table, sizes))
}

impl BuddyAllocator {
    /// The accounting as the shared words say it now.
    fn stats_now(&self) -> AllocStats {
        let heap = self.heap();
        let (allocated_bytes, live_allocations, peak_bytes) =
            heap.state.counters.snapshot(self.segment());
        let free_bytes = (self.geo.min_order..=MAX_ORDER)
            .fold(0u64, |sum, k| {
                let count = heap.state.counts[k as usize].load(Ordering::Relaxed);
                sum.saturating_add(count.saturating_mul(1 << k))
            })
            .saturating_add(heap.cached_bytes());
        let end = heap.heap_end().unwrap_or(self.geo.heap_start);
        let room = self.geo.heap_limit.saturating_sub(end);
        AllocStats {
            allocated_bytes,
            peak_bytes,
            live_allocations,
            free_bytes,
            largest_free_block: heap.largest_free(),
            capacity: end - self.geo.heap_start,
        }
        .with_room_to_grow(
            room,
            self.geo.largest_block_between(end, self.geo.heap_limit),
        )
    }

    /// The segment this allocator manages.
    #[inline]
    pub fn segment(&self) -> &Segment {
        self.shell.segment()
    }

    /// The smallest block size.
    pub fn min_block(&self) -> u64 {
        1 << self.geo.min_order
    }

    /// The largest block the heap can hold once the segment has grown to
    /// its maximum size.
    pub fn max_block(&self) -> u64 {
        let span = self.geo.heap_limit - self.geo.heap_start;
        1 << (63 - span.leading_zeros()).min(MAX_ORDER)
    }

    fn heap(&self) -> Heap<'_> {
        let units = self.geo.units as usize;
        Heap {
            segment: self.segment(),
            tables_backed: &self.tables_backed,
            absorb_stalled: &self.absorb_stalled,
            state: self.shell.state(),
            // SAFETY: `units` entries checked in bounds and aligned at
            // construction; they lie below the segment's initial size, which
            // never shrinks; atomics only.
            table: unsafe { std::slice::from_raw_parts(self.table.as_ptr(), units) },
            // SAFETY: as above.
            sizes: unsafe { std::slice::from_raw_parts(self.sizes.as_ptr(), units) },
            geo: self.geo,
        }
    }

    /// The order of the block that serves `size` bytes aligned to `align`.
    fn order_for(&self, size: usize, align: usize) -> Option<u32> {
        let need = (size.max(1) as u64)
            .max(align as u64)
            .max(self.min_block())
            .checked_next_power_of_two()?;
        let order = need.trailing_zeros();
        (need <= self.geo.heap_limit - self.geo.heap_start && order <= MAX_ORDER).then_some(order)
    }
}

impl Repair for Heap<'_> {
    /// The free lists are derived from the state table, which every
    /// operation leaves whole: an operation that met a bad list changed
    /// nothing, and runs again on the rebuilt lists.
    const RETRY_AFTER_REPAIR: bool = true;

    fn repair_wanted(&self) -> bool {
        self.state.repair_pending.load(Ordering::Acquire) != 0
    }

    fn repair(&mut self) -> Result<()> {
        self.rebuild()
    }

    fn settle_dead_holder(&mut self, dead: u64) {
        self.settle_allocation_of(dead);
    }
}

/// A borrowed view with all the algorithms; `initialize` uses one too.
struct Heap<'a> {
    segment: &'a Segment,
    /// See [`BuddyAllocator::tables_backed`].
    tables_backed: &'a AtomicU64,
    /// See [`BuddyAllocator::absorb_stalled`].
    absorb_stalled: &'a AtomicU64,
    state: &'a BuddyState,
    table: &'a [AtomicU8],
    sizes: &'a [AtomicU32],
    geo: Geometry,
}

impl Heap<'_> {
    fn span(&self, order: u32) -> usize {
        1usize << (order - self.geo.min_order)
    }

    fn offset(&self, unit: usize) -> u64 {
        self.geo.heap_start + ((unit as u64) << self.geo.min_order)
    }

    /// The unit at which `offset` starts, if it is a unit boundary of the
    /// heap (not checked against the heap end).
    fn unit(&self, offset: u64) -> Option<usize> {
        let rel = offset.checked_sub(self.geo.heap_start)?;
        if rel & ((1u64 << self.geo.min_order) - 1) != 0 {
            return None;
        }
        usize::try_from(rel >> self.geo.min_order)
            .ok()
            .filter(|&u| (u as u64) < self.geo.units)
    }

    /// The heap end, validated.
    fn heap_end(&self) -> Result<u64> {
        let end = self.state.heap_end.load(Ordering::Acquire);
        let geo = &self.geo;
        if end < geo.heap_start
            || end > geo.heap_limit
            || (end - geo.heap_start) & ((1u64 << geo.min_order) - 1) != 0
            || end > self.segment.size()
        {
            return Err(Error::corrupt(format!(
                "buddy heap end {end} is outside {}..={} or off the unit grid",
                geo.heap_start,
                geo.heap_limit.min(self.segment.size())
            )));
        }
        let backed = self.tables_backed.load(Ordering::Acquire);
        if end > backed {
            // Another process moved the heap end (it backed the tables
            // first), or the word is forged: backing is idempotent, and on
            // a full file system an error here beats a SIGBUS on the read.
            self.back_tables(backed, end)?;
            self.tables_backed.fetch_max(end, Ordering::AcqRel);
        }
        Ok(end)
    }

    /// The number of units in the heap now.
    fn end_units(&self) -> Result<usize> {
        Ok(((self.heap_end()? - self.geo.heap_start) >> self.geo.min_order) as usize)
    }

    fn byte(&self, unit: usize) -> u8 {
        self.table
            .get(unit)
            .map_or(0, |entry| entry.load(Ordering::Acquire))
    }

    fn set(&self, unit: usize, byte: u8) {
        if let Some(entry) = self.table.get(unit) {
            entry.store(byte, Ordering::Release);
        }
    }

    /// [`head_at`](Self::head_at) for walks that must tile the heap: a unit
    /// where no valid block starts is corruption.
    fn walked_head(&self, unit: usize, end_units: usize) -> Result<(u32, bool)> {
        self.head_at(unit, end_units).ok_or_else(|| {
            Error::corrupt(format!(
                "buddy state table: no valid block starts at unit {unit} (offset {})",
                self.offset(unit)
            ))
        })
    }

    /// The block starting at `unit`: its order and whether it is live, if
    /// the state byte there describes a whole block inside the heap.
    fn head_at(&self, unit: usize, end_units: usize) -> Option<(u32, bool)> {
        // Never read past the heap end: the table's pages there may not be
        // backed yet (see `absorb`).
        if unit >= end_units {
            return None;
        }
        let byte = self.byte(unit);
        if byte & HEAD == 0 {
            return None;
        }
        let order = u32::from(byte & ORDER_MASK);
        if order < self.geo.min_order || order > MAX_ORDER {
            return None;
        }
        let span = self.span(order);
        if unit % span != 0 || unit.checked_add(span)? > end_units {
            return None;
        }
        Some((order, byte & ALLOCATED != 0))
    }

    fn is_free_head(&self, unit: usize, order: u32, end_units: usize) -> bool {
        self.head_at(unit, end_units) == Some((order, false))
    }

    fn record_size(&self, unit: usize, order: u32, size: u64) {
        if let Some(low) = self.sizes.get(unit) {
            low.store(size as u32, Ordering::Release);
        }
        if order > self.geo.min_order {
            if let Some(high) = self.sizes.get(unit + 1) {
                high.store((size >> 32) as u32, Ordering::Release);
            }
        }
    }

    fn read_size(&self, unit: usize, order: u32) -> u64 {
        let low = self
            .sizes
            .get(unit)
            .map_or(0, |e| u64::from(e.load(Ordering::Acquire)));
        // A length of a cached order has no high word worth reading.
        let high = if order > self.geo.min_order && !self.cacheable(order) {
            self.sizes
                .get(unit + 1)
                .map_or(0, |e| u64::from(e.load(Ordering::Acquire)))
        } else {
            0
        };
        (high << 32) | low
    }

    /// Frees the block the dead owner of the lock committed but never
    /// handed out, if it did.
    fn settle_allocation_of(&self, dead: u64) {
        handoff::settle_tentative(self.segment, dead, |offset| {
            // Not live: the commit never happened, nothing to undo.
            let _ = self.free_locked(offset);
        });
    }

    // ---- the operations, under the lock ----

    fn allocate_locked(&self, size: u64, order: u32) -> Result<u64> {
        let mut retry = false;
        loop {
            // Growth the heap cannot take in (its table pages could not be
            // backed: the file system is full) leaves the free lists as
            // they are; only a request they cannot serve tries again, and
            // reports it.
            let absorbed = self.absorb(retry);
            let end = match &absorbed {
                Ok(end) => *end,
                Err(_) => self.end_units()?,
            };
            let mut found = None;
            for from in order..=MAX_ORDER {
                if let Some(unit) = self.pop(from, end)? {
                    found = Some((unit, from));
                    break;
                }
            }
            if let Some((unit, from)) = found {
                self.split(unit, from, order, end)?;
                // A block of a cached order is committed marked cached, and
                // gets its length after: a racing cached free of a stale
                // offset (a double free of this block's last life) swaps
                // from a length, so it cannot take the block between the
                // length's store and the commit.
                let cacheable = self.cacheable(order);
                self.record_size(unit, order, if cacheable { 0 } else { size });
                if cacheable {
                    if let Some(entry) = self.sizes.get(unit) {
                        entry.store(CACHED_SIZE, Ordering::Release);
                    }
                }
                let offset = self.offset(unit);
                // The hand-off log (see `alloc::handoff`): tentative before
                // the commit, final after it, both under the lock.
                let log = handoff::my_slot(self.segment);
                if let Some(log) = log {
                    log.intend(offset);
                }
                crash_point!("buddy.alloc.intended");
                // The commit: the block is live from here on.
                self.set(unit, HEAD | ALLOCATED | order as u8);
                if cacheable {
                    // Only this lock's holder swaps from the mark of a block
                    // in no magazine.
                    self.swap_size(unit, CACHED_SIZE, size as u32);
                }
                self.state.counters.on_allocate(self.segment, size);
                crash_point!("buddy.alloc.committed");
                if let Some(log) = log {
                    log.record(offset);
                }
                return Ok(offset);
            }
            if absorbed.is_err() && !retry {
                retry = true;
                continue;
            }
            absorbed?;
            if !self.grow_for(order)? {
                return Err(Error::OutOfMemory {
                    requested: size,
                    available: self.largest_free(),
                });
            }
        }
    }

    /// The live block at `offset`: its unit and order (not a cached one).
    fn live_block(&self, offset: u64, end_units: usize) -> Result<(usize, u32)> {
        self.held_block(offset, end_units, false)
    }

    /// The block at `offset`, live and cached (when `cached`) or live and
    /// not: its unit and order.
    fn held_block(&self, offset: u64, end_units: usize, cached: bool) -> Result<(usize, u32)> {
        // Not `ok_or`: building the error on the hot path costs a call to
        // its drop glue on every free.
        let Some(unit) = self.unit(offset) else {
            return Err(Error::InvalidFree { offset });
        };
        match self.head_at(unit, end_units) {
            Some((order, true)) if self.is_cached(unit, order) == cached => Ok((unit, order)),
            _ => Err(Error::InvalidFree { offset }),
        }
    }

    fn free_locked(&self, offset: u64) -> Result<()> {
        self.free_as(offset, false)
    }

    /// Frees the block at `offset`: a live one, or (when `cached`) one a
    /// thread cache gives back, counted as freed already.
    fn free_as(&self, offset: u64, cached: bool) -> Result<()> {
        let end = self.end_units()?;
        let (unit, order) = self.held_block(offset, end, cached)?;
        let size = self.read_size(unit, order);
        // A block of a cached order is marked cached first, as a cached
        // free would: the swap refuses a racing cached free of it (or loses
        // to it), and a kill before the commit leaves a cached block in no
        // magazine, whose free `recover` completes.
        if !cached
            && self.cacheable(order)
            && !u32::try_from(size).is_ok_and(|low| self.swap_size(unit, low, CACHED_SIZE))
        {
            return Err(Error::InvalidFree { offset });
        }
        // Under the lock the block is ours alone.
        self.segment.scrub(offset, 1 << order);
        // The commit: the block is free from here on.
        self.set(unit, HEAD | order as u8);
        if !cached {
            self.state.counters.on_free(self.segment, size);
        }
        crash_point!("buddy.free.committed");
        if let Err(err) = self.coalesce_and_push(unit, order, end) {
            // The table already says free; the lists follow from it.
            self.rebuild().map_err(|_| err)?;
        }
        Ok(())
    }

    fn resize_locked(&self, offset: u64, new_size: u64, new_order: u32) -> Result<bool> {
        let end = self.end_units()?;
        let (unit, order) = self.live_block(offset, end)?;
        let old_size = self.read_size(unit, order);
        let counters = &self.state.counters;
        // The first write of the size entry swaps it from the length read,
        // so a racing cached free of the block (a bug of the caller) makes
        // this resize fail instead of losing its mark.
        if self.cacheable(order)
            && !u32::try_from(old_size).is_ok_and(|low| self.swap_size(unit, low, low))
        {
            return Err(Error::InvalidFree { offset });
        }
        if new_order <= order {
            // The new size fits every order between the two.
            self.record_size(unit, order, new_size);
            counters.on_resize(self.segment, old_size, new_size);
            let mut k = order;
            while k > new_order {
                k -= 1;
                let upper = unit + self.span(k);
                self.set(upper, HEAD | k as u8);
                self.set(unit, HEAD | ALLOCATED | k as u8);
                // The upper half's buddy is this live block: nothing to merge.
                if self.push(k, self.offset(upper), end).is_err() {
                    self.rebuild()?;
                }
            }
            return Ok(true);
        }
        // Growing: every buddy up to the new order must be free and above us.
        for k in order..new_order {
            let span = self.span(k);
            if unit & span != 0 || !self.is_free_head(unit + span, k, end) {
                return Ok(false);
            }
        }
        // The size entries of the larger block, still with the old size.
        self.record_size(unit, new_order, old_size);
        for k in order..new_order {
            let buddy = unit + self.span(k);
            if self.unlink(k, self.offset(buddy), end).is_err() {
                // The block stays live at order k with its old size.
                self.rebuild()?;
                return Ok(false);
            }
            self.set(unit, HEAD | ALLOCATED | (k + 1) as u8);
            self.set(buddy, 0);
        }
        self.record_size(unit, new_order, new_size);
        counters.on_resize(self.segment, old_size, new_size);
        Ok(true)
    }
}

impl BuddyAllocator {
    /// Runs `op` under the lock by the one repair rule (`sync::repair`):
    /// the free lists are derived from the state table, so an operation
    /// that finds them inconsistent runs once more after the rebuild.
    /// It waits for the lock as `ctx` allows.
    fn locked_for<R>(&self, ctx: &MemContext, op: impl Fn(&Heap<'_>) -> Result<R>) -> Result<R> {
        let mut heap = self.heap();
        let guard = heap.state.lock.lock_with(ctx.patience(LOCK_PATIENCE))?;
        let result = repair::run(&guard, &mut heap, |heap| op(heap));
        drop(guard);
        result
    }
}

impl ShmAllocator for BuddyAllocator {
    fn backing_segment(&self) -> Option<&Segment> {
        Some(self.segment())
    }

    fn kind(&self) -> AllocatorKind {
        AllocatorKind::Buddy
    }

    fn allocate_offset(&self, ctx: &MemContext, size: usize, align: usize) -> Result<u64> {
        let align = power_of_two_align(align, self.segment().max_align())?;
        let Some(order) = self.order_for(size, align) else {
            return Err(Error::OutOfMemory {
                requested: size as u64,
                available: self.heap().largest_free(),
            });
        };
        if let Some(offset) = self.cached_allocate(order, size as u64) {
            return Ok(offset);
        }
        let refill = self.empty_magazine_of(order);
        let allocate = |heap: &Heap<'_>| match refill {
            Some(magazine) => heap.allocate_refilling(size as u64, order, magazine),
            None => heap.allocate_locked(size as u64, order),
        };
        match self.locked_for(ctx, allocate) {
            // Cached blocks may be what is missing: give the caller's and
            // the idle slots' back, and try once more.
            Err(Error::OutOfMemory { .. })
                if self.locked_for(ctx, |heap| Ok(self.give_back_idle(heap)))? =>
            {
                self.locked_for(ctx, allocate)
            }
            result => result,
        }
    }

    unsafe fn free_offset(&self, ctx: &MemContext, offset: u64) -> Result<()> {
        if let CachedFree::Cached = self.cached_free(offset)? {
            return Ok(());
        }
        handoff::forget_mine(self.segment(), offset);
        self.locked_for(ctx, |heap| heap.free_locked(offset))
    }

    fn usable_size(&self, offset: u64) -> Result<usize> {
        let heap = self.heap();
        let (_, order) = heap.live_block(offset, heap.end_units()?)?;
        Ok(1usize << order)
    }

    fn full_ptr(&self, offset: u64) -> Result<FullPtr<u8>> {
        self.usable_size(offset)?;
        self.segment()
            .full_ptr_from_offset(Offset::from_raw(offset))
    }

    fn offset_of_local(&self, ptr: NonNull<u8>) -> Result<u64> {
        Ok(self.segment().offset_of(ptr.as_ptr().cast_const())?.raw())
    }

    /// Gives the caller's cached blocks back to the heap first (when the
    /// lock is free), so that the figures are exact while one thread
    /// allocates.
    fn stats(&self) -> AllocStats {
        self.give_back_mine(Patience::Wait(LOCK_PATIENCE));
        self.stats_now()
    }

    fn check(&self) -> Result<()> {
        let mut heap = self.heap();
        let guard = heap.state.lock.lock(LOCK_PATIENCE)?;
        repair::before_operation(&guard, &mut heap)?;
        heap.check_beside_caches()
    }

    /// Takes the lock (over from a dead owner, if one holds it) and rebuilds
    /// the free lists and counters from the state table, as the next locker
    /// after a crash would.
    unsafe fn recovery_pass(&self) -> Result<RecoveryReport> {
        // Not `stats`: that gives this thread's cache back, taking (over)
        // the lock before the pass would.
        let before = self.stats_now();
        let mut heap = self.heap();
        let guard = heap.state.lock.lock(LOCK_PATIENCE)?;
        repair::repair_now(&guard, &mut heap)?;
        let orphans = self.give_back_everything(&heap)?;
        // A cached allocation a killed thread had begun: its block, if the
        // thread took it, was never handed out.
        handoff::settle_dead_tentatives(self.segment(), |offset| {
            let _ = heap.free_locked(offset);
        });
        // What the killed threads' cached operations left is mended: count
        // again, alone.
        heap.state.caches.forget_interrupted();
        heap.recount()?;
        let took_over = guard.recovered();
        drop(guard);
        let report = Ok(RecoveryReport {
            locks_taken_over: u64::from(took_over),
            blocks_reclaimed: orphans,
            ..RecoveryReport::rebuilt(before, self.stats())
        }
        .with_handoffs(self.segment()));
        // Records of blocks the pass freed name nothing now.
        handoff::forget_dead_records(self.segment(), |offset| self.usable_size(offset).is_err());
        report
    }

    /// Reports every block in offset order (after giving the caller's cached
    /// blocks back, as [`stats`](ShmAllocator::stats) does), a live one
    /// wholly in use (the whole power of two, the bytes it may use) and a
    /// free one (or a cached one) wholly free;
    /// before them the state and size tables, after them the space the
    /// segment has grown by and the heap has not yet taken in (each free:
    /// bytes no block holds). Walks the state table under the lock, as
    /// [`check`](ShmAllocator::check) does, and reports a table that does
    /// not tile the heap as an error; `visit` runs after the lock is
    /// released, so it may use the allocator.
    fn regions(&self, visit: &mut dyn FnMut(Region)) -> Result<()> {
        // As for `stats`: the caller's own cache first.
        self.give_back_mine(Patience::Wait(LOCK_PATIENCE));
        let mut heap = self.heap();
        let guard = heap.state.lock.lock(LOCK_PATIENCE)?;
        repair::before_operation(&guard, &mut heap)?;
        let regions = heap.regions_locked();
        drop(guard);
        regions?.into_iter().for_each(visit);
        Ok(())
    }

    unsafe fn resize_in_place(
        &self,
        ctx: &MemContext,
        offset: u64,
        new_size: usize,
    ) -> Result<bool> {
        let Some(new_order) = self.order_for(new_size, 1) else {
            // Too large for any block: leave it to allocate-copy-free (which
            // reports the error), after checking the block is live.
            self.usable_size(offset)?;
            return Ok(false);
        };
        self.locked_for(ctx, |heap| {
            heap.resize_locked(offset, new_size as u64, new_order)
        })
    }
}

impl_allocator_api2!(BuddyAllocator);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_takes_over_a_lock_a_dead_process_held() {
        use crate::sync::robust_lock::testing;
        let heap = BuddyAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        let ctx = MemContext::default();
        let kept = heap.allocate_offset(&ctx, 100, 8).unwrap();
        testing::forge_owner(&heap.heap().state.lock, testing::dead_pid());
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
    use crate::SegmentOptions;

    /// The allocator's regions, checked to tile the data area in offset
    /// order up to `end`.
    fn tiling(buddy: &BuddyAllocator, end: u64) -> Vec<Region> {
        let mut regions = Vec::new();
        buddy.regions(&mut |region| regions.push(region)).unwrap();
        let mut next = buddy.segment().data_offset();
        for region in &regions {
            assert_eq!(region.offset, next, "gap or overlap: {regions:?}");
            assert!(region.len > 0 && region.used <= region.len, "{region:?}");
            next = region.offset + region.len;
        }
        assert_eq!(next, end, "the data area is covered: {regions:?}");
        regions
    }

    /// The regions inside the heap: every one a block.
    fn blocks(buddy: &BuddyAllocator, regions: &[Region]) -> Vec<Region> {
        let start = buddy.geo.heap_start;
        let blocks: Vec<Region> = regions
            .iter()
            .copied()
            .filter(|r| r.offset >= start)
            .collect();
        for block in &blocks {
            assert!(block.len.is_power_of_two() && block.len >= buddy.min_block());
            assert_eq!((block.offset - start) % block.len, 0, "{block:?}");
            assert!(block.used == 0 || block.used == block.len, "{block:?}");
        }
        blocks
    }

    #[test]
    fn regions_list_every_block_in_offset_order() {
        let buddy = BuddyAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        let sizes = [100usize, 64, 1000, 5000, 64, 300, 20_000, 7];
        let mut live = Vec::new();
        let mut freed = Vec::new();
        for (index, &size) in sizes.iter().enumerate() {
            let block = buddy.allocate(size).unwrap();
            if index % 3 == 1 {
                freed.push(block);
            } else {
                live.push((block, size as u64));
            }
        }
        for &block in &freed {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { buddy.free(block) }.unwrap();
        }
        let regions = tiling(&buddy, buddy.segment().size());
        assert_eq!(regions[0].offset, buddy.segment().data_offset());
        assert_eq!(regions[0].used, 0, "the tables hold no block");
        let blocks = blocks(&buddy, &regions);
        assert_eq!(blocks.len(), regions.len() - 1);
        let used: Vec<Region> = blocks.iter().copied().filter(|b| b.used > 0).collect();
        assert_eq!(used.len(), live.len(), "{blocks:?}");
        for (block, size) in &live {
            let offset = block.offset().raw();
            let usable = buddy.usable_size(offset).unwrap() as u64;
            assert!(usable >= *size);
            assert!(
                used.contains(&Region {
                    offset,
                    len: usable,
                    used: usable
                }),
                "live block {offset} of {usable} bytes in {blocks:?}"
            );
        }
        let requested: u64 = live.iter().map(|(_, size)| size).sum();
        let total: u64 = used.iter().map(|b| b.used).sum();
        assert!(total >= requested);
        assert_eq!(total, buddy.stats().capacity - buddy.stats().free_bytes);
    }

    #[test]
    fn regions_of_a_fresh_or_emptied_buddy_hold_nothing() {
        let buddy = BuddyAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        let end = buddy.segment().size();
        let fresh = tiling(&buddy, end);
        assert_eq!(fresh.iter().map(|r| r.used).sum::<u64>(), 0);
        let live: Vec<_> = (0..100)
            .map(|i| buddy.allocate(64 + i * 13).unwrap())
            .collect();
        assert!(tiling(&buddy, end).iter().map(|r| r.used).sum::<u64>() > 100 * 64);
        for block in live {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { buddy.free(block) }.unwrap();
        }
        // Every buddy merged again: the same blocks as at the start.
        assert_eq!(tiling(&buddy, end), fresh);
        buddy.check().unwrap();
    }

    #[test]
    fn regions_count_growth_not_yet_taken_in_as_free() {
        let options = SegmentOptions::private().size(256 << 10).max_size(1 << 20);
        let buddy = BuddyAllocator::create(&options).unwrap();
        let block = buddy.allocate(1000).unwrap();
        let before = buddy.segment().size();
        buddy.segment().grow(512 << 10).unwrap();
        let regions = tiling(&buddy, 512 << 10);
        let tail = regions.last().unwrap();
        assert_eq!((tail.offset, tail.used), (before, 0), "{regions:?}");
        assert_eq!(regions.iter().map(|r| r.used).sum::<u64>(), 1024);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { buddy.free(block) }.unwrap();
    }

    #[test]
    fn regions_refuse_a_broken_state_table() {
        let buddy = BuddyAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        let block = buddy.allocate(100).unwrap();
        let heap = buddy.heap();
        let unit = heap.unit(block.offset().raw()).unwrap();
        let byte = heap.byte(unit);
        // An order below the minimum: the walk cannot step over it.
        heap.set(unit, HEAD | ALLOCATED | 2);
        assert!(matches!(
            buddy.regions(&mut |_| {}),
            Err(Error::CorruptHeader { .. })
        ));
        // An order past the heap end.
        heap.set(unit, HEAD | ALLOCATED | MAX_ORDER as u8);
        assert!(buddy.regions(&mut |_| {}).is_err());
        heap.set(unit, byte);
        let end = heap.state.heap_end.load(Ordering::Relaxed);
        heap.state.heap_end.store(u64::MAX, Ordering::Relaxed);
        assert!(
            buddy.regions(&mut |_| {}).is_err(),
            "a heap end past the segment"
        );
        heap.state.heap_end.store(end, Ordering::Relaxed);
        let mut count = 0;
        buddy.regions(&mut |_| count += 1).unwrap();
        assert!(count > 2);
        buddy.check().unwrap();
    }

    #[test]
    fn geometry_puts_the_heap_on_a_page_after_both_tables() {
        let geo = Geometry::new(4096, 1 << 20, 6, 4096).unwrap();
        assert_eq!(geo.units, ((1 << 20) - 4096) >> 6);
        assert_eq!(geo.sizes_offset, align_up(4096 + geo.units, 8));
        assert!(geo.heap_start >= geo.sizes_offset + 4 * geo.units);
        assert_eq!(geo.heap_start % 4096, 0);
        assert_eq!(geo.heap_limit, 1 << 20);
        assert!(Geometry::new(4096, 8192, 6, 4096).is_err());
    }

    #[test]
    fn params_are_validated() {
        for bad in [0, 8, 48, 100, 1 << 21] {
            assert!(BuddyParams { min_block: bad }.min_order().is_err(), "{bad}");
        }
        assert_eq!(BuddyParams::default().min_order().unwrap(), 6);
        assert!(decode([64, 1, 0, 0]).is_err());
    }
}
