"""The one-pass median's C kernel on one block in memory: thread CPU per sweep (issue 13).

Run: ``python bench/order_kernels.py [--mib 31] [--repeat 40]``.
Times ``ordnative.scan`` (pass 1's kernel for one column) on a block of standard-normal
float32 (the size of a median pass's chunk at a 256 MiB budget), histogram only and with one
window around the median holding about 1% of the values (as pass 1 gathers it), as thread
CPU time (``time.thread_time``: a shared machine's other jobs do not count), best of
``--repeat``. Compare builds by running it against each, interleaved.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from bigarr._compute import orderkeys, ordnative


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=31, help="block size, MiB of float32")
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    if not ordnative.available():
        raise SystemExit("the native extension is not built (python setup.py build_ext -i)")
    n = (args.mib << 20) // 4
    x = np.random.default_rng(0).standard_normal(n, dtype=np.float32).reshape(-1, 1)
    counts = np.zeros((1, 1 << 16), dtype=np.int64)
    nans = np.zeros(1, dtype=np.int64)
    lo, hi = orderkeys.keys_of(np.array([[-0.0126], [0.0126]], dtype=np.float32)).reshape(-1)
    window = (np.array([lo]), np.array([hi - lo]), np.zeros(1, dtype=np.int64),
              np.empty(n + 1, dtype=np.uint32))
    print(f"{args.mib} MiB of float32, thread CPU, best of {args.repeat}\n")
    print("| sweep | ms | GB/s | keys gathered |")
    print("| --- | --- | --- | --- |")
    for label, win in (("histogram only", None), ("histogram + one window", window)):
        best, got = float("inf"), 0
        for _ in range(args.repeat):
            t = time.thread_time()
            got = ordnative.scan(x, 16, counts, nans, windows=win) or 0
            best = min(best, time.thread_time() - t)
        print(f"| {label} | {best * 1e3:.2f} | {x.nbytes / best / 1e9:.2f} | {got} |")


if __name__ == "__main__":
    main()
