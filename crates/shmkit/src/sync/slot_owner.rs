//! Who may use a per-thread slot in shared memory: the owner word.
//!
//! A slot (for example a thread cache of the thread-local allocator) is
//! written with plain stores by one thread only, so the word that says which
//! thread that is carries the whole protocol:
//!
//! * `0`: free. A thread claims it by compare-and-swap to its owner value
//!   `pid << 32 | token` (token non-zero).
//! * `pid << 32 | token`: owned. Nobody but the owner touches the slot's
//!   contents while that process lives.
//! * `pid << 32` (token 0): being released by process `pid`. The releaser
//!   moved the word here by compare-and-swap from the value it expected, so
//!   two releasers never empty one slot at once; it empties the slot and
//!   stores `0` (release ordering, so the next claimer sees the emptied
//!   contents).
//!
//! A slot whose word names a dead process (owner or releaser) may be taken
//! over by compare-and-swap from exactly that value: the winner, alone,
//! empties what the dead process left. Liveness is decided by the caller's
//! `is_dead`, so the protocol runs the same on `loom`'s model threads.

use super::atomic_word::AtomicWord;

/// The word of a free slot.
pub(crate) const FREE: u64 = 0;

/// The owner value of thread `token` (non-zero) of process `pid`.
#[inline]
pub(crate) fn owner_value(pid: u32, token: u32) -> u64 {
    debug_assert!(token != 0, "token 0 marks a releaser");
    (u64::from(pid) << 32) | u64::from(token)
}

/// The word of a slot process `pid` is releasing.
#[inline]
pub(crate) fn releasing_value(pid: u32) -> u64 {
    u64::from(pid) << 32
}

/// The process an owner or releasing word names.
#[inline]
pub(crate) fn pid_of(word: u64) -> u32 {
    (word >> 32) as u32
}

/// How a slot was claimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Claimed {
    /// It was free (and empty).
    Fresh,
    /// It was taken over from a dead process: the caller must empty it.
    FromDead,
}

/// One attempt to claim `cell` for `owner`: succeeds on a free slot, or on
/// one whose word names a dead process other than the claimer's.
pub(crate) fn try_claim<C: AtomicWord>(
    cell: &C,
    owner: u64,
    is_dead: impl Fn(u32) -> bool,
) -> Option<Claimed> {
    try_claim_judged(cell, owner, |holder| {
        pid_of(holder) != pid_of(owner) && is_dead(pid_of(holder))
    })
}

/// [`try_claim`], with the caller judging the holder's whole word (for a
/// caller that can also tell an earlier image of its own process, one that
/// `exec`ed, from itself).
pub(crate) fn try_claim_judged<C: AtomicWord>(
    cell: &C,
    owner: u64,
    holder_is_dead: impl Fn(u64) -> bool,
) -> Option<Claimed> {
    let current = cell.load_acquire();
    let claimed = if current == FREE {
        Claimed::Fresh
    } else if holder_is_dead(current) {
        Claimed::FromDead
    } else {
        return None;
    };
    cell.compare_exchange(current, owner).ok().map(|_| claimed)
}

/// Starts releasing a slot whose word is `expected` (our own owner value,
/// or a dead process's word): true if the caller, as `releaser`, now alone
/// empties the slot and then calls [`finish_release`].
#[inline]
pub(crate) fn begin_release<C: AtomicWord>(cell: &C, expected: u64, releaser: u32) -> bool {
    cell.compare_exchange(expected, releasing_value(releaser))
        .is_ok()
}

/// Frees the slot once its contents were emptied.
#[inline]
pub(crate) fn finish_release<C: AtomicWord>(cell: &C) {
    cell.store_release(FREE);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn claim_release_and_take_over() {
        let cell = AtomicU64::new(FREE);
        let alive = |_| false;
        let dead = |_| true;
        let mine = owner_value(7, 1);
        assert_eq!(try_claim(&cell, mine, alive), Some(Claimed::Fresh));
        // Taken by a live process: nobody else gets it.
        assert_eq!(try_claim(&cell, owner_value(8, 1), alive), None);
        // A process never takes over its own slots, even if told it died.
        assert_eq!(try_claim(&cell, owner_value(7, 2), dead), None);
        // Another process may once the owner is dead.
        let theirs = owner_value(8, 1);
        assert_eq!(try_claim(&cell, theirs, dead), Some(Claimed::FromDead));
        // Releasing needs the exact word.
        assert!(!begin_release(&cell, mine, 7));
        assert!(begin_release(&cell, theirs, 8));
        assert_eq!(cell.load(Ordering::Relaxed), releasing_value(8));
        // A releaser that dies leaves a slot the next claimer takes over.
        assert_eq!(
            try_claim(&cell, owner_value(9, 1), dead),
            Some(Claimed::FromDead)
        );
        assert!(begin_release(&cell, owner_value(9, 1), 9));
        finish_release(&cell);
        assert_eq!(cell.load(Ordering::Relaxed), FREE);
    }
}

#[cfg(test)]
mod loom_models {
    //! The thread-cache hand-back under every interleaving `loom` explores:
    //! a slot with a small magazine of block ids, emptied into a "page"
    //! bitmask that detects a block given back twice. The magazine is
    //! written with relaxed stores, as the real caches are; the owner word's
    //! orderings alone must make the hand-back exact.

    use super::*;
    use crate::sync::atomic_word::LoomWord;
    use loom::sync::atomic::{AtomicBool, AtomicU64 as LoomU64, Ordering as O};
    use loom::sync::Arc;

    const CAPACITY: usize = 2;

    struct Shared {
        owner: LoomWord,
        count: LoomU64,
        items: [LoomU64; CAPACITY],
        /// Bit `b` set: block `b` was given back to the page.
        page: LoomU64,
        /// Process 1 (the first owner) has died.
        dead: AtomicBool,
    }

    impl Shared {
        fn new() -> Arc<Shared> {
            Arc::new(Shared {
                owner: LoomWord::new(FREE),
                count: LoomU64::new(0),
                items: [LoomU64::new(0), LoomU64::new(0)],
                page: LoomU64::new(0),
                dead: AtomicBool::new(false),
            })
        }

        /// The owner caches a block: plain (relaxed) stores, as in the
        /// allocator's fast path.
        fn push(&self, block: u64) {
            let count = self.count.load(O::Relaxed) as usize;
            self.items[count].store(block, O::Relaxed);
            self.count.store(count as u64 + 1, O::Relaxed);
        }

        /// Empties the magazine into the page; a block given back twice
        /// fails the model.
        fn flush(&self) {
            let count = self.count.load(O::Relaxed) as usize;
            for item in &self.items[..count.min(CAPACITY)] {
                let bit = 1 << item.load(O::Relaxed);
                let before = self.page.fetch_or(bit, O::Relaxed);
                assert_eq!(before & bit, 0, "a block was given back twice");
            }
            self.count.store(0, O::Relaxed);
        }

        fn is_dead(&self, pid: u32) -> bool {
            pid == 1 && self.dead.load(O::Acquire)
        }

        /// A claim as the allocator does it: a slot taken from the dead is
        /// emptied first. Returns whether the slot was claimed.
        fn claim_and_hand_back(&self, pid: u32) -> bool {
            let me = owner_value(pid, 1);
            match try_claim(&self.owner, me, |p| self.is_dead(p)) {
                Some(claimed) => {
                    if claimed == Claimed::FromDead {
                        self.flush();
                    }
                    // Use the slot briefly (caching a block of its own,
                    // numbered like its pid), then release it.
                    self.push(u64::from(pid));
                    assert!(begin_release(&self.owner, me, pid));
                    self.flush();
                    finish_release(&self.owner);
                    true
                }
                None => false,
            }
        }
    }

    /// A slot claimed by process 1, whose thread caches blocks 0 and 1 and
    /// then does `then` (exit, or die).
    fn first_owner_caches_two(
        then: impl FnOnce(&Shared, u64) + Send + 'static,
    ) -> (Arc<Shared>, loom::thread::JoinHandle<()>) {
        let shared = Shared::new();
        let first = owner_value(1, 1);
        assert_eq!(
            try_claim(&shared.owner, first, |_| false),
            Some(Claimed::Fresh)
        );
        let thread = {
            let shared = shared.clone();
            loom::thread::spawn(move || {
                shared.push(0);
                shared.push(1);
                then(&shared, first);
            })
        };
        (shared, thread)
    }

    #[test]
    fn a_thread_exit_and_a_claim_never_share_the_slot() {
        loom::model(|| {
            let (shared, owner) = first_owner_caches_two(|shared, first| {
                // Thread exit: hand everything back.
                assert!(begin_release(&shared.owner, first, 1));
                shared.flush();
                finish_release(&shared.owner);
            });
            let claimed = shared.claim_and_hand_back(2);
            owner.join().unwrap();
            // The exiting owner gave 0 and 1 back; a claimer that got in
            // after it also gave back its own block 2. (A claimer that saw
            // a stale count would also index past the magazine.)
            let expected = if claimed { 0b111 } else { 0b011 };
            assert_eq!(shared.page.load(O::Relaxed), expected);
            assert_eq!(shared.owner.load_acquire(), FREE);
        });
    }

    #[test]
    fn claimers_take_over_a_dying_owner_once() {
        loom::model(|| {
            // The owner is killed after caching: no release. Its death
            // becomes visible while a claimer may already be looking.
            let (shared, dying) = first_owner_caches_two(|shared, _| {
                shared.dead.store(true, O::Release);
            });
            let claimer = {
                let shared = shared.clone();
                loom::thread::spawn(move || shared.claim_and_hand_back(2))
            };
            let mut expected = 0b011;
            if claimer.join().unwrap() {
                expected |= 1 << 2;
            }
            dying.join().unwrap();
            // Whoever comes next finds the slot free (the claimer won and
            // released it) or still the dead owner's (the claimer looked
            // too early): either way it gets it, and empties it if needed.
            assert!(shared.claim_and_hand_back(3), "the slot must be claimable");
            expected |= 1 << 3;
            // The dead owner's blocks came back exactly once (`flush`
            // asserts that), and each claimer's own block too.
            assert_eq!(shared.page.load(O::Relaxed), expected);
            assert_eq!(shared.owner.load_acquire(), FREE);
        });
    }
}
