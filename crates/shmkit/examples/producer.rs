//! The producer: allocates each message's payload in the shared segment and
//! sends only its offset through a lock-free queue in the same segment.
//!
//! ```sh
//! cargo run --release -p shmkit --example consumer &   # either order works
//! cargo run --release -p shmkit --example producer -- --count 100000 --size 256
//! ```
//!
//! Usage: `producer [SEGMENT] [--count N] [--size BYTES] [--consumers N]`.
//! It sends `--consumers` end-of-stream markers (one per consumer) at the
//! end; the first consumer to read one removes the segment's name. If the
//! consumer dies mid-run the producer removes the name and exits with
//! status 2 instead of waiting for room forever.

mod queue;

use std::time::Instant;

use queue::{Message, Side, END};
use shmkit::containers::MpmcRing;
use shmkit::{ShmAllocator, ShmPtr};

fn main() -> shmkit::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = queue::segment_name(&args);
    let count = queue::flag(&args, "--count", 100_000);
    let size = queue::flag(&args, "--size", 256).max(1) as usize;
    let consumers = queue::flag(&args, "--consumers", 1);

    let heap = queue::open_segment_patiently(&name, std::time::Duration::from_secs(10))?;
    let session = queue::session(&heap)?;
    session.join(Side::Producer);
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::open(&heap, queue::queue(&heap)?) }?;
    println!("producer: segment /{name}, {count} messages of {size} bytes");
    // Waits with a timeout for room, checking after each that the consumer
    // lives (a dead one frees nothing and takes nothing).
    let send = |message: Message| {
        let mut message = message;
        loop {
            match ring.push_timeout(message, queue::CHECK_EVERY) {
                Ok(()) => return,
                Err(back) => message = back,
            }
            if session.other_side_died(Side::Producer) {
                queue::abandon(&heap, &name, "producer", "consumer");
            }
        }
    };

    let started = Instant::now();
    let mut payload = vec![0u8; size];
    for seq in 0..count {
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
                    if session.other_side_died(Side::Producer) {
                        queue::abandon(&heap, &name, "producer", "consumer");
                    }
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
