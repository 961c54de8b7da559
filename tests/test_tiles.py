"""The fast exact kernels of ``_compute/tiles.py`` against numpy, under hypothesis.

Small tiles and few columns, so that blocks of a few hundred elements have many tiles, wide
rows that do not divide the rows, ties across tiles, and NaN, inf and -0.0 anywhere. Run it
deeper with ``ORACLE_EXAMPLES=1000``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bigarr
from bigarr._compute import partials as _partials
from bigarr._compute import tiles

#: Examples per property (deeper: ``ORACLE_EXAMPLES=1000``, as for ``test_oracle.py``).
deep = settings(max_examples=int(os.environ.get("ORACLE_EXAMPLES", "40")), deadline=None)

DTYPES = [np.dtype(d) for d in ("bool", "int8", "uint16", "int64", "float16", "float32",
                                "float64")]


@st.composite
def blocks(draw: Any) -> np.ndarray[Any, Any]:
    dtype = draw(st.sampled_from(DTYPES))
    rows = draw(st.integers(1, 300))
    rest = draw(st.sampled_from([(), (1,), (3,), (5,), (2, 3)]))
    if dtype.kind == "f":
        # few distinct values, so ties (across tiles, too) are common
        values = st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, np.inf, -np.inf, np.nan])
    elif dtype.kind == "b":
        values = st.booleans()
    else:
        info = np.iinfo(dtype)
        values = st.sampled_from([int(info.min), -1 if info.min < 0 else 0, 0, 1, 7,
                                  int(info.max)])
    return draw(hnp.arrays(dtype, (rows, *rest), elements=values))


tile_sizes = st.sampled_from([1, 8, 24, 64, 4096])


@deep
@given(blocks(), tile_sizes, st.booleans())
def test_arg_rows_is_numpys_first_occurrence(block: np.ndarray[Any, Any], tile: int,
                                             largest: bool) -> None:
    value, index = tiles.arg_rows(block, largest, tile)
    want = (np.argmax if largest else np.argmin)(block, axis=0)
    np.testing.assert_array_equal(index, want)
    np.testing.assert_array_equal(value, np.take_along_axis(block, want[None], axis=0)[0])


@deep
@given(blocks(), tile_sizes, st.booleans())
def test_arg_flat_is_numpys_first_occurrence(block: np.ndarray[Any, Any], tile: int,
                                             largest: bool) -> None:
    assert tiles.arg_flat(block, largest, tile) == (np.argmax if largest else np.argmin)(block)


@deep
@given(blocks(), st.booleans())
def test_rows_reduce_is_numpys_extreme(block: np.ndarray[Any, Any], largest: bool) -> None:
    got = tiles.rows_reduce(np.maximum if largest else np.minimum, block)
    np.testing.assert_array_equal(got, (np.max if largest else np.min)(block, axis=0))


@deep
@given(blocks(), tile_sizes)
def test_count_nonzero_rows_is_numpys(block: np.ndarray[Any, Any], tile: int) -> None:
    got = tiles.count_nonzero_rows(block, tile)
    np.testing.assert_array_equal(got, np.count_nonzero(block, axis=0))
    assert got.dtype == np.intp


def test_counts_past_255_per_column_do_not_wrap() -> None:
    # The per-tile sums are uint8; a tile holds at most 255 wide rows.
    block = np.ones((5000, 3), np.float32)
    np.testing.assert_array_equal(tiles.count_nonzero_rows(block, 1 << 16), [5000] * 3)


@pytest.mark.parametrize("name", ["argmax", "argmin", "max", "min", "count_nonzero"])
def test_fast_and_general_kernels_agree_over_many_chunks(monkeypatch: pytest.MonkeyPatch,
                                                         name: str) -> None:
    # The public functions, fast kernels on and off, on chunks that split the array's rows.
    rng = np.random.default_rng(3)
    x = rng.integers(-3, 4, size=(20_000, 6)).astype(np.float32)
    x[rng.integers(0, 20_000, 4), rng.integers(0, 6, 4)] = np.nan
    fn = getattr(bigarr, name)
    for axis in (0, None):
        fast = fn(x, axis=axis, budget="8MiB", threads=2, progress=False)
        with monkeypatch.context() as mp:
            mp.setattr(_partials, "FAST_KINDS", "")
            general = fn(x, axis=axis, budget="8MiB", threads=2, progress=False)
        want = getattr(np, name)(x, axis=axis)
        np.testing.assert_array_equal(fast, want)
        np.testing.assert_array_equal(general, want)


@st.composite
def histogram_cases(draw: Any) -> tuple[np.ndarray[Any, Any], int, Any]:
    dtype = np.dtype(draw(st.sampled_from(["int8", "int16", "uint8", "int64", "float16",
                                           "float32", "float64"])))
    size = draw(st.integers(1, 400))
    if dtype.kind == "f":
        elements = st.floats(-1e4, 1e4, width=8 * min(dtype.itemsize, 4)) | st.sampled_from(
            [0.1, 1 / 3, 2.5, -0.0, 7.0])
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    x = draw(hnp.arrays(dtype, size, elements=elements))
    bins = draw(st.integers(1, 40))
    given_range = draw(st.booleans())
    if given_range:
        lo = draw(st.floats(-2e4, 2e4))
        hi = draw(st.floats(lo, lo + draw(st.sampled_from([0.0, 1e-3, 1.0, 3e4]))))
        if draw(st.booleans()) and dtype.kind == "f":
            x[draw(st.integers(0, size - 1))] = np.nan  # dropped with a given range
        return x, bins, (lo, hi)
    return x, bins, (x.min(), x.max())


@deep
@given(histogram_cases(), st.sampled_from([1, 7, 64, 1 << 16]))
def test_uniform_counts_are_numpys(case: tuple[np.ndarray[Any, Any], int, Any],
                                   tile: int) -> None:
    x, bins, (lo, hi) = case
    try:
        want, edges = np.histogram(x, bins=bins, range=(lo, hi))
    except ValueError:  # numpy refuses (float16 edges that cannot be told apart): so does bigarr
        assume(False)
    first, last = (lo - 0.5, hi + 0.5) if lo == hi else (lo, hi)
    got = tiles.uniform_counts(x, first, last, bins, edges, tile)
    np.testing.assert_array_equal(got, want)


def test_uniform_counts_follow_numpy_on_values_next_to_the_edges() -> None:
    # Every float32 within a few ulps of each edge: where the index estimate needs numpy's
    # corrections.
    edges = np.histogram_bin_edges(np.zeros(0, np.float32), bins=7, range=(np.float32(-1.3),
                                                                         np.float32(2.9)))
    near = np.concatenate([_ulps_around(np.float32(e)) for e in edges])
    want = np.histogram(near, bins=7, range=(np.float32(-1.3), np.float32(2.9)))[0]
    got = tiles.uniform_counts(near, np.float32(-1.3), np.float32(2.9), 7, edges, 5)
    np.testing.assert_array_equal(got, want)


def _ulps_around(e: np.float32, k: int = 4) -> np.ndarray[Any, Any]:
    bits = np.array([e], np.float32).view(np.int32)[0]
    return np.arange(bits - k, bits + k + 1, dtype=np.int32).view(np.float32)


def test_min_max_propagate_nan_like_numpy() -> None:
    x = np.arange(1000, dtype=np.float32)
    assert tiles.min_max(x, 64) == (0, 999)
    x[517] = np.nan
    low, high = tiles.min_max(x, 64)
    assert np.isnan(low) and np.isnan(high)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int16"])
def test_var_through_wide_rows_agrees_with_numpy_and_the_general_kernel(
        monkeypatch: pytest.MonkeyPatch, dtype: str) -> None:
    # Column variances of few columns go through wide rows (partials.Var._wide): another
    # fixed summation order, as accurate, and the same bits at every budget and thread count.
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((40_000, 12)) * 5 + 1e4).astype(dtype)
    want = np.var(x.astype(np.float64), axis=0)
    runs = [bigarr.var(x, axis=0, budget=budget, threads=threads, progress=False)
            for budget, threads in (("8MiB", 2), ("64MiB", 1))]
    np.testing.assert_array_equal(runs[0], runs[1])
    rtol = 1e-6 if dtype == "float32" else 1e-12  # a float32 result is rounded to float32
    np.testing.assert_allclose(runs[0], want, rtol=rtol)
    with monkeypatch.context() as mp:
        mp.setattr(_partials, "_wide_rows", lambda block, axes: None)
        general = bigarr.var(x, axis=0, budget="8MiB", threads=2, progress=False)
    np.testing.assert_allclose(runs[0], general, rtol=rtol)
    assert _partials._wide_rows(np.zeros((4, 512, 12), np.float32), (1,)) is not None


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_counting_by_edges_lands_where_numpy_does_at_every_edge(dtype: str) -> None:
    # Values at each edge and one ulp either side, the range taken from the data (numpy's
    # default): the path that compares with the edges, checked against np.histogram itself.
    lo, hi = np.array([-3.1, 7.3], dtype=dtype)
    edges = np.histogram_bin_edges(np.array([lo, hi]), bins=10)
    near = np.concatenate([[np.nextafter(e, -np.inf), e, np.nextafter(e, np.inf)]
                           for e in edges.astype(dtype)]).astype(dtype)
    x = np.clip(near, lo, hi)
    assert tiles._estimate_within_one(lo, hi, 10, edges)
    want = np.histogram(x, bins=10)[0]
    np.testing.assert_array_equal(tiles.uniform_counts(x, lo, hi, 10, edges, 1 << 16), want)


@deep
@given(blocks(), st.integers(0, 200))
def test_count_nonzero_all_is_numpys(block: np.ndarray[Any, Any], extra: int) -> None:
    # rows of 64 elements through the native count (when built), the rest by numpy
    flat = np.concatenate([block.reshape(-1)] * (1 + extra // 50))
    assert tiles.count_nonzero_all(flat) == np.count_nonzero(flat)
    assert tiles.count_nonzero_all(block) == np.count_nonzero(block)
