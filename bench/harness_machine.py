"""Machine facts for result files, and the machine's throughput limits.

The limits give cases a "fraction of what this machine can do":

* :func:`threaded_sum` sums an in-memory float32 array split over threads
  (numpy releases the GIL in reductions).  With 1 and 2 threads it bounds
  what a numpy ``sum`` over already-resident data can reach.
* :func:`sequential_read` reads a file start to end with large ``readinto``
  calls.  After eviction this is the cold sequential disk throughput through
  the page cache, the ceiling for any cold scan.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness_cache import evict
from harness_proc import read_meminfo_kib

READ_BUFFER = 16 << 20
"""Default ``readinto`` buffer for :func:`sequential_read` (bytes)."""


def threaded_sum(arr: np.ndarray, threads: int) -> float:
    """Sum a 1-D array with ``threads`` threads, each over a contiguous slice.

    Parameters
    ----------
    arr : numpy.ndarray
        Array to sum (resident in memory for a bandwidth measurement).
    threads : int
        Number of threads (1 runs in the calling thread).

    Returns
    -------
    float
        The sum of the per-slice sums.
    """
    bounds = np.linspace(0, arr.shape[0], threads + 1).astype(np.int64)
    parts = [arr[bounds[i] : bounds[i + 1]] for i in range(threads)]
    if threads == 1:
        return float(parts[0].sum())
    results = [0.0] * threads

    def work(i: int) -> None:
        results[i] = float(parts[i].sum())

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(results)


def sequential_read(path: Path, bufsize: int = READ_BUFFER) -> int:
    """Read a file from start to end with ``readinto`` and return the byte count."""
    buf = bytearray(bufsize)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def memory_bandwidth(nbytes: int = 512 << 20, threads: int = 1, rounds: int = 4) -> float:
    """Measure in-process float32 ``sum`` throughput over resident memory.

    Parameters
    ----------
    nbytes : int
        Array size (bytes); well above the CPU caches.
    threads : int
        Threads summing in parallel.
    rounds : int
        Passes over the array; the best pass counts.

    Returns
    -------
    float
        Throughput (GB/s, 1e9 bytes per second).
    """
    arr = np.ones(nbytes // 4, dtype=np.float32)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        threaded_sum(arr, threads)
        best = min(best, time.perf_counter() - t0)
    return arr.nbytes / best / 1e9


def cold_read_throughput(path: Path, bufsize: int = READ_BUFFER) -> float:
    """Evict ``path`` from the page cache, read it once, return GB/s."""
    evict([path])
    t0 = time.perf_counter()
    n = sequential_read(path, bufsize)
    return n / (time.perf_counter() - t0) / 1e9


def _mount_of(path: Path) -> tuple[str, str, str] | None:
    """Return ``(device numbers, fs type, source)`` of the mount holding ``path``."""
    best: tuple[int, tuple[str, str, str]] | None = None
    target = str(path.resolve())
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        pre, _, post = line.partition(" - ")
        parts, after = pre.split(), post.split()
        if len(parts) < 5 or len(after) < 2:
            continue
        mnt = re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and (best is None or len(mnt) > best[0]):
            best = (len(mnt), (parts[2], after[0], after[1]))
    return None if best is None else best[1]


def read_ahead_kb(path: Path) -> int | None:
    """Return ``read_ahead_kb`` of the block device backing ``path``, if findable."""
    dev = os.stat(path).st_dev
    majmin = f"{os.major(dev)}:{os.minor(dev)}"
    candidates = [
        Path(f"/sys/dev/block/{majmin}/queue/read_ahead_kb"),
        Path(f"/sys/dev/block/{majmin}/../queue/read_ahead_kb"),  # a partition
        Path(f"/sys/class/bdi/{majmin}/read_ahead_kb"),
    ]
    for candidate in candidates:
        try:
            return int(candidate.read_text())
        except (OSError, ValueError):
            continue
    return None


def _first_line(path: str, prefix: str = "") -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith(prefix):
                    return line.split(":", 1)[-1].strip() if prefix else line.strip()
    except OSError:
        return None
    return None


def _git_commit(where: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(data_dir: Path) -> dict[str, Any]:
    """Collect the facts a result file should carry about this machine.

    Parameters
    ----------
    data_dir : Path
        The benchmark data folder (its disk's readahead and file system count).

    Returns
    -------
    dict
        JSON-serialisable facts; unknown ones are ``None``.  No paths.
    """
    mem = read_meminfo_kib(("MemTotal", "SwapTotal"))
    mount = _mount_of(data_dir)
    return {
        "cpu_model": _first_line("/proc/cpuinfo", "model name"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)),
        "mem_total_bytes": mem.get("MemTotal", 0) * 1024 or None,
        "swap_total_bytes": mem.get("SwapTotal", 0) * 1024,
        "kernel": platform.release(),
        "arch": platform.machine(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "page_size": os.sysconf("SC_PAGE_SIZE"),
        "data_fs": mount[1] if mount else None,
        "data_device": mount[0] if mount else None,
        "read_ahead_kb": read_ahead_kb(data_dir),
        "transparent_hugepage": _first_line("/sys/kernel/mm/transparent_hugepage/enabled"),
        "git_commit": _git_commit(Path(__file__).resolve().parent),
        "platform": sys.platform,
    }
