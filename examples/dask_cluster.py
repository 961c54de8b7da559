"""A dask.distributed pipeline over bigarr files, passed to the workers by reference.

The pipeline standardises an N x F float32 matrix on a cluster of worker *processes*:

1. ``x = bigarr.to_dask(path)``: a dask array whose tasks each map one page-aligned block of the
   file. The task graph holds the file's path, offset, shape and dtype, never its data, so it is
   a few kilobytes whatever the file size (``dask.array.from_array(numpy.memmap)`` would ship
   the whole file inside the graph).
2. Column means and standard deviations, reduced on the workers.
3. ``bigarr.store((x - mean) / std, out_path)``: every worker maps its own page-aligned block of
   the output in shared mode, writes it, ``msync``'s it and closes it. (``dask.array.store`` into
   a ``numpy.memmap`` would write into pickled copies on the workers and lose every write.)

Run it on a local cluster (the default, two worker processes on this machine)::

    python examples/dask_cluster.py                    # 256 MiB of generated data
    python examples/dask_cluster.py --size 8GiB --workers 4 --dir /scratch

Pointing it at a real cluster
-----------------------------
Only the *path* travels to the workers, so every worker must be able to open the files under
the same path:

1. Put the data on a file system every machine mounts at the same place (NFS, Lustre, GPFS,
   CephFS, ...), and pass that directory with ``--dir``.
2. Start a scheduler and workers the usual way (``dask scheduler`` on one host, ``dask worker
   tcp://scheduler:8786`` on each worker host, or dask-jobqueue / dask-kubernetes), with bigarr
   installed in the workers' environment.
3. Run ``python examples/dask_cluster.py --scheduler tcp://scheduler:8786 --dir /shared/scratch``.

Each worker then maps only the blocks it works on, straight from the shared file system; no
array data passes through the scheduler. Writes from several hosts into one file are as coherent
as the file system makes them: blocks never share a page, and each task ``msync``'s its block
before it reports done, so the data is on the server when ``store`` returns.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import resource
import sys
import tempfile
import time
import warnings

import numpy as np

import bigarr

FEATURES = 32


def peak_rss() -> int:
    """Peak resident memory of the calling process, in bytes (runs on the workers too)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def generate(path: str, size: int, budget: int) -> tuple[int, int]:
    """Write a float32 matrix whose columns have different means and scales; return its shape."""
    rows = max(1, size // (FEATURES * 4))
    rng = np.random.default_rng(0)
    loc, scale = rng.uniform(-100, 100, FEATURES), rng.uniform(0.1, 50, FEATURES)
    with bigarr.create(path, (rows, FEATURES), "f4", overwrite=True) as x:
        for chunk, block in x.iter_chunks(budget=budget, prefetch=False, progress=None):
            block[...] = np.random.default_rng(chunk.rows.start).normal(loc, scale, block.shape)
            del block
    return rows, FEATURES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256MiB", help="size of the generated matrix")
    parser.add_argument("--dir", help="where to write (a shared file system for a real cluster)")
    parser.add_argument("--budget", default="16MiB", help="target bytes of one dask block")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes")
    parser.add_argument("--scheduler", help="address of an existing dask scheduler "
                        "(e.g. tcp://host:8786); default: start a LocalCluster")
    args = parser.parse_args()
    size, budget = bigarr.parse_size(args.size), bigarr.parse_size(args.budget)

    import contextlib

    import dask.array as da
    from distributed import Client, LocalCluster, progress

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="dask-cluster-") as folder:
        src, out = os.path.join(folder, "features.npy"), os.path.join(folder, "standardized.npy")
        rows, cols = generate(src, size, budget)
        nbytes = rows * cols * 4
        print(f"features: {rows:,} rows x {cols} float32 ({nbytes / 2**30:.2f} GiB) in {src}")

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LocalCluster start-up chatter
            # silence_logs: the local workers log only what is critical to this terminal. A
            # worker's heartbeat racing the scheduler's shutdown logs a traceback otherwise
            # (seen on a loaded machine); a task's real error still reaches this process, and
            # raises here (a computation's result re-raises it).
            cluster = None if args.scheduler else LocalCluster(
                processes=True, n_workers=args.workers, threads_per_worker=1,
                dashboard_address=None, silence_logs=logging.CRITICAL)
        # the client closes first, then the cluster (its workers before its scheduler), on
        # every way out of the block
        with cluster or contextlib.nullcontext(), Client(args.scheduler or cluster) as client:
            nworkers = len(client.scheduler_info()["workers"])
            print(f"cluster: {nworkers} worker processes at {client.scheduler.address}")
            start = time.perf_counter()

            # 1. The file, by reference: the graph holds no array data.
            x = bigarr.to_dask(src, block_bytes=budget)  # blocks start on file pages
            graph = len(pickle.dumps(dict(x.__dask_graph__())))
            print(f"graph: {x.npartitions} blocks, {graph:,} bytes pickled "
                  f"({graph / nbytes:.1e} of the data)")

            # 2. Column statistics, reduced on the workers.
            mean, std = da.compute(x.mean(axis=0, dtype="f8"), x.std(axis=0, dtype="f8"))

            # 3. The map, written by the workers straight into a new page-aligned file.
            z = ((x - mean) / std).astype("f4")
            job = bigarr.store(z, out, compute=False, block_bytes=budget)
            future = client.compute(job)
            if sys.stderr.isatty():
                progress(future)
            written = future.result()
            seconds = time.perf_counter() - start

            # Check the result on the cluster (not timed).
            check = bigarr.to_dask(out, block_bytes=budget)
            z_mean, z_std = da.compute(check.mean(axis=0, dtype="f8"),
                                       check.std(axis=0, dtype="f8"))
            worst = max(float(np.abs(z_mean).max()), float(np.abs(z_std - 1).max()))
            workers_peak = max(client.run(peak_rss).values())

        print(f"result: column means in [{mean.min():.1f}, {mean.max():.1f}], stds in "
              f"[{std.min():.2f}, {std.max():.2f}]; the {written / 2**20:.0f} MiB written have "
              f"column mean 0 and std 1 to within {worst:.1e}")
        moved = 3 * nbytes  # read twice (statistics, map), written once
        print(f"summary: standardized {nbytes / 2**30:.2f} GiB on {nworkers} workers in "
              f"{seconds:.1f} s ({moved / seconds / 2**30:.2f} GiB/s of reads and writes); "
              f"peak RSS per worker {workers_peak / 2**20:.0f} MiB = "
              f"{workers_peak / nbytes:.2f}x the file size, driver {peak_rss() / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
