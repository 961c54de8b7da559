"""Chunked reductions agree with numpy on the same data, whatever the chunking."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigarr
from bigarr._compute import native as _native
from bigarr._compute import partials as _partials
from bigarr._compute import reductions as _reductions
from bigarr._plan import budget as _budget
from bigarr.errors import (
    ArgumentValueError,
    AxisError,
    BigArrError,
    BudgetError,
    ShapeError,
    UnsupportedError,
)

FUNCS = ["sum", "mean", "var", "std", "min", "max", "argmin", "argmax", "count_nonzero"]


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let tiny budgets plan page-sized chunks and sub-blocks, so small arrays get many."""
    monkeypatch.setattr(_budget, "MIN_CHUNK_BYTES", 4096)
    monkeypatch.setattr(_partials, "SUB_BLOCK_BYTES", 4 << 10)
    monkeypatch.setattr(_reductions, "SCRATCH_BYTES", 16 << 10)


def _data(shape: tuple[int, ...], dtype: str, seed: int, order: str) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        x = rng.normal(3.0, 10.0, size=shape)
        x[rng.random(shape) < 0.05] = 0  # some zeros for count_nonzero
    else:
        x = rng.integers(-50, 50, size=shape)
    return np.asarray(x.astype(dtype), order=order)


def _stored(x: np.ndarray[Any, Any], where: str, tmp_path: Path) -> Any:
    if where == "memory":
        return x
    order = "F" if x.flags.f_contiguous and not x.flags.c_contiguous else "C"
    path = tmp_path / f"x-{where}.npy"
    if where == "numpy":  # numpy's header: the data does not start on a page
        np.save(path, x)
        return bigarr.open(path)
    arr = bigarr.create(path, x.shape, x.dtype, order=order, overwrite=True)
    arr[...] = x
    arr.flush()
    return arr


def _check(got: Any, expected: Any, exact: bool) -> None:
    assert np.shape(got) == np.shape(expected)
    assert np.asarray(got).dtype == np.asarray(expected).dtype
    if exact:
        np.testing.assert_array_equal(got, expected)
    else:
        np.testing.assert_allclose(got, expected, rtol=2e-5, atol=1e-4)


def _within(fn: Any, *args: Any, budget: str, **kwargs: Any) -> Any:
    """``fn`` at ``budget``, or, when it is refused, at the budget the refusal asks for.

    Changed by design: the budget now counts partial results and temporaries too, so the
    tiniest budgets (64 KiB, two threads) are refused for a mean over a long kept axis; the
    refusal must name a budget that works.
    """
    try:
        return fn(*args, budget=budget, **kwargs)
    except BudgetError as exc:
        need = re.search(r"Raise budget= to at least (\d+)", str(exc))
        assert need is not None, str(exc)
        return fn(*args, budget=int(need.group(1)), **kwargs)


shapes = st.one_of(
    st.tuples(st.integers(1, 6000)),
    st.tuples(st.integers(1, 700), st.integers(1, 40)),
    st.tuples(st.integers(1, 60), st.integers(1, 9), st.integers(1, 11)),
    st.sampled_from([(1,), (1, 1), (1, 3000), (3000, 1), (1, 2, 3), (4097,), (1025, 4)]),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=shapes,
    dtype=st.sampled_from(["float32", "float64", "int32", "int16"]),
    order=st.sampled_from(["C", "F"]),
    where=st.sampled_from(["memory", "bigarr", "numpy"]),
    seed=st.integers(0, 2**16),
    threads=st.sampled_from([1, 2]),
    budget=st.sampled_from(["64KiB", "200KiB", "4MiB"]),
)
def test_reductions_match_numpy(
    tmp_path: Path, shape: tuple[int, ...], dtype: str, order: str, where: str, seed: int,
    threads: int, budget: str,
) -> None:
    x = _data(shape, dtype, seed, order)
    a = _stored(x, where, tmp_path)
    exact_kind = x.dtype.kind in "iu"
    for axis in sorted({None, 0, x.ndim - 1}, key=str):
        for name in FUNCS:
            got = _within(getattr(bigarr, name), a, axis=axis, budget=budget, threads=threads,
                          progress=False)
            expected = getattr(np, name)(x, axis=axis)
            exact = name in ("min", "max", "argmin", "argmax", "count_nonzero") or (
                exact_kind and name == "sum")
            _check(got, expected, exact)
    counts, edges = _within(bigarr.histogram, a, bins=7, budget=budget, threads=threads,
                            progress=False)
    want_counts, want_edges = np.histogram(x, bins=7)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(edges, want_edges)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0), (0, 0, 3)])
def test_zero_size_arrays_behave_like_numpy(shape: tuple[int, ...]) -> None:
    x = np.zeros(shape, np.float32)
    for name in ["sum", "count_nonzero"]:
        _check(getattr(bigarr, name)(x, progress=False), getattr(np, name)(x), True)
    with pytest.raises(ValueError):
        np.min(x)
    with pytest.raises(ValueError):
        bigarr.min(x, progress=False)
    if x.ndim == 2:
        for name in ["sum", "min", "max", "argmin", "argmax"]:
            for axis in (0, 1):
                try:
                    expected = getattr(np, name)(x, axis=axis)
                except ValueError:
                    with pytest.raises(ValueError):
                        getattr(bigarr, name)(x, axis=axis, progress=False)
                else:
                    _check(getattr(bigarr, name)(x, axis=axis, progress=False), expected, True)


def test_zero_rows_in_a_file(tmp_path: Path) -> None:
    a = bigarr.create(tmp_path / "empty.npy", (0, 4), np.float64)
    _check(bigarr.sum(a, axis=0, progress=False), np.zeros(4), True)
    with pytest.warns(RuntimeWarning):
        assert np.isnan(bigarr.mean(a, progress=False))


def test_nan_and_ties_resolve_like_numpy_across_chunks() -> None:
    x = np.zeros(50_000, np.float64)
    x[[10, 30_000]] = -5.0  # a tie in two different chunks: the first occurrence wins
    x[[20, 40_000]] = 7.0
    opts: dict[str, Any] = {"budget": "64KiB", "threads": 2, "progress": False}
    assert bigarr.argmin(x, **opts) == np.argmin(x) == 10
    assert bigarr.argmax(x, **opts) == np.argmax(x) == 20
    x[45_000] = np.nan  # a NaN in a late chunk wins everything
    x[44_000] = np.nan
    for name in ["argmin", "argmax"]:
        assert getattr(bigarr, name)(x, **opts) == getattr(np, name)(x) == 44_000
    assert np.isnan(bigarr.min(x, **opts)) and np.isnan(bigarr.max(x, **opts))
    m = x.reshape(500, 100)
    for name in ["argmin", "argmax", "min", "max"]:
        for axis in (0, 1):
            np.testing.assert_array_equal(getattr(bigarr, name)(m, axis=axis, **opts),
                                          getattr(np, name)(m, axis=axis))


def _exact_var(values: np.ndarray[Any, Any], ddof: int = 0) -> float:
    items = [Fraction(v) for v in values.tolist()]
    mean = sum(items, Fraction(0)) / len(items)
    return float(sum(((v - mean) ** 2 for v in items), Fraction(0)) / (len(items) - ddof))


def test_variance_merge_is_numerically_sound() -> None:
    # A large offset with small spread: the textbook E[x^2] - E[x]^2 loses every digit here,
    # and merging absolute block means would lose about half of them.
    rng = np.random.default_rng(7)
    x = 1e9 + rng.normal(0, 1e-3, size=40_000)
    exact = _exact_var(x)
    got = bigarr.var(x, budget="64KiB", progress=False)
    assert abs(got - exact) <= 1e-12 * exact
    naive = np.mean(x * x) - np.mean(x) ** 2
    assert abs(naive - exact) > 1e-3 * exact  # the check can tell a bad merge apart
    cols = x.reshape(400, 100)
    std = bigarr.std(cols, axis=0, ddof=1, budget="64KiB", progress=False)
    for j in (0, 37, 99):
        assert abs(std[j] - _exact_var(cols[:, j], ddof=1) ** 0.5) <= 1e-12 * std[j]


def test_keepdims_dtype_and_tuple_axes() -> None:
    x = np.arange(4 * 5 * 6, dtype=np.int32).reshape(4, 5, 6)
    opts: dict[str, Any] = {"budget": "64KiB", "progress": False}
    _check(bigarr.sum(x, axis=(0, 2), keepdims=True, **opts),
           np.sum(x, axis=(0, 2), keepdims=True), True)
    _check(bigarr.sum(x, dtype=np.float32, **opts), np.sum(x, dtype=np.float32), True)
    _check(bigarr.mean(x, axis=1, **opts), np.mean(x, axis=1), False)
    _check(bigarr.argmax(x, axis=2, keepdims=True, **opts),
           np.argmax(x, axis=2, keepdims=True), True)
    with pytest.raises(np.exceptions.AxisError):
        bigarr.sum(x, axis=3, **opts)


def test_paths_are_accepted(tmp_path: Path) -> None:
    x = np.arange(10_000, dtype=np.float64).reshape(100, 100)
    np.save(tmp_path / "x.npy", x)
    assert bigarr.sum(tmp_path / "x.npy", progress=False) == x.sum()
    assert bigarr.count_nonzero(str(tmp_path / "x.npy"), progress=False) == 9999


def test_histogram_options_match_numpy() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3000, 7)).astype(np.float32)
    w = rng.random(size=(3000, 7))
    # 256 KiB (was 64 KiB): with bin edges given np.histogram sorts each chunk, and the
    # budget now counts those temporaries (changed by design).
    opts: dict[str, Any] = {"budget": "256KiB", "threads": 2, "progress": False}
    for kwargs in [{"bins": 13}, {"bins": 5, "range": (-1, 1)}, {"bins": [-3, -1, 0, 0.5, 4]},
                   {"bins": 9, "density": True}, {"bins": 6, "weights": w}]:
        got = bigarr.histogram(x, **kwargs, **opts)
        want = np.histogram(x, **kwargs)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(UnsupportedError, match="auto"):
        bigarr.histogram(x, bins="auto", **opts)
    y = np.full(100, 2.0)  # all equal: numpy widens the range by 0.5 each side
    np.testing.assert_array_equal(bigarr.histogram(y, bins=3, progress=False)[1],
                                  np.histogram(y, bins=3)[1])


def test_reduce_blocks_folds_in_chunk_order(tmp_path: Path) -> None:
    x = np.arange(20_000, dtype=np.int64)
    firsts = bigarr.reduce_blocks(lambda b: [int(b[0])], lambda p, q: p + q, x,
                                  budget="64KiB", threads=2, progress=False)
    assert len(firsts) > 3 and firsts == sorted(firsts) and firsts[0] == 0
    y = np.arange(20_000, dtype=np.float64)[::-1].copy()
    dot = bigarr.reduce_blocks(lambda a, b: float(a @ b), lambda p, q: p + q, x, y,
                               budget="64KiB", progress=False)
    assert dot == pytest.approx(float(x @ y))
    with pytest.raises(ValueError, match="leading length") as info:
        bigarr.reduce_blocks(np.sum, np.add, x, y[:10], progress=False)
    assert isinstance(info.value, bigarr.errors.ShapeError)
    with pytest.raises(bigarr.errors.ShapeError, match="distinct"):
        bigarr.sum(x.reshape(100, 200), axis=(0, -2), progress=False)
    assert bigarr.reduce_blocks(len, lambda p, q: p + q, x[:0], progress=False) == 0


@pytest.mark.parametrize("native", [False, True])
def test_impossible_budget_is_refused_with_both_numbers(monkeypatch: pytest.MonkeyPatch,
                                                        native: bool) -> None:
    # numpy's variance kernel needs scratch per thread; the native one needs none
    if not native:
        monkeypatch.setattr(_native, "lib", None)
    elif not _native.available():
        pytest.skip("the native kernels are not built")
    x = np.ones(1000)
    with pytest.raises(BudgetError) as info:
        bigarr.var(x, budget="10KiB", threads=2, progress=False)
    message = str(info.value)
    assert "10240 bytes" in message  # the budget
    scratch = 0 if native else _reductions.SCRATCH_BYTES
    plan = _budget.plan_memory("1GiB", threads=2, prefetch=1, streams=1,
                               scratch_bytes=scratch, min_chunk=4096)
    need = 4096 * plan.in_flight + scratch * 2
    # What the plan needs: chunks and scratch, plus (by design, since the budget counts
    # everything the operation adds) a few hundred bytes of partial results.
    quoted = int(re.search(r"needs at least (\d+) bytes", message).group(1))  # type: ignore[union-attr]
    assert need < quoted < need + 1024
    assert "partial results" in message


def test_progress_events_cover_the_array() -> None:
    events: list[Any] = []
    x = np.ones((3000, 10), np.float32)
    bigarr.sum(x, budget="64KiB", progress=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("chunk") > 1
    assert events[-2].done_bytes == events[-2].total_bytes == x.nbytes


def test_float16_mean_accumulates_in_float32_like_numpy() -> None:
    # Regression: chunk sums of float16 data were taken in float16 and overflowed to inf.
    x = np.full((4, 100_000), 1.0, np.float16)
    for axis in (None, 1):
        _check(bigarr.mean(x, axis=axis, budget="4MiB", progress=False),
               np.mean(x, axis=axis), True)


def test_sub_blocks_bound_temporaries_when_one_slab_is_larger(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression: a block was cut along one axis only, so a slab larger than the sub-block
    # limit (a long row) became one whole float64 temporary, past the planned scratch.
    # (Leaves are summarised a tile of several leaves at a time: the bound is the tile.) The
    # native kernel has no temporaries and takes whole views; this is about numpy's.
    monkeypatch.setattr(_native, "lib", None)
    limit = _partials.tile_elements()
    sizes: list[int] = []
    partial = _partials.Var.partial

    def recording(self: Any, block: Any, *args: Any) -> Any:
        sizes.append(block.size)
        return partial(self, block, *args)

    monkeypatch.setattr(_partials.Var, "partial", recording)
    x = np.random.default_rng(5).normal(size=(3, 10 * limit))
    for axis in (None, 0, 1):
        sizes.clear()
        got = bigarr.var(x, axis=axis, budget="4MiB", threads=1, progress=False)
        _check(got, np.var(x, axis=axis), False)
        assert max(sizes) <= limit


def test_histogram_finds_its_range_in_one_pass() -> None:
    # Regression: the range came from a min pass and then a max pass: the data was read three
    # times where two passes suffice.
    x = np.random.default_rng(6).normal(size=(3000, 7))
    events: list[Any] = []
    counts, edges = bigarr.histogram(x, bins=11, budget="64KiB", progress=events.append)
    assert [e.kind for e in events].count("start") == 2
    want_counts, want_edges = np.histogram(x, bins=11)
    np.testing.assert_array_equal(counts, want_counts)
    np.testing.assert_array_equal(edges, want_edges)


def test_histogram_names_its_two_passes_and_takes_one_with_a_range() -> None:
    # The documented 2-pass plan (numpy's edges need the data's extremes), visible in progress
    # events; with range= given, one pass.
    from bigarr._compute.histogram import PASSES

    x = np.random.default_rng(7).normal(size=(3000, 7))
    events: list[Any] = []
    bigarr.histogram(x, bins=10, budget="64KiB", progress=events.append)
    assert [e.desc for e in events if e.kind == "start"] == list(PASSES)
    events.clear()
    bigarr.histogram(x, bins=10, range=(-1.0, 1.0), budget="64KiB", progress=events.append)
    assert [e.desc for e in events if e.kind == "start"] == ["histogram"]


def test_wrong_calls_raise_argument_errors() -> None:
    x = np.arange(12.0).reshape(3, 4)
    for call in (lambda: bigarr.sum(x, axis="rows"), lambda: bigarr.argmax(x, axis=(0, 1)),
                 lambda: bigarr.reduce_blocks(np.sum, np.add),
                 lambda: bigarr.map_blocks(np.negative, out="never.npy")):
        with pytest.raises(bigarr.errors.ArgumentError) as info:
            call()  # type: ignore[no-untyped-call]
        assert isinstance(info.value, TypeError)


@pytest.mark.parametrize(("fast", "sub_blocked"), [(True, True), (False, True), (False, False)])
def test_argmax_along_axis_0_makes_no_chunk_sized_copy(monkeypatch: pytest.MonkeyPatch,
                                                       fast: bool, sub_blocked: bool) -> None:
    # Regression: numpy's argmax along any axis but the last copies its input, so each chunk
    # was copied whole (argmax(axis=0) peaked at 456 MiB with a 256 MiB budget). Arg now works
    # through tile extremes (fast) or in sub-blocks; with both switched off (the old kernel)
    # the copy is seen again.
    import tracemalloc

    monkeypatch.setattr(_partials, "SUB_BLOCK_BYTES", 256 << 10)
    monkeypatch.setattr(_partials.Arg, "sub_blocked", sub_blocked)
    if not fast:
        monkeypatch.setattr(_partials, "FAST_KINDS", "")
    x = np.random.default_rng(0).random((100_000, 32), dtype=np.float32)  # 12 MiB, one chunk
    tracemalloc.start()
    try:
        got = bigarr.argmax(x, axis=0, budget="256MiB", threads=1, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, x.argmax(axis=0))
    if fast or sub_blocked:
        assert peak < 4 << 20, peak
    else:
        assert peak > x.nbytes // 2, peak


@pytest.mark.parametrize("name", ["sum", "mean", "std", "var", "min", "max", "argmax",
                                  "count_nonzero"])
@pytest.mark.parametrize("axis", [2, -3, (0, 2)])
def test_axis_out_of_range_is_a_bigarr_axis_error(name: str, axis: Any) -> None:
    # regression: numpy's AxisError escaped, not a BigArrError
    x = np.arange(12.0).reshape(3, 4)
    if name == "argmax" and isinstance(axis, tuple):
        return
    with pytest.raises(np.exceptions.AxisError) as want:
        getattr(np, name)(x, axis=axis)
    with pytest.raises(AxisError) as info:
        getattr(bigarr, name)(x, axis=axis, progress=False)
    err = info.value
    assert isinstance(err, BigArrError) and isinstance(err, np.exceptions.AxisError)
    assert isinstance(err, ValueError) and isinstance(err, IndexError)
    assert str(err) == str(want.value)


@pytest.mark.parametrize("kwargs", [
    {"bins": 0}, {"bins": -1}, {"bins": [0, 1, 0.5]}, {"bins": [[0, 1]]},
    {"range": (0, np.nan)}, {"range": (-np.inf, 1)}, {"range": (1, 0)},
])
def test_histogram_bad_bins_or_range_is_a_bigarr_value_error_before_reading(
        tmp_path: Path, kwargs: dict[str, Any]) -> None:
    # regression: numpy's bare ValueError escaped, after the data had been read
    x = np.arange(50_000.0)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError) as want:
        np.histogram(x, **kwargs)
    events: list[Any] = []
    with pytest.raises(ArgumentValueError) as info:
        bigarr.histogram(tmp_path / "x.npy", **kwargs, budget="256KiB", progress=events.append)
    assert isinstance(info.value, BigArrError) and isinstance(info.value, ValueError)
    assert str(want.value) in str(info.value)  # numpy's meaning
    assert events == []  # refused before any data was read


@pytest.mark.parametrize("where", ["memory", "file"])
def test_histogram_weights_of_another_shape_is_a_bigarr_value_error(
        tmp_path: Path, where: str) -> None:
    # regression: numpy's bare ValueError escaped from a chunk (weights (n, 1) for data (n,))
    x = np.arange(50_000.0)
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(ValueError) as want:
        np.histogram(x, weights=np.ones((x.size, 1)))
    src: Any = x if where == "memory" else tmp_path / "x.npy"
    with pytest.raises(ShapeError) as info:
        bigarr.histogram(src, weights=np.ones((x.size, 1)), budget="256KiB", progress=False)
    assert isinstance(info.value, ValueError) and str(want.value) in str(info.value)


def test_histogram_of_a_range_wider_than_the_largest_float_is_a_bigarr_error(
        tmp_path: Path) -> None:
    # one bin over data at +-1e308: the width overflows; numpy fails with a bare IndexError
    data = np.array([-1e308, 1e308] * 10)
    with pytest.raises(IndexError):
        np.histogram(data, bins=1)  # numpy itself fails here
    stored = _stored(data, "bigarr", tmp_path)
    for source in (data, stored):  # numpy's own path (in memory), and the streamed one
        with pytest.raises(ArgumentValueError, match="wider"):
            bigarr.histogram(source, bins=1, budget="256KiB", progress=False)


@pytest.mark.parametrize("data", [
    np.array([0.0, np.nan, 1.0] * 10_000), np.array([0.0, np.inf, 1.0] * 10_000),
    np.array([-np.inf, 1.0] * 10_000), np.array([-65504, 0, 65504] * 10_000, np.float16),
    np.array([0.0, np.nan]),
])
def test_histogram_of_data_without_finite_bins_is_a_bigarr_value_error(
        data: np.ndarray[Any, Any]) -> None:
    # regression: NaN/inf data (no range) and float16 spanning +-65504 raised a bare ValueError
    with pytest.raises(ValueError) as want, np.errstate(all="ignore"):
        np.histogram(data)
    with pytest.raises(ArgumentValueError) as info:
        bigarr.histogram(data, budget="256KiB", progress=False)
    assert isinstance(info.value, BigArrError) and isinstance(info.value, ValueError)
    assert str(want.value).split(" of ")[-1].split(".")[0] in str(info.value)


def test_histogram_whose_numpy_edges_overflow_is_numpys(tmp_path: Path) -> None:
    # a float32 range near float32's largest number: numpy's own edges hold a NaN (and numpy
    # still counts); bigarr indexed with the NaN edge and raised a bare IndexError
    data = np.random.default_rng(8).standard_normal(50_000) * 1e38
    rng = (np.float32(-3e38), np.float32(3e38))
    with np.errstate(all="ignore"):
        want = np.histogram(data, 1, range=rng)
    got = bigarr.histogram(_stored(data, "bigarr", tmp_path), 1, range=rng, budget="256KiB",
                           progress=False)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


@pytest.mark.parametrize("name", ["sum", "mean", "max", "std", "argmax", "histogram"])
def test_python_objects_are_a_dtype_error_not_a_bare_type_error(name: str) -> None:
    # regression: numpy's bare TypeError (or an int() of an object) escaped
    with pytest.raises(bigarr.errors.DtypeError) as info:
        getattr(bigarr, name)(np.array([object(), object()]))
    assert isinstance(info.value, TypeError)
