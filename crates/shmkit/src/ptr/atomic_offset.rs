//! `AtomicOffset<T>`: an offset that processes update atomically.

use std::fmt;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{Offset, ShmSafe};

/// An [`Offset`] that several processes load, store and compare-and-swap
/// atomically; the shared-memory counterpart of `AtomicPtr`.
///
/// ```
/// use shmkit::{AtomicOffset, Offset};
/// use std::sync::atomic::Ordering;
///
/// let head = AtomicOffset::<u64>::null();
/// let node = Offset::from_raw(4096);
/// assert!(head.compare_exchange(Offset::null(), node, Ordering::AcqRel, Ordering::Acquire).is_ok());
/// assert_eq!(head.load(Ordering::Acquire), node);
/// ```
#[repr(transparent)]
pub struct AtomicOffset<T> {
    raw: AtomicU64,
    _type: PhantomData<fn() -> T>,
}

impl<T> AtomicOffset<T> {
    /// A new atomic offset holding `value`.
    pub const fn new(value: Offset<T>) -> Self {
        AtomicOffset {
            raw: AtomicU64::new(value.raw()),
            _type: PhantomData,
        }
    }

    /// A new atomic offset holding null.
    pub const fn null() -> Self {
        Self::new(Offset::null())
    }

    /// Loads the offset.
    pub fn load(&self, order: Ordering) -> Offset<T> {
        Offset::from_raw(self.raw.load(order))
    }

    /// Stores an offset.
    pub fn store(&self, value: Offset<T>, order: Ordering) {
        self.raw.store(value.raw(), order);
    }

    /// Stores an offset and returns the previous one.
    pub fn swap(&self, value: Offset<T>, order: Ordering) -> Offset<T> {
        Offset::from_raw(self.raw.swap(value.raw(), order))
    }

    /// Stores `new` if the current value is `current`; returns the previous
    /// value as `Ok` on success and `Err` on failure.
    pub fn compare_exchange(
        &self,
        current: Offset<T>,
        new: Offset<T>,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Offset<T>, Offset<T>> {
        self.raw
            .compare_exchange(current.raw(), new.raw(), success, failure)
            .map(Offset::from_raw)
            .map_err(Offset::from_raw)
    }

    /// Like [`compare_exchange`](Self::compare_exchange) but may fail
    /// spuriously; for use in loops.
    pub fn compare_exchange_weak(
        &self,
        current: Offset<T>,
        new: Offset<T>,
        success: Ordering,
        failure: Ordering,
    ) -> Result<Offset<T>, Offset<T>> {
        self.raw
            .compare_exchange_weak(current.raw(), new.raw(), success, failure)
            .map(Offset::from_raw)
            .map_err(Offset::from_raw)
    }
}

impl<T> Default for AtomicOffset<T> {
    fn default() -> Self {
        Self::null()
    }
}

impl<T> fmt::Debug for AtomicOffset<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AtomicOffset({:?})", self.load(Ordering::Relaxed))
    }
}

// SAFETY: a `repr(transparent)` `AtomicU64`, which is `ShmSafe`.
unsafe impl<T: 'static> ShmSafe for AtomicOffset<T> {}
