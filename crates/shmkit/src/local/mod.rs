//! Process-local tools: memory that one process uses on its own, built with
//! the same care as the shared allocators.
//!
//! Nothing here lives in a segment, so any Rust type may be stored, and
//! addresses (not offsets) are the handles.

pub mod arena;
pub mod guarded;
pub mod mapped_file;
pub mod object_pool;
pub mod tracker;

pub use object_pool::{ConcurrentPool, ConcurrentPooled, ObjectPool, Pooled};
