"""Shared dicts side by side in one run: ``shmkit.Dict``,
``multiprocessing.Manager().dict()``, ``shared_memory_dict.SharedMemoryDict``
and ``UltraDict`` (a peer that is not installed is skipped with a note).

    python crates/shmkit-py/benches/bench_dict.py [--items 100000]

Two workloads, each on str keys (``"key-123"``) and int values:

* **one process**: set ``--items`` items, then get each of them back;
  reported as set+get pairs per second.
* **two writers**: one process sets ``--items`` keys alone; then two
  processes (fork) set ``--items`` disjoint keys each, at once. Reported as
  sets per second for each, their ratio (what the second writer adds), and
  how many writes of the two are missing afterwards (a dict without a
  lock across processes loses some).

The peers whose cost per call grows with the dict (``SharedMemoryDict``
pickles the whole dict on every write) or that pay a server round trip
(``Manager().dict()``) run fewer items, as the table says; their rate at
``--items`` would be lower still.
"""

import argparse
import json
import multiprocessing
import time
import uuid

import shmkit

# Items for the peers that cannot do --items in reasonable time.
SLOW_PEER_ITEMS = {"Manager().dict()": 20_000, "SharedMemoryDict": 2_000}
_MISSING = object()


def keys(count, writer=0):
    return [f"key-{writer}-{i}" for i in range(count)]


def set_all(mapping, names):
    for value, key in enumerate(names):
        mapping[key] = value


def get_all(mapping, names):
    for key in names:
        mapping[key]


class Peer:
    """How to make, attach and dispose of one kind of shared dict."""

    def __init__(self, label, make, reopen=None, dispose=None):
        self.label = label
        self.make = make
        self.reopen = reopen or (lambda made: made)
        self.dispose = dispose or (lambda made: None)


def peers(items):
    found = []

    def shmkit_make():
        return shmkit.Dict(f"bench-dict-{uuid.uuid4().hex[:8]}", capacity=256 << 20)

    def shmkit_dispose(d):
        d.close()
        d.unlink()

    found.append(Peer("shmkit.Dict", shmkit_make, dispose=shmkit_dispose))

    manager = multiprocessing.get_context("fork").Manager()
    found.append(Peer("Manager().dict()", manager.dict))

    try:
        from shared_memory_dict import SharedMemoryDict
    except ImportError:
        print("note: shared-memory-dict is not installed (pip install shared-memory-dict); skipped")
    else:

        def smd_make():
            return SharedMemoryDict(name=f"bench-smd-{uuid.uuid4().hex[:8]}", size=1 << 20)

        def smd_dispose(d):
            d.shm.close()
            d.shm.unlink()

        found.append(Peer("SharedMemoryDict", smd_make, dispose=smd_dispose))

    try:
        from UltraDict import UltraDict
    except ImportError:
        print("note: UltraDict is not installed (pip install UltraDict atomics); skipped")
    else:

        def ultra_make():
            # A shared lock, as several writers need; a buffer as large as
            # the dump of the whole dict, so it never has to fall back.
            return UltraDict(
                name=f"bench-ultra-{uuid.uuid4().hex[:8]}",
                create=True,
                shared_lock=True,
                buffer_size=64 << 20,
                full_dump_size=256 << 20,
                auto_unlink=False,
            )

        def ultra_reopen(made):
            return UltraDict(name=made.name, create=False, shared_lock=True, auto_unlink=False)

        def ultra_dispose(d):
            d.unlink()

        found.append(Peer("UltraDict", ultra_make, ultra_reopen, ultra_dispose))
    return found, manager


def one_process(peer, items):
    d = peer.make()
    names = keys(items)
    started = time.perf_counter()
    set_all(d, names)
    get_all(d, names)
    elapsed = time.perf_counter() - started
    assert len(d) == items, f"{peer.label}: {len(d)} items after setting {items}"
    peer.dispose(d)
    return items / elapsed


def writer(peer, made, writer_index, items, start, done):
    d = peer.reopen(made)
    names = keys(items, writer_index)
    start.wait()
    begun = time.perf_counter()
    set_all(d, names)
    done.put((begun, time.perf_counter()))


def writers(peer, items, count):
    """Sets per second of `count` processes writing disjoint keys at once."""
    context = multiprocessing.get_context("fork")
    d = peer.make()
    start = context.Event()
    done = context.Queue()
    processes = [
        context.Process(target=writer, args=(peer, d, index, items, start, done))
        for index in range(count)
    ]
    for process in processes:
        process.start()
    start.set()
    spans = [done.get(timeout=3600) for _ in processes]
    for process in processes:
        process.join()
    elapsed = max(end for _, end in spans) - min(begun for begun, _ in spans)
    # Lost writes: keys of any writer that do not hold their value.
    # One snapshot: some peers read their whole dict on every lookup.
    held = dict(d.items())
    lost = sum(
        held.get(key, _MISSING) != value
        for index in range(count)
        for value, key in enumerate(keys(items, index))
    )
    peer.dispose(d)
    return items * count / elapsed, lost


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--json", help="also write the figures here, for scripts/plot-python-peers.py")
    args = parser.parse_args()
    found, manager = peers(args.items)
    rows = []
    for peer in found:
        items = min(args.items, SLOW_PEER_ITEMS.get(peer.label, args.items))
        pairs = one_process(peer, items)
        one, _ = writers(peer, items, 1)
        two, lost = writers(peer, items, 2)
        rows.append((peer.label, items, pairs, one, two, lost))
    manager.shutdown()

    base = rows[0]
    print(f"str keys, int values; one run, {multiprocessing.cpu_count()} cores")
    print(
        f"  {'dict':<20} {'items':>7}  {'set+get/s (1 proc)':>19} {'shmkit is':>9}"
        f"  {'sets/s 1 writer':>15} {'sets/s 2 writers':>16} {'2w/1w':>6} {'shmkit 2w is':>12}"
        f" {'lost writes':>11}"
    )
    for label, items, pairs, one, two, lost in rows:
        print(
            f"  {label:<20} {items:>7,}  {pairs:>19,.0f} {base[2] / pairs:>8.1f}x"
            f"  {one:>15,.0f} {two:>16,.0f} {two / one:>6.2f} {base[4] / two:>11.1f}x"
            f" {lost:>11,}"
        )
    if args.json:

        def note(items, lost=0):
            fewer = f" ({items:,} items)" if items != args.items else ""
            return fewer + (f", {lost:,} writes lost" if lost else "")

        panels = [
            {
                "title": f"dict: set then get {args.items:,} items, one process",
                "unit": "set+get pairs/s",
                "rows": [{"label": r[0], "value": r[2], "note": note(r[1])} for r in rows],
            },
            {
                "title": "dict: 2 processes writing disjoint keys at once",
                "unit": "sets/s",
                "rows": [{"label": r[0], "value": r[4], "note": note(r[1], r[5])} for r in rows],
            },
        ]
        with open(args.json, "w") as out:
            json.dump({"panels": panels}, out, indent=1)


if __name__ == "__main__":
    main()
