"""``map_blocks``: apply a function to chunks of rows and write the result to a file, resumably.

The inputs share a leading length ``N``; chunks are ranges of whole rows along axis 0, planned on
the input with the largest rows (so its chunks start on page boundaries of its file) within the
memory plan. ``func`` runs on worker threads through :mod:`bigarr._compute.engine`; its results are
written with the engine's flush policy.

Where the result goes (``out=``):

``"path.npy"``
    A new file. It is created preallocated under a hidden partial name, written, made durable,
    and renamed to ``path.npy`` only when complete, so a crash never leaves a half-written file
    under the output's name. Its row shape and dtype come from the first chunk's result (or
    ``dtype=``).
an array
    A :class:`bigarr.memmap` (shared mode) or any numpy array with ``N`` rows, written in place.
    A journal next to a mapped output marks it incomplete until the run finishes.
a :class:`bigarr.Appender`
    For results whose length is not known up front (filters): each chunk's result, of any
    number of rows, is appended in chunk order and committed crash-safely.

With ``resume=True`` chunks are journaled as they become durable (see
:mod:`bigarr._formats.journal`); running the same call again after a crash recomputes only the
chunks not recorded.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from bigarr._compute import engine as _engine
from bigarr._compute.engine import (
    Stream,
    Writeback,
    as_stream,
    parse_threads,
    plan_offset,
    plan_rows,
)
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._core.append import Appender
from bigarr._core.array import memmap
from bigarr._core.files import create, file_path, parse_order
from bigarr._core.files import open as open_npy
from bigarr._formats.journal import (
    Journal,
    input_identity,
    journal_path,
    partial_path,
    read_journal,
)
from bigarr._os.durable import fsync_dir
from bigarr._os.geometry import parse_size
from bigarr._plan.budget import plan_memory
from bigarr._plan.chunks import Chunk, ChunkPlan
from bigarr.errors import ArgumentError, FileExistsError_, ReadOnlyError, ShapeError

__all__ = ["map_blocks"]

_DEFAULT_BUDGET = "256MiB"


def _input_stream(obj: Any) -> Stream:
    """A stream for an input; a top-level numpy.memmap is re-mapped by bigarr for its hints."""
    if (isinstance(obj, np.memmap) and not isinstance(obj, memmap)
            and isinstance(getattr(obj, "_mmap", None), mmap.mmap)
            and obj.base is getattr(obj, "_mmap", None)
            and obj.filename and (obj.flags.c_contiguous or obj.flags.f_contiguous)):
        from bigarr._core.files import open_raw

        order = "F" if obj.flags.f_contiguous and not obj.flags.c_contiguous else "C"
        raw = open_raw(obj.filename, obj.dtype, obj.shape, offset=obj.offset, order=order)
        stream = as_stream(raw, by_key=False)
        stream.owned = raw
        return stream
    return as_stream(obj, by_key=False)


def _identity(stream: Stream) -> list[Any]:
    if stream.mapping is not None:
        return [*input_identity(stream.mapping.path), plan_offset(stream)]
    arr = stream.array
    return ["memory", list(arr.shape), arr.dtype.str]


def _operand_identity(obj: Any) -> Any:
    """What identifies a broadcast operand's value: its bytes' digest, or its repr.

    A repr that holds an address (a function, most objects) differs in every process, so a
    journal is never wrongly trusted for it, only not reused.
    """
    if isinstance(obj, (np.ndarray, np.generic, int, float, complex, bool)):
        arr = np.asarray(obj)
        if not arr.dtype.hasobject:
            digest = hashlib.sha256(np.ascontiguousarray(arr).view(np.uint8).data).hexdigest()
            return [list(arr.shape), arr.dtype.str, digest]
    return repr(obj)


def _split_by_rows(obj: Any, first: np.ndarray[Any, Any]) -> bool:
    """The operand rule for arrays: an array is cut into the chunk's rows when it has as many
    dimensions as the first input and the same first length; anything else is passed whole.
    (Paths are always cut into rows: a file is data, never a broadcast operand.)

    The rule looks at shapes only, never at the plan, so a result never depends on the budget:
    a (128, 64) weight next to a (128, 128, 64) input broadcasts even though 128 rows match.
    """
    return (isinstance(obj, np.ndarray) and obj.ndim == first.ndim and obj.ndim >= 1
            and obj.shape[0] == first.shape[0])


def _row_bytes(arr: np.ndarray[Any, Any]) -> int:
    return int(np.prod(arr.shape[1:], dtype=np.int64)) * int(arr.dtype.itemsize)


def _check_rows(
    result: Any, chunk: Chunk, row_shape: tuple[int, ...] | None
) -> np.ndarray[Any, Any]:
    res = np.asarray(result)
    rows = chunk.rows.stop - chunk.rows.start
    if res.ndim == 0 or res.shape[0] != rows:
        raise ShapeError(
            f"Expected func to return {rows} rows for chunk {chunk.index} (rows "
            f"{chunk.rows.start}:{chunk.rows.stop}). Got shape {res.shape}. For results of "
            "varying length pass out=bigarr.Appender(...)."
        )
    if row_shape is not None and res.shape[1:] != row_shape:
        raise ShapeError(
            f"Expected rows of shape {row_shape} from func (as the first chunk's). Got "
            f"{res.shape[1:]} for chunk {chunk.index}."
        )
    return res


def map_blocks(
    func: Callable[..., Any],
    *inputs: Any,
    out: Any,
    dtype: Any = None,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
    resume: bool = False,
    overwrite: bool = False,
    order: str = "C",
    flush_every: int | str | None = None,
    prefetch: int = 1,
) -> Any:
    """Apply ``func`` to chunks of rows of ``inputs`` and write the results to ``out``.

    ``func(*blocks)`` receives, for each chunk, the chunk's rows (a range along axis 0) of the
    first input, of every ``.npy`` path, and of every array with as many dimensions as the
    first and the same leading length ``N``; every other input (scalars, arrays of fewer or
    more dimensions such as a ``(N, k)`` weight next to an ``(N, k, m)`` input) is passed
    whole to every call. The rule depends on shapes only, never on the budget. ``func`` must
    return the chunk's rows of the result, or any number of rows when ``out`` is an
    :class:`~bigarr.Appender`. It runs on several threads at once, so it must not depend on
    call order.

    Parameters
    ----------
    func
        The function of a chunk's blocks.
    *inputs
        Arrays, :class:`bigarr.memmap` objects or ``.npy`` paths; the first fixes ``N``, and
        every path must have ``N`` rows.
    out
        A new file path, an array with ``N`` rows (written in place), or an Appender.
    dtype
        Element type of a new output file (default: the first result's dtype).
    budget
        Memory the run may hold, in bytes or as a string such as ``"256MiB"``: chunk size x
        chunks in flight x (inputs + output + result buffers), plus unflushed output.
    threads
        Worker threads (default: the CPUs available).
    progress
        ``None`` (a bar on a TTY), ``True``, ``False``, or callbacks taking ProgressEvent.
    resume
        Journal durable chunks and, when a journal of the same run exists, skip them. A run is
        "the same" when the chunk boundaries, the output's dtype and order, every mapped
        input's path, size and modification time, and the values of the operands passed whole
        match; in-memory inputs with rows are identified only by shape and dtype, so resuming
        with other in-memory data is the caller's mistake.
        ``func`` must be deterministic for the resumed output to equal an uninterrupted one.
    overwrite
        Replace an existing file at ``out``.
    order
        Memory order of a new output file, ``"C"`` or ``"F"``. Rows of a C-ordered file are
        written with ``pwrite``; a Fortran-ordered output is written through its mapping.
    flush_every
        Wait for output writeback every this many bytes (default: 64 MiB or a quarter of the
        budget, whichever is less).
    prefetch
        Chunks read ahead of the workers.

    Returns
    -------
    bigarr.memmap or numpy.ndarray or Appender
        The output: a new file opened in shared mode, or ``out`` itself.

    Raises
    ------
    BudgetError
        If the budget cannot hold the plan (both numbers quoted), before anything runs.
    FileExistsError_
        If ``out`` is an existing path (or a directory) and ``overwrite`` is not set; an
        unfinished run's output is not at ``out`` yet, so ``resume`` never needs it.
    ReadOnlyError
        If ``out`` is an array that cannot be written (a read-only mapping).
    ShapeError
        If a path input does not have ``N`` rows, a result has the wrong number or shape of
        rows, or ``resume`` cannot apply (in place over an input, or an output that is not a
        file).
    """
    if not inputs:
        raise ArgumentError("map_blocks needs at least one input array.")
    opened: list[Stream] = []
    try:
        first = _input_stream(inputs[0])
        opened.append(first)
        if first.array.ndim == 0:
            raise ShapeError("Expected the first input to have rows (ndim >= 1). Got a 0-d array.")
        n = first.array.shape[0]
        args: list[Any] = [first]
        for obj in inputs[1:]:
            if isinstance(obj, (str, os.PathLike)) or _split_by_rows(obj, first.array):
                stream = _input_stream(obj)
                opened.append(stream)
                if stream.array.ndim == 0 or stream.array.shape[0] != n:
                    raise ShapeError(
                        f"Expected inputs with {n} rows like the first. Got shape "
                        f"{stream.array.shape}."
                    )
                args.append(stream)
            else:
                args.append(obj)  # broadcast: passed whole to every call
        chunked = [a for a in args if isinstance(a, Stream)]
        nthreads = parse_threads(threads)
        dirty = parse_size(flush_every, name="flush_every") if flush_every else _default_flush
        memory = plan_memory(budget, threads=nthreads, prefetch=prefetch,
                             streams=len(chunked) + 3, dirty_bytes=dirty)
        every = memory.dirty_bytes
        target_rows = None
        if isinstance(out, np.ndarray):
            if out.ndim == 0 or out.shape[0] != n:
                raise ShapeError(f"Expected out with {n} rows. Got shape {out.shape}.")
            target_rows = _row_bytes(out)
        primary = max(chunked, key=lambda s: _row_bytes(s.array))
        plan = plan_rows(primary, memory)
        memory.check(max(plan.max_chunk_bytes, _max_chunk(plan, target_rows)))
        job = _Job(func, args, plan, nthreads, prefetch, progress, resume, every)
        try:
            if isinstance(out, Appender):
                return job.to_appender(out)
            if isinstance(out, np.ndarray):
                return job.in_place(out)
            return job.to_new_file(file_path(out), dtype, overwrite, parse_order(order))
        finally:
            job.close()
    finally:
        for stream in opened:
            stream.close()


def _default_flush(budget: int) -> int:
    """The default flush threshold of a budget (bytes): 64 MiB or a quarter, whichever is less."""
    return min(64 << 20, budget // 4)


def _max_chunk(plan: ChunkPlan, row_bytes: int | None) -> int:
    if row_bytes is None:
        return 0
    return max((c.rows.stop - c.rows.start) * row_bytes for c in plan.chunks) if len(plan) else 0


class _Job:
    """One map_blocks run: the plan, the function, and how results reach the output."""

    def __init__(self, func: Callable[..., Any], args: list[Any], plan: ChunkPlan, threads: int,
                 prefetch: int, progress: ProgressArg, resume: bool, every: int) -> None:
        self.func, self.args, self.plan = func, args, plan
        self.threads, self.prefetch, self.progress = threads, prefetch, progress
        self.resume, self.every = resume, every
        self.streams = [a for a in args if isinstance(a, Stream)]
        self.journals: list[Journal] = []

    def journal(self, output: str, fingerprint: dict[str, Any], *, resume: bool) -> Journal:
        """Start a journal, remembered so that :meth:`close` releases it on any exit."""
        journal = Journal.start(output, fingerprint, resume=resume)
        self.journals.append(journal)
        return journal

    def close(self) -> None:
        """Close the journals' files (an interrupted run keeps them on disk)."""
        for journal in self.journals:
            journal.close()

    def call(self, chunk: Chunk, blocks: list[np.ndarray[Any, Any]]) -> Any:
        it = iter(blocks)
        return self.func(*[next(it) if isinstance(a, Stream) else a for a in self.args])

    def empty_result(self) -> np.ndarray[Any, Any]:
        return np.asarray(self.func(*[a.array[:0] if isinstance(a, Stream) else a
                                      for a in self.args]))

    def fingerprint(self, kind: str, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": kind,
            "rows": self.plan.shape[0] if self.plan.shape else 0,
            "chunks": [[c.rows.start, c.rows.stop] for c in self.plan.chunks],
            "inputs": [_identity(s) for s in self.streams],
            "operands": [_operand_identity(a) for a in self.args if not isinstance(a, Stream)],
            **extra,
        }

    def _bar(self, todo: list[Chunk]) -> Progress:
        return Progress(self.progress, total_bytes=sum(c.nbytes for c in todo),
                        total_chunks=len(todo), desc="map_blocks")

    def _write_all(self, out: Stream, writeback: Writeback, skip: set[int], bar: Progress,
                   row_shape: tuple[int, ...] | None) -> None:
        streams = [*self.streams, out]

        def work(chunk: Chunk, blocks: list[np.ndarray[Any, Any]]) -> None:
            res = _check_rows(self.call(chunk, blocks[:-1]), chunk, row_shape)
            writeback.write(chunk.index, out, blocks[-1], res)

        for _ in _engine.run(self.plan, work, streams=streams, threads=self.threads,
                             prefetch=self.prefetch, progress=bar, writeback=writeback,
                             skip=skip):
            pass
        writeback.drain()

    # ---- outputs ---------------------------------------------------------------------------
    def to_new_file(self, target: str, dtype: Any, overwrite: bool, order: str) -> memmap:
        if os.path.isdir(target):
            raise FileExistsError_(f"{target} is a directory; map_blocks needs a file path.")
        if os.path.lexists(target) and not overwrite:
            raise FileExistsError_(
                f"{target} exists; pass overwrite=True to replace it (or remove it)."
            )
        partial = partial_path(target)
        fp = self.fingerprint("file", {"dtype": None if dtype is None else np.dtype(dtype).str,
                                       "order": order})
        journal: Journal | None = None
        outarr: memmap | None = None
        skip: set[int] = set()
        if self.resume and os.path.exists(partial):
            journal = self.journal(target, fp, resume=True)
            if journal.done:
                outarr = open_npy(partial, "shared")
                if outarr.shape[:1] != self.plan.shape[:1]:
                    outarr.close()
                    outarr = None
                else:
                    skip = set(journal.done)
        todo = [c for c in self.plan.chunks if c.index not in skip]
        with self._bar(todo) as bar:
            first: tuple[Chunk, np.ndarray[Any, Any]] | None = None
            if outarr is None:
                if self.resume:
                    journal = self.journal(target, fp, resume=False)
                elif os.path.exists(journal_path(target)):
                    os.unlink(journal_path(target))  # a stale journal of an abandoned run
                if len(self.plan):
                    chunk = self.plan.chunks[0]
                    blocks = [s.array[chunk.rows] for s in self.streams]
                    first = (chunk, _check_rows(self.call(chunk, blocks), chunk, None))
                    sample = first[1]
                else:
                    sample = self.empty_result()
                if sample.ndim == 0:
                    raise ShapeError("Expected func to return rows. Got a scalar.")
                shape = (self.plan.shape[0] if self.plan.shape else 0, *sample.shape[1:])
                outarr = create(partial, shape, dtype if dtype is not None else sample.dtype,
                                order=order, overwrite=True)
            out = as_stream(outarr, output=True, by_key=False)
            writeback = Writeback(self.every, durable=self.resume,
                                  on_durable=None if journal is None else journal.record)
            row_shape = outarr.shape[1:]
            if first is not None:
                chunk, res = first
                writeback.write(chunk.index, out, out.block(chunk), res)
                writeback.chunk_done(chunk.index)
                bar.advance(chunk.index, chunk.nbytes)
                skip.add(chunk.index)
            self._write_all(out, writeback, skip, bar, row_shape)
        if journal is not None:
            journal.complete()
        outarr.close(force=True)  # the only other views are the engine's own blocks
        os.replace(partial, target)
        fsync_dir(target)
        if journal is not None:
            journal.remove()
        return open_npy(target, "shared")

    def in_place(self, array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        out = as_stream(array, output=True, by_key=False)
        if not out.array.flags.writeable or (out.mapping is not None
                                             and out.mapping.access == "readonly"):
            raise ReadOnlyError(
                "Expected a writable out array. Got a read-only one; open the file with mode "
                "'shared' (r+) to write into it."
            )
        journal = None
        skip: set[int] = set()
        if out.mapping is not None and self.resume and any(
                s.mapping is not None and os.path.samefile(s.mapping.path, out.mapping.path)
                for s in self.streams):
            raise ShapeError(
                f"resume=True cannot apply to {out.mapping.path} in place while it is also an "
                "input: a chunk written but not yet journaled would be transformed twice on "
                "resume. Write to a new file (out='new.npy') to make the run resumable."
            )
        if out.mapping is not None:
            fp = self.fingerprint("in-place", {"out": [out.mapping.path, list(array.shape),
                                                       array.dtype.str]})
            journal = self.journal(out.mapping.path, fp, resume=self.resume)
            skip = set(journal.done)
        elif self.resume:
            raise ShapeError("resume=True needs an output file: pass a path or a bigarr.memmap.")
        writeback = Writeback(self.every, durable=self.resume and journal is not None,
                              on_durable=journal.record if journal and self.resume else None)
        todo = [c for c in self.plan.chunks if c.index not in skip]
        with self._bar(todo) as bar:
            self._write_all(out, writeback, skip, bar, array.shape[1:])
        if isinstance(array, np.memmap) and not isinstance(array, memmap):
            array.flush()
        if journal is not None:
            journal.complete()
            journal.remove()
        return array

    def to_appender(self, app: Appender) -> Appender:
        path = app.path
        old = read_journal(journal_path(path)) if self.resume else None
        base = app.committed
        if old is not None and isinstance(old[0], dict) and "base" in old[0]:
            base = int(old[0]["base"])
        fp = self.fingerprint("append", {"base": base, "dtype": app.dtype.str,
                                         "row_shape": list(app.row_shape)})
        journal = self.journal(path, fp, resume=self.resume)
        done = 0  # chunks 0..done-1 are committed (appends commit in chunk order)
        while done in journal.done:
            done += 1
        rows = base if done == 0 else journal.done[done - 1]
        app.truncate(rows if rows is not None else base)
        todo = [c for c in self.plan.chunks if c.index >= done]
        since: list[int] = []
        with self._bar(todo) as bar:
            for chunk, res in _engine.run(self.plan, self.call, streams=self.streams,
                                          threads=self.threads, prefetch=self.prefetch,
                                          progress=bar, skip=range(done)):
                app.append(res)
                since.append(chunk.index)
                if (len(app) - app.committed) * max(1, _row_bytes_of(app)) >= self.every:
                    committed = app.commit()
                    if self.resume:
                        journal.record(since, committed)
                    since = []
            committed = app.commit()
            if self.resume:
                journal.record(since, committed)
        journal.complete()
        journal.remove()
        return app


def _row_bytes_of(app: Appender) -> int:
    return int(np.prod(app.row_shape, dtype=np.int64)) * app.dtype.itemsize
