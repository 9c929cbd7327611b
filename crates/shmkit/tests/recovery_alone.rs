//! A recovery pass runs alone: it refuses while any other process uses the
//! segment, even one whose `/proc` maps the recoverer may not read, and no
//! process attaches for writing while it runs.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{child_env, fresh_shm, shm_name, spawn_self};
use shmkit::containers::SpscRing;
use shmkit::{AllocatorKind, AnyAllocator, Error, Segment, SegmentOptions};

/// Two unprivileged users that may not read each other's `/proc/PID/maps`.
const HOLDER_UID: u32 = 65534;
const RECOVERER_UID: u32 = 65533;

fn is_root() -> bool {
    // SAFETY: `geteuid` has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Starts child test `test` on `segment`, as user `uid` when given, with
/// stdin and stdout piped.
fn start_child(test: &str, segment: &str, uid: Option<u32>) -> Child {
    let mut command = spawn_self(test, &[("SHMKIT_TEST_SEGMENT", segment.to_owned())]);
    command.stdin(Stdio::piped()).stdout(Stdio::piped());
    if let Some(uid) = uid {
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    command.spawn().expect("start a child process")
}

/// What follows `prefix` on the first line a child prints that holds it
/// (the test harness prints its own words too, on the same line).
fn line_from(child: &mut Child, prefix: &str) -> String {
    let stdout = child.stdout.as_mut().expect("piped stdout");
    let mut reader = BufReader::new(stdout);
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).expect("read a child's stdout") == 0 {
            panic!("the child ended without printing `{prefix}`");
        }
        if let Some((_, rest)) = line.trim_end().split_once(prefix) {
            return rest.to_owned();
        }
    }
}

/// Tells a child that waits on its stdin to go on, and checks it succeeded.
fn release(mut child: Child) {
    drop(child.stdin.take());
    let status = child.wait().expect("wait for a child");
    assert!(status.success(), "the child failed: {status}");
}

#[test]
#[ignore = "child process of the tests in this file"]
fn child_holds_the_segment_until_told() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let heap = AnyAllocator::attach(&SegmentOptions::shm(name)).expect("attach");
    println!("@attached {}", std::process::id());
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_line(&mut String::new());
    drop(heap);
}

#[test]
#[ignore = "child process of recovery_refuses_a_user_whose_maps_it_cannot_read"]
fn child_tries_to_recover() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let heap = AnyAllocator::attach(&SegmentOptions::shm(name)).expect("attach");
    let users = heap.segment().users().expect("list the users");
    // SAFETY: no other thread of this process uses the allocator meanwhile.
    match unsafe { heap.recover() } {
        Err(Error::InUse { reason }) => println!("@verdict refused {:?}: {reason}", users.pids),
        other => println!("@verdict ran {:?}: {other:?}", users.pids),
    }
}

#[test]
fn recovery_refuses_a_user_whose_maps_it_cannot_read() {
    if !is_root() {
        eprintln!("skipped: needs root to run two processes as two other users");
        return;
    }
    let (options, _cleanup) = fresh_shm("alone-unreadable");
    let heap = AnyAllocator::create(
        AllocatorKind::FreeList,
        &options.clone().size(1 << 20).mode(0o666),
    )
    .unwrap();
    let name = shm_name(&options);
    drop(heap);
    // One user holds the segment; another, who may not read the first's
    // maps, asks to recover it.
    let mut holder = start_child(
        "child_holds_the_segment_until_told",
        &name,
        Some(HOLDER_UID),
    );
    let holder_pid: u32 = line_from(&mut holder, "@attached ").parse().unwrap();
    let mut recoverer = start_child("child_tries_to_recover", &name, Some(RECOVERER_UID));
    let verdict = line_from(&mut recoverer, "@verdict ");
    release(holder);
    release(recoverer);
    assert!(
        verdict.starts_with(&format!("refused [{holder_pid}]")),
        "the recoverer did not see the holder (pid {holder_pid}): {verdict}"
    );
}

#[test]
#[ignore = "child process of an_attacher_waits_until_the_recovery_pass_ends"]
fn child_attaches_and_reads_the_marker() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let options = SegmentOptions::shm(name).ready_timeout(Duration::from_secs(30));
    let segment = Segment::attach(&options).expect("attach");
    let marker = marker(&segment).load(Ordering::Acquire);
    println!("@marker {marker}");
}

fn marker(segment: &Segment) -> &AtomicU64 {
    // SAFETY: every segment of these tests has an 8-byte custom header,
    // zeroed at creation, used only as this word.
    unsafe { segment.custom_header::<AtomicU64>().unwrap().as_ref() }
}

#[test]
fn an_attacher_waits_until_the_recovery_pass_ends() {
    let (options, _cleanup) = fresh_shm("alone-wait");
    let heap = AnyAllocator::create(
        AllocatorKind::FreeList,
        &options.clone().size(1 << 20).custom_header_len(8),
    )
    .unwrap();
    let segment = heap.segment();
    let lock = segment.lock_for_recovery(false).unwrap();
    let mut child = start_child(
        "child_attaches_and_reads_the_marker",
        &shm_name(&options),
        None,
    );
    // Once the child is listed as a user it has read (or is about to read)
    // the recovery word: the pass "runs" on, then ends with a mark.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !segment.users().unwrap().pids.contains(&child.id()) {
        assert!(Instant::now() < deadline, "the child never attached");
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(50));
    marker(segment).store(1, Ordering::Release);
    drop(lock);
    let seen = line_from(&mut child, "@marker ");
    release(child);
    assert_eq!(seen, "1", "the child attached while the recovery pass ran");
}

#[test]
#[ignore = "child process of the recovery lock tests"]
fn child_takes_the_recovery_lock_and_waits() {
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let heap = AnyAllocator::attach(&SegmentOptions::shm(name)).expect("attach");
    let lock = heap
        .segment()
        .lock_for_recovery(true)
        .expect("take the lock");
    println!("@locked");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_line(&mut String::new());
    drop(lock);
}

#[test]
fn a_live_recoverer_keeps_others_out_and_a_dead_ones_lock_is_taken_over() {
    let (options, _cleanup) = fresh_shm("alone-dead");
    let heap =
        AnyAllocator::create(AllocatorKind::FreeList, &options.clone().size(1 << 20)).unwrap();
    let mut child = start_child(
        "child_takes_the_recovery_lock_and_waits",
        &shm_name(&options),
        None,
    );
    line_from(&mut child, "@locked");
    // Forced or not, a second pass is refused while the first one's thread
    // lives; an attacher waits for it, up to its timeout.
    // SAFETY: no other thread of this process uses the allocator meanwhile.
    for result in [unsafe { heap.recover() }, unsafe { heap.recover_forced() }] {
        match result {
            Err(Error::InUse { reason }) => assert!(reason.contains("recovery pass"), "{reason}"),
            other => panic!("expected InUse, got {other:?}"),
        }
    }
    let impatient = options.clone().ready_timeout(Duration::from_millis(100));
    assert!(matches!(
        Segment::attach(&impatient),
        Err(Error::InUse { .. })
    ));
    // A recoverer killed mid-pass leaves the word behind: the next pass
    // takes it over, and attachers no longer wait.
    child.kill().unwrap();
    child.wait().unwrap();
    Segment::attach(&impatient).expect("attach once the recoverer is dead");
    // SAFETY: no other thread of this process uses the allocator meanwhile.
    unsafe { heap.recover() }.expect("recover once the recoverer is dead");
}

#[test]
fn forced_recovery_runs_beside_an_idle_process_and_plain_recovery_does_not() {
    let (options, _cleanup) = fresh_shm("alone-force");
    let heap =
        AnyAllocator::create(AllocatorKind::FreeList, &options.clone().size(1 << 20)).unwrap();
    let mut child = start_child(
        "child_holds_the_segment_until_told",
        &shm_name(&options),
        None,
    );
    let pid: u32 = line_from(&mut child, "@attached ").parse().unwrap();
    assert_eq!(heap.segment().other_processes().unwrap(), vec![pid]);
    // SAFETY: no other thread of this process uses the allocator meanwhile.
    match unsafe { heap.recover() } {
        Err(Error::InUse { reason }) => assert!(reason.contains(&pid.to_string()), "{reason}"),
        other => panic!("expected InUse, got {other:?}"),
    }
    // SAFETY: no other thread of this process uses the allocator meanwhile.
    unsafe { heap.recover_forced() }.expect("forced recovery");
    release(child);
    assert!(heap.segment().users().unwrap().is_empty());
    // SAFETY: no other thread of this process uses the allocator meanwhile.
    unsafe { heap.recover() }.expect("recovery once alone");
}

#[test]
#[ignore = "child process of a_process_whose_main_thread_exited_still_uses_the_segment"]
fn child_forks_a_user_whose_main_thread_exits() {
    // Forked from this process, where nothing else runs (the harness's
    // main thread only waits for this one), so the fork is safe.
    let name = child_env("SHMKIT_TEST_SEGMENT");
    let mut ready = [0 as libc::c_int; 2];
    // SAFETY: `pipe` fills the two descriptors.
    assert_eq!(unsafe { libc::pipe(ready.as_mut_ptr()) }, 0);
    // SAFETY: the grandchild attaches, starts a thread that keeps the
    // segment and sleeps, says so, and ends its main thread; it never
    // returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork");
    if pid == 0 {
        let attached = AnyAllocator::attach(&SegmentOptions::shm(name)).expect("attach");
        std::thread::spawn(move || {
            let ring = attached
                .segment()
                .root::<SpscRing<u64>>("ring")
                .expect("the ring");
            let alloc = attached.as_shm_allocator().expect("a shared allocator");
            // SAFETY: the test's ring, used only through ring handles.
            let _producer = unsafe { SpscRing::producer(alloc, ring) }.expect("produce");
            std::thread::sleep(Duration::from_secs(60));
            // SAFETY: ends the whole grandchild.
            unsafe { libc::_exit(0) };
        });
        // SAFETY: writes one byte from a local to the pipe; then ends only
        // this thread (the raw `exit` system call, not `exit_group`, and no
        // unwinding), leaving the process alive with a zombie main thread.
        unsafe {
            libc::write(ready[1], [1u8].as_ptr().cast(), 1);
            libc::syscall(libc::SYS_exit, 0);
        }
        unreachable!("the thread exited");
    }
    let mut byte = [0u8; 1];
    // SAFETY: reads one byte into a local buffer.
    assert_eq!(
        unsafe { libc::read(ready[0], byte.as_mut_ptr().cast(), 1) },
        1
    );
    println!("@user {pid}");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_line(&mut String::new());
    // SAFETY: plain signal and wait on our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
}

#[test]
fn a_process_whose_main_thread_exited_still_uses_the_segment() {
    let (options, _cleanup) = fresh_shm("alone-main-exited");
    let heap =
        AnyAllocator::create(AllocatorKind::FreeList, &options.clone().size(1 << 20)).unwrap();
    // The user will hold the producer role of a ring on its other thread.
    let alloc = heap.as_shm_allocator().unwrap();
    let ring = SpscRing::<u64>::create(alloc, 8).unwrap();
    heap.segment().set_root("ring", ring).unwrap();
    let mut child = start_child(
        "child_forks_a_user_whose_main_thread_exits",
        &shm_name(&options),
        None,
    );
    let pid: u32 = line_from(&mut child, "@user ").parse().unwrap();
    // Wait until its main thread is a zombie while the other one runs.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_default()
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    {
        assert!(
            Instant::now() < deadline,
            "the user's main thread did not exit"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let users = heap.segment().users().unwrap();
    // The role's owner is judged by its process, whose maps under its pid
    // are empty now: it must still count as alive.
    // SAFETY: the test's ring, used only through ring handles.
    let second_producer = unsafe { SpscRing::producer(alloc, ring) }.map(|_| ());
    // SAFETY: no other thread of this process uses the allocator meanwhile.
    let verdict = unsafe { heap.recover() };
    release(child);
    assert!(users.pids.contains(&pid), "{users:?} misses {pid}");
    assert!(
        second_producer.is_err(),
        "a live process's producer role was taken over"
    );
    assert!(
        matches!(verdict, Err(Error::InUse { .. })),
        "recovery ran beside a live user: {verdict:?}"
    );
}
