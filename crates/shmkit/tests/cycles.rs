//! Links that live in a segment can be damaged: one stray write makes a
//! list point back at itself, or far outside anything the segment holds.
//! For every structure whose links live in a segment, these tests write a
//! self-loop and a wild link into a live instance, then make the next
//! ordinary call. It must come back within a bounded time with a typed
//! error, or, where the structure can route around the damage, with a
//! correct result; never spin, never hand out memory that is in use.
//!
//! A watchdog aborts the process when a call runs for more than
//! [`STALL`]: a hang fails the run instead of freezing it.
//!
//! The words written here follow the layouts documented in each module
//! (the size-class page descriptors, the free-list and buddy block links,
//! the pool's slot links, the directory's root block, the hash map's
//! fields and control bytes, the rings' lines). The thread-local
//! magazines are reached from a unit test in their own module.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use shmkit::containers::{MpmcRing, ShmHashMap, SpscRing};
use shmkit::named::NamedObjects;
use shmkit::{
    BuddyAllocator, Error, FreeListAllocator, FullPtr, Offset, PoolAllocator, PoolParams, Segment,
    SegmentAllocator, SegmentOptions, ShmAllocator, SizeClassAllocator, ThreadLocalAllocator,
};

/// The longest one call may take before the watchdog calls it a hang.
const STALL: Duration = Duration::from_secs(30);

/// Calls under way, each with its name and start: what the watchdog watches.
static RUNNING: Mutex<Vec<(u64, String, Instant)>> = Mutex::new(Vec::new());

/// Starts (once) a thread that aborts the process when a call registered
/// by [`bounded`] has run for longer than [`STALL`].
fn watchdog() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(200));
            let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, what, _)) = running.iter().find(|(_, _, start)| start.elapsed() > STALL)
            {
                eprintln!("cycles: `{what}` ran over {STALL:?} (a hang)");
                std::process::abort();
            }
        });
    });
}

/// Runs `call` under the watchdog.
fn bounded<R>(what: &str, call: impl FnOnce() -> R) -> R {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    watchdog();
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, what.to_owned(), Instant::now()));
    let result = call();
    RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(running, _, _)| *running != id);
    result
}

/// The two kinds of damage written into a link.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// The link names the node it is stored in.
    SelfLoop,
    /// The link names something far beyond anything the segment holds.
    Wild,
}

const BOTH: [Damage; 2] = [Damage::SelfLoop, Damage::Wild];

/// A 64-bit word of a segment.
fn word(segment: &Segment, offset: u64) -> &AtomicU64 {
    let ptr = segment
        .resolve(Offset::<AtomicU64>::from_raw(offset))
        .expect("a word inside the segment");
    // SAFETY: `resolve` checked bounds and alignment; an atomic is valid for
    // any bytes; the reference lives no longer than the segment's borrow.
    unsafe { ptr.as_ref() }
}

/// A 32-bit word of a segment.
fn word32(segment: &Segment, offset: u64) -> &AtomicU32 {
    let ptr = segment
        .resolve(Offset::<AtomicU32>::from_raw(offset))
        .expect("a word inside the segment");
    // SAFETY: as in `word`.
    unsafe { ptr.as_ref() }
}

fn is_corrupt_header<T>(result: &shmkit::Result<T>) -> bool {
    matches!(result, Err(Error::CorruptHeader { .. }))
}

fn is_corrupt_data<T>(result: &shmkit::Result<T>) -> bool {
    matches!(result, Err(Error::CorruptData { .. }))
}

// ------------------------------------------------------------ size classes

/// Bytes of a size-class page (`SizeClassAllocator::PAGE_SIZE`).
const PAGE: u64 = SizeClassAllocator::PAGE_SIZE;
/// A page descriptor: 64 bytes at `data_offset + 64 * page`.
const DESC_LEN: u64 = 64;
/// The descriptor's state word: phase in the low byte (0 free, 1 small).
const DESC_STATE: u64 = 0;
/// The descriptor's link word: `index + 1` of the next page on its stack.
const DESC_LINK: u64 = 8;
/// The descriptor's run length (free runs and large blocks).
const DESC_RUN: u64 = 16;
const PHASE_FREE: u64 = 0;
const PHASE_SMALL: u64 = 1;

fn desc_word(segment: &Segment, page: u64, field: u64) -> &AtomicU64 {
    word(segment, segment.data_offset() + page * DESC_LEN + field)
}

/// What a damaged link of page `page` holds.
fn page_link(damage: Damage, page: u64) -> u64 {
    match damage {
        Damage::SelfLoop => page + 1,
        Damage::Wild => 0x7fff_ffff_0000,
    }
}

/// Allocates `size` bytes until a call fails, at most `limit` times; every
/// block handed out before must be new. Returns the failure.
fn allocate_until_error<A: ShmAllocator>(heap: &A, what: &str, size: usize, limit: usize) -> Error {
    let mut seen = HashSet::new();
    for _ in 0..limit {
        match bounded(what, || heap.allocate(size)) {
            Ok(block) => assert!(
                seen.insert(block.offset().raw()),
                "{what}: block {} handed out twice",
                block.offset().raw()
            ),
            Err(error) => return error,
        }
    }
    panic!("{what}: {limit} allocations succeeded on a damaged list");
}

/// Page 0 is the only page of its class list (one block in use); its link
/// is damaged, then the page is filled: taking the full page off the list
/// must meet the damage and report it.
fn class_list_damaged<A: ShmAllocator>(heap: &A, segment: &Segment, damage: Damage) {
    let what = format!("{} page list, {damage:?}", heap.kind());
    heap.allocate(64).unwrap();
    let state = desc_word(segment, 0, DESC_STATE).load(Ordering::Relaxed);
    assert_eq!(state & 0xff, PHASE_SMALL, "page 0 serves the first block");
    assert_eq!(desc_word(segment, 0, DESC_LINK).load(Ordering::Relaxed), 0);
    desc_word(segment, 0, DESC_LINK).store(page_link(damage, 0), Ordering::Relaxed);
    // A page holds fewer than PAGE / 64 blocks of 64 bytes.
    let error = allocate_until_error(heap, &what, 64, (PAGE / 64) as usize + 8);
    assert!(
        matches!(error, Error::CorruptHeader { .. }),
        "{what}: {error}"
    );
    assert!(
        is_corrupt_header(&bounded(&what, || heap.check())),
        "{what}: check"
    );
}

#[test]
fn size_class_page_list_self_loop_and_wild_link_are_errors() {
    for damage in BOTH {
        let heap = SizeClassAllocator::create(&SegmentOptions::private().size(4 << 20)).unwrap();
        class_list_damaged(&heap, heap.segment(), damage);
    }
}

#[test]
fn thread_local_page_list_self_loop_and_wild_link_are_errors() {
    for damage in BOTH {
        let heap = ThreadLocalAllocator::create(&SegmentOptions::private().size(4 << 20)).unwrap();
        class_list_damaged(&heap, heap.segment(), damage);
    }
}

/// Two pages on one class list, the second linking back to the first: a
/// cycle of two, which no single link shows.
#[test]
fn size_class_page_list_two_page_cycle_is_an_error() {
    let heap = SizeClassAllocator::create(&SegmentOptions::private().size(4 << 20)).unwrap();
    let segment = heap.segment();
    let first = heap.allocate(64).unwrap().offset().raw();
    // Page 1's first block lies a page after page 0's.
    let mut on_first_page = vec![first];
    loop {
        let block = heap.allocate(64).unwrap();
        if block.offset().raw() >= first + PAGE {
            break;
        }
        on_first_page.push(block.offset().raw());
    }
    // Page 0 is full and off the list; a free puts it back on top of
    // page 1: the list is 0 -> 1.
    // SAFETY: nothing uses the block after it is freed.
    unsafe { heap.free(heap.full_ptr(on_first_page[0]).unwrap()) }.unwrap();
    assert_eq!(desc_word(segment, 0, DESC_LINK).load(Ordering::Relaxed), 2);
    assert_eq!(desc_word(segment, 1, DESC_LINK).load(Ordering::Relaxed), 0);
    desc_word(segment, 1, DESC_LINK).store(1, Ordering::Relaxed);
    let error = allocate_until_error(&heap, "size-class two-page cycle", 64, PAGE as usize / 32);
    assert!(matches!(error, Error::CorruptHeader { .. }), "{error}");
}

/// A freed large block is the only run on the free-run stack; its link is
/// damaged. The next page taken from the stack must not be handed out
/// while in use, nor the stack followed forever.
#[test]
fn size_class_free_run_self_loop_and_wild_link_are_errors() {
    for damage in BOTH {
        let what = format!("size-class free runs, {damage:?}");
        let heap = SizeClassAllocator::create(&SegmentOptions::private().size(4 << 20)).unwrap();
        let segment = heap.segment();
        let large = heap.allocate(100 << 10).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(large) }.unwrap();
        assert_eq!(
            desc_word(segment, 0, DESC_STATE).load(Ordering::Relaxed),
            PHASE_FREE
        );
        assert_eq!(desc_word(segment, 0, DESC_RUN).load(Ordering::Relaxed), 2);
        desc_word(segment, 0, DESC_LINK).store(page_link(damage, 0), Ordering::Relaxed);
        assert!(
            is_corrupt_header(&bounded(&what, || heap.check())),
            "{what}"
        );
        let small = bounded(&what, || heap.allocate(64));
        assert!(is_corrupt_header(&small), "{what}: {small:?}");
    }
}

// ------------------------------------------------------------ pool

#[test]
fn pool_free_stack_self_loop_and_wild_link_are_errors() {
    for damage in BOTH {
        let what = format!("pool free stack, {damage:?}");
        let params = PoolParams::new(&[64]).unwrap();
        let pool =
            PoolAllocator::create_with(&SegmentOptions::private().size(1 << 20), &params).unwrap();
        let freed = pool.allocate(64).unwrap(); // slot 0 of page 0
        let kept = pool.allocate(64).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { pool.free(freed) }.unwrap();
        // A free slot's first four bytes hold the index of the next one.
        let link = word32(pool.segment(), freed.offset().raw());
        assert_eq!(link.load(Ordering::Relaxed), u32::MAX, "the stack's end");
        link.store(
            match damage {
                Damage::SelfLoop => 0,
                Damage::Wild => 0x7fff_fff0,
            },
            Ordering::Relaxed,
        );
        let mut live: HashSet<u64> = [kept.offset().raw()].into();
        let mut failed = false;
        // The slot on top was free, so handing it out is correct; the
        // damage is met at the latest by the pop after it.
        for _ in 0..2 {
            match bounded(&what, || pool.allocate(64)) {
                Ok(block) => assert!(live.insert(block.offset().raw()), "{what}: twice"),
                Err(error) => {
                    assert!(matches!(error, Error::CorruptHeader { .. }), "{what}");
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "{what}: the damage went unnoticed");
        assert!(bounded(&what, || pool.check()).is_err(), "{what}: check");
    }
}

#[test]
fn pool_self_loop_is_refused_at_the_first_pop() {
    let params = PoolParams::new(&[64]).unwrap();
    let pool =
        PoolAllocator::create_with(&SegmentOptions::private().size(1 << 20), &params).unwrap();
    let freed = pool.allocate(64).unwrap();
    // SAFETY: nothing uses the block after it is freed.
    unsafe { pool.free(freed) }.unwrap();
    word32(pool.segment(), freed.offset().raw()).store(0, Ordering::Relaxed);
    let next = bounded("pool self-loop", || pool.allocate(64));
    assert!(is_corrupt_header(&next), "{next:?}");
}

// ------------------------------------------------------------ free list

#[test]
fn free_list_chain_self_loop_and_wild_link_are_errors() {
    for damage in BOTH {
        let what = format!("free-list chain, {damage:?}");
        let heap = FreeListAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        // Too large for the thread cache: a freed block goes on a list.
        const LISTED: usize = 600;
        let before = heap.allocate(LISTED).unwrap();
        let freed = heap.allocate(LISTED).unwrap();
        let after = heap.allocate(LISTED).unwrap();
        // SAFETY: nothing uses the block after it is freed.
        unsafe { heap.free(freed) }.unwrap();
        // A free block's list links are its first payload words: next, prev.
        let block = freed.offset().raw() - 32;
        let next = word(heap.segment(), freed.offset().raw());
        assert_eq!(next.load(Ordering::Relaxed), 0, "alone in its list");
        next.store(
            match damage {
                Damage::SelfLoop => block,
                Damage::Wild => 1 << 40,
            },
            Ordering::Relaxed,
        );
        assert!(
            is_corrupt_header(&bounded(&what, || heap.check())),
            "{what}"
        );
        let result = bounded(&what, || heap.allocate(LISTED));
        assert!(is_corrupt_header(&result), "{what}: {result:?}");
        // The report stands; the rebuild it triggered makes the heap usable.
        let again = bounded(&what, || heap.allocate(LISTED)).unwrap();
        for live in [before, after] {
            assert_ne!(again.offset(), live.offset(), "{what}");
        }
        bounded(&what, || heap.check()).unwrap();
    }
}

// ------------------------------------------------------------ buddy

#[test]
fn buddy_chain_self_loop_and_wild_link_are_repaired() {
    for damage in BOTH {
        let what = format!("buddy chain, {damage:?}");
        let buddy = BuddyAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        // Past the thread cache's orders (whose misses split whole chunks).
        const LISTED: u64 = 2048;
        let live = buddy.allocate(LISTED as usize).unwrap();
        // The split left the buddy of the new block free, alone at the head
        // of its order; its first word is its `next` link.
        let free_buddy = live.offset().raw() + LISTED;
        let next = word(buddy.segment(), free_buddy);
        assert_eq!(next.load(Ordering::Relaxed), 0, "alone in its list");
        next.store(
            match damage {
                Damage::SelfLoop => free_buddy,
                Damage::Wild => 1 << 40,
            },
            Ordering::Relaxed,
        );
        assert!(
            is_corrupt_header(&bounded(&what, || buddy.check())),
            "{what}"
        );
        // The state table is the authority: the lists are rebuilt from it
        // and the request served from them.
        match bounded(&what, || buddy.allocate(LISTED as usize)) {
            Ok(block) => assert_ne!(block.offset(), live.offset(), "{what}"),
            Err(error) => assert!(matches!(error, Error::CorruptHeader { .. }), "{what}"),
        }
        bounded(&what, || buddy.check()).unwrap();
    }
}

// ------------------------------------------------------------ named objects

/// The directory's root block: magic (+0), lock (+8), table offset (+16).
const DIRECTORY_TABLE: u64 = 16;

#[test]
fn directory_self_loop_and_wild_link_are_errors() {
    for damage in BOTH {
        let what = format!("name directory, {damage:?}");
        let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        let names = NamedObjects::open(&heap).unwrap();
        names.construct("present", 7u64).unwrap();
        let directory = heap
            .segment()
            .root::<u8>("shmkit.named-objects")
            .unwrap()
            .raw();
        word(heap.segment(), directory + DIRECTORY_TABLE).store(
            match damage {
                Damage::SelfLoop => directory,
                Damage::Wild => 1 << 40,
            },
            Ordering::Relaxed,
        );
        let found = bounded(&what, || names.find::<u64>("present"));
        assert!(is_corrupt_data(&found), "{what}: {found:?}");
        let made = bounded(&what, || names.construct("absent", 1u64));
        assert!(is_corrupt_data(&made), "{what}: {made:?}");
        assert!(is_corrupt_data(&bounded(&what, || names.list())), "{what}");
        assert!(is_corrupt_data(&bounded(&what, || names.check())), "{what}");
    }
}

/// Every slot of the table in use or a tombstone: a probe that never meets
/// an empty slot goes round the table, once.
#[test]
fn directory_probe_without_an_empty_slot_ends() {
    let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
    let names = NamedObjects::open(&heap).unwrap();
    names.construct("present", 7u64).unwrap();
    let segment = heap.segment();
    let directory = segment.root::<u8>("shmkit.named-objects").unwrap().raw();
    let table = word(segment, directory + DIRECTORY_TABLE).load(Ordering::Relaxed);
    // The table: a 64-byte header (capacity first), then 64-byte entries
    // whose first word is the state (0 empty, 1 live, 2 tombstone).
    let capacity = word(segment, table).load(Ordering::Relaxed);
    for index in 0..capacity {
        let state = word(segment, table + 64 + 64 * index);
        if state.load(Ordering::Relaxed) == 0 {
            state.store(2, Ordering::Relaxed);
        }
    }
    let missing = bounded("directory full of tombstones", || {
        names.find::<u64>("absent")
    });
    assert!(matches!(missing, Ok(None)), "{missing:?}");
    let present = bounded("directory full of tombstones", || {
        names.find::<u64>("present")
    });
    assert!(matches!(present, Ok(Some(_))), "{present:?}");
}

// ------------------------------------------------------------ hash map

/// The map's own words: table offset (+0), bucket count (+8), length
/// (+16), segment id (+24).
const MAP_TABLE: usize = 0;

#[test]
fn hash_map_self_loop_and_wild_link_are_errors() {
    for damage in BOTH {
        let what = format!("hash map, {damage:?}");
        let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        // The map itself lives in the segment, so its table can name it.
        let map: FullPtr<ShmHashMap<u64, u64>> = heap.new_obj(ShmHashMap::new()).unwrap();
        for key in 0..4 {
            // SAFETY: a fresh block holding the map, used by this thread
            // alone; the borrow ends with the call.
            unsafe { &mut *map.as_ptr() }
                .insert(&heap, key, key * 10)
                .unwrap();
        }
        let table = match damage {
            Damage::SelfLoop => map.offset().raw(),
            Damage::Wild => 1 << 40,
        };
        // SAFETY: the map is `repr(C)` of four u64s, the table offset
        // first; no reference to it is alive.
        unsafe { (map.as_ptr() as *mut u64).add(MAP_TABLE).write(table) };
        // SAFETY: as above; each borrow ends with its call.
        let map_ref = unsafe { &mut *map.as_ptr() };
        let got = bounded(&what, || map_ref.get(&heap, &1).map(|v| v.copied()));
        assert!(is_corrupt_data(&got), "{what}: {got:?}");
        let put = bounded(&what, || map_ref.insert(&heap, 9, 90));
        assert!(is_corrupt_data(&put), "{what}: {put:?}");
    }
}

/// Every control byte full: a probe chain with no end goes round the
/// table once and reports it.
#[test]
fn hash_map_probe_chain_without_an_end_is_an_error() {
    let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
    let mut map = ShmHashMap::<u64, u64>::new();
    for key in 0..4 {
        map.insert(&heap, key, key).unwrap();
    }
    // Buckets: the capacity is three quarters of them.
    let buckets = map.capacity() * 4 / 3;
    let ctrl = heap.full_ptr(map.table_offset().raw()).unwrap();
    // SAFETY: the control bytes are the table block's first `buckets` bytes;
    // nothing else uses the map now.
    unsafe { std::ptr::write_bytes(ctrl.as_ptr(), 0x80, buckets) };
    let got = bounded("hash map without an empty bucket", || {
        map.get(&heap, &99).map(|v| v.copied())
    });
    assert!(is_corrupt_data(&got), "{got:?}");
    let removed = bounded("hash map without an empty bucket", || map.remove(&heap, &1));
    assert!(is_corrupt_data(&removed), "{removed:?}");
}

// ------------------------------------------------------------ rings

/// An MPMC ring: fixed fields, tail (+128), head (+256), two signals, then
/// the cells (sequence word, value).
const MPMC_TAIL: u64 = 128;
const MPMC_HEAD: u64 = 256;

#[test]
fn mpmc_ring_self_loop_and_wild_link_read_as_full_and_empty() {
    for damage in BOTH {
        let what = format!("mpmc ring, {damage:?}");
        let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        let offset = MpmcRing::<u64>::create(&heap, 4).unwrap();
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        let ring = unsafe { MpmcRing::open(&heap, offset) }.unwrap();
        ring.try_push(1).unwrap();
        ring.try_push(2).unwrap();
        assert_eq!(ring.try_pop(), Some(1));
        let segment = heap.segment();
        let base = offset.raw();
        let cells = base + std::mem::size_of::<MpmcRing<u64>>() as u64;
        let seq = |position: u64| word(segment, cells + 16 * (position % 4));
        match damage {
            Damage::SelfLoop => {
                // The tail's cell says a producer already took the tail's
                // own position; the head's says its value came a lap ago.
                seq(2).store(3, Ordering::Relaxed);
                seq(1).store(1 + 2 + 4, Ordering::Relaxed);
            }
            Damage::Wild => {
                word(segment, base + MPMC_TAIL).store(1 << 62, Ordering::Relaxed);
                word(segment, base + MPMC_HEAD).store(3 << 60, Ordering::Relaxed);
            }
        }
        assert_eq!(bounded(&what, || ring.try_push(3)), Err(3), "{what}");
        assert_eq!(bounded(&what, || ring.try_pop()), None, "{what}");
        let short = Duration::from_millis(20);
        assert_eq!(bounded(&what, || ring.push_timeout(4, short)), Err(4));
        assert_eq!(bounded(&what, || ring.pop_timeout(short)), None);
        assert!(ring.len() <= ring.capacity(), "{what}");
    }
}

/// An SPSC ring: fixed fields, the producer's line (+128: tail, owner),
/// the consumer's line (+256: head, owner), then signals and cells.
const SPSC_TAIL: u64 = 128;
const SPSC_HEAD: u64 = 256;

#[test]
fn spsc_ring_self_loop_and_wild_link_read_as_full_and_empty() {
    for damage in BOTH {
        let what = format!("spsc ring, {damage:?}");
        let heap = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        let offset = SpscRing::<u64>::create(&heap, 4).unwrap();
        {
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            let mut tx = unsafe { SpscRing::producer(&heap, offset) }.unwrap();
            tx.try_push(1).unwrap();
            tx.try_push(2).unwrap();
        }
        let segment = heap.segment();
        let base = offset.raw();
        match damage {
            // The head one step past the tail: the consumer would have
            // taken a value before it was pushed, a lap ahead of itself.
            Damage::SelfLoop => word(segment, base + SPSC_HEAD).store(3, Ordering::Relaxed),
            Damage::Wild => word(segment, base + SPSC_TAIL).store(1 << 63, Ordering::Relaxed),
        }
        // New endpoints read the damaged words.
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        let mut tx = unsafe { SpscRing::producer(&heap, offset) }.unwrap();
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        let mut rx = unsafe { SpscRing::consumer(&heap, offset) }.unwrap();
        assert_eq!(bounded(&what, || tx.try_push(3)), Err(3), "{what}");
        assert_eq!(bounded(&what, || rx.try_pop()), None, "{what}");
        let short = Duration::from_millis(20);
        assert_eq!(bounded(&what, || tx.push_timeout(4, short)), Err(4));
        assert_eq!(bounded(&what, || rx.pop_timeout(short)), None);
        assert!(rx.len() <= rx.capacity(), "{what}");
    }
}
