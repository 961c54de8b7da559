"""Streaming over a mapped array chunk by chunk, with bounded resident memory.

:func:`iter_chunks` walks a :class:`~bigarr._plan.chunks.ChunkPlan` and yields ``(chunk, view)``
pairs. Two options keep memory bounded and the disk busy:

release-behind (``release=``)
    When the consumer asks for the next chunk, the finished one is dropped from this process's
    resident memory with ``MADV_DONTNEED``. On a read-only mapping that only unmaps clean pages
    (they stay in the page cache and re-fault from it if touched again). On a shared mapping the
    chunk is first written back and waited for (``sync_file_range``; ``msync`` where that is
    missing), so what the consumer wrote is on its way to disk, clean, and dropped: filling a
    new file keeps both resident and dirty memory within the budget, and the writer runs at
    the disk's pace (``close()`` or ``flush()`` make it durable). On a private
    (copy-on-write) mapping ``MADV_DONTNEED`` would throw the scratch edits away, so
    release-behind is off there and asking for it raises :class:`~bigarr.errors.HintError`.
    Default: on, except in private mode. With prefetch on, the helper thread does the release
    (flush and unmap of a finished chunk cost CPU time: about 0.07 s per 2 GiB of 4 KiB page-cache
    pages), so it overlaps the consumer's work on the next chunk; an error of such a flush is
    re-raised in the consumer at its next step.

prefetch (``prefetch=``)
    The number of chunks a helper thread reads ahead (``MADV_WILLNEED``: asynchronous
    read-ahead into the page cache, which costs this process no resident memory) while the
    consumer works on the current one, so I/O overlaps compute; 0 turns it off. The same int
    as every other operation's ``prefetch=``; the policy itself lives in
    :func:`bigarr._compute.engine.prefetch`.

The iteration is planned and run like every chunked operation
(:func:`bigarr._compute.runplan.plan_run`, :func:`bigarr._compute.engine.execute`), with the
consumer running each chunk. Memory budget: the chunk being consumed plus the ``prefetch``
chunks read ahead are planned within ``budget`` (with the default ``prefetch=1``, chunks of half
the budget). Non-contiguous views are cut into whole rows sized by the pages of the file they
touch, and release those pages.

The helper thread never outlives the iteration: the generator stops and joins it in a
``finally`` block, which runs when the loop ends, when the consumer breaks out (the generator
is closed, explicitly or when it is garbage-collected) and when an exception is raised.

Residency (:func:`residency`) uses ``mincore``: a page counts as resident when it is in the
page cache, whether or not this process has it mapped.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._compute.directfill import CHUNK_MAX, SPARE_MIN, DirectFill, staged
from bigarr._compute.engine import execute
from bigarr._compute.operands import Stream, parse_operand
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import DEFAULT_PREFETCH, RunPlan, parse_prefetch, plan_run
from bigarr._core.scratch import ChunkCheck
from bigarr._os.geometry import PAGE_SIZE, ByteSpan, parse_size
from bigarr._os.hints import Hint, parse_hint
from bigarr._plan.budget import DEFAULT_BUDGET
from bigarr._plan.chunks import Chunk, ChunkPlan, plan_chunks
from bigarr._plan.regions import Region, extent, region_span
from bigarr.errors import BudgetError, HintError, ModeError, RegionError, UnsupportedError

if TYPE_CHECKING:
    from bigarr._os.mapping import Mapping

__all__ = [
    "ChunkResidency",
    "Residency",
    "advise",
    "iter_chunks",
    "plan_for",
    "residency",
]

_PATTERN_HINTS = frozenset({"normal", "sequential", "random"})


def _mapping_of(arr: Any) -> Mapping:
    mapping: Mapping | None = arr._bigarr
    if mapping is None:
        raise RegionError(
            "This array is a detached copy, not a view of a mapped file; chunk it with "
            "bigarr.plan_chunks(arr.shape, arr.dtype, budget=...) instead."
        )
    mapping.check_open()
    return mapping


def _order_of(arr: np.ndarray[Any, Any]) -> str:
    if arr.flags.c_contiguous:
        return "C"
    if arr.flags.f_contiguous:
        return "F"
    raise RegionError(
        f"Expected a C- or F-contiguous array to plan chunks over. Got strides {arr.strides} "
        f"for shape {arr.shape}; chunk the contiguous array this view was taken from."
    )


def plan_for(arr: Any, budget: int | str) -> ChunkPlan:
    """Plan page-aligned chunks of a mapped array (aligned to pages of its file).

    Raises
    ------
    RegionError
        If the array is not contiguous or not mapped.
    BudgetError
        If the budget cannot be met (see :func:`bigarr.plan_chunks`).
    """
    mapping = _mapping_of(arr)
    order = _order_of(arr)
    offset = mapping.map_offset + mapping.offset_of(arr) if arr.size else 0
    return plan_chunks(arr.shape, arr.dtype, order=order, budget=budget, offset=offset)


def advise(arr: Any, hint: str | Hint, region: Region = None) -> bool:
    """Apply an access hint to the pages of ``region`` (rounded outward, clipped to the mapping).

    Returns ``False`` when the hint is a no-op on this platform or kernel (or the array is a
    detached copy).

    Raises
    ------
    HintError
        For an unknown hint, or one refused in this mode (``dontneed``/``pageout`` in private
        mode; ``populate_write`` on a read-only or private mapping).
    RegionError
        For a malformed or out-of-range region.
    """
    parsed = parse_hint(hint)
    if arr._bigarr is None:
        return False
    mapping = _mapping_of(arr)
    return mapping.advise(parsed, region_span(arr, region))


@dataclass(frozen=True, slots=True)
class ChunkResidency:
    """How much of one planned chunk is in memory."""

    index: int
    """The chunk's index in the plan."""
    resident_pages: int
    """Pages of the chunk (rounded outward) in memory."""
    total_pages: int
    """Pages the chunk touches."""

    @property
    def fraction(self) -> float:
        """Resident share of the chunk's pages, 0.0 to 1.0 (1.0 for an empty chunk)."""
        return self.resident_pages / self.total_pages if self.total_pages else 1.0


@dataclass(frozen=True, slots=True)
class Residency:
    """Which pages of a region are in memory (``mincore``), overall and per chunk."""

    resident_pages: int
    """Pages of the region (rounded outward to pages) that are in memory."""
    total_pages: int
    """Pages the region touches."""
    page: int
    """Page size, in bytes."""
    chunks: tuple[ChunkResidency, ...]
    """One entry per chunk of the array's plan that overlaps the region, in file order."""

    @property
    def fraction(self) -> float:
        """Resident share of the region's pages, 0.0 to 1.0 (1.0 for an empty region)."""
        return self.resident_pages / self.total_pages if self.total_pages else 1.0

    @property
    def resident_bytes(self) -> int:
        """Resident pages times the page size, in bytes."""
        return self.resident_pages * self.page


def residency(arr: Any, region: Region = None, *, budget: int | str = DEFAULT_BUDGET) -> Residency:
    """Report which pages of ``region`` are resident, overall and per chunk of a ``budget`` plan.

    Raises
    ------
    RegionError
        For a malformed region, or an array that is detached or not contiguous.
    UnsupportedError
        Where the platform has no ``mincore``.
    """
    mapping = _mapping_of(arr)
    span = region_span(arr, region)
    if span.nbytes == 0:
        return Residency(0, 0, PAGE_SIZE, ())
    # Only the chunks that overlap the region, found by bisection in the (cached) plan, and one
    # mincore call over the region and those chunks: the cost follows the region, not the file.
    overlapping: list[tuple[int, ByteSpan]] = []
    if arr.size and (arr.flags.c_contiguous or arr.flags.f_contiguous):
        origin = mapping.offset_of(arr)
        chunks = plan_for(arr, budget).chunks
        i = bisect.bisect_right(chunks, span.start - origin, key=lambda c: c.span.start)
        for c in chunks[max(0, i - 1):]:
            cs = c.span.shift(origin)
            if cs.start >= span.stop:
                break
            if span.start < cs.stop:
                overlapping.append((c.index, cs))
    low = min([span.start, *(cs.start for _, cs in overlapping)])
    high = max([span.stop, *(cs.stop for _, cs in overlapping)])
    base = ByteSpan(low, high).outward(PAGE_SIZE)
    pages = mapping.residency(base)
    first = base.start // PAGE_SIZE

    def count(s: ByteSpan) -> tuple[int, int]:
        r = s.pages(PAGE_SIZE)
        sel = pages[r.start - first:r.stop - first]
        return int(np.count_nonzero(sel)), len(r)

    res, total = count(span)
    per = tuple(ChunkResidency(index, *count(cs)) for index, cs in overlapping)
    return Residency(res, total, PAGE_SIZE, per)


def iter_chunks(
    arr: Any,
    budget: int | str = DEFAULT_BUDGET,
    *,
    progress: ProgressArg = None,
    release: bool | None = None,
    prefetch: int = DEFAULT_PREFETCH,
    hint: str | Hint | None = None,
    desc: str | None = None,
    direct: bool = False,
) -> Iterator[tuple[Chunk, Any]]:
    """Yield ``(chunk, view)`` for each chunk of ``arr``; see the module docstring.

    The iteration is planned (:func:`bigarr._compute.runplan.plan_run`) and run
    (:func:`bigarr._compute.engine.execute`) like every chunked operation; the consumer runs each
    chunk.

    Parameters
    ----------
    arr
        A :class:`bigarr.memmap` or a view of one. A contiguous array is cut into page-aligned
        chunks in its memory order; a non-contiguous view (``x[:, :4]``, ``x[::3]``) into
        whole rows, sized by the pages of the file they touch.
    budget
        The most memory the iteration may add, in bytes or as a string such as ``"256MiB"``:
        the chunk being consumed plus the ``prefetch`` chunks read ahead.
    progress
        ``None`` (a bar on a TTY), ``True``, ``False`` or callbacks; see
        :mod:`bigarr._compute.progress`.
    release
        Release-behind: drop each finished chunk from resident memory (after flushing it in
        shared mode). ``None`` means on, except in private mode.
    prefetch
        Chunks read ahead (``MADV_WILLNEED``) by a helper thread; 0 for none.
    hint
        An access hint applied to the whole array before the first chunk (for example
        ``"sequential"``). An access-pattern hint (normal, sequential, random) is reset to
        ``"normal"`` when the iteration ends.
    desc
        Label for the progress bar (the file name by default).
    direct
        Write each chunk with ``O_DIRECT`` when the loop leaves it (shared mode; see
        :mod:`bigarr._compute.directfill`): chunks of a third of the budget, at most 32 MiB,
        the rest of the budget holding the next chunk's memory and chunks in flight; no
        prefetch, no release-behind. A non-contiguous view (any array, off Linux) is iterated
        as without it.

    Raises
    ------
    HintError
        For ``release=True`` on a private mapping, or an unknown hint.
    ArgumentError
        For a ``prefetch`` that is not a non-negative int.
    BudgetError
        If the budget cannot be met.
    RegionError
        If the array is detached (not a view of a mapped file).
    FileChangedError
        If the file shrinks under the array (checked before each chunk, instead of a SIGBUS).
    """
    mapping = _mapping_of(arr)
    if direct and mapping.access == "shared" and (
            not mapping.can_stage or not (arr.flags.c_contiguous or arr.flags.f_contiguous)):
        direct = False  # not Linux, or strided rows that share pages: the mapping's own path
    total = parse_size(budget, name="budget") if direct else 0
    if direct:
        if mapping.access != "shared":
            raise ModeError(
                f"direct=True writes each chunk to the file; {mapping.path} is open in "
                f"{mapping.access} mode. Open it with mode='r+' (shared) to fill it."
            )
        if release:
            raise HintError("direct=True frees each chunk once written; pass release=None.")
        from bigarr._core.tracking import tracking_method

        if tracking_method(arr) == "uffd":  # staging replaces the registered address range
            raise UnsupportedError(
                "direct=True cannot be combined with write tracking by userfaultfd "
                "(track_writes); fill the array first, or track with method='checksum'."
            )
        release, prefetch = False, 0
        # one filled, one being written and (budget allowing) one made ready ahead
        budget = max(1, min(total // 3 if total >= 3 * SPARE_MIN else total // 2, CHUNK_MAX))
    if release is None:
        release = mapping.access != "private"
    elif release and mapping.access == "private":
        raise HintError(
            "release=True would drop a private mapping's scratch edits (MADV_DONTNEED); "
            "use release=False, or commit() or discard() the edits explicitly."
        )
    ahead = parse_prefetch(prefetch)
    pattern = parse_hint(hint) if hint is not None else None
    stream = parse_operand(arr)
    try:
        plan = plan_run("iter_chunks", [stream], budget=budget, threads=0, prefetch=ahead,
                        layout="keys", release=bool(release), min_chunk=1)
    except BudgetError as exc:
        if direct:
            raise BudgetError(
                f"{exc} (With direct=True, the budget holds at least 2 chunks: the one filled "
                "and one being written; raise the budget.)"
            ) from None
        if not ahead:
            raise
        raise BudgetError(
            f"{exc} (With prefetch on, the budget holds {ahead + 1} chunks: the one consumed "
            f"and {ahead} read ahead; raise the budget, or pass prefetch=0.)"
        ) from None
    in_flight = spares = 0
    if direct:
        spares = int(total >= 3 * SPARE_MIN)
        in_flight = max(1, total // max(1, plan.chunks.max_chunk_bytes) - 1 - spares)
    return _walk(arr, mapping, stream, plan, progress=progress, pattern=pattern, desc=desc,
                 in_flight=in_flight, spares=bool(spares))


def _checked(steps: Iterator[tuple[Chunk, Any]],
             check: ChunkCheck) -> Iterator[tuple[Chunk, Any]]:
    """``steps`` with a private mapping's scratch limit checked at each step: the growth of
    each chunk's scratch pages, from any code that wrote into it, counts against it."""
    try:
        for chunk, view in steps:
            check.handing(view)
            yield chunk, view
            check.returned()
    finally:
        steps.close()  # type: ignore[attr-defined]


def _walk(
    arr: Any,
    mapping: Mapping,
    stream: Stream,
    plan: RunPlan,
    *,
    progress: ProgressArg,
    pattern: Hint | None,
    desc: str | None,
    in_flight: int = 0,
    spares: bool = False,
) -> Iterator[tuple[Chunk, Any]]:
    whole = extent(arr, mapping)
    label = desc if desc is not None else str(getattr(arr, "filename", "") or "bigarr")
    label = label.rsplit("/", 1)[-1]
    chunks = plan.chunks
    with Progress(progress, total_bytes=chunks.nbytes, total_chunks=len(chunks),
                  desc=label) as bar:
        try:
            if pattern is not None:
                mapping.advise(pattern, whole)
            # a view even for a 0-d array: arr[..., ] of the chunk's key
            steps = execute(plan, lambda c, _blocks: arr[(*c.key, Ellipsis)], [stream],
                            progress=bar)
            if in_flight:  # direct=True
                steps = staged(steps, DirectFill(mapping, in_flight, spares=spares))
            if mapping.access == "private" and ChunkCheck.needed(mapping):
                steps = _checked(steps, ChunkCheck(mapping))
            yield from steps
        finally:
            if pattern is not None and pattern.name in _PATTERN_HINTS and not mapping.closed:
                mapping.advise(parse_hint("normal"), whole)
