"""An external sort out of core: sorted runs, then a k-way merge.

:func:`sort` (1-d sources) cuts the source into chunks the budget holds, sorts each on the
engine's workers and writes it as a *run*, a raw file next to the output (hidden name, removed
on success and failure); then a k-way merge reads a buffer of each run, emits every buffered
value up to the smallest of the buffers' last values (one ``np.sort`` of sorted pieces), and
refills the buffers it emptied. Two reads and two writes of the data, numpy's order (NaN last).

Split from :mod:`bigarr._compute.order`, whose dtype check, ranking keys (:func:`_rank_keys`)
and pass counter (:data:`LAST_PASSES`) it uses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Any

import numpy as np

from bigarr._compute.engine import execute
from bigarr._compute.operands import parse_operand
from bigarr._compute.order import LAST_PASSES, Array, _check_dtype, _rank_keys
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import parse_threads, plan_run
from bigarr._core.array import memmap
from bigarr._core.files import create
from bigarr._core.files import open as open_npy
from bigarr._os.durable import datasync, fsync_dir, pwrite_all
from bigarr._os.fileid import create_new, hidden_name
from bigarr._os.geometry import parse_size
from bigarr._os.paths import check_output
from bigarr._plan.budget import DEFAULT_BUDGET
from bigarr.errors import DiskFullError, UnsupportedError

__all__ = ["sort"]


# ---- external sort -------------------------------------------------------------------------
class _Run:
    """A sorted run on disk and the buffered part of it being merged."""

    def __init__(self, fd: int, size: int, dtype: np.dtype[Any]) -> None:
        self.fd, self.size, self.dtype = fd, size, dtype
        self.read = 0  # elements read from the file
        self.buf = np.zeros(0, dtype=dtype)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def refill(self, count: int) -> None:
        n = min(count, self.size - self.read)
        raw = os.pread(self.fd, n * self.dtype.itemsize, self.read * self.dtype.itemsize)
        got = np.frombuffer(raw, dtype=self.dtype)
        if got.size != n:
            raise DiskFullError(f"A temporary run of the sort was shortened under the sort: "
                                f"expected {n} values, read {got.size}.")
        self.read += n
        self.buf = got


def sort(src: Any, out: str | os.PathLike[str], *, budget: int | str = DEFAULT_BUDGET,
         threads: int | None = None, progress: ProgressArg = None,
         overwrite: bool = False) -> memmap:
    """Sort a 1-d array larger than memory into a new page-aligned ``.npy``, like
    :func:`numpy.sort` (NaN last).

    Sorted runs the budget holds are written to temporary files next to ``out`` (removed on
    success and on failure), then merged k ways into a hidden file renamed to ``out`` once
    complete (a failed sort leaves what was at ``out``) (see the module docstring): the data is read
    twice and written twice.

    Parameters
    ----------
    src
        A 1-d :class:`bigarr.memmap`, numpy array or ``.npy`` path; bool, integer or floating.
    out
        Path of the sorted ``.npy`` (created; an existing file only with ``overwrite``).
    budget, threads, progress
        As :func:`bigarr.sum`.
    overwrite
        Replace an existing ``out``.

    Returns
    -------
    bigarr.memmap
        The sorted output, opened read-only (close it when done).

    Raises
    ------
    BudgetError
        If the budget cannot hold the run plan or one buffer per run (both numbers quoted).
    DiskFullError
        If the folder of ``out`` lacks room for the runs (both numbers quoted), before any is
        written.
    FileExistsError
        If ``out`` exists and ``overwrite`` is False.
    UnsupportedError
        For sources of more than one dimension (sorting rows by key columns is not built yet).
    """
    stream = parse_operand(src, by_key=False)
    target = os.fspath(out)
    runs: list[_Run] = []
    names: list[str] = []
    done = False
    created = False
    building = ""
    try:
        dtype = np.dtype(stream.dtype)
        _check_dtype(dtype, "sort")
        if stream.ndim != 1:
            raise UnsupportedError(
                f"Expected a 1-d source. Got shape {tuple(stream.shape)}: sorting rows by key "
                "columns (by=) is not implemented yet; sort a column, or use topk.")
        n = int(stream.shape[0])
        nthreads = parse_threads(threads)
        budget_bytes = parse_size(budget) if isinstance(budget, str) else int(budget)
        folder = os.path.dirname(os.path.abspath(target))
        need = n * dtype.itemsize
        free = shutil.disk_usage(folder).free
        if need > free:
            raise DiskFullError(
                f"Sorting needs {need} bytes of temporary runs next to {target}, but its file "
                f"system has {free} bytes free. Free space, or choose an output elsewhere.")
        check_output(os.path.abspath(target), overwrite)  # refuse before any work
        # the output is built under a hidden name and renamed over `out` once complete: a
        # failed sort leaves what was at `out` untouched
        building = hidden_name(target, "sorting")
        result = create(building, (n,), dtype)
        created = True
        offset = int(result.offset)
        result.close()
        fd_out = os.open(building, os.O_WRONLY | os.O_CLOEXEC)
        try:
            # pass 1: sorted runs, one per chunk
            def sort_run(block: Array, _row: int) -> Array:
                return np.sort(block, kind="stable")

            def write_run(part: Array) -> None:
                name = hidden_name(target, "run")
                fd = create_new(name, mode=0o600)
                names.append(name)
                runs.append(_Run(fd, part.size, dtype))
                pwrite_all(fd, np.ascontiguousarray(part), 0)

            plan = plan_run("sort runs", [stream], budget=budget, threads=nthreads,
                            layout="rows", temporaries=3.0)  # the sorted copy, timsort's
                            # half-size buffer, the copy waiting to be written
            LAST_PASSES[0] = 1
            with Progress(progress, total_bytes=plan.chunks.nbytes,
                          total_chunks=len(plan.chunks), desc="sort runs") as bar:
                for _chunk, part in execute(plan, lambda c, b: sort_run(b[0], 0), [stream],
                                            progress=bar):
                    write_run(part)
            # merge passes: at most `fan_in` runs at once, each buffer at least _MIN_BUFFER
            # bytes (a step emits about one buffer); the last pass writes the output
            fan_in = max(2, budget_bytes // 6 // _MIN_BUFFER)
            while len(runs) > fan_in:
                merged: list[_Run] = []
                for start in range(0, len(runs), fan_in):
                    group = runs[start:start + fan_in]
                    name = hidden_name(target, "run")
                    fd = create_new(name, mode=0o600)
                    names.append(name)
                    merged.append(_Run(fd, sum(r.size for r in group), dtype))
                    _merge(group, _per_run(budget_bytes, len(group), dtype), fd, 0, dtype)
                    for r in group:
                        r.close()
                runs[:] = merged
                LAST_PASSES[0] += 1
            _merge(runs, _per_run(budget_bytes, len(runs), dtype), fd_out, offset, dtype)
            LAST_PASSES[0] += 1
            datasync(fd_out)
        finally:
            os.close(fd_out)
        check_output(os.path.abspath(target), overwrite)
        os.replace(building, target)
        fsync_dir(folder)
        done = True
    finally:
        for run in runs:
            run.close()
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
        stream.close()
        if created and not done:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(building)
    return open_npy(target)


#: Smallest buffer per run in a merge (bytes); more runs than the budget holds at this size
#: merge in several passes.
_MIN_BUFFER = 64 << 10


def _per_run(budget_bytes: int, runs: int, dtype: np.dtype[Any]) -> int:
    """Values buffered per run: a sixth of the budget for the buffers (the merged block, its
    sorted copy, the sort's work buffer and the bytes read take the rest)."""
    return max(budget_bytes // 6 // max(runs, 1) // dtype.itemsize, 1)


def _merge(runs: list[_Run], per_run: int, fd: int, offset: int, dtype: np.dtype[Any]) -> None:
    """Merge sorted runs into ``fd`` at ``offset``, block by block (module docstring)."""
    for run in runs:
        run.refill(per_run)
    written = 0
    while True:
        live = [r for r in runs if r.buf.size]
        if not live:
            return
        pending = [r for r in live if r.read < r.size]
        if pending:
            lasts = np.array([r.buf[-1] for r in pending], dtype=dtype)
            bound = lasts[int(np.argmin(_rank_keys(lasts, False)))]
            cuts = [int(np.searchsorted(r.buf, bound, side="right")) for r in live]
        else:
            cuts = [r.buf.size for r in live]
        block = np.sort(np.concatenate([r.buf[:c] for r, c in zip(live, cuts, strict=True)]),
                        kind="stable")
        pwrite_all(fd, block, offset + written * dtype.itemsize)
        written += block.size
        del block
        for r, c in zip(live, cuts, strict=True):
            r.buf = r.buf[c:]
            if not r.buf.size and r.read < r.size:
                r.refill(per_run)
