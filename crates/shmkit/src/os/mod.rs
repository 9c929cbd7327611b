//! What the operating system answers, and nothing above it: the process and
//! thread ids (cached, and forgotten in a forked child), whether a process
//! or thread is alive, the page size, `/proc/PID/maps`, futexes, random
//! bytes and NUMA placement calls.
//!
//! This is the bottom layer: it names nothing else in the crate, and it
//! speaks `std::io` errors, which the layers above turn into
//! [`Error`](crate::Error)s with their context.

/// Shared futex wait and wake on a word that may live in a segment.
pub(crate) mod futex;
/// Who a thread is: its id and its start time, and whether it is dead.
pub(crate) mod identity;
/// Whether a process maps a segment, from `/proc/PID/maps`.
pub(crate) mod mapped_by;
/// Page size and memory placement (`mbind`).
pub(crate) mod memory;
/// The cached process id, reset in a forked child; whether a pid lives.
pub(crate) mod process;
/// Random bytes from the kernel.
pub(crate) mod random;
/// The cached kernel thread id, reset in a forked child, and the dense
/// per-process thread index.
pub(crate) mod thread_id;
