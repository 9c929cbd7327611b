//! A process-local bump arena that grows by chunks, with scopes that rewind.
//!
//! It is the in-process sibling of [`BumpAllocator`](crate::BumpAllocator):
//! the same allocation methods (`alloc`, `alloc_cache_aligned`, `allocate`,
//! `make`, `mark`, `scope`, `reset`), but over private chunks mapped on
//! demand, with no atomic operation at all, and for any Rust type.
//!
//! ```
//! use shmkit::local::arena::Arena;
//!
//! let mut arena: Arena = Arena::new();
//! let settings = arena.make([1u32, 2, 3])?;        // lives until reset
//! settings[0] = 10;
//! {
//!     let frame = arena.scope();                    // a per-frame scope
//!     let scratch = frame.make_slice_copy(&[0u8; 4096])?;
//!     scratch[0] = 1;
//! }                                                 // scratch given back here
//! assert_eq!(arena.stats().allocations, 1);
//! # Ok::<(), shmkit::Error>(())
//! ```
//!
//! **Values are not dropped.** Like every bump arena, the arena gives memory
//! back wholesale (scope end, [`Arena::reset`], drop) without running
//! destructors; a value that owns resources (a `Vec`, a file) leaks them.
//! Place plain data, or use [`Arena`] as an `allocator_api2` allocator for a
//! container that frees its own contents.

use std::alloc::Layout;
use std::cell::{Cell, UnsafeCell};
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ptr::NonNull;

use super::guarded::{GuardedRegion, Guards};
use crate::alloc::{CACHE_LINE, SIMD_ALIGN};
use crate::error::{Error, Result};

/// Compile-time settings of an [`Arena`]. They are associated constants, so
/// the fast path folds them away: a policy costs nothing at run time.
///
/// ```
/// use shmkit::local::arena::{Arena, ArenaPolicy};
///
/// /// Cache-line aligned blocks, and a guard page after every chunk.
/// struct Strict;
/// impl ArenaPolicy for Strict {
///     const MIN_ALIGN: usize = 64;
///     const GUARD_PAGES: bool = true;
/// }
///
/// let arena: Arena<Strict> = Arena::new();
/// let block = arena.alloc(10, 1)?;
/// assert_eq!(block.as_ptr() as usize % 64, 0);
/// # Ok::<(), shmkit::Error>(())
/// ```
pub trait ArenaPolicy {
    /// Every block is aligned to at least this (a power of two); a request
    /// may ask for more.
    const MIN_ALIGN: usize = 1;
    /// Whether every chunk is followed by an inaccessible guard page, so a
    /// write past the last block faults instead of landing in other memory.
    const GUARD_PAGES: bool = false;
    /// The smallest chunk the arena maps, in bytes (rounded up to pages).
    const MIN_CHUNK: usize = 64 << 10;
}

/// The default policy: natural alignment, no guard pages, 64 KiB chunks.
#[derive(Debug)]
pub struct DefaultPolicy;
impl ArenaPolicy for DefaultPolicy {}

/// A policy with a guard page after every chunk (for debugging overruns).
#[derive(Debug)]
pub struct GuardedPolicy;
impl ArenaPolicy for GuardedPolicy {
    const GUARD_PAGES: bool = true;
}

/// Settings of an [`Arena`] chosen at run time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaOptions {
    first_chunk: usize,
    limit: Option<usize>,
    numa_node: Option<u32>,
}

impl ArenaOptions {
    /// The size of the first chunk (at least the policy's `MIN_CHUNK`), for
    /// an arena whose working set is known.
    pub fn first_chunk(mut self, bytes: usize) -> Self {
        self.first_chunk = bytes;
        self
    }

    /// The most bytes the arena may map in all; an allocation that would
    /// need more fails with [`Error::OutOfMemory`].
    pub fn limit(mut self, bytes: usize) -> Self {
        self.limit = Some(bytes);
        self
    }

    /// Binds every chunk to NUMA node `node` when it is mapped (see
    /// [`crate::numa::bind`]); on a single-node machine binding node 0 is
    /// a no-op, and a node that is not online fails the allocation that
    /// needed the chunk.
    pub fn numa_node(mut self, node: u32) -> Self {
        self.numa_node = Some(node);
        self
    }
}

/// A snapshot of an arena's accounting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArenaStats {
    /// Bytes handed out and not given back (alignment padding included).
    pub allocated_bytes: usize,
    /// The most `allocated_bytes` has been since the arena was made.
    pub peak_bytes: usize,
    /// Allocations made and not given back by a scope or reset.
    pub allocations: u64,
    /// Bytes of chunks mapped (guard pages excluded).
    pub reserved_bytes: usize,
    /// Chunks mapped.
    pub chunks: usize,
}

/// A position in an arena, to rewind to with [`Arena::rewind_to`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArenaMark {
    chunk: usize,
    next: usize,
    allocations: u64,
}

impl ArenaMark {
    /// Where an arena starts.
    const START: ArenaMark = ArenaMark {
        chunk: 0,
        next: 0,
        allocations: 0,
    };
}

/// One mapped chunk and how much of it was used when the arena moved on.
struct Chunk {
    region: GuardedRegion,
    /// Bytes in use when the arena left this chunk for a later one (0 for a
    /// chunk it skipped); only meaningful for chunks before the current one.
    filled: usize,
}

impl Chunk {
    fn start(&self) -> usize {
        self.region.as_ptr().as_ptr().addr()
    }

    fn end(&self) -> usize {
        self.start() + self.region.len()
    }
}

/// A process-local bump arena; see the [module docs](self).
///
/// Allocation is a bounds check and a pointer bump in the current chunk;
/// when a request does not fit, the arena moves to the next chunk, mapping
/// one (double the last, at least `P::MIN_CHUNK`) if it has none spare.
/// Chunks are kept across [`reset`](Self::reset) and scope ends, so a
/// steady workload stops mapping memory after its first round.
pub struct Arena<P: ArenaPolicy = DefaultPolicy> {
    /// The next free byte of the current chunk; its provenance is the
    /// chunk's mapping (null before the first chunk).
    next: Cell<*mut u8>,
    /// The end of the current chunk (0 before the first chunk).
    end: Cell<usize>,
    /// The start of the current chunk (0 before the first chunk): a block
    /// given back or grown in place must lie at or after it, even when an
    /// earlier chunk happens to end right where this one starts.
    start: Cell<usize>,
    /// Index of the current chunk in `chunks`.
    current: Cell<usize>,
    allocations: Cell<u64>,
    /// The highest `allocated_bytes` seen at a rewind; the live figure
    /// only falls at rewinds, so this and the present give the peak.
    peak: Cell<usize>,
    /// Chunks in the order the arena uses them; those after `current` are
    /// spare. Only the slow path and `&mut self` methods touch it.
    chunks: UnsafeCell<Vec<Chunk>>,
    options: ArenaOptions,
    _policy: PhantomData<P>,
}

// SAFETY: the arena owns its chunks (mappings no one else references) and
// the cursor cells point into them only; moving it to another thread moves
// that ownership whole. It stays `!Sync`: its cells are not atomic.
unsafe impl<P: ArenaPolicy> Send for Arena<P> {}

impl<P: ArenaPolicy> Default for Arena<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: ArenaPolicy> std::fmt::Debug for Arena<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("stats", &self.stats())
            .field("options", &self.options)
            .finish()
    }
}

impl<P: ArenaPolicy> Arena<P> {
    const POLICY_IS_VALID: () = assert!(
        P::MIN_ALIGN.is_power_of_two() && P::MIN_CHUNK > 0,
        "ArenaPolicy: MIN_ALIGN must be a power of two and MIN_CHUNK non-zero"
    );

    /// An empty arena; the first allocation maps the first chunk.
    pub fn new() -> Self {
        Self::with_options(ArenaOptions::default())
    }

    /// An empty arena with run-time settings.
    pub fn with_options(options: ArenaOptions) -> Self {
        let () = Self::POLICY_IS_VALID;
        Arena {
            next: Cell::new(std::ptr::null_mut()),
            end: Cell::new(0),
            start: Cell::new(0),
            current: Cell::new(0),
            allocations: Cell::new(0),
            peak: Cell::new(0),
            chunks: UnsafeCell::new(Vec::new()),
            options,
            _policy: PhantomData,
        }
    }

    /// Allocates `size` bytes aligned to `align` (a power of two; 0 means
    /// 1). The bytes are uninitialized. A zero-size request gets a byte of
    /// its own.
    #[inline(always)]
    pub fn alloc(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        let align = align.max(P::MIN_ALIGN);
        if !align.is_power_of_two() {
            return Err(bad_alignment(align));
        }
        let size = size.max(1);
        match self.bump(size, align) {
            Some(block) => Ok(block),
            None => self.alloc_slow(size, align),
        }
    }

    /// Allocates a block for `layout`.
    #[inline(always)]
    pub fn alloc_layout(&self, layout: Layout) -> Result<NonNull<u8>> {
        self.alloc(layout.size(), layout.align())
    }

    /// Allocates `size` bytes on a cache line of their own (64-byte aligned).
    pub fn alloc_cache_aligned(&self, size: usize) -> Result<NonNull<u8>> {
        self.alloc(size, CACHE_LINE)
    }

    /// Allocates `size` bytes aligned for the target's widest SIMD loads.
    pub fn alloc_simd_aligned(&self, size: usize) -> Result<NonNull<u8>> {
        self.alloc(size, SIMD_ALIGN)
    }

    /// Room for `count` values of `T`, uninitialized.
    // Each call hands out a fresh block no other reference reaches.
    #[allow(clippy::mut_from_ref)]
    pub fn allocate<T>(&self, count: usize) -> Result<&mut [MaybeUninit<T>]> {
        let layout = Layout::array::<T>(count).map_err(|_| {
            Error::invalid_size(format!(
                "{count} x {} bytes overflows",
                std::mem::size_of::<T>()
            ))
        })?;
        let block = self.alloc_layout(layout)?.cast::<MaybeUninit<T>>();
        // SAFETY: the block is fresh, ours alone until the arena is reset
        // (which needs `&mut self`, so not while this borrow lives), aligned
        // and large enough for `count` values; `MaybeUninit` needs no init.
        Ok(unsafe { std::slice::from_raw_parts_mut(block.as_ptr(), count) })
    }

    /// Moves `value` into the arena. Its destructor never runs (see the
    /// [module docs](self)).
    // Each call hands out a fresh block no other reference reaches.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub fn make<T>(&self, value: T) -> Result<&mut T> {
        let block = self.alloc_layout(Layout::new::<T>())?.cast::<T>();
        // SAFETY: a fresh block sized and aligned for `T`, ours alone for as
        // long as `&self` is borrowed (reset and rewind need `&mut self`).
        unsafe {
            block.as_ptr().write(value);
            Ok(&mut *block.as_ptr())
        }
    }

    /// Copies `values` into the arena.
    // Each call hands out a fresh block no other reference reaches.
    #[allow(clippy::mut_from_ref)]
    pub fn make_slice_copy<T: Copy>(&self, values: &[T]) -> Result<&mut [T]> {
        let room = self.allocate::<T>(values.len())?;
        for (slot, value) in room.iter_mut().zip(values) {
            slot.write(*value);
        }
        // SAFETY: every element was just written.
        Ok(unsafe { &mut *(std::ptr::from_mut(room) as *mut [T]) })
    }

    /// Copies a string into the arena.
    // Each call hands out a fresh block no other reference reaches.
    #[allow(clippy::mut_from_ref)]
    pub fn make_str(&self, text: &str) -> Result<&mut str> {
        let bytes = self.make_slice_copy(text.as_bytes())?;
        // SAFETY: the bytes were copied from a `str`.
        Ok(unsafe { std::str::from_utf8_unchecked_mut(bytes) })
    }

    /// The current position, to rewind to later.
    pub fn mark(&self) -> ArenaMark {
        ArenaMark {
            chunk: self.current.get(),
            next: self.next.get().addr(),
            allocations: self.allocations.get(),
        }
    }

    /// Gives back everything allocated since `mark`. A mark from another
    /// arena, or one ahead of the arena's position (taken before a
    /// [`reset`](Self::reset), say), is refused with an error and nothing
    /// changes.
    ///
    /// `&mut self` proves no reference into the arena is alive, so no block
    /// given back is still in use.
    pub fn rewind_to(&mut self, mark: ArenaMark) -> Result<()> {
        self.rewind(mark)
    }

    fn rewind(&self, mark: ArenaMark) -> Result<()> {
        // SAFETY: callers hold `&mut self` (directly, or through the scope
        // that borrows the arena mutably), so no one else touches `chunks`.
        let chunks = unsafe { &*self.chunks.get() };
        let mut mark = mark;
        if mark == ArenaMark::START {
            // Taken before the first chunk: the start of the first chunk.
            mark.next = chunks.first().map_or(0, Chunk::start);
        }
        let valid = match chunks.get(mark.chunk) {
            Some(chunk) => (chunk.start()..=chunk.end()).contains(&mark.next),
            None => mark == ArenaMark::START,
        };
        let ahead = mark.chunk > self.current.get()
            || (mark.chunk == self.current.get() && mark.next > self.next.get().addr());
        if !valid || ahead {
            return Err(Error::invalid_size(
                "the mark does not lie at or before this arena's position",
            ));
        }
        self.peak.set(self.peak.get().max(self.allocated_bytes()));
        self.current.set(mark.chunk);
        match chunks.get(mark.chunk) {
            Some(chunk) => {
                self.next
                    .set(chunk.region.as_ptr().as_ptr().with_addr(mark.next));
                self.end.set(chunk.end());
                self.start.set(chunk.start());
            }
            None => {
                self.next.set(std::ptr::null_mut());
                self.end.set(0);
                self.start.set(0);
            }
        }
        self.allocations.set(mark.allocations);
        Ok(())
    }

    /// Opens a scope: everything allocated through it is given back when it
    /// drops. Scopes nest (`scope.scope()`); blocks from a scope borrow it,
    /// so none outlives it.
    pub fn scope(&mut self) -> ArenaScope<'_, P> {
        ArenaScope {
            mark: self.mark(),
            arena: self,
        }
    }

    /// Gives back every allocation at once, keeping the chunks for reuse.
    pub fn reset(&mut self) {
        self.rewind(ArenaMark::START)
            .expect("the start of an arena is always a valid mark");
    }

    /// Unmaps the spare chunks (those after the current one), returning
    /// their memory to the system.
    pub fn release_spare_chunks(&mut self) {
        let keep = self.current.get() + 1;
        self.chunks_mut().truncate(keep);
    }

    /// The current accounting.
    pub fn stats(&self) -> ArenaStats {
        let allocated_bytes = self.allocated_bytes();
        // SAFETY: `chunks` is only changed by the slow path and `&mut self`
        // methods, none of which runs while this shared borrow is used.
        let chunks = unsafe { &*self.chunks.get() };
        ArenaStats {
            allocated_bytes,
            peak_bytes: self.peak.get().max(allocated_bytes),
            allocations: self.allocations.get(),
            reserved_bytes: reserved_bytes(chunks),
            chunks: chunks.len(),
        }
    }

    /// Whether `ptr` lies in a block this arena handed out and has not
    /// given back.
    pub fn owns(&self, ptr: *const u8) -> bool {
        let addr = ptr.addr();
        self.used_ranges().any(|used| used.contains(&addr))
    }

    fn allocated_bytes(&self) -> usize {
        self.used_ranges().map(|used| used.len()).sum()
    }

    /// The used part of each chunk up to the current one.
    fn used_ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        // SAFETY: `chunks` is only changed by the slow path and `&mut self`
        // methods, none of which runs while this shared borrow is used.
        let chunks = unsafe { &*self.chunks.get() };
        let current = self.current.get();
        chunks
            .iter()
            .take(current + 1)
            .enumerate()
            .map(move |(index, chunk)| {
                let used_end = if index == current {
                    self.next.get().addr()
                } else {
                    chunk.start() + chunk.filled
                };
                chunk.start()..used_end
            })
    }

    fn chunks_mut(&mut self) -> &mut Vec<Chunk> {
        self.chunks.get_mut()
    }

    #[inline(always)]
    fn bump(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let next = self.next.get();
        let start = next.addr().checked_add(align - 1)? & !(align - 1);
        let stop = start.checked_add(size)?;
        if stop > self.end.get() {
            return None;
        }
        self.next.set(next.with_addr(stop));
        self.allocations.set(self.allocations.get() + 1);
        // SAFETY: `stop <= end` and `size > 0`, so `start` lies inside the
        // current chunk, whose addresses are never 0.
        Some(unsafe { NonNull::new_unchecked(next.with_addr(start)) })
    }

    /// Moves to a chunk that fits the request (a spare one, or a new one)
    /// and allocates from it.
    #[cold]
    #[inline(never)]
    fn alloc_slow(&self, size: usize, align: usize) -> Result<NonNull<u8>> {
        // SAFETY: `&self` methods that run concurrently with this one are
        // impossible (the arena is not `Sync`), and none of this thread's
        // borrows of `chunks` is alive: every other use is a short read.
        let chunks = unsafe { &mut *self.chunks.get() };
        let needed = size
            .checked_add(align - 1)
            .ok_or_else(|| Error::invalid_size(format!("{size} bytes overflow the arena")))?;
        let mut index = self.current.get();
        if let Some(chunk) = chunks.get_mut(index) {
            chunk.filled = self.next.get().addr() - chunk.start();
            index += 1;
        }
        // Spare chunks too small for this request are skipped (left empty).
        while let Some(chunk) = chunks.get_mut(index) {
            if chunk.region.len() >= needed {
                break;
            }
            chunk.filled = 0;
            index += 1;
        }
        if index == chunks.len() {
            let chunk = self.map_chunk(chunks, needed)?;
            // Insert after the current chunk, before any spare: marks only
            // name chunks up to the current one, so none is disturbed.
            index = self.current.get() + usize::from(!chunks.is_empty());
            chunks.insert(index, chunk);
        }
        let chunk = &chunks[index];
        self.current.set(index);
        self.next.set(chunk.region.as_ptr().as_ptr());
        self.end.set(chunk.end());
        self.start.set(chunk.start());
        self.bump(size, align)
            .ok_or_else(|| Error::invalid_size("a chunk chosen to fit a request did not"))
    }

    fn map_chunk(&self, chunks: &[Chunk], needed: usize) -> Result<Chunk> {
        let grown = chunks.last().map_or(self.options.first_chunk, |c| {
            c.region.len().saturating_mul(2)
        });
        let len = grown
            .max(P::MIN_CHUNK)
            .max(needed)
            .min(MAX_CHUNK.max(needed));
        let reserved = reserved_bytes(chunks);
        if let Some(limit) = self.options.limit {
            if reserved.saturating_add(len) > limit {
                // Try the smallest chunk that serves the request instead.
                if reserved.saturating_add(needed) > limit {
                    return Err(Error::OutOfMemory {
                        requested: needed as u64,
                        available: limit.saturating_sub(reserved) as u64,
                    });
                }
                return self.map_exact(needed);
            }
        }
        self.map_exact(len)
    }

    fn map_exact(&self, len: usize) -> Result<Chunk> {
        let guards = if P::GUARD_PAGES {
            Guards::Above
        } else {
            Guards::None
        };
        let region = GuardedRegion::new(len, guards)?;
        if let Some(node) = self.options.numa_node {
            crate::numa::bind(region.as_ptr(), region.len(), node)?;
        }
        Ok(Chunk { region, filled: 0 })
    }
}

/// Bytes of the chunks mapped (guard pages excluded).
fn reserved_bytes(chunks: &[Chunk]) -> usize {
    chunks.iter().map(|chunk| chunk.region.len()).sum()
}

/// Chunks stop doubling at this size (a larger request still gets a chunk
/// of its own size).
const MAX_CHUNK: usize = 256 << 20;

#[cold]
fn bad_alignment(align: usize) -> Error {
    Error::InvalidAlignment {
        align,
        max: 1 << (usize::BITS - 1),
    }
}

/// A scope of an [`Arena`]: dereferences to the arena, and rewinds it to
/// where it stood when the scope opened, on drop. See [`Arena::scope`].
pub struct ArenaScope<'a, P: ArenaPolicy = DefaultPolicy> {
    arena: &'a mut Arena<P>,
    mark: ArenaMark,
}

impl<P: ArenaPolicy> ArenaScope<'_, P> {
    /// Where the arena will rewind to.
    pub fn mark(&self) -> ArenaMark {
        self.mark
    }
}

impl<P: ArenaPolicy> std::ops::Deref for ArenaScope<'_, P> {
    type Target = Arena<P>;

    fn deref(&self) -> &Arena<P> {
        self.arena
    }
}

impl<P: ArenaPolicy> std::ops::DerefMut for ArenaScope<'_, P> {
    fn deref_mut(&mut self) -> &mut Arena<P> {
        self.arena
    }
}

impl<P: ArenaPolicy> Drop for ArenaScope<'_, P> {
    fn drop(&mut self) {
        // A scope's mark can only have gone stale if the scope released the
        // chunk it names; then everything is given back instead.
        if self.arena.rewind(self.mark).is_err() {
            self.arena.reset();
        }
    }
}

// SAFETY: blocks are distinct, fresh, sized and aligned as the layout asks,
// and stay valid until the arena is reset, rewound or dropped, none of which
// can happen while a container borrows it (all need `&mut self` or
// ownership). `deallocate` only ever moves the cursor back over the block
// just freed when it is the last one, and `grow`/`shrink` keep the contents.
unsafe impl<P: ArenaPolicy> allocator_api2::alloc::Allocator for Arena<P> {
    fn allocate(
        &self,
        layout: Layout,
    ) -> std::result::Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        let block = self
            .alloc_layout(layout)
            .map_err(|_| allocator_api2::alloc::AllocError)?;
        Ok(NonNull::slice_from_raw_parts(block, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        self.give_back_if_last(ptr, layout.size());
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> std::result::Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        // The last block grows in place when the chunk has room.
        let is_last = self.is_last_block(ptr, old.size());
        let aligned = ptr.as_ptr().addr() % new.align().max(P::MIN_ALIGN) == 0;
        if is_last && aligned {
            if let Some(stop) = ptr.as_ptr().addr().checked_add(new.size()) {
                if stop <= self.end.get() {
                    self.next.set(self.next.get().with_addr(stop));
                    return Ok(NonNull::slice_from_raw_parts(ptr, new.size()));
                }
            }
        }
        // SAFETY: forwarded from the caller; the new block is larger.
        unsafe { self.relocate(ptr, new, old.size()) }
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> std::result::Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        if ptr.as_ptr().addr() % new.align() != 0 {
            // SAFETY: forwarded from the caller, copying the smaller new size.
            return unsafe { self.relocate(ptr, new, new.size()) };
        }
        // The block stays where it is; the tail comes back if it is last.
        if self.is_last_block(ptr, old.size()) {
            let stop = ptr.as_ptr().addr() + new.size().max(1);
            self.next.set(self.next.get().with_addr(stop));
        }
        Ok(NonNull::slice_from_raw_parts(ptr, new.size()))
    }
}

impl<P: ArenaPolicy> Arena<P> {
    /// Moves the first `keep` bytes of the block at `ptr` to a new block for
    /// `new` (the old one stays where it is, as in any bump arena).
    ///
    /// # Safety
    ///
    /// `ptr` must be a live block of this arena of at least `keep` bytes,
    /// and `keep <= new.size()`.
    unsafe fn relocate(
        &self,
        ptr: NonNull<u8>,
        new: Layout,
        keep: usize,
    ) -> std::result::Result<NonNull<[u8]>, allocator_api2::alloc::AllocError> {
        let moved = self
            .alloc_layout(new)
            .map_err(|_| allocator_api2::alloc::AllocError)?;
        // SAFETY: the caller guarantees `keep` readable bytes at `ptr`; the
        // new block is fresh, at least `keep` bytes, and overlaps no live
        // block.
        unsafe { std::ptr::copy_nonoverlapping(ptr.as_ptr(), moved.as_ptr(), keep) };
        Ok(NonNull::slice_from_raw_parts(moved, new.size()))
    }

    /// Moves the cursor back over the block at `ptr` when it is the last one
    /// handed out, so a container that frees its buffer right away (a
    /// temporary `Vec`) costs nothing.
    fn give_back_if_last(&self, ptr: NonNull<u8>, size: usize) {
        if self.is_last_block(ptr, size) {
            self.next
                .set(self.next.get().with_addr(ptr.as_ptr().addr()));
        }
    }

    /// Whether the `size`-byte block at `ptr` is the last one handed out
    /// from the current chunk.
    #[inline]
    fn is_last_block(&self, ptr: NonNull<u8>, size: usize) -> bool {
        let start = ptr.as_ptr().addr();
        start >= self.start.get() && start + size.max(1) == self.next.get().addr()
    }
}

impl<P: ArenaPolicy> crate::alloc::MemoryResource for Arena<P> {
    fn allocate_layout(&self, layout: Layout) -> Result<NonNull<u8>> {
        self.alloc_layout(layout)
    }

    unsafe fn deallocate_layout(&self, ptr: NonNull<u8>, layout: Layout) -> Result<()> {
        self.give_back_if_last(ptr, layout.size());
        Ok(())
    }

    fn name(&self) -> &'static str {
        "arena"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_disjoint_aligned_and_keep_their_contents() {
        let arena: Arena = Arena::new();
        let mut blocks = Vec::new();
        for (index, align) in [1usize, 2, 8, 64, 4096, 16]
            .into_iter()
            .cycle()
            .take(600)
            .enumerate()
        {
            let size = 1 + index * 37 % 3000;
            let block = arena.alloc(size, align).unwrap();
            assert_eq!(block.as_ptr().addr() % align, 0);
            // SAFETY: a fresh block of `size` bytes.
            unsafe { block.as_ptr().write_bytes(index as u8, size) };
            blocks.push((block, size, index as u8));
        }
        blocks.sort_by_key(|(block, ..)| block.as_ptr().addr());
        for pair in blocks.windows(2) {
            assert!(pair[0].0.as_ptr().addr() + pair[0].1 <= pair[1].0.as_ptr().addr());
        }
        for (block, size, fill) in blocks {
            // SAFETY: still live: the arena was neither reset nor rewound.
            let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), size) };
            assert!(bytes.iter().all(|&b| b == fill));
        }
        assert!(
            arena.stats().chunks > 1,
            "600 blocks of up to 3 KB need chunks"
        );
    }

    #[test]
    fn a_bad_alignment_is_refused_and_changes_nothing() {
        let arena: Arena = Arena::new();
        arena.alloc(8, 8).unwrap();
        let before = arena.stats();
        assert!(matches!(
            arena.alloc(8, 24),
            Err(Error::InvalidAlignment { align: 24, .. })
        ));
        assert_eq!(arena.stats(), before);
    }

    #[test]
    fn a_request_larger_than_any_chunk_gets_its_own() {
        let arena: Arena = Arena::new();
        arena.alloc(100, 8).unwrap();
        let big = arena.alloc(5 << 20, 4096).unwrap();
        assert!(arena.owns(big.as_ptr()));
        assert!(arena.stats().reserved_bytes >= (5 << 20) + DefaultPolicy::MIN_CHUNK);
    }

    #[test]
    fn the_policy_alignment_applies_to_every_block() {
        struct Wide;
        impl ArenaPolicy for Wide {
            const MIN_ALIGN: usize = 32;
            const MIN_CHUNK: usize = 4096;
        }
        let arena: Arena<Wide> = Arena::new();
        for size in 1..100 {
            assert_eq!(arena.alloc(size, 1).unwrap().as_ptr().addr() % 32, 0);
        }
    }
}
