"""``bigarr.memmap(...)``: numpy.memmap's constructor contract, on bigarr's mapping.

What numpy documents (``numpy/_core/memmap.py``), and bigarr follows:

``filename``
    A path (``str`` or ``os.PathLike``) or a file object (anything with ``read``, as numpy
    tests). A file object is mapped through its descriptor, duplicated, so it works for
    ``tempfile.TemporaryFile()`` (no name), ``NamedTemporaryFile`` and files opened ``"w+b"``
    or ``"r+b"``; the caller may close its object afterwards. Its buffered writes are flushed
    first, and it is left positioned at its end, as numpy leaves it.
``mode``
    ``"r"``/``"readonly"``, ``"r+"``/``"readwrite"``, ``"w+"``/``"write"``,
    ``"c"``/``"copyonwrite"`` (plus bigarr's ``"shared"`` and ``"private"``). ``"w+"`` makes a
    new zero-filled file at a path; ``"w+"`` and ``"r+"`` extend a file shorter than
    ``offset`` plus the array's bytes, to at least one byte (numpy's rule for empty arrays).
    A file object is never truncated. The ``mode`` attribute is numpy's short name of the mode
    asked for (``"w+"`` stays ``"w+"``).
``shape=None``
    Everything from ``offset`` to the end, which must hold a whole number of items; ``"w+"``
    needs a shape.
``filename`` attribute
    For a ``PathLike``, its ``resolve()``-d path; for a ``str``, its absolute path; for a file
    object, the absolute path of its ``name``, or ``None`` when it has no name.
``offset``, ``order``, ``dtype``
    As numpy.

Where bigarr differs on purpose (``tests/test_memmap_conformance.py`` lists the same, each case
pinned):

* New and extended bytes are preallocated (``posix_fallocate``), so a full disk raises
  :class:`~bigarr.errors.DiskFullError` here rather than SIGBUS later (numpy extends sparsely).
* ``"w+"`` on an existing path puts a new file in its place (``rename``, keeping the permission
  bits) instead of truncating it in place: arrays still mapping the old file, in this process
  or another, keep their pages instead of dying of SIGBUS. Symlinks are followed as numpy
  follows them (the link's target is replaced); other hard links keep the old bytes.
* Only regular files are mapped: devices, FIFOs and directories are refused, never truncated.
* An empty array in ``"r"`` or ``"c"`` mode (or ``shape=None`` on an empty file) maps nothing
  and works; numpy raises there because Python's ``mmap`` cannot map zero bytes.
* Object dtypes are refused: pointers stored in a file mean nothing to another process.
* Errors are bigarr errors that subclass numpy's builtin (``ValueError``, ``PermissionError``,
  ``FileNotFoundError``).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np

from bigarr._core.array import memmap
from bigarr._core.files import _atomic_file, file_path, preallocate
from bigarr._core.scratch import parse_limit, set_limit
from bigarr._formats.npy import check_dtype, check_shape, parse_order
from bigarr._os.mapping import Mapping
from bigarr._os.modes import Access, parse_mode
from bigarr.errors import (
    AccessDeniedError,
    ArgumentError,
    FileMissingError,
    NotAFileError,
    ReadOnlyError,
    ShapeError,
    TruncatedFileError,
)

__all__ = ["new_memmap"]

_SHORT: dict[Access, str] = {"readonly": "r", "shared": "r+", "private": "c"}


def _parse_offset(offset: Any) -> int:
    if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or offset < 0:
        raise ShapeError(f"Expected a non-negative integer offset in bytes. Got {offset!r}.")
    return int(offset)


def _dims(shape: Any, dt: np.dtype[Any], size: int, offset: int, label: str) -> tuple[int, ...]:
    """The shape: ``shape`` normalised, or (for ``None``) every whole item after ``offset``."""
    if shape is not None:
        return check_shape(shape, dt)
    if size < offset:
        raise TruncatedFileError(f"{label} has {size} bytes; offset {offset} is past its end.")
    if dt.itemsize == 0:
        raise ShapeError(f"A dtype of 0 bytes ({dt}) needs an explicit shape.")
    avail = size - offset
    if avail % dt.itemsize:
        raise ShapeError(
            f"Size of available data is not a multiple of the data-type size: {label} has "
            f"{avail} bytes after offset {offset}, and {dt} items take {dt.itemsize}. Pass a "
            "shape, or an offset that leaves whole items."
        )
    return (avail // dt.itemsize,)


def _os_refusal(exc: OSError, path: str, writing: bool) -> Exception:
    if exc.errno == errno.ENOENT:
        return FileMissingError(errno.ENOENT, f"No such file: {path}")
    if exc.errno == errno.EISDIR:
        return NotAFileError(errno.EISDIR, f"Expected a regular file. Got a directory: {path}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        if writing:
            return ReadOnlyError(
                exc.errno, f"{path} cannot be opened for writing ({exc.strerror}). Use mode "
                "'r' (read-only) or 'c' (copy-on-write edits that stay in memory)."
            )
        return AccessDeniedError(exc.errno, f"Permission denied reading {path}.")
    if exc.errno in (errno.ENOTDIR, errno.ENAMETOOLONG, errno.ELOOP):
        return FileMissingError(exc.errno, f"No file can be opened at {path}: {exc.strerror}.")
    return exc


def _regular(fd: int, label: str) -> int:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a special file (device, FIFO)"
        raise NotAFileError(errno.EINVAL, f"Expected a regular file to map. Got {kind}: {label}")
    return st.st_size


def _grow(fd: int, size: int, need: int, path: str) -> None:
    """Extend the file to ``need`` bytes (preallocated), as numpy's ``w+``/``r+`` extend it."""
    if size < need:
        preallocate(fd, size, need - size, path)


def _from_path(filename: Any, dt: np.dtype[Any], access: Access, creating: bool, offset: int,
               shape: Any, order: str) -> tuple[Mapping, tuple[int, ...], Any]:
    path = file_path(filename)
    label: Any = path
    if creating:  # a new file in the place of the old one (see the module docstring)
        real = os.path.realpath(path)
        dims = check_shape(shape, dt)
        need = max(offset + int(np.prod(dims, dtype=object)) * dt.itemsize, 1)
        try:
            old = os.stat(real)
        except FileNotFoundError:
            old = None
        except OSError as exc:
            raise _os_refusal(exc, path, writing=True) from None
        if old is not None and not stat.S_ISREG(old.st_mode):
            kind = "a directory" if stat.S_ISDIR(old.st_mode) else "a special file"
            raise NotAFileError(
                errno.EINVAL, f"mode 'w+' replaces a regular file; {path} is {kind}, which "
                "bigarr never replaces."
            )
        with _atomic_file(real, True) as (new_fd, _tmp):
            if old is not None:
                os.fchmod(new_fd, stat.S_IMODE(old.st_mode))
            preallocate(new_fd, 0, need, real)
        path = real
    writing = access == "shared"
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer before it is refused below
        # (for regular files the flag changes nothing).
        fd = os.open(path, (os.O_RDWR if writing else os.O_RDONLY) | os.O_CLOEXEC
                     | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise _os_refusal(exc, path, writing) from None
    try:
        size = _regular(fd, path)
        dims = _dims(shape, dt, size, offset, path)
        stop = offset + int(np.prod(dims, dtype=object)) * dt.itemsize
        if writing:
            _grow(fd, size, max(stop, 1), path)
        elif size < stop:
            raise TruncatedFileError(
                f"{path} has {size} bytes, but shape {dims} of {dt} at offset {offset} needs "
                f"{stop}. Mode 'r+' or 'w+' would extend it; mode {_SHORT[access]!r} only reads."
            )
        mapping = Mapping(path, access, offset, stop, fd=fd)
    finally:
        os.close(fd)
    if isinstance(filename, os.PathLike):  # as numpy: the resolved path, once it is open
        label = filename.resolve() if hasattr(filename, "resolve") else Path(path).resolve()
    return mapping, dims, label


def _where(fd: int) -> str:
    """A path on the file system of ``fd``'s file, for the free-space check of ``preallocate``.

    For a file without a name (``TemporaryFile``) Linux still knows its directory
    (``/tmp/#123 (deleted)``); elsewhere ``/dev/fd/N`` is the best there is.
    """
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return f"/dev/fd/{fd}"
    return target if target.startswith("/") else f"/dev/fd/{fd}"


def _from_file_object(fobj: Any, dt: np.dtype[Any], access: Access, offset: int, shape: Any,
                      ) -> tuple[Mapping, tuple[int, ...], Any]:
    try:
        fd = int(fobj.fileno())
    except (OSError, ValueError, AttributeError, TypeError):
        raise ArgumentError(
            f"Expected a file path, or a file object with a descriptor (fileno()). Got "
            f"{type(fobj).__name__}, which has none; write its bytes to a file first."
        ) from None
    name = getattr(fobj, "name", None)
    label = os.path.abspath(name) if isinstance(name, str) else f"an unnamed file (fd {fd})"
    _regular(fd, label)
    fobj.seek(0, 2)  # as numpy: flushes buffered writes, and the end is the file's size
    size = os.fstat(fd).st_size
    held = os.fstat(fd)
    try:  # the name must still be this file, or pickling by reference would open another one
        there = os.stat(label) if isinstance(name, str) else None
    except OSError:
        there = None
    named = there is not None and (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)
    import fcntl

    can = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
    if access == "shared" and can != os.O_RDWR:
        raise ReadOnlyError(
            errno.EBADF, f"{label} is open {'read-only' if can == os.O_RDONLY else 'write-only'} "
            f"(mode {getattr(fobj, 'mode', '?')!r}), but mode 'r+'/'w+' writes through the "
            "mapping. Open it with 'r+b' or 'w+b', or map it with mode 'r' or 'c'."
        )
    if can == os.O_WRONLY:
        raise AccessDeniedError(
            errno.EBADF, f"{label} is open write-only; a mapping must read it. Open it with 'r+b'."
        )
    dims = _dims(shape, dt, size, offset, label)
    stop = offset + int(np.prod(dims, dtype=object)) * dt.itemsize
    if access == "shared":
        _grow(fd, size, max(stop, 1), label if named else _where(fd))
        fobj.seek(0, 2)
    elif size < stop:
        raise TruncatedFileError(
            f"{label} has {size} bytes, but shape {dims} of {dt} at offset {offset} needs {stop}."
        )
    mapping = Mapping(label, access, offset, stop, fd=fd, named=named)
    if not named:
        # Its own descriptor, reopened by path where bigarr needs to (a private-mode commit):
        # valid exactly while the mapping is open, and in this process only, so it is never
        # sent elsewhere (pickling and dask refuse unnamed files).
        mapping.path = f"/dev/fd/{mapping.fd}"
    return mapping, dims, (label if isinstance(name, str) else None)


def new_memmap(filename: Any, dtype: Any, mode: str, offset: Any, shape: Any,
               order: str, scratch_limit: int | str | None = None) -> memmap:
    """Build a :class:`bigarr.memmap` exactly as ``numpy.memmap(...)`` builds its arrays.

    See the module docstring for the contract and bigarr's deliberate differences.

    Raises
    ------
    ModeError
        For an unknown mode.
    ShapeError
        For ``mode="w+"`` without a shape, a bad shape, order or offset, or a file whose size
        after ``offset`` is not a whole number of items.
    DtypeError
        For object dtypes.
    FileMissingError, NotAFileError, AccessDeniedError, ReadOnlyError
        For a missing path, a non-regular file, or a file (object) that cannot be read, or
        written in ``"r+"``/``"w+"``.
    TruncatedFileError
        If a file mapped ``"r"`` or ``"c"`` is shorter than ``offset`` plus the array's bytes.
    DiskFullError
        If creating or extending the file finds no room.
    ArgumentError
        For a file object without a file descriptor.
    """
    access, creating = parse_mode(mode)
    limit = parse_limit(scratch_limit, access)
    short = "w+" if creating else _SHORT[access]
    dt = check_dtype(dtype)
    if creating and shape is None:
        raise ShapeError("shape must be given if mode == 'w+': there is no file yet to size it.")
    first = _parse_offset(offset)
    fmt_order = parse_order(order)
    if hasattr(filename, "read"):
        mapping, dims, label = _from_file_object(filename, dt, access, first, shape)
    else:
        mapping, dims, label = _from_path(filename, dt, access, creating, first, shape,
                                          fmt_order)
    set_limit(mapping, limit)
    arr = memmap._attach(mapping, dims, dt, fmt_order, filename=label, offset=first)
    arr.mode = short
    return arr
