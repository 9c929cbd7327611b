//! The integrity walk over pages and blocks (`check`), and the rebuild a
//! recovery pass runs.

use super::*;

impl SizeClassAllocator {
    /// Compares the shared counters with what the pages hold: the message
    /// of a mismatch.
    pub(crate) fn check_counters(
        &self,
        live_total: u64,
        bytes_total: u64,
    ) -> std::result::Result<(), String> {
        match self.state().counters.disagreement(
            self.segment(),
            live_total,
            bytes_total,
            "pages hold",
        ) {
            Some(what) => Err(what),
            None => Ok(()),
        }
    }

    /// The pages handed out so far, each (or each large run) as a region:
    /// a small page is in use in proportion to its live blocks.
    pub(crate) fn page_regions(&self, visit: &mut dyn FnMut(Region)) -> Result<()> {
        let bump = self.bump_now().min(self.pages_now());
        let mut page = 0;
        while page < bump {
            let Some(desc) = self.desc(page) else { break };
            let state = desc.state.load(Ordering::Acquire);
            let mut pages = 1;
            let used = match phase(state) {
                SMALL => CLASSES
                    .get(class_of(state))
                    .map_or(0, |info| live(state).min(info.count) * info.size),
                LARGE => {
                    pages = desc
                        .run
                        .load(Ordering::Relaxed)
                        .clamp(1, u64::from(bump - page)) as u32;
                    u64::from(pages) * PAGE_SIZE
                }
                _ => 0,
            };
            visit(Region {
                offset: self.page_offset(page),
                len: u64::from(pages) * PAGE_SIZE,
                used,
            });
            page += pages;
        }
        let end = self.pages_now();
        if end > bump {
            visit(Region {
                offset: self.page_offset(bump),
                len: u64::from(end - bump) * PAGE_SIZE,
                used: 0,
            });
        }
        Ok(())
    }

    /// The shared counters.
    pub(crate) fn counters(&self) -> &AllocCounters {
        &self.state().counters
    }

    /// Walks pages, class lists and free runs: corruption is an error; what
    /// processes killed mid-operation leave is gathered as traces.
    pub(crate) fn check_parts(&self) -> Result<PagesChecked> {
        let state = self.state();
        let mut traces = Traces::default();
        let mut cached = 0u64;
        let bump = state.bump.load(Ordering::Acquire);
        if bump > u64::from(self.max_pages) {
            return Err(Error::corrupt(format!("page cursor {bump} out of range")));
        }
        let bump = bump as u32;
        let mut live_total = 0u64;
        let mut bytes_total = 0u64;
        let mut listed = [0u64; NUM_CLASSES];
        self.walk_pages(bump, |mut page, desc, current| {
            match phase(current) {
                FREE => page += 1,
                SMALL => {
                    let class = class_of(current);
                    let info = class_info(page, class)?;
                    let used = live(current);
                    if used > info.count || current >> (SHARD_SHIFT + SHARD_BITS) != 0 {
                        return Err(Error::corrupt(format!("page {page}: state {current:#x}")));
                    }
                    if current & LISTED != 0 {
                        listed[class] += 1;
                    } else if used != info.count {
                        // A free that died between its bit and its count.
                        traces.add(
                            0,
                            format!(
                                "page {page} is off its class list with {used} of {} blocks",
                                info.count
                            ),
                        );
                    }
                    let base = self.page_ptr(page)?;
                    let mut set = 0;
                    for word in 0..info.words {
                        let valid = valid_bits(info, word);
                        // SAFETY: `word < words`, inside the page header.
                        let bits = unsafe { Self::bitmap(base, word) }.load(Ordering::Acquire);
                        if bits & !valid != 0 {
                            return Err(Error::corrupt(format!(
                                "page {page}: bits set past its {} blocks",
                                info.count
                            )));
                        }
                        let mut rest = bits;
                        while rest != 0 {
                            let index = word * 64 + u64::from(rest.trailing_zeros());
                            rest &= rest - 1;
                            // SAFETY: `index < count`.
                            let slack = unsafe { Self::slack(base, info, index) };
                            if slack == sentinel(info) {
                                cached += 1;
                                set += 1;
                                continue;
                            }
                            if slack > info.size {
                                return Err(Error::corrupt(format!(
                                    "page {page} block {index}: slack {slack}"
                                )));
                            }
                            bytes_total += info.size - slack;
                            set += 1;
                        }
                    }
                    if set > used {
                        return Err(Error::corrupt(format!(
                            "page {page}: {set} blocks marked, {used} counted live"
                        )));
                    }
                    if set < used {
                        // Reserved by an allocation, or left by a free,
                        // that died between the count and the bit.
                        traces.add(
                            used - set,
                            format!(
                                "page {page} counts {} block(s) more than its bits mark",
                                used - set
                            ),
                        );
                    }
                    live_total += used;
                    page += 1;
                }
                LARGE => {
                    let len = self.large_run_len(page, desc, bump)?;
                    live_total += 1;
                    bytes_total += desc.requested.load(Ordering::Relaxed);
                    page += len;
                }
                PENDING_LARGE => {
                    let len = self.large_run_len(page, desc, bump)?;
                    traces.add(
                        1,
                        format!("the large block at page {page} was never handed out"),
                    );
                    page += len;
                }
                TAIL if current == TAIL => {
                    // Tails with no large head before them: an allocation
                    // killed after writing its tails and before its head,
                    // or a free killed after freeing its head and before
                    // its tails. A rebuild frees them.
                    let first = page;
                    while page < bump
                        && self.desc(page).map(|d| d.state.load(Ordering::Acquire)) == Some(TAIL)
                    {
                        page += 1;
                    }
                    traces.add(
                        1,
                        format!(
                            "pages {first}..{page}: the tail of a large block whose \
                             allocation or free was cut short"
                        ),
                    );
                }
                _ => {
                    return Err(Error::corrupt(format!("page {page}: state {current:#x}")));
                }
            }
            Ok(page)
        })?;
        // Class lists: each listed page exactly once, of its class, on its
        // shard's list.
        for class in 0..NUM_CLASSES {
            let mut count = 0u64;
            for (shard, heads) in state.classes.iter().enumerate() {
                let mut next = tagged_stack::top(heads[class].load(Ordering::Acquire));
                while let Some(page) = next {
                    count += 1;
                    let desc = self
                        .desc(page)
                        .filter(|_| count <= listed[class])
                        .ok_or_else(|| Error::corrupt(format!("class {class} list is too long")))?;
                    let current = desc.state.load(Ordering::Acquire);
                    if phase(current) != SMALL
                        || class_of(current) != class
                        || current & LISTED == 0
                        || shard_of(current) != shard
                    {
                        return Err(Error::corrupt(format!(
                            "class {class} shard {shard} lists page {page} in state {current:#x}"
                        )));
                    }
                    next = tagged_stack::decode_link(
                        desc.link.load(Ordering::Acquire),
                        self.max_pages,
                    )
                    .map_err(|bad| bad_link("class page list", bad))?;
                }
            }
            if count > listed[class] {
                return Err(Error::corrupt(format!(
                    "class {class}: {} pages flagged listed, {count} on the list",
                    listed[class]
                )));
            }
            if count < listed[class] {
                // Flagged by a process that died before pushing it, or
                // popped by one that died before unflagging it.
                traces.add(
                    0,
                    format!(
                        "class {class}: {} pages flagged listed, {count} on the list",
                        listed[class]
                    ),
                );
            }
        }
        // Free runs: free pages below the cursor.
        let mut next = tagged_stack::top(state.free_runs.load(Ordering::Acquire));
        let mut steps = 0u32;
        while let Some(head) = next {
            steps += 1;
            let desc = self
                .desc(head)
                .filter(|_| steps <= self.max_pages)
                .ok_or_else(|| Error::corrupt("free-run stack loops"))?;
            let len = self.run_len(head)?;
            if head + len > bump {
                return Err(Error::corrupt(format!(
                    "free run at {head} passes the cursor"
                )));
            }
            for p in head..head + len {
                if self.desc(p).map(|d| d.state.load(Ordering::Acquire)) != Some(FREE) {
                    return Err(Error::corrupt(format!(
                        "free run at {head}: page {p} in use"
                    )));
                }
            }
            next = tagged_stack::decode_link(desc.link.load(Ordering::Acquire), self.max_pages)
                .map_err(|bad| bad_link("free-run stack", bad))?;
        }
        // Blocks holding their bit with the sentinel slack: being handed
        // out or freed (by a process that died, when quiescent).
        if cached != 0 {
            traces.add(
                cached,
                format!(
                    "{cached} block(s) hold their bit but have no user (handed out or freed \
                     halfway)"
                ),
            );
        }
        Ok(PagesChecked {
            live: live_total - cached,
            bytes: bytes_total,
            traces,
        })
    }
}

/// What [`SizeClassAllocator::check_parts`] found.
#[derive(Debug, Default)]
pub(crate) struct PagesChecked {
    /// Blocks users (or thread caches) hold, and their requested bytes.
    pub(crate) live: u64,
    pub(crate) bytes: u64,
    /// A crash's traces found (blocks half handed out or half freed among
    /// them).
    pub(crate) traces: Traces,
}

/// What [`SizeClassAllocator::rebuild_from_pages`] found.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Rebuilt {
    /// Marked or orphaned blocks whose bits were cleared.
    pub(crate) blocks_released: u64,
    /// Free pages that were not on the free-run stack (a collect pass or an
    /// allocation cut short held them) and are on it again.
    pub(crate) pages_reclaimed: u64,
    /// Blocks users hold, and their requested bytes.
    pub(crate) live: u64,
    pub(crate) live_bytes: u64,
}

impl Rebuilt {
    /// Blocks and pages made allocatable again.
    pub(crate) fn reclaimed(&self) -> u64 {
        self.blocks_released + self.pages_reclaimed
    }
}

impl SizeClassAllocator {
    /// Pages on the free-run stack, walked at most `max_pages` steps.
    pub(super) fn pages_on_free_runs(&self) -> u64 {
        let mut next = tagged_stack::top(self.state().free_runs.load(Ordering::Acquire));
        let (mut pages, mut steps) = (0u64, 0u32);
        while let Some(head) = next {
            steps += 1;
            let Some(desc) = self.desc(head).filter(|_| steps <= self.max_pages) else {
                break;
            };
            pages += desc
                .run
                .load(Ordering::Relaxed)
                .min(u64::from(self.max_pages));
            next = tagged_stack::decode_link(desc.link.load(Ordering::Acquire), self.max_pages)
                .unwrap_or(None);
        }
        pages
    }

    /// The recovery pass's core: the page states, bitmaps and slacks are the
    /// record, and every class list, the free-run stack and the counters are
    /// rebuilt from them. A block marked by a free that never finished, or
    /// one `orphan` names (a thread cache's block left in no magazine), is
    /// released; a page in no structure is free again; the collect count is
    /// cleared. Everything is validated before anything changes. Needs a
    /// quiescent allocator (see [`ShmAllocator::recover`]).
    pub(crate) fn rebuild_from_pages(
        &self,
        orphan: &dyn Fn(u64, &SmallBlock) -> bool,
    ) -> Result<Rebuilt> {
        let state = self.state();
        let bump = state.bump.load(Ordering::Acquire);
        if bump > u64::from(self.max_pages)
            || self.heap_base + bump * PAGE_SIZE > self.segment().size()
        {
            return Err(Error::corrupt(format!("page cursor {bump} out of range")));
        }
        let bump = bump as u32;
        self.validate_pages(bump)?;
        let free_before = self.pages_on_free_runs();
        for head in state.classes.iter().flat_map(|shard| shard.iter()) {
            head.store(tagged_stack::EMPTY, Ordering::Release);
        }
        state
            .free_runs
            .store(tagged_stack::EMPTY, Ordering::Release);
        state.collecting.store(0, Ordering::Release);
        let mut rebuilt = Rebuilt::default();
        let mut released = std::collections::HashSet::new();
        let mut free_pages: Vec<u32> = Vec::new();
        let mut were_free = 0u64;
        let mut page = 0u32;
        while page < bump {
            let Some(desc) = self.desc(page) else { break };
            let current = desc.state.load(Ordering::Acquire);
            match phase(current) {
                SMALL => {
                    let class = class_of(current);
                    let info = &CLASSES[class];
                    let base = self.page_ptr(page)?;
                    let mut held = 0;
                    for index in 0..info.count {
                        let mask = 1u64 << (index % 64);
                        // SAFETY: `index < count`, inside the page header.
                        let word = unsafe { Self::bitmap(base, index / 64) };
                        if word.load(Ordering::Acquire) & mask == 0 {
                            // A free block has the sentinel slack (see
                            // "Handing a block out").
                            // SAFETY: as above.
                            unsafe { Self::set_slack(base, info, index, sentinel(info)) };
                            continue;
                        }
                        // SAFETY: as above.
                        let slack = unsafe { Self::slack(base, info, index) };
                        let offset = self.block_offset(page, info, index);
                        let block = SmallBlock {
                            page,
                            class,
                            index,
                            base,
                            // SAFETY: block `index` of this page.
                            at: unsafe { base.add((info.first + index * info.size) as usize) },
                        };
                        if slack == sentinel(info) || orphan(offset, &block) {
                            // SAFETY: as above.
                            unsafe { Self::set_slack(base, info, index, sentinel(info)) };
                            word.fetch_and(!mask, Ordering::AcqRel);
                            rebuilt.blocks_released += 1;
                            released.insert(offset);
                            continue;
                        }
                        held += 1;
                        rebuilt.live += 1;
                        rebuilt.live_bytes += info.size - slack;
                    }
                    // Bits past the last block are never set by this code.
                    for word in 0..info.words {
                        let valid = valid_bits(info, word);
                        // SAFETY: `word < words`, inside the page header.
                        unsafe { Self::bitmap(base, word) }.fetch_and(valid, Ordering::AcqRel);
                    }
                    if held == 0 {
                        desc.state.store(FREE, Ordering::Release);
                        free_pages.push(page);
                    } else {
                        let listed = held < info.count;
                        let shard = shard_of(current);
                        desc.state
                            .store(small_state(class, held, listed, shard), Ordering::Release);
                        if listed {
                            tagged_stack::push(&state.classes[shard][class], page, &desc.link);
                        }
                    }
                    page += 1;
                }
                LARGE => {
                    rebuilt.live += 1;
                    rebuilt.live_bytes += desc.requested.load(Ordering::Relaxed);
                    // Validated above; clamped anyway, so that a word that
                    // changed since can neither stall the walk nor skip past
                    // the cursor.
                    let run = desc.run.load(Ordering::Relaxed);
                    page += run.clamp(1, u64::from(bump - page)) as u32;
                }
                _ => {
                    // FREE, a large block never handed out, or the tail of
                    // a large block whose head never became LARGE (an
                    // allocation cut short).
                    if phase(current) == PENDING_LARGE {
                        released.insert(self.page_offset(page));
                        rebuilt.blocks_released += 1;
                    }
                    desc.state.store(FREE, Ordering::Release);
                    free_pages.push(page);
                    were_free += 1;
                    page += 1;
                }
            }
        }
        rebuilt.pages_reclaimed = were_free.saturating_sub(free_before);
        // Free pages into runs; a run that ends at the cursor goes back to it.
        let mut runs: Vec<(u32, u32)> = Vec::new();
        for page in free_pages {
            match runs.last_mut() {
                Some(last) if last.0 + last.1 == page => last.1 += 1,
                _ => runs.push((page, 1)),
            }
        }
        if let Some(&(head, len)) = runs.last() {
            if head + len == bump {
                state.bump.store(u64::from(head), Ordering::Release);
                runs.pop();
            }
        }
        for (head, len) in runs.into_iter().rev() {
            self.push_run(head, len);
        }
        state
            .counters
            .reset_to(self.segment(), rebuilt.live_bytes, rebuilt.live);
        handoff::forget_dead_records(self.segment(), |block| released.contains(&block));
        Ok(rebuilt)
    }

    /// The length of the large block at `page`, checked to lie below the
    /// cursor with every page after its head a tail.
    pub(super) fn large_run_len(&self, page: u32, desc: &PageDesc, bump: u32) -> Result<u32> {
        let len = desc.run.load(Ordering::Relaxed);
        if len == 0 || u64::from(page) + len > u64::from(bump) {
            return Err(Error::corrupt(format!(
                "large block at {page}: {len} pages"
            )));
        }
        let len = len as u32;
        for tail in page + 1..page + len {
            let tail_state = self.desc(tail).map(|d| d.state.load(Ordering::Acquire));
            if tail_state != Some(TAIL) {
                return Err(Error::corrupt(format!(
                    "page {tail} inside the large block at {page} is {tail_state:?}"
                )));
            }
        }
        Ok(len)
    }

    /// Walks the page table: `visit(page, desc, state)` sees each page
    /// below the cursor `bump` and returns the page to go on from (past a
    /// large block's run, say); every page at or past the cursor must be
    /// free.
    fn walk_pages(
        &self,
        bump: u32,
        mut visit: impl FnMut(u32, &PageDesc, u64) -> Result<u32>,
    ) -> Result<()> {
        let mut page = 0u32;
        while page < self.max_pages {
            let Some(desc) = self.desc(page) else { break };
            let current = desc.state.load(Ordering::Acquire);
            if page >= bump {
                if current != FREE {
                    return Err(Error::corrupt(format!(
                        "page {page} beyond the cursor in state {current:#x}"
                    )));
                }
                page += 1;
            } else {
                page = visit(page, desc, current)?;
            }
        }
        Ok(())
    }

    /// Checks what [`rebuild_from_pages`](Self::rebuild_from_pages) relies
    /// on, changing nothing: every page below the cursor has a known phase, a
    /// small page a valid class and bitmap, a large block a run of tails
    /// inside the cursor; every page above it is free.
    pub(super) fn validate_pages(&self, bump: u32) -> Result<()> {
        self.walk_pages(bump, |mut page, desc, current| {
            match phase(current) {
                FREE | TAIL | PENDING_LARGE => page += 1,
                SMALL => {
                    let class = class_of(current);
                    let info = class_info(page, class)?;
                    let base = self.page_ptr(page)?;
                    for index in 0..info.count {
                        // SAFETY: `index < count`, inside the page header.
                        let bits =
                            unsafe { Self::bitmap(base, index / 64) }.load(Ordering::Acquire);
                        // SAFETY: as above.
                        let slack = unsafe { Self::slack(base, info, index) };
                        if bits & (1 << (index % 64)) != 0
                            && slack > info.size
                            && slack != sentinel(info)
                        {
                            return Err(Error::corrupt(format!(
                                "page {page} block {index}: slack {slack}"
                            )));
                        }
                    }
                    page += 1;
                }
                LARGE => {
                    page += self.large_run_len(page, desc, bump)?;
                }
                _ => return Err(Error::corrupt(format!("page {page}: state {current:#x}"))),
            }
            Ok(page)
        })
    }
}
