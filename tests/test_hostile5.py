"""Hostile review, fifth session: each test is a defect found by trying to break the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr


def test_map_blocks_function_refilling_its_own_output_buffer(tmp_path: Path) -> None:
    """numpy's out= idiom: func fills and returns one array it keeps. Lent to the sink without
    a copy, the next call overwrote it before the disk had it (wrong rows in the file)."""
    x = np.random.default_rng(3).standard_normal((300_000, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    kept: dict[tuple[int, ...], np.ndarray[Any, Any]] = {}

    def f(b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        o = kept.get(b.shape)
        if o is None:
            o = kept[b.shape] = np.empty(b.shape, b.dtype)
        np.multiply(b, 2, out=o)
        return o

    y = bigarr.map_blocks(f, str(tmp_path / "x.npy"), out=str(tmp_path / "y.npy"),
                          budget="8MiB", threads=1, progress=False)
    y.close()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), x * 2)


def test_row_local_quantile_along_an_empty_axis_is_a_bigarr_error() -> None:
    """numpy's quantile of zero values is an IndexError; the lazy row-local one let numpy's
    bare IndexError out of the expression's construction."""
    a = np.zeros((4, 0), np.float32)
    with pytest.raises(IndexError):
        np.quantile(a, 0.3, axis=1)
    x = bigarr.lazy(a)
    for build in (lambda: x.quantile(0.3, axis=1), lambda: x.percentile(50, axis=1),
                  lambda: bigarr.lazy(a.astype(np.int8)).quantile(0.5, axis=1)):
        with pytest.raises(bigarr.errors.RegionError):
            build()


def test_lazy_min_of_an_empty_column_slice_of_a_file(tmp_path: Path) -> None:
    """x[:, 1:] of a one-column file has rows but no values: its min streamed the rows and let
    numpy's bare ValueError out; numpy's answers (and its refusal, as ShapeError) instead."""
    np.save(tmp_path / "x.npy", np.ones((64, 1), np.float32))
    x = bigarr.lazy(str(tmp_path / "x.npy"))[:, 1:]
    a = np.ones((64, 0), np.float32)
    with pytest.raises(bigarr.errors.ShapeError):
        x.min().compute()
    with pytest.raises(bigarr.errors.ShapeError):
        bigarr.compute(x.sum(), x.max())
    total, by_col, top = bigarr.compute(x.sum(), x.sum(axis=0), x.max(axis=0))
    assert total == a.sum()
    np.testing.assert_array_equal(by_col, a.sum(axis=0))
    np.testing.assert_array_equal(top, a.max(axis=0))


def test_lazy_refuses_python_objects_as_a_dtype_error() -> None:
    """An object array's lazy sum, row-local var or quantile ran numpy on Python objects and
    let its bare TypeError out (or computed on objects); now a DtypeError when built, as
    bigarr's eager reductions refuse them."""
    obj = np.array([[1, "a"], [2, "b"]], dtype=object)
    with pytest.raises(bigarr.errors.DtypeError):
        bigarr.lazy(obj)
    x = bigarr.lazy(np.ones((2, 2)))
    with pytest.raises(bigarr.errors.DtypeError):
        x.astype(object)
    with pytest.raises(bigarr.errors.DtypeError):
        x + obj


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="long double is double here")
def test_order_statistics_of_long_double_are_a_dtype_error(tmp_path: Path) -> None:
    """float128 passed the 'floating' check, then numpy failed to make a 'u16' key dtype: a
    bare TypeError from median, quantile, sort, argsort, topk and searchsorted."""
    a = np.arange(10, dtype=np.longdouble)
    out = tmp_path / "o.npy"
    for run in (lambda: bigarr.median(a, progress=False),
                lambda: bigarr.quantile(a, 0.5, progress=False),
                lambda: bigarr.sort(a, str(out), progress=False),
                lambda: bigarr.argsort(a, progress=False),
                lambda: bigarr.topk(a, 2, progress=False),
                lambda: bigarr.searchsorted(a, [3.0])):
        with pytest.raises(bigarr.errors.DtypeError):
            run()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    np.testing.assert_array_equal(bigarr.unique(a, progress=False), np.unique(a))


def test_filtered_big_endian_rows_keep_their_dtype(tmp_path: Path) -> None:
    """x[mask].compute() of '>f8' data came back native float64, though the expression's dtype
    (and numpy's a[mask], and its to_npy file) is '>f8'."""
    a = np.arange(12.0).reshape(4, 3).astype(">f8")
    np.save(tmp_path / "be.npy", a)
    x = bigarr.lazy(str(tmp_path / "be.npy"))
    kept = x[x[:, 0] > 2]
    got = kept.compute()
    want = a[a[:, 0] > 2]
    assert got.dtype == want.dtype == kept.dtype
    np.testing.assert_array_equal(got, want)
