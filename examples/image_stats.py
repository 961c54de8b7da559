"""Per-pixel statistics and a histogram over a stack of images (N x H x W), out of core.

Each statistic is one streaming pass over the stack with bigarr's threaded reductions: the
per-pixel mean, standard deviation and maximum (reductions over axis 0), and a histogram of
every pixel value. A PNG of the result is saved when matplotlib is installed.

    python examples/image_stats.py                       # 1 GiB stack of 512 x 512 frames
    python examples/image_stats.py --size 80GiB --dir /data/scratch   # many times RAM
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

HEIGHT = WIDTH = 512


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def peak_rss() -> int:
    """Peak resident memory of this process, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def generate(path: str, size: int, budget: int) -> bigarr.memmap:
    """Write uint16 frames: a fixed scene, a bright spot drifting across it, and sensor noise."""
    frames = max(1, size // (HEIGHT * WIDTH * 2))
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    scene = 800 + 400 * np.sin(xx / 40) * np.cos(yy / 60)
    d = np.arange(-24, 25, dtype=np.float32)
    spot = 2500 * np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / 200)  # 49 x 49 pixels
    stack = bigarr.create(path, (frames, HEIGHT, WIDTH), np.uint16, overwrite=True)
    for chunk, block in stack.iter_chunks(budget=budget // 4, prefetch=False):  # write-only
        rng = np.random.default_rng(chunk.rows.start)
        images = rng.standard_normal(block.shape, dtype=np.float32)
        images *= 30
        images += scene
        for image, i in zip(images, range(chunk.rows.start, chunk.rows.stop), strict=True):
            x0 = (i * 7) % (WIDTH - 49)
            y0 = int((HEIGHT - 49) / 2 * (1 + np.sin(i / 50)))
            image[y0:y0 + 49, x0:x0 + 49] += spot
        block[...] = images.clip(0, 4095)
    return stack


def save_png(path: str, mean: np.ndarray, std: np.ndarray, peak: np.ndarray,
             counts: np.ndarray, edges: np.ndarray) -> bool:
    """Save the three images and the histogram; False when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, image, title in zip(axes, (mean, std, peak), ("mean", "std", "max"), strict=False):
        ax.imshow(image, cmap="magma")
        ax.set_title(f"per-pixel {title}")
        ax.axis("off")
    axes[3].stairs(counts, edges, fill=True)
    axes[3].set_yscale("log")
    axes[3].set_title("histogram of all pixels")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=bigarr.parse_size, default="1GiB",
                        help="size of the generated stack")
    parser.add_argument("--dir", help="where to write (default: a temporary directory)")
    parser.add_argument("--budget", type=bigarr.parse_size, default="128MiB",
                        help="memory budget of each pass")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--png", default="image_stats.png", help="picture of the result")
    args = parser.parse_args()
    if args.dir is not None and not os.path.isdir(args.dir):
        parser.error(f"--dir {args.dir} is not a directory")
    size, budget = args.size, args.budget

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="image-stats-") as folder:
        stack = generate(os.path.join(folder, "stack.npy"), size, budget)
        n = stack.shape[0]
        print(f"stack: {n:,} frames of {HEIGHT} x {WIDTH} uint16 ({mib(stack.nbytes)})")
        opts = {"budget": budget, "threads": args.threads}
        start = time.perf_counter()
        mean = bigarr.mean(stack, axis=0, **opts)
        std = bigarr.std(stack, axis=0, **opts)
        maximum = bigarr.max(stack, axis=0, **opts)
        counts, edges = bigarr.histogram(stack, bins=128, range=(0, 4096), **opts)
        seconds = time.perf_counter() - start

        hot = np.unravel_index(np.argmax(mean), mean.shape)
        print(f"result: mean pixel {mean.mean():.1f}, brightest mean pixel {mean.max():.1f} at "
              f"{tuple(map(int, hot))}, median per-pixel std {np.median(std):.1f}, "
              f"{int(counts.sum()):,} pixels in the histogram")
        peak = peak_rss()  # before matplotlib is imported
        if save_png(args.png, mean, std, maximum, counts, edges):
            print(f"saved {args.png}")
        print(f"summary: 4 statistics over {mib(stack.nbytes)} in {seconds:.1f} s "
              f"({mib(4 * stack.nbytes / seconds)}/s read); peak RSS {mib(peak)} = "
              f"{peak / stack.nbytes:.2f}x the file size")
        stack.close()


if __name__ == "__main__":
    main()
