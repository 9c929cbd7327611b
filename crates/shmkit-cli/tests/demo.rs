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

#[test]
fn the_demo_runs_workers_and_finds_no_overlap() {
    let name = unique("demo");
    let output = shmkit()
        .args(["demo", "--workers", "3", "--size", "8MiB", "--name", &name])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // One table row per worker, each with a real pid and zero overlaps.
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() >= 8 && f[0].parse::<u32>().is_ok() && f[1].parse::<u32>().is_ok())
        .collect();
    assert_eq!(rows.len(), 3, "{stdout}");
    for row in &rows {
        assert!(
            row[2].parse::<u64>().unwrap() > 0,
            "a worker allocated nothing: {row:?}"
        );
        assert_eq!(*row.last().unwrap(), "0", "overlap reported: {row:?}");
    }
    assert!(
        stdout.contains("0 overlapping, 0 with foreign bytes"),
        "{stdout}"
    );
    assert!(
        !Path::new(&format!("/dev/shm/{name}")).exists(),
        "segment left behind"
    );
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
