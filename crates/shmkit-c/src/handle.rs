//! What every opaque handle of the API shares: a magic word first (so a
//! pointer that is not a live handle of the expected type is refused after
//! reading 8 bytes, never followed), made by `Box::into_raw` and ended once.

use crate::status::Failure;

/// What a closed handle holds until its memory goes back.
const CLOSED: u64 = u64::from_le_bytes(*b"shmkDEAD");

/// A handle type: a `repr(C)` struct whose first field is the magic word.
pub(crate) trait Handle: Sized {
    /// The magic word of a live handle of this type.
    const LIVE: u64;
    /// What C calls it, for messages.
    const WHAT: &'static str;
    /// What the handle holds.
    type Inner;

    /// A live handle around `inner`.
    fn wrap(inner: Self::Inner) -> Self;
    fn magic(&self) -> u64;
    fn magic_mut(&mut self) -> &mut u64;
    fn inner(&self) -> &Self::Inner;
}

/// The live handle behind a caller's pointer.
#[inline(always)]
pub(crate) fn live<'a, H: Handle + 'a>(handle: *const H) -> Result<&'a H::Inner, Failure> {
    // SAFETY: a non-null handle points to memory the caller got from this
    // API (or at least to readable memory): its magic word, the first field
    // of every handle (`repr(C)`), tells a live handle of this type from a
    // closed one or another object.
    match unsafe { handle.as_ref() } {
        Some(handle) if handle.magic() == H::LIVE => Ok(handle.inner()),
        Some(_) => Err(Failure::bad_handle(H::WHAT)),
        None => Err(Failure::null(H::WHAT)),
    }
}

/// Checks an out-pointer before anything is made, so that a refused call
/// leaves nothing behind.
pub(crate) fn check_out<T>(out: *mut T, what: &str) -> Result<(), Failure> {
    if out.is_null() {
        Err(Failure::null(what))
    } else {
        Ok(())
    }
}

/// Stores a new handle around `inner` in `*out` (checked non-null first).
pub(crate) fn hand_out<H: Handle>(inner: H::Inner, out: *mut *mut H) -> Result<(), Failure> {
    check_out(out, "out")?;
    let handle = Box::into_raw(Box::new(H::wrap(inner)));
    // SAFETY: checked non-null; it points to a pointer the caller owns.
    unsafe { out.write(handle) };
    Ok(())
}

/// Ends a handle (null is a no-op).
pub(crate) fn close<H: Handle>(handle: *mut H) -> Result<(), Failure> {
    if handle.is_null() {
        return Ok(());
    }
    live(handle)?;
    // SAFETY: a live handle was made by `Box::into_raw` in `hand_out` and is
    // closed once: its magic is checked above and changed before the free
    // (a second close of the same pointer is the caller's error, as a
    // second `free` is).
    unsafe {
        *(*handle).magic_mut() = CLOSED;
        drop(Box::from_raw(handle));
    }
    Ok(())
}

/// Declares a handle type: `handle!(shmkit_heap, b"shmkHEAP", "heap",
/// allocator: AnyAllocator, "doc")`.
macro_rules! handle {
    ($(#[$doc:meta])* $name:ident, $magic:literal, $what:literal, $field:ident: $inner:ty) => {
        $(#[$doc])*
        // The magic word first (`repr(C)`): a foreign pointer is read only
        // there.
        #[repr(C)]
        #[allow(non_camel_case_types)]
        pub struct $name {
            magic: u64,
            $field: $inner,
        }

        impl $crate::handle::Handle for $name {
            const LIVE: u64 = u64::from_le_bytes(*$magic);
            const WHAT: &'static str = $what;
            type Inner = $inner;

            fn wrap(inner: $inner) -> Self {
                $name {
                    magic: Self::LIVE,
                    $field: inner,
                }
            }

            fn magic(&self) -> u64 {
                self.magic
            }

            fn magic_mut(&mut self) -> &mut u64 {
                &mut self.magic
            }

            fn inner(&self) -> &$inner {
                &self.$field
            }
        }
    };
}
pub(crate) use handle;
