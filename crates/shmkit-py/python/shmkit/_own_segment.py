"""What ``shmkit.Queue`` and ``shmkit.Dict`` share: each owns a segment of
its own, reached through its native half (``self._raw``) by name
(``self.name``), closes, unlinks, reports and pickles the same way, and
turns objects into bytes the same way."""

import pickle

from shmkit._native import unlink as _unlink  # type: ignore[import-not-found]

_RAW = (bytes, bytearray, memoryview)


def encode(obj):
    """``(data, pickled)``: ``bytes``, ``bytearray`` and ``memoryview`` as
    raw bytes, anything else as a pickle."""
    if isinstance(obj, bytes):
        return obj, False
    if isinstance(obj, _RAW):
        return bytes(obj), False
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL), True


def decode(data, pickled):
    return pickle.loads(data) if pickled else data


class OwnSegment:
    """The lifecycle of a structure over a segment of its own."""

    _what = "structure"  # "queue", "dict": what error messages call it

    @property
    def closed(self):
        return self._raw.closed

    def close(self):
        """Detach; the segment stays until ``unlink()``."""
        self._raw.close()

    def unlink(self):
        """Remove the segment's name (attached processes keep using it)."""
        _unlink(self.name)

    def __enter__(self):
        if self.closed:
            raise ValueError(f"the {self._what} is closed")
        return self

    def __exit__(self, kind, value, traceback):
        self.close()
        return False

    def __reduce__(self):
        # By name: the receiver attaches the same segment.
        return (_attach, (type(self), self.name))

    def check(self):
        """Walk the segment's allocator and the structure
        (CorruptSegmentError; NeedsRecoveryError for what dead processes
        left)."""
        self._raw.check()

    def recover(self):
        """Mend what processes killed in the middle of a call left, and
        free the blocks they held; refused (SegmentInUseError) while other
        processes use the segment or a call of this process is in flight
        on it."""
        locks, blocks = self._raw.recover()
        return {"locks_taken_over": locks, "blocks_reclaimed": blocks}

    def _segment_stats(self):
        """The segment allocator's accounting."""
        blocks, allocated, free, capacity = self._raw.heap_stats()
        return {
            "blocks": blocks,
            "allocated_bytes": allocated,
            "free_bytes": free,
            "capacity": capacity,
        }


def _attach(kind, name):
    return kind(name, create=False)
