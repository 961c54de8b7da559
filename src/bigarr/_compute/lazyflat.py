"""Elementwise chains over narrow rows, evaluated on wide views (lazy expressions' fast path).

numpy broadcasts a row vector (``x.mean(0)``, of ``k`` values) along the rows of an ``(n, k)``
block one row at a time: its inner loop is ``k`` elements long, so for the narrow rows of a
typical table (``k = 32``) the per-row overhead of the ufunc machinery is most of the time
(``(x - m) / s`` ran at 0.8-1.1 GiB/s on one core of the test machine, a plain copy at 3.2).
An expression that is *purely elementwise* (operations applied element by element: ufuncs,
``where``, ``astype``, ``clip``, never row by row) computes the same value, bit for bit,
whatever the shapes of the arrays it is applied to, as long as each element meets the same
operands. So a tile of ``r`` contiguous rows of ``k`` values is viewed as ``(r / g, g * k)``
(no copy), every row-vector operand is repeated ``g`` times (once per pass), and the chain
runs with an inner loop ``g * k`` elements long (:data:`WIDE_ELEMENTS`); the result is viewed
back as ``(r, k)``. Scalars stay as they are (numpy's weak-scalar dtype rules are unchanged).

The root operation writes into the caller's buffer when given one (``out=``): a file output's
chunk is then filled in place, tile by tile, without a copy of each tile's result.

:func:`flat_plan` decides once per expression whether it qualifies: every operation
elementwise with the root's shape, every input cut by rows of exactly the root's shape, every
value used whole (a reduction's result, a small array) a row vector of the root's row shape or
a single element. Anything else (a column selection, ``x @ w``, a scan, a reduction keeping
axis 0, a broadcast within rows) is evaluated as it always was.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bigarr._compute.lazyeval import Env, evaluate
from bigarr._compute.lazynodes import Const, Leaf, Node, Op, rowed

__all__ = ["WIDE_ELEMENTS", "Flat", "cached", "flat_plan", "into"]

Array = np.ndarray[Any, Any]

#: Elements in the inner loop of a widened chain: long enough that numpy's per-call overhead
#: is small next to the work (128 already gave most of the gain on the test machine), short
#: enough that ``g`` divides a tile's rows.
WIDE_ELEMENTS = 1024


class Flat:
    """How to evaluate one purely elementwise expression on wide views (module docstring)."""

    def __init__(self, root: Op, leaves: set[int], values: dict[int, Node]) -> None:
        self.root = root
        self.leaves = leaves
        """Inputs cut by rows (their blocks are viewed wide)."""
        self.values = values
        """Values used whole that are not scalars (repeated ``g`` times)."""
        self.row_shape = root.shape[1:]
        self.k = math.prod(self.row_shape)
        self.group = max(1, -(-WIDE_ELEMENTS // max(self.k, 1)))
        self.wide: dict[tuple[int, int], Array] = {}

    def _widened(self, node: Node, value: Any, g: int) -> Array:
        key = (id(node), g)
        got = self.wide.get(key)
        if got is None:
            v = np.asarray(value)
            if v.size == 1:
                got = v.reshape(1, 1)
            else:
                got = np.tile(np.ascontiguousarray(v).reshape(-1), g)
            self.wide[key] = got
        return got

    def run(self, env: Env, rows: int, out: Array | None = None) -> Array | None:
        """The root's value on ``env``'s tile of ``rows`` rows (written into ``out`` when
        given, and returned), or None when this tile cannot be viewed wide (rows not a
        multiple of the group, blocks not C-contiguous): evaluate it as usual then."""
        g = math.gcd(rows, self.group)
        if g < 2:
            return None
        blocks = [env.blocks[i] for i in self.leaves]
        if not all(b.flags.c_contiguous for b in blocks):
            return None
        wide = (rows // g, g * self.k)
        for i, b in zip(self.leaves, blocks, strict=True):
            env.memo[(i, True)] = b.reshape(wide)
        for i, node in self.values.items():
            env.memo[(i, False)] = self._widened(node, evaluate(node, False, env), g)
        if out is not None and out.flags.c_contiguous:
            target = out.reshape(wide)
            into(self.root, env, target)
            return out
        value = np.asarray(evaluate(self.root, True, env))
        return np.broadcast_to(value, wide).reshape(rows, *self.row_shape) \
            if value.shape != wide else value.reshape(rows, *self.row_shape)


def into(root: Node, env: Env, out: Array) -> None:
    """Evaluate ``root`` (cut by ``env``'s rows) into ``out``: its ufunc writes there directly
    (no copy of the result) when it is one (and the backend is numpy's: numexpr takes whole
    chains); otherwise the value is copied in."""
    if not env.numexpr and isinstance(root, Op) and isinstance(root.func, np.ufunc) \
            and root.func.nout == 1 and not root.rowwise and root.dtype == out.dtype \
            and "out" not in dict(root.kwargs):
        args = [evaluate(a, rowed(root, a), env) for a in root.args]
        with np.errstate(all="ignore"):
            root.func(*args, out=out, **dict(root.kwargs))
        return
    out[...] = np.asarray(evaluate(root, True, env))


def flat_plan(root: Node) -> Flat | None:
    """A :class:`Flat` for ``root`` when it is a purely elementwise chain over rows of its
    own shape (see the module docstring), else None."""
    if not isinstance(root, Op) or root.rowwise or len(root.shape) < 2 \
            or math.prod(root.shape[1:]) >= WIDE_ELEMENTS or 0 in root.shape:
        return None
    shape, rest = root.shape, root.shape[1:]
    leaves: set[int] = set()
    values: dict[int, Node] = {}
    seen: set[tuple[int, bool]] = set()

    def walk(node: Node, is_rowed: bool) -> bool:
        if (id(node), is_rowed) in seen:
            return True
        seen.add((id(node), is_rowed))
        if not is_rowed:  # a value used whole: a row vector, or one element
            if not node.shape or (isinstance(node, Const) and np.ndim(node.value) == 0):
                return True  # a scalar, as it is
            if (id(node), True) in seen:
                return False
            size = math.prod(node.shape)
            padded = (1,) * (len(shape) - len(node.shape)) + node.shape
            if size != 1 and (padded[0] != 1 or padded[1:] != rest):
                return False  # broadcast within rows
            values[id(node)] = node
            return True
        if id(node) in values:
            return False
        if isinstance(node, Leaf):
            leaves.add(id(node))
            return node.shape == shape
        if isinstance(node, Op) and not node.rowwise and node.shape == shape:
            return all(walk(a, rowed(node, a)) for a in node.args)
        return False

    if not walk(root, True) or not leaves:
        return None
    return Flat(root, leaves, values)


def cached(plans: dict[int, Flat | None], root: Node) -> Flat | None:
    """``flat_plan(root)``, once per ``plans`` (a pass's)."""
    if id(root) not in plans:
        plans[id(root)] = flat_plan(root)
    return plans[id(root)]

