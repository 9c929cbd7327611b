//! Attaching a segment whatever allocator manages it: for tools that look
//! into segments (the command line) rather than allocate from a known kind.

use super::{
    AllocStats, AllocatorKind, BuddyAllocator, BumpAllocator, FreeListAllocator, PoolAllocator,
    RecoveryReport, Region, SegmentAllocator, ShmAllocator, SizeClassAllocator, StackAllocator,
    ThreadLocalAllocator,
};
use crate::error::{Error, Result};
use crate::segment::{Opened, Segment, SegmentOptions};

/// Registers every segment allocator once: the `AnyAllocator` variant, its
/// type, and whether it frees single blocks (through [`ShmAllocator`]) or
/// only carves. The kind a variant stands for is its type's
/// [`SegmentAllocator::KIND`]. Adding an allocator: its own file, its line
/// in `segment::kind`, and its line here.
macro_rules! segment_allocators {
    (
        carving { $($(#[$cdoc:meta])* $carver:ident($carver_type:ty) => $visit:ident,)* }
        freeing { $($(#[$fdoc:meta])* $freer:ident($freer_type:ty),)* }
    ) => {
        /// Any of shmkit's segment allocators, chosen by the kind in the header.
        ///
        /// ```
        /// use shmkit::{AnyAllocator, AllocatorKind, SegmentAllocator, SegmentOptions, SizeClassAllocator};
        ///
        /// # let name = format!("shmkit-doc-any-{}", std::process::id());
        /// let options = SegmentOptions::shm(&name).size(1 << 20);
        /// let heap = SizeClassAllocator::create(&options)?;
        /// let any = AnyAllocator::attach(&SegmentOptions::shm(&name))?;
        /// assert_eq!(any.kind(), AllocatorKind::SizeClass);
        /// any.check()?;
        /// # shmkit::segment::remove(&shmkit::Location::Shm(name))?;
        /// # Ok::<(), shmkit::Error>(())
        /// ```
        #[derive(Debug)]
        pub enum AnyAllocator {
            $($(#[$cdoc])* $carver($carver_type),)*
            $($(#[$fdoc])* $freer($freer_type),)*
        }

        impl AnyAllocator {
            /// The kinds [`create`](Self::create) can set up.
            pub const KINDS: [AllocatorKind; [$(stringify!($carver),)* $(stringify!($freer),)*].len()] = [
                $(<$carver_type as SegmentAllocator>::KIND,)*
                $(<$freer_type as SegmentAllocator>::KIND,)*
            ];

            /// Creates a segment managed by an allocator of `kind`, with its
            /// default parameters.
            pub fn create(kind: AllocatorKind, options: &SegmentOptions) -> Result<AnyAllocator> {
                $(if kind == <$carver_type as SegmentAllocator>::KIND {
                    return Ok(AnyAllocator::$carver(<$carver_type>::create(options)?));
                })*
                $(if kind == <$freer_type as SegmentAllocator>::KIND {
                    return Ok(AnyAllocator::$freer(<$freer_type>::create(options)?));
                })*
                Err(Error::Unsupported(
                    "only the segment allocators (AnyAllocator::KINDS) create segments",
                ))
            }

            /// Attaches the segment if it exists (it must be managed by an
            /// allocator of `kind`, with default parameters), creates it
            /// otherwise, and says which; as
            /// [`SegmentAllocator::open_or_create`] (a dead creator's
            /// segment is reclaimed).
            pub fn open_or_create(
                kind: AllocatorKind,
                options: &SegmentOptions,
            ) -> Result<(AnyAllocator, Opened)> {
                $(if kind == <$carver_type as SegmentAllocator>::KIND {
                    let (made, opened) = <$carver_type>::open_or_create(options)?;
                    return Ok((AnyAllocator::$carver(made), opened));
                })*
                $(if kind == <$freer_type as SegmentAllocator>::KIND {
                    let (made, opened) = <$freer_type>::open_or_create(options)?;
                    return Ok((AnyAllocator::$freer(made), opened));
                })*
                Err(Error::Unsupported(
                    "only the segment allocators (AnyAllocator::KINDS) create segments",
                ))
            }

            /// The allocator of an attached segment.
            pub fn from_segment(segment: Segment) -> Result<AnyAllocator> {
                let kind = segment.allocator_kind();
                $(if kind == <$carver_type as SegmentAllocator>::KIND {
                    return Ok(AnyAllocator::$carver(<$carver_type>::from_segment(segment)?));
                })*
                $(if kind == <$freer_type as SegmentAllocator>::KIND {
                    return Ok(AnyAllocator::$freer(<$freer_type>::from_segment(segment)?));
                })*
                Err(Error::WrongAllocator {
                    expected: AllocatorKind::None,
                    found: kind,
                })
            }

            /// The segment.
            pub fn segment(&self) -> &Segment {
                match self {
                    $(AnyAllocator::$carver(a) => a.segment(),)*
                    $(AnyAllocator::$freer(a) => a.segment(),)*
                }
            }

            /// Runs `visitor` on the allocator, with its concrete type (no
            /// dynamic dispatch: each allocator's own fast path).
            #[inline(always)]
            pub fn visit<V: AllocatorVisitor>(&self, visitor: V) -> V::Output {
                match self {
                    $(AnyAllocator::$carver(a) => visitor.$visit(a),)*
                    $(AnyAllocator::$freer(a) => visitor.freeing(a),)*
                }
            }

            /// The allocators that free single blocks, through their common trait.
            pub fn as_shm_allocator(&self) -> Option<&dyn ShmAllocator> {
                match self {
                    $(AnyAllocator::$carver(_) => None,)*
                    $(AnyAllocator::$freer(a) => Some(a),)*
                }
            }
        }
    };
}

segment_allocators! {
    carving {
        /// A bump allocator.
        Bump(BumpAllocator) => bump,
        /// A stack allocator.
        Stack(StackAllocator) => stack,
    }
    freeing {
        /// A pool of fixed-size slots.
        Pool(PoolAllocator),
        /// A general-purpose free list.
        FreeList(FreeListAllocator),
        /// A buddy allocator.
        Buddy(BuddyAllocator),
        /// A size-class page allocator.
        SizeClass(SizeClassAllocator),
        /// A thread-local caching allocator.
        ThreadLocal(ThreadLocalAllocator),
    }
}

/// Code that runs on an allocator of any kind with its concrete type
/// ([`AnyAllocator::visit`]): a benchmark or tool that wants each
/// allocator's own code, not calls through `dyn`. Every allocator that
/// frees single blocks comes to [`freeing`](Self::freeing); the carving
/// ones, which share no trait for freeing, have a method each.
pub trait AllocatorVisitor {
    /// What the visit returns.
    type Output;
    /// A bump allocator.
    fn bump(self, allocator: &BumpAllocator) -> Self::Output;
    /// A stack allocator.
    fn stack(self, allocator: &StackAllocator) -> Self::Output;
    /// Any allocator that frees single blocks.
    fn freeing<A: ShmAllocator>(self, allocator: &A) -> Self::Output;
}

impl AnyAllocator {
    /// Attaches the segment and the allocator its header names.
    pub fn attach(options: &SegmentOptions) -> Result<AnyAllocator> {
        let segment = Segment::attach(options)?;
        Self::from_segment(segment)
    }

    /// The kind recorded in the header.
    pub fn kind(&self) -> AllocatorKind {
        self.segment().allocator_kind()
    }

    /// The allocator's accounting. The linear allocators count the bytes
    /// below their cursor (live blocks are not counted one by one).
    pub fn stats(&self) -> AllocStats {
        let linear = |used: u64, capacity: u64| AllocStats {
            allocated_bytes: used,
            peak_bytes: used,
            live_allocations: 0,
            free_bytes: capacity.saturating_sub(used),
            largest_free_block: capacity.saturating_sub(used),
            capacity,
        };
        match self {
            AnyAllocator::Bump(a) => linear(a.used(), a.capacity()),
            AnyAllocator::Stack(a) => linear(a.used(), a.capacity()),
            other => other
                .as_shm_allocator()
                .map(|a| a.stats())
                .unwrap_or_default(),
        }
    }

    /// [`ShmAllocator::try_stats`]: exact figures or the error that kept
    /// them from being exact.
    pub fn try_stats(&self) -> Result<AllocStats> {
        match self.as_shm_allocator() {
            Some(allocator) => allocator.try_stats(),
            None => Ok(self.stats()),
        }
    }

    /// The integrity walk ([`ShmAllocator::check`]; the linear allocators
    /// check their cursor against the segment).
    pub fn check(&self) -> Result<()> {
        match self.as_shm_allocator() {
            Some(a) => a.check(),
            None => {
                let stats = self.stats();
                if stats.allocated_bytes > stats.capacity {
                    return Err(Error::corrupt(format!(
                        "cursor {} bytes past a {}-byte data area",
                        stats.allocated_bytes, stats.capacity
                    )));
                }
                Ok(())
            }
        }
    }

    /// The recovery pass, alone ([`ShmAllocator::recover`]). The linear
    /// allocators have nothing to mend: a dead process's blocks are space
    /// below the cursor, and the cursor moves in one atomic step.
    ///
    /// # Safety
    ///
    /// As for [`ShmAllocator::recover`]: no other thread of this process
    /// uses the segment's allocators meanwhile.
    pub unsafe fn recover(&self) -> Result<RecoveryReport> {
        // SAFETY: forwarded from the caller.
        unsafe { self.recover_with(false) }
    }

    /// The recovery pass even though other processes use the segment
    /// ([`ShmAllocator::recover_forced`]).
    ///
    /// # Safety
    ///
    /// As for [`recover`](Self::recover).
    pub unsafe fn recover_forced(&self) -> Result<RecoveryReport> {
        // SAFETY: forwarded from the caller.
        unsafe { self.recover_with(true) }
    }

    /// # Safety
    ///
    /// As for [`recover`](Self::recover).
    unsafe fn recover_with(&self, force: bool) -> Result<RecoveryReport> {
        let _alone = self.segment().lock_for_recovery(force)?;
        // SAFETY: the lock is held; the rest is the caller's promise.
        unsafe { self.recovery_pass() }
    }

    /// The hand-off records of dead threads
    /// ([`ShmAllocator::take_dead_handoffs`]).
    pub fn take_dead_handoffs(&self) -> Vec<u64> {
        match self.as_shm_allocator() {
            Some(a) => a.take_dead_handoffs(),
            None => Vec::new(),
        }
    }

    /// The pass alone ([`ShmAllocator::recovery_pass`]), for a caller that
    /// holds [`Segment::lock_for_recovery`] itself (to mend its own
    /// structures in the same quiet spell).
    ///
    /// # Safety
    ///
    /// As for [`ShmAllocator::recovery_pass`].
    pub unsafe fn recovery_pass(&self) -> Result<RecoveryReport> {
        match self.as_shm_allocator() {
            // SAFETY: forwarded from the caller.
            Some(a) => unsafe { a.recovery_pass() },
            None => Ok(RecoveryReport::unchanged(self.stats())),
        }
    }

    /// The data area as regions ([`ShmAllocator::regions`]); the linear
    /// allocators are one used and one free stretch.
    pub fn regions(&self, visit: &mut dyn FnMut(Region)) -> Result<()> {
        match self.as_shm_allocator() {
            Some(a) => a.regions(visit),
            None => {
                let start = self.segment().data_offset();
                let stats = self.stats();
                let used = stats.allocated_bytes.min(stats.capacity);
                visit(Region {
                    offset: start,
                    len: used,
                    used,
                });
                visit(Region {
                    offset: start + used,
                    len: stats.capacity - used,
                    used: 0,
                });
                Ok(())
            }
        }
    }
}
