"""Benchmark datasets: generated once, in chunks, and cached in the data folder.

Every dataset holds the same 1-D float32 sequence ``x[i] = i % 251`` (small
integers, so the exact sum is known: :func:`expected_sum`).  Built-in kinds:

``raw``
    The bare little-endian float32 bytes (``f32-<size>.raw``).
``npy``
    A ``.npy`` file written by numpy (``np.lib.format.open_memmap``) with the
    same data (``f32-<size>.npy``); the data starts after numpy's header, so
    not on a page boundary.

Case modules may add kinds with :func:`register_dataset`.  A file is built
under a temporary name and renamed when complete, and is rebuilt only when
missing or when its check fails (e.g. the size differs).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from harness_core import format_size

DTYPE = np.dtype("<f4")
PERIOD = 251
# ~1 MiB per write, a whole number of periods.  Small on purpose: the parent's
# peak RSS leaks into its children's ru_maxrss (see harness_proc).
_BLOCK_ELEMS = PERIOD * 1024


def pattern_block() -> np.ndarray:
    """Return one write block of the pattern; it starts and ends on a period."""
    return np.tile(np.arange(PERIOD, dtype=DTYPE), _BLOCK_ELEMS // PERIOD)


def expected_sum(n: int) -> float:
    """Return the exact sum of the first ``n`` pattern elements."""
    full, rest = divmod(n, PERIOD)
    return float(full * (PERIOD * (PERIOD - 1) // 2) + rest * (rest - 1) // 2)


def write_pattern(f: BinaryIO, n: int) -> None:
    """Write ``n`` pattern elements to a binary file object, block by block.

    Parameters
    ----------
    f : file object
        Open for binary writing, positioned where the data belongs.
    n : int
        Number of elements.
    """
    block = pattern_block()
    for start in range(0, n, _BLOCK_ELEMS):
        f.write(block[: min(_BLOCK_ELEMS, n - start)].data.cast("B"))


def _build_raw(path: Path, n: int) -> None:
    with open(path, "wb") as f:
        write_pattern(f, n)


def _check_raw(path: Path, n: int) -> bool:
    return path.is_file() and path.stat().st_size == n * DTYPE.itemsize


def _build_npy(path: Path, n: int) -> None:
    # open_memmap writes the header and sizes the file; the data is then
    # written with plain writes so building does not grow the RSS.
    m = np.lib.format.open_memmap(path, mode="w+", dtype=DTYPE, shape=(n,))
    offset = m.offset
    del m
    with open(path, "r+b") as f:
        f.seek(offset)
        write_pattern(f, n)


def _check_npy(path: Path, n: int) -> bool:
    if not path.is_file():
        return False
    try:
        m = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    ok = bool(m.shape == (n,) and m.dtype == DTYPE)
    ok = ok and path.stat().st_size == m.offset + n * DTYPE.itemsize
    del m
    return ok


@dataclass(frozen=True, slots=True)
class DatasetKind:
    """How to build and validate one kind of dataset."""

    name: str
    """Kind name used in ``@case(data=...)``."""
    suffix: str
    """File name suffix (``"raw"``, ``"npy"``, ``"zarr"`` ...)."""
    build: Callable[[Path, int], None]
    """``build(path, n)`` writes ``n`` pattern elements to a new file or folder."""
    check: Callable[[Path, int], bool]
    """``check(path, n)`` is true when an existing dataset can be reused."""


_KINDS: dict[str, DatasetKind] = {}


def register_dataset(
    name: str,
    suffix: str,
    build: Callable[[Path, int], None],
    check: Callable[[Path, int], bool],
) -> None:
    """Register a dataset kind (see :class:`DatasetKind`)."""
    _KINDS[name] = DatasetKind(name, suffix, build, check)


register_dataset("raw", "raw", _build_raw, _check_raw)
register_dataset("npy", "npy", _build_npy, _check_npy)


def dataset_path(data_dir: Path, kind: str, nbytes: int) -> Path:
    """Return where dataset ``kind`` of ``nbytes`` data bytes lives.

    Raises
    ------
    KeyError
        If ``kind`` is not registered.
    """
    if kind not in _KINDS:
        raise KeyError(f"Unknown dataset kind {kind!r}. Known: {sorted(_KINDS)}.")
    return data_dir / f"f32-{format_size(nbytes)}-{nbytes}.{_KINDS[kind].suffix}"


def ensure_dataset(data_dir: Path, kind: str, nbytes: int) -> tuple[Path, bool]:
    """Build dataset ``kind`` unless a valid one is cached.

    Parameters
    ----------
    data_dir : Path
        Folder holding the datasets (created if needed).
    kind : str
        Registered dataset kind.
    nbytes : int
        Data size (bytes); a multiple of 4.

    Returns
    -------
    path : Path
        The dataset.
    built : bool
        Whether it had to be (re)built.
    """
    info = _KINDS[kind]
    path = dataset_path(data_dir, kind, nbytes)
    n = nbytes // DTYPE.itemsize
    if info.check(path, n):
        return path, False
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        info.build(tmp, n)
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp)
        elif tmp.exists():
            tmp.unlink()
    return path, True
