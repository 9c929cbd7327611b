//! What the producer and consumer examples share: the segment, the queue
//! and the message they agree on, and the robust pattern around them.
//!
//! ```sh
//! cargo run --release -p shmkit-examples --bin consumer &   # either order works
//! cargo run --release -p shmkit-examples --bin producer -- --count 100000 --size 256
//! ```
//!
//! Either side may die at any moment (SIGKILL included), so:
//!
//! - each side records its pid in the segment's [`Session`], and waits
//!   with a timeout, checking after each that the other side still lives
//!   ([`other_side_died`]): a side whose partner died removes the segment's
//!   name and exits with status 2 instead of waiting forever;
//! - a segment whose session names a side that has died, when a side
//!   arrives, is a previous run's leftover (its processes died before
//!   removing the name) and may still hold that run's messages:
//!   [`open_segment`] removes it (if the name still names it) and starts a
//!   fresh one, so a run never reads another run's messages;
//! - SIGINT, SIGTERM and SIGHUP end a side the same way: it removes the
//!   segment's name ([`stop_if_signalled`]) and exits 128 + the signal.

use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmkit::containers::MpmcRing;
use shmkit::{
    Error, Offset, Opened, SegmentAllocator, SegmentOptions, ShmAllocator, ShmPtr,
    SizeClassAllocator,
};

/// The segment both sides meet in unless a name is given.
pub const DEFAULT_SEGMENT: &str = "shmkit-example-queue";
/// Where the queue's offset is published in the segment.
pub const QUEUE_ROOT: &str = "example.queue";
/// Where the session is published in the segment.
pub const SESSION_ROOT: &str = "example.session";
/// How long a side waits on the queue before it checks the other side.
pub const CHECK_EVERY: Duration = Duration::from_millis(200);
/// Exit status of a side whose partner died mid-run.
pub const PARTNER_DIED: i32 = 2;
/// Queue slots.
pub const QUEUE_CAPACITY: usize = 1024;
/// Segment size: payloads wait here while the queue holds their offsets.
pub const SEGMENT_SIZE: u64 = 64 << 20;

shmkit::shm_struct! {
    /// What travels through the queue: where the payload is (segment id
    /// and offset), not the payload. `len == END` marks the end of the
    /// stream.
    #[derive(Clone, Copy)]
    pub struct Message {
        pub payload: ShmPtr<u8>,
        pub len: u64,
        pub checksum: u64,
    }
}

/// The length that marks the end of the stream.
pub const END: u64 = u64::MAX;

shmkit::shm_struct! {
    /// Who takes part in the run: each side's pid, 0 until it arrives.
    pub struct Session {
        pub producer: AtomicU32,
        pub consumer: AtomicU32,
    }
}

/// Which side this process is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Producer,
    Consumer,
}

impl Session {
    fn word(&self, side: Side) -> &AtomicU32 {
        match side {
            Side::Producer => &self.producer,
            Side::Consumer => &self.consumer,
        }
    }

    /// Records this process as `side`.
    pub fn join(&self, side: Side) {
        self.word(side).store(std::process::id(), Ordering::Release);
    }

    /// Whether the other side has not joined yet.
    pub fn other_side_absent(&self, me: Side) -> bool {
        let other = match me {
            Side::Producer => Side::Consumer,
            Side::Consumer => Side::Producer,
        };
        self.word(other).load(Ordering::Acquire) == 0
    }

    /// Whether the other side joined and has died since (a pid checked
    /// with `kill(pid, 0)`: good enough for an example; the library's
    /// locks also compare the thread's start time, against reused pids).
    pub fn other_side_died(&self, me: Side) -> bool {
        let other = match me {
            Side::Producer => Side::Consumer,
            Side::Consumer => Side::Producer,
        };
        let pid = self.word(other).load(Ordering::Acquire);
        pid != 0 && !shmkit::segment::process_alive(pid)
    }
}

/// Ends this process because the other side died mid-run: the run is over,
/// so the segment's name goes (the next run starts afresh).
pub fn abandon(heap: &SizeClassAllocator, name: &str, me: &str, other: &str) -> ! {
    end_run(
        heap,
        name,
        &format!("{me}: the {other} died mid-run"),
        PARTNER_DIED,
    )
}

/// Ends this side's run: says why, removes the name (if it still names
/// this run's segment) and exits with `code`.
fn end_run(heap: &SizeClassAllocator, name: &str, why: &str, code: i32) -> ! {
    eprintln!("{why}; removing /{name}");
    let _ = remove_if_ours(heap, name);
    std::process::exit(code);
}

/// Removes the name if it still names `heap`'s segment (returns whether it
/// did): another run may have made a fresh one under it meanwhile, which
/// must stay.
pub fn remove_if_ours(heap: &SizeClassAllocator, name: &str) -> shmkit::Result<bool> {
    let now = SizeClassAllocator::attach(&SegmentOptions::shm(name));
    match now {
        Ok(now) if now.segment().id() == heap.segment().id() => match heap.segment().unlink() {
            Ok(()) => Ok(true),
            Err(Error::NotFound { .. }) => Ok(false),
            Err(other) => Err(other),
        },
        Ok(_) | Err(Error::NotFound { .. }) => Ok(false),
        Err(other) => Err(other),
    }
}

/// How long a side waits for the other to arrive at all.
pub const PARTNER_PATIENCE: Duration = Duration::from_secs(30);

/// Ends this process when the other side never came: removes the name (if
/// still ours) and exits 2.
pub fn give_up_waiting(heap: &SizeClassAllocator, name: &str, me: &str, other: &str) -> ! {
    let why = format!("{me}: no {other} came in {} s", PARTNER_PATIENCE.as_secs());
    end_run(heap, name, &why, PARTNER_DIED)
}

/// Whether a segment this process attached belongs to a dead run: its
/// session names a side that has died. (Whether others hold it open is no
/// evidence: a side that has just created it may not show yet. A run whose
/// sides died before joining sent nothing, and its segment serves the next
/// run as well as a fresh one.)
fn is_leftover(heap: &SizeClassAllocator) -> shmkit::Result<bool> {
    let Some(at) = heap.segment().root::<Session>(SESSION_ROOT) else {
        return Ok(false); // a run just starting
    };
    // SAFETY: resolved (bounds, alignment); atomics only.
    let session = unsafe { heap.segment().resolve(at)?.as_ref() };
    let dead = |pid: u32| pid != 0 && !shmkit::segment::process_alive(pid);
    Ok(dead(session.producer.load(Ordering::Acquire))
        || dead(session.consumer.load(Ordering::Acquire)))
}

/// FNV-1a of a payload, so the consumer can tell the bytes arrived intact.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

static SIGNALLED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(signal, Ordering::SeqCst);
}

/// Notes SIGINT, SIGTERM and SIGHUP instead of dying at once, so that a
/// side can remove the segment's name on its way out
/// ([`stop_if_signalled`], called wherever a side waits).
pub fn catch_termination() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed `sigaction` is valid; the handler only stores to
        // an atomic, which is async-signal-safe.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART | libc::SA_RESETHAND;
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// After a signal: removes the segment's name (the run is over; the other
/// side sees this one gone and stops too) and exits 128 + the signal.
pub fn stop_if_signalled(heap: &SizeClassAllocator, name: &str, me: &str) {
    let signal = SIGNALLED.load(Ordering::SeqCst);
    if signal == 0 {
        return;
    }
    end_run(
        heap,
        name,
        &format!("{me}: stopped by signal {signal}"),
        128 + signal,
    )
}

/// Attaches the segment, or creates it if nobody has; either side may start
/// first. A segment left over from a dead run (see the module docs) is
/// removed and made afresh, even when both sides of the new run arrive at
/// it together.
pub fn open_segment(name: &str) -> shmkit::Result<SizeClassAllocator> {
    let options = SegmentOptions::shm(name).size(SEGMENT_SIZE);
    for _ in 0..10 {
        let (heap, opened) = SizeClassAllocator::open_or_create(&options)?;
        if opened == Opened::Attached && is_leftover(&heap)? {
            println!("removing /{name}, left over from a run whose processes died");
            remove_if_ours(&heap, name)?;
            continue;
        }
        return Ok(heap);
    }
    Err(Error::InUse {
        reason: format!("/{name} keeps being left over"),
    })
}

/// The session record, published by whoever gets there first.
pub fn session(heap: &SizeClassAllocator) -> shmkit::Result<&Session> {
    let at = match heap.segment().root(SESSION_ROOT) {
        Some(found) => found,
        None => {
            let ours = heap
                .new_obj(Session {
                    producer: AtomicU32::new(0),
                    consumer: AtomicU32::new(0),
                })?
                .offset();
            match heap.segment().set_root(SESSION_ROOT, ours) {
                Ok(()) => ours,
                // Another side published first: use theirs (ours, a few
                // bytes, stays unused).
                Err(error) => heap.segment().root(SESSION_ROOT).ok_or(error)?,
            }
        }
    };
    // SAFETY: resolved (bounds, alignment) in a segment that outlives the
    // borrow; a Session is atomics only, valid for any bytes.
    Ok(unsafe { heap.segment().resolve(at)?.as_ref() })
}

/// The queue's offset: published by whoever gets there first (a root can be
/// set once, so racing creators agree on the first one; a loser's ring is
/// freed).
pub fn queue(heap: &SizeClassAllocator) -> shmkit::Result<Offset<MpmcRing<Message>>> {
    if let Some(found) = heap.segment().root(QUEUE_ROOT) {
        return Ok(found);
    }
    let ours = MpmcRing::<Message>::create(heap, QUEUE_CAPACITY)?;
    match heap.segment().set_root(QUEUE_ROOT, ours) {
        Ok(()) => Ok(ours),
        Err(error) => {
            let theirs = heap.segment().root(QUEUE_ROOT).ok_or(error)?;
            // SAFETY: our ring was never published; no handle exists.
            unsafe { MpmcRing::destroy(heap, ours)? };
            Ok(theirs)
        }
    }
}

/// Retries `open_segment` while another process is creating the segment.
pub fn open_segment_patiently(
    name: &str,
    patience: Duration,
) -> shmkit::Result<SizeClassAllocator> {
    let deadline = Instant::now() + patience;
    loop {
        // Nothing of ours to remove yet: a signal just ends the wait.
        let signal = SIGNALLED.load(Ordering::SeqCst);
        if signal != 0 {
            std::process::exit(128 + signal);
        }
        match open_segment(name) {
            Err(Error::NotReady { .. } | Error::NotFound { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
