"""Execution: run a function over the chunks of a plan on threads, within a memory plan.

The engine is what :func:`bigarr.map_blocks` and the reductions share. For each chunk of a
:class:`~bigarr._plan.chunks.ChunkPlan` it hands the chunk's blocks of every stream (input
and output arrays) to a worker function on a thread pool (numpy releases the GIL in its
loops), and around that work it manages memory and I/O:

* **Chunks in flight.** At most ``threads + prefetch`` chunks are submitted at once; results are
  yielded in chunk order, so combining partial results is deterministic whatever the thread
  timing.
* **Prefetch ahead.** Before a chunk is submitted, the dispatcher advises ``WILLNEED`` on its input
  pages (asynchronous readahead), so the disk works on chunk *i + k* while threads compute on
  chunk *i*, and then ``POPULATE_READ`` (Linux 5.14+; a no-op elsewhere) to map those pages
  into the page tables from the dispatcher thread, so workers do not stop on page faults.
* **Release behind.** When a chunk is done, its input pages are dropped from this process's
  resident set with ``MADV_DONTNEED`` (read-only and shared mappings only: on a private mapping
  that would throw away copy-on-write edits, so it is never done there). Clean file pages stay
  in the page cache; only the mapping lets go of them.
* **Flush policy.** :class:`Writeback` writes output blocks with ``pwrite`` into the output
  file's page cache (no mapping, no page faults), starts their writeback at once
  (``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on Linux), and once ``flush_every`` bytes are
  pending it waits for the oldest of them to reach the disk. Dirty output memory therefore stays
  near ``flush_every`` however long the run, and writeback overlaps compute. Outputs that are not
  contiguous in their file (or private mappings, or in-memory arrays) are assigned through
  numpy instead; shared mappings among them are flushed with ``msync`` and *then* released.
  When a run is journaled (``resume=True``), the flush also ``fdatasync``'s the file and only
  then records the flushed chunks as done.
"""

from __future__ import annotations

import builtins
import contextlib
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from bigarr._compute.progress import Progress
from bigarr._core.array import memmap
from bigarr._os.durable import datasync, pwrite_all, start_writeback, wait_writeback
from bigarr._os.geometry import ByteSpan
from bigarr._os.hints import parse_hint
from bigarr._os.mapping import Mapping, check_mapped
from bigarr._plan.budget import MemoryPlan
from bigarr._plan.chunks import Chunk, ChunkPlan, plan_chunks
from bigarr._plan.regions import extent
from bigarr.errors import BudgetError

__all__ = [
    "MAX_SPREAD",
    "Stream",
    "Writeback",
    "as_stream",
    "default_threads",
    "parse_threads",
    "plan_offset",
    "plan_rows",
    "run",
    "scaled_budget",
]

T = TypeVar("T")

_WILLNEED = parse_hint("willneed")
_POPULATE = parse_hint("populate_read")
_DONTNEED = parse_hint("dontneed")


#: A strided block is prefetched and released by its bounding bytes only when they are at most
#: this many times the block's own bytes.
MAX_SPREAD = 4


def default_threads() -> int:
    """Worker threads by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def parse_threads(threads: int | None) -> int:
    """Normalise ``threads=`` (``None``: :func:`default_threads`).

    Raises
    ------
    BudgetError
        For anything but a positive integer or ``None`` (threads are part of the memory plan,
        as the budget is).
    """
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise BudgetError(f"Expected threads as a positive integer or None. Got {threads!r}.")
    return int(threads)


@dataclass(slots=True)
class Stream:
    """One array the engine moves through, chunk by chunk."""

    array: np.ndarray[Any, Any]
    """A plain ndarray view of the whole array (no memmap subclass overhead per block)."""
    mapping: Mapping | None
    """The bigarr mapping the array lives in, or ``None`` (in memory, numpy.memmap, ...)."""
    output: bool = False
    """True for arrays the run writes."""
    by_key: bool = True
    """Blocks are ``array[chunk.key]`` (the planned array) or ``array[chunk.rows]`` (another
    array sharing the leading axis)."""
    owned: memmap | None = None
    """An array the engine opened itself (from a path) and closes at the end."""

    def block(self, chunk: Chunk) -> np.ndarray[Any, Any]:
        """This stream's block of ``chunk``."""
        return self.array[chunk.key] if self.by_key else self.array[chunk.rows]

    def span(self, block: np.ndarray[Any, Any]) -> ByteSpan | None:
        """The mapping bytes ``block`` spans, for hints; ``None`` when there is nothing to hint.

        A strided block (a view such as ``x[:, ::2]``) is hinted by its bounding bytes when they
        are at most :data:`MAX_SPREAD` times its own bytes; a sparser block (a column of a
        row-major file) shares its pages with other chunks, so it is left to the kernel.
        """
        if self.mapping is None or block.size == 0:
            return None
        bounds = extent(block, self.mapping)
        if block.flags.c_contiguous or block.flags.f_contiguous:
            return bounds
        return bounds if bounds.nbytes <= MAX_SPREAD * block.nbytes else None

    def spread(self) -> float:
        """Bytes of mapping the whole array spans per byte of its own (1 when contiguous)."""
        arr = self.array
        if self.mapping is None or arr.size == 0:
            return 1.0
        if arr.flags.c_contiguous or arr.flags.f_contiguous:
            return 1.0
        return max(1.0, extent(arr, self.mapping).nbytes / arr.nbytes)

    def file_offset(self, block: np.ndarray[Any, Any]) -> int | None:
        """File offset of a contiguous block's first byte, or ``None``."""
        if not (block.flags.c_contiguous or block.flags.f_contiguous):
            return None
        span = self.span(block)
        if span is None or self.mapping is None:
            return None
        return self.mapping.map_offset + span.start

    def close(self) -> None:
        """Close the array if the engine opened it."""
        if self.owned is not None:
            self.owned.close(force=True)
            self.owned = None


def as_stream(obj: Any, *, output: bool = False, by_key: bool = True) -> Stream:
    """Normalise an input or output (array, bigarr.memmap, or path to a ``.npy``) to a stream.

    Paths are opened read-only (inputs) or shared (outputs) and closed by :meth:`Stream.close`.
    """
    owned = None
    if isinstance(obj, (str, os.PathLike)):
        from bigarr._core.files import open as open_npy

        owned = open_npy(obj, "shared" if output else "readonly")
        obj = owned
    mapping = None
    if isinstance(obj, memmap) and obj._bigarr is not None:
        obj._check_open()
        mapping = obj._bigarr
    arr = obj.view(np.ndarray) if isinstance(obj, np.ndarray) else np.asarray(obj)
    return Stream(arr, mapping, output, by_key, owned)


def plan_offset(stream: Stream) -> int:
    """File offset of a stream's first byte for chunk planning (0 when not mapped)."""
    if stream.mapping is None or stream.array.size == 0:
        return 0
    return stream.mapping.map_offset + stream.mapping.offset_of(stream.array)


def scaled_budget(stream: Stream, chunk_bytes: int) -> int:
    """The chunk budget for a stream's own bytes so that the pages its chunks span fit
    ``chunk_bytes`` (a view with every other column spans twice its bytes)."""
    spread = stream.spread()
    if spread <= 1.0:
        return chunk_bytes
    return max(int(chunk_bytes / builtins.min(spread, MAX_SPREAD)), stream.array.itemsize)


def plan_rows(stream: Stream, memory: MemoryPlan) -> ChunkPlan:
    """Chunks of whole rows (along axis 0) of a stream, each within ``memory.chunk_bytes``.

    Chunk starts fall on page boundaries of the file where whole rows allow it. Rows meet a page
    boundary only every ``lcm(row bytes, page)`` bytes (a 1200-byte row every 256 rows, 300
    KiB); when that is beyond the chunk budget the plan falls back to starts on row boundaries,
    so the budget only has to hold one row: release-behind may then drop a page shared with the
    next chunk, which only costs a re-fault (it is never done on private mappings).

    Raises
    ------
    BudgetError
        If one row is larger than the chunk budget (functions over rows need whole rows),
        quoting the budget that fits a row.
    """
    arr = stream.array
    chunk_bytes = scaled_budget(stream, memory.chunk_bytes)
    offset = plan_offset(stream) if arr.flags.c_contiguous else 0
    try:
        plan = plan_chunks(arr.shape, arr.dtype, order="C", budget=chunk_bytes, offset=offset)
        if not any(c.depth for c in plan.chunks):
            return plan
    except BudgetError:
        pass  # records (1-d rows) whose page-aligned starts are all beyond the chunk budget
    row = int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
    if row > chunk_bytes:
        need = memory.at_least(math.ceil(row * builtins.min(stream.spread(), MAX_SPREAD)))
        raise BudgetError(
            f"Each chunk must hold whole rows, and one row is {row} bytes, but the budget of "
            f"{memory.budget} bytes leaves {chunk_bytes} bytes per chunk of each array in "
            f"flight ({memory.describe()}). Raise budget= to at least {need.budget} "
            f"({need.describe()}), or use fewer threads."
        )
    return plan_chunks(arr.shape, arr.dtype, order="C", budget=chunk_bytes, page=row)


def _release(stream: Stream, block: np.ndarray[Any, Any]) -> None:
    """Drop a finished input block's pages from the resident set (never on private maps)."""
    if stream.mapping is None or stream.mapping.access == "private":
        return
    span = stream.span(block)
    if span is not None:
        stream.mapping.advise(_DONTNEED, span)


@dataclass(slots=True)
class _Pending:
    chunk: int
    nbytes: int
    ranges: list[tuple[int, int, int]] = field(default_factory=list)  # fd, offset, nbytes
    spans: list[tuple[Mapping, ByteSpan]] = field(default_factory=list)


class Writeback:
    """The flush policy for a run's outputs: bounded dirty bytes, flush then release.

    Parameters
    ----------
    every
        Most output bytes left pending: beyond it, the oldest chunks are flushed (their
        writeback waited for).
    durable
        Also ``fdatasync`` the output files at each flush, then call ``on_durable``.
    on_durable
        Called with the indices of the chunks whose output is durable (the journal).
    """

    def __init__(
        self,
        every: int,
        *,
        durable: bool = False,
        on_durable: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.every = max(1, every)
        self.durable = durable
        self.on_durable = on_durable
        self._lock = threading.Lock()
        self._open: dict[int, _Pending] = {}
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._fds: set[int] = set()

    def _entry(self, chunk: int) -> _Pending:
        with self._lock:
            entry = self._open.get(chunk)
            if entry is None:
                entry = self._open[chunk] = _Pending(chunk, 0)
            return entry

    def write(self, chunk: int, stream: Stream, block: np.ndarray[Any, Any], value: Any) -> None:
        """Store ``value`` into ``block`` of output ``stream`` (part of chunk ``chunk``)."""
        entry = self._entry(chunk)
        mapping = stream.mapping
        offset = stream.file_offset(block) if block.flags.c_contiguous else None
        if mapping is not None and mapping.access == "shared" and offset is not None:
            data = np.ascontiguousarray(np.broadcast_to(np.asarray(value, block.dtype),
                                                        block.shape))
            self.pwrite(entry, mapping.fd, offset, data)
            return
        block[...] = value
        if mapping is not None and mapping.access == "shared" and block.size:
            # The block's bounding bytes: for a strided block (rows of a Fortran-ordered file)
            # that includes other chunks' pages, which msync writes if dirty and DONTNEED
            # unmaps without losing anything (dirty shared pages stay in the page cache).
            entry.spans.append((mapping, extent(block, mapping)))
        entry.nbytes += block.nbytes

    def pwrite(self, entry: _Pending, fd: int, offset: int, data: np.ndarray[Any, Any]) -> None:
        """Write a contiguous array's bytes at ``offset`` of ``fd`` and start their writeback."""
        pwrite_all(fd, data, offset)
        start_writeback(fd, offset, data.nbytes)
        entry.ranges.append((fd, offset, data.nbytes))
        entry.nbytes += data.nbytes
        with self._lock:
            self._fds.add(fd)

    def chunk_done(self, chunk: int) -> None:
        """Mark chunk ``chunk``'s outputs complete; flush the oldest beyond ``every`` bytes.

        Only the oldest chunks are waited for, so up to ``every`` bytes stay queued for writeback
        and the disk never runs dry between flushes; unflushed output stays at most ``every``
        bytes plus the chunks still being written.
        """
        with self._lock:
            entry = self._open.pop(chunk, None) or _Pending(chunk, 0)
            self._pending.append(entry)
            self._pending_bytes += entry.nbytes
            batch: list[_Pending] = []
            while self._pending and self._pending_bytes > self.every:
                oldest = self._pending.pop(0)
                self._pending_bytes -= oldest.nbytes
                batch.append(oldest)
        self._flush(batch)

    def drain(self) -> None:
        """Flush everything pending (the end of a run)."""
        with self._lock:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
        self._flush(batch)
        if not self.durable:
            self.sync_files()

    def sync_files(self) -> None:
        """``fdatasync`` every output file written with ``pwrite``."""
        with self._lock:
            fds = sorted(self._fds)
        for fd in fds:
            datasync(fd)

    def _flush(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        for entry in batch:
            for fd, offset, nbytes in entry.ranges:
                wait_writeback(fd, offset, nbytes)
            for mapping, span in entry.spans:
                mapping.sync(span)  # flush THEN release: the data is on disk before the drop
                mapping.advise(_DONTNEED, span)
        if self.durable:
            if any(e.ranges for e in batch):
                self.sync_files()  # the file's metadata (extents, size) as well as its data
            if self.on_durable is not None:
                self.on_durable([e.chunk for e in batch])


def run(
    plan: ChunkPlan,
    work: Callable[[Chunk, list[np.ndarray[Any, Any]]], T],
    *,
    streams: Sequence[Stream],
    threads: int,
    prefetch: int = 1,
    progress: Progress | None = None,
    writeback: Writeback | None = None,
    skip: Iterable[int] = (),
) -> Iterator[tuple[Chunk, T]]:
    """Run ``work(chunk, blocks)`` over the chunks of ``plan``; yield results in chunk order.

    ``blocks`` holds each stream's block of the chunk, in ``streams`` order. Around each call
    the engine prefetches input pages ahead, releases input pages behind, applies the
    ``writeback`` flush policy, and advances ``progress``.

    Parameters
    ----------
    plan
        The chunks.
    work
        Called on a worker thread per chunk; its return value is yielded with the chunk.
    streams
        The arrays; output streams are written by ``work`` (usually through ``writeback``).
    threads
        Worker threads.
    prefetch
        Chunks submitted (and prefetched) beyond one per thread.
    progress
        Advanced by each chunk's bytes when it finishes.
    writeback
        Flush policy for outputs; :meth:`Writeback.chunk_done` is called after each chunk.
    skip
        Chunk indices not to run (already done in a resumed run).

    Raises
    ------
    Exception
        Whatever ``work`` raises, after the chunks already running have finished.
    """
    skipped = set(skip)
    todo = [c for c in plan.chunks if c.index not in skipped]
    window: deque[tuple[Chunk, Future[T]]] = deque()
    depth = max(1, threads) + max(0, prefetch)
    inputs = [s for s in streams if not s.output]

    def one(chunk: Chunk) -> T:
        check_mapped(*(s.mapping for s in streams))  # a file cut under us: an error, not SIGBUS
        blocks = [s.block(chunk) for s in streams]
        value = work(chunk, blocks)
        for stream, block in zip(streams, blocks, strict=True):
            if not stream.output:
                _release(stream, block)
        if writeback is not None:
            writeback.chunk_done(chunk.index)
        if progress is not None:
            progress.advance(chunk.index, chunk.nbytes)
        return value

    def ahead(chunk: Chunk, populate: bool) -> None:
        spans = []
        for stream in inputs:
            if stream.mapping is not None:
                span = stream.span(stream.block(chunk))
                if span is not None:
                    stream.mapping.advise(_WILLNEED, span)  # asynchronous readahead
                    spans.append((stream.mapping, span))
        for mapping, span in spans if populate else ():
            # Map the (now cached, or arriving) pages into the page tables here, so the worker
            # that takes this chunk finds them mapped and spends its time computing.
            mapping.advise(_POPULATE, span)

    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="bigarr")
    try:
        for position, chunk in enumerate(todo):
            while len(window) >= depth:
                done, future = window.popleft()
                yield done, future.result()
            if prefetch:
                # Before the chunk is submitted: a worker may finish and release it at once, and
                # pages populated after that would stay mapped. The first chunks start at once
                # (their workers fault the pages in themselves); later ones are populated while
                # the workers are still busy with the chunks before them.
                ahead(chunk, populate=position >= threads)
            window.append((chunk, pool.submit(one, chunk)))
        while window:
            done, future = window.popleft()
            yield done, future.result()
    finally:
        for _chunk, future in window:
            future.cancel()
        with contextlib.suppress(Exception):
            pool.shutdown(wait=True, cancel_futures=True)
