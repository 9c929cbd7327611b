//! The one std/loom shim: the atomics the lock-free algorithms run on,
//! `std`'s in a segment and `loom`'s in the model checks, so that both
//! execute the same lines. Every algorithm that loom checks (cursor, slot
//! stacks, tagged stacks, the rings, the reader-writer handshake, the
//! object pool) is generic over these traits.
//!
//! [`Atomic64`] and [`Atomic32`] take explicit orderings; [`AtomicWord`]
//! is the 64-bit word with the orderings most algorithms use fixed.

use std::sync::atomic::Ordering;

macro_rules! atomic_trait {
    ($(#[$doc:meta])* $trait:ident, $int:ty) => {
        $(#[$doc])*
        // The whole shim, though each algorithm uses only part of it.
        #[allow(dead_code)]
        pub(crate) trait $trait: Send + Sync {
            fn load(&self, order: Ordering) -> $int;
            fn store(&self, value: $int, order: Ordering);
            fn compare_exchange(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int>;
            /// May fail spuriously: for loops.
            fn compare_exchange_weak(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int>;
            /// Wrapping add; returns the old value.
            fn fetch_add(&self, value: $int, order: Ordering) -> $int;
            /// Wrapping subtract; returns the old value.
            fn fetch_sub(&self, value: $int, order: Ordering) -> $int;
            /// A fence of the same flavour (`std`'s or `loom`'s).
            fn fence(order: Ordering);
        }
    };
}

atomic_trait!(
    /// A 64-bit atomic.
    Atomic64,
    u64
);
atomic_trait!(
    /// A 32-bit atomic (futex words, reader slots).
    Atomic32,
    u32
);

macro_rules! impl_atomic {
    ($trait:ident for $atomic:ty, $int:ty, $fence:path) => {
        impl $trait for $atomic {
            #[inline]
            fn load(&self, order: Ordering) -> $int {
                <$atomic>::load(self, order)
            }
            #[inline]
            fn store(&self, value: $int, order: Ordering) {
                <$atomic>::store(self, value, order)
            }
            #[inline]
            fn compare_exchange(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                <$atomic>::compare_exchange(self, current, new, success, failure)
            }
            #[inline]
            fn compare_exchange_weak(
                &self,
                current: $int,
                new: $int,
                success: Ordering,
                failure: Ordering,
            ) -> Result<$int, $int> {
                <$atomic>::compare_exchange_weak(self, current, new, success, failure)
            }
            #[inline]
            fn fetch_add(&self, value: $int, order: Ordering) -> $int {
                <$atomic>::fetch_add(self, value, order)
            }
            #[inline]
            fn fetch_sub(&self, value: $int, order: Ordering) -> $int {
                <$atomic>::fetch_sub(self, value, order)
            }
            #[inline]
            fn fence(order: Ordering) {
                $fence(order)
            }
        }
    };
}

impl_atomic!(Atomic64 for std::sync::atomic::AtomicU64, u64, std::sync::atomic::fence);
impl_atomic!(Atomic32 for std::sync::atomic::AtomicU32, u32, std::sync::atomic::fence);
#[cfg(test)]
impl_atomic!(Atomic64 for loom::sync::atomic::AtomicU64, u64, loom::sync::atomic::fence);
#[cfg(test)]
impl_atomic!(Atomic32 for loom::sync::atomic::AtomicU32, u32, loom::sync::atomic::fence);

/// The 64-bit word with the orderings most algorithms use: acquire loads,
/// release stores, acquire-release read-modify-writes.
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

impl<W: Atomic64> AtomicWord for W {
    #[inline]
    fn load_acquire(&self) -> u64 {
        Atomic64::load(self, Ordering::Acquire)
    }

    #[inline]
    fn store_release(&self, value: u64) {
        Atomic64::store(self, value, Ordering::Release)
    }

    #[inline]
    fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64> {
        Atomic64::compare_exchange(self, current, new, Ordering::AcqRel, Ordering::Acquire)
    }

    #[inline]
    fn compare_exchange_weak(&self, current: u64, new: u64) -> Result<u64, u64> {
        Atomic64::compare_exchange_weak(self, current, new, Ordering::AcqRel, Ordering::Acquire)
    }

    #[inline]
    fn fetch_add(&self, value: u64) -> u64 {
        Atomic64::fetch_add(self, value, Ordering::AcqRel)
    }
}

/// `loom`'s 64-bit word, for the model checks.
#[cfg(test)]
pub(crate) type LoomWord = loom::sync::atomic::AtomicU64;
