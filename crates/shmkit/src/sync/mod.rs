//! Cross-process synchronization building blocks that live in shared memory.
//!
//! The algorithms here are written once, generic over the atomic cell they
//! run on, so that the production code (on `std` atomics in a segment) and
//! the `loom` model checks (on `loom` atomics) execute the same lines.

/// The atomic word the algorithms run on, in a segment or under loom.
pub(crate) mod atomic_word;
pub(crate) mod cursor;
/// Shared futex wait and wake on a word in a segment.
pub(crate) mod futex;
/// Whether a process maps a segment, from `/proc/PID/maps`.
pub(crate) mod mapped_by;
/// The cached process id, reset in a forked child.
pub(crate) mod pid;
pub(crate) mod robust_lock;
/// The owner word of a per-thread slot: claim, release, take over the dead.
pub(crate) mod slot_owner;
/// The pool's free stack of slot indices, links kept in the free slots.
pub(crate) mod slot_stack;
/// The size-class allocator's stacks of page runs and blocks.
pub(crate) mod tagged_stack;
