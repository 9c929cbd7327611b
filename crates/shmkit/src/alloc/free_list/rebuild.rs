//! The rebuild from the physical chain of blocks, and the quarantine of
//! what the chain cannot pass.

use super::*;

impl<'a> Heap<'a> {
    /// Rebuilds everything but the sizes from the physical chain: prev
    /// links, flags, seals, coalescing, lists, bitmaps, totals, counters.
    /// A header the chain cannot pass is quarantined (see the module
    /// documentation); returns the bytes this rebuild fenced off.
    pub(super) fn rebuild(&mut self) -> Result<u64> {
        let state = self.state;
        state.needs_repair.store(1, Ordering::Release);
        self.end = state.heap_end.load(Ordering::Acquire);
        self.check_end()?;
        state.fl_bitmap.store(0, Ordering::Relaxed);
        for fl in 0..FL_COUNT {
            state.sl_bitmap[fl].store(0, Ordering::Relaxed);
            for head in &state.heads[fl] {
                head.store(0, Ordering::Relaxed);
            }
        }
        state.free_bytes.store(0, Ordering::Relaxed);
        state.free_blocks.store(0, Ordering::Relaxed);
        let mut quarantined = 0u64;
        let mut prev = 0u64;
        // The free run being gathered: its first block and total size.
        let mut run: Option<(u64, u64)> = None;
        let mut block = self.start;
        while block < self.end {
            let (header, size, flags) = match self.block(block) {
                Ok(found) => found,
                Err(_) => {
                    // Fence the damage off; the loop then meets the
                    // quarantined block just written here.
                    quarantined += self.quarantine(block, prev)?;
                    continue;
                }
            };
            if flags & FREE != 0 {
                if let Some((first, total)) = run {
                    // Two adjacent free blocks: the first absorbs this one.
                    let (first_header, _, first_flags) = self.block(first)?;
                    self.commit(first_header, first, total + size, first_flags, 0);
                    run = Some((first, total + size));
                } else {
                    header.prev_phys.store(prev, Ordering::Relaxed);
                    self.commit(header, block, size, FREE, 0);
                    run = Some((block, size));
                    prev = block;
                }
            } else {
                let prev_free = if let Some((first, total)) = run.take() {
                    self.insert(first, total)?;
                    PREV_FREE
                } else {
                    0
                };
                header.prev_phys.store(prev, Ordering::Relaxed);
                if flags & QUARANTINED != 0 {
                    self.commit(header, block, size, prev_free | QUARANTINED, 0);
                } else {
                    reseal_live(header, block, size, prev_free);
                }
                prev = block;
            }
            block += size;
        }
        if let Some((first, total)) = run {
            self.insert(first, total)?;
        }
        state.last_block.store(prev, Ordering::Release);
        if quarantined != 0 {
            state.caches.switch_off();
        }
        // A walk of its own: cached frees and allocations run meanwhile.
        self.recount()?;
        state.repairs.fetch_add(1, Ordering::AcqRel);
        state.needs_repair.store(0, Ordering::Release);
        Ok(quarantined)
    }

    /// The chain breaks at `broken` (its size word is impossible; `prev` is
    /// the block before it): finds where the chain resumes and writes one
    /// quarantined block over the bytes in between. Returns its size.
    ///
    /// The chain resumes at the first later offset whose header is sealed
    /// and from which every block, linking back to the one before it,
    /// leads exactly to the heap end. Requiring the back links rejects a
    /// stale header left inside a block that a merge absorbed (its seal may
    /// still hold, but its successor links back to the merged block), so a
    /// live block is never mistaken for free space; when nothing later
    /// holds, the quarantine runs to the heap end.
    pub(super) fn quarantine(&mut self, broken: u64, prev: u64) -> Result<u64> {
        if self.end - broken < MIN_BLOCK {
            return Err(Error::corrupt(format!(
                "block header at {broken} is torn {} bytes before the heap end, too close to fence off",
                self.end - broken
            )));
        }
        let mut resume = broken + MIN_BLOCK;
        while resume + MIN_BLOCK <= self.end && !self.chain_holds_from(resume) {
            resume += GRANULE;
        }
        if resume + MIN_BLOCK > self.end {
            resume = self.end;
        }
        self.write_header(broken, resume - broken, QUARANTINED, prev, 0)?;
        Ok(resume - broken)
    }

    /// Whether the blocks from `first` on are sealed, each links back to
    /// the one before it, and the last ends exactly at the heap end.
    pub(super) fn chain_holds_from(&self, first: u64) -> bool {
        let mut block = first;
        let mut prev = None;
        let mut steps = 0;
        while block < self.end {
            steps += 1;
            if steps > self.walk_bound() {
                return false;
            }
            let Ok((header, size, flags)) = self.block(block) else {
                return false;
            };
            let requested = header.requested.load(Ordering::Acquire);
            if header.seal.load(Ordering::Acquire) != seal(block, size | (flags & FREE), requested)
                || prev.is_some_and(|prev| header.prev_phys.load(Ordering::Acquire) != prev)
            {
                return false;
            }
            prev = Some(block);
            block += size;
        }
        block == self.end
    }
}
