"""Where a zarr output goes: judged, written aside, swapped in, marked complete.

:func:`zarr_target` says what is at an output (nothing, or an array ``overwrite`` may replace);
:func:`hidden_sibling` gives a local directory output a hidden sibling to be written in and
renamed into place when complete, under the output's lock; :data:`MARKER` is the attribute
that marks an array complete or not, for stores written in place. :func:`zarr_call` turns
zarr's refusals of the arguments into bigarr errors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

from bigarr._core.files import file_path
from bigarr._os.durable import fsync_dir
from bigarr._os.fileid import exchange, hidden_name, remove_leftovers
from bigarr._os.lock import OutputLock
from bigarr._os.paths import check_output, os_error
from bigarr.errors import ArgumentError, FileExistsError_, FormatError, NotAFileError


@contextlib.contextmanager
def hidden_sibling(local: str | None, existing: str) -> Iterator[str | None]:
    """For a local zarr output ``local``: a new hidden sibling directory to write the array in,
    renamed into place when the block completes (None for other stores: written in place).

    The writer holds ``local``'s output lock throughout, and first removes what killed writers
    of ``local`` left (hidden ``new`` and ``old`` directories). A kill therefore leaves the
    destination as it was (nothing, or the old array) or the complete new array, never a part.
    A destination that is a mount point is written in place (None): no sibling could be
    renamed onto it.
    An old array (``existing == "zarr"``, with overwrite) is swapped out atomically
    (``renameat2(RENAME_EXCHANGE)``) and then deleted; where the kernel cannot swap, it is
    renamed aside first, so a kill between the two renames leaves the destination absent.

    Raises
    ------
    OutputLockedError
        If another writer holds ``local``.
    ReadOnlyError, DiskFullError, PathError
        If the folder cannot be written.
    """
    if local is None:
        yield None
        return
    folder = os.path.dirname(local) or "."
    try:
        os.makedirs(folder, exist_ok=True)  # (zarr creates the missing folders of a new array)
    except OSError as exc:
        raise os_error(exc, local, writing=True) from None
    with OutputLock(local):
        remove_leftovers(local, ("new", "old"))
        if _own_file_system(local):  # a mount point: no sibling on its file system to rename
            yield None
            return
        tmp = hidden_name(local, "new")
        try:
            os.mkdir(tmp)
        except OSError as exc:
            raise os_error(exc, local, writing=True) from None
        try:
            yield tmp
            _swap_in(tmp, local, existing)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def _own_file_system(local: str) -> bool:
    """Whether the directory ``local`` is a mount point (or on another device than its folder):
    a sibling could not be renamed onto it, so the array is written in place there, guarded by
    the completion marker only."""
    try:
        here = os.stat(local)
    except OSError:
        return False
    if not os.path.isdir(local):
        return False
    folder = os.path.dirname(local) or "."
    return os.path.ismount(local) or here.st_dev != os.stat(folder).st_dev


def _swap_in(tmp: str, local: str, existing: str) -> None:
    """Rename the finished array directory ``tmp`` to ``local`` (see :func:`hidden_sibling`)."""
    try:
        if existing == "zarr":
            if check_output(local, True, zarr=True) == "zarr" and exchange(tmp, local):
                shutil.rmtree(tmp, ignore_errors=True)  # the old array, now at the hidden name
                fsync_dir(local)
                return
            old = hidden_name(local, "old")
            if os.path.lexists(local):
                os.rename(local, old)
            os.rename(tmp, local)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, local)  # onto nothing, or an empty directory (replaced atomically)
    except OSError as exc:
        raise os_error(exc, local, writing=True) from None
    fsync_dir(local)


MARKER = "bigarr"
"""The attribute that marks a zarr array written by :func:`to_zarr` as complete or not.

It is written with the array's metadata, as ``{"complete": false}``, before any chunk, and set
to ``{"complete": true}`` after the last chunk, in one atomic metadata write (zarr's local
store writes a temporary file and renames it). A run killed at any point therefore leaves
nothing, an array marked incomplete, or a complete one (for a local directory output, only
nothing or a complete one: it is written aside and renamed into place); :func:`from_zarr`,
``bigarr convert`` and ``bigarr verify`` refuse an incomplete one unless forced. Arrays without
the attribute were not written by bigarr and are taken as they are.
"""


def zarr_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call zarr; its refusals of the arguments become bigarr errors.

    Raises
    ------
    ArgumentError
        Where zarr raises TypeError (an unknown store type, codec or fill value).
    FormatError
        Where zarr raises ValueError (settings the zarr format cannot hold).
    """
    import zarr

    try:
        return fn(*args, **kwargs)
    except (OSError, zarr.errors.ContainsArrayError, zarr.errors.ContainsGroupError):
        raise
    except TypeError as exc:
        raise ArgumentError(f"zarr refused the arguments: {exc}") from None
    except ValueError as exc:
        raise FormatError(f"zarr cannot create this array: {exc}") from None


def display_name(store_or_path: Any) -> str:
    if isinstance(store_or_path, (str, os.PathLike)):
        return os.path.abspath(os.fspath(store_or_path))
    return repr(store_or_path)


def local_path(store_or_path: Any) -> str | None:
    """The directory of a local path or ``LocalStore``; None for other stores and URLs."""
    if isinstance(store_or_path, os.PathLike) or (isinstance(store_or_path, str)
                                                  and "://" not in store_or_path):
        return file_path(store_or_path)
    try:
        from zarr.storage import LocalStore
    except ImportError:  # pragma: no cover - zarr 2
        return None
    if isinstance(store_or_path, LocalStore):
        return file_path(str(store_or_path.root))
    return None


def zarr_target(store_or_path: Any, overwrite: bool) -> str:
    """What is at a zarr output: ``"nothing"`` or ``"zarr"`` (an array ``overwrite`` may replace).

    Local directories are judged by :func:`bigarr._os.paths.check_output`; other stores by zarr.

    Raises
    ------
    FileExistsError_
        If an array is there and ``overwrite`` is false.
    NotAFileError
        If a zarr group, a directory that is not a zarr array, or a non-directory is there.
    """
    import zarr

    local = local_path(store_or_path)
    if local is not None:
        return check_output(local, overwrite, zarr=True)
    try:
        zarr.open_group(store_or_path, mode="r")
    except Exception:  # whatever zarr raises, there is no group here
        pass
    else:
        raise NotAFileError(f"{display_name(store_or_path)} holds a zarr group; overwrite replaces "
                            "only a zarr array, and never deletes a group's arrays.")
    try:
        zarr.open_array(store_or_path, mode="r")
    except Exception:  # no (readable) array here
        return "nothing"
    if not overwrite:
        raise FileExistsError_(f"A zarr array exists at {display_name(store_or_path)}; pass "
                               "overwrite=True to replace it.")
    return "zarr"


def premark_v2(store_or_path: Any, existing: str) -> None:
    """Delete the array being replaced, then write v2 ``.zattrs`` holding the marker."""
    import json

    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import LocalStore, StorePath

    local = local_path(store_or_path)
    store = LocalStore(local) if local is not None else store_or_path
    where = StorePath(store, "")
    if existing == "zarr":
        sync(where.delete_dir())
    body = json.dumps({MARKER: {"complete": False}}).encode()
    sync((where / ".zattrs").set(default_buffer_prototype().buffer.from_bytes(body)))
