//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod paged;

use std::sync::atomic::{AtomicU32, Ordering};

use shmkit::{Location, SegmentOptions};

/// A shared-memory name no other test (or test run) uses.
pub fn unique_name(tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "shmkit-test-{tag}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Removes a named segment when dropped, so failed tests leave nothing behind.
pub struct Cleanup(pub Location);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = shmkit::segment::remove(&self.0);
    }
}

/// Options for a fresh shared-memory segment and the guard that removes it.
pub fn fresh_shm(tag: &str) -> (SegmentOptions, Cleanup) {
    let name = unique_name(tag);
    (
        SegmentOptions::shm(name.clone()),
        Cleanup(Location::Shm(name)),
    )
}

/// A fresh path in the system temporary directory and its guard.
pub fn fresh_file(tag: &str) -> (std::path::PathBuf, Cleanup) {
    let path = std::env::temp_dir().join(unique_name(tag));
    (path.clone(), Cleanup(Location::File(path)))
}

/// The pid of a process that has exited and been reaped.
pub fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true")
        .spawn()
        .expect("spawn true");
    let pid = child.id();
    child.wait().expect("wait");
    pid
}

/// Runs one `#[ignore]`d test of this test binary in a child process, with
/// extra environment, and returns the child.
pub fn spawn_self(test_name: &str, env: &[(&str, String)]) -> std::process::Command {
    let exe = std::env::current_exe().expect("current exe");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--exact",
        test_name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd
}

/// The name of a POSIX shared-memory segment's options.
pub fn shm_name(options: &SegmentOptions) -> String {
    match options.location() {
        Location::Shm(name) => name.clone(),
        other => panic!("not a shared-memory segment: {other:?}"),
    }
}

/// Starts `count` copies of the `#[ignore]`d child test `test_name`, each
/// told the segment's name (`SHMKIT_TEST_SEGMENT`) and its worker number
/// (`SHMKIT_TEST_WORKER`), with stdout captured.
pub fn spawn_workers(test_name: &str, segment: &str, count: usize) -> Vec<std::process::Child> {
    (0..count)
        .map(|worker| {
            spawn_self(
                test_name,
                &[
                    ("SHMKIT_TEST_SEGMENT", segment.to_owned()),
                    ("SHMKIT_TEST_WORKER", worker.to_string()),
                ],
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start a worker process")
        })
        .collect()
}

/// Waits for worker `worker`, asserts that it succeeded, and returns what it
/// printed.
pub fn worker_stdout(worker: usize, child: std::process::Child) -> String {
    let output = child.wait_with_output().expect("wait for a worker process");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "worker {worker} failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Reads a required environment variable of a child-process test.
pub fn child_env(key: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| {
        panic!("{key} is not set: this test only runs as a child of another test")
    })
}

/// Runs `work(thread)` on `threads` threads at once and gathers the
/// `(offset, len)` ranges they return.
pub fn ranges_from_threads(
    threads: u64,
    work: impl Fn(u64) -> Vec<(u64, u64)> + Sync,
) -> Vec<(u64, u64)> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let work = &work;
                scope.spawn(move || work(thread))
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("worker thread panicked"))
            .collect()
    })
}

/// Sorts `(offset, len)` ranges and asserts that no two overlap.
pub fn assert_disjoint(ranges: &mut [(u64, u64)]) {
    ranges.sort_unstable();
    for pair in ranges.windows(2) {
        assert!(
            pair[0].0 + pair[0].1 <= pair[1].0,
            "{:?} overlaps {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// A tiny deterministic generator (xorshift) for the stress tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `recover()` for a test whose own processes have all exited, in a test
/// binary whose other tests fork children on other threads: a child
/// between its fork and its exec maps every segment of this process for a
/// moment, and recovery rightly refuses (`InUse`) while it does. Such a
/// user goes away within milliseconds; one that stays 10 s fails the test.
pub fn recover_once_alone(allocator: &dyn shmkit::ShmAllocator) -> shmkit::RecoveryReport {
    let started = std::time::Instant::now();
    loop {
        // SAFETY: the calling test uses the allocator from this thread only.
        match unsafe { allocator.recover() } {
            Err(shmkit::Error::InUse { reason }) => {
                assert!(
                    started.elapsed() < std::time::Duration::from_secs(10),
                    "recovery refused for 10 s: {reason}"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other.unwrap(),
        }
    }
}

/// A barrier for test threads that gives up instead of waiting forever:
/// when one thread panics before it arrives, the others fail after
/// `patience` with a message, rather than hang the test run.
#[allow(dead_code)]
pub struct PatientBarrier {
    state: std::sync::Mutex<(usize, u64)>,
    arrived: std::sync::Condvar,
    threads: usize,
    patience: std::time::Duration,
}

#[allow(dead_code)]
impl PatientBarrier {
    pub fn new(threads: usize) -> PatientBarrier {
        PatientBarrier {
            state: std::sync::Mutex::new((0, 0)),
            arrived: std::sync::Condvar::new(),
            threads,
            patience: std::time::Duration::from_secs(60),
        }
    }

    pub fn wait(&self) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let generation = state.1;
        state.0 += 1;
        if state.0 == self.threads {
            *state = (0, generation + 1);
            self.arrived.notify_all();
            return;
        }
        let (state, timeout) = self
            .arrived
            .wait_timeout_while(state, self.patience, |s| s.1 == generation)
            .unwrap_or_else(|e| e.into_inner());
        drop(state);
        assert!(
            !timeout.timed_out(),
            "a thread never reached the barrier (did it panic?)"
        );
    }
}
