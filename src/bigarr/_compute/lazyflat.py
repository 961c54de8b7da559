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

The chain is computed in place (:func:`into`): the root operation writes into the caller's
buffer (``out=``; a file output's chunk, filled tile by tile without a copy of each tile's
result) or a per-thread scratch buffer, and the single-use operations below it run in that
buffer too, so a chain makes no tile-sized temporaries.

:func:`flat_plan` decides once per expression whether it qualifies: every operation
elementwise with the root's shape, every input cut by rows of exactly the root's shape, every
value used whole (a reduction's result, a small array) a row vector of the root's row shape or
a single element. A 1-d chain qualifies too, but only when the native fused kernel
(:mod:`bigarr._compute.fused`, which runs a qualifying float chain in one pass) takes it: its
inner loops are long already. Anything else (a column selection, ``x @ w``, a scan, a
reduction keeping axis 0, a broadcast within rows) is evaluated as it always was.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from bigarr._compute.fused import compile_chain
from bigarr._compute.lazyeval import Env, evaluate
from bigarr._compute.lazynodes import Const, Leaf, Node, Op, rowed

__all__ = ["WIDE_ELEMENTS", "Flat", "cached", "flat_plan", "into", "uses"]

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
        self.count = uses(root)
        self.scratch = threading.local()
        """Per worker thread: a buffer the value is computed into when no ``out`` is given
        (a reduction's operand, consumed before the thread's next tile)."""
        self.native = compile_chain(root, leaves, values)
        """The chain as a program of the native fused kernel (:mod:`bigarr._compute.fused`),
        or None (numpy's ufuncs on wide views)."""

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

    def _buffer(self, rows: int) -> Array:
        """This thread's scratch buffer, as ``rows`` rows of the root's."""
        size = rows * self.k
        buf = getattr(self.scratch, "buf", None)
        if buf is None or buf.size < size:
            buf = self.scratch.buf = np.empty(size, self.root.dtype)
        return buf[:size].reshape(rows, *self.row_shape)

    def fused(self, blocks: Sequence[Array]) -> bool:
        """Whether the native kernel takes a chunk of these blocks (then it needs no tiles:
        it works through the chunk in blocks of its own, with no temporaries of the tile's
        size)."""
        return self.native is not None and self.native.takes(blocks)

    def extreme(self, env: Env, rows: int, largest: bool, nan: bool = False) -> Array | None:
        """The root's maximum (``largest``) or minimum along axis 0 over ``env``'s tile of
        ``rows`` rows (``nan``: NaN ignored, as ``nanmax``), of shape ``(1, *row_shape)`` (the
        state of :class:`bigarr._compute.partials.Extreme`), folded by the native kernel without
        writing the root's value (:meth:`bigarr._compute.fused.Program.extreme`); None when
        the kernel does not take the tile."""
        if self.native is None or rows < 1:
            return None
        got = self.native.extreme(env, rows, largest, nan)
        return None if got is None else got.reshape(1, *self.row_shape)

    def run(self, env: Env, rows: int, out: Array | None = None) -> Array | None:
        """The root's value on ``env``'s tile of ``rows`` rows (written into ``out`` when
        given, and returned), or None when this tile cannot be viewed wide (rows not a
        multiple of the group, blocks not C-contiguous): evaluate it as usual then."""
        if self.native is not None:
            target = out if out is not None and out.flags.c_contiguous \
                and out.flags.aligned and out.flags.writeable and out.dtype == self.root.dtype \
                else self._buffer(rows)
            if self.native.run(env, rows, target):
                if out is not None and target is not out:
                    out[...] = target
                    return out
                return target
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
        if out is None or not out.flags.c_contiguous:
            value = self._buffer(rows)
            into(self.root, env, value.reshape(wide), self.count)
            if out is not None:
                out[...] = value
                return out
            return value
        into(self.root, env, out.reshape(wide), self.count)
        return out


def uses(root: Node) -> dict[int, int]:
    """How many times each node of ``root``'s expression is an operand (of distinct parents)."""
    count: dict[int, int] = {}
    seen: set[int] = set()

    def walk(node: Node) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, Op):
            for a in node.args:
                count[id(a)] = count.get(id(a), 0) + 1
                walk(a)

    walk(root)
    return count


def _in_place(node: Node, out: Array, shape: tuple[int, ...]) -> bool:
    """``node`` is a ufunc whose value can be written into ``out`` (the root's rows of the
    root's ``shape``, in the root's dtype)."""
    return (isinstance(node, Op) and isinstance(node.func, np.ufunc) and node.func.nout == 1
            and not node.rowwise and node.dtype == out.dtype and node.shape == shape
            and "out" not in dict(node.kwargs))


def into(root: Node, env: Env, out: Array, count: dict[int, int] | None = None) -> None:
    """Evaluate ``root`` (cut by ``env``'s rows) into ``out``.

    A ufunc writes there directly (no copy of the result), and so does the chain below it:
    an operand that is itself a ufunc of the same dtype and shape, used only there (``count``,
    from :func:`uses`), is computed into ``out`` first and the operation then runs in place
    (``np.divide(out, s, out=out)``), so a chain of ``n`` operations makes no tile-sized
    temporaries instead of ``n`` (each a fresh allocation, whose pages the kernel hands out
    and takes back). Only single-use values are overwritten, never a value another operand
    reads, so the result is numpy's, bit for bit. numexpr (``env.numexpr``) takes whole
    chains instead, copied in.
    """
    if env.numexpr or not _in_place(root, out, root.shape):
        out[...] = np.asarray(evaluate(root, True, env))
        return
    count = uses(root) if count is None else count
    node = root
    steps: list[tuple[Op, int]] = []  # (operation, its operand computed in place, or -1)
    while True:
        assert isinstance(node, Op)
        k = next((i for i, a in enumerate(node.args) if count.get(id(a), 0) == 1
                  and rowed(node, a) and _in_place(a, out, root.shape)), -1)
        steps.append((node, k))
        if k < 0:
            break
        node = node.args[k]
    with np.errstate(all="ignore"):
        for op, k in reversed(steps):  # innermost first
            args = [out if i == k else evaluate(a, rowed(op, a), env)
                    for i, a in enumerate(op.args)]
            op.func(*args, out=out, **dict(op.kwargs))


def flat_plan(root: Node) -> Flat | None:
    """A :class:`Flat` for ``root`` when it is a purely elementwise chain over rows of its
    own shape (see the module docstring), else None."""
    if not isinstance(root, Op) or root.rowwise or len(root.shape) < 1 \
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
    flat = Flat(root, leaves, values)
    # a 1-d chain has long inner loops already: taken only for the native fused kernel
    return flat if len(shape) > 1 or flat.native is not None else None


def cached(plans: dict[int, Flat | None], root: Node) -> Flat | None:
    """``flat_plan(root)``, once per ``plans`` (a pass's)."""
    if id(root) not in plans:
        plans[id(root)] = flat_plan(root)
    return plans[id(root)]

