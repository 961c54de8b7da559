"""Access hints: they land on the outward-rounded pages of the region, and bad input is refused.

Page residency is read with mincore (``arr.resident``) after evicting the file from the page
cache with ``posix_fadvise(DONTNEED)``, which drops clean pages no process maps: so after an
eviction, exactly the pages some mapping still maps stay resident.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._os.geometry import PAGE_SIZE, ByteSpan
from bigarr.errors import HintError, RegionError

ROW = 1000  # bytes per row: rows straddle pages, so rounding is exercised


def _pages(arr: Any) -> np.ndarray[Any, Any]:
    """Residency of every page of arr's mapping (mincore)."""
    m = arr._bigarr
    return m.residency(ByteSpan(0, m.length))


def _settled(arr: Any, want: range) -> np.ndarray[Any, Any]:
    """Residency once the pages of ``want`` are in (willneed read-ahead completes
    asynchronously; mincore counts a page once its read has finished). Polls up to 10 s."""
    deadline = time.monotonic() + 10
    pages = _pages(arr)
    while not pages[want.start:want.stop].all() and time.monotonic() < deadline:
        time.sleep(0.01)
        pages = _pages(arr)
    return pages


def _outward_pages(arr: Any, rows: tuple[int, int]) -> range:
    m = arr._bigarr
    start = m.data_start + rows[0] * ROW
    return ByteSpan(start, m.data_start + rows[1] * ROW).pages(PAGE_SIZE)


@pytest.fixture
def data(tmp_path: Path, evict: Callable[[Path], None]) -> Path:
    path = tmp_path / "hints.npy"
    with bigarr.create(path, (8192, ROW), np.uint8) as a:  # 8 MB
        a[:] = 7
    evict(path)
    with bigarr.open(path, "r") as a:
        if _pages(a).sum() > 16:
            pytest.skip("posix_fadvise(DONTNEED) does not evict here (tmpfs?)")
    return path


def test_willneed_reads_exactly_the_outward_rounded_pages(
    data: Path, evict: Callable[[Path], None]
) -> None:
    with bigarr.open(data, "r") as a:
        before = _pages(a).copy()
        assert a.advise("willneed", (3001, 3017)) is True
        want = _outward_pages(a, (3001, 3017))
        after = _settled(a, want)
        assert after[want.start:want.stop].all()
        # Read-ahead may add a folio at most around the range, never pages far away.
        far = np.ones_like(after)
        far[max(0, want.start - 512):want.stop + 512] = False
        assert not (after & ~before & far).any()


def test_dontneed_drops_exactly_the_outward_rounded_pages(
    data: Path, evict: Callable[[Path], None]
) -> None:
    with bigarr.open(data, "r") as a:
        a.advise("populate_read", (1000, 2000))  # map rows 1000..2000 into this process
        assert int(np.asarray(a[1000:2000]).sum()) == 7 * 1000 * ROW
        assert a.advise("dontneed", (1234, 1301)) is True
        evict(data)  # drops every cached page this process no longer maps
        pages = _pages(a)
        drop = _outward_pages(a, (1234, 1301))
        kept = _outward_pages(a, (1000, 2000))
        assert not pages[drop.start:drop.stop].any()
        # The pages just outside the rounded range are still mapped, hence still resident.
        assert pages[kept.start + 1:drop.start].all()
        assert pages[drop.stop:kept.stop - 1].all()


def test_hint_on_a_chunk_and_on_a_view(data: Path) -> None:
    with bigarr.open(data, "r") as a:
        chunk = a.plan("64KiB")[5]
        assert a.advise("willneed", chunk)
        want = chunk.span.shift(a._bigarr.data_start).pages(PAGE_SIZE)
        assert _settled(a, want)[want.start:want.stop].all()
        view = a[6000:6010]
        assert a.advise("willneed", view)
        want = _outward_pages(a, (6000, 6010))
        assert _settled(a, want)[want.start:want.stop].all()
        del view


def test_residency_report_per_chunk(data: Path) -> None:
    with bigarr.open(data, "r") as a:
        plan = a.plan("1MiB")
        a.advise("willneed", plan[2])
        want = plan[2].span.shift(a._bigarr.data_start).pages(PAGE_SIZE)
        _settled(a, want)
        r = a.resident(budget="1MiB")
        assert [c.index for c in r.chunks] == list(range(len(plan)))
        assert r.chunks[2].fraction == 1.0
        assert r.chunks[len(plan) - 1].fraction < 0.5
        assert 0.0 < r.fraction < 1.0
        assert r.resident_bytes == r.resident_pages * PAGE_SIZE
        sub = a.resident((0, 100), budget="1MiB")
        assert sub.total_pages == len(_outward_pages(a, (0, 100)))
        assert [c.index for c in sub.chunks] == [0]


def test_unknown_hint_is_refused_with_the_choices() -> None:
    with pytest.raises(HintError, match="sequential"):
        bigarr._os.hints.parse_hint("sequentail")


def test_bad_hints_and_regions_raise_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "small.npy"
    bigarr.create(path, (100, 10), np.float32).close()
    with bigarr.open(path, "r") as a:
        with pytest.raises(HintError, match="Expected one of"):
            a.advise("fast")
        with pytest.raises(HintError):
            a.advise(3)  # type: ignore[arg-type]
        with pytest.raises(HintError, match="shared"):
            a.advise("populate_write")
        with pytest.raises(RegionError, match="out of range"):
            a.advise("willneed", 100)
        with pytest.raises(RegionError, match="step 1"):
            a.advise("willneed", slice(0, 10, 2))
        with pytest.raises(RegionError):
            a.advise("willneed", (5, 200))
        with pytest.raises(RegionError, match="Expected a region"):
            a.advise("willneed", "rows 1-2")
        with pytest.raises(RegionError, match="another array"):
            a.advise("willneed", np.zeros(3))
        other = bigarr.plan_chunks((1000, 10), np.float32, budget=4096)
        with pytest.raises(RegionError, match="shape"):
            a.advise("willneed", other[-1])


def test_private_mode_refuses_hints_that_drop_edits(tmp_path: Path) -> None:
    path = tmp_path / "p.npy"
    bigarr.create(path, (100, 1024), np.float32).close()
    with bigarr.open(path, "c") as a:
        a[5] = 1.0
        for name in ("dontneed", "pageout", "populate_write"):
            with pytest.raises(HintError):
                a.advise(name, 5)
        assert a.advise("willneed") is True
        assert float(a[5].sum()) == 1024.0  # the edit survived


def test_supported_hints_and_no_op_hints() -> None:
    names = bigarr.supported_hints()
    assert set(names) <= set(bigarr.HINT_NAMES)
    assert {"normal", "sequential", "random", "willneed", "dontneed"} <= set(names)


def test_every_supported_hint_applies_or_reports_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "all.npy"
    bigarr.create(path, (64, 1024), np.float32).close()
    with bigarr.open(path, "r+") as a:
        for name in bigarr.HINT_NAMES:
            assert isinstance(a.advise(name, (3, 9)), bool)
        assert a.advise("normal") is True
        assert float(a.sum()) == 0.0  # no hint changed the data


def test_hint_on_empty_array_and_detached_copy(tmp_path: Path) -> None:
    path = tmp_path / "empty.npy"
    bigarr.create(path, (0, 4), np.float32).close()
    with bigarr.open(path, "r") as a:
        assert a.advise("willneed") is True
        assert a.resident().fraction == 1.0
    path = tmp_path / "one.npy"
    bigarr.create(path, (4,), np.float32).close()
    with bigarr.open(path, "r") as a:
        copy = a + 1  # a plain ndarray
        assert not isinstance(copy, bigarr.memmap)
        detached = a.copy()
        assert detached.advise("willneed") is False


def _mapped(arr: Any) -> np.ndarray[Any, Any]:
    """Per page of arr's mapping: is it mapped in this process (pagemap bit 63)?"""
    m = arr._bigarr
    npages = -(-m.length // PAGE_SIZE)
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(m.addr // PAGE_SIZE * 8)
        entries = np.frombuffer(f.read(npages * 8), dtype=np.uint64)
    return (entries >> np.uint64(63)).astype(bool)


@pytest.mark.skipif(not os.path.exists("/proc/self/pagemap"), reason="needs /proc/self/pagemap")
def test_populate_read_maps_the_outward_pages_and_dontneed_unmaps_them(tmp_path: Path) -> None:
    path = tmp_path / "map.npy"
    bigarr.create(path, (4096, ROW), np.uint8).close()  # 4 MB
    with bigarr.open(path, "r") as a:
        if "populate_read" not in bigarr.supported_hints() or not a.advise("populate_read", 0):
            pytest.skip("MADV_POPULATE_READ is not available on this kernel")
        a.advise("dontneed")
        assert not _mapped(a).any()
        want = _outward_pages(a, (1501, 1733))
        assert a.advise("populate_read", (1501, 1733)) is True
        mapped = _mapped(a)
        assert mapped[want.start:want.stop].all()
        # Fault-around may map a few neighbours (64 KiB windows), never pages far away.
        far = np.ones_like(mapped)
        far[max(0, want.start - 16):want.stop + 16] = False
        assert not (mapped & far).any()
        a.advise("dontneed", (1600, 1650))
        gone = _outward_pages(a, (1600, 1650))
        mapped = _mapped(a)
        assert not mapped[gone.start:gone.stop].any()
        assert mapped[want.start:gone.start].all() and mapped[gone.stop:want.stop].all()


def test_populate_read_past_the_end_of_a_file_cut_under_it(tmp_path: Path) -> None:
    # Regression: the kernel's EFAULT for pages past the new end surfaced as a MappingError
    # "Bad address"; a file cut under the mapping is a FileChangedError everywhere else.
    if "populate_read" not in bigarr.supported_hints():
        pytest.skip("no MADV_POPULATE_READ here")
    path = tmp_path / "cut.npy"
    np.save(path, np.ones(1 << 18))
    with bigarr.open(path) as x:
        os.truncate(path, 2 * PAGE_SIZE)
        with pytest.raises(bigarr.errors.FileChangedError, match="shrank"):
            x.advise("populate_read")
        x.close(force=True)
