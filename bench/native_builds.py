"""The native kernels' builds against each other: GB of input per CPU second, one core.

Run: ``python bench/native_builds.py [--mib 64] [--repeat 5]``. ``setup.py`` builds
``_native.c`` three times on x86-64, for the baseline (``_native``), with ``-mavx2``
(``_native_avx2``) and with AVX-512 (``_native_avx512``); the widest the CPU runs is loaded
(``BIGARR_NATIVE_ISA=avx2`` or ``baseline`` caps it). This loads them all into one process
and times each kernel on the same in-memory float32 ``N x 32`` block (``--mib`` MiB: beyond
the caches at the default 64, in L2 at 0.25), each build in turn, ``--repeat`` times, by the
thread's CPU clock (so other jobs on the machine move the numbers less than wall time would).
Prints, per kernel, the best GB/s of each build and the two widest builds' ratio, as a Markdown
table; the results are also checked to be the same bits.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import bigarr
from bigarr._compute import lazyflat, native
from bigarr._compute.lazyeval import Env
from bigarr._compute.lazyitems import item_of

Array = np.ndarray[Any, Any]


def _use(dll: Any) -> None:
    """Point the wrappers of :mod:`bigarr._compute.native` at ``dll`` (one of the builds)."""
    native.lib = dll
    native._FUSED = native._fused(dll)
    native._STATS = native._stats(dll)
    native._RADIX = native._radix(dll)


def _chain(expr: Any, a: Array, fold: bool) -> Callable[[], Any]:
    flat = lazyflat.flat_plan(expr.node)
    assert flat.fused([a]), "the chain is not fused"
    ids = list(item_of(expr.node).rows)
    out = np.empty_like(a)
    rows = a.shape[0]

    def run() -> Any:
        env = Env({j: a for j in ids}, {}, {}, slice(0, rows))
        if fold:
            return flat.extreme(env, rows, True)
        return flat.run(env, rows, out)
    return run


def cases(a: Array) -> dict[str, Callable[[], Any]]:
    """The kernels to time on ``a`` (float32, C-contiguous ``N x 32``), by name."""
    flat = a.reshape(-1)
    lx = bigarr.lazy(a)
    m, s = np.full(32, 7, np.float32), np.full(32, 3, np.float32)
    six = np.sqrt(abs((lx - m) / s * 2.0 + 1.0)) - 0.5
    two = (lx - m) / s
    n = 100
    edges100 = np.linspace(-10.0, 30.0, n + 1)
    upper = np.append(edges100[1:n], np.inf)
    thresholds = np.linspace(-10, 30, 11).astype(np.float32)
    small = flat[: min(flat.size, 1 << 22)]  # the sort: 16 MiB at most
    sort_out, sort_tmp = np.empty_like(small), np.empty_like(small)
    return {
        "sum axis=0 (sum_cols)": lambda: native.sum_blocks(a, (0,)),
        "sum (sum_flat)": lambda: native.sum_blocks(flat, (0,)),
        "var axis=0 (var_cols)": lambda: native.var_blocks(a, (0,)),
        "var (var_flat)": lambda: native.var_blocks(flat, (0,)),
        "min and max (min_max)": lambda: native.min_max(flat),
        "argmax axis=0 (arg_cols)": lambda: native.arg_rows(a, True),
        "count_nonzero axis=0": lambda: native.count_rows(a),
        "four statistics (stats_cols)": lambda: native.stats_blocks(
            a, (0,), frozenset({"sum", "var", "min", "max"})),
        "histogram 10 bins (hist_above)": lambda: native.hist_above(flat, thresholds),
        "histogram 100 bins (hist_f4_f8)": lambda: native.hist_uniform(
            flat, -10.0, 30.0, 40.0, n, edges100, upper, np.zeros(n, np.int64), fast=True,
            margin=0.25),
        "fused six ops (store)": _chain(six, a, False),
        "fused six ops (max)": _chain(six, a, True),
        "fused two ops (store)": _chain(two, a, False),
        "fused two ops (max)": _chain(two, a, True),
        "radix sort (16 MiB at most)": lambda: native.radix_sort(small, sort_out, sort_tmp)
        and sort_out,
    }


def _bytes(name: str, a: Array) -> int:
    return min(a.nbytes, 1 << 24) if name.startswith("radix") else a.nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=64.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    builds = {name: native._open(module) for name, (module, _) in native.BUILDS.items()}
    missing = [name for name, dll in builds.items() if dll is None]
    if missing:
        raise SystemExit(f"not built or not loadable here: {', '.join(missing)}")
    rows = max(64, int(args.mib * 2**20) // 128)
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((rows, 32), dtype=np.float32) * 3 + 7)
    table = cases(a)
    best: dict[tuple[str, str], float] = {}
    first: dict[tuple[str, str], bytes] = {}
    for _ in range(args.repeat):
        for build, dll in builds.items():
            _use(dll)
            for name, fn in table.items():
                t = time.thread_time()
                got = fn()
                t = time.thread_time() - t
                key = (name, build)
                best[key] = min(best.get(key, np.inf), t)
                if key not in first:
                    first[key] = b"".join(np.asarray(v).tobytes() for v in (
                        got.values() if isinstance(got, dict) else
                        got if isinstance(got, tuple) else (got,)))
    names = list(builds)
    print(f"float32 {rows} x 32 ({a.nbytes / 2**20:.2f} MiB), best of {args.repeat}, "
          "GB of input per CPU second, one thread")
    print(f"| kernel | {' | '.join(names)} | {names[0]} / {names[1]} | same bits |")
    print("| --- |" + " --- |" * (len(names) + 2))
    for name in table:
        gbs = [_bytes(name, a) / max(best[(name, b)], 1e-9) / 1e9 for b in names]
        same = len({first[(name, b)] for b in names}) == 1
        print(f"| {name} | {' | '.join(f'{g:.2f}' for g in gbs)} | {gbs[0] / gbs[1]:.2f}x | "
              f"{'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
