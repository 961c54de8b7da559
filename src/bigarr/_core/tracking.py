"""Opt-in write tracking for shared-mode arrays: which pages were written since a mark.

A pipeline that writes sparsely into a huge shared array can then flush (or checkpoint) only
what it wrote: :func:`track_writes` sets the mark, :func:`written` reports page runs written
since then (optionally setting a new mark), :func:`flush_written` ``msync``\\ s just those pages.

Two methods:

``"uffd"`` (Linux 6.7 and later)
    The mapping is registered with a userfaultfd in *asynchronous write-protect* mode
    (``UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED``) and write-protected. The first
    write to a protected page is resolved by the kernel itself (no handler thread, no signal):
    it just clears the page's protection. The ``PAGEMAP_SCAN`` ioctl on ``/proc/self/pagemap``
    then lists the pages whose protection is gone (``PAGE_IS_WRITTEN``) and, with
    ``PM_SCAN_WP_MATCHING``, re-protects them in the same step, so no write slips between a
    report and the new mark. Exact per page and cheap to query (it walks page tables), but each
    *first* write to a page after a mark costs an extra fault (about 10 us; rewriting 1 GiB
    took 2.8 s instead of 0.07 s), so it suits sparse writes. Needs the userfaultfd syscall
    (root, ``CAP_SYS_PTRACE``, ``vm.unprivileged_userfaultfd=1``, or user-mode-only
    userfaultfds, which are tried in that order).
``"checksum"`` (everywhere)
    At each mark, a 64-bit BLAKE2b digest of every 64 KiB block is stored; :func:`written`
    recomputes them and reports blocks whose digest changed. Portable, but each mark and each
    query reads the whole array (time and resident memory proportional to its size), a block is
    its granularity, and a value written back unchanged is not seen.

``method="auto"`` uses ``"uffd"`` where the kernel has it and ``"checksum"`` otherwise;
``method="uffd"`` raises :class:`~bigarr.errors.UnsupportedError` where it is missing.

Closing the array ends tracking (:meth:`Mapping.on_close`): the userfaultfd is closed before
the range is retired, and closing it makes the kernel unregister the range and clear its
write protection, so no page stays protected and no descriptor outlives ``close()``.

Whose writes. Tracking sees the writes made through this process's mapping: not those of other
processes (with ``"uffd"``; ``"checksum"`` compares contents, so it sees every writer of the
file), and so not those of a forked child either.

fork. A userfaultfd and a ``/proc/self/pagemap`` descriptor inherited by a forked child still
act on the *parent's* memory: the child's writes would go unreported, and its marks would reset
the parent's. So in the child (:func:`os.register_at_fork`) the inherited descriptors are
closed without a single ioctl, and the next use of the tracker arms a new one for the child.
The child cannot know what the parent wrote between the mark and the fork, so its first report
counts the whole mapping as written, until the next mark (``reset=True``, ``flush_written()``
or ``track_writes()``): a checkpoint in the child then never skips a page. A ``"checksum"``
tracker needs nothing: the child's copy of the digests is still the mark.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import os
import platform
import sys
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._core.dirtypages import DirtyRegions, regions_from
from bigarr._os.geometry import PAGE_SIZE, ByteSpan
from bigarr._os.libc import libc as _libc
from bigarr._plan.regions import Region, region_span
from bigarr.errors import ModeError, UnsupportedError

if TYPE_CHECKING:
    from bigarr._os.mapping import Mapping

__all__ = [
    "flush_written",
    "track_writes",
    "tracking_method",
    "WriteWatch",
    "uffd_available",
    "watch_writes",
    "written",
]

_METHODS = ("auto", "uffd", "checksum")
_BLOCK = 64 << 10  # checksum granularity, bytes


# ---- userfaultfd and PAGEMAP_SCAN (include/uapi/linux/userfaultfd.h, fs.h) ---------------------
def _iowr(kind: int, nr: int, size: int) -> int:
    return (3 << 30) | (size << 16) | (kind << 8) | nr


_UFFD_API = 0xAA
_UFFDIO_API = _iowr(0xAA, 0x3F, 24)  # struct uffdio_api {u64 api, features, ioctls}
_UFFDIO_REGISTER = _iowr(0xAA, 0x00, 32)  # struct uffdio_register {range{start,len}, mode, ioctls}
_UFFDIO_WRITEPROTECT = _iowr(0xAA, 0x06, 24)  # struct uffdio_writeprotect {range, mode}
_UFFDIO_UNREGISTER = (2 << 30) | (16 << 16) | (0xAA << 8) | 0x01  # _IOR: struct uffdio_range
_USERFAULTFD_IOC_NEW = 0xAA00  # _IO(0xAA, 0) on /dev/userfaultfd
_FEATURE_WP_UNPOPULATED = 1 << 13
_FEATURE_WP_ASYNC = 1 << 15
_REGISTER_MODE_WP = 1 << 1
_WRITEPROTECT_MODE_WP = 1 << 0
_UFFD_USER_MODE_ONLY = 1
_PAGEMAP_SCAN = _iowr(ord("f"), 16, 96)  # struct pm_scan_arg: 12 x u64
_PM_SCAN_WP_MATCHING = 1 << 0
_PM_SCAN_CHECK_WPASYNC = 1 << 1
_PAGE_IS_WRITTEN = 1 << 1
_SYSCALL_USERFAULTFD = {"x86_64": 323, "aarch64": 282, "arm64": 282, "riscv64": 282}
_REGIONS_PER_CALL = 4096


class _PageRegion(ctypes.Structure):
    _fields_ = (("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64))


def _ioctl(libc: Any, fd: int, request: int, arg: Any) -> int:
    r = int(libc.ioctl(fd, request, ctypes.addressof(arg)))
    if r < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return r


def _new_uffd(libc: Any) -> int:
    """A userfaultfd descriptor, trying the syscall, user-mode-only, then /dev/userfaultfd."""
    flags = os.O_CLOEXEC | os.O_NONBLOCK
    number = _SYSCALL_USERFAULTFD.get(platform.machine())
    errors: list[str] = []
    if number is not None:
        for extra in (0, _UFFD_USER_MODE_ONLY):
            fd = int(libc.syscall(number, flags | extra))
            if fd >= 0:
                return fd
            errors.append(os.strerror(ctypes.get_errno()))
    try:
        dev = os.open("/dev/userfaultfd", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        errors.append(f"/dev/userfaultfd: {exc.strerror}")
    else:
        try:
            fd = int(libc.ioctl(dev, _USERFAULTFD_IOC_NEW, flags))
            if fd >= 0:
                return fd
            errors.append(f"/dev/userfaultfd: {os.strerror(ctypes.get_errno())}")
        finally:
            os.close(dev)
    raise UnsupportedError(
        "userfaultfd is not available to this process (" + "; ".join(errors) + "). Run as "
        "root, set vm.unprivileged_userfaultfd=1, or use track_writes(method='checksum')."
    )


class _UffdTracker:
    """Asynchronous userfaultfd write-protection over one mapping, queried with PAGEMAP_SCAN."""

    method = "uffd"
    #: Report the whole mapping as written until the next mark (rebuilt in a forked child).
    everything = False

    def __init__(self, m: Mapping) -> None:
        self.forked = False
        if not sys.platform.startswith("linux"):
            raise UnsupportedError("userfaultfd write tracking needs Linux 6.7 or later.")
        self._libc = _libc
        self.start = m.addr
        self.stop = m.addr + ByteSpan(0, m.length).outward(PAGE_SIZE).stop
        self._fds: list[int] = []
        self._finalizer = weakref.finalize(self, _close_fds, self._fds)
        self.fd = _new_uffd(self._libc)
        self._fds.append(self.fd)
        try:
            api = (ctypes.c_uint64 * 3)(_UFFD_API, _FEATURE_WP_ASYNC | _FEATURE_WP_UNPOPULATED, 0)
            try:
                _ioctl(self._libc, self.fd, _UFFDIO_API, api)
            except OSError as exc:
                raise UnsupportedError(
                    "This kernel's userfaultfd lacks asynchronous write-protect "
                    f"(WP_ASYNC, Linux 6.7+): {exc.strerror}. Use method='checksum'."
                ) from None
            if not api[1] & _FEATURE_WP_ASYNC:  # never arm a *synchronous* WP: writes would hang
                raise UnsupportedError("userfaultfd did not enable WP_ASYNC; use 'checksum'.")
            self.pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)
            self._fds.append(self.pagemap)
            reg = (ctypes.c_uint64 * 4)(self.start, self.stop - self.start, _REGISTER_MODE_WP, 0)
            try:
                _ioctl(self._libc, self.fd, _UFFDIO_REGISTER, reg)
            except OSError as exc:
                raise UnsupportedError(
                    f"userfaultfd refused to track this mapping: {exc.strerror}."
                ) from None
            self.mark()
            self.scan(reset=False)  # PAGEMAP_SCAN itself (ENOTTY before Linux 6.7)
        except BaseException:
            self._finalizer()
            raise

    def mark(self) -> None:
        """Write-protect the whole range: everything counts as unwritten from now on."""
        wp = (ctypes.c_uint64 * 3)(self.start, self.stop - self.start, _WRITEPROTECT_MODE_WP)
        _ioctl(self._libc, self.fd, _UFFDIO_WRITEPROTECT, wp)

    def scan(self, reset: bool) -> list[tuple[int, int]]:
        """Written page runs as mapping-relative ``(start, stop)`` bytes; ``reset`` re-protects."""
        vec = (_PageRegion * _REGIONS_PER_CALL)()
        flags = _PM_SCAN_CHECK_WPASYNC | (_PM_SCAN_WP_MATCHING if reset else 0)
        out: list[tuple[int, int]] = []
        pos = self.start
        while pos < self.stop:
            arg = (ctypes.c_uint64 * 12)(
                96, flags, pos, self.stop, 0, ctypes.addressof(vec), _REGIONS_PER_CALL, 0,
                0, _PAGE_IS_WRITTEN, 0, _PAGE_IS_WRITTEN,
            )
            try:
                n = _ioctl(self._libc, self.pagemap, _PAGEMAP_SCAN, arg)
            except OSError as exc:
                if exc.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    raise UnsupportedError(
                        f"PAGEMAP_SCAN is missing or refused ({exc.strerror}); it needs Linux "
                        "6.7+. Use method='checksum'."
                    ) from None
                raise
            out.extend((int(vec[i].start) - self.start, int(vec[i].end) - self.start)
                       for i in range(n))
            walk_end = int(arg[4])
            if walk_end <= pos:
                break
            pos = walk_end
        return out

    def close(self) -> None:
        """Release the userfaultfd (the kernel unregisters the range) and the pagemap fd."""
        self._finalizer()

    def drop_inherited(self) -> None:
        """In a forked child: close the inherited descriptors, which act on the parent's memory.

        Closing only drops the child's references (the parent's userfaultfd stays registered);
        no ioctl is made, so the parent's protection and marks are untouched.
        """
        self.forked = True
        self._finalizer()


def _close_fds(fds: list[int]) -> None:
    while fds:
        os.close(fds.pop())


class _ChecksumTracker:
    """Per-block digests compared with a snapshot: portable, but reads the whole mapping."""

    method = "checksum"
    everything = False
    forked = False  # the digests stay valid in a forked child: they describe file contents

    def __init__(self, m: Mapping) -> None:
        # A weak reference: the tracker is the value of a weak dictionary keyed by the Mapping,
        # and a strong one back would keep both (and the file) alive for good.
        self._mapping = weakref.ref(m)
        self.digests = self._digests()

    @property
    def root(self) -> np.ndarray[Any, Any]:
        m = self._mapping()
        assert m is not None, "the tracker is dropped with its mapping"
        return m.root

    def _digests(self) -> np.ndarray[Any, np.dtype[np.uint64]]:
        root = self.root
        n = -(-root.size // _BLOCK)
        out = np.empty(n, dtype=np.uint64)
        for i in range(n):
            block = root[i * _BLOCK : (i + 1) * _BLOCK].data
            out[i] = int.from_bytes(hashlib.blake2b(block, digest_size=8).digest(), "little")
        return out

    def mark(self) -> None:
        self.digests = self._digests()

    def scan(self, reset: bool) -> list[tuple[int, int]]:
        now = self._digests()
        changed = np.flatnonzero(now != self.digests)
        if reset:
            self.digests = now
        length = self.root.size
        return [(int(i) * _BLOCK, min((int(i) + 1) * _BLOCK, length)) for i in changed]

    def close(self) -> None:
        pass


_Tracker = _UffdTracker | _ChecksumTracker
_TRACKERS: weakref.WeakKeyDictionary[Mapping, _Tracker] = weakref.WeakKeyDictionary()
_UFFD_OK: bool | None = None


def uffd_available() -> bool:
    """True when userfaultfd write-protect tracking works here (probed once, on a scratch page)."""
    global _UFFD_OK
    if _UFFD_OK is None:
        import mmap
        from types import SimpleNamespace

        probe = mmap.mmap(-1, PAGE_SIZE)
        view = np.frombuffer(probe, dtype=np.uint8)
        fake: Any = SimpleNamespace(addr=int(view.ctypes.data), length=PAGE_SIZE)
        try:
            _UffdTracker(fake).close()
            _UFFD_OK = True
        except (UnsupportedError, OSError):
            _UFFD_OK = False
        finally:
            del view
            probe.close()
    return _UFFD_OK


WriteWatch = _UffdTracker
"""What :func:`watch_writes` returns: ``scan(reset=...)`` and ``close()``."""


def watch_writes(addr: int, nbytes: int) -> WriteWatch | None:
    """Asynchronous write-protection of the page-aligned address range ``[addr, addr +
    nbytes)``, or None where userfaultfd cannot do it (then nothing was armed).

    ``scan(reset=True)`` of the result lists the page runs written since (offsets from
    ``addr``) and protects them again; ``close()`` ends it. Used by ``iter_chunks(direct=True)``
    to find writes into a chunk while it is being written (:mod:`bigarr._compute.directfill`).
    """
    if not uffd_available():
        return None
    from types import SimpleNamespace

    span: Any = SimpleNamespace(addr=addr, length=nbytes)
    try:
        return _UffdTracker(span)
    except (UnsupportedError, OSError):
        return None


def _drop_inherited_trackers() -> None:
    """``os.register_at_fork(after_in_child=...)``: disarm userfaultfd trackers of the parent."""
    for tracker in list(_TRACKERS.values()):
        if isinstance(tracker, _UffdTracker):
            tracker.drop_inherited()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_trackers)


def _new_tracker(m: Mapping, method: str) -> _Tracker:
    if method == "checksum" or m.addr == 0:
        return _ChecksumTracker(m)
    try:
        return _UffdTracker(m)
    except UnsupportedError:
        if method == "uffd":
            raise
        return _ChecksumTracker(m)


def _tracker_of(m: Mapping) -> _Tracker | None:
    """``m``'s tracker in this process; one inherited through fork is replaced first.

    The replacement (a new userfaultfd of this process, or checksums where that fails) reports
    the whole mapping as written until its first mark: the writes the parent made since its
    mark are unknown here.
    """
    tracker = _TRACKERS.get(m)
    if tracker is None or not tracker.forked:
        return tracker
    fresh = _new_tracker(m, "auto")
    fresh.everything = True
    _TRACKERS[m] = fresh
    return fresh


def _scan(m: Mapping, tracker: _Tracker, reset: bool) -> list[tuple[int, int]]:
    runs = tracker.scan(reset)
    if tracker.everything:
        runs = [(0, m.length)] if m.length else []
        if reset:
            tracker.everything = False
    return runs


def _shared_mapping(arr: Any, what: str) -> Mapping:
    m: Mapping | None = getattr(arr, "_bigarr", None)
    if m is None:
        raise ModeError(f"{what}() needs an array mapped by bigarr; this one is a detached copy.")
    m.check_open()
    if m.access != "shared":
        hint = (
            "In private mode use dirty() to see what changed."
            if m.access == "private"
            else "A read-only array cannot be written; open it with mode 'shared'."
        )
        raise ModeError(
            f"{what}() tracks writes to shared-mode arrays; this array of {m.path} is "
            f"{m.access}. {hint}"
        )
    return m


def track_writes(arr: Any, method: str = "auto") -> str:
    """Start tracking writes to ``arr``'s mapping, or set a new mark if already tracking.

    Parameters
    ----------
    arr
        A shared-mode :class:`bigarr.memmap`; tracking covers its whole mapping.
    method
        ``"auto"``, ``"uffd"`` or ``"checksum"`` (see the module docstring).

    Returns
    -------
    str
        The method in use, ``"uffd"`` or ``"checksum"``.

    Raises
    ------
    ModeError
        For an unknown method, or an array that is not shared-mode.
    ClosedError
        If the array is closed.
    UnsupportedError
        For ``method="uffd"`` where the kernel or permissions lack it.
    """
    if method not in _METHODS:
        raise ModeError(f"Expected a tracking method in {_METHODS}. Got {method!r}.")
    m = _shared_mapping(arr, "track_writes")
    old = _TRACKERS.get(m)
    if old is not None and not old.forked and method in ("auto", old.method):
        old.mark()
        old.everything = False
        return old.method
    if old is not None:  # untracked until the new tracker works (a closed one must not answer)
        del _TRACKERS[m]
        old.close()
    tracker = _new_tracker(m, method)
    _TRACKERS[m] = tracker
    if old is None:  # the tracker's descriptors go with the mapping, not with its collection
        m.on_close(functools.partial(_untrack, weakref.ref(m)))
    return tracker.method


def _untrack(ref: weakref.ref[Mapping]) -> None:
    m = ref()
    tracker = None if m is None else _TRACKERS.pop(m, None)
    if tracker is not None:
        tracker.close()


def tracking_method(arr: Any) -> str | None:
    """The tracking method active on ``arr``'s mapping, or None when it is not tracked."""
    m = getattr(arr, "_bigarr", None)
    tracker = None if m is None else _tracker_of(m)
    return None if tracker is None else tracker.method


def _tracked(arr: Any, what: str) -> tuple[Mapping, _Tracker]:
    m = _shared_mapping(arr, what)
    tracker = _tracker_of(m)
    if tracker is None:
        raise ModeError(f"{what}() needs write tracking; call arr.track_writes() first.")
    return m, tracker


def written(arr: Any, region: Region = None, *, reset: bool = False) -> DirtyRegions:
    """Pages of ``arr`` (within ``region``) written since the last mark.

    Parameters
    ----------
    arr
        A shared-mode array with tracking on (:func:`track_writes`).
    region
        Rows, a slice, a chunk or a view; ``None`` for the whole array.
    reset
        Set a new mark as the report is taken (atomically with ``"uffd"``: a write racing the
        call is either in this report or the next one). The mark covers the whole mapping.

    Returns
    -------
    DirtyRegions
        Page-granular (``exact=False``): every element on a written page (or changed 64 KiB
        block, for ``"checksum"``).

    Raises
    ------
    ModeError
        If the array is not shared-mode or not tracked.
    ClosedError
        If it is closed.
    """
    m, tracker = _tracked(arr, "written")
    span = region_span(arr, region)
    return regions_from(arr, m, span, _scan(m, tracker, reset), exact=False)


def flush_written(arr: Any) -> DirtyRegions:
    """``msync`` only the pages written since the last mark, then set a new mark.

    A checkpoint for sparse writers: the returned pages are on disk when this returns.

    Raises
    ------
    ModeError, ClosedError
        As :func:`written`.
    """
    m, tracker = _tracked(arr, "flush_written")
    runs = _scan(m, tracker, reset=True)
    for a, b in runs:
        m.sync(ByteSpan(a, b))
    return regions_from(arr, m, region_span(arr, None), runs, exact=False)
