"""Row-local reductions of lazy expressions (the reduced axes leave axis 0 alone).

``x.var(axis=1)`` needs each row only: it is an operation on the chunk's rows, fused into the
pass that reads them, streamed into a file when larger than the budget, and numpy's own
function on each chunk, so its values are numpy's bit for bit (numpy is the oracle).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigarr
from bigarr._plan import budget as budget_module

KW: dict[str, Any] = {"threads": 2, "progress": False}

_KINDS = ["sum", "prod", "mean", "var", "std", "min", "max", "argmin", "argmax", "any", "all",
          "count_nonzero", "nansum", "nanmean", "nanvar", "nanstd", "nanmin", "nanmax"]


def _data(seed: int, shape: tuple[int, ...], dtype: str, specials: bool, order: str) -> Any:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape) * 10
    if specials and np.dtype(dtype).kind == "f":
        flat = a.reshape(-1)
        picks = rng.integers(0, flat.size, size=max(flat.size // 20, 1))
        flat[picks] = rng.choice([np.nan, np.inf, -np.inf, -0.0, 0.0], size=picks.size)
    a = a.astype(dtype) if np.dtype(dtype).kind != "b" else a > 0
    return np.asfortranarray(a) if order == "F" else np.ascontiguousarray(a)


def _numpy(kind: str, a: Any, axis: Any, keepdims: bool, ddof: int) -> Any:
    kw: dict[str, Any] = {"axis": axis, "keepdims": keepdims}
    if kind in ("var", "std", "nanvar", "nanstd"):
        kw["ddof"] = ddof
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return getattr(np, kind)(a, **kw)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(_KINDS), rows=st.integers(1, 3000), cols=st.integers(1, 5),
       depth=st.integers(0, 2), dtype=st.sampled_from(["float64", "float32", "float16", "int16",
                                                       "uint8", "int64", "bool"]),
       specials=st.booleans(), order=st.sampled_from(["C", "F"]), keepdims=st.booleans(),
       ddof=st.integers(0, 1), seed=st.integers(0, 2**32 - 1))
def test_row_local_reductions_are_numpys_bits(kind: str, rows: int, cols: int, depth: int,
                                              dtype: str, specials: bool, order: str,
                                              keepdims: bool, ddof: int, seed: int) -> None:
    shape = (rows, cols) if depth == 0 else (rows, cols, depth + 1)
    a = _data(seed, shape, dtype, specials, order)
    axis: Any = 1 if depth == 0 or kind in ("argmin", "argmax") else (1, 2)
    if depth == 2 and kind not in ("argmin", "argmax"):
        axis = ()  # no axis at all: numpy's reduction of nothing (a cast, a count, ...)
    try:
        want = _numpy(kind, a, axis, keepdims, ddof)
    except (TypeError, ValueError):  # numpy refuses (min of no columns, ...): so does bigarr
        with pytest.raises((TypeError, ValueError)):
            got = getattr(bigarr.lazy(a), kind)(axis=axis, keepdims=keepdims,
                                                **({"ddof": ddof} if "var" in kind or "std"
                                                   in kind else {}))
            got.compute(budget="64MiB", **KW)
        return
    kw = {"ddof": ddof} if kind in ("var", "std", "nanvar", "nanstd") else {}
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setattr(budget_module, "MIN_CHUNK_BYTES", 4096)  # several chunks even when small
        got = getattr(bigarr.lazy(a), kind)(axis=axis, keepdims=keepdims, **kw)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert got.explain(budget="1MiB", threads=2).passes == 1
        value = got.compute(budget="1MiB", **KW)
    np.testing.assert_array_equal(value, want, strict=True)


def test_row_local_reductions_fuse_with_elementwise_work_in_one_pass(tmp_path: Path) -> None:
    a = _data(1, (40000, 6), "float32", True, "C")
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    centred = x - x.mean(axis=1, keepdims=True)
    assert centred.explain(budget="2MiB").passes == 1
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(centred.compute(budget="8MiB", **KW),
                                      a - a.mean(axis=1, keepdims=True))
        # a column statistic of row statistics: the row statistic is computed in the pass
        total = bigarr.compute(x.max(axis=1).sum(), x.std(axis=1).max(axis=0), budget="2MiB",
                               **KW)
        np.testing.assert_allclose(total[0], a.max(axis=1).astype(np.float64).sum(), rtol=1e-6)
        np.testing.assert_array_equal(total[1], a.std(axis=1).max(axis=0))
    # median and a scalar quantile along the rows are row-local too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(x.nanmedian(axis=1).compute(budget="8MiB", **KW),
                                      np.nanmedian(a, axis=1))
        np.testing.assert_array_equal(
            x.quantile(0.9, axis=-1, method="nearest").compute(budget="8MiB", **KW),
            np.quantile(a, 0.9, axis=-1, method="nearest"))


def test_row_local_result_larger_than_the_budget_streams_to_a_file(tmp_path: Path) -> None:
    # 600,000 rows: the float64 result (4.6 MiB) is larger than the 2 MiB budget
    a = _data(2, (600000, 4), "float64", False, "C")
    np.save(tmp_path / "x.npy", a)
    e = bigarr.lazy(tmp_path / "x.npy").var(axis=1, ddof=1)
    with pytest.raises(bigarr.errors.BudgetError, match="to_npy"):
        e.compute(budget="2MiB", **KW)
    plan = e.explain(budget="2MiB")
    assert plan.passes == 1
    out = e.to_npy(tmp_path / "v.npy", budget="2MiB", **KW)
    np.testing.assert_array_equal(np.asarray(out), a.var(axis=1, ddof=1))
