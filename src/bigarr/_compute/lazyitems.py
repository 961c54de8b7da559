"""The items of a lazy evaluation (:mod:`bigarr._compute.lazyrun`): the expression's DAG analysed.

Every value an evaluation needs is an :class:`Item`: a reduction, or an output's root, with the
leaves its expression streams by rows and those it uses whole. :func:`schedule` orders the items
by level (one more than the deepest reduction inside), :func:`groups` splits a level into the
items that share a pass, those computed whole in memory and the order statistics, and
:class:`Opened` holds the leaves' streams for one evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigarr._compute.lazynodes import (
    ORDER_STATISTICS,
    Filter,
    Index,
    Leaf,
    Node,
    Op,
    Reduce,
    Scan,
    frame,
    rowed,
    unknown_rows,
)
from bigarr._compute.lazyrows import window_stream
from bigarr._compute.operands import Stream, parse_operand
from bigarr.errors import FileChangedError

__all__ = ["Item", "Opened", "groups", "item_of", "lag", "schedule"]

Array = np.ndarray[Any, Any]


# ---- expression analysis -------------------------------------------------------------------
def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Op):
        return node.args
    if isinstance(node, Filter):
        return (node.child, node.mask)
    if isinstance(node, (Index, Reduce, Scan)):
        return (node.child,)
    return ()


def _depth(node: Node, memo: dict[int, int]) -> int:
    """Reduction levels inside ``node`` (a reduction counts itself)."""
    if id(node) not in memo:
        inner = max((_depth(c, memo) for c in _children(node)), default=0)
        memo[id(node)] = inner + 1 if isinstance(node, Reduce) else inner
    return memo[id(node)]


def _walk(node: Node, seen: set[int], out: list[Node]) -> None:
    """The nodes of ``node``'s expression, reductions' insides included, each once."""
    if id(node) in seen:
        return
    seen.add(id(node))
    out.append(node)
    for c in _children(node):
        _walk(c, seen, out)


def _reductions(node: Node, out: dict[int, Reduce]) -> None:
    nodes: list[Node] = []
    _walk(node, set(), nodes)
    out.update({id(n): n for n in nodes if isinstance(n, Reduce) and id(n) not in out})


def _leaves(node: Node, is_rowed: bool, rows: dict[int, Leaf], whole: dict[int, Leaf],
            scans: dict[int, Scan], seen: set[tuple[int, bool]]) -> None:
    """Sort the leaves of ``node``'s expression (reductions are values) into streamed and whole;
    collect its streamed scans."""
    if (id(node), is_rowed) in seen:
        return
    seen.add((id(node), is_rowed))
    if isinstance(node, Leaf):
        (rows if is_rowed else whole)[id(node)] = node
    elif not isinstance(node, Reduce):
        if isinstance(node, Scan) and is_rowed:
            scans[id(node)] = node
        for a in _children(node):
            _leaves(a, is_rowed and rowed(node, a), rows, whole, scans, seen)


def lag(fr: Any) -> int:
    """Rows a frame drops in front of its inputs' (diffs)."""
    lag = 0
    while fr is not None and fr[0] != "rows":
        lag += fr[1] if fr[0] == "lag" else 0
        fr = fr[2]
    return lag


# ---- items and passes ----------------------------------------------------------------------
@dataclass
class Item:
    node: Node
    """The reduction, or the output's root."""
    expr: Node
    """What is streamed: the reduction's child, or the root."""
    rows: dict[int, Leaf]
    whole: dict[int, Leaf]
    scans: dict[int, Scan]
    frame: Any
    """The rows the expression's chunks hold (:func:`bigarr._compute.lazy.frame`)."""

    @property
    def label(self) -> str:
        n = self.node
        if isinstance(n, Reduce):
            q = "" if n.q is None else f" q={np.asarray(n.q).tolist()}"
            return f"{n.kind}(axis={n.axes}{q}) of {self.expr.shape}"
        if unknown_rows(self.frame):
            return f"output (? x {n.shape[1:]}) {n.dtype}, rows filtered"
        return f"output {n.shape} {n.dtype}"

    @property
    def order(self) -> bool:
        return isinstance(self.node, Reduce) and self.node.kind in ORDER_STATISTICS


def item_of(node: Node) -> Item:
    expr = node.child if isinstance(node, Reduce) else node
    rows: dict[int, Leaf] = {}
    whole: dict[int, Leaf] = {}
    scans: dict[int, Scan] = {}
    _leaves(expr, len(expr.shape) > 0, rows, whole, scans, set())
    return Item(node, expr, rows, whole, scans, frame(expr))


def schedule(roots: Sequence[Node]) -> list[list[Item]]:
    """Items by level (see the module docstring); an output root is an item of its own level."""
    memo: dict[int, int] = {}
    reds: dict[int, Reduce] = {}
    for r in roots:
        _reductions(r, reds)
    levels: dict[int, list[Item]] = {}
    for r in reds.values():
        levels.setdefault(_depth(r, memo), []).append(item_of(r))
    for root in roots:
        if not isinstance(root, Reduce):
            levels.setdefault(_depth(root, memo) + 1, []).append(item_of(root))
    return [levels[k] for k in sorted(levels)]


def groups(items: list[Item]) -> tuple[list[list[Item]], list[Item], list[Item]]:
    """Items that stream, grouped by their inputs' number of rows; items computed whole; and
    order statistics (passes of their own)."""
    by_rows: dict[int, list[Item]] = {}
    whole: list[Item] = []
    order: list[Item] = []
    for it in items:
        if it.order and math.prod(it.expr.shape) > 0:
            order.append(it)
        elif it.rows and math.prod(next(iter(it.rows.values())).shape) > 0 and not (
                isinstance(it.node, Reduce) and 0 in it.expr.shape[1:]):  # (no values: whole)
            by_rows.setdefault(next(iter(it.rows.values())).shape[0], []).append(it)
        else:
            whole.append(it)
    return list(by_rows.values()), whole, order


class Opened:
    """Streams of the leaves, opened once per evaluation and closed at its end."""

    def __init__(self) -> None:
        self.streams: dict[int, Stream] = {}
        self.arrays: dict[int, Array] = {}

    def stream(self, leaf: Leaf) -> Stream:
        if id(leaf) not in self.streams:
            stream = parse_operand(leaf.source, by_key=False)
            if leaf.window is not None:
                stream = window_stream(stream, leaf.window)
            if tuple(stream.shape) != leaf.shape or stream.dtype != leaf.dtype:
                stream.close()  # (a file replaced at its path since lazy() read its header)
                raise FileChangedError(
                    f"{leaf.name} changed since the expression was built: it holds "
                    f"{tuple(stream.shape)} {stream.dtype}, the expression was built for "
                    f"{leaf.shape} {leaf.dtype}. Build the expression again.")
            self.streams[id(leaf)] = stream
        return self.streams[id(leaf)]

    def array(self, leaf: Leaf) -> Array:
        if id(leaf) not in self.arrays:
            s = self.stream(leaf)
            if s.array is not None:
                self.arrays[id(leaf)] = s.array
            else:
                assert s.read is not None
                self.arrays[id(leaf)] = s.read(tuple(slice(0, n) for n in s.shape))
        return self.arrays[id(leaf)]

    def close(self) -> None:
        for s in self.streams.values():
            s.close()
