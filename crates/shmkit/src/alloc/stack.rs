//! The stack allocator: LIFO allocation whose top lives in the segment.
//!
//! # A carve cut short
//!
//! A carve moves the top word with one compare-and-swap and then writes
//! the block's header; a process killed in between would leave a top block
//! without a header, which nobody could free (and so nothing below it). So
//! the carving thread first records its intent (the top word it replaces,
//! the block and its end) in its slot of the segment's hand-off log
//! (`alloc::handoff`), and the new top word names that slot in its high
//! bits. A free that finds its block buried under a top whose slot's owner
//! died mid-carve rolls that carve back (the block was never handed out)
//! and goes on. A thread without a slot (more than 64 at once) carves
//! unnamed, with the old window.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_utils::CachePadded;

use super::handoff;
use super::in_segment::InSegment;
use super::linear::sealed::Carve;
use super::linear::LinearAlloc;
use super::segment_allocator::SegmentAllocator;
use super::AllocatorKind;
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::ptr::{FullPtr, Offset};
use crate::segment::header::PARAM_WORDS;
use crate::segment::Segment;
use crate::sync::cursor;

/// The bits of the top word that hold the top's offset; above them, the
/// hand-off slot (plus one) of the thread whose carve set it, or 0.
const TOP_OFFSET: u64 = (1 << 56) - 1;
const CARVER_SHIFT: u32 = 56;

#[repr(C)]
struct StackState {
    /// Offset just past the most recent live block (see [`TOP_OFFSET`]).
    top: CachePadded<AtomicU64>,
    /// Bumped by `reset`, and mixed into every seal, so block headers left
    /// behind by an earlier generation never validate again.
    generation: AtomicU64,
}

/// Written just below every block: where the stack top was before it, and a
/// seal binding the block's offset to its end (zeroed when freed).
#[repr(C)]
struct BlockHeader {
    /// The top word before the block.
    prev_top: AtomicU64,
    seal: AtomicU64,
}

const BLOCK_HEADER: u64 = std::mem::size_of::<BlockHeader>() as u64;
const SEAL_KEY: u64 = 0x5ac4_b10c_e11d_f00d;

fn seal(offset: u64, end: u64, generation: u64) -> u64 {
    end ^ offset.rotate_left(29) ^ generation.rotate_left(47) ^ SEAL_KEY
}

/// A LIFO allocator shared by every process that attaches its segment.
///
/// Freeing the most recent live allocation gives its space back at once;
/// freeing any other block is refused with [`Error::NotTopOfStack`], and a
/// block that is not live (never handed out, or already freed) with
/// [`Error::InvalidFree`]. Allocation is a compare-and-swap on the top, so
/// any number of threads and processes may allocate at once; freeing is only
/// meaningful for the thread that owns the top.
///
/// ```
/// use shmkit::{LinearAlloc, SegmentAllocator, SegmentOptions, StackAllocator};
///
/// let stack = StackAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let a = stack.alloc_handle(100, 8)?;
/// let b = stack.alloc_handle(200, 8)?;
/// // SAFETY: nothing uses a block after its free.
/// unsafe {
///     assert!(stack.free(a).is_err()); // not the top
///     stack.free(b)?;
///     stack.free(a)?;
/// }
/// assert_eq!(stack.used(), 0);
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct StackAllocator {
    shell: InSegment<StackState>,
}

impl std::fmt::Debug for StackAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StackAllocator")
            .field("segment", self.segment())
            .field("used", &self.used())
            .finish()
    }
}

impl SegmentAllocator for StackAllocator {
    const KIND: AllocatorKind = AllocatorKind::Stack;
    type Params = ();

    fn encode_params(_: &()) -> [u64; PARAM_WORDS] {
        [0; PARAM_WORDS]
    }

    fn state_len(_: &()) -> u64 {
        std::mem::size_of::<StackState>() as u64
    }

    fn initialize(segment: &Segment, _: &()) -> Result<()> {
        let state = segment.allocator_state::<StackState>()?;
        // SAFETY: runs in the creator before *ready*; size and alignment were
        // checked by `allocator_state`.
        unsafe {
            state.as_ptr().write(StackState {
                top: CachePadded::new(AtomicU64::new(segment.data_offset())),
                generation: AtomicU64::new(0),
            })
        };
        Ok(())
    }

    fn from_segment(segment: Segment) -> Result<Self> {
        segment.expect_allocator(Self::KIND, None)?;
        let stack = StackAllocator {
            shell: InSegment::new(segment)?,
        };
        let top = stack.top();
        if top < stack.segment().data_offset() || top > stack.segment().max_size() {
            return Err(Error::corrupt(format!("stack top {top} out of range")));
        }
        Ok(stack)
    }
}

impl LinearAlloc for StackAllocator {}

impl Carve for StackAllocator {
    fn carve_segment(&self) -> &Segment {
        self.segment()
    }

    fn carve(&self, size: u64, align: u64) -> Result<u64> {
        let log = handoff::my_indexed_slot(self.segment());
        match self.carve_noting(size, align, log) {
            Ok(block) => Ok(block),
            Err(refused) => {
                // No carve of this thread is in progress: a stale intent
                // would keep its slot from being reclaimed.
                if let Some((_, log)) = log {
                    log.carve_done();
                }
                Err(refused)
            }
        }
    }
}

impl StackAllocator {
    /// The carve, with its intent noted in `log` (see the module docs).
    #[inline(always)]
    fn carve_noting(
        &self,
        size: u64,
        align: u64,
        log: Option<(u32, &handoff::HandoffSlot)>,
    ) -> Result<u64> {
        // Blocks are at least 8-aligned so that their header is too.
        let Some(align) = lcm_with_8(align) else {
            return Err(Error::InvalidAlignment {
                align: align as usize,
                max: self.segment().max_align(),
            });
        };
        let top = self.top_cell();
        let generation = self.state().generation.load(Ordering::Acquire);
        let floor = self.segment().data_offset();
        let carver = log.map_or(0, |(index, _)| u64::from(index) + 1) << CARVER_SHIFT;
        let mut word = top.load(Ordering::Acquire);
        loop {
            let current = word & TOP_OFFSET;
            if current < floor {
                return Err(Error::corrupt(format!(
                    "stack top {current} lies below the data area ({floor})"
                )));
            }
            let block = current
                .checked_add(BLOCK_HEADER)
                .and_then(|above| cursor::align_up(above, align))
                .ok_or_else(|| Error::invalid_size("request overflows the segment"))?;
            let end = block
                .checked_add(size)
                .ok_or_else(|| Error::invalid_size("request overflows the segment"))?;
            let limit = self.segment().size();
            if end > limit {
                if self.grow_to_hold(end)? {
                    continue;
                }
                return Err(Error::OutOfMemory {
                    requested: size,
                    available: limit.saturating_sub(current),
                });
            }
            if let Some((_, log)) = log {
                log.intend_carve(word, block, end);
            }
            match top.compare_exchange_weak(word, end | carver, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    crash_point!("stack.carve.claimed");
                    let header = self.block_header(block)?;
                    header.prev_top.store(word, Ordering::Relaxed);
                    header
                        .seal
                        .store(seal(block, end, generation), Ordering::Release);
                    if let Some((_, log)) = log {
                        log.carve_done();
                    }
                    return Ok(block);
                }
                Err(actual) => word = actual,
            }
        }
    }
}

impl StackAllocator {
    /// After a request ending at `end` did not fit: grows the segment (see
    /// [`Segment::grow_to_fit`]). Returns whether it may now fit.
    #[cold]
    fn grow_to_hold(&self, end: u64) -> Result<bool> {
        self.segment().grow_to_fit(end)
    }

    /// The segment this allocator manages.
    #[inline]
    pub fn segment(&self) -> &Segment {
        self.shell.segment()
    }

    #[inline]
    fn state(&self) -> &StackState {
        self.shell.state()
    }

    fn top_cell(&self) -> &AtomicU64 {
        &self.state().top
    }

    fn top(&self) -> u64 {
        self.top_cell().load(Ordering::Acquire) & TOP_OFFSET
    }

    /// Rolls back the carve that set the top word, if its thread died
    /// before finishing it (see the module docs): its block was never
    /// handed out. Returns whether the top moved down.
    #[cold]
    fn roll_back_dead_carve(&self) -> bool {
        let word = self.top_cell().load(Ordering::Acquire);
        let carver = word >> CARVER_SHIFT;
        let Some(index) = carver.checked_sub(1) else {
            return false;
        };
        let Some((prev_word, block, end)) = handoff::dead_carve(self.segment(), index as u32)
        else {
            return false;
        };
        // The slot's intent is the carve that set this word only if it
        // ends where the top does and lies above the top before it.
        if end != word & TOP_OFFSET || prev_word & TOP_OFFSET >= end {
            return false;
        }
        let rolled_back = self
            .top_cell()
            .compare_exchange(word, prev_word, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if rolled_back {
            handoff::forget_carve(self.segment(), index as u32, block);
        }
        rolled_back
    }

    /// The header of the block at `block`, bounds- and alignment-checked.
    fn block_header(&self, block: u64) -> Result<&BlockHeader> {
        let Some(header_offset) = block
            .checked_sub(BLOCK_HEADER)
            .filter(|&h| h >= self.segment().data_offset())
        else {
            return Err(Error::InvalidFree { offset: block });
        };
        let ptr = self
            .segment()
            .resolve(Offset::<BlockHeader>::from_raw(header_offset))
            .map_err(|_| Error::InvalidFree { offset: block })?;
        // SAFETY: `resolve` checked bounds and alignment; the header is made
        // of atomics, valid for any bytes, and lives as long as the segment.
        Ok(unsafe { ptr.as_ref() })
    }

    /// Frees the block at `offset`, which must be the most recent live one
    /// (carves that dead threads left unfinished above it are rolled back
    /// first).
    ///
    /// # Safety
    ///
    /// As for [`ShmAllocator::free_offset`](crate::ShmAllocator::free_offset):
    /// nothing of this process uses the block afterwards. A wrong offset is
    /// refused with an error.
    pub unsafe fn free<T>(&self, offset: Offset<T>) -> Result<()> {
        let block = offset.raw();
        match self.free_top(block) {
            Ok(()) => Ok(()),
            Err(refused) => self.free_under_dead_carves(block, refused),
        }
    }

    /// A free refused at first: tried again after each carve a dead thread
    /// left unfinished on top is rolled back (each lowers the top; a slot
    /// holds one carve at a time).
    #[cold]
    fn free_under_dead_carves(&self, block: u64, mut refused: Error) -> Result<()> {
        for _ in 0..=handoff::SLOTS {
            if !matches!(
                refused,
                Error::NotTopOfStack { .. } | Error::InvalidFree { .. }
            ) || !self.roll_back_dead_carve()
            {
                return Err(refused);
            }
            match self.free_top(block) {
                Ok(()) => return Ok(()),
                Err(again) => refused = again,
            }
        }
        Err(refused)
    }

    // Inlined: a `Result` returned through memory costs the fast path a
    // store-forwarding stall.
    #[inline(always)]
    fn free_top(&self, block: u64) -> Result<()> {
        let header = self.block_header(block)?;
        let sealed = header.seal.load(Ordering::Acquire);
        let generation = self.state().generation.load(Ordering::Acquire);
        let end = sealed ^ seal(block, 0, generation);
        let prev_word = header.prev_top.load(Ordering::Relaxed);
        let prev_top = prev_word & TOP_OFFSET;
        let data_offset = self.segment().data_offset();
        let plausible = sealed != 0
            && end >= block
            && prev_top >= data_offset
            && prev_top <= block - BLOCK_HEADER;
        let word = self.top_cell().load(Ordering::Acquire);
        let top = word & TOP_OFFSET;
        // A live block lies wholly below the top.
        if !plausible || block >= top || end > top {
            return Err(Error::InvalidFree { offset: block });
        }
        if end != top {
            return Err(Error::NotTopOfStack { offset: block });
        }
        // Unseal first, so a racing second free of the same block fails; if
        // the top moved meanwhile, put the seal back.
        if header
            .seal
            .compare_exchange(sealed, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return Err(Error::InvalidFree { offset: block });
        }
        match self
            .top_cell()
            .compare_exchange(word, prev_word, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => Ok(()),
            Err(_) => {
                header.seal.store(sealed, Ordering::Release);
                Err(Error::NotTopOfStack { offset: block })
            }
        }
    }

    /// Frees a block given by its [`FullPtr`].
    ///
    /// # Safety
    ///
    /// As for [`free`](Self::free).
    pub unsafe fn free_ptr<T>(&self, ptr: FullPtr<T>) -> Result<()> {
        if ptr.segment_id() != self.segment().id() {
            return Err(Error::ForeignPointer);
        }
        // SAFETY: forwarded from the caller.
        unsafe { self.free(ptr.offset()) }
    }

    /// Bytes in use (block headers and padding included).
    pub fn used(&self) -> u64 {
        self.top().saturating_sub(self.segment().data_offset())
    }

    /// Bytes the data area holds once the segment is grown to its maximum
    /// size (it is backed as the top reaches it).
    pub fn capacity(&self) -> u64 {
        self.segment()
            .max_size()
            .saturating_sub(self.segment().data_offset())
    }

    /// Frees everything at once. Same quiescence rule as
    /// [`BumpAllocator::reset`](crate::BumpAllocator::reset).
    pub fn reset(&mut self) {
        self.state().generation.fetch_add(1, Ordering::AcqRel);
        self.top_cell()
            .store(self.segment().data_offset(), Ordering::Release);
    }

    /// Zeroes every byte below the top (blocks and their headers), then
    /// frees everything like [`reset`](Self::reset) (same quiescence rule),
    /// so no data lingers for the next user of the memory.
    pub fn secure_reset(&mut self) {
        let start = self.segment().data_offset();
        let end = self.top().min(self.segment().size());
        // `&mut self` and the quiescence rule: nobody uses these bytes now.
        self.segment().zero_bytes(start, end.saturating_sub(start));
        self.reset();
    }
}

/// The least common multiple of `align` and 8, or `None` on overflow.
fn lcm_with_8(align: u64) -> Option<u64> {
    let twos = align.trailing_zeros().min(3);
    align.checked_mul(1 << (3 - twos))
}

#[cfg(test)]
mod tests {
    use super::lcm_with_8;

    #[test]
    fn lcm_with_8_is_the_least_common_multiple() {
        for (align, lcm) in [
            (1, 8),
            (2, 8),
            (4, 8),
            (8, 8),
            (16, 16),
            (12, 24),
            (24, 24),
            (3, 24),
            (64, 64),
        ] {
            assert_eq!(lcm_with_8(align), Some(lcm), "align {align}");
        }
        assert_eq!(lcm_with_8((1 << 62) + 1), None);
    }
}
