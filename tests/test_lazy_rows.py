"""Row selections of lazy expressions (issue 12): ``x[a:b:step]``, ``x[i]``, with numpy as the
oracle, and only the selected rows read."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigarr
from bigarr._compute import lazyeval
from bigarr._plan import budget as budget_module
from bigarr.errors import RegionError, UnsupportedError

BUDGET = "4MiB"


def _close(got: Any, want: Any, atol: float = 1e-5) -> None:
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape,
                                                                 got.dtype, want.dtype)
    if want.dtype.kind in "fc":
        np.testing.assert_allclose(got, want, rtol=2e-4 if want.dtype == np.float32 else 1e-9,
                                   atol=atol, equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


@st.composite
def row_keys(draw: st.DrawFn, n: int) -> Any:
    """A numpy row index of ``n`` rows: an int (negative too) or a slice with any start, stop
    and step (negative, past the ends, empty)."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.integers(-n, n - 1))
    bound = st.one_of(st.none(), st.integers(-n - 5, n + 5))
    step = draw(st.one_of(st.none(), st.integers(-7, 7).filter(lambda s: s != 0)))
    return slice(draw(bound), draw(bound), step)


# (name, expression of a leaf and a row key): built once over LazyArrays, once over numpy
_EXPRS: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("x[k]", lambda x, k: x[k]),
    ("x[k, 1:]", lambda x, k: x[k, 1:]),
    ("x[k, [0, 2]]", lambda x, k: x[k, [0, 2]]),
    ("(2x + 1)[k]", lambda x, k: (2 * x + 1)[k]),
    ("(x - mean0)[k]", lambda x, k: (x - x.mean(axis=0))[k]),
    ("x[k] - x[k].mean0", lambda x, k: x[k] - x[k].mean(axis=0)),
    ("standardize[k]", lambda x, k: ((x - x.mean(axis=0)) / (x.std(axis=0) + 1))[k]),
    ("sum1[k]", lambda x, k: x.sum(axis=1)[k]),
    ("(x - sum1)[k]", lambda x, k: (x - x.sum(axis=1, keepdims=True))[k]),
    ("mean0[k-cols]", lambda x, k: x.mean(axis=0)[k if isinstance(k, slice) else 1]),
    ("x[k] * x", lambda x, k: x[k] * x[k]),
    ("x[k] @ w", lambda x, k: x[k] @ np.ones((x.shape[1], 2)) if isinstance(k, slice)
     else x[k] * 1),
]
_REDUCED: list[tuple[str, Callable[[Any], Any]]] = [
    ("none", lambda v: v),
    ("sum0", lambda v: v.sum(axis=0)),
    ("mean", lambda v: v.mean()),
    ("max0", lambda v: v.max(axis=0)),
]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rows=st.one_of(st.integers(1, 40), st.integers(3000, 9000)),
       expr=st.sampled_from(_EXPRS), reduce=st.sampled_from(_REDUCED),
       dtype=st.sampled_from(["float64", "float32", "int32"]),
       order=st.sampled_from(["C", "F"]), as_file=st.booleans())
def test_row_selections_match_numpy(tmp_path_factory: Any, data: st.DataObject, rows: int,
                                    expr: Any, reduce: Any, dtype: str, order: str,
                                    as_file: bool) -> None:
    rng = np.random.default_rng(rows)
    a = (rng.standard_normal((rows, 3)) * 10).astype(dtype)
    a = np.asfortranarray(a) if order == "F" else a
    key = data.draw(row_keys(rows), label="key")
    name, f = expr
    rname, r = reduce
    with np.errstate(all="ignore"):
        try:
            inner = f(a, key)
            if np.ndim(inner) == 0 and rname != "none":
                return  # a row of a row sum: nothing left to reduce
            want = r(inner)
        except (ValueError, IndexError):  # numpy refuses (max of nothing, 0-d index, ...)
            return
    src: Any = a
    if as_file:
        src = tmp_path_factory.mktemp("rows") / "x.npy"
        np.save(src, a)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(budget_module, "MIN_CHUNK_BYTES", 4096)
        mp.setattr(lazyeval, "TILE_BYTES", 8192)
        got = r(f(bigarr.lazy(src), key))
        assert got.shape == np.shape(want), (name, rname, key)
        # a sum of float32 values that cancel is exact only to the rounding of its terms
        atol = 1e-5 + (1e-6 if dtype == "float32" else 1e-13) * float(
            np.abs(a.astype(np.float64)).sum()) * (rname != "none")
        _close(got.compute(budget=BUDGET, threads=2, progress=False), want, atol)
        if as_file and np.ndim(want) >= 1 and got.nbytes:
            out = Path(str(src)).with_name("out.npy")
            with got.to_npy(out, budget=BUDGET, threads=2, progress=False,
                            overwrite=True) as m:
                _close(m, want, atol)


def _read_bytes(expr: Any, **kwargs: Any) -> int:
    """Bytes the passes of ``expr.compute`` read, from the engine's progress events."""
    total = 0

    def count(event: Any) -> None:
        nonlocal total
        if event.kind == "chunk":
            total += event.nbytes

    expr.compute(budget=BUDGET, threads=2, progress=count, **kwargs)
    return total


def test_a_row_slice_reads_only_its_rows(tmp_path: Path) -> None:
    a = np.arange(50000 * 8, dtype=np.float32).reshape(50000, 8)
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    row = 8 * 4
    assert _read_bytes(x.sum(axis=0)) == a.nbytes
    assert _read_bytes(x[1000:3000].sum(axis=0)) == 2000 * row
    assert _read_bytes(x[-100:, 2:5].max(axis=0)) == 100 * row  # whole rows are read
    assert _read_bytes(x[::10].mean(axis=0)) == 5000 * row
    # the mean is over all of x (one pass), the output over the selected rows (another)
    assert _read_bytes((x - x.mean(axis=0))[40000:]) == a.nbytes + 10000 * row
    plan = x[40000:45000].sum(axis=0).explain(budget=BUDGET)
    assert plan.passes == 1 and "rows 40000:45000" in plan.steps[0].inputs[0]
    np.testing.assert_allclose(x[40000:45000].sum(axis=0).compute(budget=BUDGET),
                               a[40000:45000].sum(axis=0, dtype=np.float64), rtol=1e-6)


def test_an_int_row_is_evaluated_in_memory(tmp_path: Path) -> None:
    a = np.random.default_rng(0).standard_normal((20000, 4))
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    z = (x - x.mean(axis=0))[-7]
    plan = z.explain(budget=BUDGET)
    assert plan.passes == 1  # the mean's; the row itself is read whole, in memory
    assert z.shape == (4,)
    _close(z.compute(budget=BUDGET), (a - a.mean(axis=0))[-7])
    _close(x[3, 2].compute(), a[3, 2])
    with pytest.raises(RegionError):
        x[20000]
    with pytest.raises(IndexError):
        x[-20001]


def test_row_slices_of_scans_and_filters(tmp_path: Path) -> None:
    a = np.random.default_rng(1).standard_normal((5000, 3))
    x = bigarr.lazy(a)
    _close(x.cumsum(axis=0)[:1234].compute(budget=BUDGET), a.cumsum(axis=0)[:1234])
    _close(x.diff(axis=0)[100:2000].compute(budget=BUDGET), np.diff(a, axis=0)[100:2000])
    _close(x.diff(n=2, axis=0)[-5:].compute(budget=BUDGET), np.diff(a, n=2, axis=0)[-5:])
    _close(x.cumsum(axis=1)[7:19:3].compute(), a.cumsum(axis=1)[7:19:3])  # row by row
    with pytest.raises(UnsupportedError, match="to_npy"):
        x.cumsum(axis=0)[10:]
    with pytest.raises(UnsupportedError, match="to_npy"):
        x.diff(axis=0)[::2]
    with pytest.raises(UnsupportedError, match="to_npy"):
        x[x[:, 0] > 0][:10]
    with pytest.raises(ValueError):
        x[::0]


def test_row_slices_of_zarr_and_to_dask(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    a = np.random.default_rng(2).standard_normal((3000, 4)).astype(np.float32)
    z = zarr.create_array(str(tmp_path / "z.zarr"), shape=a.shape, chunks=(256, 4),
                          dtype="f4")
    z[:] = a
    x = bigarr.lazy(z)
    for key in (np.s_[100:2900:7], np.s_[::-5], np.s_[2999:0:-300], np.s_[17]):
        _close(x[key].compute(budget=BUDGET), a[key])
        _close((x[key] * 2).sum(axis=0).compute(budget=BUDGET), (a[key] * 2).sum(axis=0))
    pytest.importorskip("dask")
    np.save(tmp_path / "x.npy", a)
    y = bigarr.lazy(tmp_path / "x.npy")
    d = ((y - y.mean(axis=0))[10:-10:4, 1:]).to_dask()
    _close(d.compute(), (a - a.mean(axis=0))[10:-10:4, 1:])


def test_a_broadcast_reduction_lines_up_with_rows() -> None:
    # y of x.shape[1] rows plus x.mean(0): numpy broadcasts the mean along y's rows
    y = np.arange(20000.0)
    x = np.random.default_rng(3).standard_normal((5, 20000))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lazyeval, "TILE_BYTES", 4096)
        got = (bigarr.lazy(y) + bigarr.lazy(x).mean(axis=0)).compute(budget="8MiB")
    _close(got, y + x.mean(axis=0))


def test_same_slice_twice_is_one_stream(tmp_path: Path) -> None:
    a = np.ones((30000, 4))
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(os.fspath(tmp_path / "x.npy"))
    plan = (x[100:] * x[100:] + x[100:]).sum(axis=0).explain(budget=BUDGET)
    assert len(plan.steps[0].inputs) == 1
