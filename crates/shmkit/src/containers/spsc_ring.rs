//! A bounded single-producer single-consumer queue that lives in a segment.
//!
//! The producer owns the tail, the consumer the head; each sits on a cache
//! line of its own together with the owner word of its role. Each endpoint
//! keeps its own index and the last value it saw of the other side's in
//! process-local memory, so a push or pop reads the other side's line only
//! when the cached value says the ring looks full (or empty). A push writes
//! the cell, then publishes the new tail (release); a pop reads the cell,
//! then publishes the new head (release). There is no claim step: every
//! shared word is only ever moved to a finished state, which is why a
//! process killed at any instruction leaves the ring consistent.
//!
//! The roles are enforced with an owner word per role (`pid << 32 | token`,
//! see `sync::slot_owner`): an endpoint claims it when it is made and
//! releases it when dropped; a role whose owner process is gone (or no
//! longer maps the segment) may be taken over.

use std::cell::OnceCell;
use std::marker::PhantomData;
use std::mem::{align_of, size_of};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::ring_core::{
    clamp_recheck, deadline_after, fixed_for, new_signal, Atomic64, Env, Fixed, Line, Os, Shape,
    Signal, Values, DEFAULT_RECHECK,
};
use crate::alloc::ShmAllocator;
use crate::error::{Error, Result};
use crate::os::mapped_by;
use crate::os::process::current_pid;
use crate::os::process::process_alive;
use crate::ptr::{Offset, ShmSafe};
use crate::sync::slot_owner;

// ------------------------------------------------------------- the algorithm

/// One side's line: its index and the owner word of its role.
#[repr(C)]
pub(super) struct Side<A64> {
    /// The producer's tail or the consumer's head.
    pub(super) index: A64,
    /// Who holds the role (`sync::slot_owner`'s protocol).
    pub(super) owner: A64,
}

/// The shared words of an SPSC ring, generic over the atomics so the loom
/// models run the same code.
#[repr(C)]
pub(super) struct SpscWords<A64, A32> {
    pub(super) fixed: Line<Fixed<A64>>,
    pub(super) producer: Line<Side<A64>>,
    pub(super) consumer: Line<Side<A64>>,
    /// The consumer sleeps here while the ring is empty.
    pub(super) not_empty: Line<Signal<A32>>,
    /// The producer sleeps here while the ring is full.
    pub(super) not_full: Line<Signal<A32>>,
}

/// The producer's process-local state: its tail and the last head it saw.
#[derive(Clone, Copy, Debug)]
pub(super) struct ProducerCursor {
    tail: u64,
    head_seen: u64,
}

/// The consumer's process-local state: its head and the last tail it saw.
#[derive(Clone, Copy, Debug)]
pub(super) struct ConsumerCursor {
    head: u64,
    tail_seen: u64,
}

/// The algorithm over some words, cells and environment.
pub(super) struct SpscCore<'r, T, E: Env, V> {
    pub(super) words: &'r SpscWords<E::U64, E::U32>,
    pub(super) values: V,
    pub(super) mask: u64,
    pub(super) env: &'r E,
    pub(super) _values: PhantomData<fn(T) -> T>,
}

impl<T: Copy, E: Env, V: Values<T>> SpscCore<'_, T, E, V> {
    /// Where a (new) producer starts: the published indices.
    pub(super) fn producer_cursor(&self) -> ProducerCursor {
        ProducerCursor {
            tail: self.words.producer.0.index.load(Ordering::Acquire),
            head_seen: self.words.consumer.0.index.load(Ordering::Acquire),
        }
    }

    /// Where a (new) consumer starts.
    pub(super) fn consumer_cursor(&self) -> ConsumerCursor {
        ConsumerCursor {
            head: self.words.consumer.0.index.load(Ordering::Acquire),
            tail_seen: self.words.producer.0.index.load(Ordering::Acquire),
        }
    }

    /// Pushes unless the ring is full (a head that contradicts the tail
    /// also reads as full).
    #[inline]
    pub(super) fn try_push(
        &self,
        cursor: &mut ProducerCursor,
        value: T,
    ) -> std::result::Result<(), T> {
        let capacity = self.mask + 1;
        let tail = cursor.tail;
        if tail.wrapping_sub(cursor.head_seen) >= capacity {
            cursor.head_seen = self.words.consumer.0.index.load(Ordering::Acquire);
            if tail.wrapping_sub(cursor.head_seen) >= capacity {
                return Err(value);
            }
        }
        // SAFETY: masked, below the capacity; the consumer finished with
        // this cell (its head, read with acquire ordering, is past it) and
        // will not read it before the tail below says so.
        unsafe { self.values.write((tail & self.mask) as usize, value) };
        let next = tail.wrapping_add(1);
        self.words.producer.0.index.store(next, Ordering::Release);
        cursor.tail = next;
        self.words.not_empty.0.notify(self.env);
        Ok(())
    }

    /// Pops unless the ring is empty (a tail that contradicts the head also
    /// reads as empty).
    #[inline]
    pub(super) fn try_pop(&self, cursor: &mut ConsumerCursor) -> Option<T> {
        let capacity = self.mask + 1;
        let head = cursor.head;
        let ready = |tail: u64| (1..=capacity).contains(&tail.wrapping_sub(head));
        if !ready(cursor.tail_seen) {
            cursor.tail_seen = self.words.producer.0.index.load(Ordering::Acquire);
            if !ready(cursor.tail_seen) {
                return None;
            }
        }
        // SAFETY: masked; the producer published this cell (the tail, read
        // with acquire ordering, is past it) and will not write it again
        // before the head below says so.
        let value = unsafe { self.values.read((head & self.mask) as usize) };
        let next = head.wrapping_add(1);
        self.words.consumer.0.index.store(next, Ordering::Release);
        cursor.head = next;
        self.words.not_full.0.notify(self.env);
        Some(value)
    }

    pub(super) fn push_until(
        &self,
        cursor: &mut ProducerCursor,
        value: T,
        deadline: Option<Instant>,
        recheck: Duration,
    ) -> std::result::Result<(), T> {
        if self.try_push(cursor, value).is_ok() {
            return Ok(());
        }
        match self
            .words
            .not_full
            .0
            .block_until(self.env, deadline, recheck, |_| {
                self.try_push(cursor, value).ok()
            }) {
            Some(()) => Ok(()),
            None => Err(value),
        }
    }

    pub(super) fn pop_until(
        &self,
        cursor: &mut ConsumerCursor,
        deadline: Option<Instant>,
        recheck: Duration,
    ) -> Option<T> {
        if let Some(value) = self.try_pop(cursor) {
            return Some(value);
        }
        self.words
            .not_empty
            .0
            .block_until(self.env, deadline, recheck, |_| self.try_pop(cursor))
    }

    pub(super) fn len(&self) -> u64 {
        let head = self.words.consumer.0.index.load(Ordering::Acquire);
        let tail = self.words.producer.0.index.load(Ordering::Acquire);
        tail.wrapping_sub(head).min(self.mask + 1)
    }

    /// Visits the published values from head to tail without taking them.
    ///
    /// # Safety
    ///
    /// No other thread or process pushes or pops meanwhile (see
    /// [`SpscConsumer::for_each_waiting`]).
    pub(super) unsafe fn for_each_waiting(&self, mut visit: impl FnMut(T)) {
        let head = self.words.consumer.0.index.load(Ordering::Acquire);
        let tail = self.words.producer.0.index.load(Ordering::Acquire);
        for step in 0..tail.wrapping_sub(head).min(self.mask + 1) {
            let position = head.wrapping_add(step);
            // SAFETY: masked; published (before the tail read with acquire
            // ordering), and nobody pushes or pops meanwhile (the caller's
            // promise), so nothing writes the cell while it is read.
            visit(unsafe { self.values.read((position & self.mask) as usize) });
        }
    }
}

/// The cells of an SPSC ring in a segment: plain values.
struct SegValues<T> {
    first: NonNull<T>,
}

impl<T: Copy> Values<T> for SegValues<T> {
    #[inline]
    unsafe fn write(&self, index: usize, value: T) {
        // SAFETY: the caller keeps `index` below the validated capacity and
        // holds the cell.
        unsafe { self.first.as_ptr().add(index).write(value) }
    }

    #[inline]
    unsafe fn read(&self, index: usize) -> T {
        // SAFETY: as in `write`; `T: ShmSafe` accepts any bytes.
        unsafe { self.first.as_ptr().add(index).read() }
    }
}

// ------------------------------------------------------------- public face

const SPSC_MAGIC: u64 = 0x3143_5350_4b4d_4853; // "SHMKPSC1"

/// A bounded single-producer single-consumer queue of `T` that lives in a
/// segment.
///
/// This is the in-segment part (fixed fields, the producer's and the
/// consumer's lines, the sleeper signals, then the cells), holding offsets
/// and atomics only. Create one with [`create`](Self::create), publish its
/// offset, and use it through the two endpoints: [`SpscProducer`] from
/// [`producer`](Self::producer) and [`SpscConsumer`] from
/// [`consumer`](Self::consumer), in the same process or in two.
///
/// At most one producer and one consumer exist at a time, across all
/// processes: making a second live one of a role is an
/// [`Error::InUse`]. An endpoint's operations take `&mut self`, so one
/// thread at a time uses it (it may move between threads).
///
/// # When a process dies in the middle
///
/// Nothing stalls. A producer killed before it published its tail simply
/// did not push; a consumer killed after reading a value but before
/// publishing its head leaves the value in the ring, so the next consumer
/// gets it again (at-least-once delivery across a consumer crash). The
/// dead process's role is free for the taking: the next
/// [`producer`](Self::producer) or [`consumer`](Self::consumer) call takes
/// it over once the old owner's process is gone (reaped) or no longer
/// maps the segment. A process killed while sleeping leaves its waiter
/// registration behind: the other side then makes one futex wake call per
/// operation (slower, still correct).
///
/// ```
/// use shmkit::containers::SpscRing;
/// use shmkit::{SegmentAllocator, SegmentOptions, SizeClassAllocator};
///
/// let alloc = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20))?;
/// let offset = SpscRing::<[u8; 16]>::create(&alloc, 4)?;
///
/// // SAFETY: a ring `create` made, used only through its endpoints.
/// let mut tx = unsafe { SpscRing::producer(&alloc, offset)? };
/// // SAFETY: as above.
/// let mut rx = unsafe { SpscRing::consumer(&alloc, offset)? };
/// // The roles are taken while these live:
/// // SAFETY: as above.
/// let again = unsafe { SpscRing::producer(&alloc, offset) };
/// assert!(matches!(again, Err(shmkit::Error::InUse { .. })));
///
/// tx.push(*b"0123456789abcdef");
/// assert_eq!(&rx.pop(), b"0123456789abcdef");
/// assert_eq!(rx.try_pop(), None);
/// # Ok::<(), shmkit::Error>(())
/// ```
#[repr(C)]
pub struct SpscRing<T> {
    words: SpscWords<AtomicU64, AtomicU32>,
    _elements: PhantomData<fn() -> T>,
}

// SAFETY: `repr(C)`, atomics only (any bit pattern is a value), explicit
// alignment, no address; the cells are reached through validated
// endpoints only.
unsafe impl<T: ShmSafe> ShmSafe for SpscRing<T> {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Producer,
    Consumer,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Producer => "producer",
            Role::Consumer => "consumer",
        })
    }
}

impl<T: ShmSafe + Copy> SpscRing<T> {
    fn shape() -> Shape {
        Shape {
            what: "spsc ring",
            magic: SPSC_MAGIC,
            header_size: size_of::<SpscRing<T>>(),
            header_align: align_of::<SpscRing<T>>(),
            elem_size: size_of::<T>(),
            elem_align: align_of::<T>(),
            stride: size_of::<T>(),
            cell_align: align_of::<T>(),
            type_name: std::any::type_name::<T>(),
        }
    }

    /// Bytes of segment memory a ring of `capacity` values takes.
    pub fn bytes_for(capacity: usize) -> Result<usize> {
        Self::shape().bytes_for(capacity)
    }

    /// Creates an empty ring of `capacity` values (a power of two, at least
    /// 2) in memory from `alloc`, and returns its offset.
    pub fn create<A: ShmAllocator + ?Sized>(
        alloc: &A,
        capacity: usize,
    ) -> Result<Offset<SpscRing<T>>> {
        let shape = Self::shape();
        let (offset, block, extent, capacity) = shape.allocate(alloc, capacity)?;
        let ring = block.cast::<SpscRing<T>>();
        let side = || {
            Line(Side {
                index: AtomicU64::new(0),
                owner: AtomicU64::new(slot_owner::FREE),
            })
        };
        // SAFETY: the block is fresh, ours alone, aligned and long enough;
        // the cells need no initialization (read only once written).
        unsafe {
            ring.as_ptr().write(SpscRing {
                words: SpscWords {
                    fixed: Line(fixed_for(&shape, capacity, &extent)),
                    producer: side(),
                    consumer: side(),
                    not_empty: new_signal(),
                    not_full: new_signal(),
                },
                _elements: PhantomData,
            });
            (*ring.as_ptr())
                .words
                .fixed
                .0
                .magic
                .store(SPSC_MAGIC, Ordering::Release);
        }
        Ok(Offset::from_raw(offset))
    }

    /// Opens the ring at `offset` and claims its producer role.
    ///
    /// Validated as [`MpmcRing::open`](super::MpmcRing::open) validates
    /// (typed errors for a block that is not a ring, a ring of another
    /// element size or alignment, a capacity that is not a power of two or
    /// cells outside the block). Fails with [`Error::InUse`] while another
    /// live producer endpoint exists, in this process or another.
    ///
    /// # Safety
    ///
    /// As for [`MpmcRing::open`](super::MpmcRing::open): `offset` names a
    /// ring [`create`](Self::create) made, reached in this process only
    /// through ring endpoints, and not destroyed or freed while the
    /// endpoint lives.
    pub unsafe fn producer<A: ShmAllocator + ?Sized>(
        alloc: &A,
        offset: Offset<SpscRing<T>>,
    ) -> Result<SpscProducer<'_, T>> {
        let endpoint = Endpoint::claim(alloc, offset, Role::Producer)?;
        let cursor = endpoint.core().producer_cursor();
        Ok(SpscProducer { endpoint, cursor })
    }

    /// Opens the ring at `offset` and claims its consumer role; as
    /// [`producer`](Self::producer).
    ///
    /// # Safety
    ///
    /// As for [`producer`](Self::producer).
    pub unsafe fn consumer<A: ShmAllocator + ?Sized>(
        alloc: &A,
        offset: Offset<SpscRing<T>>,
    ) -> Result<SpscConsumer<'_, T>> {
        let endpoint = Endpoint::claim(alloc, offset, Role::Consumer)?;
        let cursor = endpoint.core().consumer_cursor();
        Ok(SpscConsumer { endpoint, cursor })
    }

    /// Frees the ring's memory after checking that `offset` holds a ring of
    /// `T` (its magic is cleared first, so later opens fail).
    ///
    /// # Safety
    ///
    /// No endpoint of this ring, in any process, may be used afterwards.
    pub unsafe fn destroy<A: ShmAllocator + ?Sized>(
        alloc: &A,
        offset: Offset<SpscRing<T>>,
    ) -> Result<()> {
        // SAFETY: forwarded from the caller.
        unsafe { Self::shape().destroy(alloc, offset.raw()) }
    }
}

/// A unique, non-zero token per endpoint of this process.
/// Endpoint tokens issued by this process image so far.
static TOKENS_ISSUED: AtomicU32 = AtomicU32::new(0);

/// Where this process image's tokens start: random, drawn once per image
/// (statics start over at every `exec`), so that an image can tell its own
/// endpoints from those an earlier image of its pid left (a process that
/// `exec`ed itself while holding a role, which nothing gave back).
fn token_base() -> u32 {
    static BASE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *BASE.get_or_init(|| {
        let mut bytes = [0u8; 4];
        let drawn = crate::os::random::fill(&mut bytes, false);
        let mut base = u32::from_ne_bytes(bytes);
        if drawn.is_err() {
            // No entropy yet (early boot): the clock differs per image.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            base = now ^ std::process::id().rotate_left(16);
        }
        base
    })
}

fn next_token() -> u32 {
    loop {
        let token = token_base().wrapping_add(TOKENS_ISSUED.fetch_add(1, Ordering::Relaxed));
        if token != 0 {
            return token;
        }
    }
}

/// Whether this process image issued `token` (see [`token_base`]).
fn issued_here(token: u32) -> bool {
    token.wrapping_sub(token_base()) < TOKENS_ISSUED.load(Ordering::Relaxed)
}

/// What both endpoints hold: the validated ring and the claimed role.
struct Endpoint<'a, T> {
    ring: NonNull<SpscRing<T>>,
    values: SegValues<T>,
    mask: u64,
    offset: Offset<SpscRing<T>>,
    recheck: Duration,
    role: Role,
    /// Our owner word.
    owner: u64,
    /// The process that claimed the role (a forked child must not release
    /// its parent's claim).
    pid: u32,
    _memory: PhantomData<&'a SpscRing<T>>,
}

impl<T: ShmSafe + Copy> Endpoint<'_, T> {
    fn claim<A: ShmAllocator + ?Sized>(
        alloc: &A,
        offset: Offset<SpscRing<T>>,
        role: Role,
    ) -> Result<Endpoint<'_, T>> {
        let (block, capacity, extent) = SpscRing::<T>::shape().validate(alloc, offset.raw())?;
        let ring = block.cast::<SpscRing<T>>();
        // SAFETY: validated: the cells start `cells_at` bytes in and
        // `capacity` of them fit in the block.
        let first = unsafe { block.add(extent.cells_at) }.cast::<T>();
        let pid = current_pid();
        let owner = slot_owner::owner_value(pid, next_token());
        // SAFETY: validated header; only its atomics are reached.
        let words = unsafe { &ring.as_ref().words };
        let word = match role {
            Role::Producer => &words.producer.0.owner,
            Role::Consumer => &words.consumer.0.owner,
        };
        // The object the ring lives in, to tell a live owner that maps it
        // from a pid reused by an unrelated process; read on first need.
        let object = OnceCell::new();
        let is_dead = |pid: u32| {
            !process_alive(pid)
                || object
                    .get_or_init(|| mapped_by::object_at(ring.as_ptr() as usize))
                    .as_ref()
                    .is_some_and(|object| mapped_by::process_maps(pid, object) == Some(false))
        };
        // A holder of this pid is this image (a live thread of ours, or our
        // own release in progress) unless this image never issued its
        // token: then it was an earlier image that `exec`ed, and is gone.
        let holder_is_dead = |holder: u64| {
            let holder_pid = slot_owner::pid_of(holder);
            if holder_pid == pid {
                let token = holder as u32;
                token != 0 && !issued_here(token)
            } else {
                is_dead(holder_pid)
            }
        };
        for _ in 0..1000 {
            if slot_owner::try_claim_judged(word, owner, holder_is_dead).is_some() {
                return Ok(Endpoint {
                    ring,
                    values: SegValues { first },
                    mask: capacity - 1,
                    offset,
                    recheck: DEFAULT_RECHECK,
                    role,
                    owner,
                    pid,
                    _memory: PhantomData,
                });
            }
            let holder = word.load(Ordering::Acquire);
            // A live owner releasing the role right now: give it a moment.
            if holder == slot_owner::FREE || holder as u32 == 0 {
                std::thread::yield_now();
                continue;
            }
            return Err(Error::InUse {
                reason: format!(
                    "the {role} of the spsc ring at offset {} belongs to live process {}",
                    offset.raw(),
                    slot_owner::pid_of(holder)
                ),
            });
        }
        Err(Error::InUse {
            reason: format!(
                "the {role} of the spsc ring at offset {} is being released and claimed by others",
                offset.raw()
            ),
        })
    }
}

impl<T> Endpoint<'_, T> {
    fn words(&self) -> &SpscWords<AtomicU64, AtomicU32> {
        // SAFETY: validated when the endpoint was made; the mapping lives as
        // long as the borrow of the allocator, and the block until
        // `destroy` or a free of it, both `unsafe` and promising no
        // endpoint is used afterwards; only atomics are reached.
        unsafe { &self.ring.as_ref().words }
    }

    fn owner_word(&self) -> &AtomicU64 {
        match self.role {
            Role::Producer => &self.words().producer.0.owner,
            Role::Consumer => &self.words().consumer.0.owner,
        }
    }

    fn core(&self) -> SpscCore<'_, T, Os, &SegValues<T>> {
        SpscCore {
            words: self.words(),
            values: &self.values,
            mask: self.mask,
            env: &Os,
            _values: PhantomData,
        }
    }
}

impl<T> Drop for Endpoint<'_, T> {
    fn drop(&mut self) {
        // A forked child holds a copy of its parent's endpoint: the role is
        // the parent's to give back.
        if current_pid() != self.pid {
            return;
        }
        let word = self.owner_word();
        if slot_owner::begin_release(word, self.owner, self.pid) {
            slot_owner::finish_release(word);
        }
    }
}

macro_rules! endpoint_common {
    () => {
        /// The number of values in the ring (a snapshot).
        pub fn len(&self) -> usize {
            self.endpoint.core().len() as usize
        }

        /// Whether the ring held no value at the moment of the call.
        pub fn is_empty(&self) -> bool {
            self.len() == 0
        }

        /// How many values the ring holds at most.
        pub fn capacity(&self) -> usize {
            (self.endpoint.mask + 1) as usize
        }

        /// The ring's offset in its segment.
        pub fn offset(&self) -> Offset<SpscRing<T>> {
            self.endpoint.offset
        }

        /// Calls `visit` with a copy of each value waiting in the ring,
        /// oldest first, without taking them: what a recovery pass needs to
        /// learn which blocks the ring still names.
        ///
        /// # Safety
        ///
        /// No other thread or process pushes or pops meanwhile: call it
        /// alone, as under
        /// [`Segment::lock_for_recovery`](crate::Segment::lock_for_recovery).
        pub unsafe fn for_each_waiting(&self, visit: impl FnMut(T)) {
            // SAFETY: forwarded from the caller.
            unsafe { self.endpoint.core().for_each_waiting(visit) }
        }

        /// The longest a blocked operation sleeps before it re-checks the
        /// ring by itself (a safety net against a peer that died between
        /// its change and its wake-up; ordinary wake-ups come at once).
        /// Default 100 ms, at least 1 ms.
        pub fn set_recheck_interval(&mut self, interval: Duration) {
            self.endpoint.recheck = clamp_recheck(interval);
        }
    };
}

/// The producer endpoint of an [`SpscRing`]: holds the role until dropped.
pub struct SpscProducer<'a, T> {
    endpoint: Endpoint<'a, T>,
    cursor: ProducerCursor,
}

/// The consumer endpoint of an [`SpscRing`]: holds the role until dropped.
pub struct SpscConsumer<'a, T> {
    endpoint: Endpoint<'a, T>,
    cursor: ConsumerCursor,
}

// SAFETY: an endpoint holds addresses into a mapping that outlives `'a`;
// its operations take `&mut self`, so moving it to another thread moves
// the role with it. Values of `T` cross threads, hence `T: Send`.
unsafe impl<T: Send> Send for SpscProducer<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for SpscConsumer<'_, T> {}

impl<T> std::fmt::Debug for SpscProducer<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpscProducer")
            .field("offset", &self.endpoint.offset)
            .field("capacity", &(self.endpoint.mask + 1))
            .field("tail", &self.cursor.tail)
            .finish()
    }
}

impl<T> std::fmt::Debug for SpscConsumer<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpscConsumer")
            .field("offset", &self.endpoint.offset)
            .field("capacity", &(self.endpoint.mask + 1))
            .field("head", &self.cursor.head)
            .finish()
    }
}

impl<T: ShmSafe + Copy> SpscProducer<'_, T> {
    /// Pushes `value` unless the ring is full; gives it back if so.
    #[inline]
    pub fn try_push(&mut self, value: T) -> std::result::Result<(), T> {
        self.endpoint.core().try_push(&mut self.cursor, value)
    }

    /// Pushes `value`, sleeping while the ring is full.
    pub fn push(&mut self, value: T) {
        let recheck = self.endpoint.recheck;
        // Without a deadline the wait only ends in success.
        let _ = self
            .endpoint
            .core()
            .push_until(&mut self.cursor, value, None, recheck);
    }

    /// Pushes `value`, sleeping at most `timeout` while the ring is full;
    /// gives the value back if it stayed full.
    pub fn push_timeout(&mut self, value: T, timeout: Duration) -> std::result::Result<(), T> {
        let recheck = self.endpoint.recheck;
        self.endpoint
            .core()
            .push_until(&mut self.cursor, value, deadline_after(timeout), recheck)
    }

    endpoint_common!();
}

impl<T: ShmSafe + Copy> SpscConsumer<'_, T> {
    /// Pops the oldest value, if any.
    #[inline]
    pub fn try_pop(&mut self) -> Option<T> {
        self.endpoint.core().try_pop(&mut self.cursor)
    }

    /// Pops the oldest value, sleeping while the ring is empty.
    pub fn pop(&mut self) -> T {
        let recheck = self.endpoint.recheck;
        loop {
            if let Some(value) = self
                .endpoint
                .core()
                .pop_until(&mut self.cursor, None, recheck)
            {
                return value;
            }
        }
    }

    /// Pops the oldest value, sleeping at most `timeout` while the ring is
    /// empty.
    pub fn pop_timeout(&mut self, timeout: Duration) -> Option<T> {
        let recheck = self.endpoint.recheck;
        self.endpoint
            .core()
            .pop_until(&mut self.cursor, deadline_after(timeout), recheck)
    }

    endpoint_common!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MallocAllocator, SegmentAllocator, SegmentOptions, SizeClassAllocator};

    #[test]
    fn fifo_through_wrap_around_and_roles() {
        let alloc = MallocAllocator::new();
        let offset = SpscRing::<u64>::create(&alloc, 4).unwrap();
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        let mut tx = unsafe { SpscRing::producer(&alloc, offset) }.unwrap();
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        let mut rx = unsafe { SpscRing::consumer(&alloc, offset) }.unwrap();
        assert!(matches!(
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            unsafe { SpscRing::<u64>::consumer(&alloc, offset) },
            Err(Error::InUse { .. })
        ));
        let (mut next_in, mut next_out) = (0, 0);
        for round in 0..40 {
            for _ in 0..(round % 6) {
                if tx.try_push(next_in).is_ok() {
                    next_in += 1;
                }
            }
            assert!(tx.len() <= 4);
            while let Some(value) = rx.try_pop() {
                assert_eq!(value, next_out);
                next_out += 1;
            }
        }
        assert_eq!(next_in, next_out);
        // A dropped endpoint gives its role back; the next one continues
        // where the old one stopped.
        tx.try_push(1000).unwrap();
        drop(rx);
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        let mut rx = unsafe { SpscRing::consumer(&alloc, offset) }.unwrap();
        assert_eq!(rx.try_pop(), Some(1000));
        assert_eq!(tx.push_timeout(1, Duration::from_millis(1)), Ok(()));
        assert_eq!(rx.pop_timeout(Duration::from_millis(1)), Some(1));
        assert_eq!(rx.pop_timeout(Duration::from_millis(1)), None);
    }

    #[test]
    fn a_contradicting_tail_reads_as_empty() {
        let alloc = MallocAllocator::new();
        let offset = SpscRing::<u64>::create(&alloc, 4).unwrap();
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        let mut rx = unsafe { SpscRing::consumer(&alloc, offset) }.unwrap();
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        let mut tx = unsafe { SpscRing::producer(&alloc, offset) }.unwrap();
        rx.endpoint
            .words()
            .producer
            .0
            .index
            .store(1 << 50, Ordering::Relaxed);
        assert_eq!(rx.try_pop(), None);
        assert!(tx.len() <= 4);
        // The producer keeps its own tail and goes on.
        tx.try_push(5).unwrap();
    }

    #[test]
    fn a_role_of_a_dead_process_is_taken_over() {
        let alloc = SizeClassAllocator::create(&SegmentOptions::private().size(1 << 20)).unwrap();
        let offset = SpscRing::<u32>::create(&alloc, 2).unwrap();
        // SAFETY: validated offset; an atomic.
        let ring = unsafe { alloc.segment().resolve(offset).unwrap().as_ref() };
        let dead = {
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let pid = child.id();
            child.wait().unwrap();
            pid
        };
        ring.words
            .producer
            .0
            .owner
            .store(slot_owner::owner_value(dead, 1), Ordering::Release);
        // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
        let mut tx = unsafe { SpscRing::producer(&alloc, offset) }.unwrap();
        tx.try_push(3).unwrap();
        // A live owner keeps its role. (Only a live owner that provably does
        // not map the ring's memory counts as gone; private memory is
        // anonymous, so there is nothing to compare and the pid's life
        // decides.)
        // SAFETY: no preconditions.
        let parent = unsafe { libc::getppid() } as u32;
        ring.words
            .consumer
            .0
            .owner
            .store(slot_owner::owner_value(parent, 1), Ordering::Release);
        assert!(matches!(
            // SAFETY: a ring from `create`, used only through ring handles, not destroyed meanwhile.
            unsafe { SpscRing::<u32>::consumer(&alloc, offset) },
            Err(Error::InUse { .. })
        ));
    }
}

#[cfg(test)]
mod loom_models {
    //! The ring's own code under every interleaving loom explores.

    use super::super::ring_core::loom_support::*;
    use super::*;
    use loom::sync::atomic::{AtomicU32 as LoomU32, AtomicU64 as LoomU64};
    use loom::sync::Arc;

    const CAPACITY: u64 = 2;

    struct Shared {
        words: SpscWords<LoomU64, LoomU32>,
        values: LoomValues,
        env: LoomEnv,
    }

    impl Shared {
        fn new() -> Arc<Shared> {
            let side = || {
                Line(Side {
                    index: LoomU64::new(0),
                    owner: LoomU64::new(0),
                })
            };
            let shared = Arc::new(Shared {
                words: SpscWords {
                    fixed: fixed(),
                    producer: side(),
                    consumer: side(),
                    not_empty: signal(),
                    not_full: signal(),
                },
                values: LoomValues(
                    (0..CAPACITY)
                        .map(|_| loom::cell::UnsafeCell::new(0))
                        .collect(),
                ),
                env: LoomEnv::new(),
            });
            shared
                .env
                .bind(&shared.words.not_empty.0, &shared.words.not_full.0);
            shared
        }

        fn core(&self) -> SpscCore<'_, u64, LoomEnv, &LoomValues> {
            SpscCore {
                words: &self.words,
                values: &self.values,
                mask: CAPACITY - 1,
                env: &self.env,
                _values: PhantomData,
            }
        }
    }

    /// Four values through a two-cell ring with the non-blocking calls:
    /// all arrive, in order, with the cells reused (loom checks that no
    /// cell is read while written).
    #[test]
    fn fifo_without_loss_across_wrap_around() {
        model(4, || {
            let shared = Shared::new();
            let producer = {
                let shared = shared.clone();
                loom::thread::spawn(move || {
                    let core = shared.core();
                    let mut cursor = core.producer_cursor();
                    for value in 1..=4 {
                        while core.try_push(&mut cursor, value).is_err() {
                            loom::thread::yield_now();
                        }
                    }
                })
            };
            let core = shared.core();
            let mut cursor = core.consumer_cursor();
            let mut got = Vec::new();
            while got.len() < 4 {
                match core.try_pop(&mut cursor) {
                    Some(value) => got.push(value),
                    None => loom::thread::yield_now(),
                }
            }
            producer.join().unwrap();
            assert_eq!(got, vec![1, 2, 3, 4]);
            assert_eq!(core.try_pop(&mut cursor), None);
        });
    }

    /// Blocking push on a full ring and blocking pop on an empty one, with
    /// a futex stand-in that never times out: no lost wake-up (loom would
    /// report the deadlock).
    #[test]
    fn blocking_calls_never_lose_a_wake_up() {
        model(3, || {
            let shared = Shared::new();
            let consumer = {
                let shared = shared.clone();
                loom::thread::spawn(move || {
                    let core = shared.core();
                    let mut cursor = core.consumer_cursor();
                    (0..3)
                        .map(|_| core.pop_until(&mut cursor, None, DEFAULT_RECHECK))
                        .collect::<Vec<_>>()
                })
            };
            let core = shared.core();
            let mut cursor = core.producer_cursor();
            for value in 1..=3 {
                assert_eq!(
                    core.push_until(&mut cursor, value, None, DEFAULT_RECHECK),
                    Ok(())
                );
            }
            assert_eq!(consumer.join().unwrap(), vec![Some(1), Some(2), Some(3)]);
        });
    }
}
