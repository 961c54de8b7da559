"""The fast exact kernels of ``_compute/tiles.py`` against numpy, under hypothesis.

Small tiles and few columns, so that blocks of a few hundred elements have many tiles, wide
rows that do not divide the rows, ties across tiles, and NaN, inf and -0.0 anywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bigarr
from bigarr._compute import partials as _partials
from bigarr._compute import tiles

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


@settings(max_examples=200, deadline=None)
@given(blocks(), tile_sizes, st.booleans())
def test_arg_rows_is_numpys_first_occurrence(block: np.ndarray[Any, Any], tile: int,
                                             largest: bool) -> None:
    value, index = tiles.arg_rows(block, largest, tile)
    want = (np.argmax if largest else np.argmin)(block, axis=0)
    np.testing.assert_array_equal(index, want)
    np.testing.assert_array_equal(value, np.take_along_axis(block, want[None], axis=0)[0])


@settings(max_examples=200, deadline=None)
@given(blocks(), tile_sizes, st.booleans())
def test_arg_flat_is_numpys_first_occurrence(block: np.ndarray[Any, Any], tile: int,
                                             largest: bool) -> None:
    assert tiles.arg_flat(block, largest, tile) == (np.argmax if largest else np.argmin)(block)


@settings(max_examples=200, deadline=None)
@given(blocks(), st.booleans())
def test_rows_reduce_is_numpys_extreme(block: np.ndarray[Any, Any], largest: bool) -> None:
    got = tiles.rows_reduce(np.maximum if largest else np.minimum, block)
    np.testing.assert_array_equal(got, (np.max if largest else np.min)(block, axis=0))


@settings(max_examples=200, deadline=None)
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
