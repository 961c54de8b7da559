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
