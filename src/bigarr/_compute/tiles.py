"""Fast exact kernels over the rows of a chunk: extremes, arg-extremes and nonzero counts.

numpy reduces ``axis=0`` of a C-ordered ``(rows, columns)`` block one row at a time: with a few
columns (32 float32 columns are 128 bytes), each inner loop is too short for SIMD, and
``argmax(axis=0)`` even copies its input to make the axis contiguous (issue 17 measured
``argmax`` at 0.10x and ``max`` at 0.5-0.8x the throughput of ``sum``). The functions here give
numpy's exact answers with long inner loops instead:

* :func:`rows_reduce` views ``k`` consecutive rows as one *wide* row of ``k * columns``
  elements, reduces those (a long, vectorised inner loop), then folds the ``k`` column groups.
  Only for ufuncs whose result does not depend on the order (``maximum``, ``minimum``, exact
  integer ``add``);
* :func:`arg_rows` and :func:`arg_flat` find the extreme of every *tile* of rows with
  :func:`rows_reduce` (one pass over the data), then search only the first tile holding each
  column's extreme for its first occurrence, so ties and NaNs resolve exactly as numpy's
  ``argmax``/``argmin`` do (the first occurrence; the first NaN wins);
* :func:`count_nonzero_rows` counts per column through a reused boolean tile summed as uint8;
* :func:`min_max` and :func:`uniform_counts` are ``histogram``'s two passes: both extremes in
  one read, and numpy's equal-bin steps, tile by tile.

Every function takes a C-contiguous block and allocates no more than a tile
(:func:`bigarr._compute.partials.tile_elements` elements) at once, whatever the block's size.

The floating kernels' helpers live here too: :func:`scratch`, each thread's reused buffer for
tile-sized float64 temporaries, and :func:`wide_rows` / :func:`repeat_columns`, the wide-row
view that ``sum``, ``mean`` and ``var`` take of a block with few kept columns.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np

from bigarr._compute import native

__all__ = [
    "arg_flat",
    "arg_rows",
    "count_nonzero_all",
    "count_nonzero_rows",
    "min_max",
    "repeat_columns",
    "rows_reduce",
    "scratch",
    "uniform_counts",
    "wide_rows",
]

_scratch = threading.local()

#: Elements of one wide row: long enough for numpy's vectorised inner loops.
_WIDE = 4096


def _fold(ufunc: np.ufunc, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``ufunc.reduce(rows, axis=-2)`` of a C-contiguous ``(..., n, c)`` array, by wide rows."""
    n, c = rows.shape[-2], rows.shape[-1]
    k = max(1, min(n, _WIDE // max(c, 1)))
    main = n - n % k
    lead = rows.shape[:-2]
    out: np.ndarray[Any, Any] | None = None
    if main:
        wide = rows[..., :main, :].reshape((*lead, main // k, k * c))
        part = ufunc.reduce(wide, axis=-2).reshape((*lead, k, c))
        out = ufunc.reduce(part, axis=-2)
    if main < n:
        rest = ufunc.reduce(rows[..., main:, :], axis=-2)
        out = rest if out is None else ufunc(out, rest)
    assert out is not None
    return out


def rows_reduce(ufunc: np.ufunc, block: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """``ufunc.reduce(block, axis=0)`` of a C-contiguous block with at least one row, as
    ``block.shape[1:]``; ``ufunc`` must not depend on the order (``maximum``, ``minimum``)."""
    rows = block.reshape(block.shape[0], -1)
    return _fold(ufunc, rows).reshape(block.shape[1:])


def _tile_rows(columns: int, tile: int) -> int:
    """Rows of one tile of ``columns`` columns: about ``tile`` elements, a multiple of the rows
    of one wide row where that fits."""
    k = max(1, _WIDE // max(columns, 1))
    rows = max(1, tile // max(columns, 1))
    return max(k, rows - rows % k)


def _first_hits(tiles: np.ndarray[Any, Any], best: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Index of the first tile whose extreme equals ``best`` (is NaN where ``best`` is NaN),
    per column of ``tiles`` ``(T, columns)``."""
    hit = tiles == best
    if tiles.dtype.kind == "f":
        nan = np.isnan(best)
        if nan.any():
            hit |= np.isnan(tiles) & nan
    return np.asarray(hit.argmax(axis=0))


def arg_rows(block: np.ndarray[Any, Any], largest: bool,
             tile: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Extreme and index of its first occurrence along axis 0 of a C-contiguous block.

    Returns ``(value, index)``, each of ``block.shape[1:]``: ``index`` is the row (within the
    block) numpy's ``argmax`` (``argmin``) gives, and ``value`` the element there.
    """
    found = native.arg_rows(block, largest)  # one pass, no temporaries
    if found is not None:
        return found
    ufunc = np.maximum if largest else np.minimum
    arg = np.argmax if largest else np.argmin
    n = block.shape[0]
    rows2 = block.reshape(n, -1)
    c = rows2.shape[1]
    r = _tile_rows(c, tile)
    full = n // r
    parts = []
    if full:
        parts.append(_fold(ufunc, rows2[:full * r].reshape(full, r, c)))
    if full * r < n:
        parts.append(_fold(ufunc, rows2[full * r:])[None])
    extremes = parts[0] if len(parts) == 1 else np.concatenate(parts)
    best = ufunc.reduce(extremes, axis=0)
    first = _first_hits(extremes, best)
    index = np.empty(c, dtype=np.intp)
    for t in np.unique(first):
        cols = np.flatnonzero(first == t)
        lo = int(t) * r
        sub = rows2[lo:lo + r][:, cols]  # one tile's rows of these columns (a small copy)
        index[cols] = lo + arg(sub, axis=0)
    value = rows2[index, np.arange(c)]
    return value.reshape(block.shape[1:]), index.reshape(block.shape[1:])


def arg_flat(block: np.ndarray[Any, Any], largest: bool, tile: int) -> int:
    """Flat (C-order) index of the first extreme of a C-contiguous block, as numpy's
    ``argmax`` (``argmin``) without an axis gives it."""
    ufunc = np.maximum if largest else np.minimum
    arg = np.argmax if largest else np.argmin
    flat = block.reshape(-1)
    n = flat.size
    r = _tile_rows(1, tile)
    full = n // r
    if full <= 1:
        return int(arg(flat))
    extremes = _fold(ufunc, flat[:full * r].reshape(full, r, 1))[:, 0]
    if full * r < n:
        extremes = np.append(extremes, ufunc.reduce(flat[full * r:]))
    best = ufunc.reduce(extremes)
    t = int(_first_hits(extremes[:, None], np.asarray(best)[None])[0])
    lo = t * r
    return lo + int(arg(flat[lo:lo + r]))


def count_nonzero_rows(block: np.ndarray[Any, Any], tile: int) -> np.ndarray[Any, Any]:
    """``np.count_nonzero(block, axis=0)`` of a C-contiguous block, as ``block.shape[1:]``."""
    counted = native.count_rows(block)  # one pass, no temporaries
    if counted is not None:
        return counted
    n = block.shape[0]
    rows2 = block.reshape(n, -1)
    c = rows2.shape[1]
    k = max(1, _WIDE // max(c, 1))
    r = max(1, min(255, tile // max(k * c, 1))) * k  # at most 255 wide rows: uint8 sums
    counts = np.zeros(c, dtype=np.intp)
    mask = np.empty((min(r, n), c), dtype=bool)
    for lo in range(0, n, r):
        part = rows2[lo:lo + r]
        m = mask[:part.shape[0]]
        np.not_equal(part, 0, out=m)
        if part.shape[0] % k == 0:
            wide = m.view(np.uint8).reshape(-1, k * c)
            sums = np.add.reduce(wide, axis=0, dtype=np.uint8)
            counts += sums.reshape(k, c).sum(axis=0, dtype=np.intp)
        else:
            counts += np.count_nonzero(m, axis=0)
    return counts.reshape(block.shape[1:])


def count_nonzero_all(block: np.ndarray[Any, Any]) -> int:
    """``np.count_nonzero(block)`` of a C-contiguous block: the native per-column count over
    rows of 64 elements (one vectorised pass; numpy's own count of floats runs at about half
    the speed of a sum), numpy's for the rest and where the native kernel does not apply."""
    flat = block.reshape(-1)
    main = flat.size - flat.size % 64
    counted = native.count_rows(flat[:main].reshape(-1, 64)) if main else None
    if counted is None:
        return int(np.count_nonzero(block))
    return int(counted.sum()) + int(np.count_nonzero(flat[main:]))


def min_max(flat: np.ndarray[Any, Any], tile: int) -> tuple[Any, Any]:
    """``(flat.min(), flat.max())`` of a non-empty 1-d array in one pass over memory: both are
    taken tile by tile, while the tile is in cache (NaN propagates, as numpy's)."""
    both = native.min_max(flat)  # one pass, no temporaries
    if both is not None:
        return both
    step = max(1, tile)
    lows, highs = [], []
    for lo in range(0, flat.size, step):
        t = flat[lo:lo + step]
        lows.append(t.min())
        highs.append(t.max())
    return np.minimum.reduce(np.asarray(lows)), np.maximum.reduce(np.asarray(highs))


def _unsigned_subtract(a: Any, b: Any) -> Any:
    """``a - b`` exactly as numpy's histogram computes it (signed integers subtract into their
    unsigned type, so an int16 range does not overflow); a copy of numpy's private helper."""
    unsigned = {np.byte: np.ubyte, np.short: np.ushort, np.intc: np.uintc, np.int_: np.uint,
                np.longlong: np.ulonglong}
    dt = np.result_type(a, b)
    target = unsigned.get(dt.type)
    if target is None:
        return np.subtract(a, b, dtype=dt)
    return np.subtract(np.asarray(a, dtype=dt), np.asarray(b, dtype=dt), casting="unsafe",
                       dtype=target)


#: Most bins counted by comparing with each inner edge (``n - 1`` vectorised passes of a compare
#: and a count, against about a dozen passes for an index per element and ``bincount``).
_COUNT_BINS = 16

#: The same for the native kernel, which counts the values at or above each of ``n + 1``
#: thresholds in one pass (vectorised compares in registers, in cache-sized blocks): up to about
#: 32 bins that beats its index per element (measured in memory, one thread, float32, CPU time on
#: a loaded machine: 10 bins 7.5-8.7 GB/s, 16 bins 5.2-6.4, 32 bins 3.5-3.7, 48 bins 2.1-2.2;
#: by index 3.2-4.0 up to 32 bins, 2.4-3.7 at 48, 2.9 at 100, 2.3 at 1000).
_NATIVE_COUNT_BINS = 32


def _estimate_error(first: Any, last: Any, n: int, edges: np.ndarray[Any, Any]) -> float:
    """A bound, in bins, on how far numpy's first index estimate (and the float64 one of the
    native kernel) and the rounded edges can stray from their exact places together; inf where
    no bound is known (edges not float32/float64, a range not finite or empty).

    numpy's estimate ``int((v - first) / (last - first) * n)``, computed in the edges' dtype
    (unit roundoff ``u``), is off the exact position by at most about ``u * n * (4 + |first| /
    (last - first))`` bins, and each rounded edge is off its exact place by at most about ``u *
    n * (1 + (|first| + |last|) / (last - first))`` bins: together at most ``u * n * (5 + 2 *
    (|first| + |last|) / (last - first))``, for bins wider than the smallest normal number
    (16 times).
    """
    if edges.dtype.kind != "f" or edges.dtype.itemsize > 8:
        return math.inf
    u = float(np.finfo(edges.dtype).eps) / 2
    low, high = float(first), float(last)
    width = high - low
    if not (np.isfinite(low) and np.isfinite(high) and width > 0):
        return math.inf
    if width / n < float(np.finfo(edges.dtype).tiny) * 16:
        # bins not far wider than the smallest normal number: rounding below it is absolute,
        # not relative (float32 edges over 0 .. 3e-44 coincide), so the bound above does not
        # hold; above it, a subnormal step is at most a unit roundoff of a bin
        return math.inf
    return u * n * (5 + 2 * (abs(low) + abs(high)) / width)


def _estimate_within_one(first: Any, last: Any, n: int, edges: np.ndarray[Any, Any]) -> bool:
    """True when numpy's first index estimate is within one bin of every value's true bin.

    When the bound of :func:`_estimate_error` is well under half a bin, only one edge is near
    any value, so the estimate and the bin that the rounded edges give differ by at most one,
    and numpy's two corrections (one down, one up; edges that do not decrease) land exactly in
    that bin: ``#{i in 1..n-1: edges[i] <= v}`` for a kept value.
    """
    return _estimate_error(first, last, n, edges) < 0.125


def _sure_margin(first: Any, last: Any, n: int, edges: np.ndarray[Any, Any]) -> float:
    """How far (in bins) the native kernel's float64 estimate must be from a whole number for
    its floor to be the bin without numpy's corrections: eight times :func:`_estimate_error`,
    at least 1/1024 of a bin; 1.0 (no estimate is sure: every value is corrected) where that
    bound is not known to be under an eighth of a bin."""
    err = _estimate_error(first, last, n, edges)
    return max(8 * err, 1 / 1024) if err < 0.125 else 1.0


def _count_by_edges(values: np.ndarray[Any, Any], edges: np.ndarray[Any, Any],
                    n: int) -> np.ndarray[Any, Any]:
    """Counts of ``n`` bins of kept ``values`` (in the edges' dtype) from the number of values at
    or above each inner edge (the last bin closed, as numpy's)."""
    above = np.empty(n + 1, dtype=np.intp)
    above[0], above[n] = values.size, 0
    mask = np.empty(values.shape, dtype=bool)
    for i in range(1, n):
        np.greater_equal(values, edges[i], out=mask)
        above[i] = np.count_nonzero(mask)
    return above[:n] - above[1:]


def uniform_counts(flat: np.ndarray[Any, Any], first: Any, last: Any, n: int,
                   edges: np.ndarray[Any, Any], tile: int) -> np.ndarray[Any, Any]:
    """Counts of ``n`` equal bins from ``first`` to ``last`` (numpy's outer edges, as its
    ``_get_outer_edges`` returns them) with bin ``edges``, as ``np.histogram`` counts them.

    With few bins, and rounding that cannot move numpy's index estimate by more than one bin
    (:func:`_estimate_within_one`), a tile whose values are all in range is counted by comparing
    with each inner edge: numpy's corrections give exactly that bin there. Otherwise numpy's own
    fast path for equal bins on the same values (so every element lands in numpy's bin, rounding
    included), without its per-block compaction and fancy-index updates:
    out-of-range elements (and NaN) go to an extra bin that is dropped, and numpy's two index
    corrections (``value < edges[i]``: one down; else ``value >= edges[i + 1]`` and not the
    last bin: one up) are taken from the first estimate at once, which gives numpy's indices
    when the edges do not decrease (checked; otherwise numpy's steps are taken in order).
    """
    counts = np.zeros(n + 1, dtype=np.intp)
    if edges.dtype.kind == "f" and not np.isfinite(edges).all():
        # numpy's own edges overflowed (a float32 range near its largest number gives a NaN
        # edge): numpy's histogram, tile by tile, whatever it makes of them
        for lo in range(0, flat.size, max(1, tile)):
            with np.errstate(all="ignore"):
                counts[:n] += np.histogram(flat[lo:lo + tile], bins=n, range=(first, last))[0]
        return counts[:n]
    denom = _unsigned_subtract(last, first)
    upper = np.append(edges[1:n], np.inf).astype(edges.dtype)  # no step up from the last bin
    monotone = bool(np.all(edges[1:] >= edges[:-1]))
    within = monotone and _estimate_within_one(first, last, n, edges)
    by_edges = within and n <= _COUNT_BINS
    if monotone and native.hist_uniform(flat, first, last, denom, n, edges, upper, counts,
                                        fast=within,
                                        by_edges=within and n <= _NATIVE_COUNT_BINS,
                                        margin=_sure_margin(first, last, n, edges)):
        return counts[:n]  # the same steps, fused in one pass
    step = max(1, tile)
    for lo in range(0, flat.size, step):
        t = flat[lo:lo + step]
        keep = t >= first
        keep &= t <= last
        kept = bool(keep.all())
        values = t.astype(edges.dtype, copy=False)
        if kept and by_edges:
            counts[:n] += _count_by_edges(values, edges, n)
            continue
        if not kept:  # a kept value in their place, so every index below is in range
            values = np.where(keep, values, values.dtype.type(edges[0]))
        with np.errstate(invalid="ignore", over="ignore"):
            f = _unsigned_subtract(values, first)
            f /= denom
            f *= n
            np.minimum(f, n - 1, out=f)  # numpy's `indices[indices == n] -= 1`, before the cast
            index = f.astype(np.intp)
        if monotone:
            down = values < np.take(edges, index)
            up = values >= np.take(upper, index)
            index += up.view(np.int8) - down.view(np.int8)
        else:
            index -= values < edges[index]
            up = values >= edges[index + 1]
            up &= index != n - 1
            index += up
        if not kept:
            index[~keep] = n
        counts += np.bincount(index, minlength=n + 1)
    return counts[:n]


# ---- tiles of float64 temporaries, wide rows -------------------------------------------------
def scratch(shape: tuple[int, ...], dtype: Any) -> np.ndarray[Any, Any]:
    """A temporary of ``shape`` and ``dtype`` in this thread's reused buffer.

    Kernels write their tile-sized temporaries here instead of allocating each one (a fresh
    allocation of a few hundred KiB is page-faulted in anew each time). The buffer belongs to
    the calling thread and is valid until its next call; it grows to the largest tile asked for.
    """
    dt = np.dtype(dtype)
    size = math.prod(shape) * dt.itemsize
    buf: np.ndarray[Any, Any] | None = getattr(_scratch, "buf", None)
    if buf is None or buf.nbytes < size:
        buf = _scratch.buf = np.empty(max(size, 64), dtype=np.uint8)
    out: np.ndarray[Any, Any] = buf[:size].view(dt).reshape(shape)
    return out


def wide_rows(block: np.ndarray[Any, Any],
               axes: tuple[int, ...]) -> tuple[int, int, int, int] | None:
    """``(p, n, c, k)`` when ``block`` (real, C-contiguous) is reduced along one axis of ``n``
    with ``c`` kept elements after it, few enough that ``k >= 2`` rows make one wide row of at
    most 1024 elements (``k`` divides ``n``); else None."""
    if (len(axes) != 1 or block.dtype.kind not in "biuf" or not block.flags.c_contiguous
            or axes[0] == block.ndim - 1):
        return None
    (a,) = axes
    p, n, c = math.prod(block.shape[:a]), block.shape[a], math.prod(block.shape[a + 1:])
    if c == 0 or n < 2:
        return None
    for k in range(min(n, 1024 // c), 1, -1):
        if n % k == 0:
            return p, n, c, k
    return None


def repeat_columns(row: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
    """``(p, 1, c)`` repeated ``k`` times along its last axis, as ``(p, 1, k * c)`` (the shift or
    mean of one wide row; ``np.tile``'s result, without its Python overhead)."""
    p, _, c = row.shape
    return np.broadcast_to(row, (p, k, c)).reshape(p, 1, k * c)
