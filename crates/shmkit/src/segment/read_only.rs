//! Read-only attachment: a handle on a segment that cannot write to it.
//!
//! The object is opened `O_RDONLY` and mapped `PROT_READ`, so the kernel
//! refuses every store (a write through a pointer faults) and `mprotect`
//! cannot add write access later. Attaching shares the read-write path's
//! wait-and-validate code, which only loads; every shared word this module
//! reads is read with a relaxed load (ordered by a fence where needed), the
//! only atomic access Rust promises will not fault on read-only pages.

use std::os::fd::BorrowedFd;

use super::backend::{Access, Backed, Mapping};
use super::handshake::{open_validated, Validated};
use super::header::{self, Header, PARAM_WORDS};
use super::kind::AllocatorKind;
use super::{check_range_within, resolve_within, Fixed, Location, Segment, SegmentOptions};
use crate::error::Result;
use crate::ptr::{Offset, SegmentId, ShmSafe};

/// A segment attached for reading only.
///
/// A distinct type from [`Segment`] on purpose: every allocator is built on a
/// `Segment`, and this type offers no way to get one, so nothing that writes
/// can be built on a read-only attachment. Underneath, the mapping itself is
/// read-only: a write through a pointer from [`resolve`](Self::resolve)
/// faults instead of changing shared memory.
///
/// Other processes may go on writing while this one reads. The safe readers
/// ([`read`](Self::read), [`read_bytes`](Self::read_bytes)) copy the bytes
/// out; a value that another process changes meanwhile may come out torn,
/// which [`ShmSafe`] types tolerate. Only named segments and descriptors can
/// be attached: private memory and new memfds are create-only.
///
/// ```
/// use shmkit::{BumpAllocator, LinearAlloc, ReadOnlySegment, SegmentAllocator, SegmentOptions};
///
/// let name = format!("shmkit-doc-read-only-{}", std::process::id());
/// let options = SegmentOptions::shm(&name).size(1 << 20);
///
/// // A writer publishes a value...
/// let writer = BumpAllocator::create(&options)?;
/// let answer = writer.make_handle(42u64)?;
/// writer.segment().set_root("answer", answer)?;
///
/// // ...which a process that must not write finds and copies out.
/// let reader = ReadOnlySegment::attach(&options)?;
/// assert_eq!(reader.id(), writer.segment().id());
/// let found = reader.root::<u64>("answer").expect("published");
/// assert_eq!(reader.read(found)?, 42);
///
/// writer.segment().unlink()?;
/// # Ok::<(), shmkit::Error>(())
/// ```
///
/// It has no method that writes:
///
/// ```compile_fail
/// # fn publish(reader: &shmkit::ReadOnlySegment) -> shmkit::Result<()> {
/// reader.set_root("mine", shmkit::Offset::<u64>::null())?;
/// # Ok(())
/// # }
/// ```
pub struct ReadOnlySegment {
    mapping: Mapping,
    /// The descriptor and how much of its object is known to exist.
    backed: Backed,
    location: Location,
    /// Header fields that never change after creation, as validated on
    /// attach (see [`Segment`]'s field of the same name).
    fixed: Fixed,
}

impl std::fmt::Debug for ReadOnlySegment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadOnlySegment")
            .field("location", &self.location)
            .field("id", &self.id())
            .field("size", &self.size())
            .field("max_size", &self.max_size())
            .field("allocator", &self.allocator_kind())
            .finish()
    }
}

impl Segment {
    /// Attaches to an existing segment for reading only; see
    /// [`ReadOnlySegment::attach`].
    pub fn attach_read_only(options: &SegmentOptions) -> Result<ReadOnlySegment> {
        ReadOnlySegment::attach(options)
    }
}

impl ReadOnlySegment {
    /// Attaches to an existing segment for reading only, whatever allocator
    /// it holds.
    ///
    /// Opens the object read-only (so a file or shared-memory object whose
    /// permissions grant only reading can be attached), then waits for it and
    /// validates its header exactly as [`Segment::attach`] does, with the
    /// same errors. A [`Location::Fd`] is duplicated and mapped read-only;
    /// pass a descriptor opened read-only to keep `unsafe` code from making
    /// the mapping writable with `mprotect`. [`Location::Private`] and
    /// [`Location::Memfd`] are refused with `Unsupported`: they name no
    /// existing segment.
    pub fn attach(options: &SegmentOptions) -> Result<ReadOnlySegment> {
        let Validated {
            backed,
            fixed,
            mapping,
        } = open_validated(options, Access::ReadOnly)?;
        Ok(ReadOnlySegment {
            mapping,
            backed,
            location: options.location.clone(),
            fixed,
        })
    }

    /// The header; read it with loads only (see the module documentation).
    fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a `Header` that `attach` validated,
        // is page aligned and outlives `&self`. Fields that other processes
        // change after *ready* are atomics.
        unsafe { self.mapping.base().cast::<Header>().as_ref() }
    }

    /// Where the segment lives.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// The segment's name (or path) as shown in messages.
    pub fn name(&self) -> String {
        self.location.display_name()
    }

    /// The segment id, the same in every process.
    pub fn id(&self) -> SegmentId {
        SegmentId(self.fixed.id)
    }

    /// Bytes backed now, header included; follows the writers' growth (see
    /// [`Segment::size`]).
    pub fn size(&self) -> u64 {
        // Never beyond what this process knows the backing object holds,
        // whatever the shared word says.
        self.backed
            .bound(header::load_acquire_u64(&self.header().size))
    }

    /// The size the segment may grow to.
    pub fn max_size(&self) -> u64 {
        self.fixed.max_size
    }

    /// The size the segment was created with; see [`Segment::capacity`].
    pub fn capacity(&self) -> u64 {
        self.fixed.capacity
    }

    /// Bytes of memory or disk the backing object takes now; see
    /// [`Segment::backed_bytes`].
    pub fn backed_bytes(&self) -> Option<u64> {
        super::backend::allocated_bytes(self.fd())
    }

    /// The allocator that manages the data area.
    pub fn allocator_kind(&self) -> AllocatorKind {
        self.fixed.kind
    }

    /// The allocator's parameters, as recorded at creation.
    pub fn allocator_params(&self) -> [u64; PARAM_WORDS] {
        self.fixed.params
    }

    /// Refuses the segment unless its allocator is `expected` (and, when
    /// given, has exactly these parameters): check this before reading data
    /// laid out by a particular allocator.
    pub fn expect_allocator(
        &self,
        expected: AllocatorKind,
        params: Option<&[u64; PARAM_WORDS]>,
    ) -> Result<()> {
        self.fixed.expect_allocator(expected, params)
    }

    /// The pid of the process that created the segment.
    pub fn creator_pid(&self) -> u32 {
        self.fixed.creator_pid
    }

    /// The on-segment format version.
    pub fn format_version(&self) -> u32 {
        self.fixed.format_version
    }

    /// Offset of the first byte the allocator manages.
    pub fn data_offset(&self) -> u64 {
        self.fixed.data_offset
    }

    /// Address of the segment's first byte in this process. The pages are
    /// mapped read-only: writing through it faults.
    pub fn base(&self) -> *const u8 {
        self.mapping.base().as_ptr()
    }

    /// The read-only descriptor behind the segment (to pass on to another
    /// process that may only read, say).
    pub fn fd(&self) -> BorrowedFd<'_> {
        // An attached segment always has its descriptor.
        self.backed
            .fd()
            .expect("a read-only segment is attached through a descriptor")
    }

    /// Checks that `len` bytes at `offset` lie inside the segment's current
    /// size.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        check_range_within(self.size(), offset, len)
    }

    /// Decodes an offset into a local pointer, checking null, bounds (for one
    /// whole `T`) and alignment.
    ///
    /// The pointer is `const` because the memory is read-only: writing
    /// through it faults. Reading through it is `unsafe` like any raw
    /// pointer, and other processes may change the bytes meanwhile; prefer
    /// [`read`](Self::read), or reach atomics with `unsafe { &*ptr }`.
    pub fn resolve<T>(&self, offset: Offset<T>) -> Result<*const T> {
        self.resolve_array(offset, 1)
    }

    /// Decodes an offset to `count` consecutive `T`s, checking null, bounds
    /// and alignment (see [`resolve`](Self::resolve)).
    pub fn resolve_array<T>(&self, offset: Offset<T>, count: u64) -> Result<*const T> {
        resolve_within(self.mapping.base(), self.size(), offset, count)
            .map(|ptr| ptr.as_ptr().cast_const())
    }

    /// Copies the `T` at `offset` out of the segment, after checking null,
    /// bounds and alignment.
    pub fn read<T: ShmSafe + Copy>(&self, offset: Offset<T>) -> Result<T> {
        let ptr = self.resolve(offset)?;
        // SAFETY: `resolve` checked that a whole, aligned `T` lies inside
        // the mapping, which outlives this call, and `T: ShmSafe` makes any
        // bytes a valid `T`, even ones torn by a concurrent writer. Volatile
        // because other processes may write these bytes at any time: the
        // compiler must read them exactly once, here, and may not assume
        // they hold still.
        Ok(unsafe { ptr.read_volatile() })
    }

    /// Copies `out.len()` bytes starting at `offset` into `out`, after
    /// checking that they lie inside the segment.
    pub fn read_bytes(&self, offset: u64, out: &mut [u8]) -> Result<()> {
        self.check_range(offset, out.len() as u64)?;
        // The range check bounds the offset by the mapping length (a `usize`).
        let source = self.base().wrapping_add(offset as usize);
        for (index, byte) in out.iter_mut().enumerate() {
            // SAFETY: `offset..offset + out.len()` was checked to lie inside
            // the mapping, which outlives this call. Volatile for the reason
            // given in `read`: other processes may write these bytes now.
            *byte = unsafe { source.add(index).read_volatile() };
        }
        Ok(())
    }

    /// The application's custom header, reserved at creation with
    /// [`SegmentOptions::custom_header_len`], checked to hold a `T`. Read it
    /// as [`resolve`](Self::resolve)'s pointers are read.
    pub fn custom_header<T: ShmSafe>(&self) -> Result<*const T> {
        self.resolve(self.fixed.custom_header_offset()?)
    }

    /// The offset published under `name`, if any.
    pub fn root<T>(&self, name: &str) -> Option<Offset<T>> {
        self.header().root(name).map(Offset::from_raw)
    }

    /// Every published root: name and raw offset.
    pub fn roots(&self) -> Vec<(String, u64)> {
        self.header().roots()
    }
}
