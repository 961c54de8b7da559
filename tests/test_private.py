"""Private mode as a scratch workspace: dirty(), commit(), discard(), scratch_bytes().

The core property tests compare the mapped array, and the file, with an in-memory model after
random edit patterns, for both ways of finding scratch pages (``pagemap`` and the portable
``compare`` fallback), on page-aligned (bigarr) and unaligned (numpy) files, and with an element
size that makes elements straddle page boundaries.
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigarr
from bigarr._core import commitjournal as _commitjournal
from bigarr._core import dirtypages as _dirtypages
from bigarr._core import private as _private
from bigarr.errors import (
    ClosedError,
    DiskFullError,
    FileMissingError,
    ModeError,
    RegionError,
)

PAGE = bigarr.PAGE_SIZE
BACKENDS = ["pagemap", "compare"] if _dirtypages._pagemap_works() else ["compare"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setattr(_dirtypages, "BACKEND", request.param)
    yield request.param


def _make(path: Path, kind: str, data: np.ndarray[Any, Any]) -> None:
    if kind == "numpy":
        np.save(path, data)  # 64/128-byte header: data starts mid-page
    else:
        arr = bigarr.create(path, data.shape, data.dtype, overwrite=True)
        arr[...] = data
        arr.close()


def _on_disk(path: Path) -> np.ndarray[Any, Any]:
    return np.load(path)


def _changed(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Flat mask of elements whose bytes differ (NaN-safe, works for any dtype)."""
    ab = np.ascontiguousarray(a).reshape(-1).view(np.uint8).reshape(a.size, -1)
    bb = np.ascontiguousarray(b).reshape(-1).view(np.uint8).reshape(b.size, -1)
    return (ab != bb).any(axis=1)


def _dtype_data(name: str) -> np.ndarray[Any, Any]:
    if name == "f4-2d":
        return np.arange(3000 * 3, dtype=np.float32).reshape(3000, 3)
    if name == "i2":
        return np.arange(9000, dtype=np.int16)
    # 5-byte elements straddle page boundaries.
    return np.array([f"{i:05d}".encode() for i in range(4000)], dtype="S5")


# ---- basics ------------------------------------------------------------------------------------
def test_fresh_array_is_clean(tmp_path: Path, backend: str) -> None:
    _make(tmp_path / "a.npy", "bigarr", np.arange(10000, dtype=np.float32))
    arr = bigarr.open(tmp_path / "a.npy", "private")
    _ = float(arr.sum())  # reading faults pages in, but they are not scratch pages
    assert not arr.dirty()
    assert arr.dirty().count == 0
    assert arr.scratch_bytes() == 0
    arr.close()


def test_dirty_reports_exact_elements_and_rows(tmp_path: Path, backend: str) -> None:
    _make(tmp_path / "a.npy", "numpy", np.zeros((2000, 10), dtype=np.float64))
    arr = bigarr.open(tmp_path / "a.npy", "private")
    arr[5, 3] = 1.0
    arr[1500:1502] = 2.0
    arr[7, 0] = 0.0  # written, but equal to the file: not a change
    d = arr.dirty()
    assert d.elements == (range(53, 54), range(15000, 15020))
    assert d.rows == (range(5, 6), range(1500, 1502))
    assert d.count == 21 and d.nbytes == 21 * 8
    assert d.exact
    header = arr.offset
    assert d.spans[0] == bigarr._os.geometry.ByteSpan(header + 53 * 8, header + 54 * 8)
    coarse = arr.dirty(exact=False)  # whole scratch pages, no file read
    assert not coarse.exact
    assert set(np.flatnonzero(coarse.mask(arr.size))) >= set(np.flatnonzero(d.mask(arr.size)))
    assert arr.scratch_bytes() >= 2 * PAGE
    assert arr.dirty(region=slice(1000, 2000)).rows == (range(1500, 1502),)
    arr.close()


def test_scratch_bytes_counts_touched_pages_only(tmp_path: Path) -> None:
    _make(tmp_path / "a.npy", "bigarr", np.zeros(PAGE * 64, dtype=np.uint8))
    arr = bigarr.open(tmp_path / "a.npy", "private")
    arr[:: PAGE * 4] = 1  # 16 pages
    assert arr.scratch_bytes() == 16 * PAGE
    assert arr.scratch_bytes(slice(0, PAGE * 8)) == 2 * PAGE
    arr.close()


def test_fortran_order_rows(tmp_path: Path, backend: str) -> None:
    np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((1000, 4), dtype=np.int32)))
    arr = bigarr.open(tmp_path / "f.npy", "private")
    assert arr.flags.f_contiguous
    arr[10, 2] = 5
    arr[999, 0] = 6
    d = arr.dirty()
    assert d.elements == (range(999, 1000), range(2010, 2011))
    assert d.rows == (range(10, 11), range(999, 1000))
    arr.close()


def test_strided_view_is_refused_with_a_hint(tmp_path: Path) -> None:
    _make(tmp_path / "a.npy", "bigarr", np.zeros((100, 4), dtype=np.int32))
    arr = bigarr.open(tmp_path / "a.npy", "private")
    with pytest.raises(RegionError, match="contiguous"):
        arr[:, 1].dirty()
    arr[3:5].dirty()  # a contiguous view is fine
    arr.close()


@pytest.mark.parametrize("method", ["dirty", "commit", "discard", "scratch_bytes"])
@pytest.mark.parametrize("mode", ["r", "shared"])
def test_non_private_arrays_raise_mode_error(tmp_path: Path, method: str, mode: str) -> None:
    _make(tmp_path / "a.npy", "bigarr", np.zeros(100, dtype=np.int32))
    arr = bigarr.open(tmp_path / "a.npy", mode)
    with pytest.raises(ModeError, match="private"):
        getattr(arr, method)()
    arr.close()


@pytest.mark.parametrize("method", ["dirty", "commit", "discard", "scratch_bytes"])
def test_closed_arrays_raise_closed_error(tmp_path: Path, method: str) -> None:
    _make(tmp_path / "a.npy", "bigarr", np.zeros(100, dtype=np.int32))
    arr = bigarr.open(tmp_path / "a.npy", "private")
    arr[0] = 1
    arr.close()
    with pytest.raises(ClosedError):
        getattr(arr, method)()
    assert _on_disk(tmp_path / "a.npy")[0] == 0  # closing a private array never writes


def test_detached_copy_raises_mode_error(tmp_path: Path) -> None:
    _make(tmp_path / "a.npy", "bigarr", np.zeros(100, dtype=np.int32))
    arr = bigarr.open(tmp_path / "a.npy", "private")
    copy = arr + 1
    with pytest.raises((ModeError, AttributeError)):
        bigarr._core.private.dirty(copy)
    arr.close()


# ---- the model-based property test ---------------------------------------------------------------
edit = st.tuples(st.floats(0, 1), st.floats(0, 1), st.integers(0, 255))
action = st.sampled_from(["commit", "discard", "commit-region", "discard-region", "none"])


@pytest.mark.parametrize("kind", ["bigarr", "numpy"])
@pytest.mark.parametrize("dtname", ["f4-2d", "i2", "S5"])
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(edit, max_size=12), act=action, region=st.tuples(st.floats(0, 1),
                                                                      st.floats(0, 1)))
def test_random_edits_match_the_model(
    tmp_path: Path, backend: str, kind: str, dtname: str,
    edits: list[tuple[float, float, int]], act: str, region: tuple[float, float],
) -> None:
    original = _dtype_data(dtname)
    path = tmp_path / f"m-{kind}-{dtname}.npy"
    _make(path, kind, original)
    model = original.copy()
    arr = bigarr.open(path, "private")
    n = len(original)
    for lo_f, len_f, byte in edits:
        lo = int(lo_f * (n - 1))
        hi = min(n, lo + 1 + int(len_f * len_f * 300))
        value = np.full(model[lo:hi].shape, byte).astype(model.dtype) if dtname != "S5" else (
            np.full(hi - lo, bytes([65 + byte % 26]) * 5, dtype="S5")
        )
        arr[lo:hi] = value
        model[lo:hi] = value

    # dirty() is exact: exactly the elements whose bytes differ from the file
    got = arr.dirty().mask(arr.size)
    np.testing.assert_array_equal(got, _changed(model, original))
    assert np.array_equal(np.asarray(arr), model)

    a = int(min(region) * n)
    b = max(a, int(max(region) * n))
    if act == "commit":
        arr.commit()
        file_model = model
    elif act == "commit-region":
        arr.commit((a, b))
        file_model = original.copy()
        file_model[a:b] = model[a:b]
    elif act == "discard":
        arr.discard()
        model = original.copy()
        file_model = original
    elif act == "discard-region":
        arr.discard((a, b))
        model[a:b] = original[a:b]
        file_model = original
    else:
        file_model = original
    disk = _on_disk(path)
    assert np.array_equal(disk, file_model)  # the file equals the model
    assert np.array_equal(np.asarray(arr), model)  # the array kept every edit not discarded
    np.testing.assert_array_equal(arr.dirty().mask(arr.size), _changed(model, file_model))
    if act in ("commit", "discard"):
        assert arr.scratch_bytes() == 0  # the mapping shows the file again
    arr.close()


# ---- region edges, write accounting ------------------------------------------------------------
def test_region_discard_keeps_edits_outside_on_shared_pages(tmp_path: Path, backend: str) -> None:
    _make(tmp_path / "a.npy", "numpy", np.zeros(5000, dtype=np.int32))
    arr = bigarr.open(tmp_path / "a.npy", "private")
    arr[1000:1030] = 7  # rows 1000..1029 share a page with row 1000..1023 boundary
    arr.discard((1010, 1020))
    expect = np.zeros(5000, dtype=np.int32)
    expect[1000:1010] = 7
    expect[1020:1030] = 7
    assert np.array_equal(np.asarray(arr), expect)
    arr.discard((0, 1015))
    expect[1000:1010] = 0
    assert np.array_equal(np.asarray(arr), expect)
    arr.discard()
    assert not arr.dirty() and arr.scratch_bytes() == 0
    arr.close()


def test_commit_writes_only_scratch_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backend: str
) -> None:
    _make(tmp_path / "a.npy", "bigarr", np.zeros(PAGE * 100 // 4, dtype=np.float32))
    arr = bigarr.open(tmp_path / "a.npy", "private")
    calls: list[tuple[int, int]] = []
    real = _commitjournal.write_runs

    def spy(fd: int, m: Any, runs: list[tuple[int, int]]) -> int:
        calls.extend((m.map_offset + a, b - a) for a, b in runs)
        return real(fd, m, runs)

    monkeypatch.setattr(_commitjournal, "write_runs", spy)
    rows = [3, 4, 50, 99]  # pages 0, 0, 12, 24 (1024 float32 per page)
    for r in rows:
        arr[r * 250] = 1.0
    before = os.stat(tmp_path / "a.npy").st_size
    written = arr.commit()
    touched = {r * 250 * 4 // PAGE for r in rows}
    assert written == len(touched) * PAGE
    header = arr.offset
    assert sorted(calls) == sorted((header + p * PAGE, PAGE) for p in touched)
    assert os.stat(tmp_path / "a.npy").st_size == before
    assert arr.commit() == 0  # nothing left to write
    arr.close()


# ---- other processes ---------------------------------------------------------------------------
def test_other_process_sees_edits_only_after_commit(
    tmp_path: Path, run_py: Callable[..., Any], backend: str
) -> None:
    path = tmp_path / "shared.npy"
    _make(path, "bigarr", np.zeros(100_000, dtype=np.float32))
    arr = bigarr.open(path, "private")
    arr[12_345] = 42.0
    arr[99_999] = 7.0
    probe = f"""
        import bigarr, numpy as np
        a = bigarr.open({str(path)!r}, "r")
        b = np.load({str(path)!r}, mmap_mode="r")
        print(float(a[12_345]), float(a[99_999]), float(b[12_345]), float(a.sum()))
    """
    before = run_py(probe)
    assert before.returncode == 0, before.stderr
    assert before.stdout.split() == ["0.0", "0.0", "0.0", "0.0"]
    arr.commit()
    after = run_py(probe)
    assert after.returncode == 0, after.stderr
    assert after.stdout.split() == ["42.0", "7.0", "42.0", "49.0"]
    assert float(arr[12_345]) == 42.0  # and this mapping shows the (now edited) file
    arr.close()


def test_discard_in_private_never_reaches_other_process(
    tmp_path: Path, run_py: Callable[..., Any]
) -> None:
    path = tmp_path / "d.npy"
    _make(path, "bigarr", np.zeros(10_000, dtype=np.int64))
    arr = bigarr.open(path, "private")
    arr[:] = 5
    arr.discard()
    arr.close()
    res = run_py(f"import numpy as np; print(int(np.load({str(path)!r}).sum()))")
    assert res.returncode == 0 and res.stdout.strip() == "0"


# ---- concurrency -------------------------------------------------------------------------------
def test_commit_never_loses_a_concurrent_ufunc_at(tmp_path: Path) -> None:
    # Regression: ufunc.at writes into its first input (there is no out=), so it did not take
    # the write lock, and a commit dropping a page between its pwrite and its drop lost adds.
    n = PAGE * 16 // 8
    path = tmp_path / "u.npy"
    _make(path, "bigarr", np.zeros(n, dtype=np.int64))
    arr = bigarr.open(path, "private")
    stop = threading.Event()
    done: list[int] = []

    def adder() -> None:
        i = 0
        while not stop.is_set() and i < 100_000:
            np.add.at(arr, [(i * 509) % n], 1)
            i += 1
        done.append(i)

    t = threading.Thread(target=adder)
    t.start()
    for _ in range(300):
        arr.commit()
    stop.set()
    t.join()
    assert int(np.asarray(arr).sum()) == done[0]
    arr.commit()
    assert int(_on_disk(path).sum()) == done[0]
    arr.close()


def test_commit_never_loses_a_concurrent_write(tmp_path: Path) -> None:
    n = PAGE * 16 // 8
    path = tmp_path / "c.npy"
    _make(path, "bigarr", np.zeros(n, dtype=np.int64))
    arr = bigarr.open(path, "private")
    stop = threading.Event()
    done: list[int] = []

    def writer() -> None:
        i = 0
        while not stop.is_set() and i < 200_000:
            arr[i % n] = i + 1  # through bigarr's write path
            i += 1
        done.append(i)

    t = threading.Thread(target=writer)
    t.start()
    for _ in range(200):
        arr.commit()
    stop.set()
    t.join()
    count = done[0]
    expect = np.zeros(n, dtype=np.int64)
    for k in range(n):  # the last value written to slot k
        last = k + ((count - 1 - k) // n) * n if count > k else -1
        expect[k] = last + 1 if last >= 0 else 0
    assert np.array_equal(np.asarray(arr), expect)
    arr.commit()
    assert np.array_equal(_on_disk(path), expect)
    arr.close()


def test_commits_of_one_file_from_two_arrays(tmp_path: Path) -> None:
    path = tmp_path / "two.npy"
    _make(path, "bigarr", np.zeros(PAGE * 8, dtype=np.uint8))
    a = bigarr.open(path, "private")
    b = bigarr.open(path, "private")
    a[:PAGE] = 1
    b[PAGE * 4 : PAGE * 5] = 2
    threads = [threading.Thread(target=x.commit) for x in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    disk = _on_disk(path)
    assert (disk[:PAGE] == 1).all() and (disk[PAGE * 4 : PAGE * 5] == 2).all()
    assert disk[PAGE : PAGE * 4].sum() == 0
    # each mapping shows the file again where it had no scratch page left
    assert (np.asarray(b[:PAGE]) == 1).all() and (np.asarray(a[PAGE * 4 : PAGE * 5]) == 2).all()
    a.close()
    b.close()


# ---- journaled commit and crashes --------------------------------------------------------------
_CRASHER = """
    import os, bigarr, numpy as np
    from bigarr._core import commitjournal as _commitjournal
    from bigarr._core import dirtypages as _dirtypages
    from bigarr._core import private as _private
    real, calls = _commitjournal.write_runs, []
    def crash(fd, m, runs):
        for run in runs:
            if len(calls) >= {after}:
                os._exit(9)  # the process dies mid-commit
            calls.append(run)
            real(fd, m, [run])
        return 0
    _commitjournal.write_runs = crash
    a = bigarr.open({path!r}, "private")
    a[0] = 1; a[{far}] = 2
    a.commit(journal={journal})
"""


@pytest.mark.parametrize("after", [0, 1])
def test_journaled_commit_is_all_or_nothing(
    tmp_path: Path, run_py: Callable[..., Any], after: int
) -> None:
    path = tmp_path / "j.npy"
    far = PAGE * 10
    _make(path, "bigarr", np.zeros(PAGE * 20, dtype=np.uint8))
    res = run_py(_CRASHER.format(after=after, path=str(path), far=far, journal=True))
    assert res.returncode == 9, res.stderr
    disk = _on_disk(path)
    assert int(disk[0]) == (1 if after else 0) and int(disk[far]) == 0  # torn state on disk
    assert os.path.exists(_private.journal_path(str(path)))
    assert _private.recover_commit(path) == "replayed"
    disk = _on_disk(path)
    assert int(disk[0]) == 1 and int(disk[far]) == 2  # all of the commit
    assert not os.path.exists(_private.journal_path(str(path)))
    assert _private.recover_commit(path) is None


def test_torn_journal_is_dropped_and_file_untouched(
    tmp_path: Path, run_py: Callable[..., Any]
) -> None:
    path = tmp_path / "t.npy"
    _make(path, "bigarr", np.zeros(PAGE * 20, dtype=np.uint8))
    res = run_py(_CRASHER.format(after=0, path=str(path), far=PAGE * 10, journal=True))
    assert res.returncode == 9, res.stderr
    jpath = _private.journal_path(str(path))
    os.truncate(jpath, os.path.getsize(jpath) - 5)  # as if the crash hit while writing it
    assert _private.recover_commit(path) == "dropped"
    assert int(_on_disk(path).sum()) == 0  # none of the commit
    assert not os.path.exists(jpath)


def test_unjournaled_crash_leaves_a_prefix_of_pages(
    tmp_path: Path, run_py: Callable[..., Any]
) -> None:
    path = tmp_path / "p.npy"
    _make(path, "bigarr", np.zeros(PAGE * 20, dtype=np.uint8))
    res = run_py(_CRASHER.format(after=1, path=str(path), far=PAGE * 10, journal=False))
    assert res.returncode == 9, res.stderr
    disk = _on_disk(path)
    assert int(disk[0]) == 1 and int(disk[PAGE * 10]) == 0  # as documented: pages in order


def test_next_commit_recovers_an_interrupted_one(
    tmp_path: Path, run_py: Callable[..., Any]
) -> None:
    path = tmp_path / "r.npy"
    _make(path, "bigarr", np.zeros(PAGE * 20, dtype=np.uint8))
    res = run_py(_CRASHER.format(after=0, path=str(path), far=PAGE * 10, journal=True))
    assert res.returncode == 9, res.stderr
    with pytest.warns(bigarr.errors.IncompleteOutputWarning, match="recover_commit"):
        arr = bigarr.open(path, "private")  # a half-done commit is never read silently
    arr[PAGE * 15] = 3
    arr.commit()
    disk = _on_disk(path)
    assert (int(disk[0]), int(disk[PAGE * 10]), int(disk[PAGE * 15])) == (1, 2, 3)
    arr.close()


def test_recover_commit_of_a_removed_file_is_a_bigarr_error(
    tmp_path: Path, run_py: Callable[..., Any]
) -> None:
    # Regression: a complete journal whose file was removed raised a bare FileNotFoundError
    # from os.open and left the user without a bigarr error saying what happened.
    path = tmp_path / "gone.npy"
    _make(path, "bigarr", np.zeros(PAGE * 20, dtype=np.uint8))
    res = run_py(_CRASHER.format(after=0, path=str(path), far=PAGE * 10, journal=True))
    assert res.returncode == 9, res.stderr
    os.unlink(path)
    with pytest.raises(FileMissingError, match="journal"):
        _private.recover_commit(path)
    assert os.path.exists(_private.journal_path(str(path)))  # kept: it holds the edits


def test_journaled_commit_on_a_full_disk_is_a_bigarr_error_and_touches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: ENOSPC while writing the journal escaped as a bare OSError and left the
    # torn journal behind.
    path = tmp_path / "full.npy"
    _make(path, "bigarr", np.zeros(PAGE * 4, dtype=np.uint8))
    arr = bigarr.open(path, "private")
    arr[PAGE] = 7

    def full(fd: int, data: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(_commitjournal, "_write_all", full)
    with pytest.raises(DiskFullError, match="journal"):
        arr.commit(journal=True)
    assert not os.path.exists(_private.journal_path(str(path)))
    assert int(_on_disk(path).sum()) == 0  # the file was never touched
    assert int(arr[PAGE]) == 7 and arr.dirty().count == 1  # the edit is still a scratch edit
    monkeypatch.undo()
    assert arr.commit(journal=True) > 0 and int(_on_disk(path)[PAGE]) == 7
    arr.close()


def test_commit_refuses_a_replaced_file(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    _make(path, "bigarr", np.zeros(1000, dtype=np.int32))
    arr = bigarr.open(path, "private")
    arr[0] = 1
    os.replace(path, tmp_path / "moved.npy")
    _make(path, "bigarr", np.zeros(1000, dtype=np.int32))
    with pytest.raises(bigarr.errors.FileChangedError, match="replaced"):
        arr.commit()
    assert int(_on_disk(path)[0]) == 0
    assert int(arr[0]) == 1  # the edit is still there
    arr.close()


def test_dirty_backend_is_selectable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_dirtypages, "BACKEND", "compare")
    assert _dirtypages.dirty_backend() == "compare"
    monkeypatch.setattr(_dirtypages, "BACKEND", "bogus")
    with pytest.raises(ModeError, match="backend"):
        _dirtypages.dirty_backend()


def test_drop_pages_is_refused_on_shared_mappings(tmp_path: Path) -> None:
    arr = bigarr.create(tmp_path / "s.npy", 100, np.int32)
    with pytest.raises(ModeError):
        arr._bigarr.drop_pages(bigarr._os.geometry.ByteSpan(0, PAGE))
    arr.close()


# ---- run arithmetic --------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(shape=st.tuples(st.integers(1, 9), st.integers(1, 5)), order=st.sampled_from("CF"),
       picks=st.lists(st.tuples(st.integers(0, 44), st.integers(0, 12)), max_size=6))
def test_rows_and_merge_match_a_naive_model(
    shape: tuple[int, int], order: str, picks: list[tuple[int, int]]
) -> None:
    arr = np.zeros(shape, dtype=np.int8, order=order)
    size = arr.size
    runs = np.array([(min(a, size), min(a + n, size)) for a, n in picks],
                    dtype=np.int64).reshape(-1, 2)
    merged = _dirtypages._merge(runs)
    flat = np.zeros(size, dtype=bool)
    for a, b in runs.tolist():
        flat[a:b] = True
    np.testing.assert_array_equal(_dirtypages._runs(flat), merged)  # merge == runs of the union
    rows = np.zeros(shape[0], dtype=bool)
    index = np.arange(size)
    row_of = index // shape[1] if order == "C" else index % shape[0]
    rows[row_of[flat]] = True
    np.testing.assert_array_equal(_dirtypages._rows_of(arr, merged), _dirtypages._runs(rows))


def test_portable_path_without_pagemap_or_madvise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The non-Linux path: pages compared with the file, dropped by re-mapping them (MAP_FIXED)."""
    from bigarr._os import mapping as _mapping

    monkeypatch.setattr(_dirtypages, "BACKEND", "compare")
    monkeypatch.setattr(_mapping, "_LINUX", False)
    original = np.arange(30_000, dtype=np.int32)
    _make(tmp_path / "p.npy", "numpy", original)
    arr = bigarr.open(tmp_path / "p.npy", "private")
    arr[10] = -1
    arr[20_000:20_010] = -2
    assert arr.dirty().elements == (range(10, 11), range(20_000, 20_010))
    assert arr.scratch_bytes() == 2 * PAGE
    arr.discard((0, 15_000))
    assert int(arr[10]) == 10 and int(arr[20_000]) == -2
    arr.commit()
    disk = _on_disk(tmp_path / "p.npy")
    assert (disk[20_000:20_010] == -2).all() and disk[10] == 10
    assert not arr.dirty() and arr.scratch_bytes() == 0
    np.testing.assert_array_equal(np.asarray(arr), disk)
    if _dirtypages._pagemap_works():  # the copies really are gone, not merely equal
        entries = arr._bigarr.pagemap(bigarr._os.geometry.ByteSpan(0, arr._bigarr.length))
        copied = (entries >> np.uint64(63)) & ~(entries >> np.uint64(61)) & np.uint64(1)
        assert not copied.any()
    arr.close()
