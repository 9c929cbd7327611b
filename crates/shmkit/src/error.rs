//! The one error type of shmkit.
//!
//! Every fallible operation returns [`Result<T>`](crate::Result). Each failure
//! that a caller may want to act on has its own variant, so code can `match`
//! on it instead of parsing a message.

use std::io;
use std::time::Duration;

use crate::segment::kind::AllocatorKind;

/// The result type of shmkit.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in shmkit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No segment exists under this name or path.
    #[error("segment `{name}` not found")]
    NotFound {
        /// The name or path that was looked up.
        name: String,
    },

    /// Creation was asked for, but a segment with this name already exists.
    #[error("segment `{name}` already exists")]
    AlreadyExists {
        /// The name or path that was taken.
        name: String,
    },

    /// The operating system refused access to the segment.
    #[error("permission denied for segment `{name}`")]
    PermissionDenied {
        /// The name or path of the segment.
        name: String,
    },

    /// The bytes at the start of the segment are not a shmkit header.
    #[error("`{name}` is not a shmkit segment (bad magic)")]
    NotShmkit {
        /// The name or path of the segment.
        name: String,
    },

    /// The segment was written by a shmkit with another on-segment format.
    #[error(
        "segment format version {found} is not supported (this build reads version {supported})"
    )]
    UnsupportedVersion {
        /// The version recorded in the segment.
        found: u32,
        /// The version this build understands.
        supported: u32,
    },

    /// The header is inconsistent: its layout hash or one of its sizes and
    /// offsets does not hold.
    #[error("segment header is corrupt: {reason}")]
    CorruptHeader {
        /// What did not hold.
        reason: String,
    },

    /// The segment holds what processes that died in the middle of an
    /// operation left behind: blocks half allocated or half freed, thread
    /// caches or locks of dead processes. Not corruption: a recovery pass
    /// ([`ShmAllocator::recover`](crate::ShmAllocator::recover)) mends it.
    #[error("needs recovery: {blocks} blocks and {caches} caches of dead processes ({detail})")]
    NeedsRecovery {
        /// Blocks (slots, pages) a dead process left half allocated, half
        /// freed or on no free structure.
        blocks: u64,
        /// Thread caches and locks held by dead processes.
        caches: u64,
        /// What was found, in words.
        detail: String,
    },

    /// The segment is managed by another kind of allocator.
    #[error("segment holds a {found} allocator, expected {expected}")]
    WrongAllocator {
        /// The kind the caller asked for.
        expected: AllocatorKind,
        /// The kind recorded in the segment.
        found: AllocatorKind,
    },

    /// The allocator kind matches but its parameters differ.
    #[error("{kind} allocator parameters differ: segment has {found:?}, expected {expected:?}")]
    WrongAllocatorParams {
        /// The allocator kind.
        kind: AllocatorKind,
        /// The parameters the caller asked for.
        expected: Vec<u64>,
        /// The parameters recorded in the segment.
        found: Vec<u64>,
    },

    /// The backing object is shorter than its header says.
    #[error("segment is truncated: it has {actual} bytes but needs {expected}")]
    Truncated {
        /// The length the header (or a header) requires.
        expected: u64,
        /// The length of the backing object.
        actual: u64,
    },

    /// The process that was creating the segment died before it was ready.
    #[error("the creator of the segment (pid {pid}) died before the segment was ready")]
    CreatorDied {
        /// The creator's process id.
        pid: u32,
    },

    /// The creator gave up on the segment (its initialization failed).
    #[error("the creator of the segment (pid {pid}) failed to initialize it")]
    CreationFailed {
        /// The creator's process id.
        pid: u32,
    },

    /// The segment did not become ready within the attach timeout.
    #[error("segment was not ready after waiting {waited:?}")]
    NotReady {
        /// How long the attacher waited.
        waited: Duration,
    },

    /// The allocator has no room for the request.
    #[error(
        "out of memory: asked for {}, {} available",
        human_bytes(*requested),
        human_bytes(*available)
    )]
    OutOfMemory {
        /// Bytes requested (including alignment padding where known).
        requested: u64,
        /// Bytes still available in the allocator.
        available: u64,
    },

    /// The backing store (for example a full `/dev/shm`) cannot hold the segment.
    #[error("no space to back {} of segment `{name}`", human_bytes(*requested))]
    NoSpace {
        /// The name or path of the segment.
        name: String,
        /// The size that could not be reserved.
        requested: u64,
    },

    /// A size is zero, too small or overflows.
    #[error("invalid size: {reason}")]
    InvalidSize {
        /// Why the size was refused.
        reason: String,
    },

    /// An alignment the segment cannot honour.
    #[error("alignment {align} is not supported here (maximum {max})")]
    InvalidAlignment {
        /// The requested alignment.
        align: usize,
        /// The largest alignment this segment guarantees.
        max: usize,
    },

    /// A segment name or path that shmkit refuses.
    #[error("invalid segment name `{name}`: {reason}")]
    InvalidName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// Another live process uses what the operation would rebuild (a
    /// recovery pass while the segment is still in use, say).
    #[error("segment is in use: {reason}")]
    InUse {
        /// Who uses it.
        reason: String,
    },

    /// The operation does not apply to this segment or allocator.
    #[error("unsupported operation: {0}")]
    Unsupported(&'static str),

    /// A null offset was decoded.
    #[error("null offset")]
    NullOffset,

    /// An offset (with the object it names) does not lie inside the segment.
    #[error("offset {offset} (+{len} bytes) is out of bounds of a {size}-byte segment")]
    OutOfBounds {
        /// The offset.
        offset: u64,
        /// The number of bytes the object spans.
        len: u64,
        /// The current segment size.
        size: u64,
    },

    /// An offset is not aligned for the type it is decoded as.
    #[error("offset {offset} is not aligned to {align}")]
    Misaligned {
        /// The offset.
        offset: u64,
        /// The required alignment.
        align: usize,
    },

    /// A pointer belongs to another segment or to no segment.
    #[error("pointer does not belong to this segment")]
    ForeignPointer,

    /// A stack free that was not of the most recent live allocation.
    #[error("block at offset {offset} is not the top of the stack")]
    NotTopOfStack {
        /// The offset that was freed.
        offset: u64,
    },

    /// A free of a block that this allocator did not hand out or that is no
    /// longer live (a double free).
    #[error("block at offset {offset} is not a live allocation of this allocator")]
    InvalidFree {
        /// The offset that was freed.
        offset: u64,
    },

    /// The segment cannot grow to the requested size.
    #[error("cannot grow segment to {requested} bytes (maximum {max})")]
    GrowBeyondMax {
        /// The requested size.
        requested: u64,
        /// The maximum size fixed at creation.
        max: u64,
    },

    /// A shared lock stayed held by a live process past the caller's patience.
    #[error("lock held by pid {owner_pid} for longer than {waited:?}")]
    LockTimeout {
        /// The process holding the lock.
        owner_pid: u32,
        /// How long the caller waited.
        waited: Duration,
    },

    /// A lock is held by another thread or process, and the caller asked
    /// not to wait for it ([`MemContext::refuse_waits`](crate::MemContext::refuse_waits)).
    /// Nothing was changed: the operation can be retried as it is.
    #[error("a lock is held by pid {owner_pid} and the caller asked not to wait")]
    WouldBlock {
        /// The process holding the lock.
        owner_pid: u32,
    },

    /// A named root operation failed.
    #[error("named root `{name}`: {reason}")]
    Root {
        /// The root name.
        name: String,
        /// What went wrong.
        reason: &'static str,
    },

    /// An index past the end of a container.
    #[error("index {index} is out of range for length {len}")]
    IndexOutOfRange {
        /// The index asked for.
        index: usize,
        /// The container's length.
        len: usize,
    },

    /// No named object has this name.
    #[error("no object named `{name}`")]
    NameNotFound {
        /// The name that was looked up.
        name: String,
    },

    /// A named object with this name already exists.
    #[error("an object named `{name}` already exists")]
    NameExists {
        /// The name that was taken.
        name: String,
    },

    /// A named object exists but holds another type than the one asked for.
    #[error("object `{name}` holds {found}, not {expected}")]
    WrongType {
        /// The name that was looked up.
        name: String,
        /// The type the caller asked for (name, size, alignment).
        expected: String,
        /// The type recorded with the object.
        found: String,
    },

    /// A structure that lives in the segment (a container, a queue, a lock,
    /// the name directory) holds values it could never have written.
    #[error("corrupt {what} in the segment: {reason}")]
    CorruptData {
        /// Which structure.
        what: &'static str,
        /// What did not hold.
        reason: String,
    },

    /// A write to a file that was mapped read-only.
    #[error(
        "`{}` is mapped read-only; map it read-write or copy-on-write to change it",
        .path.display()
    )]
    ReadOnlyMapping {
        /// The mapped file.
        path: std::path::PathBuf,
    },

    /// Locking pages into memory would pass the process's `RLIMIT_MEMLOCK`.
    #[error(
        "locking {requested} bytes would pass this process's locked-memory limit of {limit} \
         bytes (RLIMIT_MEMLOCK, which also counts what the process has locked already); \
         raise the limit or grant CAP_IPC_LOCK"
    )]
    LockLimit {
        /// The bytes the failed lock asked for.
        requested: u64,
        /// The soft `RLIMIT_MEMLOCK` in force, in bytes.
        limit: u64,
    },

    /// A NUMA node that is not online on this machine.
    #[error("NUMA node {node} is not online (online nodes: {online:?})")]
    NumaNodeOffline {
        /// The node asked for.
        node: u32,
        /// The nodes that are online.
        online: Vec<u32>,
    },

    /// Every object of an object pool with a maximum is in use, and the pool
    /// may make no more.
    #[error("object pool exhausted: all {max_objects} objects are in use")]
    PoolExhausted {
        /// The most objects the pool may hold.
        max_objects: usize,
    },

    /// An operating-system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What shmkit was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// Wraps the last OS error with a description of what was being done.
    pub(crate) fn last_os(context: impl Into<String>) -> Self {
        Error::Io {
            context: context.into(),
            source: io::Error::last_os_error(),
        }
    }

    pub(crate) fn corrupt(reason: impl Into<String>) -> Self {
        Error::CorruptHeader {
            reason: reason.into(),
        }
    }

    pub(crate) fn needs_recovery(blocks: u64, caches: u64, detail: impl Into<String>) -> Self {
        Error::NeedsRecovery {
            blocks,
            caches,
            detail: detail.into(),
        }
    }

    pub(crate) fn corrupt_data(what: &'static str, reason: impl Into<String>) -> Self {
        Error::CorruptData {
            what,
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid_size(reason: impl Into<String>) -> Self {
        Error::InvalidSize {
            reason: reason.into(),
        }
    }
}

/// A byte count as people read it in a message: `512 B`, `1.5 KiB`,
/// `100.0 TiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}
