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

// ---------------------------------------------------------------- classes

#[derive(Clone, Copy, Debug)]
struct ClassInfo {
    /// Block size.
    size: u64,
    /// Alignment every block of the class has (largest power of two that
    /// divides the size, at most 4096).
    align: u64,
    /// Bytes per slack entry (1 below 256, else 2).
    slack_width: u64,
    /// Blocks per page.
    count: u64,
    /// Offset of block 0 in its page.
    first: u64,
    /// Bitmap words.
    words: u64,
    /// `ceil(2^32 / size)`: `(n * recip) >> 32 == n / size` for every
    /// `n < PAGE_SIZE` (the error term stays below one), which spares the
    /// lookup of a block a division.
    recip: u64,
}

const fn class_size(index: usize) -> u64 {
    if index < 8 {
        16 * (index as u64 + 1)
    } else {
        let group = (index - 8) / 4;
        let k = ((index - 8) % 4 + 1) as u64;
        let b = 7 + group as u32;
        (1u64 << b) + k * (1u64 << (b - 2))
    }
}

const fn build_classes() -> [ClassInfo; NUM_CLASSES] {
    let mut out = [ClassInfo {
        size: 0,
        align: 0,
        slack_width: 0,
        count: 0,
        first: 0,
        words: 0,
        recip: 0,
    }; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        let size = class_size(i);
        let low = size & size.wrapping_neg();
        let align = if low > MAX_CLASS_ALIGN {
            MAX_CLASS_ALIGN
        } else {
            low
        };
        let slack_width = if size < 256 { 1 } else { 2 };
        let mut count = PAGE_SIZE / size;
        loop {
            let words = count.div_ceil(64);
            let header = words * 8 + count * slack_width;
            let first = header.div_ceil(align) * align;
            if first + count * size <= PAGE_SIZE {
                out[i] = ClassInfo {
                    size,
                    align,
                    slack_width,
                    count,
                    first,
                    words,
                    recip: (1u64 << 32).div_ceil(size),
                };
                break;
            }
            count -= 1;
        }
        i += 1;
    }
    out
}

const CLASSES: [ClassInfo; NUM_CLASSES] = build_classes();

/// The block size of a class.
#[inline]
pub(crate) fn class_block_size(class: usize) -> u64 {
    CLASSES.get(class).map_or(0, |info| info.size)
}

/// The smallest class whose size is at least `size` (1..=LARGE_THRESHOLD).
#[inline]
fn natural_class(size: u64) -> usize {
    if size <= 128 {
        (size.max(1) as usize).div_ceil(16) - 1
    } else {
        let b = 63 - (size - 1).leading_zeros() as u64;
        let step = 1u64 << (b - 2);
        let k = (size - (1u64 << b)).div_ceil(step);
        8 + (b as usize - 7) * 4 + k as usize - 1
    }
}

/// The class serving `size` bytes aligned to `align`, or `None` for a run
/// of pages.
#[inline]
pub(crate) fn class_for(size: u64, align: u64) -> Option<usize> {
    if size > LARGE_THRESHOLD as u64 || align > MAX_CLASS_ALIGN {
        return None;
    }
    let natural = natural_class(size);
    if align <= 16 {
        return Some(natural);
    }
    (natural..NUM_CLASSES).find(|&c| CLASSES[c].align >= align)
}

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
            .field("segment", &self.segment())
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
                    let info = CLASSES.get(class).ok_or_else(|| {
                        Error::corrupt(format!("page {page}: class {class} out of range"))
                    })?;
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

    // ------------------------------------------------------------ page heap

    /// Claims `n` pages from the bump cursor, growing the segment if allowed.
    fn bump_pages(&self, n: u32, grow: bool) -> Result<Option<u32>> {
        let cursor = &self.state().bump;
        let mut current = cursor.load(Ordering::Acquire);
        loop {
            if current > u64::from(self.max_pages) {
                return Err(Error::corrupt(format!(
                    "page cursor {current} out of range"
                )));
            }
            let end = current + u64::from(n);
            if end > u64::from(self.max_pages) {
                return Ok(None);
            }
            let needed = self.heap_base + end * PAGE_SIZE;
            if needed > self.segment().size() {
                // Backing within the capacity is no growth: only past it
                // do freed pages come first. Without leave to grow, the
                // backing stops at the capacity, and a full file system
                // sends the caller on to other shards' pages and to
                // collection rather than failing the request.
                let grown = if grow {
                    self.segment().grow_to_fit(needed)?
                } else {
                    match self
                        .segment()
                        .grow_to_fit_below(needed, self.segment().capacity())
                    {
                        Ok(grown) => grown,
                        Err(Error::NoSpace { .. }) => false,
                        Err(other) => return Err(other),
                    }
                };
                if !grown {
                    return Ok(None);
                }
            }
            match cursor.compare_exchange_weak(current, end, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(Some(current as u32)),
                Err(actual) => current = actual,
            }
        }
    }

    /// Pushes a run of FREE pages onto the free-run stack.
    fn push_run(&self, head: u32, len: u32) {
        if let Some(desc) = self.desc(head) {
            desc.run.store(u64::from(len), Ordering::Relaxed);
            tagged_stack::push(&*self.state().free_runs, head, &desc.link);
        }
    }

    /// The validated length of a free run popped off the stack.
    fn run_len(&self, head: u32) -> Result<u32> {
        let len = self.desc(head).map_or(0, |d| d.run.load(Ordering::Relaxed));
        if len == 0 || u64::from(head) + len > u64::from(self.max_pages) {
            return Err(Error::corrupt(format!(
                "free run at page {head}: length {len}"
            )));
        }
        Ok(len as u32)
    }

    /// Pops one page off the free-run stack (splitting its run).
    fn pop_free_page(&self) -> Result<Option<u32>> {
        let popped = tagged_stack::pop(&*self.state().free_runs, self.max_pages, |p| {
            self.link_of(p)
        })
        .map_err(|bad| bad_link("free-run stack", bad))?;
        let Some(head) = popped else {
            return Ok(None);
        };
        // Pages are FREE before they are pushed, and a popped page is the
        // popper's alone: a page in use here was reached through a damaged
        // link (a cycle back to a page already handed out, say). Refused,
        // so it is not handed out twice.
        let state = self.desc(head).map(|d| d.state.load(Ordering::Acquire));
        if state != Some(FREE) {
            return Err(Error::corrupt(format!(
                "free-run stack holds page {head}, which is in use (state {state:?})"
            )));
        }
        let len = self.run_len(head)?;
        if len > 1 {
            self.push_run(head + 1, len - 1);
        }
        Ok(Some(head))
    }

    /// A free page if one is at hand: no growth, no collect pass.
    fn take_page_at_hand(&self) -> Result<Option<u32>> {
        match self.pop_free_page()? {
            Some(page) => Ok(Some(page)),
            None => self.bump_pages(1, false),
        }
    }

    /// One page for a size class; out of memory speaks of `requested`, the
    /// caller's request, not of the page it needed.
    fn take_page(&self, requested: u64) -> Result<u32> {
        for attempt in 0..64 {
            if let Some(page) = self.pop_free_page()? {
                return Ok(page);
            }
            if let Some(page) = self.bump_pages(1, false)? {
                return Ok(page);
            }
            if let Some(page) = self.collect(Some(1), true)? {
                return Ok(page);
            }
            if let Some(page) = self.bump_pages(1, true)? {
                return Ok(page);
            }
            if !self.wait_for_collectors(attempt) {
                break;
            }
        }
        Err(self.out_of_memory(requested))
    }

    /// A run of `n` pages for a large block.
    fn take_run(&self, n: u32, requested: u64) -> Result<u32> {
        for attempt in 0..64 {
            let free_runs = self.state().free_runs.load(Ordering::Acquire);
            if tagged_stack::top(free_runs).is_some() {
                if let Some(head) = self.collect(Some(n), false)? {
                    return Ok(head);
                }
            }
            if let Some(head) = self.bump_pages(n, false)? {
                return Ok(head);
            }
            if let Some(head) = self.collect(Some(n), true)? {
                return Ok(head);
            }
            if let Some(head) = self.bump_pages(n, true)? {
                return Ok(head);
            }
            if !self.wait_for_collectors(attempt) {
                break;
            }
        }
        Err(self.out_of_memory(requested))
    }

    /// While another collect pass holds pages, yields and says to retry.
    fn wait_for_collectors(&self, attempt: u32) -> bool {
        if self.state().collecting.load(Ordering::Acquire) == 0 && attempt > 0 {
            return false;
        }
        std::thread::yield_now();
        true
    }

    fn out_of_memory(&self, requested: u64) -> Error {
        Error::OutOfMemory {
            requested,
            available: self.stats().largest_free_block,
        }
    }

    /// Takes every free run (and, with `ghosts`, retires every empty page
    /// of every class), merges neighbouring runs, gives a free tail back to
    /// the bump cursor, and keeps a run of `want` pages if one exists.
    ///
    /// Concurrent allocations meanwhile see fewer free pages; they wait
    /// (`collecting`) before reporting out of memory. A process that dies
    /// here leaks the runs it held.
    fn collect(&self, want: Option<u32>, ghosts: bool) -> Result<Option<u32>> {
        let state = self.state();
        state.collecting.fetch_add(1, Ordering::AcqRel);
        let result = self.collect_inner(want, ghosts);
        state.collecting.fetch_sub(1, Ordering::AcqRel);
        result
    }

    /// Follows a chain that `take_all` handed to the caller, calling `visit`
    /// on each page after reading its link (so `visit` may push the page on
    /// another stack). A chain longer than the table (a cycle), a page that
    /// links to itself, or a link out of range ends the walk; it and any
    /// error of `visit` are recorded in `error`.
    fn drain_chain(
        &self,
        first: Option<u32>,
        what: &str,
        looped: impl Fn() -> Error,
        error: &mut Option<Error>,
        mut visit: impl FnMut(u32, &PageDesc) -> Result<()>,
    ) {
        let mut next = first;
        let mut steps = 0u32;
        while let Some(page) = next {
            steps += 1;
            let Some(desc) = self.desc(page).filter(|_| steps <= self.max_pages) else {
                *error = Some(looped());
                break;
            };
            next = match tagged_stack::decode_link(
                desc.link.load(Ordering::Acquire),
                self.max_pages,
            ) {
                // Caught at once rather than after `max_pages` visits of
                // one page, each of which would push it somewhere again.
                Ok(Some(after)) if after == page => {
                    *error = Some(looped());
                    None
                }
                Ok(next) => next,
                Err(bad) => {
                    *error = Some(bad_link(what, bad));
                    None
                }
            };
            if let Err(e) = visit(page, desc) {
                *error = Some(e);
            }
        }
    }

    fn collect_inner(&self, want: Option<u32>, ghosts: bool) -> Result<Option<u32>> {
        let state = self.state();
        let mut runs: Vec<(u32, u32)> = Vec::new();
        let mut error = None;
        if ghosts {
            let heads = state
                .classes
                .iter()
                .flat_map(|shard| shard.iter().enumerate());
            for (class, head) in heads {
                let taken = tagged_stack::take_all(head);
                let looped = || Error::corrupt(format!("class {class} page list"));
                self.drain_chain(
                    taken,
                    "class page list",
                    looped,
                    &mut error,
                    |page, desc| {
                        // We hold the page's listed token: retire it if empty.
                        let current = desc.state.load(Ordering::Acquire);
                        let empty = small_state(class, 0, true, shard_of(current));
                        if current == empty
                            && desc
                                .state
                                .compare_exchange(empty, FREE, Ordering::AcqRel, Ordering::Acquire)
                                .is_ok()
                        {
                            runs.push((page, 1));
                        } else {
                            tagged_stack::push(head, page, &desc.link);
                        }
                        Ok(())
                    },
                );
            }
        }
        let taken = tagged_stack::take_all(&*state.free_runs);
        let looped = || Error::corrupt("free-run stack loops");
        self.drain_chain(taken, "free-run stack", looped, &mut error, |head, desc| {
            // As in `pop_free_page`: a page in use is not a free run, and
            // stays with its user.
            if desc.state.load(Ordering::Acquire) != FREE {
                return Err(Error::corrupt(format!(
                    "free-run stack holds page {head}, which is in use"
                )));
            }
            runs.push((head, self.run_len(head)?));
            Ok(())
        });
        // Merge neighbours.
        runs.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(runs.len());
        for (head, len) in runs {
            match merged.last_mut() {
                Some(last) if last.0 + last.1 == head => last.1 += len,
                _ => merged.push((head, len)),
            }
        }
        // A run that ends at the cursor goes back to it.
        if let Some(&(head, len)) = merged.last() {
            let end = u64::from(head) + u64::from(len);
            if state
                .bump
                .compare_exchange(end, u64::from(head), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                merged.pop();
            }
        }
        let mut taken = None;
        if let Some(n) = want {
            if let Some(best) = (0..merged.len())
                .filter(|&i| merged[i].1 >= n)
                .min_by_key(|&i| merged[i].1)
            {
                let (head, len) = merged.swap_remove(best);
                if len > n {
                    merged.push((head + n, len - n));
                }
                taken = Some(head);
            }
        }
        for (head, len) in merged {
            self.push_run(head, len);
        }
        match error {
            Some(e) => {
                if let Some(head) = taken {
                    self.push_run(head, want.unwrap_or(1));
                }
                Err(e)
            }
            None => Ok(taken),
        }
    }

    // ------------------------------------------------------------ small blocks

    fn block_offset(&self, page: u32, info: &ClassInfo, index: u64) -> u64 {
        self.page_offset(page) + info.first + index * info.size
    }

    /// Claims a clear bit in a page where a block is reserved.
    fn claim_bit(&self, page: u32, info: &ClassInfo, hint: u64) -> Result<u64> {
        let base = self.page_ptr(page)?;
        let start = (hint / 64).min(info.words - 1);
        for _ in 0..1024 {
            for step in 0..info.words {
                let word = (start + step) % info.words;
                let valid = valid_bits(info, word);
                // SAFETY: `word < info.words`, inside the page header.
                let cell = unsafe { Self::bitmap(base, word) };
                let mut bits = cell.load(Ordering::Relaxed);
                while !bits & valid != 0 {
                    let bit = (!bits & valid).trailing_zeros();
                    let mask = 1u64 << bit;
                    let old = cell.fetch_or(mask, Ordering::AcqRel);
                    if old & mask == 0 {
                        return Ok(word * 64 + u64::from(bit));
                    }
                    bits = old | mask;
                }
            }
            std::hint::spin_loop();
        }
        Err(Error::corrupt(format!(
            "page {page}: a block was reserved but its bitmap is full"
        )))
    }

    /// A block of `class` for a thread of `shard`: from a page of its own
    /// shard, else a new page while the heap is roomy, else any shard's
    /// page, else a page however it comes. Once half the pages are carved,
    /// a shard borrows a neighbour's page before it opens one of its own,
    /// so a tight segment still hands out every block it holds.
    fn alloc_small(&self, class: usize, requested: u64, mine: Mine<'_>) -> Result<u64> {
        let shard = handoff::shard_of(mine, SHARDS);
        if let Some(offset) = self.alloc_from_listed(class, requested, shard, mine)? {
            return Ok(offset);
        }
        let roomy = self.bump_now() < self.max_pages / 2;
        if roomy {
            if let Some(page) = self.take_page_at_hand()? {
                return self.alloc_from_new_page(page, class, requested, shard, mine);
            }
        }
        for other in (1..SHARDS).map(|k| (shard + k) % SHARDS) {
            if let Some(offset) = self.alloc_from_listed(class, requested, other, mine)? {
                return Ok(offset);
            }
        }
        let page = self.take_page(requested)?;
        self.alloc_from_new_page(page, class, requested, shard, mine)
    }

    /// A block from a page on the class stack of `shard`, if it has one.
    fn alloc_from_listed(
        &self,
        class: usize,
        requested: u64,
        shard: usize,
        mine: Mine<'_>,
    ) -> Result<Option<u64>> {
        let info = &CLASSES[class];
        let head_cell = &self.state().classes[shard][class];
        loop {
            let head = head_cell.load(Ordering::Acquire);
            let Some(page) = tagged_stack::top(head) else {
                return Ok(None);
            };
            let desc = self
                .desc(page)
                .ok_or_else(|| Error::corrupt(format!("class {class} lists page {page}")))?;
            let current = desc.state.load(Ordering::Acquire);
            // A page on its class stack is SMALL, of the class and listed:
            // the flag is set before a push and cleared only by the holder
            // of a page it popped. Anything else on top was popped (and
            // maybe reused) meanwhile, which moved the head, or came through
            // a link back to a page this walk already took off the stack (a
            // cycle), which is reported instead of walked round forever.
            if phase(current) != SMALL || class_of(current) != class || current & LISTED == 0 {
                if head_cell.load(Ordering::Acquire) == head {
                    return Err(Error::corrupt(format!(
                        "class {class} lists page {page} in state {current:#x}"
                    )));
                }
                continue;
            }
            let used = live(current);
            if used < info.count {
                if desc
                    .state
                    .compare_exchange_weak(
                        current,
                        current + LIVE_ONE,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    let index = self.claim_bit(page, info, used)?;
                    let base = self.page_ptr(page)?;
                    let offset = self.block_offset(page, info, index);
                    crash_point!("size_class.alloc.claimed");
                    record(mine, offset);
                    crash_point!("size_class.alloc.recorded");
                    // SAFETY: `index < info.count`, a block we just claimed.
                    unsafe { Self::set_slack(base, info, index, info.size - requested) };
                    return Ok(Some(offset));
                }
                continue;
            }
            // Full: take it off the stack (if it is still on top) and drop
            // its listed flag; the first free will list it again.
            match tagged_stack::pop_exact(head_cell, head, self.max_pages, |p| self.link_of(p)) {
                Ok(Ok(Some(_))) => self.unlist(head_cell, page, desc, info),
                Ok(_) => {}
                Err(bad) => return Err(bad_link("class page list", bad)),
            }
        }
    }

    /// Called by the holder of a page's listed token after popping it.
    fn unlist(&self, head_cell: &AtomicU64, page: u32, desc: &PageDesc, info: &ClassInfo) {
        let mut current = desc.state.load(Ordering::Acquire);
        loop {
            if live(current) < info.count {
                // Frees made room meanwhile: keep it listed.
                tagged_stack::push(head_cell, page, &desc.link);
                return;
            }
            match desc.state.compare_exchange_weak(
                current,
                current & !LISTED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Makes `page` (the caller's alone) a page of `class` in `shard` and
    /// hands out its first block.
    fn alloc_from_new_page(
        &self,
        page: u32,
        class: usize,
        requested: u64,
        shard: usize,
        mine: Mine<'_>,
    ) -> Result<u64> {
        let info = &CLASSES[class];
        let base = match self.page_ptr(page) {
            Ok(base) => base,
            Err(e) => {
                self.push_run(page, 1);
                return Err(e);
            }
        };
        for word in 0..info.words {
            // SAFETY: `word < info.words`; the page is ours alone until its
            // state is published below.
            unsafe { Self::bitmap(base, word) }.store(u64::from(word == 0), Ordering::Relaxed);
        }
        for index in 0..info.count {
            // SAFETY: `index < info.count`, the page is still ours alone.
            unsafe { Self::set_slack(base, info, index, sentinel(info)) };
        }
        let Some(desc) = self.desc(page) else {
            return Err(Error::corrupt(format!("page {page} out of range")));
        };
        desc.state
            .store(small_state(class, 1, true, shard), Ordering::Release);
        tagged_stack::push(&self.state().classes[shard][class], page, &desc.link);
        let offset = self.block_offset(page, info, 0);
        crash_point!("size_class.alloc.fresh_page");
        record(mine, offset);
        // SAFETY: block 0, ours.
        unsafe { Self::set_slack(base, info, 0, info.size - requested) };
        Ok(offset)
    }

    /// Lowers the live count of a page after one of its bits was cleared.
    fn release_block(&self, page: u32, desc: &PageDesc, class: usize) {
        let mut current = desc.state.load(Ordering::Acquire);
        loop {
            let used = live(current);
            let listed = current & LISTED != 0;
            // Only an unlisted page is full; its first free lists it again,
            // or (a one-block page) retires it at once.
            let (new, action) = if !listed && used <= 1 {
                (FREE, 2)
            } else if !listed {
                (current - LIVE_ONE + LISTED, 1)
            } else {
                (current.saturating_sub(LIVE_ONE), 0)
            };
            match desc.state.compare_exchange_weak(
                current,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    match action {
                        1 => tagged_stack::push(
                            &self.state().classes[shard_of(current)][class],
                            page,
                            &desc.link,
                        ),
                        2 => self.push_run(page, 1),
                        _ => {}
                    }
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Records `offset` in the calling thread's hand-off log, between the
    /// commit and the end of a block's pending state.
    #[inline]
    pub(crate) fn record_handoff(&self, offset: u64) {
        if let Some(log) = handoff::my_slot(&self.segment()) {
            log.record(offset);
        }
    }

    /// Forgets the calling thread's hand-off record of `offset`, a block it
    /// is about to free.
    #[inline]
    pub(crate) fn forget_handoff(&self, offset: u64) {
        handoff::forget_mine(&self.segment(), offset);
    }

    /// Allocates a block without touching the counters.
    pub(crate) fn alloc_block(&self, size: usize, align: usize) -> Result<u64> {
        self.alloc_block_for(size, align, handoff::my_indexed_slot(&self.segment()))
    }

    /// [`alloc_block`](Self::alloc_block) for a thread whose hand-off slot
    /// the caller looked up (its shard and its record).
    fn alloc_block_for(&self, size: usize, align: usize, mine: Mine<'_>) -> Result<u64> {
        let align = power_of_two_align(align, self.segment().max_align())? as u64;
        if align > PAGE_SIZE {
            return Err(Error::InvalidAlignment {
                align: align as usize,
                max: PAGE_SIZE as usize,
            });
        }
        let requested = size as u64;
        let offset = match class_for(requested.max(1), align) {
            Some(class) => self.alloc_small(class, requested, mine)?,
            None => {
                let pages = requested.max(1).div_ceil(PAGE_SIZE);
                if pages > u64::from(self.max_pages) {
                    return Err(self.out_of_memory(requested));
                }
                let head = self.take_run(pages as u32, requested)?;
                let Some(desc) = self.desc(head) else {
                    return Err(Error::corrupt(format!("page {head} out of range")));
                };
                for tail in head + 1..head + pages as u32 {
                    if let Some(d) = self.desc(tail) {
                        d.state.store(TAIL, Ordering::Relaxed);
                    }
                }
                crash_point!("size_class.alloc.large_tails");
                desc.run.store(pages, Ordering::Relaxed);
                desc.requested.store(requested, Ordering::Relaxed);
                desc.state.store(PENDING_LARGE, Ordering::Release);
                let offset = self.page_offset(head);
                crash_point!("size_class.alloc.large_pending");
                record(mine, offset);
                desc.state.store(LARGE, Ordering::Release);
                offset
            }
        };
        Ok(offset)
    }

    /// Takes a block away from its user: a small block is marked (its slack
    /// set to the sentinel, so a racing second free fails) but still holds
    /// its bit; a large block is freed outright. Refuses anything that is not
    /// a live block with `InvalidFree`, changing nothing.
    pub(crate) fn take_for_free(&self, offset: u64) -> Result<Freed> {
        let invalid = || Error::InvalidFree { offset };
        let (page, within, desc) = self.locate(offset).ok_or_else(invalid)?;
        let state = desc.state.load(Ordering::Acquire);
        match phase(state) {
            SMALL => {
                let (class, index, base) =
                    self.small_block(page, within, state).ok_or_else(invalid)?;
                let info = &CLASSES[class];
                // SAFETY: `index < count` (checked by `small_block`).
                let slack = unsafe { Self::slack(base, info, index) };
                if slack > info.size
                    // SAFETY: as above.
                    || !unsafe { Self::cas_slack(base, info, index, slack, sentinel(info)) }
                {
                    return Err(invalid()); // a racing double free won
                }
                // The mark makes the block ours alone until its bit clears.
                self.segment().scrub(offset, info.size);
                Ok(Freed::Small {
                    page,
                    class,
                    index,
                    requested: info.size - slack,
                })
            }
            LARGE if within == 0 => {
                let requested = desc.requested.load(Ordering::Relaxed);
                let len = desc.run.load(Ordering::Relaxed);
                if len == 0 || u64::from(page) + len > u64::from(self.max_pages) {
                    return Err(Error::corrupt(format!(
                        "large block at page {page}: {len} pages"
                    )));
                }
                if desc
                    .state
                    .compare_exchange(state, FREE, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return Err(invalid());
                }
                // FREE but on no stack yet: nobody else can take these pages.
                crash_point!("size_class.free.large_head_freed");
                self.segment().scrub(offset, len * PAGE_SIZE);
                for tail in page + 1..page + len as u32 {
                    if let Some(d) = self.desc(tail) {
                        d.state.store(FREE, Ordering::Relaxed);
                    }
                }
                self.push_run(page, len as u32);
                Ok(Freed::Large { requested })
            }
            _ => Err(invalid()),
        }
    }

    /// Gives a small block taken by [`take_for_free`](Self::take_for_free)
    /// (or held in a cache) back to its page.
    pub(crate) fn release_small(&self, page: u32, class: usize, index: u64) -> Result<()> {
        let desc = self
            .desc(page)
            .ok_or_else(|| Error::corrupt(format!("page {page} out of range")))?;
        let base = self.page_ptr(page)?;
        if CLASSES.get(class).is_none_or(|info| index >= info.count) {
            return Err(Error::corrupt(format!("class {class} block {index}")));
        }
        let mask = 1u64 << (index % 64);
        // SAFETY: `index < count`, inside the page header.
        let old = unsafe { Self::bitmap(base, index / 64) }.fetch_and(!mask, Ordering::AcqRel);
        if old & mask == 0 {
            return Err(Error::corrupt(format!(
                "page {page} block {index} was released twice"
            )));
        }
        self.release_block(page, desc, class);
        Ok(())
    }

    // ------------------------------------------------------------ thread caches

    /// The small block that starts at `offset` and holds its allocation bit
    /// (a user's block, or one a thread cache keeps), or `None`.
    #[inline(always)]
    pub(crate) fn small_block_at(&self, offset: u64) -> Option<SmallBlock> {
        let (page, within, desc) = self.locate(offset)?;
        let state = desc.state.load(Ordering::Acquire);
        if phase(state) != SMALL {
            return None;
        }
        let class = class_of(state);
        let (index, base, _) = self.allocated_block(page, within, class)?;
        Some(SmallBlock {
            page,
            class,
            index,
            base,
            // SAFETY: `allocated_block` found a block starting `within`
            // bytes into the page.
            at: unsafe { base.add(within as usize) },
        })
    }

    /// The bytes requested for a block, or `None` while a free has marked
    /// it (its slack is the sentinel).
    #[inline(always)]
    pub(crate) fn requested_of(&self, block: &SmallBlock) -> Option<u64> {
        let info = &CLASSES[block.class];
        // SAFETY: `small_block_at` checked `index < count` and the page.
        let slack = unsafe { Self::slack(block.base, info, block.index) };
        (slack <= info.size).then(|| info.size - slack)
    }

    /// Records a new requested size for a block the caller holds alone.
    /// Writes only when it changes: the slack array is shared by the
    /// page's blocks, and an unneeded store would bounce its cache line
    /// between threads that use neighbouring blocks.
    #[inline(always)]
    pub(crate) fn set_requested(&self, block: &SmallBlock, requested: u64) {
        let info = &CLASSES[block.class];
        let slack = info.size - requested.min(info.size);
        // SAFETY: as in `requested_of`.
        unsafe {
            if Self::slack(block.base, info, block.index) != slack {
                Self::set_slack(block.base, info, block.index, slack);
            }
        }
    }

    /// Marks a block the caller holds as held by no user (the sentinel
    /// slack), before it goes back to its page: see "Handing a block out".
    #[inline]
    pub(crate) fn mark_unheld(&self, block: &SmallBlock) {
        let info = &CLASSES[block.class];
        // SAFETY: as in `requested_of`.
        unsafe { Self::set_slack(block.base, info, block.index, sentinel(info)) };
    }

    /// The first word of a block's own bytes.
    #[inline(always)]
    pub(crate) fn first_word(&self, block: &SmallBlock) -> &AtomicU64 {
        // SAFETY: `small_block_at` found the block inside a page that lies
        // inside the mapping; blocks are at least 16 bytes and 16-aligned;
        // any bytes are a valid AtomicU64. The reference lives no longer
        // than `self`, which keeps the mapping.
        unsafe { &*(block.at as *const AtomicU64) }
    }

    // ------------------------------------------------------------ lookup

    /// The page of an offset and the position in it.
    #[inline(always)]
    fn locate(&self, offset: u64) -> Option<(u32, u64, &PageDesc)> {
        let relative = offset.checked_sub(self.heap_base)?;
        let page = u32::try_from(relative / PAGE_SIZE).ok()?;
        let desc = self.desc(page)?;
        Some((page, relative % PAGE_SIZE, desc))
    }

    /// A live small block: (class, index, page address).
    fn small_block(&self, page: u32, within: u64, state: u64) -> Option<(usize, u64, *mut u8)> {
        let class = class_of(state);
        let (index, base, cached) = self.allocated_block(page, within, class)?;
        (!cached).then_some((class, index, base))
    }

    /// The block of `class` starting `within` bytes into `page`, if one
    /// starts there and its allocation bit is set: (index, page address,
    /// whether a free has marked it, i.e. its slack is the sentinel).
    #[inline(always)]
    fn allocated_block(
        &self,
        page: u32,
        within: u64,
        class: usize,
    ) -> Option<(u64, *mut u8, bool)> {
        let info = CLASSES.get(class)?;
        let from_first = within.checked_sub(info.first)?;
        if from_first >= PAGE_SIZE {
            return None;
        }
        let index = (from_first * info.recip) >> 32;
        debug_assert_eq!(index, from_first / info.size);
        if index * info.size != from_first || index >= info.count {
            return None;
        }
        let base = self.page_ptr(page).ok()?;
        // SAFETY: `index < count`.
        let word = unsafe { Self::bitmap(base, index / 64) }.load(Ordering::Acquire);
        if word & (1 << (index % 64)) == 0 {
            return None;
        }
        // SAFETY: as above.
        let slack = unsafe { Self::slack(base, info, index) };
        Some((index, base, slack == sentinel(info)))
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
        let mine = handoff::my_indexed_slot(&self.segment());
        let offset = self.alloc_block_for(size, align, mine)?;
        self.state()
            .counters
            .on_allocate_to(mine.map(|(_, slot)| &slot.share), size as u64);
        Ok(offset)
    }

    unsafe fn free_offset(&self, _ctx: &MemContext, offset: u64) -> Result<()> {
        let mine = handoff::my_slot(&self.segment());
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
        counters.on_resize(&self.segment(), old, new);
        Ok(true)
    }

    fn stats(&self) -> AllocStats {
        let (allocated_bytes, live_allocations, peak_bytes) =
            self.state().counters.snapshot(&self.segment());
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
        .with_handoffs(&self.segment()))
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

impl SizeClassAllocator {
    /// Compares the shared counters with what the pages hold: the message
    /// of a mismatch.
    pub(crate) fn check_counters(
        &self,
        live_total: u64,
        bytes_total: u64,
    ) -> std::result::Result<(), String> {
        match self.state().counters.disagreement(
            self.segment(),
            live_total,
            bytes_total,
            "pages hold",
        ) {
            Some(what) => Err(what),
            None => Ok(()),
        }
    }

    /// The pages handed out so far, each (or each large run) as a region:
    /// a small page is in use in proportion to its live blocks.
    pub(crate) fn page_regions(&self, visit: &mut dyn FnMut(Region)) -> Result<()> {
        let bump = self.bump_now().min(self.pages_now());
        let mut page = 0;
        while page < bump {
            let Some(desc) = self.desc(page) else { break };
            let state = desc.state.load(Ordering::Acquire);
            let mut pages = 1;
            let used = match phase(state) {
                SMALL => CLASSES
                    .get(class_of(state))
                    .map_or(0, |info| live(state).min(info.count) * info.size),
                LARGE => {
                    pages = desc
                        .run
                        .load(Ordering::Relaxed)
                        .clamp(1, u64::from(bump - page)) as u32;
                    u64::from(pages) * PAGE_SIZE
                }
                _ => 0,
            };
            visit(Region {
                offset: self.page_offset(page),
                len: u64::from(pages) * PAGE_SIZE,
                used,
            });
            page += pages;
        }
        let end = self.pages_now();
        if end > bump {
            visit(Region {
                offset: self.page_offset(bump),
                len: u64::from(end - bump) * PAGE_SIZE,
                used: 0,
            });
        }
        Ok(())
    }

    /// The shared counters.
    pub(crate) fn counters(&self) -> &AllocCounters {
        &self.state().counters
    }

    /// Walks pages, class lists and free runs: corruption is an error; what
    /// processes killed mid-operation leave is gathered as traces.
    pub(crate) fn check_parts(&self) -> Result<PagesChecked> {
        let state = self.state();
        let mut traces = Traces::default();
        let mut cached = 0u64;
        let bump = state.bump.load(Ordering::Acquire);
        if bump > u64::from(self.max_pages) {
            return Err(Error::corrupt(format!("page cursor {bump} out of range")));
        }
        let bump = bump as u32;
        let mut live_total = 0u64;
        let mut bytes_total = 0u64;
        let mut listed = [0u64; NUM_CLASSES];
        let mut page = 0u32;
        while page < self.max_pages {
            let Some(desc) = self.desc(page) else { break };
            let current = desc.state.load(Ordering::Acquire);
            if page >= bump {
                if current != FREE {
                    return Err(Error::corrupt(format!(
                        "page {page} beyond the cursor in state {current:#x}"
                    )));
                }
                page += 1;
                continue;
            }
            match phase(current) {
                FREE => page += 1,
                SMALL => {
                    let class = class_of(current);
                    let info = CLASSES.get(class).ok_or_else(|| {
                        Error::corrupt(format!("page {page}: class {class} out of range"))
                    })?;
                    let used = live(current);
                    if used > info.count || current >> (SHARD_SHIFT + SHARD_BITS) != 0 {
                        return Err(Error::corrupt(format!("page {page}: state {current:#x}")));
                    }
                    if current & LISTED != 0 {
                        listed[class] += 1;
                    } else if used != info.count {
                        // A free that died between its bit and its count.
                        traces.add(
                            0,
                            format!(
                                "page {page} is off its class list with {used} of {} blocks",
                                info.count
                            ),
                        );
                    }
                    let base = self.page_ptr(page)?;
                    let mut set = 0;
                    for word in 0..info.words {
                        let valid = valid_bits(info, word);
                        // SAFETY: `word < words`, inside the page header.
                        let bits = unsafe { Self::bitmap(base, word) }.load(Ordering::Acquire);
                        if bits & !valid != 0 {
                            return Err(Error::corrupt(format!(
                                "page {page}: bits set past its {} blocks",
                                info.count
                            )));
                        }
                        let mut rest = bits;
                        while rest != 0 {
                            let index = word * 64 + u64::from(rest.trailing_zeros());
                            rest &= rest - 1;
                            // SAFETY: `index < count`.
                            let slack = unsafe { Self::slack(base, info, index) };
                            if slack == sentinel(info) {
                                cached += 1;
                                set += 1;
                                continue;
                            }
                            if slack > info.size {
                                return Err(Error::corrupt(format!(
                                    "page {page} block {index}: slack {slack}"
                                )));
                            }
                            bytes_total += info.size - slack;
                            set += 1;
                        }
                    }
                    if set > used {
                        return Err(Error::corrupt(format!(
                            "page {page}: {set} blocks marked, {used} counted live"
                        )));
                    }
                    if set < used {
                        // Reserved by an allocation, or left by a free,
                        // that died between the count and the bit.
                        traces.add(
                            used - set,
                            format!(
                                "page {page} counts {} block(s) more than its bits mark",
                                used - set
                            ),
                        );
                    }
                    live_total += used;
                    page += 1;
                }
                LARGE => {
                    let len = self.large_run_len(page, desc, bump)?;
                    live_total += 1;
                    bytes_total += desc.requested.load(Ordering::Relaxed);
                    page += len;
                }
                PENDING_LARGE => {
                    let len = self.large_run_len(page, desc, bump)?;
                    traces.add(
                        1,
                        format!("the large block at page {page} was never handed out"),
                    );
                    page += len;
                }
                TAIL if current == TAIL => {
                    // Tails with no large head before them: an allocation
                    // killed after writing its tails and before its head,
                    // or a free killed after freeing its head and before
                    // its tails. A rebuild frees them.
                    let first = page;
                    while page < bump
                        && self.desc(page).map(|d| d.state.load(Ordering::Acquire)) == Some(TAIL)
                    {
                        page += 1;
                    }
                    traces.add(
                        1,
                        format!(
                            "pages {first}..{page}: the tail of a large block whose \
                             allocation or free was cut short"
                        ),
                    );
                }
                _ => {
                    return Err(Error::corrupt(format!("page {page}: state {current:#x}")));
                }
            }
        }
        // Class lists: each listed page exactly once, of its class, on its
        // shard's list.
        for class in 0..NUM_CLASSES {
            let mut count = 0u64;
            for (shard, heads) in state.classes.iter().enumerate() {
                let mut next = tagged_stack::top(heads[class].load(Ordering::Acquire));
                while let Some(page) = next {
                    count += 1;
                    let desc = self
                        .desc(page)
                        .filter(|_| count <= listed[class])
                        .ok_or_else(|| Error::corrupt(format!("class {class} list is too long")))?;
                    let current = desc.state.load(Ordering::Acquire);
                    if phase(current) != SMALL
                        || class_of(current) != class
                        || current & LISTED == 0
                        || shard_of(current) != shard
                    {
                        return Err(Error::corrupt(format!(
                            "class {class} shard {shard} lists page {page} in state {current:#x}"
                        )));
                    }
                    next = tagged_stack::decode_link(
                        desc.link.load(Ordering::Acquire),
                        self.max_pages,
                    )
                    .map_err(|bad| bad_link("class page list", bad))?;
                }
            }
            if count > listed[class] {
                return Err(Error::corrupt(format!(
                    "class {class}: {} pages flagged listed, {count} on the list",
                    listed[class]
                )));
            }
            if count < listed[class] {
                // Flagged by a process that died before pushing it, or
                // popped by one that died before unflagging it.
                traces.add(
                    0,
                    format!(
                        "class {class}: {} pages flagged listed, {count} on the list",
                        listed[class]
                    ),
                );
            }
        }
        // Free runs: free pages below the cursor.
        let mut next = tagged_stack::top(state.free_runs.load(Ordering::Acquire));
        let mut steps = 0u32;
        while let Some(head) = next {
            steps += 1;
            let desc = self
                .desc(head)
                .filter(|_| steps <= self.max_pages)
                .ok_or_else(|| Error::corrupt("free-run stack loops"))?;
            let len = self.run_len(head)?;
            if head + len > bump {
                return Err(Error::corrupt(format!(
                    "free run at {head} passes the cursor"
                )));
            }
            for p in head..head + len {
                if self.desc(p).map(|d| d.state.load(Ordering::Acquire)) != Some(FREE) {
                    return Err(Error::corrupt(format!(
                        "free run at {head}: page {p} in use"
                    )));
                }
            }
            next = tagged_stack::decode_link(desc.link.load(Ordering::Acquire), self.max_pages)
                .map_err(|bad| bad_link("free-run stack", bad))?;
        }
        // Blocks holding their bit with the sentinel slack: being handed
        // out or freed (by a process that died, when quiescent).
        if cached != 0 {
            traces.add(
                cached,
                format!(
                    "{cached} block(s) hold their bit but have no user (handed out or freed \
                     halfway)"
                ),
            );
        }
        Ok(PagesChecked {
            live: live_total - cached,
            bytes: bytes_total,
            traces,
        })
    }
}

/// What [`SizeClassAllocator::check_parts`] found.
#[derive(Debug, Default)]
pub(crate) struct PagesChecked {
    /// Blocks users (or thread caches) hold, and their requested bytes.
    pub(crate) live: u64,
    pub(crate) bytes: u64,
    /// A crash's traces found (blocks half handed out or half freed among
    /// them).
    pub(crate) traces: Traces,
}

/// What [`SizeClassAllocator::rebuild_from_pages`] found.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Rebuilt {
    /// Marked or orphaned blocks whose bits were cleared.
    pub(crate) blocks_released: u64,
    /// Free pages that were not on the free-run stack (a collect pass or an
    /// allocation cut short held them) and are on it again.
    pub(crate) pages_reclaimed: u64,
    /// Blocks users hold, and their requested bytes.
    pub(crate) live: u64,
    pub(crate) live_bytes: u64,
}

impl Rebuilt {
    /// Blocks and pages made allocatable again.
    pub(crate) fn reclaimed(&self) -> u64 {
        self.blocks_released + self.pages_reclaimed
    }
}

impl SizeClassAllocator {
    /// Pages on the free-run stack, walked at most `max_pages` steps.
    fn pages_on_free_runs(&self) -> u64 {
        let mut next = tagged_stack::top(self.state().free_runs.load(Ordering::Acquire));
        let (mut pages, mut steps) = (0u64, 0u32);
        while let Some(head) = next {
            steps += 1;
            let Some(desc) = self.desc(head).filter(|_| steps <= self.max_pages) else {
                break;
            };
            pages += desc
                .run
                .load(Ordering::Relaxed)
                .min(u64::from(self.max_pages));
            next = tagged_stack::decode_link(desc.link.load(Ordering::Acquire), self.max_pages)
                .unwrap_or(None);
        }
        pages
    }

    /// The recovery pass's core: the page states, bitmaps and slacks are the
    /// record, and every class list, the free-run stack and the counters are
    /// rebuilt from them. A block marked by a free that never finished, or
    /// one `orphan` names (a thread cache's block left in no magazine), is
    /// released; a page in no structure is free again; the collect count is
    /// cleared. Everything is validated before anything changes. Needs a
    /// quiescent allocator (see [`ShmAllocator::recover`]).
    pub(crate) fn rebuild_from_pages(
        &self,
        orphan: &dyn Fn(u64, &SmallBlock) -> bool,
    ) -> Result<Rebuilt> {
        let state = self.state();
        let bump = state.bump.load(Ordering::Acquire);
        if bump > u64::from(self.max_pages)
            || self.heap_base + bump * PAGE_SIZE > self.segment().size()
        {
            return Err(Error::corrupt(format!("page cursor {bump} out of range")));
        }
        let bump = bump as u32;
        self.validate_pages(bump)?;
        let free_before = self.pages_on_free_runs();
        for head in state.classes.iter().flat_map(|shard| shard.iter()) {
            head.store(tagged_stack::EMPTY, Ordering::Release);
        }
        state
            .free_runs
            .store(tagged_stack::EMPTY, Ordering::Release);
        state.collecting.store(0, Ordering::Release);
        let mut rebuilt = Rebuilt::default();
        let mut released = std::collections::HashSet::new();
        let mut free_pages: Vec<u32> = Vec::new();
        let mut were_free = 0u64;
        let mut page = 0u32;
        while page < bump {
            let Some(desc) = self.desc(page) else { break };
            let current = desc.state.load(Ordering::Acquire);
            match phase(current) {
                SMALL => {
                    let class = class_of(current);
                    let info = &CLASSES[class];
                    let base = self.page_ptr(page)?;
                    let mut held = 0;
                    for index in 0..info.count {
                        let mask = 1u64 << (index % 64);
                        // SAFETY: `index < count`, inside the page header.
                        let word = unsafe { Self::bitmap(base, index / 64) };
                        if word.load(Ordering::Acquire) & mask == 0 {
                            // A free block has the sentinel slack (see
                            // "Handing a block out").
                            // SAFETY: as above.
                            unsafe { Self::set_slack(base, info, index, sentinel(info)) };
                            continue;
                        }
                        // SAFETY: as above.
                        let slack = unsafe { Self::slack(base, info, index) };
                        let offset = self.block_offset(page, info, index);
                        let block = SmallBlock {
                            page,
                            class,
                            index,
                            base,
                            // SAFETY: block `index` of this page.
                            at: unsafe { base.add((info.first + index * info.size) as usize) },
                        };
                        if slack == sentinel(info) || orphan(offset, &block) {
                            // SAFETY: as above.
                            unsafe { Self::set_slack(base, info, index, sentinel(info)) };
                            word.fetch_and(!mask, Ordering::AcqRel);
                            rebuilt.blocks_released += 1;
                            released.insert(offset);
                            continue;
                        }
                        held += 1;
                        rebuilt.live += 1;
                        rebuilt.live_bytes += info.size - slack;
                    }
                    // Bits past the last block are never set by this code.
                    for word in 0..info.words {
                        let valid = valid_bits(info, word);
                        // SAFETY: `word < words`, inside the page header.
                        unsafe { Self::bitmap(base, word) }.fetch_and(valid, Ordering::AcqRel);
                    }
                    if held == 0 {
                        desc.state.store(FREE, Ordering::Release);
                        free_pages.push(page);
                    } else {
                        let listed = held < info.count;
                        let shard = shard_of(current);
                        desc.state
                            .store(small_state(class, held, listed, shard), Ordering::Release);
                        if listed {
                            tagged_stack::push(&state.classes[shard][class], page, &desc.link);
                        }
                    }
                    page += 1;
                }
                LARGE => {
                    rebuilt.live += 1;
                    rebuilt.live_bytes += desc.requested.load(Ordering::Relaxed);
                    // Validated above; clamped anyway, so that a word that
                    // changed since can neither stall the walk nor skip past
                    // the cursor.
                    let run = desc.run.load(Ordering::Relaxed);
                    page += run.clamp(1, u64::from(bump - page)) as u32;
                }
                _ => {
                    // FREE, a large block never handed out, or the tail of
                    // a large block whose head never became LARGE (an
                    // allocation cut short).
                    if phase(current) == PENDING_LARGE {
                        released.insert(self.page_offset(page));
                        rebuilt.blocks_released += 1;
                    }
                    desc.state.store(FREE, Ordering::Release);
                    free_pages.push(page);
                    were_free += 1;
                    page += 1;
                }
            }
        }
        rebuilt.pages_reclaimed = were_free.saturating_sub(free_before);
        // Free pages into runs; a run that ends at the cursor goes back to it.
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for page in free_pages {
            match runs.last_mut() {
                Some(last) if last.0 + last.1 == page => last.1 += 1,
                _ => runs.push((page, 1)),
            }
        }
        if let Some(&(head, len)) = runs.last() {
            if head + len == bump {
                state.bump.store(u64::from(head), Ordering::Release);
                runs.pop();
            }
        }
        for (head, len) in runs.into_iter().rev() {
            self.push_run(head, len);
        }
        state
            .counters
            .reset_to(&self.segment(), rebuilt.live_bytes, rebuilt.live);
        handoff::forget_dead_records(&self.segment(), |block| released.contains(&block));
        Ok(rebuilt)
    }

    /// The length of the large block at `page`, checked to lie below the
    /// cursor with every page after its head a tail.
    fn large_run_len(&self, page: u32, desc: &PageDesc, bump: u32) -> Result<u32> {
        let len = desc.run.load(Ordering::Relaxed);
        if len == 0 || u64::from(page) + len > u64::from(bump) {
            return Err(Error::corrupt(format!(
                "large block at {page}: {len} pages"
            )));
        }
        let len = len as u32;
        for tail in page + 1..page + len {
            let tail_state = self.desc(tail).map(|d| d.state.load(Ordering::Acquire));
            if tail_state != Some(TAIL) {
                return Err(Error::corrupt(format!(
                    "page {tail} inside the large block at {page} is {tail_state:?}"
                )));
            }
        }
        Ok(len)
    }

    /// Checks what [`rebuild_from_pages`](Self::rebuild_from_pages) relies
    /// on, changing nothing: every page below the cursor has a known phase, a
    /// small page a valid class and bitmap, a large block a run of tails
    /// inside the cursor; every page above it is free.
    fn validate_pages(&self, bump: u32) -> Result<()> {
        let mut page = 0u32;
        while page < self.max_pages {
            let Some(desc) = self.desc(page) else { break };
            let current = desc.state.load(Ordering::Acquire);
            if page >= bump {
                if current != FREE {
                    return Err(Error::corrupt(format!(
                        "page {page} beyond the cursor in state {current:#x}"
                    )));
                }
                page += 1;
                continue;
            }
            match phase(current) {
                FREE | TAIL | PENDING_LARGE => page += 1,
                SMALL => {
                    let class = class_of(current);
                    let info = CLASSES.get(class).ok_or_else(|| {
                        Error::corrupt(format!("page {page}: class {class} out of range"))
                    })?;
                    let base = self.page_ptr(page)?;
                    for index in 0..info.count {
                        // SAFETY: `index < count`, inside the page header.
                        let bits =
                            unsafe { Self::bitmap(base, index / 64) }.load(Ordering::Acquire);
                        // SAFETY: as above.
                        let slack = unsafe { Self::slack(base, info, index) };
                        if bits & (1 << (index % 64)) != 0
                            && slack > info.size
                            && slack != sentinel(info)
                        {
                            return Err(Error::corrupt(format!(
                                "page {page} block {index}: slack {slack}"
                            )));
                        }
                    }
                    page += 1;
                }
                LARGE => {
                    page += self.large_run_len(page, desc, bump)?;
                }
                _ => return Err(Error::corrupt(format!("page {page}: state {current:#x}"))),
            }
        }
        Ok(())
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
