"""Paths: what may be written where, and the OS's refusals as bigarr errors.

Two decisions live here, so that every entry point makes them the same way:

* :func:`check_output` decides whether an output path may be written, and what
  ``overwrite=True`` may replace there: a regular file (for ``.npy`` outputs) or a zarr array
  directory holding nothing but zarr's own entries (for zarr outputs). Everything else is
  refused, also with ``overwrite=True``: device nodes, FIFOs and sockets (replacing
  ``/dev/null`` with a regular file breaks the system), symbolic links (the user named the
  link, not what it points to), zarr groups and other directories (zarr's overwrite empties the
  directory, deleting files the user never named). ``create``, ``open_raw(mode="w+")``,
  ``map_blocks(out=path)``, ``to_zarr``, ``from_zarr``, the ``Appender`` and the command line
  all ask this one function.
* :func:`os_error` turns an :class:`OSError` from a syscall on a path into the bigarr error a
  user would catch (a full disk is :class:`~bigarr.errors.DiskFullError`, a read-only file
  system :class:`~bigarr.errors.ReadOnlyError`, a symlink loop or an over-long name
  :class:`~bigarr.errors.PathError`, ...), naming the user's path rather than a hidden
  temporary one.

Neither imports zarr: zarr arrays are recognised by their metadata files (``zarr.json`` with
``"node_type": "array"``, or ``.zarray``), and zarr stores that are not directories are checked
in :mod:`bigarr._interop.zarr`.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from typing import Literal

from bigarr.errors import (
    AccessDeniedError,
    BigArrError,
    DiskFullError,
    FileExistsError_,
    FileMissingError,
    InvalidPathError,
    NotADirError,
    NotAFileError,
    PathError,
    ReadOnlyError,
)

__all__ = ["Existing", "check_output", "check_path", "os_error", "special_entry", "zarr_node"]

Existing = Literal["nothing", "file", "zarr"]
"""What :func:`check_output` found at an output path that may be written."""

#: Entries a zarr array directory may hold: its metadata, and chunk keys in any of zarr's chunk
#: key encodings ("c/0/0", "c.0.0", "0.0", "0/0"). Anything else is not zarr's to delete.
_ZARR_ENTRY = re.compile(r"^(zarr\.json|\.zarray|\.zattrs|\.zmetadata|c|c[./][0-9./]*|[0-9]+"
                         r"([./][0-9]+)*)$")
#: What a write killed inside zarr's local store leaves: NAME with its suffix replaced by
#: ".<uuid4 hex>.partial" (zarr.json -> zarr.<hex>.partial). Zarr's own debris, also deletable.
_ZARR_PARTIAL = re.compile(r"^(.*)\.[0-9a-f]{32}\.partial$")


def _zarrs(entry: str) -> bool:
    """Whether ``entry`` (a name in a zarr array directory) is zarr's own."""
    debris = _ZARR_PARTIAL.match(entry)
    if debris is not None:
        entry = debris.group(1)
        if entry == "zarr":  # zarr.json, its ".json" suffix replaced
            return True
    return _ZARR_ENTRY.match(entry) is not None


def check_path(path: str) -> str:
    """Refuse a path no syscall can take (an embedded NUL byte) as a bigarr error.

    Raises
    ------
    InvalidPathError
        If ``path`` contains a NUL byte.
    """
    if "\x00" in path:
        raise InvalidPathError(
            f"Expected a file path without NUL bytes. Got {path!r}; no file can have this name."
        )
    return path


def os_error(exc: OSError, path: str, *, writing: bool = False) -> BigArrError:
    """The bigarr error for ``exc``, an OSError from a syscall on ``path`` (the user's name).

    ``writing`` says whether the operation needed write access, which decides between
    :class:`~bigarr.errors.ReadOnlyError` (cannot write) and
    :class:`~bigarr.errors.AccessDeniedError` (cannot read) for a permission error.
    An error that already is a bigarr error is returned unchanged.
    """
    if isinstance(exc, BigArrError):
        return exc
    code = exc.errno
    why = exc.strerror or str(exc)
    if code == errno.ENOENT:
        return FileMissingError(code, f"No such file or directory: {path}")
    if code == errno.EROFS:
        return ReadOnlyError(
            code, f"{path} is on a read-only file system ({why}); bigarr cannot write there. "
            "Open it with mode='r', or write to another file system."
        )
    if code in (errno.EACCES, errno.EPERM):
        if writing:
            return ReadOnlyError(
                code, f"Cannot write {path}: {why}. Choose a file and directory you may write, "
                "or open it read-only."
            )
        return AccessDeniedError(
            code, f"Permission denied reading {path}. bigarr needs read permission on the "
            "file and search (x) permission on each directory above it."
        )
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return DiskFullError(f"No room on disk for {path} ({why}); free some space or write "
                             "to another file system.", code or errno.ENOSPC)
    if code == errno.EFBIG:
        return DiskFullError(f"{path} would be larger than this file system allows for one "
                             f"file ({why}); use a smaller shape or another file system.",
                             errno.EFBIG)
    if code == errno.ENOTDIR:
        return NotADirError(code, f"A part of {path} that should be a directory is not one "
                            f"({why}); check the path.")
    if code == errno.EISDIR:
        return NotAFileError(code, f"Expected a file. Got a directory: {path}")
    if code == errno.EEXIST:
        return FileExistsError_(code, f"{path} exists; pass overwrite=True to replace it.")
    if code == errno.ELOOP:
        return PathError(code, f"Too many levels of symbolic links resolving {path} (a "
                         "symlink loop?); check the links on the path.")
    if code == errno.ENAMETOOLONG:
        return PathError(code, f"File name too long: {path}; use a shorter name.")
    return PathError(code, f"{why}: {path}")


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(check_path(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise os_error(exc, path) from None


def zarr_node(path: str) -> Literal["array", "group", "other"]:
    """What the directory ``path`` holds according to its zarr metadata files."""
    try:
        with open(os.path.join(path, "zarr.json"), encoding="utf8") as f:
            meta = json.load(f)
        kind = meta.get("node_type") if isinstance(meta, dict) else None
        return kind if kind in ("array", "group") else "other"
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        return "other"
    if os.path.isfile(os.path.join(path, ".zarray")):
        return "array"
    if os.path.isfile(os.path.join(path, ".zgroup")):
        return "group"
    return "other"


def special_entry(folder: str) -> tuple[str, str] | None:
    """``(path, kind)`` of the first entry under the directory ``folder`` (a local zarr array)
    that is neither a regular file nor a directory, links followed to what they name: a FIFO
    (reading it blocks for ever), a device (``/dev/zero`` never ends), a socket; None if there
    is none. A dangling link is not one (a missing chunk, which zarr reads as fill values).
    One ``scandir`` per directory; a ``stat`` only for links and entries of unknown type."""
    todo = [folder]
    while todo:
        try:
            entries = list(os.scandir(todo.pop()))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):  # (d_type: no syscall)
                    todo.append(entry.path)
                    continue
                if entry.is_file(follow_symlinks=False):
                    continue
                st = os.stat(entry.path)  # a link (what it names), or an unknown type
            except OSError:
                continue  # gone, or a dangling link
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                return entry.path, _kind(st)
    return None


def _kind(st: os.stat_result) -> str:
    mode = st.st_mode
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "a special file"


def check_output(path: str, overwrite: bool, *, zarr: bool = False) -> Existing:
    """Decide whether an output may be written at ``path``; the one owner of that decision.

    Parameters
    ----------
    path
        The absolute output path the user named.
    overwrite
        Whether the user allowed replacing what is there.
    zarr
        The output is a zarr array directory rather than a ``.npy`` file.

    Returns
    -------
    str
        ``"nothing"`` (nothing there, or an empty directory for a zarr output), ``"file"`` (a
        regular file ``overwrite`` may replace) or ``"zarr"`` (a zarr array it may replace).

    Raises
    ------
    FileExistsError_
        If something replaceable is there and ``overwrite`` is false.
    NotAFileError
        If something is there that no output may replace: a device, FIFO, socket, symbolic
        link, zarr group, or a directory that is not a zarr array (or holds other files).
    FileMissingError, NotADirError, PathError, InvalidPathError
        If the folder does not exist, a part of the path is not a directory, the path loops
        or is too long, or holds a NUL byte.
    """
    try:
        return _check_output(path, overwrite, zarr)
    except OSError as exc:  # a folder that loops or vanishes, an unreadable directory, ...
        raise os_error(exc, path) from None


def _check_output(path: str, overwrite: bool, zarr: bool) -> Existing:
    st = _lstat(path)
    folder = os.path.dirname(path) or "."
    if st is None:
        if zarr and not os.path.lexists(folder):
            return "nothing"  # zarr creates the missing folders of a new array
        parent = _lstat(folder)
        if parent is None:
            raise FileMissingError(errno.ENOENT, f"No such directory: {folder} (the folder of "
                                   f"{path}); create it first.")
        if not stat.S_ISDIR(os.stat(folder).st_mode):
            raise NotADirError(errno.ENOTDIR, f"{folder} is not a directory, so {path} cannot "
                               "be created in it.")
        return "nothing"
    what = "zarr array" if zarr else "file"
    if stat.S_ISREG(st.st_mode) and not zarr:
        if not overwrite:
            raise FileExistsError_(errno.EEXIST,
                                   f"{path} exists; pass overwrite=True to replace it.")
        return "file"
    if stat.S_ISDIR(st.st_mode) and zarr:
        with os.scandir(path) as listing:
            if next(listing, None) is None:
                return "nothing"  # an empty directory: a new array loses nothing
        node = zarr_node(path)
        if node == "array" and not overwrite:
            raise FileExistsError_(errno.EEXIST, f"A zarr array exists at {path}; pass "
                                   "overwrite=True to replace it.")
        strangers = sorted(e for e in os.listdir(path) if not _zarrs(e)) if node == "array" else []
        if node == "array" and not strangers:
            return "zarr"
        if node == "array":
            shown = ", ".join(strangers[:3]) + (", ..." if len(strangers) > 3 else "")
            why = f"a zarr array that also holds other files ({shown})"
        elif node == "group":
            why = "a zarr group (overwriting would delete every array in it)"
        else:
            why = "a directory that is not a zarr array"
        raise NotAFileError(errno.EISDIR, f"{path} is {why}; overwrite replaces only a zarr "
                            "array. Choose another path, or move what is there yourself.")
    kind = "a regular file" if stat.S_ISREG(st.st_mode) else _kind(st)
    advice = ("remove the link yourself, or name the file it points to" if stat.S_ISLNK(st.st_mode)
              else "choose another path")
    raise NotAFileError(
        errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EEXIST,
        f"{path} is {kind}; bigarr writes a new {what} only where nothing exists, and "
        f"overwrite=True replaces only a {what}. Nothing was changed; {advice}.",
    )
