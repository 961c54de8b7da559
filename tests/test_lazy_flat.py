"""Elementwise chains on wide views (lazyflat.py): numpy's bits, whatever the view."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bigarr
from bigarr._compute import lazyeval, lazyflat
from bigarr._compute.lazyeval import Env
from bigarr._compute.lazyitems import item_of

_CHAINS = [
    ("standardize", lambda x, m, s: (x - m) / s),
    ("six ops", lambda x, m, s: np.sqrt(abs((x - m) / s * 2.0 + 1.0)) - 0.5),
    ("weak scalar", lambda x, m, s: x * 3 + 1),
    ("where", lambda x, m, s: bigarr.where(x > m, x, s) if isinstance(x, bigarr.LazyArray)
     else np.where(x > m, x, s)),
    ("astype", lambda x, m, s: (x - m).astype(np.float64) * s),
    ("size-1", lambda x, m, s: x + np.ones((1,) * x.ndim, x.dtype)),
    ("two inputs", lambda x, m, s: x * x - m),
    # t is read twice: never overwritten in place, however the chain runs
    ("shared", lambda x, m, s: (lambda t: (t + 1) * t - t / s)(x * 2 - m)),
    ("deep", lambda x, m, s: -(((x + m) * s - m) / s + 1) ** 2),
]


def _value(shape: tuple[int, ...], dtype: str, seed: int) -> Any:
    rng = np.random.default_rng(seed)
    if dtype.startswith("int"):
        return rng.integers(-50, 50, shape).astype(dtype)
    return (rng.standard_normal(shape) * 5).astype(dtype)


@settings(max_examples=40, deadline=None)
@given(chain=st.sampled_from(_CHAINS), rows=st.integers(1, 700),
       row_shape=st.sampled_from([(3,), (32,), (4, 5), (1,)]),
       dtype=st.sampled_from(["float32", "float64", "int32"]), into=st.booleans(),
       seed=st.integers(0, 1000))
def test_wide_views_give_numpys_bits(chain: Any, rows: int, row_shape: tuple[int, ...],
                                     dtype: str, into: bool, seed: int) -> None:
    name, f = chain
    a = _value((rows, *row_shape), dtype, seed)
    m = _value(row_shape, dtype, seed + 1)
    s = np.abs(_value((1, *row_shape), dtype, seed + 2)) + 1
    with np.errstate(all="ignore"):
        want = np.asarray(f(a, m, s))
        expr = f(bigarr.lazy(a), m, s)
    item = item_of(expr.node)
    flat = lazyflat.flat_plan(expr.node)
    if rows == 1:  # s of one row is cut by the rows too: evaluated as usual
        return
    assert flat is not None, name
    env = Env({i: a for i in item.rows}, {}, {}, slice(0, rows))
    out = np.empty(want.shape, want.dtype) if into else None
    got = flat.run(env, rows, out)
    if got is None:  # rows not a multiple of the group: evaluated as usual
        assert np.gcd(rows, flat.group) < 2
        return
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    if out is not None:
        assert got is out


@pytest.mark.parametrize("build", [
    lambda x: x[:, 1:] * 2,                      # a column selection
    lambda x: x @ np.ones((x.shape[1], 2)),     # row by row
    lambda x: x - x.sum(axis=1, keepdims=True),  # a reduction keeping axis 0
    lambda x: x.cumsum(axis=0) + 1,             # a scan
    lambda x: x + np.arange(6)[:, None],        # broadcast within the rows (a column)
])
def test_other_expressions_are_not_flat(build: Any) -> None:
    x = bigarr.lazy(np.ones((6, 4)))
    assert lazyflat.flat_plan(build(x).node) is None


def test_chains_run_in_place_into_one_buffer() -> None:
    a = _value((4096, 32), "float32", 3)
    expr = np.sqrt(abs((bigarr.lazy(a) - 7) / 3 * 2.0 + 1.0)) - 0.5
    flat = lazyflat.flat_plan(expr.node)
    assert flat is not None
    env = Env({i: a for i in item_of(expr.node).rows}, {}, {}, slice(0, 4096))
    out = np.empty((4096, 32), np.float32)
    tracemalloc.start()
    try:
        flat.run(env, 4096, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < a.nbytes // 4  # no temporary of the tile's size (six, one per operation)
    np.testing.assert_array_equal(out, np.sqrt(abs((a - 7) / 3 * 2.0 + 1.0)) - 0.5)


def test_flat_outputs_and_reductions_match_numpy(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lazyeval, "TILE_BYTES", 64 << 10)
    a = _value((100_003, 32), "float32", 0)  # rows not a multiple: the last tile is narrow
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    with z.to_npy(tmp_path / "z.npy", budget="8MiB", threads=2, progress=False) as m:
        np.testing.assert_array_equal(m, z.compute(budget="64MiB", threads=1,
                                                   progress=False))
    chain = np.sqrt(abs(x * 2.0 + 1.0))
    got = chain.max(axis=0).compute(budget="8MiB", threads=2, progress=False)
    np.testing.assert_array_equal(got, np.sqrt(abs(a * 2.0 + 1.0)).max(axis=0))
