//! The lock-free bump cursor: `[start, start + size)` carved out of
//! `[cursor, end)`.
//!
//! The common request takes one `fetch_add` ([`bump_add`]), which never
//! retries however many workers contend. When the bytes it got cannot serve
//! the request (misaligned, past the end), it gives them back by
//! compare-and-swap if nobody claimed after them (the usual case, and
//! always so for requests that fail one after another), else leaves them
//! behind as alignment padding would be; the request then goes to the
//! compare-and-swap loop ([`bump`]), where a failed request stores nothing
//! and consumes nothing. Two callers never receive overlapping ranges: a
//! `fetch_add` hands each caller bytes no other caller got, and a loop's
//! range is claimed by one successful CAS from the value it starts above.

use super::atomic_word::AtomicWord;

/// Why a bump did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BumpFailure {
    /// The request does not fit below `end`; `cursor` is where it would start.
    Full { cursor: u64 },
    /// Size plus alignment overflows the offset space.
    Overflow,
    /// (Single attempts only) the cursor was not at the expected value.
    Moved { cursor: u64 },
    /// The cursor lies below the area it may hand out (corrupt state).
    BelowFloor { cursor: u64 },
}

/// Rounds `value` up to a multiple of `align` (any non-zero `align`: by mask
/// for powers of two, by division otherwise).
#[inline]
pub(crate) fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align != 0);
    if align.is_power_of_two() {
        let mask = align - 1;
        value.checked_add(mask).map(|v| v & !mask)
    } else {
        value.div_ceil(align).checked_mul(align)
    }
}

/// Where a request placed at `cursor` would start and end.
#[inline]
fn place(
    cursor: u64,
    size: u64,
    align: u64,
    floor: u64,
    end: u64,
) -> Result<(u64, u64), BumpFailure> {
    if cursor < floor {
        return Err(BumpFailure::BelowFloor { cursor });
    }
    let start = align_up(cursor, align).ok_or(BumpFailure::Overflow)?;
    let stop = start.checked_add(size).ok_or(BumpFailure::Overflow)?;
    if stop > end {
        return Err(BumpFailure::Full { cursor });
    }
    Ok((start, stop))
}

/// Requests up to this size may take [`bump_add`].
pub(crate) const ADD_MAX: u64 = 4096;

/// What one `fetch_add` got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Added {
    /// `[start, stop)`: aligned, at or above the floor, ending at or below
    /// the limit. The caller's.
    Claimed { start: u64, stop: u64 },
    /// Bytes that cannot serve the request, given back (or, when someone
    /// claimed after them, left behind); `stop` is where they ended.
    Refused { stop: u64 },
}

/// Claims `size` bytes (at most [`ADD_MAX`]) aligned to `align` in
/// `[floor, limit)` with one `fetch_add` (see the module docs); on
/// [`Added::Refused`] the request goes to [`bump`].
#[inline(always)]
pub(crate) fn bump_add<C: AtomicWord>(
    cursor: &C,
    size: u64,
    align: u64,
    floor: u64,
    limit: u64,
) -> Added {
    debug_assert!(size <= ADD_MAX);
    let start = cursor.fetch_add(size);
    let stop = start.wrapping_add(size);
    let aligned = if align.is_power_of_two() {
        start & (align - 1) == 0
    } else {
        start % align == 0
    };
    if aligned && start >= floor && stop > start && stop <= limit {
        return Added::Claimed { start, stop };
    }
    let _ = cursor.compare_exchange(stop, start);
    Added::Refused { stop }
}

/// Claims `size` bytes aligned to `align` in `[floor, end())`; returns the
/// start.
///
/// `end` is re-read on every attempt because a segment may grow meanwhile.
#[inline(always)]
pub(crate) fn bump<C: AtomicWord>(
    cursor: &C,
    size: u64,
    align: u64,
    floor: u64,
    end: impl Fn() -> u64,
) -> Result<u64, BumpFailure> {
    let mut current = cursor.load_acquire();
    loop {
        let (start, stop) = place(current, size, align, floor, end())?;
        match cursor.compare_exchange_weak(current, stop) {
            Ok(_) => return Ok(start),
            Err(actual) => current = actual,
        }
    }
}

/// One attempt to claim `size` bytes exactly at `expected` (for scopes that
/// must stay contiguous); fails with `Moved` if anyone else moved the cursor.
#[inline]
pub(crate) fn bump_at<C: AtomicWord>(
    cursor: &C,
    expected: u64,
    size: u64,
    align: u64,
    end: u64,
) -> Result<(u64, u64), BumpFailure> {
    let (start, stop) = place(expected, size, align, 0, end)?;
    match cursor.compare_exchange(expected, stop) {
        Ok(_) => Ok((start, stop)),
        Err(actual) => Err(BumpFailure::Moved { cursor: actual }),
    }
}

/// Moves the cursor from `expected` back to `mark`; fails (changing nothing)
/// if anyone allocated after `expected`.
#[inline]
pub(crate) fn rewind<C: AtomicWord>(cursor: &C, expected: u64, mark: u64) -> bool {
    cursor.compare_exchange(expected, mark).is_ok()
}

#[cfg(test)]
mod loom_models {
    //! Model checks of the cursor under every interleaving `loom` explores.

    use super::*;
    use crate::sync::atomic_word::LoomWord;
    use loom::sync::Arc;

    fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < b.1 && b.0 < a.1
    }

    /// Checks ranges (start, stop, align): aligned, at or above `floor`,
    /// pairwise disjoint; returns the highest stop.
    fn check_ranges(ranges: &[(u64, u64, u64)], floor: u64) -> u64 {
        for (i, a) in ranges.iter().enumerate() {
            assert_eq!(a.0 % a.2, 0, "misaligned range {a:?}");
            assert!(a.0 >= floor);
            for b in &ranges[i + 1..] {
                assert!(!overlaps((a.0, a.1), (b.0, b.1)), "{a:?} overlaps {b:?}");
            }
        }
        ranges.iter().map(|r| r.1).max().unwrap_or(floor)
    }

    /// What the bump allocator does: one `fetch_add`, else the loop.
    fn claim(
        cursor: &LoomWord,
        size: u64,
        align: u64,
        floor: u64,
        end: u64,
    ) -> Result<u64, BumpFailure> {
        match bump_add(cursor, size, align, floor, end) {
            Added::Claimed { start, .. } => Ok(start),
            Added::Refused { .. } => bump(cursor, size, align, floor, || end),
        }
    }

    /// Three threads with different sizes and alignments never receive
    /// overlapping ranges, every range is aligned and inside the limit, and
    /// the cursor ends exactly past the highest range.
    #[test]
    fn concurrent_bumps_never_overlap() {
        loom::model(|| {
            let cursor = Arc::new(LoomWord::new(16));
            let requests = [(24u64, 8u64), (10, 16), (7, 3)];
            let handles: Vec<_> = requests
                .iter()
                .map(|&(size, align)| {
                    let cursor = cursor.clone();
                    loom::thread::spawn(move || {
                        bump(&*cursor, size, align, 16, || 1 << 20)
                            .map(|start| (start, start + size, align))
                    })
                })
                .collect();
            let ranges: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().unwrap().expect("fits"))
                .collect();
            let highest = check_ranges(&ranges, 16);
            assert_eq!(cursor.load_acquire(), highest);
        });
    }

    /// The same with the bump allocator's path (one `fetch_add`, else the
    /// loop): a `fetch_add` that got misaligned bytes gives them back or
    /// leaves them behind, never hands them out twice. (Bounded: the
    /// unbounded schedules of three threads take minutes.)
    #[test]
    fn fetch_add_claims_never_overlap() {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(2);
        builder.check(|| {
            let cursor = Arc::new(LoomWord::new(16));
            let requests = [(24u64, 8u64), (10, 16), (7, 3)];
            let handles: Vec<_> = requests
                .iter()
                .map(|&(size, align)| {
                    let cursor = cursor.clone();
                    loom::thread::spawn(move || {
                        claim(&cursor, size, align, 16, 1 << 20)
                            .map(|start| (start, start + size, align))
                    })
                })
                .collect();
            let ranges: Vec<_> = handles
                .into_iter()
                .map(|h| h.join().unwrap().expect("fits"))
                .collect();
            let highest = check_ranges(&ranges, 16);
            assert!(cursor.load_acquire() >= highest);
        });
    }

    /// When only one of two requests fits, exactly one succeeds and the
    /// failed one leaves the cursor where the winner put it.
    #[test]
    fn a_failed_bump_consumes_nothing() {
        loom::model(|| {
            let cursor = Arc::new(LoomWord::new(0));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let cursor = cursor.clone();
                    loom::thread::spawn(move || claim(&cursor, 60, 8, 0, 100))
                })
                .collect();
            let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
            let wins = results.iter().filter(|r| r.is_ok()).count();
            assert_eq!(wins, 1, "{results:?}");
            assert!(results.contains(&Err(BumpFailure::Full { cursor: 60 })));
            assert_eq!(cursor.load_acquire(), 60);
        });
    }

    /// A scope rewind races an allocation: either the rewind wins (and the
    /// allocation lands at the mark) or the allocation wins (and the rewind
    /// is refused); never both, so no live range is handed out twice.
    #[test]
    fn rewind_never_frees_a_concurrent_allocation() {
        loom::model(|| {
            // A scope took mark 0 and allocated [0, 32).
            let cursor = Arc::new(LoomWord::new(32));
            let other = {
                let cursor = cursor.clone();
                loom::thread::spawn(move || bump(&*cursor, 16, 8, 0, || 1024).expect("fits"))
            };
            let rewound = rewind(&*cursor, 32, 0);
            let start = other.join().unwrap();
            let end = cursor.load_acquire();
            if rewound {
                // The other allocation came after the rewind, at the mark.
                assert_eq!(start, 0);
                assert_eq!(end, 16);
            } else {
                assert_eq!(start, 32);
                assert_eq!(end, 48);
            }
        });
    }
}
