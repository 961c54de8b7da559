"""The memory plan: how many bytes a chunked computation will hold, decided before it runs.

``budget`` means one thing everywhere: the most memory the operation may add to the process.
A computation over chunks holds, at any moment, a bounded number of chunks of each array it
touches: the chunks being worked on (one per thread) plus the chunks fetched ahead (prefetch).
Finished input chunks are released behind (``MADV_DONTNEED``) and finished output chunks are
flushed and then released, so nothing else stays resident. Next to the chunks, a function
allocates temporaries and returns a result in proportion to its chunk (measured, see
:func:`bigarr._compute.runplan.measure_temporaries`), and a reduction that keeps a long axis holds
its partial result. The plan is therefore::

    nbytes = chunk_bytes x in_flight x (streams + temporaries)  +  dirty_bytes
             +  scratch_bytes x threads  +  fixed_bytes

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
    fixed-size working memory per thread (reduction kernels work in small sub-blocks);
``temporaries``
    bytes a function allocates (its temporaries and its result) per byte of its chunk;
``fixed_bytes``
    memory that does not depend on the chunk size: partial results of a reduction that keeps
    a long axis, for example.

:func:`plan_memory` divides a budget into ``chunk_bytes`` and refuses, with
:class:`~bigarr.errors.BudgetError` quoting both numbers, a budget that cannot hold even the
smallest useful chunk. :meth:`MemoryPlan.check` refuses a chunk plan whose real chunks turn out
larger than planned (for example when a single row is bigger than the chunk budget).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from bigarr._os.geometry import PAGE_SIZE, align_up, format_bytes, parse_size
from bigarr.errors import BudgetError

__all__ = ["DEFAULT_BUDGET", "MIN_CHUNK_BYTES", "MemoryPlan", "parse_budget", "plan_memory"]

#: The default ``budget=`` of every chunked operation: the most memory it may add, in bytes.
DEFAULT_BUDGET = 256 << 20

#: Smallest chunk a plan may use, in bytes. Smaller chunks still work in principle, but each
#: chunk costs tens of microseconds of Python and a few syscalls, so a budget that only allows
#: chunks this small is a mistake rather than a plan.
MIN_CHUNK_BYTES = 64 << 10


def parse_budget(budget: int | str | None) -> int:
    """The one parser of ``budget=``: bytes (an int, numpy's too), a string like ``"256MiB"``,
    or None for :data:`DEFAULT_BUDGET`; in bytes.

    Raises
    ------
    BudgetError
        If ``budget`` is not a positive size (a float, a bool, a negative number, ...).
    """
    return parse_size(DEFAULT_BUDGET if budget is None else budget, name="budget")


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
    temporaries: float = 0.0
    """Bytes a function allocates (temporaries and result) per byte of its chunk, held for each
    chunk in flight."""
    fixed_bytes: int = 0
    """Bytes held whatever the chunk size (a reduction's partial result), in bytes."""
    granule: int = PAGE_SIZE
    """Chunks are charged in whole multiples of this many bytes: a page when they are mapped
    (a chunk's pages are what becomes resident), 1 for in-memory and decoded data."""

    data_cap: int = 0
    """Bytes of data a chunk holds at most whatever its budget (the whole array: a small
    array's chunk is small), capping what the temporaries are charged on; 0 for no cap."""

    @property
    def per_chunk(self) -> float:
        """Bytes held per byte of chunk: chunks in flight x (streams + temporaries)."""
        return self.in_flight * (self.streams + self.temporaries)

    def held(self, chunk: int) -> int:
        """Bytes the chunks in flight hold for chunks of ``chunk`` bytes (pages), with the
        temporaries charged on the data a chunk can hold."""
        data = min(chunk, self.data_cap) if self.data_cap else chunk
        return math.ceil(self.in_flight * (self.streams * chunk + self.temporaries * data))

    @property
    def nbytes(self) -> int:
        """Bytes the plan holds at most."""
        return (self.held(self.chunk_bytes) + self.dirty_bytes
                + self.scratch_bytes * self.threads + self.fixed_bytes)

    def describe(self) -> str:
        """One line: the sum that makes up :attr:`nbytes`."""
        text = (f"{format_bytes(self.chunk_bytes)} per chunk x {self.in_flight} chunks in flight "
                f"x {self.streams} arrays")
        if self.temporaries:
            text = (f"{format_bytes(self.chunk_bytes)} per chunk x {self.in_flight} chunks in "
                    f"flight x ({self.streams} arrays + {self.temporaries:.2f} of function "
                    "temporaries per chunk byte)")
        if self.dirty_bytes:
            text += f" + {format_bytes(self.dirty_bytes)} unflushed output"
        if self.scratch_bytes:
            text += f" + {format_bytes(self.scratch_bytes)} scratch x {self.threads} threads"
        if self.fixed_bytes:
            text += f" + {format_bytes(self.fixed_bytes)} of partial results"
        return f"{text} = {self.nbytes} bytes"

    def at_least(self, chunk_bytes: int) -> MemoryPlan:
        """The plan of the smallest budget that leaves ``chunk_bytes`` (page-rounded) per chunk.

        Its :attr:`budget` is the budget to suggest: with a flush threshold that grows with the
        budget (:attr:`dirty_of`), the threshold of *that* budget is part of it.
        """
        chunk = align_up(max(chunk_bytes, 1), self.granule)
        fixed = (self.held(chunk) + self.scratch_bytes * self.threads
                 + self.fixed_bytes)
        budget = fixed + self.dirty_bytes
        if self.dirty_of is not None:  # the least budget with budget >= fixed + dirty(budget)
            budget = fixed
            while budget < fixed + self.dirty_of(budget):
                budget = fixed + self.dirty_of(budget)
        return MemoryPlan(budget, chunk, self.in_flight, self.streams, budget - fixed,
                          self.scratch_bytes, self.threads, self.dirty_of, self.temporaries,
                          self.fixed_bytes, self.granule, self.data_cap)

    def check(self, largest_chunk: int) -> None:
        """Refuse a chunk plan whose largest chunk (bytes) does not fit this memory plan.

        Raises
        ------
        BudgetError
            If ``largest_chunk`` rounded out to whole pages exceeds :attr:`chunk_bytes`,
            quoting the bytes needed and the budget.
        """
        resident = align_up(largest_chunk, self.granule)
        if resident <= self.chunk_bytes:
            return
        need = self.at_least(resident)
        raise BudgetError(
            f"This computation needs {need.nbytes} bytes ({need.describe()}), but the budget is "
            f"{self.budget} bytes: its largest chunk spans {resident} bytes, more than "
            f"the {self.chunk_bytes} bytes per chunk the budget leaves. Raise budget= to at "
            f"least {need.nbytes}, or use fewer threads."
        )


def plan_memory(
    budget: int | str | None,
    *,
    threads: int,
    prefetch: int,
    streams: int,
    dirty_bytes: int | Callable[[int], int] = 0,
    scratch_bytes: int = 0,
    min_chunk: int | None = None,
    temporaries: float = 0.0,
    fixed_bytes: int = 0,
    granule: int = PAGE_SIZE,
    data_cap: int = 0,
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
    temporaries
        Bytes the function allocates per byte of its chunk (measured by the planner).
    fixed_bytes
        Bytes held whatever the chunk size (partial results), in bytes.
    granule
        Chunks are charged in whole multiples of this many bytes (a page when mapped).
    data_cap
        Most data bytes a chunk can hold (the array's size), capping the temporaries' charge.

    Raises
    ------
    BudgetError
        If ``budget`` is not a size, or cannot hold one chunk of ``min_chunk`` bytes per stream
        and chunk in flight; the message quotes the bytes needed and the budget.
    """
    total = parse_budget(budget)
    in_flight = max(1, threads) + max(0, prefetch)
    streams = max(1, streams)
    dirty_of = None if isinstance(dirty_bytes, int) else dirty_bytes
    dirty = dirty_bytes if isinstance(dirty_bytes, int) else dirty_bytes(total)
    temporaries = max(0.0, float(temporaries))
    room = total - dirty - scratch_bytes * max(1, threads) - max(0, fixed_bytes)
    probe = MemoryPlan(total, 0, in_flight, streams, temporaries=temporaries,
                       data_cap=max(0, data_cap))
    per = in_flight * (streams + temporaries)
    chunk = max(0, int(room // per))
    if data_cap and chunk > data_cap:  # the temporaries stop growing at the whole array
        chunk = max(data_cap, int((room - in_flight * temporaries * data_cap)
                                  // (in_flight * streams)))
    while probe.held(chunk + 1) <= room:  # the float division may fall one short
        chunk += 1
    while chunk and probe.held(chunk) > room:
        chunk -= 1
    plan = MemoryPlan(total, max(0, chunk - chunk % granule), in_flight, streams, dirty,
                      scratch_bytes, max(1, threads), dirty_of, temporaries, max(0, fixed_bytes),
                      granule, max(0, data_cap))
    floor = align_up(max(MIN_CHUNK_BYTES if min_chunk is None else min_chunk, 1), granule)
    if plan.chunk_bytes < floor:
        need = plan.at_least(floor)
        raise BudgetError(
            f"This computation needs at least {need.nbytes} bytes ({need.describe()}), but the "
            f"budget is {total} bytes. Raise budget= to at least {need.nbytes}, or use fewer "
            "threads."
        )
    return plan
