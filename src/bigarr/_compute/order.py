"""Exact order statistics out of core: quantiles and medians, top-k, unique values.

Quantiles without sorting the array
-----------------------------------
Every value of a bool, integer or floating dtype maps to an unsigned integer *key* of the same
width whose order is numpy's sort order (:func:`_keys`): integers by flipping the sign bit,
floats by flipping the sign bit of positives and every bit of negatives. ``-0.0`` keys just
below ``0.0`` (they compare equal, so either is numpy's answer); NaNs are counted apart and
never keyed. Keys make every histogram bucket exact:

1. pass 1 streams the data once and counts NaNs and keys by their top bits, per column;
2. for each order statistic numpy would read (ranks ``k`` and ``k + 1`` of each ``q``) the
   cumulative counts give the bucket holding it and its rank inside the bucket;
3. if the buckets hold few enough values for the budget, pass 2 gathers the keys in those
   buckets and :func:`numpy.partition` selects each statistic exactly; otherwise a pass
   histograms the next bits inside those buckets only, and so on (a bucket one key wide needs
   no gathering at all).

Random data takes two passes; data piled into one bucket (all equal, few distinct values)
takes a pass per 16 bits of key at most. With the order statistics known, the final answer is
computed by numpy itself on the two neighbours of each ``q`` (with the ``q`` that gives numpy's
own interpolation weight), so dtypes, rounding and the NaN rules are numpy's exactly.

The external sort is in :mod:`bigarr._compute.sort` (it uses the dtype check, the ranking
keys of top-k and :data:`LAST_PASSES` from here).

Passes run through the engine (:func:`bigarr._compute.runplan.plan_run` and
:func:`bigarr._compute.engine.execute`); the count of the last call's passes is kept in
:data:`LAST_PASSES` (a diagnostic).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np

from bigarr._compute.engine import execute
from bigarr._compute.operands import Stream, parse_operand
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import block_info, parse_threads, plan_run
from bigarr._plan.budget import DEFAULT_BUDGET, parse_budget
from bigarr._plan.chunks import Chunk
from bigarr.errors import (
    ArgumentError,
    ArgumentValueError,
    AxisError,
    BudgetError,
    DtypeError,
    ShapeError,
    UnsupportedError,
)

__all__ = [
    "median",
    "nanmedian",
    "nanpercentile",
    "nanquantile",
    "percentile",
    "quantile",
    "topk",
    "unique",
]

Array = np.ndarray[Any, Any]
#: What the quantile family returns, as numpy: an array, or a numpy scalar.
ArrayOrScalar = np.ndarray[Any, Any] | np.generic

#: Passes over the data made by the last quantile-family call in this process (diagnostic).
LAST_PASSES: list[int] = [0]
#: Bits of key resolved by one histogram pass (at most).
_BITS_PER_PASS = 16


def _temporaries(dtype: np.dtype[Any]) -> float:
    """Bytes the pass kernels allocate per byte of chunk: keys and their float bit-twiddling
    (about 4 copies), the NaN mask and intp bucket indices with their masked copy."""
    return 4.0 + 18.0 / max(dtype.itemsize, 1)


# ---- keys ----------------------------------------------------------------------------------
def _check_dtype(dtype: np.dtype[Any], name: str) -> None:
    if dtype.kind not in "biuf":
        raise DtypeError(
            f"{name} works on bool, integer and floating arrays. Got dtype {dtype}: convert "
            "first (e.g. with map_blocks), or use numpy on data that fits in memory."
        )


def _key_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return np.dtype(f"u{dtype.itemsize}")


def _keys(block: Array) -> Array:
    """Unsigned keys of ``block``'s values, ordered as numpy sorts them (NaN keys: undefined)."""
    kd = _key_dtype(block.dtype)
    kind = block.dtype.kind
    u = np.ascontiguousarray(block).view(kd)
    if kind in "bu":
        return u
    sign = kd.type(1 << (8 * kd.itemsize - 1))
    if kind == "i":
        return cast(Array, np.bitwise_xor(u, sign))
    # negatives flip every bit, positives the sign bit: XOR with the sign bit smeared across
    # the word by an arithmetic shift (all ones for negatives), or-ed with the sign bit
    smear: Array = np.right_shift(u.view(f"i{kd.itemsize}"), 8 * kd.itemsize - 1).view(kd)
    smear |= sign
    smear ^= u
    return smear


def _values(keys: Array, dtype: np.dtype[Any]) -> Array:
    """The values of ``keys`` (the inverse of :func:`_keys`)."""
    kd = _key_dtype(dtype)
    keys = np.asarray(keys, dtype=kd)
    kind = dtype.kind
    if kind in "bu":
        return keys.view(dtype)
    sign = kd.type(1 << (8 * kd.itemsize - 1))
    if kind == "i":
        return cast(Array, np.bitwise_xor(keys, sign)).view(dtype)
    positive = keys >= sign
    return np.where(positive, keys ^ sign, ~keys).astype(kd).view(dtype)


# ---- running a pass ------------------------------------------------------------------------
def _inside(b: Array, ranges: list[tuple[int, int, int, int]], kd: np.dtype[Any],
            floating: bool) -> Iterator[tuple[range, Array, Array]]:
    """The keys of each range's column in a block and which lie inside the range, vectorised
    over ranges: for groups of at most as many ranges as the block has columns (so a group's
    keys are no larger than the block), ``(range indices, keys, inside)`` with ``keys`` and
    ``inside`` of shape (rows, ranges in the group); NaNs are never inside."""
    width = max(b.shape[1], 1)
    every = _keys(b)
    valid = ~np.isnan(b) if floating else None
    for start in range(0, len(ranges), width):
        group = ranges[start:start + width]
        cols = np.array([r[0] for r in group], dtype=np.intp)
        shifts = np.array([r[2] for r in group], dtype=kd)
        tops = np.array([r[1] for r in group], dtype=kd) >> shifts
        whole = cols.size == width and bool(np.all(cols == np.arange(width)))
        keys = every if whole else every[:, cols]
        inside = cast(Array, np.right_shift(keys, shifts) == tops)
        if valid is not None:
            inside &= valid if whole else valid[:, cols]
        yield range(start, start + len(group)), keys, inside


def _selected(keys: Array, inside: Array) -> tuple[Array, Array]:
    """The keys inside their range: ``(range of each, key)``, in no particular order."""
    rows, which = np.nonzero(inside)
    return which, keys[rows, which]


def _columns(block: Array, axis0: bool) -> Array:
    """A chunk's block as a 2-d (rows, columns) array: its columns, or one column of all."""
    if axis0:
        return block.reshape(block.shape[0], -1) if block.ndim != 1 else block[:, None]
    return block.reshape(-1, 1)


def _run_pass(stream: Stream, desc: str, work: Callable[[Array, int], Any],
              fold: Callable[[Any], None], *, budget: int | str, threads: int,
              progress: ProgressArg, fixed_bytes: int) -> None:
    """One pass of ``work(block, first_row)`` over whole-row chunks, ``fold``-ed in order."""
    plan = plan_run(desc, [stream], budget=budget, threads=threads, layout="rows",
                    temporaries=_temporaries(np.dtype(stream.dtype)), fixed_bytes=fixed_bytes)

    def run(chunk: Chunk, blocks: list[Array]) -> Any:
        info = block_info(chunk, stream.shape)
        return work(blocks[0], int(info["rows"][0]))

    chunks = plan.chunks
    LAST_PASSES[0] += 1
    with Progress(progress, total_bytes=chunks.nbytes, total_chunks=len(chunks),
                  desc=desc) as bar:
        for _chunk, part in execute(plan, run, [stream], progress=bar):
            fold(part)


def _gathered_bytes(kd: np.dtype[Any]) -> int:
    """Bytes a gathered key costs: the key and its range index, then both sorted by range with
    the sort's order (three copies)."""
    return 3 * (kd.itemsize + 8)


class _Target:
    """One order statistic being searched: column, rank among the column's sorted non-NaN
    values; narrowed to keys ``[lo, lo + 2**shift)`` holding ``count`` values, ``below`` of the
    column's values lying under ``lo``."""

    __slots__ = ("below", "col", "count", "lo", "rank", "shift", "value")

    def __init__(self, col: int, rank: int) -> None:
        self.col, self.rank = col, rank
        self.lo, self.shift, self.below, self.count = 0, 0, 0, 0
        self.value: int | None = None


def _order_statistics(
    stream: Stream, axis0: bool, want: Callable[[Array], list[list[int]]], *,
    budget: int | str, threads: int, progress: ProgressArg, name: str,
) -> tuple[Array, list[dict[int, Any]]]:
    """Per column: the NaN count, and the value at each rank ``want(nan_counts)`` asks for.

    Returns the NaN counts and, per column, ``{rank: value}`` (numpy scalars of the dtype).
    """
    dtype = np.dtype(stream.dtype)
    kd = _key_dtype(dtype)
    bits = 8 * kd.itemsize
    shape = stream.shape
    ncols = int(math.prod(shape[1:])) if axis0 and len(shape) > 1 else 1
    budget_bytes = parse_budget(budget)
    floating = dtype.kind == "f"
    # pass 1: counts of the top bits, per column; its partials are planned as fixed memory
    nb_bits = min(bits, _BITS_PER_PASS)
    while nb_bits > 1 and ncols * (8 << nb_bits) * (threads + 3) > budget_bytes // 4:
        nb_bits -= 1
    nbuckets = 1 << nb_bits
    shift0 = bits - nb_bits
    counts = np.zeros((ncols, nbuckets), dtype=np.int64)
    nans = np.zeros(ncols, dtype=np.int64)
    offsets = (np.arange(ncols, dtype=np.intp) * nbuckets)[None, :]

    def histogram(block: Array, _row: int) -> tuple[Array, Array]:
        b = _columns(block, axis0)
        idx = (_keys(b) >> kd.type(shift0)).astype(np.intp) if shift0 else \
            _keys(b).astype(np.intp)
        idx += offsets
        if floating:
            isnan = np.isnan(b)
            nan_count = isnan.sum(axis=0)
            idx = idx[~isnan]
        else:
            nan_count = np.zeros(ncols, dtype=np.int64)
        part = np.bincount(idx.ravel(), minlength=ncols * nbuckets)
        return nan_count, part.reshape(ncols, nbuckets)

    def fold1(part: tuple[Array, Array]) -> None:
        nans.__iadd__(part[0])
        counts.__iadd__(part[1])

    fixed = ncols * (8 << nb_bits) * (threads + 3)
    _run_pass(stream, f"{name} pass 1", histogram, fold1, budget=budget, threads=threads,
              progress=progress, fixed_bytes=fixed)
    wanted = want(nans)
    targets: list[_Target] = []
    for col, col_ranks in enumerate(wanted):
        if not col_ranks:
            continue
        cum = np.cumsum(counts[col])
        for rank in sorted(set(col_ranks)):
            t = _Target(col, rank)
            b = int(np.searchsorted(cum, rank, side="right"))
            t.below = int(cum[b - 1]) if b else 0
            t.lo, t.shift, t.count = b << shift0, shift0, int(counts[col, b])
            targets.append(t)
    gather_limit = max(budget_bytes // 4 // _gathered_bytes(kd), 1024)
    while True:
        open_ = [t for t in targets if t.value is None and t.shift > 0]
        for t in targets:
            if t.value is None and t.shift == 0:
                t.value = t.lo  # a bucket one key wide: its key is the value
        if not open_:
            break
        ranges = sorted({(t.col, t.lo, t.shift, t.count) for t in open_})
        if sum(r[3] for r in ranges) <= gather_limit:
            _gather(stream, ranges, open_, axis0, kd, floating,
                    budget=budget, threads=threads, progress=progress, name=name,
                    fixed=sum(r[3] for r in ranges) * _gathered_bytes(kd))
            break
        _refine(stream, ranges, open_, axis0, kd, floating, budget=budget,
                threads=threads, progress=progress, name=name, budget_bytes=budget_bytes)
    result: list[dict[int, Any]] = [{} for _ in range(ncols)]
    for t in targets:
        assert t.value is not None
        result[t.col][t.rank] = _values(np.array([t.value], dtype=kd), dtype)[0]
    return nans, result


def _refine(stream: Stream, ranges: list[tuple[int, int, int, int]], open_: list[_Target],
            axis0: bool, kd: np.dtype[Any], floating: bool, *, budget: int | str,
            threads: int, progress: ProgressArg, name: str, budget_bytes: int) -> None:
    """Histogram the next bits of the keys inside each range; narrow each target's range."""
    sub_bits = _BITS_PER_PASS
    while sub_bits > 1 and len(ranges) * (8 << sub_bits) * (threads + 3) > budget_bytes // 4:
        sub_bits -= 1
    plan = [(col, lo, shift, max(shift - sub_bits, 0)) for col, lo, shift, _ in ranges]
    # every range's sub-histogram in one flat array: range i at [starts[i], starts[i] + sizes[i])
    sizes = np.array([1 << (shift - new) for _, _, shift, new in plan], dtype=np.intp)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp)
    totals = np.zeros(int(sizes.sum()), dtype=np.int64)
    los = np.array([lo for _, lo, _, _ in plan], dtype=kd)
    news = np.array([new for *_, new in plan], dtype=kd)

    def work(block: Array, _row: int) -> list[tuple[int, Array]]:
        out: list[tuple[int, Array]] = []
        for group, keys, inside in _inside(_columns(block, axis0), plan, kd, floating):
            which, sel = _selected(keys, inside)
            del keys, inside
            which += group.start
            local = ((sel - los[which]) >> news[which]).astype(np.intp) + starts[which]
            lo = int(starts[group.start])
            hi = int(starts[group.stop - 1] + sizes[group.stop - 1])
            out.append((lo, np.bincount(local - lo, minlength=hi - lo)))
        return out

    def fold(part: list[tuple[int, Array]]) -> None:
        for lo, counts in part:
            totals[lo:lo + counts.size] += counts

    _run_pass(stream, f"{name} refine", work, fold, budget=budget, threads=threads,
              progress=progress, fixed_bytes=totals.nbytes * (threads + 3))
    index = {(col, lo, shift): i for i, (col, lo, shift, _) in enumerate(plan)}
    for t in open_:
        i = index[(t.col, t.lo, t.shift)]
        new = plan[i][3]
        mine = totals[starts[i]:starts[i] + sizes[i]]
        cum = np.cumsum(mine)
        b = int(np.searchsorted(cum, t.rank - t.below, side="right"))
        t.below += int(cum[b - 1]) if b else 0
        t.lo, t.shift, t.count = t.lo + (b << new), new, int(mine[b])


def _gather(stream: Stream, ranges: list[tuple[int, int, int, int]], open_: list[_Target],
            axis0: bool, kd: np.dtype[Any], floating: bool, *, budget: int | str,
            threads: int, progress: ProgressArg, name: str, fixed: int) -> None:
    """Collect the keys inside each range; select each target's key exactly."""
    parts: list[tuple[Array, Array]] = []

    def work(block: Array, _row: int) -> list[tuple[Array, Array]]:
        out: list[tuple[Array, Array]] = []
        for group, keys, inside in _inside(_columns(block, axis0), ranges, kd, floating):
            which, sel = _selected(keys, inside)
            out.append((which + group.start, sel))
        return out

    def fold(part: list[tuple[Array, Array]]) -> None:
        parts.extend(p for p in part if p[0].size)

    _run_pass(stream, f"{name} gather", work, fold, budget=budget, threads=threads,
              progress=progress, fixed_bytes=fixed)
    which = np.concatenate([w for w, _ in parts]) if parts else np.zeros(0, np.intp)
    keys = np.concatenate([k for _, k in parts]) if parts else np.zeros(0, kd)
    parts.clear()
    order = np.argsort(which, kind="stable")
    which, keys = which[order], keys[order]
    del order
    bounds = np.searchsorted(which, np.arange(len(ranges) + 1))
    index = {(col, lo, shift): i for i, (col, lo, shift, _) in enumerate(ranges)}
    for t in open_:
        i = index[(t.col, t.lo, t.shift)]
        mine = keys[bounds[i]:bounds[i + 1]]
        k = t.rank - t.below
        t.value = int(np.partition(mine, k)[k])


# ---- the quantile family -------------------------------------------------------------------
_METHODS = ("linear", "lower", "higher", "nearest", "midpoint")


def _neighbours(n: int, q: Any, method: str, weak: bool) -> tuple[list[int], Any]:
    """The ranks numpy reads for quantile ``q`` of ``n`` sorted values, and the ``q`` that
    makes numpy compute the same answer from just those values (one or two of them)."""
    qtype = np.asarray(q).dtype.type

    def typed(x: Any) -> Any:
        return (int(x) if np.asarray(q).dtype.kind in "iub" else float(x)) if weak else qtype(x)

    n1 = n - 1
    if method in ("lower", "higher", "nearest") or np.asarray(q).dtype.kind in "iub":
        v = n1 * q
        if method == "lower":
            v = np.floor(v)
        elif method == "higher":
            v = np.ceil(v)
        elif method == "nearest":
            v = np.around(v)
        return [min(int(v), n1)], typed(0)
    v = 0.5 * (np.floor(n1 * q) + np.ceil(n1 * q)) if method == "midpoint" else n1 * q
    if v >= n1:
        return [n1, n1], typed(1)
    prev = np.floor(v)
    if method == "midpoint":
        return [int(prev), int(prev) + 1], typed(0 if v % 1 == 0 else 0.5)
    return [int(prev), int(prev) + 1], typed(v - prev)


# numpy's quantile methods this module does not implement (a method outside both lists is a
# ValueError, as numpy's)
_NUMPY_METHODS = ("inverted_cdf", "averaged_inverted_cdf", "closest_observation",
                  "interpolated_inverted_cdf", "hazen", "weibull", "median_unbiased",
                  "normal_unbiased")


def _family(a: Any, q: Any, axis: int | None, method: str, *, nan: bool, percent: bool,
            median: bool, budget: int | str, threads: int | None, progress: ProgressArg,
            name: str) -> ArrayOrScalar:
    """quantile, percentile, median and their nan-variants (see the module docstring)."""
    if method not in _METHODS and method not in _NUMPY_METHODS:  # numpy's ValueError
        raise ArgumentValueError(
            f"Expected method as one of {', '.join(_METHODS)} (numpy's other methods are not "
            f"implemented out of core). Got {method!r}, which is not a method numpy knows."
        )
    if method not in _METHODS:
        raise UnsupportedError(
            f"Expected method as one of {', '.join(_METHODS)}. Got {method!r}: the other "
            "numpy methods are not implemented out of core; use numpy on data in memory."
        )
    LAST_PASSES[0] = 0
    stream = parse_operand(a, by_key=False)
    try:
        dtype = np.dtype(stream.dtype)
        _check_dtype(dtype, name)
        shape = tuple(stream.shape)
        if axis is not None:
            if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
                raise ArgumentError(f"Expected axis as 0 or None. Got {axis!r}.")
            if not -len(shape) <= int(axis) < len(shape):  # axis=2 of 2-d is not axis 0
                raise AxisError(int(axis), len(shape))
            if int(axis) % len(shape) != 0:
                raise UnsupportedError(
                    f"Expected axis=None or axis=0 for an array of {len(shape)} dimensions. "
                    f"Got axis={axis!r}: only whole-array and per-column order statistics run "
                    "out of core; transpose the file first for other axes.")
        weak = type(q) in (int, float)
        qarr = np.true_divide(q, 100) if percent else np.asanyarray(q)
        fn = _numpy_fn(nan, percent, median)
        probe_args: dict[str, Any] = {} if median else {"method": method}
        try:  # numpy's own validation of q, method and dtype, on a tiny array
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                probe = np.asarray(fn(np.zeros((2, 1), dtype=dtype), *(() if median else (q,)),
                                      axis=0, **probe_args))
        except TypeError as exc:
            raise DtypeError(f"{name} of an array of {dtype}: {exc}") from None
        except ValueError as exc:
            raise ShapeError(f"{name}: {exc}") from None
        if not shape or stream.size == 0:
            data = stream.array if stream.array is not None else \
                np.asarray(stream.read(tuple(slice(0, m) for m in shape)) if stream.read else [])
            return cast(ArrayOrScalar,
                        fn(data, *(() if median else (q,)), axis=axis, **probe_args))
        axis0 = axis is not None and len(shape) > 1
        rows = shape[0] if axis0 else stream.size
        qflat = [qarr] if median else list(np.asarray(qarr).reshape(-1))
        nthreads = parse_threads(threads)
        plans: dict[int, list[tuple[list[int], Any]]] = {}

        def valid_count(nan_count: int) -> int:
            return rows - nan_count if nan else (rows if nan_count == 0 else 0)

        def want(nans: Array) -> list[list[int]]:
            out: list[list[int]] = []
            for nan_count in nans.tolist():
                n = valid_count(int(nan_count))
                if n == 0:
                    out.append([])
                    continue
                if n not in plans:
                    if median:
                        plans[n] = [([n // 2] if n % 2 else [n // 2 - 1, n // 2], None)]
                    else:
                        plans[n] = [_neighbours(n, qi, method, weak) for qi in qflat]
                out.append(sorted({r for ranks, _ in plans[n] for r in ranks}))
            return out

        nans, values = _order_statistics(stream, axis0, want, budget=budget,
                                         threads=nthreads, progress=progress, name=name)
        ncols = len(values)
        res = np.empty((len(qflat), ncols), dtype=probe.dtype)
        for n, per_q in plans.items():
            cols = [c for c in range(ncols) if valid_count(int(nans[c])) == n]
            for i, (ranks, qprime) in enumerate(per_q):
                small = np.array([[values[c][r] for c in cols] for r in ranks], dtype=dtype)
                if median:
                    res[i, cols] = np.median(small, axis=0)
                else:
                    res[i, cols] = _np_quantile(small, qprime, axis=0, method=method)
        empty = [c for c in range(ncols) if valid_count(int(nans[c])) == 0]
        if empty:
            res[:, empty] = np.nan
            if nan:
                warnings.warn("All-NaN slice encountered", RuntimeWarning, stacklevel=3)
        qshape = () if median else np.shape(qarr)
        out = res.reshape(qshape + (shape[1:] if axis0 else ()))
        if out.ndim == 0 and not nan and not median and nans[0]:
            # numpy returns the NaN it sorted last, of a's dtype
            return cast(np.generic, dtype.type(np.nan))
        return out[()] if out.ndim == 0 else out
    finally:
        stream.close()


_np_quantile: Callable[..., Any] = np.quantile


def _numpy_fn(nan: bool, percent: bool, median: bool) -> Callable[..., Any]:
    if median:
        return np.nanmedian if nan else np.median
    if percent:
        return np.nanpercentile if nan else np.percentile
    return np.nanquantile if nan else np.quantile


_DOC_ARGS = """
    Parameters
    ----------
    a
        A :class:`bigarr.memmap`, any numpy array, or the path of a ``.npy`` file; bool,
        integer or floating.
    q
        Quantile(s), as numpy's (a scalar or an array of them).
    axis
        ``None`` (all values) or ``0`` (per column).
    method
        ``"linear"`` (default), ``"lower"``, ``"higher"``, ``"nearest"`` or ``"midpoint"``.
    budget
        The most memory the computation may add, in bytes or as a string such as ``"256MiB"``.
    threads
        Worker threads (default: the CPUs available).
    progress
        ``None`` (a bar on a TTY), ``True``, ``False``, or callbacks taking ProgressEvent.

    Raises
    ------
    BudgetError
        If the budget cannot hold the smallest plan (both numbers quoted).
    DtypeError
        For dtypes other than bool, integer and floating, or where numpy refuses the dtype.
    ShapeError
        Where numpy raises ValueError (``q`` out of range).
    AxisError
        For an ``axis`` out of range (a numpy AxisError: ValueError and IndexError).
    UnsupportedError
        For another ``axis`` or ``method``.
"""


def quantile(a: Any, q: Any, *, axis: int | None = None, method: str = "linear",
             budget: int | str = DEFAULT_BUDGET, threads: int | None = None,
             progress: ProgressArg = None) -> ArrayOrScalar:
    """Exact quantiles, equal to :func:`numpy.quantile`'s, without sorting the array.

    Two passes typically (a histogram of order-preserving keys, then a gather of the few
    values in the buckets holding the answer); NaN anywhere in a column gives NaN, as numpy.
    """
    return _family(a, q, axis, method, nan=False, percent=False, median=False, budget=budget,
                   threads=threads, progress=progress, name="quantile")


def percentile(a: Any, q: Any, *, axis: int | None = None, method: str = "linear",
               budget: int | str = DEFAULT_BUDGET, threads: int | None = None,
               progress: ProgressArg = None) -> ArrayOrScalar:
    """Exact percentiles, equal to :func:`numpy.percentile`'s; see :func:`quantile`."""
    return _family(a, q, axis, method, nan=False, percent=True, median=False, budget=budget,
                   threads=threads, progress=progress, name="percentile")


def nanquantile(a: Any, q: Any, *, axis: int | None = None, method: str = "linear",
                budget: int | str = DEFAULT_BUDGET, threads: int | None = None,
                progress: ProgressArg = None) -> ArrayOrScalar:
    """Exact quantiles ignoring NaNs, equal to :func:`numpy.nanquantile`'s (all-NaN: NaN
    and a RuntimeWarning); see :func:`quantile`."""
    return _family(a, q, axis, method, nan=True, percent=False, median=False, budget=budget,
                   threads=threads, progress=progress, name="nanquantile")


def nanpercentile(a: Any, q: Any, *, axis: int | None = None, method: str = "linear",
                  budget: int | str = DEFAULT_BUDGET, threads: int | None = None,
                  progress: ProgressArg = None) -> ArrayOrScalar:
    """Exact percentiles ignoring NaNs, equal to :func:`numpy.nanpercentile`'s."""
    return _family(a, q, axis, method, nan=True, percent=True, median=False, budget=budget,
                   threads=threads, progress=progress, name="nanpercentile")


def median(a: Any, *, axis: int | None = None, budget: int | str = DEFAULT_BUDGET,
           threads: int | None = None, progress: ProgressArg = None) -> ArrayOrScalar:
    """Exact median, equal to :func:`numpy.median`'s; see :func:`quantile`."""
    return _family(a, None, axis, "linear", nan=False, percent=False, median=True,
                   budget=budget, threads=threads, progress=progress, name="median")


def nanmedian(a: Any, *, axis: int | None = None, budget: int | str = DEFAULT_BUDGET,
              threads: int | None = None, progress: ProgressArg = None) -> ArrayOrScalar:
    """Exact median ignoring NaNs, equal to :func:`numpy.nanmedian`'s."""
    return _family(a, None, axis, "linear", nan=True, percent=False, median=True,
                   budget=budget, threads=threads, progress=progress, name="nanmedian")


for _f in (quantile, percentile, nanquantile, nanpercentile, median, nanmedian):
    _f.__doc__ = (_f.__doc__ or "") + _DOC_ARGS


# ---- top-k ---------------------------------------------------------------------------------
def _rank_keys(block: Array, largest: bool) -> Array:
    """Keys ordering values as a stable sort would rank them: ascending (or descending with
    ``largest``), ``-0.0`` equal to ``0.0``, NaN after every number either way."""
    if block.dtype.kind == "f":
        isnan = np.isnan(block)
        keys = _keys(block + block.dtype.type(0))  # -0.0 + 0.0 is 0.0: the zeros tie
        if largest:
            keys = ~keys
        keys[isnan] = np.iinfo(keys.dtype).max
        return keys
    keys = _keys(block)
    return ~keys if largest else keys


def _best(keys: Array, index: Array, values: Array, k: int) -> tuple[Array, Array, Array]:
    """The ``k`` smallest ``(key, index)`` pairs, ordered; ties go to the lower index."""
    if keys.size > k:
        kth = np.partition(keys, k - 1)[k - 1]
        less = np.flatnonzero(keys < kth)
        ties = np.flatnonzero(keys == kth)
        ties = ties[np.argsort(index[ties], kind="stable")][: k - less.size]
        sel = np.concatenate((less, ties))
        keys, index, values = keys[sel], index[sel], values[sel]
    order = np.lexsort((index, keys))
    return keys[order], index[order], values[order]


def topk(a: Any, k: int, *, axis: int | None = None, largest: bool = True,
         budget: int | str = DEFAULT_BUDGET, threads: int | None = None,
         progress: ProgressArg = None) -> tuple[Array, Array]:
    """The ``k`` largest (or smallest) values and their indices, in one pass.

    Exactly what a stable sort gives: ``largest=False`` returns the first ``k`` of
    ``np.argsort(a, axis, kind="stable")`` (ascending, ties to the lower index); ``largest=True``
    returns values descending, ties to the lower index as well. ``-0.0`` ties with ``0.0``;
    NaN ranks after every number in both directions (it is returned only when fewer than ``k``
    numbers exist). Each chunk keeps its best ``k`` (per column) with :func:`numpy.partition`;
    the kept candidates merge in chunk order.

    Parameters
    ----------
    a
        A :class:`bigarr.memmap`, any numpy array, or the path of a ``.npy`` file; bool,
        integer or floating.
    k
        How many, ``0 <= k <=`` the length reduced.
    axis
        ``None`` (flat C-order indices into all values) or ``0`` (per column: row indices).
    largest
        The largest values (default) or the smallest.
    budget, threads, progress
        As :func:`bigarr.sum`; the budget also holds the candidates (per column).

    Returns
    -------
    values, indices
        Shape ``(k,)`` for ``axis=None``; ``(k,) + a.shape[1:]`` for ``axis=0``. Indices are
        ``intp``.

    Raises
    ------
    ShapeError
        If ``k`` is negative or larger than the length reduced.
    AxisError, DtypeError, UnsupportedError
        As :func:`quantile`.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ArgumentError(f"Expected k as an int. Got {k!r}.")
    k = int(k)
    stream = parse_operand(a, by_key=False)
    try:
        dtype = np.dtype(stream.dtype)
        _check_dtype(dtype, "topk")
        shape = tuple(stream.shape)
        if (axis is not None and not isinstance(axis, bool) and isinstance(axis, (int, np.integer))
                and not -len(shape) <= int(axis) < len(shape)):  # axis=2 of 2-d is not axis 0
            raise AxisError(int(axis), len(shape))
        if axis is not None and (isinstance(axis, bool) or not shape
                                 or int(axis) % len(shape) != 0):
            raise UnsupportedError(
                f"Expected axis=None or axis=0 for an array of {len(shape)} dimensions. "
                f"Got axis={axis!r}; transpose the file first for other axes.")
        axis0 = axis is not None and len(shape) > 1
        length = shape[0] if axis0 else stream.size
        if not 0 <= k <= length:
            raise ShapeError(
                f"Expected 0 <= k <= {length} (the length reduced). Got k={k}.")
        ncols = int(math.prod(shape[1:])) if axis0 else 1
        out_shape = (k,) + (shape[1:] if axis0 else ())
        if k == 0 or length == 0:
            return np.zeros(out_shape, dtype=dtype), np.zeros(out_shape, dtype=np.intp)
        row_size = int(math.prod(shape[1:])) if len(shape) > 1 else 1
        kd = _key_dtype(dtype)
        best: list[tuple[Array, Array, Array]] = [
            (np.zeros(0, kd), np.zeros(0, np.intp), np.zeros(0, dtype)) for _ in range(ncols)]

        def work(block: Array, row: int) -> list[tuple[Array, Array, Array]]:
            b = _columns(block, axis0)
            keys = _rank_keys(b, largest)
            if axis0:
                index = np.arange(row, row + b.shape[0], dtype=np.intp)
                return [_best(keys[:, c], index, b[:, c], k) for c in range(ncols)]
            index = np.arange(row * row_size, row * row_size + b.shape[0], dtype=np.intp)
            return [_best(keys[:, 0], index, b[:, 0], k)]

        def fold(part: list[tuple[Array, Array, Array]]) -> None:
            for c, (keys, index, values) in enumerate(part):
                old = best[c]
                best[c] = _best(np.concatenate((old[0], keys)), np.concatenate((old[1], index)),
                                np.concatenate((old[2], values)), k)

        per = k * ncols * (kd.itemsize + 8 + dtype.itemsize)
        _run_pass(stream, "topk", work, fold, budget=budget, threads=parse_threads(threads),
                  progress=progress, fixed_bytes=per * (parse_threads(threads) + 4))
        values = np.stack([v for _, _, v in best], axis=-1).reshape(out_shape)
        indices = np.stack([i for _, i, _ in best], axis=-1).reshape(out_shape)
        return values, indices
    finally:
        stream.close()


# ---- unique --------------------------------------------------------------------------------
def _merge_unique(values: Array, counts: Array) -> tuple[Array, Array]:
    """Distinct values of ``values`` (numpy's order and NaN rule) with summed ``counts``."""
    uniq, inverse = np.unique(values, return_inverse=True)
    return uniq, np.bincount(inverse.reshape(-1), weights=counts,
                             minlength=uniq.size).astype(np.intp)


def unique(a: Any, *, return_counts: bool = False, budget: int | str = DEFAULT_BUDGET,
           threads: int | None = None,
           progress: ProgressArg = None) -> Array | tuple[Array, Array]:
    """Sorted distinct values (and their counts), like :func:`numpy.unique` of all values.

    One pass: each chunk's distinct values and counts (:func:`numpy.unique`) merge in chunk
    order. The distinct values are held in memory, so this suits data with fewer distinct
    values than the budget holds (categories, ids of a bounded range); when they outgrow a
    quarter of the budget the run stops with :class:`~bigarr.errors.BudgetError`.

    Parameters
    ----------
    a
        A :class:`bigarr.memmap`, any numpy array, or the path of a ``.npy`` file; bool,
        integer or floating (NaNs collapse to one, last, as numpy's ``equal_nan=True``).
    return_counts
        Also return how often each distinct value occurs (``intp``).
    budget, threads, progress
        As :func:`bigarr.sum`.

    Returns
    -------
    values or (values, counts)
        As :func:`numpy.unique` of the flattened array.

    Raises
    ------
    BudgetError
        If the distinct values (with counts, during a merge) outgrow the budget.
    DtypeError
        As :func:`quantile`.
    """
    stream = parse_operand(a, by_key=False)
    try:
        dtype = np.dtype(stream.dtype)
        _check_dtype(dtype, "unique")
        budget_bytes = parse_budget(budget)
        limit = budget_bytes // 4
        state: list[tuple[Array, Array]] = [(np.zeros(0, dtype), np.zeros(0, np.intp))]
        if stream.size:
            def work(block: Array, _row: int) -> tuple[Array, Array]:
                uniq, counts = np.unique(block.reshape(-1), return_counts=True)
                return uniq, counts.astype(np.intp)

            def fold(part: tuple[Array, Array]) -> None:
                old = state[0]
                merged = _merge_unique(np.concatenate((old[0], part[0])),
                                       np.concatenate((old[1], part[1])))
                held = merged[0].size * (dtype.itemsize + 8)
                if held > limit:
                    raise BudgetError(
                        f"unique holds its distinct values in memory: {held} bytes of them so "
                        f"far, more than a quarter of the budget ({budget_bytes} bytes). Raise "
                        "budget=, or sort the data first (bigarr.sort) and scan it.")
                state[0] = merged

            _run_pass(stream, "unique", work, fold, budget=budget,
                      threads=parse_threads(threads), progress=progress,
                      fixed_bytes=2 * limit)
        values, counts = state[0]
        return (values, counts) if return_counts else values
    finally:
        stream.close()
