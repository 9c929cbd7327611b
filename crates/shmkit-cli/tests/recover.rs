//! `shmkit recover` against a thread-local segment whose user process was
//! SIGKILLed with blocks in its thread cache, and its refusal while another
//! process still has the segment mapped.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use shmkit::{MemContext, SegmentAllocator, SegmentOptions, ShmAllocator, ThreadLocalAllocator};

fn shmkit(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shmkit"))
        .args(args)
        .output()
        .unwrap()
}

/// Attaches the segment named in the environment, leaves freed blocks in
/// this thread's cache, says so, and waits to be killed.
#[test]
#[ignore = "child process of the recover test"]
fn child_cache_holder() {
    let name = std::env::var("SHMKIT_TEST_SEGMENT").expect("run by the recover test");
    let heap = ThreadLocalAllocator::attach(&SegmentOptions::shm(name)).unwrap();
    let ctx = MemContext::current();
    let blocks: Vec<u64> = (0..6)
        .map(|_| heap.allocate_offset(&ctx, 64, 8).unwrap())
        .collect();
    for offset in blocks {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, offset) }.unwrap();
    }
    println!("ready {}", heap.cache_usage().1);
    std::thread::sleep(std::time::Duration::from_secs(60));
}

/// Removes the segment name however the test ends.
struct RemoveOnDrop(String);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = shmkit::segment::remove(&shmkit::Location::Shm(self.0.clone()));
    }
}

#[test]
fn recover_refuses_a_segment_in_use_then_reclaims_a_dead_processs_cache() {
    let name = format!("shmkit-cli-recover-{}", std::process::id());
    let _remove = RemoveOnDrop(name.clone());
    let creator = ThreadLocalAllocator::create(&SegmentOptions::shm(&name).size(4 << 20)).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_cache_holder", "--ignored", "--nocapture"])
        .env("SHMKIT_TEST_SEGMENT", &name)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let cached = loop {
        let line = lines.next().expect("the child said nothing").unwrap();
        if let Some(count) = line.strip_prefix("ready ") {
            break count.parse::<u64>().unwrap();
        }
    };
    assert!(cached > 0);

    // The child has it mapped: refused, naming the child.
    let refused = shmkit(&["recover", &name]);
    assert_eq!(refused.status.code(), Some(4));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains(&child.id().to_string()), "{stderr}");

    // Once nobody has it mapped, the pass runs.
    drop(creator);
    child.kill().unwrap();
    child.wait().unwrap();
    let out = shmkit(&["recover", &name, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["caches_reclaimed"], 1, "{report}");
    assert_eq!(report["sound"], true, "{report}");
    assert_eq!(report["after"]["live_allocations"], 0, "{report}");

    let text = shmkit(&["recover", &name]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).contains("0 caches"));
    let heap = ThreadLocalAllocator::attach(&SegmentOptions::shm(&name)).unwrap();
    assert_eq!(heap.cache_usage(), (0, 0));
    heap.check().unwrap();
}
