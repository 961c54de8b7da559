"""Linear algebra out of core against numpy in RAM, the BLAS rate, the disk and dask (issue 14).

Run: ``python bench/linalg_bench.py [--size 256MiB] [--budget 64MiB] [--repeat 3] [--dir DIR]``
(add ``--no-dask`` to skip dask, ``--only NAME`` to run the cases whose name contains it).
The data is one N x 64 float32 ``.npy`` file of ``--size``.
Every measurement runs in its own fresh interpreter, with OPENBLAS_CORETYPE and
OPENBLAS_L2_SIZE removed from its environment (the machine notes: they slow a current numpy;
unset both together, and record which kernel then runs, here threadpoolctl's report), and
reports its wall time and its peak RSS added (VmHWM growth over the resident memory after the
imports, the peak reset by ``/proc/self/clear_refs``; for numpy this includes loading the
data). Times are min-max over ``--repeat`` runs; the peak RSS is the largest of them.

Cases:

``blas syrk f32`` / ``blas syrk f64``
    ``x.T @ x`` of the same N x 64 shape, in RAM (f64: the first quarter of the rows, to keep
    the memory small): the machine's BLAS rate, GFLOP/s counted as ``2 N p^2``;
``blas syrk f64, 4 MiB blocks`` (and ``, 1 thread``)
    the same quarter as 8192-row float64 blocks, ``sum(b.T @ b)``: the BLAS rate of the
    shape bigarr's cov kernel actually calls (its sub-blocks), with BLAS's own threads or one
    (bigarr runs BLAS on one thread per engine thread, ``cores // threads``);
``numpy cov (in RAM)``
    ``np.cov(x, rowvar=False)`` on the data loaded into memory (the load not timed);
``bigarr cov warm`` / ``cold``
    ``bigarr.cov(path, rowvar=False)`` with the file in the page cache, or evicted first;
    achieved GFLOP/s counted as ``2 N p^2`` (bigarr computes in float64);
``disk read limit``
    a plain sequential read of the evicted file (GB/s);
``dask cov``
    ``da.cov(da.from_array(np.load(path, mmap_mode="r")), rowvar=False).compute()``;
``bigarr svd`` / ``dask svd``
    tall-skinny singular values and right vectors: ``bigarr.linalg.svd(path)`` (TSQR, no U)
    and ``da.linalg.svd`` (dask's TSQR; it computes U's blocks too) on the same file, with
    ``compute(s, v)``.
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
from typing import Any

import numpy as np

COLS = 64
PRELUDE = """
import json, os, time
import numpy as np
def status(key):
    return int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) << 10
def evict(path):
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
def warm(path):
    buf = bytearray(1 << 22)
    with open(path, 'rb', buffering=0) as f:
        while f.readinto(buf):
            pass
P, B = {path!r}, {budget}
{imports}
{setup}
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
base = status('VmRSS')
{before}
t0 = time.perf_counter()
{op}
seconds = time.perf_counter() - t0
print(json.dumps({{'seconds': seconds, 'grew': status('VmHWM') - base}}))
"""

CASES: dict[str, dict[str, str]] = {
    "blas syrk f32": {
        "imports": "", "setup": "x = np.load(P)", "before": "",
        "op": "g = x.T @ x"},
    "blas syrk f64": {
        "imports": "", "setup": "x = np.load(P)[: len(np.load(P, mmap_mode='r')) // 4]"
        ".astype(np.float64)", "before": "", "op": "g = x.T @ x"},
    "blas syrk f64, 4 MiB blocks": {
        "imports": "", "setup": "x = np.load(P)\nparts = [x[i:i + 8192].astype(np.float64) "
        "for i in range(0, len(x) // 4, 8192)]", "before": "",
        "op": "g = sum(b.T @ b for b in parts)"},
    "blas syrk f64, 4 MiB blocks, 1 thread": {
        "imports": "from threadpoolctl import threadpool_limits",
        "setup": "x = np.load(P)\nparts = [x[i:i + 8192].astype(np.float64) "
        "for i in range(0, len(x) // 4, 8192)]", "before": "",
        "op": "with threadpool_limits(1, user_api='blas'):\n"
              "    g = sum(b.T @ b for b in parts)"},
    "numpy cov (in RAM)": {
        "imports": "", "setup": "", "before": "x = np.load(P)",
        "op": "c = np.cov(x, rowvar=False)"},
    "bigarr cov warm": {
        "imports": "import bigarr", "setup": "warm(P)", "before": "",
        "op": "c = bigarr.cov(P, rowvar=False, budget=B, progress=False)"},
    "bigarr cov cold": {
        "imports": "import bigarr", "setup": "evict(P)", "before": "",
        "op": "c = bigarr.cov(P, rowvar=False, budget=B, progress=False)"},
    "disk read limit": {
        "imports": "", "setup": "evict(P)", "before": "",
        "op": "buf = bytearray(1 << 22)\nwith open(P, 'rb', buffering=0) as f:\n"
              "    while f.readinto(buf):\n        pass"},
    "dask cov": {
        "imports": "import dask.array as da", "setup": "warm(P)", "before": "",
        "op": "x = da.from_array(np.load(P, mmap_mode='r'))\n"
              "c = da.cov(x, rowvar=False).compute()"},
    "bigarr svd": {
        "imports": "from bigarr import linalg", "setup": "warm(P)", "before": "",
        "op": "r = linalg.svd(P, budget=B, progress=False)"},
    "dask svd": {
        "imports": "import dask, dask.array as da", "setup": "warm(P)", "before": "",
        "op": "x = da.from_array(np.load(P, mmap_mode='r'), chunks=('auto', -1))\n"
              "u, s, v = da.linalg.svd(x)\ns, v = dask.compute(s, v)"},
}
DASK = {"dask cov", "dask svd"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(key, None)
    src = Path(__file__).resolve().parent.parent / "src"
    env["PYTHONPATH"] = os.pathsep.join([str(src), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def _kernel_info(env: dict[str, str]) -> list[dict[str, Any]]:
    """threadpoolctl's report in a fresh interpreter with the benchmark's environment."""
    code = ("import json, numpy, threadpoolctl; "
            "print(json.dumps(threadpoolctl.threadpool_info()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=False)
    kernels = list(json.loads(proc.stdout)) if proc.returncode == 0 else []
    for k in kernels:  # the library's file name, not where this machine keeps it
        if "filepath" in k:
            k["filepath"] = os.path.basename(k["filepath"])
    return kernels


def _make(path: Path, size: int) -> int:
    rows = size // (COLS * 4)
    if not path.exists():
        x = np.lib.format.open_memmap(path, "w+", np.float32, (rows, COLS))
        mix = np.random.default_rng(0).standard_normal((COLS, COLS)).astype(np.float32)
        for i in range(0, rows, 1 << 16):
            rng = np.random.default_rng(i)
            block = rng.standard_normal((min(rows, i + (1 << 16)) - i, COLS), np.float32)
            x[i:i + len(block)] = block @ mix + 3.0
        x.flush()
        del x
    return rows


def run_case(name: str, path: Path, budget: int, env: dict[str, str]) -> dict[str, Any]:
    spec = CASES[name]
    script = PRELUDE.format(path=str(path), budget=budget, **spec)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:120]}
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
    import bigarr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=bigarr.parse_size, default="256MiB")
    parser.add_argument("--budget", type=bigarr.parse_size, default="64MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--no-dask", action="store_true")
    parser.add_argument("--only", action="append", default=[],
                        help="run only the cases whose name contains this (repeatable)")
    args = parser.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bigarr-linalg-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "x.npy"
    rows = _make(path, args.size)
    env = _env()
    try:
        import dask  # noqa: F401
        have_dask = not args.no_dask
    except ImportError:
        have_dask = False
    names = [n for n in CASES if (have_dask or n not in DASK)
             and (not args.only or any(o in n for o in args.only))]
    flops = 2.0 * rows * COLS * COLS
    nbytes = rows * COLS * 4
    results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for _ in range(args.repeat):  # interleaved, so load drifts touch every case alike
        for name in names:
            results[name].append(run_case(name, path, args.budget, env))
    print(f"{rows:,} x {COLS} float32 ({nbytes / 2**20:.0f} MiB), budget "
          f"{args.budget / 2**20:.0f} MiB, {args.repeat} runs each, min-max\n")
    print("| case | seconds | GFLOP/s (2Np^2) | GB/s of the file | peak RSS added (MiB) |")
    print("| --- | --- | --- | --- | --- |")
    summary = []
    for name in names:
        runs = results[name]
        errors = [r["error"] for r in runs if "error" in r]
        good = [r for r in runs if "error" not in r]
        if not good:
            print(f"| {name} | error: {errors[0]} | | | |")
            continue
        secs = [r["seconds"] for r in good]
        work = flops / (4 if name.startswith("blas syrk f64") else 1)
        lo, hi = min(secs), max(secs)
        gflops = "" if name == "disk read limit" else f"{work / hi / 1e9:.1f}-{work / lo / 1e9:.1f}"
        gbs = f"{nbytes / hi / 1e9:.2f}-{nbytes / lo / 1e9:.2f}" if "blas" not in name else ""
        peak = max(r["grew"] for r in good) / 2**20
        print(f"| {name} | {lo:.3f}-{hi:.3f} | {gflops} | {gbs} | {peak:.0f} |")
        summary.append({"case": name, "seconds": secs, "peak_rss_added": peak,
                        "errors": errors})
    kernels = _kernel_info(env)
    print("\nBLAS (threadpoolctl, OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset): "
          + "; ".join(f"{k.get('internal_api')} {k.get('version')} {k.get('architecture')} "
                      f"{k.get('threading_layer')} threads={k.get('num_threads')}"
                      for k in kernels if k.get("user_api") == "blas"))
    out = folder / "linalg_bench.json"
    out.write_text(json.dumps({"rows": rows, "cols": COLS, "budget": args.budget,
                               "repeat": args.repeat, "results": summary,
                               "threadpool_info": kernels}, indent=1))
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
