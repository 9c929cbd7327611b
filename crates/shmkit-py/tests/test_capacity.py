"""`capacity` is what users can allocate, as in `shared_allocator`: headers
and the allocator's state come on top of it, and the allocator says None
exactly when the capacity is used up."""

import pytest

import shmkit


@pytest.mark.parametrize("capacity, size", [(10 << 20, 256), (1 << 20, 100), (1 << 16, 1), (100, 7), (4096, 4096)])
def test_a_bump_allocator_gives_capacity_over_n_blocks_of_n(name, capacity, size):
    heap = shmkit.BumpAllocator(name, capacity=capacity)
    assert heap.capacity == capacity
    count = 0
    while heap.allocate(size) is not None:
        count += 1
    assert count == capacity // size
    assert heap.used_bytes() == count * size
    assert heap.available_bytes() == capacity - count * size
    if capacity % size == 0:
        assert heap.available_bytes() == 0
    heap.check()
    heap.close()


@pytest.mark.parametrize("kind", ["StackAllocator", "SizeClassAllocator", "ThreadLocalAllocator", "BuddyAllocator"])
@pytest.mark.parametrize("size", [64, 256, 4096])
def test_the_other_allocators_hold_their_capacity_in_blocks(name, kind, size):
    capacity = 1 << 20
    heap = getattr(shmkit, kind)(name, capacity=capacity)
    offsets = []
    while (offset := heap.allocate(size)) is not None:
        offsets.append(offset)
    assert len(offsets) == capacity // size
    assert heap.available_bytes() == 0
    if kind != "StackAllocator":
        for offset in offsets[::2]:
            heap.free(offset)
        assert heap.available_bytes() == len(offsets[::2]) * size
        again = [heap.allocate(size) for _ in offsets[::2]]
        assert None not in again
        assert heap.allocate(size) is None
    heap.check()
    heap.close()


@pytest.mark.parametrize("slot_size, num_slots", [(256, 40960), (100, 1000), (4096, 10), (1, 5000)])
def test_the_free_list_holds_exactly_its_slots(name, slot_size, num_slots):
    heap = shmkit.FreeListAllocator(name, slot_size=slot_size, num_slots=num_slots)
    assert (heap.slot_size, heap.num_slots) == (slot_size, num_slots)
    assert heap.capacity == slot_size * num_slots
    offsets = []
    while (offset := heap.allocate()) is not None:
        offsets.append(offset)
    assert len(offsets) == num_slots
    assert heap.used_slots() == num_slots and heap.available_slots() == 0
    assert heap.available_bytes() == 0
    for offset in offsets:
        heap.write(offset, b"s" * slot_size)  # a slot is the block's to use
        heap.free(offset)
    assert heap.available_slots() == num_slots
    heap.check()
    heap.close()


def test_the_free_list_counts_whole_slots(name):
    heap = shmkit.FreeListAllocator(name, capacity=4096, slot_size=256)
    assert heap.num_slots == 16
    a = heap.allocate(10)
    b = heap.allocate(600)  # three slots
    assert heap.used_slots() == 4 and heap.used_bytes() == 4 * 256
    assert heap.stats()["requested_bytes"] == 610
    assert heap.allocate(256 * 12 + 1) is None, "thirteen slots do not fit in twelve"
    assert heap.allocate(256 * 12) is not None
    assert heap.available_slots() == 0
    heap.free(a)
    heap.free(b)
    heap.close()


def test_free_list_defaults_follow_the_peer(name):
    heap = shmkit.FreeListAllocator(name)
    assert (heap.capacity, heap.slot_size, heap.num_slots) == (10 << 20, 256, 40960)
    heap.close()
    shmkit.unlink(name)
    odd = shmkit.FreeListAllocator(name, slot_size=100)
    assert odd.num_slots == (10 << 20) // 100, "num_slots defaults to capacity // slot_size"
    assert odd.total_size < 32 << 20, "not a 64 MiB segment"
    odd.close()


@pytest.mark.parametrize("slab_size, num_slabs", [(256, 1), (256, 10), (256, 4096), (100, 77), (4000, 33), (65536, 5)])
def test_a_slab_allocator_hands_out_exactly_num_slabs(name, slab_size, num_slabs):
    heap = shmkit.SlabAllocator(name, slab_size=slab_size, num_slabs=num_slabs)
    assert (heap.slab_size, heap.num_slabs) == (slab_size, num_slabs)
    offsets = []
    while (offset := heap.allocate()) is not None:
        offsets.append(offset)
    assert len(offsets) == num_slabs
    assert heap.used_slabs() == num_slabs and heap.available_slabs() == 0
    heap.free(offsets[0])
    assert heap.available_slabs() == 1
    assert heap.allocate() == offsets[0]
    heap.close()


@pytest.mark.parametrize(
    "make",
    [
        lambda name: shmkit.BumpAllocator(name, capacity=0),
        lambda name: shmkit.FreeListAllocator(name, capacity=100),  # no 256-byte slot
        lambda name: shmkit.FreeListAllocator(name, slot_size=0),
        lambda name: shmkit.SlabAllocator(name, num_slabs=0),
        lambda name: shmkit.SlabAllocator(name, slab_size=-1),
        lambda name: shmkit.SizeClassAllocator(name, capacity=1 << 64),
        lambda name: shmkit.FreeListAllocator(name, slot_size=1 << 40, num_slots=1 << 40),
    ],
)
def test_impossible_capacities_are_value_errors(name, make):
    with pytest.raises(ValueError):
        make(name)


def test_a_tiny_capacity_is_exactly_that(name):
    heap = shmkit.BumpAllocator(name, capacity=100)
    assert heap.capacity == 100
    assert heap.allocate(100) is not None
    assert heap.allocate(1) is None
    heap.close()
