//! Carving slots: from the page a slab is carving, from a fresh page, and
//! claiming and setting up pages.

use super::*;

impl PoolAllocator {
    /// Carves a never-used slot from the carving page of `slab` in `shard`,
    /// if it has one with room.
    pub(super) fn carve(&self, slab: usize, shard: usize) -> Result<Option<SlotRef>> {
        let per_page = self.geometry.slabs[slab].per_page;
        let fresh = &self.state().slabs[slab][shard].fresh;
        let mut current = fresh.load(Ordering::Acquire);
        loop {
            let (page, used) = unpack_fresh(current);
            if page == EMPTY || used >= per_page {
                return Ok(None);
            }
            if self.page_slab(page) != Some(slab) {
                return Err(Error::corrupt(format!(
                    "slab {slab}: fresh page {page} is not one of its pages"
                )));
            }
            match fresh.compare_exchange_weak(
                current,
                pack_fresh(page, used + 1),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Ok(Some(SlotRef {
                        slab,
                        page,
                        slot: used,
                    }))
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Claims a new page for `slab`, makes it the carving page of `shard`
    /// and hands out its first slot.
    pub(super) fn carve_new_page(&self, slab: usize, shard: usize) -> Result<SlotRef> {
        let per_page = self.geometry.slabs[slab].per_page;
        let page = self.claim_page(slab, shard)?;
        let first = SlotRef {
            slab,
            page,
            slot: 0,
        };
        let fresh = &self.state().slabs[slab][shard].fresh;
        let current = fresh.load(Ordering::Acquire);
        let (carving, used) = unpack_fresh(current);
        let installed = (carving == EMPTY || used >= per_page)
            && fresh
                .compare_exchange(
                    current,
                    pack_fresh(page, 1),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok();
        if !installed {
            // Another thread of the shard installed a page first. This one
            // is ours all the same: keep its first slot, put the others on
            // the stack (a rare race; each pushed slot serves a later
            // request in O(1)).
            for slot in (1..per_page).rev() {
                self.give_slot(SlotRef { slab, page, slot }, shard);
            }
        }
        Ok(first)
    }

    /// Claims the next page of the shared region for `slab` (growing the
    /// segment if it may) and sets up its header and markers.
    pub(super) fn claim_page(&self, slab: usize, shard: usize) -> Result<u32> {
        let pages = &self.state().pages;
        let mut claimed = pages.load(Ordering::Acquire);
        loop {
            if claimed >= self.geometry.max_pages {
                return Err(self.out_of_pages(slab));
            }
            let end = self.geometry.page_offset(claimed + 1);
            if end > self.segment().size() {
                self.grow_for(end, slab)?;
                claimed = pages.load(Ordering::Acquire);
                continue;
            }
            match pages.compare_exchange_weak(
                claimed,
                claimed + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => claimed = actual,
            }
        }
        // `claimed < max_pages <= EMPTY`.
        let page = claimed as u32;
        self.set_up_page(page, slab, shard)?;
        Ok(page)
    }

    /// Zeroes a claimed page's markers and publishes it as `slab`'s.
    pub(super) fn set_up_page(&self, page: u32, slab: usize, shard: usize) -> Result<()> {
        let start = self.geometry.page_offset(u64::from(page));
        let per_page = self.geometry.slabs[slab].per_page;
        let markers = self
            .segment()
            .resolve_array(
                Offset::<AtomicU32>::from_raw(start + PAGE_HEADER),
                u64::from(per_page),
            )
            .map_err(|_| Error::corrupt(format!("claimed page {page} is out of bounds")))?;
        // SAFETY: `resolve_array` checked bounds and alignment for
        // `per_page` atomics; the page was just claimed, so it is ours.
        let markers = unsafe { std::slice::from_raw_parts(markers.as_ptr(), per_page as usize) };
        for marker in markers {
            marker.store(0, Ordering::Relaxed);
        }
        let header = self
            .page_header(page)
            .ok_or_else(|| Error::corrupt(format!("claimed page {page} is out of bounds")))?;
        header.seal.store(page ^ PAGE_KEY, Ordering::Relaxed);
        // Release: whoever sees the slab number sees the zeroed markers.
        header
            .slab
            .store(owner_word(slab, shard), Ordering::Release);
        Ok(())
    }

    #[cold]
    pub(super) fn grow_for(&self, end: u64, slab: usize) -> Result<()> {
        if self.segment().grow_to_fit(end)? {
            Ok(())
        } else {
            Err(self.out_of_pages(slab))
        }
    }

    #[cold]
    pub(super) fn out_of_pages(&self, slab: usize) -> Error {
        Error::OutOfMemory {
            requested: self.geometry.slabs[slab].slot,
            available: self.stats().largest_free_block,
        }
    }

    /// Length of `slab`'s free stack, walked at most `bound` steps (a broken
    /// or looping stack counts what could be walked).
    pub(super) fn stack_len(&self, slab: usize, shard: usize, bound: u64) -> u64 {
        let (_, mut index) = slot_stack::unpack(
            self.state().slabs[slab][shard]
                .hot
                .head
                .load(Ordering::Acquire),
        );
        let mut len = 0;
        while index != EMPTY && len < bound {
            len += 1;
            match self.link(slab, index) {
                Some(link) if self.decode_index(slab, index).is_some() => {
                    index = link.load(Ordering::Acquire)
                }
                _ => break,
            }
        }
        len
    }

    /// The carving pages of `slab`, one per shard that has one, with the
    /// slots carved from each. A page that is not the slab's, a count past
    /// the page's end or one page carved by two shards is corruption.
    pub(super) fn carving_pages(&self, slab: usize) -> Result<Vec<(u32, u32)>> {
        let shape = self.geometry.slabs[slab];
        let mut pages: Vec<(u32, u32)> = Vec::with_capacity(POOL_SHARDS);
        for shard in 0..POOL_SHARDS {
            let word = self.state().slabs[slab][shard]
                .fresh
                .load(Ordering::Acquire);
            let (page, used) = unpack_fresh(word);
            if page == EMPTY {
                continue;
            }
            if self.page_slab(page) != Some(slab) || used > shape.per_page {
                return Err(Error::corrupt(format!(
                    "pool: slab {slab} carves from ({page}, {used}), not one of its pages"
                )));
            }
            if pages.iter().any(|&(other, _)| other == page) {
                return Err(Error::corrupt(format!(
                    "pool: slab {slab} carves page {page} in two shards"
                )));
            }
            pages.push((page, used));
        }
        Ok(pages)
    }
}
