"""The user-facing array: a thin ``numpy.memmap`` subclass that delegates to the owning modules.

It keeps numpy.memmap's documented behaviour (slices stay memmaps; ufunc results and fancy
indexing give plain ndarrays; full reductions give scalars; views keep ``filename``, ``offset``
and ``mode``) and adds ``close()``, context management, pickling by file reference and the
methods later modules provide. It holds no logic of its own beyond routing: the mapping lives in
:mod:`bigarr._os.mapping`, region arithmetic in :mod:`bigarr._plan.regions`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._os.modes import NUMPY_MODE, parse_mode
from bigarr._plan.regions import Region, region_span
from bigarr.errors import ClosedError, PickleError_, TruncatedFileError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from bigarr._compute.progress import ProgressArg
    from bigarr._compute.stream import Residency
    from bigarr._core.private import DirtyRegions
    from bigarr._os.mapping import Mapping
    from bigarr._plan.chunks import Chunk, ChunkPlan

__all__ = ["memmap"]


def _plain(x: Any) -> Any:
    """An ndarray view of ``x`` for the ufunc machinery, refusing closed arrays."""
    if isinstance(x, memmap):
        m = x._bigarr
        if m is not None and m.closed:
            raise ClosedError(f"The mapping of {m.path} is closed.")
        return x.view(np.ndarray)
    return x


def _private_target(out: Any) -> Any:
    """The write lock of the first private-mode bigarr array in ``out``, else None."""
    for o in out or ():
        m = getattr(o, "_bigarr", None)
        if m is not None and m.access == "private":
            from bigarr._core.private import write_lock

            return write_lock(m)
    return None


class memmap(np.memmap):
    """A memory-mapped array with a safe ``close``, hints, ranged flush and file-reference pickling.

    Constructed like :class:`numpy.memmap` (a raw file, numpy's arguments, plus bigarr's mode
    names ``"readonly"``, ``"shared"`` and ``"private"``); :func:`bigarr.open` and
    :func:`bigarr.create` build one from a ``.npy`` file.
    """

    _bigarr: Mapping | None = None

    def __new__(
        cls,
        filename: Any,
        dtype: Any = np.uint8,
        mode: str = "r+",
        offset: int = 0,
        shape: int | tuple[int, ...] | None = None,
        order: str = "C",
    ) -> memmap:
        from bigarr._core.files import open_raw

        _access, creating = parse_mode(mode)
        arr = open_raw(filename, dtype, shape, offset=offset, order=order, mode=mode,
                       overwrite=creating)
        return arr if cls is memmap else arr.view(cls)

    @classmethod
    def _attach(
        cls,
        mapping: Mapping,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        order: str,
        *,
        filename: str,
        offset: int,
        start: int | None = None,
        strides: tuple[int, ...] | None = None,
    ) -> memmap:
        """Build the array over ``mapping``; ``start`` is the byte offset within the mapping."""
        first = mapping.data_start if start is None else start
        if mapping.root.size == 0:
            first = 0
        arr = np.ndarray.__new__(cls, shape, dtype, buffer=mapping.root, offset=first,
                                 strides=strides, order="F" if order == "F" else "C")
        arr._bigarr = mapping
        arr._mmap = mapping
        arr.filename = filename
        arr.offset = offset
        arr.mode = NUMPY_MODE[mapping.access]
        mapping.track(arr)
        return arr

    # ---- numpy.memmap behaviour --------------------------------------------------------------
    def __array_finalize__(self, obj: Any) -> None:
        m = getattr(obj, "_bigarr", None)
        if m is not None and np.may_share_memory(self, obj):
            self._bigarr = self._mmap = m
            self.filename, self.offset, self.mode = obj.filename, obj.offset, obj.mode
            m.track(self)
        else:
            self._bigarr = self._mmap = None
            self.filename = None
            self.offset = self.mode = None  # type: ignore[assignment]  # as numpy.memmap does

    def __array_wrap__(
        self, arr: Any, context: Any = None, return_scalar: bool = False
    ) -> Any:
        arr = np.ndarray.__array_wrap__(self, arr, context, return_scalar)
        if self is arr or not isinstance(arr, memmap):
            return arr
        if return_scalar:
            return arr[()]
        return arr.view(np.ndarray)

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out")
        args = [_plain(x) for x in inputs]
        if out is not None:
            kwargs["out"] = tuple(_plain(o) for o in out)
        # ufunc.at writes into its first input; every other method writes only into out=.
        guard = _private_target(inputs[:1] if method == "at" else out)
        if guard is not None:  # writing into a private mapping: exclude a concurrent commit
            with guard:
                result = getattr(ufunc, method)(*args, **kwargs)
        else:
            result = getattr(ufunc, method)(*args, **kwargs)
        if out is None or method == "at":
            return result
        if isinstance(result, tuple):
            return tuple(o if o is not None else r for o, r in zip(out, result, strict=True))
        return out[0]

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        self._check_open()
        return super().__array_function__(func, types, args, kwargs)

    def __getitem__(self, index: Any) -> Any:
        self._check_open()
        res = np.ndarray.__getitem__(self, index)
        if isinstance(res, memmap) and res._bigarr is None:
            return res.view(np.ndarray)
        return res

    def __setitem__(self, index: Any, value: Any) -> None:
        self._check_open()
        m = self._bigarr
        if m is not None and m.access == "private":  # a commit must not drop a racing write
            from bigarr._core.private import write_lock

            with write_lock(m):
                np.ndarray.__setitem__(self, index, value)
            return
        np.ndarray.__setitem__(self, index, value)

    def __repr__(self) -> str:
        m = self._bigarr
        if m is not None and m.closed:
            return f"<closed bigarr.memmap of {os.path.basename(m.path)}>"
        return super().__repr__()

    def __reduce__(self) -> Any:
        m = self._bigarr
        if m is None:
            return super().__reduce__()
        self._check_open()
        if m.access == "private":
            raise PickleError_(
                f"A private-mode array of {m.path} cannot be pickled: its scratch edits live only "
                "in this process's memory. commit() them and pickle a read-only or shared "
                "array, or send np.asarray(arr).copy() to ship the data itself."
            )
        first = m.map_offset + m.offset_of(self)
        return _rebuild, (m.path, m.access, first, self.shape, self.dtype, self.strides,
                          self.filename, self.offset)

    # ---- bigarr additions ----------------------------------------------------------------
    def _check_open(self) -> None:
        m = self._bigarr
        if m is not None and m.closed:
            raise ClosedError(f"The mapping of {m.path} is closed.")

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run on this array or any view of its mapping."""
        return self._bigarr is not None and self._bigarr.closed

    @property
    def access(self) -> str | None:
        """``"readonly"``, ``"shared"`` or ``"private"``; ``None`` for a detached copy."""
        return None if self._bigarr is None else self._bigarr.access

    def close(self, *, force: bool = False) -> None:
        """Flush (shared mode), then release the mapping and its file descriptor.

        Closing is idempotent. Afterwards any use of this array, or of another view of the same
        mapping, raises :class:`~bigarr.errors.ClosedError`; the address range stays valid
        (zero pages) until those arrays are garbage-collected, so nothing can segfault. An
        explicit ``close()`` refuses while other views are alive; leaving a ``with`` block
        closes with ``force=True``. The arrays this one is a view of do not count, nor do a
        ``memoryview`` of this array or a plain ndarray view of it when it is itself a view:
        see :mod:`bigarr._os.mapping` for exactly what is counted.

        Parameters
        ----------
        force
            Close even while other views of the mapping are alive (they become closed too).

        Raises
        ------
        MappingBusyError
            If other views of the mapping are alive and ``force`` is false.
        FileChangedError
            If the file shrank below the mapping, so the final flush was skipped (the file and
            the mapping are released all the same).
        """
        if self._bigarr is not None:
            self._bigarr.close(self, force=force)

    def __enter__(self) -> memmap:
        """Use the array in a ``with`` block; leaving it closes the mapping and all its views."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # The end of a with block is the end of the mapping's scope: close it and every view of
        # it, like leaving ``with open(...)`` closes the file for every reference. A strict
        # close() here would trip over views that merely outlive their use, such as the loop
        # variable of ``for chunk, view in x.chunks()``, or the frames of a traceback (which
        # would hide the real error). Leftover views raise ClosedError; none can segfault.
        self.close(force=True)

    def flush(self, region: Region = None) -> None:
        """Write this array's (or ``region``'s) modified pages to disk with ``msync(MS_SYNC)``.

        The region's byte range is rounded outward to whole pages (down at the start, up at the
        end) and clipped to the mapping. A no-op in read-only and private mode (private edits
        never reach the file; see ``commit``).

        Durability: on Linux ``msync(MS_SYNC)`` runs the file system's ``fsync`` for that byte
        range in data-sync mode, so the flushed bytes survive a crash or power loss as after
        ``fdatasync`` (the file size and block allocation included; timestamps not). A file made
        by :func:`bigarr.create` is preallocated and its directory entry is synced at creation,
        so no further ``fsync`` is needed. On macOS, ``msync`` does not flush the drive's own
        cache; call ``fcntl(fd, F_FULLFSYNC)`` where that matters.

        Raises
        ------
        RegionError
            For a malformed or out-of-range region.
        FileChangedError
            If the file shrank below the mapping (flushing would fault).
        """
        m = self._bigarr
        if m is None:
            return
        m.sync(region_span(self, region))

    # ---- chunking, hints and residency (bigarr._plan.chunks, bigarr._compute.stream) -------------
    def plan(self, budget: int | str = "64MiB") -> ChunkPlan:
        """Page-aligned chunks of this array that each fit ``budget`` bytes (or ``"64MiB"``).

        See :func:`bigarr.plan_chunks`; chunk starts are aligned to pages of the file.
        """
        from bigarr._compute.stream import plan_for

        return plan_for(self, budget)

    def chunks(
        self,
        budget: int | str = "64MiB",
        *,
        progress: ProgressArg = None,
        release: bool | None = None,
        prefetch: bool | str | None = True,
        hint: str | None = None,
    ) -> Iterator[tuple[Chunk, memmap]]:
        """Iterate ``(chunk, view)`` pairs with at most ``budget`` bytes resident at once.

        Release-behind is on by default except in private mode, prefetch of the next chunk from
        a helper thread is on, and a tqdm bar shows on a TTY; see
        :func:`bigarr._compute.stream.iter_chunks`.
        """
        from bigarr._compute.stream import iter_chunks

        return iter_chunks(self, budget, progress=progress, release=release, prefetch=prefetch,
                           hint=hint)

    def advise(self, hint: str, region: Region = None) -> bool:
        """Apply an access hint to ``region``'s pages (rounded outward, clipped to the mapping).

        Returns ``False`` when the hint is a no-op here; see
        :func:`bigarr._compute.stream.advise` and :func:`bigarr.supported_hints`.
        """
        from bigarr._compute.stream import advise

        return advise(self, hint, region)

    def resident(self, region: Region = None, *, budget: int | str = "64MiB") -> Residency:
        """Share of ``region``'s pages in memory (``mincore``), overall and per planned chunk."""
        from bigarr._compute.stream import residency

        return residency(self, region, budget=budget)

    # ---- private-mode workspace and write tracking (bigarr._core.private, bigarr._core.tracking) -
    def dirty(self, region: Region = None, *, exact: bool = True) -> DirtyRegions:
        """Elements (and rows) of this private-mode array that differ from the file.

        See :func:`bigarr._core.private.dirty`; ``exact=False`` reports whole scratch pages without
        reading the file.
        """
        from bigarr._core.private import dirty

        return dirty(self, region, exact=exact)

    def commit(self, region: Region = None, *, journal: bool = False) -> int:
        """Write the scratch edits (in ``region``) to the file; returns bytes written.

        See :func:`bigarr._core.private.commit` (what a crash leaves behind, ``journal=True``).
        """
        from bigarr._core.private import commit

        return commit(self, region, journal=journal)

    def discard(self, region: Region = None) -> int:
        """Throw away the scratch edits (in ``region``).

        See :func:`bigarr._core.private.discard`.
        """
        from bigarr._core.private import discard

        return discard(self, region)

    def scratch_bytes(self, region: Region = None) -> int:
        """Memory held by private-mode scratch pages (in ``region``), in bytes."""
        from bigarr._core.private import scratch_bytes

        return scratch_bytes(self, region)

    def track_writes(self, method: str = "auto") -> str:
        """Start (or restart) write tracking on this shared-mode array; returns the method used.

        See :func:`bigarr._core.tracking.track_writes`.
        """
        from bigarr._core.tracking import track_writes

        return track_writes(self, method)

    def written(self, region: Region = None, *, reset: bool = False) -> DirtyRegions:
        """Pages written since ``track_writes()`` or the last ``reset=True``.

        See :func:`bigarr._core.tracking.written`.
        """
        from bigarr._core.tracking import written

        return written(self, region, reset=reset)

    def flush_written(self) -> DirtyRegions:
        """``msync`` only the pages written since the last mark, then set a new mark.

        See :func:`bigarr._core.tracking.flush_written`.
        """
        from bigarr._core.tracking import flush_written

        return flush_written(self)


def _rebuild(
    path: str,
    access: Any,
    first: int,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    strides: tuple[int, ...],
    filename: str,
    offset: int,
) -> memmap:
    """Unpickle: map the same bytes of the same file in the receiving process."""
    from bigarr._core.files import _regular_size
    from bigarr._os.mapping import Mapping

    size = 0 if 0 in shape else dtype.itemsize
    low = first + sum(min(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True))
    high = first + sum(max(0, (n - 1) * s) for n, s in zip(shape, strides, strict=True)) + size
    if size == 0:
        low = high = first
    have = _regular_size(path)
    if have < high:
        raise TruncatedFileError(
            f"{path} has {have} bytes, but the pickled array needs bytes {low}..{high}."
        )
    mapping = Mapping(path, access, low, high)
    return memmap._attach(mapping, shape, dtype, "C", filename=filename, offset=offset,
                          start=first - mapping.map_offset, strides=strides)
