"""Matrix products out of core: :func:`matmul` of a file by a matrix, by a file, and ``a.T @ b``.

Three cases, told apart by the operands' shapes and memory order only:

``a @ b``, b fits a quarter of the budget
    one pass over a's rows, each chunk's ``block @ b`` written to ``out`` (map_blocks);
``a @ b``, b larger (both files larger than the budget)
    a tiled product; :func:`plan_tiles` picks the schedule that reads fewer bytes: panels of
    b's columns (each the most that fits an eighth of the budget, read once as a strided view
    of b streamed by the engine; one pass over a's rows per panel writes the matching columns
    of ``out``), or panels of a's rows (a read once; one pass over b's rows per panel sums the
    panel's rows of the product, written once as whole rows: the schedule for an ``out`` with
    rows much wider than a's). ``out`` is written once either way;
``a.T @ b``, a and b two tall files (N x p and N x k)
    one pass over both, each chunk's ``a_block.T @ b_block`` added (:func:`crossprod`); the
    p x k result in memory (or written to ``out``). ``a.T`` is numpy's: pass the transposed
    view of a mapped array (``bigarr.open(path).T``, ``np.load(path, mmap_mode="r").T``, or of
    an in-memory array): a 2-d operand in Fortran order whose transpose is C-ordered.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigarr._compute.engine import Writeback, execute
from bigarr._compute.linalg import (
    Array,
    _cols,
    _run,
    _streams,
    _sub_rows,
    blas_limit,
)
from bigarr._compute.mapblocks import map_blocks
from bigarr._compute.operands import Stream, parse_operand
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import parse_threads, plan_run
from bigarr._core.array import memmap
from bigarr._core.files import NewOutput, file_path
from bigarr._core.files import open as open_npy
from bigarr._os.durable import flush_window
from bigarr._os.geometry import format_bytes
from bigarr._plan.budget import DEFAULT_BUDGET, parse_budget
from bigarr._plan.chunks import Chunk
from bigarr.errors import BudgetError, ShapeError

__all__ = ["TilePlan", "check_bytes", "crossprod", "matmul", "plan_tiles"]

_DEFAULT_BUDGET = DEFAULT_BUDGET
#: A panel's output rows are at most this many times as wide as a's rows: each pass is planned
#: by a's chunks, and the output's share of the budget grows with that ratio.
WIDEST = 8


def check_bytes(what: str, need: int, budget: int | str) -> int:
    """``need`` bytes held in memory whatever the chunk size, refused above the budget.

    Raises
    ------
    BudgetError
        With both numbers.
    """
    total = parse_budget(budget)
    if need > total:
        raise BudgetError(
            f"{what} keeps {format_bytes(need)} in memory whatever the chunk size, more than "
            f"the budget of {format_bytes(total)}. Raise the budget, use fewer threads, or "
            "fewer columns (a smaller k).")
    return need


def _product_rows(budget: int | str, threads: int, width: int) -> int:
    """Rows per sub-block of a product: the sub-block sizes of
    :func:`bigarr._compute.linalg._sub_rows`, without its floor of ``width`` rows (a QR's)."""
    return max(1, _sub_rows(budget, threads, 1, 1) // max(1, width))


def crossprod(a: Stream, b: Stream, *, mean: Array | None, budget: int | str, threads: int,
              progress: ProgressArg, what: str) -> Array:
    """``(a - mean).T @ b`` in float64 in one pass over two streams sharing their rows.

    Each chunk's product is computed sub-block by sub-block (a float64 copy of a few MiB of
    each operand per thread) and the p x k partial products are added in chunk order.
    """
    p, k = _cols(a), _cols(b)
    if int(a.shape[0]) == 0:
        return np.zeros((p, k))
    fixed = check_bytes(what, (threads + 3) * p * k * 8, budget)
    rows = _product_rows(budget, threads, p + k)

    def kernel(blocks: list[Array]) -> Array:
        xa = blocks[0].reshape(len(blocks[0]), -1)
        xb = blocks[1].reshape(len(blocks[1]), -1)
        out = np.zeros((p, k))
        for lo in range(0, len(xa), rows):
            sa = np.asarray(xa[lo:lo + rows], dtype=np.float64)
            if mean is not None:
                sa = sa - mean
            out += sa.T @ np.asarray(xb[lo:lo + rows], dtype=np.float64)
        return out

    total: Array = _run(what, [a, b], kernel, np.add, budget=budget, threads=threads,
                        progress=progress, scratch=2 * rows * (p + k) * 8, fixed=fixed)
    return total


@dataclass(frozen=True, slots=True)
class TilePlan:
    """The schedule of a tiled ``a @ b`` (a: N x K, b: K x M), and the bytes it reads."""

    schedule: str
    """``"b-columns"``: panels of b's columns in memory, one pass over a's rows per panel;
    ``"a-rows"``: panels of a's rows in memory, one pass over b's rows per panel."""
    panel: int
    """Columns of b, or rows of a, per panel."""
    passes: int
    """Passes over the streamed operand (a for b-columns, b for a-rows), one per panel."""
    read_bytes: int
    """Bytes read in all: the streamed operand once per pass, the other once."""
    write_bytes: int
    """Bytes of ``out``, written once."""


def plan_tiles(a_shape: tuple[int, int], b_shape: tuple[int, int], a_itemsize: int,
               b_itemsize: int, out_itemsize: int, budget: int | str,
               threads: int | None = None) -> TilePlan:
    """The tile schedule of ``a @ b`` that reads the fewest bytes within the budget.

    ``"b-columns"``: the widest panel of b's columns that fits an eighth of the budget (the
    rest streams a's rows and writes out's columns); with more than one panel, allowed only
    while out's rows are at most :data:`WIDEST` times as wide as a's (each pass is planned by
    a's chunks, and writes to a column panel of out touch whole rows of its pages). Reads a
    ``ceil(M / panel)`` times and b once (one panel: b loaded, one pass, whole rows written).

    ``"a-rows"``: the most rows of a whose panel (twice: read, then transposed) and the
    product's partial sums (one per chunk in flight, ``threads + 4``) fit half the budget;
    each panel's rows of out are the sum over b's chunks of rows of ``a_panel[:, rows] @
    b[rows]`` (:func:`crossprod` of the transposed panel and b), written once as whole rows.
    Reads b ``ceil(N / panel)`` times and a once.

    Parameters
    ----------
    a_shape, b_shape
        ``(N, K)`` and ``(K, M)``.
    a_itemsize, b_itemsize, out_itemsize
        Bytes per element of a, b and the result.
    budget
        The most memory the product may add, bytes or a string such as ``"256MiB"``.
    threads
        Worker threads, as :func:`matmul`'s (default: the CPUs available).

    Returns
    -------
    TilePlan

    Raises
    ------
    BudgetError
        If neither schedule fits a panel of one column or one row.
    """
    threads = parse_threads(threads)
    (n, k), (_, m) = a_shape, b_shape
    total = parse_budget(budget)
    a_bytes, b_bytes = n * k * a_itemsize, k * m * b_itemsize
    options: list[TilePlan] = []
    cols = min(m, (total // 8) // max(1, k * max(b_itemsize, out_itemsize)))
    if cols >= m or (cols >= 1 and m * out_itemsize <= WIDEST * k * a_itemsize):
        passes = math.ceil(m / cols)
        options.append(TilePlan("b-columns", cols, passes, passes * a_bytes + b_bytes,
                                n * m * out_itemsize))
    rows = min(n, (total // 2) // (8 * (2 * k + (max(1, threads) + 4) * m)))
    if rows >= 1:
        passes = math.ceil(n / rows)
        options.append(TilePlan("a-rows", rows, passes, a_bytes + passes * b_bytes,
                                n * m * out_itemsize))
    if not options:
        raise BudgetError(
            f"matmul: neither one column of b ({k} values) nor one row of a with its "
            f"{m} partial sums per thread fits the budget of {format_bytes(total)}. Raise the "
            "budget or use fewer threads.")
    return min(options, key=lambda t: (t.read_bytes, t.schedule != "b-columns"))


def _transposed(obj: Any) -> Any:
    """``obj.T`` when ``obj`` is a 2-d Fortran-ordered view whose transpose is C-ordered
    (``x.T`` of a tall C array), else ``None``."""
    if (isinstance(obj, np.ndarray) and obj.ndim == 2 and obj.flags.f_contiguous
            and not obj.flags.c_contiguous):
        return obj.T
    return None


def _large(obj: Any, total: int) -> bool:
    """Whether ``b`` is to be streamed rather than loaded: a file, or more than a quarter of
    the budget."""
    if isinstance(obj, (str, os.PathLike, np.memmap)):
        return True
    return bool(getattr(obj, "nbytes", 0) > total // 4) and not isinstance(obj, (list, tuple))


def matmul(
    a: Any,
    b: Any,
    out: str | os.PathLike[str] | Array | None = None,
    *,
    dtype: Any = None,
    overwrite: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> Any:
    """``a @ b`` out of core: a file times a matrix or a file, or ``a.T @ b`` in one pass.

    The cases (module docstring): a tall ``a`` times a small ``b`` in one pass; ``a @ b``
    with ``b`` a file or larger than a quarter of the budget as a tiled product, panels of
    b's columns (a re-read per panel) or of a's rows (b re-read per panel), whichever reads
    fewer bytes (:func:`bigarr.linalg.plan_tiles` gives the schedule, passes and bytes);
    ``a.T @ b`` for two tall operands sharing their N rows, in one pass, when ``a`` is the
    transposed view of a C-ordered array (numpy's ``x.T``). Products are computed in the
    result dtype, except ``a.T @ b``, accumulated in float64 (for float32 about 1e-6 relative
    to the largest entry after rounding to float32).

    Parameters
    ----------
    a
        N x K (2-d): a file or any array the engine reads; or ``x.T`` of an N x p array.
    b
        K x M or a K-vector: in memory, a ``.npy`` path, or a mapped array.
    out
        A new file path, or an array of the result's shape written in place. ``None``: the
        result is returned in memory, and must fit in the budget.
    dtype
        Result dtype (default: ``numpy.result_type(a, b)``).
    overwrite
        Replace an existing file at ``out``.
    budget, threads, progress
        As :func:`bigarr.linalg.gram`; every pass keeps to the budget.

    Returns
    -------
    bigarr.memmap or numpy.ndarray
        The product (``out`` when given).

    Raises
    ------
    ShapeError
        If the inner dimensions differ or ``a`` is not 2-d.
    BudgetError
        If ``out=None`` and the result does not fit the budget, or a plan does not.
    """
    nthreads = parse_threads(threads)
    total = parse_budget(budget)
    at = _transposed(a)
    if at is not None and (_large(at, total) or _large(b, total)):
        return _crossprod_out(at, b, out, dtype, budget=total, threads=nthreads,
                              progress=progress, overwrite=overwrite)
    with _streams(a) as (s,):
        if s.ndim != 2:
            raise ShapeError(f"Expected a as a 2-d N x p matrix. Got shape {s.shape}.")
        n, p = int(s.shape[0]), _cols(s)
        src = np.dtype(s.dtype)
    bshape, bdtype = _shape_dtype(b)
    if len(bshape) not in (1, 2) or bshape[0] != p:
        raise ShapeError(
            f"matmul: a is {n} x {p}, so b must have {p} rows. Got b of shape {bshape}.")
    out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(np.result_type(src, bdtype))
    cols = 1 if len(bshape) == 1 else int(bshape[1])
    if p == 0:  # an empty sum: zeros, as numpy (no chunk of a has a byte to run on)
        return _zeros((n, cols) if len(bshape) == 2 else (n,), out_dtype, out, total,
                      overwrite=overwrite)
    if _large(b, total):
        tiles = plan_tiles((n, p), (p, cols), src.itemsize, bdtype.itemsize,
                           out_dtype.itemsize, total, nthreads)
        if len(bshape) == 2 and (tiles.passes > 1 or tiles.schedule == "a-rows"):
            return _tiled(a, b, out, out_dtype, tiles, (n, cols), budget=total,
                          threads=nthreads, progress=progress, overwrite=overwrite)
        w = _load(b, bshape, bdtype, budget=total, threads=nthreads, progress=progress)
    else:
        w = np.asarray(b)
    if w.nbytes > total:
        raise BudgetError(f"matmul: b takes {format_bytes(w.nbytes)}, more than the budget of "
                          f"{format_bytes(total)}.")
    result: Any = out
    rest = total - w.nbytes
    if out is None:
        result = _in_memory((n, cols) if w.ndim == 2 else (n,), out_dtype, rest)
        rest -= result.nbytes
    return _product_to(a, w, result, out_dtype, budget=rest, threads=nthreads,
                       progress=progress, overwrite=overwrite)


def _to_new_file(out: str | os.PathLike[str], shape: tuple[int, ...], dtype: np.dtype[Any],
                 overwrite: bool, write: Callable[[memmap], None]) -> memmap:
    """A new file at ``out`` written by ``write``, installed only once it is complete.

    As :func:`bigarr.map_blocks` writes a new output: the output's lock is held throughout,
    the file is created under a hidden name next to ``out`` and renamed over it at the end.
    So an ``out`` that is also an input (opened by path inside ``write``) is read intact, and
    a run that fails (a budget refused, an error) leaves an existing ``out`` as it was and no
    new file behind.
    """
    target = file_path(out)
    with NewOutput(target, overwrite=overwrite) as output:
        output.build("new")
        arr = output.create(shape, dtype)
        try:
            write(arr)
        finally:
            arr.close(force=True)  # flushes (msync) the written pages
        output.publish()
    return open_npy(target, "shared")


def _zeros(shape: tuple[int, ...], dtype: np.dtype[Any], out: Any, total: int, *,
           overwrite: bool) -> Any:
    """The product of an inner dimension of 0: zeros, in memory, in ``out`` or a new file."""
    if out is None:
        res = _in_memory(shape, dtype, total)
        res[...] = 0
        return res
    if isinstance(out, np.ndarray):
        if out.shape != shape:
            raise ShapeError(f"matmul: expected out of shape {shape}. Got {out.shape}.")
        out[...] = 0
        if isinstance(out, np.memmap):
            out.flush()
        return out
    return _to_new_file(out, shape, dtype, overwrite, lambda arr: None)  # created as zeros


def _shape_dtype(b: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    if isinstance(b, (str, os.PathLike)):
        with _streams(b) as (s,):
            return tuple(int(v) for v in s.shape), np.dtype(s.dtype)
    arr = b if hasattr(b, "shape") and hasattr(b, "dtype") else np.asarray(b)
    return tuple(int(v) for v in arr.shape), np.dtype(arr.dtype)


def _in_memory(shape: tuple[int, ...], dtype: np.dtype[Any], room: int) -> Array:
    need = math.prod(shape) * dtype.itemsize
    if need >= room:
        raise BudgetError(
            f"matmul: the result ({' x '.join(map(str, shape))} {dtype}, {format_bytes(need)}) "
            f"does not fit in memory within the budget ({format_bytes(room)} left): pass out= "
            "a path to stream it to a file, or raise the budget.")
    return np.empty(shape, dtype=dtype)


def _tiled(a: Any, b: Any, out: Any, dtype: np.dtype[Any], tiles: TilePlan,
           shape: tuple[int, int], *, budget: int, threads: int, progress: ProgressArg,
           overwrite: bool) -> Any:
    """``a @ b`` by the tile schedule (:func:`plan_tiles`), each panel read by the engine."""
    n, m = shape
    if out is None:
        result: Any = _in_memory((n, m), dtype, budget // 2)
        room = budget - result.nbytes
    elif isinstance(out, np.ndarray):
        result, room = out, budget
    else:
        def write(arr: memmap) -> None:
            _tiled(a, b, arr, dtype, tiles, shape, budget=budget, threads=threads,
                   progress=progress, overwrite=False)

        return _to_new_file(out, (n, m), dtype, overwrite, write)
    opened = [x for x in (a, b) if isinstance(x, (str, os.PathLike))]
    from bigarr._core.files import open as open_npy

    src = {id(x): open_npy(x) for x in opened}
    asrc, bsrc = src.get(id(a), a), src.get(id(b), b)
    try:
        for lo in range(0, m if tiles.schedule == "b-columns" else n, tiles.panel):
            if tiles.schedule == "b-columns":
                hi = min(m, lo + tiles.panel)
                panel = _load(bsrc[:, lo:hi], (int(bsrc.shape[0]), hi - lo), dtype,
                              budget=room, threads=threads, progress=progress)
                _product_to(asrc, panel, result[:, lo:hi], dtype, budget=room - panel.nbytes,
                            threads=threads, progress=progress, overwrite=False)
                del panel
            else:
                hi = min(n, lo + tiles.panel)
                rows = _load(asrc[lo:hi], (hi - lo, int(asrc.shape[1])), np.dtype(np.float64),
                             budget=room, threads=threads, progress=progress)
                panel_t = np.ascontiguousarray(rows.T)  # K x rows: shares b's rows
                del rows
                with _streams(panel_t, bsrc) as (sp, sb):
                    part = crossprod(sp, sb, mean=None, budget=room - panel_t.nbytes,
                                     threads=threads, progress=progress, what="matmul")
                del panel_t
                _copy_to(part.astype(dtype, copy=False), result[lo:hi], budget=room - part.nbytes,
                         threads=threads, progress=progress)
    finally:
        for x in src.values():
            x.close(force=True)  # our own views of a and b (the panels) are done with
    return result


def _copy_to(block: Array, dest: Any, *, budget: int, threads: int,
             progress: ProgressArg) -> None:
    """``dest[...] = block`` through the engine when ``dest`` is mapped (written back)."""
    if isinstance(dest, np.ndarray) and not isinstance(dest, np.memmap):
        dest[...] = block
    else:
        with blas_limit(threads):
            map_blocks(_copy, block, out=dest, dtype=block.dtype, budget=budget,
                       threads=threads, progress=progress)


def _product_to(a: Any, w: Array, out: Any, dtype: np.dtype[Any], *, budget: int,
                threads: int, progress: ProgressArg, overwrite: bool) -> Any:
    """``a @ w`` into ``out`` (a new file path, a mapped array or view, or an in-memory array
    already counted by the caller), in one run over a's rows and out's.

    Each chunk's sub-blocks are multiplied straight into out's rows (``np.matmul(..., out=)``),
    so nothing chunk-sized is allocated, however much wider out's rows are than a's; the chunks
    are cut by the wider of the two rows, and a mapped out's pages are flushed and dropped by
    the engine's writeback like any run's output.
    """
    w = np.ascontiguousarray(w, dtype=dtype)
    width = (1 if w.ndim == 1 else int(w.shape[1]))
    if isinstance(out, (str, os.PathLike)):
        with _streams(a) as (s,):
            n = int(s.shape[0])
            width += _cols(s)
            rows = _product_rows(budget, threads, width)
            # refused before out is touched: the plan without out's stream already too large
            plan_run("matmul", [s], budget=budget, threads=threads, layout="rows",
                     scratch_bytes=rows * width * dtype.itemsize,
                     flush_every=flush_window(budget))

        def write(arr: memmap) -> None:
            _product_to(a, w, arr, dtype, budget=budget, threads=threads, progress=progress,
                        overwrite=False)

        return _to_new_file(out, (n, int(w.shape[1])) if w.ndim == 2 else (n,), dtype,
                            overwrite, write)
    mapped = isinstance(out, np.memmap)
    with _streams(a) as (s,):
        so = parse_operand(out, output=True, by_key=False) if mapped else None
        try:
            outs = [] if so is None else [so]
            width += _cols(s)
            rows = _product_rows(budget, threads, width)
            plan = plan_run("matmul", [s, *outs], budget=budget, threads=threads,
                            layout="rows", scratch_bytes=rows * width * dtype.itemsize,
                            flush_every=flush_window(budget) if mapped else 0)
            writeback = Writeback(plan.flush_every) if so is not None else None

            def work(chunk: Chunk, blocks: list[Array]) -> None:
                # sub-blocks multiplied straight into out's rows: no chunk-sized temporaries
                b = blocks[0].reshape(len(blocks[0]), -1)
                dest = blocks[1] if so is not None else out[chunk.rows.start:chunk.rows.stop]
                for lo in range(0, len(b), rows):
                    hi = min(len(b), lo + rows)
                    np.matmul(np.asarray(b[lo:hi], dtype=dtype), w, out=dest[lo:hi])
                if writeback is not None and so is not None:
                    writeback.mapped(chunk.index, so, dest)

            chunks = plan.chunks
            with blas_limit(threads), Progress(progress, total_bytes=chunks.nbytes,
                                               total_chunks=len(chunks), desc="matmul") as bar:
                for _ in execute(plan, work, [s, *outs], progress=bar, writeback=writeback):
                    pass
            if writeback is not None:
                writeback.drain()
        finally:
            if so is not None:
                so.close()
    if mapped and not isinstance(out, memmap):
        out.flush()  # a numpy.memmap written in place: its own mapping
    return out


def _copy(block: Array) -> Array:
    return block


def _load(b: Any, shape: tuple[int, ...], dtype: np.dtype[Any], *, budget: int, threads: int,
          progress: ProgressArg) -> Array:
    """A file (or mapped array) that fits a quarter of the budget, read into memory by the
    engine (its pages released behind)."""
    w = np.empty(shape, dtype=dtype)
    with blas_limit(threads):  # no BLAS in a copy; every run keeps the same rule all the same
        map_blocks(_copy, b, out=w, dtype=dtype, budget=budget - w.nbytes, threads=threads,
                   progress=progress)
    return w


def _crossprod_out(at: Any, b: Any, out: Any, dtype: Any, *, budget: int, threads: int,
                   progress: ProgressArg, overwrite: bool) -> Any:
    """``at.T @ b`` for ``at`` N x p and ``b`` N x k (or an N-vector), in one pass."""
    with _streams(at, b) as (sa, sb):
        if sa.ndim != 2:
            raise ShapeError(f"Expected a.T of an N x p matrix. Got a of shape {sa.shape[::-1]}.")
        src = np.result_type(sa.dtype, sb.dtype)
        out_dtype = np.dtype(dtype) if dtype is not None else np.dtype(src)
        res = crossprod(sa, sb, mean=None, budget=budget, threads=threads, progress=progress,
                        what="matmul(a.T, b)")
        vector = sb.ndim == 1
    result = res[:, 0] if vector else res
    if out is None:
        return result.astype(out_dtype, copy=False)
    if isinstance(out, np.ndarray):
        out[...] = result
        return out
    def write(arr: memmap) -> None:
        arr[...] = result

    return _to_new_file(out, tuple(result.shape), out_dtype, overwrite, write)
