//! What the producer and consumer examples share: the segment, the queue
//! and the message they agree on.

use std::time::{Duration, Instant};

use shmkit::containers::MpmcRing;
use shmkit::{Error, Offset, SegmentAllocator, SegmentOptions, ShmPtr, SizeClassAllocator};

/// The segment both sides meet in unless a name is given.
pub const DEFAULT_SEGMENT: &str = "shmkit-example-queue";
/// Where the queue's offset is published in the segment.
pub const QUEUE_ROOT: &str = "example.queue";
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

/// FNV-1a of a payload, so the consumer can tell the bytes arrived intact.
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The segment name: the first argument that is neither a `--flag` nor a
/// flag's value; the default otherwise.
pub fn segment_name(args: &[String]) -> String {
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg.starts_with("--") {
            args.next(); // the flag's value
        } else {
            return arg.clone();
        }
    }
    DEFAULT_SEGMENT.to_owned()
}

/// The value of `--flag N`, or `default`.
pub fn flag(args: &[String], flag: &str, default: u64) -> u64 {
    args.iter()
        .position(|arg| arg == flag)
        .and_then(|at| args.get(at + 1))
        .map(|value| {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{flag} takes a number"))
        })
        .unwrap_or(default)
}

/// Attaches the segment, or creates it if nobody has; either side may start
/// first.
pub fn open_segment(name: &str) -> shmkit::Result<SizeClassAllocator> {
    let options = SegmentOptions::shm(name).size(SEGMENT_SIZE);
    SizeClassAllocator::open_or_create(&options).map(|(heap, _)| heap)
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
        match open_segment(name) {
            Err(Error::NotReady { .. } | Error::NotFound { .. }) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}
