"""The native reduction kernels (``_compute/_native.c``) against numpy, and their fallback.

numpy is the oracle: sums and variances in float64 agree with numpy's float64 computation to
within a few units of float64 rounding (their order differs), on edge shapes, NaN, inf, -0.0
and data on a large offset; equal-bin histograms are numpy's counts exactly, values on and next
to every edge included. The native results are the same bits whatever the budget and threads,
and the numpy kernels (``BIGARR_NATIVE=0``, or no compiler at install time) give the same
answers within rounding.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bigarr
from bigarr._compute import native, tiles
from bigarr._plan import budget as _budget

deep = settings(max_examples=int(os.environ.get("ORACLE_EXAMPLES", "40")), deadline=None)

needs_native = pytest.mark.skipif(not native.available(),
                                  reason="the native kernels are not built or are turned off")


def _compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


def test_native_kernels_are_built_where_a_compiler_is() -> None:
    # An install with a C compiler builds them (the extension is optional only so that an
    # install without one still works); a silent build failure would leave the slow kernels.
    if os.environ.get("BIGARR_NATIVE", "1") == "0" or not _compiler():
        pytest.skip("no C compiler, or the native kernels are turned off")
    assert native.available()


def test_switched_off_by_the_environment() -> None:
    env = {**os.environ, "BIGARR_NATIVE": "0"}
    version = subprocess.run([sys.executable, "-m", "bigarr", "--version"], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert "numpy" in version


# ---- sums and variances of blocks -------------------------------------------------------------
VALUES = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf]),
)


@st.composite
def blocks(draw: Any) -> tuple[np.ndarray[Any, Any], tuple[int, ...]]:
    dtype = draw(st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)]))
    p = draw(st.integers(1, 4))
    n = draw(st.integers(1, 70))
    c = draw(st.sampled_from([1, 3, 8, 9, 31, 32, 33, 70]))
    block = draw(hnp.arrays(dtype, (p, n, c), elements=VALUES))
    offset = draw(st.sampled_from([0.0, 1e3, 1e7]))
    block = (block + dtype.type(offset)).astype(dtype)
    axes = draw(st.sampled_from([(1,), (1, 2)]))
    return block, axes


def _close(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any], scale: Any) -> None:
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    fin = np.isfinite(want)
    np.testing.assert_array_equal(got[~fin & ~np.isnan(want)], want[~fin & ~np.isnan(want)])
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-12, atol=1e-12 * float(scale))


@needs_native
@deep
@given(blocks())
def test_sum_blocks_is_numpys_float64_sum(case: Any) -> None:
    block, axes = case
    got = native.sum_blocks(block, axes)
    if block.shape[2] > 1 and block.shape[2] < native.MIN_COLUMNS and axes == (1,):
        assert got is None  # too few columns: numpy's loops
        return
    assert got is not None
    with np.errstate(invalid="ignore"):
        want = np.sum(block, axis=axes, keepdims=True, dtype=np.float64)
        scale = np.nan_to_num(np.abs(block.astype(np.float64)), posinf=0).sum()
    _close(got, want, scale)


@needs_native
@deep
@given(blocks())
def test_var_blocks_give_numpys_mean_and_variance(case: Any) -> None:
    block, axes = case
    got = native.var_blocks(block, axes)
    assert got is not None  # every column count: Var reserves no scratch for numpy's kernel
    shift, mean, m2 = got
    n = int(np.prod([block.shape[a] for a in axes]))
    with np.errstate(invalid="ignore", over="ignore"):
        wide = block.astype(np.float64)
        want_mean = wide.mean(axis=axes, keepdims=True)
        want_var = wide.var(axis=axes, keepdims=True)
        first = wide[:, :1, :1] if axes == (1, 2) else wide[:, :1, :]
        np.testing.assert_array_equal(shift, first)
        finite = np.isfinite(wide).all(axis=axes, keepdims=True)
        spread = np.where(finite, np.abs(wide - want_mean), 0).max(axis=axes, keepdims=True)
        got_mean = shift + mean
        got_var = m2 / n
    assert np.isnan(got_var[~finite]).all()  # an inf or NaN anywhere: NaN, as numpy's var
    assert np.isnan(want_var[~finite]).all()
    f = finite
    np.testing.assert_allclose(got_mean[f], want_mean[f], rtol=1e-12,
                               atol=1e-12 * (1 + float(spread.max(initial=0))))
    np.testing.assert_allclose(got_var[f], want_var[f], rtol=1e-9,
                               atol=1e-12 * (1 + float(spread.max(initial=0))) ** 2)


@needs_native
def test_variance_is_accurate_far_from_zero() -> None:
    # 1e9 + noise in float64: the shift keeps the deviations exact, as the Chan merge needs.
    rng = np.random.default_rng(0)
    x = (1e9 + rng.standard_normal((4, 512, 32))).astype(np.float64)
    _shift, _mean, m2 = native.var_blocks(x, (1,)) or (None, None, None)
    assert m2 is not None
    want = np.array([[np.var(x[q, :, j] - 1e9) for j in range(32)] for q in range(4)])
    np.testing.assert_allclose((m2 / 512)[:, 0, :], want, rtol=1e-9)


def test_layouts_the_kernels_do_not_take_fall_back() -> None:
    x = np.ones((4, 5, 6), dtype=np.float32)
    assert native.sum_blocks(x, (0, 2)) is None  # reduced axes not one run
    assert native.var_blocks(x.astype(np.int32), (1,)) is None  # not floating
    assert native.var_blocks(np.asfortranarray(x), (1,)) is None  # not C-contiguous
    assert native.sum_blocks(x.astype(np.complex64), (1,)) is None
    for axes in ((-1,), (-2, -1), (3,)):  # not normalised: never read as another geometry
        assert native.sum_blocks(x, axes) is None
        assert native.var_blocks(x, axes) is None


# ---- end to end --------------------------------------------------------------------------------
@needs_native
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reductions_native_and_numpy_kernels_agree(tmp_path: Path, order: str, dtype: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_budget, "MIN_CHUNK_BYTES", 4096)  # small budgets: many chunks
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((40_000, 12)) * 3 + 100).astype(dtype)
    x[5, 3] = -0.0
    x = np.asfortranarray(x) if order == "F" else x
    path = tmp_path / "x.npy"
    arr = bigarr.create(path, x.shape, x.dtype, order=order)
    arr[...] = x
    arr.close()
    runs: dict[tuple[str, int | None], Any] = {}
    for name in ("sum", "mean", "var", "std"):
        for axis in (0, 1, None):
            budgets = (("8MiB", 1), ("16MiB", 2)) if axis == 1 else (("256KiB", 1), ("512KiB", 2))
            results = [getattr(bigarr, name)(path, axis=axis, budget=b, threads=t,
                                              progress=False)
                       for b, t in (*budgets, ("64MiB", 2))]
            for r in results[1:]:  # the same bits whatever the chunks and threads
                np.testing.assert_array_equal(r, results[0])
            want = getattr(np, name)(x.astype(np.float64), axis=axis)
            np.testing.assert_allclose(results[0], want, rtol=1e-6 if dtype == "float32"
                                       else 1e-12)
            runs[(name, axis)] = results[0]
    monkeypatch.setattr(native, "lib", None)  # numpy's kernels: the same answers, in rounding
    for (name, axis), got in runs.items():
        slow = getattr(bigarr, name)(path, axis=axis, budget="16MiB", progress=False)
        np.testing.assert_allclose(slow, got, rtol=1e-6 if dtype == "float32" else 1e-12)


# ---- histograms ---------------------------------------------------------------------------------
@st.composite
def binned(draw: Any) -> tuple[np.ndarray[Any, Any], int, bool]:
    dtype = draw(st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)]))
    base = draw(hnp.arrays(dtype, draw(st.integers(2, 400)),
                           elements=st.floats(-1e4, 1e4, allow_nan=False, width=32)))
    scale = draw(st.sampled_from([1.0, 1e-3, 1e5]))
    base = (base * dtype.type(scale)).astype(dtype)
    n = draw(st.integers(1, 600))
    assume(base.min() < base.max())
    try:
        edges = np.histogram_bin_edges(base, n)
    except ValueError:  # too many bins for the range: numpy refuses, as bigarr does
        assume(False)
    e = edges.astype(dtype)
    x = np.concatenate([base, e, np.nextafter(e, dtype.type(np.inf)),
                        np.nextafter(e, dtype.type(-np.inf))])
    x = x[(x >= base.min()) & (x <= base.max())]
    if draw(st.booleans()):
        x = np.append(x, np.array([np.nan, np.inf, -np.inf], dtype=dtype))
    np.random.default_rng(draw(st.integers(0, 9))).shuffle(x)
    return x, n, draw(st.booleans())


@needs_native
@deep
@given(binned())
def test_equal_bins_are_numpys_counts_on_every_edge(case: Any) -> None:
    x, n, given_range = case
    finite = x[np.isfinite(x)]
    auto = (finite.min(), finite.max())  # numpy's own outer edges: scalars of x's dtype
    rng = (float(auto[0]), float(auto[1])) if given_range else auto
    counts, edges = np.histogram(x, n, range=rng)
    upper = np.append(edges[1:n], np.inf).astype(edges.dtype)
    denom = tiles._unsigned_subtract(rng[1], rng[0])
    within = tiles._estimate_within_one(rng[0], rng[1], n, edges)
    # numpy's own estimate always; where rounding cannot move it past one bin, a float64
    # product, and comparison with every inner edge
    # (and, by index, with or without the shortcut that skips the corrections of estimates
    # far from a whole number): all must give numpy's counts
    margin = tiles._sure_margin(rng[0], rng[1], n, edges)
    modes = [(False, False, 1.0)] + (
        [(True, False, 1.0), (True, False, margin), (True, True, 1.0)] if within else [])
    for fast, by_edges, sure in modes:
        got = np.zeros(n + 1, dtype=np.int64)
        assert native.hist_uniform(x, rng[0], rng[1], denom, n, edges, upper, got, fast=fast,
                                   by_edges=by_edges, margin=sure)
        np.testing.assert_array_equal(got[:n], counts)


def _ulps(values: np.ndarray[Any, Any], k: int) -> np.ndarray[Any, Any]:
    """Every value of ``values``' dtype within ``k`` ulps of each of them."""
    out = [values]
    up = down = values
    for _ in range(k):
        up = np.nextafter(up, values.dtype.type(np.inf))
        down = np.nextafter(down, values.dtype.type(-np.inf))
        out += [up, down]
    return np.concatenate(out)


_SPECIAL = [0.0, -0.0, 1.0, -1.0, 1e-40, -1e-40, 5e-324, 3.4e38, -3.4e38, 1e300, np.inf,
            -np.inf, np.nan]


@needs_native
@deep
@given(st.sampled_from([np.float32, np.float64]),
       st.sampled_from([1, 7, 8, 9, 2047, 2048, 2049, 4100]), st.integers(1, 14),
       st.integers(0, 99))
def test_counts_at_or_above_thresholds_are_numpys(dtype: Any, size: int, k: int,
                                                   seed: int) -> None:
    # IEEE comparisons in the data's dtype: -0.0 >= 0.0, NaN never counted (as a value or as
    # a threshold), infinities and subnormals compared exactly; sizes around the vector and
    # block lengths, thresholds in any order and fewer or more than one group
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore"):
        pool = np.array(_SPECIAL, dtype=dtype)
    pool = np.concatenate([pool, _ulps(pool[np.isfinite(pool)], 1),
                           rng.standard_normal(20).astype(dtype)])
    x = rng.choice(pool, size=size)
    t = rng.choice(pool, size=k)
    got = native.hist_above(x, t)
    assert got is not None
    np.testing.assert_array_equal(got, [np.count_nonzero(x >= v) for v in t])


@st.composite
def near_edges(draw: Any) -> tuple[np.ndarray[Any, Any], int, tuple[Any, Any]]:
    """Data on, and a few ulps either side of, every edge of n equal bins over a range that is
    wide, narrow or a few ulps wide, on small or large offsets (where numpy's rounding moves
    values across edges), plus values outside it, NaN, infinities and -0.0."""
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    n = draw(st.sampled_from([1, 2, 3, 10, 17, 32, 33, 100, 1000, 4096]))
    lo = dtype.type(draw(st.sampled_from([0.0, -0.0, -1.0, 0.1, 100.0, -3e3, 1e6, 1.5e7])))
    width = draw(st.sampled_from(["ulps", "narrow", "wide"]))
    if width == "ulps":
        hi = lo
        for _ in range(draw(st.integers(1, 40))):
            hi = np.nextafter(hi, dtype.type(np.inf))
    else:
        hi = dtype.type(lo + dtype.type(1e-3 if width == "narrow" else 40.0))
    assume(hi > lo)
    typed = draw(st.booleans())  # numpy scalars of the data's dtype, or Python floats
    rng_ = (lo, hi) if typed else (float(lo), float(hi))
    try:
        edges = np.histogram_bin_edges(np.zeros(0, dtype), n, range=rng_)
    except ValueError:  # too many bins for the range: numpy refuses, as bigarr does
        assume(False)
    e = edges.astype(dtype)
    seed = draw(st.integers(0, 99))
    inside = lo + (hi - lo) * np.random.default_rng(seed).random(300).astype(dtype)
    with np.errstate(over="ignore"):
        special = np.array(_SPECIAL, dtype=dtype)
    x = np.concatenate([_ulps(e[np.isfinite(e)], 2), inside.astype(dtype), special])
    np.random.default_rng(seed).shuffle(x)
    return x, n, rng_


@needs_native
@deep
@given(near_edges())
def test_equal_bins_by_every_native_path_are_numpys_next_to_each_edge(case: Any) -> None:
    x, n, rng_ = case
    want, edges = np.histogram(x, n, range=rng_)
    first, last = rng_
    got = tiles.uniform_counts(x, first, last, n, edges, 1 << 16)
    np.testing.assert_array_equal(got, want)
    # each native path that applies, not only the one uniform_counts picks
    upper = np.append(edges[1:n], np.inf).astype(edges.dtype)
    denom = tiles._unsigned_subtract(last, first)
    within = tiles._estimate_within_one(first, last, n, edges)
    margin = tiles._sure_margin(first, last, n, edges)
    for fast, by_edges in [(False, False)] + ([(True, False), (True, True)] if within else []):
        counts = np.zeros(n, dtype=np.int64)
        if native.hist_uniform(x, first, last, denom, n, edges, upper, counts, fast=fast,
                               by_edges=by_edges, margin=margin):
            np.testing.assert_array_equal(counts, want)


def test_bins_a_few_subnormal_steps_wide_are_numpys() -> None:
    # float32 edges over 0 .. 20 subnormal steps, 17 bins, coincide in places: rounding there
    # is absolute, numpy's estimate is more than one bin off, and counting by the edges gave
    # other counts (before the bound on rounding required bins far wider than the smallest
    # normal number)
    lo = hi = np.float32(0.0)
    for _ in range(20):
        hi = np.nextafter(hi, np.float32(np.inf))
    e = np.histogram_bin_edges(np.zeros(0, np.float32), 17, range=(lo, hi))
    x = np.concatenate([_ulps(e, 1), np.arange(21, dtype=np.int32).view(np.float32)])
    x = np.tile(x, 4000)  # past the size numpy's own histogram is called for directly
    want = np.histogram(x, 17, range=(lo, hi))
    got = bigarr.histogram(x, 17, range=(lo, hi), budget="1MiB", progress=False)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@needs_native
def test_few_equal_bins_count_by_thresholds_and_more_by_index(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 10 bins (numpy's default): one compare-and-count pass, no index per element; 100 bins:
    # the native index kernel (the rows it fills are uint32, flushed to int64 counts)
    x = (np.random.default_rng(5).standard_normal(50_000) * 3 + 100).astype(np.float32)
    above: list[int] = []
    real = native.hist_above

    def spy(flat: Any, thresholds: Any) -> Any:
        above.append(thresholds.size)
        return real(flat, thresholds)

    monkeypatch.setattr(native, "hist_above", spy)
    for bins in (10, 100):
        got = bigarr.histogram(x[:, None].repeat(4, axis=1), bins, range=(80.0, 120.0),
                               budget="1MiB", progress=False)
        want = np.histogram(x[:, None].repeat(4, axis=1), bins, range=(80.0, 120.0))
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert above and set(above) == {11}  # only the 10-bin run, with its 11 thresholds


@needs_native
def test_histogram_of_a_file_takes_the_native_path(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal(300_000) * 7).astype(np.float32)
    path = tmp_path / "h.npy"
    arr = bigarr.create(path, x.shape, x.dtype)
    arr[...] = x
    arr.close()
    calls: list[int] = []
    real = native.hist_uniform

    def spy(*args: Any, **kwargs: Any) -> bool:
        took = real(*args, **kwargs)
        calls.append(int(took))
        return took

    monkeypatch.setattr(native, "hist_uniform", spy)
    for bins, rng_ in ((10, None), (251, None), (64, (-3.0, 5.5))):
        got = bigarr.histogram(path, bins, range=rng_, budget="1MiB", progress=False)
        want = np.histogram(x, bins, range=rng_)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert calls and all(calls)


@needs_native
def test_a_library_built_from_other_source_is_never_called(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A stale build (new Python code, old extension) could take other arguments: refused.
    assert native._load()[0] is not None
    monkeypatch.setattr(native, "ABI", native.ABI + 1)
    assert native._load() == (None, None)  # neither build


@needs_native
@deep
@given(st.sampled_from(["bool", "int8", "uint16", "int32", "int64", "float32", "float64"]),
       st.integers(1, 50), st.sampled_from([8, 31, 32, 33, 65]), st.integers(0, 9))
def test_nonzero_counts_per_column_are_numpys(dtype: str, rows: int, cols: int,
                                              seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.integers(-1, 2, size=(rows, cols)).astype(dtype)
    if x.dtype.kind == "f":
        x[rng.random(x.shape) < 0.2] = -0.0
        x[rng.random(x.shape) < 0.1] = np.nan
    got = native.count_rows(x)
    assert got is not None
    np.testing.assert_array_equal(got, np.count_nonzero(x, axis=0))


@needs_native
@deep
@given(st.sampled_from([np.float32, np.float64]), st.integers(1, 60),
       st.sampled_from([8, 9, 32, 33, 70]), st.booleans(), st.integers(0, 99))
def test_arg_extremes_per_column_are_numpys_first_occurrence(dtype: Any, rows: int, cols: int,
                                                             largest: bool, seed: int) -> None:
    # few distinct values: ties (the first wins) and NaN (the first NaN wins) everywhere
    pool = np.array([0.0, -0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, np.nan], dtype=dtype)
    x = np.random.default_rng(seed).choice(pool, size=(rows, cols))
    found = native.arg_rows(x, largest)
    assert found is not None
    value, index = found
    want = (np.argmax if largest else np.argmin)(x, axis=0)
    np.testing.assert_array_equal(index, want)
    np.testing.assert_array_equal(value, x[want, np.arange(cols)])


@needs_native
@deep
@given(st.sampled_from([np.float32, np.float64]), st.integers(1, 80), st.integers(0, 99))
def test_both_extremes_in_one_pass_are_numpys(dtype: Any, size: int, seed: int) -> None:
    pool = np.array([0.0, -0.0, 1.0, -1.0, 2.5, 7.0, np.inf, -np.inf, np.nan], dtype=dtype)
    rng = np.random.default_rng(seed)
    x = rng.choice(pool if seed % 2 else pool[:-1], size=size)  # half the cases without NaN
    both = native.min_max(x)
    assert both is not None
    np.testing.assert_array_equal(both[0], x.min())
    np.testing.assert_array_equal(both[1], x.max())


@pytest.mark.parametrize("dtype", [">f4", ">f8", "<f4", "<f8"])
def test_nonzero_counts_of_byte_swapped_floats_treat_minus_zero_as_zero(dtype: str) -> None:
    # -0.0 byte-swapped is a denormal when read in native order: never counted as nonzero
    x = np.zeros((5, 16), dtype=dtype)
    x[1, 3], x[2, 5], x[3, 6] = -0.0, np.nan, 1.5
    want = np.count_nonzero(x, axis=0)
    got = native.count_rows(x)
    if got is not None:
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(bigarr.count_nonzero(x, axis=0, progress=False), want)


@pytest.mark.parametrize("rng", [(0.0, 462.11903732807633), (0.1, 2.0)])
def test_few_bins_of_float32_data_with_a_float64_range_not_exact_in_float32(
        rng: tuple[float, float]) -> None:
    # float32 values just outside a float64 range that float32 cannot hold: not counted
    lo, hi = np.float64(rng[0]), np.float64(rng[1])
    x = np.array([lo, hi, 1.0], dtype=np.float32)
    x = np.concatenate([x, np.nextafter(x, np.float32(np.inf)), np.nextafter(x, np.float32(0))])
    for bins in (1, 3, 16, 40):
        want = np.histogram(x, bins, range=(lo, hi))
        got = bigarr.histogram(x, bins, range=(lo, hi), progress=False)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_variance_that_overflows_is_numpys_inf_not_nan(dtype: Any) -> None:
    # S2 and S1 * mean both overflow to inf: their difference is NaN, numpy's variance is inf
    big = 3e38 if dtype == np.float32 else 1e300
    col = np.array([big, -big, 1.0, 1.5e154 if dtype == np.float64 else 2.0], dtype=dtype)
    x = np.tile(col[:, None], (1, 16))  # columns (per-column kernel) and rows (flat kernel)
    with np.errstate(all="ignore"):
        want = np.var(x.astype(np.float64), axis=0).astype(dtype)
        for axis, block in ((0, x), (1, np.ascontiguousarray(x.T))):
            np.testing.assert_array_equal(bigarr.var(block, axis=axis, progress=False), want)
        got = native.var_blocks(x, (0,))
    if got is not None and dtype == np.float64:  # float32's squares fit in float64
        assert np.isinf(got[2]).all()


@pytest.mark.parametrize("rng", [(0.0, 1e-308), (-1e-310, 2e-310)])
@pytest.mark.parametrize("bins", [3, 216])
def test_equal_bins_of_a_subnormal_range_are_numpys(rng: tuple[float, float], bins: int) -> None:
    # bins / (last - first) overflows to inf: the fast estimate's scale must not be used
    e = np.histogram_bin_edges(np.zeros(0), bins, range=rng)
    x = np.concatenate([e, np.nextafter(e, 1), np.nextafter(e, -1)])
    want = np.histogram(x, bins, range=rng)
    got = bigarr.histogram(x, bins, range=rng, progress=False)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_histogram_kernel_refuses_bins_its_arrays_do_not_hold() -> None:
    # n = 0 made the kernel clip a bin to -1 and write before its counts; short edges were read
    # past their end
    x = np.linspace(0, 1, 50)
    e = np.linspace(0.0, 1.0, 5)
    up = np.append(e[1:4], np.inf)
    counts = np.zeros(5, dtype=np.int64)
    assert not native.hist_uniform(x, 0.0, 1.0, 1.0, 0, e, up, counts)
    assert not native.hist_uniform(x, 0.0, 1.0, 1.0, 40, e, up, counts)
    assert not counts.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_misaligned_blocks_are_never_passed_to_c(dtype: Any) -> None:
    # a C pointer to a misaligned element is undefined behaviour (the compiler may assume an
    # element's alignment): such blocks take numpy's kernels, with numpy's answers
    buf = bytearray(8 * 40 * np.dtype(dtype).itemsize + 8)
    x = np.frombuffer(buf, dtype=dtype, count=8 * 40, offset=1).reshape(40, 8)
    assert x.flags.c_contiguous and not x.flags.aligned
    assert native.count_rows(x) is None
    if x.dtype.kind == "f":
        assert native.sum_blocks(x, (0,)) is None and native.var_blocks(x, (0,)) is None
        assert native.arg_rows(x, True) is None and native.min_max(x.ravel()) is None
    np.testing.assert_array_equal(bigarr.count_nonzero(x, axis=0, progress=False),
                                  np.count_nonzero(x, axis=0))
    np.testing.assert_array_equal(bigarr.sum(x, axis=0, progress=False),
                                  np.sum(x, axis=0, dtype=None if x.dtype.kind == "i" else float))


@needs_native
@pytest.mark.slow
def test_variance_of_few_columns_stays_within_its_budget(
        tmp_path: Path, peak_rss: Callable[..., list[int]]) -> None:
    # (N, 4) float64 along axis 0: the native kernel used to decline fewer than MIN_COLUMNS
    # columns while Var reserved no scratch for numpy's kernel (203 MiB more at budget 32 MiB)
    path = tmp_path / "c4.npy"
    arr = bigarr.create(path, (12_500_000, 4), np.float64)
    for i in range(0, arr.shape[0], 1_000_000):
        arr[i:i + 1_000_000] = 1.5
    arr.close()
    assert _var_growth(peak_rss, path, "0") <= (32 + 64) * 2**20


def test_variance_over_axes_the_kernel_cannot_take_keeps_its_scratch_bounded(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # axis=(0, 2) is not one run of axes: the native kernel declines, so numpy's kernel runs,
    # and it must get tile-sized groups of leaves (and the plan its scratch), not whole views
    from bigarr._compute import partials as _partials

    assert not _partials.Var(0).scratch_free(np.dtype(np.float64), (0, 2))
    sizes: list[int] = []
    real = _partials.Var.partial

    def recording(self: Any, block: Any, *args: Any) -> Any:
        sizes.append(block.size)
        return real(self, block, *args)

    monkeypatch.setattr(_partials.Var, "partial", recording)
    x = np.random.default_rng(6).normal(size=(40_000, 5, 5))
    got = bigarr.var(x, axis=(0, 2), budget="8MiB", threads=1, progress=False)
    np.testing.assert_allclose(got, np.var(x, axis=(0, 2)), rtol=1e-12)
    assert max(sizes) <= _partials.tile_elements()


@needs_native
@pytest.mark.slow
def test_variance_over_axes_the_kernel_cannot_take_stays_within_its_budget(
        tmp_path: Path, peak_rss: Callable[..., list[int]]) -> None:
    # (2M, 5, 5) float64 over axis=(0, 2): was 199 MiB of growth at a 32 MiB budget
    path = tmp_path / "c55.npy"
    arr = bigarr.create(path, (2_000_000, 5, 5), np.float64)
    for i in range(0, arr.shape[0], 200_000):
        arr[i:i + 200_000] = 1.5
    arr.close()
    assert _var_growth(peak_rss, path, "(0, 2)") <= (32 + 64) * 2**20


def _var_growth(peak_rss: Callable[..., list[int]], path: Path, axis: str) -> int:
    """Peak RSS growth (VmHWM over the RSS before) of ``bigarr.var(path, axis=...)`` at a
    32 MiB budget, in a fresh interpreter."""
    return peak_rss("import bigarr", f"""
        bigarr.var(sys.argv[1], axis={axis}, budget='32MiB', threads=1, progress=False)
    """, args=(str(path),))[0]
