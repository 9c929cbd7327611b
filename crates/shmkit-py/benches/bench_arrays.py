"""A 1 MiB numpy array handed to a worker process and back, three ways,
side by side in one run:

- shmkit: a ``SharedArray`` through a ``multiprocessing.Queue`` (its
  pickle is a handle to the block; the worker attaches the segment once);
- the array itself through the same queue (pickled data, both ways);
- ``multiprocessing.shared_memory.SharedMemory`` by hand: the name, shape
  and dtype through the queue, the worker attaching each name once.

Each round the worker adds 1 to every element in place and hands the
array back; the parent checks a value. Prints round trips per second and
the ratios.

    python crates/shmkit-py/benches/bench_arrays.py [--rounds 300] [--mib 1]
"""

import argparse
import json
import multiprocessing
import time
import uuid
from multiprocessing import shared_memory

import numpy

import shmkit


def array_worker(inbox, outbox):
    """Adds 1 in place and hands the array back: a SharedArray (its pickle
    a handle) or a plain one (its pickle the data)."""
    while True:
        array = inbox.get()
        if array is None:
            return
        array += 1
        outbox.put(array)


def by_hand_worker(inbox, outbox):
    attached = {}
    while True:
        message = inbox.get()
        if message is None:
            for segment in attached.values():
                segment.close()
            return
        name, shape, dtype = message
        segment = attached.get(name)
        if segment is None:
            segment = attached[name] = shared_memory.SharedMemory(name=name)
        array = numpy.ndarray(shape, dtype=dtype, buffer=segment.buf)
        array += 1
        del array
        outbox.put(message)


def run(worker, first, send, receive, rounds):
    context = multiprocessing.get_context("fork")
    inbox, outbox = context.Queue(), context.Queue()
    process = context.Process(target=worker, args=(inbox, outbox))
    process.start()
    # A warm-up round: the worker's first attach is not the steady state.
    inbox.put(send(first))
    current = receive(outbox.get())
    started = time.perf_counter()
    for _ in range(rounds):
        inbox.put(send(current))
        current = receive(outbox.get())
    elapsed = time.perf_counter() - started
    inbox.put(None)
    process.join()
    return rounds / elapsed, current


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--mib", type=int, default=1)
    parser.add_argument("--json", help="also write the figures here, for scripts/plot-python-peers.py")
    args = parser.parse_args()
    count = (args.mib << 20) // 8
    results = {}

    name = f"bench-arrays-{uuid.uuid4().hex[:8]}"
    with shmkit.SizeClassAllocator(name, capacity=max(64, 4 * args.mib) << 20) as heap:
        array = heap.ndarray(count, "float64")
        rate, last = run(array_worker, array, lambda a: a, lambda a: a, args.rounds)
        assert last[0] == args.rounds + 1, last[0]
        results["shmkit SharedArray through a Queue"] = rate
        del last
        heap.free_array(array)
        heap.unlink()

    rate, last = run(
        array_worker, numpy.zeros(count), lambda a: a, lambda a: a, args.rounds
    )
    assert last[0] == args.rounds + 1, last[0]
    results["the array pickled through a Queue"] = rate

    segment = shared_memory.SharedMemory(create=True, size=count * 8)
    try:
        view = numpy.ndarray((count,), dtype="float64", buffer=segment.buf)
        view[:] = 0
        message = (segment.name, (count,), "float64")
        rate, _ = run(by_hand_worker, None, lambda _: message, lambda m: m, args.rounds)
        assert view[0] == args.rounds + 1, view[0]
        results["SharedMemory by hand through a Queue"] = rate
        del view
    finally:
        segment.close()
        segment.unlink()

    base = results["shmkit SharedArray through a Queue"]
    print(f"{args.mib} MiB float64 array to a worker and back ({args.rounds} rounds, fork):")
    for what, rate in results.items():
        print(f"  {what:<40} {rate:>10.0f} round trips/s   shmkit is {base / rate:5.2f}x")
    if args.json:
        rows = [{"label": what, "value": rate} for what, rate in results.items()]
        panel = {"title": f"{args.mib} MiB numpy array to a worker and back", "unit": "round trips/s"}
        with open(args.json, "w") as out:
            json.dump({"panels": [dict(panel, rows=rows)]}, out, indent=1)


if __name__ == "__main__":
    main()
