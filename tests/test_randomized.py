"""bigarr.linalg.randomized_svd and pca(method="randomized") on matrices of known spectra.

X = U diag(s) V.T with U, V random orthonormal and s chosen: with a fast-decaying spectrum
the randomized answer is exact to working precision (1e-10 relative to s[0], vectors up to
sign); with a slow (1/i) one, the spectral error ``||X - U S Vh||`` stays within 1.5 s[k], the
documented tolerance (Halko et al.'s bound, a small multiple of the best possible s[k]). A
2 MiB budget puts Q in a temporary file, so the TSQR orthonormalisation is exercised.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr import linalg
from bigarr.errors import ArgumentError, BudgetError, NonFiniteError, ShapeError

KW: dict[str, Any] = {"threads": 2, "progress": False}


def known(n: int, p: int, s: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                  np.ndarray]:
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((n, len(s))))[0]
    v = np.linalg.qr(rng.standard_normal((p, len(s))))[0]
    return (u * s) @ v.T, u, v


def _aligned(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """``got``'s rows with the signs of ``want``'s."""
    signs = np.sign(np.sum(got * want, axis=1))
    assert np.all(signs != 0)
    return got * signs[:, None]


@pytest.mark.parametrize("budget", ["64MiB", "2MiB"], ids=["q-in-memory", "q-in-a-file"])
@pytest.mark.parametrize("shape", [(6000, 40), (300, 2000)], ids=["tall", "wide"])
def test_fast_spectrum_is_exact(shape: tuple[int, int], budget: str, tmp_path: Path) -> None:
    n, p = shape
    s = 10.0 * 0.3 ** np.arange(min(n, p, 30))
    x, u, v = known(n, p, s)
    np.save(tmp_path / "x.npy", x)
    res = linalg.randomized_svd(tmp_path / "x.npy", 5, random_state=1, budget=budget,
                                out_u=tmp_path / "u.npy", **KW)
    assert np.max(np.abs(res.S - s[:5])) / s[0] < 1e-10
    vh = _aligned(res.Vh, v[:, :5].T)
    assert np.max(np.abs(vh - v[:, :5].T)) < 1e-10
    assert isinstance(res.U, bigarr.memmap) and res.U.shape == (n, 5)
    ut = _aligned(np.asarray(res.U).T, u[:, :5].T)
    assert np.max(np.abs(ut - u[:, :5].T)) < 1e-10
    res.U.close()
    assert sorted(f.name for f in tmp_path.iterdir()) == ["u.npy", "x.npy"]


def test_agrees_with_numpy_svd_and_u_in_memory() -> None:
    x, _, _ = known(3000, 50, 2.0 ** -np.arange(50.0), seed=2)
    u0, s0, vh0 = np.linalg.svd(x, full_matrices=False)
    res = linalg.randomized_svd(x, 8, random_state=0, budget="64MiB", **KW)
    assert np.max(np.abs(res.S - s0[:8])) / s0[0] < 1e-10
    assert np.max(np.abs(_aligned(res.Vh, vh0[:8]) - vh0[:8])) < 1e-10
    assert res.U is not None and res.U.dtype == np.float64
    assert np.max(np.abs(_aligned(res.U.T, u0[:, :8].T) - u0[:, :8].T)) < 1e-10
    rows = np.arange(8)
    assert np.all(res.Vh[rows, np.argmax(np.abs(res.Vh), axis=1)] > 0)  # the sign convention


def test_slow_spectrum_is_within_the_documented_bound() -> None:
    s = 1.0 / np.arange(1, 101)
    x, _, _ = known(1500, 100, s, seed=3)
    k = 10
    res = linalg.randomized_svd(x, k, random_state=0, budget="64MiB", **KW)
    err = np.linalg.norm(x - (res.U * res.S) @ res.Vh, 2)
    assert s[k] <= err * (1 + 1e-12) and err <= 1.5 * s[k]
    assert np.all(np.abs(res.S - s[:k]) <= 0.5 * s[k])
    crude = linalg.randomized_svd(x, k, n_oversamples=0, n_iter=0, random_state=0,
                                  budget="64MiB", **KW)
    crude_err = np.linalg.norm(x - (crude.U * crude.S) @ crude.Vh, 2)
    assert crude_err > err  # the power iterations matter: the test can fail


def test_rank_deficient_sketch_in_a_file() -> None:
    """Rank 3 < l = 13: the sketch's dependent directions are dropped, not inverted."""
    s = np.array([5.0, 2.0, 1.0])
    x, _, v = known(5000, 30, s, seed=4)
    res = linalg.randomized_svd(x, 5, random_state=0, budget="2MiB", **KW)
    assert res.U is None  # Q went to a file: U only through out_u
    assert np.max(np.abs(res.S[:3] - s)) < 1e-10 and np.all(res.S[3:] < 1e-10)
    assert np.max(np.abs(_aligned(res.Vh[:3], v.T) - v.T)) < 1e-10


def test_float32_tolerance() -> None:
    """float32 data is computed in float64: exact for the float32 matrix (1e-10), and U is
    float32 (its own rounding, 1e-6)."""
    x, _, _ = known(4000, 30, 4.0 ** -np.arange(30.0), seed=5)
    x32 = x.astype(np.float32)
    u0, s0, _ = np.linalg.svd(x32.astype(np.float64), full_matrices=False)
    res = linalg.randomized_svd(x32, 4, random_state=0, budget="64MiB", **KW)
    assert np.max(np.abs(res.S - s0[:4])) / s0[0] < 1e-10
    assert res.U is not None and res.U.dtype == np.float32
    assert np.max(np.abs(_aligned(res.U.T, u0[:, :4].T) - u0[:, :4].T)) < 1e-6


def test_random_state_is_reproducible() -> None:
    x, _, _ = known(2000, 100, 1.0 / np.arange(1, 101), seed=6)
    a = linalg.randomized_svd(x, 5, random_state=7, budget="64MiB", **KW)
    b = linalg.randomized_svd(x, 5, random_state=7, budget="64MiB", **KW)
    assert np.array_equal(a.S, b.S) and np.array_equal(a.Vh, b.Vh)


def test_refusals() -> None:
    x = np.ones((100, 10))
    with pytest.raises(ShapeError, match=r"\[1, 10\]"):
        linalg.randomized_svd(x, 11, **KW)
    with pytest.raises(ArgumentError, match="n_iter"):
        linalg.randomized_svd(x, 2, n_iter=-1, **KW)
    with pytest.raises(ArgumentError, match="k, the number"):
        linalg.randomized_svd(x, 2.0, **KW)  # type: ignore[arg-type]
    with pytest.raises(ShapeError, match="N x p"):
        linalg.randomized_svd(np.ones(10), 1, **KW)
    with pytest.raises(BudgetError, match="budget"):
        linalg.randomized_svd(np.ones((10, 100_000)), 5, budget="1MiB", **KW)


@pytest.mark.parametrize("budget", ["64MiB", "2MiB"])
def test_pca_randomized_matches_exact(budget: str, tmp_path: Path) -> None:
    s = 10.0 * 0.3 ** np.arange(20)
    x, _, _ = known(5000, 20, s, seed=8)
    x = x + np.linspace(-3, 1e3, 20)  # far from zero: centring is implicit and exact
    exact = linalg.pca(x, 4, budget="64MiB", **KW)
    fast = linalg.pca(x, 4, method="randomized", random_state=0, budget=budget,
                      out_scores=tmp_path / "s.npy", **KW)
    assert np.max(np.abs(fast.mean - exact.mean)) < 1e-10 * np.max(np.abs(exact.mean))
    assert np.max(np.abs(fast.explained_variance - exact.explained_variance)) \
        < 1e-9 * exact.explained_variance[0]
    assert np.max(np.abs(fast.explained_variance_ratio - exact.explained_variance_ratio)) < 1e-9
    assert np.max(np.abs(fast.components - exact.components)) < 1e-8  # same sign convention
    assert fast.scores is not None and fast.scores.shape == (5000, 4)
    want = (x - x.mean(0)) @ exact.components.T
    assert np.max(np.abs(np.asarray(fast.scores) - want)) < 1e-8 * np.max(np.abs(want))
    fast.scores.close()
    with pytest.raises(ArgumentError, match="method"):
        linalg.pca(x, 4, method="fast", **KW)


def test_pca_randomized_on_a_wide_matrix() -> None:
    """p = 3000: the exact path would need a 3000 x 3000 covariance; randomized needs p x l."""
    s = 5.0 * 0.2 ** np.arange(50)
    x, _, _ = known(200, 3000, s, seed=9)
    res = linalg.pca(x, 3, method="randomized", random_state=0, budget="4MiB", **KW)
    want = np.linalg.svd(x - x.mean(0), compute_uv=False)[:3] ** 2 / 199
    assert np.max(np.abs(res.explained_variance - want)) < 1e-10 * want[0]
    assert res.components.shape == (3, 3000)


# ---- memory --------------------------------------------------------------------------------
def _rss_file(path: Path, nbytes: int, cols: int) -> None:
    x = np.lib.format.open_memmap(path, "w+", np.float32, (nbytes // (4 * cols), cols))
    step = 1 << 16
    for i in range(0, len(x), step):
        x[i:i + step] = np.random.default_rng(i).standard_normal((len(x[i:i + step]), cols),
                                                                 np.float32)
    x.flush()
    del x


def _peak_rss(peak_rss: Callable[..., list[int]], tmp_path: Path, budget: int, size: int, *,
              quick: bool) -> None:
    path, other = tmp_path / "big.npy", tmp_path / "c.npy"
    _rss_file(path, size, 64)
    _rss_file(other, size // 8, 8)
    ops = (
        "linalg.randomized_svd(P, 5, n_iter=1, random_state=0, tmpdir=T, budget=B, "
        "threads=2, progress=False)",
        "linalg.pca(P, 3, method='randomized', n_iter=1, tmpdir=T, budget=B, threads=2, "
        "progress=False)",
        "linalg.matmul(bigarr.open(P).T, C, budget=B, threads=2, progress=False)",
    )
    ops = ops[::2] if quick else ops
    setup = (f"import bigarr\nfrom bigarr import linalg\n"
             f"P, C, T, B = {str(path)!r}, {str(other)!r}, {str(tmp_path)!r}, {budget}")
    for op, grown in zip(ops, peak_rss(setup, *ops), strict=True):  # one interpreter
        assert grown <= budget + (64 << 20), (op, grown)


def test_peak_rss_within_budget(tmp_path: Path, peak_rss: Callable[..., list[int]]) -> None:
    """128 MiB of float32 (16x an 8 MiB budget; Q goes to a temporary file): randomized_svd
    and matmul(a.T, b) (the slow test adds randomized PCA, at 32 MiB and 512 MiB)."""
    _peak_rss(peak_rss, tmp_path, 8 << 20, 128 << 20, quick=True)


@pytest.mark.slow
def test_peak_rss_within_budget_512mib(tmp_path: Path,
                                       peak_rss: Callable[..., list[int]]) -> None:
    """512 MiB of float32, 16x a 32 MiB budget."""
    _peak_rss(peak_rss, tmp_path, 32 << 20, 512 << 20, quick=False)


def test_blas_threads_are_limited_in_every_pass(tmp_path: Path) -> None:
    """Engine threads x BLAS threads <= cores in each pass of the new functions: the progress
    callback runs on the consumer thread while a pass computes, and sees BLAS's limit."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    cores = len(os.sched_getaffinity(0))
    seen: list[int] = []

    def record(_event: Any) -> None:
        seen.extend(i["num_threads"] for i in threadpoolctl.threadpool_info()
                    if i["user_api"] == "blas")

    x, _, _ = known(2000, 40, 0.5 ** np.arange(40.0))
    np.save(tmp_path / "x.npy", x)
    opts: dict[str, Any] = {"budget": "4MiB", "threads": cores, "progress": record}
    linalg.pca(tmp_path / "x.npy", 3, method="randomized", n_iter=1,
               out_scores=tmp_path / "s.npy", **opts).scores.close()
    linalg.matmul(bigarr.open(tmp_path / "x.npy").T, tmp_path / "x.npy", **opts)
    np.save(tmp_path / "a.npy", np.ones((2000, 400)))
    np.save(tmp_path / "b.npy", np.ones((400, 500)))
    assert linalg.plan_tiles((2000, 400), (400, 500), 8, 8, 8, "4MiB", cores).passes > 1
    linalg.matmul(tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "o.npy", **opts).close()
    assert seen and max(seen) * cores <= max(cores, 1)


def test_pca_example_runs_randomized(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parent.parent / "examples" / "pca.py"
    proc = subprocess.run([sys.executable, str(script), "--size", "8MiB", "--budget", "4MiB",
                           "--threads", "2", "--dir", str(tmp_path), "--method", "randomized"],
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "summary: randomized PCA" in proc.stdout
    angle = float(proc.stdout.split("to within ")[1].split()[0])
    assert angle < 1.0, proc.stdout  # the true 3-d subspace, found by the randomized method
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("state", ["x", -1, 1.5])
def test_randomized_svd_bad_random_state_is_argument_error(state: Any) -> None:
    """Regression: random_state='x' escaped as a bare TypeError, -1 as a bare ValueError."""
    x = np.random.default_rng(0).standard_normal((40, 5))
    with pytest.raises(ArgumentError, match="random_state"):
        linalg.randomized_svd(x, 2, random_state=state, **KW)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # numpy's, on NaN arithmetic
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("budget", ["256MiB", "2MiB"])
def test_randomized_svd_non_finite_data_is_a_bigarr_error(bad: float, budget: str) -> None:
    """Regression: NaN/inf data escaped as numpy's LinAlgError. Now a NonFiniteError, which is
    still a numpy LinAlgError (what bigarr.linalg.svd raises for such data, as numpy does)."""
    x = np.random.default_rng(0).standard_normal((20_000, 6))
    x[123, 2] = bad
    with pytest.raises(NonFiniteError, match="NaN or inf"):
        linalg.randomized_svd(x, 2, budget=budget, **KW)
    with pytest.raises(np.linalg.LinAlgError):
        linalg.randomized_svd(x, 2, budget=budget, **KW)
    with pytest.raises(NonFiniteError):
        linalg.pca(x, 2, method="randomized", budget=budget, **KW)


def test_randomized_svd_tmpdir_must_be_a_folder(tmp_path: Path) -> None:
    """Regression: tmpdir= a file or a missing folder escaped as NotADirectoryError or
    FileNotFoundError; it is checked as bigarr.sort checks its tmpdir=."""
    x = np.random.default_rng(0).standard_normal((40, 5))
    afile = tmp_path / "f.npy"
    afile.write_bytes(b"")
    for bad in (afile, tmp_path / "missing"):
        with pytest.raises(ArgumentError, match="tmpdir"):
            linalg.randomized_svd(x, 2, tmpdir=bad, **KW)
