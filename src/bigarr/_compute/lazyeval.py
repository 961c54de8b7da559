"""Evaluating a lazy expression (:mod:`bigarr._compute.lazy`) on one chunk of rows, and the
reductions' kernels.

:func:`evaluate` walks an expression over one chunk's blocks (:class:`Env`): leaves are the
chunk's blocks (or used whole), reductions computed in earlier passes are values, elementwise
nodes call their function. Scans along axis 0 need what came before the chunk, their *carry*
(:class:`Carries`): ``cumsum``/``cumprod`` the running total (product) of the rows before it,
``diff`` the last ``n`` rows before it. A chunk evaluates the scanned expression first, then
takes its predecessor's carry; ``cumsum``/``cumprod`` combine it into the block's first row and
scan the block (exactly numpy's sequence of roundings, so the result is numpy's bit for bit at
every budget, thread count and tile size), then publish their last row. Chunks are handed to the
engine's workers in order (a FIFO pool), so the chunk a worker waits for is always running or
done; the wait is for the predecessor's scan, not for its whole work.

The kernels are those of :mod:`bigarr._compute.partials` (the same states and merges as
:func:`bigarr.sum` and friends) and a few more for the reductions only lazy expressions have:
``prod``, ``any``/``all`` and the nan variants.
"""

from __future__ import annotations

import itertools
import math
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bigarr._compute.lazynodes import Const, Filter, Index, Leaf, Node, Op, Reduce, Scan, rowed
from bigarr._compute.partials import (
    Arg,
    CountNonzero,
    Extreme,
    Kernel,
    Mean,
    State,
    Sum,
    Var,
)
from bigarr._plan.chunks import Chunk
from bigarr.errors import BigArrError, MissingExtraError, ModeError, ShapeError

__all__ = [
    "BACKENDS",
    "TILE_BYTES",
    "Carries",
    "Env",
    "evaluate",
    "finish",
    "kernel",
    "numpy_reduce",
    "parse_backend",
    "tiles",
]

Array = np.ndarray[Any, Any]


# ---- the carries of scans --------------------------------------------------------------------
class Carries:
    """The carry of each scan at each chunk boundary, handed from chunk to chunk in order."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.values: dict[tuple[int, int], Any] = {}
        self.failed = False

    def take(self, node: Node, row: int) -> Any:
        """The carry of ``node`` into the chunk starting at ``row`` (None at row 0), waiting
        for the chunk before to publish it."""
        if row == 0:
            return None
        with self.cond:
            while (id(node), row) not in self.values:
                if self.failed:
                    raise _Abandoned("an earlier chunk failed")
                self.cond.wait(0.5)
            return self.values.pop((id(node), row))

    def give(self, node: Node, row: int, value: Any) -> None:
        with self.cond:
            self.values[(id(node), row)] = value
            self.cond.notify_all()

    def fail(self) -> None:
        with self.cond:
            self.failed = True
            self.cond.notify_all()


class _Abandoned(BigArrError, RuntimeError):
    """A chunk waited for the carry of a chunk that failed (its error is the one reported)."""


# ---- evaluation of one block -----------------------------------------------------------------
#: Bytes of input rows evaluated at once within a chunk: an elementwise chain's temporaries are
#: this size (a few times over), so they stay in the CPU's caches instead of streaming
#: chunk-sized temporaries through memory. Set to 0 to evaluate whole chunks at once.
TILE_BYTES = 512 << 10


def tiles(n: int, blocks: Sequence[Array], start: int = 0,
          align: int = 1) -> list[tuple[int, int]]:
    """Row spans ``(a, b)`` of a chunk of ``n`` rows starting at row ``start``, each about
    :data:`TILE_BYTES` of the ``blocks``' rows together, cut at multiples of ``align`` rows
    of the whole array (one span when tiling is off or the chunk is small)."""
    row_bytes = sum(b.nbytes // max(len(b), 1) for b in blocks if b.ndim)
    if TILE_BYTES <= 0 or row_bytes * n <= 2 * TILE_BYTES:
        return [(0, n)]
    step = max(1, TILE_BYTES // max(row_bytes, 1))
    step = max(align, step // align * align)
    cuts = [0, *range(step - start % step, n, step), n]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


@dataclass
class Env:
    """What a chunk's evaluation reads."""

    blocks: dict[int, Array]
    """Streamed leaves' blocks of this chunk."""
    whole: dict[int, Array]
    """Leaves used whole."""
    values: dict[int, Array]
    """Results of reductions computed in earlier passes."""
    rows: slice | None
    """The chunk's rows (None: everything whole)."""
    carries: Carries | None = None
    """The scans' carries (None: a probe, or everything whole, with nothing before it)."""
    numexpr: bool = False
    """Hand floating chains to numexpr (``backend="numexpr"``); numpy's bits otherwise."""
    memo: dict[tuple[int, bool], Any] = field(default_factory=dict)


def evaluate(node: Node, is_rowed: bool, env: Env) -> Any:
    """``node``'s value on ``env``'s chunk (``is_rowed``: cut by the chunk's rows)."""
    key = (id(node), is_rowed)
    if key in env.memo:
        return env.memo[key]
    chunked = is_rowed and env.rows is not None
    out: Any
    if isinstance(node, Leaf):
        out = env.blocks[id(node)] if chunked else env.whole[id(node)]
    elif isinstance(node, Const):
        out = node.value[env.rows] if chunked and np.ndim(node.value) else node.value
    elif isinstance(node, Reduce):
        value = env.values[id(node)]
        # cut by the chunk's rows when the parent cuts it (it keeps axis 0, or its result
        # lines up with the rows of another input: ``y + x.mean(0)`` for y of x.shape[1] rows)
        out = value[env.rows] if chunked and value.ndim else value
    elif isinstance(node, Index) and node.rows is not None:  # of a value used whole
        out = np.asarray(evaluate(node.child, False, env))[(node.rows, *node.key)]
        out = out[env.rows] if chunked and out.ndim else out
    elif isinstance(node, Index):
        out = np.asarray(evaluate(node.child, is_rowed, env))[(slice(None), *node.key)]
    elif isinstance(node, Filter):
        child = np.asarray(evaluate(node.child, is_rowed, env))
        mask = np.asarray(evaluate(node.mask, is_rowed, env))
        out = child[mask]
    elif isinstance(node, Scan):
        child = np.asarray(evaluate(node.child, is_rowed, env))
        out = _scan(node, child, env if chunked else None)
    else:
        assert isinstance(node, Op)
        plan = _numexpr_plan(node, is_rowed) if env.numexpr else None
        if plan is not None:
            out = _numexpr_eval(node, plan, env)
        else:
            args = [evaluate(a, is_rowed and rowed(node, a), env) for a in node.args]
            with np.errstate(all="ignore"):
                out = node.func(*args, **dict(node.kwargs))
    env.memo[key] = out
    return out


# ---- the optional numexpr backend ------------------------------------------------------------
#: The evaluation backends: ``"numpy"`` (the default: numpy's own functions, so the results are
#: numpy's bits) and ``"numexpr"`` (opt-in, ``pip install 'bigarr[fast]'``: floating chains of
#: :data:`NUMEXPR_MIN_OPS` operations or more go to numexpr, faster, but its ``exp``,
#: ``tanh``, ... and float32 arithmetic differ from numpy's in the last bits).
BACKENDS = ("numpy", "numexpr")
#: Smallest chain (operations) worth handing to numexpr: on 2 cores a chain of six ran 1.9-2.6x
#: faster with numexpr than with numpy in tiles (bench/README.md), while (x - m) / s (two) was
#: no faster in an in-memory trial.
NUMEXPR_MIN_OPS = 4
_NE_BINARY: dict[Any, str] = {np.add: "+", np.subtract: "-", np.multiply: "*", np.true_divide: "/"}
_NE_UNARY: dict[Any, str] = {np.negative: "-", np.sqrt: "sqrt", np.exp: "exp", np.log: "log",
             np.log1p: "log1p", np.expm1: "expm1", np.absolute: "abs", np.sin: "sin",
             np.cos: "cos", np.tanh: "tanh"}
_NE_PLANS: weakref.WeakKeyDictionary[Node, dict[bool, Any]] = weakref.WeakKeyDictionary()


def parse_backend(backend: str | None) -> bool:
    """Whether ``backend`` (None or a name of :data:`BACKENDS`) asks for numexpr.

    Raises
    ------
    ModeError
        For a name not in :data:`BACKENDS`.
    MissingExtraError
        For ``"numexpr"`` when numexpr is not installed.
    """
    if backend is None or backend == "numpy":
        return False
    if backend != "numexpr":
        raise ModeError(f"Expected backend as one of {', '.join(map(repr, BACKENDS))} or None. "
                        f"Got {backend!r}.")
    try:
        import numexpr  # noqa: F401
    except ImportError:
        raise MissingExtraError("backend='numexpr' needs numexpr: pip install "
                                "'bigarr[fast]'.") from None
    return True


def _numexpr() -> Any:
    import numexpr

    return numexpr


def _numexpr_plan(node: Op, is_rowed: bool) -> tuple[str, list[tuple[str, Node, bool]]] | None:
    """numexpr's expression for the floating chain rooted at ``node`` and its terminals
    (evaluated by numpy, passed as variables), or None (not a chain numexpr computes with
    numpy's dtypes, or too short to gain)."""
    cached = _NE_PLANS.setdefault(node, {})
    if is_rowed in cached:
        return cached[is_rowed]  # type: ignore[no-any-return]
    terms: list[tuple[str, Node, bool]] = []
    ops = [0]
    dtype = node.dtype

    def walk(n: Node, r: bool) -> str | None:
        if isinstance(n, Op) and n.dtype == dtype and not n.kwargs and \
                ((n.func in _NE_BINARY and len(n.args) == 2) or n.func in _NE_UNARY):
            parts = [walk(a, r and rowed(n, a)) for a in n.args]
            if any(p is None for p in parts):
                return None
            ops[0] += 1
            if n.func in _NE_BINARY:
                return f"({parts[0]} {_NE_BINARY[n.func]} {parts[1]})"
            op = _NE_UNARY[n.func]
            return f"(-{parts[0]})" if op == "-" else f"{op}({parts[0]})"
        if isinstance(n, Const) and not n.shape:
            pass  # a scalar: cast to the chain's dtype, as numpy's weak scalars are
        elif n.dtype != dtype:
            return None
        name = f"v{len(terms)}"
        terms.append((name, n, r))
        return name

    expr = walk(node, is_rowed)
    plan = (expr, terms) if expr is not None and ops[0] >= NUMEXPR_MIN_OPS and \
        dtype.kind == "f" and dtype.itemsize in (4, 8) else None
    cached[is_rowed] = plan
    return plan


def _numexpr_eval(node: Op, plan: tuple[str, list[tuple[str, Node, bool]]], env: Env) -> Any:
    expr, terms = plan
    local = {}
    for name, n, r in terms:
        value = evaluate(n, r, env)
        local[name] = node.dtype.type(value) if isinstance(n, Const) and not n.shape \
            else np.asarray(value)
    with np.errstate(all="ignore"):
        return np.asarray(_numexpr().evaluate(expr, local_dict=local), dtype=node.dtype)


def _scan(node: Scan, child: Array, env: Env | None) -> Array:
    carries = None if env is None else env.carries
    assert env is None or env.rows is not None
    start = 0 if env is None or env.rows is None else env.rows.start
    stop = 0 if env is None or env.rows is None else env.rows.stop
    if node.kind == "diff":
        if carries is None:
            joined = child
        else:
            before = carries.take(node, start)
            joined = child if before is None else np.concatenate([before, child])
            carries.give(node, stop, joined[max(0, len(joined) - node.n):].copy())
        return np.diff(joined, n=node.n, axis=0)
    fn, op = (np.cumsum, np.add) if node.kind == "cumsum" else (np.cumprod, np.multiply)
    with np.errstate(all="ignore"):
        if carries is None:
            return np.asarray(fn(child, axis=0, dtype=node.dtype))
        # numpy's scan along axis 0 is sequential (row i is row i-1 combined with x[i], rounded
        # to the dtype at every step): the carry goes into the first row *before* the scan, so
        # each chunk (tile) continues numpy's own sequence bit for bit. (Adding the carry to
        # the block's scan afterwards rounds differently, and differently at every budget.)
        before = carries.take(node, start)
        if before is None or not len(child):
            local = np.asarray(fn(child, axis=0, dtype=node.dtype))
        else:
            work = np.array(child, dtype=node.dtype)  # a copy, in the scan's dtype
            work[:1] = op(before, work[:1])
            local = np.asarray(fn(work, axis=0, dtype=node.dtype, out=work))
        carries.give(node, stop, local[-1:].copy() if len(local) else before)
        return local


# ---- the reductions' kernels -----------------------------------------------------------------
def _nan_to(block: Array, value: Any) -> Array:
    if block.dtype.kind not in "fc":
        return block
    return np.where(np.isnan(block), block.dtype.type(value), block)


class _Prod(Sum):
    """Products; a floating product is accumulated in float64 (complex128)."""

    def partial(self, block: Array, axes: tuple[int, ...], chunk: Chunk | None,
                origin: tuple[int, ...]) -> State:
        with np.errstate(all="ignore"):
            return (np.asarray(np.prod(block, axis=axes, keepdims=True, dtype=self.acc)),)

    def combine(self, a: State, b: State) -> State:
        with np.errstate(all="ignore"):
            return (a[0] * b[0],)


class _Truth(Kernel):
    """``any`` / ``all``."""

    def __init__(self, anyof: bool) -> None:
        self.anyof = anyof

    def state_bytes(self, dtype: np.dtype[Any]) -> int:
        return 1

    def partial(self, block: Array, axes: tuple[int, ...], chunk: Chunk | None,
                origin: tuple[int, ...]) -> State:
        fn = np.any if self.anyof else np.all
        return (np.asarray(fn(block, axis=axes, keepdims=True)),)

    def combine(self, a: State, b: State) -> State:
        return ((a[0] | b[0]) if self.anyof else (a[0] & b[0]),)


class _NanSum(Sum):
    sub_blocked = True

    def partial(self, block: Array, axes: tuple[int, ...], chunk: Chunk | None,
                origin: tuple[int, ...]) -> State:
        return super().partial(_nan_to(block, 0), axes, chunk, origin)


class _NanMean(Mean):
    sub_blocked = True

    def partial(self, block: Array, axes: tuple[int, ...], chunk: Chunk | None,
                origin: tuple[int, ...]) -> State:
        (s,) = Sum.partial(self, _nan_to(block, 0), axes, chunk, origin)
        if block.dtype.kind in "fc":
            n = np.sum(~np.isnan(block), axis=axes, keepdims=True, dtype=np.int64)
        else:
            n = np.full(s.shape, math.prod(block.shape[i] for i in axes), dtype=np.int64)
        return s, np.asarray(n)


class _NanVar(Var):
    """Var's state over the non-NaN values (shifted by the block's mean of them)."""

    native = False

    def partial(self, block: Array, axes: tuple[int, ...], chunk: Chunk | None,
                origin: tuple[int, ...]) -> State:
        if block.dtype.kind not in "fc":
            return super().partial(block, axes, chunk, origin)
        acc = np.complex128 if block.dtype.kind == "c" else np.float64
        ok = ~np.isnan(block)
        n = np.sum(ok, axis=axes, keepdims=True, dtype=np.int64)
        with np.errstate(all="ignore"):
            data = np.where(ok, block, 0).astype(acc)
            mean = np.sum(data, axis=axes, keepdims=True) / np.maximum(n, 1)
            dev = np.where(ok, data - mean, 0)
            if dev.dtype.kind == "c":
                m2 = np.sum(dev.real**2 + dev.imag**2, axis=axes, keepdims=True)
            else:
                m2 = np.sum(dev * dev, axis=axes, keepdims=True)
        return np.asarray(n), np.zeros(mean.shape, acc), np.asarray(mean), np.asarray(m2)

    def finish(self, state: State) -> Array:
        n = state[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.asarray(state[3] / (n - self.ddof))
        return np.where(n - self.ddof > 0, out, np.nan)


class _NanExtreme(Extreme):
    def partial(self, block: Array, axes: tuple[int, ...], chunk: Chunk | None,
                origin: tuple[int, ...]) -> State:
        if block.dtype.kind not in "fc":
            return super().partial(block, axes, chunk, origin)
        # all-NaN slices: NaN, which the next combine (fmin/fmax) drops for any number
        filled = _nan_to(block, -np.inf if self.largest else np.inf)
        out = np.asarray((np.max if self.largest else np.min)(filled, axis=axes, keepdims=True))
        allnan = np.all(np.isnan(block), axis=axes, keepdims=True)
        return (np.where(allnan, np.nan, out).astype(block.dtype),)

    def combine(self, a: State, b: State) -> State:
        return ((np.fmax if self.largest else np.fmin)(a[0], b[0]),)


def kernel(r: Reduce, shape: tuple[int, ...]) -> Kernel:
    """The kernel of reduction ``r`` of an expression of ``shape``."""
    kind = r.kind
    if kind in ("sum", "nansum", "prod"):
        cls = {"sum": Sum, "nansum": _NanSum, "prod": _Prod}[kind]
        return cls(r.out_dtype, r.dtype)  # dtype= as given, and the result's dtype
    if kind in ("mean", "nanmean"):
        return (Mean if kind == "mean" else _NanMean)(r.out_dtype, r.dtype)
    if kind in ("var", "std"):
        return Var(r.ddof)
    if kind in ("nanvar", "nanstd"):
        return _NanVar(r.ddof)
    if kind in ("argmin", "argmax"):
        return Arg(kind == "argmax", shape)
    if kind in ("any", "all"):
        return _Truth(kind == "any")
    if kind == "count_nonzero":
        return CountNonzero()
    if kind in ("nanmin", "nanmax"):
        return _NanExtreme(kind == "nanmax")
    return Extreme(kind == "max")


def finish(r: Reduce, k: Kernel, state: State | None, done: Array | None = None) -> Array:
    """The result of ``r`` from its merged state (or ``done``, its kernel's finished one)."""
    res: Any = k.finish(state) if state is not None else done
    if r.kind in ("std", "nanstd"):
        res = np.sqrt(res)
    with np.errstate(all="ignore"):
        out: Array = np.asarray(res).astype(r.dtype, copy=False)
    return out.reshape(r.shape)


def numpy_reduce(r: Reduce, value: Any) -> Array:
    """numpy's own ``r`` of a whole value (nothing to stream).

    Raises
    ------
    ShapeError
        For a zero-size reduction without identity (``min``, ``argmax``, ... of no rows).
    """
    import warnings

    fn = getattr(np, r.kind)
    kwargs: dict[str, Any] = {"keepdims": r.keepdims}
    if r.kind in ("argmin", "argmax") or r.q is not None or r.kind.endswith("median"):
        kwargs["axis"] = r.axis
    else:
        kwargs["axis"] = r.axes
    from bigarr._compute.lazynodes import REDUCTIONS

    takes_dtype, takes_ddof = REDUCTIONS.get(r.kind, (False, False))
    if takes_dtype:
        kwargs["dtype"] = r.out_dtype
    if takes_ddof:
        kwargs["ddof"] = r.ddof
    if r.q is not None:
        kwargs["method"] = r.method
    args = (np.asarray(value),) if r.q is None else (np.asarray(value), r.q)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return np.asarray(fn(*args, **kwargs), dtype=r.dtype)
        except ValueError as exc:
            if args[0].size:
                raise
            # a zero-size reduction without identity (min, argmax, ... of no rows, or of a
            # filter that kept none): as the eager bigarr.min and friends
            raise ShapeError(f"{r.kind} of an array of shape {args[0].shape}: {exc}") from None
