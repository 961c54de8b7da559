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


#: Files made warm afresh in this invocation (see :func:`prepare`), with the fraction of each
#: cached in 2 MiB folios just after (:func:`huge_coverage`; None where not reported).
_FRESH: dict[Path, float | None] = {}
#: How far below its fresh coverage a file may fall before :func:`prepare` warms it afresh.
COVERAGE_SLACK = 0.02


def huge_coverage(paths: Iterable[Path]) -> float | None:
    """The fraction of the files' resident bytes that a mapping maps with 2 MiB (PMD) entries.

    How fast warm data can be read through a mapping depends on it: this kernel caches a file
    in folios of up to 2 MiB, each mapped by one page-table entry when it is whole (here a
    warm 2 GiB sum ran at 19-22 GB/s over a file cached in 2 MiB folios, 10-12 GB/s over the
    same file cached half in smaller ones). Measured by mapping each file read-only, touching
    one byte per 2 MiB (no reads: only resident files are measured) and reading
    ``FilePmdMapped`` from ``/proc/self/smaps_rollup``; None where that is not reported.
    """
    total = huge = 0
    for path in data_files(paths):
        size = path.stat().st_size
        if size < (2 << 20):
            continue
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
        try:
            before = _pmd_mapped()
            if before is None:
                return None
            view = np.frombuffer(mm, np.uint8)
            int(view[:: 2 << 20].sum())
            after = _pmd_mapped()
            del view
        finally:
            mm.close()
        total += size
        huge += (after or 0) - before
    return None if total == 0 else huge / total


def _pmd_mapped() -> int | None:
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                if line.startswith("FilePmdMapped:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def prepare(paths: Iterable[Path], mode: str) -> float | None:
    """Put the files into cache state ``mode`` and return their residency.

    Parameters
    ----------
    paths : iterable of Path
        Dataset files or folders.
    mode : {"warm", "cold"}
        ``"cold"`` evicts. ``"warm"``: the first time in an invocation, evicts and reads the
        files once, so every invocation measures the cache one sequential read makes now (its
        folio sizes: :func:`huge_coverage`), not whatever earlier runs left. After that, a file
        no longer wholly resident, or whose coverage in 2 MiB folios fell more than
        :data:`COVERAGE_SLACK` below its fresh one, is evicted and read again: this machine's
        DAMON reclaim pages out idle parts of the page cache between runs, splitting their
        folios, and pages read back one fault at a time come back in small folios (one such
        file took 12,500 faults and 0.1 s of system time per mapped 2 GiB sum, against 1,200
        faults and 0.005 s freshly read), so later repeats would measure a different cache
        from the first.

    Returns
    -------
    float or None
        Residency fraction after preparing (see :func:`residency`).
    """
    paths = list(paths)
    if mode == "cold":
        evict(paths)
        return residency(paths)
    files = data_files(paths)
    stale = [p for p in files if p in _FRESH and _stale(p)]
    fresh = [p for p in files if p not in _FRESH]
    for p in fresh + stale:
        evict([p])
        warm([p])
        _FRESH[p] = huge_coverage([p])
    if fresh + stale:
        cov = [c for p in fresh + stale if (c := _FRESH[p]) is not None]
        shown = f"; {min(cov):.0%}-{max(cov):.0%} of each cached in 2 MiB folios" \
            if len(cov) == len(fresh + stale) else ""
        print(f"warmed afresh: {', '.join(p.name for p in fresh + stale)}{shown}", flush=True)
    if (residency(paths) or 0.0) < 0.999:
        warm(paths)
    return residency(paths)


def _stale(path: Path) -> bool:
    """Whether a file warmed afresh earlier is no longer wholly resident, or has fewer of its
    bytes in 2 MiB folios than then (less :data:`COVERAGE_SLACK`)."""
    if (residency([path]) or 0.0) < 0.999:
        return True
    then = _FRESH[path]
    if then is None:
        return False
    now = huge_coverage([path])
    return now is not None and now < then - COVERAGE_SLACK
