//! Creating (and removing) a 4 GiB POSIX shared-memory segment on every
//! allocator, side by side in one run with the same segment committed up
//! front (`SegmentOptions::commit_upfront`, what creation did before
//! segments were backed on demand). Target: 20 ms or less on every
//! allocator.
//!
//! Then, once per allocator, the memory committed before and after filling
//! half of such a segment (4 KiB blocks; 1 KiB on the pool): the backing
//! object's allocated bytes and the system's `Shmem` line of
//! `/proc/meminfo`.
//!
//! Run: `cargo bench -p shmkit --bench create`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use shmkit::{AllocatorKind, AnyAllocator, LinearAlloc, SegmentOptions};

const SIZE: u64 = 4 << 30;

const KINDS: [AllocatorKind; 7] = AnyAllocator::KINDS;

/// Creates the segment, then drops and removes it.
fn create_and_remove(kind: AllocatorKind, eager: bool) {
    let name = format!("shmkit-bench-create-{}", std::process::id());
    let options = SegmentOptions::shm(name).size(SIZE).commit_upfront(eager);
    let heap = AnyAllocator::create(kind, &options).expect("a 4 GiB segment");
    drop(heap);
    shmkit::segment::remove(options.location()).expect("removed");
}

fn creation(c: &mut Criterion) {
    let mut group = c.benchmark_group("create-4GiB");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for kind in KINDS {
        group.bench_function(kind.to_string(), |b| {
            b.iter(|| create_and_remove(kind, false))
        });
    }
    group.bench_function("size-class, committed up front", |b| {
        b.iter(|| create_and_remove(AllocatorKind::SizeClass, true))
    });
    group.finish();
}

/// The system's shared memory in use (`Shmem` in `/proc/meminfo`), bytes.
fn system_shmem() -> u64 {
    let info = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    info.lines()
        .find_map(|line| line.strip_prefix("Shmem:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib << 10)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// Prints what filling half a 4 GiB segment commits (not a timing).
fn committed_while_filling(_: &mut Criterion) {
    println!("\ncommitted memory, 4 GiB segment, MiB: backing object (Shmem delta)");
    for kind in KINDS {
        let name = format!("shmkit-bench-fill-{}", std::process::id());
        let options = SegmentOptions::shm(name).size(SIZE);
        let shmem_before = system_shmem();
        let heap = AnyAllocator::create(kind, &options).expect("a 4 GiB segment");
        let fresh = heap.segment().backed_bytes().unwrap_or(0);
        let fresh_system = system_shmem().saturating_sub(shmem_before);
        let len = if kind == AllocatorKind::Pool {
            1024
        } else {
            4096
        };
        let mut taken = 0u64;
        while taken < SIZE / 2 {
            let result = match &heap {
                AnyAllocator::Bump(bump) => bump.alloc_handle(len, 8).map(|_| ()),
                AnyAllocator::Stack(stack) => stack.alloc_handle(len, 8).map(|_| ()),
                other => other
                    .as_shm_allocator()
                    .expect("a freeing allocator")
                    .allocate_offset(&Default::default(), len, 8)
                    .map(|_| ()),
            };
            result.expect("half the segment fits");
            taken += len as u64;
        }
        let half = heap.segment().backed_bytes().unwrap_or(0);
        let half_system = system_shmem().saturating_sub(shmem_before);
        println!(
            "{:>12}: created {:7.1} ({:7.1})   half filled ({:.0} handed out) {:7.1} ({:7.1})",
            kind.to_string(),
            mib(fresh),
            mib(fresh_system),
            mib(taken),
            mib(half),
            mib(half_system),
        );
        drop(heap);
        shmkit::segment::remove(options.location()).expect("removed");
    }
}

criterion_group!(benches, creation, committed_while_filling);
criterion_main!(benches);
