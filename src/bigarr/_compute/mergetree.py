"""The fixed merge tree of the floating reductions: the same bits whatever the chunks.

Floating sums, means and variances (:mod:`bigarr._compute.partials`' inexact kernels) merge
their partial states in :class:`Tree`, a fixed pairwise tree over *leaves* of at most
``partials.SUB_BLOCK_BYTES / 16`` elements defined by the array's shape alone; :func:`fold` combines
a run of a tree level's children with one vectorised call per level.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from bigarr._compute import partials
from bigarr._compute.partials import Kernel, State, tile_elements

__all__ = ["Node", "Part", "Tree", "fold"]

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
    boxes of at most :data:`~bigarr._compute.partials.SUB_BLOCK_BYTES` / 16 elements: along axis
    ``d``, the first axis whose slabs are that small, ``L`` slabs per leaf; along the axes
    before ``d``, one index per leaf. Each leaf's state is computed from the leaf alone, in
    float64, then states are merged level by level: at axis ``k <= d``, the children of one
    index prefix are combined in a fixed pairwise tree (when ``k`` is reduced) or placed side by
    side (when it is not).

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
        self.leaf = max(1, partials.SUB_BLOCK_BYTES // 16)  # (read here: tests shrink it)
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
        to be contiguous, so scratch memory stays within
        :data:`~bigarr._compute.partials.SUB_BLOCK_BYTES`.
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
