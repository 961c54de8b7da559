"""Partial states of the reductions: how one block is summarised, and how two summaries merge.

Each kernel turns a block into a *partial state* (a tuple of arrays with the reduced axes kept as
length 1), combines two states elementwise, and finishes a state into the result. The engine
(:mod:`bigarr._compute.reductions`) decides which states meet; a kernel never knows about chunks.

Two merge orders:

* *exact* kernels (integer sums, extremes, arg-extremes, counts) give the same bits in any order,
  so the engine merges their states chunk by chunk;
* floating sums, means and variances go through :class:`~bigarr._compute.mergetree.Tree`: a
  fixed pairwise tree over *leaves* of at most ``SUB_BLOCK_BYTES / 16`` elements, defined by
  the array's shape alone, so their results are the same bits whatever the budget and
  threads. They accumulate in float64 (complex128) whatever the data's precision.

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
    "Var",
    "VarInt",
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
    means, variances) go through :class:`~bigarr._compute.mergetree.Tree`, whose order is fixed
    by the array alone.
    """

    sub_blocked = False
    exact = True

    def scratch_free(self, dtype: np.dtype[Any], axes: tuple[int, ...] | None = None) -> bool:
        """True when :meth:`partial` needs no temporaries for blocks of ``dtype`` reduced along
        ``axes`` (None: whatever the axes): :class:`~bigarr._compute.mergetree.Tree` may then
        hand it many leaves at once, and the plan reserves no scratch for it."""
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
