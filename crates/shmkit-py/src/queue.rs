//! `_RawQueue`: the native half of `shmkit.Queue`. A segment managed by the
//! size-class allocator holds an MPMC ring of message cells; each message's
//! bytes live in a block of the segment, and its cell carries the block's
//! offset and length. The Python half (`python/shmkit/_queue.py`) turns
//! objects into bytes and back.
//!
//! A process killed at any instruction leaves the queue usable: the ring
//! repairs a cell a dead process had claimed (its own message is lost).
//! The block of a message it was filling or reading stays allocated until
//! `recover()`, which runs alone, frees every block no waiting message
//! names.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use shmkit_lib::containers::message_queue::{MessageCell, MessageQueue, PICKLED, UNBOUNDED_CELLS};
use shmkit_lib::{Error, MemContext, SegmentOptions, ShmAllocator};

use crate::errors::lib_to_py;
use crate::own_segment::{self, Holder, InFlight, InFlightCell};

/// How often a put that waits for memory looks again.
const MEMORY_POLL: Duration = Duration::from_millis(1);
/// Messages at least this long are copied in without the interpreter lock.
const LONG_COPY: usize = 64 << 10;

/// The attached queue (the format is the library's, shared with C).
struct Attached {
    queue: MessageQueue,
    /// This process's calls in flight on the segment (any handle).
    in_flight: InFlightCell,
}

impl Attached {
    fn new(queue: MessageQueue) -> Attached {
        Attached {
            queue,
            in_flight: InFlightCell::default(),
        }
    }

    /// This process's counter of calls on the segment.
    fn in_flight(&self, py: Python<'_>) -> &InFlight {
        self.in_flight.get(py, self.queue.heap().segment())
    }
}

/// The native queue: bytes in, bytes out.
#[pyclass(module = "shmkit._native", name = "_RawQueue", frozen)]
pub struct RawQueue {
    attached: Holder<Attached>,
    #[pyo3(get)]
    name: String,
    #[pyo3(get)]
    maxsize: usize,
}

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|at| at.saturating_duration_since(Instant::now()))
}

/// The deadline of a wait of `timeout` seconds (`None`, an infinite or a
/// too long one: none).
fn deadline_after(timeout: Option<f64>) -> Option<Instant> {
    let wait = Duration::try_from_secs_f64(timeout?.max(0.0)).ok()?;
    Instant::now().checked_add(wait)
}

/// Waits in slices, so that a signal (Ctrl-C) reaches Python between
/// them; `attempt` waits at most its argument and says whether it is done.
fn wait_in_slices(
    py: Python<'_>,
    deadline: Option<Instant>,
    mut attempt: impl FnMut(Duration) -> bool + Send,
) -> PyResult<bool> {
    const SLICE: Duration = Duration::from_millis(100);
    loop {
        let slice = remaining(deadline).map_or(SLICE, |left| left.min(SLICE));
        let done = py.detach(|| attempt(slice));
        if done {
            return Ok(true);
        }
        if remaining(deadline) == Some(Duration::ZERO) {
            return Ok(false);
        }
        py.check_signals()?;
    }
}

impl RawQueue {
    fn attached(&self) -> PyResult<Arc<Attached>> {
        self.attached.get()
    }
}

#[pymethods]
impl RawQueue {
    /// Creates the queue's segment (`create=True`) or attaches it.
    #[new]
    #[pyo3(signature = (name, capacity, create, maxsize))]
    fn new(
        py: Python<'_>,
        name: &str,
        capacity: u64,
        create: bool,
        maxsize: usize,
    ) -> PyResult<Self> {
        let options = SegmentOptions::shm(name);
        let attached = py
            .detach(|| -> Result<Attached, Error> {
                let queue = if create {
                    MessageQueue::create(&options, capacity, maxsize)?
                } else {
                    MessageQueue::attach(&options)?
                };
                Ok(Attached::new(queue))
            })
            .map_err(lib_to_py)?;
        // The ring's cells bound the queue: `maxsize` rounded up to a power
        // of two, or unbounded (0) for the default ring.
        let cells = attached.queue.ring().capacity();
        let maxsize = if cells == UNBOUNDED_CELLS { 0 } else { cells };
        Ok(RawQueue {
            attached: Holder::new(attached, "queue"),
            name: name.to_owned(),
            maxsize,
        })
    }

    /// Puts `data` (a pickle when `pickled`); returns False when the queue
    /// stayed full (or the segment without room) until `timeout` (`None`:
    /// forever; 0: not at all).
    #[pyo3(signature = (data, pickled, timeout))]
    fn put(
        &self,
        py: Python<'_>,
        data: &[u8],
        pickled: bool,
        timeout: Option<f64>,
    ) -> PyResult<bool> {
        let attached = self.attached()?;
        let _call = attached.in_flight(py).enter();
        let deadline = deadline_after(timeout);
        let no_wait = timeout.is_some_and(|t| t <= 0.0);
        let len = data.len() as u64;
        if len > attached.queue.heap().segment().size() {
            return Err(PyValueError::new_err(format!(
                "a message of {len} bytes is larger than the queue's whole segment"
            )));
        }
        let ctx = MemContext::default();
        // The block for the bytes: wait for memory (consumers free as
        // they read) until the deadline.
        let offset = loop {
            match attached
                .queue
                .heap()
                .allocate_offset(&ctx, data.len().max(1), 8)
            {
                Ok(offset) => break offset,
                Err(Error::OutOfMemory { .. }) => {
                    if no_wait || remaining(deadline) == Some(Duration::ZERO) {
                        return Ok(false);
                    }
                    py.detach(|| std::thread::sleep(MEMORY_POLL));
                    py.check_signals()?;
                }
                Err(other) => return Err(lib_to_py(other)),
            }
        };
        let block = match attached.queue.heap().full_ptr(offset) {
            Ok(block) => block,
            Err(error) => {
                // SAFETY: the fresh block never left this call.
                let _ = unsafe { attached.queue.heap().free_offset(&ctx, offset) };
                return Err(lib_to_py(error));
            }
        };
        let target = block.as_ptr() as usize;
        let copy = || {
            // SAFETY: a fresh block of at least `len` bytes, ours until
            // pushed; `data` is an immutable bytes object's buffer.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), target as *mut u8, data.len()) }
        };
        if data.len() >= LONG_COPY {
            py.detach(copy);
        } else {
            copy();
        }
        let cell = MessageCell {
            offset,
            len: len | if pickled { PICKLED } else { 0 },
        };
        // Room at once is the common case: no wait, so no release of the
        // interpreter lock (which costs more than the push).
        let pushed = match attached.queue.ring().try_push(cell) {
            Ok(()) => Ok(true),
            Err(_) if no_wait => Ok(false),
            Err(cell) => wait_in_slices(py, deadline, |slice| {
                attached.queue.ring().push_timeout(cell, slice).is_ok()
            }),
        };
        let pushed = match pushed {
            Ok(pushed) => pushed,
            Err(interrupted) => {
                // SAFETY: never pushed, so nobody else knows the block.
                let _ = unsafe { attached.queue.heap().free_offset(&ctx, offset) };
                return Err(interrupted);
            }
        };
        if !pushed {
            // SAFETY: never pushed, so nobody else knows the block.
            unsafe { attached.queue.heap().free_offset(&ctx, offset) }.map_err(lib_to_py)?;
        }
        Ok(pushed)
    }

    /// The next message as `(bytes, pickled)`, or None when the queue stayed
    /// empty until `timeout` (`None`: forever; 0: not at all).
    #[pyo3(signature = (timeout))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, bool)>> {
        let attached = self.attached()?;
        let _call = attached.in_flight(py).enter();
        // A message at once is the common case: no wait, no release of the
        // interpreter lock.
        let cell = match attached.queue.ring().try_pop() {
            Some(cell) => Some(cell),
            None if timeout.is_some_and(|t| t <= 0.0) => None,
            None => {
                let deadline = deadline_after(timeout);
                let mut got = None;
                wait_in_slices(py, deadline, |slice| {
                    got = attached.queue.ring().pop_timeout(slice);
                    got.is_some()
                })?;
                got
            }
        };
        let Some(cell) = cell else {
            return Ok(None);
        };
        let (block, len, pickled) = attached
            .queue
            .message(cell)
            .map_err(|error| PyValueError::new_err(format!("{error}: the segment is corrupt")))?;
        let source = block.as_ptr() as usize;
        let bytes = PyBytes::new_with(py, len, |target| {
            // SAFETY: the popped cell hands this process the block, `len`
            // bytes long (checked), written before it was pushed.
            unsafe { std::ptr::copy_nonoverlapping(source as *const u8, target.as_mut_ptr(), len) };
            Ok(())
        });
        // SAFETY: the message was ours alone and its bytes are copied out
        // (or could not be: it is lost either way, its room comes back).
        unsafe {
            attached
                .queue
                .heap()
                .free_offset(&MemContext::default(), cell.offset)
        }
        .map_err(lib_to_py)?;
        Ok(Some((bytes?, pickled)))
    }

    /// Messages in the queue now.
    fn qsize(&self) -> PyResult<usize> {
        Ok(self.attached()?.queue.ring().len())
    }

    /// Cells of the ring (the most messages the queue holds).
    fn cells(&self) -> PyResult<usize> {
        Ok(self.attached()?.queue.ring().capacity())
    }

    /// The segment allocator's integrity walk.
    fn check(&self) -> PyResult<()> {
        self.attached()?.queue.heap().check().map_err(lib_to_py)
    }

    /// The segment allocator's accounting: `(live blocks, allocated
    /// bytes, free bytes, capacity)`. The ring is one live block.
    fn heap_stats(&self) -> PyResult<(u64, u64, u64, u64)> {
        Ok(own_segment::heap_stats(self.attached()?.queue.heap()))
    }

    /// Mends what processes that died mid-put or mid-get left: the
    /// allocator's recovery pass, then every block that no waiting message
    /// names (a message a dead producer had not pushed, or a dead consumer
    /// had taken and not freed) is freed. Refused while other processes use
    /// the segment or a call of this process is in flight on it.
    fn recover(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        let attached = self.attached()?;
        attached.in_flight(py).refuse_recovery_if_busy("queue")?;
        let alone = attached
            .queue
            .heap()
            .segment()
            .lock_for_recovery(false)
            .map_err(lib_to_py)?;
        // SAFETY: no call of this process is in flight on the segment
        // (checked above, through any handle), and none can start: this
        // thread holds the interpreter lock, which every call takes to
        // start, and keeps it until the end; the recovery lock keeps other
        // processes out.
        let report = unsafe { attached.queue.heap().recovery_pass() }.map_err(lib_to_py)?;
        let mut named = HashSet::from([attached.queue.ring_block()]);
        // SAFETY: as above: nobody pushes or pops meanwhile.
        unsafe {
            attached.queue.ring().for_each_waiting(|cell| {
                named.insert(cell.offset);
            })
        };
        // SAFETY: as above; the segment is the queue's alone.
        let swept = unsafe { attached.queue.heap().free_unnamed(&named) }.map_err(lib_to_py)?;
        drop(alone);
        Ok((report.locks_taken_over, report.blocks_reclaimed + swept))
    }

    /// Detaches (the segment stays until `unlink()`); a call still waiting
    /// on the queue keeps the mapping until it returns.
    fn close(&self) -> PyResult<()> {
        self.attached.close()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.attached.is_closed()
    }
}
