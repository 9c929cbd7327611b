"""64-byte messages from one producer process to one consumer process,
side by side in one run: ``shmkit.Queue``, ``multiprocessing.Queue`` and
``faster_fifo.Queue`` (skipped with a note when it is not installed).

    python crates/shmkit-py/benches/bench_queue.py [--messages 200000]

Prints messages per second and shmkit's ratio to each peer. The producer
puts ``--messages`` bytes objects of 64 bytes; the clock runs from the
first put to the consumer's last get.
"""

import argparse
import json
import multiprocessing
import time
import uuid

import shmkit

MESSAGE = b"m" * 64


def shmkit_consumer(q, count, done):
    for _ in range(count):
        q.get()
    done.put(time.perf_counter())


def stdlib_consumer(q, count, done):
    for _ in range(count):
        q.get()
    done.put(time.perf_counter())


def faster_fifo_consumer(q, count, done):
    got = 0
    while got < count:
        got += len(q.get_many(max_messages_to_get=1000))
    done.put(time.perf_counter())


def measure(make_queue, consumer, put, count):
    context = multiprocessing.get_context("fork")
    q = make_queue()
    done = context.Queue()
    process = context.Process(target=consumer, args=(q, count, done))
    process.start()
    started = time.perf_counter()
    for _ in range(count):
        put(q, MESSAGE)
    ended = done.get(timeout=600)
    process.join()
    return count / (ended - started), q


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--json", help="also write the figures here, for scripts/plot-python-peers.py")
    args = parser.parse_args()
    count = args.messages
    results = {}

    name = f"bench-queue-{uuid.uuid4().hex[:8]}"
    rate, q = measure(
        lambda: shmkit.Queue(name, capacity=64 << 20),
        shmkit_consumer,
        lambda q, m: q.put(m),
        count,
    )
    q.close()
    q.unlink()
    results["shmkit.Queue"] = rate

    context = multiprocessing.get_context("fork")
    rate, _ = measure(context.Queue, stdlib_consumer, lambda q, m: q.put(m), count)
    results["multiprocessing.Queue"] = rate

    try:
        import faster_fifo
    except ImportError:
        print("note: faster_fifo is not installed (pip install faster-fifo); skipped")
    else:
        rate, _ = measure(
            lambda: faster_fifo.Queue(max_size_bytes=64 << 20),
            faster_fifo_consumer,
            lambda q, m: q.put(m),
            count,
        )
        results["faster_fifo.Queue (consumer takes batches)"] = rate

    base = results["shmkit.Queue"]
    print(f"{count} messages of 64 B, 1 producer -> 1 consumer process (fork):")
    for what, rate in results.items():
        print(f"  {what:<44} {rate:>12,.0f} messages/s   shmkit is {base / rate:5.2f}x")
    if args.json:
        rows = [{"label": what, "value": rate} for what, rate in results.items()]
        panel = {"title": "64 B messages, 1 producer -> 1 consumer process", "unit": "messages/s"}
        with open(args.json, "w") as out:
            json.dump({"panels": [dict(panel, rows=rows)]}, out, indent=1)


if __name__ == "__main__":
    main()
