//! One worker process of `shmkit demo`.

use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use shmkit::{BumpAllocator, Error, LinearAlloc, SegmentAllocator, SegmentOptions};

use super::{block_tag, WorkerArgs, ARRIVED_ROOT, MAX_BLOCK, MIN_BLOCK};

/// Attaches by name, waits for every worker, allocates and writes blocks until
/// the segment is full (or `--blocks` is reached), verifies every block, and
/// reports on stdout: a `result` line, then one `block OFFSET LEN SEQ` line
/// per block for the parent's overlap check.
pub fn run(args: &WorkerArgs) -> Result<ExitCode, String> {
    let bump = BumpAllocator::attach(&SegmentOptions::shm(&args.name))
        .map_err(|e| format!("worker {}: {e}", args.id))?;
    let arrived = bump
        .segment()
        .root::<AtomicU32>(ARRIVED_ROOT)
        .ok_or("the demo segment has no start barrier")?;
    let arrived = bump.segment().resolve(arrived).map_err(|e| e.to_string())?;
    // SAFETY: `resolve` checked bounds and alignment; the value is an atomic.
    let arrived = unsafe { arrived.as_ref() };
    arrived.fetch_add(1, Ordering::AcqRel);
    let waiting = Instant::now();
    while arrived.load(Ordering::Acquire) < args.workers {
        if waiting.elapsed() > Duration::from_secs(30) {
            return Err("the other workers never arrived".into());
        }
        std::thread::yield_now();
    }

    let mut rng = u64::from(args.id).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut blocks: Vec<(u64, u64)> = Vec::new();
    let started = Instant::now();
    while blocks.len() < args.blocks {
        let size = MIN_BLOCK + next(&mut rng) % (MAX_BLOCK - MIN_BLOCK + 1);
        let align = [8usize, 16, 64][(next(&mut rng) % 3) as usize];
        let block = match bump.alloc(size as usize, align) {
            Ok(block) => block,
            Err(Error::OutOfMemory { .. }) => break,
            Err(other) => return Err(format!("worker {}: {other}", args.id)),
        };
        let tag = block_tag(args.id, blocks.len() as u64);
        // SAFETY: the block is ours alone and `size` bytes long.
        unsafe { std::ptr::write_bytes(block.as_ptr(), tag, size as usize) };
        blocks.push((block.offset().raw(), size));
    }
    let elapsed = started.elapsed();

    // Re-read every block: a byte that changed means someone else was given
    // our memory.
    let mut damaged = 0u64;
    for (seq, &(offset, size)) in blocks.iter().enumerate() {
        let ptr = bump
            .segment()
            .resolve_array(shmkit::Offset::<u8>::from_raw(offset), size)
            .map_err(|e| e.to_string())?;
        // SAFETY: resolved in bounds; our own block.
        let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), size as usize) };
        let tag = block_tag(args.id, seq as u64);
        if bytes.iter().any(|&b| b != tag) {
            damaged += 1;
        }
    }

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let bytes: u64 = blocks.iter().map(|b| b.1).sum();
    let write = |out: &mut std::io::BufWriter<_>| -> std::io::Result<()> {
        writeln!(
            out,
            "result {} {} {} {} {}",
            std::process::id(),
            blocks.len(),
            bytes,
            elapsed.as_nanos(),
            damaged
        )?;
        for (offset, size) in &blocks {
            writeln!(out, "block {offset} {size}")?;
        }
        out.flush()
    };
    write(&mut out).map_err(|e| format!("worker {}: reporting: {e}", args.id))?;
    Ok(ExitCode::SUCCESS)
}

/// xorshift64*: a fast, deterministic stream for block sizes.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}
