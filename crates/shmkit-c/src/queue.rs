//! `shmkit_queue`: the MPMC message queue of raw bytes that Python's
//! `shmkit.Queue` also is (`shmkit::containers::message_queue`), so a C
//! producer and a Python consumer (or the other way round) share one.
//! Messages are copied in on put and read in place on get: the consumer
//! gets the bytes where they lie in the segment, and gives the block back
//! with `shmkit_queue_done`.

use std::ffi::{c_char, c_void};

use shmkit::containers::message_queue::MessageQueue;
use shmkit::ShmAllocator;

use crate::handle::{check_out, close, hand_out, handle, live};
use crate::heap::{shm, shmkit_recovery_report, write_report};
use crate::messages::{self, shmkit_message};
use crate::status::{guard, shmkit_status, Failure};

handle!(
    /// A message queue in a shared-memory segment, open in this process.
    /// Made by `shmkit_queue_create`/`_attach`, ended by
    /// `shmkit_queue_close`; one handle may be used by many threads at once.
    shmkit_queue,
    b"shmkQUEU",
    "queue",
    queue: MessageQueue
);

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
        // SAFETY: `data` holds `len` bytes (the caller's contract).
        unsafe { messages::put(queue, data, len, timeout_ms) }
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
        let queue = live(queue)?;
        // SAFETY: `message` is null or valid for a write (the caller's
        // contract).
        unsafe { messages::get(queue, timeout_ms, message) }
    })
}

/// Gives a message's bytes back to the queue's memory (its `data` is
/// invalid afterwards). `SHMKIT_E_INVALID_FREE` for a message of another
/// queue, or one given back already (unless its block was handed out
/// again in between: give each message back once).
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
        let message = unsafe { message.as_ref() };
        messages::done(queue.heap(), queue.ring_block(), message)
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

/// The queue's recovery pass, after processes that used it died: the
/// allocator's own, then every message block no waiting message names (one
/// a dead process was filling or reading) is freed; `report` (may be null)
/// counts those in `blocks_reclaimed`. It runs alone: no other thread of
/// this process may use the queue meanwhile, a message this process took
/// and has not given back is freed too, and unless `force` is non-zero it
/// refuses (`SHMKIT_E_IN_USE`) while other live processes map the segment.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_queue_recover(
    queue: *const shmkit_queue,
    force: i32,
    report: *mut shmkit_recovery_report,
) -> shmkit_status {
    guard(|| {
        let queue = live(queue)?;
        // SAFETY: the C caller promises that no other thread of this
        // process uses the queue meanwhile and that it holds no message
        // (the documented contract).
        let done = unsafe { queue.recover(force != 0) }?;
        let live_after = queue.heap().stats().live_allocations;
        // SAFETY: `report` is null or the caller's.
        unsafe { write_report(report, &done.allocator, done.orphans_freed, live_after) };
        Ok(())
    })
}
