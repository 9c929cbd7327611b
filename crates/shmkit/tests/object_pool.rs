//! The object pools: reuse (same address, state kept or reset), drops
//! counted exactly once, fixed-capacity exhaustion and recovery, growth
//! that moves nothing, panicking constructors and reset hooks, and many
//! threads contending for a few objects.

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use shmkit::local::object_pool::{ConcurrentPool, ObjectPool};
use shmkit::Error;

/// An object that counts its constructions and drops in shared counters.
struct Counted {
    value: u64,
    drops: Arc<AtomicUsize>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Default)]
struct Counters {
    made: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
}

impl Counters {
    /// A constructor that counts, for either pool.
    fn maker(&self) -> impl Fn() -> Counted + Send + Sync + 'static {
        let counters = self.clone();
        move || {
            counters.made.fetch_add(1, Ordering::SeqCst);
            Counted {
                value: 0,
                drops: counters.drops.clone(),
            }
        }
    }

    fn made(&self) -> usize {
        self.made.load(Ordering::SeqCst)
    }

    fn drops(&self) -> usize {
        self.drops.load(Ordering::SeqCst)
    }
}

/// A constructor that panics on the calls whose number (from 1) is in
/// `panics_on`, counting every call.
fn flaky_maker(
    counters: &Counters,
    panics_on: &'static [usize],
) -> impl Fn() -> Counted + Send + Sync + 'static {
    let counters = counters.clone();
    let calls = AtomicUsize::new(0);
    move || {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if panics_on.contains(&call) {
            panic!("constructor call {call} fails");
        }
        counters.made.fetch_add(1, Ordering::SeqCst);
        Counted {
            value: 0,
            drops: counters.drops.clone(),
        }
    }
}

/// A reset hook that panics on objects holding `POISON`, and zeroes the
/// others.
const POISON: u64 = 13;

fn panicking_reset(object: &mut Counted) {
    if object.value == POISON {
        panic!("cannot reset {POISON}");
    }
    object.value = 0;
}

// ------------------------------------------------------------ ObjectPool

#[test]
fn reuse_gives_back_the_same_object_with_its_state() {
    let pool = ObjectPool::new(|| 0u64);
    let address = {
        let mut first = pool.acquire().unwrap();
        *first = 42;
        &*first as *const u64
    };
    let again = pool.acquire().unwrap();
    assert_eq!(&*again as *const u64, address);
    assert_eq!(*again, 42, "no reset hook: the state is kept");
    assert_eq!(pool.capacity(), 1);
}

#[test]
fn the_reset_hook_runs_on_return_and_keeps_the_buffer() {
    let pool = ObjectPool::new(|| Vec::<u8>::with_capacity(256)).reset_with(|v| v.clear());
    let buffer = {
        let mut v = pool.acquire().unwrap();
        v.extend_from_slice(&[7; 100]);
        v.as_ptr()
    };
    let v = pool.acquire().unwrap();
    assert!(v.is_empty());
    assert!(v.capacity() >= 256);
    assert_eq!(v.as_ptr(), buffer, "the heap buffer is reused");
}

#[test]
fn the_most_recently_returned_object_is_lent_first() {
    let pool = ObjectPool::new(|| 0u32);
    let (a, b) = (pool.acquire().unwrap(), pool.acquire().unwrap());
    let (a_at, b_at) = (&*a as *const u32, &*b as *const u32);
    drop(b);
    drop(a);
    assert_eq!(&*pool.acquire().unwrap() as *const u32, a_at);
    let (first, second) = (pool.acquire().unwrap(), pool.acquire().unwrap());
    assert_eq!(
        (&*first as *const u32, &*second as *const u32),
        (a_at, b_at)
    );
}

#[test]
fn stats_follow_acquire_and_release() {
    let pool = ObjectPool::new(|| 0u8);
    assert_eq!(
        (pool.capacity(), pool.available(), pool.in_use()),
        (0, 0, 0)
    );
    let a = pool.acquire().unwrap();
    let b = pool.acquire().unwrap();
    assert_eq!(
        (pool.capacity(), pool.available(), pool.in_use()),
        (2, 0, 2)
    );
    drop(a);
    assert_eq!(
        (pool.capacity(), pool.available(), pool.in_use()),
        (2, 1, 1)
    );
    drop(b);
    assert_eq!(
        (pool.capacity(), pool.available(), pool.in_use()),
        (2, 2, 0)
    );
    assert_eq!(pool.max_objects(), None);
}

#[test]
fn dropping_the_pool_drops_every_object_exactly_once() {
    let counters = Counters::default();
    let pool = ObjectPool::new(counters.maker());
    for round in 0..3 {
        let guards: Vec<_> = (0..20 + round).map(|_| pool.acquire().unwrap()).collect();
        drop(guards);
    }
    assert_eq!(counters.made(), 22, "objects are reused across rounds");
    assert_eq!(counters.drops(), 0, "no object is dropped while pooled");
    drop(pool);
    assert_eq!(counters.drops(), 22);
}

#[test]
fn a_bounded_pool_runs_out_and_recovers() {
    let pool = ObjectPool::bounded(3, || 0u32);
    let mut guards: Vec<_> = (0..3).map(|_| pool.acquire().unwrap()).collect();
    assert!(matches!(
        pool.acquire(),
        Err(Error::PoolExhausted { max_objects: 3 })
    ));
    assert!(pool.try_acquire().is_none());
    assert_eq!(pool.capacity(), 3);

    let returned = guards.pop().unwrap();
    let address = &*returned as *const u32;
    drop(returned);
    let again = pool.try_acquire().expect("an object came back");
    assert_eq!(&*again as *const u32, address);
    assert!(pool.try_acquire().is_none());
    assert_eq!(pool.max_objects(), Some(3));
}

#[test]
fn a_pool_bounded_at_zero_lends_nothing() {
    let pool = ObjectPool::bounded(0, || 0u32);
    assert!(matches!(
        pool.acquire(),
        Err(Error::PoolExhausted { max_objects: 0 })
    ));
    assert!(pool.prefill(0).is_ok());
}

#[test]
fn growth_keeps_earlier_objects_at_their_addresses() {
    let pool = ObjectPool::new(|| [0u64; 8]);
    let mut guards = Vec::new();
    let mut addresses = Vec::new();
    // 1000 objects: chunks of 8, 8, 16, ..., 512, each growth while every
    // earlier object is lent and written.
    for i in 0..1000u64 {
        let mut guard = pool.acquire().unwrap();
        guard.fill(i);
        addresses.push(&*guard as *const [u64; 8]);
        guards.push(guard);
    }
    for (i, (guard, &address)) in guards.iter().zip(&addresses).enumerate() {
        assert_eq!(&**guard as *const [u64; 8], address, "object {i} moved");
        assert_eq!(**guard, [i as u64; 8], "object {i} changed");
    }
    assert_eq!(pool.capacity(), 1000);
    let distinct: HashSet<_> = addresses.iter().collect();
    assert_eq!(distinct.len(), 1000);
}

#[test]
fn prefill_makes_the_objects_ahead_of_time() {
    let counters = Counters::default();
    let pool = ObjectPool::new(counters.maker());
    pool.prefill(10).unwrap();
    assert_eq!(counters.made(), 10);
    assert_eq!((pool.capacity(), pool.available()), (10, 10));
    let guards: Vec<_> = (0..10).map(|_| pool.acquire().unwrap()).collect();
    assert_eq!(counters.made(), 10, "prefilled objects are lent first");
    drop(guards);
    let bounded = ObjectPool::bounded(4, || 0u8);
    assert!(matches!(bounded.prefill(5), Err(Error::InvalidSize { .. })));
    assert_eq!(bounded.capacity(), 0, "a refused prefill makes nothing");
}

#[test]
fn a_panicking_constructor_leaves_the_pool_usable() {
    let counters = Counters::default();
    // A bound of 1: the failed construction must not use up the only slot.
    let pool = ObjectPool::bounded(1, flaky_maker(&counters, &[1]));
    let failed = catch_unwind(AssertUnwindSafe(|| pool.acquire().map(|_| ())));
    assert!(
        failed.is_err(),
        "the constructor's panic reaches the caller"
    );
    assert_eq!((pool.capacity(), pool.in_use()), (0, 0));

    let mut object = pool.acquire().unwrap();
    object.value = 5;
    drop(object);
    assert_eq!(pool.acquire().unwrap().value, 5);
    drop(pool);
    assert_eq!((counters.made(), counters.drops()), (1, 1));
}

#[test]
fn a_panic_during_prefill_keeps_the_objects_made_so_far() {
    let counters = Counters::default();
    let pool = ObjectPool::new(flaky_maker(&counters, &[4]));
    assert!(catch_unwind(AssertUnwindSafe(|| pool.prefill(6))).is_err());
    assert_eq!((pool.capacity(), pool.available()), (3, 3));
    pool.prefill(6).unwrap();
    assert_eq!(pool.available(), 6);
    drop(pool);
    assert_eq!(counters.drops(), counters.made());
}

#[test]
fn a_panicking_reset_drops_the_object_and_keeps_the_pool_usable() {
    let counters = Counters::default();
    let pool = ObjectPool::bounded(2, counters.maker()).reset_with(panicking_reset);
    let mut poisoned = pool.acquire().unwrap();
    let mut healthy = pool.acquire().unwrap();
    poisoned.value = POISON;
    healthy.value = 1;
    drop(healthy);

    let reset = catch_unwind(AssertUnwindSafe(|| drop(poisoned)));
    assert!(reset.is_err(), "the hook's panic reaches the caller");
    assert_eq!(
        counters.drops(),
        1,
        "the object that failed to reset is dropped"
    );
    assert_eq!(
        (pool.capacity(), pool.available(), pool.in_use()),
        (1, 1, 0)
    );

    // Its slot is free again: the pool reaches its bound of 2 once more.
    let a = pool.acquire().unwrap();
    let b = pool.acquire().unwrap();
    assert_eq!((a.value, b.value), (0, 0));
    assert_eq!(counters.made(), 3);
    drop((a, b));
    drop(pool);
    assert_eq!(counters.drops(), 3, "every object made is dropped once");
}

#[test]
fn objects_that_own_memory_are_freed_with_the_pool() {
    // Leak checkers (and Miri) see the strings; here, the drop count.
    let counters = Counters::default();
    let pool = ObjectPool::new({
        let maker = counters.maker();
        move || (maker(), String::from("owned"))
    });
    let guards: Vec<_> = (0..17).map(|_| pool.acquire().unwrap()).collect();
    assert!(guards.iter().all(|g| g.1 == "owned"));
    drop(guards);
    drop(pool);
    assert_eq!(counters.drops(), 17);
}

// -------------------------------------------------------- ConcurrentPool

#[test]
fn concurrent_reuse_gives_back_the_same_object_reset() {
    let pool = ConcurrentPool::new(|| Vec::<u8>::with_capacity(256)).reset_with(|v| v.clear());
    let buffer = {
        let mut v = pool.acquire().unwrap();
        v.push(1);
        v.as_ptr()
    };
    let v = pool.acquire().unwrap();
    assert!(v.is_empty());
    assert_eq!(v.as_ptr(), buffer);
    assert_eq!(
        (pool.capacity(), pool.available(), pool.in_use()),
        (1, 0, 1)
    );
}

#[test]
fn concurrent_pool_drops_every_object_exactly_once() {
    let counters = Counters::default();
    let pool = ConcurrentPool::new(counters.maker());
    pool.prefill(5).unwrap();
    let guards: Vec<_> = (0..40).map(|_| pool.acquire().unwrap()).collect();
    drop(guards);
    assert_eq!((counters.made(), counters.drops()), (40, 0));
    drop(pool);
    assert_eq!(counters.drops(), 40);
}

#[test]
fn concurrent_bounded_pool_runs_out_and_recovers() {
    let pool = ConcurrentPool::bounded(2, || 0u32);
    let a = pool.acquire().unwrap();
    let b = pool.acquire().unwrap();
    assert!(matches!(
        pool.acquire(),
        Err(Error::PoolExhausted { max_objects: 2 })
    ));
    assert!(pool.try_acquire().is_none());
    let address = &*b as *const u32;
    drop(b);
    assert_eq!(&*pool.try_acquire().unwrap() as *const u32, address);
    drop(a);
    assert_eq!((pool.capacity(), pool.available()), (2, 2));
}

#[test]
fn concurrent_growth_keeps_earlier_objects_at_their_addresses() {
    let pool = ConcurrentPool::new(|| 0usize);
    let mut guards = Vec::new();
    // Chunks of 16, 32, 64, ...: 1000 objects span six of them.
    for i in 0..1000 {
        let mut guard = pool.acquire().unwrap();
        *guard = i;
        guards.push((&*guard as *const usize, guard));
    }
    for (i, (address, guard)) in guards.iter().enumerate() {
        assert_eq!(&**guard as *const usize, *address, "object {i} moved");
        assert_eq!(**guard, i);
    }
}

#[test]
fn concurrent_panics_in_user_code_leave_the_pool_usable() {
    let counters = Counters::default();
    let pool = ConcurrentPool::bounded(2, flaky_maker(&counters, &[1])).reset_with(panicking_reset);
    assert!(catch_unwind(AssertUnwindSafe(|| pool.acquire().map(|_| ()))).is_err());
    assert_eq!(pool.capacity(), 0);

    let mut poisoned = pool.acquire().unwrap();
    poisoned.value = POISON;
    assert!(catch_unwind(AssertUnwindSafe(|| drop(poisoned))).is_err());
    assert_eq!(counters.drops(), 1);
    assert_eq!((pool.capacity(), pool.in_use()), (0, 0));

    // Both slots (one vacated by the constructor, one by the reset) work.
    let a = pool.acquire().unwrap();
    let b = pool.acquire().unwrap();
    assert!(pool.try_acquire().is_none());
    drop((a, b));
    drop(pool);
    assert_eq!((counters.made(), counters.drops()), (3, 3));
}

#[test]
fn a_guard_may_be_released_on_another_thread() {
    let pool = ConcurrentPool::new(|| 0u64).reset_with(|n| *n = 0);
    let mut guard = pool.acquire().unwrap();
    *guard = 9;
    std::thread::scope(|scope| {
        scope.spawn(move || assert_eq!(*guard, 9)); // dropped there
    });
    assert_eq!((pool.available(), pool.in_use()), (1, 0));
    assert_eq!(*pool.acquire().unwrap(), 0);
}

/// An object that detects being lent to two holders at once.
struct Exclusive {
    held: AtomicBool,
    /// The object's address, recorded by its first holder: a later holder
    /// finding it elsewhere means the object moved.
    home: AtomicUsize,
    /// Written without atomics by each holder: a double hand-out would also
    /// lose counts here.
    uses: u64,
}

impl Exclusive {
    fn new() -> Exclusive {
        Exclusive {
            held: AtomicBool::new(false),
            home: AtomicUsize::new(0),
            uses: 0,
        }
    }

    /// What a holder does with the object while it holds it.
    fn hold(&mut self) {
        assert!(
            !self.held.swap(true, Ordering::Relaxed),
            "lent to two holders at once"
        );
        let here = self as *mut Exclusive as usize;
        match self
            .home
            .compare_exchange(0, here, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => {}
            Err(home) => assert_eq!(home, here, "the object moved"),
        }
        self.uses += 1;
    }

    fn let_go(&mut self) {
        assert!(
            self.held.swap(false, Ordering::Relaxed),
            "released while not held"
        );
    }
}

const THREADS: usize = 8;
const ROUNDS: usize = 100_000;

#[test]
fn contention_never_lends_an_object_twice() {
    let pool = ConcurrentPool::bounded(4, Exclusive::new);
    let acquired = AtomicUsize::new(0);
    let start = Barrier::new(THREADS);
    // First, the contended state on purpose: four holders at once, and a
    // fifth thread refused while they hold.
    let (held_at_once, refusals, filled) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        std::sync::atomic::AtomicBool::new(false),
    );
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                start.wait();
                let mut mine = 0;
                while !filled.load(Ordering::Acquire) {
                    let Some(mut object) = pool.try_acquire() else {
                        refusals.fetch_add(1, Ordering::AcqRel);
                        std::thread::yield_now();
                        continue;
                    };
                    object.hold();
                    held_at_once.fetch_add(1, Ordering::AcqRel);
                    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                    while held_at_once.load(Ordering::Acquire) < 4
                        || refusals.load(Ordering::Acquire) == 0
                    {
                        assert!(
                            std::time::Instant::now() < deadline,
                            "four holders and a refusal never met"
                        );
                        std::thread::yield_now();
                    }
                    filled.store(true, Ordering::Release);
                    object.let_go();
                    mine += 1;
                }
                for _ in 0..ROUNDS {
                    // Eight threads, four objects: exhaustion is expected.
                    if let Some(mut object) = pool.try_acquire() {
                        object.hold();
                        object.let_go();
                        mine += 1;
                    } else {
                        std::thread::yield_now();
                    }
                }
                acquired.fetch_add(mine, Ordering::Relaxed);
            });
        }
    });
    // The four holders made the pool grow to its bound, and it refused
    // while they held.
    let capacity = pool.capacity();
    assert_eq!(capacity, 4);
    assert!(refusals.into_inner() > 0);
    assert_eq!((pool.available(), pool.in_use()), (capacity, 0));
    let objects: Vec<_> = (0..capacity).map(|_| pool.acquire().unwrap()).collect();
    let uses: u64 = objects.iter().map(|o| o.uses).sum();
    assert_eq!(uses as usize, acquired.into_inner(), "a use was lost");
    assert!(objects.iter().all(|o| !o.held.load(Ordering::Relaxed)));
}

#[test]
fn growth_under_contention_hands_out_distinct_objects() {
    const HELD: usize = 16;
    let counters = Counters::default();
    let pool = ConcurrentPool::new({
        let maker = counters.maker();
        move || (maker(), Exclusive::new())
    });
    let start = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| {
                start.wait();
                for _ in 0..200 {
                    // Hold several at once, so the empty pool grows while
                    // other threads acquire and release.
                    let mut guards: Vec<_> = (0..HELD).map(|_| pool.acquire().unwrap()).collect();
                    for guard in &mut guards {
                        guard.1.hold();
                    }
                    for guard in &mut guards {
                        guard.1.let_go();
                    }
                }
            });
        }
    });
    let capacity = pool.capacity();
    assert!(
        (HELD..=THREADS * HELD).contains(&capacity),
        "capacity {capacity}"
    );
    assert_eq!(counters.made(), capacity);
    assert_eq!((pool.available(), pool.in_use()), (capacity, 0));

    let everything: Vec<_> = (0..capacity).map(|_| pool.acquire().unwrap()).collect();
    let distinct: HashSet<_> = everything
        .iter()
        .map(|g| &g.1 as *const Exclusive)
        .collect();
    assert_eq!(distinct.len(), capacity);
    let uses: u64 = everything.iter().map(|g| g.1.uses).sum();
    assert_eq!(uses as usize, THREADS * 200 * HELD, "a use was lost");
    drop(everything);
    drop(pool);
    assert_eq!(counters.drops(), capacity);
}

#[test]
fn contention_on_a_bounded_pool_with_a_reset_hook() {
    // Holders never let go themselves: the reset hook does, on the
    // releasing thread. Were an object published before its hook ran, the
    // next holder would find it still held.
    let pool = ConcurrentPool::bounded(2, Exclusive::new).reset_with(Exclusive::let_go);
    let acquired = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..ROUNDS / 4 {
                    match pool.acquire() {
                        Ok(mut object) => {
                            object.hold();
                            acquired.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::PoolExhausted { max_objects: 2 }) => std::thread::yield_now(),
                        Err(other) => panic!("{other}"),
                    }
                }
            });
        }
    });
    // A second object is made only if two threads ever held one at once,
    // which the scheduler may never arrange: one or two, never more.
    let capacity = pool.capacity();
    assert!((1..=2).contains(&capacity), "capacity {capacity}");
    assert_eq!(pool.in_use(), 0);
    let mut objects: Vec<_> = (0..capacity).map(|_| pool.acquire().unwrap()).collect();
    let uses: u64 = objects.iter().map(|o| o.uses).sum();
    assert_eq!(uses as usize, acquired.into_inner());
    for object in &mut objects {
        object.hold(); // for the hook, which lets go when they drop
    }
}
