//! Small blocks in their pages: claiming a bit, listing and unlisting
//! pages, releasing blocks, the thread caches' access, and looking an
//! offset up.

use super::*;

impl SizeClassAllocator {
    // ------------------------------------------------------------ small blocks

    pub(super) fn block_offset(&self, page: u32, info: &ClassInfo, index: u64) -> u64 {
        self.page_offset(page) + info.first + index * info.size
    }

    /// Claims a clear bit in a page where a block is reserved.
    pub(super) fn claim_bit(&self, page: u32, info: &ClassInfo, hint: u64) -> Result<u64> {
        let base = self.page_ptr(page)?;
        let start = (hint / 64).min(info.words - 1);
        for _ in 0..1024 {
            for step in 0..info.words {
                let word = (start + step) % info.words;
                let valid = valid_bits(info, word);
                // SAFETY: `word < info.words`, inside the page header.
                let cell = unsafe { Self::bitmap(base, word) };
                let mut bits = cell.load(Ordering::Relaxed);
                while !bits & valid != 0 {
                    let bit = (!bits & valid).trailing_zeros();
                    let mask = 1u64 << bit;
                    let old = cell.fetch_or(mask, Ordering::AcqRel);
                    if old & mask == 0 {
                        return Ok(word * 64 + u64::from(bit));
                    }
                    bits = old | mask;
                }
            }
            std::hint::spin_loop();
        }
        Err(Error::corrupt(format!(
            "page {page}: a block was reserved but its bitmap is full"
        )))
    }

    /// A block of `class` for a thread of `shard`: from a page of its own
    /// shard, else a new page while the heap is roomy, else any shard's
    /// page, else a page however it comes. Once half the pages are carved,
    /// a shard borrows a neighbour's page before it opens one of its own,
    /// so a tight segment still hands out every block it holds.
    pub(super) fn alloc_small(&self, class: usize, requested: u64, mine: Mine<'_>) -> Result<u64> {
        let shard = handoff::shard_of(mine, SHARDS);
        if let Some(offset) = self.alloc_from_listed(class, requested, shard, mine)? {
            return Ok(offset);
        }
        let roomy = self.bump_now() < self.max_pages / 2;
        if roomy {
            if let Some(page) = self.take_page_at_hand()? {
                return self.alloc_from_new_page(page, class, requested, shard, mine);
            }
        }
        for other in (1..SHARDS).map(|k| (shard + k) % SHARDS) {
            if let Some(offset) = self.alloc_from_listed(class, requested, other, mine)? {
                return Ok(offset);
            }
        }
        let page = self.take_page(requested)?;
        self.alloc_from_new_page(page, class, requested, shard, mine)
    }

    /// A block from a page on the class stack of `shard`, if it has one.
    pub(super) fn alloc_from_listed(
        &self,
        class: usize,
        requested: u64,
        shard: usize,
        mine: Mine<'_>,
    ) -> Result<Option<u64>> {
        let info = &CLASSES[class];
        let head_cell = &self.state().classes[shard][class];
        loop {
            let head = head_cell.load(Ordering::Acquire);
            let Some(page) = tagged_stack::top(head) else {
                return Ok(None);
            };
            let desc = self
                .desc(page)
                .ok_or_else(|| Error::corrupt(format!("class {class} lists page {page}")))?;
            let current = desc.state.load(Ordering::Acquire);
            // A page on its class stack is SMALL, of the class and listed:
            // the flag is set before a push and cleared only by the holder
            // of a page it popped. Anything else on top was popped (and
            // maybe reused) meanwhile, which moved the head, or came through
            // a link back to a page this walk already took off the stack (a
            // cycle), which is reported instead of walked round forever.
            if phase(current) != SMALL || class_of(current) != class || current & LISTED == 0 {
                if head_cell.load(Ordering::Acquire) == head {
                    return Err(Error::corrupt(format!(
                        "class {class} lists page {page} in state {current:#x}"
                    )));
                }
                continue;
            }
            let used = live(current);
            if used < info.count {
                if desc
                    .state
                    .compare_exchange_weak(
                        current,
                        current + LIVE_ONE,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok()
                {
                    let index = self.claim_bit(page, info, used)?;
                    let base = self.page_ptr(page)?;
                    let offset = self.block_offset(page, info, index);
                    crash_point!("size_class.alloc.claimed");
                    record(mine, offset);
                    crash_point!("size_class.alloc.recorded");
                    // SAFETY: `index < info.count`, a block we just claimed.
                    unsafe { Self::set_slack(base, info, index, info.size - requested) };
                    return Ok(Some(offset));
                }
                continue;
            }
            // Full: take it off the stack (if it is still on top) and drop
            // its listed flag; the first free will list it again.
            match tagged_stack::pop_exact(head_cell, head, self.max_pages, |p| self.link_of(p)) {
                Ok(Ok(Some(_))) => self.unlist(head_cell, page, desc, info),
                Ok(_) => {}
                Err(bad) => return Err(bad_link("class page list", bad)),
            }
        }
    }

    /// Called by the holder of a page's listed token after popping it.
    pub(super) fn unlist(
        &self,
        head_cell: &AtomicU64,
        page: u32,
        desc: &PageDesc,
        info: &ClassInfo,
    ) {
        let mut current = desc.state.load(Ordering::Acquire);
        loop {
            if live(current) < info.count {
                // Frees made room meanwhile: keep it listed.
                tagged_stack::push(head_cell, page, &desc.link);
                return;
            }
            match desc.state.compare_exchange_weak(
                current,
                current & !LISTED,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    /// Makes `page` (the caller's alone) a page of `class` in `shard` and
    /// hands out its first block.
    pub(super) fn alloc_from_new_page(
        &self,
        page: u32,
        class: usize,
        requested: u64,
        shard: usize,
        mine: Mine<'_>,
    ) -> Result<u64> {
        let info = &CLASSES[class];
        let base = match self.page_ptr(page) {
            Ok(base) => base,
            Err(e) => {
                self.push_run(page, 1);
                return Err(e);
            }
        };
        for word in 0..info.words {
            // SAFETY: `word < info.words`; the page is ours alone until its
            // state is published below.
            unsafe { Self::bitmap(base, word) }.store(u64::from(word == 0), Ordering::Relaxed);
        }
        for index in 0..info.count {
            // SAFETY: `index < info.count`, the page is still ours alone.
            unsafe { Self::set_slack(base, info, index, sentinel(info)) };
        }
        let Some(desc) = self.desc(page) else {
            return Err(Error::corrupt(format!("page {page} out of range")));
        };
        desc.state
            .store(small_state(class, 1, true, shard), Ordering::Release);
        tagged_stack::push(&self.state().classes[shard][class], page, &desc.link);
        let offset = self.block_offset(page, info, 0);
        crash_point!("size_class.alloc.fresh_page");
        record(mine, offset);
        // SAFETY: block 0, ours.
        unsafe { Self::set_slack(base, info, 0, info.size - requested) };
        Ok(offset)
    }

    /// Lowers the live count of a page after one of its bits was cleared.
    pub(super) fn release_block(&self, page: u32, desc: &PageDesc, class: usize) {
        let mut current = desc.state.load(Ordering::Acquire);
        loop {
            let used = live(current);
            let listed = current & LISTED != 0;
            // Only an unlisted page is full; its first free lists it again,
            // or (a one-block page) retires it at once.
            let (new, then) = if !listed && used <= 1 {
                (FREE, AfterRelease::RetirePage)
            } else if !listed {
                (current - LIVE_ONE + LISTED, AfterRelease::ListPage)
            } else {
                (current.saturating_sub(LIVE_ONE), AfterRelease::Nothing)
            };
            match desc.state.compare_exchange_weak(
                current,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    match then {
                        AfterRelease::ListPage => tagged_stack::push(
                            &self.state().classes[shard_of(current)][class],
                            page,
                            &desc.link,
                        ),
                        AfterRelease::RetirePage => self.push_run(page, 1),
                        AfterRelease::Nothing => {}
                    }
                    return;
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Records `offset` in the calling thread's hand-off log, between the
    /// commit and the end of a block's pending state.
    #[inline]
    pub(crate) fn record_handoff(&self, offset: u64) {
        if let Some(log) = handoff::my_slot(self.segment()) {
            log.record(offset);
        }
    }

    /// Forgets the calling thread's hand-off record of `offset`, a block it
    /// is about to free.
    #[inline]
    pub(crate) fn forget_handoff(&self, offset: u64) {
        handoff::forget_mine(self.segment(), offset);
    }

    /// Allocates a block without touching the counters.
    pub(crate) fn alloc_block(&self, size: usize, align: usize) -> Result<u64> {
        self.alloc_block_for(size, align, handoff::my_indexed_slot(self.segment()))
    }

    /// [`alloc_block`](Self::alloc_block) for a thread whose hand-off slot
    /// the caller looked up (its shard and its record).
    pub(super) fn alloc_block_for(&self, size: usize, align: usize, mine: Mine<'_>) -> Result<u64> {
        let align = power_of_two_align(align, self.segment().max_align())? as u64;
        if align > PAGE_SIZE {
            return Err(Error::InvalidAlignment {
                align: align as usize,
                max: PAGE_SIZE as usize,
            });
        }
        let requested = size as u64;
        let offset = match class_for(requested.max(1), align) {
            Some(class) => self.alloc_small(class, requested, mine)?,
            None => {
                let pages = requested.max(1).div_ceil(PAGE_SIZE);
                if pages > u64::from(self.max_pages) {
                    return Err(self.out_of_memory(requested));
                }
                let head = self.take_run(pages as u32, requested)?;
                let Some(desc) = self.desc(head) else {
                    return Err(Error::corrupt(format!("page {head} out of range")));
                };
                for tail in head + 1..head + pages as u32 {
                    if let Some(d) = self.desc(tail) {
                        d.state.store(TAIL, Ordering::Relaxed);
                    }
                }
                crash_point!("size_class.alloc.large_tails");
                desc.run.store(pages, Ordering::Relaxed);
                desc.requested.store(requested, Ordering::Relaxed);
                desc.state.store(PENDING_LARGE, Ordering::Release);
                let offset = self.page_offset(head);
                crash_point!("size_class.alloc.large_pending");
                record(mine, offset);
                desc.state.store(LARGE, Ordering::Release);
                offset
            }
        };
        Ok(offset)
    }

    /// Takes a block away from its user: a small block is marked (its slack
    /// set to the sentinel, so a racing second free fails) but still holds
    /// its bit; a large block is freed outright. Refuses anything that is not
    /// a live block with `InvalidFree`, changing nothing.
    pub(crate) fn take_for_free(&self, offset: u64) -> Result<Freed> {
        let invalid = || Error::InvalidFree { offset };
        let (page, within, desc) = self.locate(offset).ok_or_else(invalid)?;
        let state = desc.state.load(Ordering::Acquire);
        match phase(state) {
            SMALL => {
                let (class, index, base) =
                    self.small_block(page, within, state).ok_or_else(invalid)?;
                let info = &CLASSES[class];
                // SAFETY: `index < count` (checked by `small_block`).
                let slack = unsafe { Self::slack(base, info, index) };
                if slack > info.size
                    // SAFETY: as above.
                    || !unsafe { Self::cas_slack(base, info, index, slack, sentinel(info)) }
                {
                    return Err(invalid()); // a racing double free won
                }
                // The mark makes the block ours alone until its bit clears.
                self.segment().scrub(offset, info.size);
                Ok(Freed::Small {
                    page,
                    class,
                    index,
                    requested: info.size - slack,
                })
            }
            LARGE if within == 0 => {
                let requested = desc.requested.load(Ordering::Relaxed);
                let len = desc.run.load(Ordering::Relaxed);
                if len == 0 || u64::from(page) + len > u64::from(self.max_pages) {
                    return Err(Error::corrupt(format!(
                        "large block at page {page}: {len} pages"
                    )));
                }
                if desc
                    .state
                    .compare_exchange(state, FREE, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    return Err(invalid());
                }
                // FREE but on no stack yet: nobody else can take these pages.
                crash_point!("size_class.free.large_head_freed");
                self.segment().scrub(offset, len * PAGE_SIZE);
                for tail in page + 1..page + len as u32 {
                    if let Some(d) = self.desc(tail) {
                        d.state.store(FREE, Ordering::Relaxed);
                    }
                }
                self.push_run(page, len as u32);
                Ok(Freed::Large { requested })
            }
            _ => Err(invalid()),
        }
    }

    /// Gives a small block taken by [`take_for_free`](Self::take_for_free)
    /// (or held in a cache) back to its page.
    pub(crate) fn release_small(&self, page: u32, class: usize, index: u64) -> Result<()> {
        let desc = self
            .desc(page)
            .ok_or_else(|| Error::corrupt(format!("page {page} out of range")))?;
        let base = self.page_ptr(page)?;
        if CLASSES.get(class).is_none_or(|info| index >= info.count) {
            return Err(Error::corrupt(format!("class {class} block {index}")));
        }
        let mask = 1u64 << (index % 64);
        // SAFETY: `index < count`, inside the page header.
        let old = unsafe { Self::bitmap(base, index / 64) }.fetch_and(!mask, Ordering::AcqRel);
        if old & mask == 0 {
            return Err(Error::corrupt(format!(
                "page {page} block {index} was released twice"
            )));
        }
        self.release_block(page, desc, class);
        Ok(())
    }

    // ------------------------------------------------------------ thread caches

    /// The small block that starts at `offset` and holds its allocation bit
    /// (a user's block, or one a thread cache keeps), or `None`.
    #[inline(always)]
    pub(crate) fn small_block_at(&self, offset: u64) -> Option<SmallBlock> {
        let (page, within, desc) = self.locate(offset)?;
        let state = desc.state.load(Ordering::Acquire);
        if phase(state) != SMALL {
            return None;
        }
        let class = class_of(state);
        let (index, base, _) = self.allocated_block(page, within, class)?;
        Some(SmallBlock {
            page,
            class,
            index,
            base,
            // SAFETY: `allocated_block` found a block starting `within`
            // bytes into the page.
            at: unsafe { base.add(within as usize) },
        })
    }

    /// The bytes requested for a block, or `None` while a free has marked
    /// it (its slack is the sentinel).
    #[inline(always)]
    pub(crate) fn requested_of(&self, block: &SmallBlock) -> Option<u64> {
        let info = &CLASSES[block.class];
        // SAFETY: `small_block_at` checked `index < count` and the page.
        let slack = unsafe { Self::slack(block.base, info, block.index) };
        (slack <= info.size).then(|| info.size - slack)
    }

    /// Records a new requested size for a block the caller holds alone.
    /// Writes only when it changes: the slack array is shared by the
    /// page's blocks, and an unneeded store would bounce its cache line
    /// between threads that use neighbouring blocks.
    #[inline(always)]
    pub(crate) fn set_requested(&self, block: &SmallBlock, requested: u64) {
        let info = &CLASSES[block.class];
        let slack = info.size - requested.min(info.size);
        // SAFETY: as in `requested_of`.
        unsafe {
            if Self::slack(block.base, info, block.index) != slack {
                Self::set_slack(block.base, info, block.index, slack);
            }
        }
    }

    /// Marks a block the caller holds as held by no user (the sentinel
    /// slack), before it goes back to its page: see "Handing a block out".
    #[inline]
    pub(crate) fn mark_unheld(&self, block: &SmallBlock) {
        let info = &CLASSES[block.class];
        // SAFETY: as in `requested_of`.
        unsafe { Self::set_slack(block.base, info, block.index, sentinel(info)) };
    }

    /// The first word of a block's own bytes.
    #[inline(always)]
    pub(crate) fn first_word(&self, block: &SmallBlock) -> &AtomicU64 {
        // SAFETY: `small_block_at` found the block inside a page that lies
        // inside the mapping; blocks are at least 16 bytes and 16-aligned;
        // any bytes are a valid AtomicU64. The reference lives no longer
        // than `self`, which keeps the mapping.
        unsafe { &*(block.at as *const AtomicU64) }
    }

    // ------------------------------------------------------------ lookup

    /// The page of an offset and the position in it.
    #[inline(always)]
    pub(super) fn locate(&self, offset: u64) -> Option<(u32, u64, &PageDesc)> {
        let relative = offset.checked_sub(self.heap_base)?;
        let page = u32::try_from(relative / PAGE_SIZE).ok()?;
        let desc = self.desc(page)?;
        Some((page, relative % PAGE_SIZE, desc))
    }

    /// A live small block: (class, index, page address).
    pub(super) fn small_block(
        &self,
        page: u32,
        within: u64,
        state: u64,
    ) -> Option<(usize, u64, *mut u8)> {
        let class = class_of(state);
        let (index, base, cached) = self.allocated_block(page, within, class)?;
        (!cached).then_some((class, index, base))
    }

    /// The block of `class` starting `within` bytes into `page`, if one
    /// starts there and its allocation bit is set: (index, page address,
    /// whether a free has marked it, i.e. its slack is the sentinel).
    #[inline(always)]
    pub(super) fn allocated_block(
        &self,
        page: u32,
        within: u64,
        class: usize,
    ) -> Option<(u64, *mut u8, bool)> {
        let info = CLASSES.get(class)?;
        let from_first = within.checked_sub(info.first)?;
        if from_first >= PAGE_SIZE {
            return None;
        }
        let index = (from_first * info.recip) >> 32;
        debug_assert_eq!(index, from_first / info.size);
        if index * info.size != from_first || index >= info.count {
            return None;
        }
        let base = self.page_ptr(page).ok()?;
        // SAFETY: `index < count`.
        let word = unsafe { Self::bitmap(base, index / 64) }.load(Ordering::Acquire);
        if word & (1 << (index % 64)) == 0 {
            return None;
        }
        // SAFETY: as above.
        let slack = unsafe { Self::slack(base, info, index) };
        Some((index, base, slack == sentinel(info)))
    }
}

/// What freeing a block leaves to do once the page's state word changed.
enum AfterRelease {
    /// The page still has blocks in use, and is listed already.
    Nothing,
    /// The page was full (so unlisted): list it for its class again.
    ListPage,
    /// The page's only block went: the page goes back to the page heap.
    RetirePage,
}
