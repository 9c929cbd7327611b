"""Process-safe allocators over POSIX shared memory.

Carve one shared-memory segment into blocks from several processes at
once and refer to them by offsets that mean the same block in every
process. A drop-in for the ``shared_allocator`` package
(``BumpAllocator``, ``FreeListAllocator``, ``SlabAllocator``, call for call
and in its argument order) that also gives a stack, a buddy, a size-class
and a thread-caching allocator, zero-copy views, recovery after a crashed
process, and read-only attachment.

    >>> import shmkit
    >>> heap = shmkit.FreeListAllocator("doc-heap", capacity=1 << 20)
    >>> offset = heap.allocate(64)
    >>> heap.write(offset, b"shared")
    >>> heap.read(offset, 6)
    b'shared'
    >>> heap.free(offset)
    >>> heap.close(); heap.unlink()

Every allocator keeps its whole state in the segment; objects pickle by
name, so a ``multiprocessing`` worker (fork or spawn) attaches the same
segment. Closing never removes a segment: ``unlink()`` (or
``shmkit.unlink(name)``) does.
"""

from shmkit._native import (
    BuddyAllocator,
    BumpAllocator,
    CorruptSegmentError,
    FreeListAllocator,
    NeedsRecoveryError,
    SegmentInUseError,
    SizeClassAllocator,
    SlabAllocator,
    StackAllocator,
    ThreadLocalAllocator,
    WrongAllocatorError,
    __version__,
    unlink,
)

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

from shmkit import _arrays
from shmkit._dict import Dict
from shmkit._queue import Queue

# Shared numpy arrays on every allocator (numpy is imported when one is
# made): ``heap.ndarray(shape, dtype)`` and ``heap.free_array(array)``.
for _allocator in (
    BumpAllocator,
    StackAllocator,
    FreeListAllocator,
    SlabAllocator,
    BuddyAllocator,
    SizeClassAllocator,
    ThreadLocalAllocator,
):
    _allocator.ndarray = _arrays.ndarray
    _allocator.free_array = _arrays.free_array
del _allocator


def __getattr__(name):
    # ``shmkit.SharedArray``, imported on first use: it subclasses numpy's
    # ndarray, and numpy is optional (so it stays out of ``__all__``: a
    # ``from shmkit import *`` must not need numpy).
    if name == "SharedArray":
        return _arrays._shared_array()
    raise AttributeError(f"module 'shmkit' has no attribute {name!r}")


def __dir__():
    # The API, not the private modules the package imports.
    return sorted(__all__ + ["SharedArray"])


# The import bound the native submodule here; it is no part of the API.
del _native  # noqa: F821
