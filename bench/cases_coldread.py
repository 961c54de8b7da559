"""Cold reads and durable writes against the disk's own limits (issue 15).

Groups:

``machine`` (one more limit)
    ``machine.disk_write``: the disk's write limit, next to ``machine.disk_read``: the
    dataset's bytes written to a new file in 16 MiB ``O_DIRECT`` ``pwrite`` calls from an aligned
    buffer, two in flight, then ``fdatasync``. (Where ``O_DIRECT`` is refused it falls back to
    buffered writes with write-behind: ``sync_file_range`` started on each block and waited on
    four blocks later.) ``machine.disk_write_buffered`` is the naive way, buffered ``pwrite``
    calls and one ``fdatasync`` at the end: on this virtio disk it ran 5-10x *slower* than the
    limit, because nothing reaches the disk until the end; it is kept only to show that.
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

import ctypes
import mmap
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from harness import Context, case, pattern_block

_LIMIT = {"cold": "machine.disk_read"}
_BUDGET = "256MiB"
_THREADS = 2
_WRITE_BLOCK = 16 << 20


def _pattern_buffer() -> mmap.mmap:
    """One 16 MiB block of the datasets' pattern in page-aligned memory (``O_DIRECT`` needs it)."""
    block = pattern_block()
    buf = mmap.mmap(-1, _WRITE_BLOCK)
    view = np.frombuffer(buf, dtype=block.dtype)
    for start in range(0, view.size, block.size):
        n = min(block.size, view.size - start)
        view[start:start + n] = block[:n]
    del view
    return buf


def _write_behind(fd: int, buf: mmap.mmap, nbytes: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    start_write, wait_all = 2, 7  # SYNC_FILE_RANGE_WRITE; WAIT_BEFORE | WRITE | WAIT_AFTER
    for i, off in enumerate(range(0, nbytes, _WRITE_BLOCK)):
        n = min(_WRITE_BLOCK, nbytes - off)
        os.pwrite(fd, memoryview(buf)[:n], off)
        libc.sync_file_range(fd, ctypes.c_int64(off), ctypes.c_int64(n), start_write)
        if i >= 4:
            back = off - 4 * _WRITE_BLOCK
            libc.sync_file_range(fd, ctypes.c_int64(back), ctypes.c_int64(_WRITE_BLOCK),
                                 wait_all)


@case("machine.disk_write", group="machine", peer="O_DIRECT pwrite, 2 in flight + fdatasync",
      data=(), caches=("cold",))
def disk_write(ctx: Context) -> dict[str, Any]:
    """The disk's write limit: 16 MiB ``O_DIRECT`` writes, two in flight, then ``fdatasync``."""
    buf = _pattern_buffer()
    out = ctx.scratch / "written.bin"
    whole = ctx.nbytes - ctx.nbytes % _WRITE_BLOCK
    path = "direct"
    with ctx.timer():
        try:
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
        except OSError:  # a file system without O_DIRECT (tmpfs): write-behind instead
            path = "write-behind"
            fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            _write_behind(fd, buf, ctx.nbytes)
        else:
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(lambda off: os.pwrite(fd, buf, off),
                              range(0, whole, _WRITE_BLOCK)))
            if whole < ctx.nbytes:  # the tail, not a multiple of the block: buffered
                os.close(fd)
                fd = os.open(out, os.O_WRONLY)
                os.pwrite(fd, memoryview(buf)[:ctx.nbytes - whole], whole)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
    buf.close()
    return {"bytes_processed": ctx.nbytes, "path": path}


@case("machine.disk_write_buffered", group="machine", peer="os.pwrite, one fdatasync at the end",
      data=(), caches=("cold",))
def disk_write_buffered(ctx: Context) -> dict[str, Any]:
    """Buffered 16 MiB ``pwrite`` calls, then one ``fdatasync``: not a limit (see above)."""
    buf = _pattern_buffer()
    out = ctx.scratch / "written.bin"
    with ctx.timer():
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for off in range(0, ctx.nbytes, _WRITE_BLOCK):
                os.pwrite(fd, memoryview(buf)[:min(_WRITE_BLOCK, ctx.nbytes - off)], off)
            os.fdatasync(fd)
        finally:
            os.close(fd)
    buf.close()
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
