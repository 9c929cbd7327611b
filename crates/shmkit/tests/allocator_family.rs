//! The same contract, checked for every shared allocator of the family:
//! a model-based property test, bad input that changes nothing, alignment,
//! growth, and several real processes tagging blocks.

mod common;

use std::collections::BTreeMap;

use proptest::prelude::*;
use shmkit::{Error, MemContext, SegmentAllocator, SegmentOptions, ShmAllocator};

/// One step of a random workload.
#[derive(Clone, Debug)]
enum Op {
    Allocate { size: usize, align_shift: u32 },
    Free { pick: usize },
    Reallocate { pick: usize, size: usize },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1usize..3000, 0u32..8).prop_map(|(size, align_shift)| Op::Allocate { size, align_shift }),
        3 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        2 => (any::<usize>(), 1usize..3000).prop_map(|(pick, size)| Op::Reallocate { pick, size }),
    ]
}

/// A live block in the model: its requested size and the byte it is filled with.
#[derive(Clone, Copy, Debug)]
struct Live {
    size: usize,
    fill: u8,
}

fn fill(allocator: &dyn ShmAllocator, offset: u64, size: usize, byte: u8) {
    let block = allocator.full_ptr(offset).unwrap();
    // SAFETY: a live block of at least `size` bytes, ours alone.
    unsafe { std::ptr::write_bytes(block.as_ptr(), byte, size) };
}

fn holds(allocator: &dyn ShmAllocator, offset: u64, live: Live) -> bool {
    let block = allocator.full_ptr(offset).unwrap();
    // SAFETY: a live block of at least `live.size` bytes.
    let bytes = unsafe { std::slice::from_raw_parts(block.as_ptr(), live.size) };
    bytes.iter().all(|&b| b == live.fill)
}

/// Runs `ops` against `allocator` and a model; checks everything after
/// every step.
fn run_model(allocator: &dyn ShmAllocator, ops: &[Op]) -> Result<(), TestCaseError> {
    let ctx = MemContext::default();
    let mut model: BTreeMap<u64, Live> = BTreeMap::new();
    let mut next_fill = 1u8;
    for op in ops {
        match *op {
            Op::Allocate { size, align_shift } => {
                let align = 1usize << align_shift;
                match allocator.allocate_offset(&ctx, size, align) {
                    Ok(offset) => {
                        let block = allocator.full_ptr(offset).unwrap();
                        prop_assert_eq!(block.as_ptr() as usize % align, 0);
                        prop_assert!(allocator.usable_size(offset).unwrap() >= size);
                        fill(allocator, offset, size, next_fill);
                        let previous = model.insert(
                            offset,
                            Live {
                                size,
                                fill: next_fill,
                            },
                        );
                        prop_assert!(previous.is_none(), "offset {} handed out twice", offset);
                        next_fill = next_fill.wrapping_add(1).max(1);
                    }
                    // The segment holds far more than the workload ever
                    // asks for: running out is a failure too.
                    Err(other) => return Err(TestCaseError::fail(other.to_string())),
                }
            }
            Op::Free { pick } => {
                let Some((&offset, &live)) = model.iter().nth(pick % model.len().max(1)) else {
                    continue;
                };
                prop_assert!(
                    holds(allocator, offset, live),
                    "block at {} was overwritten",
                    offset
                );
                // SAFETY: nothing uses the block after it is freed.
                unsafe { allocator.free_offset(&ctx, offset) }.unwrap();
                model.remove(&offset);
                // A second free of the same block is refused.
                // SAFETY: the block is not used after this free (a repeat is refused).
                let freed = unsafe { allocator.free_offset(&ctx, offset) };
                prop_assert!(freed.is_err());
            }
            Op::Reallocate { pick, size } => {
                let Some((&offset, &live)) = model.iter().nth(pick % model.len().max(1)) else {
                    continue;
                };
                let ptr = allocator.full_ptr(offset).unwrap();
                // SAFETY: the model uses the returned block, not `ptr`'s.
                match unsafe { allocator.reallocate(ptr, size) } {
                    Ok(moved) => {
                        let kept = Live {
                            size: live.size.min(size),
                            fill: live.fill,
                        };
                        let new_offset = moved.offset().raw();
                        prop_assert!(
                            holds(allocator, new_offset, kept),
                            "contents lost in reallocate"
                        );
                        model.remove(&offset);
                        fill(allocator, new_offset, size, live.fill);
                        model.insert(
                            new_offset,
                            Live {
                                size,
                                fill: live.fill,
                            },
                        );
                    }
                    // Never out of memory here (see above); whatever the
                    // error, the block must be intact.
                    Err(error) => {
                        prop_assert!(
                            holds(allocator, offset, live),
                            "a failed reallocate damaged the block"
                        );
                        return Err(TestCaseError::fail(format!("reallocate: {error}")));
                    }
                }
            }
        }
        // No two live blocks overlap.
        let mut previous_end = 0;
        for (&offset, live) in &model {
            prop_assert!(offset >= previous_end, "blocks overlap at {}", offset);
            previous_end = offset + live.size as u64;
        }
        let stats = allocator.stats();
        prop_assert_eq!(stats.live_allocations, model.len() as u64);
        prop_assert_eq!(
            stats.allocated_bytes,
            model.values().map(|l| l.size as u64).sum::<u64>()
        );
        prop_assert!(stats.peak_bytes >= stats.allocated_bytes);
        if let Err(err) = allocator.check() {
            return Err(TestCaseError::fail(format!("check failed: {err}")));
        }
    }
    for &offset in model.keys() {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { allocator.free_offset(&ctx, offset) }.unwrap();
    }
    prop_assert_eq!(allocator.stats().live_allocations, 0);
    Ok(())
}

/// Frees that must be refused without any change.
fn bad_frees_change_nothing(allocator: &dyn ShmAllocator, segment_size: u64) {
    let ctx = MemContext::default();
    let live = allocator.allocate_offset(&ctx, 256, 16).unwrap();
    let before = allocator.stats();
    for bogus in [
        0,
        1,
        7,
        live + 1,
        live + 8,
        live + 128,
        segment_size,
        segment_size + 4096,
        u64::MAX - 7,
    ] {
        assert!(
            // SAFETY: nothing uses the block after it is freed.
            unsafe { allocator.free_offset(&ctx, bogus) }.is_err(),
            "free({bogus}) was accepted (live block at {live})"
        );
        assert_eq!(
            allocator.stats(),
            before,
            "a refused free({bogus}) changed the accounting"
        );
        allocator.check().unwrap();
    }
    assert!(matches!(
        allocator.allocate_offset(&ctx, 64, 3),
        Err(Error::InvalidAlignment { .. })
    ));
    assert!(matches!(
        allocator.allocate_offset(&ctx, usize::MAX / 2, 8),
        Err(Error::OutOfMemory { .. }) | Err(Error::InvalidSize { .. })
    ));
    assert_eq!(allocator.stats(), before);
    // SAFETY: nothing uses the block after it is freed.
    unsafe { allocator.free_offset(&ctx, live) }.unwrap();
    assert!(matches!(
        // SAFETY: nothing uses the block after it is freed.
        unsafe { allocator.free_offset(&ctx, live) },
        Err(Error::InvalidFree { .. })
    ));
}

fn every_power_of_two_alignment(allocator: &dyn ShmAllocator) {
    let ctx = MemContext::default();
    for shift in 0..=12 {
        let align = 1usize << shift;
        for size in [1, 24, 100, 5000] {
            let offset = allocator.allocate_offset(&ctx, size, align).unwrap();
            let block = allocator.full_ptr(offset).unwrap();
            assert_eq!(offset % align as u64, 0, "offset, align {align}");
            assert_eq!(block.as_ptr() as usize % align, 0, "address, align {align}");
            // SAFETY: nothing uses the block after it is freed.
            unsafe { allocator.free_offset(&ctx, offset) }.unwrap();
        }
    }
    assert_eq!(allocator.stats().live_allocations, 0);
}

/// Fills past the initial size: the allocator must grow the segment.
fn grows_instead_of_failing(allocator: &dyn ShmAllocator, initial: u64) {
    let ctx = MemContext::default();
    let mut blocks = Vec::new();
    let mut total = 0u64;
    while total < 3 * initial {
        blocks.push(allocator.allocate_offset(&ctx, 4000, 8).unwrap());
        total += 4000;
    }
    allocator.check().unwrap();
    for offset in blocks {
        // SAFETY: nothing uses the block after it is freed.
        unsafe { allocator.free_offset(&ctx, offset) }.unwrap();
    }
    assert_eq!(allocator.stats().live_allocations, 0);
}

/// Instantiates the family tests for one allocator type (segments are
/// private mappings: untouched pages cost nothing, so they are generous).
macro_rules! family_tests {
    ($module:ident, $allocator:ty) => {
        family_tests!($module, $allocator, Default::default());
    };
    ($module:ident, $allocator:ty, $params:expr) => {
        mod $module {
            use super::*;

            fn fresh(size: u64, max: u64) -> $allocator {
                let options = SegmentOptions::private().size(size).max_size(max);
                <$allocator>::create_with(&options, &$params).unwrap()
            }

            proptest! {
                #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
                #[test]
                fn random_workloads_match_the_model(ops in proptest::collection::vec(op(), 1..120)) {
                    let allocator = fresh(32 << 20, 32 << 20);
                    run_model(&allocator, &ops)?;
                }
            }

            #[test]
            fn bad_frees_are_refused_and_change_nothing() {
                let allocator = fresh(32 << 20, 32 << 20);
                let size = allocator.segment().size();
                bad_frees_change_nothing(&allocator, size);
            }

            #[test]
            fn every_power_of_two_alignment_is_honoured() {
                every_power_of_two_alignment(&fresh(32 << 20, 32 << 20));
            }

            #[test]
            fn a_growable_segment_grows_instead_of_failing() {
                let allocator = fresh(1 << 20, 64 << 20);
                grows_instead_of_failing(&allocator, 1 << 20);
                assert!(allocator.segment().size() > 1 << 20);
            }

            #[test]
            fn ecosystem_containers_run_on_it() {
                let allocator = fresh(64 << 20, 64 << 20);
                let mut numbers = allocator_api2::vec::Vec::new_in(&allocator);
                numbers.extend(0..20_000u64);
                assert_eq!(numbers.iter().sum::<u64>(), 199_990_000);
                let boxed = allocator_api2::boxed::Box::new_in([9u8; 500], &allocator);
                let mut map = hashbrown::HashMap::new_in(&allocator);
                for i in 0..2000u32 {
                    map.insert(i, i + 1);
                }
                assert_eq!((boxed[499], map[&1999]), (9, 2000));
                assert!(allocator.stats().live_allocations >= 3);
                drop((numbers, boxed, map));
                assert_eq!(allocator.stats().live_allocations, 0);
                allocator.check().unwrap();
            }

            #[test]
            fn a_segment_of_another_kind_is_refused() {
                let (options, _cleanup) = common::fresh_shm(stringify!($module));
                let _bump = shmkit::BumpAllocator::create(&options.clone().size(1 << 20)).unwrap();
                assert!(matches!(
                    <$allocator>::attach(&options),
                    Err(Error::WrongAllocator { .. })
                ));
            }
        }
    };
}

// One line per shared allocator of the family.
// Slots up to 256 KiB, so the pool serves the general-purpose workloads too.
family_tests!(
    pool,
    shmkit::PoolAllocator,
    shmkit::PoolParams::new(&[64, 1024, 16384, 256 << 10]).unwrap()
);
family_tests!(buddy, shmkit::BuddyAllocator);
family_tests!(free_list, shmkit::FreeListAllocator);
family_tests!(size_class, shmkit::SizeClassAllocator);
family_tests!(thread_local, shmkit::ThreadLocalAllocator);
