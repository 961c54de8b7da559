"""A/B of two source trees of bigarr on one case, run alternately, for a suspected regression.

Run: ``python bench/ab_trees.py --a OLD/src --b NEW/src [--case standardize|map|demo] [--size 2GiB]
[--pairs 6] [--dir DIR] [--disk] [--json FILE]``. Linux only (``/proc/self/io``).

Each run is its own subprocess with ``PYTHONPATH`` set to one tree's ``src`` (build each tree's
native modules first: ``python setup.py build_ext --inplace`` in it). The cases:

``standardize``
    ``z = (x - x.mean(0)) / x.std(0); z.to_npy(...)`` over a warm float32 N x 32 ``.npy``
    written with ``write()`` (256 MiB budget, 2 threads), as ``bench/lazy_bench.py --only
    bigarr``: the time is from just before ``to_npy`` to just after ``os.sync()``.
``map``
    ``map_blocks(lambda b: b * 2 + 1, x, out=...)`` of the same warm input into a new file
    (``write.map_warm`` of ``bench/run.py``), the time up to ``os.sync()``.
``demo``
    The bigarr side of ``python -m bigarr demo`` (mean and std, ``z`` into a new file, min, max
    and a histogram of ``z``) over a float32 N x 32 file made by the demo's own generator.

Per run: wall seconds, CPU seconds (user + system, all threads), the process's bytes written
(``write_bytes``) and write calls (``syscw``) from ``/proc/self/io``. Then per pair the ratios
B / A of wall and CPU time, and their medians. On a machine other jobs load, wall times swing
with the disk and the CPU share; the paired ratios and the CPU seconds are what to compare.
``--disk`` also times a 1 GiB ``O_DIRECT`` write of zeros before each run (the disk's rate at
that moment; it adds that write to the disk's load).
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
from lazy_bench import lazy_data

CHILD = """
import json, os, resource, sys, time
import numpy as np
import bigarr
case, path, out = sys.argv[1:4]
def io():
    return {k: int(v) for k, v in (line.split(':') for line in open('/proc/self/io'))}
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
opts = dict(budget=256 << 20, threads=2, progress=False)
os.sync()  # what earlier runs and other jobs left dirty is not this run's to flush
x = bigarr.lazy(path)
i0, c0, t0 = io(), cpu(), time.perf_counter()
if case == 'standardize':
    ((x - x.mean(axis=0)) / x.std(axis=0)).to_npy(out, overwrite=True, **opts).close()
elif case == 'map':
    with bigarr.open(path) as a:
        bigarr.map_blocks(lambda b: b * 2 + 1, a, out=out, overwrite=True, **opts).close()
else:
    from bigarr._cli import demo
    demo._bigarr_pipeline(path, out, opts['budget'], opts['threads'], False)
os.sync()
t, c, i1 = time.perf_counter() - t0, cpu() - c0, io()
print(json.dumps({'wall': t, 'cpu': c, 'write_bytes': i1['write_bytes'] - i0['write_bytes'],
                  'syscw': i1['syscw'] - i0['syscw']}))
"""


def _input(case: str, folder: Path, size: int, src: str) -> Path:
    rows = size // 128
    path = folder / f"ab-{case}.npy"
    if case != "demo":  # written with write() as np.save does
        return lazy_data(folder, size, path.name)
    if path.exists() and np.load(path, mmap_mode="r").shape == (rows, 32):
        return path
    # the demo's own generator (a file filled through bigarr.create)
    code = ("import sys; from bigarr._cli import demo; "
            "demo.generate(sys.argv[1], int(sys.argv[2]), budget=256 << 20, progress=False)")
    subprocess.run([sys.executable, "-c", code, str(path), str(rows)], check=True,
                   env={**os.environ, "PYTHONPATH": src})
    return path


def _disk_write(folder: Path, nbytes: int = 1 << 30) -> float:
    """Seconds to write ``nbytes`` of zeros with ``O_DIRECT`` (16 MiB writes), file removed."""
    path = folder / "ab-disk.bin"
    buf = mmap.mmap(-1, 16 << 20)  # page-aligned, zeros
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_DIRECT", 0))
    try:
        t0 = time.perf_counter()
        for off in range(0, nbytes, len(buf)):
            os.pwrite(fd, buf, off)
        os.fsync(fd)
        return time.perf_counter() - t0
    finally:
        os.close(fd)
        path.unlink()


def main() -> None:
    import bigarr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--a", required=True, help="tree A's src folder (the old one)")
    parser.add_argument("--b", required=True, help="tree B's src folder (the new one)")
    parser.add_argument("--case", choices=["standardize", "map", "demo"], default="standardize")
    parser.add_argument("--size", type=bigarr.parse_size, default="2GiB")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--disk", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bigarr-ab-"))
    folder.mkdir(parents=True, exist_ok=True)
    trees = {"A": os.path.abspath(args.a), "B": os.path.abspath(args.b)}
    path = _input(args.case, folder, args.size, trees["B"])
    np.load(path, mmap_mode="r").sum()  # warm: in the page cache
    out = folder / "ab-out.npy"
    runs: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for i in range(args.pairs):
        for name in ("AB" if i % 2 == 0 else "BA"):  # ABBA..., so neither always goes first
            disk = _disk_write(folder) if args.disk else None
            proc = subprocess.run(
                [sys.executable, "-c", textwrap.dedent(CHILD), args.case, str(path), str(out)],
                env={**os.environ, "PYTHONPATH": trees[name]}, check=True, text=True,
                capture_output=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            if disk is not None:
                res["disk_1GiB"] = disk
            runs[name].append(res)
            load = os.getloadavg()[0]
            print(f"pair {i + 1} {name}: {res['wall']:.2f} s, {res['cpu']:.2f} CPU-s, "
                  f"{res['write_bytes'] / 2**30:.3f} GiB in {res['syscw']} writes, load {load:.1f}"
                  + (f", disk 1 GiB direct {disk:.2f} s" if disk is not None else ""), flush=True)
    out.unlink(missing_ok=True)
    print(f"\n{args.case}, {args.size >> 20} MiB float32 N x 32, 256 MiB budget, 2 threads; "
          f"A = {trees['A']}, B = {trees['B']}")
    for key in ("wall", "cpu"):
        a = [r[key] for r in runs["A"]]
        b = [r[key] for r in runs["B"]]
        ratios = [y / x for x, y in zip(a, b, strict=True)]
        print(f"{key:>4}: A {min(a):.2f}-{max(a):.2f}, B {min(b):.2f}-{max(b):.2f}; B/A per pair "
              f"{', '.join(f'{r:.2f}' for r in ratios)}; median {statistics.median(ratios):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"case": args.case, "size": args.size,
                                               "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
