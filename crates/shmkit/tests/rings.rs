//! The MPMC and SPSC rings between real processes (a POSIX shared-memory
//! segment, children spawned from this test binary) and between threads
//! under contention, plus their validation errors.
//!
//! Blocking calls in these tests have generous timeouts that only serve to
//! turn a hang into a failure; where a test must prove that a wake-up came
//! from the other side, the sleeper's recheck interval is set to an hour,
//! so a lost wake-up would end in the timeout, not in a self-rescue.

mod common;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::{child_env, fresh_shm, shm_name, spawn_workers, worker_stdout};
use shmkit::containers::{MpmcRing, SpscRing};
use shmkit::{
    Error, MallocAllocator, Offset, SegmentAllocator, SegmentOptions, ShmAllocator,
    SizeClassAllocator,
};

/// How long a blocking call may take before the test calls it a hang.
const PATIENCE: Duration = Duration::from_secs(30);
/// A recheck interval no test lives to see: only a wake-up ends a sleep.
const NEVER: Duration = Duration::from_secs(3600);

/// A message of the MPMC tests: producer id, sequence number.
type Msg = [u64; 2];
/// The end-of-stream marker's producer id.
const END: u64 = u64::MAX;

fn create_segment(options: &SegmentOptions) -> SizeClassAllocator {
    SizeClassAllocator::create(&options.clone().size(8 << 20)).expect("create the segment")
}

/// Attaches the parent's segment, after arming a watchdog that ends this
/// child process if it hangs, so that the parent never waits forever.
fn attach_child() -> SizeClassAllocator {
    std::thread::spawn(|| {
        std::thread::sleep(2 * PATIENCE);
        eprintln!("child process hung: aborting");
        std::process::abort();
    });
    SizeClassAllocator::attach(&SegmentOptions::shm(child_env("SHMKIT_TEST_SEGMENT")))
        .expect("attach the test segment")
}

fn worker() -> u64 {
    child_env("SHMKIT_TEST_WORKER")
        .parse()
        .expect("worker number")
}

/// A counter in the segment, published under `name`.
fn new_counter(alloc: &SizeClassAllocator, name: &str) {
    let counter = alloc
        .new_obj(AtomicU32::new(0))
        .expect("allocate a counter");
    alloc
        .segment()
        .set_root(name, counter.offset())
        .expect("publish the counter");
}

/// The counter published under `name`.
fn counter<'a>(alloc: &'a SizeClassAllocator, name: &str) -> &'a AtomicU32 {
    let offset = alloc
        .segment()
        .root::<AtomicU32>(name)
        .expect("a published counter");
    // SAFETY: resolved (in bounds, aligned); an atomic, valid for any bits.
    unsafe { alloc.segment().resolve(offset).expect("resolve").as_ref() }
}

/// Waits (bounded) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn mpmc_root<T: shmkit::ShmSafe + Copy>(
    alloc: &SizeClassAllocator,
    name: &str,
) -> Offset<MpmcRing<T>> {
    alloc.segment().root(name).expect("a published ring")
}

// ------------------------------------------------------------- MPMC, 3 + 3 processes

const PRODUCERS: usize = 3;
const CONSUMERS: usize = 3;
const PER_PRODUCER: u64 = 20_000;

/// Waits until every child process has arrived, so they really race.
fn start_together(alloc: &SizeClassAllocator, total: u32) {
    let arrived = counter(alloc, "arrived");
    arrived.fetch_add(1, Ordering::AcqRel);
    wait_until("the other children", || {
        arrived.load(Ordering::Acquire) >= total
    });
}

#[test]
#[ignore = "child process of mpmc_between_three_producer_and_three_consumer_processes"]
fn child_mpmc_producer() {
    let alloc = attach_child();
    let ring =
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::<Msg>::open(&alloc, mpmc_root(&alloc, "ring")) }.expect("open the ring");
    let me = worker();
    start_together(&alloc, (PRODUCERS + CONSUMERS) as u32);
    for seq in 0..PER_PRODUCER {
        // Mix the calls: non-blocking with a retry, blocking, timed.
        let message = [me, seq];
        match seq % 3 {
            0 => {
                let started = Instant::now();
                while ring.try_push(message).is_err() {
                    assert!(started.elapsed() < PATIENCE, "the ring stayed full");
                    std::thread::yield_now();
                }
            }
            1 => ring.push(message),
            _ => ring
                .push_timeout(message, PATIENCE)
                .expect("the consumers stopped taking"),
        }
    }
}

#[test]
#[ignore = "child process of mpmc_between_three_producer_and_three_consumer_processes"]
fn child_mpmc_consumer() {
    let alloc = attach_child();
    let ring =
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::<Msg>::open(&alloc, mpmc_root(&alloc, "ring")) }.expect("open the ring");
    start_together(&alloc, (PRODUCERS + CONSUMERS) as u32);
    let mut got = Vec::new();
    loop {
        // Alternate, a thousand messages each: busy polling and sleeping.
        let message = if (got.len() / 1000) % 2 == 0 {
            let started = Instant::now();
            loop {
                if let Some(message) = ring.try_pop() {
                    break message;
                }
                assert!(started.elapsed() < PATIENCE, "the producers stalled");
                std::hint::spin_loop();
            }
        } else {
            ring.pop_timeout(PATIENCE).expect("the producers stalled")
        };
        if message[0] == END {
            break;
        }
        got.push(message);
    }
    // Print only now: the parent reads our pipe after the producers end.
    let mut out = String::new();
    for [producer, seq] in got {
        writeln!(out, "got {producer} {seq}").unwrap();
    }
    print!("{out}");
}

/// Three producer processes and three consumer processes share one ring of
/// 64 cells (so it runs full and empty all the time): every message is
/// delivered exactly once, and each consumer sees each producer's messages
/// in the order they were sent.
#[test]
fn mpmc_between_three_producer_and_three_consumer_processes() {
    let (options, _cleanup) = fresh_shm("mpmc-3x3");
    let alloc = create_segment(&options);
    let ring_offset = MpmcRing::<Msg>::create(&alloc, 64).unwrap();
    alloc.segment().set_root("ring", ring_offset).unwrap();
    new_counter(&alloc, "arrived");
    let name = shm_name(&options);
    let consumers = spawn_workers("child_mpmc_consumer", &name, CONSUMERS);
    let producers = spawn_workers("child_mpmc_producer", &name, PRODUCERS);
    for (worker, child) in producers.into_iter().enumerate() {
        worker_stdout(worker, child);
    }
    // Everything is pushed: one end marker per consumer.
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::open(&alloc, ring_offset) }.unwrap();
    for _ in 0..CONSUMERS {
        ring.push_timeout([END, 0], PATIENCE)
            .expect("consumers gone");
    }
    let mut seen: HashMap<Msg, usize> = HashMap::new();
    for (worker, child) in consumers.into_iter().enumerate() {
        let stdout = worker_stdout(worker, child);
        let mut last: HashMap<u64, u64> = HashMap::new();
        for line in stdout.lines() {
            // The test harness may print its own words before our lines.
            let Some(at) = line.find("got ") else {
                continue;
            };
            let fields: Vec<u64> = line[at + 4..]
                .split(' ')
                .map(|f| f.parse().unwrap())
                .collect();
            let message = [fields[0], fields[1]];
            if let Some(&before) = last.get(&message[0]) {
                assert!(
                    message[1] > before,
                    "consumer {worker} got {message:?} after seq {before}"
                );
            }
            last.insert(message[0], message[1]);
            *seen.entry(message).or_default() += 1;
        }
    }
    let duplicates: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(duplicates.is_empty(), "delivered twice: {duplicates:?}");
    for producer in 0..PRODUCERS as u64 {
        for seq in 0..PER_PRODUCER {
            assert!(
                seen.contains_key(&[producer, seq]),
                "message {producer}/{seq} was lost"
            );
        }
    }
    assert_eq!(seen.len() as u64, PRODUCERS as u64 * PER_PRODUCER);
    assert!(ring.is_empty());
}

// ------------------------------------------------------------- SPSC, 2 processes

const SPSC_MESSAGES: u64 = 200_000;

/// Words in an SPSC test message: large, so that a cell read while it is
/// being written (a broken publication order) shows as a torn message.
const SPSC_WORDS: usize = 64;
type SpscMsg = [u64; SPSC_WORDS];

/// The SPSC message for sequence number `seq`: every word depends on it.
fn spsc_message(seq: u64) -> SpscMsg {
    std::array::from_fn(|i| seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64))
}

#[test]
#[ignore = "child process of spsc_between_two_processes_in_order"]
fn child_spsc_consumer() {
    let alloc = attach_child();
    let offset = alloc.segment().root("spsc").expect("a published ring");
    let mut rx =
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { SpscRing::<SpscMsg>::consumer(&alloc, offset) }.expect("claim the consumer");
    let mut expected = 0;
    loop {
        // Alternate, a thousand messages each: busy polling (which reads a
        // cell the moment the tail says so) and sleeping.
        let message = if (expected / 1000) % 2 == 0 {
            let started = Instant::now();
            loop {
                if let Some(message) = rx.try_pop() {
                    break message;
                }
                assert!(started.elapsed() < PATIENCE, "the producer stalled");
                std::hint::spin_loop();
            }
        } else {
            rx.pop_timeout(PATIENCE).expect("the producer stalled")
        };
        if message == [END; SPSC_WORDS] {
            break;
        }
        assert!(
            message == spsc_message(expected),
            "message {expected} out of order or torn"
        );
        expected += 1;
    }
    println!("spsc received {expected}");
}

/// One process pushes 200,000 messages of 512 bytes through a 16-cell SPSC
/// ring to another: every message arrives, whole, in order.
#[test]
fn spsc_between_two_processes_in_order() {
    let (options, _cleanup) = fresh_shm("spsc-2");
    let alloc = create_segment(&options);
    let offset = SpscRing::<SpscMsg>::create(&alloc, 16).unwrap();
    alloc.segment().set_root("spsc", offset).unwrap();
    let consumer = spawn_workers("child_spsc_consumer", &shm_name(&options), 1)
        .pop()
        .unwrap();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let mut tx = unsafe { SpscRing::producer(&alloc, offset) }.unwrap();
    for seq in 0..SPSC_MESSAGES {
        tx.push_timeout(spsc_message(seq), PATIENCE)
            .expect("the consumer stalled");
    }
    tx.push_timeout([END; SPSC_WORDS], PATIENCE)
        .expect("the consumer stalled");
    let stdout = worker_stdout(0, consumer);
    assert!(
        stdout.contains(&format!("spsc received {SPSC_MESSAGES}\n")),
        "{stdout}"
    );
}

// ------------------------------------------------------------- wake-ups between processes

#[test]
#[ignore = "child process of a_blocked_pop_is_woken_by_a_push_from_another_process"]
fn child_blocked_popper() {
    let alloc = attach_child();
    let mut ring =
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::<u64>::open(&alloc, mpmc_root(&alloc, "ring")) }.expect("open the ring");
    ring.set_recheck_interval(NEVER);
    counter(&alloc, "ready").store(1, Ordering::Release);
    let started = Instant::now();
    let value = ring
        .pop_timeout(PATIENCE)
        .expect("no wake-up came: the push did not wake the sleeper");
    // A sleeper that was never woken still makes one last attempt at its
    // deadline, which finds the value: only an earlier return is a wake-up.
    assert!(
        started.elapsed() < PATIENCE,
        "woken by the deadline, not by the push"
    );
    println!("popped {value}");
}

/// A process sleeps in `pop` on an empty ring (with self-rescue disabled);
/// a push from another process wakes it.
#[test]
fn a_blocked_pop_is_woken_by_a_push_from_another_process() {
    let (options, _cleanup) = fresh_shm("wake-pop");
    let alloc = create_segment(&options);
    let offset = MpmcRing::<u64>::create(&alloc, 4).unwrap();
    alloc.segment().set_root("ring", offset).unwrap();
    new_counter(&alloc, "ready");
    let child = spawn_workers("child_blocked_popper", &shm_name(&options), 1)
        .pop()
        .unwrap();
    let ready = counter(&alloc, "ready");
    wait_until("the child to start popping", || {
        ready.load(Ordering::Acquire) == 1
    });
    // Give it time to fall asleep (if it has not, the test still holds).
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    unsafe { MpmcRing::open(&alloc, offset) }.unwrap().push(42);
    let stdout = worker_stdout(0, child);
    assert!(stdout.contains("popped 42\n"), "{stdout}");
}

#[test]
#[ignore = "child process of a_full_ring_blocks_the_producer_until_the_consumer_drains"]
fn child_blocked_pusher() {
    let alloc = attach_child();
    let mut ring =
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::<u64>::open(&alloc, mpmc_root(&alloc, "ring")) }.expect("open the ring");
    ring.set_recheck_interval(NEVER);
    let pushed = counter(&alloc, "pushed");
    for value in 0..8 {
        let started = Instant::now();
        ring.push_timeout(value, PATIENCE)
            .expect("no wake-up came: the pops did not wake the sleeper");
        // As in `child_blocked_popper`: only an early return is a wake-up.
        assert!(
            started.elapsed() < PATIENCE,
            "woken by the deadline, not by a pop"
        );
        pushed.fetch_add(1, Ordering::AcqRel);
    }
}

/// A process pushes eight values into a four-cell ring nobody pops yet: it
/// stops at four, asleep, and goes on as another process drains the ring.
#[test]
fn a_full_ring_blocks_the_producer_until_the_consumer_drains() {
    let (options, _cleanup) = fresh_shm("wake-push");
    let alloc = create_segment(&options);
    let offset = MpmcRing::<u64>::create(&alloc, 4).unwrap();
    alloc.segment().set_root("ring", offset).unwrap();
    new_counter(&alloc, "pushed");
    let child = spawn_workers("child_blocked_pusher", &shm_name(&options), 1)
        .pop()
        .unwrap();
    let pushed = counter(&alloc, "pushed");
    wait_until("the ring to fill", || pushed.load(Ordering::Acquire) == 4);
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::open(&alloc, offset) }.unwrap();
    assert_eq!(pushed.load(Ordering::Acquire), 4, "pushed into a full ring");
    assert_eq!(ring.len(), 4);
    for expected in 0..8 {
        assert_eq!(ring.pop_timeout(PATIENCE), Some(expected));
    }
    worker_stdout(0, child);
    assert_eq!(pushed.load(Ordering::Acquire), 8);
    assert!(ring.is_empty());
}

// ------------------------------------------------------------- SPSC roles between processes

#[test]
#[ignore = "child process of spsc_roles_are_exclusive_and_a_dead_holders_role_is_taken_over"]
fn child_spsc_producer_that_dies() {
    let alloc = attach_child();
    let offset = alloc.segment().root("spsc").expect("a published ring");
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let mut tx = unsafe { SpscRing::<u64>::producer(&alloc, offset) }.expect("claim the producer");
    for value in 1..=3 {
        tx.push(value);
    }
    let phase = counter(&alloc, "phase");
    phase.store(1, Ordering::Release);
    wait_until("the parent's go", || phase.load(Ordering::Acquire) == 2);
    // Die holding the role: no destructor runs.
    std::mem::forget(tx);
    std::process::exit(0);
}

/// While a live process holds the producer role, claiming it again fails
/// with `InUse`; once that process has died without giving the role back,
/// the next claimer takes it over and continues after the dead producer's
/// values.
#[test]
fn spsc_roles_are_exclusive_and_a_dead_holders_role_is_taken_over() {
    let (options, _cleanup) = fresh_shm("spsc-roles");
    let alloc = create_segment(&options);
    let offset = SpscRing::<u64>::create(&alloc, 8).unwrap();
    alloc.segment().set_root("spsc", offset).unwrap();
    new_counter(&alloc, "phase");
    let child = spawn_workers("child_spsc_producer_that_dies", &shm_name(&options), 1)
        .pop()
        .unwrap();
    let phase = counter(&alloc, "phase");
    wait_until("the child to claim", || phase.load(Ordering::Acquire) == 1);
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let held = unsafe { SpscRing::producer(&alloc, offset) };
    assert!(
        matches!(held, Err(Error::InUse { .. })),
        "a second live producer: {held:?}"
    );
    phase.store(2, Ordering::Release);
    worker_stdout(0, child); // reaped: its pid is gone
                             // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let mut tx = unsafe { SpscRing::producer(&alloc, offset) }.expect("take over the dead role");
    tx.push(4);
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let mut rx = unsafe { SpscRing::consumer(&alloc, offset) }.unwrap();
    let got: Vec<u64> = std::iter::from_fn(|| rx.try_pop()).collect();
    assert_eq!(got, vec![1, 2, 3, 4]);
}

#[test]
#[ignore = "child process of a_process_that_execs_itself_gets_its_spsc_role_back"]
fn child_spsc_producer_that_execs_itself() {
    use std::os::unix::process::CommandExt;
    let alloc = attach_child();
    let offset = alloc.segment().root("spsc").expect("a published ring");
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let mut tx = unsafe { SpscRing::<u64>::producer(&alloc, offset) }.expect("claim the producer");
    tx.push(1);
    // The new image of this process (same pid) claims the role again.
    let error = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_spsc_producer_after_exec",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .exec();
    panic!("exec failed: {error}");
}

#[test]
#[ignore = "child process of a_process_that_execs_itself_gets_its_spsc_role_back"]
fn child_spsc_producer_after_exec() {
    let alloc = attach_child();
    let offset = alloc.segment().root("spsc").expect("a published ring");
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let mut tx = unsafe { SpscRing::<u64>::producer(&alloc, offset) }
        .expect("the role an earlier image of this process held");
    tx.push(2);
}

/// A process that `exec`s itself while it holds the producer role (no
/// destructor runs) gets the role back in its new image: same pid, but an
/// earlier image, which is gone.
#[test]
fn a_process_that_execs_itself_gets_its_spsc_role_back() {
    let (options, _cleanup) = fresh_shm("spsc-exec");
    let alloc = create_segment(&options);
    let offset = SpscRing::<u64>::create(&alloc, 8).unwrap();
    alloc.segment().set_root("spsc", offset).unwrap();
    let child = spawn_workers(
        "child_spsc_producer_that_execs_itself",
        &shm_name(&options),
        1,
    )
    .pop()
    .unwrap();
    worker_stdout(0, child);
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let mut rx = unsafe { SpscRing::consumer(&alloc, offset) }.unwrap();
    let got: Vec<u64> = std::iter::from_fn(|| rx.try_pop()).collect();
    assert_eq!(got, vec![1, 2]);
}

#[test]
#[ignore = "child process of a_killed_spsc_consumer_is_replaced_without_loss"]
fn child_spsc_consumer_killed() {
    let alloc = attach_child();
    let offset = alloc.segment().root("spsc").expect("a published ring");
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let mut rx = unsafe { SpscRing::<u64>::consumer(&alloc, offset) }.expect("claim the consumer");
    for expected in 0..100 {
        assert_eq!(rx.pop_timeout(PATIENCE), Some(expected));
    }
    // SAFETY: no preconditions; the process ends here, holding the role.
    unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
}

/// A consumer process is SIGKILLed after 100 values while the producer goes
/// on; a new consumer takes the dead one's role and gets the rest, starting
/// exactly where the dead one stopped.
#[test]
fn a_killed_spsc_consumer_is_replaced_without_loss() {
    let (options, _cleanup) = fresh_shm("spsc-kill");
    let alloc = create_segment(&options);
    let offset = SpscRing::<u64>::create(&alloc, 8).unwrap();
    alloc.segment().set_root("spsc", offset).unwrap();
    let child = spawn_workers("child_spsc_consumer_killed", &shm_name(&options), 1)
        .pop()
        .unwrap();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let mut tx = unsafe { SpscRing::producer(&alloc, offset) }.unwrap();
    for value in 0..100 {
        tx.push_timeout(value, PATIENCE)
            .expect("the consumer stalled");
    }
    // The ring has 8 cells: these fill it while the consumer dies.
    for value in 100..108 {
        tx.push_timeout(value, PATIENCE).expect("room in the ring");
    }
    let output = child.wait_with_output().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(output.status.signal(), Some(libc::SIGKILL), "{output:?}");
    let mut rx =
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { SpscRing::consumer(&alloc, offset) }.expect("take over the dead consumer");
    for value in 108..200 {
        assert_eq!(rx.pop_timeout(PATIENCE), Some(value - 8));
        tx.push(value);
    }
    let rest: Vec<u64> = std::iter::from_fn(|| rx.try_pop()).collect();
    assert_eq!(rest, (192..200).collect::<Vec<_>>());
}

// ------------------------------------------------------------- threads under contention

/// A private segment for the in-process tests.
fn private_alloc() -> SizeClassAllocator {
    SizeClassAllocator::create(&SegmentOptions::private().size(4 << 20)).unwrap()
}

/// A worker thread whose end the test waits for while the test makes
/// progress: a worker that hangs (a lost wake-up, with self-rescue
/// disabled) fails the test once a whole [`PATIENCE`] passes with no
/// message moved, instead of hanging it; a slow machine (valgrind runs the
/// threads one at a time) only takes longer. A worker's panic is raised
/// again.
struct Watched<R> {
    result: mpsc::Receiver<std::thread::Result<R>>,
    progress: Arc<AtomicU64>,
}

/// Messages moved so far by one test's workers.
fn progress_counter() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(0))
}

fn spawn_watched<R: Send + 'static>(
    progress: &Arc<AtomicU64>,
    work: impl FnOnce() -> R + Send + 'static,
) -> Watched<R> {
    let (done, result) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)));
    });
    Watched {
        result,
        progress: Arc::clone(progress),
    }
}

impl<R> Watched<R> {
    fn finish(self, what: &str) -> R {
        let mut seen = self.progress.load(Ordering::Relaxed);
        loop {
            match self.result.recv_timeout(PATIENCE) {
                Ok(Ok(result)) => return result,
                Ok(Err(panic)) => std::panic::resume_unwind(panic),
                Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} vanished"),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = self.progress.load(Ordering::Relaxed);
                    assert_ne!(
                        now, seen,
                        "{what} hung: nothing moved in {PATIENCE:?}, a lost wake-up?"
                    );
                    seen = now;
                }
            }
        }
    }
}

/// Four producer threads and four consumer threads, each with its own
/// handle, on a four-cell ring, with self-rescue disabled (a lost wake-up
/// ends in a failure): every message exactly once, each producer's in
/// order per consumer.
#[test]
fn mpmc_threads_under_contention() {
    const THREADS: u64 = 4;
    const EACH: u64 = 25_000;
    let alloc = Arc::new(private_alloc());
    let offset = MpmcRing::<Msg>::create(&*alloc, 4).unwrap();
    let progress = progress_counter();
    let consumers: Vec<_> = (0..THREADS)
        .map(|_| {
            let alloc = alloc.clone();
            let moved = Arc::clone(&progress);
            spawn_watched(&progress, move || {
                // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
                let mut ring = unsafe { MpmcRing::open(&*alloc, offset) }.unwrap();
                ring.set_recheck_interval(NEVER);
                let mut got = Vec::new();
                loop {
                    let message = match got.len() % 2 {
                        0 => ring.pop_timeout(PATIENCE).expect("a lost wake-up"),
                        _ => ring.pop(),
                    };
                    if message[0] == END {
                        return got;
                    }
                    moved.fetch_add(1, Ordering::Relaxed);
                    got.push(message);
                }
            })
        })
        .collect();
    let producers: Vec<_> = (0..THREADS)
        .map(|producer| {
            let alloc = alloc.clone();
            let moved = Arc::clone(&progress);
            spawn_watched(&progress, move || {
                // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
                let mut ring = unsafe { MpmcRing::open(&*alloc, offset) }.unwrap();
                ring.set_recheck_interval(NEVER);
                for seq in 0..EACH {
                    moved.fetch_add(1, Ordering::Relaxed);
                    if seq % 2 == 0 {
                        ring.push([producer, seq]);
                    } else {
                        ring.push_timeout([producer, seq], PATIENCE)
                            .expect("a lost wake-up");
                    }
                }
            })
        })
        .collect();
    for producer in producers {
        producer.finish("a producer");
    }
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::open(&*alloc, offset) }.unwrap();
    for _ in 0..THREADS {
        ring.push_timeout([END, 0], PATIENCE)
            .expect("consumers gone");
    }
    let received: Vec<Vec<Msg>> = consumers
        .into_iter()
        .map(|consumer| consumer.finish("a consumer"))
        .collect();
    let mut count = vec![0u64; THREADS as usize];
    let mut seen = vec![vec![false; EACH as usize]; THREADS as usize];
    for got in &received {
        let mut last = vec![None; THREADS as usize];
        for &[producer, seq] in got {
            let slot = &mut seen[producer as usize][seq as usize];
            assert!(!*slot, "{producer}/{seq} delivered twice");
            *slot = true;
            count[producer as usize] += 1;
            assert!(last[producer as usize] < Some(seq), "out of order");
            last[producer as usize] = Some(seq);
        }
    }
    assert_eq!(count, vec![EACH; THREADS as usize]);
    assert!(ring.is_empty());
}

/// An SPSC ring of eight cells between two threads, half the calls
/// blocking, self-rescue disabled: 300,000 values in order.
#[test]
fn spsc_threads_in_order() {
    const COUNT: u64 = 300_000;
    let alloc = Arc::new(private_alloc());
    let offset = SpscRing::<u64>::create(&*alloc, 8).unwrap();
    let progress = progress_counter();
    let producer = {
        let alloc = alloc.clone();
        let moved = Arc::clone(&progress);
        spawn_watched(&progress, move || {
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            let mut tx = unsafe { SpscRing::producer(&*alloc, offset) }.unwrap();
            tx.set_recheck_interval(NEVER);
            for value in 0..COUNT {
                moved.fetch_add(1, Ordering::Relaxed);
                if value % 2 == 0 {
                    tx.push(value);
                } else if tx.try_push(value).is_err() {
                    tx.push_timeout(value, PATIENCE).expect("a lost wake-up");
                }
            }
        })
    };
    let consumer = {
        let alloc = alloc.clone();
        let moved = Arc::clone(&progress);
        spawn_watched(&progress, move || {
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            let mut rx = unsafe { SpscRing::consumer(&*alloc, offset) }.unwrap();
            rx.set_recheck_interval(NEVER);
            for expected in 0..COUNT {
                moved.fetch_add(1, Ordering::Relaxed);
                let value = if expected % 2 == 0 {
                    rx.pop()
                } else {
                    rx.pop_timeout(PATIENCE).expect("a lost wake-up")
                };
                assert_eq!(value, expected);
            }
            rx.try_pop()
        })
    };
    producer.finish("the producer");
    assert_eq!(consumer.finish("the consumer"), None);
}

/// Handles may be shared by threads; endpoints moved to them.
#[test]
fn handles_are_send_and_sync() {
    fn shared<T: Send + Sync>() {}
    fn sent<T: Send>() {}
    shared::<shmkit::containers::MpmcHandle<'static, u64>>();
    sent::<shmkit::containers::SpscProducer<'static, u64>>();
    sent::<shmkit::containers::SpscConsumer<'static, u64>>();
}

// ------------------------------------------------------------- timeouts and errors

#[test]
fn timeouts_give_the_value_back() {
    let alloc = private_alloc();
    let wait = Duration::from_millis(30);

    let ring =
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::<u64>::open(&alloc, MpmcRing::create(&alloc, 2).unwrap()) }.unwrap();
    let started = Instant::now();
    assert_eq!(ring.pop_timeout(wait), None);
    assert!(started.elapsed() >= wait, "returned before the timeout");
    ring.push(1);
    ring.push(2);
    let started = Instant::now();
    assert_eq!(ring.push_timeout(3, wait), Err(3));
    assert!(started.elapsed() >= wait, "returned before the timeout");
    assert_eq!(ring.push_timeout(4, Duration::ZERO), Err(4));
    assert_eq!(ring.len(), 2);
    assert_eq!(ring.pop_timeout(Duration::ZERO), Some(1));

    let offset = SpscRing::<u64>::create(&alloc, 2).unwrap();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let mut tx = unsafe { SpscRing::producer(&alloc, offset) }.unwrap();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let mut rx = unsafe { SpscRing::consumer(&alloc, offset) }.unwrap();
    let started = Instant::now();
    assert_eq!(rx.pop_timeout(wait), None);
    assert!(started.elapsed() >= wait, "returned before the timeout");
    tx.push(1);
    tx.push(2);
    let started = Instant::now();
    assert_eq!(tx.push_timeout(3, wait), Err(3));
    assert!(started.elapsed() >= wait, "returned before the timeout");
    assert_eq!(rx.pop(), 1);
    assert_eq!(tx.push_timeout(3, wait), Ok(()));
    // A huge timeout is fine (a deadline too far to represent: no deadline).
    assert_eq!(rx.pop_timeout(Duration::MAX), Some(2));
}

/// Writes `value` over the `index`th 64-bit word of a ring's header (the
/// fixed fields: magic, capacity, element size, element alignment, stride,
/// where the cells start).
fn poke(alloc: &SizeClassAllocator, ring: u64, index: u64, value: u64) {
    let word = alloc
        .segment()
        .resolve(Offset::<AtomicU64>::from_raw(ring + 8 * index))
        .unwrap();
    // SAFETY: in bounds and aligned; an atomic.
    unsafe { word.as_ref() }.store(value, Ordering::Release);
}

#[test]
fn validation_errors_are_typed() {
    let alloc = private_alloc();
    let invalid_size = |r: Result<(), Error>| matches!(r, Err(Error::InvalidSize { .. }));
    for capacity in [0, 1, 3, 12, 1000] {
        assert!(invalid_size(
            MpmcRing::<u64>::create(&alloc, capacity).map(drop)
        ));
        assert!(invalid_size(
            SpscRing::<u64>::create(&alloc, capacity).map(drop)
        ));
    }

    // Another element type: by size, by alignment.
    let mpmc = MpmcRing::<u64>::create(&alloc, 8).unwrap();
    let wrong_type = |r: Result<(), Error>| matches!(r, Err(Error::WrongType { .. }));
    assert!(wrong_type(
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::<[u8; 16]>::open(&alloc, mpmc.cast()) }.map(drop)
    ));
    assert!(wrong_type(
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::<u32>::open(&alloc, mpmc.cast()) }.map(drop)
    ));
    assert!(wrong_type(
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::<[u32; 2]>::open(&alloc, mpmc.cast()) }.map(drop)
    ));
    let spsc = SpscRing::<u64>::create(&alloc, 8).unwrap();
    assert!(wrong_type(
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { SpscRing::<[u16; 4]>::consumer(&alloc, spsc.cast()) }.map(drop)
    ));

    // Not a ring: the other kind, a zeroed block, a block's middle, null.
    let corrupt = |r: Result<(), Error>| matches!(r, Err(Error::CorruptData { .. }));
    assert!(corrupt(
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::<u64>::open(&alloc, spsc.cast()) }.map(drop)
    ));
    assert!(corrupt(
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { SpscRing::<u64>::producer(&alloc, mpmc.cast()) }.map(drop)
    ));
    let block = alloc.allocate_aligned(4096, 128).unwrap();
    // SAFETY: a fresh block of 4096 bytes.
    unsafe { std::ptr::write_bytes(block.as_ptr(), 0, 4096) };
    assert!(corrupt(
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::<u64>::open(&alloc, block.offset().cast()) }.map(drop)
    ));
    assert!(
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::<u64>::open(&alloc, Offset::from_raw(block.offset().raw() + 128)) }
            .is_err()
    );
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    assert!(unsafe { MpmcRing::<u64>::open(&alloc, Offset::null()) }.is_err());
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    assert!(unsafe { MpmcRing::<u64>::open(&alloc, Offset::from_raw(u64::MAX - 7)) }.is_err());

    // A capacity changed under the ring: not a power of two, or more cells
    // than the block holds.
    let ring = MpmcRing::<u64>::create(&alloc, 8).unwrap();
    poke(&alloc, ring.raw(), 1, 6);
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    assert!(corrupt(unsafe { MpmcRing::open(&alloc, ring) }.map(drop)));
    poke(&alloc, ring.raw(), 1, 1 << 20);
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    assert!(corrupt(unsafe { MpmcRing::open(&alloc, ring) }.map(drop)));
    poke(&alloc, ring.raw(), 1, 8);
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    assert!(unsafe { MpmcRing::open(&alloc, ring) }.is_ok());
    // Cells moved outside the block.
    poke(&alloc, ring.raw(), 5, 1 << 40);
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    assert!(corrupt(unsafe { MpmcRing::open(&alloc, ring) }.map(drop)));

    // A destroyed ring cannot be opened again.
    // SAFETY: no handle of `mpmc` is open.
    unsafe { MpmcRing::destroy(&alloc, mpmc) }.unwrap();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    assert!(unsafe { MpmcRing::open(&alloc, mpmc) }.is_err());
    // SAFETY: no endpoint of `spsc` is open.
    unsafe { SpscRing::destroy(&alloc, spsc) }.unwrap();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    assert!(unsafe { SpscRing::producer(&alloc, spsc) }.is_err());
}

/// A handle keeps the bounds it validated: a capacity rewritten after
/// `open` changes nothing for it.
#[test]
fn bounds_are_kept_from_the_open() {
    let alloc = private_alloc();
    let offset = MpmcRing::<u64>::create(&alloc, 4).unwrap();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::open(&alloc, offset) }.unwrap();
    poke(&alloc, offset.raw(), 1, 1 << 30);
    assert_eq!(ring.capacity(), 4);
    for value in 0..4 {
        ring.try_push(value).unwrap();
    }
    assert_eq!(ring.try_push(9), Err(9));
    assert_eq!(ring.pop(), 0);
}

/// Any allocator, including one behind `dyn`, holds a ring.
#[test]
fn rings_from_any_allocator() {
    let malloc = MallocAllocator::new();
    let alloc: &dyn ShmAllocator = &malloc;
    let offset = MpmcRing::<[u8; 3]>::create(alloc, 2).unwrap();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::open(alloc, offset) }.unwrap();
    ring.push(*b"abc");
    assert_eq!(&ring.pop(), b"abc");
    assert!(alloc.usable_size(offset.raw()).unwrap() >= MpmcRing::<[u8; 3]>::bytes_for(2).unwrap());
    // SAFETY: `ring` is not used afterwards.
    unsafe { MpmcRing::destroy(alloc, offset) }.unwrap();
    assert_eq!(malloc.stats().live_allocations, 0);
}

// ------------------------------------------------------------- MPMC under SIGKILL

/// Words of a kill-loop message: 256 KiB, so that a kill often lands while
/// a push or a pop copies it, between its claim and its publication (the
/// copy is most of what the workers do).
const BIG_WORDS: usize = 32 << 10;
type BigMsg = [u64; BIG_WORDS];
/// Marks, in the received table, a number a killed producer was pushing.
const UNCERTAIN: u32 = 1 << 31;
/// Producer journals (victims' replacements included) and messages each.
const KILL_WORKERS: usize = 64;
const KILL_SEQS: u64 = 1 << 16;

shmkit::shm_struct! {
    /// What the kill loop's processes share besides the ring.
    pub struct KillLedger {
        /// 1: producers stop; 2: consumers stop too.
        pub stop: AtomicU64,
        /// Per producer: the last sequence number whose push returned.
        pub confirmed: [AtomicU64; KILL_WORKERS],
        /// Per worker: while inside a push, its number; inside a pop, 1.
        pub inside: [AtomicU32; KILL_WORKERS],
        /// Per producer and sequence number: how many times it was popped.
        pub received: [AtomicU32; KILL_WORKERS * KILL_SEQS as usize],
    }
}

fn kill_ledger(alloc: &SizeClassAllocator) -> &KillLedger {
    let offset = alloc.segment().root::<KillLedger>("ledger").unwrap();
    // SAFETY: resolved and aligned; atomics only, valid for any bits.
    unsafe { alloc.segment().resolve(offset).unwrap().as_ref() }
}

/// Stamps `message` as `worker`'s number `seq`: first, second and last
/// words (a torn copy shows in the last).
fn stamp(message: &mut BigMsg, worker: u64, seq: u64) {
    message[0] = worker;
    message[1] = seq;
    message[BIG_WORDS - 1] = worker ^ seq.rotate_left(17);
}

#[test]
#[ignore = "child process of mpmc_producers_and_consumers_killed_mid_operation_lose_only_their_own"]
fn child_mpmc_kill_producer() {
    let alloc = attach_child();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::<BigMsg>::open(&alloc, mpmc_root(&alloc, "ring")) }.unwrap();
    let ledger = kill_ledger(&alloc);
    let me = worker();
    // A predecessor killed inside a push may or may not have sent that
    // number: it is marked uncertain and not sent again.
    let mut seq = ledger.confirmed[me as usize].load(Ordering::Acquire);
    let in_flight = ledger.inside[me as usize].load(Ordering::Acquire);
    if in_flight != 0 {
        ledger.received[me as usize * KILL_SEQS as usize + in_flight as usize]
            .fetch_or(UNCERTAIN, Ordering::AcqRel);
        seq = u64::from(in_flight);
    }
    let mut message = Box::new([0u64; BIG_WORDS]);
    while ledger.stop.load(Ordering::Acquire) == 0 && seq + 1 < KILL_SEQS {
        seq += 1;
        ledger.inside[me as usize].store(seq as u32, Ordering::Release);
        stamp(&mut message, me, seq);
        while ring
            .push_timeout(*message, Duration::from_millis(50))
            .is_err()
        {
            if ledger.stop.load(Ordering::Acquire) != 0 {
                return;
            }
        }
        ledger.inside[me as usize].store(0, Ordering::Release);
        ledger.confirmed[me as usize].store(seq, Ordering::Release);
    }
}

#[test]
#[ignore = "child process of mpmc_producers_and_consumers_killed_mid_operation_lose_only_their_own"]
fn child_mpmc_kill_consumer() {
    let alloc = attach_child();
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let ring = unsafe { MpmcRing::<BigMsg>::open(&alloc, mpmc_root(&alloc, "ring")) }.unwrap();
    let ledger = kill_ledger(&alloc);
    let me = worker() as usize;
    while ledger.stop.load(Ordering::Acquire) < 2 {
        ledger.inside[me].store(1, Ordering::Release);
        let popped = ring.pop_timeout(Duration::from_millis(50));
        ledger.inside[me].store(0, Ordering::Release);
        if let Some(message) = popped {
            let (worker, seq) = (message[0], message[1]);
            assert!(
                worker < KILL_WORKERS as u64
                    && seq < KILL_SEQS
                    && message[BIG_WORDS - 1] == worker ^ seq.rotate_left(17),
                "message {worker}/{seq} arrived torn"
            );
            ledger.received[worker as usize * KILL_SEQS as usize + seq as usize]
                .fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Two producer and two consumer processes move 256 KiB messages through a
/// ring of 8 while the test SIGKILLs one of them every 40-120 ms (most
/// kills land inside a push or a pop, which copy the message between the
/// claim and the publication) and starts a replacement. The ring never
/// stalls: after the last kill every message whose push returned is
/// delivered within seconds, exactly once, except the one each killed
/// consumer had taken; nothing is delivered twice or torn.
#[test]
fn mpmc_producers_and_consumers_killed_mid_operation_lose_only_their_own() {
    let (options, _cleanup) = fresh_shm("mpmc-kill");
    let alloc = SizeClassAllocator::create(&options.clone().size(64 << 20)).unwrap();
    let ring = MpmcRing::<BigMsg>::create(&alloc, 8).unwrap();
    alloc.segment().set_root("ring", ring).unwrap();
    // A megabyte: zeroed in place (zero atomics are a valid ledger).
    let ledger_at = alloc
        .allocate_offset(
            &shmkit::MemContext::default(),
            std::mem::size_of::<KillLedger>(),
            std::mem::align_of::<KillLedger>(),
        )
        .unwrap();
    let ledger_block = alloc.full_ptr(ledger_at).unwrap();
    // SAFETY: a fresh block of the ledger's size, ours alone.
    unsafe { std::ptr::write_bytes(ledger_block.as_ptr(), 0, std::mem::size_of::<KillLedger>()) };
    alloc
        .segment()
        .set_root("ledger", Offset::<KillLedger>::from_raw(ledger_at))
        .unwrap();
    let ledger = kill_ledger(&alloc);
    let name = shm_name(&options);
    let spawn = |test: &str, worker: usize| {
        std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--ignored", "--test-threads=1"])
            .env("SHMKIT_TEST_SEGMENT", &name)
            .env("SHMKIT_TEST_WORKER", worker.to_string())
            // Messages pass by value: room for a few on the stack.
            .env("RUST_MIN_STACK", (64usize << 20).to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // Workers 0..: producers take even numbers, consumers odd ones.
    let mut next = 0usize;
    let mut workers: Vec<(bool, usize, std::process::Child)> = Vec::new();
    for producer in [true, true, false, false] {
        let test = if producer {
            "child_mpmc_kill_producer"
        } else {
            "child_mpmc_kill_consumer"
        };
        workers.push((producer, next, spawn(test, next)));
        next += 1;
    }
    let (mut kills, mut inside, mut consumer_kills) = (0u32, 0u32, 0u32);
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let started = Instant::now();
    // The last journal is this process's, for the final messages.
    let last_word = KILL_WORKERS - 1;
    while started.elapsed() < Duration::from_secs(3) && next < last_word {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(40 + rng % 80));
        let pick = (rng >> 32) as usize % workers.len();
        let (producer, worker, mut child) = workers.swap_remove(pick);
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            use std::io::Read;
            let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
            // Only a producer that ran out of sequence numbers ends alone.
            let done = producer
                && status.success()
                && ledger.confirmed[worker].load(Ordering::Acquire) + 2 >= KILL_SEQS;
            assert!(
                done,
                "worker {worker} exited on its own ({status}): {stderr}"
            );
            continue;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        inside += u32::from(ledger.inside[worker].load(Ordering::Acquire) != 0);
        consumer_kills += u32::from(!producer);
        // A producer's replacement continues its sequence numbers.
        let replacement = if producer { worker } else { next };
        if !producer {
            next += 1;
        }
        let test = if producer {
            "child_mpmc_kill_producer"
        } else {
            "child_mpmc_kill_consumer"
        };
        workers.push((producer, replacement, spawn(test, replacement)));
    }
    // Producers stop. This process pushes a last batch behind whatever the
    // kills left in the ring: it must get through, in bounded time.
    ledger.stop.store(1, Ordering::Release);
    // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
    let handle = unsafe { MpmcRing::<BigMsg>::open(&alloc, ring) }.unwrap();
    // Messages pass by value: a thread with room for a few on its stack.
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(64 << 20)
            .spawn_scoped(scope, || {
                let mut message = Box::new([0u64; BIG_WORDS]);
                for seq in 1..=20 {
                    stamp(&mut message, last_word as u64, seq);
                    assert!(
                        handle.push_timeout(*message, PATIENCE).is_ok(),
                        "the ring stayed full: stalled by a dead consumer's claim"
                    );
                    ledger.confirmed[last_word].store(seq, Ordering::Release);
                }
            })
            .unwrap()
            .join()
            .unwrap();
    });
    let arrived = |seq: u64| {
        ledger.received[last_word * KILL_SEQS as usize + seq as usize].load(Ordering::Acquire) == 1
    };
    wait_until(
        "the last batch to arrive (a dead producer's claim stalls the ring)",
        || (1..=20).all(arrived),
    );
    // Consumers drain until nothing moves for 2 s.
    let total_received = || -> u64 {
        ledger
            .received
            .iter()
            .map(|c| u64::from(c.load(Ordering::Acquire) & !UNCERTAIN))
            .sum()
    };
    let mut last = (total_received(), Instant::now());
    while last.1.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
        let now = total_received();
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    ledger.stop.store(2, Ordering::Release);
    for (_, worker, mut child) in workers {
        let status = child.wait().unwrap();
        assert!(status.success(), "worker {worker} failed: {status}");
    }
    let mut missing = Vec::new();
    for worker in 0..KILL_WORKERS {
        let confirmed = ledger.confirmed[worker].load(Ordering::Acquire);
        for seq in 1..KILL_SEQS {
            let word =
                ledger.received[worker * KILL_SEQS as usize + seq as usize].load(Ordering::Acquire);
            let (got, uncertain) = (word & !UNCERTAIN, word & UNCERTAIN != 0);
            assert!(got <= 1, "message {worker}/{seq} delivered {got} times");
            if seq <= confirmed && got == 0 && !uncertain {
                missing.push((worker, seq));
            }
            // Past the confirmed ones, only the push a victim died in.
            assert!(
                got == 0 || seq <= confirmed + 1 || uncertain,
                "message {worker}/{seq} delivered but never pushed"
            );
        }
    }
    println!(
        "{kills} kills ({inside} inside a push or pop, {consumer_kills} consumers), {} \
         messages delivered, missing {missing:?}",
        total_received()
    );
    assert!(kills >= 10, "only {kills} kills");
    assert!(inside > 0, "no kill landed inside an operation");
    assert!(
        missing.len() as u32 <= consumer_kills,
        "{} confirmed messages never arrived, more than the {consumer_kills} killed consumers \
         could have taken: {missing:?}",
        missing.len()
    );
}
