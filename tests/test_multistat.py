"""Several reductions of the same values in one sweep (``_compute/multistat.py``, ``stats_cols``
in ``_native.c``).

The joint kernel must change speed, never results: its leaf states are the bits of the members'
own native kernels (``sum_cols``, ``var_cols``) and numpy's min and max, and ``bigarr.compute``
of a group gives the same bits with the joint kernel as without it; numpy is the oracle for the
values (min and max exactly, NaN propagated; sums and deviations against float64).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bigarr
from bigarr._compute import multistat, native

deep = settings(max_examples=int(os.environ.get("ORACLE_EXAMPLES", "40")), deadline=None)
#: Fewer examples for whole computations (each a planned run): the suite's time is tight.
light = settings(max_examples=int(os.environ.get("ORACLE_EXAMPLES", "10")), deadline=None)

needs_native = pytest.mark.skipif(not native.available(),
                                  reason="the native kernels are not built or are turned off")

VALUES = st.one_of(
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf]),
)
WANT = frozenset({"sum", "var", "min", "max"})


def _same(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> None:
    """Equal bits (every NaN alike: numpy's min may return any of a column's NaNs)."""
    assert a.dtype == b.dtype and a.shape == b.shape
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    assert a[~nan].tobytes() == b[~nan].tobytes()


def _extreme(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    """numpy's min or max, reduced row after row: NaN where numpy's is, the same value and sign
    elsewhere (of -0.0 and 0.0, numpy's sequential loop keeps the later)."""
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok], want[ok])
    np.testing.assert_array_equal(np.signbit(got[ok]), np.signbit(want[ok]))


@needs_native
@deep
@given(dtype=st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)]),
       p=st.integers(1, 3), n=st.integers(1, 40), c=st.sampled_from([3, 8, 9, 32, 33, 70]),
       offset=st.sampled_from([0.0, 1e7]), data=st.data())
def test_one_sweep_gives_the_members_kernels_bits(dtype: Any, p: int, n: int, c: int,
                                                  offset: float, data: Any) -> None:
    block = data.draw(hnp.arrays(dtype, (p, n, c), elements=VALUES))
    block = (block + dtype.type(offset)).astype(dtype)
    got = native.stats_blocks(block, (1,), WANT)
    if c < native.MIN_COLUMNS:
        assert got is None  # sum_blocks takes another kernel there: no joint sweep
        return
    assert got is not None
    total = native.sum_blocks(block, (1,))
    var = native.var_blocks(block, (1,))
    assert total is not None and var is not None
    _same(got["sum"], total)
    for name, want in zip(("shift", "mean", "m2"), var, strict=True):
        _same(got[name], want)
    with np.errstate(invalid="ignore"):
        _extreme(got["min"], block.min(axis=1, keepdims=True))
        _extreme(got["max"], block.max(axis=1, keepdims=True))


@needs_native
def test_one_sweep_writes_only_what_is_asked() -> None:
    block = np.arange(2 * 5 * 8, dtype=np.float32).reshape(2, 5, 8)
    got = native.stats_blocks(block, (1,), frozenset({"max"}))
    assert got is not None and set(got) == {"max"}
    _extreme(got["max"], block.max(axis=1, keepdims=True))
    assert native.stats_blocks(block.astype(">f4"), (1,), WANT) is None  # not native order


def _compute(x: Any, joint: bool, **kw: Any) -> list[np.ndarray[Any, Any]]:
    old = multistat.ENABLED
    multistat.ENABLED = joint
    try:
        return list(bigarr.compute(x.sum(axis=0), x.min(axis=0), x.max(axis=0), x.std(axis=0),
                                   x.var(axis=0, ddof=1), progress=False, **kw))
    finally:
        multistat.ENABLED = old


@needs_native
@light
@given(dtype=st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)]),
       rows=st.integers(1, 1500), cols=st.sampled_from([2, 8, 32, 40]),
       order=st.sampled_from(["C", "F"]), special=st.booleans(), seed=st.integers(0, 2**16))
def test_compute_of_a_group_is_the_same_bits_joint_or_not(dtype: Any, rows: int, cols: int,
                                                          order: str, special: bool,
                                                          seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((rows, cols)) * 3 + 1e4).astype(dtype)
    if special:  # NaN, inf, both infinities in one column, signed zeros
        picks = rng.integers(0, a.size, 6)
        a.flat[picks] = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, np.nan], dtype)
    a = np.asarray(a, order=order)
    x = bigarr.lazy(a)
    kw: dict[str, Any] = {"budget": "4MiB", "threads": 2}
    joint, alone = _compute(x, True, **kw), _compute(x, False, **kw)
    for k, (got, want) in enumerate(zip(joint, alone, strict=True)):
        if k in (1, 2) and order == "F":
            # the kernel-per-reduction min/max reduce an F-order block column by column, so
            # which of -0.0 and 0.0 they keep is their loop's; the joint kernel keeps numpy's
            # row-by-row choice (checked against numpy just below)
            np.testing.assert_array_equal(got, want)
        else:
            _same(got, want)
    rows_first = np.ascontiguousarray(a)  # numpy's reduce along axis 0 then runs row by row
    with np.errstate(all="ignore"):
        _extreme(joint[1], rows_first.min(axis=0))
        _extreme(joint[2], rows_first.max(axis=0))
        wide = a.astype(np.float64)
        for got, want in ((joint[0], wide.sum(axis=0)), (joint[3], wide.std(axis=0)),
                          (joint[4], wide.var(axis=0, ddof=1))):
            want = want.astype(dtype)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
            np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)],
                                       rtol=1e-5 if dtype == np.float32 else 1e-9, atol=1e-6)


@needs_native
def test_a_group_reads_each_leaf_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # the joint kernel is taken (one native sweep per call, no separate kernels), and a
    # reduction of another expression or along other axes stays outside the group
    calls: list[frozenset[str]] = []
    seen = native.stats_blocks

    def spy(block: Any, axes: Any, want: frozenset[str]) -> Any:
        calls.append(want)
        return seen(block, axes, want)

    def refuse(*args: Any) -> Any:
        raise AssertionError("a member's own kernel ran")

    monkeypatch.setattr(native, "stats_blocks", spy)
    monkeypatch.setattr(native, "sum_blocks", refuse)
    a = np.random.default_rng(3).standard_normal((20_000, 16)).astype(np.float32)
    x = bigarr.lazy(a)
    got = bigarr.compute(x.sum(axis=0), x.min(axis=0), x.max(axis=0), x.std(axis=0),
                         (x * 2).max(axis=0), x.max(axis=1), budget="2MiB", threads=2,
                         progress=False)
    assert calls and set(calls) == {WANT}
    np.testing.assert_allclose(got[0], a.sum(axis=0, dtype=np.float64), rtol=1e-6)
    np.testing.assert_array_equal(got[1], a.min(axis=0))
    np.testing.assert_array_equal(got[4], (a * 2).max(axis=0))
    np.testing.assert_array_equal(got[5], a.max(axis=1))


@needs_native
@pytest.mark.parametrize(("shape", "axis"), [((300, 3), 0), ((7, 300, 9), 1), ((500, 12), None)])
def test_where_the_sweep_does_not_apply_members_run_alone(shape: tuple[int, ...],
                                                          axis: Any) -> None:
    # few columns, a middle axis, every axis: the joint tree falls back per block to each
    # member's own kernel, with the same bits as without it
    a = np.random.default_rng(5).standard_normal(shape).astype(np.float64) + 3
    x = bigarr.lazy(a)

    def go(joint: bool) -> list[np.ndarray[Any, Any]]:
        multistat.ENABLED = joint
        try:
            return list(bigarr.compute(x.sum(axis=axis), x.max(axis=axis), x.var(axis=axis),
                                       budget="1MiB", threads=2, progress=False))
        finally:
            multistat.ENABLED = True

    for got, want in zip(go(True), go(False), strict=True):
        _same(got, want)
    np.testing.assert_array_equal(go(True)[1], a.max(axis=axis))


@needs_native
def test_repeated_reductions_in_a_group_are_each_right() -> None:
    # two members of one role share a sweep but not its arrays (a sum combines in place)
    a = np.random.default_rng(7).standard_normal((9000, 12))
    x = bigarr.lazy(a)

    def go(joint: bool) -> list[np.ndarray[Any, Any]]:
        multistat.ENABLED = joint
        try:
            return list(bigarr.compute(x.sum(axis=0), x.sum(axis=0), x.min(axis=0),
                                       x.min(axis=0), x.var(axis=0), x.std(axis=0),
                                       budget="1MiB", threads=2, progress=False))
        finally:
            multistat.ENABLED = True

    joint = go(True)
    for got, want in zip(joint, go(False), strict=True):
        _same(got, want)
    _same(joint[0], joint[1])
    np.testing.assert_allclose(joint[0], a.sum(axis=0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(joint[5] ** 2, a.var(axis=0), rtol=1e-12)


@needs_native
def test_a_joined_mean_is_numpys_with_infinities() -> None:
    # a mean in a group is its own sum over the count, so an infinite column's mean is numpy's
    # (inf, or NaN for both signs), where one read off the variance's merged state was NaN
    a = np.random.default_rng(11).standard_normal((5000, 10)).astype(np.float32)
    a[[3, 4000], 1] = np.inf
    a[7, 2], a[4500, 2] = np.inf, -np.inf
    a[[1, 3000], 3] = -np.inf
    x = bigarr.lazy(a)
    mean, _std, top = bigarr.compute(x.mean(axis=0), x.std(axis=0), x.max(axis=0),
                                    budget="1MiB", threads=2, progress=False)
    with np.errstate(invalid="ignore"):
        want = a.astype(np.float64).mean(axis=0).astype(np.float32)
    np.testing.assert_array_equal(mean[1:4], [np.inf, np.nan, -np.inf])
    np.testing.assert_allclose(mean, want, rtol=1e-6)
    _same(mean, bigarr.compute(x.mean(axis=0), budget="1MiB", threads=2, progress=False)[0])
    np.testing.assert_array_equal(top, a.max(axis=0))
