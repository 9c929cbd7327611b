//! `shmkit recover`: the recovery pass after processes died (see
//! `ShmAllocator::recover`), run only while no other process has the
//! segment mapped, since it rebuilds structures a live user would be
//! changing.

use std::path::Path;
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
    /// Recover even though other processes have the segment mapped. Only
    /// for processes known to be idle: the pass rebuilds what a running
    /// allocation would be changing.
    #[arg(long)]
    force: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: &RecoverArgs) -> Result<ExitCode, String> {
    let path = Path::new(inspect::SHM_DIR).join(inspect::shm_name(&args.name));
    let users = processes_mapping(&path).map_err(|e| format!("{}: {e}", args.name))?;
    if !users.is_empty() && !args.force {
        eprintln!(
            "shmkit: {}: mapped by {} other process(es), pid {}: stop them first, or pass \
             --force if they are idle",
            args.name,
            users.len(),
            users
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(ExitCode::from(EXIT_IN_USE));
    }
    let heap = inspect::open(&args.name)?;
    let report = match heap.recover() {
        Ok(report) => report,
        Err(err @ Error::InUse { .. }) => {
            eprintln!("shmkit: {}: {err}", args.name);
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

/// The pids of other processes that have the file at `path` mapped, read
/// from `/proc/PID/maps` (matched by device and inode, so a name removed
/// and made again is not mistaken for the old object). Processes whose maps
/// this user may not read are skipped.
fn processes_mapping(path: &Path) -> std::io::Result<Vec<u32>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let (device, inode) = (meta.dev(), meta.ino());
    // The form /proc/PID/maps shows a device in: major:minor in hex.
    let (major, minor) = (libc::major(device), libc::minor(device));
    let wanted_device = format!("{major:02x}:{minor:02x}");
    let me = std::process::id();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) else {
            continue;
        };
        let maps_it = maps.lines().any(|line| {
            let mut fields = line.split_whitespace().skip(3);
            fields.next() == Some(wanted_device.as_str())
                && fields.next().and_then(|i| i.parse::<u64>().ok()) == Some(inode)
        });
        if maps_it {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}
