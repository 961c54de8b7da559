"""Chunk iteration: every element once, progress events, release-behind rules, and a prefetch
thread that never outlives the iteration (normal end, early break, exception, abandonment)."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr import ProgressEvent
from bigarr._compute.progress import Progress, TqdmReporter, wants_bar
from bigarr.errors import BudgetError, HintError, RegionError


def _helpers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "bigarr-prefetch"]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "stream.npy"
    with bigarr.create(p, (3000, 256), np.float32) as a:
        a[:] = np.arange(3000 * 256, dtype=np.float32).reshape(3000, 256)
    return p


@pytest.mark.parametrize("prefetch", [1, 0, 2, True, False])
@pytest.mark.parametrize("mode", ["r", "r+", "c"])
def test_chunks_visit_every_element_once(path: Path, mode: str, prefetch: Any) -> None:
    with bigarr.open(path, mode) as a:
        seen = np.zeros(a.shape, dtype=np.int8)
        total = 0.0
        for chunk, view in a.iter_chunks("64KiB", prefetch=prefetch, progress=False):
            assert isinstance(view, bigarr.memmap)
            assert view.nbytes == chunk.nbytes <= 64 << 10
            seen[chunk.key] += 1
            total += float(view.sum(dtype=np.float64))
        del view
        assert (seen == 1).all()
        assert total == float(np.arange(3000 * 256, dtype=np.float64).sum())
    assert not _helpers()


def test_f_order_and_views(tmp_path: Path) -> None:
    p = tmp_path / "f.npy"
    ref = np.arange(40 * 3000, dtype=np.int64).reshape(40, 3000)
    with bigarr.create(p, ref.shape, np.int64, order="F") as a:
        a[:] = ref
    with bigarr.open(p, "r") as a:
        got = np.zeros_like(ref)
        for chunk, view in a.iter_chunks("32KiB", progress=False):
            assert chunk.key[0] == slice(0, 40)  # chunks run along the last (slowest) axis
            got[chunk.key] = view
        del view
        assert np.array_equal(got, ref)
        sub = a[:, 1000:2000]  # an F-contiguous view starting mid-file
        parts = [np.asarray(v).copy() for _, v in sub.iter_chunks("16KiB", progress=False)]
        assert np.array_equal(np.concatenate(parts, axis=1), ref[:, 1000:2000])
        del sub


def test_budget_is_halved_with_prefetch(path: Path) -> None:
    with bigarr.open(path, "r") as a:
        with_fetch = [c.nbytes for c, _ in a.iter_chunks("128KiB", progress=False)]
        without = [c.nbytes for c, _ in a.iter_chunks("128KiB", progress=False, prefetch=False)]
    assert max(with_fetch) <= 64 << 10 < max(without) <= 128 << 10


def test_progress_events(path: Path) -> None:
    events: list[ProgressEvent] = []
    with bigarr.open(path, "r") as a:
        n = len(list(a.iter_chunks("64KiB", progress=events.append)))
    assert [e.kind for e in events] == ["start"] + ["chunk"] * n + ["end"]
    chunks = events[1:-1]
    assert [e.chunk for e in chunks] == list(range(n))
    assert chunks[-1].done_bytes == chunks[-1].total_bytes == 3000 * 256 * 4
    assert chunks[-1].done_chunks == chunks[-1].total_chunks == n
    assert events[-1].chunk == -1 and events[-1].nbytes == 0
    assert events[0].desc == "stream.npy"


def test_progress_forms(capsys: pytest.CaptureFixture[str]) -> None:
    got: list[str] = []
    both: list[Callable[[ProgressEvent], None]] = [lambda e: got.append(e.kind), TqdmReporter()]
    with Progress(both, total_bytes=8, total_chunks=2, desc="t") as p:
        p.advance(0, 4)
        p.advance(1, 4)
    assert got == ["start", "chunk", "chunk", "end"]
    assert "8.00/8.00" in capsys.readouterr().err
    assert wants_bar(True) and not wants_bar(False)
    assert not wants_bar(None)  # pytest's captured stderr is not a TTY
    with pytest.raises(TypeError, match="progress"):
        Progress("yes", total_bytes=1, total_chunks=1, desc="t")  # type: ignore[arg-type]


def test_progress_is_thread_safe() -> None:
    events: list[ProgressEvent] = []
    with Progress(events.append, total_bytes=4000, total_chunks=4000, desc="t") as p:
        workers = [threading.Thread(target=lambda k=k: [p.advance(k * 1000 + i, 1)
                                                         for i in range(1000)])
                   for k in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    done = [e.done_bytes for e in events if e.kind == "chunk"]
    assert done == list(range(1, 4001))


def test_helper_thread_ends_on_break_exception_and_abandonment(path: Path) -> None:
    with bigarr.open(path, "r") as a:
        for _chunk, _view in a.iter_chunks("64KiB", progress=False):
            assert len(_helpers()) == 1
            break
        del _view
        gc.collect()
        assert not _helpers()

        with pytest.raises(ZeroDivisionError):
            for _chunk, v in a.iter_chunks("64KiB", progress=False):
                del v
                raise ZeroDivisionError
        gc.collect()
        assert not _helpers()

        it = a.iter_chunks("64KiB", progress=False)
        assert not _helpers()  # nothing runs before the first next()
        _c, v = next(it)
        del v
        assert len(_helpers()) == 1
        del it  # abandoned mid-way: closing the generator joins the thread
        assert not _helpers()


def test_release_behind_is_refused_in_private_mode(path: Path) -> None:
    with bigarr.open(path, "c") as a:
        with pytest.raises(HintError, match="scratch edits"):
            a.iter_chunks("64KiB", release=True)
        for _c, v in a.iter_chunks("64KiB", progress=False):  # default: release off in private
            v[...] = -1
        del v
        assert float(a.min()) == -1.0  # every edit survived the iteration
        assert float(a.max()) == -1.0


def test_shared_writes_through_chunks_reach_the_file(path: Path) -> None:
    with bigarr.open(path, "r+") as a:
        for c, v in a.iter_chunks("64KiB", progress=False):
            v[...] = c.index
        del v
        last = len(a.plan("32KiB")) - 1
    with bigarr.open(path, "r") as b:
        assert float(b[0, 0]) == 0.0 and float(b[-1, -1]) == last


def test_hint_is_applied_and_reset(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bigarr._os.mapping import Mapping

    seen: list[str] = []
    original = Mapping.advise

    def spy(self: Mapping, hint: Any, span: Any) -> bool:
        seen.append(hint.name)
        return original(self, hint, span)

    monkeypatch.setattr(Mapping, "advise", spy)
    with bigarr.open(path, "r") as a:
        list(a.iter_chunks("64KiB", progress=False, prefetch=False, hint="sequential"))
    assert seen[0] == "sequential" and seen[-1] == "normal"
    assert "dontneed" in seen


def test_bad_arguments(path: Path) -> None:
    with bigarr.open(path, "r") as a:
        with pytest.raises(bigarr.errors.ArgumentError):  # prefetch is a count of chunks
            a.iter_chunks("64KiB", prefetch="random")  # type: ignore[arg-type]
        with pytest.raises(HintError):
            a.iter_chunks("64KiB", hint="fast")
        with pytest.raises(BudgetError, match="at least"):
            a.iter_chunks(1000, prefetch=False)
        with pytest.raises(RegionError, match="detached"):
            a.copy().iter_chunks("64KiB")


def test_empty_and_zero_d(tmp_path: Path) -> None:
    p = tmp_path / "empty.npy"
    bigarr.create(p, (0, 3), np.float32).close()
    with bigarr.open(p, "r") as a:
        assert list(a.iter_chunks("64KiB", progress=False)) == []
        assert len(a.plan()) == 0
    p = tmp_path / "scalar.npy"
    with bigarr.create(p, (), np.float64) as s:
        s[()] = 2.5
    with bigarr.open(p, "r") as s:
        ((chunk, view),) = list(s.iter_chunks("64KiB", progress=False))
        assert chunk.key == () and view.shape == () and float(view) == 2.5
        del view


def test_truncated_file_raises_instead_of_crashing(path: Path, run_py: Any) -> None:
    proc = run_py(f"""
        import os, bigarr
        a = bigarr.open({str(path)!r}, "r")
        it = a.iter_chunks("64KiB", progress=False)
        next(it)
        os.truncate({str(path)!r}, 8192)
        try:
            for _ in it:
                pass
        except bigarr.errors.FileChangedError as e:
            print("refused:", e)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "refused:" in proc.stdout and "shrank" in proc.stdout


def test_a_failed_release_flush_reaches_the_consumer(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With prefetch on, the helper flushes finished chunks; its errors must not be lost."""
    import errno

    from bigarr._os.mapping import Mapping
    from bigarr.errors import MappingError

    original = Mapping.write_back  # the release writes back, then drops
    calls = []

    def failing(self: Mapping, span: Any) -> None:
        calls.append(span)
        if len(calls) == 2:
            raise MappingError(errno.EIO, "writeback failed: simulated I/O error")
        original(self, span)

    with bigarr.open(path, "r+") as a:
        monkeypatch.setattr(Mapping, "write_back", failing)
        views = []
        with pytest.raises(MappingError, match="simulated"):
            for _c, v in a.iter_chunks("64KiB", progress=False):
                views.append(v)
                v[...] = 1
        views.clear()
        del v
        monkeypatch.setattr(Mapping, "write_back", original)
    assert not _helpers()


@pytest.mark.parametrize("prefetch", [True, False])
def test_closing_inside_the_loop_raises_closed_error_not_ebadf(path: Path, prefetch: Any) -> None:
    # Regression: the per-chunk file-size check ran fstat on the closed (or reused) descriptor
    # and raised a bare OSError(EBADF) instead of ClosedError.
    a = bigarr.open(path, "r+")
    with pytest.raises(bigarr.errors.ClosedError):
        for _chunk, _view in a.iter_chunks("64KiB", prefetch=prefetch, progress=False):
            a.close(force=True)
    assert not _helpers()


def test_budget_error_with_prefetch_names_the_given_budget(tmp_path: Path) -> None:
    # Regression: with prefetch the plan gets half the budget, and the BudgetError quoted only
    # that half ("Got a budget of 2048 bytes" for budget="4KiB"), which misled the caller.
    np.save(tmp_path / "n.npy", np.arange(100_003, dtype="<f4"))  # data not page-aligned
    with bigarr.open(tmp_path / "n.npy") as a:
        with pytest.raises(BudgetError, match=r"4096 bytes.*prefetch=0"):
            a.iter_chunks("4KiB", progress=False)
        assert sum(c.nbytes for c, _ in a.iter_chunks("4KiB", progress=False, prefetch=False)) \
            == a.nbytes


def test_a_bad_progress_argument_is_a_bigarr_error(path: Path) -> None:
    # Regression: progress= of the wrong type raised a bare TypeError, not a bigarr error.
    with bigarr.open(path) as a, pytest.raises(bigarr.errors.ArgumentError,
                                               match="progress") as info:
        for _ in a.iter_chunks("64KiB", progress=42):  # type: ignore[arg-type]
            pass
    assert isinstance(info.value, TypeError)


def test_resident_of_a_region_costs_the_region_not_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Regression: resident(region) planned and mincore'd the whole file; on a 36 GiB np.save
    # file (256-byte rows, data at byte 128) x.resident(slice(0, 1024)) grew to 19 GB of RSS.
    # A sparse 8 GiB file of that layout: count the pages mincore is asked about.
    p = tmp_path / "big.npy"
    rows = (8 << 30) // 256
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (rows, 64)})
        assert f.tell() == 128
        f.truncate(128 + rows * 256)
    asked: list[int] = []
    real = bigarr._os.mapping.Mapping.residency

    def counting(self: Any, span: Any) -> Any:
        asked.append(span.nbytes)
        return real(self, span)

    monkeypatch.setattr(bigarr._os.mapping.Mapping, "residency", counting)
    with bigarr.open(p) as x:
        r = x.resident(slice(0, 1024), budget="1MiB")
        assert r.total_pages == 65  # 1024 rows of 256 bytes from byte 128
        assert [c.index for c in r.chunks] == [0]
        assert sum(asked) <= 2 << 20  # the region and the one 1 MiB chunk it overlaps
        asked.clear()
        mid = x.resident(slice(rows // 2, rows // 2 + 10_000), budget="1MiB")
        assert len(mid.chunks) in (3, 4) and sum(asked) <= 5 << 20
