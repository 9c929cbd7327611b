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
    let percent = stdout
        .split('(')
        .find_map(|part| part.split("%)").next()?.parse::<f64>().ok())
        .expect("a fill percentage");
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

#[test]
fn ctrl_c_stops_the_workers_and_removes_the_segment() {
    let name = unique("sigint");
    let mut child = shmkit()
        .args(["demo", "--workers", "2", "--size", "1GiB", "--name", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut banner = String::new();
    stdout.read_line(&mut banner).unwrap();
    assert!(banner.starts_with("shmkit demo:"), "{banner}");
    // SAFETY: plain signal to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(130),
        "expected the interrupted exit code"
    );
    assert!(
        !Path::new(&format!("/dev/shm/{name}")).exists(),
        "segment left behind"
    );
}
