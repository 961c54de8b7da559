"""bigarr: memory-mapped numpy arrays as a first-class tool for data far larger than RAM.

bigarr arrays are :class:`numpy.memmap` instances (they drop into any numpy code) over
page-aligned, self-describing ``.npy`` files, with what numpy.memmap lacks: a ``close()`` that
can never crash the process, read-only, shared and private (copy-on-write) modes, access hints,
ranged flush, and chunked compute whose memory is planned against a budget before it starts.

Example
-------
>>> import numpy as np, bigarr
>>> with bigarr.create("big.npy", (100_000, 8), "float32", overwrite=True) as x:
...     for chunk, view in x.iter_chunks("1MiB", progress=False):
...         view[:] = chunk.rows.start          # fill chunk by chunk, within the budget
>>> with bigarr.open("big.npy") as x:        # read-only; plain np.load reads it too
...     hinted = x.advise("sequential")        # madvise; False where the OS lacks it
...     head = x[:1000] * 2                    # ufunc results are plain ndarrays
>>> float(bigarr.sum("big.npy", dtype=np.float64, budget="64MiB", progress=False)) > 0
True
>>> m = bigarr.map_blocks(np.sqrt, "big.npy", out="root.npy", overwrite=True, progress=False)

Where things live
-----------------
files and arrays
    :func:`create`, :func:`open`, :func:`open_raw`, :class:`memmap` (numpy.memmap's
    constructor; ``close``, ``flush(region)``, ``advise``, ``resident``, ``plan``,
    ``iter_chunks``; private mode: ``dirty``, ``commit``, ``discard``; shared mode:
    ``track_writes``, ``written``, ``flush_written``), :func:`recover_commit`.
compute within a memory budget
    :func:`sum`, :func:`mean`, :func:`var`, :func:`std`, :func:`min`, :func:`max`,
    :func:`argmin`, :func:`argmax`, :func:`count_nonzero`, :func:`histogram`,
    :func:`reduce_blocks`, :func:`map_blocks`; :func:`cov`, :func:`corrcoef` and the rest of
    :mod:`bigarr.linalg` (``gram``, ``qr``, ``svd``, ``randomized_svd``, ``lstsq``, ``pca``,
    ``matmul``); exact order statistics: :func:`quantile`, :func:`percentile`, :func:`median`
    and their ``nan`` variants, :func:`topk`, :func:`sort` (values, or rows ``by=`` key columns),
    :func:`argsort`, :func:`take`, :func:`searchsorted`, :func:`unique`; growing files:
    :class:`Appender`, :func:`append`; :func:`check_complete` refuses outputs of interrupted runs.
lazy expressions
    :func:`lazy` (a :class:`LazyArray`: operators, ufuncs, numpy functions, reductions with
    nan variants, ``cumsum``/``cumprod``/``diff`` along the rows, ``x[mask]``, ``x @ w``,
    ``quantile``/``median``), :func:`where`, :func:`compute` (several results sharing
    passes), ``.compute()``, ``.to_npy()``, ``.to_zarr()``, ``.to_dask()``, ``.explain()``
    (a :class:`LazyPlan`).
planning and reports
    :func:`plan_chunks`, :class:`ChunkPlan`, :class:`Chunk`, :class:`Residency`,
    :class:`ChunkResidency`, :class:`DirtyRegions`, :class:`ProgressEvent`,
    :func:`parse_size`, :data:`PAGE_SIZE`, :func:`supported_hints`, :data:`HINT_NAMES`.
interop
    :func:`to_zarr`, :func:`from_zarr`, :func:`to_dask`, :func:`store`.
errors
    :mod:`bigarr.errors`: every error is a ``BigArrError`` and also the builtin you would
    catch (``ValueError``, ``OSError``, ...); the tree is drawn in its docstring.

The command line: ``bigarr info|create|convert|verify|demo`` (``python -m bigarr``).
"""

from __future__ import annotations

from bigarr import errors, linalg
from bigarr._compute.gather import searchsorted, take
from bigarr._compute.histogram import histogram
from bigarr._compute.lazy import LazyArray, lazy, where
from bigarr._compute.lazyrun import LazyPlan, compute
from bigarr._compute.linalg import corrcoef, cov
from bigarr._compute.mapblocks import map_blocks
from bigarr._compute.order import (
    median,
    nanmedian,
    nanpercentile,
    nanquantile,
    percentile,
    quantile,
    topk,
    unique,
)
from bigarr._compute.progress import ProgressEvent
from bigarr._compute.reductions import (
    argmax,
    argmin,
    count_nonzero,
    max,
    mean,
    min,
    reduce_blocks,
    std,
    sum,
    var,
)
from bigarr._compute.runplan import RunPlan
from bigarr._compute.sort import argsort, sort
from bigarr._compute.stream import ChunkResidency, Residency
from bigarr._core.append import Appender, append
from bigarr._core.array import memmap
from bigarr._core.commitjournal import recover_commit
from bigarr._core.dirtypages import DirtyRegions
from bigarr._core.files import create, open, open_raw
from bigarr._formats.journal import check_complete
from bigarr._interop import lazyexport as _lazyexport  # noqa: F401  (LazyArray.to_zarr/to_dask)
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
    "LazyArray",
    "LazyPlan",
    "PAGE_SIZE",
    "ProgressEvent",
    "Residency",
    "RunPlan",
    "__version__",
    "append",
    "argmax",
    "argmin",
    "argsort",
    "check_complete",
    "compute",
    "corrcoef",
    "count_nonzero",
    "cov",
    "create",
    "errors",
    "from_zarr",
    "histogram",
    "lazy",
    "linalg",
    "map_blocks",
    "max",
    "mean",
    "median",
    "memmap",
    "min",
    "nanmedian",
    "nanpercentile",
    "nanquantile",
    "open",
    "open_raw",
    "parse_size",
    "percentile",
    "plan_chunks",
    "quantile",
    "recover_commit",
    "reduce_blocks",
    "searchsorted",
    "sort",
    "std",
    "store",
    "sum",
    "supported_hints",
    "take",
    "to_dask",
    "to_zarr",
    "topk",
    "unique",
    "var",
    "where",
]


def _adopt_public_names() -> None:
    """Give the public functions and classes ``__module__ == "bigarr"``, where users find them.

    The private module a name is implemented in is not part of the API (and moves); reprs,
    ``help()`` and pickles of classes then name ``bigarr.X``. Errors keep ``bigarr.errors``.
    """
    import inspect
    import typing

    for name in __all__:
        obj = globals()[name]
        if isinstance(obj, type):
            # Class annotations are strings (PEP 563) that typing.get_type_hints resolves in
            # the module named by __module__: resolve them while it is still the home module.
            try:
                hints = typing.get_type_hints(obj)
            except NameError:  # names imported for type checking only: left as they were
                hints = {}
            if hints:
                own = inspect.get_annotations(obj)
                obj.__annotations__ = {k: hints.get(k, v) for k, v in own.items()}
        if isinstance(obj, type) or (callable(obj) and not inspect.ismodule(obj)):
            obj.__module__ = __name__


_adopt_public_names()
del _adopt_public_names


def __dir__() -> list[str]:
    """The public API only (``__all__``), not the private modules imported to build it."""
    return list(__all__)
