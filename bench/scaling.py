"""Scaling sweep (issue 15 item 4): how time and peak RSS grow with the data's size.

For each size, four operations run on a float32 file of that many bytes, each in a fresh
interpreter so that its peak RSS (``VmHWM``) is its own:

``sum``
    ``bigarr.sum(x, axis=0)`` of an ``(N, 32)`` file: one streaming pass.
``map``
    ``bigarr.map_blocks(lambda b: b * 2 + 1, x, out=...)`` into a new file, until durable.
``standardize``
    ``z = (x - x.mean(axis=0)) / x.std(axis=0)`` as a lazy expression, ``z.to_npy(...)``:
    two passes over ``x``, one written output.
``sort``
    ``bigarr.sort`` of a 1-d float32 file of the same bytes (random values) into a new file.

With a fixed budget, time should grow linearly with the size and peak RSS stay flat. The
input is evicted from the page cache before each run (``--cache cold``, the default) or read
into it (``--cache warm``; sizes beyond RAM are cold anyway). Outputs are deleted after each
run; inputs are generated once per size in ``--data-dir`` and deleted at the end unless
``--keep-data``.

Writes ``bench/results/NAME.json`` (every run: operation, size, seconds, peak RSS and the RSS
at the start, so the growth is the run's own) and ``NAME.png`` (time and peak RSS growth
against size, log-log, with a line of slope 1 through the
smallest size's median time; needs matplotlib, ``pip install 'bigarr[bench]'``), and prints a
table::

    python bench/scaling.py                                  # 256 MiB, 512 MiB, 1 GiB
    python bench/scaling.py --sizes 256MiB,1GiB,4GiB,8GiB --repeat 3 --out scaling-8GiB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
OPS = ("sum", "map", "standardize", "sort")
DEFAULT_SIZES = "256MiB,512MiB,1GiB"
COLS = 32

# The child: one operation on one file, in its own interpreter. It prints one JSON line.
_CHILD = r"""
import json, os, sys, time
import numpy as np
import bigarr

op, src, out, budget, threads = sys.argv[1:6]
threads = int(threads)

def status(key):
    with open('/proc/self/status') as f:
        return int(f.read().split(key + ':')[1].split()[0]) << 10

with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # VmHWM back to the interpreter's resident memory after imports
base = status('VmRSS')
t0 = time.perf_counter()
if op == 'sum':
    check = float(bigarr.sum(src, axis=0, dtype=np.float64, budget=budget, threads=threads,
                             progress=False).sum())
elif op == 'map':
    y = bigarr.map_blocks(lambda b: b * 2 + 1, src, out=out, budget=budget, threads=threads,
                          progress=False)
    y.close()
    check = None
elif op == 'standardize':
    x = bigarr.lazy(src)
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    z.to_npy(out, budget=budget, threads=threads).close()
    check = None
elif op == 'sort':
    bigarr.sort(src, out, budget=budget, threads=threads, progress=False).close()
    check = None
else:
    raise SystemExit(f'unknown operation {op}')
seconds = time.perf_counter() - t0
peak = status('VmHWM')
if op == 'map':
    check = float(bigarr.sum(out, dtype=np.float64, budget='64MiB', progress=False))
elif op == 'standardize':
    m = bigarr.mean(out, axis=0, dtype=np.float64, budget='64MiB', progress=False)
    check = float(np.abs(m).max())  # the standardized columns have mean ~0
elif op == 'sort':
    with bigarr.open(out) as s:
        n = s.shape[0]
        probe = np.asarray(s[:: max(1, n // 4096)])
        check = float(bool(np.all(probe[:-1] <= probe[1:])))
print(json.dumps({'seconds': seconds, 'peak_rss_bytes': peak, 'base_rss_bytes': base,
                  'check': check}))
"""


def parse_size(text: str) -> int:
    """``"256MiB"`` -> bytes (B, KiB, MiB, GiB, TiB; a plain integer is bytes)."""
    units = {"TIB": 1 << 40, "GIB": 1 << 30, "MIB": 1 << 20, "KIB": 1 << 10, "B": 1}
    t = text.strip().upper()
    for unit, factor in units.items():
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * factor)
    return int(t)


def label(nbytes: int) -> str:
    """Bytes as the shortest of MiB or GiB that is exact, e.g. ``"256MiB"``, ``"8GiB"``."""
    return f"{nbytes >> 30}GiB" if nbytes % (1 << 30) == 0 else f"{nbytes >> 20}MiB"


def _env(src: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def make_inputs(folder: Path, nbytes: int, src: str) -> dict[str, Path]:
    """The two inputs of one size (created once): ``(N, 32)`` and 1-d float32, random values."""
    rows = max(1, nbytes // (4 * COLS))
    paths = {"table": folder / f"table-{label(nbytes)}.npy",
             "values": folder / f"values-{label(nbytes)}.npy"}
    code = (
        "import sys, numpy as np, bigarr\n"
        "path, shape, seed = sys.argv[1], tuple(int(s) for s in sys.argv[2].split(',')), "
        "int(sys.argv[3])\n"
        "x = bigarr.create(path, shape, np.float32, overwrite=True)\n"
        "for c, v in x.iter_chunks('64MiB', progress=False):\n"
        "    g = np.random.default_rng([seed, c.index])\n"
        "    v[...] = g.standard_normal(v.shape, dtype=np.float32) * 3 + 1\n"
        "x.close()\n"
    )
    for kind, shape in (("table", f"{rows},{COLS}"), ("values", f"{rows * COLS}")):
        if not paths[kind].exists():
            subprocess.run([sys.executable, "-c", code, str(paths[kind]), shape, "15"],
                           check=True, env=_env(src))
    return paths


def set_cache(path: Path, mode: str) -> None:
    """Evict ``path`` from the page cache (``cold``) or read it into it (``warm``)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if mode == "cold":
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        else:
            buf = bytearray(16 << 20)
            with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    finally:
        os.close(fd)


def run_one(op: str, inputs: dict[str, Path], folder: Path, budget: str, threads: int,
            cache: str, src: str, timeout: float) -> dict[str, Any]:
    """One operation in a fresh interpreter; its output deleted afterwards."""
    source = inputs["values" if op == "sort" else "table"]
    out = folder / f"out-{op}.npy"
    set_cache(source, cache)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD, op, str(source), str(out), budget, str(threads)],
            capture_output=True, text=True, timeout=timeout, env=_env(src))
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timeout after {timeout} s"}
    finally:
        for leftover in folder.glob("out-*"):
            leftover.unlink()
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr.strip().splitlines()[-1:] or ["?"]}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["ok"] = True
    return result


def _expected_check(op: str, nbytes: int) -> float | None:
    return {"sort": 1.0}.get(op)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and min-max of time and peak RSS per (operation, size)."""
    rows = []
    keys = sorted({(r["op"], r["bytes"]) for r in runs}, key=lambda k: (OPS.index(k[0]), k[1]))
    for op, nbytes in keys:
        ok = [r for r in runs if r["op"] == op and r["bytes"] == nbytes and r["ok"]]
        n_all = sum(1 for r in runs if r["op"] == op and r["bytes"] == nbytes)
        if not ok:
            rows.append({"op": op, "bytes": nbytes, "runs": f"0/{n_all}"})
            continue
        secs = [r["seconds"] for r in ok]
        peaks = [r["peak_rss_bytes"] - r["base_rss_bytes"] for r in ok]  # the run's own growth
        rows.append({
            "op": op, "bytes": nbytes, "runs": f"{len(ok)}/{n_all}",
            "seconds_median": statistics.median(secs), "seconds_min": min(secs),
            "seconds_max": max(secs), "gbps_median": nbytes / statistics.median(secs) / 1e9,
            "peak_rss_mib_median": statistics.median(peaks) / 2**20,
            "peak_rss_mib_min": min(peaks) / 2**20, "peak_rss_mib_max": max(peaks) / 2**20,
        })
    for row in rows:  # time per byte relative to the smallest size of the same operation
        first = next((r for r in rows if r["op"] == row["op"] and "seconds_median" in r), None)
        if first is not None and "seconds_median" in row:
            row["time_per_byte_vs_smallest"] = ((row["seconds_median"] / row["bytes"])
                                                / (first["seconds_median"] / first["bytes"]))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| operation | size | time s, median (min-max) | GB/s | time per byte vs smallest "
             "| peak RSS growth MiB, median (min-max) | runs |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "seconds_median" not in r:
            lines.append(f"| {r['op']} | {label(r['bytes'])} | failed | | | | {r['runs']} |")
            continue
        lines.append(
            f"| {r['op']} | {label(r['bytes'])} | {r['seconds_median']:.2f} "
            f"({r['seconds_min']:.2f}-{r['seconds_max']:.2f}) | {r['gbps_median']:.2f} | "
            f"{r['time_per_byte_vs_smallest']:.2f}x | {r['peak_rss_mib_median']:.0f} "
            f"({r['peak_rss_mib_min']:.0f}-{r['peak_rss_mib_max']:.0f}) | {r['runs']} |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path, budget: str) -> bool:
    """Time and peak RSS against size, one line per operation (log-log). False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        return False
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax_t.set_xscale("log")
    ax_m.set_xscale("log")
    for op in OPS:
        mine = [r for r in rows if r["op"] == op and "seconds_median" in r]
        if not mine:
            continue
        gib = np.array([r["bytes"] / 2**30 for r in mine])
        sec = np.array([r["seconds_median"] for r in mine])
        err = np.array([[r["seconds_median"] - r["seconds_min"] for r in mine],
                        [r["seconds_max"] - r["seconds_median"] for r in mine]])
        line = ax_t.errorbar(gib, sec, yerr=err, marker="o", capsize=3, label=op)
        ax_t.plot(gib, sec[0] * gib / gib[0], ls=":", color=line[0].get_color(), lw=1)
        ax_m.plot(gib, [r["peak_rss_mib_median"] for r in mine], marker="o", label=op)
    ax_t.set(xscale="log", yscale="log", xlabel="data size", ylabel="time (s)",
             title="time (dotted: linear in size)")
    ax_m.set(xscale="log", xlabel="data size", ylabel="peak RSS growth (MiB)",
             title=f"VmHWM minus RSS at the start, budget {budget}")
    ax_m.axhline(parse_size(budget) / 2**20, color="grey", ls="--", lw=1, label="budget")
    ax_m.set_ylim(bottom=0)
    ticks = sorted({r["bytes"] for r in rows})
    for ax in (ax_t, ax_m):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks([b / 2**30 for b in ticks], [label(b) for b in ticks], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES,
                        help=f"comma-separated sizes of each input (default {DEFAULT_SIZES}; "
                             "the issue's sweep: 256MiB,512MiB,1GiB,2GiB,4GiB,8GiB)")
    parser.add_argument("--ops", default=",".join(OPS), help="operations (default all)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per operation and size")
    parser.add_argument("--budget", default="256MiB", help="budget of every run")
    parser.add_argument("--threads", type=int, default=2, help="threads of every run")
    parser.add_argument("--cache", choices=("cold", "warm"), default="cold")
    parser.add_argument("--data-dir", default=None,
                        help="folder of the inputs and outputs (default: a new temporary one)")
    parser.add_argument("--keep-data", action="store_true", help="keep the inputs afterwards")
    parser.add_argument("--out", default="scaling", help="bench/results/NAME.{json,png}")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per run")
    args = parser.parse_args(argv)
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    ops = [o for o in args.ops.split(",") if o]
    bad = [o for o in ops if o not in OPS]
    if bad:
        parser.error(f"unknown operations {bad}; choose from {OPS}")
    src = str(BENCH.parent / "src")
    made = args.data_dir is None
    folder = Path(tempfile.mkdtemp(prefix="bigarr-scaling-") if made else args.data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    need = 2 * max(sizes) * 3  # two inputs of the largest size, an output and a sort's runs
    free = shutil.disk_usage(folder).free
    if need > free:
        parser.error(f"{folder} has {free >> 20} MiB free; the largest size needs about "
                     f"{need >> 20} MiB")
    runs: list[dict[str, Any]] = []
    try:
        for nbytes in sizes:
            inputs = make_inputs(folder, nbytes, src)
            for rep in range(args.repeat):
                for op in ops:  # interleaved: every operation once per repeat
                    r = run_one(op, inputs, folder, args.budget, args.threads, args.cache, src,
                                args.timeout)
                    r.update(op=op, bytes=nbytes, repeat=rep)
                    expected = _expected_check(op, nbytes)
                    if r["ok"] and expected is not None and r.get("check") != expected:
                        r["ok"], r["error"] = False, f"check {r.get('check')} != {expected}"
                    runs.append(r)
                    shown = (f"{r['seconds']:.2f} s, peak RSS {r['peak_rss_bytes'] / 2**20:.0f} "
                             "MiB" if r["ok"] else f"FAILED: {r.get('error')}")
                    print(f"[{label(nbytes)} {rep + 1}/{args.repeat}] {op}: {shown}",
                          flush=True)
            if not args.keep_data:
                for path in inputs.values():
                    path.unlink(missing_ok=True)
    finally:
        if made and not args.keep_data:
            shutil.rmtree(folder, ignore_errors=True)
    rows = summarize(runs)
    print()
    print(table(rows))
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    stem = results / args.out  # an absolute --out is used as it is
    given = list(argv if argv is not None else sys.argv[1:])
    for i, arg in enumerate(given):  # the data folder is this machine's, not the command's
        if arg == "--data-dir" and i + 1 < len(given):
            given[i : i + 2] = []
            break
        if arg.startswith("--data-dir="):
            given[i : i + 1] = []
            break
    command = "python bench/scaling.py " + " ".join(given)
    record = {
        "command": command.strip(),
        "config": {"sizes": sizes, "ops": ops, "repeat": args.repeat, "budget": args.budget,
                   "threads": args.threads, "cache": args.cache},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "kernel": platform.release(),
                    "load_average": os.getloadavg()},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "summary": rows, "runs": runs,
    }
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    drawn = plot(rows, stem.with_suffix(".png"), args.budget)
    print(f"\nwrote {stem}.json" + (" and .png" if drawn else
          " (no plot: pip install 'bigarr[bench]' for matplotlib)"))
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
