//! Processes are SIGKILLed while they allocate and free; the others must
//! carry on (no deadlock, bounded waits), and the structure must be sound
//! afterwards. Run for every allocator of the family that shares state.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{child_env, fresh_shm, shm_name, spawn_self};
use shmkit::{
    BuddyAllocator, Error, FreeListAllocator, MemContext, Offset, PoolAllocator, SegmentAllocator,
    SegmentOptions, ShmAllocator, SizeClassAllocator, ThreadLocalAllocator,
};

const STOP_ROOT: &str = "crash.stop";
/// No single allocate or free may take longer than this, even right after a
/// process died holding a lock.
const LATENCY_BOUND: Duration = Duration::from_secs(3);

fn attach(kind: &str, options: &SegmentOptions) -> Box<dyn ShmAllocator> {
    match kind {
        "free-list" => Box::new(FreeListAllocator::attach(options).unwrap()),
        "buddy" => Box::new(BuddyAllocator::attach(options).unwrap()),
        "pool" => Box::new(PoolAllocator::attach(options).unwrap()),
        "size-class" => Box::new(SizeClassAllocator::attach(options).unwrap()),
        "thread-local" => Box::new(ThreadLocalAllocator::attach(options).unwrap()),
        other => panic!("unknown allocator {other}"),
    }
}

/// Allocates, tags, verifies and frees in a loop until told to stop;
/// prints its operation count and its slowest operation.
#[test]
#[ignore = "child process of the crash tests"]
fn child_crash_worker() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let kind = child_env("SHMKIT_TEST_KIND");
    let options = SegmentOptions::shm(name);
    let segment = shmkit::Segment::attach(&options).unwrap();
    let stop = segment.root::<AtomicU32>(STOP_ROOT).expect("stop flag");
    // SAFETY: resolved and aligned; an atomic.
    let stop = unsafe { segment.resolve(stop).unwrap().as_ref() };
    let allocator = attach(&kind, &options);
    let ctx = MemContext::current();
    let tag = std::process::id() as u8 | 1;
    let mut live: Vec<(u64, usize)> = Vec::new();
    let (mut ops, mut slowest, mut seq) = (0u64, Duration::ZERO, 0u64);
    let deadline = Instant::now() + Duration::from_secs(20);
    // Every worker makes some progress before it honours the stop flag, so a
    // replacement started late on a busy machine still proves it could work.
    while (stop.load(Ordering::Acquire) == 0 || ops < 1000) && Instant::now() < deadline {
        seq += 1;
        let started = Instant::now();
        if live.len() < 64 && seq % 3 != 0 {
            let size = 16 + (seq * 37 % 1500) as usize;
            match allocator.allocate_offset(&ctx, size, 8) {
                Ok(offset) => {
                    let block = allocator.full_ptr(offset).unwrap();
                    // SAFETY: a live block of `size` bytes, ours alone.
                    unsafe { std::ptr::write_bytes(block.as_ptr(), tag, size) };
                    live.push((offset, size));
                }
                Err(Error::OutOfMemory { .. }) => {}
                Err(other) => panic!("allocate: {other}"),
            }
        } else if let Some((offset, size)) = live.pop() {
            let block = allocator.full_ptr(offset).unwrap();
            // SAFETY: still our live block.
            let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), size) };
            assert!(
                bytes.iter().all(|&b| b == tag),
                "a live block was handed to someone else"
            );
            allocator.free_offset(&ctx, offset).unwrap();
        }
        slowest = slowest.max(started.elapsed());
        ops += 1;
    }
    for (offset, _) in live {
        allocator.free_offset(&ctx, offset).unwrap();
    }
    println!("worker-result {ops} {}", slowest.as_micros());
}

fn spawn_worker(name: &str, kind: &str) -> std::process::Child {
    spawn_self(
        "child_crash_worker",
        &[
            ("SHMKIT_TEST_SEGMENT", name.to_owned()),
            ("SHMKIT_TEST_KIND", kind.to_owned()),
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap()
}

/// Whether a killed process's half-done step is repaired (lock-based
/// allocators) or may leave a leaked block that `check()` reports (the
/// lock-free ones, until their recovery pass exists).
#[derive(PartialEq)]
enum AfterKill {
    Repaired,
    MayLeak,
}

/// Three workers; two of them are SIGKILLed mid-run and replaced; the
/// survivors finish within bounds, and the structure checks out (or, for
/// the lock-free allocators, at worst reports the dead process's leak).
fn survive_kills<A: SegmentAllocator + ShmAllocator>(
    kind: &str,
    params: &A::Params,
    after: AfterKill,
) {
    let (options, _cleanup) = fresh_shm(kind);
    let creator = A::create_with(&options.clone().size(32 << 20), params).unwrap();
    let segment = shmkit::Segment::attach(&options).unwrap();
    let bump_free_word = creator
        .allocate_offset(&MemContext::default(), 8, 8)
        .unwrap();
    let stop = Offset::<AtomicU32>::from_raw(bump_free_word);
    // SAFETY: a fresh 8-byte block, aligned; zero it as the stop flag.
    unsafe {
        segment
            .resolve(stop)
            .unwrap()
            .as_ptr()
            .write(AtomicU32::new(0))
    };
    segment.set_root(STOP_ROOT, stop).unwrap();
    let name = shm_name(&options);

    let mut workers: Vec<_> = (0..3).map(|_| spawn_worker(&name, kind)).collect();
    let mut killed = 0;
    // Kill the first two workers, one after the other, and replace them.
    for worker in workers.iter_mut().take(2) {
        std::thread::sleep(Duration::from_millis(150));
        worker.kill().unwrap();
        worker.wait().unwrap();
        killed += 1;
        *worker = spawn_worker(&name, kind);
    }
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    unsafe { segment.resolve(stop).unwrap().as_ref() }.store(1, Ordering::Release);

    let mut total_ops = 0;
    for (index, worker) in workers.into_iter().enumerate() {
        let output = worker.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{kind} worker {index} failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|l| l.split("worker-result ").nth(1))
            .unwrap_or_else(|| panic!("{kind} worker {index} reported nothing: {stdout}"));
        let fields: Vec<u64> = line.split(' ').map(|f| f.trim().parse().unwrap()).collect();
        assert!(
            fields[0] >= 1000,
            "{kind} worker {index} made too little progress: {line}"
        );
        assert!(
            Duration::from_micros(fields[1]) < LATENCY_BOUND,
            "{kind} worker {index} waited {} us for one operation",
            fields[1]
        );
        total_ops += fields[0];
    }
    // The next operation repairs whatever a killed lock holder left; then
    // the structure must walk clean.
    let probe = creator
        .allocate_offset(&MemContext::default(), 64, 8)
        .unwrap();
    creator.free_offset(&MemContext::default(), probe).unwrap();
    match (creator.check(), after) {
        (Ok(()), _) => {}
        (Err(Error::CorruptHeader { reason }), AfterKill::MayLeak) => {
            println!("{kind}: check reports what a killed process left: {reason}");
        }
        (Err(err), _) => panic!("{kind}: check failed after the kills: {err}"),
    }
    println!("{kind}: {killed} kills survived, {total_ops} operations by the survivors");
}

#[test]
fn the_free_list_survives_killed_processes() {
    survive_kills::<FreeListAllocator>("free-list", &Default::default(), AfterKill::Repaired);
}

#[test]
fn the_buddy_allocator_survives_killed_processes() {
    survive_kills::<BuddyAllocator>("buddy", &Default::default(), AfterKill::Repaired);
}

#[test]
fn the_pool_survives_killed_processes() {
    let params = shmkit::PoolParams::new(&[64, 512, 2048]).unwrap();
    survive_kills::<PoolAllocator>("pool", &params, AfterKill::MayLeak);
}

#[test]
fn the_size_class_allocator_survives_killed_processes() {
    survive_kills::<SizeClassAllocator>("size-class", &Default::default(), AfterKill::MayLeak);
}

#[test]
fn the_thread_local_allocator_survives_killed_processes() {
    survive_kills::<ThreadLocalAllocator>("thread-local", &Default::default(), AfterKill::MayLeak);
}
