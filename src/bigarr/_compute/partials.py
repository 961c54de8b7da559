"""Partial states of the reductions: how one block is summarised, and how two summaries merge.

Each kernel turns a block into a *partial state* (a tuple of arrays with the reduced axes kept as
length 1), combines two states elementwise, and finishes a state into the result. The engine
(:mod:`bigarr._compute.reductions`) decides which states meet; a kernel never knows about chunks.

Kernels that need temporaries (``var``, ``std``, ``count_nonzero``) work through a block in
sub-blocks of at most :data:`SUB_BLOCK_BYTES` of float64 (complex128) temporaries, so their scratch
memory is fixed per thread and can be planned.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bigarr._plan.chunks import Chunk

__all__ = [
    "SUB_BLOCK_BYTES",
    "Arg",
    "CountNonzero",
    "Extreme",
    "Kernel",
    "Mean",
    "State",
    "Sum",
    "Var",
    "merge",
]

#: Largest temporary a kernel with temporaries makes at once, in bytes: sub-blocks hold at most
#: this many bytes of float64 (or complex128) elements.
SUB_BLOCK_BYTES = 256 << 10

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
    """A reduction: partial state of a block, combine two states, finish a state."""

    sub_blocked = False

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
    if dtype.kind == "f":
        return np.dtype(np.float64)
    if dtype.kind == "c":
        return np.dtype(np.complex128)
    return dtype


class Sum(Kernel):
    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        s = np.sum(block, axis=axes, keepdims=True, dtype=self.dtype)
        return (s.astype(_acc_dtype(s.dtype), copy=False),)

    def combine(self, a: State, b: State) -> State:
        return (a[0] + b[0],)


class Mean(Kernel):
    def state_bytes(self, dtype: np.dtype[Any]) -> int:
        return _acc_size(dtype) + 8
    def __init__(self, dtype: Any, src: np.dtype[Any]) -> None:
        # numpy accumulates integer means in float64, float16 in float32, other floats in their
        # own type (pairwise).
        if dtype is None and src.kind in "biu":
            dtype = np.float64
        elif dtype is None and src == np.float16:
            dtype = np.float32
        self.dtype = dtype

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        s = np.sum(block, axis=axes, keepdims=True, dtype=self.dtype)
        n = np.full(s.shape, math.prod(block.shape[i] for i in axes), dtype=np.int64)
        return s.astype(_acc_dtype(s.dtype), copy=False), n

    def combine(self, a: State, b: State) -> State:
        return a[0] + b[0], a[1] + b[1]

    def finish(self, state: State) -> np.ndarray[Any, Any]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return state[0] / state[1]


class Var(Kernel):
    """Count, shift, mean and M2 of each block, merged with Chan et al.'s parallel update.

    Each partial state is kept relative to a *shift* ``K``, the block's first element along the
    reduced axes: means of ``x - K`` keep full precision even when the data sit on a large
    offset (1e9 + noise), where absolute means would be rounded to the offset's resolution.
    Merging two states adds ``(K_b - K_a) + (mean_b - mean_a)``, both small and exact-ish.
    """

    sub_blocked = True

    def state_bytes(self, dtype: np.dtype[Any]) -> int:
        return 8 + 3 * (16 if dtype.kind == "c" else 8)

    def __init__(self, ddof: float) -> None:
        self.ddof = ddof

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        acc = np.complex128 if block.dtype.kind == "c" else np.float64
        n = math.prod(block.shape[i] for i in axes)
        first = tuple(slice(0, 1) if i in axes else slice(None) for i in range(block.ndim))
        shift = np.asarray(block[first], dtype=acc)
        with np.errstate(invalid="ignore"):
            dev = np.subtract(block, shift, dtype=acc)
            mean = np.mean(dev, axis=axes, keepdims=True)
            dev -= mean
            if dev.dtype.kind == "c":
                m2 = np.sum(dev.real**2 + dev.imag**2, axis=axes, keepdims=True)
            else:
                np.multiply(dev, dev, out=dev)
                m2 = np.sum(dev, axis=axes, keepdims=True)
        count = np.full(mean.shape, n, dtype=np.int64)
        return count, shift.reshape(mean.shape), np.asarray(mean), np.asarray(m2)

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
        fn = np.max if self.largest else np.min
        return (fn(block, axis=axes, keepdims=True),)

    def combine(self, a: State, b: State) -> State:
        return ((np.maximum if self.largest else np.minimum)(a[0], b[0]),)


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

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        fn = np.argmax if self.largest else np.argmin
        if len(axes) == block.ndim:  # axis=None: a flat index into the whole array (C order)
            local = int(fn(block))
            coords = np.unravel_index(local, block.shape) if block.ndim else ()
            value = block[coords] if block.ndim else block[()]
            where = tuple(int(c) + o for c, o in zip(coords, origin, strict=True))
            flat = int(np.ravel_multi_index(where, self.shape)) if where else 0
            keep = (1,) * block.ndim
            return np.full(keep, value, dtype=block.dtype), np.full(keep, flat, dtype=np.intp)
        (axis,) = axes
        idx = fn(block, axis=axis, keepdims=True)
        value = np.take_along_axis(block, idx, axis=axis)
        return value, (idx + origin[axis]).astype(np.intp, copy=False)

    def combine(self, a: State, b: State) -> State:
        va, ia = a
        vb, ib = b
        better = (vb > va) if self.largest else (vb < va)
        take_b = better | ((vb == va) & (ib < ia))
        if va.dtype.kind in "fc":
            nan_a, nan_b = np.isnan(va), np.isnan(vb)
            take_b = np.where(nan_a | nan_b, nan_b & (~nan_a | (ib < ia)), take_b)
        return np.where(take_b, vb, va), np.where(take_b, ib, ia)

    def finish(self, state: State) -> np.ndarray[Any, Any]:
        return state[1]


class CountNonzero(Kernel):
    sub_blocked = True

    def state_bytes(self, dtype: np.dtype[Any]) -> int:
        return 8

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        if len(axes) == block.ndim:
            keep = (1,) * block.ndim
            return (np.full(keep, np.count_nonzero(block), dtype=np.intp),)
        return (np.count_nonzero(block, axis=axes, keepdims=True).astype(np.intp, copy=False),)

    def combine(self, a: State, b: State) -> State:
        return (a[0] + b[0],)
