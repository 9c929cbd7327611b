"""What the bindings promise under contention: racing frees resolve to one
winner, and a wait for another process or a long copy never holds the
interpreter lock."""

import mmap
import multiprocessing
import os
import signal
import struct
import sys
import threading
import time

import pytest

import shmkit
from conftest import FREEING, KINDS, another_process_mapping

# Where the segment header records the allocator state's offset (the free
# list's lock word is the state's first word).
STATE_OFFSET_FIELD = 104


def race_frees(heap, offsets, barrier, results):
    barrier.wait()
    won = 0
    for offset in offsets:
        try:
            heap.free(offset)
            won += 1
        except ValueError:
            pass
    results.put(won)
    heap.close()


@pytest.mark.parametrize("kind", FREEING)
def test_two_processes_freeing_the_same_blocks_free_each_once(kind, name):
    heap = KINDS[kind](name, capacity=8 << 20, slab_size=64)
    offsets = [heap.allocate(64) for _ in range(4000)]
    assert None not in offsets
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    racers = [context.Process(target=race_frees, args=(heap, offsets, barrier, results)) for _ in range(2)]
    for racer in racers:
        racer.start()
    wins = [results.get(timeout=120) for _ in racers]
    for racer in racers:
        racer.join(timeout=60)
        assert racer.exitcode == 0
    assert sum(wins) == len(offsets), f"frees that succeeded: {wins}"
    assert heap.used_bytes() == 0 and heap.stats()["live_blocks"] == 0
    heap.recover()  # gives back the racers' thread caches
    heap.check()
    again = [heap.allocate(64) for _ in range(4000)]
    assert None not in again and len(set(again)) == len(again)
    heap.close()


def start_time(pid):
    """A thread's start time in clock ticks (field 22 of its /proc stat)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields_after_name = stat.read().rsplit(")", 1)[1].split()
    return int(fields_after_name[19])


def forge_lock_owner(name, pid):
    """Writes the identity of process `pid`'s main thread (its id in the low
    22 bits, its start time above them) into the free list's lock word, as
    that thread would on taking the lock."""
    with open(f"/dev/shm/{name}", "r+b") as file, mmap.mmap(file.fileno(), 0) as memory:
        (state,) = struct.unpack_from("<Q", memory, STATE_OFFSET_FIELD)
        struct.pack_into("<Q", memory, state, start_time(pid) << 22 | pid)


def count_while(seconds):
    """Python bytecodes this thread runs in `seconds`."""
    count, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        count += 1
    return count


@pytest.fixture
def lock_holder(name):
    """A live process that maps the segment and (forged) holds its lock."""
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20)
    with another_process_mapping(shmkit.FreeListAllocator, name) as holder:
        forge_lock_owner(name, holder.pid)
        yield heap, holder
    heap.close()


def test_a_lock_wait_lets_other_threads_run_and_ends_when_the_holder_dies(lock_holder):
    heap, holder = lock_holder
    outcome = {}

    def allocate():
        outcome["offset"] = heap.allocate(64)

    waiter = threading.Thread(target=allocate)
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive(), "the allocation waits for the lock"
    # Were the interpreter lock held while waiting, this thread could not
    # count until the wait had ended (in a TimeoutError, 10 s later).
    assert count_while(0.3) > 1000
    assert waiter.is_alive(), "this thread ran while the other waited"
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=30)
    waiter.join(timeout=30)
    assert not waiter.is_alive()
    assert isinstance(outcome.get("offset"), int), "the waiter took the lock over"
    heap.check()


@pytest.mark.parametrize("call", ["allocate", "stats"])
def test_a_lock_held_past_the_patience_is_a_timeout_error(lock_holder, call):
    heap, _holder = lock_holder
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        heap.allocate(64) if call == "allocate" else heap.stats()
    assert time.monotonic() - started >= 5


def test_recovery_waits_for_no_call_of_this_process(lock_holder):
    heap, holder = lock_holder
    waiter = threading.Thread(target=lambda: heap.allocate(64))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive()
    # The waiting call is inside the allocator (without the interpreter
    # lock): rebuilding under it is refused, even when forced.
    with pytest.raises(shmkit.SegmentInUseError, match="waiting"):
        heap.recover(force=True)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(timeout=30)
    waiter.join(timeout=30)
    assert heap.recover()["locks_taken_over"] == 0, "the waiter took the lock over already"
    heap.check()


@pytest.mark.parametrize("direction", ["write", "read", "strided write"])
def test_long_copies_let_other_threads_run(name, direction):
    size = 256 << 20
    heap = shmkit.BumpAllocator(name, capacity=size)
    offset = heap.allocate(size)
    payload = bytes(size)
    if direction == "strided write":
        numpy = pytest.importorskip("numpy")
        payload = numpy.zeros(size // 4, dtype=numpy.uint64)[::2]  # every other word
    stamps, stop = [], threading.Event()

    def tick():
        while not stop.is_set():
            stamps.append(time.monotonic())

    # Threads switch at most a millisecond after asking, so a thread shut
    # out of a copy cannot catch up on more than a sliver of it.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.001)
    ticker = threading.Thread(target=tick)
    ticker.start()
    copies = []
    for _ in range(3):
        started = time.monotonic()
        if direction == "read":
            assert len(heap.read(offset)) == size
        else:
            heap.write(offset, payload)
        copies.append((started, time.monotonic()))
    stop.set()
    ticker.join()
    sys.setswitchinterval(interval)
    # A thread that could not run while the lock was held leaves a gap in
    # its stamps as long as the copy (but for a millisecond at either end,
    # where the interpreter switches threads); one that ran alongside
    # leaves none. The best of three copies counts.
    def longest_gap_share(start, end):
        inside = [start] + [t for t in stamps if start < t < end] + [end]
        return max(b - a for a, b in zip(inside, inside[1:])) / (end - start)

    shares = [longest_gap_share(start, end) for start, end in copies]
    # Four switch intervals at least: long enough that a copy under the
    # interpreter lock shows as one gap of over half its length.
    assert min(end - start for start, end in copies) > 0.004, "copies long enough to tell"
    assert min(shares) < 0.5, shares
    heap.close()


@pytest.mark.parametrize("length", [24, 1 << 20])
def test_a_write_from_a_view_of_the_same_block_moves_the_bytes(name, length):
    # The source overlaps the target: the copy is a memmove, short (under
    # the interpreter lock) or long (without it).
    with shmkit.FreeListAllocator(name, capacity=8 << 20) as heap:
        offset = heap.allocate(length + 8)
        original = (bytes(range(256)) * (length // 256 + 1))[: length + 8]
        heap.write(offset, original)
        view = heap.view(offset)
        heap.write(offset, view[8 : length + 8])  # the tail over the head
        assert heap.read(offset, length) == original[8:]
        heap.write(offset, original)
        heap.write(offset, view[:length])  # the bytes onto themselves
        assert heap.read(offset, length + 8) == original
        del view
        heap.free(offset)
        heap.unlink()
