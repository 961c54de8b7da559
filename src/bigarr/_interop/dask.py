"""Dask interop: dask arrays over bigarr files *by reference*, and parallel stores into them.

The two ways people usually connect a memory-mapped file to dask both break on a process cluster:

* ``dask.array.from_array(numpy.memmap)`` puts the array itself into the task graph; dask
  (>= 2024.12) copies the whole memmap, and shipping the graph to worker processes pickles every
  byte of it (a 2 GiB file becomes a 2 GiB graph).
* ``dask.array.store(x, numpy.memmap)`` pickles the memmap into every task: each worker process
  writes into its own unpickled *copy*, the file is left untouched, and no error is raised. Writes
  are silently lost.

Here a task graph carries only a :class:`FileRegion`: the path, the byte offset of the first
element, shape, strides and dtype (plus the file's inode, size and times for the token). Each
task maps just the bytes of its own block, read-only, in whatever process runs it; :func:`store`
tasks map their block in shared mode, write, ``msync`` and close. Blocks written by
:func:`store` start on page boundaries of the file (the dask array is rechunked along its
slowest axis first), so no two workers ever write the same page.

Pointing this at a real cluster needs one thing: every worker must see the file under the *same
path* (a shared or network file system, or the same local disk when all workers run on one
machine). Writes from several hosts to one file over NFS are only as coherent as the file system
makes them; ``msync`` before each task ends is what makes them durable.

dask and distributed are an optional extra (``pip install 'bigarr[dask]'``); they are imported
inside the functions here, so ``import bigarr`` never needs them.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from bigarr._core.array import _rebuild, memmap
from bigarr._core.files import _header_of, create_held, file_path
from bigarr._os.fileid import hidden_name
from bigarr._os.geometry import PAGE_SIZE, parse_size
from bigarr._plan.chunks import plan_chunks
from bigarr.errors import (
    DtypeError,
    FileExistsError_,
    MissingExtraError,
    ModeError,
    ReadOnlyError,
    RegionError,
    ShapeError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from dask.array import Array as DaskArray
    from dask.delayed import Delayed

__all__ = ["DEFAULT_READ_CHUNK", "DEFAULT_WRITE_CHUNK", "FileRegion", "store", "to_dask"]

DEFAULT_READ_CHUNK = "128MiB"
"""Target size of one :func:`to_dask` block when ``chunks`` is not given."""

DEFAULT_WRITE_CHUNK = "64MiB"
"""Target size of one :func:`store` block."""

_EXTRA = "pip install 'bigarr[dask]'"


def _dask_array() -> Any:
    """Import ``dask.array``, or explain which extra to install."""
    try:
        import dask
        import dask.array
    except ImportError as exc:
        raise MissingExtraError(
            f"bigarr's dask interop needs dask and distributed, which are not installed "
            f"({exc}). Install the extra: {_EXTRA}"
        ) from exc
    return dask.array


@dataclass(frozen=True, slots=True)
class FileRegion:
    """A reference to an array stored in a file: all a task needs to map its own block.

    It pickles to a few hundred bytes whatever the array's size, and its dask token is built
    from these fields alone (the data is never hashed).
    """

    path: str
    """Absolute path of the file; workers must see the same path."""
    first: int
    """File offset of element ``[0, ..., 0]``, in bytes."""
    shape: tuple[int, ...]
    """Shape of the array."""
    strides: tuple[int, ...]
    """Strides of the array in the file, in bytes."""
    dtype: np.dtype[Any]
    """Element type."""
    stamp: tuple[int, ...]
    """Which file, in which state, when the reference was taken (part of the token): device,
    inode, size in bytes, and mtime and ctime in ns. The inode and ctime change when the file
    is replaced or rewritten even if its size and mtime are kept (``cp -p``, ``rsync -t``)."""

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of array data."""
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def order(self) -> str | None:
        """``"C"`` or ``"F"`` when the array is contiguous in that order, else ``None``."""
        if self.nbytes == 0:
            return "C"
        if self.strides == _contiguous_strides(self.shape, self.dtype.itemsize, "C"):
            return "C"
        if self.strides == _contiguous_strides(self.shape, self.dtype.itemsize, "F"):
            return "F"
        return None

    def __dask_tokenize__(self) -> tuple[Any, ...]:
        return ("bigarr.FileRegion", self.path, self.stamp, self.first,
                self.shape, self.strides, self.dtype.str)

    def block(self, index: tuple[slice, ...]) -> tuple[int, tuple[int, ...]]:
        """File offset of the first element and the shape of the block ``index`` selects.

        Raises
        ------
        RegionError
            If ``index`` is not one step-1 slice per dimension.
        """
        if len(index) != self.ndim or not all(isinstance(s, slice) for s in index):
            raise RegionError(f"Expected {self.ndim} slices. Got {index!r}.")
        first, shape = self.first, []
        for s, n, stride in zip(index, self.shape, self.strides, strict=True):
            start, stop, step = s.indices(n)
            if step != 1:
                raise RegionError(f"Expected step-1 slices. Got {index!r}.")
            first += start * stride
            shape.append(max(0, stop - start))
        return first, tuple(shape)

    def map(self, index: tuple[slice, ...], access: str) -> memmap:
        """Map just the bytes of block ``index`` of the file, in ``access`` mode."""
        first, shape = self.block(index)
        return _rebuild(self.path, access, first, shape, self.dtype, self.strides, self.path,
                        self.first)

    def __getitem__(self, index: Any) -> np.ndarray[Any, Any]:
        """Read-only view of a block (dask's getter calls this in the worker process).

        The block is mapped, not copied: its pages live in the page cache and are unmapped when
        the returned array is garbage-collected.
        """
        if not isinstance(index, tuple):
            index = (index,)
        if len(index) == self.ndim and all(
            isinstance(s, slice) and s.step in (None, 1) for s in index
        ):
            return self.map(index, "readonly").view(np.ndarray)
        whole = self.map(tuple(slice(None) for _ in self.shape), "readonly").view(np.ndarray)
        picked: np.ndarray[Any, Any] = whole[index]
        return picked


def _contiguous_strides(shape: tuple[int, ...], itemsize: int, order: str) -> tuple[int, ...]:
    strides, step = [0] * len(shape), itemsize
    axes = range(len(shape) - 1, -1, -1) if order == "C" else range(len(shape))
    for axis in axes:
        strides[axis] = step
        step *= max(shape[axis], 1)
    return tuple(strides)


def _stamp(path: str) -> tuple[int, ...]:
    st = os.stat(path)
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _region_of_array(arr: memmap, *, writing: bool) -> FileRegion:
    mapping = arr._bigarr
    if mapping is None:
        raise ModeError("Expected an array backed by a file; this one is a detached copy.")
    arr._check_open()
    if not mapping.named:
        raise ModeError(
            "This array maps a file without a path (tempfile.TemporaryFile), which no worker "
            "could open. Map a named file, or pass np.asarray(arr) to dask to send the data."
        )
    if mapping.access == "private":
        raise ModeError(
            f"A private-mode array of {mapping.path} holds its edits in this process only, so "
            "workers mapping the file would not see them. commit() the edits, or open the file "
            "read-only or shared."
        )
    if writing and mapping.access != "shared":
        raise ReadOnlyError(
            f"The target array of {mapping.path} is read-only. Open it with mode='shared' "
            "(or pass its path) to store into it."
        )
    first = mapping.map_offset + mapping.offset_of(arr)
    return FileRegion(mapping.path, first, tuple(arr.shape), tuple(arr.strides), arr.dtype,
                      _stamp(mapping.path))


def _region_of_path(path: str) -> FileRegion:
    header = _header_of(path)
    strides = _contiguous_strides(header.shape, header.dtype.itemsize, header.order)
    return FileRegion(path, header.data_offset, header.shape, strides, header.dtype,
                      _stamp(path))


def file_region(arr_or_path: Any) -> FileRegion:
    """The :class:`FileRegion` of a bigarr array or of a ``.npy`` file path.

    Raises
    ------
    ModeError
        For a private-mode array (its edits are not in the file).
    FileMissingError, NotAFileError, FormatError
        For a path that is missing or not a ``.npy`` file.
    """
    if isinstance(arr_or_path, memmap):
        return _region_of_array(arr_or_path, writing=False)
    return _region_of_path(file_path(arr_or_path))


def _block_sizes(region: FileRegion, target: int) -> tuple[tuple[int, ...], ...] | None:
    """Blocks of about ``target`` bytes along the slowest axis, each starting on a file page.

    Blocks are never smaller than the distance between two page-aligned slab starts. Returns
    ``None`` when the array is not contiguous, or when no slab can start on a page (the caller
    lets dask choose).
    """
    order = region.order
    if order is None:
        return None
    if region.ndim == 0 or region.nbytes == 0:
        return tuple((n,) for n in region.shape)
    axis = 0 if order == "C" else region.ndim - 1
    slab = region.nbytes // region.shape[axis]
    if region.first % math.gcd(slab, PAGE_SIZE):
        return None  # no slab boundary ever falls on a page: nothing to align to
    # Page-aligned slab starts lie ``period`` slabs apart. A smaller budget would make the
    # planner fall back to unaligned pieces (one per slab), so never plan below that gap.
    period = PAGE_SIZE // math.gcd(slab, PAGE_SIZE)
    plan = plan_chunks(region.shape, region.dtype, order=order,
                       budget=max(target, period * slab), offset=region.first)
    along = tuple(c.rows.stop - c.rows.start for c in plan)
    return tuple(along if d == axis else (n,) for d, n in enumerate(region.shape))


def to_dask(
    arr_or_path: Any,
    chunks: Any = None,
    *,
    block_bytes: int | str = DEFAULT_READ_CHUNK,
    name: str | None = None,
) -> DaskArray:
    """A dask array over a bigarr file whose tasks map their blocks by reference.

    The graph holds a :class:`FileRegion` (path, offset, shape, strides, dtype), never array
    data: it pickles to a few kilobytes for any file size. Each task maps just its block,
    read-only, in the process that runs it, and returns a view of the mapped pages (no copy).
    The dask name comes from a cheap, deterministic token of path, inode, file size, mtime,
    ctime, offset, shape, strides, dtype and chunks; the data is never hashed.

    Parameters
    ----------
    arr_or_path
        A :class:`bigarr.memmap` (read-only or shared mode; views are fine) or the path of a
        ``.npy`` file. Every worker must see the file under the same path. Workers on this
        machine see a shared-mode array's unflushed writes (they share the page cache);
        workers on other hosts see only what has been flushed (``arr.flush()`` first).
    chunks
        Any dask chunk specification. ``None`` (default): blocks of about ``block_bytes``
        along the slowest axis (axis 0 for C order), each starting on a page boundary of the
        file.
    block_bytes
        Target block size when ``chunks`` is ``None``: bytes or a string like ``"64MiB"``
        (default 128 MiB, dask's own default chunk size).
    name
        dask name of the array; default ``"bigarr-<token>"``.

    Returns
    -------
    dask.array.Array
        Read-only blocks of the file.

    Raises
    ------
    MissingExtraError
        If dask is not installed (``pip install 'bigarr[dask]'``); also an ``ImportError``.
    ModeError
        For a private-mode array: its edits are not in the file the workers read.
    FileMissingError, NotAFileError, FormatError
        For a path that is missing or not a ``.npy`` file.
    ClosedError
        For a closed array.
    """
    da = _dask_array()
    from dask.base import tokenize

    region = file_region(arr_or_path)
    if chunks is None:
        chunks = _block_sizes(region, parse_size(block_bytes, name="block_bytes")) or "auto"
    chunks = da.core.normalize_chunks(chunks, region.shape, dtype=region.dtype)
    if name is None:
        name = f"bigarr-{tokenize(region, chunks)}"
    meta = np.empty((0,) * region.ndim, dtype=region.dtype)
    out: DaskArray = da.from_array(region, chunks=chunks, name=name, lock=False,
                                   asarray=False, fancy=False, meta=meta)
    return out


# ---- store -------------------------------------------------------------------------------------


def _write_block(region: FileRegion, block: Any, starts: tuple[int, ...]) -> int:
    """Worker side of :func:`store`: map the block's bytes shared, write, msync, close."""
    values = np.asarray(block)
    index = tuple(slice(s, s + n) for s, n in zip(starts, values.shape, strict=True))
    out = region.map(index, "shared")
    try:
        out[...] = values
        out.flush()
    finally:
        out.close(force=True)
    return int(values.nbytes)


def _finish(written: Sequence[int], tmp: str | None, final: str) -> int:
    """Last task of :func:`store`: publish a newly created file under its name, atomically."""
    if tmp is not None:
        try:
            os.link(tmp, final)  # never clobbers a file that appeared meanwhile
        except FileExistsError:
            raise FileExistsError_(
                f"{final} appeared while store() was writing; store() never replaces a file "
                "it did not create, so it was left as it is. Remove it, or pass its path "
                "once it holds an array of the right shape, and run store() again."
            ) from None
        except OSError:  # no hard links on this file system
            if os.path.lexists(final):
                raise FileExistsError_(f"{final} appeared while store() was writing.") from None
            os.rename(tmp, final)
        else:
            os.unlink(tmp)
    return int(sum(written))


def _target_region(target: Any, shape: tuple[int, ...], dtype: np.dtype[Any],
                   order: str) -> tuple[FileRegion, str | None, str]:
    """The region to write, the temporary file to publish (if store creates one), the path."""
    tmp = None
    if isinstance(target, memmap):
        region = _region_of_array(target, writing=True)
        final = region.path
    else:
        final = file_path(target)
        if not os.path.exists(final):
            # A new file is written under a hidden name and renamed by the last task, so a run
            # that fails never leaves a half-written file under the requested name.
            tmp = hidden_name(final, "tmp")  # (a kind no other writer sweeps: see fileid)
            create_held(tmp, shape, dtype, order=order, direct=True, name=final).close()
            region = _region_of_path(tmp)
        elif not os.access(final, os.W_OK):
            raise ReadOnlyError(f"{final} is not writable; store() needs to write into it.")
        else:
            region = _region_of_path(final)
    if region.shape != tuple(shape):
        raise ShapeError(
            f"Expected a target of shape {tuple(shape)} (the dask array's). "
            f"Got {region.shape} at {final}."
        )
    if not np.can_cast(dtype, region.dtype, casting="same_kind"):
        raise DtypeError(
            f"Cannot store {dtype} values into the {region.dtype} target {final} without "
            "an unsafe cast; call .astype() on the dask array first."
        )
    return region, tmp, final


def store(
    x: Any,
    target: Any,
    *,
    compute: bool = True,
    order: str = "C",
    block_bytes: int | str = DEFAULT_WRITE_CHUNK,
    **compute_kwargs: Any,
) -> Delayed | None:
    """Write a dask array into a bigarr file from many worker processes.

    The array is rechunked along its slowest axis so that every block starts on a page boundary
    of the file and spans whole slabs (each block is one contiguous byte range). Each task then
    opens the target by path in shared mode, maps only its block's bytes, writes them,
    ``msync``'s them and closes: no memmap is ever pickled, and each worker's writes are on disk
    when its task finishes.

    Unlike ``dask.array.store(x, numpy.memmap)``, which on a process-based cluster writes into
    pickled copies of the memmap and silently leaves the file untouched, this works on any
    scheduler (threads, processes, distributed) as long as every worker sees the file under the
    same path.

    Parameters
    ----------
    x
        A dask array (anything else is wrapped with ``dask.array.asarray``).
    target
        The path of a ``.npy`` file, or a shared-mode :class:`bigarr.memmap` (its file is
        written; the array sees the data at once, since mappings of one file share its pages).
        A missing path is created with ``x``'s shape and dtype under a hidden temporary name
        and renamed by the last task, so a failed run leaves no file at the path (with
        ``compute=False``, a failed run may leave the hidden ``.NAME.bigarr-tmp-<16 hex>`` file).
        An existing file is checked against ``x`` and updated in place: a failed run leaves
        it partly written.
    compute
        ``True``: run now and return ``None``. ``False``: return a ``dask.delayed`` object
        whose ``compute()`` does the writes (and returns the bytes written).
    order
        Memory order of a newly created file, ``"C"`` or ``"F"``.
    block_bytes
        Target size of one write block, bytes or a string like ``"64MiB"``.
    **compute_kwargs
        Passed to ``compute`` (e.g. ``scheduler="processes"``).

    Returns
    -------
    None or dask.delayed.Delayed
        ``None`` once the data is written, or the delayed write when ``compute=False``.

    Raises
    ------
    MissingExtraError
        If dask is not installed (``pip install 'bigarr[dask]'``); also an ``ImportError``.
    ShapeError
        If an existing target's shape differs from ``x``'s.
    DtypeError
        If ``x``'s dtype cannot be cast to the target's with ``same_kind`` casting.
    ModeError, ReadOnlyError
        For a private-mode or read-only target array, or a file that cannot be written.
    """
    da = _dask_array()
    from dask.delayed import delayed

    if not isinstance(x, da.Array):
        x = da.asarray(x)
    region, tmp, final = _target_region(target, tuple(x.shape), np.dtype(x.dtype), order)
    if x.dtype != region.dtype:
        x = x.astype(region.dtype, casting="same_kind")
    blocks = _block_sizes(region, parse_size(block_bytes, name="block_bytes"))
    if blocks is None:  # a strided view: contiguous along nothing; rows of about block_bytes
        blocks = da.core.normalize_chunks(
            {0: "auto", **{d: -1 for d in range(1, x.ndim)}}, x.shape, dtype=x.dtype,
            limit=parse_size(block_bytes, name="block_bytes"),
        )
    x = x.rechunk(blocks)
    starts = [np.cumsum((0, *c[:-1])).tolist() for c in x.chunks]
    parts = x.to_delayed(optimize_graph=True)
    writes = []
    for index in np.ndindex(*parts.shape):
        first = tuple(int(starts[d][i]) for d, i in enumerate(index))
        writes.append(delayed(_write_block, pure=True)(region, parts[index], first))
    done = delayed(_finish, pure=True)(writes, tmp, final)
    if not compute:
        return cast("Delayed", done)
    try:
        done.compute(**compute_kwargs)
    except BaseException:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    return None
