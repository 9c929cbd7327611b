//! The thread-local caching allocator: per-thread magazines of freed blocks,
//! kept in the segment, over the size-class allocator's pages and classes.
//!
//! The segment's state area holds the size-class state, a line with the
//! sampled peak and the segment's cache key, then a bounded array of thread
//! slots. A slot has an owner word (see `sync::slot_owner`), the owner's
//! share of the accounting, and for each cached class a small magazine (a
//! count and a few block offsets).
//!
//! The fast paths run no locked instruction and write no cache line that
//! another thread uses: only the thread's own slot and the block itself.
//!
//! * **Free** checks that the offset is a block in use, then pushes it into
//!   the freeing thread's magazine (whatever thread or process allocated
//!   it) and writes the *cache key* (a per-segment secret mixed with the
//!   offset) into the block's first word. At page level a cached block
//!   still looks in use. A full magazine first gives half its blocks back
//!   to the pages; a class too large to cache, or a thread without a slot,
//!   gives the block straight back.
//! * **Double free**: a block whose first word holds its key may be cached;
//!   the free then looks for it in every slot's magazine of its class and,
//!   if it is there, refuses with `InvalidFree` and changes nothing. (User
//!   data that happens to equal the key costs that search, never a wrong
//!   answer.) Two frees of one block at the same instant by two threads are
//!   a race the fast path does not arbitrate, as in other thread-caching
//!   allocators: the block then sits in two magazines, and while the first
//!   copy to be used clears the key (so the other is dropped when it is
//!   met), a later free of the block sets the key again and revives the
//!   stale copy. A racing double free is a bug that can hand a block out
//!   twice later; use the size-class allocator where it must be caught.
//! * **Allocate** pops the magazine of its class, checks the entry is still
//!   a cached block of that class (its key), clears the key and records the
//!   requested size (only if it changed); an empty magazine falls through
//!   to the size-class allocator.
//! * **Accounting**: a thread with a slot counts its allocations and frees
//!   in the slot (any thread may free any block, so a slot's share may be
//!   negative); threads without one use the shared counters. `stats()` sums
//!   them. The peak is sampled: every 1024th allocation of a slot, and every
//!   `stats()`, raise it to the current total.
//! * **Thread exit**: a thread-local destructor gives the thread's slots
//!   back (flushing their magazines to the pages). **Allocator drop**: the
//!   view releases every slot it claimed. **Process death**: a claimer that
//!   meets a slot whose owner or releaser pid is dead takes it over and
//!   flushes it first (and [`ThreadLocalAllocator::reclaim_dead_slots`]
//!   does so for all of them).
//! * **More threads than slots**: the extra threads use the uncached
//!   size-class allocator directly (correct, just slower); no error.
//!
//! A process killed in the middle of a free or an allocation can lose that
//! one block (in use at page level, in no magazine) or leave its slot's
//! count off by that one operation, which `check` then reports. Entries
//! leave a magazine before their blocks go back to the pages, so a killed
//! releaser never leaves an entry for a block that may be someone else's.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::counters::single_writer_add;
use super::handoff;
use super::in_segment::StatePtr;
use super::memory_resource::impl_allocator_api2;
use super::segment_allocator::SegmentAllocator;
use super::shm_allocator::power_of_two_align;
use super::size_class::{
    class_block_size, class_for, Freed, PagesChecked, SizeClassAllocator, SmallBlock,
};
use super::{AllocStats, AllocatorKind, MemContext, RecoveryReport, Region, ShmAllocator};
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::os::process::{current_pid, process_alive};
use crate::os::thread_id::current_thread_index;
use crate::ptr::{FullPtr, Offset};
use crate::segment::header::PARAM_WORDS;
use crate::segment::Segment;
use crate::sync::slot_owner::{self, Claimed};

/// Thread slots in a segment.
const SLOTS: usize = 64;
/// Classes with a magazine: every class up to 4 KiB.
const CACHED_CLASSES: usize = 28;
/// Blocks a magazine holds.
const MAGAZINE: usize = 8;
/// Marks a thread that found no free slot.
const NO_SLOT: u32 = u32::MAX;
/// Allocations between two samples of the peak.
const PEAK_SAMPLE: u64 = 1024;
/// Version of this layout, in the allocator parameters (a segment made
/// with another layout is refused on attach).
const LAYOUT_VERSION: u64 = 2;

#[repr(C)]
struct Magazine {
    count: AtomicU64,
    /// Entries: see [`entry`].
    items: [AtomicU64; MAGAZINE],
}

/// Offsets a magazine entry can hold.
const ENTRY_OFFSET_BITS: u32 = 48;

/// A magazine entry: the block's offset and the size its last user asked
/// for, so that handing it out again at that size needs no look at the
/// page's metadata.
#[inline(always)]
fn entry(offset: u64, requested: u64) -> Option<u64> {
    (offset >> ENTRY_OFFSET_BITS == 0 && requested <= u64::from(u16::MAX))
        .then_some(offset | (requested << ENTRY_OFFSET_BITS))
}

#[inline(always)]
fn entry_offset(entry: u64) -> u64 {
    entry & ((1 << ENTRY_OFFSET_BITS) - 1)
}

#[inline(always)]
fn entry_requested(entry: u64) -> u64 {
    entry >> ENTRY_OFFSET_BITS
}

#[repr(C)]
struct Slot {
    /// The owner word (`sync::slot_owner`).
    owner: AtomicU64,
    /// This slot's share of the requested bytes and live blocks (wrapping:
    /// frees of blocks allocated elsewhere make it negative).
    bytes: AtomicU64,
    live: AtomicU64,
    /// Allocations through this slot, to sample the peak.
    allocations: AtomicU64,
    magazines: [Magazine; CACHED_CLASSES],
}

/// The line after the size-class state: the sampled peak and the key.
#[repr(C)]
struct CacheState {
    /// The sampled peak of requested bytes (slots keep the live totals, so
    /// the shared counters' own peak does not apply).
    peak: AtomicU64,
    /// The per-segment secret mixed into every cache key.
    secret: AtomicU64,
}

fn cache_state_offset_in_state() -> u64 {
    SizeClassAllocator::CORE_STATE_LEN.div_ceil(128) * 128
}

fn slots_offset_in_state() -> u64 {
    cache_state_offset_in_state() + 128
}

/// A secret for a new segment: randomly keyed hashing of the time, the pid
/// and an address (no dependency needed, and never zero).
fn new_secret() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.write_usize(&hasher as *const _ as usize);
    hasher.finish() | 1
}

/// Per-thread caches in the segment over the size-class allocator (Hermes
/// SHM's ThreadLocalAllocator).
///
/// Each thread that allocates or frees claims one of 64 slots in the
/// segment and keeps up to 8 freed blocks of each class up to 4 KiB in it,
/// so a thread that frees and allocates again touches only its own slot
/// and the block: no locked instruction, no shared cache line. A block may
/// be freed by any thread of any process: it goes to the freeing thread's
/// cache, or back to the pages. Slots are given back when their thread
/// exits, when the allocator is dropped, and (by the next claimer) when
/// their process has died. Threads beyond the 64th use the size-class
/// allocator without a cache.
///
/// A double free is refused with [`Error::InvalidFree`] unless the two frees
/// race each other on two threads (see the module notes); use the
/// [`SizeClassAllocator`] where racing frees of one block must be caught.
///
/// ```
/// use shmkit::{SegmentAllocator, SegmentOptions, ShmAllocator, ThreadLocalAllocator};
///
/// let heap = ThreadLocalAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let a = heap.allocate(48)?;
/// // SAFETY: nothing uses `a` after its free.
/// unsafe { heap.free(a)? };               // kept in this thread's cache
/// let b = heap.allocate(48)?;             // and handed out again
/// assert_eq!(a.offset(), b.offset());
/// // SAFETY: the same block, freed once and then refused.
/// assert!(unsafe { heap.free(a).is_ok() && heap.free(b).is_err() });
/// heap.check()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct ThreadLocalAllocator {
    inner: Arc<Inner>,
}

struct Inner {
    core: SizeClassAllocator,
    slots: StatePtr<Slot>,
    cache_state: StatePtr<CacheState>,
    /// The segment's secret, read once.
    secret: u64,
    /// Tells this view apart from other views in the same process.
    view: u64,
    /// Slots this view claimed: (slot, owner word).
    claimed: Mutex<Vec<(u32, u64)>>,
}

impl std::fmt::Debug for ThreadLocalAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadLocalAllocator")
            .field("segment", self.segment())
            .field("stats", &self.stats())
            .finish()
    }
}

impl SegmentAllocator for ThreadLocalAllocator {
    const KIND: AllocatorKind = AllocatorKind::ThreadLocal;
    type Params = ();

    fn encode_params(_: &()) -> [u64; PARAM_WORDS] {
        let mut words = SizeClassAllocator::encode_params(&());
        words[2] = SLOTS as u64;
        words[3] = (LAYOUT_VERSION << 32) | (CACHED_CLASSES * 1000 + MAGAZINE) as u64;
        words
    }

    fn state_len(_: &()) -> u64 {
        slots_offset_in_state() + (SLOTS * std::mem::size_of::<Slot>()) as u64
    }

    fn initialize(segment: &Segment, _: &()) -> Result<()> {
        SizeClassAllocator::initialize(segment, &())?;
        // SAFETY: runs in the creator before *ready*; `cache_state_of`
        // checked bounds and alignment.
        unsafe {
            cache_state_of(segment)?.as_ptr().write(CacheState {
                peak: AtomicU64::new(0),
                secret: AtomicU64::new(new_secret()),
            })
        };
        let slots = slots_of(segment)?;
        for index in 0..SLOTS {
            // SAFETY: runs in the creator before *ready*; `slots_of` checked
            // that SLOTS slots fit and are aligned. Zero bytes are a valid
            // `Slot` (atomics), so writing zeros initializes it.
            unsafe { std::ptr::write_bytes(slots.as_ptr().add(index), 0, 1) };
        }
        Ok(())
    }

    fn from_segment(segment: Segment) -> Result<Self> {
        segment.expect_allocator(Self::KIND, None)?;
        let slots = slots_of(&segment)?;
        let cache_state = cache_state_of(&segment)?;
        // SAFETY: checked by `cache_state_of`; atomics in the segment.
        let secret = unsafe { cache_state.as_ref() }
            .secret
            .load(Ordering::Relaxed);
        if secret == 0 {
            return Err(Error::corrupt("thread-local cache key is zero"));
        }
        let core = SizeClassAllocator::open(segment)?;
        static VIEWS: AtomicU64 = AtomicU64::new(1);
        Ok(ThreadLocalAllocator {
            inner: Arc::new(Inner {
                core,
                slots: StatePtr::new(slots),
                cache_state: StatePtr::new(cache_state),
                secret,
                view: VIEWS.fetch_add(1, Ordering::Relaxed),
                claimed: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// The offset of the allocator state area, checked to hold this layout.
fn state_offset(segment: &Segment) -> Result<u64> {
    let state = segment.allocator_state::<[u8; 1]>()?;
    let state_offset = segment.offset_of(state.as_ptr() as *const u8)?.raw();
    if segment.data_offset() < state_offset + ThreadLocalAllocator::state_len(&()) {
        return Err(Error::corrupt("thread-local state area too small"));
    }
    Ok(state_offset)
}

/// The slot array, checked to lie inside the state area.
fn slots_of(segment: &Segment) -> Result<NonNull<Slot>> {
    let first = state_offset(segment)? + slots_offset_in_state();
    segment.resolve_array(Offset::<Slot>::from_raw(first), SLOTS as u64)
}

fn cache_state_of(segment: &Segment) -> Result<NonNull<CacheState>> {
    let at = state_offset(segment)? + cache_state_offset_in_state();
    segment.resolve(Offset::<CacheState>::from_raw(at))
}

/// The slots a thread holds, given back when the thread exits.
struct Held(Vec<HeldSlot>);

struct HeldSlot {
    view: u64,
    inner: Weak<Inner>,
    slot: u32,
    owner: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        // The fast lookup must not name a slot that is about to be freed.
        LAST.with(|last| last.set(LastSlot::NONE));
        let pid = current_pid();
        for held in self.0.drain(..) {
            if held.slot == NO_SLOT || slot_owner::pid_of(held.owner) != pid {
                continue; // no slot, or a forked parent's
            }
            if let Some(inner) = held.inner.upgrade() {
                inner.release_slot(held.slot, held.owner);
                let mut claimed = inner.claimed.lock().unwrap_or_else(|e| e.into_inner());
                claimed.retain(|&c| c != (held.slot, held.owner));
            }
        }
    }
}

/// The slot of the view this thread used last: one compare on the fast
/// path instead of a search of [`Held`].
/// Its `pid` tells a forked child (which inherits this thread-local) that
/// the slot is its parent's, never to be used or released by the child.
#[derive(Clone, Copy)]
struct LastSlot {
    view: u64,
    slot: u32,
    owner: u64,
    pid: u32,
}

impl LastSlot {
    /// Matches no view (view numbers start at 1).
    const NONE: LastSlot = LastSlot {
        view: 0,
        slot: NO_SLOT,
        owner: 0,
        pid: 0,
    };
}

thread_local! {
    static HELD: RefCell<Held> = const { RefCell::new(Held(Vec::new())) };
    // No destructor, so it stays usable while other thread-locals are torn
    // down; `Held::drop` clears it.
    static LAST: Cell<LastSlot> = const { Cell::new(LastSlot::NONE) };
}

fn new_owner() -> u64 {
    static TOKENS: AtomicU32 = AtomicU32::new(1);
    let token = loop {
        let token = TOKENS.fetch_add(1, Ordering::Relaxed);
        if token != 0 {
            break token;
        }
    };
    slot_owner::owner_value(current_pid(), token)
}

/// Whether `pid` (another process than ours) is gone.
fn is_dead(pid: u32) -> bool {
    pid != current_pid() && !process_alive(pid)
}

impl Inner {
    #[inline(always)]
    fn slot(&self, index: u32) -> Option<&Slot> {
        if (index as usize) < SLOTS {
            // SAFETY: SLOTS slots were checked at construction; atomics only.
            Some(unsafe { &*self.slots.as_ptr().add(index as usize) })
        } else {
            None
        }
    }

    fn all_slots(&self) -> impl Iterator<Item = (u32, &Slot)> {
        (0..SLOTS as u32).filter_map(|index| Some((index, self.slot(index)?)))
    }

    /// The key a cached block of `class` at `offset` carries in its first
    /// word (the class too: a page retired and reused for another class can
    /// have a block at the same offset).
    #[inline(always)]
    fn key(&self, offset: u64, class: usize) -> u64 {
        self.secret ^ (offset ^ ((class as u64) << 56)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// The block at `offset` if it is a cached block of `class` (in use at
    /// page level, its key in place).
    #[inline(always)]
    fn cached_block(&self, offset: u64, class: usize) -> Option<SmallBlock> {
        let block = self.core.small_block_at(offset)?;
        (block.class == class
            && self.core.first_word(&block).load(Ordering::Relaxed) == self.key(offset, class))
        .then_some(block)
    }

    /// Whether some slot's magazine of `class` holds `offset`.
    fn in_some_magazine(&self, offset: u64, class: usize) -> bool {
        self.all_slots().any(|(_, slot)| {
            slot.magazines.get(class).is_some_and(|magazine| {
                let count = (magazine.count.load(Ordering::Acquire) as usize).min(MAGAZINE);
                magazine.items[..count]
                    .iter()
                    .any(|item| entry_offset(item.load(Ordering::Relaxed)) == offset)
            })
        })
    }

    /// Refuses an offset that names a cached (already freed) block.
    fn refuse_cached(&self, offset: u64) -> Result<()> {
        match self.core.small_block_at(offset) {
            Some(block)
                if self.core.first_word(&block).load(Ordering::Relaxed)
                    == self.key(offset, block.class)
                    && self.in_some_magazine(offset, block.class) =>
            {
                Err(Error::InvalidFree { offset })
            }
            _ => Ok(()),
        }
    }

    /// Gives a cached block back to its page; an entry that is no longer a
    /// cached block of `class` (a torn push, a copy another thread already
    /// handed out, corruption) is dropped.
    fn give_back(&self, offset: u64, class: usize) {
        self.core.forget_handoff(offset);
        if let Some(block) = self.cached_block(offset, class) {
            // The sentinel slack first, so that a releaser killed from here
            // on leaves a block the recovery pass frees; then the key: once
            // the bit is clear the block may be someone else's, and a stale
            // copy of this entry must not match.
            self.core.mark_unheld(&block);
            crash_point!("thread_local.give_back.unheld");
            self.core.first_word(&block).store(0, Ordering::Relaxed);
            let _ = self.core.release_small(block.page, class, block.index);
        }
    }

    /// Empties every magazine of a slot whose owner word we hold.
    /// Each entry leaves the magazine (the count drops) before its block
    /// goes back, so a releaser killed midway leaks at most one block and
    /// never leaves an entry for a block that may be someone else's.
    fn flush(&self, slot: &Slot) {
        // A dead owner's hand-off record may name a block of its cache:
        // forgotten before the block goes back to its page, where anyone
        // may get it (and a reaper must not free it then).
        let cached: Vec<u64> = slot
            .magazines
            .iter()
            .flat_map(|magazine| {
                let count = (magazine.count.load(Ordering::Acquire) as usize).min(MAGAZINE);
                magazine.items[..count]
                    .iter()
                    .map(|item| entry_offset(item.load(Ordering::Relaxed)))
            })
            .collect();
        if !cached.is_empty() {
            handoff::forget_dead_records(self.core.segment(), |block| cached.contains(&block));
        }
        for (class, magazine) in slot.magazines.iter().enumerate() {
            let mut count = (magazine.count.load(Ordering::Acquire) as usize).min(MAGAZINE);
            while count > 0 {
                count -= 1;
                let item = magazine.items[count].load(Ordering::Relaxed);
                magazine.count.store(count as u64, Ordering::Release);
                self.give_back(entry_offset(item), class);
            }
            magazine.count.store(0, Ordering::Release);
        }
    }

    /// Claims a free slot, or takes over one whose process died, starting
    /// the search at `hint`.
    fn claim_slot(&self, hint: u32, owner: u64) -> Option<u32> {
        for step in 0..SLOTS as u32 {
            let index = hint.wrapping_add(step) % SLOTS as u32;
            let slot = self.slot(index)?;
            match slot_owner::try_claim(&slot.owner, owner, is_dead) {
                Some(Claimed::FromDead) => {
                    // A dead owner may have left blocks. Its share of the
                    // accounting stays: those allocations and frees happened.
                    self.flush(slot);
                    return Some(index);
                }
                Some(Claimed::Fresh) => return Some(index),
                None => {}
            }
        }
        None
    }

    /// Gives a slot's cached blocks back to the pages and frees the slot,
    /// if `expected` still holds it.
    fn release_slot_from(&self, slot: &Slot, expected: u64) -> bool {
        if !slot_owner::begin_release(&slot.owner, expected, current_pid()) {
            return false; // taken over meanwhile
        }
        self.flush(slot);
        slot_owner::finish_release(&slot.owner);
        true
    }

    fn release_slot(&self, index: u32, owner: u64) {
        if let Some(slot) = self.slot(index) {
            self.release_slot_from(slot, owner);
        }
    }

    fn cache_state(&self) -> &CacheState {
        // SAFETY: checked at construction; atomics in the segment, which
        // lives as long as `self`.
        unsafe { &*self.cache_state.as_ptr() }
    }

    /// Raises the sampled peak to `bytes` if it is higher.
    fn raise_peak(&self, bytes: u64) {
        let peak = &self.cache_state().peak;
        if bytes > peak.load(Ordering::Relaxed) {
            peak.fetch_max(bytes, Ordering::Relaxed);
        }
    }

    /// (requested bytes, live blocks): the shared counters plus every slot's
    /// share.
    fn totals(&self) -> (u64, u64) {
        let (bytes, live, _) = self.core.counters().snapshot(self.core.segment());
        self.all_slots()
            .fold((bytes, live), |(bytes, live), (_, slot)| {
                (
                    bytes.wrapping_add(slot.bytes.load(Ordering::Relaxed)),
                    live.wrapping_add(slot.live.load(Ordering::Relaxed)),
                )
            })
    }

    /// Counts an allocation in the calling thread's slot (plain stores), or
    /// in the shared counters for a thread without one.
    #[inline(always)]
    fn count_allocation(&self, slot: Option<&Slot>, requested: u64) {
        match slot {
            Some(slot) => {
                single_writer_add(&slot.bytes, requested);
                single_writer_add(&slot.live, 1);
                if single_writer_add(&slot.allocations, 1) % PEAK_SAMPLE == 0 {
                    self.raise_peak(self.totals().0);
                }
            }
            None => {
                // Rare (more threads than slots): sample the peak every time.
                self.core
                    .counters()
                    .on_allocate(self.core.segment(), requested);
                self.raise_peak(self.totals().0);
            }
        }
    }

    /// Counts a free like [`count_allocation`](Self::count_allocation).
    #[inline(always)]
    fn count_free(&self, slot: Option<&Slot>, requested: u64) {
        match slot {
            Some(slot) => {
                single_writer_add(&slot.bytes, requested.wrapping_neg());
                single_writer_add(&slot.live, 1u64.wrapping_neg());
            }
            None => self.core.counters().on_free(self.core.segment(), requested),
        }
    }

    /// Hands out the newest valid block of the calling thread's magazine of
    /// `class`. An entry whose block no longer carries its key (a copy
    /// another thread handed out, a torn push, corruption) is dropped.
    #[inline(always)]
    fn pop_cached(&self, slot: &Slot, class: usize, requested: u64) -> Option<u64> {
        let magazine = slot.magazines.get(class)?;
        let mut count = (magazine.count.load(Ordering::Relaxed) as usize).min(MAGAZINE);
        while count > 0 {
            count -= 1;
            let item = magazine.items[count].load(Ordering::Relaxed);
            magazine.count.store(count as u64, Ordering::Relaxed);
            let offset = entry_offset(item);
            let Some(word) = self.core.heap_word(offset) else {
                continue;
            };
            if word.load(Ordering::Relaxed) != self.key(offset, class) {
                continue;
            }
            if entry_requested(item) != requested {
                // A new size to record in the page's metadata.
                let Some(block) = self.cached_block(offset, class) else {
                    continue;
                };
                self.core.set_requested(&block, requested);
            }
            // Recorded while the key still marks the block as cached: a
            // thread killed on either side of the record leaves a block the
            // recovery pass frees, or a record (see `alloc::handoff`).
            crash_point!("thread_local.alloc.cached");
            self.core.record_handoff(offset);
            crash_point!("thread_local.alloc.recorded");
            word.store(0, Ordering::Relaxed);
            return Some(offset);
        }
        None
    }

    /// Caches a block the caller just took from its user (false if its
    /// entry cannot be encoded); a full magazine first gives its newer half
    /// back to the pages.
    #[inline(always)]
    fn push_cached(&self, slot: &Slot, block: &SmallBlock, offset: u64, requested: u64) -> bool {
        let (Some(magazine), Some(item)) =
            (slot.magazines.get(block.class), entry(offset, requested))
        else {
            return false;
        };
        let mut count = (magazine.count.load(Ordering::Relaxed) as usize).min(MAGAZINE);
        if count == MAGAZINE {
            // Out of the magazine first, then back to the pages (see `flush`).
            let spilled: [u64; MAGAZINE / 2] =
                std::array::from_fn(|i| magazine.items[MAGAZINE / 2 + i].load(Ordering::Relaxed));
            count = MAGAZINE / 2;
            magazine.count.store(count as u64, Ordering::Release);
            for item in spilled {
                self.give_back(entry_offset(item), block.class);
            }
        }
        self.core
            .first_word(block)
            .store(self.key(offset, block.class), Ordering::Relaxed);
        magazine.items[count].store(item, Ordering::Relaxed);
        magazine.count.store(count as u64 + 1, Ordering::Release);
        true
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let claimed = std::mem::take(&mut *self.claimed.lock().unwrap_or_else(|e| e.into_inner()));
        let pid = current_pid();
        // A forked child inherits its parent's list; those slots stay the
        // parent's.
        for (slot, owner) in claimed {
            if slot_owner::pid_of(owner) == pid {
                self.release_slot(slot, owner);
            }
        }
    }
}

impl ThreadLocalAllocator {
    /// Number of thread slots in a segment.
    pub const THREAD_SLOTS: usize = SLOTS;

    /// The segment this allocator manages.
    #[inline]
    pub fn segment(&self) -> &Segment {
        self.inner.core.segment()
    }

    /// (slots claimed by live or dead threads, blocks held in caches).
    pub fn cache_usage(&self) -> (usize, u64) {
        let mut slots = 0;
        let mut blocks = 0;
        for (_, slot) in self.inner.all_slots() {
            if slot.owner.load(Ordering::Acquire) != slot_owner::FREE {
                slots += 1;
            }
            for magazine in &slot.magazines {
                blocks += magazine.count.load(Ordering::Acquire).min(MAGAZINE as u64);
            }
        }
        (slots, blocks)
    }

    /// Takes over every slot whose owner process has died, giving its cached
    /// blocks back; returns how many. (Claimers do this as they meet such
    /// slots; this is the explicit recovery pass.)
    pub fn reclaim_dead_slots(&self) -> usize {
        self.inner
            .all_slots()
            .filter(|(_, slot)| {
                let current = slot.owner.load(Ordering::Acquire);
                current != slot_owner::FREE
                    && is_dead(slot_owner::pid_of(current))
                    && self.inner.release_slot_from(slot, current)
            })
            .count()
    }

    /// The calling thread's slot in this view, claimed on first use; `None`
    /// past the bound on slots or during thread exit.
    #[inline(always)]
    fn my_slot(&self, ctx: &MemContext) -> Option<&Slot> {
        let inner = &*self.inner;
        let mut last = LAST.with(Cell::get);
        let pid = current_pid();
        if last.view != inner.view || last.pid != pid {
            let (slot, owner) = self.slot_for(ctx)?;
            last = LastSlot {
                view: inner.view,
                slot,
                owner,
                pid,
            };
            LAST.with(|cell| cell.set(last));
        }
        let slot = inner.slot(last.slot)?;
        // Ours unless something took it (which a live owner never allows):
        // then run uncached rather than share it.
        (slot.owner.load(Ordering::Relaxed) == last.owner).then_some(slot)
    }

    /// The slow lookup behind [`my_slot`](Self::my_slot): (slot or
    /// `NO_SLOT`, owner word) from the thread's list, claiming a slot the
    /// first time.
    fn slot_for(&self, ctx: &MemContext) -> Option<(u32, u64)> {
        let inner = &self.inner;
        HELD.try_with(|held| {
            let mut held = held.try_borrow_mut().ok()?;
            // After a fork, the slots listed are the parent's: forget them.
            let pid = current_pid();
            held.0.retain(|h| slot_owner::pid_of(h.owner) == pid);
            if let Some(found) = held.0.iter().find(|h| h.view == inner.view) {
                return Some((found.slot, found.owner));
            }
            let hint = ctx.thread.unwrap_or_else(current_thread_index);
            let owner = new_owner();
            let slot = inner.claim_slot(hint, owner).unwrap_or(NO_SLOT);
            held.0.retain(|h| h.inner.strong_count() > 0);
            held.0.push(HeldSlot {
                view: inner.view,
                inner: Arc::downgrade(inner),
                slot,
                owner,
            });
            if slot != NO_SLOT {
                inner
                    .claimed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((slot, owner));
            }
            Some((slot, owner))
        })
        .ok()
        .flatten()
    }
}

impl ShmAllocator for ThreadLocalAllocator {
    fn backing_segment(&self) -> Option<&Segment> {
        Some(self.segment())
    }

    fn kind(&self) -> AllocatorKind {
        AllocatorKind::ThreadLocal
    }

    #[inline(always)]
    fn allocate_offset(&self, ctx: &MemContext, size: usize, align: usize) -> Result<u64> {
        let inner = &*self.inner;
        let align = power_of_two_align(align, self.segment().max_align())?;
        let requested = size as u64;
        let slot = self.my_slot(ctx);
        let cached = match (slot, class_for(requested.max(1), align as u64)) {
            (Some(slot), Some(class)) if class < CACHED_CLASSES => {
                inner.pop_cached(slot, class, requested)
            }
            _ => None,
        };
        let offset = match cached {
            Some(offset) => offset,
            None => inner.core.alloc_block(size, align)?,
        };
        inner.count_allocation(slot, requested);
        Ok(offset)
    }

    /// As the trait's, but a record of a block that still carries its cache
    /// key (its allocation was cut short before the key was cleared) stays
    /// for the recovery pass, which frees that block.
    fn take_dead_handoffs(&self) -> Vec<u64> {
        let inner = &*self.inner;
        handoff::take_dead(self.segment(), |offset| {
            self.usable_size(offset).is_ok()
                && inner
                    .core
                    .small_block_at(offset)
                    .is_none_or(|block| inner.cached_block(offset, block.class).is_none())
        })
    }

    #[inline(always)]
    unsafe fn free_offset(&self, ctx: &MemContext, offset: u64) -> Result<()> {
        let inner = &*self.inner;
        // A block freed into this thread's cache keeps its hand-off record:
        // cached blocks carry the cache key, which `take_dead_handoffs`
        // refuses, and the record is forgotten before the block leaves the
        // cache for its page (`give_back`, `flush`).
        let slot = self.my_slot(ctx);
        if let Some(block) = inner.core.small_block_at(offset) {
            let Some(requested) = inner.core.requested_of(&block) else {
                return Err(Error::InvalidFree { offset });
            };
            if inner.core.first_word(&block).load(Ordering::Relaxed)
                == inner.key(offset, block.class)
                && inner.in_some_magazine(offset, block.class)
            {
                return Err(Error::InvalidFree { offset });
            }
            if let Some(slot) = slot.filter(|_| block.class < CACHED_CLASSES) {
                // Before the key goes in: a cached block is free to the user.
                inner
                    .core
                    .segment()
                    .scrub(offset, class_block_size(block.class));
                if inner.push_cached(slot, &block, offset, requested) {
                    inner.count_free(Some(slot), requested);
                    return Ok(());
                }
            }
        }
        inner.core.forget_handoff(offset);
        let requested = match inner.core.take_for_free(offset)? {
            Freed::Small {
                page,
                class,
                index,
                requested,
            } => {
                inner.core.release_small(page, class, index)?;
                requested
            }
            Freed::Large { requested } => requested,
        };
        inner.count_free(slot, requested);
        Ok(())
    }

    // A freed (cached) block is refused here too. Telling it apart reads the
    // block's first word, which its user may be writing: a relaxed load that
    // sees either value is enough, since a live block only matches its key
    // by accident and the magazine search then settles it.
    fn usable_size(&self, offset: u64) -> Result<usize> {
        self.inner.refuse_cached(offset)?;
        self.inner.core.usable_size(offset)
    }

    fn full_ptr(&self, offset: u64) -> Result<FullPtr<u8>> {
        self.inner.refuse_cached(offset)?;
        self.inner.core.full_ptr(offset)
    }

    fn offset_of_local(&self, ptr: NonNull<u8>) -> Result<u64> {
        self.inner.core.offset_of_local(ptr)
    }

    unsafe fn resize_in_place(
        &self,
        ctx: &MemContext,
        offset: u64,
        new_size: usize,
    ) -> Result<bool> {
        self.inner.refuse_cached(offset)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.core.resize_in_place(ctx, offset, new_size) }
    }

    fn stats(&self) -> AllocStats {
        let inner = &*self.inner;
        let mut stats = inner.core.stats();
        let (bytes, live) = inner.totals();
        stats.allocated_bytes = bytes;
        stats.live_allocations = live;
        inner.raise_peak(bytes);
        stats.peak_bytes = inner.cache_state().peak.load(Ordering::Relaxed).max(bytes);
        for (_, slot) in inner.all_slots() {
            for (class, magazine) in slot.magazines.iter().enumerate() {
                let count = magazine.count.load(Ordering::Acquire).min(MAGAZINE as u64);
                stats.free_bytes += count * class_block_size(class);
            }
        }
        stats
    }

    /// Empties the caches of dead processes, releases blocks that carry
    /// their cache key but sit in no magazine (a free or an allocation cut
    /// short between the block and the magazine), rebuilds the pages as the
    /// size-class allocator does, and recounts: the shares of free slots
    /// fold into the shared counters. Refuses with [`Error::InUse`] while
    /// another live process holds a slot. (A user block whose first word
    /// happens to equal its 64-bit key would be taken for a lost cached
    /// block: a chance of 2^-64 per block for data not made to collide.)
    unsafe fn recovery_pass(&self) -> Result<RecoveryReport> {
        let inner = &*self.inner;
        let before = self.stats();
        let caches_reclaimed = self.reclaim_dead_slots() as u64;
        let me = current_pid();
        let mut cached = HashSet::new();
        let (mut cached_bytes, mut owned_bytes, mut owned_live) = (0u64, 0u64, 0u64);
        for (index, slot) in inner.all_slots() {
            let owner = slot.owner.load(Ordering::Acquire);
            if owner == slot_owner::FREE {
                continue;
            }
            let pid = slot_owner::pid_of(owner);
            if pid != me {
                return Err(Error::InUse {
                    reason: format!("thread slot {index} belongs to live process {pid}"),
                });
            }
            owned_bytes = owned_bytes.wrapping_add(slot.bytes.load(Ordering::Relaxed));
            owned_live = owned_live.wrapping_add(slot.live.load(Ordering::Relaxed));
            for magazine in &slot.magazines {
                let count = (magazine.count.load(Ordering::Acquire) as usize).min(MAGAZINE);
                for item in &magazine.items[..count] {
                    let item = item.load(Ordering::Relaxed);
                    if cached.insert(entry_offset(item)) {
                        cached_bytes += entry_requested(item);
                    }
                }
            }
        }
        let core = &inner.core;
        let rebuilt = core.rebuild_from_pages(&|offset, block| {
            !cached.contains(&offset)
                && core.first_word(block).load(Ordering::Relaxed) == inner.key(offset, block.class)
        })?;
        // Slots this process holds keep their shares; free slots' shares
        // are history the recount replaces.
        for (_, slot) in inner.all_slots() {
            if slot.owner.load(Ordering::Acquire) == slot_owner::FREE {
                slot.bytes.store(0, Ordering::Relaxed);
                slot.live.store(0, Ordering::Relaxed);
            }
        }
        core.counters().reset_to(
            core.segment(),
            rebuilt
                .live_bytes
                .wrapping_sub(cached_bytes)
                .wrapping_sub(owned_bytes),
            rebuilt
                .live
                .wrapping_sub(cached.len() as u64)
                .wrapping_sub(owned_live),
        );
        Ok(RecoveryReport {
            caches_reclaimed,
            blocks_reclaimed: rebuilt.reclaimed(),
            ..RecoveryReport::rebuilt(before, self.stats())
        }
        .with_handoffs(self.segment()))
    }

    fn regions(&self, visit: &mut dyn FnMut(Region)) -> Result<()> {
        // Cached blocks count as in use: their pages still hold them.
        self.inner.core.page_regions(visit)
    }

    /// The size-class walk, every magazine and the counters; what processes
    /// killed mid-operation left (half-done blocks, caches of dead
    /// processes, counts one operation off) is [`Error::NeedsRecovery`].
    fn check(&self) -> Result<()> {
        let inner = &*self.inner;
        let core = &inner.core;
        let PagesChecked {
            live,
            bytes,
            mut traces,
        } = core.check_parts()?;
        let mut seen = HashSet::new();
        let mut cached_bytes = 0u64;
        for (index, slot) in inner.all_slots() {
            let owner = slot.owner.load(Ordering::Acquire);
            if owner != slot_owner::FREE && is_dead(slot_owner::pid_of(owner)) {
                traces.add_cache(format!(
                    "thread slot {index} belongs to dead process {}",
                    slot_owner::pid_of(owner)
                ));
            }
            for (class, magazine) in slot.magazines.iter().enumerate() {
                let count = magazine.count.load(Ordering::Acquire);
                if count > MAGAZINE as u64 || (owner == slot_owner::FREE && count != 0) {
                    return Err(Error::corrupt(format!(
                        "slot {index} (owner {owner:#x}) class {class}: {count} cached"
                    )));
                }
                for item in &magazine.items[..count as usize] {
                    let item = item.load(Ordering::Relaxed);
                    let offset = entry_offset(item);
                    let block = inner.cached_block(offset, class).ok_or_else(|| {
                        Error::corrupt(format!(
                            "slot {index} class {class} caches {offset}, not a cached block"
                        ))
                    })?;
                    if !seen.insert(offset) {
                        return Err(Error::corrupt(format!("block {offset} is cached twice")));
                    }
                    let requested = core.requested_of(&block).unwrap_or(0);
                    if requested != entry_requested(item) {
                        return Err(Error::corrupt(format!(
                            "block {offset} is cached as {} bytes, its page says {requested}",
                            entry_requested(item)
                        )));
                    }
                    cached_bytes += requested;
                }
            }
        }
        let (counted_bytes, counted_live) = inner.totals();
        let cached = seen.len() as u64;
        if counted_live.wrapping_add(cached) != live
            || counted_bytes.wrapping_add(cached_bytes) != bytes
        {
            // A block a dead thread left between its magazine and its page,
            // or a count one operation off.
            traces.add(
                0,
                format!(
                    "counters say {counted_live} blocks / {counted_bytes} bytes and caches hold \
                     {cached} / {cached_bytes}, but pages hold {live} / {bytes}"
                ),
            );
        }
        traces.into_result()
    }
}

impl_allocator_api2!(ThreadLocalAllocator);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SegmentOptions;

    fn heap() -> ThreadLocalAllocator {
        ThreadLocalAllocator::create(&SegmentOptions::private().size(4 << 20)).unwrap()
    }

    #[test]
    fn recovery_releases_a_block_a_cut_short_free_left_in_no_magazine() {
        let heap = heap();
        let kept = heap.allocate(100).unwrap();
        let torn = heap.allocate(64).unwrap();
        let offset = torn.offset().raw();
        // A free that died after keying the block, before its magazine
        // entry: in use at page level, in no magazine.
        let class = class_for(64, 8).unwrap();
        // SAFETY: a live 64-byte block of ours.
        unsafe { (torn.as_ptr() as *mut u64).write(heap.inner.key(offset, class)) };
        let cached = heap.allocate(48).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(cached) }.unwrap(); // a legitimately cached block stays cached

        // SAFETY: no other thread of this process uses the allocator meanwhile.
        let report = unsafe { heap.recover() }.unwrap();
        assert_eq!(report.blocks_reclaimed, 1, "{report}");
        assert_eq!(report.after.live_allocations, 1);
        assert_eq!(report.after.allocated_bytes, 100);
        heap.check().unwrap();
        assert!(heap.full_ptr(offset).is_err());
        assert_eq!(heap.allocate(48).unwrap().offset(), cached.offset());
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(kept) }.unwrap();
        heap.check().unwrap();
    }

    #[test]
    fn recovery_refuses_while_another_live_process_holds_a_slot() {
        let heap = heap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(heap.allocate(64).unwrap()) }.unwrap();
        // Our parent (the test runner) is alive; make it a slot's owner.
        // SAFETY: no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        let slot = heap.inner.slot(63).unwrap();
        slot.owner
            .store(slot_owner::owner_value(parent, 1), Ordering::Release);
        assert!(matches!(
            // SAFETY: no other thread of this process uses the allocator meanwhile.
            unsafe { heap.recover() },
            Err(Error::InUse { .. })
        ));
        slot.owner.store(slot_owner::FREE, Ordering::Release);
        // SAFETY: no other thread of this process uses the allocator meanwhile.
        unsafe { heap.recover() }.unwrap();
        heap.check().unwrap();
    }

    #[test]
    fn user_bytes_equal_to_the_cache_key_are_not_a_double_free() {
        let heap = heap();
        let block = heap.allocate(64).unwrap();
        let offset = block.offset().raw();
        // The user happens to store exactly the key: the free must search
        // the magazines, find nothing, and succeed.
        // SAFETY: a live 64-byte block of ours.
        unsafe {
            (block.as_ptr() as *mut u64).write(heap.inner.key(offset, class_for(64, 8).unwrap()))
        };
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(block) }.unwrap();
        assert!(matches!(
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free(block) },
            Err(Error::InvalidFree { .. })
        ));
        heap.check().unwrap();
    }

    /// A magazine holds no links, only a count and entries: damage to
    /// either is dropped entry by entry (the count is clamped, an entry is
    /// used only while its block carries its key), so allocation falls
    /// through to the pages and `check` reports what it saw.
    #[test]
    fn damaged_magazines_are_routed_around() {
        let heap = heap();
        let class = class_for(64, 8).unwrap();
        let cached = heap.allocate(64).unwrap();
        let kept = heap.allocate(64).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(cached) }.unwrap();
        let slot = heap.my_slot(&MemContext::default()).unwrap();
        let magazine = &slot.magazines[class];
        let item = magazine.items[0].load(Ordering::Relaxed);
        let own = heap
            .segment()
            .offset_of(magazine as *const Magazine)
            .unwrap()
            .raw();
        // A cycle: every entry names the one cached block, but one that
        // names the magazine itself; the count says it is full.
        for (index, entry) in magazine.items.iter().enumerate() {
            entry.store(if index == 3 { own } else { item }, Ordering::Relaxed);
        }
        magazine.count.store(MAGAZINE as u64, Ordering::Relaxed);
        assert!(matches!(heap.check(), Err(Error::CorruptHeader { .. })));
        assert_eq!(heap.allocate(64).unwrap().offset(), cached.offset());
        let fresh = heap.allocate(64).unwrap();
        assert!(fresh.offset() != cached.offset() && fresh.offset() != kept.offset());
        assert_eq!(magazine.count.load(Ordering::Relaxed), 0);

        // Wild entries and a count far past the magazine.
        for entry in &magazine.items {
            entry.store((1 << ENTRY_OFFSET_BITS) - 16, Ordering::Relaxed);
        }
        magazine.count.store(u64::MAX, Ordering::Relaxed);
        assert!(matches!(heap.check(), Err(Error::CorruptHeader { .. })));
        let other = heap.allocate(64).unwrap();
        for live in [cached, kept, fresh] {
            assert_ne!(other.offset(), live.offset());
        }
        // The allocation dropped every wild entry on its way to the pages.
        assert_eq!(magazine.count.load(Ordering::Relaxed), 0);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(other) }.unwrap();
        heap.check().unwrap();
    }

    #[test]
    fn a_copy_of_an_entry_is_dropped_once_the_block_was_handed_out() {
        let heap = heap();
        let first = heap.allocate(64).unwrap();
        let second = heap.allocate(64).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(first) }.unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(second) }.unwrap();
        // Forge what two racing frees of `second` leave: a second copy of
        // its entry, below the first.
        let slot = heap.my_slot(&MemContext::default()).unwrap();
        let class = class_for(64, 8).unwrap();
        let magazine = &slot.magazines[class];
        assert_eq!(magazine.count.load(Ordering::Relaxed), 2);
        let copy = magazine.items[1].load(Ordering::Relaxed);
        magazine.items[0].store(copy, Ordering::Relaxed);
        // The first pop hands `second` out and clears its key; the copy is
        // then refused and the magazine runs dry instead of repeating it.
        let again = heap.allocate(64).unwrap();
        assert_eq!(again.offset(), second.offset());
        let other = heap.allocate(64).unwrap();
        assert_ne!(other.offset(), second.offset());
        assert_eq!(magazine.count.load(Ordering::Relaxed), 0);
    }
}
