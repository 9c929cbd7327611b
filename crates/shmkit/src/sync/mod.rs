//! Cross-process synchronization building blocks that live in shared memory.
//!
//! The algorithms here are written once, generic over the atomic cell they
//! run on, so that the production code (on `std` atomics in a segment) and
//! the `loom` model checks (on `loom` atomics) execute the same lines.
//!
//! Public: [`ShmMutex`] and [`ShmRwLock`], locks that live in a segment,
//! sleep in the kernel (shared futexes) and survive a dead holder; and
//! [`current_pid`], the cached process id.

/// The atomic word the algorithms run on, in a segment or under loom.
pub(crate) mod atomic_word;
pub(crate) mod cursor;
/// A robust mutex that lives in a segment.
mod mutex;
/// The one repair policy for structures behind a robust lock.
pub(crate) mod repair;
pub(crate) mod robust_lock;
/// A robust reader-writer lock that lives in a segment.
mod rwlock;
/// The owner word of a per-thread slot: claim, release, take over the dead.
pub(crate) mod slot_owner;
/// The pool's free stack of slot indices, links kept in the free slots.
pub(crate) mod slot_stack;
/// The size-class allocator's stacks of page runs and blocks.
pub(crate) mod tagged_stack;

pub use mutex::{ShmMutex, ShmMutexGuard};

pub use crate::os::process::current_pid;
pub use rwlock::{ShmRwLock, ShmRwLockReadGuard, ShmRwLockWriteGuard, READER_SLOTS};
