//! What a recovery pass ([`ShmAllocator::recover`](super::ShmAllocator::recover))
//! found and mended after processes died in the middle of an operation.

use super::AllocStats;

/// The outcome of [`ShmAllocator::recover`](super::ShmAllocator::recover).
///
/// A pass mends what the allocator's own records can prove: locks held by
/// dead processes, thread caches of dead processes, and free blocks that sit
/// on no free structure because a free or an allocation was cut short. It
/// cannot know who owned a block that is still marked in use: a block a dead
/// process held stays allocated until someone who knows (the application,
/// which may keep its own ledger) frees it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Locks that a dead process held, taken over and released.
    pub locks_taken_over: u64,
    /// Thread caches of dead processes whose blocks went back to the heap.
    pub caches_reclaimed: u64,
    /// Free blocks (slots, pages, marked blocks) that were on no free
    /// structure and are allocatable again.
    pub blocks_reclaimed: u64,
    /// Bytes fenced off because the headers that describe them were
    /// destroyed (by a stray write, not a crash): never handed out again,
    /// so whatever lived there keeps its bytes (the free-list allocator).
    pub bytes_quarantined: u64,
    /// Whether the free structures and the accounting were rebuilt from the
    /// blocks' own records.
    pub rebuilt: bool,
    /// Blocks handed to threads that died before their next allocation
    /// (the hand-off log): the application may not have stored them before
    /// the death, which only it can tell. Take their offsets with
    /// [`ShmAllocator::take_dead_handoffs`](super::ShmAllocator::take_dead_handoffs)
    /// and free those nothing of the application names.
    pub handed_to_dead: u64,
    /// The accounting before the pass.
    pub before: AllocStats,
    /// The accounting after the pass, recounted from the blocks.
    pub after: AllocStats,
}

impl RecoveryReport {
    /// A report of a pass that rebuilt the free structures and the
    /// accounting; the caller adds what it found.
    pub(crate) fn rebuilt(before: AllocStats, after: AllocStats) -> RecoveryReport {
        RecoveryReport {
            rebuilt: true,
            before,
            after,
            ..RecoveryReport::default()
        }
    }

    /// The report with the hand-off records of dead threads counted (after
    /// the pass freed the blocks they never got).
    pub(crate) fn with_handoffs(self, segment: &crate::segment::Segment) -> RecoveryReport {
        RecoveryReport {
            handed_to_dead: super::handoff::dead_records(segment).len() as u64,
            ..self
        }
    }

    /// A report for an allocator with nothing to mend.
    pub(crate) fn unchanged(stats: AllocStats) -> RecoveryReport {
        RecoveryReport {
            before: stats,
            after: stats,
            ..RecoveryReport::default()
        }
    }
}

impl std::fmt::Display for RecoveryReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} locks taken over, {} caches and {} blocks reclaimed{}{}; in use: {} blocks / {} \
             bytes before, {} / {} after{}",
            self.locks_taken_over,
            self.caches_reclaimed,
            self.blocks_reclaimed,
            if self.bytes_quarantined > 0 {
                format!(
                    ", {} bytes of destroyed headers quarantined",
                    self.bytes_quarantined
                )
            } else {
                String::new()
            },
            if self.rebuilt { ", rebuilt" } else { "" },
            self.before.live_allocations,
            self.before.allocated_bytes,
            self.after.live_allocations,
            self.after.allocated_bytes,
            if self.handed_to_dead > 0 {
                format!(
                    "; {} blocks handed to dead threads, for the application to settle",
                    self.handed_to_dead
                )
            } else {
                String::new()
            },
        )
    }
}

/// The traces of operations cut short that a check found.
#[derive(Debug, Default)]
pub(crate) struct Traces {
    /// Blocks (or pages) they concern.
    pub(crate) blocks: u64,
    /// Caches and locks they concern.
    pub(crate) caches: u64,
    found: Vec<String>,
}

impl Traces {
    /// Notes a trace concerning `blocks` blocks.
    pub(crate) fn add(&mut self, blocks: u64, what: String) {
        self.blocks += blocks;
        self.found.push(what);
    }

    /// Notes a trace concerning a cache or a lock.
    pub(crate) fn add_cache(&mut self, what: String) {
        self.caches += 1;
        self.found.push(what);
    }

    /// `Ok` without traces, else [`Error::NeedsRecovery`].
    pub(crate) fn into_result(self) -> crate::error::Result<()> {
        if self.found.is_empty() {
            Ok(())
        } else {
            Err(crate::error::Error::needs_recovery(
                self.blocks,
                self.caches,
                self.found.join("; "),
            ))
        }
    }
}
