"""Sampled windows: one pass of the order statistics on most data.

Before pass 1 of :mod:`bigarr._compute.orderscan`, a sample of the values of a one-column
operand (64 pieces spread evenly over the data, at most 1/16 of it) estimates where each wanted
order statistic lies; pass 1 then also gathers the keys inside a window of buckets around each
estimate, wide enough (many standard errors of the sample's quantile) and as wide as a quarter
of the budget allows. When pass 1's counts show a statistic's bucket inside a window whose keys
were all gathered, it is selected there exactly and needs no second pass (where the statistic's
whole pass-1 bucket lies inside the window, only that bucket's keys are partitioned, the
histogram giving the rank below it); otherwise (an unrepresentative sample, a window
overflowing its room) orderscan's further passes follow. Counts and selection are exact either
way: the sample only chooses what to gather. The sample runs on a thread of its own, started
with pass 1, whose kernels wait for its windows before their first block: its reads overlap the
pass's first reads. A mapped file's pieces are read with ``preadv`` through a descriptor of
their own, all 64 asked for at once (``WILLNEED``), so a cold disk serves them together and no
page fault holds the GIL while the disk works.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import wait
from typing import Any

import numpy as np

from bigarr._compute.operands import Stream
from bigarr._compute.orderkeys import Target, keys_of
from bigarr._os.hints import parse_hint
from bigarr._os.pread import RangeReader
from bigarr._os.workers import Workers
from bigarr.errors import UnsupportedError

Array = np.ndarray[Any, Any]
_WILLNEED = parse_hint("willneed")

#: Values sampled (at most, and at most 1/16 of the data) to place the windows, in
#: :data:`PIECES` pieces spread evenly over the data.
SAMPLE = 1 << 20
PIECES = 64
#: Fewest sampled values worth a window.
MIN_SAMPLE = 4096
#: A window reaches at least this many standard errors of the sample's quantile either side.
SIGMAS = 6.0
#: ... and at most this many, when the room allows more.
MAX_SIGMAS = 40.0


class Windows:
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


def half_width(n: int, m: int, nfracs: int, room: int) -> float | None:
    """Each window's half-width, as a share of the ``n`` values, for ``m`` sampled (non-NaN)
    values and ``nfracs`` quantiles: a third of the ``room`` (in keys) split between the
    windows (values piled on a window's edges may fill it further), and no wider than needed
    (each key gathered costs time); None when that is under :data:`SIGMAS` standard errors."""
    sigma = 0.5 / math.sqrt(m)  # the standard error of a sample quantile, at most
    delta = min(0.5, room / n / (2 * nfracs) / 3, MAX_SIGMAS * sigma)
    return None if delta < SIGMAS * sigma else delta


def windows_fit(stream: Stream, nfracs: int, room: int) -> bool:
    """True when pass 1 over ``stream`` (all its values as one column) samples windows for
    ``nfracs`` quantiles with room for ``room`` keys: a contiguous array with enough values
    for the sample and the windows (before the sample's NaNs are known)."""
    a = stream.array
    if a is None or not nfracs or not (a.flags.c_contiguous or a.flags.f_contiguous):
        return False
    size = min(SAMPLE, a.size // 16)
    return size >= MIN_SAMPLE and half_width(a.size, size, nfracs, room) is not None


def read_pieces(stream: Stream, views: list[Array],
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


class Sampling:
    """:func:`sample_windows` on a thread of its own, started at once, so the sample's reads
    overlap pass 1's first reads (the pass's kernels wait for its windows before their first
    block). The constructor returns once the sample's reads are asked for, so the disk has them
    queued ahead of the pass's large reads. :meth:`get` waits for the windows (re-raising the
    sample's error); :meth:`join` waits without raising (the sample reads the operand: it
    must end before the call does)."""

    def __init__(self, stream: Stream, fracs: list[float], kd: np.dtype[Any],
                 room: int) -> None:
        self._asked = threading.Event()
        workers = Workers(1, "bigarr-sample")
        self._future = workers.submit(self._run, stream, fracs, kd, room)
        workers.close(wait=False)  # the sample goes on; its thread ends with it
        self._asked.wait()

    def _run(self, stream: Stream, fracs: list[float], kd: np.dtype[Any],
             room: int) -> Windows | None:
        try:
            return sample_windows(stream, fracs, kd, room, self._asked)
        finally:
            self._asked.set()  # (a sample that ended early never asked)

    def join(self) -> None:
        wait([self._future])

    def get(self) -> Windows | None:
        return self._future.result()  # (the sample's error, re-raised in the caller's thread)


def sample_windows(stream: Stream, fracs: list[float], kd: np.dtype[Any], room: int,
                    asked: threading.Event | None = None) -> Windows | None:
    """Windows of keys around the ``fracs`` quantiles of a sample of ``stream``'s values, each
    wide enough to hold its quantile unless the sample misleads, together about a third of
    ``room`` values; None when a sample cannot place them (a lazy or non-contiguous operand,
    too little data, too little room). ``asked`` is set once the pieces' reads are asked for
    (see :func:`read_pieces`), or when the sample takes the mapping's way."""
    a = stream.array
    if not windows_fit(stream, len(fracs), room) or a is None:
        return None
    flat = a.ravel(order="K")  # a view: quantiles do not care in which order values come
    n = flat.size
    size = min(SAMPLE, n // 16)
    piece = -(-size // PIECES)
    starts = np.linspace(0, n - piece, PIECES).astype(np.int64)
    views = [flat[int(i):int(i) + piece] for i in starts]
    sample = read_pieces(stream, views, asked)
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
    keys = keys_of(sample.reshape(-1, 1)).reshape(-1)
    if sample.dtype.kind == "f":
        keys = keys[~np.isnan(sample)]
    m = keys.size
    if m < MIN_SAMPLE:
        return None
    delta = half_width(n, m, len(fracs), room)
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
    return Windows(np.array([s[0] for s in spans], dtype=kd),
                    np.array([s[1] - s[0] for s in spans], dtype=kd), room)


def window_keys(b: Array, keys: Array | None, win: Windows,
                 kd: np.dtype[Any]) -> tuple[Array, Array] | None:
    """For the one-column block ``b`` (``keys``: its keys, when already computed): the count of
    non-NaN keys under each window, and the keys inside the windows (any order); None when
    they are more than the room."""
    if keys is None:
        keys = keys_of(b)
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


def select_in_windows(win: Windows, targets: list[Target]) -> None:
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
    buckets: dict[tuple[int, int], list[Target]] = {}
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
    where: list[tuple[Target, int]] = []
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
