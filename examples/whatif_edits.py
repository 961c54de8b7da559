"""What-if edits in private (copy-on-write) mode: try a cleaning step, inspect it, keep or drop it.

A sensor matrix (rows x channels, float32) has a few broken readings: NaNs and spikes. Cleaning
is tried on a private mapping of the file, so nothing reaches the disk until we decide:

1. An aggressive idea (clip every channel to mean +- 2 std) is tried on a sample of rows. Its
   ``dirty()`` report shows it would change thousands of good readings: ``discard()`` it.
2. A targeted fix (only NaNs and spikes become the channel median) runs over the whole file.
   ``dirty()`` shows exactly which rows changed; ``commit()`` writes just those pages back.

The scan reads through a separate read-only mapping, dropping each block after use, so resident
memory stays small: only edited pages cost memory (``scratch_bytes()``).

    python examples/whatif_edits.py                     # 64 MiB of generated data
    python examples/whatif_edits.py --size 8GiB --dir /data/scratch
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

import bigarr

CHANNELS = 16
BAD_RATE = 2e-5  # fraction of readings that are NaN, and again that are spikes
SPIKE = 1e6


def peak_rss() -> int:
    """Peak resident memory of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def blocks(nrows: int, rows_per_block: int, what: str) -> Iterator[tuple[int, int]]:
    """Row blocks with a progress bar (shown on a terminal only)."""
    starts = range(0, nrows, rows_per_block)
    for start in tqdm(starts, desc=what, unit="block", disable=None, leave=False):
        yield start, min(nrows, start + rows_per_block)


def generate(path: str, size: int, rows_per_block: int) -> tuple[int, int]:
    """Write the sensor matrix; return (NaN count, spike count) planted."""
    nrows = max(1, size // (CHANNELS * 4))
    x = bigarr.create(path, (nrows, CHANNELS), "f4", overwrite=True)
    nans = spikes = 0
    for a, b in blocks(nrows, rows_per_block, "generate"):
        rng = np.random.default_rng(a)
        block = rng.normal(20.0, 3.0, (b - a, CHANNELS)).astype(np.float32)
        flat = block.reshape(-1)
        bad = rng.random(flat.size)
        flat[bad < BAD_RATE] = np.nan
        flat[(bad >= BAD_RATE) & (bad < 2 * BAD_RATE)] = SPIKE
        nans += int((bad < BAD_RATE).sum())
        spikes += int(((bad >= BAD_RATE) & (bad < 2 * BAD_RATE)).sum())
        x[a:b] = block
        x.advise("dontneed", (a, b))  # written blocks need not stay resident
    x.close()
    return nans, spikes


def column_stats(ro: bigarr.memmap, rows_per_block: int) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """Mean, std and the fill value (the mean as float32) per channel, ignoring bad readings."""
    total = np.zeros(CHANNELS)
    total2 = np.zeros(CHANNELS)
    count = np.zeros(CHANNELS)
    for a, b in blocks(ro.shape[0], rows_per_block, "statistics"):
        block = np.asarray(ro[a:b], dtype=np.float64)
        good = np.isfinite(block) & (np.abs(block) < SPIKE / 10)
        total += np.where(good, block, 0).sum(axis=0)
        total2 += np.where(good, block * block, 0).sum(axis=0)
        count += good.sum(axis=0)
        ro.advise("dontneed", (a, b))
    mean = total / count
    std = np.sqrt(total2 / count - mean * mean)
    return mean, std, mean.astype(np.float32)


def try_clipping(ro: bigarr.memmap, ws: bigarr.memmap, rows: int, lo: np.ndarray,
                 hi: np.ndarray, fill: np.ndarray, rows_per_block: int) -> None:
    """What-if 1: clip every reading of the first ``rows`` rows to [lo, hi], as scratch edits."""
    for a, b in blocks(rows, rows_per_block, "try clipping"):
        block = np.asarray(ro[a:b])
        clipped = np.clip(np.nan_to_num(block, nan=fill), lo, hi)
        change = clipped != block
        ws[a:b][change] = clipped[change]  # writes (and copies) only the pages it changes
        ro.advise("dontneed", (a, b))


def fix_bad(ro: bigarr.memmap, ws: bigarr.memmap, fill: np.ndarray, rows_per_block: int) -> None:
    """What-if 2: replace NaNs and spikes with the channel mean, as scratch edits."""
    for a, b in blocks(ro.shape[0], rows_per_block, "targeted fix"):
        block = np.asarray(ro[a:b])
        bad = ~np.isfinite(block) | (np.abs(block) >= SPIKE / 10)
        if bad.any():
            ws[a:b][bad] = np.broadcast_to(fill, block.shape)[bad]
        ro.advise("dontneed", (a, b))


def count_bad(path: str, rows_per_block: int) -> int:
    """Bad readings left in the file, read through a fresh read-only mapping."""
    with bigarr.open(path, "r") as check:
        remaining = 0
        for a, b in blocks(check.shape[0], rows_per_block, "verify"):
            block = np.asarray(check[a:b])
            remaining += int((~np.isfinite(block) | (np.abs(block) >= SPIKE / 10)).sum())
            check.advise("dontneed", (a, b))
        del block
    return remaining


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="64MiB", help="size of the generated matrix")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--block", default="8MiB", help="rows scanned per step, as bytes")
    args = parser.parse_args()
    size = bigarr.parse_size(args.size)
    rows_per_block = max(1, bigarr.parse_size(args.block) // (CHANNELS * 4))

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="whatif-") as folder:
        path = os.path.join(folder, "sensors.npy")
        nans, spikes = generate(path, size, rows_per_block)
        file_bytes = os.path.getsize(path)
        start = time.perf_counter()

        ro = bigarr.open(path, "r")  # scans: never edited, blocks dropped after use
        ws = bigarr.open(path, "private")  # the scratch workspace
        nrows = ro.shape[0]
        mean, std, fill = column_stats(ro, rows_per_block)
        print(f"sensors: {nrows:,} rows x {CHANNELS} channels ({file_bytes / 2**20:.0f} MiB), "
              f"{nans} NaNs and {spikes} spikes planted")

        # What-if 1: clip everything to mean +- 2 std, on a 5% sample of rows first.
        sample = (0, max(1, nrows // 20))
        lo, hi = (mean - 2 * std).astype(np.float32), (mean + 2 * std).astype(np.float32)
        try_clipping(ro, ws, sample[1], lo, hi, fill, rows_per_block)
        trial = ws.dirty(sample)
        share = trial.count / ((sample[1] - sample[0]) * CHANNELS)
        print(f"what-if 1 (clip to mean +- 2 std, first {sample[1]:,} rows): changes "
              f"{trial.count:,} readings ({share:.1%}) in {trial.row_count:,} "
              f"rows, {ws.scratch_bytes() / 2**20:.1f} MiB of scratch pages")
        first = trial.rows[0].start
        if np.array_equal(np.asarray(ws[first]), np.asarray(ro[first])):
            raise SystemExit("the scratch edits should differ from the file")
        if share > 0.01:
            dropped = ws.discard(sample)
            print(f"  too many good readings changed: discard() dropped "
                  f"{dropped / 2**20:.1f} MiB of scratch pages; the file was never touched")
        assert not ws.dirty() and ws.scratch_bytes() == 0

        # What-if 2: replace only NaNs and spikes with the channel mean, everywhere.
        fix_bad(ro, ws, fill, rows_per_block)
        fix = ws.dirty()
        scratch = ws.scratch_bytes()
        print(f"what-if 2 (NaNs and spikes -> channel mean): changes {fix.count:,} readings in "
              f"{fix.row_count:,} rows; {scratch / 2**20:.2f} MiB of scratch pages "
              f"({scratch / file_bytes:.2%} of the file)")
        if fix.count != nans + spikes:
            raise SystemExit(f"expected {nans + spikes} fixes, dirty() reports {fix.count}")
        written = ws.commit()
        seconds = time.perf_counter() - start
        print(f"  commit() wrote {written / 2**20:.2f} MiB (only the edited pages) and "
              f"fdatasync'd; scratch left: {ws.scratch_bytes()} bytes")

        # Check from a fresh read-only mapping: no bad readings left, good ones untouched.
        remaining = count_bad(path, rows_per_block)
        print(f"result: {remaining} bad readings left in the file after commit")
        ws.close()
        ro.close()
        if remaining:
            raise SystemExit("the cleaning did not reach the file")
        # Timed: the statistics pass, the trial over the sample rows and the targeted pass.
        scanned = 2 * file_bytes + sample[1] * CHANNELS * 4
        print(f"summary: cleaned {nans + spikes} readings in a {file_bytes / 2**20:.0f} MiB file "
              f"in {seconds:.2f} s ({scanned / seconds / 2**30:.2f} GiB/s scanned); wrote "
              f"{written / 2**20:.2f} MiB; peak RSS {peak_rss() / 2**20:.0f} MiB vs file "
              f"{file_bytes / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
