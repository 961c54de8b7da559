"""argsort, sort(by=), take and searchsorted out of core (issue 13): numpy is the oracle.

Orders are compared bit for bit (``view(uint8)``), so ``-0.0`` against ``0.0`` and the place of
each NaN count: a stable sort must keep equal keys in index order.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bigarr
from bigarr._compute import gather, order
from bigarr._compute import runs as runs_module
from bigarr._compute import sort as sort_module
from bigarr._formats.journal import journal_path, read_journal
from bigarr.errors import (
    ArgumentError,
    ArgumentValueError,
    BigArrError,
    BudgetError,
    DiskFullError,
    DtypeError,
    RegionError,
    ShapeError,
    StaleJournalWarning,
    UnsupportedError,
)
from test_order import DTYPES, KINDS, make

MATRIX = [(d, k) for d in DTYPES for k in KINDS if k != "special" or d.startswith("float")]


def bits(a: Any) -> np.ndarray[Any, Any]:
    return np.ascontiguousarray(a).view(np.uint8)


def lexsort_by(x: np.ndarray[Any, Any], by: Any) -> np.ndarray[Any, Any]:
    cols = [by] if isinstance(by, int) else list(by)
    return np.lexsort([x[:, c] for c in reversed(cols)])


# ---- argsort -------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "kind"), MATRIX)
def test_argsort_is_numpys_stable_argsort(dtype: str, kind: str) -> None:
    """Many runs (a 16 MiB budget over 100 000 values and their records) merged stably."""
    x = make(dtype, (100_000,), kind, seed=3)
    got = bigarr.argsort(x, budget="16MiB", progress=False)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.argsort(x, kind="stable"))


@pytest.mark.parametrize(("dtype", "kind"), [("float32", "special"), ("int16", "few"),
                                             ("uint8", "equal"), ("bool", "random"),
                                             ("float64", "reverse")])
def test_sort_by_rows_is_lexsort(tmp_path: Path, dtype: str, kind: str) -> None:
    x = make(dtype, (30_000, 4), kind, seed=5)
    for by in (0, [2, 1], [-1, 0, 3]):
        cols = [by] if isinstance(by, int) else [c % 4 for c in by]
        want = lexsort_by(x, cols)
        np.testing.assert_array_equal(
            bigarr.argsort(x, by=by, budget="16MiB", progress=False), want)
        with bigarr.sort(x, tmp_path / "s.npy", by=by, budget="16MiB", progress=False,
                         overwrite=True) as got:
            assert got.shape == x.shape and got.dtype == x.dtype
            assert np.array_equal(bits(got), bits(x[want]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


def test_nd_rows_by_flattened_column(tmp_path: Path) -> None:
    """Rows of a 3-d source are keyed by columns of the row flattened in C order."""
    x = make("int8", (5000, 2, 3), "few", seed=1)
    flat = x.reshape(5000, 6)
    want = lexsort_by(flat, [4, 0])
    with bigarr.sort(x, tmp_path / "s.npy", by=[4, 0], budget="8MiB", progress=False) as got:
        assert np.array_equal(np.asarray(got), x[want])


def test_multi_pass_merge(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fan-in of 2 forces several merge passes; the answer and the stability hold."""
    monkeypatch.setattr(sort_module, "MIN_BUFFER", 1 << 40)
    x = make("float32", (200_000, 2), "special", seed=8)
    x[:, 0] = np.round(x[:, 0] / 50)  # many ties across runs
    got = bigarr.argsort(x, by=0, budget="8MiB", progress=False)
    np.testing.assert_array_equal(got, lexsort_by(x, 0))
    assert order.LAST_PASSES[0] >= 3
    with bigarr.sort(x[:, 0].copy(), tmp_path / "v.npy", budget="4MiB", progress=False) as v:
        np.testing.assert_array_equal(v, np.sort(x[:, 0]))
    assert [p.name for p in tmp_path.iterdir()] == ["v.npy"]


@settings(max_examples=40, deadline=None)
@given(x=hnp.arrays(st.sampled_from(["int8", "uint16", "float16", "float64", "bool"]),
                    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=300)),
       data=st.data())
def test_hypothesis_argsort_by(x: np.ndarray[Any, Any], data: Any) -> None:
    ncols = x.shape[1]
    by = data.draw(st.lists(st.integers(0, ncols - 1), min_size=1, max_size=3))
    got = bigarr.argsort(x, by=by, budget="8MiB", progress=False, threads=1)
    np.testing.assert_array_equal(got, lexsort_by(x, by))
    flat = bigarr.argsort(x[:, by[0]].copy(), budget="8MiB", progress=False, threads=1)
    np.testing.assert_array_equal(flat, np.argsort(x[:, by[0]], kind="stable"))


def test_argsort_to_file_and_the_budget(tmp_path: Path) -> None:
    x = make("int32", (50_000,), "few", seed=2)
    with bigarr.argsort(x, tmp_path / "i.npy", budget="8MiB", progress=False) as got:
        assert isinstance(got, bigarr.memmap) and got.dtype == np.int64
        np.testing.assert_array_equal(got, np.argsort(x, kind="stable"))
    with pytest.raises(BudgetError, match="out="):  # 400 kB of indices: > half of 512 KiB
        bigarr.argsort(x, budget="512KiB", progress=False)
    assert bigarr.argsort(np.zeros(0), progress=False).shape == (0,)


def test_by_refusals(tmp_path: Path) -> None:
    x = np.zeros((10, 3))
    for bad in ("a", [], [0.5], True, None):
        with pytest.raises((ArgumentError, UnsupportedError)):
            bigarr.argsort(x, by=bad, progress=False)
    with pytest.raises(RegionError) as info:
        bigarr.sort(x, tmp_path / "s.npy", by=[0, 3], progress=False)
    assert isinstance(info.value, IndexError) and isinstance(info.value, BigArrError)
    with pytest.raises(ArgumentError, match="1-d"):
        bigarr.argsort(np.zeros(3), by=0, progress=False)
    with pytest.raises(DtypeError):
        bigarr.argsort(np.zeros(3, complex), progress=False)
    assert list(tmp_path.iterdir()) == []


# ---- temporary files -----------------------------------------------------------------------
def test_tmpdir_holds_the_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_dir, tmp_dir = tmp_path / "out", tmp_path / "tmp"
    out_dir.mkdir()
    tmp_dir.mkdir()
    seen: list[str] = []
    new = runs_module.TempRuns.new

    def spy(self: runs_module.TempRuns, size: int, dtype: Any) -> runs_module.Run:
        seen.append(self.folder)
        return new(self, size, dtype)

    monkeypatch.setattr(runs_module.TempRuns, "new", spy)
    x = make("float64", (100_000,), "random")
    with bigarr.sort(x, out_dir / "s.npy", budget="4MiB", progress=False,
                     tmpdir=tmp_dir) as got:
        np.testing.assert_array_equal(got, np.sort(x))
    assert seen and set(seen) == {str(tmp_dir)}
    assert list(tmp_dir.iterdir()) == []
    with pytest.raises(ArgumentError, match="tmpdir"):
        bigarr.sort(x, out_dir / "t.npy", tmpdir=tmp_path / "missing", progress=False)


def test_refused_up_front_without_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs_module, "free_bytes", lambda folder: 1000)
    monkeypatch.setattr(sort_module, "free_bytes", lambda folder: 1000)
    x = make("float64", (100_000,), "random")
    with pytest.raises(DiskFullError, match=r"800000 bytes .* 1000 bytes free"):
        bigarr.sort(x, tmp_path / "s.npy", budget="4MiB", progress=False)
    with pytest.raises(DiskFullError, match="1000 bytes free"):
        bigarr.argsort(x, budget="4MiB", progress=False, tmpdir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_runs_removed_when_phase_one_fails(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    calls = [0]
    records = sort_module._Job.records

    def fail_third(self: Any, block: Any, row: int) -> Any:
        calls[0] += 1
        if calls[0] == 3:
            raise OSError("injected failure in phase 1")
        return records(self, block, row)

    monkeypatch.setattr(sort_module._Job, "records", fail_third)
    x = make("int64", (200_000, 2), "random")
    with pytest.raises(OSError, match="injected"):
        bigarr.sort(x, tmp_path / "s.npy", by=1, budget="4MiB", progress=False, threads=1)
    assert list(tmp_path.iterdir()) == []


# ---- take ----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "int8", "bool", "uint64"])
def test_take_equals_numpy(tmp_path: Path, dtype: str) -> None:
    x = make(dtype, (20_000, 3), "random", seed=4)
    np.save(tmp_path / "x.npy", x)
    idx = np.random.default_rng(1).integers(-20_000, 20_000, 50_000)
    got = bigarr.take(tmp_path / "x.npy", idx, budget="8MiB", progress=False)
    assert np.array_equal(bits(got), bits(np.take(x, idx, axis=0)))
    with bigarr.take(tmp_path / "x.npy", idx, tmp_path / "t.npy", budget="4MiB",
                     progress=False) as t:
        assert np.array_equal(bits(t), bits(np.take(x, idx, axis=0)))


def test_take_applies_argsort(tmp_path: Path) -> None:
    x = make("float64", (40_000, 2), "special", seed=6)
    np.save(tmp_path / "x.npy", x)
    with bigarr.argsort(tmp_path / "x.npy", tmp_path / "i.npy", by=1, budget="8MiB",
                        progress=False) as i, \
            bigarr.take(tmp_path / "x.npy", i, tmp_path / "r.npy", budget="8MiB",
                        progress=False) as rows:
        assert np.array_equal(bits(rows), bits(x[lexsort_by(x, 1)]))


def test_take_refusals(tmp_path: Path) -> None:
    x = np.arange(10.0)
    for bad in ([0, 10], [-11]):
        with pytest.raises(RegionError, match="out of bounds") as info:
            bigarr.take(x, np.array(bad), tmp_path / "t.npy", progress=False)
        assert isinstance(info.value, IndexError)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DtypeError):
        bigarr.take(x, np.array([0.5]), progress=False)
    with pytest.raises(ShapeError):
        bigarr.take(x, np.zeros((2, 2), int), progress=False)
    with pytest.raises(BudgetError, match="out="):
        bigarr.take(np.zeros((10, 1000)), np.zeros(1000, int), budget="4MiB", progress=False)


def test_take_from_zarr_and_dask_equals_numpy() -> None:
    zarr = pytest.importorskip("zarr")
    da = pytest.importorskip("dask.array")
    x = make("float32", (5000, 3), "special", seed=8)
    idx = np.random.default_rng(2).integers(-5000, 5000, 1000)
    idx[:4] = [0, 4999, -1, 0]
    z = zarr.create_array(zarr.storage.MemoryStore(), shape=x.shape, chunks=(64, 2),
                          dtype=x.dtype)
    z[:] = x
    for src in (z, da.from_array(x, chunks=(97, 3))):
        got = bigarr.take(src, idx, budget="4MiB", progress=False)
        assert np.array_equal(bits(got), bits(np.take(x, idx, axis=0)))
        assert bigarr.take(src, np.zeros(0, int), progress=False).shape == (0, 3)
        with pytest.raises(RegionError):
            bigarr.take(src, [5000], progress=False)
    # wide rows: a read spans at most a sub-batch (89 rows here), less than a block (96 rows)
    w = make("float32", (600, 8192), "random", seed=9)
    zw = zarr.create_array(zarr.storage.MemoryStore(), shape=w.shape, chunks=(96, 8192),
                           dtype=w.dtype)
    zw[:] = w
    idx = np.random.default_rng(3).integers(0, 600, 50)
    got = bigarr.take(zw, idx, budget="24MiB", threads=1, progress=False)
    assert np.array_equal(got, w[idx])


_TAKE_ZARR_RSS = """
import os, sys
import numpy as np, zarr, bigarr
def hwm():
    return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) << 10
z = zarr.create_array(sys.argv[1], shape=(32 << 10, 1024), chunks=(256, 1024), dtype="f8",
                      compressors=None)
for i in range(0, z.shape[0], 1024):
    z[i:i + 1024] = np.full((1024, 1024), float(i))
del z
z = zarr.open_array(sys.argv[1], mode="r")
open('/proc/self/clear_refs', 'w').write('5')
base = hwm()
r = bigarr.take(z, [5, 30000, 5], budget="16MiB", progress=False)
assert r[:, 0].tolist() == [0.0, 29696.0, 0.0], r[:, 0]
print(hwm() - base)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="VmHWM reset: Linux")
def test_take_from_zarr_reads_only_the_rows_needed_within_budget(tmp_path: Path) -> None:
    # regression: take read a zarr or dask source whole (256 MiB here) whatever the budget
    pytest.importorskip("zarr")
    res = subprocess.run([sys.executable, "-c", _TAKE_ZARR_RSS, str(tmp_path / "a.zarr")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.split()[-1]) <= (16 << 20) + (64 << 20), res.stdout


def test_take_sort_argsort_budget_none_means_the_default_budget(tmp_path: Path) -> None:
    # regression: budget=None raised TypeError from a private int(budget) helper
    x = make("float64", (1000, 2), "special", seed=3)
    idx = np.array([5, -1, 0, 5])
    assert np.array_equal(bits(bigarr.take(x, idx, budget=None, progress=False)),
                          bits(np.take(x, idx, axis=0)))
    assert np.array_equal(bigarr.argsort(x[:, 0], budget=None, progress=False),
                          np.argsort(x[:, 0], kind="stable"))
    with bigarr.sort(x[:, 0], tmp_path / "s.npy", budget=None, progress=False) as s:
        # bit for bit numpy's stable sort (-0.0 and 0.0, NaNs in input order)
        assert np.array_equal(bits(s), bits(np.sort(x[:, 0], kind="stable")))
    for bad in (1.5, -3, True):  # int(budget) used to accept these silently
        with pytest.raises(BudgetError):
            bigarr.take(x, idx, budget=bad, progress=False)  # type: ignore[arg-type]


# ---- searchsorted --------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "kind"), [("float32", "special"), ("int8", "few"),
                                             ("uint64", "random"), ("float16", "equal"),
                                             ("bool", "random"), ("int64", "sorted")])
def test_searchsorted_equals_numpy(tmp_path: Path, dtype: str, kind: str) -> None:
    a = np.sort(make(dtype, (100_000,), kind, seed=2))
    np.save(tmp_path / "a.npy", a)
    specials = np.array([np.nan, -0.0, 0.0, np.inf, -np.inf, 300.0, -1.0, 2.0**64])
    for v in (make(dtype, (7,), kind, 3), make(dtype, (30_000,), kind, 4), specials, 7, 0.5,
              make(dtype, (3, 4), kind, 5)):
        for side in ("left", "right"):
            want = np.searchsorted(a, v, side=side)
            got = bigarr.searchsorted(tmp_path / "a.npy", v, side=side, budget="16MiB",
                                      progress=False)
            np.testing.assert_array_equal(got, want)
            assert np.shape(got) == np.shape(want)


@settings(max_examples=40, deadline=None)
@given(a=hnp.arrays(st.sampled_from(["int16", "float32", "uint8"]),
                    st.integers(0, 400)),
       v=st.lists(st.floats(allow_nan=True, width=32), min_size=0, max_size=60))
def test_hypothesis_searchsorted(a: np.ndarray[Any, Any], v: list[float]) -> None:
    a = np.sort(a)
    for side in ("left", "right"):
        got = bigarr.searchsorted(a, np.array(v), side=side, progress=False, threads=1)
        np.testing.assert_array_equal(got, np.searchsorted(a, np.array(v), side=side))


def test_searchsorted_refusals() -> None:
    # a side numpy does not know: numpy's ValueError (it was ArgumentError, a TypeError)
    with pytest.raises(ValueError):
        np.searchsorted(np.arange(3), 1, side="middle")  # type: ignore[call-overload]
    with pytest.raises(ArgumentValueError, match="side"):
        bigarr.searchsorted(np.arange(3), 1, side="middle")
    with pytest.raises(ShapeError):
        bigarr.searchsorted(np.zeros((2, 2)), 1)


def test_searchsorted_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Few queries bisect (about log2(n) reads each); many take one pass."""
    a = np.sort(make("float64", (1_000_000,), "special", seed=1))
    np.save(tmp_path / "a.npy", a)

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("wrong path")

    few = np.array([np.nan, 0.0, -1.5, 1e9])
    many = make("float64", (100_000,), "special", seed=2)
    with monkeypatch.context() as m:
        m.setattr(gather, "_scan", refuse)
        np.testing.assert_array_equal(
            bigarr.searchsorted(tmp_path / "a.npy", few, progress=False),
            np.searchsorted(a, few))
    with monkeypatch.context() as m:
        m.setattr(gather, "_bisect", refuse)
        np.testing.assert_array_equal(
            bigarr.searchsorted(tmp_path / "a.npy", many, side="right", budget="32MiB",
                                progress=False),
            np.searchsorted(a, many, side="right"))


# ---- resume --------------------------------------------------------------------------------
_DIE_AT_FOURTH_RUN = """
import os, signal, bigarr
from bigarr._compute import runs
new = runs.TempRuns.new
count = [0]
def dying(self, size, dtype):
    count[0] += 1
    if count[0] == 4:
        os.kill(os.getpid(), signal.SIGKILL)
    return new(self, size, dtype)
runs.TempRuns.new = dying
bigarr.sort({src!r}, {out!r}, budget="4MiB", threads=1, progress=False, resume=True,
            tmpdir={tmp!r})
"""


def _killed_sort(src: Path, out: Path, tmp: Path) -> None:
    code = _DIE_AT_FOURTH_RUN.format(src=str(src), out=str(out), tmp=str(tmp))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(list(tmp.iterdir())) == 3  # three durable runs survive the kill


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL, statx")
def test_resume_reuses_runs_that_survive_kill_9(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    src, out, tmp = tmp_path / "x.npy", tmp_path / "s.npy", tmp_path / "tmp"
    tmp.mkdir()
    x = make("float64", (800_000,), "special", seed=9)
    np.save(src, x)
    calls = [0]
    records = sort_module._Job.records

    def counting(self: Any, block: Any, row: int) -> Any:
        calls[0] += 1
        return records(self, block, row)

    monkeypatch.setattr(sort_module._Job, "records", counting)
    with bigarr.sort(src, out, budget="4MiB", threads=1, progress=False) as whole:
        np.testing.assert_array_equal(whole, np.sort(x))
    nchunks, calls[0] = calls[0], 0
    out.unlink()
    assert nchunks > 4

    _killed_sort(src, out, tmp)
    assert not out.exists() and (tmp_path / "s.npy.bigarr-journal").exists()
    with bigarr.sort(src, out, budget="4MiB", threads=1, progress=False, resume=True,
                     tmpdir=tmp) as got:
        np.testing.assert_array_equal(got, np.sort(x))
    assert calls[0] == nchunks - 3  # the three journaled runs were reused
    assert list(tmp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy", "tmp", "x.npy"]

    # a run replaced by a copy of itself is not the file the journal names: sorted again
    out.unlink()
    calls[0] = 0
    _killed_sort(src, out, tmp)
    victim = sorted(tmp.iterdir())[0]
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data)
    with bigarr.sort(src, out, budget="4MiB", threads=1, progress=False, resume=True,
                     tmpdir=tmp) as got:
        np.testing.assert_array_equal(got, np.sort(x))
    assert calls[0] == nchunks - 2
    assert list(tmp.iterdir()) == []

    # without resume, what a killed resumable sort left is removed and all is sorted again
    out.unlink()
    calls[0] = 0
    _killed_sort(src, out, tmp)
    with bigarr.sort(src, out, budget="4MiB", threads=1, progress=False, tmpdir=tmp) as got:
        np.testing.assert_array_equal(got, np.sort(x))
    assert calls[0] == nchunks
    assert list(tmp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy", "tmp", "x.npy"]


_DIE_AFTER_FIRST_MERGE_PASS = """
import os, signal, bigarr
from bigarr._compute import sort, sortjournal
sort.MIN_BUFFER = 1 << 40  # a fan-in of 2: several merge passes
finished = sortjournal.RunJournal.pass_finished
def dying(self, number, runs):
    finished(self, number, runs)
    os.kill(os.getpid(), signal.SIGKILL)
sortjournal.RunJournal.pass_finished = dying
bigarr.sort({src!r}, {out!r}, budget="4MiB", threads=1, progress=False, resume=True,
            tmpdir={tmp!r})
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SIGKILL, statx")
def test_resume_starts_from_a_finished_merge_pass(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A sort killed after its first merge pass resumes from that pass: no chunk is sorted
    again and two passes fewer run; the answer is numpy's and nothing is left behind."""
    src, out, tmp = tmp_path / "x.npy", tmp_path / "s.npy", tmp_path / "tmp"
    tmp.mkdir()
    x = make("float64", (800_000,), "special", seed=4)
    np.save(src, x)
    monkeypatch.setattr(sort_module, "MIN_BUFFER", 1 << 40)
    calls = [0]
    records = sort_module._Job.records

    def counting(self: Any, block: Any, row: int) -> Any:
        calls[0] += 1
        return records(self, block, row)

    monkeypatch.setattr(sort_module._Job, "records", counting)
    with bigarr.sort(src, out, budget="4MiB", threads=1, progress=False) as whole:
        np.testing.assert_array_equal(whole, np.sort(x))
    passes, calls[0] = order.LAST_PASSES[0], 0
    out.unlink()
    assert passes >= 4

    code = _DIE_AFTER_FIRST_MERGE_PASS.format(src=str(src), out=str(out), tmp=str(tmp))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = len(list(tmp.iterdir()))
    assert left >= 2 and (tmp_path / "s.npy.bigarr-journal").exists()
    with bigarr.sort(src, out, budget="4MiB", threads=1, progress=False, resume=True,
                     tmpdir=tmp) as got:
        np.testing.assert_array_equal(got, np.sort(x))
    assert calls[0] == 0 and order.LAST_PASSES[0] == passes - 2
    assert list(tmp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy", "tmp", "x.npy"]

    # a merged run replaced by a copy of itself: the pass is not used, all is sorted again
    out.unlink()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    journal = read_journal(journal_path(str(out)))
    assert journal is not None
    victim = tmp / journal.header["target"]["merged"]["runs"][0][0]
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data)
    with bigarr.sort(src, out, budget="4MiB", threads=1, progress=False, resume=True,
                     tmpdir=tmp) as got:
        np.testing.assert_array_equal(got, np.sort(x))
    assert calls[0] > 0 and order.LAST_PASSES[0] == passes
    assert list(tmp.iterdir()) == []


class _Stop(Exception):
    pass


def test_resume_does_not_reuse_runs_of_a_replaced_source_with_same_size_and_mtime(
        tmp_path: Path) -> None:
    # regression: the source's identity was path, size and mtime only, so a file renamed into
    # place with the same size and the old mtime resumed from the old file's runs
    src, out = tmp_path / "src.npy", tmp_path / "sorted.npy"
    old = np.random.default_rng(1).random(800_000)
    new = np.random.default_rng(2).random(800_000)
    np.save(src, old)

    def stop(event: Any) -> None:
        stop.n += 1  # type: ignore[attr-defined]
        if stop.n == 8:  # type: ignore[attr-defined]
            raise _Stop

    stop.n = 0  # type: ignore[attr-defined]
    with pytest.raises(_Stop):
        bigarr.sort(src, out, budget="4MiB", threads=1, resume=True, progress=stop)
    assert (tmp_path / "sorted.npy.bigarr-journal").exists()
    st = src.stat()
    np.save(tmp_path / "other.npy", new)
    os.replace(tmp_path / "other.npy", src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    with pytest.warns(StaleJournalWarning, match="another"):
        got = bigarr.sort(src, out, budget="4MiB", threads=1, resume=True, progress=False)
    with got:
        np.testing.assert_array_equal(got, np.sort(new))
    assert not (tmp_path / "sorted.npy.bigarr-journal").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sorted.npy", "src.npy"]


def test_resume_needs_an_output() -> None:
    with pytest.raises(ArgumentError, match="out="):
        bigarr.argsort(np.arange(3), resume=True)
