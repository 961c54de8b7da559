"""bigarr.linalg against numpy.linalg, np.cov and np.corrcoef (issue 14).

float64 agrees to 1e-10 relative (signs of Q, R rows, U and V normalised); float32 data is
computed in float64 by cov, corrcoef, qr, svd, lstsq and pca (agreeing with numpy's float64
answer to the same 1e-10), and in float32 by gram and matmul (1e-5 relative, the documented
tolerance). Small budgets force many chunks and many sub-blocks per chunk, so the merges are
exercised, not just one block.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bigarr
from bigarr import linalg
from bigarr._compute.linalg import blas_limit, merge_moments
from bigarr.errors import BudgetError, DtypeError, ShapeError, UnsupportedError

KW: dict[str, Any] = {"budget": "2MiB", "threads": 2, "progress": False}
F32_RTOL = 1e-5


def _rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b))), 1e-300) if b.size else 1.0
    return float(np.max(np.abs(a - b))) / scale if b.size else 0.0


def _data(n: int, p: int, seed: int = 0, dtype: Any = np.float64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p)) @ rng.standard_normal((p, p)) + rng.uniform(-5, 5, p)
    return x.astype(dtype)


@pytest.fixture(scope="module")
def tall(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, np.ndarray]:
    """A 40,000 x 6 float64 file (1.9 MiB): many chunks at a 2 MiB budget."""
    x = _data(40_000, 6)
    path = str(tmp_path_factory.mktemp("la") / "x.npy")
    np.save(path, x)
    return path, x


# ---- gram ----------------------------------------------------------------------------------
def test_gram_matches_numpy(tall: tuple[str, np.ndarray]) -> None:
    path, x = tall
    assert _rel(linalg.gram(path, **KW), x.T @ x) < 1e-10
    assert linalg.gram(bigarr.open(path), **KW).dtype == np.float64


def test_gram_float32_and_float64_accumulation() -> None:
    x = _data(30_000, 5, dtype=np.float32)
    exact = x.astype(np.float64).T @ x.astype(np.float64)
    g32 = linalg.gram(x, **KW)
    assert g32.dtype == np.float32 and _rel(g32, exact) < F32_RTOL
    g64 = linalg.gram(x, dtype=np.float64, **KW)
    assert g64.dtype == np.float64 and _rel(g64, exact) < 1e-12


def test_gram_of_integers_is_float64_and_of_a_vector_is_1x1() -> None:
    x = np.arange(1000, dtype=np.int32).reshape(500, 2)
    assert np.array_equal(linalg.gram(x, **KW), (x.T @ x).astype(np.float64))
    v = np.arange(10.0)
    assert linalg.gram(v, **KW).shape == (1, 1)


# ---- cov and corrcoef ----------------------------------------------------------------------
@pytest.mark.parametrize("ddof", [None, 0, 1, 3])
def test_cov_matches_numpy(tall: tuple[str, np.ndarray], ddof: int | None) -> None:
    path, x = tall
    got = bigarr.cov(path, rowvar=False, ddof=ddof, **KW)
    assert got.dtype == np.float64 and got.shape == (6, 6)
    assert _rel(got, np.cov(x, rowvar=False, ddof=ddof)) < 1e-10


def test_cov_bias_y_and_1d(tall: tuple[str, np.ndarray]) -> None:
    path, x = tall
    assert _rel(bigarr.cov(path, rowvar=False, bias=True, **KW),
                np.cov(x, rowvar=False, bias=True)) < 1e-10
    y = x[:, :2] * 3 + 1
    assert _rel(bigarr.cov(path, y, rowvar=False, **KW), np.cov(x, y, rowvar=False)) < 1e-10
    got = bigarr.cov(x[:, 0].copy(), **KW)
    assert got.shape == () and _rel(got, np.cov(x[:, 0])) < 1e-10


def test_cov_is_centred_not_e_xx_minus_e_x_squared() -> None:
    """Data at 1e9 with unit spread: E[xx] - E[x]^2 loses every digit; Chan merges keep them."""
    rng = np.random.default_rng(3)
    x = 1e9 + rng.standard_normal((50_000, 3))
    want = np.cov(x - 1e9, rowvar=False)  # exact differences: a precise reference
    assert _rel(bigarr.cov(x, rowvar=False, **KW), want) < 1e-12
    naive = (x.T @ x - len(x) * np.outer(x.mean(0), x.mean(0))) / (len(x) - 1)
    assert _rel(naive, want) > 1e-3  # the test can fail: the naive formula does


def test_cov_of_float32_and_dtype() -> None:
    x = _data(20_000, 4, dtype=np.float32)
    got = bigarr.cov(x, rowvar=False, **KW)
    assert got.dtype == np.float64 and _rel(got, np.cov(x, rowvar=False)) < 1e-10
    got32 = bigarr.cov(x, rowvar=False, dtype=np.float32, **KW)
    assert got32.dtype == np.float32
    assert _rel(got32, np.cov(x, rowvar=False, dtype=np.float32)) < F32_RTOL


def test_corrcoef_matches_numpy(tall: tuple[str, np.ndarray]) -> None:
    path, x = tall
    got = bigarr.corrcoef(path, rowvar=False, **KW)
    assert _rel(got, np.corrcoef(x, rowvar=False)) < 1e-10
    assert np.all(np.abs(got) <= 1)
    assert float(bigarr.corrcoef(x[:, 1].copy(), **KW)) == 1.0


@pytest.mark.parametrize("row", [0, 100])
def test_cov_nan_propagates_like_numpy(row: int) -> None:
    x = _data(5000, 3)
    x[row, 1] = np.nan
    got, want = bigarr.cov(x, rowvar=False, **KW), np.cov(x, rowvar=False)
    assert np.array_equal(np.isnan(got), np.isnan(want))


def test_cov_refuses_rowvar_true_for_2d(tall: tuple[str, np.ndarray]) -> None:
    path, _ = tall
    with pytest.raises(UnsupportedError, match="rowvar=False"):
        bigarr.cov(path, **KW)
    with pytest.raises(UnsupportedError, match="rowvar=False"):
        bigarr.corrcoef(path, **KW)


def test_cov_refusals() -> None:
    x = _data(100, 3)
    with pytest.raises(DtypeError, match="complex"):
        bigarr.cov(x + 1j, rowvar=False, **KW)
    with pytest.raises(ShapeError, match="rows"):
        bigarr.cov(x, x[:50], rowvar=False, **KW)
    with pytest.raises(BudgetError, match="budget"):
        bigarr.cov(np.zeros((10, 600)), rowvar=False, budget="2MiB", threads=2, progress=False)


def test_cov_too_few_rows_warns_like_numpy() -> None:
    x = np.ones((1, 3))
    with pytest.warns(RuntimeWarning, match="Degrees of freedom"):
        got = bigarr.cov(x, rowvar=False, **KW)
    with pytest.warns(RuntimeWarning):
        want = np.cov(x, rowvar=False)
    assert np.array_equal(np.isnan(got), np.isnan(want))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6000), p=st.integers(1, 7), seed=st.integers(0, 2**16),
       shift=st.sampled_from([0.0, 1e3, -1e6]))
def test_cov_hypothesis_shapes(n: int, p: int, seed: int, shift: float) -> None:
    x = _data(n, p, seed) + shift
    want = np.cov(x, rowvar=False)
    got = bigarr.cov(x, rowvar=False, budget="1MiB", threads=2, progress=False)
    assert np.shape(got) == np.shape(want)
    assert _rel(got, want) < 1e-9


@settings(max_examples=50, deadline=None)
@given(n=st.integers(1, 60), cut=st.integers(0, 60), p=st.integers(1, 4),
       seed=st.integers(0, 2**16))
def test_merge_moments_equals_the_whole(n: int, cut: int, p: int, seed: int) -> None:
    x = _data(n, p, seed)
    cut = min(cut, n)

    def state(b: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        if not len(b):
            return 0, np.zeros(p), np.zeros((p, p))
        c = b - b.mean(0)
        return len(b), b.mean(0), c.T @ c

    count, mean, co = merge_moments(state(x[:cut]), state(x[cut:]))
    whole = state(x)
    assert count == n
    assert _rel(mean, whole[1]) < 1e-12 and _rel(co, whole[2]) < 1e-10


# ---- qr, svd, lstsq ------------------------------------------------------------------------
def _signs(r: np.ndarray) -> np.ndarray:
    return np.where(np.diag(r) < 0, -1.0, 1.0)


def test_qr_r_and_q_match_numpy(tall: tuple[str, np.ndarray], tmp_path: Path) -> None:
    path, x = tall
    qn, rn = np.linalg.qr(x)
    d = _signs(rn)
    r = linalg.qr(path, **KW)
    assert np.all(np.diag(r) >= 0)
    assert _rel(r, rn * d[:, None]) < 1e-10
    q, r2 = linalg.qr(path, out_q=tmp_path / "q.npy", **KW)
    assert isinstance(q, bigarr.memmap) and q.shape == x.shape
    assert _rel(q, qn * d) < 1e-10
    assert _rel(np.asarray(q) @ r2, x) < 1e-12
    q.close()


def test_qr_q_and_svd_u_of_an_ill_conditioned_x_are_orthogonal(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """cond(X) ~ 1e7: X @ inv(R) is orthogonal only to ~1e-9; one more TSQR fixes that."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20_000, 6)) * np.logspace(0, -7, 6) + 5
    q, r = linalg.qr(x, out_q=tmp_path / "q.npy", **KW)
    assert np.abs(np.asarray(q).T @ q - np.eye(6)).max() < 1e-13
    assert _rel(np.asarray(q) @ r, x) < 1e-13
    rn = np.linalg.qr(x, mode="r")
    assert _rel(r, rn * _signs(rn)[:, None]) < 1e-10
    q.close()
    u, sv, vh = linalg.svd(x, out_u=tmp_path / "u.npy", **KW)
    assert np.abs(np.asarray(u).T @ u - np.eye(6)).max() < 1e-13
    assert _rel((np.asarray(u) * sv) @ vh, x) < 1e-13
    assert _rel(sv, np.linalg.svd(x, compute_uv=False)) < 1e-10
    u.close()
    import bigarr._compute.tsqr as impl

    monkeypatch.setattr(impl, "REORTHOGONALIZE", np.inf)  # the test can fail: without it
    q1, _ = linalg.qr(x, out_q=tmp_path / "q1.npy", **KW)
    assert np.abs(np.asarray(q1).T @ q1 - np.eye(6)).max() > 1e-12
    q1.close()


def test_qr_float32_in_float64_and_wide() -> None:
    x = _data(5000, 4, dtype=np.float32)
    rn = np.linalg.qr(x.astype(np.float64), mode="r")
    assert _rel(linalg.qr(x, **KW), rn * _signs(rn)[:, None]) < 1e-10
    w = _data(3, 5)  # wide: R is 3 x 5, as numpy's
    rw = np.linalg.qr(w, mode="r")
    assert _rel(linalg.qr(w, **KW), rw * _signs(rw)[:, None]) < 1e-10


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 5000), p=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_qr_and_lstsq_hypothesis_shapes(n: int, p: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, p)) + 3.0 * rng.standard_normal(p)
    rn = np.linalg.qr(x, mode="r")
    r = linalg.qr(x, budget="1MiB", threads=2, progress=False)
    assert r.shape == rn.shape and _rel(r, rn * _signs(rn)[:, None]) < 1e-9
    if n > p + 1:
        y = rng.standard_normal(n)
        got, want = linalg.lstsq(x, y, budget="1MiB", threads=2, progress=False), \
            np.linalg.lstsq(x, y)
        assert got[2] == want[2] and _rel(got[0], want[0]) < 1e-8
        assert _rel(got[1], want[1]) < 1e-9


def test_svd_matches_numpy(tall: tuple[str, np.ndarray], tmp_path: Path) -> None:
    path, x = tall
    un, sn, vhn = np.linalg.svd(x, full_matrices=False)
    u, s, vh = linalg.svd(path, out_u=tmp_path / "u.npy", **KW)
    assert _rel(s, sn) < 1e-10
    flip = np.sign(np.sum(vh * vhn, axis=1))  # the sign of each pair (u_i, v_i)
    assert _rel(vh * flip[:, None], vhn) < 1e-10
    assert _rel(np.asarray(u) * flip, un) < 1e-10
    u.close()
    assert _rel(linalg.svd(path, compute_uv=False, **KW), sn) < 1e-10
    assert linalg.svd(path, **KW).U is None
    with pytest.raises(UnsupportedError, match="full_matrices"):
        linalg.svd(path, full_matrices=True, **KW)


def test_lstsq_matches_numpy(tall: tuple[str, np.ndarray]) -> None:
    path, x = tall
    rng = np.random.default_rng(1)
    for y in (x @ np.arange(6.0) + rng.standard_normal(len(x)),
              rng.standard_normal((len(x), 3))):
        got, want = linalg.lstsq(path, y, **KW), np.linalg.lstsq(x, y)
        assert got[0].shape == want[0].shape and _rel(got[0], want[0]) < 1e-10
        assert got[1].shape == want[1].shape and _rel(got[1], want[1]) < 1e-10
        assert got[2] == want[2] and _rel(got[3], want[3]) < 1e-10


def test_lstsq_rank_deficient_is_minimum_norm() -> None:
    x = _data(3000, 3)
    x = np.column_stack([x, x[:, 0] + x[:, 1]])
    y = np.random.default_rng(2).standard_normal(3000)
    got, want = linalg.lstsq(x, y, **KW), np.linalg.lstsq(x, y)
    assert got[2] == want[2] == 3
    assert got[1].shape == want[1].shape == (0,)
    assert _rel(got[0], want[0]) < 1e-8


# ---- pca and matmul ------------------------------------------------------------------------
def test_pca_matches_the_covariance_eigendecomposition(tall: tuple[str, np.ndarray],
                                                        tmp_path: Path) -> None:
    path, x = tall
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))
    values, vectors = values[::-1], vectors[:, ::-1]
    res = linalg.pca(path, 3, out_scores=tmp_path / "s.npy", **KW)
    assert _rel(res.explained_variance, values[:3]) < 1e-10
    assert _rel(res.explained_variance_ratio, values[:3] / values.sum()) < 1e-10
    assert _rel(res.mean, x.mean(0)) < 1e-12 and res.n_samples == len(x)
    flip = np.sign(np.sum(res.components * vectors[:, :3].T, axis=1))
    assert np.all(flip != 0)
    assert _rel(res.components * flip[:, None], vectors[:, :3].T) < 1e-9
    assert _rel(res.scores, (x - x.mean(0)) @ res.components.T) < 1e-10
    res.scores.close()
    with pytest.raises(ValueError, match="components"):
        linalg.pca(path, 7, **KW)


def test_matmul_streams_into_out(tall: tuple[str, np.ndarray], tmp_path: Path) -> None:
    path, x = tall
    w = np.random.default_rng(4).standard_normal((6, 3))
    assert _rel(linalg.matmul(path, w, **KW), x @ w) < 1e-12
    out = linalg.matmul(path, w, tmp_path / "m.npy", **KW)
    assert isinstance(out, bigarr.memmap) and _rel(out, x @ w) < 1e-12
    out.close()
    v = linalg.matmul(path, w[:, 0], **KW)
    assert v.shape == (len(x),) and _rel(v, x @ w[:, 0]) < 1e-12
    v = linalg.matmul(path, w[:, 0], tmp_path / "v.npy", **KW)  # a vector, as numpy's
    assert v.shape == (len(x),) and _rel(v, x @ w[:, 0]) < 1e-12
    v.close()
    x32 = x.astype(np.float32)
    got = linalg.matmul(x32, w.astype(np.float32), **KW)
    assert got.dtype == np.float32 and _rel(got, x @ w) < F32_RTOL
    with pytest.raises(ShapeError, match="6 rows"):
        linalg.matmul(path, np.ones((5, 2)), **KW)
    with pytest.raises(ShapeError, match="6 rows"):
        linalg.matmul(path, path, **KW)  # two files: b must be 6 x k
    with pytest.raises(BudgetError, match="out="):
        linalg.matmul(path, np.ones((6, 64)), budget="1MiB", threads=1, progress=False)


def test_blas_threads_are_limited_inside_a_run() -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    cores = len(os.sched_getaffinity(0))
    with blas_limit(cores) as limit:
        assert limit == 1
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert all(i["num_threads"] == 1 for i in blas)


def test_public_names() -> None:
    assert bigarr.cov is linalg.cov and bigarr.corrcoef is linalg.corrcoef
    assert sorted(linalg.__all__) == linalg.__all__


# ---- memory --------------------------------------------------------------------------------
def test_peak_rss_within_budget(tmp_path: Path, peak_rss: Callable[..., list[int]]) -> None:
    """128 MiB of float32 (16x the 8 MiB budget): cov and qr stay within budget + 64 MiB."""
    path = tmp_path / "big.npy"
    x = np.lib.format.open_memmap(path, "w+", np.float32, ((128 << 20) // 64, 16))
    step = 1 << 18
    for i in range(0, len(x), step):
        x[i:i + step] = np.float32(i % 977) + np.arange(16, dtype=np.float32)
    x.flush()
    del x
    budget = 8 << 20
    ops = ("bigarr.cov(P, rowvar=False, budget=B, threads=2, progress=False)",
           "linalg.qr(P, budget=B, threads=2, progress=False)")
    setup = f"import bigarr\nfrom bigarr import linalg\nP, B = {str(path)!r}, {budget}"
    for op, grown in zip(ops, peak_rss(setup, *ops), strict=True):  # one interpreter
        assert grown <= budget + (64 << 20), (op, grown)


# ---- weighted cov --------------------------------------------------------------------------
@pytest.mark.parametrize(("bias", "ddof"), [(False, None), (True, None), (False, 0),
                                            (True, 2)])
@pytest.mark.parametrize("kind", ["f", "a", "fa"])
def test_weighted_cov_matches_numpy(tall: tuple[str, np.ndarray], tmp_path: Path, kind: str,
                                    bias: bool, ddof: int | None) -> None:
    path, x = tall
    rng = np.random.default_rng(11)
    fw = rng.integers(0, 4, len(x)) if "f" in kind else None
    aw = rng.uniform(0, 2, len(x)) if "a" in kind else None
    want = np.cov(x, rowvar=False, bias=bias, ddof=ddof, fweights=fw, aweights=aw)
    if aw is not None:  # weights from a file too: they stream with the data
        np.save(tmp_path / "aw.npy", aw)
    got = bigarr.cov(path, rowvar=False, bias=bias, ddof=ddof, fweights=fw,
                     aweights=None if aw is None else tmp_path / "aw.npy", **KW)
    assert got.shape == want.shape and _rel(got, want) < 1e-10


def test_weighted_cov_y_1d_and_far_from_zero() -> None:
    rng = np.random.default_rng(12)
    x = 1e9 + rng.standard_normal((30_000, 2))
    y = rng.standard_normal(30_000)
    aw = rng.uniform(0.5, 1.5, 30_000)
    want = np.cov(x - 1e9, y, rowvar=False, aweights=aw)
    assert _rel(bigarr.cov(x, y, rowvar=False, aweights=aw, **KW), want) < 1e-10
    fw = rng.integers(1, 3, 30_000)
    assert _rel(bigarr.cov(y, fweights=fw, **KW), np.cov(y, fweights=fw)) < 1e-10


def test_weighted_cov_refusals_like_numpy(tall: tuple[str, np.ndarray]) -> None:
    path, x = tall
    n = len(x)
    with pytest.raises(TypeError, match="integers"):
        bigarr.cov(path, rowvar=False, fweights=np.full(n, 0.5), **KW)
    with pytest.raises(ValueError, match=">= 0"):
        bigarr.cov(path, rowvar=False, fweights=-np.ones(n, int), **KW)
    with pytest.raises(ValueError, match=">= 0"):
        bigarr.cov(path, rowvar=False, aweights=-np.ones(n), **KW)
    with pytest.raises(ValueError, match="rows"):
        bigarr.cov(path, rowvar=False, aweights=np.ones(n - 1), **KW)
    with pytest.raises(ValueError, match="1-d"):
        bigarr.cov(path, rowvar=False, aweights=np.ones((n, 2)), **KW)
    with pytest.raises(ValueError, match="sum to zero"):
        bigarr.cov(path, rowvar=False, aweights=np.zeros(n), **KW)
    with pytest.warns(RuntimeWarning, match="Degrees of freedom"):
        got = bigarr.cov(x[:, 0].copy(), fweights=np.r_[1, np.zeros(n - 1, int)], **KW)
    with pytest.warns(RuntimeWarning):
        want = np.cov(x[:, 0], fweights=np.r_[1, np.zeros(n - 1, int)])
    np.testing.assert_array_equal(got, want)  # 0 / 0: NaN, as numpy


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_svd_of_non_finite_data_is_a_bigarr_error_and_numpys(bad: float) -> None:
    # svd once let numpy's bare LinAlgError ("SVD did not converge") escape for such data.
    x = np.random.default_rng(0).standard_normal((500, 4))
    x[123, 2] = bad
    with pytest.raises(bigarr.errors.NonFiniteError) as info:
        bigarr.linalg.svd(x, budget="1MiB", progress=False)
    assert isinstance(info.value, np.linalg.LinAlgError)
