"""The memory promise, measured: peak RSS stays within the budget for every operation and input.

Each case runs in a fresh interpreter: the operand is prepared (files opened, imports done),
the peak-RSS counter is reset (``/proc/self/clear_refs``), the operation runs, and the growth of
``VmHWM`` over the resident memory before it must stay within ``budget + 64 MiB`` (the slack
covers allocator and thread overheads, never the data). The files are 256 MiB, 16 times the
16 MiB budget, so holding the data (or a third of it) fails the bound. They are numpy-written
(data 128 bytes into the file, 128-byte rows: no row starts on a page), in C and Fortran order.

The default run covers every operation and every input kind once; the full matrix (both
orders, 1, 4 and 7 of 32 columns, every kind with every reduction) is marked slow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="VmHWM and clear_refs are Linux's")

ROWS = (256 << 20) // 128  # 256 MiB of float32 rows of 32 columns
BUDGET = 16 << 20
SLACK = 64 << 20

#: How each input kind is made, in the subprocess (``P`` the file, ``D`` its folder).
KINDS = {
    "path": "a = P",
    "bigarr": "a = bigarr.open(P)",
    "numpy.memmap": "a = np.memmap(P, np.float32, 'r', offset=128, shape=(N, 32), order=O)",
    "np.load": "a = np.load(P, mmap_mode='r')",
    "columns": "a = bigarr.open(P)[:, :K]",
    "numpy columns": "a = np.load(P, mmap_mode='r')[:, :K]",
    "zarr": "import zarr; a = zarr.open_array(D + '/src.zarr', mode='r')",
    "dask": "import dask.array; a = bigarr.to_dask(P)",
    "ndarray": "a = np.load(P)",
}

#: The operations, as code over ``a`` at budget ``B``.
OPS = {
    "sum": "bigarr.sum(a, axis=0, budget=B, threads=2, progress=False)",
    "mean": "bigarr.mean(a, budget=B, threads=2, progress=False)",
    "std": "bigarr.std(a, axis=0, budget=B, threads=2, progress=False)",
    "argmax0": "bigarr.argmax(a, axis=0, budget=B, threads=2, progress=False)",
    "reduce_blocks": ("bigarr.reduce_blocks(lambda b: ((b - 0.5) / 2.0).T @ ((b - 0.5) / 2.0), "
                      "np.add, a, budget=B, threads=2, progress=False)"),
    "two temporaries": ("bigarr.reduce_blocks(lambda b: (b * 2.0 - 1.0).sum(axis=0), np.add, a, "
                        "budget=B, threads=2, progress=False)"),
    "three temporaries": ("bigarr.reduce_blocks(three, np.add, a, budget=B, threads=2, "
                          "progress=False)"),
    "map_blocks": ("bigarr.map_blocks(lambda b: b * 2, a, out=D + '/out.npy', overwrite=True, "
                   "budget=B, threads=2, progress=False).close()"),
    "iter_chunks": ("[float(v.sum()) for _, v in "
                    "bigarr._compute.stream.iter_chunks(a, B, progress=False)]"),
    "to_zarr": ("bigarr.to_zarr(a, D + '/out.zarr', overwrite=True, "
                "chunks=(4096,) + getattr(a, 'shape', (N, 32))[1:], budget=B, progress=False)"),
    "from_zarr": ("bigarr.from_zarr(a, D + '/back.npy', overwrite=True, budget=B, "
                  "progress=False).close()"),
    "lazy median": ("bigarr.lazy(a)[:, 1].median().compute(budget=B, threads=2, "
                    "progress=False)"),
}

_SCRIPT = """
import numpy as np, bigarr, bigarr._compute.stream

def three(b):  # three chunk-sized temporaries, then a small result
    t1 = b * 2.0
    t2 = b + 1.0
    t3 = b - 3.0
    return (t1 + t2 + t3).sum(axis=0)

def status(key):
    return int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) << 10

P, D, N, O, B, K = {path!r}, {folder!r}, {rows}, {order!r}, {budget}, {columns}
{make}
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # reset VmHWM to the current resident memory
base = status('VmRSS')
{op}
print(status('VmHWM') - base)
"""


def _write(path: Path, order: str) -> None:
    x = np.lib.format.open_memmap(path, "w+", np.float32, (ROWS, 32),
                                  fortran_order=order == "F")
    step = 1 << 18
    for i in range(0, ROWS, step):
        x[i:i + step] = np.arange(32, dtype=np.float32) + np.float32(i % 1000)
    x.flush()
    del x


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rss")
    for order in ("C", "F"):
        path = folder / f"{order}.npy"
        _write(path, order)
        with open(path, "rb") as f:  # numpy's own layout: data 128 bytes in
            assert np.lib.format.read_magic(f) == (1, 0)
            np.lib.format.read_array_header_1_0(f)
            assert f.tell() == 128
    return folder


def _zarr_source(folder: Path) -> None:
    if not (folder / "src.zarr").exists():
        import bigarr

        bigarr.to_zarr(folder / "C.npy", folder / "src.zarr", chunks=(1024, 32),
                       compressors=None, budget="64MiB", progress=False)


def _evict(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _peak(folder: Path, kind: str, op: str, order: str = "C", columns: int = 4) -> int:
    if kind == "zarr" or op == "from_zarr":
        _zarr_source(folder)
    path = folder / f"{order}.npy"
    _evict(path)
    make = KINDS["zarr"] if op == "from_zarr" else KINDS[kind]
    code = _SCRIPT.format(path=str(path), folder=str(folder), rows=ROWS, order=order,
                          budget=BUDGET, columns=columns, make=make, op=OPS[op])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(proc.stdout.split()[-1])


def _check(folder: Path, kind: str, op: str, order: str = "C", columns: int = 4) -> None:
    grew = _peak(folder, kind, op, order, columns)
    assert grew <= BUDGET + SLACK, (
        f"{op} of {kind} ({order} order) grew peak RSS by {grew >> 20} MiB; the budget is "
        f"{BUDGET >> 20} MiB (+{SLACK >> 20} MiB slack)"
    )


#: One case per operation and per input kind, in the default run.
DEFAULT = [
    ("path", "sum", "C"),
    ("np.load", "mean", "C"),            # issue: 1057 MiB at a 64 MiB budget
    ("numpy.memmap", "std", "F"),
    ("numpy columns", "argmax0", "C"),   # issue: 456 MiB at 256 MiB (numpy's copy per chunk)
    ("bigarr", "two temporaries", "C"),  # issue: 670 MiB at 128 MiB (the function's temps;
    #                                       that covariance function is in the slow matrix)
    ("ndarray", "three temporaries", "C"),
    ("columns", "map_blocks", "C"),      # issue: 1060 MiB for x[:, :4]
    ("columns", "iter_chunks", "F"),
    ("dask", "sum", "C"),                # issue: 2115 MiB
    ("bigarr", "to_zarr", "F"),
    ("zarr", "from_zarr", "C"),          # a zarr source (issue: 536 MiB for 244 MiB of data)
    ("path", "lazy median", "C"),        # regression: 256 MiB (every page of the file)
]


@pytest.mark.parametrize(("kind", "op", "order"), DEFAULT)
def test_peak_rss_within_budget(files: Path, kind: str, op: str, order: str) -> None:
    _check(files, kind, op, order)


@pytest.mark.slow
@pytest.mark.parametrize("columns", [1, 4, 7])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("op", ["sum", "std", "argmax0", "reduce_blocks", "map_blocks",
                                "iter_chunks", "to_zarr"])
def test_column_views_within_budget(files: Path, op: str, order: str, columns: int) -> None:
    # Regression: 4, 5 and 7 of 32 columns lost the bound (their pages were never released).
    _check(files, "columns", op, order, columns)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("kind", ["path", "bigarr", "numpy.memmap", "np.load", "dask", "ndarray",
                                  "zarr"])
@pytest.mark.parametrize("op", ["sum", "mean", "std", "argmax0", "reduce_blocks",
                                "three temporaries", "map_blocks"])
def test_every_kind_within_budget(files: Path, kind: str, op: str, order: str) -> None:
    if kind in ("zarr", "dask") and order == "F":
        pytest.skip("zarr and dask sources are row-major here")
    _check(files, kind, op, order)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("kind", ["path", "bigarr", "numpy.memmap", "np.load", "ndarray"])
def test_iteration_and_export_within_budget(files: Path, kind: str, order: str) -> None:
    if kind != "bigarr" and kind != "path":
        _check(files, kind, "to_zarr", order)
    else:
        _check(files, "bigarr", "iter_chunks", order)
        _check(files, kind, "to_zarr", order)


def test_histogram_with_a_long_array_of_edges_stays_within_the_budget() -> None:
    code = textwrap.dedent("""
        import numpy as np, bigarr
        def status(key):
            return int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) << 10
        edges = np.linspace(-5, 5, 4_000_000)  # the caller's 30.5 MiB, not the operation's
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        base = status('VmRSS')
        try:
            bigarr.histogram(np.zeros(1000), bins=edges, budget='16MiB', progress=False)
            print('ran')
        except bigarr.errors.BudgetError as exc:
            assert '16777216' in str(exc), exc  # refused up front, with the budget quoted
        print(status('VmHWM') - base)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ), check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) <= (16 << 20) + (64 << 20)
