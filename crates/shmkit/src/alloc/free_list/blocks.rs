//! Block headers under the lock: finding and validating them, writing and
//! sealing them, committing a block live.

use super::*;

impl<'a> Heap<'a> {
    /// Checks the heap end recorded in the state against this mapping.
    pub(super) fn check_end(&self) -> Result<()> {
        let end = self.end;
        if end % GRANULE != 0
            || end < self.start
            || end - self.start < MIN_BLOCK
            || end > self.segment.size()
        {
            return Err(Error::corrupt(format!(
                "free-list heap end {end} is impossible (heap start {}, segment size {})",
                self.start,
                self.segment.size()
            )));
        }
        Ok(())
    }

    /// The header at `block`, which must leave room for a minimal block
    /// before `limit`.
    pub(super) fn header_before(&self, block: u64, limit: u64) -> Result<&'a BlockHeader> {
        if block < self.start
            || block % GRANULE != 0
            || block.checked_add(MIN_BLOCK).is_none_or(|end| end > limit)
        {
            return Err(Error::corrupt(format!(
                "block offset {block} is outside the heap {}..{limit}",
                self.start
            )));
        }
        let ptr = self
            .segment
            .resolve(Offset::<BlockHeader>::from_raw(block))?;
        // SAFETY: `resolve` checked bounds and alignment; the header is made
        // of atomics, valid for any bytes, and lives as long as the segment.
        Ok(unsafe { ptr.as_ref() })
    }

    pub(super) fn header(&self, block: u64) -> Result<&'a BlockHeader> {
        self.header_before(block, self.end)
    }

    /// The free-list links of the block at `block`.
    pub(super) fn links(&self, block: u64) -> Result<&'a FreeLinks> {
        self.header(block)?;
        let ptr = self
            .segment
            .resolve(Offset::<FreeLinks>::from_raw(block + HEADER))?;
        // SAFETY: as in `header_before`; the links lie inside the block
        // (`MIN_BLOCK` leaves room for them).
        Ok(unsafe { ptr.as_ref() })
    }

    /// The block at `block`: header, size and flags, checked to lie in the
    /// heap.
    pub(super) fn block(&self, block: u64) -> Result<(&'a BlockHeader, u64, u64)> {
        let header = self.header(block)?;
        let word = header.size_flags.load(Ordering::Acquire);
        let (size, flags) = (word & !FLAGS, word & FLAGS);
        if flags & !(FREE | PREV_FREE | QUARANTINED | CACHED) != 0
            || (flags & (FREE | QUARANTINED | CACHED)).count_ones() > 1
            || size < MIN_BLOCK
            || block.checked_add(size).is_none_or(|end| end > self.end)
        {
            return Err(Error::corrupt(format!(
                "block at {block} has an impossible size word {word:#x} (heap end {})",
                self.end
            )));
        }
        Ok((header, size, flags))
    }

    /// Writes a complete header at `block` (a place no walk reaches yet).
    pub(super) fn write_header(
        &self,
        block: u64,
        size: u64,
        flags: u64,
        prev: u64,
        requested: u64,
    ) -> Result<()> {
        let header = self.header_before(block, block.saturating_add(size))?;
        header.prev_phys.store(prev, Ordering::Relaxed);
        header.requested.store(requested, Ordering::Relaxed);
        header.size_flags.store(size | flags, Ordering::Release);
        header.seal.store(
            seal(block, size | (flags & FREE), requested),
            Ordering::Release,
        );
        Ok(())
    }

    /// Commits a new size and flags for an existing block (one store), then
    /// reseals it.
    pub(super) fn commit(
        &self,
        header: &BlockHeader,
        block: u64,
        size: u64,
        flags: u64,
        requested: u64,
    ) {
        header.requested.store(requested, Ordering::Relaxed);
        header.size_flags.store(size | flags, Ordering::Release);
        header.seal.store(
            seal(block, size | (flags & FREE), requested),
            Ordering::Release,
        );
    }

    /// Commits a new size, flags and length for the validated block `used`
    /// by compare-and-swap from the word it was validated with (a cached
    /// free may set `CACHED` on a live block without the lock: then the
    /// block is no longer the caller's, [`Error::InvalidFree`]), then
    /// reseals it.
    pub(super) fn commit_live(
        &self,
        used: &UsedBlock<'_>,
        size: u64,
        flags: u64,
        requested: u64,
    ) -> Result<()> {
        let header = used.header;
        header
            .size_flags
            .compare_exchange(
                used.size | used.flags,
                size | flags,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map_err(|_| Error::InvalidFree {
                offset: used.block + HEADER,
            })?;
        header.requested.store(requested, Ordering::Relaxed);
        header.seal.store(
            seal(used.block, size | (flags & FREE), requested),
            Ordering::Release,
        );
        Ok(())
    }

    /// [`commit_live`](Self::commit_live) after other changes: if it fails,
    /// the next locker rebuilds what those changes began.
    pub(super) fn commit_live_or_repair(
        &self,
        used: &UsedBlock<'_>,
        size: u64,
        flags: u64,
        requested: u64,
    ) -> Result<()> {
        self.commit_live(used, size, flags, requested)
            .inspect_err(|_| self.state.needs_repair.store(1, Ordering::Release))
    }

    /// Points the block at `next` (if inside the heap) back at `prev`.
    pub(super) fn link_next(&self, next: u64, prev: u64, prev_free: bool) -> Result<()> {
        if next >= self.end {
            return Ok(());
        }
        let header = self.header(next)?;
        header.prev_phys.store(prev, Ordering::Release);
        // Atomic: a cached free may set `CACHED` on a live `next` meanwhile.
        if prev_free {
            header.size_flags.fetch_or(PREV_FREE, Ordering::AcqRel);
        } else {
            header.size_flags.fetch_and(!PREV_FREE, Ordering::AcqRel);
        }
        Ok(())
    }
}
