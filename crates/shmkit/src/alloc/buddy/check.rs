//! The integrity walk (`check`), the regions, and the rebuild of the free
//! lists and counters from the state table.

use super::*;

impl Heap<'_> {
    /// Rebuilds the free lists (and the live accounting) from the state
    /// table, after a dead lock owner or a detected list inconsistency.
    pub(super) fn rebuild(&self) -> Result<()> {
        self.state.repair_pending.store(1, Ordering::Release);
        let end = self.end_units()?;
        // 1. The walk must tile the heap; change nothing if it does not.
        let mut unit = 0;
        while unit < end {
            let (order, _) = self.walked_head(unit, end)?;
            unit += self.span(order);
        }
        // 2. Forget the lists.
        for (head, count) in self.state.heads.iter().zip(&self.state.counts) {
            head.store(0, Ordering::Relaxed);
            count.store(0, Ordering::Relaxed);
        }
        // 3. Clear stale bytes inside blocks and finish interrupted merges,
        //    left to right, so a lower buddy is final when its upper is seen.
        let mut unit = 0;
        while unit < end {
            let Some((order, allocated)) = self.head_at(unit, end) else {
                return Err(Error::corrupt(format!(
                    "buddy state table changed at {unit}"
                )));
            };
            let span = self.span(order);
            if let Some(inside) = self.table.get(unit + 1..unit + span) {
                for entry in inside {
                    entry.store(0, Ordering::Relaxed);
                }
            }
            if !allocated {
                let (mut at, mut k) = (unit, order);
                while k < MAX_ORDER {
                    let s = self.span(k);
                    if at & s == 0 || !self.is_free_head(at - s, k, end) {
                        break;
                    }
                    self.set(at - s, HEAD | (k + 1) as u8);
                    self.set(at, 0);
                    at -= s;
                    k += 1;
                }
            }
            unit += span;
        }
        // 4. Relink every free block; recount the live ones (a walk of its
        //    own: cached frees and allocations run meanwhile).
        let mut unit = 0;
        while unit < end {
            let Some((order, allocated)) = self.head_at(unit, end) else {
                return Err(Error::corrupt(format!(
                    "buddy state table changed at {unit}"
                )));
            };
            if !allocated {
                self.push(order, self.offset(unit), end)?;
            }
            unit += self.span(order);
        }
        self.recount()?;
        self.state.repair_pending.store(0, Ordering::Release);
        Ok(())
    }

    /// The data area as regions, for [`ShmAllocator::regions`]: the tables,
    /// then every block of the heap, then the space the heap has yet to take
    /// in. Reads the state table only (the authority), never a block.
    pub(super) fn regions_locked(&self) -> Result<Vec<Region>> {
        let end = self.end_units()?;
        let mut regions = Vec::new();
        let mut push = |offset: u64, len: u64, used: u64| {
            if len > 0 {
                regions.push(Region { offset, len, used });
            }
        };
        // The tables: no block's bytes.
        push(
            self.geo.table_offset,
            self.geo.heap_start - self.geo.table_offset,
            0,
        );
        let mut unit = 0;
        while unit < end {
            let (order, allocated) = self.walked_head(unit, end)?;
            let len = 1u64 << order;
            let used = allocated && !self.is_cached(unit, order);
            push(self.offset(unit), len, if used { len } else { 0 });
            unit += self.span(order);
        }
        // Growth not yet taken in: free blocks at the next allocation.
        let heap_end = self.offset(end);
        push(heap_end, self.absorbable_end() - heap_end, 0);
        Ok(regions)
    }

    /// Walks the table and the lists; with `still_caches` (no cached
    /// operation ran during the call, see `alloc::magazine`), also the cached
    /// blocks against the magazines and the accounting against the table.
    pub(super) fn check_locked(&self, still_caches: bool) -> Result<()> {
        let end = self.end_units()?;
        let mut free_per_order = [0u64; ORDERS];
        let (mut live, mut bytes) = (0u64, 0u64);
        let mut cached = std::collections::BTreeMap::new();
        let mut unit = 0;
        while unit < end {
            let (order, allocated) = self.walked_head(unit, end)?;
            let span = self.span(order);
            if let Some(stale) = (unit + 1..unit + span).find(|&u| self.byte(u) != 0) {
                return Err(Error::corrupt(format!(
                    "buddy state table: unit {stale} inside the block at {} is not clear",
                    self.offset(unit)
                )));
            }
            if allocated && self.is_cached(unit, order) {
                cached.insert(self.offset(unit), order);
            } else if allocated {
                let size = self.read_size(unit, order);
                if size > 1u64 << order {
                    return Err(Error::corrupt(format!(
                        "live block {} of {} bytes records a size of {size}",
                        self.offset(unit),
                        1u64 << order
                    )));
                }
                live += 1;
                bytes += size;
            } else {
                if order < MAX_ORDER && self.is_free_head(unit ^ span, order, end) {
                    return Err(Error::corrupt(format!(
                        "free buddies {} and {} of order {order} are not merged",
                        self.offset(unit),
                        self.offset(unit ^ span)
                    )));
                }
                free_per_order[order as usize] += 1;
            }
            unit += span;
        }
        for order in 0..ORDERS as u32 {
            let expected = free_per_order[order as usize];
            let counted = self.state.counts[order as usize].load(Ordering::Acquire);
            if counted != expected {
                return Err(Error::corrupt(format!(
                    "free list of order {order} counts {counted} blocks, the table has {expected}"
                )));
            }
            let mut seen = 0u64;
            let mut prev = 0u64;
            let mut cur = self.state.heads[order as usize].load(Ordering::Acquire);
            while cur != 0 {
                if seen == expected
                    || !self
                        .unit(cur)
                        .is_some_and(|u| self.is_free_head(u, order, end))
                {
                    return Err(Error::corrupt(format!(
                        "free list of order {order}: entry {cur} (after {seen}) is not one of \
                         the table's {expected} free blocks of that order"
                    )));
                }
                let ptr = self
                    .segment
                    .resolve(Offset::<FreeLinks>::from_raw(cur))
                    .map_err(|e| Error::corrupt(format!("free block {cur}: {e}")))?;
                // SAFETY: bounds and alignment checked; atomics only.
                let links = unsafe { ptr.as_ref() };
                if links.prev.load(Ordering::Relaxed) != prev {
                    return Err(Error::corrupt(format!(
                        "free list of order {order}: block {cur} does not link back to {prev}"
                    )));
                }
                seen += 1;
                prev = cur;
                cur = links.next.load(Ordering::Relaxed);
            }
            if seen != expected {
                return Err(Error::corrupt(format!(
                    "free list of order {order} holds {seen} blocks, the table has {expected}"
                )));
            }
        }
        if !still_caches {
            return Ok(());
        }
        self.check_cached(&mut cached)?;
        if let Some(what) =
            self.state
                .counters
                .disagreement(self.segment, live, bytes, "the tables say")
        {
            return Err(self.state.caches.accounting_error(what));
        }
        Ok(())
    }

    /// [`check_locked`](Self::check_locked) beside the caches (see
    /// `ThreadCaches::check_beside`).
    pub(super) fn check_beside_caches(&self) -> Result<()> {
        self.state.caches.check_beside(
            self.segment,
            || self.recount(),
            |still| self.check_locked(still),
        )
    }
}
