"""bigarr.linalg: linear algebra out of core for tall-skinny matrices (N x p, N huge).

One pass over the rows, p x p states in memory, within a memory budget: :func:`gram`,
:func:`cov`, :func:`corrcoef`, :func:`qr` (TSQR), :func:`svd`, :func:`lstsq`, :func:`pca`;
and :func:`matmul` of a tall file by a small in-memory matrix, streamed to a file.

Each chunk of rows is reduced to a small state on the engine's threads (``b.T @ b``; count,
mean and centred cross-products merged by Chan et al.'s update; R of a QR, merged by TSQR), so
float64 results agree with numpy.linalg to about 1e-12 on well-conditioned data. BLAS runs
``max(1, cores // threads)`` threads inside a run when threadpoolctl is installed
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
