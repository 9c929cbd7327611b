//! Guard-paged memory: regions fenced by inaccessible pages, and fiber
//! stacks built on them. The arena maps its chunks here too.
//!
//! A guard page is mapped with no access at all, so the first load or store
//! that runs off the end of a region faults (SIGSEGV) at the faulting
//! instruction instead of silently overwriting whatever lies next to it. The
//! guards cost address space only: they are never backed by memory.
//!
//! ```
//! use shmkit::local::guarded::allocate_stack;
//!
//! let stack = allocate_stack(64 << 10)?;
//! assert!(stack.size() >= 64 << 10);
//! assert_eq!(stack.top() as usize % 16, 0); // ready to be a stack pointer
//! # Ok::<(), shmkit::Error>(())
//! ```

use std::ptr::NonNull;

use crate::error::{Error, Result};
use crate::os::memory::page_size;
use crate::segment::Mapping;

/// Where a [`GuardedRegion`] has guard pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Guards {
    /// No guard page: plain mapped pages.
    None,
    /// One guard page below the region (the end a stack grows towards).
    Below,
    /// One guard page above the region (the end a bump cursor runs towards).
    Above,
    /// Guard pages on both ends.
    Both,
}

impl Guards {
    fn below(self) -> bool {
        matches!(self, Guards::Below | Guards::Both)
    }

    fn above(self) -> bool {
        matches!(self, Guards::Above | Guards::Both)
    }
}

/// Read-write memory of whole pages, fenced by inaccessible guard pages.
///
/// The usable bytes are zero when the region is made, page aligned, and
/// committed only when first touched. The region is unmapped, guards and
/// all, on drop.
pub struct GuardedRegion {
    /// The whole mapping, guards included; unmapped on drop.
    mapping: Mapping,
    /// The first usable byte.
    usable: NonNull<u8>,
    usable_len: usize,
    guards: Guards,
}

// SAFETY: the region owns its mapping exclusively; access to the bytes goes
// through `&self`/`&mut self` methods (raw pointers handed out carry their
// own obligations), so moving or sharing the handle between threads is safe.
unsafe impl Send for GuardedRegion {}
// SAFETY: as above; `&self` methods hand out raw pointers only.
unsafe impl Sync for GuardedRegion {}

impl GuardedRegion {
    /// Maps at least `len` usable bytes (rounded up to whole pages) with the
    /// guards asked for.
    pub fn new(len: usize, guards: Guards) -> Result<GuardedRegion> {
        let page = page_size() as usize;
        if len == 0 {
            return Err(Error::invalid_size(
                "a guarded region needs at least one byte",
            ));
        }
        let usable_len = len.checked_next_multiple_of(page).ok_or_else(|| {
            Error::invalid_size(format!("{len} bytes overflow the address space"))
        })?;
        let guard_below = if guards.below() { page } else { 0 };
        let guard_above = if guards.above() { page } else { 0 };
        let total = usable_len
            .checked_add(guard_below + guard_above)
            .ok_or_else(|| {
                Error::invalid_size(format!("{len} bytes overflow the address space"))
            })?;
        let mapping = Mapping::map_private(total as u64)?;
        let base = mapping.base();
        if guard_below > 0 {
            protect_none(base, guard_below)?;
        }
        // SAFETY: `guard_below + usable_len <= total`, inside the mapping.
        let usable = unsafe { base.add(guard_below) };
        if guard_above > 0 {
            // SAFETY: as above; the upper guard is the mapping's last page.
            protect_none(unsafe { usable.add(usable_len) }, guard_above)?;
        }
        Ok(GuardedRegion {
            mapping,
            usable,
            usable_len,
            guards,
        })
    }

    /// The first usable byte.
    pub fn as_ptr(&self) -> NonNull<u8> {
        self.usable
    }

    /// The number of usable bytes (a whole number of pages).
    pub fn len(&self) -> usize {
        self.usable_len
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// One past the last usable byte: the first byte of the upper guard
    /// when there is one.
    pub fn end(&self) -> NonNull<u8> {
        // SAFETY: one past the end of the usable bytes, inside the mapping
        // or one past it.
        unsafe { self.usable.add(self.usable_len) }
    }

    /// Where the guards are.
    pub fn guards(&self) -> Guards {
        self.guards
    }

    /// The bytes of the whole mapping, guards included.
    pub fn mapped_len(&self) -> usize {
        self.mapping.len()
    }

    /// The usable bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the usable pages are mapped read-write for as long as
        // `self` lives; `&self` rules out a `&mut` view at the same time.
        unsafe { std::slice::from_raw_parts(self.usable.as_ptr(), self.usable_len) }
    }

    /// The usable bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; `&mut self` makes this view the only one.
        unsafe { std::slice::from_raw_parts_mut(self.usable.as_ptr(), self.usable_len) }
    }
}

impl std::fmt::Debug for GuardedRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedRegion")
            .field("start", &self.usable)
            .field("len", &self.usable_len)
            .field("guards", &self.guards)
            .finish()
    }
}

/// Makes `len` bytes at `start` (whole pages of a mapping this module owns)
/// inaccessible.
fn protect_none(start: NonNull<u8>, len: usize) -> Result<()> {
    // SAFETY: the range is page aligned and lies in a mapping that the
    // caller owns and that no Rust reference points into yet.
    let status = unsafe { libc::mprotect(start.as_ptr().cast(), len, libc::PROT_NONE) };
    if status != 0 {
        return Err(Error::last_os("protecting a guard page"));
    }
    Ok(())
}

/// The alignment of a stack pointer at a call boundary on every target
/// shmkit supports (x86-64 and AArch64 both ask for 16).
pub const STACK_ALIGN: usize = 16;

/// A stack for a fiber or coroutine: usable pages with a guard page below
/// (where a downward-growing stack overflows), and optionally one above.
///
/// Running past the bottom faults on the guard page (SIGSEGV) rather than
/// writing into neighbouring memory. With the `corosensei` feature it
/// implements `corosensei::stack::Stack`, so a coroutine can run on it.
#[derive(Debug)]
pub struct FiberStack {
    region: GuardedRegion,
}

/// Allocates a fiber stack of at least `size` bytes, with a guard page below.
pub fn allocate_stack(size: usize) -> Result<FiberStack> {
    FiberStack::new(size, Guards::Below)
}

impl FiberStack {
    /// A stack of at least `size` bytes with the guards asked for; a stack
    /// always gets the guard below, so `Guards::None` means `Below` and
    /// `Guards::Above` means `Both`.
    pub fn new(size: usize, guards: Guards) -> Result<FiberStack> {
        let guards = match guards {
            Guards::None | Guards::Below => Guards::Below,
            Guards::Above | Guards::Both => Guards::Both,
        };
        Ok(FiberStack {
            region: GuardedRegion::new(size, guards)?,
        })
    }

    /// The highest address: where a downward-growing stack starts, aligned
    /// to [`STACK_ALIGN`].
    pub fn top(&self) -> *mut u8 {
        // The end is page aligned, so it is aligned for any stack ABI.
        self.region.end().as_ptr()
    }

    /// The lowest usable address; the guard page lies just below it.
    pub fn bottom(&self) -> *mut u8 {
        self.region.as_ptr().as_ptr()
    }

    /// Usable bytes.
    pub fn size(&self) -> usize {
        self.region.len()
    }

    /// The region the stack lives in.
    pub fn region(&self) -> &GuardedRegion {
        &self.region
    }
}

#[cfg(feature = "corosensei")]
// SAFETY: the stack has a guard page below its limit (every `FiberStack`
// does), at least one page (4096 bytes or more, `MIN_STACK_SIZE`) of
// read-write memory between limit and base, a page-aligned (so 16-aligned)
// base, and the memory stays mapped for as long as the stack lives.
unsafe impl corosensei::stack::Stack for FiberStack {
    fn base(&self) -> corosensei::stack::StackPointer {
        corosensei::stack::StackPointer::new(self.top() as usize)
            .expect("a mapped stack is never at address 0")
    }

    fn limit(&self) -> corosensei::stack::StackPointer {
        corosensei::stack::StackPointer::new(self.bottom() as usize)
            .expect("a mapped stack is never at address 0")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_is_whole_zeroed_pages_between_its_guards() {
        let page = page_size() as usize;
        let mut region = GuardedRegion::new(page + 1, Guards::Both).unwrap();
        assert_eq!(region.len(), 2 * page);
        assert_eq!(region.mapped_len(), 4 * page);
        assert_eq!(region.as_ptr().as_ptr() as usize % page, 0);
        assert!(region.as_slice().iter().all(|&byte| byte == 0));
        region.as_mut_slice().fill(0xa5);
        assert!(region.as_slice().iter().all(|&byte| byte == 0xa5));
    }

    #[test]
    fn guards_cost_a_page_each_and_only_where_asked() {
        let page = page_size() as usize;
        for (guards, extra) in [
            (Guards::Below, page),
            (Guards::Above, page),
            (Guards::Both, 2 * page),
        ] {
            let region = GuardedRegion::new(page, guards).unwrap();
            assert_eq!(region.mapped_len(), page + extra, "{guards:?}");
        }
    }

    #[test]
    fn an_empty_or_impossible_region_is_refused() {
        assert!(matches!(
            GuardedRegion::new(0, Guards::Below),
            Err(Error::InvalidSize { .. })
        ));
        assert!(matches!(
            GuardedRegion::new(usize::MAX - 10, Guards::Below),
            Err(Error::InvalidSize { .. })
        ));
    }

    #[test]
    fn a_stack_always_has_its_lower_guard() {
        let page = page_size() as usize;
        let stack = FiberStack::new(3 * page, Guards::Above).unwrap();
        assert_eq!(stack.region().guards(), Guards::Both);
        assert_eq!(stack.top() as usize - stack.bottom() as usize, stack.size());
        assert_eq!(stack.top() as usize % STACK_ALIGN, 0);
    }
}
