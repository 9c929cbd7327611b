"""Views follow Python's rule for exported buffers: a block with live views
is not freed under them, and a mapping lives exactly as long as a handle or
a view needs it."""

import gc
import os
import pickle

import pytest

import shmkit
from conftest import FREEING, KINDS, fresh_name


def mapped(name):
    """Lines of this process's maps that map the segment `name`."""
    with open("/proc/self/maps") as maps:
        return sum(1 for line in maps if line.rstrip().endswith(f"/dev/shm/{name}"))


def open_descriptors():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("kind", FREEING)
def test_a_block_with_a_live_view_is_not_freed(kind, name):
    heap = KINDS[kind](name)
    offset = heap.allocate(64)
    view = heap.view(offset)
    with pytest.raises(BufferError, match="view"):
        heap.free(offset)
    assert heap.stats()["live_blocks"] == 1, "the refused free changed nothing"
    view[:3] = b"abc"
    del view
    heap.free(offset)
    assert heap.stats()["live_blocks"] == 0
    heap.close()


def test_everything_made_from_a_view_keeps_the_block(name):
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20)
    offset = heap.allocate(64)
    view = heap.view(offset)
    piece = view[8:16]
    again = memoryview(view)
    del view
    with pytest.raises(BufferError):
        heap.free(offset)
    del piece
    with pytest.raises(BufferError):
        heap.free(offset)
    again.release()
    heap.free(offset)
    heap.close()


def test_a_numpy_array_over_a_view_keeps_the_block(name):
    numpy = pytest.importorskip("numpy")
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20)
    offset = heap.allocate(8 * 16)
    array = numpy.frombuffer(heap.view(offset), dtype=numpy.float64)
    array[:] = 3.0
    with pytest.raises(BufferError):
        heap.free(offset)
    del array
    gc.collect()
    heap.free(offset)
    heap.close()


def test_views_of_other_blocks_do_not_stop_a_free(name):
    heap = shmkit.SizeClassAllocator(name, capacity=1 << 20)
    kept, freed = heap.allocate(64), heap.allocate(64)
    view = heap.view(kept)
    heap.free(freed)
    with pytest.raises(BufferError):
        heap.free(kept)
    heap.free(kept, force=True)  # the caller takes the risk
    del view
    heap.close()


def test_reset_with_live_views_needs_force(name):
    bump = shmkit.BumpAllocator(name, capacity=1 << 20)
    view = bump.view(bump.allocate(16))
    with pytest.raises(BufferError):
        bump.reset()
    bump.reset(force=True)
    assert bump.used_bytes() == 0
    del view
    bump.close()


def test_a_view_outlives_close_and_then_the_mapping_goes(name):
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20)
    offset = heap.allocate(16)
    view = heap.view(offset)
    piece = view[4:8]
    heap.close()
    assert mapped(name) > 0
    view[0] = 7  # still mapped: views never dangle
    piece[0] = 9
    assert view[0] == 7 and view[4] == 9
    del view
    assert mapped(name) > 0, "the slice still needs the mapping"
    del piece
    assert mapped(name) == 0, "the last view took the mapping with it"
    again = shmkit.FreeListAllocator(name, create=False)
    assert again.read(offset, 5) == b"\x07\x00\x00\x00\x09"
    again.close()


def test_attach_view_close_cycles_leak_nothing(name):
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20)
    offset = heap.allocate(4096)
    heap.close()
    descriptors = open_descriptors()
    for _ in range(2000):
        attached = shmkit.FreeListAllocator(name, create=False)
        view = attached.view(offset)
        view[0] = 1
        attached.close()
        del view
    assert mapped(name) == 0
    assert open_descriptors() == descriptors


def test_unpickled_handles_leak_nothing(name):
    heap = shmkit.SizeClassAllocator(name, capacity=1 << 20)
    data = pickle.dumps(heap)
    heap.close()
    for _ in range(500):
        twin = pickle.loads(data)
        assert twin.available_bytes() == 1 << 20
        del twin
    assert mapped(name) == 0


def test_recovery_is_not_refused_for_this_processs_own_views(name):
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20)
    view = heap.view(heap.allocate(64))
    other = shmkit.FreeListAllocator(name, create=False)
    report = heap.recover()
    assert report["live_blocks_after"] == 1
    del view
    other.close()
    heap.close()


def test_many_heaps_with_views_in_one_process(name):
    names = [fresh_name() for _ in range(20)]
    views = []
    try:
        for each in names:
            heap = shmkit.BumpAllocator(each, capacity=4096)
            views.append(heap.view(heap.allocate(8)))
            heap.close()
        for i, view in enumerate(views):
            view[0] = i
        assert [view[0] for view in views] == list(range(20))
    finally:
        del views
        for each in names:
            shmkit.unlink(each)


def test_views_through_one_handle_protect_the_block_from_every_handle(name):
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20)
    offset = heap.allocate(64)
    view = heap.view(offset)
    for other in (pickle.loads(pickle.dumps(heap)), shmkit.FreeListAllocator(name, create=False)):
        with pytest.raises(BufferError):
            other.free(offset)
        other.close()
    bump_name = name + "-bump"
    bump = shmkit.BumpAllocator(bump_name, capacity=4096)
    bump_view = bump.view(bump.allocate(8))
    twin = shmkit.BumpAllocator(bump_name, create=False)
    with pytest.raises(BufferError):
        twin.reset()
    del bump_view
    twin.reset()
    twin.close()
    bump.close()
    shmkit.unlink(bump_name)
    del view
    heap.free(offset)
    heap.close()


def test_a_finalizer_run_while_a_view_is_made_cannot_free_its_block(name):
    """A garbage collection can start inside view() (its first tracked
    allocation), and a finalizer it runs can free the block being viewed:
    the view must already count, so that free is refused."""
    heap = shmkit.FreeListAllocator(name, capacity=1 << 20)
    outcomes = []

    class FreesOnCollection:
        def __init__(self, offset):
            self.offset = offset
            self.cycle = self

        def __del__(self):
            try:
                heap.free(self.offset)
                outcomes.append("freed")
            except BufferError:
                outcomes.append("refused")
            except ValueError:
                outcomes.append("gone")

    threshold = gc.get_threshold()
    viewed_while_freed = refused_while_viewing = 0
    try:
        for _ in range(300):
            offset = heap.allocate(64)
            gc.collect()
            FreesOnCollection(offset)  # garbage now, collected on the next pass
            outcomes.clear()
            gc.set_threshold(1)
            try:
                view = heap.view(offset)
            except ValueError:
                view = None  # collected before view() checked the block
            gc.set_threshold(*threshold)
            during = list(outcomes)  # what the finalizer did inside view()
            gc.collect()
            if view is not None and during == ["freed"]:
                viewed_while_freed += 1
            if view is not None and during == ["refused"]:
                refused_while_viewing += 1
            if view is not None:
                del view
            if "refused" in outcomes:
                heap.free(offset)
    finally:
        gc.set_threshold(*threshold)
    assert viewed_while_freed == 0
    assert refused_while_viewing > 0, "no collection ran inside view(): the test proved nothing"
    assert heap.stats()["live_blocks"] == 0
    heap.close()
