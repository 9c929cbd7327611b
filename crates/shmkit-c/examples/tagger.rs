//! The Rust side of the cross-language test (and an example of a Rust
//! program sharing one thread-local allocator with C, C++ and Python ones):
//!
//! * `tagger create NAME BYTES`: creates the thread-local segment `NAME`;
//! * `tagger tag NAME WRITER COUNT START_MS`: the tagging worker of
//!   `examples/c/tagger.h`, in Rust, printing its surviving blocks;
//! * `tagger verify NAME`: reads every worker's "writer offset size seq"
//!   lines on stdin and checks that no two blocks overlap, that every byte
//!   still holds its writer's tag, and that the allocator passes its
//!   check; prints how many blocks it verified and how many are live.

use std::io::BufRead;
use std::process::ExitCode;
use std::ptr::NonNull;

use shmkit::{
    MemContext, Offset, SegmentAllocator, SegmentOptions, ShmAllocator, ThreadLocalAllocator,
};

/// The tag of byte `i` of block `seq` of `writer` (as `tag_byte` in C).
fn tag_byte(writer: u64, seq: u64, i: u64) -> u8 {
    writer
        .wrapping_mul(131)
        .wrapping_add(seq.wrapping_mul(31))
        .wrapping_add(i.wrapping_mul(7)) as u8
}

fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *state = x;
    x
}

/// The `size` bytes at `offset`, checked to lie in the segment.
fn block(heap: &ThreadLocalAllocator, offset: u64, size: u64) -> shmkit::Result<NonNull<u8>> {
    heap.segment()
        .resolve_array(Offset::<u8>::from_raw(offset), size.max(1))
}

fn fill(
    heap: &ThreadLocalAllocator,
    writer: u64,
    offset: u64,
    size: u64,
    seq: u64,
) -> shmkit::Result<()> {
    let start = block(heap, offset, size)?;
    // SAFETY: `block` checked that the bytes lie in the segment, and the
    // block is this worker's alone.
    let bytes = unsafe { std::slice::from_raw_parts_mut(start.as_ptr(), size as usize) };
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = tag_byte(writer, seq, i as u64);
    }
    Ok(())
}

fn intact(heap: &ThreadLocalAllocator, writer: u64, offset: u64, size: u64, seq: u64) -> bool {
    let Ok(start) = block(heap, offset, size) else {
        return false;
    };
    // SAFETY: as in `fill`; the block is this worker's, or (verifying)
    // every worker has exited.
    let bytes = unsafe { std::slice::from_raw_parts(start.as_ptr(), size as usize) };
    bytes
        .iter()
        .enumerate()
        .all(|(i, &b)| b == tag_byte(writer, seq, i as u64))
}

/// Sleeps until `start_ms` (milliseconds since the epoch).
fn wait_until(start_ms: u64) {
    let start = std::time::UNIX_EPOCH + std::time::Duration::from_millis(start_ms);
    if let Ok(left) = start.duration_since(std::time::SystemTime::now()) {
        std::thread::sleep(left);
    }
}

fn tag(name: &str, writer: u64, count: u64, start_ms: u64) -> shmkit::Result<bool> {
    let heap = ThreadLocalAllocator::attach(&SegmentOptions::shm(name))?;
    wait_until(start_ms);
    let ctx = MemContext::default();
    let mut live: Vec<(u64, u64, u64)> = Vec::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ writer.wrapping_mul(0x0100_0000_01b3);
    for seq in 0..count {
        let size = 16 + next(&mut rng) % 2000;
        let offset = heap.allocate_offset(&ctx, size as usize, 16)?;
        fill(&heap, writer, offset, size, seq)?;
        live.push((offset, size, seq));
        if live.len() > 128 {
            let pick = (next(&mut rng) % live.len() as u64) as usize;
            let (offset, size, seq) = live.swap_remove(pick);
            if !intact(&heap, writer, offset, size, seq) {
                eprintln!("tagger.rs: block at {offset} (seq {seq}) overwritten");
                return Ok(false);
            }
            // SAFETY: this worker's block, given up here.
            unsafe { heap.free_offset(&ctx, offset) }?;
        }
    }
    for &(offset, size, seq) in &live {
        if !intact(&heap, writer, offset, size, seq) {
            eprintln!("tagger.rs: block at {offset} (seq {seq}) overwritten");
            return Ok(false);
        }
        println!("{writer} {offset} {size} {seq}");
    }
    // The survivors stay allocated for the coordinator (dropping the view
    // gives back only this thread's cache of free blocks).
    Ok(true)
}

fn verify(name: &str) -> shmkit::Result<bool> {
    let heap = ThreadLocalAllocator::attach(&SegmentOptions::shm(name))?;
    let mut blocks = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|source| shmkit::Error::Io {
            context: "reading stdin".into(),
            source,
        })?;
        let words: Vec<u64> = line
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        if let [writer, offset, size, seq] = words[..] {
            blocks.push((offset, size, writer, seq));
        }
    }
    blocks.sort_unstable();
    let mut good = true;
    for pair in blocks.windows(2) {
        let ((a, a_size, a_writer, _), (b, _, b_writer, _)) = (pair[0], pair[1]);
        if a + a_size > b {
            eprintln!(
                "blocks overlap: writer {a_writer} at {a}+{a_size}, writer {b_writer} at {b}"
            );
            good = false;
        }
    }
    for &(offset, size, writer, seq) in &blocks {
        if !intact(&heap, writer, offset, size, seq) {
            eprintln!("writer {writer}'s block at {offset} (seq {seq}) lost its tag");
            good = false;
        }
    }
    heap.check()?;
    let live = heap.stats().live_allocations;
    println!("verified {} blocks, {live} live", blocks.len());
    Ok(good)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match words[..] {
        ["create", name, bytes] => bytes
            .parse()
            .map_err(|_| shmkit::Error::InvalidSize {
                reason: format!("size {bytes}"),
            })
            .and_then(|bytes| {
                ThreadLocalAllocator::create(&SegmentOptions::shm(name).size(bytes)).map(|_| true)
            }),
        ["tag", name, writer, count, start_ms] => tag(
            name,
            writer.parse().unwrap_or(0),
            count.parse().unwrap_or(0),
            start_ms.parse().unwrap_or(0),
        ),
        ["verify", name] => verify(name),
        _ => {
            eprintln!(
                "usage: tagger create NAME BYTES | tag NAME WRITER COUNT START_MS | verify NAME"
            );
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("tagger.rs: {error}");
            ExitCode::FAILURE
        }
    }
}
