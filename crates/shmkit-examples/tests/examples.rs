//! The producer and consumer examples as their users run them, killed
//! mid-run and run again: a side whose partner died does not wait forever,
//! and a run never reads a dead run's messages.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A segment name no other test (or run) uses.
fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "shmkit-test-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The example binary `name`, built with this test.
fn example(name: &str) -> PathBuf {
    match name {
        "producer" => PathBuf::from(env!("CARGO_BIN_EXE_producer")),
        "consumer" => PathBuf::from(env!("CARGO_BIN_EXE_consumer")),
        other => panic!("no example {other}"),
    }
}

fn start(name: &str, args: &[&str]) -> Child {
    Command::new(example(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn shm_exists(segment: &str) -> bool {
    std::path::Path::new("/dev/shm").join(segment).exists()
}

/// Waits for `child` at most `patience`; kills it and fails after that.
fn finishes_within(mut child: Child, patience: Duration, what: &str) -> Output {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > patience {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{what} still ran after {patience:?}: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn kill(mut child: Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// Waits until the segment exists and both sides have been at work a while.
fn let_them_run(segment: &str) {
    let started = Instant::now();
    while !shm_exists(segment) {
        assert!(started.elapsed() < Duration::from_secs(30), "no segment");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// Kills `victim` mid-run and checks that the other side stops within
/// seconds with status 2, saying so, and that the segment's name is gone.
fn the_other_side_stops_when(victim: &str) {
    let segment = unique_name(&format!("example-kill-{victim}"));
    let consumer = start("consumer", &[&segment]);
    let producer = start(
        "producer",
        &[&segment, "--count", "100000000", "--size", "64"],
    );
    let_them_run(&segment);
    let (survivor, name) = if victim == "producer" {
        kill(producer);
        (consumer, "the consumer")
    } else {
        kill(consumer);
        (producer, "the producer")
    };
    let output = finishes_within(survivor, Duration::from_secs(20), name);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(&format!("{victim} died")), "{stderr}");
    assert!(!shm_exists(&segment), "the dead run's segment is removed");
}

#[test]
fn a_consumer_whose_producer_is_killed_stops_and_removes_the_segment() {
    the_other_side_stops_when("producer");
}

#[test]
fn a_producer_whose_consumer_is_killed_stops_instead_of_waiting_for_room() {
    the_other_side_stops_when("consumer");
}

#[test]
fn a_run_after_both_sides_were_killed_reads_only_its_own_messages() {
    let segment = unique_name("example-rerun");
    // A run killed mid-way, both sides: the segment stays, its queue full
    // of that run's messages.
    let consumer = start("consumer", &[&segment]);
    let producer = start(
        "producer",
        &[&segment, "--count", "100000000", "--size", "64"],
    );
    let_them_run(&segment);
    kill(producer);
    kill(consumer);
    assert!(shm_exists(&segment), "the killed run left its segment");
    // The next run, on the same name.
    let consumer = start("consumer", &[&segment]);
    let producer = start("producer", &[&segment, "--count", "2000", "--size", "64"]);
    let produced = finishes_within(producer, Duration::from_secs(60), "the producer");
    assert!(produced.status.success(), "{produced:?}");
    let consumed = finishes_within(consumer, Duration::from_secs(60), "the consumer");
    let stdout = String::from_utf8_lossy(&consumed.stdout);
    assert!(consumed.status.success(), "{stdout}");
    assert!(
        stdout.contains("consumer: 2000 messages, 128000 bytes"),
        "the new run's messages, and only those: {stdout}"
    );
    assert!(stdout.contains(" 0 corrupt"), "{stdout}");
    assert!(!shm_exists(&segment));
}

#[test]
fn help_is_help_not_a_segment_name() {
    for name in ["producer", "consumer"] {
        let output = finishes_within(start(name, &["--help"]), Duration::from_secs(10), "--help");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{name}: {output:?}");
        assert!(
            stdout.contains("Usage") && stdout.contains("Exit codes"),
            "{name}: {stdout}"
        );
        assert!(!shm_exists("--help"), "{name} took --help for a name");
    }
}

/// Sends `signal` to a side of a running pair once its segment exists;
/// both must stop, the segment gone.
fn signalled(victim: &str, signal: i32) {
    let segment = unique_name(&format!("example-signal-{victim}"));
    let consumer = start("consumer", &[&segment]);
    let producer = start(
        "producer",
        &[&segment, "--count", "100000000", "--size", "64"],
    );
    let_them_run(&segment);
    let (victim_child, other) = if victim == "producer" {
        (producer, consumer)
    } else {
        (consumer, producer)
    };
    // SAFETY: a plain signal to our own child.
    unsafe { libc::kill(victim_child.id() as i32, signal) };
    let stopped = finishes_within(victim_child, Duration::from_secs(10), victim);
    assert_eq!(
        stopped.status.code(),
        Some(128 + signal),
        "{victim}: {}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let other = finishes_within(other, Duration::from_secs(20), "the other side");
    assert_eq!(other.status.code(), Some(2), "{other:?}");
    assert!(!shm_exists(&segment), "the segment stayed behind");
}

#[test]
fn sigterm_and_ctrl_c_end_a_side_and_its_segment() {
    signalled("consumer", libc::SIGTERM);
    signalled("producer", libc::SIGINT);
}
