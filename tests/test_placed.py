"""Placed results (bigarr._compute.placed): a user function's large arrays allocated at a given
offset into a page, so the O_DIRECT sink writes map_blocks' results without a copy."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._compute import placed
from bigarr._os.sink import Sink

pytestmark = pytest.mark.skipif(not placed.available(), reason="the _alloc extension is not built")


@pytest.mark.parametrize("skew", [0, 128, 4000])
def test_large_arrays_start_skew_bytes_into_a_page(skew: int) -> None:
    x = np.arange(1 << 19, dtype=np.float64)  # 4 MiB
    with placed.results(skew):
        big = x * 2 + 1
        small = np.ones(10)
        grown = np.resize(big[:100], 1 << 18)  # a realloc through the handler
    other = x * 2 + 1
    assert big.ctypes.data % 4096 == skew // 16 * 16
    np.testing.assert_array_equal(big, other)
    np.testing.assert_array_equal(grown[:100], other[:100])
    assert placed.owns(big) and placed.owns(big[3:].reshape(-1, 1))
    assert placed.owns(small)  # small arrays come from malloc through the same handler
    assert not placed.owns(other) and not placed.owns(x)


def test_freed_mappings_are_kept_up_to_the_bound_then_trimmed() -> None:
    placed.trim()
    placed.keep(1)
    with placed.results(0):
        a, b = np.zeros(1 << 20), np.ones(1 << 20)  # 8 MiB each; zeros is calloc
    assert not a.any() and b.all()
    first = a.ctypes.data
    del a, b  # one kept, one unmapped
    kept = placed.cached()
    assert kept >= 8 << 20 and kept < 16 << 20
    with placed.results(0):
        c = np.zeros(1 << 20)  # reuses the kept mapping: zeroed again
    assert c.ctypes.data == first and not c.any() and placed.cached() == 0
    del c
    assert placed.trim() == 0  # nothing placed is alive
    assert placed.cached() == 0


def test_map_blocks_lends_placed_results_to_the_sink(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of whole pages' worth of results reach the sink placed and lent (no staging
    copy); the file equals numpy's answer."""
    seen: list[tuple[bool, bool]] = []
    sinks: list[Sink] = []
    original = Sink.write

    def spy(self: Sink, data: Any, offset: int, *, lend: bool = False) -> Any:
        seen.append((lend, (data.ctypes.data - offset) % 4096 == 0))
        sinks.append(self)
        return original(self, data, offset, lend=lend)

    monkeypatch.setattr(Sink, "write", spy)
    x = np.random.default_rng(3).standard_normal((300_000, 4)).astype(np.float32)  # 4.8 MB
    np.save(tmp_path / "x.npy", x)
    y = bigarr.map_blocks(lambda b: b * 2 + 1, str(tmp_path / "x.npy"),
                          out=str(tmp_path / "y.npy"), budget="16MiB", threads=2, progress=False)
    y.close()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), x * 2 + 1)
    assert len(seen) > 2
    assert all(lend and aligned for lend, aligned in seen)  # the first chunk too
    if sinks[0].direct:
        assert all(sink._made == 0 for sink in sinks)  # no staging buffer was needed
    assert placed.cached() == 0  # the run's kept mappings are gone


def test_placing_switched_off_copies_and_gives_the_same_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``BIGARR_PLACED=0``: results are ordinary numpy arrays, the sink copies them; same bytes."""
    monkeypatch.setenv("BIGARR_PLACED", "0")
    assert not placed.available()
    owned: list[bool] = []
    original = Sink.write

    def spy(self: Sink, data: Any, offset: int, *, lend: bool = False) -> Any:
        owned.append(placed.owns(data))
        return original(self, data, offset, lend=lend)

    monkeypatch.setattr(Sink, "write", spy)
    x = np.random.default_rng(4).standard_normal((200_000, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    bigarr.map_blocks(lambda b: b * 2 + 1, str(tmp_path / "x.npy"), out=str(tmp_path / "y.npy"),
                      budget="16MiB", threads=2, progress=False).close()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), x * 2 + 1)
    assert owned and not any(owned)


def _vm_flags(address: int) -> list[str] | None:
    """The VmFlags of the mapping holding ``address`` (Linux ``/proc/self/smaps``)."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    inside = False
    for line in lines:
        head = line.split()[0] if line else ""
        if "-" in head and ":" not in head:
            lo, _, hi = head.partition("-")
            inside = int(lo, 16) <= address < int(hi, 16)
        elif inside and line.startswith("VmFlags:"):
            return line.split()[1:]
    return None


def test_placed_and_staging_memory_is_not_advised_huge() -> None:
    """Regression: placed results and the sink's staging buffers were MADV_HUGEPAGE, and the
    first results' fresh 2 MiB pages took over a second each to fault in on a busy machine."""
    from bigarr._os.pread import Buffer

    with placed.results(0):
        big = np.ones(1 << 20)  # 8 MiB, placed
    staging = Buffer(8 << 20, huge=False)
    flags = _vm_flags(big.ctypes.data)
    if flags is None:
        pytest.skip("no /proc/self/smaps")
    assert "hg" not in flags
    assert "hg" not in (_vm_flags(staging.array.ctypes.data) or [])
    assert "hg" in (_vm_flags(Buffer(4 << 20).array.ctypes.data) or ["hg"])  # the default


def test_the_first_chunk_is_written_from_funcs_own_result(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first chunk, computed before the output file exists, is placed for its offset (the
    file's first data page) and lent as func returned it: no copy before the first write."""
    if not placed.available():
        pytest.skip("placed results need the _alloc extension")
    made: list[int] = []
    written: list[int] = []
    original = Sink.write

    def spy(self: Sink, data: Any, offset: int, *, lend: bool = False) -> Any:
        written.append(data.ctypes.data)
        return original(self, data, offset, lend=lend)

    def func(b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        r = b * 2 + 1
        made.append(r.ctypes.data)
        return r

    monkeypatch.setattr(Sink, "write", spy)
    x = np.random.default_rng(5).standard_normal((300_000, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    bigarr.map_blocks(func, str(tmp_path / "x.npy"), out=str(tmp_path / "y.npy"),
                      budget="16MiB", threads=1, progress=False).close()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), x * 2 + 1)
    assert written[0] in made  # (func also ran on probe blocks before the run)


def test_a_first_result_func_keeps_is_copied_not_lent(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """func fills one kept (placed) array at every call (numpy's ``out=`` idiom): its first
    result is copied, not lent, so the next call's values never reach the first rows while
    the first write waits for the disk."""
    kept: np.ndarray[Any, Any] | None = None

    def func(b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        nonlocal kept
        if kept is None or len(kept) < len(b):  # (allocated in a run's call: placed)
            kept = np.empty((len(b) + 1000, 4), np.float32)
        np.multiply(b, 3, out=kept[:len(b)])
        return kept[:len(b)]

    original = Sink._put_lent

    def slow(self: Sink, piece: Any, offset: int) -> None:
        time.sleep(0.2)  # the disk is slow: func runs again before the first write
        original(self, piece, offset)

    monkeypatch.setattr(Sink, "_put_lent", slow)

    x = np.random.default_rng(6).standard_normal((300_000, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    bigarr.map_blocks(func, str(tmp_path / "x.npy"), out=str(tmp_path / "y.npy"),
                      budget="16MiB", threads=1, progress=False).close()
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), x * 3)
