//! The standard workloads, run by one worker against anything that
//! allocates: the same code for shmkit's allocators and for the peers.

use std::fmt;
use std::hint::black_box;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// The workloads of `shmkit bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Allocate 64 B and free it at once.
    Pair64,
    /// 1,024 live blocks of random sizes 16..=4096 B; each step frees one at
    /// random and allocates a new one in its place.
    Churn,
    /// N blocks of 64 B (1,000,000 by default), then give them all back.
    Bulk,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Pair64, Workload::Churn, Workload::Bulk];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Pair64 => "pair64",
            Workload::Churn => "churn",
            Workload::Bulk => "bulk",
        }
    }

    pub fn from_name(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How many workers run a workload at once, and as what: threads of this
/// process on one allocator, or processes on one segment (process-local
/// peers: one heap each). Written `1t`, `2t`, `2p`, `4t`, `4p`, ...
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Mode {
    workers: u32,
    processes: bool,
}

impl Mode {
    pub const ONE_THREAD: Mode = Mode::threads(1);
    pub const TWO_THREADS: Mode = Mode::threads(2);
    pub const TWO_PROCESSES: Mode = Mode::processes(2);
    /// The modes measured by default.
    pub const ALL: [Mode; 3] = [Mode::ONE_THREAD, Mode::TWO_THREADS, Mode::TWO_PROCESSES];
    /// The most workers a mode may have.
    pub const MAX_WORKERS: u32 = 64;

    pub const fn threads(workers: u32) -> Mode {
        Mode {
            workers,
            processes: false,
        }
    }

    pub const fn processes(workers: u32) -> Mode {
        Mode {
            workers,
            processes: true,
        }
    }

    pub fn is_processes(self) -> bool {
        self.processes
    }

    pub fn name(self) -> String {
        format!("{}{}", self.workers, if self.processes { 'p' } else { 't' })
    }

    pub fn from_name(name: &str) -> Option<Mode> {
        let (count, kind) = name.split_at(name.len().checked_sub(1)?);
        let workers: u32 = count.parse().ok()?;
        if !(1..=Mode::MAX_WORKERS).contains(&workers) {
            return None;
        }
        match kind {
            "t" => Some(Mode::threads(workers)),
            "p" => Some(Mode::processes(workers)),
            _ => None,
        }
    }

    /// For `--modes`: a clear error for a bad name.
    pub fn parse(name: &str) -> Result<Mode, String> {
        Mode::from_name(name).ok_or_else(|| {
            format!(
                "`{name}` is not a mode: a worker count from 1 to {} and `t` (threads) or \
                 `p` (processes), such as 1t, 2t, 2p, 4p",
                Mode::MAX_WORKERS
            )
        })
    }

    pub fn workers(self) -> u64 {
        u64::from(self.workers)
    }

    pub fn describe(self) -> String {
        let (one, many) = if self.processes {
            ("process", "processes")
        } else {
            ("thread", "threads")
        };
        format!(
            "{} {}",
            self.workers,
            if self.workers == 1 { one } else { many }
        )
    }

    /// Table order: fewer workers first, threads before processes.
    pub fn rank(self) -> (u32, bool) {
        (self.workers, self.processes)
    }
}

/// Which order an allocator can take its blocks back in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discipline {
    /// Any block, any time.
    AnyOrder,
    /// Only the most recent live block (a stack); one worker at a time.
    Lifo,
    /// No single frees: everything goes at once (a bump allocator).
    BumpOnly,
}

impl Discipline {
    /// Whether a workload makes sense for this discipline in this mode.
    pub fn supports(self, workload: Workload, mode: Mode) -> bool {
        match self {
            Discipline::AnyOrder => true,
            Discipline::Lifo => mode == Mode::ONE_THREAD && workload != Workload::Churn,
            Discipline::BumpOnly => workload == Workload::Bulk,
        }
    }
}

/// One worker's handle on an allocator: a token per block (an address or an
/// offset, never zero).
pub trait Worker {
    /// Allocates `size` bytes aligned to 8; `None` when out of memory.
    fn alloc(&mut self, size: usize) -> Option<NonZeroUsize>;
    /// Frees a block from [`alloc`](Self::alloc); false if refused.
    fn free(&mut self, token: NonZeroUsize, size: usize) -> bool;
    /// For [`Discipline::BumpOnly`]: gives back everything this worker
    /// owns alone (a shared cursor is reset by the coordinator instead).
    fn release_all(&mut self) {}
}

/// Sizes of the churn workload.
const CHURN_LIVE: usize = 1024;
const CHURN_MIN: u64 = 16;
const CHURN_MAX: u64 = 4096;

/// xorshift64*: deterministic sizes and slots, no dependency.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

fn churn_size(rng: &mut u64) -> usize {
    (CHURN_MIN + next_random(rng) % (CHURN_MAX - CHURN_MIN + 1)) as usize
}

/// A workload bound to one worker, kept across rounds (the churn live set
/// is built once, outside the timed rounds).
pub struct Runner<W: Worker> {
    worker: W,
    workload: Workload,
    discipline: Discipline,
    rng: u64,
    live: Vec<(NonZeroUsize, usize)>,
    bulk: Vec<NonZeroUsize>,
    allocations: u64,
    bytes: u64,
}

/// Who ran a workload and what it asked for: the process and thread, the
/// allocations it made and the bytes it asked for in them (summed from the
/// very sizes handed to the allocator), so a report can show that a row
/// ran with the workers and block sizes its table names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    pub pid: u32,
    pub thread: u32,
    pub allocations: u64,
    pub bytes: u64,
}

impl Census {
    /// As a worker process reports it: `PID THREAD ALLOCATIONS BYTES`.
    pub fn to_words(self) -> String {
        format!(
            "{} {} {} {}",
            self.pid, self.thread, self.allocations, self.bytes
        )
    }

    pub fn from_words(words: &str) -> Option<Census> {
        let mut numbers = words.split_whitespace().map(str::parse::<u64>);
        let mut next = || numbers.next()?.ok();
        Some(Census {
            pid: u32::try_from(next()?).ok()?,
            thread: u32::try_from(next()?).ok()?,
            allocations: next()?,
            bytes: next()?,
        })
    }
}

/// The calling thread's kernel id.
fn current_thread() -> u32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as u32 }
}

impl<W: Worker> Runner<W> {
    /// Prepares `workload` on `worker`; `seed` makes workers differ.
    pub fn new(
        mut worker: W,
        workload: Workload,
        discipline: Discipline,
        seed: u64,
    ) -> Result<Self, String> {
        let mut rng = seed | 1;
        let mut live = Vec::new();
        let mut bytes = 0;
        if workload == Workload::Churn {
            live.reserve(CHURN_LIVE);
            for _ in 0..CHURN_LIVE {
                let size = churn_size(&mut rng);
                let token = worker
                    .alloc(size)
                    .ok_or("out of memory building the churn set")?;
                live.push((token, size));
                bytes += size as u64;
            }
        }
        Ok(Runner {
            worker,
            workload,
            discipline,
            rng,
            allocations: live.len() as u64,
            bytes,
            live,
            bulk: Vec::new(),
        })
    }

    /// What this runner asked for so far, seen from the calling thread.
    pub fn census(&self) -> Census {
        Census {
            pid: std::process::id(),
            thread: current_thread(),
            allocations: self.allocations,
            bytes: self.bytes,
        }
    }

    /// Runs `ops` operations (pairs, churn steps or bulk blocks) and
    /// returns how long they took.
    pub fn round(&mut self, ops: u64) -> Result<Duration, String> {
        let start = Instant::now();
        match self.workload {
            Workload::Pair64 => self.pair64(ops)?,
            Workload::Churn => self.churn(ops)?,
            Workload::Bulk => self.bulk(ops)?,
        }
        Ok(start.elapsed())
    }

    fn pair64(&mut self, ops: u64) -> Result<(), String> {
        let mut bytes = 0;
        for _ in 0..ops {
            let size = black_box(64);
            let token = self.worker.alloc(size).ok_or(OUT_OF_MEMORY)?;
            bytes += size as u64;
            if !self.worker.free(black_box(token), size) {
                return Err(REFUSED.into());
            }
        }
        self.allocations += ops;
        self.bytes += bytes;
        Ok(())
    }

    fn churn(&mut self, ops: u64) -> Result<(), String> {
        for _ in 0..ops {
            let slot = (next_random(&mut self.rng) % CHURN_LIVE as u64) as usize;
            let (token, size) = self.live[slot];
            if !self.worker.free(token, size) {
                return Err(REFUSED.into());
            }
            let size = churn_size(&mut self.rng);
            let token = self.worker.alloc(size).ok_or(OUT_OF_MEMORY)?;
            self.live[slot] = (token, size);
            self.bytes += size as u64;
        }
        self.allocations += ops;
        Ok(())
    }

    fn bulk(&mut self, blocks: u64) -> Result<(), String> {
        self.bulk.reserve(blocks as usize);
        let mut bytes = 0;
        for _ in 0..blocks {
            let size = black_box(64);
            let token = self.worker.alloc(size).ok_or(OUT_OF_MEMORY)?;
            bytes += size as u64;
            self.bulk.push(token);
        }
        self.allocations += blocks;
        self.bytes += bytes;
        let refused = match self.discipline {
            Discipline::AnyOrder => self.bulk.drain(..).any(|t| !self.worker.free(t, 64)),
            Discipline::Lifo => self.bulk.drain(..).rev().any(|t| !self.worker.free(t, 64)),
            Discipline::BumpOnly => {
                self.bulk.clear();
                self.worker.release_all();
                false
            }
        };
        if refused {
            return Err(REFUSED.into());
        }
        Ok(())
    }

    /// Frees what the workload still holds (the churn set) and hands the
    /// worker back.
    pub fn finish(mut self) -> Result<W, String> {
        for (token, size) in std::mem::take(&mut self.live) {
            if !self.worker.free(token, size) {
                return Err(REFUSED.into());
            }
        }
        Ok(self.worker)
    }
}

const OUT_OF_MEMORY: &str = "out of memory";
const REFUSED: &str = "a free was refused";

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn modes_read_back_as_they_are_named() {
        for mode in [
            Mode::ONE_THREAD,
            Mode::processes(1),
            Mode::threads(7),
            Mode::processes(64),
        ] {
            assert_eq!(Mode::from_name(&mode.name()), Some(mode));
        }
        assert_eq!(Mode::TWO_PROCESSES.name(), "2p");
        assert_eq!(Mode::ONE_THREAD.describe(), "1 thread");
        assert_eq!(Mode::processes(4).describe(), "4 processes");
        for bad in ["", "t", "0t", "65p", "2", "2x", "-1t", "1.5t"] {
            assert_eq!(Mode::from_name(bad), None, "{bad}");
        }
        assert!(Mode::threads(2).rank() < Mode::processes(2).rank());
        assert!(Mode::processes(2).rank() < Mode::threads(3).rank());
    }

    /// Counts live blocks and refuses unknown or repeated frees.
    #[derive(Default)]
    struct Ledger {
        next: usize,
        live: HashMap<usize, usize>,
        allocs: u64,
        stack: Vec<usize>,
    }

    impl Worker for Ledger {
        fn alloc(&mut self, size: usize) -> Option<NonZeroUsize> {
            self.next += 1;
            self.allocs += 1;
            self.live.insert(self.next, size);
            self.stack.push(self.next);
            NonZeroUsize::new(self.next)
        }
        fn free(&mut self, token: NonZeroUsize, size: usize) -> bool {
            self.stack.retain(|&t| t != token.get());
            self.live.remove(&token.get()) == Some(size)
        }
        fn release_all(&mut self) {
            self.live.clear();
        }
    }

    fn run(workload: Workload, discipline: Discipline, ops: u64) -> Runner<Ledger> {
        let mut runner = Runner::new(Ledger::default(), workload, discipline, 7).unwrap();
        runner.round(ops).unwrap();
        runner
    }

    #[test]
    fn pair64_allocates_and_frees_each_block() {
        let runner = run(Workload::Pair64, Discipline::AnyOrder, 100);
        assert_eq!(runner.worker.allocs, 100);
        assert!(runner.worker.live.is_empty());
    }

    #[test]
    fn churn_keeps_its_live_set_and_finish_gives_it_back() {
        let runner = run(Workload::Churn, Discipline::AnyOrder, 5000);
        assert_eq!(runner.worker.live.len(), CHURN_LIVE);
        assert_eq!(runner.worker.allocs, CHURN_LIVE as u64 + 5000);
        assert!(runner
            .worker
            .live
            .values()
            .all(|&s| (CHURN_MIN as usize..=CHURN_MAX as usize).contains(&s)));
        let ledger = runner.finish().unwrap();
        assert!(ledger.live.is_empty());
    }

    #[test]
    fn bulk_frees_in_the_order_the_discipline_needs() {
        let runner = run(Workload::Bulk, Discipline::AnyOrder, 1000);
        assert_eq!(runner.worker.allocs, 1000);
        assert!(runner.worker.live.is_empty());
        let runner = run(Workload::Bulk, Discipline::Lifo, 1000);
        assert!(runner.worker.live.is_empty());
        let runner = run(Workload::Bulk, Discipline::BumpOnly, 1000);
        assert!(runner.worker.live.is_empty(), "release_all was not called");
    }

    #[test]
    fn a_refused_free_is_an_error() {
        struct Refuses;
        impl Worker for Refuses {
            fn alloc(&mut self, _: usize) -> Option<NonZeroUsize> {
                NonZeroUsize::new(8)
            }
            fn free(&mut self, _: NonZeroUsize, _: usize) -> bool {
                false
            }
        }
        let mut runner = Runner::new(Refuses, Workload::Pair64, Discipline::AnyOrder, 1).unwrap();
        assert_eq!(runner.round(1).unwrap_err(), REFUSED);
    }

    #[test]
    fn disciplines_skip_what_they_cannot_do() {
        assert!(!Discipline::BumpOnly.supports(Workload::Pair64, Mode::ONE_THREAD));
        assert!(Discipline::BumpOnly.supports(Workload::Bulk, Mode::TWO_PROCESSES));
        assert!(!Discipline::Lifo.supports(Workload::Churn, Mode::ONE_THREAD));
        assert!(!Discipline::Lifo.supports(Workload::Pair64, Mode::TWO_THREADS));
        assert!(Discipline::Lifo.supports(Workload::Bulk, Mode::ONE_THREAD));
    }
}
