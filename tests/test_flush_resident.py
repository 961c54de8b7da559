"""Ranged flush cleans exactly the outward-rounded pages; release-behind bounds peak RSS.

Dirty pages are counted from this mapping's own ``/proc/self/smaps`` entry (Shared_Dirty +
Private_Dirty), which the kernel clears page by page when msync writes a page back. That is
per-mapping and deterministic (background write-back starts only after ~30 s of dirtiness).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._os.geometry import PAGE_SIZE, ByteSpan

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /proc")

ROW = 1000  # bytes per row: rows straddle pages


def _dirty_pages(arr: Any) -> int:
    """Dirty pages of arr's mapping, from its /proc/self/smaps entry."""
    addr = arr._bigarr.addr
    kib, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head in ("Shared_Dirty:", "Private_Dirty:"):
                kib += int(line.split()[1])
    return kib * 1024 // PAGE_SIZE


def _touch_every_page(a: Any) -> None:
    flat = a.reshape(-1)
    flat[:: PAGE_SIZE // a.itemsize] = 1  # one byte per page
    flat[-1] = 1


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "flush.npy"
    bigarr.create(p, (2000, ROW), np.uint8).close()  # 2 MB after a 4 KiB header
    return p


def test_flush_region_cleans_exactly_its_outward_pages(path: Path) -> None:
    with bigarr.open(path, "r+") as a:
        _touch_every_page(a)
        m = a._bigarr
        total = len(ByteSpan(m.data_start, m.length).pages())
        assert _dirty_pages(a) == total
        a.flush((123, 456))
        pages = ByteSpan(m.data_start + 123 * ROW, m.data_start + 456 * ROW).pages()
        assert _dirty_pages(a) == total - len(pages)
        a.flush(a[1990:])  # the tail: clipped to the mapping, last partial page included
        tail = ByteSpan(m.data_start + 1990 * ROW, m.length).pages()
        assert _dirty_pages(a) == total - len(pages) - len(tail)
        a.flush()
        assert _dirty_pages(a) == 0
    with bigarr.open(path, "r") as b:
        assert int(b[0, 0]) == 1 and int(b[-1, -1]) == 1


def test_flush_a_chunk(path: Path) -> None:
    with bigarr.open(path, "r+") as a:
        plan = a.plan("64KiB")
        _touch_every_page(a)
        before = _dirty_pages(a)
        a.flush(plan[3])
        assert _dirty_pages(a) == before - len(plan[3].span.pages())  # chunk 3 starts on a page


def test_flush_is_a_no_op_in_readonly_and_private(path: Path) -> None:
    with bigarr.open(path, "r") as a:
        a.flush((0, 10))
    with bigarr.open(path, "c") as a:
        a[0] = 9
        a.flush()
        assert _dirty_pages(a) >= 1  # the scratch copy stays
    with bigarr.open(path, "r") as a:
        assert int(a[0, 0]) == 0  # private edits never reach the file


def test_release_behind_flushes_shared_chunks(path: Path) -> None:
    with bigarr.open(path, "r+") as a:
        for _c, v in a.iter_chunks("64KiB", progress=False):
            v[...] = 3
        del v
        assert _dirty_pages(a) <= len(a.plan("32KiB")[-1].span.pages()) + 1  # only the last
    with bigarr.open(path, "r") as b:
        assert int(b.min()) == 3


_RSS_CHILD = """
import resource, sys, numpy as np, bigarr

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

release = sys.argv[2] == "release"
a = bigarr.open(sys.argv[1], "r")
base = status("VmRSS:")
total = 0.0
for chunk, view in a.iter_chunks("16MiB", progress=False, release=release):
    total += float(view.sum(dtype=np.float64))
del view
print(status("VmHWM:") - base, total)
"""


@pytest.mark.parametrize("release", ["release", "keep"])
def test_peak_rss_of_a_streaming_sum_stays_within_budget(
    tmp_path: Path, release: str, evict: Callable[[Path], None]
) -> None:
    import subprocess

    path = tmp_path / "big.npy"
    n = 96 << 20  # 384 MiB of float32
    with bigarr.create(path, (n,), np.float32) as a:
        for start in range(0, n, 8 << 20):
            a[start:start + (8 << 20)] = 1.0
            a.flush((start, start + (8 << 20)))
            a.advise("dontneed", (start, start + (8 << 20)))
    evict(path)
    proc = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(path), release],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    peak, total = proc.stdout.split()
    assert float(total) == float(n)
    budget, margin = 16 << 20, 16 << 20
    if release == "release":
        assert int(peak) <= budget + margin, f"peak RSS grew by {int(peak) >> 20} MiB"
    else:  # without release-behind the mapped file pages pile up: the bound is meaningful
        assert int(peak) > 4 * budget
