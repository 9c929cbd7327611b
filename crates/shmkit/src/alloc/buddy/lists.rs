//! The free lists, one per order, all under the lock: pushing, unlinking
//! and popping blocks, coalescing buddies and splitting blocks.

use super::*;

impl Heap<'_> {
    // ---- free lists (all under the lock) ----

    /// Reports a free-list inconsistency and asks for a rebuild.
    pub(super) fn list_corrupt(&self, reason: String) -> Error {
        self.state.repair_pending.store(1, Ordering::Release);
        Error::corrupt(reason)
    }

    pub(super) fn links(&self, offset: u64) -> Result<&FreeLinks> {
        let ptr = self
            .segment
            .resolve(Offset::<FreeLinks>::from_raw(offset))
            .map_err(|e| self.list_corrupt(format!("free block {offset}: {e}")))?;
        // SAFETY: `resolve` checked bounds and alignment; the links are
        // atomics, valid for any bytes, and live as long as the segment.
        Ok(unsafe { ptr.as_ref() })
    }

    /// Checks that a link read from shared memory is null or a free block
    /// of `order`.
    pub(super) fn check_link(
        &self,
        link: u64,
        order: u32,
        end_units: usize,
        what: &str,
    ) -> Result<()> {
        if link == 0
            || self
                .unit(link)
                .is_some_and(|u| self.is_free_head(u, order, end_units))
        {
            Ok(())
        } else {
            Err(self.list_corrupt(format!(
                "free list of order {order}: {what} link {link} is not a free block of that order"
            )))
        }
    }

    pub(super) fn push(&self, order: u32, offset: u64, end_units: usize) -> Result<()> {
        let head_cell = &self.state.heads[order as usize];
        let head = head_cell.load(Ordering::Acquire);
        self.check_link(head, order, end_units, "head")?;
        let links = self.links(offset)?;
        links.next.store(head, Ordering::Relaxed);
        links.prev.store(0, Ordering::Relaxed);
        if head != 0 {
            self.links(head)?.prev.store(offset, Ordering::Relaxed);
        }
        head_cell.store(offset, Ordering::Release);
        self.state.counts[order as usize].fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn unlink(&self, order: u32, offset: u64, end_units: usize) -> Result<()> {
        let links = self.links(offset)?;
        let next = links.next.load(Ordering::Relaxed);
        let prev = links.prev.load(Ordering::Relaxed);
        self.check_link(next, order, end_units, "next")?;
        self.check_link(prev, order, end_units, "previous")?;
        let head_cell = &self.state.heads[order as usize];
        let prev_links = if prev == 0 {
            if head_cell.load(Ordering::Acquire) != offset {
                return Err(self.list_corrupt(format!(
                    "free block {offset} of order {order} has no predecessor but is not the head"
                )));
            }
            None
        } else {
            let p = self.links(prev)?;
            if p.next.load(Ordering::Relaxed) != offset {
                return Err(self.list_corrupt(format!(
                    "free block {offset}: its predecessor {prev} does not link to it"
                )));
            }
            Some(p)
        };
        let next_links = if next == 0 {
            None
        } else {
            let n = self.links(next)?;
            if n.prev.load(Ordering::Relaxed) != offset {
                return Err(self.list_corrupt(format!(
                    "free block {offset}: its successor {next} does not link back"
                )));
            }
            Some(n)
        };
        match prev_links {
            None => head_cell.store(next, Ordering::Release),
            Some(p) => p.next.store(next, Ordering::Relaxed),
        }
        if let Some(n) = next_links {
            n.prev.store(prev, Ordering::Relaxed);
        }
        self.state.counts[order as usize].fetch_sub(1, Ordering::Relaxed);
        Ok(())
    }

    /// Takes the first free block of `order`, if any.
    pub(super) fn pop(&self, order: u32, end_units: usize) -> Result<Option<usize>> {
        let head = self.state.heads[order as usize].load(Ordering::Acquire);
        if head == 0 {
            return Ok(None);
        }
        self.check_link(head, order, end_units, "head")?;
        self.unlink(order, head, end_units)?;
        Ok(self.unit(head))
    }

    /// The block at `unit` is marked free in the table and is in no list:
    /// merge it with free buddies, then link the result.
    pub(super) fn coalesce_and_push(
        &self,
        mut unit: usize,
        mut order: u32,
        end_units: usize,
    ) -> Result<()> {
        while order < MAX_ORDER {
            let buddy = unit ^ self.span(order);
            if !self.is_free_head(buddy, order, end_units) {
                break;
            }
            self.unlink(order, self.offset(buddy), end_units)?;
            let (lower, upper) = (unit.min(buddy), unit.max(buddy));
            // The lower byte grows first, then the upper one is cleared:
            // a walk sees either two buddies or one merged block.
            self.set(lower, HEAD | (order + 1) as u8);
            self.set(upper, 0);
            unit = lower;
            order += 1;
        }
        self.push(order, self.offset(unit), end_units)
    }

    /// Splits the free, unlisted block at `unit` from `from` down to `to`,
    /// linking the upper halves.
    pub(super) fn split(&self, unit: usize, from: u32, to: u32, end_units: usize) -> Result<()> {
        let mut order = from;
        while order > to {
            order -= 1;
            let upper = unit + self.span(order);
            // The upper half's byte first, then the lower shrinks.
            self.set(upper, HEAD | order as u8);
            self.set(unit, HEAD | order as u8);
            self.push(order, self.offset(upper), end_units)?;
        }
        Ok(())
    }
}
