//! The header the Python API puts in front of every block, so that `read`,
//! `write`, `view` and `free` are bounded by the block an offset names, not
//! only by the segment, and an offset that does not start a live block is
//! refused.
//!
//! Sixteen bytes, just below the offset handed to Python:
//!
//! ```text
//! offset - 16: size | log2(prefix) << 56    (prefix: offset - raw block start)
//! offset -  8: check word                   (0 once freed)
//! ```
//!
//! The check word mixes the first word, the offset and the layer's reset
//! generation under a keyed hash, so an offset inside a block, a freed
//! block's offset and a block from before a bump allocator's reset all
//! fail the check.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of the header in front of every block.
pub const HEADER: u64 = 16;
/// Sizes a header can record.
pub const SIZE_BITS: u32 = 56;
/// The largest size a block may have.
pub const MAX_SIZE: u64 = (1 << SIZE_BITS) - 1;

/// A block header in the segment.
#[repr(C)]
pub struct BlockHeader {
    pub first: AtomicU64,
    pub check: AtomicU64,
}

/// A block as its header describes it, validated.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    /// The size asked for.
    pub size: u64,
    /// Bytes from the raw block's start to the offset.
    pub prefix: u64,
    /// The check word that validated it (what a free swaps out).
    pub check: u64,
}

#[inline]
fn check_word(first: u64, offset: u64, generation: u64) -> u64 {
    let mixed = first ^ offset.rotate_left(23) ^ generation.rotate_left(47) ^ 0x7368_6d6b_6974_5f70;
    // Never 0, the freed mark.
    mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

impl BlockHeader {
    /// Writes the header of a new block of `size` bytes at `offset`,
    /// `prefix` bytes after its raw start.
    #[inline]
    pub fn write(&self, offset: u64, size: u64, prefix: u64, generation: u64) {
        debug_assert!(size <= MAX_SIZE && prefix.is_power_of_two());
        let first = size | (u64::from(prefix.trailing_zeros()) << SIZE_BITS);
        self.first.store(first, Ordering::Relaxed);
        self.check
            .store(check_word(first, offset, generation), Ordering::Release);
    }

    /// The live block this header describes, if it is one (loads only:
    /// safe on a read-only mapping).
    #[inline]
    pub fn read(&self, offset: u64, generation: u64) -> Option<Block> {
        let first = self.first.load(Ordering::Relaxed);
        let check = self.check.load(Ordering::Relaxed);
        if check != check_word(first, offset, generation) {
            return None;
        }
        std::sync::atomic::fence(Ordering::Acquire);
        Some(Block {
            size: first & MAX_SIZE,
            prefix: 1 << (first >> SIZE_BITS).min(63),
            check,
        })
    }

    /// Marks the block freed, if it still carries `check`: exactly one of
    /// several racing frees wins, and a loser writes nothing.
    #[inline]
    pub fn retire(&self, check: u64) -> bool {
        self.check
            .compare_exchange(check, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }

    /// Puts the check word back after the allocator refused the free (the
    /// block is still the caller's: nobody else could free or reuse it).
    #[inline]
    pub fn restore(&self, check: u64) {
        self.check.store(check, Ordering::Release);
    }
}
