"""Out-of-core compute (issue 4): map_blocks, reductions, and a pipeline under a memory limit.

Groups:

``compute_map``
    The elementwise map ``x*2+1`` of the float32 dataset into a new ``.npy`` file, timed until the
    output is durable. The naive way (``compute_map.numpy``): ``np.multiply`` into an
    ``open_memmap`` output, ``+= 1``, ``flush()`` and ``fsync``. bigarr: ``map_blocks`` with a
    256 MiB budget and 2 threads (preallocated output written with ``pwrite``, writeback started
    per chunk, flushed every 64 MiB; it returns after ``fdatasync``). ``Dirty`` is sampled.
``compute_reduce``
    ``sum`` with ``threads=2`` on a warm cache against ``numpy.memmap(...).sum()``
    (``baseline.memmap_sum``, one thread), with the 2-thread memory-bandwidth limit
    (``machine.mem_bw_2t``) as "% limit". ``compute_reduce.dask_sum`` is dask.array on the same
    file and the same chunks, built the recommended way: every block is a lazy
    ``np.load(mmap_mode="r")`` slice of its own file region (``da.map_blocks`` over the chunk
    layout), computed on the threaded scheduler with 2 workers; its ratio is against bigarr.
``compute_map_cg``
    The same two maps, each run alone in a 6 GiB memory cgroup on a cold cache, so that the
    cgroup's ``dirty + writeback`` (``cgroup_dirty_max_mib``, sampled every 10 ms) is the run's
    own unflushed output rather than the machine's.
``compute_cgroup``
    A 2 GiB pipeline (map into a new file, then a sum of the result) on a cold cache inside a
    512 MiB memory cgroup, against ``np.array(numpy.memmap)`` of the same file, which is
    OOM-killed there. Skipped where no memory cgroup can be made.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from harness import Context, case

_BUDGET = "256MiB"
_THREADS = 2
_MAP_LIMITS = {"cold": "machine.disk_write", "warm": "machine.disk_write"}


class _CgroupDirty:
    """Sample this process's memory cgroup ``dirty + writeback`` (memory.stat, cgroup v1).

    Unlike ``Dirty`` in /proc/meminfo this counts only the pages of the cgroup's processes, so in
    a ``mem_limit`` case (a cgroup of its own) it is the run's own unflushed output.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.max_bytes: int | None = None
        self._stat = self._find()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _find() -> Path | None:
        try:
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                _, controllers, rel = line.split(":", 2)
                if "memory" in controllers.split(","):
                    stat = Path("/sys/fs/cgroup/memory") / rel.lstrip("/") / "memory.stat"
                    return stat if stat.exists() else None
        except OSError:
            return None
        return None

    def sample(self) -> None:
        if self._stat is None:
            return
        values = dict(line.split() for line in self._stat.read_text().splitlines())
        now = int(values.get("dirty", 0)) + int(values.get("writeback", 0))
        self.max_bytes = now if self.max_bytes is None else max(self.max_bytes, now)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> _CgroupDirty:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _map_checksum(path: str) -> float:
    """Recover the input's sum from ``y = 2x + 1`` (exact for the benchmark's small integers)."""
    import bigarr

    with bigarr.open(path) as y:
        total = float(bigarr.sum(y, dtype=np.float64, budget="64MiB", progress=False))
        n = y.shape[0]
    return (total - n) / 2


# ---- map -------------------------------------------------------------------------------------
@case("compute_map.numpy", group="compute_map", peer="numpy.memmap + open_memmap",
      sample_dirty=True, limit=_MAP_LIMITS)
def map_numpy(ctx: Context) -> dict[str, Any]:
    """``np.multiply(x, 2, out=open_memmap(...)); out += 1; out.flush(); fsync``."""
    out = str(ctx.scratch / "y.npy")
    with ctx.timer(), _CgroupDirty() as dirty:
        x = np.load(ctx.path("npy"), mmap_mode="r")
        y = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=x.shape)
        np.multiply(x, 2, out=y)
        y += 1
        y.flush()
        fd = os.open(out, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        del x, y
    return {"checksum": _map_checksum(out), "bytes_processed": ctx.nbytes,
            "cgroup_dirty_max_mib": _mib(dirty.max_bytes)}


@case("compute_map.bigarr", group="compute_map", peer="bigarr.map_blocks",
      baseline="compute_map.numpy", sample_dirty=True, limit=_MAP_LIMITS,
      params={"budget": _BUDGET, "threads": _THREADS})
def map_bigarr(ctx: Context) -> dict[str, Any]:
    """``bigarr.map_blocks(lambda b: b*2+1, x, out=...)``: 256 MiB budget, 2 threads."""
    import bigarr

    out = str(ctx.scratch / "y.npy")
    with ctx.timer(), _CgroupDirty() as dirty:
        with bigarr.open(ctx.path("npy")) as x:
            y = bigarr.map_blocks(lambda b: b * 2 + 1, x, out=out, budget=ctx.params["budget"],
                                  threads=ctx.params["threads"], progress=False)
        y.close()
    return {"checksum": _map_checksum(out), "bytes_processed": ctx.nbytes,
            "budget_bytes": bigarr.parse_size(ctx.params["budget"]),
            "cgroup_dirty_max_mib": _mib(dirty.max_bytes)}


def _mib(nbytes: int | None) -> float | None:
    return None if nbytes is None else round(nbytes / 2**20, 1)


# The same two maps, each in a memory cgroup of its own (cold cache): there the cgroup's
# dirty + writeback counters are the run's own unflushed output, not the whole machine's.
@case("compute_map_cg.numpy", group="compute_map_cg", peer="numpy.memmap + open_memmap",
      mem_limit="6GiB")
def map_numpy_cg(ctx: Context) -> dict[str, Any]:
    """``compute_map.numpy`` alone in a 6 GiB memory cgroup (to count its own dirty pages)."""
    return map_numpy(ctx)


@case("compute_map_cg.bigarr", group="compute_map_cg", peer="bigarr.map_blocks",
      baseline="compute_map_cg.numpy", mem_limit="6GiB",
      params={"budget": _BUDGET, "threads": _THREADS})
def map_bigarr_cg(ctx: Context) -> dict[str, Any]:
    """``compute_map.bigarr`` alone in a 6 GiB memory cgroup (to count its own dirty pages)."""
    return map_bigarr(ctx)


# ---- reductions ------------------------------------------------------------------------------
def _bigarr_chunks(path: str, budget: str, threads: int) -> tuple[int, ...]:
    """The element counts of bigarr's chunks of a 1-D file (to give dask the same chunks)."""
    import bigarr
    from bigarr._compute.operands import parse_operand
    from bigarr._compute.runplan import plan_run

    with bigarr.open(path) as x:
        stream = parse_operand(x)
        plan = plan_run("sum", [stream], budget=budget, threads=threads, layout="keys").chunks
        del stream
    return tuple(c.rows.stop - c.rows.start for c in plan)


@case("compute_reduce.bigarr_sum", group="compute_reduce", peer="bigarr.sum, 2 threads",
      baseline="baseline.memmap_sum", caches=("warm",), limit="machine.mem_bw_2t",
      params={"budget": _BUDGET, "threads": _THREADS})
def reduce_bigarr(ctx: Context) -> dict[str, Any]:
    """``bigarr.sum(x, threads=2, budget='256MiB')``."""
    import bigarr

    with ctx.timer(), bigarr.open(ctx.path("npy")) as x:
        total = float(bigarr.sum(x, budget=ctx.params["budget"], threads=ctx.params["threads"],
                                 progress=False))
    return {"checksum": total}


@case("compute_reduce.bigarr_sum_1t", group="compute_reduce", peer="bigarr.sum, 1 thread",
      baseline="baseline.memmap_sum", caches=("warm",), limit="machine.mem_bw_1t",
      params={"budget": _BUDGET, "threads": 1})
def reduce_bigarr_1t(ctx: Context) -> dict[str, Any]:
    """``bigarr.sum(x, threads=1, budget='256MiB')``."""
    return reduce_bigarr(ctx)


def _reduce_rows(ctx: Context) -> dict[str, Any]:
    import bigarr

    with ctx.timer(), bigarr.open(ctx.path("npy")) as x:
        rows = x.reshape(-1, 32)
        total = float(bigarr.sum(rows, axis=0, budget=ctx.params["budget"],
                                 threads=ctx.params["threads"], progress=False).sum())
        del rows
    return {"checksum": total}


@case("compute_reduce.bigarr_sum_ax0", group="compute_reduce",
      peer="bigarr.sum(axis=0), 2 threads", baseline="baseline.memmap_sum", caches=("warm",),
      limit="machine.mem_bw_2t", params={"budget": _BUDGET, "threads": _THREADS})
def reduce_bigarr_ax0(ctx: Context) -> dict[str, Any]:
    """``bigarr.sum(x.reshape(-1, 32), axis=0, threads=2, budget='256MiB')``."""
    return _reduce_rows(ctx)


@case("compute_reduce.bigarr_sum_ax0_1t", group="compute_reduce",
      peer="bigarr.sum(axis=0), 1 thread", baseline="baseline.memmap_sum", caches=("warm",),
      limit="machine.mem_bw_1t", params={"budget": _BUDGET, "threads": 1})
def reduce_bigarr_ax0_1t(ctx: Context) -> dict[str, Any]:
    """``bigarr.sum(x.reshape(-1, 32), axis=0, threads=1, budget='256MiB')``."""
    return _reduce_rows(ctx)


@case("compute_reduce.dask_sum", group="compute_reduce", peer="dask.array, 2 threads",
      baseline="compute_reduce.bigarr_sum", caches=("warm",), limit="machine.mem_bw_2t",
      params={"budget": _BUDGET, "threads": _THREADS})
def reduce_dask(ctx: Context) -> dict[str, Any]:
    """dask.array over lazy per-block ``np.load(mmap_mode='r')`` slices; bigarr's chunks."""
    import dask
    import dask.array as da

    path = str(ctx.path("npy"))
    chunks = _bigarr_chunks(path, ctx.params["budget"], ctx.params["threads"])
    starts = np.concatenate([[0], np.cumsum(chunks)]).tolist()

    def load(block_info: Any = None) -> np.ndarray[Any, Any]:
        (start, stop), = block_info[None]["array-location"]
        return np.load(path, mmap_mode="r")[start:stop]

    with ctx.timer():
        x = da.map_blocks(load, dtype=np.float32, chunks=(chunks,), meta=np.empty(0, np.float32))
        with dask.config.set(scheduler="threads", num_workers=ctx.params["threads"]):
            total = float(x.sum().compute())
    return {"checksum": total, "chunks": len(chunks), "first_chunk_start": starts[1]}


# ---- under a memory limit --------------------------------------------------------------------
@case("compute_cgroup.numpy_array", group="compute_cgroup", peer="np.array(numpy.memmap)",
      mem_limit="512MiB")
def cgroup_numpy(ctx: Context) -> dict[str, Any]:
    """``np.array(np.load(mmap_mode='r')).sum()`` under 512 MiB: expected to be OOM-killed."""
    with ctx.timer():
        total = float(np.array(np.load(ctx.path("npy"), mmap_mode="r")).sum())
    return {"checksum": total}


@case("compute_cgroup.bigarr_pipeline", group="compute_cgroup", peer="bigarr map + sum",
      baseline="compute_cgroup.numpy_array", mem_limit="512MiB",
      params={"budget": _BUDGET, "threads": _THREADS})
def cgroup_bigarr(ctx: Context) -> dict[str, Any]:
    """``map_blocks(x*2+1)`` into a new file, then ``bigarr.sum`` of it, under 512 MiB."""
    import bigarr

    out = str(ctx.scratch / "y.npy")
    opts = {"budget": ctx.params["budget"], "threads": ctx.params["threads"], "progress": False}
    with ctx.timer(), _CgroupDirty() as dirty:
        with bigarr.open(ctx.path("npy")) as x:
            y = bigarr.map_blocks(lambda b: b * 2 + 1, x, out=out, **opts)
        with y:
            total = float(bigarr.sum(y, dtype=np.float64, **opts))
    return {"checksum": (total - ctx.n) / 2, "bytes_processed": 2 * ctx.nbytes,
            "cgroup_dirty_max_mib": _mib(dirty.max_bytes)}
