"""The order-statistics kernels of ``_native.c`` (its "order statistics" section), on numpy arrays.

Quantiles count order-preserving unsigned keys (:mod:`bigarr._compute.orderscan`). These
wrappers compute those keys from a block's raw bits inside C, so a pass makes no key array, no
NaN mask and no index temporaries: :func:`hist` counts the top bits of every key per column,
and :func:`ranges` either histograms the next bits of the keys inside given key ranges or
gathers those keys. Each returns False (or None) where the kernels do not apply (the extension
not built or built without them, a non-native byte order, a non-contiguous block), and the
caller takes its numpy path, which gives the same counts and keys.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np

from bigarr._compute import native

__all__ = ["available", "hist", "ranges", "scan"]

Array = np.ndarray[Any, Any]
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_WORD = {1: ctypes.c_uint8, 2: ctypes.c_uint16, 4: ctypes.c_uint32, 8: ctypes.c_uint64}


def _declare() -> dict[int, tuple[Any, Any, Any]] | None:
    """``{itemsize: (hist, ranges, scan kernels)}`` with their argument types set, or None."""
    lib = native.lib
    if lib is None:
        return None
    found: dict[int, tuple[Any, Any, Any]] = {}
    try:
        for size, word in _WORD.items():
            h, r = getattr(lib, f"ord_hist_u{size}"), getattr(lib, f"ord_ranges_u{size}")
            h.argtypes = [_PTR, _I64, _I64, ctypes.c_int, word, ctypes.c_int, _PTR, _PTR]
            h.restype = None
            r.argtypes = [_PTR, _I64, _I64, ctypes.c_int, word, _PTR, _PTR, _PTR, _PTR, _PTR,
                          _PTR, _PTR, _PTR, _I64, _PTR]
            r.restype = None
            f = getattr(lib, f"ord_scan_u{size}")
            f.argtypes = [_PTR, _I64, ctypes.c_int, word, ctypes.c_int, _PTR, _PTR, _I64, _PTR,
                          _PTR, _PTR, _PTR, _I64, _PTR]
            f.restype = None
            found[size] = (h, r, f)
    except AttributeError:  # a library built before these kernels existed
        return None
    return found


_KERNELS = _declare()


def available() -> bool:
    """True when the order-statistics kernels are in use."""
    return _KERNELS is not None


def _mode(dtype: np.dtype[Any]) -> tuple[int, int] | None:
    """``(mode, bits of +inf)`` the kernels take for ``dtype`` (see ``_native.c``), or None."""
    if _KERNELS is None or dtype.itemsize not in _WORD or not dtype.isnative:
        return None
    if dtype.kind in "bu":
        return 0, 0
    if dtype.kind == "i":
        return 1, 0
    if dtype.kind == "f":
        return 2, int(np.array(np.inf, dtype=dtype).view(f"u{dtype.itemsize}")[()])
    return None


def _ptr(a: Array | None) -> int | None:
    return None if a is None else int(a.ctypes.data)


def _block(b: Array) -> tuple[int, int, int, int] | None:
    """``(itemsize, mode, inf, rows)`` of a 2-d C-contiguous block the kernels take."""
    got = _mode(b.dtype)
    if got is None or b.ndim != 2 or not b.flags.c_contiguous or not b.flags.aligned:
        return None
    return b.dtype.itemsize, got[0], got[1], b.shape[0]


def hist(b: Array, shift: int, counts: Array, nans: Array) -> bool:
    """Add, per column ``j`` of the (rows, cols) block ``b``, the count of each key's top bits
    (``key >> shift``) to ``counts[j]`` (int64, shape ``(cols, 2**(bits - shift))``, C order)
    and the NaN count to ``nans[j]`` (int64). False (nothing added) where the kernel does not
    apply."""
    got = _block(b)
    if got is None or _KERNELS is None:
        return False
    size, mode, inf, rows = got
    cols = b.shape[1]
    if (counts.dtype != np.int64 or not counts.flags.c_contiguous or nans.dtype != np.int64
            or counts.shape != (cols, 1 << (8 * size - shift)) or nans.shape != (cols,)):
        return False
    if b.size:
        _KERNELS[size][0](_ptr(b), rows, cols, mode, inf, shift, _ptr(counts), _ptr(nans))
    return True


def ranges(b: Array, rstart: Array, rlo: Array, rhi: Array, *,
           sub: tuple[Array, Array, Array] | None = None,
           out: Array | None = None, outr: Array | None = None) -> int | None:
    """Visit the non-NaN keys of the (rows, cols) block ``b`` inside key ranges.

    Column ``j``'s ranges are ``rstart[j]:rstart[j + 1]`` (int64, ``cols + 1`` entries), range
    ``r`` the keys ``rlo[r] ..= rhi[r]`` (key dtype), disjoint within a column. With ``sub =
    (sshift, soff, counts)`` (int32, int64, int64) a key in range ``r`` counts in
    ``counts[soff[r] + ((key - rlo[r]) >> sshift[r])]``; otherwise it is written to ``out``
    (key dtype) and its range to ``outr`` (int32, optional) while they have room. Returns how
    many keys lay inside (more than ``out.size``: some were not written), or None where the
    kernel does not apply."""
    got = _block(b)
    if got is None or _KERNELS is None:
        return None
    size, mode, inf, rows = got
    cols = b.shape[1]
    kd = np.dtype(f"u{size}")
    if rstart.dtype != np.int64 or rstart.shape != (cols + 1,) or rlo.dtype != kd \
            or rhi.dtype != kd or rlo.shape != rhi.shape or int(rstart[-1]) > rlo.size:
        return None
    cap = 0
    if sub is not None:
        sshift, soff, counts = sub
        if (sshift.dtype != np.int32 or soff.dtype != np.int64 or counts.dtype != np.int64
                or sshift.shape != rlo.shape or soff.shape != rlo.shape):
            return None
        span = (rhi.astype(np.uint64) - rlo.astype(np.uint64)) >> sshift.astype(np.uint64)
        if rlo.size and int((soff + span.astype(np.int64)).max()) >= counts.size:
            return None  # a count past the end: never
        if outr is not None:
            return None
    else:
        if out is None or out.dtype != kd or (outr is not None and (
                outr.dtype != np.int32 or outr.size < out.size)):
            return None
        cap = out.size
        sshift = soff = counts = None  # type: ignore[assignment]
    n = np.zeros(1, dtype=np.int64)
    if b.size:
        _KERNELS[size][1](_ptr(b), rows, cols, mode, inf, _ptr(rstart), _ptr(rlo), _ptr(rhi),
                          _ptr(sshift), _ptr(soff), _ptr(counts), _ptr(out), _ptr(outr), cap,
                          _ptr(n))
    return int(n[0])


def scan(b: Array, shift: int, counts: Array, nans: Array, *,
         windows: tuple[Array, Array, Array, Array] | None = None) -> int | None:
    """:func:`hist` of a one-column block ``b`` (``counts`` of shape ``(1, 2**(bits - shift))``,
    ``nans`` of shape ``(1,)``), and in the same sweep, for ``windows = (lo, span, below,
    out)``: for each window ``w`` (keys ``lo[w] ..= lo[w] + span[w]``, key dtype, disjoint) add
    the count of keys under it to ``below[w]`` (int64), and write the keys inside any window to
    ``out`` (key dtype, room for ``out.size - 1`` of them: the last entry is scratch).

    Returns the count of keys written (``out.size`` when more lay inside than it holds: they
    were not all written), 0 without windows, or None where the kernel does not apply
    (nothing added)."""
    got = _block(b)
    if got is None or _KERNELS is None or b.shape[1] != 1:
        return None
    size, mode, inf, rows = got
    kd = np.dtype(f"u{size}")
    if (counts.dtype != np.int64 or not counts.flags.c_contiguous or nans.dtype != np.int64
            or counts.shape != (1, 1 << (8 * size - shift)) or nans.shape != (1,)):
        return None
    n = np.zeros(1, dtype=np.int64)
    lo = span = below = out = None
    nw = cap = 0
    if windows is not None:
        lo, span, below, out = windows
        nw, cap = lo.size, out.size - 1
        if (lo.dtype != kd or span.dtype != kd or out.dtype != kd or span.shape != lo.shape
                or below.dtype != np.int64 or below.shape != lo.shape or cap < 0
                or not out.flags.c_contiguous):
            return None
    if rows:
        _KERNELS[size][2](_ptr(b), rows, mode, inf, shift, _ptr(counts), _ptr(nans), nw,
                          _ptr(lo), _ptr(span), _ptr(below), _ptr(out), cap, _ptr(n))
    return int(n[0])
