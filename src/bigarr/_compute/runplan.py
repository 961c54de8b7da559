"""The one planner: every chunked operation is planned into a :class:`RunPlan` before it runs.

:func:`plan_run` takes the operation's streams (from
:func:`bigarr._compute.operands.parse_operand`) and its memory terms, divides the budget
(:func:`bigarr._plan.budget.plan_memory`), and cuts the primary stream into chunks that each fit
the per-chunk share:

* a contiguous mapped array: page-aligned chunks of its file (:func:`bigarr.plan_chunks`), in
  its memory order (``layout="keys"``) or in whole rows (``layout="rows"``);
* a non-contiguous view of a mapped file (a column slice, strided rows, rows of a Fortran
  file): whole rows, as many as fit when each row is charged the *pages of the parent* it
  touches, not its own bytes (``x[:, :4]`` of 32 columns touches all of each row's pages);
* a zarr or dask array: whole rows of its chunk (block) grid, so each zarr chunk is decoded and
  each dask block computed once;
* an in-memory array: chunks of its own bytes.

A plan that cannot fit is refused here, before anything runs, with
:class:`~bigarr.errors.BudgetError` quoting the bytes needed and the budget.

A pooled read-only run whose mapped inputs are all in the page cache is planned *warm*
(:attr:`RunPlan.warm`): the executor reads nothing ahead for it, so the chunks queued for the
workers hold no memory and only the threads' chunks are charged (after the cold plan has been
checked, so a budget is refused or not whatever the cache holds); a function's temporaries stay
charged for every chunk in flight. With two or more threads the
chunks are cut so that their number is a multiple of the threads (:func:`_balanced`).

:func:`measure_temporaries` is how the planner learns what a user function allocates: it calls
the function on a small probe block (an in-memory copy of the first rows, about 1 MiB) and on
its first half under :mod:`tracemalloc` (numpy reports its array allocations there), and
returns the bytes allocated at the peak per byte of input and per call. Functions that take a
``block_info`` argument are told ``block_info["probe"] is True`` there.
"""

from __future__ import annotations

import inspect
import itertools
import math
import threading
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bigarr._compute.operands import Stream
from bigarr._os.geometry import PAGE_SIZE, ByteSpan, align_up, format_bytes
from bigarr._plan import budget as _budget
from bigarr._plan.budget import DEFAULT_BUDGET, MemoryPlan, plan_memory
from bigarr._plan.chunks import Chunk, ChunkPlan, plan_chunks
from bigarr.errors import ArgumentError, BudgetError

__all__ = [
    "DEFAULT_BUDGET",
    "PROBE_BYTES",
    "PROBE_SLACK",
    "RunPlan",
    "block_info",
    "measure_temporaries",
    "parse_prefetch",
    "parse_threads",
    "plan_run",
    "precheck",
    "probe_temporaries",
    "wants_block_info",
]

#: Input bytes of the probe block :func:`measure_temporaries` calls a function on.
PROBE_BYTES = 1 << 20

#: Bytes of a probe's allocations not charged per input byte: Python objects, array headers,
#: small fixed buffers (a 1-row probe of a function making a 400-byte result would otherwise
#: look like 100 bytes of temporaries per input byte). Small and fixed, they are left to the
#: 64 MiB of slack the memory promise allows above the budget.
PROBE_SLACK = 64 << 10

#: Prefetch by default: chunks read ahead of the workers (or of the consumer of an iteration).
DEFAULT_PREFETCH = 1

_LAZY_WEIGHT = 2
"""Chunk-sized buffers a zarr or dask block costs: the decoded block and its encoded or
intermediate bytes."""


def default_threads() -> int:
    """Worker threads by default: the CPUs this process may run on."""
    import os

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


def parse_prefetch(prefetch: int) -> int:
    """Normalise ``prefetch=``: the number of chunks read ahead, ``0`` for none.

    ``True`` and ``False`` are accepted as 1 and 0 (they are ints).

    Raises
    ------
    ArgumentError
        For anything but a non-negative integer (a ``TypeError`` too).
    """
    if not isinstance(prefetch, (int, np.integer)) or prefetch < 0:
        raise ArgumentError(
            "Expected prefetch as the number of chunks to read ahead (a non-negative int; 0 "
            f"turns prefetch off). Got {prefetch!r}."
        )
    return int(prefetch)


@dataclass(frozen=True, slots=True)
class RunPlan:
    """How one chunked operation will run: what it reads, how it cuts, and what memory it adds.

    Every chunked operation (iteration, reductions, ``reduce_blocks``, ``map_blocks``, zarr
    import and export, the CLI's ``convert`` and ``verify``) is planned into one of these before
    it starts, and run by the one executor.
    """

    operation: str
    """The operation, e.g. ``"sum"``, ``"map_blocks"``, ``"iter_chunks"``, ``"to_zarr"``."""
    inputs: tuple[str, ...]
    """One description per stream, inputs then outputs: kind (path, bigarr, numpy.memmap,
    zarr, dask, ndarray), name and shape."""
    chunks: ChunkPlan
    """The chunk geometry: chunks of the primary stream, in file order."""
    layout: str
    """``"keys"``: chunks follow the primary array's memory order (a Fortran array is cut along
    its last axis); ``"rows"``: chunks are ranges of whole rows along axis 0, shared by every
    stream."""
    threads: int
    """Worker threads running the function (0: the consumer of an iteration runs it)."""
    prefetch: int
    """Chunks read ahead (``MADV_WILLNEED``) beyond the ones being worked on; 0 for none."""
    release: bool
    """Release-behind: drop each finished chunk's input pages (``MADV_DONTNEED``, after
    ``msync`` of a shared mapping). Never on a private mapping."""
    flush_every: int
    """Output bytes written but not yet on disk before the oldest are waited for (the flush
    policy); 0 when the operation writes no file."""
    durable: bool
    """Flushes also ``fdatasync`` the output and journal the chunks (``resume=True``)."""
    budget: int
    """Bytes the operation may add to the process's memory."""
    memory: MemoryPlan
    """How the budget divides: chunk bytes, chunks in flight, streams, temporaries, unflushed
    output, scratch and partial results."""
    peak_bytes: int
    """Predicted peak memory the operation adds, in bytes: the memory plan with the largest
    chunk actually planned (at most :attr:`budget`)."""
    warm: bool = False
    """Every page of every mapped input was in the page cache when planned (see
    :func:`plan_run`): the executor reads nothing ahead (no hints, no populate, no cold reads),
    so a chunk waiting for a worker holds no memory and only the ``threads`` chunks being
    worked on are charged; ``prefetch`` chunks are still queued, so a worker never waits for
    the dispatcher."""

    def __repr__(self) -> str:
        kind = "rows" if self.layout == "rows" else f"{self.chunks.order}-order"
        return (
            f"RunPlan({self.operation}: {', '.join(self.inputs)}; {len(self.chunks)} chunks "
            f"({kind}) of <= {format_bytes(self.chunks.max_chunk_bytes)}; threads={self.threads}, "
            f"prefetch={self.prefetch}, release={self.release}, "
            f"flush_every={format_bytes(self.flush_every)}, durable={self.durable}"
            f"{', warm' if self.warm else ''}; "
            f"peak {format_bytes(self.peak_bytes)} of budget {format_bytes(self.budget)})"
        )


#: One measurement at a time in the process: tracemalloc is the process's, so a run planned in
#: another thread would stop the tracing under this one's (which then measured nothing) or
#: reset its peak. (Reentrant: a probe may plan a run of its own.) Another thread's running
#: computation still allocates and frees within the window, which moves the measurement
#: either way: at a budget of a few MiB, a run planned beside others may be refused where it
#: fits alone.
_TRACING = threading.RLock()


def _traced_peak(func: Callable[..., Any], probes: Sequence[Any]) -> int:
    """Bytes ``func(*probes)`` allocates at its peak (result included), via tracemalloc."""
    with _TRACING:
        started = not tracemalloc.is_tracing()
        if started:
            tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            result = func(*probes)
            _, peak = tracemalloc.get_traced_memory()
            del result
        finally:
            if started:
                tracemalloc.stop()
    return max(0, peak - base)


def measure_temporaries(func: Callable[..., Any], probes: Sequence[Any], input_bytes: int,
                        halves: Sequence[Any] | None = None,
                        half_bytes: int = 0, *, warm: bool = False) -> tuple[float, int]:
    """What ``func`` allocates at its peak (result included): bytes per byte of input, and a
    fixed cost per call in bytes.

    numpy reports its array allocations to :mod:`tracemalloc`, so a call on a small probe
    block measures the temporaries a function makes in proportion to its input (an expression
    like ``((b - m) / s).T @ ((b - m) / s)`` makes several). With ``halves`` (the probe's first
    half, of ``half_bytes`` input bytes) it is called twice, and the slope between the two
    calls is the cost per byte while the rest is a fixed cost per call (Python objects, a
    histogram's bins, numpy's work in blocks of a fixed size). A fixed cost up to
    :data:`PROBE_SLACK` is not charged. With ``warm``, one untraced call on ``probes``
    comes first, so one-time costs of a first call (a thread's reused buffers, caches) are not
    taken for temporaries; for bigarr's own kernels only, since a user's function may count its
    calls. If tracing is already on (the caller's own), its peak
    is reset around each call. The results are discarded.
    """
    if input_bytes <= 0:
        return 0.0, 0
    if warm:
        # A first call pays one-time costs that are no temporaries: a thread's reused tile
        # buffer (tiles.scratch, charged by the plan on its own), caches, imports. Measured
        # cold, they made the first run in a process refuse a budget it met the second time.
        func(*probes)
    peak = _traced_peak(func, probes)
    if halves is None or half_bytes >= input_bytes:
        return max(0, peak - PROBE_SLACK) / input_bytes, 0
    half = _traced_peak(func, halves)
    slope = max(0.0, (peak - half) / (input_bytes - half_bytes))
    fixed = int(max(0.0, peak - slope * input_bytes - PROBE_SLACK))
    return slope, fixed


def whole_probe(streams: Sequence[Stream]) -> bool:
    """True when the probe block holds every row (the input is smaller than a probe)."""
    chunked = [s for s in streams if s.ndim and not s.output]
    if not chunked:
        return True
    primary = max(chunked, key=lambda s: s.row_bytes)
    return primary.shape[0] <= max(1, PROBE_BYTES // max(primary.row_bytes, 1))


def _grid_plan(stream: Stream, chunk_bytes: int, memory: MemoryPlan) -> ChunkPlan:
    """Chunks of whole rows of a lazy source, cut only on its grid (zarr chunks, dask blocks)."""
    assert stream.grid is not None
    grid, row = stream.grid, stream.row_bytes
    cuts = [0]
    if stream.kind == "dask":  # a slice of a dask block is computed alone where dask can
        step = max(1, chunk_bytes // max(row, 1))
        finer = [0]
        for a, b in itertools.pairwise(grid):
            finer.extend(range(a + step, b, step))
            finer.append(b)
        grid = tuple(finer)
    for a, b in itertools.pairwise(grid):
        if (b - a) * row > chunk_bytes:
            need = memory.at_least((b - a) * row)
            raise BudgetError(
                f"A {stream.kind} block of rows {a}:{b} holds {(b - a) * row} bytes, more than "
                f"the {chunk_bytes} bytes per chunk the budget of {memory.budget} bytes leaves "
                f"({memory.describe()}); its blocks are read whole. Raise budget= to at least "
                f"{need.budget}, or rechunk the {stream.kind} array along axis 0."
            )
        if (b - cuts[-1]) * row > chunk_bytes:
            cuts.append(a)
    if cuts[-1] != grid[-1]:
        cuts.append(grid[-1])
    shape = stream.shape
    chunks = []
    for i, (a, b) in enumerate(itertools.pairwise(cuts)):
        key = (slice(a, b), *(slice(0, n) for n in shape[1:]))
        chunks.append(Chunk(i, key, slice(a, b), ByteSpan(a * row, b * row)))
    return ChunkPlan(shape, stream.dtype.itemsize, "C", 0, max(chunk_bytes, row),
                     tuple(chunks), 0, max(row, 1), False)


def _rows_within(stream: Stream, chunk_bytes: int) -> int:
    """Most leading rows of a non-contiguous mapped view whose pages fit ``chunk_bytes``.

    The pages ``k`` rows touch grow about linearly, ``a + b k`` (``a``: pages shared at the
    edges, or a column layout where every row touches the same pages); both are measured on
    two leading samples of the view.
    """
    assert stream.array is not None
    n = stream.shape[0]
    k1, k2 = min(n, 64), min(n, 4096)
    c1 = stream.resident_bytes(stream.array[:k1])
    c2 = stream.resident_bytes(stream.array[:k2]) if k2 > k1 else c1
    slope = (c2 - c1) / (k2 - k1) if k2 > k1 else c2 / max(k2, 1)
    base = max(0.0, c1 - slope * k1)
    if slope <= 0:
        return n if c2 <= chunk_bytes else 0
    return max(0, min(n, int((chunk_bytes - base) // slope)))


def _geometry(stream: Stream, layout: str, chunk_bytes: int, memory: MemoryPlan,
              unit: int) -> ChunkPlan:
    shape, dtype = stream.shape, stream.dtype
    if stream.lazy and stream.ndim:
        return _grid_plan(stream, chunk_bytes, memory)
    if unit > 1 and stream.ndim:  # whole slabs of `unit` rows (zarr chunks of an export)
        axis = stream.ndim - 1 if layout == "keys" and stream.order == "F" else 0
        slab = stream.nbytes // max(shape[axis], 1)
        unit = min(unit, shape[axis])
        cost = 1.0
        first = (None if stream.array is None else
                 stream.array[(slice(None),) * axis + (slice(0, unit),)])
        if (first is not None and stream.mapping is not None and first.size
                and not (first.flags.c_contiguous or first.flags.f_contiguous)):
            # a view, or rows of a Fortran file: charge the parent pages a slab touches
            cost = max(1.0, stream.resident_bytes(first) / max(unit * slab, 1))
            chunk_bytes = int(chunk_bytes / cost)
        if unit * slab > chunk_bytes:
            need = memory.at_least(math.ceil(unit * slab * cost))
            raise BudgetError(
                f"This operation moves whole slabs of {unit} x {slab} bytes along axis {axis} "
                f"(zarr chunks or shards): {format_bytes(unit * slab)}, more than the "
                f"{chunk_bytes} bytes per chunk the budget of {format_bytes(memory.budget)} "
                f"({memory.budget} bytes) leaves ({memory.describe()}). Raise budget= to at "
                f"least {need.budget}, or use smaller chunks (or shards) along that axis."
            )
        per = chunk_bytes // (unit * max(slab, 1)) * unit * max(slab, 1)
        return plan_chunks(shape, dtype, order="F" if axis else "C", budget=per,
                           page=unit * max(slab, 1))
    contiguous = stream.contiguous
    strided_rows = layout == "rows" and stream.order == "F" and stream.ndim > 1
    if stream.mapping is not None and stream.ndim and (not contiguous or strided_rows):
        # A view of a file's pages (a column slice, strided rows, rows of a Fortran file):
        # whole rows, as many as the pages they touch allow.
        if stream.span_bytes() + 2 * PAGE_SIZE <= chunk_bytes:  # all its pages fit one chunk
            return plan_chunks(shape, dtype, order="C", budget=max(stream.nbytes, 1))
        assert stream.array is not None
        rows = _rows_within(stream, chunk_bytes)
        if rows >= 1:
            while rows > 1 and stream.resident_bytes(stream.array[:rows]) > chunk_bytes:
                rows = rows * 7 // 8
            return plan_chunks(shape, dtype, order="C", budget=rows * stream.row_bytes,
                               page=max(stream.row_bytes, 1))
        cost = stream.resident_bytes(stream.array[:1])
        if layout == "rows":
            _too_wide(stream, cost, chunk_bytes, memory)
        # a row of the view is wider than a chunk: parts of rows, charged by their spread
        spread = max(1.0, cost / max(stream.row_bytes, 1))
        return plan_chunks(shape, dtype, order="C",
                           budget=max(dtype.itemsize, int(chunk_bytes / spread)))
    order = stream.order if layout == "keys" else "C"
    offset = stream.plan_offset() if (contiguous and (order == "F" or
                                                      stream.array is None or
                                                      stream.array.flags.c_contiguous)) else 0
    if layout == "keys" or stream.ndim == 0:
        return plan_chunks(shape, dtype, order=order, budget=chunk_bytes, offset=offset)
    try:
        plan = plan_chunks(shape, dtype, order="C", budget=chunk_bytes, offset=offset)
        if not any(c.depth for c in plan.chunks):
            return plan
    except BudgetError:
        pass  # records whose page-aligned starts are all beyond the chunk budget
    row = stream.row_bytes
    if row > chunk_bytes:
        _too_wide(stream, row, chunk_bytes, memory)
    return plan_chunks(shape, dtype, order="C", budget=chunk_bytes, page=row)


def _warm(streams: Sequence[Stream]) -> bool:
    """True when every stream is an input in memory or a mapped input (not private) whose
    file pages are all in the page cache, at least one of them mapped (a warm scan: see
    :attr:`RunPlan.warm`)."""
    mapped = False
    for s in streams:
        if s.output or s.lazy:
            return False
        if s.mapping is None:
            continue
        if s.mapping.access == "private" or not s.all_cached():
            return False
        mapped = True
    return mapped


#: A last round of chunks that leaves the threads less than this share of a chunk each to do
#: is not worth smaller chunks (see :func:`_balanced`).
_SLIVER = 1 / 16


def _balanced(stream: Stream, layout: str, memory: MemoryPlan, unit: int, threads: int,
              min_chunk: int) -> ChunkPlan:
    """The chunk plan of ``stream`` within ``memory``, with chunks made smaller where that
    splits the work evenly among ``threads`` workers.

    Workers take chunks in order, so with ``n`` equal chunks the run lasts ``ceil(n /
    threads)`` chunk times: 25 chunks on 2 threads leave one thread idle for the last one
    (issue 15: about 4 ms of a warm 2 GiB sum). Chunks of ``total / (threads * rounds)``
    bytes end together. Only for a contiguous operand cut by bytes (not zarr slabs, not lazy
    grids), never below ``min_chunk``, and never larger than the memory plan's chunk.
    """
    chunk_bytes = memory.chunk_bytes
    total = stream.nbytes
    if (threads < 2 or unit > 1 or stream.lazy or not stream.contiguous or not stream.ndim
            or not chunk_bytes or total <= 0):
        return _geometry(stream, layout, chunk_bytes, memory, unit)
    rounds = max(1, math.ceil(total / chunk_bytes / threads - _SLIVER))
    # Chunks start on pages of the file: the first one is short by the data's offset into its
    # page, which the others make up.
    lead = stream.plan_offset() % PAGE_SIZE
    even = align_up(-(-(total + lead) // (rounds * threads)), PAGE_SIZE)
    if even >= chunk_bytes or even < min_chunk or (layout == "rows" and even < stream.row_bytes):
        return _geometry(stream, layout, chunk_bytes, memory, unit)
    try:
        return _geometry(stream, layout, even, memory, unit)
    except BudgetError:  # a geometry that needs the full chunk (records, wide rows)
        return _geometry(stream, layout, chunk_bytes, memory, unit)


def _too_wide(stream: Stream, row: int, chunk_bytes: int, memory: MemoryPlan) -> None:
    need = memory.at_least(row)
    raise BudgetError(
        f"Each chunk must hold whole rows, and one row costs {row} bytes of memory, but the "
        f"budget of {memory.budget} bytes leaves {chunk_bytes} bytes per chunk of each array "
        f"in flight ({memory.describe()}). Raise budget= to at least {need.budget} "
        f"({need.describe()}), or use fewer threads."
    )


def _largest_resident(stream: Stream, plan: ChunkPlan, layout: str) -> int:
    """Resident bytes of the plan's largest chunk of ``stream``."""
    if not len(plan):
        return 0
    strided_rows = layout == "rows" and stream.order == "F" and stream.ndim > 1
    if stream.lazy or stream.mapping is None or (stream.contiguous and not strided_rows):
        return plan.max_chunk_bytes
    biggest = max(plan.chunks, key=lambda c: c.nbytes)
    return stream.resident_bytes(stream.block(biggest))


def plan_run(
    operation: str,
    streams: Sequence[Stream],
    *,
    budget: int | str | None = DEFAULT_BUDGET,
    threads: int,
    prefetch: int = DEFAULT_PREFETCH,
    layout: Literal["keys", "rows"] = "rows",
    primary: Stream | None = None,
    release: bool = True,
    flush_every: int | Callable[[int], int] = 0,
    durable: bool = False,
    temporaries: float = 0.0,
    fixed_bytes: int = 0,
    scratch_bytes: int = 0,
    extra_streams: int = 0,
    unit: int = 1,
    min_chunk: int | None = None,
) -> RunPlan:
    """Plan one chunked operation: divide the budget, cut the primary stream, check the fit.

    Parameters
    ----------
    operation
        Name of the operation (shown in the plan and in messages).
    streams
        The operation's streams, inputs then outputs.
    budget
        The most memory the operation may add, bytes or a size string.
    threads
        Worker threads (0: the consumer runs each chunk, as in an iteration).
    prefetch
        Chunks read ahead.
    layout
        ``"keys"`` (the primary stream's memory order) or ``"rows"`` (whole rows, shared by
        every stream).
    primary
        The stream to cut (default: the one with the largest rows).
    release
        Release-behind of input pages.
    flush_every
        Unflushed output bytes allowed, or a function of the budget giving them.
    durable
        Flushes ``fdatasync`` and journal.
    temporaries
        Bytes the function allocates per byte of its chunk (:func:`measure_temporaries`).
    fixed_bytes
        Bytes held whatever the chunk size (a reduction's partial result).
    scratch_bytes
        Fixed working memory per thread.
    extra_streams
        Chunk-sized buffers besides the streams (an encoder's copies, say).
    unit
        Chunks hold whole multiples of this many slabs along the chunk axis (zarr chunks).
    min_chunk
        Smallest useful chunk, in bytes.

    Raises
    ------
    BudgetError
        If the plan cannot fit the budget (both numbers quoted), before anything runs.
    """
    if not streams:
        raise ArgumentError("A run needs at least one stream.")
    chunked = [s for s in streams if s.ndim or s is primary]
    if primary is None:
        candidates = chunked or list(streams)
        primary = max(candidates, key=lambda s: (s.row_bytes, s.mapping is not None))
    weight = 0
    for s in streams:
        if s.output:
            weight += 1
        elif s.lazy:
            weight += _LAZY_WEIGHT
        elif s.mapping is not None:
            weight += 1
    mapped = any(s.mapping is not None and not s.output for s in streams)
    # No chunk need be larger than the whole array: a small array never needs the default
    # smallest useful chunk.
    floor = _budget.MIN_CHUNK_BYTES if min_chunk is None else min_chunk
    min_chunk = max(1, min(floor, primary.span_bytes() if not primary.lazy else floor))
    terms: dict[str, Any] = {
        "threads": max(threads, 1), "streams": max(1, weight + extra_streams),
        "dirty_bytes": flush_every, "scratch_bytes": scratch_bytes, "min_chunk": min_chunk,
        "temporaries": temporaries, "fixed_bytes": fixed_bytes,
        "granule": PAGE_SIZE if mapped else 1, "data_cap": primary.nbytes}
    # Planned as if cold first: a budget is refused (or not) whatever the page cache holds.
    memory = plan_memory(budget, prefetch=prefetch, **terms)
    warm = (threads >= 1 and prefetch >= 1 and release and not extra_streams
            and flush_every == 0 and _warm(streams))
    if warm:  # chunks waiting for a worker hold nothing: only the threads' chunks count
        # ... but a function's temporaries and result stay charged for every chunk in flight
        # (a result finished out of order waits while its thread starts the next chunk)
        t = max(threads, 1)
        memory = plan_memory(budget, prefetch=0,
                             **{**terms, "temporaries": temporaries * (t + prefetch) / t})
    chunks = _balanced(primary, layout, memory, unit, threads, min_chunk)
    largest = _largest_resident(primary, chunks, layout)
    if layout == "rows" and len(chunks):
        biggest = max(c.rows.stop - c.rows.start for c in chunks)
        for s in streams:
            if s is not primary and s.ndim and not s.lazy:
                largest = max(largest, biggest * s.row_bytes)
    memory.check(largest)
    peak = min(memory.nbytes, memory.nbytes - memory.held(memory.chunk_bytes)
               + memory.held(align_up(largest, memory.granule)))
    return RunPlan(
        operation=operation,
        inputs=tuple(f"{s.name or s.kind} {s.shape}" + (" (out)" if s.output else "")
                     for s in streams),
        chunks=chunks,
        layout=layout,
        threads=threads,
        prefetch=prefetch,
        release=release,
        flush_every=memory.dirty_bytes,
        durable=durable,
        budget=memory.budget,
        memory=memory,
        peak_bytes=max(0, peak),
        warm=warm,
    )


def probe_temporaries(func: Callable[..., Any], streams: Sequence[Stream],
                      args: Sequence[Any] | None = None, *,
                      warm: bool = False) -> tuple[float, int]:
    """Measure ``func``'s temporaries on the first rows of ``streams`` (see
    :func:`measure_temporaries`): bytes per byte of the largest stream's block, and bytes per
    call.

    When the probe holds the whole input (a small array), one call is made and its peak is
    charged per byte; the memory plan caps that charge at the array's size.

    ``args`` are the function's arguments with each chunked stream in its place (others passed
    as they are); by default the streams themselves. ``warm``: see
    :func:`measure_temporaries`.
    """
    chunked = [s for s in streams if s.ndim and not s.output]
    if not chunked:
        return 0.0, 0
    primary = max(chunked, key=lambda s: s.row_bytes)
    rows = max(1, PROBE_BYTES // max(primary.row_bytes, 1))
    for s in chunked:  # a view's rows touch more of its parent's pages than their own bytes
        if s.array is not None and s.mapping is not None and not s.contiguous and s.ndim:
            sample = min(rows, 64, s.shape[0])
            per_row = s.resident_bytes(s.array[:sample]) / max(sample, 1)
            rows = max(1, min(rows, int(PROBE_BYTES // max(per_row, 1))))
    whole = whole_probe(streams) and rows >= primary.shape[0]
    heads = {id(s): s.probe_copy(rows) for s in chunked}
    if args is None:
        probes = [heads[id(s)] for s in chunked]
    else:
        probes = [heads[id(a)] if isinstance(a, Stream) and id(a) in heads else a for a in args]
    nbytes = int(heads[id(primary)].nbytes)
    if nbytes == 0:
        return 0.0, 0
    if whole:  # the whole input: one call, charged per byte (capped at the array's size)
        per_byte = measure_temporaries(func, probes, nbytes, warm=warm)[0]
        return math.ceil(per_byte * 8) / 8, 0
    got = heads[id(primary)].shape[0] if heads[id(primary)].ndim else 0
    halves = None
    half_bytes = 0
    if got >= 2:
        cut = {k: v[: got // 2] for k, v in heads.items()}
        half_bytes = int(cut[id(primary)].nbytes)
        if args is None:
            halves = [cut[id(s)] for s in chunked]
        else:
            halves = [cut[id(a)] if isinstance(a, Stream) and id(a) in cut else a for a in args]
    per_byte, per_call = measure_temporaries(func, probes, nbytes, halves, half_bytes,
                                             warm=warm)
    # Rounded up to 1/8 and 64 KiB: the plan (and a resumed run's chunk boundaries, which its
    # journal checks) must not move with the allocator's small jitter between runs.
    return math.ceil(per_byte * 8) / 8, -(-per_call // (64 << 10)) * (64 << 10)


def precheck(operation: str, streams: Sequence[Stream], **options: Any) -> None:
    """Refuse, before a user function runs even once, a budget that cannot hold the chunks
    alone; the function's temporaries (measured next, on a probe) come on top.

    Raises
    ------
    BudgetError
        If the budget cannot hold the chunks in flight, quoting both numbers.
    """
    try:
        plan_run(operation, streams, **options)
    except BudgetError as exc:
        raise BudgetError(
            f"{exc} (That is before counting the function's own temporaries, which are "
            "measured on a small probe block only once the chunks fit; they come on top.)"
        ) from None


def wants_block_info(func: Callable[..., Any]) -> bool:
    """True when ``func`` takes a ``block_info`` parameter (it is then passed, as in dask)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):  # builtins and ufuncs without a signature
        return False
    param = params.get("block_info")
    return param is not None and param.kind in (inspect.Parameter.KEYWORD_ONLY,
                                                inspect.Parameter.POSITIONAL_OR_KEYWORD)


def block_info(chunk: Chunk, shape: tuple[int, ...], *, probe: bool = False) -> dict[str, Any]:
    """Where a chunk's block lies: ``{"chunk": index, "rows": (start, stop),
    "array-location": [(start, stop) per axis], "probe": bool}`` (global positions in the
    first input; ``probe`` is True for the call on a probe block that measures the function's
    temporaries, whose result is discarded)."""
    location = [(int(k.start), int(k.stop)) for k in chunk.key]
    location += [(0, n) for n in shape[len(location):]]
    rows = location[0] if location else (0, 1)
    return {"chunk": chunk.index, "rows": rows, "array-location": location, "probe": probe}
