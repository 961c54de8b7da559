"""Reductions over chunks: numpy-named functions whose partial results merge exactly or stably.

Every reduction runs the same way (:func:`_reduce`): the array is cut into page-aligned chunks
(:func:`bigarr._plan.chunks.plan_chunks`) within a memory plan (:mod:`bigarr._plan.budget`),
each chunk is reduced on a worker thread to a *partial state* with the reduced axes kept as
length 1, and the main thread merges the partial states into the state of the result. Exact
kernels (integer sums, extremes, counts) merge chunk by chunk, in chunk order:

* chunks run along the plan's axis (axis 0 in C order, the last axis in Fortran order); when that
  axis is reduced, partial states of successive chunks are *combined*; when it is not, each
  chunk fills its own part of the result;
* a chunk covers a box of the array (``chunk.key``), so the same rule works when the planner had
  to split rows too big for the budget.

Floating sums, means and variances instead merge in the fixed pairwise tree of
:class:`bigarr._compute.mergetree.Tree`, over leaves cut by the array's shape alone, so their
results are the same bits whatever the budget and threads.

The partial states and how they combine:

=================  ===========================  ==============================================
function           state                        combine
=================  ===========================  ==============================================
sum                sum (float64 for floats)     add (floats: in the fixed tree)
mean               sum (float64), count         add, add (floats: in the fixed tree)
var, std           count, shift, mean, M2       Chan et al.'s parallel update, in the fixed
                   (float64)                    tree
min, max           value                        ``np.minimum`` / ``np.maximum`` (NaN wins)
argmin, argmax     value, global index          smaller (larger) value; NaN (NaT) wins; ties to
                                                the lower index, as numpy's first occurrence
count_nonzero      count                        add
histogram          counts (after a min/max      add
                   pass when no range is given:
                   two passes)
=================  ===========================  ==============================================

The partial states themselves live in :mod:`bigarr._compute.partials`, the fast exact kernels
(extremes, arg-extremes, nonzero counts and equal-bin counts over tiles of rows) in
:mod:`bigarr._compute.tiles`. Kernels that need temporaries (var, std, count_nonzero) work
through each chunk in tiles of a few leaves, so their scratch memory is fixed per thread
(:data:`SCRATCH_BYTES`) and planned.
Results have numpy's dtypes. Floating results accumulate in float64 (complex128) whatever the
data's precision, so they are at least as accurate as numpy's (the README's accuracy contract;
``tests/test_oracle.py`` states and checks the rules). 0-d and zero-size inputs are computed by
numpy itself.
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import numpy as np

from bigarr._compute.engine import execute
from bigarr._compute.mergetree import Tree
from bigarr._compute.operands import Stream, parse_operand
from bigarr._compute.partials import (
    SUB_BLOCK_BYTES,
    TILE_LEAVES,
    Arg,
    CountNonzero,
    Extreme,
    Kernel,
    Mean,
    Sum,
    Var,
    VarInt,
    merge,
)
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import (
    block_info,
    parse_threads,
    plan_run,
    precheck,
    probe_temporaries,
    wants_block_info,
)
from bigarr._os.geometry import ByteSpan
from bigarr._plan.budget import DEFAULT_BUDGET
from bigarr._plan.chunks import Chunk
from bigarr.errors import ArgumentError, AxisError, DtypeError, ShapeError

__all__ = [
    "argmax",
    "argmin",
    "count_nonzero",
    "max",
    "mean",
    "min",
    "reduce_blocks",
    "std",
    "sum",
    "var",
]

#: Scratch per thread the memory plan reserves for kernels with temporaries, in bytes: a tile
#: of float64 or complex128 temporaries (``TILE_LEAVES * SUB_BLOCK_BYTES // 2``, see
#: :data:`bigarr._compute.partials.TILE_LEAVES`) and as much again for the tile's states and a
#: sub-block's copy.
SCRATCH_BYTES = TILE_LEAVES * SUB_BLOCK_BYTES
_DEFAULT_BUDGET = DEFAULT_BUDGET

#: What a reduction returns, as in numpy: an array, or a numpy scalar for ``axis=None`` without
#: ``keepdims``.
ArrayOrScalar = np.ndarray[Any, Any] | np.generic
_T = TypeVar("_T")


# ---- plumbing ------------------------------------------------------------------------------
def _axes(axis: int | Sequence[int] | None, ndim: int) -> tuple[int, ...]:
    """``axis`` as sorted non-negative ints (numpy's forms: None, an int, a tuple of ints).

    Raises
    ------
    ArgumentError
        For any other form, a list included (numpy refuses lists too).
    AxisError
        For an axis out of range (a numpy.exceptions.AxisError), as numpy.
    ShapeError
        For a repeated axis.
    """
    _check_axis(axis)
    if axis is None:
        return tuple(range(ndim))
    items = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for ax in items:
        if isinstance(ax, bool) or not isinstance(ax, (int, np.integer)):
            raise ArgumentError(f"Expected axis as an int, a tuple of ints or None. Got {axis!r}.")
        if not -ndim <= ax < ndim:
            raise AxisError(int(ax), ndim)
        out.append(int(ax) % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"Expected distinct axes. Got {axis!r}.")
    return tuple(sorted(out))


def _check_axis(axis: Any) -> None:
    if axis is None or isinstance(axis, tuple):
        return
    if isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
        return
    raise ArgumentError(
        f"Expected axis as an int, a tuple of ints or None. Got {axis!r}"
        + (" (a list: numpy refuses those too; pass a tuple)." if isinstance(axis, list) else ".")
    )


def _reduce(
    stream: Stream,
    kernel: Kernel,
    axis: int | Sequence[int] | None,
    *,
    budget: int | str,
    threads: int | None,
    progress: ProgressArg,
    desc: str,
) -> np.ndarray[Any, Any]:
    """Run ``kernel`` over ``stream``'s chunks; return the finished state (reduced axes kept).

    The memory plan counts, besides the chunks in flight, the kernel's scratch per thread, each
    chunk's partial state while it waits to be merged, and the merged state itself (a reduction
    that keeps a long axis, ``sum(axis=1)`` of many rows, holds a result that long).
    """
    shape = stream.shape
    axes = _axes(axis, len(shape))
    nthreads = parse_threads(threads)
    keep = tuple(1 if i in axes else n for i, n in enumerate(shape))
    per_kept = kernel.state_bytes(stream.dtype)
    kept = math.prod(keep)
    # the merged state, the `seen` mask, and the finished result
    fixed = kept * (per_kept + 1 + 8)  # the merged state, `seen`, the finished result
    plan_axis = len(shape) - 1 if stream.contiguous and stream.order == "F" and shape else 0
    temporaries = 0.0
    prefetch = 1
    if shape and plan_axis not in axes:  # each chunk's state is as long as its rows
        reduced = math.prod(shape[i] for i in axes)
        temporaries = per_kept / (builtins.max(reduced, 1) * builtins.max(stream.dtype.itemsize, 1))
    elif shape:  # each chunk's state is as large as the result: one per chunk in flight
        prefetch = 0 if kept * per_kept > SCRATCH_BYTES else 1  # large: no extra in flight
        fixed += (nthreads + prefetch + 1) * kept * per_kept
    scratch = 0 if kernel.scratch_free(stream.dtype, axes) else SCRATCH_BYTES  # per thread
    plan = plan_run(desc, [stream], budget=budget, threads=nthreads, layout="keys",
                    prefetch=prefetch, scratch_bytes=scratch,
                    temporaries=temporaries, fixed_bytes=fixed)
    state: list[np.ndarray[Any, Any]] | None = None
    seen = np.zeros(keep, dtype=bool)
    # Inexact kernels merge in a fixed tree of leaves, whatever the chunks (see Tree).
    tree = None if kernel.exact else Tree(kernel, shape, axes, stream.order)

    def work(chunk: Chunk, blocks: list[np.ndarray[Any, Any]]) -> Any:
        if tree is not None:
            return tree.parts(chunk.key, chunk.depth, blocks[0])
        origin = tuple(k.start for k in chunk.key) if chunk.key else ()
        return kernel.chunk_state(blocks[0], axes, origin)

    chunks = plan.chunks
    with Progress(progress, total_bytes=chunks.nbytes, total_chunks=len(chunks),
                  desc=desc) as bar:
        for chunk, part in execute(plan, work, [stream], progress=bar):
            if tree is not None:
                tree.add(part)
                continue
            if state is None:
                state = [np.empty(keep, dtype=p.dtype) for p in part]
            target = tuple(slice(0, 1) if i in axes else k for i, k in enumerate(chunk.key))
            merge(kernel, state, seen, target, part)
    if tree is not None:
        return tree.finish()
    assert state is not None
    return kernel.finish(tuple(state))


def _shape_result(result: np.ndarray[Any, Any], axes: tuple[int, ...], keepdims: bool,
                  dtype: np.dtype[Any]) -> ArrayOrScalar:
    out = result.astype(dtype, copy=False)
    if not keepdims:
        out = out.reshape(tuple(n for i, n in enumerate(out.shape) if i not in axes))
    if out.ndim == 0:
        return cast(np.generic, out[()])
    return out


def _numpy_dtype(fn: Callable[..., Any], a: Any, **kwargs: Any) -> np.dtype[Any]:
    """The dtype numpy's own ``fn`` gives for ``a``'s dtype and dimensions with ``kwargs``.

    ``fn`` runs on a one-element array of ``a``'s dimensions, so the call raises where numpy's
    would on ``a`` (an axis out of range, a dtype numpy cannot reduce to, an integer ``std``
    that numpy cannot write back).

    Raises
    ------
    AxisError
        Where numpy raises its AxisError (an axis a 0-d array does not have).
    DtypeError
        Where numpy raises a TypeError for these arguments.
    """
    import warnings

    sample = np.zeros((1,) * a.ndim, dtype=a.dtype)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return np.asarray(fn(sample, **kwargs)).dtype
        except np.exceptions.AxisError as exc:  # axis=(0,) of 0-d data, say
            raise AxisError(str(exc)) from None
        except TypeError as exc:
            args = ", ".join(f"{k}={np.dtype(v).name if k == 'dtype' and v is not None else v!r}"
                             for k, v in kwargs.items())
            raise DtypeError(
                f"Expected arguments numpy's {fn.__name__} accepts for {a.dtype} data of "
                f"{a.ndim} dimensions. Got {args}, which numpy refuses ({exc}). Pass a dtype= "
                "numpy can reduce this data to (a float dtype, for instance)."
            ) from None


def _numpy(fn: Callable[..., Any], a: Any, **kwargs: Any) -> ArrayOrScalar:
    """numpy's own answer, for what needs no streaming; its refusals as bigarr errors.

    Raises
    ------
    DtypeError
        Where numpy raises TypeError (no such reduction for the dtype).
    ShapeError
        Where numpy raises ValueError (a zero-size reduction without identity).
    """
    try:
        result: ArrayOrScalar = fn(_plain(a), **kwargs)
        return result
    except np.exceptions.AxisError as exc:
        raise AxisError(str(exc)) from None
    except TypeError as exc:
        raise DtypeError(f"{fn.__name__} of an array of {np.dtype(a.dtype)}: {exc}") from None
    except ValueError as exc:
        raise ShapeError(f"{fn.__name__} of an array of shape {tuple(a.shape)}: {exc}") from None


@contextlib.contextmanager
def _operand(a: Any) -> Iterator[Stream]:
    """``a`` as the engine's stream (see :mod:`bigarr._compute.operands`), closed afterwards."""
    stream = parse_operand(a)
    if np.dtype(stream.dtype).hasobject:  # (numpy's own errors on Python objects are bare)
        stream.close()
        raise DtypeError("Expected bool, numeric or other fixed-size data. Got a dtype with "
                         f"Python objects ({np.dtype(stream.dtype)}), which bigarr does not "
                         "reduce out of core; use numpy on it.")
    try:
        yield stream
    finally:
        stream.close()


def _plain(s: Stream | np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """All of a stream's data (only used for empty operands, where numpy decides)."""
    return s if isinstance(s, np.ndarray) else s.whole()


def _is_empty(s: Stream) -> bool:
    """Nothing to stream: no elements, or elements of no bytes (``dtype=[]``): numpy answers."""
    return s.size == 0 or np.dtype(s.dtype).itemsize == 0


def _direct(a: Stream) -> bool:
    """True when numpy itself computes the result: zero-size and 0-d arrays (one element)."""
    return bool(a.ndim == 0 or _is_empty(a))


@contextlib.contextmanager
def _prepared(a: Any, axis: Any) -> Iterator[Stream]:
    """The stream of ``a`` (closed afterwards), with ``axis`` checked against it as numpy would
    (0-d: numpy's own rule, which accepts 0 and -1 for most functions)."""
    with _operand(a) as stream:
        _check_axis(axis)
        if stream.ndim:
            _axes(axis, stream.ndim)
        yield stream


# ---- public functions ----------------------------------------------------------------------
def sum(
    a: Any,
    axis: int | tuple[int, ...] | None = None,
    dtype: Any = None,
    *,
    keepdims: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> ArrayOrScalar:
    """Sum of array elements over ``axis``, chunk by chunk, like :func:`numpy.sum`.

    The result has numpy's dtype. A floating result is accumulated in float64 (complex128)
    and merged in a fixed pairwise tree, so it is at least as accurate as numpy's and the
    same bits whatever the budget and threads (see the README's accuracy contract).

    Parameters
    ----------
    a
        A :class:`bigarr.memmap`, the path of a ``.npy`` file, a ``numpy.memmap`` or
        ``np.load(mmap_mode=...)`` array (re-mapped from its file), a view of any of these, a
        zarr or dask array, or any in-memory array.
    axis
        ``None`` (all), an int or a tuple of ints.
    dtype
        Result dtype, as in numpy.
    keepdims
        Keep reduced axes as length 1.
    budget
        The most memory the computation may add, in bytes or as a string such as
        ``"256MiB"``: the chunks in flight, the kernels' scratch, and the partial results
        (for a reduction that keeps a long axis, one per chunk in flight plus the merged one).
    threads
        Worker threads (default: the CPUs available).
    progress
        ``None`` (a bar on a TTY), ``True``, ``False``, or callbacks taking ProgressEvent.

    Raises
    ------
    ArgumentError
        For an axis that is not None, an int or a tuple (a list, say).
    BudgetError
        If the budget cannot hold the smallest chunk plan (both numbers quoted).
    DtypeError
        For a ``dtype`` numpy refuses for this data.
    """
    with _prepared(a, axis) as a:
        out_dtype = _numpy_dtype(np.sum, a, axis=axis, dtype=dtype, keepdims=keepdims)
        if _direct(a):
            return _numpy(np.sum, a, axis=axis, dtype=dtype, keepdims=keepdims)
        res = _reduce(a, Sum(dtype, out_dtype), axis, budget=budget, threads=threads,
                      progress=progress, desc="sum")
        return _shape_result(res, _axes(axis, res.ndim), keepdims, out_dtype)


def mean(
    a: Any,
    axis: int | tuple[int, ...] | None = None,
    dtype: Any = None,
    *,
    keepdims: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> ArrayOrScalar:
    """Arithmetic mean over ``axis``, like :func:`numpy.mean`; arguments as :func:`sum`."""
    with _prepared(a, axis) as a:
        out_dtype = _numpy_dtype(np.mean, a, axis=axis, dtype=dtype, keepdims=keepdims)
        if _direct(a):
            return _numpy(np.mean, a, axis=axis, dtype=dtype, keepdims=keepdims)
        res = _reduce(a, Mean(dtype, out_dtype), axis, budget=budget, threads=threads,
                      progress=progress, desc="mean")
        return _shape_result(res, _axes(axis, res.ndim), keepdims, out_dtype)


def _variance(a: Any, axis: Any, dtype: Any, ddof: float, keepdims: bool, root: bool,
              budget: int | str, threads: int | None, progress: ProgressArg) -> ArrayOrScalar:
    fn = np.std if root else np.var
    with _prepared(a, axis) as a:
        out_dtype = _numpy_dtype(fn, a, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)
        if _direct(a):
            return _numpy(fn, a, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims)
        opts: dict[str, Any] = {"budget": budget, "threads": threads, "progress": progress}
        axes = _axes(axis, a.ndim)
        if dtype is not None and np.dtype(dtype).kind in "biu":
            # numpy computes in the integer dtype: a truncated mean, wrapping squared deviations.
            acc = np.dtype(dtype)
            total = _reduce(a, Sum(acc, acc), axis, desc="mean", **opts)
            count = math.prod(a.shape[i] for i in axes)
            with np.errstate(all="ignore"):
                mean_ = np.true_divide(total, count).astype(acc)
                m2 = _reduce(a, VarInt(acc, mean_), axis, desc=fn.__name__, **opts)
                res = (m2 / builtins.max(count - ddof, 0)).astype(acc)
                if root:
                    res = np.sqrt(res).astype(acc)
            return _shape_result(res, axes, keepdims, out_dtype)
        res = _reduce(a, Var(ddof), axis, desc=fn.__name__, **opts)
        return _shape_result(np.sqrt(res) if root else res, axes, keepdims, out_dtype)


def var(
    a: Any,
    axis: int | tuple[int, ...] | None = None,
    dtype: Any = None,
    *,
    ddof: float = 0,
    keepdims: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> ArrayOrScalar:
    """Variance over ``axis``, like :func:`numpy.var`, merged with Chan et al.'s update.

    Each leaf's count, mean and sum of squared deviations are computed in float64 (two-pass,
    shifted by the leaf's first element) and merged in a fixed pairwise tree, which is at least
    as accurate as numpy's two-pass method in the data's own precision. With an integer
    ``dtype=`` the result is numpy's integer computation, exactly. Other arguments as
    :func:`sum`.

    Raises
    ------
    ArgumentError, BudgetError, DtypeError
        As :func:`sum`.
    """
    return _variance(a, axis, dtype, ddof, keepdims, False, budget, threads, progress)


def std(
    a: Any,
    axis: int | tuple[int, ...] | None = None,
    dtype: Any = None,
    *,
    ddof: float = 0,
    keepdims: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> ArrayOrScalar:
    """Standard deviation over ``axis``, like :func:`numpy.std`; see :func:`var`."""
    return _variance(a, axis, dtype, ddof, keepdims, True, budget, threads, progress)


def _extreme(a: Any, axis: Any, keepdims: bool, largest: bool, budget: int | str,
             threads: int | None, progress: ProgressArg) -> ArrayOrScalar:
    fn = np.max if largest else np.min
    with _prepared(a, axis) as a:
        if _direct(a):
            return _numpy(fn, a, axis=axis, keepdims=keepdims)
        res = _reduce(a, Extreme(largest), axis, budget=budget, threads=threads, progress=progress,
                      desc=fn.__name__)
        return _shape_result(res, _axes(axis, res.ndim), keepdims, res.dtype)


def min(
    a: Any,
    axis: int | tuple[int, ...] | None = None,
    *,
    keepdims: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> ArrayOrScalar:
    """Minimum over ``axis``, like :func:`numpy.min` (NaN propagates); arguments as :func:`sum`.

    Raises
    ------
    ValueError
        For a zero-size reduction, as numpy.
    """
    return _extreme(a, axis, keepdims, False, budget, threads, progress)


def max(
    a: Any,
    axis: int | tuple[int, ...] | None = None,
    *,
    keepdims: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> ArrayOrScalar:
    """Maximum over ``axis``, like :func:`numpy.max` (NaN propagates); arguments as :func:`sum`.

    Raises
    ------
    ValueError
        For a zero-size reduction, as numpy.
    """
    return _extreme(a, axis, keepdims, True, budget, threads, progress)


def _arg(a: Any, axis: int | None, keepdims: bool, largest: bool, budget: int | str,
         threads: int | None, progress: ProgressArg) -> ArrayOrScalar:
    fn = np.argmax if largest else np.argmin
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, (int, np.integer))):
        raise ArgumentError(f"Expected axis as an int or None. Got {axis!r}.")
    with _prepared(a, axis) as a:
        if _direct(a):
            return _numpy(fn, a, axis=axis, keepdims=keepdims)
        shape = tuple(a.shape)
        res = _reduce(a, Arg(largest, shape), axis, budget=budget, threads=threads,
                      progress=progress, desc=fn.__name__)
        axes = _axes(axis, len(shape))
        if axis is None and not keepdims:
            return np.intp(res.reshape(-1)[0])
        return _shape_result(res, axes, keepdims, np.dtype(np.intp))


def argmin(
    a: Any,
    axis: int | None = None,
    *,
    keepdims: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> ArrayOrScalar:
    """Index of the minimum, like :func:`numpy.argmin` (flat C-order index for ``axis=None``).

    Ties and NaNs (NaTs) resolve as in numpy: the first occurrence wins, and a NaN is the
    minimum. Other arguments as :func:`sum`.

    Raises
    ------
    ArgumentError
        For an axis that is not None or an int.
    ValueError
        For a zero-size reduction, as numpy.
    """
    return _arg(a, axis, keepdims, False, budget, threads, progress)


def argmax(
    a: Any,
    axis: int | None = None,
    *,
    keepdims: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> ArrayOrScalar:
    """Index of the maximum, like :func:`numpy.argmax`; see :func:`argmin`."""
    return _arg(a, axis, keepdims, True, budget, threads, progress)


def count_nonzero(
    a: Any,
    axis: int | tuple[int, ...] | None = None,
    *,
    keepdims: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> int | ArrayOrScalar:
    """Number of non-zero elements, like :func:`numpy.count_nonzero`; arguments as :func:`sum`."""
    with _prepared(a, axis) as a:
        if _direct(a):
            return _numpy(np.count_nonzero, a, axis=axis, keepdims=keepdims)
        res = _reduce(a, CountNonzero(), axis, budget=budget, threads=threads, progress=progress,
                      desc="count_nonzero")
        if axis is None and not keepdims:
            return int(res.reshape(-1)[0])
        return _shape_result(res, _axes(axis, res.ndim), keepdims, np.dtype(np.intp))


def reduce_blocks(
    func: Callable[..., _T],
    combine: Callable[[_T, _T], _T],
    *inputs: Any,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> _T:
    """Reduce arrays chunk by chunk with your own functions.

    ``func(*blocks)`` maps each chunk's blocks (one per input, in order) to a partial result,
    on worker threads; ``combine(left, right)`` merges two partial results, on the calling
    thread, folding in chunk order: ``combine(combine(p0, p1), p2)`` and so on.

    With one input, chunks follow its memory order (a Fortran-ordered array is cut along its
    last axis); with several, chunks are ranges of rows along axis 0, which all inputs must
    share.

    If ``func`` has a ``block_info`` parameter it is also passed, as a keyword, where its block
    lies (as in dask): a dict with ``"chunk"`` (the chunk's index), ``"rows"`` (its global
    ``(start, stop)`` along axis 0), ``"array-location"`` (its ``(start, stop)`` along every
    axis of the first input) and ``"probe"`` (True only for the call on a probe block below,
    whose result is discarded).

    The budget counts what ``func`` allocates, too: before the run, ``func`` is called once on
    a small probe block (the first rows, about 1 MiB) under :mod:`tracemalloc`, and the chunks
    are sized so that its temporaries and result fit next to the chunks in flight.

    Parameters
    ----------
    func
        Partial result of one chunk's blocks.
    combine
        Merge two partial results (associative; it is applied in chunk order).
    *inputs
        Arrays, :class:`bigarr.memmap` objects or ``.npy`` paths.
    budget, threads, progress
        As :func:`sum`; the budget covers all inputs.

    Returns
    -------
    object
        The combined result; ``func`` of the zero-row blocks when the inputs are empty.

    Raises
    ------
    BudgetError
        If the budget cannot hold the smallest chunk plan.
    ShapeError
        If the inputs do not share their leading length.
    """
    if not inputs:
        raise ArgumentError("reduce_blocks needs at least one input array.")
    streams: list[Stream] = []
    try:
        for x in inputs:
            streams.append(parse_operand(x, by_key=False))
        return cast(_T, _reduce_blocks(func, combine, streams, budget=budget, threads=threads,
                                       progress=progress, temporaries=None))
    finally:
        for s in streams:
            s.close()


def _reduce_blocks(
    func: Callable[..., Any],
    combine: Callable[[Any, Any], Any],
    streams: list[Stream],
    *,
    budget: int | str,
    threads: int | None,
    progress: ProgressArg,
    temporaries: float | None,
    scratch_bytes: int = 0,
    desc: str = "reduce",
) -> Any:
    """:func:`reduce_blocks` over parsed streams (not closed here); ``temporaries=None``
    measures ``func``'s on a probe block; ``desc`` names the run in progress events."""
    first = streams[0]
    if len(streams) == 1:
        first.by_key = True
    else:
        for s in streams[1:]:
            if s.ndim == 0 or first.ndim == 0 or s.shape[0] != first.shape[0]:
                raise ShapeError(
                    "Expected inputs sharing their leading length. Got shapes "
                    f"{[x.shape for x in streams]}."
                )
    if first.ndim == 0 or first.size == 0:
        return func(*[_plain(s) if s.ndim == 0 else s.head(0) for s in streams])
    info = wants_block_info(func)
    nthreads = parse_threads(threads)
    rows = len(streams) > 1 or first.ndim == 1 or first.lazy  # 1-d: rows are records
    primary = builtins.max(streams, key=lambda s: s.nbytes) if rows else first
    options: dict[str, Any] = {"budget": budget, "threads": nthreads,
                               "layout": "rows" if rows else "keys", "primary": primary,
                               "scratch_bytes": scratch_bytes}
    if temporaries is None:
        precheck("reduce_blocks", streams, **options)  # refuse an impossible budget first
        call = func if not info else functools.partial(_probe_call, func, first.shape)
        temporaries, per_call = probe_temporaries(call, streams)
        options["scratch_bytes"] = scratch_bytes + per_call
    plan = plan_run("reduce_blocks", streams, temporaries=temporaries, **options)

    def work(chunk: Chunk, blocks: list[np.ndarray[Any, Any]]) -> Any:
        if info:
            return func(*blocks, block_info=block_info(chunk, first.shape))
        return func(*blocks)

    total: Any = None
    started = False
    chunks = plan.chunks
    with Progress(progress, total_bytes=chunks.nbytes, total_chunks=len(chunks),
                  desc=desc) as bar:
        for _chunk, part in execute(plan, work, streams, progress=bar):
            total = part if not started else combine(total, part)
            started = True
    return total


def _probe_call(func: Callable[..., Any], shape: tuple[int, ...], *blocks: Any) -> Any:
    """``func`` on probe blocks (the leading rows), with their ``block_info``."""
    rows = blocks[0].shape[0] if blocks and np.ndim(blocks[0]) else 0
    probe = Chunk(0, (slice(0, rows), *(slice(0, n) for n in shape[1:])), slice(0, rows),
                  ByteSpan(0, 0))
    return func(*blocks, block_info=block_info(probe, shape, probe=True))
