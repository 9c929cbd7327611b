"""recover(): what dead processes and stray writes leave behind is mended,
and refused while others still use the segment."""

import mmap
import multiprocessing
import os
import random
import signal
import struct
import time

import pytest

import shmkit
from conftest import FREEING, KINDS, another_process_mapping

# Where the segment header records the custom header's offset; the Python
# layer starts there (magic, unit, units, units used, peak, requested,
# blocks, generation).
CUSTOM_OFFSET_FIELD = 96


def layer_word(name, index, value=None):
    with open(f"/dev/shm/{name}", "r+b") as file, mmap.mmap(file.fileno(), 0) as memory:
        (custom,) = struct.unpack_from("<Q", memory, CUSTOM_OFFSET_FIELD)
        if value is not None:
            struct.pack_into("<Q", memory, custom + 8 * index, value)
        return struct.unpack_from("<Q", memory, custom + 8 * index)[0]


def test_a_stray_write_through_a_stale_view_is_quarantined(name):
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20, slot_size=64)
    first = heap.allocate(2000)
    keep = heap.allocate(1000)
    heap.write(keep, b"K" * 1000)
    view = heap.view(first)
    heap.free(first, force=True)  # the caller keeps a view it should not
    # Carved from the front of the freed block (a size past the thread
    # cache, whose misses carve a chunk of eight blocks instead).
    small = heap.allocate(600)
    heap.write(small, b"S" * 600)
    view[:] = b"\xff" * len(view)  # lands on the allocator's headers
    del view
    with pytest.raises(shmkit.CorruptSegmentError):
        heap.check()
    # The operation that meets the damage reports it once, and the repair
    # behind it fences the destroyed headers off...
    with pytest.raises(shmkit.CorruptSegmentError, match="block"):
        for _ in range(100):
            heap.free(heap.allocate(1000))
    heap.check()
    assert heap.recover()["bytes_quarantined"] == 0, "nothing left to fence off"
    # ...and the heap goes on: what survived is intact, new blocks work.
    assert heap.read(keep) == b"K" * 1000
    fresh = [heap.allocate(512) for _ in range(100)]
    assert None not in fresh
    for offset in fresh:
        heap.free(offset)
    heap.free(keep)
    heap.check()
    heap.close()


@pytest.mark.parametrize("cls", [shmkit.FreeListAllocator, shmkit.SizeClassAllocator, shmkit.BumpAllocator])
def test_recovery_recounts_the_accounting_from_the_blocks(name, cls):
    heap = cls(name, capacity=1 << 20)
    live = [heap.allocate(100) for _ in range(10)]
    assert None not in live
    used = heap.used_bytes()
    # A process that died between taking from the budget and writing its
    # block's header leaves the counters off; here they are set off by hand.
    layer_word(name, 3, 12345)  # units used
    layer_word(name, 6, 99)  # blocks
    assert heap.used_bytes() != used
    report = heap.recover()
    assert report["live_blocks_before"] == 99
    assert report["live_blocks_after"] == 10
    assert heap.used_bytes() == used
    assert heap.stats()["requested_bytes"] == 1000
    heap.close()


def test_recovery_is_refused_while_another_process_maps_the_segment(name):
    heap = shmkit.SizeClassAllocator(name, capacity=1 << 20)
    with another_process_mapping(shmkit.SizeClassAllocator, name) as other:
        with pytest.raises(shmkit.SegmentInUseError, match=str(other.pid)):
            heap.recover()
        heap.recover(force=True)
    heap.recover()
    heap.close()


def churn(name, slot, ledger):
    """Allocates, tags, checks and frees blocks, keeping each live block's
    offset in its slot of the ledger (0 when none): noted after the
    allocation, struck before the free, so a kill at any point leaves the
    ledger naming only blocks this worker holds."""
    heap = shmkit.FreeListAllocator(name, create=False)
    entries = heap.view(ledger)[64 * slot : 64 * slot + 64].cast("Q")
    rng = random.Random(os.getpid())
    while True:
        index = rng.randrange(8)
        offset = entries[index]
        if offset:
            assert heap.read(offset, 8) == struct.pack("<Q", offset), "a block was overwritten"
            entries[index] = 0
            heap.free(offset)
        else:
            offset = heap.allocate(rng.randrange(16, 2000))
            if offset is not None:
                entries[index] = offset
                heap.write(offset, struct.pack("<Q", offset))


def free_what_the_ledger_names(heap, ledger, slot):
    entries = struct.unpack_from("<8Q", heap.read(ledger), 64 * slot)
    for offset in entries:
        if offset:
            heap.free(offset)


def test_killed_workers_leave_nothing_that_recovery_does_not_mend(name):
    heap = shmkit.FreeListAllocator(name, capacity=8 << 20, slot_size=64)
    workers_count = 3
    ledger = heap.allocate(64 * workers_count)
    heap.write(ledger, bytes(64 * workers_count))
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=churn, args=(name, i, ledger)) for i in range(workers_count)]
    for worker in workers:
        worker.start()
    kills = 0
    deadline = time.monotonic() + 3
    rng = random.Random(7)
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.02, 0.1))
        victim = rng.randrange(workers_count)
        assert workers[victim].is_alive(), f"worker {victim} failed (exit {workers[victim].exitcode})"
        os.kill(workers[victim].pid, signal.SIGKILL)
        workers[victim].join(timeout=30)
        kills += 1
        # The application's ledger names the victim's blocks: free them
        # while the others go on.
        free_what_the_ledger_names(heap, ledger, victim)
        heap.view(ledger)[64 * victim : 64 * victim + 64] = bytes(64)
        workers[victim] = context.Process(target=churn, args=(name, victim, ledger))
        workers[victim].start()
    for worker in workers:
        assert worker.is_alive(), f"a worker failed (exit {worker.exitcode})"
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(timeout=30)
    for slot in range(workers_count):
        free_what_the_ledger_names(heap, ledger, slot)
    assert kills >= 10
    report = heap.recover()
    heap.check()
    # Besides the ledger, only blocks a victim was allocating or freeing
    # at the instant it died (not yet in, or already out of, its ledger)
    # may live: at most one per kill. The accounting matches the blocks.
    stats = heap.stats()
    assert stats["live_blocks"] == report["live_blocks_after"]
    assert 1 <= stats["live_blocks"] <= 1 + kills + workers_count
    heap.close()


def _allocate_then_die(class_name, name, conn, cache_first):
    heap = getattr(shmkit, class_name)(name, create=False)
    if cache_first:
        heap.free(heap.allocate(64))  # into this thread's cache
    offset = heap.allocate(100)
    conn.send(offset)
    conn.close()
    os.kill(os.getpid(), signal.SIGKILL)


def killed_after_allocating(heap, cache_first=False):
    """Forks a process that allocates a block, tells us its offset and is
    SIGKILLed before it can store it anywhere; returns the offset."""
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe()
    child = context.Process(
        target=_allocate_then_die, args=(type(heap).__name__, heap.name, theirs, cache_first)
    )
    child.start()
    assert ours.poll(30), "the child did not allocate"
    offset = ours.recv()
    child.join(timeout=30)
    assert child.exitcode == -signal.SIGKILL
    return offset


@pytest.mark.parametrize("kind", FREEING)
def test_a_block_handed_to_a_killed_process_comes_back_once(kind, name):
    heap = KINDS[kind](name, capacity=1 << 20)
    offset = killed_after_allocating(heap)
    assert heap.used_bytes() > 0
    assert heap.take_dead_handoffs() == [offset]
    assert heap.take_dead_handoffs() == [], "each record is taken once"
    heap.free(offset)
    heap.recover()
    heap.check()
    assert heap.used_bytes() == 0 and heap.stats()["live_blocks"] == 0
    heap.close()


@pytest.mark.parametrize("damage", ["retired", "never written"])
def test_a_dead_hand_off_without_a_live_header_is_freed_not_returned(name, damage):
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20)
    offset = killed_after_allocating(heap)
    # As a process killed inside free (header retired) or inside allocate
    # (raw block handed out, header not yet written) would leave it.
    with open(f"/dev/shm/{name}", "r+b") as file, mmap.mmap(file.fileno(), 0) as memory:
        if damage == "retired":
            struct.pack_into("<Q", memory, offset - 8, 0)
        else:
            struct.pack_into("<QQ", memory, offset - 16, 0, 0)
    report = heap.recover()
    assert report["handed_to_dead"] == []
    assert report["blocks_reclaimed"] >= 1
    heap.check()
    assert heap.used_bytes() == 0 and heap.stats()["live_blocks"] == 0
    assert heap.recover()["handed_to_dead"] == []
    heap.close()


def test_recover_reports_the_blocks_handed_to_dead_processes(name):
    heap = shmkit.SizeClassAllocator(name, capacity=1 << 20)
    offset = killed_after_allocating(heap)
    report = heap.recover()
    assert report["handed_to_dead"] == [offset]
    assert heap.read(offset, 0) == b"", "still a live block, for the application"
    heap.free(offset)
    assert heap.used_bytes() == 0


def test_check_tells_a_killed_process_s_cache_from_corruption(name):
    heap = shmkit.ThreadLocalAllocator(name, capacity=1 << 20)
    offset = killed_after_allocating(heap, cache_first=True)
    with pytest.raises(shmkit.NeedsRecoveryError, match="dead process"):
        heap.check()
    assert issubclass(shmkit.NeedsRecoveryError, shmkit.CorruptSegmentError)
    assert heap.recover()["caches_reclaimed"] == 1
    heap.check()
    heap.free(offset)
    heap.check()
    assert heap.used_bytes() == 0
    heap.close()
