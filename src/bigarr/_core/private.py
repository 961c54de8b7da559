"""Private mode as a scratch workspace: what changed, commit it, or throw it away.

A private (``MAP_PRIVATE``, copy-on-write) mapping shows the file until a page is written; the
kernel then gives this process its own copy of that page (a *scratch page*). This module turns
those pages into answers:

* :func:`dirty` -- the elements (and rows) that differ from the file, as a :class:`DirtyRegions`;
* :func:`commit` -- ``pwrite`` each scratch page run back to the file, ``fdatasync``, then drop
  the copies so the mapping shows the file again (which now holds the edits);
* :func:`discard` -- drop the copies (the cheap way to undo), in a region or everywhere;
* :func:`scratch_bytes` -- the memory the scratch pages cost.

Finding scratch pages (the ``pagemap`` and ``compare`` backends) and the elements on them that
differ is :mod:`bigarr._core.dirtypages`; writing them to the file (plainly or through a redo
journal, ``journal=True``) and recovering an interrupted journaled commit is
:mod:`bigarr._core.commitjournal`, whose docstring says what a crash during a commit leaves.

Concurrency. All commits and discards of one file in this process take a per-file lock, so they
never interleave. A commit drops each page after writing it; a write to the same mapping by
another thread in between would be lost, so the commit also holds the mapping's *write lock*,
which bigarr's own write paths (item assignment, ufuncs with ``out=`` on the array, and
``ufunc.at``) take too.
Writes that bypass bigarr (a plain ``np.asarray(arr)`` view written from another thread during a
commit) are an unsynchronised data race, as in any numpy code. Writers of the same file through
*other* mappings (shared mode, other processes) are not excluded: a commit writes whole pages,
so on a page both touched, the last writer wins.
"""

from __future__ import annotations

import bisect
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._core import commitjournal
from bigarr._core.commitjournal import journal_path, recover_commit
from bigarr._core.dirtypages import (
    DirtyRegions,
    Runs,
    file_bytes,
    page_table,
    regions_from,
    scratch_runs,
)
from bigarr._os.durable import datasync
from bigarr._os.geometry import PAGE_SIZE, ByteSpan
from bigarr._os.lock import commit_lock
from bigarr._plan.regions import Region, region_span
from bigarr.errors import FileChangedError, ModeError, ReadOnlyError

if TYPE_CHECKING:
    from bigarr._os.mapping import Mapping

__all__ = [
    "DirtyRegions",
    "commit",
    "dirty",
    "discard",
    "journal_path",
    "recover_commit",
    "scratch_bytes",
    "write_lock",
]


_GUARD = threading.Lock()
_FILE_LOCKS: dict[tuple[int, int], threading.RLock] = {}
_WRITE_LOCKS: weakref.WeakKeyDictionary[Mapping, threading.RLock] = weakref.WeakKeyDictionary()


def _fresh_locks_in_child() -> None:
    """``os.register_at_fork(after_in_child=...)``: new locks for the forked child.

    Only the forking thread survives a fork; a lock another thread held at that moment (a commit
    or a write in progress) would stay held in the child for good, and its next write or commit
    would hang. The child's copies of the mappings are its own, so fresh locks are correct.
    """
    global _GUARD, _WRITE_LOCKS
    _GUARD = threading.Lock()
    _FILE_LOCKS.clear()
    _WRITE_LOCKS = weakref.WeakKeyDictionary()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_fresh_locks_in_child)


def _file_lock(m: Mapping) -> threading.RLock:
    st = os.fstat(m.fd)
    key = (st.st_dev, st.st_ino)
    with _GUARD:
        lock = _FILE_LOCKS.get(key)
        if lock is None:
            lock = _FILE_LOCKS[key] = threading.RLock()
        return lock


def write_lock(m: Mapping) -> threading.RLock:
    """The lock bigarr's write paths hold while writing into private mapping ``m``.

    ``commit`` and ``discard`` hold it too, so a write from another thread can never land on a
    page between its ``pwrite`` and its drop (which would lose the write).
    """
    lock = _WRITE_LOCKS.get(m)
    if lock is None:
        with _GUARD:
            lock = _WRITE_LOCKS.get(m)
            if lock is None:
                lock = _WRITE_LOCKS[m] = threading.RLock()
    return lock


# ---- helpers ---------------------------------------------------------------------------------
def _private_mapping(arr: Any, what: str) -> Mapping:
    m: Mapping | None = getattr(arr, "_bigarr", None)
    if m is None:
        raise ModeError(
            f"{what}() needs an array mapped by bigarr in private mode; this one is a detached "
            "copy. Open the file with bigarr.open(path, 'private')."
        )
    m.check_open()
    if m.access != "private":
        hint = (
            "Its writes already reach the file: use flush(), or track_writes()/written() to "
            "see what was written."
            if m.access == "shared"
            else "Open it with bigarr.open(path, 'private') to make scratch edits."
        )
        raise ModeError(
            f"{what}() applies to private (copy-on-write) arrays; this array of {m.path} is "
            f"{m.access}. {hint}"
        )
    return m


# ---- the operations ----------------------------------------------------------------------------
def dirty(arr: Any, region: Region = None, *, exact: bool = True) -> DirtyRegions:
    """The elements of ``arr`` (within ``region``) that differ from the file.

    Parameters
    ----------
    arr
        A private-mode :class:`bigarr.memmap` (contiguous).
    region
        Rows, a slice, a chunk or a view limiting the search; ``None`` for the whole array.
    exact
        Compare the scratch pages with the file (reads only those pages). ``False`` reports
        every element on a scratch page, without reading the file.

    Raises
    ------
    ModeError
        If ``arr`` is not a private-mode array.
    ClosedError
        If it has been closed.
    RegionError
        For a malformed region or a strided (non-contiguous) array.
    """
    m = _private_mapping(arr, "dirty")
    span = region_span(arr, region)
    return regions_from(arr, m, span, scratch_runs(m, span), exact=exact)


def scratch_bytes(arr: Any, region: Region = None) -> int:
    """Memory held by scratch pages of ``arr`` (within ``region``), in bytes (whole pages).

    With the ``compare`` backend this counts pages that differ from the file (a lower bound).

    Raises
    ------
    ModeError, ClosedError
        As :func:`dirty`.
    """
    m = _private_mapping(arr, "scratch_bytes")
    _first, mask = page_table(m, region_span(arr, region))
    return int(mask.sum()) * PAGE_SIZE


def _writable_fd(m: Mapping) -> int:
    """A read-write descriptor of the mapped file, refusing if the path now names another file."""
    try:
        fd = os.open(m.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except PermissionError:
        raise ReadOnlyError(
            f"commit() needs to write {m.path}, but it is not writable. Keep the edits with "
            "np.save(other_path, arr), or make the file writable."
        ) from None
    except FileNotFoundError:
        raise FileChangedError(
            2, f"{m.path} was removed while mapped; commit() has nowhere to write."
        ) from None
    mine, now = os.fstat(m.fd), os.fstat(fd)
    if (mine.st_dev, mine.st_ino) != (now.st_dev, now.st_ino):
        os.close(fd)
        raise FileChangedError(
            5, f"{m.path} was replaced by another file while mapped; commit() refuses to write "
            "the edits into a different file. Save them with np.save(other_path, arr)."
        )
    return fd



def _drop_if_clean(m: Mapping, page_start: int) -> None:
    """Drop the scratch copy of one page if all its mapped bytes now equal the file."""
    page = ByteSpan(page_start, min(page_start + PAGE_SIZE, m.length))
    if page.nbytes and bool(
        np.array_equal(m.root[page.start : page.stop],
                       file_bytes(m.fd, m.map_offset + page.start, page.nbytes))
    ):
        m.drop_pages(ByteSpan(page.start, page.start + PAGE_SIZE if page.stop < m.length
                              else m.length))


def _settle(m: Mapping, span: ByteSpan, runs: Runs, restore: bool) -> None:
    """After committing ``span`` (or to discard it): drop its pages, handle its edge pages.

    Every scratch page wholly inside ``span`` has been written (or is to be thrown away), so
    one ``drop_pages`` over the whole span drops them all; clean pages it also unmaps stay in
    the page cache. Edge pages (partly outside ``span``) may hold edits outside it, so they are
    never dropped blindly: with ``restore`` their bytes inside ``span`` are first copied back
    from the file; then each is dropped only if it equals the file as a whole.
    """
    inner = m.drop_pages(span)
    if inner.nbytes == 0:
        edges = [span]
    else:
        edges = [ByteSpan(span.start, inner.start), ByteSpan(min(inner.stop, span.stop),
                                                             span.stop)]
    starts = [a for a, _b in runs]
    for edge in edges:
        for page in edge.pages(PAGE_SIZE) if edge.nbytes else ():
            lo = max(page * PAGE_SIZE, edge.start)
            hi = min((page + 1) * PAGE_SIZE, edge.stop)
            i = bisect.bisect_right(starts, lo) - 1  # the run that could hold byte lo
            scratch = any(a < hi and b > lo for a, b in runs[max(i, 0) : i + 2])
            if not scratch:
                continue
            if restore:
                m.root[lo:hi] = file_bytes(m.fd, m.map_offset + lo, hi - lo)
            _drop_if_clean(m, page * PAGE_SIZE)


def commit(arr: Any, region: Region = None, *, journal: bool = False) -> int:
    """Write the scratch pages of ``arr`` (within ``region``) to the file, then drop them.

    Exactly the scratch pages are written (``pwrite`` per page run, clipped to the region),
    then ``fdatasync``; unmodified pages are not touched on disk. Afterwards the mapping shows
    the file again, which now holds the edits, and those pages no longer cost memory. Edits
    outside ``region`` stay scratch edits.

    Parameters
    ----------
    arr
        A private-mode :class:`bigarr.memmap`.
    region
        Rows, a slice, a chunk or a view; ``None`` for the whole array.
    journal
        Write the pages to a journal file first, so a crash leaves either all or none of this
        commit in the file (about twice the bytes written). See
        :func:`bigarr._core.commitjournal.journaled_write`.

    Returns
    -------
    int
        Bytes written to the file (journal excluded).

    Raises
    ------
    ModeError, ClosedError, RegionError
        As :func:`dirty`.
    ReadOnlyError
        If the file cannot be opened for writing.
    FileChangedError
        If the file shrank or was replaced while mapped (nothing is written).
    DiskFullError
        If the journal (``journal=True``) does not fit on the disk (nothing is written).

    Warns
    -----
    StaleJournalWarning
        If a commit journal next to the file is not this file's (or not one bigarr wrote): it
        is removed unused (see :func:`recover_commit`).
    """
    m = _private_mapping(arr, "commit")
    span = region_span(arr, region)
    with _file_lock(m), write_lock(m):
        m.check_file()
        runs = scratch_runs(m, span)
        if not runs and not os.path.lexists(journal_path(m.path)):
            return 0
        fd = _writable_fd(m)
        try:
            with commit_lock(fd):  # other processes' commits and recoveries of this file
                commitjournal.recover(m.path, fd)  # never stack a commit on an interrupted one
                if not runs:
                    return 0
                if journal:
                    written = commitjournal.journaled_write(fd, m, runs)
                else:
                    written = commitjournal.write_runs(fd, m, runs)
                    datasync(fd)
        finally:
            os.close(fd)
        _settle(m, span, runs, restore=False)
        _recount(m)
    return written


def _recount(m: Mapping) -> None:
    """Tell a ``scratch_limit`` that pages were freed (it recounts them)."""
    from bigarr._core.scratch import recount  # scratch.py builds on this module

    recount(m)


def discard(arr: Any, region: Region = None) -> int:
    """Throw away the scratch edits of ``arr`` within ``region`` (``None``: all of them).

    Whole scratch pages inside the region are dropped (``MADV_DONTNEED``: no I/O, memory freed).
    On a page only partly inside the region, just the region's bytes are restored from the file
    (``pread``), so edits outside the region survive; such a page is dropped once it equals the
    file.

    Returns
    -------
    int
        Bytes of scratch pages that touched the region, in bytes.

    Raises
    ------
    ModeError, ClosedError, RegionError
        As :func:`dirty`.
    FileChangedError
        If the file shrank while mapped.
    """
    m = _private_mapping(arr, "discard")
    span = region_span(arr, region)
    with _file_lock(m), write_lock(m):
        m.check_file()
        runs = scratch_runs(m, span)
        if runs:
            _settle(m, span, runs, restore=True)
            _recount(m)
    return sum(len(ByteSpan(a, b).pages(PAGE_SIZE)) for a, b in runs) * PAGE_SIZE
