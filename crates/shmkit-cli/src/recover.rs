//! `shmkit recover`: the recovery pass after processes died (see
//! `ShmAllocator::recover`), run only while no other process has the
//! segment open or mapped, since it rebuilds structures a live user would
//! be changing; it holds the segment's recovery lock, so nobody attaches
//! meanwhile.

use std::process::ExitCode;

use clap::Args;
use serde_json::json;
use shmkit::Error;

use crate::inspect::{self, EXIT_INCONSISTENT};

/// Exit code of `recover` when other processes use the segment.
pub const EXIT_IN_USE: u8 = 4;

#[derive(Args)]
pub struct RecoverArgs {
    /// The segment's name.
    name: String,
    /// Recover even though other processes have the segment open. Only
    /// for processes known to be idle: the pass rebuilds what a running
    /// allocation would be changing.
    #[arg(long)]
    force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &RecoverArgs) -> Result<ExitCode, String> {
    let heap = inspect::open(&args.name)?;
    let recovered = if args.force {
        // SAFETY: the command runs on one thread.
        unsafe { heap.recover_forced() }
    } else {
        // SAFETY: the command runs on one thread.
        unsafe { heap.recover() }
    };
    let report = match recovered {
        Ok(report) => report,
        Err(err @ Error::InUse { .. }) => {
            eprintln!(
                "shmkit: {}: {err} (pass --force if they are idle)",
                args.name
            );
            return Ok(ExitCode::from(EXIT_IN_USE));
        }
        Err(err) => return Err(format!("{}: {err}", args.name)),
    };
    let check = heap.check();
    if args.json {
        let stats = |s: shmkit::AllocStats| {
            json!({"live_allocations": s.live_allocations, "allocated_bytes": s.allocated_bytes,
                   "free_bytes": s.free_bytes})
        };
        println!(
            "{}",
            json!({
                "name": args.name,
                "locks_taken_over": report.locks_taken_over,
                "caches_reclaimed": report.caches_reclaimed,
                "blocks_reclaimed": report.blocks_reclaimed,
                "rebuilt": report.rebuilt,
                "before": stats(report.before),
                "after": stats(report.after),
                "sound": check.is_ok(),
                "error": check.as_ref().err().map(|e| e.to_string()),
            })
        );
    } else {
        println!("{}: {report}", args.name);
        match &check {
            Ok(()) => println!("{}: sound", args.name),
            Err(err) => eprintln!("shmkit: {}: still inconsistent: {err}", args.name),
        }
    }
    Ok(if check.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCONSISTENT)
    })
}
