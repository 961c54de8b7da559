"""``histogram``: numpy's counts and edges, streamed in two passes (range, then counts), or
one when the range is given.

The counts are added chunk by chunk (:func:`bigarr._compute.reductions._reduce_blocks`); equal
bins are counted by :func:`bigarr._compute.tiles.uniform_counts` (the native kernels, or numpy's
own equal-bin steps, tile by tile), edges given as a sequence and weights by ``np.histogram``
per chunk.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable, Sequence
from typing import Any, cast

import numpy as np

from bigarr._compute.partials import tile_elements
from bigarr._compute.progress import ProgressArg
from bigarr._compute.reductions import (
    _DEFAULT_BUDGET,
    _direct,
    _numpy,
    _operand,
    _plain,
    _reduce_blocks,
)
from bigarr._compute.tiles import min_max, uniform_counts
from bigarr._plan.budget import parse_budget
from bigarr.errors import (
    ArgumentError,
    ArgumentValueError,
    BudgetError,
    ShapeError,
    UnsupportedError,
)

__all__ = ["PASSES", "histogram"]

#: The names of the two runs (in progress events) of a histogram with an integer ``bins`` and
#: no ``range``: the documented 2-pass plan, the range first, then the counts.
PASSES = ("histogram pass 1 of 2: range (min, max)", "histogram pass 2 of 2: counts")


def histogram(
    a: Any,
    bins: int | Sequence[float] = 10,
    range: tuple[float, float] | None = None,
    *,
    density: bool = False,
    weights: Any = None,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Histogram of all elements, like :func:`numpy.histogram`, with the same bin edges.

    With an integer ``bins`` and no ``range``, the plan is two passes, by design: a first pass
    finds the minimum and maximum (as numpy does; both in one read of each chunk, at the speed
    of a ``sum``), so the edges are numpy's exactly, then a second pass counts; progress reports
    the two runs by name (:data:`PASSES`). One pass cannot give numpy's counts: the edges
    depend on the global extremes, and which bin an element near an edge falls in depends on
    how numpy rounds that edge, so counts taken against provisional bins cannot be rebinned
    exactly. Pass ``range=`` to count in one pass. Equal bins of float32/float64 data are
    counted by the native kernels where rounding provably cannot move a value across an edge
    (up to 32 bins, as the number of values at or above each edge, in one vectorised pass;
    beyond, by a bin index per element), else with numpy's own equal-bin steps; edges given as
    a sequence, and weights, with ``np.histogram`` per chunk.

    Parameters
    ----------
    a
        The data (flattened).
    bins
        Number of equal-width bins (an int, or any 0-d integer such as ``np.array(10)``), or a
        monotonic sequence of edges.
    range
        ``(low, high)`` of the bins; default: the data's minimum and maximum.
    density
        Return probability densities rather than counts.
    weights
        An array of ``a``'s shape (mapped or in memory) weighting each element.
    budget, threads, progress
        As :func:`sum`; the budget covers ``a`` and ``weights`` together.

    Raises
    ------
    ArgumentError
        For 0-d ``bins`` that are not integers (``2.5``), as numpy refuses them.
    ArgumentValueError
        Where numpy raises ValueError (it is one), with numpy's meaning: ``bins`` not
        positive, edges not 1-d or not increasing, a ``range`` not finite or with ``max`` below
        ``min`` (all refused before any data is read), and, with no ``range``, data whose
        extremes are not finite (NaN or inf) or too far apart for finite bins of its dtype
        (float16 spanning its whole range).
    UnsupportedError
        For string ``bins`` (``"auto"`` etc.), which need all the data at once.
    """
    if isinstance(bins, str):
        raise UnsupportedError(
            f"Expected bins as an int or a sequence of edges. Got {bins!r}: estimators like "
            "'auto' need all the data at once; compute edges first, e.g. with "
            "np.histogram_bin_edges on a sample."
        )
    if np.ndim(bins) == 0:  # numpy treats any 0-d integer (np.array(10) too) as a count
        try:
            bins = operator.index(bins)  # type: ignore[arg-type]
        except TypeError:
            raise ArgumentError(
                f"Expected bins as an integer, a string, or an array of edges. Got {bins!r}."
            ) from None
    if np.ndim(bins) == 1:  # edges given: numpy checks and copies them whole, as does each chunk
        _check_edges_fit(np.size(bins), budget)
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(_operand(a))
        w = None if weights is None else stack.enter_context(_operand(weights))
        if w is not None and tuple(w.shape) != tuple(a.shape):  # numpy's ValueError, up front
            raise ShapeError(f"weights should have the same shape as a. Got weights of shape "
                             f"{tuple(w.shape)} for a of shape {tuple(a.shape)}.")
        # numpy's own checks of bins and range, on no data: refused before any data is read
        _edges(np.zeros(0, np.uint8 if a.dtype == np.bool_ else a.dtype), bins, range, "")
        if _direct(a):
            try:
                return cast(tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], _numpy(
                    np.histogram, a, bins=bins, range=range, density=density,
                    weights=None if w is None else _plain(w)))
            except ShapeError as exc:  # numpy's ValueError, for the data's range
                raise ArgumentValueError(str(exc)) from None
            except IndexError:  # numpy's bin index overflows: a range wider than the dtype
                raise _too_wide() from None
        inputs = [a] if w is None else [a, w]
        # numpy bins bool data as uint8 (False 0, True 1); so does every step here.
        data: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]] = (
            (lambda b: b.astype(np.uint8)) if a.dtype == np.bool_ else (lambda b: b))
        tile = tile_elements()
        auto = range is None and isinstance(bins, (int, np.integer))
        if auto:
            # numpy's autodetected range is (a.min(), a.max()) as scalars of a's dtype; the same
            # range gives the same edges and the same bin for every element. One pass finds
            # both (tile by tile: one read of each chunk), then a second pass counts.
            range = _reduce_blocks(
                lambda b: min_max(data(b).ravel(order="K"), tile),
                lambda p, q: (np.minimum(p[0], q[0]), np.maximum(p[1], q[1])),  # NaN propagates
                [a], budget=budget, threads=threads, progress=progress, temporaries=None,
                desc=PASSES[0],
            )
        edges = _edges(data(np.zeros(0, dtype=a.dtype)), bins, range,
                       " (the range found in the data, its minimum and maximum; pass a "
                       "finite range= that fits the dtype)" if auto else "")
        n_equal = int(bins) if isinstance(bins, (int, np.integer)) else 0
        uniform = n_equal > 0 and w is None and range is not None
        if uniform:
            assert range is not None
            first, last = range  # numpy's outer edges (its _get_outer_edges), as it gets them
            if first == last:
                first, last = first - 0.5, last + 0.5
            with np.errstate(over="ignore"):
                if edges.dtype.kind == "f" and not np.isfinite(
                        np.subtract(last, first, dtype=edges.dtype)):
                    raise _too_wide()

        def per_chunk(*blocks: np.ndarray[Any, Any]) -> Any:
            if uniform:  # numpy's equal-bin path, step for step, tile by tile
                flat = data(blocks[0]).ravel(order="K")
                return uniform_counts(flat, first, last, n_equal, edges, tile)
            weight = blocks[1] if len(blocks) > 1 else None
            return np.histogram(data(blocks[0]), bins=bins, range=range, weights=weight)[0]

        # np.histogram ravels its input (a copy of a chunk that is not C-contiguous) and, with
        # bin edges given, sorts it: its temporaries are measured like any function's.
        for s in inputs:
            s.by_key = False
        counts = _reduce_blocks(per_chunk, operator.add, inputs, budget=budget,
                                threads=threads, progress=progress, temporaries=None,
                                desc=PASSES[1] if auto else "histogram")
        if density:
            db = np.diff(edges).astype(float)
            return counts / db / counts.sum(), edges
        return counts, edges


#: Copies of an array of edges numpy's histogram holds at once (its checks, the edges as float,
#: a chunk's ``searchsorted`` against them, and the counts): what a long array of edges costs.
_EDGE_COPIES = 4


def _check_edges_fit(n_edges: int, budget: int | str | None) -> None:
    """Refuse, before anything is copied, edges whose copies alone exceed the budget.

    Raises
    ------
    BudgetError
        With both numbers.
    """
    total = parse_budget(budget)
    need = _EDGE_COPIES * 8 * int(n_edges)
    if need > total:
        raise BudgetError(
            f"histogram with {n_edges} edges needs at least {need} bytes for them ({_EDGE_COPIES} "
            f"float64 copies: numpy's checks, the counts and each chunk's search), but the budget "
            f"is {total} bytes. Raise budget= to at least {need}, or pass fewer edges."
        )


def _too_wide() -> ArgumentValueError:
    """The error for a range whose width overflows its dtype (data at +-1e308): numpy's own
    histogram fails there with an IndexError from an overflowed bin index."""
    return ArgumentValueError(
        "histogram: the range is wider than the largest finite number of the bins' dtype, so "
        "no bin has a finite width; pass a narrower range= (or scale the data)")


def _edges(empty: np.ndarray[Any, Any], bins: Any, range: Any, note: str) -> np.ndarray[Any, Any]:
    """numpy's bin edges for ``bins`` and ``range`` (computed on no data); numpy's ValueError
    (bins not positive or not increasing, a range not finite or reversed, bins too narrow for
    the dtype) as :class:`ArgumentValueError`, with its message."""
    try:
        with np.errstate(all="ignore"):
            return np.histogram(empty, bins=bins, range=range)[1]
    except ValueError as exc:
        raise ArgumentValueError(f"histogram: {exc}{note}") from None
