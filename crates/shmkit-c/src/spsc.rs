//! `shmkit_spsc`: the single-producer single-consumer message queue of raw
//! bytes (`shmkit::containers::message_queue::SpscMessageQueue`). A handle
//! holds one of the two roles, across all processes: a second live
//! producer (or consumer) is refused with `SHMKIT_E_IN_USE`, and the role
//! of a process that died is taken over by the next handle that asks for
//! it. Messages are copied in on push and read in place on pop, as with
//! `shmkit_queue`; the ring under them needs no lock and no read-modify-
//! write, which makes it the cheaper of the two for one pair of processes.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use shmkit::containers::message_queue::{SpscMessageQueue, SpscRole};
use shmkit::{ShmAllocator, SizeClassAllocator};

use crate::handle::{check_out, close, hand_out, handle, live};
use crate::heap::{shm, shmkit_recovery_report, write_report};
use crate::messages::{self, shmkit_message};
use crate::status::{guard, shmkit_status, Failure};

handle!(
    /// One end of an SPSC queue, open in this process. Made by
    /// `shmkit_spsc_create`/`_attach`, ended by `shmkit_spsc_close`. One
    /// thread at a time pushes or pops through a handle (it may move
    /// between threads); a push, pop or len made while another thread's
    /// is under way on the same handle is refused with `SHMKIT_E_IN_USE`.
    /// `shmkit_spsc_done` may come from any thread at any time.
    shmkit_spsc,
    b"shmkSPSC",
    "spsc queue",
    end: SpscHandle
);

/// What a handle holds: the end, behind a lock that refuses a second
/// thread, and what giving a message back needs, outside it.
pub(crate) struct SpscHandle {
    queue: Mutex<SpscMessageQueue>,
    heap: Arc<SizeClassAllocator>,
    ring_block: u64,
}

impl SpscHandle {
    fn new(queue: SpscMessageQueue) -> SpscHandle {
        SpscHandle {
            heap: queue.shared_heap(),
            ring_block: queue.ring_block(),
            queue: Mutex::new(queue),
        }
    }
}

/// The end of an SPSC queue a handle holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum shmkit_spsc_role {
    /// Pushes messages.
    SHMKIT_SPSC_PRODUCER = 0,
    /// Pops them.
    SHMKIT_SPSC_CONSUMER = 1,
}

/// The role a `shmkit_spsc_role` value names (an int from C: any value may
/// arrive).
fn role_of(role: i32) -> Result<SpscRole, Failure> {
    if role == shmkit_spsc_role::SHMKIT_SPSC_PRODUCER as i32 {
        Ok(SpscRole::Producer)
    } else if role == shmkit_spsc_role::SHMKIT_SPSC_CONSUMER as i32 {
        Ok(SpscRole::Consumer)
    } else {
        Err(Failure(
            shmkit_status::SHMKIT_E_UNSUPPORTED,
            format!("role {role} is not a shmkit_spsc_role"),
        ))
    }
}

/// The queue behind a handle, for this call alone.
fn lock(queue: &Mutex<SpscMessageQueue>) -> Result<MutexGuard<'_, SpscMessageQueue>, Failure> {
    match queue.try_lock() {
        Ok(queue) => Ok(queue),
        // A panic inside an earlier call was reported then; the queue's
        // state lives in the segment, which the ring keeps consistent.
        Err(TryLockError::Poisoned(poisoned)) => Ok(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => Err(Failure(
            shmkit_status::SHMKIT_E_IN_USE,
            "another thread is using this spsc handle (one thread at a time)".into(),
        )),
    }
}

/// Creates the SPSC queue `name` (shared memory), with `capacity` bytes
/// for the messages waiting and at most `maxsize` of them (rounded up to a
/// power of two; 0: 65,536), and takes `role` (a `shmkit_spsc_role`).
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_spsc_create(
    name: *const c_char,
    capacity: u64,
    maxsize: usize,
    role: i32,
    out: *mut *mut shmkit_spsc,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        let queue = SpscMessageQueue::create(&shm(name)?, capacity, maxsize, role_of(role)?)?;
        hand_out(SpscHandle::new(queue), out)
    })
}

/// Attaches the SPSC queue `name` another process made and takes `role`
/// (`SHMKIT_E_IN_USE` while a live handle holds it).
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_spsc_attach(
    name: *const c_char,
    role: i32,
    out: *mut *mut shmkit_spsc,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        let queue = SpscMessageQueue::attach(&shm(name)?, role_of(role)?)?;
        hand_out(SpscHandle::new(queue), out)
    })
}

/// Closes a handle and gives its role back (the segment stays until
/// `shmkit_unlink`). Null is a no-op.
///
/// # Safety
///
/// `queue` is null or a handle this API made, used by no other thread
/// meanwhile.
#[no_mangle]
pub unsafe extern "C" fn shmkit_spsc_close(queue: *mut shmkit_spsc) -> shmkit_status {
    guard(|| close(queue))
}

/// Pushes a copy of `len` bytes (a producer's call; on a consumer handle,
/// `SHMKIT_E_UNSUPPORTED`; in a child forked from the holder of the role,
/// `SHMKIT_E_IN_USE`). Waits for room (a
/// free cell, and memory for the bytes) at most `timeout_ms` milliseconds
/// (negative: for ever; 0: not at all), then fails with
/// `SHMKIT_E_TIMEOUT`, having pushed nothing.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call (`data` for `len`
/// bytes), as the C API documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_spsc_push(
    queue: *const shmkit_spsc,
    data: *const c_void,
    len: usize,
    timeout_ms: i64,
) -> shmkit_status {
    guard(|| {
        let mut queue = lock(&live(queue)?.queue)?;
        let producer = queue.producer()?;
        // SAFETY: `data` holds `len` bytes (the caller's contract).
        unsafe { messages::put(producer, data, len, timeout_ms) }
    })
}

/// Pops the next message (a consumer's call, refused elsewhere as a push
/// is), waiting at most `timeout_ms`
/// milliseconds for one (negative: for ever; 0: not at all), else
/// `SHMKIT_E_TIMEOUT`. The bytes stay in the segment until
/// `shmkit_spsc_done(queue, message)`.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_spsc_pop(
    queue: *const shmkit_spsc,
    timeout_ms: i64,
    message: *mut shmkit_message,
) -> shmkit_status {
    guard(|| {
        let mut queue = lock(&live(queue)?.queue)?;
        let consumer = queue.consumer()?;
        // SAFETY: `message` is null or valid for a write (the caller's
        // contract).
        unsafe { messages::get(consumer, timeout_ms, message) }
    })
}

/// Gives a popped message's bytes back to the queue's memory (its `data`
/// is invalid afterwards), from any thread, through either end; refused
/// as `shmkit_queue_done` refuses.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_spsc_done(
    queue: *const shmkit_spsc,
    message: *const shmkit_message,
) -> shmkit_status {
    guard(|| {
        let end = live(queue)?;
        // SAFETY: a non-null `message` points to one the caller owns.
        let message = unsafe { message.as_ref() };
        messages::done(&end.heap, end.ring_block, message)
    })
}

/// How many messages wait in the queue now.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_spsc_len(
    queue: *const shmkit_spsc,
    out: *mut usize,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        let len = lock(&live(queue)?.queue)?.len();
        // SAFETY: checked non-null; the caller's.
        unsafe { out.write(len) };
        Ok(())
    })
}

/// The SPSC queue's recovery pass, as `shmkit_queue_recover`: through
/// either end, once the other end's process is gone (unless `force`: it
/// refuses while other live processes map the segment).
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_spsc_recover(
    queue: *const shmkit_spsc,
    force: i32,
    report: *mut shmkit_recovery_report,
) -> shmkit_status {
    guard(|| {
        let end = live(queue)?;
        let queue = lock(&end.queue)?;
        // SAFETY: this handle's lock is held, and the C caller promises
        // that it holds no message taken from the queue (the documented
        // contract).
        let done = unsafe { queue.recover(force != 0) }?;
        let live_after = end.heap.stats().live_allocations;
        // SAFETY: `report` is null or the caller's.
        unsafe { write_report(report, &done.allocator, done.orphans_freed, live_after) };
        Ok(())
    })
}
