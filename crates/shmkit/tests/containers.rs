//! Containers built in one process and read in others, through a POSIX
//! shared-memory segment that each process maps at its own address.

mod common;

use common::{child_env, fresh_shm, shm_name, spawn_workers, worker_stdout};
use shmkit::containers::{ShmBox, ShmHashMap, ShmString, ShmVec};
use shmkit::{shm_struct, SegmentAllocator, SegmentOptions, ShmAllocator, SizeClassAllocator};

shm_struct! {
    /// What the parent publishes under the root `catalog`.
    pub struct Catalog {
        /// `key(k)` -> `[k, k * k]`.
        pub by_id: ShmHashMap<u64, [u64; 2]>,
        /// `name(k)` at index `k`.
        pub names: ShmVec<ShmString>,
        /// A fixed greeting.
        pub greeting: ShmBox<[u8; 16]>,
    }

    /// One record of a child's vector.
    pub struct Record {
        pub id: u64,
        pub worker: u64,
        pub label: ShmString,
    }
}

const ENTRIES: u64 = 500;
const READERS: usize = 3;
const BUILDERS: usize = 4;
const RECORDS: u64 = 300;
const GREETING: [u8; 16] = *b"hello, children!";

fn key(k: u64) -> u64 {
    k.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

fn name(k: u64) -> String {
    format!("name {k} {}", "é".repeat((k % 7) as usize))
}

fn label(worker: u64, i: u64) -> String {
    format!(
        "worker {worker} record {i} {}",
        "·".repeat((i % 5) as usize)
    )
}

fn record_id(worker: u64, i: u64) -> u64 {
    worker * 1_000_000 + i
}

fn attach() -> SizeClassAllocator {
    SizeClassAllocator::attach(&SegmentOptions::shm(child_env("SHMKIT_TEST_SEGMENT")))
        .expect("attach the parent's segment")
}

#[test]
#[ignore = "child process of children_read_what_the_parent_built"]
fn child_reads_the_catalog() {
    let heap = attach();
    let offset = heap
        .segment()
        .root::<Catalog>("catalog")
        .expect("published by the parent");
    let catalog = heap.segment().resolve(offset).unwrap();
    // SAFETY: resolved and aligned; the parent finished writing before it
    // started this process and does not change it while we read.
    let catalog = unsafe { catalog.as_ref() };

    assert_eq!(catalog.by_id.len() as u64, ENTRIES);
    for k in 0..ENTRIES {
        assert_eq!(
            catalog.by_id.get(&heap, &key(k)).unwrap(),
            Some(&[k, k * k]),
            "entry {k}"
        );
        // Keys the parent never inserted are absent.
        assert_eq!(catalog.by_id.get(&heap, &(key(k) + 1)).unwrap(), None);
    }
    let mut seen: Vec<u64> = catalog
        .by_id
        .iter(&heap)
        .unwrap()
        .map(|(_, v)| v[0])
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..ENTRIES).collect::<Vec<_>>());

    let names = catalog.names.as_slice(&heap).unwrap();
    assert_eq!(names.len() as u64, ENTRIES);
    for (k, stored) in names.iter().enumerate() {
        assert_eq!(stored.as_str(&heap).unwrap(), name(k as u64));
    }
    assert_eq!(catalog.greeting.get(&heap).unwrap(), &GREETING);
    println!("verified {}", names.len());
}

#[test]
fn children_read_what_the_parent_built() {
    let (options, _cleanup) = fresh_shm("containers-read");
    let heap = SizeClassAllocator::create(&options.clone().size(8 << 20)).unwrap();
    let mut catalog = Catalog {
        by_id: ShmHashMap::new(),
        names: ShmVec::new(),
        greeting: ShmBox::new_in(&heap, GREETING).unwrap(),
    };
    for k in 0..ENTRIES {
        assert_eq!(
            catalog.by_id.insert(&heap, key(k), [k, k * k]).unwrap(),
            None
        );
        let stored = ShmString::from_str_in(&heap, &name(k)).unwrap();
        catalog.names.push(&heap, stored).unwrap();
    }
    let placed = heap.new_obj(catalog).unwrap();
    heap.segment().set_root("catalog", placed.offset()).unwrap();

    let children = spawn_workers("child_reads_the_catalog", &shm_name(&options), READERS);
    for (reader, child) in children.into_iter().enumerate() {
        let stdout = worker_stdout(reader, child);
        assert!(
            stdout.contains(&format!("verified {ENTRIES}")),
            "reader {reader} did not check every entry: {stdout}"
        );
    }

    // Take it all apart again: inner containers first.
    // SAFETY: the readers have exited; the block is ours alone.
    let catalog = unsafe { &mut *placed.as_ptr() };
    for stored in catalog.names.as_mut_slice(&heap).unwrap() {
        stored.free(&heap).unwrap();
    }
    catalog.names.free(&heap).unwrap();
    catalog.by_id.free(&heap).unwrap();
    // SAFETY: the block holds a live catalog, used no more.
    let catalog = unsafe { placed.as_ptr().read() };
    catalog.greeting.free(&heap).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(placed.cast()) }.unwrap();
    assert_eq!(heap.stats().live_allocations, 0);
    heap.check().unwrap();
}

#[test]
#[ignore = "child process of parent_reads_what_children_built"]
fn child_builds_records() {
    let heap = attach();
    let worker: u64 = child_env("SHMKIT_TEST_WORKER").parse().unwrap();
    let mut records = ShmVec::<Record>::new();
    for i in 0..RECORDS {
        let record = Record {
            id: record_id(worker, i),
            worker,
            label: ShmString::from_str_in(&heap, &label(worker, i)).unwrap(),
        };
        // Insert at the front now and then, so elements move in the block.
        if i % 10 == 0 {
            records.insert(&heap, 0, record).unwrap();
        } else {
            records.push(&heap, record).unwrap();
        }
    }
    records
        .as_mut_slice(&heap)
        .unwrap()
        .sort_unstable_by_key(|r| r.id);
    records.shrink_to_fit(&heap).unwrap();
    let placed = heap.new_obj(records).unwrap();
    heap.segment()
        .set_root(&format!("records-{worker}"), placed.offset())
        .unwrap();
    println!("published {RECORDS}");
}

#[test]
fn parent_reads_what_children_built() {
    let (options, _cleanup) = fresh_shm("containers-build");
    let heap = SizeClassAllocator::create(&options.clone().size(16 << 20)).unwrap();
    let children = spawn_workers("child_builds_records", &shm_name(&options), BUILDERS);
    for (worker, child) in children.into_iter().enumerate() {
        let stdout = worker_stdout(worker, child);
        assert!(stdout.contains(&format!("published {RECORDS}")), "{stdout}");
    }

    let segment = heap.segment();
    for worker in 0..BUILDERS as u64 {
        let offset = segment
            .root::<ShmVec<Record>>(&format!("records-{worker}"))
            .expect("published by the worker");
        let placed = segment.full_ptr_from_offset(offset).unwrap();
        // SAFETY: resolved and aligned; the worker has exited.
        let records = unsafe { &mut *placed.as_ptr() };
        assert_eq!(records.capacity() as u64, RECORDS, "shrunk to fit");
        let slice = records.as_slice(&heap).unwrap();
        assert_eq!(slice.len() as u64, RECORDS);
        for (i, record) in slice.iter().enumerate() {
            let i = i as u64;
            assert_eq!(record.id, record_id(worker, i));
            assert_eq!(record.worker, worker);
            assert_eq!(record.label.as_str(&heap).unwrap(), label(worker, i));
        }
        // The parent can change what a child built, too.
        for record in records.as_mut_slice(&heap).unwrap() {
            record.label.free(&heap).unwrap();
        }
        records.free(&heap).unwrap();
        // SAFETY: the block holds an empty vector, used no more.
        unsafe { heap.del_obj(placed) }.unwrap();
    }
    assert_eq!(heap.stats().live_allocations, 0);
    heap.check().unwrap();
}
