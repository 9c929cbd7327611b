//! The integrity walk (`check`), beside the thread caches or alone, and the
//! free figures the statistics report.

use super::*;

impl<'a> Heap<'a> {
    /// (free bytes usable, largest single request that fits).
    pub(super) fn free_summary(&self) -> Result<(u64, u64)> {
        let bytes = self.state.free_bytes.load(Ordering::Acquire);
        let blocks = self.state.free_blocks.load(Ordering::Acquire);
        let usable = bytes
            .saturating_sub(blocks.saturating_mul(HEADER))
            .saturating_add(cached_bytes(&self.state.caches));
        let fl_map = self.state.fl_bitmap.load(Ordering::Acquire);
        if fl_map == 0 {
            return Ok((usable, 0));
        }
        let fl = 63 - fl_map.leading_zeros() as usize;
        if fl >= FL_COUNT {
            return Err(Error::corrupt("first-level bitmap out of range"));
        }
        let sl_map = self.sl_map(fl);
        if sl_map == 0 {
            return Err(Error::corrupt(format!(
                "first-level class {fl} is marked but empty"
            )));
        }
        let sl = 31 - sl_map.leading_zeros() as usize;
        let mut largest = 0;
        let mut block = self.head((fl, sl)).load(Ordering::Acquire);
        let mut steps = 0;
        while block != 0 {
            steps += 1;
            if steps > self.walk_bound() {
                return Err(Error::corrupt("a free list loops"));
            }
            let (_, size, _) = self.block(block)?;
            largest = largest.max(size);
            block = self.links(block)?.next.load(Ordering::Acquire);
        }
        Ok((usable, largest.saturating_sub(HEADER)))
    }

    /// Walks the chain and every list; the first inconsistency is an error.
    ///
    /// With `still_caches` (no cached operation ran during the call, see
    /// `alloc::magazine`), also the cached blocks against the magazines and
    /// the accounting against the blocks; without, a cached block's seal
    /// (a cached allocation rewrites it) is not checked either.
    pub(super) fn check(&self, still_caches: bool) -> Result<()> {
        self.check_end()?;
        let mut free_set = std::collections::HashSet::new();
        let mut cached = std::collections::HashMap::new();
        let (mut free_bytes, mut live, mut live_bytes) = (0u64, 0u64, 0u64);
        let (mut prev, mut prev_free) = (0u64, false);
        let mut block = self.start;
        while block < self.end {
            let (header, size, flags) = self.block(block)?;
            let free = flags & FREE != 0;
            let requested = header.requested.load(Ordering::Acquire);
            if header.prev_phys.load(Ordering::Acquire) != prev {
                return Err(Error::corrupt(format!(
                    "block {block} links back to {}, the previous block is {prev}",
                    header.prev_phys.load(Ordering::Acquire)
                )));
            }
            if (flags & PREV_FREE != 0) != prev_free {
                return Err(Error::corrupt(format!(
                    "block {block} has a wrong PREV_FREE bit"
                )));
            }
            if free && prev_free {
                return Err(Error::corrupt(format!(
                    "blocks {prev} and {block} are adjacent and both free"
                )));
            }
            let expected = seal(block, size | (flags & FREE), requested);
            if (still_caches || flags & CACHED == 0)
                && header.seal.load(Ordering::Acquire) != expected
            {
                return Err(Error::corrupt(format!("block {block} has a bad seal")));
            }
            if free {
                if requested != 0 {
                    return Err(Error::corrupt(format!(
                        "free block {block} records a length"
                    )));
                }
                free_set.insert(block);
                free_bytes += size;
            } else {
                if requested > size - HEADER {
                    return Err(Error::corrupt(format!(
                        "block {block} records too long a length"
                    )));
                }
                if flags & CACHED != 0 {
                    cached.insert(block + HEADER, size);
                } else if flags & QUARANTINED == 0 {
                    live += 1;
                    live_bytes += requested;
                }
            }
            prev = block;
            prev_free = free;
            block += size;
        }
        let last = self.state.last_block.load(Ordering::Acquire);
        if last != prev {
            return Err(Error::corrupt(format!(
                "last block is {prev}, the state says {last}"
            )));
        }
        // Every list: free blocks of the right class, consistent links.
        let mut listed = 0u64;
        let fl_map = self.state.fl_bitmap.load(Ordering::Acquire);
        if fl_map >> FL_COUNT != 0 {
            return Err(Error::corrupt("first-level bitmap out of range"));
        }
        for fl in 0..FL_COUNT {
            let sl_map = self.state.sl_bitmap[fl].load(Ordering::Acquire);
            if sl_map & !SL_MASK != 0 {
                return Err(Error::corrupt(format!(
                    "second-level bitmap of class {fl} out of range"
                )));
            }
            if (sl_map != 0) != (fl_map & (1 << fl) != 0) {
                return Err(Error::corrupt(format!("bitmaps disagree on class {fl}")));
            }
            for sl in 0..SL_COUNT {
                let mut block = self.head((fl, sl)).load(Ordering::Acquire);
                if (block != 0) != (sl_map & (1 << sl) != 0) {
                    return Err(Error::corrupt(format!(
                        "bitmap disagrees on list ({fl}, {sl})"
                    )));
                }
                let mut prev = 0;
                while block != 0 {
                    if !free_set.remove(&block) {
                        return Err(Error::corrupt(format!(
                            "list ({fl}, {sl}) holds {block}, which is not a free block (or is listed twice)"
                        )));
                    }
                    let (_, size, _) = self.block(block)?;
                    if class_of(size) != Some((fl, sl)) {
                        return Err(Error::corrupt(format!(
                            "block {block} of {size} bytes is filed in class ({fl}, {sl})"
                        )));
                    }
                    let links = self.links(block)?;
                    if links.prev.load(Ordering::Acquire) != prev {
                        return Err(Error::corrupt(format!(
                            "block {block} has a wrong list back link"
                        )));
                    }
                    listed += 1;
                    prev = block;
                    block = links.next.load(Ordering::Acquire);
                }
            }
        }
        if let Some(block) = free_set.iter().next() {
            return Err(Error::corrupt(format!("free block {block} is on no list")));
        }
        let state_blocks = self.state.free_blocks.load(Ordering::Acquire);
        let state_bytes = self.state.free_bytes.load(Ordering::Acquire);
        if state_blocks != listed || state_bytes != free_bytes {
            return Err(Error::corrupt(format!(
                "free totals say {state_blocks} blocks / {state_bytes} bytes, the heap has {listed} / {free_bytes}"
            )));
        }
        if !still_caches {
            return Ok(());
        }
        for (slot, offset, size) in cached_entries(&self.state.caches).map_err(Error::corrupt)? {
            if cached.remove(&offset) != Some(size) {
                return Err(Error::corrupt(format!(
                    "thread cache {slot} holds {offset} among blocks of {size} bytes: \
                     no cached block of that size (or one held twice)"
                )));
            }
        }
        if !cached.is_empty() {
            // A killed thread's block between its cache and the heap (the
            // accounting may be off by it too).
            return Err(Error::needs_recovery(
                cached.len() as u64,
                0,
                format!("blocks cached in no thread cache: {:?}", cached.keys()),
            ));
        }
        if let Some(what) =
            self.state
                .counters
                .disagreement(self.segment, live, live_bytes, "the heap has")
        {
            return Err(self.state.caches.accounting_error(what));
        }
        Ok(())
    }

    /// [`check`](Self::check) beside the caches (see
    /// `ThreadCaches::check_beside`).
    pub(super) fn check_beside_caches(&self) -> Result<()> {
        self.state
            .caches
            .check_beside(self.segment, || self.recount(), |still| self.check(still))
    }
}
