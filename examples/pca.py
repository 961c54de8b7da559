"""Tall-skinny PCA out of core: accumulate X^T X over chunks, eigendecompose, project.

For an N x F matrix with N huge and F small, everything PCA needs fits in an F x F matrix.
One streaming pass (``bigarr.reduce_blocks``) sums each chunk's ``X^T X`` and column sums on
threads; the covariance, its eigenvectors and the explained variance come from those in memory;
a second pass (``bigarr.map_blocks``) writes the projection onto the top components to a new
N x K file.

    python examples/pca.py                              # 1 GiB of generated data
    python examples/pca.py --size 100GiB --dir /data/scratch   # many times RAM
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

import numpy as np

import bigarr

FEATURES, LATENT = 32, 3


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def peak_rss() -> int:
    """Peak resident memory of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def generate(path: str, size: int, budget: int) -> tuple[bigarr.memmap, np.ndarray]:
    """Write rows near a LATENT-dimensional subspace; return the file and the true basis."""
    rows = max(LATENT + 1, size // (FEATURES * 4))
    basis, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((FEATURES, LATENT)))
    basis_t, weights = basis.T.astype(np.float32), np.float32([10.0, 5.0, 2.0])
    x = bigarr.create(path, (rows, FEATURES), "f4", overwrite=True)
    for chunk, block in x.iter_chunks(budget=budget // 4, prefetch=False):  # write-only
        rng = np.random.default_rng(chunk.rows.start)
        rng.standard_normal(dtype=np.float32, out=block)  # noise, straight into the file's pages
        block *= 0.5
        latent = rng.standard_normal((len(block), LATENT), dtype=np.float32) * weights
        block += latent @ basis_t + 3.0
    return x, basis


def gram(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Partial result of one chunk: X^T X, column sums and row count (in float64)."""
    b = block.astype(np.float64)
    return b.T @ b, b.sum(axis=0), len(b)


def merge(a: tuple, b: tuple) -> tuple:
    """Combine two partial results (addition is exact enough here, and order-free)."""
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=bigarr.parse_size, default="1GiB",
                        help="size of the generated matrix")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--budget", type=bigarr.parse_size, default="128MiB",
                        help="memory budget of each pass")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--components", type=int, default=LATENT)
    args = parser.parse_args()
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir} is not a directory")
    size, budget = args.size, args.budget
    k = args.components
    if not 1 <= k <= FEATURES:
        parser.error(f"--components must be between 1 and {FEATURES}; got {k}")

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="pca-") as folder:
        x, basis = generate(os.path.join(folder, "x.npy"), size, budget)
        n = x.shape[0]
        print(f"X: {n:,} rows x {FEATURES} float32 ({x.nbytes / 2**30:.2f} GiB)")
        opts = {"budget": budget, "threads": args.threads}
        start = time.perf_counter()

        # Pass 1: X^T X and the column sums, one F x F matrix per chunk, merged.
        xtx, sums, count = bigarr.reduce_blocks(gram, merge, x, **opts)
        mean = sums / count
        cov = (xtx - count * np.outer(mean, mean)) / (count - 1)
        variances, vectors = np.linalg.eigh(cov)  # ascending order
        order = np.argsort(variances)[::-1]
        variances, components = variances[order], vectors[:, order[:k]]

        # Pass 2: the projection onto the top k components, out of core, as a new N x k file.
        w = components.astype(np.float32)
        mu = mean.astype(np.float32)
        scores = bigarr.map_blocks(lambda block: (block - mu) @ w, x,
                                   out=os.path.join(folder, "scores.npy"), dtype="f4", **opts)
        seconds = time.perf_counter() - start

        explained = variances[:k].sum() / variances.sum()
        # Largest principal angle between the found and the true subspace (0 = identical).
        cosines = np.linalg.svd(components[:, :LATENT].T @ basis, compute_uv=False)
        angle = np.degrees(np.arccos(np.clip(cosines.min(), -1, 1)))
        print(f"result: top {k} components explain {explained:.1%} of the variance "
              f"(eigenvalues {np.round(variances[:k], 1).tolist()}); they span the true "
              f"subspace to within {angle:.2f} degrees; scores {scores.shape} written")
        moved = 2 * x.nbytes + scores.nbytes  # X read twice, scores written once
        print(f"summary: PCA of {mib(x.nbytes)} in {seconds:.1f} s ({mib(moved / seconds)}/s "
              f"of reads and writes); peak RSS {mib(peak_rss())} = "
              f"{peak_rss() / x.nbytes:.2f}x the file size")
        scores.close()
        x.close()


if __name__ == "__main__":
    main()
