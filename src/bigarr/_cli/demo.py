"""``bigarr demo``: generate a dataset, run one pipeline two ways, compare time and peak RSS.

The pipeline standardizes an N x F float32 feature matrix and summarises the result:

1. column means and standard deviations (two reductions over the input);
2. ``z = (x - mean) / std`` written to a new file (an out-of-core map);
3. min, max and a histogram of ``z`` (three reductions over the output).

It runs once with plain :class:`numpy.memmap` code (the way most people write it) and once as
the same numpy on bigarr's lazy arrays (planned into 4 passes, chunked, threaded, within a memory
budget), each in its own subprocess so that
each side's peak RSS is its own. The parent only generates the data, starts the two workers and
prints the comparison; every heavy step happens in a worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigarr._os.geometry import format_bytes
from bigarr.errors import BigArrError, DiskFullError, FileExistsError_

__all__ = ["run_demo"]

FEATURES = 32
"""Columns of the generated matrix."""
BINS = 20
"""Histogram bins over ``HIST_RANGE``."""
HIST_RANGE = (-5.0, 5.0)
_RESULT_TAG = "BIGARR-DEMO-RESULT "
_ERROR_TAG = "BIGARR-DEMO-ERROR "
_MARGIN = 64 << 20  # bytes of free disk kept beyond the demo's files
_FILES = ("features.npy", "z_numpy.npy", "z_bigarr.npy")  # the input and the two outputs


@dataclass(frozen=True, slots=True)
class _Side:
    """What one worker measured and computed."""

    name: str
    """``"numpy.memmap"`` or ``"bigarr"``."""
    ok: bool
    """False when the worker failed (for example killed for lack of memory)."""
    seconds: float = 0.0
    """Wall time of the pipeline, in seconds."""
    peak_rss: int = 0
    """Peak resident set size of the worker process, in bytes."""
    result: dict[str, Any] | None = None
    """Means, standard deviations, min, max and histogram counts."""
    failure: str = ""
    """Why the worker failed."""


def peak_rss() -> int:
    """Peak resident set size of this process in bytes (VmHWM on Linux, else ru_maxrss)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _column_params(features: int) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    rng = np.random.default_rng(7)
    loc = rng.uniform(-5, 5, features).astype(np.float32)
    scale = rng.uniform(0.5, 4, features).astype(np.float32)
    return loc, scale


def generate(path: str, rows: int, *, budget: int, progress: Any) -> None:
    """Write an ``rows`` x :data:`FEATURES` float32 matrix of shifted, scaled normal noise.

    Each chunk's values depend only on its first row, so the file is the same for any budget.
    """
    import bigarr

    loc, scale = _column_params(FEATURES)
    with bigarr.create(path, (rows, FEATURES), np.float32, overwrite=True) as x:
        for chunk, view in x.iter_chunks(budget=budget, progress=progress, prefetch=False):
            rng = np.random.default_rng([2024, chunk.rows.start])
            block = rng.standard_normal(view.shape, dtype=np.float32)
            block *= scale
            block += loc
            view[...] = block
            del view


def _numpy_pipeline(src: str, dst: str) -> dict[str, Any]:
    """The pipeline as plain numpy.memmap code, written carefully.

    The statistics accumulate in float64 (``dtype=np.float64``), as numpy's documentation
    advises for float32 data: a float32 ``x.mean(axis=0)`` over millions of rows sums row by row
    in float32 and drifts far from the true mean.
    """
    x = np.load(src, mmap_mode="r")
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = x.std(axis=0, dtype=np.float64).astype(np.float32)
    z = np.lib.format.open_memmap(dst, mode="w+", dtype=np.float32, shape=x.shape)
    z[:] = (x - mean) / std
    z.flush()
    hist, _ = np.histogram(z, bins=BINS, range=HIST_RANGE)
    return {"mean": mean.tolist(), "std": std.tolist(), "min": float(z.min()),
            "max": float(z.max()), "hist": hist.tolist()}


def _bigarr_pipeline(src: str, dst: str, budget: int, threads: int,
                     progress: Any) -> dict[str, Any]:
    """The same pipeline written as numpy on lazy arrays, which bigarr plans into passes.

    The statistics accumulate in float64 (``dtype=np.float64``) and are cast to float32, as on
    the numpy side. Mean and std share one pass over the input, ``z`` takes a second into its
    file, min and max of ``z`` share one pass over the output and the histogram takes one more:
    4 passes, counted from the plans; the numpy side reads ``x`` three times and ``z`` three
    times.
    """
    import bigarr

    opts: dict[str, Any] = {"budget": budget, "threads": threads, "progress": progress}
    x = bigarr.lazy(src)
    stats = (x.mean(axis=0, dtype=np.float64), x.std(axis=0, dtype=np.float64))
    # Reductions of the same depth share one pass in bigarr.compute, so the pair costs what the
    # costlier of the two costs alone.
    passes = max(s.explain(budget=budget, threads=threads).passes for s in stats)
    mean, std = (np.asarray(v, dtype=np.float32) for v in bigarr.compute(*stats, **opts))
    z = (x - mean) / std
    passes += z.explain(budget=budget, threads=threads).passes
    with z.to_npy(dst, overwrite=True, **opts) as out:
        zl = bigarr.lazy(out)
        extremes = (zl.min(), zl.max())
        passes += max(e.explain(budget=budget, threads=threads).passes for e in extremes)
        lo, hi = bigarr.compute(*extremes, **opts)
        hist, _ = bigarr.histogram(out, bins=BINS, range=HIST_RANGE, **opts)
        passes += 1  # a histogram with a given range is one pass
    return {"mean": mean.tolist(), "std": std.tolist(), "min": float(lo), "max": float(hi),
            "hist": np.asarray(hist).tolist(), "passes": passes}


def _worker(argv: list[str]) -> int:
    """Entry point of a worker subprocess: ``SIDE SRC DST BUDGET THREADS PROGRESS``."""
    side, src, dst, budget, threads, progress = argv
    prog: Any = {"auto": None, "on": True, "off": False}[progress]
    start = time.perf_counter()
    try:
        if side == "numpy":
            result = _numpy_pipeline(src, dst)
        else:
            result = _bigarr_pipeline(src, dst, int(budget), int(threads), prog)
    except (BigArrError, OSError, MemoryError) as exc:
        print(_ERROR_TAG + f"{type(exc).__name__}: {exc}", flush=True)
        return 1
    seconds = time.perf_counter() - start
    out = {"seconds": seconds, "peak_rss": peak_rss(), "result": result}
    print(_RESULT_TAG + json.dumps(out), flush=True)
    return 0


def _run_side(name: str, side: str, src: str, dst: str, budget: int, threads: int,
              progress: Any) -> _Side:
    flag = {None: "auto", True: "on", False: "off"}.get(progress, "off")
    cmd = [sys.executable, "-m", "bigarr._cli.demo", side, src, dst, str(budget), str(threads),
           flag]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_TAG) and proc.returncode == 0:
            data = json.loads(line[len(_RESULT_TAG):])
            return _Side(name, True, data["seconds"], data["peak_rss"], data["result"])
        if line.startswith(_ERROR_TAG):
            return _Side(name, False, failure=line[len(_ERROR_TAG):])
    if proc.returncode < 0:
        why = f"killed by signal {-proc.returncode}" + (
            " (out of memory?)" if proc.returncode == -9 else "")
    else:
        why = f"exited with status {proc.returncode}"
    return _Side(name, False, failure=why)


def check_budget(budget: int, threads: int) -> None:
    """Refuse a budget the pipeline cannot run in, before generating gigabytes of data.

    A dry run of the pipeline's steps on a few in-memory rows plans memory exactly as the real
    run does (the plan depends on the budget and threads, not on the number of rows).

    Raises
    ------
    BudgetError
        If the budget is too small; the message quotes the smallest that works.
    """
    import bigarr

    # More rows than a probe block (1 MiB), so functions' temporaries are measured as in the
    # real run (a probe of the whole input charges them differently).
    rows = np.zeros(((2 << 20) // (FEATURES * 4) + 64, FEATURES), np.float32)
    opts: dict[str, Any] = {"budget": budget, "threads": threads, "progress": False}
    bigarr.std(rows, axis=0, **opts)
    bigarr.histogram(rows, bins=BINS, range=HIST_RANGE, **opts)
    bigarr.map_blocks(np.negative, rows, out=np.empty_like(rows), **opts)


def _free_bytes(directory: str) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _available_memory() -> int | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _compare(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, str]:
    """Do the two sides agree, within float32 rounding? Returns (ok, one-line explanation)."""
    std = np.asarray(b["std"])
    mean_err = float(np.max(np.abs(np.asarray(a["mean"]) - b["mean"]) / std))
    std_err = float(np.max(np.abs(np.asarray(a["std"]) - std) / std))
    ha, hb = np.asarray(a["hist"]), np.asarray(b["hist"])
    moved = int(np.abs(ha - hb).sum()) // 2
    total = max(int(hb.sum()), 1)
    ext = max(abs(a["min"] - b["min"]), abs(a["max"] - b["max"]))
    ok = mean_err < 1e-3 and std_err < 1e-3 and moved <= 1e-4 * total + 2 and ext < 1e-2
    text = (f"mean differs by {mean_err:.1e} std, std by {std_err:.1e} (relative), min/max by "
            f"{ext:.1e}; {moved} of {total} values in a different histogram bin")
    return ok, text


def run_demo(*, size: int, directory: str | None, keep: bool, budget: int, threads: int,
             progress: Any) -> int:
    """Generate ``size`` bytes of data, run the pipeline both ways and print the comparison.

    Returns the exit status: 0 when bigarr ran and (where numpy.memmap ran too) both agree.

    Raises
    ------
    DiskFullError
        If ``directory`` lacks room for the input and one output (checked before writing).
    FileExistsError_
        If ``directory`` already holds a file of one of the demo's names (it would be replaced,
        then deleted).
    BudgetError
        If ``budget`` is too small for the pipeline (checked before writing).
    """
    rows = max(1, size // (FEATURES * 4))
    nbytes = rows * FEATURES * 4
    made: str | None  # a directory the demo created, removed at the end unless --keep
    if directory is None:
        folder = made = tempfile.mkdtemp(prefix="bigarr-demo-")
    else:
        folder = os.path.abspath(directory)
        made = _missing_root(folder)
        for name in _FILES:  # the cleanup below deletes these names: they must be ours
            if os.path.lexists(path := os.path.join(folder, name)):
                raise FileExistsError_(f"{path} exists, and the demo writes and deletes a file "
                                       "of that name; pass another --dir")
        os.makedirs(folder, exist_ok=True)
    try:
        need = 2 * nbytes + _MARGIN
        free = _free_bytes(folder)
        if free < need:
            raise DiskFullError(
                f"the demo needs {format_bytes(need)} free in {folder} (a "
                f"{format_bytes(nbytes)} input and its output) but {format_bytes(free)} is "
                "free; pass a smaller --size or a --dir on a bigger disk"
            )
        check_budget(budget, threads)
        return _run(folder, rows, nbytes, budget, threads, progress, keep)
    finally:
        if not keep:
            for name in _FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, name))
            if made is not None:
                shutil.rmtree(made, ignore_errors=True)


def _missing_root(folder: str) -> str | None:
    """The outermost directory of ``folder`` that does not exist yet (None if it exists)."""
    root = None
    while not os.path.lexists(folder):
        root, folder = folder, os.path.dirname(folder)
    return root


def _run(folder: str, rows: int, nbytes: int, budget: int, threads: int, progress: Any,
         keep: bool) -> int:
    src = os.path.join(folder, "features.npy")
    print(f"bigarr demo: {format_bytes(nbytes)} float32 matrix, {rows:,} x {FEATURES}, in "
          f"{folder}", flush=True)
    print("pipeline: column mean and std, z = (x - mean) / std into a new file, then min, max "
          f"and a {BINS}-bin histogram of z", flush=True)
    start = time.perf_counter()
    print("[1/3] generating the data", flush=True)
    generate(src, rows, budget=budget, progress=progress)
    print(f"      {format_bytes(nbytes)} in {time.perf_counter() - start:.1f} s", flush=True)

    avail = _available_memory()
    numpy_need = 3 * nbytes  # file pages + the (x - mean) temporary + the output's pages
    print("[2/3] numpy.memmap pipeline (subprocess; numpy has no progress bar)", flush=True)
    if avail is not None and numpy_need > 0.8 * avail:
        ref = _Side("numpy.memmap", False, failure=(
            f"skipped: it would need about {format_bytes(numpy_need)} of RAM and "
            f"{format_bytes(avail)} is available"))
    else:
        ref = _run_side("numpy.memmap", "numpy", src, os.path.join(folder, "z_numpy.npy"),
                        budget, threads, progress)
        os.unlink(os.path.join(folder, "z_numpy.npy"))
    print(f"[3/3] bigarr pipeline (subprocess, {threads} thread(s), budget "
          f"{format_bytes(budget)})", flush=True)
    ours = _run_side("bigarr", "bigarr", src, os.path.join(folder, "z_bigarr.npy"), budget,
                     threads, progress)
    return _report(ref, ours, nbytes, threads, keep, folder)


def _report(ref: _Side, ours: _Side, nbytes: int, threads: int, keep: bool, folder: str) -> int:
    print(flush=True)
    print(f"{'':<22}{'time':>10}{'peak RSS':>14}{'RSS / file':>12}{'throughput':>14}")
    for side in (ref, ours):
        label = side.name + (f" ({threads} thr)" if side.name == "bigarr" else "")
        if not side.ok:
            print(f"{label:<22}{side.failure}")
            continue
        print(f"{label:<22}{side.seconds:>9.1f}s{format_bytes(side.peak_rss):>14}"
              f"{side.peak_rss / nbytes:>11.2f}x{format_bytes(nbytes / side.seconds) + '/s':>14}")
    if not ours.ok or ours.result is None:
        print(f"bigarr: error: the bigarr pipeline failed ({ours.failure})", file=sys.stderr)
        return 1
    status = 0
    if ref.ok and ref.result is not None:
        speed = ref.seconds / ours.seconds
        memory = ref.peak_rss / max(ours.peak_rss, 1)
        pace = f"{speed:.2f}x faster" if speed >= 1 else f"{1 / speed:.2f}x slower"
        print(f"bigarr vs numpy.memmap: {pace}, {memory:.1f}x less peak memory")
        agree, text = _compare(ref.result, ours.result)
        print(("results agree: " if agree else "RESULTS DIFFER: ") + text)
        status = 0 if agree else 1
    r = ours.result
    print(f"summary: {format_bytes(nbytes)} standardized; z in [{r['min']:.2f}, {r['max']:.2f}], "
          f"bigarr {ours.seconds:.1f} s at peak RSS {format_bytes(ours.peak_rss)} in "
          f"{r.get('passes', '?')} passes over the data")
    if keep:
        print(f"kept the files in {folder}")
    return status


if __name__ == "__main__":
    sys.exit(_worker(sys.argv[1:]))
