//! [`ConcurrentPool`]: an object pool many threads lend from at once, with
//! lock-free acquire and release.
//!
//! # The algorithm
//!
//! Every object lives in a *slot* (the object and a link word) in a chunk
//! that never moves; slots are named by a 32-bit index. Idle objects sit on
//! a Treiber stack of slot indices ([`tagged_stack`]): the head word holds
//! the top index and a tag that every update increments, each slot's link
//! holds the index below it. Acquire pops, release pushes: one
//! compare-and-swap each, never a lock. The tag defeats ABA: a popper that
//! read `head = A, next = B` and slept while others popped `A` and `B` and
//! pushed `A` back finds another tag, so its compare-and-swap fails instead
//! of installing `B`, which someone holds. (The tag has 32 bits: the popper
//! would have to sleep through a multiple of 2^32 updates.)
//!
//! Only when the stack is empty does acquire take the growth lock, to claim
//! a slot (allocating its chunk on first use); the constructor then runs
//! outside the lock. The chunk of index `i` is `ilog2(i + 16) - 4` (chunk
//! `k` holds `16 << k` slots), so finding a slot reads one atomic pointer
//! and never locks.
//!
//! # Memory ordering
//!
//! * An object passes from its releaser to its next holder through the
//!   head word: the push is a compare-and-swap with release ordering, after
//!   the holder's writes and the reset hook; the pop reads the head with
//!   acquire ordering (load and compare-and-swap), so the next holder sees
//!   those writes. Every change of the head is a read-modify-write, so a pop
//!   that reads a head several updates later still synchronizes with the
//!   push (a release sequence).
//! * The link of the top slot is read after an acquire of the head that
//!   shows that slot. If the slot was popped and reused in between, the link
//!   is stale, but so is the head the popper holds: the tagged
//!   compare-and-swap fails and the value is thrown away.
//! * A chunk's base pointer is stored with release ordering under the
//!   growth lock, before any index of the chunk leaves the lock, and loaded
//!   with acquire ordering, so whoever finds a slot also sees the chunk's
//!   initialized links.
//! * The statistics use relaxed ordering: the `made` counter, which changes
//!   only under the growth lock (which also orders the check against the
//!   maximum), and each slot's `lent` flag. The flag is a plain store, not
//!   a shared counter: a counter would add two locked read-modify-writes on
//!   one contended line to every acquire and release, doubling their cost,
//!   to serve statistics that are read rarely.
//!
//! [`tagged_stack`]: crate::sync::tagged_stack

use std::cell::UnsafeCell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use crossbeam_utils::CachePadded;

use super::{alloc_chunk, OnUnwind};
use crate::error::{Error, Result};
use crate::sync::atomic_word::AtomicWord;
use crate::sync::tagged_stack::{self, BadLink};

/// log2 of the slots in the first chunk.
const FIRST_CHUNK_SHIFT: u32 = 4;
/// Slots in the first chunk; chunk `k` holds `FIRST_CHUNK << k`.
const FIRST_CHUNK: u64 = 1 << FIRST_CHUNK_SHIFT;
/// The most slots a pool can have: the free stack stores `index + 1` in 32
/// bits, so the highest index is `u32::MAX - 1`.
const MAX_SLOTS: u32 = u32::MAX;
/// Chunks needed to cover every index below [`MAX_SLOTS`].
const CHUNKS: usize = locate(MAX_SLOTS - 1).0 + 1;

/// The constructor of a [`ConcurrentPool`], called from any thread.
type Make<T> = Box<dyn Fn() -> T + Send + Sync>;
/// The reset hook of a [`ConcurrentPool`], called from any thread.
type Reset<T> = Box<dyn Fn(&mut T) + Send + Sync>;

/// The chunk of slot `index` and the slot's position in it.
#[inline]
const fn locate(index: u32) -> (usize, usize) {
    let biased = index as u64 + FIRST_CHUNK;
    let chunk = biased.ilog2() - FIRST_CHUNK_SHIFT;
    (chunk as usize, (biased - (FIRST_CHUNK << chunk)) as usize)
}

/// The index of the first slot of `chunk`.
const fn chunk_start(chunk: usize) -> u64 {
    (FIRST_CHUNK << chunk) - FIRST_CHUNK
}

/// The atomic word and the lock the pool runs on: `std`'s in the pool,
/// `loom`'s in the model checks, so both execute the same lines (and loom
/// sees the ordering the growth lock provides).
trait Env: 'static {
    /// The word of the free stack's head and links.
    type Word: AtomicWord + Send + Sync;
    /// The growth lock.
    type Lock: Send + Sync;

    /// A word holding 0 (an empty head, a link to nothing).
    fn zero_word() -> Self::Word;
    /// The growth lock around `growth`.
    fn new_lock(growth: Growth) -> Self::Lock;
    /// Takes the growth lock.
    fn lock(lock: &Self::Lock) -> impl DerefMut<Target = Growth> + '_;
}

/// The environment of [`ConcurrentPool`]: `std`'s atomics and mutex.
struct StdEnv;

impl Env for StdEnv {
    type Word = AtomicU64;
    type Lock = Mutex<Growth>;

    fn zero_word() -> AtomicU64 {
        AtomicU64::new(0)
    }

    fn new_lock(growth: Growth) -> Mutex<Growth> {
        Mutex::new(growth)
    }

    fn lock(lock: &Mutex<Growth>) -> impl DerefMut<Target = Growth> + '_ {
        // Nothing panics while the lock is held (user code runs outside
        // it), but a poisoned lock would still guard consistent data.
        lock.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A place for one object, and its link on the free stack.
struct Slot<T, W> {
    /// `index + 1` of the slot below this one on the free stack (0: none).
    link: W,
    /// Whether a holder has the object (statistics only).
    lent: AtomicBool,
    value: UnsafeCell<MaybeUninit<T>>,
}

/// The slot memory: chunks that never move, found without a lock.
/// Dropping frees the memory only; the objects are the pool's to drop.
struct Chunks<T, E: Env> {
    bases: [AtomicPtr<Slot<T, E::Word>>; CHUNKS],
    /// Slots the pool may have; the last chunk stops here.
    limit: u32,
}

impl<T, E: Env> Chunks<T, E> {
    fn new(limit: u32) -> Self {
        Chunks {
            bases: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            limit,
        }
    }

    /// Slots in `chunk`: `FIRST_CHUNK << chunk`, cut at the limit.
    fn chunk_len(&self, chunk: usize) -> usize {
        let start = chunk_start(chunk);
        (FIRST_CHUNK << chunk).min(u64::from(self.limit).saturating_sub(start)) as usize
    }

    /// The slot of `index`, or `None` if no such slot was made.
    #[inline]
    fn slot(&self, index: u32) -> Option<&Slot<T, E::Word>> {
        if index >= self.limit {
            return None;
        }
        let (chunk, offset) = locate(index);
        let base = self.bases.get(chunk)?.load(Ordering::Acquire);
        if base.is_null() {
            return None;
        }
        // SAFETY: a non-null base points to `chunk_len(chunk)` initialized
        // slots, freed only when the pool drops. `index < limit`, so
        // `offset` is below that length (the length is only cut at the
        // limit).
        Some(unsafe { &*base.add(offset) })
    }

    /// How many slots have their object lent out: a walk over every slot.
    fn count_lent(&self) -> usize {
        let mut lent = 0;
        for (chunk, base) in self.bases.iter().enumerate() {
            let base = base.load(Ordering::Acquire);
            if base.is_null() {
                break; // chunks are allocated in order
            }
            // SAFETY: a non-null base points to `chunk_len(chunk)`
            // initialized slots that live as long as `self`.
            let slots = unsafe { std::slice::from_raw_parts(base, self.chunk_len(chunk)) };
            lent += slots
                .iter()
                .filter(|slot| slot.lent.load(Ordering::Relaxed))
                .count();
        }
        lent
    }

    /// Allocates the chunk that holds `index`, unless it exists. Called with
    /// the growth lock held, so no chunk is allocated twice.
    fn make_room_for(&self, index: u32) -> Result<()> {
        let (chunk, _) = locate(index);
        let base = &self.bases[chunk];
        if base.load(Ordering::Relaxed).is_null() {
            let slots = alloc_chunk(self.chunk_len(chunk), || Slot {
                link: E::zero_word(),
                lent: AtomicBool::new(false),
                value: UnsafeCell::new(MaybeUninit::<T>::uninit()),
            })?;
            // Release: the initialized links are visible to whoever loads
            // the base (see the module notes).
            base.store(slots.cast::<Slot<T, E::Word>>().as_ptr(), Ordering::Release);
        }
        Ok(())
    }
}

impl<T, E: Env> Drop for Chunks<T, E> {
    fn drop(&mut self) {
        for (chunk, base) in self.bases.iter().enumerate() {
            let base = base.load(Ordering::Relaxed); // `&mut self`: no race
            if base.is_null() {
                continue;
            }
            let len = self.chunk_len(chunk);
            // SAFETY: allocated by `alloc_chunk` as a boxed slice of `len`
            // slots (`make_room_for`; the limit never changes) and freed
            // only here. The values are `MaybeUninit`: no object is dropped.
            drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(base, len)) });
        }
    }
}

/// Slot bookkeeping that only growth (and a panicking reset) touches.
struct Growth {
    /// The lowest slot index never used.
    next_fresh: u32,
    /// Slots below `next_fresh` that hold no object: their constructor or
    /// reset hook panicked.
    vacant: Vec<u32>,
}

/// The pool's algorithm, generic over its atomics and lock.
struct Core<T, E: Env> {
    /// The free stack of idle objects (see [`tagged_stack`]), on a cache
    /// line of its own: every acquire and release writes it.
    head: CachePadded<E::Word>,
    chunks: Chunks<T, E>,
    growth: E::Lock,
    /// Objects alive, idle or lent (counting those being constructed).
    /// Changed only under the growth lock.
    made: AtomicUsize,
    make: Make<T>,
    reset: Option<Reset<T>>,
    /// The pool owns (and drops) values of `T`.
    _owns: PhantomData<T>,
}

// SAFETY: the core owns its objects and may drop them on any thread
// (`T: Send`). Sharing it lends each object to one holder at a time (the
// free stack hands an index to a single popper), so a `&mut T` is never
// shared and `T: Sync` is not needed. The closures are `Send + Sync`, the
// rest is atomics and a mutex.
unsafe impl<T: Send, E: Env> Sync for Core<T, E> {}
// SAFETY: as above; moving the core moves its objects with it.
unsafe impl<T: Send, E: Env> Send for Core<T, E> {}

/// One object lent from a [`Core`]: its slot and the slot's index.
struct Lease<'pool, T, E: Env> {
    index: u32,
    slot: &'pool Slot<T, E::Word>,
}

impl<T, E: Env> Lease<'_, T, E> {
    /// The lent object (initialized while the lease lasts).
    #[inline]
    fn object(&self) -> *mut T {
        self.slot.value.get().cast()
    }
}

impl<T, E: Env> Core<T, E> {
    fn new(limit: u32, make: Make<T>) -> Self {
        Core {
            head: CachePadded::new(E::zero_word()),
            chunks: Chunks::new(limit),
            growth: E::new_lock(Growth {
                next_fresh: 0,
                vacant: Vec::new(),
            }),
            made: AtomicUsize::new(0),
            make,
            reset: None,
            _owns: PhantomData,
        }
    }

    fn limit(&self) -> u32 {
        self.chunks.limit
    }

    /// Lends an idle object, else makes one, else (every slot holding an
    /// object) tries the free stack once more, since a holder may have
    /// released meanwhile.
    #[inline]
    fn acquire(&self) -> Result<Lease<'_, T, E>> {
        let lease = match self.pop_idle()? {
            Some(lease) => lease,
            None => match self.make_object()? {
                Some(lease) => lease,
                None => self.pop_idle()?.ok_or(Error::PoolExhausted {
                    max_objects: self.limit() as usize,
                })?,
            },
        };
        lease.slot.lent.store(true, Ordering::Relaxed);
        Ok(lease)
    }

    /// Takes a lent object back, after the reset hook.
    #[inline]
    fn release(&self, lease: &Lease<'_, T, E>) {
        if let Some(reset) = &self.reset {
            let drop_instead = OnUnwind::new(|| {
                // SAFETY: the lease is being given up, so nothing else
                // reaches the object; it is not on the free stack.
                unsafe { lease.object().drop_in_place() };
                lease.slot.lent.store(false, Ordering::Relaxed);
                self.vacate(lease.index);
            });
            // SAFETY: the lease gives exclusive access until the push.
            reset(unsafe { &mut *lease.object() });
            drop_instead.disarm();
        }
        lease.slot.lent.store(false, Ordering::Relaxed);
        self.push_idle(lease);
    }

    /// Pops an idle object off the free stack.
    #[inline]
    fn pop_idle(&self) -> Result<Option<Lease<'_, T, E>>> {
        let popped = tagged_stack::pop(&*self.head, self.limit(), |index| {
            self.chunks.slot(index).map(|slot| &slot.link)
        });
        match popped {
            Ok(Some(index)) => match self.chunks.slot(index) {
                Some(slot) => Ok(Some(Lease { index, slot })),
                None => Err(corrupt_stack(BadLink(u64::from(index) + 1))),
            },
            Ok(None) => Ok(None),
            Err(bad) => Err(corrupt_stack(bad)),
        }
    }

    /// Pushes an object on the free stack (the caller gives up its lease).
    #[inline]
    fn push_idle(&self, lease: &Lease<'_, T, E>) {
        tagged_stack::push(&*self.head, lease.index, &lease.slot.link);
    }

    /// Makes an object in a free slot and leases it to the caller; `None`
    /// when the pool is at its limit.
    fn make_object(&self) -> Result<Option<Lease<'_, T, E>>> {
        let Some(lease) = self.claim_slot()? else {
            return Ok(None);
        };
        let unclaim = OnUnwind::new(|| self.vacate(lease.index));
        let value = (self.make)();
        unclaim.disarm();
        // SAFETY: a claimed slot holds no object and no one else reaches it.
        unsafe { lease.object().write(value) };
        Ok(Some(lease))
    }

    /// Claims an empty slot (a vacant one first, else a fresh one, whose
    /// chunk is allocated on first use); `None` at the limit.
    fn claim_slot(&self) -> Result<Option<Lease<'_, T, E>>> {
        let mut growth = self.lock_growth();
        let made = self.made.load(Ordering::Relaxed);
        if made >= self.limit() as usize {
            return Ok(None);
        }
        let index = match growth.vacant.pop() {
            Some(index) => index,
            None => {
                // `made == next_fresh` when nothing is vacant, so the index
                // is below the limit.
                let index = growth.next_fresh;
                self.chunks.make_room_for(index)?;
                growth.next_fresh += 1;
                index
            }
        };
        let slot = self
            .chunks
            .slot(index)
            .ok_or_else(|| corrupt_stack(BadLink(u64::from(index) + 1)))?;
        self.made.store(made + 1, Ordering::Relaxed);
        Ok(Some(Lease { index, slot }))
    }

    /// Gives back a claimed slot that holds no object (any more).
    fn vacate(&self, index: u32) {
        let mut growth = self.lock_growth();
        growth.vacant.push(index);
        self.made.fetch_sub(1, Ordering::Relaxed);
    }

    fn lock_growth(&self) -> impl DerefMut<Target = Growth> + '_ {
        E::lock(&self.growth)
    }

    fn made(&self) -> usize {
        self.made.load(Ordering::Relaxed)
    }

    fn lent(&self) -> usize {
        self.chunks.count_lent()
    }
}

impl<T, E: Env> Drop for Core<T, E> {
    fn drop(&mut self) {
        // No guard outlives the pool (guards borrow it), so every object
        // left is on the free stack. One lent to a forgotten guard leaks.
        while let Ok(Some(lease)) = self.pop_idle() {
            // SAFETY: an idle object is initialized, and popping it made us
            // its only holder; the chunks are freed afterwards, with
            // `self.chunks`.
            unsafe { lease.object().drop_in_place() };
        }
    }
}

fn corrupt_stack(BadLink(link): BadLink) -> Error {
    Error::corrupt_data(
        "object pool free stack",
        format!(
            "link {link} names no slot, or the slot holding it (process memory was \
             overwritten)"
        ),
    )
}

/// A pool of reusable objects shared by many threads: lock-free acquire
/// and release.
///
/// [`acquire`](Self::acquire) pops an idle object off a lock-free stack,
/// or, when none is idle, makes one with the constructor (claiming its
/// slot takes a short lock; the constructor runs outside it). The
/// [`ConcurrentPooled`] guard runs the reset hook and pushes the object
/// back when dropped, on whatever thread drops it; releasing never locks.
/// Objects never move. `Send` and `Sync` when `T: Send`.
///
/// A pool holds at most `u32::MAX` objects (slots are named by 32-bit
/// indices); a larger maximum is lowered to that. See the
/// [module documentation](super) for how the pool grows and what happens
/// when user code panics.
///
/// ```
/// use shmkit::local::object_pool::ConcurrentPool;
///
/// let pool = ConcurrentPool::bounded(4, || Vec::<u64>::with_capacity(64))
///     .reset_with(|v| v.clear());
/// pool.prefill(4)?;
///
/// std::thread::scope(|scope| {
///     for worker in 0..8 {
///         let pool = &pool;
///         scope.spawn(move || {
///             for round in 0..100 {
///                 // Eight threads, four buffers: wait for a free one.
///                 let mut scratch = loop {
///                     match pool.try_acquire() {
///                         Some(scratch) => break scratch,
///                         None => std::thread::yield_now(),
///                     }
///                 };
///                 assert!(scratch.is_empty());
///                 scratch.extend([worker, round]);
///             }
///         });
///     }
/// });
/// assert_eq!((pool.capacity(), pool.available()), (4, 4));
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct ConcurrentPool<T> {
    core: Core<T, StdEnv>,
    max_objects: Option<usize>,
}

impl<T> ConcurrentPool<T> {
    /// A pool that makes objects with `make` and grows without bound (up
    /// to `u32::MAX` objects).
    ///
    /// Nothing is made until the first [`acquire`](Self::acquire) (or
    /// [`prefill`](Self::prefill)).
    pub fn new(make: impl Fn() -> T + Send + Sync + 'static) -> Self {
        ConcurrentPool {
            core: Core::new(MAX_SLOTS, Box::new(make)),
            max_objects: None,
        }
    }

    /// A pool that holds at most `max_objects` objects: once they are all
    /// lent, [`acquire`](Self::acquire) fails with
    /// [`Error::PoolExhausted`] until one comes back.
    pub fn bounded(max_objects: usize, make: impl Fn() -> T + Send + Sync + 'static) -> Self {
        let limit = u32::try_from(max_objects).unwrap_or(MAX_SLOTS);
        ConcurrentPool {
            core: Core::new(limit, Box::new(make)),
            max_objects: Some(limit as usize),
        }
    }

    /// Runs `reset` on every object as it comes back to the pool, on the
    /// thread that drops the guard.
    ///
    /// If `reset` panics, the object is dropped rather than lent again.
    #[must_use]
    pub fn reset_with(mut self, reset: impl Fn(&mut T) + Send + Sync + 'static) -> Self {
        self.core.reset = Some(Box::new(reset));
        self
    }

    /// Makes objects until the pool holds at least `count` (idle and lent
    /// together).
    ///
    /// Fails with [`Error::InvalidSize`] if `count` is above the maximum,
    /// and with [`Error::OutOfMemory`] if a chunk cannot be allocated. If
    /// the constructor panics, the objects made so far stay in the pool.
    pub fn prefill(&self, count: usize) -> Result<()> {
        let limit = self.core.limit() as usize;
        if count > limit {
            return Err(Error::invalid_size(format!(
                "cannot prefill {count} objects: the pool holds at most {limit}"
            )));
        }
        while self.core.made() < count {
            match self.core.make_object()? {
                Some(lease) => self.core.push_idle(&lease),
                None => break, // other threads filled the pool meanwhile
            }
        }
        Ok(())
    }

    /// Lends an object: the most recently returned idle one, or a new one
    /// from the constructor when none is idle. Lock-free unless it makes
    /// an object.
    ///
    /// Fails with [`Error::PoolExhausted`] when the pool is at its maximum
    /// and every object is lent, and with [`Error::OutOfMemory`] when a new
    /// chunk of slots cannot be allocated.
    #[inline]
    pub fn acquire(&self) -> Result<ConcurrentPooled<'_, T>> {
        let lease = self.core.acquire()?;
        Ok(ConcurrentPooled {
            core: &self.core,
            lease,
        })
    }

    /// Lends an object, or returns `None` where [`acquire`](Self::acquire)
    /// would fail.
    #[inline]
    pub fn try_acquire(&self) -> Option<ConcurrentPooled<'_, T>> {
        self.acquire().ok()
    }

    /// Objects the pool holds, idle and lent. While other threads acquire
    /// and release, every count is a snapshot.
    ///
    /// This one reads a counter; [`available`](Self::available) and
    /// [`in_use`](Self::in_use) walk every slot (O(capacity)), which keeps
    /// a shared counter off the acquire and release path. They are meant
    /// for monitoring and tests.
    pub fn capacity(&self) -> usize {
        self.core.made()
    }

    /// Idle objects (a snapshot, O(capacity): see
    /// [`capacity`](Self::capacity)).
    pub fn available(&self) -> usize {
        self.core.made().saturating_sub(self.core.lent())
    }

    /// Objects lent out (a snapshot, O(capacity): see
    /// [`capacity`](Self::capacity)).
    pub fn in_use(&self) -> usize {
        self.core.lent()
    }

    /// The most objects the pool will hold, `None` when it grows without
    /// bound.
    pub fn max_objects(&self) -> Option<usize> {
        self.max_objects
    }
}

impl<T> fmt::Debug for ConcurrentPool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrentPool")
            .field("capacity", &self.capacity())
            .field("available", &self.available())
            .field("in_use", &self.in_use())
            .field("max_objects", &self.max_objects)
            .finish_non_exhaustive()
    }
}

/// An object lent by a [`ConcurrentPool`]; dropping it (on any thread)
/// gives the object back.
///
/// Dereferences to the object, whose address stays the same for as long as
/// the pool lives.
pub struct ConcurrentPooled<'pool, T> {
    core: &'pool Core<T, StdEnv>,
    lease: Lease<'pool, T, StdEnv>,
}

// SAFETY: the guard is the object's only holder; sending it sends the
// object (`T: Send`), and releasing from another thread is what the pool
// is for (the core is `Sync` when `T: Send`).
unsafe impl<T: Send> Send for ConcurrentPooled<'_, T> {}
// SAFETY: a shared guard only gives `&T` (`T: Sync`).
unsafe impl<T: Sync> Sync for ConcurrentPooled<'_, T> {}

impl<T> Deref for ConcurrentPooled<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the object is initialized and lent to this guard alone
        // until it drops; the chunk lives as long as the pool it borrows.
        unsafe { &*self.lease.object() }
    }
}

impl<T> DerefMut for ConcurrentPooled<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { &mut *self.lease.object() }
    }
}

impl<T> Drop for ConcurrentPooled<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.core.release(&self.lease);
    }
}

impl<T: fmt::Debug> fmt::Debug for ConcurrentPooled<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        T::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_geometry() {
        assert_eq!(locate(0), (0, 0));
        assert_eq!(locate(15), (0, 15));
        assert_eq!(locate(16), (1, 0));
        assert_eq!(locate(47), (1, 31));
        assert_eq!(locate(48), (2, 0));
        assert_eq!(CHUNKS, 29);
        let (last, offset) = locate(MAX_SLOTS - 1);
        assert_eq!(chunk_start(last) + offset as u64, u64::from(MAX_SLOTS - 1));
        // Every chunk starts where the one before ends.
        for chunk in 1..CHUNKS {
            assert_eq!(
                chunk_start(chunk),
                chunk_start(chunk - 1) + (FIRST_CHUNK << (chunk - 1))
            );
            assert_eq!(locate(chunk_start(chunk) as u32), (chunk, 0));
        }
    }

    #[test]
    fn bounded_chunks_are_cut_at_the_limit() {
        let pool = ConcurrentPool::bounded(20, || 0u8);
        pool.prefill(20).unwrap();
        let lens: Vec<usize> = (0..3).map(|c| pool.core.chunks.chunk_len(c)).collect();
        assert_eq!(lens, [16, 4, 0]);
        assert!(pool.core.chunks.bases[2].load(Ordering::Relaxed).is_null());
        assert!(matches!(pool.prefill(21), Err(Error::InvalidSize { .. })));
    }

    #[test]
    fn a_maximum_above_the_index_space_is_lowered() {
        let pool = ConcurrentPool::bounded(usize::MAX, || ());
        assert_eq!(pool.max_objects(), Some(u32::MAX as usize));
    }

    fn assert_send_sync<P: Send + Sync>() {}

    #[test]
    fn shared_when_the_objects_may_move() {
        assert_send_sync::<ConcurrentPool<std::cell::Cell<u8>>>();
        assert_send_sync::<ConcurrentPooled<'static, Vec<u8>>>();
    }
}

#[cfg(test)]
mod loom_models {
    //! The pool's own acquire and release under every interleaving loom
    //! explores (up to a preemption bound), on loom's atomic word.

    use super::*;
    use crate::sync::atomic_word::LoomWord;
    use loom::cell::UnsafeCell as LoomUnsafeCell;
    use loom::sync::atomic::AtomicBool;
    use loom::sync::Arc;

    /// An object that notices two holders at once: the `held` flag flips
    /// only false -> true -> false, and loom reports `uses` accessed by two
    /// threads without a happens-before edge between them (a release that
    /// does not publish to the next acquirer).
    struct Probe {
        held: AtomicBool,
        uses: LoomUnsafeCell<u32>,
    }

    impl Probe {
        fn new() -> Probe {
            Probe {
                held: AtomicBool::new(false),
                uses: LoomUnsafeCell::new(0),
            }
        }
    }

    /// `loom`'s atomic word and mutex.
    struct LoomEnv;

    impl Env for LoomEnv {
        type Word = LoomWord;
        type Lock = loom::sync::Mutex<Growth>;

        fn zero_word() -> LoomWord {
            LoomWord::new(0)
        }

        fn new_lock(growth: Growth) -> Self::Lock {
            loom::sync::Mutex::new(growth)
        }

        fn lock(lock: &Self::Lock) -> impl DerefMut<Target = Growth> + '_ {
            lock.lock().unwrap()
        }
    }

    type Pool = Core<Probe, LoomEnv>;

    fn pool(limit: u32, prefill: usize) -> Arc<Pool> {
        let mut pool = Pool::new(limit, Box::new(Probe::new));
        // The reset hook writes the object too: run after the push that
        // publishes it, it would race with the next holder.
        pool.reset = Some(Box::new(|probe: &mut Probe| {
            // SAFETY: loom checks the access for races.
            probe.uses.with_mut(|uses| unsafe { *uses += 1 });
        }));
        for _ in 0..prefill {
            let lease = pool.make_object().unwrap().expect("below the limit");
            pool.push_idle(&lease);
        }
        Arc::new(pool)
    }

    /// Holds the lease's object for a moment, as a user would.
    fn hold(lease: &Lease<'_, Probe, LoomEnv>) {
        // SAFETY: the lease is ours (that is what the model checks).
        let probe = unsafe { &*lease.object() };
        assert!(
            !probe.held.swap(true, Ordering::Relaxed),
            "slot {} lent twice",
            lease.index
        );
        // SAFETY: loom checks the access for races.
        probe.uses.with_mut(|uses| unsafe { *uses += 1 });
        probe.held.store(false, Ordering::Relaxed);
    }

    /// Acquires, holds and releases once; whether an object was free.
    fn borrow_once(pool: &Pool) -> bool {
        match pool.acquire() {
            Ok(lease) => {
                hold(&lease);
                pool.release(&lease);
                true
            }
            Err(Error::PoolExhausted { .. }) => false,
            Err(other) => panic!("{other}"),
        }
    }

    /// After the threads: every object is idle, each exactly once.
    fn assert_all_returned(pool: &Pool, objects: usize) {
        assert_eq!((pool.made(), pool.lent()), (objects, 0));
        let mut indices = Vec::new();
        while let Some(lease) = pool.pop_idle().unwrap() {
            hold(&lease);
            indices.push(lease.index);
        }
        indices.sort_unstable();
        assert_eq!(indices, (0..objects as u32).collect::<Vec<_>>());
    }

    fn model(body: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        // Bugs of this kind show within two preemptions (a double hand-out
        // needs one popper preempted between reading the head and its
        // compare-and-swap, and one more to reorder the others); the bound
        // keeps each model to seconds. LOOM_MAX_PREEMPTIONS overrides it.
        builder.preemption_bound.get_or_insert(2);
        builder.check(body);
    }

    /// The ABA pattern on the pool: one thread takes two objects and gives
    /// the first back while two others borrow. No object is held twice,
    /// and all come back.
    #[test]
    fn no_object_is_lent_twice() {
        model(|| {
            let pool = pool(3, 3);
            let juggler = {
                let pool = pool.clone();
                loom::thread::spawn(move || {
                    let first = pool.acquire().unwrap();
                    let second = pool.acquire();
                    hold(&first);
                    pool.release(&first);
                    if let Ok(second) = second {
                        hold(&second);
                        pool.release(&second);
                    }
                })
            };
            let borrower = {
                let pool = pool.clone();
                loom::thread::spawn(move || borrow_once(&pool))
            };
            borrow_once(&pool);
            juggler.join().unwrap();
            borrower.join().unwrap();
            assert_all_returned(&pool, 3);
        });
    }

    /// Three threads on a pool of one: whoever gets the object holds it
    /// alone; the others may find the pool exhausted, never corrupt.
    #[test]
    fn one_object_three_threads() {
        model(|| {
            let pool = pool(1, 1);
            let others: Vec<_> = (0..2)
                .map(|_| {
                    let pool = pool.clone();
                    loom::thread::spawn(move || borrow_once(&pool))
                })
                .collect();
            let mut lent = usize::from(borrow_once(&pool));
            for other in others {
                lent += usize::from(other.join().unwrap());
            }
            assert!(lent >= 1, "the first acquire to run finds the object");
            assert_all_returned(&pool, 1);
        });
    }

    /// Two threads grow an empty pool at once (through the growth lock)
    /// while acquiring and releasing on the lock-free path.
    #[test]
    fn growth_races_acquire_and_release() {
        model(|| {
            let pool = pool(2, 0);
            let other = {
                let pool = pool.clone();
                loom::thread::spawn(move || assert!(borrow_once(&pool)))
            };
            assert!(borrow_once(&pool));
            other.join().unwrap();
            let made = pool.made();
            assert!((1..=2).contains(&made), "made {made}");
            assert_all_returned(&pool, made);
        });
    }
}
