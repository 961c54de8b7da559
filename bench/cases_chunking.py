"""Chunked streaming, access hints and bounded resident memory (issue 3).

Groups:

``chunking``
    Summing the whole float32 dataset with ``arr.iter_chunks()`` (release-behind and prefetch)
    against ``numpy.memmap(...).sum()`` (``baseline.memmap_sum``): peak RSS, warm and cold
    throughput.
    ``chunking.seq_scan`` adds the ``sequential`` hint, cold cache only.
``gather``
    Reading 10,000 random elements from a cold file, with the default advice and with the
    ``random`` hint: bytes read from disk and time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from harness import Context, case

_LIMITS = {"cold": "machine.disk_read", "warm": "machine.mem_bw_1t"}
_GATHER_N = 10_000
_PERIOD = 251  # the datasets hold x[i] = i % 251


def _stream_sum(ctx: Context, **options: Any) -> dict[str, Any]:
    import bigarr

    budget = ctx.params["budget"]
    total, chunks = 0.0, 0
    with ctx.timer(), bigarr.open(ctx.path("npy"), "r") as arr:
        for _chunk, view in arr.iter_chunks(budget, progress=False, **options):
            total += float(view.sum())
            chunks += 1
        del view
    return {"checksum": total, "chunks": chunks, "budget": budget}


@case(
    "chunking.stream_sum",
    group="chunking",
    peer="bigarr chunks",
    baseline="baseline.memmap_sum",
    limit=_LIMITS,
    params={"budget": "64MiB"},
)
def stream_sum(ctx: Context) -> dict[str, Any]:
    """Sum with ``arr.iter_chunks('64MiB')``: release-behind and willneed prefetch (defaults)."""
    return _stream_sum(ctx)


@case(
    "chunking.stream_sum_1t",
    group="chunking",
    peer="bigarr chunks, no prefetch",
    baseline="baseline.memmap_sum",
    limit=_LIMITS,
    params={"budget": "64MiB"},
)
def stream_sum_1t(ctx: Context) -> dict[str, Any]:
    """Sum with ``arr.iter_chunks('64MiB', prefetch=0)``: release-behind, one thread."""
    return _stream_sum(ctx, prefetch=0)


@case(
    "chunking.stream_sum_auto",
    group="chunking",
    peer="bigarr chunks, prefetch 2",
    baseline="baseline.memmap_sum",
    limit=_LIMITS,
    params={"budget": "64MiB"},
)
def stream_sum_auto(ctx: Context) -> dict[str, Any]:
    """Sum with ``arr.iter_chunks('64MiB', prefetch=2)``: two chunks read ahead (prefetch is a count
    of chunks now; the 'auto' mode that mapped cached pieces from the helper is gone)."""
    return _stream_sum(ctx, prefetch=2)


@case(
    "chunking.seq_scan",
    group="chunking",
    peer="bigarr chunks + sequential",
    baseline="baseline.memmap_sum",
    caches=("cold",),
    limit=_LIMITS,
    params={"budget": "64MiB"},
)
def seq_scan(ctx: Context) -> dict[str, Any]:
    """Cold sequential scan: ``arr.iter_chunks('64MiB', hint='sequential')`` with prefetch."""
    return _stream_sum(ctx, hint="sequential")


def _gather(ctx: Context, hint: str | None) -> dict[str, Any]:
    import bigarr

    rng = np.random.default_rng(12345 + ctx.repeat)
    with bigarr.open(ctx.path("npy"), "r") as arr:
        idx = rng.integers(0, arr.shape[0], _GATHER_N)
        with ctx.timer():
            if hint is not None:
                arr.advise(hint)
            values = np.asarray(arr[idx])
        if not np.array_equal(values, (idx % _PERIOD).astype(np.float32)):
            raise AssertionError("gathered values differ from the dataset's pattern")
    return {"bytes_processed": _GATHER_N * 4, "elements": _GATHER_N, "hint": hint or "none"}


@case("gather.default", group="gather", peer="bigarr, default advice", caches=("cold",))
def gather_default(ctx: Context) -> dict[str, Any]:
    """Gather 10,000 random elements (unsorted indices) with the kernel's default advice."""
    return _gather(ctx, None)


@case(
    "gather.random_hint",
    group="gather",
    peer="bigarr, advise('random')",
    baseline="gather.default",
    caches=("cold",),
)
def gather_random(ctx: Context) -> dict[str, Any]:
    """Gather 10,000 random elements after ``arr.advise('random')``."""
    return _gather(ctx, "random")
