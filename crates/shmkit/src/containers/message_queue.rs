//! The message queue: a segment managed by the size-class allocator that
//! holds an MPMC ring of message cells; each message's bytes live in a
//! block of the segment, and its cell carries the block's offset and length.
//! Python's `shmkit.Queue` and the C API's `shmkit_queue` are this format,
//! so a C producer and a Python consumer share one queue.
//!
//! A process killed at any instruction leaves the queue usable: the ring
//! repairs a cell a dead process had claimed (its own message is lost), and
//! the block of a message it was filling or reading stays allocated until a
//! recovery pass frees every block no waiting message names.

use std::sync::Arc;

use crate::alloc::{SegmentAllocator, ShmAllocator, SizeClassAllocator};
use crate::containers::{MpmcHandle, MpmcRing};
use crate::error::{Error, Result};
use crate::ptr::{FullPtr, Offset};
use crate::segment::SegmentOptions;

/// Where the ring's offset is published in the segment.
pub const QUEUE_ROOT: &str = "shmkit.queue.ring";
/// Cells of an unbounded queue's ring (`maxsize` 0).
pub const UNBOUNDED_CELLS: usize = 1 << 16;
/// The flag in a cell's length word: the bytes are a Python pickle.
pub const PICKLED: u64 = 1 << 63;

crate::shm_struct! {
    /// One message: where its bytes are, and how many (with [`PICKLED`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct MessageCell {
        /// The offset of the block that holds the bytes.
        pub offset: u64,
        /// The number of bytes, with [`PICKLED`] for a pickle.
        pub len: u64,
    }
}

/// A queue's segment, attached: the allocator and the ring over it.
pub struct MessageQueue {
    // Declared first, so dropped first: it borrows `heap`.
    ring: MpmcHandle<'static, MessageCell>,
    heap: Arc<SizeClassAllocator>,
    /// The ring's own block, which no cell may name.
    ring_block: u64,
}

impl std::fmt::Debug for MessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageQueue")
            .field("segment", self.heap.segment())
            .field("waiting", &self.ring.len())
            .field("cells", &self.ring.capacity())
            .finish()
    }
}

impl MessageQueue {
    /// Creates the queue's segment: `capacity` bytes for the messages
    /// waiting, and a ring of `maxsize` cells rounded up to a power of two
    /// (0: [`UNBOUNDED_CELLS`]).
    pub fn create(options: &SegmentOptions, capacity: u64, maxsize: usize) -> Result<MessageQueue> {
        let cells = if maxsize == 0 {
            UNBOUNDED_CELLS
        } else {
            maxsize
                .max(2)
                .checked_next_power_of_two()
                .ok_or_else(|| Error::invalid_size(format!("maxsize {maxsize} is too large")))?
        };
        let ring_bytes = MpmcRing::<MessageCell>::bytes_for(cells)? as u64;
        // The messages' bytes, the ring (twice: its block may not share a
        // page), and room for the page table and page rounding, so that a
        // small capacity is served as asked.
        let size = capacity
            .checked_add(2 * ring_bytes + 2 * SizeClassAllocator::PAGE_SIZE)
            .ok_or_else(|| Error::invalid_size(format!("a capacity of {capacity} bytes")))?;
        let heap = SizeClassAllocator::create(&options.clone().size(size))?;
        let ring = MpmcRing::<MessageCell>::create(&heap, cells)?;
        heap.segment().set_root(QUEUE_ROOT, ring)?;
        MessageQueue::new(heap, ring)
    }

    /// Attaches a queue another process made.
    pub fn attach(options: &SegmentOptions) -> Result<MessageQueue> {
        let heap = SizeClassAllocator::attach(options)?;
        let ring = heap
            .segment()
            .root(QUEUE_ROOT)
            .ok_or_else(|| Error::CorruptHeader {
                reason: format!(
                    "segment `{}` holds no shmkit queue",
                    options.location().display_name()
                ),
            })?;
        MessageQueue::new(heap, ring)
    }

    fn new(
        heap: SizeClassAllocator,
        ring_at: Offset<MpmcRing<MessageCell>>,
    ) -> Result<MessageQueue> {
        let heap = Arc::new(heap);
        // SAFETY: the Arc's allocation never moves and outlives `ring`,
        // which is declared before it and so dropped first; an Arc (unlike
        // a Box) asserts no uniqueness when it moves.
        let heap_ref: &'static SizeClassAllocator = unsafe { &*Arc::as_ptr(&heap) };
        // SAFETY: the root names the ring `create` made in this queue's
        // segment, reached only through ring handles and never destroyed.
        let ring = unsafe { MpmcRing::open(heap_ref, ring_at)? };
        Ok(MessageQueue {
            ring,
            heap,
            ring_block: ring_at.raw(),
        })
    }

    /// The allocator of the message blocks.
    pub fn heap(&self) -> &SizeClassAllocator {
        &self.heap
    }

    /// The ring of cells.
    pub fn ring(&self) -> &MpmcHandle<'static, MessageCell> {
        &self.ring
    }

    /// The ring's own block (no cell may name it).
    pub fn ring_block(&self) -> u64 {
        self.ring_block
    }

    /// The message a popped cell names, checked: a live block of the queue
    /// (not the ring's own) that holds the cell's length. Returns the block,
    /// the length and whether the bytes are a pickle. A cell that fails the
    /// check is corruption: its message is lost.
    pub fn message(&self, cell: MessageCell) -> Result<(FullPtr<u8>, usize, bool)> {
        let len = (cell.len & !PICKLED) as usize;
        let checked = (cell.offset != self.ring_block)
            .then(|| {
                let usable = self.heap.usable_size(cell.offset).ok()?;
                let block = self.heap.full_ptr(cell.offset).ok()?;
                (usable >= len).then_some(block)
            })
            .flatten();
        match checked {
            Some(block) => Ok((block, len, cell.len & PICKLED != 0)),
            None => Err(Error::CorruptData {
                what: "message queue",
                reason: format!(
                    "a queue cell names no message block (offset {}, {len} bytes)",
                    cell.offset
                ),
            }),
        }
    }
}
