//! Segments: a mapped region that starts with a validated header.
//!
//! A [`Segment`] is this process's handle on the region. Creating one writes
//! the header, initializes the allocator and publishes *ready*; attaching one
//! waits (bounded) for *ready* and validates every header field before use.
//! A [`ReadOnlySegment`] is attached the same way but can only read.
//! See [`header`] for the on-segment layout.

mod backend;
mod handshake;
/// Which allocator a segment's header names.
pub(crate) mod kind;
/// The table of this process's segment mappings.
pub(crate) mod mappings;
pub(crate) use handshake::AllocatorSetup;
pub mod header;
mod options;
mod read_only;
mod recovery_lock;

use std::os::fd::BorrowedFd;
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use crate::os::memory::{page_size, round_to_page};
pub use crate::os::process::process_alive;
pub use handshake::Opened;
pub use kind::{AllocatorKind, CUSTOM_KIND_BASE};
pub use options::{Location, SegmentOptions, DEFAULT_READY_TIMEOUT, DEFAULT_SIZE};
pub use read_only::ReadOnlySegment;
pub use recovery_lock::{RecoveryLock, SegmentUsers};

use crate::error::{Error, Result};
use crate::ptr::{FullPtr, Offset, SegmentId, ShmPtr, ShmSafe};
pub(crate) use backend::{Backed, Mapping};
use header::{Header, PARAM_WORDS};

/// A process's handle on a segment.
///
/// Dropping the handle unmaps the segment in this process; it never removes
/// the segment (see [`unlink`](Self::unlink)). A `Segment` is `Send + Sync`:
/// every in-segment structure it exposes is made of atomics.
pub struct Segment {
    /// This mapping's entry in the process registry; declared first so it
    /// is dropped (unregistered) before the mapping is unmapped.
    registration: Option<mappings::Registration>,
    /// The descriptor and how much of its object is known to exist: the
    /// bound of every access (shared with the registry's entry).
    backed: std::sync::Arc<Backed>,
    mapping: Mapping,
    location: Location,
    /// Header fields that never change after creation, copied once they were
    /// written or validated: later changes to the shared bytes cannot move
    /// any bound this process checks against.
    fixed: Fixed,
    /// Largest alignment that holds for addresses as well as offsets.
    max_align: usize,
    ready_timeout: std::time::Duration,
}

/// The immutable part of a header, as this process validated it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fixed {
    pub id: u64,
    pub creator_pid: u32,
    pub format_version: u32,
    pub kind: AllocatorKind,
    pub params: [u64; PARAM_WORDS],
    pub max_size: u64,
    pub capacity: u64,
    pub custom_offset: u64,
    pub custom_len: u32,
    pub state_offset: u64,
    pub state_len: u64,
    pub data_offset: u64,
    pub flags: u64,
}

impl Fixed {
    pub(crate) fn from_header(header: &Header) -> Fixed {
        Fixed {
            id: header.segment_id,
            creator_pid: header.creator_pid,
            format_version: header.format_version,
            kind: header.kind(),
            params: header.allocator_params,
            max_size: header.max_size,
            capacity: header.capacity,
            custom_offset: header.custom_offset,
            custom_len: header.custom_len,
            state_offset: header.state_offset,
            state_len: header.state_len,
            data_offset: header.data_offset,
            flags: header.flags,
        }
    }

    /// The custom header's offset, checked to hold a `T`.
    fn custom_header_offset<T>(&self) -> Result<Offset<T>> {
        let needed = std::mem::size_of::<T>() as u64;
        if needed > u64::from(self.custom_len) {
            return Err(Error::invalid_size(format!(
                "custom header holds {} bytes, {} needs {needed}",
                self.custom_len,
                std::any::type_name::<T>()
            )));
        }
        Ok(Offset::from_raw(self.custom_offset))
    }

    /// Refuses anything but allocator `expected` (with exactly `params`,
    /// when given).
    fn expect_allocator(
        &self,
        expected: AllocatorKind,
        params: Option<&[u64; PARAM_WORDS]>,
    ) -> Result<()> {
        if self.kind != expected {
            return Err(Error::WrongAllocator {
                expected,
                found: self.kind,
            });
        }
        if let Some(params) = params {
            if *params != self.params {
                return Err(Error::WrongAllocatorParams {
                    kind: expected,
                    expected: params.to_vec(),
                    found: self.params.to_vec(),
                });
            }
        }
        Ok(())
    }
}

/// Checks that `len` bytes at `offset` end within `size`.
fn check_range_within(size: u64, offset: u64, len: u64) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfBounds { offset, len, size }),
    }
}

/// Decodes an offset into `count` consecutive `T`s of the mapped bytes
/// `base..base + size`, checking null, bounds and alignment. `size` must not
/// exceed the mapping's length.
pub(crate) fn resolve_within<T>(
    base: NonNull<u8>,
    size: u64,
    offset: Offset<T>,
    count: u64,
) -> Result<NonNull<T>> {
    if offset.is_null() {
        return Err(Error::NullOffset);
    }
    let len = count
        .checked_mul(std::mem::size_of::<T>() as u64)
        .ok_or_else(|| Error::invalid_size("array length overflows"))?;
    check_range_within(size, offset.raw(), len)?;
    let align = std::mem::align_of::<T>();
    // The range check bounds the offset by the mapping length (a `usize`).
    let ptr = base.as_ptr().wrapping_add(offset.raw() as usize);
    if (ptr as usize) % align != 0 {
        return Err(Error::Misaligned {
            offset: offset.raw(),
            align,
        });
    }
    // SAFETY: `ptr` is inside the mapping, whose base is non-null, so it is
    // non-null too.
    Ok(unsafe { NonNull::new_unchecked(ptr.cast()) })
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment")
            .field("location", &self.location)
            .field("id", &self.id())
            .field("size", &self.size())
            .field("max_size", &self.max_size())
            .field("allocator", &self.allocator_kind())
            .finish()
    }
}

impl Segment {
    /// Enters this ready, validated segment in the process registry.
    pub(crate) fn registered(mut self) -> Segment {
        self.registration = Some(mappings::register(
            self.id(),
            self.mapping.base(),
            std::sync::Arc::clone(&self.backed),
        ));
        self
    }

    /// The header. Valid for the life of `self`: every constructor validates
    /// it before returning a `Segment`.
    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping starts with a `Header` (validated or written by
        // the constructor), is at least page aligned (`BUFFER_ALIGN`, 128, for
        // buffers: at least `Header`'s alignment), and outlives `&self`. Fields that other
        // processes change after *ready* are atomics.
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

    /// Bytes backed now, header included: every offset below it may be
    /// touched, but for the buddy allocator's tables, which it backs as its
    /// heap reaches the units they describe (an offset into them that the
    /// heap has not reached may fault on a full file system; no block lies
    /// there). The allocators grow it as they need (up to
    /// [`max_size`](Self::max_size); see [`SegmentOptions::size`]), and
    /// every attached process sees it at once.
    #[inline]
    pub fn size(&self) -> u64 {
        // Never beyond what this process knows the backing object holds,
        // whatever the shared word says (see `Backed`).
        self.backed
            .bound(self.header().size.load(Ordering::Acquire))
    }

    /// The size the segment may grow to: the size it was created with, or
    /// the larger maximum it was given.
    pub fn max_size(&self) -> u64 {
        self.fixed.max_size
    }

    /// The size the segment was created with (page-rounded): the allocators
    /// back it freely as they fill it; past it, up to
    /// [`max_size`](Self::max_size), they grow only when reusing freed
    /// memory would not do.
    pub fn capacity(&self) -> u64 {
        self.fixed.capacity
    }

    /// The allocator that manages the data area.
    pub fn allocator_kind(&self) -> AllocatorKind {
        self.fixed.kind
    }

    /// The allocator's parameters, as recorded at creation.
    pub fn allocator_params(&self) -> [u64; PARAM_WORDS] {
        self.fixed.params
    }

    /// The pid of the process that created the segment.
    pub fn creator_pid(&self) -> u32 {
        self.fixed.creator_pid
    }

    /// The on-segment format version.
    pub fn format_version(&self) -> u32 {
        self.fixed.format_version
    }

    /// Whether every free zeroes the block before it can be reused (set at
    /// creation with [`SegmentOptions::zero_on_free`], honoured by every
    /// process).
    #[inline]
    pub fn zero_on_free(&self) -> bool {
        self.fixed.flags & header::flags::ZERO_ON_FREE != 0
    }

    /// Zeroes `len` bytes at `offset` when the segment asks for it: called
    /// by allocators on a block they hold alone, before anyone can reuse it.
    /// The block was validated by the caller; a range outside the segment
    /// (a bug) zeroes nothing rather than touch memory it must not.
    #[inline]
    pub(crate) fn scrub(&self, offset: u64, len: u64) {
        if self.zero_on_free() {
            self.zero_bytes(offset, len);
        }
    }

    /// Zeroes `len` bytes at `offset` that the caller holds alone (nobody
    /// else reads or writes them meanwhile); a range outside the segment (a
    /// bug) zeroes nothing.
    pub(crate) fn zero_bytes(&self, offset: u64, len: u64) {
        let inside = self.check_range(offset, len).is_ok();
        debug_assert!(
            inside,
            "zeroing {len} bytes at {offset}: outside the segment"
        );
        if inside {
            // SAFETY: inside the segment (checked); the caller holds the
            // bytes alone.
            unsafe {
                std::ptr::write_bytes(self.base().as_ptr().add(offset as usize), 0, len as usize)
            };
            // Not an optimizable dead store: other processes read these bytes.
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        }
    }

    /// Offset of the first byte the allocator manages.
    #[inline]
    pub fn data_offset(&self) -> u64 {
        self.fixed.data_offset
    }

    /// The largest alignment that holds for local addresses as well as for
    /// offsets: the page size for mapped segments, 128 for a caller's buffer.
    pub fn max_align(&self) -> usize {
        self.max_align
    }

    /// Address of the segment's first byte in this process.
    pub fn base(&self) -> NonNull<u8> {
        self.mapping.base()
    }

    /// The descriptor behind the segment, if it has one (to pass a memfd to
    /// another process, say).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.backed.fd()
    }

    /// Bytes of memory or disk the backing object takes now (what the file
    /// system has allocated for it), or `None` for a segment without a
    /// descriptor (private memory, a caller's buffer). It follows what the
    /// allocators have backed, not the size asked for at creation (see
    /// [`SegmentOptions::size`]).
    pub fn backed_bytes(&self) -> Option<u64> {
        let fd = self.backed.fd()?;
        backend::allocated_bytes(fd)
    }

    /// Checks that `len` bytes at `offset` lie inside the segment's current
    /// size.
    pub fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        check_range_within(self.size(), offset, len)
    }

    /// Decodes an offset into a local pointer, checking null, bounds (for one
    /// whole `T`) and alignment.
    pub fn resolve<T>(&self, offset: Offset<T>) -> Result<NonNull<T>> {
        self.resolve_array(offset, 1)
    }

    /// Decodes an offset to `count` consecutive `T`s, checking null, bounds
    /// and alignment.
    pub fn resolve_array<T>(&self, offset: Offset<T>, count: u64) -> Result<NonNull<T>> {
        resolve_within(self.base(), self.size(), offset, count)
    }

    /// The offset of a local pointer into this segment.
    pub fn offset_of<T>(&self, ptr: *const T) -> Result<Offset<T>> {
        let base = self.base().as_ptr() as usize;
        let addr = ptr as usize;
        let offset = addr.checked_sub(base).ok_or(Error::ForeignPointer)? as u64;
        if offset == 0
            || self
                .check_range(offset, std::mem::size_of::<T>() as u64)
                .is_err()
        {
            return Err(Error::ForeignPointer);
        }
        Ok(Offset::from_raw(offset))
    }

    /// The shared form of an offset in this segment.
    pub fn shm_ptr<T>(&self, offset: Offset<T>) -> ShmPtr<T> {
        ShmPtr::new(self.id(), offset)
    }

    /// Builds a [`FullPtr`] from its shared form; fails when the pointer
    /// belongs to another segment or does not decode here.
    pub fn full_ptr<T>(&self, ptr: ShmPtr<T>) -> Result<FullPtr<T>> {
        if ptr.segment != self.id() {
            return Err(Error::ForeignPointer);
        }
        self.full_ptr_from_offset(ptr.offset)
    }

    /// Builds a [`FullPtr`] from an offset in this segment.
    pub fn full_ptr_from_offset<T>(&self, offset: Offset<T>) -> Result<FullPtr<T>> {
        let local = self.resolve(offset)?;
        Ok(FullPtr::new(local, self.shm_ptr(offset)))
    }

    /// Builds a [`FullPtr`] from a local pointer into this segment.
    pub fn full_ptr_from_local<T>(&self, ptr: *const T) -> Result<FullPtr<T>> {
        let offset = self.offset_of(ptr)?;
        self.full_ptr_from_offset(offset)
    }

    /// The application's custom header, reserved at creation with
    /// [`SegmentOptions::custom_header_len`], checked to hold a `T`.
    ///
    /// It is a pointer, not a reference, because other processes may write
    /// the same bytes at any time: make the fields that change atomics and
    /// reach them through `unsafe { ptr.as_ref() }`, or read plain fields with
    /// volatile or atomic loads.
    pub fn custom_header<T: ShmSafe>(&self) -> Result<NonNull<T>> {
        self.resolve(self.fixed.custom_header_offset()?)
    }

    /// The custom header's bytes, whatever their layout: where they start
    /// and how many (0 when none was reserved). For bindings that cannot
    /// name a `T`; the same rules as for [`custom_header`](Self::custom_header)
    /// apply to the bytes.
    pub fn custom_header_bytes(&self) -> (NonNull<u8>, usize) {
        // SAFETY: the custom area lies inside the mapping (validated with the
        // header: its offset plus length is below the state offset).
        let start = unsafe { self.base().add(self.fixed.custom_offset as usize) };
        (start, self.fixed.custom_len as usize)
    }

    /// Publishes `offset` under `name` (1 to 48 bytes) so other processes can
    /// find it with [`root`](Self::root). Each name can be set once; setting
    /// it again is an error.
    pub fn set_root<T>(&self, name: &str, offset: Offset<T>) -> Result<()> {
        self.check_range(offset.raw(), 0)?;
        self.header()
            .set_root(name, offset.raw(), self.ready_timeout)
    }

    /// The offset published under `name`, if any.
    pub fn root<T>(&self, name: &str) -> Option<Offset<T>> {
        self.header().root(name).map(Offset::from_raw)
    }

    /// Every published root: name and raw offset.
    pub fn roots(&self) -> Vec<(String, u64)> {
        self.header().roots()
    }

    /// Grows the segment to at least `new_size` bytes (rounded up to a page),
    /// up to its maximum size. Space is reserved in the backing store first,
    /// so a full file system is an error here, not a SIGBUS later. Every
    /// attached process sees the new size at once; nothing is remapped.
    /// Growing to a size at or below the current one does nothing.
    pub fn grow(&self, new_size: u64) -> Result<()> {
        let max = self.max_size();
        if new_size > max {
            return Err(Error::GrowBeyondMax {
                requested: new_size,
                max,
            });
        }
        let new_size = round_to_page(new_size).min(max);
        let current = self.size();
        if new_size <= current {
            return Ok(());
        }
        if let Some(fd) = self.backed.fd() {
            backend::reserve(fd, current, new_size, &self.name())?;
        }
        self.backed.grew_to(new_size);
        self.header().size.fetch_max(new_size, Ordering::AcqRel);
        Ok(())
    }

    /// Extends the segment to `new_size` bytes (page-rounded, at most the
    /// maximum) without backing the new range: for an allocator's tables,
    /// sized for the maximum, whose pages it backs with
    /// [`back_range`](Self::back_range) before it reads or writes them (a
    /// fault on an unbacked page of a full file system is a SIGBUS, reads
    /// included). Later growth backs only what lies past `new_size`.
    pub(crate) fn grow_unbacked(&self, new_size: u64) -> Result<()> {
        let new_size = round_to_page(new_size).min(self.max_size());
        if new_size <= self.size() {
            return Ok(());
        }
        if let Some(fd) = self.backed.fd() {
            backend::set_len(fd, new_size, &self.name())?;
        }
        self.backed.grew_to(new_size);
        self.header().size.fetch_max(new_size, Ordering::AcqRel);
        Ok(())
    }

    /// Backs the pages of `[from, to)`, which lie below the size (see
    /// [`grow_unbacked`](Self::grow_unbacked)); pages already backed stay
    /// as they are. `NoSpace` when the file system is full.
    pub(crate) fn back_range(&self, from: u64, to: u64) -> Result<()> {
        let page = page_size();
        let (from, to) = (from / page * page, round_to_page(to).min(self.size()));
        match self.backed.fd() {
            Some(fd) if from < to => backend::reserve(fd, from, to, &self.name()),
            _ => Ok(()),
        }
    }

    /// Makes sure the first `end` bytes are backed, growing by a step when
    /// they are not: to `end` at least, and past it by the current size
    /// (doubling) but by no more than 16 MiB, so that a run of allocations
    /// takes one system call and committed memory stays close to what is
    /// used; never past the maximum. When the file system cannot back the
    /// step, it backs `end` alone if it can (else `NoSpace`). Returns false,
    /// growing nothing, when `end` lies beyond the maximum.
    pub fn grow_to_fit(&self, end: u64) -> Result<bool> {
        self.grow_to_fit_below(end, self.max_size())
    }

    /// [`grow_to_fit`](Self::grow_to_fit) with the step cut at `limit` (at
    /// most the maximum): for backing within the capacity, which must not
    /// spill past it.
    pub(crate) fn grow_to_fit_below(&self, end: u64, limit: u64) -> Result<bool> {
        let current = self.size();
        if end <= current {
            return Ok(true);
        }
        if end > limit.min(self.max_size()) {
            return Ok(false);
        }
        let stepped = self.growth_target(end).min(limit).max(end);
        match self.grow(stepped) {
            // A nearly full file system may still hold what is needed.
            Err(Error::NoSpace { .. }) if stepped > round_to_page(end) => self.grow(end)?,
            other => other?,
        }
        Ok(self.size() >= end)
    }

    /// The size [`grow_to_fit`](Self::grow_to_fit) grows to first when the
    /// first `end` bytes are not backed (for an allocator that must prepare
    /// for the growth, such as backing its tables).
    pub(crate) fn growth_target(&self, end: u64) -> u64 {
        let current = self.size();
        let step = current.min(GROWTH_STEP_CAP);
        end.max(current.saturating_add(step)).min(self.max_size())
    }

    /// Binds the memory of this process's mapping of the segment (its whole
    /// mapped range, up to the maximum size) to NUMA node `node`; see
    /// [`numa::bind`](crate::numa::bind) for what that does and when it is a
    /// no-op. For POSIX shared memory and memfd segments the kernel keeps
    /// the policy with the shared object, so it also holds for pages that
    /// other processes touch first. A segment in a caller's buffer binds the
    /// whole pages around the buffer.
    pub fn bind_to_numa_node(&self, node: u32) -> Result<crate::numa::NumaBinding> {
        crate::numa::bind(self.base(), self.mapping.len(), node)
    }

    /// Removes the segment's name (POSIX shared memory) or file, so no new
    /// process can attach. Processes that have it mapped keep using it; the
    /// memory is freed when the last one unmaps. Anonymous segments have no
    /// name and return `Unsupported`.
    pub fn unlink(&self) -> Result<()> {
        remove(&self.location)
    }

    /// A raw pointer to the allocator state, checked to hold a `T`.
    pub(crate) fn allocator_state<T>(&self) -> Result<NonNull<T>> {
        if (std::mem::size_of::<T>() as u64) > self.fixed.state_len {
            return Err(Error::corrupt("allocator state area too small"));
        }
        self.resolve(Offset::from_raw(self.fixed.state_offset))
    }

    /// Refuses the segment unless its allocator is `expected` (and, when
    /// given, has exactly these parameters).
    pub fn expect_allocator(
        &self,
        expected: AllocatorKind,
        params: Option<&[u64; PARAM_WORDS]>,
    ) -> Result<()> {
        self.fixed.expect_allocator(expected, params)
    }
}

/// Removes a named segment without attaching it.
pub fn remove(location: &Location) -> Result<()> {
    match location {
        Location::Shm(name) => backend::unlink_shm(name),
        Location::File(path) => std::fs::remove_file(path)
            .map_err(|source| backend::open_error(source, &path.display().to_string(), "removing")),
        _ => Err(Error::Unsupported("only named segments can be removed")),
    }
}

/// The most [`Segment::grow_to_fit`] backs beyond what was asked for: the
/// latency of one grow (about 5 ms per 16 MiB on tmpfs) and the memory
/// committed ahead of use stay bounded.
const GROWTH_STEP_CAP: u64 = 16 << 20;
