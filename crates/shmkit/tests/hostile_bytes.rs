//! Hostile bytes: a live segment of every allocator kind has bytes of its
//! header, its allocator state and its blocks overwritten, then is attached,
//! checked, allocated from and freed into. Every step may fail, but only
//! with an error: no panic, no crash, no read outside the mapping (which
//! would kill this process), no hang (a watchdog aborts a case that stalls).
//! A second property frees, resolves and sizes arbitrary offsets on a sound
//! allocator: each is refused and nothing changes.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::fresh_shm;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use shmkit::{AllocatorKind, AnyAllocator, Error, LinearAlloc, MemContext, Offset, SegmentOptions};

/// Segment size for every case: room for the size-class pages.
const SEGMENT: u64 = 4 << 20;
/// The longest one case may take before the watchdog calls it a hang.
const STALL: Duration = Duration::from_secs(60);

/// Cases finished, across both properties: the watchdog's sign of life.
static CASES: AtomicU64 = AtomicU64::new(0);
/// The case running now, for the watchdog to name when it fires.
static CURRENT: Mutex<String> = Mutex::new(String::new());

fn starting(case: String) {
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = case;
}

/// Starts (once) a thread that aborts the process when no case has
/// finished for [`STALL`]: a hang must fail the run, not freeze it.
fn watchdog() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        std::thread::spawn(|| {
            let mut last = (CASES.load(Ordering::Relaxed), Instant::now());
            loop {
                std::thread::sleep(Duration::from_millis(500));
                let now = CASES.load(Ordering::Relaxed);
                if now != last.0 {
                    last = (now, Instant::now());
                } else if last.1.elapsed() > STALL {
                    let case = CURRENT.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    eprintln!("hostile bytes: a case ran over {STALL:?} (a hang): {case}");
                    std::process::abort();
                }
            }
        });
    });
}

/// A segment of `kind` with live and freed blocks in it, and the offsets
/// still live.
fn populated(kind: AllocatorKind, options: &SegmentOptions) -> (AnyAllocator, Vec<u64>) {
    let heap = AnyAllocator::create(kind, &options.clone().size(SEGMENT)).expect("create");
    let carve = |linear: &dyn Fn(usize) -> shmkit::Result<u64>| -> Vec<u64> {
        [24usize, 100, 7, 512]
            .into_iter()
            .map(|size| linear(size).expect("carve"))
            .collect()
    };
    let live = match &heap {
        AnyAllocator::Bump(bump) => carve(&|size| Ok(bump.alloc_handle(size, 8)?.raw())),
        AnyAllocator::Stack(stack) => carve(&|size| Ok(stack.alloc_handle(size, 8)?.raw())),
        other => {
            let heap = other.as_shm_allocator().expect("frees blocks");
            let ctx = MemContext::default();
            let mut blocks: Vec<u64> = [16usize, 40, 64, 200, 1000, 3000, 24, 64, 128, 4096]
                .iter()
                .map(|&size| heap.allocate_offset(&ctx, size, 8).expect("allocate"))
                .collect();
            // Free every other block so free lists and bitmaps are non-trivial.
            let mut index = 0;
            blocks.retain(|&offset| {
                index += 1;
                // SAFETY: nothing uses the block after it is freed.
                index % 2 == 0 || unsafe { heap.free_offset(&ctx, offset) }.is_err()
            });
            blocks
        }
    };
    (heap, live)
}

/// Bytes in a segment header (format 2).
const HEADER_LEN: u64 = 2240;

/// Where a flip lands: the header, the allocator's state (between the
/// header and the data), or anywhere in the segment.
#[derive(Clone, Copy, Debug)]
enum Target {
    Header,
    State,
    Anywhere,
}

fn target_range(heap: &AnyAllocator, target: Target) -> (u64, u64) {
    let segment = heap.segment();
    let data = segment.data_offset();
    match target {
        Target::Header => (0, HEADER_LEN.min(data)),
        Target::State => (HEADER_LEN.min(data), data.max(HEADER_LEN + 1)),
        Target::Anywhere => (0, segment.size()),
    }
}

/// A lock word that names a live stranger (a flipped byte can turn the
/// owner into any running process) makes each locked operation wait out its
/// patience and fail: bounded, but slow, so the case stops at the first one.
fn lock_timed_out<T>(result: &shmkit::Result<T>) -> bool {
    matches!(result, Err(Error::LockTimeout { .. }))
}

/// Everything a process might do with what it attached; errors are fine.
/// Returns how many fresh blocks it got, or `None` when a lock timed out.
fn exercise(heap: &AnyAllocator, live: &[u64], stray: &[u64]) -> Option<usize> {
    if lock_timed_out(&heap.check()) {
        return None;
    }
    let _ = heap.stats();
    let mut regions = 0u64;
    if lock_timed_out(&heap.regions(&mut |_| regions += 1)) {
        return None;
    }
    let Some(alloc) = heap.as_shm_allocator() else {
        return Some(0);
    };
    let ctx = MemContext::default();
    for &offset in live.iter().chain(stray) {
        let _ = alloc.usable_size(offset);
        let _ = alloc.full_ptr(offset);
    }
    let mut fresh = Vec::new();
    for size in [8usize, 64, 300, 2048, 5000] {
        match alloc.allocate_offset(&ctx, size, 8) {
            Ok(offset) => fresh.push(offset),
            Err(Error::LockTimeout { .. }) => return None,
            Err(_) => {}
        }
    }
    for &offset in live.iter().chain(stray).chain(&fresh) {
        // SAFETY: nothing uses the block after it is freed.
        if lock_timed_out(&unsafe { alloc.free_offset(&ctx, offset) }) {
            return None;
        }
    }
    (!lock_timed_out(&alloc.check())).then_some(fresh.len())
}

fn kinds() -> impl Strategy<Value = AllocatorKind> {
    prop::sample::select(AnyAllocator::KINDS.to_vec())
}

fn targets() -> impl Strategy<Value = Target> {
    prop_oneof![
        Just(Target::Header),
        Just(Target::State),
        Just(Target::Anywhere)
    ]
}

/// Cases per property: enough to reach every kind and target many times,
/// few enough for the normal suite (`SHMKIT_HOSTILE_CASES` raises it).
fn cases() -> u32 {
    std::env::var("SHMKIT_HOSTILE_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(512)
}

fn runner() -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    })
}

#[test]
fn flipped_bytes_give_errors_never_crashes() {
    watchdog();
    let inputs = (
        kinds(),
        targets(),
        // (position in the target range as a fraction, value to xor in)
        prop::collection::vec((0.0f64..1.0, 1u8..=255), 1..12),
        prop::collection::vec(any::<u64>(), 0..6),
    );
    // Per target (header, state, anywhere): segments attached, and those
    // on which the exercise then got fresh blocks.
    let attached: [AtomicU64; 3] = Default::default();
    let allocated_in: [AtomicU64; 3] = Default::default();
    let timed_out = AtomicU64::new(0);
    let ran = AtomicU64::new(0);
    runner()
        .run(&inputs, |(kind, target, flips, stray)| {
            starting(format!(
                "{kind:?} {target:?} flips {flips:?} stray {stray:?}"
            ));
            let (options, _cleanup) = fresh_shm("hostile");
            let (heap, live) = populated(kind, &options);
            let (from, to) = target_range(&heap, target);
            let size = heap.segment().size();
            let base = heap.segment().base().as_ptr();
            for &(at, xor) in &flips {
                let offset = (from + ((to - from) as f64 * at) as u64).min(size - 1);
                // SAFETY: `offset` is inside the mapping; the test owns the
                // segment and holds no reference into it across the write.
                unsafe { *base.add(offset as usize) ^= xor };
            }
            drop(heap);
            // A second process's view: attach whatever is there now.
            if let Ok(heap) = AnyAllocator::attach(&options) {
                attached[target as usize].fetch_add(1, Ordering::Relaxed);
                match exercise(&heap, &live, &stray) {
                    None => {
                        timed_out.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(0) => {}
                    Some(_) => {
                        allocated_in[target as usize].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            ran.fetch_add(1, Ordering::Relaxed);
            CASES.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    let ran = ran.into_inner();
    let attached = attached.map(AtomicU64::into_inner);
    let allocated_in = allocated_in.map(AtomicU64::into_inner);
    eprintln!(
        "hostile bytes: {ran} corrupted segments; attached (header, state, anywhere): \
         {attached:?}, of which fresh blocks came from {allocated_in:?}; {} stopped by a lock \
         timeout",
        timed_out.into_inner()
    );
    assert_eq!(ran, u64::from(cases()));
    // The point is what a corrupted segment does once attached: segments
    // with damaged allocator state or data must have been attached and
    // allocated from, not only refused at the door.
    for (target, what) in [(Target::State, "state"), (Target::Anywhere, "anywhere")] {
        assert!(
            allocated_in[target as usize] > 0,
            "no segment with bytes flipped in the {what} range was attached and allocated from"
        );
    }
}

#[test]
fn arbitrary_offsets_are_refused_and_change_nothing() {
    watchdog();
    let inputs = (
        prop::sample::select(vec![
            AllocatorKind::Pool,
            AllocatorKind::FreeList,
            AllocatorKind::Buddy,
            AllocatorKind::SizeClass,
            AllocatorKind::ThreadLocal,
        ]),
        prop::collection::vec(any::<u64>(), 1..16),
        prop::collection::vec(-64i64..64, 1..16),
    );
    let refused = AtomicU64::new(0);
    runner()
        .run(&inputs, |(kind, stray, near)| {
            starting(format!("{kind:?} stray {stray:?} near {near:?}"));
            let (options, _cleanup) = fresh_shm("stray");
            let (heap, live) = populated(kind, &options);
            let alloc = heap.as_shm_allocator().expect("frees blocks");
            let ctx = MemContext::default();
            let before = alloc.stats();
            // Offsets near live blocks (inside them, just before, just
            // after) are the likeliest to fool a check; block starts excluded.
            let close = live
                .iter()
                .zip(near.iter().cycle())
                .filter_map(|(&block, &delta)| {
                    let offset = block.checked_add_signed(delta)?;
                    (!live.contains(&offset)).then_some(offset)
                });
            let strays: Vec<u64> = stray
                .iter()
                .copied()
                .filter(|o| !live.contains(o))
                .chain(close)
                .collect();
            for &offset in &strays {
                // SAFETY: the block is not used after this free (a repeat is refused).
                let freed = unsafe { alloc.free_offset(&ctx, offset) };
                prop_assert!(freed.is_err(), "freed {offset}");
                let _ = heap.segment().resolve(Offset::<u64>::from_raw(offset));
                let _ = alloc.usable_size(offset);
            }
            refused.fetch_add(strays.len() as u64, Ordering::Relaxed);
            prop_assert_eq!(alloc.stats(), before);
            prop_assert!(alloc.check().is_ok());
            for &offset in &live {
                // SAFETY: the block is not used after this free (a repeat is refused).
                let freed = unsafe { alloc.free_offset(&ctx, offset) };
                prop_assert!(freed.is_ok());
            }
            prop_assert_eq!(alloc.stats().live_allocations, 0);
            CASES.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    eprintln!(
        "hostile offsets: {} stray offsets refused over {} allocators",
        refused.into_inner(),
        cases()
    );
}

/// Initial and maximum size of the growable segments below.
const GROWABLE: (u64, u64) = (1 << 20, 64 << 20);

/// Where the header keeps the segment's current size (format 2).
const SIZE_WORD: u64 = 32;

/// A populated growable segment of `kind`; its live offsets.
fn growable(kind: AllocatorKind, options: &SegmentOptions) -> (AnyAllocator, Vec<u64>) {
    let options = options.clone().max_size(GROWABLE.1);
    let heap = AnyAllocator::create(kind, &options.clone().size(GROWABLE.0)).expect("create");
    let live = match heap.as_shm_allocator() {
        Some(alloc) => [24usize, 4000, 100]
            .iter()
            .filter_map(|&size| alloc.allocate_offset(&MemContext::default(), size, 8).ok())
            .collect(),
        None => Vec::new(),
    };
    (heap, live)
}

/// The header word at byte `at` of `heap`'s segment.
fn header_word(heap: &AnyAllocator, at: u64) -> &AtomicU64 {
    assert!(at % 8 == 0 && at + 8 <= heap.segment().data_offset());
    // SAFETY: an aligned word of the header, inside the mapping (checked
    // above); an atomic, valid for any bytes; it lives as long as `heap`.
    unsafe {
        &*heap
            .segment()
            .base()
            .as_ptr()
            .add(at as usize)
            .cast::<AtomicU64>()
    }
}

/// Everything a process that attached a segment before it started to lie
/// about itself does with it: allocations that grow it, offsets near the
/// maximum, reads of a read-only attachment past what exists. Errors are
/// fine; a fault (SIGBUS past the object's end) would kill the process.
fn exercise_attached(heap: &AnyAllocator, reader: Option<&shmkit::ReadOnlySegment>, live: &[u64]) {
    let far = [GROWABLE.1 / 2, GROWABLE.1 - 4096, GROWABLE.0 + 8192];
    let segment = heap.segment();
    for &offset in &far {
        if let Ok(ptr) = segment.resolve(Offset::<u64>::from_raw(offset)) {
            // A resolved offset must be backed: touch it.
            // SAFETY: `resolve` vouched for a whole, aligned u64 there.
            let _ = unsafe { ptr.as_ptr().read_volatile() };
        }
    }
    // Larger than the initial size: it must grow the segment (or fail).
    const BIG: usize = 2 << 20;
    let block = match heap {
        AnyAllocator::Bump(bump) => bump.alloc(BIG, 8).ok(),
        AnyAllocator::Stack(stack) => stack.alloc(BIG, 8).ok(),
        other => {
            let _ = exercise(other, live, &far);
            other.as_shm_allocator().and_then(|alloc| {
                let offset = alloc.allocate_offset(&MemContext::default(), BIG, 8).ok()?;
                alloc.full_ptr(offset).ok()
            })
        }
    };
    if let Some(block) = block {
        // SAFETY: a fresh block of `BIG` bytes, this process's alone.
        unsafe { std::ptr::write_bytes(block.as_ptr(), 0x5a, BIG) };
    }
    if let Some(reader) = reader {
        let mut bytes = [0u8; 64];
        for &offset in &far {
            let _ = reader.read_bytes(offset, &mut bytes);
        }
    }
}

#[test]
fn every_header_word_of_an_attached_growable_segment_gives_errors_never_faults() {
    watchdog();
    let mut cases = 0;
    for kind in AnyAllocator::KINDS {
        // The header's fields (the roots table after them holds names).
        for at in (0..256u64).step_by(8) {
            for value in [u64::MAX, GROWABLE.1, GROWABLE.1 - 4096, GROWABLE.0 * 3] {
                starting(format!("{kind:?} header word at {at} = {value:#x}"));
                let (options, _cleanup) = fresh_shm("hostile-grow");
                let (heap, live) = growable(kind, &options);
                let attached = AnyAllocator::attach(&options).expect("attach");
                let reader = shmkit::ReadOnlySegment::attach(&options).ok();
                header_word(&heap, at).store(value, Ordering::Relaxed);
                exercise_attached(&attached, reader.as_ref(), &live);
                // And a process attaching it now: refused, or exercised.
                if let Ok(late) = AnyAllocator::attach(&options) {
                    exercise_attached(&late, None, &live);
                }
                cases += 1;
                CASES.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    assert_eq!(cases, AnyAllocator::KINDS.len() * 32 * 4);
}

#[test]
#[ignore = "child process of a_lying_size_word_faults_no_attached_process"]
fn child_exercise_when_the_size_lies() {
    let options = SegmentOptions::shm(common::child_env("SHMKIT_TEST_SEGMENT"));
    let heap = AnyAllocator::attach(&options).expect("attach");
    let reader = shmkit::ReadOnlySegment::attach(&options).expect("attach read-only");
    println!("attached");
    let started = Instant::now();
    while header_word(&heap, SIZE_WORD).load(Ordering::Acquire) != GROWABLE.1 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the size never lied"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    exercise_attached(&heap, Some(&reader), &[]);
    println!("survived");
}

#[test]
fn a_lying_size_word_faults_no_attached_process() {
    use std::io::{BufRead, BufReader};
    for kind in AnyAllocator::KINDS {
        let (options, _cleanup) = fresh_shm("hostile-size");
        let (heap, _live) = growable(kind, &options);
        let name = common::shm_name(&options);
        let mut children: Vec<_> = (0..3)
            .map(|_| {
                common::spawn_self(
                    "child_exercise_when_the_size_lies",
                    &[("SHMKIT_TEST_SEGMENT", name.clone())],
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("start a child")
            })
            .collect();
        let mut outputs: Vec<_> = children
            .iter_mut()
            .map(|child| BufReader::new(child.stdout.take().expect("piped")))
            .collect();
        for output in &mut outputs {
            let mut seen = String::new();
            while !seen.contains("attached") {
                let read = output.read_line(&mut seen).expect("read");
                assert!(read > 0, "{kind:?}: a child ended before attaching: {seen}");
            }
        }
        // Every process has it attached; now the size word lies.
        header_word(&heap, SIZE_WORD).store(GROWABLE.1, Ordering::Release);
        for (child, output) in children.iter_mut().zip(&mut outputs) {
            let mut rest = String::new();
            std::io::Read::read_to_string(output, &mut rest).expect("read");
            let status = child.wait().expect("wait");
            assert!(
                status.success() && rest.contains("survived"),
                "{kind:?}: an attached process ended with {status}: {rest}"
            );
        }
    }
}
