"""Exact order statistics against the machine and numpy: sort, median, unique (issue 13).

Run: ``python bench/order_stats.py [--size 256MiB] [--budget 64MiB] [--repeat 3] [--dir DIR]
[--only CASE,...] [--cache cold|warm]``.
Each measurement runs in its own subprocess, with the page cache dropped for the data files
first (``posix_fadvise(DONTNEED)``: cold reads; with ``--cache warm`` the files are read once
before the runs instead, and each run finds them cached), and reports wall time, peak RSS growth
(``VmHWM`` over the resident memory just before the operation, reset with
``/proc/self/clear_refs``) and the bytes read from and written to storage (``/proc/self/io``;
a second pass over a file the page cache still holds reads nothing, so the passes are also
taken from the plan, ``LAST_PASSES``). Prints a Markdown table of min-max over the runs and
writes it as JSON next to the data. Linux only.

Rows:

* ``machine read+write``: sequential read of the float32 file plus a sequential write (and
  ``fdatasync``) of as many bytes, measured in the same invocation: the machine's own limit
  for one pass of the sort; ``sort`` is compared with that limit times its passes.
* ``bigarr.sort`` / ``np.sort (in RAM)`` (the array loaded first, untimed) /
  ``np.sort (memmap)`` (numpy on ``np.load(mmap_mode='r')``, loading it all).
* ``bigarr.median`` / ``np.median (memmap)`` / ``bigarr.sum (cold)`` (one cold read of the same
  file through the same engine: the floor a one-pass median can reach).
* ``bigarr.median (axis 0)`` / ``np.median (memmap; axis 0)``: the same file as N x 32, the
  median of each column (numpy's memmap passed to bigarr as it is).
* ``bigarr.unique`` / ``np.unique (memmap)`` / ``dask unique`` (when dask is installed) on an
  int32 file with 100 000 distinct values.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

PRELUDE = """
import os, time, json, numpy as np
def status(key):
    return int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) << 10
def io():
    d = dict(l.split(': ') for l in open('/proc/self/io').read().splitlines())
    return int(d['read_bytes']), int(d['write_bytes'])
F, U, D, B = {floats!r}, {ints!r}, {folder!r}, {budget}
for p in (F, U) if {cold!r} else ():
    fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
passes = None
{setup}
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
base = status('VmRSS')
r0, w0 = io()
t0 = time.perf_counter()
{op}
seconds = time.perf_counter() - t0
r1, w1 = io()
print(json.dumps({{"seconds": seconds, "peak": status('VmHWM') - base, "read": r1 - r0,
                  "written": w1 - w0, "passes": passes}}))
"""

CASES = {
    "machine read+write": ("", """
fd = os.open(F, os.O_RDONLY)
size = os.fstat(fd).st_size
out = os.open(D + '/limit.bin', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
buf = bytearray(8 << 20)
done = 0
while True:
    n = os.readv(fd, [buf])
    if not n:
        break
    os.write(out, memoryview(buf)[:n])
os.fdatasync(out); os.close(out); os.close(fd); os.unlink(D + '/limit.bin')
"""),
    "bigarr.sort": ("import bigarr\nfrom bigarr._compute import order", """
bigarr.sort(F, D + '/sorted.npy', budget=B, threads=2, progress=False, overwrite=True).close()
passes = order.LAST_PASSES[0]
"""),
    "np.sort (in RAM)": ("a = np.load(F)", "s = np.sort(a)"),
    "np.sort (memmap)": ("a = np.load(F, mmap_mode='r')", "s = np.sort(a)"),
    "bigarr.median": ("import bigarr\nfrom bigarr._compute import order", """
m = bigarr.median(F, budget=B, threads=2, progress=False)
passes = order.LAST_PASSES[0]
"""),
    "np.median (memmap)": ("a = np.load(F, mmap_mode='r')", "m = np.median(a)"),
    "bigarr.median (axis 0)": ("import bigarr\nfrom bigarr._compute import order", """
m = bigarr.median(np.load(F, mmap_mode='r').reshape(-1, 32), axis=0, budget=B, threads=2,
                  progress=False)
passes = order.LAST_PASSES[0]
"""),
    "np.median (memmap; axis 0)": ("a = np.load(F, mmap_mode='r').reshape(-1, 32)",
                                   "m = np.median(a, axis=0)"),
    "bigarr.sum (cold)": ("import bigarr",
                          "m = bigarr.sum(F, budget=B, threads=2, progress=False)"),
    "bigarr.unique": ("import bigarr", "u = bigarr.unique(U, budget=B, threads=2, progress=False)"),
    "np.unique (memmap)": ("a = np.load(U, mmap_mode='r')", "u = np.unique(a)"),
    "dask unique": ("import bigarr, dask\nx = bigarr.to_dask(U)",
                    "u = np.asarray(dask.array.unique(x).compute(num_workers=2))"),
}


def generate(folder: Path, size: int) -> tuple[Path, Path]:
    import bigarr

    floats, ints = folder / "floats.npy", folder / "ints.npy"
    n = size // 4
    for path, dtype in ((floats, "float32"), (ints, "int32")):
        if path.exists() and path.stat().st_size >= size:
            continue
        with bigarr.create(path, (n,), dtype, overwrite=True) as x:
            for chunk, view in x.iter_chunks("64MiB", progress=False, prefetch=False):
                rng = np.random.default_rng(chunk.index)
                if dtype == "float32":
                    view[:] = rng.standard_normal(view.shape, dtype=np.float32)
                else:
                    view[:] = rng.integers(0, 100_000, view.shape, dtype=np.int32)
    return floats, ints


def warm(*paths: Path) -> None:
    """Read each file once, so the page cache holds it (the ``--cache warm`` runs)."""
    buf = bytearray(16 << 20)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def run(case: str, floats: Path, ints: Path, folder: Path, budget: int,
        cold: bool = True) -> dict[str, float]:
    setup, op = CASES[case]
    code = textwrap.dedent(PRELUDE.format(floats=str(floats), ints=str(ints),
                                          folder=str(folder), budget=budget, cold=cold,
                                          setup=setup,
                                          op=textwrap.dedent(op)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=1800, check=False)
    if proc.returncode:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def span(values: list[float], fmt: str) -> str:
    lo, hi = min(values), max(values)
    return format(lo, fmt) if format(lo, fmt) == format(hi, fmt) else \
        f"{format(lo, fmt)}-{format(hi, fmt)}"


def main() -> None:
    import bigarr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=bigarr.parse_size, default="256MiB")
    parser.add_argument("--budget", type=bigarr.parse_size, default="64MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", help="where the data goes (default: a temporary directory)")
    parser.add_argument("--only", help="comma-separated cases to run (default: all); the "
                        "sort's ratio needs 'machine read+write' and 'bigarr.sort'")
    parser.add_argument("--cache", choices=("cold", "warm"), default="cold",
                        help="cold: each run starts with the files evicted (the default); "
                             "warm: the files are read once before the runs and stay cached")
    args = parser.parse_args()
    try:
        import dask  # noqa: F401
        cases = list(CASES)
    except ImportError:
        cases = [c for c in CASES if not c.startswith("dask")]
    if args.only:
        wanted = [c.strip() for c in args.only.split(",")]
        unknown = [c for c in wanted if c not in CASES]
        if unknown:
            parser.error(f"unknown cases {unknown}; choose from {list(CASES)}")
        cases = [c for c in cases if c in wanted]
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="order-bench-") as tmp:
        folder = Path(tmp)
        floats, ints = generate(folder, args.size)
        if args.cache == "warm":
            warm(floats, ints)
        runs: dict[str, list[dict[str, float]]] = {c: [] for c in cases}
        load = [os.getloadavg()[0]]
        for _ in range(args.repeat):
            for case in cases:
                runs[case].append(run(case, floats, ints, folder, args.budget,
                                      args.cache == "cold"))
        (folder / "sorted.npy").unlink(missing_ok=True)
        load.append(os.getloadavg()[0])
        report(runs, args.size, args.budget, args.cache)
        print(f"\nLoad average (1 min) at the start and the end: {load[0]:.1f}, {load[1]:.1f} "
              f"on {os.cpu_count()} CPUs")
        out = Path(args.dir or ".") / "order_stats.json"
        out.write_text(json.dumps({"size": args.size, "budget": args.budget,
                                   "cache": args.cache, "runs": runs,
                                   "load": load}, indent=1), encoding="utf8")
        print(f"\nJSON: {out}")


def report(runs: dict[str, list[dict[str, float]]], size: int, budget: int,
           cache: str = "cold") -> None:
    mib = 1 << 20
    print(f"{size // mib} MiB of float32 (int32 for unique), budget {budget // mib} MiB, "
          f"min-max of {len(next(iter(runs.values())))} runs, {cache} page cache\n")
    print("| case | seconds | peak RSS MiB | read MiB | written MiB | passes | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    limit = [r["seconds"] for r in runs.get("machine read+write", []) if "seconds" in r]
    sort_passes = [r["passes"] for r in runs.get("bigarr.sort", []) if r.get("passes")]
    per_pass = min(limit) if limit else float("nan")
    peers = {"bigarr.sort": None, "np.sort (in RAM)": "bigarr.sort",
             "np.sort (memmap)": "bigarr.sort", "np.median (memmap)": "bigarr.median",
             "np.median (memmap; axis 0)": "bigarr.median (axis 0)",
             "bigarr.sum (cold)": "bigarr.median",
             "np.unique (memmap)": "bigarr.unique", "dask unique": "bigarr.unique"}
    for case, results in runs.items():
        ok = [r for r in results if "seconds" in r]
        if not ok:
            print(f"| {case} | {results[0].get('error', 'failed')} | | | | | |")
            continue
        secs = [r["seconds"] for r in ok]
        ratio = ""
        if case == "bigarr.sort" and limit and sort_passes:
            ratio = (f"{span([s / (per_pass * max(sort_passes)) for s in secs], '.2f')}x the "
                     f"machine's limit for {max(sort_passes)} passes")
        elif peers.get(case):
            mine = [r["seconds"] for r in runs.get(str(peers[case]), []) if "seconds" in r]
            if mine and len(mine) == len(secs) == len(results):  # same repeat: by pairs
                pairs = [s / m for s, m in zip(secs, mine, strict=True)]
                ratio = f"{span(pairs, '.2f')}x bigarr's time by pairs"
            elif mine:
                ratio = f"{span([s / min(mine) for s in secs], '.1f')}x bigarr's time"
        passes = [r["passes"] for r in ok if r.get("passes") is not None]
        print(f"| {case} | {span(secs, '.2f')} | {span([r['peak'] / mib for r in ok], '.0f')} "
              f"| {span([r['read'] / mib for r in ok], '.0f')} "
              f"| {span([r['written'] / mib for r in ok], '.0f')} "
              f"| {span(passes, '.0f') if passes else ''} | {ratio} |")


if __name__ == "__main__":
    main()
