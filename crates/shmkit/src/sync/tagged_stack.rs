//! An intrusive, index-based Treiber stack with an ABA tag, for nodes that
//! live in shared memory (page descriptors, say).
//!
//! The head word holds `index + 1` in its low 32 bits (0: empty) and a tag in
//! its high 32 bits that every successful update increments, so a pop that
//! read `head = A, next = B` cannot succeed after `A` was popped, reused and
//! pushed again (the tag differs). Each node has a link word holding the
//! `index + 1` of the node below it.
//!
//! Reading a link of a node that another thread popped meanwhile is harmless:
//! the links are atomics in memory that stays mapped, and the value read is
//! thrown away when the tagged compare-and-swap fails. A link that decodes to
//! an index out of range, or that names its own node, is reported as
//! corruption, never followed: no push makes a node its own successor (a
//! node is pushed only while it is on no stack), so a self-link can only be
//! a stray write, and following it would hand the node out again and again.

use super::atomic_word::AtomicWord;

/// The head word of an empty stack.
pub(crate) const EMPTY: u64 = 0;

/// A link or head that does not decode to a node index below the bound, or
/// a link that names the node it is stored in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BadLink(pub u64);

/// The node on top of a head word, if any.
#[inline]
pub(crate) fn top(head: u64) -> Option<u32> {
    match head as u32 {
        0 => None,
        plus_one => Some(plus_one - 1),
    }
}

#[inline]
fn with_tag(head: u64, next_plus_one: u64) -> u64 {
    (((head >> 32).wrapping_add(1)) << 32) | (next_plus_one & 0xffff_ffff)
}

/// Decodes a link word (`index + 1`, 0 for none) against `bound`.
#[inline]
pub(crate) fn decode_link(link: u64, bound: u32) -> Result<Option<u32>, BadLink> {
    if link == 0 {
        Ok(None)
    } else if link <= u64::from(bound) {
        Ok(Some((link - 1) as u32))
    } else {
        Err(BadLink(link))
    }
}

/// Pushes node `index`, whose link word is `link`.
#[inline]
pub(crate) fn push<C: AtomicWord>(head: &C, index: u32, link: &C) {
    let mut current = head.load_acquire();
    loop {
        link.store_release(current & 0xffff_ffff);
        match head.compare_exchange_weak(current, with_tag(current, u64::from(index) + 1)) {
            Ok(_) => return,
            Err(actual) => current = actual,
        }
    }
}

/// Pops the top node, if any. `link_of` returns the link word of a node, or
/// `None` for an index out of range (reported as `BadLink`).
#[inline]
pub(crate) fn pop<'a, C: AtomicWord + 'a>(
    head: &C,
    bound: u32,
    link_of: impl Fn(u32) -> Option<&'a C>,
) -> Result<Option<u32>, BadLink> {
    let mut current = head.load_acquire();
    loop {
        match pop_exact(head, current, bound, &link_of)? {
            Ok(node) => return Ok(node),
            Err(actual) => current = actual,
        }
    }
}

/// One attempt to pop, only if the head is still `expected` (tag
/// included). `Ok(Err(actual))` when it moved.
#[inline]
pub(crate) fn pop_exact<'a, C: AtomicWord + 'a>(
    head: &C,
    expected: u64,
    bound: u32,
    link_of: impl Fn(u32) -> Option<&'a C>,
) -> Result<Result<Option<u32>, u64>, BadLink> {
    let Some(index) = top(expected) else {
        return Ok(Ok(None));
    };
    if index >= bound {
        return Err(BadLink(expected & 0xffff_ffff));
    }
    let link = link_of(index).ok_or(BadLink(u64::from(index) + 1))?;
    let next = link.load_acquire();
    // A stale `next` (the node was popped meanwhile) is only a problem if
    // the CAS succeeds, which the tag prevents. Validate before using it:
    // out of range, or a node linking to itself (a cycle of one).
    if next > u64::from(bound) || next == u64::from(index) + 1 {
        // Either corruption or a racing reuse; the CAS decides which.
        return match head.compare_exchange_weak(expected, expected) {
            Ok(_) => Err(BadLink(next)),
            Err(actual) => Ok(Err(actual)),
        };
    }
    match head.compare_exchange_weak(expected, with_tag(expected, next)) {
        Ok(_) => Ok(Ok(Some(index))),
        Err(actual) => Ok(Err(actual)),
    }
}

/// Empties the stack and returns the old top: the caller now owns the whole
/// chain (follow the links with [`decode_link`]).
#[inline]
pub(crate) fn take_all<C: AtomicWord>(head: &C) -> Option<u32> {
    let mut current = head.load_acquire();
    loop {
        let old_top = top(current)?;
        match head.compare_exchange_weak(current, with_tag(current, 0)) {
            Ok(_) => return Some(old_top),
            Err(actual) => current = actual,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn push_pop_take_all() {
        let head = AtomicU64::new(EMPTY);
        let links: Vec<AtomicU64> = (0..4).map(|_| AtomicU64::new(0)).collect();
        let link_of = |i: u32| links.get(i as usize);
        for i in 0..3 {
            push(&head, i, &links[i as usize]);
        }
        assert_eq!(pop(&head, 4, link_of), Ok(Some(2)));
        assert_eq!(take_all(&head), Some(1));
        assert_eq!(
            decode_link(links[1].load(Ordering::Relaxed), 4),
            Ok(Some(0))
        );
        assert_eq!(decode_link(links[0].load(Ordering::Relaxed), 4), Ok(None));
        assert_eq!(pop(&head, 4, link_of), Ok(None));
        // A corrupt link is reported, not followed.
        push(&head, 3, &links[3]);
        links[3].store(99, Ordering::Relaxed);
        assert_eq!(pop(&head, 4, link_of), Err(BadLink(99)));
    }

    #[test]
    fn a_node_linking_to_itself_is_refused_not_popped_forever() {
        let head = AtomicU64::new(EMPTY);
        let links: Vec<AtomicU64> = (0..2).map(|_| AtomicU64::new(0)).collect();
        let link_of = |i: u32| links.get(i as usize);
        push(&head, 0, &links[0]);
        push(&head, 1, &links[1]);
        links[1].store(2, Ordering::Relaxed); // node 1 -> node 1
        assert_eq!(pop(&head, 2, link_of), Err(BadLink(2)));
        // Nothing was popped: the head still names node 1.
        assert_eq!(top(head.load(Ordering::Relaxed)), Some(1));
    }
}

#[cfg(test)]
mod loom_models {
    //! Model checks of the stack under every interleaving `loom` explores.

    use super::*;
    use crate::sync::atomic_word::LoomWord;
    use loom::sync::Arc;

    struct Stack {
        head: LoomWord,
        links: Vec<LoomWord>,
    }

    impl Stack {
        fn new(nodes: u32) -> Stack {
            let stack = Stack {
                head: LoomWord::new(EMPTY),
                links: (0..3).map(|_| LoomWord::new(0)).collect(),
            };
            for i in 0..nodes {
                push(&stack.head, i, &stack.links[i as usize]);
            }
            stack
        }
        fn pop(&self) -> Option<u32> {
            pop(&self.head, 3, |i| self.links.get(i as usize)).expect("no corruption")
        }
        fn push(&self, i: u32) {
            push(&self.head, i, &self.links[i as usize]);
        }
        fn drain(&self) -> Vec<u32> {
            std::iter::from_fn(|| self.pop()).collect()
        }
    }

    /// The ABA pattern: one thread pops while another pops two nodes and
    /// pushes the first back. No node is ever held by two threads, and
    /// every node ends up either held or on the stack exactly once.
    #[test]
    fn aba_never_hands_out_a_node_twice() {
        loom::model(|| {
            let stack = Arc::new(Stack::new(3)); // top: 2, 1, 0
            let other = {
                let stack = stack.clone();
                loom::thread::spawn(move || {
                    let a = stack.pop();
                    let b = stack.pop();
                    if let Some(a) = a {
                        stack.push(a);
                    }
                    b
                })
            };
            let mine = stack.pop();
            let theirs = other.join().unwrap();
            let mut all: Vec<u32> = stack.drain();
            all.extend(mine);
            all.extend(theirs);
            all.sort_unstable();
            assert_eq!(all, vec![0, 1, 2]);
        });
    }

    /// `take_all` racing a push and a pop: every node is accounted for once.
    #[test]
    fn take_all_races_push_and_pop() {
        loom::model(|| {
            let stack = Arc::new(Stack::new(2)); // top: 1, 0
            let pusher = {
                let stack = stack.clone();
                loom::thread::spawn(move || stack.push(2))
            };
            let popper = {
                let stack = stack.clone();
                loom::thread::spawn(move || stack.pop())
            };
            let mut taken = Vec::new();
            let mut next = take_all(&stack.head);
            while let Some(i) = next {
                taken.push(i);
                next = decode_link(stack.links[i as usize].load_acquire(), 3).unwrap();
            }
            pusher.join().unwrap();
            taken.extend(popper.join().unwrap());
            taken.extend(stack.drain());
            taken.sort_unstable();
            assert_eq!(taken, vec![0, 1, 2]);
        });
    }
}
