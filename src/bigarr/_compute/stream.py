"""Streaming over a mapped array chunk by chunk, with bounded resident memory.

:func:`iter_chunks` walks a :class:`~bigarr._plan.chunks.ChunkPlan` and yields ``(chunk, view)``
pairs. Two options keep memory bounded and the disk busy:

release-behind (``release=``)
    When the consumer asks for the next chunk, the finished one is dropped from this process's
    resident memory with ``MADV_DONTNEED``. On a read-only mapping that only unmaps clean pages
    (they stay in the page cache and re-fault from it if touched again). On a shared mapping the
    chunk is first flushed (``msync(MS_SYNC)``), so nothing written is lost. On a private
    (copy-on-write) mapping ``MADV_DONTNEED`` would throw the scratch edits away, so
    release-behind is off there and asking for it raises :class:`~bigarr.errors.HintError`.
    Default: on, except in private mode. With prefetch on, the helper thread does the release
    (flush and unmap of a finished chunk cost CPU time: about 0.07 s per 2 GiB of 4 KiB page-cache
    pages), so it overlaps the consumer's work on the next chunk; an error of such a flush is
    re-raised in the consumer at its next step.

prefetch (``prefetch=``)
    A helper thread fetches the *next* chunk while the consumer works on the current one, so
    I/O overlaps compute. ``"willneed"`` starts asynchronous read-ahead of the chunk into the
    page cache (nothing is mapped, so it costs no resident memory of this process);
    ``"populate_read"`` (Linux 5.14+) reads *and maps* the pages, synchronously in the helper.
    ``"auto"`` chooses per 4 MiB piece: ``populate_read`` when the piece is already in the page
    cache (mapping it costs no I/O and moves the page faults to the helper), else
    ``willneed``. ``True`` (the default) means ``"willneed"``, the cheapest for the helper: on
    this project's test machine (2 shared vCPUs, ext4 on a virtio disk) ``populate_read`` of
    uncached pages made cold scans slower (the helper faults page by page), and ``"auto"`` was
    the fastest warm on a quiet machine but slower than no prefetch when the CPUs were busy (the
    helper then competes with the consumer for a core); see the chunking section of
    ``bench/README.md``.

Memory budget: with prefetch, two chunks can be resident at once (the one being processed, and
either the previous one until the helper has released it or the next one it fetches: the
helper runs its tasks in order, releasing chunk ``i - 1`` before fetching ``i + 1``), so the plan
is made with *half* the budget. That holds by construction, not by the helper's timing: before
handing out chunk ``i`` the consumer releases, itself, any chunk up to ``i - 2`` the helper has
not released yet (:meth:`_Helper.catch_up`), so a helper starved of CPU costs overlap, never
memory; without prefetch, chunks may be as
large as the budget. Either way the bytes the iteration keeps mapped stay within ``budget``
(plus at most a page at each chunk edge).

The helper thread never outlives the iteration: the generator stops and joins it in a
``finally`` block, which runs when the loop ends, when the consumer breaks out (the generator
is closed, explicitly or when it is garbage-collected) and when an exception is raised.
Population proceeds in pieces of at most :data:`PREFETCH_PIECE` bytes under a lock shared with
release-behind, so a chunk that has been released is never re-populated behind the consumer.

Residency (:func:`residency`) uses ``mincore``: a page counts as resident when it is in the
page cache, whether or not this process has it mapped.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._compute.progress import Progress, ProgressArg
from bigarr._os.geometry import PAGE_SIZE, ByteSpan, parse_size
from bigarr._os.hints import Hint, parse_hint
from bigarr._os.mapping import check_mapped
from bigarr._plan.chunks import Chunk, ChunkPlan, plan_chunks
from bigarr._plan.regions import Region, extent, region_span
from bigarr.errors import BigArrError, BudgetError, HintError, RegionError

if TYPE_CHECKING:
    from bigarr._os.mapping import Mapping

__all__ = [
    "PREFETCH_PIECE",
    "ChunkResidency",
    "Residency",
    "advise",
    "iter_chunks",
    "plan_for",
    "residency",
]

#: Largest piece the prefetch thread populates between checks that the chunk is still ahead of
#: the consumer, in bytes (bounds what a late prefetch can leave resident behind it).
PREFETCH_PIECE = 4 << 20

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


def residency(arr: Any, region: Region = None, *, budget: int | str = "64MiB") -> Residency:
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
    whole = extent(arr, mapping)
    # One mincore call over the union of the region and the array, then slice it.
    base = ByteSpan(min(span.start, whole.start), max(span.stop, whole.stop)).outward(PAGE_SIZE)
    pages = mapping.residency(base)
    first = base.start // PAGE_SIZE

    def count(s: ByteSpan) -> tuple[int, int]:
        r = s.pages(PAGE_SIZE)
        sel = pages[r.start - first:r.stop - first]
        return int(np.count_nonzero(sel)), len(r)

    res, total = count(span)
    per: list[ChunkResidency] = []
    if arr.size and (arr.flags.c_contiguous or arr.flags.f_contiguous):
        origin = mapping.offset_of(arr)
        for c in plan_for(arr, budget):
            cs = c.span.shift(origin)
            if cs.start < span.stop and span.start < cs.stop:
                per.append(ChunkResidency(c.index, *count(cs)))
    return Residency(res, total, PAGE_SIZE, tuple(per))


class _Helper:
    """The helper thread: prefetches chunks ahead of the consumer and releases finished ones.

    Tasks run in the order they are queued: ``("fetch", i)`` then, once the consumer is done
    with chunk ``i - 1``, ``("release", i - 1)``, and so on; so a chunk is released before the
    one after next is fetched, and at most two chunks are mapped at a time. A release the
    helper has not done by the time the consumer moves two chunks on is done by the consumer
    (:meth:`catch_up`), and the helper then skips it.

    ``mode`` is ``"willneed"``, ``"populate_read"`` or ``"auto"``: per piece, ``populate_read``
    when the piece is already in the page cache (mapping it costs no I/O and spares the
    consumer the page faults), ``willneed`` otherwise (asynchronous read-ahead). A failed
    prefetch only turns prefetching off (it is a hint); a failed release (a flush that did not
    reach the disk) is re-raised in the consumer by :meth:`check`.
    """

    def __init__(self, mapping: Mapping, spans: list[ByteSpan], mode: str,
                 lock: threading.Lock) -> None:
        self.mapping, self.spans, self.lock = mapping, spans, lock
        self.mode: str | None = mode
        self.populate, self.willneed = parse_hint("populate_read"), parse_hint("willneed")
        self.dontneed = parse_hint("dontneed")
        self.released = -1  # highest chunk index the consumer has finished with
        self.done = -1  # highest chunk index whose release is done (chunks release in order)
        self.todo: queue.SimpleQueue[tuple[str, int] | None] = queue.SimpleQueue()
        self.failure: BaseException | None = None
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="bigarr-prefetch", daemon=True)
        self.thread.start()

    def _hint_for(self, piece: ByteSpan) -> Hint:
        if self.mode == "willneed":
            return self.willneed
        if self.mode == "populate_read":
            return self.populate
        return self.populate if self.mapping.residency(piece).all() else self.willneed

    def _fetch(self, i: int) -> None:
        span = self.spans[i]
        for start in range(span.start, span.stop, PREFETCH_PIECE):
            piece = ByteSpan(start, min(span.stop, start + PREFETCH_PIECE))
            with self.lock:
                if i <= self.released or self.mode is None:
                    return
                hint = self._hint_for(piece)
                if not self.mapping.advise(hint, piece) and hint is self.populate:
                    self.mode = "willneed"  # the kernel lacks populate_read
                    self.mapping.advise(self.willneed, piece)

    def _release(self, i: int) -> None:
        with self.lock:
            if i <= self.done:
                return  # the consumer released it itself (catch_up): the helper was behind
        self.mapping.sync(self.spans[i])  # a no-op unless shared
        self.mapping.advise(self.dontneed, self.spans[i])
        with self.lock:
            self.done = max(self.done, i)

    def catch_up(self, upto: int) -> None:
        """Release, in the consumer, every chunk up to ``upto`` the helper has not released yet.

        Called before each chunk is handed out with ``upto`` two chunks back, so the consumer
        is never more than one chunk ahead of the last release, however late the helper
        thread is scheduled (under CPU contention it used to fall behind by many chunks while
        the consumer faulted in new ones: 460 MiB resident for a 64 MiB budget, issue 11).
        """
        with self.lock:
            start, self.done = self.done + 1, max(self.done, upto)
        for i in range(start, upto + 1):
            self.mapping.sync(self.spans[i])  # a no-op unless shared
            self.mapping.advise(self.dontneed, self.spans[i])

    def _run(self) -> None:
        while (task := self.todo.get()) is not None:
            kind, i = task
            try:
                if kind == "release":
                    self._release(i)
                else:
                    self._fetch(i)
            except (BigArrError, OSError) as exc:
                if kind == "release":
                    self.failure = self.failure or exc
                else:
                    self.mode = None  # e.g. closed under us: prefetch is only a hint

    def fetch(self, i: int) -> None:
        self.todo.put(("fetch", i))

    def release(self, i: int) -> None:
        with self.lock:
            self.released = i  # a late fetch of chunk i must not map it again
        self.todo.put(("release", i))

    def check(self) -> None:
        """Re-raise, in the consumer, the first error of a release done by the helper."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def stop(self) -> None:
        """Skip pending fetches, finish pending releases, and join the thread (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        with self.lock:
            self.mode = None
        self.todo.put(None)
        self.thread.join()


def _parse_prefetch(prefetch: bool | str | None) -> str | None:
    if prefetch is None or prefetch is False:
        return None
    if prefetch is True:
        prefetch = "willneed"
    name = prefetch.strip().lower().replace("-", "_") if isinstance(prefetch, str) else None
    if name not in ("auto", "willneed", "populate_read"):
        raise HintError("Expected prefetch True, False, 'auto', 'willneed' or 'populate_read'. "
                        f"Got {prefetch!r}.")
    if parse_hint("willneed").advice is None:
        return None  # no madvise here: prefetch is a no-op
    if parse_hint("populate_read").advice is None:
        return "willneed"
    return name


def iter_chunks(
    arr: Any,
    budget: int | str = "64MiB",
    *,
    progress: ProgressArg = None,
    release: bool | None = None,
    prefetch: bool | str | None = True,
    hint: str | Hint | None = None,
    desc: str | None = None,
) -> Iterator[tuple[Chunk, Any]]:
    """Yield ``(chunk, view)`` for each chunk of ``arr``; see the module docstring.

    Parameters
    ----------
    arr
        A contiguous :class:`bigarr.memmap` (or a contiguous view of one).
    budget
        Bytes the iteration may keep mapped at once (``"64MiB"`` by default). With prefetch,
        chunks are planned at half of it.
    progress
        ``None`` (a bar on a TTY), ``True``, ``False`` or callbacks; see
        :mod:`bigarr._compute.progress`.
    release
        Release-behind: drop each finished chunk from resident memory (after flushing it in
        shared mode). ``None`` means on, except in private mode.
    prefetch
        ``True`` (``"willneed"``), ``"auto"``, ``"populate_read"``, ``"willneed"`` or
        ``False``.
    hint
        An access hint applied to the whole array before the first chunk (for example
        ``"sequential"``). An access-pattern hint (normal, sequential, random) is reset to
        ``"normal"`` when the iteration ends.
    desc
        Label for the progress bar (the file name by default).

    Raises
    ------
    HintError
        For ``release=True`` on a private mapping, or an unknown hint.
    BudgetError
        If the budget cannot be met.
    RegionError
        If the array is detached or not contiguous.
    FileChangedError
        If the file shrinks under the array (checked before each chunk, instead of a SIGBUS).
    """
    mapping = _mapping_of(arr)
    if release is None:
        release = mapping.access != "private"
    elif release and mapping.access == "private":
        raise HintError(
            "release=True would drop a private mapping's scratch edits (MADV_DONTNEED); "
            "use release=False, or commit() or discard() the edits explicitly."
        )
    fetch = _parse_prefetch(prefetch)
    pattern = parse_hint(hint) if hint is not None else None
    nbytes = parse_size(budget, name="budget")
    halved = fetch is not None and nbytes >= 2
    try:
        plan = plan_for(arr, nbytes // 2 if halved else nbytes)
    except BudgetError as exc:
        if not halved:
            raise
        raise BudgetError(
            f"{exc} (With prefetch on, chunks are planned at half of the budget of {nbytes} "
            "bytes given; double the budget, or pass prefetch=False.)"
        ) from None
    return _walk(arr, mapping, plan, progress=progress, release=bool(release), fetch=fetch,
                 pattern=pattern, desc=desc)


def _walk(
    arr: Any,
    mapping: Mapping,
    plan: ChunkPlan,
    *,
    progress: ProgressArg,
    release: bool,
    fetch: str | None,
    pattern: Hint | None,
    desc: str | None,
) -> Iterator[tuple[Chunk, Any]]:
    origin = mapping.offset_of(arr)
    spans = [c.span.shift(origin) for c in plan]
    whole = extent(arr, mapping)
    dontneed = parse_hint("dontneed")
    label = desc if desc is not None else str(getattr(arr, "filename", "") or "bigarr")
    label = label.rsplit("/", 1)[-1]
    helper: _Helper | None = None
    with Progress(progress, total_bytes=plan.nbytes, total_chunks=len(plan), desc=label) as bar:
        try:
            if pattern is not None:
                mapping.advise(pattern, whole)
            if fetch is not None and len(plan) > 1:
                helper = _Helper(mapping, spans, fetch, threading.Lock())
            for c in plan:
                check_mapped(mapping)  # a file cut under us: an error, not SIGBUS
                if release and helper is not None:
                    helper.catch_up(c.index - 2)  # the bound holds if the helper lags
                if helper is not None and c.index + 1 < len(plan):
                    helper.fetch(c.index + 1)
                yield c, arr[(*c.key, Ellipsis)]  # a view even for a 0-d array
                if release and helper is not None:
                    helper.release(c.index)  # flushed and dropped by the helper
                    helper.check()
                elif release:
                    mapping.sync(spans[c.index])  # a no-op unless shared
                    mapping.advise(dontneed, spans[c.index])
                bar.advance(c.index, c.nbytes)
            if helper is not None:
                helper.stop()
                helper.check()
        finally:
            if helper is not None:
                helper.stop()
            if pattern is not None and pattern.name in _PATTERN_HINTS and not mapping.closed:
                mapping.advise(parse_hint("normal"), whole)
