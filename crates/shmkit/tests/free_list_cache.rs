//! The free list's per-thread caches (`alloc/free_list/thread_cache.rs`)
//! under attack: racing double frees, repairs and lock takeovers beside
//! cached traffic, `check` on a heap in use, a free that may not wait, and
//! kills inside a cached allocation.
//!
//! Run with `cargo test -p shmkit --test free_list_cache` (the crash-point
//! ones with `--features crash-points`).

mod common;

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{child_env, fresh_shm, shm_name, spawn_self};
use shmkit::{
    Error, FreeListAllocator, MemContext, Offset, Region, SegmentAllocator, SegmentOptions,
    ShmAllocator,
};

/// Bytes of a block header (see `alloc/free_list/mod.rs`).
#[cfg_attr(not(feature = "crash-points"), allow(dead_code))]
const HEADER: u64 = 32;
/// A request whose block (96 bytes with the header) has a magazine.
const SMALL: usize = 64;
/// A request too large for the caches: its free and allocation take the lock.
const BIG: usize = 600;
/// Blocks a magazine holds (`alloc/magazine.rs`).
const MAGAZINE: usize = 8;

fn private_heap(size: u64) -> FreeListAllocator {
    FreeListAllocator::create(&SegmentOptions::private().size(size)).unwrap()
}

/// A word of the segment (for reading and forging headers).
#[cfg_attr(not(feature = "crash-points"), allow(dead_code))]
fn word(heap: &FreeListAllocator, offset: u64) -> &AtomicU64 {
    let ptr = heap
        .segment()
        .resolve(Offset::<AtomicU64>::from_raw(offset))
        .unwrap();
    // SAFETY: resolved (bounds, alignment); an atomic; lives with the heap.
    unsafe { ptr.as_ref() }
}

/// Runs `traffic` (one cached allocation and free of a small block per
/// call) on another thread until the returned guard is dropped.
struct Traffic<'s> {
    stop: &'s AtomicBool,
}

impl Drop for Traffic<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// One small block allocated and freed in a loop, through the caller's
/// magazine (no lock), until `stop`.
fn cached_traffic(heap: &FreeListAllocator, stop: &AtomicBool, rounds: &AtomicU64) {
    let ctx = MemContext::current();
    // The first round counts as one: `rounds` at 1 says the block is cached.
    let block = heap.allocate_offset(&ctx, SMALL, 16).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free_offset(&ctx, block) }.unwrap();
    rounds.fetch_add(1, Ordering::Relaxed);
    while !stop.load(Ordering::Acquire) {
        let block = heap.allocate_offset(&ctx, SMALL, 16).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, block) }.unwrap();
        rounds.fetch_add(1, Ordering::Relaxed);
    }
}

/// Switches for a traffic thread: `run` lets it loop, `idle` says it
/// stopped between two rounds (its block in its cache), `stop` ends it.
#[derive(Default)]
struct Switches {
    run: AtomicBool,
    idle: AtomicBool,
    stop: AtomicBool,
    rounds: AtomicU64,
}

impl Switches {
    fn run(&self) {
        self.idle.store(false, Ordering::Release);
        self.run.store(true, Ordering::Release);
        let at = self.rounds.load(Ordering::Acquire);
        wait_for_rounds(&self.rounds, at + 100);
    }

    fn pause(&self) {
        self.run.store(false, Ordering::SeqCst);
        // The thread says idle again only after seeing `run` cleared (it
        // repeats it while idle), never in the middle of a round.
        self.idle.store(false, Ordering::SeqCst);
        let started = Instant::now();
        while !self.idle.load(Ordering::Acquire) {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "traffic never paused"
            );
            std::thread::yield_now();
        }
    }
}

/// [`cached_traffic`] whose block is the first of a fresh heap (so a
/// rebuild's walk meets it first, and then every other block), looping
/// while `run` is set.
fn cached_traffic_first(heap: &FreeListAllocator, switches: &Switches) {
    let ctx = MemContext::current();
    let first = heap.allocate_offset(&ctx, SMALL, 16).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free_offset(&ctx, first) }.unwrap();
    switches.rounds.store(1, Ordering::Release);
    while !switches.stop.load(Ordering::Acquire) {
        if !switches.run.load(Ordering::Acquire) {
            switches.idle.store(true, Ordering::Release);
            std::thread::yield_now();
            continue;
        }
        let block = heap.allocate_offset(&ctx, SMALL, 16).unwrap();
        assert_eq!(block, first, "the block comes back from the cache");
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, block) }.unwrap();
        switches.rounds.fetch_add(1, Ordering::Relaxed);
    }
}

fn wait_for_rounds(rounds: &AtomicU64, at_least: u64) {
    let started = Instant::now();
    while rounds.load(Ordering::Relaxed) < at_least {
        assert!(started.elapsed() < Duration::from_secs(30), "no traffic");
        std::thread::yield_now();
    }
}

// ---------------------------------------------------------------------------
// 1. `MemContext::refuse_waits` is ignored by a free whose magazine is full:
//    `cached_free` gives half the magazine back through `give_back`, which
//    takes the lock with `LOCK_PATIENCE` (10 s) instead of the context's
//    patience.
// ---------------------------------------------------------------------------

#[test]
fn a_refusing_free_with_a_full_magazine_does_not_wait_for_the_lock() {
    let heap = private_heap(1 << 20);
    let ctx = MemContext::current();
    let blocks: Vec<u64> = (0..=MAGAZINE)
        .map(|_| heap.allocate_offset(&ctx, SMALL, 16).unwrap())
        .collect();
    // Eight frees fill this thread's magazine (no lock needed).
    for &block in &blocks[..MAGAZINE] {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, block) }.unwrap();
    }
    let holding = AtomicBool::new(false);
    let hold_for = Duration::from_millis(1500);
    std::thread::scope(|scope| {
        // Another thread holds the heap's lock (`regions` visits under it).
        scope.spawn(|| {
            let mut first = true;
            heap.regions(&mut |_: Region| {
                if first {
                    first = false;
                    holding.store(true, Ordering::Release);
                    std::thread::sleep(hold_for);
                }
            })
            .unwrap();
        });
        while !holding.load(Ordering::Acquire) {
            std::thread::yield_now();
        }
        let started = Instant::now();
        // SAFETY: nothing uses the block after it is freed.
        let result = unsafe { heap.free_offset(&MemContext::refusing_waits(), blocks[MAGAZINE]) };
        let waited = started.elapsed();
        assert!(
            waited < Duration::from_millis(500),
            "a free with refuse_waits waited {waited:?} for a lock another thread held \
             (result {result:?}); MemContext::refuse_waits promises WouldBlock at once"
        );
        assert!(
            matches!(result, Err(Error::WouldBlock { .. }) | Ok(())),
            "{result:?}"
        );
    });
}

// ---------------------------------------------------------------------------
// 2. `check()` while another thread allocates and frees through its cache
//    reports corruption that is not there: the chain walk, the magazine
//    entries and the counters are read at different instants, without
//    anything that stops the lock-free operations (before the caches every
//    change was made under the lock `check` holds).
// ---------------------------------------------------------------------------

#[test]
fn check_during_cached_traffic_reports_no_corruption() {
    let heap = private_heap(1 << 20);
    let stop = AtomicBool::new(false);
    let rounds = AtomicU64::new(0);
    let mut errors = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(|| cached_traffic(&heap, &stop, &rounds));
        let _stop = Traffic { stop: &stop };
        wait_for_rounds(&rounds, 1000);
        for _ in 0..300 {
            if let Err(err) = heap.check() {
                errors.push(err.to_string());
            }
        }
    });
    heap.check().unwrap();
    assert!(
        errors.is_empty(),
        "{} of 300 checks during cached traffic failed on a sound heap, e.g.:\n{}",
        errors.len(),
        errors
            .iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------
// 3. A rebuild under the lock (`repair`, or the one every locker runs after
//    taking the lock over from a dead owner, or after a corrupt header)
//    recounts the live blocks from the chain and sets the counters with
//    `reset_to`, while cached frees and allocations keep counting in their
//    shares without the lock: a block whose CACHED bit flips between the
//    walk's read of it and the sum of the shares is counted wrongly, for
//    good (until the next rebuild).
// ---------------------------------------------------------------------------

/// Live blocks that make a rebuild's walk take a while.
fn populate(heap: &FreeListAllocator, blocks: usize) -> Vec<u64> {
    let ctx = MemContext::current();
    (0..blocks)
        .map(|_| heap.allocate_offset(&ctx, BIG, 16).unwrap())
        .collect()
}

#[test]
fn a_repair_racing_cached_traffic_leaves_exact_counters_once_quiet() {
    let heap = private_heap(8 << 20);
    let switches = Switches::default();
    let mut held = Vec::new();
    let mut failures = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(|| cached_traffic_first(&heap, &switches));
        wait_for_rounds(&switches.rounds, 1);
        held = populate(&heap, 5000);
        for round in 0..40 {
            switches.run();
            heap.repair().unwrap();
            switches.pause();
            // Quiescent: the counters must match the chain again.
            let stats = heap.stats();
            if let Err(err) = heap.check() {
                failures.push(format!(
                    "round {round}: {} live counted, {} held: {err}",
                    stats.live_allocations,
                    held.len()
                ));
            }
        }
        switches.stop.store(true, Ordering::Release);
    });
    assert!(
        failures.is_empty(),
        "{} of 40 repairs that raced cached traffic left the counters wrong:\n{}",
        failures.len(),
        failures
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The child of the next test: holds the heap's lock (inside `regions`)
/// until it is killed.
#[test]
#[ignore = "child process of a_lock_takeover_racing_cached_traffic_leaves_exact_counters_once_quiet"]
fn child_holds_the_free_list_lock_until_killed() {
    let heap =
        FreeListAllocator::attach(&SegmentOptions::shm(child_env("SHMKIT_TEST_SEGMENT"))).unwrap();
    let _ = heap.regions(&mut |_: Region| {
        println!("holding");
        std::thread::sleep(Duration::from_secs(60));
    });
    panic!("the parent never killed this child");
}

#[test]
fn a_lock_takeover_racing_cached_traffic_leaves_exact_counters_once_quiet() {
    let (options, _cleanup) = fresh_shm("fl-cache-takeover");
    let heap = FreeListAllocator::create(&options.clone().size(8 << 20)).unwrap();
    let switches = Switches::default();
    let ctx = MemContext::current();
    let mut held = Vec::new();
    let mut failures = Vec::new();
    const ROUNDS: usize = 24;
    std::thread::scope(|scope| {
        scope.spawn(|| cached_traffic_first(&heap, &switches));
        wait_for_rounds(&switches.rounds, 1);
        held = populate(&heap, 5000);
        for round in 0..ROUNDS {
            let mut child = spawn_self(
                "child_holds_the_free_list_lock_until_killed",
                &[("SHMKIT_TEST_SEGMENT", shm_name(&options))],
            )
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
            let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
            assert!(
                lines.any(|line| line.unwrap().contains("holding")),
                "the child never took the lock"
            );
            // SIGKILL while it holds the lock, as an OOM killer would.
            child.kill().unwrap();
            child.wait().unwrap();
            switches.run();
            // The next locker takes the lock over and rebuilds, while the
            // other thread keeps allocating and freeing through its cache.
            let big = heap.allocate_offset(&ctx, BIG, 16).unwrap();
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free_offset(&ctx, big) }.unwrap();
            switches.pause();
            let stats = heap.stats();
            if let Err(err) = heap.check() {
                failures.push(format!(
                    "round {round}: {} live counted, {} held: {err}",
                    stats.live_allocations,
                    held.len()
                ));
            }
        }
        switches.stop.store(true, Ordering::Release);
    });
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} lock takeovers that raced cached traffic left the counters wrong \
         (check stays wrong until the next rebuild):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// 4. Crash points (`--features crash-points`).
// ---------------------------------------------------------------------------

#[cfg(feature = "crash-points")]
mod crashes {
    use std::collections::BTreeSet;
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    /// The seal of a block (a copy of `seal` in `alloc/free_list/mod.rs`,
    /// checked against a real header below).
    fn seal(block: u64, size_free: u64, requested: u64) -> u64 {
        const SEAL_KEY: u64 = 0x6b1d_f3a5_9e27_c40f;
        let mut x = block.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            ^ size_free.rotate_left(23)
            ^ requested.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
            ^ SEAL_KEY;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }

    /// The child: allocates a block of 40 bytes and frees it (into its
    /// cache), then allocates 41 bytes from the cache with the point armed.
    #[test]
    #[ignore = "child process of the crash tests of free_list_cache"]
    fn child_dies_taking_a_cached_block() {
        let heap =
            FreeListAllocator::attach(&SegmentOptions::shm(child_env("SHMKIT_TEST_SEGMENT")))
                .unwrap();
        let ctx = MemContext::current();
        let block = heap.allocate_offset(&ctx, 40, 16).unwrap();
        println!("cached {block}");
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, block) }.unwrap();
        shmkit::crash_point::arm("free_list.cache.taken");
        let _ = heap.allocate_offset(&ctx, 41, 16);
        panic!("the child survived free_list.cache.taken");
    }

    /// Runs the child to its death; returns the heap and the block it was
    /// taking from its cache.
    fn killed_taking(tag: &str) -> (FreeListAllocator, u64, common::Cleanup) {
        let (options, cleanup) = fresh_shm(tag);
        let heap = FreeListAllocator::create(&options.clone().size(1 << 20)).unwrap();
        let output = spawn_self(
            "crashes::child_dies_taking_a_cached_block",
            &[("SHMKIT_TEST_SEGMENT", shm_name(&options))],
        )
        .output()
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGKILL),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let block: u64 = stdout
            .lines()
            .find_map(|line| line.split("cached ").nth(1)?.trim().parse().ok())
            .expect("the child named its block");
        (heap, block, cleanup)
    }

    /// A thread killed in `take_cached` after clearing the bit and before
    /// its final record leaves a live block nobody holds and a tentative
    /// record. No lock was held, so no locker settles it, and the hand-off
    /// log skips tentative records: only `recover` frees the block, so
    /// `check` must say the heap needs recovery, not that it is sound.
    #[test]
    fn a_cached_allocation_killed_before_its_record_is_reported_by_check() {
        let (heap, block, _cleanup) = killed_taking("fl-cache-taken");
        let ctx = MemContext::current();
        // Locked operations (a lock taker settles what a dead lock owner
        // left; here there is none).
        for _ in 0..3 {
            let big = heap.allocate_offset(&ctx, BIG, 16).unwrap();
            // SAFETY: nothing uses the block after it is freed.
            unsafe { heap.free_offset(&ctx, big) }.unwrap();
        }
        let handed: BTreeSet<u64> = heap.take_dead_handoffs().into_iter().collect();
        assert!(
            !handed.contains(&block),
            "the log hands out a block never handed out"
        );
        let stats = heap.stats();
        assert_eq!(
            stats.live_allocations, 1,
            "the block the child was taking stays allocated with nobody to free it"
        );
        let checked = heap.check();
        assert!(
            matches!(checked, Err(Error::NeedsRecovery { .. })),
            "a block only recover() can free ({block}, live, named by a dead thread's \
             tentative record) and check() says {checked:?}"
        );
    }

    /// A torn header beside a killed cached allocation: the state a kill
    /// between the length and its seal would leave had the bit been cleared
    /// first (the allocation now writes both while the block is still
    /// cached, so only a stray write makes it). The dead thread's operation
    /// is unfinished, so `check` calls it a crash's trace, `NeedsRecovery`,
    /// never corruption (see `tests/crash_points.rs`), and `recover` reseals.
    #[test]
    fn a_cached_allocation_killed_between_length_and_seal_is_not_corruption() {
        let (heap, payload, _cleanup) = killed_taking("fl-cache-torn");
        let block = payload - HEADER;
        let size_word = word(&heap, block).load(Ordering::Acquire);
        let size = size_word & !15;
        let seal_word = word(&heap, block + 16);
        let requested = word(&heap, block + 24).load(Ordering::Acquire);
        assert_eq!(requested, 41);
        assert_eq!(
            seal_word.load(Ordering::Acquire),
            seal(block, size, requested),
            "the copy of the seal function is out of date"
        );
        // The seal of the cached block (length 40) not yet replaced.
        seal_word.store(seal(block, size, 40), Ordering::Release);
        let checked = heap.check();
        assert!(
            matches!(checked, Ok(()) | Err(Error::NeedsRecovery { .. })),
            "a kill between two stores of take_cached: check says {checked:?}"
        );
        let report = common::recover_once_alone(&heap);
        heap.check()
            .unwrap_or_else(|e| panic!("after recovery ({report}): {e}"));
        assert_eq!(heap.stats().live_allocations, 0);
    }
}

// ---------------------------------------------------------------------------
// 5. What holds (these pass): exact refusal of racing double frees, cached
//    against cached and cached against locked; no block handed out twice
//    while rebuilds race the caches.
// ---------------------------------------------------------------------------

#[test]
fn racing_double_frees_are_refused_exactly() {
    let heap = private_heap(4 << 20);
    let barrier = std::sync::Barrier::new(3);
    let target = AtomicU64::new(0);
    let wins = AtomicU64::new(0);
    let refused = AtomicU64::new(0);
    let cached_won = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let parked = std::sync::Barrier::new(16);
    let release = AtomicBool::new(false);
    let claimed = std::sync::Barrier::new(2);
    const ROUNDS: u64 = 2000;
    let freer = |cached: bool| {
        let ctx = MemContext::current();
        // Claim a hand-off slot now: the first thread gets slot 0 (with a
        // cache); the other comes after 15 parked threads (no cache).
        let probe = heap.allocate_offset(&ctx, BIG, 16).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free_offset(&ctx, probe) }.unwrap();
        if cached {
            claimed.wait();
        }
        loop {
            barrier.wait();
            if done.load(Ordering::Acquire) {
                return;
            }
            let block = target.load(Ordering::Acquire);
            // SAFETY: a double free on purpose; the block is not used.
            match unsafe { heap.free_offset(&ctx, block) } {
                Ok(()) => {
                    wins.fetch_add(1, Ordering::AcqRel);
                    if cached {
                        cached_won.fetch_add(1, Ordering::AcqRel);
                    }
                }
                Err(Error::InvalidFree { .. }) => {
                    refused.fetch_add(1, Ordering::AcqRel);
                }
                Err(other) => panic!("{other}"),
            }
            barrier.wait();
        }
    };
    std::thread::scope(|scope| {
        let a = scope.spawn(|| freer(true));
        claimed.wait();
        for _ in 0..15 {
            scope.spawn(|| {
                let ctx = MemContext::current();
                let block = heap.allocate_offset(&ctx, BIG, 16).unwrap();
                parked.wait();
                while !release.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                // SAFETY: nothing uses the block after it is freed.
                unsafe { heap.free_offset(&ctx, block) }.unwrap();
            });
        }
        parked.wait();
        let b = scope.spawn(|| freer(false));
        let ctx = MemContext::current();
        for _ in 0..ROUNDS {
            target.store(
                heap.allocate_offset(&ctx, SMALL, 16).unwrap(),
                Ordering::Release,
            );
            barrier.wait();
            barrier.wait();
        }
        done.store(true, Ordering::Release);
        barrier.wait();
        a.join().unwrap();
        b.join().unwrap();
        release.store(true, Ordering::Release);
    });
    assert_eq!(wins.load(Ordering::Acquire), ROUNDS);
    assert_eq!(refused.load(Ordering::Acquire), ROUNDS);
    let cached_won = cached_won.load(Ordering::Acquire);
    assert!(
        cached_won > 0 && cached_won < ROUNDS,
        "both paths won races: {cached_won}"
    );
    heap.check().unwrap();
}

#[test]
fn no_block_is_handed_out_twice_while_repairs_race_the_caches() {
    let heap = private_heap(4 << 20);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..3u64)
            .map(|worker| {
                let heap = &heap;
                scope.spawn(move || {
                    let ctx = MemContext::current();
                    let mut rng = common::Rng(0x9e37_79b9 ^ ((worker + 1) * 0x1234_5677));
                    let mut mine: Vec<(u64, usize, u8)> = Vec::new();
                    for step in 0..60_000u64 {
                        if mine.len() < 64 && rng.below(2) == 0 {
                            let len = 1 + rng.below(230) as usize;
                            let offset = heap.allocate_offset(&ctx, len, 16).unwrap();
                            let byte = (worker as u8) << 6 | (step as u8 & 0x3f);
                            let ptr = heap.full_ptr(offset).unwrap();
                            // SAFETY: the block is ours, `len` bytes long.
                            unsafe { std::ptr::write_bytes(ptr.as_ptr(), byte, len) };
                            mine.push((offset, len, byte));
                        } else if !mine.is_empty() {
                            let (offset, len, byte) =
                                mine.swap_remove(rng.below(mine.len() as u64) as usize);
                            let ptr = heap.full_ptr(offset).unwrap();
                            // SAFETY: the block is ours, `len` bytes long.
                            let bytes = unsafe { std::slice::from_raw_parts(ptr.as_ptr(), len) };
                            assert!(
                                bytes.iter().all(|&b| b == byte),
                                "block {offset} was written by someone else: handed out twice"
                            );
                            // SAFETY: nothing uses the block after it is freed.
                            unsafe { heap.free_offset(&ctx, offset) }.unwrap();
                        }
                    }
                    for (offset, _, _) in mine {
                        // SAFETY: nothing uses the block after it is freed.
                        unsafe { heap.free_offset(&ctx, offset) }.unwrap();
                    }
                })
            })
            .collect();
        scope.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                heap.repair().unwrap();
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        for worker in workers {
            worker.join().unwrap();
        }
        stop.store(true, Ordering::Release);
    });
    // Structure sound (the counters are finding 3's business: one more
    // quiescent repair sets them).
    heap.repair().unwrap();
    heap.check().unwrap();
}
