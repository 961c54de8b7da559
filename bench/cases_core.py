"""The core: what preallocating a new file buys over numpy's sparse files.

Group ``create``: make a new float32 ``.npy`` of the dataset size, write every element once
through the mapping, then flush, timed end to end. Group ``first_write`` times only the writes
(the page faults that allocate blocks in a sparse file), not creation or the flush.

``create.sparse_open_memmap``
    ``np.lib.format.open_memmap(mode="w+")``: numpy extends the file with ``ftruncate``, so
    every first write to a page allocates disk blocks inside a page fault (and a full disk
    later shows up as SIGBUS).
``create.bigarr_preallocated``
    ``bigarr.create``: the blocks are reserved up front with ``posix_fallocate`` (a full disk
    raises ``DiskFullError`` at create time), then the same writes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from harness import Context, case, parse_size

_PARAMS = {"block": "64MiB"}


def _write_all(arr: np.ndarray[Any, Any], block_bytes: int) -> None:
    step = max(1, block_bytes // arr.itemsize)
    for start in range(0, arr.shape[0], step):
        arr[start : start + step] = 1.0


@case(
    "create.sparse_open_memmap",
    group="create",
    peer="numpy open_memmap (sparse)",
    data=(),
    caches=("cold",),
    params=_PARAMS,
)
def sparse_open_memmap(ctx: Context) -> dict[str, Any]:
    """numpy: ftruncate'd sparse file, first writes allocate blocks in page faults."""
    out = ctx.scratch / "sparse.npy"
    with ctx.timer():
        arr = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(ctx.n,))
        _write_all(arr, parse_size(ctx.params["block"]))
        arr.flush()
    return {"bytes_processed": ctx.nbytes, "checksum": float(ctx.n)}


@case(
    "create.bigarr_preallocated",
    group="create",
    peer="bigarr.create",
    baseline="create.sparse_open_memmap",
    data=(),
    caches=("cold",),
    params=_PARAMS,
)
def bigarr_preallocated(ctx: Context) -> dict[str, Any]:
    """bigarr: posix_fallocate'd file, then the same writes."""
    import bigarr

    out = ctx.scratch / "prealloc.npy"
    with ctx.timer():
        arr = bigarr.create(out, (ctx.n,), np.float32)
        _write_all(arr, parse_size(ctx.params["block"]))
        arr.close()  # flushes
    return {"bytes_processed": ctx.nbytes, "checksum": float(ctx.n)}


def _first_write(ctx: Context, make: Any) -> dict[str, Any]:
    arr = make(ctx.scratch / "out.npy", ctx.n)
    with ctx.timer():
        _write_all(arr, parse_size(ctx.params["block"]))
    arr.flush()
    return {"bytes_processed": ctx.nbytes, "checksum": float(ctx.n)}


@case("first_write.sparse", group="first_write", peer="numpy open_memmap (sparse)",
      data=(), caches=("cold",), params=_PARAMS)
def first_write_sparse(ctx: Context) -> dict[str, Any]:
    """First writes into numpy's ftruncate'd sparse file."""
    return _first_write(ctx, lambda p, n: np.lib.format.open_memmap(
        p, mode="w+", dtype=np.float32, shape=(n,)))


@case("first_write.preallocated", group="first_write", peer="bigarr.create",
      baseline="first_write.sparse", data=(), caches=("cold",), params=_PARAMS)
def first_write_preallocated(ctx: Context) -> dict[str, Any]:
    """First writes into bigarr's posix_fallocate'd file."""
    import bigarr

    return _first_write(ctx, lambda p, n: bigarr.create(p, (n,), np.float32))
