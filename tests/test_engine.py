"""The execution engine and map_blocks: ordering, flush policy, memory plan, outputs."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigarr
from bigarr._compute import engine as _engine
from bigarr._compute import runplan as _runplan
from bigarr._compute.engine import Writeback
from bigarr._compute.operands import Stream
from bigarr._compute.operands import parse_operand as as_stream
from bigarr._plan import budget as _budget
from bigarr._plan.chunks import ChunkPlan, plan_chunks
from bigarr.errors import BudgetError, FileExistsError_, ShapeError


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_budget, "MIN_CHUNK_BYTES", 4096)


def _file(tmp_path: Path, x: np.ndarray[Any, Any], name: str = "x.npy") -> bigarr.memmap:
    order = "F" if x.flags.f_contiguous and not x.flags.c_contiguous else "C"
    arr = bigarr.create(tmp_path / name, x.shape, x.dtype, order=order, overwrite=True)
    arr[...] = x
    arr.flush()
    return arr


# ---- the engine ----------------------------------------------------------------------------
def _run_plan(plan: ChunkPlan, threads: int, prefetch: int = 1) -> _runplan.RunPlan:
    """A RunPlan around a given chunk plan (the executor's tests choose the chunks)."""
    memory = _budget.plan_memory(1 << 30, threads=threads, prefetch=prefetch, streams=1)
    return _runplan.RunPlan("test", (), plan, "keys", threads, prefetch, True, 0, False,
                            memory.budget, memory, memory.nbytes)


def _run(plan: ChunkPlan, work: Any, *, streams: list[Stream], threads: int,
         prefetch: int = 1, skip: Any = ()) -> Any:
    return _engine.execute(_run_plan(plan, threads, prefetch), work, streams, skip=skip)


def test_run_yields_in_chunk_order_and_skips() -> None:
    plan = plan_chunks((10_000,), np.float64, budget=8192)
    x = np.arange(10_000.0)
    seen: list[int] = []
    lock = threading.Lock()

    def work(chunk: Any, blocks: list[np.ndarray[Any, Any]]) -> float:
        with lock:
            seen.append(chunk.index)
        return float(blocks[0].sum())

    out = list(_run(plan, work, streams=[as_stream(x)], threads=2, skip={1, 3}))
    assert [c.index for c, _ in out] == [c.index for c in plan.chunks if c.index not in (1, 3)]
    assert sorted(seen) == [i for i in range(len(plan)) if i not in (1, 3)]
    assert sum(v for _, v in out) + x[plan[1].key].sum() + x[plan[3].key].sum() == x.sum()


def test_run_propagates_errors_and_stops() -> None:
    plan = plan_chunks((100_000,), np.float64, budget=8192)
    calls: list[int] = []

    def work(chunk: Any, blocks: list[np.ndarray[Any, Any]]) -> None:
        calls.append(chunk.index)
        if chunk.index == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        list(_run(plan, work, streams=[as_stream(np.zeros(100_000))], threads=2,
                         prefetch=1))
    assert len(calls) <= 2 + 3  # the failing chunk plus at most the window behind it
    assert len(calls) < len(plan)


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_prefetch_never_populates_a_chunk_after_its_release(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: str) -> None:
    # Regression: the dispatcher populated a chunk *after* submitting it, so a fast worker could
    # release the chunk first and the late POPULATE_READ left its pages mapped for good
    # (resident memory grew past the budget, chunk by chunk). Only chunks not all in the page
    # cache are populated: a warm file's chunks are faulted in by the workers.
    from bigarr._os.cachestat import cached_pages
    from bigarr._os.mapping import Mapping

    _file(tmp_path, np.arange(64 * 1024, dtype=np.float64)).close()
    path = tmp_path / "x.npy"
    if cache == "cold":  # the first fault's readahead would bring in this small file whole
        monkeypatch.setattr(Mapping, "all_cached", lambda self, span: False)
    else:
        path.read_bytes()
        with open(path, "rb") as f:
            if cached_pages(f.fileno(), 0, path.stat().st_size) is None:
                pytest.skip("no cachestat here: warm chunks are populated as cold ones")
    x = bigarr.open(path)
    events: list[tuple[str, Any]] = []
    lock = threading.Lock()
    advise = Mapping.advise

    def recording(self: Mapping, hint: Any, span: Any) -> bool:
        if hint.name == "populate_read":
            threading.Event().wait(0.01)  # a slow populate: the worker would finish first
        with lock:
            events.append((hint.name, span))
        return advise(self, hint, span)

    monkeypatch.setattr(Mapping, "advise", recording)
    plan = plan_chunks(x.shape, x.dtype, budget=16384)
    list(_run(plan, lambda _c, b: float(b[0].sum()), streams=[as_stream(x)], threads=1,
                     prefetch=1))
    populated = [(i, span) for i, (name, span) in enumerate(events) if name == "populate_read"]
    if cache == "warm":
        assert not populated
    assert populated or cache == "warm"
    for i, span in populated:  # every populated span is released afterwards (releases are
        # widened by the fault-around window, so they cover it rather than equal it)
        assert any(name == "dontneed" and d.start <= span.start and span.stop <= d.stop
                   for name, d in events[i + 1:]), span
    x.close()


def test_threads_validation() -> None:
    assert _runplan.parse_threads(None) >= 1
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="threads") as info:
            _runplan.parse_threads(bad)  # type: ignore[arg-type]
        assert isinstance(info.value, bigarr.errors.BigArrError)


def test_flush_policy_flushes_every_n_bytes(tmp_path: Path) -> None:
    out = bigarr.create(tmp_path / "o.npy", (64 * 1024,), np.float32)
    stream = as_stream(out, output=True, by_key=False)
    batches: list[list[int]] = []
    wb = Writeback(3 * 16384, durable=True, on_durable=batches.append)
    plan = plan_chunks(out.shape, out.dtype, budget=16384)  # 16 chunks of 16 KiB
    for chunk in plan:
        wb.write(chunk.index, stream, stream.block(chunk), np.full(4096, chunk.index))
        wb.chunk_done(chunk.index)
    wb.drain()
    # Beyond 3 chunks pending, the oldest is flushed; the last 3 at the end.
    assert [len(b) for b in batches] == [1] * 13 + [3]
    assert [b[0] for b in batches[:13]] == list(range(13))
    assert sorted(i for b in batches for i in b) == list(range(16))
    np.testing.assert_array_equal(np.load(tmp_path / "o.npy"), np.repeat(np.arange(16), 4096))


def test_shared_writes_through_the_mapping_are_flushed_then_released(tmp_path: Path) -> None:
    out = bigarr.create(tmp_path / "f.npy", (256, 64), np.float64, order="F")
    stream = as_stream(out, output=True, by_key=False)
    wb = Writeback(1)
    plan = plan_chunks((256, 64), np.float64, budget=64 * 512)
    for chunk in plan:
        block = stream.block(chunk)
        assert not block.flags.c_contiguous  # rows of a Fortran file: strided
        wb.write(chunk.index, stream, block, 1.0)
        wb.chunk_done(chunk.index)
    wb.drain()
    assert np.load(tmp_path / "f.npy").sum() == 256 * 64


def test_strided_views_are_released_by_the_parent_pages_they_span(tmp_path: Path) -> None:
    # Changed by design: a sparse view (one column of a row-major file) was not released at
    # all (its span was None), so reductions over x[:, :4] of 32 columns grew to the file size.
    # Every view now releases the pages of the parent it touched.
    x = _file(tmp_path, np.arange(200 * 64, dtype=np.float64).reshape(200, 64))
    every_other = as_stream(x[:, ::2])
    column = as_stream(x[:, 3])
    assert every_other.array is not None and column.array is not None
    rows = every_other.array[10:20]
    (span,) = every_other.page_spans(rows)
    assert span.nbytes == 10 * 64 * 8 - 8
    (col,) = column.page_spans(column.array[10:20])  # 512-byte rows: pages touch, one span
    assert col.nbytes == 9 * 64 * 8 + 8
    sparse = as_stream(x[::100, 3])  # rows 51 KiB apart: one span per element
    assert sparse.array is not None and len(sparse.page_spans(sparse.array)) == 2
    for view in (x[:, ::2], x[:, 3], x[::3, 1:5]):
        np.testing.assert_allclose(bigarr.sum(view, axis=0, budget="64KiB", progress=False),
                                   np.asarray(view).sum(axis=0))
        np.testing.assert_allclose(bigarr.var(view, budget="4MiB", progress=False),
                                   np.asarray(view).var())


# ---- map_blocks ----------------------------------------------------------------------------
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.sampled_from([(0,), (1,), (5000,), (4097,), (0, 3), (1, 3), (3001, 7), (200, 5, 3),
                           (1, 1, 1), (129, 1000)]),
    order=st.sampled_from(["C", "F"]),
    threads=st.sampled_from([1, 2]),
    mapped=st.booleans(),
)
def test_map_blocks_matches_numpy(tmp_path: Path, shape: tuple[int, ...], order: str,
                                  threads: int, mapped: bool) -> None:
    x = np.asarray(np.random.default_rng(1).normal(size=shape), order=order).astype(
        np.float32, order=order)
    src: Any = _file(tmp_path, x) if mapped else x
    opts: dict[str, Any] = {"out": tmp_path / "y.npy", "overwrite": True, "threads": threads,
                            "progress": False}
    budget: int | str = "1MiB"
    for attempt in range(3):
        try:
            out = bigarr.map_blocks(lambda b: b * 2 + 1, src, budget=budget, **opts)
            break
        except BudgetError as exc:
            # Changed by design: rows of a Fortran-ordered file touch every column's pages,
            # and those pages now count; the refusal names a budget that works (the first one,
            # before func's temporaries are measured, the second one with them).
            assert mapped and order == "F" and attempt < 2, str(exc)
            budget = _suggested(exc)
    with out:
        assert out.shape == x.shape and out.dtype == x.dtype
        np.testing.assert_array_equal(out, x * 2 + 1)


def test_multiple_inputs_and_broadcast_operands(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(5000, 4)), rng.normal(size=(5000,))
    w = rng.normal(size=4)  # small: passed whole
    src = _file(tmp_path, a)
    np.save(tmp_path / "b.npy", b)  # numpy's header: not page-aligned
    out = bigarr.map_blocks(lambda x, y, v, k: x @ v + y * k, src, str(tmp_path / "b.npy"), w,
                            3.0, out=tmp_path / "o.npy", dtype=np.float64, budget="200KiB",
                            progress=False)
    np.testing.assert_allclose(out, a @ w + b * 3.0)
    np.save(tmp_path / "short.npy", np.zeros((4999, 4)))  # files are always cut into rows
    with pytest.raises(ShapeError, match="rows"):
        bigarr.map_blocks(np.add, a, tmp_path / "short.npy", out=np.zeros((5000, 4)),
                          progress=False)


def test_in_place_outputs(tmp_path: Path) -> None:
    x = np.arange(30_000, dtype=np.int64).reshape(10_000, 3)
    target = np.zeros_like(x)
    assert bigarr.map_blocks(np.negative, x, out=target, budget="200KiB", progress=False) is target
    np.testing.assert_array_equal(target, -x)
    mapped = _file(tmp_path, x)
    bigarr.map_blocks(lambda b: b + 1, mapped, out=mapped, budget="200KiB", progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), x + 1)
    assert not os.path.exists(str(tmp_path / "x.npy") + ".bigarr-journal")
    bigarr.check_complete(tmp_path / "x.npy")


def test_new_file_refusals_and_failures_leave_nothing_behind(tmp_path: Path) -> None:
    x = np.ones(50_000)
    (tmp_path / "exists.npy").write_bytes(b"keep")
    with pytest.raises(FileExistsError_):
        bigarr.map_blocks(np.copy, x, out=tmp_path / "exists.npy", progress=False)
    assert (tmp_path / "exists.npy").read_bytes() == b"keep"

    def fails(b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if b[0] == 2:
            raise RuntimeError("func failed")
        return b

    y = np.repeat(np.arange(5.0), 10_000)
    with pytest.raises(RuntimeError, match="func failed"):
        bigarr.map_blocks(fails, y, out=tmp_path / "half.npy", budget="160KiB", progress=False)
    assert not (tmp_path / "half.npy").exists()  # never half-written under its name
    with pytest.raises(ShapeError, match="rows"):
        bigarr.map_blocks(lambda b: b[:-1], x, out=tmp_path / "short.npy", progress=False)


def test_variable_length_output_through_an_appender(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(20_000, 3)).astype(np.float32)
    with bigarr.Appender(tmp_path / "kept.npy", np.float32, (3,)) as app:
        bigarr.map_blocks(lambda b: b[b[:, 0] > 0.5], x, out=app, budget="128KiB", threads=2,
                          progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "kept.npy"), x[x[:, 0] > 0.5])
    assert not os.path.exists(str(tmp_path / "kept.npy") + ".bigarr-journal")


def test_a_row_larger_than_the_chunk_budget_is_refused(tmp_path: Path) -> None:
    x = np.zeros((4, 200_000), np.float32)  # 800 KB rows
    with pytest.raises(BudgetError, match="whole rows") as info:
        bigarr.map_blocks(np.copy, x, out=tmp_path / "o.npy", budget="2MiB", progress=False)
    assert "800000 bytes" in str(info.value)
    assert not (tmp_path / "o.npy").exists()


def test_impossible_budget_is_refused_before_anything_runs(tmp_path: Path) -> None:
    # A mapped input: its chunks' pages count (an in-memory input's blocks are views and now
    # cost nothing, so 20 KiB became enough for np.ones(100) by design).
    calls: list[int] = []
    src = _file(tmp_path, np.ones(100_000), "in.npy")
    with pytest.raises(BudgetError) as info:
        bigarr.map_blocks(lambda b: calls.append(1) or b, src, out=tmp_path / "o.npy",
                          budget="20KiB", threads=2, progress=False)
    message = str(info.value)
    assert "budget is 20480 bytes" in message and "needs at least" in message
    assert calls == [] and not (tmp_path / "o.npy").exists()


def _suggested(error: BaseException) -> int:
    import re

    match = re.search(r"Raise budget= to at least (\d+)", str(error))
    assert match is not None, str(error)
    return int(match.group(1))


@pytest.mark.parametrize(("shape", "budget", "threads"), [
    ((2000, 300), "300KiB", 1),    # 1200-byte rows; the flush share grows with the budget
    ((2000, 300), "700KiB", 2),
    ((4, 200_000), "2MiB", 2),     # a row larger than the chunk budget
])
def test_the_suggested_budget_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                    shape: tuple[int, ...], budget: str, threads: int) -> None:
    # Regression: the default flush threshold is a quarter of the budget, so the budget the
    # message asked for left less than it said per chunk and was refused again.
    monkeypatch.setattr(_budget, "MIN_CHUNK_BYTES", 64 << 10)
    # A mapped input (changed by design: an in-memory input's blocks are views and cost no
    # budget, so in memory these budgets became enough).
    x = _file(tmp_path, np.ones(shape, np.float32), "in.npy")
    opts: dict[str, Any] = {"threads": threads, "progress": False, "overwrite": True}
    with pytest.raises(BudgetError) as info:
        bigarr.map_blocks(np.copy, x, out=tmp_path / "o.npy", budget=budget, **opts)
    need = _suggested(info.value)
    try:
        bigarr.map_blocks(np.copy, x, out=tmp_path / "o.npy", budget=need, **opts).close()
    except BudgetError as again:
        # Changed by design: a budget too small for the chunks alone is refused before func
        # runs, so that first suggestion cannot include func's measured temporaries yet; the
        # second one (after the probe) does, and it must work.
        assert "temporaries" in str(again)
        need = _suggested(again)
        bigarr.map_blocks(np.copy, x, out=tmp_path / "o.npy", budget=need, **opts).close()
    # and it is close to the smallest one (the measured temporaries, rounded up to 1/8 of a
    # byte per byte, move a little with the allocator between runs, so not to the page)
    with pytest.raises(BudgetError):
        bigarr.map_blocks(np.copy, x, out=tmp_path / "o.npy", budget=need * 3 // 4, **opts)


def test_memory_plan_arithmetic() -> None:
    plan = _budget.plan_memory("64MiB", threads=2, prefetch=1, streams=4,
                               dirty_bytes=16 << 20)
    assert plan.in_flight == 3 and plan.chunk_bytes % 4096 == 0
    assert plan.nbytes <= 64 << 20
    assert plan.chunk_bytes * 12 + (16 << 20) == plan.nbytes or plan.nbytes < 64 << 20
    with pytest.raises(BudgetError) as info:
        plan.check(plan.chunk_bytes + 1)
    assert str(64 << 20) in str(info.value)


def test_progress_callbacks_see_every_chunk(tmp_path: Path) -> None:
    events: list[Any] = []
    x = np.ones((40_000,), np.float32)
    bigarr.map_blocks(np.sqrt, x, out=tmp_path / "o.npy", budget="128KiB", progress=events.append)
    chunks = [e for e in events if e.kind == "chunk"]
    assert len(chunks) > 2 and events[0].kind == "start" and events[-1].kind == "end"
    assert chunks[-1].done_bytes == chunks[-1].total_bytes == x.nbytes
    assert sorted(e.chunk for e in chunks) == list(range(len(chunks)))


def test_streams_of_numpy_memmaps_are_remapped(tmp_path: Path) -> None:
    np.save(tmp_path / "n.npy", np.arange(10_000.0))
    m = np.load(tmp_path / "n.npy", mmap_mode="r")
    stream: Stream = as_stream(m)
    assert stream.mapping is not None and stream.owned and stream.kind == "numpy.memmap"
    assert stream.array is not None and np.array_equal(stream.array, m)
    view = as_stream(m[7:5000:3])
    assert view.mapping is not None and np.array_equal(view.array, m[7:5000:3])
    stream.close()
    view.close()


def test_peak_rss_stays_within_the_budget(tmp_path: Path,
                                          run_py: Callable[..., CompletedProcess[str]]) -> None:
    n = (96 << 20) // 4
    src = bigarr.create(tmp_path / "in.npy", (n,), np.float32, fill=1.0)
    src.close()
    proc = run_py(f"""
        import resource, numpy as np, bigarr
        def rss():
            return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) * 1024
        # imports are not the run's memory
        import bigarr._compute.mapblocks, bigarr._compute.reductions
        before = rss()
        x = bigarr.open({str(tmp_path / "in.npy")!r})
        y = bigarr.map_blocks(lambda b: b * 2 + 1, x, out={str(tmp_path / "out.npy")!r},
                              budget="16MiB", threads=2, progress=False)
        total = float(bigarr.sum(y, budget="16MiB", threads=2, progress=False))
        print(total, rss() - before)
    """)
    assert proc.returncode == 0, proc.stderr
    total, grew = proc.stdout.split()
    assert float(total) == 3.0 * n
    # Without release-behind the two 96 MiB files would be resident (192 MiB).
    assert int(grew) < (16 << 20) + (24 << 20), int(grew) >> 20


def test_no_worker_threads_outlive_an_error_in_the_consumer(tmp_path: Path) -> None:
    # An error raised while consuming results (here: the Appender refusing a result's row
    # shape) must shut the engine's pool down at once, not when the traceback is collected.
    x = np.ones((20_000, 3), np.float32)
    with bigarr.Appender(tmp_path / "a.npy", np.float32, (3,)) as app:
        with pytest.raises(ShapeError) as info:
            bigarr.map_blocks(lambda b: b[:, :2], x, out=app, budget="128KiB", threads=2,
                              progress=False)
        assert info.value is not None  # the traceback (and its frames) are still alive
        assert not [t for t in threading.enumerate() if t.name.startswith("bigarr")]


def test_records_whose_page_aligned_starts_are_out_of_reach_fall_back_to_row_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: 1200-byte records meet a page boundary only every 256 rows (300 KiB, the
    # lcm of 1200 and 4096); with 64 KiB chunks the aligned plan failed and map_blocks refused
    # "a budget of 65536 bytes" (the chunk share, not the budget given) instead of starting
    # chunks on row boundaries as it does for rows of several elements.
    monkeypatch.setattr(_budget, "MIN_CHUNK_BYTES", 64 << 10)
    x = np.zeros(5000, dtype=[("a", "f4", (300,))])
    x["a"] = np.arange(5000, dtype=np.float32)[:, None]
    src = _file(tmp_path, x)
    out = bigarr.map_blocks(lambda b: b, src, out=tmp_path / "o.npy", budget="1MiB",
                            threads=2, progress=False)
    with out:
        np.testing.assert_array_equal(out, x)
    total = bigarr.reduce_blocks(lambda r, s: float(r["a"].sum(dtype=np.float64) + s.sum()),
                                 lambda p, q: p + q, src, np.ones(5000), budget="1MiB",
                                 progress=False)
    assert total == float(x["a"].sum(dtype=np.float64)) + 5000
    assert bigarr.reduce_blocks(len, lambda p, q: p + q, src, budget="1MiB",
                                progress=False) == 5000


# ---- the executor's window, shared by execute() and the sort's merge -------------------------
@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 12), threads=st.integers(0, 3), depth=st.integers(0, 4),
       seed=st.integers(0, 1 << 16))
def test_ordered_keeps_order_and_its_window(n: int, threads: int, depth: int, seed: int) -> None:
    """Results come in the items' order; an item is taken only while fewer than the window are
    in flight, counted after the consumer had the oldest (so a producer may reuse its memory)."""
    rng = np.random.default_rng(seed)
    waits = rng.uniform(0, 0.002, n)
    window = max(1, depth or threads) if threads else 1
    lock = threading.Lock()
    flight = [0, 0]  # in flight now, most at once

    def items() -> Any:
        for i in range(n):
            with lock:
                assert flight[0] < window  # taken only below the window
            yield i

    def work(i: int) -> int:
        with lock:
            flight[0] += 1
            flight[1] = max(flight[1], flight[0])
        threading.Event().wait(float(waits[i]))
        return i * i

    got = []
    for value in _engine.ordered(items(), work, threads, depth):
        with lock:
            flight[0] -= 1  # the consumer has it: no longer in flight
        got.append(value)
    assert got == [i * i for i in range(n)]
    assert flight[1] <= window


def test_ordered_error_cancels_the_queue_and_stops_its_threads() -> None:
    started: list[int] = []

    def work(i: int) -> int:
        started.append(i)
        if i == 2:
            raise ValueError("item 2")
        threading.Event().wait(0.01)
        return i

    before = {t.name for t in threading.enumerate()}
    with pytest.raises(ValueError, match="item 2"):
        list(_engine.ordered(range(100), work, 2, 3, name="bigarr-test-ordered"))
    assert max(started) < 10  # the queue was cancelled, not run to the end
    gen = _engine.ordered(range(100), work, 2, name="bigarr-test-ordered")
    assert next(gen) == 0
    gen.close()  # a consumer stopping early
    leftover = {t.name for t in threading.enumerate()} - before
    assert not any(name.startswith("bigarr-test-ordered") for name in leftover)
