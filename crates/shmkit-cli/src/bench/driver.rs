//! Running one measurement: a workload on one subject, by one thread or by
//! several threads or processes, with calibrated rounds and a median.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use super::subject::{Instance, Subject, WithWorkers};
use super::workload::{Census, Discipline, Mode, Runner, Worker, Workload};

/// How long and how often to measure.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Timed rounds per measurement; the median is reported.
    pub samples: u32,
    /// Target length of one timed round (pair64 and churn).
    pub round_time: Duration,
    /// Blocks per bulk round.
    pub bulk_blocks: u64,
}

/// What one measurement found.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// Median over the timed rounds, in nanoseconds per operation of all
    /// workers together (wall time / total operations).
    pub ns_per_op: f64,
    /// Every round's figure.
    pub samples: Vec<f64>,
    /// Operations per worker in each timed round.
    pub ops_per_round: u64,
    /// Each worker: where it ran and what it asked for, over every round.
    pub workers: Vec<Census>,
}

/// Operations of the first calibration round.
const FIRST_PROBE: u64 = 1_000;
/// Bounds on a calibrated round.
const MAX_OPS: u64 = 500_000_000;

/// Each worker's random seed: workers must not mirror each other.
fn seed(worker: u64) -> u64 {
    0x1234_5678 ^ worker.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Calibrates (pair64, churn), warms up, then times `plan.samples` rounds.
/// `round(ops)` runs `ops` operations on every worker and returns the wall
/// time.
pub fn measure(
    plan: &Plan,
    workload: Workload,
    workers: u64,
    round: &mut dyn FnMut(u64) -> Result<Duration, String>,
) -> Result<Measurement, String> {
    let ops = if workload == Workload::Bulk {
        round(plan.bulk_blocks)?; // warm-up
        plan.bulk_blocks
    } else {
        // A first round pays for lazy set-up (an allocator's first use, page
        // faults): warm up, then grow the probe until it takes an eighth of
        // a round, then scale.
        round(FIRST_PROBE)?;
        let mut probe = FIRST_PROBE;
        loop {
            let elapsed = round(probe)?;
            if elapsed >= plan.round_time / 8 || probe >= MAX_OPS / 8 {
                let per_op = elapsed.as_secs_f64() / probe as f64;
                let ops = plan.round_time.as_secs_f64() / per_op.max(1e-12);
                break (ops as u64).clamp(FIRST_PROBE, MAX_OPS);
            }
            probe *= 8;
        }
    };
    let mut samples = Vec::with_capacity(plan.samples as usize);
    for _ in 0..plan.samples.max(1) {
        let elapsed = round(ops)?;
        samples.push(elapsed.as_nanos() as f64 / (ops * workers) as f64);
    }
    Ok(Measurement {
        ns_per_op: median(&samples),
        samples,
        ops_per_round: ops,
        workers: Vec::new(),
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

/// Measures `workload` on `instance` in `mode`. `segment` names the shared
/// segment that worker processes attach.
pub fn run_cell(
    subject: Subject,
    instance: &Instance,
    segment: &str,
    workload: Workload,
    mode: Mode,
    plan: &Plan,
) -> Result<Measurement, String> {
    let cell = Cell {
        instance,
        workload,
        discipline: subject.discipline(),
        plan,
    };
    if mode.is_processes() {
        processes(subject, segment, cell, mode.workers())
    } else if mode.workers() == 1 {
        instance.visit(OneThread(cell))
    } else {
        instance.visit(Threads(cell, mode.workers()))
    }
}

#[derive(Clone, Copy)]
struct Cell<'a> {
    instance: &'a Instance,
    workload: Workload,
    discipline: Discipline,
    plan: &'a Plan,
}

struct OneThread<'a>(Cell<'a>);

impl WithWorkers for OneThread<'_> {
    type Output = Result<Measurement, String>;

    fn run<W: Worker, F: Fn() -> W + Sync>(self, make: F) -> Self::Output {
        let cell = self.0;
        let mut runner = Runner::new(make(), cell.workload, cell.discipline, seed(0))?;
        let mut measurement = measure(cell.plan, cell.workload, 1, &mut |ops| {
            let elapsed = runner.round(ops)?;
            cell.instance.after_round();
            Ok(elapsed)
        })?;
        measurement.workers.push(runner.census());
        runner.finish()?;
        Ok(measurement)
    }
}

/// Several threads of this process on one allocator.
struct Threads<'a>(Cell<'a>, u64);

impl WithWorkers for Threads<'_> {
    type Output = Result<Measurement, String>;

    fn run<W: Worker, F: Fn() -> W + Sync>(self, make: F) -> Self::Output {
        let Threads(cell, threads) = self;
        // Operations for the next round; 0 tells the threads to stop.
        let ops = AtomicU64::new(0);
        let start = Barrier::new(threads as usize + 1);
        let end = Barrier::new(threads as usize + 1);
        let failure: Mutex<Option<String>> = Mutex::new(None);
        let fail = |message: String| {
            failure.lock().unwrap().get_or_insert(message);
        };
        let census: Mutex<Vec<Census>> = Mutex::new(Vec::new());
        let measured = std::thread::scope(|scope| {
            for worker in 0..threads {
                let (ops, start, end, fail, make) = (&ops, &start, &end, &fail, &make);
                let census = &census;
                scope.spawn(move || {
                    let mut runner =
                        Runner::new(make(), cell.workload, cell.discipline, seed(worker))
                            .map_err(fail)
                            .ok();
                    loop {
                        start.wait();
                        let count = ops.load(Ordering::Acquire);
                        if count == 0 {
                            break;
                        }
                        // A failed worker keeps meeting the barriers, so the
                        // others never wait for it forever.
                        if let Some(r) = runner.as_mut() {
                            if let Err(e) = r.round(count) {
                                fail(e);
                                runner = None;
                            }
                        }
                        end.wait();
                    }
                    if let Some(r) = runner {
                        census.lock().unwrap().push(r.census());
                        r.finish().map_err(fail).ok();
                    }
                });
            }
            let measured = measure(cell.plan, cell.workload, threads, &mut |count| {
                ops.store(count, Ordering::Release);
                let began = Instant::now();
                start.wait();
                end.wait();
                let elapsed = began.elapsed();
                if let Some(message) = failure.lock().unwrap().clone() {
                    return Err(message);
                }
                cell.instance.after_round();
                Ok(elapsed)
            });
            ops.store(0, Ordering::Release);
            start.wait();
            measured
        });
        if let Some(message) = failure.into_inner().unwrap() {
            return Err(message);
        }
        let mut measured = measured?;
        measured.workers = census.into_inner().unwrap();
        Ok(measured)
    }
}

/// One worker process of a several-process measurement, seen from the
/// parent.
struct WorkerProcess {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl WorkerProcess {
    fn spawn(subject: Subject, segment: &str, workload: Workload, id: u64) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
        let mut child = Command::new(exe)
            .args([
                "bench-worker",
                "--subject",
                subject.name,
                "--segment",
                segment,
            ])
            .args([
                "--workload",
                workload.name(),
                "--seed",
                &seed(id).to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting a worker process: {e}"))?;
        let input = child.stdin.take().expect("piped stdin");
        let output = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut process = WorkerProcess {
            child,
            input,
            output,
        };
        process.expect("ready")?;
        Ok(process)
    }

    fn send(&mut self, line: &str) -> Result<(), String> {
        writeln!(self.input, "{line}")
            .and_then(|()| self.input.flush())
            .map_err(|e| format!("worker process {} went away: {e}", self.child.id()))
    }

    /// Reads the next reply, which must start with `word`; returns the rest.
    fn expect(&mut self, word: &str) -> Result<String, String> {
        let mut line = String::new();
        let read = self
            .output
            .read_line(&mut line)
            .map_err(|e| format!("reading worker process {}: {e}", self.child.id()))?;
        if read == 0 {
            let status = self.child.wait().map_err(|e| e.to_string())?;
            return Err(format!(
                "worker process {} ended early ({status})",
                self.child.id()
            ));
        }
        let line = line.trim_end();
        match line.split_once(' ').unwrap_or((line, "")) {
            (w, rest) if w == word => Ok(rest.to_string()),
            ("error", message) => Err(message.to_string()),
            _ => Err(format!("worker process said `{line}`, expected `{word}`")),
        }
    }

    /// Ends the worker; returns its census.
    fn finish(mut self) -> Result<Census, String> {
        self.send("quit")?;
        let words = self.expect("finished")?;
        let census = Census::from_words(&words)
            .ok_or_else(|| format!("worker process ended with `finished {words}`"))?;
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("worker process exited with {status}"));
        }
        Ok(census)
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        // Already reaped on the normal path; on an error path, end it.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `count` worker processes on one segment.
fn processes(
    subject: Subject,
    segment: &str,
    cell: Cell<'_>,
    count: u64,
) -> Result<Measurement, String> {
    let mut workers = (0..count)
        .map(|id| WorkerProcess::spawn(subject, segment, cell.workload, id))
        .collect::<Result<Vec<_>, String>>()?;
    let mut measured = measure(cell.plan, cell.workload, count, &mut |ops| {
        let command = format!("run {ops}");
        let began = Instant::now();
        for worker in workers.iter_mut() {
            worker.send(&command)?;
        }
        for worker in workers.iter_mut() {
            worker.expect("done")?;
        }
        let elapsed = began.elapsed();
        cell.instance.after_round();
        Ok(elapsed)
    })?;
    for worker in workers {
        measured.workers.push(worker.finish()?);
    }
    Ok(measured)
}

/// The worker side of [`processes`]: answers `run N` with `done NANOS`
/// and `quit` with `finished CENSUS` ([`Census::to_words`]); any failure
/// with `error MESSAGE`.
pub struct ProcessWorker {
    pub workload: Workload,
    pub discipline: Discipline,
    pub seed: u64,
}

impl WithWorkers for ProcessWorker {
    type Output = Result<(), String>;

    fn run<W: Worker, F: Fn() -> W + Sync>(self, make: F) -> Self::Output {
        let mut out = std::io::stdout().lock();
        let mut reply = |line: String| -> Result<(), String> {
            writeln!(out, "{line}")
                .and_then(|()| out.flush())
                .map_err(|e| e.to_string())
        };
        let mut runner = match Runner::new(make(), self.workload, self.discipline, self.seed) {
            Ok(runner) => runner,
            Err(e) => return reply(format!("error {e}")).and(Err(e)),
        };
        reply("ready".into())?;
        for line in std::io::stdin().lock().lines() {
            let line = line.map_err(|e| e.to_string())?;
            if line == "quit" {
                break;
            }
            let ops = line
                .strip_prefix("run ")
                .and_then(|n| n.parse::<u64>().ok())
                .ok_or_else(|| format!("unknown command `{line}`"))?;
            match runner.round(ops) {
                Ok(elapsed) => reply(format!("done {}", elapsed.as_nanos()))?,
                Err(e) => return reply(format!("error {e}")).and(Err(e)),
            }
        }
        let census = runner.census();
        match runner.finish() {
            Ok(_) => reply(format!("finished {}", census.to_words())),
            Err(e) => reply(format!("error {e}")).and(Err(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
    }

    #[test]
    fn measure_calibrates_rounds_toward_the_target() {
        let plan = Plan {
            samples: 3,
            round_time: Duration::from_millis(40),
            bulk_blocks: 10,
        };
        // A fake workload at 1 µs per op, with no real waiting.
        let mut asked = Vec::new();
        let m = measure(&plan, Workload::Pair64, 2, &mut |ops| {
            asked.push(ops);
            Ok(Duration::from_micros(ops))
        })
        .unwrap();
        assert_eq!(m.ops_per_round, 40_000);
        assert_eq!(m.samples.len(), 3);
        // Wall time over both workers' operations.
        assert!((m.ns_per_op - 500.0).abs() < 1e-9, "{}", m.ns_per_op);
        assert_eq!(&asked[..3], &[1_000, 1_000, 8_000], "warm-up, then probes");
    }

    #[test]
    fn bulk_rounds_are_the_bulk_size() {
        let plan = Plan {
            samples: 2,
            round_time: Duration::from_millis(1),
            bulk_blocks: 500,
        };
        let mut asked = Vec::new();
        measure(&plan, Workload::Bulk, 1, &mut |ops| {
            asked.push(ops);
            Ok(Duration::from_micros(1))
        })
        .unwrap();
        assert_eq!(asked, [500, 500, 500]);
    }

    #[test]
    fn a_failing_round_fails_the_measurement() {
        let plan = Plan {
            samples: 1,
            round_time: Duration::from_millis(1),
            bulk_blocks: 1,
        };
        let err = measure(&plan, Workload::Churn, 1, &mut |_| Err("boom".into())).unwrap_err();
        assert_eq!(err, "boom");
    }
}
