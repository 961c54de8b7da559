"""``histogram``: numpy's counts and edges, streamed in two passes (range, then counts).

The counts are added chunk by chunk (:func:`bigarr._compute.reductions._reduce_blocks`); equal
bins are counted by :func:`bigarr._compute.tiles.uniform_counts` (numpy's own equal-bin steps,
tile by tile), edges given as a sequence and weights by ``np.histogram`` per chunk.
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
from bigarr.errors import ArgumentError, UnsupportedError

__all__ = ["histogram"]


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

    With an integer ``bins`` and no ``range``, the data is read twice: a first pass finds the
    minimum and maximum (as numpy does; both in one read of each chunk), so the edges are
    numpy's exactly, then a second pass counts (progress reports two runs). One pass cannot
    give numpy's counts: the edges depend on the global extremes, and which bin an element
    near an edge falls in depends on how numpy rounds that edge, so counts taken against
    provisional bins cannot be rebinned exactly. Equal bins are counted tile by tile in
    numpy's bins (by comparison with each inner edge where rounding provably cannot move a
    value across one, else with numpy's own ``bincount`` steps); edges given as a sequence,
    and weights, with ``np.histogram`` per chunk.

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
    UnsupportedError
        For string ``bins`` (``"auto"`` etc.), which need all the data at once.
    ValueError
        As numpy, for a range that is not finite or bins that are not increasing.
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
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(_operand(a))
        w = None if weights is None else stack.enter_context(_operand(weights))
        if _direct(a):
            return cast(tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]], _numpy(
                np.histogram, a, bins=bins, range=range, density=density,
                weights=None if w is None else _plain(w)))
        inputs = [a] if w is None else [a, w]
        # numpy bins bool data as uint8 (False 0, True 1); so does every step here.
        data: Callable[[np.ndarray[Any, Any]], np.ndarray[Any, Any]] = (
            (lambda b: b.astype(np.uint8)) if a.dtype == np.bool_ else (lambda b: b))
        tile = tile_elements()
        if range is None and isinstance(bins, (int, np.integer)):
            # numpy's autodetected range is (a.min(), a.max()) as scalars of a's dtype; the same
            # range gives the same edges and the same bin for every element. One pass finds
            # both (tile by tile: one read of each chunk), then a second pass counts.
            range = _reduce_blocks(
                lambda b: min_max(data(b).ravel(order="K"), tile),
                lambda p, q: (np.minimum(p[0], q[0]), np.maximum(p[1], q[1])),  # NaN propagates
                [a], budget=budget, threads=threads, progress=progress, temporaries=None,
            )
        edges = np.histogram(data(np.zeros(0, dtype=a.dtype)), bins=bins, range=range)[1]
        n_equal = int(bins) if isinstance(bins, (int, np.integer)) else 0
        uniform = n_equal > 0 and w is None and range is not None
        if uniform:
            assert range is not None
            first, last = range  # numpy's outer edges (its _get_outer_edges), as it gets them
            if first == last:
                first, last = first - 0.5, last + 0.5

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
                                threads=threads, progress=progress, temporaries=None)
        if density:
            db = np.diff(edges).astype(float)
            return counts / db / counts.sum(), edges
        return counts, edges
