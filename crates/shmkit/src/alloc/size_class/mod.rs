//! The size-class allocator: fine size classes carved out of 64 KiB pages,
//! which come from a lock-free page heap shared by every class, so memory
//! freed at one size is reusable at any other.
//!
//! Three layers, each lock-free:
//!
//! * **Page heap.** A bump cursor over the pages of the data area (growing
//!   the segment when it runs out) and a tagged stack of free *runs* of
//!   pages. A large request takes a whole run; a class takes one page.
//!   When neither the stack nor the cursor can serve a request, a *collect*
//!   pass takes every free run, retires the empty pages of every class,
//!   sorts and merges the runs, gives a free tail back to the cursor and
//!   pushes the rest back.
//! * **Pages.** Each page in use has a descriptor in a table at the start of
//!   the data area (sized from `max_size`, so growth needs no new table): a
//!   state word (phase, class, live count, *listed* flag, shard), a link for the
//!   stack it is on, a run length and the requested size of a large block.
//!   A small page starts with an allocation bitmap and a *slack* array (the
//!   class size minus the size requested, for exact accounting), then its
//!   blocks.
//! * **Classes.** Each class has a tagged stack of its pages that may have
//!   room, one per *shard*: a thread carves pages of the shard its hand-off
//!   slot falls in (slot index mod 8), so two workers touch no page or
//!   stack head in common, and a page with room again goes back to its own
//!   shard's stack. A shard with no page of the class opens a new one while
//!   less than half the heap is carved, and borrows another shard's page
//!   after that, so a nearly full heap still hands out every block (while
//!   less than half is carved, each active shard may hold a partly used
//!   page per class of its own). Allocation reserves a block by raising
//!   the page's live count with a compare-and-swap, then claims a bit of
//!   the bitmap; free clears the bit (`fetch_and`, so a double free is
//!   detected exactly) and lowers the live count.
//!
//! A page descriptor is 64 bytes (a cache line of its own: two threads on
//! neighbouring pages share no line), at `data offset + 64 * page`: the state
//! word (`+0`: the phase in the low byte, 0 free, 1 small, 2 large, 3 tail
//! of a large block; the class in the next byte; the live count from bit
//! 16; the listed flag at bit 32; the shard in bits 33 to 35), the link
//! (`+8`: `index + 1` of the next page on the stack the page is on, 0 at
//! its end), the run length (`+16`) and the requested size of a large
//! block (`+24`).
//!
//! ## Damaged links
//!
//! The stacks are chained through link words in the segment, which a stray
//! write can damage. No walk trusts them: a link out of range, or one that
//! names its own page, is refused by the stack itself; a page taken off a
//! class stack must be listed and one taken off the free-run stack free, so
//! a longer cycle is caught as soon as it leads back to a page already
//! taken; draining a whole chain stops after as many steps as there are
//! pages. Each is an [`Error::CorruptHeader`], never a hang or a page
//! handed out twice.
//!
//! ## Handing a block out
//!
//! A block whose bit is clear has the sentinel slack (pages start so, and a
//! free sets it before clearing the bit), so a claimed bit with the sentinel
//! slack is a block nobody holds: being handed out, or being freed. An
//! allocation claims the bit, records the block in the thread's hand-off
//! log (`alloc::handoff`), and only then writes the real slack; a large
//! block is `PENDING_LARGE` until recorded. A process killed in between
//! leaves a block the recovery pass frees, never one nobody can free; and
//! a stale free of the same offset meets the sentinel and is refused.
//!
//! ## Why retiring an empty page cannot race an allocation
//!
//! A page leaves its class only through one compare-and-swap of its state
//! word from `SMALL, class c, live 0` to `FREE`, done by the thread that
//! holds the page's *listed token* (it popped the page off the class stack,
//! or it is the freer of the last block of an unlisted page). An allocation
//! must first move the same word from `SMALL, class c, live k` to `live k+1`.
//! The two compare-and-swaps are on one word, so exactly one of them wins:
//! either the allocation reserved a block first (the retire fails, sees
//! `live 1` and puts the page back on its stack), or the retire won (the
//! allocation fails, since the phase is no longer `SMALL`, and looks for
//! another page). A free cannot race the retire at all: it only lowers the
//! live count after clearing a set bit, and a set bit means `live >= 1`.
//! Since every set bit is counted in `live` (bits are set after the count is
//! raised and cleared before it is lowered), `live 0` means an all-clear
//! bitmap: a retired page holds no block.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crossbeam_utils::CachePadded;

use super::counters::AllocCounters;
use super::handoff::{self, HandoffSlot};
use super::in_segment::{InSegment, StatePtr};
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
use crate::sync::tagged_stack::{self, BadLink};

/// The integrity walk (`check`) and the rebuild a recovery pass runs.
mod check;
/// The size classes and their page layout.
mod classes;
/// The page heap: bump cursor, free runs, collection of emptied pages.
mod page_heap;
/// Small blocks in their pages, and looking an offset up.
mod pages;

pub(crate) use check::PagesChecked;
use classes::*;
pub(crate) use classes::{class_block_size, class_for};

/// Bytes in a page of the page heap.
const PAGE_SIZE: u64 = 64 << 10;
/// Requests above this size take a run of whole pages.
const LARGE_THRESHOLD: usize = 32 << 10;
/// Number of size classes: 16-byte steps up to 128, then four classes per
/// power of two up to [`LARGE_THRESHOLD`](Self::LARGE_THRESHOLD).
const NUM_CLASSES: usize = 40;
/// The largest alignment a size class serves; larger ones take pages.
const MAX_CLASS_ALIGN: u64 = 4096;
const STATE_MAGIC: u64 = 0x5349_5a45_434c_5331; // "SIZECLS1"

// ---------------------------------------------------------------- state

/// The slack of a block that no user holds (being freed, or in a cache):
/// larger than any real slack of its class.
#[inline]
fn sentinel(info: &ClassInfo) -> u64 {
    if info.slack_width == 1 {
        0xff
    } else {
        0xffff
    }
}

/// The bits of bitmap word `word` that stand for blocks of the class (the
/// last word of a page may cover fewer than 64).
#[inline]
fn valid_bits(info: &ClassInfo, word: u64) -> u64 {
    if (word + 1) * 64 <= info.count {
        u64::MAX
    } else {
        (1u64 << (info.count - word * 64)) - 1
    }
}

/// A small block in use, located by [`SizeClassAllocator::small_block_at`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct SmallBlock {
    pub(crate) page: u32,
    pub(crate) class: usize,
    pub(crate) index: u64,
    /// Local address of the page.
    base: *mut u8,
    /// Local address of the block.
    at: *mut u8,
}

/// What [`SizeClassAllocator::take_for_free`] took.
pub(crate) enum Freed {
    /// A small block, marked but still holding its bit.
    Small {
        page: u32,
        class: usize,
        index: u64,
        requested: u64,
    },
    /// A large block, already back in the page heap.
    Large { requested: u64 },
}

/// Page phases, in the low byte of the state word.
const FREE: u64 = 0;
const SMALL: u64 = 1;
const LARGE: u64 = 2;
const TAIL: u64 = 3;
/// A large block being handed out (see "Handing a block out").
const PENDING_LARGE: u64 = 4;

const LIVE_SHIFT: u32 = 16;
const LIVE_ONE: u64 = 1 << LIVE_SHIFT;
const LISTED: u64 = 1 << 32;
/// The page's shard: which threads' class stacks it goes back to.
const SHARD_SHIFT: u32 = 33;
const SHARD_BITS: u32 = 3;
/// Class stacks per class: threads of different shards (by hand-off slot)
/// carve different pages, so two workers write no page line in common.
const SHARDS: usize = 1 << SHARD_BITS;

#[inline]
fn phase(state: u64) -> u64 {
    state & 0xff
}
#[inline]
fn class_of(state: u64) -> usize {
    ((state >> 8) & 0xff) as usize
}
#[inline]
fn live(state: u64) -> u64 {
    (state >> LIVE_SHIFT) & 0xffff
}
#[inline]
fn shard_of(state: u64) -> usize {
    ((state >> SHARD_SHIFT) as usize) & (SHARDS - 1)
}
#[inline]
fn small_state(class: usize, live: u64, listed: bool, shard: usize) -> u64 {
    SMALL
        | ((class as u64) << 8)
        | (live << LIVE_SHIFT)
        | if listed { LISTED } else { 0 }
        | ((shard as u64) << SHARD_SHIFT)
}

/// The calling thread's hand-off slot and its index, looked up once per
/// call: its index picks the shard, the slot takes the record.
type Mine<'a> = Option<(u32, &'a HandoffSlot)>;

/// Records `offset` in the thread's hand-off slot, if it has one.
#[inline]
fn record(mine: Mine<'_>, offset: u64) {
    if let Some((_, log)) = mine {
        log.record(offset);
    }
}

/// One page's metadata, in the table at the start of the data area: one
/// cache line each, since the state word takes a read-modify-write on
/// every allocation and free in the page, and two threads working on
/// neighbouring pages must not pass one line back and forth.
#[repr(C, align(64))]
struct PageDesc {
    /// Phase, class, live count, listed flag.
    state: AtomicU64,
    /// `index + 1` of the next page on the stack this page is on.
    link: AtomicU64,
    /// Length of the run this page heads (free runs and large blocks).
    run: AtomicU64,
    /// Bytes requested for the large block this page heads.
    requested: AtomicU64,
}

const DESC_LEN: u64 = std::mem::size_of::<PageDesc>() as u64;
const _: () = assert!(DESC_LEN == 64);

#[repr(C)]
struct SizeClassState {
    magic: u64,
    /// Offset of page 0 (the table sits between the data offset and here).
    heap_base: u64,
    /// Pages the table describes (the most `max_size` can hold).
    max_pages: u64,
    /// Pages handed out by the bump cursor so far.
    bump: CachePadded<AtomicU64>,
    /// Tagged head of the stack of free runs.
    free_runs: CachePadded<AtomicU64>,
    /// Collect passes under way (an allocation that finds nothing while one
    /// runs waits for it rather than fail).
    collecting: CachePadded<AtomicU64>,
    /// Tagged heads of the per-class stacks of pages that may have room,
    /// one set per shard.
    classes: [CachePadded<[AtomicU64; NUM_CLASSES]>; SHARDS],
    counters: AllocCounters,
}

/// Where the heap lies, for a segment's data offset, max size and alignment.
fn heap_layout(data_offset: u64, max_size: u64, max_align: u64) -> (u64, u64) {
    let estimate = max_size.saturating_sub(data_offset) / PAGE_SIZE;
    let align = max_align.max(MAX_CLASS_ALIGN);
    let heap_base = (data_offset + estimate * DESC_LEN).div_ceil(align) * align;
    let pages = (max_size.saturating_sub(heap_base) / PAGE_SIZE)
        .min(estimate)
        .min(u64::from(u32::MAX - 1));
    (heap_base, pages)
}

// ---------------------------------------------------------------- allocator

/// Fine size classes over a shared, lock-free page heap (Hermes SHM's
/// ScalablePageAllocator, with pages that go back to the heap when empty).
///
/// Requests up to [`LARGE_THRESHOLD`](Self::LARGE_THRESHOLD) bytes are served from one of
/// [`NUM_CLASSES`](Self::NUM_CLASSES) size classes (16-byte steps to 128, then four per power
/// of two), each carving [`PAGE_SIZE`](Self::PAGE_SIZE) pages into equal blocks; larger
/// requests take a run of whole pages. Every page whose last block is freed
/// goes back to the page heap, so memory freed at one size is reusable at
/// any other. Allocation and free are lock-free, shared by every thread and
/// process that attaches the segment; freeing validates the offset (a page
/// in use, a block boundary of its class, a block that is live) and refuses
/// anything else with [`Error::InvalidFree`], changing nothing.
///
/// ```
/// use shmkit::{SegmentAllocator, SegmentOptions, ShmAllocator, SizeClassAllocator};
///
/// let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let small = heap.allocate(24)?;
/// let large = heap.allocate(100 << 10)?;
/// // SAFETY: nothing uses a block after its free.
/// unsafe {
///     heap.free(small)?;
///     assert!(heap.free(small).is_err()); // double free
///     heap.free(large)?;
/// }
/// heap.check()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct SizeClassAllocator {
    shell: InSegment<SizeClassState>,
    table: StatePtr<PageDesc>,
    heap_base: u64,
    max_pages: u32,
    /// Pages this process has seen inside the segment. The segment never
    /// shrinks, so a page below this needs no look at the shared size word.
    known_pages: AtomicU32,
}

impl std::fmt::Debug for SizeClassAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SizeClassAllocator")
            .field("segment", self.segment())
            .field("stats", &self.stats())
            .finish()
    }
}

impl SegmentAllocator for SizeClassAllocator {
    const KIND: AllocatorKind = AllocatorKind::SizeClass;
    type Params = ();

    fn encode_params(_: &()) -> [u64; PARAM_WORDS] {
        let mut words = [0; PARAM_WORDS];
        words[0] = PAGE_SIZE;
        words[1] = NUM_CLASSES as u64;
        words
    }

    fn state_len(_: &()) -> u64 {
        std::mem::size_of::<SizeClassState>() as u64
    }

    fn initialize(segment: &Segment, _: &()) -> Result<()> {
        let state = segment.allocator_state::<SizeClassState>()?;
        let data_offset = segment.data_offset();
        let (heap_base, max_pages) =
            heap_layout(data_offset, segment.max_size(), segment.max_align() as u64);
        if max_pages == 0 {
            return Err(Error::invalid_size(format!(
                "a size-class segment needs room for its page table and one {PAGE_SIZE}-byte \
                 page; {} bytes is too small",
                segment.max_size()
            )));
        }
        if segment.size() < heap_base {
            segment.grow(heap_base)?;
        }
        let table = segment.resolve_array(Offset::<PageDesc>::from_raw(data_offset), max_pages)?;
        for index in 0..max_pages as usize {
            // SAFETY: runs in the creator before *ready*; `resolve_array`
            // checked that `max_pages` descriptors fit and are aligned.
            unsafe {
                table.as_ptr().add(index).write(PageDesc {
                    state: AtomicU64::new(FREE),
                    link: AtomicU64::new(0),
                    run: AtomicU64::new(0),
                    requested: AtomicU64::new(0),
                })
            };
        }
        // SAFETY: as above; `allocator_state` checked size and alignment.
        unsafe {
            state.as_ptr().write(SizeClassState {
                magic: STATE_MAGIC,
                heap_base,
                max_pages,
                bump: CachePadded::new(AtomicU64::new(0)),
                free_runs: CachePadded::new(AtomicU64::new(tagged_stack::EMPTY)),
                collecting: CachePadded::new(AtomicU64::new(0)),
                classes: std::array::from_fn(|_| {
                    CachePadded::new(std::array::from_fn(|_| AtomicU64::new(tagged_stack::EMPTY)))
                }),
                counters: AllocCounters::new(),
            })
        };
        Ok(())
    }

    fn from_segment(segment: Segment) -> Result<Self> {
        segment.expect_allocator(Self::KIND, None)?;
        Self::open(segment)
    }
}

impl SizeClassAllocator {
    /// Bytes of state the size-class machinery needs at the start of the
    /// allocator state area (the thread-local allocator puts more after it).
    pub(crate) const CORE_STATE_LEN: u64 = std::mem::size_of::<SizeClassState>() as u64;

    /// The view over a segment whose state area starts with initialized
    /// size-class state, whatever the allocator kind recorded.
    pub(crate) fn open(segment: Segment) -> Result<Self> {
        let shell = InSegment::<SizeClassState>::new(segment)?;
        // The plain words are written once before *ready*.
        let (magic, heap_base, max_pages) = {
            let s = shell.state();
            (s.magic, s.heap_base, s.max_pages)
        };
        let segment = shell.segment();
        let data_offset = segment.data_offset();
        // Checked arithmetic: both words are whatever the segment holds.
        let plausible = magic == STATE_MAGIC
            && max_pages > 0
            && max_pages < u64::from(u32::MAX)
            && heap_base % 128 == 0
            && heap_base <= segment.size()
            && heap_base >= data_offset + max_pages * DESC_LEN
            && heap_base
                .checked_add(max_pages * PAGE_SIZE)
                .is_some_and(|end| end <= segment.max_size());
        if !plausible {
            return Err(Error::corrupt(format!(
                "size-class state: heap base {heap_base}, {max_pages} pages"
            )));
        }
        let table = segment.resolve_array(Offset::<PageDesc>::from_raw(data_offset), max_pages)?;
        let allocator = SizeClassAllocator {
            shell,
            table: StatePtr::new(table),
            heap_base,
            max_pages: max_pages as u32,
            known_pages: AtomicU32::new(0),
        };
        let bump = allocator.state().bump.load(Ordering::Acquire);
        if bump > max_pages {
            return Err(Error::corrupt(format!(
                "page cursor {bump} beyond {max_pages}"
            )));
        }
        Ok(allocator)
    }
}

/// The error for a link of a page stack that may not be followed.
fn bad_link(what: &str, link: BadLink) -> Error {
    Error::corrupt(format!(
        "{what}: link {:#x} is out of range or names its own page",
        link.0
    ))
}

impl SizeClassAllocator {
    /// Bytes in a page of the page heap.
    pub const PAGE_SIZE: u64 = PAGE_SIZE;
    /// Requests above this many bytes take a run of whole pages.
    pub const LARGE_THRESHOLD: usize = LARGE_THRESHOLD;
    /// Number of size classes.
    pub const NUM_CLASSES: usize = NUM_CLASSES;

    /// Frees every block handed out that `named` does not hold, and
    /// returns how many: the sweep of a structure that owns the whole
    /// segment (a queue, a dict) after a crash left blocks it no longer
    /// names.
    ///
    /// # Safety
    ///
    /// The segment is the structure's alone, and nobody else uses it
    /// during the call (the caller holds its recovery lock and no call of
    /// this process is in flight on it), so a block it does not name is one
    /// a dead process was making or retiring.
    pub unsafe fn free_unnamed(&self, named: &std::collections::HashSet<u64>) -> Result<u64> {
        // The dead threads' hand-off records name some of those blocks; the
        // walk below finds them all, so the records are only cleared.
        drop(self.take_dead_handoffs());
        let mut unnamed = Vec::new();
        self.live_blocks(&mut |offset| {
            if !named.contains(&offset) {
                unnamed.push(offset);
            }
        })?;
        let ctx = MemContext::default();
        for &offset in &unnamed {
            // SAFETY: a live block nothing names, and no one else runs (the
            // caller's promise).
            unsafe { self.free_offset(&ctx, offset) }?;
        }
        Ok(unnamed.len() as u64)
    }

    /// Calls `visit` with the offset of every block handed out, in offset
    /// order. A block being handed out or freed meanwhile may be seen or
    /// missed: a caller that needs the exact set runs alone, as
    /// [`recover`](ShmAllocator::recover) does. What it is for: a data
    /// structure that owns the whole segment finds, after a crash, the
    /// blocks it no longer names, and frees them.
    pub fn live_blocks(&self, visit: &mut dyn FnMut(u64)) -> Result<()> {
        let bump = self
            .state()
            .bump
            .load(Ordering::Acquire)
            .min(u64::from(self.max_pages)) as u32;
        let mut page = 0u32;
        while page < bump {
            let Some(desc) = self.desc(page) else { break };
            let current = desc.state.load(Ordering::Acquire);
            match phase(current) {
                SMALL => {
                    let class = class_of(current);
                    let info = class_info(page, class)?;
                    let base = self.page_ptr(page)?;
                    for word in 0..info.words {
                        // SAFETY: `word < words`, inside the page header.
                        let bits = unsafe { Self::bitmap(base, word) }.load(Ordering::Acquire)
                            & valid_bits(info, word);
                        let mut rest = bits;
                        while rest != 0 {
                            let index = word * 64 + u64::from(rest.trailing_zeros());
                            rest &= rest - 1;
                            // SAFETY: `index < count` (a valid bit).
                            if unsafe { Self::slack(base, info, index) } != sentinel(info) {
                                visit(self.block_offset(page, info, index));
                            }
                        }
                    }
                    page += 1;
                }
                LARGE => {
                    let len = self.large_run_len(page, desc, bump)?;
                    visit(self.page_offset(page));
                    page += len;
                }
                PENDING_LARGE => page += self.large_run_len(page, desc, bump)?,
                _ => page += 1,
            }
        }
        Ok(())
    }

    /// The segment this allocator manages.
    #[inline]
    pub fn segment(&self) -> &Segment {
        self.shell.segment()
    }

    /// The size a request of `size` bytes (alignment up to 16) is rounded up
    /// to: its class size, or whole pages above [`LARGE_THRESHOLD`](Self::LARGE_THRESHOLD).
    pub fn rounded_size(size: usize) -> usize {
        match class_for(size.max(1) as u64, 1) {
            Some(class) => CLASSES[class].size as usize,
            None => (size as u64).div_ceil(PAGE_SIZE).saturating_mul(PAGE_SIZE) as usize,
        }
    }

    #[inline]
    fn state(&self) -> &SizeClassState {
        self.shell.state()
    }

    #[inline(always)]
    fn desc(&self, page: u32) -> Option<&PageDesc> {
        if page < self.max_pages {
            // SAFETY: the table holds `max_pages` descriptors (checked by
            // `resolve_array` at construction), made of atomics.
            Some(unsafe { &*self.table.as_ptr().add(page as usize) })
        } else {
            None
        }
    }

    #[inline]
    fn link_of(&self, page: u32) -> Option<&AtomicU64> {
        self.desc(page).map(|d| &d.link)
    }

    #[inline]
    fn page_offset(&self, page: u32) -> u64 {
        self.heap_base + u64::from(page) * PAGE_SIZE
    }

    /// The local address of a page, checked to lie inside the segment.
    #[inline(always)]
    fn page_ptr(&self, page: u32) -> Result<*mut u8> {
        let offset = self.page_offset(page);
        if page >= self.known_pages.load(Ordering::Relaxed) {
            self.segment().check_range(offset, PAGE_SIZE)?;
            self.known_pages.fetch_max(page + 1, Ordering::Relaxed);
        }
        // SAFETY: this page, or a later one, passed `check_range`: it lies
        // inside the segment (which never shrinks) and so inside the mapping.
        Ok(unsafe { self.segment().base().as_ptr().add(offset as usize) })
    }

    /// The first word at `offset` if it is 16-aligned and inside a page this
    /// process knows to be in the segment (no other check: for entries the
    /// caller validates by content).
    #[inline(always)]
    pub(crate) fn heap_word(&self, offset: u64) -> Option<&AtomicU64> {
        let page = u32::try_from(offset.checked_sub(self.heap_base)? / PAGE_SIZE).ok()?;
        if offset % 16 != 0 || page >= self.max_pages {
            return None;
        }
        let page_base = self.page_ptr(page).ok()?;
        let within = (offset - self.page_offset(page)) as usize;
        // SAFETY: `within < PAGE_SIZE` and 16-aligned, inside a page that is
        // inside the mapping; any bytes are a valid AtomicU64; the reference
        // lives no longer than `self`, which keeps the mapping.
        Some(unsafe { &*(page_base.add(within) as *const AtomicU64) })
    }

    /// A bitmap word of a page.
    ///
    /// # Safety
    ///
    /// `page` must come from [`page_ptr`](Self::page_ptr) and `word` be below
    /// the class's word count.
    #[inline]
    unsafe fn bitmap(page: *mut u8, word: u64) -> &'static AtomicU64 {
        // SAFETY: inside the page (caller), 8-aligned (the page is 4096-
        // aligned and the mapping 128-aligned); any bytes are a valid
        // AtomicU64. The 'static is narrowed by every caller to its use.
        unsafe { &*(page.add(word as usize * 8) as *const AtomicU64) }
    }

    /// Reads a block's slack.
    ///
    /// # Safety
    ///
    /// As for [`bitmap`](Self::bitmap), with `index < info.count`.
    #[inline]
    unsafe fn slack(page: *mut u8, info: &ClassInfo, index: u64) -> u64 {
        let at = info.words * 8 + index * info.slack_width;
        // SAFETY: the slack array lies inside the page header (see
        // `build_classes`), aligned to its width.
        unsafe {
            if info.slack_width == 1 {
                u64::from((*(page.add(at as usize) as *const AtomicU8)).load(Ordering::Relaxed))
            } else {
                u64::from((*(page.add(at as usize) as *const AtomicU16)).load(Ordering::Relaxed))
            }
        }
    }

    /// Writes a block's slack.
    ///
    /// # Safety
    ///
    /// As for [`slack`](Self::slack).
    #[inline]
    unsafe fn set_slack(page: *mut u8, info: &ClassInfo, index: u64, slack: u64) {
        let at = info.words * 8 + index * info.slack_width;
        // SAFETY: as in `slack`.
        unsafe {
            if info.slack_width == 1 {
                (*(page.add(at as usize) as *const AtomicU8)).store(slack as u8, Ordering::Relaxed)
            } else {
                (*(page.add(at as usize) as *const AtomicU16))
                    .store(slack as u16, Ordering::Relaxed)
            }
        }
    }

    /// Replaces a block's slack if it is `old`.
    ///
    /// # Safety
    ///
    /// As for [`slack`](Self::slack).
    #[inline]
    unsafe fn cas_slack(page: *mut u8, info: &ClassInfo, index: u64, old: u64, new: u64) -> bool {
        let at = info.words * 8 + index * info.slack_width;
        // SAFETY: as in `slack`.
        unsafe {
            if info.slack_width == 1 {
                (*(page.add(at as usize) as *const AtomicU8))
                    .compare_exchange(old as u8, new as u8, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            } else {
                (*(page.add(at as usize) as *const AtomicU16))
                    .compare_exchange(old as u16, new as u16, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            }
        }
    }

    /// Pages the segment holds at its current size.
    fn pages_now(&self) -> u32 {
        let size = self.segment().size();
        (size.saturating_sub(self.heap_base) / PAGE_SIZE).min(u64::from(self.max_pages)) as u32
    }

    fn bump_now(&self) -> u32 {
        (self.state().bump.load(Ordering::Acquire)).min(u64::from(self.max_pages)) as u32
    }
}

impl ShmAllocator for SizeClassAllocator {
    fn backing_segment(&self) -> Option<&Segment> {
        Some(self.segment())
    }

    fn kind(&self) -> AllocatorKind {
        AllocatorKind::SizeClass
    }

    fn allocate_offset(&self, _ctx: &MemContext, size: usize, align: usize) -> Result<u64> {
        // One lookup of the thread's hand-off slot: shard, record, counts.
        let mine = handoff::my_indexed_slot(self.segment());
        let offset = self.alloc_block_for(size, align, mine)?;
        self.state()
            .counters
            .on_allocate_to(mine.map(|(_, slot)| &slot.share), size as u64);
        Ok(offset)
    }

    unsafe fn free_offset(&self, _ctx: &MemContext, offset: u64) -> Result<()> {
        let mine = handoff::my_slot(self.segment());
        if let Some(log) = mine {
            log.forget(offset);
        }
        let requested = match self.take_for_free(offset)? {
            Freed::Small {
                page,
                class,
                index,
                requested,
            } => {
                crash_point!("size_class.free.marked");
                self.release_small(page, class, index)?;
                requested
            }
            Freed::Large { requested } => requested,
        };
        self.state()
            .counters
            .on_free_to(mine.map(|slot| &slot.share), requested);
        Ok(())
    }

    fn usable_size(&self, offset: u64) -> Result<usize> {
        let invalid = || Error::InvalidFree { offset };
        let (page, within, desc) = self.locate(offset).ok_or_else(invalid)?;
        let state = desc.state.load(Ordering::Acquire);
        match phase(state) {
            SMALL => {
                let (class, _, _) = self.small_block(page, within, state).ok_or_else(invalid)?;
                Ok(CLASSES[class].size as usize)
            }
            LARGE if within == 0 => {
                // The run length is shared memory: a block's bytes must lie
                // in the page table's reach and in the segment as mapped.
                let run = desc.run.load(Ordering::Relaxed);
                let in_reach = run != 0
                    && u64::from(page) + run <= u64::from(self.max_pages)
                    && run
                        .checked_mul(PAGE_SIZE)
                        .and_then(|len| offset.checked_add(len))
                        .is_some_and(|end| end <= self.segment().size());
                if !in_reach {
                    return Err(Error::corrupt(format!(
                        "large block at page {page}: {run} pages"
                    )));
                }
                Ok((run * PAGE_SIZE) as usize)
            }
            _ => Err(invalid()),
        }
    }

    fn full_ptr(&self, offset: u64) -> Result<FullPtr<u8>> {
        self.usable_size(offset)?;
        self.segment()
            .full_ptr_from_offset(Offset::from_raw(offset))
    }

    fn offset_of_local(&self, ptr: NonNull<u8>) -> Result<u64> {
        Ok(self.segment().offset_of(ptr.as_ptr() as *const u8)?.raw())
    }

    unsafe fn resize_in_place(
        &self,
        _ctx: &MemContext,
        offset: u64,
        new_size: usize,
    ) -> Result<bool> {
        let invalid = || Error::InvalidFree { offset };
        let (page, within, desc) = self.locate(offset).ok_or_else(invalid)?;
        let state = desc.state.load(Ordering::Acquire);
        let new = new_size as u64;
        let old = match phase(state) {
            SMALL => {
                let (class, index, base) =
                    self.small_block(page, within, state).ok_or_else(invalid)?;
                if class_for(new.max(1), 1) != Some(class) {
                    return Ok(false);
                }
                let info = &CLASSES[class];
                // SAFETY: a live block of ours (`small_block`), index < count.
                let old = info.size - unsafe { Self::slack(base, info, index) }.min(info.size);
                // SAFETY: as above.
                unsafe { Self::set_slack(base, info, index, info.size - new) };
                old
            }
            LARGE if within == 0 => {
                let len = desc.run.load(Ordering::Relaxed);
                if new <= LARGE_THRESHOLD as u64 || new.div_ceil(PAGE_SIZE) != len {
                    return Ok(false);
                }
                desc.requested.swap(new, Ordering::Relaxed)
            }
            _ => return Err(invalid()),
        };
        let counters = &self.state().counters;
        counters.on_resize(self.segment(), old, new);
        Ok(true)
    }

    fn stats(&self) -> AllocStats {
        let (allocated_bytes, live_allocations, peak_bytes) =
            self.state().counters.snapshot(self.segment());
        // Measured at the maximum size: the rest is backed as pages are
        // carved.
        let pages = self.max_pages;
        let bump = self.bump_now().min(pages);
        let mut free_bytes = u64::from(pages - bump) * PAGE_SIZE;
        let mut largest_run = 0u64;
        let mut run = 0u64;
        let mut largest_block = 0u64;
        for page in 0..bump {
            let Some(desc) = self.desc(page) else { break };
            let state = desc.state.load(Ordering::Acquire);
            let empty_page = match phase(state) {
                FREE => true,
                SMALL => {
                    let info = CLASSES.get(class_of(state));
                    let used = live(state);
                    match info {
                        Some(_) if used == 0 => true,
                        Some(info) => {
                            let free = info.count.saturating_sub(used);
                            free_bytes += free * info.size;
                            if free > 0 {
                                largest_block = largest_block.max(info.size);
                            }
                            false
                        }
                        None => false,
                    }
                }
                _ => false,
            };
            if empty_page {
                free_bytes += PAGE_SIZE;
                run += 1;
                largest_run = largest_run.max(run);
            } else {
                run = 0;
            }
        }
        largest_run = largest_run.max(run + u64::from(pages - bump));
        AllocStats {
            allocated_bytes,
            peak_bytes,
            live_allocations,
            free_bytes,
            largest_free_block: (largest_run * PAGE_SIZE).max(largest_block),
            capacity: u64::from(pages) * PAGE_SIZE,
        }
    }

    fn regions(&self, visit: &mut dyn FnMut(Region)) -> Result<()> {
        self.page_regions(visit)
    }

    /// Rebuilds the class lists, the free-run stack and the counters from
    /// the pages: blocks whose free never finished are released, pages that
    /// a dying process held in no structure (a collect pass, a page being
    /// set up) are free again.
    unsafe fn recovery_pass(&self) -> Result<RecoveryReport> {
        let before = self.stats();
        let rebuilt = self.rebuild_from_pages(&|_, _| false)?;
        Ok(RecoveryReport {
            blocks_reclaimed: rebuilt.reclaimed(),
            ..RecoveryReport::rebuilt(before, self.stats())
        }
        .with_handoffs(self.segment()))
    }

    /// The walk of [`check_parts`](Self::check_parts) and the counters;
    /// what processes killed mid-operation left is
    /// [`Error::NeedsRecovery`].
    fn check(&self) -> Result<()> {
        let PagesChecked {
            live,
            bytes,
            mut traces,
        } = self.check_parts()?;
        if let Err(counted) = self.check_counters(live, bytes) {
            traces.add(0, counted.to_string());
        }
        traces.into_result()
    }
}

impl_allocator_api2!(SizeClassAllocator);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SegmentOptions;

    #[test]
    fn a_heap_base_near_the_end_of_the_address_space_is_refused() {
        // Found by the attach_bytes fuzz target: the bound check overflowed.
        let options = SegmentOptions::memfd("heap-base").size(1 << 20);
        let heap = SizeClassAllocator::create(&options).unwrap();
        // SAFETY: the plain state words are only read after creation, and
        // nothing else uses this segment.
        unsafe { (*heap.shell.state_ptr()).heap_base = !127 };
        let fd = heap.segment().fd().unwrap().try_clone_to_owned().unwrap();
        let again = Segment::attach(&SegmentOptions::fd(fd)).unwrap();
        assert!(matches!(
            SizeClassAllocator::open(again),
            Err(Error::CorruptHeader { .. })
        ));
    }

    #[test]
    fn recovery_finishes_cut_short_frees_and_returns_lost_pages() {
        let heap = SizeClassAllocator::create(&SegmentOptions::private().size(4 << 20)).unwrap();
        let ctx = MemContext::default();
        let kept = heap.allocate_offset(&ctx, 40, 8).unwrap();
        let marked = heap.allocate_offset(&ctx, 40, 8).unwrap();
        let large = heap.allocate_offset(&ctx, 100 << 10, 8).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, large) }.unwrap();
        // A free that died after marking the block, before releasing its
        // bit; a collect pass that died holding a free run; a collect count
        // nobody will lower.
        assert!(matches!(
            heap.take_for_free(marked).unwrap(),
            Freed::Small { .. }
        ));
        assert_eq!(heap.pop_free_page().unwrap(), Some(1));
        heap.state().collecting.fetch_add(1, Ordering::AcqRel);
        assert!(heap.check().is_err());

        // SAFETY: no other thread of this process uses the allocator meanwhile.
        let report = unsafe { heap.recover() }.unwrap();
        heap.check().unwrap();
        assert_eq!(heap.state().collecting.load(Ordering::Acquire), 0);
        // One marked block; the popped page of the two-page run.
        assert_eq!(report.blocks_reclaimed, 2, "{report}");
        assert_eq!(report.after.live_allocations, 1);
        assert_eq!(report.after.allocated_bytes, 40);
        assert!(heap.full_ptr(marked).is_err());
        heap.full_ptr(kept).unwrap();
        // Every page is reachable again: the heap fills to its old extent.
        let whole = heap.allocate_offset(&ctx, 100 << 10, 8).unwrap();
        assert_eq!(whole, large);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, whole) }.unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, kept) }.unwrap();
        heap.check().unwrap();
        assert_eq!(heap.stats().live_allocations, 0);
    }

    #[test]
    fn live_blocks_lists_exactly_the_blocks_handed_out() {
        let heap = SizeClassAllocator::create(&SegmentOptions::private().size(8 << 20)).unwrap();
        let ctx = MemContext::default();
        let sizes = [8, 24, 40, 1000, 4096, 70 << 10, 300 << 10, 24, 8];
        let mut held: Vec<u64> = sizes
            .iter()
            .map(|&size| heap.allocate_offset(&ctx, size, 8).unwrap())
            .collect();
        // Freed blocks, small and large, are not listed.
        for gone in [held.remove(7), held.remove(5), held.remove(1)] {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free_offset(&ctx, gone) }.unwrap();
        }
        // A block cut short between its bit and its slack is nobody's yet.
        let halfway = heap.allocate_offset(&ctx, 40, 8).unwrap();
        assert!(matches!(
            heap.take_for_free(halfway).unwrap(),
            Freed::Small { .. }
        ));
        let mut listed = Vec::new();
        heap.live_blocks(&mut |offset| listed.push(offset)).unwrap();
        held.sort_unstable();
        assert_eq!(listed, held, "in offset order, each live block once");
    }

    #[test]
    fn classes_are_sound() {
        let mut previous = 0;
        for (index, info) in CLASSES.iter().enumerate() {
            assert!(info.size > previous, "class {index}");
            previous = info.size;
            assert!(info.count >= 1);
            assert_eq!(info.first % info.align, 0);
            assert!(info.first >= info.words * 8 + info.count * info.slack_width);
            assert!(info.first + info.count * info.size <= PAGE_SIZE);
            assert_eq!(info.size % info.align, 0);
            assert!(info.slack_width == 2 || info.size < 256);
            for n in 0..PAGE_SIZE {
                assert_eq!((n * info.recip) >> 32, n / info.size, "class {index}, {n}");
            }
        }
        assert_eq!(CLASSES[NUM_CLASSES - 1].size, LARGE_THRESHOLD as u64);
        for size in 1..=LARGE_THRESHOLD as u64 {
            let class = natural_class(size);
            assert!(CLASSES[class].size >= size, "size {size}");
            assert!(class == 0 || CLASSES[class - 1].size < size, "size {size}");
        }
        for shift in 0..=12 {
            let align = 1u64 << shift;
            let class = class_for(1, align).expect("a class");
            assert!(CLASSES[class].align >= align);
        }
    }
}
