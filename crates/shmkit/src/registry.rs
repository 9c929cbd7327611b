//! The process-wide allocator registry: allocators filed by their
//! segment's id, so any thread can find one from a [`SegmentId`] (the
//! registry keeps them alive). Segment mappings themselves are found
//! through [`FullPtr::from_shm`](crate::FullPtr::from_shm) and
//! [`segments`].
//!
//! ```
//! use shmkit::{FullPtr, ShmAllocator, SegmentAllocator, SegmentOptions, SizeClassAllocator};
//!
//! let heap = SizeClassAllocator::create(&SegmentOptions::memfd("registry-doc").size(1 << 20))?;
//! let block = heap.new_obj(7u64)?;
//! // Only the shared form travels (through a queue, a file, a socket)...
//! let shared = block.shm();
//! // ...and any thread of any process that maps the segment gets it back.
//! let local = FullPtr::from_shm(shared)?;
//! assert_eq!(unsafe { *local.as_ptr() }, 7);
//! assert_eq!(FullPtr::from_local(block.as_ptr())?.shm(), shared);
//! # Ok::<(), shmkit::Error>(())
//! ```

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::alloc::ShmAllocator;
use crate::error::{Error, Result};
use crate::ptr::SegmentId;
pub use crate::segment::mappings::{segments, MappedSegment};

/// Registered allocators by segment id.
static ALLOCATORS: RwLock<Option<HashMap<u64, Arc<dyn ShmAllocator>>>> = RwLock::new(None);

fn read() -> RwLockReadGuard<'static, Option<HashMap<u64, Arc<dyn ShmAllocator>>>> {
    // A panic while holding the lock cannot leave the map half-updated
    // (each update is one insert or remove), so poisoning is ignored.
    ALLOCATORS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write() -> RwLockWriteGuard<'static, Option<HashMap<u64, Arc<dyn ShmAllocator>>>> {
    ALLOCATORS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Files `allocator` under its segment's id, which is returned, so any
/// thread can find it with [`allocator`]. The registry keeps the allocator
/// (and so its segment) alive until [`unregister_allocator`].
///
/// An allocator is known by its segment's id: one allocator per segment, and
/// ids are 64 random bits, drawn again at creation if this process already
/// maps a segment with the same id. Registering the same `Arc` twice is
/// harmless; another allocator under a taken id is refused with
/// [`Error::InUse`]. A process-local allocator (no segment) is refused with
/// [`Error::Unsupported`].
pub fn register_allocator(allocator: Arc<dyn ShmAllocator>) -> Result<SegmentId> {
    let id = allocator
        .backing_segment()
        .ok_or(Error::Unsupported(
            "only an allocator in a segment can be registered",
        ))?
        .id();
    let mut allocators = write();
    let allocators = allocators.get_or_insert_with(HashMap::new);
    if let Some(existing) = allocators.get(&id.0) {
        if Arc::ptr_eq(existing, &allocator) {
            return Ok(id);
        }
        return Err(Error::InUse {
            reason: format!("another allocator is registered for segment {id}"),
        });
    }
    allocators.insert(id.0, allocator);
    Ok(id)
}

/// The allocator registered under `id`, if any.
pub fn allocator(id: SegmentId) -> Option<Arc<dyn ShmAllocator>> {
    read()
        .as_ref()
        .and_then(|allocators| allocators.get(&id.0).cloned())
}

/// Removes the allocator registered under `id` and returns it.
pub fn unregister_allocator(id: SegmentId) -> Option<Arc<dyn ShmAllocator>> {
    write()
        .as_mut()
        .and_then(|allocators| allocators.remove(&id.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BuddyAllocator, SegmentAllocator, SegmentOptions};

    fn heap(label: &str) -> BuddyAllocator {
        BuddyAllocator::create(&SegmentOptions::memfd(label).size(1 << 20)).unwrap()
    }

    #[test]
    fn allocators_are_found_by_id_and_ids_are_not_shared() {
        let heap: Arc<dyn ShmAllocator> = Arc::new(heap("registry-alloc"));
        let id = register_allocator(heap.clone()).unwrap();
        assert_eq!(register_allocator(heap.clone()).unwrap(), id);
        let found = allocator(id).unwrap();
        assert!(Arc::ptr_eq(&found, &heap));
        // A second handle on the same segment is another allocator object.
        let again: Arc<dyn ShmAllocator> = Arc::new(
            BuddyAllocator::attach(&SegmentOptions::fd(
                heap.backing_segment()
                    .unwrap()
                    .fd()
                    .unwrap()
                    .try_clone_to_owned()
                    .unwrap(),
            ))
            .unwrap(),
        );
        assert!(matches!(
            register_allocator(again),
            Err(Error::InUse { .. })
        ));
        assert!(unregister_allocator(id).is_some());
        assert!(allocator(id).is_none());
        let local: Arc<dyn ShmAllocator> = Arc::new(crate::MallocAllocator::new());
        assert!(matches!(
            register_allocator(local),
            Err(Error::Unsupported(_))
        ));
    }
}
