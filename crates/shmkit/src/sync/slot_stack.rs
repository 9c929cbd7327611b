//! An ABA-safe lock-free stack of slot indices (a Treiber stack).
//!
//! The head is one 64-bit word: the index of the top slot in the low 32 bits
//! ([`EMPTY`] when the stack is empty) and a tag in the high 32 bits that
//! every successful push and pop increments. The link to the next slot is
//! stored *in the free slot itself*, as an index, never an address, so the
//! stack means the same thing in every process that maps the segment.
//!
//! The tag defeats ABA: a popper that read `head = (t, A)` and `next(A) = B`
//! and was then delayed while others popped `A`, popped `B` and pushed `A`
//! back finds `head = (t + 3, A)`, so its compare-and-swap fails instead of
//! installing `B`, which another thread holds. (The tag wraps after 2^32
//! operations; a popper would have to sleep through exactly a multiple of
//! that many for ABA to return.)
//!
//! A popper reads `next(A)` from a slot that another thread may already have
//! popped and be writing to. The value read is then garbage, but the tag
//! guarantees that the compare-and-swap that would install it fails; the
//! read itself goes through an atomic of the link's width.
//!
//! A slot whose link names the slot itself is refused rather than popped:
//! no push makes a slot its own successor (a slot is pushed only while it is
//! on no stack), so a self-link seen while the head has not moved is a stray
//! write, and following it would hand that slot out at every pop.

use super::atomic_word::AtomicWord;

/// The index that means "no slot": the empty stack, the end of the links.
pub(crate) const EMPTY: u32 = u32::MAX;

/// Packs a tag and an index into a head word.
#[inline]
pub(crate) fn pack(tag: u32, index: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(index)
}

/// The (tag, index) of a head word.
#[inline]
pub(crate) fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, word as u32)
}

/// The head word of an empty stack.
pub(crate) const EMPTY_HEAD: u64 = EMPTY as u64;

/// Where the `next` links of the slots live.
pub(crate) trait Links {
    /// The link stored in slot `index`, or `None` when `index` names no slot
    /// (corrupt state: the index came from shared memory).
    fn next(&self, index: u32) -> Option<u32>;
    /// Stores `next` in slot `index`, which the caller owns and has checked.
    fn set_next(&self, index: u32, next: u32);
}

/// Pushes slot `index` (owned by the caller, already validated) on the stack.
#[inline]
pub(crate) fn push<C: AtomicWord, L: Links>(head: &C, links: &L, index: u32) {
    let mut current = head.load_acquire();
    loop {
        let (tag, top) = unpack(current);
        links.set_next(index, top);
        // Release (in AcqRel): the link and everything the pusher wrote to
        // the slot are visible to the popper that acquires this head.
        match head.compare_exchange_weak(current, pack(tag.wrapping_add(1), index)) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// Why a pop failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PopError {
    /// The head named an index that is no slot: the stack is corrupt.
    Corrupt { index: u32 },
    /// The slot on top links to itself: the stack is corrupt.
    SelfLink { index: u32 },
}

/// Pops the top slot; `Ok(None)` when the stack is empty.
#[inline]
pub(crate) fn pop<C: AtomicWord, L: Links>(head: &C, links: &L) -> Result<Option<u32>, PopError> {
    let mut current = head.load_acquire();
    loop {
        let (tag, top) = unpack(current);
        if top == EMPTY {
            return Ok(None);
        }
        let next = links.next(top).ok_or(PopError::Corrupt { index: top })?;
        if next == top {
            // Garbage from a slot popped meanwhile, or damage: the head,
            // unchanged (tag included), says which.
            match head.compare_exchange(current, current) {
                Ok(_) => return Err(PopError::SelfLink { index: top }),
                Err(actual) => {
                    current = actual;
                    continue;
                }
            }
        }
        match head.compare_exchange_weak(current, pack(tag.wrapping_add(1), next)) {
            Ok(_) => return Ok(Some(top)),
            Err(actual) => current = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Slots(Vec<AtomicU32>);

    impl Links for Slots {
        fn next(&self, index: u32) -> Option<u32> {
            self.0
                .get(index as usize)
                .map(|s| s.load(Ordering::Relaxed))
        }
        fn set_next(&self, index: u32, next: u32) {
            self.0[index as usize].store(next, Ordering::Relaxed);
        }
    }

    #[test]
    fn lifo_order_tags_and_corruption() {
        let slots = Slots((0..4).map(|_| AtomicU32::new(0)).collect());
        let head = AtomicU64::new(EMPTY_HEAD);
        assert_eq!(pop(&head, &slots), Ok(None));
        for index in 0..4 {
            push(&head, &slots, index);
        }
        assert_eq!(unpack(head.load(Ordering::Relaxed)), (4, 3));
        for expected in (0..4).rev() {
            assert_eq!(pop(&head, &slots), Ok(Some(expected)));
        }
        assert_eq!(pop(&head, &slots), Ok(None));
        assert_eq!(unpack(head.load(Ordering::Relaxed)).0, 8);
        head.store(pack(9, 77), Ordering::Relaxed);
        assert_eq!(pop(&head, &slots), Err(PopError::Corrupt { index: 77 }));
        // A slot linking to itself is refused, and stays on top.
        head.store(EMPTY_HEAD, Ordering::Relaxed);
        push(&head, &slots, 2);
        slots.0[2].store(2, Ordering::Relaxed);
        assert_eq!(pop(&head, &slots), Err(PopError::SelfLink { index: 2 }));
        assert_eq!(unpack(head.load(Ordering::Relaxed)).1, 2);
    }
}

#[cfg(test)]
mod loom_models {
    //! Model checks of push and pop under every interleaving `loom` explores,
    //! with the classic ABA schedule among them.

    use super::*;
    use crate::sync::atomic_word::LoomWord;
    use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64 as LoomU64, Ordering as O};
    use loom::sync::Arc;

    /// A head whose compare-and-swap ignores the tag: the untagged stack,
    /// to show that the model catches ABA when the tag is missing.
    struct UntaggedHead(LoomU64);

    impl AtomicWord for UntaggedHead {
        fn load_acquire(&self) -> u64 {
            self.0.load(O::Acquire)
        }
        fn store_release(&self, value: u64) {
            self.0.store(value, O::Release)
        }
        fn compare_exchange(&self, current: u64, new: u64) -> Result<u64, u64> {
            self.compare_exchange_weak(current, new)
        }
        fn compare_exchange_weak(&self, current: u64, new: u64) -> Result<u64, u64> {
            let mut seen = self.0.load(O::Acquire);
            loop {
                if unpack(seen).1 != unpack(current).1 {
                    return Err(seen);
                }
                match self
                    .0
                    .compare_exchange_weak(seen, new, O::AcqRel, O::Acquire)
                {
                    Ok(_) => return Ok(current),
                    Err(actual) => seen = actual,
                }
            }
        }
        fn fetch_add(&self, value: u64) -> u64 {
            self.0.fetch_add(value, O::AcqRel)
        }
    }

    /// Slot links, plus a "held" flag per slot to catch double pops.
    struct Slots {
        next: Vec<AtomicU32>,
        held: Vec<AtomicBool>,
    }

    impl Links for Slots {
        fn next(&self, index: u32) -> Option<u32> {
            self.next.get(index as usize).map(|s| s.load(O::Relaxed))
        }
        fn set_next(&self, index: u32, next: u32) {
            self.next[index as usize].store(next, O::Relaxed);
        }
    }

    impl Slots {
        fn new(count: u32) -> Slots {
            Slots {
                next: (0..count).map(|_| AtomicU32::new(EMPTY)).collect(),
                held: (0..count).map(|_| AtomicBool::new(false)).collect(),
            }
        }

        fn take<C: AtomicWord>(&self, head: &C) -> Option<u32> {
            let index = pop(head, self).expect("only valid indices are pushed")?;
            assert!(
                !self.held[index as usize].swap(true, O::Relaxed),
                "slot {index} popped twice while held"
            );
            Some(index)
        }

        fn give<C: AtomicWord>(&self, head: &C, index: u32) {
            assert!(self.held[index as usize].swap(false, O::Relaxed));
            push(head, self, index);
        }
    }

    /// One thread pops once and pushes back; the other runs the ABA
    /// schedule (pop A, pop B, push A). No slot is ever held twice, and
    /// afterwards the stack holds every slot exactly once.
    fn aba_race<C: AtomicWord + Send + Sync + 'static>(make: fn(u64) -> C) {
        loom::model(move || {
            let slots = Arc::new(Slots::new(3));
            // Stack: 0 (top) -> 1 -> 2.
            let head = Arc::new(make(EMPTY_HEAD));
            for index in (0..3).rev() {
                push(&*head, &*slots, index);
            }
            let victim = {
                let (slots, head) = (slots.clone(), head.clone());
                loom::thread::spawn(move || {
                    if let Some(a) = slots.take(&*head) {
                        slots.give(&*head, a);
                    }
                })
            };
            let a = slots.take(&*head);
            let b = slots.take(&*head);
            if let Some(a) = a {
                slots.give(&*head, a);
            }
            victim.join().unwrap();
            if let Some(b) = b {
                slots.give(&*head, b);
            }
            // Drain: every slot once, none lost, none twice, then empty.
            let mut seen = [false; 3];
            while let Some(index) = slots.take(&*head) {
                assert!(!seen[index as usize], "slot {index} on the stack twice");
                seen[index as usize] = true;
            }
            assert_eq!(seen, [true; 3], "a slot was lost");
        });
    }

    #[test]
    fn tagged_stack_survives_aba() {
        aba_race(LoomWord::new);
    }

    /// The same model without the tag must fail: evidence that the model
    /// reaches the ABA schedule at all.
    #[test]
    #[should_panic(expected = "popped twice while held")]
    fn untagged_stack_falls_to_aba() {
        aba_race(|word| UntaggedHead(LoomU64::new(word)));
    }

    /// Three threads (two spawned, plus the main one) each pop a slot and
    /// push it back, on a stack of two slots (so one may find it empty):
    /// pops never hand out a held slot and nothing is lost. Bounded to three
    /// preemptions to keep the run short.
    #[test]
    fn concurrent_pop_push_keeps_every_slot() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(|| {
            let slots = Arc::new(Slots::new(2));
            let head = Arc::new(LoomWord::new(EMPTY_HEAD));
            push(&*head, &*slots, 1);
            push(&*head, &*slots, 0);
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    let (slots, head) = (slots.clone(), head.clone());
                    loom::thread::spawn(move || {
                        if let Some(index) = slots.take(&*head) {
                            slots.give(&*head, index);
                        }
                    })
                })
                .collect();
            if let Some(index) = slots.take(&*head) {
                slots.give(&*head, index);
            }
            for worker in workers {
                worker.join().unwrap();
            }
            let mut count = 0;
            while slots.take(&*head).is_some() {
                count += 1;
            }
            assert_eq!(count, 2);
        });
    }
}
