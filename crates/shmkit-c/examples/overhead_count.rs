//! Counts what the C API adds to an allocate + free pair on the
//! thread-local allocator, in instructions rather than nanoseconds (which
//! swing by half on a shared machine). Run each way twice, at two lengths,
//! under callgrind; the difference of the two totals over the difference
//! of the lengths is the instructions of one pair:
//!
//!     cargo build --release -p shmkit-c --example overhead_count
//!     valgrind --tool=callgrind --callgrind-out-file=/dev/null \
//!         target/release/examples/overhead_count c 100000
//!
//! Ways: `rust` (the Rust call in a loop, as the benchmark times it),
//! `rust-opaque` (the allocator hidden from the optimizer on every pass, as
//! at a call site that cannot hoist its loads) and `c` (the C call).

use std::ffi::CString;
use std::hint::black_box;

use shmkit::{MemContext, SegmentAllocator, SegmentOptions, ShmAllocator, ThreadLocalAllocator};
use shmkit_c::{
    shmkit_heap, shmkit_heap_allocate, shmkit_heap_attach, shmkit_heap_close, shmkit_heap_free,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(way), Some(pairs)) = (
        args.next(),
        args.next().and_then(|n| n.parse::<usize>().ok()),
    ) else {
        eprintln!("usage: overhead_count rust|rust-opaque|c PAIRS");
        std::process::exit(2);
    };
    let name = format!("shmkit-c-overhead-count-{}", std::process::id());
    let creator = ThreadLocalAllocator::create(&SegmentOptions::shm(&name).size(64 << 20)).unwrap();
    let heap = ThreadLocalAllocator::attach(&SegmentOptions::shm(&name)).unwrap();
    let c_name = CString::new(name.clone()).unwrap();
    let mut handle: *mut shmkit_heap = std::ptr::null_mut();
    // SAFETY: a valid name and out-pointer.
    let attached = unsafe { shmkit_heap_attach(c_name.as_ptr(), 0, &mut handle) };
    assert_eq!(attached as i32, 0);
    let _ = shmkit::segment::remove(&shmkit::Location::Shm(name));
    let ctx = MemContext::default();
    for _ in 0..pairs {
        match way.as_str() {
            "rust" | "rust-opaque" => {
                let heap = if way == "rust" {
                    &heap
                } else {
                    black_box(&heap)
                };
                let offset = heap.allocate_offset(&ctx, black_box(64), 16).unwrap();
                // SAFETY: the block was just allocated and is not used.
                unsafe { heap.free_offset(&ctx, black_box(offset)) }.unwrap();
            }
            _ => {
                let mut offset = 0u64;
                // SAFETY: a live handle and a valid out-pointer.
                let allocated = unsafe { shmkit_heap_allocate(handle, black_box(64), &mut offset) };
                // SAFETY: as above; the block was just allocated.
                let freed = unsafe { shmkit_heap_free(handle, black_box(offset)) };
                assert!(allocated as i32 == 0 && freed as i32 == 0);
            }
        }
    }
    // SAFETY: the handle is live and used no more.
    unsafe { shmkit_heap_close(handle) };
    drop(heap);
    drop(creator);
}
