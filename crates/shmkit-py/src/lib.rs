//! The native part of the `shmkit` Python package (`python/shmkit`): the
//! allocator classes over shared memory, with the API of the
//! `shared_allocator` package and more. See `python/shmkit/__init__.pyi`
//! for the documented Python API.
//!
//! The layers, bottom up: `layer.rs` (the capacity budget in the segment's
//! custom header), `blocks.rs` (the header in front of every block),
//! `views.rs` (this process's live views per block), `heap.rs` (one
//! attached segment: allocate, free, bounds, accounting, recovery),
//! `buffer.rs` (the buffer protocol both ways), `args.rs` and `errors.rs`
//! (arguments and exceptions), `classes.rs` (the Python classes). Beside
//! them, each over a segment of its own: `queue.rs` (`shmkit.Queue`) and
//! `dict.rs` (`shmkit.Dict`), with `own_segment.rs` for what both share
//! (their calls without the interpreter lock, accounting, the recovery
//! sweep).

mod args;
mod blocks;
mod buffer;
mod classes;
mod dict;
mod errors;
mod heap;
mod layer;
mod own_segment;
mod queue;
mod views;

use pyo3::prelude::*;

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = module.py();
    module.add_class::<classes::BumpAllocator>()?;
    module.add_class::<classes::StackAllocator>()?;
    module.add_class::<classes::FreeListAllocator>()?;
    module.add_class::<classes::SlabAllocator>()?;
    module.add_class::<classes::BuddyAllocator>()?;
    module.add_class::<classes::SizeClassAllocator>()?;
    module.add_class::<classes::ThreadLocalAllocator>()?;
    module.add_class::<queue::RawQueue>()?;
    module.add_class::<dict::RawDict>()?;
    module.add_function(wrap_pyfunction!(classes::unlink, module)?)?;
    module.add(
        "WrongAllocatorError",
        py.get_type::<errors::WrongAllocatorError>(),
    )?;
    module.add(
        "CorruptSegmentError",
        py.get_type::<errors::CorruptSegmentError>(),
    )?;
    module.add(
        "NeedsRecoveryError",
        py.get_type::<errors::NeedsRecoveryError>(),
    )?;
    module.add(
        "SegmentInUseError",
        py.get_type::<errors::SegmentInUseError>(),
    )?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
