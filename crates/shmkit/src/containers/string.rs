//! `ShmString`: a growable UTF-8 string that lives in a segment.

use std::fmt;

use crate::alloc::ShmAllocator;
use crate::error::{Error, Result};
use crate::ptr::ShmSafe;

use super::vec::ShmVec;

/// A growable UTF-8 string whose bytes live in a segment; the
/// shared-memory counterpart of `String`, built on [`ShmVec<u8>`].
///
/// Like every container here it holds offsets only (32 bytes), takes the
/// segment's allocator on each operation that reads or allocates, checks its
/// fields first, and has no `Drop`: call [`free`](Self::free) to return the
/// bytes (forgetting it leaks them, like a leaked `Box`).
///
/// The bytes in shared memory may have been changed by another process or
/// left half-written by a crashed one, so [`as_str`](Self::as_str) checks
/// that they are UTF-8 and reports [`Error::CorruptData`] otherwise.
///
/// Not synchronized: see the [module documentation](crate::containers).
///
/// ```
/// use shmkit::containers::ShmString;
/// use shmkit::{SegmentAllocator, SegmentOptions, SizeClassAllocator};
///
/// let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let mut greeting = ShmString::from_str_in(&heap, "hello")?;
/// greeting.push_str(&heap, ", world")?;
/// greeting.push(&heap, '!')?;
/// assert_eq!(greeting.as_str(&heap)?, "hello, world!");
/// greeting.free(&heap)?;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct ShmString {
    bytes: ShmVec<u8>,
}

// SAFETY: `repr(C)` around one `ShmVec<u8>`, which is `ShmSafe`; no padding.
unsafe impl ShmSafe for ShmString {}

impl ShmString {
    /// An empty string; it allocates on the first push.
    pub const fn new() -> Self {
        ShmString {
            bytes: ShmVec::new(),
        }
    }

    /// An empty string with room for `capacity` bytes.
    pub fn with_capacity<A: ShmAllocator + ?Sized>(alloc: &A, capacity: usize) -> Result<Self> {
        Ok(ShmString {
            bytes: ShmVec::with_capacity(alloc, capacity)?,
        })
    }

    /// A copy of `s` in the segment.
    pub fn from_str_in<A: ShmAllocator + ?Sized>(alloc: &A, s: &str) -> Result<Self> {
        let mut string = Self::with_capacity(alloc, s.len())?;
        string.push_str(alloc, s)?;
        Ok(string)
    }

    /// Appends `s`. On error the string is unchanged.
    pub fn push_str<A: ShmAllocator + ?Sized>(&mut self, alloc: &A, s: &str) -> Result<()> {
        self.bytes.extend_from_slice(alloc, s.as_bytes())
    }

    /// Appends one character. On error the string is unchanged.
    pub fn push<A: ShmAllocator + ?Sized>(&mut self, alloc: &A, ch: char) -> Result<()> {
        self.push_str(alloc, ch.encode_utf8(&mut [0; 4]))
    }

    /// Removes and returns the last character.
    pub fn pop<A: ShmAllocator + ?Sized>(&mut self, alloc: &A) -> Result<Option<char>> {
        let Some(last) = self.as_str(alloc)?.chars().next_back() else {
            return Ok(None);
        };
        self.bytes
            .truncate(alloc, self.bytes.len() - last.len_utf8())?;
        Ok(Some(last))
    }

    /// The string, checked to be UTF-8 ([`Error::CorruptData`] if not).
    pub fn as_str<'a, A: ShmAllocator + ?Sized>(&'a self, alloc: &'a A) -> Result<&'a str> {
        std::str::from_utf8(self.bytes.as_slice(alloc)?)
            .map_err(|err| Error::corrupt_data("string", format!("its bytes are not UTF-8: {err}")))
    }

    /// The bytes, unchecked for UTF-8.
    pub fn as_bytes<'a, A: ShmAllocator + ?Sized>(&'a self, alloc: &'a A) -> Result<&'a [u8]> {
        self.bytes.as_slice(alloc)
    }

    /// The length in bytes, as recorded.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The number of bytes the storage holds, as recorded.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Makes room for at least `additional` more bytes. On error the string
    /// is unchanged.
    pub fn reserve<A: ShmAllocator + ?Sized>(
        &mut self,
        alloc: &A,
        additional: usize,
    ) -> Result<()> {
        self.bytes.reserve(alloc, additional)
    }

    /// Empties the string, keeping its storage. (Bytes need no drop, so this
    /// touches no shared memory and needs no allocator.)
    pub fn clear(&mut self) {
        self.bytes.clear_copy();
    }

    /// Returns the storage to `alloc`; the string is then empty.
    pub fn free<A: ShmAllocator + ?Sized>(&mut self, alloc: &A) -> Result<()> {
        self.bytes.free(alloc)
    }
}

impl Default for ShmString {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ShmString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmString")
            .field("bytes", &self.bytes)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::vec::tests::{free_list, heap};
    use proptest::prelude::*;

    #[test]
    fn builds_and_reads_back() {
        let heap = heap(1 << 20);
        let mut s = ShmString::new();
        assert_eq!(s.as_str(&heap).unwrap(), "");
        s.push_str(&heap, "grüße").unwrap();
        s.push(&heap, '🦀').unwrap();
        assert_eq!(s.as_str(&heap).unwrap(), "grüße🦀");
        assert_eq!(s.len(), "grüße🦀".len());
        assert_eq!(s.pop(&heap).unwrap(), Some('🦀'));
        assert_eq!(s.pop(&heap).unwrap(), Some('e'));
        assert_eq!(s.as_bytes(&heap).unwrap(), "grüß".as_bytes());
        s.clear();
        assert!(s.is_empty());
        assert_eq!(s.pop(&heap).unwrap(), None);
        assert!(s.capacity() >= "grüße🦀".len());
        s.free(&heap).unwrap();
        assert_eq!(heap.stats().live_allocations, 0);
    }

    #[test]
    fn non_utf8_bytes_are_corrupt_data() {
        let heap = heap(1 << 20);
        let mut s = ShmString::from_str_in(&heap, "abc").unwrap();
        // Another process (or a crash) leaves a byte that ends no character.
        s.bytes.as_mut_slice(&heap).unwrap()[1] = 0xff;
        let err = s.as_str(&heap).unwrap_err();
        assert!(
            matches!(err, Error::CorruptData { what: "string", .. }),
            "{err}"
        );
        assert!(matches!(s.pop(&heap), Err(Error::CorruptData { .. })));
        assert_eq!(s.as_bytes(&heap).unwrap(), b"a\xffc");
        s.free(&heap).unwrap();
    }

    #[test]
    fn foreign_allocator_is_refused() {
        let (home, other) = (free_list(1 << 20), free_list(1 << 20));
        let mut s = ShmString::from_str_in(&home, "mine").unwrap();
        assert!(matches!(s.as_str(&other), Err(Error::ForeignPointer)));
        assert!(matches!(
            s.push_str(&other, "x"),
            Err(Error::ForeignPointer)
        ));
        assert_eq!(s.as_str(&home).unwrap(), "mine");
        s.free(&home).unwrap();
    }

    #[derive(Clone, Debug)]
    enum Op {
        PushStr(String),
        Push(char),
        Pop,
        Clear,
        Reserve(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => ".{0,12}".prop_map(Op::PushStr),
            4 => any::<char>().prop_map(Op::Push),
            2 => Just(Op::Pop),
            1 => Just(Op::Clear),
            1 => (0..64usize).prop_map(Op::Reserve),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn behaves_like_std_string(ops in proptest::collection::vec(op(), 0..120)) {
            let heap = heap(2 << 20);
            let mut s = ShmString::new();
            let mut model = String::new();
            for op in ops {
                match op {
                    Op::PushStr(t) => {
                        s.push_str(&heap, &t).unwrap();
                        model.push_str(&t);
                    }
                    Op::Push(c) => {
                        s.push(&heap, c).unwrap();
                        model.push(c);
                    }
                    Op::Pop => prop_assert_eq!(s.pop(&heap).unwrap(), model.pop()),
                    Op::Clear => {
                        s.clear();
                        model.clear();
                    }
                    Op::Reserve(n) => {
                        s.reserve(&heap, n).unwrap();
                        prop_assert!(s.capacity() >= model.len() + n);
                    }
                }
                prop_assert_eq!(s.len(), model.len());
                prop_assert_eq!(s.as_str(&heap).unwrap(), model.as_str());
            }
            s.free(&heap).unwrap();
            prop_assert_eq!(heap.stats().live_allocations, 0);
        }
    }
}
