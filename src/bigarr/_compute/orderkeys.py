"""Order-preserving keys, and the order statistics searched by them.

Every value of a bool, integer or floating dtype maps to an unsigned integer *key* of the same
width whose order is numpy's sort order (:func:`keys_of`): integers by flipping the sign bit,
floats by flipping the sign bit of positives and every bit of negatives. ``-0.0`` keys just
below ``0.0`` (they compare equal, so either is numpy's answer); NaNs are counted apart and
never keyed. :class:`Target` is one order statistic being narrowed down by its key's top bits
(:mod:`bigarr._compute.orderscan`'s passes).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from bigarr.errors import DtypeError

Array = np.ndarray[Any, Any]


def check_dtype(dtype: np.dtype[Any], name: str, keyed: bool = True) -> None:
    """Refuse what ``name`` cannot order: other than bool, integers and floats, or (``keyed``:
    it orders by integer keys of the values' width) a long double, wider than any integer."""
    if dtype.kind not in "biuf" or (keyed and dtype.itemsize > 8):
        raise DtypeError(
            f"{name} works on bool, integer and floating arrays of up to 8 bytes. Got dtype "
            f"{dtype}: convert first (e.g. with map_blocks), or use numpy on data that fits "
            "in memory."
        )


def key_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    return np.dtype(f"u{dtype.itemsize}")


def keys_of(block: Array) -> Array:
    """Unsigned keys of ``block``'s values, ordered as numpy sorts them (NaN keys: undefined)."""
    if not block.dtype.isnative:  # (big-endian data: its bytes are not the native word's)
        block = block.astype(block.dtype.newbyteorder("="))
    kd = key_dtype(block.dtype)
    kind = block.dtype.kind
    u = np.ascontiguousarray(block).view(kd)
    if kind in "bu":
        return u
    sign = kd.type(1 << (8 * kd.itemsize - 1))
    if kind == "i":
        return cast(Array, np.bitwise_xor(u, sign))
    # negatives flip every bit, positives the sign bit: XOR with the sign bit smeared across
    # the word by an arithmetic shift (all ones for negatives), or-ed with the sign bit
    smear: Array = np.right_shift(u.view(f"i{kd.itemsize}"), 8 * kd.itemsize - 1).view(kd)
    smear |= sign
    smear ^= u
    return smear


def values_of(keys: Array, dtype: np.dtype[Any]) -> Array:
    """The values of ``keys`` (the inverse of :func:`keys_of`)."""
    if not dtype.isnative:
        return values_of(keys, dtype.newbyteorder("=")).astype(dtype)
    kd = key_dtype(dtype)
    keys = np.asarray(keys, dtype=kd)
    kind = dtype.kind
    if kind in "bu":
        return keys.view(dtype)
    sign = kd.type(1 << (8 * kd.itemsize - 1))
    if kind == "i":
        return cast(Array, np.bitwise_xor(keys, sign)).view(dtype)
    positive = keys >= sign
    return np.where(positive, keys ^ sign, ~keys).astype(kd).view(dtype)


class Target:
    """One order statistic being searched: column, rank among the column's sorted non-NaN
    values; narrowed to keys ``[lo, lo + 2**shift)`` holding ``count`` values, ``below`` of the
    column's values lying under ``lo``."""

    __slots__ = ("below", "col", "count", "lo", "rank", "shift", "value")

    def __init__(self, col: int, rank: int) -> None:
        self.col, self.rank = col, rank
        self.lo, self.shift, self.below, self.count = 0, 0, 0, 0
        self.value: int | None = None
