//! Segments are backed as they fill: creating a large one commits little,
//! committed memory follows what the allocator hands out, and a file system
//! that cannot back more makes the allocation fail with an error, never the
//! process with a signal.

mod common;

use std::os::unix::fs::MetadataExt;

use common::{child_env, spawn_self};
use shmkit::{
    AllocatorKind, AnyAllocator, BumpAllocator, Error, LinearAlloc, SegmentAllocator,
    SegmentOptions,
};

const MIB: u64 = 1 << 20;

/// Every allocator, each with a way to take one block of `len` bytes.
const KINDS: [AllocatorKind; 7] = [
    AllocatorKind::Bump,
    AllocatorKind::Stack,
    AllocatorKind::Pool,
    AllocatorKind::FreeList,
    AllocatorKind::Buddy,
    AllocatorKind::SizeClass,
    AllocatorKind::ThreadLocal,
];

/// Bytes the segment's backing object takes, from the file system.
fn committed(heap: &AnyAllocator) -> u64 {
    let fd = heap
        .segment()
        .fd()
        .expect("a memfd segment has a descriptor");
    let file = std::fs::File::from(fd.try_clone_to_owned().unwrap());
    let bytes = file.metadata().unwrap().blocks() * 512;
    assert_eq!(heap.segment().backed_bytes(), Some(bytes));
    bytes
}

/// Takes one block of `len` bytes.
fn take(heap: &AnyAllocator, len: usize) -> Result<u64, Error> {
    match heap {
        AnyAllocator::Bump(bump) => bump.alloc_handle(len, 8).map(|o| o.raw()),
        AnyAllocator::Stack(stack) => stack.alloc_handle(len, 8).map(|o| o.raw()),
        other => other
            .as_shm_allocator()
            .expect("a freeing allocator")
            .allocate_offset(&Default::default(), len, 8),
    }
}

/// The block size each allocator serves well: the pool's largest default
/// slot, a page elsewhere.
fn block_len(kind: AllocatorKind) -> usize {
    if kind == AllocatorKind::Pool {
        1024
    } else {
        4096
    }
}

#[test]
fn a_large_segment_commits_memory_as_it_fills() {
    for kind in KINDS {
        let options = SegmentOptions::memfd(format!("lazy-{kind}")).size(1 << 30);
        let heap = AnyAllocator::create(kind, &options).unwrap();
        let fresh = committed(&heap);
        // Backing all of it up front would commit 1 GiB.
        assert!(
            fresh <= 24 * MIB,
            "{kind}: {fresh} bytes committed at creation"
        );
        assert_eq!(heap.segment().max_size(), 1 << 30, "{kind}");

        // Fill a quarter: committed memory follows, within the allocator's
        // overhead and one growth step.
        let len = block_len(kind);
        let target = 256 * MIB;
        let mut taken = 0u64;
        while taken < target {
            take(&heap, len).unwrap_or_else(|e| panic!("{kind}: {e} after {taken} bytes"));
            taken += len as u64;
        }
        let filled = committed(&heap);
        assert!(
            filled >= taken,
            "{kind}: {filled} committed for {taken} handed out"
        );
        assert!(
            filled <= taken + taken / 8 + 48 * MIB,
            "{kind}: {filled} committed for {taken} handed out"
        );
        heap.check().unwrap_or_else(|e| panic!("{kind}: {e}"));
        let stats = heap.stats();
        assert!(
            stats.capacity >= (1 << 30) - 128 * MIB,
            "{kind}: the capacity counts the room to grow: {stats:?}"
        );
        assert!(stats.free_bytes + stats.allocated_bytes <= stats.capacity + MIB);
    }
}

#[test]
fn committing_up_front_backs_the_whole_size() {
    let options = SegmentOptions::memfd("eager")
        .size(64 * MIB)
        .commit_upfront(true);
    let heap = AnyAllocator::create(AllocatorKind::SizeClass, &options).unwrap();
    assert!(committed(&heap) >= 64 * MIB);
    assert_eq!(heap.segment().size(), 64 * MIB);
}

#[test]
fn another_process_sees_the_growth() {
    let options = SegmentOptions::memfd("seen").size(256 * MIB);
    let heap = BumpAllocator::create(&options).unwrap();
    let first = heap.segment().size();
    let far = heap.alloc_handle(64 << 20, 8).unwrap();
    assert!(heap.segment().size() > first);
    // An attacher through the descriptor (another process would do the
    // same) resolves the block at once.
    let fd = heap.segment().fd().unwrap().try_clone_to_owned().unwrap();
    let other = BumpAllocator::attach(&SegmentOptions::fd(fd)).unwrap();
    assert!(other
        .segment()
        .check_range(far.raw() + 64 * MIB - 1, 1)
        .is_ok());
}

/// Kinds the child below fills under a file-size limit.
const LIMITED_KIND: &str = "SHMKIT_TEST_LIMITED_KIND";

/// In a child process whose file-size limit is 40 MiB (a stand-in for a full
/// file system: the kernel refuses to back more with `EFBIG`), fills a
/// 256 MiB segment: the allocation that needs more backing fails with
/// `NoSpace`, the process lives, and what was handed out stays usable.
#[test]
#[ignore = "run by running_out_of_backing_store_is_an_error_not_a_signal"]
fn child_fills_under_a_file_size_limit() {
    let kind = AllocatorKind::from_code(child_env(LIMITED_KIND).parse().unwrap());
    // SAFETY: plain system calls on this (single-threaded child) process: the
    // signal the limit raises is ignored, so the call fails with EFBIG.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: 40 * MIB,
            rlim_max: 40 * MIB,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
    let options = SegmentOptions::memfd("limited").size(256 * MIB);
    let heap = AnyAllocator::create(kind, &options).unwrap();
    let len = block_len(kind);
    let mut blocks = Vec::new();
    let error = loop {
        match take(&heap, len) {
            Ok(offset) => {
                // Touch every block: an unbacked page would raise SIGBUS here.
                let ptr = heap
                    .segment()
                    .resolve_array(shmkit::Offset::<u8>::from_raw(offset), len as u64)
                    .unwrap();
                // SAFETY: a block just handed out, `len` bytes, ours alone.
                unsafe { std::ptr::write_bytes(ptr.as_ptr(), 0xA5, len) };
                blocks.push(offset);
            }
            Err(error) => break error,
        }
    };
    let taken = blocks.len() as u64 * len as u64;
    assert!(
        matches!(error, Error::NoSpace { .. }),
        "{kind}: expected NoSpace, got {error}"
    );
    // Backed to the last page the limit allows (less the allocator's own
    // metadata; the buddy's tables, unbacked but part of the file's length,
    // count against a length limit).
    let floor = if kind == AllocatorKind::Buddy { 16 } else { 32 } * MIB;
    assert!(taken >= floor, "{kind}: only {taken} bytes before {error}");
    assert!(taken <= 40 * MIB, "{kind}: {taken} bytes past the limit");
    heap.check().unwrap_or_else(|e| panic!("{kind}: {e}"));
    if let Some(allocator) = heap.as_shm_allocator() {
        // A freed block is handed out again without more backing.
        let last = blocks.pop().unwrap();
        // SAFETY: nothing uses the block after its free.
        unsafe { allocator.free_offset(&Default::default(), last) }.unwrap();
        take(&heap, len).unwrap_or_else(|e| panic!("{kind}: reuse after a free: {e}"));
    }
    println!("ok {kind} {taken}");
}

#[test]
fn running_out_of_backing_store_is_an_error_not_a_signal() {
    for kind in KINDS {
        let out = spawn_self(
            "child_fills_under_a_file_size_limit",
            &[(LIMITED_KIND, kind.code().to_string())],
        )
        .output()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("ok {kind}")),
            "{kind}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
