"""The native reduction kernels (``_native.c``): loading them, and calling them on numpy arrays.

The one owner of the optional C extension on the Python side. :data:`lib` is the loaded library,
or None when the extension was not built (no compiler at install time) or is switched off with
the environment variable ``BIGARR_NATIVE=0``; every caller then takes its numpy kernel. Of the
builds in :data:`BUILDS`, the widest the CPU runs is loaded (numpy's detection): AVX-512, else
AVX2, else the baseline; ``BIGARR_NATIVE_ISA=avx2`` or ``baseline`` caps it (same bits;
:data:`build` says which). The functions are called through :mod:`ctypes`, which releases the
GIL for the call, so reductions scale with threads. Each wrapper takes only the layouts and
dtypes its C function handles and returns None for anything else, so callers fall back per
block.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import math
import os
import warnings
from typing import Any

import numpy as np

__all__ = ["BUILDS", "VECTOR_ALIGN", "aligned_empty", "arg_rows", "available", "build",
           "count_rows", "fused_kernel", "hist_above", "hist_uniform", "lib", "min_max",
           "radix_sort", "radix_sortable", "stats_blocks", "sum_blocks", "var_blocks"]

#: The interface version this module calls (``ABI`` in ``_native.c``).
ABI = 6
_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_F8 = ctypes.c_double


#: The builds of ``_native.c`` by name, widest first: ``setup.py`` builds ``_native_avx512``
#: (AVX-512 F, VL, BW and DQ, 512-bit vectors) and ``_native_avx2`` (``-mavx2``) on x86-64
#: beside the baseline ``_native``; the same source and flags otherwise, so the same bits. Each
#: needs the CPU features listed (numpy's names; ``AVX512_SKX`` is F, CD, VL, BW and DQ). The
#: AVX-512 build read the warm two-operation chain's file 1.12x faster than the AVX2 one here,
#: and ran 1.0-1.7x faster kernel by kernel (bench/README.md, "AVX-512 build").
BUILDS = {"avx512": ("bigarr._compute._native_avx512", ("AVX512F", "AVX512_SKX")),
          "avx2": ("bigarr._compute._native_avx2", ("AVX2",)),
          "baseline": ("bigarr._compute._native", ())}


def _cpu_features() -> dict[str, bool]:
    """numpy's run-time CPU features (``{"AVX2": True, ...}``, from its own detection, which
    also asks the OS whether it saves the wide registers), or ``{}`` where numpy does not say
    (then only the baseline build is loaded)."""
    try:  # numpy's private module: no public API gives the features as values
        umath = importlib.import_module("numpy._core._multiarray_umath")
    except ImportError:  # pragma: no cover - numpy >= 2 has it; any other layout: baseline
        return {}
    got = getattr(umath, "__cpu_features__", None)
    return dict(got) if isinstance(got, dict) else {}


def _open(module: str) -> ctypes.CDLL | None:
    """The build ``module`` with its kernels declared, or None (not built, not loadable, or
    built from another version's source)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return None
    try:
        dll = ctypes.CDLL(spec.origin)
        dll.bigarr_native_abi.restype = ctypes.c_int64
        if dll.bigarr_native_abi() != ABI:
            return None  # built from another version's source: never call it
        _declare(dll)
    except (OSError, AttributeError):  # not loadable, or built from another version's source
        return None
    return dll


def _load() -> tuple[ctypes.CDLL | None, str | None]:
    """``(library, build name)``: the first build of :data:`BUILDS` the CPU runs that loads
    (from the one ``BIGARR_NATIVE_ISA`` names on: ``avx2`` or ``baseline``), or ``(None, None)``
    with ``BIGARR_NATIVE=0`` or where none loads."""
    if os.environ.get("BIGARR_NATIVE", "1").strip().lower() in ("0", "off", "false", "no"):
        return None, None
    forced = os.environ.get("BIGARR_NATIVE_ISA", "").strip().lower()
    features = _cpu_features()
    names = list(BUILDS)
    if forced and forced not in BUILDS:
        warnings.warn(f"BIGARR_NATIVE_ISA={forced!r} is not one of {', '.join(names)}: ignored "
                      "(BIGARR_NATIVE=0 turns the native kernels off)", RuntimeWarning,
                      stacklevel=2)
    capped = names[names.index(forced):] if forced in BUILDS else names
    for name, (module, needs) in BUILDS.items():
        if name not in capped:
            continue
        if all(features.get(f, False) for f in needs):
            dll = _open(module)
            if dll is not None:
                return dll, name
    return None, None


def _declare(dll: ctypes.CDLL) -> None:
    """Set the argument types of every kernel (AttributeError: one is missing)."""
    for code in ("f4", "f8"):
        getattr(dll, f"sum_cols_{code}").argtypes = [_PTR, _I64, _I64, _I64, _PTR]
        getattr(dll, f"sum_flat_{code}").argtypes = [_PTR, _I64, _I64, _PTR]
        getattr(dll, f"var_cols_{code}").argtypes = [_PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR]
        getattr(dll, f"var_flat_{code}").argtypes = [_PTR, _I64, _I64, _PTR, _PTR, _PTR]
    for code in ("f4", "f8"):
        getattr(dll, f"hist_above_{code}").argtypes = [_PTR, _I64, _PTR, _I64, _PTR]
    for code in ("f4", "f8"):
        getattr(dll, f"min_max_{code}").argtypes = [_PTR, _I64, _PTR, _PTR]
        getattr(dll, f"min_max_{code}").restype = ctypes.c_int
        getattr(dll, f"arg_cols_{code}").argtypes = [_PTR, _I64, _I64, ctypes.c_int, _PTR, _PTR]
    for code in ("f4", "f8", "u1", "u2", "u4", "u8"):
        getattr(dll, f"count_cols_{code}").argtypes = [_PTR, _I64, _I64, _PTR]
    for name in ("hist_f4_f4", "hist_f4_f8", "hist_f8_f8"):
        getattr(dll, name).argtypes = [_PTR, _I64, _F8, _F8, _F8, _F8, _I64, ctypes.c_int,
                                       ctypes.c_int, _F8, _F8, _PTR, _PTR, _PTR]
    for fn in ("sum_cols", "sum_flat", "var_cols", "var_flat"):
        for code in ("f4", "f8"):
            getattr(dll, f"{fn}_{code}").restype = None


#: The loaded kernels, or None (numpy kernels everywhere).
lib: ctypes.CDLL | None
#: Which build of :data:`BUILDS` :data:`lib` is (``"avx512"``, ``"avx2"``, ``"baseline"``), or
#: None.
build: str | None
lib, build = _load()


def _fused(dll: ctypes.CDLL | None) -> dict[np.dtype[Any], Any]:
    """The fused elementwise kernels by dtype (none from a build that lacks them: the other
    kernels stay in use)."""
    if dll is None:
        return {}
    got = {}
    try:
        for dtype, code in ((np.dtype(np.float32), "f4"), (np.dtype(np.float64), "f8")):
            fn = getattr(dll, f"fused_{code}")
            fn.argtypes = [_PTR, _I64, _PTR, _PTR, _I64, _I64, _I64, _I64, _PTR]
            fn.restype = ctypes.c_int64
            got[dtype] = fn
    except AttributeError:
        return {}
    return got


_FUSED = _fused(lib)


def fused_kernel(dtype: np.dtype[Any]) -> Any:
    """The native fused elementwise kernel for ``dtype`` (see :mod:`bigarr._compute.fused`),
    or None (another dtype, or no native kernels)."""
    return _FUSED.get(dtype) if lib is not None else None

def _radix(dll: ctypes.CDLL | None) -> Any:
    """The native radix sort (``_radix.c``), or None (no native kernels, or a build without
    it: the other kernels stay in use)."""
    if dll is None:
        return None
    try:
        fn = dll.radix_sort
    except AttributeError:
        return None
    fn.argtypes = [_PTR, _PTR, _PTR, _I64, _I64, _I64]
    fn.restype = ctypes.c_int64
    return fn


_RADIX = _radix(lib)
#: The radix sort's key kind by dtype kind: unsigned (and bool), signed, IEEE float.
_RADIX_KINDS = {"b": 0, "u": 0, "i": 1, "f": 2}


def radix_sortable(dtype: np.dtype[Any]) -> bool:
    """True when :func:`radix_sort` sorts ``dtype`` natively (bool, integers, float16/32/64 in
    the machine's byte order)."""
    return (_RADIX is not None and dtype.kind in _RADIX_KINDS and dtype.isnative
            and dtype.itemsize in (1, 2, 4, 8) and not (dtype.kind == "f" and dtype.itemsize == 1))


def radix_sort(src: np.ndarray[Any, Any], out: np.ndarray[Any, Any],
               tmp: np.ndarray[Any, Any]) -> bool:
    """Write the 1-d ``src`` to ``out`` sorted as ``np.sort(src, kind="stable")`` does, bit for
    bit (NaN last in input order, ``-0.0`` tied with ``0.0``), using ``tmp`` (as many values,
    overlapping neither) as scratch; ``out`` may be ``src`` (sorted in place). A stable LSD
    radix sort, linear in the values. False (nothing written) where the native kernel does
    not apply: see :func:`radix_sortable`; all three must be C-contiguous and aligned."""
    dtype = src.dtype
    n = src.shape[0] if src.ndim == 1 else -1
    if (not radix_sortable(dtype) or n < 0 or out.dtype != dtype or tmp.dtype != dtype
            or out.shape != src.shape or tmp.ndim != 1 or tmp.shape[0] < n
            or not all(a.flags.c_contiguous and a.flags.aligned for a in (src, out, tmp))
            or not out.flags.writeable or not tmp.flags.writeable):
        return False
    if n == 0:
        return True
    got = _RADIX(_ptr(src), _ptr(out), _ptr(tmp), n, dtype.itemsize, _RADIX_KINDS[dtype.kind])
    return bool(got >= 0)


_CODES = {np.dtype(np.float32): "f4", np.dtype(np.float64): "f8"}


#: Alignment of the buffers a kernel reads and writes whole vectors of: a cache line, one
#: AVX-512 vector. numpy's allocations are only 16-byte aligned, and a vector across two cache
#: lines is two reads: the fused kernel's row vectors, accumulator and intermediates, aligned,
#: read the warm two-operation chain's file 1.07x faster here (bench/README.md, "Quiet run,
#: eighth session").
VECTOR_ALIGN = 64


def aligned_empty(n: int, dtype: Any, alignment: int = VECTOR_ALIGN) -> np.ndarray[Any, Any]:
    """``np.empty(n, dtype)`` (1-d) whose first value is ``alignment``-aligned in memory."""
    dt = np.dtype(dtype)
    size = max(n, 1) * dt.itemsize
    raw = np.empty(size + alignment, dtype=np.uint8)
    skip = (-raw.ctypes.data) % alignment
    out: np.ndarray[Any, Any] = raw[skip:skip + size].view(dt)[:n]
    return out


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
    if axes[0] < 0 or axes[-1] >= block.ndim:  # (-1,) would pass as a run and read past the end
        return None
    a, b = axes[0], axes[-1] + 1
    shape = block.shape
    # math.prod, not np.prod: about 100 times cheaper on a tuple, and this runs per call
    p, n, c = math.prod(shape[:a]), math.prod(shape[a:b]), math.prod(shape[b:])
    return p, n, c


def _usable(block: np.ndarray[Any, Any]) -> str | None:
    if lib is None or not block.flags.c_contiguous or not block.flags.aligned or block.size == 0:
        return None  # C may assume an element's alignment: a misaligned pointer is undefined
    return _CODES.get(block.dtype)


def _reduced(block: np.ndarray[Any, Any],
             axes: tuple[int, ...]) -> tuple[str, int, int, int, tuple[int, ...]] | None:
    """``(code, p, n, c, keep)`` of a block the reducing kernels take (see :func:`_columns`;
    ``keep``: the result's shape, reduced axes kept as length 1), or None."""
    code = _usable(block)
    geo = _columns(block, axes) if code else None
    if code is None or geo is None or geo[1] == 0:
        return None
    keep = tuple(1 if i in axes else m for i, m in enumerate(block.shape))
    return code, *geo, keep


#: Fewest kept columns for the per-column kernels: below this, each row's inner loop is too
#: short to vectorise, and numpy's own loops are as fast.
MIN_COLUMNS = 8


def sum_blocks(block: np.ndarray[Any, Any],
               axes: tuple[int, ...]) -> np.ndarray[Any, Any] | None:
    """Sums of a C-contiguous float32/float64 ``block`` over ``axes`` in float64, with the
    reduced axes kept as length 1; None where the native kernel does not apply."""
    got = _reduced(block, axes)
    if got is None or lib is None:
        return None
    code, p, n, c, keep = got
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
    got = _reduced(block, axes)
    if got is None or lib is None:
        return None
    code, p, n, c, keep = got
    shift, mean, m2 = (np.empty(p * c, dtype=np.float64) for _ in range(3))
    # Any column count (not only MIN_COLUMNS and up): Var tells the planner its float32/float64
    # blocks need no scratch (Var.scratch_free), so numpy's kernel, with its block-sized
    # temporaries, would run past the budget.
    if c == 1:
        getattr(lib, f"var_flat_{code}")(_ptr(block), p, n, _ptr(shift), _ptr(mean), _ptr(m2))
    else:
        getattr(lib, f"var_cols_{code}")(_ptr(block), p, n, c, _ptr(shift), _ptr(mean),
                                         _ptr(m2))
    return shift.reshape(keep), mean.reshape(keep), m2.reshape(keep)


def arg_rows(block: np.ndarray[Any, Any],
             largest: bool) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]] | None:
    """numpy's ``argmax`` (``argmin``) along axis 0 of a C-contiguous float32/float64 ``block``
    with at least one row, and the values there, each as ``block.shape[1:]``; None where the
    native kernel does not apply."""
    code = _usable(block)
    if code is None or lib is None or block.ndim < 1 or not 0 < block.shape[0] < 2**31:
        return None
    n = block.shape[0]
    c = block.size // n
    if c < MIN_COLUMNS:
        return None
    value = np.empty(c, dtype=block.dtype)
    index = np.empty(c, dtype=np.int64)
    getattr(lib, f"arg_cols_{code}")(_ptr(block), n, c, int(largest), _ptr(value), _ptr(index))
    shape = block.shape[1:]
    return value.reshape(shape), index.astype(np.intp, copy=False).reshape(shape)


def min_max(flat: np.ndarray[Any, Any]) -> tuple[Any, Any] | None:
    """``(flat.min(), flat.max())`` of a contiguous, non-empty float32/float64 ``flat`` in one
    pass, as numpy scalars (both NaN when any value is NaN, as numpy's); None where the native
    kernel does not apply."""
    code = _usable(flat)
    if code is None or lib is None or flat.ndim != 1:
        return None
    lo, hi = np.empty(1, dtype=flat.dtype), np.empty(1, dtype=flat.dtype)
    if getattr(lib, f"min_max_{code}")(_ptr(flat), flat.size, _ptr(lo), _ptr(hi)):
        nan = flat.dtype.type(np.nan)
        return nan, nan
    return lo[0], hi[0]


def count_rows(block: np.ndarray[Any, Any]) -> np.ndarray[Any, Any] | None:
    """``np.count_nonzero(block, axis=0)`` of a C-contiguous real or bool ``block`` with at least
    one row, as ``block.shape[1:]`` (intp); None where the native kernel does not apply."""
    if (lib is None or not block.flags.c_contiguous or not block.flags.aligned or block.ndim < 1
            or block.size == 0):
        return None
    kind, size = block.dtype.kind, block.dtype.itemsize
    if kind == "f" and size in (4, 8) and block.dtype.isnative:  # '>f4' -0.0 reads nonzero
        code = f"f{size}"
    elif kind in "biu" and size in (1, 2, 4, 8):
        code = f"u{size}"  # any set bit is nonzero: read as unsigned integers of that size
    else:
        return None
    n = block.shape[0]
    c = block.size // n
    if c < MIN_COLUMNS:
        return None
    counts = np.zeros(c, dtype=np.int64)
    getattr(lib, f"count_cols_{code}")(_ptr(block), n, c, _ptr(counts))
    return counts.astype(np.intp, copy=False).reshape(block.shape[1:])


#: Rows of counts the histogram kernel spreads elements over (``HISTS`` in ``_native.c``).
_HISTS = 4

#: Most elements per call of the index kernel: each of its uint32 rows of counts gets at most a
#: quarter of them, so none overflows.
_CALL_ELEMENTS = 1 << 31


def _ceil_to(values: np.ndarray[Any, Any], dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """The smallest value of ``dtype`` at or above each float64 of ``values``, so that for any
    ``v`` of ``dtype``, ``v >= values[i]`` (compared in float64) is ``v >= out[i]``."""
    with np.errstate(over="ignore"):
        out = values.astype(dtype)
    low = out.astype(np.float64) < values
    out[low] = np.nextafter(out[low], dtype.type(np.inf))
    return out


@functools.lru_cache(maxsize=16)
def _thresholds(dtype: str, lo: float, hi: float, inner: bytes) -> np.ndarray[Any, Any]:
    """The ``n + 1`` thresholds of :func:`hist_uniform`'s count by edges, in the data's
    ``dtype``: ``lo``, each inner edge (float64 bytes) rounded up and clipped to ``lo ..`` the
    next value above ``hi``, and that value. Computed once per histogram, not once per chunk
    (read-only)."""
    dt = np.dtype(dtype)
    bounds = _ceil_to(np.array([lo, hi]), dt)
    top = bounds[1] if float(bounds[1]) > hi else np.nextafter(bounds[1], dt.type(np.inf))
    edges = np.frombuffer(inner, dtype=np.float64)
    t = np.empty(edges.size + 2, dtype=dt)
    t[0], t[-1] = bounds[0], top
    t[1:-1] = np.clip(_ceil_to(edges, dt), bounds[0], top)
    t.flags.writeable = False
    return t


def hist_uniform(flat: np.ndarray[Any, Any], first: Any, last: Any, denom: Any, n: int,
                 edges: np.ndarray[Any, Any], upper: np.ndarray[Any, Any],
                 counts: np.ndarray[Any, Any], fast: bool = False,
                 by_edges: bool = False, margin: float = 1.0) -> bool:
    """Add the counts of ``n`` equal bins of a contiguous float32/float64 ``flat`` to ``counts``
    (``n`` entries at least), as ``numpy.histogram`` bins them: kept where ``first <= v <=
    last`` compared in numpy's promoted type, bin index ``((v - first) / denom) * n`` in numpy's
    dtypes (``denom`` is numpy's ``last - first``, whose type may widen the division), then
    numpy's one-down / one-up corrections against ``edges`` and ``upper`` (``edges[1:n]``
    followed by +inf), which must not decrease. With ``fast``, the index estimate is a product
    with ``n / denom`` in float64 instead: only for bins where rounding cannot move either
    estimate by more than one bin (the caller's check), so the corrections give numpy's bin.
    With ``by_edges`` too (few bins), the bin of a kept value is the number of inner edges at or
    below it, which under the same check is numpy's bin: counted with no index at all, as the
    number of values at or above each of ``n + 1`` thresholds of the data's dtype (``first``,
    each inner edge rounded up to the data's dtype, and the next value above ``last``), one
    vectorised compare-and-count each (:func:`hist_above`).
    False (nothing added) where the native kernel does not apply: other dtypes, or operands
    that numpy would promote past the edges' dtype.
    """
    code = _usable(flat)
    ecode = _CODES.get(edges.dtype)
    if (n < 1 or n >= 2**30 or edges.ndim != 1 or edges.size < n + 1 or np.size(upper) < n
            or counts.size < n):
        return False  # the kernel reads edges[:n], upper[:n] and writes n counts: never past them
    if code is None or ecode is None or lib is None or (code, ecode) == ("f8", "f4"):
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
    if not np.isfinite(n / f_denom):  # a subnormal range: the fast estimate's scale is inf
        fast = False
    if not fast or not 0 < margin < 0.5:
        margin = 1.0  # no estimate is sure: numpy's corrections for every kept value
    inner = edges[1:n].astype(np.float64)
    if fast and by_edges and np.isfinite(inner).all():
        # kept v (lo <= v <= hi) is in bin #{inner edges <= v}; thresholds clipped to
        # [lo, next above hi] keep that for kept values, count values below lo nowhere and
        # values above hi (and only those) at every threshold, so they cancel
        t = _thresholds(flat.dtype.str, lo, hi, inner.tobytes())
        above = hist_above(flat, t)
        assert above is not None  # flat is usable (checked above)
        counts[:n] += (above[:n] - above[1:]).astype(counts.dtype, copy=False)
        return True
    e = np.empty(n + 1, dtype=edges.dtype)  # the extra bin n, for values not kept: NaN edges,
    e[:n], e[n] = edges[:n], np.nan       # so no correction moves them
    u = np.empty(n + 1, dtype=edges.dtype)
    u[:n], u[n] = upper[:n], np.nan
    rows = np.zeros((_HISTS, n + 2), dtype=np.uint32)  # bins -1 (never hit) to n
    wide = int(quotient.itemsize > edges.dtype.itemsize)
    kernel = getattr(lib, f"hist_{code}_{ecode}")
    # the bounds rounded inward to the data's dtype: v >= lo_t is v >= lo, v <= hi_t is v <= hi
    lo_t = float(_ceil_to(np.array([lo]), flat.dtype)[0])
    hi_t = -float(_ceil_to(np.array([-hi]), flat.dtype)[0])
    for lo_i in range(0, flat.size, _CALL_ELEMENTS):
        part = flat[lo_i:lo_i + _CALL_ELEMENTS]
        kernel(_ptr(part), part.size, lo_t, hi_t, e_first, f_denom, n, wide, int(fast), n / f_denom,
               margin, _ptr(e), _ptr(u), _ptr(rows))
        counts[:n] += rows[:, 1:n + 1].sum(axis=0, dtype=np.int64).astype(counts.dtype, copy=False)
        rows[...] = 0
    return True


def hist_above(flat: np.ndarray[Any, Any], thresholds: np.ndarray[Any, Any]
               ) -> np.ndarray[Any, Any] | None:
    """``[count_nonzero(flat >= t) for t in thresholds]`` (int64) of a contiguous
    float32/float64 ``flat`` and ``thresholds`` of its dtype, in one pass: IEEE comparisons, so
    NaN is never counted and ``-0.0 >= 0.0``; None where the native kernel does not apply."""
    code = _usable(flat)
    if code is None or lib is None or flat.ndim != 1 or thresholds.ndim != 1:
        return None
    t = np.ascontiguousarray(thresholds, dtype=flat.dtype)
    above = np.zeros(t.size, dtype=np.int64)
    getattr(lib, f"hist_above_{code}")(_ptr(flat), flat.size, _ptr(t), t.size, _ptr(above))
    return above


# ---- several statistics in one sweep (multistat.py) ----------------------------------------
def _stats(dll: ctypes.CDLL | None) -> dict[str, Any]:
    """The one-sweep statistics kernels by dtype code (none from a build that lacks them)."""
    if dll is None:
        return {}
    got = {}
    try:
        for code in ("f4", "f8"):
            fn = getattr(dll, f"stats_cols_{code}")
            fn.argtypes = [_PTR, _I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]
            fn.restype = None
            got[code] = fn
    except AttributeError:
        return {}
    return got


_STATS = _stats(lib)


def stats_blocks(block: np.ndarray[Any, Any], axes: tuple[int, ...], want: frozenset[str]
                 ) -> dict[str, np.ndarray[Any, Any]] | None:
    """Several per-column statistics of a C-contiguous float32/float64 ``block`` over ``axes``
    in one sweep, each with the reduced axes kept as length 1: of ``want``, ``"sum"`` (float64,
    :func:`sum_blocks`' bits), ``"var"`` (``shift``, ``mean``, ``m2``: :func:`var_blocks`'
    bits), ``"min"`` and ``"max"`` (the block's dtype, numpy's, NaN propagated). None where the
    kernel does not apply (fewer than :data:`MIN_COLUMNS` kept columns after the reduced axes,
    where :func:`sum_blocks` takes another kernel)."""
    got = _reduced(block, axes)
    if got is None or not _STATS:
        return None
    code, p, n, c, keep = got
    if c < MIN_COLUMNS:
        return None
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name in ("sum", "shift", "mean", "m2"):
        if name in want or (name != "sum" and "var" in want):
            out[name] = np.empty(p * c, dtype=np.float64)
    for name in ("min", "max"):
        if name in want:
            out[name] = np.empty(p * c, dtype=block.dtype)
    ptrs = [_ptr(out[k]) if k in out else None
            for k in ("sum", "shift", "mean", "m2", "min", "max")]
    _STATS[code](_ptr(block), p, n, c, *ptrs)
    return {k: v.reshape(keep) for k, v in out.items()}
