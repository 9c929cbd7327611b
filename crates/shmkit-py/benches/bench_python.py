"""Per-operation costs of the Python API, with raw
``multiprocessing.shared_memory`` slices in the same run as the reference.

Measure:  pytest crates/shmkit-py/benches/bench_python.py --benchmark-only
(The test command runs each once with --benchmark-disable, as a smoke test.)
"""

import uuid
from multiprocessing import shared_memory

import pytest

import shmkit

CAPACITY = 64 << 20
PAYLOAD = b"x" * 128
# Fixed work per round (so that sequential allocation never fills a
# segment), many calls per timer reading (so the timer's own cost vanishes).
ROUNDS, ITERATIONS = 50, 2000


def measure(benchmark, function, *args):
    return benchmark.pedantic(
        function, args=args, rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=1
    )

KINDS = {
    "bump": shmkit.BumpAllocator,
    "stack": shmkit.StackAllocator,
    "free_list": shmkit.FreeListAllocator,
    "slab": lambda name, capacity: shmkit.SlabAllocator(name, slab_size=512, num_slabs=capacity // 1024),
    "buddy": shmkit.BuddyAllocator,
    "size_class": shmkit.SizeClassAllocator,
    "thread_local": shmkit.ThreadLocalAllocator,
}
FREEING = ["free_list", "slab", "buddy", "size_class", "thread_local"]


@pytest.fixture
def make():
    made = []

    def factory(kind):
        heap = KINDS[kind](f"shmkit-bench-{uuid.uuid4().hex[:12]}", capacity=CAPACITY)
        made.append(heap)
        return heap

    yield factory
    for heap in made:
        heap.unlink()
        heap.close()


@pytest.fixture
def raw():
    segment = shared_memory.SharedMemory(create=True, size=1 << 20)
    yield segment
    segment.close()
    segment.unlink()


def test_raw_memoryview_write(benchmark, raw):
    buf = raw.buf

    def write():
        buf[4096:4096 + 128] = PAYLOAD

    measure(benchmark, write)
    assert bytes(buf[4096:4096 + 128]) == PAYLOAD


def test_raw_memoryview_read(benchmark, raw):
    buf = raw.buf
    result = measure(benchmark, lambda: bytes(buf[4096:4096 + 128]))
    assert len(result) == 128


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_write_128(benchmark, make, kind):
    heap = make(kind)
    offset = heap.allocate(128)
    measure(benchmark, heap.write, offset, PAYLOAD)
    assert heap.read(offset) == PAYLOAD


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_read_128(benchmark, make, kind):
    heap = make(kind)
    offset = heap.allocate(128)
    heap.write(offset, PAYLOAD)
    assert measure(benchmark, heap.read, offset, 128) == PAYLOAD


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_allocate_sequential(benchmark, make, kind):
    heap = make(kind)
    allocate = heap.allocate
    measure(benchmark, allocate, 128)
    live = heap.stats()["live_blocks"]
    assert live > 0 and heap.used_bytes() == 128 * live


@pytest.mark.parametrize("kind", FREEING)
def test_allocate_free(benchmark, make, kind):
    heap = make(kind)
    allocate, free = heap.allocate, heap.free

    def pair():
        free(allocate(128))

    measure(benchmark, pair)
    assert heap.used_bytes() == 0


@pytest.mark.parametrize("kind", FREEING)
def test_reuse_pattern(benchmark, make, kind):
    """64 blocks of mixed sizes, then all freed (divide by 64 for one
    allocate + free)."""
    heap = make(kind)
    allocate, free = heap.allocate, heap.free
    sizes = [32 + (i * 53) % 240 for i in range(64)]

    def cycle():
        for offset in [allocate(size) for size in sizes]:
            free(offset)

    benchmark.pedantic(cycle, rounds=ROUNDS, iterations=20, warmup_rounds=1)
    assert heap.used_bytes() == 0
