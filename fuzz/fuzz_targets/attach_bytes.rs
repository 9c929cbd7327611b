//! Hostile segment bytes: a live segment of one allocator kind has byte
//! patches written over its header, its allocator state or anywhere, then
//! is attached, checked, walked, allocated from and freed into. Every step
//! may fail, but only with an error: a panic, a crash (a read outside the
//! mapping is a SIGSEGV or SIGBUS) or a hang (libFuzzer's `-timeout`) is a
//! finding.
//!
//! Input: one byte choosing the kind, then patches, each
//! `[control][offset: 3 bytes LE][bytes]` where the control's low 6 bits
//! are the patch length and its top 2 bits where it lands (header, state,
//! anywhere). Starting from a valid segment is what gets inputs past the
//! magic number: whole-segment inputs almost never would.
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use shmkit::{AllocatorKind, AnyAllocator, Error, MemContext, SegmentOptions};
use shmkit_fuzz::{populated, take_le, SEGMENT};

const PAGE: usize = 4096;
/// Where a header records its own length (a native-endian `u32`), which
/// every format keeps in place.
const HEADER_LEN_AT: usize = 12;

/// A populated segment's bytes, taken once per kind and copied into a
/// fresh memfd for every input.
struct Template {
    bytes: Vec<u8>,
    /// Pages with a non-zero byte: a fresh memfd reads zeros elsewhere, so
    /// only these are written.
    touched_pages: Vec<usize>,
    /// Where the header ends and the allocator state begins.
    header_len: u64,
    /// Where the state ends and the data begins.
    data_offset: u64,
    live: Vec<u64>,
}

fn template(kind: AllocatorKind) -> Template {
    let (heap, live) = populated(kind, &SegmentOptions::memfd("shmkit-fuzz-template"));
    let data_offset = heap.segment().data_offset();
    let fd = heap
        .segment()
        .fd()
        .expect("a memfd segment has a descriptor")
        .try_clone_to_owned()
        .expect("dup the memfd");
    // Dropped first, so whatever detaching writes is in the copy.
    drop(heap);
    let mut bytes = vec![0u8; SEGMENT as usize];
    File::from(fd)
        .read_exact_at(&mut bytes, 0)
        .expect("read the template");
    let header_len = u32::from_ne_bytes(
        bytes[HEADER_LEN_AT..HEADER_LEN_AT + 4]
            .try_into()
            .expect("four bytes"),
    );
    let touched_pages = bytes
        .chunks(PAGE)
        .enumerate()
        .filter(|(_, page)| page.iter().any(|&b| b != 0))
        .map(|(index, _)| index)
        .collect();
    Template {
        bytes,
        touched_pages,
        header_len: u64::from(header_len),
        data_offset,
        live: live.iter().map(|block| block.offset).collect(),
    }
}

fn templates() -> &'static [Template] {
    static TEMPLATES: OnceLock<Vec<Template>> = OnceLock::new();
    TEMPLATES.get_or_init(|| AnyAllocator::KINDS.into_iter().map(template).collect())
}

fn fresh_memfd() -> File {
    // SAFETY: a NUL-terminated name and valid flags; the call has no
    // other preconditions.
    let fd = unsafe { libc::memfd_create(c"shmkit-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just opened and nothing else owns it.
    File::from(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A lock word that names a live stranger (a patch can make the owner any
/// running process) makes each locked operation wait out its patience and
/// fail: bounded, but slow, so the input stops at the first one.
fn lock_timed_out<T>(result: &shmkit::Result<T>) -> bool {
    matches!(result, Err(Error::LockTimeout { .. }))
}

/// Everything a process might do with what it attached; errors are fine.
fn exercise(heap: &AnyAllocator, live: &[u64], stray: &[u64]) {
    if lock_timed_out(&heap.check()) {
        return;
    }
    let _ = heap.stats();
    let mut regions = 0u64;
    if lock_timed_out(&heap.regions(&mut |_| regions += 1)) {
        return;
    }
    let Some(alloc) = heap.as_shm_allocator() else {
        return;
    };
    let ctx = MemContext::default();
    for &offset in live.iter().chain(stray) {
        let _ = alloc.usable_size(offset);
        let _ = alloc.full_ptr(offset);
    }
    let mut fresh = Vec::new();
    for size in [8usize, 64, 300, 2048, 5000] {
        match alloc.allocate_offset(&ctx, size, 8) {
            Ok(offset) => fresh.push(offset),
            Err(Error::LockTimeout { .. }) => return,
            Err(_) => {}
        }
    }
    for &offset in live.iter().chain(stray).chain(&fresh) {
        // SAFETY: the fuzzer keeps no pointer into a block.
        if lock_timed_out(&unsafe { alloc.free_offset(&ctx, offset) }) {
            return;
        }
    }
    let _ = alloc.check();
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut patches)) = data.split_first() else {
        return;
    };
    let all = templates();
    let template = &all[selector as usize % all.len()];
    let file = fresh_memfd();
    file.set_len(SEGMENT).expect("size the memfd");
    for &page in &template.touched_pages {
        let at = page * PAGE;
        file.write_all_at(&template.bytes[at..at + PAGE], at as u64)
            .expect("copy the template");
    }
    // The patched offsets double as stray offsets to free and size.
    let mut stray = Vec::new();
    while let (Some(control), Some(position)) =
        (take_le::<1>(&mut patches), take_le::<3>(&mut patches))
    {
        let len = (control & 0x3f) as usize;
        let (from, to) = match control >> 6 {
            0 => (0, template.header_len),
            1 => (
                template.header_len,
                template.data_offset.max(template.header_len + 1),
            ),
            _ => (0, SEGMENT),
        };
        let at = from + position % (to - from);
        let len = len.min(patches.len()).min((SEGMENT - at) as usize);
        let (bytes, rest) = patches.split_at(len);
        patches = rest;
        file.write_all_at(bytes, at).expect("patch the memfd");
        stray.push(at);
    }
    let options = SegmentOptions::fd(file.into()).ready_timeout(Duration::from_millis(1));
    if let Ok(heap) = AnyAllocator::attach(&options) {
        exercise(&heap, &template.live, &stray);
    }
});
