//! Allocators whose state lives in the segment.
//!
//! Each allocator has a file of its own; all of them implement
//! [`SegmentAllocator`] (creation, attachment, buffers) and the linear ones
//! share the allocation methods of [`LinearAlloc`].

mod any;
mod buddy;
mod bump;
pub(crate) mod counters;
mod free_list;
pub(crate) mod handoff;
mod in_segment;
mod linear;
mod magazine;
mod malloc;
pub(crate) mod memory_resource;
mod pool;
mod recovery;
mod segment_allocator;
pub(crate) mod shm_allocator;
mod size_class;
mod stack;
mod thread_local;

pub use crate::os::thread_id::current_thread_index;
pub use crate::segment::{AllocatorKind, CUSTOM_KIND_BASE};
pub use any::{AllocatorVisitor, AnyAllocator};
pub use buddy::{BuddyAllocator, BuddyParams};
pub use bump::{BumpAllocator, LocalBump, Mark, Scope};
pub use counters::AllocStats;
pub use free_list::FreeListAllocator;
pub use linear::{LinearAlloc, CACHE_LINE, SIMD_ALIGN};
pub use malloc::MallocAllocator;
pub use memory_resource::MemoryResource;
pub use pool::{PoolAllocator, PoolParams, POOL_MAX_SLABS, POOL_MAX_SLOT, POOL_MIN_SLOT};
pub use recovery::RecoveryReport;
pub use segment_allocator::{InBuffer, SegmentAllocator};
pub use shm_allocator::{MemContext, Region, ShmAllocator};
pub use size_class::SizeClassAllocator;
pub use stack::StackAllocator;
pub use thread_local::ThreadLocalAllocator;
