"""Cold reads and durable writes against the disk's own limits (issue 15).

Groups:

``machine`` (one more limit)
    ``machine.disk_write``: the dataset's bytes written sequentially to a new file with 16 MiB
    ``pwrite`` calls, then ``fdatasync``: the disk's write limit, next to ``machine.disk_read``.
``coldread``
    ``bigarr.sum`` (2 threads, 256 MiB budget) of the cold ``.npy`` through each read path:
    ``direct`` (the default: ``O_DIRECT`` reads into pooled buffers), ``pread``
    (``BIGARR_COLD_READS=buffered``: through the page cache with readahead off, the pages dropped
    after) and ``mmap`` (``BIGARR_COLD_READS=off``: page faults, ``WILLNEED`` prefetch and
    release-behind, the path before issue 15), plus a lazy expression (``((x - 1) * 2).sum()``)
    with the direct and mmap paths. Their ``% limit`` is against
    ``machine.disk_read`` of the same invocation; the per-repeat ratios (each run divided by
    the ``disk_read`` run of its own repeat; runs go round-robin, so each repeat's runs are
    minutes apart at most) are printed in the "limit ratios" table under the results.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from harness import Context, case, write_pattern

_LIMIT = {"cold": "machine.disk_read"}
_BUDGET = "256MiB"
_THREADS = 2
_WRITE_BLOCK = 16 << 20


@case("machine.disk_write", group="machine", peer="os.pwrite + fdatasync", data=(),
      caches=("cold",))
def disk_write(ctx: Context) -> dict[str, Any]:
    """Write the dataset's bytes to a new file: 16 MiB ``pwrite`` calls, then ``fdatasync``."""
    block = np.empty(_WRITE_BLOCK // 4, dtype=np.float32)
    with open(ctx.scratch / "pattern.bin", "wb") as f:  # the same bytes as the datasets
        write_pattern(f, block.size)
    block[:] = np.fromfile(ctx.scratch / "pattern.bin", dtype=np.float32)
    os.unlink(ctx.scratch / "pattern.bin")
    view = memoryview(block).cast("B")
    out = ctx.scratch / "written.bin"
    with ctx.timer():
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            done = 0
            while done < ctx.nbytes:
                n = min(_WRITE_BLOCK, ctx.nbytes - done)
                done += os.pwrite(fd, view[:n], done)
            os.fdatasync(fd)
        finally:
            os.close(fd)
    return {"bytes_processed": ctx.nbytes}


def _sum(ctx: Context, mode: str) -> dict[str, Any]:
    os.environ["BIGARR_COLD_READS"] = mode  # read when the run starts
    import bigarr

    with ctx.timer():
        total = float(bigarr.sum(ctx.path("npy"), dtype=np.float64, budget=_BUDGET,
                                 threads=_THREADS, progress=False))
    return {"checksum": total, "mode": mode}


@case("coldread.sum_direct", group="coldread", peer="bigarr.sum, O_DIRECT", limit=_LIMIT,
      baseline="coldread.sum_mmap", caches=("cold",))
def sum_direct(ctx: Context) -> dict[str, Any]:
    """``bigarr.sum(path, threads=2)``: cold chunks read with ``O_DIRECT`` (the default)."""
    return _sum(ctx, "direct")


@case("coldread.sum_pread", group="coldread", peer="bigarr.sum, buffered pread", limit=_LIMIT,
      baseline="coldread.sum_mmap", caches=("cold",))
def sum_pread(ctx: Context) -> dict[str, Any]:
    """``bigarr.sum(path, threads=2)`` with ``BIGARR_COLD_READS=buffered``."""
    return _sum(ctx, "buffered")


@case("coldread.sum_mmap", group="coldread", peer="bigarr.sum, mmap", limit=_LIMIT,
      baseline="baseline.memmap_sum", caches=("cold",))
def sum_mmap(ctx: Context) -> dict[str, Any]:
    """``bigarr.sum(path, threads=2)`` with ``BIGARR_COLD_READS=off`` (faults + prefetch)."""
    return _sum(ctx, "off")


def _lazy(ctx: Context, mode: str) -> dict[str, Any]:
    os.environ["BIGARR_COLD_READS"] = mode
    import bigarr

    with ctx.timer():
        x = bigarr.lazy(ctx.path("npy"))
        total = float(((x - 1.0) * 2.0).sum(dtype=np.float64).compute(
            budget=_BUDGET, threads=_THREADS, progress=False))
    return {"checksum": total / 2 + ctx.n, "mode": mode}


@case("coldread.lazy_direct", group="coldread", peer="bigarr.lazy, O_DIRECT", limit=_LIMIT,
      baseline="coldread.lazy_mmap", caches=("cold",))
def lazy_direct(ctx: Context) -> dict[str, Any]:
    """``compute(((x - 1) * 2).sum())`` on the cold file, ``O_DIRECT`` path (the default)."""
    return _lazy(ctx, "direct")


@case("coldread.lazy_mmap", group="coldread", peer="bigarr.lazy, mmap", limit=_LIMIT,
      baseline="baseline.memmap_sum", caches=("cold",))
def lazy_mmap(ctx: Context) -> dict[str, Any]:
    """``compute(((x - 1) * 2).sum())`` on the cold file, mmap path."""
    return _lazy(ctx, "off")
