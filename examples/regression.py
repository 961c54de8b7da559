"""Least squares out of core with ``bigarr.linalg.lstsq``: one pass of TSQR over [X | y].

Generates an N x F design matrix and a response ``y = X @ beta + noise`` in files many times
the budget, then fits ``beta`` by the tall-skinny QR of ``[X | y]`` (never the normal equations,
whose condition number is squared), and compares it with the true coefficients.

    python examples/regression.py                              # 1 GiB of generated data
    python examples/regression.py --size 100GiB --dir /data/scratch   # many times RAM
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

import bigarr

FEATURES = 16
NOISE = 0.1


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def peak_rss() -> int:
    """Peak resident memory of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def generate(folder: str, size: int, budget: int) -> tuple[bigarr.memmap, bigarr.memmap,
                                                            np.ndarray]:
    """Write X (float32, correlated columns) and y; return both files and the true beta."""
    rows = max(FEATURES + 1, size // (FEATURES * 4))
    beta = np.linspace(-2.0, 2.0, FEATURES)
    mix = np.random.default_rng(0).standard_normal((FEATURES, FEATURES)).astype(np.float32)
    x = bigarr.create(os.path.join(folder, "x.npy"), (rows, FEATURES), "f4", overwrite=True)
    y = bigarr.create(os.path.join(folder, "y.npy"), (rows,), "f8", overwrite=True)
    for chunk, block in x.iter_chunks(budget=budget // 4, prefetch=False):  # write-only
        rng = np.random.default_rng(chunk.rows.start)
        block[:] = rng.standard_normal(block.shape, dtype=np.float32) @ mix + 1.0
        y[chunk.rows] = block @ beta + NOISE * rng.standard_normal(len(block))
    y.flush()
    return x, y, beta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=bigarr.parse_size, default="1GiB",
                        help="size of the generated design matrix")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--budget", type=bigarr.parse_size, default="128MiB",
                        help="memory budget of the fit")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir} is not a directory")

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="regression-") as folder:
        x, y, beta = generate(folder, args.size, args.budget)
        n = x.shape[0]
        print(f"X: {n:,} rows x {FEATURES} float32 ({x.nbytes / 2**30:.2f} GiB), y float64")
        start = time.perf_counter()
        coef, residuals, rank, _ = bigarr.linalg.lstsq(x, y, budget=args.budget,
                                                       threads=args.threads)
        seconds = time.perf_counter() - start
        error = float(np.max(np.abs(coef - beta)))
        rmse = float(np.sqrt(residuals[0] / n)) if len(residuals) else float("nan")
        print(f"result: rank {rank}, largest coefficient error {error:.4f}, residual RMS "
              f"{rmse:.4f} (noise {NOISE})")
        moved = x.nbytes + y.nbytes
        print(f"summary: least squares on {mib(moved)} in {seconds:.1f} s "
              f"({mib(moved / seconds)}/s); peak RSS {mib(peak_rss())} = "
              f"{peak_rss() / moved:.2f}x the data size")
        x.close()
        y.close()


if __name__ == "__main__":
    main()
