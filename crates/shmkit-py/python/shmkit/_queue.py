"""``shmkit.Queue``: a multi-producer, multi-consumer queue that processes
share through one segment, with the standard ``queue.Queue`` calls.

``bytes``, ``bytearray`` and ``memoryview`` objects travel as raw bytes and
come out as ``bytes``; anything else is pickled. Waits sleep on a futex in
the segment with the interpreter lock released. A process killed in the middle of a ``put`` or a
``get`` leaves the queue usable; at most its own message is lost, and
``recover()`` gives its block's room back.
"""

import pickle
import queue as _stdlib_queue

from shmkit._native import _RawQueue  # type: ignore[import-not-found]
from shmkit._own_segment import OwnSegment
from shmkit._own_segment import encode as _encode

def _timeout(block, timeout):
    """The native calls' wait: None forever, 0 not at all, else seconds."""
    if not block:
        return 0.0
    if timeout is None:
        return None
    timeout = float(timeout)
    if timeout != timeout or timeout < 0:  # NaN or negative
        raise ValueError("'timeout' must be a non-negative number")
    return timeout


class Queue(OwnSegment):
    """A queue in the shared-memory segment ``name``.

    ``capacity`` bytes hold the messages waiting in the queue; ``maxsize``
    (0: as many as the ring's 65,536 cells) bounds how many, rounded up to a
    power of two. ``create=False`` attaches a queue another process made.
    Pickles by name, so a ``multiprocessing`` worker attaches the same queue.
    """

    _what = "queue"

    def __init__(self, name, capacity=64 << 20, create=True, maxsize=0):
        # As queue.Queue: zero or less is unbounded.
        maxsize = max(int(maxsize), 0)
        self._raw = _RawQueue(name, int(capacity), bool(create), int(maxsize))
        # Bound once: put and get are the hot path.
        self._put = self._raw.put
        self._get = self._raw.get
        self.name = name

    @property
    def maxsize(self):
        """The most messages the queue holds (0: the ring's 65,536 cells)."""
        return self._raw.maxsize

    def put(self, obj, block=True, timeout=None):
        """Put ``obj``, waiting for room unless ``block`` is false, at most
        ``timeout`` seconds; ``queue.Full`` when there was none."""
        if type(obj) is bytes:
            data, pickled = obj, False
        else:
            data, pickled = _encode(obj)
        wait = None if block and timeout is None else _timeout(block, timeout)
        if not self._put(data, pickled, wait):
            raise _stdlib_queue.Full

    def get(self, block=True, timeout=None):
        """The next object, waiting for one unless ``block`` is false, at
        most ``timeout`` seconds; ``queue.Empty`` when none came."""
        got = self._get(None if block and timeout is None else _timeout(block, timeout))
        if got is None:
            raise _stdlib_queue.Empty
        data, pickled = got
        return pickle.loads(data) if pickled else data

    def put_nowait(self, obj):
        return self.put(obj, block=False)

    def get_nowait(self):
        return self.get(block=False)

    def put_many(self, objects, block=True, timeout=None):
        """Put each of ``objects`` in order (each waits as ``put`` does)."""
        for obj in objects:
            self.put(obj, block, timeout)

    def get_many(self, max_items, block=True, timeout=None):
        """Up to ``max_items`` objects: waits (as ``get`` does) for the
        first, then takes what is there without waiting."""
        if max_items < 1:
            return []
        items = [self.get(block, timeout)]
        while len(items) < max_items:
            try:
                items.append(self.get(block=False))
            except _stdlib_queue.Empty:
                break
        return items

    def qsize(self):
        """Messages in the queue now (others may change it at once)."""
        return self._raw.qsize()

    def empty(self):
        return self.qsize() == 0

    def full(self):
        return self.qsize() >= self._raw.cells()

    def stats(self):
        """The queue's messages and its segment's accounting: ``messages``,
        ``blocks`` (live blocks: one per message, and the ring),
        ``allocated_bytes``, ``free_bytes`` and ``capacity``."""
        return {"messages": self.qsize(), **self._segment_stats()}

    def __repr__(self):
        state = "closed" if self.closed else f"{self.qsize()} waiting"
        return f"<shmkit.Queue {self.name!r} ({state})>"


Queue.__module__ = "shmkit"
