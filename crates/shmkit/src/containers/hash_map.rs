//! `ShmHashMap<K, V>`: an open-addressing hash map that lives in a segment.
//!
//! # Layout
//!
//! One block per table, three arrays side by side, so no padding byte is
//! ever written to shared memory:
//!
//! ```text
//! [ctrl: u8; buckets] [pad to align K] [keys: K; buckets] [pad to align V] [values: V; buckets]
//! ```
//!
//! A control byte is `EMPTY` (0) or `0x80 | h7`, where `h7` is the top seven
//! bits of the key's hash (compared before the key, to skip most `Eq`
//! calls). Any other control byte is corrupt data.
//!
//! # Probing
//!
//! Linear probing from `hash & (buckets - 1)`, with backward-shift deletion:
//! removing an entry moves the later entries of its cluster back into the
//! gap, so there are no tombstones, a lookup stops at the first empty
//! bucket, and the table never fills with deleted entries. The table grows
//! (doubling, rehashing every entry into a new block, then freeing the old
//! one) before the load passes 3/4. Every probe loop runs at most `buckets`
//! times, so a table whose control bytes were overwritten cannot loop
//! forever: a probe that finds no empty bucket reports corrupt data.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::mem::{align_of, needs_drop, size_of};
use std::ptr::NonNull;

use crate::alloc::ShmAllocator;
use crate::error::{Error, Result};
use crate::ptr::{Offset, SegmentId, ShmSafe};
use crate::stable_hash::{fnv1a_extend, FNV_OFFSET_BASIS};

use super::storage::{
    allocate_block, free_block, recorded_before_free, recorded_count, Storage, UNBOUND,
};
use crate::crash_point::crash_point;

const EMPTY: u8 = 0;
const FULL: u8 = 0x80;
/// The smallest table (a power of two).
const MIN_BUCKETS: usize = 8;

/// The most entries a table of `buckets` holds before it grows (3/4).
const fn max_load(buckets: usize) -> usize {
    buckets - buckets / 4
}

/// The map's hash function: 64-bit FNV-1a over the bytes that `Hash` feeds
/// it, finished with MurmurHash3's 64-bit mixer so that the low bits (which
/// pick the bucket) depend on every input bit.
///
/// Why not std's `RandomState`: it draws its keys at random in each
/// process, so two processes would place the same key in different buckets
/// and never find each other's entries. This function has no key and no
/// state but its input, so every process (and every run) of the same build
/// hashes a key to the same bucket. Two consequences: keys whose `Hash`
/// depends on something process-local (an address) must not be used, and
/// the map offers no protection against keys chosen to collide (hash
/// flooding); do not key it with untrusted input where that matters.
/// Changing this function changes the on-segment format.
struct StableHasher(u64);

impl Hasher for StableHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv1a_extend(self.0, bytes);
    }

    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

fn hash_of<Q: Hash + ?Sized>(key: &Q) -> u64 {
    let mut hasher = StableHasher(FNV_OFFSET_BASIS);
    key.hash(&mut hasher);
    hasher.finish()
}

/// The control byte of a full bucket whose key has `hash`.
fn tag(hash: u64) -> u8 {
    FULL | (hash >> 57) as u8
}

/// Where the arrays of a table of `buckets` sit in its block.
struct TableLayout {
    keys_at: usize,
    values_at: usize,
    bytes: usize,
    align: usize,
}

impl TableLayout {
    fn new<K, V>(buckets: usize) -> Option<TableLayout> {
        let keys_at = buckets.checked_next_multiple_of(align_of::<K>())?;
        let keys_end = keys_at.checked_add(buckets.checked_mul(size_of::<K>())?)?;
        let values_at = keys_end.checked_next_multiple_of(align_of::<V>())?;
        let bytes = values_at.checked_add(buckets.checked_mul(size_of::<V>())?)?;
        if bytes > isize::MAX as usize {
            return None;
        }
        Some(TableLayout {
            keys_at,
            values_at,
            bytes,
            align: align_of::<K>().max(align_of::<V>()),
        })
    }
}

/// A checked table: `mask + 1` buckets (a power of two) of a live block.
/// Every accessor masks its index, so no index can leave the arrays.
struct Table<K, V> {
    ctrl: NonNull<u8>,
    keys: NonNull<K>,
    values: NonNull<V>,
    mask: usize,
}

impl<K, V> Clone for Table<K, V> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K, V> Copy for Table<K, V> {}

/// What a probe for a key found.
enum Probe {
    /// The key is in this bucket.
    Found(usize),
    /// The key is absent; this is the empty bucket that ends its probe.
    Vacant(usize),
}

impl<K, V> Table<K, V> {
    /// # Safety
    ///
    /// `base` must be a live block laid out by `layout` for `buckets` (a
    /// power of two) buckets, valid for as long as the table is used.
    unsafe fn at(base: NonNull<u8>, layout: &TableLayout, buckets: usize) -> Self {
        // SAFETY: the offsets lie inside the block, by the caller's promise.
        unsafe {
            Table {
                ctrl: base,
                keys: base.add(layout.keys_at).cast(),
                values: base.add(layout.values_at).cast(),
                mask: buckets - 1,
            }
        }
    }

    fn buckets(&self) -> usize {
        self.mask + 1
    }

    fn ctrl(&self, i: usize) -> u8 {
        // SAFETY: the masked index is one of the table's control bytes.
        unsafe { self.ctrl.as_ptr().add(i & self.mask).read() }
    }

    fn set_ctrl(&self, i: usize, value: u8) {
        // SAFETY: as in `ctrl`; the container's `&mut self` (held by every
        // caller that changes the table) makes this the only writer here.
        unsafe { self.ctrl.as_ptr().add(i & self.mask).write(value) }
    }

    fn key(&self, i: usize) -> *mut K {
        // SAFETY: the masked index is inside the keys array.
        unsafe { self.keys.as_ptr().add(i & self.mask) }
    }

    fn value(&self, i: usize) -> *mut V {
        // SAFETY: the masked index is inside the values array.
        unsafe { self.values.as_ptr().add(i & self.mask) }
    }

    /// The first empty bucket on the probe path of `hash`, if any.
    fn vacant(&self, hash: u64) -> Option<usize> {
        let mut i = hash as usize & self.mask;
        for _ in 0..self.buckets() {
            if self.ctrl(i) == EMPTY {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
        None
    }
}

fn corrupt(reason: impl Into<String>) -> Error {
    Error::corrupt_data("hash map", reason)
}

fn bad_ctrl(i: usize, byte: u8) -> Error {
    corrupt(format!("bucket {i} has control byte {byte:#04x}"))
}

impl<K: Hash + Eq, V> Table<K, V> {
    /// Looks `key` up (bounded by the table size).
    fn probe<Q>(&self, hash: u64, key: &Q) -> Result<Probe>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let want = tag(hash);
        let mut i = hash as usize & self.mask;
        for _ in 0..self.buckets() {
            let c = self.ctrl(i);
            if c == EMPTY {
                return Ok(Probe::Vacant(i));
            }
            if c & FULL == 0 {
                return Err(bad_ctrl(i, c));
            }
            // SAFETY: a full bucket holds a key; any bits are a `K` (`K:
            // ShmSafe` for every map), and no `&mut` to it is alive.
            if c == want && unsafe { &*self.key(i) }.borrow() == key {
                return Ok(Probe::Found(i));
            }
            i = (i + 1) & self.mask;
        }
        Err(corrupt(format!("no empty bucket among {}", self.buckets())))
    }
}

/// A hash map whose entries live in a segment; the shared-memory
/// counterpart of `std::collections::HashMap`.
///
/// The map value itself is 32 bytes of plain numbers (table offset, bucket
/// count, length, segment id) and can be placed anywhere in a segment; the
/// entries sit in one table block (see the source for the layout: linear
/// probing with backward-shift deletion, no tombstones, grown by doubling at
/// load 3/4). Keys are hashed with a fixed function that every process
/// computes alike (std's random per-process hasher would scatter the same key
/// differently in each process), so keys must hash without looking at
/// addresses, and keys from an adversary can be chosen to collide.
///
/// Every operation takes the segment's allocator and checks the recorded
/// fields first: bucket count a power of two, length within the load bound,
/// the table inside a live block of that allocator (an allocator of another
/// segment is refused with [`Error::ForeignPointer`]); a control byte that
/// the map could never have written is [`Error::CorruptData`], and every
/// probe is bounded by the table size.
///
/// A `ShmHashMap` has no `Drop`: call [`free`](Self::free) to drop the
/// entries and return the table; forgetting it leaks the table, like a
/// leaked `Box`.
///
/// Not synchronized: see the [module documentation](crate::containers).
///
/// ```
/// use shmkit::containers::ShmHashMap;
/// use shmkit::{SegmentAllocator, SegmentOptions, SizeClassAllocator};
///
/// let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let mut ages = ShmHashMap::<u64, u32>::new();
/// assert_eq!(ages.insert(&heap, 7, 30)?, None);
/// assert_eq!(ages.insert(&heap, 7, 31)?, Some(30));
/// assert_eq!(ages.get(&heap, &7)?, Some(&31));
/// assert_eq!(ages.remove(&heap, &7)?, Some(31));
/// assert!(ages.is_empty());
/// ages.free(&heap)?;
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct ShmHashMap<K, V> {
    /// Offset of the table block; 0 when there is none.
    table: u64,
    /// Number of buckets (a power of two), 0 without a table.
    buckets: u64,
    /// Number of entries.
    len: u64,
    /// Id of the segment the table came from, or `UNBOUND`.
    segment: u64,
    _type: PhantomData<(K, V)>,
}

// SAFETY: `repr(C)` of four `u64`s and a zero-sized marker: no address, no
// padding, every bit pattern is a value (each use checks the fields).
unsafe impl<K: ShmSafe, V: ShmSafe> ShmSafe for ShmHashMap<K, V> {}

impl<K: ShmSafe + Hash + Eq, V: ShmSafe> ShmHashMap<K, V> {
    /// An empty map; it allocates on the first insert.
    pub const fn new() -> Self {
        ShmHashMap {
            table: 0,
            buckets: 0,
            len: 0,
            segment: UNBOUND,
            _type: PhantomData,
        }
    }

    /// An empty map with room for at least `capacity` entries.
    pub fn with_capacity<A: ShmAllocator + ?Sized>(alloc: &A, capacity: usize) -> Result<Self> {
        let mut map = Self::new();
        map.reserve(alloc, capacity)?;
        Ok(map)
    }

    /// The number of entries, as recorded (every access checks it).
    pub fn len(&self) -> usize {
        usize::try_from(self.len).unwrap_or(usize::MAX)
    }

    /// Whether the map has no entries.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many entries fit before the table grows, as recorded.
    pub fn capacity(&self) -> usize {
        max_load(usize::try_from(self.buckets).unwrap_or(usize::MAX))
    }

    /// Checks the fields against `alloc`; returns the table (if any) and
    /// the length.
    fn table<A: ShmAllocator + ?Sized>(&self, alloc: &A) -> Result<(Option<Table<K, V>>, usize)> {
        let len = recorded_count("hash map", "length", self.len)?;
        if self.table == 0 {
            if self.buckets != 0 || len != 0 {
                return Err(corrupt(format!(
                    "no table, yet {} buckets and length {len}",
                    self.buckets
                )));
            }
            return Ok((None, 0));
        }
        let buckets = recorded_count("hash map", "bucket count", self.buckets)?;
        if buckets < MIN_BUCKETS || !buckets.is_power_of_two() {
            return Err(corrupt(format!(
                "bucket count {buckets} is not a power of two of at least {MIN_BUCKETS}"
            )));
        }
        if len > max_load(buckets) {
            return Err(corrupt(format!(
                "length {len} exceeds the load bound of {buckets} buckets"
            )));
        }
        let layout = TableLayout::new::<K, V>(buckets)
            .ok_or_else(|| corrupt(format!("a table of {buckets} buckets overflows")))?;
        let storage = Storage {
            what: "hash map",
            segment: self.segment,
            offset: self.table,
        };
        let base = storage.resolve(alloc, layout.bytes, layout.align, self)?;
        // SAFETY: `resolve` checked a live block of `layout.bytes`, aligned
        // for the table, that does not contain the map.
        Ok((Some(unsafe { Table::at(base, &layout, buckets) }), len))
    }

    /// Moves every entry into a new table with room for `needed` entries and
    /// frees the old one. On error the map is unchanged.
    fn grow<A: ShmAllocator + ?Sized>(
        &mut self,
        alloc: &A,
        old: Option<Table<K, V>>,
        len: usize,
        needed: usize,
    ) -> Result<Table<K, V>> {
        let too_large = || Error::invalid_size(format!("a hash map of {needed} entries"));
        let mut buckets = old.map_or(MIN_BUCKETS, |t| t.buckets().saturating_mul(2));
        while max_load(buckets) < needed {
            buckets = buckets.checked_mul(2).ok_or_else(too_large)?;
        }
        let layout = TableLayout::new::<K, V>(buckets).ok_or_else(too_large)?;
        let block = allocate_block(alloc, self.segment, layout.bytes, layout.align)?;
        // SAFETY: a fresh block of `layout.bytes`, aligned for the table.
        let new = unsafe { Table::<K, V>::at(block.ptr, &layout, buckets) };
        // SAFETY: the control bytes are the block's first `buckets` bytes.
        unsafe { std::ptr::write_bytes(new.ctrl.as_ptr(), EMPTY, buckets) };
        if let Some(old) = old {
            if let Err(err) = Self::rehash(&old, &new, len) {
                // The old table still holds every entry: keep it.
                // SAFETY: the fresh table never left this function.
                let _ = unsafe { free_block(alloc, block.offset) };
                return Err(err);
            }
        }
        let previous = (self.table, self.buckets, self.segment);
        (self.table, self.buckets, self.segment) = (block.offset, buckets as u64, block.segment);
        if previous.0 != 0 {
            // The new table is recorded before the old is freed (see
            // `storage::recorded_before_free`).
            recorded_before_free();
            crash_point!("hash_map.table_moved");
            // SAFETY: the map owns the old table, no longer records it, and
            // `&mut self` outlives every borrow it handed out.
            if let Err(err) = unsafe { free_block(alloc, previous.0) } {
                (self.table, self.buckets, self.segment) = previous;
                // SAFETY: the fresh table, recorded nowhere now.
                let _ = unsafe { free_block(alloc, block.offset) };
                return Err(err);
            }
        }
        Ok(new)
    }

    /// Copies the `len` entries of `old` into the empty table `new`
    /// (bitwise: `old` keeps its copies until it is freed).
    fn rehash(old: &Table<K, V>, new: &Table<K, V>, len: usize) -> Result<()> {
        let mut moved = 0usize;
        for i in 0..old.buckets() {
            let c = old.ctrl(i);
            if c == EMPTY {
                continue;
            }
            if c & FULL == 0 {
                return Err(bad_ctrl(i, c));
            }
            // SAFETY: a full bucket's key; any bits are a `K`.
            let hash = hash_of(unsafe { &*old.key(i) });
            let j = new
                .vacant(hash)
                .ok_or_else(|| corrupt(format!("more full buckets than length {len}")))?;
            // SAFETY: `i` and `j` are buckets of two distinct blocks; the
            // entry is copied bitwise, and `new` is freed without dropping
            // anything if the rehash fails.
            unsafe {
                std::ptr::copy_nonoverlapping(old.key(i), new.key(j), 1);
                std::ptr::copy_nonoverlapping(old.value(i), new.value(j), 1);
            }
            new.set_ctrl(j, tag(hash));
            moved += 1;
        }
        if moved != len {
            return Err(corrupt(format!(
                "{moved} full buckets, but the length says {len}"
            )));
        }
        Ok(())
    }

    /// Inserts `value` under `key`, returning the value it replaces. On
    /// error (out of memory while growing, say) the map is unchanged and
    /// `key` and `value` are dropped.
    pub fn insert<A: ShmAllocator + ?Sized>(
        &mut self,
        alloc: &A,
        key: K,
        value: V,
    ) -> Result<Option<V>> {
        let hash = hash_of(&key);
        let (table, len) = self.table(alloc)?;
        let mut slot = None;
        if let Some(table) = table {
            match table.probe(hash, &key)? {
                Probe::Found(i) => {
                    // SAFETY: a full bucket's value, behind `&mut self`.
                    let old = unsafe { std::ptr::replace(table.value(i), value) };
                    return Ok(Some(old));
                }
                Probe::Vacant(i) if len < max_load(table.buckets()) => slot = Some((table, i)),
                Probe::Vacant(_) => {}
            }
        }
        let (table, i) = match slot {
            Some(found) => found,
            None => {
                let needed = len
                    .checked_add(1)
                    .ok_or_else(|| corrupt("length overflows"))?;
                let table = self.grow(alloc, table, len, needed)?;
                let i = table
                    .vacant(hash)
                    .ok_or_else(|| corrupt("a fresh table has no empty bucket"))?;
                (table, i)
            }
        };
        // SAFETY: bucket `i` is empty: its key and value slots hold nothing
        // live and are written once here.
        unsafe {
            table.key(i).write(key);
            table.value(i).write(value);
        }
        table.set_ctrl(i, tag(hash));
        self.len = len as u64 + 1;
        Ok(None)
    }

    /// The value under `key`.
    pub fn get<'a, A, Q>(&'a self, alloc: &'a A, key: &Q) -> Result<Option<&'a V>>
    where
        A: ShmAllocator + ?Sized,
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (Some(table), _) = self.table(alloc)? else {
            return Ok(None);
        };
        match table.probe(hash_of(key), key)? {
            // SAFETY: a full bucket's value, inside the checked table. The
            // borrow of `self` keeps this API from changing or freeing it
            // meanwhile, and any other free of the table is `unsafe` and
            // promises no borrow into it lives (`free_offset`).
            Probe::Found(i) => Ok(Some(unsafe { &*table.value(i) })),
            Probe::Vacant(_) => Ok(None),
        }
    }

    /// The value under `key`, mutably.
    pub fn get_mut<'a, A, Q>(&'a mut self, alloc: &'a A, key: &Q) -> Result<Option<&'a mut V>>
    where
        A: ShmAllocator + ?Sized,
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (Some(table), _) = self.table(alloc)? else {
            return Ok(None);
        };
        match table.probe(hash_of(key), key)? {
            // SAFETY: as in `get`; the exclusive borrow of `self` makes this
            // the only path to the value through this API.
            Probe::Found(i) => Ok(Some(unsafe { &mut *table.value(i) })),
            Probe::Vacant(_) => Ok(None),
        }
    }

    /// Whether the map holds `key`.
    pub fn contains_key<A, Q>(&self, alloc: &A, key: &Q) -> Result<bool>
    where
        A: ShmAllocator + ?Sized,
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Ok(self.get(alloc, key)?.is_some())
    }

    /// Removes `key`, returning its value.
    pub fn remove<A, Q>(&mut self, alloc: &A, key: &Q) -> Result<Option<V>>
    where
        A: ShmAllocator + ?Sized,
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let (Some(table), len) = self.table(alloc)? else {
            return Ok(None);
        };
        let Probe::Found(found) = table.probe(hash_of(key), key)? else {
            return Ok(None);
        };
        // Check the rest of the cluster before changing anything, so the
        // shift below cannot stop halfway on a corrupt byte.
        let mut j = (found + 1) & table.mask;
        let mut ends = false;
        for _ in 0..table.buckets() {
            let c = table.ctrl(j);
            if c == EMPTY {
                ends = true;
                break;
            }
            if c & FULL == 0 {
                return Err(bad_ctrl(j, c));
            }
            j = (j + 1) & table.mask;
        }
        if !ends {
            return Err(corrupt(format!(
                "no empty bucket among {}",
                table.buckets()
            )));
        }
        // SAFETY: the found bucket is full; its entry is moved out once and
        // the bucket is then refilled or emptied by the shift.
        let (old_key, old_value) = unsafe { (table.key(found).read(), table.value(found).read()) };
        self.len = len.saturating_sub(1) as u64;
        // Backward shift: walk the cluster after the hole; an entry whose
        // home bucket lies (cyclically) at or before the hole moves into it.
        // The check above found the cluster's end; the walk is bounded by
        // the table all the same, like every probe of this map, so that no
        // byte of shared memory can make it go round forever.
        let mut hole = found;
        let mut j = (found + 1) & table.mask;
        for _ in 0..table.buckets() {
            if table.ctrl(j) == EMPTY {
                break;
            }
            // SAFETY: a full bucket's key.
            let home = hash_of(unsafe { &*table.key(j) }) as usize & table.mask;
            let distance = j.wrapping_sub(home) & table.mask;
            if distance >= (j.wrapping_sub(hole) & table.mask) {
                // SAFETY: `hole` was vacated (moved out or moved from) and
                // `j` is full: move its entry bitwise into the hole.
                unsafe {
                    std::ptr::copy_nonoverlapping(table.key(j), table.key(hole), 1);
                    std::ptr::copy_nonoverlapping(table.value(j), table.value(hole), 1);
                }
                table.set_ctrl(hole, table.ctrl(j));
                hole = j;
            }
            j = (j + 1) & table.mask;
        }
        table.set_ctrl(hole, EMPTY);
        drop(old_key);
        Ok(Some(old_value))
    }

    /// The entries, in bucket order. The whole table is checked first (every
    /// control byte, and that the full ones number the length), so the
    /// iterator itself cannot fail.
    pub fn iter<'a, A: ShmAllocator + ?Sized>(
        &'a self,
        alloc: &'a A,
    ) -> Result<impl ExactSizeIterator<Item = (&'a K, &'a V)> + 'a> {
        let (table, len) = self.table(alloc)?;
        if let Some(table) = &table {
            let mut full = 0usize;
            for i in 0..table.buckets() {
                match table.ctrl(i) {
                    EMPTY => {}
                    c if c & FULL != 0 => full += 1,
                    c => return Err(bad_ctrl(i, c)),
                }
            }
            if full != len {
                return Err(corrupt(format!(
                    "{full} full buckets, but the length says {len}"
                )));
            }
        }
        Ok(Iter {
            table,
            next: 0,
            remaining: len,
            _map: PhantomData,
        })
    }

    /// Grows the table now so that `additional` more entries fit without
    /// growing it again. On error the map is unchanged.
    pub fn reserve<A: ShmAllocator + ?Sized>(
        &mut self,
        alloc: &A,
        additional: usize,
    ) -> Result<()> {
        let (table, len) = self.table(alloc)?;
        let needed = len
            .checked_add(additional)
            .ok_or_else(|| Error::invalid_size("hash map capacity overflows"))?;
        let room = table.map_or(0, |t| max_load(t.buckets()));
        if needed > room {
            self.grow(alloc, table, len, needed)?;
        }
        Ok(())
    }

    /// Drops every entry; the table stays for reuse.
    pub fn clear<A: ShmAllocator + ?Sized>(&mut self, alloc: &A) -> Result<()> {
        let (Some(table), _) = self.table(alloc)? else {
            return Ok(());
        };
        self.len = 0;
        for i in 0..table.buckets() {
            let c = table.ctrl(i);
            table.set_ctrl(i, EMPTY);
            if c & FULL != 0 && (needs_drop::<K>() || needs_drop::<V>()) {
                // SAFETY: a full bucket's entry, dropped once: its control
                // byte is already cleared.
                unsafe {
                    std::ptr::drop_in_place(table.key(i));
                    std::ptr::drop_in_place(table.value(i));
                }
            }
        }
        Ok(())
    }

    /// Drops every entry and returns the table to `alloc`; the map is then
    /// empty and may be used again (with an allocator of the same segment).
    pub fn free<A: ShmAllocator + ?Sized>(&mut self, alloc: &A) -> Result<()> {
        self.clear(alloc)?;
        if self.table != 0 {
            let previous = (self.table, self.buckets);
            (self.table, self.buckets) = (0, 0);
            recorded_before_free();
            // SAFETY: as in the grow above: owned, forgotten, `&mut self`.
            if let Err(err) = unsafe { free_block(alloc, previous.0) } {
                (self.table, self.buckets) = previous;
                return Err(err);
            }
        }
        Ok(())
    }

    /// The offset of the table block (null when there is none).
    pub fn table_offset(&self) -> Offset<u8> {
        Offset::from_raw(self.table)
    }
}

impl<K: ShmSafe + Hash + Eq, V: ShmSafe> Default for ShmHashMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for ShmHashMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShmHashMap")
            .field("len", &self.len)
            .field("buckets", &self.buckets)
            .field("table", &Offset::<u8>::from_raw(self.table))
            .field("segment", &SegmentId(self.segment))
            .finish()
    }
}

/// The iterator of [`ShmHashMap::iter`], over a checked table.
struct Iter<'a, K, V> {
    table: Option<Table<K, V>>,
    next: usize,
    remaining: usize,
    _map: PhantomData<&'a (K, V)>,
}

impl<'a, K, V> Iterator for Iter<'a, K, V> {
    type Item = (&'a K, &'a V);

    fn next(&mut self) -> Option<Self::Item> {
        let table = self.table.as_ref()?;
        while self.remaining > 0 && self.next < table.buckets() {
            let i = self.next;
            self.next += 1;
            if table.ctrl(i) & FULL != 0 {
                self.remaining -= 1;
                // SAFETY: a full bucket of the table checked by `iter`; the
                // map stays borrowed for `'a`, so nothing changes it.
                return Some(unsafe { (&*table.key(i), &*table.value(i)) });
            }
        }
        None
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.remaining, Some(self.remaining))
    }
}

impl<K, V> ExactSizeIterator for Iter<'_, K, V> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::containers::vec::tests::{free_list, heap};
    use crate::containers::{ShmString, ShmVec};
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn is_corrupt<T>(result: Result<T>) -> bool {
        matches!(
            result,
            Err(Error::CorruptData {
                what: "hash map",
                ..
            })
        )
    }

    #[test]
    fn the_hash_is_fixed() {
        // The hash decides where entries sit in a table that other
        // processes (and other builds reading the segment) probe: it must
        // not change by accident.
        // The published FNV-1a 64 test vectors, before the final mix.
        for (input, fnv) in [
            (&b"a"[..], 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut hasher = StableHasher(FNV_OFFSET_BASIS);
            hasher.write(input);
            assert_eq!(hasher.0, fnv);
        }
        // And whole keys: eight zero bytes; a slice's length prefix (native
        // endian, as std's `Hash` writes it) and bytes.
        assert_eq!(hash_of(&0u64), 0x7bd3_144f_29c0_cc9e);
        if cfg!(target_endian = "little") {
            assert_eq!(hash_of(&[1u8, 2, 3][..]), 0xc61f_a591_0076_2920);
        }
        assert_ne!(hash_of(&1u64), hash_of(&2u64));
    }

    #[test]
    fn insert_get_remove_grow() {
        let heap = heap(4 << 20);
        let mut map = ShmHashMap::<u64, u64>::new();
        assert_eq!(map.get(&heap, &1).unwrap(), None);
        for k in 0..2000u64 {
            assert_eq!(map.insert(&heap, k, k * 3).unwrap(), None);
        }
        assert_eq!(map.len(), 2000);
        assert!(map.capacity() >= 2000);
        for k in 0..2000u64 {
            assert_eq!(map.get(&heap, &k).unwrap(), Some(&(k * 3)));
        }
        assert_eq!(map.insert(&heap, 5, 0).unwrap(), Some(15));
        *map.get_mut(&heap, &6).unwrap().unwrap() += 1;
        assert_eq!(map.get(&heap, &6).unwrap(), Some(&19));
        for k in (0..2000u64).step_by(2) {
            assert!(map.remove(&heap, &k).unwrap().is_some());
        }
        assert_eq!(map.remove(&heap, &0).unwrap(), None);
        assert_eq!(map.len(), 1000);
        assert!(!map.contains_key(&heap, &10).unwrap());
        assert!(map.contains_key(&heap, &11).unwrap());
        let mut seen: Vec<u64> = map.iter(&heap).unwrap().map(|(k, _)| *k).collect();
        seen.sort_unstable();
        assert_eq!(seen, (1..2000).step_by(2).collect::<Vec<_>>());
        map.clear(&heap).unwrap();
        assert_eq!(map.iter(&heap).unwrap().len(), 0);
        map.free(&heap).unwrap();
        assert_eq!(heap.stats().live_allocations, 0);
    }

    #[test]
    fn borrowed_lookup_and_nested_values() {
        let heap = heap(1 << 20);
        let mut map = ShmHashMap::<[u8; 4], ShmString>::with_capacity(&heap, 10).unwrap();
        assert!(map.capacity() >= 10);
        let name = ShmString::from_str_in(&heap, "one").unwrap();
        map.insert(&heap, *b"key1", name).unwrap();
        // Arrays borrow as slices, which hash the same.
        let found = map.get(&heap, &b"key1"[..]).unwrap().unwrap();
        assert_eq!(found.as_str(&heap).unwrap(), "one");
        let mut inner = map.remove(&heap, &b"key1"[..]).unwrap().unwrap();
        inner.free(&heap).unwrap();
        map.free(&heap).unwrap();
        assert_eq!(heap.stats().live_allocations, 0);
    }

    /// A key whose hash is all in its first field, to force collisions.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    #[repr(C)]
    struct Colliding {
        bucket: u64,
        id: u64,
    }
    // SAFETY: `repr(C)` of two `u64`s.
    unsafe impl ShmSafe for Colliding {}
    impl Hash for Colliding {
        fn hash<H: Hasher>(&self, state: &mut H) {
            self.bucket.hash(state);
        }
    }

    #[test]
    fn long_clusters_survive_removal() {
        let heap = heap(1 << 20);
        let mut map = ShmHashMap::<Colliding, u64>::new();
        let key = |bucket, id| Colliding { bucket, id };
        // One home bucket: removing the first entry must pull the others back.
        for id in 0..6 {
            map.insert(&heap, key(7, id), id).unwrap();
        }
        assert_eq!(map.remove(&heap, &key(7, 0)).unwrap(), Some(0));
        for id in 1..6 {
            assert_eq!(map.get(&heap, &key(7, id)).unwrap(), Some(&id), "id {id}");
        }
        map.clear(&heap).unwrap();
        // Three homes whose clusters run into each other.
        for id in 0..40 {
            map.insert(&heap, key(id % 3, id), id).unwrap();
        }
        for id in (0..40).filter(|id| id % 4 == 1) {
            assert_eq!(map.remove(&heap, &key(id % 3, id)).unwrap(), Some(id));
        }
        for id in 0..40 {
            let expect = (id % 4 != 1).then_some(&id);
            assert_eq!(map.get(&heap, &key(id % 3, id)).unwrap(), expect);
        }
        assert_eq!(map.iter(&heap).unwrap().count(), 30);
        map.free(&heap).unwrap();
    }

    #[test]
    fn foreign_allocator_is_refused() {
        let (home, other) = (heap(1 << 20), heap(1 << 20));
        let mut map = ShmHashMap::<u64, u64>::new();
        map.insert(&home, 1, 1).unwrap();
        assert!(matches!(map.get(&other, &1), Err(Error::ForeignPointer)));
        assert!(matches!(
            map.insert(&other, 2, 2),
            Err(Error::ForeignPointer)
        ));
        map.free(&home).unwrap();
        assert!(matches!(
            map.insert(&other, 2, 2),
            Err(Error::ForeignPointer)
        ));
        assert_eq!(other.stats().live_allocations, 0);
    }

    #[test]
    fn forged_fields_are_corrupt_data() {
        let heap = heap(1 << 20);
        let mut map = ShmHashMap::<u64, u64>::new();
        for k in 0..5 {
            map.insert(&heap, k, k).unwrap();
        }
        let (table, buckets, len) = (map.table, map.buckets, map.len);

        map.buckets = 12;
        assert!(is_corrupt(map.get(&heap, &1)));
        map.buckets = 1 << 40; // a power of two, far beyond the block
        assert!(is_corrupt(map.get(&heap, &1)));
        map.buckets = buckets;
        map.len = buckets;
        assert!(is_corrupt(map.insert(&heap, 9, 9)));
        map.len = 4; // within bounds, but not what the table holds
        assert!(is_corrupt(map.iter(&heap).map(|it| it.count())));
        map.len = len;
        map.table = table + 16;
        assert!(is_corrupt(map.get(&heap, &1)));
        map.table = 0;
        assert!(is_corrupt(map.get(&heap, &1)));
        map.table = table;
        assert_eq!(map.get(&heap, &3).unwrap(), Some(&3));

        let ctrl = |i: usize| {
            let (Some(t), _) = map.table(&heap).unwrap() else {
                unreachable!()
            };
            // SAFETY: a control byte of the checked table, ours alone.
            unsafe { t.ctrl.as_ptr().add(i) }
        };
        // A control byte the map never writes.
        let c0 = ctrl(0);
        // SAFETY: as above.
        let saved = unsafe { c0.read() };
        // SAFETY: as above.
        unsafe { c0.write(0x13) };
        assert!(is_corrupt(map.iter(&heap).map(|it| it.count())));
        // SAFETY: as above.
        unsafe { c0.write(saved) };
        // Every bucket marked full: lookups of absent keys must stop.
        let all = ctrl(0);
        // SAFETY: the table's `buckets` control bytes.
        unsafe { std::ptr::write_bytes(all, 0xff, buckets as usize) };
        assert!(is_corrupt(map.get(&heap, &1000)));
        assert!(is_corrupt(map.remove(&heap, &1000)));
        assert!(is_corrupt(map.insert(&heap, 1000, 1)));
        assert!(is_corrupt(map.iter(&heap).map(|it| it.count())));
        // Clearing mends it.
        map.clear(&heap).unwrap();
        map.insert(&heap, 1, 2).unwrap();
        assert_eq!(map.iter(&heap).unwrap().collect::<Vec<_>>(), [(&1, &2)]);
        map.free(&heap).unwrap();
    }

    #[test]
    fn out_of_memory_leaves_the_map_unchanged() {
        let heap = free_list(256 << 10);
        let mut map = ShmHashMap::<u64, [u64; 3]>::new();
        let mut k = 0u64;
        let err = loop {
            match map.insert(&heap, k, [k; 3]) {
                Ok(None) => k += 1,
                Ok(Some(_)) => panic!("key {k} inserted twice"),
                Err(err) => break err,
            }
        };
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        assert_eq!(map.len() as u64, k);
        assert_eq!(map.len(), map.capacity(), "only a full map grows");
        for key in 0..k {
            assert_eq!(map.get(&heap, &key).unwrap(), Some(&[key; 3]));
        }
        assert_eq!(map.get(&heap, &k).unwrap(), None);
        // Replacing needs no memory.
        assert_eq!(map.insert(&heap, 0, [9; 3]).unwrap(), Some([0; 3]));
        map.free(&heap).unwrap();
        heap.check().unwrap();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Get(u16),
        Clear,
        Reserve(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..300u16, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            4 => (0..300u16).prop_map(Op::Remove),
            3 => (0..300u16).prop_map(Op::Get),
            1 => Just(Op::Clear),
            1 => any::<u8>().prop_map(Op::Reserve),
        ]
    }

    /// Runs `ops` on a map and on std's, keys made from the op's `u16` by
    /// `make` (plain, or colliding on purpose).
    fn run_model<K>(alloc: &dyn ShmAllocator, ops: &[Op], make: impl Fn(u16) -> K)
    where
        K: ShmSafe + Hash + Eq + Ord + Copy + fmt::Debug,
    {
        let mut map = ShmHashMap::<K, u32>::new();
        let mut model = HashMap::new();
        for op in ops {
            match *op {
                Op::Insert(k, v) => {
                    assert_eq!(
                        map.insert(alloc, make(k), v).unwrap(),
                        model.insert(make(k), v)
                    )
                }
                Op::Remove(k) => {
                    assert_eq!(map.remove(alloc, &make(k)).unwrap(), model.remove(&make(k)))
                }
                Op::Get(k) => assert_eq!(map.get(alloc, &make(k)).unwrap(), model.get(&make(k))),
                Op::Clear => {
                    map.clear(alloc).unwrap();
                    model.clear();
                }
                Op::Reserve(n) => {
                    map.reserve(alloc, n as usize).unwrap();
                    assert!(map.capacity() >= model.len() + n as usize);
                }
            }
            assert_eq!(map.len(), model.len());
        }
        let mut ours: Vec<(K, u32)> = map.iter(alloc).unwrap().map(|(k, v)| (*k, *v)).collect();
        let mut theirs: Vec<(K, u32)> = model.into_iter().collect();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(ours, theirs);
        for (k, v) in &theirs {
            assert_eq!(map.get(alloc, k).unwrap(), Some(v));
        }
        map.free(alloc).unwrap();
        assert_eq!(alloc.stats().live_allocations, 0);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn behaves_like_std_hash_map(ops in proptest::collection::vec(op(), 0..400)) {
            run_model(&heap(4 << 20), &ops, |k| k);
            run_model(&free_list(1 << 20), &ops, |k| k);
        }

        #[test]
        fn behaves_like_std_hash_map_under_collisions(ops in proptest::collection::vec(op(), 0..400)) {
            // Eight home buckets for 300 keys: long clusters, and removals
            // whose successors share the removed entry's home.
            let colliding = |k: u16| Colliding { bucket: u64::from(k % 8), id: u64::from(k) };
            run_model(&heap(4 << 20), &ops, colliding);
        }
    }

    #[test]
    fn a_vector_of_maps() {
        // Containers nest: the outer one holds the inner ones' headers.
        let heap = heap(2 << 20);
        let mut maps = ShmVec::<ShmHashMap<u32, u32>>::new();
        for m in 0..4 {
            let mut map = ShmHashMap::new();
            for k in 0..50 {
                map.insert(&heap, k, k + m).unwrap();
            }
            maps.push(&heap, map).unwrap();
        }
        for (m, map) in maps.as_slice(&heap).unwrap().iter().enumerate() {
            assert_eq!(map.get(&heap, &10).unwrap(), Some(&(10 + m as u32)));
        }
        for map in maps.as_mut_slice(&heap).unwrap() {
            map.free(&heap).unwrap();
        }
        maps.free(&heap).unwrap();
        assert_eq!(heap.stats().live_allocations, 0);
    }
}
