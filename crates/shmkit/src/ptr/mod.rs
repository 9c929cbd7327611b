//! Position-independent pointers.
//!
//! * [`Offset<T>`]: segment-relative, the form stored inside segments;
//! * [`ShmPtr<T>`]: segment id + offset, meaningful in any process;
//! * [`FullPtr<T>`]: the local address together with its `ShmPtr`;
//! * [`AtomicOffset<T>`]: an offset updated atomically by several processes;
//! * [`ShmSafe`]: the marker for types that may be placed in a segment.

mod atomic_offset;
mod full_ptr;
mod offset;
mod shm_ptr;
mod shm_safe;

pub use atomic_offset::AtomicOffset;
pub use full_ptr::FullPtr;
pub use offset::Offset;
pub use shm_ptr::{SegmentId, ShmPtr};
pub use shm_safe::ShmSafe;
