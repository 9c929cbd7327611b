"""Process-safe allocators over POSIX shared memory.

Every allocator object attaches one named segment. ``allocate`` returns an
offset that means the same block in every process that attaches the name;
``read``, ``write`` and ``view`` are bounded by that block. Objects pickle
by name, so a ``multiprocessing`` child (fork or spawn) attaches the same
segment. Closing or dropping an object never removes the segment; only
``unlink()`` does.
"""

from types import TracebackType
from typing import Any, Dict, Optional, Type, TypeVar, Union

_Self = TypeVar("_Self")
_Bytes = Union[bytes, bytearray, memoryview]

__version__: str

class WrongAllocatorError(ValueError):
    """The segment exists but was made for another allocator kind or layout."""

class CorruptSegmentError(ValueError):
    """The bytes at that name are not an intact shmkit segment."""

class _Allocator:
    def allocate(self, size: int, alignment: int = 8) -> Optional[int]:
        """Allocate ``size`` bytes at a multiple of ``alignment``.

        Returns the offset, or None when the segment is full. Raises
        ValueError for a size below 1 or an alignment that is not a power
        of two.
        """
    def write(self, offset: int, data: _Bytes) -> None:
        """Copy ``data`` to the start of the block at ``offset``.

        Raises ValueError if ``offset`` is not a live block or ``data`` is
        longer than the block.
        """
    def read(self, offset: int, size: Optional[int] = None) -> bytes:
        """Copy ``size`` bytes (default: the whole block) from the block."""
    def view(self, offset: int, size: Optional[int] = None) -> memoryview:
        """A writable view of the block's bytes: no copy, shared with every
        process (``numpy.frombuffer(view, dtype)`` shares it too)."""
    def free(self, offset: int) -> None:
        """Free the block at ``offset``.

        Raises ValueError, changing nothing, for an offset that is not a
        live block (never allocated, or already freed). Bump allocators
        raise NotImplementedError: they free everything with ``reset()``.
        """
    def size_of(self, offset: int) -> int:
        """The size asked for when the block at ``offset`` was allocated."""
    def reset(self) -> None:
        """Forget every block at once (bump allocators)."""
    def used_bytes(self) -> int:
        """Bytes users asked for and still hold, over all processes."""
    def available_bytes(self) -> int:
        """Bytes the allocator can still hand out."""
    def stats(self) -> Dict[str, Any]:
        """The allocator's accounting: used and free bytes, live blocks,
        peak, largest free block, fragmentation."""
    def check(self) -> None:
        """Walk the allocator's structure; raise ValueError on the first
        inconsistency."""
    @property
    def capacity(self) -> int:
        """The segment's size in bytes."""
    @property
    def name(self) -> str:
        """The shared-memory name."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    def close(self) -> None:
        """Detach; the segment stays for other processes until ``unlink()``.
        Any later call raises ValueError."""
    def unlink(self) -> None:
        """Remove the segment's name; attached processes keep their mapping."""
    def __enter__(self: _Self) -> _Self: ...
    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

class BumpAllocator(_Allocator):
    """Lock-free bump allocation; frees everything at once with reset().

    ``create=False`` attaches an existing segment: FileNotFoundError if the
    name does not exist, WrongAllocatorError if it holds another kind.
    ``create=True`` raises FileExistsError if the name exists.
    """
    def __init__(self, name: str, capacity: Optional[int] = None, create: bool = True) -> None: ...

class StackAllocator(_Allocator):
    """Blocks freed in the reverse order of allocation.

    ``create=False`` attaches an existing segment: FileNotFoundError if the
    name does not exist, WrongAllocatorError if it holds another kind.
    ``create=True`` raises FileExistsError if the name exists.
    """
    def __init__(self, name: str, capacity: Optional[int] = None, create: bool = True) -> None: ...

class FreeListAllocator(_Allocator):
    """General purpose: any size up to the capacity, freed memory reused at any size.

    `slot_size` and `num_slots` (accepted from fixed-slot versions) set the
    capacity when `capacity` is not given.

    ``create=False`` attaches an existing segment: FileNotFoundError if the
    name does not exist, WrongAllocatorError if it holds another kind.
    ``create=True`` raises FileExistsError if the name exists.
    """
    def __init__(self, name: str, capacity: Optional[int] = None, create: bool = True, slot_size: Optional[int] = None, num_slots: Optional[int] = None) -> None: ...

class SlabAllocator(_Allocator):
    """Fixed-size slots of `slab_size` bytes, `num_slabs` of them, lock-free.

    ``create=False`` attaches an existing segment: FileNotFoundError if the
    name does not exist, WrongAllocatorError if it holds another kind.
    ``create=True`` raises FileExistsError if the name exists.
    """
    def __init__(self, name: str, slab_size: int = 256, num_slabs: int = 4096, create: bool = True) -> None: ...

class BuddyAllocator(_Allocator):
    """Power-of-two blocks that split and merge.

    ``create=False`` attaches an existing segment: FileNotFoundError if the
    name does not exist, WrongAllocatorError if it holds another kind.
    ``create=True`` raises FileExistsError if the name exists.
    """
    def __init__(self, name: str, capacity: Optional[int] = None, create: bool = True) -> None: ...

class SizeClassAllocator(_Allocator):
    """Fine size classes over a lock-free page heap.

    ``create=False`` attaches an existing segment: FileNotFoundError if the
    name does not exist, WrongAllocatorError if it holds another kind.
    ``create=True`` raises FileExistsError if the name exists.
    """
    def __init__(self, name: str, capacity: Optional[int] = None, create: bool = True) -> None: ...

class ThreadLocalAllocator(_Allocator):
    """Per-thread caches in the segment over size classes.

    ``create=False`` attaches an existing segment: FileNotFoundError if the
    name does not exist, WrongAllocatorError if it holds another kind.
    ``create=True`` raises FileExistsError if the name exists.
    """
    def __init__(self, name: str, capacity: Optional[int] = None, create: bool = True) -> None: ...
