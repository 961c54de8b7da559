"""``iter_chunks(direct=True)`` (bigarr._compute.directfill): chunks staged in anonymous memory
and written with ``O_DIRECT`` when the loop leaves them, with the mapping coherent throughout.

numpy is the oracle: every test fills a file and an in-memory array the same way and compares
them through the mapping during and after the loop, after ``close()``, and from the disk
(the file's cached pages evicted first).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._core.tracking import uffd_available
from bigarr._os.geometry import PAGE_SIZE, ByteSpan
from bigarr.errors import HintError, ModeError
from pagecache import evict

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="staging uses Linux's mremap and SEEK_DATA")

ROWS, COLS = 20_000, 32  # 2.4 MiB of float32: 10 chunks at a 512 KiB budget
BUDGET = 512 << 10


def _value(chunk: Any) -> np.ndarray[Any, Any]:
    rows = np.arange(chunk.rows.start, chunk.rows.stop, dtype=np.float32)
    return rows[:, None] * 10 + np.arange(COLS, dtype=np.float32)


def _from_disk(path: Path) -> np.ndarray[Any, Any]:
    """The file's contents as the disk holds them: its cached pages evicted first."""
    evict(path)
    return np.load(path)


def _fill(x: Any, expect: np.ndarray[Any, Any], **kw: Any) -> Iterator[Any]:
    """Fill ``x`` and ``expect`` chunk by chunk, checking the alias at each step; yields each
    chunk after it is filled (so a test can stop or raise there)."""
    for chunk, view in x.iter_chunks(kw.pop("budget", BUDGET), progress=False, direct=True,
                                     **kw):
        view[...] = _value(chunk)
        expect[chunk.key] = _value(chunk)
        np.testing.assert_array_equal(x[chunk.key], expect[chunk.key])  # view and x alias
        yield chunk


def test_direct_fill_is_coherent_and_durable(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    x = bigarr.create(path, (ROWS, COLS), np.float32)
    expect = np.zeros((ROWS, COLS), np.float32)
    before = float(x[-1, -1])  # the last page mapped and cached before the loop
    chunks = list(_fill(x, expect))
    assert before == 0 and len(chunks) >= 8
    np.testing.assert_array_equal(x[...], expect)  # through the mapping, before close()
    x.close()
    np.testing.assert_array_equal(_from_disk(path), expect)


def test_an_exception_keeps_every_write_made_before_it(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    x = bigarr.create(path, (ROWS, COLS), np.float32)
    expect = np.zeros((ROWS, COLS), np.float32)
    with pytest.raises(ZeroDivisionError):
        for chunk in _fill(x, expect):
            if chunk.index == 3:
                x[chunk.rows.start, 0] = -1.0  # the chunk in hand, written through x
                expect[chunk.rows.start, 0] = -1.0
                raise ZeroDivisionError
    x.close()  # the loop's generator may still be alive (the traceback): close() writes
    np.testing.assert_array_equal(_from_disk(path), expect)


def test_a_break_writes_the_chunk_in_hand_and_the_array_stays_usable(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    x = bigarr.create(path, (ROWS, COLS), np.float32)
    expect = np.zeros((ROWS, COLS), np.float32)
    loop = _fill(x, expect)
    for chunk in loop:
        if chunk.index == 2:
            break
    loop.close()
    np.testing.assert_array_equal(x[...], expect)
    x[-1] = 7.0  # the mapping is the file's again everywhere: ordinary writes work
    expect[-1] = 7.0
    x.close()
    np.testing.assert_array_equal(_from_disk(path), expect)


def test_existing_data_and_writes_ahead_of_the_loop_are_kept(tmp_path: Path) -> None:
    """A chunk of a file that holds data is staged with that data (and with what was written
    through the mapping since), so elements the loop does not write keep their values."""
    path = tmp_path / "f.npy"
    old = np.random.default_rng(0).standard_normal((ROWS, COLS)).astype(np.float32)
    np.save(path, old)  # a 128-byte header: the data does not start on a page
    expect = old.copy()
    x = bigarr.open(path, "r+")
    x[ROWS - 5] = 3.0  # ahead of the loop, through the mapping (dirty page cache)
    expect[ROWS - 5] = 3.0
    for chunk, view in x.iter_chunks(BUDGET, progress=False, direct=True):
        view[::2] = _value(chunk)[::2]  # every other row: the rest must stay as it was
        expect[chunk.key][::2] = _value(chunk)[::2]
    np.testing.assert_array_equal(x[...], expect)
    x.close()
    np.testing.assert_array_equal(_from_disk(path), expect)


def test_fortran_order_and_a_tail_that_ends_mid_page(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    shape = (3001, 77)  # 924,308 bytes of float32: the last page is partial
    x = bigarr.create(path, shape, np.float32, order="F")
    expect = np.zeros(shape, np.float32, order="F")
    for chunk, view in x.iter_chunks(256 << 10, progress=False, direct=True):
        view[...] = chunk.index + 1
        expect[chunk.key] = chunk.index + 1
    assert x.nbytes % PAGE_SIZE
    np.testing.assert_array_equal(x[...], expect)
    x.close()
    np.testing.assert_array_equal(_from_disk(path), expect)


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no tmpfs at /dev/shm")
def test_tmpfs_falls_back_to_buffered_writes() -> None:
    path = Path("/dev/shm") / f"bigarr-directfill-{os.getpid()}.npy"
    try:
        x = bigarr.create(path, (ROWS, COLS), np.float32, overwrite=True)
        expect = np.zeros((ROWS, COLS), np.float32)
        for _ in _fill(x, expect):
            pass
        np.testing.assert_array_equal(x[...], expect)
        x.close()
        np.testing.assert_array_equal(np.load(path), expect)
    finally:
        path.unlink(missing_ok=True)


def test_direct_needs_shared_mode_and_its_own_release(tmp_path: Path) -> None:
    path = tmp_path / "f.npy"
    bigarr.create(path, (ROWS, COLS), np.float32).close()
    for mode in ("r", "private"):
        with bigarr.open(path, mode) as y, pytest.raises(ModeError, match="shared"):
            next(y.iter_chunks(BUDGET, progress=False, direct=True))
    with bigarr.open(path, "r+") as y, pytest.raises(HintError, match="direct"):
        next(y.iter_chunks(BUDGET, progress=False, direct=True, release=True))


def test_chunks_are_staged_and_bypass_the_page_cache(tmp_path: Path) -> None:
    """The chunk in hand is anonymous memory (not the file's pages), and once written the
    range is in the file but not in its page cache (where the file system took O_DIRECT)."""
    from bigarr._os.cachestat import cached_pages

    path = tmp_path / "f.npy"
    x = bigarr.create(path, (ROWS, COLS), np.float32)
    m = x._bigarr
    spans = []
    for _chunk, view in x.iter_chunks(BUDGET, progress=False, direct=True):
        view[...] = 1.0
        start = m.offset_of(view)
        entries = m.pagemap(ByteSpan(start, start + view.nbytes))
        assert not np.any(entries & (1 << 61)), "a file page under the chunk in hand"
        spans.append((m.map_offset + start, view.nbytes))
    offset, nbytes = spans[0]
    cached = cached_pages(m.fd, offset, nbytes)
    x.close()
    if cached is None:
        pytest.skip("no cachestat on this kernel")
    assert cached == 0, f"{cached} pages of the first chunk went through the page cache"


_LATE = """
import numpy as np, bigarr
{patch}
x = bigarr.create({path!r}, ({rows}, {cols}), np.float32)
old = None
starts = []
for chunk, view in x.iter_chunks({budget}, progress=False, direct=True):
    if old is not None:
        old[0] = 5.0  # the chunk before: still on its way to the disk
    old = view
    starts.append(chunk.rows.start)
x.close()
print("done", *starts)
"""


def _late(tmp_path: Path, patch: str = "") -> subprocess.CompletedProcess[str]:
    """Run a direct fill that writes into each chunk the loop has just left."""
    code = _LATE.format(patch=patch, path=str(tmp_path / "f.npy"), rows=ROWS, cols=COLS,
                        budget=BUDGET)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=dict(os.environ))


@pytest.mark.skipif(not uffd_available(), reason="no userfaultfd write-protect here")
def test_writes_into_a_chunk_the_loop_has_left_are_kept(tmp_path: Path) -> None:
    """The chunk on its way to the disk is watched (userfaultfd): pages written meanwhile are
    written again before the range maps the file."""
    path = tmp_path / "f.npy"
    x = bigarr.create(path, (ROWS, COLS), np.float32)
    expect = np.zeros((ROWS, COLS), np.float32)
    old: Any = None
    old_row = 0
    for chunk, view in x.iter_chunks(BUDGET, progress=False, direct=True):
        view[...] = 1.0
        expect[chunk.key] = 1.0
        if old is not None:  # the chunk before: on its way to the disk
            old[0] = 5.0
            x[old_row + 1] = 6.0
            expect[old_row] = 5.0
            expect[old_row + 1] = 6.0
        old, old_row = view, chunk.rows.start
    del old
    np.testing.assert_array_equal(x[...], expect)
    x.close()
    np.testing.assert_array_equal(_from_disk(path), expect)


def test_without_a_watch_a_late_write_lands_in_the_mapping(tmp_path: Path) -> None:
    """Where userfaultfd cannot watch, each chunk is on the disk and mapped from the file again
    before the loop gets the next one: a write through the old view is kept (regression: the
    chunk was read-only instead, and the write crashed the process with SIGSEGV)."""
    proc = _late(tmp_path, "import bigarr._core.tracking as t\n"
                           "t.watch_writes = lambda addr, nbytes: None")
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "done" in proc.stdout
    got = _from_disk(tmp_path / "f.npy")
    starts = [int(s) for s in proc.stdout.split()[1:]]
    assert len(starts) > 2
    for start in starts[:-1]:  # every chunk but the last was written into once left
        assert got[start, 0] == 5.0, start


def test_release_behind_of_another_run_never_drops_a_staged_chunk(tmp_path: Path) -> None:
    """A reduction over the array inside the loop releases its input pages behind it
    (``MADV_DONTNEED``); on the staged chunk that would throw the chunk's writes away."""
    path = tmp_path / "f.npy"
    x = bigarr.create(path, (ROWS, COLS), np.float32)
    expect = np.zeros((ROWS, COLS), np.float32)
    for chunk in _fill(x, expect):
        got = bigarr.sum(x, dtype=np.float64, budget="256KiB", threads=1, progress=False)
        assert float(got) == float(expect.sum(dtype=np.float64)), chunk.index
    np.testing.assert_array_equal(x[...], expect)
    x.close()
    np.testing.assert_array_equal(_from_disk(path), expect)


def test_a_strided_view_is_filled_through_the_mapping_and_a_tiny_budget_is_explained(
    tmp_path: Path,
) -> None:
    path = tmp_path / "f.npy"
    x = bigarr.create(path, (ROWS, COLS), np.float32)
    for chunk, view in x[:, :4].iter_chunks(BUDGET, progress=False, direct=True):
        view[...] = chunk.index + 1
    assert x[0, 0] == 1 and x[0, 4] == 0 and x[-1, 3] > 1
    with pytest.raises(bigarr.errors.BudgetError, match="direct=True"):
        next(x.iter_chunks(COLS * 4, progress=False, direct=True))
    x.close()


@pytest.mark.parametrize("existing", [False, True])
def test_memory_made_ready_ahead_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        existing: bool) -> None:
    """With a budget of three chunks of at least SPARE_MIN, each chunk's memory is made
    ready by a helper thread (zeroed, or read into when the file holds data) and moved in."""
    from bigarr._compute.directfill import SPARE_MIN
    from bigarr._os.mapping import Spare

    spent = []
    real = Spare.spent
    monkeypatch.setattr(Spare, "spent", lambda self: (spent.append(self.nbytes), real(self)))
    rows = 5 * SPARE_MIN // (COLS * 4) + 123
    path = tmp_path / "f.npy"
    old = np.arange(rows * COLS, dtype=np.float32).reshape(rows, COLS)
    if existing:
        np.save(path, old)
        x = bigarr.open(path, "r+")
        expect = old.copy()
    else:
        x = bigarr.create(path, (rows, COLS), np.float32)
        expect = np.zeros_like(old)
    for chunk, view in x.iter_chunks(3 * SPARE_MIN, progress=False, direct=True):
        view[1::3] = -chunk.index
        expect[chunk.key][1::3] = -chunk.index
    np.testing.assert_array_equal(x[...], expect)
    x.close()
    np.testing.assert_array_equal(_from_disk(path), expect)
    assert len(spent) >= 3, spent  # the middle chunks: the first and last differ in size


def test_a_failed_write_is_raised_and_leaves_no_range_staged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    from bigarr._os.sink import Sink

    real = Sink._put_lent
    calls = []

    def failing(self: Sink, piece: Any, offset: int) -> None:
        calls.append(offset)
        if len(calls) == 1:
            raise OSError(errno.EIO, "injected")
        real(self, piece, offset)

    monkeypatch.setattr(Sink, "_put_lent", failing)
    path = tmp_path / "f.npy"
    x = bigarr.create(path, (ROWS, COLS), np.float32)
    filled = []
    with pytest.raises(OSError, match="injected"):
        for chunk, view in x.iter_chunks(BUDGET, progress=False, direct=True):
            view[...] = 1.0
            filled.append(chunk)
    # chunk 0's write failed, and was raised when the loop asked for chunk 2; chunk 1, in
    # flight then, was written when the loop ended; the mapping is the file's everywhere
    assert [c.index for c in filled] == [0, 1] and not x._bigarr._staged
    assert not x[filled[0].key].any() and (x[filled[1].key] == 1).all()
    assert not x[filled[1].rows.stop:].any()
    x[0] = 2.0  # writable through the mapping
    x.close()
    disk = _from_disk(path)
    assert disk[0, 0] == 2.0 and (disk[filled[1].key] == 1).all()
