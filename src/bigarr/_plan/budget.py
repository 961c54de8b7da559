"""The memory plan: how many bytes a chunked computation will hold, decided before it runs.

A computation over chunks holds, at any moment, a bounded number of chunks of each array it
touches: the chunks being worked on (one per thread) plus the chunks fetched ahead (prefetch).
Finished input chunks are released behind (``MADV_DONTNEED``) and finished output chunks are
flushed and then released, so nothing else stays resident. The plan is therefore::

    nbytes = chunk_bytes x in_flight x streams  +  dirty_bytes  +  scratch_bytes x threads

``chunk_bytes``
    the largest chunk of one array, rounded out to whole pages (a chunk's pages are what
    becomes resident);
``in_flight``
    threads plus chunks prefetched ahead;
``streams``
    inputs plus outputs plus chunk-sized results a function returns before they are copied
    into an output;
``dirty_bytes``
    output bytes written but not yet flushed (the flush policy's threshold);
``scratch_bytes``
    fixed-size working memory per thread (reduction kernels work in small sub-blocks).

:func:`plan_memory` divides a budget into ``chunk_bytes`` and refuses, with
:class:`~bigarr.errors.BudgetError` quoting both numbers, a budget that cannot hold even the
smallest useful chunk. :meth:`MemoryPlan.check` refuses a chunk plan whose real chunks turn out
larger than planned (for example when a single row is bigger than the chunk budget).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bigarr._os.geometry import PAGE_SIZE, align_up, format_bytes, parse_size
from bigarr.errors import BudgetError

__all__ = ["MIN_CHUNK_BYTES", "MemoryPlan", "plan_memory"]

#: Smallest chunk a plan may use, in bytes. Smaller chunks still work in principle, but each
#: chunk costs tens of microseconds of Python and a few syscalls, so a budget that only allows
#: chunks this small is a mistake rather than a plan.
MIN_CHUNK_BYTES = 64 << 10


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """How many bytes a chunked computation holds at most, and how they divide."""

    budget: int
    """Bytes the caller allowed."""
    chunk_bytes: int
    """Bytes of one chunk of one array, page-rounded: the chunk budget handed to the planner."""
    in_flight: int
    """Chunks of each array held at once: threads plus chunks prefetched ahead."""
    streams: int
    """Chunk-sized buffers per chunk in flight: inputs + outputs + function results."""
    dirty_bytes: int = 0
    """Output bytes that may be written but not yet flushed (the flush threshold)."""
    scratch_bytes: int = 0
    """Fixed working memory per thread, in bytes."""
    threads: int = 1
    """Worker threads."""
    dirty_of: Callable[[int], int] | None = field(default=None, repr=False, compare=False)
    """When the flush threshold depends on the budget: ``dirty_bytes`` of a budget (bytes)."""

    @property
    def nbytes(self) -> int:
        """Bytes the plan holds at most."""
        return (self.chunk_bytes * self.in_flight * self.streams + self.dirty_bytes
                + self.scratch_bytes * self.threads)

    def describe(self) -> str:
        """One line: the product that makes up :attr:`nbytes`."""
        text = (f"{format_bytes(self.chunk_bytes)} per chunk x {self.in_flight} chunks in flight "
                f"x {self.streams} arrays")
        if self.dirty_bytes:
            text += f" + {format_bytes(self.dirty_bytes)} unflushed output"
        if self.scratch_bytes:
            text += f" + {format_bytes(self.scratch_bytes)} scratch x {self.threads} threads"
        return f"{text} = {self.nbytes} bytes"

    def at_least(self, chunk_bytes: int) -> MemoryPlan:
        """The plan of the smallest budget that leaves ``chunk_bytes`` (page-rounded) per chunk.

        Its :attr:`budget` is the budget to suggest: with a flush threshold that grows with the
        budget (:attr:`dirty_of`), the threshold of *that* budget is part of it.
        """
        chunk = align_up(max(chunk_bytes, 1), PAGE_SIZE)
        fixed = chunk * self.in_flight * self.streams + self.scratch_bytes * self.threads
        budget = fixed + self.dirty_bytes
        if self.dirty_of is not None:  # the least budget with budget >= fixed + dirty(budget)
            budget = fixed
            while budget < fixed + self.dirty_of(budget):
                budget = fixed + self.dirty_of(budget)
        return MemoryPlan(budget, chunk, self.in_flight, self.streams, budget - fixed,
                          self.scratch_bytes, self.threads, self.dirty_of)

    def check(self, largest_chunk: int) -> None:
        """Refuse a chunk plan whose largest chunk (bytes) does not fit this memory plan.

        Raises
        ------
        BudgetError
            If ``largest_chunk`` rounded out to whole pages exceeds :attr:`chunk_bytes`,
            quoting the bytes needed and the budget.
        """
        resident = align_up(largest_chunk, PAGE_SIZE)
        if resident <= self.chunk_bytes:
            return
        need = self.at_least(resident)
        raise BudgetError(
            f"This computation needs {need.nbytes} bytes ({need.describe()}), but the budget is "
            f"{self.budget} bytes: its largest chunk spans {resident} bytes of pages, more than "
            f"the {self.chunk_bytes} bytes per chunk the budget leaves. Raise budget= to at "
            f"least {need.nbytes}, or use fewer threads."
        )


def plan_memory(
    budget: int | str,
    *,
    threads: int,
    prefetch: int,
    streams: int,
    dirty_bytes: int | Callable[[int], int] = 0,
    scratch_bytes: int = 0,
    min_chunk: int | None = None,
) -> MemoryPlan:
    """Divide ``budget`` into a per-chunk byte budget.

    Parameters
    ----------
    budget
        Total bytes allowed, an int or a string such as ``"256MiB"``.
    threads
        Worker threads (each holds one chunk of every stream).
    prefetch
        Chunks fetched ahead of the workers.
    streams
        Chunk-sized buffers per chunk in flight (inputs + outputs + function results).
    dirty_bytes
        Output bytes the flush policy lets accumulate before flushing, or a function of the
        budget (bytes) giving them (a share of the budget).
    scratch_bytes
        Fixed working memory per thread, in bytes.
    min_chunk
        The smallest chunk the computation can use, in bytes (default
        :data:`MIN_CHUNK_BYTES`).

    Raises
    ------
    BudgetError
        If ``budget`` is not a size, or cannot hold one chunk of ``min_chunk`` bytes per stream
        and chunk in flight; the message quotes the bytes needed and the budget.
    """
    total = parse_size(budget, name="budget")
    in_flight = max(1, threads) + max(0, prefetch)
    streams = max(1, streams)
    dirty_of = None if isinstance(dirty_bytes, int) else dirty_bytes
    dirty = dirty_bytes if isinstance(dirty_bytes, int) else dirty_bytes(total)
    chunk = (total - dirty - scratch_bytes * max(1, threads)) // (in_flight * streams)
    plan = MemoryPlan(total, max(0, chunk - chunk % PAGE_SIZE), in_flight, streams, dirty,
                      scratch_bytes, max(1, threads), dirty_of)
    floor = align_up(max(MIN_CHUNK_BYTES if min_chunk is None else min_chunk, 1), PAGE_SIZE)
    if plan.chunk_bytes < floor:
        need = plan.at_least(floor)
        raise BudgetError(
            f"This computation needs at least {need.nbytes} bytes ({need.describe()}), but the "
            f"budget is {total} bytes. Raise budget= to at least {need.nbytes}, or use fewer "
            "threads."
        )
    return plan
