"""Linear algebra out of core, for tall-skinny matrices: N x p files with N huge and p small.

(Siblings built on this module's plumbing: :mod:`bigarr._compute.tsqr` (the QR family),
:mod:`bigarr._compute.randomized` (randomized SVD and PCA), :mod:`bigarr._compute.matmul`
(products).)

Everything here streams the rows of a file once through the engine
(:func:`bigarr._compute.runplan.plan_run` and :func:`bigarr._compute.engine.execute`), with
chunks of whole rows, and keeps only p x p states in memory:

=================  ===================================  =======================================
function           per-chunk state                      merge
=================  ===================================  =======================================
gram               ``b.T @ b`` (syrk)                   add
cov, corrcoef,     count, column means, centred         Chan et al.'s pairwise update for
pca                cross-products ``(b - m).T @ (b-m)`` co-moments (never E[xx] - E[x]E[x])
weighted cov       the same, weighted (``sum(w)`` as    the same update, and
                   the count), and ``sum(w * aw)``      ``sum(w * aw)`` added
qr, svd, lstsq     R of ``qr(b)`` (TSQR)                R of ``qr([Ra; Rb])``
                   (in :mod:`bigarr._compute.tsqr`)
=================  ===================================  =======================================

Inside a chunk the kernels work through sub-blocks of rows, so the working memory per thread
(a float64 copy of a sub-block, LAPACK's copy for QR) is fixed and planned as scratch.

BLAS threads: engine threads times BLAS threads must not exceed the cores, so while a run
computes, BLAS is limited to ``max(1, cores // threads)`` threads with :mod:`threadpoolctl`
(the ``linalg`` extra); without it BLAS is left as configured.

Accuracy: float64 inputs agree with numpy.linalg to about 1e-12 relative on well-conditioned
data; float32 inputs are computed in float64 by cov, corrcoef, pca, qr, svd and lstsq (so they
agree with numpy's float64 answer for the float32 data), and in float32 by :func:`gram` and
:func:`matmul` unless ``dtype=np.float64`` (about 1e-5 relative). Q and U are computed as
``X @ inv(R)`` (and ``X @ inv(R) @ U_R``): their orthogonality degrades with X's condition
number (about ``eps * cond(X)``), unlike Householder Q, so :func:`qr` re-orthogonalises an
ill-conditioned Q (and :func:`svd` its U) with one more TSQR (two more passes).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigarr._compute.engine import execute
from bigarr._compute.mapblocks import map_blocks
from bigarr._compute.operands import Stream, parse_operand
from bigarr._compute.progress import Progress, ProgressArg
from bigarr._compute.runplan import default_threads, parse_threads, plan_run
from bigarr._os.geometry import format_bytes
from bigarr._plan.budget import DEFAULT_BUDGET, parse_budget
from bigarr._plan.chunks import Chunk
from bigarr.errors import (
    ArgumentError,
    BudgetError,
    DtypeError,
    ShapeError,
    UnsupportedError,
)

__all__ = [
    "PCAResult",
    "corrcoef",
    "cov",
    "gram",
    "pca",
]

_DEFAULT_BUDGET = DEFAULT_BUDGET
Array = np.ndarray[Any, Any]

#: Largest sub-block (bytes of float64 working data) a kernel handles at once.
SUB_BLOCK_MAX = 4 << 20
#: Smallest sub-block, in bytes.
SUB_BLOCK_MIN = 64 << 10


# ---- plumbing ------------------------------------------------------------------------------
@contextlib.contextmanager
def blas_limit(threads: int) -> Iterator[int | None]:
    """Limit BLAS to ``max(1, cores // threads)`` threads while the block runs.

    Yields the limit, or ``None`` when :mod:`threadpoolctl` is not installed (BLAS is then left
    as configured; install ``bigarr[linalg]`` to bound it).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield None
        return
    limit = max(1, default_threads() // max(1, threads))
    with threadpool_limits(limits=limit, user_api="blas"):
        yield limit


@contextlib.contextmanager
def _streams(*objs: Any) -> Iterator[list[Stream]]:
    """The operands as row streams sharing their leading length; closed afterwards.

    Raises
    ------
    ShapeError
        For a 0-d operand, more than two dimensions, or leading lengths that differ.
    DtypeError
        For dtypes that are not real numbers (complex, strings, structured).
    """
    opened: list[Stream] = []
    try:
        for obj in objs:
            s = parse_operand(obj, by_key=False)
            opened.append(s)
            if s.ndim not in (1, 2):
                raise ShapeError(
                    f"Expected a 1-d or 2-d array (N rows of p columns). Got shape {s.shape}.")
            dt = np.dtype(s.dtype)
            if dt.kind not in "biuf":
                raise DtypeError(
                    f"Expected real numbers (bool, integer or floating). Got {dt}: convert "
                    "first (complex linear algebra is not supported out of core).")
        if len({s.shape[0] for s in opened}) > 1:
            raise ShapeError(
                "Expected operands sharing their number of rows. Got shapes "
                f"{[s.shape for s in opened]}.")
        yield opened
    finally:
        for s in opened:
            s.close()


def _cols(s: Stream) -> int:
    return 1 if s.ndim == 1 else int(s.shape[1])


def _sub_rows(budget: int | str, threads: int, width: int, copies: int) -> int:
    """Rows per sub-block: a fixed slice of the budget per thread, at least ``width`` rows
    (so a QR step reduces as many rows as it adds)."""
    share = parse_budget(budget) // max(1, 8 * threads * copies)
    nbytes = min(SUB_BLOCK_MAX, max(SUB_BLOCK_MIN, share))
    return max(1, width, nbytes // (8 * max(1, width)))


def _check_state(what: str, width: int, budget: int | str, threads: int, states: int) -> int:
    """Bytes of the p x p states held (one per chunk in flight and the merged ones).

    Raises
    ------
    BudgetError
        If they alone exceed the budget (both numbers quoted).
    """
    need = (threads + states) * width * width * 8
    total = parse_budget(budget)
    if need > total:
        raise BudgetError(
            f"{what} of {width} columns keeps {threads + states} matrices of {width} x {width} "
            f"float64 ({format_bytes(need)}) in memory, more than the budget of "
            f"{format_bytes(total)}. Raise the budget, use fewer threads, or fewer columns.")
    return need


def _hstack(blocks: Sequence[Array], lo: int, hi: int, dtype: Any) -> Array:
    """Rows ``lo:hi`` of the blocks side by side, as one new C-ordered array of ``dtype``."""
    parts = [b[lo:hi].reshape(hi - lo, -1) for b in blocks]
    width = sum(p.shape[1] for p in parts)
    out = np.empty((hi - lo, width), dtype=dtype)
    col = 0
    for p in parts:
        out[:, col:col + p.shape[1]] = p
        col += p.shape[1]
    return out


def _run(operation: str, streams: list[Stream], kernel: Callable[[list[Array]], Any],
         combine: Callable[[Any, Any], Any], *, budget: int | str, threads: int,
         progress: ProgressArg, scratch: int, fixed: int) -> Any:
    """One pass over ``streams`` in chunks of whole rows; ``kernel`` per chunk on the engine's
    threads, ``combine`` in chunk order on this thread."""
    plan = plan_run(operation, streams, budget=budget, threads=threads, layout="rows",
                    scratch_bytes=scratch, fixed_bytes=fixed)

    def work(chunk: Chunk, blocks: list[Array]) -> Any:
        return kernel(blocks)

    total: Any = None
    chunks = plan.chunks
    with blas_limit(threads), Progress(progress, total_bytes=chunks.nbytes,
                                       total_chunks=len(chunks), desc=operation) as bar:
        for _chunk, part in execute(plan, work, streams, progress=bar):
            total = part if total is None else combine(total, part)
    return total


# ---- gram ----------------------------------------------------------------------------------
def _acc_dtype(src: np.dtype[Any], dtype: Any) -> np.dtype[Any]:
    if dtype is None:
        return np.dtype(src) if np.dtype(src) in (np.float32, np.float64) else np.dtype("f8")
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise DtypeError(f"Expected dtype float32 or float64 (or None). Got {dt}.")
    out: np.dtype[Any] = dt
    return out


def gram(
    x: Any,
    *,
    dtype: Any = None,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> Array:
    """``x.T @ x`` of a tall matrix in one pass: each chunk's ``b.T @ b`` (syrk), added.

    Parameters
    ----------
    x
        N x p (or a 1-d N-vector, as N x 1): a :class:`bigarr.memmap`, a ``.npy`` path, any
        array the engine reads.
    dtype
        Accumulation and result dtype, float32 or float64. Default: ``x``'s dtype when it is
        float32 or float64, else float64. ``np.float64`` on float32 data accumulates each
        chunk in float64 (slower, about 1e-15 instead of 1e-6 relative).
    budget
        The most memory the run may add, bytes or a string such as ``"256MiB"``.
    threads
        Worker threads (default: the CPUs available).
    progress
        ``None`` (a bar on a TTY), ``True``, ``False``, or callbacks taking ProgressEvent.

    Returns
    -------
    numpy.ndarray
        The p x p Gram matrix, in memory.

    Raises
    ------
    BudgetError
        If the budget cannot hold the plan, or the p x p states alone exceed it.
    DtypeError
        For non-real data or a ``dtype`` other than float32/float64.
    ShapeError
        For arrays that are not 1-d or 2-d.
    """
    nthreads = parse_threads(threads)
    with _streams(x) as (s,):
        acc = _acc_dtype(np.dtype(s.dtype), dtype)
        p = _cols(s)
        if s.shape[0] == 0:
            return np.zeros((p, p), dtype=acc)
        fixed = _check_state("gram", p, budget, nthreads, 3)
        rows = _sub_rows(budget, nthreads, p, 1)

        def kernel(blocks: list[Array]) -> Array:
            b = blocks[0].reshape(len(blocks[0]), -1)
            if b.dtype == acc and b.flags.c_contiguous:
                return b.T @ b  # numpy calls syrk for a.T @ a
            out = np.zeros((p, p), dtype=acc)
            for lo in range(0, len(b), rows):
                sub = np.asarray(b[lo:lo + rows], dtype=acc, order="C")
                out += sub.T @ sub
            return out

        return np.asarray(_run("gram", [s], kernel, np.add, budget=budget, threads=nthreads,
                               progress=progress, scratch=rows * p * acc.itemsize, fixed=fixed))


# ---- covariance ----------------------------------------------------------------------------
Moments = tuple[int, Array, Array]
"""A partial state of :func:`cov`: count, column means, centred cross-products (float64)."""


def merge_moments(a: Moments, b: Moments) -> Moments:
    """Chan et al.'s pairwise update of count, mean and co-moment matrix.

    ``C = Ca + Cb + outer(d, d) * na * nb / n`` with ``d = mb - ma``: the centred sums of
    products of the union, without ever forming E[xx] - E[x]E[x].
    """
    na, ma, ca = a
    nb, mb, cb = b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    d = mb - ma
    mean = ma + d * (nb / n)
    return n, mean, ca + cb + np.outer(d, d) * (na * nb / n)


def _moments(streams: list[Stream], *, budget: int | str, threads: int,
             progress: ProgressArg, what: str) -> Moments:
    """Count, means and centred cross-products of the columns of the streams side by side."""
    p = sum(_cols(s) for s in streams)
    n = int(streams[0].shape[0])
    if n == 0:
        return 0, np.zeros(p), np.zeros((p, p))
    fixed = _check_state(what, p, budget, threads, 3)
    rows = _sub_rows(budget, threads, p, 2)
    # Means are kept relative to the first row: far from zero (data at 1e9 with unit spread),
    # absolute means round to ulp(1e9), and the merges' outer(d, d) terms, with d a difference
    # of two means, would magnify that; shifted means are as precise as the spread.
    shift = _hstack([s.head(1) for s in streams], 0, 1, np.float64)[0]
    shift[~np.isfinite(shift)] = 0.0  # a NaN there must not spread to other columns

    def kernel(blocks: list[Array]) -> Moments:
        state: Moments = (0, np.zeros(p), np.zeros((p, p)))
        for lo in range(0, len(blocks[0]), rows):
            sub = _hstack(blocks, lo, min(lo + rows, len(blocks[0])), np.float64)
            sub -= shift
            mean = sub.mean(axis=0)
            sub -= mean
            state = merge_moments(state, (len(sub), mean, sub.T @ sub))
        return state

    count, mean, co = _run(what, streams, kernel, merge_moments, budget=budget,
                           threads=threads, progress=progress, scratch=2 * rows * p * 8,
                           fixed=fixed)
    return count, mean + shift, co


def _row_weights(fw: Array | None, aw: Array | None) -> tuple[Array, Array | None]:
    """The weight of each row of a sub-block, ``fweights * aweights`` (as numpy), checked.

    Raises
    ------
    DtypeError
        For fweights that are not integers (numpy's TypeError).
    ShapeError
        For negative weights (numpy's ValueError).
    """
    f = None if fw is None else np.asarray(fw, dtype=np.float64)
    a = None if aw is None else np.asarray(aw, dtype=np.float64)
    if f is not None:
        if not np.all(f == np.around(f)):
            raise DtypeError("Expected fweights as integers (frequencies). Got fractions.")
        if np.any(f < 0):
            raise ShapeError("Expected fweights >= 0. Got a negative frequency.")
    if a is not None and np.any(a < 0):
        raise ShapeError("Expected aweights >= 0. Got a negative weight.")
    if f is None:
        assert a is not None
        return a, a
    return (f if a is None else f * a), a


def _weighted_moments(streams: list[Stream], fw: Stream | None, aw: Stream | None, *,
                      budget: int | str, threads: int, progress: ProgressArg,
                      what: str) -> tuple[Moments, float]:
    """Weighted count, means and centred cross-products (weights ``w = fweights * aweights``,
    the count is ``sum(w)``), merged by the same Chan update; and ``sum(w * aweights)``, which
    numpy's normalisation with aweights needs."""
    p = sum(_cols(s) for s in streams)
    nd = len(streams)
    if int(streams[0].shape[0]) == 0:
        return (0, np.zeros(p), np.zeros((p, p))), 0.0
    fixed = _check_state(what, p, budget, threads, 3)
    rows = _sub_rows(budget, threads, p, 3)
    shift = _hstack([s.head(1) for s in streams], 0, 1, np.float64)[0]
    shift[~np.isfinite(shift)] = 0.0

    def kernel(blocks: list[Array]) -> tuple[Moments, float]:
        state: Moments = (0, np.zeros(p), np.zeros((p, p)))
        v2 = 0.0
        for lo in range(0, len(blocks[0]), rows):
            hi = min(lo + rows, len(blocks[0]))
            w, a = _row_weights(None if fw is None else blocks[nd][lo:hi],
                                None if aw is None else blocks[-1][lo:hi])
            total = float(w.sum())
            if a is not None:
                v2 += float(w @ a)
            if total == 0:
                continue
            sub = _hstack(blocks[:nd], lo, hi, np.float64)
            sub -= shift
            mean = (w @ sub) / total
            sub -= mean
            part = (total, mean, (sub * w[:, None]).T @ sub)
            state = merge_moments(state, part)  # type: ignore[arg-type]
        return state, v2

    def combine(x: tuple[Moments, float], y: tuple[Moments, float]) -> tuple[Moments, float]:
        return merge_moments(x[0], y[0]), x[1] + y[1]

    weights = [s for s in (fw, aw) if s is not None]
    (count, mean, co), v2 = _run(what, [*streams, *weights], kernel, combine, budget=budget,
                                 threads=threads, progress=progress,
                                 scratch=3 * rows * (p + 2) * 8, fixed=fixed)
    return (count, mean + shift, co), v2


def _check_rowvar(streams: list[Stream], rowvar: bool) -> None:
    """Refuse ``rowvar=True`` for 2-d data: rows as variables cannot stream.

    Raises
    ------
    UnsupportedError
        With a message naming ``rowvar=False``.
    """
    if rowvar and any(s.ndim == 2 for s in streams):
        shapes = [s.shape for s in streams]
        raise UnsupportedError(
            f"rowvar=True (numpy's default) reads each row as a variable, so shapes {shapes} "
            "would need every row against every other. bigarr streams observations along "
            "axis 0: store the data as N observations x p variables and pass rowvar=False.")


def _cov_dtype(src: Sequence[np.dtype[Any]], dtype: Any) -> np.dtype[Any]:
    out: np.dtype[Any] = np.dtype(dtype if dtype is not None else np.result_type(*src, np.float64))
    return out


def _finish_cov(state: Moments, ddof: float | None, fact: float | None = None) -> Array:
    """The co-moments divided by ``count - ddof`` (or by ``fact``), numpy's warning and NaN
    or inf when that is not positive."""
    n, _mean, c = state
    fact = n - (ddof or 0) if fact is None else fact
    if fact <= 0:
        warnings.warn("Degrees of freedom <= 0 for slice", RuntimeWarning, stacklevel=3)
        fact = 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        out: Array = c / fact
    return out


def cov(
    m: Any,
    y: Any = None,
    rowvar: bool = True,
    bias: bool = False,
    ddof: int | None = None,
    fweights: Any = None,
    aweights: Any = None,
    *,
    dtype: Any = None,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> Array:
    """Covariance matrix in one pass, like :func:`numpy.cov`.

    Each chunk's count, column means and centred cross-products are computed in float64 and
    merged with Chan et al.'s pairwise update, which is as stable as numpy's two-pass method.

    Parameters
    ----------
    m
        The observations: N x p with ``rowvar=False`` (observations in rows, the natural
        layout of a tall file), or a 1-d N-vector (one variable).
    y
        More variables with the same observations (numpy's ``y``), stacked after ``m``'s.
    rowvar
        As numpy: ``True`` (its default) reads rows as variables, which cannot stream: a 2-d
        ``m`` (or ``y``) needs ``rowvar=False``; 1-d data is one variable either way.
    bias, ddof
        Normalise by ``N - ddof``; ``ddof`` defaults to 0 with ``bias`` and 1 without.
    fweights, aweights
        Integer frequency weights and observation weights, one per observation (N; in memory
        or files, streamed with the data), exactly as numpy: the weights are
        ``fweights * aweights``, the mean is weighted, and the normalisation is ``sum(w)``
        (``ddof=0``), ``sum(w) - ddof`` (fweights only), or
        ``sum(w) - ddof * sum(w * aweights) / sum(w)`` (with aweights).
    dtype
        Result dtype (default: float64, or wider when the data is).
    budget, threads, progress
        As :func:`gram`.

    Returns
    -------
    numpy.ndarray
        The covariance matrix (0-d for a single variable), as numpy returns it.

    Raises
    ------
    UnsupportedError
        For ``rowvar=True`` with several rows.
    ShapeError
        For weights that are not 1-d of length N, negative, or summing to zero (numpy's
        ValueError, RuntimeError and ZeroDivisionError).
    DtypeError
        For fweights that are not integers (numpy's TypeError).
    BudgetError
        If the budget cannot hold the plan, or the p x p states alone exceed it.
    DtypeError, ShapeError
        As :func:`gram`.
    """
    if ddof is not None and ddof != int(ddof):
        raise ArgumentError(f"Expected ddof as an integer. Got {ddof!r}.")
    ddof = (0 if bias else 1) if ddof is None else int(ddof)
    nthreads = parse_threads(threads)
    data = [a for a in (m, y) if a is not None]
    weights = [w for w in (fweights, aweights) if w is not None]
    with _streams(*data, *weights) as opened:
        streams, ws = opened[:len(data)], opened[len(data):]
        _check_rowvar(streams, rowvar)
        for name, w in zip(("fweights", "aweights") if fweights is not None else ("aweights",),
                           ws, strict=False):
            if w.ndim != 1:
                raise ShapeError(f"Expected {name} as a 1-d array of one weight per "
                                 f"observation. Got shape {w.shape}.")
        out_dtype = _cov_dtype([np.dtype(s.dtype) for s in streams], dtype)
        if not weights:
            state = _moments(streams, budget=budget, threads=nthreads, progress=progress,
                             what="cov")
            return _finish_cov(state, ddof).astype(out_dtype, copy=False).squeeze()
        fw = ws[0] if fweights is not None else None
        aw = ws[-1] if aweights is not None else None
        state, v2 = _weighted_moments(streams, fw, aw, budget=budget, threads=nthreads,
                                      progress=progress, what="cov")
    total = float(state[0])
    if total == 0:
        raise ShapeError("Weights sum to zero, can't be normalized (numpy raises "
                         "ZeroDivisionError).")
    if ddof == 0:
        fact = total
    elif aw is None:
        fact = total - ddof
    else:
        fact = total - ddof * v2 / total
    return _finish_cov(state, None, fact).astype(out_dtype, copy=False).squeeze()


def corrcoef(
    x: Any,
    y: Any = None,
    rowvar: bool = True,
    *,
    dtype: Any = None,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> Array:
    """Pearson correlation coefficients in one pass, like :func:`numpy.corrcoef`.

    The covariance of :func:`cov` scaled by the standard deviations, clipped to [-1, 1] as
    numpy does. Arguments as :func:`cov`.

    Raises
    ------
    UnsupportedError, BudgetError, DtypeError, ShapeError
        As :func:`cov`.
    """
    nthreads = parse_threads(threads)
    with _streams(*[a for a in (x, y) if a is not None]) as streams:
        _check_rowvar(streams, rowvar)
        out_dtype = _cov_dtype([np.dtype(s.dtype) for s in streams], dtype)
        state = _moments(streams, budget=budget, threads=nthreads, progress=progress,
                         what="corrcoef")
    c = _finish_cov(state, 1)
    if c.size == 1:
        with np.errstate(divide="ignore", invalid="ignore"):
            one: Array = (c / c).astype(out_dtype, copy=False).squeeze()
            return one
    d = np.sqrt(np.diag(c))
    with np.errstate(divide="ignore", invalid="ignore"):
        c = c / d[:, None] / d[None, :]
    np.clip(c, -1, 1, out=c)
    result: Array = c.astype(out_dtype, copy=False)
    return result


# ---- shared by matmul, pca and the TSQR family (bigarr._compute.tsqr) ----------------
def _write_product(x: Any, w: Array, out: Any, dtype: Any, *, budget: int | str, threads: int,
                   progress: ProgressArg, overwrite: bool) -> Any:
    """``x @ w`` streamed chunk by chunk into ``out`` (a path or an array) by map_blocks."""
    w = np.ascontiguousarray(w, dtype=dtype)

    def product(block: Array) -> Array:
        b = block.reshape(len(block), -1)
        res: Array = b @ w if b.dtype == w.dtype else np.asarray(b, dtype=w.dtype) @ w
        return res

    options: dict[str, Any] = {"overwrite": overwrite} if not isinstance(out, np.ndarray) else {}
    with blas_limit(threads):
        return map_blocks(product, x, out=out, dtype=dtype, budget=budget, threads=threads,
                          progress=progress, **options)


def _float_out(src: np.dtype[Any]) -> np.dtype[Any]:
    return np.dtype(np.result_type(src, np.float32)) if src.kind == "f" else np.dtype("f8")


# ---- PCA -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class PCAResult:
    """Principal components of a tall matrix (names as scikit-learn's PCA attributes)."""

    components: Array
    """k x p: the principal axes, as rows, by decreasing explained variance; each row's
    largest-magnitude entry is positive."""
    explained_variance: Array
    """k: the variance along each component (eigenvalues of the covariance, ddof=1)."""
    explained_variance_ratio: Array
    """k: each component's share of the total variance."""
    mean: Array
    """p: the column means subtracted before projecting."""
    n_samples: int
    """N, the number of rows."""
    scores: Any = None
    """The N x k projections ``(X - mean) @ components.T`` (a :class:`bigarr.memmap`), when
    ``out_scores`` was given."""


def pca(
    x: Any,
    k: int,
    *,
    method: str = "exact",
    out_scores: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    n_oversamples: int = 10,
    n_iter: int = 2,
    random_state: Any = None,
    tmpdir: str | os.PathLike[str] | None = None,
    budget: int | str = _DEFAULT_BUDGET,
    threads: int | None = None,
    progress: ProgressArg = None,
) -> PCAResult:
    """PCA of a matrix out of core, exact (tall-skinny) or randomized (wide or huge too).

    ``method="exact"``: the covariance in one pass, merged as in :func:`cov` (numerically
    sound), and its eigendecomposition in memory (p x p: for p up to a few thousand).
    Eigenvalues far below the largest (ratio under about 1e-8) lose relative accuracy, as any
    covariance-based PCA's do.

    ``method="randomized"``: :func:`bigarr.linalg.randomized_svd` of the centred X (centred
    implicitly, sub-block by sub-block, after one pass of column moments), ``3 + 2 * n_iter``
    passes, p x (k + n_oversamples) states only: for p too large for a p x p covariance. Its
    accuracy is randomized_svd's (exact to working precision for a fast-decaying spectrum).

    The scores, when asked for, take one more pass.

    Parameters
    ----------
    x
        N x p observations in rows.
    k
        Number of components, 1 <= k <= p (randomized: k <= min(N, p)).
    method
        ``"exact"`` or ``"randomized"``.
    out_scores
        Path of a new ``.npy`` file for the N x k scores (float32 for float32 data, else
        float64).
    overwrite
        Replace an existing file at ``out_scores``.
    n_oversamples, n_iter, random_state, tmpdir
        For ``method="randomized"``, as :func:`bigarr.linalg.randomized_svd`.
    budget, threads, progress
        As :func:`gram`.

    Returns
    -------
    PCAResult

    Raises
    ------
    ArgumentError
        If ``k`` is not an integer, or ``method`` is not one of the two.
    ShapeError
        If ``k`` is not in [1, p], or ``x`` is not 2-d or has fewer than 2 rows.
    BudgetError, DtypeError
        As :func:`gram`.
    """
    if method not in ("exact", "randomized"):
        raise ArgumentError(f"Expected method 'exact' or 'randomized'. Got {method!r}.")
    nthreads = parse_threads(threads)
    with _streams(x) as streams:
        s = streams[0]
        if s.ndim != 2 or s.shape[0] < 2:
            raise ShapeError(f"Expected an N x p matrix with N >= 2. Got shape {s.shape}.")
        p = _cols(s)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ArgumentError(f"Expected k, the number of components, as an int. Got {k!r}.")
        if not 1 <= k <= p:
            raise ShapeError(f"Expected k, the number of components, in [1, {p}]. Got {k}.")
        src = np.dtype(s.dtype)
        if method == "exact":
            n, mean, c = _moments(streams, budget=budget, threads=nthreads, progress=progress,
                                  what="pca")
    if method == "randomized":
        from bigarr._compute.randomized import randomized_pca

        res = randomized_pca(x, k, n_oversamples=n_oversamples, n_iter=n_iter,
                             random_state=random_state, tmpdir=tmpdir, budget=budget,
                             threads=nthreads, progress=progress)
        comps, values, ratio, mean, n = (res.components, res.explained_variance,
                                         res.explained_variance_ratio, res.mean, res.n_samples)
    else:
        values, vectors = np.linalg.eigh(c / (n - 1))
        order = np.argsort(values)[::-1]
        values = np.clip(values[order], 0.0, None)
        comps = vectors[:, order[:int(k)]].T
        flip = np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])
        comps = comps * np.where(flip == 0, 1.0, flip)[:, None]
        total = values.sum()
        ratio = values[:k] / total if total > 0 else np.zeros(int(k))
        values = values[:k]
    scores = None
    if out_scores is not None:
        dt = _float_out(src)
        w = np.ascontiguousarray(comps.T, dtype=dt)
        mu = mean.astype(dt)

        def project(block: Array) -> Array:
            res: Array = (np.asarray(block, dtype=dt) - mu) @ w
            return res

        with blas_limit(nthreads):
            scores = map_blocks(project, x, out=out_scores, dtype=dt, budget=budget,
                                threads=nthreads, progress=progress, overwrite=overwrite)
    return PCAResult(comps, values, ratio, mean, int(n), scores)
