//! The page heap: pages claimed from the bump cursor, free runs on a
//! lock-free stack, and the collection of emptied pages.

use super::*;

impl SizeClassAllocator {
    // ------------------------------------------------------------ page heap

    /// Claims `n` pages from the bump cursor, growing the segment if allowed.
    pub(super) fn bump_pages(&self, n: u32, grow: bool) -> Result<Option<u32>> {
        let cursor = &self.state().bump;
        let mut current = cursor.load(Ordering::Acquire);
        loop {
            if current > u64::from(self.max_pages) {
                return Err(Error::corrupt(format!(
                    "page cursor {current} out of range"
                )));
            }
            let end = current + u64::from(n);
            if end > u64::from(self.max_pages) {
                return Ok(None);
            }
            let needed = self.heap_base + end * PAGE_SIZE;
            if needed > self.segment().size() {
                // Backing within the capacity is no growth: only past it
                // do freed pages come first. Without leave to grow, the
                // backing stops at the capacity, and a full file system
                // sends the caller on to other shards' pages and to
                // collection rather than failing the request.
                let grown = if grow {
                    self.segment().grow_to_fit(needed)?
                } else {
                    match self
                        .segment()
                        .grow_to_fit_below(needed, self.segment().capacity())
                    {
                        Ok(grown) => grown,
                        Err(Error::NoSpace { .. }) => false,
                        Err(other) => return Err(other),
                    }
                };
                if !grown {
                    return Ok(None);
                }
            }
            match cursor.compare_exchange_weak(current, end, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Ok(Some(current as u32)),
                Err(actual) => current = actual,
            }
        }
    }

    /// Pushes a run of FREE pages onto the free-run stack.
    pub(super) fn push_run(&self, head: u32, len: u32) {
        if let Some(desc) = self.desc(head) {
            desc.run.store(u64::from(len), Ordering::Relaxed);
            tagged_stack::push(&*self.state().free_runs, head, &desc.link);
        }
    }

    /// The validated length of a free run popped off the stack.
    pub(super) fn run_len(&self, head: u32) -> Result<u32> {
        let len = self.desc(head).map_or(0, |d| d.run.load(Ordering::Relaxed));
        if len == 0 || u64::from(head) + len > u64::from(self.max_pages) {
            return Err(Error::corrupt(format!(
                "free run at page {head}: length {len}"
            )));
        }
        Ok(len as u32)
    }

    /// Pops one page off the free-run stack (splitting its run).
    pub(super) fn pop_free_page(&self) -> Result<Option<u32>> {
        let popped = tagged_stack::pop(&*self.state().free_runs, self.max_pages, |p| {
            self.link_of(p)
        })
        .map_err(|bad| bad_link("free-run stack", bad))?;
        let Some(head) = popped else {
            return Ok(None);
        };
        // Pages are FREE before they are pushed, and a popped page is the
        // popper's alone: a page in use here was reached through a damaged
        // link (a cycle back to a page already handed out, say). Refused,
        // so it is not handed out twice.
        let state = self.desc(head).map(|d| d.state.load(Ordering::Acquire));
        if state != Some(FREE) {
            return Err(Error::corrupt(format!(
                "free-run stack holds page {head}, which is in use (state {state:?})"
            )));
        }
        let len = self.run_len(head)?;
        if len > 1 {
            self.push_run(head + 1, len - 1);
        }
        Ok(Some(head))
    }

    /// A free page if one is at hand: no growth, no collect pass.
    pub(super) fn take_page_at_hand(&self) -> Result<Option<u32>> {
        match self.pop_free_page()? {
            Some(page) => Ok(Some(page)),
            None => self.bump_pages(1, false),
        }
    }

    /// One page for a size class; out of memory speaks of `requested`, the
    /// caller's request, not of the page it needed.
    pub(super) fn take_page(&self, requested: u64) -> Result<u32> {
        for attempt in 0..64 {
            if let Some(page) = self.pop_free_page()? {
                return Ok(page);
            }
            if let Some(page) = self.bump_pages(1, false)? {
                return Ok(page);
            }
            if let Some(page) = self.collect(Some(1), true)? {
                return Ok(page);
            }
            if let Some(page) = self.bump_pages(1, true)? {
                return Ok(page);
            }
            if !self.wait_for_collectors(attempt) {
                break;
            }
        }
        Err(self.out_of_memory(requested))
    }

    /// A run of `n` pages for a large block.
    pub(super) fn take_run(&self, n: u32, requested: u64) -> Result<u32> {
        for attempt in 0..64 {
            let free_runs = self.state().free_runs.load(Ordering::Acquire);
            if tagged_stack::top(free_runs).is_some() {
                if let Some(head) = self.collect(Some(n), false)? {
                    return Ok(head);
                }
            }
            if let Some(head) = self.bump_pages(n, false)? {
                return Ok(head);
            }
            if let Some(head) = self.collect(Some(n), true)? {
                return Ok(head);
            }
            if let Some(head) = self.bump_pages(n, true)? {
                return Ok(head);
            }
            if !self.wait_for_collectors(attempt) {
                break;
            }
        }
        Err(self.out_of_memory(requested))
    }

    /// While another collect pass holds pages, yields and says to retry.
    pub(super) fn wait_for_collectors(&self, attempt: u32) -> bool {
        if self.state().collecting.load(Ordering::Acquire) == 0 && attempt > 0 {
            return false;
        }
        std::thread::yield_now();
        true
    }

    pub(super) fn out_of_memory(&self, requested: u64) -> Error {
        Error::OutOfMemory {
            requested,
            available: self.stats().largest_free_block,
        }
    }

    /// Takes every free run (and, with `ghosts`, retires every empty page
    /// of every class), merges neighbouring runs, gives a free tail back to
    /// the bump cursor, and keeps a run of `want` pages if one exists.
    ///
    /// Concurrent allocations meanwhile see fewer free pages; they wait
    /// (`collecting`) before reporting out of memory. A process that dies
    /// here leaks the runs it held.
    pub(super) fn collect(&self, want: Option<u32>, ghosts: bool) -> Result<Option<u32>> {
        let state = self.state();
        state.collecting.fetch_add(1, Ordering::AcqRel);
        let result = self.collect_inner(want, ghosts);
        state.collecting.fetch_sub(1, Ordering::AcqRel);
        result
    }

    /// Follows a chain that `take_all` handed to the caller, calling `visit`
    /// on each page after reading its link (so `visit` may push the page on
    /// another stack). A chain longer than the table (a cycle), a page that
    /// links to itself, or a link out of range ends the walk; it and any
    /// error of `visit` are recorded in `error`.
    pub(super) fn drain_chain(
        &self,
        first: Option<u32>,
        what: &str,
        looped: impl Fn() -> Error,
        error: &mut Option<Error>,
        mut visit: impl FnMut(u32, &PageDesc) -> Result<()>,
    ) {
        let mut next = first;
        let mut steps = 0u32;
        while let Some(page) = next {
            steps += 1;
            let Some(desc) = self.desc(page).filter(|_| steps <= self.max_pages) else {
                *error = Some(looped());
                break;
            };
            next = match tagged_stack::decode_link(
                desc.link.load(Ordering::Acquire),
                self.max_pages,
            ) {
                // Caught at once rather than after `max_pages` visits of
                // one page, each of which would push it somewhere again.
                Ok(Some(after)) if after == page => {
                    *error = Some(looped());
                    None
                }
                Ok(next) => next,
                Err(bad) => {
                    *error = Some(bad_link(what, bad));
                    None
                }
            };
            if let Err(e) = visit(page, desc) {
                *error = Some(e);
            }
        }
    }

    pub(super) fn collect_inner(&self, want: Option<u32>, ghosts: bool) -> Result<Option<u32>> {
        let state = self.state();
        let mut runs: Vec<(u32, u32)> = Vec::new();
        let mut error = None;
        if ghosts {
            let heads = state
                .classes
                .iter()
                .flat_map(|shard| shard.iter().enumerate());
            for (class, head) in heads {
                let taken = tagged_stack::take_all(head);
                let looped = || Error::corrupt(format!("class {class} page list"));
                self.drain_chain(
                    taken,
                    "class page list",
                    looped,
                    &mut error,
                    |page, desc| {
                        // We hold the page's listed token: retire it if empty.
                        let current = desc.state.load(Ordering::Acquire);
                        let empty = small_state(class, 0, true, shard_of(current));
                        if current == empty
                            && desc
                                .state
                                .compare_exchange(empty, FREE, Ordering::AcqRel, Ordering::Acquire)
                                .is_ok()
                        {
                            runs.push((page, 1));
                        } else {
                            tagged_stack::push(head, page, &desc.link);
                        }
                        Ok(())
                    },
                );
            }
        }
        let taken = tagged_stack::take_all(&*state.free_runs);
        let looped = || Error::corrupt("free-run stack loops");
        self.drain_chain(taken, "free-run stack", looped, &mut error, |head, desc| {
            // As in `pop_free_page`: a page in use is not a free run, and
            // stays with its user.
            if desc.state.load(Ordering::Acquire) != FREE {
                return Err(Error::corrupt(format!(
                    "free-run stack holds page {head}, which is in use"
                )));
            }
            runs.push((head, self.run_len(head)?));
            Ok(())
        });
        // Merge neighbours.
        runs.sort_unstable();
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(runs.len());
        for (head, len) in runs {
            match merged.last_mut() {
                Some(last) if last.0 + last.1 == head => last.1 += len,
                _ => merged.push((head, len)),
            }
        }
        // A run that ends at the cursor goes back to it.
        if let Some(&(head, len)) = merged.last() {
            let end = u64::from(head) + u64::from(len);
            if state
                .bump
                .compare_exchange(end, u64::from(head), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                merged.pop();
            }
        }
        let mut taken = None;
        if let Some(n) = want {
            if let Some(best) = (0..merged.len())
                .filter(|&i| merged[i].1 >= n)
                .min_by_key(|&i| merged[i].1)
            {
                let (head, len) = merged.swap_remove(best);
                if len > n {
                    merged.push((head + n, len - n));
                }
                taken = Some(head);
            }
        }
        for (head, len) in merged {
            self.push_run(head, len);
        }
        match error {
            Some(e) => {
                if let Some(head) = taken {
                    self.push_run(head, want.unwrap_or(1));
                }
                Err(e)
            }
            None => Ok(taken),
        }
    }
}
