//! `Tracked<A>`: a tracker in front of shmkit allocators, as a drop-in
//! allocator, under threads, with leak reports and scopes.

use std::sync::Arc;

use shmkit::alloc::MemoryResource;
use shmkit::local::tracker::{Recording, Tracked};
use shmkit::{
    Error, FreeListAllocator, SegmentAllocator, SegmentOptions, ShmAllocator, SizeClassAllocator,
};

fn free_list() -> FreeListAllocator {
    FreeListAllocator::create(&SegmentOptions::private().size(8 << 20)).unwrap()
}

#[test]
fn counts_match_the_allocators_own_accounting() {
    let tracked = Tracked::new(free_list());
    let blocks: Vec<_> = (1..=100)
        .map(|i| tracked.allocate(i * 10).unwrap())
        .collect();
    let stats = tracked.tracker().stats();
    assert_eq!(stats.allocations, 100);
    assert_eq!(stats.live_allocations(), 100);
    let usable: usize = blocks
        .iter()
        .map(|b| tracked.usable_size(b.offset().raw()).unwrap())
        .sum();
    assert_eq!(stats.current_bytes, usable as u64);
    for block in blocks.into_iter().step_by(2) {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { tracked.free(block) }.unwrap();
    }
    let stats = tracked.tracker().stats();
    assert_eq!((stats.allocations, stats.frees), (100, 50));
    // Small blocks move the peak in batches (see `Tracker`).
    let batch = shmkit::local::tracker::Tracker::EXACT_PEAK_BLOCK as u64;
    assert!(stats.peak_bytes <= usable as u64 && stats.peak_bytes + batch > usable as u64);
    assert_eq!(
        tracked.stats().live_allocations,
        50,
        "the inner allocator agrees"
    );
}

#[test]
fn a_refused_free_changes_no_counter() {
    let tracked = Tracked::new(free_list());
    let block = tracked.allocate(64).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { tracked.free(block) }.unwrap();
    let before = tracked.tracker().stats();
    assert!(matches!(
        // SAFETY: nothing uses the block after it is freed.
        unsafe { tracked.free(block) },
        Err(Error::InvalidFree { .. })
    ));
    assert_eq!(tracked.tracker().stats(), before);
}

#[test]
fn leak_reports_name_each_live_block_with_its_backtrace() {
    let tracked = Tracked::new(free_list());
    tracked.tracker().record(Recording::Backtraces);
    let leaked = tracked.allocate(3000).unwrap();
    let freed = tracked.allocate(100).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { tracked.free(freed) }.unwrap();
    let report = tracked.tracker().leaks();
    assert_eq!(report.leaks.len(), 1, "{report}");
    let leak = &report.leaks[0];
    assert_eq!(leak.address as u64, leaked.offset().raw());
    assert!(leak.size >= 3000);
    let backtrace = leak.backtrace.as_deref().expect("backtraces were on");
    assert!(
        backtrace.contains("leak_reports_name_each_live_block"),
        "{backtrace}"
    );
    // SAFETY: nothing uses the block after it is freed.
    unsafe { tracked.free(leaked) }.unwrap();
    assert!(tracked.tracker().leaks().is_empty());
}

#[test]
fn threads_are_counted_exactly() {
    let tracked = Arc::new(Tracked::new(
        SizeClassAllocator::create(&SegmentOptions::private().size(64 << 20)).unwrap(),
    ));
    tracked.tracker().record(Recording::Sizes);
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let tracked = Arc::clone(&tracked);
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                for i in 0..5_000 {
                    let block = tracked.allocate(16 + (i + t) % 200).unwrap();
                    if i % 10 == 0 {
                        kept.push(block);
                    } else {
                        // SAFETY: nothing uses the block after it is freed.
                        unsafe { tracked.free(block) }.unwrap();
                    }
                }
                kept.len()
            })
        })
        .collect();
    let kept: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let stats = tracked.tracker().stats();
    assert_eq!(stats.allocations, 20_000);
    assert_eq!(stats.frees, 20_000 - kept as u64);
    assert_eq!(tracked.tracker().leaks().leaks.len(), kept);
    assert_eq!(
        tracked.tracker().leaks().total_bytes() as u64,
        stats.current_bytes
    );
    assert!(stats.peak_bytes >= stats.current_bytes);
}

#[test]
fn a_scope_measures_what_a_block_of_code_allocated() {
    let tracked = Tracked::new(free_list());
    let outside = tracked.allocate(500).unwrap();
    let (kept, report) = tracked.tracker().measure(|| {
        let a = tracked.allocate(1000).unwrap();
        let b = tracked.allocate(2000).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { tracked.free(a) }.unwrap();
        b
    });
    assert_eq!((report.allocations, report.frees), (1 + 1, 1));
    assert!(report.allocated_bytes >= 3000);
    assert_eq!(
        report.net_bytes(),
        tracked.usable_size(kept.offset().raw()).unwrap() as i64
    );
    // SAFETY: nothing uses the block after it is freed.
    unsafe { tracked.free(outside) }.unwrap();
}

#[test]
fn containers_and_dyn_users_go_through_the_tracker() {
    let tracked = Tracked::new(free_list());
    {
        let mut numbers = allocator_api2::vec::Vec::new_in(&tracked);
        numbers.extend(0..10_000u32);
        let mut map = hashbrown::HashMap::new_in(&tracked);
        map.insert("key", 1);
        assert!(tracked.tracker().stats().current_bytes >= 40_000);
    }
    let stats = tracked.tracker().stats();
    assert_eq!(stats.current_bytes, 0, "every container freed its blocks");
    assert!(stats.allocations >= 2);

    let resource: &dyn MemoryResource = &tracked;
    let layout = std::alloc::Layout::from_size_align(256, 64).unwrap();
    let block = resource.allocate_layout(layout).unwrap();
    assert_eq!(tracked.tracker().stats().live_allocations(), 1);
    // SAFETY: allocated just above with this layout.
    unsafe { resource.deallocate_layout(block, layout) }.unwrap();
    assert_eq!(tracked.tracker().stats().live_allocations(), 0);
}
