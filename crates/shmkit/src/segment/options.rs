//! What a caller asks for when creating or attaching a segment.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Where a segment's bytes live.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Location {
    /// A POSIX shared-memory object (`/dev/shm/NAME` on Linux).
    Shm(String),
    /// A memory-mapped file at a path.
    File(PathBuf),
    /// A new anonymous memory file; the name only labels it.
    Memfd(String),
    /// An open descriptor of an existing segment (a memfd passed by a parent,
    /// say); attach only. Each attach duplicates it.
    Fd(Arc<OwnedFd>),
    /// Private anonymous memory of this process; create only.
    Private,
}

impl Location {
    /// A human-readable name for messages.
    pub fn display_name(&self) -> String {
        match self {
            Location::Shm(name) => name.clone(),
            Location::File(path) => path.display().to_string(),
            Location::Memfd(name) => format!("memfd:{name}"),
            Location::Fd(fd) => format!("fd:{}", fd.as_raw_fd()),
            Location::Private => "private".to_owned(),
        }
    }
}

/// Default size of a new segment: 64 MiB.
pub const DEFAULT_SIZE: u64 = 64 << 20;

/// Default time an attacher waits for a segment to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// Options for creating or attaching a segment, built fluently.
///
/// ```
/// use shmkit::SegmentOptions;
///
/// let options = SegmentOptions::shm("telemetry")
///     .size(64 << 20)          // 64 MiB now...
///     .max_size(1 << 30)       // ...growable to 1 GiB while attached
///     .mode(0o660)             // group may attach too
///     .custom_header_len(256); // room for an application header
/// # let _ = options;
/// ```
#[derive(Clone, Debug)]
pub struct SegmentOptions {
    pub(crate) location: Location,
    pub(crate) size: u64,
    pub(crate) max_size: Option<u64>,
    pub(crate) mode: u32,
    pub(crate) custom_header_len: u32,
    pub(crate) custom_header_init: Option<Arc<[u8]>>,
    pub(crate) ready_timeout: Duration,
    pub(crate) zero_on_free: bool,
    pub(crate) commit_upfront: bool,
}

impl SegmentOptions {
    /// Options for a segment at `location`, with default size and mode 0600.
    pub fn new(location: Location) -> Self {
        SegmentOptions {
            location,
            size: DEFAULT_SIZE,
            max_size: None,
            mode: 0o600,
            custom_header_len: 0,
            custom_header_init: None,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            zero_on_free: false,
            commit_upfront: false,
        }
    }

    /// A POSIX shared-memory object. `name` may start with `/`; it may not
    /// contain any other `/`.
    pub fn shm(name: impl Into<String>) -> Self {
        Self::new(Location::Shm(name.into()))
    }

    /// A memory-mapped file.
    pub fn file(path: impl Into<PathBuf>) -> Self {
        Self::new(Location::File(path.into()))
    }

    /// A new memfd (create only; share it by fork or by passing its descriptor).
    pub fn memfd(label: impl Into<String>) -> Self {
        Self::new(Location::Memfd(label.into()))
    }

    /// An open descriptor of an existing segment (attach only). To attach
    /// through a descriptor you do not own, pass `fd.try_clone_to_owned()?`.
    pub fn fd(fd: OwnedFd) -> Self {
        Self::new(Location::Fd(Arc::new(fd)))
    }

    /// Private anonymous memory (create only).
    pub fn private() -> Self {
        Self::new(Location::Private)
    }

    /// The size in bytes, header included (rounded up to a page): what the
    /// allocator may hand out, recorded as the segment's
    /// [`capacity`](crate::Segment::capacity). Ignored on attach.
    ///
    /// Creation backs only the header, the allocator's state and the first
    /// megabyte of the data area; the allocators back the rest in steps as
    /// they need it, so a 4 GiB segment is created in about as long as a
    /// 4 MiB one and commits memory as it fills. The whole range is mapped
    /// at once and never moves. Creation refuses (`NoSpace`) a size the file
    /// system does not have room for; should other users fill it later, the
    /// allocation that needs more backing fails with `NoSpace` (never a
    /// SIGBUS on a later touch). [`commit_upfront`](Self::commit_upfront)
    /// backs it all at creation instead.
    pub fn size(mut self, bytes: u64) -> Self {
        self.size = bytes;
        self
    }

    /// The largest size the segment may grow to while attached (default: the
    /// size). Unlike the size, it is not checked against the file system's
    /// free space at creation, and the allocators grow past the size only
    /// when reusing freed memory would not do. The whole range is reserved in every process's address
    /// space at once, so growth never moves the mapping.
    pub fn max_size(mut self, bytes: u64) -> Self {
        self.max_size = Some(bytes);
        self
    }

    /// Permission bits of a new segment (default `0o600`), applied exactly,
    /// whatever the process umask.
    pub fn mode(mut self, mode: u32) -> Self {
        self.mode = mode;
        self
    }

    /// Bytes reserved after the header for an application's own header
    /// (see [`Segment::custom_header`](crate::Segment::custom_header)).
    pub fn custom_header_len(mut self, bytes: u32) -> Self {
        let initial = self
            .custom_header_init
            .as_ref()
            .map_or(0, |init| init.len());
        self.custom_header_len = bytes.max(u32::try_from(initial).unwrap_or(u32::MAX));
        self
    }

    /// Bytes the custom header starts with, written by the creator before
    /// the segment is *ready*, so no attacher ever sees the custom header
    /// before it holds them (an application's own magic word and
    /// parameters, say). Makes the custom header at least this long; the
    /// rest of it starts zeroed. Ignored on attach.
    ///
    /// ```
    /// use shmkit::{Segment, SegmentOptions};
    ///
    /// let options = SegmentOptions::memfd("with-a-header")
    ///     .size(1 << 20)
    ///     .custom_header_len(64)
    ///     .custom_header(*b"myapp v1");
    /// let segment = Segment::create(&options)?;
    /// let magic = segment.custom_header::<[u8; 8]>()?;
    /// assert_eq!(unsafe { magic.as_ref() }, b"myapp v1");
    /// # Ok::<(), shmkit::Error>(())
    /// ```
    pub fn custom_header(mut self, bytes: impl AsRef<[u8]>) -> Self {
        let bytes: Arc<[u8]> = Arc::from(bytes.as_ref());
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.custom_header_len = self.custom_header_len.max(len);
        self.custom_header_init = Some(bytes);
        self
    }

    /// Makes every free, in every process, zero the block's bytes before the
    /// block can be handed out again, so freed data does not linger in the
    /// segment (default off: it costs a write of every freed byte). Recorded
    /// in the header at creation; ignored on attach. Honoured by the
    /// allocators that free single blocks (pool, free list, buddy,
    /// size-class, thread-local); the bump and stack allocators have
    /// `secure_reset` instead, since a block freed off a stack's top can be
    /// reused by a racing allocation before it could be zeroed.
    pub fn zero_on_free(mut self, on: bool) -> Self {
        self.zero_on_free = on;
        self
    }

    /// Backs the whole size at creation (default off): creation then takes
    /// time and memory in proportion to the size (about 0.3 s per GiB on
    /// tmpfs), and no allocation up to the size can ever fail for want of
    /// backing store. Growth beyond the size, up to the maximum, is backed
    /// on demand either way. Ignored on attach.
    pub fn commit_upfront(mut self, on: bool) -> Self {
        self.commit_upfront = on;
        self
    }

    /// How long an attacher waits for a segment that is still being created.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Where the segment lives.
    pub fn location(&self) -> &Location {
        &self.location
    }
}
