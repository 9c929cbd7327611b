"""Shared numpy arrays: bytes in the segment, handles through pickle, the
same bytes in every process (fork and spawn)."""

import multiprocessing
import pickle
import subprocess
import sys

import pytest

import shmkit
from conftest import FREEING, KINDS

numpy = pytest.importorskip("numpy")


def fill_in_child(array, value):
    array[...] = value


def make_in_child(heap, queue):
    array = heap.ndarray((3, 4), "int64")
    array[...] = numpy.arange(12).reshape(3, 4) * 10
    queue.put(array)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_an_array_written_in_a_child_is_read_in_the_parent(name, method):
    context = multiprocessing.get_context(method)
    with shmkit.FreeListAllocator(name, capacity=8 << 20) as heap:
        array = heap.ndarray((256, 1024), "float32")
        assert isinstance(array, shmkit.SharedArray)
        assert (array == 0).all()
        child = context.Process(target=fill_in_child, args=(array[1:], 2.5))
        child.start()
        child.join()
        assert child.exitcode == 0
        assert (array[0] == 0).all() and (array[1:] == 2.5).all()
        # And the other way: made in the child, sent back as a handle.
        queue = context.Queue()
        child = context.Process(target=make_in_child, args=(heap, queue))
        child.start()
        received = queue.get(timeout=60)
        child.join()
        assert child.exitcode == 0
        assert (received == numpy.arange(12).reshape(3, 4) * 10).all()
        heap.free_array(received)
        heap.free_array(array)
        heap.unlink()


@pytest.mark.parametrize("kind", FREEING + ["stack"])
def test_the_pickle_is_a_handle_not_the_data(kind, name):
    heap = KINDS[kind](name, capacity=8 << 20, slab_size=2 << 20)
    array = heap.ndarray(1 << 17, "float64")  # 1 MiB
    array[:] = numpy.arange(1 << 17)
    handle = pickle.dumps(array)
    assert len(handle) < 1024, len(handle)
    same = pickle.loads(handle)
    same[5] = -1.0
    assert array[5] == -1.0, "a view of the same bytes"
    # Slices and strided views travel as handles into the block too.
    for view in (array[10:20], array[::-3], array.reshape(512, 256)[:, 7]):
        copy = pickle.loads(pickle.dumps(view))
        assert copy.shape == view.shape and (copy == view).all()
        copy[0] = 42.0
        assert view[0] == 42.0
    # A result in new memory pickles as data.
    total = pickle.loads(pickle.dumps(array + 1))
    assert type(total) is numpy.ndarray and total[6] == 7.0
    heap.free_array(array)
    heap.close()
    heap.unlink()


def test_freed_and_foreign_handles_are_refused(name):
    heap = shmkit.SizeClassAllocator(name, capacity=4 << 20)
    array = heap.ndarray((8, 8), "uint16")
    handle = pickle.dumps(array)
    heap.free_array(array)
    with pytest.raises(ValueError, match="freed"):
        pickle.dumps(array)
    with pytest.raises(ValueError, match="no live array block"):
        pickle.loads(handle)
    with pytest.raises(ValueError, match="already freed"):
        heap.free_array(array)
    with pytest.raises(ValueError, match="not a shared array"):
        heap.free_array(numpy.zeros(4))
    other = shmkit.FreeListAllocator(name + "-other", capacity=1 << 20)
    theirs = other.ndarray(4)
    with pytest.raises(ValueError, match="lives in segment"):
        heap.free_array(theirs)
    other.free_array(theirs)
    other.close()
    other.unlink()
    heap.close()
    heap.unlink()


@pytest.mark.parametrize("kind", FREEING)
def test_a_handle_to_a_block_allocated_again_at_its_offset_is_refused(kind, name):
    heap = KINDS[kind](name, capacity=4 << 20, slab_size=4096)
    array = heap.ndarray(64, "float64")
    offset = array._shmkit.offset
    handle = pickle.dumps(array)
    heap.free_array(array)
    # The next array of the same size takes the same offset: the old handle
    # must not rebuild onto its bytes.
    successor = heap.ndarray(64, "float64")
    assert successor._shmkit.offset == offset, "the allocator did not reuse the offset"
    successor[:] = 7.0
    with pytest.raises(ValueError, match="another allocated there since"):
        pickle.loads(handle)
    assert (pickle.loads(pickle.dumps(successor)) == 7.0).all(), "its own handle still works"
    heap.free_array(successor)
    heap.close()
    heap.unlink()


def test_an_allocator_without_room_raises_memory_error(name):
    with shmkit.FreeListAllocator(name, capacity=1 << 16) as heap:
        with pytest.raises(MemoryError):
            heap.ndarray(1 << 20, "uint8")
        heap.unlink()


def test_without_numpy_the_error_says_what_to_install(name):
    script = (
        "import sys; sys.modules['numpy'] = None\n"
        "import shmkit\n"
        f"heap = shmkit.FreeListAllocator({name!r}, capacity=1 << 20)\n"
        "try:\n"
        "    heap.ndarray(4)\n"
        "except ImportError as error:\n"
        "    print('ImportError:', error)\n"
        "finally:\n"
        "    heap.close(); heap.unlink()\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert "ImportError: shmkit's shared arrays need numpy (pip install numpy)" in out.stdout


def test_structured_dtypes_keep_their_fields(name):
    with shmkit.FreeListAllocator(name, capacity=1 << 20) as heap:
        records = heap.ndarray(3, numpy.dtype([("id", "<i4"), ("score", "<f8")]))
        records["id"] = [1, 2, 3]
        records["score"] = [0.5, 1.5, 2.5]
        same = pickle.loads(pickle.dumps(records))
        assert same.dtype.names == ("id", "score")
        assert list(same["id"]) == [1, 2, 3] and same["score"][2] == 2.5
        del same
        heap.free_array(records)
        heap.unlink()
