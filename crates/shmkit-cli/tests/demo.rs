//! `shmkit demo` end to end: real worker processes, a clean table, and no
//! segment left behind on success or on Ctrl-C.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

fn shmkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shmkit"))
}

fn unique(tag: &str) -> String {
    format!("shmkit-cli-test-{tag}-{}", std::process::id())
}

/// Runs the demo to success and returns its stdout and the worker rows of
/// its table (each with a real pid and zero overlaps).
fn run_demo(args: &[&str], name: &str) -> (String, Vec<Vec<String>>) {
    let output = shmkit()
        .arg("demo")
        .args(args)
        .args(["--name", name])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .filter(|f| f.len() >= 8 && f[0].parse::<u32>().is_ok() && f[1].parse::<u32>().is_ok())
        .collect();
    for row in &rows {
        assert_eq!(row.last().unwrap(), "0", "overlap reported: {row:?}");
    }
    assert!(
        stdout.contains("0 overlapping, 0 with foreign bytes"),
        "{stdout}"
    );
    assert!(
        !Path::new(&format!("/dev/shm/{name}")).exists(),
        "segment left behind"
    );
    (stdout, rows)
}

#[test]
fn every_worker_gets_the_blocks_it_asked_for() {
    // 3 × 2,000 blocks of at most 1 KiB fit in 8 MiB, so each worker must
    // get all of them however the scheduler orders the processes.
    let (stdout, rows) = run_demo(
        &["--workers", "3", "--size", "8MiB", "--blocks", "2000"],
        &unique("demo"),
    );
    assert_eq!(rows.len(), 3, "{stdout}");
    for row in &rows {
        assert_eq!(row[2], "2000", "a worker was short of blocks: {row:?}");
    }
}

#[test]
fn workers_fill_the_segment_without_overlap() {
    // Until full: on 2 cores one worker may find the segment already full
    // when it first runs, so only the total is checked, not each share.
    let (stdout, rows) = run_demo(&["--workers", "3", "--size", "4MiB"], &unique("fill"));
    assert_eq!(rows.len(), 3, "{stdout}");
    let blocks: u64 = rows.iter().map(|r| r[2].parse::<u64>().unwrap()).sum();
    // 4 MiB of blocks averaging ~520 B: thousands, not a handful.
    assert!(blocks > 4000, "only {blocks} blocks: {stdout}");
    let percent = fill_percent(&stdout);
    assert!(percent > 95.0, "segment only {percent}% full: {stdout}");
}

#[test]
fn the_demo_refuses_an_existing_name_and_leaves_it_alone() {
    let name = unique("taken");
    let path = format!("/dev/shm/{name}");
    std::fs::write(&path, b"someone else's").unwrap();
    let output = shmkit()
        .args(["demo", "--workers", "2", "--size", "1MiB", "--name", &name])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let kept = std::fs::read(&path);
    let _ = std::fs::remove_file(&path);
    assert!(!output.status.success());
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "errors are one line: {stderr}");
    assert_eq!(kept.unwrap(), b"someone else's");
}

/// Starts a demo on a large segment, waits for the stdout line that starts
/// with `at`, sends `signal`, and returns the exit code and the stderr.
fn signal_demo(tag: &str, at: &str, signal: i32) -> (Option<i32>, String, String) {
    let name = unique(tag);
    let mut child = shmkit()
        .args(["demo", "--workers", "2", "--size", "1GiB", "--name", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the demo ended before `{at}`: {seen}"
        );
        seen.push_str(&line);
        if line.starts_with(at) {
            break;
        }
    }
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(child.id() as i32, signal) };
    let output = child.wait_with_output().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    seen.push_str(&rest);
    assert!(
        !Path::new(&format!("/dev/shm/{name}")).exists(),
        "segment left behind"
    );
    (
        output.status.code(),
        seen,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn ctrl_c_stops_the_workers_and_removes_the_segment() {
    let (code, _, stderr) = signal_demo("sigint", "shmkit demo:", libc::SIGINT);
    assert_eq!(
        code,
        Some(130),
        "expected the interrupted exit code: {stderr}"
    );
    assert!(stderr.contains("interrupted (SIGINT)"), "{stderr}");
}

#[test]
fn sigterm_and_sighup_clean_up_as_ctrl_c_does() {
    let (code, _, stderr) = signal_demo("sigterm", "shmkit demo:", libc::SIGTERM);
    assert_eq!(code, Some(143), "{stderr}");
    assert!(stderr.contains("terminated (SIGTERM)"), "{stderr}");
    let (code, _, stderr) = signal_demo("sighup", "shmkit demo:", libc::SIGHUP);
    assert_eq!(code, Some(129), "{stderr}");
    assert!(stderr.contains("hung up (SIGHUP)"), "{stderr}");
}

#[test]
fn an_interrupt_while_the_parent_verifies_stops_it() {
    let (code, stdout, stderr) = signal_demo("sigint-verify", "workers done;", libc::SIGINT);
    assert_eq!(code, Some(130), "{stdout}\n{stderr}");
    assert!(
        !stdout.contains("checked "),
        "the verification ran to its end: {stdout}"
    );
}

#[test]
fn a_size_below_the_smallest_segment_is_raised_and_said() {
    let name = unique("tiny");
    // 11000 bytes: room for the header and the hand-off log, not whole pages.
    let (stdout, _) = run_demo(&["--workers", "2", "--size", "11000"], &name);
    assert!(
        stdout.contains("note: --size 10.7 KiB raised to 12.0 KiB"),
        "{stdout}"
    );
    let percent = fill_percent(&stdout);
    assert!((0.0..=100.0).contains(&percent), "{stdout}");
    assert!(stdout.contains("time: segment created in "), "{stdout}");
}

/// The fill percentage of the demo's summary line.
fn fill_percent(stdout: &str) -> f64 {
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("segment: "))
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    summary
        .split('(')
        .nth(1)
        .and_then(|rest| rest.split('%').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no percentage in `{summary}`"))
}

#[test]
fn a_size_without_room_for_the_header_is_refused() {
    let out = shmkit()
        .args(["demo", "--size", "1K", "--name", &unique("no-room")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("smaller than its header"), "{stderr}");
}

#[test]
fn json_output_is_one_object_with_every_worker() {
    let name = unique("json");
    let output = shmkit()
        .args(["demo", "-w", "3", "-s", "2MiB", "--json", "--name", &name])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("stdout is one JSON object");
    let workers = report["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3);
    let blocks: u64 = workers.iter().map(|w| w["blocks"].as_u64().unwrap()).sum();
    assert_eq!(report["blocks"].as_u64(), Some(blocks));
    assert!(blocks > 1000, "{report}");
    assert_eq!(report["overlapping"], 0);
    assert_eq!(report["damaged"], 0);
    assert!(report["ms"]["verify"].as_f64().unwrap() >= 0.0);
    assert!(!Path::new(&format!("/dev/shm/{name}")).exists());
}
