"""Planning and evaluating lazy expressions (:mod:`bigarr._compute.lazy`) in the fewest passes.

Every value an evaluation needs is an *item*: a reduction (its child expression is streamed and
reduced with the partial-state kernels of :mod:`bigarr._compute.partials`, the same kernels and
merge as :func:`bigarr.sum` and friends) or an output (its expression is streamed into the
result). An item's *level* is one more than the deepest reduction inside its expression, so
``x.std(0)`` is level 1 and ``(x - x.mean(0)) / x.std(0)`` is level 2.

Items of the same level over inputs with the same number of rows share one pass: one
:func:`~bigarr._compute.runplan.plan_run` and one :func:`~bigarr._compute.engine.execute`, in
which each chunk of rows is read once and every item's expression is evaluated on it (fused: the
temporaries are chunk-sized, and the planner measures them on a probe block). Levels run in
order, so a reduction's result is known (and held in memory, broadcast) when a later pass needs
it. Within an item, a leaf is streamed by rows when its axis 0 is the result's axis 0; a leaf
that broadcasts along the rows (fewer dimensions, or one row) is used whole.

A file output (:meth:`LazyArray.to_npy`) is written by :func:`bigarr.map_blocks` in its own
final pass, with its resumable, crash-safe publishing.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigarr._compute.engine import execute
from bigarr._compute.lazy import Const, Index, LazyArray, Leaf, Node, Op, Reduce
from bigarr._compute.operands import Stream, parse_operand
from bigarr._compute.partials import Extreme, Kernel, Mean, State, Sum, Var, merge
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.reductions import SCRATCH_BYTES
from bigarr._compute.runplan import RunPlan, parse_threads, plan_run, probe_temporaries
from bigarr._os.geometry import format_bytes, parse_size
from bigarr._plan.budget import DEFAULT_BUDGET
from bigarr._plan.chunks import Chunk
from bigarr.errors import ArgumentError, BudgetError

__all__ = ["LazyPlan", "PassPlan", "compute", "explain", "to_npy"]

Array = np.ndarray[Any, Any]


# ---- the plan as a value -------------------------------------------------------------------
@dataclass(frozen=True)
class PassPlan:
    """One pass over some inputs' rows."""

    inputs: tuple[str, ...]
    """The inputs read (each once)."""
    computes: tuple[str, ...]
    """What the pass computes (reductions, outputs)."""
    chunk_bytes: int
    """Bytes per chunk of the largest input."""
    chunks: int
    """Number of chunks."""
    peak_bytes: int
    """Predicted peak memory the pass adds, in bytes."""


@dataclass(frozen=True)
class LazyPlan:
    """The plan of an evaluation: its passes in order, and what is computed in memory."""

    steps: tuple[PassPlan, ...]
    """The passes over the inputs, in order."""
    in_memory: tuple[str, ...]
    """Values computed whole in memory (no input rows to stream)."""
    budget: int
    """The budget, in bytes."""

    @property
    def passes(self) -> int:
        """Number of passes over the inputs."""
        return len(self.steps)

    def __str__(self) -> str:
        lines = [f"{self.passes} pass(es) over the inputs, budget {format_bytes(self.budget)}"]
        for i, p in enumerate(self.steps, 1):
            lines.append(f"pass {i}: reads {', '.join(p.inputs)}")
            lines.append(f"  computes {'; '.join(p.computes)}")
            lines.append(f"  {p.chunks} chunk(s) of {format_bytes(p.chunk_bytes)}, predicted "
                         f"peak {format_bytes(p.peak_bytes)}")
        if self.in_memory:
            lines.append(f"in memory: {'; '.join(self.in_memory)}")
        return "\n".join(lines)

    __repr__ = __str__


# ---- expression analysis -------------------------------------------------------------------
def _children(node: Node) -> tuple[Node, ...]:
    if isinstance(node, Op):
        return node.args
    if isinstance(node, (Index, Reduce)):
        return (node.child,)
    return ()


def _depth(node: Node, memo: dict[int, int]) -> int:
    """Reduction levels inside ``node`` (a reduction counts itself)."""
    if id(node) not in memo:
        inner = max((_depth(c, memo) for c in _children(node)), default=0)
        memo[id(node)] = inner + 1 if isinstance(node, Reduce) else inner
    return memo[id(node)]


def _reductions(node: Node, out: dict[int, Reduce]) -> None:
    if isinstance(node, Reduce):
        if id(node) in out:
            return
        out[id(node)] = node
    for c in _children(node):
        _reductions(c, out)


def _arg_rowed(rowed: bool, node: Node, arg: Node) -> bool:
    """Whether ``arg``'s axis 0 is ``node``'s (streamed by rows) rather than broadcast."""
    return (rowed and len(arg.shape) == len(node.shape) and len(arg.shape) > 0
            and arg.shape[0] == node.shape[0])


def _leaves(node: Node, rowed: bool, rows: dict[int, Leaf], whole: dict[int, Leaf]) -> None:
    """Sort the leaves of ``node``'s expression (reductions are values) into streamed and whole."""
    if isinstance(node, Leaf):
        (rows if rowed else whole)[id(node)] = node
    elif isinstance(node, Op):
        for a in node.args:
            _leaves(a, _arg_rowed(rowed, node, a), rows, whole)
    elif isinstance(node, Index):
        _leaves(node.child, rowed, rows, whole)


# ---- evaluation of one block ---------------------------------------------------------------
@dataclass
class _Env:
    blocks: dict[int, Array]
    """Streamed leaves' blocks of this chunk."""
    whole: dict[int, Array]
    """Leaves used whole."""
    values: dict[int, Array]
    """Results of reductions computed in earlier passes."""
    rows: slice | None
    """The chunk's rows (None: everything whole)."""


def _eval(node: Node, rowed: bool, env: _Env, memo: dict[tuple[int, bool], Any]) -> Any:
    key = (id(node), rowed)
    if key in memo:
        return memo[key]
    chunked = rowed and env.rows is not None
    out: Any
    if isinstance(node, Leaf):
        out = env.blocks[id(node)] if chunked else env.whole[id(node)]
    elif isinstance(node, Const):
        out = node.value[env.rows] if chunked and np.ndim(node.value) else node.value
    elif isinstance(node, Reduce):
        value = env.values[id(node)]
        out = value[env.rows] if chunked and value.ndim else value
    elif isinstance(node, Index):
        out = np.asarray(_eval(node.child, rowed, env, memo))[(slice(None), *node.key)]
    else:
        assert isinstance(node, Op)
        args = [_eval(a, _arg_rowed(rowed, node, a), env, memo) for a in node.args]
        with np.errstate(all="ignore"):
            out = node.func(*args, **dict(node.kwargs))
    memo[key] = out
    return out


def _kernel(r: Reduce) -> Kernel:
    if r.kind == "sum":
        return Sum(r.out_dtype, r.dtype)  # dtype= as given, and the result's dtype
    if r.kind == "mean":
        return Mean(r.out_dtype, r.dtype)
    if r.kind in ("var", "std"):
        return Var(r.ddof)
    return Extreme(r.kind == "max")


def _finish(r: Reduce, kernel: Kernel, state: State) -> Array:
    res = kernel.finish(state)
    if r.kind == "std":
        res = np.sqrt(res)
    res = np.asarray(res).astype(r.dtype, copy=False)
    return res.reshape(r.shape)


def _numpy_reduce(r: Reduce, value: Any) -> Array:
    fn = getattr(np, r.kind)
    kwargs: dict[str, Any] = {"axis": r.axes, "keepdims": r.keepdims}
    if r.kind not in ("min", "max"):
        kwargs["dtype"] = r.out_dtype
    if r.kind in ("var", "std"):
        kwargs["ddof"] = r.ddof
    with np.errstate(all="ignore"):
        return np.asarray(fn(np.asarray(value), **kwargs), dtype=r.dtype)


# ---- items and passes ----------------------------------------------------------------------
@dataclass
class _Item:
    node: Node
    """The reduction, or the output's root."""
    expr: Node
    """What is streamed: the reduction's child, or the root."""
    rows: dict[int, Leaf]
    whole: dict[int, Leaf]

    @property
    def label(self) -> str:
        n = self.node
        if isinstance(n, Reduce):
            return f"{n.kind}(axis={n.axes}) of {self.expr.shape}"
        return f"output {n.shape} {n.dtype}"


def _item(node: Node) -> _Item:
    expr = node.child if isinstance(node, Reduce) else node
    rows: dict[int, Leaf] = {}
    whole: dict[int, Leaf] = {}
    _leaves(expr, len(expr.shape) > 0, rows, whole)
    return _Item(node, expr, rows, whole)


def _schedule(roots: Sequence[Node]) -> list[list[_Item]]:
    """Items by level (see the module docstring); an output root is an item of its own level."""
    memo: dict[int, int] = {}
    reds: dict[int, Reduce] = {}
    for r in roots:
        _reductions(r, reds)
    levels: dict[int, list[_Item]] = {}
    for r in reds.values():
        levels.setdefault(_depth(r, memo), []).append(_item(r))
    for root in roots:
        if not isinstance(root, Reduce):
            levels.setdefault(_depth(root, memo) + 1, []).append(_item(root))
    return [levels[k] for k in sorted(levels)]


def _groups(items: list[_Item]) -> tuple[list[list[_Item]], list[_Item]]:
    """Items that stream, grouped by their number of rows; and items computed whole."""
    by_rows: dict[int, list[_Item]] = {}
    whole: list[_Item] = []
    for it in items:
        if it.rows and math.prod(it.expr.shape) > 0:
            by_rows.setdefault(it.expr.shape[0], []).append(it)
        else:
            whole.append(it)
    return list(by_rows.values()), whole


class _Opened:
    """Streams of the leaves, opened once per evaluation and closed at its end."""

    def __init__(self) -> None:
        self.streams: dict[int, Stream] = {}
        self.arrays: dict[int, Array] = {}

    def stream(self, leaf: Leaf) -> Stream:
        if id(leaf) not in self.streams:
            self.streams[id(leaf)] = parse_operand(leaf.source, by_key=False)
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


class _Pass:
    """One planned pass: the items of a group, their streams, and the run plan."""

    def __init__(self, items: list[_Item], opened: _Opened, values: dict[int, Array],
                 budget: int, threads: int, to_file: bool = False) -> None:
        self.items = items
        self.to_file = to_file
        self.values = values
        leaves: dict[int, Leaf] = {}
        whole: dict[int, Leaf] = {}
        for it in items:
            leaves.update(it.rows)
            whole.update(it.whole)
        self.ids = list(leaves)
        self.streams = [opened.stream(leaves[i]) for i in self.ids]
        self.whole = {i: opened.array(leaf) for i, leaf in whole.items()}
        self.kernels = {id(it.node): _kernel(it.node) for it in items
                        if isinstance(it.node, Reduce)}
        nthreads = threads
        fixed = 0
        scratch = 0
        for it in items:
            node = it.node
            if isinstance(node, Reduce):
                k = self.kernels[id(node)]
                keep = math.prod(1 if i in node.axes else n for i, n in enumerate(it.expr.shape))
                per = k.state_bytes(it.expr.dtype)
                fixed += keep * (per + 1 + 8)
                if 0 in node.axes:
                    fixed += (nthreads + 2) * keep * per
                if k.sub_blocked:
                    scratch = SCRATCH_BYTES
            elif not to_file:  # the result in memory; a file output is a stream (map_blocks')
                fixed += math.prod(node.shape) * node.dtype.itemsize
        per_byte, per_call = probe_temporaries(self._probe_fn, self.streams)
        self.plan: RunPlan = plan_run("lazy", self.streams, budget=budget, threads=nthreads,
                                      layout="rows", temporaries=per_byte,
                                      scratch_bytes=scratch + per_call, fixed_bytes=fixed,
                                      extra_streams=1 if to_file else 0)

    def _probe_fn(self, *blocks: Array) -> Any:
        rows = slice(0, blocks[0].shape[0]) if blocks and blocks[0].ndim else slice(0, 0)
        return self._evaluate(rows, list(blocks))

    def _evaluate(self, rows: slice, blocks: list[Array]) -> list[Any]:
        env = _Env(dict(zip(self.ids, blocks, strict=True)), self.whole, self.values, rows)
        memo: dict[tuple[int, bool], Any] = {}
        out: list[Any] = []
        for it in self.items:
            value = np.asarray(_eval(it.expr, True, env, memo))
            node = it.node
            if isinstance(node, Reduce):
                origin = tuple(rows.start if i == 0 else 0 for i in range(value.ndim))
                out.append(self.kernels[id(node)].chunk_state(value, node.axes, origin))
            else:
                out.append(value)
        return out

    def describe(self) -> PassPlan:
        p = self.plan
        return PassPlan(tuple(s.name or s.kind for s in self.streams),
                        tuple(it.label + (" to a file" if self.to_file and not
                                          isinstance(it.node, Reduce) else "")
                              for it in self.items), p.memory.chunk_bytes,
                        len(p.chunks), p.peak_bytes)

    def run(self, progress: ProgressArg, results: dict[int, Array]) -> None:
        states: dict[int, list[Array]] = {}
        seen: dict[int, Array] = {}
        outs: dict[int, Array] = {}
        for it in self.items:
            if isinstance(it.node, Reduce):
                shape = tuple(1 if i in it.node.axes else n
                              for i, n in enumerate(it.expr.shape))
                seen[id(it.node)] = np.zeros(shape, dtype=bool)
            else:
                outs[id(it.node)] = np.empty(it.node.shape, dtype=it.node.dtype)

        def work(chunk: Chunk, blocks: list[Array]) -> list[Any]:
            got = self._evaluate(chunk.rows, blocks)
            for it, value in zip(self.items, got, strict=True):
                if id(it.node) in outs:  # disjoint rows: written by the worker
                    out = outs[id(it.node)]
                    out[chunk.rows] = np.broadcast_to(value, out[chunk.rows].shape)
            return got

        chunks = self.plan.chunks
        with Progress(progress, total_bytes=chunks.nbytes, total_chunks=len(chunks),
                      desc="lazy") as bar:
            for chunk, parts in execute(self.plan, work, self.streams, progress=bar):
                for it, part in zip(self.items, parts, strict=True):
                    node = it.node
                    if not isinstance(node, Reduce):
                        continue
                    if id(node) not in states:
                        states[id(node)] = [np.empty(seen[id(node)].shape, dtype=p.dtype)
                                            for p in part]
                    target = tuple(slice(0, 1) if i in node.axes else
                                   (chunk.rows if i == 0 else slice(None))
                                   for i in range(len(it.expr.shape)))
                    merge(self.kernels[id(node)], states[id(node)], seen[id(node)], target,
                          part)
        for it in self.items:
            node = it.node
            if isinstance(node, Reduce):
                results[id(node)] = _finish(node, self.kernels[id(node)],
                                            tuple(states[id(node)]))
            else:
                results[id(node)] = outs[id(node)]


def _in_memory(it: _Item, opened: _Opened, values: dict[int, Array]) -> Array:
    whole = {i: opened.array(leaf) for i, leaf in {**it.rows, **it.whole}.items()}
    env = _Env({}, whole, values, None)
    value = _eval(it.expr, False, env, {})
    if isinstance(it.node, Reduce):
        return _numpy_reduce(it.node, value)
    return np.asarray(np.broadcast_to(value, it.node.shape), dtype=it.node.dtype).copy()


def _budget(budget: int | str | None) -> int:
    return parse_size(DEFAULT_BUDGET if budget is None else budget, name="budget")


def _roots(exprs: Sequence[Any]) -> list[Node]:
    roots = []
    for e in exprs:
        if not isinstance(e, LazyArray):
            raise ArgumentError(f"Expected LazyArray expressions. Got {type(e).__name__}.")
        roots.append(e.node)
    return roots


def _run(roots: list[Node], budget: int, threads: int | None, progress: ProgressArg,
         dry: bool, skip: frozenset[int] = frozenset(),
         to_file: bool = False) -> tuple[dict[int, Array], LazyPlan]:
    """Evaluate (or, ``dry``, only plan) ``roots``; ``skip`` names output roots left out;
    ``to_file`` plans outputs as :meth:`LazyArray.to_npy` writes them (planning only)."""
    nthreads = parse_threads(threads)
    values: dict[int, Array] = {}
    steps: list[PassPlan] = []
    memory: list[str] = []
    opened = _Opened()
    try:
        for level in _schedule([r for r in roots]):
            level = [it for it in level if id(it.node) not in skip]
            streamed, whole = _groups(level)
            for group in streamed:
                p = _Pass(group, opened, values, budget, nthreads, to_file=to_file)
                steps.append(p.describe())
                if dry:  # later passes cannot be planned without results: stand-ins
                    for it in group:
                        values[id(it.node)] = np.zeros(it.node.shape, it.node.dtype)
                else:
                    p.run(progress, values)
            for it in whole:
                memory.append(it.label)
                values[id(it.node)] = (np.zeros(it.node.shape, it.node.dtype) if dry
                                       else _in_memory(it, opened, values))
    finally:
        opened.close()
    return values, LazyPlan(tuple(steps), tuple(memory), budget)


# ---- public entry points -------------------------------------------------------------------
def compute(*exprs: Any, budget: int | str | None = None, threads: int | None = None,
            progress: ProgressArg = None) -> tuple[Any, ...]:
    """Evaluate several lazy expressions together, sharing passes over their inputs.

    ``bigarr.compute(x.sum(0), x.min(), x.std(0))`` reads ``x`` once. Returns a tuple of numpy
    arrays (numpy scalars for 0-d results), one per expression.

    Raises
    ------
    BudgetError
        If a result is larger than the budget (write it with ``.to_npy``), or a pass cannot
        fit the budget; before anything runs.
    """
    roots = _roots(exprs)
    nbytes = _budget(budget)
    for r in roots:
        size = math.prod(r.shape) * r.dtype.itemsize
        if size > nbytes:
            raise BudgetError(
                f"The result {r.shape} {r.dtype} needs {size} bytes, more than the budget of "
                f"{nbytes} bytes. Write it to a file with .to_npy(path), or raise budget=."
            )
    values, _ = _run(roots, nbytes, threads, progress, dry=False)
    out: list[Any] = []
    for r in roots:
        v = values[id(r)]
        out.append(v[()] if v.ndim == 0 else v)
    return tuple(out)


def explain(expr: LazyArray, *, budget: int | str | None = None,
            threads: int | None = None) -> LazyPlan:
    """The plan of :meth:`LazyArray.compute` (nothing is read but probe rows), or of
    :meth:`LazyArray.to_npy` for a result larger than the budget."""
    nbytes = _budget(budget)
    to_file = expr.nbytes > nbytes
    return _run(_roots([expr]), nbytes, threads, False, dry=True, to_file=to_file)[1]


def to_npy(expr: LazyArray, path: str | os.PathLike[str], *, budget: int | str | None = None,
           threads: int | None = None, progress: ProgressArg = None,
           overwrite: bool = False) -> Any:
    """Evaluate ``expr`` into a new ``.npy`` file (see :meth:`LazyArray.to_npy`)."""
    from bigarr._compute.mapblocks import map_blocks
    from bigarr._core.files import create
    from bigarr._core.files import open as open_npy

    root = expr.node
    nbytes = _budget(budget)
    item = _item(root)
    streamed = (not isinstance(root, Reduce) and bool(item.rows)
                and math.prod(root.shape) > 0)
    values, _ = _run([root], nbytes, threads, progress, dry=False,
                     skip=frozenset({id(root)} if streamed else ()))
    if not streamed:
        value = values[id(root)]
        with create(path, root.shape, root.dtype, overwrite=overwrite) as m:
            m[...] = value
        return open_npy(path)
    opened = _Opened()
    try:
        whole = {i: opened.array(leaf) for i, leaf in item.whole.items()}
        ids = list(item.rows)
        row_shape = root.shape[1:]

        def block(*blocks: Array, block_info: dict[str, Any]) -> Array:
            rows = slice(*block_info["rows"])
            env = _Env(dict(zip(ids, blocks, strict=True)), whole, values, rows)
            value = np.asarray(_eval(root, True, env, {}))
            return np.asarray(np.broadcast_to(value, (rows.stop - rows.start, *row_shape)),
                              dtype=root.dtype)

        sources = [item.rows[i].source for i in ids]
        first = sources[0]
        if isinstance(first, (str, os.PathLike)):
            first = os.fspath(first)
        written = map_blocks(block, first, *sources[1:], out=path, dtype=root.dtype,
                             budget=nbytes, threads=threads, progress=progress,
                             overwrite=overwrite)
    finally:
        opened.close()
    written_path = written.filename
    written.close()
    return open_npy(written_path if written_path is not None else path)



