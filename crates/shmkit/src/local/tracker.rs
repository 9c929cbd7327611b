//! Memory tracking: current and peak bytes, counts, leak reports with
//! backtraces, and scopes that measure what a block of code allocated.
//!
//! Two wrappers share one engine, [`Tracker`]:
//!
//! * [`Tracked<A>`] wraps any shmkit allocator ([`ShmAllocator`]) and is one
//!   itself, so it drops in wherever the allocator was used;
//! * [`TrackingAlloc<A>`] wraps a [`GlobalAlloc`] (the system allocator by
//!   default) to track a whole program:
//!
//! ```no_run
//! use shmkit::local::tracker::TrackingAlloc;
//!
//! #[global_allocator]
//! static ALLOC: TrackingAlloc = TrackingAlloc::system();
//!
//! fn main() {
//!     let (_, report) = ALLOC.tracker().measure(|| vec![0u8; 1000]);
//!     assert!(report.allocated_bytes >= 1000);
//!     println!("peak so far: {} bytes", ALLOC.tracker().stats().peak_bytes);
//! }
//! ```
//!
//! Counting is always on and costs a few plain loads and stores per
//! allocation and per free (each thread counts in a slot of its own; see
//! [`Tracker`]). Leak records (every live block with its size,
//! and a backtrace when asked) are off until [`Tracker::record`] turns them
//! on: they cost a lock and a table insert per operation, and a backtrace
//! capture per allocation.

use std::alloc::{GlobalAlloc, Layout, System};
use std::backtrace::Backtrace;
use std::cell::Cell;
use std::hash::BuildHasherDefault;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, MutexGuard};

use crossbeam_utils::CachePadded;

use crate::alloc::counters::single_writer_add;
use crate::alloc::shm_allocator::AddressHasher;
use crate::alloc::{AllocStats, MemContext, RecoveryReport, Region, ShmAllocator};
use crate::error::Result;
use crate::ptr::FullPtr;
use crate::segment::AllocatorKind;
use crate::segment::Segment;

/// What a [`Tracker`] records besides its counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum Recording {
    /// Counters only (the default).
    #[default]
    Off = 0,
    /// Every live block and its size, for leak reports.
    Sizes = 1,
    /// Every live block, its size and a backtrace of where it was allocated.
    Backtraces = 2,
}

/// A snapshot of a tracker's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrackerStats {
    /// Bytes in live blocks.
    pub current_bytes: u64,
    /// The most `current_bytes` has been.
    pub peak_bytes: u64,
    /// Allocations made, in all.
    pub allocations: u64,
    /// Frees made, in all.
    pub frees: u64,
    /// Bytes allocated, in all.
    pub allocated_bytes: u64,
    /// Bytes freed, in all.
    pub freed_bytes: u64,
}

impl TrackerStats {
    /// Blocks allocated and not yet freed.
    pub fn live_allocations(&self) -> u64 {
        self.allocations.saturating_sub(self.frees)
    }
}

/// What a block of code allocated and freed; see [`Tracker::scope`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeReport {
    /// Allocations made during the scope.
    pub allocations: u64,
    /// Frees made during the scope.
    pub frees: u64,
    /// Bytes allocated during the scope.
    pub allocated_bytes: u64,
    /// Bytes freed during the scope.
    pub freed_bytes: u64,
}

impl ScopeReport {
    /// Bytes the scope left allocated (negative when it freed more than it
    /// allocated).
    pub fn net_bytes(&self) -> i64 {
        self.allocated_bytes as i64 - self.freed_bytes as i64
    }
}

/// One block that was live when a [`LeakReport`] was taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leak {
    /// Its address (for [`TrackingAlloc`]) or segment offset (for
    /// [`Tracked`]).
    pub address: usize,
    /// Its size in bytes.
    pub size: usize,
    /// Where it was allocated, when backtraces were recorded.
    pub backtrace: Option<String>,
}

/// The blocks still live, largest first; see [`Tracker::leaks`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeakReport {
    /// The live blocks.
    pub leaks: Vec<Leak>,
}

impl LeakReport {
    /// Bytes in the reported blocks.
    pub fn total_bytes(&self) -> usize {
        self.leaks.iter().map(|leak| leak.size).sum()
    }

    /// Whether no block is live.
    pub fn is_empty(&self) -> bool {
        self.leaks.is_empty()
    }
}

impl std::fmt::Display for LeakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} live block(s), {} bytes",
            self.leaks.len(),
            self.total_bytes()
        )?;
        for leak in &self.leaks {
            writeln!(f, "  {} bytes at {:#x}", leak.size, leak.address)?;
            if let Some(backtrace) = &leak.backtrace {
                for line in backtrace.lines() {
                    writeln!(f, "      {line}")?;
                }
            }
        }
        Ok(())
    }
}

struct LiveBlock {
    size: usize,
    backtrace: Option<Backtrace>,
}

/// Live blocks by address, in memory from the system allocator directly, so
/// recording never re-enters a tracking global allocator.
type LiveBlocks = hashbrown::HashMap<usize, LiveBlock, BuildHasherDefault<AddressHasher>, System>;

thread_local! {
    /// Set while this thread runs the tracker's own bookkeeping; allocations
    /// made meanwhile (the table growing, a backtrace being captured) are
    /// counted but not recorded, which is what stops the recursion and the
    /// self-deadlock a tracking global allocator would otherwise hit.
    static IN_BOOKKEEPING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with this thread marked as doing bookkeeping, unless it already
/// is; returns `None` in that case.
fn bookkeeping<R>(f: impl FnOnce() -> R) -> Option<R> {
    /// Clears the flag however `f` ends, a panic included.
    struct Done;
    impl Drop for Done {
        fn drop(&mut self) {
            IN_BOOKKEEPING.with(|flag| flag.set(false));
        }
    }
    if IN_BOOKKEEPING.with(|flag| flag.replace(true)) {
        return None;
    }
    let _done = Done;
    Some(f())
}

/// The tracking engine: counters, optional records of live blocks, scopes.
/// Keys are whatever names a block uniquely (an address, an offset).
///
/// **Counting without contention.** Each thread counts in a slot of its own
/// (up to [`Tracker::THREAD_SLOTS`] threads; later ones share one slot with
/// atomic additions), with plain loads and stores, no locked instruction:
/// tracking costs a few instructions per allocation. [`stats`](Self::stats)
/// sums the slots, so totals and counts are exact. The peak needs a running
/// total across threads: a block of [`Tracker::EXACT_PEAK_BLOCK`] bytes or
/// more updates it at once, smaller ones in batches of that many bytes per
/// thread, so the peak may miss up to that much of small blocks per thread.
pub struct Tracker {
    slots: [CachePadded<Slot>; THREAD_SLOTS],
    /// Shared by the threads that found no slot of their own.
    overflow: CachePadded<Slot>,
    /// The running total of the batches the threads published.
    published: CachePadded<AtomicI64>,
    peak_bytes: AtomicU64,
    recording: AtomicU8,
    live: Mutex<LiveBlocks>,
}

const THREAD_SLOTS: usize = 64;
const EXACT_PEAK_BLOCK: i64 = 1 << 10;

/// One thread's counters. Written by its owner only (plain load and store),
/// except the overflow slot, which is written with atomic additions.
struct Slot {
    /// The owning thread's token (0: free).
    owner: AtomicU64,
    allocated_bytes: AtomicU64,
    allocations: AtomicU64,
    freed_bytes: AtomicU64,
    frees: AtomicU64,
    /// What this slot has added to `Tracker::published`.
    published: AtomicI64,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            owner: AtomicU64::new(0),
            allocated_bytes: AtomicU64::new(0),
            allocations: AtomicU64::new(0),
            freed_bytes: AtomicU64::new(0),
            frees: AtomicU64::new(0),
            published: AtomicI64::new(0),
        }
    }

    /// Bytes this slot counted as live and has not published yet, given
    /// its allocated and freed totals.
    #[inline(always)]
    fn unpublished_given(&self, allocated: u64, freed: u64) -> i64 {
        (allocated.wrapping_sub(freed) as i64).wrapping_sub(self.published.load(Ordering::Relaxed))
    }
}

thread_local! {
    /// This thread's token (0 until first needed), never reused.
    static THREAD_TOKEN: Cell<u64> = const { Cell::new(0) };
    /// The slot this thread owns in the trackers it used last, by tracker
    /// address: a small direct-mapped cache.
    static SLOT_CACHE: [Cell<(usize, usize)>; SLOT_CACHE_WAYS] =
        const { [const { Cell::new((0, 0)) }; SLOT_CACHE_WAYS] };
}

const SLOT_CACHE_WAYS: usize = 4;
/// `SLOT_CACHE` index meaning "the overflow slot".
const OVERFLOW: usize = usize::MAX;

fn thread_token() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    THREAD_TOKEN.with(|token| {
        if token.get() == 0 {
            token.set(NEXT.fetch_add(1, Ordering::Relaxed));
        }
        token.get()
    })
}

impl Default for Tracker {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("stats", &self.stats())
            .field("recording", &self.recording())
            .finish()
    }
}

impl Tracker {
    /// Threads that count in a slot of their own; later threads share one.
    pub const THREAD_SLOTS: usize = THREAD_SLOTS;
    /// Blocks of this many bytes or more update the peak at once.
    pub const EXACT_PEAK_BLOCK: usize = EXACT_PEAK_BLOCK as usize;

    /// A tracker with zeroed counters and recording off. `const`, so a
    /// tracking global allocator can be a `static`.
    pub const fn new() -> Tracker {
        Tracker {
            slots: [const { CachePadded::new(Slot::new()) }; THREAD_SLOTS],
            overflow: CachePadded::new(Slot::new()),
            published: CachePadded::new(AtomicI64::new(0)),
            peak_bytes: AtomicU64::new(0),
            recording: AtomicU8::new(Recording::Off as u8),
            live: Mutex::new(hashbrown::HashMap::with_hasher_in(
                BuildHasherDefault::new(),
                System,
            )),
        }
    }

    /// The calling thread's slot: a cache hit costs a thread-local read.
    #[inline]
    fn my_slot(&self) -> (&Slot, bool) {
        let key = std::ptr::from_ref(self).addr();
        let way = (key >> 6) % SLOT_CACHE_WAYS;
        let (cached_key, index) = SLOT_CACHE.with(|cache| cache[way].get());
        if cached_key == key {
            return self.slot_at(index);
        }
        self.claim_slot(key, way)
    }

    #[inline]
    fn slot_at(&self, index: usize) -> (&Slot, bool) {
        match self.slots.get(index) {
            Some(slot) => (slot, false),
            None => (&self.overflow, true),
        }
    }

    /// Finds the slot this thread already owns, or claims a free one, or
    /// settles for the shared overflow slot; remembers the answer.
    #[cold]
    #[inline(never)]
    fn claim_slot(&self, key: usize, way: usize) -> (&Slot, bool) {
        let token = thread_token();
        let owned = self
            .slots
            .iter()
            .position(|slot| slot.owner.load(Ordering::Relaxed) == token);
        let index = owned
            .or_else(|| {
                self.slots.iter().position(|slot| {
                    slot.owner
                        .compare_exchange(0, token, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok()
                })
            })
            .unwrap_or(OVERFLOW);
        SLOT_CACHE.with(|cache| cache[way].set((key, index)));
        self.slot_at(index)
    }

    /// Starts or stops recording live blocks. Blocks allocated while
    /// recording was off are never reported; turning it off forgets the
    /// records.
    pub fn record(&self, recording: Recording) {
        self.recording.store(recording as u8, Ordering::Relaxed);
        if recording == Recording::Off {
            let forgotten = bookkeeping(|| std::mem::take(&mut *self.lock_live()));
            drop(forgotten);
        }
    }

    /// What is being recorded.
    pub fn recording(&self) -> Recording {
        match self.recording.load(Ordering::Relaxed) {
            0 => Recording::Off,
            1 => Recording::Sizes,
            _ => Recording::Backtraces,
        }
    }

    /// The counters now: exact sums over every thread's slot (each read
    /// as it stands; threads that run meanwhile may be seen half-way).
    pub fn stats(&self) -> TrackerStats {
        let mut stats = TrackerStats::default();
        for slot in self.slots.iter().chain(std::iter::once(&self.overflow)) {
            // Freed before allocated: a free follows its allocation, so this
            // order never shows more freed than allocated.
            stats.freed_bytes += slot.freed_bytes.load(Ordering::Acquire);
            stats.frees += slot.frees.load(Ordering::Acquire);
            stats.allocated_bytes += slot.allocated_bytes.load(Ordering::Acquire);
            stats.allocations += slot.allocations.load(Ordering::Acquire);
        }
        stats.current_bytes = stats.allocated_bytes.saturating_sub(stats.freed_bytes);
        stats.peak_bytes = self
            .peak_bytes
            .load(Ordering::Relaxed)
            .max(stats.current_bytes);
        stats
    }

    /// Starts measuring: the returned scope reports what was allocated and
    /// freed through this tracker since, by every thread.
    pub fn scope(&self) -> TrackingScope<'_> {
        TrackingScope {
            tracker: self,
            start: self.stats(),
        }
    }

    /// Runs `f` and reports what it allocated and freed (counting every
    /// thread that used the tracker meanwhile).
    pub fn measure<R>(&self, f: impl FnOnce() -> R) -> (R, ScopeReport) {
        let scope = self.scope();
        let result = f();
        (result, scope.report())
    }

    /// The blocks live now, largest first (empty unless recording).
    pub fn leaks(&self) -> LeakReport {
        bookkeeping(|| {
            let live = self.lock_live();
            let mut leaks: Vec<Leak> = live
                .iter()
                .map(|(&address, block)| Leak {
                    address,
                    size: block.size,
                    backtrace: block.backtrace.as_ref().map(ToString::to_string),
                })
                .collect();
            drop(live);
            leaks.sort_by(|a, b| b.size.cmp(&a.size).then(a.address.cmp(&b.address)));
            LeakReport { leaks }
        })
        .unwrap_or_default()
    }

    /// Counts (and, when recording, records) a new block. Call it after
    /// the allocator handed the block out.
    #[inline]
    pub fn on_allocate(&self, key: usize, size: usize) {
        self.count_allocation(size);
        if self.is_recording() {
            self.record_block(key, size);
        }
    }

    /// Counts (and, when recording, forgets) a block being freed. Call it
    /// *before* the allocator gets the block back: once it has, another
    /// thread may be handed the same address and record it, and a late
    /// forget would erase that record instead.
    #[inline]
    pub fn on_free(&self, key: usize, size: usize) {
        drop(self.take_record(key));
        self.count_free(size);
    }

    #[inline]
    fn count_allocation(&self, size: usize) {
        let (slot, shared) = self.my_slot();
        if shared {
            return self.count_shared(slot, size as u64, 0);
        }
        let allocated = single_writer_add(&slot.allocated_bytes, size as u64);
        single_writer_add(&slot.allocations, 1);
        let unpublished =
            slot.unpublished_given(allocated, slot.freed_bytes.load(Ordering::Relaxed));
        if unpublished >= EXACT_PEAK_BLOCK {
            self.publish(slot, unpublished);
        }
    }

    #[inline]
    fn count_free(&self, size: usize) {
        let (slot, shared) = self.my_slot();
        if shared {
            return self.count_shared(slot, 0, size as u64);
        }
        let freed = single_writer_add(&slot.freed_bytes, size as u64);
        single_writer_add(&slot.frees, 1);
        let unpublished =
            slot.unpublished_given(slot.allocated_bytes.load(Ordering::Relaxed), freed);
        if unpublished <= -EXACT_PEAK_BLOCK {
            self.publish(slot, unpublished);
        }
    }

    /// Counts an allocation (`allocated > 0`) or a free in the overflow
    /// slot, which several threads share.
    #[cold]
    #[inline(never)]
    fn count_shared(&self, slot: &Slot, allocated: u64, freed: u64) {
        if allocated > 0 {
            slot.allocated_bytes.fetch_add(allocated, Ordering::Relaxed);
            slot.allocations.fetch_add(1, Ordering::Relaxed);
            // Shared counters cannot batch safely: publish every block.
            self.publish(slot, allocated as i64);
        } else {
            slot.freed_bytes.fetch_add(freed, Ordering::Relaxed);
            slot.frees.fetch_add(1, Ordering::Relaxed);
            self.publish(slot, -(freed as i64));
        }
    }

    /// Adds a slot's unpublished bytes to the running total and moves the
    /// peak if the total passed it.
    #[cold]
    #[inline(never)]
    fn publish(&self, slot: &Slot, delta: i64) {
        slot.published.fetch_add(delta, Ordering::Relaxed);
        let total = self.published.fetch_add(delta, Ordering::Relaxed) + delta;
        if total > 0 {
            self.peak_bytes.fetch_max(total as u64, Ordering::Relaxed);
        }
    }

    #[inline]
    fn is_recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed) != Recording::Off as u8
    }

    /// Removes the record of a block about to be freed, to put back with
    /// [`put_back`](Self::put_back) if the free fails.
    #[inline]
    fn take_record(&self, key: usize) -> Option<LiveBlock> {
        if !self.is_recording() {
            return None;
        }
        bookkeeping(|| self.lock_live().remove(&key)).flatten()
    }

    #[cold]
    fn put_back(&self, key: usize, record: Option<LiveBlock>) {
        if let Some(record) = record {
            bookkeeping(|| drop(self.lock_live().insert(key, record)));
        }
    }

    #[cold]
    fn record_block(&self, key: usize, size: usize) {
        let with_backtrace = self.recording() == Recording::Backtraces;
        bookkeeping(|| {
            let backtrace = with_backtrace.then(Backtrace::force_capture);
            let replaced = self.lock_live().insert(key, LiveBlock { size, backtrace });
            drop(replaced);
        });
    }

    fn lock_live(&self) -> MutexGuard<'_, LiveBlocks> {
        // A panic while recording leaves the table consistent (inserts and
        // removes are single calls), so a poisoned lock is still usable.
        self.live
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A measurement in progress; see [`Tracker::scope`].
#[derive(Debug)]
pub struct TrackingScope<'a> {
    tracker: &'a Tracker,
    start: TrackerStats,
}

impl TrackingScope<'_> {
    /// What was allocated and freed since the scope began.
    pub fn report(&self) -> ScopeReport {
        let now = self.tracker.stats();
        ScopeReport {
            allocations: now.allocations - self.start.allocations,
            frees: now.frees - self.start.frees,
            allocated_bytes: now.allocated_bytes - self.start.allocated_bytes,
            freed_bytes: now.freed_bytes - self.start.freed_bytes,
        }
    }
}

/// A [`GlobalAlloc`] that tracks every allocation of the program through an
/// inner allocator ([`System`] by default); see the [module docs](self).
#[derive(Debug, Default)]
pub struct TrackingAlloc<A = System> {
    inner: A,
    tracker: Tracker,
}

impl TrackingAlloc<System> {
    /// Tracks the system allocator.
    pub const fn system() -> Self {
        Self::new(System)
    }
}

impl<A> TrackingAlloc<A> {
    /// Tracks `inner`.
    pub const fn new(inner: A) -> Self {
        TrackingAlloc {
            inner,
            tracker: Tracker::new(),
        }
    }

    /// The tracking engine: stats, recording, leaks, scopes.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The allocator being tracked.
    pub fn inner(&self) -> &A {
        &self.inner
    }
}

// SAFETY: every call is forwarded to `inner` with the caller's arguments;
// the bookkeeping only reads the result and never touches the blocks.
unsafe impl<A: GlobalAlloc> GlobalAlloc for TrackingAlloc<A> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let ptr = unsafe { self.inner.alloc(layout) };
        if !ptr.is_null() {
            self.tracker.on_allocate(ptr.addr(), layout.size());
        }
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded from the caller.
        let ptr = unsafe { self.inner.alloc_zeroed(layout) };
        if !ptr.is_null() {
            self.tracker.on_allocate(ptr.addr(), layout.size());
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        self.tracker.on_free(ptr.addr(), layout.size());
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.dealloc(ptr, layout) };
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // The old record goes first (see `Tracker::on_free`), and comes back
        // if the reallocation fails and the old block stays.
        let record = self.tracker.take_record(ptr.addr());
        // SAFETY: forwarded from the caller.
        let moved = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if moved.is_null() {
            self.tracker.put_back(ptr.addr(), record);
        } else {
            drop(record);
            // A reallocation is a free of the old block and a new one.
            self.tracker.count_free(layout.size());
            self.tracker.on_allocate(moved.addr(), new_size);
        }
        moved
    }
}

/// Any shmkit allocator with a [`Tracker`] in front; a [`ShmAllocator`]
/// itself. Sizes are the usable sizes the allocator reports (at least what
/// was asked), and keys in leak reports are segment offsets.
///
/// ```
/// use shmkit::local::tracker::{Recording, Tracked};
/// use shmkit::{FreeListAllocator, SegmentAllocator, SegmentOptions, ShmAllocator};
///
/// let inner = FreeListAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let tracked = Tracked::new(inner);
/// tracked.tracker().record(Recording::Sizes);
/// let kept = tracked.allocate(100)?;
/// let (_, report) = tracked.tracker().measure(|| {
///     let scratch = tracked.allocate(5000).unwrap();
///     // SAFETY: nothing uses `scratch` after its free.
///     unsafe { tracked.free(scratch) }.unwrap();
/// });
/// assert_eq!((report.allocations, report.frees, report.net_bytes()), (1, 1, 0));
/// assert_eq!(tracked.tracker().leaks().leaks.len(), 1); // `kept`
/// # let _ = kept;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[derive(Debug)]
pub struct Tracked<A> {
    inner: A,
    tracker: Tracker,
}

impl<A: ShmAllocator> Tracked<A> {
    /// Tracks `inner`.
    pub fn new(inner: A) -> Self {
        Tracked {
            inner,
            tracker: Tracker::new(),
        }
    }

    /// The tracking engine: stats, recording, leaks, scopes.
    pub fn tracker(&self) -> &Tracker {
        &self.tracker
    }

    /// The allocator being tracked.
    pub fn inner(&self) -> &A {
        &self.inner
    }

    /// The allocator, no longer tracked.
    pub fn into_inner(self) -> A {
        self.inner
    }
}

impl<A: ShmAllocator> ShmAllocator for Tracked<A> {
    fn kind(&self) -> AllocatorKind {
        self.inner.kind()
    }

    fn allocate_offset(&self, ctx: &MemContext, size: usize, align: usize) -> Result<u64> {
        let offset = self.inner.allocate_offset(ctx, size, align)?;
        let usable = self.inner.usable_size(offset).unwrap_or(size);
        self.tracker.on_allocate(offset as usize, usable);
        Ok(offset)
    }

    unsafe fn free_offset(&self, ctx: &MemContext, offset: u64) -> Result<()> {
        // Sized before the free and counted once it succeeded, so a refused
        // free changes nothing here either; the record goes before the
        // block can be handed to another thread (see `Tracker::on_free`).
        let usable = self.inner.usable_size(offset)?;
        let record = self.tracker.take_record(offset as usize);
        // SAFETY: forwarded from the caller.
        match unsafe { self.inner.free_offset(ctx, offset) } {
            Ok(()) => {
                drop(record);
                self.tracker.count_free(usable);
                Ok(())
            }
            Err(refused) => {
                self.tracker.put_back(offset as usize, record);
                Err(refused)
            }
        }
    }

    fn usable_size(&self, offset: u64) -> Result<usize> {
        self.inner.usable_size(offset)
    }

    fn full_ptr(&self, offset: u64) -> Result<FullPtr<u8>> {
        self.inner.full_ptr(offset)
    }

    fn offset_of_local(&self, ptr: NonNull<u8>) -> Result<u64> {
        self.inner.offset_of_local(ptr)
    }

    fn stats(&self) -> AllocStats {
        self.inner.stats()
    }

    fn try_stats(&self) -> Result<AllocStats> {
        self.inner.try_stats()
    }

    fn backing_segment(&self) -> Option<&Segment> {
        self.inner.backing_segment()
    }

    fn check(&self) -> Result<()> {
        self.inner.check()
    }

    fn regions(&self, visit: &mut dyn FnMut(Region)) -> Result<()> {
        self.inner.regions(visit)
    }

    unsafe fn recovery_pass(&self) -> Result<RecoveryReport> {
        // SAFETY: forwarded from the caller.
        unsafe { self.inner.recovery_pass() }
    }

    unsafe fn resize_in_place(
        &self,
        ctx: &MemContext,
        offset: u64,
        new_size: usize,
    ) -> Result<bool> {
        let old = self.inner.usable_size(offset)?;
        // SAFETY: forwarded from the caller.
        let resized = unsafe { self.inner.resize_in_place(ctx, offset, new_size)? };
        if resized {
            let new = self.inner.usable_size(offset).unwrap_or(new_size);
            // A resize in place is the old block freed and a new one made.
            self.tracker.on_free(offset as usize, old);
            self.tracker.on_allocate(offset as usize, new);
        }
        Ok(resized)
    }
}

crate::alloc::memory_resource::impl_allocator_api2!([A: ShmAllocator] Tracked<A>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_allocations_and_frees() {
        let tracker = Tracker::new();
        tracker.on_allocate(1, 10_000);
        tracker.on_allocate(2, 5_000);
        tracker.on_free(1, 10_000);
        tracker.on_allocate(3, 100);
        let stats = tracker.stats();
        assert_eq!(stats.current_bytes, 5_100);
        assert_eq!(stats.peak_bytes, 15_000);
        assert_eq!((stats.allocations, stats.frees), (3, 1));
        assert_eq!(stats.live_allocations(), 2);
        assert_eq!((stats.allocated_bytes, stats.freed_bytes), (15_100, 10_000));
    }

    #[test]
    fn small_blocks_move_the_peak_in_bounded_batches() {
        let tracker = Tracker::new();
        for key in 0..1000 {
            tracker.on_allocate(key, 40);
        }
        for key in 0..1000 {
            tracker.on_free(key, 40);
        }
        let peak = tracker.stats().peak_bytes;
        assert!(peak <= 40_000, "{peak}");
        assert!(peak > 40_000 - Tracker::EXACT_PEAK_BLOCK as u64, "{peak}");
        assert_eq!(tracker.stats().current_bytes, 0);
    }

    #[test]
    fn threads_beyond_the_slots_share_one_and_still_count_exactly() {
        let tracker = Tracker::new();
        std::thread::scope(|scope| {
            for thread in 0..Tracker::THREAD_SLOTS + 6 {
                let tracker = &tracker;
                scope.spawn(move || {
                    for i in 0..500 {
                        let key = thread * 1000 + i;
                        tracker.on_allocate(key, 24);
                        tracker.on_free(key, 24);
                    }
                    tracker.on_allocate(thread * 1000, 8);
                });
            }
        });
        let threads = (Tracker::THREAD_SLOTS + 6) as u64;
        let stats = tracker.stats();
        assert_eq!(stats.allocations, threads * 501);
        assert_eq!(stats.frees, threads * 500);
        assert_eq!(stats.current_bytes, threads * 8);
    }

    #[test]
    // The backtrace must show this frame, in optimized builds too.
    #[inline(never)]
    fn records_follow_the_recording_mode() {
        let tracker = Tracker::new();
        tracker.on_allocate(1, 8); // before recording: never reported
        tracker.record(Recording::Backtraces);
        tracker.on_allocate(2, 64);
        tracker.on_allocate(3, 16);
        tracker.on_free(3, 16);
        let report = tracker.leaks();
        assert_eq!(report.leaks.len(), 1);
        assert_eq!((report.leaks[0].address, report.leaks[0].size), (2, 64));
        let backtrace = report.leaks[0].backtrace.as_deref().expect("recorded");
        assert!(
            backtrace.contains("records_follow_the_recording_mode"),
            "{backtrace}"
        );
        assert!(report.to_string().starts_with("1 live block(s), 64 bytes"));
        tracker.record(Recording::Off);
        assert!(tracker.leaks().is_empty());
    }
}
