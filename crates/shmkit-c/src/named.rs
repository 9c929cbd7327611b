//! Named objects from C: find, find-or-construct (by size and a caller's
//! initializer) and destroy, in the same directory Rust's `NamedObjects`
//! uses. A C object is recorded with its size, alignment and a type name
//! of the caller's choosing, and finding it as another type is an error.

use std::ffi::{c_char, c_void};

use shmkit::named::{BytesType, NamedObjects};
use shmkit::ShmAllocator;

use crate::heap::{heap_of, shmkit_heap, text};
use crate::status::{guard, shmkit_status, Failure};

/// The type of a named object: its size, alignment and a type name the
/// program chooses ("job_queue v2", say). All three must match to find it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct shmkit_named_type {
    /// Bytes of the object.
    pub size: u64,
    /// Its alignment (a power of two).
    pub align: u64,
    /// The type's name (NUL-terminated).
    pub type_name: *const c_char,
}

/// Fills a fresh object: `object` holds `size` bytes; `context` is the
/// caller's pointer, passed through.
#[allow(non_camel_case_types)]
pub type shmkit_named_init =
    Option<unsafe extern "C" fn(object: *mut c_void, size: usize, context: *mut c_void)>;

/// The named objects of a heap, and the type a caller described.
fn open<'a>(
    heap: *const shmkit_heap,
    name: *const c_char,
    kind: *const shmkit_named_type,
) -> Result<
    (
        NamedObjects<'a, dyn ShmAllocator + 'a>,
        &'a str,
        BytesType<'a>,
    ),
    Failure,
> {
    let name = text(name, "name")?;
    // SAFETY: a non-null `kind` points to a description the caller owns.
    let kind = unsafe { kind.as_ref() }.ok_or_else(|| Failure::null("type"))?;
    let type_name = text(kind.type_name, "type name")?;
    let allocator = heap_of(heap)?.as_shm_allocator().ok_or_else(|| {
        Failure(
            shmkit_status::SHMKIT_E_UNSUPPORTED,
            "named objects need an allocator that frees (not bump or stack)".into(),
        )
    })?;
    let names = NamedObjects::open(allocator)?;
    let layout = BytesType {
        size: kind.size,
        align: kind.align,
        type_name,
    };
    Ok((names, name, layout))
}

fn write_offset(offset: *mut u64, value: u64) -> Result<(), Failure> {
    if offset.is_null() {
        return Err(Failure::null("offset"));
    }
    // SAFETY: checked non-null; the caller's.
    unsafe { offset.write(value) };
    Ok(())
}

/// The offset of the object `name` of type `*type`;
/// `SHMKIT_E_NAME_NOT_FOUND` if there is none, `SHMKIT_E_WRONG_TYPE` if it
/// was filed as another type.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents.
#[no_mangle]
pub unsafe extern "C" fn shmkit_named_find(
    heap: *const shmkit_heap,
    name: *const c_char,
    kind: *const shmkit_named_type,
    offset: *mut u64,
) -> shmkit_status {
    guard(|| {
        let (names, name, layout) = open(heap, name, kind)?;
        match names.find_bytes(name, &layout)? {
            Some(found) => write_offset(offset, found.offset().raw()),
            None => Err(Failure(
                shmkit_status::SHMKIT_E_NAME_NOT_FOUND,
                format!("no object named {name:?}"),
            )),
        }
    })
}

/// The object `name` of type `*type`, made if there is none: `init` (if not
/// null) fills its fresh bytes first (else they are zero), with no lock
/// held. Racing callers, in any process, all get the same object.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; `init` writes at most `size` bytes at `object`.
#[no_mangle]
pub unsafe extern "C" fn shmkit_named_find_or_construct(
    heap: *const shmkit_heap,
    name: *const c_char,
    kind: *const shmkit_named_type,
    init: shmkit_named_init,
    context: *mut c_void,
    offset: *mut u64,
) -> shmkit_status {
    guard(|| {
        if offset.is_null() {
            return Err(Failure::null("offset"));
        }
        let (names, name, layout) = open(heap, name, kind)?;
        let object = names.find_or_construct_bytes(name, &layout, |bytes| {
            bytes.fill(0);
            if let Some(init) = init {
                // SAFETY: the caller's initializer, on the fresh object's
                // `size` bytes (its contract).
                unsafe { init(bytes.as_mut_ptr().cast(), bytes.len(), context) };
            }
        })?;
        write_offset(offset, object.offset().raw())
    })
}

/// Removes `name` and frees its object (nothing may use it afterwards).
/// `SHMKIT_E_NAME_NOT_FOUND` or `SHMKIT_E_WRONG_TYPE` change nothing.
///
/// # Safety
///
/// Every pointer argument is null or valid for the call, as the C API
/// documents; nothing in this process uses the object afterwards.
#[no_mangle]
pub unsafe extern "C" fn shmkit_named_destroy(
    heap: *const shmkit_heap,
    name: *const c_char,
    kind: *const shmkit_named_type,
) -> shmkit_status {
    guard(|| {
        let (names, name, layout) = open(heap, name, kind)?;
        // SAFETY: the caller's promise (nothing uses the object after).
        unsafe { names.destroy_bytes(name, &layout) }?;
        Ok(())
    })
}
