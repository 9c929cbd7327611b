//! Python bindings: process-safe allocators over POSIX shared memory, with
//! the API of the `shared_allocator` package and more (see `shmkit.pyi`).
//!
//! Every allocator object wraps one attached segment. Offsets are what
//! Python code keeps and passes between processes; every `read`, `write`,
//! `view` and `free` checks its offset against the block header in front of
//! it (see `blocks.rs`), so a wrong offset raises `ValueError` instead of
//! touching another block.

mod blocks;
mod errors;

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyTuple};
use shmkit_lib::{
    AnyAllocator, BumpAllocator as RustBump, PoolAllocator, PoolParams, SegmentAllocator,
    SegmentOptions, StackAllocator as RustStack,
};

use blocks::{Blocks, COUNTERS_LEN, HEADER};
use errors::{to_py, CorruptSegmentError, WrongAllocatorError};

/// Default segment size when `capacity` is not given.
const DEFAULT_CAPACITY: u64 = 64 << 20;

/// `PyBUF_WRITE` from CPython's `memoryobject.h` (not in the limited API
/// headers, but a stable value).
const PYBUF_WRITE: i32 = 0x200;

/// One open segment and its allocator.
struct Open {
    blocks: Blocks,
    name: String,
    /// A view was handed out: the mapping must outlive this object.
    exported: AtomicBool,
}

/// Segments whose bytes back memoryviews handed to Python. A memoryview made
/// from raw memory cannot keep its owner alive, so these stay mapped until
/// the process exits: a view can never dangle, whatever is closed first.
static EXPORTED: Mutex<Vec<Arc<Open>>> = Mutex::new(Vec::new());

/// A cell that only the thread holding the GIL touches. The package is
/// built for the stable ABI, which has no free-threaded interpreter, so
/// holding the GIL (every method takes `Python<'_>`) serializes all access.
struct GilCell<T>(UnsafeCell<T>);

// SAFETY: see the type's comment: every access happens under the GIL.
unsafe impl<T: Send> Sync for GilCell<T> {}

/// The state behind every allocator class.
struct Handle {
    open: GilCell<Option<Arc<Open>>>,
}

impl Handle {
    fn new(blocks: Blocks, name: String) -> Handle {
        Handle {
            open: GilCell(UnsafeCell::new(Some(Arc::new(Open {
                blocks,
                name,
                exported: AtomicBool::new(false),
            })))),
        }
    }

    /// Runs `work` on the open segment. `work` must not run Python code
    /// (which could close this object while it runs), so it gets no `py`.
    fn with<R>(&self, _py: Python<'_>, work: impl FnOnce(&Arc<Open>) -> R) -> PyResult<R> {
        // SAFETY: under the GIL (the token), and `work` cannot re-enter
        // Python, so no `close` runs while this reference lives.
        let open = unsafe { &*self.open.0.get() };
        match open {
            Some(open) => Ok(work(open)),
            None => Err(PyValueError::new_err("the allocator is closed")),
        }
    }

    fn close(&self, _py: Python<'_>) {
        // SAFETY: under the GIL; no `with` is running (it cannot call back
        // into Python, and this is Python calling us).
        let open = unsafe { (*self.open.0.get()).take() };
        drop(open);
    }

    fn is_closed(&self, _py: Python<'_>) -> bool {
        // SAFETY: under the GIL.
        unsafe { (*self.open.0.get()).is_none() }
    }
}

fn size_arg(value: i64, what: &str) -> PyResult<u64> {
    if value <= 0 {
        return Err(PyValueError::new_err(format!(
            "{what} must be positive, not {value}"
        )));
    }
    Ok(value as u64)
}

/// An optional length argument (None: the whole block).
fn len_arg(size: Option<i64>) -> PyResult<Option<u64>> {
    size.map(|size| {
        u64::try_from(size).map_err(|_| PyValueError::new_err(format!("size {size} is negative")))
    })
    .transpose()
}

fn offset_arg(value: i64) -> PyResult<u64> {
    u64::try_from(value).map_err(|_| PyValueError::new_err(format!("offset {value} is negative")))
}

/// The bytes of `data` (bytes, bytearray, memoryview, numpy array...),
/// borrowed when it is `bytes`, copied otherwise.
fn with_bytes<R>(data: &Bound<'_, PyAny>, work: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(work(bytes.as_bytes()));
    }
    if let Ok(array) = data.cast::<PyByteArray>() {
        return Ok(work(&array.to_vec()));
    }
    let copied = data
        .py()
        .get_type::<PyBytes>()
        .call1((data,))
        .map_err(|_| PyTypeError::new_err("data must be bytes-like"))?;
    let copied = copied.cast::<PyBytes>()?;
    Ok(work(copied.as_bytes()))
}

fn shm_name(name: &str) -> &str {
    name.strip_prefix('/').unwrap_or(name)
}

fn options(name: &str, capacity: u64) -> SegmentOptions {
    SegmentOptions::shm(shm_name(name))
        .size(capacity)
        .custom_header_len(COUNTERS_LEN)
}

/// Creates or attaches a general-purpose allocator.
fn open_general<A: SegmentAllocator>(
    name: &str,
    capacity: Option<i64>,
    create: bool,
    wrap: fn(A) -> AnyAllocator,
) -> PyResult<Handle> {
    let allocator = if create {
        let capacity = match capacity {
            Some(c) => size_arg(c, "capacity")?,
            None => DEFAULT_CAPACITY,
        };
        A::create(&options(name, capacity))
    } else {
        A::attach(&SegmentOptions::shm(shm_name(name)))
    }
    .map_err(to_py)?;
    Ok(Handle::new(Blocks::new(wrap(allocator)), name.to_owned()))
}

/// The methods every allocator class shares, and its class declaration.
macro_rules! allocator_class {
    ($(#[$doc:meta])* $class:ident, { $($constructor:tt)* }) => {
        $(#[$doc])*
        #[pyclass(frozen, module = "shmkit")]
        pub struct $class {
            handle: Handle,
        }

        #[pymethods]
        impl $class {
            $($constructor)*

            /// Allocates `size` bytes at an offset that is a multiple of
            /// `alignment`; returns the offset, or None when the segment is
            /// full.
            #[pyo3(signature = (size, alignment = 8))]
            fn allocate(&self, py: Python<'_>, size: i64, alignment: i64) -> PyResult<Option<u64>> {
                let size = size_arg(size, "size")?;
                let alignment = size_arg(alignment, "alignment")?;
                if !alignment.is_power_of_two() {
                    return Err(PyValueError::new_err(format!(
                        "alignment {alignment} is not a power of two"
                    )));
                }
                match self.handle.with(py, |open| open.blocks.allocate(size, alignment))? {
                    Ok(offset) => Ok(Some(offset)),
                    Err(shmkit_lib::Error::OutOfMemory { .. }) => Ok(None),
                    Err(err) => Err(to_py(err)),
                }
            }

            /// Copies `data` to the start of the block at `offset`.
            fn write(&self, py: Python<'_>, offset: i64, data: &Bound<'_, PyAny>) -> PyResult<()> {
                let offset = offset_arg(offset)?;
                with_bytes(data, |bytes| {
                    self.handle.with(py, |open| {
                        let (ptr, _) = open.blocks.bytes_at(offset, Some(bytes.len() as u64))?;
                        // SAFETY: `bytes_at` checked that `len` bytes at
                        // `ptr` lie in the block and the mapping.
                        unsafe {
                            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len())
                        };
                        Ok::<(), shmkit_lib::Error>(())
                    })
                })??
                .map_err(to_py)
            }

            /// Copies `size` bytes (default: the whole block) from the block
            /// at `offset`.
            #[pyo3(signature = (offset, size = None))]
            fn read<'py>(
                &self,
                py: Python<'py>,
                offset: i64,
                size: Option<i64>,
            ) -> PyResult<Bound<'py, PyBytes>> {
                let offset = offset_arg(offset)?;
                let len = len_arg(size)?;
                let (ptr, len) = self
                    .handle
                    .with(py, |open| open.blocks.bytes_at(offset, len))?
                    .map_err(to_py)?;
                PyBytes::new_with(py, len as usize, |buffer| {
                    // SAFETY: `bytes_at` checked the range; a bytes object
                    // runs no Python code when it is made, so the segment
                    // is still mapped.
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr.as_ptr(), buffer.as_mut_ptr(), len as usize)
                    };
                    Ok(())
                })
            }

            /// A writable memoryview of `size` bytes (default: the whole
            /// block) of the block at `offset`: no copy, shared with every
            /// process (`numpy.frombuffer(view, dtype)` shares it too).
            #[pyo3(signature = (offset, size = None))]
            fn view<'py>(
                &self,
                py: Python<'py>,
                offset: i64,
                size: Option<i64>,
            ) -> PyResult<Bound<'py, PyAny>> {
                let offset = offset_arg(offset)?;
                let len = len_arg(size)?;
                let (ptr, len) = self
                    .handle
                    .with(py, |open| {
                        let (ptr, len) = open.blocks.bytes_at(offset, len)?;
                        if !open.exported.swap(true, Ordering::Relaxed) {
                            EXPORTED
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(Arc::clone(open));
                        }
                        Ok((ptr, len))
                    })?
                    .map_err(to_py)?;
                // SAFETY: `ptr..ptr+len` lies in a mapping that `EXPORTED`
                // keeps until the process exits.
                unsafe {
                    let view = pyo3::ffi::PyMemoryView_FromMemory(
                        ptr.as_ptr().cast(),
                        len as pyo3::ffi::Py_ssize_t,
                        PYBUF_WRITE,
                    );
                    Bound::from_owned_ptr_or_err(py, view)
                }
            }

            /// Frees the block at `offset`. An offset that is not a live
            /// block raises ValueError and changes nothing.
            fn free(&self, py: Python<'_>, offset: i64) -> PyResult<()> {
                let offset = offset_arg(offset)?;
                self.handle
                    .with(py, |open| open.blocks.free(offset))?
                    .map_err(to_py)
            }

            /// The size asked for when the block at `offset` was allocated.
            fn size_of(&self, py: Python<'_>, offset: i64) -> PyResult<u64> {
                let offset = offset_arg(offset)?;
                self.handle
                    .with(py, |open| open.blocks.block(offset).map(|b| b.size))?
                    .map_err(to_py)
            }

            /// Forgets every block at once (bump allocators; every process
            /// must be done with the old offsets).
            fn reset(&self, py: Python<'_>) -> PyResult<()> {
                self.handle
                    .with(py, |open| open.blocks.reset_shared())?
                    .map_err(to_py)
            }

            /// Bytes users asked for and still hold, over all processes.
            fn used_bytes(&self, py: Python<'_>) -> PyResult<u64> {
                self.handle.with(py, |open| open.blocks.user_totals().0)
            }

            /// Bytes the allocator can still hand out (block headers and
            /// rounding come out of it).
            fn available_bytes(&self, py: Python<'_>) -> PyResult<u64> {
                self.handle.with(py, |open| open.blocks.allocator.stats().free_bytes)
            }

            /// The allocator's accounting, as a dict.
            fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
                let (stats, user, kind, size) = self.handle.with(py, |open| {
                    (
                        open.blocks.allocator.stats(),
                        open.blocks.user_totals(),
                        open.blocks.segment().allocator_kind().to_string(),
                        open.blocks.segment().size(),
                    )
                })?;
                let dict = PyDict::new(py);
                dict.set_item("kind", kind)?;
                dict.set_item("segment_size", size)?;
                dict.set_item("capacity", stats.capacity)?;
                dict.set_item("used_bytes", user.0)?;
                dict.set_item("live_blocks", user.1)?;
                dict.set_item("allocated_bytes", stats.allocated_bytes)?;
                dict.set_item("peak_bytes", stats.peak_bytes)?;
                dict.set_item("live_allocations", stats.live_allocations)?;
                dict.set_item("free_bytes", stats.free_bytes)?;
                dict.set_item("largest_free_block", stats.largest_free_block)?;
                dict.set_item("fragmentation", stats.fragmentation())?;
                Ok(dict)
            }

            /// Walks the allocator's structure; raises ValueError with the
            /// first inconsistency.
            fn check(&self, py: Python<'_>) -> PyResult<()> {
                self.handle.with(py, |open| open.blocks.allocator.check())?.map_err(to_py)
            }

            /// The segment's size in bytes.
            #[getter]
            fn capacity(&self, py: Python<'_>) -> PyResult<u64> {
                self.handle.with(py, |open| open.blocks.segment().size())
            }

            /// The shared-memory name.
            #[getter]
            fn name(&self, py: Python<'_>) -> PyResult<String> {
                self.handle.with(py, |open| open.name.clone())
            }

            /// Whether `close()` was called.
            #[getter]
            fn closed(&self, py: Python<'_>) -> bool {
                self.handle.is_closed(py)
            }

            /// Detaches from the segment (which stays, for other processes,
            /// until `unlink()`); any later call raises ValueError.
            fn close(&self, py: Python<'_>) {
                self.handle.close(py)
            }

            /// Removes the segment's name; attached processes keep their
            /// mapping until they close.
            fn unlink(&self, py: Python<'_>) -> PyResult<()> {
                let name = self.handle.with(py, |open| open.name.clone())?;
                shmkit_lib::segment::remove(&shmkit_lib::Location::Shm(shm_name(&name).to_owned()))
                    .map_err(to_py)
            }

            fn __enter__(slf: Py<Self>) -> Py<Self> {
                slf
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

            /// Pickles by name: the receiving process attaches.
            fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
                let name = self.handle.with(py, |open| open.name.clone())?;
                let attach = py.import("shmkit")?.getattr("_attach")?;
                PyTuple::new(
                    py,
                    [
                        attach,
                        PyTuple::new(py, [stringify!($class), name.as_str()])?.into_any(),
                    ],
                )
            }

            fn __repr__(&self, py: Python<'_>) -> String {
                match self.handle.with(py, |open| (open.name.clone(), open.blocks.segment().size())) {
                    Ok((name, size)) => format!("{}(name={name:?}, capacity={size})", stringify!($class)),
                    Err(_) => format!("{}(closed)", stringify!($class)),
                }
            }
        }
    };
}

allocator_class!(
    /// Lock-free bump allocation: the fastest way to carve a segment; frees
    /// everything at once with `reset()`.
    BumpAllocator,
    {
        #[new]
        #[pyo3(signature = (name, capacity = None, create = true))]
        fn new(name: &str, capacity: Option<i64>, create: bool) -> PyResult<Self> {
            let bump = if create {
                let capacity = capacity.map_or(Ok(DEFAULT_CAPACITY), |c| size_arg(c, "capacity"))?;
                RustBump::create(&options(name, capacity))
            } else {
                RustBump::attach(&SegmentOptions::shm(shm_name(name)))
            }
            .map_err(to_py)?;
            Ok(BumpAllocator {
                handle: Handle::new(Blocks::new(AnyAllocator::Bump(bump)), name.to_owned()),
            })
        }
    }
);

allocator_class!(
    /// A stack: blocks are freed in the reverse order of allocation.
    StackAllocator,
    {
        #[new]
        #[pyo3(signature = (name, capacity = None, create = true))]
        fn new(name: &str, capacity: Option<i64>, create: bool) -> PyResult<Self> {
            let stack = if create {
                let capacity = capacity.map_or(Ok(DEFAULT_CAPACITY), |c| size_arg(c, "capacity"))?;
                RustStack::create(&options(name, capacity))
            } else {
                RustStack::attach(&SegmentOptions::shm(shm_name(name)))
            }
            .map_err(to_py)?;
            Ok(StackAllocator {
                handle: Handle::new(Blocks::new(AnyAllocator::Stack(stack)), name.to_owned()),
            })
        }
    }
);

allocator_class!(
    /// General purpose (two-level segregated fit): any size up to the
    /// capacity; freed memory is reused at any size. `slot_size` and
    /// `num_slots` (from fixed-slot versions) set the capacity when
    /// `capacity` is not given.
    FreeListAllocator,
    {
        #[new]
        #[pyo3(signature = (name, capacity = None, create = true, slot_size = None, num_slots = None))]
        fn new(
            name: &str,
            capacity: Option<i64>,
            create: bool,
            slot_size: Option<i64>,
            num_slots: Option<i64>,
        ) -> PyResult<Self> {
            let capacity = match (capacity, slot_size, num_slots) {
                (Some(capacity), _, _) => Some(capacity),
                (None, Some(slot), Some(count)) => {
                    let slot = size_arg(slot, "slot_size")?;
                    let count = size_arg(count, "num_slots")?;
                    // Room for every slot with its header, plus the state.
                    let bytes = count
                        .checked_mul(slot + 2 * HEADER)
                        .and_then(|b| b.checked_add(1 << 20))
                        .ok_or_else(|| PyValueError::new_err("slot_size * num_slots is too large"))?;
                    Some(i64::try_from(bytes).map_err(|_| PyValueError::new_err("too large"))?)
                }
                _ => None,
            };
            Ok(FreeListAllocator {
                handle: open_general(name, capacity, create, AnyAllocator::FreeList)?,
            })
        }
    }
);

allocator_class!(
    /// Fixed-size slots (`slab_size` bytes each, `num_slabs` of them) with a
    /// lock-free free stack.
    SlabAllocator,
    {
        #[new]
        #[pyo3(signature = (name, slab_size = 256, num_slabs = 4096, create = true))]
        fn new(name: &str, slab_size: i64, num_slabs: i64, create: bool) -> PyResult<Self> {
            let pool = if create {
                let slab = size_arg(slab_size, "slab_size")?;
                let count = size_arg(num_slabs, "num_slabs")?;
                let slot = u32::try_from((slab + HEADER).div_ceil(16) * 16)
                    .map_err(|_| PyValueError::new_err("slab_size is too large"))?;
                let params = PoolParams::new(&[slot]).map_err(to_py)?;
                // Whole pages for `count` slots, one more for page headers,
                // and room for the segment header and the pool's state.
                let page = params.page_size();
                let bytes = count
                    .checked_mul(u64::from(slot))
                    .map(|b| b.div_ceil(page) * page + 2 * page + (64 << 10))
                    .ok_or_else(|| PyValueError::new_err("slab_size * num_slabs is too large"))?;
                PoolAllocator::create_with(&options(name, bytes), &params)
            } else {
                PoolAllocator::attach(&SegmentOptions::shm(shm_name(name)))
            }
            .map_err(to_py)?;
            let largest = pool.slot_sizes().last().copied().unwrap_or(0);
            let blocks = Blocks::new(AnyAllocator::Pool(pool))
                .with_max_request(largest.saturating_sub(HEADER));
            Ok(SlabAllocator {
                handle: Handle::new(blocks, name.to_owned()),
            })
        }
    }
);

allocator_class!(
    /// Power-of-two blocks that split and merge.
    BuddyAllocator,
    {
        #[new]
        #[pyo3(signature = (name, capacity = None, create = true))]
        fn new(name: &str, capacity: Option<i64>, create: bool) -> PyResult<Self> {
            Ok(BuddyAllocator {
                handle: open_general(name, capacity, create, AnyAllocator::Buddy)?,
            })
        }
    }
);

allocator_class!(
    /// Fine size classes over a lock-free page heap; freed pages are reused
    /// at any size.
    SizeClassAllocator,
    {
        #[new]
        #[pyo3(signature = (name, capacity = None, create = true))]
        fn new(name: &str, capacity: Option<i64>, create: bool) -> PyResult<Self> {
            Ok(SizeClassAllocator {
                handle: open_general(name, capacity, create, AnyAllocator::SizeClass)?,
            })
        }
    }
);

allocator_class!(
    /// Per-thread caches in the segment over size classes: the fastest for
    /// small blocks that are freed and allocated again.
    ThreadLocalAllocator,
    {
        #[new]
        #[pyo3(signature = (name, capacity = None, create = true))]
        fn new(name: &str, capacity: Option<i64>, create: bool) -> PyResult<Self> {
            Ok(ThreadLocalAllocator {
                handle: open_general(name, capacity, create, AnyAllocator::ThreadLocal)?,
            })
        }
    }
);

/// Attaches an allocator of class `kind` by name (what unpickling calls).
#[pyfunction]
fn _attach(py: Python<'_>, kind: &str, name: &str) -> PyResult<Py<PyAny>> {
    let attached = match kind {
        "BumpAllocator" => Py::new(py, BumpAllocator::new(name, None, false)?)?.into_any(),
        "StackAllocator" => Py::new(py, StackAllocator::new(name, None, false)?)?.into_any(),
        "FreeListAllocator" => {
            Py::new(py, FreeListAllocator::new(name, None, false, None, None)?)?.into_any()
        }
        "SlabAllocator" => Py::new(py, SlabAllocator::new(name, 1, 1, false)?)?.into_any(),
        "BuddyAllocator" => Py::new(py, BuddyAllocator::new(name, None, false)?)?.into_any(),
        "SizeClassAllocator" => {
            Py::new(py, SizeClassAllocator::new(name, None, false)?)?.into_any()
        }
        "ThreadLocalAllocator" => {
            Py::new(py, ThreadLocalAllocator::new(name, None, false)?)?.into_any()
        }
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown allocator {other:?}"
            )))
        }
    };
    Ok(attached)
}

#[pymodule]
fn shmkit(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add_class::<BumpAllocator>()?;
    module.add_class::<StackAllocator>()?;
    module.add_class::<FreeListAllocator>()?;
    module.add_class::<SlabAllocator>()?;
    module.add_class::<BuddyAllocator>()?;
    module.add_class::<SizeClassAllocator>()?;
    module.add_class::<ThreadLocalAllocator>()?;
    module.add_function(wrap_pyfunction!(_attach, module)?)?;
    module.add("WrongAllocatorError", py.get_type::<WrongAllocatorError>())?;
    module.add("CorruptSegmentError", py.get_type::<CorruptSegmentError>())?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
