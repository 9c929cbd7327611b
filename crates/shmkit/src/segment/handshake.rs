//! Creation and attachment: the handshake that makes a segment safe to share.
//!
//! Creator: create the object exclusively, reserve its space, map it, write
//! the header, publish the magic word (release), initialize the allocator,
//! publish READY (release). On any failure after the object exists it marks
//! the header FAILED and removes the name, so nothing half-made is left.
//!
//! Attacher: open, wait (bounded) for the magic word and READY (acquire),
//! telling a dead creator from a slow one, then validate every field before
//! the segment is used. Read-write and read-only attachers share this path,
//! so it only ever loads from the segment.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::backend::{self, object_lock, Access, Backed, Mapping};
use super::header::{self, state, Header, Layout, NewHeader, MAGIC, PARAM_WORDS};
use super::kind::AllocatorKind;
use super::{remove, round_to_page, Fixed, Location, Segment, SegmentOptions};
use crate::error::{Error, Result};
use crate::ptr::Offset;

/// Which of the two things [`open_or_create`](Segment::open_or_create) did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// This call created the segment.
    Created,
    /// The segment existed; this call attached to it.
    Attached,
}

/// What the creator records about the allocator and how it initializes it.
pub(crate) struct AllocatorSetup<'a> {
    pub kind: AllocatorKind,
    pub params: [u64; PARAM_WORDS],
    pub state_len: u64,
    pub init: &'a dyn Fn(&Segment) -> Result<()>,
}

impl AllocatorSetup<'_> {
    const NONE: AllocatorSetup<'static> = AllocatorSetup {
        kind: AllocatorKind::None,
        params: [0; PARAM_WORDS],
        state_len: 0,
        init: &|_| Ok(()),
    };
}

/// Upper bound on how many times `open_or_create` retries a create/attach
/// race (it also stops once the options' ready timeout has passed).
const OPEN_OR_CREATE_ATTEMPTS: usize = 64;
/// The first pause after a lost race, doubled after each, up to the most.
const RACE_BACKOFF_FIRST: Duration = Duration::from_micros(50);
const RACE_BACKOFF_MAX: Duration = Duration::from_millis(20);

impl Segment {
    /// Creates a new segment with no allocator (the data area is the
    /// caller's to lay out). Fails with `AlreadyExists` if the name is taken.
    pub fn create(options: &SegmentOptions) -> Result<Segment> {
        Self::create_with(options, &AllocatorSetup::NONE)
    }

    /// Attaches to an existing segment, whatever allocator it holds.
    ///
    /// Waits up to the options' ready timeout for a creator that is still
    /// initializing. A creator holds an advisory lock on the object until the
    /// segment is ready, which the kernel drops when it dies (a zombie holds
    /// none, and neither does a process that got its pid later); a segment
    /// not ready whose lock is free has a dead creator (`CreatorDied`), as
    /// has one whose creator pid is gone. An object that stays all zeros is
    /// reported as `NotReady` after the timeout: it may be a creator that
    /// died before writing anything, or a foreign zero-filled file.
    pub fn attach(options: &SegmentOptions) -> Result<Segment> {
        attach(options)
    }

    /// Attaches if the segment exists, creates it otherwise, and says which.
    pub fn open_or_create(options: &SegmentOptions) -> Result<(Segment, Opened)> {
        Self::open_or_create_with(options, &AllocatorSetup::NONE)
    }

    pub(crate) fn create_with(
        options: &SegmentOptions,
        setup: &AllocatorSetup<'_>,
    ) -> Result<Segment> {
        let layout = Layout::new(options.custom_header_len, setup.state_len)?;
        let sizes = plan_sizes(options, &layout)?;
        let fields = NewHeader {
            size: sizes.initial,
            capacity: sizes.capacity,
            max_size: sizes.max_size,
            segment_id: random_segment_id()?,
            kind: setup.kind,
            params: setup.params,
            layout,
            flags: if options.zero_on_free {
                header::flags::ZERO_ON_FREE
            } else {
                0
            },
        };
        let name = options.location.display_name();
        let fd = match &options.location {
            Location::Shm(shm_name) => Some(backend::create_shm(shm_name, options.mode)?),
            Location::File(path) => Some(backend::create_file(path, options.mode)?),
            Location::Memfd(label) => Some(backend::create_memfd(label)?),
            Location::Private => None,
            Location::Fd(_) => {
                return Err(Error::Unsupported(
                    "a segment cannot be created on an existing descriptor; attach it instead",
                ))
            }
        };
        let mapping = match &fd {
            Some(fd) => map_new_object(fd, options, sizes, &name)?,
            None => Mapping::map_private(sizes.max_size)?,
        };
        let max_align = super::page_size() as usize;
        let backed = Backed::new(fd, sizes.initial, mapping.len() as u64);
        let segment = Segment {
            registration: None,
            backed: std::sync::Arc::new(backed),
            mapping,
            location: options.location.clone(),
            fixed: fields.fixed(),
            max_align,
            ready_timeout: options.ready_timeout,
        };
        let custom_init = options.custom_header_init.as_deref().unwrap_or(&[]);
        let initialized = segment.initialize(&fields, custom_init, setup);
        if let Some(fd) = segment.fd() {
            // Ready (or failed): from now on the lock only says who uses it.
            if initialized.is_ok() {
                object_lock::share(fd);
            } else {
                object_lock::release(fd);
            }
        }
        initialized.inspect_err(|_| {
            // Nobody can use a half-made segment; take its name away too.
            let _ = remove(&segment.location);
        })?;
        Ok(segment.registered())
    }

    pub(crate) fn open_or_create_with(
        options: &SegmentOptions,
        setup: &AllocatorSetup<'_>,
    ) -> Result<(Segment, Opened)> {
        if !matches!(options.location, Location::Shm(_) | Location::File(_)) {
            return Err(Error::Unsupported(
                "open_or_create needs a named segment (shared memory or a file)",
            ));
        }
        let started = Instant::now();
        let mut backoff = RACE_BACKOFF_FIRST;
        for _ in 0..OPEN_OR_CREATE_ATTEMPTS {
            match Self::create_with(options, setup) {
                Ok(segment) => return Ok((segment, Opened::Created)),
                Err(Error::AlreadyExists { .. }) => {}
                Err(other) => return Err(other),
            }
            match attach(options) {
                Ok(segment) => return Ok((segment, Opened::Attached)),
                // Removed between our create and attach: try again.
                Err(Error::NotFound { .. }) => {}
                // Its creator died before it was ready: take the name back
                // (or let the racer who does), then try again.
                Err(Error::CreatorDied { .. }) => reclaim_dead(options)?,
                Err(other) => return Err(other),
            }
            // Lost a race: another process is removing, reclaiming or
            // creating the name. Give it time to finish (doubling pauses)
            // rather than spend every attempt in a few microseconds, for as
            // long as a creator may take to publish.
            if started.elapsed() >= options.ready_timeout {
                break;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(RACE_BACKOFF_MAX);
        }
        // Every attempt lost a create/remove race with other processes.
        Err(Error::NotReady {
            waited: started.elapsed(),
        })
    }

    /// Builds a segment inside memory the caller provides (the start is
    /// moved up to a 64-byte boundary), with the given allocator.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + len` must be valid for reads and writes, not be accessed
    /// through any other path except other shmkit segments attached to it,
    /// and outlive the returned segment.
    pub(crate) unsafe fn create_in_region(
        ptr: *mut u8,
        len: usize,
        setup: &AllocatorSetup<'_>,
    ) -> Result<Segment> {
        let (start, len) = backend::align_buffer(ptr, len)?;
        let layout = Layout::new(0, setup.state_len)?;
        if (len as u64) < layout.data_offset {
            return Err(Error::invalid_size(format!(
                "a buffer of {len} usable bytes cannot hold the {}-byte header",
                layout.data_offset
            )));
        }
        let fields = NewHeader {
            size: len as u64,
            capacity: len as u64,
            max_size: len as u64,
            segment_id: random_segment_id()?,
            kind: setup.kind,
            params: setup.params,
            layout,
            flags: 0,
        };
        let base = NonNull::new(start).ok_or(Error::NullOffset)?;
        // SAFETY: the caller guarantees the region is valid and outlives us.
        let mapping = unsafe { Mapping::borrowed(base, len) };
        // SAFETY: the caller guarantees exclusive access; zero the header so
        // that stale bytes cannot be mistaken for a published segment.
        unsafe { std::ptr::write_bytes(start, 0, std::mem::size_of::<Header>()) };
        let segment = Segment {
            registration: None,
            backed: std::sync::Arc::new(Backed::new(None, len as u64, len as u64)),
            mapping,
            location: Location::Private,
            fixed: fields.fixed(),
            max_align: backend::BUFFER_ALIGN,
            ready_timeout: super::DEFAULT_READY_TIMEOUT,
        };
        segment.initialize(&fields, &[], setup)?;
        Ok(segment.registered())
    }

    /// Writes the header, initializes the allocator and publishes READY.
    fn initialize(
        &self,
        fields: &NewHeader,
        custom_init: &[u8],
        setup: &AllocatorSetup<'_>,
    ) -> Result<()> {
        let header_ptr = self.mapping.base().cast::<Header>().as_ptr();
        // SAFETY: the mapping is fresh (created exclusively by this process),
        // at least `data_offset` bytes long and 64-byte aligned. Other
        // processes may map it already, but they only load the magic word
        // (still zero) until it is published below.
        unsafe { (*header_ptr).fill(fields) };
        let log_offset = super::header::Layout::handoff_offset();
        // SAFETY: the log lies between the header and the custom area, inside
        // the mapping (the layout put `custom_offset` after it), and nobody
        // reads it before the magic word is published; a caller's buffer
        // need not come zeroed.
        unsafe {
            std::ptr::write_bytes(
                self.mapping.base().as_ptr().add(log_offset as usize),
                0,
                (fields.layout.custom_offset - log_offset) as usize,
            )
        };
        if !custom_init.is_empty() {
            let custom = self.resolve_array(
                Offset::<u8>::from_raw(fields.layout.custom_offset),
                custom_init.len() as u64,
            )?;
            // SAFETY: `resolve_array` checked that the range lies in the
            // mapping (the layout puts it below the state area); nobody reads
            // it before the magic word is published.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    custom_init.as_ptr(),
                    custom.as_ptr(),
                    custom_init.len(),
                )
            };
        }
        let header = self.header();
        header.magic.store(MAGIC, Ordering::Release);
        if let Err(err) = (setup.init)(self) {
            header.state.store(state::FAILED, Ordering::Release);
            return Err(err);
        }
        header.state.store(state::READY, Ordering::Release);
        Ok(())
    }
}

/// Removes the name of a segment whose creator died before it was ready,
/// so that [`Segment::open_or_create`] can make it anew. Of several
/// processes that race here, exactly one removes it: the one that takes the
/// dead object's creation lock, and only while the name still names that
/// object (a racer that gets the lock later finds the name naming the new
/// segment, and leaves it). A live creator holds the lock, so its segment
/// is never reclaimed.
fn reclaim_dead(options: &SegmentOptions) -> Result<()> {
    let open = || match &options.location {
        Location::Shm(name) => backend::open_shm(name, Access::ReadOnly),
        Location::File(path) => backend::open_file(path, Access::ReadOnly),
        _ => Err(Error::Unsupported("only named segments are reclaimed")),
    };
    let dead = match open() {
        Ok(fd) => fd,
        Err(Error::NotFound { .. }) => return Ok(()),
        Err(other) => return Err(other),
    };
    if !object_lock::take_for_reclaim(dead.as_fd()) {
        // A creator or another reclaimer holds it: attach again.
        return Ok(());
    }
    // Still not ready? (A segment that became ready meanwhile is kept.)
    let name = options.location.display_name();
    let len = backend::object_len(dead.as_fd(), &name)?;
    let header_len = std::mem::size_of::<Header>() as u64;
    if len >= header_len {
        let probe = Mapping::map_shared(dead.as_fd(), header_len, Access::ReadOnly, &name)?;
        // SAFETY: the probe maps a whole header, page aligned.
        let header = unsafe { probe.base().cast::<Header>().as_ref() };
        if header::load_acquire_u32(&header.state) == state::READY {
            return Ok(());
        }
    }
    // Remove the name only if it still names the dead object.
    match open() {
        Ok(now) if backend::same_object(now.as_fd(), dead.as_fd()) => {
            match remove(&options.location) {
                Ok(()) | Err(Error::NotFound { .. }) => Ok(()),
                Err(other) => Err(other),
            }
        }
        Ok(_) | Err(Error::NotFound { .. }) => Ok(()),
        Err(other) => Err(other),
    }
}

/// How much of the data area a new segment backs at creation, unless the
/// caller asked to commit it all: the allocators back the rest in steps as
/// they need it (see [`Segment::grow_to_fit`]), so creating a large segment
/// costs neither time nor memory in proportion to its size.
const INITIAL_DATA_BACKING: u64 = 1 << 20;

/// The sizes of a new segment, page-rounded.
#[derive(Clone, Copy, Debug)]
struct SizePlan {
    /// Bytes backed at creation.
    initial: u64,
    /// The size the caller counts on (checked against the file system's
    /// free space at creation).
    capacity: u64,
    /// The size the segment may grow to.
    max_size: u64,
}

/// Validates the requested sizes and plans the initial backing.
fn plan_sizes(options: &SegmentOptions, layout: &Layout) -> Result<SizePlan> {
    let capacity = round_to_page(options.size);
    if capacity < layout.data_offset {
        return Err(Error::invalid_size(format!(
            "segment size {} is smaller than its header and allocator state ({} bytes)",
            options.size, layout.data_offset
        )));
    }
    let max_size = round_to_page(options.max_size.unwrap_or(capacity)).max(capacity);
    if max_size > header::MAX_SEGMENT_SIZE {
        return Err(Error::invalid_size(format!(
            "maximum size {max_size} exceeds {}",
            header::MAX_SEGMENT_SIZE
        )));
    }
    let initial = if options.commit_upfront {
        capacity
    } else {
        round_to_page(layout.data_offset.saturating_add(INITIAL_DATA_BACKING)).min(capacity)
    };
    Ok(SizePlan {
        initial,
        capacity,
        max_size,
    })
}

/// Sets the mode, backs the initial size, checks that the file system has
/// room for the rest of the capacity, and maps the whole range of a newly
/// created object; removes the object again if any step fails.
fn map_new_object(
    fd: &OwnedFd,
    options: &SegmentOptions,
    sizes: SizePlan,
    name: &str,
) -> Result<Mapping> {
    let result = (|| {
        // Held until the segment is ready: an attacher that finds it free
        // while the segment is not ready knows the creator is gone.
        object_lock::hold_for_creation(fd.as_fd());
        if !matches!(options.location, Location::Memfd(_)) {
            backend::set_mode(fd.as_fd(), options.mode, name)?;
        }
        backend::reserve(fd.as_fd(), 0, sizes.initial, name)?;
        backend::check_room(fd.as_fd(), sizes.initial, sizes.capacity, name)?;
        Mapping::map_shared(fd.as_fd(), sizes.max_size, Access::ReadWrite, name)
    })();
    if result.is_err() {
        let _ = remove(&options.location);
    }
    result
}

/// Draws a fresh segment id: 64 random bits, drawn again when zero (the
/// null id) or when this process already maps a segment with that id.
fn random_segment_id() -> Result<u64> {
    loop {
        let id = random_u64()?;
        if id != 0 && !super::mappings::is_mapped(id) {
            return Ok(id);
        }
    }
}

fn random_u64() -> Result<u64> {
    let mut bytes = [0u8; 8];
    crate::os::random::fill(&mut bytes, true).map_err(|source| Error::Io {
        context: "drawing a segment id".into(),
        source,
    })?;
    Ok(u64::from_ne_bytes(bytes))
}

/// Opens, waits for and validates an existing segment.
fn attach(options: &SegmentOptions) -> Result<Segment> {
    let Validated {
        backed,
        fixed,
        mapping,
    } = open_validated(options, Access::ReadWrite)?;
    let segment = Segment {
        registration: None,
        backed: std::sync::Arc::new(backed),
        mapping,
        location: options.location.clone(),
        fixed,
        max_align: super::page_size() as usize,
        ready_timeout: options.ready_timeout,
    };
    segment.wait_out_recovery()?;
    Ok(segment.registered())
}

/// An existing segment, opened and mapped whole with the access asked for,
/// whose header was seen READY and validated.
pub(super) struct Validated {
    /// The descriptor, and the bytes its object held at attach.
    pub backed: Backed,
    pub fixed: Fixed,
    pub mapping: Mapping,
}

/// Opens an existing segment, waits for it and validates its header: the one
/// path behind both read-write and read-only attachment.
///
/// Nothing here stores to the segment or does an atomic read-modify-write:
/// the header is read through a read-only probe mapping with relaxed loads
/// and fences (see [`header::load_acquire_u64`]), so this works unchanged on
/// an object opened read-only.
pub(super) fn open_validated(options: &SegmentOptions, access: Access) -> Result<Validated> {
    let name = options.location.display_name();
    let fd = match &options.location {
        Location::Shm(shm_name) => backend::open_shm(shm_name, access)?,
        Location::File(path) => backend::open_file(path, access)?,
        // A duplicate keeps the caller's access mode; a read-only mapping of
        // it still refuses writes.
        Location::Fd(fd) => backend::dup_fd(fd.as_fd())?,
        Location::Memfd(_) | Location::Private => {
            return Err(Error::Unsupported(
                "anonymous segments cannot be attached by name; share the descriptor (Location::Fd) or fork",
            ))
        }
    };
    let started = Instant::now();
    let header_len = std::mem::size_of::<Header>() as u64;

    // A creator that has only just created the object has not sized it yet.
    let mut len = backend::object_len(fd.as_fd(), &name)?;
    let patience = options.ready_timeout;
    if len == 0
        && !header::wait_while(
            || matches!(backend::object_len(fd.as_fd(), &name), Ok(0)),
            patience,
        )
    {
        return Err(Error::NotReady { waited: patience });
    }
    len = backend::object_len(fd.as_fd(), &name)?;
    // Validation only reads, so the probe never needs write access.
    let probe = Mapping::map_shared(fd.as_fd(), len, Access::ReadOnly, &name)?;
    if len < header_len {
        return Err(short_object_error(&probe, len, header_len, &name));
    }
    // SAFETY: the probe mapping is at least one header long and page aligned.
    let header = unsafe { probe.base().cast::<Header>().as_ref() };
    wait_until_ready(
        header,
        fd.as_fd(),
        &name,
        patience.saturating_sub(started.elapsed()),
    )?;
    header.validate()?;

    let size = header::load_acquire_u64(&header.size);
    let len = backend::object_len(fd.as_fd(), &name)?;
    if len < size {
        return Err(Error::Truncated {
            expected: size,
            actual: len,
        });
    }
    let fixed = Fixed::from_header(header);
    drop(probe);
    let mapping = Mapping::map_shared(fd.as_fd(), fixed.max_size, access, &name)?;
    // Listed as a user before anything reads the recovery word (see
    // `recovery_lock`).
    object_lock::share(fd.as_fd());
    let backed = Backed::new(Some(fd), len, mapping.len() as u64);
    Ok(Validated {
        backed,
        fixed,
        mapping,
    })
}

/// Classifies an object shorter than a header: a shmkit segment cut short
/// (its magic word is there) or foreign bytes.
fn short_object_error(probe: &Mapping, len: u64, header_len: u64, name: &str) -> Error {
    let magic = if len >= 8 {
        // SAFETY: the mapping holds at least 8 bytes and is page aligned.
        Some(unsafe { probe.base().cast::<u64>().read_volatile() })
    } else {
        None
    };
    if magic == Some(MAGIC) {
        Error::Truncated {
            expected: header_len,
            actual: len,
        }
    } else {
        Error::NotShmkit {
            name: name.to_owned(),
        }
    }
}

/// Waits for the magic word and READY, bounded by `patience`, and tells a
/// foreign object, a newer format, a dead creator and a failed one apart.
/// The creator is dead when its creation lock on `fd` is free (however it
/// died: a zombie holds no lock) or its pid is gone.
fn wait_until_ready(
    header: &Header,
    fd: BorrowedFd<'_>,
    name: &str,
    patience: Duration,
) -> Result<()> {
    let started = Instant::now();
    let backoff = crossbeam_utils::Backoff::new();
    loop {
        match header::load_acquire_u64(&header.magic) {
            MAGIC => {
                if header.format_version != header::FORMAT_VERSION {
                    return Err(Error::UnsupportedVersion {
                        found: header.format_version,
                        supported: header::FORMAT_VERSION,
                    });
                }
                match header::load_acquire_u32(&header.state) {
                    state::READY => return Ok(()),
                    state::FAILED => {
                        return Err(Error::CreationFailed {
                            pid: header.creator_pid,
                        })
                    }
                    state::INITIALIZING | state::BLANK => {
                        if object_lock::is_free(fd)
                            || !crate::os::process::process_alive(header.creator_pid)
                        {
                            // Re-check: it may have finished just before dying.
                            if header::load_acquire_u32(&header.state) == state::READY {
                                return Ok(());
                            }
                            return Err(Error::CreatorDied {
                                pid: header.creator_pid,
                            });
                        }
                    }
                    other => return Err(Error::corrupt(format!("unknown state {other}"))),
                }
            }
            // Not yet written by the creator.
            0 => {}
            _ => {
                return Err(Error::NotShmkit {
                    name: name.to_owned(),
                })
            }
        }
        if started.elapsed() >= patience {
            return Err(Error::NotReady {
                waited: started.elapsed(),
            });
        }
        if backoff.is_completed() {
            std::thread::sleep(Duration::from_millis(1));
        } else {
            backoff.snooze();
        }
    }
}
