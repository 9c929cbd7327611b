//! `FullPtr<T>`: the local address and the shared form, side by side.

use std::fmt;
use std::ptr::NonNull;

use super::{Offset, SegmentId, ShmPtr};

/// A pointer that carries both its local address (valid in this process) and
/// its shared form (valid in every process).
///
/// Allocators hand these out: use [`local`](Self::local) to touch the bytes and
/// [`shm`](Self::shm) or [`offset`](Self::offset) to store or send the
/// reference. Build one from either side with
/// [`Segment::full_ptr`](crate::Segment::full_ptr) or
/// [`Segment::full_ptr_from_local`](crate::Segment::full_ptr_from_local).
///
/// A `FullPtr` holds an address, so it is not [`ShmSafe`](crate::ShmSafe):
/// store its [`ShmPtr`] instead.
pub struct FullPtr<T> {
    local: NonNull<T>,
    shm: ShmPtr<T>,
}

// SAFETY: a `FullPtr` is a pair of numbers; it grants no access by itself
// (every dereference is `unsafe` and must argue for itself), so moving or
// sharing it between threads is harmless.
unsafe impl<T> Send for FullPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for FullPtr<T> {}

impl<T> FullPtr<T> {
    /// Pairs a local pointer with its shared form. Callers inside shmkit
    /// guarantee that the two name the same bytes.
    pub(crate) fn new(local: NonNull<T>, shm: ShmPtr<T>) -> Self {
        FullPtr { local, shm }
    }

    /// The address in this process.
    pub fn local(&self) -> NonNull<T> {
        self.local
    }

    /// The address in this process, as a raw pointer.
    pub fn as_ptr(&self) -> *mut T {
        self.local.as_ptr()
    }

    /// The shared form (segment id + offset).
    pub fn shm(&self) -> ShmPtr<T> {
        self.shm
    }

    /// The segment-relative offset.
    pub fn offset(&self) -> Offset<T> {
        self.shm.offset
    }

    /// The segment this pointer belongs to.
    pub fn segment_id(&self) -> SegmentId {
        self.shm.segment
    }

    /// Whether the shared form is null. A `FullPtr` built by shmkit never is;
    /// this exists for symmetry with [`ShmPtr::is_null`].
    pub fn is_null(&self) -> bool {
        self.shm.is_null()
    }

    /// The same pointer, typed as another `U`. Alignment is not rechecked:
    /// decode through the segment again when `U` needs a stricter one.
    pub fn cast<U>(self) -> FullPtr<U> {
        FullPtr {
            local: self.local.cast(),
            shm: self.shm.cast(),
        }
    }
}

impl<T> Clone for FullPtr<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for FullPtr<T> {}

impl<T> PartialEq for FullPtr<T> {
    fn eq(&self, other: &Self) -> bool {
        self.shm == other.shm && self.local == other.local
    }
}
impl<T> Eq for FullPtr<T> {}

impl<T> fmt::Debug for FullPtr<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FullPtr({:p}, {:?})", self.local, self.shm)
    }
}
