//! One attached segment as the Python API sees it: the allocator (or a
//! read-only attachment), the budget layer in the custom header, the block
//! headers, and this process's live views, with the facts every call needs
//! (base address, data offset, budget unit) read once at attach.
//!
//! Nothing here touches Python objects: the classes (`classes.rs`) convert
//! arguments and results, hold the interpreter lock, and release it around
//! waits and long copies.

use std::ptr::NonNull;

use shmkit_lib::segment::header::PARAM_WORDS;
use shmkit_lib::{
    AllocatorKind, AnyAllocator, Error, LinearAlloc, MemContext, PoolAllocator, PoolParams,
    ReadOnlySegment, Region, Segment, SegmentAllocator, SegmentOptions,
};

use crate::blocks::{Block, BlockHeader, HEADER, MAX_SIZE};
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
    pub fn allocator_kind(self) -> AllocatorKind {
        match self {
            Kind::Bump => AllocatorKind::Bump,
            Kind::Stack => AllocatorKind::Stack,
            Kind::FreeList => AllocatorKind::FreeList,
            Kind::Slab => AllocatorKind::Pool,
            Kind::Buddy => AllocatorKind::Buddy,
            Kind::SizeClass => AllocatorKind::SizeClass,
            Kind::ThreadLocal => AllocatorKind::ThreadLocal,
        }
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
    views: Views,
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
fn plan(kind: Kind, unit: u64, units: u64) -> Result<(u64, u64), Fault> {
    let too_large =
        || Fault::BadArgument(format!("a capacity of {units} x {unit} bytes is too large"));
    let capacity = unit.checked_mul(units).ok_or_else(too_large)?;
    let with_slack = |bytes: u64, slack: u64| bytes.checked_add(slack).ok_or_else(too_large);
    Ok(match kind {
        Kind::Bump | Kind::Stack => {
            // Headers cost an eighth for blocks of 256 bytes and more; a
            // budget spent in smaller blocks grows the segment (a 1-byte
            // block takes 32 bytes).
            let size = with_slack(capacity.saturating_add(capacity / 4), SMALL_STATE)?;
            (
                size,
                size.saturating_add(capacity.saturating_mul(32).min(MAX_GROWTH)),
            )
        }
        Kind::FreeList => {
            // Every block is whole slots; a one-slot block takes the slot,
            // the Python header and the allocator's 32-byte header, so
            // `units` of them fit exactly. Growth absorbs fragmentation.
            let block = unit
                .checked_add(HEADER + 32)
                .map(|b| b.next_multiple_of(16).max(48))
                .ok_or_else(too_large)?;
            let size = with_slack(units.checked_mul(block).ok_or_else(too_large)?, SMALL_STATE)?;
            (size, size.saturating_mul(2))
        }
        Kind::Slab => {
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
        Kind::Buddy | Kind::SizeClass | Kind::ThreadLocal => {
            // Their state grows with the maximum size: keep growth to 4x.
            let size = with_slack(capacity.saturating_add(capacity / 4), LARGE_STATE)?;
            (size, size.saturating_mul(4))
        }
    })
}

/// The pool parameters of a slab allocator: one slot class holding a slab
/// and its header.
fn slab_params(slab_size: u64) -> Result<PoolParams, Fault> {
    let slot = slab_size
        .checked_add(HEADER)
        .map(|s| s.next_multiple_of(16))
        .and_then(|s| u32::try_from(s).ok())
        .ok_or_else(|| Fault::BadArgument(format!("slab_size {slab_size} is too large")))?;
    PoolParams::new(&[slot])
        .map_err(|err| Fault::BadArgument(format!("slab_size {slab_size}: {err}")))
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
        let (size, max_size) = plan(kind, budget.unit, budget.units)?;
        let options = shm_options(name)
            .size(size)
            .max_size(max_size)
            .custom_header(layer::initial_bytes(budget.unit, budget.units))
            .zero_on_free(zero_on_free);
        let allocator = match kind {
            Kind::Slab => AnyAllocator::Pool(PoolAllocator::create_with(
                &options,
                &slab_params(budget.unit)?,
            )?),
            other => AnyAllocator::create(other.allocator_kind(), &options)?,
        };
        Heap::new(kind, Store::Writable(allocator))
    }

    /// Attaches the existing segment `name`, which must hold a `kind`
    /// allocator.
    pub fn attach(kind: Kind, name: &str, read_only: bool) -> Result<Heap, Fault> {
        let options = shm_options(name);
        let store = if read_only {
            let segment = ReadOnlySegment::attach(&options)?;
            segment.expect_allocator(kind.allocator_kind(), None)?;
            Store::ReadOnly(segment)
        } else {
            let segment = Segment::attach(&options)?;
            segment.expect_allocator(kind.allocator_kind(), None)?;
            Store::Writable(AnyAllocator::from_segment(segment)?)
        };
        Heap::new(kind, store)
    }

    fn new(kind: Kind, store: Store) -> Result<Heap, Fault> {
        let (base, data_offset, layer, params) = match &store {
            Store::Writable(allocator) => {
                let segment = allocator.segment();
                (
                    segment.base(),
                    segment.data_offset(),
                    segment.custom_header::<Layer>().ok(),
                    segment.allocator_params(),
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
            views: Views::default(),
        };
        match heap.layer() {
            Some(layer) => {
                let unit = layer.unit.load(std::sync::atomic::Ordering::Relaxed);
                let units = layer.units.load(std::sync::atomic::Ordering::Relaxed);
                if unit == 0 || unit.checked_mul(units).is_none() {
                    return Err(Fault::Lib(Error::CorruptHeader {
                        reason: format!(
                            "the Python layer records a capacity of {units} x {unit} bytes"
                        ),
                    }));
                }
                (heap.unit, heap.units) = (unit, units);
            }
            // A slab segment from another tool: its slot, less the header.
            None if kind == Kind::Slab => {
                heap.unit = pool_slot(&params).saturating_sub(HEADER).max(1);
            }
            None => {}
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
        self.kind.allocator_kind().to_string()
    }

    /// Bytes per budget unit (the slot or slab size; 1 for byte budgets).
    pub fn unit(&self) -> u64 {
        self.unit
    }

    /// The budget in units, or `None` for a segment without a layer.
    pub fn units(&self) -> Option<u64> {
        self.layer.map(|_| self.units)
    }

    /// Units a block of `size` bytes takes.
    #[inline]
    fn units_of(&self, size: u64) -> u64 {
        match self.unit_shift {
            Some(shift) => (size >> shift) + u64::from(size & (self.unit - 1) != 0),
            None => size.div_ceil(self.unit),
        }
    }

    /// Bytes a block of `size` bytes may use: whole units.
    #[inline]
    fn usable(&self, size: u64) -> u64 {
        self.units_of(size) * self.unit
    }

    #[inline]
    fn generation(&self) -> u64 {
        self.layer().map_or(0, Layer::generation)
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
            .and_then(|header| header.read(offset, self.generation()))
        else {
            return Err(Fault::NotABlock { offset });
        };
        // A header that passed its check still cannot reach past the segment.
        match offset.checked_add(self.usable(block.size)) {
            Some(end) if end <= self.segment_size() => Ok(block),
            _ => Err(Fault::NotABlock { offset }),
        }
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
        let usable = self.usable(block.size);
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

    /// Copies `data` to the start of the block at `offset`.
    #[inline]
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), Fault> {
        let (ptr, _) = self.writable_span(offset, data.len() as u64)?;
        // SAFETY: `span` checked that `data.len()` bytes at `ptr` lie in the
        // block, in the mapping, which is writable.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.as_ptr(), data.len()) };
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
        if !align.is_power_of_two() {
            return Err(Fault::BadArgument(format!(
                "alignment {align} is not a power of two"
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
        let units = self.units_of(size);
        let raw_size = self
            .usable(size)
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
            let _ = free_raw(allocator, raw, &MemContext::default());
            if let Some(layer) = layer {
                layer.unreserve(units);
            }
            return Err(Fault::Lib(Error::CorruptHeader {
                reason: format!("the allocator handed out {raw}, outside the data area"),
            }));
        };
        header.write(offset, size, prefix, self.generation());
        if let Some(layer) = layer {
            layer.on_allocate(size);
        }
        Ok(Some(offset))
    }

    /// Frees the block at `offset`. A block with live views in this
    /// process is refused unless `force`.
    #[inline]
    pub fn free(&self, offset: u64, force: bool, wait: Wait) -> Result<(), Fault> {
        let allocator = self.writable()?;
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
        let Some(header) = self.header(offset) else {
            return Err(Fault::NotABlock { offset });
        };
        // One compare-and-swap decides between racing frees; a loser has
        // written nothing.
        if !header.retire(block.check) {
            return Err(Fault::NotABlock { offset });
        }
        if let Err(err) = free_raw(allocator, offset - block.prefix, &wait.context()) {
            header.restore(block.check);
            return Err(err.into());
        }
        if let Some(layer) = self.layer() {
            layer.on_free(block.size, self.units_of(block.size));
        }
        Ok(())
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
    /// a free-list or buddy allocator's walk under its lock.
    pub fn figures_may_wait(&self) -> bool {
        self.layer.is_none() && matches!(self.kind, Kind::FreeList | Kind::Buddy)
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
                let stats = self.writable()?.stats();
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
    /// allocator's lock.
    pub fn heap_figures(&self) -> Result<Option<(u64, u64, f64)>, Fault> {
        let Store::Writable(allocator) = &self.store else {
            return Ok(None);
        };
        let stats = allocator.stats();
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
    /// Refused while other processes map the segment, unless `force`.
    pub fn recover(&self, force: bool) -> Result<Recovered, Fault> {
        let allocator = self.writable()?;
        if !force {
            let others = allocator.segment().other_processes()?;
            if !others.is_empty() {
                return Err(Fault::InUse(others));
            }
        }
        let report = allocator.recover()?;
        let before = self.layer().map(Layer::usage);
        let after = self.count_blocks(allocator)?;
        if let Some(layer) = self.layer() {
            layer.recount(after);
        }
        Ok(Recovered {
            report,
            before,
            after,
        })
    }

    /// Walks the used regions for live block headers.
    fn count_blocks(&self, allocator: &AnyAllocator) -> Result<Usage, Fault> {
        let generation = self.generation();
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
                    .and_then(|header| header.read(offset, generation))
                    .filter(|block| {
                        offset
                            .checked_add(self.usable(block.size))
                            .is_some_and(|block_end| block_end <= end)
                    });
                match found {
                    Some(block) => {
                        usage.blocks += 1;
                        usage.requested += block.size;
                        usage.units_used += self.units_of(block.size);
                        // The next header lies past this block's bytes.
                        offset =
                            (offset + self.usable(block.size) + HEADER).next_multiple_of(HEADER);
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
fn free_raw(allocator: &AnyAllocator, block: u64, ctx: &MemContext) -> shmkit_lib::Result<()> {
    match allocator {
        AnyAllocator::Bump(_) => Err(Error::Unsupported(
            "a bump allocator frees everything at once, with reset()",
        )),
        AnyAllocator::Stack(stack) => stack.free(shmkit_lib::Offset::<u8>::from_raw(block)),
        other => match other.as_shm_allocator() {
            Some(allocator) => allocator.free_offset(ctx, block),
            None => Err(Error::Unsupported("this allocator cannot free")),
        },
    }
}
