"""Per-operation costs of the Python API, side by side in one run with the
`shared_allocator` package (the peer) and with raw
``multiprocessing.shared_memory`` memoryview slices.

Every benchmark times one loop of 1,000 operations written as a user writes
them, so the figure pytest-benchmark prints, in microseconds, is the cost
of one operation in nanoseconds. Groups:

- ``write 128 B``: ``heap.write(offset, payload)``; raw: ``buf[a:b] = payload``
- ``read 128 B``: ``heap.read(offset, 128)``; raw: ``bytes(buf[a:b])``
- ``allocate + free``: ``heap.free(heap.allocate(128))``
- ``sequential allocate``: 1,000 ``allocate(128)`` in a row, then 1,000 ``free``
  (per allocate and its free)

Measure:  pytest crates/shmkit-py/benches/bench_python.py --benchmark-only
          --benchmark-group-by=group --benchmark-columns=mean,median,stddev
(The test command runs each once with --benchmark-disable, as a smoke test.)
The peer rows need ``pip install --ignore-requires-python shared_allocator==0.1.0``.
"""

import uuid
from multiprocessing import shared_memory

import pytest

import shmkit

try:
    import shared_allocator as peer
except ImportError:  # measured only where installed
    peer = None

OPS = range(1000)
PAYLOAD = b"x" * 128
ROUNDS = 30

SHMKIT = {
    "free_list": lambda name: shmkit.FreeListAllocator(name, capacity=64 << 20),
    "slab": lambda name: shmkit.SlabAllocator(name, slab_size=256, num_slabs=1 << 16),
    "bump": lambda name: shmkit.BumpAllocator(name, capacity=64 << 20),
    "stack": lambda name: shmkit.StackAllocator(name, capacity=64 << 20),
    "buddy": lambda name: shmkit.BuddyAllocator(name, capacity=64 << 20),
    "size_class": lambda name: shmkit.SizeClassAllocator(name, capacity=64 << 20),
    "thread_local": lambda name: shmkit.ThreadLocalAllocator(name, capacity=64 << 20),
}
FREEING = ["free_list", "slab", "buddy", "size_class", "thread_local"]
PEER = {
    "peer_free_list": lambda name: peer.FreeListAllocator(name, capacity=64 << 20),
    "peer_slab": lambda name: peer.SlabAllocator(name, slab_size=256, num_slabs=1 << 16),
    "peer_bump": lambda name: peer.BumpAllocator(name, capacity=64 << 20),
}


def subjects(kinds):
    peers = [] if peer is None else [f"peer_{kind}" for kind in kinds if f"peer_{kind}" in PEER]
    return kinds + peers


@pytest.fixture
def make():
    made = []

    def factory(kind):
        name = f"shmkit-bench-{uuid.uuid4().hex[:12]}"
        heap = (PEER if kind.startswith("peer_") else SHMKIT)[kind](name)
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


def measure(benchmark, group, loop):
    benchmark.group = group
    return benchmark.pedantic(loop, rounds=ROUNDS, iterations=1, warmup_rounds=2)


def test_raw_memoryview_write(benchmark, raw):
    buf = raw.buf

    def loop():
        for _ in OPS:
            buf[4096:4224] = PAYLOAD

    measure(benchmark, "write 128 B", loop)
    assert bytes(buf[4096:4224]) == PAYLOAD


def test_raw_memoryview_read(benchmark, raw):
    buf = raw.buf
    buf[4096:4224] = PAYLOAD

    def loop():
        for _ in OPS:
            data = bytes(buf[4096:4224])
        return data

    assert measure(benchmark, "read 128 B", loop) == PAYLOAD


@pytest.mark.parametrize("kind", subjects(sorted(SHMKIT)))
def test_write_128(benchmark, make, kind):
    heap = make(kind)
    offset = heap.allocate(128)
    write = heap.write

    def loop():
        for _ in OPS:
            write(offset, PAYLOAD)

    measure(benchmark, "write 128 B", loop)
    assert heap.read(offset, 128) == PAYLOAD


@pytest.mark.parametrize("kind", subjects(sorted(SHMKIT)))
def test_read_128(benchmark, make, kind):
    heap = make(kind)
    offset = heap.allocate(128)
    heap.write(offset, PAYLOAD)
    read = heap.read

    def loop():
        for _ in OPS:
            data = read(offset, 128)
        return data

    assert measure(benchmark, "read 128 B", loop) == PAYLOAD


@pytest.mark.parametrize("kind", subjects(FREEING))
def test_allocate_free(benchmark, make, kind):
    heap = make(kind)
    allocate, free = heap.allocate, heap.free

    def loop():
        for _ in OPS:
            free(allocate(128))

    measure(benchmark, "allocate + free", loop)
    assert allocate(128) is not None


@pytest.mark.parametrize("kind", subjects(FREEING))
def test_allocate_sequential_then_free_all(benchmark, make, kind):
    heap = make(kind)
    allocate, free = heap.allocate, heap.free

    def loop():
        offsets = [allocate(128) for _ in OPS]
        for offset in offsets:
            free(offset)
        return offsets

    offsets = measure(benchmark, "sequential allocate", loop)
    assert None not in offsets and len(set(offsets)) == len(offsets)
