//! `shmkit bench` end to end, with tiny rounds: every allocator runs every
//! workload it supports on one thread, two threads and two processes, and
//! the run checks every shared segment afterwards (a failed check or a
//! leaked block makes it exit non-zero). Figures are not judged here: timing
//! targets live in the benchmark report, not in tests.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// Tiny rounds: correctness, not speed.
const TINY: [&str; 6] = ["--samples", "1", "--round-ms", "1", "--bulk-blocks", "3000"];

fn bench(args: &[&str], envs: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmkit"))
        .arg("bench")
        .args(TINY)
        .args(args)
        .envs(envs.iter().copied())
        .output()
        .unwrap()
}

fn json_of(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "bench failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    serde_json::from_slice(&output.stdout).expect("bench --json prints JSON")
}

fn cells(report: &Value, allocator: &str) -> BTreeSet<(String, String)> {
    report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["allocator"] == allocator)
        .map(|row| {
            assert!(row["error"].is_null(), "{row}");
            assert!(row["ns_per_op"].as_f64().unwrap() > 0.0, "{row}");
            (
                row["workload"].as_str().unwrap().to_string(),
                row["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn all_of(workloads: &[&str], modes: &[&str]) -> BTreeSet<(String, String)> {
    workloads
        .iter()
        .flat_map(|w| modes.iter().map(move |m| (w.to_string(), m.to_string())))
        .collect()
}

#[test]
fn every_allocator_runs_every_workload_it_supports() {
    let report = json_of(&bench(&["--json"], &[]));
    let everything = all_of(&["pair64", "churn", "bulk"], &["1t", "2t", "2p"]);
    for allocator in [
        "system",
        "mimalloc",
        "shmkit-malloc",
        "shmkit-pool",
        "shmkit-free-list",
        "shmkit-buddy",
        "shmkit-size-class",
        "shmkit-thread-local",
    ] {
        assert_eq!(cells(&report, allocator), everything, "{allocator}");
    }
    // Bump allocators give memory back all at once: bulk only.
    for allocator in ["bumpalo", "shmkit-bump"] {
        assert_eq!(
            cells(&report, allocator),
            all_of(&["bulk"], &["1t", "2t", "2p"]),
            "{allocator}"
        );
    }
    // A stack frees its latest block: one worker, no random frees.
    assert_eq!(
        cells(&report, "shmkit-stack"),
        all_of(&["pair64", "bulk"], &["1t"])
    );
    for row in report["rows"].as_array().unwrap() {
        if row["allocator"] == "system" {
            assert_eq!(row["ratio_to_system"].as_f64(), Some(1.0), "{row}");
        } else {
            assert!(row["ratio_to_system"].as_f64().unwrap() > 0.0, "{row}");
        }
    }
    assert_eq!(report["settings"]["bulk_blocks"], 3000);
    assert!(report["notes"].as_array().unwrap().is_empty(), "{report}");
    every_row_ran_as_its_table_says(&report);
}

/// Each row's census (what its workers reported about themselves) matches
/// the row's words: N threads of this process, or N other processes; 64-byte blocks for pair64 and bulk, 16 B to 4 KiB in
/// churn; and at least the operations the rounds asked for.
fn every_row_ran_as_its_table_says(report: &Value) {
    let bench_pid = report["settings"]["bench_pid"].as_u64().unwrap();
    for row in report["rows"].as_array().unwrap() {
        let census = row["census"]
            .as_array()
            .unwrap_or_else(|| panic!("no census: {row}"));
        let pids: BTreeSet<u64> = census.iter().map(|w| w["pid"].as_u64().unwrap()).collect();
        let threads: BTreeSet<u64> = census
            .iter()
            .map(|w| w["thread"].as_u64().unwrap())
            .collect();
        let mode = row["mode"].as_str().unwrap();
        let (count, kind) = mode.split_at(mode.len() - 1);
        let workers: usize = count.parse().unwrap_or_else(|_| panic!("mode {mode}"));
        assert_eq!(census.len(), workers, "{row}");
        match kind {
            "t" => {
                assert_eq!(pids, BTreeSet::from([bench_pid]), "{row}");
                assert_eq!(threads.len(), workers, "{workers} threads: {row}");
            }
            "p" => {
                assert_eq!(pids.len(), workers, "{workers} processes: {row}");
                assert!(
                    !pids.contains(&bench_pid),
                    "workers, not the bench itself: {row}"
                );
            }
            other => panic!("unknown mode kind {other}"),
        }
        let rounds = row["samples"].as_array().unwrap().len() as u64;
        let asked = rounds * row["ops_per_round"].as_u64().unwrap();
        for worker in census {
            let allocations = worker["allocations"].as_u64().unwrap();
            let bytes = worker["bytes"].as_u64().unwrap();
            assert!(
                allocations >= asked,
                "fewer allocations than rounds asked: {row}"
            );
            match row["workload"].as_str().unwrap() {
                "pair64" | "bulk" => assert_eq!(bytes, 64 * allocations, "{row}"),
                "churn" => {
                    let mean = bytes / allocations;
                    assert!((16..=4096).contains(&mean), "churn mean {mean} B: {row}");
                    assert_ne!(bytes, 64 * allocations, "churn varies its sizes: {row}");
                }
                other => panic!("unknown workload {other}"),
            }
        }
    }
}

#[test]
fn a_selection_keeps_the_reference_and_prints_a_table() {
    let out = bench(
        &[
            "--allocators",
            "shmkit-size-class",
            "--workloads",
            "churn",
            "--modes",
            "2p",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("ns/op") && lines[0].contains("x system"),
        "{table}"
    );
    assert!(lines[1].starts_with("churn") && lines[1].contains("2 processes"));
    assert!(lines[1].contains("system") && lines[1].trim_end().ends_with("1.00"));
    assert!(lines[2].contains("shmkit-size-class"), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
}

#[test]
fn markdown_output_is_a_table() {
    let out = bench(
        &[
            "--allocators",
            "bumpalo",
            "--workloads",
            "bulk",
            "--modes",
            "1t",
            "--markdown",
        ],
        &[],
    );
    assert!(out.status.success());
    let md = String::from_utf8_lossy(&out.stdout);
    assert!(md.contains("**bulk**"), "{md}");
    assert!(md.contains("| allocator | 1 thread |"), "{md}");
    assert!(md.contains("| bumpalo | "), "{md}");
}

#[test]
fn a_saved_run_prints_again_without_measuring() {
    let out = bench(
        &[
            "--allocators",
            "mimalloc",
            "--workloads",
            "pair64",
            "--modes",
            "1t",
            "--json",
        ],
        &[],
    );
    let saved = json_of(&out);
    let path = format!("{}/saved-run.json", env!("CARGO_TARGET_TMPDIR"));
    std::fs::write(&path, &out.stdout).unwrap();
    let again = Command::new(env!("CARGO_BIN_EXE_shmkit"))
        .args(["bench", "--from", &path, "--markdown"])
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let md = String::from_utf8_lossy(&again.stdout);
    let mimalloc = &saved["rows"][1];
    assert_eq!(mimalloc["allocator"], "mimalloc");
    let ratio = format!("({:.2}) |", mimalloc["ratio_to_system"].as_f64().unwrap());
    let line = md.lines().find(|l| l.starts_with("| mimalloc |"));
    assert!(line.is_some_and(|l| l.ends_with(&ratio)), "{md}");
}

#[test]
fn workers_adds_that_many_threads_and_processes() {
    let report = json_of(&bench(
        &[
            "--allocators",
            "shmkit-size-class,shmkit-pool",
            "--workloads",
            "pair64,churn",
            "--modes",
            "1t",
            "--workers",
            "3",
            "--json",
        ],
        &[],
    ));
    for allocator in ["system", "shmkit-size-class", "shmkit-pool"] {
        assert_eq!(
            cells(&report, allocator),
            all_of(&["pair64", "churn"], &["1t", "3t", "3p"]),
            "{allocator}"
        );
    }
    every_row_ran_as_its_table_says(&report);
}

#[test]
fn bad_modes_and_worker_counts_are_usage_errors() {
    for args in [
        ["--modes", "0t"],
        ["--modes", "2x"],
        ["--modes", "p"],
        ["--workers", "0"],
        ["--workers", "65"],
    ] {
        let out = bench(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let err = String::from_utf8_lossy(&bench(&["--modes", "2x"], &[]).stderr).into_owned();
    assert!(err.contains("`2x` is not a mode"), "{err}");
}

#[test]
fn unknown_names_are_usage_errors() {
    let out = bench(&["--allocators", "tcmalloc"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown allocator `tcmalloc`"), "{err}");
    assert_eq!(
        bench(&["--workloads", "pair65"], &[]).status.code(),
        Some(2)
    );
}

fn boost_headers_present() -> bool {
    Path::new("/usr/include/boost/interprocess/managed_shared_memory.hpp").exists()
}

/// Where the harness lives in this checkout.
fn peers_dir() -> String {
    format!("{}/../../bench/peers", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn peers_are_skipped_with_a_clear_note_without_boost_headers() {
    let out = bench(
        &[
            "--peers",
            "--peers-dir",
            &peers_dir(),
            "--workloads",
            "pair64",
            "--modes",
            "1t",
            "--json",
        ],
        &[("BOOST_INCLUDE_DIR", "/nonexistent/boost-headers")],
    );
    let report = json_of(&out);
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("Boost.Interprocess skipped") && notes.contains("headers not found"),
        "{notes}"
    );
    assert!(!report["rows"].to_string().contains("boost-"));
}

#[test]
fn peers_rows_join_the_table_when_boost_is_installed() {
    if !boost_headers_present() {
        eprintln!("Boost headers absent: the skip path is tested instead");
        return;
    }
    let out = bench(
        &[
            "--peers",
            "--peers-dir",
            &peers_dir(),
            "--allocators",
            "system",
            "--workloads",
            "pair64,churn",
            "--modes",
            "1t,2p",
            "--json",
        ],
        &[("PEERS_OUT_DIR", env!("CARGO_TARGET_TMPDIR"))],
    );
    let report = json_of(&out);
    let both = all_of(&["pair64", "churn"], &["1t", "2p"]);
    assert_eq!(cells(&report, "boost-rbtree-best-fit"), both);
    assert_eq!(cells(&report, "boost-simple-seq-fit"), both);
}
