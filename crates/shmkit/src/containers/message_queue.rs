//! The message queues: a segment managed by the size-class allocator that
//! holds a ring of message cells; each message's bytes live in a block of
//! the segment, and its cell carries the block's offset and length.
//!
//! - [`MessageQueue`] is the MPMC queue: any number of processes put and
//!   get. Python's `shmkit.Queue` and the C API's `shmkit_queue` are this
//!   format, so a C producer and a Python consumer share one queue.
//! - [`SpscMessageQueue`] is the single-producer single-consumer queue (the
//!   C API's `shmkit_spsc`): one handle holds the producer role and one the
//!   consumer role, across all processes, and a put or get is wait-free.
//!
//! A process killed at any instruction leaves either queue usable: the
//! MPMC ring repairs a cell a dead process had claimed (its own message is
//! lost), and a dead endpoint's SPSC role is taken over by the next handle
//! of that role. The block of a message a dead process was filling or
//! reading stays allocated until a recovery pass (`recover` on either
//! queue; Python's `Queue.recover`, C's `shmkit_queue_recover` and
//! `shmkit_spsc_recover`) frees every block no waiting message names.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::alloc::{RecoveryReport, SegmentAllocator, ShmAllocator, SizeClassAllocator};
use crate::containers::{MpmcHandle, MpmcRing, SpscConsumer, SpscProducer, SpscRing};
use crate::error::{Error, Result};
use crate::os::process::current_pid;
use crate::ptr::{FullPtr, Offset};
use crate::segment::SegmentOptions;

/// Where the MPMC queue's ring offset is published in the segment.
pub const QUEUE_ROOT: &str = "shmkit.queue.ring";
/// Where the SPSC queue's ring offset is published in the segment.
pub const SPSC_QUEUE_ROOT: &str = "shmkit.spsc_queue.ring";
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

/// What both queues hold besides their ring: the allocator of the message
/// blocks, shared by the ring's borrow, and the ring's own block.
struct MessageBlocks {
    heap: Arc<SizeClassAllocator>,
    /// The ring's own block, which no cell may name.
    ring_block: u64,
}

impl MessageBlocks {
    /// The ring's cells: `maxsize` rounded up to a power of two (0:
    /// [`UNBOUNDED_CELLS`]).
    fn cells_for(maxsize: usize) -> Result<usize> {
        if maxsize == 0 {
            return Ok(UNBOUNDED_CELLS);
        }
        maxsize
            .max(2)
            .checked_next_power_of_two()
            .ok_or_else(|| Error::invalid_size(format!("maxsize {maxsize} is too large")))
    }

    /// Creates the segment: room for `capacity` bytes of messages and a
    /// ring of `ring_bytes`, whose offset `make_ring` publishes under
    /// `root`.
    fn create<R>(
        options: &SegmentOptions,
        capacity: u64,
        ring_bytes: usize,
        root: &str,
        make_ring: impl FnOnce(&SizeClassAllocator) -> Result<Offset<R>>,
    ) -> Result<(SizeClassAllocator, Offset<R>)> {
        // The messages' bytes, the ring (twice: its block may not share a
        // page), and room for the page table and page rounding, so that a
        // small capacity is served as asked.
        let size = capacity
            .checked_add(2 * ring_bytes as u64 + 2 * SizeClassAllocator::PAGE_SIZE)
            .ok_or_else(|| Error::invalid_size(format!("a capacity of {capacity} bytes")))?;
        let heap = SizeClassAllocator::create(&options.clone().size(size))?;
        let ring = make_ring(&heap)?;
        heap.segment().set_root(root, ring)?;
        Ok((heap, ring))
    }

    /// Attaches a queue's segment and finds its ring under `root`.
    fn attach<R>(
        options: &SegmentOptions,
        root: &str,
        what: &str,
    ) -> Result<(SizeClassAllocator, Offset<R>)> {
        let heap = SizeClassAllocator::attach(options)?;
        let ring = heap
            .segment()
            .root(root)
            .ok_or_else(|| Error::CorruptHeader {
                reason: format!(
                    "segment `{}` holds no shmkit {what}",
                    options.location().display_name()
                ),
            })?;
        Ok((heap, ring))
    }

    /// Keeps `heap` where it never moves, and returns a borrow of it that
    /// the ring handle may hold for as long as `self` lives.
    ///
    /// # Safety
    ///
    /// The handle made from the borrow is dropped before `self` (declared
    /// before it in the owning struct).
    unsafe fn new<R>(
        heap: SizeClassAllocator,
        ring_at: Offset<R>,
    ) -> (MessageBlocks, &'static SizeClassAllocator) {
        let heap = Arc::new(heap);
        // SAFETY: the Arc's allocation never moves and outlives the borrow
        // (the caller's promise); an Arc (unlike a Box) asserts no
        // uniqueness when it moves.
        let heap_ref: &'static SizeClassAllocator = unsafe { &*Arc::as_ptr(&heap) };
        let blocks = MessageBlocks {
            heap,
            ring_block: ring_at.raw(),
        };
        (blocks, heap_ref)
    }

    /// See [`MessageQueue::recover`]; `waiting` visits the cells that
    /// wait in the ring.
    ///
    /// # Safety
    ///
    /// As for [`MessageQueue::recover`].
    unsafe fn recover(
        &self,
        force: bool,
        waiting: impl FnOnce(&mut dyn FnMut(MessageCell)),
    ) -> Result<QueueRecovery> {
        let _alone = self.heap.segment().lock_for_recovery(force)?;
        // SAFETY: no other process uses the segment (the recovery lock,
        // `force` aside) and no other thread of this one (the caller's
        // promise).
        let allocator = unsafe { self.heap.recovery_pass() }?;
        let mut named = HashSet::from([self.ring_block]);
        waiting(&mut |cell| {
            named.insert(cell.offset);
        });
        // SAFETY: as above; the ring and the waiting messages are named.
        let orphans_freed = unsafe { self.heap.free_unnamed(&named) }?;
        Ok(QueueRecovery {
            allocator,
            orphans_freed,
        })
    }

    /// See [`MessageQueue::message`].
    fn message(&self, cell: MessageCell) -> Result<(FullPtr<u8>, usize, bool)> {
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

/// What a queue's recovery pass did.
#[derive(Clone, Debug, Default)]
pub struct QueueRecovery {
    /// The allocator's own pass (locks taken over, blocks whose free never
    /// finished).
    pub allocator: RecoveryReport,
    /// Message blocks no waiting message named, freed: what processes that
    /// died were filling or reading.
    pub orphans_freed: u64,
}

/// A queue's segment, attached: the allocator and the MPMC ring over it.
pub struct MessageQueue {
    // Declared first, so dropped first: it borrows `blocks.heap`.
    ring: MpmcHandle<'static, MessageCell>,
    blocks: MessageBlocks,
}

impl std::fmt::Debug for MessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageQueue")
            .field("segment", self.blocks.heap.segment())
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
        let cells = MessageBlocks::cells_for(maxsize)?;
        let ring_bytes = MpmcRing::<MessageCell>::bytes_for(cells)?;
        let (heap, ring) =
            MessageBlocks::create(options, capacity, ring_bytes, QUEUE_ROOT, |heap| {
                MpmcRing::<MessageCell>::create(heap, cells)
            })?;
        MessageQueue::new(heap, ring)
    }

    /// Attaches a queue another process made.
    pub fn attach(options: &SegmentOptions) -> Result<MessageQueue> {
        let (heap, ring) = MessageBlocks::attach(options, QUEUE_ROOT, "queue")?;
        MessageQueue::new(heap, ring)
    }

    fn new(
        heap: SizeClassAllocator,
        ring_at: Offset<MpmcRing<MessageCell>>,
    ) -> Result<MessageQueue> {
        // SAFETY: `ring` is declared before `blocks`, so dropped first.
        let (blocks, heap) = unsafe { MessageBlocks::new(heap, ring_at) };
        // SAFETY: the root names the ring `create` made in this queue's
        // segment, reached only through ring handles and never destroyed.
        let ring = unsafe { MpmcRing::open(heap, ring_at)? };
        Ok(MessageQueue { ring, blocks })
    }

    /// The allocator of the message blocks.
    pub fn heap(&self) -> &SizeClassAllocator {
        &self.blocks.heap
    }

    /// The ring of cells.
    pub fn ring(&self) -> &MpmcHandle<'static, MessageCell> {
        &self.ring
    }

    /// The ring's own block (no cell may name it).
    pub fn ring_block(&self) -> u64 {
        self.blocks.ring_block
    }

    /// The message a popped cell names, checked: a live block of the queue
    /// (not the ring's own) that holds the cell's length. Returns the block,
    /// the length and whether the bytes are a pickle. A cell that fails the
    /// check is corruption: its message is lost.
    pub fn message(&self, cell: MessageCell) -> Result<(FullPtr<u8>, usize, bool)> {
        self.blocks.message(cell)
    }

    /// The queue's recovery pass, after processes that used it died: the
    /// allocator's own pass, then every message block that no waiting
    /// message names (one a dead process was filling or reading) is freed.
    /// Refused with [`Error::InUse`] while another process maps the
    /// segment, unless `force` (for processes known to be idle).
    ///
    /// # Safety
    ///
    /// No other thread of this process uses the queue, through any handle,
    /// during the call; and no message this process took is still in use:
    /// its block is freed too.
    pub unsafe fn recover(&self, force: bool) -> Result<QueueRecovery> {
        // SAFETY: forwarded from the caller; nobody pushes or pops
        // meanwhile (the recovery lock, and the caller's promise).
        unsafe {
            self.blocks.recover(force, |named| {
                self.ring.for_each_waiting(named);
            })
        }
    }
}

/// Which end of an [`SpscMessageQueue`] a handle holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpscRole {
    /// The one that puts.
    Producer,
    /// The one that gets.
    Consumer,
}

enum SpscEnd {
    Producer(SpscProducer<'static, MessageCell>),
    Consumer(SpscConsumer<'static, MessageCell>),
}

/// An SPSC queue's segment, attached, holding one of its two roles (at
/// most one live handle of each role exists, across all processes:
/// another is [`Error::InUse`]; a dead one's role is taken over). A
/// forked child inherits a copy of its parent's handle but not the role:
/// its pushes and pops are refused.
pub struct SpscMessageQueue {
    // Declared first, so dropped first: it borrows `blocks.heap`.
    end: SpscEnd,
    blocks: MessageBlocks,
    /// The process that took the role.
    pid: u32,
}

impl std::fmt::Debug for SpscMessageQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpscMessageQueue")
            .field("segment", self.blocks.heap.segment())
            .field("role", &self.role())
            .field("waiting", &self.len())
            .finish()
    }
}

impl SpscMessageQueue {
    /// Creates the queue's segment (`capacity` bytes for the messages
    /// waiting, a ring of `maxsize` cells rounded up to a power of two; 0:
    /// [`UNBOUNDED_CELLS`]) and takes `role`.
    pub fn create(
        options: &SegmentOptions,
        capacity: u64,
        maxsize: usize,
        role: SpscRole,
    ) -> Result<SpscMessageQueue> {
        let cells = MessageBlocks::cells_for(maxsize)?;
        let ring_bytes = SpscRing::<MessageCell>::bytes_for(cells)?;
        let (heap, ring) =
            MessageBlocks::create(options, capacity, ring_bytes, SPSC_QUEUE_ROOT, |heap| {
                SpscRing::<MessageCell>::create(heap, cells)
            })?;
        SpscMessageQueue::new(heap, ring, role)
    }

    /// Attaches an SPSC queue another process made and takes `role`.
    pub fn attach(options: &SegmentOptions, role: SpscRole) -> Result<SpscMessageQueue> {
        let (heap, ring) = MessageBlocks::attach(options, SPSC_QUEUE_ROOT, "spsc queue")?;
        SpscMessageQueue::new(heap, ring, role)
    }

    fn new(
        heap: SizeClassAllocator,
        ring_at: Offset<SpscRing<MessageCell>>,
        role: SpscRole,
    ) -> Result<SpscMessageQueue> {
        // SAFETY: `end` is declared before `blocks`, so dropped first.
        let (blocks, heap) = unsafe { MessageBlocks::new(heap, ring_at) };
        let end = match role {
            // SAFETY: the root names the ring `create` made in this queue's
            // segment, reached only through ring endpoints and never
            // destroyed.
            SpscRole::Producer => SpscEnd::Producer(unsafe { SpscRing::producer(heap, ring_at)? }),
            // SAFETY: as above.
            SpscRole::Consumer => SpscEnd::Consumer(unsafe { SpscRing::consumer(heap, ring_at)? }),
        };
        Ok(SpscMessageQueue {
            end,
            blocks,
            pid: current_pid(),
        })
    }

    /// The role this handle holds.
    pub fn role(&self) -> SpscRole {
        match self.end {
            SpscEnd::Producer(_) => SpscRole::Producer,
            SpscEnd::Consumer(_) => SpscRole::Consumer,
        }
    }

    /// Messages waiting now (a snapshot).
    pub fn len(&self) -> usize {
        match &self.end {
            SpscEnd::Producer(end) => end.len(),
            SpscEnd::Consumer(end) => end.len(),
        }
    }

    /// Whether no message waited at the moment of the call.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The allocator of the message blocks.
    pub fn heap(&self) -> &SizeClassAllocator {
        &self.blocks.heap
    }

    /// The ring's own block (no cell may name it).
    pub fn ring_block(&self) -> u64 {
        self.blocks.ring_block
    }

    /// See [`MessageQueue::message`].
    pub fn message(&self, cell: MessageCell) -> Result<(FullPtr<u8>, usize, bool)> {
        self.blocks.message(cell)
    }

    /// As [`MessageQueue::recover`]: with this handle's end of the ring,
    /// and (unless `force`) no other process mapping the segment, which
    /// means the other end is gone.
    ///
    /// # Safety
    ///
    /// As for [`MessageQueue::recover`].
    pub unsafe fn recover(&self, force: bool) -> Result<QueueRecovery> {
        // SAFETY: forwarded from the caller, as for the MPMC queue.
        unsafe {
            self.blocks.recover(force, |named| match &self.end {
                SpscEnd::Producer(end) => end.for_each_waiting(named),
                SpscEnd::Consumer(end) => end.for_each_waiting(named),
            })
        }
    }

    /// The allocator of the message blocks, shared: it stays mapped while
    /// the returned handle lives, even past this queue (to give a popped
    /// message back from another thread than the one that pops).
    pub fn shared_heap(&self) -> Arc<SizeClassAllocator> {
        Arc::clone(&self.blocks.heap)
    }

    /// The producer's side of the ring: [`Error::Unsupported`] on a
    /// consumer handle, [`Error::InUse`] in a forked child (the role is
    /// its parent's).
    pub fn producer(&mut self) -> Result<CellProducer<'_>> {
        self.check_role(SpscRole::Producer)?;
        match &mut self.end {
            SpscEnd::Producer(end) => Ok(CellProducer {
                end,
                blocks: &self.blocks,
            }),
            SpscEnd::Consumer(_) => unreachable!("checked: this handle is the producer"),
        }
    }

    /// The consumer's side of the ring; as [`producer`](Self::producer).
    pub fn consumer(&mut self) -> Result<CellConsumer<'_>> {
        self.check_role(SpscRole::Consumer)?;
        match &mut self.end {
            SpscEnd::Consumer(end) => Ok(CellConsumer {
                end,
                blocks: &self.blocks,
            }),
            SpscEnd::Producer(_) => unreachable!("checked: this handle is the consumer"),
        }
    }

    fn check_role(&self, wanted: SpscRole) -> Result<()> {
        let role = self.role();
        if role != wanted {
            return Err(Error::Unsupported(match role {
                SpscRole::Producer => "the producer end of an spsc queue does not pop",
                SpscRole::Consumer => "the consumer end of an spsc queue does not push",
            }));
        }
        if current_pid() != self.pid {
            return Err(Error::InUse {
                reason: format!(
                    "this spsc queue handle was inherited from process {}, which holds its role",
                    self.pid
                ),
            });
        }
        Ok(())
    }
}

/// The producer side of an [`SpscMessageQueue`]'s ring, borrowed, with
/// the allocator of the message blocks.
pub struct CellProducer<'q> {
    end: &'q mut SpscProducer<'static, MessageCell>,
    blocks: &'q MessageBlocks,
}

impl<'q> CellProducer<'q> {
    /// The allocator of the message blocks.
    pub fn heap(&self) -> &'q SizeClassAllocator {
        &self.blocks.heap
    }

    /// Pushes `cell` unless the ring is full; gives it back if so.
    pub fn try_push(&mut self, cell: MessageCell) -> std::result::Result<(), MessageCell> {
        self.end.try_push(cell)
    }

    /// Pushes `cell`, sleeping at most `timeout` while the ring is full.
    pub fn push_timeout(
        &mut self,
        cell: MessageCell,
        timeout: Duration,
    ) -> std::result::Result<(), MessageCell> {
        self.end.push_timeout(cell, timeout)
    }
}

/// The consumer side of an [`SpscMessageQueue`]'s ring, borrowed, with
/// the allocator of the message blocks.
pub struct CellConsumer<'q> {
    end: &'q mut SpscConsumer<'static, MessageCell>,
    blocks: &'q MessageBlocks,
}

impl<'q> CellConsumer<'q> {
    /// The allocator of the message blocks.
    pub fn heap(&self) -> &'q SizeClassAllocator {
        &self.blocks.heap
    }

    /// See [`MessageQueue::message`].
    pub fn message(&self, cell: MessageCell) -> Result<(FullPtr<u8>, usize, bool)> {
        self.blocks.message(cell)
    }

    /// Pops the oldest cell, if any.
    pub fn try_pop(&mut self) -> Option<MessageCell> {
        self.end.try_pop()
    }

    /// Pops the oldest cell, sleeping at most `timeout` while the ring is
    /// empty.
    pub fn pop_timeout(&mut self, timeout: Duration) -> Option<MessageCell> {
        self.end.pop_timeout(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Location;

    /// A shm name of this test process, removed when dropped.
    struct Name(String);

    impl Name {
        fn new(tag: &str) -> Name {
            Name(format!("shmkit-message-queue-{tag}-{}", std::process::id()))
        }

        fn options(&self) -> SegmentOptions {
            SegmentOptions::shm(&self.0)
        }
    }

    impl Drop for Name {
        fn drop(&mut self) {
            let _ = crate::segment::remove(&Location::Shm(self.0.clone()));
        }
    }

    fn put(queue: &mut SpscMessageQueue, bytes: &[u8]) -> std::result::Result<(), MessageCell> {
        let ctx = crate::MemContext::default();
        let offset = queue.heap().allocate_offset(&ctx, bytes.len(), 8).unwrap();
        let block = queue.heap().full_ptr(offset).unwrap();
        // SAFETY: a fresh block of `bytes.len()` bytes, ours until pushed.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), block.as_ptr(), bytes.len()) };
        let cell = MessageCell {
            offset,
            len: bytes.len() as u64,
        };
        queue.producer().unwrap().try_push(cell)
    }

    #[test]
    fn spsc_roles_are_exclusive_and_messages_arrive_in_order() {
        let name = Name::new("roles");
        let mut tx =
            SpscMessageQueue::create(&name.options(), 1 << 16, 4, SpscRole::Producer).unwrap();
        let again = SpscMessageQueue::attach(&name.options(), SpscRole::Producer);
        assert!(matches!(again, Err(Error::InUse { .. })), "{again:?}");
        let mut rx = SpscMessageQueue::attach(&name.options(), SpscRole::Consumer).unwrap();
        assert_eq!(
            (tx.role(), rx.role()),
            (SpscRole::Producer, SpscRole::Consumer)
        );
        assert!(matches!(tx.consumer(), Err(Error::Unsupported(_))));
        assert!(matches!(rx.producer(), Err(Error::Unsupported(_))));

        for word in [&b"one"[..], b"two", b"three", b"four"] {
            put(&mut tx, word).unwrap();
        }
        assert_eq!(rx.len(), 4);
        let full = put(&mut tx, b"five");
        assert!(full.is_err(), "a ring of 4 cells took a fifth message");
        for word in [&b"one"[..], b"two", b"three", b"four"] {
            let cell = rx.consumer().unwrap().try_pop().unwrap();
            let (block, len, pickled) = rx.message(cell).unwrap();
            // SAFETY: a live message block of `len` bytes.
            let got = unsafe { std::slice::from_raw_parts(block.as_ptr(), len) };
            assert_eq!((got, pickled), (word, false));
        }
        assert!(rx.consumer().unwrap().try_pop().is_none());

        // A role given back is free for the next handle.
        drop(tx);
        let tx = SpscMessageQueue::attach(&name.options(), SpscRole::Producer).unwrap();
        assert_eq!(tx.role(), SpscRole::Producer);
    }

    #[test]
    fn the_two_kinds_of_queue_do_not_attach_as_each_other() {
        let mpmc = Name::new("mpmc");
        let _queue = MessageQueue::create(&mpmc.options(), 1 << 16, 4).unwrap();
        let wrong = SpscMessageQueue::attach(&mpmc.options(), SpscRole::Consumer);
        assert!(
            matches!(wrong, Err(Error::CorruptHeader { .. })),
            "{wrong:?}"
        );

        let spsc = Name::new("spsc");
        let _queue =
            SpscMessageQueue::create(&spsc.options(), 1 << 16, 4, SpscRole::Consumer).unwrap();
        let wrong = MessageQueue::attach(&spsc.options());
        assert!(
            matches!(wrong, Err(Error::CorruptHeader { .. })),
            "{wrong:?}"
        );
    }

    #[test]
    fn a_cell_that_names_the_ring_or_no_block_is_refused() {
        let name = Name::new("cells");
        let rx = SpscMessageQueue::create(&name.options(), 1 << 16, 4, SpscRole::Consumer).unwrap();
        for cell in [
            MessageCell {
                offset: rx.ring_block(),
                len: 1,
            },
            MessageCell {
                offset: u64::MAX / 2,
                len: 1,
            },
        ] {
            let refused = rx.message(cell);
            assert!(
                matches!(refused, Err(Error::CorruptData { .. })),
                "{cell:?}"
            );
        }
    }
}
