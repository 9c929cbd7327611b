//! The rings across real processes: every MPMC message delivered exactly
//! once between three producer and three consumer processes; SPSC in order;
//! a consumer blocked in one process woken by a push in another; a full ring
//! holding its producer back until the consumer drains; roles enforced.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{child_env, fresh_shm, shm_name, spawn_self, spawn_workers, worker_stdout};
use shmkit::containers::{MpmcRing, SpscRing};
use shmkit::{Error, Offset, SegmentAllocator, SegmentOptions, ShmAllocator, SizeClassAllocator};

const PRODUCERS: u64 = 3;
const CONSUMERS: u64 = 3;
const PER_PRODUCER: u64 = 20_000;
/// The message that tells a consumer to stop.
const STOP: u64 = u64::MAX;

fn attach(name: &str) -> SizeClassAllocator {
    SizeClassAllocator::attach(&SegmentOptions::shm(name)).expect("attach the test segment")
}

/// Per-message delivery counts, published under the root `"seen"`.
fn seen_counts(heap: &SizeClassAllocator) -> &[AtomicU64] {
    let offset = heap
        .segment()
        .root::<AtomicU64>("seen")
        .expect("seen table");
    let total = PRODUCERS * PER_PRODUCER;
    let first = heap.segment().resolve_array(offset, total).unwrap();
    // SAFETY: the parent allocated `total` zeroed counters there and keeps
    // them for the whole test.
    unsafe { std::slice::from_raw_parts(first.as_ptr(), total as usize) }
}

#[test]
#[ignore = "child process of mpmc_delivers_every_message_exactly_once_across_processes"]
fn child_mpmc_peer() {
    let heap = attach(&child_env("SHMKIT_TEST_SEGMENT"));
    let worker: u64 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    let ring = MpmcRing::<u64>::open(&heap, heap.segment().root("ring").unwrap()).unwrap();
    if worker < PRODUCERS {
        for seq in 0..PER_PRODUCER {
            ring.push(worker << 32 | seq);
        }
        return;
    }
    let seen = seen_counts(&heap);
    // One consumer sees each producer's messages in the order they were sent.
    let mut last = [None::<u64>; PRODUCERS as usize];
    loop {
        let message = ring.pop();
        if message == STOP {
            break;
        }
        let (producer, seq) = (message >> 32, message & 0xffff_ffff);
        assert!(producer < PRODUCERS && seq < PER_PRODUCER, "{message:#x}");
        let previous = last[producer as usize].replace(seq);
        assert!(
            previous < Some(seq),
            "producer {producer}: {previous:?} then {seq}"
        );
        seen[(producer * PER_PRODUCER + seq) as usize].fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn mpmc_delivers_every_message_exactly_once_across_processes() {
    let (options, _cleanup) = fresh_shm("mpmc");
    let heap = SizeClassAllocator::create(&options.clone().size(8 << 20)).unwrap();
    let seen = heap
        .new_objs::<AtomicU64>((PRODUCERS * PER_PRODUCER) as usize)
        .unwrap();
    heap.segment().set_root("seen", seen.offset()).unwrap();
    // A small ring, so producers and consumers wait on each other often.
    let ring_offset = MpmcRing::<u64>::create(&heap, 64).unwrap();
    heap.segment().set_root("ring", ring_offset).unwrap();
    let ring = MpmcRing::open(&heap, ring_offset).unwrap();

    let workers = spawn_workers(
        "child_mpmc_peer",
        &shm_name(&options),
        (PRODUCERS + CONSUMERS) as usize,
    );
    let mut workers: Vec<_> = workers.into_iter().enumerate().collect();
    let consumers = workers.split_off(PRODUCERS as usize);
    for (worker, child) in workers {
        worker_stdout(worker, child);
    }
    for _ in 0..CONSUMERS {
        ring.push(STOP);
    }
    for (worker, child) in consumers {
        worker_stdout(worker, child);
    }
    let counts = seen_counts(&heap);
    let wrong: Vec<(usize, u64)> = counts
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .enumerate()
        .filter(|&(_, count)| count != 1)
        .take(5)
        .collect();
    assert!(
        wrong.is_empty(),
        "(message, deliveries) not once: {wrong:?}"
    );
    assert!(ring.is_empty());
}

#[test]
#[ignore = "child process of spsc_keeps_order_across_processes"]
fn child_spsc_producer() {
    let heap = attach(&child_env("SHMKIT_TEST_SEGMENT"));
    let offset = heap.segment().root("spsc").unwrap();
    let mut producer = SpscRing::<u64>::producer(&heap, offset).unwrap();
    // A second producer is refused while this one lives.
    assert!(matches!(
        SpscRing::<u64>::producer(&heap, offset),
        Err(Error::InUse { .. })
    ));
    for value in 0..100_000u64 {
        producer.push(value * 3);
    }
}

#[test]
fn spsc_keeps_order_across_processes() {
    let (options, _cleanup) = fresh_shm("spsc");
    let heap = SizeClassAllocator::create(&options.clone().size(4 << 20)).unwrap();
    let offset = SpscRing::<u64>::create(&heap, 128).unwrap();
    heap.segment().set_root("spsc", offset).unwrap();
    let mut consumer = SpscRing::<u64>::consumer(&heap, offset).unwrap();
    let child = spawn_self(
        "child_spsc_producer",
        &[("SHMKIT_TEST_SEGMENT", shm_name(&options))],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    for expected in 0..100_000u64 {
        let value = consumer
            .pop_timeout(Duration::from_secs(20))
            .expect("the producer stalled");
        assert_eq!(value, expected * 3);
    }
    worker_stdout(0, child);
    assert_eq!(consumer.try_pop(), None);
}

#[test]
#[ignore = "child process of a_push_in_one_process_wakes_a_pop_in_another"]
fn child_blocked_popper() {
    let heap = attach(&child_env("SHMKIT_TEST_SEGMENT"));
    let ring = MpmcRing::<u64>::open(&heap, heap.segment().root("ring").unwrap()).unwrap();
    let started = Instant::now();
    let value = ring.pop(); // sleeps: the ring is empty
    println!("got {value} after {:?}", started.elapsed());
}

#[test]
fn a_push_in_one_process_wakes_a_pop_in_another() {
    let (options, _cleanup) = fresh_shm("wake");
    let heap = SizeClassAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let offset: Offset<MpmcRing<u64>> = MpmcRing::create(&heap, 8).unwrap();
    heap.segment().set_root("ring", offset).unwrap();
    let ring = MpmcRing::open(&heap, offset).unwrap();
    let mut child = spawn_self(
        "child_blocked_popper",
        &[("SHMKIT_TEST_SEGMENT", shm_name(&options))],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the child returned from pop on an empty ring"
    );
    ring.push(41);
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the push never woke the child");
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = worker_stdout(0, child);
    assert!(out.contains("got 41"), "{out}");
}

#[test]
#[ignore = "child process of a_full_ring_holds_its_producer_back"]
fn child_overfilling_producer() {
    let heap = attach(&child_env("SHMKIT_TEST_SEGMENT"));
    let ring = MpmcRing::<u64>::open(&heap, heap.segment().root("ring").unwrap()).unwrap();
    let progress = heap.segment().root::<AtomicU64>("progress").unwrap();
    // SAFETY: the parent keeps the counter for the whole test.
    let progress = unsafe { heap.segment().resolve(progress).unwrap().as_ref() };
    for value in 0..48u64 {
        ring.push(value);
        progress.store(value + 1, Ordering::Release);
    }
}

#[test]
fn a_full_ring_holds_its_producer_back() {
    let (options, _cleanup) = fresh_shm("full");
    let heap = SizeClassAllocator::create(&options.clone().size(1 << 20)).unwrap();
    let offset: Offset<MpmcRing<u64>> = MpmcRing::create(&heap, 16).unwrap();
    heap.segment().set_root("ring", offset).unwrap();
    let progress = heap.new_obj(AtomicU64::new(0)).unwrap();
    heap.segment()
        .set_root("progress", progress.offset())
        .unwrap();
    // SAFETY: live for the whole test.
    let progress = unsafe { progress.local().as_ref() };
    let ring = MpmcRing::open(&heap, offset).unwrap();
    let child = spawn_self(
        "child_overfilling_producer",
        &[("SHMKIT_TEST_SEGMENT", shm_name(&options))],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while progress.load(Ordering::Acquire) < 16 {
        assert!(
            Instant::now() < deadline,
            "the producer never filled the ring"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        progress.load(Ordering::Acquire),
        16,
        "the producer went past a full ring"
    );
    for expected in 0..48u64 {
        assert_eq!(ring.pop_timeout(Duration::from_secs(10)), Some(expected));
    }
    worker_stdout(0, child);
    assert_eq!(progress.load(Ordering::Acquire), 48);
}

#[test]
fn rings_of_another_type_or_at_a_stray_offset_are_refused() {
    let heap =
        SizeClassAllocator::create(&SegmentOptions::memfd("rings-bad").size(1 << 20)).unwrap();
    let offset = MpmcRing::<u64>::create(&heap, 8).unwrap();
    let as_other = Offset::<MpmcRing<[u64; 2]>>::from_raw(offset.raw());
    assert!(MpmcRing::open(&heap, as_other).is_err());
    let as_spsc = Offset::<SpscRing<u64>>::from_raw(offset.raw());
    assert!(SpscRing::consumer(&heap, as_spsc).is_err());
    let plain = heap.new_obj([0u64; 64]).unwrap();
    assert!(MpmcRing::open(
        &heap,
        Offset::<MpmcRing<u64>>::from_raw(plain.offset().raw())
    )
    .is_err());
    assert!(matches!(
        MpmcRing::<u64>::create(&heap, 12),
        Err(Error::InvalidSize { .. })
    ));
    // A timed push on a full ring gives the value back.
    let ring = MpmcRing::open(&heap, offset).unwrap();
    for value in 0..8 {
        ring.push(value);
    }
    assert_eq!(ring.push_timeout(99, Duration::from_millis(20)), Err(99));
    assert_eq!(ring.try_push(98), Err(98));
}
