"""External sorts out of core: :func:`sort` and :func:`argsort`.

Phase 1 cuts the source into whole-row chunks the budget holds (planned by
:func:`~bigarr._compute.runplan.plan_run`, run by :func:`~bigarr._compute.engine.execute`),
sorts each on the engine's workers and writes it as a *run*, a raw temporary file; the merge
phase then merges the runs k ways (:func:`bigarr._compute.runs.merge`), in several passes when
the budget cannot buffer every run at once, the last pass writing the output. Two reads and two
writes of the data per pass; a source one chunk holds is sorted in memory and written once.

What the runs hold (:mod:`bigarr._compute.runs`):

* ``sort`` of a 1-d source: the values, in the order of numpy's stable sort (NaN last;
  ``-0.0`` equal to ``0.0``; equal values in input order: :func:`bigarr._compute.runs.stable_sort`
  sorts each run and block, and the merge cuts ties in run order);
* ``argsort``: records of the ranking keys of the key column(s) and the row index, whose order
  is total: the indices are those of a *stable* argsort;
* ``sort(by=)`` of an N-d source: those records with the row itself, so the rows come out in
  the order of ``np.lexsort`` of the key columns (first key primary), stable.

Temporary runs go next to the output (or in ``tmpdir=``), are refused up front with both numbers
when the file system lacks room (``statvfs``), and are removed on success and on failure. The
output is built under a hidden name and renamed over ``out`` once complete, under the output's
lock. With ``resume=True`` the runs of phase 1, and the runs of each finished intermediate merge
pass, are made durable and journaled (:mod:`bigarr._compute.sortjournal`), so a killed sort
restarts from the runs it finished, or from the last merge pass it finished.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bigarr._compute.engine import execute
from bigarr._compute.operands import Stream, parse_operand
from bigarr._compute.order import Array, _rank_keys
from bigarr._compute.orderkeys import check_dtype, key_dtype
from bigarr._compute.orderscan import LAST_PASSES
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import parse_threads, plan_run
from bigarr._compute.runs import (
    MIN_BUFFER,
    Records,
    Run,
    RunWriter,
    Spares,
    TempRuns,
    Values,
    free_bytes,
    merge,
    per_run,
    stable_sort,
)
from bigarr._compute.sortjournal import RunJournal, fingerprint
from bigarr._core.array import memmap
from bigarr._core.files import OUTPUT_STAGING, create, written_in_order
from bigarr._core.files import open as open_npy
from bigarr._os.fileid import remove_leftovers
from bigarr._os.lock import OutputLock
from bigarr._os.paths import check_output
from bigarr._os.sink import DIRECT_ALIGN
from bigarr._plan.budget import DEFAULT_BUDGET, parse_budget
from bigarr.errors import ArgumentError, BudgetError, DiskFullError, RegionError, UnsupportedError

__all__ = ["argsort", "sort"]

Sink = Callable[[Array], None]
Format = Values | Records


# ---- parsing -------------------------------------------------------------------------------
def parse_by(by: Any, shape: tuple[int, ...]) -> list[int]:
    """The key columns of ``by`` (an int or a sequence of ints, first key primary), as indices
    into a row flattened in C order.

    Raises
    ------
    ArgumentError
        If ``by`` is not an int or a non-empty sequence of ints.
    RegionError
        If a column is out of range (an IndexError).
    """
    items = [by] if isinstance(by, (int, np.integer)) and not isinstance(by, bool) else by
    if (isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items
            or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in items)):
        raise ArgumentError(
            f"Expected by= as a column index or a non-empty sequence of them (first key "
            f"primary). Got {by!r}.")
    ncols = int(math.prod(shape[1:]))
    cols = []
    for c in items:
        if not -ncols <= int(c) < ncols:
            raise RegionError(
                f"Expected key columns in [-{ncols}, {ncols}) for rows of {ncols} values "
                f"(shape {shape}). Got by={by!r}.")
        cols.append(int(c) % ncols)
    return cols


# ---- the two phases ------------------------------------------------------------------------
class _Job:
    """One external sort: its source, record format, and the runs it makes."""

    def __init__(self, stream: Stream, by: list[int] | None, rows: bool, *,
                 budget: int, threads: int, progress: ProgressArg, name: str) -> None:
        # staging memory of the direct writes of runs and output (RunWriter, written_in_order),
        # taken from the budget
        self.staging = max(2 * DIRECT_ALIGN, min(OUTPUT_STAGING, budget // 8))
        self.stream, self.budget, self.threads = stream, budget - self.staging, threads
        self.progress, self.name = progress, name
        dtype = np.dtype(stream.dtype)
        self.by = by
        shape = tuple(stream.shape)
        self.row_size = int(math.prod(shape[1:]))
        row_bytes = max(self.row_size * dtype.itemsize, 1)
        self.fmt: Format
        self.spares: Spares | None = None
        self.chunk_rows = 0  # the longest chunk of phase 1 (rows)
        if by is None:
            self.fmt = Values(dtype)
            # the sorted copy (sorted in place), which is also the copy waiting to be
            # written, and the radix sort's scratch for 1- and 2-byte values
            self.temporaries = 1.0 + self.fmt.scratch()
            self.spares = Spares(dtype)
        else:
            kd = key_dtype(dtype)
            self.fmt = Records(kd, len(by), dtype if rows else None, self.row_size)
            rec = self.fmt.dtype.itemsize
            # per row: the keys (and a column's ranking temporaries), the order and the
            # stable sort's buffer, the records, one field gathered into them, and the
            # records waiting for the consumer to write them
            per_row = ((len(by) + 3) * kd.itemsize + 16 + 2 * rec
                       + (row_bytes if rows else 8))
            self.temporaries = per_row / row_bytes

    def records(self, block: Array, row: int) -> Array:
        """A chunk's sorted run."""
        if self.by is None:
            # values alone, sorted bit for bit as numpy's stable sort (-0.0 and 0.0, NaNs in
            # their input order), into a reused array (given back once written: _phase1)
            assert self.spares is not None
            out = self.spares.take(block.shape[0])
            stable_sort(np.ascontiguousarray(block), out)
            return out
        assert isinstance(self.fmt, Records)
        flat = block.reshape(block.shape[0], -1)
        keys = [_rank_keys(np.ascontiguousarray(flat[:, c]), False) for c in self.by]
        order = np.argsort(keys[0], kind="stable") if len(keys) == 1 else np.lexsort(keys[::-1])
        rec = np.empty(block.shape[0], dtype=self.fmt.dtype)
        k = rec["k"]
        for j, key in enumerate(keys):
            k[:, j] = key[order]
        del keys
        rec["i"] = order
        rec["i"] += row
        if "p" in (self.fmt.dtype.names or ()):
            rec["p"] = flat[order]
        return rec

    def plan(self) -> Any:
        return plan_run(f"{self.name} runs", [self.stream], budget=self.budget,
                        threads=self.threads, layout="rows", temporaries=self.temporaries)

    def passes(self, nruns: int) -> int:
        """Merge passes over ``nruns`` runs."""
        fan_in = self.fan_in()
        passes = 1
        while nruns > fan_in:
            nruns = math.ceil(nruns / fan_in)
            passes += 1
        return passes

    def fan_in(self) -> int:
        return max(2, self.budget // self.share() // MIN_BUFFER)

    def share(self) -> int:
        """Budget shares of a merge whose run buffers take one (:meth:`Values.share`)."""
        return self.fmt.share(max(self.threads, 1))

    def merge(self, runs: list[Run], sink: Sink) -> None:
        size = self.fmt.dtype.itemsize
        per = per_run(self.budget, len(runs), size, self.share())
        if self.spares is not None and self.chunk_rows:
            # a block (at most every buffer's records) fits in an array of phase 1's spares,
            # which the merge cuts its blocks into
            per = min(per, max(self.chunk_rows // len(runs), MIN_BUFFER // size))
        merge(runs, self.fmt, per, sink, threads=max(self.threads, 1), spares=self.spares)

    def run(self, plan: Any, temp: TempRuns, sink: Sink, journal: RunJournal | None = None,
            ) -> None:
        """Phase 1 then the merge passes, the last into ``sink``; with a ``journal``, the runs
        it holds (of phase 1, or of a finished merge pass) are reused, and each new run and
        each finished intermediate pass is recorded once durable."""
        self.chunk_rows = max((c.rows.stop - c.rows.start for c in plan.chunks), default=0)
        try:
            self._run(plan, temp, sink, journal)
        finally:
            if self.spares is not None:
                self.spares.clear()

    def _run(self, plan: Any, temp: TempRuns, sink: Sink, journal: RunJournal | None,
             ) -> None:
        nchunks = len(plan.chunks)
        dtype = self.fmt.dtype
        done = journal.adopt(dtype) if journal is not None and nchunks > 1 else {}
        runs: list[Run]
        if journal is not None and journal.adopted_pass:
            runs = journal.adopted_merged  # phase 1 and earlier passes are done
            number = journal.adopted_pass
            LAST_PASSES[0] = 0
        else:
            LAST_PASSES[0] = 1
            number = 1
            if self._phase1(plan, temp, sink, journal, done):
                return
            runs = [done[i] for i in sorted(done)]  # in source order: the merge keeps ties
        fan_in = self.fan_in()
        resumable = journal is not None and journal.resume
        while len(runs) > fan_in:
            merged: list[Run] = []
            for start in range(0, len(runs), fan_in):
                group = runs[start:start + fan_in]
                target = temp.new(sum(r.size for r in group), dtype)
                with RunWriter(target, temp.name_of(target), self.staging) as writer:
                    self.merge(group, writer.write)
                for r in group:
                    if resumable:
                        r.close()  # journaled: kept until this pass is
                    else:
                        temp.discard(r)
                merged.append(target)
            number += 1
            if journal is not None and resumable:
                journal.pass_finished(number, merged)
                for r in runs:
                    temp.discard(r)
            runs = merged
            LAST_PASSES[0] += 1
        self.merge(runs, sink)
        LAST_PASSES[0] += 1

    def _phase1(self, plan: Any, temp: TempRuns, sink: Sink, journal: RunJournal | None,
                done: dict[int, Run]) -> bool:
        """Sort the chunks not ``done`` into runs (added to ``done``); True when the source
        was one chunk, sorted straight into ``sink``."""
        nchunks = len(plan.chunks)
        todo = [c for c in plan.chunks if c.index not in done]
        with Progress(self.progress, total_bytes=sum(c.nbytes for c in todo),
                      total_chunks=len(todo), desc=f"{self.name} runs") as bar:
            for chunk, part in execute(plan, lambda c, b: self.records(b[0], c.rows.start),
                                       [self.stream], progress=bar, skip=set(done)):
                if nchunks == 1:
                    sink(part)  # the whole source in one run: it is the answer
                    return True
                run = temp.new(part.shape[0], self.fmt.dtype)
                with RunWriter(run, temp.name_of(run), self.staging) as writer:
                    writer.write(part, lend=True)
                if self.spares is not None:
                    self.spares.give(part)
                del part
                done[chunk.index] = run
                if journal is not None:
                    journal.finished(chunk.index, run)
        return False  # (the spares stay: the merge cuts its blocks into them)


def _temp_folder(tmpdir: str | os.PathLike[str] | None, target: str | None) -> str:
    if tmpdir is not None:
        folder = os.path.abspath(os.fspath(tmpdir))
        if not os.path.isdir(folder):
            raise ArgumentError(f"Expected tmpdir= to be an existing folder. Got {folder!r}.")
        return folder
    if target is not None:
        return os.path.dirname(target)
    return tempfile.gettempdir()


def _check_room(job: _Job, plan: Any, temp: TempRuns, out_bytes: int,
                out_folder: str | None) -> None:
    """Refuse up front when the temporary runs (twice for a multi-pass merge) and the output
    do not fit their file systems."""
    nchunks = len(plan.chunks)
    n = int(job.stream.shape[0]) if job.stream.ndim else 1
    runs = 0 if nchunks <= 1 else n * job.fmt.dtype.itemsize
    if runs and job.passes(nchunks) > 1:
        runs *= 2  # a merged pass is written before the runs it merged are removed
    same = out_folder is not None and os.stat(out_folder).st_dev == os.stat(temp.folder).st_dev
    if out_folder is not None and not same:
        free = free_bytes(out_folder)
        if out_bytes > free:
            raise DiskFullError(
                f"{job.name} writes {out_bytes} bytes of output in {out_folder}, but its file "
                f"system has {free} bytes free. Free space, or choose an output elsewhere.")
    temp.check_room(runs, job.name, out_bytes if same else 0, out_folder or "")


def _to_file(job: _Job, plan: Any, temp: TempRuns, target: str, overwrite: bool,
             shape: tuple[int, ...], dtype: np.dtype[Any], pick: Callable[[Array], Array],
             resume: bool) -> memmap:
    """Run ``job`` into a new ``.npy`` at ``target`` (built hidden, renamed once complete),
    holding the output's lock; runs journaled with ``resume`` (:mod:`.sortjournal`)."""
    folder = os.path.dirname(target)
    _check_room(job, plan, temp, int(math.prod(shape)) * dtype.itemsize, folder)
    check_output(target, overwrite)  # refuse before any work
    with OutputLock(target):
        chunks = [(c.rows.start, c.rows.stop) for c in plan.chunks]
        journal = RunJournal(target, temp, fingerprint(job.stream, job.name, job.by,
                                                       job.fmt.dtype, chunks, temp.folder),
                             resume)
        remove_leftovers(target, ("sorting",))  # outputs of killed sorts (we hold the lock)
        try:
            with written_in_order(target, shape, dtype, overwrite=overwrite, kind="sorting",
                                  staging=job.staging) as sink:
                job.run(plan, temp, lambda block: sink(pick(block)), journal)
        except BaseException:
            journal.failure()
            raise
        journal.success()
    return open_npy(target)


def _pick(fmt: Format, what: str, row_shape: tuple[int, ...]) -> Callable[[Array], Array]:
    if isinstance(fmt, Values):
        return lambda block: block
    if what == "i":
        return lambda block: block["i"]
    return lambda block: block["p"].reshape((block.shape[0], *row_shape))


# ---- public --------------------------------------------------------------------------------
def sort(src: Any, out: str | os.PathLike[str], *, by: Any = None,
         budget: int | str | None = DEFAULT_BUDGET, threads: int | None = None,
         progress: ProgressArg = None, overwrite: bool = False,
         tmpdir: str | os.PathLike[str] | None = None, resume: bool = False) -> memmap:
    """Sort an array larger than memory into a new page-aligned ``.npy``.

    A 1-d source sorts its values bit for bit like ``numpy.sort(x, kind="stable")`` (NaN last,
    ``-0.0`` equal to ``0.0``, equal values in input order). An N-d source sorts whole rows by
    the key column(s) ``by``, stably: the result is
    ``x[np.lexsort([x[:, c] for c in reversed(by)])]`` (numpy's ``lexsort`` takes its *last* key
    as primary; ``by`` takes its first), NaN last in each key.

    Sorted runs the budget holds are written to temporary files (next to ``out``, or in
    ``tmpdir``; removed on success and on failure), then merged k ways into a hidden file
    renamed to ``out`` once complete (a failed sort leaves what was at ``out``): the data is read
    twice and written twice (more merge passes only when the budget cannot buffer
    every run at once).

    Parameters
    ----------
    src
        A :class:`bigarr.memmap`, numpy array or ``.npy`` path; bool, integer or floating.
    out
        Path of the sorted ``.npy`` (created; an existing file only with ``overwrite``).
    by
        For sources of 2 or more dimensions: the key column (an int) or columns (a sequence,
        first key primary), indexing a row flattened in C order. ``None`` for a 1-d source.
    budget, threads, progress
        As :func:`bigarr.sum`.
    overwrite
        Replace an existing ``out``.
    tmpdir
        Folder for the temporary runs (default: the folder of ``out``).
    resume
        Keep the finished runs of phase 1, and of each finished intermediate merge pass (when
        the budget cannot merge all runs at once), durable (``fdatasync``, journaled next to
        ``out``): a run killed even by ``kill -9`` leaves them, and the next call of the same
        sort with ``resume=True`` reuses every run still intact and sorts only the rest, or
        starts from the last finished merge pass. Without it a failed sort removes its runs.

    Returns
    -------
    bigarr.memmap
        The sorted output, opened read-only (close it when done).

    Raises
    ------
    ArgumentError
        If ``by`` is not an int or a sequence of ints, or is given for a 1-d source.
    BudgetError
        If the budget cannot hold the run plan (both numbers quoted).
    DiskFullError
        If the file system lacks room for the runs or the output (both numbers quoted), before
        anything is written.
    FileExistsError
        If ``out`` exists and ``overwrite`` is False.
    RegionError
        If a key column is out of range (an IndexError).
    UnsupportedError
        For a source of 2 or more dimensions without ``by``.
    """
    stream = parse_operand(src, by_key=False)
    target = os.path.abspath(os.fspath(out))
    try:
        dtype = np.dtype(stream.dtype)
        check_dtype(dtype, "sort")
        shape = tuple(stream.shape)
        cols = _parse_sort_by(by, shape, "sort")
        job = _Job(stream, cols, rows=True, budget=parse_budget(budget),
                   threads=parse_threads(threads), progress=progress, name="sort")
        with TempRuns(_temp_folder(tmpdir, target), target) as temp:
            if shape[0] == 0:
                check_output(target, overwrite)
                create(target, shape, dtype, overwrite=overwrite).close()
                return open_npy(target)
            plan = job.plan()
            return _to_file(job, plan, temp, target, overwrite, shape, dtype,
                            _pick(job.fmt, "p", shape[1:]), resume)
    finally:
        stream.close()


def _parse_sort_by(by: Any, shape: tuple[int, ...], name: str) -> list[int] | None:
    if not shape:
        raise UnsupportedError(f"{name} needs an array of at least one dimension. Got a 0-d "
                               "array.")
    if len(shape) == 1:
        if by is not None:
            raise ArgumentError(f"by= selects key columns of the rows of a 2-d (or more) "
                                f"source. Got by={by!r} for a 1-d source; leave it out.")
        return None
    if by is None:
        raise UnsupportedError(
            f"Expected by= (the key column or columns) to {name} the rows of a source of shape "
            f"{shape}; sorting along another axis is not supported.")
    return parse_by(by, shape)


def argsort(src: Any, out: str | os.PathLike[str] | None = None, *, by: Any = None,
            budget: int | str | None = DEFAULT_BUDGET, threads: int | None = None,
            progress: ProgressArg = None, overwrite: bool = False,
            tmpdir: str | os.PathLike[str] | None = None,
            resume: bool = False) -> Array | memmap:
    """Indices that sort an array larger than memory, stably: ``np.argsort(x, kind="stable")``.

    For a 1-d source, the order of its values (NaN last, ``-0.0`` equal to ``0.0``, ties in
    index order). For an N-d source, the order of its rows by the key column(s) ``by`` as
    :func:`sort` orders them. The indices are int64.

    Parameters
    ----------
    src
        A :class:`bigarr.memmap`, numpy array or ``.npy`` path; bool, integer or floating.
    out
        Path of an int64 ``.npy`` to write the indices to, or ``None`` to return them in
        memory (the indices then count against the budget).
    by, budget, threads, progress, overwrite, tmpdir, resume
        As :func:`sort`; ``tmpdir`` defaults to the folder of ``out``, or the system's
        temporary folder when ``out`` is None; ``resume`` needs ``out``.

    Returns
    -------
    numpy.ndarray or bigarr.memmap
        The indices in memory (``out=None``), or the ``out`` file opened read-only.

    Raises
    ------
    BudgetError
        If ``out`` is None and half the budget cannot hold the indices (use ``out=``), or the
        budget cannot hold the run plan (both numbers quoted).
    ArgumentError, DiskFullError, FileExistsError, RegionError, UnsupportedError
        As :func:`sort`.
    """
    if resume and out is None:
        raise ArgumentError("resume=True keeps the sort's runs for the output file: pass out=.")
    stream = parse_operand(src, by_key=False)
    target = None if out is None else os.path.abspath(os.fspath(out))
    try:
        dtype = np.dtype(stream.dtype)
        check_dtype(dtype, "argsort")
        shape = tuple(stream.shape)
        cols = _parse_sort_by(by, shape, "argsort")
        n = shape[0]
        budget_bytes = parse_budget(budget)
        held = 0
        if target is None:
            held = n * 8
            if held > budget_bytes // 2:
                raise BudgetError(
                    f"argsort's {n} indices take {held} bytes, more than half the budget "
                    f"({budget_bytes} bytes) allows in memory. Pass out= (a .npy path) to "
                    "write them to a file, or raise budget=.")
        job = _Job(stream, cols if cols is not None else [0], rows=False,
                   budget=budget_bytes - held, threads=parse_threads(threads),
                   progress=progress, name="argsort")
        with TempRuns(_temp_folder(tmpdir, target), target or "argsort") as temp:
            if target is not None and n == 0:
                check_output(target, overwrite)
                create(target, (0,), np.int64, overwrite=overwrite).close()
                return open_npy(target)
            if n == 0:
                return np.zeros(0, dtype=np.int64)
            plan = job.plan()
            if target is not None:
                return _to_file(job, plan, temp, target, overwrite, (n,), np.dtype(np.int64),
                                _pick(job.fmt, "i", ()), resume)
            _check_room(job, plan, temp, 0, None)
            result = np.empty(n, dtype=np.int64)
            pos = [0]

            def sink(block: Array) -> None:
                result[pos[0]:pos[0] + block.shape[0]] = block["i"]
                pos[0] += block.shape[0]

            job.run(plan, temp, sink)
            return result
    finally:
        stream.close()
