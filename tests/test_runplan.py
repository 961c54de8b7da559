"""The planner and the operand parser: RunPlan values, prefetch's one type, measured
temporaries, block_info, and every input kind giving numpy's answer."""

from __future__ import annotations

import dataclasses
import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._compute import runplan as _runplan
from bigarr._compute.operands import parse_operand
from bigarr._plan import budget as _budget
from bigarr.errors import ArgumentError, BudgetError

N = 100_000


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_budget, "MIN_CHUNK_BYTES", 4096)


@pytest.fixture
def data() -> np.ndarray[Any, Any]:
    return np.random.default_rng(5).normal(size=(N, 32)).astype(np.float32)


@pytest.fixture
def npy(tmp_path: Path, data: np.ndarray[Any, Any]) -> Path:
    path = tmp_path / "x.npy"
    np.save(path, data)  # numpy's layout: data 128 bytes in, 128-byte rows
    return path


# ---- RunPlan ---------------------------------------------------------------------------------
def test_run_plans_are_frozen_public_values_with_documented_fields(npy: Path) -> None:
    assert bigarr.RunPlan is _runplan.RunPlan and "RunPlan" in bigarr.__all__
    stream = parse_operand(npy)
    try:
        plan = _runplan.plan_run("sum", [stream], budget="1MiB", threads=2, layout="keys")
    finally:
        stream.close()
    names = [f.name for f in dataclasses.fields(plan)]
    assert names == ["operation", "inputs", "chunks", "layout", "threads", "prefetch", "release",
                     "flush_every", "durable", "budget", "memory", "peak_bytes", "warm"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.threads = 3  # type: ignore[misc]
    assert plan.peak_bytes <= plan.budget == 1 << 20
    # just written, so cached: a warm plan charges the threads' chunks only (see test_warm_*)
    assert plan.memory.in_flight == (2 if plan.warm else 3) and len(plan.chunks) > 1
    text = repr(plan)
    assert text.startswith("RunPlan(sum: path x.npy (100000, 32)") and "peak" in text
    assert "budget 1.0 MiB" in text
    # numpy's header (128 bytes) with 128-byte rows: chunks of many rows, not one per row
    assert len(plan.chunks) <= 2 * (plan.chunks.nbytes // plan.memory.chunk_bytes) + 2


def test_prefetch_is_one_int_everywhere(npy: Path) -> None:
    assert _runplan.parse_prefetch(2) == 2 and _runplan.parse_prefetch(True) == 1
    assert _runplan.parse_prefetch(False) == 0
    for bad in ("auto", -1, 1.5, None):
        with pytest.raises(ArgumentError, match="prefetch") as info:
            _runplan.parse_prefetch(bad)  # type: ignore[arg-type]
        assert isinstance(info.value, TypeError)
    with bigarr.open(npy) as x, pytest.raises(ArgumentError):
        x.iter_chunks("1MiB", prefetch="auto")  # type: ignore[arg-type]
    with pytest.raises(ArgumentError):
        bigarr.map_blocks(np.copy, npy, out=npy.parent / "o.npy", prefetch="willneed",
                          progress=False)  # type: ignore[arg-type]


def test_one_default_budget() -> None:
    import inspect

    for fn in (bigarr.sum, bigarr.argmax, bigarr.reduce_blocks, bigarr.map_blocks,
               bigarr.to_zarr, bigarr.from_zarr):
        assert inspect.signature(fn).parameters["budget"].default == _budget.DEFAULT_BUDGET


def test_parse_budget_is_the_one_parser_and_none_is_the_default() -> None:
    assert _budget.parse_budget(None) == _budget.DEFAULT_BUDGET
    assert _budget.parse_budget("4MiB") == 4 << 20
    assert _budget.parse_budget(np.int64(1 << 20)) == 1 << 20  # type: ignore[arg-type]
    for bad in (1.5, -1, 0, True, "lots"):
        with pytest.raises(BudgetError):
            _budget.parse_budget(bad)  # type: ignore[arg-type]
    assert float(bigarr.sum(np.arange(10.0), budget=None)) == 45.0


# ---- temporaries -------------------------------------------------------------------------
def test_temporaries_are_measured_per_input_byte() -> None:
    block = np.ones((8192, 32), np.float32)  # 1 MiB
    half = block[:4096]

    def three(b: np.ndarray[Any, Any]) -> Any:  # three float64 temporaries: 6 bytes per byte
        t1 = b * 2.0
        t2 = b.astype(np.float64) + 1.0
        t3 = t2 - t1
        return float(t3.sum())

    def views(b: np.ndarray[Any, Any]) -> Any:
        return b[::2]

    per_byte, per_call = _runplan.measure_temporaries(three, [block], block.nbytes, [half],
                                                      half.nbytes)
    assert 3.5 <= per_byte <= 7 and per_call < 1 << 20
    assert _runplan.measure_temporaries(views, [block], block.nbytes, [half],
                                        half.nbytes)[0] < 0.1


def test_one_time_costs_of_a_first_call_are_not_temporaries() -> None:
    # Regression: a thread's tile buffer, grown on its first use, was measured as temporaries,
    # so the first lazy argmin of an int8 file in a process was refused at a 4 MiB budget
    # ("73 bytes of temporaries per chunk byte") that the same call met the second time.
    block = np.ones((8192, 32), np.float32)  # 1 MiB
    half = block[:4096]
    cache: list[Any] = []

    def cached(b: np.ndarray[Any, Any]) -> Any:
        if not cache:
            cache.append(np.ones(4 << 20, np.uint8))  # kept for later calls, as tiles.scratch
        return float(b.sum())

    per_byte, per_call = _runplan.measure_temporaries(cached, [block], block.nbytes, [half],
                                                      half.nbytes, warm=True)
    assert per_byte < 0.1 and per_call < 1 << 20
    cache.clear()
    assert _runplan.measure_temporaries(cached, [block], block.nbytes, warm=True)[0] < 0.1


def test_the_first_lazy_run_in_a_process_meets_the_budget_later_runs_meet(
        tmp_path: Path) -> None:
    # The same regression end to end: a fresh process (no thread has a tile buffer yet).
    path = tmp_path / "i1.npy"
    np.save(path, (np.arange(15_000) % 251 - 125).astype(np.int8).reshape(5000, 3))
    code = (f"import bigarr; x = bigarr.lazy({str(path)!r}); "
            "print(x.argmin(axis=0).compute(budget='4MiB', progress=False))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr[-500:]


def test_budget_counts_the_function_s_temporaries(npy: Path) -> None:
    # The same budget gives smaller chunks to a function that makes temporaries.
    seen: dict[str, list[int]] = {"light": [], "heavy": []}

    def light(b: np.ndarray[Any, Any], block_info: dict[str, Any]) -> Any:
        if not block_info["probe"]:
            seen["light"].append(len(b))
        return b.sum(axis=0)

    def heavy(b: np.ndarray[Any, Any], block_info: dict[str, Any]) -> Any:
        if not block_info["probe"]:
            seen["heavy"].append(len(b))
        c = b.astype(np.float64) - 0.5
        return (c.T @ c).sum(axis=0)

    for fn in (light, heavy):
        bigarr.reduce_blocks(fn, np.add, npy, budget="1MiB", threads=1, progress=False)
    assert sum(seen["light"]) == sum(seen["heavy"]) == N
    assert max(seen["heavy"]) * 2 < max(seen["light"])


def test_an_impossible_plan_is_refused_before_the_function_runs(npy: Path) -> None:
    calls: list[int] = []
    with pytest.raises(BudgetError, match="budget"):
        bigarr.reduce_blocks(lambda b: calls.append(1), np.add, npy, budget="8KiB",
                             progress=False)
    assert calls == []


# ---- block_info --------------------------------------------------------------------------
def test_map_blocks_tells_a_filter_its_global_rows(tmp_path: Path, npy: Path,
                                                   data: np.ndarray[Any, Any]) -> None:
    def where_positive(b: np.ndarray[Any, Any], block_info: dict[str, Any]) -> Any:
        start, stop = block_info["rows"]
        assert stop - start == len(b)
        assert block_info["array-location"] == [(start, stop), (0, 32)]
        return np.flatnonzero(b[:, 0] > 1.0).astype(np.int64) + start

    with bigarr.Appender(tmp_path / "idx.npy", np.int64, ()) as app:
        bigarr.map_blocks(where_positive, npy, out=app, budget="512KiB", threads=2,
                          progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "idx.npy"),
                                  np.flatnonzero(data[:, 0] > 1.0))


def test_reduce_blocks_block_info_covers_every_row_once(npy: Path) -> None:
    ranges = bigarr.reduce_blocks(
        lambda b, block_info: [] if block_info["probe"] else [block_info["rows"]],
        lambda p, q: p + q, npy, budget="512KiB", threads=2, progress=False)
    assert len(ranges) > 2
    assert ranges[0][0] == 0 and ranges[-1][1] == N
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))


# ---- operands ----------------------------------------------------------------------------
def test_numpy_memmaps_and_their_views_are_remapped_by_reference(npy: Path) -> None:
    m = np.load(npy, mmap_mode="r")
    for view in (m, m[:, :4], m[100:5000:3, 2:9], m[::-1]):
        stream = parse_operand(view)
        try:
            assert stream.kind == "numpy.memmap" and stream.mapping is not None
            assert stream.array is not None and np.array_equal(stream.array, view)
        finally:
            stream.close()
    private = np.load(npy, mmap_mode="c")
    private[0, 0] = 1234.0  # an edit only numpy's mapping holds: used as it is
    stream = parse_operand(private)
    assert stream.kind == "ndarray" and stream.array is not None
    assert stream.array[0, 0] == 1234.0


@pytest.mark.parametrize("kind", ["path", "bigarr", "np.load", "numpy.memmap", "column view",
                                  "strided rows", "zarr", "dask", "ndarray"])
def test_every_input_kind_gives_numpy_s_answer(tmp_path: Path, npy: Path,
                                               data: np.ndarray[Any, Any], kind: str) -> None:
    want: np.ndarray[Any, Any] = data
    a: Any
    if kind == "path":
        a = npy
    elif kind == "bigarr":
        a = bigarr.open(npy)
    elif kind == "np.load":
        a = np.load(npy, mmap_mode="r")
    elif kind == "numpy.memmap":
        a = np.memmap(npy, np.float32, "r", offset=128, shape=data.shape)
    elif kind == "column view":
        a, want = bigarr.open(npy)[:, 3:7], data[:, 3:7]
    elif kind == "strided rows":
        a, want = bigarr.open(npy)[::3], data[::3]
    elif kind == "zarr":
        zarr = pytest.importorskip("zarr")
        a = zarr.create_array(tmp_path / "z.zarr", data=data, chunks=(2000, 32))
    elif kind == "dask":
        da = pytest.importorskip("dask.array")
        a = da.from_array(data, chunks=(7000, 16))
    else:
        a = data
    # 12.8 MiB of data at 4 MiB: std's sub-block scratch (1 MiB per thread) fits
    opts: dict[str, Any] = {"budget": "4MiB", "threads": 2, "progress": False}
    np.testing.assert_allclose(bigarr.sum(a, axis=0, dtype=np.float64, **opts),
                               want.sum(axis=0, dtype=np.float64), rtol=1e-9)
    np.testing.assert_array_equal(bigarr.argmax(a, axis=0, **opts), want.argmax(axis=0))
    np.testing.assert_allclose(bigarr.std(a, axis=0, **opts), want.std(axis=0, dtype=np.float64),
                               rtol=1e-6)  # bigarr accumulates in float64
    out = bigarr.map_blocks(lambda b: b * 2, a, out=tmp_path / "o.npy", overwrite=True, **opts)
    with out:
        np.testing.assert_array_equal(out, want * 2)


def test_dask_blocks_larger_than_a_chunk_are_cut(tmp_path: Path, npy: Path,
                                                 data: np.ndarray[Any, Any]) -> None:
    pytest.importorskip("dask.array")
    x = bigarr.to_dask(npy, chunks=(N, 32))  # one 12.2 MiB block, a 256 KiB budget
    assert float(bigarr.sum(x, dtype=np.float64, budget="256KiB", progress=False)) == \
        pytest.approx(float(data.sum(dtype=np.float64)))


def test_temporaries_measured_while_another_thread_measures_too() -> None:
    # tracemalloc is the process's: a plan in another thread used to stop the tracing under
    # this one's measurement (which then read nothing: a run planned with no temporaries)
    import threading
    import time

    block = np.ones(1 << 16)
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            _runplan.measure_temporaries(lambda b: b + 1, [block], block.nbytes)

    def eight_mib(b: Any) -> Any:
        t = np.ones(1 << 20)  # 8 MiB, held a while
        time.sleep(0.002)
        return t.sum() + b[0]

    other = threading.Thread(target=busy)
    other.start()
    try:
        got = [_runplan.measure_temporaries(eight_mib, [block], block.nbytes)[0]
               for _ in range(40)]
    finally:
        stop.set()
        other.join()
    floor = ((8 << 20) - _runplan.PROBE_SLACK) / block.nbytes
    assert min(got) >= floor * 0.99, min(got)
    # and a probe that plans a run of its own measures inside it (the lock is reentrant)
    nested = _runplan.measure_temporaries(
        lambda b: _runplan.measure_temporaries(eight_mib, [b], b.nbytes)[0], [block],
        block.nbytes)[0]
    assert nested >= floor * 0.99
