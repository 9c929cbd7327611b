//! The producer: allocates each message's payload in the shared segment and
//! sends only its offset through a lock-free queue in the same segment.
//!
//! ```sh
//! cargo run --release -p shmkit-examples --bin consumer &   # either order works
//! cargo run --release -p shmkit-examples --bin producer -- --count 100000 --size 256
//! ```
//!
//! Usage: `producer [SEGMENT] [--count N] [--size BYTES] [--consumers N]`.
//! It sends `--consumers` end-of-stream markers (one per consumer) at the
//! end; the first consumer to read one removes the segment's name. If the
//! consumer dies mid-run the producer removes the name and exits with
//! status 2 instead of waiting for room forever.

use std::time::Instant;

use clap::Parser;
use shmkit::containers::MpmcRing;
use shmkit::{ShmAllocator, ShmPtr};
use shmkit_examples as queue;
use shmkit_examples::{Message, Side, END};

/// Sends messages whose payloads live in a shared segment: the queue
/// carries only their offsets.
#[derive(Parser)]
#[command(
    after_help = "Exit codes: 0 sent everything; 1 an error; 2 the consumer died mid-run \
                  (the segment's name is removed); 128 + N stopped by signal N (SIGINT, \
                  SIGTERM, SIGHUP), after removing the name."
)]
struct Args {
    /// The segment both sides meet in.
    #[arg(default_value = queue::DEFAULT_SEGMENT)]
    segment: String,
    /// Messages to send.
    #[arg(short, long, default_value_t = 100_000)]
    count: u64,
    /// Bytes per payload (1 to 4 MiB: the 64 MiB segment holds the
    /// payloads in flight).
    #[arg(short, long, default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=queue::SEGMENT_SIZE / 16))]
    size: u64,
    /// Consumers reading the queue: one end-of-stream marker each.
    #[arg(long, default_value_t = 1)]
    consumers: u64,
}

fn main() -> shmkit::Result<()> {
    let args = Args::parse();
    queue::catch_termination();
    let name = args.segment;
    let (count, size, consumers) = (args.count, args.size as usize, args.consumers);

    let heap = queue::open_segment_patiently(&name, std::time::Duration::from_secs(10))?;
    let arrived = Instant::now();
    let session = queue::session(&heap)?;
    session.join(Side::Producer);
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::open(&heap, queue::queue(&heap)?) }?;
    println!("producer: segment /{name}, {count} messages of {size} bytes");
    // While waiting for room: a signal, a dead consumer or one that never
    // came end the run (neither would ever make room).
    let wait_on_consumer = || {
        queue::stop_if_signalled(&heap, &name, "producer");
        if session.other_side_died(Side::Producer) {
            queue::abandon(&heap, &name, "producer", "consumer");
        }
        if session.other_side_absent(Side::Producer) && arrived.elapsed() > queue::PARTNER_PATIENCE
        {
            queue::give_up_waiting(&heap, &name, "producer", "consumer");
        }
    };
    // Waits with a timeout for room, checking after each that the consumer
    // lives (a dead one frees nothing and takes nothing).
    let send = |message: Message| {
        let mut message = message;
        loop {
            match ring.push_timeout(message, queue::CHECK_EVERY) {
                Ok(()) => return,
                Err(back) => message = back,
            }
            wait_on_consumer();
        }
    };

    let started = Instant::now();
    let mut payload = vec![0u8; size];
    for seq in 0..count {
        queue::stop_if_signalled(&heap, &name, "producer");
        // Vary the bytes so a mixed-up or torn payload fails the checksum.
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte = (seq as usize).wrapping_mul(31).wrapping_add(i) as u8;
        }
        // The payload goes into the segment; the queue carries its offset.
        let block = loop {
            match heap.allocate(size) {
                Ok(block) => break block,
                // Consumers free as they read: wait for room.
                Err(shmkit::Error::OutOfMemory { .. }) => {
                    wait_on_consumer();
                    std::thread::yield_now();
                }
                Err(other) => return Err(other),
            }
        };
        // SAFETY: a fresh block of `size` bytes, ours until sent.
        unsafe { std::ptr::copy_nonoverlapping(payload.as_ptr(), block.as_ptr(), size) };
        send(Message {
            payload: block.shm(),
            len: size as u64,
            checksum: queue::checksum(&payload),
        });
    }
    for _ in 0..consumers {
        send(Message {
            payload: ShmPtr::null(),
            len: END,
            checksum: 0,
        });
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "producer: sent {count} messages in {elapsed:.3} s ({:.0} messages/s)",
        count as f64 / elapsed
    );
    Ok(())
}
