"""Growing .npy files along axis 0: preallocation, commit order, crash safety."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import numpy as np
import pytest

import bigarr
from bigarr.errors import DtypeError, FileMissingError, ShapeError


def test_append_creates_then_grows(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    assert bigarr.append(path, np.arange(6, dtype=np.int32).reshape(2, 3)) == 2
    assert bigarr.append(path, np.arange(3)) == 3  # one row; same-kind cast to int32
    got = np.load(path)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, [[0, 1, 2], [3, 4, 5], [0, 1, 2]])
    with bigarr.open(path) as arr:  # bigarr reads it too (page-aligned header)
        assert arr.shape == (3, 3)
    assert os.path.getsize(path) == 4096 + 9 * 4  # close() trimmed the reserved tail


def test_numpy_written_files_grow_in_place(tmp_path: Path) -> None:
    path = tmp_path / "n.npy"
    np.save(path, np.arange(10.0))
    offset = os.path.getsize(path) - 80
    for _ in range(3):
        bigarr.append(path, np.arange(1000.0))
    got = np.load(path)
    np.testing.assert_array_equal(got, np.concatenate([np.arange(10.0)] + [np.arange(1000.0)] * 3))
    assert os.path.getsize(path) - got.nbytes == offset  # the data never moved


def test_space_is_reserved_in_steps_and_rows_publish_at_commit(tmp_path: Path) -> None:
    path = tmp_path / "s.npy"
    with bigarr.Appender(path, np.float64, (2,), step="1MiB") as app:
        app.append(np.ones((10, 2)))
        assert len(app) == 10 and app.committed == 0
        assert os.path.getsize(path) >= 1 << 20  # reserved ahead, not 160 bytes at a time
        assert np.load(path).shape == (0, 2)  # readers still see the old, valid array
        assert app.commit() == 10
        assert np.load(path).shape == (10, 2)
        app.append(np.zeros((5, 2)))
        app.discard()
        assert len(app) == 10
        app.append(np.full((3, 2), 7.0))
        app.truncate(4)
        assert len(app) == 4 and np.load(path).shape == (4, 2)
    assert np.load(path).shape == (4, 2)


def test_auto_commit(tmp_path: Path) -> None:
    path = tmp_path / "c.npy"
    with bigarr.Appender(path, np.uint8, (), step="64KiB", commit_every=1000) as app:
        app.append(np.zeros(999, np.uint8))
        assert app.committed == 0
        app.append(np.zeros(1, np.uint8))
        assert app.committed == 1000


def test_refusals(tmp_path: Path) -> None:
    with pytest.raises(FileMissingError, match="dtype"):
        bigarr.Appender(tmp_path / "missing.npy")
    np.save(tmp_path / "f.npy", np.asfortranarray(np.ones((3, 4))))
    with pytest.raises(ShapeError, match="Fortran"):
        bigarr.Appender(tmp_path / "f.npy")
    np.save(tmp_path / "c.npy", np.ones((3, 4), np.float32))
    with pytest.raises(DtypeError):
        bigarr.Appender(tmp_path / "c.npy", np.float64)
    with pytest.raises(ShapeError):
        bigarr.Appender(tmp_path / "c.npy", row_shape=(5,))
    with bigarr.Appender(tmp_path / "c.npy") as app:
        with pytest.raises(ShapeError, match="shape"):
            app.append(np.ones((2, 5), np.float32))
        with pytest.raises(DtypeError, match="castable"):
            app.append(np.ones((2, 4), np.complex64))
    with pytest.raises(ShapeError, match="at least one dimension"):
        bigarr.append(tmp_path / "new.npy", 3.0)


def test_kill_before_commit_leaves_the_old_valid_array(
    tmp_path: Path, run_py: Callable[..., CompletedProcess[str]]
) -> None:
    path = tmp_path / "k.npy"
    bigarr.append(path, np.arange(100.0))
    proc = run_py(f"""
        import os, signal, numpy as np, bigarr
        app = bigarr.Appender({str(path)!r})
        app.append(np.arange(50.0))
        app.commit()
        app.append(np.full(10_000, -1.0))  # written to the file, not yet committed
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert proc.returncode == -signal.SIGKILL
    got = np.load(path)
    np.testing.assert_array_equal(got, np.concatenate([np.arange(100.0), np.arange(50.0)]))
    bigarr.append(path, np.ones(2))  # and it keeps growing from there
    assert np.load(path).shape == (152,)
