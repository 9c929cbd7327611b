//! shmkit allocators under the ecosystem's allocator-aware containers
//! (`allocator_api2::vec::Vec`, `allocator_api2::boxed::Box`,
//! `hashbrown::HashMap`), in one process: the arena, the memory resource
//! trait object, the tracker, and the shared allocators.

use allocator_api2::alloc::Allocator;
use allocator_api2::boxed::Box as ABox;
use allocator_api2::vec::Vec as AVec;
use shmkit::alloc::MemoryResource;
use shmkit::local::arena::Arena;
use shmkit::local::tracker::Tracked;
use shmkit::{
    BuddyAllocator, FreeListAllocator, SegmentAllocator, SegmentOptions, ShmAllocator,
    SizeClassAllocator,
};

/// Builds, grows, shrinks and reads back the three containers on `alloc`.
fn exercise<A: Allocator + Copy>(alloc: A) {
    let mut numbers = AVec::new_in(alloc);
    numbers.extend(0..50_000u64);
    numbers.retain(|n| n % 3 == 0);
    numbers.shrink_to_fit();
    assert_eq!(numbers.len(), 16_667);
    assert_eq!(
        numbers.iter().sum::<u64>(),
        (0..50_000u64).filter(|n| n % 3 == 0).sum()
    );

    let boxed = ABox::new_in(*b"a boxed value in an allocator", alloc);
    let mut counting = AVec::with_capacity_in(100, alloc);
    counting.extend(0..100u32);
    let boxed_slice = counting.into_boxed_slice();
    assert_eq!(&boxed[..7], b"a boxed");
    assert_eq!(boxed_slice.iter().sum::<u32>(), 4950);

    let mut map = hashbrown::HashMap::new_in(alloc);
    for key in 0..5_000u32 {
        map.insert(key, key.to_string());
    }
    for key in (0..5_000u32).step_by(2) {
        map.remove(&key);
    }
    assert_eq!(map.len(), 2_500);
    assert_eq!(map[&4_999], "4999");
}

#[test]
fn shared_allocators_serve_the_containers_and_get_every_block_back() {
    let options = SegmentOptions::private().size(64 << 20);
    let free_list = FreeListAllocator::create(&options).unwrap();
    exercise(&free_list);
    assert_eq!(free_list.stats().live_allocations, 0);
    free_list.check().unwrap();

    let size_class = SizeClassAllocator::create(&options).unwrap();
    exercise(&size_class);
    assert_eq!(size_class.stats().live_allocations, 0);

    let buddy = BuddyAllocator::create(&options).unwrap();
    exercise(&buddy);
    assert_eq!(buddy.stats().live_allocations, 0);
}

#[test]
fn the_arena_serves_the_containers_until_its_scope_ends() {
    let mut arena: Arena = Arena::new();
    {
        let scope = arena.scope();
        exercise(&*scope);
        assert!(scope.stats().allocations > 0);
    }
    assert_eq!(
        arena.stats().allocated_bytes,
        0,
        "the scope gave it all back"
    );
}

#[test]
fn a_memory_resource_trait_object_serves_the_containers() {
    let free_list = FreeListAllocator::create(&SegmentOptions::private().size(64 << 20)).unwrap();
    let arena: Arena = Arena::new();
    let system = std::alloc::System;
    let resources: [&dyn MemoryResource; 3] = [&free_list, &arena, &system];
    for resource in resources {
        exercise(resource);
    }
    assert_eq!(free_list.stats().live_allocations, 0);
    assert!(arena.stats().allocations > 0);
}

#[test]
fn a_tracked_allocator_sees_every_container_block() {
    let tracked = Tracked::new(
        SizeClassAllocator::create(&SegmentOptions::private().size(64 << 20)).unwrap(),
    );
    let ((), report) = tracked.tracker().measure(|| exercise(&tracked));
    assert!(report.allocations > 10, "{report:?}");
    assert_eq!(report.allocations, report.frees);
    assert_eq!(report.net_bytes(), 0);
}
