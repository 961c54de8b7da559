"""The nodes of lazy expressions (:mod:`bigarr._compute.lazy`) and their row frames.

The nodes are plain frozen values: a :class:`Leaf` (an input), a :class:`Const` (a scalar or a
small array held whole), an :class:`Op` (a function of its arguments applied elementwise, or row
by row), an :class:`Index` (a selection along the axes after the first), a :class:`Reduce`, a
:class:`Scan` (``cumsum``, ``cumprod``, ``diff`` along axis 0) and a :class:`Filter` (the rows
where a boolean mask is true). :func:`frame` says which rows a node's chunks hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bigarr.errors import (
    ArgumentError,
    ArgumentValueError,
    AxisError,
    BigArrError,
    RegionError,
    ShapeError,
)

__all__ = [
    "ORDER_STATISTICS",
    "REDUCTIONS",
    "SCANS",
    "Const",
    "Filter",
    "Frame",
    "Index",
    "Leaf",
    "Node",
    "Op",
    "Reduce",
    "Scan",
    "frame",
    "numpy_refusal",
    "plain",
    "rowed",
    "unknown_rows",
]


#: The reductions, each with whether numpy's takes ``dtype=`` and ``ddof=``.
REDUCTIONS: dict[str, tuple[bool, bool]] = {
    "sum": (True, False), "prod": (True, False), "mean": (True, False), "var": (True, True),
    "std": (True, True), "min": (False, False), "max": (False, False),
    "argmin": (False, False), "argmax": (False, False), "any": (False, False),
    "all": (False, False), "count_nonzero": (False, False), "nansum": (True, False),
    "nanmean": (True, False), "nanvar": (True, True), "nanstd": (True, True),
    "nanmin": (False, False), "nanmax": (False, False),
}
#: Exact order statistics, computed by :mod:`bigarr._compute.order` in passes of their own.
ORDER_STATISTICS = ("quantile", "nanquantile", "percentile", "nanpercentile", "median",
                    "nanmedian")
#: Scans along axis 0, with state carried from chunk to chunk.
SCANS = ("cumsum", "cumprod", "diff")


@dataclass(frozen=True, eq=False)
class Node:
    """One node of an expression DAG (identity is the object: a node used twice is one node)."""

    shape: tuple[int, ...]
    """Shape of the node's value (for a filter's rows: the most there can be)."""
    dtype: np.dtype[Any]
    """dtype of the node's value."""


@dataclass(frozen=True, eq=False)
class Leaf(Node):
    """An input array, read chunk by chunk."""

    source: Any = None
    """What was given to :func:`lazy` (a path, an array)."""
    name: str = ""
    """A short description for plans."""
    window: tuple[int, int, int] | None = None
    """The rows of ``source`` this leaf is, as ``(start, step, count)`` (a row slice pushed
    down to the input, :mod:`bigarr._compute.lazyrows`), or None for all of them."""


@dataclass(frozen=True, eq=False)
class Const(Node):
    """A scalar or an in-memory array used whole (broadcast)."""

    value: Any = None
    """The value (a Python scalar keeps numpy's weak-scalar dtype rules)."""


@dataclass(frozen=True, eq=False)
class Op(Node):
    """``func(*args, **kwargs)`` applied elementwise (a ufunc, ``np.where``, ``astype``), or
    row by row (``rowwise``: ``x @ w``, ``np.diff(x, axis=1)``)."""

    func: Callable[..., Any] = np.positive
    """The elementwise function."""
    args: tuple[Node, ...] = ()
    """Its operands."""
    kwargs: tuple[tuple[str, Any], ...] = ()
    """Its keyword arguments."""
    label: str = ""
    """Its name in plans."""
    rowwise: bool = False
    """The function maps each row to a row (so every operand with the node's rows is cut by
    rows, whatever its dimensions)."""


@dataclass(frozen=True, eq=False)
class Index(Node):
    """``child[:, *key]``: a selection along the axes after the first (rows are kept whole);
    or, with ``rows``, ``child[rows, *key]`` of a child's whole value (a reduction's result, a
    single row)."""

    child: Node = field(default_factory=lambda: Const((), np.dtype(bool)))
    """The indexed node."""
    key: tuple[Any, ...] = ()
    """The index of the axes after the first."""
    rows: slice | int | None = None
    """A selection along axis 0 of the child's whole value (the child is then evaluated whole,
    never cut by rows), or None. Row slices of streamed rows are pushed down to the inputs
    instead (:mod:`bigarr._compute.lazyrows`)."""


@dataclass(frozen=True, eq=False)
class Reduce(Node):
    """A reduction of ``child`` over ``axes``; its (small) result is computed in a pass."""

    child: Node = field(default_factory=lambda: Const((), np.dtype(bool)))
    """The reduced node."""
    kind: str = "sum"
    """A name of :data:`REDUCTIONS` or :data:`ORDER_STATISTICS`."""
    axes: tuple[int, ...] = ()
    """The reduced axes (normalised, sorted)."""
    keepdims: bool = False
    """Keep reduced axes as length 1."""
    ddof: float = 0
    """Delta degrees of freedom (``var``, ``std`` and nan variants)."""
    out_dtype: np.dtype[Any] | None = None
    """``dtype=`` of the reduction, as numpy's."""
    q: Any = None
    """The quantiles (percentiles) of an order statistic."""
    method: str = "linear"
    """The quantile method of an order statistic."""
    axis: int | None = None
    """``axis`` as given (None or an int), for the functions that take only those."""


@dataclass(frozen=True, eq=False)
class Scan(Node):
    """``cumsum``, ``cumprod`` or ``diff`` of ``child`` along axis 0, carried across chunks."""

    child: Node = field(default_factory=lambda: Const((), np.dtype(bool)))
    """The scanned node."""
    kind: str = "cumsum"
    """A name of :data:`SCANS`."""
    n: int = 1
    """The order of ``diff``."""
    out_dtype: np.dtype[Any] | None = None
    """``dtype=`` of ``cumsum`` / ``cumprod``."""


@dataclass(frozen=True, eq=False)
class Filter(Node):
    """``child[mask]``: the rows of ``child`` where the 1-d boolean ``mask`` is true."""

    child: Node = field(default_factory=lambda: Const((), np.dtype(bool)))
    """The filtered node."""
    mask: Node = field(default_factory=lambda: Const((), np.dtype(bool)))
    """The rows' mask."""


# ---- row frames ----------------------------------------------------------------------------
Frame = tuple[Any, ...] | None


def rowed(node: Node, arg: Node) -> bool:
    """Whether ``arg`` (an operand of ``node``) is cut by ``node``'s rows, not broadcast."""
    if isinstance(node, Index) and node.rows is not None:  # a value, used whole
        return False
    if isinstance(node, (Filter, Scan, Index)):  # the child's rows are the node's, shifted
        return bool(arg.shape) and bool(node.shape)
    if not arg.shape or not node.shape or arg.shape[0] != node.shape[0]:
        return False
    if isinstance(node, Op) and node.rowwise:
        return True
    return len(arg.shape) == len(node.shape)


def frame(node: Node, memo: dict[int, Frame] | None = None) -> Frame:
    """The rows ``node``'s chunks hold (see the module docstring): None for a value used whole,
    ``("rows", n)`` for the rows of inputs of ``n`` rows, ``("lag", k, inner)`` for ``inner``'s
    rows but the first ``k``, ``("mask", id, inner)`` for the rows a mask keeps."""
    memo = {} if memo is None else memo
    if id(node) in memo:
        return memo[id(node)]
    out: Frame
    if isinstance(node, Filter):
        out = ("mask", id(node.mask), frame(node.child, memo))
    elif isinstance(node, Scan):
        inner = frame(node.child, memo)
        if node.kind != "diff":
            out = inner
        elif inner is not None and inner[0] == "lag":  # diff of a diff: one lag of both
            out = ("lag", node.n + inner[1], inner[2])
        else:
            out = ("lag", node.n, inner)
    elif isinstance(node, Index):
        out = frame(node.child, memo) if node.rows is None else None
    elif isinstance(node, Reduce):
        inner = frame(node.child, memo)
        out = inner if node.shape and node.child.shape and 0 not in node.axes else None
    elif isinstance(node, Op):
        found = {frame(a, memo) for a in node.args if rowed(node, a)} - {None}
        if len(found) > 1 and node.shape[0] != 1:
            raise ShapeError(
                f"Expected operands of {node.label} over the same rows. Got rows of different "
                "origins (a filter x[mask], a diff along axis 0, or plain rows), which numpy "
                "could not align either: filter (or diff) every operand the same way."
            )
        out = found.pop() if found else None
    else:
        out = ("rows", node.shape[0]) if node.shape else None
    memo[id(node)] = out
    return out


def unknown_rows(fr: Frame) -> bool:
    """True when a frame's number of rows is known only on evaluation (a filter inside)."""
    while fr is not None and fr[0] != "rows":
        if fr[0] == "mask":
            return True
        fr = fr[2]
    return False


def plain(fr: Frame) -> bool:
    """True for a frame of inputs' rows as they are (or a value used whole)."""
    return fr is None or fr[0] == "rows"


def numpy_refusal(exc: Exception, what: str) -> Exception:
    """numpy's error ``exc`` from ``what`` as the bigarr error a user would catch alike: its
    AxisError as :class:`~bigarr.errors.AxisError`, a TypeError as ArgumentError, a ValueError
    as ArgumentValueError, an IndexError as RegionError (a bigarr error is returned as is)."""
    if isinstance(exc, BigArrError):
        return exc
    if isinstance(exc, np.exceptions.AxisError):
        return AxisError(str(exc))
    if isinstance(exc, TypeError):
        return ArgumentError(f"{what}: {exc}")
    if isinstance(exc, ValueError):
        return ArgumentValueError(f"{what}: {exc}")
    if isinstance(exc, IndexError):
        return RegionError(f"{what}: {exc}")
    return exc
