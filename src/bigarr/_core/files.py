"""Files: create, open and open_raw. Validates everything before a single page is mapped.

The order of checks matters because a mapping over missing file bytes faults later with SIGBUS,
which no Python code can catch: the path must be a regular file, the header must parse, and the
file must be at least as long as the header (or the caller) says, all *before* ``mmap``.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import stat
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from bigarr._core.array import memmap
from bigarr._core.scratch import parse_limit, set_limit
from bigarr._formats.journal import check_complete, commit_journal_path, journal_path
from bigarr._formats.npy import (
    NpyHeader,
    build_header,
    check_dtype,
    check_shape,
    parse_order,
    read_header,
)
from bigarr._os.durable import fsync_dir
from bigarr._os.fileid import (
    FileId,
    create_new,
    file_id,
    hidden_name,
    install,
    link_unnamed,
    path_id,
    remove_leftovers,
    rename_noreplace,
    unnamed_supported,
)
from bigarr._os.geometry import default_alignment, format_bytes
from bigarr._os.lock import OutputLock
from bigarr._os.mapping import Mapping
from bigarr._os.modes import parse_mode
from bigarr._os.paths import check_output, check_path, os_error
from bigarr._os.sink import Appending, Sink
from bigarr.errors import (
    AccessDeniedError,
    DiskFullError,
    FileChangedError,
    FileExistsError_,
    FileMissingError,
    FormatError,
    IncompleteOutputError,
    IncompleteOutputWarning,
    ModeError,
    NotAFileError,
    ReadOnlyError,
    ShapeError,
    TruncatedFileError,
)

__all__ = ["NewOutput", "create", "create_held", "file_path", "open", "open_raw", "parse_order",
           "preallocate", "remove_partial"]

_FILL_BLOCK = 16 << 20  # bytes written per pwrite when filling a new file


def file_path(path: Any) -> str:
    """Normalise a path argument (str, PathLike, or an open file with ``.name``) to a str.

    Raises
    ------
    FileMissingError
        If ``path`` is not a path at all.
    InvalidPathError
        If it holds a NUL byte (no syscall can take it).
    """
    if hasattr(path, "fileno") and hasattr(path, "name"):
        path = path.name
    try:
        text = os.fsdecode(path)
    except TypeError:
        raise FileMissingError(f"Expected a file path. Got {type(path).__name__}.") from None
    return os.path.abspath(check_path(text))


def _denied(path: str) -> AccessDeniedError:
    return AccessDeniedError(
        f"Permission denied reading {path}. bigarr needs read permission on the file and "
        "search (x) permission on each directory above it."
    )


def _regular_size(path: str) -> int:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileMissingError(f"No such file: {path}") from None
    except PermissionError:
        raise _denied(path) from None
    except OSError as exc:  # ELOOP, ENOTDIR, ENAMETOOLONG, EIO
        raise os_error(exc, path) from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a special file"
        raise NotAFileError(f"Expected a regular file. Got {kind}: {path}")
    return st.st_size


def _parse_align(align: int | None) -> int:
    if align is None:
        return default_alignment()
    if isinstance(align, bool) or not isinstance(align, int) or align < 64 or align & (align - 1):
        raise FormatError(f"Expected align as a power of two of at least 64 bytes. Got {align!r}.")
    return align


def _no_room(path: str, need: int, free: int | None) -> DiskFullError:
    has = ("" if free is None else
           f", but the file system has {free} bytes ({format_bytes(free)}) free for users")
    return DiskFullError(
        f"No room on disk for {path}: it needs {need} more bytes ({format_bytes(need)}){has}. "
        "Free some space, use a smaller shape, or write to another file system."
    )


def preallocate(fd: int, offset: int, nbytes: int, path: str) -> None:
    """Reserve disk blocks for ``[offset, offset+nbytes)`` so writes through a mapping cannot
    hit a full disk later (which would be a SIGBUS, not an exception).

    Free space (``statvfs``: ``f_bavail * f_frsize``, what unprivileged users may use) is
    checked *first*: ``posix_fallocate`` keeps the blocks it got before running out, so an
    oversized request would fill the file system for everyone until it failed (issue 11).
    If the space vanishes between the check and the allocation (another writer), the ENOSPC
    is caught and the file is cut back to its old size at once, releasing what was taken.
    Where ``posix_fallocate`` is missing or refused, the file is extended with ``ftruncate``
    (sparse: then the check is all there is).

    Raises
    ------
    DiskFullError
        If the file system lacks room, or the file would exceed its largest file size; the
        message quotes the bytes needed and the bytes free.
    ReadOnlyError, PathError
        For other refusals of the file system.
    """
    if nbytes <= 0:
        return
    size = os.fstat(fd).st_size
    need = max(0, offset + nbytes - size)
    free = _free(path)
    if free is not None and need > free:
        raise _no_room(path, need, free)
    if hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, offset, nbytes)
            return
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", -1)):
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)  # give back at once what fallocate took
                if exc.errno == errno.EFBIG:
                    raise DiskFullError(
                        f"{path} would be {offset + nbytes} bytes, larger than the file system "
                        "allows for one file; use a smaller shape or another file system.",
                        errno.EFBIG,
                    ) from None
                raise _no_room(path, need, free) from None
            if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):  # these fall through
                raise os_error(exc, path, writing=True) from None
    try:
        os.ftruncate(fd, max(size, offset + nbytes))
    except OSError as exc:
        raise os_error(exc, path, writing=True) from None


def _free(path: str) -> int | None:
    """Bytes free for unprivileged users on ``path``'s file system; None if unknown."""
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
    except (OSError, AttributeError):
        return None
    if st.f_blocks == 0:  # pseudo and some FUSE file systems report no sizes at all
        return None
    return st.f_bavail * st.f_frsize


@contextlib.contextmanager
def _atomic_file(path: str, overwrite: bool, *, locked: bool = False, direct: bool = False,
                 name: str | None = None) -> Iterator[tuple[int, str | None]]:
    """Yield ``(fd, name)`` of a new file that becomes ``path`` only if the block succeeds.

    The new file has no name while it is written where the kernel allows (``O_TMPFILE``; the
    yielded name is then None), so a crash, even ``kill -9``, leaves nothing behind; it is
    named with ``linkat`` when complete. Elsewhere it is a hidden name
    (:func:`bigarr._os.fileid.hidden_name`, kind ``new``); what a crash leaves there is removed
    by the next writer of ``path`` (:func:`bigarr._os.fileid.remove_leftovers`), which holds
    ``path``'s output lock as this writer does (unless ``locked``: the caller holds it). What
    may be replaced is decided by :func:`bigarr._os.paths.check_output` (a regular file, with
    ``overwrite``); the file is published with ``rename`` over that file, or with ``link``
    (which never clobbers) where nothing was. The lock, the check, the sweep, the hidden name,
    its publishing and its removal on failure are :class:`NewOutput`'s.

    ``direct`` creates the file at ``path`` itself (which must not exist): for names that are
    already bigarr's own hidden names, which a journal names before they exist, so the caller
    finds and removes what a crash leaves (``map_blocks``' partial file); errors then name
    ``name``, the output the hidden file stands for, never the hidden name.

    Raises
    ------
    FileExistsError_, NotAFileError, FileMissingError, PathError
        As :func:`~bigarr._os.paths.check_output`.
    OutputLockedError
        If another writer holds ``path``'s output lock.
    ReadOnlyError, DiskFullError
        If the directory cannot be written, or the disk fills.
    """
    with contextlib.ExitStack() as stack:
        output: NewOutput | None = None
        if direct:
            check_output(path, overwrite)
        else:  # the output protocol: lock, check, sweep of "new" leftovers, hidden name
            output = stack.enter_context(NewOutput(path, overwrite=overwrite, locked=locked))
            output.build("new")
        fd, tmp = _open_new(path, output, name or path)
        if output is not None and tmp is not None:
            output.created(fd)
        done = False
        try:
            try:
                yield fd, tmp
                os.fsync(fd)
                handed, fd = fd, -1
                fd = _publish_new(handed, tmp, path, output)
                done = True
            except OSError as exc:
                raise os_error(exc, name or path, writing=True) from None
            fsync_dir(path)
        finally:
            if fd >= 0:
                os.close(fd)
            if direct and not done:  # (a hidden file of NewOutput's is removed by it)
                with contextlib.suppress(OSError):  # cannot be removed: the next writer will
                    os.unlink(path)


def _open_new(path: str, output: NewOutput | None, name: str) -> tuple[int, str | None]:
    """Open the new file of :func:`_atomic_file`: ``(fd, its name, or None if unnamed)``;
    at ``path`` itself without ``output`` (``direct``); errors name ``name``."""
    folder = os.path.dirname(path) or "."
    try:
        if output is not None and unnamed_supported(path):
            try:
                return os.open(folder, getattr(os, "O_TMPFILE", 0) | os.O_RDWR
                               | getattr(os, "O_CLOEXEC", 0), 0o666), None
            except OSError as exc:  # this file system has no unnamed files: a hidden name
                if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
        tmp = path if output is None else output.building
        assert tmp is not None
        return create_new(tmp), tmp
    except OSError as exc:  # name the user's path, not the hidden temporary one
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ReadOnlyError(
                exc.errno, f"Cannot create {name}: {exc.strerror} in {os.path.abspath(folder)}; "
                "choose a directory you can write to."
            ) from None
        raise os_error(exc, name, writing=True) from None


def _publish_new(fd: int, tmp: str | None, path: str, output: NewOutput | None) -> int:
    """Name the finished file of :func:`_atomic_file` ``path``. Takes ``fd`` over: returns the
    descriptor still to close (-1 for none), and closes it itself if it raises."""
    if output is None:  # direct: it has its name already
        return fd
    if tmp is not None:
        os.close(fd)
        output.publish()
        return -1
    try:
        replace = output.replaces and check_output(path, True) == "file"
        if not replace:
            link_unnamed(fd, path)  # atomic, and never clobbers
    except FileExistsError:
        os.close(fd)
        raise FileExistsError_(
            errno.EEXIST, f"{path} appeared while bigarr was writing it; it was left as it "
            "is (pass overwrite=True to replace it)."
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return install(fd, None, path) if replace else fd  # (install closes fd if it raises)


def publish(tmp: str, path: str, *, overwrite: bool) -> None:
    """Give the finished file ``tmp`` its name ``path``, atomically.

    With ``overwrite`` (a regular file was there when the run started, and the user allowed
    replacing it) it is renamed over ``path``, after checking once more that a regular file is
    what it replaces; otherwise it is hard-linked, which never clobbers a file that appeared
    meanwhile.

    Raises
    ------
    FileExistsError_, NotAFileError
        If something appeared at ``path`` meanwhile (or is no longer a regular file).
    ReadOnlyError, PathError
        If the OS refuses the rename or link.
    """
    try:
        if overwrite and check_output(path, True) == "file":
            os.replace(tmp, path)
            return
        try:
            if rename_noreplace(tmp, path):  # atomic, never clobbers, never two names
                return
            os.link(tmp, path)  # atomic and never clobbers
        except FileExistsError:
            raise FileExistsError_(
                errno.EEXIST, f"{path} appeared while bigarr was writing it; it was left as it "
                "is (pass overwrite=True to replace it)."
            ) from None
        except OSError:  # no hard links here: check, then rename
            if os.path.lexists(path):
                raise FileExistsError_(errno.EEXIST,
                                       f"{path} exists; pass overwrite=True.") from None
            os.rename(tmp, path)
        else:
            os.unlink(tmp)
    except OSError as exc:
        raise os_error(exc, path, writing=True) from None


class NewOutput:
    """The one output protocol: a new file that appears at ``target`` only once complete.

    Every writer of a new output goes through it (``create``'s hidden-name files,
    :func:`written_in_order`, ``map_blocks``, ``matmul``, lazy ``to_npy``): the output's lock
    is held (taken here unless ``locked``: the caller holds it already), what may be replaced
    is decided once (:func:`bigarr._os.paths.check_output`: a regular file, with
    ``overwrite``), the file is built under a hidden name next to ``target``
    (:meth:`build`, which also sweeps what killed writers of ``target`` left), and
    :meth:`publish` syncs it, installs it at ``target`` (:func:`publish`: never over a file
    that appeared meanwhile unless ``overwrite`` allowed replacing it) and syncs the folder.
    Leaving the block without publishing removes the hidden file (unless it was built with
    ``keep``: a resumable run's partial file, which its journal names), and only if it is
    still the file this writer created there (:meth:`created`, by identity), never another
    one that took its name.

    Raises
    ------
    FileExistsError_, NotAFileError, FileMissingError, PathError
        As :func:`~bigarr._os.paths.check_output`, before anything is written.
    OutputLockedError
        If another writer holds ``target``'s output lock.
    """

    def __init__(self, target: str, *, overwrite: bool, locked: bool = False) -> None:
        self.target = target
        self._lock = None if locked else OutputLock(target)
        try:
            self.replaces = check_output(target, overwrite) == "file"
        except BaseException:
            self.close()
            raise
        self.building: str | None = None
        """The hidden name the file is built under (once :meth:`build` chose it)."""
        self.identity: FileId | None = None
        """The identity of the file this writer created at :attr:`building`, if it did."""
        self._keep = False
        self._published = False

    def build(self, kind: str, *, sweep: tuple[str, ...] = ("new",), adopt: str | None = None,
              keep: bool = False) -> str:
        """The hidden name to build the file under: ``adopt`` (a partial file a journal names)
        or a new one of ``kind``. What killed writers of ``target`` left under the hidden
        names of ``sweep`` is removed first (this writer holds the lock; ``adopt`` is kept).
        ``keep``: a failed run leaves the file for a resumed one."""
        self.building = adopt if adopt is not None else hidden_name(self.target, kind)
        self._keep = keep
        if sweep:
            remove_leftovers(self.target, sweep, keep=self.building)
        return self.building

    def created(self, fd: int) -> FileId:
        """Record the identity of the file created (open as ``fd``) at :attr:`building`."""
        self.identity = file_id(fd)
        return self.identity

    def create(self, shape: tuple[int, ...], dtype: Any, *, order: str = "C") -> memmap:
        """Create the ``.npy`` file at :attr:`building` (preallocated, as :func:`create`),
        record its identity, and open it in shared mode.

        Raises
        ------
        DiskFullError, ReadOnlyError, DtypeError, ShapeError
            As :func:`create`.
        """
        assert self.building is not None, "build() names the file first"
        arr = create_held(self.building, shape, dtype, order=order, direct=True,
                          name=self.target)
        assert arr._bigarr is not None
        self.created(arr._bigarr.fd)
        return arr

    def publish(self) -> None:
        """Sync the finished file, install it at ``target`` and sync the folder.

        Raises
        ------
        FileExistsError_, NotAFileError
            If something appeared at ``target`` meanwhile (without ``overwrite``).
        ReadOnlyError, PathError
            If the OS refuses the sync, rename or link.
        """
        assert self.building is not None, "build() names the file first"
        try:
            fd = os.open(self.building, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0))
            try:
                if self.identity is not None and file_id(fd) != self.identity:
                    raise FileChangedError(
                        f"{self.building}, the hidden file bigarr was writing {self.target} "
                        "in, was replaced by another file meanwhile; nothing was published "
                        f"(the file at {self.building} was left as it is). Run it again.")
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise os_error(exc, self.target, writing=True) from None
        publish(self.building, self.target, overwrite=self.replaces)
        self._published = True
        fsync_dir(self.target)

    def discard(self) -> None:
        """Remove the hidden file, if it is still the one this writer created (see
        :func:`remove_partial`), and any journal of it."""
        if (self.building is not None and not self._published
                and remove_partial(self.building, self.identity)):
            with contextlib.suppress(OSError):  # an Appender's journal of the hidden file
                    os.unlink(journal_path(self.building))

    def close(self) -> None:
        """Release the output's lock (if this object took it)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> NewOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if not self._keep:
                self.discard()
        finally:
            self.close()


def remove_partial(path: str, named: FileId | None) -> bool:
    """Delete an output's abandoned hidden file, only if it is the file ``named`` (its
    identity, as a journal or the writer recorded it); with no identity recorded, only a
    regular file with one link (as :func:`bigarr._os.fileid.remove_leftovers` does). A file
    that took the name since (a planted link, another writer's file) is left alone.

    Returns True if nothing is left at ``path`` that belongs to the output.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode):
        return False
    if named is not None:
        if path_id(path) != named:
            return False  # not the file the journal described: not ours to delete
    elif st.st_nlink != 1:
        return False
    try:
        os.unlink(path)
    except OSError:
        return False
    fsync_dir(path)
    return True


#: Staging memory of :func:`written_in_order`'s direct writes (bytes), held besides the
#: writer's budget.
OUTPUT_STAGING = 16 << 20


@contextlib.contextmanager
def written_in_order(target: str, shape: tuple[int, ...], dtype: np.dtype[Any], *,
                     overwrite: bool, kind: str, staging: int = OUTPUT_STAGING,
                     ) -> Iterator[Callable[[Any], None]]:
    """A new ``.npy`` at ``target``, written front to back through the yielded *sink*.

    The one owner of the sequential outputs (``sort``, ``argsort``, ``take``): the file is
    built under a hidden name next to ``target`` (``kind`` names the writer), each array given
    to the sink is appended through an ``O_DIRECT`` :class:`~bigarr._os.sink.Sink` (staged
    in at most ``staging`` bytes, written by the sink's threads while the writer
    computes; buffered with write-behind where ``O_DIRECT`` is refused), and once the block
    exits the data are synced, the file is published (:func:`publish`: never over a file that
    appeared meanwhile unless ``overwrite`` allowed replacing it) and the folder synced. If the
    block raises, the hidden file is removed and ``target`` is left as it was. The caller holds
    the output's lock.

    Raises
    ------
    FileExistsError_, NotAFileError
        As :func:`bigarr._os.paths.check_output`, before anything is written.
    ShapeError
        If the sink was given fewer or more bytes than ``shape`` and ``dtype`` hold.
    """
    with NewOutput(target, overwrite=overwrite, locked=True) as output:
        building = output.build(kind, sweep=())
        result = output.create(shape, dtype)
        offset, nbytes = int(result.offset), int(result.nbytes)
        result.close()
        fd = os.open(building, os.O_WRONLY | os.O_CLOEXEC)
        try:
            written = 0
            # O_DIRECT from staging buffers (bounded: OUTPUT_STAGING), a few writes queued:
            # buffered writes copied every byte into the page cache, the largest CPU cost of a
            # sort (bench/README.md); buffered with write-behind where O_DIRECT is refused
            with Sink(fd, building, direct=True, staging=staging) as direct:
                out = Appending(direct, offset)

                def sink(block: Any) -> None:
                    nonlocal written
                    data = np.ascontiguousarray(block)
                    if written + data.nbytes > nbytes:
                        raise ShapeError(f"{target}: more data than its shape {shape} holds")
                    out.write(data)
                    written += data.nbytes

                yield sink
                out.drain()
            if written != nbytes:
                raise ShapeError(f"{target}: {written} of its {nbytes} data bytes were written")
        finally:
            os.close(fd)
        output.publish()


def _fill(fd: int, offset: int, nbytes: int, dtype: np.dtype[Any], fill: Any) -> None:
    value = np.asarray(fill, dtype=dtype)
    if nbytes == 0 or not value.tobytes().strip(b"\x00"):
        return  # preallocated blocks already read as zeros
    block = np.full(max(1, _FILL_BLOCK // dtype.itemsize), value, dtype=dtype).tobytes()
    pos, end = offset, offset + nbytes
    while pos < end:
        pos += os.pwrite(fd, block[: end - pos], pos)


def create(
    path: str | os.PathLike[str],
    shape: int | tuple[int, ...],
    dtype: Any = np.float64,
    *,
    fill: Any = None,
    order: str = "C",
    align: int | None = None,
    overwrite: bool = False,
) -> memmap:
    """Create a page-aligned ``.npy`` file and open it in shared mode.

    The data starts at a multiple of ``align`` bytes (default: the page size, at least 4096),
    so plain ``np.load(path, mmap_mode="r")`` still reads it. The file is preallocated, so a full
    disk raises :class:`~bigarr.errors.DiskFullError` here rather than SIGBUS later, and it is
    written under a temporary name and renamed into place, so a crash never leaves a half-written
    file at ``path``.

    Parameters
    ----------
    path
        Where to write.
    shape, dtype
        The array's shape and element type.
    fill
        Value for every element; ``None`` leaves zeros (which cost no writes).
    order
        ``"C"`` (row-major) or ``"F"`` (column-major).
    align
        Data alignment in bytes, a power of two of at least 64.
    overwrite
        Replace an existing file at ``path`` (atomically).

    Raises
    ------
    FileExistsError_
        If ``path`` exists and ``overwrite`` is false.
    OutputLockedError
        If another writer (an open Appender, a ``map_blocks`` run) holds ``path``.
    DiskFullError
        If the file system lacks room, or the file would exceed its largest file size.
    ReadOnlyError
        If the directory cannot be written (permissions, read-only file system).
    DtypeError, ShapeError, FormatError
        For bad dtype, shape, order or alignment.
    """
    return create_held(file_path(path), shape, dtype, fill=fill, order=order, align=align,
                       overwrite=overwrite, locked=False)


def create_held(path: str, shape: int | tuple[int, ...], dtype: Any, *, fill: Any = None,
                order: str = "C", align: int | None = None, overwrite: bool = False,
                locked: bool = True, direct: bool = False, name: str | None = None) -> memmap:
    """:func:`create` for a writer that holds ``path``'s output lock already (``locked``), or
    that creates one of bigarr's own hidden names in place (``direct``, see
    :func:`_atomic_file`). ``name``: the output a hidden ``path`` stands for, which errors
    (a full disk) name instead of the hidden name.

    Raises
    ------
    OutputLockedError, FileExistsError_, DiskFullError, ReadOnlyError, DtypeError, ShapeError
        As :func:`create`.
    """
    dt = check_dtype(dtype)
    dims = check_shape(shape, dt)
    fortran = parse_order(order) == "F"
    header = build_header(dims, dt, fortran, align=_parse_align(align))
    nbytes = int(np.prod(dims, dtype=object)) * dt.itemsize
    with _atomic_file(path, overwrite, locked=locked, direct=direct, name=name) as (fd, _tmp):
        _write_npy(fd, name or path, header, nbytes, dt, fill)
    return open(path, "shared")


def _write_npy(fd: int, target: str, header: bytes, nbytes: int, dtype: np.dtype[Any],
               fill: Any) -> None:
    try:
        os.pwrite(fd, header, 0)
    except OSError as exc:
        raise os_error(exc, target, writing=True) from None
    preallocate(fd, len(header), nbytes, target)
    if fill is not None:
        _fill(fd, len(header), nbytes, dtype, fill)


@contextlib.contextmanager
def new_file(path: str, shape: tuple[int, ...], dtype: np.dtype[Any], *,
             overwrite: bool = False) -> Iterator[memmap]:
    """A new page-aligned ``.npy`` file, mapped shared, that appears at ``path`` only when the
    block completes (for writers that fill a file in steps, such as :func:`bigarr.from_zarr`).

    Until then it is an unnamed (or hidden) file; errors name ``path``, never a hidden name.
    The mapping is closed when the block ends.

    Raises
    ------
    FileExistsError_, NotAFileError, ReadOnlyError, DiskFullError, DtypeError, ShapeError
        As :func:`create`.
    """
    dt = check_dtype(dtype)
    dims = check_shape(shape, dt)
    header = build_header(dims, dt, False, align=default_alignment())
    nbytes = int(np.prod(dims, dtype=object)) * dt.itemsize
    with _atomic_file(path, overwrite) as (fd, _tmp):
        _write_npy(fd, path, header, nbytes, dt, None)
        start = len(header)
        mapping = Mapping(path, "shared", start, start + nbytes, fd=fd)
        arr = memmap._attach(mapping, dims, dt, "C", filename=path, offset=start)
        try:
            yield arr
        finally:
            arr.close(force=True)  # the writer is done with it; its views are its own


def _header_of(path: str) -> NpyHeader:
    size = _regular_size(path)
    try:
        with builtins.open(path, "rb") as f:
            return read_header(f, size, name=path)
    except PermissionError:  # only the open can be refused; reading an open file cannot
        raise _denied(path) from None
    except OSError as exc:  # EIO, ELOOP (a link swapped in since the stat), ...
        raise os_error(exc, path) from None


def open(path: str | os.PathLike[str], mode: str = "r", *,
         scratch_limit: int | str | None = None) -> memmap:
    """Open an existing ``.npy`` file (bigarr's or numpy's alignment) as a :class:`memmap`.

    Parameters
    ----------
    path
        The file.
    mode
        ``"r"``/``"readonly"``, ``"shared"``/``"r+"`` or ``"private"``/``"c"``.
    scratch_limit
        Private mode only: the most memory scratch edits may take, in bytes or as a string
        such as ``"2GiB"``; ``None`` for no limit. Edits past it raise
        :class:`~bigarr.errors.ScratchLimitError` (a ``MemoryError``); which writes are
        refused before they happen and which are caught after is listed in the README
        ("Private mode").

    Raises
    ------
    FileMissingError, NotAFileError
        If ``path`` is missing or not a regular file.
    AccessDeniedError
        If the file (or a directory above it) may not be read.
    HeaderError, TruncatedFileError, DtypeError, ShapeError
        If the file is not a mappable ``.npy`` file; checked before mapping.
    ReadOnlyError
        For shared mode on a file that cannot be written.
    ModeError
        For an unknown mode, or a ``scratch_limit`` outside private mode.
    BudgetError
        For a ``scratch_limit`` that is not a positive size.
    MappingError
        If the OS refuses the mapping (a private mapping under strict overcommit,
        ``vm.overcommit_memory=2``, is charged in full and can be refused).

    Warns
    -----
    IncompleteOutputWarning
        If a :func:`bigarr.map_blocks` run writing this file in place was interrupted (its
        journal is still next to it), or a journaled ``commit`` of it was (until
        :func:`bigarr.recover_commit`); :func:`bigarr.check_complete` raises instead.
    """
    access, creating = parse_mode(mode)
    if creating:
        raise ModeError("open() maps existing files; use bigarr.create() to make a new one.")
    limit = parse_limit(scratch_limit, access)
    target = file_path(path)
    header = _header_of(target)
    if os.path.lexists(journal_path(target)) or os.path.lexists(commit_journal_path(target)):
        # two stats; see bigarr._formats.journal
        try:
            check_complete(target)
        except IncompleteOutputError as exc:
            warnings.warn(str(exc), IncompleteOutputWarning, stacklevel=2)
    mapping = Mapping(target, access, header.data_offset, header.data_offset + header.nbytes)
    set_limit(mapping, limit)
    return memmap._attach(mapping, header.shape, header.dtype, header.order,
                          filename=target, offset=header.data_offset)


def open_raw(
    path: str | os.PathLike[str],
    dtype: Any,
    shape: int | tuple[int, ...] | None = None,
    *,
    offset: int = 0,
    order: str = "C",
    mode: str = "r",
    overwrite: bool = False,
    scratch_limit: int | str | None = None,
) -> memmap:
    """Map a headerless binary file.

    ``shape=None`` maps everything from ``offset`` to the end as a 1-D array. With ``mode="w+"``
    a new preallocated file of ``offset`` + the array's bytes is created (never replacing an
    existing path unless ``overwrite=True``), then opened in shared mode. ``scratch_limit``
    bounds private-mode edits as in :func:`open`.

    Raises
    ------
    TruncatedFileError
        If the file is shorter than ``offset`` plus the array's bytes; checked before mapping.
    """
    access, creating = parse_mode(mode)
    limit = parse_limit(scratch_limit, access)
    dt = check_dtype(dtype)
    target = file_path(path)
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ShapeError(f"Expected a non-negative integer offset. Got {offset!r}.")
    offset = int(offset)
    fmt_order = parse_order(order)
    if creating:
        if shape is None:
            raise ShapeError("Creating a raw file (mode 'w+') needs a shape.")
        dims = check_shape(shape, dt)
        nbytes = int(np.prod(dims, dtype=object)) * dt.itemsize
        with _atomic_file(target, overwrite) as (fd, _tmp):
            preallocate(fd, 0, offset + nbytes, target)
    size = _regular_size(target)
    if shape is None:
        if dt.itemsize == 0 or size < offset:
            raise TruncatedFileError(f"{target} has {size} bytes; offset {offset} is past its end.")
        dims = ((size - offset) // dt.itemsize,)
    else:
        dims = check_shape(shape, dt)
    nbytes = int(np.prod(dims, dtype=object)) * dt.itemsize
    if size < offset + nbytes:
        raise TruncatedFileError(
            f"{target} has {size} bytes, but shape {dims} of {dt} at offset {offset} needs "
            f"{offset + nbytes}."
        )
    mapping = Mapping(target, access, offset, offset + nbytes)
    set_limit(mapping, limit)
    return memmap._attach(mapping, dims, dt, fmt_order, filename=target, offset=offset)
