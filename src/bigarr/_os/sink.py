"""The output sink: finished output bytes written to a new file, at the disk's write rate.

Issue 15 asks durable writes to reach the disk's write limit (``machine.disk_write`` in the
bench: 16 MiB ``O_DIRECT`` writes, two in flight, then ``fdatasync``). Buffered ``pwrite``
cannot, on a busy machine: every byte is copied into the page cache, each 4 KiB folio is
allocated, dirtied, written back and reclaimed by the kernel, and all of that is CPU time that
competes with the computation. Measured on this project's virtio disk with other jobs running
(512 MiB, ``nice -n 19``): ``O_DIRECT`` 0.98-1.07 GB/s; buffered ``pwrite`` with write-behind
(the flush policy of :mod:`bigarr._os.durable`) 0.10-0.33 GB/s; stores through a shared
mapping 0.13-0.19 GB/s.

:class:`Sink` is the one owner of writing finished output arrays into a file:

* with ``direct=True`` (a new file nobody else maps or reads while it is written), the
  page-aligned middle of each array is copied into page-aligned staging buffers and written
  with ``O_DIRECT`` by the sink's own writer threads (two writes in flight, as in the limit
  case), so the disk always has work queued while the caller computes; an array *lent* to the
  sink whose middle is page-aligned in memory as well (``map_blocks``' results, placed by
  :mod:`bigarr._compute.placed`, and the staged chunks of ``iter_chunks(direct=True)``,
  :mod:`bigarr._compute.directfill`) is written from its own memory, with no copy;
* the few bytes before the first and after the last page boundary of an array share their
  page with the neighbouring arrays (the end of one chunk and the start of the next, whenever
  chunk boundaries do not fall on the file's pages: an input ``.npy`` with a 128-byte header
  and a new output with a 4 KiB one, or rows of 12 bytes). The sink gathers them in a page
  buffer (:class:`_Page`) and writes the page with ``O_DIRECT`` once its bytes are all there;
  a page waited for before that (the file's last page, a neighbour that is never written) is
  written buffered then. Writing them buffered at once, as before, cost a ``map_blocks``
  worker 10-35 ms per chunk boundary: a buffered write takes the inode's lock exclusively,
  so it waits for every direct write in flight (ext4), and the worker computes nothing
  meanwhile (2 GiB ``map_blocks(x*2+1)``, 16 MiB chunks: 263 such writes took 4.6 s of the
  workers' 10.5 s);
* bytes that are already in a file (uncompressed zarr chunks) are read by the caller's
  callback straight into the staging buffers (:meth:`Sink.write_from`), never held whole;
* the staging memory is bounded (``staging`` bytes, at most :data:`STAGING_MAX`): a writer
  that finds every buffer in flight waits for one, so memory never grows with the output.
  It is made of 4 KiB pages, not ``MADV_HUGEPAGE`` (fresh 2 MiB pages were slow to fault
  in under load, see ``_compute/_alloc.c``), and reused;
* where ``O_DIRECT`` is refused (the re-open fails, or the first write fails with ``EINVAL``:
  some FUSE and network file systems), and with ``direct=False``, bytes are written buffered
  and their writeback started at once (``sync_file_range``), the flush policy's write-behind;
* :meth:`Sink.write` returns a :class:`Written` whose :meth:`Written.wait` returns once the
  bytes are on the disk (direct writes finished, buffered ones written back): a chunk may
  then be journaled after :meth:`Sink.sync` (``fdatasync``, which also flushes the disk's
  cache and the file's metadata).

Direct writes bypass the page cache, so they are only for files no mapping has dirtied or
read in the same range: a new output (``map_blocks``' partial file, ``from_zarr``'s new file),
never a user's array written in place, except a direct fill's staged chunk, whose range of
the mapping is anonymous memory (not the page cache) while it is written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np

from bigarr._os.durable import pwrite_all, start_writeback, wait_writeback
from bigarr._os.fileid import reopen
from bigarr._os.geometry import PAGE_SIZE, align_down, align_up
from bigarr._os.paths import os_error
from bigarr._os.pread import Buffer
from bigarr._os.workers import Workers

__all__ = ["DIRECT_ALIGN", "LENT_PIECE", "STAGING_MAX", "Appending", "Sink", "Written"]

_O_DIRECT = getattr(os, "O_DIRECT", 0)

DIRECT_ALIGN = max(PAGE_SIZE, 4096)
"""Alignment of ``O_DIRECT`` offsets, lengths and buffers (bytes): a page, which covers every
logical block size Linux file systems use (512 bytes to 4 KiB)."""

STAGING_MAX = 32 << 20
"""Most staging memory a sink holds (bytes): four 8 MiB writes, two on the disk while two are
filled. It takes the place of the dirty page cache the flush window allowed before."""

_PIECE_MAX = 8 << 20

LENT_PIECE = 16 << 20
"""Largest ``O_DIRECT`` write from lent memory (bytes): ``machine.disk_write``'s write size.
Lent pieces cost no staging memory, so they are as large as the limit case's."""
_WRITERS = 2  # writes in flight, as in machine.disk_write


class _Page:
    """One page of the file shared by several writes (the end of one array, the start of the
    next): their bytes gathered in a page-aligned buffer until they cover the page.

    ``state``: ``"open"`` (gathering), ``"full"`` (queued to the writer threads as one
    ``O_DIRECT`` write) or ``"buffered"`` (waited for while open: its bytes written buffered).
    ``done`` is resolved when the page's bytes are on the disk, or holds the write's error.
    """

    __slots__ = ("at", "buf", "done", "parts", "state")

    def __init__(self, at: int) -> None:
        self.at = at
        self.buf = Buffer(DIRECT_ALIGN, huge=False)
        self.parts: list[tuple[int, int]] = []  # (start, stop) within the page, merged
        self.state = "open"
        self.done: Future[None] = Future()

    def add(self, raw: np.ndarray[Any, Any], start: int) -> bool:
        """Copy ``raw`` to ``start`` bytes into the page; True once the page is covered."""
        stop = start + int(raw.nbytes)
        self.buf.array[start:stop] = raw
        merged: list[tuple[int, int]] = []
        for a, b in sorted([*self.parts, (start, stop)]):
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        self.parts = merged
        return merged == [(0, DIRECT_ALIGN)]


class Written:
    """What one :meth:`Sink.write` left to finish: direct pieces in flight, shared pages, and
    buffered ranges under writeback."""

    __slots__ = ("_fd", "_futures", "_pages", "_ranges", "_sink")

    def __init__(self, fd: int, sink: Sink | None = None) -> None:
        self._fd = fd
        self._sink = sink
        self._futures: list[Future[None]] = []
        self._pages: list[_Page] = []
        self._ranges: list[tuple[int, int]] = []

    def wait(self) -> None:
        """Return once every byte of the write is on the disk (not yet a durability barrier:
        see :meth:`Sink.sync`). A shared page whose other bytes have not been written yet is
        written buffered now.

        Raises
        ------
        DiskFullError, PathError, MappingError
            If a write or its writeback failed (``ENOSPC``, ``EIO``).
        """
        for future in self._futures:
            future.result()
        for page in self._pages:
            assert self._sink is not None
            self._sink._settle(page)
        for offset, nbytes in self._ranges:
            wait_writeback(self._fd, offset, nbytes)


class Sink:
    """Writes finished arrays into one file: ``O_DIRECT`` where allowed, else buffered with
    write-behind.

    Parameters
    ----------
    fd
        A writable descriptor of the file (the sink does not close it). The file must already
        be as long as everything written (``create``'s preallocation): direct writes never
        extend it.
    path
        The file's name, used when ``/proc/self/fd`` cannot re-open ``fd``; None for an
        unnamed file.
    direct
        Write the page-aligned middle of each array with ``O_DIRECT``. Only for a new file that
        nothing maps or reads meanwhile.
    staging
        Most staging memory for direct writes, in bytes (at most :data:`STAGING_MAX`).
    """

    def __init__(self, fd: int, path: str | None = None, *, direct: bool = True,
                 staging: int = STAGING_MAX) -> None:
        self.fd = fd
        self._name = path or "the output file"  # (for errors)
        self._direct_fd: int | None = _reopen_direct(fd, path) if direct else None
        self._refused = False  # O_DIRECT refused at a write: buffered from then on
        # Shared pages are written whole with O_DIRECT only inside the file (a direct write
        # never extends it): its length now, which create's preallocation has set.
        self._size = os.fstat(fd).st_size if self._direct_fd is not None else 0
        self._pages: dict[int, _Page] = {}  # open shared pages, by file offset
        staging = max(2 * DIRECT_ALIGN, min(staging, STAGING_MAX))
        self._piece = min(_PIECE_MAX, max(DIRECT_ALIGN, align_down(staging // 4, DIRECT_ALIGN)))
        self._nbuf = max(2, staging // self._piece)
        self._made = 0
        self._free: queue.SimpleQueue[Buffer] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers = Workers(_WRITERS, "bigarr-sink")
        self._closed = False

    @property
    def direct(self) -> bool:
        """True while writes bypass the page cache (``O_DIRECT`` was allowed)."""
        return self._direct_fd is not None and not self._refused

    def write(self, data: np.ndarray[Any, Any], offset: int, *, lend: bool = False) -> Written:
        """Write the bytes of the C-contiguous array ``data`` at ``offset`` (bytes) of the file.

        Buffered bytes have their writeback started; direct pieces are queued to the writer
        threads (this call waits only for a free staging buffer). ``data`` may be reused as
        soon as the call returns, unless it was lent.

        With ``lend=True`` the caller hands ``data`` over until :meth:`Written.wait` returns
        (nothing may change it meanwhile; the :class:`Written` holds a reference): where its
        page-aligned middle is page-aligned in memory too (see :mod:`bigarr._compute.placed`),
        the middle is written from ``data`` itself, with no staging copy, in pieces of up to
        :data:`LENT_PIECE` bytes.
        """
        nbytes = int(data.nbytes)
        done = Written(self.fd, self)
        if not nbytes:
            return done
        raw = data.reshape(-1).view(np.uint8)
        if not self.direct:
            self._buffered(done, raw, offset)
            return done
        end = offset + nbytes
        lo = min(align_up(offset, DIRECT_ALIGN), end)  # the page-aligned middle: [lo, hi)
        hi = max(align_down(end, DIRECT_ALIGN), lo)
        if lo > offset:
            self._shared(done, raw[: lo - offset], offset)
        if lend and hi > lo and (raw.ctypes.data + lo - offset) % DIRECT_ALIGN == 0:
            for start in range(lo, hi, LENT_PIECE):
                n = min(LENT_PIECE, hi - start)
                piece = raw[start - offset: start - offset + n]
                done._futures.append(self._workers.submit(self._put_lent, piece, start))
        else:
            for start in range(lo, hi, self._piece):
                n = min(self._piece, hi - start)
                buf = self._take()
                np.copyto(buf.array[:n], raw[start - offset: start - offset + n])
                done._futures.append(self._workers.submit(self._put, buf, start, n))
        if end > hi:
            self._shared(done, raw[hi - offset:], hi)
        return done

    def write_from(self, fill: Callable[[np.ndarray[Any, Any], int], None], offset: int,
                   nbytes: int) -> Written:
        """Write ``nbytes`` bytes at ``offset`` (bytes) of the file that ``fill`` produces
        piece by piece, straight into the staging buffers: no array of the whole range is held.

        ``fill(dest, start)`` puts the range's bytes ``start .. start + dest.nbytes`` into
        ``dest`` (a writable ``uint8`` array) and returns nothing; it runs in the calling
        thread, and its errors propagate unchanged. For data already in a file (uncompressed
        zarr chunks read with ``preadv``) this is one copy from the page cache to the disk's
        ``O_DIRECT`` writes, where :meth:`write` would need the whole array first and
        ``copy_file_range`` puts every byte through the output's page cache and writeback
        (measured on this project's busy virtio disk, 1 GiB of cached 4 MiB chunk files:
        0.45-0.89x ``machine.disk_write``'s rate that way, 0.99-1.24x with ``O_DIRECT``).
        """
        done = Written(self.fd, self)
        end = offset + nbytes
        if not self.direct:
            for start in range(offset, end, _PIECE_MAX):
                piece = np.empty(min(_PIECE_MAX, end - start), np.uint8)
                fill(piece, start - offset)
                self._buffered(done, piece, start)
            return done
        lo = min(align_up(offset, DIRECT_ALIGN), end)  # the page-aligned middle: [lo, hi)
        hi = max(align_down(end, DIRECT_ALIGN), lo)
        if lo > offset:
            head = np.empty(lo - offset, np.uint8)
            fill(head, 0)
            self._shared(done, head, offset)
        for start in range(lo, hi, self._piece):
            n = min(self._piece, hi - start)
            buf = self._take()
            try:
                fill(buf.array[:n], start - offset)
            except BaseException:
                self._free.put(buf)
                raise
            done._futures.append(self._workers.submit(self._put, buf, start, n))
        if end > hi:
            tail = np.empty(end - hi, np.uint8)
            fill(tail, hi - offset)
            self._shared(done, tail, hi)
        return done

    def sync(self) -> None:
        """Make everything written so far durable (``fdatasync``: data, the disk's cache, and
        the metadata needed to read it). Wait for the :class:`Written` first.

        Raises
        ------
        DiskFullError, PathError
            If the file system fails the sync (``ENOSPC`` of a sparse file, ``EIO``).
        """
        try:
            if hasattr(os, "fdatasync"):
                os.fdatasync(self.fd)
            else:  # pragma: no cover - macOS and the BSDs
                os.fsync(self.fd)
        except OSError as exc:
            raise os_error(exc, self._name, writing=True) from exc

    def close(self) -> None:
        """Wait for the writer threads, close the direct descriptor, free the staging buffers.
        Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._workers.close()
        fd, self._direct_fd = self._direct_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        with self._lock:  # pages never waited for (a failed run): nothing to write
            self._pages.clear()
        while True:  # the buffers' memory goes back with their last reference
            try:
                self._free.get_nowait()
            except queue.Empty:
                break

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals -------------------------------------------------------------------------
    def _buffered(self, done: Written, raw: np.ndarray[Any, Any], offset: int) -> None:
        try:
            pwrite_all(self.fd, raw, offset)
        except OSError as exc:  # ENOSPC of a sparse file (no preallocation here), EIO
            raise os_error(exc, self._name, writing=True) from exc
        start_writeback(self.fd, offset, int(raw.nbytes))
        done._ranges.append((offset, int(raw.nbytes)))

    def _shared(self, done: Written, raw: np.ndarray[Any, Any], offset: int) -> None:
        """Bytes that share their page with other writes (within one page): gathered in the
        page's buffer, the page queued as one direct write once covered. A page reaching past
        the end of the file is written buffered at once (a direct write would extend it)."""
        at = align_down(offset, DIRECT_ALIGN)
        if at + DIRECT_ALIGN > self._size:
            self._buffered(done, raw, offset)
            return
        with self._lock:
            page = self._pages.get(at)
            if page is None:
                page = self._pages[at] = _Page(at)
            full = page.add(raw, offset - at)
            if full:
                del self._pages[at]
                page.state = "full"
        done._pages.append(page)
        if full:
            try:
                self._workers.submit(self._put_page, page)
            except RuntimeError as exc:  # the sink was closed under a failing run
                page.done.set_exception(exc)

    def _put_page(self, page: _Page) -> None:
        """Write a covered shared page (a writer thread)."""
        try:
            self._put_lent(page.buf.array, page.at)
        except BaseException as exc:
            page.done.set_exception(exc)
        else:
            page.done.set_result(None)

    def _settle(self, page: _Page) -> None:
        """Wait for a shared page: one still open is written buffered now, with the bytes it
        holds (its other writes, if they come later, start a new page, written buffered too,
        so the page never mixes cached and direct bytes unless wholly rewritten)."""
        with self._lock:
            flush = page.state == "open"
            if flush:
                page.state = "buffered"
                if self._pages.get(page.at) is page:
                    del self._pages[page.at]
        if flush:
            try:
                for a, b in page.parts:
                    pwrite_all(self.fd, page.buf.array[a:b], page.at + a)
                    wait_writeback(self.fd, page.at + a, b - a)
            except OSError as exc:
                err = os_error(exc, self._name, writing=True)
                page.done.set_exception(err)
                raise err from exc
            page.done.set_result(None)
        page.done.result()

    def _take(self) -> Buffer:
        """A free staging buffer: a new one while fewer than the bound exist, else wait."""
        with self._lock:
            if self._free.empty() and self._made < self._nbuf:
                self._made += 1
                return Buffer(self._piece, huge=False)  # (as placed results: _alloc.c)
        return self._free.get()

    def _put(self, buf: Buffer, offset: int, nbytes: int) -> None:
        """Write one staged piece (a writer thread); buffered if ``O_DIRECT`` fails."""
        try:
            self._put_lent(buf.array[:nbytes], offset)
        finally:
            self._free.put(buf)

    def _put_lent(self, piece: np.ndarray[Any, Any], offset: int) -> None:
        """Write one page-aligned piece of bytes from its own memory (a writer thread);
        buffered if ``O_DIRECT`` fails."""
        nbytes = int(piece.nbytes)
        view = memoryview(piece.data)
        fd = self._direct_fd
        try:
            if fd is not None and not self._refused:
                done = 0
                try:
                    while done < nbytes:  # O_DIRECT may write fewer bytes (then aligned ones)
                        n = os.pwrite(fd, view[done:], offset + done)
                        if n <= 0:  # no progress would loop for ever
                            raise OSError(errno.ENOSPC, "write made no progress", None)
                        done += n
                    return
                except OSError as exc:
                    if exc.errno != errno.EINVAL or done:
                        raise
                    self._refused = True  # (the descriptor is closed by close(), not here:
                    # the other writer thread may be using it)
            pwrite_all(self.fd, piece, offset)
            wait_writeback(self.fd, offset, nbytes)
        except OSError as exc:  # ENOSPC of a sparse file (no preallocation here), EIO
            raise os_error(exc, self._name, writing=True) from exc


class Appending:
    """Arrays appended front to back through ``sink`` from byte ``offset``, with at most
    ``depth`` writes left to finish: the sequential writers' one loop (a sort's runs and its
    output, :func:`bigarr._core.files.written_in_order`)."""

    def __init__(self, sink: Sink, offset: int = 0, depth: int = 4) -> None:
        self.sink = sink
        self.offset = offset
        self.depth = depth
        self._pending: deque[Written] = deque()

    def write(self, data: np.ndarray[Any, Any], *, lend: bool = False) -> None:
        """Append ``data`` (C-contiguous); with ``lend``, written from its own memory and waited
        for before returning, so ``data`` may be reused at once either way."""
        done = self.sink.write(data, self.offset, lend=lend)
        self.offset += data.nbytes
        if lend:
            done.wait()
            return
        self._pending.append(done)
        while len(self._pending) > self.depth:
            self._pending.popleft().wait()

    def drain(self) -> None:
        """Wait for every write (raising the first error)."""
        while self._pending:
            self._pending.popleft().wait()


def _reopen_direct(fd: int, path: str | None) -> int | None:
    """A second descriptor of ``fd``'s file opened with ``O_DIRECT``; None where refused."""
    return reopen(fd, path, os.O_WRONLY | _O_DIRECT) if _O_DIRECT else None
