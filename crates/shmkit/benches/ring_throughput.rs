//! 64-byte messages from one process to another: through shmkit's MPMC ring
//! in a shared segment, and through a Unix-domain socket pair (the reference),
//! side by side in one run.
//!
//! Both consumers are child processes forked before criterion starts any
//! thread, and both report what they have consumed through a counter in
//! shared memory; a batch is timed from its first send until the consumer
//! has taken its last message. The socket side writes one message per
//! `write` (what a message-passing program does) and reads in large chunks.
//! A third row passes only offsets through the ring, to payloads allocated
//! in the segment, which is what the producer/consumer example does.
//!
//! Run: `cargo bench -p shmkit --bench ring_throughput`

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use shmkit::containers::{MpmcHandle, MpmcRing};
use shmkit::{FullPtr, SegmentAllocator, SegmentOptions, ShmAllocator, ShmPtr, SizeClassAllocator};

type Message = [u64; 8];
const RING_CAPACITY: usize = 4096;

/// A consumed-message counter in the segment, on a cache line of its own
/// (the first word of 8).
type Counter = [AtomicU64; 8];

/// Runs `work` (a loop that never ends) in a forked child.
fn fork_child(work: impl FnOnce()) -> libc::pid_t {
    // SAFETY: called before criterion or anything else starts a thread, so
    // the child is a complete copy; it only touches shared memory, the
    // socket and system calls, then exits without unwinding.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        work();
        // SAFETY: ends the child without the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    pid
}

/// Waits until `counter` reaches `target`.
fn wait_for(counter: &AtomicU64, target: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter.load(Ordering::Acquire) < target {
        assert!(Instant::now() < deadline, "the consumer stopped");
        std::hint::spin_loop();
    }
}

fn main() {
    let heap = SizeClassAllocator::create(&SegmentOptions::memfd("ring-bench").size(256 << 20))
        .expect("segment");
    let counters = heap
        .new_obj([const { [const { AtomicU64::new(0) }; 8] }; 3])
        .expect("counters");
    // SAFETY: the block lives as long as `heap`, in this process and (as a
    // shared mapping) in the forked children.
    let counters: &[Counter; 3] = unsafe { counters.local().as_ref() };
    let inline_ring = MpmcRing::<Message>::create(&heap, RING_CAPACITY).expect("ring");
    let offset_ring = MpmcRing::<ShmPtr<u8>>::create(&heap, RING_CAPACITY).expect("ring");
    let inline: MpmcHandle<'_, Message> =
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::open(&heap, inline_ring) }.expect("open");
    let offsets: MpmcHandle<'_, ShmPtr<u8>> =
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        unsafe { MpmcRing::open(&heap, offset_ring) }.expect("open");
    let (mut to_child, mut in_child) = UnixStream::pair().expect("socket pair");

    let children = [
        fork_child(|| {
            let mut taken = 0u64;
            loop {
                match inline.try_pop() {
                    Some(message) => {
                        std::hint::black_box(message);
                        taken += 1;
                        if taken % 256 == 0 {
                            counters[0][0].store(taken, Ordering::Release);
                        }
                    }
                    None => {
                        counters[0][0].store(taken, Ordering::Release);
                        std::hint::black_box(inline.pop());
                        taken += 1;
                    }
                }
            }
        }),
        fork_child(|| {
            let mut buffer = vec![0u8; 64 << 10];
            let mut bytes = 0u64;
            loop {
                match in_child.read(&mut buffer) {
                    // SAFETY: ends the forked child without running the
                    // parent's exit handlers or destructors.
                    Ok(0) | Err(_) => unsafe { libc::_exit(0) },
                    Ok(n) => {
                        bytes += n as u64;
                        counters[1][0].store(bytes / 64, Ordering::Release);
                    }
                }
            }
        }),
        fork_child(|| {
            let mut taken = 0u64;
            loop {
                let shared = offsets.pop();
                let block = FullPtr::from_shm(shared).expect("payload");
                // SAFETY: the producer wrote 64 bytes there and handed the
                // block over through the ring.
                std::hint::black_box(unsafe { block.as_ptr().cast::<Message>().read() });
                // SAFETY: nothing uses the block after it is freed.
                unsafe { heap.free(block) }.expect("free");
                taken += 1;
                counters[2][0].store(taken, Ordering::Release);
            }
        }),
    ];

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("64-byte messages, 2 processes");
    group.throughput(Throughput::Elements(1));
    let message: Message = [7; 8];

    let mut sent = 0u64;
    group.bench_function("shmkit MPMC ring", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                inline.push(message);
            }
            sent += iters;
            wait_for(&counters[0][0], sent);
            started.elapsed()
        })
    });

    let mut sent = 0u64;
    let bytes: Vec<u8> = message.iter().flat_map(|word| word.to_le_bytes()).collect();
    group.bench_function("Unix socket pair", |b| {
        b.iter_custom(|iters| {
            let started = Instant::now();
            for _ in 0..iters {
                to_child.write_all(&bytes).expect("write");
            }
            sent += iters;
            wait_for(&counters[1][0], sent);
            started.elapsed()
        })
    });

    let mut sent = 0u64;
    group.bench_function(
        "shmkit MPMC ring, offsets to payloads in the segment",
        |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    let block = heap.allocate(64).expect("payload");
                    // SAFETY: a fresh 64-byte block, ours until sent.
                    unsafe { block.as_ptr().cast::<Message>().write(message) };
                    offsets.push(block.shm());
                }
                sent += iters;
                wait_for(&counters[2][0], sent);
                started.elapsed()
            })
        },
    );
    group.finish();
    criterion.final_summary();

    for child in children {
        // SAFETY: plain system calls on our own children.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
    }
}
