//! # shmkit
//!
//! Memory that several processes share: carve one shared region into objects
//! from many processes at once, and refer to those objects by offsets that
//! mean the same thing in every process.
//!
//! * A [`Segment`] is a mapped region (POSIX shared memory, a file, a memfd,
//!   private memory or a caller's buffer) that starts with a validated header.
//!   Creating one is a handshake: header, allocator state, then *ready*.
//! * Pointers are position independent: [`Offset`] (segment-relative),
//!   [`ShmPtr`] (segment id + offset) and [`FullPtr`] (local address + shared
//!   form). Only [`ShmSafe`] types, which hold no addresses, go into a segment.
//! * Allocators keep their whole state in the segment, so every attached
//!   process allocates from the same structure: [`BumpAllocator`] (one
//!   lock-free compare-and-swap per allocation) and [`StackAllocator`] (LIFO)
//!   carve; [`PoolAllocator`], [`FreeListAllocator`], [`BuddyAllocator`],
//!   [`SizeClassAllocator`] and [`ThreadLocalAllocator`] also free, behind
//!   one trait, [`ShmAllocator`] (with [`MallocAllocator`] for process-local
//!   code).
//!
//! ```
//! use shmkit::{BumpAllocator, LinearAlloc, SegmentAllocator, SegmentOptions};
//!
//! let name = format!("shmkit-doc-{}", std::process::id());
//! let options = SegmentOptions::shm(&name).size(1 << 20);
//!
//! // Process A creates the segment and publishes an object under a name.
//! let creator = BumpAllocator::create(&options)?;
//! let greeting = creator.make_handle(*b"hello, other process\0\0\0\0")?;
//! creator.segment().set_root("greeting", greeting)?;
//!
//! // Process B (here: a second mapping) attaches by name and finds it.
//! let attacher = BumpAllocator::attach(&options)?;
//! let found = attacher.segment().root::<[u8; 24]>("greeting").expect("published");
//! let bytes = attacher.segment().resolve(found)?;
//! assert_eq!(&unsafe { bytes.as_ref() }[..5], b"hello");
//!
//! creator.segment().unlink()?; // names are removed only on request
//! # Ok::<(), shmkit::Error>(())
//! ```
//!
//! Process-local tools live in [`local`]: a chunked arena with scopes,
//! object pools, guard-paged fiber stacks, a memory tracker and mapped
//! files; [`alloc::MemoryResource`] puts every allocator behind one
//! object-safe trait, and [`numa`] binds memory to a node.
//!
//! Errors are typed ([`Error`]): a foreign or corrupt segment, a wrong
//! allocator kind, an offset out of range, a bad free or an out-of-memory
//! request is reported, never undefined behaviour.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

pub mod alloc;
pub mod containers;
#[doc(hidden)]
pub mod crash_point;
mod error;
pub mod local;
pub mod named;
pub mod numa;
mod os;
pub mod ptr;
pub mod registry;
pub mod segment;
mod stable_hash;
pub mod sync;

pub use alloc::{
    AllocStats, AllocatorKind, AllocatorVisitor, AnyAllocator, BuddyAllocator, BuddyParams,
    BumpAllocator, FreeListAllocator, InBuffer, LinearAlloc, LocalBump, MallocAllocator, Mark,
    MemContext, PoolAllocator, PoolParams, RecoveryReport, Region, Scope, SegmentAllocator,
    ShmAllocator, SizeClassAllocator, StackAllocator, ThreadLocalAllocator, CACHE_LINE, SIMD_ALIGN,
};
pub use containers::{ShmBox, ShmHashMap, ShmString, ShmVec};
pub use error::{Error, Result};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
pub use ptr::{AtomicOffset, FullPtr, Offset, SegmentId, ShmPtr, ShmSafe};
pub use segment::{Location, Opened, ReadOnlySegment, Segment, SegmentOptions};
pub use sync::{ShmMutex, ShmRwLock};
