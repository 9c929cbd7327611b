//! The allocator classes: the API of the `shared_allocator` package, call
//! for call and in its argument order, and shmkit's own on top.
//!
//! Each object holds one attached heap (`heap.rs`) until `close()`. Calls
//! convert their arguments first (which may run Python code), then work on
//! the heap without running any; a call that would wait for a lock held by
//! another process, and a copy longer than [`LONG_COPY`], release the
//! interpreter lock while they wait or copy, holding the heap themselves.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use crate::args::{optional, positive, unsigned, Truthy};
use crate::buffer::{block_memoryview, DataArg};
use crate::errors::Fault;
use crate::heap::{Budget, Heap, Kind, Recovered, Retired, Wait};
use crate::views::Views;

/// Copies at least this long release the interpreter lock while they run.
const LONG_COPY: usize = 64 << 10;

/// A cell that only the thread holding the interpreter lock touches. The
/// module is built for the stable ABI, which has no free-threaded
/// interpreter, so holding the lock (every method takes `Python<'_>`)
/// serializes all access.
struct GilCell<T>(UnsafeCell<T>);

// SAFETY: see the type's comment: every access happens under the lock.
unsafe impl<T: Send> Sync for GilCell<T> {}

/// What a `close()` leaves readable: the facts fixed at attach.
struct Facts {
    name: String,
    kind: Kind,
    read_only: bool,
    /// Bytes per budget unit (slot, slab, or 1).
    unit: u64,
    /// Units users may allocate; for a segment without a budget layer, the
    /// allocator's capacity in units.
    units: u64,
}

/// The state behind every allocator class.
pub struct Handle {
    heap: GilCell<Option<Arc<Heap>>>,
    facts: Facts,
    /// The segment's size when `close()` was called (what `total_size`
    /// reads after it).
    size_at_close: AtomicU64,
}

impl Handle {
    /// Creates or attaches `name` with the interpreter lock released
    /// (reserving a large segment, or waiting for one that is being made,
    /// takes a while).
    fn open(
        py: Python<'_>,
        kind: Kind,
        name: &str,
        create: bool,
        budget: impl FnOnce() -> PyResult<Budget>,
        options: OpenOptions,
    ) -> PyResult<Handle> {
        if options.read_only && create {
            return Err(PyValueError::new_err(
                "read_only=True attaches an existing segment: pass create=False",
            ));
        }
        let heap = if create {
            let budget = budget()?;
            py.detach(|| Heap::create(kind, name, budget, options.zero_on_free))
        } else {
            py.detach(|| Heap::attach(kind, name, options.read_only))
        }
        .map_err(|fault| fault.into_py(py))?;
        let (unit, units) = match heap.units() {
            Some(units) => (heap.unit(), units),
            None => {
                let (capacity, _, _) = heap.usage().map_err(|f| f.into_py(py))?;
                (heap.unit(), capacity / heap.unit())
            }
        };
        Ok(Handle {
            size_at_close: AtomicU64::new(heap.segment_size()),
            heap: GilCell(UnsafeCell::new(Some(Arc::new(heap)))),
            facts: Facts {
                name: name.to_owned(),
                kind,
                read_only: options.read_only,
                unit,
                units,
            },
        })
    }

    /// Runs `work` on the open heap. `work` must not run Python code (which
    /// could close this object while it runs), so it gets no `py`.
    #[inline]
    fn with<R>(&self, _py: Python<'_>, work: impl FnOnce(&Heap) -> R) -> PyResult<R> {
        // SAFETY: under the interpreter lock (the token), and `work` cannot
        // re-enter Python, so no `close` runs while this reference lives.
        match unsafe { &*self.heap.0.get() } {
            Some(heap) => Ok(work(heap)),
            None => Err(closed()),
        }
    }

    /// The open heap, held: for work that releases the interpreter lock or
    /// outlives the call (a view).
    fn get(&self, _py: Python<'_>) -> PyResult<Arc<Heap>> {
        // SAFETY: under the interpreter lock (the token); the clone takes
        // its own reference before anything else can run.
        match unsafe { &*self.heap.0.get() } {
            Some(heap) => Ok(Arc::clone(heap)),
            None => Err(closed()),
        }
    }

    /// Runs `op` without waiting for locks other processes hold; if it
    /// would have waited, runs it again patiently with the interpreter
    /// lock released.
    #[inline]
    fn run<R: Send>(
        &self,
        py: Python<'_>,
        op: impl Fn(&Heap, Wait) -> Result<R, Fault> + Sync,
    ) -> PyResult<R> {
        let result = match self.with(py, |heap| op(heap, Wait::Refuse))? {
            Err(Fault::WouldBlock) => self.detached(py, |heap| op(heap, Wait::Patient))?,
            other => other,
        };
        result.map_err(|fault| fault.into_py(py))
    }

    /// Runs `work` on the held heap with the interpreter lock released,
    /// counted as a call in flight (which `recover()` waits for no one in).
    fn detached<R: Send>(
        &self,
        py: Python<'_>,
        work: impl FnOnce(&Heap) -> R + Send,
    ) -> PyResult<R> {
        let heap = self.get(py)?;
        let _in_flight = heap.views().detached();
        Ok(py.detach(|| work(&heap)))
    }

    /// Runs `read` on the heap, with the interpreter lock released when it
    /// may wait for the allocator's lock.
    fn figures<R: Send>(
        &self,
        py: Python<'_>,
        read: impl Fn(&Heap) -> Result<R, Fault> + Sync,
    ) -> PyResult<R> {
        let may_wait = self.with(py, |heap| heap.figures_may_wait())?;
        let result = if may_wait {
            self.detached(py, |heap| read(heap))?
        } else {
            self.with(py, read)?
        };
        result.map_err(|fault| fault.into_py(py))
    }

    fn close(&self, _py: Python<'_>) {
        // SAFETY: under the interpreter lock; no `with` is running (it
        // cannot call back into Python, and this is Python calling us).
        // Views and calls in flight hold their own reference: the mapping
        // goes when the last of them does.
        let heap = unsafe { (*self.heap.0.get()).take() };
        if let Some(heap) = heap {
            self.size_at_close
                .store(heap.segment_size(), Ordering::Relaxed);
        }
    }

    /// Frees the block at `offset`: retired with the interpreter lock held
    /// (so no view or read of this process can slip in), then given back,
    /// waiting for the allocator's lock without the interpreter lock.
    fn free(&self, py: Python<'_>, offset: u64, force: bool) -> PyResult<()> {
        let retired: Retired = self
            .with(py, |heap| heap.retire(offset, force))?
            .map_err(|fault| fault.into_py(py))?;
        let result = match self.with(py, |heap| heap.release(&retired, Wait::Refuse))? {
            Err(Fault::WouldBlock) => {
                let patient = self.detached(py, |heap| heap.release(&retired, Wait::Patient))?;
                if matches!(patient, Err(Fault::WouldBlock)) {
                    self.with(py, |heap| heap.unretire(&retired))?;
                }
                patient
            }
            other => other,
        };
        result.map_err(|fault| fault.into_py(py))
    }

    fn is_closed(&self, _py: Python<'_>) -> bool {
        // SAFETY: under the interpreter lock.
        unsafe { (*self.heap.0.get()).is_none() }
    }

    fn capacity(&self) -> u64 {
        self.facts.unit * self.facts.units
    }

    /// `allocate` where blocks take whole units (the free list's slots,
    /// slabs): no size, or 0, asks for one unit, as in `shared_allocator`.
    fn allocate_units(
        &self,
        py: Python<'_>,
        size: Option<&Bound<'_, PyAny>>,
        alignment: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<u64>> {
        let size = match optional(size, "size")? {
            None | Some(0) => self.facts.unit,
            Some(size) => size,
        };
        allocate(py, self, size, alignment)
    }

    /// Units (slots, slabs) not taken by live blocks.
    fn units_left(&self, py: Python<'_>) -> PyResult<u64> {
        let units = self.facts.units;
        self.figures(py, |heap| {
            heap.usage()
                .map(|(_, _, usage)| units.saturating_sub(usage.units_used))
        })
    }

    /// Units (slots, slabs) live blocks take.
    fn units_taken(&self, py: Python<'_>) -> PyResult<u64> {
        self.figures(py, |heap| {
            heap.usage().map(|(_, _, usage)| usage.units_used)
        })
    }
}

fn closed() -> PyErr {
    PyValueError::new_err("the allocator is closed")
}

/// Keyword-only options of every constructor.
struct OpenOptions {
    read_only: bool,
    zero_on_free: bool,
}

/// Counts an in-flight long copy as a view of its block, so a free from
/// another thread of this process meanwhile is refused.
struct CopyGuard<'a> {
    views: &'a Views,
    block: u64,
}

impl<'a> CopyGuard<'a> {
    fn new(heap: &'a Heap, block: u64) -> CopyGuard<'a> {
        heap.views().opened(block);
        CopyGuard {
            views: heap.views(),
            block,
        }
    }
}

impl Drop for CopyGuard<'_> {
    fn drop(&mut self) {
        self.views.closed(self.block);
    }
}

/// A pointer that crosses into code running without the interpreter lock.
struct Bytes(*mut u8);
// SAFETY: it only names bytes that the caller keeps valid (a held heap, a
// held buffer, a bytes object under construction) until the copy returns.
unsafe impl Send for Bytes {}
// SAFETY: as above; the copies that use it are the only ones touching the
// bytes meanwhile.
unsafe impl Sync for Bytes {}

impl Bytes {
    fn get(&self) -> *mut u8 {
        self.0
    }
}

/// A byte budget of `capacity` (the linear and general allocators).
fn byte_budget(capacity: Option<&Bound<'_, PyAny>>, default: u64) -> PyResult<Budget> {
    let units = match capacity {
        Some(capacity) => positive(capacity, "capacity")?,
        None => default,
    };
    Ok(Budget { unit: 1, units })
}

/// The dict `stats()` returns.
fn stats_dict<'py>(py: Python<'py>, handle: &Handle) -> PyResult<Bound<'py, PyDict>> {
    let (capacity, used, usage, size, max_size, kind, figures, unit) = handle
        .detached(py, |heap| {
            let (capacity, used, usage) = heap.usage()?;
            Ok::<_, Fault>((
                capacity,
                used,
                usage,
                heap.segment_size(),
                heap.segment_max_size(),
                heap.allocator_name(),
                heap.heap_figures()?,
                heap.unit(),
            ))
        })?
        .map_err(|fault| fault.into_py(py))?;
    let dict = PyDict::new(py);
    dict.set_item("kind", kind)?;
    dict.set_item("capacity", capacity)?;
    dict.set_item("used_bytes", used)?;
    dict.set_item("available_bytes", capacity.saturating_sub(used))?;
    dict.set_item("requested_bytes", usage.requested)?;
    dict.set_item("live_blocks", usage.blocks)?;
    dict.set_item("peak_used_bytes", usage.peak_units * unit)?;
    dict.set_item("segment_size", size)?;
    dict.set_item("segment_max_size", max_size)?;
    let (free, largest, fragmentation) = match figures {
        Some((free, largest, fragmentation)) => (Some(free), Some(largest), Some(fragmentation)),
        None => (None, None, None),
    };
    dict.set_item("heap_free_bytes", free)?;
    dict.set_item("largest_free_block", largest)?;
    dict.set_item("fragmentation", fragmentation)?;
    Ok(dict)
}

/// The dict `recover()` returns.
fn recovery_dict<'py>(
    py: Python<'py>,
    recovered: &Recovered,
    unit: u64,
) -> PyResult<Bound<'py, PyDict>> {
    let report = &recovered.report;
    let dict = PyDict::new(py);
    dict.set_item("locks_taken_over", report.locks_taken_over)?;
    dict.set_item("caches_reclaimed", report.caches_reclaimed)?;
    dict.set_item("blocks_reclaimed", report.blocks_reclaimed)?;
    dict.set_item("bytes_quarantined", report.bytes_quarantined)?;
    dict.set_item("rebuilt", report.rebuilt)?;
    dict.set_item("live_blocks_before", recovered.before.map(|u| u.blocks))?;
    dict.set_item("live_blocks_after", recovered.after.blocks)?;
    dict.set_item(
        "used_bytes_before",
        recovered.before.map(|u| u.units_used * unit),
    )?;
    dict.set_item("used_bytes_after", recovered.after.units_used * unit)?;
    dict.set_item("handed_to_dead", &recovered.handed_to_dead)?;
    Ok(dict)
}

/// Allocation shared by the classes: `size` bytes (already defaulted) at a
/// multiple of `alignment`.
#[inline]
fn allocate(
    py: Python<'_>,
    handle: &Handle,
    size: u64,
    alignment: Option<&Bound<'_, PyAny>>,
) -> PyResult<Option<u64>> {
    let align = match alignment {
        Some(alignment) => unsigned(alignment, "alignment")?,
        None => 8,
    };
    handle.run(py, |heap, wait| heap.allocate(size, align, wait))
}

/// The methods every allocator class shares, and its class declaration;
/// `$extra` holds the constructor, `allocate` (whose defaults differ, as in
/// `shared_allocator`) and the class's own methods.
macro_rules! allocator_class {
    ($(#[$doc:meta])* $class:ident, { $($extra:tt)* }) => {
        $(#[$doc])*
        #[pyclass(frozen, module = "shmkit")]
        pub struct $class {
            handle: Handle,
        }

        #[pymethods]
        impl $class {
            $($extra)*

            /// Copies `data` (any bytes-like object) to the start of the
            /// block at `offset`.
            fn write(&self, py: Python<'_>, offset: &Bound<'_, PyAny>, data: &Bound<'_, PyAny>) -> PyResult<()> {
                let offset = unsigned(offset, "offset")?;
                let data = DataArg::new(data)?;
                let Some(bytes) = data.contiguous() else {
                    return write_strided(py, &self.handle, offset, &data);
                };
                if bytes.len < LONG_COPY {
                    return self
                        .handle
                        // SAFETY: `data` holds the bytes' buffer for the call.
                        .with(py, |heap| unsafe { heap.write(offset, bytes) })?
                        .map_err(|fault| fault.into_py(py));
                }
                let heap = self.handle.get(py)?;
                let (target, len) = heap
                    .writable_span(offset, bytes.len as u64)
                    .map_err(|fault| fault.into_py(py))?;
                let _copying = CopyGuard::new(&heap, offset);
                let target = Bytes(target.as_ptr());
                let source = Bytes(bytes.ptr.cast_mut());
                py.detach(|| {
                    // SAFETY: `writable_span` checked the range; the held heap
                    // keeps it mapped and the guard keeps this process from
                    // freeing it; `data` holds the source's buffer, which may
                    // overlap the target (`copy` is a memmove).
                    unsafe { std::ptr::copy(source.get(), target.get(), len as usize) }
                });
                Ok(())
            }

            /// Copies `size` bytes (default: the size asked for) from the
            /// start of the block at `offset`.
            #[pyo3(signature = (offset, size = None))]
            fn read<'py>(
                &self,
                py: Python<'py>,
                offset: &Bound<'py, PyAny>,
                size: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyBytes>> {
                let offset = unsigned(offset, "offset")?;
                let size = optional(size, "size")?;
                let (source, len) = self
                    .handle
                    .with(py, |heap| heap.span(offset, size))?
                    .map_err(|fault| fault.into_py(py))?;
                if (len as usize) < LONG_COPY {
                    // SAFETY: `span` checked the range, and nothing runs
                    // between that check and this copy that could close the
                    // heap: making a bytes object runs no Python code and
                    // keeps the interpreter lock.
                    return Ok(unsafe { PyBytes::from_ptr(py, source.as_ptr(), len as usize) });
                }
                let heap = self.handle.get(py)?;
                let _copying = CopyGuard::new(&heap, offset);
                let source = Bytes(source.as_ptr());
                uninit_bytes(py, len as usize, |target| {
                    let target = Bytes(target);
                    py.detach(|| {
                        // SAFETY: the held heap keeps the source mapped; the
                        // target is the new bytes object's storage, `len` long
                        // and seen by nobody else yet.
                        unsafe { std::ptr::copy_nonoverlapping(source.get(), target.get(), len as usize) }
                    })
                })
            }

            /// A `memoryview` of `size` bytes (default: the size asked for) at
            /// the start of the block at `offset`: no copy, the same bytes in
            /// every process (`numpy.frombuffer(view, dtype)` shares them too).
            /// While it, or anything made from it, lives, the segment stays
            /// mapped here and `free()` of the block raises BufferError.
            #[pyo3(signature = (offset, size = None))]
            fn view<'py>(
                &self,
                py: Python<'py>,
                offset: &Bound<'py, PyAny>,
                size: Option<&Bound<'py, PyAny>>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let offset = unsigned(offset, "offset")?;
                let size = optional(size, "size")?;
                let heap = self.handle.get(py)?;
                let (bytes, len) = heap.span(offset, size).map_err(|fault| fault.into_py(py))?;
                let read_only = heap.is_read_only();
                block_memoryview(py, heap, offset, bytes, len, read_only)
            }

            /// Frees the block at `offset`. An offset that is not a live
            /// block raises ValueError and changes nothing; a block with live
            /// views in this process raises BufferError unless `force`.
            #[pyo3(signature = (offset, *, force = false))]
            fn free(&self, py: Python<'_>, offset: &Bound<'_, PyAny>, force: bool) -> PyResult<()> {
                let offset = unsigned(offset, "offset")?;
                self.handle.free(py, offset, force)
            }

            /// The check word of the live block at `offset` (for shared
            /// arrays' handles: it changes when the offset is reused).
            fn _block_check(&self, py: Python<'_>, offset: &Bound<'_, PyAny>) -> PyResult<u64> {
                let offset = unsigned(offset, "offset")?;
                self.handle
                    .with(py, |heap| heap.block_check(offset))?
                    .map_err(|fault| fault.into_py(py))
            }

            /// The size asked for when the block at `offset` was allocated.
            fn size_of(&self, py: Python<'_>, offset: &Bound<'_, PyAny>) -> PyResult<u64> {
                let offset = unsigned(offset, "offset")?;
                self.handle
                    .with(py, |heap| heap.size_of(offset))?
                    .map_err(|fault| fault.into_py(py))
            }

            /// Bytes live blocks take from the capacity, over all processes
            /// (whole slots or slabs where blocks take those).
            fn used_bytes(&self, py: Python<'_>) -> PyResult<u64> {
                self.handle.figures(py, |heap| heap.usage().map(|(_, used, _)| used))
            }

            /// Bytes that can still be allocated: the capacity less
            /// `used_bytes()`.
            fn available_bytes(&self, py: Python<'_>) -> PyResult<u64> {
                self.handle.figures(py, |heap| {
                    heap.usage().map(|(capacity, used, _)| capacity.saturating_sub(used))
                })
            }

            /// The accounting, as a dict (keys explained in the stub).
            fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
                stats_dict(py, &self.handle)
            }

            /// Walks the allocator's structure; raises CorruptSegmentError
            /// with the first inconsistency.
            fn check(&self, py: Python<'_>) -> PyResult<()> {
                self.handle
                    .detached(py, Heap::check)?
                    .map_err(|fault| fault.into_py(py))
            }

            /// Mends what processes that died mid-operation left behind and
            /// recounts the accounting from the blocks; returns what it did.
            /// Runs holding the interpreter lock, so no other thread of this
            /// process uses the segment meanwhile, and holds the segment's
            /// recovery lock, so no process attaches meanwhile. Refused
            /// (SegmentInUseError) while other processes have the segment
            /// open or mapped, unless `force` (for processes known to be
            /// idle), or while calls of this process wait for its lock.
            /// The blocks last handed to threads that have since died, as
            /// offsets, each once (see the stub); blocks whose allocation
            /// never returned to Python, or whose free never finished, are
            /// freed instead.
            fn take_dead_handoffs(&self, py: Python<'_>) -> PyResult<Vec<u64>> {
                // Frees may wait for the allocator's lock.
                self.handle
                    .detached(py, |heap| heap.take_dead_handoffs().map(|(live, _)| live))?
                    .map_err(|fault| fault.into_py(py))
            }

            #[pyo3(signature = (*, force = false))]
            fn recover<'py>(&self, py: Python<'py>, force: bool) -> PyResult<Bound<'py, PyDict>> {
                let (recovered, unit) = self
                    .handle
                    .with(py, |heap| heap.recover(force).map(|recovered| (recovered, heap.unit())))?
                    .map_err(|fault| fault.into_py(py))?;
                recovery_dict(py, &recovered, unit)
            }

            /// Bytes users can allocate (block headers and the allocator's
            /// own state come on top, outside it).
            #[getter]
            fn capacity(&self) -> u64 {
                self.handle.capacity()
            }

            /// Bytes of the shared-memory object backed now; it grows as
            /// blocks are allocated (after `close()`: when it was closed).
            #[getter]
            fn total_size(&self, py: Python<'_>) -> u64 {
                self.handle
                    .with(py, |heap| heap.segment_size())
                    .unwrap_or_else(|_| self.handle.size_at_close.load(Ordering::Relaxed))
            }

            /// The shared-memory name.
            #[getter]
            fn name(&self) -> &str {
                &self.handle.facts.name
            }

            /// Whether `close()` was called.
            #[getter]
            fn closed(&self, py: Python<'_>) -> bool {
                self.handle.is_closed(py)
            }

            /// Whether the segment is attached read-only.
            #[getter]
            fn read_only(&self) -> bool {
                self.handle.facts.read_only
            }

            /// Detaches from the segment, which stays for other processes
            /// until `unlink()`. Live views keep it mapped here until they are
            /// released. Closing again does nothing; other calls raise
            /// ValueError.
            fn close(&self, py: Python<'_>) {
                self.handle.close(py)
            }

            /// Removes the segment's name, also after `close()` (as
            /// `multiprocessing.shared_memory` does): no process can attach it
            /// any more; attached ones keep their mapping until they close.
            fn unlink(&self) -> PyResult<()> {
                remove(&self.handle.facts.name)
            }

            fn __enter__(slf: Bound<'_, Self>) -> PyResult<Bound<'_, Self>> {
                if slf.get().handle.is_closed(slf.py()) {
                    return Err(closed());
                }
                Ok(slf)
            }

            fn __exit__(
                &self,
                py: Python<'_>,
                _kind: &Bound<'_, PyAny>,
                _value: &Bound<'_, PyAny>,
                _traceback: &Bound<'_, PyAny>,
            ) -> bool {
                self.handle.close(py);
                false
            }

            /// Pickles by name: the receiving process attaches (read-only if
            /// this one is).
            fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
                reduce(slf.as_any(), &slf.get().handle)
            }

            fn __repr__(&self, py: Python<'_>) -> String {
                repr(stringify!($class), &self.handle, py)
            }
        }
    };
}

/// A write of a buffer that is not in one piece (a strided numpy view):
/// copied item by item in C order, without the interpreter lock when long.
fn write_strided(
    py: Python<'_>,
    handle: &Handle,
    offset: u64,
    data: &DataArg<'_, '_>,
) -> PyResult<()> {
    let Some(held) = data.held() else {
        return Ok(());
    };
    let source = held.strided();
    let heap = handle.get(py)?;
    let (target, _) = heap
        .writable_span(offset, data.len() as u64)
        .map_err(|fault| fault.into_py(py))?;
    let target = Bytes(target.as_ptr());
    // SAFETY: `writable_span` checked that `data.len()` bytes at `target`
    // lie in the block; the held heap keeps them mapped and the held buffer
    // keeps the source in place.
    let copy = || unsafe { source.copy_to(target.get()) };
    let copied = if data.len() < LONG_COPY {
        copy()
    } else {
        let _copying = CopyGuard::new(&heap, offset);
        py.detach(copy)
    };
    copied.map_err(PyValueError::new_err)
}

fn remove(name: &str) -> PyResult<()> {
    let name = name.strip_prefix('/').unwrap_or(name);
    shmkit_lib::segment::remove(&shmkit_lib::Location::Shm(name.to_owned()))
        .map_err(crate::errors::lib_to_py)
}

/// `copyreg.__newobj_ex__(cls, (name,), {"create": False, "read_only": ...})`.
fn reduce<'py>(object: &Bound<'py, PyAny>, handle: &Handle) -> PyResult<Bound<'py, PyTuple>> {
    let py = object.py();
    if handle.is_closed(py) {
        return Err(closed());
    }
    let new_object = py.import("copyreg")?.getattr("__newobj_ex__")?;
    let options = PyDict::new(py);
    options.set_item("create", false)?;
    options.set_item("read_only", handle.facts.read_only)?;
    let args = PyTuple::new(
        py,
        [
            object.get_type().into_any(),
            PyTuple::new(py, [handle.facts.name.as_str()])?.into_any(),
            options.into_any(),
        ],
    )?;
    PyTuple::new(py, [new_object, args.into_any()])
}

fn repr(class: &str, handle: &Handle, py: Python<'_>) -> String {
    let facts = &handle.facts;
    let state = if handle.is_closed(py) { ", closed" } else { "" };
    let read_only = if facts.read_only {
        ", read_only=True"
    } else {
        ""
    };
    let shape = match facts.kind {
        Kind::FreeList => format!("slot_size={}, num_slots={}", facts.unit, facts.units),
        Kind::Slab => format!("slab_size={}, num_slabs={}", facts.unit, facts.units),
        _ => format!("capacity={}", handle.capacity()),
    };
    let name = pyo3::types::PyString::new(py, &facts.name)
        .repr()
        .map(|repr| repr.to_string())
        .unwrap_or_else(|_| format!("{:?}", facts.name));
    format!("{class}(name={name}, {shape}{read_only}{state})")
}

/// A new bytes object of `len` bytes filled by `fill`, which gets its
/// storage (uninitialized: `fill` must write all of it).
fn uninit_bytes<'py>(
    py: Python<'py>,
    len: usize,
    fill: impl FnOnce(*mut u8),
) -> PyResult<Bound<'py, PyBytes>> {
    let len_arg = pyo3::ffi::Py_ssize_t::try_from(len)
        .map_err(|_| pyo3::exceptions::PyOverflowError::new_err("read too long"))?;
    // SAFETY: a new bytes object of `len` bytes, or null with an exception.
    let bytes = unsafe { pyo3::ffi::PyBytes_FromStringAndSize(std::ptr::null(), len_arg) };
    // SAFETY: as above.
    let bytes = unsafe { Bound::from_owned_ptr_or_err(py, bytes) }?;
    // SAFETY: a bytes object's storage, `len` bytes, ours until returned.
    let storage = unsafe { pyo3::ffi::PyBytes_AsString(bytes.as_ptr()) }.cast::<u8>();
    fill(storage);
    // SAFETY: it was made as a bytes object above.
    Ok(unsafe { bytes.cast_into_unchecked() })
}

/// The constructor and `allocate` of the classes that have no peer in
/// `shared_allocator` (and of its bump allocator, which has the same
/// shape): `(name, capacity=<default>, create=True)`, plus any methods of
/// the class's own.
macro_rules! general_class {
    (
        $(#[$doc:meta])* $class:ident, $kind:expr,
        capacity = $default:expr, text_signature = $text_signature:tt
        $(, { $($own:tt)* })?
    ) => {
        allocator_class!(
            $(#[$doc])*
            $class,
            {
                #[new]
                #[pyo3(
                    signature = (name, capacity = None, create = Truthy(true), *, read_only = false, zero_on_free = false),
                    text_signature = $text_signature
                )]
                fn new(
                    py: Python<'_>,
                    name: &str,
                    capacity: Option<&Bound<'_, PyAny>>,
                    create: Truthy,
                    read_only: bool,
                    zero_on_free: bool,
                ) -> PyResult<Self> {
                    let options = OpenOptions { read_only, zero_on_free };
                    let budget = || byte_budget(capacity, $default);
                    Ok($class {
                        handle: Handle::open(py, $kind, name, create.0, budget, options)?,
                    })
                }

                /// Allocates `size` bytes at an offset that is a multiple of
                /// `alignment`; returns the offset, or None when full.
                #[pyo3(signature = (size, alignment = None), text_signature = "($self, size, alignment=8)")]
                fn allocate(&self, py: Python<'_>, size: &Bound<'_, PyAny>, alignment: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
                    allocate(py, &self.handle, unsigned(size, "size")?, alignment)
                }

                $($($own)*)?
            }
        );
    };
}

general_class!(
    /// Lock-free bump allocation, the fastest way to carve a segment; frees
    /// everything at once with `reset()`. `capacity` bytes can be allocated
    /// (blocks of `n` bytes: `capacity // n` of them).
    BumpAllocator,
    Kind::Bump,
    capacity = 1 << 20,
    text_signature = "(name, capacity=1048576, create=True, *, read_only=False, zero_on_free=False)",
    {
        /// Forgets every block at once, in every process (every process
        /// must be done with the old offsets, which are refused from now
        /// on). Raises BufferError while views live here, unless `force`.
        #[pyo3(signature = (*, force = false))]
        fn reset(&self, py: Python<'_>, force: bool) -> PyResult<()> {
            self.handle
                .with(py, |heap| heap.reset(force))?
                .map_err(|fault| fault.into_py(py))
        }
    }
);

general_class!(
    /// A stack: blocks are freed in the reverse order of allocation.
    StackAllocator,
    Kind::Stack,
    capacity = 1 << 20,
    text_signature = "(name, capacity=1048576, create=True, *, read_only=False, zero_on_free=False)"
);

allocator_class!(
    /// General purpose (two-level segregated fit) in slots of `slot_size`
    /// bytes: `num_slots` of them (default `capacity // slot_size`). A block
    /// takes whole slots, so any size up to the capacity can be allocated,
    /// and freed memory is reused at any size.
    FreeListAllocator,
    {
        #[new]
        #[pyo3(
            signature = (name, capacity = None, slot_size = None, num_slots = None, create = Truthy(true), *, read_only = false, zero_on_free = false),
            text_signature = "(name, capacity=10485760, slot_size=256, num_slots=None, create=True, *, read_only=False, zero_on_free=False)"
        )]
        #[allow(clippy::too_many_arguments)]
        fn new(
            py: Python<'_>,
            name: &str,
            capacity: Option<&Bound<'_, PyAny>>,
            slot_size: Option<&Bound<'_, PyAny>>,
            num_slots: Option<&Bound<'_, PyAny>>,
            create: Truthy,
            read_only: bool,
            zero_on_free: bool,
        ) -> PyResult<Self> {
            let options = OpenOptions { read_only, zero_on_free };
            let budget = || {
                let slot = match optional(slot_size, "slot_size")? {
                    Some(0) => return Err(PyValueError::new_err("slot_size must be positive, not 0")),
                    Some(slot) => slot,
                    None => 256,
                };
                let count = match optional(num_slots, "num_slots")? {
                    Some(count) => count,
                    None => {
                        let capacity = optional(capacity, "capacity")?.unwrap_or(10 << 20);
                        capacity / slot
                    }
                };
                if count == 0 {
                    return Err(PyValueError::new_err(format!(
                        "the capacity holds no {slot}-byte slot"
                    )));
                }
                Ok(Budget { unit: slot, units: count })
            };
            Ok(FreeListAllocator {
                handle: Handle::open(py, Kind::FreeList, name, create.0, budget, options)?,
            })
        }

        /// Allocates `size` bytes (0, the default: one slot) at an offset
        /// that is a multiple of `alignment`; returns the offset, or None
        /// when full. The block takes whole slots and may use all of them.
        #[pyo3(signature = (size = None, alignment = None), text_signature = "($self, size=0, alignment=8)")]
        fn allocate(&self, py: Python<'_>, size: Option<&Bound<'_, PyAny>>, alignment: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
            self.handle.allocate_units(py, size, alignment)
        }

        /// Slots not taken by live blocks.
        fn available_slots(&self, py: Python<'_>) -> PyResult<u64> {
            self.handle.units_left(py)
        }

        /// Slots taken by live blocks.
        fn used_slots(&self, py: Python<'_>) -> PyResult<u64> {
            self.handle.units_taken(py)
        }

        /// Bytes per slot.
        #[getter]
        fn slot_size(&self) -> u64 {
            self.handle.facts.unit
        }

        /// Slots in all.
        #[getter]
        fn num_slots(&self) -> u64 {
            self.handle.facts.units
        }
    }
);

allocator_class!(
    /// `num_slabs` slabs of `slab_size` bytes each, handed out one at a
    /// time, lock-free.
    SlabAllocator,
    {
        #[new]
        #[pyo3(
            signature = (name, slab_size = None, num_slabs = None, create = Truthy(true), *, read_only = false, zero_on_free = false),
            text_signature = "(name, slab_size=256, num_slabs=4096, create=True, *, read_only=False, zero_on_free=False)"
        )]
        fn new(
            py: Python<'_>,
            name: &str,
            slab_size: Option<&Bound<'_, PyAny>>,
            num_slabs: Option<&Bound<'_, PyAny>>,
            create: Truthy,
            read_only: bool,
            zero_on_free: bool,
        ) -> PyResult<Self> {
            let options = OpenOptions { read_only, zero_on_free };
            let budget = || {
                let unit = match slab_size {
                    Some(size) => positive(size, "slab_size")?,
                    None => 256,
                };
                let units = match num_slabs {
                    Some(count) => positive(count, "num_slabs")?,
                    None => 4096,
                };
                Ok(Budget { unit, units })
            };
            Ok(SlabAllocator {
                handle: Handle::open(py, Kind::Slab, name, create.0, budget, options)?,
            })
        }

        /// Allocates one slab; `size` (default: the slab size) is the
        /// length `read` and `view` default to, and must fit in the slab
        /// (ValueError otherwise). Returns the offset, or None when every
        /// slab is taken.
        #[pyo3(signature = (size = None, alignment = None), text_signature = "($self, size=None, alignment=8)")]
        fn allocate(&self, py: Python<'_>, size: Option<&Bound<'_, PyAny>>, alignment: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u64>> {
            self.handle.allocate_units(py, size, alignment)
        }

        /// Slabs not in use.
        fn available_slabs(&self, py: Python<'_>) -> PyResult<u64> {
            self.handle.units_left(py)
        }

        /// Slabs in use.
        fn used_slabs(&self, py: Python<'_>) -> PyResult<u64> {
            self.handle.units_taken(py)
        }

        /// Bytes per slab.
        #[getter]
        fn slab_size(&self) -> u64 {
            self.handle.facts.unit
        }

        /// Slabs in all.
        #[getter]
        fn num_slabs(&self) -> u64 {
            self.handle.facts.units
        }
    }
);

general_class!(
    /// Power-of-two blocks that split and merge.
    BuddyAllocator,
    Kind::Buddy,
    capacity = 10 << 20,
    text_signature = "(name, capacity=10485760, create=True, *, read_only=False, zero_on_free=False)"
);

general_class!(
    /// Fine size classes over a lock-free page heap; freed pages are reused
    /// at any size.
    SizeClassAllocator,
    Kind::SizeClass,
    capacity = 10 << 20,
    text_signature = "(name, capacity=10485760, create=True, *, read_only=False, zero_on_free=False)"
);

general_class!(
    /// Per-thread caches in the segment over size classes: the fastest for
    /// small blocks that are freed and allocated again.
    ThreadLocalAllocator,
    Kind::ThreadLocal,
    capacity = 10 << 20,
    text_signature = "(name, capacity=10485760, create=True, *, read_only=False, zero_on_free=False)"
);

/// Removes the shared-memory segment `name` without attaching it (one a
/// crashed process left behind, say). FileNotFoundError if it does not
/// exist. Processes that have it mapped keep it until they close.
#[pyfunction]
pub fn unlink(name: &str) -> PyResult<()> {
    remove(name)
}
