//! `shmkit_heap`: a segment and the allocator its header names, opened by
//! name (POSIX shared memory or a file), as one opaque handle.

use std::ffi::{c_char, c_void, CStr};
use std::ptr::NonNull;

use shmkit::{
    AllocatorKind, AllocatorVisitor, AnyAllocator, BumpAllocator, LinearAlloc, MemContext, Opened,
    SegmentOptions, ShmAllocator, StackAllocator,
};

use crate::handle::{check_out, close, hand_out, handle, live};
use crate::status::{guard, shmkit_status, Failure};

handle!(
    /// An open segment and its allocator. Opaque to C: made by
    /// `shmkit_heap_create`/`_attach`/`_open_or_create`, ended by
    /// `shmkit_heap_close`. One handle may be used by many threads at once;
    /// closing it while another thread uses it is the caller's error, as
    /// with `free`.
    shmkit_heap,
    b"shmkHEAP",
    "heap",
    allocator: AnyAllocator
);

/// Where a segment lives.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum shmkit_backend {
    /// POSIX shared memory (`/dev/shm`): `name` is the shm name.
    SHMKIT_BACKEND_SHM = 0,
    /// A file: `name` is its path.
    SHMKIT_BACKEND_FILE = 1,
}

/// The allocator that manages a segment (the code its header records).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum shmkit_kind {
    /// Lock-free linear allocation; no single frees.
    SHMKIT_KIND_BUMP = 1,
    /// Linear allocation, freed in reverse order.
    SHMKIT_KIND_STACK = 2,
    /// Fixed-size slots.
    SHMKIT_KIND_POOL = 3,
    /// General purpose (two-level segregated fit).
    SHMKIT_KIND_FREE_LIST = 4,
    /// Power-of-two blocks that split and merge.
    SHMKIT_KIND_BUDDY = 5,
    /// Size classes over a page heap.
    SHMKIT_KIND_SIZE_CLASS = 6,
    /// Per-thread caches over the size classes: the fastest for small
    /// blocks.
    SHMKIT_KIND_THREAD_LOCAL = 7,
}

/// How to create a segment. Start from `shmkit_options_default()`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct shmkit_options {
    /// Bytes mapped and backed at creation.
    pub size: u64,
    /// The most the segment may grow to (0: `size`).
    pub max_size: u64,
    /// Permission bits of a new shm object or file (as for `open`).
    pub mode: u32,
    /// Bytes of the application's custom header (`shmkit_heap_custom_header`).
    pub custom_header_len: u32,
    /// `SHMKIT_ZERO_ON_FREE`: freed blocks are zeroed.
    pub flags: u32,
}

/// `shmkit_options.flags`: freed blocks are zeroed.
pub const SHMKIT_ZERO_ON_FREE: u32 = 1;

/// An allocator's accounting (see `shmkit::AllocStats`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct shmkit_stats {
    /// Bytes in live allocations, as requested.
    pub allocated_bytes: u64,
    /// The most `allocated_bytes` has been.
    pub peak_bytes: u64,
    /// Live allocations.
    pub live_allocations: u64,
    /// Bytes that could still be handed out (growth included).
    pub free_bytes: u64,
    /// The largest single request that would succeed now.
    pub largest_free_block: u64,
    /// Bytes managed once the segment has grown to its maximum.
    pub capacity: u64,
}

/// What a recovery pass mended (see `shmkit::RecoveryReport`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
#[allow(non_camel_case_types)]
pub struct shmkit_recovery_report {
    /// Locks taken over from dead holders.
    pub locks_taken_over: u64,
    /// Per-thread caches of dead threads given back.
    pub caches_reclaimed: u64,
    /// Blocks freed that nobody could reach any more.
    pub blocks_reclaimed: u64,
    /// Bytes fenced off as damaged.
    pub bytes_quarantined: u64,
    /// Non-zero when the structure was rebuilt.
    pub rebuilt: u32,
    /// Live allocations before and after.
    pub live_before: u64,
    /// See `live_before`.
    pub live_after: u64,
}

/// The default options: 64 MiB, no growth, mode 0600, no custom header.
#[no_mangle]
pub extern "C" fn shmkit_options_default() -> shmkit_options {
    shmkit_options {
        size: shmkit::segment::DEFAULT_SIZE,
        max_size: 0,
        mode: 0o600,
        custom_header_len: 0,
        flags: 0,
    }
}

/// A caller's string, as UTF-8.
pub(crate) fn text<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: the caller passes a NUL-terminated string (the C contract of
    // every `const char *` here), which lives across the call.
    unsafe { CStr::from_ptr(ptr) }.to_str().map_err(|_| {
        Failure(
            shmkit_status::SHMKIT_E_INVALID_NAME,
            format!("{what} is not UTF-8"),
        )
    })
}

/// A shared-memory segment's options from a C name (a leading '/', as
/// `shm_open` takes it, is allowed).
pub(crate) fn shm(name: *const c_char) -> Result<SegmentOptions, Failure> {
    Ok(shm_named(text(name, "name")?))
}

fn shm_named(name: &str) -> SegmentOptions {
    SegmentOptions::shm(name.strip_prefix('/').unwrap_or(name))
}

/// Where `name` lives, by a `shmkit_backend` value (an int from C: any
/// value may arrive).
fn location(name: *const c_char, backend: i32) -> Result<SegmentOptions, Failure> {
    let name = text(name, "name")?;
    if backend == shmkit_backend::SHMKIT_BACKEND_SHM as i32 {
        Ok(shm_named(name))
    } else if backend == shmkit_backend::SHMKIT_BACKEND_FILE as i32 {
        Ok(SegmentOptions::file(name))
    } else {
        Err(Failure(
            shmkit_status::SHMKIT_E_UNSUPPORTED,
            format!("backend {backend} is not a shmkit_backend"),
        ))
    }
}

fn with_options(base: SegmentOptions, options: *const shmkit_options) -> SegmentOptions {
    // SAFETY: a non-null `options` points to a `shmkit_options` the caller
    // owns for the call.
    let options = unsafe { options.as_ref() }
        .copied()
        .unwrap_or_else(|| shmkit_options_default());
    let mut made = base
        .size(options.size)
        .mode(options.mode)
        .zero_on_free(options.flags & SHMKIT_ZERO_ON_FREE != 0);
    if options.max_size != 0 {
        made = made.max_size(options.max_size);
    }
    if options.custom_header_len != 0 {
        made = made.custom_header_len(options.custom_header_len);
    }
    made
}

/// The allocator kind a `shmkit_kind` value names (an int from C: any
/// value may arrive, and is refused by the allocator registry).
fn kind_of(kind: i32) -> AllocatorKind {
    AllocatorKind::from_code(u32::try_from(kind).unwrap_or(u32::MAX))
}

/// The live heap behind a caller's handle.
#[inline(always)]
pub(crate) fn heap_of<'a>(heap: *const shmkit_heap) -> Result<&'a AnyAllocator, Failure> {
    live(heap)
}

/// Creates the segment `name` managed by an allocator of `kind` (fails with
/// `SHMKIT_E_ALREADY_EXISTS` if it exists). `options` may be null for the
/// defaults.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_create(
    name: *const c_char,
    backend: i32,
    kind: i32,
    options: *const shmkit_options,
    out: *mut *mut shmkit_heap,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        let options = with_options(location(name, backend)?, options);
        hand_out(AnyAllocator::create(kind_of(kind), &options)?, out)
    })
}

/// Attaches the existing segment `name`, whatever allocator manages it.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_attach(
    name: *const c_char,
    backend: i32,
    out: *mut *mut shmkit_heap,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        hand_out(AnyAllocator::attach(&location(name, backend)?)?, out)
    })
}

/// Attaches `name` if it exists (it must be managed by `kind`), creates it
/// otherwise; `*created` (if not null) says which.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_open_or_create(
    name: *const c_char,
    backend: i32,
    kind: i32,
    options: *const shmkit_options,
    out: *mut *mut shmkit_heap,
    created: *mut i32,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        let options = with_options(location(name, backend)?, options);
        let (allocator, opened) = AnyAllocator::open_or_create(kind_of(kind), &options)?;
        if !created.is_null() {
            // SAFETY: a non-null `created` points to an int the caller owns.
            unsafe { created.write(i32::from(opened == Opened::Created)) };
        }
        hand_out(allocator, out)
    })
}

/// Closes a handle (the segment stays, for other processes and for
/// `shmkit_heap_attach`; `shmkit_unlink` removes its name). Null is a no-op.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_close(heap: *mut shmkit_heap) -> shmkit_status {
    guard(|| close(heap))
}

/// Removes the name of segment `name` (processes that map it keep it).
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_unlink(name: *const c_char, backend: i32) -> shmkit_status {
    guard(|| {
        let options = location(name, backend)?;
        shmkit::segment::remove(options.location())?;
        Ok(())
    })
}

/// The allocator kind of a heap (a `shmkit_kind` value).
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_kind(
    heap: *const shmkit_heap,
    out: *mut i32,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        let code = heap_of(heap)?.kind().code();
        // SAFETY: checked non-null; the caller's.
        unsafe { out.write(code as i32) };
        Ok(())
    })
}

/// Allocation and free on whichever allocator the heap has, through its own
/// code (no dynamic dispatch on the hot path).
struct Allocate {
    size: usize,
    align: usize,
}

/// Calls on every allocator use this context: the allocator finds the
/// calling thread itself, and waits for a lock as long as it must.
const CONTEXT: MemContext = MemContext {
    thread: None,
    refuse_waits: false,
};

impl AllocatorVisitor for Allocate {
    type Output = shmkit::Result<u64>;

    fn bump(self, allocator: &BumpAllocator) -> Self::Output {
        Ok(allocator.alloc(self.size, self.align)?.offset().raw())
    }

    fn stack(self, allocator: &StackAllocator) -> Self::Output {
        Ok(allocator.alloc(self.size, self.align)?.offset().raw())
    }

    #[inline(always)]
    fn freeing<A: ShmAllocator>(self, allocator: &A) -> Self::Output {
        allocator.allocate_offset(&CONTEXT, self.size, self.align)
    }
}

struct Free(u64);

impl AllocatorVisitor for Free {
    type Output = shmkit::Result<()>;

    fn bump(self, _: &BumpAllocator) -> Self::Output {
        Err(shmkit::Error::Unsupported(
            "a bump allocator frees nothing single: reset it whole",
        ))
    }

    fn stack(self, allocator: &StackAllocator) -> Self::Output {
        // SAFETY: the C caller gives the block up (the contract of free).
        unsafe { allocator.free(shmkit::Offset::<u8>::from_raw(self.0)) }
    }

    #[inline(always)]
    fn freeing<A: ShmAllocator>(self, allocator: &A) -> Self::Output {
        // SAFETY: the C caller gives the block up; a block that is not live
        // is refused by the allocator, not trusted.
        unsafe { allocator.free_offset(&CONTEXT, self.0) }
    }
}

/// Allocates `size` bytes (aligned to 16) and stores the block's offset in
/// `*offset`. `SHMKIT_E_OUT_OF_MEMORY` when there is no room.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_allocate(
    heap: *const shmkit_heap,
    size: usize,
    offset: *mut u64,
) -> shmkit_status {
    // Its own guard around the body, inlined with the constant alignment,
    // which the allocator's size class lookup then folds (as in a Rust
    // caller's code).
    guard(|| allocate(heap, size, 16, offset))
}

/// Allocates `size` bytes aligned to `align` (a power of two).
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_allocate_aligned(
    heap: *const shmkit_heap,
    size: usize,
    align: usize,
    offset: *mut u64,
) -> shmkit_status {
    guard(|| allocate(heap, size, align, offset))
}

#[inline(always)]
fn allocate(
    heap: *const shmkit_heap,
    size: usize,
    align: usize,
    offset: *mut u64,
) -> Result<(), Failure> {
    check_out(offset, "offset")?;
    let block = heap_of(heap)?.visit(Allocate { size, align })?;
    // SAFETY: checked non-null; the caller's.
    unsafe { offset.write(block) };
    Ok(())
}

/// Frees the block at `offset`. A block that is not live (a double free, a
/// stale or made-up offset) is refused with `SHMKIT_E_INVALID_FREE` and
/// changes nothing.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_free(heap: *const shmkit_heap, offset: u64) -> shmkit_status {
    guard(|| Ok(heap_of(heap)?.visit(Free(offset))?))
}

fn freeing(heap: &AnyAllocator) -> Result<&dyn ShmAllocator, Failure> {
    heap.as_shm_allocator().ok_or_else(|| {
        Failure(
            shmkit_status::SHMKIT_E_UNSUPPORTED,
            format!("a {} allocator does not do this", heap.kind()),
        )
    })
}

/// Resizes the block at `offset` to `new_size` bytes, in place or by moving
/// it (its bytes are kept up to the smaller size); `*new_offset` is where it
/// is now. On failure the old block is untouched.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_reallocate(
    heap: *const shmkit_heap,
    offset: u64,
    new_size: usize,
    new_offset: *mut u64,
) -> shmkit_status {
    guard(|| {
        check_out(new_offset, "new_offset")?;
        let allocator = freeing(heap_of(heap)?)?;
        let block = allocator.full_ptr(offset)?;
        // SAFETY: the C caller owns the block and gives it up for the new
        // one (the contract of realloc); the allocator validates it.
        let moved = unsafe { allocator.reallocate(block, new_size) }?;
        // SAFETY: checked non-null; the caller's.
        unsafe { new_offset.write(moved.offset().raw()) };
        Ok(())
    })
}

/// The bytes the block at `offset` can hold.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_usable_size(
    heap: *const shmkit_heap,
    offset: u64,
    size: *mut usize,
) -> shmkit_status {
    guard(|| {
        check_out(size, "size")?;
        let usable = freeing(heap_of(heap)?)?.usable_size(offset)?;
        // SAFETY: checked non-null; the caller's.
        unsafe { size.write(usable) };
        Ok(())
    })
}

/// The allocator's accounting.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_stats(
    heap: *const shmkit_heap,
    out: *mut shmkit_stats,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        let stats = heap_of(heap)?.try_stats()?;
        let made = shmkit_stats {
            allocated_bytes: stats.allocated_bytes,
            peak_bytes: stats.peak_bytes,
            live_allocations: stats.live_allocations,
            free_bytes: stats.free_bytes,
            largest_free_block: stats.largest_free_block,
            capacity: stats.capacity,
        };
        // SAFETY: checked non-null; the caller's.
        unsafe { out.write(made) };
        Ok(())
    })
}

/// Walks the allocator's structure: `SHMKIT_OK`, `SHMKIT_E_NEEDS_RECOVERY`
/// (a process died mid-operation) or `SHMKIT_E_CORRUPT`.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_check(heap: *const shmkit_heap) -> shmkit_status {
    guard(|| Ok(heap_of(heap)?.check()?))
}

/// Stores a recovery pass's report in `*report` (if not null): the
/// library's, with `more_blocks` freed besides, and `live_after` live
/// allocations at the end.
///
/// # Safety
///
/// `report` is null or valid for a write.
pub(crate) unsafe fn write_report(
    report: *mut shmkit_recovery_report,
    done: &shmkit::RecoveryReport,
    more_blocks: u64,
    live_after: u64,
) {
    if report.is_null() {
        return;
    }
    let made = shmkit_recovery_report {
        locks_taken_over: done.locks_taken_over,
        caches_reclaimed: done.caches_reclaimed,
        blocks_reclaimed: done.blocks_reclaimed + more_blocks,
        bytes_quarantined: done.bytes_quarantined,
        rebuilt: u32::from(done.rebuilt),
        live_before: done.before.live_allocations,
        live_after,
    };
    // SAFETY: checked non-null; valid for a write (the caller's promise).
    unsafe { report.write(made) };
}

/// The recovery pass: mends what processes killed mid-operation left. It
/// runs alone: no other thread of this process may use the segment's
/// allocator meanwhile, and unless `force` is non-zero it refuses
/// (`SHMKIT_E_IN_USE`) while other live processes map the segment.
/// `report` may be null.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_recover(
    heap: *const shmkit_heap,
    force: i32,
    report: *mut shmkit_recovery_report,
) -> shmkit_status {
    guard(|| {
        let allocator = heap_of(heap)?;
        // SAFETY: the C caller promises that no other thread of this
        // process uses the allocator meanwhile (the documented contract).
        let done = unsafe {
            if force != 0 {
                allocator.recover_forced()
            } else {
                allocator.recover()
            }
        }?;
        // SAFETY: `report` is null or the caller's, valid for a write.
        unsafe { write_report(report, &done, 0, done.after.live_allocations) };
        Ok(())
    })
}

/// The local address of `len` bytes at `offset`, checked to lie inside the
/// segment.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_pointer(
    heap: *const shmkit_heap,
    offset: u64,
    len: usize,
    out: *mut *mut c_void,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        let segment = heap_of(heap)?.segment();
        let bytes =
            segment.resolve_array(shmkit::Offset::<u8>::from_raw(offset), len.max(1) as u64)?;
        // SAFETY: checked non-null; the caller's.
        unsafe { out.write(bytes.as_ptr().cast()) };
        Ok(())
    })
}

/// The offset of a local address inside the segment (one that any process
/// turns back into its own address).
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_offset(
    heap: *const shmkit_heap,
    ptr: *const c_void,
    out: *mut u64,
) -> shmkit_status {
    guard(|| {
        check_out(out, "out")?;
        let offset = heap_of(heap)?.segment().offset_of(ptr.cast::<u8>())?;
        // SAFETY: checked non-null; the caller's.
        unsafe { out.write(offset.raw()) };
        Ok(())
    })
}

/// Where the segment is mapped in this process, and its current size.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_base(
    heap: *const shmkit_heap,
    base: *mut *mut c_void,
    size: *mut u64,
) -> shmkit_status {
    guard(|| {
        let segment = heap_of(heap)?.segment();
        if !base.is_null() {
            // SAFETY: non-null; the caller's.
            unsafe { base.write(segment.base().as_ptr().cast()) };
        }
        if !size.is_null() {
            // SAFETY: non-null; the caller's.
            unsafe { size.write(segment.size()) };
        }
        Ok(())
    })
}

/// The application's custom header (reserved with
/// `shmkit_options.custom_header_len`): its address and length (0 if none).
/// Other processes may write it at any time.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_custom_header(
    heap: *const shmkit_heap,
    bytes: *mut *mut c_void,
    len: *mut usize,
) -> shmkit_status {
    guard(|| {
        check_out(bytes, "bytes")?;
        check_out(len, "len")?;
        let (start, length): (NonNull<u8>, usize) = heap_of(heap)?.segment().custom_header_bytes();
        // SAFETY: both checked non-null; the caller's.
        unsafe {
            bytes.write(start.as_ptr().cast());
            len.write(length);
        }
        Ok(())
    })
}

/// Publishes `offset` under `name` (1 to 48 bytes), once: other processes
/// find it with `shmkit_heap_get_root`.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_set_root(
    heap: *const shmkit_heap,
    name: *const c_char,
    offset: u64,
) -> shmkit_status {
    guard(|| {
        let name = text(name, "name")?;
        heap_of(heap)?
            .segment()
            .set_root(name, shmkit::Offset::<u8>::from_raw(offset))?;
        Ok(())
    })
}

/// The offset published under `name`; `SHMKIT_E_NAME_NOT_FOUND` if none.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; a handle is one this API made (or any readable object).
#[no_mangle]
pub unsafe extern "C" fn shmkit_heap_get_root(
    heap: *const shmkit_heap,
    name: *const c_char,
    offset: *mut u64,
) -> shmkit_status {
    guard(|| {
        check_out(offset, "offset")?;
        let name = text(name, "name")?;
        let found = heap_of(heap)?.segment().root::<u8>(name).ok_or_else(|| {
            Failure(
                shmkit_status::SHMKIT_E_NAME_NOT_FOUND,
                format!("no root named {name:?}"),
            )
        })?;
        // SAFETY: checked non-null; the caller's.
        unsafe { offset.write(found.raw()) };
        Ok(())
    })
}
