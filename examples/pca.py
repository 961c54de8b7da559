"""Tall-skinny PCA out of core with ``bigarr.linalg.pca``: one pass for the covariance, one for
the scores.

For an N x F matrix with N huge and F small, everything PCA needs fits in an F x F matrix.
``bigarr.linalg.pca`` streams the rows once, merging each chunk's count, mean and centred
cross-products (numerically sound, on threads), eigendecomposes the covariance in memory, and,
given ``out_scores``, writes the projection onto the top components to a new N x K file in a
second pass.

    python examples/pca.py                              # 1 GiB of generated data
    python examples/pca.py --size 100GiB --dir /data/scratch   # many times RAM
    python examples/pca.py --method randomized         # randomized SVD of the centred rows
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=bigarr.parse_size, default="1GiB",
                        help="size of the generated matrix")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--budget", type=bigarr.parse_size, default="128MiB",
                        help="memory budget of each pass")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--components", type=int, default=LATENT)
    parser.add_argument("--method", choices=("exact", "randomized"), default="exact",
                        help="exact: the F x F covariance; randomized: Halko et al.'s "
                             "randomized SVD of the centred rows (for many features)")
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

        result = bigarr.linalg.pca(x, k, method=args.method, random_state=0,
                                   out_scores=os.path.join(folder, "scores.npy"),
                                   tmpdir=folder, **opts)
        components = result.components.T  # F x k, as columns
        scores = result.scores
        seconds = time.perf_counter() - start

        explained = result.explained_variance_ratio.sum()
        variances = result.explained_variance
        # Largest principal angle between the found and the true subspace (0 = identical).
        cosines = np.linalg.svd(components[:, :LATENT].T @ basis, compute_uv=False)
        angle = np.degrees(np.arccos(np.clip(cosines.min(), -1, 1)))
        print(f"result: top {k} components explain {explained:.1%} of the variance "
              f"(eigenvalues {np.round(variances[:k], 1).tolist()}); they span the true "
              f"subspace to within {angle:.2f} degrees; scores {scores.shape} written")
        # X read per pass (exact: covariance, scores; randomized: moments, 2 + 2 * n_iter for
        # the SVD, scores), the scores written once
        passes = 2 if args.method == "exact" else 8
        moved = passes * x.nbytes + scores.nbytes
        print(f"summary: {args.method} PCA of {mib(x.nbytes)} in {seconds:.1f} s "
              f"({mib(moved / seconds)}/s "
              f"of reads and writes); peak RSS {mib(peak_rss())} = "
              f"{peak_rss() / x.nbytes:.2f}x the file size")
        scores.close()
        x.close()


if __name__ == "__main__":
    main()
