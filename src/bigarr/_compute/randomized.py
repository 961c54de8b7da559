"""Randomized SVD and PCA out of core (Halko, Martinsson and Tropp, 2011), every pass streamed.

For an N x p matrix X (N huge, p anything the p x l states fit), with ``l = k + oversamples``:

====================================  ============================================  ==========
step                                  how                                           passes
====================================  ============================================  ==========
``Y = X @ Omega``, Omega p x l        map_blocks, rows of X -> rows of Y            1 over X
``Q = orth(Y)``                       in memory, or TSQR + ``Y @ pinv(R)`` in place  0 (2-4 over Y)
power iteration, ``n_iter`` times:    ``Z = X.T @ Q`` one pass (each chunk's         2 over X
``Q = orth(X @ orth(X.T @ Q))``       ``Xb.T @ Qb``, added); ``Z`` orthonormalised
                                      in memory; ``Y = X @ Z`` as above             each
``B = Q.T @ X``                       as the streamed ``(X.T @ Q).T``               1 over X
``B = U_B S V^T``, ``U = Q @ U_B``    in memory; U streamed from Q when asked      (1 over Q)
====================================  ============================================  ==========

``Q`` (N x l, float64) stays in memory when it takes at most a quarter of the budget, else it
lives in a temporary ``.npy`` file (``tmpdir``). Orthonormalising a file Q: TSQR gives R, and
``Y @ V_R diag(1/S_R)`` (the pseudo-inverse of R through its SVD, directions with singular
values under 1e-12 of the largest dropped as zero columns, so a rank-deficient sketch is fine)
is orthonormal to about ``eps * cond(Y)``; when that condition number exceeds 1e3, one more
round makes it orthonormal to working precision (as :func:`bigarr._compute.tsqr.qr` does).

PCA centres implicitly: every product reads ``X - mean`` sub-block by sub-block, after one
pass of per-column moments (Chan merges) that also gives the total variance for the ratios.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from bigarr._compute.linalg import (
    Array,
    PCAResult,
    _cols,
    _float_out,
    _run,
    _streams,
    _write_product,
    blas_limit,
)
from bigarr._compute.mapblocks import map_blocks
from bigarr._compute.matmul import _product_rows, check_bytes, crossprod
from bigarr._compute.operands import Stream
from bigarr._compute.partials import Var
from bigarr._compute.progress import ProgressArg
from bigarr._compute.runplan import parse_threads
from bigarr._compute.sort import _temp_folder
from bigarr._compute.tsqr import SVDResult, _tsqr
from bigarr._core.array import memmap
from bigarr._plan.budget import DEFAULT_BUDGET, parse_budget
from bigarr.errors import ArgumentError, NonFiniteError, ShapeError

__all__ = ["randomized_pca", "randomized_svd"]

_DEFAULT_BUDGET = DEFAULT_BUDGET
#: Singular values of a sketch's R below this fraction of the largest are dropped.
RANK_TOL = 1e-12
#: A file Q is orthonormalised a second time when its sketch's condition exceeds this.
REORTHONORMALIZE = 1e3


def _product(x: Any, w: Array, out: Any, *, mean: Array | None, budget: int, threads: int,
             progress: ProgressArg) -> Any:
    """``(x - mean) @ w`` in float64, streamed into ``out`` (an array, or a new file path)."""
    width = int(w.shape[0])
    rows = _product_rows(budget, threads, width + int(w.shape[1]))

    def product(block: Array) -> Array:
        b = block.reshape(len(block), -1)
        res = np.empty((len(b), w.shape[1]))
        for lo in range(0, len(b), rows):
            sub = np.asarray(b[lo:lo + rows], dtype=np.float64)
            if mean is not None:
                sub = sub - mean
            res[lo:lo + rows] = sub @ w
        return res

    with blas_limit(threads):
        return map_blocks(product, x, out=out, dtype=np.float64, budget=budget,
                          threads=threads, progress=progress)


def _orthonormalize(q: Any, *, budget: int, threads: int, progress: ProgressArg) -> None:
    """Make the columns of ``q`` (N x l, in memory or a file) orthonormal, in place, spanning
    the same space (dependent directions become zero columns)."""
    if not isinstance(q, memmap):
        q[:] = np.linalg.qr(q)[0]
        return
    for _round in range(2):
        with _streams(q) as streams:
            r = _tsqr(streams, budget=budget, threads=threads, progress=progress,
                      what="randomized_svd")
        _u, s, vh = np.linalg.svd(r)
        keep = s > RANK_TOL * s[0] if len(s) and s[0] > 0 else np.zeros(len(s), bool)
        w = np.zeros((q.shape[1], q.shape[1]))
        w[:, :int(keep.sum())] = vh[keep].T / s[keep]
        _write_product(q, w, q, np.float64, budget=budget, threads=threads,
                       progress=progress, overwrite=False)
        if not keep.any() or s[0] / s[keep][-1] <= REORTHONORMALIZE:
            return


def _parse_k(k: Any, limit: int, what: str) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ArgumentError(f"Expected {what} as an int. Got {k!r}.")
    if not 1 <= k <= limit:
        raise ShapeError(f"Expected {what} in [1, {limit}]. Got {k}.")
    return int(k)


def _parse_count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ArgumentError(f"Expected {name} as a non-negative int. Got {value!r}.")
    return int(value)


def _parse_random_state(random_state: Any) -> np.random.Generator:
    """The generator of Omega; anything :func:`numpy.random.default_rng` refuses is an
    ArgumentError (numpy raises TypeError or ValueError)."""
    try:
        return np.random.default_rng(random_state)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(
            "Expected random_state as None, a non-negative int (or a sequence of them), a "
            f"numpy SeedSequence, BitGenerator or Generator. Got {random_state!r} ({exc})."
        ) from None


def _non_finite(what: str) -> NonFiniteError:
    return NonFiniteError(
        f"{what}: x holds NaN or inf values (or values whose products overflow), so its sketch "
        "is not finite and it has no SVD. Replace them first (for example with "
        "bigarr.map_blocks(np.nan_to_num, x, out=...)).")


def _sign_fix(u: Array | None, vh: Array) -> tuple[Array | None, Array]:
    """Each row of ``vh`` with its largest-magnitude entry positive (and ``u``'s columns to
    match): a deterministic sign for singular vectors."""
    flip = np.sign(vh[np.arange(len(vh)), np.argmax(np.abs(vh), axis=1)])
    flip[flip == 0] = 1.0
    return (None if u is None else u * flip), vh * flip[:, None]


def _sketch(x: Any, s: Stream, k: int, n_oversamples: int, n_iter: int,
            random_state: np.random.Generator,
            mean: Array | None, *, budget: int, threads: int, progress: ProgressArg,
            tmpdir: str | os.PathLike[str] | None) -> tuple[Array, Array, Array, Any]:
    """The randomized range finder and the small SVD: ``(U_B[:, :k], S[:k], Vh[:k], Q)``.

    ``Q`` is an in-memory array or an open memmap of a temporary file inside ``folder``.
    """
    n, p = int(s.shape[0]), _cols(s)
    ell = min(k + n_oversamples, n, p)
    check_bytes("randomized_svd", (threads + 5) * p * ell * 8, budget)
    omega = random_state.standard_normal((p, ell))
    q_bytes = n * ell * 8
    if q_bytes <= budget // 4:
        q: Any = np.empty((n, ell))
        rest = budget - q_bytes
        _product(x, omega, q, mean=mean, budget=rest, threads=threads, progress=progress)
    else:
        assert tmpdir is not None
        rest = budget
        q = _product(x, omega, os.path.join(tmpdir, "q.npy"), mean=mean, budget=rest,
                     threads=threads, progress=progress)
    _orthonormalize(q, budget=rest, threads=threads, progress=progress)
    for _ in range(n_iter):
        with _streams(x, q) as (sx, sq):
            z = crossprod(sx, sq, mean=mean, budget=rest, threads=threads, progress=progress,
                          what="randomized_svd")
        z = np.linalg.qr(z)[0]
        _product(x, z, q, mean=mean, budget=rest, threads=threads, progress=progress)
        _orthonormalize(q, budget=rest, threads=threads, progress=progress)
    with _streams(x, q) as (sx, sq):
        bt = crossprod(sx, sq, mean=mean, budget=rest, threads=threads, progress=progress,
                       what="randomized_svd")
    if not np.isfinite(bt).all():
        raise _non_finite("randomized_svd")
    ub, sv, vh = np.linalg.svd(bt.T, full_matrices=False)
    return ub[:, :k], sv[:k], vh[:k], q


def randomized_svd(
    x: Any,
    k: int,
    n_oversamples: int = 10,
    n_iter: int = 2,
    random_state: Any = None,
    *,
    out_u: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    tmpdir: str | os.PathLike[str] | None = None,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> SVDResult:
    """Truncated SVD of a tall, wide or huge matrix by randomized subspace iteration.

    Halko, Martinsson and Tropp's range finder (their algorithm 4.4): ``Q = orth(X @ Omega)``
    for a Gaussian p x l Omega (``l = k + n_oversamples``), refined by ``n_iter`` power
    iterations ``Q = orth(X @ orth(X.T @ Q))``, then the SVD of the small ``Q.T @ X``. Every
    product streams the rows of X once on the engine, within the budget: ``2 + 2 * n_iter``
    passes over X in all (see the module docstring for the table).

    Accuracy: the singular values and vectors agree with the exact SVD's to working
    precision (float64: about 1e-12 relative, to the largest singular value) when the spectrum
    decays fast, with ``s[k + n_oversamples] / s[k - 1]`` below about 1e-6 after the power
    iterations amplify the gap (``(s_l / s_k) ** (2 * n_iter + 1)``). For a slowly decaying
    spectrum the result is an approximation: Halko et al. bound the expected spectral error
    ``||X - U S Vh||`` by a small multiple of ``s[k]``, the best possible; the tests check it
    within 1.5 ``s[k]`` on a 1/i spectrum with the defaults. float32 data is computed in float64.

    Parameters
    ----------
    x
        N x p, any shape (tall, wide or square); a file or any array the engine reads.
    k
        Number of singular triplets, 1 <= k <= min(N, p).
    n_oversamples
        Extra sketch columns beyond ``k`` (scikit-learn's name and default).
    n_iter
        Power iterations; each costs two passes over X.
    random_state
        Seed for Omega (anything :func:`numpy.random.default_rng` takes).
    out_u
        Path of a new ``.npy`` file for U (N x k). Without it, U is returned in memory when
        the sketch Q (N x l float64) took at most a quarter of the budget, else ``None``.
    overwrite
        Replace an existing file at ``out_u``.
    tmpdir
        Folder for Q when it does not fit a quarter of the budget (N x l float64, deleted at
        the end; default: :func:`tempfile.gettempdir`).
    budget, threads, progress
        As :func:`bigarr.linalg.gram`; every pass keeps to the budget.

    Returns
    -------
    SVDResult
        ``(U, S, Vh)``: k singular values, descending; Vh k x p; signs fixed so that each
        row of Vh has its largest-magnitude entry positive. A zero trailing singular value
        (X of rank below k) comes with arbitrary vectors.

    Raises
    ------
    ArgumentError
        If ``k``, ``n_oversamples`` or ``n_iter`` are not integers (non-negative), if
        :func:`numpy.random.default_rng` refuses ``random_state``, or if ``tmpdir`` is not an
        existing folder.
    NonFiniteError
        If ``x`` holds NaN or inf values (its sketch is not finite); also a
        ``numpy.linalg.LinAlgError``, as :func:`bigarr.linalg.svd` raises for such data.
    ShapeError
        If ``k`` is not in [1, min(N, p)], or ``x`` is not 2-d.
    BudgetError
        If the p x l states (Omega, the products in flight) do not fit the budget.
    DtypeError
        For non-real data.
    """
    return _randomized(x, k, n_oversamples, n_iter, random_state, center=False, want_u=True,
                       out_u=out_u, overwrite=overwrite, tmpdir=tmpdir, budget=budget,
                       threads=threads, progress=progress)[0]


def _randomized(x: Any, k: int, n_oversamples: int, n_iter: int, random_state: Any, *,
                center: bool, want_u: bool, out_u: Any, overwrite: bool, tmpdir: Any,
                budget: int | str, threads: int | None,
                progress: ProgressArg) -> tuple[SVDResult, Any]:
    nthreads = parse_threads(threads)
    total = parse_budget(budget)
    n_over, iters = _parse_count(n_oversamples, "n_oversamples"), _parse_count(n_iter, "n_iter")
    rng = _parse_random_state(random_state)
    folder_in = None if tmpdir is None else _temp_folder(tmpdir, None)  # as bigarr.sort's
    with _streams(x) as (s,):
        if s.ndim != 2:
            raise ShapeError(f"Expected an N x p matrix. Got shape {s.shape}.")
        n, p = int(s.shape[0]), _cols(s)
        kk = _parse_k(k, min(n, p), "k, the number of components")
        src = np.dtype(s.dtype)
        moments = _column_moments(s, budget=total, threads=nthreads, progress=progress) \
            if center else None
        mean = None if moments is None else moments[1]
        with tempfile.TemporaryDirectory(dir=folder_in, prefix="bigarr-rsvd-") as folder:
            try:
                ub, sv, vh, q = _sketch(x, s, kk, n_over, iters, rng, mean,
                                        budget=total, threads=nthreads, progress=progress,
                                        tmpdir=folder)
            except np.linalg.LinAlgError as exc:  # a NaN in a small SVD of the sketch
                if isinstance(exc, NonFiniteError):
                    raise
                raise _non_finite("randomized_svd") from None
            u_small, vh = _sign_fix(ub, vh)
            assert u_small is not None
            u: Any = None
            try:
                if out_u is not None:
                    u = _write_product(q, u_small, out_u, _float_out(src), budget=total,
                                       threads=nthreads, progress=progress,
                                       overwrite=overwrite)
                elif want_u and not isinstance(q, memmap):
                    u = (q @ u_small).astype(_float_out(src), copy=False)
            finally:
                if isinstance(q, memmap):
                    q.close()
    return SVDResult(u, sv, vh), moments


# ---- PCA -----------------------------------------------------------------------------------
ColumnMoments = tuple[int, Array, Array]
"""Count, column means and column sums of squared deviations (float64)."""


_CHAN = Var(ddof=0)
"""The one owner of Chan et al.'s parallel update (:meth:`bigarr._compute.partials.Var.combine`)."""


def _merge_columns(a: ColumnMoments, b: ColumnMoments) -> ColumnMoments:
    """Two states merged column by column by :data:`_CHAN` (with a shift of 0: the moments
    are already relative to the first row); an empty side is the other state, exactly."""
    if a[0] == 0:
        return b
    if b[0] == 0:
        return a
    zero = np.zeros(())
    n, _shift, mean, m2 = _CHAN.combine((np.asarray(a[0]), zero, a[1], a[2]),
                                        (np.asarray(b[0]), zero, b[1], b[2]))
    return int(n), mean, m2


def _column_moments(s: Stream, *, budget: int, threads: int,
                    progress: ProgressArg) -> ColumnMoments:
    """One pass: count, column means and sums of squared deviations, relative to the first
    row (as :func:`bigarr._compute.linalg.cov` keeps them, for data far from zero)."""
    p = _cols(s)
    rows = _product_rows(budget, threads, 2 * p)
    shift = np.array(s.head(1), dtype=np.float64).reshape(-1)  # a copy: head may be mapped
    shift[~np.isfinite(shift)] = 0.0

    def kernel(blocks: list[Array]) -> ColumnMoments:
        b = blocks[0].reshape(len(blocks[0]), -1)
        state: ColumnMoments = (0, np.zeros(p), np.zeros(p))
        for lo in range(0, len(b), rows):
            sub = np.asarray(b[lo:lo + rows], dtype=np.float64) - shift
            mean = sub.mean(axis=0)
            sub -= mean
            state = _merge_columns(state, (len(sub), mean, np.einsum("ij,ij->j", sub, sub)))
        return state

    n, mean, m2 = _run("pca", [s], kernel, _merge_columns, budget=budget, threads=threads,
                       progress=progress, scratch=2 * rows * p * 8,
                       fixed=check_bytes("pca", (threads + 3) * 2 * p * 8, budget))
    return n, mean + shift, m2


def randomized_pca(x: Any, k: int, *, n_oversamples: int, n_iter: int, random_state: Any,
                   tmpdir: Any, budget: int | str, threads: int | None,
                   progress: ProgressArg) -> PCAResult:
    """PCA by :func:`randomized_svd` of the implicitly centred X (one more pass for the
    column moments); the scores are left to :func:`bigarr._compute.linalg.pca`."""
    res, moments = _randomized(x, k, n_oversamples, n_iter, random_state, center=True,
                               want_u=False, out_u=None, overwrite=False, tmpdir=tmpdir,
                               budget=budget, threads=threads, progress=progress)
    n, mean, m2 = moments
    variance = res.S ** 2 / (n - 1)
    total = float(m2.sum()) / (n - 1)
    ratio = variance / total if total > 0 else np.zeros(len(variance))
    return PCAResult(res.Vh, variance, ratio, mean, int(n))
