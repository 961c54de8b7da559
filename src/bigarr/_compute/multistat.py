"""Several reductions of the same values in one sweep: ``sum``, ``min``, ``max``, ``var``/``std``.

``bigarr.compute(x.sum(0), x.min(0), x.max(0), x.std(0))`` reads each chunk once, but with one
kernel per reduction a chunk of tens of MiB is swept four times from memory. When a pass holds
two or more of these reductions of the same expression along the same axes, they become one
:class:`Joint` kernel in one :class:`~bigarr._compute.mergetree.Tree`: a leaf's statistics come
from one native call that reads the leaf once (``stats_cols`` in ``_native.c``), and a node of
the tree is each member's own combine. The tree has the members' shape, axes and leaves, and
the native call gives, leaf by leaf, the bits of the members' own kernels, so each result is
the same bits as when its reduction runs alone (a test holds it to that).

Members are the kernels whose native leaf kernels the joint one reproduces: :class:`Sum` and
:class:`Mean` with float64 accumulators (a mean so joined is its own, numpy's with inf too,
not read off a variance's state), :class:`Var` (``var``, ``std``) with its native kernel, and
:class:`Extreme` (``min``, ``max``), over float32 or float64 data in native byte order. Where
the native call does not apply to a block (fewer than ``native.MIN_COLUMNS`` kept columns
after the reduced axes, no native build), each member summarises the block with its own
kernel, which is what it would have done alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bigarr._compute import native
from bigarr._compute.lazynodes import Reduce, plain
from bigarr._compute.mergetree import Tree
from bigarr._compute.partials import Extreme, Kernel, Mean, State, Sum, Var
from bigarr._plan.chunks import Chunk

__all__ = ["ENABLED", "Joint", "joint_groups", "role"]

#: Whether passes join reductions (a test turns it off to compare with the separate kernels).
ENABLED = True


def role(k: Kernel) -> str | None:
    """The statistic a member kernel computes (``"sum"``, ``"mean"``, ``"var"``, ``"min"``,
    ``"max"``), or None for a kernel the joint one cannot take (exact classes only: a subclass
    changes what a block contributes)."""
    if isinstance(k, Sum) and type(k) in (Sum, Mean) and not k.exact \
            and np.dtype(k.acc) == np.float64:
        return "sum" if type(k) is Sum else "mean"
    if type(k) is Var and k.native:
        return "var"
    if type(k) is Extreme:
        return "max" if k.largest else "min"
    return None


class Joint(Kernel):
    """Member kernels side by side: a state is the members' states concatenated, a combine is
    each member's combine, and a block's state comes from one native sweep."""

    exact = False

    def __init__(self, members: Sequence[Kernel]) -> None:
        self.members = list(members)
        self.roles = [role(k) for k in self.members]
        self.want = frozenset("sum" if r == "mean" else r for r in self.roles if r is not None)
        self.widths = [{"var": 4, "mean": 2}.get(r or "", 1) for r in self.roles]
        """Arrays in each member's state (Var: count, shift, mean, M2; Mean: sum, count)."""

    def scratch_free(self, dtype: np.dtype[Any], axes: tuple[int, ...] | None = None) -> bool:
        return all(k.scratch_free(dtype, axes) for k in self.members)

    def state_bytes(self, dtype: np.dtype[Any]) -> int:
        return sum(k.state_bytes(dtype) for k in self.members)

    def split(self, state: State) -> list[State]:
        """Each member's state, in member order."""
        out, at = [], 0
        for w in self.widths:
            out.append(state[at:at + w])
            at += w
        return out

    def partial(self, block: np.ndarray[Any, Any], axes: tuple[int, ...],
                chunk: Chunk | None, origin: tuple[int, ...]) -> State:
        got = native.stats_blocks(block, axes, self.want) if block.dtype.kind == "f" else None
        if got is None:  # each member's own kernel: what it computes alone
            return tuple(s for k in self.members for s in k.partial(block, axes, chunk, origin))
        state: list[np.ndarray[Any, Any]] = []
        taken: set[str] = set()
        size = math.prod(block.shape[i] for i in axes)
        for r in self.roles:
            assert r is not None
            # a second user of one array (x.sum(0) twice, or a sum and a mean) gets copies:
            # sums combine in place
            key = "sum" if r == "mean" else r
            copy = key in taken
            taken.add(key)
            if r == "var":
                state += [np.full(got["m2"].shape, size, dtype=np.int64),
                          *(np.array(got[k], copy=copy) for k in ("shift", "mean", "m2"))]
            elif r == "mean":
                total = np.array(got["sum"], copy=copy)
                state += [total, np.full(total.shape, size, dtype=np.int64)]
            else:
                state.append(np.array(got[r], copy=copy))
        return tuple(state)

    def combine(self, a: State, b: State) -> State:
        return tuple(s for k, x, y in zip(self.members, self.split(a), self.split(b), strict=True)
                     for s in k.combine(x, y))


def joint_groups(items: Sequence[Any],
                 kernels: dict[int, Kernel]) -> list[tuple[list[int], Tree]]:
    """Which reductions of a pass join, and their joint trees.

    ``items`` are the pass's items (``.node``, ``.expr``, ``.frame``: see
    :mod:`bigarr._compute.lazyrun`), ``kernels`` their reductions' kernels by ``id`` of the
    node. Candidates are reductions of
    plain rows of a non-empty float32/float64 expression whose kernel :func:`role` takes and
    needs no scratch; those of the same expression (by identity) and axes join. Returned, per
    group of two or more: the members' node ids in item order, and the joint tree (``C`` order,
    as the members' own trees).
    """
    if not ENABLED or not native.available():
        return []
    by: dict[tuple[int, tuple[int, ...]], list[Any]] = {}
    for it in items:
        node, expr = it.node, it.expr
        if not isinstance(node, Reduce) or not plain(it.frame):
            continue
        k, dtype = kernels[id(node)], expr.dtype
        if (role(k) is None or math.prod(expr.shape) == 0 or not dtype.isnative
                or dtype not in (np.float32, np.float64) or not k.scratch_free(dtype, node.axes)):
            continue
        by.setdefault((id(expr), node.axes), []).append(it)
    return [([id(it.node) for it in group],
             Tree(Joint([kernels[id(it.node)] for it in group]), group[0].expr.shape,
                  group[0].node.axes, "C"))
            for group in by.values() if len(group) >= 2]
