//! The one repair policy for structures that live behind a [`RobustLock`]:
//! what the holder of the lock does when the last holder died, or when an
//! operation finds the structure inconsistent.
//!
//! The rule, for every such structure (the free-list and buddy allocators,
//! the named-object directory):
//!
//! 1. **Before an operation**, if the last holder died (the guard says
//!    [`recovered`](RobustGuard::recovered)) or a repair is still wanted (a
//!    holder died inside a repair, or an earlier repair failed), repair;
//!    then settle what a dead holder had in progress (an allocation it
//!    committed but never handed out). A failed repair is reported and
//!    stays wanted, so the next holder tries again.
//! 2. **After an operation that failed and left a repair wanted** (it met
//!    an inconsistency and said so), repair before the lock is released,
//!    so the next holder finds the structure whole. The failure is what the
//!    caller sees, unless the structure says its operations may run once
//!    more after a repair ([`Repair::RETRY_AFTER_REPAIR`]: its repair
//!    rebuilds only derived data, such as free lists from an authoritative
//!    state table, and a failed operation changed nothing); then the
//!    caller sees the second run's outcome.
//!
//! A repair marks itself wanted as it starts and clears the mark when it
//! completes, so a holder killed inside it leaves the mark for the next.

use super::robust_lock::RobustGuard;
use crate::error::Result;

/// A structure behind a robust lock, mended by the rule above.
pub(crate) trait Repair {
    /// Whether a failed operation may run once more after the repair.
    const RETRY_AFTER_REPAIR: bool;

    /// Whether a repair is wanted (a mark in the segment; none by default).
    fn repair_wanted(&self) -> bool {
        false
    }

    /// Rebuilds what is derived from the structure's authoritative data,
    /// under the lock.
    fn repair(&mut self) -> Result<()>;

    /// Undoes what the dead holder `dead` (its packed identity) had in
    /// progress. Runs after the repair.
    fn settle_dead_holder(&mut self, _dead: u64) {}
}

/// Step 1 of the rule, right after the lock is taken.
pub(crate) fn before_operation<S: Repair>(
    guard: &RobustGuard<'_>,
    structure: &mut S,
) -> Result<()> {
    if guard.recovered() || structure.repair_wanted() {
        structure.repair()?;
    }
    if let Some(dead) = guard.dead_owner() {
        structure.settle_dead_holder(dead);
    }
    Ok(())
}

/// A repair asked for outright (a recovery pass): repair whether or not
/// one is wanted, then settle what a dead holder had in progress.
pub(crate) fn repair_now<S: Repair>(guard: &RobustGuard<'_>, structure: &mut S) -> Result<()> {
    structure.repair()?;
    if let Some(dead) = guard.dead_owner() {
        structure.settle_dead_holder(dead);
    }
    Ok(())
}

/// The whole rule around `op`, for a caller that holds `guard`.
pub(crate) fn run<S: Repair, R>(
    guard: &RobustGuard<'_>,
    structure: &mut S,
    mut op: impl FnMut(&mut S) -> Result<R>,
) -> Result<R> {
    before_operation(guard, structure)?;
    let result = op(structure);
    if result.is_ok() || !structure.repair_wanted() {
        return result;
    }
    let repaired = structure.repair();
    if S::RETRY_AFTER_REPAIR && repaired.is_ok() {
        return op(structure);
    }
    result
}
