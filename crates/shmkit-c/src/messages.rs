//! What the two message queues of the C API share: a put copies the bytes
//! into a fresh block of the queue's segment and pushes its cell, a get
//! pops a cell and hands out the bytes in place, a done frees the block.
//! The waits (for a cell, for memory) honour the caller's timeout.

use std::ffi::c_void;
use std::time::{Duration, Instant};

use shmkit::containers::message_queue::{CellConsumer, CellProducer, MessageCell, MessageQueue};
use shmkit::ptr::FullPtr;
use shmkit::{MemContext, ShmAllocator, SizeClassAllocator};

use crate::status::{shmkit_status, Failure};

/// How often a put that waits for memory looks again.
const MEMORY_POLL: Duration = Duration::from_millis(1);

/// A message taken from a queue: its bytes, in place in the segment, until
/// `shmkit_queue_done` (or `shmkit_spsc_done`) gives them back.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct shmkit_message {
    /// The bytes (in the segment, valid until the message is done).
    pub data: *const c_void,
    /// How many.
    pub len: usize,
    /// Non-zero when a Python producer pickled an object (the bytes are a
    /// pickle, not raw bytes).
    pub pickled: i32,
    /// The block's offset (what done frees).
    pub offset: u64,
}

/// A queue a put pushes cells into.
pub(crate) trait CellSender<'q> {
    /// The allocator of the message blocks.
    fn heap(&self) -> &'q SizeClassAllocator;
    fn try_push(&mut self, cell: MessageCell) -> Result<(), MessageCell>;
    fn push_timeout(&mut self, cell: MessageCell, timeout: Duration) -> Result<(), MessageCell>;
}

/// A queue a get pops cells from.
pub(crate) trait CellReceiver {
    /// The checked message a popped cell names.
    fn message(&self, cell: MessageCell) -> shmkit::Result<(FullPtr<u8>, usize, bool)>;
    fn try_pop(&mut self) -> Option<MessageCell>;
    fn pop_timeout(&mut self, timeout: Duration) -> Option<MessageCell>;
}

impl<'q> CellSender<'q> for &'q MessageQueue {
    fn heap(&self) -> &'q SizeClassAllocator {
        MessageQueue::heap(self)
    }
    fn try_push(&mut self, cell: MessageCell) -> Result<(), MessageCell> {
        self.ring().try_push(cell)
    }
    fn push_timeout(&mut self, cell: MessageCell, timeout: Duration) -> Result<(), MessageCell> {
        self.ring().push_timeout(cell, timeout)
    }
}

impl CellReceiver for &MessageQueue {
    fn message(&self, cell: MessageCell) -> shmkit::Result<(FullPtr<u8>, usize, bool)> {
        MessageQueue::message(self, cell)
    }
    fn try_pop(&mut self) -> Option<MessageCell> {
        self.ring().try_pop()
    }
    fn pop_timeout(&mut self, timeout: Duration) -> Option<MessageCell> {
        self.ring().pop_timeout(timeout)
    }
}

impl<'q> CellSender<'q> for CellProducer<'q> {
    fn heap(&self) -> &'q SizeClassAllocator {
        CellProducer::heap(self)
    }
    fn try_push(&mut self, cell: MessageCell) -> Result<(), MessageCell> {
        CellProducer::try_push(self, cell)
    }
    fn push_timeout(&mut self, cell: MessageCell, timeout: Duration) -> Result<(), MessageCell> {
        CellProducer::push_timeout(self, cell, timeout)
    }
}

impl CellReceiver for CellConsumer<'_> {
    fn message(&self, cell: MessageCell) -> shmkit::Result<(FullPtr<u8>, usize, bool)> {
        CellConsumer::message(self, cell)
    }
    fn try_pop(&mut self) -> Option<MessageCell> {
        CellConsumer::try_pop(self)
    }
    fn pop_timeout(&mut self, timeout: Duration) -> Option<MessageCell> {
        CellConsumer::pop_timeout(self, timeout)
    }
}

/// The deadline of a wait of `timeout_ms` (negative: none).
fn deadline(timeout_ms: i64) -> Option<Instant> {
    u64::try_from(timeout_ms)
        .ok()
        .and_then(|ms| Instant::now().checked_add(Duration::from_millis(ms)))
}

fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|at| at.saturating_duration_since(Instant::now()))
}

fn timed_out(what: &str) -> Failure {
    Failure(
        shmkit_status::SHMKIT_E_TIMEOUT,
        format!("the queue stayed {what} until the timeout"),
    )
}

/// Puts a copy of `len` bytes at `data` (see `shmkit_queue_put`).
///
/// # Safety
///
/// `data` is null or holds `len` readable bytes.
pub(crate) unsafe fn put<'q>(
    mut ring: impl CellSender<'q>,
    data: *const c_void,
    len: usize,
    timeout_ms: i64,
) -> Result<(), Failure> {
    if data.is_null() && len > 0 {
        return Err(Failure::null("data"));
    }
    let ctx = MemContext::default();
    let deadline = deadline(timeout_ms);
    let heap = ring.heap();
    let mut hopeless = false;
    let offset = loop {
        match heap.allocate_offset(&ctx, len.max(1), 8) {
            Ok(offset) => break offset,
            // Once more first: memory may have come back since the try.
            Err(shmkit::Error::OutOfMemory { .. }) if !hopeless && never_fits(heap, len) => {
                hopeless = true;
            }
            Err(shmkit::Error::OutOfMemory { .. }) if hopeless && never_fits(heap, len) => {
                return Err(Failure(
                    shmkit_status::SHMKIT_E_OUT_OF_MEMORY,
                    format!(
                        "a message of {len} bytes cannot fit the queue's {} bytes of memory, \
                         and waiting cannot help",
                        heap.stats().capacity
                    ),
                ));
            }
            Err(shmkit::Error::OutOfMemory { .. }) if left(deadline) != Some(Duration::ZERO) => {
                std::thread::sleep(MEMORY_POLL)
            }
            Err(shmkit::Error::OutOfMemory { .. }) => return Err(timed_out("without memory")),
            Err(other) => return Err(other.into()),
        }
    };
    let give_back = || {
        // SAFETY: never pushed, so nobody else knows the block.
        let _ = unsafe { heap.free_offset(&ctx, offset) };
    };
    let block: FullPtr<u8> = match heap.full_ptr(offset) {
        Ok(block) => block,
        Err(error) => {
            give_back();
            return Err(error.into());
        }
    };
    if len > 0 {
        // SAFETY: a fresh block of at least `len` bytes, ours until pushed;
        // `data` holds `len` bytes (the caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(data.cast::<u8>(), block.as_ptr(), len) };
    }
    let cell = MessageCell {
        offset,
        len: len as u64,
    };
    let pushed = match ring.try_push(cell) {
        Ok(()) => true,
        Err(cell) => match left(deadline) {
            Some(Duration::ZERO) => false,
            Some(wait) => ring.push_timeout(cell, wait).is_ok(),
            None => {
                let mut cell = cell;
                loop {
                    match ring.push_timeout(cell, Duration::from_secs(1)) {
                        Ok(()) => break true,
                        Err(back) => cell = back,
                    }
                }
            }
        },
    };
    if !pushed {
        give_back();
        return Err(timed_out("full"));
    }
    Ok(())
}

/// Whether waiting for memory is hopeless: the message is larger than all
/// the queue's memory, or no block but the ring's is live (no message
/// waits or is being read, so nothing will ever be given back; a message
/// larger than the capacity never fits either way).
fn never_fits(heap: &SizeClassAllocator, len: usize) -> bool {
    let stats = heap.stats();
    len as u64 > stats.capacity || stats.live_allocations <= 1
}

/// Takes the next message (see `shmkit_queue_get`).
///
/// # Safety
///
/// `message` is null or valid for a write.
pub(crate) unsafe fn get(
    mut ring: impl CellReceiver,
    timeout_ms: i64,
    message: *mut shmkit_message,
) -> Result<(), Failure> {
    if message.is_null() {
        return Err(Failure::null("message"));
    }
    let cell = match ring.try_pop() {
        Some(cell) => cell,
        None => match left(deadline(timeout_ms)) {
            Some(Duration::ZERO) => return Err(timed_out("empty")),
            Some(wait) => ring.pop_timeout(wait).ok_or_else(|| timed_out("empty"))?,
            None => loop {
                if let Some(cell) = ring.pop_timeout(Duration::from_secs(1)) {
                    break cell;
                }
            },
        },
    };
    let (block, len, pickled) = ring.message(cell)?;
    let taken = shmkit_message {
        data: block.as_ptr().cast(),
        len,
        pickled: i32::from(pickled),
        offset: cell.offset,
    };
    // SAFETY: checked non-null; the caller's.
    unsafe { message.write(taken) };
    Ok(())
}

/// Gives a message's block back (see `shmkit_queue_done`).
pub(crate) fn done(
    heap: &SizeClassAllocator,
    ring_block: u64,
    message: Option<&shmkit_message>,
) -> Result<(), Failure> {
    let message = message.ok_or_else(|| Failure::null("message"))?;
    if message.offset == ring_block {
        return Err(Failure(
            shmkit_status::SHMKIT_E_INVALID_FREE,
            "that offset is the queue's ring, not a message".into(),
        ));
    }
    // A message of another queue (its offset may name a live block here).
    let here = heap
        .full_ptr(message.offset)
        .ok()
        .map(|block| block.as_ptr());
    if here != Some(message.data.cast_mut().cast()) {
        return Err(Failure(
            shmkit_status::SHMKIT_E_INVALID_FREE,
            "that message was not taken from this queue".into(),
        ));
    }
    // SAFETY: the caller gives the message's block up; a block that is not
    // live (given back already) is refused, not trusted.
    unsafe { heap.free_offset(&MemContext::default(), message.offset) }?;
    Ok(())
}
