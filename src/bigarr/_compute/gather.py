"""Reads by index out of core: :func:`take` (rows by index) and :func:`searchsorted`.

take
    The engine cuts the *indices* into chunks. Each chunk's indices are sorted, the rows read
    in that order (so the reads of a mapped source go forward through the file, page by page,
    in sub-batches whose pages are released as soon as they are copied: a chunk never holds
    more than a sub-batch of the source's pages), then scattered back into the order asked for
    and written to the output in chunk order. A zarr or dask source is read the same way, by
    row ranges that each lie in one of its blocks along axis 0 and span at most a sub-batch:
    only the blocks holding asked-for rows are read, never the whole array.
searchsorted
    Few queries: a vectorised binary search that reads one value per query per step, about
    ``log2(n)`` pages per query. Many queries (when that would touch more pages than a scan):
    the queries are sorted and one pass of the engine over the sorted source counts, per chunk,
    the values before each query (only the queries falling inside a chunk's range need a
    search there; the others add 0 or the whole chunk).

Both compare in numpy's sort order, in the dtype numpy would compare in (NaN last, ``-0.0``
equal to ``0.0``), through the ranking keys of :mod:`bigarr._compute.order`.
"""

from __future__ import annotations

import math
import os
from typing import Any, Literal

import numpy as np

from bigarr._compute.engine import execute
from bigarr._compute.operands import Stream, parse_operand
from bigarr._compute.order import Array, _rank_keys
from bigarr._compute.orderkeys import check_dtype
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import parse_threads, plan_run
from bigarr._core.array import memmap
from bigarr._core.files import open as open_npy
from bigarr._core.files import written_in_order
from bigarr._os.fileid import remove_leftovers
from bigarr._os.geometry import PAGE_SIZE
from bigarr._os.lock import OutputLock
from bigarr._os.paths import check_output
from bigarr._plan.budget import DEFAULT_BUDGET, parse_budget
from bigarr.errors import ArgumentValueError, BudgetError, DtypeError, RegionError, ShapeError

__all__ = ["searchsorted", "take"]

#: Pages one read of a mapped page can map besides it (the kernel's fault-around, 64 KiB by
#: default): what a sub-batch of scattered rows is charged per row.
_FAULT_AROUND = 64 << 10


# ---- take ----------------------------------------------------------------------------------
def take(src: Any, indices: Any, out: str | os.PathLike[str] | None = None, *,
         budget: int | str | None = DEFAULT_BUDGET, threads: int | None = None,
         progress: ProgressArg = None, overwrite: bool = False) -> Array | memmap:
    """Rows of ``src`` by index, like ``np.take(src, indices, axis=0)``, out of core.

    Reads are ordered by page: each chunk of ``indices`` is sorted, its rows gathered in file
    order, and scattered back into the order asked for (module docstring). Applies an
    :func:`bigarr.argsort` to its source, for example.

    Parameters
    ----------
    src
        A :class:`bigarr.memmap`, numpy array, ``.npy`` path, zarr or dask array (of any
        dtype); of zarr and dask, only the blocks holding asked-for rows are read.
    indices
        A 1-d integer array, memmap or ``.npy`` path; negative indices count from the end, as
        numpy's.
    out
        Path of the ``.npy`` to write (shape ``(len(indices),) + src.shape[1:]``), or ``None``
        to return the rows in memory (they then count against the budget).
    budget, threads, progress
        As :func:`bigarr.sum`.
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    numpy.ndarray or bigarr.memmap
        The rows in memory (``out=None``), or the ``out`` file opened read-only.

    Raises
    ------
    RegionError
        If an index is out of range (an IndexError); nothing is left at ``out``.
    DtypeError
        If ``indices`` are not integers.
    ShapeError
        If ``indices`` are not 1-d, or ``src`` is 0-d.
    BudgetError
        If ``out`` is None and half the budget cannot hold the rows, or the budget cannot hold
        the plan (both numbers quoted).
    """
    source = parse_operand(src, by_key=False)
    index = parse_operand(indices, by_key=False)
    target = None if out is None else os.path.abspath(os.fspath(out))
    try:
        if index.ndim != 1:
            raise ShapeError(f"Expected 1-d indices. Got shape {tuple(index.shape)}.")
        if np.dtype(index.dtype).kind not in "iu":
            raise DtypeError(f"Expected integer indices. Got dtype {index.dtype}.")
        if source.ndim == 0:
            raise ShapeError("take needs a source of at least one dimension. Got a 0-d array.")
        source_array = source.array  # None for zarr and dask: read by row ranges (_read_rows)
        n = int(source.shape[0])
        m = int(index.shape[0])
        row_shape = tuple(source.shape[1:])
        dtype = np.dtype(source.dtype)
        row_bytes = max(int(math.prod(row_shape)) * dtype.itemsize, 1)
        budget_bytes = parse_budget(budget)
        held = 0
        if target is None:
            held = m * row_bytes
            if held > budget_bytes // 2:
                raise BudgetError(
                    f"take's {m} rows take {held} bytes, more than half the budget "
                    f"({budget_bytes} bytes) allows in memory. Pass out= (a .npy path) to "
                    "write them to a file, or raise budget=.")
        nthreads = parse_threads(threads)
        isz = np.dtype(index.dtype).itemsize
        # per index: int64 copy, order, sorted copy; the gathered rows, the rows in output
        # order and those waiting to be written
        temporaries = (24 + 3 * row_bytes) / isz
        # a sub-batch of scattered rows maps its rows' pages and what fault-around maps; of a
        # zarr or dask source, a read holds the rows it spans and, while it runs, the one
        # block (chunk-row-block) it falls in, decoded or computed whole
        per_row_pages = row_bytes + PAGE_SIZE + _FAULT_AROUND if source_array is not None \
            else row_bytes
        scratch = max(per_row_pages * 8, (budget_bytes - held) // 8 // max(nthreads, 1))
        sub = max(scratch // per_row_pages, 1)
        grid = np.asarray(source.grid if source.grid is not None else (0, n), np.int64)
        block_bytes = 0 if source_array is not None \
            else int(np.diff(grid).max(initial=0)) * row_bytes
        plan = plan_run("take", [index], budget=budget_bytes - held, threads=nthreads,
                        layout="rows", temporaries=temporaries,
                        scratch_bytes=scratch + block_bytes)

        def gather(block: Array) -> Array:
            idx = block.astype(np.int64)
            if idx.size and (int(idx.min()) < -n or int(idx.max()) >= n):
                bad = idx[(idx < -n) | (idx >= n)][0]
                raise RegionError(f"Index {int(bad)} is out of bounds for axis 0 with size {n}.")
            idx[idx < 0] += n
            order = np.argsort(idx, kind="stable")
            ordered = idx[order]
            del idx
            rows = np.empty((ordered.size, *row_shape), dtype=dtype)
            if source_array is None:
                _read_rows(source, grid, ordered, rows, sub)
            else:
                for s in range(0, ordered.size, sub):
                    part = ordered[s:s + sub]
                    rows[s:s + part.size] = source_array[part]
                    if source.mapping is not None:
                        source.release(source_array[int(part[0]):int(part[-1]) + 1])
            result = np.empty_like(rows)
            result[order] = rows
            return result

        if source.mapping is not None:
            source.read_pattern(True)  # scattered reads: no read-around
        try:
            if target is None:
                result = np.empty((m, *row_shape), dtype=dtype)
                pos = [0]

                def into(part: Array) -> None:
                    result[pos[0]:pos[0] + part.shape[0]] = part
                    pos[0] += part.shape[0]

                _run(plan, index, gather, into, progress)
                return result
            return _take_to_file(plan, index, gather, target, overwrite, (m, *row_shape),
                                 dtype, progress)
        finally:
            if source.mapping is not None and not source.mapping.closed:
                source.read_pattern(False)
    finally:
        index.close()
        source.close()


def _read_rows(source: Stream, grid: Array, ordered: Array, rows: Array, sub: int) -> None:
    """Rows ``ordered`` (sorted) of a zarr or dask source into ``rows``: one read per run of
    indices that lies in one block of the source's grid and spans at most ``sub`` rows, so
    only the blocks holding asked-for rows are read, and a read never holds more than ``sub``
    rows besides the block being decoded."""
    assert source.read is not None
    block = np.searchsorted(grid, ordered, side="right") - 1
    s = 0
    while s < ordered.size:
        lo = int(ordered[s])
        # this read's indices: in lo's block, and below lo + sub
        stop = min(int(grid[block[s] + 1]), lo + sub)
        e = int(np.searchsorted(ordered, stop, side="left"))
        part = source.read((slice(lo, int(ordered[e - 1]) + 1),))
        rows[s:e] = part[ordered[s:e] - lo]
        del part
        s = e


def _run(plan: Any, index: Stream, gather: Any, sink: Any, progress: ProgressArg) -> None:
    if not index.shape[0]:
        return
    with Progress(progress, total_bytes=plan.chunks.nbytes, total_chunks=len(plan.chunks),
                  desc="take") as bar:
        for _chunk, part in execute(plan, lambda c, b: gather(b[0]), [index], progress=bar):
            sink(part)


def _take_to_file(plan: Any, index: Stream, gather: Any, target: str, overwrite: bool,
                  shape: tuple[int, ...], dtype: np.dtype[Any],
                  progress: ProgressArg) -> memmap:
    check_output(target, overwrite)  # refuse before taking the lock
    with OutputLock(target):
        remove_leftovers(target, ("take",))  # outputs of killed takes (we hold the lock)
        with written_in_order(target, shape, dtype, overwrite=overwrite, kind="take") as sink:
            _run(plan, index, gather, sink, progress)
    return open_npy(target)


# ---- searchsorted --------------------------------------------------------------------------
def searchsorted(sorted_src: Any, v: Any, side: str = "left", *,
                 budget: int | str | None = DEFAULT_BUDGET, threads: int | None = None,
                 progress: ProgressArg = None) -> np.intp | Array:
    """Insertion points of ``v`` into a sorted 1-d file, like :func:`numpy.searchsorted`.

    Few queries take a binary search reading about ``log2(n)`` pages each; many queries one
    pass over the file (module docstring). ``sorted_src`` must be sorted in numpy's order
    (as :func:`bigarr.sort` writes it); like numpy, an unsorted source gives meaningless
    answers rather than an error.

    Parameters
    ----------
    sorted_src
        A sorted 1-d :class:`bigarr.memmap`, numpy array or ``.npy`` path; bool, integer or
        floating.
    v
        The values to insert (a scalar or an array; held in memory).
    side
        ``"left"`` (the first suitable index) or ``"right"`` (the last), as numpy's.
    budget, threads, progress
        As :func:`bigarr.sum` (used by the pass for many queries).

    Returns
    -------
    numpy.intp or numpy.ndarray
        Indices of the shape of ``v``, as numpy's.

    Raises
    ------
    ArgumentValueError
        For a ``side`` other than ``"left"`` or ``"right"`` (a ``ValueError``, as numpy's).
    ShapeError
        If ``sorted_src`` is not 1-d.
    DtypeError
        For dtypes other than bool, integer and floating.
    """
    if side not in ("left", "right"):  # numpy's ValueError
        raise ArgumentValueError(f"Expected side='left' or 'right'. Got side={side!r}.")
    stream = parse_operand(sorted_src, by_key=False)
    try:
        if stream.ndim != 1:
            raise ShapeError(f"Expected a sorted 1-d source. Got shape {tuple(stream.shape)}.")
        dtype = np.dtype(stream.dtype)
        check_dtype(dtype, "searchsorted")
        values = np.asarray(v)
        check_dtype(values.dtype, "searchsorted")
        common = np.result_type(dtype, values.dtype)
        qkeys = _rank_keys(values.astype(common).reshape(-1), False)
        n = int(stream.shape[0])
        m = qkeys.size
        steps = max(math.ceil(math.log2(n + 1)), 1)
        pages = max(n * dtype.itemsize // PAGE_SIZE, 1)
        if m * steps <= pages and stream.array is not None:
            found = _bisect(stream, qkeys, common, side)
        else:
            found = _scan(stream, qkeys, common, side, budget=budget,
                          threads=parse_threads(threads), progress=progress)
        result = found.reshape(values.shape)
        return np.intp(result[()]) if result.ndim == 0 else result
    finally:
        stream.close()


def _bisect(stream: Stream, qkeys: Array, common: np.dtype[Any], side: str) -> Array:
    """A binary search for every query at once, one value read per query per step."""
    arr = stream.whole() if stream.array is not None else np.asarray(stream.whole())
    n = int(stream.shape[0])
    lo = np.zeros(qkeys.size, dtype=np.intp)
    hi = np.full(qkeys.size, n, dtype=np.intp)
    try:
        while True:
            active = np.flatnonzero(lo < hi)
            if not active.size:
                return lo
            mid = (lo[active] + hi[active]) // 2
            keys = _rank_keys(np.asarray(arr[mid]).astype(common), False)
            q = qkeys[active]
            right = keys < q if side == "left" else keys <= q
            lo[active[right]] = mid[right] + 1
            hi[active[~right]] = mid[~right]
    finally:
        if stream.mapping is not None and stream.array is not None and n:
            stream.release(stream.array)


def _scan(stream: Stream, qkeys: Array, common: np.dtype[Any], side: str, *,
          budget: int | str | None, threads: int, progress: ProgressArg) -> Array:
    """One pass: per chunk, the values before each (sorted) query, summed."""
    order = np.argsort(qkeys, kind="stable")
    sq = qkeys[order]
    m = sq.size
    diff = np.zeros(m + 1, dtype=np.int64)  # whole chunks before query j and after
    counts = np.zeros(m, dtype=np.int64)
    inner: Literal["left", "right"] = "left" if side == "left" else "right"
    outer_lo: Literal["left", "right"] = "right" if side == "left" else "left"

    def work(block: Array) -> tuple[int, int, Array, int]:
        keys = _rank_keys(block.astype(common), False)
        if not keys.size:
            return 0, 0, np.zeros(0, np.int64), 0
        a = int(np.searchsorted(sq, keys[0], side=outer_lo))  # [0, a): none before them
        b = int(np.searchsorted(sq, keys[-1], side=outer_lo))  # [b, m): all of the chunk
        local = np.searchsorted(keys, sq[a:b], side=inner)
        return a, b, local, int(keys.size)

    def fold(part: tuple[int, int, Array, int]) -> None:
        a, b, local, size = part
        counts[a:b] += local
        diff[b] += size

    isz = np.dtype(stream.dtype).itemsize
    plan = plan_run("searchsorted", [stream], budget=budget, threads=threads, layout="rows",
                    temporaries=(2 * common.itemsize + 8) / isz,
                    fixed_bytes=m * (8 * 6) + m * qkeys.itemsize * (threads + 3))
    with Progress(progress, total_bytes=plan.chunks.nbytes, total_chunks=len(plan.chunks),
                  desc="searchsorted") as bar:
        for _chunk, part in execute(plan, lambda c, b: work(b[0]), [stream], progress=bar):
            fold(part)
    counts += np.cumsum(diff[:m])
    found = np.empty(m, dtype=np.intp)
    found[order] = counts
    return found
