//! Which allocator manages a segment, as recorded in its header.

use std::fmt;

/// The allocators a header can name: one line each (variant, stored code,
/// name on the command line and in messages, what it is). Adding an
/// allocator adds its line here (the code is part of the segment format)
/// and registers its type once in `alloc`'s list.
macro_rules! allocator_kinds {
    ($($(#[$doc:meta])* $variant:ident = $code:literal, $name:literal;)*) => {
        /// The allocator recorded in a segment's header.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum AllocatorKind {
            $($(#[$doc])* $variant,)*
            /// A kind this build does not know (a newer shmkit, or corruption).
            Unknown(u32),
            /// An allocator defined outside shmkit, with its own code (>= 0x1000).
            Custom(u32),
        }

        impl AllocatorKind {
            /// The code stored in the header.
            pub fn code(self) -> u32 {
                match self {
                    $(AllocatorKind::$variant => $code,)*
                    AllocatorKind::Unknown(code) | AllocatorKind::Custom(code) => code,
                }
            }

            /// The kind for a stored code.
            pub fn from_code(code: u32) -> AllocatorKind {
                match code {
                    $($code => AllocatorKind::$variant,)*
                    code if code >= CUSTOM_KIND_BASE => AllocatorKind::Custom(code),
                    code => AllocatorKind::Unknown(code),
                }
            }

            /// The name used in messages and on the command line.
            pub fn name(self) -> &'static str {
                match self {
                    $(AllocatorKind::$variant => $name,)*
                    AllocatorKind::Unknown(_) => "unknown",
                    AllocatorKind::Custom(_) => "custom",
                }
            }
        }
    };
}

allocator_kinds! {
    /// No allocator: the data area is laid out by the application.
    None = 0, "none";
    /// [`BumpAllocator`](crate::BumpAllocator): lock-free linear allocation.
    Bump = 1, "bump";
    /// [`StackAllocator`](crate::StackAllocator): LIFO allocation and free.
    Stack = 2, "stack";
    /// Fixed-size slots, a slab per slot size, lock-free free stacks.
    Pool = 3, "pool";
    /// General purpose free list (two-level segregated fit).
    FreeList = 4, "free-list";
    /// Power-of-two blocks with split and merge.
    Buddy = 5, "buddy";
    /// Fine size classes over a shared page heap.
    SizeClass = 6, "size-class";
    /// Per-thread caches over the size-class allocator.
    ThreadLocal = 7, "thread-local";
    /// The system allocator of one process (never in a segment).
    Malloc = 8, "malloc";
}

/// First code available to allocators defined outside shmkit.
pub const CUSTOM_KIND_BASE: u32 = 0x1000;

impl fmt::Display for AllocatorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllocatorKind::Unknown(code) | AllocatorKind::Custom(code) => {
                write!(f, "{}({code:#x})", self.name())
            }
            _ => f.write_str(self.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for kind in [
            AllocatorKind::None,
            AllocatorKind::Bump,
            AllocatorKind::Stack,
            AllocatorKind::Pool,
            AllocatorKind::FreeList,
            AllocatorKind::Buddy,
            AllocatorKind::SizeClass,
            AllocatorKind::ThreadLocal,
            AllocatorKind::Malloc,
            AllocatorKind::Unknown(77),
            AllocatorKind::Custom(CUSTOM_KIND_BASE + 5),
        ] {
            assert_eq!(AllocatorKind::from_code(kind.code()), kind);
        }
    }
}
