//! Containers and queues that live inside a segment.
//!
//! Every type here is [`ShmSafe`](crate::ShmSafe): it holds offsets, never
//! addresses, so it can itself be placed in a segment (as a named object, a
//! root, or inside another container) and used from every attached process.
//! Operations that allocate take the segment's allocator as an argument.

mod boxed;
mod hash_map;
mod mpmc_ring;
mod spsc_ring;
mod string;
mod vec;

pub use boxed::ShmBox;
pub use hash_map::ShmHashMap;
pub use string::ShmString;
pub use vec::ShmVec;
