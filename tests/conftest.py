"""Shared fixtures: small files made fresh for each test."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture
def npy_path(tmp_path: Path) -> Path:
    """A numpy-written .npy file (numpy's own 64-byte header alignment) of float32 (100, 7)."""
    path = tmp_path / "numpy.npy"
    np.save(path, np.arange(700, dtype=np.float32).reshape(100, 7))
    return path


def _evict(path: Path) -> None:
    """Drop ``path`` from the page cache (clean pages no process maps), after writing it back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture
def evict() -> Callable[[Path], None]:
    """The page-cache eviction helper; skips where the OS has no ``posix_fadvise``."""
    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise to evict a file from the page cache")
    return _evict


@pytest.fixture
def run_py(tmp_path: Path) -> Callable[[str], subprocess.CompletedProcess[str]]:
    """Run a snippet in a fresh interpreter; return the completed process (never raises)."""

    def run(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PYTHONFAULTHANDLER="1")
        return subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
        )

    return run
