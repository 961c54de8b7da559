"""Hostile review, fifth session: each test is a defect found by trying to break the code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

import bigarr


def test_map_blocks_function_refilling_its_own_output_buffer(tmp_path: Path) -> None:
    """numpy's out= idiom: func fills and returns one array it keeps. Lent to the sink without
    a copy, the next call overwrote it before the disk had it (wrong rows in the file)."""
    x = np.random.default_rng(3).standard_normal((300_000, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    kept: dict[tuple[int, ...], np.ndarray[Any, Any]] = {}

    def f(b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        o = kept.get(b.shape)
        if o is None:
            o = kept[b.shape] = np.empty(b.shape, b.dtype)
        np.multiply(b, 2, out=o)
        return o

    y = bigarr.map_blocks(f, str(tmp_path / "x.npy"), out=str(tmp_path / "y.npy"),
                          budget="8MiB", threads=1, progress=False)
    y.close()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), x * 2)
