"""``shmkit.Dict``: a ``MutableMapping`` that processes share through one
segment.

Keys are ``str`` or ``bytes``; ``bytes``, ``bytearray`` and ``memoryview``
values are stored raw (read back as ``bytes``), any other object is pickled
(a numpy array keeps its dtype and shape). The table is split into stripes,
each with its own robust lock, so writers of different keys rarely wait for
each other. Every single call (``d[k] = v``, ``d[k]``, ``del d[k]``,
``pop``, ``setdefault``, ``popitem``) is atomic across processes. A process
killed in the middle of a write leaves the dict usable: the next process to
touch that stripe mends it, and readers see the old value or the new one,
never a torn one.
"""

import pickle
from collections.abc import ItemsView, KeysView, Mapping, MutableMapping, ValuesView

from shmkit._native import _RawDict  # type: ignore[import-not-found]
from shmkit._own_segment import OwnSegment
from shmkit._own_segment import decode as _decode
from shmkit._own_segment import encode as _encode

_KEY_TYPES = (str, bytes)
_MISSING = object()


def _absent(key):
    """A key the native call refused for its type: absent, as in a dict
    (KeyError), unless unhashable (TypeError, as a dict says)."""
    if isinstance(key, _KEY_TYPES):
        return False
    hash(key)
    return True


class _Keys(KeysView):
    def __iter__(self):
        return iter(self._mapping._raw.snapshot(False))


class _Items(ItemsView):
    def __iter__(self):
        for key, data, pickled in self._mapping._raw.snapshot(True):
            yield key, _decode(data, pickled)


class _Values(ValuesView):
    def __iter__(self):
        for _key, data, pickled in self._mapping._raw.snapshot(True):
            yield _decode(data, pickled)


class Dict(OwnSegment, MutableMapping):
    """A dict in the shared-memory segment ``name``.

    ``capacity`` bytes hold the entries (keys, values and their index).
    ``create=False`` attaches a dict another process made. Pickles by name,
    so a ``multiprocessing`` worker attaches the same dict.

    Iteration (``iter``, ``keys()``, ``items()``, ``values()``) walks a
    snapshot taken stripe by stripe: it never fails because another process
    writes meanwhile, and sees each entry at most once.
    """

    _what = "dict"

    def __init__(self, name, capacity=64 << 20, create=True):
        self._raw = _RawDict(name, int(capacity), bool(create))
        # Bound once: these are the hot path.
        self._get = self._raw.get
        self._set = self._raw.set
        self.name = name

    def __getitem__(self, key):
        try:
            got = self._get(key)
        except TypeError:
            if _absent(key):
                raise KeyError(key) from None
            raise
        if got is None:
            raise KeyError(key)
        data, pickled = got
        return pickle.loads(data) if pickled else data

    def __setitem__(self, key, value):
        if type(value) is bytes:
            self._set(key, value, False)
        else:
            self._set(key, *_encode(value))

    def __delitem__(self, key):
        try:
            deleted = self._raw.delete(key)
        except TypeError:
            if _absent(key):
                raise KeyError(key) from None
            raise
        if not deleted:
            raise KeyError(key)

    def __contains__(self, key):
        if not isinstance(key, (str, bytes)):
            return False
        return self._raw.contains(key)

    def __iter__(self):
        return iter(self._raw.snapshot(False))

    def __len__(self):
        return self._raw.len()

    def get(self, key, default=None):
        """The value of ``key``, or ``default`` (one call, one lock)."""
        try:
            got = self._get(key)
        except TypeError:
            if _absent(key):
                return default
            raise
        if got is None:
            return default
        return _decode(*got)

    def pop(self, key, default=_MISSING):
        """Remove ``key`` and return its value, atomically; ``default`` (or
        ``KeyError``) when absent."""
        try:
            got = self._raw.pop(key)
        except TypeError:
            if not _absent(key):
                raise
            got = None
        if got is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        return _decode(*got)

    def popitem(self):
        """Remove some entry and return ``(key, value)``; ``KeyError`` when
        the dict is empty."""
        key, data, pickled = self._raw.popitem()
        return key, _decode(data, pickled)

    def setdefault(self, key, default=None):
        """``key``'s value, after setting it to ``default`` if it had none,
        atomically: of several processes racing, one value wins for all."""
        kept = self._raw.setdefault(key, *_encode(default))
        return default if kept is None else _decode(*kept)

    def clear(self):
        """Remove every entry and give their room back."""
        self._raw.clear()

    def keys(self):
        return _Keys(self)

    def items(self):
        return _Items(self)

    def values(self):
        return _Values(self)

    def copy(self):
        """A plain ``dict`` snapshot of the entries."""
        return dict(self.items())

    def __ior__(self, other):
        self.update(other)
        return self

    def __or__(self, other):
        """A plain ``dict``: a snapshot of the entries, updated by ``other``."""
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = self.copy()
        merged.update(other)
        return merged

    def __ror__(self, other):
        if not isinstance(other, Mapping):
            return NotImplemented
        merged = dict(other)
        merged.update(self.items())
        return merged

    def stats(self):
        """The dict's entries and its segment's accounting: ``entries``,
        ``blocks`` (live blocks: one per entry, one slot array per stripe
        in use, and the table), ``allocated_bytes``, ``free_bytes`` and
        ``capacity``."""
        return {"entries": len(self), **self._segment_stats()}

    def __eq__(self, other):
        if isinstance(other, Dict) and other.name == self.name:
            return True
        return super().__eq__(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self):
        state = "closed" if self.closed else f"{len(self)} entries"
        return f"<shmkit.Dict {self.name!r} ({state})>"


Dict.__module__ = "shmkit"
