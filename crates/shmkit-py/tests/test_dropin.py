"""shmkit as a drop-in for the `shared_allocator` package (0.1.0): every
call of its documented API, in its argument order and with its defaults,
its Quick Start as a user types it, and, where the package is installed,
the same script run against both packages in one process, compared call
by call. Nothing may be left in /dev/shm."""

import os
import uuid

import pytest

import shmkit

PREFIX = f"shmkit-dropin-{uuid.uuid4().hex[:8]}"


def names_left():
    return sorted(entry for entry in os.listdir("/dev/shm") if entry.startswith(PREFIX))


@pytest.fixture(autouse=True)
def nothing_is_left_behind():
    yield
    left = names_left()
    for entry in left:
        os.unlink(f"/dev/shm/{entry}")
    assert not left, f"segments left in /dev/shm: {left}"


def fresh():
    return f"{PREFIX}-{uuid.uuid4().hex[:8]}"


def test_the_free_list_quick_start(capsys):
    allocator = shmkit.FreeListAllocator(name=fresh(), capacity=10 * 1024 * 1024, create=True)
    offset = allocator.allocate(256)
    allocator.write(offset, b"Hello from shared memory!")
    data = allocator.read(offset, 25)
    print(data)
    allocator.free(offset)
    allocator.close()
    allocator.unlink()
    assert capsys.readouterr().out == "b'Hello from shared memory!'\n"


def test_the_bump_quick_start(capsys):
    allocator = shmkit.BumpAllocator(name=fresh(), capacity=10 * 1024 * 1024, create=True)
    for i in range(1000):
        offset = allocator.allocate(128)
        allocator.write(offset, f"Record {i}".encode())
    allocator.reset()
    print(f"Available: {allocator.available_bytes()} bytes")
    allocator.close()
    allocator.unlink()
    assert capsys.readouterr().out == f"Available: {10 * 1024 * 1024} bytes\n"


def test_the_slab_docstring_example():
    allocator = shmkit.SlabAllocator(name=fresh(), slab_size=256, num_slabs=4096, create=True)
    offset1 = allocator.allocate()
    offset2 = allocator.allocate()
    assert offset1 != offset2
    allocator.free(offset1)
    offset3 = allocator.allocate()
    assert offset3 == offset1, "the freed slab is reused"
    allocator.close()
    allocator.unlink()


def test_every_documented_call_in_the_peers_order():
    # Positional arguments in the peer's order, defaults left out.
    bump = shmkit.BumpAllocator(fresh(), 4096)
    assert (bump.capacity, bump.name.startswith(PREFIX)) == (4096, True)
    o = bump.allocate(100)
    bump.write(o, b"x" * 100)
    assert bump.read(o, 100) == b"x" * 100
    assert bump.used_bytes() == 100 and bump.available_bytes() == 3996
    bump.reset()
    assert bump.used_bytes() == 0
    with bump as same:
        assert same is bump
    assert bump.closed
    bump.unlink()

    free_list = shmkit.FreeListAllocator(fresh(), 1 << 20, 512)
    assert (free_list.capacity, free_list.slot_size, free_list.num_slots) == (1 << 20, 512, 2048)
    o = free_list.allocate()
    assert free_list.used_slots() == 1 and free_list.available_slots() == 2047
    free_list.write(o, b"y" * 512)
    assert free_list.read(o, 512) == b"y" * 512
    free_list.free(o)
    free_list.close()
    free_list.unlink()

    fixed = shmkit.FreeListAllocator(fresh(), 1 << 20, 64, 10)
    assert (fixed.capacity, fixed.num_slots) == (640, 10), "num_slots wins over capacity"
    fixed.close()
    fixed.unlink()

    slab = shmkit.SlabAllocator(fresh(), 128, 8)
    assert (slab.slab_size, slab.num_slabs, slab.capacity) == (128, 8, 1024)
    taken = [slab.allocate() for _ in range(8)]
    assert None not in taken and slab.allocate() is None
    assert slab.used_slabs() == 8 and slab.available_slabs() == 0
    slab.write(taken[0], b"z" * 128)
    assert slab.read(taken[0], 128) == b"z" * 128
    for offset in taken:
        slab.free(offset)
    slab.close()
    slab.unlink()


@pytest.mark.parametrize("cls", [shmkit.BumpAllocator, shmkit.FreeListAllocator, shmkit.SlabAllocator])
def test_attaching_takes_the_segments_own_shape(cls):
    name = fresh()
    made = cls(name, 8192)
    attached = cls(name, create=False)
    assert attached.capacity == made.capacity
    for attribute in ("slot_size", "num_slots", "slab_size", "num_slabs"):
        if hasattr(made, attribute):
            assert getattr(attached, attribute) == getattr(made, attribute)
    offset = made.allocate(16)
    attached.write(offset, b"seen by both")
    assert made.read(offset, 12) == b"seen by both"
    attached.close()
    made.close()
    made.unlink()


def scenario(module):
    """One script of calls that both packages answer alike; returns what
    each call returned, with offsets replaced by their order of first
    appearance (the two packages lay memory out differently)."""
    trace, seen = [], {}

    def note(label, call):
        try:
            value = call()
        except Exception as error:  # the exception's type is the result
            trace.append((label, type(error).__name__))
            return None
        if label.startswith("offset"):
            value = None if value is None else seen.setdefault(value, len(seen))
        trace.append((label, value))
        return value

    def offset_of(index):
        return next(o for o, i in seen.items() if i == index)

    name = fresh()
    bump = module.BumpAllocator(name, 1 << 16)
    note("bump again", lambda: module.BumpAllocator(name, 1 << 16))
    note("bump attach missing", lambda: module.BumpAllocator(name + "-missing", create=False))
    note("offset bump 256", lambda: bump.allocate(256))
    note("offset bump 256 aligned", lambda: bump.allocate(256, 64))
    note("bump used", bump.used_bytes)
    note("bump available", bump.available_bytes)
    note("bump size 0", lambda: bump.allocate(0))
    note("bump size -1", lambda: bump.allocate(-1))
    note("bump alignment 3", lambda: bump.allocate(8, 3))
    first = offset_of(0)
    note("bump write", lambda: bump.write(first, b"abc"))
    note("bump read", lambda: bump.read(first, 3))
    count = 0
    while bump.allocate(512) is not None:
        count += 1
    note("bump blocks of 512 until full", lambda: count)
    note("bump available when full", bump.available_bytes)
    note("bump reset", bump.reset)
    note("bump available after reset", bump.available_bytes)
    note("bump close", bump.close)
    note("bump unlink", bump.unlink)
    note("bump unlink again", bump.unlink)

    seen.clear()  # offsets are compared within one allocator
    name = fresh()
    free_list = module.FreeListAllocator(name, 1 << 16, 256)
    note("slots", lambda: (free_list.capacity, free_list.slot_size, free_list.num_slots))
    note("offset free list default", free_list.allocate)
    note("offset free list 100", lambda: free_list.allocate(100))
    note("used slots", free_list.used_slots)
    note("available slots", free_list.available_slots)
    block = offset_of(len(seen) - 1)
    note("free list write", lambda: free_list.write(block, b"q" * 256))
    note("free list read", lambda: free_list.read(block, 256))
    note("free list free", lambda: free_list.free(block))
    note("used slots after free", free_list.used_slots)
    count = 0
    while free_list.allocate(200) is not None:
        count += 1
    note("free list slots until full", lambda: count)
    note("free list available when full", free_list.available_slots)
    twin = module.FreeListAllocator(name, create=False)
    note("attached slots", lambda: (twin.capacity, twin.slot_size, twin.num_slots))
    note("attached used slots", twin.used_slots)
    twin.close()
    with free_list:
        pass
    note("free list unlink after close", free_list.unlink)

    seen.clear()
    name = fresh()
    slab = module.SlabAllocator(name, 64, 32)
    note("slab shape", lambda: (slab.slab_size, slab.num_slabs, slab.capacity))
    note("offset slab", slab.allocate)
    note("offset slab 64", lambda: slab.allocate(64))
    note("slab 65", lambda: slab.allocate(65))
    note("used slabs", slab.used_slabs)
    slab_block = offset_of(len(seen) - 1)
    note("slab free", lambda: slab.free(slab_block))
    note("slab double free", lambda: slab.free(slab_block))
    note("available slabs", slab.available_slabs)
    count = 0
    while slab.allocate() is not None:
        count += 1
    note("slabs until full", lambda: count)
    note("slab close", slab.close)
    note("slab unlink", slab.unlink)
    return trace


def test_shmkit_answers_the_script_as_the_peer_does():
    peer = pytest.importorskip(
        "shared_allocator",
        reason="the shared_allocator package is not installed (it declares Python 3.13; "
        "scripts/test installs it with --ignore-requires-python when the registry is reachable)",
    )
    if "shmkit" in getattr(peer, "__file__", "") or not hasattr(peer, "FreeListAllocator"):
        pytest.skip("shared_allocator here is not the peer package")
    ours, theirs = scenario(shmkit), scenario(peer)
    assert [label for label, _ in ours] == [label for label, _ in theirs]
    differing = [(label, a, b) for (label, a), (_, b) in zip(ours, theirs) if a != b]
    assert not differing, differing
