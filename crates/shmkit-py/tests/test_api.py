"""The Python API in one process: every allocator, every bad input."""

import io
import pickle
import sys

import pytest

import shmkit
from conftest import CLASSES, FREEING, KINDS, shm_exists


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return request.param


@pytest.fixture
def heap(kind, name):
    allocator = KINDS[kind](name)
    yield allocator
    if not allocator.closed:
        allocator.close()


def test_the_module_shows_its_api_only():
    public = {entry for entry in dir(shmkit) if not entry.startswith("__")}
    # SharedArray is there for isinstance checks, outside __all__ (it needs
    # numpy, which `from shmkit import *` must not).
    assert public == set(shmkit.__all__) | {"SharedArray"}
    assert "_attach" not in dir(shmkit) and "shmkit" not in dir(shmkit)
    assert shmkit.__doc__ and "shared memory" in shmkit.__doc__
    for cls in CLASSES.values():
        assert cls.__module__ == "shmkit" and cls.__doc__


def test_write_read_round_trip(heap):
    offsets = [heap.allocate(size) for size in (1, 17, 100, 200)]
    assert None not in offsets and len(set(offsets)) == 4
    for i, offset in enumerate(offsets):
        heap.write(offset, bytes([i + 1]) * heap.size_of(offset))
    for i, offset in enumerate(offsets):
        assert heap.read(offset) == bytes([i + 1]) * heap.size_of(offset)
        assert heap.read(offset, 1) == bytes([i + 1])
    heap.check()


def test_write_accepts_any_bytes_like_object(heap):
    array = pytest.importorskip("array")
    offset = heap.allocate(16)
    heap.write(offset, bytearray(b"abcd"))
    heap.write(offset, memoryview(b"xy"))
    assert heap.read(offset, 4) == b"xycd"
    heap.write(offset, array.array("B", [9, 8, 7]))
    assert heap.read(offset, 3) == bytes([9, 8, 7])
    heap.write(offset, memoryview(b"0123456789")[2:6])
    assert heap.read(offset, 4) == b"2345"


@pytest.mark.parametrize("not_bytes", [16, [1, 2, 3], range(4), "text", None, 1.5])
def test_write_refuses_what_is_not_bytes_like(heap, not_bytes):
    offset = heap.allocate(32)
    heap.write(offset, b"\x07" * 32)
    with pytest.raises(TypeError):
        heap.write(offset, not_bytes)
    assert heap.read(offset) == b"\x07" * 32, "a refused write changed nothing"


def test_errors_raised_while_converting_arguments_pass_through(heap):
    class Interrupting:
        def __index__(self):
            raise KeyboardInterrupt

    class Exploding:
        def __buffer__(self, flags):
            raise MemoryError("from the exporter")

    offset = heap.allocate(8)
    with pytest.raises(KeyboardInterrupt):
        heap.write(Interrupting(), b"x")
    with pytest.raises(KeyboardInterrupt):
        heap.read(offset, Interrupting())
    if sys.version_info >= (3, 12):  # __buffer__ (PEP 688)
        with pytest.raises(MemoryError, match="from the exporter"):
            heap.write(offset, Exploding())


@pytest.mark.parametrize("shape, index", [((4, 6), (slice(None), slice(None, None, -2))), ((3, 4, 5), (slice(None, None, 2), slice(1, 3), slice(None, None, -1))), ((64,), (slice(None, None, 3),))])
def test_strided_arrays_of_any_shape_are_written_in_c_order(heap, shape, index):
    numpy = pytest.importorskip("numpy")
    source = numpy.arange(int(numpy.prod(shape)), dtype=numpy.int32).reshape(shape)[index]
    assert not source.flags.c_contiguous
    offset = heap.allocate(source.nbytes)
    heap.write(offset, source)
    assert heap.read(offset, source.nbytes) == numpy.ascontiguousarray(source).tobytes()


def test_a_strided_buffer_is_written_in_order(heap):
    numpy = pytest.importorskip("numpy")
    offset = heap.allocate(64)
    strided = numpy.arange(16, dtype=numpy.uint8)[::2]
    heap.write(offset, strided)
    assert heap.read(offset, 8) == bytes(range(0, 16, 2))
    matrix = numpy.arange(16, dtype=numpy.uint16).reshape(4, 4).T  # Fortran order
    heap.write(offset, matrix)
    assert heap.read(offset, 32) == numpy.ascontiguousarray(matrix).tobytes()
    with pytest.raises(ValueError, match="block"):
        heap.write(offset, numpy.zeros(10000, dtype=numpy.uint8)[::2])


@pytest.mark.parametrize("alignment", [1 << k for k in range(13)])
def test_alignment(heap, kind, alignment):
    if kind == "slab" and alignment > 16:
        # Slabs are 16-aligned; a larger alignment is refused, not faked.
        with pytest.raises(ValueError):
            heap.allocate(24, alignment)
        return
    for _ in range(3):
        offset = heap.allocate(24, alignment)
        assert offset % alignment == 0


def test_access_is_bounded_by_the_block(heap, kind):
    offset = heap.allocate(100)
    other = heap.allocate(100)
    usable = {"free_list": 256, "slab": 4096}.get(kind, 100)
    heap.write(other, b"\x55" * 100)
    heap.write(offset, b"w" * usable)  # a block may use its whole slots
    for too_long in (usable + 1, usable + 4096):
        with pytest.raises(ValueError, match="block"):
            heap.read(offset, too_long)
        with pytest.raises(ValueError, match="block"):
            heap.write(offset, b"x" * too_long)
        with pytest.raises(ValueError, match="block"):
            heap.view(offset, too_long)
    assert heap.read(other) == b"\x55" * 100, "a refused write changed nothing"
    # An offset inside a block, or outside the segment, is no block at all.
    for wrong in (offset + 8, offset - 8, offset + 1, 1 << 40, 0, 16):
        with pytest.raises(ValueError, match="live block"):
            heap.read(wrong, 1)


@pytest.mark.parametrize("huge", [1 << 63, 1 << 64, 1 << 100])
def test_huge_and_negative_integers_are_value_errors(heap, kind, huge):
    offset = heap.allocate(8)
    calls = [
        lambda: heap.read(huge, 1),
        lambda: heap.read(offset, huge),
        lambda: heap.read(-1, 1),
        lambda: heap.read(offset, -1),
        lambda: heap.write(huge, b"x"),
        lambda: heap.write(-5, b"x"),
        lambda: heap.view(offset, huge),
        lambda: heap.size_of(huge),
        lambda: heap.allocate(huge),
        lambda: heap.allocate(-1),
        lambda: heap.allocate(8, huge),
        lambda: heap.allocate(8, -8),
    ]
    if kind != "bump":
        calls += [lambda: heap.free(huge), lambda: heap.free(-1)]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert heap.stats()["live_blocks"] == 1


def test_bad_argument_types_are_type_errors(heap):
    offset = heap.allocate(8)
    for call in (lambda: heap.read("0"), lambda: heap.read(offset, 1.5), lambda: heap.allocate(8.0)):
        with pytest.raises(TypeError):
            call()


def test_sizes_below_one_are_refused(kind, name):
    heap = KINDS[kind](name)
    for size in (-1, -4096):
        with pytest.raises(ValueError):
            heap.allocate(size)
    if kind in ("free_list", "slab"):
        # As in shared_allocator: 0 (and None) is one whole slot or slab.
        offset = heap.allocate(0)
        assert heap.size_of(offset) == (256 if kind == "free_list" else 4096)
    else:
        with pytest.raises(ValueError):
            heap.allocate(0)
    heap.close()


@pytest.mark.parametrize("alignment", [0, 3, 24])
def test_bad_alignments_are_refused(heap, alignment):
    with pytest.raises(ValueError, match="power of two"):
        heap.allocate(16, alignment)


@pytest.mark.parametrize("kind", FREEING + ["stack"])
def test_bad_frees_change_nothing(kind, name):
    heap = KINDS[kind](name)
    live = heap.allocate(40)
    heap.write(live, b"L" * 40)
    gone = heap.allocate(40)
    heap.free(gone)
    used, stats = heap.used_bytes(), heap.stats()
    for wrong in (gone, live + 8, live + 1, 1 << 40, 12345, 0):
        with pytest.raises(ValueError):
            heap.free(wrong)
    assert heap.used_bytes() == used
    assert heap.stats()["live_blocks"] == stats["live_blocks"]
    assert heap.read(live) == b"L" * 40
    heap.check()
    heap.free(live)
    assert heap.used_bytes() == 0
    heap.close()


@pytest.mark.parametrize("kind", FREEING)
def test_freed_memory_is_reused(kind, name):
    heap = KINDS[kind](name)
    first = [heap.allocate(100) for _ in range(50)]
    for offset in first:
        heap.free(offset)
    again = [heap.allocate(100) for _ in range(50)]
    assert set(again) & set(first), "no freed block came back"
    heap.close()


def test_bump_frees_everything_with_reset(name):
    bump = shmkit.BumpAllocator(name, capacity=1 << 20)
    first = bump.allocate(100)
    bump.write(first, b"old")
    with pytest.raises(NotImplementedError):
        bump.free(first)
    assert bump.used_bytes() == 100
    bump.reset()
    assert bump.used_bytes() == 0 and bump.available_bytes() == 1 << 20
    # An offset from before the reset names no block any more...
    with pytest.raises(ValueError):
        bump.read(first, 1)
    # ...until the same place is handed out again.
    assert bump.allocate(100) == first
    assert bump.size_of(first) == 100
    bump.close()


def test_the_stack_frees_in_reverse_order(name):
    stack = shmkit.StackAllocator(name, capacity=1 << 20)
    a, b = stack.allocate(10), stack.allocate(10)
    stack.write(a, b"kept")
    with pytest.raises(ValueError):
        stack.free(a)  # not the top
    assert stack.read(a, 4) == b"kept", "the refused free kept the block"
    stack.free(b)
    stack.free(a)
    assert stack.used_bytes() == 0
    stack.close()


def test_the_slab_refuses_what_no_slab_holds(name):
    slab = shmkit.SlabAllocator(name, slab_size=128, num_slabs=64)
    with pytest.raises(ValueError, match="slab"):
        slab.allocate(129)
    blocks = []
    while (offset := slab.allocate(128)) is not None:
        blocks.append(offset)
    assert len(blocks) == 64, "exactly the slabs asked for"
    slab.free(blocks[0])
    assert slab.allocate(128) == blocks[0]
    slab.close()


def test_free_list_is_general_purpose(name):
    heap = shmkit.FreeListAllocator(name, capacity=4 << 20, slot_size=64)
    small = []
    while (offset := heap.allocate(64)) is not None:
        small.append(offset)
    assert len(small) == (4 << 20) // 64
    assert heap.available_slots() == 0 and heap.available_bytes() == 0
    for offset in small:
        heap.free(offset)
    # Memory freed at 64 bytes serves one block of most of the segment.
    big = heap.allocate(3 << 20)
    assert big is not None
    assert heap.used_slots() == (3 << 20) // 64
    heap.write(big, b"z" * (3 << 20))
    assert heap.read(big, 5) == b"zzzzz"
    heap.close()


def test_missing_and_existing_names(kind, name):
    factory = KINDS[kind]
    cls = CLASSES[kind]
    factory(name)
    with pytest.raises(FileExistsError):
        factory(name)
    with pytest.raises(FileNotFoundError):
        cls(name + "-missing", create=False)


def test_another_kind_is_refused(name):
    shmkit.FreeListAllocator(name, capacity=1 << 20)
    with pytest.raises(shmkit.WrongAllocatorError):
        shmkit.SlabAllocator(name, create=False)
    with pytest.raises(ValueError):
        shmkit.BumpAllocator(name, create=False)


def test_a_foreign_segment_is_refused(name):
    with open(f"/dev/shm/{name}", "wb") as foreign:
        foreign.write(b"not a segment" * 1000)
    with pytest.raises(shmkit.CorruptSegmentError):
        shmkit.FreeListAllocator(name, create=False)


def test_every_call_after_close_raises_but_unlink_works(heap, kind, name):
    offset = heap.allocate(10)
    size_before_close = heap.total_size
    heap.close()
    assert heap.closed
    calls = [
        lambda: heap.allocate(10),
        lambda: heap.write(offset, b"x"),
        lambda: heap.read(offset, 1),
        lambda: heap.view(offset),
        lambda: heap.free(offset),
        lambda: heap.size_of(offset),
        lambda: heap.used_bytes(),
        lambda: heap.available_bytes(),
        lambda: heap.stats(),
        lambda: heap.check(),
        lambda: heap.recover(),
        lambda: heap.__enter__(),
        lambda: pickle.dumps(heap),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="closed"):
            call()
    heap.close()  # closing twice is fine
    # The facts stay readable, as the peer's plain attributes do.
    assert heap.name == name and heap.capacity > 0 and heap.total_size == size_before_close
    assert shm_exists(name)
    heap.unlink()  # about the name, not the mapping
    assert not shm_exists(name)
    with pytest.raises(FileNotFoundError):
        heap.unlink()


def test_context_manager_closes_and_keeps_the_segment(kind, name):
    with KINDS[kind](name) as heap:
        offset = heap.allocate(10)
        heap.write(offset, b"persistent")
    assert heap.closed
    assert shm_exists(name), "closing never removes the segment"
    with CLASSES[kind](name, create=False) as again:
        assert again.read(offset, 10) == b"persistent"
        again.unlink()
    assert not shm_exists(name)


def test_module_unlink_removes_by_name(name):
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20)
    heap.close()
    shmkit.unlink(name)
    assert not shm_exists(name)
    with pytest.raises(FileNotFoundError):
        shmkit.unlink(name)
    with pytest.raises(FileNotFoundError):
        shmkit.FreeListAllocator(name, create=False)


def test_pickles_by_name(heap, kind):
    offset = heap.allocate(5)
    heap.write(offset, b"first")
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        twin = pickle.loads(pickle.dumps(heap, protocol))
        assert type(twin) is type(heap) and twin.name == heap.name
        assert twin.capacity == heap.capacity
        assert twin.read(offset, 5) == b"first"
        twin.write(offset, b"other")
        assert heap.read(offset, 5) == b"other"
        twin.close()
        heap.write(offset, b"first")
    assert heap.read(offset, 5) == b"first"


def test_read_only_attachment_reads_and_refuses_changes(heap, kind, name):
    offset = heap.allocate(32)
    heap.write(offset, b"r" * 32)
    cls = CLASSES[kind]
    with pytest.raises(ValueError, match="create=False"):
        cls(name, read_only=True)
    reader = cls(name, create=False, read_only=True)
    assert reader.read_only and reader.read(offset) == b"r" * 32
    view = reader.view(offset)
    assert view.readonly and bytes(view[:4]) == b"rrrr"
    with pytest.raises(TypeError):
        view[0] = 1
    for call in (
        lambda: reader.allocate(8),
        lambda: reader.write(offset, b"x"),
        lambda: reader.free(offset),
        lambda: reader.check(),
        lambda: reader.recover(),
    ):
        with pytest.raises(io.UnsupportedOperation):
            call()
    assert reader.used_bytes() == heap.used_bytes()
    heap.write(offset, b"new!")
    assert bytes(view[:4]) == b"new!", "the reader sees the writer's bytes"
    twin = pickle.loads(pickle.dumps(reader))
    assert twin.read_only
    del view
    reader.close()
    twin.close()


def test_stats_and_accounting(heap, kind):
    sizes = [10, 200, 3000]
    offsets = [heap.allocate(size) for size in sizes]
    stats = heap.stats()
    expected_keys = {
        "kind", "capacity", "used_bytes", "available_bytes", "requested_bytes", "live_blocks",
        "peak_used_bytes", "segment_size", "segment_max_size", "heap_free_bytes",
        "largest_free_block", "fragmentation",
    }
    assert set(stats) == expected_keys
    taken = {"free_list": [256, 256, 3072], "slab": [4096, 4096, 4096]}.get(kind, sizes)
    assert heap.used_bytes() == stats["used_bytes"] == sum(taken)
    assert stats["requested_bytes"] == sum(sizes)
    assert stats["live_blocks"] == 3
    assert stats["available_bytes"] == heap.available_bytes() == heap.capacity - sum(taken)
    assert stats["capacity"] == heap.capacity
    assert stats["segment_max_size"] > heap.capacity, "headers come on top of the capacity"
    # Backed as blocks are allocated: a fresh heap takes its header and a
    # first megabyte or so, not its whole capacity.
    assert 0 < stats["segment_size"] <= stats["segment_max_size"]
    assert stats["segment_size"] <= max(heap.capacity, 2 << 20)
    assert stats["peak_used_bytes"] == sum(taken)
    if kind in FREEING + ["stack"]:
        heap.free(offsets[2])
        assert heap.used_bytes() == sum(taken[:2])
        assert heap.stats()["live_blocks"] == 2
        assert heap.stats()["peak_used_bytes"] == sum(taken)


def test_repr_names_the_allocator(heap, kind, name):
    text = repr(heap)
    assert type(heap).__name__ in text and repr(name) in text
    heap.close()
    assert "closed" in repr(heap)


def test_zero_on_free_zeroes_freed_blocks(name):
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20, zero_on_free=True)
    offset = heap.allocate(64)
    heap.write(offset, b"secret" * 10)
    heap.free(offset)
    again = heap.allocate(64)
    assert again == offset
    assert heap.read(again) == bytes(64)
    heap.close()


def test_integers_from_index_are_checked_by_their_value(heap):
    class Index:
        def __init__(self, value):
            self.value = value

        def __index__(self):
            return self.value

    class Overflowing:
        def __index__(self):
            raise OverflowError("mine")

    offset = heap.allocate(Index(8))
    assert heap.size_of(Index(offset)) == 8
    with pytest.raises(ValueError, match="negative"):
        heap.read(Index(-5), 1)
    with pytest.raises(ValueError, match="too large"):
        heap.read(Index(1 << 70), 1)
    with pytest.raises(OverflowError, match="mine"):
        heap.read(Overflowing(), 1)


@pytest.mark.parametrize("kind", sorted(CLASSES))
def test_create_is_taken_by_its_truth_value(kind, name):
    made = KINDS[kind](name)
    cls = CLASSES[kind]
    attached = cls(name, create=0)  # as in shared_allocator: falsy attaches
    assert attached.capacity == made.capacity
    with pytest.raises(FileExistsError):
        cls(name, create=1)
    attached.close()
    made.close()


def test_user_bytes_cannot_pass_for_a_block_header(name):
    heap = shmkit.SizeClassAllocator(name, capacity=1 << 20)
    outer = heap.allocate(4096)
    # Copy the outer block's own header into its payload, 1 KiB in, as a
    # naive forgery would: the header is keyed by the segment's random key
    # and its offset, so the copy does not validate anywhere else.
    import mmap
    with open(f"/dev/shm/{name}", "r+b") as file, mmap.mmap(file.fileno(), 0) as memory:
        header = bytes(memory[outer - 16 : outer])
    heap.write(outer, bytes(1024 - 16) + header)
    with pytest.raises(ValueError, match="live block"):
        heap.free(outer + 1024)
    with pytest.raises(ValueError, match="live block"):
        heap.view(outer + 1024)
    assert heap.size_of(outer) == 4096
    heap.free(outer)
    heap.close()


def test_slabs_larger_than_a_pool_slot_work(name):
    slab = shmkit.SlabAllocator(name, slab_size=1 << 20, num_slabs=4)
    assert (slab.slab_size, slab.num_slabs) == (1 << 20, 4)
    taken = [slab.allocate() for _ in range(4)]
    assert None not in taken and slab.allocate() is None
    slab.write(taken[0], b"s" * (1 << 20))
    with pytest.raises(ValueError, match="slab"):
        slab.allocate((1 << 20) + 1)
    for offset in taken:
        slab.free(offset)
    again = shmkit.SlabAllocator(name, create=False)
    assert again.slab_size == 1 << 20 and again.available_slabs() == 4
    with pytest.raises(shmkit.WrongAllocatorError, match="SlabAllocator"):
        shmkit.FreeListAllocator(name, create=False)
    again.close()
    slab.close()


def test_aligned_free_list_blocks_count_their_padding(name):
    heap = shmkit.FreeListAllocator(name, slot_size=100, num_slots=1000)
    offsets = []
    while (offset := heap.allocate(100, 4096)) is not None:
        assert offset % 4096 == 0
        offsets.append(offset)
    # Each block takes the slots its bytes and the padding its alignment
    # costs need (100 + 4096 - 16 bytes: 42 slots), so the slots run out
    # (rather than the segment first).
    per_block = -(-(100 + 4096 - 16) // 100)
    assert heap.available_slots() < per_block
    assert heap.used_slots() == len(offsets) * per_block
    for offset in offsets:
        heap.free(offset)
    assert heap.used_slots() == 0
    heap.close()


def test_stack_capacity_holds_for_one_byte_blocks(name):
    heap = shmkit.StackAllocator(name, capacity=1 << 16)
    count = 0
    while heap.allocate(1) is not None:
        count += 1
    assert count == 1 << 16 and heap.available_bytes() == 0
    heap.close()
