//! Where a segment's bytes come from.
//!
//! Each backend produces a file descriptor (or none, for process-local
//! memory); [`Mapping`] maps the whole reserved range once, so a segment that
//! grows never moves in any process.

mod buffer;
mod file;
mod memfd;
mod shm;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

pub(crate) use buffer::{align_buffer, BUFFER_ALIGN};
pub(crate) use file::{create_file, open_file};
pub(crate) use memfd::create_memfd;
pub(crate) use shm::{create_shm, open_shm, unlink_shm};

/// What a process may do with an existing segment: decides both how its
/// object is opened and how it is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Opened `O_RDWR` and mapped `PROT_READ | PROT_WRITE`.
    ReadWrite,
    /// Opened `O_RDONLY` and mapped `PROT_READ`: the kernel refuses writes,
    /// and `mprotect` cannot add `PROT_WRITE` to a mapping of a read-only
    /// descriptor.
    ReadOnly,
}

impl Access {
    fn open_flags(self) -> i32 {
        match self {
            Access::ReadWrite => libc::O_RDWR,
            Access::ReadOnly => libc::O_RDONLY,
        }
    }

    fn protection(self) -> i32 {
        match self {
            Access::ReadWrite => libc::PROT_READ | libc::PROT_WRITE,
            Access::ReadOnly => libc::PROT_READ,
        }
    }
}

/// A mapped address range that is unmapped on drop (unless borrowed).
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
    owned: bool,
}

// SAFETY: a `Mapping` is an address range; the memory it names is accessed
// only through atomics or through `unsafe` code that argues for itself.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` shared, with the access asked for. `len` may
    /// exceed the object's current size: the pages past its end become usable
    /// as soon as the object is grown, in every process, without a new mapping.
    pub fn map_shared(fd: BorrowedFd<'_>, len: u64, access: Access, what: &str) -> Result<Mapping> {
        Self::map(len, access, libc::MAP_SHARED, fd.as_raw_fd(), what)
    }

    /// Maps `len` bytes of private, zero-filled memory. Pages are committed
    /// only when touched, so a large maximum size costs address space only.
    pub fn map_private(len: u64) -> Result<Mapping> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        Self::map(len, Access::ReadWrite, flags, -1, "private memory")
    }

    fn map(len: u64, access: Access, flags: i32, fd: i32, what: &str) -> Result<Mapping> {
        let len = usize::try_from(len).map_err(|_| Error::invalid_size("segment too large"))?;
        // SAFETY: a fresh mapping chosen by the kernel (no MAP_FIXED) cannot
        // overlap any existing Rust object; the arguments are plain values.
        let addr =
            unsafe { libc::mmap(std::ptr::null_mut(), len, access.protection(), flags, fd, 0) };
        if addr == libc::MAP_FAILED {
            return Err(Error::last_os(format!("mapping {what}")));
        }
        Ok(Mapping {
            base: NonNull::new(addr.cast()).ok_or_else(|| Error::last_os("mmap returned null"))?,
            len,
            owned: true,
        })
    }

    /// Wraps memory that someone else owns and keeps alive.
    ///
    /// # Safety
    ///
    /// `base..base + len` must be valid for reads and writes, and stay so,
    /// for as long as the `Mapping` (and anything built on it) lives.
    pub unsafe fn borrowed(base: NonNull<u8>, len: usize) -> Mapping {
        Mapping {
            base,
            len,
            owned: false,
        }
    }

    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    pub fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.owned {
            // SAFETY: `base..base+len` is a mapping this object created and
            // nothing else unmaps; every reference into it borrows the
            // segment that owns this `Mapping`, so none outlives it.
            unsafe {
                libc::munmap(self.base.as_ptr().cast(), self.len);
            }
        }
    }
}

/// The descriptor of a mapped segment and how many of its bytes this
/// process knows the object behind it holds: the bound of every access.
///
/// A mapping may reach past the object's end (it covers the maximum size,
/// so growth needs no new mapping), and touching a page there raises
/// SIGBUS. The segment's shared `size` word says how far the object has
/// grown, but another process can write anything there, so it is only ever
/// believed up to what this process has seen itself: an `fstat` at attach,
/// its own growth, or an `fstat` taken when the word first claims more (so
/// another process's growth costs one system call per step, and a lying
/// word one per access, never a fault).
#[derive(Debug)]
pub(crate) struct Backed {
    fd: Option<OwnedFd>,
    /// Bytes of the object known to exist (never beyond `mapped`).
    known: AtomicU64,
    /// Bytes mapped.
    mapped: u64,
}

impl Backed {
    /// A mapping of `mapped` bytes of `fd`, whose object is known to hold
    /// `known` bytes; without a descriptor (private memory, a caller's
    /// buffer) every mapped byte is backed.
    pub(crate) fn new(fd: Option<OwnedFd>, known: u64, mapped: u64) -> Backed {
        let known = if fd.is_some() {
            known.min(mapped)
        } else {
            mapped
        };
        Backed {
            fd,
            known: AtomicU64::new(known),
            mapped,
        }
    }

    /// The descriptor, if the segment has one.
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(|fd| fd.as_fd())
    }

    /// `claimed` (a size read from shared memory), believed only as far as
    /// the object is known to hold bytes.
    #[inline]
    pub(crate) fn bound(&self, claimed: u64) -> u64 {
        let known = self.known.load(Ordering::Acquire);
        if claimed <= known {
            claimed
        } else {
            self.learn(claimed)
        }
    }

    /// The shared word claims more than is known: ask the kernel.
    #[cold]
    fn learn(&self, claimed: u64) -> u64 {
        if let Some(fd) = &self.fd {
            if let Ok(len) = object_len(fd.as_fd(), "a segment") {
                self.grew_to(len);
            }
        }
        claimed.min(self.known.load(Ordering::Acquire))
    }

    /// The object now holds at least `len` bytes (this process grew it, or
    /// saw it grown).
    pub(crate) fn grew_to(&self, len: u64) {
        self.known.fetch_max(len.min(self.mapped), Ordering::AcqRel);
    }
}

/// The creation lock on a segment's object: an advisory `flock` the creator
/// holds from its exclusive create until the segment is ready (or failed).
/// The kernel drops it when the creator dies, however it dies (a zombie
/// holds nothing; a pid reused by another process holds nothing), so an
/// attacher can tell a dead creator from a slow one without trusting pids.
/// The advisory lock (`flock`) on a segment's backing object. The creator
/// holds it exclusively until the segment is ready, so an attacher that
/// finds it free while the segment is not ready knows the creator is gone.
/// After that every process holds it shared for as long as it has the
/// object open, so `/proc/locks` lists every process that opened the
/// segment, whatever its user or pid namespace (see `Segment::users`).
pub(crate) mod object_lock {
    use std::os::fd::{AsRawFd, BorrowedFd};

    fn flock(fd: BorrowedFd<'_>, operation: i32) -> bool {
        loop {
            // SAFETY: plain system call on a descriptor we hold.
            if unsafe { libc::flock(fd.as_raw_fd(), operation) } == 0 {
                return true;
            }
            if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return false;
            }
        }
    }

    /// Takes the lock on a freshly created object (nobody else can hold it).
    pub(crate) fn hold_for_creation(fd: BorrowedFd<'_>) -> bool {
        flock(fd, libc::LOCK_EX | libc::LOCK_NB)
    }

    /// Lets go of it: the creation failed.
    pub(crate) fn release(fd: BorrowedFd<'_>) {
        flock(fd, libc::LOCK_UN);
    }

    /// Holds it shared, as a user of a ready segment: the creator's
    /// exclusive hold becomes shared. Never waits; a reclaimer that holds it
    /// exclusively (the segment is being removed) leaves this process
    /// listed through its mapping only.
    pub(crate) fn share(fd: BorrowedFd<'_>) {
        flock(fd, libc::LOCK_SH | libc::LOCK_NB);
    }

    /// Whether nobody holds it exclusively: the creator finished or died.
    /// Called before this process shares it (it drops this descriptor's
    /// lock).
    pub(crate) fn is_free(fd: BorrowedFd<'_>) -> bool {
        if flock(fd, libc::LOCK_SH | libc::LOCK_NB) {
            flock(fd, libc::LOCK_UN);
            return true;
        }
        false
    }

    /// Takes it to reclaim a dead creator's object: true for exactly one of
    /// several racing reclaimers (and for none while a creator lives). The
    /// lock goes when `fd` is closed.
    pub(crate) fn take_for_reclaim(fd: BorrowedFd<'_>) -> bool {
        flock(fd, libc::LOCK_EX | libc::LOCK_NB)
    }
}

/// Bytes the file system has allocated for the object (`st_blocks` is in
/// 512-byte units whatever the block size).
pub(crate) fn allocated_bytes(fd: BorrowedFd<'_>) -> Option<u64> {
    // SAFETY: `stat` is a plain struct for which all-zero bytes are valid.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a valid, writable `struct stat`.
    (unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } == 0).then(|| {
        u64::try_from(stat.st_blocks)
            .unwrap_or(0)
            .saturating_mul(512)
    })
}

/// Whether two descriptors name the same object (device and inode).
pub(crate) fn same_object(a: BorrowedFd<'_>, b: BorrowedFd<'_>) -> bool {
    let identity = |fd: BorrowedFd<'_>| {
        // SAFETY: `stat` is a plain struct for which all-zero bytes are valid.
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: `stat` is a valid, writable `struct stat`.
        (unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } == 0)
            .then_some((stat.st_dev, stat.st_ino))
    };
    matches!((identity(a), identity(b)), (Some(x), Some(y)) if x == y)
}

/// Reserves backing store for bytes `[from, to)` of `fd` (extending it to
/// `to`), so that running out of space is an error now rather than a SIGBUS
/// on first touch later. Bytes below `from` are never touched.
pub(crate) fn reserve(fd: BorrowedFd<'_>, from: u64, to: u64, name: &str) -> Result<()> {
    if to <= from {
        return Ok(());
    }
    let offset =
        libc::off_t::try_from(from).map_err(|_| Error::invalid_size("segment too large"))?;
    let len =
        libc::off_t::try_from(to - from).map_err(|_| Error::invalid_size("segment too large"))?;
    loop {
        // SAFETY: plain system call on a descriptor we hold. `fallocate`
        // (unlike glibc's `posix_fallocate`) never emulates by writing, so
        // live data of other processes is never rewritten.
        let rc = unsafe { libc::fallocate(fd.as_raw_fd(), 0, offset, len) };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOSPC) | Some(libc::EFBIG) => {
                return Err(Error::NoSpace {
                    name: name.to_owned(),
                    requested: to,
                })
            }
            // Some file systems cannot preallocate; fall back to setting the
            // length (space is then taken on first touch).
            Some(libc::EOPNOTSUPP) => return set_len(fd, to, name),
            _ => {
                return Err(Error::Io {
                    context: format!("reserving {to} bytes for `{name}`"),
                    source: err,
                })
            }
        }
    }
}

/// Refuses a segment whose file system cannot hold `[backed, capacity)`
/// besides what is backed already: a best-effort check at creation (other
/// users may fill the file system later; then a grow fails with `NoSpace`,
/// never a later touch with SIGBUS). A file system that reports no figures
/// passes.
pub(crate) fn check_room(fd: BorrowedFd<'_>, backed: u64, capacity: u64, name: &str) -> Result<()> {
    let wanted = capacity.saturating_sub(backed);
    if wanted == 0 {
        return Ok(());
    }
    // SAFETY: `statvfs` is a plain struct for which all-zero bytes are valid.
    let mut figures: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `figures` is a valid, writable `struct statvfs`; the
    // descriptor is ours.
    if unsafe { libc::fstatvfs(fd.as_raw_fd(), &mut figures) } != 0 || figures.f_blocks == 0 {
        return Ok(());
    }
    // The fields are 32 bits wide on some targets.
    #[allow(clippy::useless_conversion)]
    let room = u64::from(figures.f_bavail).saturating_mul(u64::from(figures.f_frsize));
    if room < wanted {
        return Err(Error::NoSpace {
            name: name.to_owned(),
            requested: capacity,
        });
    }
    Ok(())
}

/// Extends the object to `len` bytes without reserving them (a shorter
/// length is left alone).
pub(crate) fn set_len(fd: BorrowedFd<'_>, len: u64, name: &str) -> Result<()> {
    let current = object_len(fd, name)?;
    if current >= len {
        return Ok(());
    }
    let len_off =
        libc::off_t::try_from(len).map_err(|_| Error::invalid_size("segment too large"))?;
    // SAFETY: plain system call on a descriptor we hold.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len_off) } != 0 {
        return Err(Error::last_os(format!("setting the length of `{name}`")));
    }
    Ok(())
}

/// The current length of the object behind `fd`.
pub(crate) fn object_len(fd: BorrowedFd<'_>, name: &str) -> Result<u64> {
    // SAFETY: `stat` is a plain struct for which all-zero bytes are valid.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a valid, writable `struct stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return Err(Error::last_os(format!("fstat of `{name}`")));
    }
    Ok(stat.st_size as u64)
}

/// Sets the exact permission bits, whatever the process umask is.
pub(crate) fn set_mode(fd: BorrowedFd<'_>, mode: u32, name: &str) -> Result<()> {
    // SAFETY: plain system call on a descriptor we hold.
    if unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) } != 0 {
        return Err(Error::last_os(format!("setting the mode of `{name}`")));
    }
    Ok(())
}

/// Duplicates a caller's descriptor (close-on-exec) so the segment owns its own.
pub(crate) fn dup_fd(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    fd.try_clone_to_owned().map_err(|source| Error::Io {
        context: "duplicating a segment descriptor".into(),
        source,
    })
}

/// Maps an `open`-style errno to shmkit's typed errors.
pub(crate) fn open_error(errno: std::io::Error, name: &str, context: &str) -> Error {
    match errno.raw_os_error() {
        Some(libc::ENOENT) => Error::NotFound {
            name: name.to_owned(),
        },
        Some(libc::EEXIST) => Error::AlreadyExists {
            name: name.to_owned(),
        },
        Some(libc::EACCES) | Some(libc::EPERM) => Error::PermissionDenied {
            name: name.to_owned(),
        },
        Some(libc::ELOOP) => Error::InvalidName {
            name: name.to_owned(),
            reason: "is a symbolic link",
        },
        _ => Error::Io {
            context: format!("{context} `{name}`"),
            source: errno,
        },
    }
}
