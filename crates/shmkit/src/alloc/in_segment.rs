//! The shell every allocator in a segment shares: the segment handle and the
//! allocator's state inside it, which lives exactly as long as the handle.
//!
//! The state is reached through atomics only (or words written once before
//! the segment is ready), so a view of it may be shared and sent between
//! threads as freely as a `&S`. That argument is made once, here, for every
//! allocator.

use std::ptr::NonNull;

use crate::error::Result;
use crate::segment::Segment;

/// A pointer to shared state in a segment, which some handle keeps mapped:
/// as shareable across threads as a `&T`.
pub(crate) struct StatePtr<T: ?Sized>(NonNull<T>);

// SAFETY: a `StatePtr` stands for a `&T` into a mapping its holder keeps
// alive; `&T` is `Send` and `Sync` exactly when `T: Sync`.
unsafe impl<T: ?Sized + Sync> Send for StatePtr<T> {}
// SAFETY: as above.
unsafe impl<T: ?Sized + Sync> Sync for StatePtr<T> {}

impl<T: ?Sized> StatePtr<T> {
    pub(crate) fn new(ptr: NonNull<T>) -> StatePtr<T> {
        StatePtr(ptr)
    }

    /// The raw pointer.
    #[inline]
    pub(crate) fn as_ptr(&self) -> *mut T {
        self.0.as_ptr()
    }
}

impl<T: ?Sized> Clone for StatePtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: ?Sized> Copy for StatePtr<T> {}

/// A segment and the allocator state `S` at its state offset.
pub(crate) struct InSegment<S> {
    segment: Segment,
    state: StatePtr<S>,
}

impl<S: Sync> InSegment<S> {
    /// The shell over a validated segment whose state area holds an `S`
    /// (size and alignment are checked).
    pub(crate) fn new(segment: Segment) -> Result<InSegment<S>> {
        let state = StatePtr::new(segment.allocator_state::<S>()?);
        Ok(InSegment { segment, state })
    }

    /// The segment.
    #[inline]
    pub(crate) fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The allocator's state in the segment.
    #[inline]
    pub(crate) fn state(&self) -> &S {
        // SAFETY: `state` points into the segment, which `self` keeps mapped
        // for as long as the returned borrow; `allocator_state` checked size
        // and alignment; every allocator state is made of atomics (and words
        // written before *ready*), valid for any bytes and shared through
        // atomic operations only.
        unsafe { &*self.state.as_ptr() }
    }

    /// The state's address, for tests that forge its bytes.
    #[cfg(test)]
    pub(crate) fn state_ptr(&self) -> *mut S {
        self.state.as_ptr()
    }
}
