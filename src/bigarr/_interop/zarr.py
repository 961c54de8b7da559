"""zarr interop: stream a bigarr array into a zarr array and back, with bounded memory.

Both directions move the data in *batches* of whole zarr grid slabs along one axis (axis 0, or
the last axis of a Fortran-ordered source whose column slabs fit the budget; otherwise its rows
are read as scattered runs, one per column), planned by
:func:`bigarr._compute.runplan.plan_run` and run by :func:`bigarr._compute.engine.execute`, so that:

* every zarr chunk (or shard, for sharded arrays) is written whole, in one ``set`` call that
  covers it entirely: zarr never has to read a chunk back to merge a partial write
  (no read-modify-write);
* memory is planned: a batch's bytes, times three (the mapped pages plus zarr's encode or
  decode buffers, or the batch still flushing), must fit ``budget``; a grid slab that cannot
  is refused up front with :class:`~bigarr.errors.BudgetError` quoting both numbers;
* pages are released behind the stream by the engine: source pages get ``MADV_DONTNEED`` after
  their batch is encoded; the target is written with ``O_DIRECT`` by the output sink under the
  engine's flush policy (the fast path reads chunk files straight into the sink's staging;
  where ``O_DIRECT`` is refused, copied chunks are written back, then dropped). Resident
  memory stays near one batch however large the array is;
* an interrupted export is never taken for a complete array. A local directory output is
  written in a hidden sibling directory (``.<name>.bigarr-new-<random>``) under the output's
  lock and renamed into place when complete, so a kill leaves the destination as it was (the
  next writer of it removes the hidden directory). Every array is also marked incomplete in
  the metadata write that creates it and complete after its last chunk
  (:data:`bigarr._interop.zarr_target.MARKER`), and :func:`from_zarr` refuses an incomplete
  one unless forced: that guards stores written in place (not local directories) and arrays
  left by older versions (issue 11).

Only API that zarr 3.1 and later share is used: ``zarr.open_array``, ``zarr.create_array`` with
``chunks=``, ``shards=``, ``compressors=`` and ``fill_value=``, and slicing. The uncompressed
fast path of :func:`from_zarr` additionally reads ``Array.metadata`` (chunk keys and codecs); if
anything there looks unfamiliar it silently takes the ordinary zarr path instead.

zarr v3 facts this relies on: an uncompressed chunk (codecs = a lone ``bytes`` codec, no
sharding) is stored as the raw C-order bytes of the *full* chunk shape (edge chunks are padded),
with no header; a missing chunk file means "every element is the fill value".
"""

from __future__ import annotations

import contextlib
import operator
import os
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from bigarr._compute.engine import Writeback, execute
from bigarr._compute.operands import Stream, parse_operand
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import RunPlan, plan_run
from bigarr._core.array import memmap
from bigarr._core.files import file_path, new_file
from bigarr._core.files import open as open_file
from bigarr._formats.npy import check_dtype
from bigarr._interop.zarr_raw import raw_chunks
from bigarr._interop.zarr_target import (
    MARKER,
    display_name,
    hidden_sibling,
    local_path,
    premark_v2,
    zarr_call,
    zarr_target,
)
from bigarr._os.paths import check_output, os_error
from bigarr._plan.budget import DEFAULT_BUDGET as _DEFAULT
from bigarr._plan.chunks import Chunk

if TYPE_CHECKING:
    import zarr
from bigarr.errors import (
    ArgumentError,
    BigArrError,
    BudgetError,
    FileExistsError_,
    FileMissingError,
    FormatError,
    IncompleteOutputError,
    ModeError,
    NotAFileError,
    ShapeError,
    UnsupportedError,
)

__all__ = ["from_zarr", "to_zarr"]

DEFAULT_BUDGET = _DEFAULT
"""Default memory budget (bytes): the one of every chunked operation."""

_OVERHEAD = 3
"""Bytes of memory per byte of batch data. to_zarr: the mapped source pages, zarr's chunk
copies and its encoded output (measured at about 2.3x with zstd); from_zarr: the decoded batch,
its pages in the output and the previous batch still flushing."""



# ---- planning --------------------------------------------------------------------------------


def _unit(z: Any, axis: int) -> int:
    """Rows (slabs along ``axis``) of one zarr chunk or shard: batches hold whole multiples."""
    return int((z.shards or z.chunks)[axis])


def _grid(name: str, value: Any, ndim: int) -> tuple[int, ...]:
    """Normalise ``chunks=`` or ``shards=`` to one positive int per dimension.

    Raises
    ------
    ShapeError
        For anything else (zarr would fail later, some of it after creating the array).
    """
    try:
        grid = tuple(operator.index(v) for v in value)
    except TypeError:
        grid = ()
    if len(grid) != ndim or any(n < 1 for n in grid):
        raise ShapeError(
            f"Expected {name} as {ndim} positive integers, one per dimension of the array. "
            f"Got {value!r}."
        )
    return grid


# ---- to_zarr ---------------------------------------------------------------------------------


def to_zarr(
    arr: Any,
    store_or_path: Any,
    *,
    chunks: tuple[int, ...] | Literal["auto"] | None = None,
    shards: tuple[int, ...] | None = None,
    compressors: Any = "auto",
    fill_value: Any = None,
    zarr_format: Literal[2, 3] = 3,
    overwrite: bool = False,
    progress: ProgressArg = None,
    budget: int | str = DEFAULT_BUDGET,
) -> zarr.Array[Any]:
    """Stream an array into a new zarr array with bounded memory.

    The data moves in batches of whole zarr chunks (whole shards when ``shards`` is given)
    along axis 0 (the last axis for a Fortran-ordered source, unless a slab of whole columns
    does not fit the budget), so each chunk is encoded and
    written exactly once and never read back. After each batch the source's pages are released
    (``MADV_DONTNEED``), so resident memory stays near ``budget`` for any array size. A
    private-mode source is the exception: dropping its pages would throw away its scratch
    edits, so the pages it read stay mapped (clean ones remain reclaimable by the kernel).

    Parameters
    ----------
    arr
        A :class:`bigarr.memmap` (its pages are released as it streams), a path to a ``.npy``
        file (opened read-only), or any numpy array.
    store_or_path
        A zarr store (e.g. ``zarr.storage.LocalStore``/``MemoryStore``) or a directory path.
    chunks
        zarr chunk shape; ``None`` lets zarr choose (``"auto"``).
    shards
        Shard shape (zarr v3), a multiple of ``chunks`` in every dimension; ``None`` for none.
    compressors
        As ``zarr.create_array``: ``"auto"`` (zarr's default, zstd), ``None`` for raw chunks,
        or codecs such as ``zarr.codecs.BloscCodec()``.
    fill_value
        zarr fill value; chunks equal to it are not stored. ``None``: zarr's default (0).
    zarr_format
        2 or 3.
    overwrite
        Replace an existing zarr array at the destination. Nothing else is ever replaced: a
        zarr group, a directory that is not a zarr array (or holds other files) and a file are
        refused.
    progress
        ``None``: a bar on a TTY; ``True``/``False``: always/never; or callbacks receiving
        :class:`bigarr.ProgressEvent` (one event per batch).
    budget
        Memory for the stream, bytes or a string like ``"256MiB"``; a batch is planned at
        three times its data bytes (mapped pages plus zarr's chunk copies and encoded output).

    Returns
    -------
    zarr.Array
        The new array, open for reading and writing. Its attribute ``"bigarr"`` is
        ``{"complete": true}``; a run that stops early leaves ``{"complete": false}``, which
        :func:`from_zarr` refuses.

    Raises
    ------
    BudgetError
        If one chunk (or shard) slab along the stream axis does not fit ``budget``.
    FileExistsError_
        If an array already exists at the destination and ``overwrite`` is false.
    NotAFileError
        If a zarr group, another directory or a file is at the destination (also with
        ``overwrite``).
    OutputLockedError
        If another run is writing the same local destination.
    UnsupportedError
        For a dtype zarr cannot store faithfully (structured with a subarray field).
    DiskFullError, ReadOnlyError
        If the destination's file system fills up or cannot be written.
    FileMissingError, FormatError
        If ``arr`` is a path that is missing or not a ``.npy`` file.
    ClosedError
        If ``arr`` is a closed bigarr array.
    ShapeError
        If ``chunks`` or ``shards`` is not one positive int per dimension, or ``shards`` is
        not a multiple of ``chunks`` or comes with ``zarr_format=2``.
    """
    import zarr

    src = parse_operand(arr)
    try:
        kwargs: dict[str, Any] = {}
        if fill_value is not None:
            kwargs["fill_value"] = fill_value
        if chunks is not None and chunks != "auto":
            chunks = _grid("chunks", chunks, src.ndim)
        if shards is not None:
            kwargs["shards"] = grid = _grid("shards", shards, src.ndim)
            if zarr_format != 3:
                raise ShapeError(f"Shards need zarr_format=3. Got zarr_format={zarr_format}.")
            if isinstance(chunks, tuple) and any(s % c for s, c in zip(grid, chunks, strict=True)):
                raise ShapeError(
                    f"Expected shards as a multiple of chunks in every dimension. Got shards="
                    f"{grid} for chunks={chunks}."
                )
        _check_zarr_dtype(src.dtype)
        shown = display_name(store_or_path)
        if zarr_format not in (2, 3):
            raise ArgumentError(f"Expected zarr_format 2 or 3. Got {zarr_format!r}.")
        settings: dict[str, Any] = dict(
            shape=src.shape, dtype=src.dtype, chunks="auto" if chunks is None else chunks,
            compressors=compressors, zarr_format=zarr_format, **kwargs)
        # Probe zarr's answer to these settings on a throwaway store: its refusals (bad codecs,
        # fill values) come before anything exists, and its chunk choice lets us plan first.
        probe = zarr_call(zarr.create_array, zarr.storage.MemoryStore(), **settings)
        if src.ndim and src.size:
            _plan_out(src, probe, budget)  # refuse a budget before anything is created
        existing = zarr_target(store_or_path, overwrite)
        local = local_path(store_or_path)
        with hidden_sibling(local, existing) as dest:
            if dest is not None:  # a local directory: written aside, renamed into place
                where: Any = dest
                existing, overwrite = "nothing", False
            else:
                where = store_or_path
            if zarr_format == 2:
                # v2 keeps attributes in .zattrs, written by zarr concurrently with .zarray:
                # write the marker first, so no instant shows an unmarked array (see MARKER).
                premark_v2(where, existing)
                overwrite = False
            try:
                z = zarr_call(zarr.create_array, where, overwrite=overwrite,
                               attributes={MARKER: {"complete": False}}, **settings)
            except zarr.errors.ContainsArrayError as exc:
                raise FileExistsError_(f"{exc}; pass overwrite=True to replace it.") from None
            except zarr.errors.ContainsGroupError as exc:
                raise NotAFileError(f"{exc}; overwrite replaces only a zarr array.") from None
            except OSError as exc:
                raise os_error(exc, shown, writing=True) from None
            try:
                _stream_out(src, z, budget, progress)
                z.update_attributes({MARKER: {"complete": True}})  # last: the data is there
            except OSError as exc:  # ENOSPC from zarr's chunk writes, EROFS, ...
                raise os_error(exc, exc.filename or shown, writing=True) from exc
        if local is not None:
            z = zarr.open_array(store_or_path, mode="r+")
        return cast("zarr.Array[Any]", z)
    finally:
        # A stream closes what it opened with force: a failed run's traceback may still hold
        # views of it, and a MappingBusyError here would hide the run's own error.
        src.close()


def _check_zarr_dtype(dtype: np.dtype[Any]) -> None:
    """Refuse dtypes zarr cannot store faithfully, before anything is created.

    Raises
    ------
    UnsupportedError
        For structured dtypes with a subarray field (zarr 3 stores such a field as raw bytes,
        losing its type, and fails to build its default fill value).
    """
    def subarray(dt: np.dtype[Any]) -> str | None:
        for name in dt.names or ():
            field = dt.fields[name][0]  # type: ignore[index]
            if field.subdtype is not None:
                return name
            inner = subarray(field)
            if inner is not None:
                return f"{name}.{inner}"
        return None

    field = subarray(dtype)
    if field is not None:
        raise UnsupportedError(
            f"zarr cannot store the structured dtype {dtype}: its field {field!r} is a "
            "subarray, which zarr 3 keeps only as untyped raw bytes. Convert to .npy instead, "
            "or split the field into one scalar field per element first."
        )


def check_zarr_complete(z: Any, shown: str) -> None:
    """Refuse a zarr array that :func:`to_zarr` was writing when it stopped.

    Raises
    ------
    IncompleteOutputError
        If the array carries bigarr's marker and the marker does not say complete.
    """
    try:
        mark = dict(z.attrs).get(MARKER)
    except Exception:  # unreadable attributes: zarr will say so when reading
        return
    if isinstance(mark, dict) and "complete" in mark and mark.get("complete") is not True:
        raise IncompleteOutputError(
            f"{shown} is an incomplete zarr array: bigarr was writing it and stopped before "
            "the last chunk (its attribute 'bigarr' says complete: false). Write it again; "
            "pass force=True (--force) to read it anyway, with missing chunks as fill values."
        )


def _plan_out(src: Stream, z: Any, budget: int | str) -> RunPlan:
    """The plan of streaming ``src`` into an array with ``z``'s chunk grid (``z`` may be a
    stand-in with the same settings, to refuse a budget before the real array exists)."""
    own = 2 if src.lazy else 1 if src.mapping is not None else 0  # what plan_run counts
    options: dict[str, Any] = {"budget": budget, "threads": 1, "prefetch": 0, "min_chunk": 1,
                               "extra_streams": _OVERHEAD - own}
    if not (src.contiguous and src.order == "F"):
        return plan_run("to_zarr", [src], layout="rows", unit=_unit(z, 0), **options)
    # Slabs along the last axis are contiguous in a Fortran-ordered file; when one zarr chunk's
    # slab of whole columns is too large for the budget, batches of rows are read as scattered
    # runs (one per column) instead.
    try:
        return plan_run("to_zarr", [src], layout="keys", unit=_unit(z, src.ndim - 1), **options)
    except BudgetError as first:
        # Scattered runs are read with 'random' (no kernel read-around), so the engine reads
        # the next batch ahead itself.
        options["prefetch"] = 1
        try:
            return plan_run("to_zarr", [src], layout="rows", unit=_unit(z, 0), **options)
        except BudgetError:
            raise first from None


def _plan_in(src: Stream, dst: Stream | None, budget: int | str) -> RunPlan:
    """The plan of reading ``src`` (a zarr array) into ``dst``; with ``dst`` None, the output
    counts as one mapped stream (to refuse a budget before the output is created)."""
    streams = [src] if dst is None else [src, dst]
    return plan_run("from_zarr", streams, budget=budget, threads=1, prefetch=0, layout="rows",
                    primary=src, min_chunk=1, extra_streams=1 if dst is None else 0)


def _stream_out(src: Stream, z: Any, budget: int | str, progress: ProgressArg) -> None:
    if src.ndim == 0:
        z[()] = src.whole()[()]
        return
    if src.size == 0:
        return
    plan = _plan_out(src, z, budget)

    def work(chunk: Chunk, blocks: list[np.ndarray[Any, Any]]) -> None:
        try:
            z[chunk.key] = blocks[0]  # whole chunks along every axis: zarr writes, never reads
        except BaseException:
            _settle_zarr_io()
            raise

    chunks = plan.chunks
    with Progress(progress, total_bytes=chunks.nbytes, total_chunks=len(chunks),
                  desc="to_zarr") as bar:
        for _ in execute(plan, work, [src], progress=bar):
            pass


def _settle_zarr_io() -> None:
    """Wait for the chunk writes zarr still has in flight after one of them failed.

    zarr writes a slab's chunks concurrently on its I/O loop and raises the first failure (a full
    disk, say) without cancelling the others; left running, they keep writing after the caller
    has moved on (re-creating a directory it removed), and at exit they print screens of
    "Task was destroyed but it is pending!" tracebacks.
    """
    import asyncio

    from zarr.core.sync import sync

    async def drain() -> None:
        me = asyncio.current_task()
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not me),
                             return_exceptions=True)

    with contextlib.suppress(Exception):
        sync(drain())


# ---- from_zarr -------------------------------------------------------------------------------


def _open_zarr(source: Any) -> Any:
    """Open ``source`` (a zarr.Array, a store or a path) read-only, with bigarr errors."""
    import zarr

    if isinstance(source, zarr.Array):
        return source
    if isinstance(source, (str, os.PathLike)) and "://" not in os.fspath(source):
        where = file_path(source)
        try:
            os.stat(where)
        except FileNotFoundError:
            raise FileMissingError(f"No such zarr array: {where}") from None
        except OSError as exc:  # ELOOP, ENOTDIR, ENAMETOOLONG, EACCES
            raise os_error(exc, where) from None
    shown = os.fspath(source) if isinstance(source, (str, os.PathLike)) else repr(source)
    try:
        return zarr.open_array(source, mode="r")
    except (ValueError, TypeError, KeyError, OSError, zarr.errors.BaseZarrError) as exc:
        # zarr's "no array here" error is both a FileNotFoundError and a ValueError: the place
        # exists (checked above) but holds no array, which is a format problem.
        raise FormatError(
            f"Expected a zarr array (a store or directory holding zarr.json or .zarray). "
            f"Got {shown}, which zarr cannot open as an array: {exc}"
        ) from None


def from_zarr(
    source: Any,
    path: str | os.PathLike[str],
    *,
    mode: str = "r",
    progress: ProgressArg = None,
    budget: int | str = DEFAULT_BUDGET,
    overwrite: bool = False,
    force: bool = False,
) -> memmap:
    """Stream a zarr array into a new page-aligned bigarr ``.npy`` file with bounded memory.

    The file is created (preallocated) under a temporary name, filled batch by batch (whole
    chunk or shard slabs along axis 0, written with ``O_DIRECT`` where allowed), and renamed
    to ``path`` only when complete: an interrupted import never leaves a partial file at ``path``.
    Missing chunks hold the fill value; sharded arrays and every codec zarr supports are read
    through zarr. Uncompressed, unsharded zarr v3 arrays in a local directory take a fast path
    that reads the chunk files' bytes straight into the output's write buffers.

    Parameters
    ----------
    source
        A ``zarr.Array``, a zarr store, or the path of a zarr array directory.
    path
        The ``.npy`` file to create.
    mode
        Mode of the returned array: ``"r"`` (default), ``"shared"`` or ``"private"``.
    progress
        ``None``: a bar on a TTY; ``True``/``False``: always/never; or callbacks receiving
        :class:`bigarr.ProgressEvent` (one event per batch).
    budget
        Memory for one batch, bytes or a string like ``"256MiB"``.
    overwrite
        Replace an existing regular file at ``path`` (atomically, at the end); nothing else
        is ever replaced.
    force
        Read an array that :func:`to_zarr` was writing when it stopped (its missing chunks
        read as the fill value); refused otherwise.

    Returns
    -------
    bigarr.memmap
        The new file, opened in ``mode``.

    Raises
    ------
    FileMissingError
        If ``source`` is a path that does not exist.
    FormatError
        If ``source`` is not a zarr array.
    FileExistsError_
        If ``path`` exists and ``overwrite`` is false.
    NotAFileError
        If ``path`` is a directory, device, FIFO, socket or symbolic link (never replaced).
    IncompleteOutputError
        If ``source`` is an array :func:`to_zarr` did not finish, and ``force`` is false.
    DtypeError
        If the zarr dtype cannot be memory-mapped (variable-length strings, objects).
    BudgetError
        If one chunk (or shard) slab does not fit ``budget``; checked before the output is
        created.
    DiskFullError
        If the file system lacks room for the output.
    """
    if mode not in ("r", "readonly", "r+", "shared", "readwrite", "c", "private", "copyonwrite"):
        raise ModeError(f"Expected mode 'r', 'shared' or 'private'. Got {mode!r}.")
    target = file_path(path)
    existing = check_output(target, overwrite)
    z = _open_zarr(source)
    shown = display_name(source)
    if not force:
        check_zarr_complete(z, shown)
    dtype = check_dtype(z.dtype)
    if z.ndim and z.size:  # plan first: refuse a budget before preallocating the output
        _plan_in(parse_operand(z), None, budget)
    with new_file(target, tuple(z.shape), dtype, overwrite=existing == "file") as out:
        try:
            _stream_in(z, out, budget, progress)
        except OSError as exc:  # a chunk path that is a directory, EIO, ...
            raise os_error(exc, exc.filename or shown) from None
        except BigArrError:
            raise
        except (RuntimeError, ValueError, TypeError) as exc:  # zarr's codecs on a damaged chunk
            raise FormatError(
                f"Cannot read {shown}: zarr failed to decode it ({type(exc).__name__}: {exc}). "
                "A chunk is damaged, or the metadata does not describe the chunks."
            ) from exc
    return open_file(target, mode)


def _stream_in(z: Any, out: memmap, budget: int | str, progress: ProgressArg) -> None:
    if out.ndim == 0:
        out[()] = z[()]
        out.flush()
        return
    if out.size == 0:
        return
    src = parse_operand(z)
    dst = parse_operand(out, output=True, by_key=False)
    plan = _plan_in(src, dst, budget)
    fast = raw_chunks(z)
    row_bytes = out.nbytes // out.shape[0]
    # One batch may be written but not yet on disk while the next one is read.
    # (a new file nothing else maps or reads: its pwrites go to the disk with O_DIRECT)
    writeback = Writeback(plan.memory.chunk_bytes, direct=True)
    # the mapping's own descriptor: the new file may have no name yet (O_TMPFILE)
    mapping = out._bigarr
    fd = os.dup(mapping.fd) if mapping is not None else os.open(
        str(out.filename), os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))

    def work(chunk: Chunk, blocks: list[np.ndarray[Any, Any]]) -> None:
        view = blocks[-1]
        if fast is None:
            writeback.write(chunk.index, dst, view, blocks[0])  # pwrite: no output pages mapped
            return
        if fast.rows_whole and writeback.write_from(
                chunk.index, dst, view,
                lambda dest, start: fast.read_bytes(chunk.rows.start * row_bytes + start, dest)):
            return  # read into the sink's staging, written with O_DIRECT: no output page cache
        at = out.offset + chunk.rows.start * row_bytes
        fast.read_rows(chunk.rows, view, fd, at)
        writeback.mapped(chunk.index, dst, view)  # flush, then drop what reached the mapping

    chunks = plan.chunks
    try:
        with Progress(progress, total_bytes=chunks.nbytes, total_chunks=len(chunks),
                      desc="from_zarr") as bar:
            streams = [dst] if fast is not None else [src, dst]
            for _ in execute(plan, work, streams, progress=bar, writeback=writeback):
                pass
            writeback.drain()
    finally:
        writeback.close()
        os.close(fd)
