//! The crash soak: worker processes allocate, tag, verify and free on one
//! shared allocator while the test SIGKILLs workers and starts replacements.
//! Most kills land inside the allocator on purpose: the test asks for a
//! victim, the next worker to reach one of the allocator's crash points
//! (the `crash-points` feature) says "inside" in its journal and waits
//! there, and the test kills it; for the free-list and buddy allocators
//! every such point but their thread caches' is under the allocator's lock
//! (and the soak goes on until enough kills landed under it). Other kills land
//! at random moments. For each allocator that shares its state:
//!
//! - at least [`MIN_INSIDE_KILLS`] kills land inside the allocator's code
//!   (counted from the victims' journals, never assumed);
//! - no surviving worker stalls longer than [`STALL_BOUND`] (no deadlock,
//!   even when a victim died holding a lock);
//! - no live block is handed out twice: every allocation claims its offset
//!   in a shared ownership table (a compare-and-swap that fails if anyone,
//!   dead or alive, still holds it), and every block is filled with its
//!   owner's tag and verified before it is freed;
//! - while the soak runs, the blocks dead workers held are freed by this
//!   process, as an application's reaper would: those the ownership table
//!   names, and those the allocator's hand-off log says it handed to a
//!   victim that died before claiming them
//!   ([`ShmAllocator::take_dead_handoffs`]);
//! - before recovery, `check()` reports a crash's traces as
//!   [`Error::NeedsRecovery`] or passes, never as corruption;
//! - at the end, after [`ShmAllocator::recover`] and the final reaping,
//!   `check()` passes and no block is left allocated: zero lost to the
//!   kills.
//!
//! `SHMKIT_SOAK_SECS` sets the least seconds per allocator (default 2; the
//! soak goes on until its inside kills are in); for a long run:
//! `SHMKIT_SOAK_SECS=120 cargo test --release -p shmkit --features
//! crash-points --test crash_soak -- --nocapture`.
#![cfg(feature = "crash-points")]

mod common;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Child;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{child_env, fresh_shm, shm_name, spawn_self, Rng};
use shmkit::{
    BuddyAllocator, BumpAllocator, Error, FreeListAllocator, LinearAlloc, MemContext, Offset,
    PoolAllocator, PoolParams, Segment, SegmentAllocator, SegmentOptions, ShmAllocator,
    SizeClassAllocator, ThreadLocalAllocator,
};

/// Size of the segment the workers share.
const DATA_SIZE: u64 = 32 << 20;
/// Every block is 16-aligned; the ownership table has a word per 16 bytes.
const GRANULE: u64 = 16;
const CLAIMS: usize = (DATA_SIZE / GRANULE) as usize;
/// Journals: one per worker ever started in a run, victims included.
const MAX_WORKERS: usize = 1024;
const WORKERS: usize = 3;
/// The longest a running worker may go without finishing an operation.
const STALL_BOUND: Duration = Duration::from_secs(5);
/// Blocks a worker holds at most.
const HELD: usize = 48;
const LEDGER_ROOT: &str = "soak.ledger";
/// Kills inside the allocator's code that each soak must land.
const MIN_INSIDE_KILLS: usize = 20;
/// The longest a soak may take to land them.
const INSIDE_DEADLINE: Duration = Duration::from_secs(90);
/// How long a worker waits at a crash point for its kill before it goes on.
const PAUSE: Duration = Duration::from_secs(2);
/// The allocators' crash points a soak worker may stop at, by number.
const POINTS: &[&str] = &[
    "pool.alloc.pending",
    "pool.alloc.recorded",
    "pool.free.unlisted",
    "size_class.alloc.claimed",
    "size_class.alloc.fresh_page",
    "size_class.alloc.large_tails",
    "size_class.alloc.large_pending",
    "size_class.alloc.recorded",
    "size_class.free.marked",
    "size_class.free.large_head_freed",
    "thread_local.alloc.cached",
    "thread_local.alloc.recorded",
    "thread_local.give_back.unheld",
    "free_list.alloc.intended",
    "free_list.alloc.committed",
    "free_list.free.committed",
    "free_list.cache.flagged",
    "free_list.cache.popped",
    "free_list.cache.taken",
    "free_list.cache.giving_back",
    "free_list.cache.refill_split",
    "buddy.alloc.intended",
    "buddy.alloc.committed",
    "buddy.free.committed",
    "buddy.cache.flagged",
    "buddy.cache.popped",
    "buddy.cache.taken",
    "buddy.cache.giving_back",
    "buddy.cache.refill_split",
];

/// Whether the point lies under the allocator's lock.
fn under_lock(point: &str) -> bool {
    // The thread caches free and allocate without the lock; only giving
    // blocks back takes it.
    let cache = point.contains(".cache.");
    let lock_free =
        cache && !point.ends_with(".cache.giving_back") && !point.ends_with(".cache.refill_split");
    (point.starts_with("free_list.") || point.starts_with("buddy.")) && !lock_free
}

const RUNNING: u32 = 1;
const FINISHED: u32 = 2;
/// `pending` while a worker is inside an allocation (low bits: the size) or
/// a free (low bits: the offset).
const PENDING_ALLOC: u64 = 1 << 62;
const PENDING_FREE: u64 = 2 << 62;
const PENDING_VALUE: u64 = (1 << 62) - 1;

/// What one worker publishes about itself.
#[repr(C, align(64))]
struct Journal {
    pid: AtomicU32,
    state: AtomicU32,
    ops: AtomicU64,
    heartbeat_ns: AtomicU64,
    slowest_ns: AtomicU64,
    pending: AtomicU64,
    /// `1 +` the index in [`POINTS`] of the crash point the worker waits
    /// at to be killed, or 0.
    inside: AtomicU64,
}

/// Shared by the test and its workers, in a segment of its own.
#[repr(C)]
struct Ledger {
    stop: AtomicU32,
    /// Set by the test when it wants a victim inside the allocator; the
    /// worker that takes it (back to 0) stops at its next crash point.
    want_inside: AtomicU32,
    journals: [Journal; MAX_WORKERS],
    /// `worker + 1` of the holder of the block at each granule, or 0.
    claims: [AtomicU32; CLAIMS],
}

fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own; CLOCK_MONOTONIC is system-wide,
    // so readings of different processes compare.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

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

/// The ledger in an attached ledger segment.
fn ledger(segment: &Segment) -> &Ledger {
    let offset = segment.root::<Ledger>(LEDGER_ROOT).expect("ledger root");
    // SAFETY: resolved (bounds, alignment) in a segment that outlives the
    // borrow; the ledger is atomics only, valid for any bytes (zero here).
    unsafe { segment.resolve(offset).unwrap().as_ref() }
}

/// This worker's ledger and index, for the crash-point hook.
static PAUSING: OnceLock<(&'static Ledger, usize)> = OnceLock::new();

thread_local! {
    static POINT_RNG: Cell<u64> = Cell::new(u64::from(std::process::id()) | 1);
}

/// The crash-point hook of a soak worker: when the test wants a victim,
/// one point in four takes the request, says "inside" and waits there for
/// the kill (going on after [`PAUSE`] if none comes).
fn wait_inside_for_the_kill(point: &'static str) {
    let Some(&(ledger, worker)) = PAUSING.get() else {
        return;
    };
    if ledger.want_inside.load(Ordering::Relaxed) == 0 {
        return;
    }
    let skip = POINT_RNG.with(|rng| {
        let mut state = Rng(rng.get());
        let skip = state.below(4) != 0;
        rng.set(state.0);
        skip
    });
    if skip
        || ledger
            .want_inside
            .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let index = POINTS
        .iter()
        .position(|&known| known == point)
        .unwrap_or_else(|| panic!("crash point {point} is not in the soak's list"));
    let journal = &ledger.journals[worker];
    journal.inside.store(index as u64 + 1, Ordering::Release);
    let until = Instant::now() + PAUSE;
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(1));
    }
    journal.inside.store(0, Ordering::Release);
}

/// The byte a worker fills a block with.
fn tag(worker: usize, seq: u64) -> u8 {
    (worker as u64).wrapping_mul(131).wrapping_add(seq) as u8
}

/// A worker: allocate, claim, tag; verify, unclaim, free; until told to
/// stop, then free everything it holds. Any violation panics (exit 101).
#[test]
#[ignore = "child process of the crash soak"]
fn child_soak_worker() {
    let kind = child_env("SHMKIT_SOAK_KIND");
    let worker: usize = child_env("SHMKIT_SOAK_WORKER").parse().unwrap();
    // Mapped for the life of the process: the crash-point hook uses it.
    let ledger_segment: &'static Segment = Box::leak(Box::new(
        Segment::attach(&SegmentOptions::shm(child_env("SHMKIT_SOAK_LEDGER")))
            .expect("attach the ledger"),
    ));
    let ledger = ledger(ledger_segment);
    let journal = &ledger.journals[worker];
    assert!(
        PAUSING.set((ledger, worker)).is_ok(),
        "one worker per process"
    );
    shmkit::crash_point::on_reach(wait_inside_for_the_kill);
    let allocator = attach(
        &kind,
        &SegmentOptions::shm(child_env("SHMKIT_SOAK_SEGMENT")),
    );
    let ctx = MemContext::current();
    let me = worker as u32 + 1;
    journal.pid.store(std::process::id(), Ordering::Release);
    journal
        .heartbeat_ns
        .store(monotonic_ns(), Ordering::Release);
    journal.state.store(RUNNING, Ordering::Release);

    let claim_of = |offset: u64| {
        assert!(
            offset % GRANULE == 0 && offset < DATA_SIZE,
            "{kind}: block at {offset} is not 16-aligned inside the segment"
        );
        &ledger.claims[(offset / GRANULE) as usize]
    };
    let free = |offset: u64, size: usize, seq: u64| {
        let block = allocator.full_ptr(offset).unwrap();
        // SAFETY: our live block of `size` bytes; nobody else writes it.
        let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), size) };
        if let Some(at) = bytes.iter().position(|&b| b != tag(worker, seq)) {
            panic!("{kind}: worker {worker}'s block at {offset} was overwritten at byte {at}");
        }
        journal
            .pending
            .store(PENDING_FREE | offset, Ordering::Release);
        claim_of(offset).store(0, Ordering::Release);
        // SAFETY: nothing uses the block after it is freed.
        unsafe { allocator.free_offset(&ctx, offset) }.unwrap();
        journal.pending.store(0, Ordering::Release);
    };
    let max_size = if kind == "pool" { 2048 } else { 100 << 10 };
    let mut rng = Rng((u64::from(std::process::id()) * 0x9e37_79b9) | 1);
    let mut held: Vec<(u64, usize, u64)> = Vec::with_capacity(HELD);
    let mut seq = 0u64;
    while ledger.stop.load(Ordering::Acquire) == 0 {
        let started = monotonic_ns();
        seq += 1;
        if held.len() < HELD && (held.is_empty() || rng.below(10) < 6) {
            let size = if rng.below(64) == 0 {
                max_size / 2 + rng.below(max_size as u64 / 2) as usize
            } else {
                16 + rng.below(1500) as usize
            };
            journal
                .pending
                .store(PENDING_ALLOC | size as u64, Ordering::Release);
            match allocator.allocate_offset(&ctx, size, 16) {
                Ok(offset) => {
                    if let Err(holder) = claim_of(offset).compare_exchange(
                        0,
                        me,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    ) {
                        panic!(
                            "{kind}: block at {offset} handed to worker {worker} while worker {} \
                             holds it",
                            holder - 1
                        );
                    }
                    let block = allocator.full_ptr(offset).unwrap();
                    // SAFETY: a live block of `size` bytes, claimed by us.
                    unsafe { std::ptr::write_bytes(block.as_ptr(), tag(worker, seq), size) };
                    held.push((offset, size, seq));
                }
                // The workload never holds more than a fraction of the
                // segment, and victims' blocks are reaped as they die.
                Err(other) => panic!("{kind}: worker {worker} allocate({size}): {other}"),
            }
            journal.pending.store(0, Ordering::Release);
        } else {
            let (offset, size, tagged) = held.swap_remove(rng.below(held.len() as u64) as usize);
            free(offset, size, tagged);
        }
        let now = monotonic_ns();
        journal.ops.fetch_add(1, Ordering::Relaxed);
        journal.heartbeat_ns.store(now, Ordering::Release);
        journal
            .slowest_ns
            .fetch_max(now.saturating_sub(started), Ordering::Relaxed);
    }
    for (offset, size, tagged) in held {
        free(offset, size, tagged);
    }
    journal.state.store(FINISHED, Ordering::Release);
}

/// A worker process and its journal.
struct Worker {
    index: usize,
    child: Child,
}

/// The supervisor's view of one soak run.
struct Soak<'a> {
    kind: &'a str,
    data_name: String,
    ledger_name: String,
    ledger: &'a Ledger,
    allocator: &'a dyn ShmAllocator,
    started: usize,
    victims: Vec<usize>,
    reaped: u64,
    /// Blocks freed because the hand-off log named them (handed to a victim
    /// that died before claiming them, or while freeing them).
    handoffs_reaped: u64,
}

impl Soak<'_> {
    fn spawn(&mut self) -> Worker {
        assert!(self.started < MAX_WORKERS, "out of journals");
        let index = self.started;
        self.started += 1;
        let child = spawn_self(
            "child_soak_worker",
            &[
                ("SHMKIT_SOAK_KIND", self.kind.to_owned()),
                ("SHMKIT_SOAK_WORKER", index.to_string()),
                ("SHMKIT_SOAK_SEGMENT", self.data_name.clone()),
                ("SHMKIT_SOAK_LEDGER", self.ledger_name.clone()),
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
        Worker { index, child }
    }

    /// Fails the test if a worker exited on its own (a violation) or a
    /// running one has not finished an operation within the bound.
    fn watch(&self, workers: &mut [Worker]) {
        let now = monotonic_ns();
        for worker in workers.iter_mut() {
            if let Some(status) = worker.child.try_wait().unwrap() {
                let mut stderr = String::new();
                if let Some(mut pipe) = worker.child.stderr.take() {
                    use std::io::Read;
                    let _ = pipe.read_to_string(&mut stderr);
                }
                panic!(
                    "{}: worker {} exited during the soak ({status}):\n{stderr}",
                    self.kind, worker.index
                );
            }
            let journal = &self.ledger.journals[worker.index];
            if journal.state.load(Ordering::Acquire) != RUNNING {
                continue; // still starting
            }
            let idle = now.saturating_sub(journal.heartbeat_ns.load(Ordering::Acquire));
            assert!(
                Duration::from_nanos(idle) < STALL_BOUND,
                "{}: worker {} made no progress for {:?} (pending {:#x}): a deadlock",
                self.kind,
                worker.index,
                Duration::from_nanos(idle),
                journal.pending.load(Ordering::Acquire)
            );
        }
    }

    /// Frees the blocks the hand-off log says were handed to dead workers
    /// and that no worker claims: a victim killed between the allocator's
    /// return and its claim, or between unclaiming a block and freeing it.
    /// (A record names a block its worker had not begun to free, so it is
    /// still allocated; one a victim still claims is left to [`reap`].)
    fn reap_handoffs(&mut self) {
        let ctx = MemContext::default();
        for offset in self.allocator.take_dead_handoffs() {
            assert!(
                offset % GRANULE == 0 && offset < DATA_SIZE,
                "{}: hand-off record {offset} is no block",
                self.kind
            );
            if self.ledger.claims[(offset / GRANULE) as usize].load(Ordering::Acquire) != 0 {
                continue;
            }
            // SAFETY: handed to a dead worker and claimed by nobody, so
            // nothing of this process uses it.
            unsafe { self.allocator.free_offset(&ctx, offset) }.unwrap_or_else(|e| {
                panic!("{}: freeing the dead hand-off {offset}: {e}", self.kind)
            });
            self.handoffs_reaped += 1;
        }
    }

    /// Frees every block the ownership table says a victim held (safe while
    /// others run: nobody else touches a dead worker's claims).
    fn reap(&mut self, victim: usize) {
        let ctx = MemContext::default();
        for (granule, claim) in self.ledger.claims.iter().enumerate() {
            if claim.load(Ordering::Acquire) == victim as u32 + 1 {
                let offset = granule as u64 * GRANULE;
                claim.store(0, Ordering::Release);
                // SAFETY: the dead victim's block; the reaper never maps it.
                unsafe { self.allocator.free_offset(&ctx, offset) }.unwrap_or_else(|e| {
                    panic!(
                        "{}: reaping worker {victim}'s block {offset}: {e}",
                        self.kind
                    )
                });
                self.reaped += 1;
            }
        }
    }
}

fn soak_seconds() -> f64 {
    std::env::var("SHMKIT_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2.0)
}

fn soak<A: SegmentAllocator + ShmAllocator>(kind: &str, params: &A::Params) {
    let (data_options, _data_cleanup) = fresh_shm(kind);
    let allocator = A::create_with(&data_options.clone().size(DATA_SIZE), params).unwrap();
    let (ledger_options, _ledger_cleanup) = fresh_shm("soak-ledger");
    let ledger_bytes = std::mem::size_of::<Ledger>() as u64;
    let ledger_segment =
        BumpAllocator::create(&ledger_options.clone().size(ledger_bytes + (1 << 20))).unwrap();
    let at = ledger_segment
        .alloc_handle(ledger_bytes as usize, 64)
        .unwrap();
    ledger_segment
        .segment()
        .set_root(LEDGER_ROOT, Offset::<Ledger>::from_raw(at.raw()))
        .unwrap();
    let ledger = ledger(ledger_segment.segment());
    let mut soak = Soak {
        kind,
        data_name: shm_name(&data_options),
        ledger_name: shm_name(&ledger_options),
        ledger,
        allocator: &allocator,
        started: 0,
        victims: Vec::new(),
        reaped: 0,
        handoffs_reaped: 0,
    };

    let mut workers: Vec<Worker> = (0..WORKERS).map(|_| soak.spawn()).collect();
    let mut rng = Rng((0x5eed ^ kind.len() as u64) | 1);
    let mut kills = 0u64;
    // Kills that landed inside the allocator, by crash point.
    let mut inside: BTreeMap<&str, usize> = BTreeMap::new();
    let inside_kills = |inside: &BTreeMap<&str, usize>| inside.values().sum::<usize>();
    let locked_kills = |inside: &BTreeMap<&str, usize>| {
        inside
            .iter()
            .filter(|(point, _)| under_lock(point))
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    let locking = kind == "free-list" || kind == "buddy";
    let enough = |inside: &BTreeMap<&str, usize>| {
        inside_kills(inside) >= MIN_INSIDE_KILLS
            && (!locking || locked_kills(inside) >= MIN_INSIDE_KILLS)
    };
    let run = Duration::from_secs_f64(soak_seconds());
    let started = Instant::now();
    let mut next_random_kill = started + Duration::from_millis(100 + rng.below(150));
    let mut next_inside_kill = started + Duration::from_millis(50);
    while started.elapsed() < run || !enough(&inside) {
        assert!(
            started.elapsed() < INSIDE_DEADLINE,
            "{kind}: only {} kills landed inside the allocator in {INSIDE_DEADLINE:?}: {inside:?}",
            inside_kills(&inside)
        );
        std::thread::sleep(Duration::from_millis(1));
        soak.watch(&mut workers);
        // A worker waiting inside is killed at once; otherwise, now and
        // then, the next one to reach a crash point is asked to wait.
        let waiting = workers
            .iter()
            .position(|worker| ledger.journals[worker.index].inside.load(Ordering::Acquire) != 0);
        let pick = match waiting {
            Some(pick) => pick,
            None if Instant::now() >= next_random_kill => {
                next_random_kill = Instant::now() + Duration::from_millis(30 + rng.below(120));
                rng.below(workers.len() as u64) as usize
            }
            None => {
                if Instant::now() >= next_inside_kill {
                    ledger.want_inside.store(1, Ordering::Release);
                }
                continue;
            }
        };
        let journal = &ledger.journals[workers[pick].index];
        if journal.state.load(Ordering::Acquire) != RUNNING {
            continue; // let it start first
        }
        let mut victim = std::mem::replace(&mut workers[pick], soak.spawn());
        victim.child.kill().unwrap();
        victim.child.wait().unwrap();
        kills += 1;
        // Read after its death: where it was when the kill landed.
        let at = ledger.journals[victim.index].inside.load(Ordering::Acquire);
        if at != 0 {
            *inside.entry(POINTS[at as usize - 1]).or_default() += 1;
            next_inside_kill = Instant::now() + Duration::from_millis(20 + rng.below(40));
        }
        soak.victims.push(victim.index);
        soak.reap_handoffs();
        soak.reap(victim.index);
    }
    ledger.want_inside.store(0, Ordering::Release);
    ledger.stop.store(1, Ordering::Release);
    let stop_deadline = Instant::now() + Duration::from_secs(30);
    for worker in &mut workers {
        loop {
            if let Some(status) = worker.child.try_wait().unwrap() {
                let journal = &ledger.journals[worker.index];
                assert!(
                    status.success() && journal.state.load(Ordering::Acquire) == FINISHED,
                    "{kind}: worker {} did not finish cleanly: {status}",
                    worker.index
                );
                break;
            }
            assert!(
                Instant::now() < stop_deadline,
                "{kind}: worker {} did not stop within 30 s",
                worker.index
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    // Every survivor freed what it held: what is allocated now, dead
    // workers left.
    let before = allocator.stats();
    let check_before = allocator.check().err();
    if let Some(error) = &check_before {
        assert!(
            matches!(error, Error::NeedsRecovery { .. }),
            "{kind}: before recovery, check calls a crash's traces corruption: {error}"
        );
    }
    // Every worker has exited (the soaks of the other allocators fork
    // theirs on other threads meanwhile: see the helper).
    let report = common::recover_once_alone(&allocator);
    let handoffs_during_run = soak.handoffs_reaped;
    soak.reap_handoffs();
    // The final reaping: a victim's unfinished free names its block.
    let ctx = MemContext::default();
    let unfinished: BTreeSet<u64> = soak
        .victims
        .iter()
        .map(|&v| ledger.journals[v].pending.load(Ordering::Acquire))
        .filter(|pending| pending & PENDING_FREE != 0)
        .map(|pending| pending & PENDING_VALUE)
        .collect();
    let mut finished_frees = 0;
    for offset in unfinished {
        if allocator.usable_size(offset).is_ok() {
            // SAFETY: nothing uses the block after it is freed.
            unsafe { allocator.free_offset(&ctx, offset) }.unwrap();
            finished_frees += 1;
        }
    }
    allocator
        .check()
        .unwrap_or_else(|e| panic!("{kind}: check after recovery: {e}"));
    let after = allocator.stats();
    let (in_flight, in_flight_bytes) = soak
        .victims
        .iter()
        .map(|&v| ledger.journals[v].pending.load(Ordering::Acquire))
        .filter(|pending| pending & PENDING_ALLOC != 0)
        .fold((0, 0), |(n, bytes), pending| {
            (n + 1, bytes + (pending & PENDING_VALUE))
        });
    assert_eq!(
        (after.live_allocations, after.allocated_bytes),
        (0, 0),
        "{kind}: blocks lost to the kills ({in_flight} allocations, {in_flight_bytes} bytes, \
         were in flight at a kill)"
    );
    let ops: u64 = (0..soak.started)
        .map(|w| ledger.journals[w].ops.load(Ordering::Relaxed))
        .sum();
    let slowest = (0..soak.started)
        .map(|w| ledger.journals[w].slowest_ns.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    let inside_kills = inside_kills(&inside);
    assert!(inside_kills >= MIN_INSIDE_KILLS, "{kind}: {inside:?}");
    if locking {
        let locked = locked_kills(&inside);
        assert!(
            locked >= MIN_INSIDE_KILLS,
            "{kind}: only {locked} kills landed holding the allocator's lock: {inside:?}"
        );
    }
    println!(
        "{kind}: {kills} kills survived ({inside_kills} inside the allocator: {inside:?}), {} \
         workers, {ops} operations in {:.1} s, slowest operation {:.1} ms; {} blocks of \
         victims reaped while running, {handoffs_during_run} of them from the hand-off log",
        soak.started,
        started.elapsed().as_secs_f64(),
        slowest as f64 / 1e6,
        soak.reaped + handoffs_during_run
    );
    println!(
        "{kind}:   leaked before recovery: {} blocks / {} bytes (check: {}); recovery: {report}; \
         hand-offs reaped after it: {}; unfinished frees completed: {finished_frees}; leaked \
         after: {} blocks / {} bytes ({in_flight} allocations were in flight at a kill)",
        before.live_allocations,
        before.allocated_bytes,
        check_before.map_or("clean".to_owned(), |e| e.to_string()),
        soak.handoffs_reaped - handoffs_during_run,
        after.live_allocations,
        after.allocated_bytes,
    );
}

#[test]
fn the_pool_survives_a_kill_soak() {
    soak::<PoolAllocator>("pool", &PoolParams::new(&[64, 512, 2048]).unwrap());
}

#[test]
fn the_free_list_survives_a_kill_soak() {
    soak::<FreeListAllocator>("free-list", &Default::default());
}

#[test]
fn the_buddy_allocator_survives_a_kill_soak() {
    soak::<BuddyAllocator>("buddy", &Default::default());
}

#[test]
fn the_size_class_allocator_survives_a_kill_soak() {
    soak::<SizeClassAllocator>("size-class", &Default::default());
}

#[test]
fn the_thread_local_allocator_survives_a_kill_soak() {
    soak::<ThreadLocalAllocator>("thread-local", &Default::default());
}
