"""Lazy expressions, round 2 (issue 12): every reduction, scans along the rows, row filtering,
``x @ w``, order statistics in expressions. numpy is the oracle; passes are counted."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigarr
from bigarr._compute import lazyeval, lazyrun, mapblocks
from bigarr._compute.lazy import REDUCTIONS
from bigarr._os.geometry import parse_size
from bigarr._plan import budget as budget_module
from bigarr.errors import (
    ArgumentError,
    BudgetError,
    MissingExtraError,
    ModeError,
    RegionError,
    ShapeError,
    UnsupportedError,
)

BUDGET = "3MiB"
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
KW: dict[str, Any] = {"budget": BUDGET, "threads": 2, "progress": False}
DTYPES = ["float64", "float32", "int32", "int64", "bool"]


_AT_LEAST = re.compile(r"Raise budget= to at least (\d+)")


def _fit(method: Callable[..., Any], *args: Any, budget: int | str = BUDGET,
         **kwargs: Any) -> Any:
    """``method(*args, budget=budget, **kwargs)``, retried at the least budget a legitimate
    refusal quotes (an F-order file's row spans a page per column; bool data's 8-byte
    temporaries), so every generated example is still compared with numpy (see
    tests/test_lazy.py's ``_within``); a refusal without a larger quoted budget still fails."""
    nbytes = parse_size(budget, name="budget")
    for _ in range(4):
        try:
            return method(*args, budget=nbytes, **kwargs)
        except BudgetError as exc:
            found = _AT_LEAST.search(str(exc))
            if found is None or not nbytes < int(found.group(1)) <= 64 << 20:
                raise
            nbytes = int(found.group(1))
    return method(*args, budget=nbytes, **kwargs)


def _data(seed: int, shape: tuple[int, ...], dtype: str, nan: bool,
          order: str) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        a = rng.random(shape) < 0.5
    elif dtype.startswith("int"):
        a = rng.integers(-50, 50, shape).astype(dtype)
    else:
        a = (rng.standard_normal(shape) * 10).astype(dtype)
        if nan:
            a[rng.random(shape) < 0.02] = np.nan
    return np.asfortranarray(a) if order == "F" else np.ascontiguousarray(a)


@pytest.fixture(autouse=True)
def small_chunks() -> Iterator[None]:
    """Chunks down to 4 KiB, so that arrays of a few hundred KiB run in many chunks, and
    tiles of 8 KiB within them (tests/test_lazy.py runs whole chunks); every chain goes to
    numexpr when a test asks for backend="numexpr"."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(budget_module, "MIN_CHUNK_BYTES", 4096)
        mp.setattr(lazyeval, "TILE_BYTES", 8192)
        mp.setattr(lazyeval, "NUMEXPR_MIN_OPS", 1)  # numexpr for every chain, when asked
        yield


def _source(a: np.ndarray[Any, Any], as_file: bool, d: str) -> Any:
    if not as_file:
        return a
    path = os.path.join(d, "x.npy")
    np.save(path, a)
    return path


def _close(got: Any, want: Any, scale: bool = False, single: bool = False) -> None:
    """``got`` is ``want`` (dtype, shape, values); ``single``: float32 data went into it."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    if want.dtype.kind in "fc":
        finite = np.abs(want[np.isfinite(want)]) if want.size else np.zeros(0)
        top = float(finite.max()) if finite.size else 1.0
        single = single or want.dtype == np.float32
        atol = (1e-4 if single else 1e-9) * max(top, 1.0) if scale else 1e-5
        np.testing.assert_allclose(got, want, rtol=2e-4 if single else 1e-9, atol=atol,
                                   equal_nan=True)
    else:
        np.testing.assert_array_equal(got, want)


def _numpy(fn: Callable[[], Any]) -> Any:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


# ---- reductions ------------------------------------------------------------------------------
# What is reduced: numpy and lazy alike (prod of values near 1, so floats neither overflow nor
# underflow in either precision).
_REDUCED: list[tuple[str, Callable[[Any], Any]]] = [
    ("x", lambda x: x),
    ("x * 2 - 1", lambda x: x * 2 - 1),
    ("where", lambda x: bigarr.where(x > 0, x, 0) if isinstance(x, bigarr.LazyArray)
     else np.where(x > 0, x, 0)),
    ("cols", lambda x: x[:, 1:]),
]


@SETTINGS
@given(kind=st.sampled_from(sorted(REDUCTIONS)), expr=st.sampled_from(_REDUCED),
       axis=st.sampled_from([None, 0, 1, (0, 1), -1]), keepdims=st.booleans(),
       wide=st.booleans(), ddof=st.sampled_from([0, 1]),
       rows=st.one_of(st.integers(1, 40), st.integers(3000, 12000)),
       cols=st.integers(2, 4), dtype=st.sampled_from(DTYPES), nan=st.booleans(),
       order=st.sampled_from(["C", "F"]), as_file=st.booleans(), seed=st.integers(0, 2**31))
def test_reductions_match_numpy(kind: str, expr: tuple[str, Callable[[Any], Any]], axis: Any,
                                keepdims: bool, wide: bool, ddof: int, rows: int, cols: int,
                                dtype: str, nan: bool, order: str, as_file: bool,
                                seed: int) -> None:
    takes_dtype, takes_ddof = REDUCTIONS[kind]
    if kind in ("argmin", "argmax") and isinstance(axis, tuple):
        axis = None
    a = _data(seed, (rows, cols), dtype, nan, order)
    if kind == "prod" and a.dtype.kind == "f":
        a = (1 + a / 4096).astype(a.dtype)
    name, f = expr
    kwargs: dict[str, Any] = {"axis": axis, "keepdims": keepdims}
    if takes_dtype and wide:
        kwargs["dtype"] = np.float64
    if takes_ddof:
        kwargs["ddof"] = ddof
    try:
        want = _numpy(lambda: getattr(np, kind)(f(a), **kwargs))
    except (TypeError, ValueError):  # numpy refuses (bool subtract, ...)
        return
    with tempfile.TemporaryDirectory() as d:
        x = bigarr.lazy(_source(a, as_file, d))
        got = getattr(f(x), kind)(**kwargs)
        assert got.shape == np.shape(want) and got.dtype == np.asarray(want).dtype, name
        # one thread: bool data's float64 temporaries (64 bytes a byte) fit 3 MiB with 4 KiB
        # chunks
        _close(_fit(got.compute, **dict(KW, threads=1)), want,
               scale=kind in ("sum", "nansum", "prod"), single=a.dtype == np.float32)
        # numpy's function form dispatches to the lazy one
        assert isinstance(getattr(np, kind)(f(x), **kwargs), bigarr.LazyArray)


def test_several_reductions_share_one_pass(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    a = _data(3, (40000, 4), "float64", True, "C")
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    exprs = [x.nansum(0), x.nanmin(), x.nanstd(0, ddof=1), x.argmax(axis=0), x.any(axis=1),
             x.count_nonzero(), x.prod(axis=0), (x > 0).all()]
    runs = _count_runs(monkeypatch)
    got = bigarr.compute(*exprs, budget=BUDGET, threads=1, progress=False)
    assert len(runs) == 1
    want = [np.nansum(a, 0), np.nanmin(a), np.nanstd(a, 0, ddof=1), a.argmax(axis=0),
            a.any(axis=1), np.count_nonzero(a), a.prod(axis=0), (a > 0).all()]
    for g, w in zip(got, want, strict=True):
        _close(g, w)


# ---- scans -----------------------------------------------------------------------------------
_SCANS: list[tuple[str, Callable[[Any], Any]]] = [
    ("cumsum(0)", lambda x: x.cumsum(axis=0)),
    ("cumsum(0, f8)", lambda x: x.cumsum(axis=0, dtype=np.float64)),
    ("cumprod(0)", lambda x: (1 + x / 4096).cumprod(axis=0) if x.dtype.kind == "f"
     else (x > 0).cumprod(axis=0)),
    ("cumsum(1)", lambda x: np.cumsum(x, axis=1)),
    ("diff(0)", lambda x: np.diff(x, axis=0)),
    ("diff(0, n=3)", lambda x: np.diff(x, n=3, axis=0)),
    ("diff()", lambda x: np.diff(x)),
    ("diff(0) * 2 + 1", lambda x: np.diff(x, axis=0) * 2 + 1),
    ("centred cumsum", lambda x: (x - x.mean(axis=0)).cumsum(axis=0)),
    ("sum of diff", lambda x: np.diff(x, axis=0).sum(axis=0)),
    ("cumsum of diff", lambda x: np.diff(x, axis=0).cumsum(axis=0)),
    ("diff of diff", lambda x: np.diff(np.diff(x, axis=0), axis=0) - np.diff(x, n=2, axis=0)),
    ("max of cumsum", lambda x: x.cumsum(axis=0).max(axis=0)),
]


@SETTINGS
@given(scan=st.sampled_from(_SCANS), rows=st.one_of(st.integers(1, 40),
                                                    st.integers(3000, 12000)),
       cols=st.integers(1, 4), dtype=st.sampled_from(DTYPES), nan=st.booleans(),
       order=st.sampled_from(["C", "F"]), as_file=st.booleans(), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31))
def test_scans_match_numpy(scan: tuple[str, Callable[[Any], Any]], rows: int, cols: int,
                           dtype: str, nan: bool, order: str, as_file: bool, threads: int,
                           seed: int) -> None:
    name, f = scan
    a = _data(seed, (rows, cols), dtype, nan, order)
    try:
        want = _numpy(lambda: f(a))
    except (TypeError, ValueError):
        return
    with tempfile.TemporaryDirectory() as d:
        x = bigarr.lazy(_source(a, as_file, d))
        got = f(x)
        assert got.shape == np.shape(want) and got.dtype == np.asarray(want).dtype, name
        kw = dict(KW, threads=threads)
        single = a.dtype == np.float32
        _close(_fit(got.compute, **kw), want, scale=True, single=single)
        if as_file and np.ndim(want) >= 1:
            with _fit(got.to_npy, os.path.join(d, "out.npy"), overwrite=True, **kw) as m:
                _close(m, want, scale=True, single=single)


def test_cumsum_to_file_is_one_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _data(4, (60000, 4), "float64", False, "C")
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    plan = x.cumsum(axis=0).explain(budget=BUDGET, threads=2)
    assert plan.passes == 1 and plan.steps[0].chunks > 4
    assert "carried from chunk to chunk" in str(plan)
    runs = _count_runs(monkeypatch)
    with x.cumsum(axis=0).to_npy(tmp_path / "c.npy", **KW) as m:
        _close(m, a.cumsum(axis=0), scale=True)
    with np.diff(x, axis=0).to_npy(tmp_path / "d.npy", **KW) as m:
        _close(m, np.diff(a, axis=0))
    assert runs == ["map_blocks", "map_blocks"]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64"])
def test_cumsum_cumprod_are_numpys_bits_at_every_budget_regression(tmp_path: Path,
                                                                   dtype: str) -> None:
    # Regression: the carry was added to each chunk's (tile's) own cumsum afterwards, which
    # rounds differently from numpy's sequential scan (most float elements differed, and
    # differently at each budget). The carry now goes into the first row before the scan.
    a = _data(13, (60000, 2), dtype, False, "C")
    if a.dtype.kind == "f":
        a = (a / 8).astype(dtype)
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    grow = (1 + x / 4096) if a.dtype.kind == "f" else x
    cases = [(x.cumsum(axis=0), _numpy(lambda: np.cumsum(a, axis=0))),
             (x.cumsum(axis=0, dtype=np.float64), np.cumsum(a, axis=0, dtype=np.float64)),
             (grow.cumprod(axis=0), _numpy(lambda: np.cumprod(
                 (1 + a / 4096) if a.dtype.kind == "f" else a, axis=0)))]
    for budget, threads, tile in (("3MiB", 1, 0), ("3MiB", 2, 8192), ("5MiB", 2, 1 << 19),
                                  ("64MiB", 2, 0)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(lazyeval, "TILE_BYTES", tile)
            for expr, want in cases:
                got = expr.compute(budget=budget, threads=threads, progress=False)
                assert got.dtype == want.dtype
                assert np.array_equal(got, want, equal_nan=a.dtype.kind == "f"), \
                    (budget, threads, tile, int((got != want).sum()))
            with x.cumsum(axis=0).to_npy(tmp_path / "c.npy", budget=budget, threads=threads,
                                         progress=False, overwrite=True) as m:
                assert np.array_equal(m, cases[0][1], equal_nan=a.dtype.kind == "f")


def test_a_failing_chunk_does_not_hang_the_scan(tmp_path: Path) -> None:
    # Regression guard: chunks waiting for the carry of a failed chunk give up.
    a = _data(5, (40000, 4), "float64", False, "C")
    calls = [0]

    def boom(v: Any) -> Any:
        calls[0] += 1
        if calls[0] == 3:
            raise RuntimeError("boom")
        return v

    x = bigarr.lazy(a)
    expr = bigarr._compute.lazy._op(boom, (x,), "boom").cumsum(axis=0)
    with pytest.raises(RuntimeError, match="boom"):
        expr.compute(**KW)


# ---- row filtering ---------------------------------------------------------------------------
_FILTERED: list[tuple[str, Callable[[Any, Any], Any]]] = [
    ("x[m]", lambda x, m: x[m]),
    ("x[m, 1:]", lambda x, m: x[m, 1:]),
    ("x[m] * 2", lambda x, m: x[m] * 2),
    ("centred", lambda x, m: x[m] - x[m].mean(axis=0)),
    ("sum", lambda x, m: x[m].sum(axis=0)),
    ("min", lambda x, m: x[m].min()),
    ("count", lambda x, m: np.count_nonzero(x[m], axis=0)),
    ("cumsum", lambda x, m: x[m].cumsum(axis=0)),
    ("diff", lambda x, m: np.diff(x[m], axis=0)),
    ("same mask", lambda x, m: x[m][:, 0] - x[m][:, -1]),
]


@SETTINGS
@given(case=st.sampled_from(_FILTERED), rows=st.one_of(st.integers(1, 40),
                                                      st.integers(3000, 12000)),
       cols=st.integers(1, 4), dtype=st.sampled_from(DTYPES), nan=st.booleans(),
       order=st.sampled_from(["C", "F"]), as_file=st.booleans(),
       keep=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**31))
def test_row_filters_match_numpy(case: tuple[str, Callable[[Any, Any], Any]], rows: int,
                                 cols: int, dtype: str, nan: bool, order: str, as_file: bool,
                                 keep: float, seed: int) -> None:
    name, f = case
    a = _data(seed, (rows, cols), dtype, nan, order)
    key = np.random.default_rng(seed + 1).random(rows)
    try:
        want = _numpy(lambda: f(a, key < keep))
    except (TypeError, ValueError):
        return
    with tempfile.TemporaryDirectory() as d:
        src = _source(a, as_file, d)
        np.save(os.path.join(d, "key.npy"), key)
        x = bigarr.lazy(src)
        mask = bigarr.lazy(os.path.join(d, "key.npy")) < keep
        got = f(x, mask)
        assert got.dtype == np.asarray(want).dtype, name
        single = a.dtype == np.float32
        _close(_fit(got.compute, **KW), want, scale=True, single=single)
        if np.ndim(want) >= 1:
            with _fit(got.to_npy, os.path.join(d, "out.npy"), overwrite=True, **KW) as m:
                _close(m, want, scale=True, single=single)


def test_filter_passes_and_shape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _data(6, (40000, 4), "float32", False, "C")
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    kept = x[x[:, 0] > 0]
    assert np.isnan(kept.shape[0]) and kept.shape[1:] == (4,)
    with pytest.raises(ShapeError):
        len(kept)
    runs = _count_runs(monkeypatch)
    with kept.to_npy(tmp_path / "f.npy", **KW) as m:
        _close(m, a[a[:, 0] > 0])
    assert runs == ["map_blocks"]
    runs.clear()
    z = kept - kept.mean(axis=0)
    assert z.explain(budget=BUDGET, threads=2).passes == 2
    with z.to_npy(tmp_path / "z.npy", **KW) as m:
        b = a[a[:, 0] > 0]
        _close(m, b - b.mean(axis=0, dtype=np.float64).astype(np.float32))
    assert runs == ["lazy", "map_blocks"]


def test_filter_refusals(tmp_path: Path) -> None:
    a = _data(7, (200000, 4), "float64", False, "C")  # 6.1 MiB
    x = bigarr.lazy(a)
    m = x[:, 0] > -100  # keeps everything
    with pytest.raises(BudgetError, match="to_npy"):
        x[m].compute(**KW)
    with pytest.raises(ShapeError):
        x[m] + x
    with pytest.raises(ShapeError):
        x[m] + x[x[:, 1] > 0]
    with pytest.raises(UnsupportedError):
        x[m].argmax(axis=0)
    # a row-local reduction of filtered rows is an operation on each kept row
    kept = x[x[:, 1] > 0].sum(axis=1).to_npy(tmp_path / "rowsums.npy", **KW)
    _close(np.asarray(kept), a[a[:, 1] > 0].sum(axis=1))
    with pytest.raises(UnsupportedError):
        x[m][3:5]
    with pytest.raises(IndexError):  # as numpy: a mask that does not fit the rows
        x[np.ones(3, bool)]
    with pytest.raises(RegionError):
        x[np.ones(200000, np.float32)]
    with pytest.raises(IndexError):
        np.arange(5)[np.ones(3, bool)]  # numpy's own behaviour, the oracle
    _close(x[np.asarray(a[:, 0] > 0)].sum(axis=0).compute(**KW), a[a[:, 0] > 0].sum(axis=0))


def test_row_numbers_are_refused_as_unsupported_not_as_a_bad_mask() -> None:
    # regression: x[[1, 2]] (numpy's fancy indexing of rows) was a ShapeError about a boolean
    # mask of the wrong shape
    x = bigarr.lazy(np.arange(20.0).reshape(10, 2))
    for key in ([1, 2], np.array([3, 0]), (np.array([1]), 0)):
        with pytest.raises(UnsupportedError, match="fancy"):
            x[key]


def test_failed_filter_or_diff_to_npy_keeps_the_old_file_regression(tmp_path: Path) -> None:
    # Regression: to_npy(overwrite=True) of a filter or a diff grew an Appender at the user's
    # name, so a run failing mid-way replaced the old file with a partial prefix of rows.
    n = 200_000
    np.save(tmp_path / "i.npy", np.full(n, 2, np.int64))
    e = np.ones(n, np.int64)
    e[150_000] = -1  # integers to negative powers: numpy raises, in a late chunk
    np.save(tmp_path / "e.npy", e)
    old = np.arange(7)
    i, ee = bigarr.lazy(tmp_path / "i.npy"), bigarr.lazy(tmp_path / "e.npy")
    for expr in ((i ** ee)[i > 0], np.diff(i ** ee)):
        np.save(tmp_path / "p.npy", old)
        with pytest.raises(ValueError, match="negative"):
            expr.to_npy(tmp_path / "p.npy", overwrite=True, budget="1MiB", threads=1,
                        progress=False)
        np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), old)
        assert sorted(os.listdir(tmp_path)) == ["e.npy", "i.npy", "p.npy"]  # no partial left
    for expr, want in ((i[i > 0], np.full(n, 2)), (np.diff(i), np.zeros(n - 1, np.int64))):
        with expr.to_npy(tmp_path / "p.npy", overwrite=True, **KW) as m:  # replaced when done
            np.testing.assert_array_equal(m, want)
        with pytest.raises(FileExistsError):
            expr.to_npy(tmp_path / "p.npy", **KW)
    assert sorted(os.listdir(tmp_path)) == ["e.npy", "i.npy", "p.npy"]


def test_zero_size_reductions_raise_shape_error_regression(tmp_path: Path) -> None:
    # Regression: min/argmax of no rows (or of a filter that kept none) raised numpy's bare
    # ValueError from lazyeval.numpy_reduce; the eager functions raise ShapeError.
    empty = bigarr.lazy(np.zeros((0, 3)))
    np.save(tmp_path / "x.npy", np.ones((5000, 3)))
    x = bigarr.lazy(tmp_path / "x.npy")
    none = x[x[:, 0] < 0]
    for expr in (empty.min(axis=0), empty.argmax(axis=0), empty.max(), np.nanmin(empty),
                 none.min(), none.max(axis=0), (none * 2).min(axis=0)):
        with pytest.raises(ShapeError, match="of an array of shape"):
            expr.compute(**KW)
    with pytest.raises(ShapeError):
        bigarr.min(np.zeros((0, 3)), axis=0)  # the eager one, for comparison
    _close(empty.sum(axis=0).compute(**KW), np.zeros(3))  # reductions with identity: numpy's
    _close(none.sum(axis=0).compute(**KW), np.zeros(3))


def test_matmul_by_strings_refused_when_built_regression() -> None:
    # Regression: x @ w with w of strings raised numpy's UFuncTypeError from lazy.py.
    x = bigarr.lazy(np.ones((10, 3)))
    for w in (np.array([["a"], ["b"], ["c"]]), np.array(["a", "b", "c"])):
        with pytest.raises(ArgumentError, match="matmul") as info:
            x @ w
        assert isinstance(info.value, TypeError)
    with pytest.raises(ArgumentError):
        x + np.array(["a", "b", "c"])


# ---- x @ w -----------------------------------------------------------------------------------
@SETTINGS
@given(rows=st.one_of(st.integers(1, 40), st.integers(3000, 12000)), cols=st.integers(1, 5),
       out=st.sampled_from([None, 1, 3]), dtype=st.sampled_from(DTYPES),
       wdtype=st.sampled_from(["float64", "float32", "int64"]),
       order=st.sampled_from(["C", "F"]), seed=st.integers(0, 2**31))
def test_matmul_matches_numpy(rows: int, cols: int, out: int | None, dtype: str, wdtype: str,
                              order: str, seed: int) -> None:
    a = _data(seed, (rows, cols), dtype, False, order)
    w = _data(seed + 1, (cols,) if out is None else (cols, out), wdtype, False, "C")
    x = bigarr.lazy(a)
    got = x @ w
    want = a @ w
    assert got.shape == want.shape and got.dtype == want.dtype
    _close(_fit(got.compute, **KW), want, scale=True)
    _close(_fit(np.matmul(x, w).sum(axis=0).compute, **KW), want.sum(axis=0), scale=True)
    _close(_fit(((x - x.mean(axis=0)) @ w).compute, **KW), (a - a.mean(axis=0)) @ w, scale=True,
           single=a.dtype == np.float32)


def test_matmul_refusals() -> None:
    x = bigarr.lazy(np.ones((10, 3)))
    with pytest.raises(ShapeError):
        x @ np.ones((4, 2))
    with pytest.raises(UnsupportedError):
        np.ones((2, 10)) @ x
    with pytest.raises(UnsupportedError):
        x @ x


# ---- order statistics inside expressions ----------------------------------------------------
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 5000), cols=st.integers(1, 3),
       dtype=st.sampled_from(["float64", "float32", "int64"]), nan=st.booleans(),
       kind=st.sampled_from(["median", "nanmedian", "quantile", "nanquantile"]),
       axis=st.sampled_from([None, 0]), seed=st.integers(0, 2**31))
def test_order_statistics_in_expressions(rows: int, cols: int, dtype: str, nan: bool,
                                         kind: str, axis: int | None, seed: int) -> None:
    a = _data(seed, (rows, cols), dtype, nan, "C")
    with tempfile.TemporaryDirectory() as d:
        x = bigarr.lazy(_source(a, True, d))
        if kind.endswith("median"):
            got, want = getattr(x, kind)(axis=axis), _numpy(lambda: getattr(np, kind)(a, axis=axis))
        else:
            q = [0.25, 0.75]
            got = getattr(x, kind)(q, axis=axis)
            want = _numpy(lambda: getattr(np, kind)(a, q, axis=axis))
        _close(_fit(got.compute, **KW), want)
        if axis == 0:
            med = getattr(np, "nanmedian" if nan else "median")
            robust = (x - med(x, axis=0)) / 2
            _close(_fit(robust.compute, **KW), (a - _numpy(lambda: med(a, axis=0))) / 2)


def test_robust_scaling_passes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a = _data(8, (20000, 3), "float64", False, "C")
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    iqr = x.quantile(0.75, axis=0) - x.quantile(0.25, axis=0)
    z = (x - bigarr.lazy(tmp_path / "x.npy").median(axis=0)) / iqr
    plan = z.explain(budget=BUDGET, threads=1)
    # per column of three: no sampled window, so a histogram and a gather pass each
    assert plan.passes == 3 * 2 + 1 and "order statistic" in str(plan)
    want = (a - np.median(a, axis=0)) / (np.quantile(a, .75, 0) - np.quantile(a, .25, 0))
    _close(z.compute(**KW), want)
    with pytest.raises(UnsupportedError, match="to_npy"):
        (x * 2).median(axis=0)
    # along a row (axis 1) an order statistic is row-local: one pass, numpy's on each chunk
    rowwise = (x * 2).median(axis=1)
    assert rowwise.explain(budget=BUDGET, threads=1).passes == 1
    np.testing.assert_array_equal(rowwise.compute(**KW), np.median(a * 2, axis=1))
    with pytest.raises(UnsupportedError):
        x.quantile([0.25, 0.75], axis=1)  # the quantiles' axis would come before the rows


# ---- numpy's functions -----------------------------------------------------------------------
def test_numpy_functions_dispatch(tmp_path: Path) -> None:
    a = _data(9, (3000, 3), "float64", True, "C")
    x = bigarr.lazy(a)
    assert np.shape(x) == a.shape and np.ndim(x) == 2
    for fn, args in [(np.nanmean, {"axis": 0}), (np.cumsum, {"axis": 1}), (np.diff, {}),
                     (np.nanmax, {"axis": 0, "keepdims": True}), (np.any, {})]:
        lazy_result = fn(x, **args)
        assert isinstance(lazy_result, bigarr.LazyArray), fn
        _close(lazy_result.compute(**KW), _numpy(lambda fn=fn, args=args: fn(a, **args)))
    assert np.allclose(x, a, equal_nan=True)  # anything else: numpy on the computed values


def test_numexpr_is_opt_in_and_the_default_is_numpys_bits_regression(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: with numexpr installed, floating chains went to numexpr by default, whose
    # float32 arithmetic and transcendental functions differ from numpy's (170781 elements of
    # np.exp(X) * 2 - X + 1 differed; tanh by up to 3e-3 relative). numpy is the default now.
    a = (np.random.default_rng(14).standard_normal((200_000, 2)) * 3).astype(np.float32)
    x = bigarr.lazy(a)
    exprs = [(lambda v: np.exp(v) * 2 - v + 1), (lambda v: np.tanh(v * 0.5) + v / 3 - 1)]
    for f in exprs:
        got = f(x).compute(**KW)
        want = f(a)
        assert got.dtype == want.dtype and np.array_equal(got, want), \
            int((got != want).sum())
        assert np.array_equal(f(x).compute(**KW, backend="numpy"), want)
    with pytest.raises(ModeError):
        x.compute(**KW, backend="numba")
    try:
        import numexpr  # noqa: F401
    except ImportError:
        with pytest.raises(MissingExtraError, match="bigarr\\[fast\\]"):
            (x * 2).compute(**KW, backend="numexpr")
        return
    for f in exprs:  # opt-in: close to numpy, not necessarily its bits
        _close(f(x).compute(**KW, backend="numexpr"), f(a), single=True)
    monkeypatch.setitem(sys.modules, "numexpr", None)  # as if it were not installed
    with pytest.raises(MissingExtraError, match="bigarr\\[fast\\]"):
        (x * 2).compute(**KW, backend="numexpr")


# ---- passes confirmed by the bytes read from a cold file -------------------------------------
_IO = textwrap.dedent("""
    import os, numpy as np, bigarr
    from bigarr._compute import lazyeval, lazyrun, mapblocks
    def read():
        return int(open('/proc/self/io').read().split('read_bytes:')[1].split()[0])
    def evict():
        fd = os.open({path!r}, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    # Every pass starts cold, as on a file larger than the page cache.
    for module in (lazyrun, mapblocks):
        def cold(*args, _real=module.execute, **kwargs):
            evict()
            return _real(*args, **kwargs)
        module.execute = cold
    x = bigarr.lazy({path!r})
    before = read()
    out = bigarr.compute(x.sum(0), x.nanmin(), x.std(0), x.argmax(0), x.any(), budget='4MiB',
                         threads=2, progress=False)
    one = read() - before
    before = read()
    m = x[x[:, 0] > 0]
    (m - m.mean(0)).to_npy({out!r}, budget='4MiB', threads=2, progress=False).close()
    two = read() - before
    print(one, two)
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/io") or not hasattr(os, "posix_fadvise"),
                    reason="needs /proc/self/io and posix_fadvise")
def test_passes_by_bytes_read_from_a_cold_file(tmp_path: Path) -> None:
    size = 32 << 20
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, (size // 64, 16))
    x[:] = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
    x.flush()
    del x
    fd = os.open(tmp_path / "x.npy", os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    code = _IO.format(path=str(tmp_path / "x.npy"), out=str(tmp_path / "z.npy"))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    one, two = (int(v) for v in proc.stdout.split())
    if one == 0:
        pytest.skip("this file system does not count reads in /proc/self/io")
    assert 0.9 * size <= one <= 1.2 * size, one  # one pass for five statistics
    assert 1.8 * size <= two <= 2.4 * size, two  # filter-centre-write: two passes


def _count_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    runs: list[str] = []
    for module in (lazyrun, mapblocks):
        real = module.execute

        def counted(plan: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            runs.append(plan.operation)
            return _real(plan, *args, **kwargs)

        monkeypatch.setattr(module, "execute", counted)
    return runs


# ---- to_zarr, to_dask ------------------------------------------------------------------------
def test_to_zarr(tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr")
    a = _data(10, (30000, 4), "float32", False, "C")
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    z = ((x - x.mean(axis=0)) * 2).to_zarr(tmp_path / "z.zarr", budget=BUDGET, progress=False,
                                           chunks=(1000, 4))
    _close(z[:], (a - a.mean(axis=0, dtype=np.float64).astype(np.float32)) * 2)
    kept = x[x[:, 1] > 0].to_zarr(tmp_path / "k.zarr", progress=False)
    _close(zarr.open_array(tmp_path / "k.zarr")[:], a[a[:, 1] > 0])
    assert kept.shape == (int((a[:, 1] > 0).sum()), 4)
    assert sorted(os.listdir(tmp_path)) == ["k.zarr", "x.npy", "z.zarr"]  # staging removed


def test_to_dask_by_reference(tmp_path: Path) -> None:
    pytest.importorskip("dask.array")
    import pickle

    sizes = []
    for rows in (10000, 100000):
        a = _data(11, (rows, 4), "float64", True, "C")
        np.save(tmp_path / "x.npy", a)
        x = bigarr.lazy(tmp_path / "x.npy")
        kept = x[x[:, 0] > 0]
        exprs = [((x - x.nanmean(axis=0)) / x.nanstd(axis=0)), x @ np.ones((4, 2)),
                 np.diff(x, axis=0).cumsum(axis=0), kept.sum(axis=0), x.argmax(axis=0)]
        b = a[a[:, 0] > 0]
        wants = [(a - np.nanmean(a, 0)) / np.nanstd(a, 0), a @ np.ones((4, 2)),
                 np.diff(a, axis=0).cumsum(axis=0), b.sum(axis=0), a.argmax(axis=0)]
        for e, want in zip(exprs, wants, strict=True):
            dz = e.to_dask(block_bytes=(rows * 32) // 4)  # four blocks, whatever the rows
            _close(dz.compute(scheduler="threads"), want)
        graph = exprs[0].to_dask(block_bytes=(rows * 32) // 4).__dask_graph__()
        sizes.append(len(pickle.dumps(dict(graph))))
    assert sizes[1] < 1.1 * sizes[0] and sizes[1] < 20000  # ten times the data, same graph
    with pytest.raises(UnsupportedError):
        bigarr.lazy(tmp_path / "x.npy").median(axis=0).to_dask()


def test_to_dask_of_a_view_of_a_numpy_memmap_is_the_view(tmp_path: Path) -> None:
    # regression: a numpy memmap view of a whole .npy file with the file's shape and dtype
    # (reversed, transposed, or mapped in the other order) went into the graph as the file
    pytest.importorskip("dask.array")
    a = np.arange(16.0).reshape(4, 4)
    np.save(tmp_path / "x.npy", a)
    m = np.load(tmp_path / "x.npy", mmap_mode="r")
    other = np.memmap(tmp_path / "x.npy", np.float64, "r", offset=128, shape=(4, 4), order="F")
    for view in (m[::-1], m.T, m[:, ::-1], other, m):
        np.testing.assert_array_equal(bigarr.lazy(view).to_dask().compute(), view)
    assert bigarr.lazy(m).to_dask().name.startswith("bigarr-")  # the whole file: by reference


def test_a_numpy_memmap_whose_file_was_replaced_is_read_as_numpy_sees_it(
        tmp_path: Path) -> None:
    # regression: a numpy memmap was re-mapped from its file *name*, so once another file
    # took the name (a rename, as every bigarr output is installed) bigarr read that file
    a = np.arange(4096.0).reshape(512, 8)
    np.save(tmp_path / "x.npy", a)
    m = np.load(tmp_path / "x.npy", mmap_mode="r")
    np.save(tmp_path / "y.npy", -a)
    os.replace(tmp_path / "y.npy", tmp_path / "x.npy")
    assert bigarr.sum(m) == a.sum()
    np.testing.assert_array_equal(bigarr.lazy(m).sum(axis=0).compute(), a.sum(axis=0))
    np.testing.assert_array_equal((bigarr.lazy(m) * 2).compute(), a * 2)
    if importlib.util.find_spec("dask") is not None:
        np.testing.assert_array_equal(bigarr.lazy(m).to_dask().compute(), a)


def test_an_input_replaced_by_another_shape_or_dtype_is_a_file_changed_error(
        tmp_path: Path) -> None:
    # regression: lazy(path) records the file's shape and dtype; a file saved at the path
    # since with others gave numpy's ValueErrors, an AssertionError, or (a shorter file) rows
    # of uninitialised memory in the result
    path = tmp_path / "x.npy"
    np.save(path, np.arange(100.0).reshape(50, 2))
    x = bigarr.lazy(path)
    exprs = [x * 2, x.sum(axis=0), x[x[:, 0] > 3], x.cumsum(axis=0), x.argmax(), x[10:20] + 1]
    for new in (np.arange(10.0).reshape(5, 2), np.arange(100, dtype=np.int32).reshape(50, 2),
                np.arange(150.0).reshape(50, 3)):
        np.save(path, new)
        for e in exprs:
            with pytest.raises(bigarr.errors.FileChangedError, match="changed since"):
                e.compute()
        with pytest.raises(bigarr.errors.FileChangedError):
            (x * 2).to_npy(tmp_path / "o.npy", overwrite=True)
        if importlib.util.find_spec("dask") is not None:
            with pytest.raises(bigarr.errors.FileChangedError):
                (x * 2).to_dask()


def test_clip_with_one_bound_and_operands_numpy_refuses(tmp_path: Path) -> None:
    # regression: clip's default None bound became an object-dtype operand, so x.clip(max=5)
    # (and np.clip(x, None, 5), x + None) built an object expression that failed on compute
    # with a bare TypeError; int8 data + 300 (NEP 50) and int ** -1 raised numpy's bare
    # OverflowError and ValueError when built
    b = np.arange(-20, 20, dtype=np.int8).reshape(20, 2)
    x = bigarr.lazy(b)
    w = np.array([1, 2], np.int16)
    for got, want in ((x.clip(max=5), b.clip(max=5)), (x.clip(3), b.clip(3)),
                      (np.clip(x, None, 5.5), np.clip(b, None, 5.5)),
                      (x.clip(), np.clip(b, None, None)), (x.clip(None, w), b.clip(None, w))):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got.compute(), want)
    with x.clip(max=5).to_npy(tmp_path / "c.npy") as m:
        np.testing.assert_array_equal(m, b.clip(max=5))
    with pytest.raises(ArgumentError):
        x + None
    with pytest.raises(OverflowError) as over:
        x + 300
    assert isinstance(over.value, bigarr.errors.BigArrError)
    with pytest.raises(ValueError) as value:
        x ** -1
    assert isinstance(value.value, bigarr.errors.BigArrError)


def test_to_dask_of_count_nonzero_without_keepdims() -> None:
    # regression: keepdims=False was passed on to dask's count_nonzero, which takes no
    # keepdims: a bare TypeError from dask
    pytest.importorskip("dask.array")
    a = np.array([[0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])
    x = bigarr.lazy(a)
    for axis in (None, 0, (0, 1), -1):
        for keepdims in (False, True):
            want = np.count_nonzero(a, axis=axis, keepdims=keepdims)
            got = x.count_nonzero(axis=axis, keepdims=keepdims).to_dask().compute()
            np.testing.assert_array_equal(got, want)
            assert np.asarray(got).dtype == np.asarray(want).dtype


def test_floating_reductions_are_the_same_bits_at_every_budget(tmp_path: Path) -> None:
    # Floating sums, means and variances merge in bigarr.sum's fixed tree: the same bits as
    # the eager functions, whatever the budget, threads and tiles.
    a = _data(12, (30000, 5), "float32", True, "C")
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    for budget, threads, tile in (("3MiB", 1, 0), ("5MiB", 2, 8192), ("64MiB", 2, 1 << 19)):
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(lazyeval, "TILE_BYTES", tile)
            got = bigarr.compute(x.sum(axis=0), x.std(axis=0, ddof=1), x.mean(),
                                 np.nansum(x * 2, axis=0), budget=budget, threads=threads,
                                 progress=False)
        want = (bigarr.sum(a, axis=0, progress=False),
                bigarr.std(a, axis=0, ddof=1, progress=False), bigarr.mean(a, progress=False))
        for g, w in zip(got[:3], want, strict=True):
            assert np.array_equal(g, w, equal_nan=True), (budget, g, w)
        if budget == "3MiB":
            first = got[3]
        assert np.array_equal(got[3], first)


def test_filter_scan_matmul_to_file_peak_rss(tmp_path: Path,
                                            peak_rss: Callable[..., list[int]]) -> None:
    budget, rows = 8 << 20, (128 << 20) // 128  # 128 MiB file: 16x the budget
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, (rows, 32))
    for i in range(0, rows, 1 << 17):
        x[i:i + (1 << 17)] = np.arange(32, dtype=np.float32) + np.float32(i % 31)
    x.flush()
    del x
    [peak] = peak_rss("import numpy as np, bigarr\nx = bigarr.lazy(sys.argv[1])", """
        kept = x[x[:, 0] > 16]
        z = np.diff((kept - kept.mean(axis=0)).cumsum(axis=0), axis=0) @ np.ones((32, 4), 'f4')
        z.to_npy(sys.argv[2], budget=int(sys.argv[3]), threads=2, progress=False).close()
    """, args=(str(tmp_path / "x.npy"), str(tmp_path / "z.npy"), str(budget)))
    assert peak <= budget + (64 << 20), f"peak {peak >> 20} MiB at an 8 MiB budget"
    z = np.load(tmp_path / "z.npy", mmap_mode="r")
    assert z.shape[1] == 4 and 0 < z.shape[0] < rows


def test_diff_of_a_negative_order_is_numpy_s_value_error() -> None:
    # Regression: numpy raises ValueError ("order must be non-negative"); bigarr raised its
    # ArgumentError, a TypeError, which `except ValueError` does not catch.
    x = bigarr.lazy(np.arange(12.0).reshape(4, 3))
    with pytest.raises(ValueError):
        np.diff(np.arange(12.0).reshape(4, 3), n=-1, axis=0)
    for axis in (0, 1):
        with pytest.raises(ValueError, match="non-negative") as info:
            np.diff(x, n=-1, axis=axis)
        assert isinstance(info.value, bigarr.errors.BigArrError)
    with pytest.raises(ArgumentError):
        x.diff(n=1.5)


def test_numpy_arguments_a_lazy_method_lacks_are_bigarr_errors() -> None:
    # Regression: np.sum(x, where=m), np.diff(x, prepend=0), np.quantile(x, q, weights=w) of a
    # LazyArray raised a bare TypeError from the lazy method's signature.
    x = bigarr.lazy(np.arange(12.0).reshape(4, 3))
    calls: list[Callable[[], Any]] = [
        lambda: np.sum(x, where=np.ones((4, 3), bool)),
        lambda: np.diff(x, axis=0, prepend=0),
        lambda: np.quantile(x, 0.5, weights=np.ones(12), method="inverted_cdf"),
        lambda: np.std(x, correction=1),
    ]
    for call in calls:
        with pytest.raises(ArgumentError, match="does not take"):
            call()
    assert np.array_equal(np.cumsum(x, axis=0, dtype=np.float32).compute(),
                          np.cumsum(np.arange(12.0).reshape(4, 3), axis=0, dtype=np.float32))


@pytest.mark.parametrize("kind", ["cumsum", "cumprod"])
@pytest.mark.parametrize("value", [np.array(3.5), np.array(-7, np.int8), np.array(True),
                                   np.array(np.nan, np.float32)])
def test_a_scan_of_one_value_is_numpys_one_element_array(kind: str, value: Any) -> None:
    # numpy flattens a 0-d array with axis=None: cumsum/cumprod of one value is that value
    # as shape (1,), in the accumulated dtype; the lazy scan refused it, naming "more than 1
    # dimension"; a 0-d reduction's result scans the same way inside an expression
    for dtype in (None, np.float64):
        got = getattr(bigarr.lazy(value), kind)(dtype=dtype).compute(progress=False)
        want = getattr(np, kind)(value, dtype=dtype)
        assert got.shape == want.shape == (1,) and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    a = np.arange(1, 13, dtype=np.float32).reshape(4, 3)
    got = (getattr(bigarr.lazy(a).sum(), kind)() * 2).compute(progress=False)
    np.testing.assert_array_equal(got, getattr(np, kind)(a.sum()) * 2)
