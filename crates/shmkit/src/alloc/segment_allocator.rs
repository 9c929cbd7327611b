//! The contract between a segment and the allocator whose state lives in it.

use std::marker::PhantomData;
use std::ops::Deref;

use crate::error::Result;
use crate::segment::header::PARAM_WORDS;
use crate::segment::{Opened, Segment, SegmentOptions};

use super::AllocatorKind;
use crate::segment::AllocatorSetup;

/// An allocator whose whole state lives inside a segment.
///
/// Implementors describe their state (kind, parameters, size) and how to
/// initialize it; the provided methods run the creation handshake (header,
/// initialization, *ready*) and the attach checks (the kind and parameters
/// recorded in the header must match).
pub trait SegmentAllocator: Sized {
    /// The kind recorded in the header.
    const KIND: AllocatorKind;

    /// Creation parameters (slot size, say); `()` when there are none.
    type Params: Clone + Default + std::fmt::Debug;

    /// The parameters as header words (also covered by the layout hash).
    fn encode_params(params: &Self::Params) -> [u64; PARAM_WORDS];

    /// Bytes of allocator state to reserve after the header.
    fn state_len(params: &Self::Params) -> u64;

    /// Writes the initial state; runs in the creator before *ready*.
    fn initialize(segment: &Segment, params: &Self::Params) -> Result<()>;

    /// The process-local view over a validated segment of kind `KIND`.
    fn from_segment(segment: Segment) -> Result<Self>;

    /// Creates a segment managed by this allocator, with default parameters.
    fn create(options: &SegmentOptions) -> Result<Self> {
        Self::create_with(options, &Self::Params::default())
    }

    /// Creates a segment managed by this allocator.
    fn create_with(options: &SegmentOptions, params: &Self::Params) -> Result<Self> {
        let init = |segment: &Segment| Self::initialize(segment, params);
        let segment = Segment::create_with(options, &setup::<Self>(params, &init))?;
        Self::from_segment(segment)
    }

    /// Attaches a segment that this kind of allocator manages, whatever its
    /// parameters.
    fn attach(options: &SegmentOptions) -> Result<Self> {
        let segment = Segment::attach(options)?;
        segment.expect_allocator(Self::KIND, None)?;
        Self::from_segment(segment)
    }

    /// Attaches a segment managed by this allocator with exactly `params`.
    fn attach_with(options: &SegmentOptions, params: &Self::Params) -> Result<Self> {
        let segment = Segment::attach(options)?;
        segment.expect_allocator(Self::KIND, Some(&Self::encode_params(params)))?;
        Self::from_segment(segment)
    }

    /// Attaches if the segment exists (checking kind and parameters),
    /// creates it otherwise, and says which happened.
    fn open_or_create(options: &SegmentOptions) -> Result<(Self, Opened)> {
        Self::open_or_create_with(options, &Self::Params::default())
    }

    /// [`open_or_create`](Self::open_or_create) with explicit parameters.
    fn open_or_create_with(
        options: &SegmentOptions,
        params: &Self::Params,
    ) -> Result<(Self, Opened)> {
        let init = |segment: &Segment| Self::initialize(segment, params);
        let (segment, opened) =
            Segment::open_or_create_with(options, &setup::<Self>(params, &init))?;
        segment.expect_allocator(Self::KIND, Some(&Self::encode_params(params)))?;
        Ok((Self::from_segment(segment)?, opened))
    }

    /// Manages a caller's buffer (the start is moved up to a 128-byte
    /// boundary). The allocator cannot outlive the buffer.
    ///
    /// ```
    /// use shmkit::{BumpAllocator, LinearAlloc, SegmentAllocator};
    ///
    /// let mut buffer = vec![0u8; 64 << 10];
    /// let bump = BumpAllocator::in_buffer(&mut buffer)?;
    /// let block = bump.alloc(100, 8)?;
    /// assert!(bump.owns(block.as_ptr()));
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    fn in_buffer(buffer: &mut [u8]) -> Result<InBuffer<'_, Self>> {
        // SAFETY: the exclusive borrow of `buffer` is held by the returned
        // `InBuffer` for its whole life, so the region stays valid and nobody
        // else touches it.
        let allocator = unsafe { Self::in_raw_region(buffer.as_mut_ptr(), buffer.len())? };
        Ok(InBuffer {
            allocator,
            _buffer: PhantomData,
        })
    }

    /// Manages a raw region of memory (shared by means outside shmkit, say).
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be valid for reads and writes for as long as the
    /// allocator lives, and not be used through any other path meanwhile.
    unsafe fn in_raw_region(ptr: *mut u8, len: usize) -> Result<Self> {
        let params = Self::Params::default();
        let init = |segment: &Segment| Self::initialize(segment, &params);
        // SAFETY: forwarded from this function's contract.
        let segment =
            unsafe { Segment::create_in_region(ptr, len, &setup::<Self>(&params, &init))? };
        Self::from_segment(segment)
    }
}

fn setup<'a, A: SegmentAllocator>(
    params: &A::Params,
    init: &'a dyn Fn(&Segment) -> Result<()>,
) -> AllocatorSetup<'a> {
    AllocatorSetup {
        kind: A::KIND,
        params: A::encode_params(params),
        state_len: A::state_len(params),
        init,
    }
}

/// An allocator over a borrowed buffer; it derefs to the allocator and cannot
/// outlive the buffer (nor be moved out of this guard).
pub struct InBuffer<'buf, A> {
    allocator: A,
    _buffer: PhantomData<&'buf mut [u8]>,
}

impl<A> Deref for InBuffer<'_, A> {
    type Target = A;

    fn deref(&self) -> &A {
        &self.allocator
    }
}
