"""bigarr.linalg.matmul of two files (tiled) and ``a.T @ b`` of two tall files (one pass).

numpy's ``a @ b`` is the oracle: float64 to 1e-10 relative; float32 to 1e-5 (products in the
result dtype) and 1e-6 for ``a.T @ b`` (accumulated in float64). A 1 MiB budget forces several
column panels, so the tile schedule is exercised, not one panel.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr import linalg
from bigarr.errors import BudgetError, ShapeError

KW: dict[str, Any] = {"budget": "1MiB", "threads": 2, "progress": False}


def _rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """a: 6000 x 200 (9.2 MiB), b: 200 x 300 (0.5 MiB), both larger than a quarter budget."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("mm")
    a, b = rng.standard_normal((6000, 200)), rng.standard_normal((200, 300))
    np.save(folder / "a.npy", a)
    np.save(folder / "b.npy", b)
    return folder, a, b


def test_plan_tiles_reads_b_once_and_a_once_per_panel() -> None:
    plan = linalg.plan_tiles((6000, 200), (200, 300), 8, 8, 8, "1MiB")
    assert plan.schedule == "b-columns"
    assert plan.panel == (1 << 20) // 8 // (200 * 8) == 81
    assert plan.passes == 4
    assert plan.read_bytes == 4 * 6000 * 200 * 8 + 200 * 300 * 8
    assert plan.write_bytes == 6000 * 300 * 8
    assert linalg.plan_tiles((10, 5), (5, 7), 4, 4, 4, "1MiB").passes == 1
    # out's rows 20x a's: panels of a's rows, b re-read once per panel, a read once
    plan = linalg.plan_tiles((3000, 100), (100, 2000), 4, 4, 4, "4MiB", threads=2)
    assert plan.schedule == "a-rows"
    assert plan.panel == (2 << 20) // (8 * (2 * 100 + 6 * 2000)) == 21
    assert plan.read_bytes == 3000 * 100 * 4 + math.ceil(3000 / 21) * 100 * 2000 * 4
    # a small b (a file) that fits: one panel, one pass, however wide out's rows
    plan = linalg.plan_tiles((200_000, 8), (8, 5000), 8, 8, 8, "64MiB", threads=2)
    assert (plan.schedule, plan.passes) == ("b-columns", 1)
    # a short a and a big b: re-reading a is cheaper than re-reading b
    assert linalg.plan_tiles((100, 1000), (1000, 1000), 8, 8, 8, "1MiB").schedule \
        == "b-columns"
    with pytest.raises(BudgetError, match="one column of b"):
        linalg.plan_tiles((10, 10**6), (10**6, 3), 8, 8, 8, "1MiB")


def test_file_times_file(files: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    folder, a, b = files
    got = linalg.matmul(folder / "a.npy", folder / "b.npy", tmp_path / "o.npy", **KW)
    assert isinstance(got, bigarr.memmap) and got.shape == (6000, 300)
    assert _rel(got, a @ b) < 1e-10
    got.close()
    mapped = np.load(folder / "b.npy", mmap_mode="r")
    got = linalg.matmul(folder / "a.npy", mapped, budget="64MiB", threads=2, progress=False)
    assert isinstance(got, np.ndarray) and _rel(got, a @ b) < 1e-10
    into = np.zeros((6000, 300))
    assert linalg.matmul(folder / "a.npy", b, into, **KW) is into
    assert _rel(into, a @ b) < 1e-10
    with pytest.raises(BudgetError, match="out="):
        linalg.matmul(folder / "a.npy", folder / "b.npy", **KW)


@pytest.mark.parametrize(("n", "k", "m", "schedule"), [(3000, 400, 600, "b-columns"),
                                                       (500, 100, 2000, "a-rows")])
def test_file_times_file_float32(tmp_path: Path, n: int, k: int, m: int,
                                 schedule: str) -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, k)).astype(np.float32)
    b = rng.standard_normal((k, m)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    budget = "4MiB"
    plan = linalg.plan_tiles(a.shape, b.shape, 4, 4, 4, budget, threads=2)
    assert plan.schedule == schedule and plan.passes > 1
    got = linalg.matmul(tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "o.npy",
                        budget=budget, threads=2, progress=False)
    assert got.dtype == np.float32
    assert _rel(got, a.astype(np.float64) @ b) < 1e-5
    got.close()
    into = np.empty((n, m), np.float32)  # in memory, and b in memory (but large)
    linalg.matmul(a, b, into, budget=budget, threads=2, progress=False)
    assert _rel(into, a.astype(np.float64) @ b) < 1e-5


def test_transposed_a_times_a_tall_file(files: tuple[Path, np.ndarray, np.ndarray],
                                        tmp_path: Path) -> None:
    folder, a, _ = files
    c = np.random.default_rng(2).standard_normal((6000, 7))
    np.save(tmp_path / "c.npy", c)
    at = bigarr.open(folder / "a.npy").T
    got = linalg.matmul(at, tmp_path / "c.npy", **KW)
    assert got.shape == (200, 7) and _rel(got, a.T @ c) < 1e-10
    got = linalg.matmul(np.load(folder / "a.npy", mmap_mode="r").T,
                        np.load(tmp_path / "c.npy", mmap_mode="r"), **KW)
    assert _rel(got, a.T @ c) < 1e-10
    v = linalg.matmul(at, c[:, 0].copy(), **KW)
    assert v.shape == (200,) and _rel(v, a.T @ c[:, 0]) < 1e-10
    out = linalg.matmul(at, tmp_path / "c.npy", tmp_path / "o.npy", **KW)
    assert isinstance(out, bigarr.memmap) and _rel(out, a.T @ c) < 1e-10
    out.close()
    c32 = c.astype(np.float32)
    got = linalg.matmul(a.astype(np.float32).T, c32, **KW)
    assert got.dtype == np.float32
    assert _rel(got, a.astype(np.float32).astype(np.float64).T @ c32) < 1e-6
    with pytest.raises(ShapeError, match="rows"):
        linalg.matmul(at, np.ones((5999, 2)), **KW)


@pytest.mark.slow
def test_tiled_peak_rss_within_budget(tmp_path: Path,
                                      peak_rss: Callable[..., list[int]]) -> None:
    """a: 128 MiB (16x an 8 MiB budget), b: 10 MiB (larger than the budget), by panels."""
    a = np.lib.format.open_memmap(tmp_path / "a.npy", "w+", np.float32, (2048, 16384))
    for i in range(0, 2048, 256):
        a[i:i + 256] = np.random.default_rng(i).standard_normal((256, 16384), np.float32)
    a.flush()
    del a
    np.save(tmp_path / "b.npy", np.ones((16384, 160), np.float32))
    budget = 8 << 20
    plan = linalg.plan_tiles((2048, 16384), (16384, 160), 4, 4, 4, budget, threads=2)
    assert plan.passes > 1
    [grown] = peak_rss("from bigarr import linalg", """
        linalg.matmul(sys.argv[1], sys.argv[2], sys.argv[3], budget=int(sys.argv[4]), threads=2,
                      progress=False).close()
    """, args=(*(str(tmp_path / n) for n in ("a.npy", "b.npy", "o.npy")), str(budget)))
    assert grown <= budget + (64 << 20)
    got = np.load(tmp_path / "o.npy", mmap_mode="r")
    a = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert _rel(got[:64], a[:64].astype(np.float64).sum(axis=1, keepdims=True)
                * np.ones(160)) < 1e-5


def test_matmul_out_naming_its_own_input_keeps_the_data(tmp_path: Path) -> None:
    """Regression: out= the input's own path zeroed the input before reading it."""
    x = np.random.default_rng(1).standard_normal((2000, 6))
    path = tmp_path / "X.npy"
    np.save(path, x)
    got = linalg.matmul(str(path), np.eye(6), out=str(path), overwrite=True)
    np.testing.assert_array_equal(np.asarray(got), x)
    np.testing.assert_array_equal(np.load(path), x)


def test_matmul_tiled_out_naming_its_own_input_keeps_the_data(tmp_path: Path) -> None:
    """Regression: the tiled product (b a file) also created out before opening a by path."""
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((300, 64)), rng.standard_normal((64, 512))
    assert linalg.plan_tiles(a.shape, b.shape, 8, 8, 8, "1MiB").passes == 2
    pa, pb = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(pa, a)
    np.save(pb, b)
    got = linalg.matmul(str(pa), str(pb), out=str(pa), overwrite=True, budget="1MiB")
    np.testing.assert_allclose(np.asarray(got), a @ b, rtol=1e-12, atol=1e-12)


def test_matmul_refused_leaves_existing_out_and_no_new_file(tmp_path: Path) -> None:
    """Regression: a BudgetError destroyed an existing out, or left a zero-filled new one."""
    src = tmp_path / "X200k.npy"
    np.save(src, np.ones((200_000, 6)))
    keep = tmp_path / "keep.npy"
    np.save(keep, np.arange(5.0))
    with pytest.raises(BudgetError):
        linalg.matmul(str(src), np.ones((6, 2)), out=str(keep), overwrite=True, budget="64KiB")
    np.testing.assert_array_equal(np.load(keep), np.arange(5.0))
    with pytest.raises(BudgetError):
        linalg.matmul(str(src), np.ones((6, 2)), out=str(tmp_path / "new.npy"), budget="64KiB")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X200k.npy", "keep.npy"]


def test_matmul_existing_out_without_overwrite_is_refused_untouched(tmp_path: Path) -> None:
    keep = tmp_path / "keep.npy"
    np.save(keep, np.arange(4.0))
    with pytest.raises(FileExistsError):
        linalg.matmul(np.ones((4, 3)), np.ones((3, 1)), out=str(keep))
    np.testing.assert_array_equal(np.load(keep), np.arange(4.0))


@pytest.mark.parametrize("bshape", [(0, 2), (0,)])
def test_matmul_inner_dimension_zero_is_zeros(tmp_path: Path, bshape: tuple[int, ...]) -> None:
    """Regression: an inner dimension of 0 returned uninitialised memory."""
    a, b = np.ones((5, 0)), np.ones(bshape)
    want = a @ b
    got = linalg.matmul(a, b)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    pa, pb = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(pa, a)
    np.save(pb, b)
    np.testing.assert_array_equal(linalg.matmul(str(pa), str(pb)), want)
    out = linalg.matmul(str(pa), b, out=str(tmp_path / "o.npy"))
    np.testing.assert_array_equal(np.asarray(out), want)
    dest = np.full(want.shape, 7.0)
    np.testing.assert_array_equal(linalg.matmul(a, b, out=dest), want)
