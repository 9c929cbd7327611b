//! Growth: backing the state tables as the heap reaches new units, and
//! absorbing the segment's new end into the free lists.

use super::*;

impl Heap<'_> {
    /// Adds the space the segment has gained since the last call as free
    /// blocks of the largest orders that fit; returns the heap's units.
    /// Unless `retry`, growth whose tables could not be backed at this very
    /// size is not tried again (each try costs system calls under the lock).
    pub(super) fn absorb(&self, retry: bool) -> Result<usize> {
        let geo = self.geo;
        let end = self.heap_end()?;
        let absorbable = self.absorbable_end();
        let mut limit_rel = absorbable - geo.heap_start;
        let mut rel = end - geo.heap_start;
        if rel < limit_rel {
            if !retry && self.absorb_stalled.load(Ordering::Relaxed) == absorbable {
                return Err(Error::NoSpace {
                    name: self.segment.name(),
                    requested: absorbable,
                });
            }
            // Back the table entries of the new units before touching them;
            // on a full file system, take in as much as can be described.
            let min = 1u64 << geo.min_order;
            let mut limit = absorbable;
            let mut stalled = false;
            while let Err(error) = self.back_tables(end, limit) {
                stalled = true;
                self.absorb_stalled.store(absorbable, Ordering::Relaxed);
                let half = end + (((limit - end) / 2) & !(min - 1));
                if half <= end || limit - end <= page_size() {
                    return Err(error);
                }
                limit = half;
            }
            if !stalled {
                self.absorb_stalled.store(0, Ordering::Relaxed);
            }
            self.tables_backed.fetch_max(limit, Ordering::AcqRel);
            limit_rel = limit - geo.heap_start;
        }
        while rel < limit_rel {
            let fits = 63 - (limit_rel - rel).leading_zeros();
            let order = if rel == 0 {
                fits
            } else {
                fits.min(rel.trailing_zeros())
            }
            .min(MAX_ORDER);
            let unit = (rel >> geo.min_order) as usize;
            let span = self.span(order);
            if let Some(inside) = self.table.get(unit + 1..unit + span) {
                for entry in inside {
                    entry.store(0, Ordering::Relaxed);
                }
            }
            self.set(unit, HEAD | order as u8);
            rel += 1u64 << order;
            self.state
                .heap_end
                .store(geo.heap_start + rel, Ordering::Release);
            self.coalesce_and_push(unit, order, unit + span)?;
        }
        Ok((rel >> geo.min_order) as usize)
    }

    /// Backs the table pages that describe the heap bytes `[from, to)`.
    pub(super) fn back_tables(&self, from: u64, to: u64) -> Result<()> {
        let geo = &self.geo;
        let first = (from - geo.heap_start) >> geo.min_order;
        let last = (to.min(geo.heap_limit) - geo.heap_start) >> geo.min_order;
        if first >= last {
            return Ok(());
        }
        self.segment
            .back_range(geo.table_offset + first, geo.table_offset + last)?;
        self.segment
            .back_range(geo.sizes_offset + 4 * first, geo.sizes_offset + 4 * last)
    }

    /// Where the heap ends once [`absorb`](Self::absorb) has taken in all
    /// the segment holds now: its size, cut to the heap limit and the unit
    /// grid.
    pub(super) fn absorbable_end(&self) -> u64 {
        let geo = &self.geo;
        let min = 1u64 << geo.min_order;
        let limit = self.segment.size().min(geo.heap_limit);
        geo.heap_start + (limit.saturating_sub(geo.heap_start) & !(min - 1))
    }

    /// After a failed search: grows the segment so that a block of `order`
    /// can exist. Returns false when it may not grow that far.
    pub(super) fn grow_for(&self, order: u32) -> Result<bool> {
        let size = self.segment.size();
        let max = self.segment.max_size();
        if size >= max {
            return Ok(false);
        }
        let end = self.heap_end()?;
        let end_rel = end - self.geo.heap_start;
        let block = 1u64 << order;
        let aligned = align_up(end_rel, block);
        let needed_rel = if aligned > end_rel {
            aligned
        } else {
            end_rel + block
        };
        let needed = self.geo.heap_start + needed_rel;
        if needed > self.geo.heap_limit {
            return Ok(false);
        }
        // The table pages first, for all the growth will bring (or, on a
        // nearly full file system, for what this request needs): the last
        // free space goes to them rather than to heap pages the tables
        // could then not describe.
        let target = self.segment.growth_target(needed);
        if self.back_tables(end, target).is_err() {
            self.back_tables(end, needed)?;
        }
        Ok(self.segment.grow_to_fit(needed)? && self.segment.size() > end)
    }

    /// The largest free block now (the highest non-empty order).
    pub(super) fn largest_free(&self) -> u64 {
        (self.geo.min_order..=MAX_ORDER)
            .rev()
            .find(|&k| self.state.heads[k as usize].load(Ordering::Acquire) != 0)
            .map_or(0, |k| 1u64 << k)
    }
}
