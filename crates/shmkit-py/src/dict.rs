//! `_RawDict`: the native half of `shmkit.Dict`. A segment managed by the
//! size-class allocator holds a table of stripes; a key's hash picks its
//! stripe, and each stripe is an open-addressing hash table of its own
//! under its own robust lock, so writers of different keys rarely meet.
//! The Python half (`python/shmkit/_dict.py`) turns values into bytes and
//! back and provides the `MutableMapping` methods.
//!
//! # Layout
//!
//! ```text
//! table block:  [magic, stripes, pad ×6] [Stripe; STRIPES] (each 128 bytes)
//! slot array:   [count, pad] [(hash, entry offset); count]
//! entry block:  [key_len: u32, flags: u32, value_len: u64, hash: u64] [key] [value]
//! ```
//!
//! A slot's entry word is `EMPTY` (0), `TOMBSTONE` (1) or the offset of an
//! entry block. Entries never change once published: a write publishes a
//! new entry and retires the old one.
//!
//! # A process killed at any instruction
//!
//! Every change a reader can see is one 8-byte store under the stripe's
//! lock: a slot's entry word (insert, replace, delete) or the stripe's slot
//! array word (a rebuild into a new array). So the table is consistent at
//! every instruction; what a death can leave is a wrong count and blocks
//! nobody names. Before each store the writer lists, in the stripe's
//! `pending` words, the blocks the step makes or unlinks; whoever takes a
//! dead writer's lock recounts the stripe and frees each pending block the
//! stripe no longer names. A pending record is cleared before its block is
//! freed, so a repair never frees a block twice; the price is that a death
//! between the two leaves one retired block allocated, as does a death
//! between an allocation and its listing. `recover()`, which runs alone,
//! gives those back too: with every stripe held, it frees each live block
//! of the segment that no stripe names.
//!
//! Readers take the lock too, and copy a value out before releasing it, so
//! a retired entry can be freed as soon as it is unlinked.

use std::borrow::Cow;
use std::collections::HashSet;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pyo3::exceptions::{PyKeyError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString};
use shmkit_lib::sync::ShmMutexGuard;
use shmkit_lib::{
    Error, MemContext, SegmentAllocator, SegmentOptions, ShmAllocator, ShmMutex, SizeClassAllocator,
};

use crate::errors::lib_to_py;
use crate::own_segment::{self, Holder, InFlight, InFlightCell};

/// Where the table's offset is published in the segment.
const TABLE_ROOT: &str = "shmkit.dict.table";
const MAGIC: u64 = u64::from_le_bytes(*b"shmkDICT");
/// Stripes of the table: a power of two, picked by the hash's top bits.
const STRIPES: usize = 128;
const STRIPE_SHIFT: u32 = 64 - STRIPES.trailing_zeros();
/// Bytes in front of the stripes in the table block.
const TABLE_HEADER: usize = 64;
/// The table block: its header and the stripes.
const TABLE_BYTES: usize = TABLE_HEADER + STRIPES * std::mem::size_of::<Stripe>();
/// Bytes in front of the slots in a slot array.
const SLOTS_HEADER: usize = 16;
const SLOT_BYTES: usize = 16;
/// The smallest slot array.
const MIN_SLOTS: u64 = 8;
/// The largest slot array a stripe may claim (a bound on hostile counts).
const MAX_SLOTS: u64 = 1 << 40;
const EMPTY: u64 = 0;
const TOMBSTONE: u64 = 1;
/// Bytes in front of the key in an entry block.
const ENTRY_HEADER: usize = 24;
/// Entry flag: the key is a `str` (UTF-8), not `bytes`.
const KEY_STR: u32 = 1;
/// Entry flag: the value is a pickle.
const VALUE_PICKLED: u32 = 2;
/// The pending words of a stripe, by role.
const PENDING_NEW_ENTRY: usize = 0;
const PENDING_OLD_ENTRY: usize = 1;
const PENDING_NEW_SLOTS: usize = 2;
const PENDING_OLD_SLOTS: usize = 3;
const PENDING: usize = 4;
/// Values at least this long are copied in without the interpreter lock.
const LONG_COPY: usize = 64 << 10;
/// How long a wait for another process's stripe lock lasts before Python
/// gets a chance to see a signal.
const LOCK_SLICE: Duration = Duration::from_millis(100);

/// One stripe: a lock and the words it protects. All-zero bytes are an
/// empty stripe with a free lock.
#[repr(C, align(64))]
struct Stripe {
    lock: ShmMutex<u64>,
    /// Live entries (read without the lock by `len`).
    live: AtomicU64,
    /// Offset of the slot array, or 0 before the first insert.
    slots: AtomicU64,
    /// Slots not `EMPTY` (live entries and tombstones).
    used: AtomicU64,
    /// Blocks a writer is making or retiring (see the module docs).
    pending: [AtomicU64; PENDING],
}

const _: () = assert!(std::mem::size_of::<Stripe>() == 128);

/// A slot: the entry's full hash, then its offset (or `EMPTY`/`TOMBSTONE`).
#[repr(C)]
struct Slot {
    hash: AtomicU64,
    entry: AtomicU64,
}

/// A checked view of a stripe's slot array.
#[derive(Clone, Copy)]
struct Slots {
    /// The index of the stripe whose array this is.
    stripe: usize,
    offset: u64,
    first: NonNull<Slot>,
    mask: u64,
}

impl Slots {
    fn count(&self) -> u64 {
        self.mask + 1
    }

    /// The slots that name an entry, as `(slot index, entry offset)`.
    fn occupied(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        (0..self.count()).filter_map(|index| {
            let offset = self.slot(index).entry.load(Ordering::Acquire);
            (offset != EMPTY && offset != TOMBSTONE).then_some((index, offset))
        })
    }

    /// `(live entries, used slots)`: what the stripe's counts should say.
    fn counts(&self) -> (u64, u64) {
        (0..self.count()).fold((0, 0), |(live, used), index| {
            match self.slot(index).entry.load(Ordering::Acquire) {
                EMPTY => (live, used),
                TOMBSTONE => (live, used + 1),
                _ => (live + 1, used + 1),
            }
        })
    }

    fn slot(&self, index: u64) -> &Slot {
        // SAFETY: `index & mask` is below the count `slots_at` checked
        // against the block's usable size; a slot is two atomics, valid
        // for any bits, and the array lives as long as the mapping (a
        // stripe frees it only under its lock, which the caller holds).
        unsafe { &*self.first.as_ptr().add((index & self.mask) as usize) }
    }
}

/// A checked view of an entry block.
#[derive(Clone, Copy)]
struct Entry {
    start: NonNull<u8>,
    key_len: usize,
    flags: u32,
    value_len: usize,
}

impl Entry {
    /// The key's bytes.
    ///
    /// # Safety
    ///
    /// The caller holds the lock of the stripe that names the entry (no
    /// one writes a published entry; only a holder frees it).
    unsafe fn key(&self) -> &[u8] {
        // SAFETY: `entry_at` checked the lengths against the block's usable
        // size; the rest is the caller's.
        unsafe { std::slice::from_raw_parts(self.start.as_ptr().add(ENTRY_HEADER), self.key_len) }
    }

    /// The value's bytes. Safety as for [`key`](Self::key).
    unsafe fn value(&self) -> &[u8] {
        // SAFETY: as for `key`.
        unsafe {
            std::slice::from_raw_parts(
                self.start.as_ptr().add(ENTRY_HEADER + self.key_len),
                self.value_len,
            )
        }
    }
}

/// A key as the table stores it.
struct Key<'a> {
    bytes: &'a [u8],
    is_str: bool,
    hash: u64,
}

impl<'a> Key<'a> {
    fn new(bytes: &'a [u8], is_str: bool) -> Key<'a> {
        Key {
            bytes,
            is_str,
            hash: stable_hash(bytes, is_str),
        }
    }

    fn flag(&self) -> u32 {
        if self.is_str {
            KEY_STR
        } else {
            0
        }
    }
}

/// 64-bit FNV-1a over the key's kind and bytes, finished with
/// MurmurHash3's mixer: the same in every process (unlike Python's
/// randomized `hash`), so processes place a key in the same slot. Changing
/// it changes the segment format.
fn stable_hash(bytes: &[u8], is_str: bool) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    h = (h ^ u64::from(is_str)).wrapping_mul(PRIME);
    for &byte in bytes {
        h = (h ^ u64::from(byte)).wrapping_mul(PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn corrupt(reason: String) -> Error {
    Error::CorruptData {
        what: "shmkit dict",
        reason,
    }
}

/// Where a probe for a key ended.
enum Probe {
    Found {
        slot: u64,
        entry: Entry,
        offset: u64,
    },
    Absent {
        insert_at: Option<u64>,
    },
}

/// What a stripe's repair did.
#[derive(Default)]
struct Repair {
    took_over: bool,
    freed: u64,
}

/// The attached segment and the table in it.
struct Attached {
    heap: SizeClassAllocator,
    table_offset: u64,
    stripes: NonNull<Stripe>,
    /// This process's calls in flight on the segment (any handle).
    in_flight: InFlightCell,
}

// SAFETY: the pointers name the shared table, whose words are atomics or
// robust locks, valid from any thread of any process.
unsafe impl Send for Attached {}
// SAFETY: as for Send: every shared word is reached through atomics.
unsafe impl Sync for Attached {}

impl Attached {
    fn create(heap: SizeClassAllocator) -> Result<Attached, Error> {
        let ctx = MemContext::default();
        let offset = heap.allocate_offset(&ctx, TABLE_BYTES, 64)?;
        let start = heap.full_ptr(offset)?.as_ptr();
        // SAFETY: a fresh block of `TABLE_BYTES` bytes, nobody else's until the
        // root is published; all-zero bytes are a free, empty table.
        unsafe {
            std::ptr::write_bytes(start, 0, TABLE_BYTES);
            (*(start as *const AtomicU64)).store(MAGIC, Ordering::Relaxed);
            (*(start.add(8) as *const AtomicU64)).store(STRIPES as u64, Ordering::Relaxed);
        }
        heap.segment()
            .set_root(TABLE_ROOT, shmkit_lib::Offset::<u8>::from_raw(offset))?;
        Attached::open(heap, offset)
    }

    fn attach(heap: SizeClassAllocator, name: &str) -> Result<Attached, Error> {
        let offset = heap
            .segment()
            .root::<u8>(TABLE_ROOT)
            .ok_or_else(|| Error::CorruptHeader {
                reason: format!("segment `{name}` holds no shmkit dict"),
            })?
            .raw();
        Attached::open(heap, offset)
    }

    fn open(heap: SizeClassAllocator, offset: u64) -> Result<Attached, Error> {
        if heap.usable_size(offset)? < TABLE_BYTES {
            return Err(corrupt(format!("the table block at {offset} is too small")));
        }
        let start = heap.full_ptr(offset)?.as_ptr();
        // SAFETY: the block holds `TABLE_BYTES` bytes (checked) and lives as long
        // as the segment; the header words are read as atomics.
        let (magic, stripes) = unsafe {
            (
                (*(start as *const AtomicU64)).load(Ordering::Acquire),
                (*(start.add(8) as *const AtomicU64)).load(Ordering::Acquire),
            )
        };
        if magic != MAGIC || stripes != STRIPES as u64 {
            return Err(corrupt(format!(
                "the table at {offset} is not a shmkit dict of this version"
            )));
        }
        // SAFETY: inside the checked block, 64-aligned (the block is).
        let first = unsafe { start.add(TABLE_HEADER) } as *mut Stripe;
        Ok(Attached {
            heap,
            table_offset: offset,
            stripes: NonNull::new(first).expect("a mapped block is not null"),
            in_flight: InFlightCell::default(),
        })
    }

    /// This process's counter of calls on the segment.
    fn in_flight(&self, py: Python<'_>) -> &InFlight {
        self.in_flight.get(py, self.heap.segment())
    }

    fn stripe(&self, hash: u64) -> &Stripe {
        self.stripe_at((hash >> STRIPE_SHIFT) as usize)
    }

    fn stripe_at(&self, index: usize) -> &Stripe {
        assert!(index < STRIPES);
        // SAFETY: `index < STRIPES`, inside the table block checked at open;
        // a stripe's words are atomics and a robust lock, valid for any bits.
        unsafe { &*self.stripes.as_ptr().add(index) }
    }

    /// The stripe's slot array, checked (`None` before the first insert).
    fn slots_at(&self, stripe: usize, offset: u64) -> Result<Option<Slots>, Error> {
        if offset == EMPTY {
            return Ok(None);
        }
        let bad = || corrupt(format!("a stripe names no slot array at {offset}"));
        if offset == self.table_offset {
            return Err(bad());
        }
        let usable = self.heap.usable_size(offset).map_err(|_| bad())?;
        let start = self.heap.full_ptr(offset).map_err(|_| bad())?.as_ptr();
        // SAFETY: a live block of `usable >= 16` bytes (the smallest class).
        let count = unsafe { (*(start as *const AtomicU64)).load(Ordering::Acquire) };
        let fits = (count as u128) * (SLOT_BYTES as u128) + SLOTS_HEADER as u128 <= usable as u128;
        if !count.is_power_of_two() || !(MIN_SLOTS..=MAX_SLOTS).contains(&count) || !fits {
            return Err(corrupt(format!(
                "the slot array at {offset} claims {count} slots in {usable} bytes"
            )));
        }
        // SAFETY: inside the block; slots are 8-aligned as the block is.
        let first = unsafe { start.add(SLOTS_HEADER) } as *mut Slot;
        Ok(Some(Slots {
            stripe,
            offset,
            first: NonNull::new(first).expect("a mapped block is not null"),
            mask: count - 1,
        }))
    }

    fn slots(&self, stripe: &Stripe) -> Result<Option<Slots>, Error> {
        self.slots_at(self.index_of(stripe), stripe.slots.load(Ordering::Acquire))
    }

    /// The index of one of this table's stripes.
    fn index_of(&self, stripe: &Stripe) -> usize {
        (stripe as *const Stripe as usize - self.stripes.as_ptr() as usize)
            / std::mem::size_of::<Stripe>()
    }

    /// The entry a slot of `slots` names at `offset` with `hash`, checked
    /// against its block: a whole entry whose stored hash is the slot's,
    /// and which belongs in this stripe (so a stray offset that names some
    /// other block, such as the slot array itself, is refused).
    fn entry_at(&self, slots: &Slots, offset: u64, hash: u64) -> Result<Entry, Error> {
        let bad = |why: &str| corrupt(format!("a slot names {why} at {offset}"));
        if offset == self.table_offset || offset == slots.offset || offset < 8 {
            return Err(bad("no entry"));
        }
        if (hash >> STRIPE_SHIFT) as usize != slots.stripe {
            return Err(bad("an entry of another stripe"));
        }
        let usable = self.heap.usable_size(offset).map_err(|_| bad("no entry"))?;
        if usable < ENTRY_HEADER {
            return Err(bad("a cut entry"));
        }
        let start = self.heap.full_ptr(offset).map_err(|_| bad("no entry"))?;
        let ptr = start.as_ptr();
        // SAFETY: the block holds at least the header (checked).
        let (key_len, flags, value_len, stored_hash) = unsafe {
            (
                (ptr as *const u32).read(),
                (ptr.add(4) as *const u32).read(),
                (ptr.add(8) as *const u64).read(),
                (ptr.add(16) as *const u64).read(),
            )
        };
        let total = (ENTRY_HEADER as u128) + u128::from(key_len) + u128::from(value_len);
        if total > usable as u128 || flags & !(KEY_STR | VALUE_PICKLED) != 0 {
            return Err(bad("a cut entry"));
        }
        if stored_hash != hash {
            return Err(bad("an entry whose hash is not the slot's"));
        }
        Ok(Entry {
            start: NonNull::new(ptr).expect("a mapped block is not null"),
            key_len: key_len as usize,
            flags,
            value_len: value_len as usize,
        })
    }

    /// The entry slot `slot` of `slots` names at `offset`, checked.
    fn slot_entry(&self, slots: &Slots, slot: u64, offset: u64) -> Result<Entry, Error> {
        self.entry_at(slots, offset, slots.slot(slot).hash.load(Ordering::Relaxed))
    }

    /// Looks `key` up in `slots`. The caller holds the stripe's lock.
    fn probe(&self, slots: &Slots, key: &Key<'_>) -> Result<Probe, Error> {
        let mut first_tombstone = None;
        for step in 0..slots.count() {
            let index = key.hash.wrapping_add(step) & slots.mask;
            let slot = slots.slot(index);
            match slot.entry.load(Ordering::Acquire) {
                EMPTY => {
                    return Ok(Probe::Absent {
                        insert_at: Some(first_tombstone.unwrap_or(index)),
                    })
                }
                TOMBSTONE => {
                    first_tombstone.get_or_insert(index);
                }
                offset => {
                    if slot.hash.load(Ordering::Relaxed) != key.hash {
                        continue;
                    }
                    let entry = self.entry_at(slots, offset, key.hash)?;
                    // SAFETY: the caller holds the stripe's lock.
                    if entry.flags & KEY_STR == key.flag() && unsafe { entry.key() } == key.bytes {
                        return Ok(Probe::Found {
                            slot: index,
                            entry,
                            offset,
                        });
                    }
                }
            }
        }
        Ok(Probe::Absent {
            insert_at: first_tombstone,
        })
    }

    /// Makes an entry block for `key` and `value` (not yet anyone's).
    fn make_entry(
        &self,
        py: Python<'_>,
        key: &Key<'_>,
        value: &[u8],
        pickled: bool,
    ) -> Result<u64, Error> {
        let total = ENTRY_HEADER
            .checked_add(key.bytes.len())
            .and_then(|n| n.checked_add(value.len()))
            .ok_or_else(|| Error::InvalidSize {
                reason: "the entry is too large".into(),
            })?;
        if key.bytes.len() > u32::MAX as usize {
            return Err(Error::InvalidSize {
                reason: format!("a key of {} bytes is too long", key.bytes.len()),
            });
        }
        let ctx = MemContext::default();
        let offset = self.heap.allocate_offset(&ctx, total, 8)?;
        let ptr = match self.heap.full_ptr(offset) {
            Ok(ptr) => ptr.as_ptr() as usize,
            Err(error) => {
                // SAFETY: the fresh block never left this call.
                let _ = unsafe { self.heap.free_offset(&ctx, offset) };
                return Err(error);
            }
        };
        let flags = key.flag() | if pickled { VALUE_PICKLED } else { 0 };
        let fill = || {
            let ptr = ptr as *mut u8;
            // SAFETY: a fresh block of at least `total` bytes, ours alone
            // until published; `key` and `value` are other memory.
            unsafe {
                (ptr as *mut u32).write(key.bytes.len() as u32);
                (ptr.add(4) as *mut u32).write(flags);
                (ptr.add(8) as *mut u64).write(value.len() as u64);
                (ptr.add(16) as *mut u64).write(key.hash);
                let key_at = ptr.add(ENTRY_HEADER);
                std::ptr::copy_nonoverlapping(key.bytes.as_ptr(), key_at, key.bytes.len());
                let value_at = key_at.add(key.bytes.len());
                std::ptr::copy_nonoverlapping(value.as_ptr(), value_at, value.len());
            }
        };
        if value.len() >= LONG_COPY {
            py.detach(fill);
        } else {
            fill();
        }
        Ok(offset)
    }

    fn free_block(&self, offset: u64) -> Result<(), Error> {
        // SAFETY: callers pass a block that no stripe names any more and
        // whose pending record is cleared, so no one else will free it.
        unsafe { self.heap.free_offset(&MemContext::default(), offset) }
    }

    /// Locks `stripe`, repairing what a dead holder left.
    fn lock<'a>(
        &'a self,
        py: Python<'_>,
        stripe: &'a Stripe,
    ) -> PyResult<(ShmMutexGuard<'a, u64>, Repair)> {
        loop {
            // This process's threads hold a stripe only with the interpreter
            // lock, so a busy stripe is another process's (or a dead one's).
            if let Some(mut guard) = stripe.lock.try_lock().map_err(lib_to_py)? {
                let mut repair = Repair::default();
                if guard.owner_died() {
                    repair = self.repair(stripe).map_err(lib_to_py)?;
                    guard.mark_consistent();
                }
                return Ok((guard, repair));
            }
            py.detach(|| {
                // Wait for the holder, then let the next try take it (a
                // guard stays on the thread that locked).
                if let Ok(guard) = stripe.lock.lock_timeout(LOCK_SLICE) {
                    drop(guard);
                }
            });
            py.check_signals()?;
        }
    }

    /// Mends a stripe whose holder died: frees the pending blocks the
    /// stripe no longer names and recounts. The caller holds the lock.
    fn repair(&self, stripe: &Stripe) -> Result<Repair, Error> {
        let slots = self.slots(stripe)?;
        let mut named = HashSet::new();
        let (mut live, mut used) = (0, 0);
        if let Some(slots) = &slots {
            named.insert(slots.offset);
            named.extend(slots.occupied().map(|(_, offset)| offset));
            (live, used) = slots.counts();
        }
        let mut repair = Repair {
            took_over: true,
            freed: 0,
        };
        for word in &stripe.pending {
            let offset = word.swap(0, Ordering::AcqRel);
            if offset != 0 && !named.contains(&offset) && offset != self.table_offset {
                // A block the dead writer made or unlinked and that nothing
                // names: its own, so freeing it is safe. A refused free (a
                // word that named no block) changes nothing.
                if self.free_block(offset).is_ok() {
                    repair.freed += 1;
                }
            }
        }
        stripe.live.store(live, Ordering::Release);
        stripe.used.store(used, Ordering::Release);
        Ok(repair)
    }

    /// Gives the stripe a slot array of `count` slots holding its live
    /// entries (dropping tombstones). The caller holds the lock.
    fn rebuild(&self, stripe: &Stripe, old: Option<Slots>, count: u64) -> Result<Slots, Error> {
        let bytes = SLOTS_HEADER + count as usize * SLOT_BYTES;
        let ctx = MemContext::default();
        let offset = self.heap.allocate_offset(&ctx, bytes, 8)?;
        stripe.pending[PENDING_NEW_SLOTS].store(offset, Ordering::Release);
        let start = match self.heap.full_ptr(offset) {
            Ok(ptr) => ptr.as_ptr(),
            Err(error) => {
                stripe.pending[PENDING_NEW_SLOTS].store(0, Ordering::Release);
                let _ = self.free_block(offset);
                return Err(error);
            }
        };
        // SAFETY: a fresh block of `bytes` bytes, unpublished.
        unsafe {
            std::ptr::write_bytes(start, 0, bytes);
            (*(start as *const AtomicU64)).store(count, Ordering::Relaxed);
        }
        let new = Slots {
            stripe: self.index_of(stripe),
            offset,
            // SAFETY: inside the fresh block.
            first: NonNull::new(unsafe { start.add(SLOTS_HEADER) } as *mut Slot)
                .expect("a mapped block is not null"),
            mask: count - 1,
        };
        let mut live = 0;
        if let Some(old) = &old {
            for index in 0..old.count() {
                let slot = old.slot(index);
                let entry = slot.entry.load(Ordering::Acquire);
                if entry == EMPTY || entry == TOMBSTONE {
                    continue;
                }
                let hash = slot.hash.load(Ordering::Relaxed);
                let target = (0..count)
                    .map(|step| new.slot(hash.wrapping_add(step)))
                    .find(|slot| slot.entry.load(Ordering::Relaxed) == EMPTY)
                    .ok_or_else(|| corrupt("a stripe holds more entries than it counts".into()))?;
                target.hash.store(hash, Ordering::Relaxed);
                target.entry.store(entry, Ordering::Relaxed);
                live += 1;
            }
            stripe.pending[PENDING_OLD_SLOTS].store(old.offset, Ordering::Release);
        }
        // The one store that switches readers to the new array.
        stripe.slots.store(offset, Ordering::Release);
        stripe.live.store(live, Ordering::Release);
        stripe.used.store(live, Ordering::Release);
        stripe.pending[PENDING_NEW_SLOTS].store(0, Ordering::Release);
        if let Some(old) = old {
            stripe.pending[PENDING_OLD_SLOTS].store(0, Ordering::Release);
            self.free_block(old.offset)?;
        }
        Ok(new)
    }

    /// The stripe's slots with room for one more entry. The caller holds
    /// the lock.
    fn slots_for_insert(&self, stripe: &Stripe) -> Result<Slots, Error> {
        let slots = self.slots(stripe)?;
        let Some(current) = slots else {
            return self.rebuild(stripe, None, MIN_SLOTS);
        };
        let count = current.count();
        let used = stripe.used.load(Ordering::Relaxed);
        if (used + 1) * 4 <= count * 3 {
            return Ok(current);
        }
        // Grow when live entries fill half the array; else the tombstones
        // go and the size stays.
        let live = stripe.live.load(Ordering::Relaxed);
        let target = if (live + 1) * 2 > count {
            count
                .checked_mul(2)
                .filter(|&c| c <= MAX_SLOTS)
                .ok_or_else(|| Error::InvalidSize {
                    reason: "the stripe cannot grow further".into(),
                })?
        } else {
            count
        };
        self.rebuild(stripe, Some(current), target)
    }
}

/// A value copied out of the segment: its bytes, and whether a pickle.
type Copied = (Vec<u8>, bool);

/// Copies an entry's value out. The caller holds its stripe's lock.
fn value_of(entry: &Entry) -> Copied {
    // SAFETY: the caller holds the stripe's lock.
    let value = unsafe { entry.value() }.to_vec();
    (value, entry.flags & VALUE_PICKLED != 0)
}

/// A key object as the table's bytes and kind.
fn key_parts<'py>(key: &'py Bound<'py, PyAny>) -> PyResult<(Cow<'py, [u8]>, bool)> {
    if let Ok(text) = key.cast::<PyString>() {
        return Ok(match text.to_str() {
            Ok(text) => (Cow::Borrowed(text.as_bytes()), true),
            // Lone surrogates (a dict takes them as keys): kept as the
            // bytes `surrogatepass` gives, and given back the same way.
            Err(_) => {
                let encoded = text.call_method1("encode", ("utf-8", "surrogatepass"))?;
                (
                    Cow::Owned(encoded.cast::<PyBytes>()?.as_bytes().to_vec()),
                    true,
                )
            }
        });
    }
    if let Ok(bytes) = key.cast::<PyBytes>() {
        return Ok((Cow::Borrowed(bytes.as_bytes()), false));
    }
    Err(PyTypeError::new_err(format!(
        "shmkit.Dict keys are str or bytes, not {}",
        key.get_type().name()?
    )))
}

/// The Python key object for an entry's key bytes.
fn key_object<'py>(py: Python<'py>, bytes: &[u8], is_str: bool) -> PyResult<Bound<'py, PyAny>> {
    if !is_str {
        return Ok(PyBytes::new(py, bytes).into_any());
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(PyString::new(py, text).into_any());
    }
    PyBytes::new(py, bytes)
        .call_method1("decode", ("utf-8", "surrogatepass"))
        .map_err(|_| lib_to_py(corrupt("a str key holds bytes that are not UTF-8".into())))
}

type Value<'py> = (Bound<'py, PyBytes>, bool);

fn value_object(py: Python<'_>, (bytes, pickled): Copied) -> Value<'_> {
    (PyBytes::new(py, &bytes), pickled)
}

/// The native dict: str or bytes keys, bytes values (pickles flagged).
#[pyclass(module = "shmkit._native", name = "_RawDict", frozen)]
pub struct RawDict {
    attached: Holder<Attached>,
    #[pyo3(get)]
    name: String,
}

impl RawDict {
    fn attached(&self) -> PyResult<Arc<Attached>> {
        self.attached.get()
    }

    /// Puts a new entry for `key`: replacing the old one (`only_if_absent`
    /// false) or keeping it; returns the value the key has afterwards when
    /// it was kept.
    fn store(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &[u8],
        pickled: bool,
        only_if_absent: bool,
    ) -> PyResult<Option<Copied>> {
        let attached = self.attached()?;
        let _call = attached.in_flight(py).enter();
        let (bytes, is_str) = key_parts(key)?;
        let key = Key::new(&bytes, is_str);
        let fresh = attached
            .make_entry(py, &key, value, pickled)
            .map_err(lib_to_py)?;
        let stripe = attached.stripe(key.hash);
        let outcome = {
            let (_guard, _) = attached.lock(py, stripe).inspect_err(|_| {
                let _ = attached.free_block(fresh);
            })?;
            stripe.pending[PENDING_NEW_ENTRY].store(fresh, Ordering::Release);
            let result = (|| -> Result<(Option<u64>, Option<Copied>), Error> {
                let slots = attached.slots_for_insert(stripe)?;
                match attached.probe(&slots, &key)? {
                    Probe::Found { entry, .. } if only_if_absent => {
                        Ok((Some(fresh), Some(value_of(&entry))))
                    }
                    Probe::Found { slot, offset, .. } => {
                        stripe.pending[PENDING_OLD_ENTRY].store(offset, Ordering::Release);
                        slots.slot(slot).entry.store(fresh, Ordering::Release);
                        stripe.pending[PENDING_OLD_ENTRY].store(0, Ordering::Release);
                        Ok((Some(offset), None))
                    }
                    Probe::Absent { insert_at } => {
                        let at =
                            insert_at.ok_or_else(|| corrupt("a stripe has no free slot".into()))?;
                        let slot = slots.slot(at);
                        if slot.entry.load(Ordering::Relaxed) == EMPTY {
                            stripe.used.fetch_add(1, Ordering::Relaxed);
                        }
                        slot.hash.store(key.hash, Ordering::Release);
                        slot.entry.store(fresh, Ordering::Release);
                        stripe.live.fetch_add(1, Ordering::Release);
                        Ok((None, None))
                    }
                }
            })();
            stripe.pending[PENDING_NEW_ENTRY].store(0, Ordering::Release);
            match result {
                Ok(outcome) => outcome,
                Err(error) => {
                    // Never published: the fresh block is ours alone.
                    let _ = attached.free_block(fresh);
                    return Err(lib_to_py(error));
                }
            }
        };
        // The retired block (the replaced entry, or the unused fresh one) is
        // named by no slot: nobody else reaches it.
        let (retired, kept) = outcome;
        if let Some(retired) = retired {
            attached.free_block(retired).map_err(lib_to_py)?;
        }
        Ok(kept)
    }

    /// Removes `key`; returns its value if `want_value`.
    fn remove(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        want_value: bool,
    ) -> PyResult<Option<Option<Copied>>> {
        let attached = self.attached()?;
        let _call = attached.in_flight(py).enter();
        let (bytes, is_str) = key_parts(key)?;
        let key = Key::new(&bytes, is_str);
        let stripe = attached.stripe(key.hash);
        let (retired, value) = {
            let (_guard, _) = attached.lock(py, stripe)?;
            let Some(slots) = attached.slots(stripe).map_err(lib_to_py)? else {
                return Ok(None);
            };
            match attached.probe(&slots, &key).map_err(lib_to_py)? {
                Probe::Absent { .. } => return Ok(None),
                Probe::Found {
                    slot,
                    entry,
                    offset,
                } => {
                    let value = want_value.then(|| value_of(&entry));
                    unlink(stripe, &slots, slot, offset);
                    (offset, value)
                }
            }
        };
        attached.free_block(retired).map_err(lib_to_py)?;
        Ok(Some(value))
    }
}

/// Tombstones a live slot. The caller holds the stripe's lock and frees
/// `offset` afterwards.
fn unlink(stripe: &Stripe, slots: &Slots, slot: u64, offset: u64) {
    stripe.pending[PENDING_OLD_ENTRY].store(offset, Ordering::Release);
    slots.slot(slot).entry.store(TOMBSTONE, Ordering::Release);
    stripe.live.fetch_sub(1, Ordering::Release);
    stripe.pending[PENDING_OLD_ENTRY].store(0, Ordering::Release);
}

#[pymethods]
impl RawDict {
    /// Creates the dict's segment (`create=True`) or attaches it.
    #[new]
    #[pyo3(signature = (name, capacity, create))]
    fn new(py: Python<'_>, name: &str, capacity: u64, create: bool) -> PyResult<Self> {
        let options = SegmentOptions::shm(name);
        let attached = py
            .detach(|| -> Result<Attached, Error> {
                if create {
                    let table = TABLE_BYTES as u64;
                    // The table and one page per stripe's first slot array
                    // on top of what the user asked for.
                    let size = capacity.checked_add(table + (64 << 10)).ok_or_else(|| {
                        Error::InvalidSize {
                            reason: format!("capacity {capacity} is too large"),
                        }
                    })?;
                    Attached::create(SizeClassAllocator::create(&options.size(size))?)
                } else {
                    Attached::attach(SizeClassAllocator::attach(&options)?, name)
                }
            })
            .map_err(lib_to_py)?;
        Ok(RawDict {
            attached: Holder::new(attached, "dict"),
            name: name.to_owned(),
        })
    }

    /// `(value, pickled)` for `key`, or None.
    fn get<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Option<Value<'py>>> {
        let attached = self.attached()?;
        let _call = attached.in_flight(py).enter();
        let (bytes, is_str) = key_parts(key)?;
        let key = Key::new(&bytes, is_str);
        let stripe = attached.stripe(key.hash);
        let value = {
            let (_guard, _) = attached.lock(py, stripe)?;
            let Some(slots) = attached.slots(stripe).map_err(lib_to_py)? else {
                return Ok(None);
            };
            match attached.probe(&slots, &key).map_err(lib_to_py)? {
                Probe::Found { entry, .. } => value_of(&entry),
                Probe::Absent { .. } => return Ok(None),
            }
        };
        Ok(Some(value_object(py, value)))
    }

    /// Whether `key` is in the dict.
    fn contains(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let attached = self.attached()?;
        let _call = attached.in_flight(py).enter();
        let (bytes, is_str) = key_parts(key)?;
        let key = Key::new(&bytes, is_str);
        let stripe = attached.stripe(key.hash);
        let (_guard, _) = attached.lock(py, stripe)?;
        let Some(slots) = attached.slots(stripe).map_err(lib_to_py)? else {
            return Ok(false);
        };
        Ok(matches!(
            attached.probe(&slots, &key).map_err(lib_to_py)?,
            Probe::Found { .. }
        ))
    }

    /// Sets `key` to `value` (a pickle when `pickled`).
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &[u8],
        pickled: bool,
    ) -> PyResult<()> {
        self.store(py, key, value, pickled, false).map(|_| ())
    }

    /// Sets `key` to `value` unless it has a value; returns the value it
    /// has afterwards (`None`: the one given).
    fn setdefault<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        value: &[u8],
        pickled: bool,
    ) -> PyResult<Option<Value<'py>>> {
        Ok(self
            .store(py, key, value, pickled, true)?
            .map(|kept| value_object(py, kept)))
    }

    /// Removes `key`; False when it was absent.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.remove(py, key, false)?.is_some())
    }

    /// Removes `key` and returns `(value, pickled)`, or None when absent.
    fn pop<'py>(&self, py: Python<'py>, key: &Bound<'py, PyAny>) -> PyResult<Option<Value<'py>>> {
        Ok(self
            .remove(py, key, true)?
            .map(|value| value_object(py, value.expect("asked for the value"))))
    }

    /// Removes some entry and returns `(key, value, pickled)`; KeyError
    /// when the dict is empty.
    fn popitem<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyBytes>, bool)> {
        let attached = self.attached()?;
        let _call = attached.in_flight(py).enter();
        for index in 0..STRIPES {
            let stripe = attached.stripe_at(index);
            // By the array, not the count: a writer that died between its
            // publication and its count leaves the count short until the
            // stripe is locked and mended.
            if stripe.slots.load(Ordering::Acquire) == EMPTY {
                continue;
            }
            let taken = {
                let (_guard, _) = attached.lock(py, stripe)?;
                let Some(slots) = attached.slots(stripe).map_err(lib_to_py)? else {
                    continue;
                };
                let Some((slot, offset)) = slots.occupied().next() else {
                    continue;
                };
                let entry = attached
                    .slot_entry(&slots, slot, offset)
                    .map_err(lib_to_py)?;
                // SAFETY: the stripe's lock is held.
                let key = unsafe { entry.key() }.to_vec();
                let value = value_of(&entry);
                unlink(stripe, &slots, slot, offset);
                Some((offset, key, entry.flags & KEY_STR != 0, value))
            };
            if let Some((offset, key, is_str, value)) = taken {
                attached.free_block(offset).map_err(lib_to_py)?;
                let (value, pickled) = value_object(py, value);
                return Ok((key_object(py, &key, is_str)?, value, pickled));
            }
        }
        Err(PyKeyError::new_err("popitem(): dictionary is empty"))
    }

    /// Entries now (without locks: exact when no write is in flight).
    fn len(&self) -> PyResult<usize> {
        let attached = self.attached()?;
        let total: u64 = (0..STRIPES)
            .map(|index| attached.stripe_at(index).live.load(Ordering::Acquire))
            .fold(0u64, u64::saturating_add);
        Ok(total as usize)
    }

    /// A snapshot of the entries, stripe by stripe: `(key, value, pickled)`
    /// when `values`, else the keys alone.
    #[pyo3(signature = (values))]
    fn snapshot<'py>(&self, py: Python<'py>, values: bool) -> PyResult<Vec<Bound<'py, PyAny>>> {
        let attached = self.attached()?;
        let _call = attached.in_flight(py).enter();
        let mut out = Vec::new();
        for index in 0..STRIPES {
            let stripe = attached.stripe_at(index);
            let mut found = Vec::new();
            {
                let (_guard, _) = attached.lock(py, stripe)?;
                let Some(slots) = attached.slots(stripe).map_err(lib_to_py)? else {
                    continue;
                };
                for (slot, offset) in slots.occupied() {
                    let entry = attached
                        .slot_entry(&slots, slot, offset)
                        .map_err(lib_to_py)?;
                    // SAFETY: the stripe's lock is held.
                    let key = unsafe { entry.key() }.to_vec();
                    let value = values.then(|| value_of(&entry));
                    found.push((key, entry.flags & KEY_STR != 0, value));
                }
            }
            for (key, is_str, value) in found {
                let key = key_object(py, &key, is_str)?;
                out.push(match value {
                    None => key,
                    Some(value) => {
                        let (value, pickled) = value_object(py, value);
                        (key, value, pickled).into_pyobject(py)?.into_any()
                    }
                });
            }
        }
        Ok(out)
    }

    /// Removes every entry (stripe by stripe) and gives the room back.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        let attached = self.attached()?;
        let _call = attached.in_flight(py).enter();
        for index in 0..STRIPES {
            let stripe = attached.stripe_at(index);
            let (_guard, _) = attached.lock(py, stripe)?;
            let Some(slots) = attached.slots(stripe).map_err(lib_to_py)? else {
                continue;
            };
            let mut freed = HashSet::new();
            for (slot, offset) in slots.occupied() {
                // Only what is surely an entry of this stripe, and once.
                attached
                    .slot_entry(&slots, slot, offset)
                    .map_err(lib_to_py)?;
                unlink(stripe, &slots, slot, offset);
                if freed.insert(offset) {
                    // Under the lock, one at a time: a death here leaves
                    // at most this block for `recover()` to sweep.
                    attached.free_block(offset).map_err(lib_to_py)?;
                }
            }
            stripe.pending[PENDING_OLD_SLOTS].store(slots.offset, Ordering::Release);
            stripe.slots.store(EMPTY, Ordering::Release);
            stripe.used.store(0, Ordering::Release);
            stripe.pending[PENDING_OLD_SLOTS].store(0, Ordering::Release);
            attached.free_block(slots.offset).map_err(lib_to_py)?;
        }
        Ok(())
    }

    /// The segment allocator's accounting: `(live blocks, allocated
    /// bytes, free bytes, capacity)`. The table itself is one live block.
    fn heap_stats(&self) -> PyResult<(u64, u64, u64, u64)> {
        Ok(own_segment::heap_stats(&self.attached()?.heap))
    }

    /// The stripes whose lock some thread holds now (a snapshot, for tests
    /// and diagnostics).
    fn held_stripes(&self) -> PyResult<Vec<usize>> {
        let attached = self.attached()?;
        Ok((0..STRIPES)
            .filter(|&index| attached.stripe_at(index).lock.is_locked())
            .collect())
    }

    /// Walks the allocator and every stripe: each slot names a whole
    /// entry, and the counts match.
    fn check(&self, py: Python<'_>) -> PyResult<()> {
        let attached = self.attached()?;
        let _call = attached.in_flight(py).enter();
        attached.heap.check().map_err(lib_to_py)?;
        for index in 0..STRIPES {
            let stripe = attached.stripe_at(index);
            let (_guard, _) = attached.lock(py, stripe)?;
            let (mut live, mut used) = (0, 0);
            if let Some(slots) = attached.slots(stripe).map_err(lib_to_py)? {
                for (slot, offset) in slots.occupied() {
                    attached
                        .slot_entry(&slots, slot, offset)
                        .map_err(lib_to_py)?;
                }
                (live, used) = slots.counts();
            }
            let counted = (
                stripe.live.load(Ordering::Acquire),
                stripe.used.load(Ordering::Acquire),
            );
            if counted != (live, used) {
                return Err(lib_to_py(corrupt(format!(
                    "stripe {index} counts {counted:?} (live, used) but holds ({live}, {used})"
                ))));
            }
        }
        Ok(())
    }

    /// Mends what processes that died mid-write left: repairs every stripe,
    /// runs the allocator's recovery, then frees every live block that no
    /// stripe names (the segment is the dict's alone). Refused while other
    /// processes use the segment or a call of this process is in flight on
    /// it (through any handle).
    fn recover(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        let attached = self.attached()?;
        attached.in_flight(py).refuse_recovery_if_busy("dict")?;
        let alone = attached
            .heap
            .segment()
            .lock_for_recovery(false)
            .map_err(lib_to_py)?;
        let (mut locks, mut freed) = (0, 0);
        let mut named = HashSet::from([attached.table_offset]);
        {
            let mut guards = Vec::with_capacity(STRIPES);
            for index in 0..STRIPES {
                let stripe = attached.stripe_at(index);
                let (guard, repair) = attached.lock(py, stripe)?;
                locks += u64::from(repair.took_over);
                freed += repair.freed;
                if let Some(slots) = attached.slots(stripe).map_err(lib_to_py)? {
                    named.insert(slots.offset);
                    named.extend(slots.occupied().map(|(_, offset)| offset));
                }
                guards.push(guard);
            }
            // Waiting for a stripe may have let other threads (or a signal
            // handler) start calls: ask again, now that none can start.
            attached.in_flight(py).refuse_recovery_if_busy("dict")?;
            // SAFETY: no call of this process is in flight on the segment
            // (checked just above, through any handle), and none can start:
            // this thread holds the interpreter lock, which every call takes
            // to start, until the end; the recovery lock keeps other
            // processes out.
            let report = unsafe { attached.heap.recovery_pass() }.map_err(lib_to_py)?;
            locks += report.locks_taken_over;
            freed += report.blocks_reclaimed;
            // Alone, every stripe held: a live block that no stripe names
            // is one a dead writer had made or was retiring.
            // SAFETY: as for the pass above; the segment is the dict's.
            freed += unsafe { attached.heap.free_unnamed(&named) }.map_err(lib_to_py)?;
            drop(guards);
        }
        drop(alone);
        Ok((locks, freed))
    }

    /// Detaches (the segment stays until `unlink()`).
    fn close(&self) -> PyResult<()> {
        self.attached.close()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.attached.is_closed()
    }
}
