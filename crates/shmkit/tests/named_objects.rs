//! Named objects across real processes: `find_or_construct` races agree on
//! one object per name, and processes SIGKILLed in the middle of directory
//! operations leave a directory the others keep using.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[cfg(feature = "crash-points")]
use common::Rng;
use common::{child_env, fresh_shm, shm_name, spawn_workers, worker_stdout};
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

/// Operations a churner counts in the segment, one word per worker.
#[cfg(feature = "crash-points")]
const OPS_ROOT: &str = "churn.ops";
#[cfg(feature = "crash-points")]
const CHURNERS: usize = 3;

/// With `SHMKIT_PAUSE_AFTER` set: the operation count after which the next
/// directory crash point reached (each under the directory lock) stops
/// this process, says so, and waits to be killed.
#[cfg(feature = "crash-points")]
static PAUSE_AFTER: AtomicU64 = AtomicU64::new(u64::MAX);
#[cfg(feature = "crash-points")]
static OPS_DONE: AtomicU64 = AtomicU64::new(0);

#[cfg(feature = "crash-points")]
fn stop_inside_the_directory(point: &'static str) {
    if !point.starts_with("directory.")
        || OPS_DONE.load(Ordering::Relaxed) < PAUSE_AFTER.load(Ordering::Relaxed)
    {
        return;
    }
    // Half the points reached pass, so the kills spread over them.
    static COIN: AtomicU64 = AtomicU64::new(0);
    let seed = match COIN.load(Ordering::Relaxed) {
        0 => (u64::from(std::process::id()) * 0x9e37_79b9) | 1,
        state => state,
    };
    let mut rng = Rng(seed);
    let flip = rng.next();
    COIN.store(flip, Ordering::Relaxed);
    if flip % 2 == 0 {
        return;
    }
    PAUSE_AFTER.store(u64::MAX, Ordering::Relaxed);
    println!("inside {point}");
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    std::thread::sleep(Duration::from_secs(60));
    panic!("nobody killed the worker waiting inside {point}");
}

#[cfg(feature = "crash-points")]
#[test]
#[ignore = "child process of directory_operations_survive_sigkill"]
fn child_directory_churner() {
    let heap = attach(&child_env("SHMKIT_TEST_SEGMENT"));
    let worker: u64 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    let ops_at = heap
        .segment()
        .root::<[AtomicU64; CHURNERS]>(OPS_ROOT)
        .unwrap();
    // SAFETY: the parent published the counters there and keeps them.
    let ops = &unsafe { heap.segment().resolve(ops_at).unwrap().as_ref() }[worker as usize];
    if let Ok(after) = std::env::var("SHMKIT_PAUSE_AFTER") {
        PAUSE_AFTER.store(after.parse().unwrap(), Ordering::Relaxed);
        shmkit::crash_point::on_reach(stop_inside_the_directory);
    }
    let names = NamedObjects::open(&heap).unwrap();
    let mut rng = Rng(worker + 1 + u64::from(std::process::id()));
    println!("ready");
    std::io::Write::flush(&mut std::io::stdout()).unwrap();
    loop {
        let name = format!("churn-{}", rng.below(64));
        let result = match rng.below(3) {
            0 => names.construct(&name, [worker; 4]).map(|_| ()),
            // SAFETY: churners never dereference what they find.
            1 => unsafe { names.destroy::<[u64; 4]>(&name) },
            _ => names
                .find_or_construct(&name, || [worker; 4])
                .map(|ptr| assert!(!ptr.is_null())),
        };
        match result {
            Ok(()) | Err(Error::NameExists { .. } | Error::NameNotFound { .. }) => {}
            Err(other) => panic!("worker {worker}: {other}"),
        }
        OPS_DONE.fetch_add(1, Ordering::Relaxed);
        ops.fetch_add(1, Ordering::Release);
    }
}

/// The lines a child prints, as they come.
#[cfg(feature = "crash-points")]
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("piped stdout");
    let (send, receive) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

/// Waits for a line that says `prefix` (the test harness may print its own
/// words before it on the line); returns the line from `prefix` on.
#[cfg(feature = "crash-points")]
fn expect_line(lines: &std::sync::mpsc::Receiver<String>, prefix: &str, who: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(prefix) => {
                return line[line.find(prefix).unwrap()..].to_owned();
            }
            Ok(_) => {}
            Err(error) => panic!("{who} never said {prefix:?}: {error}"),
        }
    }
}

/// Each round: three churners say "ready"; one of them stops inside a
/// directory operation, holding the directory lock, and says "inside";
/// it is SIGKILLed there; each survivor must then finish operations of its
/// own (taking the dead holder's lock over and mending what it left).
#[cfg(feature = "crash-points")]
#[test]
fn directory_operations_survive_sigkill() {
    let (options, _cleanup) = fresh_shm("named-kill");
    let heap = SizeClassAllocator::create(&options.clone().size(16 << 20)).unwrap();
    let names = NamedObjects::open(&heap).unwrap();
    let ops_block = heap
        .new_obj(std::array::from_fn::<AtomicU64, CHURNERS, _>(|_| {
            AtomicU64::new(0)
        }))
        .unwrap();
    heap.segment()
        .set_root(OPS_ROOT, ops_block.offset())
        .unwrap();
    // SAFETY: the block is live for the whole test.
    let ops = unsafe { ops_block.local().as_ref() };
    let segment = shm_name(&options);
    let mut rng = Rng(7);
    let mut inside: BTreeMap<String, usize> = BTreeMap::new();
    const ROUNDS: usize = 12;
    for round in 0..ROUNDS {
        let victim = round % CHURNERS;
        let mut workers: Vec<_> = (0..CHURNERS)
            .map(|worker| {
                let pause_after = (20 + rng.below(300)).to_string();
                let mut env = vec![
                    ("SHMKIT_TEST_SEGMENT", segment.clone()),
                    ("SHMKIT_TEST_WORKER", worker.to_string()),
                ];
                if worker == victim {
                    env.push(("SHMKIT_PAUSE_AFTER", pause_after));
                }
                let mut child = common::spawn_self("child_directory_churner", &env)
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("start a churner");
                let lines = stdout_lines(&mut child);
                (child, lines)
            })
            .collect();
        for (worker, (_, lines)) in workers.iter().enumerate() {
            expect_line(lines, "ready", &format!("churner {worker}"));
        }
        let line = expect_line(&workers[victim].1, "inside ", "the victim");
        let before: Vec<u64> = ops.iter().map(|n| n.load(Ordering::Acquire)).collect();
        workers[victim].0.kill().unwrap();
        workers[victim].0.wait().unwrap();
        *inside
            .entry(line["inside ".len()..].to_owned())
            .or_default() += 1;
        // Every survivor gets past the lock the victim died holding.
        let deadline = Instant::now() + Duration::from_secs(15);
        for (worker, (child, _)) in workers.iter_mut().enumerate() {
            if worker == victim {
                continue;
            }
            while ops[worker].load(Ordering::Acquire) < before[worker] + 50 {
                assert!(
                    child.try_wait().unwrap().is_none(),
                    "round {round}: survivor {worker} exited on its own; see its stderr"
                );
                assert!(
                    Instant::now() < deadline,
                    "round {round}: survivor {worker} made no progress after the kill at {line}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        for (child, _) in &mut workers {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The next caller mends whatever a victim held.
        names.check().unwrap();
    }
    println!("kills inside directory operations: {inside:?}");
    assert_eq!(inside.values().sum::<usize>(), ROUNDS);
    for object in names.list().unwrap() {
        let found = names.find::<[u64; 4]>(&object.name).unwrap().unwrap();
        // SAFETY: live object; every value written is [worker; 4].
        let value = unsafe { *found.as_ptr() };
        assert!(value.iter().all(|&word| word == value[0] && word < 3));
    }
    // Victims killed inside the allocator leave its own repairs to a
    // recovery pass; the directory needed none.
    // The churners are dead (other tests fork theirs meanwhile: see the
    // helper).
    common::recover_once_alone(&heap);
    heap.check().unwrap();
    names.check().unwrap();
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
