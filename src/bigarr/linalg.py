"""bigarr.linalg: linear algebra out of core for tall-skinny matrices (N x p, N huge).

One pass over the rows, p x p states in memory, within a memory budget: :func:`gram`,
:func:`cov`, :func:`corrcoef`, :func:`qr` (TSQR), :func:`svd`, :func:`lstsq`, :func:`pca`;
and :func:`matmul` of a tall file by a small in-memory matrix, streamed to a file. See
``bigarr._compute.linalg`` for the algorithms and their accuracy.
"""

from __future__ import annotations

from bigarr._compute.linalg import (
    PCAResult,
    SVDResult,
    corrcoef,
    cov,
    gram,
    lstsq,
    matmul,
    pca,
    qr,
    svd,
)

__all__ = [
    "PCAResult",
    "SVDResult",
    "corrcoef",
    "cov",
    "gram",
    "lstsq",
    "matmul",
    "pca",
    "qr",
    "svd",
]

for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
