"""shmkit.Dict: a MutableMapping shared by processes, checked against a
plain dict, under concurrent writers, after SIGKILLs inside writes, and
against hostile bytes."""

import multiprocessing
import os
import pickle
import random
import signal
import subprocess
import sys
import time

import pytest

import shmkit


def test_keys_and_values_round_trip(name):
    with shmkit.Dict(name, capacity=1 << 20) as d:
        d["a"] = 1
        d[b"a"] = b"raw"
        d["array"] = bytearray(b"xy")
        d["view"] = memoryview(b"zw")
        d["nested"] = {"list": [1, 2.5, None]}
        d["é"] = "unicode"
        assert d["a"] == 1 and d[b"a"] == b"raw", "str and bytes keys are different keys"
        assert d["array"] == b"xy" and d["view"] == b"zw", "bytes-like values come back as bytes"
        assert d["nested"] == {"list": [1, 2.5, None]}
        assert d["é"] == "unicode"
        assert len(d) == 6
        assert set(d) == {"a", b"a", "array", "view", "nested", "é"}
        assert "a" in d and b"a" in d and "b" not in d and 5 not in d
        with pytest.raises(KeyError):
            d["missing"]
        with pytest.raises(TypeError, match="keys are str or bytes"):
            d[5] = 1
        with pytest.raises(KeyError):
            d[5]
        d.unlink()


def test_the_mapping_methods(name):
    with shmkit.Dict(name, capacity=1 << 20) as d:
        d.update({"x": 1, "y": 2}, z=3)
        assert d == {"x": 1, "y": 2, "z": 3}
        assert sorted(d.keys()) == ["x", "y", "z"]
        assert sorted(d.values()) == [1, 2, 3]
        assert sorted(d.items()) == [("x", 1), ("y", 2), ("z", 3)]
        assert ("x", 1) in d.items() and "x" in d.keys()
        assert d.get("x") == 1 and d.get("nope") is None and d.get("nope", 7) == 7
        assert d.pop("x") == 1 and d.pop("x", "gone") == "gone"
        with pytest.raises(KeyError):
            d.pop("x")
        assert d.setdefault("y", 99) == 2, "an existing value wins"
        assert d.setdefault("w", 99) == 99 and d["w"] == 99
        assert d.setdefault("none") is None and d["none"] is None
        assert d.copy() == {"y": 2, "z": 3, "w": 99, "none": None}
        key, value = d.popitem()
        assert key not in d and value in (2, 3, 99, None)
        remaining = next(iter(d))
        del d[remaining]
        assert remaining not in d
        with pytest.raises(KeyError):
            del d["never"]
        d.clear()
        assert len(d) == 0 and list(d) == [] and d == {}
        with pytest.raises(KeyError, match="empty"):
            d.popitem()
        d.check()
        d.unlink()


def test_a_random_workload_matches_a_plain_dict(name):
    rng = random.Random(7)
    model = {}
    with shmkit.Dict(name, capacity=16 << 20) as d:
        for step in range(30_000):
            key = f"k{rng.randrange(3000)}" if rng.random() < 0.5 else b"b%d" % rng.randrange(3000)
            action = rng.random()
            if action < 0.55:
                value = rng.choice([step, b"v" * rng.randrange(0, 300), (step, "t")])
                d[key] = value
                model[key] = value
            elif action < 0.8:
                assert d.pop(key, None) == model.pop(key, None)
            elif action < 0.9:
                assert d.setdefault(key, step) == model.setdefault(key, step)
            else:
                assert d.get(key) == model.get(key)
        assert len(d) == len(model)
        assert dict(d.items()) == model
        d.check()
        blocks = d.stats()["blocks"]
        # One block per entry, at most one slot array per stripe, the table.
        assert len(model) + 1 <= blocks <= len(model) + 1 + 128
        d.clear()
        assert d.stats()["blocks"] == 1, "clear gives every block but the table back"
        d.unlink()


def test_large_values_and_a_full_segment(name):
    with shmkit.Dict(name, capacity=4 << 20) as d:
        big = os.urandom(1 << 20)
        d["big"] = big
        assert d["big"] == big
        d["small"] = 1
        with pytest.raises(MemoryError):
            for index in range(10):
                d[f"fill{index}"] = big
        assert d["big"] == big and d["small"] == 1, "a refused write loses nothing"
        d.check()
        for key in [k for k in d if k.startswith("fill")]:
            del d[key]
        d["again"] = big  # the room came back
        assert d["again"] == big
        d.unlink()


def test_closed_dicts_refuse_and_pickles_attach_by_name(name):
    d = shmkit.Dict(name, capacity=1 << 20)
    d["k"] = "v"
    other = pickle.loads(pickle.dumps(d))
    assert other["k"] == "v" and other.name == name
    other["k2"] = 2
    assert d["k2"] == 2
    other.close()
    d.close()
    assert d.closed and "closed" in repr(d)
    with pytest.raises(ValueError, match="closed"):
        d["k"]
    with pytest.raises(ValueError, match="closed"):
        with d:
            pass
    attached = shmkit.Dict(name, create=False)
    assert attached["k"] == "v"
    attached.close()
    d.unlink()
    with pytest.raises(FileNotFoundError):
        shmkit.Dict(name, create=False)


def test_a_segment_that_is_no_dict_is_refused(name):
    heap = shmkit.SizeClassAllocator(name, capacity=1 << 20)
    with pytest.raises(shmkit.CorruptSegmentError):
        shmkit.Dict(name, create=False)
    heap.close()
    heap.unlink()


WRITERS = 3
PER_WRITER = 2000


def write_own_keys(d, writer):
    """Each writer sets its own keys, rewrites every third, deletes every
    fifth, and bumps shared keys with setdefault (one winner for all)."""
    for seq in range(PER_WRITER):
        d[f"w{writer}-{seq}"] = (writer, seq)
        if seq % 3 == 0:
            d[f"w{writer}-{seq}"] = (writer, seq, "again")
        if seq % 5 == 0:
            del d[f"w{writer}-{seq}"]
        d.setdefault(f"shared-{seq % 50}", writer)


def expected_for(writer):
    model = {}
    for seq in range(PER_WRITER):
        if seq % 5 == 0:
            continue
        model[f"w{writer}-{seq}"] = (writer, seq, "again") if seq % 3 == 0 else (writer, seq)
    return model


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_concurrent_writers_match_the_model(name, method):
    context = multiprocessing.get_context(method)
    d = shmkit.Dict(name, capacity=32 << 20)
    writers = [context.Process(target=write_own_keys, args=(d, w)) for w in range(WRITERS)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    model = {}
    for writer in range(WRITERS):
        model.update(expected_for(writer))
    held = dict(d.items())
    shared = {key: held.pop(key) for key in list(held) if key.startswith("shared-")}
    assert held == model, "a write was lost or a deleted key came back"
    assert len(shared) == 50 and set(shared.values()) <= set(range(WRITERS))
    assert len(d) == len(model) + 50
    d.check()
    d.close()
    d.unlink()


def racing_setdefault(d, writer, results):
    results.put(d.setdefault("race", writer))


def test_setdefault_has_one_winner_across_processes(name):
    context = multiprocessing.get_context("fork")
    d = shmkit.Dict(name, capacity=1 << 20)
    results = context.Queue()
    racers = [context.Process(target=racing_setdefault, args=(d, w, results)) for w in range(6)]
    for racer in racers:
        racer.start()
    seen = {results.get(timeout=60) for _ in racers}
    for racer in racers:
        racer.join(60)
    assert seen == {d["race"]}, seen
    d.close()
    d.unlink()


KILL_KEYS = 64
PAYLOAD = b"p" * 200


def busy_writer(d):
    """Writes, rewrites and deletes forever; every value names its key."""
    rng = random.Random(os.getpid())
    generation = 0
    while True:
        generation += 1
        key = f"k{rng.randrange(KILL_KEYS)}"
        action = rng.random()
        if action < 0.6:
            d[key] = (key, generation, PAYLOAD)
        elif action < 0.8:
            d.pop(key, None)
        elif action < 0.9:
            d.setdefault(key, (key, generation, PAYLOAD))
        else:
            d.clear()


def stop_inside_a_write(d, pid, rng, patience=20.0):
    """Freezes `pid` (SIGSTOP) at moments picked at random until it is
    frozen holding a stripe lock, then leaves it stopped there. Whether it
    got one in `patience` seconds."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        time.sleep(rng.random() * 0.002)
        os.kill(pid, signal.SIGSTOP)
        os.waitpid(pid, os.WUNTRACED)
        if d._raw.held_stripes():
            return True
        os.kill(pid, signal.SIGCONT)
    return False


INSIDE_KILLS = 40


def test_sigkill_inside_writes_leaves_the_dict_whole(name):
    """Each victim is killed while it holds a stripe lock (frozen there
    first, so every kill lands inside a write); after each, recover()
    reports the lock it took over, every value is whole and names its key,
    check() is clean, and no block leaks."""
    context = multiprocessing.get_context("fork")
    d = shmkit.Dict(name, capacity=8 << 20)
    rng = random.Random(11)
    taken_over = 0
    for _ in range(INSIDE_KILLS):
        victim = context.Process(target=busy_writer, args=(d,))
        victim.start()
        time.sleep(0.005)
        assert stop_inside_a_write(d, victim.pid, rng), "never caught inside a write"
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(30)
        taken_over += d.recover()["locks_taken_over"]
        assert not d._raw.held_stripes()
        for key, value in d.items():
            assert value[0] == key and value[2] == PAYLOAD, (key, value)
        d.check()
    assert taken_over == INSIDE_KILLS, f"{taken_over} locks taken over, {INSIDE_KILLS} kills"
    # Every write still works, and every block comes back: recover() after
    # each kill freed what the dead had made or was retiring.
    for key in range(KILL_KEYS):
        d[f"k{key}"] = ("after", key)
    assert all(d[f"k{key}"] == ("after", key) for key in range(KILL_KEYS))
    d.clear()
    leaked = d.stats()["blocks"] - 1
    assert leaked == 0, f"{leaked} blocks leaked over {INSIDE_KILLS} kills"
    d.close()
    d.unlink()


def test_a_writer_killed_holding_a_stripe_does_not_stall_the_others(name):
    """A survivor keeps writing every key while victims die mid-write."""
    context = multiprocessing.get_context("fork")
    d = shmkit.Dict(name, capacity=8 << 20)
    for _ in range(10):
        victim = context.Process(target=busy_writer, args=(d,))
        victim.start()
        time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(30)
        # No recover(): the survivor's own writes mend the stripes.
        for key in range(KILL_KEYS):
            d[f"k{key}"] = ("survivor", key)
        assert all(d[f"k{key}"] == ("survivor", key) for key in range(KILL_KEYS))
    # The allocator may hold a block a victim was handed or freeing halfway:
    # check() says so, and recover() mends it.
    d.recover()
    d.check()
    d.close()
    d.unlink()


HOSTILE_READER = """
import shmkit, sys
try:
    d = shmkit.Dict(sys.argv[1], create=False)
except (shmkit.CorruptSegmentError, ValueError, OSError):
    sys.exit(0)
outcomes = 0
for call in (
    lambda: len(d),
    lambda: list(d.items()),
    lambda: d.get("k1"),
    lambda: d.__setitem__("k1", b"new"),
    lambda: d.pop("k2", None),
    lambda: d.check(),
    lambda: d.clear(),
):
    try:
        call()
    except (shmkit.CorruptSegmentError, ValueError, KeyError, MemoryError, TimeoutError):
        pass
    outcomes += 1
sys.exit(0 if outcomes == 7 else 1)
"""


@pytest.mark.parametrize("seed", range(6))
def test_hostile_bytes_give_errors_not_signals(name, seed):
    with shmkit.Dict(name, capacity=1 << 20) as d:
        for index in range(300):
            d[f"k{index}"] = b"v" * (index % 50)
    rng = random.Random(seed)
    path = f"/dev/shm/{name}"
    size = os.path.getsize(path)
    with open(path, "r+b") as segment:
        # Past the segment's own header (which has its own tests), words of
        # garbage, zeros and small numbers where the dict keeps its table.
        for _ in range(400):
            segment.seek(rng.randrange(4096, size - 8) & ~7)
            segment.write(
                rng.choice([os.urandom(8), bytes(8), rng.randrange(1 << 20).to_bytes(8, "little")])
            )
    reader = subprocess.run(
        [sys.executable, "-c", HOSTILE_READER, name], timeout=120, capture_output=True
    )
    assert reader.returncode == 0, (reader.returncode, reader.stderr.decode()[-2000:])


def threaded_work(d, tag):
    """One thread's writes: keys only it touches, so its final state is
    known; reads and snapshots in between."""
    for i in range(3000):
        d[f"{tag}-{i % 300}"] = (tag, i)
        d.get(f"{tag}-{(i * 7) % 300}")
        if i % 11 == 0:
            d.pop(f"{tag}-{i % 300}", None)
        if i % 997 == 0:
            list(d.items())


def threaded_model(tag):
    model = {}
    for i in range(3000):
        model[f"{tag}-{i % 300}"] = (tag, i)
        if i % 11 == 0:
            model.pop(f"{tag}-{i % 300}", None)
    return model


def threads_of(d, prefix):
    import threading

    threads = [threading.Thread(target=threaded_work, args=(d, f"{prefix}{t}")) for t in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_threads_of_several_processes_at_once(name):
    context = multiprocessing.get_context("fork")
    d = shmkit.Dict(name, capacity=16 << 20)
    others = [context.Process(target=threads_of, args=(d, f"p{p}-")) for p in range(2)]
    for other in others:
        other.start()
    threads_of(d, "main-")
    for other in others:
        other.join(120)
        assert other.exitcode == 0
    model = {}
    for prefix in ["main-", "p0-", "p1-"]:
        for t in range(3):
            model.update(threaded_model(f"{prefix}{t}"))
    assert dict(d.items()) == model
    d.check()
    d.close()
    d.unlink()


def test_keys_of_other_types_are_absent_and_surrogates_are_keys(name):
    with shmkit.Dict(name, capacity=1 << 20) as d:
        assert d.get(1) is None and d.get(1, "x") == "x"
        assert d.pop(1, "gone") == "gone"
        with pytest.raises(KeyError):
            d[1]
        with pytest.raises(KeyError):
            del d[(1, 2)]
        with pytest.raises(KeyError):
            d.pop(1)
        with pytest.raises(TypeError):
            d[[1]]  # unhashable, as a dict says
        with pytest.raises(TypeError):
            d[1] = "v"
        d["\ud800"] = "lone surrogate"
        assert d["\ud800"] == "lone surrogate" and "\ud800" in d
        assert "\ud800" in list(d)
        d |= {"a": 1}
        assert d["a"] == 1
        assert (d | {"b": 2}) == {"\ud800": "lone surrogate", "a": 1, "b": 2}
        assert ({"a": 0, "c": 3} | d) == {"a": 1, "c": 3, "\ud800": "lone surrogate"}
        d.unlink()


def test_recover_waits_for_calls_in_flight_through_any_handle(name):
    """A thread copies a large value in through a second handle (without
    the interpreter lock) while the first handle's recover() runs: recover
    refuses for as long as that write is in flight, and nothing is freed
    from under it."""
    import threading

    d = shmkit.Dict(name, capacity=256 << 20)
    other = shmkit.Dict(name, create=False)
    big = os.urandom(32 << 20)
    refused = 0
    for round_ in range(5):
        writer = threading.Thread(target=other.__setitem__, args=(f"big{round_}", big))
        writer.start()
        while writer.is_alive():
            try:
                d.recover()
            except shmkit.SegmentInUseError:
                refused += 1
        writer.join()
        assert d[f"big{round_}"] == big
        del d[f"big{round_}"]
        d.check()
    assert refused > 0, "recover() never met the write in flight"
    d.clear()
    assert d.stats()["blocks"] == 1, "a block was lost or freed twice"
    other.close()
    d.close()
    d.unlink()


def forks_while_a_write_is_in_flight(name, result):
    """A process whose thread writes large values; it forks a child in the
    middle of one, then exits. The child, alone, must be able to recover."""
    import threading

    d = shmkit.Dict(name, create=False)
    big = os.urandom(32 << 20)
    writer = threading.Thread(target=lambda: [d.__setitem__("big", big) for _ in range(20)])
    writer.start()
    time.sleep(0.05)
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        # The child: wait for the parent to be gone, then recover. The
        # parent's leader thread can be reaped (and this child reparented)
        # while its writer thread is still exiting with the segment mapped:
        # "in use" then passes within moments, so it is asked again; a
        # refusal for a call in flight is final.
        while os.getppid() == parent:
            time.sleep(0.01)
        deadline = time.monotonic() + 10
        while True:
            try:
                d.recover()
                result.value = 1
                break
            except shmkit.SegmentInUseError as refusal:
                result.value = 2 if "in flight" in str(refusal) else 3
                if result.value == 2 or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
        os._exit(0)
    os._exit(0)  # with the write still in flight


def test_a_forked_child_does_not_inherit_its_parents_calls_in_flight(name):
    context = multiprocessing.get_context("fork")
    d = shmkit.Dict(name, capacity=256 << 20)
    d.close()  # this process must not map it while the grandchild recovers
    result = context.Value("i", 0, lock=False)
    parent = context.Process(target=forks_while_a_write_is_in_flight, args=(name, result))
    parent.start()
    parent.join(60)
    deadline = time.monotonic() + 60
    while result.value == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert result.value == 1, {2: "refused for the parent's call", 3: "refused: in use"}.get(
        result.value, result.value
    )
    shmkit.unlink(name)
