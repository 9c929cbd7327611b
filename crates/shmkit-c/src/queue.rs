//! `shmkit_queue`: the MPMC message queue of raw bytes that Python's
//! `shmkit.Queue` also is (`shmkit::containers::message_queue`), so a C
//! producer and a Python consumer (or the other way round) share one.
//! Messages are copied in on put and read in place on get: the consumer
//! gets the bytes where they lie in the segment, and gives the block back
//! with `shmkit_queue_done`.

use std::ffi::{c_char, c_void};
use std::time::{Duration, Instant};

use shmkit::containers::message_queue::{MessageCell, MessageQueue};
use shmkit::{MemContext, SegmentOptions, ShmAllocator};

use crate::handle::{check_out, close, hand_out, handle, live};
use crate::heap::text;
use crate::status::{guard, shmkit_status, Failure};

/// How often a put that waits for memory looks again.
const MEMORY_POLL: Duration = Duration::from_millis(1);

handle!(
    /// A message queue in a shared-memory segment, open in this process.
    /// Made by `shmkit_queue_create`/`_attach`, ended by
    /// `shmkit_queue_close`; one handle may be used by many threads at once.
    shmkit_queue,
    b"shmkQUEU",
    "queue",
    queue: MessageQueue
);

/// A message taken from a queue: its bytes, in place in the segment, until
/// `shmkit_queue_done` gives them back.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct shmkit_message {
    /// The bytes (in the segment, valid until `shmkit_queue_done`).
    pub data: *const c_void,
    /// How many.
    pub len: usize,
    /// Non-zero when a Python producer pickled an object (the bytes are a
    /// pickle, not raw bytes).
    pub pickled: i32,
    /// The block's offset (what `shmkit_queue_done` frees).
    pub offset: u64,
}

fn shm(name: *const c_char) -> Result<SegmentOptions, Failure> {
    let name = text(name, "name")?;
    Ok(SegmentOptions::shm(name.strip_prefix('/').unwrap_or(name)))
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

/// Creates the queue `name` (shared memory): `capacity` bytes for the
/// messages waiting, at most `maxsize` of them (rounded up to a power of
/// two; 0: 65,536). Python attaches it with `shmkit.Queue(name,
/// create=False)`.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_queue_create(
    name: *const c_char,
    capacity: u64,
    maxsize: usize,
    out: *mut *mut shmkit_queue,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        hand_out(MessageQueue::create(&shm(name)?, capacity, maxsize)?, out)
    })
}

/// Attaches the queue `name` that another process (C, Python, Rust) made.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_queue_attach(
    name: *const c_char,
    out: *mut *mut shmkit_queue,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        hand_out(MessageQueue::attach(&shm(name)?)?, out)
    })
}

/// Closes a queue handle (the segment stays until `shmkit_unlink`). Null is
/// a no-op.
///
/// # Safety
///
/// `queue` is null or a handle this API made, used by no other thread
/// meanwhile.
#[no_mangle]
pub unsafe extern "C" fn shmkit_queue_close(queue: *mut shmkit_queue) -> shmkit_status {
    guard(|| close(queue))
}

/// Puts a copy of `len` bytes. Waits for room (a free cell, and memory for
/// the bytes) at most `timeout_ms` milliseconds (negative: for ever; 0: not
/// at all), then fails with `SHMKIT_E_TIMEOUT`, having put nothing.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call (`data` for `len`
/// bytes), as the C API documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_queue_put(
    queue: *const shmkit_queue,
    data: *const c_void,
    len: usize,
    timeout_ms: i64,
) -> shmkit_status {
    guard(|| {
        let queue = live(queue)?;
        if data.is_null() && len > 0 {
            return Err(Failure::null("data"));
        }
        let heap = queue.heap();
        let ctx = MemContext::default();
        let deadline = deadline(timeout_ms);
        let offset = loop {
            match heap.allocate_offset(&ctx, len.max(1), 8) {
                Ok(offset) => break offset,
                Err(shmkit::Error::OutOfMemory { .. })
                    if left(deadline) != Some(Duration::ZERO) =>
                {
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
        let block = match heap.full_ptr(offset) {
            Ok(block) => block,
            Err(error) => {
                give_back();
                return Err(error.into());
            }
        };
        if len > 0 {
            // SAFETY: a fresh block of at least `len` bytes, ours until
            // pushed; `data` holds `len` bytes (the caller's contract).
            unsafe { std::ptr::copy_nonoverlapping(data.cast::<u8>(), block.as_ptr(), len) };
        }
        let cell = MessageCell {
            offset,
            len: len as u64,
        };
        let ring = queue.ring();
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
    })
}

/// Takes the next message, waiting at most `timeout_ms` milliseconds for
/// one (negative: for ever; 0: not at all), else `SHMKIT_E_TIMEOUT`. The
/// bytes stay in the segment until `shmkit_queue_done(queue, message)`.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_queue_get(
    queue: *const shmkit_queue,
    timeout_ms: i64,
    message: *mut shmkit_message,
) -> shmkit_status {
    guard(|| {
        if message.is_null() {
            return Err(Failure::null("message"));
        }
        let queue = live(queue)?;
        let ring = queue.ring();
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
        let (block, len, pickled) = queue.message(cell)?;
        let taken = shmkit_message {
            data: block.as_ptr().cast(),
            len,
            pickled: i32::from(pickled),
            offset: cell.offset,
        };
        // SAFETY: checked non-null; the caller's.
        unsafe { message.write(taken) };
        Ok(())
    })
}

/// Gives a message's bytes back to the queue's memory (its `data` is
/// invalid afterwards). A message given back twice is refused with
/// `SHMKIT_E_INVALID_FREE`.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_queue_done(
    queue: *const shmkit_queue,
    message: *const shmkit_message,
) -> shmkit_status {
    guard(|| {
        let queue = live(queue)?;
        // SAFETY: a non-null `message` points to one the caller owns.
        let message = unsafe { message.as_ref() }.ok_or_else(|| Failure::null("message"))?;
        if message.offset == queue.ring_block() {
            return Err(Failure(
                shmkit_status::SHMKIT_E_INVALID_FREE,
                "that offset is the queue's ring, not a message".into(),
            ));
        }
        // SAFETY: the caller gives the message's block up; a block that is
        // not live (given back already) is refused, not trusted.
        unsafe {
            queue
                .heap()
                .free_offset(&MemContext::default(), message.offset)
        }?;
        Ok(())
    })
}

/// How many messages wait in the queue now.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_queue_len(
    queue: *const shmkit_queue,
    out: *mut usize,
) -> shmkit_status {
    guard(|| {
        let len = live(queue)?.ring().len();
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        // SAFETY: checked non-null; the caller's.
        unsafe { out.write(len) };
        Ok(())
    })
}
