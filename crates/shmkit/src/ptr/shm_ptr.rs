//! `ShmPtr<T>`: a segment id plus an offset, meaningful in any process.

use std::fmt;

use super::{Offset, ShmSafe};

/// The identity of a segment: a random 64-bit number drawn when the segment
/// is created and stored in its header. Every process that attaches the
/// segment reads the same id, so a [`ShmPtr`] names one object everywhere.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SegmentId(pub u64);

impl SegmentId {
    /// The id of process-local memory (the malloc allocator): pointers with
    /// it are addresses of one process, not offsets.
    pub const PROCESS_LOCAL: SegmentId = SegmentId(u64::MAX);
}

impl fmt::Debug for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SegmentId({:016x})", self.0)
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

// SAFETY: a plain `u64`.
unsafe impl ShmSafe for SegmentId {}

/// A shared pointer: which segment, and where in it.
///
/// This is the form to store in shared memory or send to another process when
/// more than one segment is in play. Turn it into a local pointer with
/// [`Segment::full_ptr`](crate::Segment::full_ptr), which checks that the id
/// matches and that the offset is in bounds.
#[repr(C)]
pub struct ShmPtr<T> {
    /// The segment the offset belongs to.
    pub segment: SegmentId,
    /// The offset inside that segment.
    pub offset: Offset<T>,
}

impl<T> ShmPtr<T> {
    /// A pointer into `segment` at `offset`.
    pub const fn new(segment: SegmentId, offset: Offset<T>) -> Self {
        ShmPtr { segment, offset }
    }

    /// The null shared pointer (null segment id, null offset).
    pub const fn null() -> Self {
        ShmPtr::new(SegmentId(0), Offset::null())
    }

    /// Whether the offset is null.
    pub const fn is_null(self) -> bool {
        self.offset.is_null()
    }

    /// The same pointer, typed as another `U`.
    pub const fn cast<U>(self) -> ShmPtr<U> {
        ShmPtr::new(self.segment, self.offset.cast())
    }
}

impl<T> Clone for ShmPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for ShmPtr<T> {}

impl<T> PartialEq for ShmPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.segment == other.segment && self.offset == other.offset
    }
}
impl<T> Eq for ShmPtr<T> {}

impl<T> std::hash::Hash for ShmPtr<T> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.segment.hash(state);
        self.offset.hash(state);
    }
}

impl<T> Default for ShmPtr<T> {
    fn default() -> Self {
        Self::null()
    }
}

impl<T> fmt::Debug for ShmPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShmPtr({}, {:?})", self.segment, self.offset)
    }
}

// SAFETY: `repr(C)` of two `u64`-like fields, both `ShmSafe`, no padding.
unsafe impl<T: 'static> ShmSafe for ShmPtr<T> {}
