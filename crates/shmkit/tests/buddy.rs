//! The buddy allocator: blocks, bad frees, alignment, growth, resizing,
//! threads, several real processes, crash repair and a model-based property
//! test.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use common::{
    assert_disjoint, child_env, dead_pid, fresh_shm, ranges_from_threads, shm_name, spawn_workers,
    worker_stdout, Rng,
};
use proptest::prelude::*;
use shmkit::{
    AllocatorKind, BuddyAllocator, BuddyParams, BumpAllocator, Error, MemContext, SegmentAllocator,
    SegmentOptions, ShmAllocator,
};

fn private(size: u64) -> BuddyAllocator {
    BuddyAllocator::create(&SegmentOptions::private().size(size)).unwrap()
}

fn growable(size: u64, max: u64) -> BuddyAllocator {
    BuddyAllocator::create(&SegmentOptions::private().size(size).max_size(max)).unwrap()
}

/// Writes a tag into a block: (owner, seq, size) then a fill derived from them.
fn write_tag(buddy: &BuddyAllocator, offset: u64, owner: u64, seq: u64, size: usize) {
    assert!(size >= 24);
    let block = buddy.full_ptr(offset).unwrap();
    let fill = fill_byte(owner, seq);
    // SAFETY: the block is ours and at least `size` bytes long.
    unsafe {
        let p = block.as_ptr();
        std::ptr::write_bytes(p, fill, size);
        p.cast::<[u64; 3]>()
            .write_unaligned([owner, seq, size as u64]);
    }
}

fn fill_byte(owner: u64, seq: u64) -> u8 {
    (owner.wrapping_mul(31) ^ seq.wrapping_mul(7)) as u8 | 1
}

/// Checks a tag written by `write_tag`; returns (owner, seq).
fn verify_tag(buddy: &BuddyAllocator, offset: u64) -> (u64, u64) {
    let block = buddy.full_ptr(offset).unwrap();
    let usable = buddy.usable_size(offset).unwrap();
    // SAFETY: the block is live and at least 24 bytes long (every tagged
    // block is); its owner does not write it any more.
    let [owner, seq, size] = unsafe { block.as_ptr().cast::<[u64; 3]>().read_unaligned() };
    assert!(
        size as usize <= usable,
        "block {offset}: size {size} > {usable}"
    );
    // SAFETY: as above, `size` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), size as usize) };
    let fill = fill_byte(owner, seq);
    assert!(
        bytes[24..].iter().all(|&b| b == fill),
        "block {offset} of {owner}/{seq} was overwritten"
    );
    (owner, seq)
}

#[test]
fn allocate_free_and_reuse() {
    let buddy = private(1 << 20);
    let empty = buddy.stats();
    assert_eq!(empty.free_bytes, empty.capacity);
    assert_eq!(buddy.kind(), AllocatorKind::Buddy);

    let a = buddy.allocate(100).unwrap();
    assert_eq!(buddy.usable_size(a.offset().raw()).unwrap(), 128);
    let b = buddy.allocate(1).unwrap();
    assert_eq!(buddy.usable_size(b.offset().raw()).unwrap(), 64);
    let stats = buddy.stats();
    assert_eq!(stats.allocated_bytes, 101);
    assert_eq!(stats.live_allocations, 2);
    assert_eq!(stats.free_bytes, empty.capacity - 192);
    buddy.check().unwrap();

    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free(a) }.unwrap();
    // The same size comes back at the same place.
    let again = buddy.allocate(120).unwrap();
    assert_eq!(again.offset(), a.offset());
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free(again) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free(b) }.unwrap();
    // Everything merged back into the original blocks.
    let after = buddy.stats();
    assert_eq!(after.free_bytes, empty.free_bytes);
    assert_eq!(after.largest_free_block, empty.largest_free_block);
    assert_eq!((after.allocated_bytes, after.live_allocations), (0, 0));
    assert_eq!(after.peak_bytes, 121);
    buddy.check().unwrap();

    // Size 0 is served as a block of its own.
    let z1 = buddy.allocate(0).unwrap();
    let z2 = buddy.allocate(0).unwrap();
    assert_ne!(z1.offset(), z2.offset());
    assert_eq!(buddy.stats().allocated_bytes, 0);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free(z1) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free(z2) }.unwrap();
    buddy.check().unwrap();
}

#[test]
fn bad_frees_are_refused_and_change_nothing() {
    let buddy = private(1 << 20);
    let a = buddy.allocate(200).unwrap().offset().raw(); // a 256-byte block
    let b = buddy.allocate(64).unwrap().offset().raw();
    let freed = buddy.allocate(64).unwrap().offset().raw();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free_offset(&MemContext::default(), freed) }.unwrap();
    let before = buddy.stats();
    let size = buddy.segment().size();
    let data = buddy.segment().data_offset();
    for bogus in [
        0,
        1,
        a + 1,
        a + 8,
        a + 64, // the middle of a live block, on a unit boundary
        a + 128,
        b + 32,
        freed, // double free
        data,  // the state table
        a - 64,
        size,
        size + 4096,
        u64::MAX,
        u64::MAX - 63,
    ] {
        // SAFETY: nothing uses the block after it is freed.
        let result = unsafe { buddy.free_offset(&MemContext::default(), bogus) };
        assert!(
            matches!(result, Err(Error::InvalidFree { offset }) if offset == bogus),
            "free({bogus}) gave {result:?}"
        );
        assert_eq!(buddy.stats(), before, "free({bogus}) changed the stats");
        assert!(buddy.usable_size(bogus).is_err());
        buddy.check().unwrap();
    }
    // Still usable, and the real frees work.
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free_offset(&MemContext::default(), a) }.unwrap();
    assert!(matches!(
        // SAFETY: nothing uses the block after it is freed.
        unsafe { buddy.free_offset(&MemContext::default(), a) },
        Err(Error::InvalidFree { .. })
    ));
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free_offset(&MemContext::default(), b) }.unwrap();
    buddy.check().unwrap();
    assert_eq!(buddy.stats().live_allocations, 0);
}

#[test]
fn every_power_of_two_alignment_holds() {
    let buddy = private(4 << 20);
    let mut blocks = Vec::new();
    for shift in 0..=12 {
        let align = 1usize << shift;
        for size in [1, 24, 100, 3000, 5000] {
            let block = buddy.allocate_aligned(size, align).unwrap();
            assert_eq!(block.offset().raw() % align as u64, 0, "{size}/{align}");
            assert_eq!(block.as_ptr() as usize % align, 0, "{size}/{align}");
            assert!(buddy.usable_size(block.offset().raw()).unwrap() >= size.max(align));
            blocks.push(block);
        }
    }
    let stats = buddy.stats();
    for bad in [3, 24, 8192, 1 << 20] {
        let result = buddy.allocate_aligned(8, bad);
        assert!(
            matches!(result, Err(Error::InvalidAlignment { .. })),
            "align {bad}: {result:?}"
        );
    }
    assert_eq!(buddy.stats(), stats);
    let mut ranges: Vec<(u64, u64)> = blocks
        .iter()
        .map(|b| {
            let o = b.offset().raw();
            (o, buddy.usable_size(o).unwrap() as u64)
        })
        .collect();
    assert_disjoint(&mut ranges);
    for block in blocks {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { buddy.free(block) }.unwrap();
    }
    buddy.check().unwrap();
}

#[test]
fn out_of_memory_without_room_then_growth_with_max_size() {
    // No room to grow: a typed error, nothing changed.
    let fixed = private(1 << 20);
    let stats = fixed.stats();
    let result = fixed.allocate(2 << 20);
    assert!(
        matches!(result, Err(Error::OutOfMemory { requested, .. }) if requested == 2 << 20),
        "{result:?}"
    );
    assert_eq!(fixed.stats(), stats);
    let mut blocks = Vec::new();
    loop {
        match fixed.allocate(64 << 10) {
            Ok(block) => blocks.push(block),
            Err(Error::OutOfMemory { available, .. }) => {
                assert!(available < 64 << 10);
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    assert!(!blocks.is_empty());
    fixed.check().unwrap();

    // Room to grow: running out grows the segment.
    let buddy = growable(256 << 10, 16 << 20);
    let initial = buddy.segment().size();
    let capacity = buddy.stats().capacity;
    let big = buddy.allocate(1 << 20).unwrap();
    assert!(buddy.segment().size() > initial);
    // The capacity counted the room to grow from the start.
    assert_eq!(buddy.stats().capacity, capacity);
    assert!(big.offset().raw() + (1 << 20) <= buddy.segment().size());
    buddy.check().unwrap();
    let mut grown = vec![big];
    loop {
        match buddy.allocate(1 << 20) {
            Ok(block) => grown.push(block),
            Err(Error::OutOfMemory { .. }) => break,
            Err(other) => panic!("{other}"),
        }
    }
    assert_eq!(buddy.segment().size(), buddy.segment().max_size());
    assert!(grown.len() >= 10, "only {} MiB blocks", grown.len());
    assert!(matches!(
        buddy.allocate(32 << 20),
        Err(Error::OutOfMemory { .. })
    ));
    buddy.check().unwrap();
    for block in grown {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { buddy.free(block) }.unwrap();
    }
    let stats = buddy.stats();
    assert_eq!(stats.free_bytes, stats.capacity);
    buddy.check().unwrap();
}

#[test]
fn the_tables_are_sized_for_the_maximum_size() {
    // 64 MiB at most: 5 MiB of tables do not fit 64 KiB, so creation grows.
    let buddy = growable(64 << 10, 64 << 20);
    assert!(buddy.segment().size() > 5 << 20);
    let block = buddy.allocate(1000).unwrap();
    let huge = buddy.allocate(16 << 20).unwrap();
    buddy.check().unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free(huge) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free(block) }.unwrap();
    buddy.check().unwrap();
    // A maximum too small for the tables and one block is refused.
    let params = BuddyParams { min_block: 16 };
    assert!(BuddyAllocator::create_with(&SegmentOptions::private().size(4096), &params).is_err());
    assert!(matches!(
        BuddyAllocator::create_with(
            &SegmentOptions::private().size(1 << 20),
            &BuddyParams { min_block: 48 }
        ),
        Err(Error::InvalidSize { .. })
    ));
}

#[test]
fn resize_in_place_returns_halves_and_absorbs_buddies() {
    let buddy = private(1 << 20);
    let ctx = MemContext::default();
    let a = buddy.allocate(1000).unwrap().offset().raw();
    let free_before = buddy.stats().free_bytes;
    // Shrink: the upper halves (512, 256, 128) go back.
    // SAFETY: nothing uses the block after it is freed.
    assert!(unsafe { buddy.resize_in_place(&ctx, a, 100) }.unwrap());
    assert_eq!(buddy.usable_size(a).unwrap(), 128);
    assert_eq!(buddy.stats().free_bytes, free_before + 896);
    assert_eq!(buddy.stats().allocated_bytes, 100);
    buddy.check().unwrap();
    // Grow: the free buddies are taken back.
    // SAFETY: nothing uses the block after it is freed.
    assert!(unsafe { buddy.resize_in_place(&ctx, a, 1000) }.unwrap());
    assert_eq!(buddy.usable_size(a).unwrap(), 1024);
    assert_eq!(buddy.stats().free_bytes, free_before);
    assert_eq!(buddy.stats().allocated_bytes, 1000);
    buddy.check().unwrap();
    // A live buddy blocks growth in place.
    let b = buddy.allocate(1000).unwrap().offset().raw();
    assert_eq!(
        b,
        a ^ 1024,
        "the upper half of the split is handed out next"
    );
    let stats = buddy.stats();
    // SAFETY: nothing uses the block after it is freed.
    assert!(!unsafe { buddy.resize_in_place(&ctx, a, 2000) }.unwrap());
    assert_eq!(buddy.stats(), stats);
    // A dead block is refused.
    // SAFETY: nothing uses the block after it is freed.
    assert!(unsafe { buddy.resize_in_place(&ctx, a + 64, 10) }.is_err());

    // reallocate moves it and keeps the contents.
    let block = buddy.full_ptr(a).unwrap();
    // SAFETY: the block is ours, 1024 bytes.
    unsafe {
        for i in 0..1000 {
            *block.as_ptr().add(i) = (i % 251) as u8;
        }
    }
    // SAFETY: nothing uses the block after it is freed.
    let moved = unsafe { buddy.reallocate(block, 3000) }.unwrap();
    assert_ne!(moved.offset().raw(), a);
    assert!(buddy.usable_size(a).is_err(), "the old block was freed");
    // SAFETY: the new block holds at least 3000 bytes.
    let bytes = unsafe { std::slice::from_raw_parts(moved.as_ptr(), 1000) };
    assert!(bytes.iter().enumerate().all(|(i, &x)| x == (i % 251) as u8));
    assert_eq!(buddy.stats().allocated_bytes, 4000);
    buddy.check().unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free(moved) }.unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free_offset(&ctx, b) }.unwrap();
    buddy.check().unwrap();
}

#[test]
fn stats_and_check_follow_the_blocks() {
    let buddy = private(1 << 20);
    let empty = buddy.stats();
    assert!(empty.capacity > 512 << 10);
    assert_eq!(empty.largest_free_block, 512 << 10);
    assert_eq!(empty.fragmentation() > 0.0, empty.free_bytes > (512 << 10));
    let blocks: Vec<_> = (0..10)
        .map(|i| buddy.allocate(50 * i + 1).unwrap())
        .collect();
    let stats = buddy.stats();
    let usable: u64 = blocks
        .iter()
        .map(|b| buddy.usable_size(b.offset().raw()).unwrap() as u64)
        .sum();
    assert_eq!(
        stats.allocated_bytes,
        (0..10).map(|i| 50 * i + 1).sum::<u64>()
    );
    assert_eq!(stats.live_allocations, 10);
    assert_eq!(stats.free_bytes + usable, stats.capacity);
    assert!(stats.largest_free_block >= 256 << 10);
    buddy.check().unwrap();
    for block in blocks {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { buddy.free(block) }.unwrap();
    }
    assert_eq!(buddy.stats().free_bytes, empty.free_bytes);
    buddy.check().unwrap();
}

#[test]
fn another_mapping_shares_the_heap_and_params_are_checked() {
    let (options, _cleanup) = fresh_shm("buddy-attach");
    let params = BuddyParams { min_block: 16 };
    let creator = BuddyAllocator::create_with(&options.clone().size(1 << 20), &params).unwrap();
    let attached = BuddyAllocator::attach(&options).unwrap();
    assert_eq!(attached.min_block(), 16);
    assert!(BuddyAllocator::attach_with(&options, &params).is_ok());
    assert!(matches!(
        BuddyAllocator::attach_with(&options, &BuddyParams::default()),
        Err(Error::WrongAllocatorParams { .. })
    ));
    assert!(matches!(
        BumpAllocator::attach(&options),
        Err(Error::WrongAllocator { .. })
    ));
    let block = creator.allocate(10).unwrap();
    assert_eq!(creator.usable_size(block.offset().raw()).unwrap(), 16);
    write_tag(
        &creator,
        creator.allocate(40).unwrap().offset().raw(),
        7,
        9,
        40,
    );
    // Freed through the other mapping; reused by the first.
    // SAFETY: nothing uses the block after it is freed.
    unsafe { attached.free_offset(&MemContext::default(), block.offset().raw()) }.unwrap();
    assert_eq!(creator.allocate(10).unwrap().offset(), block.offset());
    assert_eq!(attached.stats(), creator.stats());
    attached.check().unwrap();
}

#[test]
fn threads_allocate_tag_verify_and_free_concurrently() {
    let buddy = growable(1 << 20, 32 << 20);
    let ranges = ranges_from_threads(4, |thread| {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (thread + 1).wrapping_mul(0x1234_5678));
        let mut live: Vec<(u64, u64)> = Vec::new();
        for seq in 0..3000u64 {
            if live.len() < 200 && rng.below(3) != 0 || live.is_empty() {
                let size = 24 + rng.below(2000) as usize;
                let align = 1usize << rng.below(8);
                let offset = buddy
                    .allocate_offset(&MemContext::current(), size, align)
                    .unwrap();
                assert_eq!(offset % align as u64, 0);
                write_tag(&buddy, offset, thread, seq, size);
                live.push((offset, seq));
            } else {
                let (offset, seq) = live.swap_remove(rng.below(live.len() as u64) as usize);
                assert_eq!(verify_tag(&buddy, offset), (thread, seq));
                // SAFETY: nothing uses the block after it is freed.
                unsafe { buddy.free_offset(&MemContext::current(), offset) }.unwrap();
            }
        }
        live.iter()
            .map(|&(offset, seq)| {
                assert_eq!(verify_tag(&buddy, offset), (thread, seq));
                (offset, buddy.usable_size(offset).unwrap() as u64)
            })
            .collect()
    });
    let mut spans = ranges.clone();
    assert_disjoint(&mut spans);
    assert_eq!(buddy.stats().live_allocations, ranges.len() as u64);
    buddy.check().unwrap();
    // Blocks of every thread freed by this one.
    for (offset, _) in ranges {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { buddy.free_offset(&MemContext::default(), offset) }.unwrap();
    }
    let stats = buddy.stats();
    assert_eq!((stats.live_allocations, stats.allocated_bytes), (0, 0));
    assert_eq!(stats.free_bytes, stats.capacity);
    buddy.check().unwrap();
}

const WORKERS: u64 = 3;
const SLOTS: usize = 64;
const STEPS: u64 = 3000;

#[test]
#[ignore = "child process of processes_share_one_buddy_heap"]
fn child_buddy_worker() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let worker: u64 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    let buddy = BuddyAllocator::attach(&SegmentOptions::shm(name)).unwrap();
    let segment = buddy.segment();
    let arrived = segment.root::<AtomicU32>("arrived").unwrap();
    // SAFETY: resolved and aligned; an atomic.
    let arrived = unsafe { segment.resolve(arrived).unwrap().as_ref() };
    let slots = segment.root::<[AtomicU64; SLOTS]>("slots").unwrap();
    // SAFETY: as above; atomics.
    let slots = unsafe { segment.resolve(slots).unwrap().as_ref() };
    arrived.fetch_add(1, Ordering::AcqRel);
    let started = std::time::Instant::now();
    while u64::from(arrived.load(Ordering::Acquire)) < WORKERS {
        assert!(started.elapsed().as_secs() < 30, "the others never came");
        std::hint::spin_loop();
    }
    let pid = u64::from(std::process::id());
    let mut rng = Rng((pid ^ worker << 40).wrapping_mul(0x2545_f491_4f6c_dd1d) | 1);
    let mut live: Vec<u64> = Vec::new();
    let mut foreign = 0;
    for seq in 0..STEPS {
        match rng.below(4) {
            0 | 1 => {
                let size = 24 + rng.below(1500) as usize;
                let offset = buddy
                    .allocate_offset(&MemContext::default(), size, 8)
                    .unwrap();
                write_tag(&buddy, offset, pid, seq, size);
                live.push(offset);
            }
            2 if !live.is_empty() => {
                let offset = live.swap_remove(rng.below(live.len() as u64) as usize);
                assert_eq!(verify_tag(&buddy, offset).0, pid);
                // SAFETY: nothing uses the block after it is freed.
                unsafe { buddy.free_offset(&MemContext::default(), offset) }.unwrap();
            }
            3 if !live.is_empty() => {
                // Hand a block over; free whatever was in the slot, whoever
                // allocated it.
                let offset = live.swap_remove(rng.below(live.len() as u64) as usize);
                let previous =
                    slots[rng.below(SLOTS as u64) as usize].swap(offset, Ordering::AcqRel);
                if previous != 0 {
                    if verify_tag(&buddy, previous).0 != pid {
                        foreign += 1;
                    }
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { buddy.free_offset(&MemContext::default(), previous) }.unwrap();
                }
            }
            _ => {}
        }
    }
    for offset in live {
        assert_eq!(verify_tag(&buddy, offset).0, pid);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { buddy.free_offset(&MemContext::default(), offset) }.unwrap();
    }
    writeln!(std::io::stdout(), "foreign {foreign}").unwrap();
}

#[test]
fn processes_share_one_buddy_heap() {
    let (options, _cleanup) = fresh_shm("buddy-multi");
    let parent = BuddyAllocator::create(&options.clone().size(1 << 20).max_size(16 << 20)).unwrap();
    let initial = parent.segment().size();
    let arrived = parent.new_obj(AtomicU32::new(0)).unwrap();
    parent
        .segment()
        .set_root("arrived", arrived.offset())
        .unwrap();
    let slots = parent
        .new_obj(std::array::from_fn::<AtomicU64, SLOTS, _>(|_| {
            AtomicU64::new(0)
        }))
        .unwrap();
    parent.segment().set_root("slots", slots.offset()).unwrap();
    let children = spawn_workers("child_buddy_worker", &shm_name(&options), WORKERS as usize);
    let mut foreign = 0u64;
    for (worker, child) in children.into_iter().enumerate() {
        let stdout = worker_stdout(worker, child);
        let line = stdout
            .lines()
            .find_map(|l| l.find("foreign ").map(|at| l[at + 8..].to_string()))
            .expect("the worker reported");
        foreign += line.trim().parse::<u64>().unwrap();
    }
    assert!(foreign > 0, "no process freed another's block");
    parent.check().unwrap();
    // SAFETY: the workers have exited; atomics.
    let slot_array = unsafe { slots.as_ptr().as_ref() }.unwrap();
    let mut owners = HashMap::new();
    for slot in slot_array {
        let offset = slot.swap(0, Ordering::AcqRel);
        if offset != 0 {
            *owners.entry(verify_tag(&parent, offset).0).or_insert(0) += 1;
            // SAFETY: nothing uses the block after it is freed.
            unsafe { parent.free_offset(&MemContext::default(), offset) }.unwrap();
        }
    }
    assert!(!owners.is_empty());
    // SAFETY: allocated with new_obj above, not used afterwards.
    unsafe {
        parent.del_obj(slots).unwrap();
        parent.del_obj(arrived).unwrap();
    }
    let stats = parent.stats();
    assert_eq!((stats.live_allocations, stats.allocated_bytes), (0, 0));
    assert_eq!(stats.free_bytes, stats.capacity);
    assert!(stats.peak_bytes > 0);
    parent.check().unwrap();
    assert!(
        parent.segment().size() > initial,
        "the workers never grew the segment"
    );
}

/// Offset of the allocator state area (header byte 104, see the header
/// module's layout).
fn state_area(buddy: &BuddyAllocator) -> *mut u8 {
    let base = buddy.segment().base().as_ptr();
    // SAFETY: the header is at least 128 bytes; the field is 8-aligned.
    let offset = unsafe { base.add(104).cast::<u64>().read() };
    base.wrapping_add(offset as usize)
}

#[test]
fn a_dead_owner_and_a_corrupt_list_are_repaired_by_the_next_operation() {
    let buddy = private(1 << 20);
    // The first block sits at the heap start: 128 bytes, then free blocks of
    // 128, 256, 512... bytes, one per order.
    let a = buddy.allocate(100).unwrap().offset().raw();
    let base = buddy.segment().base().as_ptr();
    // 1. Scribble over the links of the free 128-byte block (a use after
    //    free, say).
    // SAFETY: inside the heap, in a free block of 128 bytes.
    unsafe {
        base.wrapping_add((a + 128) as usize)
            .cast::<[u64; 2]>()
            .write([0xdead_beef_0000, 12345])
    };
    // 2. Miscount the list of order 7 (state byte 448 + 8 * 7).
    // SAFETY: inside the state area, 8-aligned.
    let count = unsafe { &*state_area(&buddy).add(448 + 8 * 7).cast::<AtomicU64>() };
    count.fetch_add(3, Ordering::Relaxed);
    // 3. A split of the free 512-byte block at a + 512 that died half-way:
    //    the upper half's state byte (order 8) is written, the lower's not.
    //    The state table starts the data area, one byte per 64-byte unit.
    let table = base.wrapping_add(buddy.segment().data_offset() as usize);
    // SAFETY: inside the state table.
    unsafe { table.wrapping_add((512 + 256) / 64).write(0x80 | 8) };
    assert!(buddy.check().is_err(), "the damage is visible");

    // The lock word (state byte 0) names a process that has died.
    // SAFETY: the state area is 128-aligned and starts with the lock word.
    let lock = unsafe { &*state_area(&buddy).cast::<AtomicU64>() };
    lock.store(u64::from(dead_pid()), Ordering::Release);
    // An operation that touches none of the damaged lists repairs them all.
    let b = buddy.allocate(1000).unwrap().offset().raw();
    assert_eq!(lock.load(Ordering::Acquire), 0, "released again");
    buddy.check().unwrap();
    let c = buddy.allocate(100).unwrap().offset().raw();
    assert_eq!(c, a + 128);
    let mut ranges = vec![(a, 128), (b, 1024), (c, 128)];
    assert_disjoint(&mut ranges);
    let stats = buddy.stats();
    assert_eq!((stats.live_allocations, stats.allocated_bytes), (3, 1200));
    for offset in [a, b, c] {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { buddy.free_offset(&MemContext::default(), offset) }.unwrap();
    }
    let stats = buddy.stats();
    assert_eq!(stats.free_bytes, stats.capacity);
    buddy.check().unwrap();
}

#[test]
fn a_corrupt_list_found_by_a_live_owner_is_rebuilt_from_the_table() {
    let buddy = private(1 << 20);
    let a = buddy.allocate(100).unwrap().offset().raw();
    let free_buddy = buddy
        .segment()
        .base()
        .as_ptr()
        .wrapping_add((a ^ 128) as usize);
    // SAFETY: inside the heap, in a free block of 128 bytes.
    unsafe { free_buddy.cast::<[u64; 2]>().write([u64::MAX, 7]) };
    // The next allocation of that order finds the bad link and rebuilds.
    let b = buddy.allocate(100).unwrap().offset().raw();
    assert_eq!(b, a ^ 128);
    buddy.check().unwrap();
    // A free-list head in the state area (order 10: byte 64 + 8 * 10) that
    // points into a live block. (A request of 300 bytes is an order-9 block
    // cut from a 1 KiB chunk, order 10: its allocation reads that list.)
    // SAFETY: inside the state area, 8-aligned.
    let head = unsafe { &*state_area(&buddy).add(64 + 8 * 10).cast::<AtomicU64>() };
    head.store(a, Ordering::Release);
    assert!(buddy.check().is_err());
    let c = buddy.allocate(300).unwrap().offset().raw();
    assert!(c != a && c != b);
    buddy.check().unwrap();
    for offset in [a, b, c] {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { buddy.free_offset(&MemContext::default(), offset) }.unwrap();
    }
    buddy.check().unwrap();
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { size: usize, align_shift: u32 },
    Free { pick: usize },
    Realloc { pick: usize, size: usize },
    Resize { pick: usize, size: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..3000, 0u32..=12).prop_map(|(size, align_shift)| Op::Alloc { size, align_shift }),
        3 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        2 => (any::<usize>(), 0usize..5000).prop_map(|(pick, size)| Op::Realloc { pick, size }),
        1 => (any::<usize>(), 0usize..5000).prop_map(|(pick, size)| Op::Resize { pick, size }),
    ]
}

fn fill(buddy: &BuddyAllocator, offset: u64, size: usize, byte: u8) {
    let block = buddy.full_ptr(offset).unwrap();
    // SAFETY: the block is live and holds at least `size` bytes.
    unsafe { std::ptr::write_bytes(block.as_ptr(), byte, size) };
}

fn holds(buddy: &BuddyAllocator, offset: u64, size: usize, byte: u8) -> bool {
    let block = buddy.full_ptr(offset).unwrap();
    // SAFETY: as above.
    let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), size) };
    bytes.iter().all(|&b| b == byte)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn random_sequences_match_a_model(ops in proptest::collection::vec(op(), 1..60)) {
        let buddy = growable(256 << 10, 1 << 20);
        let ctx = MemContext::default();
        // offset -> (size, fill byte)
        let mut model: Vec<(u64, usize, u8)> = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            let byte = step as u8 | 0x80;
            match op {
                Op::Alloc { size, align_shift } => {
                    let align = 1usize << align_shift;
                    let before = buddy.stats();
                    match buddy.allocate_offset(&ctx, size, align) {
                        Ok(offset) => {
                            prop_assert_eq!(offset % align as u64, 0);
                            fill(&buddy, offset, size, byte);
                            model.push((offset, size, byte));
                        }
                        Err(Error::OutOfMemory { .. }) => {
                            prop_assert_eq!(buddy.stats().allocated_bytes, before.allocated_bytes);
                        }
                        Err(other) => prop_assert!(false, "{}", other),
                    }
                }
                Op::Free { pick } if !model.is_empty() => {
                    let (offset, size, byte) = model.swap_remove(pick % model.len());
                    prop_assert!(holds(&buddy, offset, size, byte));
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { buddy.free_offset(&ctx, offset) }.unwrap();
                    // SAFETY: the block is not used after this free (a repeat is refused).
                    let freed = unsafe { buddy.free_offset(&ctx, offset) };
                    prop_assert!(freed.is_err());
                }
                Op::Realloc { pick, size } if !model.is_empty() => {
                    let index = pick % model.len();
                    let (offset, old, old_byte) = model[index];
                    // SAFETY: nothing uses the block after it is freed.
                    match unsafe { buddy.reallocate(buddy.full_ptr(offset).unwrap(), size) } {
                        Ok(moved) => {
                            let new = moved.offset().raw();
                            prop_assert!(holds(&buddy, new, old.min(size), old_byte));
                            fill(&buddy, new, size, byte);
                            model[index] = (new, size, byte);
                        }
                        Err(Error::OutOfMemory { .. }) => {
                            prop_assert!(holds(&buddy, offset, old, old_byte));
                        }
                        Err(other) => prop_assert!(false, "{}", other),
                    }
                }
                Op::Resize { pick, size } if !model.is_empty() => {
                    let index = pick % model.len();
                    let (offset, old, old_byte) = model[index];
                    // SAFETY: nothing uses the block after it is freed.
                    if unsafe { buddy.resize_in_place(&ctx, offset, size) }.unwrap() {
                        prop_assert!(buddy.usable_size(offset).unwrap() >= size);
                        prop_assert!(holds(&buddy, offset, old.min(size), old_byte));
                        fill(&buddy, offset, size, byte);
                        model[index] = (offset, size, byte);
                    }
                }
                _ => {}
            }
            buddy.check().unwrap();
            let stats = buddy.stats();
            prop_assert_eq!(stats.live_allocations, model.len() as u64);
            prop_assert_eq!(
                stats.allocated_bytes,
                model.iter().map(|m| m.1 as u64).sum::<u64>()
            );
            let mut ranges: Vec<(u64, u64)> = model
                .iter()
                .map(|&(o, _, _)| (o, buddy.usable_size(o).unwrap() as u64))
                .collect();
            let usable: u64 = ranges.iter().map(|r| r.1).sum();
            prop_assert_eq!(stats.free_bytes + usable, stats.capacity);
            assert_disjoint(&mut ranges);
            for &(offset, size, byte) in &model {
                prop_assert!(holds(&buddy, offset, size, byte));
            }
        }
    }
}

#[test]
fn a_caller_buffer_holds_a_buddy_heap() {
    let mut memory = vec![0xa5u8; 256 << 10]; // not zeroed on purpose
    let buddy = BuddyAllocator::in_buffer(&mut memory).unwrap();
    let stats = buddy.stats();
    assert_eq!(stats.free_bytes, stats.capacity);
    let block = buddy.allocate_aligned(100, 128).unwrap();
    assert_eq!(block.as_ptr() as usize % 128, 0);
    assert!(
        buddy.allocate_aligned(8, 256).is_err(),
        "above the buffer's max_align"
    );
    buddy.check().unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { buddy.free(block) }.unwrap();
    buddy.check().unwrap();
}
