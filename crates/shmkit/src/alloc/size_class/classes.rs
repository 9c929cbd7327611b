//! The size classes: which block size serves a request, and how blocks of
//! each class are laid out in a page.

use super::*;

// ---------------------------------------------------------------- classes

#[derive(Clone, Copy, Debug)]
pub(super) struct ClassInfo {
    /// Block size.
    pub(super) size: u64,
    /// Alignment every block of the class has (largest power of two that
    /// divides the size, at most 4096).
    pub(super) align: u64,
    /// Bytes per slack entry (1 below 256, else 2).
    pub(super) slack_width: u64,
    /// Blocks per page.
    pub(super) count: u64,
    /// Offset of block 0 in its page.
    pub(super) first: u64,
    /// Bitmap words.
    pub(super) words: u64,
    /// `ceil(2^32 / size)`: `(n * recip) >> 32 == n / size` for every
    /// `n < PAGE_SIZE` (the error term stays below one), which spares the
    /// lookup of a block a division.
    pub(super) recip: u64,
}

pub(super) const fn class_size(index: usize) -> u64 {
    if index < 8 {
        16 * (index as u64 + 1)
    } else {
        let group = (index - 8) / 4;
        let k = ((index - 8) % 4 + 1) as u64;
        let b = 7 + group as u32;
        (1u64 << b) + k * (1u64 << (b - 2))
    }
}

pub(super) const fn build_classes() -> [ClassInfo; NUM_CLASSES] {
    let mut out = [ClassInfo {
        size: 0,
        align: 0,
        slack_width: 0,
        count: 0,
        first: 0,
        words: 0,
        recip: 0,
    }; NUM_CLASSES];
    let mut i = 0;
    while i < NUM_CLASSES {
        let size = class_size(i);
        let low = size & size.wrapping_neg();
        let align = if low > MAX_CLASS_ALIGN {
            MAX_CLASS_ALIGN
        } else {
            low
        };
        let slack_width = if size < 256 { 1 } else { 2 };
        let mut count = PAGE_SIZE / size;
        loop {
            let words = count.div_ceil(64);
            let header = words * 8 + count * slack_width;
            let first = header.div_ceil(align) * align;
            if first + count * size <= PAGE_SIZE {
                out[i] = ClassInfo {
                    size,
                    align,
                    slack_width,
                    count,
                    first,
                    words,
                    recip: (1u64 << 32).div_ceil(size),
                };
                break;
            }
            count -= 1;
        }
        i += 1;
    }
    out
}

pub(super) const CLASSES: [ClassInfo; NUM_CLASSES] = build_classes();

/// The block size of a class.
#[inline]
pub(crate) fn class_block_size(class: usize) -> u64 {
    CLASSES.get(class).map_or(0, |info| info.size)
}

/// The smallest class whose size is at least `size` (1..=LARGE_THRESHOLD).
#[inline]
pub(super) fn natural_class(size: u64) -> usize {
    if size <= 128 {
        (size.max(1) as usize).div_ceil(16) - 1
    } else {
        let b = 63 - (size - 1).leading_zeros() as u64;
        let step = 1u64 << (b - 2);
        let k = (size - (1u64 << b)).div_ceil(step);
        8 + (b as usize - 7) * 4 + k as usize - 1
    }
}

/// The class serving `size` bytes aligned to `align`, or `None` for a run
/// of pages.
#[inline]
pub(crate) fn class_for(size: u64, align: u64) -> Option<usize> {
    if size > LARGE_THRESHOLD as u64 || align > MAX_CLASS_ALIGN {
        return None;
    }
    let natural = natural_class(size);
    if align <= 16 {
        return Some(natural);
    }
    (natural..NUM_CLASSES).find(|&c| CLASSES[c].align >= align)
}

/// The class a page's state word names, or the corruption a class out of
/// range is.
pub(super) fn class_info(page: u32, class: usize) -> Result<&'static ClassInfo> {
    CLASSES
        .get(class)
        .ok_or_else(|| Error::corrupt(format!("page {page}: class {class} out of range")))
}
