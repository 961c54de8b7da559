"""bigarr.memmap: numpy.memmap's documented behaviour, safe close, pickling by reference."""

from __future__ import annotations

import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import bigarr
from bigarr import errors


@pytest.fixture
def arr(tmp_path: Path) -> bigarr.memmap:
    a = bigarr.create(tmp_path / "a.npy", (64, 8), "f8")
    a[...] = np.arange(512).reshape(64, 8)
    return a


@pytest.fixture
def big(tmp_path: Path) -> bigarr.memmap:
    """Large enough for several page-sized chunks at a 16 KiB budget."""
    a = bigarr.create(tmp_path / "big.npy", (2048, 8), "f8")
    a[...] = np.arange(2048 * 8).reshape(2048, 8)
    return a


def test_drop_in_numpy_memmap_behaviour(arr: bigarr.memmap) -> None:
    assert isinstance(arr, np.memmap)
    view = arr[2:5]
    assert type(view) is bigarr.memmap
    assert (view.filename, view.offset, view.mode) == (arr.filename, arr.offset, arr.mode)
    assert type(arr + 1) is np.ndarray
    assert type(np.sqrt(arr)) is np.ndarray
    assert type(arr[[1, 2]]) is np.ndarray
    assert type(arr[arr > 3]) is np.ndarray
    assert np.isscalar(arr.sum()) and arr.sum() == np.arange(512).sum()
    assert np.isscalar(np.max(arr)) and np.max(arr) == 511
    assert type(arr.sum(axis=0)) is np.ndarray
    assert np.mean(arr) == np.arange(512).mean()
    assert type(arr.T) is bigarr.memmap and arr.T.shape == (8, 64)
    arr += 1  # in place keeps the mapping
    assert arr[0, 0] == 1
    out = arr[0:2]
    np.add(out, 1, out=out)
    assert arr[0, 0] == 2


def test_close_flushes_and_releases(arr: bigarr.memmap) -> None:
    path = arr.filename
    arr[0, 0] = 42
    fds_before = len(os.listdir("/proc/self/fd"))
    arr.close()
    assert arr.closed
    assert len(os.listdir("/proc/self/fd")) == fds_before - 1
    assert np.load(path)[0, 0] == 42
    arr.close()  # idempotent


def test_closed_array_raises_clear_error(arr: bigarr.memmap) -> None:
    arr.close()
    for use in (lambda: arr[0], lambda: arr + 1, lambda: np.sum(arr), lambda: arr.sum(),
                lambda: arr.__setitem__(0, 1), lambda: np.mean(arr), lambda: pickle.dumps(arr)):
        with pytest.raises(errors.ClosedError):
            use()
    assert "closed" in repr(arr)


def test_close_with_live_view_refuses(arr: bigarr.memmap) -> None:
    view = arr[3:9]
    with pytest.raises(errors.MappingBusyError) as info:
        arr.close()
    assert isinstance(info.value, BufferError) and "1 other view" in str(info.value)
    assert view[0, 0] == 24 and not arr.closed
    del view
    arr.close()


def test_close_detects_plain_ndarray_views(arr: bigarr.memmap) -> None:
    plain = np.asarray(arr)[1:4]
    assert type(plain) is np.ndarray
    with pytest.raises(errors.MappingBusyError):
        arr.close()
    del plain
    arr.close()


def test_views_in_reference_cycles_do_not_block_close(arr: bigarr.memmap) -> None:
    cycle: list[object] = [arr[2:]]
    cycle.append(cycle)
    del cycle  # unreachable, but alive until the cycle collector runs
    arr.close()
    assert arr.closed


def test_close_through_a_view_closes_the_mapping(arr: bigarr.memmap) -> None:
    view = arr[1:]
    sibling = arr[5:]
    with pytest.raises(errors.MappingBusyError):
        view.close()  # arr is view's parent, but sibling is another live view
    del sibling
    view.close()  # the parent chain counts as the same array
    assert arr.closed and view.closed


def test_force_close_closes_every_view(arr: bigarr.memmap) -> None:
    view = arr[3:9]
    arr.close(force=True)
    with pytest.raises(errors.ClosedError):
        view.sum()
    # np.asarray cannot be intercepted on an ndarray subclass: it reads zeros instead of
    # crashing, and writes through it fail instead of vanishing.
    raw = np.asarray(view)
    assert raw.shape == (6, 8) and raw.sum() == 0
    with pytest.raises(ValueError, match="read-only"):
        raw[0, 0] = 1


def test_with_block(tmp_path: Path) -> None:
    with bigarr.create(tmp_path / "w.npy", 10, "i4", fill=3) as a:
        assert a.sum() == 30
    assert a.closed


def test_pickle_is_a_file_reference(arr: bigarr.memmap) -> None:
    arr.flush()
    blob = pickle.dumps(arr)
    assert len(blob) < 600  # 4 KiB of data is not in there
    back = pickle.loads(blob)
    assert type(back) is bigarr.memmap and back.filename == arr.filename
    assert np.array_equal(back, arr)
    for view in (arr[5:9], arr.T, arr[::-3, ::-2], arr[10], arr[4:4]):
        again = pickle.loads(pickle.dumps(view))
        assert again.shape == view.shape and np.array_equal(again, view)
    back[0, 0] = -7  # shared mode: the clone writes the same file
    assert arr[0, 0] == -7


def test_private_mode_refuses_to_pickle(tmp_path: Path) -> None:
    bigarr.create(tmp_path / "p.npy", 10, "f4").close()
    with bigarr.open(tmp_path / "p.npy", "private") as a:
        with pytest.raises(errors.PickleError_) as info:
            pickle.dumps(a)
        assert isinstance(info.value, TypeError) and "commit()" in str(info.value)


def _child_sum_and_write(a: bigarr.memmap) -> float:
    total = float(a.sum())
    if a.access == "shared":
        a[0] = 1000
        a.flush()
    return total


@pytest.mark.parametrize("mode", ["r", "shared"])
def test_pickle_across_spawned_processes(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "s.npy"
    with bigarr.create(path, 1000, "f8", fill=2.0):
        pass
    a = bigarr.open(path, mode)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        totals = pool.map(_child_sum_and_write, [a[:500], a[500:]])
    assert totals == [1000.0, 1000.0]
    if mode == "shared":
        assert a[0] == 1000 and a[500] == 1000


def test_views_of_a_readonly_array_stay_readonly(npy_path: Path) -> None:
    with bigarr.open(npy_path) as a:
        v = a[1:3]
        assert not v.flags.writeable
        with pytest.raises(ValueError):
            v[0, 0] = 1
        del v


def test_with_block_closes_views_that_outlive_it(tmp_path: Path) -> None:
    # Regression: the loop variable of `for chunk, view in x.iter_chunks()` outlives the loop;
    # leaving the with block must still close (and the leftover view then refuses use).
    with bigarr.create(tmp_path / "w.npy", (1 << 16,), "f4", fill=1) as x:
        for _chunk, view in x.iter_chunks("64KiB", progress=False):  # noqa: B007 - used below
            pass
    assert x.closed and view.closed
    with pytest.raises(errors.ClosedError):
        view.sum()


def test_chunks_attribute_is_not_shadowed(arr: bigarr.memmap) -> None:
    # Regression (issue 10): `chunks` was a method, and dask, zarr and xarray read `.chunks` as
    # an attribute ("'method' object is not iterable"). The iterator is `iter_chunks` now.
    assert not hasattr(arr, "chunks")
    assert [c.index for c, _ in arr.iter_chunks("4KiB", progress=False, prefetch=False)] \
        == list(range(len(arr.plan("4KiB"))))


def test_dask_from_array_accepts_a_bigarr_array(arr: bigarr.memmap) -> None:
    da = pytest.importorskip("dask.array")
    arr.flush()
    with bigarr.open(arr.filename) as x:
        d = da.from_array(x, chunks=(16, 8))
        assert d.shape == x.shape and d.chunks == ((16,) * 4, (8,))
        np.testing.assert_array_equal(d.compute(scheduler="synchronous"), np.load(arr.filename))
        assert float(d.sum().compute(scheduler="synchronous")) == float(np.arange(512).sum())
        d2 = da.from_array(x)  # default chunking reads no attribute of x
        np.testing.assert_array_equal(d2.compute(scheduler="synchronous"), np.asarray(x))
        del d, d2


@pytest.mark.parametrize("prefetch", [True, False])
def test_natural_chunk_loop_can_close_the_array(big: bigarr.memmap, prefetch: bool) -> None:
    # Regression (issue 10): the loop variable is alive after the loop, and close() refused with
    # MappingBusyError. The view the iterator handed out last is lent, not counted.
    arr = big
    total = 0.0
    for _chunk, view in arr.iter_chunks("16KiB", progress=False, prefetch=prefetch):
        total += float(view.sum())
    assert total == float(np.arange(2048 * 8).sum())
    arr.close()
    assert arr.closed and view.closed
    with pytest.raises(errors.ClosedError):
        view.sum()
    with pytest.raises(errors.ClosedError):
        view[0]
    assert np.asarray(view).sum() == 0  # the one unguarded path reads zeros, never crashes


def test_chunk_loop_over_a_view_and_break_can_close(big: bigarr.memmap) -> None:
    arr = big
    for _chunk, view in arr[8:].iter_chunks("16KiB", progress=False):  # noqa: B007
        break
    arr.close()
    with pytest.raises(errors.ClosedError):
        view.sum()


def test_views_kept_from_a_chunk_loop_still_block_close(big: bigarr.memmap) -> None:
    arr = big
    kept = [view for _c, view in arr.iter_chunks("16KiB", progress=False, prefetch=False)]
    assert len(kept) > 1
    with pytest.raises(errors.MappingBusyError, match=f" {len(kept) - 1} other view"):
        arr.close()
    sub = kept[-1][..., 1:]  # a view derived from the lent view is a view of its own
    del kept
    with pytest.raises(errors.MappingBusyError, match="1 other view"):
        arr.close()
    del sub
    arr.close()


def test_close_inside_a_chunk_loop_stops_the_loop_loudly(big: bigarr.memmap) -> None:
    # Inside the loop the executor still holds the chunk's blocks, so close() refuses loudly
    # (MappingBusyError) and the array stays usable; after the loop it closes (test above).
    arr = big
    for prefetch in (1, 0):
        with pytest.raises(errors.MappingBusyError):
            for _chunk, _view in arr.iter_chunks("16KiB", progress=False, prefetch=prefetch):
                arr.close()
        assert not arr.closed and float(arr[0, 1]) == 1.0
