"""The native reduction kernels (``_native.c``): loading them, and calling them on numpy arrays.

The one owner of the optional C extension on the Python side. :data:`lib` is the loaded library,
or None when the extension was not built (no compiler at install time) or is switched off with
the environment variable ``BIGARR_NATIVE=0``; every caller then takes its numpy kernel. The
functions are called through :mod:`ctypes`, which releases the GIL for the call, so reductions
scale with threads. Each wrapper takes only the layouts and dtypes its C function handles and
returns None for anything else, so callers fall back per block.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
from typing import Any

import numpy as np

__all__ = ["available", "hist_uniform", "lib", "sum_blocks", "var_blocks"]

_DOUBLE_P = ctypes.POINTER(ctypes.c_double)
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_F8 = ctypes.c_double


def _load() -> ctypes.CDLL | None:
    if os.environ.get("BIGARR_NATIVE", "1").strip().lower() in ("0", "off", "false", "no"):
        return None
    spec = importlib.util.find_spec("bigarr._compute._native")
    if spec is None or not spec.origin:
        return None
    try:
        dll = ctypes.CDLL(spec.origin)
    except OSError:
        return None
    for code in ("f4", "f8"):
        getattr(dll, f"sum_cols_{code}").argtypes = [_PTR, _I64, _I64, _I64, _PTR]
        getattr(dll, f"sum_flat_{code}").argtypes = [_PTR, _I64, _I64, _PTR]
        getattr(dll, f"var_cols_{code}").argtypes = [_PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR]
        getattr(dll, f"var_flat_{code}").argtypes = [_PTR, _I64, _I64, _PTR, _PTR, _PTR]
    for name in ("hist_f4_f4", "hist_f4_f8", "hist_f8_f8"):
        getattr(dll, name).argtypes = [_PTR, _I64, _F8, _F8, _F8, _F8, _I64, ctypes.c_int,
                                       _PTR, _PTR, _PTR]
    for fn in ("sum_cols", "sum_flat", "var_cols", "var_flat"):
        for code in ("f4", "f8"):
            getattr(dll, f"{fn}_{code}").restype = None
    return dll


#: The loaded kernels, or None (numpy kernels everywhere).
lib: ctypes.CDLL | None = _load()

_CODES = {np.dtype(np.float32): "f4", np.dtype(np.float64): "f8"}


def available() -> bool:
    """True when the native kernels are in use."""
    return lib is not None


def _ptr(a: np.ndarray[Any, Any]) -> int:
    return int(a.ctypes.data)


def _columns(block: np.ndarray[Any, Any], axes: tuple[int, ...]) -> tuple[int, int, int] | None:
    """``(p, n, c)`` when ``block`` (C-contiguous) reduces along the axes ``axes`` that are
    exactly one contiguous run ``a .. b`` of its axes: ``p`` groups before, ``n`` reduced
    elements per group and column, ``c`` kept elements after (1 when the run reaches the end).
    """
    if not axes or list(axes) != list(range(axes[0], axes[-1] + 1)):
        return None
    a, b = axes[0], axes[-1] + 1
    shape = block.shape
    p = int(np.prod(shape[:a], dtype=np.int64))
    n = int(np.prod(shape[a:b], dtype=np.int64))
    c = int(np.prod(shape[b:], dtype=np.int64))
    return p, n, c


def _usable(block: np.ndarray[Any, Any]) -> str | None:
    if lib is None or not block.flags.c_contiguous or block.size == 0:
        return None
    return _CODES.get(block.dtype)


#: Fewest kept columns for the per-column kernels: below this, each row's inner loop is too
#: short to vectorise, and numpy's own loops are as fast.
MIN_COLUMNS = 8


def sum_blocks(block: np.ndarray[Any, Any],
               axes: tuple[int, ...]) -> np.ndarray[Any, Any] | None:
    """Sums of a C-contiguous float32/float64 ``block`` over ``axes`` in float64, with the
    reduced axes kept as length 1; None where the native kernel does not apply."""
    code = _usable(block)
    geo = _columns(block, axes) if code else None
    if geo is None or lib is None:
        return None
    p, n, c = geo
    keep = tuple(1 if i in axes else m for i, m in enumerate(block.shape))
    if n == 0:
        return None
    out = np.empty(p * c, dtype=np.float64)
    if c == 1:
        getattr(lib, f"sum_flat_{code}")(_ptr(block), p, n, _ptr(out))
    elif c >= MIN_COLUMNS:
        getattr(lib, f"sum_cols_{code}")(_ptr(block), p, n, c, _ptr(out))
    else:
        return None
    return out.reshape(keep)


def var_blocks(block: np.ndarray[Any, Any],
               axes: tuple[int, ...]) -> tuple[np.ndarray[Any, Any], ...] | None:
    """``(shift, mean, m2)`` of a C-contiguous float32/float64 ``block`` over ``axes`` (shift: the
    first element along the reduced axes; mean and m2 of the shifted values), each with the
    reduced axes kept as length 1; None where the native kernel does not apply."""
    code = _usable(block)
    geo = _columns(block, axes) if code else None
    if geo is None or lib is None:
        return None
    p, n, c = geo
    if n == 0:
        return None
    keep = tuple(1 if i in axes else m for i, m in enumerate(block.shape))
    shift, mean, m2 = (np.empty(p * c, dtype=np.float64) for _ in range(3))
    if c == 1:
        getattr(lib, f"var_flat_{code}")(_ptr(block), p, n, _ptr(shift), _ptr(mean), _ptr(m2))
    elif c >= MIN_COLUMNS:
        getattr(lib, f"var_cols_{code}")(_ptr(block), p, n, c, _ptr(shift), _ptr(mean),
                                         _ptr(m2))
    else:
        return None
    return shift.reshape(keep), mean.reshape(keep), m2.reshape(keep)


def hist_uniform(flat: np.ndarray[Any, Any], first: Any, last: Any, denom: Any, n: int,
                 edges: np.ndarray[Any, Any], upper: np.ndarray[Any, Any],
                 counts: np.ndarray[Any, Any]) -> bool:
    """Add the counts of ``n`` equal bins of a contiguous float32/float64 ``flat`` to ``counts``
    (int64), as ``numpy.histogram`` bins them: kept where ``first <= v <= last`` compared in
    numpy's promoted type, bin index ``((v - first) / denom) * n`` in numpy's dtypes (``denom``
    is numpy's ``last - first``, whose type may widen the division),
    then numpy's one-down / one-up corrections against ``edges`` and ``upper`` (``edges[1:n]``
    followed by +inf), which must not decrease. False (nothing added) where the native kernel
    does not apply: other dtypes, or operands that numpy would promote past the edges' dtype.
    """
    code = _usable(flat)
    ecode = _CODES.get(edges.dtype)
    if code is None or ecode is None or lib is None or (code, ecode) == ("f8", "f4"):
        return False
    if counts.dtype != np.int64 or not counts.flags.c_contiguous or counts.size < n:
        return False
    with np.errstate(all="ignore"):
        if np.result_type(edges.dtype, first) != edges.dtype:
            return False  # numpy's subtraction would run wider than the edges' dtype
        quotient = np.result_type(edges.dtype, denom)
        compare = np.result_type(flat.dtype, first, last)
        if quotient not in _CODES or compare not in _CODES:
            return False
        lo, hi = float(compare.type(first)), float(compare.type(last))
        e_first, f_denom = float(edges.dtype.type(first)), float(quotient.type(denom))
    if not all(np.isfinite(v) for v in (lo, hi, e_first, f_denom)) or f_denom <= 0:
        return False
    e = np.ascontiguousarray(edges)
    u = np.ascontiguousarray(upper, dtype=edges.dtype)
    wide = int(quotient.itemsize > edges.dtype.itemsize)
    getattr(lib, f"hist_{code}_{ecode}")(_ptr(flat), flat.size, lo, hi, e_first, f_denom, n,
                                          wide, _ptr(e), _ptr(u), _ptr(counts))
    return True
