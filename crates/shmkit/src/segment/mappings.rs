//! The table of segment mappings in this process: which segments are mapped
//! where, by id and by address.
//!
//! Every [`Segment`](crate::Segment) registers itself when it is created or
//! attached and leaves when its last handle is dropped, so a [`ShmPtr`]
//! received from another process turns back into a local pointer with
//! [`FullPtr::from_shm`], and a local pointer into any mapped segment gets
//! its shared form with [`FullPtr::from_local`], without the caller knowing
//! which segment either belongs to. Lookups take a shared read lock;
//! registration a write lock.

use std::collections::{BTreeMap, HashMap};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::header::Header;
use super::Backed;
use crate::error::{Error, Result};
use crate::ptr::{FullPtr, Offset, SegmentId, ShmPtr};

/// One mapping of a segment in this process.
#[derive(Clone, Debug)]
struct Mapped {
    id: u64,
    base: usize,
    /// How much of the segment's object is known to exist (shared with
    /// the segment): the bound of every decode.
    backed: Arc<Backed>,
    /// Tells apart two mappings of the same segment.
    token: u64,
}

impl Mapped {
    /// The segment's current size, bounded by this mapping.
    ///
    /// Only called under the registry lock: a segment unregisters (taking
    /// the write lock) before it unmaps, so the header is mapped here.
    fn size(&self) -> u64 {
        // SAFETY: registered mappings start with a validated `Header` and
        // stay mapped while registered (see above); `size` is an atomic.
        let header = unsafe { &*(self.base as *const Header) };
        self.backed.bound(header.size.load(Ordering::Acquire))
    }

    /// Decodes `offset` (one `T`) within this mapping.
    fn resolve<T>(&self, offset: Offset<T>) -> Result<NonNull<T>> {
        let base = NonNull::new(self.base as *mut u8).ok_or(Error::NullOffset)?;
        super::resolve_within(base, self.size(), offset, 1)
    }
}

#[derive(Default)]
struct Tables {
    /// Mappings by base address, for `from_local`.
    by_address: BTreeMap<usize, Mapped>,
    /// Base addresses of each segment's mappings, for `from_shm`.
    by_id: HashMap<u64, Vec<usize>>,
}

static TABLES: RwLock<Option<Tables>> = RwLock::new(None);
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

fn read() -> RwLockReadGuard<'static, Option<Tables>> {
    // A panic while holding the lock cannot leave the maps half-updated
    // (each update is one insert or remove), so poisoning is ignored.
    TABLES
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write() -> RwLockWriteGuard<'static, Option<Tables>> {
    TABLES
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A segment's place in the registry; dropping it unregisters the mapping.
/// Held by the [`Segment`](crate::Segment), declared before its mapping so
/// that it leaves the registry before the memory is unmapped.
#[derive(Debug)]
pub(crate) struct Registration {
    base: usize,
    token: u64,
}

/// Registers the mapping `base..base + len` of segment `id`, whose header
/// is validated and ready.
pub(crate) fn register(id: SegmentId, base: NonNull<u8>, backed: Arc<Backed>) -> Registration {
    let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
    let mapped = Mapped {
        id: id.0,
        base: base.as_ptr() as usize,
        backed,
        token,
    };
    let base = mapped.base;
    let mut tables = write();
    let tables = tables.get_or_insert_with(Tables::default);
    tables.by_id.entry(mapped.id).or_default().push(base);
    tables.by_address.insert(base, mapped);
    Registration { base, token }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut tables = write();
        let Some(tables) = tables.as_mut() else {
            return;
        };
        let Some((token, id)) = tables
            .by_address
            .get(&self.base)
            .map(|mapped| (mapped.token, mapped.id))
        else {
            return;
        };
        if token != self.token {
            return;
        }
        tables.by_address.remove(&self.base);
        if let Some(bases) = tables.by_id.get_mut(&id) {
            bases.retain(|&base| base != self.base);
            if bases.is_empty() {
                tables.by_id.remove(&id);
            }
        }
    }
}

/// Calls `f` with the base address of a mapping of segment `id`, if this
/// process maps it, holding the registry lock so that it stays mapped
/// meanwhile.
pub(crate) fn with_mapping(id: u64, f: impl FnOnce(usize)) {
    let tables = read();
    if let Some(&base) = tables
        .as_ref()
        .and_then(|tables| tables.by_id.get(&id))
        .and_then(|bases| bases.first())
    {
        f(base);
    }
}

/// Whether this process maps a segment with this id (a freshly drawn id
/// that is already known is drawn again, so ids never collide here).
pub(crate) fn is_mapped(id: u64) -> bool {
    read()
        .as_ref()
        .is_some_and(|tables| tables.by_id.contains_key(&id))
}

impl<T> FullPtr<T> {
    /// Turns a shared pointer back into a local one through the process's
    /// table of mappings: any segment this process maps with the pointer's
    /// id will do. Fails with [`Error::ForeignPointer`] when no such
    /// segment is mapped here, and with a bounds or alignment error when
    /// the offset does not decode to a whole `T`.
    pub fn from_shm(ptr: ShmPtr<T>) -> Result<FullPtr<T>> {
        if ptr.is_null() {
            return Err(Error::NullOffset);
        }
        let tables = read();
        let mapped = tables
            .as_ref()
            .and_then(|tables| {
                let base = tables.by_id.get(&ptr.segment.0)?.first()?;
                tables.by_address.get(base)
            })
            .ok_or(Error::ForeignPointer)?;
        let local = mapped.resolve(ptr.offset)?;
        Ok(FullPtr::new(local, ptr))
    }

    /// The full form of a local pointer into any segment this process maps
    /// (one whole `T` must lie inside it); fails with
    /// [`Error::ForeignPointer`] for memory outside every segment.
    pub fn from_local(ptr: *const T) -> Result<FullPtr<T>> {
        let addr = ptr as usize;
        let tables = read();
        let Some((_, mapped)) = tables
            .as_ref()
            .and_then(|tables| tables.by_address.range(..=addr).next_back())
        else {
            return Err(Error::ForeignPointer);
        };
        let offset = (addr - mapped.base) as u64;
        let size = mapped.size();
        let end = offset.checked_add(std::mem::size_of::<T>() as u64);
        if offset == 0 || end.is_none_or(|end| end > size) {
            return Err(Error::ForeignPointer);
        }
        let offset = Offset::from_raw(offset);
        let local = mapped.resolve(offset)?;
        Ok(FullPtr::new(
            local,
            ShmPtr::new(SegmentId(mapped.id), offset),
        ))
    }
}

/// A segment this process maps, as listed by [`segments`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MappedSegment {
    /// The segment id.
    pub id: SegmentId,
    /// Where this mapping starts in this process.
    pub base: usize,
    /// The segment's current size in bytes.
    pub size: u64,
}

/// Every segment mapping in this process, in address order (a segment
/// attached twice appears twice).
pub fn segments() -> Vec<MappedSegment> {
    let tables = read();
    tables
        .iter()
        .flat_map(|tables| tables.by_address.values())
        .map(|mapped| MappedSegment {
            id: SegmentId(mapped.id),
            base: mapped.base,
            size: mapped.size(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BuddyAllocator, SegmentAllocator, SegmentOptions, ShmAllocator};

    fn heap(label: &str) -> BuddyAllocator {
        BuddyAllocator::create(&SegmentOptions::memfd(label).size(1 << 20)).unwrap()
    }

    #[test]
    fn a_shared_pointer_resolves_through_the_registry() {
        let heap = heap("registry-shm");
        let block = heap.new_obj(0x5eed_u64).unwrap();
        let found = FullPtr::from_shm(block.shm()).unwrap();
        assert_eq!(found.as_ptr(), block.as_ptr());
        // SAFETY: the block is live and holds the u64 written above.
        assert_eq!(unsafe { *found.as_ptr() }, 0x5eed);
    }

    #[test]
    fn a_local_pointer_finds_its_segment() {
        let first = heap("registry-local-a");
        let second = heap("registry-local-b");
        let in_second = second.new_obj(2u32).unwrap();
        let in_first = first.new_obj(1u32).unwrap();
        assert_eq!(FullPtr::from_local(in_second.as_ptr()).unwrap(), in_second);
        assert_eq!(FullPtr::from_local(in_first.as_ptr()).unwrap(), in_first);
        let on_stack = 5u32;
        assert!(matches!(
            FullPtr::from_local(&on_stack as *const u32),
            Err(Error::ForeignPointer)
        ));
    }

    #[test]
    fn a_dropped_segment_leaves_the_registry() {
        let heap = heap("registry-drop");
        let shared = heap.new_obj(1u64).unwrap().shm();
        let id = heap.segment().id();
        assert!(segments().iter().any(|mapped| mapped.id == id));
        drop(heap);
        assert!(!segments().iter().any(|mapped| mapped.id == id));
        assert!(matches!(
            FullPtr::from_shm(shared),
            Err(Error::ForeignPointer)
        ));
    }

    #[test]
    fn an_offset_beyond_the_segment_is_refused() {
        let heap = heap("registry-bounds");
        let id = heap.segment().id();
        let beyond = ShmPtr::<u64>::new(id, Offset::from_raw(heap.segment().size()));
        assert!(matches!(
            FullPtr::from_shm(beyond),
            Err(Error::OutOfBounds { .. })
        ));
        let misaligned = ShmPtr::<u64>::new(id, Offset::from_raw(heap.segment().data_offset() + 1));
        assert!(matches!(
            FullPtr::from_shm(misaligned),
            Err(Error::Misaligned { .. })
        ));
    }

    #[test]
    fn threads_resolve_while_segments_come_and_go() {
        let stable = heap("registry-stable");
        let block = stable.new_obj(9u64).unwrap();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for round in 0..50 {
                    let passing = heap(&format!("registry-churn-{round}"));
                    let shared = passing.new_obj(round as u64).unwrap().shm();
                    assert_eq!(
                        // SAFETY: the block is live in `passing`.
                        unsafe { *FullPtr::from_shm(shared).unwrap().as_ptr() },
                        round as u64
                    );
                }
            });
            for _ in 0..2000 {
                let found = FullPtr::from_shm(block.shm()).unwrap();
                assert_eq!(found.as_ptr(), block.as_ptr());
            }
        });
    }
}
