//! One attached segment as the Python API sees it: the allocator (or a
//! read-only attachment), the budget layer in the custom header, the block
//! headers, and this process's record of the segment (live views, calls in
//! flight), with the facts every call needs (base address, data offset,
//! budget unit, key) read once at attach.
//!
//! Nothing here touches Python objects: the classes (`classes.rs`) convert
//! arguments and results, hold the interpreter lock, and release it around
//! waits and long copies.

use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use shmkit_lib::alloc::POOL_MAX_SLOT;
use shmkit_lib::segment::header::PARAM_WORDS;
use shmkit_lib::{
    AllocatorKind, AnyAllocator, Error, FreeListAllocator, LinearAlloc, MemContext, PoolAllocator,
    PoolParams, ReadOnlySegment, Region, SegmentAllocator, SegmentOptions,
};

use crate::blocks::{Block, BlockHeader, Seal, HEADER, MAX_SIZE};
use crate::buffer::RawBytes;
use crate::errors::Fault;
use crate::layer::{self, Layer, Usage};
use crate::views::Views;

/// The allocator classes of the Python API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bump,
    Stack,
    FreeList,
    Slab,
    Buddy,
    SizeClass,
    ThreadLocal,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Bump,
        Kind::Stack,
        Kind::FreeList,
        Kind::Slab,
        Kind::Buddy,
        Kind::SizeClass,
        Kind::ThreadLocal,
    ];

    /// The allocator that serves this class (a slab larger than a pool
    /// slot is served by the free list).
    fn allocator_kind(self, unit: u64) -> AllocatorKind {
        match self {
            Kind::Bump => AllocatorKind::Bump,
            Kind::Stack => AllocatorKind::Stack,
            Kind::FreeList => AllocatorKind::FreeList,
            Kind::Slab if slab_params(unit).is_ok() => AllocatorKind::Pool,
            Kind::Slab => AllocatorKind::FreeList,
            Kind::Buddy => AllocatorKind::Buddy,
            Kind::SizeClass => AllocatorKind::SizeClass,
            Kind::ThreadLocal => AllocatorKind::ThreadLocal,
        }
    }

    /// The Python class's name.
    pub fn class_name(self) -> &'static str {
        match self {
            Kind::Bump => "BumpAllocator",
            Kind::Stack => "StackAllocator",
            Kind::FreeList => "FreeListAllocator",
            Kind::Slab => "SlabAllocator",
            Kind::Buddy => "BuddyAllocator",
            Kind::SizeClass => "SizeClassAllocator",
            Kind::ThreadLocal => "ThreadLocalAllocator",
        }
    }

    /// The number the layer records for the class.
    fn code(self) -> u64 {
        Kind::ALL.iter().position(|&kind| kind == self).unwrap_or(0) as u64 + 1
    }

    fn from_code(code: u64) -> Option<Kind> {
        Kind::ALL
            .get(usize::try_from(code).ok()?.checked_sub(1)?)
            .copied()
    }
}

/// Whether an operation may wait for a lock held by another process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// No: report [`Fault::WouldBlock`] (the caller holds the interpreter
    /// lock and will release it before trying again).
    Refuse,
    /// Yes, up to the allocator's patience.
    Patient,
}

impl Wait {
    fn context(self) -> MemContext {
        MemContext {
            refuse_waits: self == Wait::Refuse,
            ..MemContext::default()
        }
    }
}

/// The budget a new segment is made for: `units` of `unit` bytes.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub unit: u64,
    pub units: u64,
}

/// What backs the heap. One per attached heap, so the size difference
/// between the variants costs nothing worth a box on the hot path.
#[allow(clippy::large_enum_variant)]
enum Store {
    Writable(AnyAllocator),
    ReadOnly(ReadOnlySegment),
}

/// A block taken out of use by [`Heap::retire`]: no offset names it any
/// more, and [`Heap::release`] gives it back to the allocator.
pub struct Retired {
    offset: u64,
    block: Block,
}

/// Fixed bytes for the segment header, allocator state and slack.
const SMALL_STATE: u64 = 64 << 10;
/// The same for allocators whose state grows with the segment.
const LARGE_STATE: u64 = 1 << 20;
/// Never reserve more address space than this for growth.
const MAX_GROWTH: u64 = 4 << 40;

/// An attached segment with its budget layer.
pub struct Heap {
    store: Store,
    kind: Kind,
    base: NonNull<u8>,
    data_offset: u64,
    /// The budget layer, when the segment has one (segments made by other
    /// shmkit tools have none: no budget, and the allocator's own counts).
    layer: Option<NonNull<Layer>>,
    unit: u64,
    /// log2 of `unit` when it is a power of two (the common slot sizes),
    /// so the hot paths shift instead of dividing.
    unit_shift: Option<u32>,
    units: u64,
    /// The layer's key (0 without a layer).
    key: u64,
    views: Arc<Views>,
}

// SAFETY: the allocator and the read-only segment are `Send + Sync`; `base`
// and `layer` point into the mapping they keep, and the layer is reached
// through atomics only.
unsafe impl Send for Heap {}
// SAFETY: as above.
unsafe impl Sync for Heap {}

fn shm_options(name: &str) -> SegmentOptions {
    SegmentOptions::shm(name.strip_prefix('/').unwrap_or(name))
}

/// The initial and maximum segment sizes for a budget of `capacity` bytes
/// in `unit`-byte units: room for every block the budget allows, with its
/// headers, from the start where that is cheap, by growth otherwise.
fn plan(kind: AllocatorKind, unit: u64, units: u64) -> Result<(u64, u64), Fault> {
    let too_large =
        || Fault::BadArgument(format!("a capacity of {units} x {unit} bytes is too large"));
    let capacity = unit.checked_mul(units).ok_or_else(too_large)?;
    let with_slack = |bytes: u64, slack: u64| bytes.checked_add(slack).ok_or_else(too_large);
    Ok(match kind {
        AllocatorKind::Bump | AllocatorKind::Stack => {
            // Headers cost an eighth for blocks of 256 bytes and more; a
            // budget spent in smaller blocks grows the segment (a 1-byte
            // block takes 32 bytes on a bump allocator, 48 on a stack).
            let size = with_slack(capacity.saturating_add(capacity / 4), SMALL_STATE)?;
            (
                size,
                size.saturating_add(capacity.saturating_mul(48).min(MAX_GROWTH)),
            )
        }
        AllocatorKind::FreeList => {
            // Every block is whole units; a one-unit block takes the unit,
            // the Python header and the allocator's 32-byte header, so
            // `units` of them fit exactly. Growth absorbs fragmentation.
            let block = unit
                .checked_add(HEADER + 32)
                .map(|b| b.next_multiple_of(16).max(48))
                .ok_or_else(too_large)?;
            let size = with_slack(units.checked_mul(block).ok_or_else(too_large)?, SMALL_STATE)?;
            (size, size.saturating_mul(2))
        }
        AllocatorKind::Pool => {
            let params = slab_params(unit)?;
            let slot = params.slot_sizes()[0] as u64;
            let page = params.page_size();
            // Whole pages for every slot, one more for page headers, and
            // room for the segment header and the pool's state.
            let pages = units
                .checked_mul(slot)
                .map(|bytes| bytes.div_ceil(page))
                .ok_or_else(too_large)?;
            let size = with_slack(
                pages
                    .saturating_add(2)
                    .checked_mul(page)
                    .ok_or_else(too_large)?,
                SMALL_STATE,
            )?;
            (size, size.saturating_mul(2))
        }
        _ => {
            // Buddy, size classes, thread caches: their state grows with
            // the maximum size, so growth stays within 4x.
            let size = with_slack(capacity.saturating_add(capacity / 4), LARGE_STATE)?;
            (size, size.saturating_mul(4))
        }
    })
}

/// The pool parameters of a slab allocator: one slot class holding a slab
/// and its header (slabs too large for a pool slot use the free list).
fn slab_params(slab_size: u64) -> Result<PoolParams, Fault> {
    let too_large = || Fault::BadArgument(format!("slab_size {slab_size} is too large"));
    let slot = slab_size
        .checked_add(HEADER)
        .map(|s| s.next_multiple_of(16))
        .filter(|&s| s <= u64::from(POOL_MAX_SLOT))
        .and_then(|s| u32::try_from(s).ok())
        .ok_or_else(too_large)?;
    PoolParams::new(&[slot]).map_err(|_| too_large())
}

impl Heap {
    /// Creates the segment `name` for `budget`.
    pub fn create(
        kind: Kind,
        name: &str,
        budget: Budget,
        zero_on_free: bool,
    ) -> Result<Heap, Fault> {
        if budget.unit == 0 || budget.units == 0 {
            return Err(Fault::BadArgument(format!(
                "a capacity of {} x {} bytes holds nothing",
                budget.units, budget.unit
            )));
        }
        let allocator_kind = kind.allocator_kind(budget.unit);
        let (size, max_size) = plan(allocator_kind, budget.unit, budget.units)?;
        let options = shm_options(name)
            .size(size)
            .max_size(max_size)
            .custom_header(layer::initial_bytes(kind.code(), budget.unit, budget.units))
            .zero_on_free(zero_on_free);
        let allocator = match allocator_kind {
            AllocatorKind::Pool => AnyAllocator::Pool(PoolAllocator::create_with(
                &options,
                &slab_params(budget.unit)?,
            )?),
            AllocatorKind::FreeList => AnyAllocator::FreeList(FreeListAllocator::create(&options)?),
            other => AnyAllocator::create(other, &options)?,
        };
        Heap::new(kind, Store::Writable(allocator))
    }

    /// Attaches the existing segment `name`, which `kind` must be able to
    /// serve.
    pub fn attach(kind: Kind, name: &str, read_only: bool) -> Result<Heap, Fault> {
        let options = shm_options(name);
        let store = if read_only {
            Store::ReadOnly(ReadOnlySegment::attach(&options)?)
        } else {
            Store::Writable(AnyAllocator::attach(&options)?)
        };
        Heap::new(kind, store)
    }

    fn new(kind: Kind, store: Store) -> Result<Heap, Fault> {
        let (base, data_offset, layer, params, found, id) = match &store {
            Store::Writable(allocator) => {
                let segment = allocator.segment();
                (
                    segment.base(),
                    segment.data_offset(),
                    segment.custom_header::<Layer>().ok(),
                    segment.allocator_params(),
                    segment.allocator_kind(),
                    segment.id().0,
                )
            }
            Store::ReadOnly(segment) => (
                NonNull::new(segment.base().cast_mut()).ok_or(Error::NullOffset)?,
                segment.data_offset(),
                segment
                    .custom_header::<Layer>()
                    .ok()
                    .and_then(|ptr| NonNull::new(ptr.cast_mut())),
                segment.allocator_params(),
                segment.allocator_kind(),
                segment.id().0,
            ),
        };
        // SAFETY: `custom_header` checked bounds and alignment; the layer
        // is atomics, read with loads here, and lives as long as the store.
        let layer = layer.filter(|layer| unsafe { layer.as_ref() }.is_valid());
        let mut heap = Heap {
            store,
            kind,
            base,
            data_offset,
            layer,
            unit: 1,
            unit_shift: Some(0),
            units: 0,
            key: 0,
            views: Views::of_segment(id),
        };
        match heap.layer() {
            Some(layer) => {
                let load = |word: &std::sync::atomic::AtomicU64| word.load(Ordering::Relaxed);
                let (unit, units) = (load(&layer.unit), load(&layer.units));
                if unit == 0 || unit.checked_mul(units).is_none() {
                    return Err(Fault::Lib(Error::CorruptHeader {
                        reason: format!(
                            "the Python layer records a capacity of {units} x {unit} bytes"
                        ),
                    }));
                }
                match Kind::from_code(load(&layer.class)) {
                    Some(made) if made == kind => {}
                    Some(made) => {
                        return Err(Fault::WrongClass {
                            expected: kind,
                            found: made,
                        })
                    }
                    None => {
                        return Err(Fault::Lib(Error::CorruptHeader {
                            reason: "the Python layer names no allocator class".into(),
                        }))
                    }
                }
                (heap.unit, heap.units, heap.key) = (unit, units, load(&layer.key));
            }
            // A slab segment from another tool: its slot, less the header.
            None if kind == Kind::Slab => {
                heap.unit = pool_slot(&params).saturating_sub(HEADER).max(1);
            }
            None => {}
        }
        let expected = kind.allocator_kind(heap.unit);
        if found != expected {
            return Err(Fault::Lib(Error::WrongAllocator { expected, found }));
        }
        heap.unit_shift = heap
            .unit
            .is_power_of_two()
            .then(|| heap.unit.trailing_zeros());
        Ok(heap)
    }

    fn layer(&self) -> Option<&Layer> {
        // SAFETY: checked at attach (bounds, alignment, magic); atomics; it
        // lives in the mapping the store keeps.
        self.layer.map(|layer| unsafe { layer.as_ref() })
    }

    fn writable(&self) -> Result<&AnyAllocator, Fault> {
        match &self.store {
            Store::Writable(allocator) => Ok(allocator),
            Store::ReadOnly(_) => Err(Fault::ReadOnly),
        }
    }

    /// This process's record of the segment (shared by all its handles).
    pub fn views(&self) -> &Views {
        &self.views
    }

    pub fn is_read_only(&self) -> bool {
        matches!(self.store, Store::ReadOnly(_))
    }

    /// The segment's current size (never beyond this process's mapping).
    #[inline]
    pub fn segment_size(&self) -> u64 {
        match &self.store {
            Store::Writable(allocator) => allocator.segment().size(),
            Store::ReadOnly(segment) => segment.size(),
        }
    }

    pub fn segment_max_size(&self) -> u64 {
        match &self.store {
            Store::Writable(allocator) => allocator.segment().max_size(),
            Store::ReadOnly(segment) => segment.max_size(),
        }
    }

    pub fn allocator_name(&self) -> String {
        self.kind.allocator_kind(self.unit).to_string()
    }

    /// Bytes per budget unit (the slot or slab size; 1 for byte budgets).
    pub fn unit(&self) -> u64 {
        self.unit
    }

    /// The budget in units, or `None` for a segment without a layer.
    pub fn units(&self) -> Option<u64> {
        self.layer.map(|_| self.units)
    }

    /// Units `bytes` take (whole units).
    #[inline]
    fn whole_units(&self, bytes: u64) -> u64 {
        match self.unit_shift {
            Some(shift) => (bytes >> shift) + u64::from(bytes & (self.unit - 1) != 0),
            None => bytes.div_ceil(self.unit),
        }
    }

    /// Units a block of `size` bytes, `prefix` bytes after its raw start,
    /// takes: where blocks take whole slots, the alignment padding beyond
    /// the header counts too (it takes room that slots account for).
    #[inline]
    fn units_of(&self, size: u64, prefix: u64) -> u64 {
        if self.unit <= 1 {
            size
        } else {
            self.whole_units(size + (prefix - HEADER))
        }
    }

    /// Bytes a block of `size` bytes may use: the rest of its units.
    #[inline]
    fn usable(&self, size: u64, prefix: u64) -> u64 {
        if self.unit <= 1 {
            size
        } else {
            self.units_of(size, prefix) * self.unit - (prefix - HEADER)
        }
    }

    #[inline]
    fn seal(&self) -> Seal {
        Seal {
            key: self.key,
            generation: self.layer().map_or(0, Layer::generation),
        }
    }

    /// The header in front of `offset`, if it lies in the data area.
    #[inline]
    fn header(&self, offset: u64) -> Option<&BlockHeader> {
        let at = offset.checked_sub(HEADER)?;
        if offset % 8 != 0 || at < self.data_offset || offset > self.segment_size() {
            return None;
        }
        // SAFETY: 8-aligned (offsets and the base are), inside the mapped
        // segment (checked against its size, itself bounded by the
        // mapping); atomics are valid for any bytes and are only loaded on a
        // read-only mapping.
        Some(unsafe { &*self.base.as_ptr().add(at as usize).cast::<BlockHeader>() })
    }

    /// The live block at `offset`.
    #[inline]
    pub fn block(&self, offset: u64) -> Result<Block, Fault> {
        let Some(block) = self
            .header(offset)
            .and_then(|header| header.read(offset, self.seal()))
        else {
            return Err(Fault::NotABlock { offset });
        };
        // A header that passed its check still cannot reach past the segment.
        match offset.checked_add(self.usable(block.size, block.prefix)) {
            Some(end) if end <= self.segment_size() && block.prefix >= HEADER => Ok(block),
            _ => Err(Fault::NotABlock { offset }),
        }
    }

    /// The check word of the live block at `offset`: it changes when the
    /// block is freed and another allocated at the same offset.
    pub fn block_check(&self, offset: u64) -> Result<u64, Fault> {
        self.block(offset).map(|block| block.check)
    }

    /// The size asked for when the block at `offset` was allocated.
    pub fn size_of(&self, offset: u64) -> Result<u64, Fault> {
        self.block(offset).map(|block| block.size)
    }

    /// The local address of `len` bytes (default: the size asked for) at
    /// the start of the block at `offset`, and that length. A block may use
    /// whole units (a free-list slot, a slab).
    #[inline]
    pub fn span(&self, offset: u64, len: Option<u64>) -> Result<(NonNull<u8>, u64), Fault> {
        let block = self.block(offset)?;
        let usable = self.usable(block.size, block.prefix);
        let len = len.unwrap_or(block.size);
        if len > usable {
            return Err(Fault::PastBlock {
                offset,
                len,
                block: usable,
            });
        }
        // SAFETY: `block` checked that `offset + usable` lies in the mapped
        // segment, and `len <= usable`.
        let ptr = unsafe { NonNull::new_unchecked(self.base.as_ptr().add(offset as usize)) };
        Ok((ptr, len))
    }

    /// [`span`](Self::span) for a write: refused on a read-only heap.
    #[inline]
    pub fn writable_span(&self, offset: u64, len: u64) -> Result<(NonNull<u8>, u64), Fault> {
        self.writable()?;
        self.span(offset, Some(len))
    }

    /// Copies `data` to the start of the block at `offset`; `data` may lie
    /// in the segment, even in that block.
    ///
    /// # Safety
    ///
    /// `data` stays readable for the call.
    #[inline]
    pub unsafe fn write(&self, offset: u64, data: RawBytes) -> Result<(), Fault> {
        let (ptr, _) = self.writable_span(offset, data.len as u64)?;
        // SAFETY: `span` checked that `data.len` bytes at `ptr` lie in the
        // block, in the mapping, which is writable; the caller keeps `data`
        // readable.
        unsafe { data.copy_to(ptr.as_ptr()) };
        Ok(())
    }

    /// Allocates `size` bytes at a multiple of `align`; `None` when the
    /// capacity (or, past it, the segment) has no room.
    #[inline]
    pub fn allocate(&self, size: u64, align: u64, wait: Wait) -> Result<Option<u64>, Fault> {
        let allocator = self.writable()?;
        if size == 0 || size > MAX_SIZE {
            return Err(Fault::BadArgument(format!("cannot allocate {size} bytes")));
        }
        if !align.is_power_of_two() || align > MAX_SIZE {
            return Err(Fault::BadArgument(format!(
                "alignment {align} is not a power of two up to 2**42"
            )));
        }
        let prefix = align.max(HEADER);
        if self.kind == Kind::Slab {
            if size > self.unit {
                return Err(Fault::BadArgument(format!(
                    "{size} bytes do not fit in a {}-byte slab",
                    self.unit
                )));
            }
            if prefix > HEADER {
                return Err(Fault::BadArgument(format!(
                    "slabs are {HEADER}-byte aligned; alignment {align} cannot be served"
                )));
            }
        }
        let units = self.units_of(size, prefix);
        let raw_size = self
            .usable(size, prefix)
            .checked_add(prefix)
            .ok_or_else(|| Fault::BadArgument(format!("cannot allocate {size} bytes")))?;
        let layer = self.layer();
        if let Some(layer) = layer {
            if !layer.reserve(units, self.units) {
                return Ok(None);
            }
        }
        let raw = match allocate_raw(allocator, raw_size, prefix, &wait.context()) {
            Ok(raw) => raw,
            Err(err) => {
                if let Some(layer) = layer {
                    layer.unreserve(units);
                }
                return match err {
                    Error::OutOfMemory { .. } | Error::GrowBeyondMax { .. } => Ok(None),
                    other => Err(other.into()),
                };
            }
        };
        let offset = raw + prefix;
        let Some(header) = self.header(offset) else {
            // SAFETY: the fresh block never reached Python.
            let _ = unsafe { free_raw(allocator, raw, &MemContext::default()) };
            if let Some(layer) = layer {
                layer.unreserve(units);
            }
            return Err(Fault::Lib(Error::CorruptHeader {
                reason: format!("the allocator handed out {raw}, outside the data area"),
            }));
        };
        header.write(offset, size, prefix, self.seal());
        if let Some(layer) = layer {
            layer.on_allocate(size);
        }
        Ok(Some(offset))
    }

    /// Takes the block at `offset` out of use, the first half of a free:
    /// validated, refused while views of it live in this process (unless
    /// `force`), and its check word retired in one compare-and-swap, so
    /// that of racing frees exactly one goes on, and from here no offset
    /// names the block (a view, a read or a second free is refused).
    #[inline]
    pub fn retire(&self, offset: u64, force: bool) -> Result<Retired, Fault> {
        self.writable()?;
        if self.kind == Kind::Bump {
            return Err(Fault::Lib(Error::Unsupported(
                "a bump allocator frees everything at once, with reset()",
            )));
        }
        let block = self.block(offset)?;
        if !force {
            let views = self.views.of(offset);
            if views > 0 {
                return Err(Fault::HasViews { offset, views });
            }
        }
        match self.header(offset) {
            Some(header) if header.retire(block.check) => Ok(Retired { offset, block }),
            _ => Err(Fault::NotABlock { offset }),
        }
    }

    /// Gives a retired block back to the allocator, the second half of a
    /// free. On [`Fault::WouldBlock`] the block stays retired, for a patient
    /// retry; on any other refusal its check word is restored (the block is
    /// still the caller's: nobody else could free or reuse it).
    #[inline]
    pub fn release(&self, retired: &Retired, wait: Wait) -> Result<(), Fault> {
        let allocator = self.writable()?;
        let Retired { offset, block } = *retired;
        // SAFETY: retired, so no Python offset names the block any more, and
        // no memoryview of it lives unless the caller forced the free (its
        // documented risk: such a view is raw bytes, never a Rust reference).
        match unsafe { free_raw(allocator, offset - block.prefix, &wait.context()) } {
            Ok(()) => {
                if let Some(layer) = self.layer() {
                    layer.on_free(block.size, self.units_of(block.size, block.prefix));
                }
                Ok(())
            }
            Err(Error::WouldBlock { .. }) => Err(Fault::WouldBlock),
            Err(err) => {
                self.unretire(retired);
                Err(err.into())
            }
        }
    }

    /// Puts a retired block's check word back (its free did not happen).
    pub fn unretire(&self, retired: &Retired) {
        if let Some(header) = self.header(retired.offset) {
            header.restore(retired.block.check);
        }
    }

    /// Forgets every block of a bump allocator, in every process.
    pub fn reset(&self, force: bool) -> Result<(), Fault> {
        let AnyAllocator::Bump(bump) = self.writable()? else {
            return Err(Fault::Lib(Error::Unsupported(
                "only bump allocators reset; free blocks one by one",
            )));
        };
        if !force && self.views.total() > 0 {
            return Err(Fault::HasViews {
                offset: 0,
                views: self.views.total(),
            });
        }
        // SAFETY: the bindings keep no reference into a block between
        // calls (every access validates its offset again, and the layer's
        // generation, bumped below, voids every old header); views, which
        // only exist here when forced, keep the mapping and see the bytes
        // of whatever is allocated there next.
        unsafe { bump.reset_shared() };
        if let Some(layer) = self.layer() {
            layer.on_reset();
        }
        Ok(())
    }

    /// Whether [`usage`](Self::usage) may wait for a lock another process
    /// holds: only for a segment without a layer, whose figures come from
    /// a free-list allocator's walk under its lock.
    pub fn figures_may_wait(&self) -> bool {
        self.layer.is_none() && self.kind.allocator_kind(self.unit) == AllocatorKind::FreeList
    }

    /// What users hold: (capacity, used, usage) in bytes, from the layer,
    /// or from the allocator's own counts for a segment without one (which
    /// may wait for the allocator's lock).
    pub fn usage(&self) -> Result<(u64, u64, Usage), Fault> {
        match self.layer() {
            Some(layer) => {
                let usage = layer.usage();
                Ok((self.units * self.unit, usage.units_used * self.unit, usage))
            }
            None => {
                let stats = self.writable()?.try_stats()?;
                let usage = Usage {
                    units_used: stats.allocated_bytes,
                    peak_units: stats.peak_bytes,
                    requested: stats.allocated_bytes,
                    blocks: stats.live_allocations,
                };
                Ok((stats.capacity, stats.allocated_bytes, usage))
            }
        }
    }

    /// The allocator's view of its heap: (free bytes, largest free block,
    /// fragmentation); `None` on a read-only attachment. May wait for the
    /// allocator's lock, and reports a lock held past the patience.
    pub fn heap_figures(&self) -> Result<Option<(u64, u64, f64)>, Fault> {
        let Store::Writable(allocator) = &self.store else {
            return Ok(None);
        };
        let stats = allocator.try_stats()?;
        Ok(Some((
            stats.free_bytes,
            stats.largest_free_block,
            stats.fragmentation(),
        )))
    }

    /// The allocator's integrity walk, and the layer's counters against
    /// the budget. May wait for the allocator's lock.
    pub fn check(&self) -> Result<(), Fault> {
        let allocator = self.writable()?;
        allocator.check()?;
        if let Some(layer) = self.layer() {
            let usage = layer.usage();
            if usage.units_used > self.units || usage.blocks > usage.units_used {
                return Err(Fault::Lib(Error::CorruptHeader {
                    reason: format!(
                        "the Python layer counts {} blocks taking {} of {} units",
                        usage.blocks, usage.units_used, self.units
                    ),
                }));
            }
        }
        Ok(())
    }

    /// Mends what dead processes left: the allocator's recovery pass, then
    /// the layer's counters recounted from the live blocks' headers.
    ///
    /// The caller holds the interpreter lock throughout, so no other call
    /// of this process starts meanwhile; calls that already run without it
    /// (waiting for a lock) and other processes that map the segment
    /// (unless `force`) are reasons to refuse.
    pub fn recover(&self, force: bool) -> Result<Recovered, Fault> {
        let allocator = self.writable()?;
        let waiting = self.views.detached_calls();
        if waiting > 0 {
            return Err(Fault::Busy(waiting));
        }
        let _alone = allocator.segment().lock_for_recovery(force)?;
        // SAFETY: the recovery lock is held, and no other thread of this
        // process is inside the allocator: this thread holds the interpreter
        // lock, which every call takes to start, and no call that released
        // it is still running (checked above).
        let mut report = unsafe { allocator.recovery_pass() }?;
        let before = self.layer().map(Layer::usage);
        let (handed_to_dead, rolled_back) = self.take_dead_handoffs()?;
        report.blocks_reclaimed += rolled_back;
        let after = self.count_blocks(allocator)?;
        if let Some(layer) = self.layer() {
            layer.recount(after);
        }
        Ok(Recovered {
            report,
            before,
            after,
            handed_to_dead,
        })
    }

    /// The blocks the allocator last handed to threads that died (its
    /// hand-off log), as Python offsets, each once; and how many raw blocks
    /// of theirs it freed instead: those whose Python header was never
    /// written (the allocation never returned to Python) or is retired (a
    /// free that never finished). Safe while other processes run; the
    /// layer's counters catch up at the next `recover`.
    pub fn take_dead_handoffs(&self) -> Result<(Vec<u64>, u64), Fault> {
        let allocator = self.writable()?;
        let (mut live, mut rolled_back) = (Vec::new(), 0);
        for raw in allocator.take_dead_handoffs() {
            match self.python_block_at(raw) {
                Some(offset) => live.push(offset),
                None => {
                    // SAFETY: no Python header names the block (never
                    // written, or retired by a free that never finished).
                    if unsafe { free_raw(allocator, raw, &MemContext::default()) }.is_ok() {
                        rolled_back += 1;
                    }
                }
            }
        }
        Ok((live, rolled_back))
    }

    /// The offset of the live Python block whose raw block starts at `raw`:
    /// its header, at one of the power-of-two prefixes, validates and
    /// records that prefix (so it names this raw start and no other).
    fn python_block_at(&self, raw: u64) -> Option<u64> {
        let seal = self.seal();
        let mut prefix = HEADER;
        while prefix <= MAX_SIZE {
            let offset = raw.checked_add(prefix)?;
            if offset > self.segment_size() {
                return None;
            }
            let block = self
                .header(offset)
                .and_then(|header| header.read(offset, seal));
            if block.is_some_and(|block| block.prefix == prefix) {
                return Some(offset);
            }
            prefix *= 2;
        }
        None
    }

    /// Walks the used regions for live block headers.
    fn count_blocks(&self, allocator: &AnyAllocator) -> Result<Usage, Fault> {
        let seal = self.seal();
        let mut usage = Usage::default();
        let size = self.segment_size();
        let mut scan = |region: Region| {
            if region.used == 0 {
                return;
            }
            let end = region.offset.saturating_add(region.len).min(size);
            let mut offset = (region.offset + HEADER).next_multiple_of(HEADER);
            while offset < end {
                let found = self
                    .header(offset)
                    .and_then(|header| header.read(offset, seal))
                    .filter(|block| {
                        offset
                            .checked_add(self.usable(block.size, block.prefix))
                            .is_some_and(|block_end| block_end <= end)
                    });
                match found {
                    Some(block) => {
                        let usable = self.usable(block.size, block.prefix);
                        usage.blocks += 1;
                        usage.requested += block.size;
                        usage.units_used += self.units_of(block.size, block.prefix);
                        // The next header lies past this block's bytes.
                        offset = (offset + usable + HEADER).next_multiple_of(HEADER);
                    }
                    None => offset += HEADER,
                }
            }
        };
        allocator.regions(&mut scan)?;
        Ok(usage)
    }
}

/// What [`Heap::recover`] did.
pub struct Recovered {
    pub report: shmkit_lib::RecoveryReport,
    /// The layer's counters before and after (recounted from the blocks).
    pub before: Option<Usage>,
    pub after: Usage,
    /// Live blocks handed to threads that died, as Python offsets.
    pub handed_to_dead: Vec<u64>,
}

/// The slot size recorded in a pool segment's parameters.
fn pool_slot(params: &[u64; PARAM_WORDS]) -> u64 {
    params
        .iter()
        .copied()
        .filter(|&slot| slot > 0)
        .max()
        .unwrap_or(0)
}

/// Allocates a raw block (header included) from whichever allocator.
fn allocate_raw(
    allocator: &AnyAllocator,
    size: u64,
    align: u64,
    ctx: &MemContext,
) -> shmkit_lib::Result<u64> {
    match allocator {
        AnyAllocator::Bump(bump) => Ok(bump.alloc_handle(size as usize, align as usize)?.raw()),
        AnyAllocator::Stack(stack) => Ok(stack.alloc_handle(size as usize, align as usize)?.raw()),
        other => match other.as_shm_allocator() {
            Some(allocator) => allocator.allocate_offset(ctx, size as usize, align as usize),
            None => Err(Error::Unsupported("this allocator cannot allocate")),
        },
    }
}

/// Frees a raw block; a bump allocator frees only with `reset`.
///
/// # Safety
///
/// As for `ShmAllocator::free_offset`: nothing of this process uses the
/// block afterwards.
unsafe fn free_raw(
    allocator: &AnyAllocator,
    block: u64,
    ctx: &MemContext,
) -> shmkit_lib::Result<()> {
    match allocator {
        AnyAllocator::Bump(_) => Err(Error::Unsupported(
            "a bump allocator frees everything at once, with reset()",
        )),
        // SAFETY: forwarded from the caller.
        AnyAllocator::Stack(stack) => unsafe {
            stack.free(shmkit_lib::Offset::<u8>::from_raw(block))
        },
        other => match other.as_shm_allocator() {
            // SAFETY: forwarded from the caller.
            Some(allocator) => unsafe { allocator.free_offset(ctx, block) },
            None => Err(Error::Unsupported("this allocator cannot free")),
        },
    }
}
