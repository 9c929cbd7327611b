"""Process-safe allocators over POSIX shared memory.

Carve one shared-memory segment into blocks from several processes at
once and refer to them by offsets that mean the same block in every
process. A drop-in for the ``shared_allocator`` package
(``BumpAllocator``, ``FreeListAllocator``, ``SlabAllocator``, call for call
and in its argument order) that also gives a stack, a buddy, a size-class
and a thread-caching allocator, zero-copy views, recovery after a crashed
process, and read-only attachment.

Every allocator keeps its whole state in the segment; objects pickle by
name, so a ``multiprocessing`` worker (fork or spawn) attaches the same
segment. Closing never removes a segment: ``unlink()`` (or
``shmkit.unlink(name)``) does.
"""

from types import TracebackType
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any, Iterable, Optional, Sequence, Type, TypedDict, TypeVar, Union, final

import numpy
import numpy.typing

from typing_extensions import Buffer, Self

_Self = TypeVar("_Self", bound="_Allocator")

__version__: str
__all__ = [
    "BumpAllocator",
    "StackAllocator",
    "FreeListAllocator",
    "SlabAllocator",
    "BuddyAllocator",
    "SizeClassAllocator",
    "ThreadLocalAllocator",
    "WrongAllocatorError",
    "CorruptSegmentError",
    "NeedsRecoveryError",
    "SegmentInUseError",
    "Queue",
    "Dict",
    "unlink",
]

class WrongAllocatorError(ValueError):
    """The segment exists but was made for another allocator kind or layout."""

class CorruptSegmentError(ValueError):
    """The bytes at that name are not an intact shmkit segment, or a
    structure in it is damaged."""

class NeedsRecoveryError(CorruptSegmentError):
    """What ``check()`` raises when the segment holds only what processes
    killed in the middle of an operation left behind (their thread caches,
    blocks half allocated or half freed, counts one operation off), not
    damage: ``recover()`` mends it."""

class SegmentInUseError(RuntimeError):
    """Other processes still use the segment (or run a recovery pass), so
    ``recover()`` refuses to rebuild it (pass ``force=True`` once they are
    stopped)."""

def unlink(name: str) -> None:
    """Remove the shared-memory segment ``name`` without attaching it (one
    a crashed process left behind, say).

    Raises FileNotFoundError if it does not exist. Processes that have it
    mapped keep it until they close.
    """

class _Stats(TypedDict):
    """What ``stats()`` returns.

    Figures about users' blocks come from counters in the segment, shared
    by every process; the ``heap_*`` figures from the allocator's own
    structure (None on a read-only attachment).
    """

    kind: str
    """The allocator: bump, stack, free-list, pool (slabs), buddy,
    size-class, thread-local."""
    capacity: int
    """Bytes users can allocate in all (``capacity``)."""
    used_bytes: int
    """Bytes live blocks take from the capacity: their sizes, or whole
    slots (free list) and slabs (slab) where blocks take those."""
    available_bytes: int
    """``capacity - used_bytes``: what can still be allocated."""
    requested_bytes: int
    """Bytes live blocks were asked for (at most ``used_bytes``)."""
    live_blocks: int
    """Blocks allocated and not yet freed, in every process."""
    peak_used_bytes: int
    """The most ``used_bytes`` has ever been."""
    segment_size: int
    """Bytes of the shared-memory object backed now: the segment header,
    the allocator's state and a first megabyte at creation, then more as
    blocks are allocated (memory is committed as it is used), up to
    ``segment_max_size``."""
    segment_max_size: int
    """Bytes the segment may grow to."""
    heap_free_bytes: Optional[int]
    """Free space in the allocator's heap, block headers not subtracted."""
    largest_free_block: Optional[int]
    """The largest single request the heap can serve now, without growing."""
    fragmentation: Optional[float]
    """``1 - largest_free_block / heap_free_bytes``: 0 when the free space
    is one piece, near 1 when it is scattered."""

class _Recovery(TypedDict):
    """What ``recover()`` returns."""

    locks_taken_over: int
    """Locks a dead process held, taken over and released."""
    caches_reclaimed: int
    """Thread caches of dead processes given back."""
    blocks_reclaimed: int
    """Free blocks that were on no free list, allocatable again."""
    bytes_quarantined: int
    """Bytes fenced off because the headers that describe them were
    destroyed (a view written after its block was freed, say): never handed
    out again, and the rest of the heap stays usable."""
    rebuilt: bool
    """Whether the allocator's free structures were rebuilt."""
    handed_to_dead: list[int]
    """Live blocks last handed to threads that died (see
    ``take_dead_handoffs()``), each reported once: free those your own
    records do not name."""
    live_blocks_before: Optional[int]
    live_blocks_after: int
    """Live blocks as counted before, and as found in the blocks' headers."""
    used_bytes_before: Optional[int]
    used_bytes_after: int
    """``used_bytes`` before, and as recounted from the blocks."""

class SharedArray(numpy.ndarray[Any, Any]):
    """A numpy array over a block of a shmkit segment (``heap.ndarray``).
    It pickles as a handle to the block (allocator, segment name, offset,
    shape, dtype, strides), so a ``multiprocessing`` worker gets a zero-copy
    view of the same bytes; slices and views of it do too. Pickling one
    whose block was freed raises ValueError."""

class Queue:
    """A multi-producer, multi-consumer queue that processes share through
    the shared-memory segment ``name``: ``queue.Queue``'s calls, across
    processes. ``bytes``, ``bytearray`` and ``memoryview`` objects travel
    as raw bytes and come out as ``bytes``; anything else is pickled. ``capacity`` bytes hold the
    messages waiting; ``maxsize`` (0: the ring's 65,536 cells) bounds how
    many, rounded up to a power of two. ``create=False`` attaches a queue
    another process made; it pickles by name. A process killed in the
    middle of a ``put`` or ``get`` leaves the queue usable (at most its own
    message is lost)."""

    name: str
    def __init__(
        self, name: str, capacity: int = 67108864, create: bool = True, maxsize: int = 0
    ) -> None: ...
    @property
    def maxsize(self) -> int:
        """The most messages the queue holds (0: the ring's 65,536 cells)."""
    def put(self, obj: object, block: bool = True, timeout: Optional[float] = None) -> None:
        """Put ``obj``; ``queue.Full`` when no room came within ``timeout``."""
    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        """The next object; ``queue.Empty`` when none came within ``timeout``."""
    def put_nowait(self, obj: object) -> None: ...
    def get_nowait(self) -> Any: ...
    def put_many(
        self, objects: Iterable[object], block: bool = True, timeout: Optional[float] = None
    ) -> None:
        """Put each of ``objects`` in order."""
    def get_many(
        self, max_items: int, block: bool = True, timeout: Optional[float] = None
    ) -> list[Any]:
        """Up to ``max_items`` objects: waits for the first only."""
    def qsize(self) -> int: ...
    def empty(self) -> bool: ...
    def full(self) -> bool: ...
    def stats(self) -> dict[str, int]:
        """``messages``, ``blocks``, ``allocated_bytes``, ``free_bytes``,
        ``capacity``."""
    def check(self) -> None:
        """The segment allocator's integrity walk."""
    def recover(self) -> dict[str, int]:
        """Mends what processes killed mid-put or mid-get left."""
    @property
    def closed(self) -> bool: ...
    def close(self) -> None:
        """Detach; the segment stays until ``unlink()``."""
    def unlink(self) -> None:
        """Remove the segment's name."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

class Dict(MutableMapping[Union[str, bytes], Any]):
    """A ``MutableMapping`` that processes share through the shared-memory
    segment ``name``. Keys are ``str`` or ``bytes``; ``bytes``,
    ``bytearray`` and ``memoryview`` values are stored raw (read back as
    ``bytes``), anything else is pickled.
    ``capacity`` bytes hold the entries; ``create=False`` attaches a dict
    another process made; it pickles by name. The table is split into
    stripes with robust locks of their own; each call is atomic across
    processes, and a process killed in the middle of a write leaves the
    dict usable (readers see the old value or the new one). Iteration walks
    a snapshot taken stripe by stripe."""

    name: str
    def __init__(self, name: str, capacity: int = 67108864, create: bool = True) -> None: ...
    def __getitem__(self, key: Union[str, bytes]) -> Any: ...
    def __setitem__(self, key: Union[str, bytes], value: Any) -> None: ...
    def __delitem__(self, key: Union[str, bytes]) -> None: ...
    def __iter__(self) -> Iterator[Union[str, bytes]]: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object) -> bool: ...
    def get(self, key: Union[str, bytes], default: Any = None) -> Any:  # type: ignore[override]
        """The value of ``key``, or ``default`` (one call, one lock)."""
    def pop(self, key: Union[str, bytes], default: Any = ...) -> Any:  # type: ignore[override]
        """Remove ``key`` and return its value, atomically."""
    def popitem(self) -> tuple[Union[str, bytes], Any]:
        """Remove some entry and return ``(key, value)``."""
    def setdefault(self, key: Union[str, bytes], default: Any = None) -> Any:
        """``key``'s value, after setting it to ``default`` if it had none,
        atomically."""
    def clear(self) -> None:
        """Remove every entry and give their room back."""
    def copy(self) -> dict[Union[str, bytes], Any]:
        """A plain ``dict`` snapshot of the entries."""
    def __ior__(self, other: Any) -> Self: ...  # type: ignore[misc]
    def __or__(self, other: Mapping[Union[str, bytes], Any]) -> dict[Union[str, bytes], Any]:
        """A plain ``dict``: a snapshot of the entries, updated by ``other``."""
    def __ror__(self, other: Mapping[Union[str, bytes], Any]) -> dict[Union[str, bytes], Any]: ...
    def stats(self) -> dict[str, int]:
        """``entries``, ``blocks``, ``allocated_bytes``, ``free_bytes``,
        ``capacity``."""
    def check(self) -> None:
        """Walk the allocator and every stripe."""
    def recover(self) -> dict[str, int]:
        """Mend what processes killed mid-write left."""
    @property
    def closed(self) -> bool: ...
    def close(self) -> None:
        """Detach; the segment stays until ``unlink()``."""
    def unlink(self) -> None:
        """Remove the segment's name."""
    def __enter__(self) -> Self: ...
    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

class _Allocator:
    def ndarray(
        self,
        shape: Union[int, Sequence[int]],
        dtype: numpy.typing.DTypeLike = "float64",
        zero: bool = True,
    ) -> SharedArray:
        """A numpy array of ``shape`` and ``dtype`` whose bytes live in the
        segment (zeroed unless ``zero=False``). MemoryError when the
        segment has no room; ImportError when numpy is not installed."""
    def free_array(self, array: numpy.ndarray[Any, Any]) -> None:
        """Give the array's block back. The array and every view of it must
        not be used afterwards. ValueError for an array that is not over a
        live block of this heap (freed, a plain array, another segment's)."""
    def write(self, offset: int, data: Buffer) -> None:
        """Copy ``data`` (any bytes-like object: bytes, bytearray,
        memoryview, array, numpy array) to the start of the block at
        ``offset``.

        Raises ValueError if ``offset`` is not a live block or ``data`` is
        longer than the block; TypeError if ``data`` is not bytes-like.
        """
    def read(self, offset: int, size: Optional[int] = None) -> bytes:
        """Copy ``size`` bytes (default: the size asked for) from the start
        of the block at ``offset``."""
    def view(self, offset: int, size: Optional[int] = None) -> memoryview:
        """A memoryview of ``size`` bytes (default: the size asked for) at
        the start of the block: no copy, the same bytes in every process
        (``numpy.frombuffer(view, dtype)`` shares them too).

        While the view, or anything made from it, lives, the segment stays
        mapped in this process and ``free()`` of the block, through any
        handle of this process, raises BufferError. Read-only on a
        read-only attachment.
        """
    def free(self, offset: int, *, force: bool = False) -> None:
        """Free the block at ``offset``.

        Raises ValueError, changing nothing, for an offset that is not a
        live block (never allocated, already freed, inside another block);
        BufferError while views of the block live in this process, unless
        ``force``. Bump allocators raise NotImplementedError: they free
        everything with ``reset()``.
        """
    def size_of(self, offset: int) -> int:
        """The size asked for when the block at ``offset`` was allocated."""
    def used_bytes(self) -> int:
        """Bytes live blocks take from the capacity, over all processes."""
    def available_bytes(self) -> int:
        """Bytes that can still be allocated (``capacity - used_bytes()``)."""
    def stats(self) -> _Stats:
        """The accounting (each key is explained in the stub's ``_Stats``)."""
    def check(self) -> None:
        """Walk the allocator's structure; raise CorruptSegmentError with
        the first inconsistency, or its subclass NeedsRecoveryError when
        all it finds is what killed processes left (``recover()`` mends
        that). On a read-only attachment it raises
        io.UnsupportedOperation: the walk takes the allocator's lock."""
    def take_dead_handoffs(self) -> list[int]:
        """The blocks last handed to threads that have since died, which
        they may not have stored anywhere before dying: each offset once.
        Free those your own records do not name. Blocks whose allocation
        never returned to Python, or whose free never finished, are freed
        here instead of returned. Safe while other processes run."""
    def recover(self, *, force: bool = False) -> _Recovery:
        """Mend what processes that died in the middle of an operation left
        behind (locks, caches, free blocks on no list, destroyed headers)
        and recount the accounting from the blocks.

        Runs holding the interpreter lock, so no other thread of this
        process uses the segment meanwhile, and the segment's recovery lock,
        so no process attaches meanwhile. Raises SegmentInUseError while
        other processes have the segment open or mapped (whatever user they
        run as), unless ``force`` (recovery rebuilds structures they would
        be using), and while calls of this process wait for the
        allocator's lock.
        """
    @property
    def capacity(self) -> int:
        """Bytes users can allocate; the segment is larger (headers)."""
    @property
    def total_size(self) -> int:
        """Bytes of the shared-memory object backed now; it grows as blocks
        are allocated (see ``stats()["segment_size"]``)."""
    @property
    def name(self) -> str:
        """The shared-memory name."""
    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called."""
    @property
    def read_only(self) -> bool:
        """Whether the segment is attached read-only."""
    def close(self) -> None:
        """Detach; the segment stays for other processes until ``unlink()``,
        and live views keep it mapped here until they are released. Closing
        again does nothing; any other call raises ValueError."""
    def unlink(self) -> None:
        """Remove the segment's name, also after ``close()``; attached
        processes keep their mapping. FileNotFoundError if it is gone."""
    def __enter__(self: _Self) -> _Self: ...
    def __exit__(
        self,
        kind: Optional[Type[BaseException]],
        value: Optional[BaseException],
        traceback: Optional[TracebackType],
    ) -> bool: ...

@final
class BumpAllocator(_Allocator):
    """Lock-free bump allocation; frees everything at once with ``reset()``.

    ``capacity`` bytes can be allocated: ``capacity // n`` blocks of ``n``
    bytes. ``create=False`` attaches an existing segment (its own capacity):
    FileNotFoundError if the name does not exist, WrongAllocatorError if it
    holds another kind. ``create=True`` raises FileExistsError if the name
    exists. ``read_only=True`` (with ``create=False``) maps it read-only:
    reads and views work, changes raise io.UnsupportedOperation.
    ``zero_on_free`` has no effect on a bump allocator.
    """
    def __new__(
        cls,
        name: str,
        capacity: int = 1048576,
        create: bool = True,
        *,
        read_only: bool = False,
        zero_on_free: bool = False,
    ) -> Self: ...
    def allocate(self, size: int, alignment: int = 8) -> Optional[int]:
        """Allocate ``size`` bytes at a multiple of ``alignment`` (a power
        of two); the offset, or None when the capacity is used up."""
    def reset(self, *, force: bool = False) -> None:
        """Forget every block at once, in every process (all of them must
        be done with the old offsets, which are refused from now on).
        Raises BufferError while views live in this process, unless
        ``force``."""

@final
class StackAllocator(_Allocator):
    """Blocks freed in the reverse order of allocation (ValueError for any
    other block). Arguments as for ``BumpAllocator``; ``zero_on_free`` has
    no effect on a stack."""
    def __new__(
        cls,
        name: str,
        capacity: int = 1048576,
        create: bool = True,
        *,
        read_only: bool = False,
        zero_on_free: bool = False,
    ) -> Self: ...
    def allocate(self, size: int, alignment: int = 8) -> Optional[int]:
        """Allocate ``size`` bytes at a multiple of ``alignment``; the
        offset, or None when the capacity is used up."""

@final
class FreeListAllocator(_Allocator):
    """General purpose, in slots of ``slot_size`` bytes: ``num_slots`` of
    them (default ``capacity // slot_size``; ``capacity`` is ignored when
    ``num_slots`` is given). A block takes whole slots, so any size up to
    the capacity can be allocated, and freed memory is reused at any size.

    ``create=False`` attaches an existing segment (its own slots);
    ``read_only`` and ``zero_on_free`` (zero every block as it is freed, in
    every process) are keyword-only.
    """
    def __new__(
        cls,
        name: str,
        capacity: int = 10485760,
        slot_size: int = 256,
        num_slots: Optional[int] = None,
        create: bool = True,
        *,
        read_only: bool = False,
        zero_on_free: bool = False,
    ) -> Self: ...
    def allocate(self, size: int = 0, alignment: int = 8) -> Optional[int]:
        """Allocate ``size`` bytes (0: one slot) at a multiple of
        ``alignment``; the offset, or None when the slots are used up. The
        block may use all of its slots."""
    def available_slots(self) -> int:
        """Slots not taken by live blocks."""
    def used_slots(self) -> int:
        """Slots taken by live blocks."""
    @property
    def slot_size(self) -> int:
        """Bytes per slot."""
    @property
    def num_slots(self) -> int:
        """Slots in all."""

@final
class SlabAllocator(_Allocator):
    """``num_slabs`` slabs of ``slab_size`` bytes, one per allocation,
    lock-free. Slabs are 16-byte aligned."""
    def __new__(
        cls,
        name: str,
        slab_size: int = 256,
        num_slabs: int = 4096,
        create: bool = True,
        *,
        read_only: bool = False,
        zero_on_free: bool = False,
    ) -> Self: ...
    def allocate(self, size: Optional[int] = None, alignment: int = 8) -> Optional[int]:
        """Allocate one slab; ``size`` (default: the slab size) is the
        length ``read`` and ``view`` default to. ValueError if it does not
        fit in a slab or ``alignment`` exceeds 16; None when every slab is
        taken."""
    def available_slabs(self) -> int:
        """Slabs not in use."""
    def used_slabs(self) -> int:
        """Slabs in use."""
    @property
    def slab_size(self) -> int:
        """Bytes per slab."""
    @property
    def num_slabs(self) -> int:
        """Slabs in all."""

@final
class BuddyAllocator(_Allocator):
    """Power-of-two blocks that split and merge."""
    def __new__(
        cls,
        name: str,
        capacity: int = 10485760,
        create: bool = True,
        *,
        read_only: bool = False,
        zero_on_free: bool = False,
    ) -> Self: ...
    def allocate(self, size: int, alignment: int = 8) -> Optional[int]:
        """Allocate ``size`` bytes at a multiple of ``alignment``; the
        offset, or None when full."""

@final
class SizeClassAllocator(_Allocator):
    """Fine size classes over a lock-free page heap."""
    def __new__(
        cls,
        name: str,
        capacity: int = 10485760,
        create: bool = True,
        *,
        read_only: bool = False,
        zero_on_free: bool = False,
    ) -> Self: ...
    def allocate(self, size: int, alignment: int = 8) -> Optional[int]:
        """Allocate ``size`` bytes at a multiple of ``alignment``; the
        offset, or None when full."""

@final
class ThreadLocalAllocator(_Allocator):
    """Per-thread caches in the segment over size classes."""
    def __new__(
        cls,
        name: str,
        capacity: int = 10485760,
        create: bool = True,
        *,
        read_only: bool = False,
        zero_on_free: bool = False,
    ) -> Self: ...
    def allocate(self, size: int, alignment: int = 8) -> Optional[int]:
        """Allocate ``size`` bytes at a multiple of ``alignment``; the
        offset, or None when full."""
