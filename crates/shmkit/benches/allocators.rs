//! The allocator family against its peers, side by side in one run:
//! the system allocator, mimalloc and talc (process-local) and shmkit's
//! allocators (state in a POSIX shared-memory segment).
//!
//! Workloads:
//! * `pair64`: allocate 64 B, free it;
//! * `churn`: 1,024 live blocks of random sizes 16..=4096 B, each step frees
//!   one at random and allocates a new one in its place;
//! * `bulk`: 1,000,000 x 64 B, then free them all (figure per operation);
//! * `pair64-2t`: `pair64` on two threads at once (wall time per pair).
//!
//! Run: `cargo bench -p shmkit --bench allocators`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use shmkit::{
    BuddyAllocator, FreeListAllocator, MallocAllocator, MemContext, PoolAllocator,
    SegmentAllocator, SegmentOptions, ShmAllocator, SizeClassAllocator, ThreadLocalAllocator,
};

/// What the workloads need from an allocator: a token per block.
trait Subject: Sync {
    fn alloc(&self, size: usize) -> usize;
    fn free(&self, token: usize, size: usize);
}

/// A process-local `GlobalAlloc` peer.
struct Global<G: GlobalAlloc + Sync>(G);

impl<G: GlobalAlloc + Sync> Subject for Global<G> {
    #[inline]
    fn alloc(&self, size: usize) -> usize {
        // SAFETY: non-zero size, valid alignment.
        let ptr = unsafe { self.0.alloc(Layout::from_size_align_unchecked(size, 8)) };
        assert!(!ptr.is_null(), "peer out of memory");
        ptr as usize
    }
    #[inline]
    fn free(&self, token: usize, size: usize) {
        // SAFETY: `token` came from `alloc` with the same layout.
        unsafe {
            self.0
                .dealloc(token as *mut u8, Layout::from_size_align_unchecked(size, 8))
        }
    }
}

/// A shmkit allocator, driven through its offsets.
struct Shm<A: ShmAllocator>(A);

impl<A: ShmAllocator> Subject for Shm<A> {
    #[inline]
    fn alloc(&self, size: usize) -> usize {
        self.0
            .allocate_offset(&MemContext::default(), size, 8)
            .expect("shmkit allocator out of memory") as usize
    }
    #[inline]
    fn free(&self, token: usize, _size: usize) {
        // SAFETY: a workload frees each token it was given once, and never
        // touches the block again.
        unsafe { self.0.free_offset(&MemContext::default(), token as u64) }.expect("free");
    }
}

/// talc over a fixed arena (it needs one), behind its spin lock.
fn talc_peer() -> Global<talc::Talck<spin::Mutex<()>, talc::ErrOnOom>> {
    let arena: &'static mut [u8] = Box::leak(vec![0u8; 512 << 20].into_boxed_slice());
    let mut talc = talc::Talc::new(talc::ErrOnOom);
    // SAFETY: the leaked arena is valid, unused elsewhere and lives forever.
    unsafe { talc.claim(talc::Span::from_base_size(arena.as_mut_ptr(), arena.len())) }
        .expect("claim arena");
    Global(talc.lock::<spin::Mutex<()>>())
}

/// A shmkit allocator in a fresh 1 GiB POSIX shared-memory segment whose
/// name is removed at once (the mapping stays until the allocator drops).
fn shared<A: SegmentAllocator + ShmAllocator + 'static>(tag: &str) -> Box<dyn Subject> {
    let options =
        SegmentOptions::shm(format!("shmkit-bench-{tag}-{}", std::process::id())).size(1 << 30);
    let allocator = A::create(&options).expect("create the benchmark segment");
    shmkit::segment::remove(options.location()).expect("unlink the benchmark segment");
    Box::new(Shm(allocator))
}

fn subjects() -> Vec<(&'static str, Box<dyn Subject>)> {
    vec![
        ("system", Box::new(Global(System))),
        ("mimalloc", Box::new(Global(mimalloc::MiMalloc))),
        ("talc", Box::new(talc_peer())),
        ("shmkit-malloc", Box::new(Shm(MallocAllocator::new()))),
        ("shmkit-pool", shared::<PoolAllocator>("pool")),
        ("shmkit-free-list", shared::<FreeListAllocator>("free-list")),
        ("shmkit-buddy", shared::<BuddyAllocator>("buddy")),
        (
            "shmkit-size-class",
            shared::<SizeClassAllocator>("size-class"),
        ),
        (
            "shmkit-thread-local",
            shared::<ThreadLocalAllocator>("thread-local"),
        ),
    ]
}

fn pair64(c: &mut Criterion, subjects: &[(&'static str, Box<dyn Subject>)]) {
    let mut group = c.benchmark_group("pair64");
    for (name, subject) in subjects {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| subject.free(black_box(subject.alloc(black_box(64))), 64))
        });
    }
    group.finish();
}

/// xorshift64*: deterministic sizes and slots.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn churn(c: &mut Criterion, subjects: &[(&'static str, Box<dyn Subject>)]) {
    let mut group = c.benchmark_group("churn");
    for (name, subject) in subjects {
        let mut rng = 0x1234_5678_u64;
        let mut live: Vec<(usize, usize)> = (0..1024)
            .map(|_| {
                let size = 16 + (next(&mut rng) % 4081) as usize;
                (subject.alloc(size), size)
            })
            .collect();
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                let slot = (next(&mut rng) % 1024) as usize;
                let (token, size) = live[slot];
                subject.free(token, size);
                let size = 16 + (next(&mut rng) % 4081) as usize;
                live[slot] = (subject.alloc(size), size);
            })
        });
        for (token, size) in live.drain(..) {
            subject.free(token, size);
        }
    }
    group.finish();
}

const BULK: usize = 1_000_000;

fn bulk(c: &mut Criterion, subjects: &[(&'static str, Box<dyn Subject>)]) {
    let mut group = c.benchmark_group("bulk");
    group.sample_size(10);
    for (name, subject) in subjects {
        let mut tokens = Vec::with_capacity(BULK);
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|rounds| {
                let mut total = Duration::ZERO;
                for _ in 0..rounds {
                    let start = Instant::now();
                    for _ in 0..BULK {
                        tokens.push(subject.alloc(64));
                    }
                    for token in tokens.drain(..) {
                        subject.free(token, 64);
                    }
                    // Per operation: BULK allocations plus BULK frees.
                    total += start.elapsed() / (2 * BULK as u32);
                }
                total
            })
        });
    }
    group.finish();
}

fn pair64_two_threads(c: &mut Criterion, subjects: &[(&'static str, Box<dyn Subject>)]) {
    let mut group = c.benchmark_group("pair64-2t");
    for (name, subject) in subjects {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|iters| {
                let barrier = Barrier::new(3);
                std::thread::scope(|scope| {
                    for _ in 0..2 {
                        scope.spawn(|| {
                            barrier.wait();
                            for _ in 0..iters / 2 {
                                subject.free(black_box(subject.alloc(64)), 64);
                            }
                            barrier.wait();
                        });
                    }
                    barrier.wait();
                    let start = Instant::now();
                    barrier.wait();
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

fn all(c: &mut Criterion) {
    let subjects = subjects();
    pair64(c, &subjects);
    churn(c, &subjects);
    bulk(c, &subjects);
    pair64_two_threads(c, &subjects);
}

criterion_group!(benches, all);
criterion_main!(benches);
