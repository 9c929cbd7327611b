//! What the Python API adds on top of an allocator: a 16-byte header in
//! front of every block, so that `read`, `write` and `view` are bounded by
//! the block an offset names (not only by the segment), and counters of the
//! bytes users asked for, kept in the segment's custom header so that every
//! process sees the same figures.
//!
//! Header, just below the offset handed to Python:
//!
//! ```text
//! offset - 16: size | log2(prefix) << 56     (prefix: offset - block start)
//! offset -  8: check word                    (0 once freed)
//! ```
//!
//! The check word mixes the first word with the offset, so an offset that
//! does not start a block (or a freed one) is refused with `ValueError`.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use shmkit_lib::{AnyAllocator, Error, LinearAlloc, MemContext, Offset, Result, Segment};

/// Bytes of the header in front of every block.
pub const HEADER: u64 = 16;
/// Sizes a header can record.
const SIZE_BITS: u32 = 56;

/// Allocates a raw block (header included) from whichever allocator.
fn allocate_raw(allocator: &AnyAllocator, size: u64, align: u64) -> Result<u64> {
    match allocator {
        AnyAllocator::Bump(bump) => Ok(bump.alloc(size as usize, align as usize)?.offset().raw()),
        AnyAllocator::Stack(stack) => {
            Ok(stack.alloc(size as usize, align as usize)?.offset().raw())
        }
        other => other
            .as_shm_allocator()
            .ok_or(Error::Unsupported("this allocator cannot allocate"))?
            .allocate_offset(&MemContext::default(), size as usize, align as usize),
    }
}

/// Frees a raw block; a bump allocator frees only with `reset`.
fn free_raw(allocator: &AnyAllocator, block: u64) -> Result<()> {
    match allocator {
        AnyAllocator::Bump(_) => Err(Error::Unsupported(
            "a bump allocator frees everything at once, with reset()",
        )),
        AnyAllocator::Stack(stack) => stack.free(Offset::<u8>::from_raw(block)),
        other => other
            .as_shm_allocator()
            .ok_or(Error::Unsupported("this allocator cannot free"))?
            .free_offset(&MemContext::default(), block),
    }
}

/// Counters of what users asked for, in the segment's custom header.
#[repr(C)]
pub struct UserCounters {
    pub bytes: AtomicU64,
    pub blocks: AtomicU64,
}

/// The bytes of the custom header the counters need.
pub const COUNTERS_LEN: u32 = std::mem::size_of::<UserCounters>() as u32;

/// An allocator with block headers and user counters.
pub struct Blocks {
    pub allocator: AnyAllocator,
    counters: Option<NonNull<[AtomicU64; 2]>>,
    /// The largest request that can ever fit (a slab's slot), if bounded.
    max_request: Option<u64>,
}

// SAFETY: the allocator is `Send + Sync`; the counters pointer points into the
// segment the backend keeps mapped, and is used through atomics only.
unsafe impl Send for Blocks {}
// SAFETY: as above.
unsafe impl Sync for Blocks {}

/// A block as its header describes it.
#[derive(Clone, Copy)]
pub struct Block {
    pub size: u64,
    prefix: u64,
}

fn check_word(first: u64, offset: u64) -> u64 {
    (first ^ offset.rotate_left(23) ^ 0x7368_6d6b_6974_5f70).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

impl Blocks {
    pub fn new(allocator: AnyAllocator) -> Blocks {
        // Segments made by other tools may have no room for the counters:
        // the figures then come from the allocator's own accounting.
        let counters = allocator.segment().custom_header::<[AtomicU64; 2]>().ok();
        Blocks {
            allocator,
            counters,
            max_request: None,
        }
    }

    /// Refuses requests above `bytes` as bad input rather than as a full
    /// segment.
    pub fn with_max_request(mut self, bytes: u64) -> Blocks {
        self.max_request = Some(bytes);
        self
    }

    pub fn segment(&self) -> &Segment {
        self.allocator.segment()
    }

    fn counters(&self) -> Option<&[AtomicU64; 2]> {
        // SAFETY: checked by `custom_header`; atomics in the segment, which
        // lives as long as `self`.
        self.counters.map(|c| unsafe { c.as_ref() })
    }

    /// (bytes users asked for and still hold, their blocks).
    pub fn user_totals(&self) -> (u64, u64) {
        match self.counters() {
            Some([bytes, blocks]) => (
                bytes.load(Ordering::Relaxed),
                blocks.load(Ordering::Relaxed),
            ),
            None => {
                let stats = self.allocator.stats();
                (stats.allocated_bytes, stats.live_allocations)
            }
        }
    }

    fn header(&self, offset: u64) -> Option<&[AtomicU64; 2]> {
        let at = offset.checked_sub(HEADER)?;
        if at < self.segment().data_offset() {
            return None;
        }
        let ptr = self
            .segment()
            .resolve(Offset::<[AtomicU64; 2]>::from_raw(at))
            .ok()?;
        // SAFETY: `resolve` checked bounds and alignment; atomics are valid
        // for any bytes; the mapping lives as long as `self`.
        Some(unsafe { ptr.as_ref() })
    }

    /// Allocates `size` bytes whose offset is a multiple of `align`.
    pub fn allocate(&self, size: u64, align: u64) -> Result<u64> {
        if size == 0 || size >> SIZE_BITS != 0 {
            return Err(Error::InvalidSize {
                reason: format!("cannot allocate {size} bytes"),
            });
        }
        let prefix = align.max(HEADER);
        // Alignment beyond the header's 16 bytes costs room in the block.
        let needed = size.saturating_add(prefix - HEADER);
        if let Some(max) = self.max_request.filter(|&max| needed > max) {
            return Err(Error::InvalidSize {
                reason: format!("{size} bytes aligned to {align} do not fit in a {max}-byte slab"),
            });
        }
        let total = size.checked_add(prefix).ok_or_else(|| Error::InvalidSize {
            reason: format!("cannot allocate {size} bytes"),
        })?;
        let block = allocate_raw(&self.allocator, total, prefix)?;
        let offset = block + prefix;
        let Some(header) = self.header(offset) else {
            let _ = free_raw(&self.allocator, block);
            return Err(Error::OutOfBounds {
                offset,
                len: size,
                size: self.segment().size(),
            });
        };
        let first = size | (u64::from(prefix.trailing_zeros()) << SIZE_BITS);
        header[0].store(first, Ordering::Relaxed);
        header[1].store(check_word(first, offset), Ordering::Release);
        if let Some([bytes, blocks]) = self.counters() {
            bytes.fetch_add(size, Ordering::Relaxed);
            blocks.fetch_add(1, Ordering::Relaxed);
        }
        Ok(offset)
    }

    /// The live block that starts at `offset`.
    pub fn block(&self, offset: u64) -> Result<Block> {
        let refuse = || Error::InvalidFree { offset };
        let header = self.header(offset).ok_or_else(refuse)?;
        let first = header[0].load(Ordering::Relaxed);
        if header[1].load(Ordering::Acquire) != check_word(first, offset) {
            return Err(refuse());
        }
        let block = Block {
            size: first & ((1 << SIZE_BITS) - 1),
            prefix: 1 << (first >> SIZE_BITS).min(63),
        };
        // A header that passed its check still cannot reach past the segment.
        self.segment().check_range(offset, block.size)?;
        Ok(block)
    }

    /// The local address of `len` bytes (default: the whole block) at
    /// `offset`, inside its block, and that length.
    pub fn bytes_at(&self, offset: u64, len: Option<u64>) -> Result<(NonNull<u8>, u64)> {
        let block = self.block(offset)?;
        let len = len.unwrap_or(block.size);
        if len > block.size {
            return Err(Error::OutOfBounds {
                offset,
                len,
                size: block.size,
            });
        }
        let ptr = self
            .segment()
            .resolve_array(Offset::<u8>::from_raw(offset), len)?;
        Ok((ptr, len))
    }

    /// Frees the block at `offset`; anything but a live block changes
    /// nothing.
    pub fn free(&self, offset: u64) -> Result<()> {
        let block = self.block(offset)?;
        let header = self.header(offset).ok_or(Error::InvalidFree { offset })?;
        // Void the header first, so a stale offset is refused once the block
        // is someone else's; restore it if the allocator refuses the free.
        let check = header[1].swap(0, Ordering::AcqRel);
        if let Err(err) = free_raw(&self.allocator, offset - block.prefix) {
            header[1].store(check, Ordering::Release);
            return Err(err);
        }
        if let Some([bytes, blocks]) = self.counters() {
            bytes.fetch_sub(block.size, Ordering::Relaxed);
            blocks.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Forgets every block of a bump allocator, for every process.
    pub fn reset_shared(&self) -> Result<()> {
        match &self.allocator {
            // SAFETY: the bindings hold no reference into a block across
            // calls: every access re-checks its offset, and exported views
            // keep the mapping alive (their bytes merely get reused).
            AnyAllocator::Bump(bump) => unsafe { bump.reset_shared() },
            _ => {
                return Err(Error::Unsupported(
                    "only bump allocators reset; free blocks one by one",
                ))
            }
        }
        self.zero_counters();
        Ok(())
    }

    fn zero_counters(&self) {
        if let Some([bytes, blocks]) = self.counters() {
            bytes.store(0, Ordering::Relaxed);
            blocks.store(0, Ordering::Relaxed);
        }
    }
}
