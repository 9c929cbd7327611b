//! Guard-paged regions and fiber stacks: code runs on them, and running off
//! either end kills the process with SIGSEGV instead of corrupting memory.
//! Each overflow runs in a child process (this test binary, re-run).

mod common;

use std::os::unix::process::{CommandExt, ExitStatusExt};

use shmkit::local::arena::{Arena, ArenaPolicy, GuardedPolicy};
use shmkit::local::guarded::{allocate_stack, FiberStack, GuardedRegion, Guards};

const CASE: &str = "SHMKIT_GUARD_CASE";

/// Runs the child half of this file with `case`, without core dumps, and
/// returns the signal that ended it (if any).
fn child_signal(case: &str) -> Option<i32> {
    let mut command = common::spawn_self("child_overflows_on_request", &[(CASE, case.to_string())]);
    // SAFETY: `setrlimit` is async-signal-safe and touches only this child.
    unsafe {
        command.pre_exec(|| {
            let none = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &none);
            Ok(())
        });
    }
    let output = command.output().expect("run the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("about to overflow"),
        "the child never reached the overflow: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.status.signal()
}

#[test]
fn writing_below_a_region_faults() {
    assert_eq!(child_signal("below"), Some(libc::SIGSEGV));
}

#[test]
fn writing_above_a_region_guarded_above_faults() {
    assert_eq!(child_signal("above"), Some(libc::SIGSEGV));
}

#[test]
fn unbounded_recursion_on_a_fiber_stack_faults_on_the_guard() {
    assert_eq!(child_signal("recursion"), Some(libc::SIGSEGV));
}

#[test]
fn writing_past_a_guarded_arena_chunk_faults() {
    assert_eq!(child_signal("arena"), Some(libc::SIGSEGV));
}

#[test]
fn the_child_survives_when_it_stays_inside() {
    // The control: the same child, staying inside its region, exits cleanly.
    // Without it, a child that crashed for any other reason would pass.
    assert_eq!(child_signal("inside"), None);
}

#[test]
fn a_thread_runs_on_a_fiber_stack_and_uses_it() {
    let stack = allocate_stack(1 << 20).unwrap();
    let (result, deepest) = run_on_stack(&stack, 100);
    assert_eq!(result, (1..=100u64).sum::<u64>());
    // The recursion's frames lay on our stack, not the caller's.
    let inside = stack.bottom() as usize..stack.top() as usize;
    assert!(inside.contains(&deepest), "{deepest:#x} not in {inside:x?}");
}

/// Recurses `depth` frames deep with a kilobyte of locals per frame; returns
/// the sum of the depths and the address of the deepest frame's locals.
fn recurse(depth: u64) -> (u64, usize) {
    let frame = std::hint::black_box([depth as u8; 1024]);
    let here = frame.as_ptr() as usize;
    if depth == 0 {
        return (0, here);
    }
    let (sum, deepest) = recurse(depth - 1);
    // Using `frame` after the call keeps it (and the call) from being folded.
    (
        sum + depth + u64::from(std::hint::black_box(frame)[0]) - (depth & 0xff),
        deepest,
    )
}

struct StackJob {
    depth: u64,
    result: (u64, usize),
}

extern "C" fn stack_job(arg: *mut libc::c_void) -> *mut libc::c_void {
    // SAFETY: `run_on_stack` passes a `StackJob` that outlives the thread
    // (it joins before returning) and touches it only after the join.
    let job = unsafe { &mut *arg.cast::<StackJob>() };
    job.result = recurse(job.depth);
    std::ptr::null_mut()
}

/// Runs `recurse(depth)` on a POSIX thread whose stack is `stack`.
fn run_on_stack(stack: &FiberStack, depth: u64) -> (u64, usize) {
    let mut job = StackJob {
        depth,
        result: (0, 0),
    };
    // SAFETY: plain pthread calls on a zeroed attribute object that is
    // initialized before use and destroyed after; the stack memory is
    // read-write, page aligned, outlives the thread (joined below), and no
    // one else uses it meanwhile.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        assert_eq!(libc::pthread_attr_init(&mut attr), 0);
        assert_eq!(
            libc::pthread_attr_setstack(&mut attr, stack.bottom().cast(), stack.size()),
            0
        );
        let mut thread: libc::pthread_t = std::mem::zeroed();
        let job_ptr: *mut StackJob = &mut job;
        assert_eq!(
            libc::pthread_create(&mut thread, &attr, stack_job, job_ptr.cast()),
            0
        );
        assert_eq!(libc::pthread_join(thread, std::ptr::null_mut()), 0);
        libc::pthread_attr_destroy(&mut attr);
    }
    job.result
}

/// The child half: does what `SHMKIT_GUARD_CASE` asks, printing a marker
/// first so the parent knows the crash came from the overflow itself.
#[test]
#[ignore = "run as a child process by the tests above"]
fn child_overflows_on_request() {
    let case = std::env::var(CASE).expect("the parent sets the case");
    let page = 4096;
    match case.as_str() {
        "below" => {
            let region = GuardedRegion::new(page, Guards::Below).unwrap();
            println!("about to overflow");
            // SAFETY: none; this write is meant to fault on the guard page.
            unsafe { region.as_ptr().as_ptr().sub(1).write_volatile(1) };
        }
        "above" => {
            let region = GuardedRegion::new(page, Guards::Above).unwrap();
            println!("about to overflow");
            // SAFETY: none; this write is meant to fault on the guard page.
            unsafe { region.end().as_ptr().write_volatile(1) };
        }
        "recursion" => {
            let stack = allocate_stack(64 << 10).unwrap();
            println!("about to overflow");
            run_on_stack(&stack, u64::MAX);
        }
        "arena" => {
            let arena: Arena<GuardedPolicy> = Arena::new();
            let chunk = GuardedPolicy::MIN_CHUNK;
            let block = arena.alloc(chunk, 1).unwrap();
            println!("about to overflow");
            // SAFETY: none; one byte past a block that fills its whole
            // chunk is meant to fault on the chunk's guard page.
            unsafe { block.as_ptr().add(chunk).write_volatile(1) };
        }
        "inside" => {
            let mut region = GuardedRegion::new(page, Guards::Both).unwrap();
            println!("about to overflow");
            region.as_mut_slice().fill(1);
            let stack = allocate_stack(1 << 20).unwrap();
            assert_eq!(run_on_stack(&stack, 16).0, (1..=16u64).sum::<u64>());
        }
        #[cfg(feature = "corosensei")]
        "coroutine" => {
            let stack = allocate_stack(64 << 10).unwrap();
            let mut deep = corosensei::Coroutine::with_stack(
                stack,
                |_: &corosensei::Yielder<u64, ()>, depth: u64| recurse(depth),
            );
            println!("about to overflow");
            deep.resume(u64::MAX);
        }
        other => panic!("unknown case {other}"),
    }
    println!("survived");
}

#[cfg(feature = "corosensei")]
mod coroutines {
    use corosensei::{Coroutine, CoroutineResult};

    use super::*;

    #[test]
    fn a_coroutine_runs_on_a_fiber_stack() {
        let stack = FiberStack::new(128 << 10, Guards::Both).unwrap();
        let (bottom, top) = (stack.bottom() as usize, stack.top() as usize);
        let mut fibonacci = Coroutine::with_stack(stack, |yielder, limit: u64| {
            let (mut a, mut b) = (0u64, 1u64);
            while a < limit {
                let local = std::hint::black_box(a);
                let address = &local as *const u64 as usize;
                let _: u64 = yielder.suspend((a, address));
                (a, b) = (b, a + b);
            }
            "done"
        });
        let mut seen = Vec::new();
        let mut input = 100;
        loop {
            match fibonacci.resume(input) {
                CoroutineResult::Yield((value, address)) => {
                    assert!((bottom..top).contains(&address), "local off the stack");
                    seen.push(value);
                    input = 0;
                }
                CoroutineResult::Return(word) => {
                    assert_eq!(word, "done");
                    break;
                }
            }
        }
        assert_eq!(seen, [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89]);
        // The stack comes back when the coroutine is done, for the next one.
        let stack = fibonacci.into_stack();
        assert_eq!(stack.bottom() as usize, bottom);
    }

    #[test]
    fn a_coroutine_that_overflows_its_stack_faults() {
        assert_eq!(child_signal("coroutine"), Some(libc::SIGSEGV));
    }
}
