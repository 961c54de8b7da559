"""Page-cache control for benchmark data: residency, eviction, warming.

Cold cache without root: ``fsync`` the file (dirty pages cannot be dropped),
then ``posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)``.  The kernel keeps pages
that some process still maps, which is why the harness evicts in the parent
after the previous run's child has exited.  Residency is checked with
``mincore(2)`` on a fresh read-only mapping (mapping a file loads nothing).
"""

from __future__ import annotations

import ctypes
import mmap
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

_WINDOW = 1 << 30  # map at most 1 GiB at a time when checking residency
_READ_BUFFER = 1 << 20  # small: keeps the parent's RSS low (see harness_proc)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int64,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
_MAP_FAILED = ctypes.c_void_p(-1).value


def data_files(paths: Iterable[Path]) -> list[Path]:
    """Expand folders (e.g. chunked stores) into the regular files below them."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.rglob("*") if p.is_file()))
        elif path.is_file():
            out.append(path)
    return out


def _resident_pages(fd: int, size: int) -> int:
    """Count resident pages of an open file with ``mincore(2)``."""
    page = mmap.PAGESIZE
    resident = 0
    for start in range(0, size, _WINDOW):
        length = min(_WINDOW, size - start)
        addr = _libc.mmap(None, length, mmap.PROT_READ, mmap.MAP_SHARED, fd, start)
        if addr == _MAP_FAILED or addr is None:
            err = ctypes.get_errno()
            raise OSError(err, f"mmap for mincore failed: {os.strerror(err)}")
        try:
            vec = np.zeros((length + page - 1) // page, dtype=np.uint8)
            if _libc.mincore(addr, length, vec.ctypes.data) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"mincore failed: {os.strerror(err)}")
            resident += int(np.count_nonzero(vec & 1))
        finally:
            _libc.munmap(addr, length)
    return resident


def residency(paths: Iterable[Path]) -> float | None:
    """Return the fraction of the files' pages that are in the page cache.

    Parameters
    ----------
    paths : iterable of Path
        Files or folders (all files below a folder count).

    Returns
    -------
    float or None
        Resident pages / total pages over all files, or ``None`` when there
        is nothing to check (no files, or all empty).
    """
    page = mmap.PAGESIZE
    total = resident = 0
    for path in data_files(paths):
        size = path.stat().st_size
        if size == 0:
            continue
        total += (size + page - 1) // page
        fd = os.open(path, os.O_RDONLY)
        try:
            resident += _resident_pages(fd, size)
        finally:
            os.close(fd)
    return None if total == 0 else resident / total


def evict(paths: Iterable[Path]) -> None:
    """Drop the files from the page cache (``fsync``, then ``POSIX_FADV_DONTNEED``).

    Pages still mapped by a live process stay resident; check with
    :func:`residency`.
    """
    for path in data_files(paths):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths: Iterable[Path]) -> None:
    """Read the files once through a small buffer so they become resident."""
    buf = bytearray(_READ_BUFFER)
    for path in data_files(paths):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def prepare(paths: Iterable[Path], mode: str) -> float | None:
    """Put the files into cache state ``mode`` and return their residency.

    Parameters
    ----------
    paths : iterable of Path
        Dataset files or folders.
    mode : {"warm", "cold"}
        ``"cold"`` evicts; ``"warm"`` reads the files unless already resident.

    Returns
    -------
    float or None
        Residency fraction after preparing (see :func:`residency`).
    """
    paths = list(paths)
    if mode == "cold":
        evict(paths)
    elif (residency(paths) or 0.0) < 0.999:
        warm(paths)
    return residency(paths)
