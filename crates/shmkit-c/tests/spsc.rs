//! The SPSC message queue across processes and languages: C producer
//! processes push into a queue a Rust consumer pops from, in order and
//! intact; a C producer SIGKILLed while it holds the producer role leaves
//! the role to the next producer, and nothing stalls.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{build, message_bytes, repo, unique, Unlink};
use shmkit::containers::message_queue::{SpscMessageQueue, SpscRole};
use shmkit::{MemContext, SegmentOptions, ShmAllocator};

/// Pops the next message as text, waiting at most 20 s.
fn pop(queue: &mut SpscMessageQueue) -> String {
    let mut consumer = queue.consumer().expect("a consumer handle");
    let cell = consumer
        .pop_timeout(Duration::from_secs(20))
        .expect("a message within 20 s");
    let text = message_bytes(consumer.message(cell));
    // SAFETY: popped, read, and used no more.
    unsafe {
        consumer
            .heap()
            .free_offset(&MemContext::default(), cell.offset)
    }
    .unwrap();
    String::from_utf8(text).unwrap()
}

#[test]
fn c_producers_feed_a_rust_consumer_in_order_and_a_killed_one_gives_its_role_up() {
    let producer = build(&repo().join("crates/shmkit-c/tests/c/spsc_producer.c"), &[]);
    let name = unique("spsc");
    let _unlink = Unlink(name.clone());
    // A ring of 8 cells: the producer waits on the consumer most of the time.
    let mut queue =
        SpscMessageQueue::create(&SegmentOptions::shm(&name), 1 << 20, 8, SpscRole::Consumer)
            .unwrap();

    // 1. A C process pushes 2,000 messages; they arrive in order.
    let mut first = Command::new(&producer)
        .args([name.as_str(), "0", "2000"])
        .spawn()
        .unwrap();
    for i in 0..2000 {
        assert_eq!(pop(&mut queue), i.to_string());
    }
    assert!(first.wait().unwrap().success());

    // 2. A C process takes the role, pushes once and is SIGKILLed while it
    //    holds the role; the role is the next producer's.
    let mut holder = Command::new(&producer)
        .args([name.as_str(), "5000", "0"])
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    assert_eq!(pop(&mut queue), "5000");
    // While it lives, a second producer is refused.
    let refused = Command::new(&producer)
        .args([name.as_str(), "9000", "1"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("SHMKIT_E_IN_USE"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    let started = Instant::now();
    let mut next = Command::new(&producer)
        .args([name.as_str(), "6000", "100"])
        .spawn()
        .unwrap();
    for i in 6000..6100 {
        assert_eq!(pop(&mut queue), i.to_string());
    }
    assert!(next.wait().unwrap().success());
    assert!(started.elapsed() < Duration::from_secs(20));

    // Every block came back: what the producers allocated, the consumer
    // freed.
    assert_eq!(
        queue.heap().stats().live_allocations,
        1,
        "the ring's own block only"
    );
    assert!(queue.is_empty());
}
