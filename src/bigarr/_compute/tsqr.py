"""TSQR: the QR family of tall-skinny matrices out of core, :func:`qr`, :func:`svd`, :func:`lstsq`.

Split from :mod:`bigarr._compute.linalg`, whose plumbing (streams, sub-blocks, runs, BLAS
thread limits, products streamed to a file) it shares; see that module's docstring for the
per-chunk states, accuracy and BLAS threads. Each chunk of rows is reduced to the R of its QR
on the engine's threads and the Rs are merged by TSQR (R of ``qr([Ra; Rb])``); Q and U are
``X @ inv(R)``, re-orthogonalised with one more TSQR when X is ill-conditioned.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np

from bigarr._compute.linalg import (
    Array,
    _check_state,
    _cols,
    _float_out,
    _hstack,
    _run,
    _streams,
    _sub_rows,
    _write_product,
)
from bigarr._compute.operands import Stream
from bigarr._compute.progress import ProgressArg
from bigarr._compute.runplan import parse_threads
from bigarr._plan.budget import DEFAULT_BUDGET
from bigarr.errors import NonFiniteError, ShapeError, UnsupportedError

__all__ = ["SVDResult", "lstsq", "qr", "svd"]

_DEFAULT_BUDGET = DEFAULT_BUDGET

#: :func:`qr` re-orthogonalises Q (two more passes) when ``eps * cond(X)`` exceeds this many
#: units of Q's own precision.
REORTHOGONALIZE = 64


# ---- TSQR ----------------------------------------------------------------------------------
def _r_of(a: Array) -> Array:
    r: Array = np.asarray(np.linalg.qr(a, mode="r"))
    return r


def _merge_r(a: Array, b: Array) -> Array:
    return _r_of(np.vstack([a, b]))


def _tsqr(streams: list[Stream], *, budget: int | str, threads: int, progress: ProgressArg,
          what: str) -> Array:
    """R of the QR of the streams' columns side by side (float64), by TSQR: R of each
    sub-block stacked under the running R and reduced again."""
    p = sum(_cols(s) for s in streams)
    n = int(streams[0].shape[0])
    if n == 0:
        return np.zeros((0, p))
    fixed = _check_state(what, p, budget, threads, 4)
    rows = _sub_rows(budget, threads, p, 3)

    def kernel(blocks: list[Array]) -> Array:
        r = np.zeros((0, p))
        for lo in range(0, len(blocks[0]), rows):
            sub = _hstack(blocks, lo, min(lo + rows, len(blocks[0])), np.float64)
            r = _r_of(sub) if not len(r) else _merge_r(r, sub)
        return r

    r: Array = _run(what, streams, kernel, _merge_r, budget=budget, threads=threads,
                    progress=progress, scratch=3 * (rows + p) * p * 8, fixed=fixed)
    return r


def _positive_diagonal(r: Array) -> tuple[Array, Array]:
    """R with a non-negative diagonal, and the signs that made it so."""
    signs = np.where(np.diag(r) < 0, -1.0, 1.0)
    return r * signs[:, None], signs


def _inverse(r: Array, what: str) -> Array:
    if r.shape[0] != r.shape[1] or not np.all(np.diag(r)):
        raise ShapeError(
            f"{what} needs X of full column rank (R invertible). Got R of shape {r.shape} with "
            f"diagonal {np.diag(r)!r}: drop dependent columns first.")
    inv: Array = np.linalg.inv(r)
    return inv


def qr(
    x: Any,
    *,
    out_q: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> Any:
    """Tall-skinny QR (TSQR) in one pass: R in memory, and Q to a file when asked.

    Each sub-block of rows is reduced to its R by LAPACK, stacked under the running R and
    reduced again; the chunks' R's merge the same way. R is normalised to a non-negative
    diagonal (numpy's may have either sign: compare up to the signs of R's rows).

    Parameters
    ----------
    x
        N x p, N >= p.
    out_q
        Path of a new ``.npy`` file for the N x p factor Q, computed in a second pass as
        ``X @ inv(R)``; when X is ill-conditioned (``eps * cond(X)`` above 64 units of Q's
        precision), two more passes re-orthogonalise it (a TSQR of that Q), so Q is
        orthogonal to working precision for any X of full rank.
    overwrite
        Replace an existing file at ``out_q``.
    budget, threads, progress
        As :func:`gram`; each pass keeps to the budget.

    Returns
    -------
    numpy.ndarray or tuple
        ``R`` (min(N, p) x p, float64) without ``out_q``; ``(Q, R)`` with it, Q a
        :class:`bigarr.memmap` of x's floating dtype (float64 for integers).

    Raises
    ------
    ShapeError
        With ``out_q``, for X without full column rank.
    BudgetError, DtypeError
        As :func:`gram`.
    """
    nthreads = parse_threads(threads)
    with _streams(x) as streams:
        r = _tsqr(streams, budget=budget, threads=nthreads, progress=progress, what="qr")
        src = np.dtype(streams[0].dtype)
    r, _ = _positive_diagonal(r)
    if out_q is None:
        return r
    return _q_file(x, r, out_q, _float_out(src), budget=budget, threads=nthreads,
                   progress=progress, overwrite=overwrite, what="qr with out_q")


def _ill_conditioned(r: Array, dt: np.dtype[Any]) -> bool:
    """Whether ``X @ inv(R)`` would lose orthogonality beyond ``dt``'s own precision."""
    return bool(np.linalg.cond(r) * np.finfo(np.float64).eps
                > REORTHOGONALIZE * np.finfo(dt).eps)


def _q_file(x: Any, r: Array, out: Any, dt: np.dtype[Any], *, budget: int | str, threads: int,
            progress: ProgressArg, overwrite: bool, what: str) -> tuple[Any, Array]:
    """Q of ``X = Q R`` written to ``out``, and the R that goes with it.

    ``X @ inv(R)`` is orthogonal only to about ``eps * cond(X)``: for an ill-conditioned X one
    more TSQR of that Q1 (well conditioned now), ``Q = Q1 @ inv(R2)`` in place and
    ``R = R2 @ R`` make it orthogonal to working precision.
    """
    q = _write_product(x, _inverse(r, what), out, dt, budget=budget, threads=threads,
                       progress=progress, overwrite=overwrite)
    if _ill_conditioned(r, dt):
        with _streams(q) as streams:
            r2 = _tsqr(streams, budget=budget, threads=threads, progress=progress, what=what)
        r2, _ = _positive_diagonal(r2)
        _write_product(q, _inverse(r2, what), q, dt, budget=budget, threads=threads,
                       progress=progress, overwrite=False)
        r = r2 @ r
    return q, r


class SVDResult(NamedTuple):
    """Tall-skinny SVD, as :func:`numpy.linalg.svd`'s result; ``U`` is a file or ``None``."""

    U: Any
    """The N x p left singular vectors (a :class:`bigarr.memmap`), or ``None`` without
    ``out_u``."""
    S: Array
    """The singular values, descending."""
    Vh: Array
    """The p x p right singular vectors, as rows."""


def svd(
    x: Any,
    full_matrices: bool = False,
    compute_uv: bool = True,
    *,
    out_u: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> Any:
    """Exact SVD of a tall-skinny matrix: TSQR in one pass, then the SVD of the small R.

    ``X = Q R`` and ``R = U_R S V^T`` give ``X = (Q U_R) S V^T``; the singular values and V
    are R's, in memory. U (N x p) is written to ``out_u`` in a second pass as
    ``X @ (inv(R) @ U_R)``. Signs of singular vectors are not unique: compare up to the
    sign of each pair (u_i, v_i).

    Parameters
    ----------
    x
        N x p, N >= p.
    full_matrices
        Must be False (a full N x N U is not tall-skinny).
    compute_uv
        As numpy: False returns only the singular values.
    out_u
        Path of a new ``.npy`` file for U (default: U is not computed and ``U`` is None).
        For an ill-conditioned X, U is made orthogonal as :func:`qr`'s Q is (three more
        passes instead of one).
    overwrite
        Replace an existing file at ``out_u``.
    budget, threads, progress
        As :func:`gram`.

    Returns
    -------
    SVDResult or numpy.ndarray
        ``(U, S, Vh)``, or the singular values with ``compute_uv=False``.

    Raises
    ------
    UnsupportedError
        For ``full_matrices=True``.
    NonFiniteError
        For data holding NaN or inf (also numpy's ``LinAlgError``).
    ShapeError
        For N < p, or with ``out_u`` for X without full column rank.
    BudgetError, DtypeError
        As :func:`gram`.
    """
    if full_matrices:
        raise UnsupportedError(
            "Expected full_matrices=False: a full N x N U of a tall matrix does not fit; the "
            "thin U (N x p) is written to out_u.")
    nthreads = parse_threads(threads)
    with _streams(x) as streams:
        n, p = int(streams[0].shape[0]), _cols(streams[0])
        if n < p:
            raise ShapeError(
                f"Expected a tall matrix (N >= p) for the tall-skinny SVD. Got {n} x {p}: "
                "use numpy.linalg.svd, which fits in memory for so few rows.")
        r = _tsqr(streams, budget=budget, threads=nthreads, progress=progress, what="svd")
        src = np.dtype(streams[0].dtype)
    if not np.isfinite(r).all():  # R of data with NaN or inf; numpy's svd would not converge
        raise NonFiniteError(
            "Expected finite data for the SVD. Got NaN or inf values (R of the data is not "
            "finite); drop or replace them first, for example with bigarr.map_blocks.")
    if not compute_uv:
        s: Array = np.linalg.svd(r, compute_uv=False)
        return s
    r, _ = _positive_diagonal(r)
    dt = _float_out(src)
    if out_u is None:
        ur, s, vh = np.linalg.svd(r, full_matrices=False)
        return SVDResult(None, s, vh)
    if not _ill_conditioned(r, dt):  # U = X @ (inv(R) @ U_R) in one pass
        ur, s, vh = np.linalg.svd(r, full_matrices=False)
        u = _write_product(x, _inverse(r, "svd with out_u") @ ur, out_u, dt, budget=budget,
                           threads=nthreads, progress=progress, overwrite=overwrite)
        return SVDResult(u, s, vh)
    # ill-conditioned: an orthogonal Q first (see qr), then U = Q @ U_R in place
    q, r = _q_file(x, r, out_u, dt, budget=budget, threads=nthreads, progress=progress,
                   overwrite=overwrite, what="svd with out_u")
    ur, s, vh = np.linalg.svd(r, full_matrices=False)
    u = _write_product(q, ur, q, dt, budget=budget, threads=nthreads, progress=progress,
                       overwrite=False)
    return SVDResult(u, s, vh)


def lstsq(
    a: Any,
    b: Any,
    rcond: float | None = None,
    *,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> tuple[Array, Array, int, Array]:
    """Least squares ``min ||a @ x - b||`` in one pass, like :func:`numpy.linalg.lstsq`.

    TSQR of ``[a | b]`` gives ``[[R11, R12], [0, R22]]``: the solution solves ``R11 x = R12``
    (through the SVD of R11, so a rank-deficient ``a`` gets numpy's minimum-norm solution) and
    the squared residuals are the squared column norms of R22. Never the normal equations.

    Parameters
    ----------
    a
        N x p coefficient matrix (a file or any array the engine reads).
    b
        N-vector or N x k right-hand sides, sharing a's rows.
    rcond
        Cut-off ratio for small singular values of ``a`` (default, as numpy:
        machine precision times max(N, p)).
    budget, threads, progress
        As :func:`gram`.

    Returns
    -------
    tuple
        ``(x, residuals, rank, s)`` as numpy: residuals are empty unless rank == p < N.

    Raises
    ------
    ShapeError
        If ``a`` is not 2-d, ``b`` not 1-d or 2-d, or their rows differ.
    BudgetError, DtypeError
        As :func:`gram`.
    """
    nthreads = parse_threads(threads)
    with _streams(a, b) as streams:
        if streams[0].ndim != 2:
            raise ShapeError(f"Expected a as a 2-d N x p matrix. Got shape {streams[0].shape}.")
        n, p = int(streams[0].shape[0]), _cols(streams[0])
        k = _cols(streams[1])
        vector = streams[1].ndim == 1
        r = _tsqr(streams, budget=budget, threads=nthreads, progress=progress, what="lstsq")
    full = np.zeros((p + k, p + k))
    full[:len(r)] = r
    r11, r12, r22 = full[:p, :p], full[:p, p:], full[p:, p:]
    u, s, vh = np.linalg.svd(r11)
    if rcond is None:
        rcond = np.finfo(np.float64).eps * max(n, p)
    keep = s > rcond * (s[0] if len(s) else 0.0)
    rank = int(np.count_nonzero(keep))
    inv_s = np.zeros_like(s)
    inv_s[keep] = 1.0 / s[keep]
    sol = vh.T @ (inv_s[:, None] * (u.T @ r12))
    residuals = np.sum(r22 * r22, axis=0) if rank == p and n > p else np.zeros(0)
    if vector:
        sol = sol[:, 0]
    return sol, residuals, rank, s
