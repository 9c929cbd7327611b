//! 64-byte bump allocation, side by side in one run:
//! shmkit's shared bump cursor, `bumpalo` (process-local, single-threaded)
//! and a bare `AtomicU64::fetch_add` (the floor for any cursor that several
//! processes share), on one thread and on two.
//!
//! Run: `cargo bench -p shmkit --bench bump`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use crossbeam_utils::CachePadded;
use shmkit::{BumpAllocator, LinearAlloc, SegmentAllocator, SegmentOptions};

const BLOCK: usize = 64;
const ALIGN: usize = 8;

/// A segment whose address range covers every iteration criterion asks for;
/// the bump allocator never touches the data pages, so they cost nothing.
fn big_bump() -> BumpAllocator {
    BumpAllocator::create(&SegmentOptions::private().size(32 << 30))
        .expect("32 GiB private segment")
}

/// Criterion's warm-up doubles the iteration count until a second has passed;
/// for a sub-nanosecond operation that overruns any segment. Runs are capped
/// at `MAX_RUN` operations and the time scaled to the requested count (every
/// operation costs the same, so this changes no figure).
const MAX_RUN: u64 = 1 << 28;

fn capped(iters: u64, run: impl FnOnce(u64) -> Duration) -> Duration {
    let done = iters.min(MAX_RUN);
    let elapsed = run(done);
    elapsed.mul_f64(iters as f64 / done.max(1) as f64)
}

fn one_thread(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc64/1-thread");
    let mut bump = big_bump();
    group.bench_function("shmkit-bump", |b| {
        b.iter_custom(|iters| {
            bump.reset();
            capped(iters, |iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    black_box(bump.alloc_handle(black_box(BLOCK), ALIGN).expect("room"));
                }
                start.elapsed()
            })
        })
    });
    let mut arena = bumpalo::Bump::new();
    let layout = std::alloc::Layout::from_size_align(BLOCK, ALIGN).expect("layout");
    group.bench_function("bumpalo", |b| {
        b.iter_custom(|iters| {
            arena.reset();
            let start = Instant::now();
            for _ in 0..iters {
                black_box(arena.alloc_layout(black_box(layout)));
            }
            start.elapsed()
        })
    });
    let cursor = CachePadded::new(AtomicU64::new(0));
    group.bench_function("fetch_add-floor", |b| {
        b.iter(|| black_box(cursor.fetch_add(black_box(BLOCK as u64), Ordering::AcqRel)))
    });
    group.finish();
}

/// Runs `op` `iters` times in total, split over two threads started together,
/// each with its own state from `setup` (built before the clock starts);
/// returns the wall time, so the figure is time per operation of the pair.
fn on_two_threads<S>(iters: u64, setup: impl Fn() -> S + Sync, op: impl Fn(&S) + Sync) -> Duration {
    let barrier = Barrier::new(3);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let state = setup();
                barrier.wait();
                for _ in 0..iters / 2 {
                    op(&state);
                }
                barrier.wait();
            });
        }
        barrier.wait();
        let start = Instant::now();
        barrier.wait();
        start.elapsed()
    })
}

fn two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc64/2-threads");
    let mut bump = big_bump();
    group.bench_function("shmkit-bump", |b| {
        b.iter_custom(|iters| {
            bump.reset();
            let shared = &bump;
            capped(iters, |iters| {
                on_two_threads(
                    iters,
                    || (),
                    |_| {
                        black_box(shared.alloc_handle(black_box(BLOCK), ALIGN).expect("room"));
                    },
                )
            })
        })
    });
    let cursor = CachePadded::new(AtomicU64::new(0));
    group.bench_function("fetch_add-floor", |b| {
        b.iter_custom(|iters| {
            on_two_threads(
                iters,
                || (),
                |_| {
                    black_box(cursor.fetch_add(black_box(BLOCK as u64), Ordering::AcqRel));
                },
            )
        })
    });
    // shmkit's per-thread front end over the same shared cursor.
    group.bench_function("shmkit-bump-local", |b| {
        b.iter_custom(|iters| {
            bump.reset();
            let shared = &bump;
            capped(iters, |iters| {
                on_two_threads(
                    iters,
                    || shared.local(64 << 10),
                    |local| {
                        black_box(local.alloc_handle(black_box(BLOCK), ALIGN).expect("room"));
                    },
                )
            })
        })
    });
    // bumpalo cannot be shared; one arena per thread is its best case.
    let layout = std::alloc::Layout::from_size_align(BLOCK, ALIGN).expect("layout");
    group.bench_function("bumpalo-per-thread", |b| {
        b.iter_custom(|iters| {
            capped(iters, |iters| {
                on_two_threads(iters, bumpalo::Bump::new, |arena| {
                    black_box(arena.alloc_layout(black_box(layout)));
                })
            })
        })
    });
    group.finish();
}

criterion_group!(benches, one_thread, two_threads);
criterion_main!(benches);
