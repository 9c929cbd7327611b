//! The consumer: takes offsets from the queue, reads each payload where the
//! producer wrote it (no copy through the queue), checks it and frees it.
//!
//! Usage: `consumer [SEGMENT]`. Start it before or after the producer; it
//! waits up to 30 s for the segment, and as long as a live producer runs.
//! It stops at an end-of-stream marker and removes the segment's name
//! (attached processes keep their mapping); if the producer dies mid-run it
//! removes the name too and exits with status 2.

use std::time::{Duration, Instant};

use clap::Parser;
use shmkit::containers::MpmcRing;
use shmkit::{FullPtr, ShmAllocator};
use shmkit_examples as queue;
use shmkit_examples::{Side, END};

/// Reads messages from the queue and checks each payload where the
/// producer wrote it.
#[derive(Parser)]
#[command(
    after_help = "Exit codes: 0 read to the end of the stream; 1 an error; 2 the producer died \
                  mid-run or none came in 30 s (the segment's name is removed); 128 + N stopped \
                  by signal N (SIGINT, SIGTERM, SIGHUP), after removing the name."
)]
struct Args {
    /// The segment both sides meet in.
    #[arg(default_value = queue::DEFAULT_SEGMENT)]
    segment: String,
}

fn main() -> shmkit::Result<()> {
    let args = Args::parse();
    queue::catch_termination();
    let name = args.segment;
    let heap = queue::open_segment_patiently(&name, Duration::from_secs(30))?;
    let session = queue::session(&heap)?;
    session.join(Side::Consumer);
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::open(&heap, queue::queue(&heap)?) }?;
    println!("consumer: waiting on segment /{name}");

    let (mut messages, mut bytes, mut bad) = (0u64, 0u64, 0u64);
    let mut started = None;
    let waiting_since = Instant::now();
    loop {
        // Wait with a timeout, and check after each that the producer
        // lives: a dead one sends nothing more.
        queue::stop_if_signalled(&heap, &name, "consumer");
        let Some(message) = ring.pop_timeout(queue::CHECK_EVERY) else {
            if session.other_side_died(Side::Consumer) {
                queue::abandon(&heap, &name, "consumer", "producer");
            }
            if session.producer.load(std::sync::atomic::Ordering::Acquire) == 0
                && waiting_since.elapsed() > Duration::from_secs(30)
            {
                queue::give_up_waiting(&heap, &name, "consumer", "producer");
            }
            continue;
        };
        started.get_or_insert_with(Instant::now);
        if message.len == END {
            break;
        }
        // The shared pointer means the same here as in the producer; the
        // registry finds the segment it names among those this process maps.
        let block = FullPtr::from_shm(message.payload)?;
        // SAFETY: the producer wrote `len` bytes there and handed the block
        // over with the message; nobody else touches it until we free it.
        let payload = unsafe { std::slice::from_raw_parts(block.as_ptr(), message.len as usize) };
        if queue::checksum(payload) != message.checksum {
            bad += 1;
        }
        messages += 1;
        bytes += message.len;
        // SAFETY: the message handed the block to this consumer alone, and
        // `payload`, its last use, ends above.
        unsafe { heap.free(block) }?;
    }
    let elapsed = started.map_or(0.0, |at| at.elapsed().as_secs_f64());
    println!(
        "consumer: {messages} messages, {bytes} bytes in {elapsed:.3} s ({:.0} messages/s), {bad} corrupt",
        messages as f64 / elapsed.max(1e-9)
    );
    // The stream is over (the producer sent the marker after its last
    // message), so the name can go; processes still attached keep their
    // mapping. With several consumers, the first to finish removes it.
    // Only if the name still names this run's segment: a new run may have
    // taken the name over while this one drained.
    if queue::remove_if_ours(&heap, &name)? {
        println!("consumer: removed /{name}");
    }
    if bad > 0 {
        std::process::exit(1);
    }
    Ok(())
}
