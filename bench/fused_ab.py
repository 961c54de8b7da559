"""The warm fused chain under builds of the kernel and layouts of its buffers, in one process.

Run: ``python bench/fused_ab.py --dir DIR [--size 2GiB] [--repeat 9] [--six]
[--variant NAME=FLAGS ...] [--misaligned]``.

Each ``--variant`` builds ``src/bigarr/_compute/_native.c`` (with ``_radix.c``) as a shared
library with ``setup.py``'s flags for its instruction set and then ``FLAGS`` (gcc flags, such as
``-DFUSED_PREFETCH2=0``): ``NAME`` starts with ``avx512``, ``avx2`` or ``baseline``, for the
instruction set (default: ``avx512=`` and ``avx2=``, this source as ``setup.py`` builds it). With
``--misaligned``, each variant also runs with the kernel's buffers (row vectors, accumulator,
intermediates: :func:`bigarr._compute.native.aligned_empty`) placed 16 bytes past a cache line,
as numpy's own allocations may be. The variants run in turn, their order rotated from repeat to
repeat, together with the limit, ``machine.mem_bw_2t`` of ``bench/run.py`` (``threaded_sum`` of
a resident float32 array of the file's size, two threads), once per repeat. Each run is
``bigarr.lazy(x.npy)``'s two-operation chain ``((x - M) / S).max(axis=0)`` (``--six``: the
six-operation one, ``(np.sqrt(abs((x - M) / S * 2.0 + 1.0)) - 0.5).max(axis=0)``), computed with
two threads and a 256 MiB budget, as ``bench/lazy_bench.py``'s ``chain warm`` cases, on the same
file (``lazy_data``), kept wholly in the page cache in 2 MiB folios (``harness_cache.prepare``).
Prints, per variant, its time over the limit's of the same repeat (median, min-max) and its
best GB/s (1e9 bytes of input per second).
"""

from __future__ import annotations

import argparse
import ast
import ctypes
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from harness_cache import prepare
from harness_machine import threaded_sum
from lazy_bench import lazy_data
from native_builds import _use

import bigarr
from bigarr._compute import native

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "src" / "bigarr" / "_compute" / n for n in ("_native.c", "_radix.c")]


def _setup_value(name: str) -> Any:
    """The literal ``setup.py`` assigns to ``name`` (read, not run: running it would build)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise SystemExit(f"setup.py assigns no {name}")


# setup.py's flags: NATIVE_FLAGS, then the flags of each wider build (WIDER)
FLAGS: list[str] = _setup_value("NATIVE_FLAGS")
ISA: dict[str, list[str]] = {isa: flags for isa, (_, flags) in _setup_value("WIDER").items()}
ISA["baseline"] = []


def build(name: str, flags: str, folder: Path) -> ctypes.CDLL:
    """The kernels built as ``folder/name.so`` with the flags of ``name``'s instruction set and
    ``flags``, loaded and declared."""
    isa = next((k for k in sorted(ISA, key=len, reverse=True) if name.startswith(k)), None)
    if isa is None:
        raise SystemExit(f"--variant {name}: the name starts with one of {', '.join(ISA)}")
    out = folder / f"{name}.so"
    include = sysconfig.get_paths()["include"]
    subprocess.run(["gcc", "-shared", "-fPIC", *FLAGS, *ISA[isa], *flags.split(),
                    f"-I{include}", "-DNATIVE_MODULE=_native_ab", *map(str, SOURCES),
                    "-o", str(out)], check=True)
    dll = ctypes.CDLL(str(out))
    dll.bigarr_native_abi.restype = ctypes.c_int64
    if dll.bigarr_native_abi() != native.ABI:
        raise SystemExit(f"{out}: another interface version than bigarr's")
    native._declare(dll)
    return dll


#: bigarr's own (main() swaps the module's for :func:`misaligned` around some runs)
ALIGNED = native.aligned_empty


def misaligned(n: int, dtype: Any, alignment: int = native.VECTOR_ALIGN) -> Any:
    """:func:`bigarr._compute.native.aligned_empty`, but 16 bytes past the alignment."""
    dt = np.dtype(dtype)
    size = max(n, 1) * dt.itemsize
    return ALIGNED(size + 16, np.uint8, alignment)[16:].view(dt)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--size", type=bigarr.parse_size, default="2GiB")
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--six", action="store_true")
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--misaligned", action="store_true")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = lazy_data(folder, args.size)
    m, s = np.full(32, 7, np.float32), np.full(32, 3, np.float32)
    with tempfile.TemporaryDirectory(prefix="bigarr-ab-") as tmp:
        dlls = {}
        for spec in args.variant or ["avx512=", "avx2="]:
            name, _, flags = spec.partition("=")
            dlls[name] = build(name, flags, Path(tmp))
        cases = [(name, aligned) for name in dlls for aligned in
                 ((True, False) if args.misaligned else (True,))]
        arr = np.ones(path.stat().st_size // 4, dtype=np.float32)
        ratios: dict[tuple[str, bool], list[float]] = {c: [] for c in cases}
        best = dict.fromkeys(cases, np.inf)
        prepare([path], "warm")
        for r in range(args.repeat):
            t = time.perf_counter()
            threaded_sum(arr, 2)
            limit = time.perf_counter() - t
            for k in range(len(cases)):
                name, aligned = cases[(k + r) % len(cases)]
                _use(dlls[name])
                native.aligned_empty = ALIGNED if aligned else misaligned
                prepare([path], "warm")
                x = bigarr.lazy(path)
                expr = np.sqrt(abs((x - m) / s * 2.0 + 1.0)) - 0.5 if args.six else (x - m) / s
                t = time.perf_counter()
                expr.max(axis=0).compute(budget="256MiB", threads=2, progress=False)
                t = time.perf_counter() - t
                native.aligned_empty = ALIGNED
                ratios[(name, aligned)].append(limit / t)
                best[(name, aligned)] = min(best[(name, aligned)], t)
    print(f"{'six' if args.six else 'two'}-operation chain, {path.stat().st_size / 2**30:.2f} "
          f"GiB warm, 2 threads, {args.repeat} repeats; the limit's time over the variant's")
    print("| variant | buffers | per repeat, median (min-max) | best GB/s |")
    print("| --- | --- | --- | --- |")
    for (name, aligned), got in ratios.items():
        print(f"| {name} | {'aligned' if aligned else '16 B off'} | "
              f"{statistics.median(got):.3f} ({min(got):.3f}-{max(got):.3f}) | "
              f"{path.stat().st_size / best[(name, aligned)] / 1e9:.1f} |")


if __name__ == "__main__":
    sys.exit(main())
