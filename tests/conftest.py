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

import pagecache


@pytest.fixture
def npy_path(tmp_path: Path) -> Path:
    """A numpy-written .npy file (numpy's own 64-byte header alignment) of float32 (100, 7)."""
    path = tmp_path / "numpy.npy"
    np.save(path, np.arange(700, dtype=np.float32).reshape(100, 7))
    return path


@pytest.fixture
def evict() -> Callable[[Path], None]:
    """The page-cache eviction helper; skips where the OS has no ``posix_fadvise``."""
    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise to evict a file from the page cache")
    return pagecache.evict


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


# ---- peak RSS in a fresh interpreter ---------------------------------------------------------
_RSS_PRELUDE = """\
import sys


def _status(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) << 10
    raise KeyError(key)


def _reset():
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # VmHWM back to the current resident memory
    return _status('VmRSS')
"""


def _peak_rss_growth(setup: str, *steps: str, args: tuple[str, ...] = (),
                     env: dict[str, str] | None = None, timeout: float = 300) -> list[int]:
    """Run ``setup``, then each of ``steps``, in one fresh interpreter; return each step's peak
    RSS growth in bytes (``VmHWM`` after the step over ``VmRSS`` just before it: the peak is
    reset through ``/proc/self/clear_refs`` before every step). ``args`` become ``sys.argv[1:]``.
    A failed child fails the test with its stderr."""
    parts = [_RSS_PRELUDE, textwrap.dedent(setup)]
    for step in steps:
        parts += ["_base = _reset()", textwrap.dedent(step),
                  "print('PEAK', _status('VmHWM') - _base, flush=True)"]
    proc = subprocess.run([sys.executable, "-c", "\n".join(parts), *args], capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, **(env or {})))
    assert proc.returncode == 0, proc.stderr[-3000:]
    peaks = [int(line.split()[1]) for line in proc.stdout.splitlines() if line.startswith("PEAK ")]
    assert len(peaks) == len(steps), proc.stdout[-2000:]
    return peaks


@pytest.fixture
def peak_rss() -> Callable[..., list[int]]:
    """:func:`_peak_rss_growth`; skips where the OS has no ``VmHWM`` reset (not Linux)."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs /proc/self/clear_refs to reset the peak RSS (VmHWM)")
    return _peak_rss_growth
