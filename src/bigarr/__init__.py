"""bigarr: memory-mapped numpy arrays as a first-class tool for data far larger than RAM.

Page-aligned, self-describing ``.npy`` files; read-only, shared and private (copy-on-write)
mappings with a safe ``close``; access hints, ranged flush and bounded resident memory.
"""

from __future__ import annotations

from bigarr import errors
from bigarr._compute.mapblocks import map_blocks
from bigarr._compute.progress import ProgressEvent
from bigarr._compute.reductions import (
    argmax,
    argmin,
    count_nonzero,
    histogram,
    max,
    mean,
    min,
    reduce_blocks,
    std,
    sum,
    var,
)
from bigarr._compute.stream import ChunkResidency, Residency
from bigarr._core.append import Appender, append
from bigarr._core.array import memmap
from bigarr._core.files import create, open, open_raw
from bigarr._core.private import DirtyRegions, recover_commit
from bigarr._formats.journal import check_complete
from bigarr._interop.dask import store, to_dask
from bigarr._interop.zarr import from_zarr, to_zarr
from bigarr._os.geometry import PAGE_SIZE, parse_size
from bigarr._os.hints import HINT_NAMES, supported_hints
from bigarr._plan.chunks import Chunk, ChunkPlan, plan_chunks

__version__ = "0.1.0"

__all__ = [
    "Appender",
    "Chunk",
    "ChunkPlan",
    "ChunkResidency",
    "DirtyRegions",
    "HINT_NAMES",
    "PAGE_SIZE",
    "ProgressEvent",
    "Residency",
    "__version__",
    "append",
    "argmax",
    "argmin",
    "check_complete",
    "count_nonzero",
    "create",
    "errors",
    "from_zarr",
    "histogram",
    "map_blocks",
    "max",
    "mean",
    "memmap",
    "min",
    "open",
    "open_raw",
    "parse_size",
    "plan_chunks",
    "recover_commit",
    "reduce_blocks",
    "std",
    "store",
    "sum",
    "supported_hints",
    "to_dask",
    "to_zarr",
    "var",
]
