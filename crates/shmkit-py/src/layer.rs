//! What the Python API keeps in a segment's custom header: the capacity
//! users may allocate (a budget, in units of a slot, a slab or a byte) and
//! the counters of what live blocks take from it, shared by every process.
//!
//! `capacity` means what users can allocate, as in `shared_allocator`: the
//! segment is sized on top of it for the shmkit header, the allocator's
//! state and the block headers, and an allocation that would take the
//! budget past the capacity returns `None` whatever room the segment has.
//! A block of `n` bytes takes `ceil(n / unit)` units (a free-list block
//! takes whole slots, a slab block one slab, other blocks their bytes).

use std::sync::atomic::{AtomicU64, Ordering};

use shmkit_lib::shm_struct;

/// "shmkitp" with a layout version in its last byte.
const MAGIC: u64 = u64::from_le_bytes(*b"shmkitp\x02");

shm_struct! {
    /// The Python layer's part of the custom header.
    pub struct Layer {
        /// [`MAGIC`] once written (before the segment is ready).
        pub magic: AtomicU64,
        /// Bytes per unit of the budget (1: a byte budget).
        pub unit: AtomicU64,
        /// Units users may allocate in all.
        pub units: AtomicU64,
        /// Units live blocks take.
        pub units_used: AtomicU64,
        /// The most units ever taken at once.
        pub peak_units: AtomicU64,
        /// Bytes live blocks were asked for.
        pub requested: AtomicU64,
        /// Live blocks.
        pub blocks: AtomicU64,
        /// Bumped by a bump allocator's `reset`; mixed into every block's
        /// check word, so blocks from before a reset never validate again.
        pub generation: AtomicU64,
        /// A random key drawn at creation and mixed into every block's check
        /// word, so bytes users write cannot pass for a block header.
        pub key: AtomicU64,
        /// Which Python class made the segment (`Kind::code`).
        pub class: AtomicU64,
        /// Room for later versions.
        pub reserved: [AtomicU64; 6],
    }
}

/// Bytes of the custom header the layer takes.
pub const LAYER_LEN: u32 = std::mem::size_of::<Layer>() as u32;

/// The layer's first bytes for a new segment made by class `class`: the
/// magic, the budget, a fresh key; the counters start at zero.
pub fn initial_bytes(class: u64, unit: u64, units: u64) -> Vec<u8> {
    let words = [MAGIC, unit, units, 0, 0, 0, 0, 0, random_key(), class];
    let mut bytes = vec![0u8; LAYER_LEN as usize];
    for (chunk, word) in bytes.chunks_exact_mut(8).zip(words) {
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    bytes
}

/// 64 bits from the operating system's randomness (std seeds its hash
/// keys from it).
fn random_key() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// A snapshot of the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub units_used: u64,
    pub peak_units: u64,
    pub requested: u64,
    pub blocks: u64,
}

impl Layer {
    /// Whether this is a layer of this version.
    pub fn is_valid(&self) -> bool {
        self.magic.load(Ordering::Relaxed) == MAGIC
    }

    /// Takes `units` from a budget of `total`, unless that would pass it.
    #[inline]
    pub fn reserve(&self, units: u64, total: u64) -> bool {
        let mut used = self.units_used.load(Ordering::Relaxed);
        loop {
            let Some(after) = used.checked_add(units).filter(|&after| after <= total) else {
                return false;
            };
            match self.units_used.compare_exchange_weak(
                used,
                after,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    if after > self.peak_units.load(Ordering::Relaxed) {
                        self.peak_units.fetch_max(after, Ordering::Relaxed);
                    }
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }

    /// Gives `units` back (an allocation that failed after its reservation).
    #[inline]
    pub fn unreserve(&self, units: u64) {
        self.units_used.fetch_sub(units, Ordering::Relaxed);
    }

    /// Counts a block of `requested` bytes that is now live.
    #[inline]
    pub fn on_allocate(&self, requested: u64) {
        self.requested.fetch_add(requested, Ordering::Relaxed);
        self.blocks.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a freed block of `requested` bytes and `units` units.
    #[inline]
    pub fn on_free(&self, requested: u64, units: u64) {
        self.units_used.fetch_sub(units, Ordering::Relaxed);
        self.requested.fetch_sub(requested, Ordering::Relaxed);
        self.blocks.fetch_sub(1, Ordering::Relaxed);
    }

    /// Forgets every block (a bump allocator's reset).
    pub fn on_reset(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.units_used.store(0, Ordering::Relaxed);
        self.requested.store(0, Ordering::Relaxed);
        self.blocks.store(0, Ordering::Relaxed);
    }

    /// Sets the counters to what a walk of the blocks found (recovery).
    pub fn recount(&self, usage: Usage) {
        self.units_used.store(usage.units_used, Ordering::Relaxed);
        self.requested.store(usage.requested, Ordering::Relaxed);
        self.blocks.store(usage.blocks, Ordering::Relaxed);
        self.peak_units
            .fetch_max(usage.units_used, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn usage(&self) -> Usage {
        Usage {
            units_used: self.units_used.load(Ordering::Relaxed),
            peak_units: self.peak_units.load(Ordering::Relaxed),
            requested: self.requested.load(Ordering::Relaxed),
            blocks: self.blocks.load(Ordering::Relaxed),
        }
    }

    /// The reset generation now.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
}
