//! Arbitrary offsets on a sound allocator: a fresh segment of one freeing
//! allocator kind, with live and freed blocks, gets a sequence of frees,
//! size and pointer look-ups and allocations at offsets the input picks.
//! A free of a live block must succeed; a free of anything else must be
//! refused and change nothing; a look-up of a live block must describe it;
//! no block may be handed out over a live one (each is filled with a tag
//! and verified before it is freed); and at the end `check()` passes and,
//! once the live blocks are freed, nothing is allocated.
//!
//! Input: one byte choosing the kind, then operations of 9 bytes each,
//! `[op][value: 8 bytes LE]`. The op's low 2 bits pick the call (free,
//! usable size, pointer, allocate); bits 2-3 how `value` becomes an
//! offset: as it is, modulo the segment size, or a small step from a live
//! block (the likeliest to fool a check).
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use shmkit::{MemContext, SegmentOptions, ShmAllocator};
use shmkit_fuzz::{populated, take_le, FREEING, SEGMENT};

/// Live blocks this target tracks at most: bounds the work per input.
const MAX_LIVE: usize = 256;

/// What the harness knows of a live block.
struct Block {
    size: usize,
    tag: u8,
}

fn tag_block(alloc: &dyn ShmAllocator, offset: u64, block: &Block) {
    let at = alloc.full_ptr(offset).expect("a live block resolves");
    // SAFETY: a live block of at least `size` bytes, ours alone.
    unsafe { std::ptr::write_bytes(at.as_ptr(), block.tag, block.size) };
}

fn verify_block(alloc: &dyn ShmAllocator, offset: u64, block: &Block) {
    let at = alloc.full_ptr(offset).expect("a live block resolves");
    // SAFETY: a live block of at least `size` bytes, ours alone.
    let bytes = unsafe { std::slice::from_raw_parts(at.as_ptr(), block.size) };
    if let Some(byte) = bytes.iter().position(|&b| b != block.tag) {
        panic!("the live block at {offset} was overwritten at byte {byte}");
    }
}

fn free_live(alloc: &dyn ShmAllocator, ctx: &MemContext, offset: u64, block: &Block) {
    verify_block(alloc, offset, block);
    // SAFETY: the fuzzer keeps no pointer into a block.
    if let Err(error) = unsafe { alloc.free_offset(ctx, offset) } {
        panic!("freeing the live block at {offset} failed: {error}");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut ops)) = data.split_first() else {
        return;
    };
    let kind = FREEING[selector as usize % FREEING.len()];
    let (heap, set_up) = populated(kind, &SegmentOptions::private());
    let alloc = heap.as_shm_allocator().expect("a freeing allocator");
    let base = heap.segment().base().as_ptr() as usize;
    let ctx = MemContext::default();

    let mut live: BTreeMap<u64, Block> = BTreeMap::new();
    for (index, block) in set_up.iter().enumerate() {
        let tracked = Block {
            size: block.size,
            tag: index as u8 ^ 0xa5,
        };
        tag_block(alloc, block.offset, &tracked);
        live.insert(block.offset, tracked);
    }

    let mut sequence = 0u8;
    while let (Some(op), Some(value)) = (take_le::<1>(&mut ops), take_le::<8>(&mut ops)) {
        let offset = match (op >> 2) & 3 {
            0 => value,
            1 => value % SEGMENT,
            _ => match live.keys().nth((value >> 8) as usize % live.len().max(1)) {
                Some(&block) => block.wrapping_add_signed(i64::from(value as u8 as i8)),
                None => value,
            },
        };
        match op & 3 {
            0 => match live.remove(&offset) {
                Some(block) => free_live(alloc, &ctx, offset, &block),
                None => {
                    let before = alloc.stats();
                    // SAFETY: not a live block: refused, nothing freed.
                    let refused = unsafe { alloc.free_offset(&ctx, offset) };
                    assert!(
                        refused.is_err(),
                        "freed {offset}, which is not a live block"
                    );
                    assert_eq!(
                        alloc.stats(),
                        before,
                        "a refused free of {offset} changed the accounting"
                    );
                }
            },
            1 => {
                let usable = alloc.usable_size(offset);
                if let Some(block) = live.get(&offset) {
                    match usable {
                        Ok(usable) => assert!(
                            usable >= block.size,
                            "the block at {offset} has {usable} usable bytes, {} were asked for",
                            block.size
                        ),
                        Err(error) => panic!("usable_size of the live block at {offset}: {error}"),
                    }
                }
            }
            2 => {
                let resolved = alloc.full_ptr(offset);
                if live.contains_key(&offset) {
                    match resolved {
                        Ok(at) => assert_eq!(
                            at.as_ptr() as usize,
                            base + offset as usize,
                            "the live block at {offset} resolves elsewhere"
                        ),
                        Err(error) => panic!("full_ptr of the live block at {offset}: {error}"),
                    }
                }
            }
            _ => {
                if live.len() >= MAX_LIVE {
                    continue;
                }
                let size = (value % 6000) as usize + 1;
                let align = 1usize << ((value >> 32) % 8);
                let Ok(fresh) = alloc.allocate_offset(&ctx, size, align) else {
                    continue; // out of memory, or a size this kind has no room for
                };
                assert_eq!(fresh % align as u64, 0, "{fresh} is not {align}-aligned");
                let overlapping = live
                    .range(..fresh + size as u64)
                    .next_back()
                    .filter(|(&start, block)| start + block.size as u64 > fresh);
                if let Some((start, block)) = overlapping {
                    panic!(
                        "allocated {fresh}..+{size} over the live block {start}..+{}",
                        block.size
                    );
                }
                sequence = sequence.wrapping_add(1);
                let block = Block {
                    size,
                    tag: sequence,
                };
                tag_block(alloc, fresh, &block);
                live.insert(fresh, block);
            }
        }
    }

    if let Err(error) = alloc.check() {
        panic!("check after the operations: {error}");
    }
    for (offset, block) in std::mem::take(&mut live) {
        free_live(alloc, &ctx, offset, &block);
    }
    assert_eq!(
        alloc.stats().live_allocations,
        0,
        "blocks left after freeing every live one"
    );
    if let Err(error) = alloc.check() {
        panic!("check after freeing every block: {error}");
    }
});
