"""Hostile review, sixth session: each test is a defect found by trying to break the code."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import bigarr


def test_eager_reductions_of_a_0d_file_refuse_a_bad_axis_as_a_bigarr_error(
        tmp_path: Path) -> None:
    """numpy accepts axis 0 and -1 of a 0-d array in ufunc reductions (sum, max) but not a
    tuple, nor in mean/var/std: bigarr.sum(axis=(0,)) and bigarr.mean(axis=0) of a 0-d file let
    numpy's bare AxisError out of the dtype probe."""
    np.save(tmp_path / "z.npy", np.array(3.0))
    p = str(tmp_path / "z.npy")
    assert bigarr.sum(p, axis=0, progress=False) == np.sum(np.array(3.0), axis=0)
    for call in (lambda: bigarr.sum(p, axis=(0,), progress=False),
                 lambda: bigarr.mean(p, axis=0, progress=False),
                 lambda: bigarr.var(p, axis=-1, progress=False),
                 lambda: bigarr.std(p, axis=0, progress=False)):
        with pytest.raises(bigarr.errors.AxisError) as info:
            call()
        assert isinstance(info.value, np.exceptions.AxisError)
