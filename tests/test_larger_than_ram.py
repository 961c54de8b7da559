"""Files larger than RAM + swap, in every mode (issue 17), cheaply: sparse ``.npy`` files.

A sparse file costs no disk and reads as zeros, so a file larger than this machine's memory
plus swap (at least 40 GiB) can be opened, edited, committed and streamed over in the default
run. Regression: private mode refused such files (``MappingError: Cannot allocate memory``),
because a writable private mapping was charged in full against the commit limit; it is now
made with ``MAP_NORESERVE``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import bigarr
from bigarr._formats.npy import build_header

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="sizes of memory from /proc/meminfo; sparse ext4-like files")

COLS = 32  # float32 rows of 128 bytes


def _meminfo(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) << 10
    return 0


def _strict_overcommit() -> bool:
    try:
        with open("/proc/sys/vm/overcommit_memory") as f:
            return f.read().strip() == "2"
    except OSError:
        return False


#: Larger than RAM + swap, and at least 40 GiB.
SIZE = max(40 << 30, (_meminfo("MemTotal") + _meminfo("SwapTotal") + (1 << 30)) // (1 << 30)
           * (1 << 30))
ROWS = SIZE // (COLS * 4)


@pytest.fixture(scope="module")
def sparse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A page-aligned float32 (ROWS, 32) .npy file, all hole: no disk blocks."""
    path = tmp_path_factory.mktemp("huge") / "huge.npy"
    header = build_header((ROWS, COLS), np.dtype(np.float32), False, align=bigarr.PAGE_SIZE)
    try:
        with open(path, "wb") as f:
            f.write(header)
            f.truncate(len(header) + SIZE)
    except OSError as exc:  # a file system without sparse files this large
        pytest.skip(f"cannot make a sparse {SIZE >> 30} GiB file here: {exc.strerror}")
    assert os.stat(path).st_blocks * 512 < 1 << 20  # sparse indeed
    yield path
    path.unlink()


def test_the_file_is_larger_than_memory_and_swap(sparse: Path) -> None:
    assert os.path.getsize(sparse) > _meminfo("MemTotal") + _meminfo("SwapTotal")


def _room_for_holes(sparse: Path) -> None:
    """A shared mapping of a sparse file is refused when the disk cannot hold its holes."""
    st = os.statvfs(sparse)
    if st.f_bavail * st.f_frsize < SIZE:
        pytest.skip(f"shared mode of a sparse {SIZE >> 30} GiB file needs that much free disk")


@pytest.mark.parametrize("mode", ["r", "shared", "private"])
def test_opens_in_every_mode(sparse: Path, mode: str) -> None:
    if mode == "private" and _strict_overcommit():
        with pytest.raises(bigarr.errors.MappingError, match="overcommit"):
            bigarr.open(sparse, mode)
        return
    if mode == "shared":
        _room_for_holes(sparse)
    with bigarr.open(sparse, mode) as x:
        assert x.shape == (ROWS, COLS) and x.nbytes == SIZE
        assert x[0, 0] == 0 and x[-1, -1] == 0


def test_shared_write_reaches_the_file(sparse: Path) -> None:
    _room_for_holes(sparse)
    with bigarr.open(sparse, "shared") as x:
        x[-1] = 7
        x.flush(slice(ROWS - 1, ROWS))
    with bigarr.open(sparse) as y:
        assert (y[-1] == 7).all()
    with bigarr.open(sparse, "shared") as x:  # back to zeros (one block stays allocated)
        x[-1] = 0


@pytest.mark.skipif(_strict_overcommit(), reason="strict overcommit charges the whole mapping")
def test_private_edit_dirty_commit_discard(sparse: Path) -> None:
    with bigarr.open(sparse, "private", scratch_limit="1MiB") as x:
        x[0, :4] = 1
        x[ROWS // 2, 5] = 2
        x[-1, -1] = 3
        edits = x.dirty()
        assert edits.count == 6
        assert [(r.start, r.stop) for r in edits.rows] == [(0, 1), (ROWS // 2, ROWS // 2 + 1),
                                                          (ROWS - 1, ROWS)]
        assert x.scratch_bytes() == 3 * bigarr.PAGE_SIZE
        assert x.discard(slice(ROWS // 2, ROWS // 2 + 1)) == bigarr.PAGE_SIZE
        assert x[ROWS // 2, 5] == 0 and x.dirty().count == 5
        with pytest.raises(bigarr.errors.ScratchLimitError):
            x[1000:20000] = 5  # 2.3 MiB of pages, over the 1 MiB limit: nothing written
        assert x.commit() == 2 * bigarr.PAGE_SIZE
        assert x.scratch_bytes() == 0 and x.dirty().count == 0
        assert x[-1, -1] == 3  # the mapping shows the file, which holds the edits
    with bigarr.open(sparse) as y:
        assert (y[0, :4] == 1).all() and y[-1, -1] == 3 and y[ROWS // 2, 5] == 0
        assert y[1000, 0] == 0
    with bigarr.open(sparse, "private") as x:  # leave zeros for the other tests
        x[0, :4] = 0
        x[-1, -1] = 0
        x.commit()
    assert os.stat(sparse).st_blocks * 512 < 1 << 20  # still sparse: only two pages written


def test_advise_and_resident(sparse: Path) -> None:
    region = slice(ROWS - 8192, ROWS)  # the last 1 MiB
    with bigarr.open(sparse) as x:
        assert x.advise("random") in (True, False)  # the whole file: no I/O
        assert x.advise("willneed", region) in (True, False)  # a bounded region only
        r = x.resident(region, budget="1MiB")
        assert r.total_pages == (1 << 20) // bigarr.PAGE_SIZE
        assert 0 <= r.resident_pages <= r.total_pages
        x.advise("normal")


def test_streamed_reduction_over_a_bounded_region(sparse: Path) -> None:
    with bigarr.open(sparse) as x:
        part = x[ROWS // 3: ROWS // 3 + (16 << 20) // (COLS * 4)]  # 16 MiB from the middle
        s = bigarr.sum(part, axis=0, dtype=np.float64, budget="4MiB", progress=False)
        assert s.shape == (COLS,) and not s.any()
        assert bigarr.max(part, budget="4MiB", progress=False) == 0
