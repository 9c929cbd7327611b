//! Locks whose holder was killed, while a new process that got the dead
//! holder's pid maps the same segment (a worker pool that respawns after an
//! OOM kill does this): a waiter must still judge the holder dead and take
//! its locks over within its bounded wait, instead of waiting on the new
//! process for as long as it lives.
//!
//! The pid is reused on purpose through `/proc/sys/kernel/ns_last_pid`,
//! which takes root; elsewhere the test says why it skips.

mod common;

use std::io::Write;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{child_env, fresh_shm, shm_name, spawn_self};
use shmkit::sync::{ShmMutex, ShmRwLock};
use shmkit::{
    BumpAllocator, FreeListAllocator, LinearAlloc, Offset, SegmentAllocator, SegmentOptions,
    ShmAllocator,
};

/// Where the segment header records the allocator state's offset (the
/// free list's lock word is the state's first word).
const STATE_OFFSET_FIELD: u64 = 104;

/// How long a wait may last before the test calls it a failure: far below
/// the free list's 10 s patience, far above a takeover's milliseconds.
const TAKEOVER_WITHIN: Duration = Duration::from_secs(5);

fn root<'a, T>(bump: &'a BumpAllocator, name: &str) -> &'a T {
    let offset = bump.segment().root::<T>(name).expect("published");
    // SAFETY: checked by `resolve`; the parent placed a `T` there; it lives
    // as long as `bump`.
    unsafe { bump.segment().resolve(offset).unwrap().as_ref() }
}

fn publish<'a, T: shmkit::ShmSafe>(bump: &'a BumpAllocator, name: &str, value: T) -> &'a T {
    let offset = bump.make_handle(value).unwrap();
    bump.segment().set_root(name, offset).unwrap();
    root(bump, name)
}

fn attach_both() -> (BumpAllocator, FreeListAllocator) {
    (
        BumpAllocator::attach(&SegmentOptions::shm(child_env("SHMKIT_TEST_SEGMENT"))).unwrap(),
        FreeListAllocator::attach(&SegmentOptions::shm(child_env("SHMKIT_TEST_HEAP"))).unwrap(),
    )
}

#[test]
#[ignore = "child process of a_reused_pid_does_not_keep_a_dead_holders_locks"]
fn child_hold_locks_and_sleep() {
    let (bump, _heap) = attach_both();
    let mutex: &ShmMutex<u64> = root(&bump, "mutex");
    let rwlock: &ShmRwLock<u64> = root(&bump, "rwlock");
    let _held = mutex.lock().unwrap();
    let _reading = rwlock.read().unwrap();
    root::<AtomicU32>(&bump, "holding").store(1, Ordering::Release);
    std::thread::sleep(Duration::from_secs(120));
    panic!("the parent should have killed this process");
}

#[test]
#[ignore = "child process of a_reused_pid_does_not_keep_a_dead_holders_locks"]
fn child_map_and_sleep() {
    let (bump, _heap) = attach_both();
    root::<AtomicU32>(&bump, "mapping").store(std::process::id(), Ordering::Release);
    std::thread::sleep(Duration::from_secs(120));
}

/// Whether this process may choose the next pid.
fn can_choose_pids() -> Result<(), String> {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err("choosing a pid takes root".into());
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/kernel/ns_last_pid")
        .map(|_| ())
        .map_err(|error| format!("/proc/sys/kernel/ns_last_pid is not writable: {error}"))
}

/// Starts child test `test` as process `pid` (asking the kernel for
/// `pid - 1` as the last pid handed out; another process may race us, so
/// a few tries).
fn spawn_as(pid: u32, test: &str, env: &[(&str, String)]) -> Option<Child> {
    for _ in 0..20 {
        let mut last = std::fs::OpenOptions::new()
            .write(true)
            .open("/proc/sys/kernel/ns_last_pid")
            .ok()?;
        write!(last, "{}", pid - 1).ok()?;
        drop(last);
        let mut child = spawn_self(test, env)
            .stdout(Stdio::null())
            .spawn()
            .expect("start a child");
        if child.id() == pid {
            return Some(child);
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    None
}

/// The start time `/proc` gives process `pid` (field 22 of its stat).
fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_reused_pid_does_not_keep_a_dead_holders_locks() {
    if let Err(why) = can_choose_pids() {
        eprintln!("skipped: {why}");
        return;
    }
    let (options, _cleanup) = fresh_shm("pid-reuse");
    let (heap_options, _heap_cleanup) = fresh_shm("pid-reuse-heap");
    let bump = BumpAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let heap = FreeListAllocator::create(&heap_options.clone().size(1 << 20)).unwrap();
    let mutex = publish(&bump, "mutex", ShmMutex::new(0u64));
    let rwlock = publish(&bump, "rwlock", ShmRwLock::new(0u64));
    let holding = publish(&bump, "holding", AtomicU32::new(0));
    let mapping = publish(&bump, "mapping", AtomicU32::new(0));
    let env = [
        ("SHMKIT_TEST_SEGMENT", shm_name(&options)),
        ("SHMKIT_TEST_HEAP", shm_name(&heap_options)),
    ];

    let mut holder = spawn_self("child_hold_locks_and_sleep", &env)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = holder.id();
    wait_until("the holder to lock", || {
        holding.load(Ordering::Acquire) == 1
    });
    // The holder is also inside the free list's lock, as a process killed
    // in the middle of an allocation leaves it: its identity (its one
    // thread's id and start time, packed as the lock word holds it).
    let lock_word = {
        let state = heap
            .segment()
            .resolve(Offset::<AtomicU64>::from_raw(STATE_OFFSET_FIELD))
            .unwrap();
        // SAFETY: resolved; an atomic in the mapping, which `heap` keeps.
        let state = unsafe { state.as_ref() }.load(Ordering::Relaxed);
        // SAFETY: as above.
        unsafe {
            heap.segment()
                .resolve(Offset::<AtomicU64>::from_raw(state))
                .unwrap()
                .as_ref()
        }
    };
    lock_word.store(start_time(pid) << 22 | u64::from(pid), Ordering::Relaxed);

    // Start times count clock ticks (10 ms): a holder killed, and its pid
    // given out again, within the tick it started in could not be told
    // from its successor. A worker that did some work first can.
    std::thread::sleep(Duration::from_millis(50));
    holder.kill().unwrap();
    holder.wait().unwrap();
    let Some(mut replacement) = spawn_as(pid, "child_map_and_sleep", &env) else {
        panic!("could not start a process as pid {pid}: another process keeps taking it");
    };
    wait_until("the replacement to map the segments", || {
        mapping.load(Ordering::Acquire) == pid
    });

    // The holder's pid is alive again and maps both segments: only its
    // identity tells that it is not the holder.
    let started = Instant::now();
    let guard = mutex
        .lock_timeout(TAKEOVER_WITHIN)
        .expect("the mutex is taken over");
    assert!(guard.owner_died());
    drop(guard);
    let writer = rwlock
        .write_timeout(TAKEOVER_WITHIN)
        .expect("the dead reader's slot is cleared");
    drop(writer);
    let block = heap
        .allocate(64)
        .expect("the free list's lock is taken over");
    assert_eq!(heap.repairs(), 1, "the takeover repaired the free list");
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(block) }.unwrap();
    heap.check().unwrap();
    assert!(started.elapsed() < TAKEOVER_WITHIN * 2);

    replacement.kill().unwrap();
    replacement.wait().unwrap();
}
