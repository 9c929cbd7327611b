//! `shmkit`: the command line of the shmkit toolkit.

mod demo;
mod units;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Memory that several processes share.
#[derive(Parser)]
#[command(name = "shmkit", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the multi-process demo: N worker processes attach one POSIX
    /// shared-memory segment by name, allocate, write and verify blocks at the
    /// same time, and the parent checks that no two blocks overlap.
    Demo(demo::DemoArgs),
    /// One worker of `shmkit demo` (started by the demo itself).
    #[command(hide = true)]
    DemoWorker(demo::WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
        Command::DemoWorker(args) => demo::worker::run(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("shmkit: {message}");
            ExitCode::FAILURE
        }
    }
}
