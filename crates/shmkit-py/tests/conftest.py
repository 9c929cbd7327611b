"""Shared fixtures: a fresh segment name per test, removed afterwards."""

import contextlib
import multiprocessing
import os
import signal
import time
import uuid

import pytest

import shmkit

KINDS = {
    "bump": lambda name, **kw: shmkit.BumpAllocator(name, capacity=kw.get("capacity", 4 << 20)),
    "stack": lambda name, **kw: shmkit.StackAllocator(name, capacity=kw.get("capacity", 4 << 20)),
    "free_list": lambda name, **kw: shmkit.FreeListAllocator(name, capacity=kw.get("capacity", 4 << 20)),
    "slab": lambda name, **kw: shmkit.SlabAllocator(
        name,
        slab_size=kw.get("slab_size", 4096),
        num_slabs=kw.get("capacity", 4 << 20) // kw.get("slab_size", 4096),
    ),
    "buddy": lambda name, **kw: shmkit.BuddyAllocator(name, capacity=kw.get("capacity", 4 << 20)),
    "size_class": lambda name, **kw: shmkit.SizeClassAllocator(name, capacity=kw.get("capacity", 4 << 20)),
    "thread_local": lambda name, **kw: shmkit.ThreadLocalAllocator(name, capacity=kw.get("capacity", 4 << 20)),
}

CLASSES = {
    "bump": shmkit.BumpAllocator,
    "stack": shmkit.StackAllocator,
    "free_list": shmkit.FreeListAllocator,
    "slab": shmkit.SlabAllocator,
    "buddy": shmkit.BuddyAllocator,
    "size_class": shmkit.SizeClassAllocator,
    "thread_local": shmkit.ThreadLocalAllocator,
}

# Allocators that free single blocks in any order.
FREEING = ["free_list", "slab", "buddy", "size_class", "thread_local"]


def shm_exists(name):
    return os.path.exists(f"/dev/shm/{name}")


def fresh_name(prefix="shmkit-py-test"):
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def name():
    """A fresh shared-memory name, unlinked after the test if still there."""
    fresh = fresh_name()
    yield fresh
    if shm_exists(fresh):
        os.unlink(f"/dev/shm/{fresh}")


def _hold(class_name, name, ready):
    heap = getattr(shmkit, class_name)(name, create=False)
    ready.set()
    time.sleep(60)  # until killed
    heap.close()


@contextlib.contextmanager
def another_process_mapping(cls, name):
    """A live forked process that has the segment `name` attached (as a
    `cls`) and sleeps; SIGKILLed and reaped on the way out (not told to
    stop: a process killed while waiting on a multiprocessing event would
    leave the event unusable)."""
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    other = context.Process(target=_hold, args=(cls.__name__, name, ready))
    other.start()
    try:
        assert ready.wait(30), "the other process did not attach"
        yield other
    finally:
        if other.is_alive():
            os.kill(other.pid, signal.SIGKILL)
        other.join(timeout=30)
