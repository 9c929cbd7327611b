"""Several Python processes share one segment (fork and spawn): no block is
handed out twice, no tag is overwritten, no counter update is lost."""

import multiprocessing
import os
import struct

import pytest

import shmkit
from conftest import KINDS

PROCESSES = 3
ROUNDS = 400


def tag(seq, size):
    """Bytes that name their writer (pid) and block (seq)."""
    stamp = struct.pack("<II", os.getpid(), seq)
    return (stamp * (size // 8 + 1))[:size]


def churn(heap, frees):
    """Allocates, tags, checks and (for freeing allocators) frees blocks;
    returns the blocks it still holds as (offset, size, seq)."""
    live = []
    for seq in range(ROUNDS):
        size = 16 + (seq * 37) % 200
        offset = heap.allocate(size)
        assert offset is not None, "segment full"
        heap.write(offset, tag(seq, size))
        live.append((offset, size, seq))
        if frees and seq % 3 == 2:
            # Check and free an older block: nobody else wrote into it.
            victim = live.pop(len(live) // 2)
            assert heap.read(victim[0], victim[1]) == tag(victim[2], victim[1])
            heap.free(victim[0])
    for offset, size, seq in live:
        assert heap.read(offset, size) == tag(seq, size), "a block was overwritten"
    return live


def worker(heap, frees, barrier, results):
    barrier.wait()
    live = churn(heap, frees)
    results.put((os.getpid(), live))
    heap.close()


def run_processes(method, heap, frees):
    context = multiprocessing.get_context(method)
    barrier = context.Barrier(PROCESSES)
    results = context.Queue()
    processes = [
        context.Process(target=worker, args=(heap, frees, barrier, results))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    reports = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=120)
        assert process.exitcode == 0
    return reports


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("kind", ["free_list", "slab", "size_class", "thread_local", "buddy", "bump"])
def test_processes_share_a_segment(method, kind, name):
    heap = KINDS[kind](name, capacity=16 << 20)
    frees = kind != "bump"
    reports = run_processes(method, heap, frees)
    # Every live block of every process, disjoint and still tagged.
    blocks = []
    for pid, live in reports:
        for offset, size, seq in live:
            blocks.append((offset, size, pid, seq))
    blocks.sort()
    for (offset, size, *_), (next_offset, *_rest) in zip(blocks, blocks[1:]):
        assert offset + size <= next_offset, "two processes were given overlapping blocks"
    for offset, size, pid, seq in blocks:
        stamp = struct.pack("<II", pid, seq)
        assert heap.read(offset, size) == (stamp * (size // 8 + 1))[:size]
    # No update of the shared counters was lost.
    assert heap.stats()["requested_bytes"] == sum(size for _, size, _, _ in blocks)
    assert heap.stats()["live_blocks"] == len(blocks)
    heap.check()
    heap.close()


def attach_and_report(kind_class, name, queue):
    heap = getattr(shmkit, kind_class)(name, create=False)
    queue.put(heap.used_bytes())
    heap.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_an_attaching_process_never_removes_the_segment(method, name):
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20)
    heap.allocate(123)
    context = multiprocessing.get_context(method)
    queue = context.Queue()
    child = context.Process(target=attach_and_report, args=("FreeListAllocator", name, queue))
    child.start()
    assert queue.get(timeout=60) == 256, "one slot taken"
    child.join(timeout=60)
    assert child.exitcode == 0
    assert os.path.exists(f"/dev/shm/{name}")
    heap.unlink()
    heap.close()
