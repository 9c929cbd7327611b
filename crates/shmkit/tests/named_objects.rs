//! Named objects across real processes: `find_or_construct` races agree on
//! one object per name, and processes SIGKILLed in the middle of directory
//! operations leave a directory the others keep using.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{child_env, fresh_shm, shm_name, spawn_workers, worker_stdout, Rng};
use shmkit::named::NamedObjects;
use shmkit::{
    Error, SegmentAllocator, SegmentOptions, ShmAllocator, ShmMutex, ShmVec, SizeClassAllocator,
};

const RACERS: usize = 4;
const NAMES: u64 = 300;

fn attach(name: &str) -> SizeClassAllocator {
    SizeClassAllocator::attach(&SegmentOptions::shm(name)).expect("attach the test segment")
}

/// Waits until the parent sets the start word, so all racers begin at once.
fn wait_for_start(heap: &SizeClassAllocator) {
    let start = heap
        .segment()
        .root::<AtomicU64>("start")
        .expect("start word");
    // SAFETY: the parent published an AtomicU64 there and keeps it.
    let start = unsafe { heap.segment().resolve(start).unwrap().as_ref() };
    let deadline = Instant::now() + Duration::from_secs(20);
    while start.load(Ordering::Acquire) == 0 {
        assert!(Instant::now() < deadline, "never told to start");
        std::hint::spin_loop();
    }
}

#[test]
#[ignore = "child process of racing_processes_get_one_object_per_name"]
fn child_find_or_construct_racer() {
    let heap = attach(&child_env("SHMKIT_TEST_SEGMENT"));
    let worker: u64 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    wait_for_start(&heap);
    // Opening races too: nobody has created the directory yet.
    let names = NamedObjects::open(&heap).unwrap();
    // Each racer walks the names in its own order, to collide in the middle.
    let mut order: Vec<u64> = (0..NAMES).collect();
    if worker % 2 == 1 {
        order.reverse();
    }
    for i in order {
        let counter = names
            .find_or_construct(&format!("counter-{i}"), || AtomicU64::new(0))
            .unwrap();
        // SAFETY: nobody destroys the counters during the test.
        unsafe { counter.local().as_ref() }.fetch_add(1, Ordering::Relaxed);
        println!("hit {i} {}", counter.offset().raw());
    }
}

#[test]
fn racing_processes_get_one_object_per_name() {
    let (options, _cleanup) = fresh_shm("named-race");
    let heap = SizeClassAllocator::create(&options.clone().size(8 << 20)).unwrap();
    let start = heap.new_obj(AtomicU64::new(0)).unwrap();
    heap.segment().set_root("start", start.offset()).unwrap();
    let workers = spawn_workers("child_find_or_construct_racer", &shm_name(&options), RACERS);
    // SAFETY: the block is live for the whole test.
    unsafe { start.local().as_ref() }.store(1, Ordering::Release);

    let mut seen: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (worker, child) in workers.into_iter().enumerate() {
        for line in worker_stdout(worker, child).lines() {
            // The harness prints its own text, on the first line too.
            let Some(hit) = line.split_once("hit ").map(|(_, hit)| hit) else {
                continue;
            };
            let mut fields = hit.split(' ').map(|field| field.parse::<u64>().unwrap());
            let (name, offset) = (fields.next().unwrap(), fields.next().unwrap());
            seen.entry(name).or_default().push(offset);
        }
    }
    assert_eq!(seen.len() as u64, NAMES);
    let names = NamedObjects::open(&heap).unwrap();
    for (i, offsets) in &seen {
        assert_eq!(offsets.len(), RACERS, "counter-{i}");
        assert!(
            offsets.iter().all(|&offset| offset == offsets[0]),
            "counter-{i} resolved to several objects: {offsets:?}"
        );
        let counter = names
            .find::<AtomicU64>(&format!("counter-{i}"))
            .unwrap()
            .unwrap();
        assert_eq!(counter.offset().raw(), offsets[0]);
        // SAFETY: live object.
        let hits = unsafe { counter.local().as_ref() }.load(Ordering::Relaxed);
        assert_eq!(
            hits, RACERS as u64,
            "counter-{i}: an increment went elsewhere"
        );
    }
    assert_eq!(names.len().unwrap() as u64, NAMES);
    names.check().unwrap();
    heap.check().unwrap();
    // Losers freed their copies: what is left is the start word, the
    // directory and its table, and a value and a name per counter.
    assert_eq!(heap.stats().live_allocations, 3 + 2 * NAMES);
}

#[test]
#[ignore = "child process of directory_operations_survive_sigkill"]
fn child_directory_churner() {
    let heap = attach(&child_env("SHMKIT_TEST_SEGMENT"));
    let worker: u64 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    let names = NamedObjects::open(&heap).unwrap();
    let mut rng = Rng(worker + 1);
    println!("ready");
    loop {
        let name = format!("churn-{}", rng.below(64));
        let result = match rng.below(3) {
            0 => names.construct(&name, [worker; 4]).map(|_| ()),
            // SAFETY: nothing uses the block after it is freed.
            1 => unsafe { names.destroy::<[u64; 4]>(&name) },
            _ => names
                .find_or_construct(&name, || [worker; 4])
                .map(|ptr| assert!(!ptr.is_null())),
        };
        match result {
            Ok(()) | Err(Error::NameExists { .. } | Error::NameNotFound { .. }) => {}
            Err(other) => panic!("worker {worker}: {other}"),
        }
    }
}

#[test]
fn directory_operations_survive_sigkill() {
    let (options, _cleanup) = fresh_shm("named-kill");
    let heap = SizeClassAllocator::create(&options.clone().size(16 << 20)).unwrap();
    let names = NamedObjects::open(&heap).unwrap();
    let segment = shm_name(&options);
    let mut rng = Rng(7);
    let mut kills = 0;
    for round in 0..12 {
        let mut workers = spawn_workers("child_directory_churner", &segment, 3);
        std::thread::sleep(Duration::from_millis(20 + rng.below(60)));
        // Kill one mid-operation, let the others go on for a while (they
        // must get past whatever it held), then stop them all.
        let victim = (round % 3) as usize;
        workers[victim].kill().unwrap();
        kills += 1;
        std::thread::sleep(Duration::from_millis(50));
        for (index, worker) in workers.iter_mut().enumerate() {
            if index != victim {
                let exited = worker.try_wait().unwrap();
                assert!(
                    exited.is_none(),
                    "a surviving worker exited on its own ({exited:?}); see its stderr"
                );
            }
            let _ = worker.kill();
            let _ = worker.wait();
        }
        kills += 2;
        // The next caller mends whatever a victim held.
        names.check().unwrap();
    }
    for object in names.list().unwrap() {
        let found = names.find::<[u64; 4]>(&object.name).unwrap().unwrap();
        // SAFETY: live object; every value written is [worker; 4].
        let value = unsafe { *found.as_ptr() };
        assert!(value.iter().all(|&word| word == value[0] && word < 3));
    }
    // Victims killed inside the allocator leave its own repairs to a
    // recovery pass; the directory needed none.
    // SAFETY: no other thread of this process uses the allocator meanwhile.
    unsafe { heap.recover() }.unwrap();
    heap.check().unwrap();
    names.check().unwrap();
    assert!(kills >= 36);
}

const APPENDERS: u64 = 3;
const APPENDS: u64 = 400;

#[test]
#[ignore = "child process of processes_append_to_a_named_vector_behind_a_named_mutex"]
fn child_appender() {
    let heap = attach(&child_env("SHMKIT_TEST_SEGMENT"));
    let worker: u64 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    wait_for_start(&heap);
    let names = NamedObjects::open(&heap).unwrap();
    let log = names
        .find_or_construct("log", || ShmMutex::new(ShmVec::<u64>::new()))
        .unwrap();
    // SAFETY: nobody destroys "log" while the children run; the mutex is
    // made of atomics and guards the vector.
    let log = unsafe { log.local().as_ref() };
    for seq in 0..APPENDS {
        let mut entries = log.lock().unwrap();
        assert!(!entries.owner_died());
        entries.push(&heap, worker << 32 | seq).unwrap();
    }
}

#[test]
fn processes_append_to_a_named_vector_behind_a_named_mutex() {
    let (options, _cleanup) = fresh_shm("named-log");
    let heap = SizeClassAllocator::create(&options.clone().size(8 << 20)).unwrap();
    let start = heap.new_obj(AtomicU64::new(0)).unwrap();
    heap.segment().set_root("start", start.offset()).unwrap();
    let workers = spawn_workers("child_appender", &shm_name(&options), APPENDERS as usize);
    // SAFETY: the block is live for the whole test.
    unsafe { start.local().as_ref() }.store(1, Ordering::Release);
    for (worker, child) in workers.into_iter().enumerate() {
        worker_stdout(worker, child);
    }
    let names = NamedObjects::open(&heap).unwrap();
    let log = names
        .find::<ShmMutex<ShmVec<u64>>>("log")
        .unwrap()
        .expect("the appenders made the log");
    // SAFETY: the children are gone; the object is live.
    let entries = unsafe { log.local().as_ref() }.lock().unwrap();
    let mut seen = entries.as_slice(&heap).unwrap().to_vec();
    assert_eq!(seen.len() as u64, APPENDERS * APPENDS);
    // Each appender's entries appear in its own order...
    for worker in 0..APPENDERS {
        let own: Vec<u64> = seen.iter().copied().filter(|e| e >> 32 == worker).collect();
        let expected: Vec<u64> = (0..APPENDS).map(|seq| worker << 32 | seq).collect();
        assert_eq!(own, expected, "appender {worker}");
    }
    // ...and none is lost or doubled.
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen.len() as u64, APPENDERS * APPENDS);
    drop(entries);
    assert!(matches!(
        names.find::<ShmVec<u64>>("log"),
        Err(Error::WrongType { .. })
    ));
}
