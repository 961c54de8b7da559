"""Partial states of the reductions: how one block is summarised, and how two summaries merge.

Each kernel turns a block into a *partial state* (a tuple of arrays with the reduced axes kept as
length 1), combines two states elementwise, and finishes a state into the result. The engine
(:mod:`bigarr._compute.reductions`) decides which states meet; a kernel never knows about chunks.

Two merge orders:

* *exact* kernels (integer sums, extremes, arg-extremes, counts) give the same bits in any order,
  so the engine merges their states chunk by chunk;
* floating sums, means and variances go through :class:`Tree`: a fixed pairwise tree over
  *leaves* of at most ``SUB_BLOCK_BYTES / 16`` elements, defined by the array's shape alone, so
  their results are the same bits whatever the budget and threads. They accumulate in float64
  (complex128) whatever the data's precision.

Kernels that need temporaries (``var``, ``std``, ``count_nonzero``) work through a block in
*tiles* of a few leaves (:data:`TILE_LEAVES`), with their float64 (complex128) temporaries in a
reused per-thread buffer, or in sub-blocks of at most :data:`SUB_BLOCK_BYTES`, so their scratch
memory is fixed per thread and can be planned. Blocks reduced along one axis with few kept
columns after it are summed as *wide rows*, so numpy's inner loops are long. The buffer, the
wide rows and the exact kernels' fast paths over the rows of a chunk live in
:mod:`bigarr._compute.tiles`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from bigarr._compute import native
from bigarr._compute.tiles import (
    arg_flat,
    arg_rows,
    count_nonzero_all,
    count_nonzero_rows,
    repeat_columns,
    rows_reduce,
    scratch,
)
from bigarr._compute.tiles import wide_rows as _wide_rows
from bigarr._plan.chunks import Chunk

__all__ = [
    "FAST_KINDS",
    "SUB_BLOCK_BYTES",
    "TILE_LEAVES",
    "Arg",
    "CountNonzero",
    "Extreme",
    "Kernel",
    "Mean",
    "State",
    "Sum",
    "Tree",
    "Var",
    "VarInt",
    "fold",
    "merge",
    "tile_elements",
]

#: The merge tree's leaf, in bytes of float64 (complex128) elements: a leaf holds at most
#: ``SUB_BLOCK_BYTES // 16`` elements, and exact kernels cut blocks into sub-blocks that small.
SUB_BLOCK_BYTES = 256 << 10

#: dtype kinds of the fast exact kernels of :mod:`bigarr._compute.tiles` (bool, integers, real
#: floats); a test empties it to run the general kernels.
FAST_KINDS = "biuf"

#: Leaves of float64 a kernel with temporaries summarises in one vectorised call (a *tile*; of
#: complex128, half as many): its temporaries then hold at most ``TILE_LEAVES *
#: SUB_BLOCK_BYTES // 2`` bytes, 512 KiB at the default, so a tile stays in a core's cache
#: while numpy's per-call overhead is paid once per tile rather than once per leaf (issue 17:
#: one call per leaf cost most of ``var``'s time). Each leaf's state is computed from the leaf
#: alone, so the tile size changes speed, never bits.
TILE_LEAVES = 4

def _fast(block: np.ndarray[Any, Any]) -> bool:
    """True for blocks the fast exact kernels take: C-contiguous, with rows, of FAST_KINDS."""
    return bool(block.dtype.kind in FAST_KINDS and block.ndim and block.size
                and block.flags.c_contiguous)


def tile_elements(itemsize: int = 8) -> int:
    """Elements of ``itemsize`` bytes one tile of temporaries holds (read at call time, so tests
    that shrink :data:`SUB_BLOCK_BYTES` shrink tiles too)."""
    return max(1, TILE_LEAVES * SUB_BLOCK_BYTES // 2 // max(1, itemsize))


State = tuple[np.ndarray[Any, Any], ...]


def _split(block: np.ndarray[Any, Any], limit: int) -> tuple[int, list[slice]]:
    """Cut ``block`` along its outermost non-trivial axis into pieces of <= ``limit`` elements.

    Returns the axis (-1 when no cut is needed) and the pieces along it.
    """
    strides = [abs(s) if n > 1 else -1 for n, s in zip(block.shape, block.strides, strict=True)]
    if block.size <= limit or max(strides, default=-1) < 0:
        return -1, [slice(None)]
    axis = int(np.argmax(strides))
    step = max(1, limit // max(1, block.size // block.shape[axis]))
    n = block.shape[axis]
    return axis, [slice(i, min(i + step, n)) for i in range(0, n, step)]


class Kernel:
    """A reduction: partial state of a block, combine two states, finish a state.

    ``exact`` kernels (integer sums, extremes, counts) give the same bits whatever order their
    states combine in, so the engine merges them chunk by chunk; the others (floating sums,
    means, variances) go through :class:`Tree`, whose order is fixed by the array alone.
    """

    sub_blocked = False
    exact = True

    def scratch_free(self, dtype: np.dtype[Any], axes: tuple[int, ...] | None = None) -> bool:
        """True when :meth:`partial` needs no temporaries for blocks of ``dtype`` reduced along
        ``axes`` (None: whatever the axes): :class:`Tree` may then hand it many leaves at once,
        and the plan reserves no scratch for it."""
        return not self.sub_blocked

    def state_bytes(self, dtype: np.dtype[Any]) -> int:
        """Bytes of partial state per kept element (all the state's arrays together), for the
        memory plan."""
        return _acc_size(dtype)

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        raise NotImplementedError

    def combine(self, a: State, b: State) -> State:
        raise NotImplementedError

    def finish(self, state: State) -> np.ndarray[Any, Any]:
        return state[0]

    def chunk_state(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                    origin: tuple[int, ...]) -> State:
        """Partial state of a chunk's block, through sub-blocks when the kernel needs them."""
        if not self.sub_blocked:
            return self.partial(block, axes, None, origin)
        axis, pieces = _split(block, SUB_BLOCK_BYTES // 16)
        if axis < 0:
            return self.partial(block, axes, None, origin)
        state: State | None = None
        parts: list[State] = []
        for piece in pieces:
            key = tuple(piece if i == axis else slice(None) for i in range(block.ndim))
            sub_origin = tuple(o + (piece.start if i == axis else 0)
                               for i, o in enumerate(origin))
            part = self.chunk_state(block[key], axes, sub_origin)  # a slab may need cutting too
            if axis in axes:
                state = part if state is None else self.combine(state, part)
            else:
                parts.append(part)
        if axis in axes:
            assert state is not None
            return state
        return tuple(np.concatenate([p[i] for p in parts], axis=axis) for i in range(len(parts[0])))


def merge(kernel: Kernel, state: list[np.ndarray[Any, Any]], seen: np.ndarray[Any, Any],
           target: tuple[slice, ...], part: State) -> None:
    mask = seen[target]
    if not mask.any():
        for acc, p in zip(state, part, strict=True):
            acc[target] = p
    else:
        old = tuple(acc[target] for acc in state)
        merged = kernel.combine(old, part)
        for acc, m, p in zip(state, merged, part, strict=True):
            acc[target] = m if mask.all() else np.where(mask, m, p)
    seen[target] = True


def _acc_size(dtype: np.dtype[Any]) -> int:
    """Bytes of one accumulator element for data of ``dtype`` (at least 8: numpy sums small
    integers in the platform's integer)."""
    return max(8, int(_acc_dtype(dtype).itemsize))


def _acc_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The accumulator of a floating result: float64 (complex128) at least, never less."""
    if dtype.kind == "f":
        return np.dtype(np.longdouble) if dtype.itemsize > 8 else np.dtype(np.float64)
    if dtype.kind == "c":
        return np.dtype(np.clongdouble) if dtype.itemsize > 16 else np.dtype(np.complex128)
    return dtype


def _cast(block: np.ndarray[Any, Any], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """``block`` in ``dtype`` (``copyto`` into a new array: several times faster than
    ``astype`` for float32 to float64, with the same values)."""
    out = np.empty(block.shape, dtype=dtype)
    np.copyto(out, block, casting="unsafe")
    return out


class Sum(Kernel):
    """Sums; a floating result (``out``) is accumulated in float64 (complex128) whatever the
    data's precision, so float16 and float32 sums carry no rounding error but the last one."""

    def __init__(self, dtype: Any, out: np.dtype[Any]) -> None:
        self.exact = out.kind not in "fc"
        self.acc: Any = dtype if self.exact else _acc_dtype(out)

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        if not axes and self.acc is not None:  # nothing to add up within the block: a cast
            return (_cast(block, self.acc),)
        if not self.exact and self.acc == np.float64 and block.dtype.kind == "f":
            total = native.sum_blocks(block, axes)  # one pass, float64 accumulators
            if total is not None:
                return (total,)
        wide = _wide_rows(block, axes)
        if wide is not None:  # few kept columns: sum wide rows (long inner loops), then fold
            p, n, c, k = wide
            rows = np.sum(block.reshape(p, n // k, k * c), axis=1, dtype=self.acc)
            total = rows.reshape(p, k, c).sum(axis=1, dtype=rows.dtype)
            return (total.reshape(tuple(1 if i in axes else m
                                        for i, m in enumerate(block.shape))),)
        return (np.asarray(np.sum(block, axis=axes, keepdims=True, dtype=self.acc)),)

    def combine(self, a: State, b: State) -> State:
        if self.exact:
            return (a[0] + b[0],)
        return (np.add(a[0], b[0], out=a[0]),)  # tree states are used once: reuse the left


class Mean(Sum):
    """Sum and count; the sum accumulates as :class:`Sum`'s does, then divides."""

    def state_bytes(self, dtype: np.dtype[Any]) -> int:
        return _acc_size(dtype) + 8

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        (s,) = super().partial(block, axes, chunk, origin)
        n = np.full(s.shape, math.prod(block.shape[i] for i in axes), dtype=np.int64)
        return s, n

    def combine(self, a: State, b: State) -> State:
        (s,) = super().combine(a[:1], b[:1])
        return s, (a[1] + b[1] if self.exact else np.add(a[1], b[1], out=a[1]))

    def finish(self, state: State) -> np.ndarray[Any, Any]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(state[0] / state[1])


class Var(Kernel):
    """Count, shift, mean and M2 of each block, merged with Chan et al.'s parallel update.

    Each partial state is kept relative to a *shift* ``K``, the block's first element along the
    reduced axes: means of ``x - K`` keep full precision even when the data sit on a large
    offset (1e9 + noise), where absolute means would be rounded to the offset's resolution.
    Merging two states adds ``(K_b - K_a) + (mean_b - mean_a)``, both small and exact-ish.
    """

    sub_blocked = True
    exact = False
    #: Whether :meth:`partial` may use the native kernel (a subclass that changes what a block
    #: contributes, such as ``nanvar``'s, turns it off).
    native = True

    def state_bytes(self, dtype: np.dtype[Any]) -> int:
        return 8 + 3 * (16 if dtype.kind == "c" else 8)

    def scratch_free(self, dtype: np.dtype[Any], axes: tuple[int, ...] | None = None) -> bool:
        # the native kernel's cases: real float32/float64 in native byte order, reduced along
        # one run of adjacent axes (anything else runs numpy's kernel, with temporaries)
        run = axes is None or not axes or list(axes) == list(range(min(axes), max(axes) + 1))
        return (self.native and native.available() and run and dtype.isnative
                and dtype in (np.float32, np.float64))

    def __init__(self, ddof: float) -> None:
        self.ddof = ddof

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        if self.native and block.dtype.kind == "f":
            got = native.var_blocks(block, axes)  # two passes per leaf, in cache; no temporaries
            if got is not None:
                shift, mean, m2 = got
                size = math.prod(block.shape[i] for i in axes)
                return np.full(mean.shape, size, dtype=np.int64), shift, mean, m2
        wide = _wide_rows(block, axes)
        if wide is not None:
            return self._wide(block, axes, *wide)
        acc = np.dtype(np.complex128 if block.dtype.kind == "c" else np.float64)
        n = math.prod(block.shape[i] for i in axes)
        first = tuple(slice(0, 1) if i in axes else slice(None) for i in range(block.ndim))
        shift = np.asarray(block[first], dtype=acc)
        dev = scratch(block.shape, acc)  # the deviations, in this thread's reused buffer
        with np.errstate(invalid="ignore"):
            np.copyto(dev, block, casting="unsafe")  # an exact cast, then a subtraction in
            dev -= shift  # float64: twice as fast as numpy's mixed-type subtract
            mean = np.add.reduce(dev, axis=axes, keepdims=True)
            mean /= n
            dev -= mean
            if acc.kind == "c":  # |dev|**2 as re**2 + im**2, squared in place
                pairs = dev.view(np.float64).reshape((*dev.shape, 2))
                np.multiply(pairs, pairs, out=pairs)
                m2 = np.add.reduce(pairs, axis=(*axes, dev.ndim)).reshape(mean.shape)
            else:
                np.multiply(dev, dev, out=dev)
                m2 = np.add.reduce(dev, axis=axes, keepdims=True)
        count = np.full(mean.shape, n, dtype=np.int64)
        return count, shift.reshape(mean.shape), mean, np.asarray(m2)

    def _wide(self, block: np.ndarray[Any, Any], axes: tuple[int, ...], p: int, n: int, c: int,
              k: int) -> State:
        """:meth:`partial` of real data reduced along one axis with only kept axes after it
        (a C-contiguous ``(p, n, c)`` block, reduced along ``n``), through wide rows.

        numpy reduces such a block one row of ``c`` elements at a time, and broadcasts the
        shift and the mean over rows as short; viewed as ``(p, n / k, k * c)`` every loop is
        ``k`` times longer. The sums run over ``k`` interleaved sequences of rows, then add
        those ``k`` partial sums: another fixed order, still sequential at worst.
        """
        keep = tuple(1 if i in axes else m for i, m in enumerate(block.shape))
        rows = block.reshape(p, n // k, k * c)
        shift = np.asarray(rows[:, :1, :c], dtype=np.float64)  # (p, 1, c)
        dev = scratch(rows.shape, np.float64)
        with np.errstate(invalid="ignore"):
            np.copyto(dev, rows)  # a plain cast, then a subtraction in float64: both fast
            dev -= repeat_columns(shift, k)
            mean = np.add.reduce(dev, axis=1).reshape(p, k, c).sum(axis=1, keepdims=True)
            mean /= n
            dev -= repeat_columns(mean, k)
            np.multiply(dev, dev, out=dev)
            m2 = np.add.reduce(dev, axis=1).reshape(p, k, c).sum(axis=1)
        count = np.full(keep, n, dtype=np.int64)
        return count, shift.reshape(keep), mean.reshape(keep), m2.reshape(keep)

    def combine(self, a: State, b: State) -> State:
        na, ka, ma, qa = a
        nb, kb, mb, qb = b
        n = na + nb
        safe = np.where(n == 0, 1, n)
        with np.errstate(invalid="ignore"):
            delta = (kb - ka) + (mb - ma)
            mean = ma + delta * (nb / safe)
            square = delta.real**2 + delta.imag**2 if delta.dtype.kind == "c" else delta**2
            q = qa + qb + square * (na * (nb / safe))
        return n, ka, mean, q

    def finish(self, state: State) -> np.ndarray[Any, Any]:
        n, _shift, _mean, m2 = state
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(m2 / np.maximum(n - self.ddof, 0))


class Extreme(Kernel):
    def state_bytes(self, dtype: np.dtype[Any]) -> int:
        return int(dtype.itemsize)
    def __init__(self, largest: bool) -> None:
        self.largest = largest

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        if axes == (0,) and _fast(block):  # long inner loops (see tiles.rows_reduce)
            ufunc = np.maximum if self.largest else np.minimum
            return (rows_reduce(ufunc, block)[None],)
        fn = np.max if self.largest else np.min
        return (fn(block, axis=axes, keepdims=True),)

    def combine(self, a: State, b: State) -> State:
        return ((np.maximum if self.largest else np.minimum)(a[0], b[0]),)


def _isnan(values: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray(np.isnat(values) if values.dtype.kind in "mM" else np.isnan(values))


class Arg(Kernel):
    # numpy's argmin/argmax along any axis but the last copies the block into a contiguous
    # temporary (argmax(axis=0) of a C-ordered chunk doubled its memory: 456 MiB at a 256 MiB
    # budget), so they work in sub-blocks like the kernels with temporaries.
    sub_blocked = True

    def state_bytes(self, dtype: np.dtype[Any]) -> int:
        return int(dtype.itemsize) + 8

    def __init__(self, largest: bool, shape: tuple[int, ...]) -> None:
        self.largest = largest
        self.shape = shape

    def chunk_state(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                    origin: tuple[int, ...]) -> State:
        """A C-contiguous chunk goes through :mod:`bigarr._compute.tiles` (one pass of tile
        extremes, then a search of one tile per column); others through sub-blocks."""
        if _fast(block):
            tile = tile_elements()
            if len(axes) == block.ndim:
                return self._flat(block, arg_flat(block, self.largest, tile), origin)
            columns = block.size // block.shape[0]
            if axes == (0,) and 64 * columns <= tile:  # tiles of >= 64 rows: few tile extremes
                value, index = arg_rows(block, self.largest, tile)
                return value[None], (index + origin[0]).astype(np.intp)[None]
        return super().chunk_state(block, axes, origin)

    def _flat(self, block: np.ndarray[Any, Any], local: int, origin: tuple[int, ...]) -> State:
        """The state of ``block``'s element at flat index ``local``, with its global index."""
        coords = np.unravel_index(local, block.shape) if block.ndim else ()
        value = block[coords] if block.ndim else block[()]
        where = tuple(int(c) + o for c, o in zip(coords, origin, strict=True))
        flat = int(np.ravel_multi_index(where, self.shape)) if where else 0
        keep = (1,) * block.ndim
        return np.full(keep, value, dtype=block.dtype), np.full(keep, flat, dtype=np.intp)

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        fn = np.argmax if self.largest else np.argmin
        if len(axes) == block.ndim:  # axis=None: a flat index into the whole array (C order)
            return self._flat(block, int(fn(block)), origin)
        (axis,) = axes
        idx = fn(block, axis=axis, keepdims=True)
        value = np.take_along_axis(block, idx, axis=axis)
        return value, (idx + origin[axis]).astype(np.intp, copy=False)

    def combine(self, a: State, b: State) -> State:
        va, ia = a
        vb, ib = b
        better = (vb > va) if self.largest else (vb < va)
        take_b = better | ((vb == va) & (ib < ia))
        if va.dtype.kind in "fcmM":  # NaN (NaT for datetimes) wins, the first one
            nan_a, nan_b = _isnan(va), _isnan(vb)
            take_b = np.where(nan_a | nan_b, nan_b & (~nan_a | (ib < ia)), take_b)
        return np.where(take_b, vb, va), np.where(take_b, ib, ia)

    def finish(self, state: State) -> np.ndarray[Any, Any]:
        return state[1]


class CountNonzero(Kernel):
    sub_blocked = True

    def state_bytes(self, dtype: np.dtype[Any]) -> int:
        return 8

    def chunk_state(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                    origin: tuple[int, ...]) -> State:
        """A C-contiguous chunk is counted whole (numpy's own count makes no temporaries) or
        by rows through a reused boolean tile; others in sub-blocks."""
        if _fast(block):
            if len(axes) == block.ndim:
                return (np.full((1,) * block.ndim, count_nonzero_all(block), dtype=np.intp),)
            if axes == (0,):
                return (count_nonzero_rows(block, tile_elements())[None],)
        return super().chunk_state(block, axes, origin)

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        if len(axes) == block.ndim:
            keep = (1,) * block.ndim
            return (np.full(keep, np.count_nonzero(block), dtype=np.intp),)
        return (np.count_nonzero(block, axis=axes, keepdims=True).astype(np.intp, copy=False),)

    def combine(self, a: State, b: State) -> State:
        return (a[0] + b[0],)


class VarInt(Kernel):
    """The second pass of ``var``/``std`` with an integer ``dtype=``, computed as numpy does.

    numpy truncates the mean to ``dtype`` and sums the squared deviations in ``dtype``
    (wrapping on overflow). Every step is integer arithmetic, so the chunked sums are exact.
    ``mean`` is that truncated mean with the reduced axes kept.
    """

    def __init__(self, dtype: np.dtype[Any], mean: np.ndarray[Any, Any]) -> None:
        self.dtype = dtype
        self.mean = mean

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        where = tuple(slice(0, 1) if i in axes else slice(o, o + n)
                      for i, (o, n) in enumerate(zip(origin, block.shape, strict=True)))
        x = np.asarray(block - self.mean[where])
        if block.dtype.kind in "fiu":
            x = np.multiply(x, x, out=x)
        else:
            x = np.multiply(x, np.conjugate(x), out=x).real
        return (np.asarray(np.sum(x, axis=axes, keepdims=True, dtype=self.dtype)),)

    def combine(self, a: State, b: State) -> State:
        with np.errstate(over="ignore"):
            return (a[0] + b[0],)


# ---- the fixed merge tree of the floating kernels --------------------------------------------
Node = tuple[int, int, State]
"""A node of a pairwise tree: ``(level, index, state)``; leaves are level 0."""


def _cut(state: State, axis: int, start: int, stop: int, step: int = 1) -> State:
    return tuple(s[(slice(None),) * axis + (slice(start, stop, step),)] for s in state)


def _joined(parts: list[State], axis: int) -> State:
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate([p[i] for p in parts], axis=axis) for i in range(len(parts[0])))


def fold(kernel: Kernel, states: State, axis: int, first: int, total: int) -> list[Node]:
    """Combine children ``first .. first + k - 1`` of a fixed pairwise tree over ``total``.

    ``states`` is consumed: a kernel may combine into its left operand (a view of it).

    ``states`` hold the ``k`` consecutive children along ``axis``. Node ``i`` of level ``l``
    is ``combine(node 2i, node 2i+1)`` of level ``l - 1``, or node ``2i`` itself when ``2i + 1``
    does not exist, so the tree depends on ``total`` alone. Pairs are combined with one
    vectorised call per level; returned are the nodes whose sibling lies outside the run (and
    the root, when the run covers every child).
    """
    out: list[Node] = []
    level, lo, count = 0, first, total
    cur = states
    while True:
        k = cur[0].shape[axis]
        if k == 0:
            return out
        if count == 1:
            out.append((level, lo, cur))
            return out
        if lo % 2:  # its left sibling is elsewhere
            out.append((level, lo, _cut(cur, axis, 0, 1)))
            cur, lo, k = _cut(cur, axis, 1, k), lo + 1, k - 1
            if k == 0:
                return out
        pairs = k // 2
        tail: State | None = None
        if k % 2:
            last = lo + k - 1
            if last == count - 1:  # no sibling at all: it rises as it is
                tail = _cut(cur, axis, k - 1, k)
            else:
                out.append((level, last, _cut(cur, axis, k - 1, k)))
        parts = []
        if pairs:
            parts.append(kernel.combine(_cut(cur, axis, 0, 2 * pairs, 2),
                                        _cut(cur, axis, 1, 2 * pairs, 2)))
        if tail is not None:
            parts.append(tail)
        if not parts:
            return out
        cur = _joined(parts, axis)
        level, lo, count = level + 1, lo // 2, (count + 1) // 2


class _Fold:
    """One fixed pairwise tree, fed nodes in any order; :meth:`add` returns the root."""

    def __init__(self, kernel: Kernel, total: int) -> None:
        self.kernel, self.total = kernel, total
        self.nodes: dict[tuple[int, int], State] = {}

    def add(self, level: int, index: int, state: State) -> State | None:
        count = -(-self.total // (1 << level))
        while count > 1:
            sibling = index ^ 1
            if sibling < count:
                other = self.nodes.pop((level, sibling), None)
                if other is None:
                    self.nodes[(level, index)] = state
                    return None
                left, right = (other, state) if sibling < index else (state, other)
                state = self.kernel.combine(left, right)
            level, index, count = level + 1, index // 2, (count + 1) // 2
        return state


class _Place:
    """Children that are not combined but placed side by side along ``axis`` (kept axes)."""

    def __init__(self, axis: int, total: int) -> None:
        self.axis, self.total, self.filled = axis, total, 0
        self.state: list[np.ndarray[Any, Any]] | None = None

    def add(self, start: int, stop: int, state: State) -> State | None:
        if self.state is None:
            self.state = []
            for s in state:
                shape = list(s.shape)
                shape[self.axis] = self.total
                self.state.append(np.empty(shape, dtype=s.dtype))
        where = (slice(None),) * self.axis + (slice(start, stop),)
        for acc, s in zip(self.state, state, strict=True):
            acc[where] = s
        self.filled += stop - start
        return tuple(self.state) if self.filled == self.total else None


Part = tuple[Any, ...]
"""What a chunk hands to :meth:`Tree.add`: ``("node", k, prefix, level, index, state)``,
``("place", k, prefix, start, stop, state)`` or ``("piece", prefix, leaf, key, data)``."""


class Tree:
    """A reduction whose merge order is fixed by the array's shape, never by its chunks.

    The array (viewed in C order: a Fortran-ordered array is transposed) is cut into *leaves*,
    boxes of at most :data:`SUB_BLOCK_BYTES` / 16 elements: along axis ``d``, the first axis
    whose slabs are that small, ``L`` slabs per leaf; along the axes before ``d``, one index
    per leaf. Each leaf's state is computed from the leaf alone, in float64, then states are
    merged level by level: at axis ``k <= d``, the children of one index prefix are combined
    in a fixed pairwise tree (when ``k`` is reduced) or placed side by side (when it is not).

    A chunk hands over the roots of the subtrees it covers whole (computed on the worker with
    one vectorised call per tree level) and copies of the leaves it covers only in part; the
    main thread completes such leaves when their last piece arrives. Whatever the chunking
    (budget, threads), every state is computed from the same elements in the same order, so
    results are bitwise identical; and the merge is pairwise, so error grows like log(n).
    """

    def __init__(self, kernel: Kernel, shape: tuple[int, ...], axes: tuple[int, ...],
                 order: str) -> None:
        ndim = len(shape)
        self.kernel = kernel
        self.flip = order == "F" and ndim > 1
        self.shape = tuple(reversed(shape)) if self.flip else tuple(shape)
        self.axes = frozenset(ndim - 1 - a for a in axes) if self.flip else frozenset(axes)
        self.leaf = max(1, SUB_BLOCK_BYTES // 16)
        unit = [math.prod(self.shape[k + 1:]) for k in range(ndim)]
        self.d = next(k for k in range(ndim) if unit[k] <= self.leaf)
        self.L = min(self.shape[self.d], max(1, self.leaf // unit[self.d]))
        self.J = -(-self.shape[self.d] // self.L)
        self.levels: dict[tuple[int, tuple[int, ...]], _Fold | _Place] = {}
        self.pieces: dict[tuple[tuple[int, ...], int], list[Any]] = {}
        self.result: State | None = None

    # ---- geometry ----------------------------------------------------------------------------
    def _level(self, k: int, prefix: tuple[int, ...]) -> _Fold | _Place:
        if k in self.axes:
            return _Fold(self.kernel, self.J if k == self.d else self.shape[k])
        return _Place(k, self.shape[k])

    def _feed(self, part: Part) -> None:
        """Add a node or placement to its level; complete levels rise to their parents."""
        _kind, k, prefix, a, b, state = part
        while True:
            level = self.levels.get((k, prefix))
            if level is None:
                level = self.levels[(k, prefix)] = self._level(k, prefix)
            done = level.add(a, b, state)
            if done is None:
                return
            del self.levels[(k, prefix)]
            if k == 0:
                self.result = done
                return
            i = prefix[-1]
            k, prefix, state = k - 1, prefix[:-1], done
            a, b = (0, i) if k in self.axes else (i, i + 1)

    # ---- worker side -------------------------------------------------------------------------
    def _leaf_states(self, view: np.ndarray[Any, Any], j1: int, j2: int) -> State:
        """States of leaves ``j1 .. j2 - 1``, which ``view`` covers whole along axis ``d``.

        Along a reduced axis ``d`` the result holds one state per leaf (``j2 - j1`` along
        ``d``); along a kept one, the leaves' states side by side. Axes before ``d`` keep
        whatever extent ``view`` has. Leaves are summarised in groups (one vectorised call per
        group); a group is bounded when the kernel needs temporaries or the view must be copied
        to be contiguous, so scratch memory stays within :data:`SUB_BLOCK_BYTES`.
        """
        d, L, J = self.d, self.L, self.J
        n = self.shape[d]
        short = j2 == J and n % L != 0
        runs = [(j1, j2 - 1 if short else j2, L)] + ([(j2 - 1, j2, n % L)] if short else [])
        size = L * math.prod(view.shape[:d]) * math.prod(self.shape[d + 1:])
        tile = tile_elements(16 if view.dtype.kind == "c" else 8)  # float64 (complex128) temps
        red = tuple(i + 1 for i in sorted(self.axes) if i >= d)
        # groups of many leaves only for a kernel that takes them without temporaries (the
        # native one; it also needs aligned data)
        sub = not (self.kernel.scratch_free(view.dtype, red) and view.flags.aligned)
        per = max(1, (tile if sub else self.leaf) // size)
        copy = not view.flags.c_contiguous
        step = per if (copy or sub) else max(1, j2 - j1)
        states: list[State] = []
        for ja, jb, length in runs:
            for g in range(ja, jb, step):
                gb = min(g + step, jb)
                lo = (g - j1) * L
                block = view[(slice(None),) * d + (slice(lo, lo + (gb - g) * length),)]
                block = np.ascontiguousarray(block)
                shaped = block.reshape((*block.shape[:d], gb - g, length, *block.shape[d + 1:]))
                state = self.kernel.partial(shaped, red, None, ())
                if d in self.axes:  # drop the leaf's own (reduced) axis: one state per leaf
                    states.append(tuple(s.reshape(s.shape[:d + 1] + s.shape[d + 2:])
                                        for s in state))
                else:  # leaves side by side
                    states.append(tuple(s.reshape((*s.shape[:d], -1, *s.shape[d + 2:]))
                                        for s in state))
        return _joined(states, d)

    def _leaves(self, view: np.ndarray[Any, Any], prefix: tuple[int, ...], j1: int,
                j2: int) -> list[Part]:
        """Parts for leaves ``j1 .. j2 - 1`` of ``prefix``, which ``view`` covers whole."""
        d = self.d
        state = self._leaf_states(view, j1, j2)
        if d in self.axes:
            return [("node", d, prefix, lv, ix, st)
                    for lv, ix, st in fold(self.kernel, state, d, j1, self.J)]
        stop = min(j2 * self.L, self.shape[d])
        return [("place", d, prefix, j1 * self.L, stop, state)]

    def _whole(self, view: np.ndarray[Any, Any], k: int, prefix: tuple[int, ...]) -> State:
        """The state of a slab at level ``k`` (one index per axis before ``k``), whole."""
        parts = (self._leaves(view, prefix, 0, self.J) if k == self.d
                 else self._slabs(view, k, prefix, 0))
        level = self._level(k, prefix)
        done: State | None = None
        for _kind, _k, _prefix, a, b, state in parts:
            done = level.add(a, b, state)
        assert done is not None
        return done

    def _slab_state_size(self, k: int) -> int:
        """Elements of the leaf states of one slab along axis ``k < d``, before any folding."""
        d = self.d
        size = math.prod(self.shape[k + 1:d]) * (self.J if d in self.axes else self.shape[d])
        return size * math.prod(n for i, n in enumerate(self.shape) if i > d and i not in self.axes)

    def _slabs(self, view: np.ndarray[Any, Any], k: int, prefix: tuple[int, ...],
               start: int) -> list[Part]:
        """Parts for the whole slabs ``start ..`` along axis ``k < d`` that ``view`` holds.

        Slabs go in batches: a contiguous view, for a kernel without temporaries, in one
        vectorised call per batch and tree level (every level below ``k`` is complete in the
        view, so it folds to its root at once); otherwise slab by slab, with temporaries bounded
        by the leaves. Along a reduced ``k`` the batches feed a local tree, so at most
        ``log2(slabs)`` slab states are held at once; its unfinished nodes are handed on.
        """
        d, n = self.d, view.shape[k]
        red = tuple(i + 1 for i in sorted(self.axes) if i >= d)
        vector = (view.flags.c_contiguous and view.flags.aligned
                  and self.kernel.scratch_free(view.dtype, red))
        batch = max(1, self.leaf // self._slab_state_size(k)) if vector else 1
        local = _Fold(self.kernel, self.shape[k]) if k in self.axes else None
        out: list[Part] = []
        for b0 in range(0, n, batch):
            b1 = min(b0 + batch, n)
            sub = view[(slice(None),) * k + (slice(b0, b1),)]
            if vector:
                state = self._leaf_states(sub, 0, self.J)
                for level in range(d, k, -1):
                    if level in self.axes:
                        total = self.J if level == d else self.shape[level]
                        ((_lv, _ix, state),) = fold(self.kernel, state, level, 0, total)
            else:
                state = _joined([self._whole(sub[(slice(None),) * k + (slice(i, i + 1),)],
                                             k + 1, (*prefix, start + b0 + i))
                                 for i in range(b1 - b0)], k)
            if local is None:
                out.append(("place", k, prefix, start + b0, start + b1, state))
                continue
            for lv, ix, st in fold(self.kernel, state, k, start + b0, self.shape[k]):
                root = local.add(lv, ix, st)
                if root is not None:  # the view holds every slab along k
                    out.append(("node", k, prefix, (self.shape[k] - 1).bit_length(), 0, root))
        if local is not None:
            out.extend(("node", k, prefix, lv, ix, st) for (lv, ix), st in local.nodes.items())
        return out

    def parts(self, key: tuple[slice, ...], depth: int, block: np.ndarray[Any, Any]) -> list[Part]:
        """What one chunk (``key``, split ``depth``, its ``block``) contributes; on a worker."""
        if self.flip:
            key, block = key[::-1], block.T
        d, L = self.d, self.L
        starts = tuple(k.start for k in key)
        if depth > d:  # inside one leaf
            j = starts[d] // L
            where = (*(slice(0, 1) for _ in range(d)),
                     slice(starts[d] - j * L, starts[d] - j * L + 1), *key[d + 1:])
            return [("piece", starts[:d], j, where, np.array(block))]
        s, e = key[depth].start, key[depth].stop
        if depth < d:
            return self._slabs(block, depth, starts[:depth], s)
        n = self.shape[d]
        lo = min(-(-s // L) * L, e)
        hi = e if e == n else max((e // L) * L, lo)
        out: list[Part] = []
        for a, b in ((s, lo), (hi, e)):
            if b > a:
                j = a // L
                where = (*(slice(0, 1) for _ in range(d)), slice(a - j * L, b - j * L))
                piece = np.array(block[(slice(None),) * d + (slice(a - s, b - s),)])
                out.append(("piece", starts[:d], j, where, piece))
        if hi > lo:
            inner = block[(slice(None),) * d + (slice(lo - s, hi - s),)]
            out.extend(self._leaves(inner, starts[:d], lo // L, -(-hi // L)))
        return out

    def add(self, parts: Iterable[Part]) -> None:
        """Merge one chunk's parts (on the calling thread, in any chunk order)."""
        for part in parts:
            if part[0] != "piece":
                self._feed(part)
                continue
            _kind, prefix, j, where, data = part
            entry = self.pieces.get((prefix, j))
            if entry is None:
                d = self.d
                rows = min(self.L, self.shape[d] - j * self.L)
                buffer = np.empty((*(1 for _ in range(d)), rows, *self.shape[d + 1:]),
                                  dtype=data.dtype)
                entry = self.pieces[(prefix, j)] = [buffer, 0]
            entry[0][where] = data
            entry[1] += data.size
            if entry[1] == entry[0].size:
                del self.pieces[(prefix, j)]
                for leaf in self._leaves(entry[0], prefix, j, j + 1):
                    self._feed(leaf)

    def finish(self) -> np.ndarray[Any, Any]:
        """The finished result, reduced axes kept as length 1."""
        assert self.result is not None and not self.pieces
        state = tuple(s.T for s in self.result) if self.flip else self.result
        return self.kernel.finish(state)
