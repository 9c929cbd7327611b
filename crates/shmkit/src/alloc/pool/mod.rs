//! The pool (slab) allocator: fixed-size slots, a slab per slot size, one
//! ABA-safe lock-free free stack per slab and shard.
//!
//! # Layout
//!
//! The data area, from `base` (the data offset rounded up to the largest slot
//! alignment), is a sequence of equal *pages* claimed one at a time from a
//! shared lock-free page cursor, so the slabs share the space and the
//! segment grows when it runs out. A page belongs to one slab and holds:
//!
//! ```text
//! page + 0   PageHeader { slab: 1-based slab number (0 = not yet set up)
//!                         | home shard << 16, seal }
//! page + 8   markers: [AtomicU32; per_page]   0 = free, else requested size + 1
//!                                              (| PENDING while handed out)
//! page + first (aligned to the slot alignment)   per_page slots of `slot` bytes
//! ```
//!
//! A slot is named by a 32-bit index, `page * per_page + slot`, which the
//! free stacks link through (the `next` index is stored in the first four
//! bytes of a free slot). Slots are handed out lazily: a *fresh* word
//! `(page, used)` carves the next slot of its current page with one
//! compare-and-swap, claiming a new page when that one is full.
//!
//! Each slab has four *shards*, each a free stack and a fresh word on cache
//! lines of their own. A thread works on the shard its hand-off slot falls
//! in (slot index mod 4): it pops its own stack and carves its own pages,
//! so two workers write no line in common. A page has a *home* shard, the
//! one that claimed it (in the high half of its header's slab word), and a
//! freed slot goes back onto its home shard's stack, whoever frees it: a
//! producer's slots freed by a consumer come back to the producer. A shard
//! with nothing left claims a new page while less than half the pages are
//! claimed, and takes from the other shards after that (and once more
//! before it reports that memory is out), so every slot stays reachable in
//! a full pool.
//!
//! Free finds the page from the offset, the slab from the page header, checks
//! that the offset is exactly a slot boundary, and claims the slot's marker
//! from "live" to 0 with a compare-and-swap before pushing it: a double free
//! or a foreign offset is refused and never reaches the stack.
//!
//! An allocation marks its slot `PENDING` with the compare-and-swap that
//! claims it, records the slot in the thread's hand-off log (see
//! `alloc::handoff`) and only then clears the mark: a process killed in
//! between leaves a pending slot, which the recovery pass frees (nobody got
//! it), or a record the application can settle.
//!
//! The free stacks are chained through words in the free slots, which a
//! stray write can damage. A link that names no slot of the slab, or the
//! slot it is stored in, is refused by the stack; a longer cycle leads back
//! to a slot already handed out, whose marker refuses it. Either is an
//! [`Error::CorruptHeader`], never a slot handed out twice; the walks of a
//! whole stack (`check`, recovery) stop after as many steps as the slab has
//! slots.

use std::collections::{HashMap, HashSet};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use super::counters::AllocCounters;
use super::handoff;
use super::in_segment::InSegment;
use super::memory_resource::impl_allocator_api2;
use super::recovery::Traces;
use super::segment_allocator::SegmentAllocator;
use super::shm_allocator::power_of_two_align;
use super::{AllocStats, AllocatorKind, MemContext, RecoveryReport, Region, ShmAllocator};
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::ptr::{FullPtr, Offset};
use crate::segment::header::PARAM_WORDS;
use crate::segment::Segment;
use crate::sync::cursor::align_up;
use crate::sync::slot_stack::{self, Links, PopError, EMPTY, EMPTY_HEAD};

/// Carving slots from fresh pages, and page claims.
mod carving;
/// The integrity walk and the recovery pass.
mod check;

/// The most slot sizes (slabs) one pool holds: one per header word.
pub const POOL_MAX_SLABS: usize = PARAM_WORDS;
/// The smallest slot size (a slot must hold its free-stack link).
pub const POOL_MIN_SLOT: u32 = 8;
/// The largest slot size.
pub const POOL_MAX_SLOT: u32 = 256 << 10;
/// The smallest page size; pages are larger when the largest slot needs it.
const MIN_PAGE: u64 = 64 << 10;
/// A page holds at least this many of the largest slots (about).
const SLOTS_PER_PAGE_HINT: u64 = 32;
const PAGE_HEADER: u64 = std::mem::size_of::<PageHeader>() as u64;
const MARKER: u64 = std::mem::size_of::<AtomicU32>() as u64;
const PAGE_KEY: u32 = 0x9a6e_51ab;
/// A marker bit: the slot's allocation is being handed out (see the
/// module docs).
const PENDING: u32 = 1 << 31;

/// The size a live or pending slot's marker records, `None` for a free one.
#[inline]
fn marked_size(value: u32) -> Option<u64> {
    (value != 0).then(|| u64::from((value & !PENDING).wrapping_sub(1)))
}

/// The slot sizes of a [`PoolAllocator`], recorded in the segment header
/// (one word per size, 0 for an unused one).
///
/// Between one and four sizes, strictly ascending, each a multiple of 8
/// from [`POOL_MIN_SLOT`] to [`POOL_MAX_SLOT`]. A slot is aligned to the
/// largest power of two that divides its size (so a 4096-byte slot is
/// 4096-aligned, a 24-byte slot 8-aligned). The default is 64, 256, 1024 and
/// 4096 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolParams {
    slot_sizes: [u32; POOL_MAX_SLABS],
}

impl Default for PoolParams {
    fn default() -> Self {
        PoolParams {
            slot_sizes: [64, 256, 1024, 4096],
        }
    }
}

impl PoolParams {
    /// Parameters with these slot sizes (checked as described on the type).
    ///
    /// ```
    /// use shmkit::PoolParams;
    ///
    /// assert!(PoolParams::new(&[32, 128]).is_ok());
    /// assert!(PoolParams::new(&[128, 32]).is_err()); // not ascending
    /// assert!(PoolParams::new(&[12]).is_err());      // not a multiple of 8
    /// ```
    pub fn new(slot_sizes: &[u32]) -> Result<PoolParams> {
        if slot_sizes.is_empty() || slot_sizes.len() > POOL_MAX_SLABS {
            return Err(Error::invalid_size(format!(
                "a pool has 1 to {POOL_MAX_SLABS} slot sizes, not {}",
                slot_sizes.len()
            )));
        }
        let mut words = [0u64; POOL_MAX_SLABS];
        for (word, &size) in words.iter_mut().zip(slot_sizes) {
            *word = u64::from(size);
        }
        let slot_sizes = check_sizes(&words).map_err(Error::invalid_size)?;
        Ok(PoolParams { slot_sizes })
    }

    /// The slot sizes, ascending.
    pub fn slot_sizes(&self) -> &[u32] {
        let count = self.slot_sizes.iter().take_while(|&&s| s != 0).count();
        &self.slot_sizes[..count]
    }

    /// The size of the pages the slabs are carved from.
    pub fn page_size(&self) -> u64 {
        page_size_for(self.slot_sizes().last().copied().unwrap_or(POOL_MIN_SLOT))
    }
}

fn page_size_for(largest_slot: u32) -> u64 {
    (u64::from(largest_slot) * SLOTS_PER_PAGE_HINT)
        .next_power_of_two()
        .max(MIN_PAGE)
}

/// Validates slot-size words (as stored in a header, say).
fn check_sizes(words: &[u64; PARAM_WORDS]) -> std::result::Result<[u32; POOL_MAX_SLABS], String> {
    let mut sizes = [0u32; POOL_MAX_SLABS];
    let count = words.iter().take_while(|&&w| w != 0).count();
    if count == 0 {
        return Err("a pool needs at least one slot size".into());
    }
    if words[count..].iter().any(|&w| w != 0) {
        return Err(format!("slot sizes {words:?} have a gap"));
    }
    for (index, &word) in words[..count].iter().enumerate() {
        if word < u64::from(POOL_MIN_SLOT) || word > u64::from(POOL_MAX_SLOT) || word % 8 != 0 {
            return Err(format!(
                "slot size {word} is not a multiple of 8 from {POOL_MIN_SLOT} to {POOL_MAX_SLOT}"
            ));
        }
        if index > 0 && word <= words[index - 1] {
            return Err(format!("slot sizes {words:?} are not strictly ascending"));
        }
        sizes[index] = word as u32;
    }
    Ok(sizes)
}

/// Where one slab's slots sit in its pages.
#[derive(Clone, Copy, Debug, Default)]
struct Slab {
    /// Slot size in bytes.
    slot: u64,
    /// Alignment of every slot (offset and, up to the segment's
    /// `max_align`, address).
    align: u64,
    /// Slots per page.
    per_page: u32,
    /// Offset of the first slot from the start of its page.
    first: u64,
}

/// The pool's shape, derived from the parameters in the header.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    slabs: [Slab; POOL_MAX_SLABS],
    count: usize,
    page: u64,
    /// Offset of page 0.
    base: u64,
    /// Pages that can be numbered without a slot index reaching `EMPTY`.
    max_pages: u64,
}

impl Geometry {
    fn new(words: &[u64; PARAM_WORDS], data_offset: u64) -> Result<Geometry> {
        let sizes = check_sizes(words)
            .map_err(|reason| Error::corrupt(format!("pool parameters: {reason}")))?;
        let count = sizes.iter().take_while(|&&s| s != 0).count();
        let page = page_size_for(sizes[count - 1]);
        let mut slabs = [Slab::default(); POOL_MAX_SLABS];
        let mut max_align = 8;
        let mut max_per_page = 1u64;
        for (slab, &size) in slabs.iter_mut().zip(&sizes[..count]) {
            let slot = u64::from(size);
            let align = 1u64 << slot.trailing_zeros();
            let first_for = |n: u64| align_up(PAGE_HEADER + MARKER * n, align).unwrap_or(u64::MAX);
            let mut per_page = (page - PAGE_HEADER) / (slot + MARKER);
            while per_page > 0 && first_for(per_page).saturating_add(per_page * slot) > page {
                per_page -= 1;
            }
            if per_page == 0 {
                return Err(Error::corrupt(format!(
                    "a pool page holds no {slot}-byte slot"
                )));
            }
            *slab = Slab {
                slot,
                align,
                per_page: per_page as u32,
                first: first_for(per_page),
            };
            max_align = max_align.max(align);
            max_per_page = max_per_page.max(per_page);
        }
        let base = align_up(data_offset, max_align)
            .ok_or_else(|| Error::corrupt("pool base overflows"))?;
        Ok(Geometry {
            slabs,
            count,
            page,
            base,
            max_pages: u64::from(EMPTY) / max_per_page,
        })
    }

    fn slabs(&self) -> &[Slab] {
        &self.slabs[..self.count]
    }

    fn page_offset(&self, page: u64) -> u64 {
        // page < max_pages <= 2^32 and page size <= 2^23: no overflow.
        self.base + page * self.page
    }
}

#[repr(C)]
struct PageHeader {
    /// The page's owners: the 1-based number of its slab in the low 16 bits
    /// (0 until set up) and its home shard above them (see `owner_word`).
    slab: AtomicU32,
    /// `page ^ PAGE_KEY`, written with the slab number.
    seal: AtomicU32,
}

/// The head of a slab's free stack and the count of slots on it, touched
/// together on every pop and push.
#[repr(C)]
struct SlabHot {
    head: AtomicU64,
    /// At least the number of slots on the stack (raised before a push,
    /// lowered after a pop), exact when no one is mid-operation.
    free_slots: AtomicU64,
}

#[repr(C)]
struct SlabState {
    hot: CachePadded<SlabHot>,
    /// `(page << 32) | used`: the page slots are carved from and how many of
    /// its slots have been handed out; page `EMPTY` when there is none yet.
    fresh: CachePadded<AtomicU64>,
}

/// Free stacks and carving pages per slab: a thread works on the shard of
/// its hand-off slot, so two workers touch no stack head or fresh word in
/// common (see the module docs).
const POOL_SHARDS: usize = 4;

#[repr(C)]
struct PoolState {
    counters: AllocCounters,
    /// Pages claimed so far from the shared region.
    pages: CachePadded<AtomicU64>,
    slabs: [[SlabState; POOL_SHARDS]; POOL_MAX_SLABS],
}

/// The page header's owner word for `slab` and home `shard`.
#[inline]
fn owner_word(slab: usize, shard: usize) -> u32 {
    (slab as u32 + 1) | ((shard as u32) << 16)
}

/// The (slab, home shard) of an owner word of a pool with `slabs` slabs;
/// `None` for a page not set up or a word no set-up wrote.
#[inline]
fn decode_owner(word: u32, slabs: usize) -> Option<(usize, usize)> {
    let (slab, shard) = ((word & 0xffff) as usize, (word >> 16) as usize);
    (slab != 0 && slab <= slabs && shard < POOL_SHARDS).then(|| (slab - 1, shard))
}

fn pack_fresh(page: u32, used: u32) -> u64 {
    (u64::from(page) << 32) | u64::from(used)
}

fn unpack_fresh(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// A slot located from an index or an offset.
#[derive(Clone, Copy, Debug)]
struct SlotRef {
    slab: usize,
    page: u32,
    slot: u32,
}

/// In messages: "slab 1 page 0 slot 23".
impl std::fmt::Display for SlotRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "slab {} page {} slot {}",
            self.slab, self.page, self.slot
        )
    }
}

/// Merges stretches reported in offset order into runs: adjacent stretches
/// that are both wholly in use, or both wholly free, become one region.
struct Runs<'a> {
    visit: &'a mut dyn FnMut(Region),
    pending: Option<Region>,
}

impl<'a> Runs<'a> {
    fn new(visit: &'a mut dyn FnMut(Region)) -> Self {
        Runs {
            visit,
            pending: None,
        }
    }

    /// Adds `[start, end)`, wholly in use when `live`, else wholly free.
    fn push(&mut self, start: u64, end: u64, live: bool) {
        if end <= start {
            return;
        }
        let len = end - start;
        let used = if live { len } else { 0 };
        if let Some(pending) = &mut self.pending {
            let pending_live = pending.used == pending.len;
            if pending.offset + pending.len == start && pending_live == live {
                pending.len += len;
                pending.used += used;
                return;
            }
            (self.visit)(*pending);
        }
        self.pending = Some(Region {
            offset: start,
            len,
            used,
        });
    }

    fn finish(mut self) {
        if let Some(pending) = self.pending.take() {
            (self.visit)(pending);
        }
    }
}

/// A pool of fixed-size slots in several sizes, shared by every process
/// that attaches its segment.
///
/// A request goes to the smallest slab whose slots hold its size and
/// alignment; allocation pops that slab's free stack (or carves a fresh slot)
/// and freeing pushes the slot back, each with one compare-and-swap on an
/// ABA-safe tagged head in the segment: no lock, no syscall, O(1). A slot
/// freed by one process is reused by any other. Double frees and offsets
/// that are not a live slot are refused with [`Error::InvalidFree`] and
/// change nothing. When the segment was created with a maximum size above
/// its size, running out of pages grows it.
///
/// A process killed mid-operation loses at most the slot or page it was
/// handling (between claiming a slot's marker and pushing it, or between
/// claiming a page and installing it); the pool stays usable, and
/// [`check`](ShmAllocator::check) reports the lost slots until a recovery
/// pass reclaims them.
///
/// ```
/// use shmkit::{PoolAllocator, PoolParams, SegmentAllocator, SegmentOptions, ShmAllocator};
///
/// let params = PoolParams::new(&[32, 256, 4096])?;
/// let pool = PoolAllocator::create_with(&SegmentOptions::private().size(1 << 20), &params)?;
/// let small = pool.allocate(20)?;                 // a 32-byte slot
/// let page = pool.allocate_aligned(100, 4096)?;   // a 4096-byte slot, 4096-aligned
/// assert_eq!(pool.usable_size(small.offset().raw())?, 32);
/// assert_eq!(page.offset().raw() % 4096, 0);
/// // SAFETY: nothing uses the block after its free.
/// unsafe {
///     pool.free(small)?;
///     assert!(pool.free(small).is_err());         // double free: refused
/// }
/// assert_eq!(pool.allocate(30)?.offset(), small.offset()); // the slot is reused
/// pool.check()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct PoolAllocator {
    shell: InSegment<PoolState>,
    geometry: Geometry,
}

impl std::fmt::Debug for PoolAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolAllocator")
            .field("segment", self.segment())
            .field("slot_sizes", &self.slot_sizes())
            .field("page_size", &self.geometry.page)
            .field("stats", &self.stats())
            .finish()
    }
}

impl SegmentAllocator for PoolAllocator {
    const KIND: AllocatorKind = AllocatorKind::Pool;
    type Params = PoolParams;

    fn encode_params(params: &PoolParams) -> [u64; PARAM_WORDS] {
        params.slot_sizes.map(u64::from)
    }

    fn state_len(_: &PoolParams) -> u64 {
        std::mem::size_of::<PoolState>() as u64
    }

    fn initialize(segment: &Segment, params: &PoolParams) -> Result<()> {
        Geometry::new(&Self::encode_params(params), segment.data_offset())?;
        let state = segment.allocator_state::<PoolState>()?;
        let slab = || SlabState {
            hot: CachePadded::new(SlabHot {
                head: AtomicU64::new(EMPTY_HEAD),
                free_slots: AtomicU64::new(0),
            }),
            fresh: CachePadded::new(AtomicU64::new(pack_fresh(EMPTY, 0))),
        };
        // SAFETY: the creator runs this before *ready*, so no other process
        // uses the state yet; `allocator_state` checked size and alignment.
        unsafe {
            state.as_ptr().write(PoolState {
                counters: AllocCounters::new(),
                pages: CachePadded::new(AtomicU64::new(0)),
                slabs: std::array::from_fn(|_| std::array::from_fn(|_| slab())),
            })
        };
        Ok(())
    }

    fn from_segment(segment: Segment) -> Result<Self> {
        segment.expect_allocator(Self::KIND, None)?;
        let geometry = Geometry::new(&segment.allocator_params(), segment.data_offset())?;
        let pool = PoolAllocator {
            shell: InSegment::new(segment)?,
            geometry,
        };
        let pages = pool.pages();
        if pages > geometry.max_pages || geometry.page_offset(pages) > pool.segment().max_size() {
            return Err(Error::corrupt(format!(
                "pool page count {pages} out of range"
            )));
        }
        Ok(pool)
    }
}

/// The links of one slab's free stack, stored in its free slots.
struct SlabLinks<'a> {
    pool: &'a PoolAllocator,
    slab: usize,
}

impl Links for SlabLinks<'_> {
    #[inline]
    fn next(&self, index: u32) -> Option<u32> {
        // Relaxed: the head was acquired, which orders this after the
        // pusher's store of the link.
        self.pool
            .link(self.slab, index)
            .map(|link| link.load(Ordering::Relaxed))
    }

    #[inline]
    fn set_next(&self, index: u32, next: u32) {
        // The caller owns `index` and has validated it, so it resolves.
        if let Some(link) = self.pool.link(self.slab, index) {
            link.store(next, Ordering::Relaxed);
        }
    }
}

impl PoolAllocator {
    /// The segment this allocator manages.
    #[inline]
    pub fn segment(&self) -> &Segment {
        self.shell.segment()
    }

    /// The slot sizes, ascending.
    pub fn slot_sizes(&self) -> Vec<u64> {
        self.geometry.slabs().iter().map(|s| s.slot).collect()
    }

    /// The size of the pages slots are carved from.
    pub fn page_size(&self) -> u64 {
        self.geometry.page
    }

    #[inline]
    fn state(&self) -> &PoolState {
        self.shell.state()
    }

    #[inline]
    fn pages(&self) -> u64 {
        self.state().pages.load(Ordering::Acquire)
    }

    /// An atomic in the segment at `offset`, bounds- and alignment-checked.
    #[inline]
    fn atomic_at<T>(&self, offset: u64) -> Option<&T> {
        let ptr = self.segment().resolve(Offset::<T>::from_raw(offset)).ok()?;
        // SAFETY: `resolve` checked bounds and alignment; callers use it for
        // atomics only (valid for any bytes), which live as long as the
        // segment, so as long as `self`.
        Some(unsafe { ptr.as_ref() })
    }

    #[inline]
    fn page_header(&self, page: u32) -> Option<&PageHeader> {
        self.atomic_at(self.geometry.page_offset(u64::from(page)))
    }

    /// The 0-based slab that owns a claimed, set-up page.
    #[inline]
    fn page_slab(&self, page: u32) -> Option<usize> {
        self.page_owner(page).map(|(slab, _)| slab)
    }

    /// The slab and home shard of a set-up page.
    #[inline]
    fn page_owner(&self, page: u32) -> Option<(usize, usize)> {
        if u64::from(page) >= self.pages() {
            return None;
        }
        let header = self.page_header(page)?;
        let owner = decode_owner(header.slab.load(Ordering::Acquire), self.geometry.count)?;
        (header.seal.load(Ordering::Relaxed) == page ^ PAGE_KEY).then_some(owner)
    }

    /// The slab of claimed page `page` for [`regions`](ShmAllocator::regions):
    /// `None` while its header is not set up (a claim in progress, or a
    /// claimer that died first), an error when the header is garbage.
    fn walked_page_slab(&self, page: u32) -> Result<Option<usize>> {
        Ok(self.walked_page_owner(page)?.map(|(slab, _)| slab))
    }

    /// [`walked_page_slab`](Self::walked_page_slab) with the home shard.
    fn walked_page_owner(&self, page: u32) -> Result<Option<(usize, usize)>> {
        let header = self
            .page_header(page)
            .ok_or_else(|| Error::corrupt(format!("pool: page {page} is out of bounds")))?;
        let word = header.slab.load(Ordering::Acquire);
        if word == 0 {
            return Ok(None);
        }
        let seal = header.seal.load(Ordering::Relaxed);
        match decode_owner(word, self.geometry.count) {
            Some(owner) if seal == page ^ PAGE_KEY => Ok(Some(owner)),
            _ => Err(Error::corrupt(format!(
                "pool: page {page} has owner word {word:#x} and seal {seal:#x}, not a set-up page"
            ))),
        }
    }

    #[inline]
    fn slot_offset(&self, at: SlotRef) -> u64 {
        let slab = self.geometry.slabs[at.slab];
        self.geometry.page_offset(u64::from(at.page)) + slab.first + u64::from(at.slot) * slab.slot
    }

    #[inline]
    fn index_of(&self, at: SlotRef) -> u32 {
        // Page numbers stay below `max_pages`, so this is below `EMPTY`.
        at.page * self.geometry.slabs[at.slab].per_page + at.slot
    }

    /// A slot's marker for the walks (`check`, `regions`): out of bounds is
    /// corruption.
    fn walked_marker(&self, at: SlotRef) -> Result<u32> {
        let marker = self
            .marker(at)
            .ok_or_else(|| Error::corrupt(format!("pool: marker of {at} out of bounds")))?;
        Ok(marker.load(Ordering::Acquire))
    }

    #[inline]
    fn marker(&self, at: SlotRef) -> Option<&AtomicU32> {
        self.atomic_at(
            self.geometry.page_offset(u64::from(at.page))
                + PAGE_HEADER
                + MARKER * u64::from(at.slot),
        )
    }

    /// The slot named by `index` in `slab`, if it is one.
    #[inline]
    fn decode_index(&self, slab: usize, index: u32) -> Option<SlotRef> {
        let per_page = self.geometry.slabs[slab].per_page;
        let at = SlotRef {
            slab,
            page: index / per_page,
            slot: index % per_page,
        };
        (self.page_slab(at.page)? == slab).then_some(at)
    }

    #[inline]
    fn link(&self, slab: usize, index: u32) -> Option<&AtomicU32> {
        let at = self.decode_index(slab, index)?;
        self.atomic_at(self.slot_offset(at))
    }

    /// The slot that starts exactly at `offset`, if any, and its page's
    /// home shard.
    #[inline]
    fn locate(&self, offset: u64) -> Option<(SlotRef, usize)> {
        let relative = offset.checked_sub(self.geometry.base)?;
        let page = u32::try_from(relative / self.geometry.page).ok()?;
        let (slab, home) = self.page_owner(page)?;
        let shape = self.geometry.slabs[slab];
        let within = (relative % self.geometry.page).checked_sub(shape.first)?;
        if within % shape.slot != 0 {
            return None;
        }
        let slot = u32::try_from(within / shape.slot).ok()?;
        (slot < shape.per_page).then_some((SlotRef { slab, page, slot }, home))
    }

    /// The live slot at `offset`, its marker and the marker's value
    /// (requested size + 1).
    fn live_slot(&self, offset: u64) -> Result<(SlotRef, &AtomicU32, u32)> {
        self.live_slot_and_home(offset)
            .map(|(at, marker, value, _)| (at, marker, value))
    }

    /// [`live_slot`](Self::live_slot) with its page's home shard, where a
    /// free gives it back.
    #[inline]
    fn live_slot_and_home(&self, offset: u64) -> Result<(SlotRef, &AtomicU32, u32, usize)> {
        let invalid = || Error::InvalidFree { offset };
        let (at, home) = self.locate(offset).ok_or_else(invalid)?;
        let marker = self.marker(at).ok_or_else(invalid)?;
        match marker.load(Ordering::Acquire) {
            // Pending: not yet handed to anyone, so nobody may free it.
            value if value == 0 || value & PENDING != 0 => Err(invalid()),
            value => Ok((at, marker, value, home)),
        }
    }

    fn links(&self, slab: usize) -> SlabLinks<'_> {
        SlabLinks { pool: self, slab }
    }

    /// The smallest slab that holds `size` bytes aligned to `align`.
    #[inline]
    fn pick(&self, size: u64, align: u64) -> Result<usize> {
        if let Some(slab) = self
            .geometry
            .slabs()
            .iter()
            .position(|s| s.slot >= size && s.align >= align)
        {
            return Ok(slab);
        }
        let largest = self.geometry.slabs[self.geometry.count - 1].slot;
        if size > largest {
            return Err(Error::OutOfMemory {
                requested: size,
                available: largest,
            });
        }
        let best = self
            .geometry
            .slabs()
            .iter()
            .map(|s| s.align)
            .max()
            .unwrap_or(8);
        Err(Error::InvalidAlignment {
            align: align as usize,
            max: (best as usize).min(self.segment().max_align()),
        })
    }

    /// A slot of `slab` that nobody holds, for a thread of `shard`: from
    /// its shard's free stack or carving page, else a new page while less
    /// than half the pages are claimed, else from another shard's stack or
    /// carving page, else a new page however it comes. Borrowing only once
    /// the pool is half full keeps workers apart while there is room and
    /// leaves no slot unreachable when there is not; before it reports that
    /// no page is left, it looks at every shard once more, since a slot may
    /// have been freed behind its first pass.
    fn take_slot(&self, slab: usize, shard: usize) -> Result<SlotRef> {
        if let Some(at) = self.take_from_shard(slab, shard)? {
            return Ok(at);
        }
        if self.pages() < self.pages_at_most() / 2 {
            // Any failure to get a page (a segment that cannot grow, a full
            // file system) leaves the other shards to look at.
            if let Ok(at) = self.carve_new_page(slab, shard) {
                return Ok(at);
            }
        }
        let others = || (1..POOL_SHARDS).map(|k| (shard + k) % POOL_SHARDS);
        for other in others() {
            if let Some(at) = self.take_from_shard(slab, other)? {
                return Ok(at);
            }
        }
        match self.carve_new_page(slab, shard) {
            Ok(at) => Ok(at),
            Err(no_page) => {
                for any in std::iter::once(shard).chain(others()) {
                    if let Some(at) = self.take_from_shard(slab, any)? {
                        return Ok(at);
                    }
                }
                Err(no_page)
            }
        }
    }

    /// A slot from the free stack or the carving page of `slab` in `shard`.
    #[inline]
    fn take_from_shard(&self, slab: usize, shard: usize) -> Result<Option<SlotRef>> {
        match self.pop_slot(slab, shard)? {
            Some(at) => Ok(Some(at)),
            None => self.carve(slab, shard),
        }
    }

    /// The most pages the segment can hold, grown to its maximum size.
    fn pages_at_most(&self) -> u64 {
        let room = self.segment().max_size().saturating_sub(self.geometry.base);
        (room / self.geometry.page).min(self.geometry.max_pages)
    }

    /// Pops a slot off the free stack of `slab` in `shard`.
    #[inline]
    fn pop_slot(&self, slab: usize, shard: usize) -> Result<Option<SlotRef>> {
        let hot = &self.state().slabs[slab][shard].hot;
        match slot_stack::pop(&hot.head, &self.links(slab)) {
            Ok(Some(index)) => {
                hot.free_slots.fetch_sub(1, Ordering::Relaxed);
                self.decode_index(slab, index).map(Some).ok_or_else(|| {
                    Error::corrupt(format!("slab {slab}: popped slot {index} vanished"))
                })
            }
            Ok(None) => Ok(None),
            Err(PopError::Corrupt { index }) => Err(Error::corrupt(format!(
                "slab {slab}: free stack names slot {index}, which is none of its slots"
            ))),
            Err(PopError::SelfLink { index }) => Err(Error::corrupt(format!(
                "slab {slab}: free slot {index} links to itself"
            ))),
        }
    }

    /// Pushes a slot that the caller holds (and has marked free) onto the
    /// free stack of `shard`.
    #[inline]
    fn give_slot(&self, at: SlotRef, shard: usize) {
        let hot = &self.state().slabs[at.slab][shard].hot;
        hot.free_slots.fetch_add(1, Ordering::Relaxed);
        slot_stack::push(&hot.head, &self.links(at.slab), self.index_of(at));
    }
}

impl ShmAllocator for PoolAllocator {
    fn backing_segment(&self) -> Option<&Segment> {
        Some(self.segment())
    }

    fn kind(&self) -> AllocatorKind {
        AllocatorKind::Pool
    }

    fn allocate_offset(&self, _ctx: &MemContext, size: usize, align: usize) -> Result<u64> {
        let align = power_of_two_align(align, self.segment().max_align())?;
        let size = size.max(1) as u64;
        let slab = self.pick(size, align as u64)?;
        // One lookup of the thread's hand-off slot serves the shard, the
        // accounting and the record.
        let mine = handoff::my_indexed_slot(self.segment());
        let shard = handoff::shard_of(mine, POOL_SHARDS);
        let at = self.take_slot(slab, shard)?;
        let marker = self
            .marker(at)
            .ok_or_else(|| Error::corrupt(format!("slot {at} has no marker")))?;
        // `size <= slot <= POOL_MAX_SLOT`, so `size + 1` fits a u32 below
        // the pending bit.
        let value = size as u32 + 1;
        if marker
            .compare_exchange(0, value | PENDING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::corrupt(format!(
                "slot {at} came off the free list while live"
            )));
        }
        self.state()
            .counters
            .on_allocate_to(mine.map(|(_, slot)| &slot.share), size);
        let offset = self.slot_offset(at);
        crash_point!("pool.alloc.pending");
        if let Some((_, log)) = mine {
            log.record(offset);
        }
        crash_point!("pool.alloc.recorded");
        // Ours alone while pending (frees refuse it): a plain store.
        marker.store(value, Ordering::Release);
        Ok(offset)
    }

    unsafe fn free_offset(&self, _ctx: &MemContext, offset: u64) -> Result<()> {
        let (at, marker, value, home) = self.live_slot_and_home(offset)?;
        // One lookup of the thread's hand-off slot: the record and the
        // accounting.
        let mine = handoff::my_slot(self.segment());
        if let Some(log) = mine {
            log.forget(offset);
        }
        // Claiming the marker makes this free the only one: a second free,
        // racing or later, finds 0 and is refused.
        if marker
            .compare_exchange(value, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::InvalidFree { offset });
        }
        self.segment()
            .scrub(offset, self.geometry.slabs[at.slab].slot);
        self.state()
            .counters
            .on_free_to(mine.map(|slot| &slot.share), u64::from(value - 1));
        crash_point!("pool.free.unlisted");
        self.give_slot(at, home);
        Ok(())
    }

    /// Rebuilds every free stack from the slot markers: slots a process
    /// freed or took but died before pushing or marking are free again. A
    /// page whose claimer died before setting it up joins the first slab.
    unsafe fn recovery_pass(&self) -> Result<RecoveryReport> {
        self.recover_slabs()
    }

    fn usable_size(&self, offset: u64) -> Result<usize> {
        let (at, _, _) = self.live_slot(offset)?;
        Ok(self.geometry.slabs[at.slab].slot as usize)
    }

    fn full_ptr(&self, offset: u64) -> Result<FullPtr<u8>> {
        self.live_slot(offset)?;
        self.segment()
            .full_ptr_from_offset(Offset::from_raw(offset))
    }

    fn offset_of_local(&self, ptr: NonNull<u8>) -> Result<u64> {
        self.segment().offset_of(ptr.as_ptr()).map(|o| o.raw())
    }

    /// A block is resized in place whenever the new size fits its slot (so
    /// shrinking never moves a block, and it keeps its alignment).
    unsafe fn resize_in_place(
        &self,
        _ctx: &MemContext,
        offset: u64,
        new_size: usize,
    ) -> Result<bool> {
        let (at, marker, value) = self.live_slot(offset)?;
        let new_size = new_size.max(1) as u64;
        if new_size > self.geometry.slabs[at.slab].slot {
            return Ok(false);
        }
        if marker
            .compare_exchange(
                value,
                new_size as u32 + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(Error::InvalidFree { offset });
        }
        let counters = &self.state().counters;
        counters.on_resize(self.segment(), u64::from(value - 1), new_size);
        Ok(true)
    }

    /// `free_bytes` counts free slots, the unused rest of each slab's
    /// current page and the space no page has claimed yet;
    /// `largest_free_block` is the largest slot size that can be served now
    /// without growing; `capacity` is the page area at the current size.
    fn stats(&self) -> AllocStats {
        let (allocated_bytes, live_allocations, peak_bytes) =
            self.state().counters.snapshot(self.segment());
        // Measured at the maximum size: the rest is backed as pages are
        // claimed.
        let size = self.segment().max_size();
        let pages = self.pages().min(self.geometry.max_pages);
        let untouched = size.saturating_sub(self.geometry.page_offset(pages));
        let mut free_bytes = untouched;
        let mut largest_free_block = 0;
        for (slab, shape) in self.geometry.slabs().iter().enumerate() {
            let slots = pages * u64::from(shape.per_page);
            let (mut free_slots, mut fresh) = (0u64, 0u64);
            for state in &self.state().slabs[slab] {
                free_slots += state.hot.free_slots.load(Ordering::Relaxed);
                let (page, used) = unpack_fresh(state.fresh.load(Ordering::Relaxed));
                if page != EMPTY {
                    fresh += u64::from(shape.per_page.saturating_sub(used));
                }
            }
            let free_slots = free_slots.min(slots);
            free_bytes = free_bytes.saturating_add((free_slots + fresh).saturating_mul(shape.slot));
            if free_slots + fresh > 0 || untouched >= self.geometry.page {
                largest_free_block = largest_free_block.max(shape.slot);
            }
        }
        AllocStats {
            allocated_bytes,
            peak_bytes,
            live_allocations,
            free_bytes,
            largest_free_block,
            capacity: size.saturating_sub(self.geometry.base),
        }
    }

    /// Reports the data area slot by slot, merged into runs: consecutive
    /// live slots form one region wholly in use (a slot counts whole, the
    /// bytes a block may use), consecutive free or not yet carved slots one
    /// region wholly free. A page's header and markers, the slack after its
    /// last slot, the padding before the first page and the space no page
    /// has claimed yet are bytes no block holds, so they count as free too
    /// and merge with the free runs around them. Slot runs rather than
    /// pages, because a page is one slot size only and its live slots may
    /// sit anywhere in it: a page-sized region would smear them.
    ///
    /// The walk reads only the page headers and markers, each bounds-checked;
    /// a page whose header is garbage or a marker that records more than
    /// its slot is an error. On a busy pool it is a snapshot slot by slot.
    fn regions(&self, visit: &mut dyn FnMut(Region)) -> Result<()> {
        let geometry = &self.geometry;
        let pages = self.pages();
        let size = self.segment().size();
        if pages > geometry.max_pages || geometry.page_offset(pages) > size {
            return Err(Error::corrupt(format!(
                "pool: {pages} pages do not fit the segment"
            )));
        }
        let mut runs = Runs::new(visit);
        runs.push(self.segment().data_offset(), geometry.base, false);
        // `pages <= max_pages <= EMPTY`, so every page number fits a u32.
        for page in 0..pages as u32 {
            let start = geometry.page_offset(u64::from(page));
            let end = start + geometry.page;
            let Some(slab) = self.walked_page_slab(page)? else {
                // Not set up: none of its slots was handed out.
                runs.push(start, end, false);
                continue;
            };
            let shape = geometry.slabs[slab];
            runs.push(start, start + shape.first, false);
            for slot in 0..shape.per_page {
                let at = SlotRef { slab, page, slot };
                let value = self.walked_marker(at)?;
                if let Some(bytes) = marked_size(value).filter(|&bytes| bytes > shape.slot) {
                    return Err(Error::corrupt(format!(
                        "pool: slot {at} records {bytes} bytes, more than its {}",
                        shape.slot
                    )));
                }
                let offset = self.slot_offset(at);
                runs.push(offset, offset + shape.slot, value != 0);
            }
            let slots_end = start + shape.first + u64::from(shape.per_page) * shape.slot;
            runs.push(slots_end, end, false);
        }
        runs.push(geometry.page_offset(pages), size, false);
        runs.finish();
        Ok(())
    }

    /// Walks every claimed page (header, seal, markers) and every slab's
    /// free stack (bounded by the slab's slot count; every index must be a
    /// free, carved slot of that slab, none twice), then checks that every
    /// slot is live, free or not yet carved, and that the counters agree.
    /// What a process killed mid-operation leaves (a pending slot, a slot on
    /// no stack, a page never set up, counters one operation off) is
    /// [`Error::NeedsRecovery`]; anything else is corruption. Meant for a
    /// quiescent pool: a concurrent allocation may look like either.
    fn check(&self) -> Result<()> {
        self.check_walk()
    }
}

impl_allocator_api2!(PoolAllocator);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SegmentAllocator, SegmentOptions};

    fn pool(size: u64) -> PoolAllocator {
        let params = PoolParams::new(&[24, 256, 4096]).unwrap();
        PoolAllocator::create_with(&SegmentOptions::private().size(size), &params).unwrap()
    }

    #[test]
    fn recovery_puts_back_slots_and_pages_that_a_crash_left_in_no_stack() {
        let pool = pool(1 << 20);
        let ctx = MemContext::default();
        let kept = pool.allocate_offset(&ctx, 20, 8).unwrap();
        let cut_short = pool.allocate_offset(&ctx, 200, 8).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { pool.free_offset(&ctx, pool.allocate_offset(&ctx, 10, 8).unwrap()) }.unwrap();
        // A free that died after clearing the marker, before counting and
        // pushing; then a page claim that died before setting the page up.
        let (_, marker, _) = pool.live_slot(cut_short).unwrap();
        marker.store(0, Ordering::Release);
        pool.state().pages.fetch_add(1, Ordering::AcqRel);
        assert!(pool.check().is_err());

        // SAFETY: no other thread of this process uses the allocator meanwhile.
        let report = unsafe { pool.recover() }.unwrap();
        pool.check().unwrap();
        let lost_page_slots = u64::from(pool.geometry.slabs[0].per_page);
        assert_eq!(report.blocks_reclaimed, 1 + lost_page_slots, "{report}");
        assert_eq!(report.after.live_allocations, 1);
        assert_eq!(report.after.allocated_bytes, 20);
        assert_eq!(report.before.live_allocations, 2);
        // The reclaimed slot serves again (it went onto one of the shards'
        // stacks, so it may take a while), and the kept block is untouched.
        let mut taken = Vec::new();
        while let Ok(block) = pool.allocate_offset(&ctx, 200, 8) {
            taken.push(block);
            if block == cut_short {
                break;
            }
        }
        assert_eq!(taken.last(), Some(&cut_short));
        assert_eq!(pool.usable_size(kept).unwrap(), 24);
        for block in taken {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { pool.free_offset(&ctx, block) }.unwrap();
        }
        // SAFETY: nothing uses the block after it is freed.
        unsafe { pool.free_offset(&ctx, kept) }.unwrap();
        pool.check().unwrap();
        // A second pass finds nothing more.
        // SAFETY: no other thread of this process uses the allocator meanwhile.
        assert_eq!(unsafe { pool.recover() }.unwrap().blocks_reclaimed, 0);
    }

    #[test]
    fn recovery_refuses_a_garbage_page_and_changes_nothing() {
        let pool = pool(1 << 20);
        let ctx = MemContext::default();
        let block = pool.allocate_offset(&ctx, 20, 8).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { pool.free_offset(&ctx, pool.allocate_offset(&ctx, 20, 8).unwrap()) }.unwrap();
        pool.page_header(0)
            .unwrap()
            .seal
            .store(7, Ordering::Relaxed);
        // The stack the free above went to: this thread's shard.
        let mine = handoff::shard_of(handoff::my_indexed_slot(pool.segment()), POOL_SHARDS);
        let head = pool.state().slabs[0][mine].hot.head.load(Ordering::Relaxed);
        assert_ne!(slot_stack::unpack(head).1, EMPTY);
        assert!(matches!(
            // SAFETY: no other thread of this process uses the allocator meanwhile.
            unsafe { pool.recover() },
            Err(Error::CorruptHeader { .. })
        ));
        assert_eq!(
            pool.state().slabs[0][mine].hot.head.load(Ordering::Relaxed),
            head
        );
        pool.page_header(0)
            .unwrap()
            .seal
            .store(PAGE_KEY, Ordering::Relaxed);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { pool.free_offset(&ctx, block) }.unwrap();
        pool.check().unwrap();
    }

    /// The pool's regions, checked to tile the data area in offset order.
    fn tiling(pool: &PoolAllocator) -> Vec<Region> {
        let mut regions = Vec::new();
        pool.regions(&mut |region| regions.push(region)).unwrap();
        let mut next = pool.segment().data_offset();
        for region in &regions {
            assert_eq!(region.offset, next, "gap or overlap: {regions:?}");
            assert!(region.len > 0 && region.used <= region.len, "{region:?}");
            next = region.offset + region.len;
        }
        assert_eq!(next, pool.segment().size(), "the data area is covered");
        regions
    }

    fn region_at(regions: &[Region], offset: u64) -> Region {
        *regions
            .iter()
            .find(|r| (r.offset..r.offset + r.len).contains(&offset))
            .unwrap()
    }

    #[test]
    fn regions_show_live_and_free_slot_runs() {
        let pool = pool(1 << 20);
        let mut live = Vec::new();
        let mut freed = Vec::new();
        for (index, size) in [20usize, 200, 3000].repeat(12).into_iter().enumerate() {
            let block = pool.allocate(size).unwrap();
            if index % 3 == 1 || index % 5 == 0 {
                freed.push(block);
            } else {
                live.push((block, size as u64));
            }
        }
        for &block in &freed {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { pool.free(block) }.unwrap();
        }
        let regions = tiling(&pool);
        let used: u64 = regions.iter().map(|r| r.used).sum();
        let usable: u64 = live
            .iter()
            .map(|(b, _)| pool.usable_size(b.offset().raw()).unwrap() as u64)
            .sum();
        let requested: u64 = live.iter().map(|(_, size)| size).sum();
        assert_eq!(used, usable, "live slots count whole: {regions:?}");
        assert!(used >= requested);
        for (block, _) in &live {
            let region = region_at(&regions, block.offset().raw());
            assert_eq!(region.used, region.len, "live block in {region:?}");
        }
        for block in &freed {
            let region = region_at(&regions, block.offset().raw());
            assert_eq!(region.used, 0, "freed block in {region:?}");
        }
        // Runs merge, but live and freed slots alternate in places.
        assert!(regions.len() > 4, "{regions:?}");
        for pair in regions.windows(2) {
            let full = |r: &Region| r.used == r.len;
            assert_ne!(full(&pair[0]), full(&pair[1]), "unmerged: {pair:?}");
        }
    }

    #[test]
    fn regions_of_a_fresh_or_emptied_pool_hold_nothing() {
        let pool = pool(1 << 20);
        let fresh = tiling(&pool);
        assert_eq!(fresh.iter().map(|r| r.used).sum::<u64>(), 0);
        let blocks: Vec<_> = [20usize, 200, 3000]
            .repeat(50)
            .into_iter()
            .map(|size| pool.allocate(size).unwrap())
            .collect();
        let busy = tiling(&pool);
        assert!(busy.iter().map(|r| r.used).sum::<u64>() >= 50 * 3220);
        for block in blocks {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { pool.free(block) }.unwrap();
        }
        let emptied = tiling(&pool);
        assert_eq!(emptied.iter().map(|r| r.used).sum::<u64>(), 0);
        // Headers, free slots and the untouched tail merge into one run.
        assert_eq!(emptied.len(), 1, "{emptied:?}");
        pool.check().unwrap();
    }

    #[test]
    fn regions_refuse_a_broken_page_instead_of_guessing() {
        let pool = pool(1 << 20);
        let block = pool.allocate(200).unwrap();
        let header = pool.page_header(0).unwrap();
        let seal = header.seal.load(Ordering::Relaxed);
        header.seal.store(seal ^ 1, Ordering::Relaxed);
        assert!(matches!(
            pool.regions(&mut |_| {}),
            Err(Error::CorruptHeader { .. })
        ));
        header.seal.store(seal, Ordering::Relaxed);
        let (at, _) = pool.locate(block.offset().raw()).unwrap();
        let marker = pool.marker(at).unwrap();
        marker.store(u32::MAX, Ordering::Relaxed);
        assert!(pool.regions(&mut |_| {}).is_err(), "a marker past its slot");
        marker.store(201, Ordering::Relaxed);
        let pages = &pool.state().pages;
        pages.store(u64::MAX, Ordering::Relaxed);
        assert!(
            pool.regions(&mut |_| {}).is_err(),
            "a page count past the end"
        );
        // A claimed page whose header is not set up yet holds no block.
        pages.store(2, Ordering::Relaxed);
        let regions = tiling(&pool);
        assert_eq!(regions.iter().map(|r| r.used).sum::<u64>(), 256);
        pages.store(1, Ordering::Relaxed);
        pool.check().unwrap();
    }

    #[test]
    fn every_slot_fits_its_page_aligned() {
        for sizes in [
            vec![8u32],
            vec![24, 40, 72, 136],
            vec![64, 256, 1024, 4096],
            vec![POOL_MAX_SLOT],
            vec![8, 4096, 65536, POOL_MAX_SLOT],
        ] {
            let params = PoolParams::new(&sizes).unwrap();
            let words = PoolAllocator::encode_params(&params);
            let geometry = Geometry::new(&words, 2176 + 128).unwrap();
            assert_eq!(geometry.page, params.page_size());
            for slab in geometry.slabs() {
                assert!(slab.per_page >= 1);
                assert!(slab.first >= PAGE_HEADER + MARKER * u64::from(slab.per_page));
                assert_eq!(slab.first % slab.align, 0);
                assert!(slab.first + u64::from(slab.per_page) * slab.slot <= geometry.page);
                // One more slot would not fit.
                let more = u64::from(slab.per_page) + 1;
                let first = align_up(PAGE_HEADER + MARKER * more, slab.align).unwrap();
                assert!(first + more * slab.slot > geometry.page, "{sizes:?}");
                assert_eq!(geometry.base % slab.align, 0);
                assert!(geometry.max_pages * u64::from(slab.per_page) <= u64::from(EMPTY));
            }
        }
    }

    #[test]
    fn bad_parameter_words_are_refused() {
        for words in [
            [0, 0, 0, 0],
            [64, 0, 128, 0],
            [64, 64, 0, 0],
            [12, 0, 0, 0],
            [u64::from(POOL_MAX_SLOT) + 8, 0, 0, 0],
            [u64::MAX, 0, 0, 0],
        ] {
            assert!(Geometry::new(&words, 4096).is_err(), "{words:?}");
        }
    }
}
