"""The scratch limit of private mode (``bigarr.open(path, "private", scratch_limit=...)``).

Each check point of the contract in :mod:`bigarr._core.scratch` is pinned: refused *before*
the write (nothing written, nothing copied) for basic indexing, ufuncs with ``out=`` and
boolean masks or row indices; caught *after* it (edits kept) for other fancy indexes, for
plain numpy writes at the next ``iter_chunks`` step, and at ``check_scratch()``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import bigarr
from bigarr._core import dirtypages as _dirtypages
from bigarr.errors import BigArrError, BudgetError, ModeError, ScratchLimitError

PAGE = bigarr.PAGE_SIZE
ROW = PAGE  # one page per row: float32 rows of 1024 columns, page-aligned by bigarr.create


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "s.npy"
    with bigarr.create(p, (256, ROW // 4), np.float32) as x:
        x[...] = np.arange(256, dtype=np.float32)[:, None]
    return p


@pytest.fixture
def x(path: Path) -> Iterator[bigarr.memmap]:
    with bigarr.open(path, "private", scratch_limit=16 * PAGE) as arr:
        yield arr


def test_the_error_is_a_memory_error_and_a_bigarr_error() -> None:
    assert issubclass(ScratchLimitError, MemoryError)
    assert issubclass(ScratchLimitError, BigArrError)


def test_limit_is_parsed_at_the_boundary(path: Path) -> None:
    with bigarr.open(path, "c", scratch_limit="64KiB") as y:
        y[:16] = 0
        with pytest.raises(ScratchLimitError):
            y[16] = 0
    with pytest.raises(ModeError, match="private"):
        bigarr.open(path, "shared", scratch_limit="1MiB")
    with pytest.raises(BudgetError, match="scratch_limit"):
        bigarr.open(path, "private", scratch_limit="lots")
    with bigarr.open_raw(path, np.uint8, mode="private", scratch_limit=PAGE) as raw:
        raw[:PAGE] = 1
        with pytest.raises(ScratchLimitError):
            raw[PAGE:PAGE + 1] = 1
    # numpy's constructor, with bigarr's keyword: the same limit in mode "c"
    with bigarr.memmap(path, np.uint8, mode="c", scratch_limit=2 * PAGE) as mm:
        mm[:2 * PAGE] = 1
        with pytest.raises(ScratchLimitError):
            mm[2 * PAGE] = 1
        assert mm.scratch_bytes() == 2 * PAGE
    with pytest.raises(ModeError, match="private"):
        bigarr.memmap(path, np.uint8, mode="r", scratch_limit="1MiB")


def test_basic_indexing_is_refused_before_the_write(x: bigarr.memmap, path: Path) -> None:
    x[:10] = -1
    with pytest.raises(ScratchLimitError, match="Nothing was written") as info:
        x[10:20] = -2  # 10 more pages: 20 > 16
    assert "40.0 KiB" in str(info.value) and "64.0 KiB" in str(info.value)  # held, limit
    assert x.scratch_bytes() == 10 * PAGE  # no page was copied
    np.testing.assert_array_equal(x[10:20, 0], np.arange(10, 20))
    x[10:16] = -2  # exactly at the limit
    x[:16, :5] = 7  # pages already copied cost nothing, at the limit
    with pytest.raises(ScratchLimitError):
        x[16, 0] = 1  # a single element: its page
    assert x.check_scratch() == 16 * PAGE


def test_ufunc_out_is_refused_before_the_write(x: bigarr.memmap) -> None:
    with pytest.raises(ScratchLimitError):
        np.add(x[:20], 1, out=x[:20])
    with pytest.raises(ScratchLimitError):
        x[:20] += 1
    assert x.scratch_bytes() == 0
    x[:8] += 1
    assert x.scratch_bytes() == 8 * PAGE and x[7, 3] == 8


def test_masks_and_row_indices_count_only_their_pages(x: bigarr.memmap) -> None:
    rows = x[:, 0] % 20 == 0  # 13 rows of 256
    x[rows] = -1
    assert x.scratch_bytes() == 13 * PAGE
    with pytest.raises(ScratchLimitError):
        x[x[:, 0] >= 0] = 0  # every other row
    assert x.scratch_bytes() == 13 * PAGE
    x[[1, 2, -1]] = 5  # 3 more pages: 16
    assert x.scratch_bytes() == 16 * PAGE and x[255, 0] == 5
    with pytest.raises(ScratchLimitError):
        x[np.array([3])] = 5


def test_in_place_methods_and_numpy_functions_are_checked(x: bigarr.memmap) -> None:
    # Regression: x.fill(0), np.copyto(x, v), x.sort(), np.dot(..., out=x) and np.put/place/
    # putmask pass through bigarr (its methods and __array_function__) but were not checked:
    # a fill of a private file larger than RAM went to the OOM killer despite scratch_limit.
    refused_before = [
        lambda: x.fill(0), lambda: x[:20].fill(0), lambda: np.copyto(x, 0),
        lambda: x[:20].sort(axis=0), lambda: x[:20].partition(1, axis=0),
        lambda: x[:20].byteswap(inplace=True),
        lambda: np.dot(np.ones((20, 1), np.float32), np.ones((1, ROW // 4), np.float32),
                       out=x[:20]),
    ]
    for write in refused_before:
        with pytest.raises(ScratchLimitError, match="Nothing was written"):
            write()
        assert x.scratch_bytes() == 0
    assert x[19, 3] == 19
    x[:8].fill(-1)
    np.copyto(x[8:16], 7)
    assert x.scratch_bytes() == 16 * PAGE and x[7, 0] == -1 and x[15, 0] == 7
    assert x[16:].byteswap().dtype == x.dtype  # a copy: nothing written, nothing checked
    refused_after = [
        lambda: np.put(x, np.arange(0, x.size, ROW // 4), -2),
        lambda: np.place(x, x > 200, -3), lambda: np.putmask(x, x > 200, -4),
        lambda: x.put(np.arange(0, x.size, ROW // 4), -5),
    ]
    for write in refused_after:
        with pytest.raises(ScratchLimitError, match="edits are kept"):
            write()
        x.discard(slice(16, None))
        assert x.scratch_bytes() == 16 * PAGE


def test_other_fancy_indexes_are_caught_after_the_write(x: bigarr.memmap) -> None:
    x[:10] = -1
    with pytest.raises(ScratchLimitError, match="edits are kept"):
        x[np.arange(10, 30), np.arange(20)] = 9  # pairs of indices: pages known only after
    assert x[29, 19] == 9 and x.scratch_bytes() == 30 * PAGE
    x.discard(slice(10, 30))
    x[10:16] = 1  # back under the limit after the discard
    assert x.check_scratch() == 16 * PAGE


def test_plain_numpy_writes_are_caught_at_each_iteration_step(x: bigarr.memmap) -> None:
    steps = 0
    with pytest.raises(ScratchLimitError, match="edits are kept"):
        for _chunk, view in x.iter_chunks(8 * PAGE, prefetch=0, progress=False):
            np.asarray(view)[:] = -3  # no bigarr hook runs before this write
            steps += 1
    assert steps == 3  # 8 pages, 16 pages (the limit), then 24: refused at the third step
    assert x.scratch_bytes() == 24 * PAGE
    assert x.commit() == 24 * PAGE  # committing frees them
    for _chunk, view in x.iter_chunks(8 * PAGE, prefetch=0, progress=False):
        view[:2] = 0  # two pages per chunk through bigarr
        if _chunk.index == 7:  # 16 pages
            break
    with pytest.raises(ScratchLimitError, match="Nothing was written"):
        x[200:210] = 0


def test_check_scratch_sees_what_no_hook_saw(x: bigarr.memmap, path: Path) -> None:
    raw = np.asarray(x)
    raw[:20] = 0
    with pytest.raises(ScratchLimitError, match=r"80\.0 KiB"):
        x.check_scratch()
    assert x.discard() == 20 * PAGE
    assert x.check_scratch() == 0
    np.testing.assert_array_equal(np.load(path), np.asarray(x))


def test_commit_frees_the_budget(x: bigarr.memmap, path: Path) -> None:
    x[:16] = -1
    with pytest.raises(ScratchLimitError):
        x[16:17] = -1
    assert x.commit() == 16 * PAGE
    x[16:32] = -1
    assert x.commit() == 16 * PAGE
    assert (np.load(path)[:32] == -1).all()


def test_without_a_limit_nothing_is_checked(path: Path) -> None:
    with bigarr.open(path, "private") as y:
        np.asarray(y)[:] = 0
        assert y.check_scratch() == 256 * PAGE
        y[:] = 1


def test_compare_backend_counts_differing_pages(
    path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_dirtypages, "BACKEND", "compare")
    with bigarr.open(path, "private", scratch_limit=4 * PAGE) as y:
        y[:4] = -1
        with pytest.raises(ScratchLimitError):
            y[4:6] = -1
        assert y.check_scratch() == 4 * PAGE


def test_a_mask_over_a_file_ending_mid_page(tmp_path: Path) -> None:
    # numpy's own layout: data 128 bytes in, ending mid-page; the mask of the last, partial
    # page must line up with the page table (it was one entry short: a broadcasting error).
    p = tmp_path / "np.npy"
    np.save(p, np.zeros((1000, 3), dtype=np.float32))  # 12,128 bytes
    with bigarr.open(p, "private", scratch_limit=2 * PAGE) as y:
        y[:50] = 1  # the first page
        with pytest.raises(ScratchLimitError):
            y[y[:, 0] == 0] = 2  # rows 50-999: the first page and two more
        assert y.scratch_bytes() == PAGE
    with bigarr.open(p, "private", scratch_limit=4 * PAGE) as y:
        y[y[:, 0] == 0] = 2
        y[[-1]] = 3
        assert y.check_scratch() == 3 * PAGE and y[-1, 0] == 3
