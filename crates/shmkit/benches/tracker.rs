//! The tracker's overhead, as a ratio to the same allocator untracked, side
//! by side in one run: a 64-byte allocate + free pair through the system
//! allocator (`GlobalAlloc`) and through a shmkit size-class allocator.
//!
//! Run: `cargo bench -p shmkit --bench tracker`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shmkit::local::tracker::{Recording, Tracked, TrackingAlloc};
use shmkit::{SegmentAllocator, SegmentOptions, ShmAllocator, SizeClassAllocator};

fn system_pair(alloc: &impl GlobalAlloc, layout: Layout) {
    // SAFETY: a non-zero layout; the block is freed with the same layout.
    unsafe {
        let block = alloc.alloc(layout);
        assert!(!block.is_null());
        alloc.dealloc(black_box(block), layout);
    }
}

fn shm_pair(alloc: &impl ShmAllocator) {
    let block = alloc.allocate(black_box(64)).expect("room");
    // SAFETY: nothing uses the block after it is freed.
    unsafe { alloc.free(black_box(block)) }.expect("live");
}

fn overhead(c: &mut Criterion) {
    let layout = Layout::from_size_align(64, 8).expect("layout");
    let mut group = c.benchmark_group("tracker-64B-pair");

    group.bench_function("system", |b| b.iter(|| system_pair(&System, layout)));
    let tracked_system = TrackingAlloc::system();
    group.bench_function("system-tracked", |b| {
        b.iter(|| system_pair(&tracked_system, layout))
    });
    let recording_system = TrackingAlloc::system();
    recording_system.tracker().record(Recording::Sizes);
    group.bench_function("system-tracked-recording", |b| {
        b.iter(|| system_pair(&recording_system, layout))
    });

    let options = SegmentOptions::private().size(64 << 20);
    let size_class = SizeClassAllocator::create(&options).expect("segment");
    group.bench_function("size-class", |b| b.iter(|| shm_pair(&size_class)));
    let tracked = Tracked::new(SizeClassAllocator::create(&options).expect("segment"));
    group.bench_function("size-class-tracked", |b| b.iter(|| shm_pair(&tracked)));
    group.finish();
}

criterion_group!(benches, overhead);
criterion_main!(benches);
