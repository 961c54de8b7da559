"""Placed results: a user function's arrays allocated where the ``O_DIRECT`` sink can write them.

The one owner of the optional ``_alloc`` extension (``_alloc.c``, a numpy memory handler,
NEP 49). A new file's output blocks go to the disk with ``O_DIRECT`` (:mod:`bigarr._os.sink`),
which needs every page-aligned file offset's bytes at a page-aligned address. numpy's arrays are
only 16-byte aligned, so the sink copies each result into staging buffers first; measured on
this project's machine (1 GiB ``map_blocks(x*2+1)``, 2 threads), that copy and its faults took
about a quarter of the run's CPU time (0.82 CPU-seconds per GiB with it, 0.61 without).

:func:`results` turns the handler on in the calling thread around the user's function only:
arrays of 256 KiB or more that it allocates get their own mapping, their first byte ``skew`` bytes
into a page (``skew``: the output offset of the chunk in its file, modulo the page size). A
result written at that offset then has its page-aligned middle page-aligned in memory, and
:meth:`bigarr._os.sink.Sink.write` sends it to the disk as it is (``lend=True``; see
:func:`owns`). Freed mappings are kept for reuse, one per worker thread of the run
(:func:`keep`: a worker's next result reuses the pages of one already written, which the plan
counts as the function's temporaries), and unmapped at the end of the run (:func:`trim`).

Where the extension was not built, or this numpy has no memory handlers (before 1.22), nothing
is placed and the sink copies, as before; ``BIGARR_PLACED=0`` asks for that too (when a run
starts: :func:`available`).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from bigarr._os.geometry import PAGE_SIZE

__all__ = ["NAME", "available", "keep", "owns", "results", "trim", "unshared"]

NAME = "bigarr_placed"
"""The handler's name, as ``numpy``'s ``get_handler_name`` reports it."""

_SET_HANDLER_SLOT = 304  # PyDataMem_SetHandler in numpy's C API table (1.22 and later, 2.x)


class _Placed:
    def __init__(self, dll: ctypes.CDLL, set_handler: Any, capsule: Any,
                 handler_name: Any) -> None:
        self.dll, self.set_handler, self.capsule = dll, set_handler, capsule
        self.handler_name = handler_name


def _load() -> _Placed | None:
    spec = importlib.util.find_spec("bigarr._compute._alloc")
    try:
        from numpy._core import multiarray as ma  # numpy 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray as ma  # type: ignore[no-redef]
    name_of = getattr(ma, "get_handler_name", None)
    table = getattr(ma, "_ARRAY_API", None)
    if spec is None or not spec.origin or name_of is None or table is None:
        return None
    try:
        dll = ctypes.CDLL(spec.origin)
        dll.bigarr_placed_handler.restype = ctypes.c_void_p
        dll.bigarr_placed_skew.argtypes = [ctypes.c_int64]
        dll.bigarr_placed_skew.restype = None
        dll.bigarr_placed_keep.argtypes = [ctypes.c_int64]
        dll.bigarr_placed_keep.restype = None
        dll.bigarr_placed_trim.restype = ctypes.c_int64
        dll.bigarr_placed_cached.restype = ctypes.c_int64
        api = ctypes.pythonapi
        api.PyCapsule_GetPointer.restype = ctypes.c_void_p
        api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
        api.PyCapsule_New.restype = ctypes.py_object
        api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        slots = (ctypes.c_void_p * (_SET_HANDLER_SLOT + 1)).from_address(
            api.PyCapsule_GetPointer(table, None))
        address = slots[_SET_HANDLER_SLOT]
        if not address:
            return None
        set_handler = ctypes.PYFUNCTYPE(ctypes.py_object, ctypes.py_object)(address)
        capsule = api.PyCapsule_New(dll.bigarr_placed_handler(), _CAPSULE_NAME, None)
        placed = _Placed(dll, set_handler, capsule, name_of)
        if not _works(placed):
            return None
    except (OSError, AttributeError, ValueError, TypeError):
        return None
    return placed


_CAPSULE_NAME = ctypes.c_char_p(b"mem_handler")  # kept alive: the capsule holds its pointer


def _works(placed: _Placed) -> bool:
    """Check the slot really is ``PyDataMem_SetHandler`` (a numpy whose table differs would
    not name the handler), on a placed array and a small one."""
    old = placed.set_handler(placed.capsule)
    try:
        big = np.empty(2 << 20, np.uint8)
        small = np.empty(16, np.uint8)
    finally:
        placed.set_handler(old)
    return bool(placed.handler_name(big) == NAME and placed.handler_name(small) == NAME
                and big.ctypes.data % PAGE_SIZE == 0)


_placed = _load()


def available() -> bool:
    """True where :func:`results` places arrays: the extension is built, numpy has memory
    handlers, and ``BIGARR_PLACED`` is not ``0`` (read at each call: a run decides once)."""
    off = os.environ.get("BIGARR_PLACED", "1").strip().lower() in ("0", "off", "false", "no")
    return _placed is not None and not off


@contextlib.contextmanager
def results(skew: int | None) -> Iterator[None]:
    """Allocate this thread's arrays of 256 KiB or more ``skew`` bytes into a page while the
    block runs (``skew``: the file offset they will be written at; taken modulo the page size
    and rounded down to 16 bytes). Nothing is placed with ``skew=None`` or where
    :func:`available` is False."""
    if _placed is None or skew is None:
        yield
        return
    _placed.dll.bigarr_placed_skew(skew % PAGE_SIZE)
    old = _placed.set_handler(_placed.capsule)
    try:
        yield
    finally:
        _placed.set_handler(old)


def owns(array: np.ndarray[Any, Any]) -> bool:
    """True if ``array``'s memory was allocated by :func:`results` (it, or the array it views,
    owns memory from the placed handler). Such memory lives as long as the array object, and
    nothing but that object refers to it."""
    if _placed is None:
        return False
    base: Any = array
    while isinstance(base, np.ndarray) and not base.flags.owndata:
        base = base.base
    return isinstance(base, np.ndarray) and _placed.handler_name(base) == NAME


def _refs(array: np.ndarray[Any, Any]) -> list[int] | None:
    counts = [sys.getrefcount(array)]
    base = array.base
    while base is not None:
        if not isinstance(base, np.ndarray):
            return None
        counts.append(sys.getrefcount(base))
        base = base.base
    return counts


def _through(array: np.ndarray[Any, Any]) -> list[int] | None:
    return _refs(array)  # (the call depth of unshared's)


def _sole_refs() -> tuple[int, int]:
    whole = np.empty(2)
    view = whole[:1]
    del whole
    counts = _through(view)  # as unshared() sees an array only its caller's variable holds
    assert counts is not None
    return counts[0], counts[1]


_SOLE = _sole_refs()


def unshared(array: np.ndarray[Any, Any]) -> bool:
    """True if only the caller's one variable refers to ``array``, and only ``array`` (through
    its chain of bases) to the arrays it views: a function's result it does not keep.

    A result lent to the sink must not change until written; a function that returns an array
    it keeps (an output buffer it fills again at its next call, ``out=`` in numpy's idiom)
    changes it, so its results are copied instead."""
    counts = _refs(array)
    return counts is not None and counts[0] <= _SOLE[0] and all(
        c <= _SOLE[1] for c in counts[1:])


def keep(n: int) -> None:
    """Keep up to ``n`` freed placed mappings for reuse (a run's worker threads)."""
    if _placed is not None:
        _placed.dll.bigarr_placed_keep(n)


def trim() -> int:
    """Unmap the kept mappings and keep none from now on (the end of a run); return the
    bytes placed arrays still hold."""
    if _placed is None:
        return 0
    return int(_placed.dll.bigarr_placed_trim())


def cached() -> int:
    """Bytes of freed mappings kept for reuse (for tests)."""
    return 0 if _placed is None else int(_placed.dll.bigarr_placed_cached())
