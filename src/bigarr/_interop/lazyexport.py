"""Lazy expressions (:class:`bigarr.LazyArray`) out to zarr and dask.

The compute layer may not import this one, so these register themselves as the
``LazyArray.to_zarr`` / ``LazyArray.to_dask`` implementations
(:func:`bigarr._compute.lazy.register_exporter`) when ``bigarr`` is imported.

``to_zarr`` computes the reductions the expression needs (in passes, as ``compute``), then
hands :func:`bigarr.to_zarr` the expression's rows as a lazy source: each batch of whole zarr
chunks is evaluated from the inputs' rows as zarr writes it, so the result is written once,
chunk-aligned, and never staged. A result whose rows are known only on evaluation (a filter)
or are not the inputs' (a ``diff``) is evaluated into a hidden ``.npy`` file first (next to a
local destination; in the temporary directory for other stores) with
:meth:`LazyArray.to_npy`, streamed into zarr and deleted. It is written in a hidden directory
its run holds (:func:`bigarr._os.lock.held_directory`), so what a killed run staged is removed
by the next run for the same destination, and a live run's stage never is.

``to_dask`` translates the expression node by node into dask.array: inputs that are files
(paths, bigarr arrays) become :func:`bigarr.to_dask` arrays *by reference* (the graph holds a
:class:`~bigarr._interop.dask.FileRegion`, never data, and its size depends on the number of
blocks, not on their bytes); elementwise nodes are dask's ufuncs or ``map_blocks``; reductions,
scans and filters are dask's own functions. In-memory inputs (ndarrays) are embedded as they
are, as dask's ``from_array`` does.
"""

from __future__ import annotations

import contextlib
import functools
import math
import mmap
import os
import tempfile
from typing import Any

import numpy as np

from bigarr._compute.lazy import LazyArray, register_exporter
from bigarr._compute.lazyeval import Carries, Env, tiles
from bigarr._compute.lazyflat import flat_plan, into, uses
from bigarr._compute.lazyitems import Opened, item_of
from bigarr._compute.lazynodes import (
    ORDER_STATISTICS,
    REDUCTIONS,
    Const,
    Filter,
    Index,
    Leaf,
    Node,
    Op,
    Reduce,
    Scan,
    plain,
    rowed,
)
from bigarr._compute.lazyrows import window_slice
from bigarr._compute.lazyrun import _run
from bigarr._compute.operands import Stream
from bigarr._core.array import memmap
from bigarr._core.files import _header_of
from bigarr._interop.dask import DEFAULT_READ_CHUNK, _dask_array, to_dask
from bigarr._interop.zarr import to_zarr
from bigarr._interop.zarr_target import local_path
from bigarr._os.lock import held_directory
from bigarr._os.mapping import check_mapped, mapped_file
from bigarr._os.paths import os_error
from bigarr.errors import FileChangedError, UnsupportedError

__all__ = ["lazy_to_dask", "lazy_to_zarr"]


def lazy_to_zarr(expr: LazyArray, store_or_path: Any, *, budget: int | str | None = None,
                 threads: int | None = None, progress: Any = None, overwrite: bool = False,
                 **zarr_options: Any) -> Any:
    """:meth:`LazyArray.to_zarr` (see the module docstring)."""
    from bigarr._plan.budget import DEFAULT_BUDGET, parse_budget

    nbytes = parse_budget(DEFAULT_BUDGET if budget is None else budget)
    root = expr.node
    item = item_of(root)
    unit = None
    if not isinstance(root, Reduce) and item.rows and plain(item.frame) \
            and math.prod(root.shape) > 0:
        unit = _zarr_rows(root, zarr_options)
    if unit is not None:
        # the rows of the result are the inputs' rows: computed batch by batch as zarr asks
        values, _ = _run([root], nbytes, threads, progress, dry=False,
                         skip=frozenset({id(root)}), numexpr=False)
        opened = Opened()
        try:
            return to_zarr(_computed(root, item, opened, values, unit), store_or_path,
                           overwrite=overwrite, progress=progress, budget=nbytes,
                           **zarr_options)
        finally:
            opened.close()
    local = local_path(store_or_path)
    target = os.path.abspath(local) if local is not None else \
        os.path.join(tempfile.gettempdir(), "lazy")
    try:  # (to_zarr creates the missing folders of a new array, as zarr does: so here too)
        os.makedirs(os.path.dirname(target.rstrip(os.sep)) or ".", exist_ok=True)
    except OSError as exc:
        raise os_error(exc, target, writing=True) from None
    # staged in a directory of its own, held while it is used: a killed run's stage (the file,
    # its lock, partial file and journal) is removed by the next one, a live run's never
    with held_directory(target.rstrip(os.sep), "stage") as stage:
        tmp = os.path.join(stage, "staged.npy")
        staged = expr.to_npy(tmp, budget=nbytes, threads=threads, progress=progress)
        staged.close()
        return to_zarr(tmp, store_or_path, overwrite=overwrite, progress=progress,
                       budget=nbytes, **zarr_options)


def _zarr_rows(root: Node, options: dict[str, Any]) -> int | None:
    """Rows of one zarr chunk (or shard) of the result with these ``options`` (zarr's own
    choice for ``chunks="auto"``, asked on a throwaway in-memory array, as
    :func:`bigarr.to_zarr` asks it), or None when zarr refuses them (the staged path then
    reports the refusal as :func:`bigarr.to_zarr` does)."""
    import zarr

    known = ("chunks", "shards", "compressors", "fill_value", "zarr_format")
    settings = {k: v for k, v in options.items() if k in known and v is not None}
    settings.setdefault("chunks", "auto")
    if set(options) - set(known):
        return None
    try:
        probe = zarr.create_array(zarr.storage.MemoryStore(), shape=root.shape,
                                  dtype=root.dtype, **settings)
        return int((probe.shards or probe.chunks)[0])
    except Exception:  # any refusal: to_zarr's own checks and messages on the staged path
        return None


def _rows(stream: Stream, rows: slice) -> np.ndarray[Any, Any]:
    if stream.array is not None:
        return stream.array[rows]
    assert stream.read is not None
    return stream.read((rows,))


def _computed(root: Node, item: Any, opened: Opened, values: dict[int, Any],
              unit: int) -> Stream:
    """The rows of ``root`` as a lazy :class:`Stream` (as a zarr or dask source is): each batch
    :func:`bigarr.to_zarr` asks for is evaluated from the inputs' rows, tile by tile (on wide
    views, in place: :mod:`bigarr._compute.lazyflat`), and the inputs' pages are released
    behind it (the engine sees only this stream, so it cannot). ``unit``: rows of a zarr
    chunk, the stream's grid."""
    ids = list(item.rows)
    streams = [opened.stream(item.rows[i]) for i in ids]
    whole = {i: opened.array(leaf) for i, leaf in item.whole.items()}
    flat = flat_plan(root)
    count = uses(root)
    carries = Carries()
    row_shape = root.shape[1:]

    def read(key: tuple[slice, ...]) -> np.ndarray[Any, Any]:
        rows = key[0] if key else slice(0, root.shape[0])
        n = rows.stop - rows.start
        check_mapped(*(s.mapping for s in streams))  # a file cut under us: an error, not SIGBUS
        blocks = [_rows(s, rows) for s in streams]
        out = np.empty((n, *row_shape), dtype=root.dtype)
        try:
            for a, b in tiles(n, blocks):
                env = Env(dict(zip(ids, [x[a:b] for x in blocks], strict=True)), whole,
                          values, slice(rows.start + a, rows.start + b), carries)
                if flat is None or flat.run(env, b - a, out[a:b]) is None:
                    into(root, env, out[a:b], count)
        except BaseException:
            carries.fail()
            raise
        for s, block in zip(streams, blocks, strict=True):
            s.release(block)
        return out[(slice(None), *key[1:])]

    n = root.shape[0]
    grid = (*range(0, n, max(1, unit)), n)  # batches of whole zarr chunks
    return Stream(None, None, "lazy", read=read, lazy_shape=root.shape,
                  lazy_dtype=root.dtype, grid=grid, name="lazy expression")


def _leaf(leaf: Leaf, da: Any, block_bytes: int | str) -> Any:
    src = leaf.source
    if isinstance(src, (str, os.PathLike, memmap)):
        return to_dask(src, block_bytes=block_bytes)
    if hasattr(src, "dask"):  # already a dask array
        return src
    name = getattr(src, "filename", None)  # (np.load gives the path as it was given)
    if isinstance(src, np.memmap) and isinstance(name, (str, os.PathLike)) \
            and os.fspath(name).endswith(".npy") and isinstance(src.base, mmap.mmap):
        with contextlib.suppress(Exception):  # a whole .npy mapping: by reference too
            head = _header_of(os.fspath(name))  # (a view, or another layout: by value)
            order = src.flags.f_contiguous if head.fortran_order else src.flags.c_contiguous
            st = os.stat(name)  # (a file replaced at the name since: by value)
            if (order and src.offset == head.data_offset and head.shape == src.shape
                    and head.dtype == src.dtype and src.size
                    and mapped_file(src.ctypes.data) in (None, (st.st_dev, st.st_ino))):
                return to_dask(name, block_bytes=block_bytes)
    return da.from_array(np.asarray(src) if not hasattr(src, "chunks") else src)


def _translate(node: Node, da: Any, block_bytes: int | str, memo: dict[int, Any]) -> Any:
    if id(node) in memo:
        return memo[id(node)]
    out: Any
    if isinstance(node, Leaf):
        out = _leaf(node, da, block_bytes)
        if node.window is not None:  # a row slice pushed down to the input
            out = out[window_slice(node.window)]
        if tuple(out.shape) != node.shape or out.dtype != node.dtype:
            raise FileChangedError(  # (a file replaced at its path since lazy() read it)
                f"{node.name} changed since the expression was built: it holds "
                f"{tuple(out.shape)} {out.dtype}, the expression was built for {node.shape} "
                f"{node.dtype}. Build the expression again.")
    elif isinstance(node, Const):
        out = node.value
    elif isinstance(node, Index):
        rows = slice(None) if node.rows is None else node.rows
        out = _translate(node.child, da, block_bytes, memo)[(rows, *node.key)]
    elif isinstance(node, Filter):
        child = _translate(node.child, da, block_bytes, memo)
        mask = _translate(node.mask, da, block_bytes, memo)
        out = child[mask]
    elif isinstance(node, Scan):
        child = _translate(node.child, da, block_bytes, memo)
        if node.kind == "diff":
            out = da.diff(child, n=node.n, axis=0)
        else:
            out = getattr(da, node.kind)(child, axis=0, dtype=node.out_dtype)
    elif isinstance(node, Reduce):
        out = _reduce(node, _translate(node.child, da, block_bytes, memo), da)
    else:
        assert isinstance(node, Op)
        args = [_translate(a, da, block_bytes, memo) for a in node.args]
        kwargs = dict(node.kwargs)
        if isinstance(node.func, np.ufunc):
            out = node.func(*args, **kwargs)
        elif node.rowwise:  # whole rows per block: columns in one block
            first = next(a for a, n in zip(args, node.args, strict=True) if rowed(node, n))
            whole = [a.rechunk({i: -1 for i in range(1, a.ndim)}) if hasattr(a, "rechunk")
                     and a.ndim > 1 else a for a in args]
            row_chunks = first.rechunk({i: -1 for i in range(1, first.ndim)}).chunks[0]
            # the node's keywords bound first: a row-local reduction's own dtype= and axis=
            # are not map_blocks'
            out = da.map_blocks(functools.partial(node.func, **kwargs), *whole,
                                dtype=node.dtype,
                                chunks=(row_chunks, *((n,) for n in node.shape[1:])),
                                drop_axis=[] if len(node.shape) == first.ndim else
                                list(range(len(node.shape), first.ndim)))
        else:
            out = da.map_blocks(node.func, *args, dtype=node.dtype, **kwargs)
    memo[id(node)] = out
    return out


def _reduce(node: Reduce, child: Any, da: Any) -> Any:
    if node.kind in ORDER_STATISTICS:
        raise UnsupportedError(f"to_dask of {node.kind}: dask has no exact order statistics. "
                               "Compute it with bigarr first (it is small), then use its value.")
    fn = getattr(da, node.kind)
    takes_dtype, takes_ddof = REDUCTIONS[node.kind]
    kwargs: dict[str, Any] = {"keepdims": node.keepdims}
    if node.kind in ("argmin", "argmax"):
        kwargs["axis"] = node.axis
    else:
        kwargs["axis"] = node.axes
    if takes_dtype and node.out_dtype is not None:
        kwargs["dtype"] = node.out_dtype
    if takes_ddof:
        kwargs["ddof"] = node.ddof
    if node.kind == "count_nonzero":  # dask's has no keepdims (not even keepdims=False)
        del kwargs["keepdims"]
        return fn(child, **kwargs).reshape(node.shape).astype(node.dtype)
    return fn(child, **kwargs).astype(node.dtype)


def lazy_to_dask(expr: LazyArray, *, block_bytes: int | str | None = None) -> Any:
    """:meth:`LazyArray.to_dask` (see the module docstring)."""
    da = _dask_array()
    return _translate(expr.node, da, DEFAULT_READ_CHUNK if block_bytes is None else block_bytes,
                      {})


register_exporter("zarr", lazy_to_zarr)
register_exporter("dask", lazy_to_dask)
