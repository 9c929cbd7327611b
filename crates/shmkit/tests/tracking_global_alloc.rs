//! `TrackingAlloc` as the program's global allocator. One test function, so
//! no other test thread allocates while it measures.

use std::hint::black_box;

use shmkit::local::tracker::{Recording, TrackingAlloc};

#[global_allocator]
static ALLOC: TrackingAlloc = TrackingAlloc::system();

#[test]
fn the_global_tracker_counts_measures_and_reports_leaks() {
    let tracker = ALLOC.tracker();

    // A scope sees what a block of code allocated and freed.
    let (length, report) = tracker.measure(|| {
        let buffer = black_box(vec![7u8; 10_000]);
        buffer.len()
    });
    assert_eq!(length, 10_000);
    assert!(report.allocations >= 1 && report.frees >= 1, "{report:?}");
    assert!(report.allocated_bytes >= 10_000, "{report:?}");
    assert!(report.freed_bytes >= 10_000, "{report:?}");

    // Growth by reallocation counts the old block freed and the new made.
    let (_, report) = tracker.measure(|| {
        let mut grown = Vec::<u64>::with_capacity(1);
        for i in 0..5_000 {
            grown.push(black_box(i));
        }
        grown.len()
    });
    assert!(report.allocated_bytes >= 40_000, "{report:?}");
    assert!(
        report.net_bytes().abs() < 1024,
        "grown and dropped: {report:?}"
    );

    // The peak saw the 10 KB buffer.
    assert!(tracker.stats().peak_bytes >= 10_000);

    // Leak records: a leaked block is reported with size and backtrace, and
    // disappears once freed.
    tracker.record(Recording::Backtraces);
    let leaked: &'static mut [u8; 4321] = Box::leak(Box::new([1u8; 4321]));
    let address = leaked.as_ptr() as usize;
    let report = tracker.leaks();
    let leak = report
        .leaks
        .iter()
        .find(|leak| leak.address == address)
        .unwrap_or_else(|| panic!("the leaked block is missing from\n{report}"));
    assert_eq!(leak.size, 4321);
    let backtrace = leak.backtrace.as_deref().expect("backtraces were on");
    assert!(
        backtrace.contains("the_global_tracker_counts_measures_and_reports_leaks"),
        "{backtrace}"
    );
    // SAFETY: `leaked` came from `Box::leak` above and is not used again.
    drop(unsafe { Box::from_raw(leaked) });
    assert!(tracker
        .leaks()
        .leaks
        .iter()
        .all(|leak| leak.address != address));

    // Recording with backtraces under threads: bookkeeping allocations do
    // not recurse or deadlock, and every thread's blocks are recorded.
    let before = tracker.stats();
    std::thread::scope(|scope| {
        for _ in 0..3 {
            scope.spawn(|| {
                for i in 0..300 {
                    black_box(vec![0u8; 32 + i]);
                }
            });
        }
    });
    let after = tracker.stats();
    assert!(after.allocations - before.allocations >= 900);
    assert!(after.frees - before.frees >= 900);
    tracker.record(Recording::Off);
    assert!(tracker.leaks().is_empty());
}
