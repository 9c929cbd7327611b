//! Named objects: find each other's objects in a segment by name.
//!
//! [`NamedObjects`] is the segment's directory of names, kept in the segment
//! itself, so every attached process sees the same names:
//! [`construct`](NamedObjects::construct), [`find`](NamedObjects::find),
//! [`find_or_construct`](NamedObjects::find_or_construct) (two racing
//! callers, in any processes, get the same object),
//! [`destroy`](NamedObjects::destroy) and [`list`](NamedObjects::list).
//!
//! Each object records its type's size, alignment and a hash of its path
//! (without the crate name, so two programs sharing a module agree), and
//! finding a name as another type is [`Error::WrongType`]. Any number of
//! names fit: the directory grows.
//!
//! The directory lives in blocks of the segment's allocator and is found
//! through the root `shmkit.named-objects`. No user code runs under its
//! lock, which survives a dead holder (the next caller repairs the table).
//!
//! ```
//! use shmkit::named::NamedObjects;
//! use shmkit::{SegmentAllocator, SegmentOptions, SizeClassAllocator};
//! use std::sync::atomic::{AtomicU64, Ordering};
//!
//! let heap = SizeClassAllocator::create(&SegmentOptions::memfd("named-doc").size(1 << 20))?;
//! let names = NamedObjects::open(&heap)?;
//! let hits = names.find_or_construct("hits", || AtomicU64::new(0))?;
//! // SAFETY: the object stays until someone destroys "hits".
//! unsafe { hits.local().as_ref() }.fetch_add(1, Ordering::Relaxed);
//!
//! // Another process (here: the same one) finds it by name and type.
//! let again = names.find::<AtomicU64>("hits")?.expect("constructed above");
//! assert_eq!(unsafe { again.local().as_ref() }.load(Ordering::Relaxed), 1);
//! assert!(names.find::<u32>("hits").is_err()); // another type
//! # Ok::<(), shmkit::Error>(())
//! ```

mod directory;
mod type_identity;

use crate::alloc::{MemContext, ShmAllocator};
use crate::error::{Error, Result};
use crate::ptr::{FullPtr, Offset, ShmSafe};
use crate::segment::Segment;
use directory::{Directory, Locked, NewEntry, Record};
use type_identity::TypeIdentity;

/// The named objects of one segment, reached through its allocator.
///
/// Opening is cheap (it finds the directory, creating it on first use), and
/// a `NamedObjects` may be shared between threads.
///
/// The pointers it returns stay valid until the object is destroyed, by any
/// process: coordinate destruction with the users of an object, as with any
/// shared allocation.
pub struct NamedObjects<'a, A: ShmAllocator + ?Sized> {
    alloc: &'a A,
    segment: &'a Segment,
    directory: &'a Directory,
}

/// A named object, as listed by [`NamedObjects::list`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedObject {
    /// The object's name.
    pub name: String,
    /// The type's path (without its crate name), as recorded.
    pub type_name: String,
    /// Where the object starts in the segment.
    pub offset: u64,
    /// The type's size in bytes.
    pub size: u64,
    /// The type's alignment.
    pub align: u64,
}

impl<'a, A: ShmAllocator + ?Sized> NamedObjects<'a, A> {
    /// The directory of `alloc`'s segment, created on first use (racing
    /// creators agree on one). Fails with [`Error::Unsupported`] for an
    /// allocator without a segment, and with [`Error::CorruptData`] when the
    /// directory's root points at something else.
    pub fn open(alloc: &'a A) -> Result<NamedObjects<'a, A>> {
        let segment = alloc.backing_segment().ok_or(Error::Unsupported(
            "named objects need an allocator in a segment",
        ))?;
        let offset = match segment.root::<u8>(directory::ROOT_NAME) {
            Some(offset) => offset.raw(),
            None => {
                let ours = directory::create(segment, alloc)?;
                match segment.set_root(directory::ROOT_NAME, Offset::<u8>::from_raw(ours)) {
                    Ok(()) => ours,
                    Err(error) => {
                        // Another process published its directory first:
                        // use that one. Any other failure is the caller's.
                        let theirs = segment.root::<u8>(directory::ROOT_NAME);
                        // SAFETY: made above and never published.
                        let _ = unsafe { directory::discard(segment, alloc, ours) };
                        theirs.ok_or(error)?.raw()
                    }
                }
            }
        };
        Ok(NamedObjects {
            alloc,
            segment,
            directory: directory::open(segment, offset)?,
        })
    }

    /// The directory of `alloc`'s segment if one was ever created; unlike
    /// [`open`](Self::open) this never writes (for tools that only look).
    pub fn open_existing(alloc: &'a A) -> Result<Option<NamedObjects<'a, A>>> {
        let segment = alloc.backing_segment().ok_or(Error::Unsupported(
            "named objects need an allocator in a segment",
        ))?;
        let Some(offset) = segment.root::<u8>(directory::ROOT_NAME) else {
            return Ok(None);
        };
        Ok(Some(NamedObjects {
            alloc,
            segment,
            directory: directory::open(segment, offset.raw())?,
        }))
    }

    /// Places `value` in the segment under `name`. Fails with
    /// [`Error::NameExists`] when the name is taken (and `value` is
    /// dropped).
    pub fn construct<T: ShmSafe>(&self, name: &str, value: T) -> Result<FullPtr<T>> {
        match self.insert(name, &TypeIdentity::of::<T>(), Value::typed(value))? {
            Inserted::New(ptr) => Ok(ptr.cast()),
            Inserted::Existing(_) => Err(Error::NameExists {
                name: name.to_owned(),
            }),
        }
    }

    /// The object named `name`, if there is one. Fails with
    /// [`Error::WrongType`] when it holds another type.
    pub fn find<T: ShmSafe>(&self, name: &str) -> Result<Option<FullPtr<T>>> {
        Ok(self
            .find_as(name, &TypeIdentity::of::<T>())?
            .map(|found| found.cast()))
    }

    /// The object named `name` as `size` bytes aligned to `align`, filed by
    /// a binding under its own type name (C's `shmkit_named_find`, say), if
    /// there is one; [`Error::WrongType`] when it was filed as another type.
    pub fn find_bytes(&self, name: &str, layout: &BytesType<'_>) -> Result<Option<FullPtr<u8>>> {
        self.find_as(name, &layout.identity()?)
    }

    fn find_as(&self, name: &str, identity: &TypeIdentity) -> Result<Option<FullPtr<u8>>> {
        let name = check_name(name)?;
        let locked = self.lock()?;
        match locked.find(name)? {
            Some((_, record)) => self.located(&record, identity).map(Some),
            None => Ok(None),
        }
    }

    /// The object named `name`, constructed from `make()` if there is none.
    /// Atomic with respect to every process: racing callers all get the
    /// same object. `make` runs without any lock held, and may run in a
    /// caller that then loses the race; its value is then dropped.
    pub fn find_or_construct<T: ShmSafe>(
        &self,
        name: &str,
        make: impl FnOnce() -> T,
    ) -> Result<FullPtr<T>> {
        if let Some(found) = self.find(name)? {
            return Ok(found);
        }
        match self.insert(name, &TypeIdentity::of::<T>(), Value::typed(make()))? {
            Inserted::New(ptr) | Inserted::Existing(ptr) => Ok(ptr.cast()),
        }
    }

    /// [`find_or_construct`](Self::find_or_construct) for bytes a binding
    /// describes: `init` fills the `layout.size` fresh bytes (without any
    /// lock held) when the name is free; racing callers all get the same
    /// object.
    pub fn find_or_construct_bytes(
        &self,
        name: &str,
        layout: &BytesType<'_>,
        init: impl FnOnce(&mut [u8]),
    ) -> Result<FullPtr<u8>> {
        let identity = layout.identity()?;
        if let Some(found) = self.find_as(name, &identity)? {
            return Ok(found);
        }
        let size = layout.size as usize;
        let fill = move |object: *mut u8| {
            // SAFETY: `Placed::new` hands a fresh block of `size` bytes,
            // this caller's alone.
            init(unsafe { std::slice::from_raw_parts_mut(object, size) })
        };
        match self.insert(name, &identity, Value { fill, drop: None })? {
            Inserted::New(ptr) | Inserted::Existing(ptr) => Ok(ptr),
        }
    }

    /// Removes `name`, drops its value in place and frees its memory. Fails
    /// with [`Error::NameNotFound`], or [`Error::WrongType`] (nothing
    /// changes).
    ///
    /// # Safety
    ///
    /// As for [`ShmAllocator::free_offset`]: nothing in this process may
    /// use the object afterwards (no reference made from a pointer that
    /// [`find`](Self::find) returned may outlive this call). Other
    /// processes that use it need the application's own agreement.
    pub unsafe fn destroy<T: ShmSafe>(&self, name: &str) -> Result<()> {
        // SAFETY: forwarded from the caller; a `T` found as a `T` is
        // dropped as one.
        unsafe { self.destroy_as(name, &TypeIdentity::of::<T>(), Some(drop_as::<T>)) }
    }

    /// [`destroy`](Self::destroy) for bytes a binding described (nothing to
    /// drop in place).
    ///
    /// # Safety
    ///
    /// As for [`destroy`](Self::destroy).
    pub unsafe fn destroy_bytes(&self, name: &str, layout: &BytesType<'_>) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.destroy_as(name, &layout.identity()?, None) }
    }

    /// # Safety
    ///
    /// As for [`destroy`](Self::destroy); `drop` drops a value of
    /// `identity`'s type in place.
    unsafe fn destroy_as(
        &self,
        name: &str,
        identity: &TypeIdentity,
        drop: Option<unsafe fn(*mut u8)>,
    ) -> Result<()> {
        let name_bytes = check_name(name)?;
        let (object, names_block) = {
            let mut locked = self.lock()?;
            let (index, record) = locked
                .find(name_bytes)?
                .ok_or_else(|| Error::NameNotFound {
                    name: name.to_owned(),
                })?;
            let object = self.located(&record, identity)?;
            locked.remove(index);
            (object, record.names_block)
        };
        // The entry was LIVE with `T`'s identity, so the block holds a `T`
        // placed by `insert`; removing the entry made this caller its only
        // owner (nothing of this process uses it: the caller's promise), as
        // it is of a value placed but never filed.
        Placed {
            alloc: self.alloc,
            object,
            names_block,
            drop,
            kept: false,
        }
        .discard()
    }

    /// Every named object, in directory order.
    pub fn list(&self) -> Result<Vec<NamedObject>> {
        let locked = self.lock()?;
        Ok(locked
            .records()?
            .iter()
            .map(|record| NamedObject {
                name: String::from_utf8_lossy(record.name).into_owned(),
                type_name: String::from_utf8_lossy(record.type_name).into_owned(),
                offset: record.object,
                size: record.size,
                align: record.align,
            })
            .collect())
    }

    /// How many names there are.
    pub fn len(&self) -> Result<usize> {
        Ok(self.lock()?.records()?.len())
    }

    /// Whether there are no names.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Walks the directory and reports the first inconsistency.
    pub fn check(&self) -> Result<()> {
        self.lock()?.check()
    }

    fn lock(&self) -> Result<Locked<'a>> {
        self.directory.lock(self.segment, self.alloc)
    }

    /// `record`'s object, after checking that it is of `identity`'s type.
    fn located(&self, record: &Record<'_>, identity: &TypeIdentity) -> Result<FullPtr<u8>> {
        record.expect_type(identity)?;
        let object = Offset::<u8>::from_raw(record.object);
        self.segment.resolve_array(object, identity.size.max(1))?;
        self.segment.full_ptr_from_offset(object)
    }

    /// Places `value` and files it under `name` unless the name is taken,
    /// in which case the existing object (checked to be a `T`) is returned
    /// and `value` is dropped. Blocks are allocated and filled before the
    /// lock is taken, so the locked step is short.
    fn insert(
        &self,
        name: &str,
        identity: &TypeIdentity,
        value: Value<impl FnOnce(*mut u8)>,
    ) -> Result<Inserted> {
        let name = check_name(name)?;
        let placed = Placed::new(self.segment, self.alloc, name, identity, value)?;
        let existing = {
            let mut locked = self.lock()?;
            match locked.find(name)? {
                Some((_, record)) => Some(self.located(&record, identity)),
                None => {
                    locked.insert(
                        self.alloc,
                        &NewEntry {
                            name,
                            identity,
                            object: placed.object.offset().raw(),
                            names_block: placed.names_block,
                        },
                    )?;
                    None
                }
            }
        };
        match existing {
            Some(found) => {
                placed.discard()?;
                Ok(Inserted::Existing(found?))
            }
            None => Ok(Inserted::New(placed.keep())),
        }
    }
}

enum Inserted {
    New(FullPtr<u8>),
    Existing(FullPtr<u8>),
}

/// What goes into a fresh object block: how to fill it, and how to drop it
/// in place (none for bytes a binding described).
struct Value<F: FnOnce(*mut u8)> {
    fill: F,
    drop: Option<unsafe fn(*mut u8)>,
}

impl Value<fn(*mut u8)> {
    /// A Rust value: moved in, dropped as a `T`.
    fn typed<T>(value: T) -> Value<impl FnOnce(*mut u8)> {
        Value {
            fill: move |object: *mut u8| {
                // SAFETY: `Placed::new` hands a fresh block sized and aligned
                // for `T` (the identity is `T`'s), this caller's alone.
                unsafe { object.cast::<T>().write(value) }
            },
            drop: Some(drop_as::<T>),
        }
    }
}

/// Drops the `T` at `object` in place.
///
/// # Safety
///
/// `object` holds a `T` nothing else owns.
unsafe fn drop_as<T>(object: *mut u8) {
    // SAFETY: the caller's promise.
    unsafe { std::ptr::drop_in_place(object.cast::<T>()) }
}

/// The type of an object a binding (C, say) files: its size, alignment and
/// a type name of the binding's choosing, recorded and checked like a Rust
/// type's (finding it with another size, alignment or name is
/// [`Error::WrongType`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BytesType<'a> {
    /// Bytes of the object.
    pub size: u64,
    /// Its alignment (a power of two).
    pub align: u64,
    /// The type's name ("c:job_queue", say: a prefix keeps it apart from
    /// Rust paths).
    pub type_name: &'a str,
}

impl BytesType<'_> {
    fn identity(&self) -> Result<TypeIdentity> {
        if !self.align.is_power_of_two() || self.size > u64::from(u32::MAX) {
            return Err(Error::invalid_size(format!(
                "a named object of {} bytes aligned to {}",
                self.size, self.align
            )));
        }
        Ok(TypeIdentity::named(self.size, self.align, self.type_name))
    }
}

/// A value and its name in blocks owned by this caller alone (written but
/// not yet filed, or just removed from the directory): dropped (value and
/// blocks) unless kept.
struct Placed<'a, A: ShmAllocator + ?Sized> {
    alloc: &'a A,
    object: FullPtr<u8>,
    names_block: u64,
    /// Drops the value in place (none for bytes).
    drop: Option<unsafe fn(*mut u8)>,
    kept: bool,
}

impl<'a, A: ShmAllocator + ?Sized> Placed<'a, A> {
    fn new(
        segment: &Segment,
        alloc: &'a A,
        name: &[u8],
        identity: &TypeIdentity,
        value: Value<impl FnOnce(*mut u8)>,
    ) -> Result<Self> {
        let ctx = MemContext::default();
        let names_len = name.len() + identity.name.len();
        let names_block = alloc.allocate_offset(&ctx, names_len, 1)?;
        let object_offset = match alloc.allocate_offset(
            &ctx,
            identity.size.max(1) as usize,
            identity.align as usize,
        ) {
            Ok(offset) => offset,
            Err(error) => {
                // SAFETY: the fresh block never left this function.
                let _ = unsafe { alloc.free_offset(&ctx, names_block) };
                return Err(error);
            }
        };
        let blocks = segment
            .resolve_array(Offset::<u8>::from_raw(names_block), names_len as u64)
            .and_then(|names| {
                let object = Offset::<u8>::from_raw(object_offset);
                segment.resolve_array(object, identity.size.max(1))?;
                Ok((names, segment.full_ptr_from_offset(object)?))
            });
        let (names, object) = match blocks {
            Ok(blocks) => blocks,
            Err(error) => {
                // SAFETY: fresh blocks that never left this function.
                let _ = unsafe { alloc.free_offset(&ctx, names_block) };
                // SAFETY: as above.
                let _ = unsafe { alloc.free_offset(&ctx, object_offset) };
                return Err(error);
            }
        };
        // SAFETY: both are fresh blocks of this allocator, owned by this
        // thread alone, in bounds and aligned (checked by the resolves).
        unsafe {
            std::ptr::copy_nonoverlapping(name.as_ptr(), names.as_ptr(), name.len());
            std::ptr::copy_nonoverlapping(
                identity.name.as_ptr(),
                names.as_ptr().add(name.len()),
                identity.name.len(),
            );
        }
        (value.fill)(object.as_ptr());
        Ok(Placed {
            alloc,
            object,
            names_block,
            drop: value.drop,
            kept: false,
        })
    }

    /// The placed object, now filed: nothing is undone.
    fn keep(mut self) -> FullPtr<u8> {
        self.kept = true;
        self.object
    }

    /// Drops the value and frees both blocks, reporting a failed free.
    fn discard(mut self) -> Result<()> {
        self.kept = true;
        self.release()
    }

    fn release(&self) -> Result<()> {
        if let Some(drop) = self.drop {
            // SAFETY: the block holds a value of the type `drop` drops, that
            // no directory entry names (never filed, or its entry removed),
            // so this is its only owner.
            unsafe { drop(self.object.as_ptr()) };
        }
        let ctx = MemContext::default();
        // SAFETY: as above, the only owner of both blocks.
        unsafe {
            self.alloc.free_offset(&ctx, self.object.offset().raw())?;
            self.alloc.free_offset(&ctx, self.names_block)
        }
    }
}

impl<A: ShmAllocator + ?Sized> Drop for Placed<'_, A> {
    fn drop(&mut self) {
        if !self.kept {
            let _ = self.release();
        }
    }
}

/// The name's bytes, checked: 1 to 4096 bytes.
fn check_name(name: &str) -> Result<&[u8]> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > directory::MAX_NAME_LEN {
        return Err(Error::InvalidName {
            name: name.chars().take(64).collect(),
            reason: "an object name has 1 to 4096 bytes",
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SegmentAllocator, SegmentOptions, SizeClassAllocator};
    use std::sync::atomic::{AtomicU64, Ordering};

    fn heap(label: &str) -> SizeClassAllocator {
        SizeClassAllocator::create(&SegmentOptions::memfd(label).size(4 << 20)).unwrap()
    }

    crate::shm_struct! {
        struct Pair { left: u64, right: u64 }
    }

    #[test]
    fn bytes_a_binding_describes_are_filed_found_and_checked() {
        let heap = heap("named-bytes");
        let names = NamedObjects::open(&heap).unwrap();
        let directory_only = heap.stats().live_allocations;
        let job = BytesType {
            size: 24,
            align: 8,
            type_name: "c:job",
        };
        let made = names
            .find_or_construct_bytes("job", &job, |bytes| bytes.fill(7))
            .unwrap();
        // A second caller gets the same object, and its initializer never runs.
        let again = names
            .find_or_construct_bytes("job", &job, |_| panic!("initialized twice"))
            .unwrap();
        assert_eq!(made, again);
        let found = names.find_bytes("job", &job).unwrap().unwrap();
        // SAFETY: the object is live and 24 bytes long.
        let bytes = unsafe { std::slice::from_raw_parts(found.as_ptr(), 24) };
        assert_eq!(bytes, &[7u8; 24]);
        // Another size, alignment or type name is another type.
        for other in [
            BytesType { size: 16, ..job },
            BytesType { align: 16, ..job },
            BytesType {
                type_name: "c:other",
                ..job
            },
        ] {
            assert!(matches!(
                names.find_bytes("job", &other),
                Err(Error::WrongType { .. })
            ));
        }
        assert!(matches!(
            names.find::<u64>("job"),
            Err(Error::WrongType { .. })
        ));
        assert!(matches!(
            names.find_bytes("job", &BytesType { align: 3, ..job }),
            Err(Error::InvalidSize { .. })
        ));
        // SAFETY: nothing uses the object afterwards.
        unsafe { names.destroy_bytes("job", &job) }.unwrap();
        assert!(names.find_bytes("job", &job).unwrap().is_none());
        assert_eq!(
            heap.stats().live_allocations,
            directory_only,
            "nothing left but the directory"
        );
    }

    #[test]
    fn construct_find_destroy() {
        let heap = heap("named-basic");
        let names = NamedObjects::open(&heap).unwrap();
        let pair = names.construct("pair", Pair { left: 1, right: 2 }).unwrap();
        let found = names.find::<Pair>("pair").unwrap().unwrap();
        assert_eq!(found, pair);
        // SAFETY: the object is live.
        assert_eq!(unsafe { found.local().as_ref() }.right, 2);
        assert!(names.find::<Pair>("other").unwrap().is_none());
        assert!(matches!(
            names.construct("pair", Pair { left: 0, right: 0 }),
            Err(Error::NameExists { .. })
        ));
        let in_use = heap.stats().live_allocations;
        // SAFETY: nothing uses the block after it is freed.
        unsafe { names.destroy::<Pair>("pair") }.unwrap();
        assert_eq!(heap.stats().live_allocations, in_use - 2);
        assert!(names.find::<Pair>("pair").unwrap().is_none());
        assert!(matches!(
            // SAFETY: nothing uses the block after it is freed.
            unsafe { names.destroy::<Pair>("pair") },
            Err(Error::NameNotFound { .. })
        ));
    }

    #[test]
    fn the_wrong_type_is_refused_and_nothing_changes() {
        let heap = heap("named-types");
        let names = NamedObjects::open(&heap).unwrap();
        names.construct("count", 5u64).unwrap();
        for result in [
            names.find::<i64>("count").map(|_| ()),
            names.find::<u32>("count").map(|_| ()),
            // SAFETY: nothing uses the block after it is freed.
            unsafe { names.destroy::<Pair>("count") },
        ] {
            match result {
                Err(Error::WrongType {
                    name,
                    expected,
                    found,
                }) => {
                    assert_eq!(name, "count");
                    assert!(found.contains("u64"), "{found}");
                    assert!(!expected.contains("u64"), "{expected}");
                }
                other => panic!("expected WrongType, got {other:?}"),
            }
        }
        assert!(names.find::<u64>("count").unwrap().is_some());
        assert!(names
            .find_or_construct::<u32>("count", || 1)
            .is_err_and(|error| matches!(error, Error::WrongType { .. })));
    }

    #[test]
    fn many_names_grow_the_directory_and_survive_removals() {
        let heap = heap("named-many");
        let names = NamedObjects::open(&heap).unwrap();
        for i in 0..1000u64 {
            names.construct(&format!("object-{i}"), i).unwrap();
        }
        for i in (0..1000u64).step_by(3) {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { names.destroy::<u64>(&format!("object-{i}")) }.unwrap();
        }
        // Reuse the tombstones' slots, then check every survivor.
        for i in 0..200u64 {
            names.construct(&format!("again-{i}"), i + 5000).unwrap();
        }
        names.check().unwrap();
        for i in 0..1000u64 {
            let found = names.find::<u64>(&format!("object-{i}")).unwrap();
            match found {
                // SAFETY: live object.
                Some(ptr) => assert_eq!(unsafe { *ptr.as_ptr() }, i),
                None => assert_eq!(i % 3, 0),
            }
        }
        assert_eq!(names.len().unwrap(), 1000 - 334 + 200);
        let listed = names.list().unwrap();
        assert_eq!(listed.len(), 866);
        assert!(listed
            .iter()
            .any(|object| object.name == "again-7" && object.type_name == "u64"));
    }

    #[test]
    fn racing_threads_get_one_object_per_name() {
        let heap = heap("named-race");
        let made = AtomicU64::new(0);
        let offsets: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let names = NamedObjects::open(&heap).unwrap();
                        (0..200)
                            .map(|i| {
                                names
                                    .find_or_construct(&format!("shared-{i}"), || {
                                        made.fetch_add(1, Ordering::Relaxed);
                                        AtomicU64::new(i)
                                    })
                                    .unwrap()
                                    .offset()
                                    .raw()
                            })
                            .collect()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for other in &offsets[1..] {
            assert_eq!(other, &offsets[0]);
        }
        let names = NamedObjects::open(&heap).unwrap();
        assert_eq!(names.len().unwrap(), 200);
        names.check().unwrap();
        // Losers' values were dropped and their blocks freed: only the 200
        // objects, their names, the directory and its table remain.
        assert!(made.load(Ordering::Relaxed) >= 200);
        assert_eq!(heap.stats().live_allocations, 2 + 2 * 200);
    }

    #[test]
    fn a_dead_holder_is_mended_by_the_next_caller() {
        let heap = heap("named-mend");
        let names = NamedObjects::open(&heap).unwrap();
        for i in 0..10u64 {
            names.construct(&format!("n{i}"), i).unwrap();
        }
        let before = heap.stats().live_allocations;
        let stray = directory::testing::abandon_growth(heap.segment(), &heap, names.directory);
        assert!(heap.usable_size(stray).is_ok());
        directory::testing::skew_counter(names.directory);
        assert!(names.check().is_err(), "the forged damage must be visible");
        directory::testing::abandon_lock(names.directory);
        // The next locker takes the lock over and mends.
        names.check().unwrap();
        assert_eq!(heap.stats().live_allocations, before);
        assert_eq!(names.len().unwrap(), 10);
    }

    #[test]
    fn garbage_in_the_directory_is_an_error() {
        let heap = heap("named-garbage");
        let names = NamedObjects::open(&heap).unwrap();
        names.construct("x", 1u64).unwrap();
        directory::testing::scribble_states(heap.segment(), names.directory, 77);
        assert!(matches!(
            names.find::<u64>("x"),
            Err(Error::CorruptData { .. })
        ));
        assert!(matches!(names.list(), Err(Error::CorruptData { .. })));
    }

    #[test]
    fn counters_at_their_limit_do_not_overflow() {
        let heap = heap("named-counters");
        let names = NamedObjects::open(&heap).unwrap();
        names.construct("x", 1u64).unwrap();
        directory::testing::set_counters(names.directory, u64::MAX);
        // The counters only decide when to rehash, which recounts them.
        names.construct("y", 2u64).unwrap();
        names.check().unwrap();
        assert_eq!(names.len().unwrap(), 2);
    }

    #[test]
    fn a_root_that_is_not_a_directory_is_refused() {
        let heap = heap("named-foreign-root");
        let other = heap.new_obj([0u64; 8]).unwrap();
        heap.segment()
            .set_root(directory::ROOT_NAME, other.offset())
            .unwrap();
        assert!(matches!(
            NamedObjects::open(&heap),
            Err(Error::CorruptData { .. })
        ));
    }

    #[test]
    fn names_are_checked() {
        let heap = heap("named-names");
        let names = NamedObjects::open(&heap).unwrap();
        assert!(matches!(
            names.construct("", 1u8),
            Err(Error::InvalidName { .. })
        ));
        let long = "n".repeat(directory::MAX_NAME_LEN + 1);
        assert!(matches!(
            names.find::<u8>(&long),
            Err(Error::InvalidName { .. })
        ));
        let longest = "n".repeat(directory::MAX_NAME_LEN);
        names.construct(&longest, 3u8).unwrap();
        assert!(names.find::<u8>(&longest).unwrap().is_some());
    }

    #[test]
    fn looking_never_creates_a_directory() {
        let heap = heap("named-existing");
        assert!(NamedObjects::open_existing(&heap).unwrap().is_none());
        assert!(heap.segment().roots().is_empty());
        NamedObjects::open(&heap)
            .unwrap()
            .construct("a", 1u8)
            .unwrap();
        let names = NamedObjects::open_existing(&heap).unwrap().unwrap();
        assert_eq!(names.list().unwrap()[0].name, "a");
    }

    #[test]
    fn an_allocator_without_a_segment_is_refused() {
        let local = crate::MallocAllocator::new();
        assert!(matches!(
            NamedObjects::open(&local),
            Err(Error::Unsupported(_))
        ));
    }
}
