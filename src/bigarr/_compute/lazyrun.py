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

Within a chunk, expressions with operations are evaluated in tiles of about
:data:`~bigarr._compute.lazyeval.TILE_BYTES` of input rows, so a chain's temporaries stay in
the CPU's caches. Floating reductions of plain rows (sums, means, variances and their nan
variants) merge in :class:`~bigarr._compute.mergetree.Tree`, the fixed pairwise tree of
:func:`bigarr.sum` and friends, so they are the same bits at every budget, thread count and
tile size. Sums, means, extremes and variances of the same float values and axes join into
one kernel and one tree, one native sweep per leaf (:mod:`bigarr._compute.multistat`);
otherwise a mean next to a variance of the same values is read off the variance's state.
Other reductions merge chunk by chunk. Order statistics are computed by
:mod:`bigarr._compute.order` in passes of their own (counted as two in plans: most data needs
two).

A file output (:meth:`LazyArray.to_npy`) is written by :func:`bigarr.map_blocks` in its own
final pass, with its crash-safe publishing; a result whose rows are known only on evaluation
(a filter) or fewer than the inputs' (a diff) grows a :class:`bigarr.Appender` in chunk order,
under a hidden name installed at the user's only once complete (a failed run leaves an older
file intact and no partial one).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigarr._compute.engine import execute
from bigarr._compute.fused import IN_ORDER_BYTES
from bigarr._compute.lazy import LazyArray
from bigarr._compute.lazyeval import (
    Carries,
    Env,
    evaluate,
    finish,
    kernel,
    numpy_reduce,
    parse_backend,
    tiles,
)
from bigarr._compute.lazyflat import flat_plan, into, uses
from bigarr._compute.lazyitems import Item, Opened, groups, item_of, lag, schedule
from bigarr._compute.lazynodes import (
    Filter,
    Index,
    Leaf,
    Node,
    Op,
    Reduce,
    Scan,
    frame,
    plain,
    unknown_rows,
)
from bigarr._compute.lazyresume import appended, check_resumable, resume_token
from bigarr._compute.mergetree import Tree
from bigarr._compute.multistat import Joint, joint_groups
from bigarr._compute.operands import Stream
from bigarr._compute.partials import State, merge
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.reductions import SCRATCH_BYTES
from bigarr._compute.runplan import RunPlan, parse_threads, plan_run, probe_temporaries
from bigarr._os.geometry import format_bytes
from bigarr._plan.budget import parse_budget
from bigarr._plan.chunks import Chunk
from bigarr.errors import ArgumentError, BudgetError, UnsupportedError

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
            if p.chunks:
                lines.append(f"  {p.chunks} chunk(s) of {format_bytes(p.chunk_bytes)}, "
                             f"predicted peak {format_bytes(p.peak_bytes)}")
            else:
                lines.append("  chunks planned by the order statistic itself, within the "
                             "budget")
        if self.in_memory:
            lines.append(f"in memory: {'; '.join(self.in_memory)}")
        return "\n".join(lines)

    __repr__ = __str__


#: The reductions along axis 0 the native fused kernel folds: (largest, NaN ignored).
_FOLDS = {"max": (True, False), "min": (False, False), "nanmax": (True, True),
          "nanmin": (False, True)}
_CARRY_NOTE = {
    "cumsum": "running total carried from chunk to chunk in order",
    "cumprod": "running product carried from chunk to chunk in order",
    "diff": "each chunk takes its predecessor's last rows",
}


class _Pass:
    """One planned pass: the items of a group, their streams, and the run plan."""

    def __init__(self, items: list[Item], opened: Opened, values: dict[int, Array],
                 budget: int, threads: int, to_file: bool = False,
                 numexpr: bool = False) -> None:
        self.items = items
        self.numexpr = numexpr
        self.to_file = to_file
        self.values = values
        self.budget = budget
        leaves: dict[int, Leaf] = {}
        whole: dict[int, Leaf] = {}
        for it in items:
            leaves.update(it.rows)
            whole.update(it.whole)
        self.ids = list(leaves)
        self.streams = [opened.stream(leaves[i]) for i in self.ids]
        self.whole = {i: opened.array(leaf) for i, leaf in whole.items()}
        self.kernels = {id(it.node): kernel(it.node, it.expr.shape) for it in items
                        if isinstance(it.node, Reduce)}
        # Floating reductions of plain rows merge in the fixed tree of bigarr.sum and friends:
        # the same bits as theirs, whatever the budget, threads and tiles.
        self.trees = {id(it.node): Tree(self.kernels[id(it.node)], it.expr.shape,
                                        it.node.axes, "C")
                      for it in items if isinstance(it.node, Reduce)
                      and not self.kernels[id(it.node)].exact and plain(it.frame)
                      and math.prod(it.expr.shape) > 0}  # (no tree of no elements)
        # Tiles only where a chain of operations makes temporaries, cut on the trees' leaves
        # (a tile ending inside a leaf would hand the leaf over in pieces).
        # sum, mean, min, max and var/std of the same values: one kernel, one sweep
        # (multistat.py); the group's tree stands under its first member, the others hand in
        # nothing
        self.joints = {keys[0]: (keys, tree) for keys, tree in joint_groups(items, self.kernels)}
        self.joined = {k for keys, _tree in self.joints.values() for k in keys[1:]}
        for keys, tree in self.joints.values():
            for member in keys[1:]:
                self.trees.pop(member, None)
            self.trees[keys[0]] = tree
        # Otherwise, a mean next to a var/std of the same values and axes is read off the
        # variance's state (its shift plus mean): one kernel less per chunk.
        self.derived: dict[int, int] = {}
        for it in items:
            for other in items:
                a, b = it.node, other.node
                if isinstance(a, Reduce) and isinstance(b, Reduce) and a.kind == "mean" \
                        and a.out_dtype is None and b.kind in ("var", "std") \
                        and it.expr is other.expr and a.axes == b.axes \
                        and id(a) in self.trees and id(b) in self.trees \
                        and id(a) not in self.joints and id(b) not in self.joints:
                    self.derived[id(a)] = id(b)
        self.fuses = any(isinstance(it.expr, (Op, Scan, Filter)) for it in items)
        # purely elementwise chains over narrow rows run on wide views (lazyflat.py)
        self.flat = {id(it.node): f for it in items if (f := flat_plan(it.expr)) is not None}
        # a chain's max/min/nanmax/nanmin along axis 0 the native kernel folds as it goes
        # (never writing the chain's value; fused.py): such a pass needs no tiles. Not the
        # first member of a joint group (its tree takes the chain's values for the group)
        self.folded = {id(it.node) for it in items if isinstance(it.node, Reduce)
                       and it.node.kind in _FOLDS and it.node.axes == (0,)
                       and plain(it.frame) and id(it.node) not in self.derived
                       and id(it.node) not in self.trees
                       and (f := self.flat.get(id(it.node))) is not None
                       and f.native is not None}
        self.all_folded = bool(self.folded) and len(self.folded) == len(items)
        self.align = max((t.L for t in self.trees.values() if t.d == 0), default=1)
        self.reserve = 0
        """Bytes reserved for results whose rows are known only on evaluation (filters)."""
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
                if not k.scratch_free(it.expr.dtype, tuple(node.axes)):
                    scratch = SCRATCH_BYTES
                if id(node) in self.folded:  # its buffer for a tile reduced in row order
                    scratch = max(scratch, IN_ORDER_BYTES)
            elif not to_file and not unknown_rows(it.frame):
                # the result in memory; a file output is a stream (map_blocks')
                fixed += math.prod(node.shape) * node.dtype.itemsize
            elif not to_file:  # a filter's result: as much as the rows could be, at most half
                self.reserve += min(math.prod(node.shape) * node.dtype.itemsize, budget // 2)
        fixed += self.reserve
        per_byte, per_call = probe_temporaries(self._probe_fn, self.streams, warm=True)
        self.plan: RunPlan = plan_run("lazy", self.streams, budget=budget, threads=nthreads,
                                      layout="rows", temporaries=per_byte,
                                      scratch_bytes=scratch + per_call, fixed_bytes=fixed,
                                      extra_streams=1 if to_file else 0)

    def _probe_fn(self, *blocks: Array) -> Any:
        rows = slice(0, blocks[0].shape[0]) if blocks and blocks[0].ndim else slice(0, 0)
        return self._evaluate(rows, list(blocks), None)

    def _evaluate(self, rows: slice, blocks: list[Array], carries: Carries | None) -> list[Any]:
        """Every item's part of the chunk ``rows``, evaluated tile by tile (see :func:`tiles`):
        outputs are written tile by tile into one buffer of the chunk's rows, reductions'
        states of the tiles combined (or, along kept axes, placed side by side)."""
        whole = not self.fuses or (self.all_folded and all(
            self.flat[i].fused(blocks) for i in self.folded))
        spans = [(0, rows.stop - rows.start)] if whole else \
            tiles(rows.stop - rows.start, blocks, rows.start, self.align)
        if len(spans) == 1:
            return self._evaluate_tile(rows, blocks, carries)
        parts: list[Any] = [None] * len(self.items)
        pieces: list[list[Array]] = [[] for _ in self.items]
        for t0, t1 in spans:
            got = self._evaluate_tile(slice(rows.start + t0, rows.start + t1),
                                      [b[t0:t1] for b in blocks], carries)
            for i, (it, part) in enumerate(zip(self.items, got, strict=True)):
                node = it.node
                if part is None:
                    continue
                if not isinstance(node, Reduce):
                    if plain(it.frame):
                        if parts[i] is None:
                            parts[i] = np.empty((rows.stop - rows.start, *node.shape[1:]),
                                                node.dtype)
                        parts[i][t0:t1] = part
                    else:
                        pieces[i].append(part)
                elif parts[i] is None:
                    parts[i] = part
                elif id(node) in self.trees:
                    parts[i] = parts[i] + part
                elif 0 in node.axes:
                    parts[i] = self.kernels[id(node)].combine(parts[i], part)
                else:
                    pieces[i].append(part)
        for i, it in enumerate(self.items):
            if not pieces[i]:
                continue
            if isinstance(it.node, Reduce) and id(it.node) not in self.trees:
                first = [parts[i], *pieces[i]]
                parts[i] = tuple(np.concatenate([p[k] for p in first])
                                 for k in range(len(first[0])))
            else:
                parts[i] = np.concatenate(pieces[i])
        return parts

    def _evaluate_tile(self, rows: slice, blocks: list[Array],
                       carries: Carries | None) -> list[Any]:
        env = Env(dict(zip(self.ids, blocks, strict=True)), self.whole, self.values, rows,
                  carries, self.numexpr)
        out: list[Any] = []
        for it in self.items:
            if id(it.node) in self.joined:
                out.append(None)  # in its group's joint tree
                continue
            flat = self.flat.get(id(it.node))
            value = None
            if flat is not None:  # on wide views, in an env of its own (its memo is theirs)
                own = Env(env.blocks, self.whole, self.values, rows, carries, self.numexpr)
                if id(it.node) in self.folded:
                    node = it.node
                    assert isinstance(node, Reduce)
                    state = flat.extreme(own, rows.stop - rows.start, *_FOLDS[node.kind])
                    if state is not None:
                        out.append((state,))
                        continue
                value = flat.run(own, rows.stop - rows.start)
            if value is None:
                value = np.asarray(evaluate(it.expr, True, env))
            node = it.node
            if isinstance(node, Reduce):
                if (value.ndim and value.shape[0] == 0) or id(node) in self.derived:
                    out.append(None)  # no rows here (filtered, diffed), or read off a var
                    continue
                if id(node) in self.trees:
                    shape = it.expr.shape
                    value = np.broadcast_to(value, (rows.stop - rows.start, *shape[1:]))
                    key = (rows, *(slice(0, n) for n in shape[1:]))
                    out.append(self.trees[id(node)].parts(key, 0, value))
                    continue
                start = max(rows.start - lag(it.frame), 0)
                origin = tuple(start if i == 0 else 0 for i in range(value.ndim))
                out.append(self.kernels[id(node)].chunk_state(value, node.axes, origin))
            else:
                out.append(value)
        return out

    def describe(self) -> PassPlan:
        p = self.plan
        notes = []
        for it in self.items:
            label = it.label + (" to a file" if self.to_file and not
                                isinstance(it.node, Reduce) else "")
            for scan in it.scans.values():
                label += f" [{scan.kind} along axis 0: {_CARRY_NOTE[scan.kind]}]"
            notes.append(label)
        return PassPlan(tuple(s.name or s.kind for s in self.streams), tuple(notes),
                        p.memory.chunk_bytes, len(p.chunks), p.peak_bytes)

    def run(self, progress: ProgressArg, results: dict[int, Array]) -> None:
        states: dict[int, list[Array]] = {}
        seen: dict[int, Array] = {}
        outs: dict[int, Array] = {}
        grown: dict[int, list[Array]] = {}
        carries = Carries()
        for it in self.items:
            if isinstance(it.node, Reduce):
                shape = tuple(1 if i in it.node.axes else n
                              for i, n in enumerate(it.expr.shape))
                seen[id(it.node)] = np.zeros(shape, dtype=bool)
            elif plain(it.frame):
                outs[id(it.node)] = np.empty(it.node.shape, dtype=it.node.dtype)
            else:
                grown[id(it.node)] = []

        def work(chunk: Chunk, blocks: list[Array]) -> list[Any]:
            try:
                got = self._evaluate(chunk.rows, blocks, carries)
            except BaseException:
                carries.fail()
                raise
            for it, value in zip(self.items, got, strict=True):
                if id(it.node) in outs:  # disjoint rows: written by the worker
                    out = outs[id(it.node)]
                    out[chunk.rows] = np.broadcast_to(value, out[chunk.rows].shape)
            return got

        held = 0
        chunks = self.plan.chunks
        with Progress(progress, total_bytes=chunks.nbytes, total_chunks=len(chunks),
                      desc="lazy") as bar:
            for chunk, parts in execute(self.plan, work, self.streams, progress=bar):
                for it, part in zip(self.items, parts, strict=True):
                    node = it.node
                    if id(node) in grown:
                        grown[id(node)].append(part)
                        held += part.nbytes if unknown_rows(it.frame) else 0
                        if held > self.reserve:
                            carries.fail()
                            raise BudgetError(
                                f"The filtered result outgrew the memory its pass could leave "
                                f"it: {held} bytes so far, more than {self.reserve} bytes (of "
                                f"the budget of {self.budget} bytes). Write it to a file with "
                                ".to_npy(path), or raise budget=."
                            )
                        continue
                    if not isinstance(node, Reduce) or part is None:
                        continue
                    if id(node) in self.trees:
                        self.trees[id(node)].add(part)
                        continue
                    if id(node) not in states:
                        states[id(node)] = [np.empty(seen[id(node)].shape, dtype=p.dtype)
                                            for p in part]
                    target = tuple(slice(0, 1) if i in node.axes else
                                   (chunk.rows if i == 0 else slice(None))
                                   for i in range(len(it.expr.shape)))
                    merge(self.kernels[id(node)], states[id(node)], seen[id(node)], target,
                          part)
        joined: dict[int, State] = {}
        for keys, tree in self.joints.values():
            assert tree.result is not None and isinstance(tree.kernel, Joint)
            joined.update(zip(keys, tree.kernel.split(tree.result), strict=True))
        for it in self.items:
            node = it.node
            if isinstance(node, Reduce) and id(node) in joined:
                results[id(node)] = finish(node, self.kernels[id(node)], joined[id(node)])
            elif isinstance(node, Reduce) and id(node) in self.derived:
                var_id = self.derived[id(node)]
                state = joined[var_id] if var_id in joined else self.trees[var_id].result
                assert state is not None
                _n, shift, mean, _m2 = state
                results[id(node)] = finish(node, self.kernels[id(node)], None, shift + mean)
            elif isinstance(node, Reduce) and id(node) in self.trees:
                results[id(node)] = finish(node, self.kernels[id(node)], None,
                                           self.trees[id(node)].finish())
            elif isinstance(node, Reduce):
                if id(node) not in states:  # no rows at all (a filter kept none): numpy's
                    empty = np.empty((0, *it.expr.shape[1:]), dtype=it.expr.dtype)
                    results[id(node)] = numpy_reduce(node, empty)
                else:
                    results[id(node)] = finish(node, self.kernels[id(node)],
                                               tuple(states[id(node)]))
            elif id(node) in grown:
                parts = grown.pop(id(node))
                results[id(node)] = (  # (in the expression's byte order, as numpy's)
                    np.concatenate(parts, dtype=node.dtype, casting="unsafe") if parts else
                    np.empty((0, *node.shape[1:]), node.dtype))
            else:
                results[id(node)] = outs[id(node)]


def _in_memory(it: Item, opened: Opened, values: dict[int, Array],
               numexpr: bool = False) -> Array:
    if isinstance(it.node, Reduce) and 0 in it.expr.shape[1:]:  # no values to read
        return numpy_reduce(it.node, np.empty(it.expr.shape, it.expr.dtype))
    whole = {i: opened.array(leaf) for i, leaf in {**it.rows, **it.whole}.items()}
    env = Env({}, whole, values, None, None, numexpr)
    value = evaluate(it.expr, False, env)
    if isinstance(it.node, Reduce):
        return numpy_reduce(it.node, value)
    if not plain(it.frame):
        return np.asarray(value, dtype=it.node.dtype)
    return np.asarray(np.broadcast_to(value, it.node.shape), dtype=it.node.dtype).copy()


def _order_source(it: Item, opened: Opened) -> Stream:
    """The stream an order statistic reads: its input's, or a view of it (a column
    selection), as a copy that owns nothing (the leaf's stays open for later passes)."""
    node = it.node
    assert isinstance(node, Reduce)
    expr = it.expr
    leaf = expr.child if isinstance(expr, Index) else expr
    assert isinstance(leaf, Leaf)
    stream = opened.stream(leaf)
    # its mapping with it (a plain array view would be read as data in memory: every page of
    # the file resident, whatever the budget)
    source = dataclasses.replace(stream, owned=[])
    if isinstance(expr, Index):
        if stream.array is None:
            raise UnsupportedError(f"{node.kind} of a column selection of a {leaf.name}: "
                                   "select the columns from a .npy file or memmap.")
        source.array = stream.array[(slice(None), *expr.key)]
    return source


def _order_passes(it: Item, opened: Opened, budget: int, threads: int) -> list[PassPlan]:
    """An order statistic's passes on most data (:func:`~bigarr._compute.orderscan.pass_steps`)."""
    from bigarr._compute.orderscan import pass_steps

    node, source = it.node, _order_source(it, opened)
    assert isinstance(node, Reduce)
    steps = pass_steps(source, node.axis is not None and len(source.shape) > 1,
                       1 if node.q is None else int(np.size(node.q)), budget, threads)
    return [PassPlan((source.name or source.kind,), (f"{it.label}: {step}",), 0, 0, budget)
            for step in steps]


def _order_statistic(it: Item, opened: Opened, budget: int, threads: int | None,
                     progress: ProgressArg) -> Array:
    """An order statistic of an input (or a view of one), by :mod:`bigarr._compute.order`."""
    from bigarr._compute import order

    node = it.node
    assert isinstance(node, Reduce)
    source = _order_source(it, opened)
    fn = getattr(order, node.kind)
    args = () if node.q is None else (node.q,)
    res = np.asarray(fn(source, *args, **({} if node.q is None else {"method": node.method}),
                        axis=node.axis, budget=budget, threads=threads, progress=progress))
    if node.keepdims:
        res = res.reshape(node.shape)
    return np.asarray(res, dtype=node.dtype)


def _roots(exprs: Sequence[Any]) -> list[Node]:
    roots = []
    for e in exprs:
        if not isinstance(e, LazyArray):
            raise ArgumentError(f"Expected LazyArray expressions. Got {type(e).__name__}.")
        roots.append(e.node)
    return roots


def _run(roots: list[Node], budget: int, threads: int | None, progress: ProgressArg,
         dry: bool, skip: frozenset[int] = frozenset(),
         to_file: bool = False, numexpr: bool = False) -> tuple[dict[int, Array], LazyPlan]:
    """Evaluate (or, ``dry``, only plan) ``roots``; ``skip`` names output roots left out;
    ``to_file`` plans outputs as :meth:`LazyArray.to_npy` writes them (planning only);
    ``numexpr``: the numexpr backend (:data:`~bigarr._compute.lazyeval.BACKENDS`)."""
    nthreads = parse_threads(threads)
    values: dict[int, Array] = {}
    steps: list[PassPlan] = []
    memory: list[str] = []
    opened = Opened()
    try:
        for level in schedule([r for r in roots]):
            level = [it for it in level if id(it.node) not in skip]
            streamed, whole, stats = groups(level)
            for it in stats:  # passes of their own, data-dependent in number
                steps.extend(_order_passes(it, opened, budget, nthreads))
                values[id(it.node)] = (np.zeros(it.node.shape, it.node.dtype) if dry else
                                       _order_statistic(it, opened, budget, threads, progress))
            for group in streamed:
                p = _Pass(group, opened, values, budget, nthreads, to_file=to_file,
                          numexpr=numexpr)
                steps.append(p.describe())
                if dry:  # later passes cannot be planned without results: stand-ins
                    for it in group:
                        values[id(it.node)] = np.zeros(it.node.shape, it.node.dtype)
                else:
                    p.run(progress, values)
            for it in whole:
                memory.append(it.label)
                values[id(it.node)] = (np.zeros(it.node.shape, it.node.dtype) if dry
                                       else _in_memory(it, opened, values, numexpr))
    finally:
        opened.close()
    return values, LazyPlan(tuple(steps), tuple(memory), budget)


# ---- public entry points -------------------------------------------------------------------
def compute(*exprs: Any, budget: int | str | None = None, threads: int | None = None,
            progress: ProgressArg = None, backend: str | None = None) -> tuple[Any, ...]:
    """Evaluate several lazy expressions together, sharing passes over their inputs.

    ``bigarr.compute(x.sum(0), x.min(), x.std(0))`` reads ``x`` once. Returns a tuple of numpy
    arrays (numpy scalars for 0-d results), one per expression. ``backend``: ``"numpy"`` (None,
    the default: numpy's results bit for bit) or ``"numexpr"`` (opt-in: floating chains go to
    numexpr, faster, and may differ from numpy in the last bits).

    Raises
    ------
    ModeError, MissingExtraError
        For an unknown ``backend``, or ``"numexpr"`` without numexpr installed.
    BudgetError
        If a result is larger than the budget (write it with ``.to_npy``), or a pass cannot
        fit the budget; before anything runs.
    """
    roots = _roots(exprs)
    nbytes = parse_budget(budget)
    numexpr = parse_backend(backend)
    for r in roots:
        if r.shape and unknown_rows(frame(r)):
            continue  # checked as it grows
        size = math.prod(r.shape) * r.dtype.itemsize
        if size > nbytes:
            raise BudgetError(
                f"The result {r.shape} {r.dtype} needs {size} bytes, more than the budget of "
                f"{nbytes} bytes. Write it to a file with .to_npy(path), or raise budget=."
            )
    values, _ = _run(roots, nbytes, threads, progress, dry=False, numexpr=numexpr)
    out: list[Any] = []
    for r in roots:
        v = values[id(r)]
        out.append(v[()] if v.ndim == 0 else v)
    return tuple(out)


def explain(expr: LazyArray, *, budget: int | str | None = None,
            threads: int | None = None, backend: str | None = None) -> LazyPlan:
    """The plan of :meth:`LazyArray.compute` (nothing is read but probe rows), or of
    :meth:`LazyArray.to_npy` for a result larger than the budget."""
    nbytes = parse_budget(budget)
    to_file = expr.nbytes > nbytes
    return _run(_roots([expr]), nbytes, threads, False, dry=True, to_file=to_file,
                numexpr=parse_backend(backend))[1]


def to_npy(expr: LazyArray, path: str | os.PathLike[str], *, budget: int | str | None = None,
           threads: int | None = None, progress: ProgressArg = None,
           overwrite: bool = False, backend: str | None = None, resume: bool = False) -> Any:
    """Evaluate ``expr`` into a new ``.npy`` file (see :meth:`LazyArray.to_npy`).

    ``resume``: the final pass is a resumable :func:`bigarr.map_blocks` run whose journal is
    tied to the inputs' identities and the expression's token
    (:func:`bigarr._compute.lazyresume.resume_token`).
    """
    from bigarr._compute.mapblocks import map_blocks
    from bigarr._core.files import NewOutput, file_path
    from bigarr._core.files import open as open_npy

    root = expr.node
    nbytes = parse_budget(budget)
    numexpr = parse_backend(backend)
    item = item_of(root)
    streamed = (not isinstance(root, Reduce) and bool(item.rows)
                and math.prod(next(iter(item.rows.values())).shape) > 0)
    if resume and streamed:
        check_resumable(root)
    values, _ = _run([root], nbytes, threads, progress, dry=False,
                     skip=frozenset({id(root)} if streamed else ()), numexpr=numexpr)
    if not streamed:
        value = values[id(root)]
        with NewOutput(file_path(path), overwrite=overwrite) as output:
            output.build("new")
            with output.create(value.shape, root.dtype) as m:
                m[...] = value
            output.publish()
        return open_npy(path)
    opened = Opened()
    carries = Carries()
    try:
        whole = {i: opened.array(leaf) for i, leaf in item.whole.items()}
        ids = list(item.rows)
        row_shape = root.shape[1:]
        rows_known = plain(item.frame)
        fuses = isinstance(root, (Op, Scan, Filter))

        flat = flat_plan(root) if rows_known else None
        count = uses(root)

        def tile(rows: slice, blocks: Sequence[Array], carry: Carries | None,
                 out: Array | None = None) -> Array:
            """The tile's value (rows known only on evaluation); or, given ``out`` (the
            tile's rows of the chunk's buffer), written there."""
            env = Env(dict(zip(ids, blocks, strict=True)), whole, values, rows, carry, numexpr)
            if out is None:
                return np.asarray(evaluate(root, True, env), dtype=root.dtype)
            if flat is None or flat.run(env, rows.stop - rows.start, out) is None:
                into(root, env, out, count)
            return out

        def block(*blocks: Array, block_info: dict[str, Any]) -> Array:
            rows = slice(*block_info["rows"])
            carry = None if block_info["probe"] else carries
            try:
                whole = not fuses or (flat is not None and flat.fused(blocks))  # (fused.py)
                spans = [(0, rows.stop - rows.start)] if whole else \
                    tiles(rows.stop - rows.start, blocks)
                if not rows_known:
                    return np.concatenate([tile(slice(rows.start + a, rows.start + b),
                                                [x[a:b] for x in blocks], carry)
                                           for a, b in spans])
                out = np.empty((rows.stop - rows.start, *row_shape), dtype=root.dtype)
                for a, b in spans:  # tile by tile into the chunk's buffer
                    tile(slice(rows.start + a, rows.start + b), [x[a:b] for x in blocks],
                         carry, out[a:b])
                return out
            except BaseException:
                carries.fail()
                raise

        # the leaves' streams (windows of rows applied), handed over as they are
        sources: list[Any] = [opened.stream(item.rows[i]) for i in ids]
        first = sources[0]
        token = resume_token(root, opened.stream, numexpr) if resume else None
        if rows_known:
            written = map_blocks(block, first, *sources[1:], out=path, dtype=root.dtype,
                                 budget=nbytes, threads=threads, progress=progress,
                                 overwrite=overwrite, resume=resume, token=token)
            written_path = written.filename
            written.close()
            return open_npy(written_path if written_path is not None else path)
        # rows known only on evaluation (a filter), or fewer than the inputs' (a diff): the
        # file grows chunk by chunk, in chunk order, under a hidden name, and is installed
        # at the user's name only once complete (as map_blocks' files are): a run that fails
        # leaves an older file intact and no partial one under its name.
        target = file_path(path)
        appended(target, overwrite=overwrite, token=token, dtype=root.dtype,
                 row_shape=row_shape, fill=lambda app: map_blocks(
                     block, first, *sources[1:], out=app, budget=nbytes, threads=threads,
                     progress=progress, resume=resume, token=token))
    finally:
        opened.close()
    return open_npy(target)

