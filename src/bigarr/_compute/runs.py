"""Sorted runs on disk and their k-way merge: the machinery of the external sorts.

A *run* is a raw file of sorted *records* (no header) with a hidden name in the sort's
temporary folder (next to the output, or ``tmpdir=``); :class:`TempRuns` owns those files:
it checks the room for them up front (``statvfs``, both numbers quoted), creates them, and
removes them when the sort ends, whether it succeeded or failed.

Two record formats (:class:`Values`, :class:`Records`):

values
    the source's own values (a 1-d sort); ordered by numpy's sort order.
records
    a structured dtype ``(k, i[, p])``: the order-preserving unsigned keys of the key
    columns (``k``, primary first; :func:`bigarr._compute.order._rank_keys`, so ``-0.0`` ties
    with ``0.0`` and NaN sorts last), the row index (``i``, int64) and, to sort whole rows, the
    row itself (``p``). ``(k, i)`` is unique, so the order of records is total and a stable
    sort of rows is an ordinary sort of records.

:func:`merge` reads a buffer of each run, emits every buffered record up to the smallest of the
buffers' last records (the *bound*: no unread record can precede it), sorts that block (pieces
concatenated in run order, so a stable sort by key alone keeps ``(k, i)`` order: earlier runs
hold lower indices) and hands it to a sink, then tops up the buffers it left at most half full. A
buffer that empties drops its bytes at once: a finished run holds no memory while the others
merge.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bigarr._compute import native
from bigarr._compute.engine import ordered
from bigarr._compute.order import _rank_keys
from bigarr._core.files import preallocate
from bigarr._os.fileid import create_new, hidden_name
from bigarr._os.sink import DIRECT_ALIGN, Appending
from bigarr._os.sink import Sink as DirectSink
from bigarr.errors import DiskFullError

__all__ = ["MIN_BUFFER", "Records", "Run", "RunWriter", "Spares", "TempRuns",
           "Values", "aligned_empty", "merge", "per_run", "stable_sort"]

Array = np.ndarray[Any, Any]
Sink = Callable[[Array], None]

#: Smallest buffer per run in a merge (bytes); more runs than the budget holds at this size
#: merge in several passes.
MIN_BUFFER = 64 << 10


def aligned_empty(n: int, dtype: np.dtype[Any]) -> Array:
    """``np.empty(n, dtype)`` whose first value is page-aligned in memory, so a run written
    from it at offset 0 goes to the disk with ``O_DIRECT`` from its own memory
    (:meth:`RunWriter.write` with ``lend=True``)."""
    return native.aligned_empty(n, dtype, DIRECT_ALIGN)


def per_run(budget_bytes: int, runs: int, itemsize: int, share: int) -> int:
    """Records buffered per run: ``1/share`` of the budget for all buffers (:meth:`Values.share`,
    :meth:`Records.share`)."""
    return max(budget_bytes // share // max(runs, 1) // itemsize, 1)


#: Values scanned at a time for the ties an unstable sort leaves open (bounds the masks).
_TIE_PIECE = 1 << 20


def _ties(a: Array) -> tuple[Array | None, Array | None, int]:
    """What an unstable sort of the float values ``a`` loses and :func:`stable_sort` puts back:
    the zeros in their order in ``a`` when both signs occur (``-0.0`` ties with ``0.0``), and
    the NaNs in their order (one of them when all have the same bits: numpy's vectorised sort
    writes its own NaN in their place) with their count."""
    if not a.shape[0]:
        return None, None, 0
    zeros, nans = [], []
    for i in range(0, a.shape[0], _TIE_PIECE):
        piece = a[i:i + _TIE_PIECE]
        zeros.append(piece[piece == 0])
        nans.append(piece[np.isnan(piece)])
    z, q = np.concatenate(zeros), np.concatenate(nans)
    sign = np.signbit(z)
    bits = q.view(f"u{q.itemsize}")
    if bits.size and not (bits != bits[0]).any():
        q = q[:1]
    return (z if sign.any() and not sign.all() else None, q if bits.size else None,
            int(bits.size))


def stable_sort(src: Array, out: Array) -> None:
    """Write the 1-d ``src`` to ``out`` (``src`` itself: in place) sorted bit for bit as
    ``np.sort(src, kind="stable")``: NaN last and ``-0.0`` tied with ``0.0``, both in their
    input order, each NaN with its own bits.

    1- and 2-byte values take the native radix sort (``_radix.c``: 5-10x numpy's sort there).
    Wider values take numpy's default sort, the vectorised quicksort (2-3x the radix sort on a
    2-core AVX2 machine, 16 Mi values; bench/README.md), whose only liberties are the order
    among equal values and the NaNs' bits: equal integers are the same bits, and the equal
    floats that are not (the zeros, the NaNs) are put back as they came (:func:`_ties`).
    """
    dtype = src.dtype
    if (dtype.itemsize <= 2 and native.radix_sortable(dtype)
            and native.radix_sort(src, out, np.empty_like(src))):
        return
    zeros, nans, count = _ties(src) if dtype.kind == "f" else (None, None, 0)
    if out is not src:
        np.copyto(out, src)
    if dtype.kind in "bc" or dtype.itemsize <= 2:
        out.sort(kind="stable")  # no native radix sort: numpy's is a radix sort here too
        return
    out.sort()
    if zeros is not None:
        lo = int(np.searchsorted(out, dtype.type(0), side="left"))  # a Python 0 would cast
        out[lo:lo + zeros.shape[0]] = zeros
    if nans is not None:
        out[out.shape[0] - count:] = nans


class Spares:
    """Arrays of one dtype kept for reuse (thread-safe): the sort's blocks and sorted chunks.

    Fresh memory is zeroed by the kernel at its first touch, and numpy frees large arrays back
    to the system: a profile of a 512 MiB sort spent 42% of its CPU time in the kernel's
    ``clear_page`` when every block was a new array. :meth:`take` hands out an idle array at
    least as large as asked (a view of its first values), or a new one; :meth:`give` takes it
    back once its values are consumed. Only arrays that were in use at once are ever made, so
    the spares hold no more memory than the peak of the arrays handed out.
    """

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype
        self._free: list[Array] = []
        self._whole: dict[int, Array] = {}  # id of the memory's owner -> the whole array
        self._lock = threading.Lock()

    def take(self, n: int) -> Array:
        """An array of ``n`` values (page-aligned in memory: :func:`aligned_empty`)."""
        with self._lock:
            for j, a in enumerate(self._free):
                if a.shape[0] >= n:
                    return self._free.pop(j)[:n]
            if self._free:  # all too small: the largest goes, a larger one replaces it
                self._whole.pop(id(self._free.pop().base), None)
            whole = aligned_empty(n, self.dtype)
            self._whole[id(whole.base)] = whole
        return whole[:n]

    def give(self, a: Array) -> None:
        """Take back an array :meth:`take` returned (no view of it may still be in use)."""
        with self._lock:
            whole = self._whole.get(id(a.base))
            if whole is None:
                return  # not one of ours
            self._free.append(whole)
            self._free.sort(key=lambda x: x.shape[0])

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._whole.clear()


class Values:
    """Runs of the values themselves (a 1-d sort)."""

    def __init__(self, dtype: np.dtype[Any]) -> None:
        self.dtype = dtype

    def first(self, a: Array) -> int:
        """Index of the smallest record of ``a`` (the first of equals)."""
        return int(np.argmin(_rank_keys(a, False)))

    def count_le(self, buf: Array, bound: Array, after: bool = False) -> int:
        """Values of the sorted ``buf`` up to ``bound[0]``: inclusive for a run before the
        bound's (or the bound's own), exclusive for a run ``after`` it, so equal values (``-0.0``
        and ``0.0``, NaNs) leave the runs in run order and the merge is stable."""
        return int(np.searchsorted(buf, bound[0], side="left" if after else "right"))

    def sort(self, block: Array) -> Array:
        """``block`` (a concatenation of sorted pieces in run order, owned) sorted in place,
        stably (:func:`stable_sort`)."""
        stable_sort(block, block)
        return block

    def scratch(self) -> int:
        """Block-sized scratch arrays a sort of a block takes (:func:`stable_sort`): one for
        the radix sort of 1- and 2-byte values, none for numpy's in-place sort."""
        return int(self.dtype.itemsize <= 2 and native.radix_sortable(self.dtype))

    def share(self, threads: int) -> int:
        """Budget shares of a merge whose buffers take one: each of ``threads`` blocks in
        flight (as large as all buffers together at most, sorted in place, with its
        :meth:`scratch`), and one spare for the cut's temporaries."""
        return threads * (1 + self.scratch()) + 2


class Records:
    """Runs of ``(k, i[, p])`` records (module docstring)."""

    def __init__(self, key_dtype: np.dtype[Any], nkeys: int, row: np.dtype[Any] | None,
                 row_size: int) -> None:
        fields: list[Any] = [("k", key_dtype, (nkeys,)), ("i", np.int64)]
        if row is not None:
            fields.append(("p", row, (row_size,)))
        self.dtype = np.dtype(fields)
        self.nkeys = nkeys

    def order(self, rec: Array) -> Array:
        """The stable order of ``rec`` by its keys (ties keep their place)."""
        k = rec["k"]
        if self.nkeys == 1:
            return np.argsort(k[:, 0], kind="stable")
        return np.lexsort([k[:, j] for j in range(self.nkeys - 1, -1, -1)])

    def first(self, a: Array) -> int:
        return int(self.order(a)[0])

    def count_le(self, buf: Array, bound: Array, after: bool = False) -> int:
        """Records of the sorted ``buf`` not after ``bound[0]`` in ``(k, i)`` order: a binary
        search (a scan of the whole buffer at every step made the merge cost grow with the
        number of runs)."""
        k, i = buf["k"], buf["i"]
        target = (tuple(bound["k"][0].tolist()), int(bound["i"][0]))
        return bisect.bisect_right(range(buf.shape[0]), target,
                                   key=lambda j: (tuple(k[j].tolist()), int(i[j])))

    def sort(self, block: Array) -> Array:
        return block[self.order(block)]

    @staticmethod
    def share(threads: int) -> int:
        """As :meth:`Values.share`; each block in flight is held with its sort order (int64,
        no larger than a record) and its sorted copy."""
        return 3 * threads + 3


Format = Values | Records


class Run:
    """A sorted run on disk and the buffered part of it being merged."""

    def __init__(self, fd: int, size: int, dtype: np.dtype[Any]) -> None:
        self.fd, self.size, self.dtype = fd, size, dtype
        self.read = 0  # records read from the file
        self.buf: Array = np.zeros(0, dtype=dtype)
        self._store: Array | None = None  # the memory buf views, read into again and again

    def close(self) -> None:
        self.buf = np.zeros(0, dtype=self.dtype)
        self._store = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def refill(self, count: int) -> None:
        """Top the buffer up to ``count`` records (what is left of it, moved to the front of
        the run's one buffer, then the next ones read in after it: no fresh memory)."""
        keep = self.buf.shape[0]
        n = min(count - keep, self.size - self.read)
        if n <= 0:
            return
        store = self._store
        if store is None or store.shape[0] < keep + n:
            store = np.empty(max(count, keep + n), dtype=self.dtype)
            store[:keep] = self.buf
        elif keep:
            ctypes.memmove(store.ctypes.data, self.buf.ctypes.data, self.buf.nbytes)
        self._store = store
        size = self.dtype.itemsize
        view = store[keep:keep + n].view(np.uint8).data
        got = 0
        while got < n * size:
            step = os.preadv(self.fd, [view[got:]], (self.read * size) + got)
            if step <= 0:
                raise DiskFullError(f"A temporary run of the sort was shortened under the sort: "
                                    f"expected {n} records, read {got // size}.")
            got += step
        self.read += n
        self.buf = store[:keep + n]


def _concat(pieces: list[Array], dtype: np.dtype[Any], spares: Spares | None = None) -> Array:
    """``np.concatenate(pieces)``, without numpy's promotion of structured dtypes (which took
    more time than the copy, pair by pair of fields, at every step of a merge of records);
    into an array of ``spares`` when given."""
    total = sum(p.shape[0] for p in pieces)
    out = spares.take(total) if spares is not None else np.empty(total, dtype=dtype)
    at = 0
    for p in pieces:
        out[at:at + p.shape[0]] = p
        at += p.shape[0]
    return out


def merge(runs: list[Run], fmt: Format, per: int, sink: Sink, threads: int = 1,
          spares: Spares | None = None) -> None:
    """Merge sorted ``runs`` into ``sink``, block by block (module docstring).

    With ``threads`` > 1 the blocks, which are independent once cut, are sorted on that many
    worker threads (numpy's sorts release the GIL) while this thread reads the runs, cuts the
    next blocks and hands the sorted ones to ``sink`` in order: at most ``threads`` blocks are
    in flight. Blocks are cut into reused arrays (:class:`Spares`), taken back once ``sink``
    returns: a sink must not keep the block it is given (it writes or copies it). ``spares``:
    the arrays to cut blocks into (the sorted runs' arrays of phase 1, already touched: fresh
    memory costs the kernel's zeroing of every page), kept for the caller; else new ones.
    """
    for run in runs:
        run.refill(per)
    own = spares is None
    spares = Spares(fmt.dtype) if spares is None else spares

    def job(block: Array) -> tuple[Array, Array]:
        return fmt.sort(block), block

    def blocks() -> Iterator[Array]:
        while True:
            live = [r for r in runs if r.buf.size]
            if not live:
                return
            pending = [r for r in live if r.read < r.size]
            if pending:
                lasts = _concat([r.buf[-1:] for r in pending], fmt.dtype)
                i = fmt.first(lasts)
                bound = lasts[i:i + 1]
                # ties with the bound: the runs before its own give theirs, the runs after it
                # keep them (for values; a record's (k, i) has no equal), so ties stay in run
                # order (bound run = its earliest among equal lasts, fmt.first)
                at = live.index(pending[i])
                cuts = [r.buf.shape[0] if j == at else fmt.count_le(r.buf, bound, j > at)
                        for j, r in enumerate(live)]
            else:
                cuts = [r.buf.size for r in live]
            block = _concat([r.buf[:c] for r, c in zip(live, cuts, strict=True)], fmt.dtype,
                            spares)
            for r, c in zip(live, cuts, strict=True):
                r.buf = r.buf[c:]
                if r.read < r.size and r.buf.shape[0] <= per // 2:
                    # topped up, not only refilled once empty: with every buffer at least
                    # half full, the bound (the smallest of their last records) lets each
                    # run give a large share of its buffer, not one run its whole buffer
                    r.refill(per)
                elif not r.buf.size:
                    r.close()
            yield block
            del block

    # the engine's window: threads blocks in flight at most, the next cut once the oldest is
    # written and its array given back (one thread: each block sorted in this thread)
    for sorted_block, block in ordered(blocks(), job, threads if threads > 1 else 0,
                                       name="bigarr-merge"):
        sink(sorted_block)
        del sorted_block
        spares.give(block)
        del block
    if own:
        spares.clear()


class RunWriter:
    """Writes one run file front to back with ``O_DIRECT`` (:class:`~bigarr._os.sink.Sink`):
    buffered writes into the page cache took most of a sort's CPU time (the kernel copying
    each byte into a new page, then writing it back and reclaiming it; bench/README.md), and
    the runs are read once, by the merge, long after. The file must be preallocated
    (:meth:`TempRuns.new`). Arrays of :class:`Spares` written whole at offset 0 are lent (no
    copy); others are staged through at most ``staging`` bytes.
    """

    def __init__(self, run: Run, name: str, staging: int) -> None:
        self.run = run
        self._sink = DirectSink(run.fd, name, direct=True, staging=staging)
        self._out = Appending(self._sink)

    def write(self, data: Array, *, lend: bool = False) -> None:
        """Append ``data`` (records); with ``lend``, written from its own memory and waited
        for before returning (``data`` may be reused at once either way)."""
        self._out.write(np.ascontiguousarray(data), lend=lend)

    def close(self) -> None:
        """Wait for every write (raising its error), then release the sink."""
        try:
            self._out.drain()
        finally:
            self._sink.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_bytes(folder: str) -> int:
    """Bytes an unprivileged writer may still use in ``folder``'s file system."""
    st = os.statvfs(folder)
    return int(st.f_bavail) * int(st.f_frsize)


class TempRuns:
    """The temporary run files of one sort: created in ``folder``, removed by :meth:`close`.

    Runs are named after the output (``target``): next to it, as its own hidden names; in
    another folder (``tmpdir=``), with a digest of the output's full path added, so sorts of
    two outputs of the same name never share names (and never take each other's runs for
    leftovers). :meth:`keep` leaves the files on disk at :meth:`close` (a resumable sort that
    failed).
    """

    def __init__(self, folder: str, target: str) -> None:
        self.folder = folder
        name = os.path.basename(target) or "sort"
        if os.path.dirname(target) != folder:
            name += "-" + hashlib.sha256(target.encode("utf8", "surrogateescape")).hexdigest()[:12]
        self.anchor = os.path.join(folder, name)
        self.names: list[str] = []
        self.runs: list[Run] = []
        self._keep = False

    def check_room(self, need: int, what: str, extra: int = 0, extra_where: str = "") -> None:
        """Refuse, before anything is written, when ``folder`` lacks ``need`` bytes (plus
        ``extra`` for an output on the same file system)."""
        free = free_bytes(self.folder)
        if need + extra > free:
            also = f" and {extra} bytes of output in {extra_where}" if extra else ""
            raise DiskFullError(
                f"{what} needs {need} bytes of temporary runs in {self.folder}{also}, but that "
                f"file system has {free} bytes free. Free space, or pass tmpdir= (a folder "
                "on another file system).")

    def new(self, size: int, dtype: np.dtype[Any]) -> Run:
        """A new, empty run file for ``size`` records."""
        name = hidden_name(self.anchor, "run")
        fd = create_new(name, mode=0o600)
        try:
            preallocate(fd, 0, size * dtype.itemsize, name)  # RunWriter's direct writes
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            raise
        return self.adopt(name, fd, size, dtype)

    def adopt(self, name: str, fd: int, size: int, dtype: np.dtype[Any]) -> Run:
        """Take the open run file ``fd`` at ``name`` into this sort's runs."""
        self.names.append(name)
        run = Run(fd, size, dtype)
        self.runs.append(run)
        return run

    def name_of(self, run: Run) -> str:
        return self.names[self.runs.index(run)]

    def forget(self, run: Run) -> None:
        """Close one run and leave its file (it is not this sort's to remove)."""
        run.close()
        i = self.runs.index(run)
        del self.runs[i]
        del self.names[i]

    def discard(self, run: Run) -> None:
        """Close and remove one run (merged into another)."""
        run.close()
        i = self.runs.index(run)
        del self.runs[i]
        name = self.names.pop(i)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)

    def keep(self) -> None:
        """Leave the run files on disk at :meth:`close`."""
        self._keep = True

    def close(self) -> None:
        for run in self.runs:
            run.close()
        if not self._keep:
            for name in self.names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
        self.runs, self.names = [], []

    def __enter__(self) -> TempRuns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
