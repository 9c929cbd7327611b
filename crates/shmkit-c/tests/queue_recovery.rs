//! A consumer SIGKILLed while it holds messages it took (popped, not given
//! back) leaves their blocks allocated; the queue's recovery pass, called
//! through the C API once the consumer is gone, frees exactly those and
//! keeps every message still waiting. Both queues: MPMC and SPSC.

mod common;

use std::ffi::CString;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{build, message_bytes, repo, unique, Unlink};
use shmkit::containers::message_queue::{MessageQueue, SpscMessageQueue, SpscRole};
use shmkit::{SegmentOptions, ShmAllocator};
use shmkit_c::*;

/// Runs the holder on `name` until it has taken `count` messages, then
/// SIGKILLs it.
fn held_then_killed(name: &str, kind: &str, count: usize) {
    let holder = build(&repo().join("crates/shmkit-c/tests/c/queue_holder.c"), &[]);
    let mut child = Command::new(holder)
        .args([name, kind, &count.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "held", "the holder took its messages");
    child.kill().unwrap();
    child.wait().unwrap();
}

fn ok(status: shmkit_status) {
    assert_eq!(status, shmkit_status::SHMKIT_OK, "{:?}", unsafe {
        std::ffi::CStr::from_ptr(shmkit_last_error())
    });
}

#[test]
fn a_killed_consumers_messages_are_freed_and_the_waiting_ones_kept() {
    for kind in ["mpmc", "spsc"] {
        let name = unique(&format!("recover-{kind}"));
        let _unlink = Unlink(name.clone());
        let c_name = CString::new(name.clone()).unwrap();
        let mut queue: *mut shmkit_queue = std::ptr::null_mut();
        let mut producer: *mut shmkit_spsc = std::ptr::null_mut();
        // SAFETY (all calls below): valid names, handles this API made and
        // out-pointers to locals.
        unsafe {
            if kind == "mpmc" {
                ok(shmkit_queue_create(
                    c_name.as_ptr(),
                    1 << 20,
                    16,
                    &mut queue,
                ));
            } else {
                ok(shmkit_spsc_create(
                    c_name.as_ptr(),
                    1 << 20,
                    16,
                    shmkit_spsc_role::SHMKIT_SPSC_PRODUCER as i32,
                    &mut producer,
                ));
            }
            for i in 0..5u8 {
                let text = [b'm', b'0' + i];
                if kind == "mpmc" {
                    ok(shmkit_queue_put(queue, text.as_ptr().cast(), 2, 0));
                } else {
                    ok(shmkit_spsc_push(producer, text.as_ptr().cast(), 2, 0));
                }
            }
        }
        held_then_killed(&name, kind, 3);

        let mut report = shmkit_recovery_report::default();
        // SAFETY: as above; no other thread uses the queue, and this
        // process holds no message.
        unsafe {
            if kind == "mpmc" {
                ok(shmkit_queue_recover(queue, 0, &mut report));
                ok(shmkit_queue_close(queue));
            } else {
                ok(shmkit_spsc_recover(producer, 0, &mut report));
                ok(shmkit_spsc_close(producer));
            }
        }
        assert!(report.blocks_reclaimed >= 3, "{kind}: {report:?}");
        // The ring's own block and the two messages still waiting.
        assert_eq!(report.live_after, 3, "{kind}: {report:?}");

        // The waiting messages are whole, in order.
        let options = SegmentOptions::shm(&name);
        let waiting: Vec<Vec<u8>> = if kind == "mpmc" {
            let queue = MessageQueue::attach(&options).unwrap();
            std::iter::from_fn(|| queue.ring().try_pop())
                .map(|cell| message_bytes(queue.message(cell)))
                .collect()
        } else {
            let mut queue = SpscMessageQueue::attach(&options, SpscRole::Consumer).unwrap();
            let mut consumer = queue.consumer().unwrap();
            let cells: Vec<_> = std::iter::from_fn(|| consumer.try_pop()).collect();
            cells
                .into_iter()
                .map(|cell| message_bytes(consumer.message(cell)))
                .collect()
        };
        assert_eq!(waiting, vec![b"m3".to_vec(), b"m4".to_vec()], "{kind}");
    }
}

#[test]
fn recovery_is_refused_while_the_other_end_lives() {
    let name = unique("recover-refused");
    let _unlink = Unlink(name.clone());
    let options = SegmentOptions::shm(&name);
    let producer = SpscMessageQueue::create(&options, 1 << 20, 8, SpscRole::Producer).unwrap();
    let holder = build(&repo().join("crates/shmkit-c/tests/c/queue_holder.c"), &[]);
    let mut child = Command::new(holder)
        .args([name.as_str(), "spsc", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // SAFETY: no other thread of this process uses the queue.
    let refused = unsafe { producer.recover(false) };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        matches!(refused, Err(shmkit::Error::InUse { .. })),
        "{refused:?}"
    );
    assert_eq!(producer.heap().stats().live_allocations, 1);
}
