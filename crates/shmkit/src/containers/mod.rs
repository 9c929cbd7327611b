//! Containers and queues that live inside a segment.
//!
//! Every type here is [`ShmSafe`](crate::ShmSafe): it holds offsets, never
//! addresses, so it can itself be placed in a segment (as a named object, a
//! root, or inside another container) and used from every attached process.
//! Operations that allocate take the segment's allocator as an argument.
//!
//! # The containers
//!
//! [`ShmBox`], [`ShmVec`], [`ShmString`] and [`ShmHashMap`] are value types
//! of a few `u64`s (offsets, lengths, the segment id of their storage). Each
//! operation that reads or allocates their storage takes the segment's
//! allocator (`&A` with `A: ShmAllocator + ?Sized`, so `&dyn ShmAllocator`
//! works too) and first checks the container's fields against it: they are
//! read from shared memory, where another process or a crashed one may have
//! left anything, so an inconsistent field is an [`Error::CorruptData`]
//! and an allocator of another segment an [`Error::ForeignPointer`], never
//! a read past the storage.
//!
//! They have no `Drop` (a value in shared memory cannot know its
//! allocator): call `free` with the allocator to drop the elements and give
//! the storage back, inner containers first. Forgetting it leaks the
//! storage, like a leaked `Box`.
//!
//! # Concurrency
//!
//! These four containers are **not synchronized**. At most one writer may
//! use a container at a time, and no reader, in this process or another,
//! may read it while a writer changes it: a reader could see a length
//! that its storage does not have yet (the checks turn that into an error,
//! not a crash, but the answer is still wrong) or a moved table. Share one
//! between processes behind a cross-process lock that lives in the same
//! segment, such as `shmkit::sync::ShmMutex` or `shmkit::sync::ShmRwLock`,
//! and hold it for every operation, reads included.
//!
//! # Queues
//!
//! [`MpmcRing`] (any number of producers and consumers) and [`SpscRing`]
//! (one of each, roles enforced) are bounded rings of `T: ShmSafe + Copy`.
//! Each is created from an allocator and named by its offset; a process
//! opens it into a handle ([`MpmcHandle`], or the [`SpscProducer`] and
//! [`SpscConsumer`] endpoints) that validates the ring once and keeps the
//! checked bounds locally. Every operation of an [`MpmcHandle`] is safe to
//! call from many threads and processes at once; an SPSC endpoint is used
//! by one thread at a time and exists once per role. Both have
//! non-blocking (`try_push`, `try_pop`), blocking (`push`, `pop`) and
//! timed (`push_timeout`, `pop_timeout`) operations; blocked callers sleep
//! on a shared futex and are woken by the other side from any process,
//! with no system call when nobody sleeps. What a process killed in the
//! middle of an operation leaves behind differs: an SPSC ring stays
//! consistent, an MPMC ring can stall (see [`MpmcRing`]).
//!
//! [`Error::CorruptData`]: crate::Error::CorruptData
//! [`Error::ForeignPointer`]: crate::Error::ForeignPointer

mod boxed;
mod hash_map;
/// The message queue format shared with Python and C.
pub mod message_queue;
mod mpmc_ring;
/// What both rings share: header, signal, cells, environment.
mod ring_core;
mod spsc_ring;
mod storage;
mod string;
mod vec;

pub use boxed::ShmBox;
pub use hash_map::ShmHashMap;
pub use mpmc_ring::{InFlight, MpmcHandle, MpmcRing};
pub use spsc_ring::{SpscConsumer, SpscProducer, SpscRing};
pub use string::ShmString;
pub use vec::ShmVec;
