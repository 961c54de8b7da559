"""Peers that need only numpy, and the machine limits every other case is measured against.

Groups:

``baseline``
    Summing the whole dataset the obvious ways: a ``numpy.memmap`` ``.sum()``
    (the naive mapping every bigarr case is compared with), ``np.fromfile``
    (load everything, then sum) and a ``readinto`` loop over a reused buffer.
``machine``
    The limits: float32 ``sum`` over resident memory with 1 and 2 threads, the same
    2-thread sum over a fresh whole-file mapping of the warm ``.npy`` file
    (``machine.map_bw_2t``: what mapped warm data can reach), and a cold sequential read of
    the raw file.
``cgroup``
    The memmap and fromfile sums again, inside a 128 MiB memory cgroup: the
    mapping passes (clean file pages are reclaimable), the full load is
    OOM-killed once the data is bigger than the limit.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from harness import Context, case, parse_size, sequential_read, threaded_sum

_LIMITS = {"cold": "machine.disk_read", "warm": "machine.mem_bw_1t"}


@case("baseline.memmap_sum", group="baseline", peer="numpy.memmap", data=("npy",), limit=_LIMITS)
def memmap_sum(ctx: Context) -> dict[str, Any]:
    """``np.load(mmap_mode="r").sum()``: one pass over the whole mapping."""
    with ctx.timer():
        m = np.load(ctx.path("npy"), mmap_mode="r")
        total = float(m.sum())
    return {"checksum": total}


@case(
    "baseline.fromfile_sum",
    group="baseline",
    peer="numpy.fromfile",
    baseline="baseline.memmap_sum",
    data=("raw",),
    limit=_LIMITS,
)
def fromfile_sum(ctx: Context) -> dict[str, Any]:
    """``np.fromfile(raw).sum()``: read everything into anonymous memory first."""
    with ctx.timer():
        total = float(np.fromfile(ctx.path("raw"), dtype=np.float32).sum())
    return {"checksum": total}


@case(
    "baseline.readinto_sum",
    group="baseline",
    peer="os.readinto",
    baseline="baseline.memmap_sum",
    data=("raw",),
    limit=_LIMITS,
    params={"chunk": "16MiB"},
)
def readinto_sum(ctx: Context) -> dict[str, Any]:
    """Sum chunk by chunk, reading the raw file into one reused buffer."""
    buf = np.empty(parse_size(ctx.params["chunk"]) // 4, dtype=np.float32)
    view = buf.data.cast("B")
    total = 0.0
    with ctx.timer(), open(ctx.path("raw"), "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += float(buf[: n // 4].sum())
    return {"checksum": total}


def _bandwidth(ctx: Context, threads: int) -> dict[str, Any]:
    nbytes = parse_size(ctx.params["nbytes"])
    rounds = int(ctx.params["rounds"])
    arr = np.ones(nbytes // 4, dtype=np.float32)  # resident before the clock starts
    with ctx.timer():
        for _ in range(rounds):
            threaded_sum(arr, threads)
    return {"bytes_processed": arr.nbytes * rounds, "threads": threads}


_BW_PARAMS = {"nbytes": "512MiB", "rounds": 4}


@case(
    "machine.mem_bw_1t",
    group="machine",
    peer="numpy sum, RAM",
    data=(),
    caches=("warm",),
    params=_BW_PARAMS,
)
def mem_bw_1t(ctx: Context) -> dict[str, Any]:
    """float32 ``sum`` over a resident 512 MiB array, one thread."""
    return _bandwidth(ctx, 1)


@case(
    "machine.mem_bw_2t",
    group="machine",
    peer="numpy sum, RAM",
    baseline="machine.mem_bw_1t",
    data=(),
    caches=("warm",),
    params=_BW_PARAMS,
)
def mem_bw_2t(ctx: Context) -> dict[str, Any]:
    """float32 ``sum`` over a resident 512 MiB array, split over two threads."""
    return _bandwidth(ctx, 2)


@case(
    "machine.map_bw_2t",
    group="machine",
    peer="numpy sum, fresh mmap",
    baseline="machine.mem_bw_2t",
    data=("npy",),
    caches=("warm",),
)
def map_bw_2t(ctx: Context) -> dict[str, Any]:
    """float32 ``sum`` over a fresh whole-file mapping of the warm file, split over two
    threads: the ceiling for mapped warm data (page-table setup included)."""
    with ctx.timer():
        m = np.load(ctx.path("npy"), mmap_mode="r")
        total = threaded_sum(m, 2)
        del m
    return {"checksum": total, "threads": 2}


@case("machine.disk_read", group="machine", peer="os.readinto", data=("raw",), caches=("cold",))
def disk_read(ctx: Context) -> dict[str, Any]:
    """Sequential read of the evicted raw file with 16 MiB ``readinto`` calls."""
    with ctx.timer():
        nread = sequential_read(ctx.path("raw"))
    return {"bytes_processed": nread}


@case("cgroup.memmap_sum", group="cgroup", peer="numpy.memmap", data=("npy",), mem_limit="128MiB")
def memmap_sum_limited(ctx: Context) -> dict[str, Any]:
    """``baseline.memmap_sum`` inside a 128 MiB memory cgroup."""
    return memmap_sum(ctx)


@case(
    "cgroup.fromfile_sum",
    group="cgroup",
    peer="numpy.fromfile",
    baseline="cgroup.memmap_sum",
    data=("raw",),
    mem_limit="128MiB",
)
def fromfile_sum_limited(ctx: Context) -> dict[str, Any]:
    """``baseline.fromfile_sum`` inside a 128 MiB memory cgroup."""
    return fromfile_sum(ctx)
