//! `shmkit bench`: the standard workloads on every shmkit allocator and on
//! the peers, side by side in one run, with ratios to the system allocator.

mod driver;
mod peers;
mod report;
mod subject;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use crate::signals;
use driver::{Plan, ProcessWorker};
use report::{Report, Row};
use subject::{Subject, REFERENCE, SUBJECTS};
use workload::{Mode, Workload};

#[derive(Args)]
pub struct BenchArgs {
    /// A short run (under 30 seconds): 3 rounds of 20 ms, 100,000 bulk blocks.
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON (the progress bar stays on stderr).
    #[arg(long)]
    json: bool,
    /// Print the table as Markdown.
    #[arg(long, conflicts_with = "json")]
    markdown: bool,
    /// Also run Boost.Interprocess (the C++ harness in bench/peers, built
    /// when the Boost headers are present) and merge its rows.
    #[arg(long)]
    peers: bool,
    /// Where the harness lives (default: bench/peers above the current
    /// directory or above this program).
    #[arg(long, value_name = "DIR")]
    peers_dir: Option<PathBuf>,
    /// Only these allocators, comma-separated (the system allocator, the
    /// reference of every ratio, is always measured).
    #[arg(long, value_delimiter = ',', value_name = "NAMES", value_parser = parse_subject)]
    allocators: Vec<Subject>,
    /// Only these workloads.
    #[arg(long, value_delimiter = ',', value_enum)]
    workloads: Vec<Workload>,
    /// Only these modes: a worker count and `t` (threads of this process)
    /// or `p` (processes on one segment), such as 1t, 2t, 2p (the default
    /// three) or 4p.
    #[arg(long, value_delimiter = ',', value_parser = Mode::parse)]
    modes: Vec<Mode>,
    /// Also measure with N threads and N processes (more workers than cores
    /// oversubscribes the machine, but shows how the allocators scale).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(Mode::MAX_WORKERS)))]
    workers: Option<u32>,
    /// Timed rounds per measurement; the median is reported.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    samples: Option<u32>,
    /// Target length of one timed round of pair64 and churn, in milliseconds.
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(1..))]
    round_ms: Option<u64>,
    /// Print a saved `--json` run again (as a table or --markdown) instead
    /// of measuring.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["json", "peers"])]
    from: Option<PathBuf>,
    /// Blocks of 64 B per bulk round.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    bulk_blocks: Option<u64>,
}

#[derive(Args)]
pub struct WorkerArgs {
    #[arg(long)]
    subject: String,
    #[arg(long)]
    segment: String,
    #[arg(long, value_enum)]
    workload: Workload,
    #[arg(long)]
    seed: u64,
}

/// Shared-segment size: room for every worker's bulk blocks with headers.
fn segment_size(plan: &Plan, workers: u64) -> u64 {
    (plan.bulk_blocks * workers.max(2) * 256).max(64 << 20)
}

/// A peer round that takes longer than this gives up (quadratic cases).
fn round_limit_ms(plan: &Plan) -> u64 {
    (plan.round_time.as_millis() as u64 * 30).max(3_000)
}

fn parse_subject(name: &str) -> Result<Subject, String> {
    Subject::by_name(name).ok_or_else(|| {
        let known: Vec<&str> = SUBJECTS.iter().map(|s| s.name).collect();
        format!("unknown allocator `{name}` (known: {})", known.join(", "))
    })
}

/// The subjects asked for, in the standard order, the reference included.
fn selected_subjects(asked: &[Subject]) -> Vec<Subject> {
    SUBJECTS
        .into_iter()
        .filter(|s| {
            asked.is_empty() || s.name == REFERENCE || asked.iter().any(|a| a.name == s.name)
        })
        .collect()
}

/// A report read back from `--json` output.
fn load_report(path: &std::path::Path) -> Result<Report, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let settings = &value["settings"];
    let number = |key: &str| {
        settings[key]
            .as_u64()
            .ok_or_else(|| format!("{}: no settings.{key}", path.display()))
    };
    let plan = Plan {
        samples: number("samples")? as u32,
        round_time: Duration::from_millis(number("round_ms")?),
        bulk_blocks: number("bulk_blocks")?,
    };
    let rows = value["rows"]
        .as_array()
        .ok_or_else(|| format!("{}: no rows", path.display()))?
        .iter()
        .map(Row::from_json)
        .collect::<Result<Vec<_>, _>>()?;
    let notes = value["notes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok(Report {
        plan,
        quick: settings["quick"].as_bool().unwrap_or(false),
        rows,
        notes,
    })
}

fn print(report: &Report, args: &BenchArgs) {
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).expect("JSON values serialize")
        );
        for note in &report.notes {
            eprintln!("shmkit: {note}");
        }
    } else if args.markdown {
        print!("{}", report.markdown());
    } else {
        print!("{}", report.table());
    }
}

pub fn run(args: &BenchArgs) -> Result<ExitCode, String> {
    if let Some(path) = &args.from {
        print(&load_report(path)?, args);
        return Ok(ExitCode::SUCCESS);
    }
    signals::catch_termination()?;
    let plan = Plan {
        samples: args.samples.unwrap_or(if args.quick { 3 } else { 5 }),
        round_time: Duration::from_millis(args.round_ms.unwrap_or(if args.quick {
            20
        } else {
            100
        })),
        bulk_blocks: args
            .bulk_blocks
            .unwrap_or(if args.quick { 100_000 } else { 1_000_000 }),
    };
    let subjects = selected_subjects(&args.allocators);
    let workloads = if args.workloads.is_empty() {
        Workload::ALL.to_vec()
    } else {
        args.workloads.clone()
    };
    let mut modes = if args.modes.is_empty() {
        Mode::ALL.to_vec()
    } else {
        args.modes.clone()
    };
    if let Some(workers) = args.workers {
        modes.extend([Mode::threads(workers), Mode::processes(workers)]);
    }
    let mut seen = std::collections::HashSet::new();
    modes.retain(|&mode| seen.insert(mode));
    let cells = |subject: &Subject| {
        let discipline = subject.discipline();
        workloads
            .iter()
            .flat_map(|&w| modes.iter().map(move |&m| (w, m)))
            .filter(move |&(w, m)| discipline.supports(w, m))
    };
    let total: usize = subjects.iter().map(|s| cells(s).count()).sum();
    let progress = ProgressBar::new(total as u64 + u64::from(args.peers));
    progress.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {elapsed} {msg}")
            .expect("a valid template"),
    );

    let mut report = Report {
        plan,
        quick: args.quick,
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let mut failed = false;
    for subject in &subjects {
        let segment = format!("shmkit-bench-{}-{}", std::process::id(), subject.name);
        let most_workers = modes.iter().map(|m| m.workers()).max().unwrap_or(2);
        let instance = subject.instantiate(&segment, segment_size(&plan, most_workers));
        for (workload, mode) in cells(subject) {
            // A signal ends the run between cells; dropping the instance
            // removes its segment.
            if let Some(signal) = signals::received() {
                progress.finish_and_clear();
                drop(instance);
                eprintln!("shmkit: {}; benchmark stopped", signals::describe(signal));
                return Ok(signals::exit_code(signal));
            }
            progress.set_message(format!("{} {workload} {}", subject.name, mode.name()));
            let outcome = instance
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|instance| {
                    driver::run_cell(*subject, instance, &segment, workload, mode, &plan)
                });
            failed |= outcome.is_err();
            report.rows.push(Row {
                allocator: subject.name.to_string(),
                workload,
                mode,
                outcome,
            });
            progress.inc(1);
        }
        if let Ok(instance) = &instance {
            if let Err(e) = instance.verify() {
                failed = true;
                report.notes.push(format!("{}: {e}", subject.name));
            }
        }
    }
    // A signal during the last cell or a check: stop here, the segments are
    // already gone with their instances.
    if let Some(signal) = signals::received() {
        progress.finish_and_clear();
        eprintln!("shmkit: {}; benchmark stopped", signals::describe(signal));
        return Ok(signals::exit_code(signal));
    }
    if args.peers {
        progress.set_message("Boost.Interprocess");
        let limit = round_limit_ms(&plan);
        match peers::find_dir(args.peers_dir.as_deref())
            .and_then(|dir| peers::run(&dir, &plan, limit, &workloads, &modes))
        {
            Ok(rows) => report.rows.extend(rows),
            Err(peers::Skipped::Unavailable(reason)) => report
                .notes
                .push(format!("Boost.Interprocess skipped: {reason}")),
            Err(peers::Skipped::Failed(reason)) => {
                failed = true;
                report
                    .notes
                    .push(format!("Boost.Interprocess failed: {reason}"));
            }
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    if let Some(signal) = signals::received() {
        eprintln!("shmkit: {}; benchmark stopped", signals::describe(signal));
        return Ok(signals::exit_code(signal));
    }

    print(&report, args);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One worker process of a two-process measurement.
pub fn worker(args: &WorkerArgs) -> Result<ExitCode, String> {
    let subject = parse_subject(&args.subject)?;
    let instance = subject.attach(&args.segment)?;
    instance.visit(ProcessWorker {
        workload: args.workload,
        discipline: subject.discipline(),
        seed: args.seed,
    })?;
    Ok(ExitCode::SUCCESS)
}
