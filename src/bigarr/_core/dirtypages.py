"""Finding the scratch pages of a private mapping, and the elements on them that differ.

A private (``MAP_PRIVATE``, copy-on-write) mapping shows the file until a page is written; the
kernel then gives this process its own copy of that page (a *scratch page*). This module finds
those pages (the *backend*) and the elements on them that differ from the file, as a
:class:`DirtyRegions`; :mod:`bigarr._core.private` builds ``dirty``, ``commit`` and ``discard``
on it, and :mod:`bigarr._core.tracking` reports written pages with the same value.

``"pagemap"`` (Linux)
    ``/proc/self/pagemap`` has one 8-byte entry per page. In a private file mapping a page that
    was written is present *without* the file-page bit (61), or swapped out (bit 62); a page only
    read has bit 61; an untouched page reads 0. Scanning 1 GiB of entries takes about 1.5 ms.
``"compare"`` (everywhere else, or ``BIGARR_DIRTY_BACKEND=compare``)
    Compare every page of the range with the file (``pread``). Exact for values, but it reads the
    whole range from the file *and* from the mapping (which faults it in), so it costs time and
    resident memory proportional to the range, and a page written back to its original value is
    not a scratch page for it. ``scratch_bytes`` then counts pages that differ (a lower bound).

What "modified" means: elements whose bytes differ from the file *now*. Scratch pages are found
first (cheap), then only those pages are compared with the file, so a value written back
unchanged is not reported, and the cost is proportional to the edits.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._os.geometry import PAGE_SIZE, ByteSpan
from bigarr._plan.regions import extent
from bigarr.errors import FileChangedError, ModeError, RegionError, UnsupportedError

if TYPE_CHECKING:
    from bigarr._os.mapping import Mapping

__all__ = [
    "BACKEND",
    "DirtyRegions",
    "Int64Runs",
    "Runs",
    "dirty_backend",
    "file_bytes",
    "page_table",
    "regions_from",
    "scratch_runs",
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


# ---- backend ---------------------------------------------------------------------------
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


def file_bytes(fd: int, offset: int, nbytes: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """``nbytes`` bytes of the file at ``offset`` (``preadv``), refusing a file that shrank."""
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


def page_table(m: Mapping, span: ByteSpan) -> tuple[int, np.ndarray[Any, np.dtype[np.bool_]]]:
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
        diff = m.root[lo:hi] != file_bytes(m.fd, m.map_offset + lo, hi - lo)
        pad = -(hi - lo) % PAGE_SIZE
        if pad:
            diff = np.concatenate((diff, np.zeros(pad, dtype=bool)))
        mask[first : first + len(diff) // PAGE_SIZE] = diff.reshape(-1, PAGE_SIZE).any(axis=1)
    return pages.start, mask


Runs = list[tuple[int, int]]
"""Sorted, disjoint ``(start, stop)`` byte runs in mapping coordinates (plain tuples: a commit
of scattered edits handles tens of thousands of them)."""


def scratch_runs(m: Mapping, span: ByteSpan) -> Runs:
    """Scratch page runs touching ``span``, in mapping coordinates, clipped to ``span``."""
    first, mask = page_table(m, span)
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
        diff = (m.root[a:b] != file_bytes(m.fd, m.map_offset + a, b - a)).reshape(-1, item)
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
