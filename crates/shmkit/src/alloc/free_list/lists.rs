//! The two-level segregated free lists: filing and unlinking free blocks,
//! and the search for a block that fits.

use super::*;

impl<'a> Heap<'a> {
    pub(super) fn head(&self, (fl, sl): (usize, usize)) -> &'a AtomicU64 {
        &self.state.heads[fl][sl]
    }

    /// The second-level bitmap of class `fl`, without bits past
    /// [`SL_COUNT`]: a corrupt word must not name a list that does not
    /// exist (`check` reports such bits).
    pub(super) fn sl_map(&self, fl: usize) -> u32 {
        self.state.sl_bitmap[fl].load(Ordering::Acquire) & SL_MASK
    }

    pub(super) fn class(&self, size: u64) -> Result<(usize, usize)> {
        class_of(size).ok_or_else(|| Error::corrupt(format!("free block size {size} has no class")))
    }

    /// Files the free block `block` of `size` bytes.
    pub(super) fn insert(&mut self, block: u64, size: u64) -> Result<()> {
        let class = self.class(size)?;
        let head = self.head(class);
        let first = head.load(Ordering::Acquire);
        let first_links = if first != 0 {
            Some(self.links(first)?)
        } else {
            None
        };
        let links = self.links(block)?;
        links.next.store(first, Ordering::Relaxed);
        links.prev.store(0, Ordering::Relaxed);
        if let Some(first_links) = first_links {
            first_links.prev.store(block, Ordering::Relaxed);
        }
        head.store(block, Ordering::Release);
        let (fl, sl) = class;
        locked_update32(&self.state.sl_bitmap[fl], |bits| bits | 1 << sl);
        locked_update(&self.state.fl_bitmap, |bits| bits | 1 << fl);
        locked_update(&self.state.free_bytes, |bytes| bytes.wrapping_add(size));
        locked_update(&self.state.free_blocks, |blocks| blocks.wrapping_add(1));
        Ok(())
    }

    /// Takes the free block `block` of `size` bytes off its list, after
    /// checking that its neighbours in the list point back at it.
    pub(super) fn unlink(&mut self, block: u64, size: u64) -> Result<()> {
        let class = self.class(size)?;
        let head = self.head(class);
        let links = self.links(block)?;
        let next = links.next.load(Ordering::Acquire);
        let prev = links.prev.load(Ordering::Acquire);
        let broken = || Error::corrupt(format!("free-list links of block {block} are broken"));
        let next_links = if next != 0 {
            let next_links = self.links(next)?;
            if next_links.prev.load(Ordering::Acquire) != block {
                return Err(broken());
            }
            Some(next_links)
        } else {
            None
        };
        let prev_links = if prev != 0 {
            let prev_links = self.links(prev)?;
            if prev_links.next.load(Ordering::Acquire) != block {
                return Err(broken());
            }
            Some(prev_links)
        } else {
            if head.load(Ordering::Acquire) != block {
                return Err(broken());
            }
            None
        };
        let free_bytes = self.state.free_bytes.load(Ordering::Acquire);
        let free_blocks = self.state.free_blocks.load(Ordering::Acquire);
        if free_bytes < size || free_blocks == 0 {
            return Err(Error::corrupt("free-list totals are below a listed block"));
        }
        if let Some(next_links) = next_links {
            next_links.prev.store(prev, Ordering::Relaxed);
        }
        match prev_links {
            Some(prev_links) => prev_links.next.store(next, Ordering::Relaxed),
            None => {
                head.store(next, Ordering::Release);
                if next == 0 {
                    let (fl, sl) = class;
                    let left = locked_update32(&self.state.sl_bitmap[fl], |bits| bits & !(1 << sl))
                        & !(1 << sl);
                    if left == 0 {
                        locked_update(&self.state.fl_bitmap, |bits| bits & !(1 << fl));
                    }
                }
            }
        }
        self.state
            .free_bytes
            .store(free_bytes - size, Ordering::Release);
        self.state
            .free_blocks
            .store(free_blocks - 1, Ordering::Release);
        Ok(())
    }

    /// The first non-empty class at or above `(fl, sl)`.
    pub(super) fn find_suitable(&self, (fl, sl): (usize, usize)) -> Option<(usize, usize)> {
        let sl_map = self.sl_map(fl) & (!0u32 << sl);
        if sl_map != 0 {
            return Some((fl, sl_map.trailing_zeros() as usize));
        }
        let fl_map =
            self.state.fl_bitmap.load(Ordering::Acquire) & (!0u64).checked_shl(fl as u32 + 1)?;
        if fl_map == 0 {
            return None;
        }
        let fl = fl_map.trailing_zeros() as usize;
        if fl >= FL_COUNT {
            return None;
        }
        let sl_map = self.sl_map(fl);
        (sl_map != 0).then(|| (fl, sl_map.trailing_zeros() as usize))
    }

    /// A bound on any list walk, so a corrupt cycle cannot spin forever.
    pub(super) fn walk_bound(&self) -> u64 {
        self.end.saturating_sub(self.start) / MIN_BLOCK + 1
    }

    /// A free block that can serve `need` bytes aligned to `align`: O(1)
    /// through the bitmaps, else a scan of the classes the rounding skipped.
    pub(super) fn find(&self, need: u64, search: u64, align: u64) -> Result<Option<(u64, u64)>> {
        if let Some(class) = search_class(search).and_then(|c| self.find_suitable(c)) {
            let block = self.head(class).load(Ordering::Acquire);
            let (_, size, flags) = self.block(block)?;
            if flags & FREE == 0 || front_gap(block, align) + need > size {
                return Err(Error::corrupt(format!(
                    "block {block} listed in class {class:?} is not free or too small"
                )));
            }
            return Ok(Some((block, size)));
        }
        // The lists between the request's own class and the rounded one.
        let Some(first) = class_of(need) else {
            return Ok(None);
        };
        let last = class_of(search).unwrap_or((FL_COUNT - 1, SL_COUNT - 1));
        let mut class = first;
        loop {
            let mut block = self.head(class).load(Ordering::Acquire);
            let mut steps = 0;
            while block != 0 {
                steps += 1;
                if steps > self.walk_bound() {
                    return Err(Error::corrupt("a free list loops"));
                }
                let (_, size, flags) = self.block(block)?;
                if flags & FREE == 0 {
                    return Err(Error::corrupt(format!("listed block {block} is not free")));
                }
                if front_gap(block, align) + need <= size {
                    return Ok(Some((block, size)));
                }
                block = self.links(block)?.next.load(Ordering::Acquire);
            }
            if class >= last {
                return Ok(None);
            }
            class = if class.1 + 1 < SL_COUNT {
                (class.0, class.1 + 1)
            } else {
                (class.0 + 1, 0)
            };
        }
    }
}
