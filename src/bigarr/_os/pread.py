"""Reading file ranges into reused, page-aligned memory: the syscalls of the cold-read path.

Page faults plus the kernel's readahead do not keep a disk busy the way large ``read`` calls
do (issue 15: a cold scan through a mapping reached 51-66% of a plain 16 MiB ``readinto``
loop). For data that is not in the page cache, :mod:`bigarr._compute.coldread` therefore
reads each chunk with ``preadv`` into a buffer from a :class:`BufferPool`, using this module:

:class:`Buffer`
    Anonymous ``mmap`` memory: page-aligned (``O_DIRECT`` needs that), faulted in once and
    then reused chunk after chunk, so a read costs no page faults.
:class:`BufferPool`
    Keeps a few buffers for reuse. A buffer goes back into use only when nothing outside the
    pool still points into it (the block lent out of it is gone and no view of it is left),
    so a function that keeps its input block (or a view of it) keeps correct data; its
    buffer is simply not reused.
:class:`RangeReader`
    A descriptor of its own for the file, so its read pattern is its own:
    ``POSIX_FADV_RANDOM`` turns the kernel's readahead off (each read brings in exactly the
    bytes asked, as one large request), and the pages a read brought into the page cache are
    dropped again with ``POSIX_FADV_DONTNEED`` (:meth:`RangeReader.drop`), so a scan leaves
    the cache as it found it. With ``direct=True`` it reads with ``O_DIRECT`` (no page cache
    and no copy at all) and falls back to buffered reads where the file system refuses it
    (``EINVAL``: tmpfs, some FUSE and network file systems).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import sys
import threading
import weakref
from typing import Any

import numpy as np

from bigarr._os.fileid import reopen
from bigarr._os.geometry import PAGE_SIZE, align_down, align_up
from bigarr.errors import FileChangedError, UnsupportedError

__all__ = ["Buffer", "BufferPool", "RangeReader"]

_O_DIRECT = getattr(os, "O_DIRECT", 0)
_MADV_HUGEPAGE = getattr(mmap, "MADV_HUGEPAGE", None)


class Buffer:
    """Page-aligned anonymous memory of ``nbytes`` bytes (rounded up to whole pages);
    ``huge=False``: without ``MADV_HUGEPAGE`` (see :mod:`bigarr._os.sink`)."""

    __slots__ = ("__weakref__", "_lent", "_mm", "array", "nbytes")

    def __init__(self, nbytes: int, *, huge: bool = True) -> None:
        self.nbytes = align_up(max(nbytes, 1), PAGE_SIZE)
        self._mm = mmap.mmap(-1, self.nbytes)
        if huge and _MADV_HUGEPAGE is not None:  # fewer faults and TLB misses; only a hint
            with contextlib.suppress(OSError):
                self._mm.madvise(_MADV_HUGEPAGE)
        self.array: np.ndarray[Any, np.dtype[np.uint8]] = np.frombuffer(self._mm, np.uint8)
        self._lent: weakref.ref[np.ndarray[Any, Any]] | None = None

    def lend(self, block: np.ndarray[Any, Any]) -> None:
        """Remember ``block`` (a view of this buffer) as handed out."""
        self._lent = weakref.ref(block)

    def idle(self) -> bool:
        """True when nothing outside the pool points into the buffer any more."""
        if self._lent is not None and self._lent() is not None:
            return False
        # self.array's references: this object's slot and getrefcount's argument. Any view
        # made of the lent block (or of the array) has the array as its base: one more.
        return sys.getrefcount(self.array) <= 2


class BufferPool:
    """Up to ``keep`` buffers of ``nbytes`` bytes kept for reuse (thread-safe).

    :meth:`take` returns an idle buffer or a new one; :meth:`give` puts one back. Buffers
    still in use elsewhere when they are looked at are dropped from the pool (their memory is
    freed with the last view of them), never reused.
    """

    def __init__(self, nbytes: int, keep: int) -> None:
        self.nbytes = align_up(max(nbytes, 1), PAGE_SIZE)
        self.keep = max(1, keep)
        self._free: list[Buffer] = []
        self._lock = threading.Lock()
        self.allocated = 0
        """Buffers made so far (for tests and plans)."""

    def take(self, nbytes: int = 0) -> Buffer:
        """An idle buffer of at least ``nbytes`` bytes (and of :attr:`nbytes`, which grows to
        the largest size asked for)."""
        with self._lock:
            self.nbytes = max(self.nbytes, align_up(nbytes, PAGE_SIZE))
            while self._free:
                buf = self._free.pop()
                if buf.idle() and buf.nbytes >= self.nbytes:
                    return buf
            self.allocated += 1
            size = self.nbytes
        return Buffer(size)

    def give(self, buf: Buffer, block: np.ndarray[Any, Any] | None = None) -> None:
        """Put ``buf`` back; ``block`` is the view of it that was handed out, if any."""
        if block is not None:
            buf.lend(block)
        with self._lock:
            if len(self._free) < self.keep:
                self._free.append(buf)

    def clear(self) -> None:
        """Drop the buffers kept for reuse (their memory goes back to the system)."""
        with self._lock:
            self._free.clear()


class RangeReader:
    """Reads byte ranges of one open file through a descriptor of its own.

    Parameters
    ----------
    fd
        An open descriptor of the file (it is re-opened, not duplicated: a duplicate would
        share the read pattern and flags of the original).
    path
        The file's path, used when ``/proc/self/fd`` is not there to re-open ``fd``.
    direct
        Read with ``O_DIRECT`` where the file system allows it.

    Raises
    ------
    UnsupportedError
        When the file cannot be re-opened for reading (the caller then uses its mapping).
    """

    def __init__(self, fd: int, path: str | None, *, direct: bool = False) -> None:
        self.fd = self._reopen(fd, path, 0)
        os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_RANDOM)  # no readahead of its own
        self.direct_fd: int | None = None
        self._retired: list[int] = []
        if direct and _O_DIRECT:
            with contextlib.suppress(UnsupportedError):
                self.direct_fd = self._reopen(fd, path, _O_DIRECT)

    @staticmethod
    def _reopen(fd: int, path: str | None, flags: int) -> int:
        new = reopen(fd, path, flags | os.O_RDONLY)
        if new is None:
            raise UnsupportedError("The file cannot be re-opened for reading by range.")
        return new

    @property
    def can_direct(self) -> bool:
        """True when reads may bypass the page cache (``O_DIRECT``)."""
        return self.direct_fd is not None

    def read(self, buf: Buffer, base: int, start: int, stop: int, *,
             direct: bool = False) -> None:
        """Read file bytes ``start:stop`` into ``buf``, whose byte 0 stands for file offset
        ``base`` (a page boundary at or before ``start``).

        A block read this way keeps its offset within a page (its alignment in the mapping),
        and pieces of one block can be read by several threads at once. ``O_DIRECT`` reads
        (``direct``) are widened to whole pages (offset, address and length must be multiples
        of the block size) within the buffer.

        Raises
        ------
        FileChangedError
            If the file ends before ``stop`` (it shrank under the run).
        """
        if base % PAGE_SIZE or start < base or stop - base > buf.nbytes:
            raise ValueError(f"Cannot read bytes {start}:{stop} into a buffer of {buf.nbytes} "
                             f"bytes starting at file offset {base}.")
        fd = self.direct_fd
        if direct and fd is not None:
            low = align_down(start, PAGE_SIZE)
            high = min(align_up(stop, PAGE_SIZE), base + buf.nbytes)
            try:
                self._fill(fd, buf, base, low, high, stop)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # refused at read time: buffered from now on. Closed only by close(): other
                # threads may be reading through it right now.
                self.direct_fd = None
                self._retired.append(fd)
        self._fill(self.fd, buf, base, start, stop, stop)

    @staticmethod
    def _fill(fd: int, buf: Buffer, base: int, start: int, stop: int, need: int) -> None:
        view = buf.array.data
        done = start
        while done < stop:
            n = os.preadv(fd, [view[done - base:stop - base]], done)
            if n <= 0:
                break
            done += n
            if done >= need:  # short only at the end of the file: enough, and never a
                break  # second O_DIRECT read from an unaligned offset
        if done < need:
            raise FileChangedError(
                errno.EIO,
                f"The file ended at byte {done} while reading up to byte {need}: it shrank "
                "under the run.",
            )

    def drop(self, start: int, stop: int) -> None:
        """Evict file bytes ``start:stop`` from the page cache (``POSIX_FADV_DONTNEED``;
        pages other processes map, or that are dirty, stay)."""
        if stop > start:
            os.posix_fadvise(self.fd, start, stop - start, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        """Close the descriptors (idempotent)."""
        for fd in (self.fd, self.direct_fd, *self._retired):
            if fd is not None and fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.fd, self.direct_fd, self._retired = -1, None, []
