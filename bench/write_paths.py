"""Ways of writing a new file until durable, against ``O_DIRECT`` (the disk's write limit).

Each repeat runs every case once, in turn, so each is divided by the ``direct`` run of its own
repeat. Raw write paths (a 16 MiB pattern block written ``--size`` bytes long):

``direct``     16 MiB ``O_DIRECT`` writes, two in flight, then ``fdatasync`` (the limit; as
               ``machine.disk_write``)
``behind``     buffered 16 MiB ``pwrite``, each block's writeback started, the one four
               behind waited for (the old flush policy of new outputs)
``mapped``     stores through a shared mapping of a preallocated file, with the same write-behind
``populate``   ``mapped`` with ``MADV_POPULATE_WRITE`` on each block before its stores

and ``map_blocks`` into a new file (the input cached first; 256 MiB budget, 2 threads):
``map_ident`` (``lambda b: b``: only the output's writing and the sink's copy) and
``map_x2p1`` (``lambda b: b * 2 + 1``)::

    python bench/write_paths.py --size 512MiB --repeat 3 --dir /tmp/somewhere

Prints one line per repeat (GB/s of ``direct``, every other case as a ratio to it). Files are
removed as it goes.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

_B = 16 << 20
_LIBC = ctypes.CDLL(None, use_errno=True)
_MADV_POPULATE_WRITE = 23


def _sfr(fd: int, off: int, n: int, flags: int) -> None:
    _LIBC.sync_file_range(fd, ctypes.c_int64(off), ctypes.c_int64(n), flags)


def _direct(path: Path, buf: mmap.mmap, n: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o644)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda off: os.pwrite(fd, buf, off), range(0, n, _B)))
    os.fdatasync(fd)
    os.close(fd)


def _behind(path: Path, buf: mmap.mmap, n: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for i, off in enumerate(range(0, n, _B)):
        os.pwrite(fd, buf, off)
        _sfr(fd, off, _B, 2)
        if i >= 4:
            _sfr(fd, off - 4 * _B, _B, 7)
    os.fdatasync(fd)
    os.close(fd)


def _mapped(path: Path, buf: mmap.mmap, n: int, populate: bool = False) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.posix_fallocate(fd, 0, n)
    m = mmap.mmap(fd, n)
    for i, off in enumerate(range(0, n, _B)):
        if populate:
            m.madvise(_MADV_POPULATE_WRITE, off, _B)
        m[off:off + _B] = buf
        _sfr(fd, off, _B, 2)
        if i >= 4:
            _sfr(fd, off - 4 * _B, _B, 7)
    m.close()
    os.fdatasync(fd)
    os.close(fd)


def _map(src: Path, func: Callable[[np.ndarray], np.ndarray]) -> Callable[[Path], None]:
    def run(out: Path) -> None:
        import bigarr

        with open(src, "rb", buffering=0) as f:  # the input cached, before the clock
            while f.read(_B):
                pass
        t0 = time.perf_counter()
        with bigarr.open(src) as x:
            bigarr.map_blocks(func, x, out=str(out), budget="256MiB", threads=2,
                              progress=False).close()
        run.seconds = time.perf_counter() - t0  # type: ignore[attr-defined]
    return run


def main() -> None:
    import bigarr

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512MiB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default=".")
    args = ap.parse_args()
    n = bigarr.parse_size(args.size) // _B * _B
    folder = Path(args.dir)
    buf = mmap.mmap(-1, _B)
    buf.write(os.urandom(1 << 20) * (_B >> 20))
    src = folder / "write_paths_in.npy"
    np.save(src, np.random.default_rng(0).standard_normal(n // 4, dtype=np.float32)
            .reshape(-1, 32))
    raw: dict[str, Callable[[Path], None]] = {
        "direct": lambda p: _direct(p, buf, n), "behind": lambda p: _behind(p, buf, n),
        "mapped": lambda p: _mapped(p, buf, n), "populate": lambda p: _mapped(p, buf, n, True)}
    maps = {"map_ident": _map(src, lambda b: b), "map_x2p1": _map(src, lambda b: b * 2 + 1)}
    try:
        for rep in range(args.repeat):
            rates: dict[str, float] = {}
            for name, fn in {**raw, **maps}.items():
                out = folder / f"write_paths_{name}.npy"
                os.sync()
                t0 = time.perf_counter()
                fn(out)
                seconds = getattr(fn, "seconds", time.perf_counter() - t0)
                out.unlink()
                rates[name] = n / seconds / 1e9
            ratios = " ".join(f"{k} {v / rates['direct']:.2f}" for k, v in rates.items()
                              if k != "direct")
            print(f"repeat {rep + 1}: direct {rates['direct']:.2f} GB/s; {ratios}", flush=True)
    finally:
        src.unlink()


if __name__ == "__main__":
    main()
