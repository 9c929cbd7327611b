//! # shmkit's C API
//!
//! C and C++ programs create, attach and allocate from the same segments as
//! Rust and Python processes: the allocators' whole state lives in the
//! segment, so a block a C process allocates is a block every other
//! process sees, and an offset means the same thing in each of them.
//!
//! In C's idiom: opaque handles (`shmkit_heap`), an `int`-sized status from
//! every call (`shmkit_status`, `SHMKIT_OK` is 0) with the message of the
//! last failure on the calling thread (`shmkit_last_error`), no Rust types
//! across the boundary, and no panic across it (one is caught and reported
//! as `SHMKIT_E_PANIC`). A null argument, a handle that is not one, a stale
//! offset or a double free is an error code, never a crash.
//!
//! The header, `include/shmkit.h`, is generated from this crate with
//! `cbindgen` and checked in; `include/shmkit.hpp` wraps it for C++.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

/// What every opaque handle shares.
mod handle;
/// Segments and their allocators.
pub mod heap;
/// What the two message queues share: put, get and done.
pub mod messages;
/// Named objects, found and made by name from any process.
pub mod named;
/// The message queue of raw bytes, shared with Python's `shmkit.Queue`.
pub mod queue;
/// The single-producer single-consumer message queue of raw bytes.
pub mod spsc;
/// Status codes and the last error.
pub mod status;

/// Test only: arming a crash point from C.
#[cfg(feature = "crash-points")]
#[doc(hidden)]
pub mod crash;

pub use heap::*;
pub use named::*;

/// The system libraries a program linked with the static library names
/// after it (what `pkg-config --libs --static shmkit` adds).
pub const STATIC_LINK_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];
pub use messages::shmkit_message;
pub use queue::*;
pub use spsc::*;
pub use status::*;
