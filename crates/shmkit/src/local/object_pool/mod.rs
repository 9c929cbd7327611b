//! Object pools: objects made once and lent out again and again, so a hot
//! loop pays for construction (and for the heap buffers inside an object)
//! only the first time.
//!
//! * [`ObjectPool`] serves one thread. Acquiring pops a pointer off a stack
//!   of idle objects; dropping the guard pushes it back.
//! * [`ConcurrentPool`] serves many threads. Acquiring and releasing are
//!   lock-free (a Treiber stack of slot indices); only making a new object
//!   takes a lock.
//!
//! Both are built from a constructor closure, take an optional *reset hook*
//! that runs on every object as it comes back (clear a buffer, zero a
//! counter), an optional maximum number of objects, and can be prefilled.
//! The guard ([`Pooled`], [`ConcurrentPooled`]) borrows its pool, so no
//! object outlives the pool that made it, and dropping the pool drops every
//! object it made exactly once.
//!
//! # How the pools grow
//!
//! Objects live in *chunks* of slots that are never moved or freed before
//! the pool, so an object keeps its address for its whole life (a guard may
//! hand out pointers into it) and growing never touches a lent object.
//! Objects are made one at a time, only when no idle one is left, by
//! calling the constructor; a slot without an object costs its bytes of
//! address space but no construction.
//!
//! * [`ObjectPool`]: the first chunk holds 8 slots, or exactly what
//!   [`prefill`](ObjectPool::prefill) asks for; each later chunk is as large
//!   as all earlier ones together, so the slot count doubles.
//! * [`ConcurrentPool`]: chunk `k` holds `16 << k` slots (16, 32, 64, ...),
//!   so the chunk of a slot index is found with one `ilog2`, without a lock.
//!
//! A pool with a maximum (`bounded`) never holds more objects than that,
//! and its last chunk is cut short so that it reserves no slot beyond it.
//! Acquiring from a bounded pool whose objects are all lent fails with
//! [`Error::PoolExhausted`]; `try_acquire` returns `None` instead.
//!
//! # Panics in user code
//!
//! If the constructor panics, the slot it was to fill stays free and the
//! pool is unchanged. If the reset hook panics, the object's state is
//! unknown, so it is dropped instead of lent again, its slot is made free,
//! and the panic continues out of the guard's `drop`.
//!
//! Passing a guard to [`std::mem::forget`] keeps its object out of the pool
//! for good: it is never lent again, and never dropped (it leaks).

mod concurrent;

pub use concurrent::{ConcurrentPool, ConcurrentPooled};

use std::cell::RefCell;
use std::fmt;
use std::marker::PhantomData;
use std::mem::{size_of, MaybeUninit};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

use crate::error::{Error, Result};

/// Slots in the first chunk of an [`ObjectPool`] that was not prefilled.
const FIRST_CHUNK: usize = 8;

/// The constructor of an [`ObjectPool`].
type Make<T> = Box<dyn Fn() -> T>;
/// The reset hook of an [`ObjectPool`].
type Reset<T> = Box<dyn Fn(&mut T)>;

/// A pool of reusable objects for one thread.
///
/// [`acquire`](Self::acquire) lends an idle object, or makes one with the
/// constructor when none is idle; the [`Pooled`] guard gives it back when
/// dropped, after the reset hook (if any) has run on it. Objects never
/// move, and the most recently returned object is lent first (it is the
/// one most likely still in cache).
///
/// The pool is neither `Send` nor `Sync`; [`ConcurrentPool`] is the one to
/// share between threads. See the [module documentation](self) for how the
/// pool grows and what happens when user code panics.
///
/// ```
/// use shmkit::local::object_pool::ObjectPool;
///
/// let pool = ObjectPool::new(|| Vec::<u8>::with_capacity(256)).reset_with(|v| v.clear());
///
/// let first_buffer = {
///     let mut buffer = pool.acquire()?;
///     buffer.extend_from_slice(b"request 1");
///     buffer.as_ptr()
/// }; // back in the pool, cleared
///
/// let buffer = pool.acquire()?;
/// assert!(buffer.is_empty());
/// assert_eq!(buffer.as_ptr(), first_buffer); // the same heap buffer, reused
/// assert_eq!((pool.capacity(), pool.in_use()), (1, 1));
/// # Ok::<(), shmkit::Error>(())
/// ```
pub struct ObjectPool<T> {
    state: RefCell<State<T>>,
    make: Make<T>,
    reset: Option<Reset<T>>,
    max_objects: Option<usize>,
    /// The pool owns (and drops) values of `T`.
    _owns: PhantomData<T>,
}

/// The bookkeeping of an [`ObjectPool`]. Borrowed only between calls into
/// user code (constructor, reset hook, `T`'s `drop`), so those may use the
/// pool again without finding it borrowed.
struct State<T> {
    /// Objects not lent, the most recently returned last.
    idle: Vec<NonNull<T>>,
    /// Slots that hold no object (never filled, or their object was dropped
    /// after a panicking reset), lowest address last.
    empty: Vec<NonNull<T>>,
    /// Objects alive, idle or lent (counting one being constructed).
    made: usize,
    chunks: Chunks<T>,
}

/// The slot memory of an [`ObjectPool`]: chunks that never move. Dropping
/// frees the memory only; the objects in it are the pool's to drop.
struct Chunks<T> {
    list: Vec<NonNull<[MaybeUninit<T>]>>,
    slots: usize,
}

impl<T> ObjectPool<T> {
    /// A pool that makes objects with `make` and grows without bound.
    ///
    /// Nothing is made until the first [`acquire`](Self::acquire) (or
    /// [`prefill`](Self::prefill)).
    pub fn new(make: impl Fn() -> T + 'static) -> Self {
        ObjectPool {
            state: RefCell::new(State {
                idle: Vec::new(),
                empty: Vec::new(),
                made: 0,
                chunks: Chunks {
                    list: Vec::new(),
                    slots: 0,
                },
            }),
            make: Box::new(make),
            reset: None,
            max_objects: None,
            _owns: PhantomData,
        }
    }

    /// A pool that holds at most `max_objects` objects: once they are all
    /// lent, [`acquire`](Self::acquire) fails with
    /// [`Error::PoolExhausted`] until one comes back.
    pub fn bounded(max_objects: usize, make: impl Fn() -> T + 'static) -> Self {
        let mut pool = ObjectPool::new(make);
        pool.max_objects = Some(max_objects);
        pool
    }

    /// Runs `reset` on every object as it comes back to the pool, so the
    /// next borrower finds it clean (`Vec::clear` keeps the buffer and drops
    /// the contents, for example).
    ///
    /// If `reset` panics, the object is dropped rather than lent again.
    #[must_use]
    pub fn reset_with(mut self, reset: impl Fn(&mut T) + 'static) -> Self {
        self.reset = Some(Box::new(reset));
        self
    }

    /// Makes objects until the pool holds at least `count` (idle and lent
    /// together), reserving their slots in one chunk.
    ///
    /// Fails with [`Error::InvalidSize`] if `count` is above the maximum,
    /// and with [`Error::OutOfMemory`] if the slots cannot be reserved. If
    /// the constructor panics, the objects made so far stay in the pool.
    pub fn prefill(&self, count: usize) -> Result<()> {
        let limit = self.limit();
        if count > limit {
            return Err(Error::invalid_size(format!(
                "cannot prefill {count} objects: the pool holds at most {limit}"
            )));
        }
        self.state.borrow_mut().reserve_slots(count, limit)?;
        while self.capacity() < count {
            let object = self.make_object()?;
            self.state.borrow_mut().idle.push(object);
        }
        Ok(())
    }

    /// Lends an object: the most recently returned idle one, or a new one
    /// from the constructor when none is idle.
    ///
    /// Fails with [`Error::PoolExhausted`] when the pool is at its maximum
    /// and every object is lent, and with [`Error::OutOfMemory`] when a new
    /// chunk of slots cannot be allocated.
    #[inline]
    pub fn acquire(&self) -> Result<Pooled<'_, T>> {
        // Bound first: the borrow must end before the constructor runs.
        let idle = self.state.borrow_mut().idle.pop();
        let object = match idle {
            Some(object) => object,
            None => self.make_object()?,
        };
        Ok(Pooled { pool: self, object })
    }

    /// Lends an object, or returns `None` where [`acquire`](Self::acquire)
    /// would fail.
    #[inline]
    pub fn try_acquire(&self) -> Option<Pooled<'_, T>> {
        self.acquire().ok()
    }

    /// Objects the pool holds: [`available`](Self::available) plus
    /// [`in_use`](Self::in_use).
    pub fn capacity(&self) -> usize {
        self.state.borrow().made
    }

    /// Idle objects, lent without calling the constructor.
    pub fn available(&self) -> usize {
        self.state.borrow().idle.len()
    }

    /// Objects lent out (guards alive).
    pub fn in_use(&self) -> usize {
        let state = self.state.borrow();
        state.made - state.idle.len()
    }

    /// The most objects the pool will hold, `None` when it grows without
    /// bound.
    pub fn max_objects(&self) -> Option<usize> {
        self.max_objects
    }

    fn limit(&self) -> usize {
        self.max_objects.unwrap_or(usize::MAX)
    }

    /// Makes one object in a free slot; the caller lends it or idles it.
    fn make_object(&self) -> Result<NonNull<T>> {
        // Claiming counts the object as made before the constructor runs,
        // so a constructor that acquires from this pool cannot push it past
        // its maximum.
        let slot = self.state.borrow_mut().claim_slot(self.limit())?;
        let unclaim = OnUnwind::new(|| self.state.borrow_mut().vacate(slot));
        let value = (self.make)();
        unclaim.disarm();
        // SAFETY: `slot` is a claimed slot of a live chunk, so it is aligned,
        // holds no object and is reachable from no other handle.
        unsafe { slot.as_ptr().write(value) };
        Ok(slot)
    }

    /// Takes back a lent object, after the reset hook.
    #[inline]
    fn give_back(&self, object: NonNull<T>) {
        if let Some(reset) = &self.reset {
            let drop_instead = OnUnwind::new(|| {
                // SAFETY: the guard that held `object` is being dropped, so
                // nothing else reaches it; it is neither idle nor empty.
                unsafe { object.as_ptr().drop_in_place() };
                self.state.borrow_mut().vacate(object);
            });
            // SAFETY: as above; the borrow ends before the object is idle.
            reset(unsafe { &mut *object.as_ptr() });
            drop_instead.disarm();
        }
        // Never reallocates: `grow` reserved room for every slot.
        self.state.borrow_mut().idle.push(object);
    }
}

impl<T> State<T> {
    /// Takes a slot for a new object, growing when every slot is filled.
    fn claim_slot(&mut self, limit: usize) -> Result<NonNull<T>> {
        if self.made >= limit {
            return Err(Error::PoolExhausted { max_objects: limit });
        }
        if self.empty.is_empty() {
            // Every slot holds an object, so `limit - slots >= 1`.
            let doubling = self.chunks.slots.max(FIRST_CHUNK);
            self.grow(doubling.min(limit - self.chunks.slots))?;
        }
        let slot = self
            .empty
            .pop()
            .ok_or(Error::PoolExhausted { max_objects: limit })?;
        self.made += 1;
        Ok(slot)
    }

    /// Returns a claimed slot whose object was never written or was dropped.
    fn vacate(&mut self, slot: NonNull<T>) {
        self.made -= 1;
        // Never reallocates: `grow` reserved room for every slot.
        self.empty.push(slot);
    }

    /// Makes sure there are slots for `count` objects; a shortfall is
    /// reserved in one chunk (at least the doubling step).
    fn reserve_slots(&mut self, count: usize, limit: usize) -> Result<()> {
        let slots = self.chunks.slots;
        if count <= slots {
            return Ok(());
        }
        let wanted = (count - slots).max(slots).max(FIRST_CHUNK);
        self.grow(wanted.min(limit - slots))
    }

    /// Adds a chunk of `len` empty slots.
    fn grow(&mut self, len: usize) -> Result<()> {
        let slots = self.chunks.slots.checked_add(len).ok_or_else(|| {
            Error::invalid_size(format!("an object pool of more than {} slots", usize::MAX))
        })?;
        // Room for every slot in both stacks, so that giving an object back
        // (which runs in `drop`) never allocates.
        reserve_total(&mut self.idle, slots)?;
        reserve_total(&mut self.empty, slots)?;
        let first = self.chunks.push(len)?;
        // Lowest address last, so slots fill in address order.
        self.empty.extend((0..len).rev().map(|i| {
            // SAFETY: `i < len`, inside the chunk just allocated.
            unsafe { first.add(i) }
        }));
        Ok(())
    }
}

/// Grows `stack` so it can hold `total` pointers without reallocating.
fn reserve_total<T>(stack: &mut Vec<NonNull<T>>, total: usize) -> Result<()> {
    let additional = total.saturating_sub(stack.len());
    stack
        .try_reserve_exact(additional)
        .map_err(|_| out_of_memory::<NonNull<T>>(additional))
}

impl<T> Chunks<T> {
    /// Allocates a chunk of `len` slots and returns its first slot.
    fn push(&mut self, len: usize) -> Result<NonNull<T>> {
        self.list
            .try_reserve(1)
            .map_err(|_| out_of_memory::<usize>(2))?;
        let chunk = alloc_chunk(len, MaybeUninit::<T>::uninit)?;
        self.list.push(chunk);
        self.slots += len;
        Ok(chunk.cast())
    }
}

impl<T> Drop for Chunks<T> {
    fn drop(&mut self) {
        for &chunk in &self.list {
            // SAFETY: made by `alloc_chunk` (a leaked boxed slice) and freed
            // only here; the slots are `MaybeUninit`, so no object is dropped.
            drop(unsafe { Box::from_raw(chunk.as_ptr()) });
        }
    }
}

impl<T> Drop for ObjectPool<T> {
    fn drop(&mut self) {
        // No guard outlives the pool (guards borrow it), so every object
        // left is idle. One lent to a guard that was forgotten leaks.
        for object in self.state.get_mut().idle.drain(..) {
            // SAFETY: an idle object is initialized and dropped only here;
            // its chunk is freed afterwards, with `state`.
            unsafe { object.as_ptr().drop_in_place() };
        }
    }
}

impl<T> fmt::Debug for ObjectPool<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectPool")
            .field("capacity", &self.capacity())
            .field("available", &self.available())
            .field("in_use", &self.in_use())
            .field("max_objects", &self.max_objects)
            .finish_non_exhaustive()
    }
}

/// An object lent by an [`ObjectPool`]; dropping it gives the object back.
///
/// Dereferences to the object, whose address stays the same for as long as
/// the pool lives.
pub struct Pooled<'pool, T> {
    pool: &'pool ObjectPool<T>,
    object: NonNull<T>,
}

impl<T> Deref for Pooled<'_, T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        // SAFETY: the object is initialized and lent to this guard alone
        // until it drops; the chunk lives as long as the pool it borrows.
        unsafe { self.object.as_ref() }
    }
}

impl<T> DerefMut for Pooled<'_, T> {
    #[inline]
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes the access unique.
        unsafe { self.object.as_mut() }
    }
}

impl<T> Drop for Pooled<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.pool.give_back(self.object);
    }
}

impl<T: fmt::Debug> fmt::Debug for Pooled<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        T::fmt(self, f)
    }
}

/// Runs a clean-up unless [`disarm`](Self::disarm)ed first: the undo of a
/// step that user code (constructor, reset hook) may abandon by panicking.
struct OnUnwind<F: FnOnce()>(Option<F>);

impl<F: FnOnce()> OnUnwind<F> {
    fn new(clean_up: F) -> Self {
        OnUnwind(Some(clean_up))
    }

    /// The step completed: no clean-up.
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl<F: FnOnce()> Drop for OnUnwind<F> {
    fn drop(&mut self) {
        if let Some(clean_up) = self.0.take() {
            clean_up();
        }
    }
}

/// Allocates `len` slots made by `init`, as a slice that never moves: a
/// leaked `Box<[S]>` (free it with `Box::from_raw`).
fn alloc_chunk<S>(len: usize, init: impl FnMut() -> S) -> Result<NonNull<[S]>> {
    let mut slots = Vec::new();
    slots
        .try_reserve_exact(len)
        .map_err(|_| out_of_memory::<S>(len))?;
    slots.extend(std::iter::repeat_with(init).take(len));
    Ok(NonNull::from(Box::leak(slots.into_boxed_slice())))
}

/// The error for `count` values of `S` that could not be allocated.
fn out_of_memory<S>(count: usize) -> Error {
    Error::OutOfMemory {
        requested: (count as u64).saturating_mul(size_of::<S>() as u64),
        available: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    fn chunk_lens<T>(pool: &ObjectPool<T>) -> Vec<usize> {
        pool.state
            .borrow()
            .chunks
            .list
            .iter()
            .map(|c| c.len())
            .collect()
    }

    #[test]
    fn chunks_double_from_eight() {
        let pool = ObjectPool::new(|| 0u64);
        let guards: Vec<_> = (0..33).map(|_| pool.acquire().unwrap()).collect();
        assert_eq!(chunk_lens(&pool), [8, 8, 16, 32]);
        assert_eq!(pool.capacity(), 33);
        drop(guards);
        assert_eq!(pool.available(), 33);
    }

    #[test]
    fn prefill_reserves_one_exact_chunk_then_doubles() {
        let pool = ObjectPool::new(|| 0u8);
        pool.prefill(100).unwrap();
        assert_eq!(chunk_lens(&pool), [100]);
        assert_eq!((pool.capacity(), pool.available()), (100, 100));
        // Prefilling less than is held does nothing.
        pool.prefill(10).unwrap();
        assert_eq!(pool.capacity(), 100);
        let guards: Vec<_> = (0..101).map(|_| pool.acquire().unwrap()).collect();
        assert_eq!(chunk_lens(&pool), [100, 100]);
        drop(guards);
    }

    #[test]
    fn bounded_chunks_stop_at_the_maximum() {
        let pool = ObjectPool::bounded(20, || 0u32);
        let guards: Vec<_> = (0..20).map(|_| pool.acquire().unwrap()).collect();
        assert_eq!(chunk_lens(&pool), [8, 8, 4]);
        assert!(matches!(
            pool.acquire(),
            Err(Error::PoolExhausted { max_objects: 20 })
        ));
        drop(guards);
    }

    #[test]
    fn prefill_above_the_maximum_is_refused() {
        let pool = ObjectPool::bounded(4, || 0u32);
        assert!(matches!(pool.prefill(5), Err(Error::InvalidSize { .. })));
        assert_eq!(pool.capacity(), 0);
        pool.prefill(4).unwrap();
        assert_eq!(chunk_lens(&pool), [4]);
    }

    #[test]
    fn a_zero_sized_type_is_pooled_and_dropped() {
        thread_local!(static DROPS: Cell<usize> = const { Cell::new(0) });
        struct Marker;
        impl Drop for Marker {
            fn drop(&mut self) {
                DROPS.with(|d| d.set(d.get() + 1));
            }
        }
        let pool = ObjectPool::new(|| Marker);
        let guards: Vec<_> = (0..10).map(|_| pool.acquire().unwrap()).collect();
        drop(guards);
        assert_eq!(DROPS.with(Cell::get), 0);
        drop(pool);
        assert_eq!(DROPS.with(Cell::get), 10);
    }

    /// The constructor, the reset hook and `T::drop` may all use the pool:
    /// no borrow is held while they run.
    #[test]
    fn user_code_may_reenter_the_pool() {
        type Shared = Rc<ObjectPool<u32>>;
        let slot: Rc<std::cell::OnceCell<std::rc::Weak<ObjectPool<u32>>>> = Rc::default();
        let seen = Rc::new(Cell::new(0));
        let pool: Shared = Rc::new({
            let (make_slot, reset_slot, seen) = (slot.clone(), slot.clone(), seen.clone());
            ObjectPool::bounded(2, move || {
                let pool = make_slot.get().and_then(|w| w.upgrade());
                pool.map_or(0, |p| p.capacity() as u32)
            })
            .reset_with(move |_| {
                let pool = reset_slot.get().and_then(|w| w.upgrade()).unwrap();
                // Lend and return another object from inside the hook.
                let other = pool.try_acquire();
                if let Some(other) = other {
                    seen.set(seen.get() + *other);
                }
            })
        });
        slot.set(Rc::downgrade(&pool)).unwrap();
        let a = pool.acquire().unwrap();
        assert_eq!(*a, 1); // made while already counted
                           // Resetting `a` lends a second object (made: 2), whose own reset
                           // finds the pool at its maximum.
        drop(a);
        assert_eq!(seen.get(), 2);
        assert_eq!((pool.capacity(), pool.available()), (2, 2));
    }
}
