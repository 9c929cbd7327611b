"""numpy arrays whose bytes live in a shmkit segment.

``heap.ndarray(shape, dtype)`` allocates a block and returns a
:class:`SharedArray` over it: a numpy array like any other, whose pickle
(what ``multiprocessing`` sends to a worker, by fork or spawn) is a handle
(allocator class, segment name, offset, shape, dtype, strides), never the
data. The receiver attaches the segment by name, once per process, and
gets a zero-copy view of the same bytes. ``heap.free_array(arr)`` gives the
block back; a freed or foreign handle is refused with ``ValueError``.

numpy is optional for the rest of the package: it is imported here only
when an array is made or rebuilt.
"""

import threading

_NUMPY_MISSING = (
    "shmkit's shared arrays need numpy (pip install numpy); the allocators "
    "work without it"
)

# Alignment of every array block: enough for any numpy scalar type and for
# vector loads.
_ALIGNMENT = 16

# Segments this process attached to rebuild arrays, by (class name, segment
# name, read-only): one mapping per segment, however many arrays arrive.
_attached: "dict[tuple[str, str, bool], object]" = {}
_attached_lock = threading.Lock()


# numpy and the SharedArray class, once imported (a rebuild is on the path
# of every array a worker receives: no import machinery there).
_numpy_module = None
_shared_array_class = None


def _numpy():
    global _numpy_module
    if _numpy_module is None:
        try:
            import numpy
        except ImportError as missing:
            raise ImportError(_NUMPY_MISSING) from missing
        _numpy_module = numpy
    return _numpy_module


def _shared_array():
    """The ``SharedArray`` class, imported on first use: it subclasses
    numpy's ``ndarray``, and numpy must not be imported before it is
    needed."""
    global _shared_array_class
    if _shared_array_class is None:
        _numpy()
        from shmkit._shared_array import SharedArray

        _shared_array_class = SharedArray
    return _shared_array_class


class _Block:
    """Where an array's bytes are: the heap, the block's offset and its
    local address and length (to place a view or slice inside it)."""

    __slots__ = ("heap", "offset", "address", "length", "freed")

    def __init__(self, heap, offset, address, length):
        self.heap = heap
        self.offset = offset
        self.address = address
        self.length = length
        self.freed = False


def _handle_of(array):
    block = getattr(array, "_shmkit", None)
    if block is None:
        return None
    numpy = _numpy()
    start = array.__array_interface__["data"][0]
    # The lowest and highest byte the array reaches, strides of any sign.
    low = high = start
    for extent, stride in zip(array.shape, array.strides):
        if extent == 0:
            return None
        reach = (extent - 1) * stride
        if reach < 0:
            low += reach
        else:
            high += reach
    high += array.itemsize
    if low < block.address or high > block.address + block.length:
        return None
    heap = block.heap
    return (
        type(heap).__name__,
        heap.name,
        heap.read_only,
        block.offset,
        # The block's check word: a freed block refuses here, and a block
        # allocated since at the same offset carries another word.
        heap._block_check(block.offset),
        start - block.address,
        tuple(array.shape),
        # The dtype itself (it pickles), so structured fields survive.
        numpy.dtype(array.dtype),
        tuple(array.strides),
    )


def _attach(class_name, name, read_only):
    key = (class_name, name, read_only)
    heap = _attached.get(key)
    if heap is not None and not heap.closed:
        return heap
    import shmkit

    with _attached_lock:
        heap = _attached.get(key)
        if heap is None or heap.closed:
            kind = getattr(shmkit, class_name)
            heap = kind(name, create=False, read_only=read_only)
            _attached[key] = heap
    return heap


def _wrap(heap, offset, view, start, shape, dtype, strides):
    array = _shared_array()(shape, dtype=dtype, buffer=view, offset=start, strides=strides)
    address = array.__array_interface__["data"][0] - start
    array._shmkit = _Block(heap, offset, address, view.nbytes)
    return array


def _rebuild(class_name, name, read_only, offset, check, start, shape, dtype, strides):
    """The receiving side of a pickled array: the same bytes, attached here."""
    heap = _attach(class_name, name, read_only)
    try:
        view = heap.view(offset)
        same = heap._block_check(offset) == check
    except ValueError as refused:
        raise ValueError(
            f"no live array block at offset {offset} of segment {name!r} "
            "(freed, or not an array of this segment)"
        ) from refused
    if not same:
        view.release()
        raise ValueError(
            f"the array's block at offset {offset} of segment {name!r} was freed "
            "and another allocated there since"
        )
    return _wrap(heap, offset, view, start, shape, _numpy().dtype(dtype), strides)


def ndarray(self, shape, dtype="float64", zero=True):
    """A numpy array of ``shape`` and ``dtype`` whose bytes live in the
    segment (zeroed unless ``zero=False``). Pickling it sends a handle to
    the block, not the data; ``free_array`` gives the block back."""
    heap = self
    numpy = _numpy()
    dtype = numpy.dtype(dtype)
    if dtype.hasobject:
        raise TypeError("a shared array holds plain values, not Python objects")
    shape = (shape,) if isinstance(shape, int) else tuple(int(n) for n in shape)
    if any(n < 0 for n in shape):
        raise ValueError(f"negative dimension in shape {shape}")
    count = 1
    for n in shape:
        count *= n
    nbytes = count * dtype.itemsize
    offset = heap.allocate(max(nbytes, 1), _ALIGNMENT)
    if offset is None:
        raise MemoryError(
            f"the segment {heap.name!r} has no room for {nbytes} bytes"
        )
    view = heap.view(offset, max(nbytes, 1))
    if zero:
        numpy.frombuffer(view, dtype=numpy.uint8)[:] = 0
    return _wrap(heap, offset, view, 0, shape, dtype, None)


def free_array(self, array):
    """Give ``array``'s block back to ``heap``. The array, and every view
    or slice of it in this process, must not be used afterwards (their
    bytes may be handed out again); pickling them raises ``ValueError``.
    ``ValueError`` for an array that is not over a live block of this heap.
    """
    heap = self
    block = getattr(array, "_shmkit", None)
    if block is None:
        raise ValueError("not a shared array (make one with heap.ndarray)")
    if block.freed:
        raise ValueError("the array's block was already freed")
    if block.heap is not heap and (
        block.heap.name != heap.name or type(block.heap) is not type(heap)
    ):
        raise ValueError(
            f"the array lives in segment {block.heap.name!r}, not {heap.name!r}"
        )
    # The array itself holds a view of the block, so the free is forced:
    # the caller gives the array up (see above).
    heap.free(block.offset, force=True)
    block.freed = True
