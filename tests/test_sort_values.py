"""The values sort's kernels (``runs.stable_sort``, the native radix sort of ``_radix.c``) and
the merge's ties: bit for bit ``np.sort(kind="stable")``, so ``-0.0`` against ``0.0`` and each
NaN's bits keep their input order (an unstable sort leaves that order open).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bigarr
from bigarr._compute import native
from bigarr._compute.runs import stable_sort

INTS = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "bool"]
FLOATS = ["float16", "float32", "float64"]


def bits(a: Any) -> bytes:
    return np.ascontiguousarray(a).view(np.uint8).tobytes()


def specials(dtype: str) -> np.ndarray[Any, Any]:
    """Values equal in numpy's order yet not the same bits, and the extremes."""
    d = np.dtype(dtype)
    u = np.dtype(f"u{d.itemsize}")
    exp = {2: 0x7C00, 4: 0x7F800000, 8: 0x7FF0000000000000}[d.itemsize]
    sign = 1 << (8 * d.itemsize - 1)
    nans = np.array([exp | 1, exp | 2, sign | exp | 1, sign | exp | 3], dtype=u).view(d)
    return np.concatenate([nans, np.array([0.0, -0.0, np.inf, -np.inf, 1.0, -1.0], dtype=d)])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), dtype=st.sampled_from(INTS + FLOATS), n=st.integers(0, 300))
def test_hypothesis_stable_sort_is_numpys_stable_sort(data: Any, dtype: str, n: int) -> None:
    d = np.dtype(dtype)
    if d.kind == "f":
        pool = specials(dtype)
        idx = data.draw(hnp.arrays(np.intp, n, elements=st.integers(0, pool.size - 1)))
        x = pool[idx]
        noise = data.draw(hnp.arrays(d, n, elements=st.floats(width=8 * d.itemsize,
                                                                   allow_nan=False)))
        x = np.where(data.draw(hnp.arrays(bool, n)), noise, x)
    else:
        x = data.draw(hnp.arrays(d, n))
    want = np.sort(x, kind="stable")
    out = np.empty_like(x)
    stable_sort(x, out)
    assert bits(out) == bits(want)
    y = x.copy()
    stable_sort(y, y)  # in place
    assert bits(y) == bits(want)


@pytest.mark.skipif(not native.radix_sortable(np.dtype(np.float32)),
                    reason="native kernels not built")
@pytest.mark.parametrize("dtype", INTS + FLOATS)
def test_radix_sort_every_width_is_numpys_stable_sort(dtype: str) -> None:
    # every digit pass taken (full-range values), in place and not, with specials for floats
    rng = np.random.default_rng(7)
    d = np.dtype(dtype)
    n = 5000
    if d.kind == "f":
        x = rng.standard_normal(n).astype(d) * d.type(1000)
        x[rng.integers(0, n, n // 4)] = specials(dtype)[rng.integers(0, 10, n // 4)]
    else:
        x = rng.integers(0, 256, n * d.itemsize, dtype=np.uint8).view(d)
        if d.kind == "b":
            x = x.view(np.uint8) % 2 == 1
    want = np.sort(x, kind="stable")
    for inplace in (False, True):
        out = x.copy() if inplace else np.empty_like(x)
        assert native.radix_sort(out if inplace else x, out, np.empty_like(x))
        assert bits(out) == bits(want), inplace
    # what the kernel refuses, it leaves alone
    assert not native.radix_sort(x[::2], np.empty(x[::2].size, d), np.empty_like(x))
    if d.itemsize > 1:
        swapped = x.astype(d.newbyteorder())
        assert not native.radix_sort(swapped, np.empty_like(swapped), np.empty_like(swapped))


def test_external_sort_keeps_tie_order_across_runs(tmp_path: Path) -> None:
    # many runs full of ties (-0.0/0.0, NaNs of distinct bits) cut at the merge's bound: the
    # runs before the bound's give their ties, those after keep them (runs.merge)
    rng = np.random.default_rng(3)
    pool = specials("float32")
    x = pool[rng.integers(0, pool.size, 300_000)]
    x[::3] = rng.integers(-3, 3, x[::3].size)
    with bigarr.sort(x, tmp_path / "s.npy", budget="1MiB", progress=False) as s:
        assert bits(s) == bits(np.sort(x, kind="stable"))


def test_spares_are_page_aligned_and_reused() -> None:
    # runs are written with O_DIRECT from these arrays' own memory (runs.RunWriter), and the
    # merge cuts its blocks into phase 1's arrays: both need page-aligned, reused memory
    from bigarr._compute.runs import Spares
    from bigarr._os.sink import DIRECT_ALIGN

    for dtype in (np.float32, np.dtype([("k", np.uint64, (1,)), ("i", np.int64)])):
        spares = Spares(np.dtype(dtype))
        a = spares.take(1000)
        assert a.shape == (1000,) and a.dtype == np.dtype(dtype)
        assert a.ctypes.data % DIRECT_ALIGN == 0
        address = a.ctypes.data
        spares.give(a[:10])  # a view of it gives the whole array back
        b = spares.take(500)
        assert b.ctypes.data == address and b.shape == (500,)
        c = spares.take(2000)  # none free: a new one
        assert c.ctypes.data not in (address,) and c.ctypes.data % DIRECT_ALIGN == 0
        spares.give(np.empty(5, dtype=dtype))  # not one of its arrays: ignored
        assert spares.take(5).ctypes.data % DIRECT_ALIGN == 0


@pytest.mark.parametrize("dtype", ["int32", "float64"])
def test_external_sort_multipass_direct_runs(tmp_path: Path, dtype: str) -> None:
    # a budget that forces many runs and an intermediate merge pass: the runs of phase 1
    # (lent to the direct writer), those of the merge pass (staged), the output (staged)
    rng = np.random.default_rng(11)
    d = np.dtype(dtype)
    n = 200_003
    if d.kind == "f":
        x = (rng.standard_normal(n) * 100).astype(d)
        x[rng.integers(0, n, n // 10)] = specials(dtype)[rng.integers(0, 10, n // 10)]
    else:
        x = rng.integers(0, 256, n * d.itemsize, dtype=np.uint8).view(d)
    bigarr.sort(x, tmp_path / "s.npy", budget="512KiB", progress=False).close()
    from bigarr._compute.order import LAST_PASSES

    assert LAST_PASSES[0] >= 3  # phase 1, an intermediate pass, the last pass
    s = np.load(tmp_path / "s.npy")
    assert bits(s) == bits(np.sort(x, kind="stable"))
    bigarr.argsort(x, tmp_path / "i.npy", budget="4MiB", progress=False).close()
    assert np.array_equal(np.load(tmp_path / "i.npy"), np.argsort(x, kind="stable"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["i.npy", "s.npy"]  # runs removed
