"""bigarr: memory-mapped numpy arrays as a first-class tool for data far larger than RAM.

Page-aligned, self-describing ``.npy`` files; read-only, shared and private (copy-on-write)
mappings with a safe ``close``; access hints, ranged flush and bounded resident memory.
"""

from __future__ import annotations

from . import errors
from ._append import Appender, append
from ._array import memmap
from ._chunks import Chunk, ChunkPlan, plan_chunks
from ._dask import store, to_dask
from ._files import create, open, open_raw
from ._geometry import PAGE_SIZE, parse_size
from ._hints import HINT_NAMES, supported_hints
from ._journal import check_complete
from ._mapblocks import map_blocks
from ._private import DirtyRegions, recover_commit
from ._progress import ProgressEvent
from ._reductions import (
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
from ._stream import ChunkResidency, Residency
from ._zarr import from_zarr, to_zarr

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
