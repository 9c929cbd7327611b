//! The free-list (TLSF) allocator: reuse, coalescing, validation of frees,
//! alignment, growth, in-place reallocation, threads, real processes, a
//! model-based property test, and recovery from a lock owner that died in
//! the middle of an operation.

mod common;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use common::{
    assert_disjoint, child_env, dead_pid, fresh_shm, ranges_from_threads, shm_name, spawn_workers,
    worker_stdout, Rng,
};
use proptest::prelude::*;
use shmkit::{
    AllocStats, Error, FreeListAllocator, FullPtr, MemContext, Offset, SegmentAllocator,
    SegmentOptions, ShmAllocator,
};

/// Bytes of a block header (the layout documented in `alloc/free_list.rs`).
const HEADER: u64 = 32;
/// A request whose block is too large for the thread cache (512 bytes with
/// the header), so its free takes the lock.
const BIG: usize = 600;
/// Where the segment header records the allocator state's offset.
const STATE_OFFSET_FIELD: u64 = 104;

fn heap(size: u64) -> FreeListAllocator {
    FreeListAllocator::create(&SegmentOptions::private().size(size)).unwrap()
}

/// A word of the segment, for forging states the allocator must survive.
fn word(heap: &FreeListAllocator, offset: u64) -> &AtomicU64 {
    let ptr = heap
        .segment()
        .resolve(Offset::<AtomicU64>::from_raw(offset))
        .unwrap();
    // SAFETY: resolved (bounds, alignment); an atomic; lives with the heap.
    unsafe { ptr.as_ref() }
}

fn lock_word(heap: &FreeListAllocator) -> &AtomicU64 {
    let state = word(heap, STATE_OFFSET_FIELD).load(Ordering::Relaxed);
    word(heap, state)
}

fn fill(block: FullPtr<u8>, len: usize, byte: u8) {
    // SAFETY: the block is live and at least `len` bytes long.
    unsafe { std::ptr::write_bytes(block.as_ptr(), byte, len) };
}

fn holds(block: FullPtr<u8>, len: usize, byte: u8) -> bool {
    // SAFETY: as in `fill`.
    unsafe { std::slice::from_raw_parts(block.as_ptr(), len) }
        .iter()
        .all(|&b| b == byte)
}

/// Writes a tag (pid, worker, sequence, length) and a fill derived from it.
fn tag(block: FullPtr<u8>, len: usize, worker: u32, seq: u32) {
    assert!(len >= 16);
    let words = [std::process::id(), worker, seq, len as u32];
    // SAFETY: the block is ours and `len` >= 16 bytes long.
    unsafe {
        std::ptr::copy_nonoverlapping(words.as_ptr().cast::<u8>(), block.as_ptr(), 16);
        std::ptr::write_bytes(block.as_ptr().add(16), tag_byte(&words), len - 16);
    }
}

fn tag_byte(words: &[u32; 4]) -> u8 {
    (words[0] ^ words[1].wrapping_mul(7) ^ words[2].wrapping_mul(31)) as u8
}

/// Checks a tagged block and returns its (pid, worker, sequence, length).
fn verify_tag(block: FullPtr<u8>) -> [u32; 4] {
    let mut words = [0u32; 4];
    // SAFETY: the block is live, tagged, at least 16 bytes long.
    unsafe { std::ptr::copy_nonoverlapping(block.as_ptr(), words.as_mut_ptr().cast::<u8>(), 16) };
    let len = words[3] as usize;
    // SAFETY: the tag records the block's length.
    let rest = unsafe { std::slice::from_raw_parts(block.as_ptr().add(16), len - 16) };
    let byte = tag_byte(&words);
    assert!(
        rest.iter().all(|&b| b == byte),
        "block {} tagged {words:?} was overwritten",
        block.offset().raw()
    );
    words
}

#[test]
fn freed_blocks_are_reused_and_coalesced() {
    let heap = heap(1 << 20);
    let fresh = heap.stats();
    assert_eq!(fresh.free_bytes, fresh.capacity - HEADER);
    assert_eq!(fresh.largest_free_block, fresh.free_bytes);

    let a = heap.allocate(100).unwrap();
    let b = heap.allocate(100).unwrap();
    let c = heap.allocate(100).unwrap();
    assert!(a.offset().raw() < b.offset().raw() && b.offset().raw() < c.offset().raw());
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(b) }.unwrap();
    // The hole is reused for a request of its size (this thread's cache
    // holds it).
    let b2 = heap.allocate(100).unwrap();
    assert_eq!(b2.offset(), b.offset());
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(b2) }.unwrap();
    // Freeing the neighbours merges everything back into one block.
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(a) }.unwrap();
    assert!(heap.stats().fragmentation() > 0.0);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(c) }.unwrap();
    heap.check().unwrap();
    let end = heap.stats();
    assert_eq!(end.free_bytes, fresh.free_bytes);
    assert_eq!(end.largest_free_block, fresh.largest_free_block);
    assert_eq!(end.fragmentation(), 0.0);
    assert_eq!(end.live_allocations, 0);
    assert_eq!(end.allocated_bytes, 0);
    assert_eq!(end.peak_bytes, 300);
}

#[test]
fn stats_follow_the_structure() {
    let heap = heap(1 << 20);
    let blocks: Vec<_> = (0..10).map(|i| heap.allocate(100 + i).unwrap()).collect();
    let stats = heap.stats();
    assert_eq!(stats.allocated_bytes, (100..110).sum::<u64>());
    assert_eq!(stats.live_allocations, 10);
    // Free every other block: five 112-byte holes and the tail.
    for block in blocks.iter().step_by(2) {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(*block) }.unwrap();
    }
    let stats = heap.stats();
    assert_eq!(stats.live_allocations, 5);
    let used: u64 = blocks
        .iter()
        .skip(1)
        .step_by(2)
        .map(|b| heap.usable_size(b.offset().raw()).unwrap() as u64 + HEADER)
        .sum();
    // Five holes and the tail, each with its own header.
    assert_eq!(stats.free_bytes, stats.capacity - used - 6 * HEADER);
    assert!(stats.largest_free_block < stats.free_bytes);
    assert!(stats.fragmentation() > 0.0);
    // The largest free block is exactly what a single request can get.
    let largest = heap.allocate(stats.largest_free_block as usize).unwrap();
    assert!(matches!(
        heap.allocate(stats.largest_free_block as usize),
        Err(Error::OutOfMemory { .. })
    ));
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(largest) }.unwrap();
    heap.check().unwrap();
}

#[test]
fn bogus_frees_are_refused_and_change_nothing() {
    let heap = heap(1 << 20);
    let live = heap.allocate(256).unwrap();
    let other = heap.allocate(64).unwrap();
    let freed = heap.allocate(64).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(freed) }.unwrap();
    // A forged header inside a live block: a copy of a real one.
    // SAFETY: both are live blocks; 32 bytes of `live` are overwritten.
    unsafe {
        std::ptr::copy_nonoverlapping(
            other.as_ptr().sub(HEADER as usize),
            live.as_ptr().add(64),
            HEADER as usize,
        )
    };
    let before = heap.stats();
    let raw = live.offset().raw();
    let size = heap.segment().size();
    let ctx = MemContext::default();
    for offset in [
        0,
        1,
        raw + 8,
        raw - 1,
        raw + 16,
        raw + 32,
        raw + 64 + HEADER, // behind the forged header
        raw + 1024,        // free space past every block
        freed.offset().raw(),
        heap.segment().data_offset(),
        size,
        size + 4096,
        u64::MAX - 15,
    ] {
        // SAFETY: nothing uses the block after it is freed.
        match unsafe { heap.free_offset(&ctx, offset) } {
            Err(Error::InvalidFree { offset: reported }) => assert_eq!(reported, offset),
            other => panic!("free of {offset} gave {other:?}"),
        }
        assert_eq!(heap.stats(), before, "after the free of {offset}");
        heap.check().unwrap();
    }
    assert!(heap.usable_size(raw + 16).is_err());

    // A forged chain inside the live block: its neighbours agree with it,
    // only the seal (which binds the offset and size) gives it away.
    for (at, words) in [
        (raw, [64, raw - HEADER, 0, 0]),
        (raw + 64, [64, raw, 0, 10]),
        (raw + 128, [64, raw + 64, 0, 0]),
    ] {
        for (i, value) in words.into_iter().enumerate() {
            word(&heap, at + 8 * i as u64).store(value, Ordering::Relaxed);
        }
    }
    let forged = raw + 64 + HEADER;
    assert!(matches!(
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, forged) },
        Err(Error::InvalidFree { offset }) if offset == forged
    ));
    assert_eq!(heap.stats(), before);
    heap.check().unwrap();
    // The real blocks still free normally.
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(live) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(other) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    assert!(matches!(
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(other) },
        Err(Error::InvalidFree { .. })
    ));
    heap.check().unwrap();
    assert_eq!(heap.stats().live_allocations, 0);
}

#[test]
fn every_power_of_two_alignment_up_to_the_page() {
    let heap = heap(4 << 20);
    let mut blocks = Vec::new();
    for shift in 0..=12 {
        let align = 1usize << shift;
        for size in [0usize, 1, 24, 100, 5000] {
            let block = heap.allocate_aligned(size, align).unwrap();
            assert_eq!(
                block.offset().raw() % align as u64,
                0,
                "offset, align {align}"
            );
            assert_eq!(block.as_ptr() as usize % align, 0, "address, align {align}");
            assert!(heap.usable_size(block.offset().raw()).unwrap() >= size.max(1));
            fill(block, size, shift as u8);
            blocks.push((block, size, shift as u8));
        }
        heap.check().unwrap();
    }
    let mut ranges: Vec<_> = blocks
        .iter()
        .map(|(b, s, _)| (b.offset().raw(), (*s).max(1) as u64))
        .collect();
    assert_disjoint(&mut ranges);
    for (block, size, byte) in blocks {
        assert!(holds(block, size, byte));
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(block) }.unwrap();
    }
    heap.check().unwrap();
    assert_eq!(heap.stats().fragmentation(), 0.0);
    for align in [3usize, 24, 8192] {
        assert!(matches!(
            heap.allocate_aligned(8, align),
            Err(Error::InvalidAlignment { .. })
        ));
    }
}

#[test]
fn out_of_memory_changes_nothing_and_growth_extends_the_heap() {
    let fixed = heap(128 << 10);
    let keep = fixed.allocate(1000).unwrap();
    let before = fixed.stats();
    match fixed.allocate(1 << 20) {
        Err(Error::OutOfMemory {
            requested,
            available,
        }) => {
            assert_eq!(requested, 1 << 20);
            assert_eq!(available, before.largest_free_block);
        }
        other => panic!("expected OutOfMemory, got {other:?}"),
    }
    assert_eq!(fixed.stats(), before);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { fixed.free(keep) }.unwrap();

    let options = SegmentOptions::private().size(64 << 10).max_size(8 << 20);
    let growing = FreeListAllocator::create(&options).unwrap();
    let initial = growing.segment().size();
    let capacity = growing.stats().capacity;
    let mut blocks = Vec::new();
    for i in 0..200 {
        let block = growing.allocate(10_000).unwrap();
        fill(block, 10_000, i as u8);
        blocks.push(block);
    }
    assert!(growing.segment().size() > initial);
    // The capacity counted the room to grow from the start.
    assert_eq!(growing.stats().capacity, capacity);
    growing.check().unwrap();
    // One request larger than the whole initial segment.
    let big = growing.allocate(1 << 20).unwrap();
    growing.check().unwrap();
    for (i, block) in blocks.iter().enumerate() {
        assert!(holds(*block, 10_000, i as u8));
    }
    // SAFETY: nothing uses the block after it is freed.
    unsafe { growing.free(big) }.unwrap();
    for block in blocks {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { growing.free(block) }.unwrap();
    }
    growing.check().unwrap();
    let stats = growing.stats();
    assert_eq!(stats.free_bytes, stats.capacity - HEADER, "one block again");
    // Past the maximum it is OutOfMemory, and nothing changed.
    let before = growing.stats();
    assert!(matches!(
        growing.allocate(16 << 20),
        Err(Error::OutOfMemory { .. })
    ));
    assert_eq!(growing.stats(), before);
}

#[test]
fn reallocation_grows_and_shrinks_in_place_when_it_can() {
    let heap = heap(1 << 20);
    // Too large for the thread cache, whose blocks come in chunks (a small
    // block's neighbours are then the cached rest of its chunk).
    let a = heap.allocate(BIG).unwrap();
    fill(a, 100, 0xa1);
    // The rest of the heap is free after `a`: growing stays in place.
    // SAFETY: nothing uses the block after it is freed.
    let grown = unsafe { heap.reallocate(a, 5000) }.unwrap();
    assert_eq!(grown.offset(), a.offset());
    assert!(holds(grown, 100, 0xa1));
    fill(grown, 5000, 0xa2);
    // Shrinking stays in place and gives the tail back.
    let free_before = heap.stats().free_bytes;
    // SAFETY: nothing uses the block after it is freed.
    let shrunk = unsafe { heap.reallocate(grown, 200) }.unwrap();
    assert_eq!(shrunk.offset(), a.offset());
    assert!(holds(shrunk, 200, 0xa2));
    assert!(heap.stats().free_bytes > free_before);
    assert_eq!(heap.stats().allocated_bytes, 200);
    // A live neighbour forces a move, contents intact.
    let wall = heap.allocate(64).unwrap();
    let usable = heap.usable_size(shrunk.offset().raw()).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    let moved = unsafe { heap.reallocate(shrunk, usable + 1000) }.unwrap();
    assert_ne!(moved.offset(), shrunk.offset());
    assert!(holds(moved, 200, 0xa2));
    // SAFETY: nothing uses the block after it is freed.
    assert!(matches!(
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(shrunk) },
        Err(Error::InvalidFree { .. })
    ));
    // Growing into a freed neighbour.
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(wall) }.unwrap();
    let stats = heap.stats();
    assert_eq!(stats.allocated_bytes, usable as u64 + 1000);
    assert_eq!(stats.live_allocations, 1);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(moved) }.unwrap();
    heap.check().unwrap();
}

#[test]
fn four_threads_allocate_tag_verify_and_free() {
    let heap =
        FreeListAllocator::create(&SegmentOptions::private().size(1 << 20).max_size(32 << 20))
            .unwrap();
    let exchange = Mutex::new(Vec::<u64>::new());
    let foreign = AtomicU64::new(0);
    let mut ranges = ranges_from_threads(4, |thread| {
        let mut rng = Rng(0x9e37_79b9 + thread * 7919);
        let mut mine: Vec<FullPtr<u8>> = Vec::new();
        for seq in 0..3000u32 {
            match rng.below(8) {
                0..=3 => {
                    let len = 16 + rng.below(2000) as usize;
                    let align = [8usize, 16, 64, 256][rng.below(4) as usize];
                    let block = heap.allocate_aligned(len, align).unwrap();
                    tag(block, len, thread as u32, seq);
                    mine.push(block);
                }
                4 | 5 if !mine.is_empty() => {
                    let block = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                    verify_tag(block);
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { heap.free(block) }.unwrap();
                }
                6 if !mine.is_empty() => {
                    let block = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                    verify_tag(block);
                    exchange.lock().unwrap().push(block.offset().raw());
                }
                _ => {
                    let taken = exchange.lock().unwrap().pop();
                    if let Some(offset) = taken {
                        let block = heap.full_ptr(offset).unwrap();
                        if verify_tag(block)[1] != thread as u32 {
                            foreign.fetch_add(1, Ordering::Relaxed);
                        }
                        // SAFETY: nothing uses the block after it is freed.
                        unsafe { heap.free(block) }.unwrap();
                    }
                }
            }
        }
        mine.iter()
            .map(|block| {
                let words = verify_tag(*block);
                (block.offset().raw(), u64::from(words[3]))
            })
            .collect()
    });
    assert_disjoint(&mut ranges);
    assert!(foreign.load(Ordering::Relaxed) > 0);
    heap.check().unwrap();
    let live = ranges.len() as u64 + exchange.lock().unwrap().len() as u64;
    assert_eq!(heap.stats().live_allocations, live);
    for (offset, _) in ranges {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&MemContext::default(), offset) }.unwrap();
    }
    for offset in exchange.into_inner().unwrap() {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&MemContext::default(), offset) }.unwrap();
    }
    heap.check().unwrap();
    assert_eq!(heap.stats().allocated_bytes, 0);
}

const WORKERS: u32 = 3;
const MAILBOX: usize = 32;
const STEPS: u32 = 4000;

fn shared<'a, T>(heap: &'a FreeListAllocator, name: &str) -> &'a T {
    let offset = heap
        .segment()
        .root::<T>(name)
        .expect("published by the parent");
    let ptr = heap.segment().resolve(offset).unwrap();
    // SAFETY: resolved (bounds, alignment); atomics only; the mapping lives
    // as long as `heap`.
    unsafe { ptr.as_ref() }
}

#[test]
#[ignore = "child process of processes_share_one_free_list"]
fn child_free_list_worker() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let worker: u32 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    let heap = FreeListAllocator::attach(&SegmentOptions::shm(name)).unwrap();
    let arrived: &AtomicU32 = shared(&heap, "arrived");
    let mailbox: &[AtomicU64; MAILBOX] = shared(&heap, "mailbox");
    arrived.fetch_add(1, Ordering::AcqRel);
    let started = std::time::Instant::now();
    while arrived.load(Ordering::Acquire) < WORKERS {
        assert!(started.elapsed().as_secs() < 30, "the others never arrived");
        std::hint::spin_loop();
    }
    let mut rng = Rng(0x2545_f491_4f6c_dd1d ^ u64::from(std::process::id()));
    let mut mine: Vec<FullPtr<u8>> = Vec::new();
    let (mut allocated, mut foreign) = (0u64, 0u64);
    for seq in 0..STEPS {
        match rng.below(10) {
            0..=3 if mine.len() < 100 => {
                let len = 16 + rng.below(3000) as usize;
                let align = [8usize, 16, 128, 4096][rng.below(4) as usize];
                let block = heap.allocate_aligned(len, align).unwrap();
                assert_eq!(block.offset().raw() % align as u64, 0);
                tag(block, len, worker, seq);
                mine.push(block);
                allocated += 1;
            }
            4 if !mine.is_empty() => {
                // Reallocate: the contents survive, then retag.
                let index = rng.below(mine.len() as u64) as usize;
                let words = verify_tag(mine[index]);
                let len = 16 + rng.below(4000) as usize;
                // SAFETY: nothing uses the block after it is freed.
                let moved = unsafe { heap.reallocate(mine[index], len) }.unwrap();
                let kept = (words[3] as usize).min(len);
                let byte = tag_byte(&words);
                // SAFETY: the block is ours, at least `len` bytes long.
                let bytes = unsafe { std::slice::from_raw_parts(moved.as_ptr(), kept) };
                assert!(bytes[16..].iter().all(|&b| b == byte));
                tag(moved, len, worker, seq);
                mine[index] = moved;
            }
            5 | 6 if !mine.is_empty() => {
                let block = mine.swap_remove(rng.below(mine.len() as u64) as usize);
                verify_tag(block);
                // SAFETY: nothing uses the block after it is freed.
                unsafe { heap.free(block) }.unwrap();
            }
            7 if !mine.is_empty() => {
                // Hand a block to whoever takes it from the mailbox.
                let slot = &mailbox[rng.below(MAILBOX as u64) as usize];
                let offset = mine[mine.len() - 1].offset().raw();
                if slot
                    .compare_exchange(0, offset, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    mine.pop();
                }
            }
            _ => {
                let slot = &mailbox[rng.below(MAILBOX as u64) as usize];
                let offset = slot.swap(0, Ordering::AcqRel);
                if offset != 0 {
                    let block = heap.full_ptr(offset).unwrap();
                    if verify_tag(block)[0] != std::process::id() {
                        foreign += 1;
                    }
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { heap.free(block) }.unwrap();
                }
            }
        }
    }
    for block in mine {
        verify_tag(block);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(block) }.unwrap();
    }
    heap.check().unwrap();
    writeln!(std::io::stdout(), "result {allocated} {foreign}").unwrap();
}

#[test]
fn processes_share_one_free_list() {
    let (options, _cleanup) = fresh_shm("freelist");
    let parent =
        FreeListAllocator::create(&options.clone().size(256 << 10).max_size(64 << 20)).unwrap();
    let initial = parent.segment().size();
    let arrived = parent.new_obj(AtomicU32::new(0)).unwrap();
    parent
        .segment()
        .set_root("arrived", arrived.offset())
        .unwrap();
    let mailbox = parent
        .new_obj::<[AtomicU64; MAILBOX]>(std::array::from_fn(|_| AtomicU64::new(0)))
        .unwrap();
    parent
        .segment()
        .set_root("mailbox", mailbox.offset())
        .unwrap();
    let children = spawn_workers(
        "child_free_list_worker",
        &shm_name(&options),
        WORKERS as usize,
    );
    let mut foreign = 0;
    for (worker, child) in children.into_iter().enumerate() {
        let stdout = worker_stdout(worker, child);
        let line = stdout
            .lines()
            .find_map(|line| line.find("result ").map(|at| &line[at + 7..]))
            .expect("a result line");
        let fields: Vec<u64> = line.split(' ').map(|f| f.parse().unwrap()).collect();
        assert!(fields[0] > 100, "worker {worker} allocated {}", fields[0]);
        foreign += fields[1];
    }
    assert!(foreign > 0, "no process freed another's block");
    assert!(
        parent.segment().size() > initial,
        "the workers never grew the segment"
    );
    // What is left in the mailbox was allocated by the workers: check, free.
    // SAFETY: the workers have exited; the parent owns the mailbox.
    for slot in unsafe { mailbox.local().as_ref() } {
        let offset = slot.swap(0, Ordering::AcqRel);
        if offset != 0 {
            let block = parent.full_ptr(offset).unwrap();
            assert_ne!(verify_tag(block)[0], std::process::id());
            // SAFETY: nothing uses the block after it is freed.
            unsafe { parent.free(block) }.unwrap();
        }
    }
    // SAFETY: both objects came from `new_obj` and are not used again.
    unsafe {
        parent.del_obj(mailbox).unwrap();
        parent.del_obj(arrived).unwrap();
    }
    parent.check().unwrap();
    let stats = parent.stats();
    assert_eq!(stats.live_allocations, 0);
    assert_eq!(stats.allocated_bytes, 0);
    assert_eq!(stats.free_bytes, stats.capacity - HEADER);
}

#[test]
fn a_dead_owner_mid_free_is_repaired_by_the_next_operation() {
    let heap = heap(1 << 20);
    // Live blocks, tagged; holes between them.
    let blocks: Vec<_> = (0..12u32)
        .map(|i| {
            let block = heap.allocate(200 + i as usize * 16).unwrap();
            tag(block, 200 + i as usize * 16, 0, i);
            block
        })
        .collect();
    for block in blocks.iter().skip(1).step_by(3) {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(*block) }.unwrap();
    }
    let live: Vec<_> = blocks
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 3 != 1)
        .map(|(_, b)| *b)
        .collect();
    heap.check().unwrap();
    let before = heap.stats();
    assert_eq!(heap.repairs(), 0);

    // A process was freeing `victim`: it committed the FREE bit in the size
    // word and died before the seal, the neighbours and the lists.
    let victim = live[3];
    let victim_len = 200 + 5 * 16;
    assert_eq!(victim, blocks[5]);
    let size_word = word(&heap, victim.offset().raw() - HEADER);
    size_word.fetch_or(1, Ordering::Relaxed);
    // It had also half-unlinked a free block: a list link points nowhere.
    let hole = blocks[4].offset().raw();
    word(&heap, hole).store(0xdead_bee0, Ordering::Relaxed);
    assert!(matches!(heap.check(), Err(Error::CorruptHeader { .. })));
    // And it held the lock.
    lock_word(&heap).store(u64::from(dead_pid()), Ordering::Relaxed);

    let fresh = heap.allocate(100).unwrap();
    assert_eq!(heap.repairs(), 1);
    heap.check().unwrap();
    let stats = heap.stats();
    // The victim's free is complete: one live block fewer.
    assert_eq!(stats.live_allocations, before.live_allocations);
    assert_eq!(
        stats.allocated_bytes,
        before.allocated_bytes - victim_len + 100
    );
    // SAFETY: nothing uses the block after it is freed.
    assert!(matches!(
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(victim) },
        Err(Error::InvalidFree { .. })
    ));

    // Allocate until full: nothing overlaps the survivors, whose tags hold.
    let survivors: Vec<_> = live
        .iter()
        .filter(|b| b.offset() != victim.offset())
        .collect();
    let mut ranges: Vec<_> = survivors
        .iter()
        .map(|b| (b.offset().raw(), u64::from(verify_tag(**b)[3])))
        .collect();
    ranges.push((fresh.offset().raw(), 100));
    let mut extra = Vec::new();
    loop {
        match heap.allocate(3000) {
            Ok(block) => {
                fill(block, 3000, 0x5a);
                ranges.push((block.offset().raw(), 3000));
                extra.push(block);
            }
            Err(Error::OutOfMemory { .. }) => break,
            Err(other) => panic!("{other}"),
        }
    }
    assert_disjoint(&mut ranges);
    for block in survivors {
        verify_tag(*block);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(*block) }.unwrap();
    }
    for block in extra.into_iter().chain([fresh]) {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(block) }.unwrap();
    }
    heap.check().unwrap();
    let stats = heap.stats();
    assert_eq!(stats.live_allocations, 0);
    assert_eq!(stats.free_bytes, stats.capacity - HEADER);
}

#[test]
fn a_dead_owner_mid_split_is_repaired() {
    let heap = heap(256 << 10);
    let a = heap.allocate(100).unwrap();
    let b = heap.allocate(5000).unwrap();
    let c = heap.allocate(100).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(b) }.unwrap();
    let before = heap.stats();
    let block_b = b.offset().raw() - HEADER;
    let size_b = word(&heap, block_b).load(Ordering::Relaxed) & !15;
    // The dying process was splitting b: it wrote the remainder's header
    // inside b and pointed c back at it, but never shrank b.
    let rest = block_b + 1024;
    word(&heap, rest).store((size_b - 1024) | 1, Ordering::Relaxed);
    word(&heap, rest + 8).store(block_b, Ordering::Relaxed);
    word(&heap, c.offset().raw() - HEADER + 8).store(rest, Ordering::Relaxed);
    // It had begun to unlink b: its back link points nowhere.
    word(&heap, b.offset().raw() + 8).store(0x1230, Ordering::Relaxed);
    lock_word(&heap).store(u64::from(dead_pid()), Ordering::Relaxed);

    heap.check().unwrap(); // the lock recovers first, then the check runs
    assert_eq!(heap.repairs(), 1);
    // b is whole, free and filed again: the same free space, the same pieces.
    assert_eq!(heap.stats(), before);
    let again = heap.allocate(5000).unwrap();
    for block in [a, again, c] {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(block) }.unwrap();
    }
    heap.check().unwrap();
}

#[test]
fn a_broken_chain_is_reported_then_quarantined() {
    let heap = heap(256 << 10);
    // Blocks too large for the thread cache: their frees take the lock and
    // look at the neighbours.
    let a = heap.allocate(BIG).unwrap();
    let b = heap.allocate(BIG).unwrap();
    fill(b, BIG, 0xbb);
    let live_before = heap.stats().live_allocations;
    // A size word that no write order produces (a stray write did it).
    let b_block = b.offset().raw() - HEADER;
    word(&heap, b_block).store(40, Ordering::Relaxed);
    assert!(matches!(heap.check(), Err(Error::CorruptHeader { .. })));
    // Freeing a, b's neighbour, meets the damage: reported, nothing freed...
    // SAFETY: nothing uses the block after it is freed.
    assert!(matches!(
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(a) },
        Err(Error::CorruptHeader { .. })
    ));
    // ...and the rebuild behind it fenced b's bytes off: the rest works.
    heap.check().unwrap();
    assert_eq!(heap.stats().live_allocations, live_before - 1);
    // SAFETY: nothing uses the block after it is freed.
    assert!(matches!(
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(b) },
        Err(Error::InvalidFree { .. })
    ));
    assert!(holds(b, BIG, 0xbb), "quarantined bytes are left alone");
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(a) }.unwrap();
    let mut ranges = vec![(b_block, BIG as u64 + HEADER)];
    let mut fresh = Vec::new();
    while let Ok(block) = heap.allocate(BIG) {
        ranges.push((block.offset().raw(), BIG as u64));
        fresh.push(block);
    }
    assert_disjoint(&mut ranges);
    for block in fresh {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(block) }.unwrap();
    }
    heap.check().unwrap();
    assert_eq!(heap.stats().live_allocations, 0);
    // A later recovery finds nothing more to fence off.
    // SAFETY: no other thread of this process uses the allocator meanwhile.
    assert_eq!(unsafe { heap.recover() }.unwrap().bytes_quarantined, 0);
}

#[test]
fn a_stray_write_across_headers_loses_only_the_bytes_it_hit() {
    // What a view kept past its block's free does: user bytes land on the
    // payload of a free block and the headers of the live blocks after it.
    let heap = heap(1 << 20);
    let blocks: Vec<_> = (0..16u32)
        .map(|i| {
            let block = heap.allocate(200).unwrap();
            tag(block, 200, 0, i);
            block
        })
        .collect();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(blocks[5]) }.unwrap();
    let stale = blocks[5];
    let hit_end = stale.offset().raw() + 600;
    fill(stale, 600, 0x41);
    // SAFETY: no other thread of this process uses the allocator meanwhile.
    let report = unsafe { heap.recover() }.unwrap();
    // The write destroyed the headers of blocks 6 and 7 (240 bytes each).
    assert_eq!(report.bytes_quarantined, 480, "{report}");
    heap.check().unwrap();
    // Blocks whose header the write hit are fenced off, the others are
    // intact and freeable.
    let hit = |b: &FullPtr<u8>| {
        let header = b.offset().raw() - HEADER;
        header >= stale.offset().raw() && header < hit_end
    };
    let (mut fenced_start, mut fenced_end) = (u64::MAX, 0);
    let mut ranges = Vec::new();
    for (i, block) in blocks.iter().enumerate().filter(|(i, _)| *i != 5) {
        if hit(block) {
            assert!(
                // SAFETY: nothing uses the block after it is freed.
                matches!(unsafe { heap.free(*block) }, Err(Error::InvalidFree { .. })),
                "block {i}"
            );
            fenced_start = fenced_start.min(block.offset().raw() - HEADER);
            fenced_end = fenced_end.max(block.offset().raw() + 200);
        } else {
            verify_tag(*block);
            ranges.push((block.offset().raw(), 200));
        }
    }
    ranges.push((fenced_start, fenced_end - fenced_start));
    // Everything allocatable now lies outside what was hit and what lives.
    let mut fresh = Vec::new();
    while let Ok(block) = heap.allocate(300) {
        fill(block, 300, 0x5a);
        ranges.push((block.offset().raw(), 300));
        fresh.push(block);
    }
    assert_disjoint(&mut ranges);
    for block in blocks
        .iter()
        .enumerate()
        .filter(|(i, b)| *i != 5 && !hit(b))
        .map(|(_, b)| b)
    {
        verify_tag(*block);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(*block) }.unwrap();
    }
    for block in fresh {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(block) }.unwrap();
    }
    heap.check().unwrap();
}

#[test]
fn a_second_mapping_shares_the_free_lists() {
    let (options, _cleanup) = fresh_shm("freelist-attach");
    let one = FreeListAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let two = FreeListAllocator::attach(&options).unwrap();
    let block = one.allocate(1000).unwrap();
    fill(block, 1000, 0x77);
    let seen = two.full_ptr(block.offset().raw()).unwrap();
    assert!(holds(seen, 1000, 0x77));
    // SAFETY: nothing uses the block after it is freed.
    unsafe { two.free(seen) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    assert!(matches!(
        // SAFETY: nothing uses the block after it is freed.
        unsafe { one.free(block) },
        Err(Error::InvalidFree { .. })
    ));
    assert_eq!(one.stats(), two.stats());
    assert!(matches!(
        shmkit::BumpAllocator::attach(&options),
        Err(Error::WrongAllocator { .. })
    ));
}

#[test]
fn containers_allocate_through_allocator_api2() {
    let heap = heap(1 << 20);
    let mut numbers = allocator_api2::vec::Vec::new_in(&heap);
    for i in 0..10_000u64 {
        numbers.push(i);
    }
    assert_eq!(numbers.iter().sum::<u64>(), 49_995_000);
    let mut map = hashbrown::HashMap::new_in(&heap);
    for i in 0..1000u32 {
        map.insert(i, i * 2);
    }
    assert_eq!(map[&500], 1000);
    heap.check().unwrap();
    drop(map);
    drop(numbers);
    assert_eq!(heap.stats().live_allocations, 0);
}

#[derive(Clone, Debug)]
enum Op {
    Alloc(usize, u32),
    Free(usize),
    Realloc(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3000, 0u32..=12).prop_map(|(size, shift)| Op::Alloc(size, shift)),
        3 => any::<usize>().prop_map(Op::Free),
        2 => (any::<usize>(), 0usize..6000).prop_map(|(i, size)| Op::Realloc(i, size)),
    ]
}

/// The model's view of a live block.
struct Live {
    block: FullPtr<u8>,
    size: usize,
    byte: u8,
}

fn check_against_model(heap: &FreeListAllocator, live: &[Live], model: &AllocStats) {
    heap.check().unwrap();
    let stats = heap.stats();
    assert_eq!(stats.allocated_bytes, model.allocated_bytes);
    assert_eq!(stats.live_allocations, model.live_allocations);
    assert_eq!(stats.peak_bytes, model.peak_bytes);
    assert!(stats.largest_free_block <= stats.free_bytes);
    let mut ranges = Vec::new();
    let mut used = 0;
    let mut seen = HashSet::new();
    for entry in live {
        let usable = heap.usable_size(entry.block.offset().raw()).unwrap();
        assert!(usable >= entry.size);
        assert!(holds(entry.block, entry.size, entry.byte));
        assert!(seen.insert(entry.block.offset()));
        ranges.push((entry.block.offset().raw(), usable as u64));
        used += usable as u64 + HEADER;
    }
    assert_disjoint(&mut ranges);
    assert!(stats.free_bytes + used <= stats.capacity);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_match_a_model(ops in proptest::collection::vec(op(), 1..80)) {
        let heap = heap(96 << 10);
        let mut live: Vec<Live> = Vec::new();
        let mut model = AllocStats::default();
        for (step, op) in ops.into_iter().enumerate() {
            let byte = step as u8 ^ 0x3c;
            match op {
                Op::Alloc(size, shift) => match heap.allocate_aligned(size, 1 << shift) {
                    Ok(block) => {
                        assert_eq!(block.offset().raw() % (1 << shift), 0);
                        fill(block, size, byte);
                        live.push(Live { block, size, byte });
                        model.allocated_bytes += size as u64;
                        model.live_allocations += 1;
                        model.peak_bytes = model.peak_bytes.max(model.allocated_bytes);
                    }
                    Err(Error::OutOfMemory { .. }) => {}
                    Err(other) => panic!("{other}"),
                },
                Op::Free(index) if !live.is_empty() => {
                    let entry = live.swap_remove(index % live.len());
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { heap.free(entry.block) }.unwrap();
                    // SAFETY: the block is not used after this free (a repeat is refused).
                    let freed = unsafe { heap.free(entry.block) };
                    prop_assert!(freed.is_err());
                    model.allocated_bytes -= entry.size as u64;
                    model.live_allocations -= 1;
                }
                Op::Realloc(index, size) if !live.is_empty() => {
                    let index = index % live.len();
                    let old = &live[index];
                    // SAFETY: nothing uses the block after it is freed.
                    match unsafe { heap.reallocate(old.block, size) } {
                        Ok(block) => {
                            let kept = old.size.min(size);
                            prop_assert!(holds(block, kept, old.byte));
                            if block.offset() == old.block.offset() {
                                model.allocated_bytes = model.allocated_bytes - old.size as u64 + size as u64;
                            } else {
                                model.allocated_bytes += size as u64;
                                model.peak_bytes = model.peak_bytes.max(model.allocated_bytes);
                                model.allocated_bytes -= old.size as u64;
                            }
                            model.peak_bytes = model.peak_bytes.max(model.allocated_bytes);
                            fill(block, size, byte);
                            live[index] = Live { block, size, byte };
                        }
                        Err(Error::OutOfMemory { .. }) => {}
                        Err(other) => panic!("{other}"),
                    }
                }
                _ => {}
            }
            check_against_model(&heap, &live, &model);
        }
        for entry in live.drain(..) {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free(entry.block) }.unwrap();
        }
        heap.check().unwrap();
        let stats = heap.stats();
        prop_assert_eq!(stats.free_bytes, stats.capacity - HEADER);
    }
}
