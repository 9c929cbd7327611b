//! The thread-local caching allocator: per-thread magazines of freed blocks,
//! kept in the segment, over the size-class allocator's pages and classes.
//!
//! The segment's state area holds the size-class state followed by a
//! bounded array of thread slots. A slot has an owner word (`pid << 32 |
//! token`, claimed by compare-and-swap), the owner's share of the
//! accounting, and for each cached class a small magazine (a count and a
//! few block offsets).
//!
//! * **Free** marks the block as no longer the user's (its slack becomes
//!   the sentinel, by compare-and-swap, so a double free fails exactly),
//!   then pushes it into the freeing thread's magazine (whatever thread or
//!   process allocated it); a full magazine, a class too large to cache or a
//!   thread without a slot sends it straight back to the pages.
//! * **Allocate** pops the magazine of its class and hands the block out
//!   again (sentinel slack -> the new slack, by compare-and-swap); an empty
//!   magazine falls through to the size-class allocator.
//! * A slot's magazines and counters are written only by the thread whose
//!   owner word it holds, with plain stores (no locked instruction on the
//!   fast path). Nobody else touches a slot whose owner is alive: releasing
//!   (by the owner at thread exit, or by the view's drop once no thread can
//!   use the view) and taking over a dead owner's slot first move the owner
//!   word by compare-and-swap to a *releasing* value carrying the
//!   releaser's pid, so two releasers never flush at once and a releaser
//!   that dies midway leaves a slot the next claimer takes over.
//! * **Accounting**: a thread with a slot counts its allocations and frees
//!   in the slot (any thread may free any block, so a slot's share may be
//!   negative); threads without one use the shared counters. `stats()` sums
//!   them. The peak is sampled: every 64th allocation of a slot, and every
//!   `stats()`, raise it to the current total.
//! * **Thread exit**: a thread-local destructor flushes the thread's slots
//!   back to the pages and frees them. **Allocator drop**: the view releases
//!   every slot it claimed. **Process death**: a claimer that meets a slot
//!   whose owner pid is dead takes it over and flushes it first (and
//!   [`ThreadLocalAllocator::reclaim_dead_slots`] does so for all of them).
//! * **More threads than slots**: the extra threads use the uncached
//!   size-class allocator directly (correct, just slower); no error.
//!
//! A process killed in the middle of a magazine push or pop can lose that
//! one block (it stays marked and is counted by no magazine, which
//! `check` reports); nothing is ever handed out twice.

use std::cell::RefCell;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use super::segment_allocator::SegmentAllocator;
use super::shm_allocator::{current_thread_index, impl_allocator_api2, power_of_two_align};
use super::size_class::{class_block_size, class_for, Freed, SizeClassAllocator};
use super::{AllocStats, AllocatorKind, MemContext, ShmAllocator};
use crate::error::{Error, Result};
use crate::ptr::{FullPtr, Offset};
use crate::segment::header::PARAM_WORDS;
use crate::segment::{process_alive, Segment};

/// Thread slots in a segment.
const SLOTS: usize = 64;
/// Classes with a magazine: every class up to 4 KiB.
const CACHED_CLASSES: usize = 28;
/// Blocks a magazine holds.
const MAGAZINE: usize = 8;
/// Marks a thread that found no free slot.
const NO_SLOT: u32 = u32::MAX;

#[repr(C)]
struct Magazine {
    count: AtomicU64,
    items: [AtomicU64; MAGAZINE],
}

#[repr(C)]
struct Slot {
    /// `pid << 32 | token`, 0 when free, `pid << 32` while being released.
    owner: AtomicU64,
    /// This slot's share of the requested bytes and live blocks (wrapping:
    /// frees of blocks allocated elsewhere make it negative).
    bytes: AtomicU64,
    live: AtomicU64,
    /// Allocations through this slot, to sample the peak.
    allocations: AtomicU64,
    magazines: [Magazine; CACHED_CLASSES],
}

/// Allocations between two samples of the peak.
const PEAK_SAMPLE: u64 = 64;

impl Slot {
    /// Adds to a word only the owner writes: plain load and store.
    #[inline]
    fn owner_add(word: &AtomicU64, delta: u64) -> u64 {
        let now = word.load(Ordering::Relaxed).wrapping_add(delta);
        word.store(now, Ordering::Relaxed);
        now
    }
}

/// Where the slots start in the state area (after the size-class state).
/// Where the thread-local allocator's peak word sits in the state area
/// (after the size-class state), and where the slots start (after it).
fn peak_offset_in_state() -> u64 {
    SizeClassAllocator::CORE_STATE_LEN.div_ceil(128) * 128
}

fn slots_offset_in_state() -> u64 {
    peak_offset_in_state() + 128
}

/// Per-thread caches in the segment over the size-class allocator (Hermes
/// SHM's ThreadLocalAllocator).
///
/// Each thread that allocates or frees claims one of 64 slots in the
/// segment and keeps up to 8 freed blocks of each class up to 4 KiB in it,
/// so a thread that frees and allocates again rarely touches shared pages.
/// A block may be freed by any thread of any process: it goes to the
/// freeing thread's cache, or back to the pages. Slots are given back when
/// their thread exits, when the allocator is dropped, and (by the next
/// claimer) when their process has died. Threads beyond the 64th use the
/// size-class allocator without a cache.
///
/// ```
/// use shmkit::{SegmentAllocator, SegmentOptions, ShmAllocator, ThreadLocalAllocator};
///
/// let heap = ThreadLocalAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let a = heap.allocate(48)?;
/// heap.free(a)?;                          // kept in this thread's cache
/// let b = heap.allocate(48)?;             // and handed out again
/// assert_eq!(a.offset(), b.offset());
/// assert!(heap.free(a).is_ok() && heap.free(b).is_err()); // same block
/// heap.check()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct ThreadLocalAllocator {
    inner: Arc<Inner>,
}

struct Inner {
    core: SizeClassAllocator,
    slots: NonNull<Slot>,
    peak: NonNull<AtomicU64>,
    /// Tells this view apart from other views in the same process.
    view: u64,
    /// Slots this view claimed: (slot, owner word).
    claimed: Mutex<Vec<(u32, u64)>>,
}

// SAFETY: the slots are reached through atomics only; the core view is
// `Send + Sync`; `claimed` is a mutex.
unsafe impl Send for Inner {}
// SAFETY: as above.
unsafe impl Sync for Inner {}

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
        words[3] = (CACHED_CLASSES * 1000 + MAGAZINE) as u64;
        words
    }

    fn state_len(_: &()) -> u64 {
        slots_offset_in_state() + (SLOTS * std::mem::size_of::<Slot>()) as u64
    }

    fn initialize(segment: &Segment, _: &()) -> Result<()> {
        SizeClassAllocator::initialize(segment, &())?;
        // SAFETY: runs in the creator before *ready*; `peak_of` checked bounds
        // and alignment.
        unsafe { peak_of(segment)?.as_ptr().write(AtomicU64::new(0)) };
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
        let peak = peak_of(&segment)?;
        let core = SizeClassAllocator::open(segment)?;
        static VIEWS: AtomicU64 = AtomicU64::new(1);
        Ok(ThreadLocalAllocator {
            inner: Arc::new(Inner {
                core,
                slots,
                peak,
                view: VIEWS.fetch_add(1, Ordering::Relaxed),
                claimed: Mutex::new(Vec::new()),
            }),
        })
    }
}

/// The slot array, checked to lie inside the state area.
fn slots_of(segment: &Segment) -> Result<NonNull<Slot>> {
    let state = segment.allocator_state::<[u8; 1]>()?;
    let state_offset = segment.offset_of(state.as_ptr() as *const u8)?.raw();
    let needed = ThreadLocalAllocator::state_len(&());
    let first = state_offset + slots_offset_in_state();
    if segment.data_offset() < state_offset + needed {
        return Err(Error::corrupt("thread-local state area too small"));
    }
    segment.resolve_array(Offset::<Slot>::from_raw(first), SLOTS as u64)
}

/// The sampled peak of requested bytes (slots keep the live totals, so the
/// shared counters' own peak does not apply).
fn peak_of(segment: &Segment) -> Result<NonNull<AtomicU64>> {
    let state = segment.allocator_state::<[u8; 1]>()?;
    let state_offset = segment.offset_of(state.as_ptr() as *const u8)?.raw();
    segment.resolve(Offset::<AtomicU64>::from_raw(
        state_offset + peak_offset_in_state(),
    ))
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
        for held in self.0.drain(..) {
            if held.slot == NO_SLOT {
                continue;
            }
            if let Some(inner) = held.inner.upgrade() {
                inner.release_slot(held.slot, held.owner);
                let mut claimed = inner.claimed.lock().unwrap_or_else(|e| e.into_inner());
                claimed.retain(|&c| c != (held.slot, held.owner));
            }
        }
    }
}

thread_local! {
    static HELD: RefCell<Held> = const { RefCell::new(Held(Vec::new())) };
}

/// The owner word of a slot this process is releasing (token 0, which no
/// owner uses).
fn releasing_word() -> u64 {
    u64::from(std::process::id()) << 32
}

fn new_owner() -> u64 {
    static TOKENS: AtomicU32 = AtomicU32::new(1);
    let token = loop {
        let token = TOKENS.fetch_add(1, Ordering::Relaxed);
        if token != 0 {
            break token;
        }
    };
    (u64::from(std::process::id()) << 32) | u64::from(token)
}

impl Inner {
    fn slot(&self, index: u32) -> Option<&Slot> {
        if (index as usize) < SLOTS {
            // SAFETY: SLOTS slots were checked at construction; atomics only.
            Some(unsafe { &*self.slots.as_ptr().add(index as usize) })
        } else {
            None
        }
    }

    /// Claims a free slot, or takes over one whose process died, starting
    /// the search at `hint`.
    fn claim_slot(&self, hint: u32, owner: u64) -> Option<u32> {
        let pid = (owner >> 32) as u32;
        for step in 0..SLOTS as u32 {
            let index = (hint.wrapping_add(step)) % SLOTS as u32;
            let slot = self.slot(index)?;
            let current = slot.owner.load(Ordering::Acquire);
            let dead = current != 0 && {
                let other = (current >> 32) as u32;
                other != pid && !process_alive(other)
            };
            if (current == 0 || dead)
                && slot
                    .owner
                    .compare_exchange(current, owner, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                // Ours now; a dead owner may have left blocks. Its share of
                // the accounting stays: those allocations and frees happened.
                self.flush(slot);
                return Some(index);
            }
        }
        None
    }

    /// Gives a slot's cached blocks back to the pages and frees the slot.
    fn release_slot(&self, index: u32, owner: u64) {
        let Some(slot) = self.slot(index) else { return };
        let releasing = releasing_word();
        if slot
            .owner
            .compare_exchange(owner, releasing, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return; // taken over meanwhile
        }
        self.flush(slot);
        slot.owner.store(0, Ordering::Release);
    }

    /// Raises the sampled peak to `bytes` if it is higher.
    fn raise_peak(&self, bytes: u64) {
        // SAFETY: checked at construction; an atomic in the segment, which
        // lives as long as `self`.
        let peak = unsafe { self.peak.as_ref() };
        if bytes > peak.load(Ordering::Relaxed) {
            peak.fetch_max(bytes, Ordering::Relaxed);
        }
    }

    fn sampled_peak(&self) -> u64 {
        // SAFETY: as in `raise_peak`.
        unsafe { self.peak.as_ref() }.load(Ordering::Relaxed)
    }

    /// (requested bytes, live blocks): the shared counters plus every slot's
    /// share.
    fn totals(&self) -> (u64, u64) {
        let (mut bytes, mut live, _) = self.core.counters().snapshot();
        for index in 0..SLOTS as u32 {
            if let Some(slot) = self.slot(index) {
                bytes = bytes.wrapping_add(slot.bytes.load(Ordering::Relaxed));
                live = live.wrapping_add(slot.live.load(Ordering::Relaxed));
            }
        }
        (bytes, live)
    }

    /// Empties every magazine of a slot whose owner word we hold. Entries that are not
    /// cached blocks of their class (corruption, a torn push) are dropped.
    fn flush(&self, slot: &Slot) {
        for (class, magazine) in slot.magazines.iter().enumerate() {
            let count = (magazine.count.load(Ordering::Acquire) as usize).min(MAGAZINE);
            for item in &magazine.items[..count] {
                let offset = item.load(Ordering::Relaxed);
                if let Some((page, index)) = self.core.cached_block(offset, class) {
                    let _ = self.core.release_small(page, class, index);
                }
            }
            magazine.count.store(0, Ordering::Release);
        }
    }

    /// Runs `work` on a slot's magazine of `class` if we own the slot.
    fn with_magazine<R>(
        &self,
        index: u32,
        owner: u64,
        class: usize,
        work: impl FnOnce(&Magazine) -> R,
    ) -> Option<R> {
        let slot = self.slot(index)?;
        let magazine = slot.magazines.get(class)?;
        // Only the owner thread runs this, and nobody releases or takes over
        // a slot whose owner is alive: no lock is needed.
        (slot.owner.load(Ordering::Relaxed) == owner).then(|| work(magazine))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let claimed = std::mem::take(&mut *self.claimed.lock().unwrap_or_else(|e| e.into_inner()));
        for (slot, owner) in claimed {
            self.release_slot(slot, owner);
        }
    }
}

impl ThreadLocalAllocator {
    /// Number of thread slots in a segment.
    pub const THREAD_SLOTS: usize = SLOTS;

    /// The segment this allocator manages.
    pub fn segment(&self) -> &Segment {
        self.inner.core.segment()
    }

    /// (slots claimed by live or dead threads, blocks held in caches).
    pub fn cache_usage(&self) -> (usize, u64) {
        let mut slots = 0;
        let mut blocks = 0;
        for index in 0..SLOTS as u32 {
            let Some(slot) = self.inner.slot(index) else {
                break;
            };
            if slot.owner.load(Ordering::Acquire) != 0 {
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
        let mut reclaimed = 0;
        for index in 0..SLOTS as u32 {
            let Some(slot) = self.inner.slot(index) else {
                break;
            };
            let current = slot.owner.load(Ordering::Acquire);
            let pid = (current >> 32) as u32;
            if current == 0 || pid == std::process::id() || process_alive(pid) {
                continue;
            }
            // Take it over as a releaser, flush, and free it.
            if slot
                .owner
                .compare_exchange(
                    current,
                    releasing_word(),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
            {
                self.inner.flush(slot);
                slot.owner.store(0, Ordering::Release);
                reclaimed += 1;
            }
        }
        reclaimed
    }

    /// The calling thread's slot in this view: (slot, owner word), claimed
    /// on first use; `None` past the bound on slots or during thread exit.
    fn slot_for(&self, ctx: &MemContext) -> Option<(u32, u64)> {
        let inner = &self.inner;
        HELD.try_with(|held| {
            let mut held = held.try_borrow_mut().ok()?;
            if let Some(found) = held.0.iter().find(|h| h.view == inner.view) {
                return (found.slot != NO_SLOT).then_some((found.slot, found.owner));
            }
            let hint = ctx.thread.unwrap_or_else(current_thread_index);
            let owner = new_owner();
            let slot = inner.claim_slot(hint, owner);
            held.0.retain(|h| h.inner.strong_count() > 0);
            held.0.push(HeldSlot {
                view: inner.view,
                inner: Arc::downgrade(inner),
                slot: slot.unwrap_or(NO_SLOT),
                owner,
            });
            let slot = slot?;
            inner
                .claimed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((slot, owner));
            Some((slot, owner))
        })
        .ok()
        .flatten()
    }

    /// Counts an allocation in the calling thread's slot (plain stores), or
    /// in the shared counters for a thread without one.
    #[inline]
    fn count_allocation(&self, ctx: &MemContext, requested: u64) {
        match self
            .slot_for(ctx)
            .and_then(|(index, _)| self.inner.slot(index))
        {
            Some(slot) => {
                Slot::owner_add(&slot.bytes, requested);
                Slot::owner_add(&slot.live, 1);
                if Slot::owner_add(&slot.allocations, 1) % PEAK_SAMPLE == 0 {
                    let (bytes, _) = self.inner.totals();
                    self.inner.raise_peak(bytes);
                }
            }
            None => {
                // Rare (more threads than slots): sample the peak every time.
                self.inner.core.counters().on_allocate(requested);
                let (bytes, _) = self.inner.totals();
                self.inner.raise_peak(bytes);
            }
        }
    }

    /// Counts a free like [`count_allocation`](Self::count_allocation).
    #[inline]
    fn count_free(&self, ctx: &MemContext, requested: u64) {
        match self
            .slot_for(ctx)
            .and_then(|(index, _)| self.inner.slot(index))
        {
            Some(slot) => {
                Slot::owner_add(&slot.bytes, requested.wrapping_neg());
                Slot::owner_add(&slot.live, 1u64.wrapping_neg());
            }
            None => self.inner.core.counters().on_free(requested),
        }
    }

    fn cached_allocate(&self, ctx: &MemContext, class: usize, requested: u64) -> Option<u64> {
        let (slot, owner) = self.slot_for(ctx)?;
        let core = &self.inner.core;
        self.inner
            .with_magazine(slot, owner, class, |magazine| {
                let mut count = (magazine.count.load(Ordering::Relaxed) as usize).min(MAGAZINE);
                while count > 0 {
                    count -= 1;
                    let offset = magazine.items[count].load(Ordering::Relaxed);
                    magazine.count.store(count as u64, Ordering::Relaxed);
                    if core.reuse_cached(offset, class, requested) {
                        return Some(offset);
                    }
                }
                None
            })
            .flatten()
    }

    fn cache_push(&self, ctx: &MemContext, class: usize, offset: u64) -> bool {
        let Some((slot, owner)) = self.slot_for(ctx) else {
            return false;
        };
        self.inner
            .with_magazine(slot, owner, class, |magazine| {
                let count = magazine.count.load(Ordering::Relaxed) as usize;
                if count >= MAGAZINE {
                    return false;
                }
                magazine.items[count].store(offset, Ordering::Relaxed);
                magazine.count.store(count as u64 + 1, Ordering::Release);
                true
            })
            .unwrap_or(false)
    }
}

impl ShmAllocator for ThreadLocalAllocator {
    fn kind(&self) -> AllocatorKind {
        AllocatorKind::ThreadLocal
    }

    fn allocate_offset(&self, ctx: &MemContext, size: usize, align: usize) -> Result<u64> {
        let core = &self.inner.core;
        let align = power_of_two_align(align, self.segment().max_align())?;
        let requested = size as u64;
        let cached = class_for(requested.max(1), align as u64)
            .filter(|&class| class < CACHED_CLASSES)
            .and_then(|class| self.cached_allocate(ctx, class, requested));
        let offset = match cached {
            Some(offset) => offset,
            None => core.alloc_block(size, align)?,
        };
        self.count_allocation(ctx, requested);
        Ok(offset)
    }

    fn free_offset(&self, ctx: &MemContext, offset: u64) -> Result<()> {
        let core = &self.inner.core;
        let requested = match core.take_for_free(offset)? {
            Freed::Small {
                page,
                class,
                index,
                requested,
            } => {
                if class >= CACHED_CLASSES || !self.cache_push(ctx, class, offset) {
                    core.release_small(page, class, index)?;
                }
                requested
            }
            Freed::Large { requested } => requested,
        };
        self.count_free(ctx, requested);
        Ok(())
    }

    fn usable_size(&self, offset: u64) -> Result<usize> {
        self.inner.core.usable_size(offset)
    }

    fn full_ptr(&self, offset: u64) -> Result<FullPtr<u8>> {
        self.inner.core.full_ptr(offset)
    }

    fn offset_of_local(&self, ptr: NonNull<u8>) -> Result<u64> {
        self.inner.core.offset_of_local(ptr)
    }

    fn resize_in_place(&self, ctx: &MemContext, offset: u64, new_size: usize) -> Result<bool> {
        self.inner.core.resize_in_place(ctx, offset, new_size)
    }

    fn stats(&self) -> AllocStats {
        let mut stats = self.inner.core.stats();
        let (bytes, live) = self.inner.totals();
        stats.allocated_bytes = bytes;
        stats.live_allocations = live;
        self.inner.raise_peak(bytes);
        stats.peak_bytes = self.inner.sampled_peak().max(bytes);
        for index in 0..SLOTS as u32 {
            let Some(slot) = self.inner.slot(index) else {
                break;
            };
            for (class, magazine) in slot.magazines.iter().enumerate() {
                let count = magazine.count.load(Ordering::Acquire).min(MAGAZINE as u64);
                stats.free_bytes += count * class_block_size(class);
            }
        }
        stats
    }

    fn check(&self) -> Result<()> {
        let core = &self.inner.core;
        let (live, bytes, cached) = core.check_parts()?;
        let mut in_magazines = 0u64;
        for index in 0..SLOTS as u32 {
            let Some(slot) = self.inner.slot(index) else {
                break;
            };
            let owner = slot.owner.load(Ordering::Acquire);
            for (class, magazine) in slot.magazines.iter().enumerate() {
                let count = magazine.count.load(Ordering::Acquire);
                if count > MAGAZINE as u64 || (owner == 0 && count != 0) {
                    return Err(Error::corrupt(format!(
                        "slot {index} (owner {owner:#x}) class {class}: {count} cached"
                    )));
                }
                for item in &magazine.items[..count as usize] {
                    let offset = item.load(Ordering::Relaxed);
                    if core.cached_block(offset, class).is_none() {
                        return Err(Error::corrupt(format!(
                            "slot {index} class {class} caches {offset}, not a cached block"
                        )));
                    }
                }
                in_magazines += count;
            }
        }
        if in_magazines != cached {
            return Err(Error::corrupt(format!(
                "{cached} blocks marked cached, {in_magazines} in magazines"
            )));
        }
        let (counted_bytes, counted_live) = self.inner.totals();
        if counted_live != live || counted_bytes != bytes {
            return Err(Error::corrupt(format!(
                "counters say {counted_live} blocks / {counted_bytes} bytes, pages hold \
                 {live} / {bytes}"
            )));
        }
        Ok(())
    }
}

impl_allocator_api2!(ThreadLocalAllocator);
