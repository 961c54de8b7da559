"""Quantile passes: order-preserving keys, histograms of them, and the exact selection.

Every value of a bool, integer or floating dtype maps to an unsigned integer *key* of the same
width whose order is numpy's sort order (:func:`_keys`): integers by flipping the sign bit,
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

**Sampled windows: one pass on most data.** Before pass 1, a sample of the values of a
one-column operand (64 pieces spread evenly over the data, at most 1/16 of it) estimates where
each wanted order statistic lies; pass 1 then also gathers the keys inside a window of buckets
around each estimate, wide enough (many standard errors of the sample's quantile) and as wide
as a quarter of the budget allows. When pass 1's counts show a statistic's bucket inside a
window whose keys were all gathered, it is selected there exactly and needs no second pass
(where the statistic's whole pass-1 bucket lies inside the window, only that bucket's keys
are partitioned, the histogram giving the rank below it); otherwise (an unrepresentative
sample, a window overflowing its room) the steps above follow. Counts and selection are exact
either way: the sample only chooses what to gather. The sample runs on a thread of its own,
started with pass 1, whose kernels wait for its windows before their first block: its reads
overlap the pass's first reads. A mapped file's pieces are read with ``preadv`` through a
descriptor of their own, all 64 asked for at once (``WILLNEED``), so a cold disk serves them
together and no page fault holds the GIL while the disk works.
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
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np

from bigarr._compute import ordnative
from bigarr._compute.engine import execute
from bigarr._compute.operands import Stream
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import block_info, plan_run
from bigarr._os.hints import parse_hint
from bigarr._os.pread import RangeReader
from bigarr._plan.budget import parse_budget
from bigarr._plan.chunks import Chunk
from bigarr.errors import DtypeError, UnsupportedError

Array = np.ndarray[Any, Any]

#: Passes over the data made by the last quantile-family call in this process (diagnostic).
LAST_PASSES: list[int] = [0]
_WILLNEED = parse_hint("willneed")
#: Bits of key resolved by one histogram pass (at most).
_BITS_PER_PASS = 16


def _temporaries(dtype: np.dtype[Any]) -> float:
    """Bytes the pass kernels allocate per byte of chunk: keys and their float bit-twiddling
    (about 4 copies), the NaN mask and intp bucket indices with their masked copy."""
    return 4.0 + 18.0 / max(dtype.itemsize, 1)


# ---- keys ----------------------------------------------------------------------------------
def _check_dtype(dtype: np.dtype[Any], name: str, keyed: bool = True) -> None:
    """Refuse what ``name`` cannot order: other than bool, integers and floats, or (``keyed``:
    it orders by integer keys of the values' width) a long double, wider than any integer."""
    if dtype.kind not in "biuf" or (keyed and dtype.itemsize > 8):
        raise DtypeError(
            f"{name} works on bool, integer and floating arrays of up to 8 bytes. Got dtype "
            f"{dtype}: convert first (e.g. with map_blocks), or use numpy on data that fits "
            "in memory."
        )


def _key_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return np.dtype(f"u{dtype.itemsize}")


def _keys(block: Array) -> Array:
    """Unsigned keys of ``block``'s values, ordered as numpy sorts them (NaN keys: undefined)."""
    if not block.dtype.isnative:  # (big-endian data: its bytes are not the native word's)
        block = block.astype(block.dtype.newbyteorder("="))
    kd = _key_dtype(block.dtype)
    kind = block.dtype.kind
    u = np.ascontiguousarray(block).view(kd)
    if kind in "bu":
        return u
    sign = kd.type(1 << (8 * kd.itemsize - 1))
    if kind == "i":
        return cast(Array, np.bitwise_xor(u, sign))
    # negatives flip every bit, positives the sign bit: XOR with the sign bit smeared across
    # the word by an arithmetic shift (all ones for negatives), or-ed with the sign bit
    smear: Array = np.right_shift(u.view(f"i{kd.itemsize}"), 8 * kd.itemsize - 1).view(kd)
    smear |= sign
    smear ^= u
    return smear


def _values(keys: Array, dtype: np.dtype[Any]) -> Array:
    """The values of ``keys`` (the inverse of :func:`_keys`)."""
    if not dtype.isnative:
        return _values(keys, dtype.newbyteorder("=")).astype(dtype)
    kd = _key_dtype(dtype)
    keys = np.asarray(keys, dtype=kd)
    kind = dtype.kind
    if kind in "bu":
        return keys.view(dtype)
    sign = kd.type(1 << (8 * kd.itemsize - 1))
    if kind == "i":
        return cast(Array, np.bitwise_xor(keys, sign)).view(dtype)
    positive = keys >= sign
    return np.where(positive, keys ^ sign, ~keys).astype(kd).view(dtype)


# ---- running a pass ------------------------------------------------------------------------
def _inside(b: Array, ranges: list[tuple[int, int, int, int]], kd: np.dtype[Any],
            floating: bool) -> Iterator[tuple[range, Array, Array]]:
    """The keys of each range's column in a block and which lie inside the range, vectorised
    over ranges: for groups of at most as many ranges as the block has columns (so a group's
    keys are no larger than the block), ``(range indices, keys, inside)`` with ``keys`` and
    ``inside`` of shape (rows, ranges in the group); NaNs are never inside."""
    width = max(b.shape[1], 1)
    every = _keys(b)
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


class _Target:
    """One order statistic being searched: column, rank among the column's sorted non-NaN
    values; narrowed to keys ``[lo, lo + 2**shift)`` holding ``count`` values, ``below`` of the
    column's values lying under ``lo``."""

    __slots__ = ("below", "col", "count", "lo", "rank", "shift", "value")

    def __init__(self, col: int, rank: int) -> None:
        self.col, self.rank = col, rank
        self.lo, self.shift, self.below, self.count = 0, 0, 0, 0
        self.value: int | None = None


# ---- sampled windows -------------------------------------------------------------------------
#: Values sampled (at most, and at most 1/16 of the data) to place the windows, in
#: :data:`_PIECES` pieces spread evenly over the data.
_SAMPLE = 1 << 20
_PIECES = 64
#: Fewest sampled values worth a window.
_MIN_SAMPLE = 4096
#: A window reaches at least this many standard errors of the sample's quantile either side.
_SIGMAS = 6.0
#: ... and at most this many, when the room allows more.
_MAX_SIGMAS = 40.0


class _Windows:
    """Key windows ``lo[w] ..= lo[w] + span[w]`` (sorted, disjoint) whose keys pass 1 gathers
    into ``keys`` (room for ``keys.size``), counting in ``below[w]`` the keys under each;
    ``dead`` once the gathered keys outgrow the room."""

    __slots__ = ("below", "dead", "fill", "keys", "lo", "span")

    def __init__(self, lo: Array, span: Array, room: int) -> None:
        self.lo, self.span = lo, span
        self.below = np.zeros(lo.size, dtype=np.int64)
        self.keys = np.empty(room, dtype=lo.dtype)  # pages are touched only as keys arrive
        self.fill, self.dead = 0, False

    def add(self, got: tuple[Array, Array] | None) -> None:
        if self.dead:
            return
        if got is None or self.fill + got[1].size > self.keys.size:
            self.dead, self.keys = True, self.keys[:0]
            return
        self.below += got[0]
        self.keys[self.fill:self.fill + got[1].size] = got[1]
        self.fill += got[1].size


def _half_width(n: int, m: int, nfracs: int, room: int) -> float | None:
    """Each window's half-width, as a share of the ``n`` values, for ``m`` sampled (non-NaN)
    values and ``nfracs`` quantiles: a third of the ``room`` (in keys) split between the
    windows (values piled on a window's edges may fill it further), and no wider than needed
    (each key gathered costs time); None when that is under :data:`_SIGMAS` standard errors."""
    sigma = 0.5 / math.sqrt(m)  # the standard error of a sample quantile, at most
    delta = min(0.5, room / n / (2 * nfracs) / 3, _MAX_SIGMAS * sigma)
    return None if delta < _SIGMAS * sigma else delta


def _windows_fit(stream: Stream, nfracs: int, room: int) -> bool:
    """True when pass 1 over ``stream`` (all its values as one column) samples windows for
    ``nfracs`` quantiles with room for ``room`` keys: a contiguous array with enough values
    for the sample and the windows (before the sample's NaNs are known)."""
    a = stream.array
    if a is None or not nfracs or not (a.flags.c_contiguous or a.flags.f_contiguous):
        return False
    size = min(_SAMPLE, a.size // 16)
    return size >= _MIN_SAMPLE and _half_width(a.size, size, nfracs, room) is not None


def _read_pieces(stream: Stream, views: list[Array],
                 asked: threading.Event | None = None) -> Array | None:
    """The values of ``views`` (contiguous pieces of a mapped operand) one after another,
    read from its file with ``preadv`` through a descriptor of their own (readahead off, so
    each read brings in just its piece; ``WILLNEED`` for every piece first, so the disk
    serves them together). A read waits for the disk without the GIL, where a page fault
    through the mapping holds it: so the sample can run on a thread while pass 1 starts.
    None where this does not apply (not mapped, a private mapping whose edits the file lacks,
    a file that cannot be re-opened or that ended early): then the caller reads the views.
    ``asked`` is set once every piece has been asked for (before any read waits)."""
    m = stream.mapping
    if m is None or m.access == "private" or not views:
        return None
    offsets = [stream.file_offset(v) for v in views]
    if any(o is None for o in offsets):
        return None
    try:
        reader = RangeReader(m.fd, m.path if m.named else None)
    except (UnsupportedError, OSError):
        return None
    try:
        out = np.empty(sum(v.size for v in views), dtype=views[0].dtype)
        spans: list[tuple[int, int]] = []
        for view, off in zip(views, offsets, strict=True):
            assert off is not None
            spans.append((off, view.nbytes))
            os.posix_fadvise(reader.fd, off, view.nbytes, os.POSIX_FADV_WILLNEED)
        if asked is not None:
            asked.set()
        raw = out.view(np.uint8).data
        at = 0
        for off, nbytes in spans:
            done = 0
            while done < nbytes:
                got = os.preadv(reader.fd, [raw[at + done:at + nbytes]], off + done)
                if got <= 0:
                    return None  # the file ended early (it shrank): the caller's views fail
                done += got
            at += nbytes
        return out
    except OSError:
        return None
    finally:
        reader.close()


class _Sampling:
    """:func:`_sample_windows` on a thread of its own, started at once, so the sample's reads
    overlap pass 1's first reads (the pass's kernels wait for its windows before their first
    block). The constructor returns once the sample's reads are asked for, so the disk has them
    queued ahead of the pass's large reads. :meth:`get` waits for the windows (re-raising the
    sample's error); :meth:`join` waits without raising (the sample reads the operand: it
    must end before the call does)."""

    def __init__(self, stream: Stream, fracs: list[float], kd: np.dtype[Any],
                 room: int) -> None:
        self._result: _Windows | None = None
        self._error: BaseException | None = None
        self._asked = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(stream, fracs, kd, room),
                                        name="bigarr-sample", daemon=True)
        self._thread.start()
        self._asked.wait()

    def _run(self, stream: Stream, fracs: list[float], kd: np.dtype[Any], room: int) -> None:
        try:
            self._result = _sample_windows(stream, fracs, kd, room, self._asked)
        except BaseException as exc:  # re-raised by get(), in the caller's thread
            self._error = exc
        finally:
            self._asked.set()  # (a sample that ended early never asked)

    def join(self) -> None:
        self._thread.join()

    def get(self) -> _Windows | None:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result


def _sample_windows(stream: Stream, fracs: list[float], kd: np.dtype[Any], room: int,
                    asked: threading.Event | None = None) -> _Windows | None:
    """Windows of keys around the ``fracs`` quantiles of a sample of ``stream``'s values, each
    wide enough to hold its quantile unless the sample misleads, together about a third of
    ``room`` values; None when a sample cannot place them (a lazy or non-contiguous operand,
    too little data, too little room). ``asked`` is set once the pieces' reads are asked for
    (see :func:`_read_pieces`), or when the sample takes the mapping's way."""
    a = stream.array
    if not _windows_fit(stream, len(fracs), room) or a is None:
        return None
    flat = a.ravel(order="K")  # a view: quantiles do not care in which order values come
    n = flat.size
    size = min(_SAMPLE, n // 16)
    piece = -(-size // _PIECES)
    starts = np.linspace(0, n - piece, _PIECES).astype(np.int64)
    views = [flat[int(i):int(i) + piece] for i in starts]
    sample = _read_pieces(stream, views, asked)
    if asked is not None:
        asked.set()
    if sample is None:  # (a private mapping, or a file that cannot be re-opened)
        if stream.mapping is not None:
            # every piece's readahead at once, before the first is touched: the disk works on
            # all of them together, where faulting the pieces in one after another waits for
            # each in turn (64 seeks: 0.7-2 s of a cold 1 GiB scan of 1-3 s on a shared VM)
            for view in views:
                for span in stream.page_spans(view):
                    stream.mapping.advise(_WILLNEED, span)
        sample = np.concatenate(views)
        for view in views:
            stream.release(view)  # the sampled pages of a mapped file leave this process
    keys = _keys(sample.reshape(-1, 1)).reshape(-1)
    if sample.dtype.kind == "f":
        keys = keys[~np.isnan(sample)]
    m = keys.size
    if m < _MIN_SAMPLE:
        return None
    delta = _half_width(n, m, len(fracs), room)
    if delta is None:
        return None
    bounds: list[tuple[int, int]] = []
    for p in sorted(set(fracs)):
        c = min(max(p, 0.0), 1.0) * (m - 1)
        bounds.append((math.floor(c - delta * m), math.ceil(c + delta * m)))
    picks = sorted({i for b in bounds for i in b if 0 <= i < m})
    part = np.partition(keys, picks) if picks else keys
    top = (1 << (8 * kd.itemsize)) - 1
    spans: list[list[int]] = []
    for lo_i, hi_i in bounds:
        lo = int(part[lo_i]) if lo_i >= 0 else 0
        hi = int(part[hi_i]) if hi_i < m else top
        if spans and lo <= spans[-1][1] + 1:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    return _Windows(np.array([s[0] for s in spans], dtype=kd),
                    np.array([s[1] - s[0] for s in spans], dtype=kd), room)


def _window_keys(b: Array, keys: Array | None, win: _Windows,
                 kd: np.dtype[Any]) -> tuple[Array, Array] | None:
    """For the one-column block ``b`` (``keys``: its keys, when already computed): the count of
    non-NaN keys under each window, and the keys inside the windows (any order); None when
    they are more than the room."""
    if keys is None:
        keys = _keys(b)
    keys = keys.reshape(-1)
    valid = ~np.isnan(b.reshape(-1)) if b.dtype.kind == "f" else None
    below = np.zeros(win.lo.size, dtype=np.int64)
    inside = np.zeros(keys.shape, dtype=bool)
    for w, (lo, span) in enumerate(zip(win.lo, win.span, strict=True)):
        under = keys < lo
        if valid is not None:
            under &= valid
        below[w] = np.count_nonzero(under)
        inside |= (keys - lo) <= span  # unsigned: keys under lo wrap to the top
    if valid is not None:
        inside &= valid
    got = keys[inside]
    return (below, got) if got.size <= win.keys.size else None


def _select_in_windows(win: _Windows, targets: list[_Target]) -> None:
    """Give each (column 0) target whose rank falls inside a window (of a window set that kept
    all its keys) its value, selected exactly among the gathered keys."""
    if win.dead:
        return
    keys = win.keys[:win.fill]
    # A target whose pass-1 bucket lies inside a window: its bucket's keys were all gathered,
    # and the histogram says how many lie below the bucket; so only the bucket's keys (a
    # small share of the gathered ones on most data) are picked out and partitioned.
    kd = keys.dtype
    ends = win.lo.astype(np.uint64) + win.span.astype(np.uint64)
    buckets: dict[tuple[int, int], list[_Target]] = {}
    for t in targets:
        if t.value is None and any(int(lo) <= t.lo and t.lo + (1 << t.shift) - 1 <= int(end)
                                   for lo, end in zip(win.lo, ends, strict=True)):
            buckets.setdefault((t.lo, t.shift), []).append(t)
    step = 1 << 16  # slices: small temporaries, reused (no fresh memory to fault in)
    off = np.empty(min(step, keys.size), dtype=kd)
    for (lo, shift), ts in buckets.items():
        picked = []
        for start in range(0, keys.size, step):
            part = keys[start:start + step]
            o = off[:part.size]
            np.subtract(part, kd.type(lo), out=o)  # unsigned: keys under lo wrap to the top
            np.right_shift(o, kd.type(shift), out=o)
            picked.append(part[o == 0])
        sel = np.concatenate(picked) if picked else keys[:0]
        if sel.size != ts[0].count:  # never: the histogram counted the same keys
            continue
        sel.partition(sorted({t.rank - t.below for t in ts}))
        for t in ts:
            t.value = int(sel[t.rank - t.below])
    if all(t.value is not None for t in targets):
        return
    held = [0] * win.lo.size  # keys gathered per window, counted in slices (small masks)
    for w, (lo, span) in enumerate(zip(win.lo, win.span, strict=True)):
        for start in range(0, keys.size, 1 << 20):
            held[w] += int(np.count_nonzero((keys[start:start + (1 << 20)] - lo) <= span))
    if sum(held) != win.fill:  # never: the windows are disjoint
        return
    first = np.concatenate(([0], np.cumsum(held)[:-1])).astype(np.int64)
    where: list[tuple[_Target, int]] = []
    for t in targets:
        if t.value is not None:
            continue
        for w in range(win.lo.size):
            if int(win.below[w]) <= t.rank < int(win.below[w]) + held[w]:
                where.append((t, t.rank - int(win.below[w]) + int(first[w])))
                break
    if where:
        keys.partition(sorted({k for _, k in where}))  # in place: no copy of the keys
        for t, k in where:
            t.value = int(keys[k])


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
    bits = 8 * _key_dtype(dtype).itemsize
    shape = stream.shape
    ncols = int(math.prod(shape[1:])) if axis0 and len(shape) > 1 else 1
    budget_bytes = parse_budget(budget)
    if _pass1_bits(bits, ncols, threads, budget_bytes) == bits:
        return 1, None
    room = budget_bytes // 4 // (bits // 8)
    if ncols == 1 and _windows_fit(stream, nfracs, room):
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
    kd = _key_dtype(dtype)
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
    if ncols == 1 and fracs and shift0 and _windows_fit(stream, len(fracs), room):
        # (narrower keys: pass 1's buckets are exact). The sample is read while pass 1's
        # first chunks are: the kernels wait for its windows before their first block.
        sampling = _Sampling(stream, fracs, kd, room)

    # the native kernels add into their thread's own counts, and gather into its own scratch:
    # no fresh arrays per chunk (first touches of fresh memory cost more than the kernel at
    # times on a busy machine, where each new page may wait for the page cache's reclaim)
    local = threading.local()
    accs: list[tuple[Array, Array]] = []
    lock = threading.Lock()

    def mine(size: int, win: _Windows | None) -> tuple[Array, Array, Array]:
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
        keys = _keys(b)
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
        got = _window_keys(b, keys, win, kd) if win is not None else None
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
    targets: list[_Target] = []
    for col, col_ranks in enumerate(wanted):
        if not col_ranks:
            continue
        cum = np.cumsum(counts[col])
        for rank in sorted(set(col_ranks)):
            t = _Target(col, rank)
            b = int(np.searchsorted(cum, rank, side="right"))
            t.below = int(cum[b - 1]) if b else 0
            t.lo, t.shift, t.count = b << shift0, shift0, int(counts[col, b])
            targets.append(t)
    for t in targets:
        if t.shift == 0:
            t.value = t.lo  # a bucket one key wide: its key is the value
    if win is not None:
        _select_in_windows(win, targets)
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
        result[t.col][t.rank] = _values(np.array([t.value], dtype=kd), dtype)[0]
    return nans, result


def _native_ranges(ranges: list[tuple[int, int, int, int]], ncols: int,
                   kd: np.dtype[Any]) -> tuple[Array, Array, Array]:
    """``(rstart, rlo, rhi)`` of ``ranges`` (sorted by column) for :func:`ordnative.ranges`."""
    cols = np.array([r[0] for r in ranges], dtype=np.int64)
    rstart = np.searchsorted(cols, np.arange(ncols + 1)).astype(np.int64)
    rlo = np.array([r[1] for r in ranges], dtype=kd)
    rhi = np.array([r[1] + (1 << r[2]) - 1 for r in ranges], dtype=kd)
    return rstart, rlo, rhi


def _refine(stream: Stream, ranges: list[tuple[int, int, int, int]], open_: list[_Target],
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


def _gather(stream: Stream, ranges: list[tuple[int, int, int, int]], open_: list[_Target],
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
