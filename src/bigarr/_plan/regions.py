"""Regions: what users pass as ``region=`` (slices, row ranges, chunks, views), parsed once into
byte spans of the mapping.

Accepted forms, all along the first axis unless a view is given:

* ``None``: the whole array;
* an ``int`` row, a ``slice`` with step 1, a ``range``, or a ``(start, stop)`` pair of rows;
* any object with a ``rows`` attribute holding one of those (a planned chunk);
* a view (ndarray) that shares memory with the array: its own byte extent.

A region's span is the smallest byte range containing every element it selects; callers round
it to pages (outward for hints and flushes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._os.geometry import ByteSpan
from bigarr.errors import RegionError

if TYPE_CHECKING:
    from bigarr._os.mapping import Mapping

__all__ = ["Region", "extent", "region_rows", "region_span"]

Region = Any
"""``None``, an int, a slice, a range, a ``(start, stop)`` pair, a chunk, or a view."""


def extent(arr: np.ndarray[Any, Any], mapping: Mapping) -> ByteSpan:
    """Byte span of the mapping that ``arr``'s elements occupy (empty for zero-size arrays)."""
    first = mapping.offset_of(arr)
    if arr.size == 0:
        return ByteSpan(max(first, 0), max(first, 0))
    low = first + sum(min(0, (n - 1) * s) for n, s in zip(arr.shape, arr.strides, strict=True))
    high = first + sum(max(0, (n - 1) * s) for n, s in zip(arr.shape, arr.strides, strict=True))
    return ByteSpan(low, high + arr.itemsize)


def region_rows(nrows: int, region: Region) -> slice:
    """Normalise a row region of an array with ``nrows`` rows to ``slice(start, stop)``.

    Raises
    ------
    RegionError
        For steps other than 1, rows out of range, and forms that are not regions.
    """
    rows = getattr(region, "rows", region)
    if isinstance(rows, (int, np.integer)) and not isinstance(rows, bool):
        index = int(rows) + nrows if rows < 0 else int(rows)
        if not 0 <= index < nrows:
            raise RegionError(f"Row {rows} is out of range for {nrows} rows.")
        return slice(index, index + 1)
    if isinstance(rows, range):
        if rows.step != 1:
            raise RegionError(f"Expected a row range with step 1. Got {rows!r}.")
        rows = slice(rows.start, rows.stop)
    elif isinstance(rows, tuple) and len(rows) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in rows
    ):
        if not 0 <= rows[0] <= rows[1] <= nrows:
            raise RegionError(f"Expected rows (start, stop) within 0..{nrows}. Got {rows!r}.")
        rows = slice(int(rows[0]), int(rows[1]))
    if not isinstance(rows, slice):
        raise RegionError(
            "Expected a region as a row slice, a range, a (start, stop) pair, a chunk or a view. "
            f"Got {type(region).__name__}."
        )
    start, stop, step = rows.indices(nrows)
    if step != 1:
        raise RegionError(f"Expected a row slice with step 1. Got {rows!r}.")
    return slice(start, max(start, stop))


def _chunk_key(shape: tuple[int, ...], key: tuple[Any, ...]) -> tuple[slice, ...]:
    """Check that a chunk's key (one step-1 slice per axis) lies inside ``shape``.

    A chunk's ``rows`` alone would be wrong for F-order plans and for chunks that split a slab,
    so chunks are resolved through their full key.
    """
    if len(key) != len(shape) or not all(
        isinstance(k, slice) and k.step in (None, 1) and 0 <= k.start <= k.stop <= n
        for k, n in zip(key, shape, strict=False)
    ):
        raise RegionError(
            f"Expected a chunk planned for an array of shape {shape}. Got a chunk with key "
            f"{key!r}; plan the chunks with this array's plan()."
        )
    return key


def region_span(arr: Any, region: Region) -> ByteSpan:
    """The mapping byte span a region of ``arr`` covers (the whole array for ``None``).

    Raises
    ------
    RegionError
        If the region is malformed, out of range, or a view of another mapping.
    """
    mapping = arr._bigarr
    if region is None:
        return extent(arr, mapping)
    if isinstance(region, np.ndarray) and not hasattr(region, "rows"):
        if getattr(region, "_bigarr", mapping) is not mapping or (
            region.size and not np.may_share_memory(region, arr)
        ):
            raise RegionError("Expected a view of this array as the region; got another array.")
        return extent(region, mapping)
    key = getattr(region, "key", None)
    if isinstance(key, tuple) and hasattr(region, "span"):  # a planned chunk: its exact block
        return extent(np.ndarray.__getitem__(arr, _chunk_key(arr.shape, key)), mapping)
    if arr.ndim == 0:
        raise RegionError("A 0-d array has no rows; pass region=None.")
    rows = region_rows(arr.shape[0], region)
    return extent(np.ndarray.__getitem__(arr, rows), mapping)
