//! What `shmkit bench` measures: shmkit's allocators and the peers that
//! live in the same binary, each seen by the workloads as a [`Worker`].

use std::alloc::{GlobalAlloc, Layout, System};
use std::num::NonZeroUsize;

use shmkit::{
    AllocatorKind, AllocatorVisitor, AnyAllocator, BumpAllocator, LinearAlloc, MallocAllocator,
    MemContext, Offset, SegmentOptions, ShmAllocator, StackAllocator,
};

use super::workload::{Discipline, Worker};
use crate::remove_on_drop::RemoveOnDrop;

/// Where a subject's memory comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The C library's allocator (Rust's `System`).
    System,
    /// mimalloc, as a `GlobalAlloc`.
    Mimalloc,
    /// bumpalo: one arena per worker, bump-only work.
    Bumpalo,
    /// shmkit's process-local malloc wrapper.
    ShmkitMalloc,
    /// A shmkit allocator whose state lives in a shared segment.
    Segment(AllocatorKind),
}

/// A named subject of the benchmark.
#[derive(Clone, Copy, Debug)]
pub struct Subject {
    pub name: &'static str,
    pub source: Source,
}

/// Every subject in the binary, the reference (system) first.
pub const SUBJECTS: [Subject; 11] = [
    Subject::new("system", Source::System),
    Subject::new("mimalloc", Source::Mimalloc),
    Subject::new("bumpalo", Source::Bumpalo),
    Subject::new("shmkit-malloc", Source::ShmkitMalloc),
    Subject::new("shmkit-bump", Source::Segment(AllocatorKind::Bump)),
    Subject::new("shmkit-stack", Source::Segment(AllocatorKind::Stack)),
    Subject::new("shmkit-pool", Source::Segment(AllocatorKind::Pool)),
    Subject::new("shmkit-free-list", Source::Segment(AllocatorKind::FreeList)),
    Subject::new("shmkit-buddy", Source::Segment(AllocatorKind::Buddy)),
    Subject::new(
        "shmkit-size-class",
        Source::Segment(AllocatorKind::SizeClass),
    ),
    Subject::new(
        "shmkit-thread-local",
        Source::Segment(AllocatorKind::ThreadLocal),
    ),
];

/// The subject every ratio is taken against.
pub const REFERENCE: &str = "system";

impl Subject {
    const fn new(name: &'static str, source: Source) -> Subject {
        Subject { name, source }
    }

    pub fn by_name(name: &str) -> Option<Subject> {
        SUBJECTS.into_iter().find(|s| s.name == name)
    }

    pub fn discipline(self) -> Discipline {
        match self.source {
            Source::Bumpalo | Source::Segment(AllocatorKind::Bump) => Discipline::BumpOnly,
            Source::Segment(AllocatorKind::Stack) => Discipline::Lifo,
            _ => Discipline::AnyOrder,
        }
    }

    /// The subject ready to run: a fresh segment of `segment_size` bytes
    /// named `segment_name` for the shared allocators.
    pub fn instantiate(self, segment_name: &str, segment_size: u64) -> Result<Instance, String> {
        Ok(match self.source {
            Source::System => Instance::System,
            Source::Mimalloc => Instance::Mimalloc,
            Source::Bumpalo => Instance::Bumpalo,
            Source::ShmkitMalloc => Instance::Malloc(Box::new(MallocAllocator::new())),
            Source::Segment(kind) => {
                let options = SegmentOptions::shm(segment_name).size(segment_size);
                let allocator = AnyAllocator::create(kind, &options)
                    .map_err(|e| format!("{}: creating its segment: {e}", self.name))?;
                Instance::Shared {
                    allocator: Box::new(allocator),
                    _remove_name: Some(RemoveOnDrop(options.location().clone())),
                }
            }
        })
    }

    /// The subject in a worker process: the parent's segment attached by
    /// name, or a process-local allocator of its own.
    pub fn attach(self, segment_name: &str) -> Result<Instance, String> {
        match self.source {
            Source::Segment(_) => {
                let allocator = AnyAllocator::attach(&SegmentOptions::shm(segment_name))
                    .map_err(|e| format!("{}: attaching `{segment_name}`: {e}", self.name))?;
                Ok(Instance::Shared {
                    allocator: Box::new(allocator),
                    _remove_name: None,
                })
            }
            _ => self.instantiate(segment_name, 0),
        }
    }
}

/// A subject with its memory set up.
pub enum Instance {
    System,
    Mimalloc,
    Bumpalo,
    Malloc(Box<MallocAllocator>),
    Shared {
        allocator: Box<AnyAllocator>,
        /// Set in the process that created the segment: removes its name
        /// when the instance drops.
        _remove_name: Option<RemoveOnDrop>,
    },
}

/// Something to do with a worker factory, whatever the worker's type: the
/// workloads run monomorphized for each allocator, with no dynamic call on
/// the hot path.
pub trait WithWorkers {
    type Output;
    fn run<W: Worker, F: Fn() -> W + Sync>(self, make: F) -> Self::Output;
}

impl Instance {
    /// Calls `job` with a factory of workers on this instance.
    pub fn visit<J: WithWorkers>(&self, job: J) -> J::Output {
        match self {
            Instance::System => job.run(|| GlobalWorker(System)),
            Instance::Mimalloc => job.run(|| GlobalWorker(mimalloc::MiMalloc)),
            Instance::Bumpalo => job.run(|| BumpaloWorker(bumpalo::Bump::new())),
            Instance::Malloc(a) => job.run(|| OffsetWorker(&**a)),
            Instance::Shared { allocator, .. } => allocator.visit(VisitWith(job)),
        }
    }

    /// Between rounds, with every worker idle: a shared bump cursor goes
    /// back to the start (its workers only drop their offsets).
    pub fn after_round(&self) {
        if let Instance::Shared { allocator, .. } = self {
            let AnyAllocator::Bump(bump) = &**allocator else {
                return;
            };
            // SAFETY: every worker of the round has finished and reported;
            // the workers keep offsets only, never references into blocks,
            // and drop them at the end of each round.
            unsafe { bump.reset_shared() }
        }
    }

    /// After a subject's workloads: its segment must be sound and, for the
    /// allocators that count blocks, hold none.
    pub fn verify(&self) -> Result<(), String> {
        let Instance::Shared { allocator, .. } = self else {
            return Ok(());
        };
        allocator
            .check()
            .map_err(|e| format!("integrity check failed: {e}"))?;
        let live = allocator.stats().live_allocations;
        if allocator.as_shm_allocator().is_some() && live != 0 {
            return Err(format!("{live} blocks still live after every workload"));
        }
        Ok(())
    }
}

/// A process-local `GlobalAlloc`.
struct GlobalWorker<G>(G);

impl<G: GlobalAlloc> Worker for GlobalWorker<G> {
    #[inline]
    fn alloc(&mut self, size: usize) -> Option<NonZeroUsize> {
        // SAFETY: the workloads ask for 16..=4096 bytes: non-zero, and the
        // alignment 8 is a power of two.
        let ptr = unsafe { self.0.alloc(Layout::from_size_align_unchecked(size, 8)) };
        NonZeroUsize::new(ptr as usize)
    }
    #[inline]
    fn free(&mut self, token: NonZeroUsize, size: usize) -> bool {
        // SAFETY: `token` came from `alloc` above with the same layout and
        // is freed once.
        unsafe {
            self.0.dealloc(
                token.get() as *mut u8,
                Layout::from_size_align_unchecked(size, 8),
            )
        };
        true
    }
}

/// bumpalo: one arena per worker, reset to give everything back.
struct BumpaloWorker(bumpalo::Bump);

impl Worker for BumpaloWorker {
    #[inline]
    fn alloc(&mut self, size: usize) -> Option<NonZeroUsize> {
        let layout = Layout::from_size_align(size, 8).ok()?;
        let ptr = self.0.try_alloc_layout(layout).ok()?;
        NonZeroUsize::new(ptr.as_ptr() as usize)
    }
    #[inline]
    fn free(&mut self, _: NonZeroUsize, _: usize) -> bool {
        true
    }
    fn release_all(&mut self) {
        self.0.reset();
    }
}

/// A shmkit allocator driven through its offsets.
/// Runs a job on a segment allocator with its concrete type, so that each
/// allocator is measured through its own code, not through `dyn`.
struct VisitWith<J>(J);

impl<J: WithWorkers> AllocatorVisitor for VisitWith<J> {
    type Output = J::Output;

    fn bump(self, allocator: &BumpAllocator) -> J::Output {
        self.0.run(|| BumpWorker(allocator))
    }

    fn stack(self, allocator: &StackAllocator) -> J::Output {
        self.0.run(|| StackWorker(allocator))
    }

    fn freeing<A: ShmAllocator>(self, allocator: &A) -> J::Output {
        self.0.run(|| OffsetWorker(allocator))
    }
}

struct OffsetWorker<'a, A>(&'a A);

impl<A: ShmAllocator> Worker for OffsetWorker<'_, A> {
    #[inline]
    fn alloc(&mut self, size: usize) -> Option<NonZeroUsize> {
        let offset = self
            .0
            .allocate_offset(&MemContext::default(), size, 8)
            .ok()?;
        NonZeroUsize::new(offset as usize)
    }
    #[inline]
    fn free(&mut self, token: NonZeroUsize, _: usize) -> bool {
        // SAFETY: a workload frees each token it was given once, and never
        // touches the block again.
        unsafe {
            self.0
                .free_offset(&MemContext::default(), token.get() as u64)
        }
        .is_ok()
    }
}

/// shmkit's shared bump allocator (reset by the coordinator).
struct BumpWorker<'a>(&'a BumpAllocator);

impl Worker for BumpWorker<'_> {
    #[inline]
    fn alloc(&mut self, size: usize) -> Option<NonZeroUsize> {
        let offset = self.0.alloc_handle(size, 8).ok()?;
        NonZeroUsize::new(offset.raw() as usize)
    }
    #[inline]
    fn free(&mut self, _: NonZeroUsize, _: usize) -> bool {
        true
    }
}

/// shmkit's stack allocator (frees the most recent block).
struct StackWorker<'a>(&'a StackAllocator);

impl Worker for StackWorker<'_> {
    #[inline]
    fn alloc(&mut self, size: usize) -> Option<NonZeroUsize> {
        let offset = self.0.alloc_handle(size, 8).ok()?;
        NonZeroUsize::new(offset.raw() as usize)
    }
    #[inline]
    fn free(&mut self, token: NonZeroUsize, _: usize) -> bool {
        // SAFETY: as above: each token freed once, never touched again.
        unsafe { self.0.free(Offset::<u8>::from_raw(token.get() as u64)) }.is_ok()
    }
}
