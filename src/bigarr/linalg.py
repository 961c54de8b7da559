"""bigarr.linalg: linear algebra out of core, on matrices stored as N rows (N huge).

Tall-skinny (N x p, p small; one pass over the rows, p x p states in memory, within a memory
budget): :func:`gram`, :func:`cov` (with numpy's fweights and aweights), :func:`corrcoef`,
:func:`qr` (TSQR), :func:`svd`, :func:`lstsq`, :func:`pca`.

Wide or huge: :func:`randomized_svd` and ``pca(method="randomized")`` (Halko et al.; every
pass streamed, p x (k + oversamples) states).

Products: :func:`matmul` of a file by a small matrix (one pass), by a file (tiled; the
schedule, passes and bytes read from :func:`plan_tiles`), and ``matmul(a.T, b)`` of two tall
operands in one pass, ``a.T`` being the transposed view of a mapped or in-memory array.

Each chunk of rows is reduced to a small state on the engine's threads (``b.T @ b``; count,
mean and centred cross-products merged by Chan et al.'s update; R of a QR, merged by TSQR), so
float64 results agree with numpy.linalg to about 1e-12 on well-conditioned data. BLAS runs
``max(1, cores // threads)`` threads inside every run when threadpoolctl is installed
(``pip install 'bigarr[linalg]'``).
"""

from __future__ import annotations

from bigarr._compute.linalg import PCAResult, corrcoef, cov, gram, pca
from bigarr._compute.matmul import TilePlan, matmul, plan_tiles
from bigarr._compute.randomized import randomized_svd
from bigarr._compute.tsqr import SVDResult, lstsq, qr, svd

__all__ = [
    "PCAResult",
    "SVDResult",
    "TilePlan",
    "corrcoef",
    "cov",
    "gram",
    "lstsq",
    "matmul",
    "pca",
    "plan_tiles",
    "qr",
    "randomized_svd",
    "svd",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
