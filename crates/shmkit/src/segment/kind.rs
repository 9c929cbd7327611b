//! Which allocator manages a segment, as recorded in its header.

use std::fmt;

/// The allocator recorded in a segment's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AllocatorKind {
    /// No allocator: the data area is laid out by the application.
    None,
    /// [`BumpAllocator`](crate::BumpAllocator): lock-free linear allocation.
    Bump,
    /// [`StackAllocator`](crate::StackAllocator): LIFO allocation and free.
    Stack,
    /// Fixed-size slots, a slab per slot size, lock-free free stacks.
    Pool,
    /// General purpose free list (two-level segregated fit).
    FreeList,
    /// Power-of-two blocks with split and merge.
    Buddy,
    /// Fine size classes over a shared page heap.
    SizeClass,
    /// Per-thread caches over the size-class allocator.
    ThreadLocal,
    /// The system allocator of one process (never in a segment).
    Malloc,
    /// A kind this build does not know (a newer shmkit, or corruption).
    Unknown(u32),
    /// An allocator defined outside shmkit, with its own code (>= 0x1000).
    Custom(u32),
}

/// First code available to allocators defined outside shmkit.
pub const CUSTOM_KIND_BASE: u32 = 0x1000;

impl AllocatorKind {
    /// The code stored in the header.
    pub fn code(self) -> u32 {
        match self {
            AllocatorKind::None => 0,
            AllocatorKind::Bump => 1,
            AllocatorKind::Stack => 2,
            AllocatorKind::Pool => 3,
            AllocatorKind::FreeList => 4,
            AllocatorKind::Buddy => 5,
            AllocatorKind::SizeClass => 6,
            AllocatorKind::ThreadLocal => 7,
            AllocatorKind::Malloc => 8,
            AllocatorKind::Unknown(code) | AllocatorKind::Custom(code) => code,
        }
    }

    /// The kind for a stored code.
    pub fn from_code(code: u32) -> AllocatorKind {
        match code {
            0 => AllocatorKind::None,
            1 => AllocatorKind::Bump,
            2 => AllocatorKind::Stack,
            3 => AllocatorKind::Pool,
            4 => AllocatorKind::FreeList,
            5 => AllocatorKind::Buddy,
            6 => AllocatorKind::SizeClass,
            7 => AllocatorKind::ThreadLocal,
            8 => AllocatorKind::Malloc,
            code if code >= CUSTOM_KIND_BASE => AllocatorKind::Custom(code),
            code => AllocatorKind::Unknown(code),
        }
    }

    /// The name used in messages and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            AllocatorKind::None => "none",
            AllocatorKind::Bump => "bump",
            AllocatorKind::Stack => "stack",
            AllocatorKind::Pool => "pool",
            AllocatorKind::FreeList => "free-list",
            AllocatorKind::Buddy => "buddy",
            AllocatorKind::SizeClass => "size-class",
            AllocatorKind::ThreadLocal => "thread-local",
            AllocatorKind::Malloc => "malloc",
            AllocatorKind::Unknown(_) => "unknown",
            AllocatorKind::Custom(_) => "custom",
        }
    }
}

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
