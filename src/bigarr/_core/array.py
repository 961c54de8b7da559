"""The user-facing array: a thin ``numpy.memmap`` subclass that delegates to the owning modules.

It keeps numpy.memmap's documented behaviour (slices stay memmaps; ufunc results and fancy
indexing give plain ndarrays; full reductions give scalars; views keep ``filename``, ``offset``
and ``mode``) and adds ``close()``, context management, pickling by file reference and the
methods later modules provide. It holds no logic of its own beyond routing: the mapping lives
in :mod:`bigarr._os.mapping`, region arithmetic in :mod:`bigarr._plan.regions`, numpy.memmap's
constructor contract in :mod:`bigarr._core.npmemmap`, and what closing does to its methods and to
the views of an ``iter_chunks`` loop in :mod:`bigarr._core.closing`.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._core.closing import closed_error, install_guards, lending
from bigarr._os.modes import NUMPY_MODE
from bigarr._plan.budget import DEFAULT_BUDGET
from bigarr._plan.regions import Region, region_span
from bigarr.errors import PickleError_, TruncatedFileError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import TracebackType

    from bigarr._compute.progress import ProgressArg
    from bigarr._compute.stream import Residency
    from bigarr._core.dirtypages import DirtyRegions
    from bigarr._os.mapping import Mapping
    from bigarr._plan.chunks import Chunk, ChunkPlan

__all__ = ["memmap"]


def _plain(x: Any) -> Any:
    """An ndarray view of ``x`` for the ufunc machinery, refusing closed arrays."""
    if isinstance(x, memmap):
        m = x._bigarr
        if m is not None and m.closed:
            raise closed_error(m)
        return np.ndarray.view(x, np.ndarray)
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

    A :class:`numpy.memmap` subclass: slices stay memmaps, ufunc results and fancy indexing give
    plain ndarrays, full reductions give scalars. Constructed like :class:`numpy.memmap` (the
    conformance suite checks it against numpy); :func:`bigarr.open` and :func:`bigarr.create`
    build one from a ``.npy`` file, :func:`bigarr.open_raw` from a headerless one.

    Parameters
    ----------
    filename
        A path (``str`` or ``os.PathLike``) or a file object with a descriptor (a
        ``tempfile.TemporaryFile()`` works).
    dtype
        Element type (default ``uint8``); object dtypes are refused.
    mode
        ``"r"``/``"readonly"``, ``"r+"``/``"readwrite"``/``"shared"``, ``"w+"``/``"write"``
        (create, or replace, the file), ``"c"``/``"copyonwrite"``/``"private"``. ``"r+"`` and
        ``"w+"`` extend a shorter file (preallocated).
    offset
        Bytes before the array's first element.
    shape
        The array's shape; ``None`` maps everything after ``offset`` as a 1-D array.
    order
        ``"C"`` or ``"F"``.
    scratch_limit
        Keyword-only, bigarr's: for ``mode="c"``, the most scratch memory (bytes, or a string
        such as ``"2GiB"``) edits may take, as :func:`bigarr.open`'s; edits past it raise
        :class:`~bigarr.errors.ScratchLimitError` before the memory is used.

    Attributes
    ----------
    filename
        As numpy reports it: the resolved ``Path`` for a ``PathLike``, the absolute path for a
        ``str``, the file object's name, or ``None``.
    offset, mode
        The ``offset`` given and numpy's short name of the mode (``"r"``, ``"r+"``, ``"w+"``,
        ``"c"``).
    closed, access
        See the properties below.

    Raises
    ------
    ModeError, ShapeError, DtypeError
        For a bad mode, shape, order, offset or dtype, or a ``scratch_limit`` outside
        ``mode="c"``.
    BudgetError
        For a ``scratch_limit`` that is not a positive size.
    FileMissingError, NotAFileError, AccessDeniedError, ReadOnlyError
        For a path that is missing, not a regular file, or cannot be read (or written).
    TruncatedFileError
        If a file opened ``"r"`` or ``"c"`` is shorter than the array.
    DiskFullError
        If creating or extending the file finds no room.
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
        *,
        scratch_limit: int | str | None = None,
    ) -> memmap:
        from bigarr._core.npmemmap import new_memmap

        arr = new_memmap(filename, dtype, mode, offset, shape, order, scratch_limit)
        return arr if cls is memmap else arr.view(cls)

    @classmethod
    def _attach(
        cls,
        mapping: Mapping,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        order: str,
        *,
        filename: str | os.PathLike[str] | None,
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
        arr.filename = filename  # type: ignore[assignment]  # numpy keeps a Path for PathLike
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
        targets = inputs[:1] if method == "at" else out
        guard = _private_target(targets)
        if guard is not None:  # writing into a private mapping: exclude a concurrent commit
            from bigarr._core.scratch import checked_ufunc

            with guard, checked_ufunc(targets, after=method == "at"):  # and a scratch_limit
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
        from bigarr._core.scratch import checked_ufunc, function_writes

        before, after = function_writes(func, args, kwargs)  # np.copyto(x, v), out=x, ...
        guard = _private_target(before + after)
        if guard is None:
            return super().__array_function__(func, types, args, kwargs)
        with guard, checked_ufunc(before, after=False), checked_ufunc(after, after=True):
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
            from bigarr._core.scratch import setitem

            with write_lock(m):
                setitem(self, m, index, value)  # checked against a scratch_limit
            return
        np.ndarray.__setitem__(self, index, value)

    def __repr__(self) -> str:
        m = self._bigarr
        if m is not None and m.closed:  # no data, but never an error: tracebacks call repr
            return f"<closed bigarr.memmap of {os.path.basename(m.path)}>"
        return super().__repr__()

    def __str__(self) -> str:
        m = self._bigarr
        if m is not None and m.closed:
            return self.__repr__()
        return super().__str__()

    def __format__(self, spec: str) -> str:
        m = self._bigarr
        if m is not None and m.closed:
            if spec:  # a format spec asks for the values (0-d arrays format their item)
                raise closed_error(m)
            return self.__repr__()
        return np.ndarray.__format__(self, spec)

    def __reduce__(self) -> Any:
        m = self._bigarr
        if m is None:
            return super().__reduce__()
        self._check_open()
        if not m.named:
            raise PickleError_(
                f"An array of {m.path} cannot be pickled: bigarr pickles a file reference, and "
                "this file has no path another process could open (tempfile.TemporaryFile). "
                "Map a named file, or send np.asarray(arr).copy() to ship the data itself."
            )
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
            raise closed_error(m)

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
        closes with ``force=True``.

        What counts as another view: every bigarr view of the mapping and every plain ndarray
        built on it (``np.asarray(x)``, ``x.view(np.ndarray)``), except the arrays this one is a
        view of (closing from a view closes its parent) and the view an ``iter_chunks()`` loop
        handed out last. What cannot be seen: a ``memoryview`` of this array, and a plain
        ndarray view of it when it is itself a view; after the close those read zeros.

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
        """Leave the ``with`` block: close the mapping and every view of it (``force=True``)."""
        # The end of a with block is the end of the mapping's scope: close it and every view of
        # it, like leaving ``with open(...)`` closes the file for every reference. A strict
        # close() here would trip over views that merely outlive their use, such as the loop
        # variable of ``for chunk, view in x.iter_chunks()``, or the frames of a traceback (which
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

        Parameters
        ----------
        region
            Rows, a slice, a ``range``, a ``(start, stop)`` pair, a planned chunk or a view of
            this array; ``None`` for all of it.

        Raises
        ------
        RegionError
            For a malformed or out-of-range region.
        FileChangedError
            If the file shrank below the mapping (flushing would fault).
        ClosedError
            If the array is closed.
        """
        m = self._bigarr
        if m is None:
            return
        m.sync(region_span(self, region))

    # ---- chunking, hints and residency (bigarr._plan.chunks, bigarr._compute.stream) -------------
    def plan(self, budget: int | str = DEFAULT_BUDGET) -> ChunkPlan:
        """Plan page-aligned chunks of this array that each fit ``budget`` bytes.

        Chunks are ranges along the slowest axis (axis 0 in C order, the last axis in Fortran
        order) whose starts fall on page boundaries of the file, so a chunk can be released or
        prefetched without touching its neighbours.

        Parameters
        ----------
        budget
            Largest chunk, in bytes or as a string such as ``"64MiB"``.

        Returns
        -------
        ChunkPlan
            The chunks, in file order (``len(plan)``, ``plan.max_chunk_bytes``, iteration).

        Raises
        ------
        BudgetError
            If no page-aligned chunk fits the budget (both numbers quoted).
        RegionError
            If the array is not C- or F-contiguous, or is a detached copy.
        ClosedError
            If the array is closed.
        """
        from bigarr._compute.stream import plan_for

        return plan_for(self, budget)

    def iter_chunks(
        self,
        budget: int | str = DEFAULT_BUDGET,
        *,
        progress: ProgressArg = None,
        release: bool | None = None,
        prefetch: int = 1,
        hint: str | None = None,
        direct: bool = False,
    ) -> Iterator[tuple[Chunk, memmap]]:
        """Iterate ``(chunk, view)`` pairs with at most ``budget`` bytes mapped at once.

        Each ``view`` is a :class:`bigarr.memmap` view of one planned chunk. A helper thread
        prefetches the next chunk while the loop works on this one, and finished chunks are
        released behind the loop (in shared mode written back and waited for first, so filling
        a file keeps resident and dirty memory within the budget), so resident memory stays near
        the budget for any array size. In private mode with a ``scratch_limit``, each step
        checks the chunk's new scratch pages against it. The loop variable may outlive the
        loop: ``x.close()`` after ``for chunk, view in x.iter_chunks(): ...`` works, and
        ``view`` then raises :class:`~bigarr.errors.ClosedError`.

        Parameters
        ----------
        budget
            Bytes the iteration may keep mapped at once, or a string such as ``"64MiB"``. With
            prefetch, chunks are planned at half of it (two can be mapped at a time).
        progress
            ``None`` (a bar on a terminal), ``True``, ``False``, or a callable taking
            :class:`bigarr.ProgressEvent`.
        release
            Drop each finished chunk from memory (``MADV_DONTNEED``). ``None``: on, except in
            private mode, where it would throw away scratch edits.
        prefetch
            ``True`` (``"willneed"``: asynchronous read-ahead), ``"populate_read"`` (map the
            pages in the helper thread), ``"auto"`` (either, per piece), or ``False``.
        hint
            An access hint applied to the whole array first, such as ``"sequential"``; an
            access-pattern hint is reset to ``"normal"`` at the end.
        direct
            Fill the file at the disk's write rate (shared mode): each chunk's pages are
            anonymous memory while the loop has it (``view`` and the array still alias) and
            are written with ``O_DIRECT`` when the loop moves on. A chunk reaches the file
            and its other mappings only then (``flush()`` skips the chunk in hand; the loop's
            end, ``break``, an exception and ``close()`` write it). Writes into the chunk just
            left are kept (userfaultfd; without it each chunk is on the disk, mapped from the
            file again, before the loop goes on). Chunks of a third of the budget, at most
            32 MiB; no prefetch or release.
            Buffered where ``O_DIRECT`` is refused (tmpfs). See README, "Filling a file".

        Returns
        -------
        Iterator[tuple[Chunk, bigarr.memmap]]
            The chunks in file order, each with its view.

        Raises
        ------
        BudgetError
            If the budget cannot be met.
        HintError
            For ``release=True`` in private mode or with ``direct``, or an unknown hint or
            prefetch mode.
        ModeError
            For ``direct=True`` on an array not open in shared mode.
        RegionError
            If the array is not contiguous, or is a detached copy.
        FileChangedError
            If the file shrinks under the array (checked before each chunk, instead of a
            SIGBUS).
        UnsupportedError
            If a loop started before ``os.fork()`` is resumed in the child.
        """
        from bigarr._compute.stream import iter_chunks

        inner = iter_chunks(self, budget, progress=progress, release=release, prefetch=prefetch,
                            hint=hint, direct=direct)
        return lending(inner) if self._bigarr is not None else inner

    def advise(self, hint: str, region: Region = None) -> bool:
        """Apply an access hint (``madvise``) to the pages of ``region``.

        Parameters
        ----------
        hint
            ``"normal"``, ``"sequential"``, ``"random"``, ``"willneed"``, ``"dontneed"``,
            ``"hugepage"``, ``"nohugepage"``, ``"populate_read"``, ``"populate_write"``,
            ``"cold"`` or ``"pageout"`` (see :func:`bigarr.supported_hints`).
        region
            Rows, a slice, a ``range``, a ``(start, stop)`` pair, a planned chunk or a view of
            this array; ``None`` for all of it. Rounded outward to whole pages and clipped to
            the mapping.

        Returns
        -------
        bool
            ``False`` when the hint is a no-op on this platform or kernel (or for a detached
            copy), ``True`` when it was applied.

        Raises
        ------
        HintError
            For an unknown hint, or one refused in this mode (``"dontneed"`` and
            ``"pageout"`` in private mode would lose scratch edits; ``"populate_write"``
            needs shared mode).
        RegionError
            For a malformed or out-of-range region.
        ClosedError
            If the array is closed.
        """
        from bigarr._compute.stream import advise

        return advise(self, hint, region)

    def resident(self, region: Region = None, *, budget: int | str = DEFAULT_BUDGET) -> Residency:
        """Report which pages of ``region`` are in memory (``mincore``), overall and per chunk.

        A page counts as resident when it is in the page cache, whether or not this process has
        it mapped.

        Parameters
        ----------
        region
            As for :meth:`advise`; ``None`` for the whole array.
        budget
            Chunk size of the plan the per-chunk report follows (see :meth:`plan`).

        Returns
        -------
        Residency
            ``fraction``, ``resident_pages``, ``total_pages``, ``resident_bytes`` and
            ``chunks`` (one :class:`bigarr.ChunkResidency` per planned chunk in the region).

        Raises
        ------
        RegionError
            For a malformed region, or an array that is detached or not contiguous.
        UnsupportedError
            Where the platform has no ``mincore``.
        ClosedError
            If the array is closed.
        """
        from bigarr._compute.stream import residency

        return residency(self, region, budget=budget)

    # ---- private-mode workspace and write tracking (bigarr._core.private, bigarr._core.tracking) -
    def dirty(self, region: Region = None, *, exact: bool = True) -> DirtyRegions:
        """Find the elements (and rows) of this private-mode array that differ from the file.

        Scratch pages (the pages this process has copied by writing) are found first, from
        ``/proc/self/pagemap`` on Linux, and only they are compared with the file, so the cost
        follows the edits, not the array; a value written back unchanged is not reported.

        Parameters
        ----------
        region
            Rows, a slice, a chunk or a view limiting the search; ``None`` for the whole array.
        exact
            Compare the scratch pages with the file. ``False`` reports every element on a
            scratch page, without reading the file.

        Returns
        -------
        DirtyRegions
            Element, row and file-byte ranges (falsy when nothing differs).

        Raises
        ------
        ModeError
            If the array is not in private mode.
        RegionError
            For a malformed region or a strided (non-contiguous) array.
        ClosedError
            If the array is closed.
        """
        from bigarr._core.private import dirty

        return dirty(self, region, exact=exact)

    def commit(self, region: Region = None, *, journal: bool = False) -> int:
        """Write this private-mode array's scratch edits (in ``region``) to the file.

        Exactly the scratch pages are written (``pwrite`` per page run), then ``fdatasync``;
        afterwards the mapping shows the file again, which now holds the edits, and those pages
        no longer cost memory. Edits outside ``region`` stay scratch edits. If the process dies
        mid-commit, the file holds a prefix (by offset) of the committed pages, each page
        whole; with ``journal=True`` it holds all of the commit or none
        (:func:`bigarr.recover_commit` finishes or rolls back after a crash).

        Parameters
        ----------
        region
            Rows, a slice, a chunk or a view; ``None`` for the whole array.
        journal
            Write the pages to a redo journal next to the file first (about twice the bytes
            written), making the commit all-or-nothing.

        Returns
        -------
        int
            Bytes written to the file (the journal excluded).

        Raises
        ------
        ModeError
            If the array is not in private mode.
        RegionError
            For a malformed region.
        ReadOnlyError
            If the file cannot be opened for writing.
        FileChangedError
            If the file shrank or was replaced while mapped (nothing is written).
        DiskFullError
            If the journal does not fit on the disk (nothing is written).
        ClosedError
            If the array is closed.
        """
        from bigarr._core.private import commit

        return commit(self, region, journal=journal)

    def discard(self, region: Region = None) -> int:
        """Throw away this private-mode array's scratch edits (in ``region``).

        Whole scratch pages inside the region are dropped (no I/O, memory freed); on a page
        only partly inside it, just the region's bytes are restored from the file, so edits
        outside the region survive.

        Parameters
        ----------
        region
            Rows, a slice, a chunk or a view; ``None`` for all edits.

        Returns
        -------
        int
            Bytes of scratch pages that touched the region.

        Raises
        ------
        ModeError
            If the array is not in private mode.
        RegionError
            For a malformed region.
        FileChangedError
            If the file shrank while mapped.
        ClosedError
            If the array is closed.
        """
        from bigarr._core.private import discard

        return discard(self, region)

    def scratch_bytes(self, region: Region = None) -> int:
        """Memory held by this private-mode array's scratch pages (in ``region``), in bytes.

        Whole pages are counted. Where ``/proc/self/pagemap`` is unavailable, pages that
        differ from the file are counted instead (a lower bound).

        Parameters
        ----------
        region
            Rows, a slice, a chunk or a view; ``None`` for the whole array.

        Returns
        -------
        int
            Bytes of scratch pages.

        Raises
        ------
        ModeError
            If the array is not in private mode.
        RegionError
            For a malformed region.
        ClosedError
            If the array is closed.
        """
        from bigarr._core.private import scratch_bytes

        return scratch_bytes(self, region)

    def check_scratch(self) -> int:
        """Count this private-mode mapping's scratch pages; refuse if over its ``scratch_limit``.

        Catches edits no earlier check saw (plain numpy views written outside an
        ``iter_chunks`` loop); see ``bigarr.open(..., scratch_limit=)``.

        Returns
        -------
        int
            Bytes of scratch pages of the whole mapping.

        Raises
        ------
        ScratchLimitError
            If they exceed the limit (the edits are kept: commit or discard them).
        ModeError, ClosedError
            If the array is not an open private-mode array.
        """
        from bigarr._core.scratch import check_scratch

        return check_scratch(self)

    def track_writes(self, method: str = "auto") -> str:
        """Start tracking writes to this shared-mode array, or set a new mark if tracking.

        ``"uffd"`` (Linux 6.7+) write-protects the mapping with an asynchronous userfaultfd
        and lists written pages with ``PAGEMAP_SCAN``: exact per page and cheap to query, but
        each first write to a page after a mark costs an extra fault. ``"checksum"`` (anywhere)
        keeps a digest per 64 KiB block and reads the whole array at each mark and query.
        Tracking covers the whole mapping and sees this process's writes; in a forked child,
        the first report counts everything as written. Closing the array ends it.

        Parameters
        ----------
        method
            ``"auto"`` (``"uffd"`` where available, else ``"checksum"``), ``"uffd"`` or
            ``"checksum"``.

        Returns
        -------
        str
            The method in use, ``"uffd"`` or ``"checksum"``.

        Raises
        ------
        ModeError
            For an unknown method, or an array that is not in shared mode.
        UnsupportedError
            For ``method="uffd"`` where the kernel or permissions lack it.
        ClosedError
            If the array is closed.
        """
        from bigarr._core.tracking import track_writes

        return track_writes(self, method)

    def written(self, region: Region = None, *, reset: bool = False) -> DirtyRegions:
        """Report the pages written since :meth:`track_writes` or the last mark.

        Parameters
        ----------
        region
            Rows, a slice, a chunk or a view limiting the report; ``None`` for the whole array.
        reset
            Set a new mark as the report is taken (atomically with ``"uffd"``: a racing write
            is in this report or the next). The mark covers the whole mapping.

        Returns
        -------
        DirtyRegions
            Page-granular (``exact=False``): every element on a written page (or changed 64 KiB
            block, for ``"checksum"``).

        Raises
        ------
        ModeError
            If the array is not in shared mode, or not tracked.
        ClosedError
            If the array is closed.
        """
        from bigarr._core.tracking import written

        return written(self, region, reset=reset)

    def flush_written(self) -> DirtyRegions:
        """Flush (``msync``) only the pages written since the last mark, then set a new mark.

        A checkpoint for sparse writers: the returned pages are on disk when this returns.

        Returns
        -------
        DirtyRegions
            The pages flushed.

        Raises
        ------
        ModeError
            If the array is not in shared mode, or not tracked.
        FileChangedError
            If the file shrank below the mapping.
        ClosedError
            If the array is closed.
        """
        from bigarr._core.tracking import flush_written

        return flush_written(self)


#: Names of the ndarray methods and properties that raise ClosedError on a closed array.
GUARDED: tuple[str, ...] = install_guards(memmap)


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
