"""Opt-in write tracking for shared-mode arrays: track_writes(), written(), flush_written()."""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigarr
from bigarr._core import tracking as _tracking
from bigarr.errors import ClosedError, ModeError, UnsupportedError

PAGE = bigarr.PAGE_SIZE
UFFD = _tracking.uffd_available()
needs_uffd = pytest.mark.skipif(not UFFD, reason="userfaultfd WP_ASYNC + PAGEMAP_SCAN missing")
METHODS = ["uffd", "checksum"] if UFFD else ["checksum"]


def _pages(d: bigarr.DirtyRegions, offset: int) -> set[int]:
    """Indices (relative to the data start) of the pages a report covers."""
    out: set[int] = set()
    for span in d.pages:
        out.update(range((span.start - offset) // PAGE, -(-(span.stop - offset) // PAGE)))
    return out


def test_uffd_tracking_is_safe_in_a_fresh_process(run_py: Callable[..., Any]) -> None:
    """A wrong userfaultfd setup would hang or kill a writer: try it in a subprocess first."""
    res = run_py(
        """
        import bigarr, numpy as np
        a = bigarr.create("t.npy", 1 << 20, np.float32)
        print(a.track_writes())
        a[::1000] = 1.0
        a[:] += 1.0
        print(len(a.written().pages), float(a.sum()))
        """,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    method, _, rest = res.stdout.partition("\n")
    assert method == ("uffd" if UFFD else "checksum")
    assert rest.split()[1] == str(float((1 << 20) + 1049))


@needs_uffd
def test_uffd_reports_exactly_the_written_pages(tmp_path: Path) -> None:
    arr = bigarr.create(tmp_path / "a.npy", PAGE * 64 // 4, np.float32)
    arr[0] = 1.0  # before tracking: not reported
    assert arr.track_writes() == "uffd"
    assert _tracking.tracking_method(arr) == "uffd"
    assert not arr.written()
    arr[1024 * 5] = 1.0  # page 5
    arr[1024 * 20 + 3 : 1024 * 22] = 2.0  # pages 20, 21
    _ = float(arr[1024 * 40])  # a read is not a write
    arr[1024 * 7] = arr[1024 * 7]  # writing the same value is a write
    d = arr.written()
    assert not d.exact
    assert _pages(d, arr.offset) == {5, 7, 20, 21}
    assert d.rows == (range(5120, 6144), range(7168, 8192), range(20480, 22528))
    assert _pages(arr.written(slice(0, 1024 * 10)), arr.offset) == {5, 7}
    arr.close()


@needs_uffd
def test_reset_sets_a_new_mark(tmp_path: Path) -> None:
    arr = bigarr.create(tmp_path / "a.npy", PAGE * 16, np.uint8)
    arr.track_writes()
    arr[PAGE * 3] = 1
    assert _pages(arr.written(reset=True), arr.offset) == {3}
    assert not arr.written()
    arr[PAGE * 9] = 1
    assert _pages(arr.written(), arr.offset) == {9}
    arr.track_writes()  # again: a new mark
    assert not arr.written()
    arr.close()


@pytest.mark.parametrize("method", METHODS)
def test_flush_written_persists_and_remarks(
    tmp_path: Path, run_py: Callable[..., Any], method: str
) -> None:
    path = tmp_path / "f.npy"
    arr = bigarr.create(path, PAGE * 32, np.uint8)
    assert arr.track_writes(method) == method
    arr[PAGE * 2] = 7
    arr[PAGE * 30 + 5] = 9
    flushed = arr.flush_written()
    assert arr.offset + PAGE * 2 in {s.start for s in flushed.pages} or method == "checksum"
    assert flushed.count > 0 and not arr.written()
    res = run_py(f"import numpy as np; a = np.load({str(path)!r}); print(a[{PAGE * 2}], "
                 f"a[{PAGE * 30 + 5}])")
    assert res.stdout.split() == ["7", "9"]
    arr.close()


def test_checksum_method_reports_changed_blocks(tmp_path: Path) -> None:
    arr = bigarr.create(tmp_path / "c.npy", 1 << 20, np.uint8)
    assert arr.track_writes("checksum") == "checksum"
    arr[100] = 1
    arr[(1 << 20) - 1] = 1
    arr[300_000] = 0  # same value: invisible to checksums (documented)
    d = arr.written()
    block = _tracking._BLOCK
    assert d.elements == (range(0, block), range((1 << 20) - block, 1 << 20))
    arr.close()


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.integers(0, PAGE * 40 - 1), st.integers(1, 3 * PAGE)),
                       max_size=8))
def test_written_covers_every_write(
    tmp_path: Path, method: str, writes: list[tuple[int, int]]
) -> None:
    n = PAGE * 40
    arr = bigarr.create(tmp_path / f"h-{method}.npy", n, np.uint8, overwrite=True)
    arr.track_writes(method)
    touched = np.zeros(n, dtype=bool)
    for i, (start, length) in enumerate(writes):
        arr[start : start + length] = (i % 250) + 1  # always a new value
        touched[start : start + length] = True
    got = arr.written().mask(n)
    assert not (touched & ~got).any()  # every written byte is reported
    if method == "uffd":  # and exactly the written pages, nothing more
        pages = touched.reshape(-1, PAGE).any(axis=1)
        np.testing.assert_array_equal(got.reshape(-1, PAGE).any(axis=1), pages)
    arr.close()


def test_mode_and_state_errors(tmp_path: Path) -> None:
    path = tmp_path / "e.npy"
    arr = bigarr.create(path, 1000, np.int32)
    with pytest.raises(ModeError, match="track_writes"):
        arr.written()
    with pytest.raises(ModeError, match="method"):
        arr.track_writes("bogus")
    arr.close()
    with pytest.raises(ClosedError):
        arr.track_writes()
    for mode, hint in (("private", "dirty"), ("r", "read-only")):
        other = bigarr.open(path, mode)
        with pytest.raises(ModeError, match=hint):
            other.track_writes()
        other.close()


def test_closing_a_tracked_array(tmp_path: Path) -> None:
    arr = bigarr.create(tmp_path / "z.npy", PAGE * 4, np.uint8)
    arr.track_writes()
    arr[5] = 1
    arr.close()
    with pytest.raises(ClosedError):
        arr.written()
    assert np.load(tmp_path / "z.npy")[5] == 1


def test_uffd_unavailable_falls_back_or_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(_libc: Any) -> int:
        raise UnsupportedError("no userfaultfd here")

    monkeypatch.setattr(_tracking, "_new_uffd", refuse)
    arr = bigarr.create(tmp_path / "u.npy", PAGE * 4, np.uint8)
    with pytest.raises(UnsupportedError):
        arr.track_writes("uffd")
    assert arr.track_writes() == "checksum"
    arr[0] = 1
    assert arr.written().rows == (range(0, PAGE * 4),)
    arr.close()


@needs_uffd
def test_closing_a_tracked_array_releases_its_descriptors(tmp_path: Path) -> None:
    # Regression: close() left the userfaultfd and pagemap descriptors open for as long as the
    # closed array object lived (and the mapping stayed listed as tracked).
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    arr = bigarr.create(tmp_path / "f.npy", PAGE * 4, np.uint8)
    before = open_fds()
    arr.track_writes("uffd")
    raw = np.asarray(arr)
    arr.track_writes("checksum")
    arr.track_writes("uffd")
    arr.close(force=True)
    assert open_fds() == before - 1  # the file's own descriptor is gone too
    assert _tracking.tracking_method(arr) is None
    raw[5] = 1  # a stale pointer writes into the retired range without blocking
    del raw


@pytest.mark.parametrize("method", METHODS)
def test_a_dropped_tracked_array_releases_its_file(tmp_path: Path, method: str) -> None:
    # Regression: the checksum tracker held its Mapping, the key of the weak dictionary that
    # holds the tracker, so a tracked array that was never closed kept its file descriptor and
    # its mapping for the life of the process.
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = open_fds()
    arr = bigarr.create(tmp_path / "d.npy", PAGE * 4, np.uint8)
    arr.track_writes(method)
    arr[3] = 1
    del arr
    gc.collect()
    assert open_fds() == before
