//! What the fuzz targets share: segments of every allocator kind with live
//! and freed blocks in them, the set-up the hostile-bytes test uses.
#![deny(unsafe_op_in_unsafe_fn)]

use shmkit::{AllocatorKind, AnyAllocator, LinearAlloc, MemContext, SegmentOptions};

/// Segment size for every target: room for the size-class pages.
pub const SEGMENT: u64 = 4 << 20;

/// The allocators that free single blocks.
pub const FREEING: [AllocatorKind; 5] = [
    AllocatorKind::Pool,
    AllocatorKind::FreeList,
    AllocatorKind::Buddy,
    AllocatorKind::SizeClass,
    AllocatorKind::ThreadLocal,
];

/// A block the set-up left live: its offset and the size asked for.
#[derive(Clone, Copy, Debug)]
pub struct LiveBlock {
    /// Where the block starts.
    pub offset: u64,
    /// The bytes asked for (the block may have more).
    pub size: usize,
}

/// Creates a segment of `kind` (of [`SEGMENT`] bytes) and leaves live and
/// freed blocks in it, so free lists, bitmaps and caches are not trivial.
/// A failure here is the harness's, not the input's: it panics.
pub fn populated(kind: AllocatorKind, options: &SegmentOptions) -> (AnyAllocator, Vec<LiveBlock>) {
    let heap = AnyAllocator::create(kind, &options.clone().size(SEGMENT)).expect("create");
    let carve = |linear: &dyn Fn(usize) -> shmkit::Result<u64>| -> Vec<LiveBlock> {
        [24usize, 100, 7, 512]
            .into_iter()
            .map(|size| LiveBlock {
                offset: linear(size).expect("carve"),
                size,
            })
            .collect()
    };
    let live = match &heap {
        AnyAllocator::Bump(bump) => carve(&|size| Ok(bump.alloc_handle(size, 8)?.raw())),
        AnyAllocator::Stack(stack) => carve(&|size| Ok(stack.alloc_handle(size, 8)?.raw())),
        other => {
            let alloc = other.as_shm_allocator().expect("frees blocks");
            let ctx = MemContext::default();
            let mut blocks: Vec<LiveBlock> = [16usize, 40, 64, 200, 1000, 3000, 24, 64, 128, 4096]
                .into_iter()
                .map(|size| LiveBlock {
                    offset: alloc.allocate_offset(&ctx, size, 8).expect("allocate"),
                    size,
                })
                .collect();
            // Free every other block: the freed ones are the likeliest
            // double frees.
            let mut index = 0;
            blocks.retain(|block| {
                index += 1;
                index % 2 == 0 || {
                    // SAFETY: the fuzzer keeps no pointer into a block.
                    unsafe { alloc.free_offset(&ctx, block.offset) }.expect("free");
                    false
                }
            });
            blocks
        }
    };
    (heap, live)
}

/// Reads a little-endian number of `N` bytes (N ≤ 8) off the front of
/// `input`, or `None` when it is too short.
pub fn take_le<const N: usize>(input: &mut &[u8]) -> Option<u64> {
    let (head, rest) = input.split_first_chunk::<N>()?;
    *input = rest;
    let mut word = [0u8; 8];
    word[..N].copy_from_slice(head);
    Some(u64::from_le_bytes(word))
}
