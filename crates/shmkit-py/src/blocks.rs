//! The header the Python API puts in front of every block, so that `read`,
//! `write`, `view` and `free` are bounded by the block an offset names, not
//! only by the segment, and an offset that does not start a live block is
//! refused.
//!
//! Sixteen bytes, just below the offset handed to Python:
//!
//! ```text
//! offset - 16: size | nonce << 42 | log2(prefix) << 58   (prefix: offset - raw block start)
//! offset -  8: check word                                (0 once freed)
//! ```
//!
//! The check word mixes the first word, the offset and the layer's reset
//! generation under the segment's random key, so an offset inside a
//! block, a freed block's offset and a block from before a bump
//! allocator's reset all fail the check, and bytes users write into a
//! block cannot pass for a header (they do not know the key). The nonce,
//! drawn afresh for every allocation, makes the check word of a block
//! differ from that of the block allocated before it at the same offset
//! (but for one chance in 65,536), so a handle that recorded the word
//! (a pickled shared array) tells a reallocated block from its own.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bytes of the header in front of every block.
pub const HEADER: u64 = 16;
/// Sizes a header can record.
pub const SIZE_BITS: u32 = 42;
/// The largest size a block may have (4 TiB).
pub const MAX_SIZE: u64 = (1 << SIZE_BITS) - 1;
/// Bits of the per-allocation nonce, above the size.
const NONCE_BITS: u32 = 16;
/// Where log2(prefix) starts, above the nonce.
const PREFIX_SHIFT: u32 = SIZE_BITS + NONCE_BITS;

/// A fresh nonce: a per-thread xorshift, seeded from the thread's address
/// and the clock, mixed with the process id (a forked child continues its
/// parent's sequence), so threads and processes draw different ones.
fn next_nonce() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|state| {
        let mut x = state.get();
        if x == 0 {
            let clock = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_nanos() as u64);
            x = ((state as *const Cell<u64> as u64) ^ clock.rotate_left(32)) | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        let pid = u64::from(shmkit_lib::sync::current_pid());
        (x ^ pid.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 20) & ((1 << NONCE_BITS) - 1)
    })
}

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

/// What a check word is computed under: the segment's key and the layer's
/// reset generation.
#[derive(Clone, Copy, Debug)]
pub struct Seal {
    pub key: u64,
    pub generation: u64,
}

#[inline]
fn check_word(first: u64, offset: u64, seal: Seal) -> u64 {
    let mut x = (first ^ seal.key).wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ offset.rotate_left(23)
        ^ seal.generation.rotate_left(47);
    x ^= x >> 31;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ seal.key.rotate_left(17);
    x ^= x >> 29;
    // Never 0, the freed mark.
    x | 1
}

impl BlockHeader {
    /// Writes the header of a new block of `size` bytes at `offset`,
    /// `prefix` bytes after its raw start.
    #[inline]
    pub fn write(&self, offset: u64, size: u64, prefix: u64, seal: Seal) {
        debug_assert!(size <= MAX_SIZE && prefix.is_power_of_two());
        let first = size
            | (next_nonce() << SIZE_BITS)
            | (u64::from(prefix.trailing_zeros()) << PREFIX_SHIFT);
        self.first.store(first, Ordering::Relaxed);
        self.check
            .store(check_word(first, offset, seal), Ordering::Release);
    }

    /// The live block this header describes, if it is one (loads only:
    /// safe on a read-only mapping).
    #[inline]
    pub fn read(&self, offset: u64, seal: Seal) -> Option<Block> {
        let first = self.first.load(Ordering::Relaxed);
        let check = self.check.load(Ordering::Relaxed);
        if check != check_word(first, offset, seal) {
            return None;
        }
        std::sync::atomic::fence(Ordering::Acquire);
        Some(Block {
            size: first & MAX_SIZE,
            prefix: 1 << (first >> PREFIX_SHIFT).min(63),
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
