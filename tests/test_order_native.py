"""The quantile passes' C kernels and pass 1's sampled windows (issue 13's one-pass median).

Each kernel is checked against the numpy computation it replaces (the keys of
:func:`bigarr._compute.orderkeys.keys_of`), over every dtype the order statistics take, with NaN,
inf and -0.0; the quantiles that use the windows against numpy itself, with the pass count.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bigarr
from bigarr._compute import order, orderkeys, ordersample, orderscan, ordnative
from test_order import METHODS, make, same

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64"]

needs_native = pytest.mark.skipif(not ordnative.available(),
                                  reason="the native extension is not built")


def keys_of(b: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """numpy's keys of a 2-d block and which values are not NaN."""
    keys = orderkeys.keys_of(b)
    valid = ~np.isnan(b) if b.dtype.kind == "f" else np.ones(b.shape, dtype=bool)
    return keys, valid


blocks = st.sampled_from(DTYPES).flatmap(lambda d: hnp.arrays(
    d, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=30),
    elements=hnp.from_dtype(np.dtype(d)) if d[0] != "f" else st.one_of(
        hnp.from_dtype(np.dtype(d)),
        st.sampled_from([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0])))).map(
    lambda a: np.ascontiguousarray(a))


@needs_native
@settings(max_examples=60, deadline=None)
@given(b=blocks, data=st.data())
def test_hist_and_scan_kernels_equal_numpy(b: np.ndarray[Any, Any], data: st.DataObject) -> None:
    kd = orderkeys.key_dtype(b.dtype)
    bits = 8 * kd.itemsize
    shift = data.draw(st.integers(max(bits - 12, 0), bits - 1))
    keys, valid = keys_of(b)
    cols = b.shape[1]
    want = np.zeros((cols, 1 << (bits - shift)), dtype=np.int64)
    for j in range(cols):
        np.add.at(want[j], (keys[valid[:, j], j] >> kd.type(shift)).astype(np.intp), 1)
    counts = np.zeros_like(want)
    nans = np.zeros(cols, dtype=np.int64)
    assert ordnative.hist(b, shift, counts, nans)
    np.testing.assert_array_equal(counts, want)
    np.testing.assert_array_equal(nans, (~valid).sum(axis=0))
    if cols != 1:
        return
    # the flat kernel, with windows drawn from the keys themselves (or anywhere)
    pool = [int(k) for k in keys[valid]] + [0, (1 << bits) - 1]
    edges = sorted(data.draw(st.lists(st.sampled_from(pool), min_size=2, max_size=6)))
    lo = np.array(edges[0::2][:len(edges) // 2], dtype=kd)
    hi = np.array(edges[1::2][:len(edges) // 2], dtype=kd)
    keep = np.concatenate(([True], lo[1:] > hi[:-1]))  # disjoint windows only
    lo, hi = lo[keep], hi[keep]
    room = data.draw(st.integers(0, b.size + 1))
    below = np.zeros(lo.size, dtype=np.int64)
    out = np.empty(room + 1, dtype=kd)
    counts[:] = 0
    nans[:] = 0
    n = ordnative.scan(b, shift, counts, nans, windows=(lo, hi - lo, below, out))
    np.testing.assert_array_equal(counts, want)
    assert nans[0] == (~valid).sum()
    flat = keys[valid]
    inside = np.zeros(flat.shape, dtype=bool)
    for w in range(lo.size):
        assert below[w] == np.count_nonzero(flat < lo[w])
        inside |= (flat >= lo[w]) & (flat <= hi[w])
    got = np.sort(flat[inside])
    if got.size <= room:
        assert n == got.size
        np.testing.assert_array_equal(np.sort(out[:n]), got)
    else:
        assert n == room + 1


@needs_native
@settings(max_examples=60, deadline=None)
@given(b=blocks, data=st.data())
def test_ranges_kernel_equals_numpy(b: np.ndarray[Any, Any], data: st.DataObject) -> None:
    """Refine (sub-histograms) and gather (keys and their ranges), several ranges a column."""
    kd = orderkeys.key_dtype(b.dtype)
    bits = 8 * kd.itemsize
    keys, valid = keys_of(b)
    cols = b.shape[1]
    shift = data.draw(st.integers(1, min(bits, 20)))
    ranges: list[tuple[int, int, int]] = []  # (col, lo, hi), disjoint buckets of 2**shift keys
    for j in range(cols):
        picks = {int(k) >> shift for k in keys[valid[:, j], j][:3]}
        ranges += [(j, p << shift, (p << shift) + (1 << shift) - 1) for p in sorted(picks)]
    rstart = np.searchsorted(np.array([r[0] for r in ranges], dtype=np.int64),
                             np.arange(cols + 1)).astype(np.int64)
    rlo = np.array([r[1] for r in ranges], dtype=kd)
    rhi = np.array([r[2] for r in ranges], dtype=kd)
    inside = [(keys[:, j] >= lo) & (keys[:, j] <= hi) & valid[:, j] for j, lo, hi in ranges]
    # gather
    out = np.empty(b.size, dtype=kd)
    outr = np.empty(b.size, dtype=np.int32)
    n = ordnative.ranges(b, rstart, rlo, rhi, out=out, outr=outr)
    assert n == sum(int(m.sum()) for m in inside)
    for r, (j, _, _) in enumerate(ranges):
        np.testing.assert_array_equal(np.sort(out[:n][outr[:n] == r]),
                                      np.sort(keys[inside[r], j]))
    # refine: the next bits of each range
    sub = data.draw(st.integers(0, shift - 1))
    sizes = [1 << (shift - sub)] * len(ranges)
    soff = np.arange(len(ranges), dtype=np.int64) << (shift - sub)
    counts = np.zeros(sum(sizes), dtype=np.int64)
    sshift = np.full(len(ranges), sub, dtype=np.int32)
    assert ordnative.ranges(b, rstart, rlo, rhi, sub=(sshift, soff, counts)) is not None
    for r, (j, lo, _) in enumerate(ranges):
        local = ((keys[inside[r], j] - kd.type(lo)) >> kd.type(sub)).astype(np.intp)
        np.testing.assert_array_equal(counts[soff[r]:soff[r] + sizes[r]],
                                      np.bincount(local, minlength=sizes[r]))


@needs_native
@pytest.mark.parametrize("dtype", ["int8", "int32", "uint64", "float16", "float32", "float64"])
@pytest.mark.parametrize("size", [1023, 1024, 2049, 5000])
def test_scan_kernel_over_several_tiles(dtype: str, size: int) -> None:
    """The scan kernel works in tiles of 1024 values: full and partial tiles, 1 and 3 windows,
    every 8-flag group, and a room that fills up mid-tile."""
    rng = np.random.default_rng(size)
    x = make(dtype, (size,), "special", seed=size).reshape(-1, 1)
    if x.dtype.kind == "f":
        x[rng.integers(0, size, 7)] = -np.nan  # NaNs keyed below everything
    kd = orderkeys.key_dtype(x.dtype)
    bits = 8 * kd.itemsize
    keys, valid = keys_of(x)
    flat = keys[valid]
    shift = max(bits - 16, 0)
    want = np.bincount((flat >> kd.type(shift)).astype(np.intp), minlength=1 << (bits - shift))
    edges = np.sort(rng.choice(flat, 6)) if flat.size else np.zeros(6, kd)
    top = kd.type((1 << bits) - 1)
    for lo, hi in ((edges[0:2:2], edges[1:2:2]), (edges[0::2], edges[1::2]),
                   (np.array([0], kd), np.array([top], kd))):  # all keys but the NaNs'
        keep = np.concatenate(([True], lo[1:] > hi[:-1]))
        lo, hi = lo[keep], hi[keep]
        inside = np.zeros(flat.shape, dtype=bool)
        for w in range(lo.size):
            inside |= (flat >= lo[w]) & (flat <= hi[w])
        for room in (flat.size, int(inside.sum()), max(int(inside.sum()) - 1, 0)):
            counts = np.zeros((1, want.size), dtype=np.int64)
            nans = np.zeros(1, dtype=np.int64)
            below = np.zeros(lo.size, dtype=np.int64)
            out = np.empty(room + 1, dtype=kd)
            n = ordnative.scan(x, shift, counts, nans, windows=(lo, hi - lo, below, out))
            np.testing.assert_array_equal(counts[0], want)
            assert nans[0] == (~valid).sum()
            for w in range(lo.size):
                assert below[w] == np.count_nonzero(flat < lo[w])
            if inside.sum() <= room:
                np.testing.assert_array_equal(out[:n], flat[inside])  # in the values' order
            else:
                assert n == room + 1


@pytest.mark.parametrize("dtype", ["int32", "int64", "uint64", "float16", "float32", "float64"])
@pytest.mark.parametrize("kind", ["special", "few", "equal", "sorted"])
def test_window_pass_equals_numpy(dtype: str, kind: str) -> None:
    """Data large enough for sampled windows (all quantile methods, nan-variants too)."""
    x = make(dtype, (70_000,), kind, seed=5)
    for method in METHODS:
        for fn in ("quantile", "nanquantile"):
            q = [0.0, 0.3, 0.5, 0.999, 1.0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                want = getattr(np, fn)(x, q, method=method)
                got = getattr(bigarr, fn)(x, q, method=method, budget="16MiB", progress=False)
            assert same(got, want), (fn, method, got, want)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert same(bigarr.nanmedian(x, progress=False), np.nanmedian(x))


def test_one_pass_on_random_data_and_the_native_path_is_taken(
        monkeypatch: pytest.MonkeyPatch) -> None:
    x = make("float32", (400_000,), "random")
    calls: list[str] = []
    for name in ("scan", "hist", "ranges"):
        real = getattr(ordnative, name)
        monkeypatch.setattr(ordnative, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(*a, **k))
    assert same(bigarr.median(x, budget="8MiB", progress=False), np.median(x))
    assert order.LAST_PASSES[0] == 1
    lazy = bigarr.lazy(x)
    plan = lazy.median().explain(budget="8MiB")  # the plan says so, and what a miss costs
    assert plan.passes == 1 and "2 passes when the sample misleads" in str(plan)
    if ordnative.available():
        assert calls and set(calls) == {"scan"}
    calls.clear()
    y = x.reshape(-1, 4)  # several columns: no windows, a histogram pass and a gather pass
    assert same(bigarr.median(y, axis=0, budget="8MiB", progress=False), np.median(y, axis=0))
    assert order.LAST_PASSES[0] == 2
    assert bigarr.lazy(y).median(axis=0).explain(budget="8MiB").passes == 2
    assert bigarr.lazy(x[:1000]).median().explain(budget="8MiB").passes == 2  # no sample
    assert bigarr.lazy(x.astype(np.int16)).median().explain(budget="8MiB").passes == 1
    if ordnative.available():
        assert set(calls) == {"hist", "ranges"}


def test_misleading_sample_falls_back_to_a_second_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    x = make("float64", (300_000,), "random", seed=2)
    real = ordersample.sample_windows

    def wrong(*args: Any) -> Any:
        win = real(*args)
        assert win is not None
        win.lo = win.lo + win.span + win.lo.dtype.type(1 << 40)  # past the true quantile
        return win

    monkeypatch.setattr(ordersample, "sample_windows", wrong)
    q = [0.1, 0.5, 0.9]
    assert same(bigarr.quantile(x, q, budget="8MiB", progress=False), np.quantile(x, q))
    assert order.LAST_PASSES[0] == 2


def test_windows_overflowing_their_room_fall_back() -> None:
    """All equal: the window holds every value; more than the room at a small budget."""
    x = np.full(400_000, 1.5)
    assert same(bigarr.median(x, budget="16MiB", progress=False), np.median(x))
    assert order.LAST_PASSES[0] == 1  # 400 000 keys fit in 16 MiB / 4
    assert same(bigarr.median(x, budget="4MiB", progress=False), np.median(x))
    assert order.LAST_PASSES[0] >= 4  # pass 1 (the window dies), then 48 bits to narrow


def test_numpy_path_gives_the_same_answers_and_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    x = make("float32", (200_000,), "special", seed=4)
    q = [0.01, 0.5, 0.99]
    want = [bigarr.nanquantile(x, q, budget="8MiB", progress=False), order.LAST_PASSES[0]]
    monkeypatch.setattr(orderscan, "_native", lambda dtype: False)
    got = [bigarr.nanquantile(x, q, budget="8MiB", progress=False), order.LAST_PASSES[0]]
    assert same(got[0], want[0]) and got[1] == want[1] == 1
    assert same(want[0], np.nanquantile(x, q))
