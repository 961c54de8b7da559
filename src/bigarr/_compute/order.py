"""Exact order statistics out of core: quantiles and medians, top-k, unique values.

Quantiles without sorting the array
-----------------------------------
The passes live in :mod:`bigarr._compute.orderscan`: order-preserving integer keys, histograms
of their top bits, a sampled window gathered in the same pass, and an exact selection in the
final bucket (one pass on most data). With the order statistics known, the final answer is
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
from collections.abc import Callable
from typing import Any, cast

import numpy as np

from bigarr._compute.operands import parse_operand
from bigarr._compute.orderkeys import check_dtype, key_dtype, keys_of
from bigarr._compute.orderscan import LAST_PASSES, _columns, _order_statistics, _run_pass
from bigarr._compute.progress import ProgressArg
from bigarr._compute.runplan import parse_threads
from bigarr._plan.budget import DEFAULT_BUDGET, parse_budget
from bigarr.errors import (
    ArgumentError,
    ArgumentValueError,
    AxisError,
    BudgetError,
    DtypeError,
    RegionError,
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

# ---- the quantile family -------------------------------------------------------------------
_METHODS = ("linear", "lower", "higher", "nearest", "midpoint")


def _neighbours(n: int, q: Any, method: str, weak: bool) -> tuple[list[int], Any]:
    """The ranks numpy reads for quantile ``q`` of ``n`` sorted values, and the ``q`` that
    makes numpy compute the same answer from just those values (one or two of them)."""
    qtype = np.asarray(q).dtype.type

    def typed(x: Any) -> Any:
        return (int(x) if np.asarray(q).dtype.kind in "iub" else float(x)) if weak else qtype(x)

    n1 = n - 1
    if n1 == 0:  # one value: numpy's own arithmetic on it (its weight is then exactly 1, which
        return [0], typed(q)  # keeps a -0.0; the two-value stand-in's weight 2 would not)
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
        check_dtype(dtype, name)
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
            if shape and stream.size:  # (numpy's nanquantile of no bools is NaN: below)
                raise DtypeError(f"{name} of an array of {dtype}: {exc}") from None
        except ValueError as exc:
            raise ShapeError(f"{name}: {exc}") from None
        if not shape or stream.size == 0:
            data = stream.array if stream.array is not None else \
                np.asarray(stream.read(tuple(slice(0, m) for m in shape)) if stream.read else [])
            try:  # numpy's answer, and its refusals as bigarr errors
                return cast(ArrayOrScalar,
                            fn(data, *(() if median else (q,)), axis=axis, **probe_args))
            except TypeError as exc:
                raise DtypeError(f"{name} of an array of {dtype}: {exc}") from None
            except IndexError as exc:  # numpy's quantile of no values
                raise RegionError(f"{name} of no values (shape {shape}): {exc}") from None
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

        # where the wanted ranks lie among the sorted values, for pass 1's sampled windows
        fracs = [0.5] if median else [float(f) for f in np.clip(np.asarray(qflat, float), 0, 1)]
        nans, values = _order_statistics(stream, axis0, want, budget=budget,
                                         threads=nthreads, progress=progress, name=name,
                                         fracs=fracs)
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
            if nan and empty[0] == 0:
                # numpy (apply_along_axis) takes the result's dtype from the first column's:
                # an all-NaN one is of a's dtype, and every other column is cast to it
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = res.astype(np.asarray(fn(np.full((2, 1), np.nan, dtype=dtype),
                                                   *(() if median else (q,)), axis=0,
                                                   **probe_args)).dtype)
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

    One pass on most data of one column (or ``axis=None``): a histogram of order-preserving
    keys that also gathers the values in windows a small sample places around each answer;
    otherwise (many columns, a misleading sample) a second pass gathers the few values in the
    buckets holding the answer. NaN anywhere in a column gives NaN, as numpy.
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
        keys = keys_of(block + block.dtype.type(0))  # -0.0 + 0.0 is 0.0: the zeros tie
        if largest:
            keys = ~keys
        keys[isnan] = np.iinfo(keys.dtype).max
        return keys
    keys = keys_of(block)
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
        check_dtype(dtype, "topk")
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
        kd = key_dtype(dtype)
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
        values = np.stack([v for _, _, v in best], axis=-1).reshape(out_shape).astype(
            dtype, copy=False)  # big-endian data: its byte order again
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
        check_dtype(dtype, "unique", keyed=False)
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
        values = values.astype(dtype, copy=False)  # big-endian data: its byte order again
        return (values, counts) if return_counts else values
    finally:
        stream.close()
