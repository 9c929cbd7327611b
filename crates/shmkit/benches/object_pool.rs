//! Lending an object from a pool and giving it back, side by side in one
//! group with what the pool replaces, `Box::new` of a fresh value and its
//! drop, for two kinds of object:
//!
//! * a 64-byte struct: the pool saves one allocation and free;
//! * a `Vec<u8>` with a 256-byte buffer: the pool saves the box and the
//!   buffer (its reset hook clears the vector, keeping the buffer).
//!
//! Each iteration writes to the object, as a user would. `ObjectPool` is
//! the single-threaded pool; `ConcurrentPool` is measured on one thread (its
//! lock-free pop and push, uncontended).
//!
//! Run: `cargo bench -p shmkit --bench object_pool`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use shmkit::local::object_pool::{ConcurrentPool, ObjectPool};

/// A 64-byte object.
#[derive(Clone, Copy, Default)]
struct Small([u64; 8]);

const BUFFER: usize = 256;

fn new_buffer() -> Vec<u8> {
    Vec::with_capacity(BUFFER)
}

fn acquire_release(c: &mut Criterion) {
    let mut group = c.benchmark_group("object_pool/acquire+release");

    group.bench_function("small64/Box::new+drop", |b| {
        b.iter(|| {
            let mut object = Box::new(Small::default());
            object.0[0] = black_box(1);
            black_box(&mut *object);
        })
    });
    let pool = ObjectPool::new(Small::default);
    group.bench_function("small64/ObjectPool", |b| {
        b.iter(|| {
            let mut object = pool.acquire().expect("unbounded");
            object.0[0] = black_box(1);
            black_box(&mut *object);
        })
    });
    let shared = ConcurrentPool::new(Small::default);
    group.bench_function("small64/ConcurrentPool", |b| {
        b.iter(|| {
            let mut object = shared.acquire().expect("unbounded");
            object.0[0] = black_box(1);
            black_box(&mut *object);
        })
    });

    group.bench_function("vec256/Box::new+drop", |b| {
        b.iter(|| {
            let mut object = Box::new(new_buffer());
            object.push(black_box(1));
            black_box(&mut *object);
        })
    });
    let pool = ObjectPool::new(new_buffer).reset_with(Vec::clear);
    group.bench_function("vec256/ObjectPool", |b| {
        b.iter(|| {
            let mut object = pool.acquire().expect("unbounded");
            object.push(black_box(1));
            black_box(&mut *object);
        })
    });
    let shared = ConcurrentPool::new(new_buffer).reset_with(Vec::clear);
    group.bench_function("vec256/ConcurrentPool", |b| {
        b.iter(|| {
            let mut object = shared.acquire().expect("unbounded");
            object.push(black_box(1));
            black_box(&mut *object);
        })
    });

    group.finish();
}

criterion_group!(benches, acquire_release);
criterion_main!(benches);
