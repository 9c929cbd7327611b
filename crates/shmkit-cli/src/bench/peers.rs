//! The peer outside Rust: Boost.Interprocess, through the C++ harness in
//! `bench/peers/`, built by its script when the Boost headers are present.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::driver::Plan;
use super::report::Row;
use super::workload::{Mode, Workload};

/// The harness's folder, relative to the repository root.
const PEERS_DIR: &str = "bench/peers";
const BUILD_SCRIPT: &str = "build.sh";
/// The build script's exit code for "cannot build here" (a skip, not a failure).
const CANNOT_BUILD: i32 = 3;

/// Why the peer rows are missing.
#[derive(Debug)]
pub enum Skipped {
    /// The harness cannot be built on this machine (no Boost headers, no
    /// compiler): a normal outcome, reported in one line.
    Unavailable(String),
    /// Something went wrong running it.
    Failed(String),
}

/// `explicit`, or `bench/peers` found above the current directory or above
/// this program (a repository checkout).
pub fn find_dir(explicit: Option<&Path>) -> Result<PathBuf, Skipped> {
    if let Some(dir) = explicit {
        return if dir.join(BUILD_SCRIPT).is_file() {
            Ok(dir.to_path_buf())
        } else {
            Err(Skipped::Failed(format!(
                "{} has no {BUILD_SCRIPT}",
                dir.display()
            )))
        };
    }
    let starts = [
        std::env::current_dir().ok(),
        std::env::current_exe()
            .ok()
            .and_then(|p| p.canonicalize().ok()),
    ];
    starts
        .into_iter()
        .flatten()
        .flat_map(|start| {
            start
                .ancestors()
                .map(|a| a.join(PEERS_DIR))
                .collect::<Vec<_>>()
        })
        .find(|dir| dir.join(BUILD_SCRIPT).is_file())
        .ok_or_else(|| {
            Skipped::Unavailable(format!(
                "{PEERS_DIR}/{BUILD_SCRIPT} not found (run from a shmkit checkout, or pass --peers-dir)"
            ))
        })
}

/// Builds the harness (or finds it up to date) and returns its path.
fn build(dir: &Path) -> Result<PathBuf, Skipped> {
    let output = Command::new("bash")
        .arg(dir.join(BUILD_SCRIPT))
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| Skipped::Failed(format!("running {BUILD_SCRIPT}: {e}")))?;
    let reason = || String::from_utf8_lossy(&output.stderr).trim().to_string();
    match output.status.code() {
        Some(0) => {
            let path = String::from_utf8_lossy(&output.stdout).trim().to_string();
            Ok(PathBuf::from(path))
        }
        Some(CANNOT_BUILD) => Err(Skipped::Unavailable(reason())),
        _ => Err(Skipped::Failed(format!(
            "{BUILD_SCRIPT} failed ({}): {}",
            output.status,
            reason()
        ))),
    }
}

/// Runs the harness on the same plan and returns its rows.
pub fn run(
    dir: &Path,
    plan: &Plan,
    round_limit_ms: u64,
    workloads: &[Workload],
    modes: &[Mode],
) -> Result<Vec<Row>, Skipped> {
    // The harness knows one thread, two threads and two processes.
    let peer_modes: Vec<String> = modes
        .iter()
        .filter(|m| Mode::ALL.contains(m))
        .map(|m| m.name())
        .collect();
    if peer_modes.is_empty() {
        return Ok(Vec::new());
    }
    let program = build(dir)?;
    let join = |names: Vec<&str>| names.join(",");
    let output = Command::new(&program)
        .args(["--samples", &plan.samples.to_string()])
        .args(["--round-ms", &plan.round_time.as_millis().to_string()])
        .args(["--limit-ms", &round_limit_ms.to_string()])
        .args(["--bulk-blocks", &plan.bulk_blocks.to_string()])
        .args([
            "--workloads",
            &join(workloads.iter().map(|w| w.name()).collect()),
        ])
        .args(["--modes", &peer_modes.join(",")])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| Skipped::Failed(format!("running {}: {e}", program.display())))?;
    if !output.status.success() {
        return Err(Skipped::Failed(format!(
            "{} exited with {}",
            program.display(),
            output.status
        )));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| parse_row(line).map_err(Skipped::Failed))
        .collect()
}

/// One line of the harness's output.
fn parse_row(line: &str) -> Result<Row, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("harness line `{line}`: {e}"))?;
    Row::from_json(&value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_measured_row_and_an_error_row() {
        let row = parse_row(
            r#"{"allocator":"boost-rbtree-best-fit","workload":"churn","mode":"2p","ns_per_op":41.5,"ops_per_round":9,"samples":[41.0,41.5,42.0]}"#,
        )
        .unwrap();
        assert_eq!(row.allocator, "boost-rbtree-best-fit");
        assert_eq!(
            (row.workload, row.mode),
            (Workload::Churn, Mode::TWO_PROCESSES)
        );
        let measured = row.outcome.unwrap();
        assert_eq!(measured.ns_per_op, 41.5);
        assert_eq!(measured.samples.len(), 3);

        let row = parse_row(
            r#"{"allocator":"boost-simple-seq-fit","workload":"bulk","mode":"2t","error":"gave up"}"#,
        )
        .unwrap();
        assert_eq!(row.outcome.unwrap_err(), "gave up");
    }

    #[test]
    fn rejects_malformed_lines() {
        assert!(parse_row("not json").is_err());
        assert!(parse_row(r#"{"allocator":"x","workload":"nope","mode":"1t"}"#).is_err());
        assert!(parse_row(r#"{"allocator":"x","workload":"bulk","mode":"1t"}"#).is_err());
    }
}
