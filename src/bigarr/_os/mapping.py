"""The mapping: the one owner of mmap'd address ranges and of every syscall made on them.

bigarr maps files with the C library's ``mmap`` (through ctypes) rather than Python's
:class:`mmap.mmap`, because only that lets ``close()`` be both prompt and safe:

* numpy arrays built on a Python ``mmap`` hold no buffer export, so ``mmap.close()`` unmaps
  memory arrays still point into and the next access segfaults (``numpy.memmap`` has no close
  for this reason).
* Here, :meth:`Mapping.close` *retires* the range instead: it flushes, then atomically replaces
  the file pages with anonymous zero pages (``MAP_FIXED``) and closes the file descriptor. The
  file is released at once; the address range stays valid, so a stray pointer can never fault;
  the range is unmapped when the last array pointing into it is garbage-collected
  (a :func:`weakref.finalize` on the buffer owner).
* Before retiring, ``close()`` looks for other live views of the mapping and refuses with
  :class:`~bigarr.errors.MappingBusyError` unless ``force=True``: closing under a live view is
  almost always a bug, and a retired view would silently read zeros. What it counts: every
  bigarr view (tracked by weak reference) other than the caller and the arrays the caller is a
  view of (closing from a view closes its parent too), and plain ndarray views that reach the
  mapping's root array (``np.asarray(arr)``, ``arr.view(np.ndarray)``, ``np.frombuffer(arr)``),
  found by its reference count. What it leaves out on purpose: the view an ``iter_chunks``
  loop handed out last (:meth:`Mapping.lend`), which the loop variable keeps alive after the
  loop. What it cannot see: a ``memoryview`` of the caller, and a
  plain ndarray view of the caller when the caller is itself a view (its ``base`` is then the
  caller, not the root); those read zeros after the close.

Spans passed to the methods here are relative to the start of the mapping (byte 0 is the first
mapped byte, which sits at file offset :attr:`Mapping.map_offset`, a page boundary).
"""

from __future__ import annotations

import ctypes
import errno
import gc
import mmap
import os
import sys
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from bigarr._os.cachestat import cached_pages
from bigarr._os.durable import can_wait_writeback, start_writeback, wait_writeback
from bigarr._os.geometry import PAGE_SIZE, TABLE_SPAN, ByteSpan, align_down, align_up
from bigarr._os.hints import Hint
from bigarr._os.libc import libc as _libc
from bigarr._os.modes import Access
from bigarr._os.paths import os_error
from bigarr.errors import (
    AccessDeniedError,
    DiskFullError,
    FileChangedError,
    HintError,
    MappingBusyError,
    MappingError,
    ReadOnlyError,
    UnsupportedError,
)

__all__ = ["Mapping", "Spare", "check_mapped", "mapped_file"]

_LINUX = sys.platform.startswith("linux")
_DARWIN = sys.platform == "darwin"
_MAP_FIXED = 0x10  # the same on Linux and the BSDs/macOS
# Python names MAP_NORESERVE only on some versions and platforms (3.11 on Linux does not); the
# value is part of each kernel's ABI: 0x4000 on Linux, 0x40 on macOS, none elsewhere.
_MAP_NORESERVE: int = getattr(mmap, "MAP_NORESERVE",
                              0x4000 if _LINUX else (0x40 if _DARWIN else 0))
_MS_SYNC = 4 if _LINUX else 0x10
_MREMAP_MAYMOVE, _MREMAP_FIXED = 1, 2  # Linux
_MADV_POPULATE_WRITE = 23  # Linux 5.14+; EINVAL before (then the pages fault in on use)
_MAP_FAILED = ctypes.c_void_p(-1).value


def _oserror(what: str, path: str) -> MappingError:
    err = ctypes.get_errno()
    return MappingError(err, f"{what} failed for {path}: {os.strerror(err)}")


def _no_room_to_map(path: str, length: int) -> str:
    """Why a private mapping was refused with ENOMEM: strict overcommit, or the address space."""
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            strict = f.read().strip() == "2"
    except OSError:
        strict = False
    why = ("this kernel uses strict overcommit (vm.overcommit_memory=2), which ignores "
           "MAP_NORESERVE and charges the whole mapping against its commit limit" if strict
           else "the kernel refused to reserve it (address space or commit limit)")
    return (f"Cannot map {length} bytes of {path} in private mode: {why}. Open it read-only or "
            "shared, or map a smaller region with bigarr.open_raw(..., offset=, shape=).")


def _room_for_holes(fd: int, path: str) -> None:
    """Refuse a shared (writable) mapping of a sparse file whose holes the disk cannot hold.

    A write through a mapping into a hole needs a disk block; on a full disk the kernel cannot
    report that to the writer and kills the process with SIGBUS. Files bigarr creates are
    preallocated, but ``.npy`` files numpy wrote (``open_memmap``) or ``truncate`` made are
    sparse. Their holes are not allocated here (a sparse file larger than the disk is a
    legitimate thing to map and edit in a few places), but a file whose holes exceed the
    space free now is refused, so that a full disk is an exception at open, not a crash at
    the first write. Space taken by others after the open is not covered (as a file cut by
    another process is not).
    """
    try:
        st = os.fstat(fd)
        if st.st_blocks * 512 >= st.st_size:
            return
        vfs = os.statvfs(fd)
    except (OSError, AttributeError):  # no st_blocks or statvfs on this platform
        return
    missing = st.st_size - st.st_blocks * 512  # at most this many bytes need blocks
    free = vfs.f_bavail * vfs.f_frsize
    if vfs.f_blocks and missing > free:
        raise DiskFullError(
            f"{path} is sparse: up to {missing} of its bytes have no disk blocks yet, and the "
            f"file system has {free} bytes free for them. A write into a hole through a shared "
            "mapping would crash the process (SIGBUS) once the disk is full, so bigarr refuses "
            "to map it for writing. Free some space, or open it read-only or in private mode."
        )


class _Region:
    """Owner of one mapped address range; numpy arrays see it through ``__array_interface__``.

    Its finalizer unmaps the range, so the memory lives exactly as long as some array's
    ``base`` chain reaches this object. The finalizer does not run at interpreter exit: daemon
    threads may still be reading the range then (numpy loops run without the GIL), and the
    process's exit releases it anyway.
    """

    __slots__ = ("__array_interface__", "__weakref__")

    def __init__(self, addr: int, length: int, writable: bool) -> None:
        self.__array_interface__ = {
            "data": (addr, not writable),
            "shape": (length,),
            "typestr": "|u1",
            "version": 3,
        }
        weakref.finalize(self, _libc.munmap, addr, length).atexit = False


class Spare:
    """Anonymous memory made ready for :meth:`Mapping.stage` (its pages allocated and zeroed,
    ``MADV_POPULATE_WRITE``), so that allocating them, which costs more CPU time than
    filling them, can be done ahead on another thread. Freed when dropped unless spent.

    Parameters
    ----------
    nbytes
        Size in bytes (rounded up to whole pages).
    """

    def __init__(self, nbytes: int) -> None:
        self.nbytes = align_up(max(1, nbytes), PAGE_SIZE)
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        addr = _libc.mmap(None, self.nbytes, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        if addr in (None, _MAP_FAILED):
            raise _oserror("allocating staging memory", "anonymous memory")
        self.addr = int(addr)
        self._free = weakref.finalize(self, _libc.munmap, self.addr, self.nbytes)
        # No MADV_HUGEPAGE: with the kernel's default defrag policy ("madvise") it makes each
        # allocation compact memory synchronously, which under load stalled fills for seconds
        # (sys time 1.5-3.2 s per GiB instead of 0.2 s); huge pages still come when free.
        _libc.madvise(self.addr, self.nbytes, _MADV_POPULATE_WRITE)  # a hint: may fail

    def spent(self) -> None:
        """The pages were moved away: the range is no longer this object's to unmap."""
        self._free.detach()
        self.addr = 0

    def free(self) -> None:
        """Unmap the memory now (idempotent)."""
        self._free()
        self.addr = 0


class Mapping:
    """One memory-mapped byte range of one file, in one access mode.

    Parameters
    ----------
    path
        File to map.
    access
        ``"readonly"`` (MAP_SHARED, read-only), ``"shared"`` (MAP_SHARED, read-write) or
        ``"private"`` (MAP_PRIVATE, copy-on-write).
    start, stop
        Byte range of the file the arrays will use; the mapping starts at ``start`` rounded
        down to a page. The caller has already checked that the file is long enough.
    fd
        An open descriptor of the file, mapped instead of opening ``path`` (for file objects).
        It is duplicated: the mapping owns its copy, and the caller keeps (and closes) its own.
    named
        False for a file without a path (``tempfile.TemporaryFile()``): ``path`` is then only
        a label for messages, and the arrays cannot be pickled by reference.
    """

    def __init__(self, path: str, access: Access, start: int, stop: int, *,
                 fd: int | None = None, named: bool = True) -> None:
        self.path = path
        self.named = named
        self.access = access
        self.map_offset = align_down(start, mmap.ALLOCATIONGRANULARITY)
        self.length = stop - self.map_offset
        self.data_start = start - self.map_offset
        self.closed = False
        self._arrays: dict[int, weakref.ref[np.ndarray[Any, Any]]] = {}
        self._lent: set[int] = set()
        self._closers: list[Callable[[], None]] = []
        self._staged: list[ByteSpan] = []  # page spans under anonymous memory (stage())
        flags = os.O_RDWR if access == "shared" else os.O_RDONLY
        try:
            self.fd = os.open(path, flags | getattr(os, "O_CLOEXEC", 0)) if fd is None \
                else os.dup(fd)  # non-inheritable, like O_CLOEXEC
        except PermissionError:
            if access != "shared":
                raise AccessDeniedError(
                    f"Permission denied reading {path}; bigarr needs read permission on it."
                ) from None
            raise ReadOnlyError(
                f"{path} cannot be opened for writing. Open it with mode='r' (read-only) or "
                "'private' (copy-on-write edits that stay in memory)."
            ) from None
        except OSError as exc:  # EROFS, ELOOP, ENAMETOOLONG, ...: as bigarr errors
            raise os_error(exc, path, writing=access == "shared") from None
        self._fd_finalizer = weakref.finalize(self, os.close, self.fd)
        if stop - start == 0 or self.length == 0:
            self.addr = 0
            self.root: np.ndarray[Any, Any] = np.empty(0, np.uint8)
            self.root.flags.writeable = access != "readonly"
            return
        if _libc is None:
            raise UnsupportedError(
                "bigarr maps files through the POSIX mmap call; this platform has none."
            )
        self.check_file()
        if access == "shared":
            _room_for_holes(self.fd, path)
        prot = mmap.PROT_READ | (mmap.PROT_WRITE if access != "readonly" else 0)
        # A writable private mapping is charged in full against the kernel's commit limit
        # unless it reserves nothing: without MAP_NORESERVE, a file larger than RAM + swap
        # cannot be opened in private mode at all (issue 17: ENOMEM from 24 GiB on a 24 GiB
        # machine). Its scratch pages are then charged as they are made, and bounded by
        # ``scratch_limit`` (bigarr._core.private), not by the kernel.
        share = mmap.MAP_PRIVATE | _MAP_NORESERVE if access == "private" else mmap.MAP_SHARED
        addr = _libc.mmap(None, self.length, prot, share, self.fd, self.map_offset)
        if addr in (None, _MAP_FAILED):
            if access == "private" and ctypes.get_errno() == errno.ENOMEM:
                raise MappingError(errno.ENOMEM, _no_room_to_map(path, self.length))
            raise _oserror("mmap", path)
        self.addr = int(addr)
        region = _Region(self.addr, self.length, access != "readonly")
        self.root = np.asarray(region)

    # ---- bookkeeping -------------------------------------------------------------------------
    def track(self, array: np.ndarray[Any, Any]) -> None:
        """Remember ``array`` (a weak reference) as pointing into this mapping."""
        key = id(array)
        arrays, lent = self._arrays, self._lent

        def forget(_ref: object, key: int = key) -> None:
            arrays.pop(key, None)
            lent.discard(key)  # before the id can be reused: callbacks run at deallocation

        arrays[key] = weakref.ref(array, forget)

    def lend(self, array: np.ndarray[Any, Any]) -> None:
        """Mark tracked ``array`` as lent by an iterator: :meth:`live_views` does not count it.

        ``memmap.iter_chunks`` lends the view it hands out, so the natural loop
        ``for chunk, view in x.iter_chunks(): ...`` followed by ``x.close()`` works although the
        loop variable is still alive; after the close that view raises ``ClosedError`` like any
        other (and raw pointers into it read zeros). The iterator takes the mark back
        (:meth:`unlend`) when it hands out the next view, so views a loop keeps (in a list, say)
        still make ``close()`` refuse.
        """
        self._lent.add(id(array))

    def unlend(self, array: np.ndarray[Any, Any]) -> None:
        """Count ``array`` among the live views again (undo :meth:`lend`)."""
        self._lent.discard(id(array))

    def offset_of(self, array: np.ndarray[Any, Any]) -> int:
        """Byte offset, within the mapping, of ``array``'s first element."""
        if self.addr == 0:
            return 0
        return int(array.__array_interface__["data"][0]) - self.addr

    def live_views(self, caller: np.ndarray[Any, Any] | None) -> int:
        """Count arrays other than ``caller`` (and arrays it is a view of) using the range.

        Views lent by an iterator (:meth:`lend`) are not counted.
        """
        for attempt in range(2):
            mine = set()
            obj: object = caller
            while isinstance(obj, np.ndarray):
                mine.add(id(obj))
                obj = obj.base
            alive = [a for a in (r() for r in list(self._arrays.values())) if a is not None]
            lent = self._lent
            others = sum(1 for a in alive if id(a) not in mine and id(a) not in lent)
            direct = sum(1 for a in alive if a.base is self.root)
            # References to root: self.root, getrefcount's argument, and each tracked array
            # built directly on it. More means untracked (plain ndarray) views exist.
            untracked = sys.getrefcount(self.root) - 2 - direct
            del alive
            if others + untracked == 0 or attempt:
                return others + max(untracked, 0)
            gc.collect()  # views caught in reference cycles are not really alive
        raise AssertionError("unreachable")

    # ---- syscalls on spans -------------------------------------------------------------------
    def _range(self, span: ByteSpan, outward: bool) -> tuple[int, int] | None:
        whole = ByteSpan(0, self.length)
        # Page arithmetic in file coordinates: the mapping start is page-aligned in the file.
        pages = span.outward(PAGE_SIZE) if outward else span.inward(PAGE_SIZE)
        pages = pages.clip(whole)
        if pages.nbytes == 0 or self.addr == 0:
            return None
        return self.addr + pages.start, pages.nbytes

    def table_span(self, span: ByteSpan) -> ByteSpan:
        """``span`` widened to whole page-table units (:data:`~bigarr._os.geometry.TABLE_SPAN`
        of virtual address space, 2 MiB here), clipped to the mapping.

        Every page that touching ``span`` can map lies inside it (fault-around and large
        folios never cross a page table), and dropping whole units never splits a huge (PMD)
        mapping of a file's 2 MiB folio: Linux places a mapping of 2 MiB or more at an address
        congruent to its file offset modulo 2 MiB, so these units are the file's folios.
        """
        if self.addr == 0:
            return span.clip(ByteSpan(0, self.length))
        start = align_down(self.addr + span.start, TABLE_SPAN) - self.addr
        stop = align_up(self.addr + span.stop, TABLE_SPAN) - self.addr
        return ByteSpan(max(0, start), max(0, stop)).clip(ByteSpan(0, self.length))

    def check_open(self) -> None:
        """Raise :class:`~bigarr.errors.ClosedError` if the mapping has been closed."""
        if self.closed:
            from bigarr.errors import ClosedError

            raise ClosedError(
                f"The mapping of {self.path} is closed; its data can no longer be read or "
                "written. Open the file again (bigarr.open) to use it, or copy what you need "
                "before close()."
            )

    def check_file(self) -> None:
        """Refuse to touch pages if the file has shrunk below the mapped range (SIGBUS risk).

        Raises
        ------
        ClosedError
            If the mapping is closed (its descriptor is gone, or already reused for another
            file), also when another thread closes it during the check.
        FileChangedError
            If the file is shorter than the mapped range.
        """
        self.check_open()
        try:
            size = os.fstat(self.fd).st_size
        except OSError:
            self.check_open()  # closed by another thread since the first check
            raise
        if size < self.map_offset + self.length:
            raise FileChangedError(
                errno.EIO,
                f"{self.path} shrank to {size} bytes while mapped; the array needs "
                f"{self.map_offset + self.length}. Touching the missing pages would crash the "
                "process (SIGBUS), so bigarr refuses.",
            )

    def advise(self, hint: Hint, span: ByteSpan) -> bool:
        """Apply ``hint`` to the pages of ``span``, rounded outward and clipped to the mapping.

        Returns ``False`` when the hint is a no-op on this platform or kernel.
        """
        self.check_open()
        if hint.drops_pages and self.access == "private":
            raise HintError(
                f"'{hint.name}' on a private mapping would throw away scratch edits; "
                "use discard() to drop edits on purpose."
            )
        if hint.needs_write and self.access != "shared":
            raise HintError(
                f"'{hint.name}' needs a shared (writable) mapping; on a read-only mapping the "
                "kernel refuses it and on a private one it would copy every page."
            )
        rng = self._range(span, outward=True)
        if hint.advice is None or _libc is None or not hasattr(_libc, "madvise"):
            return False
        if rng is None:
            return True
        pieces = [rng]
        if hint.drops_pages:  # never the staged ranges: dropping those would lose their writes
            for staged in list(self._staged):
                lo, hi = self.addr + staged.start, self.addr + staged.stop
                pieces = [part for at, n in pieces
                          for part in ((at, min(at + n, lo) - at),
                                       (max(at, hi), at + n - max(at, hi)))
                          if part[1] > 0]
        for at, n in pieces:
            if _libc.madvise(at, n, hint.advice) != 0:
                err = ctypes.get_errno()
                if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    return False  # a hint this kernel (or this file system) lacks: a no-op
                if err == errno.EFAULT:  # populate_* past the end of a file cut under the map
                    self.check_file()
                raise _oserror(f"madvise({hint.name})", self.path)
        return True

    def sync(self, span: ByteSpan) -> None:
        """msync(MS_SYNC) the pages of ``span``: the data reaches the disk before returning."""
        self.check_open()
        if self.access != "shared":
            return
        rng = self._range(span, outward=True)
        if rng is None:
            return
        self.check_file()
        if _libc.msync(rng[0], rng[1], _MS_SYNC) != 0:
            raise _oserror("msync", self.path)

    def start_write_back(self, span: ByteSpan) -> None:
        """Start writing the dirty pages of ``span`` to the file, without waiting (shared mode
        on Linux; else nothing). :meth:`write_back` later waits for them: started at once, a
        chunk's writeback queues behind the previous one's, so the disk never idles between
        them."""
        self.check_open()
        if self.access != "shared":
            return
        rng = self._range(span, outward=True)
        if rng is not None:
            start_writeback(self.fd, self.map_offset + rng[0] - self.addr, rng[1])

    def write_back(self, span: ByteSpan) -> None:
        """Write the dirty pages of ``span`` to the file and wait (shared mode; else nothing).

        ``sync_file_range`` on Linux: the pages are clean when it returns, so dropping them
        from the mapping afterwards keeps the page cache's dirty memory bounded; but unlike
        :meth:`sync` (``msync``, an ``fsync`` of the range) it commits no file-system journal
        and flushes no disk cache, which per chunk cost a fill of a new file half its speed
        and most of its kernel time (issue 17). Not a durability barrier: :meth:`sync` (and
        ``close()``) are. Elsewhere it is :meth:`sync`.

        Raises
        ------
        FileChangedError
            If the file shrank below the mapping.
        MappingError
            If the writeback failed.
        """
        self.check_open()
        if self.access != "shared":
            return
        if not can_wait_writeback():
            self.sync(span)
            return
        rng = self._range(span, outward=True)
        if rng is None:
            return
        self.check_file()
        try:
            wait_writeback(self.fd, self.map_offset + rng[0] - self.addr, rng[1])
        except MappingError as exc:
            raise MappingError(exc.errno, f"{exc.strerror} ({self.path})") from None

    def residency(self, span: ByteSpan) -> np.ndarray[Any, np.dtype[np.bool_]]:
        """One bool per page of ``span`` (rounded outward): is the page in memory (mincore)?

        A read-only or shared mapping shows only page-cache pages, so where ``cachestat``
        (:func:`bigarr._os.cachestat.cached_pages`) finds all or none of the range's pages
        cached, that is the answer, without ``mincore``'s page-by-page look-up of the parts
        of the range that are not in the page tables (60 times slower on a warm 2 GiB file
        released behind a scan). A private mapping's copied pages are not in the file's
        cache: it always asks ``mincore``.
        """
        self.check_open()
        rng = self._range(span, outward=True)
        if rng is None:
            return np.zeros(0, dtype=bool)
        npages = -(-rng[1] // PAGE_SIZE)
        if self.access != "private":
            cached = cached_pages(self.fd, self.map_offset + rng[0] - self.addr, rng[1])
            if cached is not None and cached in (0, npages):
                return np.full(npages, cached != 0, dtype=bool)
        if _libc is None or not hasattr(_libc, "mincore"):
            raise UnsupportedError("mincore is not available on this platform.")
        vec = np.zeros(npages, dtype=np.uint8)
        if _libc.mincore(rng[0], rng[1], vec.ctypes.data) != 0:
            raise _oserror("mincore", self.path)
        return (vec & 1).astype(bool)

    def all_cached(self, span: ByteSpan) -> bool:
        """True when every page of ``span`` (rounded outward) is in the page cache, by
        ``cachestat``; ``False`` when some are not, or where that cannot be told cheaply.

        A private mapping's copied pages are not the file's: only its file pages count.
        """
        self.check_open()
        rng = self._range(span, outward=True)
        if rng is None:
            return True
        cached = cached_pages(self.fd, self.map_offset + rng[0] - self.addr, rng[1])
        return cached is not None and cached >= -(-rng[1] // PAGE_SIZE)

    # ---- private-mode scratch pages (used by bigarr._core.private and .dirtypages) ---------------
    def pagemap(self, span: ByteSpan) -> np.ndarray[Any, np.dtype[np.uint64]]:
        """Raw ``/proc/self/pagemap`` entries (8 bytes each), one per page of ``span``.

        ``span`` is rounded outward to pages and clipped to the mapping. Bit 63: present,
        62: swapped, 61: file page; in a private mapping an edited (copied) page is present
        without bit 61, or swapped.

        Raises
        ------
        UnsupportedError
            Where ``/proc/self/pagemap`` does not exist or cannot be read (not Linux).
        """
        self.check_open()
        rng = self._range(span, outward=True)
        if rng is None:
            return np.zeros(0, dtype=np.uint64)
        npages = -(-rng[1] // PAGE_SIZE)
        out = np.empty(npages, dtype=np.uint64)
        view = out.data.cast("B")
        try:
            fd = os.open("/proc/self/pagemap", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise UnsupportedError(
                f"/proc/self/pagemap is not readable here ({exc.strerror}); bigarr falls back "
                "to comparing pages with the file."
            ) from None
        try:
            done, first = 0, rng[0] // PAGE_SIZE * 8
            while done < len(view):
                n = os.preadv(fd, [view[done:]], first + done)
                if n <= 0:
                    raise UnsupportedError("/proc/self/pagemap returned fewer entries than asked.")
                done += n
        finally:
            os.close(fd)
        return out

    def drop_pages(self, span: ByteSpan) -> ByteSpan:
        """Throw away the private copies of the whole pages inside ``span`` (private mode only).

        Those pages show the file's current bytes again and stop costing memory. ``span`` is
        rounded *inward* (partial pages at its edges are kept, since their other bytes may hold
        edits); a span reaching the end of the mapping includes its last, partial page. Linux
        uses ``MADV_DONTNEED``; elsewhere the pages are re-mapped from the file (``MAP_FIXED``).
        Only :mod:`bigarr._core.private` should call this: it is how ``discard`` and ``commit``
        drop edits on purpose (:meth:`advise` refuses ``dontneed`` on private mappings).

        Returns
        -------
        ByteSpan
            The page-aligned span actually dropped (possibly empty).

        Raises
        ------
        ModeError
            If the mapping is not private.
        MappingError
            If the OS refuses.
        """
        from bigarr.errors import ModeError

        self.check_open()
        if self.access != "private":
            raise ModeError(
                f"drop_pages() throws away copy-on-write pages; the mapping of {self.path} is "
                f"{self.access}, where it would lose nothing or lose written data."
            )
        end = ByteSpan(0, self.length).outward(PAGE_SIZE).stop
        stop = end if span.stop >= self.length else span.stop
        pages = ByteSpan(span.start, max(span.start, stop)).inward(PAGE_SIZE)
        if pages.nbytes == 0 or self.addr == 0 or _libc is None:
            return ByteSpan(pages.start, pages.start)
        self.check_file()
        if _LINUX:
            if _libc.madvise(self.addr + pages.start, pages.nbytes, mmap.MADV_DONTNEED) != 0:
                raise _oserror("madvise(dontneed)", self.path)
        else:
            flags = mmap.MAP_PRIVATE | _MAP_FIXED
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            got = _libc.mmap(self.addr + pages.start, pages.nbytes, prot, flags, self.fd,
                             self.map_offset + pages.start)
            if got in (None, _MAP_FAILED):
                raise _oserror("re-mapping pages", self.path)
        return pages

    # ---- staged ranges (direct fills: bigarr._compute.directfill) -----------------------------
    @property
    def can_stage(self) -> bool:
        """True where :meth:`stage` works: a shared mapping, on Linux (``mremap``)."""
        return _LINUX and self.access == "shared" and hasattr(_libc, "mremap")

    def stage(self, span: ByteSpan, spare: Spare | None = None) -> ByteSpan:
        """Put anonymous memory holding the file's current bytes under the whole pages of
        ``span`` (shared mode on Linux; elsewhere nothing); return the page span staged.

        Stores into the staged range stay out of the page cache, so they can be written with
        ``O_DIRECT`` from this very memory and the range put back on the file by
        :meth:`unstage` (the direct write drops the file's cached pages of the range, so the
        mapping then reads what was written). The swap is atomic for other threads: a range
        in which the file holds no data (``SEEK_DATA``: never written, or preallocated and
        unwritten, with nothing cached) gets fresh zero pages; any other is read first
        (``pread``, which sees this mapping's own dirty pages) into new memory that is then
        moved into place (``mremap``). A :class:`Spare` of the staged size is used instead of
        new memory (moved into place, or read into first), and is then spent. Until
        :meth:`unstage`, :meth:`advise` never drops the span's pages (release-behind of
        another run over the same array would lose them).

        Raises
        ------
        FileChangedError
            If the file shrank below the mapping.
        MappingError
            If the OS refuses (out of memory).
        """
        self.check_open()
        pages = span.clip(ByteSpan(0, self.length)).inward(PAGE_SIZE)
        if not self.can_stage or self.addr == 0 or pages.nbytes == 0:
            return ByteSpan(pages.start, pages.start)
        self.check_file()
        at, n, first = self.addr + pages.start, pages.nbytes, self.map_offset + pages.start
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        anon = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        try:
            data = os.lseek(self.fd, first, os.SEEK_DATA)
        except OSError as exc:  # ENXIO: no data at or after ``first``
            data = first + n if exc.errno == errno.ENXIO else first
        spare = spare if spare is not None and spare.nbytes == n and spare.addr else None
        if data >= first + n and spare is None:
            if _libc.mmap(at, n, prot, anon | _MAP_FIXED, -1, 0) in (None, _MAP_FAILED):
                raise _oserror("staging a range", self.path)
        else:
            tmp = spare.addr if spare is not None else _libc.mmap(None, n, prot, anon, -1, 0)
            if tmp in (None, _MAP_FAILED):
                raise _oserror("staging a range", self.path)
            try:
                if data < first + n:
                    view = memoryview((ctypes.c_char * n).from_address(tmp)).cast("B")
                    done = 0
                    while done < n:
                        got = os.preadv(self.fd, [view[done:]], first + done)
                        if got <= 0:
                            self.check_file()
                            raise MappingError(errno.EIO, f"short read of {self.path}")
                        done += got
                    del view
                if _libc.mremap(tmp, n, n, _MREMAP_MAYMOVE | _MREMAP_FIXED, at) in (
                        None, _MAP_FAILED):
                    raise _oserror("staging a range", self.path)
                if spare is not None:
                    spare.spent()  # its pages live at ``at`` now; its own range is gone
            except BaseException:
                if spare is not None:
                    spare.free()
                else:
                    _libc.munmap(tmp, n)
                raise
        self._staged.append(pages)
        return pages

    def unstage(self, pages: ByteSpan) -> None:
        """Map the file again over a span :meth:`stage` returned (atomically, ``MAP_FIXED``);
        the staged memory is freed. Call it once the staged bytes are in the file."""
        if not pages.nbytes:
            return
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        got = _libc.mmap(self.addr + pages.start, pages.nbytes, prot,
                         mmap.MAP_SHARED | _MAP_FIXED, self.fd, self.map_offset + pages.start)
        if got in (None, _MAP_FAILED):
            raise _oserror("re-mapping a staged range", self.path)
        self._staged.remove(pages)

    # ---- closing -----------------------------------------------------------------------------
    def on_close(self, closer: Callable[[], None]) -> None:
        """Run ``closer`` once when this mapping closes, before its range is retired.

        For state tied to the address range, such as a write-tracking userfaultfd that must be
        unregistered and released with the mapping rather than when it is garbage-collected.
        """
        self._closers.append(closer)

    def close(self, caller: np.ndarray[Any, Any] | None = None, *, force: bool = False) -> None:
        """Flush (shared mode), release the file and retire the address range.

        Raises
        ------
        MappingBusyError
            If other views still use the mapping and ``force`` is false.
        FileChangedError
            If the file shrank below the mapping: the flush is skipped, but the range is still
            retired and the file released before this is raised.
        MappingError
            If the OS refuses to retire the range (the mapping then stays open).
        """
        if self.closed:
            return
        if not force:
            busy = self.live_views(caller)
            if busy:
                raise MappingBusyError(
                    f"Cannot close {self.path}: {busy} other view(s) of it are still alive. "
                    "Delete them first (del view), or call close(force=True) to close them too "
                    "(they will then raise ClosedError)."
                )
        while self._closers:
            self._closers.pop()()
        failure: FileChangedError | None = None
        if self.access == "shared":
            try:
                self.sync(ByteSpan(0, self.length))
            except FileChangedError as exc:  # still release the file, then report
                failure = exc
        if self.addr:
            # Replace the file pages by anonymous zero pages in one atomic step; the range stays
            # valid for any stray pointer and is unmapped by _Region's finalizer.
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE
            prot = mmap.PROT_READ | mmap.PROT_WRITE
            if _libc.mmap(self.addr, self.length, prot, flags, -1, 0) in (None, _MAP_FAILED):
                raise _oserror("retiring the mapping", self.path)
        self.closed = True
        # Writes that get past the ClosedError checks (np.asarray(x) of a closed array, which
        # no Python hook sees) must fail rather than land in the zero pages and vanish.
        self.root.flags.writeable = False
        for ref in list(self._arrays.values()):
            a = ref()
            if a is not None:  # ndarray's own setflags: bigarr.memmap's refuses closed arrays
                np.ndarray.setflags(a, write=False)
            del a
        self._fd_finalizer()
        if failure is not None:
            raise failure


def check_mapped(*mappings: Mapping | None) -> None:
    """Refuse to touch the next chunk if any mapped file shrank below its mapping.

    Every chunk loop (the engine's executor, ``iter_chunks``, zarr import and export) calls this
    once per chunk, before the chunk's pages are touched: touching a mapped page past the end of
    its file kills the process with SIGBUS, which no Python code can catch, while this raises a
    bigarr error. It costs one ``fstat`` per mapping. ``None`` entries (arrays in memory) are
    skipped.

    The check cannot close the race it narrows: a file cut *after* the check and before (or
    while) the chunk is touched still raises SIGBUS. Only the other process can avoid that (by
    not truncating files that are mapped); bigarr catches every cut that happens between chunks.

    Raises
    ------
    FileChangedError
        If a file is now shorter than its mapped range.
    ClosedError
        If a mapping is closed.
    """
    for mapping in mappings:
        if mapping is not None and mapping.length:
            mapping.check_file()


def mapped_file(addr: int) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of the file mapped at address ``addr`` of this process (from
    ``/proc/self/maps``), or None where that cannot be told (no ``/proc``; an anonymous
    mapping is ``(0, 0)``)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                low, _, high = fields[0].partition(b"-")
                if int(low, 16) <= addr < int(high, 16):
                    major, _, minor = fields[3].partition(b":")
                    return os.makedev(int(major, 16), int(minor, 16)), int(fields[4])
    except (OSError, ValueError, IndexError):
        return None
    return None
