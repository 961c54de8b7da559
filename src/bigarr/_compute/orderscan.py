"""Quantile passes: order-preserving keys, histograms of them, and the exact selection.

Every value of a bool, integer or floating dtype maps to an unsigned integer *key* of the same
width whose order is numpy's sort order (:func:`keys_of`): integers by flipping the sign bit,
floats by flipping the sign bit of positives and every bit of negatives. ``-0.0`` keys just
below ``0.0`` (they compare equal, so either is numpy's answer); NaNs are counted apart and
never keyed. Keys make every histogram bucket exact:

1. pass 1 streams the data once and counts NaNs and keys by their top bits, per column;
2. for each order statistic numpy would read (ranks ``k`` and ``k + 1`` of each ``q``) the
   cumulative counts give the bucket holding it and its rank inside the bucket;
3. if the buckets hold few enough values for the budget, pass 2 gathers the keys in those
   buckets and :func:`numpy.partition` selects each statistic exactly; otherwise a pass
   histograms the next bits inside those buckets only, and so on (a bucket one key wide needs
   no gathering at all).

**Sampled windows: one pass on most data** (:mod:`bigarr._compute.ordersample`): before
pass 1, a sample of a one-column operand places a window of keys around each wanted order
statistic, and pass 1 also gathers the keys inside the windows; a statistic whose bucket
lies inside a window whose keys were all gathered is selected there, with no second pass.
:func:`planned_passes` tells plans (``explain()``) the count before any data is read: one pass
where a window is planned (two when the sample misleads), two without one.

Random data takes one pass (two without the sample: many columns, lazy sources, small data);
data piled into one bucket (all equal, few distinct values) takes a pass per 16 bits of key at
most. The passes run in C (:mod:`bigarr._compute.ordnative`) where the extension is built:
keys, histograms and gathers straight from the block's bits, without temporaries; numpy
otherwise, with the same counts.

Passes run through the engine (:func:`bigarr._compute.runplan.plan_run` and
:func:`bigarr._compute.engine.execute`); the count of the last call's passes is kept in
:data:`LAST_PASSES` (a diagnostic).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np

from bigarr._compute import ordnative
from bigarr._compute.engine import execute
from bigarr._compute.operands import Stream
from bigarr._compute.orderkeys import Target, key_dtype, keys_of, values_of
from bigarr._compute.ordersample import (
    Sampling,
    Windows,
    select_in_windows,
    window_keys,
    windows_fit,
)
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import block_info, plan_run
from bigarr._plan.budget import parse_budget
from bigarr._plan.chunks import Chunk

Array = np.ndarray[Any, Any]

#: Passes over the data made by the last quantile-family call in this process (diagnostic).
LAST_PASSES: list[int] = [0]
#: Bits of key resolved by one histogram pass (at most).
_BITS_PER_PASS = 16


def _temporaries(dtype: np.dtype[Any]) -> float:
    """Bytes the pass kernels allocate per byte of chunk: keys and their float bit-twiddling
    (about 4 copies), the NaN mask and intp bucket indices with their masked copy."""
    return 4.0 + 18.0 / max(dtype.itemsize, 1)


# ---- running a pass ------------------------------------------------------------------------
def _inside(b: Array, ranges: list[tuple[int, int, int, int]], kd: np.dtype[Any],
            floating: bool) -> Iterator[tuple[range, Array, Array]]:
    """The keys of each range's column in a block and which lie inside the range, vectorised
    over ranges: for groups of at most as many ranges as the block has columns (so a group's
    keys are no larger than the block), ``(range indices, keys, inside)`` with ``keys`` and
    ``inside`` of shape (rows, ranges in the group); NaNs are never inside."""
    width = max(b.shape[1], 1)
    every = keys_of(b)
    valid = ~np.isnan(b) if floating else None
    for start in range(0, len(ranges), width):
        group = ranges[start:start + width]
        cols = np.array([r[0] for r in group], dtype=np.intp)
        shifts = np.array([r[2] for r in group], dtype=kd)
        tops = np.array([r[1] for r in group], dtype=kd) >> shifts
        whole = cols.size == width and bool(np.all(cols == np.arange(width)))
        keys = every if whole else every[:, cols]
        inside = cast(Array, np.right_shift(keys, shifts) == tops)
        if valid is not None:
            inside &= valid if whole else valid[:, cols]
        yield range(start, start + len(group)), keys, inside


def _selected(keys: Array, inside: Array) -> tuple[Array, Array]:
    """The keys inside their range: ``(range of each, key)``, in no particular order."""
    rows, which = np.nonzero(inside)
    return which, keys[rows, which]


def _columns(block: Array, axis0: bool) -> Array:
    """A chunk's block as a 2-d (rows, columns) array: its columns, or one column of all."""
    if axis0:
        return block.reshape(block.shape[0], -1) if block.ndim != 1 else block[:, None]
    return block.reshape(-1, 1)


def _run_pass(stream: Stream, desc: str, work: Callable[[Array, int], Any],
              fold: Callable[[Any], None], *, budget: int | str, threads: int,
              progress: ProgressArg, fixed_bytes: int, temporaries: float | None = None) -> None:
    """One pass of ``work(block, first_row)`` over whole-row chunks, ``fold``-ed in order."""
    if temporaries is None:
        temporaries = _temporaries(np.dtype(stream.dtype))
    plan = plan_run(desc, [stream], budget=budget, threads=threads, layout="rows",
                    temporaries=temporaries, fixed_bytes=fixed_bytes)

    def run(chunk: Chunk, blocks: list[Array]) -> Any:
        info = block_info(chunk, stream.shape)
        return work(blocks[0], int(info["rows"][0]))

    chunks = plan.chunks
    LAST_PASSES[0] += 1
    with Progress(progress, total_bytes=chunks.nbytes, total_chunks=len(chunks),
                  desc=desc) as bar:
        for _chunk, part in execute(plan, run, [stream], progress=bar):
            fold(part)


def _native(dtype: np.dtype[Any]) -> bool:
    """True when the C kernels take blocks of ``dtype`` (they need the native byte order)."""
    return ordnative.available() and dtype.isnative


#: Bytes the native pass kernels allocate per byte of chunk: a contiguous copy of a block that
#: is not C-contiguous, or the gathered keys of a chunk (at most its size).
_NATIVE_TEMPORARIES = 1.0


def _gathered_bytes(kd: np.dtype[Any]) -> int:
    """Bytes a gathered key costs: the key and its range index, then both sorted by range with
    the sort's order (three copies)."""
    return 3 * (kd.itemsize + 8)


# ---- the passes --------------------------------------------------------------------------
def _pass1_bits(bits: int, ncols: int, threads: int, budget_bytes: int) -> int:
    """Bits of key pass 1 resolves: its histograms per column (one per thread in flight, and
    the total) fit a quarter of the budget."""
    nb_bits = min(bits, _BITS_PER_PASS)
    while nb_bits > 1 and ncols * (8 << nb_bits) * (threads + 3) > budget_bytes // 4:
        nb_bits -= 1
    return nb_bits


def planned_passes(stream: Stream, axis0: bool, nfracs: int, *, budget: int | str,
                   threads: int) -> tuple[int, int | None]:
    """The passes an order-statistics call over ``stream`` takes on most data (values not
    piled into few buckets), before reading it: ``(passes, fallback)``.

    ``fallback`` is None without sampled windows, else the passes when the sample misleads
    (pass 1, then a gather). One pass where pass 1's buckets are single keys (keys of 16 bits
    or fewer) or where a sampled window is planned (one-column contiguous operands with room);
    otherwise two (a histogram, then a gather); data piled up takes more (see the module
    docstring), which no plan can know before reading it."""
    dtype = np.dtype(stream.dtype)
    bits = 8 * key_dtype(dtype).itemsize
    shape = stream.shape
    ncols = int(math.prod(shape[1:])) if axis0 and len(shape) > 1 else 1
    budget_bytes = parse_budget(budget)
    if _pass1_bits(bits, ncols, threads, budget_bytes) == bits:
        return 1, None
    room = budget_bytes // 4 // (bits // 8)
    if ncols == 1 and windows_fit(stream, nfracs, room):
        return 1, 2
    return 2, None


def pass_steps(stream: Stream, axis0: bool, nfracs: int, budget: int | str,
               threads: int) -> list[str]:
    """What each pass of :func:`planned_passes` does, one line per pass (for plans)."""
    passes, fallback = planned_passes(stream, axis0, nfracs, budget=budget, threads=threads)
    if fallback is not None:
        return [f"exact order statistic, one pass: a histogram, gathering the values in a "
                f"sampled window around the answer ({fallback} passes when the sample "
                "misleads: then a gather pass; more when values pile up)"]
    if passes == 1:
        return ["exact order statistic, one histogram pass (its buckets are single values)"]
    return [f"exact order statistic, {step} pass (passes of its own: two on most data, more "
            "when values pile up)" for step in ("histogram", "gather")]



def _order_statistics(
    stream: Stream, axis0: bool, want: Callable[[Array], list[list[int]]], *,
    budget: int | str, threads: int, progress: ProgressArg, name: str,
    fracs: list[float] | None = None,
) -> tuple[Array, list[dict[int, Any]]]:
    """Per column: the NaN count, and the value at each rank ``want(nan_counts)`` asks for.

    ``fracs``, the approximate places of those ranks among a column's sorted values (0 to 1),
    let pass 1 gather sampled windows around them (one-column operands). Returns the NaN counts
    and, per column, ``{rank: value}`` (numpy scalars of the dtype).
    """
    dtype = np.dtype(stream.dtype)
    kd = key_dtype(dtype)
    bits = 8 * kd.itemsize
    shape = stream.shape
    ncols = int(math.prod(shape[1:])) if axis0 and len(shape) > 1 else 1
    budget_bytes = parse_budget(budget)
    floating = dtype.kind == "f"
    native = _native(dtype)
    # pass 1: counts of the top bits, per column; its partials are planned as fixed memory
    nb_bits = _pass1_bits(bits, ncols, threads, budget_bytes)
    nbuckets = 1 << nb_bits
    shift0 = bits - nb_bits
    counts = np.zeros((ncols, nbuckets), dtype=np.int64)
    nans = np.zeros(ncols, dtype=np.int64)
    offsets = (np.arange(ncols, dtype=np.intp) * nbuckets)[None, :]
    room = budget_bytes // 4 // kd.itemsize
    sampling = None
    if ncols == 1 and fracs and shift0 and windows_fit(stream, len(fracs), room):
        # (narrower keys: pass 1's buckets are exact). The sample is read while pass 1's
        # first chunks are: the kernels wait for its windows before their first block.
        sampling = Sampling(stream, fracs, kd, room)

    # the native kernels add into their thread's own counts, and gather into its own scratch:
    # no fresh arrays per chunk (first touches of fresh memory cost more than the kernel at
    # times on a busy machine, where each new page may wait for the page cache's reclaim)
    local = threading.local()
    accs: list[tuple[Array, Array]] = []
    lock = threading.Lock()

    def mine(size: int, win: Windows | None) -> tuple[Array, Array, Array]:
        got: tuple[Array, Array, Array] | None = getattr(local, "acc", None)
        if got is None:
            got = (np.zeros((ncols, nbuckets), dtype=np.int64), np.zeros(ncols, dtype=np.int64),
                   np.empty(0, dtype=kd))
            with lock:
                accs.append(got[:2])
        if win is not None and got[2].size < min(size, win.keys.size) + 1:
            got = local.acc = (got[0], got[1], np.empty(min(size, win.keys.size) + 1, dtype=kd))
        local.acc = got
        return got

    def histogram(block: Array, _row: int) -> tuple[Array | None, Array | None,
                                                    tuple[Array, Array] | None]:
        b = _columns(block, axis0)
        win = sampling.get() if sampling is not None else None
        if native:
            b = np.ascontiguousarray(b)
            part, nan_count, out = mine(b.size, win)
            if ncols == 1:
                if win is None:
                    if ordnative.scan(b, shift0, part, nan_count) is not None:
                        return None, None, None
                else:
                    below = np.zeros(win.lo.size, dtype=np.int64)
                    n = ordnative.scan(b, shift0, part, nan_count,
                                       windows=(win.lo, win.span, below, out))
                    if n is not None:
                        return None, None, (below, out[:n].copy()) if n < out.size else None
            elif ordnative.hist(b, shift0, part, nan_count):
                return None, None, None
        keys = keys_of(b)
        idx = (keys >> kd.type(shift0)).astype(np.intp) if shift0 else keys.astype(np.intp)
        idx += offsets
        if floating:
            isnan = np.isnan(b)
            nan_count = isnan.sum(axis=0)
            idx = idx[~isnan]
        else:
            nan_count = np.zeros(ncols, dtype=np.int64)
        part = np.bincount(idx.ravel(), minlength=ncols * nbuckets)
        del idx
        got = window_keys(b, keys, win, kd) if win is not None else None
        return nan_count, part.reshape(ncols, nbuckets), got

    def fold1(part: tuple[Array | None, Array | None, tuple[Array, Array] | None]) -> None:
        if part[0] is not None and part[1] is not None:
            nans.__iadd__(part[0])
            counts.__iadd__(part[1])
        win = sampling.get() if sampling is not None else None
        if win is not None:
            win.add(part[2])

    fixed = ncols * (8 << nb_bits) * (threads + 3)
    if sampling is not None:
        fixed += room * kd.itemsize  # the windows' keys (their pages touched as keys arrive)
    try:
        _run_pass(stream, f"{name} pass 1", histogram, fold1, budget=budget, threads=threads,
                  progress=progress, fixed_bytes=fixed,
                  temporaries=_NATIVE_TEMPORARIES if native else None)
    finally:
        if sampling is not None:
            sampling.join()  # (an empty pass, or one that failed, never waited for it)
    win = sampling.get() if sampling is not None else None
    for part, nan_count in accs:
        counts += part
        nans += nan_count
    accs.clear()
    wanted = want(nans)
    targets: list[Target] = []
    for col, col_ranks in enumerate(wanted):
        if not col_ranks:
            continue
        cum = np.cumsum(counts[col])
        for rank in sorted(set(col_ranks)):
            t = Target(col, rank)
            b = int(np.searchsorted(cum, rank, side="right"))
            t.below = int(cum[b - 1]) if b else 0
            t.lo, t.shift, t.count = b << shift0, shift0, int(counts[col, b])
            targets.append(t)
    for t in targets:
        if t.shift == 0:
            t.value = t.lo  # a bucket one key wide: its key is the value
    if win is not None:
        select_in_windows(win, targets)
        win = None  # the gathered keys go before any further pass
    gather_limit = max(budget_bytes // 4 // _gathered_bytes(kd), 1024)
    while True:
        open_ = [t for t in targets if t.value is None and t.shift > 0]
        for t in targets:
            if t.value is None and t.shift == 0:
                t.value = t.lo  # a bucket one key wide: its key is the value
        if not open_:
            break
        ranges = sorted({(t.col, t.lo, t.shift, t.count) for t in open_})
        if sum(r[3] for r in ranges) <= gather_limit:
            _gather(stream, ranges, open_, axis0, kd, floating,
                    budget=budget, threads=threads, progress=progress, name=name,
                    fixed=sum(r[3] for r in ranges) * _gathered_bytes(kd))
            break
        _refine(stream, ranges, open_, axis0, kd, floating, budget=budget,
                threads=threads, progress=progress, name=name, budget_bytes=budget_bytes)
    result: list[dict[int, Any]] = [{} for _ in range(ncols)]
    for t in targets:
        assert t.value is not None
        result[t.col][t.rank] = values_of(np.array([t.value], dtype=kd), dtype)[0]
    return nans, result


def _native_ranges(ranges: list[tuple[int, int, int, int]], ncols: int,
                   kd: np.dtype[Any]) -> tuple[Array, Array, Array]:
    """``(rstart, rlo, rhi)`` of ``ranges`` (sorted by column) for :func:`ordnative.ranges`."""
    cols = np.array([r[0] for r in ranges], dtype=np.int64)
    rstart = np.searchsorted(cols, np.arange(ncols + 1)).astype(np.int64)
    rlo = np.array([r[1] for r in ranges], dtype=kd)
    rhi = np.array([r[1] + (1 << r[2]) - 1 for r in ranges], dtype=kd)
    return rstart, rlo, rhi


def _refine(stream: Stream, ranges: list[tuple[int, int, int, int]], open_: list[Target],
            axis0: bool, kd: np.dtype[Any], floating: bool, *, budget: int | str,
            threads: int, progress: ProgressArg, name: str, budget_bytes: int) -> None:
    """Histogram the next bits of the keys inside each range; narrow each target's range."""
    sub_bits = _BITS_PER_PASS
    while sub_bits > 1 and len(ranges) * (8 << sub_bits) * (threads + 3) > budget_bytes // 4:
        sub_bits -= 1
    plan = [(col, lo, shift, max(shift - sub_bits, 0)) for col, lo, shift, _ in ranges]
    # every range's sub-histogram in one flat array: range i at [starts[i], starts[i] + sizes[i])
    sizes = np.array([1 << (shift - new) for _, _, shift, new in plan], dtype=np.intp)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.intp)
    totals = np.zeros(int(sizes.sum()), dtype=np.int64)
    los = np.array([lo for _, lo, _, _ in plan], dtype=kd)
    news = np.array([new for *_, new in plan], dtype=kd)
    native = _native(np.dtype(stream.dtype))

    def work(block: Array, _row: int) -> list[tuple[int, Array]]:
        b = _columns(block, axis0)
        if native:
            b = np.ascontiguousarray(b)
            rstart, rlo, rhi = _native_ranges(ranges, b.shape[1], kd)
            local = np.zeros(totals.size, dtype=np.int64)
            sub = (news.astype(np.int32), starts.astype(np.int64), local)
            if ordnative.ranges(b, rstart, rlo, rhi, sub=sub) is not None:
                return [(0, local)]
        out: list[tuple[int, Array]] = []
        for group, keys, inside in _inside(b, plan, kd, floating):
            which, sel = _selected(keys, inside)
            del keys, inside
            which += group.start
            local = ((sel - los[which]) >> news[which]).astype(np.intp) + starts[which]
            lo = int(starts[group.start])
            hi = int(starts[group.stop - 1] + sizes[group.stop - 1])
            out.append((lo, np.bincount(local - lo, minlength=hi - lo)))
        return out

    def fold(part: list[tuple[int, Array]]) -> None:
        for lo, counts in part:
            totals[lo:lo + counts.size] += counts

    _run_pass(stream, f"{name} refine", work, fold, budget=budget, threads=threads,
              progress=progress, fixed_bytes=totals.nbytes * (threads + 3),
              temporaries=_NATIVE_TEMPORARIES if native else None)
    index = {(col, lo, shift): i for i, (col, lo, shift, _) in enumerate(plan)}
    for t in open_:
        i = index[(t.col, t.lo, t.shift)]
        new = plan[i][3]
        mine = totals[starts[i]:starts[i] + sizes[i]]
        cum = np.cumsum(mine)
        b = int(np.searchsorted(cum, t.rank - t.below, side="right"))
        t.below += int(cum[b - 1]) if b else 0
        t.lo, t.shift, t.count = t.lo + (b << new), new, int(mine[b])


def _gather(stream: Stream, ranges: list[tuple[int, int, int, int]], open_: list[Target],
            axis0: bool, kd: np.dtype[Any], floating: bool, *, budget: int | str,
            threads: int, progress: ProgressArg, name: str, fixed: int) -> None:
    """Collect the keys inside each range; select each target's key exactly."""
    parts: list[tuple[Array, Array]] = []
    native = _native(np.dtype(stream.dtype))
    total = sum(r[3] for r in ranges)

    def work(block: Array, _row: int) -> list[tuple[Array, Array]]:
        b = _columns(block, axis0)
        if native:
            b = np.ascontiguousarray(b)
            rstart, rlo, rhi = _native_ranges(ranges, b.shape[1], kd)
            keys = np.empty(min(b.size, total), dtype=kd)
            which = np.empty(keys.size, dtype=np.int32)
            n = ordnative.ranges(b, rstart, rlo, rhi, out=keys, outr=which)
            if n is not None:
                assert n <= keys.size  # the ranges hold `total` values in all
                return [(which[:n].astype(np.intp), keys[:n].copy())]
        out: list[tuple[Array, Array]] = []
        for group, keys, inside in _inside(b, ranges, kd, floating):
            which, sel = _selected(keys, inside)
            out.append((which + group.start, sel))
        return out

    def fold(part: list[tuple[Array, Array]]) -> None:
        parts.extend(p for p in part if p[0].size)

    _run_pass(stream, f"{name} gather", work, fold, budget=budget, threads=threads,
              progress=progress, fixed_bytes=fixed,
              temporaries=_NATIVE_TEMPORARIES if native else None)
    which = np.concatenate([w for w, _ in parts]) if parts else np.zeros(0, np.intp)
    keys = np.concatenate([k for _, k in parts]) if parts else np.zeros(0, kd)
    parts.clear()
    order = np.argsort(which, kind="stable")
    which, keys = which[order], keys[order]
    del order
    bounds = np.searchsorted(which, np.arange(len(ranges) + 1))
    index = {(col, lo, shift): i for i, (col, lo, shift, _) in enumerate(ranges)}
    for t in open_:
        i = index[(t.col, t.lo, t.shift)]
        mine = keys[bounds[i]:bounds[i + 1]]
        k = t.rank - t.below
        t.value = int(np.partition(mine, k)[k])
