//! What both rings share: the environment their algorithms run in (the
//! atomics, `std`'s in a segment and `loom`'s in the model checks, and how
//! a thread sleeps and wakes), the fixed header every ring starts with and
//! its validation, the futex *signal* the blocking operations sleep on, and
//! the cells' value and sequence access.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::alloc::{MemContext, ShmAllocator};
use crate::error::{Error, Result};
pub(super) use crate::sync::atomic_word::{Atomic32, Atomic64};

// ------------------------------------------------------------- atomics

/// Where the algorithms run: which atomics, which fence, and how a thread
/// sleeps on a word and wakes sleepers.
pub(super) trait Env {
    type U64: Atomic64;
    type U32: Atomic32;
    /// Whether a blocking operation spins a little before it sleeps.
    const SPIN: bool;
    /// Sleeps while `word` holds `expected`, at most about `timeout`; may
    /// return early for any reason.
    fn wait(&self, word: &Self::U32, expected: u32, timeout: Duration);
    /// Wakes up to `count` sleepers of `word`.
    fn wake(&self, word: &Self::U32, count: u32);
}

/// The real thing: `std` atomics in a segment and the shared futex.
pub(super) struct Os;

impl Env for Os {
    type U64 = AtomicU64;
    type U32 = AtomicU32;
    const SPIN: bool = true;

    fn wait(&self, word: &AtomicU32, expected: u32, timeout: Duration) {
        crate::os::futex::wait(word, expected, Some(timeout));
    }

    fn wake(&self, word: &AtomicU32, count: u32) {
        crate::os::futex::wake(word, count);
    }
}

// ------------------------------------------------------------- layout

/// A cache-line pair of its own (128 bytes: the adjacent-line prefetcher of
/// x86 pulls lines in pairs), so words written by different sides never
/// share one.
#[repr(C, align(128))]
pub(super) struct Line<X>(pub(super) X);

/// The fixed fields every ring starts with, written once by the creator
/// (the magic last, with release ordering) and validated by every opener.
#[repr(C)]
pub(super) struct Fixed<A> {
    pub(super) magic: A,
    pub(super) capacity: A,
    pub(super) elem_size: A,
    pub(super) elem_align: A,
    /// Bytes from one cell to the next.
    pub(super) stride: A,
    /// Bytes from the start of the ring to its first cell.
    pub(super) cells_at: A,
}

/// One direction's sleepers: how many, and the word they sleep on.
#[repr(C)]
pub(super) struct Signal<W> {
    pub(super) waiters: W,
    pub(super) event: W,
}

/// The largest capacity a ring may have.
pub(super) const MAX_CAPACITY: u64 = 1 << 40;

/// Whether a ring may have `capacity` cells: a power of two from 2 to
/// [`MAX_CAPACITY`] (asked for at creation, found at validation).
fn is_valid_capacity(capacity: u64) -> bool {
    (2..=MAX_CAPACITY).contains(&capacity) && capacity.is_power_of_two()
}

/// How long a sleeper sleeps at most before it re-checks on its own, unless
/// the handle says otherwise.
pub(super) const DEFAULT_RECHECK: Duration = Duration::from_millis(100);

/// The shortest recheck interval a handle accepts.
const MIN_RECHECK: Duration = Duration::from_millis(1);

/// What a ring kind expects of its layout, from its element type.
pub(super) struct Shape {
    /// Which ring, for error messages.
    pub(super) what: &'static str,
    pub(super) magic: u64,
    /// Size and alignment of the ring's header struct.
    pub(super) header_size: usize,
    pub(super) header_align: usize,
    /// Size and alignment of the element type.
    pub(super) elem_size: usize,
    pub(super) elem_align: usize,
    /// Bytes and alignment of one cell.
    pub(super) stride: usize,
    pub(super) cell_align: usize,
    /// The element type's name, for error messages.
    pub(super) type_name: &'static str,
}

/// Where a ring's cells start and how many bytes it takes.
#[derive(Clone, Copy, Debug)]
pub(super) struct Extent {
    pub(super) cells_at: usize,
    pub(super) total: usize,
    pub(super) align: usize,
}

impl Shape {
    /// The extent of a ring of `capacity` cells.
    pub(super) fn extent(&self, capacity: u64) -> Result<Extent> {
        let cells_at = self.header_size.next_multiple_of(self.cell_align);
        let total = usize::try_from(capacity)
            .ok()
            .and_then(|capacity| capacity.checked_mul(self.stride))
            .and_then(|cells| cells.checked_add(cells_at))
            .ok_or_else(|| {
                Error::invalid_size(format!(
                    "{} of {capacity} cells of {} bytes overflows",
                    self.what, self.stride
                ))
            })?;
        Ok(Extent {
            cells_at,
            total,
            align: self.header_align.max(self.cell_align),
        })
    }

    /// Bytes of segment memory a ring of `capacity` cells takes.
    pub(super) fn bytes_for(&self, capacity: usize) -> Result<usize> {
        let capacity = self.check_capacity(capacity)?;
        Ok(self.extent(capacity)?.total)
    }

    /// Validates the ring at `offset`, clears its magic (so later opens
    /// fail) and frees its block.
    ///
    /// # Safety
    ///
    /// No handle of the ring is used afterwards.
    pub(super) unsafe fn destroy<A: ShmAllocator + ?Sized>(
        &self,
        alloc: &A,
        offset: u64,
    ) -> Result<()> {
        let (block, _, _) = self.validate(alloc, offset)?;
        // SAFETY: validated header; an atomic.
        let fixed = unsafe { &*block.as_ptr().cast::<Fixed<AtomicU64>>() };
        fixed.magic.store(0, Ordering::Release);
        // SAFETY: the caller uses no handle of the ring afterwards.
        unsafe { alloc.free_offset(&MemContext::default(), offset) }
    }

    /// Checks a capacity asked for at creation.
    pub(super) fn check_capacity(&self, capacity: usize) -> Result<u64> {
        let capacity = capacity as u64;
        if !is_valid_capacity(capacity) {
            return Err(Error::invalid_size(format!(
                "{} capacity {capacity} must be a power of two from 2 to {MAX_CAPACITY}",
                self.what
            )));
        }
        Ok(capacity)
    }

    /// Allocates and zeroes the block of a ring of `capacity` cells; returns
    /// its offset, local address and extent. The caller initializes it and
    /// publishes the magic last.
    pub(super) fn allocate<A: ShmAllocator + ?Sized>(
        &self,
        alloc: &A,
        capacity: usize,
    ) -> Result<(u64, NonNull<u8>, Extent, u64)> {
        let capacity = self.check_capacity(capacity)?;
        let extent = self.extent(capacity)?;
        let offset = alloc.allocate_offset(&MemContext::default(), extent.total, extent.align)?;
        let block = match alloc.full_ptr(offset) {
            Ok(block) if block.as_ptr() as usize % extent.align == 0 => block,
            Ok(_) => {
                // SAFETY: the fresh block never left this function.
                let _ = unsafe { alloc.free_offset(&MemContext::default(), offset) };
                return Err(Error::Misaligned {
                    offset,
                    align: extent.align,
                });
            }
            Err(error) => {
                // SAFETY: the fresh block never left this function.
                let _ = unsafe { alloc.free_offset(&MemContext::default(), offset) };
                return Err(error);
            }
        };
        // SAFETY: the block is fresh, ours alone and `extent.total` bytes
        // long; zeroing gives every padding byte a defined value.
        unsafe { std::ptr::write_bytes(block.as_ptr(), 0, extent.total) };
        Ok((offset, block.local(), extent, capacity))
    }

    /// Finds and validates the ring at `offset`: a live block of `alloc`,
    /// aligned, long enough for its header, with this shape's magic,
    /// element size and alignment, a power-of-two capacity, and cells that
    /// fit inside the block. Returns the header's address and the checked
    /// capacity and extent, which the caller keeps (later changes to the
    /// shared bytes cannot move them).
    pub(super) fn validate<A: ShmAllocator + ?Sized>(
        &self,
        alloc: &A,
        offset: u64,
    ) -> Result<(NonNull<u8>, u64, Extent)> {
        let usable = alloc.usable_size(offset)?;
        let block = alloc.full_ptr(offset)?;
        let corrupt = |reason: String| Error::corrupt_data(self.what, reason);
        if usable < self.header_size {
            return Err(corrupt(format!(
                "the block at offset {offset} has {usable} bytes, a ring header needs {}",
                self.header_size
            )));
        }
        let align = self.header_align.max(self.cell_align);
        if block.as_ptr() as usize % align != 0 {
            return Err(Error::Misaligned { offset, align });
        }
        // SAFETY: the block is live, aligned for the header and long enough
        // for it; every field is an atomic, valid for any bit pattern.
        let fixed = unsafe { &*block.as_ptr().cast::<Fixed<AtomicU64>>() };
        let magic = fixed.magic.load(Ordering::Acquire);
        if magic != self.magic {
            return Err(corrupt(format!(
                "no ring at offset {offset} (magic {magic:#018x}, expected {:#018x})",
                self.magic
            )));
        }
        let elem_size = fixed.elem_size.load(Ordering::Relaxed);
        let elem_align = fixed.elem_align.load(Ordering::Relaxed);
        let stride = fixed.stride.load(Ordering::Relaxed);
        if elem_size != self.elem_size as u64
            || elem_align != self.elem_align as u64
            || stride != self.stride as u64
        {
            return Err(Error::WrongType {
                name: format!("{} at offset {offset}", self.what),
                expected: format!(
                    "{} ({} bytes, align {})",
                    self.type_name, self.elem_size, self.elem_align
                ),
                found: format!("elements of {elem_size} bytes, align {elem_align}"),
            });
        }
        let capacity = fixed.capacity.load(Ordering::Relaxed);
        if !is_valid_capacity(capacity) {
            return Err(corrupt(format!(
                "capacity {capacity} is not a power of two from 2 to {MAX_CAPACITY}"
            )));
        }
        let extent = self.extent(capacity).map_err(|e| corrupt(e.to_string()))?;
        let cells_at = fixed.cells_at.load(Ordering::Relaxed);
        if cells_at != extent.cells_at as u64 {
            return Err(corrupt(format!(
                "cells start at byte {cells_at}, expected {}",
                extent.cells_at
            )));
        }
        if extent.total > usable {
            return Err(corrupt(format!(
                "{capacity} cells need {} bytes, the block has {usable}",
                extent.total
            )));
        }
        Ok((block.local(), capacity, extent))
    }
}

/// The fixed fields of a new ring (magic still 0: publish it last).
pub(super) fn fixed_for(shape: &Shape, capacity: u64, extent: &Extent) -> Fixed<AtomicU64> {
    Fixed {
        magic: AtomicU64::new(0),
        capacity: AtomicU64::new(capacity),
        elem_size: AtomicU64::new(shape.elem_size as u64),
        elem_align: AtomicU64::new(shape.elem_align as u64),
        stride: AtomicU64::new(shape.stride as u64),
        cells_at: AtomicU64::new(extent.cells_at as u64),
    }
}

pub(super) fn new_signal() -> Line<Signal<AtomicU32>> {
    Line(Signal {
        waiters: AtomicU32::new(0),
        event: AtomicU32::new(0),
    })
}

/// A deadline `timeout` from now (`None`: too far to represent, so never).
pub(super) fn deadline_after(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// A recheck interval as handles accept it.
pub(super) fn clamp_recheck(interval: Duration) -> Duration {
    interval.max(MIN_RECHECK)
}

// ------------------------------------------------------------- sleeping

impl<W: Atomic32> Signal<W> {
    /// Called after a change that may let a sleeper proceed: wakes one
    /// sleeper if there is any. Makes no system call when nobody sleeps.
    #[inline]
    pub(super) fn notify<E: Env<U32 = W>>(&self, env: &E) {
        // Orders the caller's change before the read of the waiter count;
        // pairs with the fence in `block_until`.
        E::U32::fence(Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) != 0 {
            self.notify_slow(env);
        }
    }

    #[cold]
    fn notify_slow<E: Env<U32 = W>>(&self, env: &E) {
        self.event.fetch_add(1, Ordering::SeqCst);
        env.wake(&self.event, 1);
    }

    /// Calls `attempt` until it succeeds, sleeping on this signal between
    /// tries, until `deadline` (`None`: no deadline). `attempt` is always
    /// tried once more after a sleep, before the deadline is looked at. It
    /// is told whether the wait got past spinning (`true`: about to sleep,
    /// or woken), when slower checks are worth their cost.
    pub(super) fn block_until<E: Env<U32 = W>, R>(
        &self,
        env: &E,
        deadline: Option<Instant>,
        recheck: Duration,
        mut attempt: impl FnMut(bool) -> Option<R>,
    ) -> Option<R> {
        if E::SPIN {
            // The other side is often a few hundred nanoseconds away:
            // spin (then yield) briefly before paying for a sleep.
            let backoff = crossbeam_utils::Backoff::new();
            while !backoff.is_completed() {
                if let Some(done) = attempt(false) {
                    return Some(done);
                }
                backoff.snooze();
            }
        }
        loop {
            self.waiters.fetch_add(1, Ordering::SeqCst);
            // Orders the registration before the re-check; pairs with the
            // fence in `notify`.
            E::U32::fence(Ordering::SeqCst);
            let seen = self.event.load(Ordering::SeqCst);
            if let Some(done) = attempt(true) {
                self.waiters.fetch_sub(1, Ordering::SeqCst);
                return Some(done);
            }
            let sleep = match deadline {
                None => recheck,
                Some(deadline) => match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(recheck),
                    _ => {
                        self.waiters.fetch_sub(1, Ordering::SeqCst);
                        return None;
                    }
                },
            };
            env.wait(&self.event, seen, sleep);
            self.waiters.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

// ------------------------------------------------------------- cells

/// The values of a ring's cells, read and written with plain accesses by
/// whoever holds the cell.
pub(super) trait Values<T: Copy> {
    /// Writes cell `index`.
    ///
    /// # Safety
    ///
    /// `index` is below the capacity the cells were made with, and the
    /// caller holds the cell (no one else reads or writes it meanwhile).
    unsafe fn write(&self, index: usize, value: T);

    /// Reads cell `index`.
    ///
    /// # Safety
    ///
    /// As for [`write`](Self::write); the cell was written before.
    unsafe fn read(&self, index: usize) -> T;
}

/// Cells that also carry a sequence word each (the MPMC ring's).
pub(super) trait SeqCells<T: Copy>: Values<T> {
    type Seq: Atomic64;

    /// The sequence word of cell `index`.
    ///
    /// # Safety
    ///
    /// `index` is below the capacity the cells were made with.
    unsafe fn seq(&self, index: usize) -> &Self::Seq;
}

impl<C: Values<T>, T: Copy> Values<T> for &C {
    #[inline]
    unsafe fn write(&self, index: usize, value: T) {
        // SAFETY: forwarded from the caller.
        unsafe { (**self).write(index, value) }
    }
    #[inline]
    unsafe fn read(&self, index: usize) -> T {
        // SAFETY: forwarded from the caller.
        unsafe { (**self).read(index) }
    }
}

impl<C: SeqCells<T>, T: Copy> SeqCells<T> for &C {
    type Seq = C::Seq;
    #[inline]
    unsafe fn seq(&self, index: usize) -> &C::Seq {
        // SAFETY: forwarded from the caller.
        unsafe { (**self).seq(index) }
    }
}

#[cfg(test)]
pub(super) mod loom_support {
    //! The loom side of the abstractions: atomics, cells with loom's
    //! checked `UnsafeCell`, and a futex stand-in.

    use super::*;
    use loom::sync::atomic::{AtomicU32 as LoomU32, AtomicU64 as LoomU64};

    /// The futex, as loom can model it: a check-and-sleep under a lock (the
    /// kernel's hash-bucket lock) and a wake of `count` sleepers of that
    /// word under the same lock, one condition variable per word. Timeouts
    /// are ignored, so a lost wake-up is a deadlock loom reports.
    pub(crate) struct LoomEnv {
        lock: loom::sync::Mutex<()>,
        sleepers: [loom::sync::Condvar; 2],
        /// The addresses of the two event words, set by `bind`.
        words: std::sync::OnceLock<[usize; 2]>,
    }

    impl LoomEnv {
        pub(crate) fn new() -> LoomEnv {
            LoomEnv {
                lock: loom::sync::Mutex::new(()),
                sleepers: [loom::sync::Condvar::new(), loom::sync::Condvar::new()],
                words: std::sync::OnceLock::new(),
            }
        }

        /// Tells the stand-in which words sleepers will wait on.
        pub(crate) fn bind(&self, not_empty: &Signal<LoomU32>, not_full: &Signal<LoomU32>) {
            let address = |signal: &Signal<LoomU32>| &signal.event as *const LoomU32 as usize;
            assert!(self
                .words
                .set([address(not_empty), address(not_full)])
                .is_ok());
        }

        fn sleepers_of(&self, word: &LoomU32) -> &loom::sync::Condvar {
            let address = word as *const LoomU32 as usize;
            let words = self.words.get().expect("bound");
            let index = words
                .iter()
                .position(|&w| w == address)
                .expect("a bound word");
            &self.sleepers[index]
        }
    }

    impl Env for LoomEnv {
        type U64 = LoomU64;
        type U32 = LoomU32;
        const SPIN: bool = false;

        fn wait(&self, word: &LoomU32, expected: u32, _timeout: Duration) {
            let guard = self.lock.lock().unwrap();
            if word.load(Ordering::SeqCst) == expected {
                drop(self.sleepers_of(word).wait(guard).unwrap());
            }
        }

        fn wake(&self, word: &LoomU32, count: u32) {
            let _guard = self.lock.lock().unwrap();
            let sleepers = self.sleepers_of(word);
            if count == 1 {
                sleepers.notify_one();
            } else {
                sleepers.notify_all();
            }
        }
    }

    /// Runs a model with at most `preemptions` preemptions per execution
    /// (bugs of this kind of code show within two or three; the bounds
    /// keep each model to seconds). `LOOM_MAX_PREEMPTIONS` overrides it
    /// for a deeper run.
    pub(crate) fn model(preemptions: usize, body: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound.get_or_insert(preemptions);
        builder.check(body);
    }

    pub(crate) fn signal() -> Line<Signal<LoomU32>> {
        Line(Signal {
            waiters: LoomU32::new(0),
            event: LoomU32::new(0),
        })
    }

    pub(crate) fn fixed() -> Line<Fixed<LoomU64>> {
        Line(Fixed {
            magic: LoomU64::new(0),
            capacity: LoomU64::new(0),
            elem_size: LoomU64::new(0),
            elem_align: LoomU64::new(0),
            stride: LoomU64::new(0),
            cells_at: LoomU64::new(0),
        })
    }

    /// Plain cells whose accesses loom checks for races.
    pub(crate) struct LoomValues(pub(crate) Vec<loom::cell::UnsafeCell<u64>>);

    impl Values<u64> for LoomValues {
        unsafe fn write(&self, index: usize, value: u64) {
            // SAFETY: the caller holds the cell; loom checks it.
            self.0[index].with_mut(|cell| unsafe { *cell = value });
        }
        unsafe fn read(&self, index: usize) -> u64 {
            // SAFETY: as above.
            self.0[index].with(|cell| unsafe { *cell })
        }
    }
}
