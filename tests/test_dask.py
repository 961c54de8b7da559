"""bigarr.to_dask / bigarr.store on a real process-based dask.distributed cluster."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._interop.dask import FileRegion
from bigarr.errors import DtypeError, ModeError, ReadOnlyError, ShapeError

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """One two-process cluster for the whole module (starting one costs seconds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                           dashboard_address=None)
    with cluster, distributed.Client(cluster) as c:
        yield c


def _file(tmp_path: Path, data: np.ndarray[Any, Any], name: str = "x.npy",
          order: str = "C") -> Path:
    path = tmp_path / name
    with bigarr.create(path, data.shape, data.dtype, order=order) as arr:
        arr[...] = data
    return path


def _graph_bytes(x: Any) -> int:
    return len(pickle.dumps(dict(x.__dask_graph__())))


def test_sum_and_mean_equal_numpy(client: Any, tmp_path: Path) -> None:
    data = np.random.default_rng(1).standard_normal((20_000, 13))
    path = _file(tmp_path, data)
    x = bigarr.to_dask(path, chunks=(1500, 13))
    assert x.numblocks == (14, 1)
    assert float(x.sum().compute()) == pytest.approx(float(data.sum()), rel=1e-12)
    assert float(x.mean().compute()) == pytest.approx(float(data.mean()), rel=1e-12)
    ints = np.arange(3 * 50_000, dtype=np.int64).reshape(-1, 3)
    y = bigarr.to_dask(_file(tmp_path, ints, "i.npy"))
    assert int(y.sum().compute()) == int(ints.sum())
    np.testing.assert_array_equal(y.sum(axis=0).compute(), ints.sum(axis=0))


def test_graph_holds_no_array_data(tmp_path: Path) -> None:
    small = _file(tmp_path, np.zeros((1 << 12, 16)), "s.npy")  # 512 KiB
    big = _file(tmp_path, np.zeros((1 << 16, 16)), "b.npy")  # 8 MiB
    xs = bigarr.to_dask(small, chunks=(1 << 8, 16))
    xb = bigarr.to_dask(big, chunks=(1 << 12, 16))
    assert xs.numblocks == xb.numblocks == (16, 1)
    # Same number of tasks, 16x the data: the pickled graph does not grow with the file.
    assert _graph_bytes(xb) <= _graph_bytes(xs) + 64
    assert _graph_bytes(xb) < 16 * 1024
    # The common recipe puts the data itself in the graph.
    mm = np.load(big, mmap_mode="r")
    assert _graph_bytes(da.from_array(mm, chunks=(1 << 12, 16))) > mm.nbytes


def test_token_is_deterministic_and_tracks_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, np.arange(1000.0))
    a, b = bigarr.to_dask(path), bigarr.to_dask(str(path))
    assert a.name == b.name and a.name.startswith("bigarr-")
    assert bigarr.to_dask(path, chunks=100).name != a.name
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # "modified"
    assert bigarr.to_dask(path).name != a.name


def test_token_changes_when_the_file_is_replaced_keeping_size_and_mtime(
    tmp_path: Path,
) -> None:
    # Regression: the token was path, size and mtime, so a file replaced by one of the same
    # size with its mtime preserved (cp -p, rsync -t, a restore) reused the old dask name,
    # and dask could serve the old file's results for the new data.
    path = _file(tmp_path, np.arange(1000.0))
    before = bigarr.to_dask(path)
    st = os.stat(path)
    other = _file(tmp_path, np.arange(1000.0) + 1, "other.npy")
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, path)
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns
    after = bigarr.to_dask(path)
    assert after.name != before.name
    assert float(after.sum().compute(scheduler="sync")) == float(np.arange(1000.0).sum() + 1000)


def test_default_blocks_start_on_file_pages(tmp_path: Path) -> None:
    path = _file(tmp_path, np.zeros((300_000, 37), dtype=np.float32))  # ~42 MiB
    with bigarr.open(path) as arr:
        offset = arr.offset
        x = bigarr.to_dask(arr)
    rows = np.cumsum((0, *x.chunks[0][:-1]))
    assert len(rows) >= 1 and x.chunks[1] == (37,)
    assert all((offset + int(r) * 37 * 4) % bigarr.PAGE_SIZE == 0 for r in rows)
    np_path = tmp_path / "np.npy"  # numpy's 128-byte header: the first block is short
    np.save(np_path, np.zeros((300_000, 37), dtype=np.float32))
    y = bigarr.to_dask(np_path, chunks=None)
    assert sum(y.chunks[0]) == 300_000


@pytest.mark.parametrize(("shape", "order"), [((5000, 3), "C"), ((3, 5000), "F")])
def test_blocks_start_on_file_pages_when_block_bytes_is_below_the_page_period(
    tmp_path: Path, shape: tuple[int, int], order: str
) -> None:
    # Regression: with 24-byte rows, page-aligned row starts are 512 rows (12 KiB) apart; a
    # 4 KiB block_bytes made the planner fall back to one block per row, none page-aligned,
    # so store() tasks shared pages (lost updates over NFS) and the graph had a task per row.
    np_path = tmp_path / "np.npy"  # numpy's 128-byte header
    data = np.arange(15000.0).reshape(shape, order=order)
    np.save(np_path, data)
    axis = 0 if order == "C" else 1
    x = bigarr.to_dask(np_path, block_bytes=bigarr.PAGE_SIZE)
    slab = 3 * 8
    with bigarr.open(np_path) as arr:
        offset = arr.offset
    starts = np.cumsum((0, *x.chunks[axis][:-1]))
    assert len(starts) < 20
    assert all((offset + int(r) * slab) % bigarr.PAGE_SIZE == 0 for r in starts[1:])
    out = tmp_path / "out.npy"
    np.save(out, np.zeros_like(data))
    bigarr.store(da.from_array(data, chunks=7), out, block_bytes=bigarr.PAGE_SIZE,
                 scheduler="threads")
    assert np.array_equal(np.load(out), data)


def test_views_and_fortran_order(client: Any, tmp_path: Path) -> None:
    data = np.arange(60 * 70, dtype=np.float64).reshape(60, 70)
    with bigarr.open(_file(tmp_path, data, "f.npy", order="F")) as arr:
        x = bigarr.to_dask(arr)
        np.testing.assert_array_equal(x.compute(), data)
        view = arr[5:50:3, 10:20]
        np.testing.assert_array_equal(bigarr.to_dask(view, chunks=(4, 5)).compute(),
                                      data[5:50:3, 10:20])
        del view


def test_fancy_index_through_file_region(tmp_path: Path) -> None:
    data = np.arange(100.0).reshape(20, 5)
    path = _file(tmp_path, data)
    with bigarr.open(path) as arr:
        region = bigarr._interop.dask.file_region(arr)
    assert isinstance(region, FileRegion)
    assert len(pickle.dumps(region)) < 1024
    np.testing.assert_array_equal(region[[1, 3], 2], data[[1, 3], 2])
    block = region[2:4, 1:3]
    assert not block.flags.writeable
    np.testing.assert_array_equal(block, data[2:4, 1:3])


def test_to_dask_refuses_private_arrays(tmp_path: Path) -> None:
    path = _file(tmp_path, np.zeros(10))
    with bigarr.open(path, "private") as arr, pytest.raises(ModeError, match="private"):
        bigarr.to_dask(arr)


def test_map_and_store_by_two_workers_equals_serial(client: Any, tmp_path: Path) -> None:
    data = np.random.default_rng(2).random((40_000, 9))
    src = _file(tmp_path, data, "src.npy")
    x = bigarr.to_dask(src, chunks=(3000, 9))
    y = da.sin(x) * 2 + x.mean(axis=0)
    serial = np.sin(data) * 2 + data.mean(axis=0)
    with distributed.get_task_stream(client) as ts:
        bigarr.store(y, tmp_path / "out.npy", block_bytes="64KiB")
    workers = {t["worker"] for t in ts.data if "_write_block" in str(t["key"])}
    assert len(workers) == 2  # the file was written from both worker processes
    with bigarr.open(tmp_path / "out.npy") as out:
        np.testing.assert_allclose(out, serial, rtol=1e-13, atol=0)
        assert out.offset % 4096 == 0


def test_store_into_existing_array_and_fortran_target(client: Any, tmp_path: Path) -> None:
    data = np.arange(500 * 40, dtype=np.int32).reshape(500, 40)
    target = bigarr.create(tmp_path / "t.npy", data.shape, np.int64)
    bigarr.store(da.from_array(data, chunks=(77, 13)), target, block_bytes="32KiB")
    np.testing.assert_array_equal(target, data)  # visible at once through the shared mapping
    target.close()
    wide = np.arange(64 * 512, dtype=np.int32).reshape(64, 512)
    x = da.from_array(wide, chunks=(20, 100))
    bigarr.store(x, tmp_path / "f.npy", order="F", block_bytes="64KiB")
    with bigarr.open(tmp_path / "f.npy") as f:
        assert f.flags.f_contiguous
        np.testing.assert_array_equal(f, wide)
        # blocks run along the last axis and start on file pages
        cols = np.cumsum((0, *bigarr.to_dask(f, chunks=None).chunks[1][:-1]))
        assert all((f.offset + int(c) * 64 * 4) % bigarr.PAGE_SIZE == 0 for c in cols)


def test_store_compute_false_returns_delayed(client: Any, tmp_path: Path) -> None:
    x = da.arange(10_000, chunks=999, dtype=np.float32)
    job = bigarr.store(x, tmp_path / "d.npy", compute=False)
    assert not (tmp_path / "d.npy").exists()  # published by the last task only
    assert job.compute() == 40_000
    assert [p.name for p in tmp_path.iterdir()] == ["d.npy"]
    with bigarr.open(tmp_path / "d.npy") as out:
        np.testing.assert_array_equal(out, np.arange(10_000, dtype=np.float32))


def test_to_dask_zero_size_and_zero_d(tmp_path: Path) -> None:
    empty = bigarr.to_dask(_file(tmp_path, np.zeros((0, 5)), "e.npy"))
    assert empty.shape == (0, 5) and float(empty.sum().compute(scheduler="sync")) == 0.0
    scalar = bigarr.to_dask(_file(tmp_path, np.array(4.25), "s.npy"))
    assert scalar.shape == () and float(scalar.compute(scheduler="sync")) == 4.25


def test_store_zero_size_and_zero_d(tmp_path: Path) -> None:
    bigarr.store(da.zeros((0, 4), chunks=2), tmp_path / "e.npy", scheduler="sync")
    assert bigarr.open(tmp_path / "e.npy").shape == (0, 4)
    bigarr.store(da.from_array(np.array(2.5)), tmp_path / "s.npy", scheduler="sync")
    assert bigarr.open(tmp_path / "s.npy")[()] == 2.5


def _explode(block: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if block[0] >= 500:
        raise RuntimeError("boom")
    return block


def test_failed_store_leaves_no_file_under_the_name(client: Any, tmp_path: Path) -> None:
    x = da.arange(1000, chunks=100, dtype=np.float64).map_blocks(_explode)
    with pytest.raises(RuntimeError, match="boom"):
        bigarr.store(x, tmp_path / "never.npy", block_bytes="4KiB")
    assert list(tmp_path.iterdir()) == []


def test_store_refuses_a_target_that_appeared_meanwhile_and_says_so_truly(
    tmp_path: Path,
) -> None:
    # Regression: the error said "the data is in <hidden temporary file>", but store() had
    # already deleted that file by the time the caller saw the message.
    path = tmp_path / "late.npy"

    def appear(block: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        if not path.exists():
            np.save(path, np.full(4, 7.0))
        return block

    x = da.ones(4, chunks=2).map_blocks(appear, meta=np.empty(0))  # no call at build time
    with pytest.raises(bigarr.errors.FileExistsError_) as info:
        bigarr.store(x, path, scheduler="sync")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late.npy"]  # no hidden file left
    assert str(tmp_path) not in str(info.value).replace(str(path), "")  # names no other file
    assert np.array_equal(np.load(path), np.full(4, 7.0))  # the newcomer is untouched


def test_store_checks_target(tmp_path: Path) -> None:
    x = da.ones((10, 3), chunks=5)
    path = _file(tmp_path, np.zeros((10, 4)))
    with pytest.raises(ShapeError, match=r"\(10, 3\)"):
        bigarr.store(x, path, scheduler="sync")
    ints = _file(tmp_path, np.zeros((10, 3), dtype=np.int16), "i.npy")
    with pytest.raises(DtypeError):
        bigarr.store(x, ints, scheduler="sync")
    ok = _file(tmp_path, np.zeros((10, 3)), "ok.npy")
    with bigarr.open(ok, "r") as ro, pytest.raises(ReadOnlyError):
        bigarr.store(x, ro, scheduler="sync")
    with bigarr.open(ok, "private") as priv, pytest.raises(ModeError):
        bigarr.store(x, priv, scheduler="sync")


def test_dask_store_into_numpy_memmap_loses_writes_on_processes(
    client: Any, tmp_path: Path
) -> None:
    # The motivating bug: the memmap is pickled into each task, each worker writes into its
    # own copy, the file stays all zeros, and no error is raised. bigarr.store writes the file.
    path = tmp_path / "np.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(4000,))
    x = da.ones(4000, chunks=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # distributed warns about the (huge) graph
        da.store(x, mm, lock=False)
    del mm
    assert not np.load(path).any()  # every write was lost
    bigarr.store(x, path)
    assert np.load(path).sum() == 4000


def test_missing_extra_names_the_install_command(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["dask"] = None  # as if dask were not installed
        import bigarr
        try:
            bigarr.to_dask(sys.argv[1])
        except ImportError as exc:
            print("ImportError:", exc)
            print("bigarr error:", isinstance(exc, bigarr.errors.BigArrError))
        """
    )
    path = _file(tmp_path, np.zeros(4))
    res = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "pip install 'bigarr[dask]'" in res.stdout
    assert "bigarr error: True" in res.stdout  # a bigarr error that is also an ImportError


def test_a_file_truncated_after_graph_building_raises_not_sigbus(tmp_path: Path) -> None:
    # Each task checks the file's size before mapping its block: a file that shrank between
    # building the graph and running it is an error in the task, never a SIGBUS.
    script = textwrap.dedent(
        """
        import os, sys
        import numpy as np
        import bigarr
        from bigarr.errors import TruncatedFileError
        path = sys.argv[1]
        x = bigarr.to_dask(path, chunks=1024)
        os.truncate(path, os.path.getsize(path) // 2)
        try:
            x.sum().compute(scheduler="sync")
        except TruncatedFileError as exc:
            print("TruncatedFileError", exc)
        """
    )
    path = _file(tmp_path, np.ones(1 << 16))
    res = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert "TruncatedFileError" in res.stdout
