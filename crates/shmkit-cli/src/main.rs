//! `shmkit`: the command line of the shmkit toolkit.

mod bench;
mod demo;
mod inspect;
mod map;
mod recover;
mod remove_on_drop;
mod signals;
mod units;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Shown under every `--help`, so scripts need not look them up.
const EXIT_CODES: &str = "Exit codes: 0 success; 1 the operation failed (no such segment, not a \
shmkit segment, permission denied, refused); 2 bad usage; 3 `check` found an inconsistency; 4 \
`recover` refused a segment other processes use; 129, 130, 143 stopped by SIGHUP, SIGINT \
(Ctrl-C) or SIGTERM, after cleaning up.";

/// Memory that several processes share.
#[derive(Parser)]
#[command(name = "shmkit", version, about, long_about = None, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the multi-process demo: N worker processes attach one POSIX
    /// shared-memory segment by name, allocate, write and verify blocks at the
    /// same time, and the parent checks that no two blocks overlap.
    #[command(after_help = EXIT_CODES)]
    Demo(demo::DemoArgs),
    /// One worker of `shmkit demo` (started by the demo itself).
    #[command(hide = true)]
    DemoWorker(demo::WorkerArgs),
    /// List the shmkit segments in /dev/shm (other files are skipped).
    #[command(after_help = EXIT_CODES)]
    Ls(inspect::LsArgs),
    /// Show a segment's header and its allocator's accounting.
    #[command(after_help = EXIT_CODES)]
    Stat(inspect::NameArgs),
    /// Walk a segment's allocator; exit 0 when sound, 3 with the first
    /// inconsistency otherwise.
    #[command(after_help = EXIT_CODES)]
    Check(inspect::NameArgs),
    /// Draw a segment's used and free regions (terminal strip, or --svg).
    #[command(after_help = EXIT_CODES)]
    Map(map::MapArgs),
    /// Mend what processes that died mid-operation left in a segment (their
    /// locks, thread caches, half-freed blocks) and recount its accounting;
    /// refuses (exit 4) while other processes have it mapped.
    #[command(after_help = EXIT_CODES)]
    Recover(recover::RecoverArgs),
    /// Create a segment managed by an allocator.
    #[command(after_help = EXIT_CODES)]
    Create(inspect::CreateArgs),
    /// Remove a segment's name (refuses a non-shmkit name unless --force).
    #[command(after_help = EXIT_CODES)]
    Rm(inspect::RmArgs),
    /// Measure pair64, churn and bulk on one thread, two threads and two
    /// processes for every allocator and peer, with ratios to the system
    /// allocator.
    #[command(after_help = EXIT_CODES)]
    Bench(bench::BenchArgs),
    /// One worker process of `shmkit bench` (started by the benchmark).
    #[command(hide = true)]
    BenchWorker(bench::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `shmkit ls | head` ends quietly when `head` has read enough, as every
    // Unix tool does (Rust ignores SIGPIPE and would panic on the write).
    // Not for the commands that own a segment: SIGPIPE would kill them
    // before they remove it (their writes fail instead, and the error path
    // cleans up).
    if !matches!(cli.command, Command::Demo(_) | Command::Bench(_)) {
        // SAFETY: restoring the default action has no preconditions; no
        // other thread runs yet.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::DemoWorker(args) => demo::worker::run(&args),
        Command::Ls(args) => inspect::ls(&args),
        Command::Stat(args) => inspect::stat(&args),
        Command::Check(args) => inspect::check(&args),
        Command::Map(args) => map::run(&args),
        Command::Recover(args) => recover::run(&args),
        Command::Create(args) => inspect::create(&args),
        Command::Rm(args) => inspect::rm(&args),
        Command::Bench(args) => bench::run(&args),
        Command::BenchWorker(args) => bench::worker(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("shmkit: {message}");
            ExitCode::FAILURE
        }
    }
}
