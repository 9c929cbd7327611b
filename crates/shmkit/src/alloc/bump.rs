//! The bump (linear) allocator: a lock-free cursor shared by every process.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use super::in_segment::InSegment;
use super::linear::sealed::Carve;
use super::linear::LinearAlloc;
use super::segment_allocator::{InBuffer, SegmentAllocator};
use super::AllocatorKind;
use crate::error::{Error, Result};
use crate::segment::header::PARAM_WORDS;
use crate::segment::Segment;
use crate::sync::cursor::{self, BumpFailure};

/// The bump allocator's state inside the segment: one cursor on a cache line
/// of its own, so allocating never contends with reads of the header.
#[repr(C)]
struct BumpState {
    /// Offset of the first free byte.
    cursor: CachePadded<AtomicU64>,
    /// Non-zero once the cursor came within [`NEAR_END`] of the maximum:
    /// allocations then take the compare-and-swap loop (read-mostly, on a
    /// line of its own).
    near_end: CachePadded<AtomicU64>,
}

/// How close to the maximum the single `fetch_add` stops being used: room
/// for 256 requests of `cursor::ADD_MAX` bytes in flight at once, so the
/// ones that had not yet seen `near_end` still end below the maximum (past
/// it, a request gives its bytes back, and racing ones could leave some
/// behind).
const NEAR_END: u64 = 256 * cursor::ADD_MAX;

/// A lock-free linear allocator whose cursor lives in the segment.
///
/// Every process that attaches the segment allocates from the same cursor
/// with one atomic add per allocation (no lock, no syscall, no retry however
/// many workers contend); within 1 MiB of the maximum size, and for requests
/// over 4 KiB, with a compare-and-swap loop instead, so that a request that
/// does not fit changes nothing. (An add whose bytes cannot serve its
/// request, misaligned after a request of another alignment, gives them
/// back unless another worker claimed after them, in which case they stay
/// behind as alignment padding.) Memory is given back all at once with
/// [`reset`](Self::reset), or in LIFO frames with [`scope`](Self::scope).
/// When the segment was created with a maximum size above its initial size,
/// an allocation that does not fit grows the segment first.
///
/// ```
/// use shmkit::{BumpAllocator, LinearAlloc, SegmentAllocator, SegmentOptions};
///
/// let bump = BumpAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let numbers = bump.allocate::<u64>(16)?;     // room for 16 u64s
/// let answer = bump.make_handle(42u64)?;       // an offset, valid in any process
/// assert_eq!(unsafe { *bump.segment().resolve(answer)?.as_ref() }, 42);
/// assert!(bump.used() >= 16 * 8 + 8);
/// # let _ = numbers;
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct BumpAllocator {
    shell: InSegment<BumpState>,
    /// The first byte of the data area: no block is ever carved below it
    /// (nor beyond the segment's size as this process knows it).
    floor: u64,
}

impl std::fmt::Debug for BumpAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BumpAllocator")
            .field("segment", self.segment())
            .field("used", &self.used())
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl SegmentAllocator for BumpAllocator {
    const KIND: AllocatorKind = AllocatorKind::Bump;
    type Params = ();

    fn encode_params(_: &()) -> [u64; PARAM_WORDS] {
        [0; PARAM_WORDS]
    }

    fn state_len(_: &()) -> u64 {
        std::mem::size_of::<BumpState>() as u64
    }

    fn initialize(segment: &Segment, _: &()) -> Result<()> {
        let state = segment.allocator_state::<BumpState>()?;
        // SAFETY: the creator runs this before *ready*, so no other process
        // uses the state yet; `allocator_state` checked size and alignment.
        unsafe {
            state.as_ptr().write(BumpState {
                cursor: CachePadded::new(AtomicU64::new(segment.data_offset())),
                near_end: CachePadded::new(AtomicU64::new(0)),
            })
        };
        Ok(())
    }

    fn from_segment(segment: Segment) -> Result<Self> {
        segment.expect_allocator(Self::KIND, None)?;
        let floor = segment.data_offset();
        let bump = BumpAllocator {
            shell: InSegment::new(segment)?,
            floor,
        };
        let cursor = bump.cursor();
        if cursor < bump.segment().data_offset() || cursor > bump.segment().max_size() {
            return Err(Error::corrupt(format!("bump cursor {cursor} out of range")));
        }
        Ok(bump)
    }
}

impl LinearAlloc for BumpAllocator {}

impl Carve for BumpAllocator {
    fn carve_segment(&self) -> &Segment {
        self.segment()
    }

    #[inline]
    fn carve(&self, size: u64, align: u64) -> Result<u64> {
        let cell = self.cursor_cell();
        if size <= cursor::ADD_MAX
            && size != 0
            && self.state().near_end.load(Ordering::Relaxed) == 0
        {
            if let Some(start) = self.carve_by_add(size, align) {
                return Ok(start);
            }
        }
        loop {
            match cursor::bump(cell, size, align, self.floor, || self.end()) {
                Ok(start) => return Ok(start),
                Err(failure) => self.grow_for(failure, size, align)?,
            }
        }
    }
}

impl BumpAllocator {
    /// The segment this allocator manages.
    #[inline]
    pub fn segment(&self) -> &Segment {
        self.shell.segment()
    }

    #[inline]
    fn state(&self) -> &BumpState {
        self.shell.state()
    }

    #[inline]
    fn cursor_cell(&self) -> &AtomicU64 {
        &self.state().cursor
    }

    /// The current end of the usable area (the segment grows), as far as
    /// this process knows the backing object holds bytes.
    #[inline]
    fn end(&self) -> u64 {
        self.segment().size()
    }

    fn cursor(&self) -> u64 {
        self.cursor_cell().load(Ordering::Acquire)
    }

    /// One `fetch_add` (see `sync::cursor`), far enough from the maximum:
    /// the bytes, grown into if need be, or `None` for the loop.
    #[inline]
    fn carve_by_add(&self, size: u64, align: u64) -> Option<u64> {
        let max = self.segment().max_size();
        let limit = max.saturating_sub(NEAR_END);
        if limit <= self.floor {
            // A small segment: all of it is near the end.
            return None;
        }
        let cell = self.cursor_cell();
        match cursor::bump_add(cell, size, align, self.floor, max) {
            cursor::Added::Claimed { start, stop } => {
                if stop > limit {
                    self.state().near_end.store(1, Ordering::Relaxed);
                }
                if stop <= self.end() || self.grow_past(stop) {
                    return Some(start);
                }
                // No room for bytes already claimed: back, if on top.
                let _ = cursor::rewind(cell, stop, start);
                None
            }
            cursor::Added::Refused { stop } => {
                if stop > limit {
                    self.state().near_end.store(1, Ordering::Relaxed);
                }
                None
            }
        }
    }

    /// Grows the segment to hold `stop` (below the maximum).
    #[cold]
    fn grow_past(&self, stop: u64) -> bool {
        matches!(self.segment().grow_to_fit(stop), Ok(true))
    }

    /// After a failed bump: grow the segment if it may grow, else report.
    #[cold]
    fn grow_for(&self, failure: BumpFailure, size: u64, align: u64) -> Result<()> {
        let cursor = match failure {
            BumpFailure::Full { cursor } | BumpFailure::Moved { cursor } => cursor,
            BumpFailure::Overflow => {
                return Err(Error::invalid_size(format!(
                    "{size} bytes overflow the segment"
                )))
            }
            BumpFailure::BelowFloor { cursor } => {
                return Err(Error::corrupt(format!(
                    "bump cursor {cursor} lies below the data area ({})",
                    self.floor
                )))
            }
        };
        let needed = cursor::align_up(cursor, align)
            .and_then(|start| start.checked_add(size))
            .ok_or_else(|| Error::invalid_size(format!("{size} bytes overflow the segment")))?;
        if self.segment().grow_to_fit(needed)? {
            Ok(())
        } else {
            Err(Error::OutOfMemory {
                requested: size,
                available: self.segment().max_size().saturating_sub(cursor),
            })
        }
    }

    /// Bytes handed out so far (alignment padding included).
    pub fn used(&self) -> u64 {
        self.cursor().saturating_sub(self.segment().data_offset())
    }

    /// Bytes the data area holds once the segment is grown to its maximum
    /// size (it is backed as the cursor reaches it).
    pub fn capacity(&self) -> u64 {
        self.segment()
            .max_size()
            .saturating_sub(self.segment().data_offset())
    }

    /// The same as [`capacity`](Self::capacity), which counts the room to
    /// grow now that segments are backed on demand.
    #[deprecated(note = "equal to `capacity()`")]
    pub fn max_capacity(&self) -> u64 {
        self.capacity()
    }

    /// Bytes still free, counting the room to grow.
    pub fn remaining(&self) -> u64 {
        self.capacity().saturating_sub(self.used())
    }

    /// Whether `ptr` points into a block this allocator has handed out (and
    /// not since rewound).
    pub fn owns(&self, ptr: *const u8) -> bool {
        self.segment()
            .offset_of(ptr)
            .is_ok_and(|offset| self.owns_offset(offset.raw()))
    }

    /// Whether `offset` lies in the allocated part of the data area.
    pub fn owns_offset(&self, offset: u64) -> bool {
        offset >= self.segment().data_offset() && offset < self.cursor()
    }

    /// Forgets every allocation at once.
    ///
    /// **Quiescence rule:** no process may use a block of this allocator, or
    /// allocate from it, while or after it is reset; every offset handed out
    /// before becomes meaningless. Within this process `&mut self` enforces
    /// that no scope is open; across processes it is the caller's protocol
    /// (for example: reset only after the workers that shared it have exited).
    pub fn reset(&mut self) {
        // SAFETY: `&mut self` rules out scopes and blocks of this view.
        unsafe { self.reset_shared() }
    }

    /// [`reset`](Self::reset) through a shared reference, for bindings that
    /// never hold a reference into a block across calls (every access goes
    /// through an offset checked again at use).
    ///
    /// # Safety
    ///
    /// No reference into a block of this allocator, and no open
    /// [`Scope`] or [`LocalBump`], may be used after the call; the
    /// quiescence rule of [`reset`](Self::reset) applies across processes.
    pub unsafe fn reset_shared(&self) {
        self.cursor_cell()
            .store(self.segment().data_offset(), Ordering::Release);
        self.state().near_end.store(0, Ordering::Release);
    }

    /// Zeroes every byte handed out so far, then rewinds like
    /// [`reset`](Self::reset) (same quiescence rule), so no data lingers for
    /// the next user of the memory.
    pub fn secure_reset(&mut self) {
        let start = self.segment().data_offset();
        let end = self.cursor().min(self.segment().size());
        // `&mut self` and the quiescence rule: nobody uses these bytes now.
        self.segment().zero_bytes(start, end.saturating_sub(start));
        self.reset();
    }

    /// The current cursor, to rewind to later with [`rewind_to`](Self::rewind_to).
    pub fn mark(&self) -> Mark {
        Mark(self.cursor())
    }

    /// Rewinds the cursor to `mark` if nobody allocated after `expected_top`
    /// (the cursor value the caller last saw). Returns whether it rewound.
    ///
    /// # Safety
    ///
    /// No block allocated between `mark` and `expected_top` may be used
    /// afterwards, by any process: their bytes will be handed out again.
    pub unsafe fn rewind_to(&self, mark: Mark, expected_top: Mark) -> bool {
        mark.0 <= expected_top.0 && cursor::rewind(self.cursor_cell(), expected_top.0, mark.0)
    }

    /// Opens an arena frame: allocations made through the returned scope are
    /// given back when it drops, provided no one else (another thread, another
    /// process, or this allocator directly) allocated in between. When someone
    /// did, the scope keeps working but gives nothing back, so it never frees
    /// a block that is not its own.
    ///
    /// ```
    /// use shmkit::{BumpAllocator, LinearAlloc, SegmentAllocator, SegmentOptions};
    ///
    /// let bump = BumpAllocator::create(&SegmentOptions::private().size(1 << 20))?;
    /// let before = bump.used();
    /// {
    ///     let frame = bump.scope();
    ///     frame.alloc(4096, 64)?;
    ///     assert!(bump.used() >= before + 4096);
    /// }
    /// assert_eq!(bump.used(), before);
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn scope(&self) -> Scope<'_> {
        let mark = self.cursor();
        Scope {
            bump: self,
            mark,
            top: Cell::new(mark),
            contiguous: Cell::new(true),
        }
    }
}

impl BumpAllocator {
    /// A front end for one thread that takes `chunk`-byte pieces from the
    /// shared cursor and carves small blocks out of them with no atomic
    /// operation at all; see [`LocalBump`].
    pub fn local(&self, chunk: usize) -> LocalBump<'_> {
        LocalBump {
            bump: self,
            next: Cell::new(0),
            end: Cell::new(0),
            chunk: (chunk as u64).max(256),
        }
    }
}

/// A per-thread front end of a [`BumpAllocator`].
///
/// The shared cursor costs one compare-and-swap per allocation, and under
/// contention that cache line moves between cores on every call. A
/// `LocalBump` takes a chunk at a time from the shared cursor and carves
/// blocks from it locally, so threads (and processes) contend only once per
/// chunk. Requests larger than a quarter chunk go straight to the shared
/// cursor. When the `LocalBump` drops, the unused tail of its chunk is given
/// back if no one allocated after it; otherwise the tail stays unused until
/// the allocator is reset. It is not `Sync`: make one per thread.
///
/// ```
/// use shmkit::{BumpAllocator, LinearAlloc, SegmentAllocator, SegmentOptions};
///
/// let bump = BumpAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let local = bump.local(16 << 10);
/// let a = local.alloc_handle(64, 8)?;
/// let b = local.alloc_handle(64, 8)?;
/// assert_eq!(b.raw(), a.raw() + 64);
/// drop(local);
/// assert_eq!(bump.used(), (b.raw() + 64) - bump.segment().data_offset());
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct LocalBump<'a> {
    bump: &'a BumpAllocator,
    next: Cell<u64>,
    end: Cell<u64>,
    chunk: u64,
}

impl LocalBump<'_> {
    #[cold]
    fn refill(&self, size: u64, align: u64) -> Result<u64> {
        if size.saturating_add(align) > self.chunk / 4 {
            return self.bump.carve(size, align);
        }
        self.give_back_tail();
        let start = self.bump.carve(self.chunk, 64)?;
        self.next.set(start);
        self.end.set(start + self.chunk);
        self.carve_local(size, align)
            .ok_or_else(|| Error::corrupt("a fresh chunk did not hold a small request"))
    }

    #[inline(always)]
    fn carve_local(&self, size: u64, align: u64) -> Option<u64> {
        let start = cursor::align_up(self.next.get(), align)?;
        let stop = start.checked_add(size)?;
        if stop > self.end.get() {
            return None;
        }
        self.next.set(stop);
        Some(start)
    }

    /// Rewinds the shared cursor over this chunk's unused tail, if nobody
    /// allocated after the chunk.
    fn give_back_tail(&self) {
        if self.next.get() < self.end.get() {
            cursor::rewind(self.bump.cursor_cell(), self.end.get(), self.next.get());
        }
        self.next.set(0);
        self.end.set(0);
    }
}

impl LinearAlloc for LocalBump<'_> {}

impl Carve for LocalBump<'_> {
    fn carve_segment(&self) -> &Segment {
        self.bump.segment()
    }

    #[inline]
    fn carve(&self, size: u64, align: u64) -> Result<u64> {
        match self.carve_local(size, align) {
            Some(start) => Ok(start),
            None => self.refill(size, align),
        }
    }
}

impl Drop for LocalBump<'_> {
    fn drop(&mut self) {
        self.give_back_tail();
    }
}

impl InBuffer<'_, BumpAllocator> {
    /// [`BumpAllocator::reset`] for an allocator over a borrowed buffer.
    pub fn reset(&mut self) {
        // The `InBuffer` is held mutably, so no scope borrows the allocator.
        let bump: &BumpAllocator = self;
        bump.cursor_cell()
            .store(bump.segment().data_offset(), Ordering::Release);
    }
}

/// A position of a bump allocator's cursor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mark(u64);

impl Mark {
    /// The cursor offset.
    pub fn offset(self) -> u64 {
        self.0
    }
}

/// An arena frame over a [`BumpAllocator`]; see [`BumpAllocator::scope`].
pub struct Scope<'a> {
    bump: &'a BumpAllocator,
    mark: u64,
    /// Where this scope's last block ended.
    top: Cell<u64>,
    /// Whether `[mark, top)` holds this scope's blocks only.
    contiguous: Cell<bool>,
}

impl Scope<'_> {
    /// The cursor position the scope will rewind to.
    pub fn mark(&self) -> Mark {
        Mark(self.mark)
    }

    /// Whether the scope still owns everything above its mark (and so will
    /// give it back on drop).
    pub fn will_rewind(&self) -> bool {
        self.contiguous.get()
    }

    /// Ends the scope now; returns whether its memory was given back.
    pub fn finish(self) -> bool {
        let rewound = self.rewind();
        std::mem::forget(self);
        rewound
    }

    fn rewind(&self) -> bool {
        self.contiguous.get() && cursor::rewind(self.bump.cursor_cell(), self.top.get(), self.mark)
    }
}

impl LinearAlloc for Scope<'_> {}

impl Carve for Scope<'_> {
    fn carve_segment(&self) -> &Segment {
        self.bump.segment()
    }

    fn carve(&self, size: u64, align: u64) -> Result<u64> {
        while self.contiguous.get() {
            let end = self.bump.segment().size();
            match cursor::bump_at(self.bump.cursor_cell(), self.top.get(), size, align, end) {
                Ok((start, stop)) => {
                    self.top.set(stop);
                    return Ok(start);
                }
                // Someone else allocated: this scope can no longer rewind.
                Err(BumpFailure::Moved { .. }) => self.contiguous.set(false),
                // Out of room: grow (or report) and try again in place.
                Err(failure) => self.bump.grow_for(failure, size, align)?,
            }
        }
        self.bump.carve(size, align)
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        self.rewind();
    }
}
