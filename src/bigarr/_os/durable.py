"""Durable I/O: writes that reach the disk, and the syncs that make them (and names) durable.

Every write path (new files, ``map_blocks`` outputs, the ``Appender``, private commits,
journals) goes through these few functions, so what "durable" means is decided here once:

* :func:`pwrite_all` writes every byte (``pwrite`` may write fewer than asked);
* :func:`start_writeback` starts writeback of a range without waiting for it
  (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, Linux only; a no-op elsewhere);
* :func:`wait_writeback` waits until a range is written back (not a durability barrier: the
  disk's cache and the file's metadata are :func:`datasync`'s job);
* :func:`flush_window` is the flush policy's one tuned place: how many written bytes a writer
  leaves in flight before it waits (every writer: :class:`Paced`, the engine's ``Writeback``);
* :class:`Paced` keeps a long write's dirty page cache bounded: each piece's writeback starts
  as it is written, and the writer waits for the oldest once more than a window is in flight
  (a 1 GiB private commit left 1 GiB of system-wide Dirty memory until its ``fdatasync``,
  issue 17);
* :func:`datasync` makes a file's data durable (``fdatasync``; ``fsync`` where it is missing);
* :func:`fsync_dir` makes a create, rename or unlink in a folder durable.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import sys
from collections import deque
from typing import Any

import numpy as np

from bigarr._os.libc import libc
from bigarr.errors import MappingError

__all__ = ["WRITE_WINDOW", "Paced", "can_wait_writeback", "datasync", "flush_window", "fsync_dir",
           "pwrite_all", "start_writeback", "wait_writeback"]

WRITE_WINDOW = 64 << 20
"""The flush policy's one tuned number: output bytes a writer leaves in flight (written, and
dirty or under writeback) before it waits for the oldest. 64 MiB keeps a virtio disk's queue
full (16 requests of its 4 MiB largest) while bounding the page cache's dirty memory; see
:func:`flush_window`."""

_SFR_WAIT_BEFORE, _SFR_WRITE, _SFR_WAIT_AFTER = 1, 2, 4  # SYNC_FILE_RANGE_*
_sync_file_range = (getattr(libc, "sync_file_range", None)
                    if sys.platform.startswith("linux") and libc is not None else None)


def flush_window(budget: int | None = None) -> int:
    """The flush policy, decided here once: bytes of output a writer may leave written but not
    yet waited for (bytes).

    :data:`WRITE_WINDOW`, or a quarter of ``budget`` (bytes) when that is less, so that a small
    budget still bounds what it leaves dirty. Every writer applies it the same way: each
    piece's writeback is started as soon as it is written (:func:`start_writeback`), and once
    more than the window is in flight the writer waits for the oldest pieces
    (:func:`wait_writeback`), so the disk always has a window queued and never idles between
    flushes, while dirty memory stays within the window plus the pieces being written. Users:
    :class:`Paced` (private commits, journals, ``written_in_order``), the engine's
    ``Writeback`` (``map_blocks``, ``matmul``, ``from_zarr``, lazy ``to_npy``) and, per chunk,
    the release-behind of a shared mapping in ``iter_chunks`` (one chunk queued while the one
    before is waited for).
    """
    if budget is None:
        return WRITE_WINDOW
    return max(1, min(WRITE_WINDOW, budget // 4))


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
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:  # (some FUSE file systems): no progress would loop for ever
            raise OSError(errno.ENOSPC, "write made no progress", None)
        done += n


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Start writing ``nbytes`` at ``offset`` of ``fd`` back to disk, without waiting."""
    if nbytes and _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SFR_WRITE)


def wait_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Write ``nbytes`` at ``offset`` of ``fd`` back to disk and wait for it (Linux only).

    Raises
    ------
    MappingError
        If the writeback failed (``EIO``; ``ENOSPC`` for a sparse file on a full disk).
    """
    if nbytes and _sync_file_range is not None:
        flags = _SFR_WAIT_BEFORE | _SFR_WRITE | _SFR_WAIT_AFTER
        if _sync_file_range(fd, offset, nbytes, flags) != 0:
            err = ctypes.get_errno()
            raise MappingError(err, f"writeback of bytes {offset}-{offset + nbytes} failed: "
                                    f"{os.strerror(err)}")


def can_wait_writeback() -> bool:
    """Whether :func:`wait_writeback` does anything here (Linux's ``sync_file_range``)."""
    return _sync_file_range is not None


class Paced:
    """Writes to one file with at most ``window`` bytes dirty or under writeback (Linux).

    Each piece's writeback is started as soon as it is written (:func:`start_writeback`);
    once more than ``window`` bytes are in flight, the writer waits for the oldest pieces
    (:func:`wait_writeback`). The disk stays busy (a window is always queued) and the page
    cache never holds more than ``window`` plus one piece of this writer's dirty data. Not a
    durability barrier: call :func:`datasync` at the end. Elsewhere than Linux a no-op pacer.

    Parameters
    ----------
    fd
        The file written.
    window
        Bytes in flight before the writer waits, in bytes; ``None``: :func:`flush_window`.
    """

    def __init__(self, fd: int, window: int | None = None) -> None:
        self.fd = fd
        self.window = flush_window() if window is None else window
        self._flight: deque[tuple[int, int]] = deque()
        self._bytes = 0

    def write(self, data: np.ndarray[Any, Any], offset: int) -> None:
        """:func:`pwrite_all` ``data`` at ``offset``, then pace."""
        pwrite_all(self.fd, data, offset)
        self.wrote(offset, data.nbytes)

    def wrote(self, offset: int, nbytes: int) -> None:
        """Account for ``nbytes`` written at ``offset`` by other means (``os.write``): start
        their writeback, and wait for the oldest pieces beyond the window."""
        if not nbytes or _sync_file_range is None:
            return
        start_writeback(self.fd, offset, nbytes)
        self._flight.append((offset, nbytes))
        self._bytes += nbytes
        while self._bytes > self.window:
            first, n = self._flight.popleft()
            wait_writeback(self.fd, first, n)
            self._bytes -= n
