//! What the structures that own a whole segment (`shmkit.Queue`,
//! `shmkit.Dict`) share: counting this process's calls in flight on a
//! segment, their accounting, and the sweep by which `recover()` frees the
//! blocks a dead process left that the structure no longer names.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};

use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::{PyErr, PyResult, Python};
use shmkit_lib::sync::current_pid;
use shmkit_lib::{Segment, SegmentId, ShmAllocator, SizeClassAllocator};

use crate::errors::SegmentInUseError;

/// The calls of this process in flight on one segment, through any handle
/// (each `Queue` or `Dict` object, a pickled copy, a second attach): what
/// `recover()` must see as zero before it treats an unnamed block as a dead
/// process's. A call counts from its start to its end, not only while it
/// waits without the interpreter lock: between an allocation and its
/// publication it may run Python code (a signal handler, a finalizer) that
/// calls `recover()`.
pub struct InFlight {
    /// The process that counted: a forked child starts from zero, since
    /// its parent's calls did not come with it.
    pid: AtomicU32,
    calls: AtomicUsize,
}

impl InFlight {
    /// The counter of the segment `id` in this process (one for all
    /// handles). Taken with the interpreter lock held (the token), as
    /// every use of the registry is: Python forks only with that lock held,
    /// so no fork can leave the registry's mutex locked in a child.
    fn of_segment(_gil: Python<'_>, id: SegmentId) -> Arc<InFlight> {
        static COUNTERS: OnceLock<Mutex<HashMap<u64, Weak<InFlight>>>> = OnceLock::new();
        let mut counters = COUNTERS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counters.retain(|_, counter| counter.strong_count() > 0);
        if let Some(counter) = counters.get(&id.0).and_then(Weak::upgrade) {
            return counter;
        }
        let counter = Arc::new(InFlight {
            pid: AtomicU32::new(current_pid()),
            calls: AtomicUsize::new(0),
        });
        counters.insert(id.0, Arc::downgrade(&counter));
        counter
    }

    /// Counts a call until the returned guard drops.
    #[inline]
    pub fn enter(&self) -> Call<'_> {
        let pid = current_pid();
        if self.pid.load(Ordering::Relaxed) != pid {
            // Inherited through fork: the parent's calls are not ours. The
            // child has one thread until it starts more, so nothing races.
            self.calls.store(0, Ordering::Relaxed);
            self.pid.store(pid, Ordering::Relaxed);
        }
        self.calls.fetch_add(1, Ordering::AcqRel);
        Call(self)
    }

    /// Calls in flight now, in this process.
    pub fn calls(&self) -> usize {
        if self.pid.load(Ordering::Relaxed) != current_pid() {
            return 0;
        }
        self.calls.load(Ordering::Acquire)
    }

    /// Refuses a recovery while any call of this process is in flight on
    /// the segment (the recovering one is not counted).
    pub fn refuse_recovery_if_busy(&self, what: &str) -> PyResult<()> {
        match self.calls() {
            0 => Ok(()),
            calls => Err(SegmentInUseError::new_err(format!(
                "{calls} call(s) of this process are in flight on the {what}"
            ))),
        }
    }
}

/// A handle's [`InFlight`], looked up in the registry on the handle's
/// first call (so with the interpreter lock held), then kept.
#[derive(Default)]
pub struct InFlightCell(OnceLock<Arc<InFlight>>);

impl InFlightCell {
    pub fn get(&self, py: Python<'_>, segment: &Segment) -> &InFlight {
        self.0
            .get_or_init(|| InFlight::of_segment(py, segment.id()))
    }
}

/// One call in flight (see [`InFlight`]).
pub struct Call<'a>(&'a InFlight);

impl Drop for Call<'_> {
    fn drop(&mut self) {
        // A guard that crossed a fork finds the count reset: saturate.
        let _ = self
            .0
            .calls
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |calls| {
                calls.checked_sub(1)
            });
    }
}

/// The segment allocator's accounting: `(live blocks, allocated bytes,
/// free bytes, capacity)`.
pub fn heap_stats(heap: &SizeClassAllocator) -> (u64, u64, u64, u64) {
    let stats = heap.stats();
    (
        stats.live_allocations,
        stats.allocated_bytes,
        stats.free_bytes,
        stats.capacity,
    )
}

/// A Python object's hold on its attached structure: shared with the calls
/// in flight (each takes an `Arc`), dropped by `close()`, after which every
/// call is a `ValueError` naming `what` ("queue", "dict").
pub struct Holder<T> {
    attached: RwLock<Option<Arc<T>>>,
    what: &'static str,
}

impl<T> Holder<T> {
    pub fn new(attached: T, what: &'static str) -> Holder<T> {
        Holder {
            attached: RwLock::new(Some(Arc::new(attached))),
            what,
        }
    }

    /// The attached structure, for one call.
    pub fn get(&self) -> PyResult<Arc<T>> {
        self.attached
            .read()
            .map_err(|_| self.poisoned())?
            .clone()
            .ok_or_else(|| PyValueError::new_err(format!("the {} is closed", self.what)))
    }

    /// Lets go of the structure; a call still running keeps it until it
    /// returns.
    pub fn close(&self) -> PyResult<()> {
        *self.attached.write().map_err(|_| self.poisoned())? = None;
        Ok(())
    }

    pub fn is_closed(&self) -> bool {
        self.attached
            .read()
            .map(|slot| slot.is_none())
            .unwrap_or(true)
    }

    fn poisoned(&self) -> PyErr {
        PyRuntimeError::new_err(format!("the {}'s lock is poisoned", self.what))
    }
}
