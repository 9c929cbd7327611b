//! The process-local arena: scopes, marks, reset, stats, limits, policies,
//! and a model check of random operation sequences.

use std::alloc::Layout;

use proptest::prelude::*;
use shmkit::local::arena::{Arena, ArenaOptions, ArenaPolicy, GuardedPolicy};
use shmkit::Error;

#[test]
fn a_scope_gives_back_what_it_allocated_and_the_next_round_reuses_it() {
    let mut arena: Arena = Arena::new();
    let keep = arena.make(7u64).unwrap() as *mut u64;
    let before = arena.stats();
    let first_round = {
        let frame = arena.scope();
        let block = frame.alloc(1000, 8).unwrap();
        assert_eq!(frame.stats().allocations, before.allocations + 1);
        block.as_ptr()
    };
    assert_eq!(arena.stats().allocated_bytes, before.allocated_bytes);
    assert_eq!(arena.stats().allocations, before.allocations);
    let second_round = arena.scope().alloc(1000, 8).unwrap().as_ptr();
    assert_eq!(first_round, second_round, "the scope's bytes were reused");
    // SAFETY: `keep` was allocated before the scopes and never given back.
    assert_eq!(unsafe { *keep }, 7);
}

#[test]
fn nested_scopes_rewind_in_order_across_chunks() {
    let mut arena: Arena = Arena::new();
    arena.alloc(10, 1).unwrap();
    let outer_start = arena.stats();
    let mut outer = arena.scope();
    outer.alloc(100 << 10, 8).unwrap(); // spills into a second chunk
    let inner_start = outer.stats();
    {
        let inner = outer.scope();
        for _ in 0..50 {
            inner.alloc(16 << 10, 64).unwrap(); // and a third, and more
        }
        assert!(inner.stats().chunks > inner_start.chunks);
    }
    assert_eq!(outer.stats().allocated_bytes, inner_start.allocated_bytes);
    drop(outer);
    let after = arena.stats();
    assert_eq!(after.allocated_bytes, outer_start.allocated_bytes);
    assert_eq!(after.allocations, outer_start.allocations);
    assert!(after.peak_bytes >= (100 << 10) + 50 * (16 << 10));
}

#[test]
fn reset_keeps_chunks_so_a_steady_workload_stops_mapping() {
    let mut arena: Arena = Arena::new();
    let mut reserved = Vec::new();
    for _ in 0..5 {
        for size in (1..400).map(|i| i * 13) {
            arena.alloc(size, 16).unwrap();
        }
        reserved.push(arena.stats().reserved_bytes);
        arena.reset();
        assert_eq!(arena.stats().allocated_bytes, 0);
        assert_eq!(arena.stats().allocations, 0);
    }
    assert!(
        reserved.windows(2).all(|pair| pair[0] == pair[1]),
        "{reserved:?}"
    );
    let peak = arena.stats().peak_bytes;
    assert!(
        peak >= (1..400).map(|i| i * 13).sum::<usize>(),
        "peak {peak}"
    );

    arena.release_spare_chunks();
    assert_eq!(arena.stats().chunks, 1);
    arena.alloc(1, 1).unwrap();
}

#[test]
fn a_limit_is_an_out_of_memory_error_that_loses_nothing() {
    let arena: Arena = Arena::with_options(ArenaOptions::default().limit(256 << 10));
    let kept = arena.make_slice_copy(&[5u8; 1000]).unwrap();
    let mut served = 1000;
    let error = loop {
        match arena.alloc(32 << 10, 8) {
            Ok(_) => served += 32 << 10,
            Err(error) => break error,
        }
    };
    assert!(matches!(error, Error::OutOfMemory { .. }), "{error}");
    assert!(arena.stats().reserved_bytes <= 256 << 10);
    assert!(served > 128 << 10, "the limit was reached early: {served}");
    assert!(kept.iter().all(|&b| b == 5));
    arena
        .alloc(64, 8)
        .expect("small requests still fit the last chunk");
}

#[test]
fn marks_rewind_and_foreign_or_stale_marks_are_refused() {
    let mut arena: Arena = Arena::new();
    let other: Arena = Arena::new();
    other.alloc(8, 8).unwrap();
    arena.alloc(8, 8).unwrap();
    let mark = arena.mark();
    arena.alloc(300 << 10, 8).unwrap();
    let before = arena.stats();
    assert!(arena.rewind_to(other.mark()).is_err());
    assert_eq!(arena.stats(), before);
    arena.rewind_to(mark).unwrap();
    assert_eq!(arena.stats().allocations, 1);
    arena.reset();
    assert!(arena.rewind_to(mark).is_err(), "a mark ahead of the arena");
}

#[test]
fn strings_slices_and_values_are_placed_intact() {
    let arena: Arena = Arena::new();
    let text = arena.make_str("position independent").unwrap();
    let numbers = arena.make_slice_copy(&[1u32, 2, 3, 4]).unwrap();
    let pair = arena.make((1.5f64, 'x')).unwrap();
    let room = arena.allocate::<u64>(1000).unwrap();
    for (index, slot) in room.iter_mut().enumerate() {
        slot.write(index as u64);
    }
    numbers[3] = 40;
    assert_eq!(text, "position independent");
    assert_eq!(numbers, &[1, 2, 3, 40]);
    assert_eq!(*pair, (1.5, 'x'));
    assert!(arena.owns(text.as_ptr()));
    assert!(!arena.owns(Box::new(0u8).as_ref()));
    assert!(matches!(
        arena.allocate::<u64>(usize::MAX / 4),
        Err(Error::InvalidSize { .. })
    ));
}

#[test]
fn policies_set_alignment_and_guard_pages_at_compile_time() {
    struct Lines;
    impl ArenaPolicy for Lines {
        const MIN_ALIGN: usize = 64;
        const MIN_CHUNK: usize = 8192;
    }
    let arena: Arena<Lines> = Arena::new();
    for size in [1, 3, 63, 65, 200] {
        assert_eq!(arena.alloc(size, 1).unwrap().as_ptr() as usize % 64, 0);
    }
    assert!(arena.alloc_simd_aligned(10).is_ok());
    // Guarded chunks reserve the same usable bytes (the guard page is
    // extra address space); the fault itself is tested in a child process
    // in tests/guarded_stacks.rs.
    let guarded: Arena<GuardedPolicy> = Arena::new();
    guarded.alloc(100, 8).unwrap();
    assert_eq!(guarded.stats().reserved_bytes, 64 << 10);
}

#[test]
fn vec_growth_in_an_arena_extends_the_last_block_in_place() {
    let arena: Arena = Arena::new();
    let mut numbers = allocator_api2::vec::Vec::with_capacity_in(4, &arena);
    numbers.extend([1u64, 2, 3, 4]);
    let first = numbers.as_ptr();
    numbers.extend(5..=1000u64);
    assert_eq!(numbers.as_ptr(), first, "grown in place");
    assert_eq!(numbers.iter().sum::<u64>(), 1000 * 1001 / 2);
    let used = arena.stats().allocated_bytes;
    drop(numbers);
    assert!(
        arena.stats().allocated_bytes < used,
        "the last block came back"
    );
}

#[derive(Clone, Debug)]
enum Op {
    Alloc { size: usize, align_log: u32 },
    Open,
    Close,
    Reset,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..40_000, 0u32..8).prop_map(|(size, align_log)| Op::Alloc { size, align_log }),
        2 => Just(Op::Open),
        2 => Just(Op::Close),
        1 => Just(Op::Reset),
    ]
}

proptest! {
    /// Random allocations, scope opens and closes (as marks) and resets:
    /// live blocks never overlap, keep their bytes, and the count matches.
    #[test]
    fn live_blocks_stay_disjoint_and_intact(ops in proptest::collection::vec(op(), 1..200)) {
        let mut arena: Arena = Arena::new();
        // Live blocks: (address, size, fill byte), and the open marks with
        // how many blocks were live when each opened.
        let mut live: Vec<(usize, usize, u8)> = Vec::new();
        let mut marks = Vec::new();
        for (step, op) in ops.into_iter().enumerate() {
            match op {
                Op::Alloc { size, align_log } => {
                    let layout = Layout::from_size_align(size, 1 << align_log).unwrap();
                    let block = arena.alloc_layout(layout).unwrap();
                    prop_assert_eq!(block.as_ptr() as usize % layout.align(), 0);
                    // SAFETY: a fresh block of `size` bytes.
                    unsafe { block.as_ptr().write_bytes(step as u8, size) };
                    live.push((block.as_ptr() as usize, size, step as u8));
                }
                Op::Open => marks.push((arena.mark(), live.len())),
                Op::Close => {
                    if let Some((mark, count)) = marks.pop() {
                        arena.rewind_to(mark).unwrap();
                        live.truncate(count);
                    }
                }
                Op::Reset => {
                    arena.reset();
                    live.clear();
                    marks.clear();
                }
            }
            prop_assert_eq!(arena.stats().allocations, live.len() as u64);
            let mut sorted = live.clone();
            sorted.sort();
            for pair in sorted.windows(2) {
                prop_assert!(pair[0].0 + pair[0].1 <= pair[1].0, "overlap");
            }
            for &(address, size, fill) in &live {
                // SAFETY: a live block of `size` bytes.
                let bytes = unsafe { std::slice::from_raw_parts(address as *const u8, size) };
                prop_assert!(bytes.iter().all(|&b| b == fill));
            }
        }
    }
}

#[test]
fn chunks_bind_to_a_numa_node_and_an_offline_node_is_an_error() {
    let nodes = shmkit::numa::online_nodes().unwrap();
    let bound: Arena = Arena::with_options(ArenaOptions::default().numa_node(nodes[0]));
    let block = bound.make_slice_copy(&[3u8; 100_000]).unwrap();
    assert!(block.iter().all(|&b| b == 3));

    let missing = nodes[nodes.len() - 1] + 1;
    let refused: Arena = Arena::with_options(ArenaOptions::default().numa_node(missing));
    let error = refused.alloc(64, 8).unwrap_err();
    assert!(
        matches!(error, Error::NumaNodeOffline { node, .. } if node == missing),
        "{error}"
    );
    assert_eq!(
        refused.stats().reserved_bytes,
        0,
        "the refused chunk was unmapped"
    );
}

#[test]
fn an_arena_moves_to_another_thread_with_its_blocks() {
    let arena: Arena = Arena::new();
    let text = arena.make_str("made here").unwrap().as_ptr() as usize;
    let used = std::thread::spawn(move || {
        // SAFETY: the arena, which owns the 9-byte block, moved here with it.
        let moved = unsafe { std::slice::from_raw_parts(text as *const u8, 9) };
        assert_eq!(moved, b"made here");
        arena.alloc(100, 8).unwrap();
        arena.stats().allocations
    })
    .join()
    .unwrap();
    assert_eq!(used, 2);
}
