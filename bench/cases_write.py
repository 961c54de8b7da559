"""Durable writes against the disk's write limit (issue 15 item 2, issue 17 point 2).

Every case writes the dataset's bytes into a new file and is timed until they are durable,
with ``machine.disk_write`` (``cases_coldread.py``: 16 MiB ``O_DIRECT`` writes, two in flight,
then ``fdatasync``) as its limit. Run them together with it, so the "limit ratios" table divides
each run by the ``disk_write`` run of its own repeat::

    python bench/run.py --size 1GiB --repeat 5 --cache cold --only machine.disk_write \\
        --only 'write.*' --out writes-1GiB

Group ``write``:

``write.fill_chunks``
    A new ``(N, 32)`` float32 file (``bigarr.create``) filled through ``iter_chunks`` in shared
    mode with a 256 MiB budget, then ``close()`` (which makes it durable). Issue 17 measured
    0.25 GB/s against 0.44 GB/s for ``dd conv=fdatasync``.
``write.fill_direct``
    The same fill with ``iter_chunks(..., direct=True)``: each chunk is staged in anonymous
    memory and written with ``O_DIRECT`` when the loop moves on (two chunks of half the budget),
    bypassing the page cache.
``write.map_warm``
    ``map_blocks(x*2+1)`` of the float32 ``.npy`` into a new file (256 MiB budget, 2 threads)
    with the input read into the page cache before the clock: only the output reaches the
    disk, as in ``disk_write``. (``compute_map.bigarr`` is the same map with a cold input,
    which reads the input from the same disk too.) ``write.map_warm_staged`` is the same with
    ``BIGARR_PLACED=0``: results are not placed for the sink, which copies them into staging.
``write.from_zarr_raw``, ``write.from_zarr_zstd``
    ``bigarr.from_zarr`` of the uncompressed (chunk files copied in the kernel) and the zstd
    zarr datasets of ``cases_interop.py`` into a new ``.npy``, the source read before the clock.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from harness import Context, case

_LIMIT = {"cold": "machine.disk_write"}
_BUDGET = "256MiB"
_THREADS = 2


def _warm(path: Path) -> None:
    """Read a file or a folder's files into the page cache (before the clock)."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    buf = bytearray(16 << 20)
    for name in files:
        with open(name, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def _fill(ctx: Context, direct: bool) -> dict[str, Any]:
    import bigarr

    rows = ctx.nbytes // 128
    out = ctx.scratch / "fill.npy"
    with ctx.timer():
        x = bigarr.create(out, (rows, 32), np.float32)
        for chunk, view in x.iter_chunks(ctx.params["budget"], progress=False, direct=direct):
            view[:] = np.float32(chunk.index % 251)
        x.close()
    with bigarr.open(out) as y:
        checks = float(y[0, 0]) + float(y[-1, -1])
    return {"bytes_processed": rows * 128, "checksum": checks,
            "budget_bytes": bigarr.parse_size(ctx.params["budget"])}


@case("write.fill_chunks", group="write", peer="bigarr iter_chunks fill (shared)", data=(),
      limit=_LIMIT, caches=("cold",), sample_dirty=True, params={"budget": _BUDGET})
def fill_chunks(ctx: Context) -> dict[str, Any]:
    """``bigarr.create`` then ``view[:] = ...`` per ``iter_chunks`` chunk, then ``close()``."""
    return _fill(ctx, direct=False)


@case("write.fill_direct", group="write", peer="bigarr iter_chunks fill (direct=True)",
      data=(), limit=_LIMIT, caches=("cold",), sample_dirty=True,
      params={"budget": _BUDGET})
def fill_direct(ctx: Context) -> dict[str, Any]:
    """``write.fill_chunks`` with ``iter_chunks(..., direct=True)``."""
    return _fill(ctx, direct=True)


@case("write.map_warm", group="write", peer="bigarr.map_blocks, input cached", limit=_LIMIT,
      caches=("cold",), sample_dirty=True, params={"budget": _BUDGET, "threads": _THREADS})
def map_warm(ctx: Context) -> dict[str, Any]:
    """``map_blocks(lambda b: b*2+1, x, out=...)`` with the input in the page cache."""
    return _map_warm(ctx)


@case("write.map_warm_staged", group="write", peer="bigarr.map_blocks, staging copy",
      limit=_LIMIT, caches=("cold",), sample_dirty=True,
      params={"budget": _BUDGET, "threads": _THREADS})
def map_warm_staged(ctx: Context) -> dict[str, Any]:
    """``write.map_warm`` with ``BIGARR_PLACED=0``: results not placed, so the sink copies each
    into its staging buffers (the path before placed results)."""
    os.environ["BIGARR_PLACED"] = "0"  # read when the run starts
    return _map_warm(ctx)


def _map_warm(ctx: Context) -> dict[str, Any]:
    import bigarr

    _warm(ctx.path("npy"))
    out = str(ctx.scratch / "y.npy")
    with ctx.timer():
        with bigarr.open(ctx.path("npy")) as x:
            y = bigarr.map_blocks(lambda b: b * 2 + 1, x, out=out, budget=ctx.params["budget"],
                                  threads=ctx.params["threads"], progress=False)
        y.close()
    total = float(bigarr.sum(out, dtype=np.float64, budget="64MiB", progress=False))
    n = ctx.nbytes // 4  # float32 elements: y = 2x + 1 gives back the input's sum
    return {"checksum": (total - n) / 2, "bytes_processed": ctx.nbytes,
            "budget_bytes": bigarr.parse_size(ctx.params["budget"])}


def _from_zarr(ctx: Context, kind: str) -> dict[str, Any]:
    import zarr  # noqa: F401 - imported before the clock

    import bigarr

    _warm(ctx.path(kind))
    out = ctx.scratch / "z.npy"
    with ctx.timer():
        bigarr.from_zarr(ctx.path(kind), out, progress=False).close()
    size = os.path.getsize(out)
    total = float(bigarr.sum(str(out), dtype=np.float64, budget="64MiB", progress=False))
    return {"checksum": total, "bytes_processed": size}


@case("write.from_zarr_raw", group="write", peer="bigarr.from_zarr (raw chunks)",
      data=("zarr_raw",), limit=_LIMIT, caches=("cold",), sample_dirty=True)
def from_zarr_raw(ctx: Context) -> dict[str, Any]:
    """``bigarr.from_zarr`` of uncompressed chunks (copied file to file in the kernel)."""
    return _from_zarr(ctx, "zarr_raw")


@case("write.from_zarr_zstd", group="write", peer="bigarr.from_zarr (zstd chunks)",
      data=("zarr",), limit=_LIMIT, caches=("cold",), sample_dirty=True)
def from_zarr_zstd(ctx: Context) -> dict[str, Any]:
    """``bigarr.from_zarr`` of zstd chunks (decoded, written by the O_DIRECT output sink)."""
    return _from_zarr(ctx, "zarr")
