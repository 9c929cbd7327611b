//! The header at offset 0 of every segment.
//!
//! Layout (native endianness, `repr(C)`, 64-byte aligned):
//!
//! ```text
//! 0     magic            AtomicU64  published last, with release ordering
//! 8     format_version   u32
//! 12    header_len       u32        size_of::<Header>()
//! 16    layout_hash      u64        FNV-1a over the layout fields below
//! 24    state            AtomicU32  initializing / ready / failed
//! 28    creator_pid      u32
//! 32    size             AtomicU64  current usable size (grows)
//! 40    max_size         u64        reserved address range
//! 48    segment_id       u64
//! 56    allocator_kind   u32
//! 60    custom_len       u32
//! 64    allocator_params [u64; 4]
//! 96    custom_offset    u64
//! 104   state_offset     u64        allocator state
//! 112   state_len        u64
//! 120   data_offset      u64        first byte the allocator manages
//! 128   roots            [RootSlot; 32], 64 bytes each
//! 2176  flags            u64        features every process must honour
//! 2184  recovery         AtomicU64  who runs a recovery pass now (0: nobody)
//! 2192  capacity         u64        the size asked for: backed freely as
//!                                   the allocator fills it; past it (up to
//!                                   max_size) is growth
//! ```
//!
//! The magic word and the format version never move, so any future format can
//! still be recognised and refused with a clear error.
//!
//! After the header come the areas, each 128-aligned: the hand-off log
//! (`alloc::handoff`, at a fixed offset), the custom header, the allocator
//! state and the data area ([`Layout`]).

use std::cell::UnsafeCell;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use super::kind::AllocatorKind;
use crate::error::{Error, Result};
use crate::stable_hash::{fnv1a_extend, FNV_OFFSET_BASIS};

/// The magic word: `\x7fSHMKIT\0` read as a native-endian `u64`.
pub const MAGIC: u64 = u64::from_ne_bytes(*b"\x7fSHMKIT\0");

/// The on-segment format this build writes and reads (2: the flags word;
/// 3: the hand-off log after the header; 4: each thread's share of the
/// accounting in its hand-off slot; 5: the size asked for kept apart from
/// the maximum (`capacity`), the data area backed as it fills, and the buddy
/// allocator's tables only as far as its heap reaches, which a build that
/// expects them backed must not touch).
pub const FORMAT_VERSION: u32 = 5;

/// Bits of the header's flags word: features fixed at creation that every
/// attached process must honour.
pub mod flags {
    /// Every free zeroes the block's bytes before the block can be reused.
    pub const ZERO_ON_FREE: u64 = 1;
    /// Every flag this build knows; a segment with another is refused.
    pub const KNOWN: u64 = ZERO_ON_FREE;
}

/// Number of named root slots in every header.
pub const ROOT_SLOTS: usize = 32;

/// Longest root name, in bytes.
pub const ROOT_NAME_MAX: usize = 48;

/// Number of `u64` words an allocator may record as its parameters.
pub const PARAM_WORDS: usize = 4;

/// Alignment of every area (custom header, allocator state, data): two cache
/// lines, so padded counters in allocator state stay on lines of their own.
pub(crate) const AREA_ALIGN: u64 = 128;

/// Life-cycle states of a segment.
pub(crate) mod state {
    /// Bytes not yet written (a fresh, zero-filled object).
    pub const BLANK: u32 = 0;
    /// Header written; the allocator is being initialized.
    pub const INITIALIZING: u32 = 1;
    /// Ready for use by any process.
    pub const READY: u32 = 2;
    /// The creator failed and gave up; attachers must not use it.
    pub const FAILED: u32 = 3;
}

/// Root slot states: the low two bits of a slot's `claim` word.
mod slot {
    /// The whole word is 0.
    pub const EMPTY: u64 = 0;
    /// Being written: the writer thread's packed identity is in the bits
    /// above the state, so a writer that died is found out and replaced.
    pub const WRITING: u64 = 1;
    /// Published: the name's length is in the high 32 bits.
    pub const SET: u64 = 2;
    pub const STATE: u64 = 3;

    /// The claim word of a slot `writer` (a packed identity) is writing.
    pub fn writing(writer: u64) -> u64 {
        (writer << 2) | WRITING
    }

    /// The packed identity in a WRITING claim word.
    pub fn writer(claim: u64) -> u64 {
        claim >> 2
    }

    /// The claim word of a published name of `len` bytes.
    pub fn set(len: usize) -> u64 {
        ((len as u64) << 32) | SET
    }
}

/// One named root: a name and an offset, so processes can meet at a known object.
#[repr(C)]
pub(crate) struct RootSlot {
    /// The slot's state and, by state, its writer or its name's length (see
    /// [`slot`]); in a published slot the same bytes as the state and
    /// length words of format 2 (native little-endian).
    claim: AtomicU64,
    /// Written only by the thread that moved `claim` from EMPTY to WRITING.
    name: UnsafeCell<[u8; ROOT_NAME_MAX]>,
    offset: AtomicU64,
}

/// The segment header. See the module documentation for the layout.
#[repr(C, align(64))]
pub(crate) struct Header {
    pub magic: AtomicU64,
    pub format_version: u32,
    pub header_len: u32,
    pub layout_hash: u64,
    pub state: AtomicU32,
    pub creator_pid: u32,
    pub size: AtomicU64,
    pub max_size: u64,
    pub segment_id: u64,
    pub allocator_kind: u32,
    pub custom_len: u32,
    pub allocator_params: [u64; PARAM_WORDS],
    pub custom_offset: u64,
    pub state_offset: u64,
    pub state_len: u64,
    pub data_offset: u64,
    roots: [RootSlot; ROOT_SLOTS],
    pub flags: u64,
    /// The packed identity of the thread running a recovery pass, or 0:
    /// read-write attachers wait while a live one holds it (see
    /// `recovery_lock`). In what used to be padding (zero in every
    /// segment), so the format is unchanged.
    pub recovery: AtomicU64,
    /// The size the creator asked for (see [`Segment::capacity`](crate::Segment::capacity)).
    pub capacity: u64,
}

const _: () = assert!(std::mem::size_of::<RootSlot>() == 64);
const _: () = assert!(std::mem::size_of::<Header>() == 128 + 64 * ROOT_SLOTS + 64);

/// Bytes reserved after the header for the allocators' hand-off log (64
/// slots of 128 bytes; `alloc::handoff` lays them out and checks that they
/// fit).
pub(crate) const HANDOFF_AREA_LEN: u64 = 64 * 128;

/// Where each area of a segment goes, computed from the creation parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub custom_offset: u64,
    pub custom_len: u32,
    pub state_offset: u64,
    pub state_len: u64,
    pub data_offset: u64,
}

impl Layout {
    pub fn new(custom_len: u32, state_len: u64) -> Result<Layout> {
        if state_len > MAX_SEGMENT_SIZE {
            return Err(Error::invalid_size("allocator state too large"));
        }
        // All terms are far below 2^64 (a u32, a header, at most 2^47).
        let custom_offset = align_up(Self::handoff_offset() + HANDOFF_AREA_LEN, AREA_ALIGN);
        let state_offset = align_up(custom_offset + u64::from(custom_len), AREA_ALIGN);
        let data_offset = align_up(state_offset + state_len, AREA_ALIGN);
        Ok(Layout {
            custom_offset,
            custom_len,
            state_offset,
            state_len,
            data_offset,
        })
    }
}

impl Layout {
    /// Where the hand-off log starts: right after the header, in every
    /// segment of this format.
    pub const fn handoff_offset() -> u64 {
        let header = std::mem::size_of::<Header>() as u64;
        (header + AREA_ALIGN - 1) & !(AREA_ALIGN - 1)
    }
}

pub(crate) fn align_up(value: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    (value + align - 1) & !(align - 1)
}

/// FNV-1a over 64-bit words: stable across builds and processes, unlike
/// `std`'s hasher.
pub(crate) fn fnv1a(words: impl IntoIterator<Item = u64>) -> u64 {
    words.into_iter().fold(FNV_OFFSET_BASIS, |hash, word| {
        fnv1a_extend(hash, &word.to_le_bytes())
    })
}

fn fnv1a_bytes(bytes: &[u8]) -> u64 {
    fnv1a(bytes.iter().map(|&b| u64::from(b)))
}

impl Header {
    /// The hash that binds the header layout, the allocator kind and its
    /// parameters: an attacher recomputes it and refuses a mismatch.
    pub fn compute_layout_hash(&self) -> u64 {
        let fixed = [
            u64::from(FORMAT_VERSION),
            std::mem::size_of::<Header>() as u64,
            std::mem::align_of::<Header>() as u64,
            ROOT_SLOTS as u64,
            std::mem::size_of::<RootSlot>() as u64,
            u64::from(self.header_len),
            self.max_size,
            self.capacity,
            u64::from(self.allocator_kind),
            u64::from(self.custom_len),
            self.custom_offset,
            self.state_offset,
            self.state_len,
            self.data_offset,
            self.flags,
        ];
        fnv1a(fixed.into_iter().chain(self.allocator_params))
    }

    /// Writes every field except `magic` (published later) into a blank header.
    pub fn fill(&mut self, fields: &NewHeader) {
        self.format_version = FORMAT_VERSION;
        self.header_len = std::mem::size_of::<Header>() as u32;
        *self.state.get_mut() = state::INITIALIZING;
        self.creator_pid = std::process::id();
        *self.size.get_mut() = fields.size;
        self.max_size = fields.max_size;
        self.capacity = fields.capacity;
        self.segment_id = fields.segment_id;
        self.allocator_kind = fields.kind.code();
        self.custom_len = fields.layout.custom_len;
        self.allocator_params = fields.params;
        self.custom_offset = fields.layout.custom_offset;
        self.state_offset = fields.layout.state_offset;
        self.state_len = fields.layout.state_len;
        self.data_offset = fields.layout.data_offset;
        self.flags = fields.flags;
        self.layout_hash = self.compute_layout_hash();
    }

    /// Checks everything that can be checked without the backing object:
    /// the hash and the ranges of every area. Called once the attacher has
    /// seen `READY` (so the fields are published).
    pub fn validate(&self) -> Result<()> {
        if self.header_len as usize != std::mem::size_of::<Header>() {
            return Err(Error::corrupt(format!(
                "header length {} (expected {})",
                self.header_len,
                std::mem::size_of::<Header>()
            )));
        }
        if self.layout_hash != self.compute_layout_hash() {
            return Err(Error::corrupt("layout hash mismatch"));
        }
        if self.flags & !flags::KNOWN != 0 {
            return Err(Error::corrupt(format!(
                "feature flags {:#x} unknown to this build",
                self.flags & !flags::KNOWN
            )));
        }
        let expected = Layout::new(self.custom_len, self.state_len)
            .map_err(|_| Error::corrupt(format!("allocator state length {}", self.state_len)))?;
        let found = Layout {
            custom_offset: self.custom_offset,
            custom_len: self.custom_len,
            state_offset: self.state_offset,
            state_len: self.state_len,
            data_offset: self.data_offset,
        };
        if expected != found {
            return Err(Error::corrupt("area offsets are inconsistent"));
        }
        let size = load_acquire_u64(&self.size);
        if size < self.data_offset || size > self.max_size {
            return Err(Error::corrupt(format!(
                "size {size} outside [{}, {}]",
                self.data_offset, self.max_size
            )));
        }
        if self.capacity < self.data_offset || self.capacity > self.max_size {
            return Err(Error::corrupt(format!(
                "capacity {} outside [{}, {}]",
                self.capacity, self.data_offset, self.max_size
            )));
        }
        if self.max_size > MAX_SEGMENT_SIZE {
            return Err(Error::corrupt(format!(
                "maximum size {} is implausible",
                self.max_size
            )));
        }
        Ok(())
    }

    pub fn kind(&self) -> AllocatorKind {
        AllocatorKind::from_code(self.allocator_kind)
    }

    /// Publishes `offset` under `name`; each name can be set once.
    ///
    /// A slot another thread is writing is waited for (at most `patience`:
    /// it may hold the same name); one whose writer died is taken over, its
    /// name never having been published.
    pub fn set_root(&self, name: &str, offset: u64, patience: std::time::Duration) -> Result<()> {
        let bytes = check_root_name(name)?;
        let start = (fnv1a_bytes(bytes) % ROOT_SLOTS as u64) as usize;
        let me = slot::writing(crate::os::thread_id::current_identity_word());
        for probe in 0..ROOT_SLOTS {
            let slot = &self.roots[(start + probe) % ROOT_SLOTS];
            loop {
                let claim = slot.claim.load(Ordering::Acquire);
                match claim & slot::STATE {
                    slot::EMPTY | slot::WRITING
                        if claim == slot::EMPTY
                            || crate::os::identity::thread_is_dead(slot::writer(claim)) =>
                    {
                        if slot
                            .claim
                            .compare_exchange(claim, me, Ordering::Acquire, Ordering::Acquire)
                            .is_err()
                        {
                            continue;
                        }
                        crate::crash_point::crash_point!("root.claimed");
                        // SAFETY: winning the exchange to WRITING with this
                        // thread's identity makes it the only writer of the
                        // name (a later taker judges it dead first); readers
                        // look at it only after seeing SET, which is stored
                        // below with release ordering.
                        unsafe {
                            let name = &mut *slot.name.get();
                            *name = [0; ROOT_NAME_MAX];
                            name[..bytes.len()].copy_from_slice(bytes);
                        }
                        slot.offset.store(offset, Ordering::Relaxed);
                        // Taken over meanwhile only if this thread was judged
                        // dead: then the new writer owns the slot.
                        if slot
                            .claim
                            .compare_exchange(
                                me,
                                slot::set(bytes.len()),
                                Ordering::Release,
                                Ordering::Relaxed,
                            )
                            .is_err()
                        {
                            continue;
                        }
                        return Ok(());
                    }
                    slot::WRITING => {
                        // A live thread is publishing into this slot, maybe
                        // the same name: wait (bounded) to see which.
                        if !wait_while(
                            || {
                                let now = slot.claim.load(Ordering::Acquire);
                                now == claim
                                    && !crate::os::identity::thread_is_dead(slot::writer(now))
                            },
                            patience,
                        ) {
                            return Err(Error::Root {
                                name: name.to_owned(),
                                reason: "another thread has been publishing into its slot \
                                         for longer than the patience allows",
                            });
                        }
                    }
                    slot::SET => {
                        if slot.name() == Some(bytes) {
                            return Err(Error::Root {
                                name: name.to_owned(),
                                reason: "already set",
                            });
                        }
                        break;
                    }
                    _ => return Err(Error::corrupt("root slot in an unknown state")),
                }
            }
        }
        Err(Error::Root {
            name: name.to_owned(),
            reason: "root table is full",
        })
    }

    /// The offset published under `name`, if any. Only loads: safe on a
    /// read-only mapping.
    pub fn root(&self, name: &str) -> Option<u64> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() > ROOT_NAME_MAX {
            return None;
        }
        let start = (fnv1a_bytes(bytes) % ROOT_SLOTS as u64) as usize;
        for probe in 0..ROOT_SLOTS {
            let slot = &self.roots[(start + probe) % ROOT_SLOTS];
            match load_acquire_u64(&slot.claim) & slot::STATE {
                slot::EMPTY => return None,
                slot::SET if slot.name() == Some(bytes) => {
                    // Written before SET was released, never changed after.
                    return Some(slot.offset.load(Ordering::Relaxed));
                }
                _ => {}
            }
        }
        None
    }

    /// Every published root, in slot order. Only loads: safe on a read-only
    /// mapping.
    pub fn roots(&self) -> Vec<(String, u64)> {
        self.roots
            .iter()
            .filter(|slot| load_acquire_u64(&slot.claim) & slot::STATE == slot::SET)
            .filter_map(|slot| {
                let name = String::from_utf8_lossy(slot.name()?).into_owned();
                Some((name, slot.offset.load(Ordering::Relaxed)))
            })
            .collect()
    }
}

impl RootSlot {
    /// The name bytes of a slot seen SET (with acquire ordering); `None`
    /// when the stored length is out of range.
    fn name(&self) -> Option<&[u8]> {
        // SAFETY: callers saw `state == SET` with acquire ordering, after
        // which the name is never written again.
        let name = unsafe { &*self.name.get() };
        name.get(..(self.claim.load(Ordering::Relaxed) >> 32) as usize)
    }
}

/// The largest segment shmkit accepts (128 TiB): bigger values in a header are
/// treated as corruption.
pub const MAX_SEGMENT_SIZE: u64 = 1 << 47;

/// Fields the creator chooses.
pub(crate) struct NewHeader {
    pub size: u64,
    pub capacity: u64,
    pub max_size: u64,
    pub segment_id: u64,
    pub kind: AllocatorKind,
    pub params: [u64; PARAM_WORDS],
    pub layout: Layout,
    pub flags: u64,
}

impl NewHeader {
    /// The immutable fields, as the creator's own `Segment` records them.
    pub fn fixed(&self) -> crate::segment::Fixed {
        crate::segment::Fixed {
            id: self.segment_id,
            creator_pid: std::process::id(),
            format_version: FORMAT_VERSION,
            kind: self.kind,
            params: self.params,
            max_size: self.max_size,
            capacity: self.capacity,
            custom_offset: self.layout.custom_offset,
            custom_len: self.layout.custom_len,
            state_offset: self.layout.state_offset,
            state_len: self.layout.state_len,
            data_offset: self.layout.data_offset,
            flags: self.flags,
        }
    }
}

fn check_root_name(name: &str) -> Result<&[u8]> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() > ROOT_NAME_MAX {
        return Err(Error::Root {
            name: name.to_owned(),
            reason: "names must be 1 to 48 bytes long",
        });
    }
    Ok(bytes)
}

/// An acquire load that is also sound on a read-only mapping. Rust promises
/// only that *relaxed* loads no wider than a pointer never fault on read-only
/// pages (an acquire load may be built from a compare-exchange), so load
/// relaxed and order with an acquire fence: that synchronizes with the same
/// release stores.
pub(crate) fn load_acquire_u64(word: &AtomicU64) -> u64 {
    let value = word.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    value
}

/// The 32-bit twin of [`load_acquire_u64`].
pub(crate) fn load_acquire_u32(word: &AtomicU32) -> u32 {
    let value = word.load(Ordering::Relaxed);
    fence(Ordering::Acquire);
    value
}

/// Spins, then sleeps, while `busy()` holds, for at most `patience`.
/// Returns `true` when `busy()` stopped holding.
pub(crate) fn wait_while(mut busy: impl FnMut() -> bool, patience: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    let backoff = crossbeam_utils::Backoff::new();
    while busy() {
        if start.elapsed() >= patience {
            return false;
        }
        if backoff.is_completed() {
            std::thread::sleep(std::time::Duration::from_millis(1));
        } else {
            backoff.snooze();
        }
    }
    true
}

// The magic word and the format version must never move: every future
// format is recognised (and refused) by them.
const _: () = assert!(std::mem::offset_of!(Header, magic) == 0);
const _: () = assert!(std::mem::offset_of!(Header, format_version) == 8);
const _: () = assert!(std::mem::offset_of!(Header, state) == 24);
const _: () = assert!(std::mem::offset_of!(Header, data_offset) == 120);
const _: () = assert!(std::mem::offset_of!(Header, roots) == 128);

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as a creator fills it, with these flags.
    fn filled(flags: u64) -> Box<Header> {
        // SAFETY: every field of `Header` is an integer, an atomic or an
        // array of them, for which all-zero bytes are valid (a blank header).
        let mut header: Box<Header> = unsafe { Box::new(std::mem::zeroed()) };
        let layout = Layout::new(0, 128).unwrap();
        header.fill(&NewHeader {
            size: 1 << 20,
            capacity: 1 << 20,
            max_size: 1 << 20,
            segment_id: 7,
            kind: AllocatorKind::Bump,
            params: [0; PARAM_WORDS],
            layout,
            flags,
        });
        header
    }

    #[test]
    fn flags_are_bound_by_the_hash_and_unknown_ones_refused() {
        filled(flags::ZERO_ON_FREE).validate().unwrap();
        // A flag from a newer build: the hash matches, the flag is refused.
        let err = filled(1 << 40).validate().unwrap_err().to_string();
        assert!(err.contains("unknown to this build"), "{err}");
        // A flag flipped after creation breaks the hash.
        let mut header = filled(0);
        header.flags = flags::ZERO_ON_FREE;
        let err = header.validate().unwrap_err().to_string();
        assert!(err.contains("layout hash"), "{err}");
    }
}
