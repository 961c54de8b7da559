"""Operands: every kind of input or output turned, at the boundary, into the engine's stream.

This is the one place where the engine learns what an operand is. :func:`parse_operand` takes

``.npy`` paths
    opened read-only (inputs) or shared (outputs), and closed when the run ends;
bigarr arrays
    used through their own mapping (views too);
``numpy.memmap`` and ``np.load(mmap_mode=...)`` arrays
    re-mapped *by reference* from their file with bigarr (views too), so the engine can hint and
    release their pages: reading them as plain ndarrays faulted in every page for good and the
    resident memory grew to the size of the file. Copy-on-write (``mode="c"``) memmaps are the
    exception: their edits live only in numpy's mapping, so they are used as they are;
zarr arrays
    read chunk row by chunk row (``z[rows]``), planned on the zarr chunk (or shard) grid;
dask arrays
    computed block row by block row (``x[rows].compute()``), planned on the dask block grid;
anything else
    in-memory ndarrays used as they are (``np.asarray`` for other array-likes).

A :class:`Stream` then gives the engine each chunk's block and the page spans it covers:
non-contiguous views (column slices ``x[:, :4]``, strided rows ``x[::3]``, rows of a Fortran
file) are planned and released by the pages of the parent file they touch
(:meth:`Stream.page_spans`, :meth:`Stream.resident_bytes`), not by their own bytes.

zarr and dask are detected without importing them (a module already imported by the caller).
"""

from __future__ import annotations

import math
import mmap
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bigarr._core.array import memmap
from bigarr._os.geometry import PAGE_SIZE, ByteSpan
from bigarr._os.hints import parse_hint
from bigarr._os.mapping import Mapping, mapped_file
from bigarr._os.paths import special_entry
from bigarr._plan.chunks import Chunk
from bigarr._plan.regions import extent
from bigarr.errors import NotAFileError

__all__ = ["FAULT_AROUND", "Stream", "parse_operand"]


def _spans_of(arr: np.ndarray[Any, Any], base: int) -> list[ByteSpan]:
    """The byte spans (relative to the mapping, starting at ``base`` for ``arr``'s first
    element) that ``arr``'s elements occupy, merged where pages touch.

    The array is cut along its largest-stride axis: when one slab's bytes plus a page reach the
    next slab (rows of a column slice, every other column), the bounding span is exact up to a
    page per slab and is returned whole; otherwise (strided rows far apart, rows of a Fortran
    file) each slab is a span of its own, recursively.
    """
    if arr.size == 0:
        return []
    lows = sum(min(0, (n - 1) * s) for n, s in zip(arr.shape, arr.strides, strict=True))
    highs = sum(max(0, (n - 1) * s) for n, s in zip(arr.shape, arr.strides, strict=True))
    whole = ByteSpan(base + lows, base + highs + arr.itemsize)
    live = [(abs(s), i) for i, (n, s) in enumerate(zip(arr.shape, arr.strides, strict=True))
            if n > 1]
    if not live or arr.flags.c_contiguous or arr.flags.f_contiguous:
        return [whole]
    stride, axis = max(live)
    slab = arr[(slice(None),) * axis + (0,)] if arr.ndim > 1 else arr[:1]
    slab_span = (0 if slab.ndim == 0 else
                 sum(abs((n - 1) * s) for n, s in zip(slab.shape, slab.strides, strict=True)))
    slab_bytes = slab_span + arr.itemsize
    if slab_bytes + PAGE_SIZE >= stride:
        return [whole]
    step = arr.strides[axis]
    out: list[ByteSpan] = []
    for j in range(arr.shape[axis]):
        sub = arr[(slice(None),) * axis + (j,)] if arr.ndim > 1 else arr[j:j + 1]
        out.extend(_spans_of(sub, base + j * step))
    return out


@dataclass(slots=True)
class Stream:
    """One operand the engine moves through, chunk by chunk."""

    array: np.ndarray[Any, Any] | None
    """A plain ndarray view of the data (no memmap subclass overhead per block); ``None`` for
    a lazy source (zarr, dask), whose blocks are read by :attr:`read`."""
    mapping: Mapping | None
    """The bigarr mapping the data lives in, or ``None`` (in memory, lazy)."""
    kind: str
    """What the operand was: ``"path"``, ``"bigarr"``, ``"numpy.memmap"``, ``"zarr"``,
    ``"dask"`` or ``"ndarray"``."""
    output: bool = False
    """True for arrays the run writes."""
    by_key: bool = True
    """Blocks are ``array[chunk.key]`` (the planned array) or ``array[chunk.rows]`` (another
    array sharing the leading axis)."""
    owned: list[memmap] = field(default_factory=list)
    """Arrays the engine opened itself (a path, a re-mapped numpy.memmap), closed at the end."""
    read: Callable[[tuple[slice, ...]], np.ndarray[Any, Any]] | None = None
    """For lazy sources: the block of a key, read or computed."""
    lazy_shape: tuple[int, ...] = ()
    """For lazy sources: the shape."""
    lazy_dtype: np.dtype[Any] | None = None
    """For lazy sources: the dtype."""
    grid: tuple[int, ...] | None = None
    """For lazy sources: the row boundaries of their chunks (blocks) along axis 0, ``0 ..
    shape[0]``; chunks of a run start and stop only on them."""
    name: str = ""
    """A short description for plans and messages."""

    # ---- geometry ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the operand."""
        return tuple(self.array.shape) if self.array is not None else self.lazy_shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """dtype of the operand."""
        if self.array is not None:
            dt: np.dtype[Any] = self.array.dtype
            return dt
        assert self.lazy_dtype is not None
        return self.lazy_dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of data."""
        return self.size * self.dtype.itemsize

    @property
    def row_bytes(self) -> int:
        """Bytes of one row (along axis 0); the itemsize for 1-d, the size for 0-d."""
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    @property
    def lazy(self) -> bool:
        """True for zarr and dask operands (blocks are read, not viewed)."""
        return self.array is None

    @property
    def contiguous(self) -> bool:
        """True when the data is one contiguous run of bytes (C or Fortran order)."""
        a = self.array
        return a is not None and (a.flags.c_contiguous or a.flags.f_contiguous)

    @property
    def order(self) -> str:
        """``"F"`` for Fortran-ordered data that is not also C-ordered, else ``"C"``."""
        a = self.array
        if a is not None and a.flags.f_contiguous and not a.flags.c_contiguous:
            return "F"
        return "C"

    def plan_offset(self) -> int:
        """File offset of the first byte for page alignment (0 when not a mapped array)."""
        if self.mapping is None or self.array is None or self.array.size == 0:
            return 0
        return self.mapping.map_offset + self.mapping.offset_of(self.array)

    # ---- blocks --------------------------------------------------------------------------
    def key_of(self, chunk: Chunk) -> tuple[slice, ...]:
        """This stream's index of ``chunk``."""
        return chunk.key if self.by_key else (chunk.rows,)

    def block(self, chunk: Chunk) -> np.ndarray[Any, Any]:
        """This stream's block of ``chunk`` (read or computed for a lazy source)."""
        key = self.key_of(chunk)
        if self.array is not None:
            full: tuple[Any, ...] = (*key, Ellipsis)
            view: np.ndarray[Any, Any] = self.array[full]  # a view, also of a 0-d array
            return view
        assert self.read is not None
        return self.read(key)

    def whole(self) -> np.ndarray[Any, Any]:
        """All of the stream's data as one array: the array itself when mapped or in memory,
        read in full for zarr and dask (only for 0-d and empty operands, where numpy answers)."""
        if self.array is not None:
            return self.array
        assert self.read is not None
        return self.read(tuple(slice(0, n) for n in self.shape))

    def head(self, rows: int) -> np.ndarray[Any, Any]:
        """The first ``rows`` rows (all of a 0-d operand), read for a lazy source."""
        if self.ndim == 0:
            return self.array if self.array is not None else np.asarray(self.block(_WHOLE))
        key = (slice(0, min(rows, self.shape[0])),)
        if self.array is not None:
            return self.array[key]
        assert self.read is not None
        return self.read(key)

    def page_spans(self, block: np.ndarray[Any, Any]) -> list[ByteSpan]:
        """The mapping bytes ``block`` touches, as few spans as keep them within a page per
        slab (empty when the stream is not mapped)."""
        if self.mapping is None or block.size == 0 or self.lazy:
            return []
        return _spans_of(block, self.mapping.offset_of(block))

    def resident_bytes(self, block: np.ndarray[Any, Any]) -> int:
        """Bytes of pages ``block`` makes resident: its own bytes for in-memory and lazy data
        (the block itself), the pages it spans of a mapped file."""
        if self.mapping is None or self.lazy:
            return int(block.nbytes)
        return sum(s.outward(PAGE_SIZE).nbytes for s in self.page_spans(block))

    def span_bytes(self) -> int:
        """Bytes of mapping the whole operand spans (its own bytes when not mapped)."""
        if self.array is None or self.mapping is None or self.array.size == 0:
            return self.nbytes
        return extent(self.array, self.mapping).nbytes

    def span(self, block: np.ndarray[Any, Any]) -> ByteSpan | None:
        """The bounding mapping bytes of ``block``, or ``None`` when not mapped."""
        if self.mapping is None or block.size == 0 or self.lazy:
            return None
        return extent(block, self.mapping)

    def all_cached(self) -> bool:
        """True when the operand is mapped and every page of the file it spans is in the page
        cache (``cachestat``: one call, about 0.3 ms per warm 2 GiB); ``False`` when some
        are not, or where that cannot be told cheaply."""
        if self.mapping is None or self.array is None or self.mapping.closed:
            return False
        span = self.span(self.array)
        return span is not None and self.mapping.all_cached(span)

    def file_offset(self, block: np.ndarray[Any, Any]) -> int | None:
        """File offset of a contiguous block's first byte, or ``None``."""
        if not (block.flags.c_contiguous or block.flags.f_contiguous):
            return None
        span = self.span(block)
        if span is None or self.mapping is None:
            return None
        return self.mapping.map_offset + span.start

    # ---- page policies (the engine's release-behind and read pattern live here) ---------
    def start_release(self, block: np.ndarray[Any, Any]) -> None:
        """Start writing back the pages ``block`` touched (shared mappings), without waiting;
        :meth:`release` later waits for them and drops the pages."""
        mapping = self.mapping
        if mapping is None or mapping.access != "shared" or self.output:
            return
        for span in self.page_spans(block):
            mapping.start_write_back(span)

    def release(self, block: np.ndarray[Any, Any]) -> None:
        """Release-behind: drop the pages ``block`` touched from this process's memory.

        Written back first on a shared mapping (:meth:`Mapping.write_back`: the pages are
        clean, so the drop keeps dirty memory bounded), then ``MADV_DONTNEED`` over each span
        widened to whole page tables (:meth:`Mapping.table_span`, see :data:`FAULT_AROUND`);
        never on a private mapping (that would
        throw away copy-on-write edits), never on an output.
        """
        mapping = self.mapping
        if mapping is None or mapping.access == "private" or self.output:
            return
        for span in self.page_spans(block):
            mapping.write_back(span)  # a no-op unless shared; close() makes it durable
            mapping.advise(_DONTNEED, mapping.table_span(span))

    def scattered(self, block: np.ndarray[Any, Any]) -> bool:
        """True when ``block`` is separate runs of a mapped file, pages apart (rows of a
        Fortran file, strided rows far apart); a column slice of a row-major file touches
        every page of its rows and counts as one run."""
        if (self.mapping is None or self.output or self.array is None or block.size == 0
                or block.flags.c_contiguous or block.flags.f_contiguous):
            return False
        return len(self.page_spans(block)) > 1

    def read_pattern(self, scattered: bool) -> None:
        """Advise the whole operand ``random`` (``scattered``) or back to ``normal``.

        On a page fault the kernel reads around the faulting page (``read_ahead_kb``, 8 MiB on
        the test machine) and, on recent kernels, maps the large folios that read-around made:
        the rows of a Fortran-ordered file (32 column runs per chunk) mapped about 2 MiB per
        run, 58 MiB for a 1 MiB probe. The engine prefetches exactly the runs it needs, so for
        scattered blocks read-around only overshoots; ``random`` turns it off.
        """
        if self.mapping is None or self.array is None or self.mapping.closed:
            return
        self.mapping.advise(_RANDOM if scattered else _NORMAL, extent(self.array, self.mapping))

    def probe_copy(self, rows: int) -> np.ndarray[Any, Any]:
        """An in-memory copy of the first ``rows`` rows, read without leaving pages mapped."""
        head = self.head(rows)
        if self.array is None or self.mapping is None:
            return np.ascontiguousarray(head)
        scattered = self.scattered(head)
        if scattered:
            self.read_pattern(True)
        try:
            copy = np.array(head, order="K")
        finally:
            if scattered:
                self.read_pattern(False)
        self.release(head)
        return copy

    def close(self) -> None:
        """Close what the engine opened for this operand."""
        while self.owned:
            self.owned.pop().close(force=True)


_WHOLE = Chunk(0, (), slice(0, 1), ByteSpan(0, 0))
_DONTNEED = parse_hint("dontneed")
_RANDOM = parse_hint("random")
_NORMAL = parse_hint("normal")

#: Bytes around a faulting page that Linux may map along with it: "fault-around" maps up to
#: 64 KiB of neighbouring cached pages, and on kernels with large page-cache folios (ext4 and
#: xfs since 6.x) a fault maps the whole folio readahead made, up to 2 MiB (a PMD). A chunk's
#: reads therefore map up to this much of its neighbours' pages, but never across a page
#: table's 2 MiB of address space, so release-behind drops every span widened to whole
#: page-table units (:meth:`bigarr._os.mapping.Mapping.table_span`, at most this much on each
#: side); a drop of part of a unit would split a huge mapping of the file's folio. With 64 KiB
#: either side, rows of a Fortran-ordered file (32 column runs per chunk) left 40% of each
#: chunk mapped (123 MiB at a 16 MiB budget), and a 1-d sort at a 4 MiB budget (340 KiB
#: chunks) kept up to 9 MiB of its source mapped (issue 13; 4 MiB with 2 MiB). Dropping a
#: neighbour's page only costs it a re-fault from the cache.
FAULT_AROUND = 2 << 20


def _module_class(obj: Any, module: str, name: str) -> bool:
    mod = sys.modules.get(module)
    cls = getattr(mod, name, None) if mod is not None else None
    return isinstance(cls, type) and isinstance(obj, cls)


def _remap_numpy_memmap(obj: np.memmap[Any, Any]) -> Stream | None:
    """Re-map a numpy.memmap (or a view of one) from its file by reference, read-only.

    Returns ``None`` when that is not possible or not right: copy-on-write memmaps (their edits
    are only in numpy's mapping), memmaps without a file name or mapping, zero-size arrays.
    """
    mm = getattr(obj, "_mmap", None)
    filename = getattr(obj, "filename", None)
    if (not isinstance(mm, mmap.mmap) or not filename or obj.size == 0
            or getattr(obj, "mode", "c") == "c"):
        return None
    try:
        mm_addr = np.frombuffer(mm, dtype=np.uint8).__array_interface__["data"][0]
    except (ValueError, TypeError, BufferError):  # a closed mmap
        return None
    offset = int(obj.offset)
    mm_start = offset - offset % mmap.ALLOCATIONGRANULARITY  # numpy maps from this file offset
    first = int(obj.__array_interface__["data"][0]) - int(mm_addr)
    lows = sum(min(0, (n - 1) * s) for n, s in zip(obj.shape, obj.strides, strict=True))
    highs = sum(max(0, (n - 1) * s) for n, s in zip(obj.shape, obj.strides, strict=True))
    low, high = first + lows, first + highs + obj.itemsize
    if low < 0 or high > len(mm):
        return None
    from bigarr._core.files import open_raw

    # the file numpy mapped, not another that took its name since (a file replaced by a
    # rename: numpy's mapping still shows the old one); where that cannot be checked, by name
    mapped = mapped_file(mm_addr)
    if mapped is not None:
        try:
            st = os.stat(filename)
        except OSError:
            return None
        if (st.st_dev, st.st_ino) != mapped:
            return None
    raw = open_raw(filename, np.uint8, (high - low,), offset=mm_start + low)
    assert raw._bigarr is not None
    st = os.fstat(raw._bigarr.fd)
    if mapped is not None and (st.st_dev, st.st_ino) != mapped:  # replaced meanwhile
        raw.close()
        return None
    plain = raw.view(np.ndarray)
    view: np.ndarray[Any, Any] = np.ndarray(obj.shape, obj.dtype, buffer=plain,
                                            offset=first - low, strides=obj.strides)
    assert raw._bigarr is not None
    return Stream(view, raw._bigarr, "numpy.memmap", owned=[raw],
                  name=f"numpy.memmap {os.path.basename(str(filename))}")


def _zarr_stream(z: Any) -> Stream:
    store: Any = getattr(z, "store", None)
    if _module_class(store, "zarr.storage", "LocalStore"):
        # zarr reads a chunk key with read_bytes(): a FIFO there would block for ever, a link
        # to /dev/zero fill the memory; refused before any chunk is read
        where = os.path.join(str(store.root), *[p for p in [getattr(z, "path", "")] if p])
        found = special_entry(where) if os.path.isdir(where) else None
        if found is not None:
            raise NotAFileError(
                f"{found[0]} in the zarr array {where} is {found[1]}, not a chunk file: "
                "reading it would never end. Remove it (zarr reads a missing chunk as fill "
                "values).")
    shape = tuple(int(n) for n in z.shape)
    step = int((getattr(z, "shards", None) or z.chunks)[0]) if shape else 1
    grid = (*tuple(range(0, shape[0], max(1, step))), shape[0]) if shape else None

    def read(key: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        return np.asarray(z[key] if key else z[()])

    return Stream(None, None, "zarr", read=read, lazy_shape=shape,
                  lazy_dtype=np.dtype(z.dtype), grid=grid, name=f"zarr {shape}")


def _dask_stream(x: Any) -> Stream:
    shape = tuple(int(n) for n in x.shape)
    grid = None
    if shape:
        grid = tuple(int(v) for v in np.cumsum((0, *x.chunks[0])))

    def read(key: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        part = x[key] if key else x
        return np.asarray(part.compute(scheduler="synchronous"))

    return Stream(None, None, "dask", read=read, lazy_shape=shape,
                  lazy_dtype=np.dtype(x.dtype), grid=grid, name=f"dask {shape}")


def parse_operand(obj: Any, *, output: bool = False, by_key: bool = True) -> Stream:
    """Turn an input or output into the engine's :class:`Stream` (see the module docstring).

    Parameters
    ----------
    obj
        A ``.npy`` path, a bigarr array, a numpy.memmap (or ``np.load(mmap_mode=...)`` array),
        a view of any of these, a zarr or dask array, or any array-like; or a :class:`Stream`
        already parsed, returned as it is (closed by whoever closes it).
    output
        The run writes this operand: paths are opened shared, and nothing is re-mapped (the
        caller's own object must see the writes).
    by_key
        Blocks are ``array[chunk.key]`` (True) or ``array[chunk.rows]`` (False).

    Raises
    ------
    FileMissingError, FormatError, AccessDeniedError
        For a path that cannot be opened as a ``.npy`` file.
    ClosedError
        For a closed bigarr array.
    """
    if isinstance(obj, Stream):  # already parsed (lazy expressions' windows of rows)
        obj.by_key = by_key
        return obj
    if isinstance(obj, (str, os.PathLike)):
        from bigarr._core.files import open as open_npy

        owned = open_npy(obj, "shared" if output else "readonly")
        stream = parse_operand(owned, output=output, by_key=by_key)
        stream.owned.append(owned)
        stream.kind = "path"
        stream.name = f"path {os.path.basename(os.fspath(obj))}"
        return stream
    if isinstance(obj, memmap) and obj._bigarr is not None:
        obj._check_open()
        return Stream(obj.view(np.ndarray), obj._bigarr, "bigarr", output, by_key,
                      name=f"bigarr {os.path.basename(str(obj.filename or ''))}")
    if isinstance(obj, np.memmap) and not isinstance(obj, memmap) and not output:
        remapped = _remap_numpy_memmap(obj)
        if remapped is not None:
            remapped.by_key = by_key
            return remapped
    if not isinstance(obj, np.ndarray):
        if _module_class(obj, "zarr", "Array"):
            stream = _zarr_stream(obj)
            stream.output, stream.by_key = output, by_key
            return stream
        if _module_class(obj, "dask.array", "Array"):
            stream = _dask_stream(obj)
            stream.output, stream.by_key = output, by_key
            return stream
    arr = obj.view(np.ndarray) if isinstance(obj, np.ndarray) else np.asarray(obj)
    return Stream(arr, None, "ndarray", output, by_key, name="ndarray")
