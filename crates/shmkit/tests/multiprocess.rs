//! Several real processes allocate from one bump allocator at once.

mod common;

use std::io::Write;
use std::sync::atomic::{AtomicU32, Ordering};

use common::{assert_disjoint, child_env, fresh_shm, shm_name, spawn_workers, worker_stdout};
use shmkit::{BumpAllocator, Error, LinearAlloc, SegmentAllocator, SegmentOptions};

const WORKERS: usize = 4;
const BLOCKS_PER_WORKER: u64 = 20_000;

/// The byte a worker fills block `seq` with.
fn tag(worker: u64, seq: u64) -> u8 {
    (worker * 61 + seq * 7 + 1) as u8
}

#[test]
#[ignore = "child process of processes_share_one_bump_allocator"]
fn child_bump_worker() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let worker: u64 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    let bump = BumpAllocator::attach(&SegmentOptions::shm(name)).unwrap();
    // Start together, so the allocations really race.
    let arrived = bump
        .segment()
        .root::<AtomicU32>("arrived")
        .expect("published by the parent");
    // SAFETY: resolved, aligned; an atomic.
    let arrived = unsafe { bump.segment().resolve(arrived).unwrap().as_ref() };
    arrived.fetch_add(1, Ordering::AcqRel);
    let started = std::time::Instant::now();
    while arrived.load(Ordering::Acquire) < WORKERS as u32 {
        assert!(
            started.elapsed().as_secs() < 30,
            "the other workers never arrived"
        );
        std::hint::spin_loop();
    }
    let mut blocks = Vec::new();
    for seq in 0..BLOCKS_PER_WORKER {
        let size = 1 + (seq * 13 + worker * 5) % 300;
        let align = [1usize, 8, 16, 24, 64][(seq % 5) as usize];
        let block = match bump.alloc(size as usize, align) {
            Ok(block) => block,
            Err(Error::OutOfMemory { .. }) => break,
            Err(other) => panic!("worker {worker}: {other}"),
        };
        // SAFETY: the block is ours, `size` bytes long.
        unsafe { std::ptr::write_bytes(block.as_ptr(), tag(worker, seq), size as usize) };
        blocks.push((block, size, align, seq));
    }
    // Every byte still carries our tag: no one else was given our memory.
    for &(block, size, _, seq) in &blocks {
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), size as usize) };
        assert!(
            bytes.iter().all(|&b| b == tag(worker, seq)),
            "block {seq} was overwritten"
        );
    }
    let mut out = std::io::stdout().lock();
    for (block, size, align, seq) in blocks {
        writeln!(out, "block {} {size} {align} {seq}", block.offset().raw()).unwrap();
    }
}

#[test]
fn processes_share_one_bump_allocator() {
    let (options, _cleanup) = fresh_shm("multi");
    // Start small so the workers also grow the segment while racing.
    let parent =
        BumpAllocator::create(&options.clone().size(256 << 10).max_size(64 << 20)).unwrap();
    let arrived = parent.make_handle(AtomicU32::new(0)).unwrap();
    parent.segment().set_root("arrived", arrived).unwrap();
    let children = spawn_workers("child_bump_worker", &shm_name(&options), WORKERS);

    let mut ranges = Vec::new();
    for (worker, child) in children.into_iter().enumerate() {
        let stdout = worker_stdout(worker, child);
        let mut count = 0;
        for line in stdout.lines() {
            // The test harness may print its own words before our first line.
            let Some(at) = line.find("block ") else {
                continue;
            };
            let rest = &line[at + "block ".len()..];
            let fields: Vec<u64> = rest.split(' ').map(|f| f.parse().unwrap()).collect();
            ranges.push((fields[0], fields[1], fields[2], worker as u64, fields[3]));
            count += 1;
        }
        assert_eq!(
            count, BLOCKS_PER_WORKER,
            "worker {worker} reported too few blocks"
        );
    }

    let segment = parent.segment();
    assert!(
        segment.size() > 256 << 10,
        "the workers never grew the segment"
    );
    ranges.sort_unstable();
    for &(offset, size, align, worker, seq) in &ranges {
        assert!(offset >= segment.data_offset() && offset + size <= segment.size());
        assert_eq!(offset % align, 0);
        // The parent's own mapping (another address) sees the worker's tag.
        let block = segment
            .resolve_array(shmkit::Offset::<u8>::from_raw(offset), size)
            .unwrap();
        // SAFETY: in bounds; the workers have exited.
        let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), size as usize) };
        assert!(bytes.iter().all(|&b| b == tag(worker, seq)));
    }
    let mut spans: Vec<(u64, u64)> = ranges.iter().map(|r| (r.0, r.1)).collect();
    assert_disjoint(&mut spans);
    let highest = ranges.iter().map(|r| r.0 + r.1).max().unwrap();
    assert!(parent.used() + segment.data_offset() >= highest);
}
