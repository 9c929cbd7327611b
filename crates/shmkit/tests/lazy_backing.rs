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
const GIB: u64 = 1 << 30;

/// Every allocator a segment can hold.
const KINDS: [AllocatorKind; 7] = AnyAllocator::KINDS;

/// In a child: the kind named in `env_key`, and a memfd segment of `size`
/// bytes on it, created under a file-size limit of `limit` bytes.
fn child_heap_under_a_limit(env_key: &str, limit: u64, size: u64) -> (AllocatorKind, AnyAllocator) {
    let kind = AllocatorKind::from_code(child_env(env_key).parse().unwrap());
    limit_file_size(limit);
    let options = SegmentOptions::memfd(format!("limited-{kind}")).size(size);
    (kind, AnyAllocator::create(kind, &options).unwrap())
}

/// Makes this (child) process's file-size limit `bytes`, with the signal
/// the limit raises ignored, so that backing past it fails with EFBIG (a
/// stand-in for a full file system).
fn limit_file_size(bytes: u64) {
    // SAFETY: plain system calls on this single-threaded child process.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

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
fn the_header_keeps_the_size_asked_for_apart_from_the_maximum() {
    let options = SegmentOptions::memfd("capacity")
        .size(64 * MIB + 1)
        .max_size(GIB);
    let heap = AnyAllocator::create(AllocatorKind::SizeClass, &options).unwrap();
    let page = 4096;
    assert_eq!(
        heap.segment().capacity(),
        (64 * MIB + 1).div_ceil(page) * page
    );
    assert_eq!(heap.segment().max_size(), GIB);
    assert!(heap.segment().size() < 8 * MIB, "backed as it fills");
    let fd = heap.segment().fd().unwrap().try_clone_to_owned().unwrap();
    let reader = shmkit::ReadOnlySegment::attach(&SegmentOptions::fd(fd)).unwrap();
    assert_eq!(reader.capacity(), heap.segment().capacity());
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
    let (kind, heap) = child_heap_under_a_limit(LIMITED_KIND, 40 * MIB, 256 * MIB);
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
    run_child_for_each(&KINDS, "child_fills_under_a_file_size_limit", LIMITED_KIND);
}

/// Runs the ignored test `child` once per kind in a child process (the kind
/// in `env_key`) and checks that it exited cleanly and said so.
fn run_child_for_each(kinds: &[AllocatorKind], child: &str, env_key: &str) {
    for &kind in kinds {
        let out = spawn_self(child, &[(env_key, kind.code().to_string())])
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

/// Where the child below finds its small file system.
const SMALL_FS: &str = "SHMKIT_TEST_SMALL_FS";

/// In a private mount namespace with a 48 MiB tmpfs at `SMALL_FS` (a file
/// system that really fills up): a buddy segment whose maximum is far
/// beyond it runs out with `NoSpace`, keeps serving from its free lists
/// afterwards, and a heap end forged past its backed tables gives errors,
/// never SIGBUS.
#[test]
#[ignore = "run by a_full_file_system_leaves_the_buddy_usable_and_never_raises_sigbus"]
fn child_fills_a_small_file_system() {
    use shmkit::{BuddyAllocator, BuddyParams, ShmAllocator};
    let dir = std::path::PathBuf::from(child_env(SMALL_FS));
    // Room set aside, given back below.
    let filler = dir.join("filler");
    std::fs::write(&filler, vec![1u8; 4 << 20]).unwrap();
    let path = dir.join("buddy");
    let options = SegmentOptions::file(&path).size(MIB).max_size(512 * MIB);
    // 16-byte units: the state table's first backed megabyte describes only
    // the first 16 MiB of heap, so the forged end below reaches unbacked
    // table pages.
    let buddy = BuddyAllocator::create_with(&options, &BuddyParams { min_block: 16 }).unwrap();
    let mut blocks = Vec::new();
    let error = loop {
        match buddy.allocate(64 << 10) {
            Ok(block) => blocks.push(block),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(error, Error::NoSpace { .. }),
        "expected NoSpace, got {error}"
    );
    assert!(blocks.len() >= 100, "only {} blocks", blocks.len());
    buddy.check().unwrap();
    // Another process grows the segment's data by 4 MiB with the room set
    // aside, leaving none for the tables that would describe it: the heap
    // cannot take the growth in, and free blocks are served regardless.
    std::fs::remove_file(&filler).unwrap();
    let grown_to = buddy.segment().size() + (4 << 20) - (64 << 10);
    buddy.segment().grow(grown_to).unwrap();
    for _ in 0..3 {
        let block = blocks.pop().unwrap();
        // SAFETY: nothing uses the block after its free.
        unsafe { buddy.free(block) }.unwrap();
        let small = buddy.allocate(64).expect("served from the free lists");
        // SAFETY: as above.
        unsafe { buddy.free(small) }.unwrap();
        blocks.push(buddy.allocate(64 << 10).expect("the freed block again"));
    }
    buddy.check().unwrap();

    // A hostile process lengthens the file (sparse) by 64 MiB, forges the
    // header's size word and the heap end to match, and the file system is
    // full: the tables past the real heap end are not backed.
    fill_up(&dir.join("filler-2"));
    let lengthened = buddy.segment().size() + 64 * MIB;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(lengthened)
        .unwrap();
    let base = buddy.segment().base().as_ptr();
    // SAFETY: header byte 32 is the size word (8-aligned, atomic).
    let size_word = unsafe { &*base.add(32).cast::<std::sync::atomic::AtomicU64>() };
    let real_size = size_word.load(std::sync::atomic::Ordering::Acquire);
    size_word.store(lengthened, std::sync::atomic::Ordering::Release);
    assert_eq!(
        buddy.segment().size(),
        lengthened,
        "the forged size is believed"
    );
    // SAFETY: header byte 104 holds the state area's offset (8-aligned);
    // the heap end is the state's fifth word; atomics, ours alone here.
    let heap_end = unsafe {
        let state = base.add(base.add(104).cast::<u64>().read() as usize);
        &*state.add(32).cast::<std::sync::atomic::AtomicU64>()
    };
    let real_end = heap_end.load(std::sync::atomic::Ordering::Acquire);
    let forged = buddy.segment().size() & !0xffff;
    assert!(forged > real_end + 32 * MIB, "{forged} vs {real_end}");
    heap_end.store(forged, std::sync::atomic::Ordering::Release);
    let probe = forged - (64 << 10);
    // Past what the state table's first backed megabyte describes.
    assert!(probe - heap_start(&buddy) > 16 * MIB);
    assert!(buddy.usable_size(probe).is_err());
    // SAFETY: a refused free changes nothing.
    assert!(unsafe { buddy.free_offset(&Default::default(), probe) }.is_err());
    assert!(buddy.allocate(64 << 10).is_err());
    heap_end.store(real_end, std::sync::atomic::Ordering::Release);
    size_word.store(real_size, std::sync::atomic::Ordering::Release);
    buddy.check().unwrap();
    println!("ok {} blocks", blocks.len());
}

/// Writes `path` until the file system is full.
fn fill_up(path: &std::path::Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    let page = [7u8; 4096];
    while file.write_all(&page).is_ok() {}
}

/// The buddy heap's first byte: the state's third word.
fn heap_start(buddy: &shmkit::BuddyAllocator) -> u64 {
    let base = buddy.segment().base().as_ptr();
    // SAFETY: header byte 104 holds the state area's offset; the heap start
    // is the state's third word, written once at creation.
    unsafe {
        let state = base.add(base.add(104).cast::<u64>().read() as usize);
        state.add(16).cast::<u64>().read()
    }
}

#[test]
fn a_full_file_system_leaves_the_buddy_usable_and_never_raises_sigbus() {
    let dir = std::env::temp_dir().join(common::unique_name("small-fs"));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let script = format!(
        "mount -t tmpfs -o size=48m shmkit-test {dir} && exec {exe} --exact \
         child_fills_a_small_file_system --ignored --nocapture --test-threads=1",
        dir = dir.display(),
        exe = exe.display()
    );
    let out = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env(SMALL_FS, &dir)
        .output();
    let _ = std::fs::remove_dir(&dir);
    let out = match out {
        Ok(out) => out,
        Err(error) => {
            eprintln!("skipped: no unshare ({error})");
            return;
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && (stderr.contains("unshare failed") || stderr.contains("mount:")) {
        // Without the privilege to make a private mount namespace and a
        // small tmpfs, this machine cannot fill a file system safely.
        eprintln!("skipped: cannot mount a small tmpfs here: {stderr}");
        return;
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("ok "),
        "{}\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
fn the_free_lists_largest_free_block_counts_the_room_to_grow_exactly() {
    use shmkit::{FreeListAllocator, ShmAllocator};
    for (size, max) in [(8 * MIB, 8 * MIB), (MIB, 32 * MIB), (64 << 10, 8 * MIB)] {
        let options = SegmentOptions::private().size(size).max_size(max);
        let heap = FreeListAllocator::create(&options).unwrap();
        let _kept = heap.allocate(1000).unwrap();
        let largest = heap.stats().largest_free_block;
        assert!(largest > max - MIB, "{size}/{max}: {largest}");
        match heap.allocate(largest as usize + 1) {
            Err(Error::OutOfMemory { available, .. }) => assert_eq!(available, largest),
            other => panic!("{size}/{max}: one byte more than the largest: {other:?}"),
        }
        heap.allocate(largest as usize)
            .unwrap_or_else(|e| panic!("{size}/{max}: the largest: {e}"));
        heap.check().unwrap();
    }
}

#[test]
fn below_the_capacity_backing_is_free_and_past_it_freed_pages_come_first() {
    use shmkit::{ShmAllocator, SizeClassAllocator};
    let capacity = 20 * MIB;
    let options = SegmentOptions::private().size(capacity).max_size(GIB);
    let heap = SizeClassAllocator::create(&options).unwrap();
    let fill = |len: usize| {
        let mut blocks = Vec::new();
        while (blocks.len() * len) < (capacity as usize) * 6 / 10 {
            blocks.push(heap.allocate(len).unwrap());
        }
        blocks
    };
    for block in fill(64) {
        // SAFETY: nothing uses the block after its free.
        unsafe { heap.free(block) }.unwrap();
    }
    let _kept = fill(1024);
    assert!(
        heap.segment().size() <= capacity,
        "grew to {} past a capacity of {capacity} with empty pages to collect",
        heap.segment().size()
    );
    heap.check().unwrap();
}

/// The size-class kinds the child below runs on.
const SHARDED_KIND: &str = "SHMKIT_TEST_SHARDED_KIND";

/// Under a 24 MiB file-size limit, a 64 MiB segment filled by one thread
/// until `NoSpace`, then half freed: fresh threads (other shards) are served
/// from the freed blocks, and empty pages are collected for another size.
#[test]
#[ignore = "run by a_full_file_system_sends_threads_to_freed_blocks"]
fn child_shares_freed_blocks_under_a_file_size_limit() {
    let (kind, heap) = child_heap_under_a_limit(SHARDED_KIND, 24 * MIB, 64 * MIB);
    let allocator = heap.as_shm_allocator().unwrap();
    let mut blocks = Vec::new();
    let error = loop {
        match allocator.allocate_offset(&Default::default(), 64, 8) {
            Ok(offset) => blocks.push(offset),
            Err(error) => break error,
        }
    };
    assert!(matches!(error, Error::NoSpace { .. }), "{kind}: {error}");
    // Every other block back, then a run of whole pages.
    let (even, odd): (Vec<_>, Vec<_>) = blocks.iter().partition(|&&o| (o / 64) % 2 == 0);
    for offset in even {
        // SAFETY: nothing uses the block after its free.
        unsafe { allocator.free_offset(&Default::default(), offset) }.unwrap();
    }
    let keep = odd.len() / 2;
    for &offset in &odd[keep..] {
        // SAFETY: as above.
        unsafe { allocator.free_offset(&Default::default(), offset) }.unwrap();
    }
    std::thread::scope(|scope| {
        for thread in 0..8 {
            let allocator = &allocator;
            scope.spawn(move || {
                for _ in 0..1000 {
                    allocator
                        .allocate_offset(&Default::default(), 64, 8)
                        .unwrap_or_else(|e| panic!("{kind}: thread {thread}: {e}"));
                }
            });
        }
    });
    // Pages emptied above serve another size.
    for _ in 0..2048 {
        allocator
            .allocate_offset(&Default::default(), 1024, 8)
            .unwrap_or_else(|e| panic!("{kind}: 1 KiB blocks from collected pages: {e}"));
    }
    heap.check().unwrap();
    println!("ok {kind}");
}

#[test]
fn a_full_file_system_sends_threads_to_freed_blocks() {
    run_child_for_each(
        &[AllocatorKind::SizeClass, AllocatorKind::ThreadLocal],
        "child_shares_freed_blocks_under_a_file_size_limit",
        SHARDED_KIND,
    );
}
