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
/// Shared futex wait and wake on a word in a segment.
pub(crate) mod futex;
/// Who holds a lock: a thread id and the thread's start time.
pub(crate) mod identity;
/// Whether a process maps a segment, from `/proc/PID/maps`.
pub(crate) mod mapped_by;
/// A robust mutex that lives in a segment.
mod mutex;
/// The cached process id, reset in a forked child.
pub(crate) mod pid;
pub(crate) mod robust_lock;
/// A robust reader-writer lock that lives in a segment.
mod rwlock;
/// The owner word of a per-thread slot: claim, release, take over the dead.
pub(crate) mod slot_owner;
/// The pool's free stack of slot indices, links kept in the free slots.
pub(crate) mod slot_stack;
/// The size-class allocator's stacks of page runs and blocks.
pub(crate) mod tagged_stack;
/// The cached kernel thread id, reset in a forked child.
pub(crate) mod thread_id;

pub use mutex::{ShmMutex, ShmMutexGuard};

/// This process's id without a system call: cached, and learned afresh in
/// a forked child (which has a new pid). Cheap enough to compare on every
/// call, which is how process-local state tells that it was inherited
/// through `fork`.
#[inline]
pub fn current_pid() -> u32 {
    pid::cached_pid()
}
pub use rwlock::{ShmRwLock, ShmRwLockReadGuard, ShmRwLockWriteGuard, READER_SLOTS};
