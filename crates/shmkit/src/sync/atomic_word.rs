//! The atomic 64-bit word the algorithms of this module run on: `std`'s
//! `AtomicU64` in a segment, `loom`'s in the model checks, so that both
//! execute the same lines.

use std::sync::atomic::{AtomicU64, Ordering};

/// A 64-bit atomic with the orderings the algorithms need.
pub(crate) trait AtomicWord {
    fn load_acquire(&self) -> u64;
    fn store_release(&self, value: u64);
    /// Strong compare-and-swap: acquire-release on success, acquire on
    /// failure.
    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64>;
    /// Weak compare-and-swap (may fail spuriously), for loops.
    fn compare_exchange_weak(&self, current: u64, new: u64) -> Result<u64, u64>;
    /// Wrapping add, acquire-release; returns the old value.
    fn fetch_add(&self, value: u64) -> u64;
}

impl AtomicWord for AtomicU64 {
    #[inline]
    fn load_acquire(&self) -> u64 {
        self.load(Ordering::Acquire)
    }

    #[inline]
    fn store_release(&self, value: u64) {
        self.store(value, Ordering::Release)
    }

    #[inline]
    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64> {
        AtomicU64::compare_exchange(self, current, new, Ordering::AcqRel, Ordering::Acquire)
    }

    #[inline]
    fn compare_exchange_weak(&self, current: u64, new: u64) -> Result<u64, u64> {
        AtomicU64::compare_exchange_weak(self, current, new, Ordering::AcqRel, Ordering::Acquire)
    }

    #[inline]
    fn fetch_add(&self, value: u64) -> u64 {
        AtomicU64::fetch_add(self, value, Ordering::AcqRel)
    }
}

/// The same word on `loom`'s atomic, for the model checks.
#[cfg(test)]
pub(crate) struct LoomWord(pub(crate) loom::sync::atomic::AtomicU64);

#[cfg(test)]
impl LoomWord {
    pub(crate) fn new(value: u64) -> LoomWord {
        LoomWord(loom::sync::atomic::AtomicU64::new(value))
    }
}

#[cfg(test)]
impl AtomicWord for LoomWord {
    fn load_acquire(&self) -> u64 {
        self.0.load(loom::sync::atomic::Ordering::Acquire)
    }

    fn store_release(&self, value: u64) {
        self.0.store(value, loom::sync::atomic::Ordering::Release)
    }

    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64> {
        use loom::sync::atomic::Ordering::{AcqRel, Acquire};
        self.0.compare_exchange(current, new, AcqRel, Acquire)
    }

    fn compare_exchange_weak(&self, current: u64, new: u64) -> Result<u64, u64> {
        use loom::sync::atomic::Ordering::{AcqRel, Acquire};
        self.0.compare_exchange_weak(current, new, AcqRel, Acquire)
    }

    fn fetch_add(&self, value: u64) -> u64 {
        self.0
            .fetch_add(value, loom::sync::atomic::Ordering::AcqRel)
    }
}
