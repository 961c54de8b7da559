"""Exact order statistics out of core (issue 13): numpy is the oracle, bit for bit.

Quantiles: every method bigarr implements, every function of the family, axis None and 0,
over bool, signed and unsigned integers and float16/32/64 data that is random, sorted,
reverse-sorted, all-equal or few-distinct, with NaN, inf and -0.0 mixed in; results must have
numpy's values, dtype, shape and type (scalar or array). Memory: a subprocess measures peak RSS.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bigarr
from bigarr._compute import order
from bigarr._compute import sort as sort_module
from bigarr.errors import (
    AxisError,
    BigArrError,
    BudgetError,
    DtypeError,
    ShapeError,
    UnsupportedError,
)

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64"]
KINDS = ["random", "special", "sorted", "reverse", "equal", "few"]
METHODS = ["linear", "lower", "higher", "nearest", "midpoint"]
QS: list[Any] = [0.5, [0.0, 0.1, 0.25, 0.999, 1.0], np.float32(0.7), 1]


def make(dtype: str, shape: tuple[int, ...], kind: str, seed: int = 0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        x = rng.integers(0, 2, shape).astype(bool)
    elif dtype.startswith("float"):
        x = (rng.standard_normal(shape) * 100).astype(dtype)
        if kind == "special":
            f = x.reshape(-1)
            for value, count in ((np.nan, 9), (np.inf, 5), (-np.inf, 5), (-0.0, 30), (0.0, 30)):
                f[rng.integers(0, f.size, count)] = value
    else:
        info = np.iinfo(dtype)
        x = rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    if kind == "sorted":
        x = np.sort(x, axis=0)
    elif kind == "reverse":
        x = np.sort(x, axis=0)[::-1].copy()
    elif kind == "equal":
        x = np.full(shape, x.reshape(-1)[0])
    elif kind == "few":
        x = x.reshape(-1)[rng.integers(0, 3, x.size)].reshape(shape)
    return x


def same(got: Any, want: Any) -> bool:
    """numpy's answer exactly: value (NaN equal to NaN, -0.0 to 0.0), dtype, shape and type."""
    return (type(got) is type(want) and np.asarray(got).dtype == np.asarray(want).dtype
            and np.shape(got) == np.shape(want) and np.array_equal(got, want, equal_nan=True))


def numpy_or_error(fn: Any, *args: Any, **kwargs: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args, **kwargs)
        except (TypeError, ValueError) as exc:
            return type(exc)


def check_all(x: np.ndarray[Any, Any], axis: int | None, **opts: Any) -> None:
    """Every method of quantile with every kind of q; the other functions with fewer."""
    calls: list[tuple[str, str, Any]] = [("quantile", m, q) for m in METHODS for q in QS]
    calls += [("nanquantile", m, QS[1]) for m in METHODS]
    calls += [("percentile", "linear", 50.0), ("percentile", "nearest", [1, 50, 99.5]),
              ("nanpercentile", "midpoint", [1, 50, 99.5]), ("nanpercentile", "lower", 25)]
    for name, method, q in calls:
        want = numpy_or_error(getattr(np, name), x, q, axis=axis, method=method)
        if isinstance(want, type):  # numpy refuses (bool with linear): so does bigarr
            with pytest.raises(want) as info:
                getattr(bigarr, name)(x, q, axis=axis, method=method, **opts)
            assert isinstance(info.value, BigArrError)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = getattr(bigarr, name)(x, q, axis=axis, method=method, **opts)
        assert same(got, want), (name, method, q, got, want)
    for name in ("median", "nanmedian"):
        want = numpy_or_error(getattr(np, name), x, axis=axis)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = getattr(bigarr, name)(x, axis=axis, **opts)
        assert same(got, want), (name, got, want)


#: The default run: every dtype with random and special (or few-distinct) data; the ordered
#: and degenerate kinds on three dtypes. The full matrix is marked slow.
MATRIX = [(d, "special" if d.startswith("float") else "few") for d in DTYPES]
MATRIX += [(d, "random") for d in DTYPES]
MATRIX += [(d, k) for d in ("int8", "uint64", "float64") for k in ("sorted", "reverse", "equal")]
FULL = [pytest.param(d, k, marks=pytest.mark.slow) for d in DTYPES for k in KINDS
        if (d, k) not in MATRIX and (k != "special" or d.startswith("float"))]


@pytest.mark.parametrize(("dtype", "kind"), MATRIX + FULL)
def test_quantile_family_equals_numpy(dtype: str, kind: str) -> None:
    x = make(dtype, (301, 3), kind)
    check_all(x, None, progress=False, threads=1)
    check_all(x, 0, progress=False, threads=1)


def test_all_nan_column_gives_nan_with_numpy_warning() -> None:
    x = make("float32", (50, 3), "random")
    x[:, 1] = np.nan
    with pytest.warns(RuntimeWarning):
        got = bigarr.nanmedian(x, axis=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert same(got, np.nanmedian(x, axis=0))


@pytest.mark.parametrize(("dtype", "kind"), [
    ("int8", "random"), ("int64", "equal"), ("uint16", "few"), ("float16", "sorted"),
    ("float32", "few"), ("float64", "equal"), ("float64", "random")])
def test_small_budget_refines_and_stays_exact(tmp_path: Path, dtype: str, kind: str) -> None:
    """A budget too small to gather a first-pass bucket: more passes, the same exact answer."""
    x = make(dtype, (200_000,), kind, seed=3)
    path = tmp_path / "x.npy"
    np.save(path, x)
    q = [0.0, 0.01, 0.5, 0.77, 1.0]
    for method in ("linear", "midpoint"):
        got = bigarr.quantile(path, q, method=method, budget="8MiB", progress=False)
        assert same(got, np.quantile(x, q, method=method))
    got = bigarr.median(x.reshape(-1, 4), axis=0, budget="8MiB", progress=False)
    assert same(got, np.median(x.reshape(-1, 4), axis=0))


def test_pass_counts() -> None:
    """Random data: one pass (the sampled window held the median; see test_order_native).
    All-equal float64 in several columns (no windows): one bucket narrowed 16 bits at a time
    until it is one key wide, never gathered."""
    x = make("float64", (400_000,), "random")
    assert same(bigarr.median(x, budget="8MiB", progress=False), np.median(x))
    assert order.LAST_PASSES[0] == 1
    x[:] = 1.5
    y = x.reshape(-1, 2)
    assert same(bigarr.median(y, axis=0, budget="32MiB", threads=2, progress=False),
                np.median(y, axis=0))
    assert order.LAST_PASSES[0] == 4  # 16 bits in pass 1, then 48 bits in three passes
    y = make("int8", (100_000,), "random")
    assert same(bigarr.quantile(y, 0.3, progress=False), np.quantile(y, 0.3))
    assert order.LAST_PASSES[0] == 1  # 8-bit keys: pass 1's buckets are exact


@settings(max_examples=40, deadline=None)
@given(
    x=hnp.arrays(st.sampled_from(["float16", "float32", "float64", "int16", "uint8"]),
                 hnp.array_shapes(min_dims=1, max_dims=2, min_side=1, max_side=40)),
    q=st.lists(st.floats(0, 1), min_size=1, max_size=4),
    method=st.sampled_from(METHODS),
    nan=st.booleans(),
)
def test_hypothesis_quantile(x: np.ndarray[Any, Any], q: list[float], method: str,
                             nan: bool) -> None:
    fn = "nanquantile" if nan else "quantile"
    for axis in (None, 0):
        want = numpy_or_error(getattr(np, fn), x, q, axis=axis, method=method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = getattr(bigarr, fn)(x, q, axis=axis, method=method, progress=False)
        assert same(got, want)


def test_unknown_quantile_method_is_a_value_error() -> None:
    # Regression: numpy raises ValueError for a method it does not know; bigarr raised
    # UnsupportedError (a NotImplementedError), which `except ValueError` misses.
    x = np.arange(10.0)
    with pytest.raises(ValueError):
        np.quantile(x, 0.5, method="bogus")
    with pytest.raises(ValueError, match="bogus") as info:
        bigarr.quantile(x, 0.5, method="bogus", progress=False)
    assert isinstance(info.value, BigArrError)


def test_refusals() -> None:
    x = np.arange(10.0)
    with pytest.raises(UnsupportedError, match="method"):
        bigarr.quantile(x, 0.5, method="hazen")
    with pytest.raises(UnsupportedError, match="axis"):
        bigarr.median(x.reshape(2, 5), axis=1)
    with pytest.raises(DtypeError, match="complex"):
        bigarr.median(x.astype(complex))
    with pytest.raises(ShapeError, match=r"\[0, 1\]"):
        bigarr.quantile(x, 1.5)
    with pytest.raises(ValueError):  # what a numpy user catches
        bigarr.percentile(x, -1)


def test_empty_and_scalar_as_numpy() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert same(bigarr.median(np.zeros(0)), np.median(np.zeros(0)))
        assert same(bigarr.quantile(np.float32(3), 0.5), np.quantile(np.float32(3), 0.5))


_RSS = """
import numpy as np, bigarr
def hwm():
    return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) << 10
def rss():
    return int(open('/proc/self/status').read().split('VmRSS:')[1].split()[0]) << 10
a = bigarr.open({path!r})
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
base = rss()
r = {op}
print(hwm() - base)
"""


def _peak(path: Path, op: str) -> int:
    code = textwrap.dedent(_RSS.format(path=str(path), op=op))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=300)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_median_axis0_peak_rss_within_budget(tmp_path: Path) -> None:
    """64 MiB of float32 (16 x the 4 MiB budget): median(axis=0) adds at most budget + 64 MiB."""
    budget = 4 << 20
    path = tmp_path / "big.npy"
    with bigarr.create(path, ((64 << 20) // 32, 8), "float32", overwrite=True) as x:
        for chunk, view in x.iter_chunks("8MiB", progress=False):
            rng = np.random.default_rng(chunk.index)
            view[:] = rng.standard_normal(view.shape, dtype=np.float32)
    peak = _peak(path, f"bigarr.median(a, axis=0, budget={budget}, threads=2, progress=False)")
    assert peak <= budget + (64 << 20), peak
    # all values: the one pass with its sampled window (16 MiB: room for the window's keys)
    peak = _peak(path, f"bigarr.median(a, budget={4 * budget}, threads=2, progress=False)")
    assert peak <= 4 * budget + (64 << 20), peak


# ---- topk ----------------------------------------------------------------------------------
def topk_oracle(x: np.ndarray[Any, Any], k: int, largest: bool) -> np.ndarray[Any, Any]:
    """Indices by numpy's stable argsort: ascending; or descending numbers (ties to the lower
    index, via a stable sort of the reversed array), NaNs after them in index order."""
    if not largest:
        return np.argsort(x, kind="stable")[:k]
    nan = np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, bool)
    numbers = np.flatnonzero(~nan)
    rev = np.argsort(x[numbers][::-1], kind="stable")[::-1]
    order = numbers[len(numbers) - 1 - rev]
    return np.concatenate((order, np.flatnonzero(nan)))[:k]


@pytest.mark.parametrize(("dtype", "kind"), MATRIX)
def test_topk_equals_stable_sort(dtype: str, kind: str) -> None:
    x = make(dtype, (401, 3), kind, seed=5)
    for largest in (True, False):
        for k in (0, 1, 7, 401):
            values, index = bigarr.topk(x, k, axis=0, largest=largest, progress=False, threads=1)
            for c in range(3):
                want = topk_oracle(x[:, c], k, largest)
                np.testing.assert_array_equal(index[:, c], want)
                np.testing.assert_array_equal(values[:, c], x[want, c])
            assert values.dtype == x.dtype and index.dtype == np.intp
        values, index = bigarr.topk(x, 50, largest=largest, progress=False)
        want = topk_oracle(x.reshape(-1), 50, largest)
        np.testing.assert_array_equal(index, want)
        np.testing.assert_array_equal(values, x.reshape(-1)[want])


def test_topk_many_chunks_ties_across_chunks(tmp_path: Path) -> None:
    """Few distinct values over many chunks: ties at the k-th value span chunks and must go to
    the lowest indices, as in a stable sort."""
    x = make("int16", (300_000,), "few", seed=2)
    path = tmp_path / "x.npy"
    np.save(path, x)
    for largest in (True, False):
        values, index = bigarr.topk(path, 15_001, largest=largest, budget="8MiB",
                                    progress=False)
        np.testing.assert_array_equal(index, topk_oracle(x, 15_001, largest))
        np.testing.assert_array_equal(values, x[index])


def test_topk_refusals() -> None:
    x = np.arange(10.0)
    with pytest.raises(ShapeError, match="k <= 10"):
        bigarr.topk(x, 11)
    with pytest.raises(UnsupportedError, match="axis"):
        bigarr.topk(x.reshape(2, 5), 1, axis=1)


# ---- sort ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "kind"), MATRIX)
def test_sort_equals_numpy(tmp_path: Path, dtype: str, kind: str) -> None:
    """Many runs (a 2 MiB budget over up to 1.6 MB of data) merged into numpy's order."""
    x = make(dtype, (200_000,), kind, seed=7)
    out = tmp_path / "sorted.npy"
    with bigarr.sort(x, out, budget="4MiB", progress=False) as got:
        np.testing.assert_array_equal(got, np.sort(x))  # NaN equal to NaN, -0.0 to 0.0
        assert got.dtype == x.dtype
    assert np.array_equal(np.load(out), np.sort(x), equal_nan=True)  # a plain .npy
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sorted.npy"]  # no runs left


def test_sort_removes_runs_and_output_on_failure(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError("injected failure in the merge")

    monkeypatch.setattr(sort_module, "merge", fail)
    x = make("float32", (400_000,), "random")
    with pytest.raises(OSError, match="injected"):
        bigarr.sort(x, tmp_path / "s.npy", budget="4MiB", progress=False)
    assert list(tmp_path.iterdir()) == []
    old = tmp_path / "old.npy"  # a failed overwrite leaves the old file as it was
    np.save(old, np.arange(3))
    with pytest.raises(OSError, match="injected"):
        bigarr.sort(x, old, budget="4MiB", progress=False, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["old.npy"]
    np.testing.assert_array_equal(np.load(old), np.arange(3))


def test_sort_refusals(tmp_path: Path) -> None:
    out = tmp_path / "s.npy"
    out.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        bigarr.sort(np.arange(5), out, progress=False)
    assert out.read_bytes() == b"keep"
    with pytest.raises(UnsupportedError, match="by="):
        bigarr.sort(np.zeros((3, 2)), tmp_path / "t.npy", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.npy"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_sort_peak_rss_within_budget(tmp_path: Path) -> None:
    """64 MiB of float64 (16 x the 4 MiB budget): the sort adds at most budget + 64 MiB."""
    budget = 4 << 20
    src = tmp_path / "big.npy"
    with bigarr.create(src, ((64 << 20) // 8,), "float64", overwrite=True) as x:
        for chunk, view in x.iter_chunks("8MiB", progress=False):
            view[:] = np.random.default_rng(chunk.index).standard_normal(view.shape)
    out = tmp_path / "sorted.npy"
    peak = _peak(src, f"bigarr.sort(a, {str(out)!r}, budget={budget}, threads=2, "
                      "progress=False).close()")
    assert peak <= budget + (64 << 20), peak
    got = np.load(out, mmap_mode="r")
    assert bool(np.all(got[1:] >= got[:-1]))
    assert float(got[0]) == float(bigarr.min(src, progress=False))


# ---- unique --------------------------------------------------------------------------------
@pytest.mark.parametrize(("dtype", "kind"), MATRIX)
def test_unique_equals_numpy(dtype: str, kind: str) -> None:
    x = make(dtype, (3001, 3), kind, seed=11)
    if kind == "random" and dtype not in ("bool", "int8", "uint8", "int16", "uint16"):
        x = x % 97 if dtype.startswith(("int", "uint")) else np.round(x)  # bounded distinct
    got, counts = bigarr.unique(x, return_counts=True, budget="8MiB", progress=False)
    want, want_counts = np.unique(x, return_counts=True)
    np.testing.assert_array_equal(got, want)  # NaNs collapse to one, last
    np.testing.assert_array_equal(counts, want_counts)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(bigarr.unique(x, progress=False), want)


def test_unique_many_chunks_and_the_budget(tmp_path: Path) -> None:
    path = tmp_path / "ids.npy"
    x = np.random.default_rng(4).integers(0, 5000, 1_000_000).astype(np.int64)
    np.save(path, x)
    got, counts = bigarr.unique(path, return_counts=True, budget="8MiB", progress=False)
    want, want_counts = np.unique(x, return_counts=True)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(counts, want_counts)
    y = np.arange(1_000_000, dtype=np.int64)  # a million distinct values: 16 MB with counts
    with pytest.raises(BudgetError, match="distinct values"):
        bigarr.unique(y, budget="8MiB", progress=False)


def test_wide_array_with_coarse_first_pass() -> None:
    """300 columns at 8 MiB: pass 1 affords only 2**7 buckets per column, so the answer needs
    refine passes; still numpy's, NaNs in every third column included."""
    x = make("float32", (2000, 300), "random", seed=9)
    x[::7, ::3] = np.nan
    got = bigarr.nanquantile(x, [0.1, 0.5, 0.9], axis=0, budget="8MiB", progress=False)
    assert same(got, np.nanquantile(x, [0.1, 0.5, 0.9], axis=0))
    assert order.LAST_PASSES[0] >= 3
    assert same(bigarr.median(x, axis=0, budget="8MiB", progress=False), np.median(x, axis=0))


def test_order_statistics_axis_out_of_range_is_an_axis_error_not_axis_0() -> None:
    # regression: axis=2 of a 2-d array was taken modulo ndim, so it silently meant axis=0
    x = np.arange(12.0).reshape(3, 4)
    for call in (lambda: bigarr.median(x, axis=2, progress=False),
                 lambda: bigarr.quantile(x, 0.5, axis=-3, progress=False),
                 lambda: bigarr.topk(x, 1, axis=2, progress=False)):
        with pytest.raises(AxisError) as info:
            call()
        assert isinstance(info.value, BigArrError)
        assert isinstance(info.value, np.exceptions.AxisError)
    with pytest.raises(np.exceptions.AxisError):
        np.median(x, axis=2)
    assert np.array_equal(bigarr.median(x, axis=-2, progress=False), np.median(x, axis=-2))


@pytest.mark.parametrize("method", METHODS)
def test_one_valid_value_keeps_numpys_negative_zero(method: str) -> None:
    """Regression: a column with one (non-NaN) value, -0.0, gave +0.0 where numpy gives -0.0
    (numpy's weight for one value is exactly 1; the two-value stand-in's was 2)."""
    a = np.array([[np.nan, -0.0, 5.0], [-0.0, np.nan, np.nan]])
    for q in (0.7, np.float32(0.3), [0.0, 0.5, 1.0]):
        want = np.nanquantile(a, q, axis=0, method=method)
        got = bigarr.nanquantile(a, q, axis=0, method=method, progress=False)
        assert np.array_equal(got, want) and np.array_equal(np.signbit(got), np.signbit(want))
    want = np.quantile(np.array([-0.0]), 0.7, method=method)
    got = bigarr.quantile(np.array([-0.0]), 0.7, method=method, progress=False)
    assert np.signbit(got) == np.signbit(want) and type(got) is type(want)


@pytest.mark.parametrize("q", [[0.1, 0.33], np.float32(0.33)])
def test_all_nan_first_column_gives_numpys_dtype(q: Any) -> None:
    """Regression: numpy's nanquantile takes its result dtype from the first column's result
    (apply_along_axis): an all-NaN first column is of the data's dtype and every other column
    is rounded to it; bigarr returned float64 (float32) values."""
    x = np.full((10, 2), np.nan, np.float16)
    x[:, 1] = np.arange(10) / 3
    for a, axis in ((x, 0), (x[:, 0].copy(), None)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = np.nanquantile(a, q, axis=axis)
            got = bigarr.nanquantile(a, q, axis=axis, progress=False)
        assert same(got, want), (got, want)


@pytest.mark.parametrize("dtype", [">f8", ">f4", ">i4", ">u2"])
def test_big_endian_data_equals_numpy(tmp_path: Path, dtype: str) -> None:
    """Regression: the order-preserving keys read big-endian values as native words, so the
    median, quantiles and top-k of a '>f8' file (FITS data, say) were silently wrong."""
    rng = np.random.default_rng(3)
    x = np.array(rng.standard_normal((2001, 3)) * 100, dtype=dtype)
    np.save(tmp_path / "x.npy", x)
    for src in (x, tmp_path / "x.npy"):
        for axis in (None, 0):
            assert same(bigarr.median(src, axis=axis, progress=False), np.median(x, axis=axis))
            got = bigarr.quantile(src, [0.1, 0.9], axis=axis, method="lower", progress=False)
            assert same(got, np.quantile(x, [0.1, 0.9], axis=axis, method="lower"))
    values, _ = bigarr.topk(x[:, 0].copy(), 3, progress=False)
    assert values.tolist() == np.sort(x[:, 0])[::-1][:3].tolist()
