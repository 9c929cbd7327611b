//! Cross-process synchronization building blocks that live in shared memory.
//!
//! The algorithms here are written once, generic over the atomic cell they
//! run on, so that the production code (on `std` atomics in a segment) and
//! the `loom` model checks (on `loom` atomics) execute the same lines.

pub(crate) mod cursor;
pub(crate) mod robust_lock;
pub(crate) mod tagged_stack;
