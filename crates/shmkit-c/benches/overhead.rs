//! What the C API adds to an allocate + free pair on the thread-local
//! allocator: the Rust call and the C call, on one segment, in one run.
//! Then the C++ wrapper against the C API, timed by a C++ program built
//! here with the system compiler (`benches/cpp_overhead.cpp`).
//!
//!     cargo bench -p shmkit-c --bench overhead

use std::ffi::CString;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;

use criterion::{criterion_group, Criterion};
use shmkit::{MemContext, SegmentAllocator, SegmentOptions, ShmAllocator, ThreadLocalAllocator};
use shmkit_c::{
    shmkit_heap, shmkit_heap_allocate, shmkit_heap_attach, shmkit_heap_close, shmkit_heap_free,
};

const SIZE: usize = 64;

fn pair(c: &mut Criterion) {
    let name = format!("shmkit-c-overhead-{}", std::process::id());
    // Created by a third handle, so that both measured views are attached
    // ones, made the same way.
    let creator = ThreadLocalAllocator::create(&SegmentOptions::shm(&name).size(64 << 20)).unwrap();
    let heap = ThreadLocalAllocator::attach(&SegmentOptions::shm(&name)).unwrap();
    let c_name = CString::new(name.clone()).unwrap();
    let mut handle: *mut shmkit_heap = std::ptr::null_mut();
    // SAFETY: valid name and out-pointer.
    let status = unsafe { shmkit_heap_attach(c_name.as_ptr(), 0, &mut handle) };
    assert_eq!(status as i32, 0);

    let mut group = c.benchmark_group("thread-local allocate+free 64 B");
    group.bench_function("rust", |b| {
        let ctx = MemContext::default();
        b.iter(|| {
            let offset = heap.allocate_offset(&ctx, black_box(SIZE), 16).unwrap();
            // SAFETY: the block was just allocated and is not used.
            unsafe { heap.free_offset(&ctx, black_box(offset)) }.unwrap();
        })
    });
    group.bench_function("rust, allocator opaque", |b| {
        let ctx = MemContext::default();
        b.iter(|| {
            let heap = black_box(&heap);
            let offset = heap.allocate_offset(&ctx, black_box(SIZE), 16).unwrap();
            // SAFETY: the block was just allocated and is not used.
            unsafe { heap.free_offset(&ctx, black_box(offset)) }.unwrap();
        })
    });
    group.bench_function("c-api", |b| {
        b.iter(|| {
            let mut offset = 0u64;
            // SAFETY: a live handle and a valid out-pointer.
            let allocated = unsafe { shmkit_heap_allocate(handle, black_box(SIZE), &mut offset) };
            // SAFETY: as above; the block was just allocated.
            let freed = unsafe { shmkit_heap_free(handle, black_box(offset)) };
            assert!(allocated as i32 == 0 && freed as i32 == 0);
        })
    });
    group.finish();
    // SAFETY: the handle is live and used no more.
    unsafe { shmkit_heap_close(handle) };
    drop(heap);
    drop(creator);
    let _ = shmkit::segment::remove(&shmkit::Location::Shm(name));
}

/// Builds and runs the C++ timing program against the static library.
fn cpp_against_c() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let library = deps.join("libshmkit_c.a");
    if !library.exists() {
        eprintln!("cpp_overhead: no {} (skipped)", library.display());
        return;
    }
    let program = deps.join("cpp_overhead");
    let built = Command::new("c++")
        .args(["-std=c++17", "-O2", "-I"])
        .arg(crate_dir.join("../../include"))
        .arg(crate_dir.join("benches/cpp_overhead.cpp"))
        .arg(&library)
        .args(shmkit_c::STATIC_LINK_LIBS)
        .arg("-o")
        .arg(&program)
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!("cpp_overhead: no C++ compiler or the build failed (skipped)");
        return;
    }
    let name = format!("shmkit-c-cpp-overhead-{}", std::process::id());
    let _ = Command::new(&program).arg(&name).status();
    let _ = shmkit::segment::remove(&shmkit::Location::Shm(name));
}

criterion_group!(benches, pair);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    cpp_against_c();
}
