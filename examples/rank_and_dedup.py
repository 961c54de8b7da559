"""Rank rows by a score, keep the top 1%, deduplicate ids and take robust percentiles, out of core.

The table is N rows of (id, score, amount) in float64. ``bigarr.argsort(by=1)`` ranks the rows
by score (sorted runs, then a k-way merge; stable, so equal scores keep their order) into an
index file; ``bigarr.take`` gathers the top 1% of rows with reads in page order; ``bigarr.unique``
counts the distinct ids among them; ``bigarr.percentile`` gives exact percentiles of every
column (histogram passes, never a full sort); ``bigarr.sort(by=[0, 1])`` writes the table
ordered by id then score, and ``bigarr.searchsorted`` finds one id's rows in it. Resident memory
stays near the budget whatever the file size.

    python examples/rank_and_dedup.py                       # 1 GiB of generated data
    python examples/rank_and_dedup.py --size 20GiB --dir /data/scratch
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

COLUMNS = 3  # id, score, amount


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def peak_rss() -> int:
    """Peak resident memory of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def generate(path: str, size: int, budget: int) -> bigarr.memmap:
    """Rows of (id, score, amount): ids repeat (about 4 rows per id), scores are normal with a
    few extreme outliers, amounts are heavy-tailed."""
    rows = max(100, size // (COLUMNS * 8))
    table = bigarr.create(path, (rows, COLUMNS), "f8", overwrite=True)
    for chunk, block in table.iter_chunks(budget=budget // 4, prefetch=False):  # write-only
        rng = np.random.default_rng(chunk.rows.start)
        n = block.shape[0]
        block[:, 0] = rng.integers(0, max(1, rows // 4), n)
        block[:, 1] = rng.standard_normal(n)
        block[rng.random(n) < 1e-4, 1] *= 1e3  # outliers: the mean moves, percentiles do not
        block[:, 2] = rng.lognormal(3.0, 1.0, n)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=bigarr.parse_size, default="1GiB",
                        help="size of the generated table")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--budget", type=bigarr.parse_size, default="128MiB",
                        help="memory budget of each step")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir} is not a directory")
    size, budget = args.size, args.budget

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="rank-") as folder:
        table = generate(os.path.join(folder, "table.npy"), size, budget)
        n = table.shape[0]
        print(f"table: {n:,} rows x (id, score, amount) float64 ({mib(table.nbytes)})")
        opts = {"budget": budget, "threads": args.threads, "progress": None}
        start = time.perf_counter()

        # Rank: stable indices of the rows by score, ascending, written to a file.
        order = bigarr.argsort(table, os.path.join(folder, "order.npy"), by=1, **opts)
        k = max(1, n // 100)
        top_index = np.ascontiguousarray(order[n - k:][::-1])  # best first
        order.close()
        # Gather the top 1% of rows (reads sorted by page, scattered back into rank order).
        top = bigarr.take(table, top_index, os.path.join(folder, "top.npy"), **opts)
        assert bool(np.all(np.diff(top[:, 1]) <= 0)), "the top rows come best first"

        # Deduplicate the ids of the top rows.
        ids, counts = bigarr.unique(top[:, 0], return_counts=True, **opts)

        # Robust percentiles of every column, exact, without sorting the table.
        q = [1, 25, 50, 75, 99]
        pct = bigarr.percentile(table, q, axis=0, **opts)
        mean_score = float(bigarr.mean(table[:, 1], dtype=np.float64, **opts))

        # The table ordered by id then score; one id's rows found by binary search.
        by_id = bigarr.sort(table, os.path.join(folder, "by_id.npy"), by=[0, 1], **opts)
        wanted = float(top[0, 0])
        lo, hi = (int(bigarr.searchsorted(by_id[:, 0], wanted, side=side, **opts))
                  for side in ("left", "right"))
        seconds = time.perf_counter() - start

        iqr = pct[3, 1] - pct[1, 1]
        print(f"top 1%: {k:,} rows, scores {top[-1, 1]:.3g} to {top[0, 1]:.3g}; "
              f"{ids.size:,} distinct ids ({int((counts > 1).sum()):,} appear more than once)")
        print("percentiles " + ", ".join(f"p{p}" for p in q) + ":")
        for c, name in enumerate(("id", "score", "amount")):
            print(f"  {name:>6}: " + ", ".join(f"{v:.4g}" for v in pct[:, c]))
        print(f"score: median {pct[2, 1]:.4f}, IQR {iqr:.4f} (mean {mean_score:.4f}, moved by "
              "the outliers)")
        print(f"id {wanted:.0f} (of the best row): rows {lo:,} to {hi:,} of the table sorted by id")
        moved = 6 * table.nbytes  # argsort and sort: two reads and two writes, roughly, each
        print(f"summary: ranked and deduplicated {mib(table.nbytes)} in {seconds:.1f} s "
              f"({mib(moved / seconds)}/s of sort reads and writes); {ids.size:,} distinct ids "
              f"in the top 1%; peak RSS {mib(peak_rss())} = {peak_rss() / table.nbytes:.2f}x "
              "the file size")
        by_id.close()
        top.close()
        table.close()


if __name__ == "__main__":
    main()
