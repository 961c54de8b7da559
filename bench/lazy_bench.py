"""Lazy expressions (issue 12): standardize-to-file against peers, and statistics in one pass.

Run: ``python bench/lazy_bench.py [--size 512MiB] [--budget 256MiB] [--runs 3] [--dir DIR]
[--cold] [--only NAME,...] [--json FILE]``. Linux only (peak RSS from ``/proc/self/status``).

The input is a numpy-written float32 ``.npy`` of N x 32 (``--size`` bytes). Each measurement
runs in its own subprocess, so each peak is its own: the time is from just before the work to
just after ``os.sync()`` (so written data reached the disk), with the CPU time (user + system,
all threads) over the same span, the peak is the growth of VmHWM
over the resident memory just before the work (the peak counter is reset with
``/proc/self/clear_refs``). ``--cold`` evicts the input from the page cache before each run
(``posix_fadvise(DONTNEED)``); otherwise the input is warm (read once before the first run).
Two threads everywhere (the issue's machine and this one have 2 cores).

Standardize ``z = (x - x.mean(0)) / x.std(0)`` into a new ``.npy``:

``bigarr``
    ``bigarr.lazy(P)``, ``z.to_npy(...)``: two passes, tiles of 512 KiB within chunks.
``bigarr (whole chunks)``
    The same with tiling off (``lazyeval.TILE_BYTES = 0``): chunk-sized temporaries.
``dask``
    ``da.from_array(np.load(P, mmap_mode='r'), chunks=(R, 32))`` with ``R`` the rows of
    bigarr's chunk, the same expression, ``da.store`` into ``open_memmap`` (threads scheduler).
``blosc2``
    ``blosc2.lazyexpr("(x - mean(x, axis=0)) / std(x, axis=0)", operands={"x": memmap})``,
    the operand being the ``np.load(mmap_mode='r')`` memmap; ``compute()`` gives an in-memory
    (compressed) NDArray, copied into ``open_memmap`` by 64 MiB row slices.
``numpy``
    ``(a - a.mean(0)) / a.std(0)`` on the memmap, ``np.save``.
``numexpr loop``
    Expert code: pass 1 sums and sums of squares (float64) over 64 MiB chunks, pass 2
    ``numexpr.evaluate("(x - m) / s", out=...)`` per 64 MiB chunk into ``open_memmap``.

A six-operation chain into a file, ``np.sqrt(abs((x - M) / S * 2.0 + 1.0)) - 0.5`` (one pass),
evaluated on whole chunks, in tiles (the default), and in tiles with numexpr.

Pass 2 of standardize alone (the mean and std computed before the clock starts, by numpy,
then passed as in-memory row vectors): ``pass 2: bigarr`` (``((x - M) / S).to_npy``) against
``pass 2: numexpr loop`` (the second loop of ``numexpr loop``).

Warm fused chain against the machine's memory bandwidth: ``chain warm: bigarr`` reduces the
six-operation chain, ``(np.sqrt(abs((x - M) / S * 2.0 + 1.0)) - 0.5).max(axis=0)``, over the
warm input in one pass (``bigarr.compute``, two threads), ``chain warm (2 ops): bigarr``
``((x - M) / S).max(axis=0)``; each run evicts the input and reads it once with ``read()``
before its clock starts, so it is wholly in the page cache, in the folios one sequential read
makes (pages evicted since the run began would plan the run cold, and pages faulted back
come in small folios, slower to map);
``machine.mem_bw_2t`` is the bench harness's own limit case (``threaded_sum`` of a resident
float32 array of the same size, two threads). These three run interleaved: each of ``--runs``
repeats runs each case once (the order rotated from repeat to repeat), and each chain's ratio to
the limit is printed per repeat (its run over the limit's run of the same repeat: median,
min-max, and how many repeats reach the issue's 0.7), in aggregate (the limit's total time over
the chain's) and by the best runs (GB/s: 1e9 bytes of input per second). They write nothing, so
their time stops before ``os.sync()`` (which waits for every dirty page of the machine, other
jobs' included; each case therefore syncs once before its clock starts, so it does not pay for
what earlier cases left).

The evaluator alone (``kernel: six ops (fused)`` and friends): one chunk of the plan's rows,
in memory, through the chain's evaluator ten times on one thread, with the native fused kernel
(``fused``, whole chunks) and without it (``numpy``: numpy's ufuncs on wide views, tile by tile);
``fused max`` folds the chain's maximum along axis 0 in the kernel instead of writing it (what
``chain warm`` runs); the CPU time per chunk and the input bytes per CPU second are printed.
The input file is written with ``write()``, as ``np.save`` writes (a file filled through a
mapping would sit in the page cache as single 4 KiB pages, and every mapped read of it pay a
page fault per few pages: 3.5 against 7 GB per CPU second for ``bigarr.sum`` on one core).

Per-column sum, min, max and std: ``one compute`` (``bigarr.compute`` of the four, one pass,
one native sweep per leaf for the four: ``_compute/multistat.py``) against ``four reductions``
(``bigarr.sum``, ``min``, ``max``, ``std``, four passes); ``one compute (kernel per
reduction)`` is the one pass with that joint kernel off (each reduction's own kernel sweeps the
chunk), as before it. The ratio of the medians is printed (the issue's target: at least 1.8x).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

PRELUDE = """
import os, resource, time, numpy as np
def status(key):
    return int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) << 10
P, OUT, B, R = {path!r}, {out!r}, {budget}, {rows}
{setup}
os.sync()  # what earlier cases (and other jobs) left dirty is not this case's to flush
if {cold}:
    fd = os.open(P, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
base = status('VmRSS')
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0 = cpu()
t0 = time.perf_counter()
{work}
if {sync}:
    os.sync()
print(time.perf_counter() - t0, status('VmHWM') - base, cpu() - c0)
"""

STANDARDIZE = {
    "bigarr": ("import bigarr",
               "x = bigarr.lazy(P)\n"
               "z = (x - x.mean(axis=0)) / x.std(axis=0)\n"
               "z.to_npy(OUT, budget=B, threads=2, overwrite=True, progress=False).close()"),
    "bigarr (whole chunks)": (
        "import bigarr\nfrom bigarr._compute import lazyeval\nlazyeval.TILE_BYTES = 0",
        "x = bigarr.lazy(P)\n"
        "z = (x - x.mean(axis=0)) / x.std(axis=0)\n"
        "z.to_npy(OUT, budget=B, threads=2, overwrite=True, progress=False).close()"),
    "dask": ("import dask, dask.array as da\ndask.config.set(scheduler='threads', num_workers=2)",
             "a = np.load(P, mmap_mode='r')\n"
             "x = da.from_array(a, chunks=(R, a.shape[1]))\n"
             "z = (x - x.mean(axis=0)) / x.std(axis=0)\n"
             "out = np.lib.format.open_memmap(OUT, 'w+', z.dtype, z.shape)\n"
             "da.store(z, out, lock=False)\n"
             "out.flush(); del out"),
    "blosc2": ("import blosc2\nblosc2.set_nthreads(2)",
               "a = np.load(P, mmap_mode='r')\n"
               "e = blosc2.lazyexpr('(x - mean(x, axis=0)) / std(x, axis=0)', "
               "operands={'x': a})\n"
               "r = e.compute()\n"
               "out = np.lib.format.open_memmap(OUT, 'w+', r.dtype, r.shape)\n"
               "step = (64 << 20) // (a.shape[1] * 4)\n"
               "for i in range(0, a.shape[0], step):\n"
               "    out[i:i + step] = r[i:i + step]\n"
               "out.flush(); del out"),
    "numpy": ("",
              "a = np.load(P, mmap_mode='r')\n"
              "np.save(OUT, (a - a.mean(axis=0)) / a.std(axis=0))"),
    "numexpr loop": (
        "import numexpr as ne\nne.set_num_threads(2)",
        "a = np.load(P, mmap_mode='r')\n"
        "n, k = a.shape\n"
        "step = (64 << 20) // (k * 4)\n"
        "s = np.zeros(k); ss = np.zeros(k)\n"
        "for i in range(0, n, step):\n"
        "    c = a[i:i + step].astype(np.float64)\n"
        "    s += c.sum(axis=0); ss += np.einsum('ij,ij->j', c, c)\n"
        "m = (s / n).astype(np.float32)\n"
        "sd = np.sqrt(ss / n - (s / n) ** 2).astype(np.float32)\n"
        "out = np.lib.format.open_memmap(OUT, 'w+', np.float32, (n, k))\n"
        "for i in range(0, n, step):\n"
        "    x = a[i:i + step]\n"
        "    ne.evaluate('(x - m) / sd', local_dict={'x': x, 'm': m, 'sd': sd},\n"
        "                out=out[i:i + step])\n"
        "out.flush(); del out"),
}

_CHAIN = ("x = bigarr.lazy(P)\n"
          "z = np.sqrt(abs((x - M) / S * 2.0 + 1.0)) - 0.5\n"
          "z.to_npy(OUT, budget=B, threads=2, overwrite=True, progress=False,\n"
          "         backend=BACKEND).close()")
_CHAIN_SETUP = ("import bigarr\nfrom bigarr._compute import lazyeval\n"
                "M = np.full(32, 7, np.float32); S = np.full(32, 3, np.float32)\n")
CHAIN = {
    "chain: whole chunks": (_CHAIN_SETUP + "lazyeval.TILE_BYTES = 0; BACKEND = 'numpy'",
                            _CHAIN),
    "chain: tiles": (_CHAIN_SETUP + "BACKEND = 'numpy'", _CHAIN),
    "chain: tiles + numexpr": (_CHAIN_SETUP + "BACKEND = 'numexpr'", _CHAIN),
}

_P2_SETUP = ("a = np.load(P, mmap_mode='r')\n"
             "M = a.mean(axis=0, dtype=np.float64).astype(np.float32)\n"
             "S = a.std(axis=0, dtype=np.float64).astype(np.float32)\n")
PASS2 = {
    "pass 2: bigarr": ("import bigarr\n" + _P2_SETUP,
                       "x = bigarr.lazy(P)\n"
                       "((x - M) / S).to_npy(OUT, budget=B, threads=2, overwrite=True,\n"
                       "                     progress=False).close()"),
    "pass 2: numexpr loop": (
        "import numexpr as ne\nne.set_num_threads(2)\n" + _P2_SETUP,
        "n, k = a.shape\n"
        "step = (64 << 20) // (k * 4)\n"
        "out = np.lib.format.open_memmap(OUT, 'w+', np.float32, (n, k))\n"
        "for i in range(0, n, step):\n"
        "    x = a[i:i + step]\n"
        "    ne.evaluate('(x - M) / S', local_dict={'x': x, 'M': M, 'S': S},\n"
        "                out=out[i:i + step])\n"
        "out.flush(); del out"),
}

# The input is evicted and read again (sequential read()s) before the clock: this machine's DAMON
# reclaim pages out idle parts of the page cache, so an input may have lost pages since the run
# began (and one not wholly cached is planned cold, read through the cold-read path), and pages
# faulted back come back in small folios, each mapped read then paying a fault per 64 KiB
# (harness_cache.prepare). Every run thus reads the cache one sequential read makes.
_BW_SETUP = ("import bigarr\nfrom pathlib import Path\nfrom harness_cache import evict, warm\n"
             "M = np.full(32, 7, np.float32); S = np.full(32, 3, np.float32)\n"
             "evict([Path(P)]); warm([Path(P)])")
BANDWIDTH = {
    "chain warm: bigarr": (
        _BW_SETUP,
        "x = bigarr.lazy(P)\n"
        "(np.sqrt(abs((x - M) / S * 2.0 + 1.0)) - 0.5).max(axis=0).compute(\n"
        "    budget=B, threads=2, progress=False)"),
    "chain warm (2 ops): bigarr": (
        _BW_SETUP,
        "x = bigarr.lazy(P)\n"
        "((x - M) / S).max(axis=0).compute(budget=B, threads=2, progress=False)"),
    "machine.mem_bw_2t": (
        "from harness_machine import threaded_sum\n"
        "arr = np.ones(os.path.getsize(P) // 4, dtype=np.float32)",
        "threaded_sum(arr, 2)"),
}

# The kernel alone: one chunk (R rows, in memory) through the chain's evaluator, the way a
# pass evaluates it (tiles of lazyeval.TILE_BYTES when the native kernel does not take it,
# whole otherwise), ten times, one thread; "numpy" is the same with the native program off.
_KERNEL_SETUP = """
import bigarr
from bigarr._compute import lazyeval, lazyflat
from bigarr._compute.lazyeval import Env
from bigarr._compute.lazyitems import item_of
a = np.ascontiguousarray(np.load(P, mmap_mode='r')[:R])
M = np.full(32, 7, np.float32); S = np.full(32, 3, np.float32)
lx = bigarr.lazy(a)
expr = {expr}
flat = lazyflat.flat_plan(expr.node)
if not {native}:
    flat.native = None
ids = list(item_of(expr.node).rows)
out = np.empty_like(a)
spans = [(0, R)] if flat.fused([a]) else lazyeval.tiles(R, [a])
def once():
    for t0, t1 in spans:
        env = Env({{j: a[t0:t1] for j in ids}}, {{}}, {{}}, slice(t0, t1))
        if {fold}:
            flat.extreme(env, t1 - t0, True)
        else:
            flat.run(env, t1 - t0, out[t0:t1])
once()
"""
_SIX = "np.sqrt(abs((lx - M) / S * 2.0 + 1.0)) - 0.5"
KERNEL = {
    f"kernel: {name} ({how})": (_KERNEL_SETUP.format(expr=expr, native=how != "numpy",
                                                     fold=how == "fused max"),
                               "for _ in range(10):\n    once()")
    for name, expr in (("six ops", _SIX), ("two ops", "(lx - M) / S"))
    for how in ("fused", "fused max", "numpy")
}

STATS = {
    "one compute": ("import bigarr",
                    "x = bigarr.lazy(P)\n"
                    "bigarr.compute(x.sum(axis=0), x.min(axis=0), x.max(axis=0), "
                    "x.std(axis=0), budget=B, threads=2, progress=False)"),
    "one compute (kernel per reduction)": (
        "import bigarr\nfrom bigarr._compute import multistat\nmultistat.ENABLED = False",
        "x = bigarr.lazy(P)\n"
        "bigarr.compute(x.sum(axis=0), x.min(axis=0), x.max(axis=0), "
        "x.std(axis=0), budget=B, threads=2, progress=False)"),
    "four reductions": ("import bigarr",
                        "kw = dict(axis=0, budget=B, threads=2, progress=False)\n"
                        "bigarr.sum(P, **kw); bigarr.min(P, **kw); bigarr.max(P, **kw)\n"
                        "bigarr.std(P, **kw)"),
}


#: CPU seconds (user + system, all threads) of each run, by case: unlike the wall time, hardly
#: changed by other jobs on a shared machine.
CPU: dict[str, list[float]] = defaultdict(list)


def _run(name: str, setup: str, work: str, args: argparse.Namespace, path: Path,
         rows: int) -> tuple[float, int] | str:
    code = PRELUDE.format(path=str(path), out=str(path.with_name("out.npy")),
                          budget=args.budget, rows=rows, setup=setup, cold=args.cold,
                          work=work, sync=name not in BANDWIDTH and name not in KERNEL)
    env = dict(os.environ)
    src = Path(__file__).resolve().parent.parent / "src"
    here = Path(__file__).resolve().parent  # the harness's helpers (machine limits)
    env["PYTHONPATH"] = os.pathsep.join([str(src), str(here), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=3600)
    if proc.returncode:
        return f"failed: {proc.stderr.strip().splitlines()[-1][:80]}"
    seconds, peak, cpu = proc.stdout.split()[-3:]
    CPU[name].append(float(cpu))
    return float(seconds), int(peak)


def lazy_data(folder: Path, size: int, name: str = "x.npy") -> Path:
    """``folder/name``: float32 ``N x 32`` of ``size`` bytes, normal (mean 7, std 3), made
    once (kept while its shape fits)."""
    n = size // 128
    path = folder / name
    if not path.exists() or np.load(path, mmap_mode="r").shape != (n, 32):
        # written with write() as np.save does (not through a mapping, whose page cache would
        # be single 4 KiB pages, every mapped read then paying a page fault per few pages)
        rng = np.random.default_rng(0)
        with open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": (n, 32)})
            for i in range(0, n, 1 << 18):
                rows = min(1 << 18, n - i)
                (rng.standard_normal((rows, 32), dtype=np.float32) * 3 + 7).tofile(f)
    return path


def main() -> None:
    import bigarr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=bigarr.parse_size, default="512MiB")
    parser.add_argument("--budget", type=bigarr.parse_size, default="256MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--only", default="")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bigarr-lazy-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = lazy_data(folder, args.size)
    if not args.cold:
        np.load(path, mmap_mode="r").sum()  # warm: in the page cache
    x = bigarr.lazy(path)
    plan = ((x - x.mean(axis=0)) / x.std(axis=0)).explain(budget=args.budget, threads=2)
    rows = max(1, plan.steps[-1].chunk_bytes // 128)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    results: dict[str, list[tuple[float, int]] | str] = {}
    cases = [("standardize", STANDARDIZE), ("pass 2", PASS2), ("chain", CHAIN),
             ("bandwidth", BANDWIDTH), ("kernel", KERNEL), ("stats", STATS)]
    for group, table in cases:
        if group == "bandwidth":  # interleaved: each repeat runs every case once
            _interleaved(table, only, args, path, rows, results)
            continue
        for name, (setup, work) in table.items():
            if only and name not in only:
                continue
            got: list[tuple[float, int]] = []
            for _ in range(args.runs):
                r = _run(name, setup, work, args, path, rows)
                if isinstance(r, str):
                    results[name] = r
                    break
                got.append(r)
            else:
                results[name] = got
            print(_line(name, results[name]), flush=True)
    ratios = _bandwidth_ratios(results, args.size)
    p2 = {name: min(t for t, _ in res) for name in PASS2
          if not isinstance(res := results.get(name, "missing"), str)}
    if len(p2) == len(PASS2):
        cpu = {name: min(CPU[name]) for name in PASS2}
        print(f"pass 2: bigarr at {p2['pass 2: numexpr loop'] / p2['pass 2: bigarr']:.2f}x the "
              f"numexpr loop's speed (best runs); CPU {cpu['pass 2: bigarr']:.2f} s against "
              f"{cpu['pass 2: numexpr loop']:.2f} s")
    st = {name: sorted(t for t, _ in res) for name in STATS
          if not isinstance(res := results.get(name, "missing"), str)}
    if "four reductions" in st:
        four = st["four reductions"][len(st["four reductions"]) // 2]
        for name in st:
            if name != "four reductions":
                mid = st[name][len(st[name]) // 2]
                print(f"{name}: {four / mid:.2f}x four reductions (medians; target 1.8x), "
                      f"CPU {min(CPU[name]):.2f} s against {min(CPU['four reductions']):.2f} s")
    for name in KERNEL:
        if CPU.get(name):
            print(f"{name}: {min(CPU[name]) / 10 * 1e3:.1f} ms CPU per chunk of {rows} rows "
                  f"({rows * 128 / (min(CPU[name]) / 10) / 1e9:.2f} GB/s of input per core)")
    with_out = path.with_name("out.npy")
    if with_out.exists():
        with_out.unlink()
    print(f"\n{args.size >> 20} MiB float32 N x 32, budget {args.budget >> 20} MiB, 2 threads, "
          f"{'cold' if args.cold else 'warm'} input, {args.runs} runs, chunk rows {rows}; "
          f"bigarr plan:\n{plan}")
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"size": args.size, "budget": args.budget, "cold": args.cold, "runs": args.runs,
             "results": results, "cpu": CPU, "ratios": ratios}, indent=1))


def _interleaved(table: dict[str, tuple[str, str]], only: set[str], args: argparse.Namespace,
                 path: Path, rows: int, results: dict[str, Any]) -> None:
    """Run the cases of ``table`` in repeats, each repeat running every case once (the order
    rotated from one repeat to the next), so each run has a limit run of the same moment."""
    names = [name for name in table if not only or name in only]
    if not names:
        return
    got: dict[str, list[tuple[float, int]]] = {name: [] for name in names}
    failed: dict[str, str] = {}
    for r in range(args.runs):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if name not in failed:
                res = _run(name, *table[name], args, path, rows)
                if isinstance(res, str):
                    failed[name] = res
                else:
                    got[name].append(res)
    for name in names:
        results[name] = failed.get(name, got[name])
        print(_line(name, results[name]), flush=True)


def _bandwidth_ratios(results: dict[str, Any], size: int) -> dict[str, dict[str, Any]]:
    """Each warm chain's throughput over ``machine.mem_bw_2t``'s: per repeat (the run over the
    limit's run of the same repeat), in aggregate (total time against total time) and by the
    best runs; printed, and returned for the JSON."""
    limit = results.get("machine.mem_bw_2t")
    out: dict[str, dict[str, Any]] = {}
    if not isinstance(limit, list) or not limit:
        return out
    lt = [t for t, _ in limit]
    for name in BANDWIDTH:
        res = results.get(name)
        if name == "machine.mem_bw_2t" or not isinstance(res, list) or len(res) != len(lt):
            continue
        ct = [t for t, _ in res]
        per = sorted(a / b for a, b in zip(lt, ct, strict=True))
        mid = float(np.median(per))
        agg = sum(lt) / sum(ct)
        best = min(lt) / min(ct)
        met = sum(r >= 0.7 for r in per)
        out[name] = {"per_repeat": per, "median": mid, "aggregate": agg, "best": best}
        print(f"{name}: {size / min(ct) / 1e9:.2f} GB/s best, machine.mem_bw_2t "
              f"{size / min(lt) / 1e9:.2f} GB/s best; per repeat {mid:.2f}x "
              f"({per[0]:.2f}-{per[-1]:.2f}, {met}/{len(per)} at least 0.7x), aggregate "
              f"{agg:.2f}x, best runs {best:.2f}x (target 0.7x)")
    return out


def _line(name: str, res: list[tuple[float, int]] | str) -> str:
    if isinstance(res, str):
        return f"| {name} | {res} | |"
    ts = [t for t, _ in res]
    ps = [p / 2**20 for _, p in res]
    cs = CPU.get(name) or [math.nan]
    return (f"| {name} | {min(ts):.2f}-{max(ts):.2f} s | {min(ps):.0f}-{max(ps):.0f} MiB "
            f"| {min(cs):.2f}-{max(cs):.2f} s |")


if __name__ == "__main__":
    main()
