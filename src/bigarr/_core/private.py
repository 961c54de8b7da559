"""Private mode as a scratch workspace: what changed, commit it, or throw it away.

A private (``MAP_PRIVATE``, copy-on-write) mapping shows the file until a page is written; the
kernel then gives this process its own copy of that page (a *scratch page*). This module finds
those pages and turns them into answers:

* :func:`dirty` -- the elements (and rows) that differ from the file, as a :class:`DirtyRegions`;
* :func:`commit` -- ``pwrite`` each scratch page run back to the file, ``fdatasync``, then drop
  the copies so the mapping shows the file again (which now holds the edits);
* :func:`discard` -- drop the copies (the cheap way to undo), in a region or everywhere;
* :func:`scratch_bytes` -- the memory the scratch pages cost.

Finding scratch pages (the *backend*):

``"pagemap"`` (Linux)
    ``/proc/self/pagemap`` has one 8-byte entry per page. In a private file mapping a page that
    was written is present *without* the file-page bit (61), or swapped out (bit 62); a page only
    read has bit 61; an untouched page reads 0. Scanning 1 GiB of entries takes about 1.5 ms.
``"compare"`` (everywhere else, or ``BIGARR_DIRTY_BACKEND=compare``)
    Compare every page of the range with the file (``pread``). Exact for values, but it reads the
    whole range from the file *and* from the mapping (which faults it in), so it costs time and
    resident memory proportional to the range, and a page written back to its original value is
    not a scratch page for it. :func:`scratch_bytes` then counts pages that differ (a lower bound).

What "modified" means: :func:`dirty` reports elements whose bytes differ from the file *now*.
Scratch pages are found first (cheap), then only those pages are compared with the file, so a
value written back unchanged is not reported, and the cost is proportional to the edits.

Concurrency. All commits and discards of one file in this process take a per-file lock, so they
never interleave. A commit drops each page after writing it; a write to the same mapping by
another thread in between would be lost, so the commit also holds the mapping's *write lock*,
which bigarr's own write paths (item assignment, ufuncs with ``out=`` on the array, and
``ufunc.at``) take too.
Writes that bypass bigarr (a plain ``np.asarray(arr)`` view written from another thread during a
commit) are an unsynchronised data race, as in any numpy code. Writers of the same file through
*other* mappings (shared mode, other processes) are not excluded: a commit writes whole pages,
so on a page both touched, the last writer wins.

Crash during a commit. Pages are written in ascending file order, then ``fdatasync``; the scratch
copies are dropped only after that. If the process dies mid-commit, every ``pwrite`` that
returned is in the page cache and reaches the disk, the rest of the file keeps its old bytes:
the file holds a prefix (by offset) of the committed pages, each page whole, and the remaining
edits are lost with the process. A power loss before ``fdatasync`` returns can leave any subset
of the written pages on disk. Use ``journal=True`` for an all-or-nothing commit: the pages go to
a redo journal (``.<name>.bigarr-commit``, fsync'd) before the file is touched, and
:func:`recover_commit` replays a complete journal or drops a torn one, so the file holds all of
the commit or none. A journal is replayed only into the file it was written for (its identity,
size and header bytes; never a file re-created under the name), and only inside the array's
data; any other is removed unused with a :class:`~bigarr.errors.StaleJournalWarning`. Commits
and recoveries of one file, in any processes, hold an OFD lock on it
(:func:`bigarr._os.lock.commit_lock`), so they never interleave.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import hashlib
import json
import os
import struct
import sys
import threading
import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._formats.journal import (
    COMMIT_MAGIC,
    COMMIT_MAGIC_V1,
    commit_journal_path,
    user_stacklevel,
)
from bigarr._formats.npy import read_header
from bigarr._os.durable import Paced, datasync, fsync_dir
from bigarr._os.fileid import (
    FileId,
    NotARegularFile,
    create_unnamed,
    discard_unnamed,
    file_id,
    install,
    leftovers,
    open_regular,
    remove_leftovers,
)
from bigarr._os.geometry import PAGE_SIZE, ByteSpan
from bigarr._os.lock import commit_lock
from bigarr._plan.regions import Region, extent, region_span
from bigarr.errors import (
    DiskFullError,
    FileChangedError,
    FileMissingError,
    ModeError,
    NotAFileError,
    ReadOnlyError,
    RegionError,
    StaleJournalWarning,
    UnsupportedError,
)

if TYPE_CHECKING:
    from bigarr._os.mapping import Mapping

__all__ = [
    "DirtyRegions",
    "commit",
    "dirty",
    "dirty_backend",
    "discard",
    "journal_path",
    "recover_commit",
    "scratch_bytes",
    "write_lock",
]

_CHUNK = 16 << 20  # bytes compared or written per step; bounds temporary memory
_SCAN = 1 << 20  # pagemap entries read per step (8 MiB, for 4 GiB of mapping)
_PRESENT, _SWAPPED, _FILE_PAGE = 1 << 63, 1 << 62, 1 << 61
_BACKENDS = ("pagemap", "compare")

#: Set to ``"pagemap"`` or ``"compare"`` to force a backend (tests do); ``None`` chooses.
BACKEND: str | None = os.environ.get("BIGARR_DIRTY_BACKEND") or None


Int64Runs = np.ndarray[Any, np.dtype[np.int64]]
"""An ``(n, 2)`` int64 array of sorted, disjoint, non-adjacent ``[start, stop)`` runs."""


def _ranges(runs: Int64Runs) -> tuple[range, ...]:
    return tuple(range(a, b) for a, b in runs.tolist())


@dataclass(frozen=True, slots=True, eq=False)
class DirtyRegions:
    """Where an array differs from its file (or, for write tracking, where it was written).

    Element and row ranges are relative to the array ``dirty()`` was called on; byte spans are
    file offsets. All ranges are sorted, disjoint and not adjacent. The runs are stored as
    compact int64 arrays (a report of a million scattered edits costs 16 MB, not a million
    Python objects); :attr:`elements`, :attr:`rows`, :attr:`spans` and :attr:`pages` build
    ``range``/``ByteSpan`` tuples from them on each access.
    """

    element_runs: Int64Runs
    """``(n, 2)`` flat element index runs, in memory order (``arr.reshape(-1)`` for C order)."""
    row_runs: Int64Runs
    """``(m, 2)`` runs of first-axis rows holding those elements (empty for a 0-d array)."""
    page_runs: Int64Runs
    """``(k, 2)`` file byte runs of the scratch (or written) pages, clipped to the array's
    bytes: what ``commit`` would write."""
    data_offset: int
    """File offset of element 0 of the array, in bytes."""
    itemsize: int
    """Bytes per element."""
    exact: bool
    """True when elements were compared with the file; False when they are whole pages."""

    @property
    def elements(self) -> tuple[range, ...]:
        """Flat element index ranges, in memory order."""
        return _ranges(self.element_runs)

    @property
    def rows(self) -> tuple[range, ...]:
        """Ranges of first-axis rows holding the reported elements."""
        return _ranges(self.row_runs)

    @property
    def spans(self) -> tuple[ByteSpan, ...]:
        """File byte ranges of the reported elements."""
        byte_runs = self.element_runs * self.itemsize + self.data_offset
        return tuple(ByteSpan(a, b) for a, b in byte_runs.tolist())

    @property
    def pages(self) -> tuple[ByteSpan, ...]:
        """File byte ranges of the page runs (see :attr:`page_runs`)."""
        return tuple(ByteSpan(a, b) for a, b in self.page_runs.tolist())

    @property
    def count(self) -> int:
        """Number of elements reported."""
        return int((self.element_runs[:, 1] - self.element_runs[:, 0]).sum())

    @property
    def row_count(self) -> int:
        """Number of rows holding reported elements."""
        return int((self.row_runs[:, 1] - self.row_runs[:, 0]).sum())

    @property
    def nbytes(self) -> int:
        """Bytes of the reported elements."""
        return self.count * self.itemsize

    @property
    def page_bytes(self) -> int:
        """Bytes of the page runs (what a commit writes)."""
        return int((self.page_runs[:, 1] - self.page_runs[:, 0]).sum())

    def __bool__(self) -> bool:
        return len(self.element_runs) > 0

    def __repr__(self) -> str:
        return (f"DirtyRegions({self.count} elements in {len(self.element_runs)} runs, "
                f"{self.row_count} rows, {self.page_bytes} bytes of pages, exact={self.exact})")

    def mask(self, size: int) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """A flat boolean mask of ``size`` elements, True where an element is reported."""
        edges = np.zeros(size + 1, dtype=np.int64)
        np.add.at(edges, self.element_runs[:, 0], 1)
        np.add.at(edges, self.element_runs[:, 1], -1)
        return np.cumsum(edges[:size]) > 0


# ---- backend and locks ---------------------------------------------------------------------------
def _pagemap_works() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/pagemap", "rb") as f:
            return len(f.read(8)) == 8
    except OSError:
        return False


_PAGEMAP_OK = _pagemap_works()


def dirty_backend() -> str:
    """The backend in use: ``"pagemap"`` (Linux) or ``"compare"`` (pages compared with the file).

    Raises
    ------
    ModeError
        If ``BACKEND`` (or ``BIGARR_DIRTY_BACKEND``) names an unknown backend.
    """
    if BACKEND is None:
        return "pagemap" if _PAGEMAP_OK else "compare"
    if BACKEND not in _BACKENDS:
        raise ModeError(f"Expected a dirty-page backend in {_BACKENDS}. Got {BACKEND!r}.")
    return BACKEND


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


def _pread(fd: int, offset: int, nbytes: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    out = np.empty(nbytes, dtype=np.uint8)
    view = out.data
    done = 0
    while done < nbytes:
        n = os.preadv(fd, [view[done:]], offset + done)
        if n <= 0:
            raise FileChangedError(
                5, f"The file ended at byte {offset + done}; expected {offset + nbytes} bytes."
            )
        done += n
    return out


_NO_RUNS: Int64Runs = np.zeros((0, 2), dtype=np.int64)


def _runs(mask: np.ndarray[Any, Any]) -> Int64Runs:
    """Half-open ``[start, stop)`` index runs where ``mask`` is True, as an ``(n, 2)`` array."""
    if mask.size == 0:
        return _NO_RUNS
    zero = np.zeros(1, dtype=np.int8)
    edges = np.diff(mask.astype(bool).view(np.int8), prepend=zero, append=zero)
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1).astype(
        np.int64)


def _merge(runs: Int64Runs) -> Int64Runs:
    """Sort and merge overlapping or adjacent runs of an ``(n, 2)`` array."""
    runs = runs[runs[:, 1] > runs[:, 0]]
    if len(runs) == 0:
        return _NO_RUNS
    runs = runs[np.argsort(runs[:, 0], kind="stable")]
    reach = np.maximum.accumulate(runs[:, 1])
    new = np.ones(len(runs), dtype=bool)
    new[1:] = runs[1:, 0] > reach[:-1]
    first = np.flatnonzero(new)
    return np.stack([runs[first, 0], np.maximum.reduceat(runs[:, 1], first)], axis=1)


def _copied(e: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Which pagemap entries are scratch pages: present without the file bit, or swapped."""
    copied = ((e & np.uint64(_PRESENT)) != 0) & ((e & np.uint64(_FILE_PAGE)) == 0)
    out: np.ndarray[Any, np.dtype[np.bool_]] = copied | ((e & np.uint64(_SWAPPED)) != 0)
    return out


def _page_table(m: Mapping, span: ByteSpan) -> tuple[int, np.ndarray[Any, np.dtype[np.bool_]]]:
    """``(first page byte, mask)``: which pages of ``span`` (rounded outward) are scratch pages."""
    pages = span.outward(PAGE_SIZE).clip(ByteSpan(0, m.length))
    if pages.nbytes == 0 or m.addr == 0:
        return pages.start, np.zeros(0, dtype=bool)
    if dirty_backend() == "pagemap":
        try:
            # In steps of _SCAN pages: a 40 GiB mapping has 80 MiB of pagemap entries, and
            # reading them whole cost 200 MiB of temporaries (issue 17).
            masks = [_copied(m.pagemap(ByteSpan(lo, min(pages.stop, lo + _SCAN * PAGE_SIZE))))
                     for lo in range(pages.start, pages.stop, _SCAN * PAGE_SIZE)]
        except UnsupportedError:
            pass
        else:
            return pages.start, np.concatenate(masks)
    npages = -(-pages.nbytes // PAGE_SIZE)
    mask = np.zeros(npages, dtype=bool)
    step = max(1, _CHUNK // PAGE_SIZE)
    for first in range(0, npages, step):
        lo = pages.start + first * PAGE_SIZE
        hi = min(pages.start + (first + step) * PAGE_SIZE, pages.stop)
        diff = m.root[lo:hi] != _pread(m.fd, m.map_offset + lo, hi - lo)
        pad = -(hi - lo) % PAGE_SIZE
        if pad:
            diff = np.concatenate((diff, np.zeros(pad, dtype=bool)))
        mask[first : first + len(diff) // PAGE_SIZE] = diff.reshape(-1, PAGE_SIZE).any(axis=1)
    return pages.start, mask


Runs = list[tuple[int, int]]
"""Sorted, disjoint ``(start, stop)`` byte runs in mapping coordinates (plain tuples: a commit
of scattered edits handles tens of thousands of them)."""


def _scratch_runs(m: Mapping, span: ByteSpan) -> Runs:
    """Scratch page runs touching ``span``, in mapping coordinates, clipped to ``span``."""
    first, mask = _page_table(m, span)
    if not mask.any():
        return []
    zero = np.zeros(1, dtype=np.int8)  # int8 throughout: a mask of 40 GiB of pages is 10 MiB
    edges = np.diff(mask.view(np.int8), prepend=zero, append=zero)
    starts = np.maximum(first + np.flatnonzero(edges == 1) * PAGE_SIZE, span.start)
    stops = np.minimum(first + np.flatnonzero(edges == -1) * PAGE_SIZE, span.stop)
    keep = stops > starts
    return list(zip(starts[keep].tolist(), stops[keep].tolist(), strict=True))


def _differs(m: Mapping, lo: int, hi: int, item: int) -> list[Int64Runs]:
    """Element runs (relative to byte ``lo``, element size ``item``) whose bytes differ."""
    out: list[Int64Runs] = []
    step = max(1, _CHUNK // item) * item
    for a in range(lo, hi, step):
        b = min(a + step, hi)
        diff = (m.root[a:b] != _pread(m.fd, m.map_offset + a, b - a)).reshape(-1, item)
        out.append(_runs(diff.any(axis=1)) + (a - lo) // item)
    return out


def _rows_of(arr: Any, elements: Int64Runs) -> Int64Runs:
    if arr.ndim == 0 or len(elements) == 0:
        return _NO_RUNS
    if arr.ndim == 1:
        return elements
    n0 = arr.shape[0]
    if arr.flags.c_contiguous:
        per_row = arr.size // n0
        return _merge(np.stack([elements[:, 0] // per_row, -(-elements[:, 1] // per_row)], 1))
    # F order: element k is in row k % n0
    if ((elements[:, 1] - elements[:, 0]) >= n0).any():
        return np.array([[0, n0]], dtype=np.int64)
    lo, hi = elements[:, 0] % n0, elements[:, 1] % n0
    wraps = (hi <= lo) & (hi != 0)
    edges = np.zeros(n0 + 1, dtype=np.int64)
    np.add.at(edges, lo, 1)
    np.add.at(edges, np.where(wraps | (hi == 0), n0, hi), -1)
    np.add.at(edges, np.zeros(int(wraps.sum()), dtype=np.int64), 1)
    np.add.at(edges, hi[wraps], -1)
    return _runs(np.cumsum(edges[:n0]) > 0)


def regions_from(
    arr: Any, m: Mapping, span: ByteSpan, runs: Runs, *, exact: bool
) -> DirtyRegions:
    """Build a :class:`DirtyRegions` of ``arr`` from page runs (mapping coordinates).

    With ``exact``, the elements on those pages are compared with the file; otherwise every
    element touching a run is reported. Used by :func:`dirty` and by write tracking.

    Raises
    ------
    RegionError
        If ``arr`` is not contiguous (its elements have no single flat index order).
    """
    if not (arr.flags.c_contiguous or arr.flags.f_contiguous):
        raise RegionError(
            "Expected a contiguous array: element ranges of a strided view are not flat ranges. "
            "Call dirty() on the array the view came from, with region=<rows> to limit it."
        )
    ext = extent(arr, m)
    item = arr.itemsize
    pages = np.array(runs, dtype=np.int64).reshape(-1, 2)
    pages = np.stack([np.maximum(pages[:, 0], span.start), np.minimum(pages[:, 1], span.stop)], 1)
    pages = pages[pages[:, 1] > pages[:, 0]]
    elements = _NO_RUNS
    if arr.size and item and len(pages):
        first = (pages[:, 0] - ext.start) // item
        last = -(-(pages[:, 1] - ext.start) // item)
        if exact:
            found: list[Int64Runs] = []
            for e0, e1 in zip(first.tolist(), last.tolist(), strict=True):
                lo = ext.start + e0 * item
                found.extend(r + e0 for r in _differs(m, lo, lo + (e1 - e0) * item, item))
            elements = _merge(np.concatenate(found)) if found else _NO_RUNS
        else:
            elements = _merge(np.stack([first, last], axis=1))
    return DirtyRegions(
        element_runs=elements,
        row_runs=_rows_of(arr, elements),
        page_runs=pages + m.map_offset,
        data_offset=m.map_offset + ext.start,
        itemsize=item,
        exact=exact,
    )


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
    return regions_from(arr, m, span, _scratch_runs(m, span), exact=exact)


def scratch_bytes(arr: Any, region: Region = None) -> int:
    """Memory held by scratch pages of ``arr`` (within ``region``), in bytes (whole pages).

    With the ``compare`` backend this counts pages that differ from the file (a lower bound).

    Raises
    ------
    ModeError, ClosedError
        As :func:`dirty`.
    """
    m = _private_mapping(arr, "scratch_bytes")
    _first, mask = _page_table(m, region_span(arr, region))
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


def _pwrite(fd: int, m: Mapping, runs: Runs) -> int:
    """``pwrite`` each run from the mapping to the file, in ascending order; bytes written.

    Paced (:class:`~bigarr._os.durable.Paced`): at most a window of the commit is dirty in the
    page cache at a time, instead of all of it until the ``fdatasync`` (issue 17).
    """
    root, base, total = m.root, m.map_offset, 0
    paced = Paced(fd)
    for start, stop in runs:
        for pos in range(start, stop, _CHUNK):
            paced.write(root[pos : min(stop, pos + _CHUNK)], base + pos)
        total += stop - start
    return total


_JOURNAL_MAGIC = COMMIT_MAGIC  # (bigarr._formats.journal reads the header too)
_OLD_MAGIC = COMMIT_MAGIC_V1
_LENGTH = struct.Struct("<I")  # bytes of the JSON header that follows the magic
_RECORD = struct.Struct("<QQ")  # file offset, byte count; then the bytes
_TRAILER = b"END!"
_HEAD_BYTES = 64 << 10  # bytes before the data section digested into the journal (the header)


def journal_path(path: str) -> str:
    """Where a journaled commit of ``path`` keeps its journal: ``.<name>.bigarr-commit``."""
    return commit_journal_path(path)


def _write_all(fd: int, data: Any, paced: Paced | None = None) -> None:
    """``os.write`` all of ``data``, in pieces of at most ``_CHUNK`` bytes paced by ``paced``."""
    view = memoryview(data).cast("B")
    while len(view):
        at = os.lseek(fd, 0, os.SEEK_CUR) if paced is not None else 0
        n = os.write(fd, view[:_CHUNK])
        if paced is not None:
            paced.wrote(at, n)
        view = view[n:]


def _pread_bytes(fd: int, nbytes: int, offset: int) -> bytes:
    out = bytearray()
    while len(out) < nbytes:
        piece = os.pread(fd, nbytes - len(out), offset + len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def _identity(fd: int, lo: int, hi: int) -> dict[str, Any]:
    """What a commit journal records of its file: identity, size, data section, header bytes."""
    head = _pread_bytes(fd, min(lo, _HEAD_BYTES), 0)
    return {"id": file_id(fd).to_json(), "size": os.fstat(fd).st_size, "data": [lo, hi],
            "head": hashlib.sha256(head).hexdigest()}


def _journaled_write(fd: int, m: Mapping, runs: Runs) -> int:
    """All-or-nothing commit: a redo journal made durable first, then the pages, then unlink.

    The journal names the file it is for (:func:`_identity`: device, inode, birth time,
    generation, size, data section and a digest of the bytes before it) and holds every page run
    (file offset, length, bytes) and a BLAKE2b digest of all of it. It is written as an unnamed
    file (``O_TMPFILE``; elsewhere a new random hidden name made with
    ``O_CREAT|O_EXCL|O_NOFOLLOW``) and renamed to its place once synced, so a link planted at
    the journal's name is replaced, never written through. A crash before the rename leaves
    the file untouched and no journal; a crash after it
    leaves a journal that :func:`recover_commit` replays, so the file ends with all of the
    commit or none of it.
    """
    jpath = journal_path(m.path)
    lo, hi = m.map_offset + m.data_start, m.map_offset + m.length
    head = json.dumps(_identity(fd, lo, hi)).encode("ascii")
    digest = hashlib.blake2b(digest_size=16)
    try:
        jfd, tmp = create_unnamed(jpath, mode=0o600)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ReadOnlyError(
                f"commit(journal=True) keeps its journal next to {m.path}, but that folder "
                f"cannot be written ({exc.strerror}). Nothing was written; commit with "
                "journal=False, or make the folder writable."
            ) from None
        raise
    try:
        for piece in (_JOURNAL_MAGIC, _LENGTH.pack(len(head)), head):
            digest.update(piece)
            _write_all(jfd, piece)
        paced = Paced(jfd)  # the journal's dirty pages bounded too, like the commit's
        for start, stop in runs:
            record = _RECORD.pack(m.map_offset + start, stop - start)
            for part in (record, m.root[start:stop].data):
                digest.update(part)
                _write_all(jfd, part, paced)
        _write_all(jfd, _TRAILER + digest.digest())
        os.fsync(jfd)
    except BaseException as exc:  # the file is untouched: drop the unfinished journal
        discard_unnamed(jfd, tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"No room for the commit journal {jpath} ({sum(b - a for a, b in runs)} bytes "
                f"of pages): {exc.strerror}. Nothing was written to {m.path}; the edits are "
                "still scratch edits. Free space, or commit with journal=False."
            ) from None
        raise
    os.close(install(jfd, tmp, jpath))
    fsync_dir(jpath)
    written = _pwrite(fd, m, runs)
    datasync(fd)
    os.unlink(jpath)
    fsync_dir(jpath)
    return written


class _Journal:
    """A commit journal as read from disk: ``header`` and ``(offset, nbytes, at)`` records."""

    def __init__(self, header: dict[str, Any], records: list[tuple[int, int, int]]) -> None:
        self.header = header
        self.records = records


def _journal_records(jfd: int, size: int) -> _Journal | None:
    """Parse and verify a journal; None if it is torn (its digest does not match)."""
    digest = hashlib.blake2b(digest_size=16)
    magic = os.pread(jfd, len(_JOURNAL_MAGIC), 0)
    if magic != _JOURNAL_MAGIC:
        return None
    digest.update(magic)
    pos = len(magic)
    length = os.pread(jfd, _LENGTH.size, pos)
    if len(length) < _LENGTH.size:
        return None
    (nhead,) = _LENGTH.unpack(length)
    digest.update(length)
    pos += _LENGTH.size
    tail = len(_TRAILER) + digest.digest_size
    if pos + nhead + tail > size or nhead > 1 << 20:
        return None
    raw = os.pread(jfd, nhead, pos)
    digest.update(raw)
    pos += nhead
    records = []
    while pos + tail < size:
        head = os.pread(jfd, _RECORD.size, pos)
        if len(head) < _RECORD.size:
            return None
        offset, nbytes = _RECORD.unpack(head)
        digest.update(head)
        body = pos + _RECORD.size
        if body + nbytes + tail > size:
            return None
        for a in range(body, body + nbytes, _CHUNK):
            digest.update(os.pread(jfd, min(_CHUNK, body + nbytes - a), a))
        records.append((offset, nbytes, body))
        pos = body + nbytes
    if pos + tail != size or os.pread(jfd, tail, pos) != _TRAILER + digest.digest():
        return None
    try:
        header = json.loads(raw)
    except ValueError:
        return None
    return _Journal(header, records) if isinstance(header, dict) else None


def _why_not(journal: _Journal, fd: int, target: str) -> str | None:
    """Why a complete journal must not be replayed into the open file ``fd``; None if it may.

    The journal must name this very file (identity, size, the bytes before the data section)
    and every record must lie inside the data section it names, which must lie inside the
    file and, for a ``.npy`` file, inside the data section its header describes.
    """
    header = journal.header
    data = header.get("data")
    if (not isinstance(data, list) or len(data) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in data)):
        return "it names no data section"
    lo, hi = data
    mine = _identity(fd, lo, hi) if 0 <= lo <= hi else None
    if mine is None or FileId.from_json(header.get("id")) != file_id(fd):
        return f"it was written for another file that had the name {target}"
    if header.get("size") != mine["size"] or header.get("head") != mine["head"]:
        return f"{target} changed since (its size or header differs)"
    if hi > mine["size"]:
        return "its data section lies beyond the end of the file"
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            npy = read_header(f, mine["size"], name=target)
    except (ValueError, OSError):
        npy = None  # a headerless (open_raw) file: its data section is what the journal says
    if npy is not None and not (npy.data_offset <= lo and hi <= npy.data_offset + npy.nbytes):
        return "its data section is not the array's data (it would overwrite the .npy header)"
    for offset, nbytes, _at in journal.records:
        if not (lo <= offset and offset + nbytes <= hi):
            return (f"a record ({nbytes} bytes at {offset}) lies outside the data section "
                    f"[{lo}, {hi})")
    return None


def _drop_journal(jpath: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(jpath)
    fsync_dir(jpath)


def _reject(jpath: str, target: str, why: str) -> str:
    warnings.warn(
        f"Not replaying the commit journal {jpath}: {why}. Nothing was written to {target}; "
        "the journal was removed.", StaleJournalWarning, stacklevel=user_stacklevel())
    _drop_journal(jpath)
    return "rejected"


def _recover(target: str, fd: int | None) -> str | None:
    """Recover ``target``'s journal; ``fd`` is the file open for writing (and commit-locked),
    or None when the file is gone."""
    jpath = journal_path(target)
    try:
        jfd = open_regular(jpath)
    except NotARegularFile as exc:
        return _reject(jpath, target, f"it is {exc.what}, not a journal bigarr wrote")
    if jfd is None:
        return None
    try:
        jst = os.fstat(jfd)
        if fd is not None and jst.st_uid not in (os.geteuid(), os.fstat(fd).st_uid):
            return _reject(jpath, target, "it belongs to another user than the file or this "
                           "process")
        if os.pread(jfd, len(_OLD_MAGIC), 0) == _OLD_MAGIC:
            return _reject(jpath, target, "it was written by bigarr 0.1, which recorded no "
                           "file identity, so it cannot be told to be this file's")
        journal = _journal_records(jfd, jst.st_size)
        if journal is None:
            outcome = "dropped"  # torn: nothing was written to any file from it
        elif fd is None:
            raise FileMissingError(
                f"{target} is gone, but its commit journal {jpath} holds a complete "
                "interrupted commit. Restore the file, then run recover_commit() again; "
                "delete the journal to abandon the commit."
            )
        else:
            why = _why_not(journal, fd, target)
            if why is not None:
                return _reject(jpath, target, why)
            paced = Paced(fd)
            for offset, nbytes, body in journal.records:
                for a in range(0, nbytes, _CHUNK):
                    chunk = os.pread(jfd, min(_CHUNK, nbytes - a), body + a)
                    paced.write(np.frombuffer(chunk, np.uint8), offset + a)
            datasync(fd)
            outcome = "replayed"
    finally:
        os.close(jfd)
    _drop_journal(jpath)
    return outcome


def recover_commit(path: str | os.PathLike[str]) -> str | None:
    """Finish or roll back a journaled commit of ``path`` that a crash interrupted.

    Run it after a crash, before trusting the file (a later ``commit`` of the file runs it too).
    A journal is replayed only into the file it was written for: the same file (device, inode,
    birth time and generation, so not a file re-created under the name), of the same size and
    header bytes, with every record inside the array's data. Any other journal is reported with
    a :class:`~bigarr.errors.StaleJournalWarning`, removed, and nothing is written. Recovery
    holds the file's commit lock, so it never runs beside another process's commit.

    Returns
    -------
    str or None
        ``"replayed"`` (the journal was complete: the whole commit is now in the file),
        ``"dropped"`` (the crash hit while the journal was being written: the file was never
        touched and still holds none of the commit), ``"rejected"`` (the journal does not
        belong to this file, or is not one bigarr wrote: it was removed unused) or ``None``
        (no journal).

    Raises
    ------
    FileMissingError
        If a complete journal remains but the file is gone (the journal is kept).
    ReadOnlyError
        If a journal remains but the file cannot be opened for writing.
    NotAFileError
        If ``path`` is a directory.
    """
    target = os.path.abspath(os.fspath(path))
    jpath = journal_path(target)
    if not os.path.lexists(jpath) and not leftovers(jpath):
        return None
    try:
        fd = os.open(target, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return _recover(target, None)
    except IsADirectoryError:
        raise NotAFileError(
            f"{target} is a directory; a commit journal {jpath} is next to it. Delete the "
            "journal if it is not yours."
        ) from None
    except PermissionError:
        raise ReadOnlyError(
            f"{target} is not writable, so the interrupted commit in its journal "
            f"{jpath} cannot be finished. Make the file writable and run "
            "recover_commit() again."
        ) from None
    try:
        with commit_lock(fd):
            # a journal a kill left under its hidden name, never installed: the file was
            # never touched by that commit (it starts only once the journal is named)
            remove_leftovers(jpath)
            return _recover(target, fd)
    finally:
        os.close(fd)


def _drop_if_clean(m: Mapping, page_start: int) -> None:
    """Drop the scratch copy of one page if all its mapped bytes now equal the file."""
    page = ByteSpan(page_start, min(page_start + PAGE_SIZE, m.length))
    if page.nbytes and bool(
        np.array_equal(m.root[page.start : page.stop],
                       _pread(m.fd, m.map_offset + page.start, page.nbytes))
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
                m.root[lo:hi] = _pread(m.fd, m.map_offset + lo, hi - lo)
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
        commit in the file (about twice the bytes written). See :func:`_journaled_write`.

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
        runs = _scratch_runs(m, span)
        if not runs and not os.path.lexists(journal_path(m.path)):
            return 0
        fd = _writable_fd(m)
        try:
            with commit_lock(fd):  # other processes' commits and recoveries of this file
                _recover(m.path, fd)  # never stack a commit on an interrupted one
                if not runs:
                    return 0
                if journal:
                    written = _journaled_write(fd, m, runs)
                else:
                    written = _pwrite(fd, m, runs)
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
        runs = _scratch_runs(m, span)
        if runs:
            _settle(m, span, runs, restore=True)
            _recount(m)
    return sum(len(ByteSpan(a, b).pages(PAGE_SIZE)) for a, b in runs) * PAGE_SIZE
