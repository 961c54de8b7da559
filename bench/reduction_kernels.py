"""Every reduction's throughput relative to ``sum`` on the same cached file (issue 17, point 3).

Run: ``python bench/reduction_kernels.py [--size 1GiB] [--repeat 5] [--threads 2,1]
[--names var,std,...] [--dir DIR] [--keep]``. The file is float32 with 32 columns
(``N x 32``), written once and read until it is in the page cache. Each repeat runs, for each
thread count and for ``axis=0`` and ``axis=None``, ``sum`` and then every other reduction (or
those of ``--names``) back to back (``histogram`` only without an axis, with numpy's default 10
bins and no range: a range pass, then a counting pass; ``histogram_range`` the same with
``range=(80, 120)`` given: one pass), so each ratio compares runs seconds
apart. A reduction's *ratio* in one repeat is ``sum``'s time over its own (1.0: as fast as
``sum``); the table shows the median ratio and its min-max over the repeats, and the median
GB/s. The last column is the 2-thread speed-up over 1 thread (medians). CPU seconds (the
process's user + system time) are recorded too, as a check on a shared machine where wall time
depends on other jobs. Prints a Markdown table and writes it, with every run, as JSON next to
the data; the file is deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

NAMES = ["sum", "mean", "var", "std", "min", "max", "argmin", "argmax", "count_nonzero",
         "histogram", "histogram_range"]


def _build(path: Path, rows: int) -> None:
    x = np.lib.format.open_memmap(path, "w+", np.float32, (rows, 32))
    rng = np.random.default_rng(0)
    step = 1 << 18
    for i in range(0, rows, step):
        block = rng.standard_normal((min(step, rows - i), 32), dtype=np.float32)
        x[i:i + step] = block * 3 + 100
    x.flush()
    del x


def _warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(16 << 20):
            pass


def _run(name: str, path: Path, axis: int | None, threads: int) -> tuple[float, float]:
    import bigarr

    fn = getattr(bigarr, "histogram" if name.startswith("histogram") else name)
    kwargs: dict[str, Any] = {"threads": threads, "progress": False}
    if name == "histogram_range":  # one pass: the data (normal * 3 + 100) fall in 80-120
        kwargs["range"] = (80.0, 120.0)
    elif name != "histogram":
        kwargs["axis"] = axis
    cpu0, t0 = os.times(), time.perf_counter()
    fn(str(path), **kwargs)
    wall, cpu1 = time.perf_counter() - t0, os.times()
    return wall, (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)


def main() -> None:
    import bigarr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=bigarr.parse_size, default="1GiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", default="2,1")
    parser.add_argument("--names", default=",".join(NAMES[1:]),
                        help="reductions to compare with sum (comma-separated)")
    parser.add_argument("--dir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the data file")
    args = parser.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bigarr-kernels-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = args.size // 128
    path = folder / f"kernels-{rows}x32.npy"
    thread_counts = [int(t) for t in args.threads.split(",")]
    names = ["sum"] + [n for n in args.names.split(",") if n and n != "sum"]
    try:
        if not path.exists():
            _build(path, rows)
        _warm(path)
        bigarr.sum(str(path), threads=max(thread_counts), progress=False)  # imports, first maps
        runs: list[dict[str, Any]] = []
        for r in range(args.repeat):
            for threads in thread_counts:
                for axis in (0, None):
                    for name in names:
                        if name.startswith("histogram") and axis is not None:
                            continue
                        wall, cpu = _run(name, path, axis, threads)
                        runs.append({"repeat": r, "threads": threads, "axis": axis,
                                     "name": name, "wall_s": wall, "cpu_s": cpu})
            print(f"repeat {r + 1}/{args.repeat} done", file=sys.stderr, flush=True)
        table = _table(runs, thread_counts, args.size, names)
        print(table)
        (folder / "reduction_kernels.json").write_text(json.dumps(
            {"size": args.size, "rows": rows, "repeat": args.repeat, "runs": runs}, indent=1))
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)


def _table(runs: list[dict[str, Any]], thread_counts: list[int], nbytes: int,
           names: list[str]) -> str:
    def pick(threads: int, axis: int | None, name: str) -> list[dict[str, Any]]:
        return [x for x in runs if x["threads"] == threads and x["axis"] == axis
                and x["name"] == name]

    lines = ["| reduction | axis | " + " | ".join(
        f"{t} thread{'s' if t > 1 else ''}: x sum (min-max), GB/s" for t in thread_counts)
        + " | cpu x sum | 2t/1t |", "| --- | --- |" + " --- |" * (len(thread_counts) + 2)]
    for axis in (0, None):
        for name in names:
            if name.startswith("histogram") and axis is not None:
                continue
            cells, medians = [], {}
            cpu_cell = ""
            for t in thread_counts:
                mine = pick(t, axis, name)
                base = {x["repeat"]: x for x in pick(t, axis, "sum")}
                ratios = [base[x["repeat"]]["wall_s"] / x["wall_s"] for x in mine]
                med = statistics.median(x["wall_s"] for x in mine)
                medians[t] = med
                cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-"
                             f"{max(ratios):.2f}), {nbytes / med / 1e9:.2f}")
                if t == thread_counts[0]:
                    cpu = [base[x["repeat"]]["cpu_s"] / x["cpu_s"] for x in mine]
                    cpu_cell = f"{statistics.median(cpu):.2f}"
            scale = (f"{medians[1] / medians[2]:.2f}" if 1 in medians and 2 in medians else "")
            lines.append(f"| {name} | {axis} | " + " | ".join(cells) + f" | {cpu_cell} | "
                         f"{scale} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
