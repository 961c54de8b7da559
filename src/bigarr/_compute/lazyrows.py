"""Row selections of lazy expressions: ``x[a:b:step]`` and ``x[i]``, read only where needed.

A row slice of an expression whose chunks are its inputs' rows is *pushed down* to the inputs
(:func:`take_rows`): ``(x - x.mean(0))[10:-5]`` becomes ``x[10:-5] - x.mean(0)``, whose leaf
``x[10:-5]`` is a :class:`~bigarr._compute.lazynodes.Leaf` with a *window* ``(start, step,
count)`` of its source's rows. Its stream (:func:`window_stream`) is a view of those rows (a
strided view for a step: the engine reads and releases the pages it touches), or, for zarr and
dask sources, reads of them; so a pass reads only the selected rows, and a reduction inside the
expression (``x.mean(0)``, over all of ``x``) is not changed. Elementwise operations push the
slice into their operands cut by rows (a broadcast operand stays as it is); a reduction that
keeps axis 0 pushes it into its child; a column selection too. A scan needs the rows before the
slice: ``cumsum``/``cumprod`` rows from the first (``x.cumsum(0)[:b]``), and ``diff`` with a
step of 1, push down (the ``n`` rows a ``diff`` eats are added to its window); other scans and
filters (whose rows are known only on evaluation) are refused, naming the way out.

A value used whole (a reduction over axis 0, ...) is sliced as it is, by an
:class:`~bigarr._compute.lazynodes.Index` with ``rows``; an integer row ``x[i]`` is the window
of one row, then that row taken whole (so ``x[i]`` is small and evaluated in memory).
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

import numpy as np

from bigarr._compute.lazynodes import (
    Const,
    Filter,
    Index,
    Leaf,
    Node,
    Op,
    Reduce,
    Scan,
    frame,
    rowed,
)
from bigarr._compute.operands import Stream
from bigarr.errors import RegionError, UnsupportedError

__all__ = ["Window", "parse_row", "take_rows", "window_slice", "window_stream"]

Window = tuple[int, int, int]
"""Rows ``start, start + step, ...``, ``count`` of them: ``(start, step, count)``."""

EMPTY: Window = (0, 1, 0)


def parse_row(key: slice | int | np.integer[Any], n: int) -> Window:
    """The window of ``key`` (a slice, or an int row, numpy's negative indices included) over
    ``n`` rows.

    Raises
    ------
    RegionError
        For an int row outside ``-n .. n - 1`` (an ``IndexError``, as numpy's).
    ArgumentValueError
        For a slice step of 0 (a ``ValueError``, as numpy's).
    """
    if isinstance(key, slice):
        if key.step is not None and int(key.step) == 0:
            from bigarr.errors import ArgumentValueError

            raise ArgumentValueError("Expected a slice step other than 0. Got 0.")
        start, stop, step = key.indices(n)
        count = len(range(start, stop, step))
        return (start, step, count) if count else EMPTY
    i = int(key)
    if not -n <= i < n:
        raise RegionError(f"Index {i} is out of bounds for axis 0 with size {n}.")
    return (i % n, 1, 1)


def window_slice(window: Window) -> slice:
    """``window`` as a slice of the rows it is taken from."""
    start, step, count = window
    if not count:
        return slice(0, 0)
    stop = start + count * step
    return slice(start, stop if stop >= 0 else None, step)


def _compose(outer: Window, inner: Window) -> Window:
    """The window ``inner`` of the rows ``outer`` selects, as a window of the source."""
    s0, st0, _ = outer
    s1, st1, c1 = inner
    return (s0 + s1 * st0, st0 * st1, c1) if c1 else EMPTY


# One leaf per (input, window): the same slice written twice is one stream, read once.
_LEAVES: weakref.WeakKeyDictionary[Leaf, dict[Window, Leaf]] = weakref.WeakKeyDictionary()


def _leaf(leaf: Leaf, window: Window) -> Leaf:
    full = (0, 1, leaf.shape[0]) if leaf.window is None else leaf.window
    new = _compose(full, window)
    if new == (0, 1, leaf.shape[0]) and leaf.window is None:
        return leaf
    base = leaf
    cache = _LEAVES.setdefault(base, {})
    if new not in cache:
        cache[new] = dataclasses.replace(leaf, shape=(new[2], *leaf.shape[1:]), window=new)
    return cache[new]


def _refuse(what: str) -> UnsupportedError:
    return UnsupportedError(
        f"Expected a row slice of an expression over its inputs' rows. Got a row slice of "
        f"{what}: write that expression to a file with .to_npy() first and slice the file, or "
        "slice the inputs before it."
    )


def take_rows(node: Node, window: Window, memo: dict[int, Node] | None = None) -> Node:
    """``node[window_slice(window)]``, pushed down to the inputs (see the module docstring).

    Raises
    ------
    UnsupportedError
        For a slice of a filter (``x[mask]``), of a ``cumsum``/``cumprod`` not starting at
        the first row or with a step, or of a ``diff`` with a step.
    """
    memo = {} if memo is None else memo
    if id(node) in memo:
        return memo[id(node)]
    count = window[2]
    shape = (count, *node.shape[1:])
    out: Node
    if isinstance(node, Const):
        out = Const(shape, node.dtype, np.asarray(node.value)[window_slice(window)])
    elif frame(node) is None:  # a value used whole: sliced as it is
        out = Index(shape, node.dtype, node, (), window_slice(window))
    elif isinstance(node, Leaf):
        out = _leaf(node, window)
    elif isinstance(node, Op):
        args = tuple(take_rows(a, window, memo) if rowed(node, a) else a for a in node.args)
        out = dataclasses.replace(node, shape=shape, args=args)
    elif isinstance(node, (Index, Reduce)):  # a column selection, a reduction keeping axis 0
        out = dataclasses.replace(node, shape=shape, child=take_rows(node.child, window, memo))
    elif isinstance(node, Scan):
        start, step, _ = window
        rows = node.child.shape[0]
        if node.kind == "diff":
            if step != 1 and count > 1:
                raise _refuse(f"a diff with a step of {step}")
            inner = (start, 1, min(count + node.n, rows)) if count else EMPTY
        else:
            if count and (start != 0 or (step != 1 and count > 1)):
                raise _refuse(f"a {node.kind} not from its first row or with a step "
                              f"(x.{node.kind}(0)[:b] is supported)")
            inner = (0, 1, count)
        out = dataclasses.replace(node, shape=shape,
                                  child=take_rows(node.child, inner, memo))
    else:
        assert isinstance(node, Filter)
        raise _refuse("a filtered expression (x[mask], whose rows are known only on "
                      "evaluation)")
    memo[id(node)] = out
    return out


def window_stream(stream: Stream, window: Window) -> Stream:
    """``stream`` narrowed to the rows of ``window``: a view of a mapped or in-memory array
    (whose pages the engine hints and releases as any view's), or reads of just those rows of
    a zarr or dask source (on their chunk grid, mapped to the window's rows)."""
    start, step, count = window
    if stream.array is not None:
        stream.array = stream.array[window_slice(window)]
        stream.name = f"{stream.name or stream.kind} rows {_describe(window)}"
        return stream
    read, grid = stream.read, stream.grid
    assert read is not None
    rest = stream.lazy_shape[1:]

    def narrowed(key: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        rows = key[0] if key else slice(0, count)
        a, b, _ = rows.indices(count)
        if b <= a:
            return np.empty((0, *rest), dtype=stream.lazy_dtype)[(slice(None), *key[1:])]
        first, last = start + a * step, start + (b - 1) * step
        if step > 0:
            return read((slice(first, last + 1, step), *key[1:]))
        block = read((slice(last, first + 1, -step), *key[1:]))
        return np.ascontiguousarray(block[::-1])

    stream.read = narrowed
    stream.lazy_shape = (count, *rest)
    if grid is not None:
        g = np.asarray(grid, dtype=np.int64)
        cuts = -((start - g) // step) if step > 0 else (start - g) // -step + 1
        stream.grid = tuple(int(c) for c in np.unique(np.clip(np.r_[0, cuts, count],
                                                               0, count)))
    stream.name = f"{stream.name or stream.kind} rows {_describe(window)}"
    return stream


def _describe(window: Window) -> str:
    s = window_slice(window)
    stop = "" if s.stop is None else s.stop
    return f"{s.start}:{stop}" + ("" if s.step in (None, 1) else f":{s.step}")
