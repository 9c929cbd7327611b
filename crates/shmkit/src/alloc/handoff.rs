//! The hand-off log: for each thread, the last block an allocator handed it.
//!
//! An allocation becomes the caller's in three steps: the allocator commits
//! the block with a *pending* mark (in its own per-block state), records
//! the block in the calling thread's slot here, then clears the mark and
//! returns. A process killed anywhere in between leaves one of two traces:
//!
//! - a block still marked pending: never handed out, so the recovery pass
//!   frees it;
//! - a record naming a block handed to a thread that died before its next
//!   allocation: the application may or may not have stored the offset
//!   before the death, which only it can tell, so the allocator gives the
//!   record to the application ([`ShmAllocator::take_dead_handoffs`]) rather
//!   than guess.
//!
//! A thread forgets its record when it begins to free that block itself, so
//! a record always names a block its thread still held (unless another
//! thread freed it: see `take_dead_handoffs`).
//!
//! The allocators that work under a lock (free list, buddy) need no pending
//! mark: before the commit they write the block *tentatively* (a flag bit)
//! in the slot, and the final record after it, both under the lock. The
//! locker that takes the lock over from a thread that died in between
//! settles the tentative record: it frees the block if the commit happened
//! (nobody got it), and forgets the record either way.
//!
//! The log is a table of [`SLOTS`] pairs of cache lines between the
//! segment header and the allocator state (see `segment::header::Layout`);
//! each slot also keeps its threads' share of the allocator's accounting
//! (`alloc::counters`), so no counter is shared. A thread claims
//! a slot on its first allocation in a segment (its identity in the owner
//! word) and gives it back when it exits; a slot whose owner died is taken
//! by a claimer only when no free one is left. A thread without a slot
//! (more than [`SLOTS`] threads at once) allocates unrecorded: a crash then
//! leaves at most that one block unaccounted for, as without the log.
//!
//! [`ShmAllocator::take_dead_handoffs`]: super::ShmAllocator::take_dead_handoffs

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};

use super::counters::Share;
use crate::os::thread_id;
use crate::segment::Segment;

/// Slots in a segment's log.
pub(crate) const SLOTS: usize = 64;
/// Bytes of the log in a segment.
pub(crate) const AREA_LEN: u64 = crate::segment::header::HANDOFF_AREA_LEN;
const _: () = assert!((SLOTS * std::mem::size_of::<HandoffSlot>()) as u64 == AREA_LEN);

/// One thread's slot, on lines of its own (every allocation of the thread
/// writes it; 128 bytes, as the prefetcher pulls lines in pairs).
#[repr(C, align(128))]
pub(crate) struct HandoffSlot {
    /// The owner thread's packed identity, 0 when free.
    owner: AtomicU64,
    /// The offset of the last block handed to the owner, 0 for none, with
    /// [`TENTATIVE`] while a locked allocation of it is in progress.
    block: AtomicU64,
    /// For the stack allocator's carve in progress (see [`intend_carve`]):
    /// the top word it replaces and the block's end.
    ///
    /// [`intend_carve`]: HandoffSlot::intend_carve
    carve_prev: AtomicU64,
    carve_end: AtomicU64,
    /// For an MPMC ring's claim in progress (see [`intend_claim`]): the
    /// ring's offset (0: none) and the claimed position with its side.
    ///
    /// [`intend_claim`]: HandoffSlot::intend_claim
    ring: AtomicU64,
    ring_claim: AtomicU64,
    /// The allocator's accounting done by the threads that held this slot
    /// (see `counters`): it stays with the slot from owner to owner.
    pub(crate) share: Share,
}

/// The record's flag for an allocation under a lock that has not committed
/// for sure yet (see the module docs).
const TENTATIVE: u64 = 1 << 63;

const _: () = assert!(std::mem::size_of::<HandoffSlot>() == 128);

impl HandoffSlot {
    /// Records that `offset` is being handed to the owner: one store, to a
    /// line only the owner writes.
    #[inline]
    pub(crate) fn record(&self, offset: u64) {
        self.block.store(offset, Ordering::Release);
    }

    /// Forgets the record of `offset`, a block the owner is about to free
    /// (see [`forget_mine`]).
    #[inline]
    pub(crate) fn forget(&self, offset: u64) {
        if self.block.load(Ordering::Relaxed) == offset {
            self.block.store(0, Ordering::Release);
        }
    }

    /// Records, under an allocator's lock and before its commit, that
    /// `offset` is about to be handed out; [`record`](Self::record) follows
    /// the commit.
    #[inline]
    pub(crate) fn intend(&self, offset: u64) {
        self.block.store(offset | TENTATIVE, Ordering::Release);
    }

    /// Forgets the tentative record of `offset` (the allocation did not
    /// happen).
    #[inline]
    pub(crate) fn forget_intent(&self, offset: u64) {
        if self.block.load(Ordering::Relaxed) == offset | TENTATIVE {
            self.block.store(0, Ordering::Release);
        }
    }

    /// Records, before the stack allocator's compare-and-swap of its top
    /// word from `prev_word` to a word naming this slot, the block it
    /// carves: whoever finds the top still naming this slot after the owner
    /// died rolls the carve back ([`dead_carve`]).
    #[inline]
    pub(crate) fn intend_carve(&self, prev_word: u64, block: u64, end: u64) {
        self.carve_prev.store(prev_word, Ordering::Relaxed);
        self.carve_end.store(end, Ordering::Relaxed);
        self.block.store(block | TENTATIVE, Ordering::Release);
    }

    /// Ends the carve [`intend_carve`](Self::intend_carve) began: its block
    /// header is written.
    #[inline]
    pub(crate) fn carve_done(&self) {
        self.block.store(0, Ordering::Release);
    }

    /// Records, before the compare-and-swap that would claim it, that this
    /// thread claims `claim` (a position and side, see `mpmc_ring`) of the
    /// ring at `ring`. The note proves nothing until [`claim_won`] confirms
    /// it (the compare-and-swap may fail).
    ///
    /// [`claim_won`]: HandoffSlot::claim_won
    #[inline]
    pub(crate) fn intend_claim(&self, ring: u64, claim: u64) {
        self.ring_claim.store(claim, Ordering::Relaxed);
        self.ring.store(ring, Ordering::Release);
    }

    /// The compare-and-swap won the claim noted by
    /// [`intend_claim`](Self::intend_claim): from here until
    /// [`claim_done`](Self::claim_done), the note is evidence that this
    /// thread holds the claim ([`ring_claim_died`]).
    #[inline]
    pub(crate) fn claim_won(&self, claim: u64) {
        self.ring_claim.store(claim | CLAIM_WON, Ordering::Release);
    }

    /// The claim is finished (or was never won).
    #[inline]
    pub(crate) fn claim_done(&self) {
        self.ring.store(0, Ordering::Release);
    }
}

/// The bit of a confirmed ring claim (claims keep their side in bit 63 and
/// positions below bit 62).
const CLAIM_WON: u64 = 1 << 62;

/// Whether a slot notes a ring claim, evidence a repairer may need (its
/// thread may have died holding the claim): the slot is kept for it until
/// the claim is repaired (a dead thread's note of a claim it never won
/// stays too, and keeps one slot: it died in the few instructions between
/// noting and trying).
fn holds_ring_note(slot: &HandoffSlot) -> bool {
    slot.ring.load(Ordering::Acquire) != 0
}

/// Whether `claim` of the ring at `ring` (seen unfinished, the index moved
/// past it) is held by a thread that died:
///
/// - a slot holds it confirmed: only the thread that won the
///   compare-and-swap confirms, so that thread holds it; dead or not
///   decides;
/// - otherwise the winner died between winning and confirming, or has no
///   slot: when every slot that notes the claim (unconfirmed) belongs to a
///   dead thread, and at least one does, the winner is one of them (a live
///   loser clears its note at once) unless it had no slot (more than
///   [`SLOTS`] threads at once), which is the one case judged wrongly.
///
/// Without any note it cannot tell, and says no.
pub(crate) fn ring_claim_died(segment: &Segment, ring: u64, claim: u64) -> bool {
    let mut noted_by_dead = false;
    for slot in slots(segment) {
        if slot.ring.load(Ordering::Acquire) != ring {
            continue;
        }
        let noted = slot.ring_claim.load(Ordering::Acquire);
        if noted & !CLAIM_WON != claim {
            continue;
        }
        let owner = slot.owner.load(Ordering::Acquire);
        let dead = owner != 0 && owner_is_dead(owner);
        if noted & CLAIM_WON != 0 {
            return dead;
        }
        if !dead {
            return false;
        }
        noted_by_dead = true;
    }
    noted_by_dead
}

/// Forgets every note about the ring at `ring` (it is being destroyed: a
/// ring made later at the same offset must not inherit them).
pub(crate) fn forget_ring(segment: &Segment, ring: u64) {
    for slot in slots(segment) {
        let _ = slot
            .ring
            .compare_exchange(ring, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// Forgets the dead threads' notes of `claim` once the claim was finished
/// on their behalf, freeing their slots for reuse.
pub(crate) fn forget_ring_claim(segment: &Segment, ring: u64, claim: u64) {
    for slot in slots(segment) {
        if slot.ring.load(Ordering::Acquire) == ring
            && slot.ring_claim.load(Ordering::Acquire) & !CLAIM_WON == claim
        {
            let owner = slot.owner.load(Ordering::Acquire);
            if owner != 0 && owner_is_dead(owner) {
                let _ = slot
                    .ring
                    .compare_exchange(ring, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }
}

/// The carve in progress that slot `index`'s owner left when it died:
/// (the top word before it, block, end).
pub(crate) fn dead_carve(segment: &Segment, index: u32) -> Option<(u64, u64, u64)> {
    let slot = slots(segment).get(index as usize)?;
    let owner = slot.owner.load(Ordering::Acquire);
    let block = slot.block.load(Ordering::Acquire);
    if owner == 0 || block & TENTATIVE == 0 || !owner_is_dead(owner) {
        return None;
    }
    Some((
        slot.carve_prev.load(Ordering::Relaxed),
        block & !TENTATIVE,
        slot.carve_end.load(Ordering::Relaxed),
    ))
}

/// Forgets the carve [`dead_carve`] returned, once rolled back.
pub(crate) fn forget_carve(segment: &Segment, index: u32, block: u64) {
    if let Some(slot) = slots(segment).get(index as usize) {
        let _ =
            slot.block
                .compare_exchange(block | TENTATIVE, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// Settles the tentative record of the thread `dead_owner` (the packed
/// identity of a lock's dead owner), for the locker that took the lock over
/// and repaired the structure: `roll_back` gets the block, which it frees if
/// the commit happened; the record is forgotten either way.
pub(crate) fn settle_tentative(segment: &Segment, dead_owner: u64, roll_back: impl FnOnce(u64)) {
    let Some(slot) = slots(segment)
        .iter()
        .find(|slot| slot.owner.load(Ordering::Acquire) == dead_owner)
    else {
        return;
    };
    let record = slot.block.load(Ordering::Acquire);
    if record & TENTATIVE != 0 {
        roll_back(record & !TENTATIVE);
        slot.block.store(0, Ordering::Release);
    }
}

/// Settles the tentative records of every dead thread, for a recovery
/// pass that runs alone (no lock owner to wait for): `roll_back` gets each
/// block, which it frees if the allocation committed; the record is
/// forgotten either way. For allocations made without a lock.
pub(crate) fn settle_dead_tentatives(segment: &Segment, mut roll_back: impl FnMut(u64)) {
    for slot in slots(segment) {
        let owner = slot.owner.load(Ordering::Acquire);
        let record = slot.block.load(Ordering::Acquire);
        if owner != 0 && record & TENTATIVE != 0 && owner_is_dead(owner) {
            roll_back(record & !TENTATIVE);
            slot.block.store(0, Ordering::Release);
        }
    }
}

thread_local! {
    /// The slot this thread holds in the segment it used last: segment id,
    /// slot index and the identity it was claimed under (a forked child's
    /// copy names its parent and is not used).
    static LAST: Cell<(u64, u32, u64)> = const { Cell::new((0, u32::MAX, 0)) };
    /// Every slot this thread holds, given back at its exit.
    static HELD: RefCell<Held> = const { RefCell::new(Held(Vec::new())) };
}

/// The slots a thread holds: (segment id, slot index, identity).
struct Held(Vec<(u64, u32, u64)>);

impl Drop for Held {
    fn drop(&mut self) {
        // Allocations in later destructors must not write to slots given
        // back here.
        let _ = LAST.try_with(|last| last.set((0, u32::MAX, 0)));
        let me = thread_id::current_identity_word();
        for &(id, index, owner) in &self.0 {
            if owner != me {
                continue; // inherited through fork: the parent's
            }
            crate::segment::mappings::with_mapping(id, |segment_base| {
                let Some(slot) = slot_at(segment_base, index) else {
                    return;
                };
                // Delivered: the thread lived past its last allocation, and
                // finished every ring claim it made.
                slot.block.store(0, Ordering::Relaxed);
                slot.ring.store(0, Ordering::Relaxed);
                let _ = slot
                    .owner
                    .compare_exchange(owner, 0, Ordering::Release, Ordering::Relaxed);
            });
        }
    }
}

/// The slot `index` of the log of the segment mapped at `segment_base`.
fn slot_at(segment_base: usize, index: u32) -> Option<&'static HandoffSlot> {
    let index = index as usize;
    if index >= SLOTS {
        return None;
    }
    let offset = crate::segment::header::Layout::handoff_offset();
    // SAFETY: a registered mapping starts with a validated header whose
    // layout puts the log at `handoff_offset`, inside the segment; the
    // caller keeps the mapping alive while it uses the slot (the registry's
    // lock, or the `Segment` it came from).
    Some(unsafe { &*((segment_base + offset as usize) as *const HandoffSlot).add(index) })
}

/// The log of `segment`.
#[inline(always)]
fn slots(segment: &Segment) -> &[HandoffSlot] {
    let base = segment.base().as_ptr() as usize
        + crate::segment::header::Layout::handoff_offset() as usize;
    // SAFETY: every segment's layout reserves `AREA_LEN` bytes at
    // `handoff_offset`, 128-aligned, inside the bytes every process maps
    // (below the data offset, which validation checked against the size);
    // the slots are atomics, valid for any bytes; `segment` outlives the
    // borrow.
    unsafe { std::slice::from_raw_parts(base as *const HandoffSlot, SLOTS) }
}

/// The calling thread's slot in `segment`'s log, claimed on first use;
/// `None` when every slot is held by a live thread.
#[inline]
pub(crate) fn my_slot(segment: &Segment) -> Option<&HandoffSlot> {
    my_indexed_slot(segment).map(|(_, slot)| slot)
}

/// The calling thread's share of `segment`'s accounting (its slot's).
#[inline]
pub(crate) fn my_share(segment: &Segment) -> Option<&Share> {
    my_slot(segment).map(|slot| &slot.share)
}

/// Every slot's share of `segment`'s accounting.
pub(crate) fn shares(segment: &Segment) -> impl Iterator<Item = &Share> + Clone {
    slots(segment).iter().map(|slot| &slot.share)
}

/// The shard among `shards` (a power of two) of a thread that holds
/// `mine` (its slot and index, from [`my_indexed_slot`]): the slot index
/// modulo `shards`, so threads on neighbouring slots work on different
/// shards of a sharded structure. A thread without a slot uses shard 0.
#[inline]
pub(crate) fn shard_of(mine: Option<(u32, &HandoffSlot)>, shards: usize) -> usize {
    debug_assert!(shards.is_power_of_two());
    mine.map_or(0, |(index, _)| index as usize & (shards - 1))
}

/// [`my_slot`] with its index in the log.
#[inline(always)]
pub(crate) fn my_indexed_slot(segment: &Segment) -> Option<(u32, &HandoffSlot)> {
    let id = segment.id().0;
    let me = thread_id::current_identity_word();
    let (last_id, index, owner) = LAST.get();
    if last_id == id && owner == me {
        return slots(segment).get(index as usize).map(|slot| (index, slot));
    }
    claim(segment, id, me)
}

/// Forgets the calling thread's record of `offset`, which it is about to
/// free: a record names a block its thread has not begun to free, so that a
/// reaper never frees a block that may be someone else's by then. Done
/// before the free can take effect (a thread killed in between leaves its
/// block allocated and unrecorded, as one killed just before its free
/// would). Costs two thread-local reads and one load of the thread's own
/// line.
#[inline]
pub(crate) fn forget_mine(segment: &Segment, offset: u64) {
    let (last_id, index, owner) = LAST.get();
    let slot = if last_id == segment.id().0 && owner == thread_id::current_identity_word() {
        slots(segment).get(index as usize)
    } else {
        held_slot(segment)
    };
    if let Some(slot) = slot {
        slot.forget(offset);
    }
}

/// The index of the slot the calling thread holds in `segment`, without
/// claiming one.
pub(crate) fn my_held_index(segment: &Segment) -> Option<u32> {
    let (id, me) = (segment.id().0, thread_id::current_identity_word());
    let (last_id, index, owner) = LAST.get();
    if last_id == id && owner == me {
        return Some(index);
    }
    let index = held_index(id, me)??;
    slots(segment)
        .get(index as usize)
        .is_some_and(|slot| slot.owner.load(Ordering::Relaxed) == me)
        .then_some(index)
}

/// The index of the slot this thread holds in segment `id` under identity
/// `me`: `Some(None)` when it holds none, `None` when this thread's list is
/// gone (the thread is exiting and its destructors ran).
fn held_index(id: u64, me: u64) -> Option<Option<u32>> {
    HELD.try_with(|held| {
        let held = held.try_borrow().ok()?;
        Some(
            held.0
                .iter()
                .find(|&&(held_id, _, owner)| held_id == id && owner == me)
                .map(|&(_, index, _)| index),
        )
    })
    .ok()
    .flatten()
}

/// Changes this thread's list of held slots; `false` when it is gone.
fn change_held(change: impl FnOnce(&mut Vec<(u64, u32, u64)>)) -> bool {
    HELD.try_with(|held| match held.try_borrow_mut() {
        Ok(mut held) => {
            change(&mut held.0);
            true
        }
        Err(_) => false,
    })
    .unwrap_or(false)
}

/// The slot this thread holds in `segment` when it is not the one it used
/// last, without claiming one.
#[cold]
fn held_slot(segment: &Segment) -> Option<&HandoffSlot> {
    let (id, me) = (segment.id().0, thread_id::current_identity_word());
    let index = held_index(id, me)??;
    slots(segment)
        .get(index as usize)
        .filter(|slot| slot.owner.load(Ordering::Relaxed) == me)
}

/// Claims a slot for this thread (or finds the one it holds). A thread
/// whose destructors have run (it is exiting) claims none: nothing would
/// give the slot back.
#[cold]
#[inline(never)]
fn claim(segment: &Segment, id: u64, me: u64) -> Option<(u32, &HandoffSlot)> {
    let log = slots(segment);
    let index = match held_index(id, me)? {
        Some(index) => index,
        None => {
            let index = take_free(log, me).or_else(|| take_from_dead(log, me))?;
            if !change_held(|held| held.push((id, index, me))) {
                let _ = log[index as usize].owner.compare_exchange(
                    me,
                    0,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                );
                return None;
            }
            index
        }
    };
    // Held, but the slot says otherwise (a stray write, or a claimer that
    // judged this thread dead): claim anew next time.
    if log[index as usize].owner.load(Ordering::Relaxed) != me {
        change_held(|held| held.retain(|&(i, x, _)| !(i == id && x == index)));
        return None;
    }
    LAST.set((id, index, me));
    log.get(index as usize).map(|slot| (index, slot))
}

fn take_free(log: &[HandoffSlot], me: u64) -> Option<u32> {
    log.iter()
        .position(|slot| {
            slot.owner
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })
        .map(|index| {
            log[index].block.store(0, Ordering::Relaxed);
            log[index].ring.store(0, Ordering::Relaxed);
            index as u32
        })
}

/// Takes the slot of a dead thread, dropping its record (only when no slot
/// is free: the record is worth keeping for the application's reaper).
fn take_from_dead(log: &[HandoffSlot], me: u64) -> Option<u32> {
    log.iter()
        .position(|slot| {
            let owner = slot.owner.load(Ordering::Acquire);
            owner != 0
                && slot.block.load(Ordering::Acquire) & TENTATIVE == 0
                && !holds_ring_note(slot)
                && owner_is_dead(owner)
                && slot
                    .owner
                    .compare_exchange(owner, me, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
        })
        .map(|index| {
            log[index].block.store(0, Ordering::Relaxed);
            log[index].ring.store(0, Ordering::Relaxed);
            index as u32
        })
}

/// Whether the thread an owner word names has died (its id gone, a zombie,
/// or reused by a thread started at another time).
fn owner_is_dead(owner: u64) -> bool {
    crate::os::identity::thread_is_dead(owner)
}

/// Whether a live thread holds slot `index` of `segment`.
pub(crate) fn held_by_live_thread(segment: &Segment, index: usize) -> bool {
    slots(segment).get(index).is_some_and(|slot| {
        let owner = slot.owner.load(Ordering::Acquire);
        owner != 0 && !owner_is_dead(owner)
    })
}

/// Runs `visit` on the index of every slot no live thread holds (free, or
/// its owner died), holding the slot meanwhile under the calling thread's
/// identity so that no thread claims it before `visit` returns, then giving
/// it back as it was (a dead owner's records stay for the reaper): for
/// whoever empties what a slot's past owners left in structures indexed by
/// slot.
pub(crate) fn with_idle_slots(segment: &Segment, mut visit: impl FnMut(u32)) {
    let me = thread_id::current_identity_word();
    for (index, slot) in slots(segment).iter().enumerate() {
        let owner = slot.owner.load(Ordering::Acquire);
        if owner == me || (owner != 0 && !owner_is_dead(owner)) {
            continue;
        }
        if slot
            .owner
            .compare_exchange(owner, me, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            visit(index as u32);
            slot.owner.store(owner, Ordering::Release);
        }
    }
}

/// Takes the records of threads that died, freeing their slots: the blocks
/// handed to them last. A record of a block that is not `handed_out` (still
/// pending: the thread died before its allocation returned) stays, for the
/// recovery pass that frees the block. See
/// [`ShmAllocator::take_dead_handoffs`].
///
/// [`ShmAllocator::take_dead_handoffs`]: super::ShmAllocator::take_dead_handoffs
pub(crate) fn take_dead(segment: &Segment, handed_out: impl Fn(u64) -> bool) -> Vec<u64> {
    let mut blocks = Vec::new();
    for slot in slots(segment) {
        let owner = slot.owner.load(Ordering::Acquire);
        if owner == 0 || !owner_is_dead(owner) {
            continue;
        }
        let block = slot.block.load(Ordering::Acquire);
        if block & TENTATIVE != 0 {
            continue; // for the locker that takes the dead thread's lock over
        }
        if block != 0 && !handed_out(block) {
            continue; // for the recovery pass
        }
        if holds_ring_note(slot) {
            // The note of an unfinished ring claim stays (with the slot) for
            // whoever repairs that ring; the record goes.
            if block != 0
                && slot
                    .block
                    .compare_exchange(block, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
            {
                blocks.push(block);
            }
            continue;
        }
        // Whoever frees the slot owns its record; a claimer that took it
        // meanwhile cleared it.
        if slot
            .owner
            .compare_exchange(owner, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
            && block != 0
        {
            blocks.push(block);
        }
    }
    blocks
}

/// The blocks recorded by dead threads' slots, without taking them (for
/// `check` and the recovery pass).
pub(crate) fn dead_records(segment: &Segment) -> Vec<u64> {
    slots(segment)
        .iter()
        .filter_map(|slot| {
            let owner = slot.owner.load(Ordering::Acquire);
            let block = slot.block.load(Ordering::Acquire);
            (owner != 0 && block != 0 && block & TENTATIVE == 0 && owner_is_dead(owner))
                .then_some(block)
        })
        .collect()
}

/// Forgets dead threads' records of blocks the recovery pass freed because
/// they were still pending (never the application's).
pub(crate) fn forget_dead_records(segment: &Segment, freed: impl Fn(u64) -> bool) {
    for slot in slots(segment) {
        let owner = slot.owner.load(Ordering::Acquire);
        let block = slot.block.load(Ordering::Acquire);
        if owner != 0 && block != 0 && freed(block) && owner_is_dead(owner) {
            let _ = slot
                .block
                .compare_exchange(block, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}
