"""shmkit.Queue: queue.Queue's calls across processes, exactly-once and in
order per producer, and usable after a killed process."""

import multiprocessing
import os
import pickle
import queue
import signal
import time

import pytest

import shmkit

PRODUCERS = 2
CONSUMERS = 2
PER_PRODUCER = 3000


def test_bytes_travel_raw_and_objects_pickled(name):
    with shmkit.Queue(name, capacity=1 << 20) as q:
        q.put(b"raw")
        q.put(bytearray(b"array"))
        q.put(memoryview(b"view"))
        q.put({"a": [1, 2.5, None]})
        q.put(None)
        assert q.qsize() == 5 and not q.empty()
        assert q.get() == b"raw"
        assert q.get() == b"array"
        assert q.get() == b"view"
        assert q.get() == {"a": [1, 2.5, None]}
        assert q.get() is None
        assert q.empty()
        q.unlink()


def test_full_and_empty_raise_the_standard_exceptions(name):
    with shmkit.Queue(name, capacity=1 << 20, maxsize=2) as q:
        assert q.maxsize == 2
        with pytest.raises(queue.Empty):
            q.get_nowait()
        started = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.2)
        assert time.monotonic() - started >= 0.15
        q.put_nowait(1)
        q.put_nowait(2)
        assert q.full()
        with pytest.raises(queue.Full):
            q.put_nowait(3)
        with pytest.raises(queue.Full):
            q.put(3, timeout=0.1)
        assert q.get_many(10) == [1, 2]
        q.unlink()


def test_a_message_larger_than_the_room_left_is_full_not_lost(name):
    with shmkit.Queue(name, capacity=1 << 20, maxsize=4) as q:
        big = os.urandom(700 << 10)
        q.put(big)
        with pytest.raises(queue.Full):
            q.put(big, block=False)
        assert q.get() == big
        q.put(big)  # its block came back
        assert q.get() == big
        q.unlink()


def test_the_queue_pickles_by_name(name):
    with shmkit.Queue(name, capacity=1 << 20) as q:
        q.put("hello")
        other = pickle.loads(pickle.dumps(q))
        assert other.get() == "hello"
        other.close()
        q.unlink()


def produce(q, producer):
    for seq in range(PER_PRODUCER):
        q.put((producer, seq))


def consume(q, results, stop_after):
    seen = []
    while True:
        item = q.get(timeout=60)
        if item == "stop":
            break
        seen.append(item)
    results.put(seen)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_producers_and_consumers_get_every_message_once_in_order(name, method):
    context = multiprocessing.get_context(method)
    q = shmkit.Queue(name, capacity=8 << 20)
    results = context.Queue()
    consumers = [
        context.Process(target=consume, args=(q, results, None)) for _ in range(CONSUMERS)
    ]
    producers = [context.Process(target=produce, args=(q, p)) for p in range(PRODUCERS)]
    for process in consumers + producers:
        process.start()
    for process in producers:
        process.join(60)
        assert process.exitcode == 0
    for _ in consumers:
        q.put("stop")
    seen = [results.get(timeout=60) for _ in consumers]
    for process in consumers:
        process.join(60)
        assert process.exitcode == 0
    everything = sorted(item for part in seen for item in part)
    assert everything == sorted((p, s) for p in range(PRODUCERS) for s in range(PER_PRODUCER))
    # Each consumer sees each producer's messages in the order they were put.
    for part in seen:
        for producer in range(PRODUCERS):
            own = [seq for p, seq in part if p == producer]
            assert own == sorted(own)
    q.check()
    q.close()
    q.unlink()


def steady_consumer(q, counter):
    while True:
        item = q.get(timeout=30)
        if item == "stop":
            return
        # Each consumer has a counter of its own: no lock (a process killed
        # holding a multiprocessing lock would keep it forever).
        counter.value += 1


def test_a_consumer_killed_mid_stream_costs_at_most_its_own_message(name):
    context = multiprocessing.get_context("fork")
    q = shmkit.Queue(name, capacity=8 << 20)
    counter = context.Value("q", 0, lock=False)
    victims_counter = context.Value("q", 0, lock=False)
    survivor = context.Process(target=steady_consumer, args=(q, counter))
    victim = context.Process(target=steady_consumer, args=(q, victims_counter))
    survivor.start()
    victim.start()
    total = 20000
    killed = False
    for seq in range(total):
        q.put(seq.to_bytes(8, "little") * 8)
        if seq == total // 2:
            os.kill(victim.pid, signal.SIGKILL)
            killed = True
    assert killed
    victim.join(10)
    q.put("stop")
    survivor.join(60)
    assert survivor.exitcode == 0, "the survivor got past the victim's cells"
    delivered = counter.value + victims_counter.value
    # The victim may have died holding one message it had taken.
    assert total - 1 <= delivered <= total, delivered
    assert q.empty()
    report = q.recover()
    assert report["locks_taken_over"] == 0
    q.check()
    q.close()
    q.unlink()


def test_odd_arguments_get_clear_answers(name):
    with shmkit.Queue(name + "-unbounded", capacity=1 << 20, maxsize=-1) as unbounded:
        assert unbounded.maxsize == 0, "as queue.Queue: below one is unbounded"
        unbounded.unlink()
    with shmkit.Queue(name, capacity=1 << 20, maxsize=4) as q:
        assert q.get_many(0) == []
        with pytest.raises(ValueError):
            q.get(timeout=float("nan"))
        with pytest.raises(ValueError):
            q.put(b"x", timeout=-1)
        q.put(b"x")
        assert q.get(timeout=float("inf")) == b"x"  # no wait needed
        with pytest.raises(ValueError, match="larger than the queue's whole segment"):
            q.put(bytes(4 << 20))
        q.unlink()


def test_ctrl_c_reaches_a_get_that_waits(name):
    import subprocess
    import sys

    q = shmkit.Queue(name, capacity=1 << 20)
    waiter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import shmkit, sys\n"
            f"q = shmkit.Queue({name!r}, create=False)\n"
            "print('waiting', flush=True)\n"
            "try:\n"
            "    q.get()\n"
            "except KeyboardInterrupt:\n"
            "    sys.exit(42)\n",
        ],
        stdout=subprocess.PIPE,
    )
    assert waiter.stdout.readline() == b"waiting\n"
    time.sleep(0.3)
    waiter.send_signal(signal.SIGINT)
    assert waiter.wait(timeout=10) == 42
    q.close()
    q.unlink()


def message(seq):
    return seq.to_bytes(8, "little") * 16


def busy_queue_user(q):
    """Puts and gets forever, keeping a few messages waiting."""
    seq = 0
    while True:
        q.put(message(seq))
        seq += 1
        if q.qsize() > 4:
            got = q.get()
            assert got == got[:8] * 16


def test_recover_gives_back_the_blocks_of_messages_the_dead_held(name):
    """Each victim is frozen at a moment the accounting shows it holding a
    message block that no waiting message names (filled and not yet
    pushed, or taken and not yet freed), then killed; recover() frees that
    block, the messages left are whole, and draining them leaves only the
    ring. (The accounting can also show a free cut short between its bit
    and its count, which holds no block: such kills are not counted.)"""
    import random

    context = multiprocessing.get_context("fork")
    q = shmkit.Queue(name, capacity=8 << 20)
    rng = random.Random(5)
    swept = 0
    for _ in range(60):
        if swept >= 5:
            break
        victim = context.Process(target=busy_queue_user, args=(q,))
        victim.start()
        time.sleep(0.005)
        deadline = time.monotonic() + 20
        while True:
            assert time.monotonic() < deadline, "never caught holding a block"
            time.sleep(rng.random() * 0.002)
            os.kill(victim.pid, signal.SIGSTOP)
            os.waitpid(victim.pid, os.WUNTRACED)
            stats = q.stats()
            if stats["blocks"] > stats["messages"] + 1:
                break
            os.kill(victim.pid, signal.SIGCONT)
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(30)
        swept += q.recover()["blocks_reclaimed"] >= 1
        q.check()
        drained = 0
        while True:
            try:
                got = q.get_nowait()
            except queue.Empty:
                break
            assert got == got[:8] * 16, "a torn message"
            drained += 1
        assert q.stats()["blocks"] == 1, f"{q.stats()} after draining {drained} messages"
    assert swept >= 5, f"only {swept} kills left a block to sweep"
    q.close()
    q.unlink()
