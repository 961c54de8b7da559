"""Peak RSS of a streaming sum under CPU contention (issue 11 point 11).

Each run is a fresh interpreter that sums a file of ``--size`` with ``--budget``, either with
``iter_chunks`` (prefetch and release-behind by a helper thread) or ``bigarr.sum`` (the
engine), while ``--busy`` processes burn CPU. It prints, per method, the peak RSS (VmHWM) above
the RSS before the run, in MiB, over ``--runs`` runs: min, median, max, and how many runs
exceeded ``budget + 64 MiB``.

    python bench/contention_rss.py --size 1GiB --budget 64MiB --runs 12 --busy 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import sys, numpy as np, bigarr
def hwm():
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) for l in f if l.startswith('VmHWM')) / 1024
a = bigarr.open(sys.argv[1])
np.add.reduce(np.ones(1 << 20))
base = hwm()
if sys.argv[2] == 'iter_chunks':
    total = 0.0
    for _c, v in a.iter_chunks(sys.argv[3], progress=False):
        total += float(v.sum())
else:
    total = float(bigarr.sum(a, budget=sys.argv[3], progress=False))
a.close()
print(hwm() - base)
"""


def main() -> int:
    import bigarr
    from bigarr._os.geometry import parse_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--budget", default="64MiB")
    parser.add_argument("--runs", type=int, default=12)
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where to write the data file")
    args = parser.parse_args()
    size, budget = parse_size(args.size), parse_size(args.budget)
    bound = budget / 2**20 + 64
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "ones.npy"
        bigarr.create(path, (size // 8,), "f8", fill=1.0).close()
        busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.busy)]
        try:
            peaks: dict[str, list[float]] = {"iter_chunks": [], "sum": []}
            for _ in range(args.runs):
                for how, got in peaks.items():
                    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), how,
                                          str(budget)], capture_output=True, text=True,
                                         check=True, env=dict(os.environ,
                                                              OPENBLAS_NUM_THREADS="1"))
                    got.append(float(out.stdout))
        finally:
            for p in busy:
                p.kill()
                p.wait()
    print(f"size {args.size}, budget {args.budget}, {args.busy} busy processes, "
          f"{args.runs} runs; peak RSS above baseline, MiB (bound {bound:.0f})")
    for how, got in peaks.items():
        over = sum(g > bound for g in got)
        print(f"{how:12} min {min(got):6.1f}  median {statistics.median(got):6.1f}  "
              f"max {max(got):6.1f}  over bound: {over}/{len(got)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
