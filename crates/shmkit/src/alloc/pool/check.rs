//! The integrity walk (`check`) and the recovery pass over the slabs.

use super::*;

impl PoolAllocator {
    /// The recovery pass (see [`ShmAllocator::recover`]): the slot markers
    /// are the record of which slots are live, so every slab's free stack is
    /// rebuilt from them, a page whose claimer died before setting it up is
    /// set up, and the counters are recounted.
    pub(super) fn recover_slabs(&self) -> Result<RecoveryReport> {
        let before = self.stats();
        let geometry = &self.geometry;
        let pages = self.pages();
        if pages > geometry.max_pages || geometry.page_offset(pages) > self.segment().size() {
            return Err(Error::corrupt(format!(
                "pool: {pages} pages do not fit the segment"
            )));
        }
        // Validate everything before changing anything.
        let mut page_owners = Vec::with_capacity(pages as usize);
        for page in 0..pages as u32 {
            let owner = self.walked_page_owner(page)?;
            if let Some((slab, _)) = owner {
                let shape = geometry.slabs[slab];
                for slot in 0..shape.per_page {
                    let value = self.walked_marker(SlotRef { slab, page, slot })?;
                    if let Some(bytes) = marked_size(value).filter(|&bytes| bytes > shape.slot) {
                        return Err(Error::corrupt(format!(
                            "pool: page {page} slot {slot} records {bytes} bytes"
                        )));
                    }
                }
            }
            page_owners.push(owner);
        }
        // Each slab's carving pages, and where each stops: slots from there
        // on were never carved.
        let mut carving: HashMap<u32, u32> = HashMap::new();
        for slab in 0..geometry.count {
            carving.extend(self.carving_pages(slab)?);
        }
        let mut on_stacks = 0;
        for (slab, shape) in geometry.slabs().iter().enumerate() {
            for shard in 0..POOL_SHARDS {
                on_stacks += self.stack_len(slab, shard, pages * u64::from(shape.per_page));
                let hot = &self.state().slabs[slab][shard].hot;
                hot.head.store(slot_stack::EMPTY_HEAD, Ordering::Release);
                hot.free_slots.store(0, Ordering::Release);
            }
        }
        let (mut live, mut live_bytes, mut free) = (0u64, 0u64, 0u64);
        let mut never_handed_out = HashSet::new();
        // Pushed from the last page down, so the lowest slots come off first.
        for page in (0..pages as u32).rev() {
            let (slab, shard) = match page_owners[page as usize] {
                Some(owner) => owner,
                None => {
                    // Its claimer died before setting it up: give it to the
                    // first slab, at home in a shard chosen by its number.
                    let shard = page as usize % POOL_SHARDS;
                    self.set_up_page(page, 0, shard)?;
                    (0, shard)
                }
            };
            let shape = geometry.slabs[slab];
            let uncarved_from = carving.get(&page).copied().unwrap_or(shape.per_page);
            for slot in (0..shape.per_page).rev() {
                let at = SlotRef { slab, page, slot };
                if slot >= uncarved_from {
                    continue; // not carved yet
                }
                let value = self.walked_marker(at)?;
                if value & PENDING != 0 {
                    // Never handed out: its allocator died after marking it.
                    if let Some(marker) = self.marker(at) {
                        marker.store(0, Ordering::Release);
                    }
                    never_handed_out.insert(self.slot_offset(at));
                    self.give_slot(at, shard);
                    free += 1;
                } else if let Some(bytes) = marked_size(value) {
                    live += 1;
                    live_bytes += bytes;
                } else {
                    self.give_slot(at, shard);
                    free += 1;
                }
            }
        }
        self.state()
            .counters
            .reset_to(self.segment(), live_bytes, live);
        handoff::forget_dead_records(self.segment(), |block| never_handed_out.contains(&block));
        Ok(RecoveryReport {
            blocks_reclaimed: free.saturating_sub(on_stacks),
            ..RecoveryReport::rebuilt(before, self.stats())
        }
        .with_handoffs(self.segment()))
    }

    /// The walk behind [`ShmAllocator::check`] (see there).
    pub(super) fn check_walk(&self) -> Result<()> {
        let geometry = &self.geometry;
        let pages = self.pages();
        if pages > geometry.max_pages || geometry.page_offset(pages) > self.segment().size() {
            return Err(Error::corrupt(format!(
                "pool: {pages} pages do not fit the segment"
            )));
        }
        let mut slab_pages = [0u64; POOL_MAX_SLABS];
        let mut live = [0u64; POOL_MAX_SLABS];
        let mut live_bytes = 0u64;
        // Crash traces, reported once everything else holds.
        let mut traces = Traces::default();
        for page in 0..pages as u32 {
            let Some(slab) = self.walked_page_slab(page)? else {
                traces.add(1, format!("page {page} was claimed but never set up"));
                continue;
            };
            slab_pages[slab] += 1;
            let shape = geometry.slabs[slab];
            for slot in 0..shape.per_page {
                let at = SlotRef { slab, page, slot };
                let value = self.walked_marker(at)?;
                let Some(bytes) = marked_size(value) else {
                    continue;
                };
                if bytes > shape.slot {
                    return Err(Error::corrupt(format!(
                        "pool: slot {at} records {bytes} bytes, more than its {}",
                        shape.slot
                    )));
                }
                if value & PENDING != 0 {
                    traces.add(1, format!("slot {at} was never handed out"));
                }
                live[slab] += 1;
                live_bytes += bytes;
            }
        }
        for (slab, shape) in geometry.slabs().iter().enumerate() {
            let carving: HashMap<u32, u32> = self.carving_pages(slab)?.into_iter().collect();
            let mut uncarved = 0;
            for (&page, &used) in &carving {
                for slot in used..shape.per_page {
                    let at = SlotRef { slab, page, slot };
                    if self
                        .marker(at)
                        .is_some_and(|m| m.load(Ordering::Acquire) != 0)
                    {
                        return Err(Error::corrupt(format!("pool: uncarved slot {at} is live")));
                    }
                }
                uncarved += u64::from(shape.per_page - used);
            }
            let total = slab_pages[slab] * u64::from(shape.per_page);
            // One set across the shards: a slot on two stacks is caught.
            let mut seen = HashSet::new();
            let mut counted = 0;
            for (shard, state) in self.state().slabs[slab].iter().enumerate() {
                counted += state.hot.free_slots.load(Ordering::Acquire);
                let (_, mut index) = slot_stack::unpack(state.hot.head.load(Ordering::Acquire));
                while index != EMPTY {
                    if seen.len() as u64 >= total {
                        return Err(Error::corrupt(format!(
                            "pool: slab {slab}'s free stacks are longer than its {total} slots \
                             (a cycle)"
                        )));
                    }
                    let at = self.decode_index(slab, index).ok_or_else(|| {
                        Error::corrupt(format!(
                            "pool: slab {slab}'s free stack {shard} names bad slot {index}"
                        ))
                    })?;
                    if !seen.insert(index) {
                        return Err(Error::corrupt(format!(
                            "pool: slot {at} is on slab {slab}'s free stacks twice"
                        )));
                    }
                    if self
                        .marker(at)
                        .is_some_and(|m| m.load(Ordering::Acquire) != 0)
                    {
                        return Err(Error::corrupt(format!(
                            "pool: live slot {at} is on the free stack"
                        )));
                    }
                    if carving.get(&at.page).is_some_and(|&used| at.slot >= used) {
                        return Err(Error::corrupt(format!(
                            "pool: uncarved slot {at} is on the free stack"
                        )));
                    }
                    let home = self.page_owner(at.page).map(|(_, home)| home);
                    if home != Some(shard) {
                        return Err(Error::corrupt(format!(
                            "pool: slot {at} is on free stack {shard}, its page's home is {home:?}"
                        )));
                    }
                    index = self
                        .link(slab, index)
                        .map(|link| link.load(Ordering::Acquire))
                        .ok_or_else(|| {
                            Error::corrupt(format!("pool: link of {at} out of bounds"))
                        })?;
                }
            }
            let free = seen.len() as u64;
            let accounted = live[slab] + free + uncarved;
            if accounted > total {
                return Err(Error::corrupt(format!(
                    "pool: slab {slab} has {total} slots: {} live, {free} free, {uncarved} uncarved",
                    live[slab]
                )));
            }
            if accounted < total {
                // Taken off a stack (or carved) by a process that died
                // before marking it, or freed by one that died before
                // pushing it.
                traces.add(
                    total - accounted,
                    format!("slab {slab}: {} slots on no stack", total - accounted),
                );
            }
            if counted != free {
                traces.add(
                    0,
                    format!("slab {slab} counts {counted} free slots, its stacks hold {free}"),
                );
            }
        }
        let live_total: u64 = live.iter().sum();
        if let Some(what) =
            self.state()
                .counters
                .disagreement(self.segment(), live_total, live_bytes, "slots say")
        {
            traces.add(0, what);
        }
        traces.into_result()
    }
}
