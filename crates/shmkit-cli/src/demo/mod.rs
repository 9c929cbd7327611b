//! `shmkit demo`: several processes carve one shared segment at once.

pub mod worker;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{json, Value};
use shmkit::{BumpAllocator, LinearAlloc, Location, SegmentAllocator, SegmentOptions};

use crate::remove_on_drop::RemoveOnDrop;
use crate::signals;
use crate::units::{format_bytes, format_rate, parse_size};

/// Named root of the start barrier (an `AtomicU32` of arrived workers).
const ARRIVED_ROOT: &str = "demo.arrived";
/// Smallest and largest block a worker asks for.
const MIN_BLOCK: u64 = 16;
const MAX_BLOCK: u64 = 1024;

#[derive(Args)]
pub struct DemoArgs {
    /// Worker processes to start (default: the number of cores, at least 2).
    #[arg(short, long)]
    workers: Option<u32>,
    /// Size of the shared segment, e.g. 64MiB or 1G.
    #[arg(short, long, default_value = "64MiB", value_parser = parse_size)]
    size: u64,
    /// Stop each worker after this many blocks (default: until the segment is full).
    #[arg(short, long)]
    blocks: Option<usize>,
    /// Name of the POSIX shared-memory segment (default: shmkit-demo-PID).
    #[arg(short, long)]
    name: Option<String>,
    /// Print one JSON object at the end instead of the table and lines.
    #[arg(short, long)]
    json: bool,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Segment name.
    #[arg(long)]
    name: String,
    /// This worker's number.
    #[arg(long)]
    id: u32,
    /// How many workers take part (the start barrier waits for all).
    #[arg(long)]
    workers: u32,
    /// Most blocks to allocate.
    #[arg(long, default_value_t = usize::MAX)]
    blocks: usize,
}

/// The byte a worker writes into every byte of its block `seq`.
fn block_tag(worker: u32, seq: u64) -> u8 {
    (u64::from(worker) * 97 + seq * 31 + 1) as u8
}

/// What one worker reported.
struct WorkerReport {
    pid: u32,
    blocks: u64,
    bytes: u64,
    elapsed: Duration,
    damaged: u64,
    ranges: Vec<(u64, u64)>,
}

/// Why the demo stopped before its end.
enum Stopped {
    /// SIGINT, SIGTERM or SIGHUP: clean up, exit 128 + the signal.
    Signal(i32),
    Failed(String),
}

impl From<String> for Stopped {
    fn from(message: String) -> Self {
        Stopped::Failed(message)
    }
}

/// Stops at the first signal received.
fn check_signals() -> Result<(), Stopped> {
    match signals::received() {
        Some(signal) => Err(Stopped::Signal(signal)),
        None => Ok(()),
    }
}

/// A progress bar on stderr when it is a terminal (hidden otherwise).
fn progress(len: u64, message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:30}] {percent:>3}% {elapsed}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_message(message);
    bar
}

pub fn run(args: &DemoArgs) -> Result<ExitCode, String> {
    signals::catch_termination()?;
    let workers = args.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(2)
            .max(2)
    });
    if workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| format!("shmkit-demo-{}", std::process::id()));

    let created_at = Instant::now();
    let options = SegmentOptions::shm(&name).size(args.size);
    let bump = BumpAllocator::create(&options).map_err(|e| e.to_string())?;
    let _remove = RemoveOnDrop(Location::Shm(name.clone()));
    let created = created_at.elapsed();
    match demo(args, workers, &name, &bump, created) {
        Ok(code) => Ok(code),
        Err(Stopped::Signal(signal)) => {
            eprintln!(
                "shmkit: {}; workers stopped, removing /{name}",
                signals::describe(signal)
            );
            Ok(signals::exit_code(signal))
        }
        Err(Stopped::Failed(message)) => Err(message),
    }
}

/// The demo on a created segment (removed by the caller whatever happens).
fn demo(
    args: &DemoArgs,
    workers: u32,
    name: &str,
    bump: &BumpAllocator,
    created: Duration,
) -> Result<ExitCode, Stopped> {
    // The lines and table for people; with --json, one object at the end.
    macro_rules! say {
        ($($line:tt)*) => {
            if !args.json {
                println!($($line)*);
            }
        };
    }
    bump.make_handle(AtomicU32::new(0))
        .and_then(|barrier| bump.segment().set_root(ARRIVED_ROOT, barrier))
        .map_err(|e| e.to_string())?;
    let start_used = bump.used();
    // What the workers may fill: the data area less the demo's own barrier.
    let room = bump.capacity().saturating_sub(start_used);

    say!(
        "shmkit demo: {workers} worker processes share POSIX shared memory `/{name}` \
         ({}, {} allocator)",
        format_bytes(bump.segment().capacity()),
        bump.segment().allocator_kind()
    );
    if bump.segment().capacity() > args.size {
        say!(
            "note: --size {} raised to {} (a segment is whole pages); the workers have {} to \
             fill",
            format_bytes(args.size),
            format_bytes(bump.segment().capacity()),
            format_bytes(room)
        );
    }
    check_signals()?;
    let started = Instant::now();
    let children = spawn_workers(name, workers, args.blocks)?;
    let reports = collect(children, bump, room, start_used)?;
    let ran = started.elapsed();

    let blocks: u64 = reports.iter().map(|r| r.blocks).sum();
    say!("workers done; verifying {blocks} blocks from the parent's own mapping");
    let verifying = Instant::now();
    let overlapping = count_overlaps(&reports);
    let damaged_seen_by_parent = verify_from_parent(bump, &reports)?;
    let verified = verifying.elapsed();
    check_signals()?;
    if !args.json {
        print_table(&reports, &overlapping);
    }

    let bytes: u64 = reports.iter().map(|r| r.bytes).sum();
    let total_overlapping: u64 = overlapping.iter().sum();
    let damaged: u64 = reports.iter().map(|r| r.damaged).sum::<u64>() + damaged_seen_by_parent;
    let used = bump.used() - start_used;
    let slowest = reports.iter().map(|r| r.elapsed).max().unwrap_or_default();
    say!();
    say!(
        "segment: {} used of the {} the workers could fill ({:.1}%; {} asked for in {blocks} \
         blocks, the rest is alignment)",
        format_bytes(used),
        format_bytes(room),
        100.0 * used as f64 / room.max(1) as f64,
        format_bytes(bytes),
    );
    say!(
        "checked {blocks} blocks from the parent's own mapping: {total_overlapping} overlapping, \
         {damaged} with foreign bytes"
    );
    say!(
        "time: segment created in {:.1} ms; workers {:.1} ms (slowest allocating {:.1} ms, the \
         rest starting {workers} processes and reporting {blocks} blocks); parent's \
         verification {:.1} ms",
        ms(created),
        ms(ran),
        ms(slowest),
        ms(verified)
    );
    say!("removing /{name}");
    if args.json {
        let workers: Vec<Value> = reports
            .iter()
            .zip(&overlapping)
            .map(|(report, overlapping)| {
                json!({
                    "pid": report.pid,
                    "blocks": report.blocks,
                    "bytes": report.bytes,
                    "ms": ms(report.elapsed),
                    "damaged": report.damaged,
                    "overlapping": overlapping,
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "segment": name,
                "size": bump.segment().capacity(),
                "size_asked": args.size,
                "room": room,
                "used": used,
                "blocks": blocks,
                "bytes": bytes,
                "overlapping": total_overlapping,
                "damaged": damaged,
                "ms": {
                    "create": ms(created),
                    "workers": ms(ran),
                    "slowest_worker": ms(slowest),
                    "verify": ms(verified),
                },
                "workers": workers,
            })
        );
    }
    if total_overlapping > 0 || damaged > 0 {
        eprintln!("shmkit: the demo found overlapping or damaged blocks");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn spawn_workers(name: &str, workers: u32, blocks: Option<usize>) -> Result<Vec<Child>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("finding the shmkit binary: {e}"))?;
    let mut children = Vec::new();
    for id in 0..workers {
        let mut command = Command::new(&exe);
        command
            .args(["demo-worker", "--name", name])
            .args(["--id", &id.to_string(), "--workers", &workers.to_string()])
            .stdout(Stdio::piped());
        if let Some(blocks) = blocks {
            command.args(["--blocks", &blocks.to_string()]);
        }
        match command.spawn() {
            Ok(child) => children.push(child),
            Err(err) => {
                kill_all(&mut children);
                return Err(format!("starting worker {id}: {err}"));
            }
        }
    }
    Ok(children)
}

fn kill_all(children: &mut [Child]) {
    for child in children.iter_mut() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Reads every worker's report (each on its own thread, so no pipe fills up)
/// while watching for signals and for workers that fail; shows the
/// segment filling on a terminal.
fn collect(
    mut children: Vec<Child>,
    bump: &BumpAllocator,
    room: u64,
    start_used: u64,
) -> Result<Vec<WorkerReport>, Stopped> {
    let readers: Vec<_> = children
        .iter_mut()
        .map(|child| {
            let stdout = child.stdout.take();
            std::thread::spawn(move || stdout.map(parse_report))
        })
        .collect();
    let filling = progress(room, "allocating");
    let mut exited = vec![false; children.len()];
    while exited.iter().any(|done| !done) {
        if let Err(stop) = check_signals() {
            filling.finish_and_clear();
            kill_all(&mut children);
            return Err(stop);
        }
        filling.set_position(bump.used().saturating_sub(start_used));
        for (id, child) in children.iter_mut().enumerate() {
            if exited[id] {
                continue;
            }
            let failed = match child.try_wait() {
                Ok(Some(status)) if status.success() => {
                    exited[id] = true;
                    continue;
                }
                Ok(Some(status)) => format!("worker {id} failed ({status})"),
                Ok(None) => continue,
                Err(err) => format!("waiting for worker {id}: {err}"),
            };
            filling.finish_and_clear();
            kill_all(&mut children);
            // A terminal's Ctrl-C reaches the workers too, and one may die
            // of it before this process notes its own.
            std::thread::sleep(Duration::from_millis(20));
            check_signals()?;
            return Err(Stopped::Failed(failed));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    filling.finish_and_clear();
    readers
        .into_iter()
        .enumerate()
        .map(|(id, reader)| match reader.join() {
            Ok(Some(Ok(report))) => Ok(report),
            Ok(Some(Err(err))) => Err(Stopped::Failed(format!("worker {id}: {err}"))),
            _ => Err(Stopped::Failed(format!("worker {id} sent no report"))),
        })
        .collect()
}

fn parse_report(stdout: std::process::ChildStdout) -> Result<WorkerReport, String> {
    let mut report = None;
    let mut ranges = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let mut fields = line.split_ascii_whitespace();
        let kind = fields.next();
        let numbers: Vec<u64> = fields
            .map(|f| f.parse().map_err(|_| format!("bad report line `{line}`")))
            .collect::<Result<_, _>>()?;
        match (kind, numbers.as_slice()) {
            (Some("result"), &[pid, blocks, bytes, nanos, damaged]) => {
                report = Some((
                    pid as u32,
                    blocks,
                    bytes,
                    Duration::from_nanos(nanos),
                    damaged,
                ));
            }
            (Some("block"), &[offset, len]) => ranges.push((offset, len)),
            _ => return Err(format!("bad report line `{line}`")),
        }
    }
    let (pid, blocks, bytes, elapsed, damaged) = report.ok_or("no result line")?;
    if ranges.len() as u64 != blocks {
        return Err(format!(
            "reported {blocks} blocks but listed {}",
            ranges.len()
        ));
    }
    Ok(WorkerReport {
        pid,
        blocks,
        bytes,
        elapsed,
        damaged,
        ranges,
    })
}

/// For each worker, how many of its blocks overlap a block of anyone.
fn count_overlaps(reports: &[WorkerReport]) -> Vec<u64> {
    let mut all: Vec<(u64, u64, usize)> = reports
        .iter()
        .enumerate()
        .flat_map(|(worker, r)| r.ranges.iter().map(move |&(o, l)| (o, l, worker)))
        .collect();
    all.sort_unstable();
    let mut overlapping = vec![0u64; reports.len()];
    let mut flagged = vec![false; all.len()];
    // Sweep: the furthest end seen so far, and which block had it.
    let mut reach: Option<(u64, usize)> = None;
    for (index, &(offset, len, _)) in all.iter().enumerate() {
        if let Some((end, holder)) = reach {
            if offset < end {
                flagged[index] = true;
                flagged[holder] = true;
            }
        }
        if reach.is_none_or(|(end, _)| offset + len > end) {
            reach = Some((offset + len, index));
        }
    }
    for (index, &(_, _, worker)) in all.iter().enumerate() {
        if flagged[index] {
            overlapping[worker] += 1;
        }
    }
    overlapping
}

/// Re-reads every block through the parent's mapping (another address than
/// any worker's): each must still hold its writer's tag. Stops at a signal.
fn verify_from_parent(bump: &BumpAllocator, reports: &[WorkerReport]) -> Result<u64, Stopped> {
    let blocks: u64 = reports.iter().map(|r| r.blocks).sum();
    let checking = progress(blocks, "verifying");
    let mut damaged = 0;
    for (worker, report) in reports.iter().enumerate() {
        for (seq, &(offset, len)) in report.ranges.iter().enumerate() {
            if seq % 4096 == 0 {
                checking.inc(4096.min(report.ranges.len() - seq) as u64);
                if let Err(stop) = check_signals() {
                    checking.finish_and_clear();
                    return Err(stop);
                }
            }
            let ptr = bump
                .segment()
                .resolve_array(shmkit::Offset::<u8>::from_raw(offset), len)
                .map_err(|e| {
                    format!("worker {worker} reported a block outside the segment: {e}")
                })?;
            // SAFETY: resolved in bounds; the workers have exited.
            let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len as usize) };
            let tag = block_tag(worker as u32, seq as u64);
            if bytes.iter().any(|&b| b != tag) {
                damaged += 1;
            }
        }
    }
    checking.finish_and_clear();
    Ok(damaged)
}

fn print_table(reports: &[WorkerReport], overlapping: &[u64]) {
    println!();
    println!(
        "{:>6}  {:>8}  {:>10}  {:>10}  {:>9}  {:>15}  {:>11}",
        "worker", "pid", "blocks", "bytes", "time", "throughput", "overlapping"
    );
    for (id, report) in reports.iter().enumerate() {
        let seconds = report.elapsed.as_secs_f64().max(1e-9);
        println!(
            "{:>6}  {:>8}  {:>10}  {:>10}  {:>7.1}ms  {:>11}op/s  {:>11}",
            id,
            report.pid,
            report.blocks,
            format_bytes(report.bytes),
            seconds * 1e3,
            format_rate(report.blocks as f64 / seconds),
            overlapping[id]
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(ranges: &[(u64, u64)]) -> WorkerReport {
        WorkerReport {
            pid: 1,
            blocks: ranges.len() as u64,
            bytes: ranges.iter().map(|&(_, len)| len).sum(),
            elapsed: Duration::ZERO,
            damaged: 0,
            ranges: ranges.to_vec(),
        }
    }

    #[test]
    fn blocks_that_touch_but_do_not_share_a_byte_do_not_overlap() {
        let reports = [report(&[(0, 64), (128, 64)]), report(&[(64, 64), (192, 8)])];
        assert_eq!(count_overlaps(&reports), [0, 0]);
    }

    #[test]
    fn a_byte_shared_by_two_workers_flags_both_blocks() {
        let reports = [report(&[(0, 64), (1000, 8)]), report(&[(63, 8)])];
        assert_eq!(count_overlaps(&reports), [1, 1]);
    }

    #[test]
    fn a_block_inside_a_long_one_is_caught_past_a_short_neighbour() {
        // The long block reaches past the short one that starts after it:
        // the sweep keeps the furthest end, not the last block's.
        let reports = [
            report(&[(0, 4096)]),
            report(&[(100, 8)]),
            report(&[(2000, 16), (5000, 16)]),
        ];
        assert_eq!(count_overlaps(&reports), [1, 1, 1]);
    }

    #[test]
    fn one_workers_own_blocks_that_overlap_are_counted() {
        let reports = [report(&[(0, 32), (16, 32), (64, 8)])];
        assert_eq!(count_overlaps(&reports), [2]);
    }
}
