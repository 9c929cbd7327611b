//! Which blocks have live views in this process, so that freeing one is
//! refused (`BufferError`, as `bytearray` refuses to resize while a view
//! exists) instead of leaving a view that writes into someone else's block.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Live exported buffers per block offset.
#[derive(Default)]
pub struct Views {
    /// Exports out in all; checked first, so a heap without views pays one
    /// load per free.
    total: AtomicUsize,
    per_block: Mutex<HashMap<u64, usize>>,
}

impl Views {
    /// A buffer of the block at `block` was exported.
    pub fn opened(&self, block: u64) {
        let mut per_block = self.per_block.lock().unwrap_or_else(|e| e.into_inner());
        *per_block.entry(block).or_insert(0) += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    /// A buffer of the block at `block` was released.
    pub fn closed(&self, block: u64) {
        let mut per_block = self.per_block.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_block.get_mut(&block) {
            *count -= 1;
            if *count == 0 {
                per_block.remove(&block);
            }
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Live exports of the block at `block`.
    #[inline]
    pub fn of(&self, block: u64) -> usize {
        if self.total.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let per_block = self.per_block.lock().unwrap_or_else(|e| e.into_inner());
        per_block.get(&block).copied().unwrap_or(0)
    }

    /// Live exports of every block.
    #[inline]
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}
