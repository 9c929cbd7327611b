//! Memory-mapped files: a file's bytes as memory, mapped read-only, shared
//! read-write, or copy-on-write.
//!
//! A [`MappedFile`] is one type over the three [`Mode`]s. A read-write
//! mapping is shared: its writes reach the file and every other process that
//! maps it. A copy-on-write mapping is private: its writes stay in this
//! process and never reach the file.
//!
//! # What comes from `memmap2`, what shmkit adds
//!
//! The mapping itself is `memmap2`'s: `mmap` and `munmap`, the three kinds of
//! mapping, the special case of an empty file (a mapping of no bytes),
//! `msync` for the flushes (it rounds the start of a range down to its page,
//! as the kernel requires), `madvise` with its [`Advice`] (re-exported here),
//! and `mlock` / `munlock` of the whole mapping.
//!
//! shmkit adds, thinly on top:
//!
//! * one type and a [`Mode`] instead of three types and `unsafe` constructors;
//! * [`MappedFile::create`]: a new file of a given length, its disk space
//!   reserved first, so a full disk is an error now rather than a `SIGBUS`
//!   on first touch later;
//! * a bounds check on every offset: out of range is
//!   [`Error::OutOfBounds`], never a panic, and never an `madvise` beyond the
//!   mapping (`memmap2` checks offset and length of an advice range only
//!   separately);
//! * reads and writes that copy ([`read_bytes`](MappedFile::read_bytes),
//!   [`read`](MappedFile::read), [`write_bytes`](MappedFile::write_bytes),
//!   [`write`](MappedFile::write)) at any offset, aligned or not, and so
//!   never hold a reference to bytes that other processes may change;
//! * clear errors: [`Error::ReadOnlyMapping`] for a write to a read-only
//!   mapping, [`Error::LockLimit`] when locking meets `RLIMIT_MEMLOCK`, and
//!   [`Error::Unsupported`] for flushing a copy-on-write mapping, whose
//!   changes have nowhere to go.
//!
//! # Hazards that come with any file mapping
//!
//! * The mapping covers the file's length when it was opened. If another
//!   process truncates the file, touching the lost pages raises `SIGBUS`;
//!   keep the files you map out of reach of programs that shrink them.
//! * Other mappings of the same file (in this or another process) may write
//!   while this one reads. The copying readers then return bytes from before
//!   or after the write, or a mix (a torn value), which the [`ShmSafe`]
//!   types they read tolerate; order such access with a protocol of your own.
//!   Only [`as_slice`](MappedFile::as_slice) and
//!   [`as_mut_slice`](MappedFile::as_mut_slice) lend references, and they are
//!   `unsafe` for exactly this reason.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use memmap2::{MmapOptions, MmapRaw};

pub use memmap2::Advice;

use crate::error::{Error, Result};
use crate::ptr::ShmSafe;

/// How a file is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Reading only: the file is opened read-only and the pages cannot be
    /// written (a write through a raw pointer faults).
    ReadOnly,
    /// Shared reading and writing: writes reach the file (once flushed, or
    /// when the kernel writes them back) and every other mapping of it at
    /// once.
    ReadWrite,
    /// Private copy-on-write: writes stay in this mapping and never reach
    /// the file. The file is opened read-only.
    CopyOnWrite,
}

impl Mode {
    /// Whether a mapping in this mode accepts writes.
    pub fn is_writable(self) -> bool {
        !matches!(self, Mode::ReadOnly)
    }
}

/// A file mapped into this process's memory.
///
/// Dropping it unmaps the file; a read-write mapping's changes are already in
/// the page cache, and the kernel writes them to disk in its own time unless
/// [`flush`](Self::flush) is called first.
///
/// ```
/// use shmkit::local::mapped_file::{MappedFile, Mode};
///
/// let path = std::env::temp_dir().join(format!("shmkit-doc-mapped-{}", std::process::id()));
///
/// // A new file of one page, mapped read-write.
/// let mut file = MappedFile::create(&path, 4096)?;
/// file.write_bytes(0, b"hello")?;
/// file.write(8, 0xfeed_u64)?;
/// file.flush()?; // durable on disk
/// drop(file);
///
/// // Reopened read-only: the bytes are there, and writing is refused.
/// let mut file = MappedFile::open(&path, Mode::ReadOnly)?;
/// assert_eq!(file.read_vec(0, 5)?, b"hello");
/// assert_eq!(file.read::<u64>(8)?, 0xfeed);
/// assert!(file.write_bytes(0, b"j").is_err());
/// assert!(file.read::<u64>(4090).is_err()); // out of range
///
/// std::fs::remove_file(&path).ok();
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct MappedFile {
    /// Never lends references by itself, so bytes that other processes
    /// change under it break no aliasing rule.
    map: MmapRaw,
    mode: Mode,
    path: PathBuf,
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedFile")
            .field("path", &self.path)
            .field("mode", &self.mode)
            .field("len", &self.len())
            .finish()
    }
}

impl MappedFile {
    /// Maps the whole of an existing file in `mode`.
    ///
    /// The mapping's length is the file's length now; an empty file gives an
    /// empty mapping, in which every range but an empty one is out of
    /// bounds. Failing to open or map the file is [`Error::Io`], whose source
    /// keeps the [`io::ErrorKind`] (`NotFound`, `PermissionDenied`...).
    pub fn open(path: impl AsRef<Path>, mode: Mode) -> Result<MappedFile> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(mode == Mode::ReadWrite)
            .open(path)
            .map_err(|source| io_error(source, "opening", path))?;
        let map = match mode {
            Mode::ReadOnly => MmapOptions::new().map_raw_read_only(&file),
            Mode::ReadWrite => MmapOptions::new().map_raw(&file),
            Mode::CopyOnWrite => {
                // SAFETY: `memmap2` marks this `unsafe` because a `MmapMut`
                // lends `&[u8]` over bytes that another process may change.
                // The `MmapMut` becomes a `MmapRaw` at once and nothing reads
                // through it before; `MmapRaw` lends no references.
                unsafe { MmapOptions::new().map_copy(&file) }.map(MmapRaw::from)
            }
        }
        .map_err(|source| io_error(source, "mapping", path))?;
        Ok(MappedFile {
            map,
            mode,
            path: path.to_owned(),
        })
    }

    /// Creates a new file of `len` bytes (zeroes) and maps it read-write.
    ///
    /// Refuses a path that exists (also a symbolic link), so no file is ever
    /// overwritten; the new file's mode is `0600` (less the umask). Disk
    /// space is reserved before mapping: a full file system is
    /// [`Error::NoSpace`] here, not a `SIGBUS` at a later write. Where the
    /// file system cannot reserve space, the file is made sparse instead.
    /// A `len` of zero, or one too large to map, is [`Error::InvalidSize`].
    /// On failure the new file is removed again.
    pub fn create(path: impl AsRef<Path>, len: u64) -> Result<MappedFile> {
        let path = path.as_ref();
        if len == 0 {
            return Err(Error::invalid_size(
                "a created file needs at least one byte to map",
            ));
        }
        if len > isize::MAX as u64 {
            return Err(Error::invalid_size(format!(
                "{len} bytes cannot be mapped into this process"
            )));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| io_error(source, "creating", path))?;
        let mapped = reserve(&file, len, path).and_then(|()| {
            MmapOptions::new()
                .map_raw(&file)
                .map_err(|source| io_error(source, "mapping", path))
        });
        match mapped {
            Ok(map) => Ok(MappedFile {
                map,
                mode: Mode::ReadWrite,
                path: path.to_owned(),
            }),
            Err(err) => {
                // Leave nothing half-made behind; the first error is the one
                // worth reporting.
                let _ = std::fs::remove_file(path);
                Err(err)
            }
        }
    }

    /// The path the file was opened at.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mode it is mapped in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The mapping's length in bytes: the file's length when it was mapped.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the mapping holds no bytes (the file was empty).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks that `len` bytes at `offset` lie inside the mapping.
    pub fn check_range(&self, offset: usize, len: usize) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len() => Ok(()),
            _ => Err(Error::OutOfBounds {
                offset: offset as u64,
                len: len as u64,
                size: self.len() as u64,
            }),
        }
    }

    /// Refuses writes to a read-only mapping.
    fn check_writable(&self) -> Result<()> {
        if self.mode.is_writable() {
            Ok(())
        } else {
            Err(Error::ReadOnlyMapping {
                path: self.path.clone(),
            })
        }
    }

    /// Copies `out.len()` bytes starting at `offset` into `out`.
    pub fn read_bytes(&self, offset: usize, out: &mut [u8]) -> Result<()> {
        self.check_range(offset, out.len())?;
        // SAFETY: `offset..offset + out.len()` lies inside the mapping
        // (checked), which outlives this call and never overlaps `out`, a
        // Rust buffer. The bytes are copied, not borrowed, so a concurrent
        // writer elsewhere can make them torn, never make this call unsound.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.map.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    /// Copies `len` bytes starting at `offset` into a new vector.
    pub fn read_vec(&self, offset: usize, len: usize) -> Result<Vec<u8>> {
        self.check_range(offset, len)?;
        let mut bytes = vec![0; len];
        self.read_bytes(offset, &mut bytes)?;
        Ok(bytes)
    }

    /// Copies the `T` stored at `offset` out of the file. Any offset inside
    /// the mapping will do; file formats rarely align their fields.
    pub fn read<T: ShmSafe + Copy>(&self, offset: usize) -> Result<T> {
        self.check_range(offset, std::mem::size_of::<T>())?;
        // SAFETY: a whole `T` lies inside the mapping at `offset` (checked);
        // `read_unaligned` needs no alignment; `T: ShmSafe` makes any bytes,
        // even ones torn by a concurrent writer, a valid `T`.
        Ok(unsafe { self.map.as_ptr().add(offset).cast::<T>().read_unaligned() })
    }

    /// Copies `bytes` into the mapping at `offset`.
    ///
    /// [`Error::ReadOnlyMapping`] in [`Mode::ReadOnly`]; out of range is
    /// [`Error::OutOfBounds`] and writes nothing.
    pub fn write_bytes(&mut self, offset: usize, bytes: &[u8]) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, bytes.len())?;
        // SAFETY: the range lies inside the mapping (checked), which is
        // writable in this mode (checked) and does not overlap `bytes`, a
        // Rust buffer; `&mut self` keeps this handle's readers out meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.map.as_mut_ptr().add(offset),
                bytes.len(),
            )
        };
        Ok(())
    }

    /// Stores `value` at `offset`, aligned or not.
    ///
    /// Errors as [`write_bytes`](Self::write_bytes) does.
    pub fn write<T: ShmSafe>(&mut self, offset: usize, value: T) -> Result<()> {
        self.check_writable()?;
        self.check_range(offset, std::mem::size_of::<T>())?;
        // SAFETY: a whole `T` fits inside the writable mapping at `offset`
        // (both checked), and `write_unaligned` needs no alignment.
        unsafe {
            self.map
                .as_mut_ptr()
                .add(offset)
                .cast::<T>()
                .write_unaligned(value)
        };
        Ok(())
    }

    /// The address of the mapping's first byte.
    ///
    /// Reading through it is `unsafe` like any raw pointer; remember that
    /// other mappings of the file may write the bytes meanwhile.
    pub fn as_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    /// The address of the mapping's first byte, for writing;
    /// [`Error::ReadOnlyMapping`] in [`Mode::ReadOnly`].
    pub fn as_mut_ptr(&self) -> Result<*mut u8> {
        self.check_writable()?;
        Ok(self.map.as_mut_ptr())
    }

    /// The whole mapping as a slice, without copying.
    ///
    /// # Safety
    ///
    /// While the slice lives, nobody may change or truncate the file's mapped
    /// bytes: no write through this or any other mapping of it, in this
    /// process or another, and no `write(2)` to it. (For a copy-on-write
    /// mapping, writes to the file count too: pages this mapping has not
    /// written yet show the file.)
    pub unsafe fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len()` readable bytes that live as long as
        // `self`; the caller promises that nothing changes them meanwhile.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr(), self.len()) }
    }

    /// The whole mapping as a mutable slice, without copying;
    /// [`Error::ReadOnlyMapping`] in [`Mode::ReadOnly`].
    ///
    /// # Safety
    ///
    /// While the slice lives, nobody else may read or write the mapped bytes
    /// (through another mapping of the file, in this process or another) nor
    /// truncate the file.
    pub unsafe fn as_mut_slice(&mut self) -> Result<&mut [u8]> {
        self.check_writable()?;
        // SAFETY: the mapping is `len()` writable bytes (checked) that live
        // as long as `self`, which `&mut self` borrows exclusively; the
        // caller promises that no one else touches them meanwhile.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr(), self.len()) })
    }

    /// Refuses flushing a copy-on-write mapping: its changes never reach
    /// the file, and an `Ok` would suggest they had.
    fn check_flushable(&self) -> Result<()> {
        if self.mode == Mode::CopyOnWrite {
            Err(Error::Unsupported(
                "a copy-on-write mapping never writes its changes back to the file",
            ))
        } else {
            Ok(())
        }
    }

    /// Writes every changed page to the file and waits until they are on
    /// disk (`msync(MS_SYNC)`). Nothing to do for a read-only mapping;
    /// [`Error::Unsupported`] for a copy-on-write one.
    pub fn flush(&self) -> Result<()> {
        self.check_flushable()?;
        self.map
            .flush()
            .map_err(|source| io_error(source, "flushing", &self.path))
    }

    /// Like [`flush`](Self::flush), for the pages that hold `len` bytes at
    /// `offset` (whole pages: bytes around the range that share its pages
    /// are written too).
    pub fn flush_range(&self, offset: usize, len: usize) -> Result<()> {
        self.check_flushable()?;
        self.check_range(offset, len)?;
        self.map
            .flush_range(offset, len)
            .map_err(|source| io_error(source, "flushing a range of", &self.path))
    }

    /// Starts writing every changed page to the file and returns without
    /// waiting (`msync(MS_ASYNC)`).
    pub fn flush_async(&self) -> Result<()> {
        self.check_flushable()?;
        self.map
            .flush_async()
            .map_err(|source| io_error(source, "flushing", &self.path))
    }

    /// Like [`flush_async`](Self::flush_async), for the pages that hold
    /// `len` bytes at `offset`.
    pub fn flush_async_range(&self, offset: usize, len: usize) -> Result<()> {
        self.check_flushable()?;
        self.check_range(offset, len)?;
        self.map
            .flush_async_range(offset, len)
            .map_err(|source| io_error(source, "flushing a range of", &self.path))
    }

    /// Tells the kernel how the whole mapping will be used (`madvise`).
    /// Advice changes speed, never contents.
    pub fn advise(&self, advice: Advice) -> Result<()> {
        self.map
            .advise(advice)
            .map_err(|source| io_error(source, "advising the kernel on", &self.path))
    }

    /// Like [`advise`](Self::advise), for the pages that hold `len` bytes at
    /// `offset`.
    pub fn advise_range(&self, advice: Advice, offset: usize, len: usize) -> Result<()> {
        self.check_range(offset, len)?;
        self.map
            .advise_range(advice, offset, len)
            .map_err(|source| io_error(source, "advising the kernel on", &self.path))
    }

    /// Locks the whole mapping into RAM (`mlock`), reading in pages that
    /// are not there yet, so that touching it never waits for the disk.
    ///
    /// Without `CAP_IPC_LOCK` a process may lock at most `RLIMIT_MEMLOCK`
    /// bytes in all; passing it is [`Error::LockLimit`], which says what the
    /// limit is. Unmapping releases the lock.
    pub fn lock(&self) -> Result<()> {
        self.map.lock().map_err(|source| {
            lock_error(
                source,
                self.len() as u64,
                memlock_limit(),
                has_ipc_lock_capability(),
                &self.path,
            )
        })
    }

    /// Releases a [`lock`](Self::lock): the pages may be paged out again.
    pub fn unlock(&self) -> Result<()> {
        self.map
            .unlock()
            .map_err(|source| io_error(source, "unlocking the mapping of", &self.path))
    }
}

fn io_error(source: io::Error, doing: &str, path: &Path) -> Error {
    Error::Io {
        context: format!("{doing} `{}`", path.display()),
        source,
    }
}

/// Gives a new `file` `len` bytes with disk space behind them.
fn reserve(file: &File, len: u64, path: &Path) -> Result<()> {
    let too_large = || Error::invalid_size(format!("{len} bytes is too large a file"));
    let len_off = libc::off_t::try_from(len).map_err(|_| too_large())?;
    loop {
        // SAFETY: a plain system call on a descriptor `file` holds open.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len_off) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOSPC) => {
                return Err(Error::NoSpace {
                    name: path.display().to_string(),
                    requested: len,
                })
            }
            Some(libc::EFBIG) => return Err(too_large()),
            // Some file systems cannot reserve; a sparse file still works,
            // with space taken on first touch.
            Some(libc::EOPNOTSUPP) => {
                return file
                    .set_len(len)
                    .map_err(|source| io_error(source, "setting the length of", path))
            }
            _ => return Err(io_error(err, "reserving space for", path)),
        }
    }
}

/// The soft `RLIMIT_MEMLOCK` in bytes; `None` when unlimited or unknown.
fn memlock_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable `struct rlimit`.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// Whether the calling thread may lock memory past `RLIMIT_MEMLOCK`: bit 14
/// (`CAP_IPC_LOCK`) of its effective capabilities. `false` when unknown.
/// Capabilities belong to threads, and `/proc/self` shows only the main
/// thread's, so the thread's own entry is read.
fn has_ipc_lock_capability() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|status| {
            let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?;
            u64::from_str_radix(hex.trim(), 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Names a failed `mlock`: the kernel says `ENOMEM` (or `EPERM` when the
/// limit is zero) for a lock past `RLIMIT_MEMLOCK`. Those errors mean
/// something else when no limit applies (it is unlimited, or the process
/// holds `CAP_IPC_LOCK`), and are then passed on as they are.
fn lock_error(
    source: io::Error,
    requested: u64,
    limit: Option<u64>,
    privileged: bool,
    path: &Path,
) -> Error {
    match (source.raw_os_error(), limit) {
        (Some(libc::ENOMEM | libc::EPERM), Some(limit)) if !privileged => {
            Error::LockLimit { requested, limit }
        }
        _ => io_error(source, "locking the mapping of", path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os_error(errno: i32) -> io::Error {
        io::Error::from_raw_os_error(errno)
    }

    #[test]
    fn a_lock_past_the_limit_names_the_limit() {
        let path = Path::new("data");
        for errno in [libc::ENOMEM, libc::EPERM] {
            let err = lock_error(os_error(errno), 1 << 20, Some(65536), false, path);
            assert!(
                matches!(
                    err,
                    Error::LockLimit {
                        requested: 1048576,
                        limit: 65536
                    }
                ),
                "{err}"
            );
            assert!(err.to_string().contains("RLIMIT_MEMLOCK"), "{err}");
        }
    }

    #[test]
    fn lock_errors_without_a_limit_in_force_pass_through() {
        let path = Path::new("data");
        let cases = [
            (libc::ENOMEM, None, false),      // unlimited: not the limit's fault
            (libc::ENOMEM, Some(4096), true), // CAP_IPC_LOCK ignores the limit
            (libc::EAGAIN, Some(4096), false),
        ];
        for (errno, limit, privileged) in cases {
            let err = lock_error(os_error(errno), 1 << 20, limit, privileged, path);
            match err {
                Error::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(errno)),
                other => panic!("errno {errno}: expected Io, got {other}"),
            }
        }
    }

    #[test]
    fn only_read_only_mode_refuses_writes() {
        assert!(!Mode::ReadOnly.is_writable());
        assert!(Mode::ReadWrite.is_writable());
        assert!(Mode::CopyOnWrite.is_writable());
    }
}
