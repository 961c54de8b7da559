"""Chunk planning: an array's bytes cut into page-aligned pieces that each fit a memory budget.

A plan is a pure value (:class:`ChunkPlan`), computed from the array's geometry alone (shape,
itemsize, order, file offset, page size) without touching any file, so it can be inspected,
compared and property-tested before a single page is mapped.

Geometry
--------
Chunks run along the *slowest* axis (axis 0 in C order, the last axis in F order): a chunk is a
range of whole slabs along that axis, so its bytes are contiguous. Chunks are visited in file
order and cover every element exactly once.

Alignment
---------
Every chunk starts on a page boundary *of the file* (``offset + chunk.span.start`` is a multiple
of ``page``), so hints, flushes and release-behind (``MADV_DONTNEED``) on one chunk never touch a
neighbour's pages. The exceptions, all forced by the geometry:

* the first chunk starts where the array starts, which is not a page boundary when the array
  itself is not page-aligned (a ``.npy`` written by numpy has a 64- or 128-byte header);
* when a single slab along the slowest axis is larger than the budget, the planner splits the next
  axes (recursively): the chunks of one slab then start at the slab's first byte, which is not a
  page boundary unless the slab size is a multiple of the page; every *other* chunk is aligned;
* when the offset is not a multiple of ``gcd(itemsize, page)`` no element boundary can ever fall
  on a page, and the plan is built without alignment (``ChunkPlan.aligned`` is ``False``).

Two aligned starts are ``lcm(slab bytes, page)`` apart along an axis (for example 512 rows of
1000 bytes with 4 KiB pages), and some layouts have none at all: numpy's ``np.save`` puts the
data 128 bytes into the file, so with rows of 256 bytes (or any multiple) no row ever starts on
a page. When no aligned start lies within the budget although one slab fits, the planner cuts
that axis on *slab* boundaries instead, every ``budget // slab bytes`` slabs: chunks of many
rows whose first and last pages are shared with their neighbours (``ChunkPlan.aligned`` is then
``False``). Descending to the next axis instead would give one chunk per slab (a chunk per row),
which made a plan of a large file cost more than the work it planned.

With a budget under one page that fallback is not taken (no chunk smaller than a page is worth
an unaligned start): the planner descends to the next axis, and where even that cannot reach a
page boundary, :class:`~bigarr.errors.BudgetError` quotes the budget and the smallest budget
that would work.

Edge cases
----------
A zero-size array gives an *empty* plan (no chunks). A 0-d array gives one chunk whose ``key``
is ``()`` and whose ``rows`` is ``slice(0, 1)``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigarr._formats.npy import check_shape, parse_order
from bigarr._os.geometry import PAGE_SIZE, ByteSpan, format_bytes, parse_size
from bigarr.errors import BudgetError, DtypeError, ShapeError

__all__ = ["Chunk", "ChunkPlan", "plan_chunks"]


@dataclass(frozen=True, slots=True)
class Chunk:
    """One planned chunk: a rectangular, byte-contiguous block of the array."""

    index: int
    """Position in the plan, ``0 .. len(plan) - 1``."""
    key: tuple[slice, ...]
    """``arr[chunk.key]`` is the chunk's view; one step-1 slice per dimension."""
    rows: slice
    """The range along the plan's axis (step 1, normalised ``start``/``stop``)."""
    span: ByteSpan
    """Bytes this chunk occupies, relative to the array's first byte."""
    depth: int = 0
    """How many leading axes (in memory order) were split to single slabs to fit the budget:
    0 when the chunk is a range of whole slabs along the plan's axis."""

    @property
    def nbytes(self) -> int:
        """Size of the chunk in bytes."""
        return self.span.nbytes


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    """A sequence of chunks covering an array exactly once, each within ``budget`` bytes."""

    shape: tuple[int, ...]
    """Shape of the planned array."""
    itemsize: int
    """Bytes per element."""
    order: str
    """Memory order, ``"C"`` or ``"F"``."""
    axis: int
    """The slowest axis, along which chunks run: 0 for C order, ``ndim - 1`` for F order
    (0 for a 0-d array)."""
    budget: int
    """Largest allowed chunk, in bytes."""
    chunks: tuple[Chunk, ...]
    """The chunks, in file order."""
    offset: int = 0
    """File offset of the array's first byte, in bytes."""
    page: int = PAGE_SIZE
    """Page size the chunk starts are aligned to, in bytes."""
    aligned: bool = True
    """False when chunks may start off page boundaries: the offset makes page alignment
    impossible, or some chunks start on slab (row) boundaries because no page-aligned slab
    start lies within the budget (see the module docstring)."""

    def __len__(self) -> int:
        return len(self.chunks)

    def __iter__(self) -> Iterator[Chunk]:
        return iter(self.chunks)

    def __getitem__(self, i: int) -> Chunk:
        return self.chunks[i]

    @property
    def max_chunk_bytes(self) -> int:
        """Size of the largest chunk in bytes (0 for an empty plan)."""
        return max((c.nbytes for c in self.chunks), default=0)

    @property
    def nbytes(self) -> int:
        """Total bytes of the array."""
        return math.prod(self.shape) * self.itemsize

    @property
    def ndim(self) -> int:
        """Number of dimensions of the planned array."""
        return len(self.shape)

    def __repr__(self) -> str:
        return (
            f"ChunkPlan(shape={self.shape}, itemsize={self.itemsize}, order={self.order!r}, "
            f"axis={self.axis}, budget={format_bytes(self.budget)}, chunks={len(self.chunks)}, "
            f"max_chunk={format_bytes(self.max_chunk_bytes)}, offset={self.offset})"
        )


class _Planner:
    """The greedy recursive planner behind :func:`plan_chunks` (kept out of the public API)."""

    def __init__(self, shape: tuple[int, ...], itemsize: int, perm: list[int], budget: int,
                 offset: int, page: int, aligned: bool) -> None:
        self.shape, self.perm, self.budget = shape, perm, budget
        self.offset, self.page, self.aligned = offset, page, aligned
        # unit[k]: bytes of one slab along axis perm[k] (everything after it in memory order).
        self.unit = [itemsize * math.prod(shape[a] for a in perm[k + 1:]) for k in range(len(perm))]
        # (prefix indices, depth, start, stop, byte start)
        self.out: list[tuple[tuple[int, ...], int, int, int, int]] = []
        self.need = 0  # budget the last failed split would have needed, in bytes
        self.slab_starts = False  # some level was cut on slab boundaries, not pages

    def _cuts(self, depth: int, base: int) -> list[int] | None:
        """Greedy cut points along level ``depth`` of the block at byte ``base``; None: no fit."""
        n, u = self.shape[self.perm[depth]], self.unit[depth]
        most = self.budget // u
        if most >= n:
            return [0, n]
        if most == 0:
            self.need = u
            return None
        if not self.aligned:
            return [*range(0, n, most), n]
        # Slab j starts on a page iff (offset + base + j*u) % page == 0: j = j0 (mod period).
        page = self.page
        g = math.gcd(u, page)
        if (self.offset + base) % g:  # no slab boundary at this level can fall on a page
            return self._slab_starts(n, most)
        period = page // g
        j0 = ((-(self.offset + base) % page) // g) * pow(u // g, -1, period) % period
        cuts, s = [0], 0
        while n - s > most:
            top = s + most
            e = j0 + ((top - j0) // period) * period if top >= j0 else -1
            if e <= s:  # no usable boundary within the budget from s
                fallback = self._slab_starts(n, most)
                if fallback is None:
                    gap = (j0 if s < j0 else s + period) - s
                    self.need = min(gap, n - s) * u
                return fallback
            cuts.append(e)
            s = e
        cuts.append(n)
        return cuts

    def _slab_starts(self, n: int, most: int) -> list[int] | None:
        """Cuts every ``most`` slabs, on slab boundaries instead of pages; None below a page.

        Used when no slab boundary within the budget falls on a page (numpy's 128-byte header
        with 256-byte rows: none ever does). The alternative, descending to the next axis, made
        one chunk per slab (a chunk per row: hours for a large file); here neighbouring chunks
        share their first and last page instead. Budgets under a page keep the old behaviour
        (descend, or refuse): no chunk smaller than a page is worth an unaligned start.
        """
        if self.budget < self.page:
            return None
        self.slab_starts = True
        return [*range(0, n, most), n]

    def block(self, prefix: tuple[int, ...], depth: int, base: int) -> bool:
        cuts = self._cuts(depth, base)
        if cuts is not None:
            u = self.unit[depth]
            self.out.extend((prefix, depth, s, e, base + s * u)
                            for s, e in itertools.pairwise(cuts))
            return True
        if depth + 1 == len(self.perm):
            return False
        u = self.unit[depth]
        return all(self.block((*prefix, j), depth + 1, base + j * u)
                   for j in range(self.shape[self.perm[depth]]))


def plan_chunks(
    shape: int | Sequence[int],
    dtype: Any,
    *,
    order: str = "C",
    budget: int | str,
    offset: int = 0,
    page: int = PAGE_SIZE,
) -> ChunkPlan:
    """Plan page-aligned chunks of an array that each fit ``budget``.

    Parameters
    ----------
    shape
        Shape of the array (an int for 1-d).
    dtype
        Its dtype (anything :func:`numpy.dtype` accepts); only the itemsize matters.
    order
        ``"C"`` (chunks along axis 0) or ``"F"`` (chunks along the last axis).
    budget
        Largest chunk, in bytes, or a string such as ``"64MiB"``.
    offset
        File offset of the array's first byte, in bytes. Chunk starts are aligned to pages of
        the *file*, so the first chunk is short when the array does not start on a page.
    page
        Page size in bytes (the machine's by default).

    Returns
    -------
    ChunkPlan
        Chunks in file order; empty for a zero-size array.

    Raises
    ------
    BudgetError
        If the budget is not a positive size, or is smaller than one element or than the
        distance between two page boundaries the chunks could start on (both numbers quoted).
    ShapeError
        For a malformed shape or order, more than 64 dimensions, or more bytes than this
        platform can address.
    DtypeError
        If ``dtype`` is not a numpy dtype.
    """
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise DtypeError(f"Expected a numpy dtype. Got {dtype!r} ({exc}).") from None
    dims = check_shape(shape, dt)
    itemsize = dt.itemsize
    nbytes_budget = parse_size(budget, name="budget")
    order = parse_order(order)
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ShapeError(f"Expected a non-negative file offset in bytes. Got {offset!r}.")
    if isinstance(page, bool) or not isinstance(page, (int, np.integer)) or page <= 0:
        raise ShapeError(f"Expected a positive page size in bytes. Got {page!r}.")
    offset, page = int(offset), int(page)

    return _plan(dims, itemsize, order, nbytes_budget, offset, page)


@functools.lru_cache(maxsize=32)
def _plan(dims: tuple[int, ...], itemsize: int, order: str, nbytes_budget: int, offset: int,
          page: int) -> ChunkPlan:
    """The plan of validated arguments, cached: plans are values, and ``resident(region)`` asks
    for the same plan of an array again and again."""
    ndim = len(dims)
    axis = ndim - 1 if order == "F" and ndim else 0
    aligned = offset % math.gcd(itemsize, page) == 0 if itemsize else True

    def result(chunks: tuple[Chunk, ...], aligned: bool = aligned) -> ChunkPlan:
        return ChunkPlan(dims, itemsize, order, axis, nbytes_budget, chunks, offset, page, aligned)

    if math.prod(dims) * itemsize == 0:
        return result(())
    if ndim == 0:
        if itemsize > nbytes_budget:
            raise BudgetError(
                f"Expected a budget of at least one element ({itemsize} bytes). "
                f"Got {nbytes_budget} bytes."
            )
        only = Chunk(0, (), slice(0, 1), ByteSpan(0, itemsize))
        return result((only,))
    perm = list(range(ndim)) if order == "C" else list(range(ndim - 1, -1, -1))
    planner = _Planner(dims, itemsize, perm, nbytes_budget, offset, page, aligned)
    if not planner.block((), 0, 0):
        raise BudgetError(
            f"Expected a budget of at least {planner.need} bytes "
            f"({format_bytes(planner.need)}): chunks must start on {page}-byte page boundaries "
            f"of the file and hold whole elements of {itemsize} bytes. Got a budget of "
            f"{nbytes_budget} bytes ({format_bytes(nbytes_budget)}); raise it."
        )
    chunks = []
    unit = planner.unit
    for index, (prefix, depth, start, stop, first) in enumerate(planner.out):
        key = [slice(0, n) for n in dims]
        for k, i in enumerate(prefix):
            key[perm[k]] = slice(i, i + 1)
        key[perm[depth]] = slice(start, stop)
        rows = key[axis]
        span = ByteSpan(first, first + (stop - start) * unit[depth])
        chunks.append(Chunk(index, tuple(key), slice(rows.start, rows.stop), span, depth))
    return result(tuple(chunks), aligned and not planner.slab_starts)
