"""The sort's in-memory kernels per dtype: the native radix sort against numpy's sorts.

Run: ``python bench/sort_kernels.py [--n 16Mi] [--repeat 3]``.
For each dtype, CPU seconds (``time.process_time``, so other processes' load weighs less than
on wall time; best of the repeats) of one core sorting ``n`` values already in memory:

* ``radix``: the native stable LSD radix sort (``_radix.c``; needs the built extension);
* ``np.sort``: numpy's default sort in place (the vectorised quicksort on AVX2 and AVX-512
  machines for 4- and 8-byte types: unstable);
* ``np.sort stable``: numpy's stable sort in place (radix sort for 1- and 2-byte types, timsort
  otherwise);
* ``stable_sort``: what the external sort runs (``bigarr._compute.runs.stable_sort``): the
  radix sort for 1- and 2-byte types, numpy's default sort plus the put-back of the zeros' and
  NaNs' order otherwise.

Values: float ``standard_normal() * 1000`` (int types: the same, cast). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np

DTYPES = ["int8", "int16", "float16", "int32", "float32", "int64", "float64"]


def best(fn: Any, x: np.ndarray[Any, Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        y = x.copy()
        t0 = time.process_time()
        fn(y)
        times.append(time.process_time() - t0)
    return min(times)


def main() -> None:
    import bigarr
    from bigarr._compute import native
    from bigarr._compute.runs import stable_sort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=bigarr.parse_size, default="16MiB",
                        help="values to sort (a size: 16MiB means 16 Mi values)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{args.n} values, CPU seconds, best of {args.repeat}; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")
    print("| dtype | radix | np.sort | np.sort stable | stable_sort | np.sort / radix |")
    print("| --- | --- | --- | --- | --- | --- |")
    for dtype in DTYPES:
        x = (rng.standard_normal(args.n) * 1000).astype(dtype)
        tmp, out = np.empty_like(x), np.empty_like(x)
        radix = (best(lambda y, out=out, tmp=tmp: native.radix_sort(y, out, tmp), x, args.repeat)
                 if native.radix_sortable(x.dtype) else float("nan"))
        plain = best(lambda y: y.sort(), x, args.repeat)
        stable = best(lambda y: y.sort(kind="stable"), x, args.repeat)
        ours = best(lambda y: stable_sort(y, y), x, args.repeat)
        print(f"| {dtype} | {radix:.3f} | {plain:.3f} | {stable:.3f} | {ours:.3f} "
              f"| {plain / radix:.2f}x |")


if __name__ == "__main__":
    main()
