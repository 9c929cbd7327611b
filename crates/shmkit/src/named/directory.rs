//! The name directory in the segment: an open-addressing table of entries
//! (linear probing, tombstones), grown by rehashing into a new table, behind
//! a robust lock.
//!
//! **Crash safety.** Every change is ordered so that a process killed at any
//! instruction leaves a directory the next locker can use: an entry's fields
//! are written before its state turns LIVE (release); a removal only turns
//! LIVE into TOMBSTONE; a growth builds the new table aside (recorded in
//! `building`), records the old one in `retired`, then switches `table` with
//! one store. The next locker after a death (told by the robust lock) frees
//! a table that was being built or retired and recounts. At most the dead
//! process's in-flight object and name blocks are lost.
//!
//! **Layout.** The root block ([`Directory`]) holds eight words: magic
//! (`+0`), lock (`+8`), the current table's offset (`+16`), the table being
//! built (`+24`) and retired (`+32`), the live and used counts (`+40`,
//! `+48`). A table is a 64-byte header (capacity first) followed by
//! `capacity` entries of 64 bytes, each starting with its state word (0
//! empty, 1 live, 2 tombstone).
//!
//! **Damage.** Every offset read from these words is checked against the
//! segment before use, and a link that leads outside it or to something
//! that is not a table, a name or an object is [`Error::CorruptData`]. A
//! probe visits every slot at most once, so a table with no empty slot
//! (every probe chain joined into one cycle) ends the search after
//! `capacity` steps; the counters are only ever compared, never trusted to
//! bound a loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::type_identity::TypeIdentity;
use crate::alloc::{MemContext, ShmAllocator};
use crate::crash_point::crash_point;
use crate::error::{Error, Result};
use crate::ptr::Offset;
use crate::segment::Segment;
use crate::stable_hash::fnv1a as stable_hash;
use crate::sync::repair::{self, Repair};
use crate::sync::robust_lock::{RobustGuard, RobustLock};

/// "SHMKNAME", little-endian.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"SHMKNAME");
/// The root the directory is published under.
pub(crate) const ROOT_NAME: &str = "shmkit.named-objects";
/// The longest object name, in bytes.
pub(crate) const MAX_NAME_LEN: usize = 4096;
const MAX_TYPE_NAME_LEN: usize = 4096;
const INITIAL_CAPACITY: u64 = 16;
const MAX_CAPACITY: u64 = 1 << 32;
const MAX_OBJECT_ALIGN: u64 = 4096;
/// How long a caller waits for another process's directory operation (each
/// is short: no user code runs under the lock).
const LOCK_PATIENCE: Duration = Duration::from_secs(10);

const WHAT: &str = "name directory";

/// The directory's root block.
#[repr(C)]
pub(crate) struct Directory {
    magic: AtomicU64,
    lock: RobustLock,
    /// Offset of the current table.
    table: AtomicU64,
    /// A table being filled by a growth, not yet published.
    building: AtomicU64,
    /// The table a growth is replacing, until it is switched out.
    retired: AtomicU64,
    /// LIVE entries.
    live: AtomicU64,
    /// LIVE plus TOMBSTONE entries (what bounds probe lengths).
    used: AtomicU64,
    reserved: AtomicU64,
}

/// The block a table starts with; `capacity` entries follow it.
#[repr(C)]
struct TableHeader {
    capacity: AtomicU64,
    reserved: [AtomicU64; 7],
}

/// One slot of the table.
#[repr(C)]
struct Entry {
    state: AtomicU64,
    name_hash: AtomicU64,
    object: AtomicU64,
    /// Offset of the block holding the name, then the type name.
    names: AtomicU64,
    /// `name_len | type_name_len << 32`.
    lens: AtomicU64,
    size: AtomicU64,
    align: AtomicU64,
    type_hash: AtomicU64,
}

mod state {
    pub const EMPTY: u64 = 0;
    pub const LIVE: u64 = 1;
    pub const TOMBSTONE: u64 = 2;
}

const TABLE_HEADER_LEN: u64 = std::mem::size_of::<TableHeader>() as u64;
const ENTRY_LEN: u64 = std::mem::size_of::<Entry>() as u64;

/// A LIVE entry, decoded and checked.
#[derive(Clone, Copy)]
pub(crate) struct Record<'a> {
    pub object: u64,
    pub names_block: u64,
    pub name: &'a [u8],
    pub type_name: &'a [u8],
    pub size: u64,
    pub align: u64,
    pub type_hash: u64,
}

impl Record<'_> {
    /// Refuses a record of another type than `expected`.
    pub(crate) fn expect_type(&self, expected: &TypeIdentity) -> Result<()> {
        if (self.size, self.align, self.type_hash) == (expected.size, expected.align, expected.hash)
        {
            return Ok(());
        }
        Err(Error::WrongType {
            name: String::from_utf8_lossy(self.name).into_owned(),
            expected: expected.to_string(),
            found: format!(
                "`{}` ({} bytes, align {})",
                String::from_utf8_lossy(self.type_name),
                self.size,
                self.align
            ),
        })
    }
}

/// What a new entry points at: blocks the caller allocated and filled.
pub(crate) struct NewEntry<'n> {
    pub name: &'n [u8],
    pub identity: &'n TypeIdentity,
    pub object: u64,
    pub names_block: u64,
}

/// Creates an empty directory in blocks from `alloc`; returns its offset.
/// The caller publishes it (and frees it with [`discard`] if it loses).
pub(crate) fn create<A: ShmAllocator + ?Sized>(segment: &Segment, alloc: &A) -> Result<u64> {
    let ctx = MemContext::default();
    let table = new_table(segment, alloc, INITIAL_CAPACITY)?;
    let offset = match alloc.allocate_offset(&ctx, std::mem::size_of::<Directory>(), 8) {
        Ok(offset) => offset,
        Err(error) => {
            // SAFETY: the fresh table never left this function.
            let _ = unsafe { alloc.free_offset(&ctx, table) };
            return Err(error);
        }
    };
    let ptr = segment.resolve(Offset::<Directory>::from_raw(offset))?;
    // SAFETY: a fresh block of this allocator, owned by this process alone
    // until published, in bounds and aligned (checked by `resolve`).
    unsafe {
        ptr.as_ptr().write(Directory {
            magic: AtomicU64::new(MAGIC),
            lock: RobustLock::new(),
            table: AtomicU64::new(table),
            building: AtomicU64::new(0),
            retired: AtomicU64::new(0),
            live: AtomicU64::new(0),
            used: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
        })
    };
    Ok(offset)
}

/// Frees a directory that was never published.
///
/// # Safety
///
/// `offset` is a directory this process made with [`create`] and never
/// published, so nothing else knows its blocks.
pub(crate) unsafe fn discard<A: ShmAllocator + ?Sized>(
    segment: &Segment,
    alloc: &A,
    offset: u64,
) -> Result<()> {
    let directory = open(segment, offset)?;
    let ctx = MemContext::default();
    // SAFETY: never published (the caller's promise): ours alone.
    unsafe {
        alloc.free_offset(&ctx, directory.table.load(Ordering::Acquire))?;
        alloc.free_offset(&ctx, offset)
    }
}

/// The directory at `offset`, checked to be one.
pub(crate) fn open(segment: &Segment, offset: u64) -> Result<&Directory> {
    let ptr = segment.resolve(Offset::<Directory>::from_raw(offset))?;
    // SAFETY: in bounds and aligned (checked); every field is an atomic, so
    // any bytes are a valid value and concurrent changes are fine; the
    // reference borrows the segment, which keeps the memory mapped.
    let directory = unsafe { ptr.as_ref() };
    if directory.magic.load(Ordering::Acquire) != MAGIC {
        return Err(Error::corrupt_data(
            WHAT,
            format!("the root `{ROOT_NAME}` does not point at a name directory"),
        ));
    }
    Ok(directory)
}

/// A table of `capacity` empty entries, allocated and zeroed.
fn new_table<A: ShmAllocator + ?Sized>(segment: &Segment, alloc: &A, capacity: u64) -> Result<u64> {
    let bytes = capacity
        .checked_mul(ENTRY_LEN)
        .and_then(|entries| entries.checked_add(TABLE_HEADER_LEN))
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| Error::invalid_size("name table too large"))?;
    let offset = alloc.allocate_offset(&MemContext::default(), bytes, 8)?;
    let ptr = segment.resolve_array(Offset::<u8>::from_raw(offset), bytes as u64)?;
    // SAFETY: a fresh block of `bytes` bytes owned by this process alone;
    // zero bytes are an empty header and EMPTY entries.
    unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0, bytes) };
    let header = segment.resolve(Offset::<TableHeader>::from_raw(offset))?;
    // SAFETY: in bounds and aligned (checked); atomics only.
    unsafe { header.as_ref() }
        .capacity
        .store(capacity, Ordering::Release);
    Ok(offset)
}

/// A table, with its capacity read once and checked.
struct Table<'a> {
    offset: u64,
    entries: &'a [Entry],
}

impl<'a> Table<'a> {
    fn open(segment: &'a Segment, offset: u64) -> Result<Table<'a>> {
        let header = segment
            .resolve(Offset::<TableHeader>::from_raw(offset))
            .map_err(|e| Error::corrupt_data(WHAT, format!("table link {offset:#x}: {e}")))?;
        // SAFETY: in bounds and aligned (checked); atomics only.
        let capacity = unsafe { header.as_ref() }.capacity.load(Ordering::Acquire);
        if !capacity.is_power_of_two() || capacity > MAX_CAPACITY {
            return Err(Error::corrupt_data(
                WHAT,
                format!("table capacity {capacity} is not a power of two up to 2^32"),
            ));
        }
        let first = Offset::<Entry>::from_raw(offset.saturating_add(TABLE_HEADER_LEN));
        let entries = segment.resolve_array(first, capacity).map_err(|e| {
            Error::corrupt_data(
                WHAT,
                format!("table at {offset:#x} of {capacity} entries: {e}"),
            )
        })?;
        // SAFETY: `capacity` entries in bounds and aligned (checked);
        // atomics only; borrowed from the segment.
        let entries = unsafe { std::slice::from_raw_parts(entries.as_ptr(), capacity as usize) };
        Ok(Table { offset, entries })
    }

    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// Slot indices in probe order for `hash`: every slot once.
    fn probe(&self, hash: u64) -> impl Iterator<Item = usize> {
        let mask = self.mask();
        let start = hash as usize & mask;
        (0..self.entries.len()).map(move |step| (start + step) & mask)
    }
}

/// The directory, locked by this thread.
pub(crate) struct Locked<'a> {
    segment: &'a Segment,
    directory: &'a Directory,
    table: Table<'a>,
    _guard: RobustGuard<'a>,
}

impl Directory {
    /// Takes the lock; after a dead holder, first mends what it left (the
    /// one repair rule, `sync::repair`).
    pub(crate) fn lock<'a, A: ShmAllocator + ?Sized>(
        &'a self,
        segment: &'a Segment,
        alloc: &A,
    ) -> Result<Locked<'a>> {
        let guard = self.lock.lock(LOCK_PATIENCE)?;
        repair::before_operation(
            &guard,
            &mut Mending {
                directory: self,
                segment,
                alloc,
            },
        )?;
        let table = Table::open(segment, self.table.load(Ordering::Acquire))?;
        Ok(Locked {
            segment,
            directory: self,
            table,
            _guard: guard,
        })
    }

    /// Frees a half-built or half-retired table and recounts the entries.
    fn mend<A: ShmAllocator + ?Sized>(&self, segment: &Segment, alloc: &A) -> Result<()> {
        let ctx = MemContext::default();
        let current = self.table.load(Ordering::Acquire);
        for word in [&self.building, &self.retired] {
            let stray = word.load(Ordering::Acquire);
            if stray != 0 && stray != current {
                // Clear first: a death between the two leaks the table
                // rather than freeing it twice.
                word.store(0, Ordering::Release);
                // SAFETY: under the directory lock, a table neither current
                // nor in anyone's hands: its builder or retirer died.
                let _ = unsafe { alloc.free_offset(&ctx, stray) };
            }
            word.store(0, Ordering::Release);
        }
        let table = Table::open(segment, current)?;
        let (mut live, mut used) = (0, 0);
        for entry in table.entries {
            match entry.state.load(Ordering::Acquire) {
                state::LIVE => {
                    live += 1;
                    used += 1;
                }
                state::TOMBSTONE => used += 1,
                _ => {}
            }
        }
        self.live.store(live, Ordering::Release);
        self.used.store(used, Ordering::Release);
        Ok(())
    }
}

/// The directory as its repair sees it: a dead holder may have left a table
/// half built or half retired, and the counts off.
struct Mending<'a, A: ?Sized> {
    directory: &'a Directory,
    segment: &'a Segment,
    alloc: &'a A,
}

impl<A: ShmAllocator + ?Sized> Repair for Mending<'_, A> {
    /// Operations on the directory report what they find; nothing is
    /// retried.
    const RETRY_AFTER_REPAIR: bool = false;

    fn repair(&mut self) -> Result<()> {
        self.directory.mend(self.segment, self.alloc)
    }
}

impl<'a> Locked<'a> {
    /// The LIVE entry named `name`, if any.
    pub(crate) fn find(&self, name: &[u8]) -> Result<Option<(usize, Record<'a>)>> {
        let hash = stable_hash(name);
        for index in self.table.probe(hash) {
            let entry = &self.table.entries[index];
            match entry.state.load(Ordering::Acquire) {
                state::EMPTY => return Ok(None),
                state::TOMBSTONE => {}
                state::LIVE => {
                    if entry.name_hash.load(Ordering::Relaxed) == hash {
                        let record = self.decode(entry)?;
                        if record.name == name {
                            return Ok(Some((index, record)));
                        }
                    }
                }
                other => return Err(bad_state(other)),
            }
        }
        Ok(None)
    }

    /// Files `new` (whose name is not present: the caller just looked).
    pub(crate) fn insert<A: ShmAllocator + ?Sized>(
        &mut self,
        alloc: &A,
        new: &NewEntry<'_>,
    ) -> Result<()> {
        let capacity = self.table.entries.len() as u64;
        // Saturating: the counters are whatever the segment holds.
        let used = self.directory.used.load(Ordering::Acquire);
        if used.saturating_add(1).saturating_mul(4) > capacity * 3 {
            let live = self.directory.live.load(Ordering::Acquire);
            // Double when live entries fill half; otherwise rehash at the
            // same size, which clears tombstones.
            let target = if live.saturating_add(1).saturating_mul(2) > capacity {
                capacity * 2
            } else {
                capacity
            };
            if target > MAX_CAPACITY {
                return Err(Error::invalid_size(
                    "the name directory is full (2^32 names)",
                ));
            }
            self.rehash(alloc, target)?;
        }
        let hash = stable_hash(new.name);
        let index = self
            .table
            .probe(hash)
            .find(|&index| self.table.entries[index].state.load(Ordering::Acquire) != state::LIVE)
            .ok_or_else(|| Error::corrupt_data(WHAT, "no free slot below the load bound"))?;
        let entry = &self.table.entries[index];
        let was = entry.state.load(Ordering::Acquire);
        entry.name_hash.store(hash, Ordering::Relaxed);
        entry.object.store(new.object, Ordering::Relaxed);
        entry.names.store(new.names_block, Ordering::Relaxed);
        entry.lens.store(
            new.name.len() as u64 | (new.identity.name.len() as u64) << 32,
            Ordering::Relaxed,
        );
        entry.size.store(new.identity.size, Ordering::Relaxed);
        entry.align.store(new.identity.align, Ordering::Relaxed);
        entry.type_hash.store(new.identity.hash, Ordering::Relaxed);
        crash_point!("directory.insert.filled");
        entry.state.store(state::LIVE, Ordering::Release);
        crash_point!("directory.insert.published");
        self.directory.live.fetch_add(1, Ordering::AcqRel);
        if was == state::EMPTY {
            self.directory.used.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Turns the LIVE entry at `index` into a tombstone.
    pub(crate) fn remove(&mut self, index: usize) {
        self.table.entries[index]
            .state
            .store(state::TOMBSTONE, Ordering::Release);
        crash_point!("directory.remove.marked");
        self.directory.live.fetch_sub(1, Ordering::AcqRel);
    }

    /// Every LIVE entry, in table order.
    pub(crate) fn records(&self) -> Result<Vec<Record<'a>>> {
        let mut records = Vec::new();
        for entry in self.table.entries {
            match entry.state.load(Ordering::Acquire) {
                state::LIVE => records.push(self.decode(entry)?),
                state::EMPTY | state::TOMBSTONE => {}
                other => return Err(bad_state(other)),
            }
        }
        Ok(records)
    }

    /// Checks the counters against the table and every entry's probe chain.
    pub(crate) fn check(&self) -> Result<()> {
        let records = self.records()?;
        let live = self.directory.live.load(Ordering::Acquire);
        if records.len() as u64 != live {
            return Err(Error::corrupt_data(
                WHAT,
                format!("{} live entries, counter says {live}", records.len()),
            ));
        }
        for record in &records {
            if self.find(record.name)?.map(|(_, found)| found.object) != Some(record.object) {
                return Err(Error::corrupt_data(
                    WHAT,
                    format!(
                        "`{}` is not reachable from its hash",
                        String::from_utf8_lossy(record.name)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Moves every LIVE entry into a new table of `capacity` slots.
    fn rehash<A: ShmAllocator + ?Sized>(&mut self, alloc: &A, capacity: u64) -> Result<()> {
        let directory = self.directory;
        let fresh_offset = new_table(self.segment, alloc, capacity)?;
        directory.building.store(fresh_offset, Ordering::Release);
        crash_point!("directory.rehash.building");
        let fresh = Table::open(self.segment, fresh_offset)?;
        let mut live = 0;
        for entry in self.table.entries {
            if entry.state.load(Ordering::Acquire) != state::LIVE {
                continue;
            }
            let hash = entry.name_hash.load(Ordering::Relaxed);
            let index = fresh
                .probe(hash)
                .find(|&index| fresh.entries[index].state.load(Ordering::Relaxed) == state::EMPTY)
                .ok_or_else(|| Error::corrupt_data(WHAT, "more live entries than slots"))?;
            let slot = &fresh.entries[index];
            for (to, from) in [
                (&slot.name_hash, &entry.name_hash),
                (&slot.object, &entry.object),
                (&slot.names, &entry.names),
                (&slot.lens, &entry.lens),
                (&slot.size, &entry.size),
                (&slot.align, &entry.align),
                (&slot.type_hash, &entry.type_hash),
            ] {
                to.store(from.load(Ordering::Relaxed), Ordering::Relaxed);
            }
            slot.state.store(state::LIVE, Ordering::Release);
            live += 1;
        }
        let old = self.table.offset;
        directory.retired.store(old, Ordering::Release);
        crash_point!("directory.rehash.retired");
        directory.table.store(fresh_offset, Ordering::Release);
        directory.building.store(0, Ordering::Release);
        directory.live.store(live, Ordering::Release);
        directory.used.store(live, Ordering::Release);
        // Cleared before the free: a death in between leaks the old table
        // rather than freeing it twice.
        directory.retired.store(0, Ordering::Release);
        self.table = fresh;
        // SAFETY: under the directory lock, which every reader of a table
        // holds; no longer recorded, and `self` no longer refers to it.
        unsafe { alloc.free_offset(&MemContext::default(), old) }
    }

    /// Decodes a LIVE entry, checking every field against the segment.
    fn decode(&self, entry: &Entry) -> Result<Record<'a>> {
        let lens = entry.lens.load(Ordering::Relaxed);
        let (name_len, type_len) = ((lens & 0xffff_ffff) as usize, (lens >> 32) as usize);
        if name_len == 0 || name_len > MAX_NAME_LEN || type_len > MAX_TYPE_NAME_LEN {
            return Err(Error::corrupt_data(
                WHAT,
                format!("entry with a {name_len}-byte name and a {type_len}-byte type name"),
            ));
        }
        let names_block = entry.names.load(Ordering::Relaxed);
        let bytes = self
            .segment
            .resolve_array(
                Offset::<u8>::from_raw(names_block),
                (name_len + type_len) as u64,
            )
            .map_err(|e| Error::corrupt_data(WHAT, format!("name link {names_block:#x}: {e}")))?;
        // SAFETY: in bounds (checked); the name block is written before its
        // entry turns LIVE and never changed afterwards; borrowed from the
        // segment, which keeps it mapped.
        let bytes = unsafe { std::slice::from_raw_parts(bytes.as_ptr(), name_len + type_len) };
        let (name, type_name) = bytes.split_at(name_len);
        let object = entry.object.load(Ordering::Relaxed);
        let size = entry.size.load(Ordering::Relaxed);
        let align = entry.align.load(Ordering::Relaxed);
        if !align.is_power_of_two() || align > MAX_OBJECT_ALIGN || object % align != 0 {
            return Err(Error::corrupt_data(
                WHAT,
                format!("object at {object} with alignment {align}"),
            ));
        }
        self.segment
            .check_range(object, size.max(1))
            .map_err(|e| Error::corrupt_data(WHAT, format!("object link {object:#x}: {e}")))?;
        Ok(Record {
            object,
            names_block,
            name,
            type_name,
            size,
            align,
            type_hash: entry.type_hash.load(Ordering::Relaxed),
        })
    }
}

fn bad_state(state: u64) -> Error {
    Error::corrupt_data(WHAT, format!("entry in unknown state {state}"))
}

/// Forges what a process killed in the middle of an operation leaves.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Marks the directory's lock as held by a dead process.
    pub(crate) fn abandon_lock(directory: &Directory) {
        crate::sync::robust_lock::testing::forge_owner(
            &directory.lock,
            crate::sync::robust_lock::testing::dead_pid(),
        );
    }

    /// A table allocated for a growth that never got published.
    pub(crate) fn abandon_growth<A: ShmAllocator + ?Sized>(
        segment: &Segment,
        alloc: &A,
        directory: &Directory,
    ) -> u64 {
        let stray = new_table(segment, alloc, 64).unwrap();
        directory.building.store(stray, Ordering::Release);
        stray
    }

    /// Skews the live counter, as a death between two stores would.
    pub(crate) fn skew_counter(directory: &Directory) {
        directory.live.fetch_add(5, Ordering::AcqRel);
    }

    /// Overwrites both counters, as a stray write would.
    pub(crate) fn set_counters(directory: &Directory, value: u64) {
        directory.live.store(value, Ordering::Release);
        directory.used.store(value, Ordering::Release);
    }

    /// Writes `state` into every non-empty slot of the table.
    pub(crate) fn scribble_states(segment: &Segment, directory: &Directory, value: u64) {
        let table = Table::open(segment, directory.table.load(Ordering::Acquire)).unwrap();
        for entry in table.entries {
            if entry.state.load(Ordering::Acquire) != state::EMPTY {
                entry.state.store(value, Ordering::Release);
            }
        }
    }
}
