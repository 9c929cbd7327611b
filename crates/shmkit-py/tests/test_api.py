"""The Python API in one process: every allocator, every bad input."""

import pickle

import pytest

import shmkit
from conftest import FREEING, KINDS, shm_exists


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return request.param


@pytest.fixture
def heap(kind, name):
    allocator = KINDS[kind](name)
    yield allocator
    if not allocator.closed:
        allocator.close()


def test_write_read_round_trip(heap):
    offsets = [heap.allocate(size) for size in (1, 17, 100, 200)]
    assert len(set(offsets)) == 4
    for i, offset in enumerate(offsets):
        data = bytes([i + 1]) * heap.size_of(offset)
        heap.write(offset, data)
    for i, offset in enumerate(offsets):
        assert heap.read(offset) == bytes([i + 1]) * heap.size_of(offset)
        assert heap.read(offset, 1) == bytes([i + 1])
    heap.check()


def test_write_accepts_bytes_like(heap):
    offset = heap.allocate(8)
    heap.write(offset, bytearray(b"abcd"))
    heap.write(offset, memoryview(b"xy"))
    assert heap.read(offset, 4) == b"xycd"


def test_views_share_the_bytes(heap):
    offset = heap.allocate(64)
    view = heap.view(offset)
    assert len(view) == 64 and not view.readonly
    view[:5] = b"hello"
    assert heap.read(offset, 5) == b"hello"
    heap.write(offset, b"HE")
    assert bytes(view[:5]) == b"HEllo"


def test_numpy_frombuffer_shares_memory(heap):
    numpy = pytest.importorskip("numpy")
    offset = heap.allocate(8 * 16, alignment=16)
    array = numpy.frombuffer(heap.view(offset), dtype=numpy.float64)
    array[:] = numpy.arange(16)
    again = numpy.frombuffer(heap.view(offset), dtype=numpy.float64)
    assert again[15] == 15.0
    assert heap.read(offset, 8) == numpy.float64(0).tobytes()


def test_a_view_outlives_close(heap):
    offset = heap.allocate(16)
    view = heap.view(offset)
    heap.close()
    view[0] = 7  # still mapped: views never dangle
    assert view[0] == 7


@pytest.mark.parametrize("alignment", [1 << k for k in range(13)])
def test_alignment(heap, kind, alignment):
    if kind == "slab" and alignment > 16:
        # Slots are 16-aligned; a larger alignment is refused, not faked.
        with pytest.raises(ValueError):
            heap.allocate(24, alignment=alignment)
        return
    for _ in range(3):
        offset = heap.allocate(24, alignment=alignment)
        assert offset % alignment == 0


def test_access_is_bounded_by_the_block(heap):
    offset = heap.allocate(100)
    other = heap.allocate(100)
    heap.write(other, b"\x55" * 100)
    with pytest.raises(ValueError):
        heap.read(offset, 101)
    with pytest.raises(ValueError):
        heap.write(offset, b"x" * 101)
    with pytest.raises(ValueError):
        heap.view(offset, 101)
    assert heap.read(other) == b"\x55" * 100, "a refused write changed nothing"
    # An offset inside a block, or outside the segment, is no block at all.
    for wrong in (offset + 8, offset - 8, 1 << 40, 0):
        with pytest.raises(ValueError):
            heap.read(wrong, 1)
    for negative in (-1, -offset):
        with pytest.raises(ValueError):
            heap.read(negative, 1)


@pytest.mark.parametrize("size", [0, -1, -4096])
def test_sizes_below_one_are_refused(heap, size):
    with pytest.raises(ValueError):
        heap.allocate(size)


@pytest.mark.parametrize("alignment", [0, 3, 24, -8])
def test_bad_alignments_are_refused(heap, alignment):
    with pytest.raises(ValueError):
        heap.allocate(16, alignment=alignment)


@pytest.mark.parametrize("kind", FREEING)
def test_bad_frees_change_nothing(kind, name):
    heap = KINDS[kind](name)
    live = heap.allocate(40)
    heap.write(live, b"L" * 40)
    gone = heap.allocate(40)
    heap.free(gone)
    used, stats = heap.used_bytes(), heap.stats()
    for wrong in (gone, live + 8, live + 1, 1 << 40, 12345):
        with pytest.raises(ValueError):
            heap.free(wrong)
    assert heap.used_bytes() == used
    assert heap.stats()["live_allocations"] == stats["live_allocations"]
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
    with pytest.raises(NotImplementedError):
        bump.free(first)
    assert bump.used_bytes() == 100
    bump.reset()
    assert bump.used_bytes() == 0
    assert bump.allocate(100) == first
    bump.close()


def test_the_stack_frees_in_reverse_order(name):
    stack = shmkit.StackAllocator(name, capacity=1 << 20)
    a, b = stack.allocate(10), stack.allocate(10)
    with pytest.raises(ValueError):
        stack.free(a)  # not the top
    assert stack.read(a, 1) is not None, "the refused free kept the block"
    stack.free(b)
    stack.free(a)
    assert stack.used_bytes() == 0
    stack.close()


@pytest.mark.parametrize("kind", ["bump", "free_list", "size_class", "thread_local", "buddy"])
def test_exhaustion_returns_none(kind, name):
    heap = KINDS[kind](name, capacity=1 << 20)
    taken = 0
    while heap.allocate(4000) is not None:
        taken += 1
        assert taken < 1000
    assert taken > 50
    assert heap.allocate(1 << 30) is None
    heap.close()


def test_the_slab_refuses_what_no_slab_holds(name):
    slab = shmkit.SlabAllocator(name, slab_size=128, num_slabs=64)
    with pytest.raises(ValueError):
        slab.allocate(129)
    blocks = []
    while (offset := slab.allocate(128)) is not None:
        blocks.append(offset)
    assert len(blocks) >= 64
    slab.free(blocks[0])
    assert slab.allocate(128) == blocks[0]
    slab.close()


def test_free_list_is_general_purpose(name):
    heap = shmkit.FreeListAllocator(name, capacity=4 << 20)
    small = []
    while (offset := heap.allocate(64)) is not None:
        small.append(offset)
    assert len(small) > 10_000
    for offset in small:
        heap.free(offset)
    # Memory freed at 64 bytes serves one block of most of the segment.
    big = heap.allocate(3 << 20)
    assert big is not None
    heap.write(big, b"z" * (3 << 20))
    heap.close()


def test_free_list_accepts_the_fixed_slot_arguments(name):
    heap = shmkit.FreeListAllocator(name, slot_size=512, num_slots=100)
    blocks = [heap.allocate(512) for _ in range(100)]
    assert None not in blocks
    assert heap.allocate(5000) is not None, "any size, not only slots"
    heap.close()


def test_missing_and_existing_names(kind, name):
    factory = KINDS[kind]
    cls = type(factory(name))
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
    with pytest.raises(ValueError):
        shmkit.FreeListAllocator(name, create=False)


def test_every_call_after_close_raises(heap):
    offset = heap.allocate(10)
    heap.close()
    assert heap.closed
    calls = [
        lambda: heap.allocate(10),
        lambda: heap.write(offset, b"x"),
        lambda: heap.read(offset, 1),
        lambda: heap.view(offset),
        lambda: heap.free(offset),
        lambda: heap.used_bytes(),
        lambda: heap.available_bytes(),
        lambda: heap.stats(),
        lambda: heap.unlink(),
        lambda: heap.capacity,
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    heap.close()  # closing twice is fine


def test_context_manager_closes_and_keeps_the_segment(kind, name):
    with KINDS[kind](name) as heap:
        offset = heap.allocate(10)
        heap.write(offset, b"persistent")
    assert heap.closed
    assert shm_exists(name), "closing never removes the segment"
    cls = type(heap)
    with cls(name, create=False) as again:
        assert again.read(offset, 10) == b"persistent"
        again.unlink()
    assert not shm_exists(name)


def test_pickles_by_name(heap):
    offset = heap.allocate(5)
    heap.write(offset, b"first")
    twin = pickle.loads(pickle.dumps(heap))
    assert type(twin) is type(heap) and twin.name == heap.name
    assert twin.read(offset, 5) == b"first"
    twin.write(offset, b"other")
    assert heap.read(offset, 5) == b"other"
    twin.close()
    assert heap.read(offset, 5) == b"other"


def test_stats_and_accounting(heap, kind):
    sizes = [10, 200, 250 if kind == "slab" else 3000]
    offsets = [heap.allocate(size) for size in sizes]
    stats = heap.stats()
    assert heap.used_bytes() == stats["used_bytes"] == sum(sizes)
    assert stats["live_blocks"] == 3
    for key in ("capacity", "free_bytes", "largest_free_block", "fragmentation", "peak_bytes"):
        assert key in stats
    assert 0 < heap.available_bytes() < heap.capacity
    if kind in FREEING:
        heap.free(offsets[1])
        assert heap.used_bytes() == sizes[0] + sizes[2]
        assert heap.stats()["live_blocks"] == 2
