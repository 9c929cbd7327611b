//! The marker for types that may be placed in shared memory.

use std::sync::atomic::{
    AtomicI16, AtomicI32, AtomicI64, AtomicI8, AtomicIsize, AtomicU16, AtomicU32, AtomicU64,
    AtomicU8, AtomicUsize,
};

/// A type whose values may live in a segment that several processes map.
///
/// # Safety
///
/// Implementing this trait promises all of:
///
/// * **No addresses.** The type holds no pointer, reference, `Box`, `Vec` or
///   anything else whose meaning depends on where this process mapped memory.
///   Refer to other objects in the segment with [`Offset`](crate::Offset) or
///   [`ShmPtr`](crate::ShmPtr).
/// * **Any bit pattern is a valid value.** Another process, or a crashed one,
///   may leave any bytes behind; reading them as `Self` must not be undefined
///   behaviour. (`bool`, `char`, enums and `NonZero*` do not qualify.)
/// * **A stable layout**: `#[repr(C)]` or `#[repr(transparent)]` for structs,
///   so every process (and every build) agrees on field offsets.
///
/// A process that dies never runs destructors, so do not rely on `Drop` for
/// values in a segment; it is allowed, but it is not a safety guarantee.
///
/// Implemented for integers, floats, arrays of `ShmSafe` types, atomics and
/// shmkit's offset types. For your own structs use [`shm_struct!`](crate::shm_struct),
/// which checks every field at compile time and writes no `unsafe` for you.
///
/// Safe code cannot implement this trait, so a `Box`, `Vec`, reference or raw
/// pointer can never be placed in a segment by accident:
///
/// ```compile_fail
/// shmkit::shm_struct! {
///     pub struct Bad { pub data: Box<u64> }
/// }
/// ```
///
/// ```compile_fail
/// shmkit::shm_struct! {
///     pub struct AlsoBad { pub link: *const u8 }
/// }
/// ```
///
/// Nor can a struct with hidden padding:
///
/// ```compile_fail
/// shmkit::shm_struct! {
///     pub struct Padded { pub small: u8, pub big: u64 }
/// }
/// ```
pub unsafe trait ShmSafe: Sized + 'static {}

macro_rules! impl_shm_safe {
    ($($t:ty),* $(,)?) => {
        // SAFETY: plain integers, floats and atomics hold no address and
        // accept every bit pattern.
        $(unsafe impl ShmSafe for $t {})*
    };
}

impl_shm_safe!(
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64,
    AtomicU8,
    AtomicU16,
    AtomicU32,
    AtomicU64,
    AtomicUsize,
    AtomicI8,
    AtomicI16,
    AtomicI32,
    AtomicI64,
    AtomicIsize,
);

// SAFETY: an array of `ShmSafe` elements has no padding of its own and inherits
// every property from its element type.
unsafe impl<T: ShmSafe, const N: usize> ShmSafe for [T; N] {}

// SAFETY: a zero-sized marker holds no bytes at all.
unsafe impl<T: ?Sized + 'static> ShmSafe for std::marker::PhantomData<T> {}

/// Defines `#[repr(C)]` structs that may live in a segment.
///
/// Every field type must itself be [`ShmSafe`] and the struct may contain no
/// padding (add explicit `_pad: [u8; N]` fields where the compiler would
/// insert some); the macro checks both at compile time and then implements
/// the trait, so user code writes no `unsafe`. Attributes and doc comments
/// pass through.
///
/// ```
/// use shmkit::{shm_struct, Offset, ShmSafe};
/// use std::sync::atomic::AtomicU64;
///
/// shm_struct! {
///     /// A node of a list that lives in shared memory.
///     pub struct Node {
///         pub value: u64,
///         pub hits: AtomicU64,
///         pub next: Offset<Node>,
///     }
/// }
///
/// fn takes_shm_safe<T: ShmSafe>() {}
/// takes_shm_safe::<Node>();
/// ```
#[macro_export]
macro_rules! shm_struct {
    ($(
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $($(#[$fmeta:meta])* $fvis:vis $field:ident : $fty:ty),* $(,)?
        }
    )*) => {$(
        $(#[$meta])*
        #[repr(C)]
        $vis struct $name {
            $($(#[$fmeta])* $fvis $field: $fty,)*
        }

        const _: () = {
            const fn assert_shm_safe<T: $crate::ShmSafe>() {}
            $(assert_shm_safe::<$fty>();)*
            // No padding: every byte of the struct belongs to a field, so no
            // uninitialized byte is ever written into (or read from) a segment.
            assert!(
                ::core::mem::size_of::<$name>() == 0 $(+ ::core::mem::size_of::<$fty>())*,
                "shm_struct! types may not contain padding; add explicit padding fields"
            );
        };

        // SAFETY: the struct is `#[repr(C)]` and every field was checked above
        // to be `ShmSafe`, so the struct holds no address, accepts every bit
        // pattern in its fields (padding carries no validity requirement).
        unsafe impl $crate::ShmSafe for $name {}
    )*};
}
