"""Stream a bigarr file into a compressed zarr array and back, with memory bounded by a budget.

1. ``bigarr.to_zarr(x, store)`` writes the file into zarr in batches of whole chunks (each chunk
   is encoded and written exactly once, never read back) and drops the source pages behind it.
2. ``bigarr.from_zarr(store, path)`` reads it back into a new page-aligned ``.npy`` file, each
   batch flushed and dropped; missing chunks would come back as the fill value. With
   ``--codec none`` the chunk files are raw bytes and are read straight into the mapped output.
3. The two files are compared chunk by chunk.

Peak RSS stays near the budget whatever the size of the file, so ``--size`` can be many times
the machine's memory::

    python examples/zarr_roundtrip.py                        # 256 MiB, zstd
    python examples/zarr_roundtrip.py --size 32GiB --dir /scratch --codec blosc
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from typing import Any

import numpy as np
import zarr
import zarr.codecs

import bigarr

COLUMNS = 1024


def peak_rss() -> int:
    """Peak resident memory of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def generate(path: str, size: int, budget: int) -> bigarr.memmap:
    """A float32 image-like stack: smooth ramps plus noise (so it compresses somewhat)."""
    rows = max(1, size // (COLUMNS * 4))
    x = bigarr.create(path, (rows, COLUMNS), "f4", overwrite=True)
    ramp = np.linspace(0, 1, COLUMNS, dtype="f4")
    # Small pieces: the float64 temporaries below are 2-4x the piece.
    for chunk, block in x.iter_chunks(budget=max(budget // 8, COLUMNS * 4), prefetch=False,
                                 progress=None):
        rng = np.random.default_rng(chunk.rows.start)
        noise = rng.integers(0, 16, block.shape).astype("f4") / 16
        block[...] = ramp + noise + np.arange(chunk.rows.start, chunk.rows.stop)[:, None] % 7
        del block
    return x


def codec(name: str) -> Any:
    """The zarr compressors for ``--codec``."""
    return {
        "zstd": zarr.codecs.ZstdCodec(level=1),
        "blosc": zarr.codecs.BloscCodec(cname="lz4", clevel=5),
        "none": None,
    }[name]


def stored_on_disk(folder: str) -> tuple[int, int]:
    """Bytes and number of chunk files under a local zarr array (metadata files excluded)."""
    total = files = 0
    for root, _dirs, names in os.walk(folder):
        for name in names:
            if name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
                total += os.path.getsize(os.path.join(root, name))
                files += 1
    return total, files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="256MiB", help="size of the generated array")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--budget", default="64MiB", help="memory budget of one batch")
    parser.add_argument("--codec", default="zstd", choices=["zstd", "blosc", "none"])
    args = parser.parse_args()
    size, budget = bigarr.parse_size(args.size), bigarr.parse_size(args.budget)

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="zarr-roundtrip-") as folder:
        x = generate(os.path.join(folder, "stack.npy"), size, budget)
        print(f"source: {x.shape[0]:,} x {x.shape[1]} float32 ({x.nbytes / 2**30:.2f} GiB)")
        # One zarr chunk = up to 256 rows (1 MiB); a batch holds as many chunks as fit the
        # budget (from_zarr plans 3 batches in memory: decoded, written, flushing).
        chunks = (max(1, min(256, x.shape[0], budget // (3 * COLUMNS * 4))), COLUMNS)

        start = time.perf_counter()
        z = bigarr.to_zarr(x, os.path.join(folder, "stack.zarr"), chunks=chunks,
                           compressors=codec(args.codec), budget=budget)
        t_out = time.perf_counter() - start
        stored, nfiles = stored_on_disk(os.path.join(folder, "stack.zarr"))

        start = time.perf_counter()
        y = bigarr.from_zarr(os.path.join(folder, "stack.zarr"), os.path.join(folder, "back.npy"),
                             budget=budget)
        t_in = time.perf_counter() - start

        # Compare chunk by chunk; both iterators drop their pages behind them.
        same = all(np.array_equal(a, b) for (_, a), (_, b) in
                   zip(x.iter_chunks(budget // 2, progress=False), y.iter_chunks(budget // 2,
                                                                        progress=False),
                       strict=True))
        gib = x.nbytes / 2**30
        print(f"result: round trip {'identical' if same else 'DIFFERENT'}; zarr holds "
              f"{nfiles} chunk files of {z.chunks}, {stored / 2**20:.0f} MiB stored "
              f"({x.nbytes / max(stored, 1):.2f}x compression, codec {args.codec})")
        print(f"summary: to_zarr {gib / t_out:.2f} GiB/s ({t_out:.1f} s), from_zarr "
              f"{gib / t_in:.2f} GiB/s ({t_in:.1f} s) for {gib:.2f} GiB; peak RSS "
              f"{peak_rss() / 2**20:.0f} MiB = {peak_rss() / x.nbytes:.2f}x the file size")
        x.close()
        y.close()
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
