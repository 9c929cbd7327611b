//! The pool allocator: slab choice, reuse, bad frees, alignment, exhaustion
//! and growth, corruption, threads, several real processes, and a property
//! test against a model.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use common::{assert_disjoint, child_env, fresh_shm, shm_name, spawn_workers, worker_stdout};
use proptest::prelude::*;
use shmkit::{
    Error, FullPtr, Offset, PoolAllocator, PoolParams, SegmentAllocator, SegmentOptions,
    ShmAllocator,
};

fn pool(size: u64) -> PoolAllocator {
    PoolAllocator::create(&SegmentOptions::private().size(size)).unwrap()
}

/// A small deterministic generator (no shared state between workers).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Writes a tag into a block: owner, sequence and size in the first 16
/// bytes, and a fill byte derived from them in the rest.
fn write_tag(block: FullPtr<u8>, owner: u32, seq: u32, size: usize) {
    assert!(size >= 16);
    let fill = fill_byte(owner, seq);
    // SAFETY: the block is live, ours, and at least `size` bytes long.
    unsafe {
        let bytes = std::slice::from_raw_parts_mut(block.as_ptr(), size);
        bytes[..4].copy_from_slice(&owner.to_le_bytes());
        bytes[4..8].copy_from_slice(&seq.to_le_bytes());
        bytes[8..12].copy_from_slice(&(size as u32).to_le_bytes());
        bytes[12..16].copy_from_slice(&(owner ^ seq ^ size as u32).to_le_bytes());
        bytes[16..].fill(fill);
    }
}

fn fill_byte(owner: u32, seq: u32) -> u8 {
    (owner.wrapping_mul(31) ^ seq.wrapping_mul(7)) as u8 | 1
}

/// Checks the tag of a live block (whoever wrote it); returns its owner.
fn verify_tag(pool: &PoolAllocator, offset: u64) -> u32 {
    let usable = pool.usable_size(offset).expect("a tagged block is live");
    let block = pool.full_ptr(offset).unwrap();
    // SAFETY: the block is live and `usable` bytes long; only its holder
    // writes it, and that is us now.
    let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), usable) };
    let word = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
    let (owner, seq, size) = (word(0), word(4), word(8));
    assert_eq!(word(12), owner ^ seq ^ size, "block {offset}: torn tag");
    assert!(
        size as usize <= usable && size >= 16,
        "block {offset}: size {size}"
    );
    let fill = fill_byte(owner, seq);
    assert!(
        bytes[16..size as usize].iter().all(|&b| b == fill),
        "block {offset} (owner {owner}, seq {seq}) was overwritten"
    );
    owner
}

#[test]
fn allocate_free_and_reuse() {
    let pool = pool(1 << 20);
    assert_eq!(pool.slot_sizes(), vec![64, 256, 1024, 4096]);
    let a = pool.allocate(40).unwrap();
    let b = pool.allocate(40).unwrap();
    assert_ne!(a.offset(), b.offset());
    let stats = pool.stats();
    assert_eq!(
        (
            stats.allocated_bytes,
            stats.live_allocations,
            stats.peak_bytes
        ),
        (80, 2, 80)
    );
    // SAFETY: nothing uses the block after it is freed.
    unsafe { pool.free(a) }.unwrap();
    assert_eq!(pool.stats().allocated_bytes, 40);
    // The freed slot is the next one handed out in its slab.
    let c = pool.allocate(64).unwrap();
    assert_eq!(c.offset(), a.offset());
    // SAFETY: nothing uses the block after it is freed.
    unsafe { pool.free(b) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { pool.free(c) }.unwrap();
    let stats = pool.stats();
    assert_eq!((stats.allocated_bytes, stats.live_allocations), (0, 0));
    assert_eq!(stats.peak_bytes, 104);
    pool.check().unwrap();
}

#[test]
fn a_request_goes_to_the_smallest_slab_that_fits() {
    let params = PoolParams::new(&[24, 96, 512]).unwrap();
    let pool =
        PoolAllocator::create_with(&SegmentOptions::private().size(4 << 20), &params).unwrap();
    for (size, align, slot) in [
        (0, 1, 24),
        (1, 8, 24),
        (24, 8, 24),
        (25, 8, 96),
        (20, 16, 96), // 24-byte slots are only 8-aligned; 96 = 32 * 3
        (20, 32, 96),
        (20, 64, 512),
        (96, 8, 96),
        (97, 1, 512),
        (512, 512, 512),
    ] {
        let offset = pool
            .allocate_offset(&Default::default(), size, align)
            .unwrap();
        assert_eq!(pool.usable_size(offset).unwrap(), slot, "{size} @ {align}");
        assert_eq!(offset % align as u64, 0);
    }
    assert!(matches!(
        pool.allocate(513),
        Err(Error::OutOfMemory {
            requested: 513,
            available: 512
        })
    ));
    assert!(matches!(
        pool.allocate_aligned(8, 1024),
        Err(Error::InvalidAlignment { align: 1024, .. })
    ));
    pool.check().unwrap();
}

#[test]
fn bad_frees_are_refused_and_change_nothing() {
    let pool = pool(1 << 20);
    let live: Vec<_> = (0..10)
        .map(|i| pool.allocate(10 + i * 30).unwrap())
        .collect();
    let freed = pool.allocate(64).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { pool.free(freed) }.unwrap();
    let big = pool.allocate(3000).unwrap();
    let first = live[0].offset().raw();
    let size = pool.segment().size();
    let before = pool.stats();
    let bogus = [
        0,
        1,
        8,
        pool.segment().data_offset(),
        first + 1,
        first + 8,
        first + 32, // the middle of a live 64-byte slot
        big.offset().raw() + 2048,
        freed.offset().raw(), // double free
        first + 64 * 40,      // a slot boundary never handed out
        size - 64,
        size,
        size + 4096,
        u64::MAX - 7,
    ];
    for offset in bogus {
        // SAFETY: nothing uses the block after it is freed.
        let result = unsafe { pool.free_offset(&Default::default(), offset) };
        assert!(
            matches!(result, Err(Error::InvalidFree { offset: o }) if o == offset),
            "free of {offset}: {result:?}"
        );
        assert_eq!(pool.stats(), before, "free of {offset} changed the stats");
        assert!(pool.usable_size(offset).is_err());
        pool.check().unwrap();
    }
    // The stacks are intact: new blocks never collide with live ones.
    let mut spans: Vec<(u64, u64)> = live
        .iter()
        .chain([&big])
        .map(|b| {
            (
                b.offset().raw(),
                pool.usable_size(b.offset().raw()).unwrap() as u64,
            )
        })
        .collect();
    for size in [1usize, 60, 200, 1000, 4000, 64, 64] {
        let block = pool.allocate(size).unwrap();
        spans.push((
            block.offset().raw(),
            pool.usable_size(block.offset().raw()).unwrap() as u64,
        ));
    }
    assert_disjoint(&mut spans);
    for block in live {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { pool.free(block) }.unwrap();
        // SAFETY: nothing uses the block after it is freed.
        assert!(unsafe { pool.free(block) }.is_err());
    }
    pool.check().unwrap();
}

#[test]
fn every_power_of_two_alignment_holds_for_offset_and_address() {
    let pool = pool(4 << 20);
    assert!(pool.segment().max_align() >= 4096);
    for shift in 0..=12 {
        let align = 1usize << shift;
        for size in [1usize, 17, 100, 4000] {
            let block = pool.allocate_aligned(size, align).unwrap();
            assert_eq!(
                block.offset().raw() % align as u64,
                0,
                "offset {size} @ {align}"
            );
            assert_eq!(
                block.as_ptr() as usize % align,
                0,
                "address {size} @ {align}"
            );
            assert!(pool.usable_size(block.offset().raw()).unwrap() >= size);
        }
    }
    let zero = pool.allocate_aligned(5, 0).unwrap();
    assert_eq!(zero.offset().raw() % 8, 0);
    for align in [3usize, 24, 8192, 1 << 20] {
        assert!(
            matches!(
                pool.allocate_aligned(8, align),
                Err(Error::InvalidAlignment { .. })
            ),
            "{align}"
        );
    }
    pool.check().unwrap();
}

#[test]
fn a_buffer_backed_pool_stays_in_its_buffer() {
    let mut buffer = vec![0xa5u8; 1 << 20];
    let range = buffer.as_ptr_range();
    let (start, end) = (range.start as usize, range.end as usize);
    let pool = PoolAllocator::in_buffer(&mut buffer).unwrap();
    let max = pool.segment().max_align();
    assert!(matches!(
        pool.allocate_aligned(8, max * 2),
        Err(Error::InvalidAlignment { .. })
    ));
    assert_eq!(
        pool.allocate_aligned(8, max).unwrap().as_ptr() as usize % max,
        0
    );
    let mut blocks = Vec::new();
    for size in [8usize, 100, 1000, 4000].into_iter().cycle().take(100) {
        let block = pool.allocate(size).unwrap();
        let addr = block.as_ptr() as usize;
        assert!(addr >= start && addr + size <= end);
        blocks.push(block);
    }
    pool.check().unwrap();
    for block in blocks {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { pool.free(block) }.unwrap();
    }
    pool.check().unwrap();
    assert_eq!(pool.stats().live_allocations, 1);
}

#[test]
fn out_of_memory_then_growth_with_max_size() {
    let options = SegmentOptions::private().size(512 << 10);
    let fixed = PoolAllocator::create(&options).unwrap();
    let mut blocks = Vec::new();
    let error = loop {
        match fixed.allocate(4096) {
            Ok(block) => blocks.push(block),
            Err(error) => break error,
        }
    };
    assert!(matches!(error, Error::OutOfMemory { .. }), "{error}");
    assert!(!blocks.is_empty());
    let before = fixed.stats();
    assert!(fixed.allocate(4000).is_err());
    assert_eq!(fixed.stats(), before, "a failed request changed the stats");
    // Too large for any slot, whatever the room.
    assert!(matches!(
        fixed.allocate(4097),
        Err(Error::OutOfMemory {
            requested: 4097,
            ..
        })
    ));
    // A freed slot serves the next request.
    let last = blocks.pop().unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { fixed.free(last) }.unwrap();
    assert_eq!(fixed.allocate(4096).unwrap().offset(), last.offset());
    fixed.check().unwrap();

    let growing = PoolAllocator::create(&options.clone().max_size(8 << 20)).unwrap();
    let mut spans = Vec::new();
    for _ in 0..blocks.len() * 3 {
        let block = growing.allocate(4096).unwrap();
        spans.push((block.offset().raw(), 4096));
    }
    assert!(growing.segment().size() > 512 << 10, "never grew");
    assert_disjoint(&mut spans);
    assert!(spans.last().unwrap().0 + 4096 <= growing.segment().size());
    growing.check().unwrap();
    // Up to the maximum, then out of memory.
    let error = loop {
        if let Err(error) = growing.allocate(64) {
            break error;
        }
    };
    assert!(matches!(error, Error::OutOfMemory { .. }), "{error}");
    assert_eq!(growing.segment().size(), 8 << 20);
    growing.check().unwrap();
}

#[test]
fn slots_a_consumer_frees_come_back_to_the_producer() {
    // The producer and the consumer work on different shards (each holds a
    // hand-off slot of its own). Freed slots must go back to the shard that
    // carved them: were they kept by the freeing thread's shard, the
    // producer would never see them and would claim page after page while
    // the segment may grow.
    let options = SegmentOptions::private().size(1 << 20).max_size(256 << 20);
    let pool = PoolAllocator::create(&options).unwrap();
    let (send, receive) = std::sync::mpsc::sync_channel::<u64>(64);
    std::thread::scope(|scope| {
        let pool = &pool;
        scope.spawn(move || {
            // SAFETY: a block of its own, freed once.
            unsafe {
                pool.free_offset(
                    &Default::default(),
                    pool.allocate_offset(&Default::default(), 64, 8).unwrap(),
                )
            }
            .unwrap();
            for offset in receive {
                // SAFETY: each block is sent once and not used afterwards.
                unsafe { pool.free_offset(&Default::default(), offset) }.unwrap();
            }
        });
        for _ in 0..200_000 {
            send.send(pool.allocate_offset(&Default::default(), 64, 8).unwrap())
                .unwrap();
        }
        drop(send);
    });
    // 200,000 blocks of 64 B are 12.8 MB; at most 64 live at once.
    assert!(
        pool.segment().size() <= 4 << 20,
        "the pool grew to {} bytes",
        pool.segment().size()
    );
    assert_eq!(pool.stats().live_allocations, 0);
    pool.check().unwrap();
}

#[test]
fn stats_count_requested_bytes_and_free_space() {
    let pool = pool(1 << 20);
    let empty = pool.stats();
    assert_eq!(empty.largest_free_block, 4096);
    assert!(empty.capacity > 900 << 10 && empty.capacity <= 1 << 20);
    assert_eq!(empty.free_bytes, empty.capacity);
    let a = pool.allocate(100).unwrap();
    let b = pool.allocate(3).unwrap();
    let stats = pool.stats();
    assert_eq!(stats.allocated_bytes, 103);
    assert_eq!(stats.live_allocations, 2);
    assert!(stats.free_bytes < empty.free_bytes);
    // Resizing within the slot stays in place and recounts.
    // SAFETY: nothing uses the block after it is freed.
    let a2 = unsafe { pool.reallocate(a, 200) }.unwrap();
    assert_eq!(a2.offset(), a.offset());
    assert_eq!(pool.stats().allocated_bytes, 203);
    // Beyond the slot it moves and keeps the contents.
    // SAFETY: the block is live and 200 bytes long.
    unsafe { std::ptr::write_bytes(a2.as_ptr(), 0x5c, 200) };
    // SAFETY: nothing uses the block after it is freed.
    let a3 = unsafe { pool.reallocate(a2, 1000) }.unwrap();
    assert_ne!(a3.offset(), a2.offset());
    // SAFETY: as above, 1000 bytes.
    let bytes = unsafe { std::slice::from_raw_parts(a3.as_ptr(), 200) };
    assert!(bytes.iter().all(|&x| x == 0x5c));
    assert_eq!(pool.stats().allocated_bytes, 1003);
    // SAFETY: nothing uses the block after it is freed.
    assert!(unsafe { pool.free(a2) }.is_err());
    // SAFETY: nothing uses the block after it is freed.
    unsafe { pool.free(a3) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { pool.free(b) }.unwrap();
    assert_eq!(pool.stats().allocated_bytes, 0);
    assert_eq!(pool.stats().peak_bytes, 1203);
    pool.check().unwrap();
}

#[test]
fn check_reports_a_corrupt_free_stack_and_allocation_fails_cleanly() {
    let pool = pool(1 << 20);
    let a = pool.allocate(64).unwrap();
    let b = pool.allocate(64).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { pool.free(a) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { pool.free(b) }.unwrap();
    pool.check().unwrap();
    // Scribble over the link in the top free slot (a use after free).
    let link = pool
        .segment()
        .resolve(Offset::<u32>::from_raw(b.offset().raw()))
        .unwrap();
    // SAFETY: in bounds and aligned; nothing else uses the segment.
    unsafe { link.as_ptr().write(0x7fff_fff0) };
    assert!(matches!(pool.check(), Err(Error::CorruptHeader { .. })));
    // The top slot itself is still fine; the garbage behind it is refused.
    assert_eq!(pool.allocate(64).unwrap().offset(), b.offset());
    assert!(matches!(
        pool.allocate(64),
        Err(Error::CorruptHeader { .. })
    ));
}

#[test]
fn a_cycle_in_a_free_stack_is_caught_by_the_bounded_walk() {
    let pool = pool(1 << 20);
    let a = pool.allocate(64).unwrap();
    let b = pool.allocate(64).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { pool.free(a) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { pool.free(b) }.unwrap();
    // b (top) links to a; make a link back to b.
    let read = |offset: u64| {
        let ptr = pool
            .segment()
            .resolve(Offset::<u32>::from_raw(offset))
            .unwrap();
        // SAFETY: in bounds, aligned, unused by anyone else.
        unsafe { ptr.as_ptr().read() }
    };
    let index_a = read(b.offset().raw());
    let index_b = index_a + 1; // consecutive slots of one page
    let ptr = pool
        .segment()
        .resolve(Offset::<u32>::from_raw(a.offset().raw()))
        .unwrap();
    // SAFETY: as above.
    unsafe { ptr.as_ptr().write(index_b) };
    let error = pool.check().unwrap_err();
    assert!(matches!(error, Error::CorruptHeader { .. }), "{error}");
}

#[test]
fn attaching_checks_the_kind_and_the_slot_sizes() {
    let (options, _cleanup) = fresh_shm("pool-attach");
    let params = PoolParams::new(&[32, 512]).unwrap();
    let creator = PoolAllocator::create_with(&options.clone().size(1 << 20), &params).unwrap();
    let attacher = PoolAllocator::attach(&options).unwrap();
    assert_eq!(attacher.slot_sizes(), vec![32, 512]);
    assert!(PoolAllocator::attach_with(&options, &params).is_ok());
    assert!(matches!(
        PoolAllocator::attach_with(&options, &PoolParams::default()),
        Err(Error::WrongAllocatorParams { .. })
    ));
    assert!(matches!(
        shmkit::BumpAllocator::attach(&options),
        Err(Error::WrongAllocator { .. })
    ));
    // A block freed through one mapping is reused through the other.
    let block = creator.allocate(20).unwrap();
    write_tag(block, 1, 2, 20);
    assert_eq!(verify_tag(&attacher, block.offset().raw()), 1);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { attacher.free_offset(&Default::default(), block.offset().raw()) }.unwrap();
    assert_eq!(creator.stats().live_allocations, 0);
    assert_eq!(attacher.allocate(30).unwrap().offset(), block.offset());
    creator.check().unwrap();
}

#[test]
fn four_threads_allocate_tag_exchange_and_free() {
    const THREADS: u32 = 4;
    const OPS: u32 = 4000;
    let pool = PoolAllocator::create(&SegmentOptions::private().size(256 << 10).max_size(64 << 20))
        .unwrap();
    let mailbox = Mutex::new(Vec::<u64>::new());
    let foreign = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (pool, mailbox, foreign) = (&pool, &mailbox, &foreign);
            scope.spawn(move || {
                let mut rng = Lcg(u64::from(thread) * 7919 + 1);
                let mut mine: Vec<u64> = Vec::new();
                for seq in 0..OPS {
                    match rng.next() % 10 {
                        0..=4 => {
                            let size = 16 + (rng.next() % 4081) as usize;
                            let block = pool.allocate(size).unwrap();
                            write_tag(block, thread, seq, size);
                            mine.push(block.offset().raw());
                        }
                        5..=6 if !mine.is_empty() => {
                            let offset = mine.swap_remove(rng.next() as usize % mine.len());
                            assert_eq!(verify_tag(pool, offset), thread);
                            // SAFETY: nothing uses the block after it is freed.
                            unsafe { pool.free_offset(&Default::default(), offset) }.unwrap();
                        }
                        7 if !mine.is_empty() => {
                            let offset = mine.swap_remove(rng.next() as usize % mine.len());
                            mailbox.lock().unwrap().push(offset);
                        }
                        _ => {
                            let taken = mailbox.lock().unwrap().pop();
                            if let Some(offset) = taken {
                                if verify_tag(pool, offset) != thread {
                                    foreign.fetch_add(1, Ordering::Relaxed);
                                }
                                // SAFETY: nothing uses the block after it is freed.
                                unsafe { pool.free_offset(&Default::default(), offset) }.unwrap();
                            }
                        }
                    }
                }
                for offset in mine {
                    assert_eq!(verify_tag(pool, offset), thread);
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { pool.free_offset(&Default::default(), offset) }.unwrap();
                }
            });
        }
    });
    for offset in mailbox.into_inner().unwrap() {
        verify_tag(&pool, offset);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { pool.free_offset(&Default::default(), offset) }.unwrap();
    }
    assert!(
        foreign.load(Ordering::Relaxed) > 0,
        "no block changed threads"
    );
    let stats = pool.stats();
    assert_eq!((stats.allocated_bytes, stats.live_allocations), (0, 0));
    assert!(stats.peak_bytes > 0);
    assert!(pool.segment().size() > 256 << 10, "never grew");
    pool.check().unwrap();
}

const WORKERS: usize = 3;
const WORKER_OPS: u32 = 5000;
const MAILBOX: usize = 64;
/// Control words: arrived, cross-process frees, then the mailbox.
const CONTROL_WORDS: usize = 2 + MAILBOX;

fn control(pool: &PoolAllocator) -> &[AtomicU64] {
    let offset = pool
        .segment()
        .root::<AtomicU64>("control")
        .expect("published by the parent");
    let words = pool
        .segment()
        .resolve_array(offset, CONTROL_WORDS as u64)
        .unwrap();
    // SAFETY: resolved and aligned; atomics; the segment outlives the slice.
    unsafe { std::slice::from_raw_parts(words.as_ptr(), CONTROL_WORDS) }
}

#[test]
#[ignore = "child process of processes_share_one_pool"]
fn child_pool_worker() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let worker: u64 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    let pool = PoolAllocator::attach(&SegmentOptions::shm(name)).unwrap();
    let control = control(&pool);
    let (arrived, foreign, mailbox) = (&control[0], &control[1], &control[2..]);
    arrived.fetch_add(1, Ordering::AcqRel);
    let started = std::time::Instant::now();
    while arrived.load(Ordering::Acquire) < WORKERS as u64 {
        assert!(started.elapsed().as_secs() < 30, "the others never arrived");
        std::hint::spin_loop();
    }
    let pid = std::process::id();
    let ctx = Default::default();
    let mut rng = Lcg(worker * 104729 + 3);
    let mut mine: Vec<u64> = Vec::new();
    let (mut allocated, mut freed_foreign) = (0u64, 0u64);
    for seq in 0..WORKER_OPS {
        match rng.next() % 10 {
            0..=4 => {
                let size = 16 + (rng.next() % 4081) as usize;
                let block = pool.allocate(size).unwrap();
                write_tag(block, pid, seq, size);
                mine.push(block.offset().raw());
                allocated += 1;
            }
            5..=6 if !mine.is_empty() => {
                let offset = mine.swap_remove(rng.next() as usize % mine.len());
                assert_eq!(verify_tag(&pool, offset), pid);
                // SAFETY: nothing uses the block after it is freed.
                unsafe { pool.free_offset(&ctx, offset) }.unwrap();
            }
            7 if !mine.is_empty() => {
                // Post one of ours for another process to free.
                let at = rng.next() as usize % mine.len();
                let start = rng.next() as usize;
                let posted = (0..MAILBOX).any(|i| {
                    mailbox[(start + i) % MAILBOX]
                        .compare_exchange(0, mine[at], Ordering::AcqRel, Ordering::Relaxed)
                        .is_ok()
                });
                if posted {
                    mine.swap_remove(at);
                }
            }
            _ => {
                let start = rng.next() as usize;
                let taken = (0..MAILBOX)
                    .map(|i| mailbox[(start + i) % MAILBOX].swap(0, Ordering::AcqRel))
                    .find(|&offset| offset != 0);
                if let Some(offset) = taken {
                    if verify_tag(&pool, offset) != pid {
                        freed_foreign += 1;
                    }
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { pool.free_offset(&ctx, offset) }.unwrap();
                }
            }
        }
    }
    for offset in mine {
        assert_eq!(verify_tag(&pool, offset), pid);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { pool.free_offset(&ctx, offset) }.unwrap();
    }
    foreign.fetch_add(freed_foreign, Ordering::AcqRel);
    println!("pool-worker {worker} allocated {allocated} freed-foreign {freed_foreign}");
}

#[test]
fn processes_share_one_pool() {
    let (options, _cleanup) = fresh_shm("pool-multi");
    let parent =
        PoolAllocator::create(&options.clone().size(256 << 10).max_size(64 << 20)).unwrap();
    let control_block = parent.allocate(CONTROL_WORDS * 8).unwrap();
    // SAFETY: a fresh block of that many bytes.
    unsafe { std::ptr::write_bytes(control_block.as_ptr(), 0, CONTROL_WORDS * 8) };
    parent
        .segment()
        .set_root("control", control_block.offset())
        .unwrap();
    let children = spawn_workers("child_pool_worker", &shm_name(&options), WORKERS);
    for (worker, child) in children.into_iter().enumerate() {
        let stdout = worker_stdout(worker, child);
        assert!(
            stdout.contains(&format!("pool-worker {worker} allocated")),
            "{stdout}"
        );
    }
    // What is left in the mailbox was posted and never taken: the parent
    // (another mapping, another process) checks and frees it.
    let control = control(&parent);
    for slot in &control[2..] {
        let offset = slot.swap(0, Ordering::AcqRel);
        if offset != 0 {
            verify_tag(&parent, offset);
            // SAFETY: nothing uses the block after it is freed.
            unsafe { parent.free_offset(&Default::default(), offset) }.unwrap();
        }
    }
    assert!(
        control[1].load(Ordering::Acquire) > 0,
        "no block was freed by another process"
    );
    assert!(
        parent.segment().size() > 256 << 10,
        "the workers never grew the segment"
    );
    // SAFETY: nothing uses the block after it is freed.
    unsafe { parent.free(control_block) }.unwrap();
    let stats = parent.stats();
    assert_eq!((stats.allocated_bytes, stats.live_allocations), (0, 0));
    parent.check().unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Allocate { size: usize, align_shift: u32 },
    Free { pick: usize },
    Reallocate { pick: usize, size: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..5000, 0u32..13).prop_map(|(size, align_shift)| Op::Allocate { size, align_shift }),
        2 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        2 => (any::<usize>(), 0usize..5000).prop_map(|(pick, size)| Op::Reallocate { pick, size }),
    ]
}

/// A live block in the model: offset, requested size, fill byte.
struct Live {
    offset: u64,
    size: usize,
    fill: u8,
}

fn fill(pool: &PoolAllocator, block: &Live) {
    let ptr = pool.full_ptr(block.offset).unwrap();
    // SAFETY: the block is live and at least `size` bytes long.
    unsafe { std::ptr::write_bytes(ptr.as_ptr(), block.fill, block.size) };
}

fn holds(pool: &PoolAllocator, block: &Live, len: usize) -> bool {
    let ptr = pool.full_ptr(block.offset).unwrap();
    // SAFETY: as above.
    let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len) };
    bytes.iter().all(|&b| b == block.fill)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_match_a_model(ops in prop::collection::vec(op(), 1..60)) {
        let pool = pool(2 << 20);
        let mut live: Vec<Live> = Vec::new();
        let (mut bytes, mut peak) = (0u64, 0u64);
        for (step, op) in ops.into_iter().enumerate() {
            let fill_byte = (step as u8).wrapping_mul(37) | 1;
            match op {
                Op::Allocate { size, align_shift } => {
                    let align = 1usize << align_shift;
                    match pool.allocate_aligned(size, align) {
                        Ok(block) => {
                            prop_assert!(size <= 4096);
                            prop_assert_eq!(block.offset().raw() % align as u64, 0);
                            let block = Live { offset: block.offset().raw(), size: size.max(1), fill: fill_byte };
                            fill(&pool, &block);
                            bytes += block.size as u64;
                            peak = peak.max(bytes);
                            live.push(block);
                        }
                        Err(Error::OutOfMemory { .. }) => prop_assert!(size > 4096),
                        Err(other) => prop_assert!(false, "allocate {size} @ {align}: {other}"),
                    }
                }
                Op::Free { pick } if !live.is_empty() => {
                    let block = live.swap_remove(pick % live.len());
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { pool.free_offset(&Default::default(), block.offset) }.unwrap();
                    // SAFETY: a second free of a freed block, which is refused.
                    let again = unsafe { pool.free_offset(&Default::default(), block.offset) };
                    prop_assert!(again.is_err());
                    bytes -= block.size as u64;
                }
                Op::Reallocate { pick, size } if !live.is_empty() => {
                    let at = pick % live.len();
                    let old = &live[at];
                    let usable = pool.usable_size(old.offset).unwrap();
                    let ptr = pool.full_ptr(old.offset).unwrap();
                    let new_size = size.max(1);
                    // SAFETY: nothing uses the block after it is freed.
                    match unsafe { pool.reallocate(ptr, size) } {
                        Ok(moved) => {
                            prop_assert!(size <= 4096);
                            let kept = old.size.min(new_size);
                            let block = Live { offset: moved.offset().raw(), size: kept, fill: old.fill };
                            prop_assert!(holds(&pool, &block, kept), "contents lost");
                            if new_size <= usable {
                                prop_assert_eq!(moved.offset().raw(), old.offset);
                                peak = peak.max(bytes - old.size as u64 + new_size as u64);
                            } else {
                                peak = peak.max(bytes + new_size as u64);
                            }
                            bytes = bytes - old.size as u64 + new_size as u64;
                            let block = Live { offset: block.offset, size: new_size, fill: fill_byte };
                            fill(&pool, &block);
                            live[at] = block;
                        }
                        Err(Error::OutOfMemory { .. }) => {
                            prop_assert!(size > 4096);
                            prop_assert!(holds(&pool, old, old.size), "a failed resize touched the block");
                        }
                        Err(other) => prop_assert!(false, "reallocate to {size}: {other}"),
                    }
                }
                _ => {}
            }
            let stats = pool.stats();
            prop_assert_eq!(stats.allocated_bytes, bytes);
            prop_assert_eq!(stats.live_allocations, live.len() as u64);
            prop_assert_eq!(stats.peak_bytes, peak);
            pool.check().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let mut spans: Vec<(u64, u64)> = live
                .iter()
                .map(|b| (b.offset, pool.usable_size(b.offset).unwrap() as u64))
                .collect();
            assert_disjoint(&mut spans);
            for block in &live {
                prop_assert!(holds(&pool, block, block.size), "block {} overwritten", block.offset);
            }
        }
    }
}
