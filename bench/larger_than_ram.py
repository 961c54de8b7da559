"""The whole pipeline on a file larger than RAM (issue 17), against numpy, on demand.

Creates a float32 ``(N, 32)`` ``.npy`` of ``--size`` (default: 1.25 x MemTotal), filled through
``iter_chunks(direct=True)`` in shared mode with the flat sequence ``x.flat[k] = k % 251``; then
runs ``sum``, ``mean``, ``std``, ``min``, ``max``, ``histogram`` (251 bins over ``[0, 251)``) and
``argmax`` over the whole array, ``map_blocks`` (``2 * x``) into a new file, and a private open
(with a ``scratch_limit``) + edit of the first rows + ``commit``. numpy's memmap runs the same
reductions where that cannot take the machine down: each numpy step runs under ``RLIMIT_AS`` (the
mapping plus ``--numpy-slack``), so a full-size temporary (``std`` makes one) fails with
``MemoryError`` in its own process instead of waking the OOM killer; the row then says how much it
would have needed. Two disk rows give the reference rates: a sequential write of ``min(size, 4
GiB)`` with ``fdatasync`` (like ``dd conv=fdatasync``) and a cold sequential read of the data file.

Every step runs in a fresh interpreter, with the data evicted from the page cache first (as far
as the kernel lets a file larger than RAM be evicted), and reports wall time, GB/s (1e9 bytes
per second of the bytes the step reads or writes), peak RSS (``VmHWM`` above the interpreter's
RSS before the step), the maximum of system-wide ``Dirty + Writeback`` while it ran (sampled
every 20 ms; other processes' writes count too) and a check against closed-form values. The
files live in a temporary folder under ``--dir`` that is removed at the end, also on Ctrl-C or
SIGTERM.

    python bench/larger_than_ram.py --size 2GiB              # a quick run
    python bench/larger_than_ram.py                         # 1.25 x RAM: run on a quiet machine
    python bench/larger_than_ram.py --json out.json --dir /data

Needs about 2.1 x ``--size`` of free disk (the data, the ``map_blocks`` output, the write
probe), checked up front; ``--map-size`` maps only the first part of the data, for a disk with
less room.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

COLS = 32
PERIOD = 251  # x.flat[k] = k % 251; 32 * 251 is a multiple of 251, so rows repeat every 251

# ---- closed forms ------------------------------------------------------------------------------


def _series(n: int, power: int) -> int:
    """Sum of (k % 251) ** power over k < n, exactly."""
    full, rest = divmod(n, PERIOD)
    return full * sum(k ** power for k in range(PERIOD)) + sum(k ** power for k in range(rest))


def expected(rows: int) -> dict[str, Any]:
    n = rows * COLS
    s1, s2 = _series(n, 1), _series(n, 2)
    mean = s1 / n
    full, rest = divmod(n, PERIOD)
    return {"sum": float(s1), "mean": mean, "std": (s2 / n - mean * mean) ** 0.5,
            "min": 0.0, "max": float(min(n, PERIOD) - 1), "argmax": min(n, PERIOD) - 1,
            "histogram": [full + (k < rest) for k in range(PERIOD)]}


def edit_rows(rows: int) -> int:
    """Rows the private step sets to 1.0 (64 MiB of them, or a tenth of the file)."""
    return min(rows // 10, (64 << 20) // (COLS * 4))


# ---- the child: one step in a fresh interpreter ------------------------------------------------


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith(key + ":"))


def _fill(view: Any, start_row: int) -> None:
    """``view`` (rows from ``start_row``) = the sequence, without chunk-sized temporaries."""
    import numpy as np

    block = 64 * PERIOD  # rows per copy: 2 MiB of pattern
    pattern = (np.arange((block + PERIOD) * COLS, dtype=np.int64) % PERIOD).astype(np.float32)
    pattern = pattern.reshape(-1, COLS)
    for a in range(0, view.shape[0], block):
        b = min(view.shape[0], a + block)
        off = (start_row + a) % PERIOD
        view[a:b] = pattern[off:off + b - a]


def child(step: str, path: str, out: str, budget: str, threads: int) -> dict[str, Any]:
    import numpy as np

    import bigarr

    np.add.reduce(np.ones(1 << 16))  # numpy's lazy setup, before the baseline
    opt: dict[str, Any] = {"budget": budget, "threads": threads, "progress": False}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = _status("VmRSS")
    t0 = time.perf_counter()
    value: Any = None
    if step == "fill":
        rows = int(out)
        x = bigarr.create(path, (rows, COLS), np.float32, overwrite=True)
        for chunk, view in x.iter_chunks(budget, progress=False, direct=True):
            _fill(view, chunk.rows.start)
        x.close()
    elif step in ("sum", "mean", "std"):
        value = float(getattr(bigarr, step)(path, dtype=np.float64, **opt))
    elif step in ("min", "max"):
        value = float(getattr(bigarr, step)(path, **opt))
    elif step == "argmax":
        value = int(bigarr.argmax(path, **opt))
    elif step == "histogram":
        counts, _edges = bigarr.histogram(path, bins=PERIOD, range=(0, PERIOD), **opt)
        value = [int(c) for c in counts]
    elif step == "map_blocks":
        rows, out = out.split(":", 1)  # "ROWS:PATH": map the first ROWS rows
        src = bigarr.open(path)[:int(rows)]
        bigarr.map_blocks(lambda b: b * 2, src, out=out, overwrite=True, **opt).close()
        wall = time.perf_counter() - t0
        value = float(bigarr.sum(out, dtype=np.float64, **opt))  # the check, not timed
        return {"wall_s": wall, "rss": _status("VmHWM") - base, "value": value}
    elif step == "private":
        with bigarr.open(path, "private", scratch_limit=budget) as x:
            r = int(out)
            for _chunk, view in x[:r].iter_chunks(budget, progress=False):
                view[:] = 1.0
                x.commit()  # each chunk's scratch pages written back: within the limit
            value = float(x[:r].sum(dtype=np.float64))
    elif step.startswith("numpy "):
        a = np.load(path, mmap_mode="r")
        what = step.split()[1]
        try:
            if what == "argmax":
                value = int(a.argmax())
            elif what == "histogram":
                value = [int(c) for c in np.histogram(a, bins=PERIOD, range=(0, PERIOD))[0]]
            else:
                value = float(getattr(a, what)(dtype=np.float64) if what in ("sum", "mean")
                              else getattr(a, what)())
        except MemoryError as exc:
            return {"wall_s": time.perf_counter() - t0, "rss": _status("VmHWM") - base,
                    "error": f"MemoryError: {str(exc)[:80]}"}
    elif step == "disk write":
        size, buf = int(out), np.full(16 << 20, 7, np.uint8)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for pos in range(0, size, buf.nbytes):
                os.write(fd, buf[:min(buf.nbytes, size - pos)])
            os.fdatasync(fd)
        finally:
            os.close(fd)
    elif step == "disk read":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while os.read(fd, 16 << 20):
                pass
        finally:
            os.close(fd)
    else:
        raise SystemExit(f"unknown step {step!r}")
    return {"wall_s": time.perf_counter() - t0, "rss": _status("VmHWM") - base, "value": value}


# ---- the parent --------------------------------------------------------------------------------


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) << 10 for line in f if line.startswith(key + ":"))


def _evict(*paths: Path) -> None:
    for p in paths:
        if p.exists():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


class _Dirty:
    """Maximum of system-wide Dirty + Writeback while active (a sampling thread)."""

    def __init__(self) -> None:
        self.most = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.most = max(self.most, _meminfo("Dirty") + _meminfo("Writeback"))

    def __enter__(self) -> _Dirty:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _run_step(step: str, path: Path, out: str, args: argparse.Namespace,
              limit_as: int | None = None) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--child", step, str(path), out, args.budget,
            str(args.threads)]

    def limit() -> None:
        if limit_as is not None:
            resource.setrlimit(resource.RLIMIT_AS, (limit_as, limit_as))

    with _Dirty() as dirty:
        proc = subprocess.run(argv, capture_output=True, text=True, preexec_fn=limit,
                              timeout=args.timeout)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {proc.returncode}: {last[:100]}", "dirty": dirty.most}
    res: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    res["dirty"] = dirty.most
    return res


def _check(got: Any, want: Any) -> str:
    if got is None or want is None:
        return ""
    if isinstance(want, list):
        return "ok" if list(got) == want else "FAIL"
    if isinstance(want, int):
        return "ok" if got == want else f"FAIL ({got} != {want})"
    # relative 1e-5, as the bench harness: numpy's float32 accumulations stay inside it
    close = abs(got - want) <= 1e-5 * max(1.0, abs(want))
    return "ok" if close else f"FAIL ({got:.8g} != {want:.8g})"


def _size(text: str) -> int:
    from bigarr import parse_size

    return parse_size(text)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default=None,
                        help="data size, e.g. 2GiB (default: 1.25 x MemTotal, rounded up to GiB)")
    parser.add_argument("--map-size", default=None,
                        help="how much of the data map_blocks reads and writes anew, from the "
                             "start (default: all of it; less when the disk is short)")
    parser.add_argument("--budget", default="256MiB")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where the files go (default: the temp dir)")
    parser.add_argument("--numpy-slack", default="4GiB",
                        help="address space a numpy step may use beyond the mapping")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--skip-numpy", action="store_true")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        step, path, out, budget, threads = args.child
        print(json.dumps(child(step, path, out, budget, int(threads))))
        return 0

    ram = _meminfo("MemTotal")
    size = _size(args.size) if args.size else -(-ram * 5 // 4 // (1 << 30)) * (1 << 30)
    rows = size // (COLS * 4)
    size = rows * COLS * 4
    folder = Path(tempfile.mkdtemp(prefix="bigarr-larger-than-ram-", dir=args.dir))
    free = shutil.disk_usage(folder).free
    probe = min(size, 4 << 30)
    map_rows = min(rows, _size(args.map_size) // (COLS * 4)) if args.map_size else rows
    map_size = map_rows * COLS * 4
    if free < size + map_size + probe + (1 << 30):
        shutil.rmtree(folder)
        print(f"needs {(size + map_size + probe) / 2**30:.1f} GiB of free disk in "
              f"{folder.parent}; {free / 2**30:.1f} GiB free (--map-size asks for less)",
              file=sys.stderr)
        return 2
    # Ctrl-C and SIGTERM both end in the finally below (the running child is killed by run()).
    signal.signal(signal.SIGTERM, _interrupt)
    data, out = folder / "data.npy", folder / "twice.npy"
    want = expected(rows)
    r = edit_rows(rows)
    slack = _size(args.numpy_slack)
    steps: list[tuple[str, str, str, Any, int, int | None]] = [
        # name, child step, extra argument, expected value, bytes moved, address-space limit
        ("disk: write + fdatasync", "disk write", str(probe), None, probe, None),
        ("fill through iter_chunks(direct=True)", "fill", str(rows), None, size, None),
        ("disk: cold sequential read", "disk read", "", None, size, None),
        *[(name, name, "", want[name], size, None)
          for name in ("sum", "mean", "std", "min", "max", "histogram", "argmax")],
        (f"map_blocks 2*x to a new file ({map_size / 2**30:.1f} GiB)", "map_blocks",
         f"{map_rows}:{out}", 2.0 * _series(map_rows * COLS, 1), map_size, None),
    ]
    if not args.skip_numpy:
        steps += [(f"numpy memmap .{n}()", f"numpy {n}", "", want[n], size, size + slack)
                  for n in ("sum", "std", "max", "argmax", "histogram")]
    steps.append((f"private: edit {r * COLS * 4 >> 20} MiB + commit", "private", str(r),
                  float(r * COLS), r * COLS * 4, None))
    print(f"# larger than RAM: {size / 2**30:.2f} GiB float32 ({rows}, {COLS}); "
          f"RAM {ram / 2**30:.1f} GiB, swap {_meminfo('SwapTotal') / 2**30:.1f} GiB; "
          f"budget {args.budget}, threads {args.threads}\n")
    print("| step | time (s) | GB/s | peak RSS (MiB) | max Dirty+Writeback (MiB) | check |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    table: list[dict[str, Any]] = []
    try:
        for name, step, extra, value, moved, limit_as in steps:
            path = folder / "probe.bin" if step == "disk write" else data
            _evict(data, out)
            res = _run_step(step, path, extra, args, limit_as)
            if step == "disk write":
                path.unlink(missing_ok=True)
            err = res.get("error")
            if err and err.startswith("MemoryError"):
                err = f"{err.split(':')[0]} (would need about {size / 2**30:.1f} GiB more)"
            wall = res.get("wall_s")
            # a failed step moved an unknown part of its bytes: no rate for it
            row = {"step": name, "wall_s": wall,
                   "gbs": moved / wall / 1e9 if wall and not err else None,
                   "peak_rss_mib": res.get("rss", 0) / 2**20 if "rss" in res else None,
                   "max_dirty_mib": res["dirty"] / 2**20,
                   "check": err or _check(res.get("value"), value)}
            table.append(row)
            rate = "-" if row["gbs"] is None else f"{row['gbs']:.2f}"
            print(f"| {name} | {wall or 0:.2f} | {rate} | "
                  f"{row['peak_rss_mib'] or 0:.0f} | {row['max_dirty_mib']:.0f} | "
                  f"{row['check']} |", flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"size": size, "rows": rows, "ram": ram, "budget": args.budget,
             "threads": args.threads, "rows_table": table}, indent=1))
    return 1 if any(str(r["check"]).startswith(("FAIL", "exit")) for r in table) else 0


if __name__ == "__main__":
    sys.exit(main())
