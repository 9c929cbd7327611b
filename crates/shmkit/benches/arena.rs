//! Process-local arena allocation of 64-byte blocks, side by side in one
//! run with `bumpalo`: each iteration allocates a batch of blocks and then
//! resets the arena, so both run from warm, already-mapped chunks.
//!
//! Run: `cargo bench -p shmkit --bench arena`

use std::alloc::Layout;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use shmkit::local::arena::Arena;

const BLOCK: usize = 64;
const BATCH: usize = 4096;

fn alloc_64(c: &mut Criterion) {
    let layout = Layout::from_size_align(BLOCK, 8).expect("layout");
    let mut group = c.benchmark_group("arena-alloc64");
    group.throughput(Throughput::Elements(BATCH as u64));

    let mut arena: Arena = Arena::new();
    group.bench_function("shmkit-arena", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(arena.alloc_layout(black_box(layout)).expect("room"));
            }
            arena.reset();
        })
    });

    let mut bump = bumpalo::Bump::new();
    group.bench_function("bumpalo", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(bump.alloc_layout(black_box(layout)));
            }
            bump.reset();
        })
    });

    // Typed placement, the way most code uses an arena.
    group.bench_function("shmkit-arena-make", |b| {
        b.iter(|| {
            for index in 0..BATCH {
                black_box(arena.make(black_box([index as u64; 8])).expect("room"));
            }
            arena.reset();
        })
    });
    group.bench_function("bumpalo-alloc", |b| {
        b.iter(|| {
            for index in 0..BATCH {
                black_box(bump.alloc(black_box([index as u64; 8])));
            }
            bump.reset();
        })
    });
    group.finish();
}

criterion_group!(benches, alloc_64);
criterion_main!(benches);
