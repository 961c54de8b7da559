"""LazyArray.to_zarr streams the expression straight into zarr (issue 12), never staged."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._compute import lazy as lazy_module

zarr = pytest.importorskip("zarr")


def _no_staging(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("staged through to_npy")

    monkeypatch.setattr(lazy_module.LazyArray, "to_npy", refuse)


@pytest.mark.parametrize("chunks", [None, (1000, 7), (333, 3)])
def test_expressions_stream_into_zarr_chunk_aligned(tmp_path: Path, chunks: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a = np.random.default_rng(0).standard_normal((20000, 7)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    x = bigarr.lazy(tmp_path / "a.npy")
    z = (x - x.mean(axis=0)) / x.std(axis=0)
    want = z.compute(budget="64MiB", progress=False)
    _no_staging(monkeypatch)
    opts = {} if chunks is None else {"chunks": chunks}
    out = z.to_zarr(tmp_path / "z.zarr", budget="4MiB", progress=False, **opts)
    np.testing.assert_array_equal(out[:], want)
    np.testing.assert_array_equal(
        x.cumsum(axis=0).to_zarr(tmp_path / "c.zarr", budget="4MiB", progress=False)[:],
        np.cumsum(a, axis=0))
    got = x[5:-3:4, 1:].to_zarr(tmp_path / "s.zarr", budget="4MiB", progress=False, **opts
                                if chunks is None else {"chunks": (100, 6)})
    np.testing.assert_array_equal(got[:], a[5:-3:4, 1:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy", "c.zarr", "s.zarr",
                                                           "z.zarr"]


def test_filters_are_staged_and_bad_options_refused(tmp_path: Path) -> None:
    a = np.random.default_rng(1).standard_normal((5000, 3))
    x = bigarr.lazy(a)
    got = x[x[:, 0] > 0].to_zarr(tmp_path / "f.zarr", progress=False)
    np.testing.assert_array_equal(got[:], a[a[:, 0] > 0])
    with pytest.raises(ValueError):
        (x * 2).to_zarr(tmp_path / "g.zarr", chunks=(10,), progress=False)


@pytest.mark.slow
def test_to_zarr_peak_rss(tmp_path: Path, peak_rss: Callable[..., list[int]]) -> None:
    budget, rows = 4 << 20, (64 << 20) // 128  # 64 MiB file: 16x the budget
    x = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float32, (rows, 32))
    for i in range(0, rows, 1 << 17):
        x[i:i + (1 << 17)] = np.arange(32, dtype=np.float32) + np.float32(i % 997)
    x.flush()
    del x
    [peak] = peak_rss("import numpy as np, bigarr\nx = bigarr.lazy(sys.argv[1])", """
        z = (x - x.mean(axis=0)) / x.std(axis=0)
        z.to_zarr(sys.argv[2], budget=int(sys.argv[3]), compressors=None, chunks=(4096, 32),
                  progress=False)
    """, args=(str(tmp_path / "x.npy"), str(tmp_path / "z.zarr"), str(budget)))
    assert peak <= budget + (64 << 20), f"peak {peak >> 20} MiB at a 4 MiB budget"
    print(f"peak {peak >> 20} MiB")
    z = zarr.open_array(str(tmp_path / "z.zarr"), mode="r")
    assert z.shape == (rows, 32) and abs(float(z[:1000].mean())) < 5


_KILLED_STAGE = """
    import os, signal, numpy as np, bigarr
    from bigarr._interop import lazyexport
    lazyexport.to_zarr = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
    x = bigarr.lazy(np.arange(3000.0).reshape(1000, 3))
    x[x[:, 0] > 30].to_zarr({path!r}, progress=False)
"""


def test_a_killed_runs_stage_is_swept_by_the_next_never_a_live_ones(
        tmp_path: Path, run_py: Callable[..., Any]) -> None:
    # regression: the stage (file, lock, partial) of a kill -9'd filter to_zarr stayed forever
    from bigarr._os.lock import held_directory

    out = tmp_path / "f.zarr"
    proc = run_py(_KILLED_STAGE.format(path=str(out)))
    assert proc.returncode == -9, proc.stderr
    dead = [p for p in tmp_path.iterdir() if ".bigarr-stage-" in p.name]
    assert len(dead) == 1 and (dead[0] / "staged.npy").exists()
    a = np.arange(3000.0).reshape(1000, 3)
    x = bigarr.lazy(a)
    with held_directory(str(out), "stage") as live:  # a concurrent run's, alive
        (Path(live) / "staged.npy").write_bytes(b"a live run's stage")
        got = x[x[:, 0] > 30].to_zarr(out, progress=False)
        np.testing.assert_array_equal(got[:], a[a[:, 0] > 30])
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
            [os.path.basename(live), "f.zarr"])
        assert (Path(live) / "staged.npy").read_bytes() == b"a live run's stage"
    assert [p.name for p in tmp_path.iterdir()] == ["f.zarr"]


def test_a_staged_result_creates_the_missing_folders_as_a_streamed_one(tmp_path: Path) -> None:
    # regression: a filter to a new nested path failed (FileMissingError) where x * 2 worked
    a = np.arange(300.0).reshape(100, 3)
    x = bigarr.lazy(a)
    got = x[x[:, 0] > 30].to_zarr(tmp_path / "new" / "sub" / "f.zarr", progress=False)
    np.testing.assert_array_equal(got[:], a[a[:, 0] > 30])
    assert os.listdir(tmp_path / "new" / "sub") == ["f.zarr"]
