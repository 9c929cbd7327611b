"""The ``SharedArray`` class: imported by ``shmkit._arrays`` only when an
array is made or rebuilt, because it needs numpy."""

import numpy

from shmkit import _arrays


class SharedArray(numpy.ndarray):  # type: ignore[type-arg]
    """A numpy array over a block of a shmkit segment. Pickles as a handle
    to the block; slices and views of it do too."""

    def __array_finalize__(self, source: object) -> None:
        # Views, slices and ufunc results inherit the block's identity; a
        # result that owns new memory (a copy) is told apart at pickle time
        # and pickles as plain data.
        self._shmkit = getattr(source, "_shmkit", None)

    def __reduce__(self):  # type: ignore[no-untyped-def]
        handle = _arrays._handle_of(self)
        if handle is None:
            # Not over the block (a copy made from it): plain data.
            return numpy.asarray(self).__reduce__()
        if self._shmkit.freed:
            raise ValueError(
                "this array's block was freed (heap.free_array): its bytes "
                "may belong to another array now"
            )
        return (_arrays._rebuild, handle)

    def __reduce_ex__(self, protocol):  # type: ignore[no-untyped-def]
        return self.__reduce__()


SharedArray.__module__ = "shmkit"
