//! `Offset<T>`: a segment-relative reference, the same in every process.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;

use super::ShmSafe;

/// A typed offset from the start of a segment.
///
/// Offsets are what shmkit stores inside segments instead of addresses: each
/// process maps a segment wherever its kernel chooses, and an offset names the
/// same bytes in all of them. Offset `0` is the segment header, which no
/// allocation can ever occupy, so it doubles as the null value (and zeroed
/// memory reads as null).
///
/// An `Offset` is only a number; turning it into a pointer goes through a
/// [`Segment`](crate::Segment), which checks bounds and alignment and returns a
/// [`Result`](crate::Result):
///
/// ```
/// use shmkit::{Offset, Segment, SegmentOptions};
///
/// let segment = Segment::create(&SegmentOptions::private().size(1 << 20))?;
/// let bogus: Offset<u64> = Offset::from_raw(u64::MAX - 3);
/// assert!(segment.resolve(bogus).is_err());
/// assert!(segment.resolve(Offset::<u64>::null()).is_err());
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(transparent)]
pub struct Offset<T> {
    raw: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> Offset<T> {
    /// The null offset.
    pub const fn null() -> Self {
        Self::from_raw(0)
    }

    /// An offset from its raw byte value.
    pub const fn from_raw(raw: u64) -> Self {
        Offset {
            raw,
            _type: PhantomData,
        }
    }

    /// The byte offset from the start of the segment.
    pub const fn raw(self) -> u64 {
        self.raw
    }

    /// Whether this is the null offset.
    pub const fn is_null(self) -> bool {
        self.raw == 0
    }

    /// The same offset, typed as another `U`.
    pub const fn cast<U>(self) -> Offset<U> {
        Offset::from_raw(self.raw)
    }

    /// The offset of element `count` of an array starting here, or `None` on
    /// overflow.
    pub fn checked_add(self, count: u64) -> Option<Self> {
        let bytes = count.checked_mul(std::mem::size_of::<T>() as u64)?;
        self.checked_byte_add(bytes)
    }

    /// This offset moved forward by `bytes`, or `None` on overflow.
    pub fn checked_byte_add(self, bytes: u64) -> Option<Self> {
        self.raw.checked_add(bytes).map(Self::from_raw)
    }
}

impl<T> Clone for Offset<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Offset<T> {}

impl<T> PartialEq for Offset<T> {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}
impl<T> Eq for Offset<T> {}

impl<T> PartialOrd for Offset<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Offset<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.raw.cmp(&other.raw)
    }
}

impl<T> Hash for Offset<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.raw.hash(state);
    }
}

impl<T> Default for Offset<T> {
    fn default() -> Self {
        Self::null()
    }
}

impl<T> fmt::Debug for Offset<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_null() {
            f.write_str("Offset(null)")
        } else {
            write!(f, "Offset({:#x})", self.raw)
        }
    }
}

// SAFETY: an offset is a plain `u64` (`repr(transparent)`), not an address;
// every bit pattern is a valid (possibly out-of-range, hence checked) offset.
unsafe impl<T: 'static> ShmSafe for Offset<T> {}
