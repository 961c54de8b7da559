"""Durable I/O: writes that reach the disk, and the syncs that make them (and names) durable.

Every write path (new files, ``map_blocks`` outputs, the ``Appender``, private commits,
journals) goes through these few functions, so what "durable" means is decided here once:

* :func:`pwrite_all` writes every byte (``pwrite`` may write fewer than asked);
* :func:`start_writeback` starts writeback of a range without waiting for it
  (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, Linux only; a no-op elsewhere);
* :func:`wait_writeback` waits until a range is written back (not a durability barrier: the
  disk's cache and the file's metadata are :func:`datasync`'s job);
* :func:`datasync` makes a file's data durable (``fdatasync``; ``fsync`` where it is missing);
* :func:`fsync_dir` makes a create, rename or unlink in a folder durable.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import numpy as np

from bigarr._os.libc import libc

__all__ = ["datasync", "fsync_dir", "pwrite_all", "start_writeback", "wait_writeback"]

_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4  # SYNC_FILE_RANGE_*
_sync_file_range = (getattr(libc, "sync_file_range", None)
                    if sys.platform.startswith("linux") and libc is not None else None)


def fsync_dir(path: str) -> None:
    """fsync the folder holding ``path`` so a create, rename or unlink is durable."""
    with contextlib.suppress(OSError):
        fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def datasync(fd: int) -> None:
    """Make a file's data (and the metadata needed to read it) durable: ``fdatasync``."""
    if hasattr(os, "fdatasync"):
        os.fdatasync(fd)
    else:  # pragma: no cover - macOS and the BSDs
        os.fsync(fd)


def pwrite_all(fd: int, data: np.ndarray[Any, Any], offset: int) -> None:
    """Write all bytes of a C-contiguous array at ``offset`` (bytes) of ``fd``."""
    if not data.nbytes:
        return
    view = memoryview(data.reshape(-1).view(np.uint8).data)
    done = 0
    while done < data.nbytes:
        done += os.pwrite(fd, view[done:], offset + done)


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``nbytes`` at ``offset`` of ``fd`` back to disk, without waiting."""
    if nbytes and _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SFR_WRITE)


def wait_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Write ``nbytes`` at ``offset`` of ``fd`` back to disk and wait for it (Linux only)."""
    if nbytes and _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER)
