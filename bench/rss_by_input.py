"""Peak RSS against the budget for each input kind: one subprocess per (kind, operation).

Run: ``python bench/rss_by_input.py [--size 256MiB] [--budget 8MiB] [--dir DIR]``. Prints a
Markdown table (growth of VmHWM over the resident memory just before the operation, after the
operand is made and the peak counter is reset with ``/proc/self/clear_refs``) and writes it as
JSON next to the data. The file is numpy-written (data 128 bytes in), float32, 32 columns;
the page cache is dropped for it before each run. Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

KINDS = {
    "path": "a = P",
    "bigarr.open": "a = bigarr.open(P)",
    "numpy.memmap": "a = np.memmap(P, np.float32, 'r', offset=128, shape=(N, 32))",
    "np.load(mmap_mode='r')": "a = np.load(P, mmap_mode='r')",
    "bigarr view x[:, :4]": "a = bigarr.open(P)[:, :4]",
    "numpy view x[:, :4]": "a = np.load(P, mmap_mode='r')[:, :4]",
    "zarr (1024-row chunks)": "import zarr; a = zarr.open_array(D + '/src.zarr', mode='r')",
    "dask (bigarr.to_dask)": "import dask.array; a = bigarr.to_dask(P)",
    "ndarray (in memory)": "a = np.load(P)",
}
OPS = {
    "sum(axis=0)": "bigarr.sum(a, axis=0, budget=B, threads=2, progress=False)",
    "argmax(axis=0)": "bigarr.argmax(a, axis=0, budget=B, threads=2, progress=False)",
    "map_blocks": ("bigarr.map_blocks(lambda b: b * 2, a, out=D + '/out.npy', overwrite=True, "
                   "budget=B, threads=2, progress=False).close()"),
}
SCRIPT = """
import numpy as np, bigarr
def status(key):
    return int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) << 10
P, D, N, B = {path!r}, {folder!r}, {rows}, {budget}
{make}
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
base = status('VmRSS')
{op}
print(status('VmHWM') - base)
"""


def main() -> None:
    import bigarr

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=bigarr.parse_size, default="256MiB")
    parser.add_argument("--budget", type=bigarr.parse_size, default="8MiB")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="bigarr-rss-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = args.size // 128
    path = folder / "x.npy"
    if not path.exists():
        x = np.lib.format.open_memmap(path, "w+", np.float32, (rows, 32))
        for i in range(0, rows, 1 << 18):
            x[i:i + (1 << 18)] = np.arange(32, dtype=np.float32) + np.float32(i % 1000)
        x.flush()
        del x
    if not (folder / "src.zarr").exists():
        bigarr.to_zarr(path, folder / "src.zarr", chunks=(1024, 32), compressors=None,
                       budget="64MiB", progress=False)
    results = []
    print(f"| input ({args.size >> 20} MiB file, budget {args.budget >> 20} MiB) | "
          + " | ".join(OPS) + " |")
    print("| --- |" + " --- |" * len(OPS))
    for kind, make in KINDS.items():
        row = []
        for op, code in OPS.items():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)
            script = SCRIPT.format(path=str(path), folder=str(folder), rows=rows,
                                   budget=args.budget, make=make, op=code)
            proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                row.append("error: " + proc.stderr.strip().splitlines()[-1][:60])
                continue
            grew = int(proc.stdout.split()[-1])
            results.append({"input": kind, "op": op, "budget": args.budget, "grew": grew})
            row.append(f"{grew / 2**20:.1f} MiB")
        print(f"| {kind} | " + " | ".join(row) + " |", flush=True)
    (folder / "rss_by_input.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
