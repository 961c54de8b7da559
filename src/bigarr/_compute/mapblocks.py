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

One writer per output: a run holds the output's lock (:class:`bigarr._os.lock.OutputLock`)
while it writes, and a second run of the same output (another process, or another thread) raises
:class:`~bigarr.errors.OutputLockedError` instead of sharing its partial file. A journal is
trusted only for the very file it names (by identity) and the very run (inputs, chunks, output
view and function); any other journal is reported with a
:class:`~bigarr.errors.StaleJournalWarning` when ``resume=True`` and replaced, except that a
journal of an unfinished in-place write of *another* region of the same file refuses the run
(replacing it would hide that region's unfinished state).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import warnings
from collections.abc import Callable
from typing import Any, TypeVar, overload

import numpy as np

from bigarr._compute import placed
from bigarr._compute.engine import Writeback, execute
from bigarr._compute.operands import Stream, parse_operand
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import (
    DEFAULT_PREFETCH,
    RunPlan,
    block_info,
    parse_prefetch,
    parse_threads,
    plan_run,
    precheck,
    probe_temporaries,
    wants_block_info,
)
from bigarr._compute.token import function_token
from bigarr._core.append import Appender
from bigarr._core.array import memmap
from bigarr._core.files import NewOutput, file_path, parse_order, remove_partial
from bigarr._core.files import open as open_npy
from bigarr._formats.journal import (
    Journal,
    Parsed,
    canonical,
    input_identity,
    journal_path,
    read_journal,
    target_id,
    user_stacklevel,
)
from bigarr._os.durable import flush_window
from bigarr._os.fileid import file_id
from bigarr._os.geometry import ByteSpan, parse_size
from bigarr._os.lock import OutputLock
from bigarr._os.mapping import check_mapped
from bigarr._plan.budget import DEFAULT_BUDGET
from bigarr._plan.chunks import Chunk, ChunkPlan
from bigarr.errors import (
    ArgumentError,
    FileChangedError,
    IncompleteOutputError,
    ReadOnlyError,
    ShapeError,
    StaleJournalWarning,
)

__all__ = ["map_blocks"]

_DEFAULT_BUDGET = DEFAULT_BUDGET
_Out = TypeVar("_Out", bound="np.ndarray[Any, Any]")


def _identity(stream: Stream) -> list[Any]:
    if stream.mapping is not None:
        return [*input_identity(stream.mapping.path, stream.mapping.fd), stream.plan_offset()]
    return [stream.kind, list(stream.shape), stream.dtype.str]


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


def _split_by_rows(obj: Any, first: Stream) -> bool:
    """The operand rule for arrays: an array is cut into the chunk's rows when it has as many
    dimensions as the first input and the same first length; anything else is passed whole.
    (Paths are always cut into rows: a file is data, never a broadcast operand.)

    The rule looks at shapes only, never at the plan, so a result never depends on the budget:
    a (128, 64) weight next to a (128, 128, 64) input broadcasts even though 128 rows match.
    """
    shape = getattr(obj, "shape", None)
    return (shape is not None and not isinstance(obj, np.generic) and len(shape) == first.ndim
            and len(shape) >= 1 and shape[0] == first.shape[0])


def _row_bytes(arr: Any) -> int:
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


@overload
def map_blocks(func: Callable[..., Any], *inputs: Any, out: str | os.PathLike[str],
               dtype: Any = ..., budget: int | str = ..., threads: int | None = ...,
               progress: ProgressArg = ..., resume: bool = ..., overwrite: bool = ...,
               order: str = ..., flush_every: int | str | None = ..., prefetch: int = ...,
               token: str | None = ...) -> memmap: ...
@overload
def map_blocks(func: Callable[..., Any], *inputs: Any, out: Appender, dtype: Any = ...,
               budget: int | str = ..., threads: int | None = ..., progress: ProgressArg = ...,
               resume: bool = ..., overwrite: bool = ..., order: str = ...,
               flush_every: int | str | None = ..., prefetch: int = ...,
               token: str | None = ...) -> Appender: ...
@overload
def map_blocks(func: Callable[..., Any], *inputs: Any, out: _Out, dtype: Any = ...,
               budget: int | str = ..., threads: int | None = ..., progress: ProgressArg = ...,
               resume: bool = ..., overwrite: bool = ..., order: str = ...,
               flush_every: int | str | None = ..., prefetch: int = ...,
               token: str | None = ...) -> _Out: ...
def map_blocks(
    func: Callable[..., Any],
    *inputs: Any,
    out: str | os.PathLike[str] | Appender | np.ndarray[Any, Any],
    dtype: Any = None,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
    resume: bool = False,
    overwrite: bool = False,
    order: str = "C",
    flush_every: int | str | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    token: str | None = None,
) -> memmap | Appender | np.ndarray[Any, Any]:
    """Apply ``func`` to chunks of rows of ``inputs`` and write the results to ``out``.

    ``func(*blocks)`` receives, for each chunk, the chunk's rows (a range along axis 0) of the
    first input, of every ``.npy`` path, and of every array with as many dimensions as the
    first and the same leading length ``N``; every other input (scalars, arrays of fewer or
    more dimensions such as a ``(N, k)`` weight next to an ``(N, k, m)`` input) is passed
    whole to every call. The rule depends on shapes only, never on the budget. ``func`` must
    return the chunk's rows of the result, or any number of rows when ``out`` is an
    :class:`~bigarr.Appender`. It runs on several threads at once, so it must not depend on
    call order, and it must not change an array after returning it: into a new file, results
    are written to the disk from their own memory after ``func`` returns, with no copy (its
    large arrays are allocated page-aligned for that, see ``bench/README.md``).

    If ``func`` has a ``block_info`` parameter it is also passed, as a keyword, where its block
    lies (as in dask): a dict with ``"chunk"`` (the chunk's index), ``"rows"`` (the global
    ``(start, stop)`` of its rows, so a filter can write global indices) and
    ``"array-location"`` (``(start, stop)`` along every axis of the first input), and
    ``"probe"``: True only for the one call on a probe block before the run (below), whose
    result is discarded, so a function with side effects can skip them there.

    The budget counts what ``func`` allocates: before the run it is called once on a small
    probe block (the first rows, about 1 MiB) under :mod:`tracemalloc`, and the chunks are sized
    so that its temporaries and result fit next to the chunks in flight.

    Parameters
    ----------
    func
        The function of a chunk's blocks.
    *inputs
        Arrays, :class:`bigarr.memmap` objects, ``.npy`` paths, numpy memmaps, zarr or dask
        arrays (see :func:`bigarr.sum`); the first fixes ``N``, and every path must have ``N``
        rows.
    out
        A new file path, an array with ``N`` rows (written in place), or an Appender.
    dtype
        Element type of a new output file (default: the first result's dtype).
    budget
        The most memory the run may add, in bytes or as a string such as ``"256MiB"``: chunks
        in flight of every input and the output, ``func``'s measured temporaries and results,
        and unflushed output.
    threads
        Worker threads (default: the CPUs available).
    progress
        ``None`` (a bar on a TTY), ``True``, ``False``, or callbacks taking ProgressEvent.
    resume
        Journal durable chunks and, when a journal of the same run exists, skip them. A run is
        "the same" when the chunk boundaries, the output's dtype and order, every mapped
        input's path, size, modification time and identity (device, inode, birth time), the
        values of the operands passed whole, the function (its code, defaults, closure and the
        globals it reads; see ``token``), and the output file (its identity, not its name) and
        the region of it written match; in-memory inputs with rows are identified only by
        shape and dtype, so resuming with other in-memory data is the caller's mistake. A
        journal of another run is not used: it is reported with a ``StaleJournalWarning`` and
        the run starts over.
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
        Chunks read ahead of the workers (0 for none).
    token
        A string naming the version of ``func`` for ``resume``, used instead of the digest of
        its code: pass it when ``func`` depends on something its code does not show (a file it
        reads, a large array it closes over), and change it whenever that changes.

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
        unfinished run's output is not at ``out`` yet, so ``resume`` never needs it. Also if
        something other than bigarr's lock file (a symbolic link) is at the lock name.
    OutputLockedError
        If another run (process or thread) is writing the same output; runs never wait.
    IncompleteOutputError
        If ``out`` is written in place and holds the journal of another run's unfinished write
        of a different region (or a journal that cannot be verified): finish that run with
        ``resume=True``, or delete the journal.
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
    held = contextlib.ExitStack()  # the output's lock, once taken
    try:
        first = parse_operand(inputs[0], by_key=False)
        opened.append(first)
        if first.ndim == 0:
            raise ShapeError("Expected the first input to have rows (ndim >= 1). Got a 0-d array.")
        n = first.shape[0]
        args: list[Any] = [first]
        for obj in inputs[1:]:
            if isinstance(obj, (str, os.PathLike, Stream)) or _split_by_rows(obj, first):
                stream = parse_operand(obj, by_key=False)
                opened.append(stream)
                if stream.ndim == 0 or stream.shape[0] != n:
                    raise ShapeError(
                        f"Expected inputs with {n} rows like the first. Got shape "
                        f"{stream.shape}."
                    )
                args.append(stream)
            else:
                args.append(obj)  # broadcast: passed whole to every call
        chunked = [a for a in args if isinstance(a, Stream)]
        nthreads = parse_threads(threads)
        ahead = parse_prefetch(prefetch)
        dirty = parse_size(flush_every, name="flush_every") if flush_every else _default_flush
        target_rows = None
        if isinstance(out, np.ndarray):
            if out.ndim == 0 or out.shape[0] != n:
                raise ShapeError(f"Expected out with {n} rows. Got shape {out.shape}.")
            target_rows = _row_bytes(out)
        info = wants_block_info(func)
        primary = max(chunked, key=lambda s: s.row_bytes)
        options: dict[str, Any] = {"budget": budget, "threads": nthreads, "prefetch": ahead,
                                   "primary": primary, "flush_every": dirty,
                                   "durable": resume, "extra_streams": 1}
        precheck("map_blocks", chunked, **options)  # refuse an impossible budget before func runs
        # One writer per output from before func first runs (the probe below): a second run of
        # the same output is refused before it computes anything. (An Appender holds its own.)
        if not isinstance(out, (Appender, np.ndarray)):
            held.enter_context(OutputLock(file_path(out)))
        elif isinstance(out, np.memmap) and isinstance(out.filename, (str, os.PathLike)):
            mapping = getattr(out, "_bigarr", None)  # in place: the file itself is locked
            held.enter_context(OutputLock(os.fspath(out.filename), in_place=True,
                                          fd=None if mapping is None else mapping.fd))
        per_byte, per_call = probe_temporaries(_Job.caller(func, args, info, first.shape),
                                               chunked, args)
        plan = plan_run("map_blocks", chunked, temporaries=per_byte, scratch_bytes=per_call,
                        **options)
        plan.memory.check(_max_chunk(plan.chunks, target_rows))
        if token is not None and not isinstance(token, str):
            raise ArgumentError(f"Expected token as a str. Got {type(token).__name__}.")
        if token is None:  # only a resumed run reads the function's identity back
            token = function_token(func) if resume else "not resumable"
        job = _Job(func, args, plan, progress, resume, info, token)
        try:
            if isinstance(out, Appender):
                return job.to_appender(out)
            if isinstance(out, np.ndarray):
                return job.in_place(out)
            return job.to_new_file(file_path(out), dtype, overwrite, parse_order(order))
        finally:
            job.close()
    finally:
        held.close()
        for stream in opened:
            stream.close()


def _default_flush(budget: int) -> int:
    """The default flush threshold of a budget (bytes): the flush policy's window."""
    return flush_window(budget)


def _max_chunk(plan: ChunkPlan, row_bytes: int | None) -> int:
    if row_bytes is None:
        return 0
    return max((c.rows.stop - c.rows.start) * row_bytes for c in plan.chunks) if len(plan) else 0


class _Job:
    """One map_blocks run: the plan, the function, and how results reach the output."""

    def __init__(self, func: Callable[..., Any], args: list[Any], run: RunPlan,
                 progress: ProgressArg, resume: bool, info: bool, token: str) -> None:
        self.func, self.args, self.run = func, args, run
        self.plan: ChunkPlan = run.chunks
        self.progress, self.resume, self.every = progress, resume, run.flush_every
        self.info, self.token = info, token
        self.streams = [a for a in args if isinstance(a, Stream)]
        self.journals: list[Journal] = []
        self.output: memmap | None = None
        """A new output file while it is being written (closed at once if the run fails)."""

    @staticmethod
    def caller(func: Callable[..., Any], args: list[Any], info: bool,
               shape: tuple[int, ...]) -> Callable[..., Any]:
        """``func`` of the chunked blocks (in stream order) with the broadcast operands and, if
        it wants it, the ``block_info`` of leading rows (for the probe)."""
        def call(*blocks: Any) -> Any:
            it = iter(blocks)
            full = [next(it) if isinstance(a, Stream) else a for a in args]
            if not info:
                return func(*full)
            rows = int(np.shape(blocks[0])[0]) if blocks else 0
            probe = Chunk(0, (slice(0, rows), *(slice(0, k) for k in shape[1:])),
                          slice(0, rows), ByteSpan(0, 0))
            return func(*full, block_info=block_info(probe, shape, probe=True))

        return call

    def journal(self, output: str, header: dict[str, Any],
                done: dict[int, int | None] | None = None, *, durable: bool = True) -> Journal:
        """Write a new journal, remembered so that :meth:`close` releases it on any exit."""
        journal = Journal.create(output, header, done, durable=durable)
        self.journals.append(journal)
        return journal

    def stale(self, path: str, why: str, action: str, old: Parsed | None = None) -> None:
        """Report a journal that is not trusted, when resuming and it recorded work (``old``,
        if given, has chunks done): otherwise there was nothing to resume."""
        if self.resume and (old is None or old.done):
            warnings.warn(f"Not resuming from {journal_path(path)}: {why}. {action}",
                          StaleJournalWarning, stacklevel=user_stacklevel())

    def close(self) -> None:
        """Close the journals' files (an interrupted run keeps them on disk)."""
        for journal in self.journals:
            journal.close()

    def call(self, chunk: Chunk, blocks: list[np.ndarray[Any, Any]]) -> Any:
        it = iter(blocks)
        full = [next(it) if isinstance(a, Stream) else a for a in self.args]
        if self.info:
            return self.func(*full, block_info=block_info(chunk, self.streams[0].shape))
        return self.func(*full)

    def empty_result(self) -> np.ndarray[Any, Any]:
        blocks = [a.head(0) for a in self.streams]
        empty = Chunk(0, tuple(slice(0, 0) for _ in self.streams[0].shape), slice(0, 0),
                      ByteSpan(0, 0))
        return np.asarray(self.call(empty, blocks))

    def fingerprint(self, kind: str, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "kind": kind,
            "rows": self.plan.shape[0] if self.plan.shape else 0,
            "chunks": [[c.rows.start, c.rows.stop] for c in self.plan.chunks],
            "inputs": [_identity(s) for s in self.streams],
            "operands": [_operand_identity(a) for a in self.args if not isinstance(a, Stream)],
            "function": self.token,
            **extra,
        }

    def _bar(self, todo: list[Chunk]) -> Progress:
        return Progress(self.progress, total_bytes=sum(c.nbytes for c in todo),
                        total_chunks=len(todo), desc="map_blocks")

    def _write_all(self, out: Stream, writeback: Writeback, skip: set[int], bar: Progress,
                   row_shape: tuple[int, ...] | None) -> None:
        streams = [*self.streams, out]

        # A new file's results are placed where its O_DIRECT writes can take them without a
        # copy (bigarr._compute.placed), and lent to the sink: func's results are not changed
        # after it returns them.
        lend = writeback.direct
        placing = lend and placed.available()

        def work(chunk: Chunk, blocks: list[np.ndarray[Any, Any]]) -> None:
            skew = out.file_offset(blocks[-1]) if placing else None
            with placed.results(skew):
                res = self.call(chunk, blocks[:-1])
            res = _check_rows(res, chunk, row_shape)
            # lent only if func kept no reference (it may fill a kept array again)
            mine = lend and placed.unshared(res)
            writeback.write(chunk.index, out, blocks[-1], res, lend=mine)
            del res

        if placing:
            # Results live until written: one per worker being computed, and up to the flush
            # window's worth waiting for the disk (both counted by the plan). Freed ones are
            # kept for the next results, so no result faults in and zeroes fresh pages.
            biggest = _max_chunk(self.plan, out.row_bytes)
            placed.keep(self.run.threads + 1 + self.every // max(1, biggest))
        try:
            for _ in execute(self.run, work, streams, progress=bar, writeback=writeback,
                             skip=skip):
                pass
            if placing:  # unmapped while the disk finishes the last writes, not after
                placed.trim()  # (about 60 ms for a 256 MiB budget's kept mappings)
            writeback.drain()
        finally:
            if placing:
                placed.trim()

    # ---- outputs ---------------------------------------------------------------------------
    def to_new_file(self, target: str, dtype: Any, overwrite: bool, order: str) -> memmap:
        """Write the run into a new file at ``target`` (the caller holds its OutputLock)."""
        with NewOutput(target, overwrite=overwrite, locked=True) as output:
            self._fill_new_file(output, dtype, order)
        return open_npy(target, "shared")

    def _adopt_partial(self, target: str, old: Parsed | None,
                       run: dict[str, Any]) -> tuple[memmap | None, str | None]:
        """The partial file of an interrupted run of this output, if it may be resumed.

        Returns ``(opened partial or None, path of a partial to delete or None)``. The partial
        is found only through the journal, and used only if the journal describes this run and
        the file at its name is the one the journal names (its identity).
        """
        if old is None:
            if os.path.lexists(journal_path(target)):
                self.stale(target, "it is not a journal bigarr can read (malformed, or not a "
                           "regular file)", "It is replaced and the run starts over.")
            return None, None
        partial = _partial_named(target, old)
        if old.version != 2 or old.header.get("kind") != "file" or partial is None:
            self.stale(target, "it was written for another kind of output or by an older "
                       "bigarr", "It is replaced and the run starts over.", old)
            return None, None
        named = target_id(old)
        if old.header.get("run") != canonical(run):
            self.stale(target, "it records another run (other inputs, chunks, dtype or "
                       "function)", "Its partial file is deleted and the run starts over.", old)
            return None, partial
        if not self.resume or not old.done or named is None:
            return None, partial
        if not _regular(partial):  # missing, or a link planted at the name: never opened
            self.stale(target, f"its partial file {partial} is missing or not a regular file",
                       "The run starts over.")
            return None, None
        try:
            outarr = open_npy(partial, "shared")
        except (OSError, ValueError):
            self.stale(target, f"its partial file {partial} is missing or unreadable",
                       "The run starts over.")
            return None, None
        mapping = outarr._bigarr
        if mapping is None or file_id(mapping.fd) != named:
            outarr.close()
            self.stale(target, f"{partial} is not the file the journal names (it was "
                       "replaced)", "It is left alone and the run starts over.")
            return None, None
        if outarr.shape[:1] != self.plan.shape[:1]:
            outarr.close()
            return None, partial
        return outarr, None

    def _fill_new_file(self, output: NewOutput, dtype: Any, order: str) -> None:
        """Write the run into the file ``output`` builds: a new partial file, or the partial
        of an interrupted run of the same call that the journal names (``resume``)."""
        target = output.target
        run = self.fingerprint("file", {"dtype": None if dtype is None else np.dtype(dtype).str,
                                        "order": order})
        old = read_journal(journal_path(target))
        outarr, doomed = self._adopt_partial(target, old, run)
        journal: Journal | None = None
        writeback: Writeback | None = None
        skip: set[int] = set()
        # What killed runs of this output left (partials no journal names any more, a copied
        # partial that is not the file its journal names, temporaries) is swept when the
        # name is chosen: this run holds the output's lock, so none of them is a live writer's.
        if outarr is not None:
            assert old is not None
            output.build("partial", sweep=("new", "partial"), keep=True,
                         adopt=os.path.join(os.path.dirname(target),
                                            old.header["target"]["partial"]))
            output.identity = target_id(old)  # checked by _adopt_partial
            journal = self.journal(target, old.header, old.done)
            skip = set(journal.done)
        else:
            if doomed is not None:
                remove_partial(doomed, None if old is None else target_id(old))
            partial = output.build("partial", sweep=("new", "partial"), keep=self.resume)
            header: dict[str, Any] = {"kind": "file", "run": run, "target": {
                "partial": os.path.basename(partial), "id": None}}
            # The journal names the partial before it exists, so a crash at any point leaves
            # nothing the next run of this output cannot find and delete. Without resume it
            # only has to outlive the process, not the machine: it is not synced.
            journal = self.journal(target, header, durable=self.resume)
        try:
            todo = [c for c in self.plan.chunks if c.index not in skip]
            with self._bar(todo) as bar:
                first: tuple[Chunk, np.ndarray[Any, Any], bool] | None = None
                placing = placed.available()
                if outarr is None:
                    if len(self.plan):
                        chunk = self.plan.chunks[0]
                        check_mapped(*(s.mapping for s in self.streams))  # not a SIGBUS
                        blocks = [s.block(chunk) for s in self.streams]
                        # Placed as its block will be: the first chunk's output starts on a
                        # page of the new file (create's alignment), so it is written as it is,
                        # with no copy into placed memory before the first write can start.
                        with placed.results(0 if placing else None):
                            res = _check_rows(self.call(chunk, blocks), chunk, None)
                        mine = placing and placed.unshared(res)  # (before any other ref)
                        first = (chunk, res, mine)
                        sample = res
                        del res
                    else:
                        sample = self.empty_result()
                    if sample.ndim == 0:
                        raise ShapeError("Expected func to return rows. Got a scalar.")
                    shape = (self.plan.shape[0] if self.plan.shape else 0, *sample.shape[1:])
                    # created in place: the journal names it already, so nothing is left
                    # that the next run of this output cannot find (no nested temporary)
                    outarr = output.create(shape, dtype if dtype is not None else sample.dtype,
                                           order=order)
                    assert output.identity is not None
                    header["target"]["id"] = output.identity.to_json()
                    journal.close()
                    journal = self.journal(target, header, durable=self.resume)
                out = parse_operand(outarr, output=True, by_key=False)
                # a new file nothing else maps: outputs go to the disk with O_DIRECT
                writeback = Writeback(self.every, durable=self.resume, direct=True,
                                      on_durable=journal.record if self.resume else None)
                row_shape = outarr.shape[1:]
                if first is not None:
                    chunk, res, mine = first
                    del first, sample
                    block = out.block(chunk)
                    if placing and not (mine and res.dtype == block.dtype
                                        and res.flags.c_contiguous and placed.owns(res)):
                        # (kept by func, cast, or not placed: one copy, placed for the sink)
                        with placed.results(out.file_offset(block)):
                            res = np.array(res, dtype=block.dtype, order="C")
                    writeback.write(chunk.index, out, block, res, lend=True)
                    del res, block
                    writeback.chunk_done(chunk.index)
                    bar.advance(chunk.index, chunk.nbytes)
                    skip.add(chunk.index)
                self._write_all(out, writeback, skip, bar, row_shape)
            journal.complete()
            outarr.close(force=True)  # the only other views are the engine's own blocks
            output.publish()
        except BaseException:
            if writeback is not None:
                writeback.close()  # its writer threads finish before the file goes
            if outarr is not None:
                outarr.close(force=True)
            if not self.resume:  # nothing can resume it: NewOutput removes the partial file
                journal.remove()
            raise
        journal.remove()

    def in_place(self, array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        out = parse_operand(array, output=True, by_key=False)
        assert out.array is not None
        if not out.array.flags.writeable or (out.mapping is not None
                                             and out.mapping.access == "readonly"):
            raise ReadOnlyError(
                "Expected a writable out array. Got a read-only one; open the file with mode "
                "'shared' (r+) to write into it."
            )
        if out.mapping is not None and self.resume and any(
                s.mapping is not None and os.path.samefile(s.mapping.path, out.mapping.path)
                for s in self.streams):
            raise ShapeError(
                f"resume=True cannot apply to {out.mapping.path} in place while it is also an "
                "input: a chunk written but not yet journaled would be transformed twice on "
                "resume. Write to a new file (out='new.npy') to make the run resumable."
            )
        if out.mapping is None:
            if self.resume:
                raise ShapeError(
                    "resume=True needs an output file: pass a path or a bigarr.memmap.")
            return self._in_place(array, out, None)
        return self._in_place(array, out, out.mapping.path)  # map_blocks holds its lock

    def _in_place_journal(self, path: str, out: Stream,
                          array: np.ndarray[Any, Any]) -> Journal:
        """The journal of an in-place run: the old one's records only if it is this run's."""
        assert out.mapping is not None
        me = file_id(out.mapping.fd)
        view = [out.plan_offset(), list(array.shape), list(array.strides), array.dtype.str]
        run = self.fingerprint("in-place", {})
        header = {"kind": "in-place", "run": run,
                  "target": {"id": me.to_json(), "view": view}}
        old = read_journal(journal_path(path))
        done: dict[int, int | None] = {}
        if old is None and not _regular(journal_path(path)):
            if os.path.lexists(journal_path(path)):
                self.stale(path, "a link or special file is at its name, not a journal bigarr "
                           "wrote", "It is replaced (the link itself; nothing it names).")
        elif old is None:
            raise IncompleteOutputError(
                f"{journal_path(path)} is not a journal bigarr can read (malformed, or a file "
                f"with other hard links), so whether {path} holds an unfinished write cannot be "
                "told. Delete it if the file is known to be complete, then run again."
            )
        elif old.version != 2:
            raise IncompleteOutputError(
                f"{journal_path(path)} was written by an older bigarr and names no file "
                f"identity: {path} may hold an unfinished write. Delete the journal if the file "
                "is known to be complete, then run again."
            )
        elif target_id(old) != me:
            self.stale(path, "it names another file that had this name", "It is replaced.", old)
        elif old.header.get("kind") != "in-place" or old.header["target"].get("view") != view:
            if not old.complete:
                raise IncompleteOutputError(
                    f"{path} holds an unfinished write by another run ({old.header.get('kind')} "
                    f"of another region; journal {journal_path(path)}). Finish that run with "
                    "resume=True, or delete the journal to accept the file as it is; this run "
                    "would otherwise hide that region's unfinished state."
                )
        elif old.header.get("run") != canonical(run):
            self.stale(path, "it records another run of this region (other inputs, chunks or "
                       "function)", "It is replaced and every chunk is written again.", old)
        elif self.resume:
            done = old.done
        return self.journal(path, header, done)

    def _in_place(self, array: np.ndarray[Any, Any], out: Stream,
                  path: str | None) -> np.ndarray[Any, Any]:
        journal = None
        skip: set[int] = set()
        if path is not None:
            journal = self._in_place_journal(path, out, array)
            skip = set(journal.done)
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
        me = file_id(app.fileno())
        run = self.fingerprint("append", {"dtype": app.dtype.str,
                                          "row_shape": list(app.row_shape)})
        old = read_journal(journal_path(path))
        base = app.committed
        done = 0  # chunks 0..done-1 are committed (appends commit in chunk order)
        kept: dict[int, int | None] = {}
        if old is not None and self.resume:
            named = old.header.get("target") if old.version == 2 else None
            old_base = named.get("base") if isinstance(named, dict) else None
            if (old.version != 2 or target_id(old) != me or old.header.get("kind") != "append"
                    or not isinstance(old_base, int) or isinstance(old_base, bool)):
                self.stale(path, "it names another file, another kind of output, or is from an "
                           "older bigarr", f"It is replaced; the run appends after the "
                           f"{app.committed} rows {path} holds.", old)
            elif old.header.get("run") != canonical(run):
                self.stale(path, "it records another run (other inputs, chunks or function)",
                           f"It is replaced; the run appends after the {app.committed} rows "
                           f"{path} holds, keeping the interrupted run's rows.", old)
            else:
                while done in old.done:
                    done += 1
                kept = {i: old.done[i] for i in range(done)}
                rows = old_base if done == 0 else kept[done - 1]
                rows = old_base if rows is None else rows
                ceiling = max([old_base, *old.grows, *(r for r in kept.values() if r)])
                if not rows <= app.committed <= ceiling:
                    raise FileChangedError(
                        5, f"{path} holds {app.committed} rows, but the interrupted run's "
                        f"journal accounts for {rows} to {ceiling}: rows were added or removed "
                        "by something else since. Nothing was changed. Delete "
                        f"{journal_path(path)} to append after the current rows instead."
                    )
                base = old_base
                app.truncate(rows)
        header = {"kind": "append", "run": run, "target": {"id": me.to_json(), "base": base}}
        journal = self.journal(path, header, kept)
        todo = [c for c in self.plan.chunks if c.index >= done]
        since: list[int] = []
        with self._bar(todo) as bar:
            for chunk, res in execute(self.run, self.call, self.streams, progress=bar,
                                      skip=range(done)):
                if self.resume:  # an append may commit by itself: announce how far first
                    journal.intend(len(app) + int(np.shape(res)[0] if np.ndim(res) else 1))
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


def _regular(path: str) -> bool:
    """True if ``path`` itself (not a link's target) is a regular file."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


_PARTIAL = re.compile(r"\.(?P<name>.+)\.bigarr-partial-[0-9a-f]{16}")


def _partial_named(target: str, old: Parsed) -> str | None:
    """The partial file a version-2 journal names, if the name is one bigarr makes for
    ``target`` (in its folder, with a random suffix); None for anything else."""
    if old.version != 2 or not isinstance(old.header.get("target"), dict):
        return None
    name = old.header["target"].get("partial")
    if not isinstance(name, str):
        return None
    m = _PARTIAL.fullmatch(name)
    if m is None or m.group("name") != os.path.basename(target):
        return None
    return os.path.join(os.path.dirname(target), name)


def _row_bytes_of(app: Appender) -> int:
    return int(np.prod(app.row_shape, dtype=np.int64)) * app.dtype.itemsize
