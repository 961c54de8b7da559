"""Warm runs (issue 15): a pooled read-only run whose mapped inputs are all in the page cache
reads nothing ahead, so its plan charges only the chunks the threads work on; chunks are cut
so that they split evenly among the threads. The memory promise is measured in a subprocess
on a warm file (``tests/test_budget_rss.py`` evicts its files first: those are cold runs)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._compute import engine
from bigarr._compute.coldread import ColdReads
from bigarr._compute.operands import parse_operand
from bigarr._compute.runplan import RunPlan, plan_run
from bigarr._os.cachestat import cached_pages
from bigarr._os.geometry import PAGE_SIZE
from bigarr._plan import budget as _budget
from bigarr.errors import BudgetError

MIB = 1 << 20


def _cachestat_works(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        return cached_pages(fd, 0, PAGE_SIZE) is not None
    finally:
        os.close(fd)


def _warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(4 * MIB):
            pass


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_budget, "MIN_CHUNK_BYTES", 4096)


@pytest.fixture
def npy(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "x.npy"
    np.save(path, np.arange(8 * MIB // 4, dtype=np.float32).reshape(-1, 32) % 251)
    if not _cachestat_works(path):
        pytest.skip("no cachestat here (Linux 6.5+): no run is planned warm")
    _warm(path)
    yield path


def _plan(obj: Any, **options: Any) -> RunPlan:
    stream = parse_operand(obj)
    try:
        return plan_run("sum", [stream], layout="keys", **options)
    finally:
        stream.close()


def test_a_warm_input_is_planned_for_the_threads_alone(
        npy: Path, evict: Callable[[Path], None]) -> None:
    warm = _plan(npy, budget="3MiB", threads=2)
    assert warm.warm and warm.memory.in_flight == 2 and ", warm;" in repr(warm)
    assert warm.peak_bytes <= warm.budget
    evict(npy)
    cold = _plan(npy, budget="3MiB", threads=2)
    assert not cold.warm and cold.memory.in_flight == 3 and "warm" not in repr(cold)
    # a third more per chunk: 2 chunks in flight instead of 3
    assert warm.memory.chunk_bytes >= cold.memory.chunk_bytes * 3 // 2 - PAGE_SIZE


def test_only_pooled_read_only_runs_are_warm(npy: Path) -> None:
    assert _plan(npy, budget="3MiB", threads=1).warm
    assert not _plan(npy, budget="3MiB", threads=0).warm  # an iteration: the consumer's chunk
    assert not _plan(npy, budget="3MiB", threads=2, prefetch=0).warm
    assert not _plan(npy, budget="3MiB", threads=2, release=False).warm
    assert not _plan(np.load(npy), budget="3MiB", threads=2).warm  # nothing mapped
    with bigarr.open(npy, mode="private") as x:  # never released: pages stay
        assert not _plan(x, budget="3MiB", threads=2).warm
    out = parse_operand(npy, output=True)
    src = parse_operand(npy)
    try:
        plan = plan_run("map_blocks", [src, out], budget="3MiB", threads=2, layout="rows")
    finally:
        src.close()
        out.close()
    assert not plan.warm


def test_a_budget_refused_cold_is_refused_warm(npy: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # 2.5 MiB holds two 1 MiB chunks (warm) but not three (cold): refused all the same, so
    # whether a budget is enough never depends on what the page cache holds
    monkeypatch.setattr(_budget, "MIN_CHUNK_BYTES", MIB)
    with pytest.raises(BudgetError):
        _plan(npy, budget=5 * MIB // 2, threads=2)
    assert _plan(npy, budget=3 * MIB, threads=2).warm


def test_warm_runs_read_nothing_ahead(npy: Path, evict: Callable[[Path], None],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_prefetch, real_for_run = engine.prefetch, ColdReads.for_run

    def prefetch(*args: Any, **kwargs: Any) -> None:
        calls.append("prefetch")
        real_prefetch(*args, **kwargs)

    def for_run(*args: Any, **kwargs: Any) -> ColdReads | None:
        calls.append("for_run")
        return real_for_run(*args, **kwargs)

    monkeypatch.setattr(engine, "prefetch", prefetch)
    monkeypatch.setattr(ColdReads, "for_run", staticmethod(for_run))
    want = np.load(npy).sum(axis=0, dtype=np.float64)
    got = bigarr.sum(npy, axis=0, dtype=np.float64, budget="1MiB", threads=2, progress=False)
    np.testing.assert_array_equal(got, want)
    assert calls == []
    evict(npy)
    got = bigarr.sum(npy, axis=0, dtype=np.float64, budget="1MiB", threads=2, progress=False)
    np.testing.assert_array_equal(got, want)
    assert "for_run" in calls and "prefetch" in calls


@pytest.mark.parametrize("threads", [2, 3])
def test_chunks_split_evenly_among_the_threads(threads: int) -> None:
    a = np.zeros((9 * MIB) // 4, dtype=np.float32)  # 9 chunks of the budget's 1 MiB
    plan = _plan(a, budget=3 * MIB if threads == 2 else 4 * MIB, threads=threads)
    sizes = [c.nbytes for c in plan.chunks]
    assert plan.memory.chunk_bytes == MIB
    assert max(sizes) <= plan.memory.chunk_bytes and sum(sizes) == a.nbytes
    assert len(sizes) % threads == 0 and len(sizes) == threads * -(-9 // threads)
    assert max(sizes) - min(sizes) <= len(sizes) * PAGE_SIZE  # equal up to page rounding
    # one thread: nothing to balance; a sliver of a last round: not worth smaller chunks
    assert [c.nbytes for c in _plan(a, budget=2 * MIB, threads=1).chunks] == [MIB] * 9
    b = np.zeros((8 * MIB + 4096) // 4, dtype=np.float32)
    assert len(_plan(b, budget=3 * MIB, threads=2).chunks) == 9  # 8 + 4 KiB, not 10


_SCRIPT = """
import bigarr, numpy as np
from bigarr._compute.operands import parse_operand
from bigarr._compute.runplan import plan_run

def status(key):
    return int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) << 10

P, B = {path!r}, {budget}
x = bigarr.open(P)
s = parse_operand(x)
warm = plan_run('sum', [s], budget=B, threads=2, layout='keys').warm
del s
float(bigarr.sum(x[:1024], threads=2, progress=False))  # threads and kernels made once
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # reset VmHWM to the current resident memory
base = status('VmRSS')
total = float(bigarr.sum(x, budget=B, threads=2, progress=False))
print(warm, total, status('VmHWM') - base)
"""


def test_a_warm_run_stays_within_its_budget(tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("VmHWM and clear_refs are Linux's")
    path = tmp_path / "w.npy"
    n = (160 * MIB) // 4
    x = bigarr.create(path, n, np.float32, fill=1.0)
    x.close()
    if not _cachestat_works(path):
        pytest.skip("no cachestat here (Linux 6.5+): no run is planned warm")
    _warm(path)
    budget = 64 * MIB
    code = _SCRIPT.format(path=str(path), budget=budget)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
    warm, total, grew = proc.stdout.split()
    assert warm == "True" and float(total) == n
    # Two chunks of 32 MiB mapped at most, plus the 2 MiB units at their edges: a third
    # chunk held (a prefetched chunk mapped) would reach 96 MiB.
    assert int(grew) <= budget + 16 * MIB, f"grew {int(grew) >> 20} MiB, budget 64 MiB"


def test_warm_runs_still_charge_temporaries_for_every_chunk_in_flight(npy: Path) -> None:
    """A function's temporaries and result are held for each chunk in flight, warm or cold (a
    result finished out of order waits while its thread starts on the next chunk): a warm plan
    drops only the queued chunk's pages."""
    for temps in (0.0, 0.25, 1.0):
        cold = _plan(npy, budget="3MiB", threads=2, prefetch=0, temporaries=temps)
        warm = _plan(npy, budget="3MiB", threads=2, temporaries=temps)
        assert warm.warm and not cold.warm
        m = warm.memory
        # pages of the threads' chunks, and temporaries for the threads' and the queued one
        charged = m.chunk_bytes * (2 * m.streams + 3 * temps)
        assert charged <= m.budget - m.scratch_bytes * m.threads - m.fixed_bytes
        if temps:  # a larger charge per chunk than the same plan with only threads counted
            assert m.chunk_bytes < cold.memory.chunk_bytes
        else:
            assert m.chunk_bytes == cold.memory.chunk_bytes
