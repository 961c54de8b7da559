"""Out-of-core standardization of an N x F feature matrix, in two passes.

Pass 1 streams the file once per statistic to get each column's mean and standard deviation
(bigarr's reductions merge per-chunk partial results, Chan's formula for the variance). Pass 2
maps ``z = (x - mean) / std`` into a new file, chunk by chunk, on threads, within a memory
budget. Resident memory stays near the budget whatever the file size.

    python examples/standardize.py                       # 1 GiB of generated data
    python examples/standardize.py --size 100GiB --dir /data/scratch   # many times RAM
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

FEATURES = 64


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def peak_rss() -> int:
    """Peak resident memory of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def generate(path: str, size: int, budget: int) -> bigarr.memmap:
    """Write a float32 matrix whose columns have different means and scales."""
    rows = max(1, size // (FEATURES * 4))
    rng = np.random.default_rng(0)
    loc = rng.uniform(-100, 100, FEATURES).astype(np.float32)
    scale = rng.uniform(0.1, 50, FEATURES).astype(np.float32)
    x = bigarr.create(path, (rows, FEATURES), "f4", overwrite=True)
    for chunk, block in x.iter_chunks(budget=budget // 4, prefetch=False):  # write-only
        chunk_rng = np.random.default_rng(chunk.rows.start)
        chunk_rng.standard_normal(dtype=np.float32, out=block)  # straight into the file's pages
        block *= scale
        block += loc
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=bigarr.parse_size, default="1GiB",
                        help="size of the generated matrix")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--budget", type=bigarr.parse_size, default="128MiB",
                        help="memory budget of each pass")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir} is not a directory")
    size, budget = args.size, args.budget

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="standardize-") as folder:
        x = generate(os.path.join(folder, "features.npy"), size, budget)
        print(f"features: {x.shape[0]:,} rows x {x.shape[1]} float32 ({mib(x.nbytes)})")
        opts = {"budget": budget, "threads": args.threads}
        start = time.perf_counter()

        # Pass 1: the statistics, one streaming reduction each. Like numpy, bigarr sums float32
        # data in float32 unless asked; float64 keeps a column mean of ~100 exact to 1e-7.
        mean = bigarr.mean(x, axis=0, dtype=np.float64, **opts)
        std = bigarr.std(x, axis=0, dtype=np.float64, **opts)

        # Pass 2: the map, written straight into a new page-aligned .npy file.
        z = bigarr.map_blocks(lambda block: (block - mean) / std, x,
                              out=os.path.join(folder, "standardized.npy"), dtype="f4", **opts)
        seconds = time.perf_counter() - start

        # Check the result (two more streaming passes, not timed).
        z_mean = bigarr.mean(z, axis=0, dtype=np.float64, **opts)
        z_std = bigarr.std(z, axis=0, dtype=np.float64, **opts)
        worst = max(float(np.abs(z_mean).max()), float(np.abs(z_std - 1).max()))
        print(f"result: column means in [{mean.min():.1f}, {mean.max():.1f}], stds in "
              f"[{std.min():.2f}, {std.max():.2f}]; standardized columns have mean 0 and std 1 "
              f"to within {worst:.1e}")
        moved = 3 * x.nbytes  # read twice, written once
        print(f"summary: standardized {mib(x.nbytes)} in {seconds:.1f} s "
              f"({mib(moved / seconds)}/s of reads and writes); peak RSS {mib(peak_rss())} = "
              f"{peak_rss() / x.nbytes:.2f}x the file size")
        z.close()
        x.close()


if __name__ == "__main__":
    main()
