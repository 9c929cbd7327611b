//! Tests shared by the size-class allocator and the thread-local caching
//! allocator built on it: the same pages, classes and validation, so the
//! same expectations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use proptest::prelude::*;
use shmkit::{
    AllocStats, Error, MemContext, Segment, SegmentAllocator, SegmentOptions, ShmAllocator,
    SizeClassAllocator, StackAllocator, ThreadLocalAllocator,
};

use super::{fresh_shm, shm_name, spawn_workers, worker_stdout, Cleanup};

/// The page size of the size-class machinery.
pub const PAGE: u64 = SizeClassAllocator::PAGE_SIZE;
/// Blocks the processes' mailbox holds.
pub const MAILBOX: usize = 256;

/// An allocator over the size-class pages.
pub trait PagedHeap: ShmAllocator + SegmentAllocator<Params = ()> {
    /// The segment it manages.
    fn segment_of(&self) -> &Segment;
}

impl PagedHeap for SizeClassAllocator {
    fn segment_of(&self) -> &Segment {
        self.segment()
    }
}

impl PagedHeap for ThreadLocalAllocator {
    fn segment_of(&self) -> &Segment {
        self.segment()
    }
}

/// A fresh allocator in private memory.
pub fn private<A: PagedHeap>(size: u64) -> A {
    A::create(&SegmentOptions::private().size(size)).unwrap()
}

pub fn ctx() -> MemContext {
    MemContext::default()
}

/// Blocks of many sizes: each served, counted, freed and reused.
pub fn allocate_free_and_reuse<A: PagedHeap>() {
    let heap: A = private(2 << 20);
    let a = heap.allocate_offset(&ctx(), 100, 8).unwrap();
    assert!(heap.usable_size(a).unwrap() >= 100);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free_offset(&ctx(), a) }.unwrap();
    let b = heap.allocate_offset(&ctx(), 100, 8).unwrap();
    assert_eq!(a, b, "the freed block is reused");
    // Many sizes, small and large, all distinct and reusable.
    let sizes = [
        1usize,
        15,
        16,
        17,
        100,
        128,
        129,
        1000,
        4096,
        20_000,
        32 << 10,
        40_000,
        200_000,
    ];
    let blocks: Vec<_> = sizes
        .iter()
        .map(|&s| (heap.allocate_offset(&ctx(), s, 8).unwrap(), s))
        .collect();
    for &(offset, size) in &blocks {
        assert!(heap.usable_size(offset).unwrap() >= size);
        assert_eq!(
            heap.usable_size(offset).unwrap(),
            SizeClassAllocator::rounded_size(size)
        );
    }
    let stats = heap.stats();
    assert_eq!(stats.live_allocations, sizes.len() as u64 + 1);
    assert_eq!(
        stats.allocated_bytes,
        sizes.iter().sum::<usize>() as u64 + 100
    );
    heap.check().unwrap();
    for (offset, _) in blocks {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
    }
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free_offset(&ctx(), b) }.unwrap();
    let stats = heap.stats();
    assert_eq!((stats.live_allocations, stats.allocated_bytes), (0, 0));
    assert_eq!(stats.peak_bytes, sizes.iter().sum::<usize>() as u64 + 100);
    heap.check().unwrap();
    // Size 0 is served.
    let zero = heap.allocate_offset(&ctx(), 0, 1).unwrap();
    assert!(heap.usable_size(zero).unwrap() >= 1);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free_offset(&ctx(), zero) }.unwrap();
}

/// A heap filled with 64-byte blocks, all freed (by `free_all`) and then
/// taken whole by one block: memory freed at one size serves another.
pub fn memory_freed_at_one_size_is_reusable_at_another<A: PagedHeap>(
    free_all: impl FnOnce(&A, Vec<u64>),
) {
    let heap: A = private(4 << 20);
    let mut blocks = Vec::new();
    loop {
        match heap.allocate_offset(&ctx(), 64, 8) {
            Ok(offset) => blocks.push(offset),
            Err(error @ Error::OutOfMemory { requested, .. }) => {
                // The error speaks of the request, not of the page behind it.
                assert_eq!(requested, 64);
                assert!(error.to_string().contains("asked for 64 B"), "{error}");
                break;
            }
            Err(other) => panic!("{other}"),
        }
    }
    let capacity = heap.stats().capacity;
    assert!(
        blocks.len() as u64 * 64 > capacity * 9 / 10,
        "{} blocks",
        blocks.len()
    );
    heap.check().unwrap();
    free_all(&heap, blocks);
    heap.check().unwrap();
    let stats = heap.stats();
    assert_eq!(stats.largest_free_block, capacity, "{stats:?}");
    let data_area = heap.segment_of().size() - heap.segment_of().data_offset();
    assert!(
        capacity + 2 * PAGE > data_area,
        "capacity {capacity} of {data_area}"
    );
    // The largest block that fits: the whole heap, all pages back in one run.
    let big = heap.allocate_offset(&ctx(), capacity as usize, 8).unwrap();
    tag_block(&heap, big, capacity as usize, 1, 2);
    verify_block(&heap, big, capacity as usize);
    heap.check().unwrap();
    assert!(matches!(
        heap.allocate_offset(&ctx(), 64, 8),
        Err(Error::OutOfMemory { .. })
    ));
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free_offset(&ctx(), big) }.unwrap();
    // And back to small blocks again.
    let small = heap.allocate_offset(&ctx(), 64, 8).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free_offset(&ctx(), small) }.unwrap();
    heap.check().unwrap();
}

/// Four threads allocate, tag, verify and free, and hand blocks to each
/// other; `free_rest` frees (and verifies) what is left in the exchange
/// once they have exited.
pub fn threads_allocate_tag_and_free_each_others_blocks<A: PagedHeap>(
    free_rest: impl FnOnce(&A, Vec<(u64, usize)>),
) {
    let heap: A = private(32 << 20);
    let exchange: Mutex<Vec<(u64, usize)>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let mut handles = Vec::new();
        for thread in 0..4u64 {
            let heap = &heap;
            let exchange = &exchange;
            handles.push(scope.spawn(move || {
                let mut rng = thread * 7919 + 1;
                let mut mine: Vec<(u64, usize, u64)> = Vec::new();
                for seq in 0..20_000u64 {
                    rng = rng
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let pick = rng >> 33;
                    let size = if pick % 50 == 0 {
                        40_000 + (pick % 90_000) as usize
                    } else {
                        16 + (pick % 1500) as usize
                    };
                    let offset = heap.allocate_offset(&ctx(), size, 8).unwrap();
                    tag_block(heap, offset, size, thread, seq);
                    mine.push((offset, size, seq));
                    match pick % 4 {
                        0 | 3 if mine.len() > 64 => {
                            let (offset, size, seq) =
                                mine.swap_remove((pick as usize / 4) % mine.len());
                            assert_eq!(verify_block(heap, offset, size), (thread, seq));
                            // SAFETY: nothing uses the block after it is freed.
                            unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
                        }
                        1 => {
                            let (offset, size, _) = mine.pop().unwrap();
                            exchange.lock().unwrap().push((offset, size));
                        }
                        2 => {
                            let taken = exchange.lock().unwrap().pop();
                            if let Some((offset, size)) = taken {
                                verify_block(heap, offset, size);
                                // SAFETY: nothing uses the block after it is freed.
                                unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
                            }
                        }
                        _ => {}
                    }
                    // Keep the live set bounded.
                    while mine.len() > 128 {
                        let (offset, size, seq) =
                            mine.swap_remove((pick as usize / 8) % mine.len());
                        assert_eq!(verify_block(heap, offset, size), (thread, seq));
                        // SAFETY: nothing uses the block after it is freed.
                        unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
                    }
                }
                for (offset, size, seq) in mine {
                    assert_eq!(verify_block(heap, offset, size), (thread, seq));
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
                }
            }));
        }
        // Explicit joins wait for the threads' TLS destructors too.
        for handle in handles {
            handle.join().unwrap();
        }
    });
    free_rest(&heap, exchange.into_inner().unwrap());
    let stats = heap.stats();
    assert_eq!((stats.live_allocations, stats.allocated_bytes), (0, 0));
    heap.check().unwrap();
    // Every page came back: one block of the whole capacity fits.
    let all = heap
        .allocate_offset(&ctx(), stats.capacity as usize, 8)
        .unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free_offset(&ctx(), all) }.unwrap();
}

/// Fills a block with a pattern derived from (owner, seq): word 0 = owner,
/// word 1 = seq, then a mix of both and the word index.
pub fn tag_block(heap: &dyn ShmAllocator, offset: u64, size: usize, owner: u64, seq: u64) {
    let ptr = heap.full_ptr(offset).unwrap().as_ptr() as *mut u64;
    for i in 0..size / 8 {
        let value = match i {
            0 => owner,
            1 => seq,
            _ => mix(owner, seq, i as u64),
        };
        // SAFETY: inside the live block of `size` bytes; 8-aligned.
        unsafe { ptr.add(i).write(value) };
    }
}

/// Checks a tagged block and returns its (owner, seq).
pub fn verify_block(heap: &dyn ShmAllocator, offset: u64, size: usize) -> (u64, u64) {
    let ptr = heap.full_ptr(offset).unwrap().as_ptr() as *const u64;
    // SAFETY: inside the live block; 8-aligned.
    let (owner, seq) = unsafe { (ptr.read(), ptr.add(1).read()) };
    for i in 2..size / 8 {
        // SAFETY: as above.
        let value = unsafe { ptr.add(i).read() };
        assert_eq!(
            value,
            mix(owner, seq, i as u64),
            "block at {offset} (owner {owner}, seq {seq}) overwritten at word {i}"
        );
    }
    (owner, seq)
}

pub fn mix(owner: u64, seq: u64, i: u64) -> u64 {
    (owner.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ seq.rotate_left(17) ^ i.wrapping_mul(0x2545_f491))
        | 1
}

pub fn bad_frees_are_refused_and_change_nothing<A: PagedHeap>() {
    let heap = private::<A>(2 << 20);
    let small = heap.allocate_offset(&ctx(), 64, 8).unwrap();
    let other = heap.allocate_offset(&ctx(), 64, 8).unwrap();
    let large = heap.allocate_offset(&ctx(), 3 * PAGE as usize, 8).unwrap();
    let freed = heap.allocate_offset(&ctx(), 300, 8).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free_offset(&ctx(), freed) }.unwrap();
    let before: AllocStats = heap.stats();
    let size = heap.segment_of().size();
    let bogus = [
        0,
        1,
        small + 1,
        small + 8,
        small + 32,     // the middle of a live block
        other - 64 * 4, // a never-allocated block boundary of a page in use
        freed,          // double free
        large + 8,
        large + PAGE, // a tail page of a large block
        large + 5 * PAGE,
        size + 64,
        u64::MAX,
        heap.segment_of().data_offset(), // the page table
    ];
    for offset in bogus {
        // SAFETY: nothing uses the block after it is freed.
        let result = unsafe { heap.free_offset(&ctx(), offset) };
        assert!(
            matches!(result, Err(Error::InvalidFree { offset: o }) if o == offset),
            "free({offset}) gave {result:?}"
        );
        assert_eq!(heap.stats(), before, "free({offset}) changed the stats");
        heap.check().unwrap();
    }
    // The live blocks are still live and freeable exactly once.
    for offset in [small, other, large] {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
        assert!(matches!(
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free_offset(&ctx(), offset) },
            Err(Error::InvalidFree { .. })
        ));
    }
    assert!(heap.usable_size(small).is_err());
    heap.check().unwrap();
}

pub fn alignment_of_every_power_of_two<A: PagedHeap>() {
    let heap = private::<A>(8 << 20);
    assert!(heap.segment_of().max_align() >= 4096);
    let mut blocks = Vec::new();
    for shift in 0..=12 {
        let align = 1usize << shift;
        for size in [1usize, 24, 100, 3000, 5000, 40_000] {
            let offset = heap.allocate_offset(&ctx(), size, align).unwrap();
            let ptr = heap.full_ptr(offset).unwrap();
            assert_eq!(
                offset % align as u64,
                0,
                "offset, size {size} align {align}"
            );
            assert_eq!(
                ptr.as_ptr() as usize % align,
                0,
                "address, size {size} align {align}"
            );
            blocks.push(offset);
        }
    }
    for bad in [3usize, 24, heap.segment_of().max_align() * 2] {
        assert!(matches!(
            heap.allocate_offset(&ctx(), 8, bad),
            Err(Error::InvalidAlignment { .. })
        ));
    }
    heap.check().unwrap();
    for offset in blocks {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
    }
    heap.check().unwrap();
}

pub fn out_of_memory_then_growth<A: PagedHeap>(tag: &str) {
    // A fixed segment runs out.
    let heap = private::<A>(1 << 20);
    let mut blocks = Vec::new();
    let error = loop {
        match heap.allocate_offset(&ctx(), 10_000, 8) {
            Ok(offset) => blocks.push(offset),
            Err(e) => break e,
        }
    };
    assert!(matches!(error, Error::OutOfMemory { .. }), "{error}");
    let too_big = heap.allocate_offset(&ctx(), 64 << 20, 8);
    assert!(
        matches!(too_big, Err(Error::OutOfMemory { requested, .. }) if requested == 64 << 20),
        "{too_big:?}"
    );
    heap.check().unwrap();

    // A segment with room grows instead, for small and large blocks alike.
    let (options, _cleanup) = fresh_shm(tag);
    let heap = A::create(&options.size(256 << 10).max_size(16 << 20)).unwrap();
    let start = heap.segment_of().size();
    let mut blocks = Vec::new();
    for seq in 0..200u64 {
        let size = if seq % 10 == 0 { 100_000 } else { 3000 };
        let offset = heap.allocate_offset(&ctx(), size, 8).unwrap();
        tag_block(&heap, offset, size, 7, seq);
        blocks.push((offset, size));
    }
    assert!(heap.segment_of().size() > start, "the segment never grew");
    for (seq, &(offset, size)) in blocks.iter().enumerate() {
        assert_eq!(verify_block(&heap, offset, size), (7, seq as u64));
    }
    heap.check().unwrap();
    // Past the maximum: out of memory, nothing changed.
    let before = heap.stats();
    assert!(matches!(
        heap.allocate_offset(&ctx(), 32 << 20, 8),
        Err(Error::OutOfMemory { .. })
    ));
    assert_eq!(heap.stats(), before);
}

/// The mailbox through which processes pass blocks for others to free.
pub fn mailbox(segment: &Segment) -> &[AtomicU64] {
    let offset = segment
        .root::<AtomicU64>("mailbox")
        .expect("published by the parent");
    let ptr = segment.resolve_array(offset, MAILBOX as u64).unwrap();
    // SAFETY: resolved for MAILBOX atomics; lives as long as the segment.
    unsafe { std::slice::from_raw_parts(ptr.as_ptr(), MAILBOX) }
}

#[derive(Clone, Debug)]
pub enum Op {
    Alloc(usize, u32),
    Free(usize),
    Realloc(usize, usize),
}

pub fn op() -> impl Strategy<Value = Op> {
    let size = prop_oneof![8 => 0usize..600, 2 => 600usize..40_000, 1 => 40_000usize..200_000];
    prop_oneof![
        4 => (size.clone(), 0u32..=12).prop_map(|(s, a)| Op::Alloc(s, a)),
        3 => any::<usize>().prop_map(Op::Free),
        2 => (any::<usize>(), size).prop_map(|(i, s)| Op::Realloc(i, s)),
    ]
}

/// Random allocate / free / reallocate sequences against a model: no two
/// live blocks overlap, contents survive, accounting is exact, `check()` holds.
pub fn random_sequence_matches_a_model<A: PagedHeap>(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let heap = private::<A>(2 << 20);
    // offset -> (size, fill byte)
    let mut model: HashMap<u64, (usize, u8)> = HashMap::new();
    let mut fill = 0u8;
    for op in ops {
        fill = fill.wrapping_add(1);
        match op {
            Op::Alloc(size, shift) => {
                match heap.allocate_offset(&ctx(), size, 1 << shift) {
                    Ok(offset) => {
                        prop_assert_eq!(offset % (1u64 << shift), 0);
                        let ptr = heap.full_ptr(offset).unwrap().as_ptr();
                        // SAFETY: `size` bytes of a fresh block.
                        unsafe { std::ptr::write_bytes(ptr, fill, size) };
                        model.insert(offset, (size, fill));
                    }
                    Err(Error::OutOfMemory { .. }) => {}
                    Err(other) => prop_assert!(false, "{}", other),
                }
            }
            Op::Free(pick) if !model.is_empty() => {
                let mut keys: Vec<u64> = model.keys().copied().collect();
                keys.sort_unstable();
                let offset = keys[pick % keys.len()];
                // SAFETY: nothing uses the block after it is freed.
                unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
                model.remove(&offset);
                // SAFETY: a second free of a freed block, which is refused.
                let again = unsafe { heap.free_offset(&ctx(), offset) };
                prop_assert!(again.is_err());
            }
            Op::Realloc(pick, new_size) if !model.is_empty() => {
                let mut keys: Vec<u64> = model.keys().copied().collect();
                keys.sort_unstable();
                let offset = keys[pick % keys.len()];
                let (size, byte) = model[&offset];
                let ptr = heap.full_ptr(offset).unwrap();
                // SAFETY: nothing uses the block after it is freed.
                match unsafe { heap.reallocate(ptr, new_size) } {
                    Ok(moved) => {
                        let kept = size.min(new_size);
                        // SAFETY: `kept` bytes of a live block.
                        let bytes = unsafe { std::slice::from_raw_parts(moved.as_ptr(), kept) };
                        prop_assert!(bytes.iter().all(|&b| b == byte));
                        // SAFETY: `new_size` bytes of the block.
                        unsafe { std::ptr::write_bytes(moved.as_ptr(), byte, new_size) };
                        model.remove(&offset);
                        model.insert(moved.offset().raw(), (new_size, byte));
                    }
                    Err(Error::OutOfMemory { .. }) => {
                        prop_assert!(heap.usable_size(offset).is_ok());
                    }
                    Err(other) => prop_assert!(false, "{}", other),
                }
            }
            _ => {}
        }
        // No two live blocks overlap, and their contents are intact.
        let mut spans: Vec<(u64, u64)> = model
            .keys()
            .map(|&o| (o, heap.usable_size(o).unwrap() as u64))
            .collect();
        spans.sort_unstable();
        for pair in spans.windows(2) {
            prop_assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{:?}", pair);
        }
        for (&offset, &(size, byte)) in &model {
            let ptr = heap.full_ptr(offset).unwrap().as_ptr();
            // SAFETY: `size` bytes of a live block.
            let bytes = unsafe { std::slice::from_raw_parts(ptr, size) };
            prop_assert!(bytes.iter().all(|&b| b == byte), "block {} changed", offset);
        }
        let stats = heap.stats();
        prop_assert_eq!(stats.live_allocations, model.len() as u64);
        prop_assert_eq!(
            stats.allocated_bytes,
            model.values().map(|v| v.0 as u64).sum::<u64>()
        );
        prop_assert!(heap.check().is_ok(), "{:?}", heap.check());
    }
    Ok(())
}

/// Worker processes of the cross-process tests.
pub const PROCESSES: u64 = 3;

/// One worker process of [`share_between_processes`]: waits for the others,
/// then allocates, tags, checks and frees 10,000 blocks, posting some to the
/// mailbox for another process to free and freeing what others posted.
/// Returns how many blocks of another process it freed.
pub fn exchange_blocks<A: PagedHeap>(heap: &A, worker: u64) -> u64 {
    let mailbox = mailbox(heap.segment_of());
    // Start together, so the processes really race (slot 0 counts arrivals).
    mailbox[0].fetch_add(1, Ordering::AcqRel);
    let started = std::time::Instant::now();
    while mailbox[0].load(Ordering::Acquire) < PROCESSES {
        assert!(started.elapsed().as_secs() < 30, "the others never arrived");
        std::hint::spin_loop();
    }
    let pid = u64::from(std::process::id());
    let mut rng = worker * 104_729 + pid;
    let mut mine: Vec<(u64, usize, u64)> = Vec::new();
    let mut freed_foreign = 0;
    for seq in 0..10_000u64 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let pick = rng >> 33;
        let size = if pick % 64 == 0 {
            33_000 + (pick % 100_000) as usize
        } else {
            (16 + (pick % 2000) as usize) & !7
        };
        let offset = heap.allocate_offset(&ctx(), size, 8).unwrap();
        tag_block(heap, offset, size, pid, seq);
        mine.push((offset, size, seq));
        let slot = &mailbox[1 + (pick as usize / 7) % (MAILBOX - 1)];
        match pick % 5 {
            0 | 1 => {
                let (offset, size, seq) = mine.swap_remove((pick as usize / 5) % mine.len());
                assert_eq!(verify_block(heap, offset, size), (pid, seq));
                // SAFETY: nothing uses the block after it is freed.
                unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
            }
            2 => {
                // Post a block (offset and size) for another process.
                let (offset, size, _) = *mine.last().unwrap();
                let word = offset << 20 | size as u64;
                if slot
                    .compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    mine.pop();
                }
            }
            3 => {
                let word = slot.swap(0, Ordering::AcqRel);
                if word != 0 {
                    let (offset, size) = (word >> 20, (word & 0xfffff) as usize);
                    let (owner, _) = verify_block(heap, offset, size);
                    if owner != pid {
                        freed_foreign += 1;
                    }
                    // SAFETY: nothing uses the block after it is freed.
                    unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
                }
            }
            _ => {}
        }
        while mine.len() > 256 {
            let (offset, size, seq) = mine.swap_remove((pick as usize / 8) % mine.len());
            assert_eq!(verify_block(heap, offset, size), (pid, seq));
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
        }
    }
    for (offset, size, seq) in mine {
        assert_eq!(verify_block(heap, offset, size), (pid, seq));
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx(), offset) }.unwrap();
    }
    freed_foreign
}

/// Creates a shared segment managed by `A`, publishes a mailbox in it, runs
/// [`PROCESSES`] copies of the ignored test `child_test` (each calling
/// [`exchange_blocks`] and printing `freed-foreign N`), then frees what they
/// left in the mailbox. Returns the parent's view, every block given back,
/// and the guard that removes the segment.
pub fn share_between_processes<A: PagedHeap>(tag: &str, child_test: &str) -> (A, Cleanup) {
    let (options, cleanup) = fresh_shm(tag);
    let parent = A::create(&options.clone().size(1 << 20).max_size(64 << 20)).unwrap();
    // The mailbox itself comes from the allocator.
    let words = parent.allocate_offset(&ctx(), MAILBOX * 8, 8).unwrap();
    let ptr = parent.full_ptr(words).unwrap().as_ptr();
    // SAFETY: a fresh block of MAILBOX words.
    unsafe { std::ptr::write_bytes(ptr, 0, MAILBOX * 8) };
    parent
        .segment_of()
        .set_root("mailbox", shmkit::Offset::<AtomicU64>::from_raw(words))
        .unwrap();
    // Another kind is refused on attach.
    assert!(matches!(
        StackAllocator::attach(&options),
        Err(Error::WrongAllocator { .. })
    ));
    let children = spawn_workers(child_test, &shm_name(&options), PROCESSES as usize);
    let mut foreign = 0u64;
    for (worker, child) in children.into_iter().enumerate() {
        let stdout = worker_stdout(worker, child);
        let line = stdout
            .lines()
            .find_map(|l| l.split("freed-foreign ").nth(1))
            .expect("the worker reports");
        foreign += line.trim().parse::<u64>().unwrap();
    }
    // The parent frees what is left in the mailbox, written by the children.
    let mut left = 0;
    for slot in &mailbox(parent.segment_of())[1..] {
        let word = slot.swap(0, Ordering::AcqRel);
        if word != 0 {
            let (offset, size) = (word >> 20, (word & 0xfffff) as usize);
            verify_block(&parent, offset, size);
            // SAFETY: nothing uses the block after it is freed.
            unsafe { parent.free_offset(&ctx(), offset) }.unwrap();
            left += 1;
        }
    }
    eprintln!("blocks freed by another process: {foreign} + {left} by the parent");
    // The workers started together and each took from the mailbox about
    // 2,000 times while the others posted: some of what they freed must
    // be another process's block.
    assert!(
        foreign > 0,
        "no worker freed a block another process allocated"
    );
    // SAFETY: nothing uses the block after it is freed.
    unsafe { parent.free_offset(&ctx(), words) }.unwrap();
    (parent, cleanup)
}
