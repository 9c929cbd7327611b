//! `ShmMutex` and `ShmRwLock` across real processes: exclusion, readers that
//! never see a half-written value, and holders killed with SIGKILL.

mod common;

use std::io::Read;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{child_env, fresh_shm, shm_name, spawn_self, spawn_workers, worker_stdout};
use shmkit::sync::{ShmMutex, ShmRwLock};
use shmkit::{shm_struct, BumpAllocator, LinearAlloc, SegmentAllocator, SegmentOptions};

/// How long a test waits for something that should take milliseconds
/// before it calls it a failure.
const PATIENCE: Duration = Duration::from_secs(30);

const WORKERS: usize = 4;
const INCREMENTS: u64 = 5_000;
const WORDS: usize = 16;
const ROUNDS: u64 = 1_000;

/// The object the parent published under `name`.
fn root<'a, T>(bump: &'a BumpAllocator, name: &str) -> &'a T {
    let offset = bump
        .segment()
        .root::<T>(name)
        .expect("published by the parent");
    let ptr = bump.segment().resolve(offset).unwrap();
    // SAFETY: `resolve` checked bounds and alignment; the parent placed a
    // `T` (a lock or an atomic) there; the mapping lives as long as `bump`.
    unsafe { ptr.as_ref() }
}

/// Attaches the segment a child test was told about.
fn attach_from_env() -> BumpAllocator {
    BumpAllocator::attach(&SegmentOptions::shm(child_env("SHMKIT_TEST_SEGMENT"))).unwrap()
}

/// Places `value` in the segment and publishes it as `name`.
fn publish<'a, T: shmkit::ShmSafe>(bump: &'a BumpAllocator, name: &str, value: T) -> &'a T {
    let offset = bump.make_handle(value).unwrap();
    bump.segment().set_root(name, offset).unwrap();
    root(bump, name)
}

/// Waits until `condition` holds, failing the test after [`PATIENCE`].
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let started = Instant::now();
    while !condition() {
        assert!(started.elapsed() < PATIENCE, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A child process that is killed (and reaped) if the test ends early.
struct Process(Child);

impl Process {
    /// Starts child test `test` on segment `segment`, its output kept for a
    /// failure message.
    fn start(test: &str, segment: &str) -> Process {
        let child = spawn_self(test, &[("SHMKIT_TEST_SEGMENT", segment.to_owned())])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a child process");
        Process(child)
    }

    /// SIGKILLs the child and waits until it is a zombie, unreaped (as a
    /// supervisor that has not called `wait` yet leaves it); reaped on drop.
    fn kill_unreaped(&mut self) {
        self.0.kill().expect("SIGKILL the child");
        let stat = format!("/proc/{}/stat", self.0.id());
        wait_until("the child to become a zombie", || {
            std::fs::read_to_string(&stat)
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(false)
        });
    }

    /// SIGKILLs the child and reaps it.
    fn kill(mut self) {
        self.0.kill().expect("SIGKILL the child");
        self.0.wait().expect("reap the child");
    }

    /// Waits for the child's exit and asserts it succeeded, failing after
    /// [`PATIENCE`].
    fn succeeds(mut self, what: &str) {
        let started = Instant::now();
        let status: ExitStatus = loop {
            if let Some(status) = self.0.try_wait().expect("poll the child") {
                break status;
            }
            assert!(started.elapsed() < PATIENCE, "{what}: never finished");
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut out = String::new();
        if let Some(mut stdout) = self.0.stdout.take() {
            let _ = stdout.read_to_string(&mut out);
        }
        if let Some(mut stderr) = self.0.stderr.take() {
            let _ = stderr.read_to_string(&mut out);
        }
        assert!(status.success(), "{what}: {status}\n{out}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// (1) Processes exclude each other.

#[test]
#[ignore = "child process of processes_increment_one_counter_exactly"]
fn child_counter_worker() {
    let bump = attach_from_env();
    let counter: &ShmMutex<u64> = root(&bump, "counter");
    let arrived: &AtomicU32 = root(&bump, "arrived");
    // Start together, so the increments really race.
    arrived.fetch_add(1, Ordering::AcqRel);
    wait_until("the other workers", || {
        arrived.load(Ordering::Acquire) >= WORKERS as u32
    });
    for _ in 0..INCREMENTS {
        let mut guard = counter.lock().unwrap();
        assert!(!guard.owner_died(), "nobody died");
        // A non-atomic read-modify-write, stretched a little.
        let value = *guard;
        std::hint::spin_loop();
        *guard = value + 1;
    }
}

#[test]
fn processes_increment_one_counter_exactly() {
    let (options, _cleanup) = fresh_shm("locks-count");
    let bump = BumpAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let counter = publish(&bump, "counter", ShmMutex::new(0u64));
    publish(&bump, "arrived", AtomicU32::new(0));
    let workers = spawn_workers("child_counter_worker", &shm_name(&options), WORKERS);
    for (worker, child) in workers.into_iter().enumerate() {
        worker_stdout(worker, child);
    }
    let guard = counter.lock().unwrap();
    assert_eq!(*guard, WORKERS as u64 * INCREMENTS);
    assert!(!guard.owner_died());
}

// ---------------------------------------------------------------------------
// (2) A holder killed with SIGKILL, with a second process asleep in lock().

/// The pair the mutex guards: both halves equal when consistent.
type Pair = [u64; 2];

#[test]
#[ignore = "child process of a_killed_mutex_holder_is_taken_over"]
fn child_hold_mutex_and_sleep() {
    let bump = attach_from_env();
    let pair: &ShmMutex<Pair> = root(&bump, "pair");
    let holding: &AtomicU32 = root(&bump, "holding");
    let mut guard = pair.lock().unwrap();
    guard[0] = 1; // half of an update...
    holding.store(1, Ordering::Release);
    // ...and killed before the other half.
    std::thread::sleep(PATIENCE * 2);
    panic!("the parent should have killed this process");
}

#[test]
#[ignore = "child process of a_killed_mutex_holder_is_taken_over"]
fn child_wait_in_lock() {
    let bump = attach_from_env();
    let pair: &ShmMutex<Pair> = root(&bump, "pair");
    let waiting: &AtomicU32 = root(&bump, "waiting");
    waiting.store(1, Ordering::Release);
    let guard = pair.lock().unwrap();
    // The holder never unlocks: only its death lets us in.
    assert!(guard.owner_died(), "got the lock without a takeover");
    assert_eq!(*guard, [1, 0], "the half update is visible");
    // Leave without repairing: the next locker must be told too.
}

#[test]
fn a_killed_mutex_holder_is_taken_over() {
    let (options, _cleanup) = fresh_shm("locks-kill");
    let name = shm_name(&options);
    let bump = BumpAllocator::create(&options.size(1 << 20)).unwrap();
    let pair = publish(&bump, "pair", ShmMutex::new([0u64; 2]));
    let holding = publish(&bump, "holding", AtomicU32::new(0));
    let waiting = publish(&bump, "waiting", AtomicU32::new(0));

    let holder = Process::start("child_hold_mutex_and_sleep", &name);
    wait_until("the holder to lock", || {
        holding.load(Ordering::Acquire) == 1
    });
    assert!(pair.try_lock().unwrap().is_none(), "a live holder has it");

    let waiter = Process::start("child_wait_in_lock", &name);
    wait_until("the waiter to start", || {
        waiting.load(Ordering::Acquire) == 1
    });
    // The waiter is asleep in lock() once it has set the waiters bit.
    wait_until("the waiter to sleep", || {
        format!("{pair:?}").contains("waiters: true")
    });

    holder.kill();
    // The dead holder wakes nobody: the waiter must notice by itself.
    waiter.succeeds("the blocked locker after the holder's death");

    let mut guard = pair.lock().unwrap();
    assert!(guard.owner_died(), "still inconsistent: nobody repaired");
    assert_eq!(*guard, [1, 0]);
    guard[1] = 1;
    guard.mark_consistent();
    drop(guard);
    let guard = pair.lock().unwrap();
    assert!(!guard.owner_died());
    assert_eq!(*guard, [1, 1]);
}

// ---------------------------------------------------------------------------
// (3) The reader-writer lock across processes.

const RW_READERS: usize = 3;

shm_struct! {
    /// The start line of the reader-writer test: the children attach, say
    /// they are ready, and wait for the parent's word; halfway through the
    /// writes the writer waits until every reader has read a value from
    /// the middle.
    struct RwStart {
        go: AtomicU32,
        readers_ready: AtomicU32,
        writer_ready: AtomicU32,
        _padding: u32,
        /// Per reader: reads that saw a value strictly between the first
        /// and the last write, so taken while the writer ran.
        overlapping: [AtomicU64; RW_READERS],
    }
}

fn wait_for_go(start: &RwStart) {
    let deadline = Instant::now() + PATIENCE;
    while start.go.load(Ordering::Acquire) == 0 {
        assert!(Instant::now() < deadline, "never told to start");
        std::thread::yield_now();
    }
}

#[test]
#[ignore = "child process of reader_processes_see_only_whole_values"]
fn child_rw_writer() {
    let bump = attach_from_env();
    let table: &ShmRwLock<[u64; WORDS]> = root(&bump, "table");
    let start: &RwStart = root(&bump, "start");
    start.writer_ready.store(1, Ordering::Release);
    wait_for_go(start);
    for round in 1..=ROUNDS {
        if round == ROUNDS / 2 {
            wait_until("every reader to read while the writer runs", || {
                start
                    .overlapping
                    .iter()
                    .all(|n| n.load(Ordering::Acquire) > 0)
            });
        }
        let mut guard = table.write().unwrap();
        for (i, word) in guard.iter_mut().enumerate() {
            *word = round;
            if i == WORDS / 2 {
                // Widen the window in which a reader could see a torn value
                // (without yielding the core, which a loaded machine would
                // not give back soon).
                for _ in 0..200 {
                    std::hint::spin_loop();
                }
            }
        }
    }
}

#[test]
#[ignore = "child process of reader_processes_see_only_whole_values"]
fn child_rw_reader() {
    let bump = attach_from_env();
    let table: &ShmRwLock<[u64; WORDS]> = root(&bump, "table");
    let start: &RwStart = root(&bump, "start");
    let me = start.readers_ready.fetch_add(1, Ordering::AcqRel) as usize;
    wait_for_go(start);
    let mut last = 0;
    while last < ROUNDS {
        let guard = table.read().unwrap();
        assert!(!guard.owner_died());
        assert!(guard.iter().all(|&w| w == guard[0]), "torn: {guard:?}");
        assert!(guard[0] >= last, "went back from {last} to {}", guard[0]);
        last = guard[0];
        if (1..ROUNDS).contains(&last) {
            start.overlapping[me].fetch_add(1, Ordering::Release);
        }
    }
}

#[test]
fn reader_processes_see_only_whole_values() {
    let (options, _cleanup) = fresh_shm("locks-rw");
    let name = shm_name(&options);
    let bump = BumpAllocator::create(&options.size(1 << 20)).unwrap();
    let table = publish(&bump, "table", ShmRwLock::new([0u64; WORDS]));
    let start = publish(
        &bump,
        "start",
        RwStart {
            go: AtomicU32::new(0),
            readers_ready: AtomicU32::new(0),
            writer_ready: AtomicU32::new(0),
            _padding: 0,
            overlapping: Default::default(),
        },
    );
    let readers: Vec<_> = (0..RW_READERS)
        .map(|_| Process::start("child_rw_reader", &name))
        .collect();
    let writer = Process::start("child_rw_writer", &name);
    wait_until("the children to attach", || {
        start.readers_ready.load(Ordering::Acquire) == RW_READERS as u32
            && start.writer_ready.load(Ordering::Acquire) == 1
    });
    start.go.store(1, Ordering::Release);
    writer.succeeds("the writer");
    for reader in readers {
        reader.succeeds("a reader");
    }
    assert_eq!(*table.read().unwrap(), [ROUNDS; WORDS]);
    let overlapping: Vec<u64> = start
        .overlapping
        .iter()
        .map(|n| n.load(Ordering::Relaxed))
        .collect();
    assert!(
        overlapping.iter().all(|&n| n > 0),
        "a reader never read while the writer ran: {overlapping:?}"
    );
}

#[test]
#[ignore = "child process of a_killed_reader_does_not_block_the_writer"]
fn child_read_and_sleep() {
    let bump = attach_from_env();
    let table: &ShmRwLock<[u64; WORDS]> = root(&bump, "table");
    let holding: &AtomicU32 = root(&bump, "holding");
    let _guard = table.read().unwrap();
    holding.store(1, Ordering::Release);
    std::thread::sleep(PATIENCE * 2);
    panic!("the parent should have killed this process");
}

#[test]
fn a_killed_reader_does_not_block_the_writer() {
    let (options, _cleanup) = fresh_shm("locks-rkill");
    let name = shm_name(&options);
    let bump = BumpAllocator::create(&options.size(1 << 20)).unwrap();
    let table = publish(&bump, "table", ShmRwLock::new([0u64; WORDS]));
    let holding = publish(&bump, "holding", AtomicU32::new(0));

    let reader = Process::start("child_read_and_sleep", &name);
    wait_until("the reader to lock", || {
        holding.load(Ordering::Acquire) == 1
    });
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut guard = table.write_timeout(PATIENCE)?;
            guard[0] = 9;
            Ok::<bool, shmkit::Error>(guard.owner_died())
        });
        // The writer holds the writer word and waits for the reader.
        wait_until("the writer to arrive", || {
            !format!("{table:?}").contains("writer_tid: 0,")
        });
        assert!(!writer.is_finished(), "the writer got past a live reader");
        assert!(
            table.try_read().unwrap().is_none(),
            "a waiting writer lets no reader in"
        );
        reader.kill();
        let owner_died = writer.join().unwrap().unwrap();
        assert!(!owner_died, "a dead reader leaves nothing to repair");
    });
    assert_eq!(table.read().unwrap()[0], 9);
}

#[test]
#[ignore = "child process of a_killed_writer_is_taken_over"]
fn child_write_half_and_sleep() {
    let bump = attach_from_env();
    let table: &ShmRwLock<[u64; WORDS]> = root(&bump, "table");
    let holding: &AtomicU32 = root(&bump, "holding");
    let mut guard = table.write().unwrap();
    guard[..WORDS / 2].fill(1);
    holding.store(1, Ordering::Release);
    std::thread::sleep(PATIENCE * 2);
    panic!("the parent should have killed this process");
}

#[test]
#[ignore = "child process of a_killed_writer_is_taken_over"]
fn child_wait_in_read() {
    let bump = attach_from_env();
    let table: &ShmRwLock<[u64; WORDS]> = root(&bump, "table");
    let waiting: &AtomicU32 = root(&bump, "waiting");
    waiting.store(1, Ordering::Release);
    let guard = table.read().unwrap();
    assert!(guard.owner_died(), "read without a takeover");
    assert_eq!(guard[..WORDS / 2], [1; WORDS / 2]);
    assert_eq!(guard[WORDS / 2..], [0; WORDS / 2]);
}

#[test]
fn a_killed_writer_is_taken_over() {
    let (options, _cleanup) = fresh_shm("locks-wkill");
    let name = shm_name(&options);
    let bump = BumpAllocator::create(&options.size(1 << 20)).unwrap();
    let table = publish(&bump, "table", ShmRwLock::new([0u64; WORDS]));
    let holding = publish(&bump, "holding", AtomicU32::new(0));
    let waiting = publish(&bump, "waiting", AtomicU32::new(0));

    let writer = Process::start("child_write_half_and_sleep", &name);
    wait_until("the writer to lock", || {
        holding.load(Ordering::Acquire) == 1
    });
    let reader = Process::start("child_wait_in_read", &name);
    wait_until("the reader to start", || {
        waiting.load(Ordering::Acquire) == 1
    });
    wait_until("the reader to sleep", || {
        format!("{table:?}").contains("waiters: true")
    });
    assert!(table.try_read().unwrap().is_none(), "a live writer has it");

    writer.kill();
    reader.succeeds("the blocked reader after the writer's death");

    // Readers are told until a writer repairs.
    assert!(table.read().unwrap().owner_died());
    let mut guard = table.write().unwrap();
    assert!(guard.owner_died());
    guard.fill(2);
    guard.mark_consistent();
    drop(guard);
    let guard = table.read().unwrap();
    assert!(!guard.owner_died());
    assert_eq!(*guard, [2; WORDS]);
}

// ---------------------------------------------------------------------------
// Holders killed but not reaped yet: zombies answer `kill(pid, 0)`, but every
// path that decides ownership (the try calls and short timeouts too) judges
// them dead at once.

/// Polls `attempt` for up to 2 s; whether it ever succeeded.
fn succeeds_within_2s(mut attempt: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        if attempt() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

#[test]
fn try_lock_and_short_timeouts_take_over_an_unreaped_mutex_holder() {
    let (options, _cleanup) = fresh_shm("locks-zombie");
    let name = shm_name(&options);
    let bump = BumpAllocator::create(&options.size(1 << 20)).unwrap();
    let pair = publish(&bump, "pair", ShmMutex::new([0u64; 2]));
    let holding = publish(&bump, "holding", AtomicU32::new(0));
    let mut holder = Process::start("child_hold_mutex_and_sleep", &name);
    wait_until("the holder to lock", || {
        holding.load(Ordering::Acquire) == 1
    });
    assert!(pair.try_lock().unwrap().is_none(), "a live holder has it");
    assert!(pair.lock_timeout(Duration::from_millis(10)).is_err());
    holder.kill_unreaped();
    let mut taken = None;
    assert!(
        succeeds_within_2s(|| match pair.try_lock().unwrap() {
            Some(guard) => {
                taken = Some(guard.owner_died());
                true
            }
            None => false,
        }),
        "try_lock never took over the zombie holder"
    );
    assert_eq!(taken, Some(true), "the takeover is reported");
    drop(holder);
}

#[test]
fn try_write_and_try_read_take_over_an_unreaped_writer() {
    let (options, _cleanup) = fresh_shm("locks-wzombie");
    let name = shm_name(&options);
    let bump = BumpAllocator::create(&options.size(1 << 20)).unwrap();
    let table = publish(&bump, "table", ShmRwLock::new([0u64; WORDS]));
    let holding = publish(&bump, "holding", AtomicU32::new(0));
    let mut writer = Process::start("child_write_half_and_sleep", &name);
    wait_until("the writer to lock", || {
        holding.load(Ordering::Acquire) == 1
    });
    assert!(table.try_read().unwrap().is_none(), "a live writer has it");
    writer.kill_unreaped();
    assert!(
        succeeds_within_2s(|| table.try_read().unwrap().is_some()),
        "try_read never took over the zombie writer"
    );
    assert!(
        succeeds_within_2s(|| table.write_timeout(Duration::from_millis(10)).is_ok()),
        "a short write timeout never got the lock"
    );
    drop(writer);
}

#[test]
fn try_write_passes_an_unreaped_reader() {
    let (options, _cleanup) = fresh_shm("locks-rzombie");
    let name = shm_name(&options);
    let bump = BumpAllocator::create(&options.size(1 << 20)).unwrap();
    let table = publish(&bump, "table", ShmRwLock::new([0u64; WORDS]));
    let holding = publish(&bump, "holding", AtomicU32::new(0));
    let mut reader = Process::start("child_read_and_sleep", &name);
    wait_until("the reader to lock", || {
        holding.load(Ordering::Acquire) == 1
    });
    assert!(table.try_write().unwrap().is_none(), "a live reader has it");
    reader.kill_unreaped();
    assert!(
        succeeds_within_2s(|| table.try_write().unwrap().is_some()),
        "try_write never passed the zombie reader"
    );
    drop(reader);
}

/// Forks a child whose one thread (its main thread: its id is the pid, so
/// it stays a zombie until reaped) runs `hold`, then sleeps until killed.
/// Returns its pid once it signalled `holding`.
fn fork_holder(holding: &AtomicU32, hold: impl FnOnce()) -> libc::pid_t {
    // SAFETY: the child runs `hold` (lock calls on shared memory) and
    // sleeps; it never returns into the test harness.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        hold();
        holding.store(1, Ordering::Release);
        loop {
            // SAFETY: sleeps until the parent's SIGKILL.
            unsafe { libc::pause() };
        }
    }
    wait_until("the forked holder to lock", || {
        holding.load(Ordering::Acquire) == 1
    });
    pid
}

/// SIGKILLs `pid` and waits until it is a zombie, not reaping it.
fn kill_to_zombie(pid: libc::pid_t) {
    // SAFETY: signals our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let stat = format!("/proc/{pid}/stat");
    wait_until("the holder to become a zombie", || {
        std::fs::read_to_string(&stat)
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(false)
    });
}

fn reap(pid: libc::pid_t) {
    let mut status = 0;
    // SAFETY: reaps our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
}

#[test]
fn try_calls_take_over_an_unreaped_single_threaded_holder() {
    let (options, _cleanup) = fresh_shm("locks-fzombie");
    let bump = BumpAllocator::create(&options.size(1 << 20)).unwrap();
    let pair = publish(&bump, "pair", ShmMutex::new([0u64; 2]));
    let table = publish(&bump, "table", ShmRwLock::new([0u64; WORDS]));
    let holding = publish(&bump, "holding", AtomicU32::new(0));
    let holder = fork_holder(holding, || {
        std::mem::forget(pair.lock().unwrap());
        std::mem::forget(table.write().unwrap());
    });
    assert!(pair.try_lock().unwrap().is_none(), "a live holder has it");
    assert!(table.try_read().unwrap().is_none(), "a live writer has it");
    kill_to_zombie(holder);
    let mutex_taken = succeeds_within_2s(|| pair.try_lock().unwrap().is_some());
    let read_taken = succeeds_within_2s(|| table.try_read().unwrap().is_some());
    reap(holder);
    assert!(mutex_taken, "try_lock never took over the zombie holder");
    assert!(read_taken, "try_read never took over the zombie writer");
}
