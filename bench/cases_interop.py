"""Interop: dask on a process cluster, and streaming to and from zarr.

Groups:

``dask``
    Sum the float32 ``.npy`` dataset on a ``distributed.LocalCluster`` with two worker processes
    (one thread each), started before the clock. Timed end to end: building the dask array,
    shipping the graph, computing. ``graph_bytes`` is the pickled size of the task graph.
    The common recipe ``da.from_array(numpy.memmap)`` copies the memmap into the graph (dask
    >= 2024.12) and ships every byte through the scheduler; ``bigarr.to_dask`` ships a
    reference (path, offset, shape, dtype) and each worker maps its own blocks.
``zarr_out``
    Write the dataset into a new zarr v3 array (4 MiB chunks, zarr's default zstd): plain
    ``z[:] = numpy.memmap`` against ``bigarr.to_zarr`` (whole-chunk batches, source pages
    dropped behind).
``zarr_in``, ``zarr_in_raw``
    Read a zarr array (zstd, or uncompressed for ``_raw``) into a new ``.npy`` file: plain
    ``open_memmap(...)[:] = z[:]`` then ``flush()``, against ``bigarr.from_zarr`` (batches
    flushed and dropped behind; raw chunks copied file to file with ``copy_file_range``).

All groups run warm only by default: the point is CPU, graph and memory behaviour, and a 2 GiB
dataset fits the page cache. Peak RSS (``VmHWM``) is the case's own process; for ``dask`` the
workers' peaks are in ``worker_peak_kib``.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from harness import Context, case, register_dataset

_ZARR_CHUNK = 1 << 20  # elements per zarr chunk: 4 MiB of float32
_DASK_CHUNK = 32 << 20  # elements per dask block: 128 MiB of float32 (dask's default size)
_PERIOD = 251


def _pattern(start: int, stop: int) -> np.ndarray[Any, Any]:
    return (np.arange(start, stop, dtype=np.int64) % _PERIOD).astype(np.float32)


def _build_zarr(path: Path, n: int, compressors: Any) -> None:
    import zarr

    z = zarr.create_array(path, shape=(n,), dtype="f4", chunks=(_ZARR_CHUNK,),
                          compressors=compressors, fill_value=-1.0)
    step = 16 * _ZARR_CHUNK
    for start in range(0, n, step):
        z[start : min(n, start + step)] = _pattern(start, min(n, start + step))


def _check_zarr(path: Path, n: int, raw: bool) -> bool:
    try:
        import zarr

        z = zarr.open_array(path, mode="r")
    except Exception:
        return False
    return bool(z.shape == (n,) and z.chunks == (_ZARR_CHUNK,)
                and bool(z.compressors) != raw and z.nchunks_initialized == z.nchunks)


register_dataset("zarr", "zarr", lambda p, n: _build_zarr(p, n, "auto"),
                 lambda p, n: _check_zarr(p, n, raw=False))
register_dataset("zarr_raw", "rawzarr", lambda p, n: _build_zarr(p, n, None),
                 lambda p, n: _check_zarr(p, n, raw=True))


# ---- dask ------------------------------------------------------------------------------------


def _cluster() -> Any:
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                               dashboard_address=None)
    return cluster, Client(cluster)


def _graph_bytes(x: Any) -> int:
    # Item by item, so measuring a graph that embeds the data never holds two copies of it.
    return sum(len(pickle.dumps(item, protocol=5)) for item in dict(x.__dask_graph__()).items())


def _worker_peak_kib(client: Any) -> int:
    def peak() -> int:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)

    return max(client.run(peak).values())


def _dask_sum(ctx: Context, make: Any) -> dict[str, Any]:
    cluster, client = _cluster()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # distributed warns about large graphs
            with ctx.timer():
                x = make(ctx.path("npy"))
                total = float(x.sum(dtype="f8").compute())
        graph = _graph_bytes(x)
        return {"checksum": total, "graph_bytes": graph, "blocks": x.npartitions,
                "worker_peak_kib": _worker_peak_kib(client)}
    finally:
        client.close()
        cluster.close()


@case("dask.memmap_from_array_sum", group="dask", peer="da.from_array(numpy.memmap)",
      data=("npy",), caches=("warm",))
def memmap_from_array_sum(ctx: Context) -> dict[str, Any]:
    """``da.from_array(np.load(mmap_mode="r"), 128 MiB blocks).sum()`` on a 2-process cluster."""
    import dask.array as da

    return _dask_sum(ctx, lambda p: da.from_array(np.load(p, mmap_mode="r"),
                                                  chunks=_DASK_CHUNK))


@case("dask.bigarr_to_dask_sum", group="dask", peer="bigarr.to_dask",
      baseline="dask.memmap_from_array_sum", data=("npy",), caches=("warm",))
def bigarr_to_dask_sum(ctx: Context) -> dict[str, Any]:
    """``bigarr.to_dask(path).sum()`` (128 MiB page-aligned blocks by reference), same cluster."""
    import bigarr

    return _dask_sum(ctx, lambda p: bigarr.to_dask(p))


# ---- zarr out --------------------------------------------------------------------------------


def _zarr_sum(z: Any) -> float:
    # 16 MiB at a time: the check after the timer must not set the case's peak RSS.
    total = 0.0
    for start in range(0, z.shape[0], 4 * _ZARR_CHUNK):
        total += float(z[start : start + 4 * _ZARR_CHUNK].sum(dtype=np.float64))
    return total


@case("zarr_out.plain_from_memmap", group="zarr_out", peer="zarr z[:] = numpy.memmap",
      data=("npy",), caches=("warm",), sample_dirty=True)
def plain_to_zarr(ctx: Context) -> dict[str, Any]:
    """``zarr.create_array(...)[:] = np.load(mmap_mode="r")``: 4 MiB chunks, zstd."""
    import zarr

    with ctx.timer():
        src = np.load(ctx.path("npy"), mmap_mode="r")
        z = zarr.create_array(ctx.scratch / "out.zarr", shape=src.shape, dtype=src.dtype,
                              chunks=(_ZARR_CHUNK,))
        z[:] = src
    return {"checksum": _zarr_sum(z)}


@case("zarr_out.bigarr_to_zarr", group="zarr_out", peer="bigarr.to_zarr",
      baseline="zarr_out.plain_from_memmap", data=("npy",), caches=("warm",),
      sample_dirty=True)
def bigarr_to_zarr(ctx: Context) -> dict[str, Any]:
    """``bigarr.to_zarr(path, ...)``: the same array, batches of whole chunks, pages dropped."""
    import zarr  # noqa: F401 - imported before the clock, as in the plain case

    import bigarr

    with ctx.timer():
        z = bigarr.to_zarr(ctx.path("npy"), ctx.scratch / "out.zarr", chunks=(_ZARR_CHUNK,),
                           progress=False)
    return {"checksum": _zarr_sum(z)}


# ---- zarr in ---------------------------------------------------------------------------------


def _plain_in(ctx: Context, kind: str) -> dict[str, Any]:
    import zarr

    with ctx.timer():
        z = zarr.open_array(ctx.path(kind), mode="r")
        out = np.lib.format.open_memmap(ctx.scratch / "out.npy", mode="w+", dtype=z.dtype,
                                        shape=z.shape)
        out[:] = z[:]
        out.flush()
    total = float(np.add.reduce(out, dtype=np.float64))
    return {"checksum": total}


def _bigarr_in(ctx: Context, kind: str) -> dict[str, Any]:
    import zarr  # noqa: F401 - imported before the clock, as in the plain case

    import bigarr

    with ctx.timer():
        out = bigarr.from_zarr(ctx.path(kind), ctx.scratch / "out.npy", progress=False)
    total = 0.0
    for _, block in out.iter_chunks(budget="64MiB", progress=False):
        total += float(block.sum(dtype=np.float64))
        del block
    return {"checksum": total}


@case("zarr_in.plain_into_memmap", group="zarr_in", peer="open_memmap[:] = z[:]",
      data=("zarr",), caches=("warm",), sample_dirty=True)
def plain_from_zarr(ctx: Context) -> dict[str, Any]:
    """``open_memmap(w+)[:] = z[:]`` then ``flush()``, zstd chunks."""
    return _plain_in(ctx, "zarr")


@case("zarr_in.bigarr_from_zarr", group="zarr_in", peer="bigarr.from_zarr",
      baseline="zarr_in.plain_into_memmap", data=("zarr",), caches=("warm",),
      sample_dirty=True)
def bigarr_from_zarr(ctx: Context) -> dict[str, Any]:
    """``bigarr.from_zarr``: batches decoded, written, flushed and dropped behind, zstd chunks."""
    return _bigarr_in(ctx, "zarr")


@case("zarr_in_raw.plain_into_memmap", group="zarr_in_raw", peer="open_memmap[:] = z[:]",
      data=("zarr_raw",), caches=("warm",), sample_dirty=True)
def plain_from_raw_zarr(ctx: Context) -> dict[str, Any]:
    """``open_memmap(w+)[:] = z[:]`` then ``flush()``, uncompressed chunks."""
    return _plain_in(ctx, "zarr_raw")


@case("zarr_in_raw.bigarr_from_zarr", group="zarr_in_raw", peer="bigarr.from_zarr (raw)",
      baseline="zarr_in_raw.plain_into_memmap", data=("zarr_raw",), caches=("warm",),
      sample_dirty=True)
def bigarr_from_raw_zarr(ctx: Context) -> dict[str, Any]:
    """``bigarr.from_zarr`` fast path: raw chunk files copied into the output in the kernel."""
    return _bigarr_in(ctx, "zarr_raw")
