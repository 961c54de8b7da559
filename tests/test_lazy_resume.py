"""Resumable lazy ``to_npy`` (issue 12): kill -9 a run at a random point, resume, compare."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._formats.journal import journal_path, read_journal
from bigarr.errors import StaleJournalWarning, UnsupportedError
from interrupt import Stop, stop_at
from test_resume import _kill_after as kill_after

ROWS = 40_000
COLS = 16

# The worker logs each journal record (the chunks made durable). Once it has logged ``hold``
# chunks it stops there, as if descheduled, until the test kills it: the kill lands at the
# chosen point however loaded the machine is (a run that merely slowed down could finish first).
# The library is not changed: the hook wraps Journal.record in the worker process only.
WORKER = textwrap.dedent("""
    import sys, time
    import bigarr
    from bigarr._formats import journal

    src, out, log, resume, scale, mode, hold = sys.argv[1:]
    record = journal.Journal.record
    logged_chunks = 0

    def logged(self, chunks, rows=None):
        global logged_chunks
        chunks = list(chunks)
        record(self, chunks, rows)
        with open(log, "a") as fh:
            fh.write(" ".join(map(str, chunks)) + "\\n")
        logged_chunks += len(chunks)
        while logged_chunks >= int(hold) > 0:
            time.sleep(1)  # wait here for the kill

    journal.Journal.record = logged
    x = bigarr.lazy(src)
    if mode == "filter":
        expr = x[x[:, 0] > -2.5] * float(scale)
    else:
        expr = (x - x.mean(0)) / x.std(0) * float(scale) + 1
    expr.to_npy(out, budget="4MiB", threads=2, progress=False, resume=resume == "1").close()
""")


def _source(tmp_path: Path) -> Path:
    x = np.random.default_rng(7).standard_normal((ROWS, COLS))
    bigarr.create(tmp_path / "src.npy", x.shape, x.dtype).close()
    with bigarr.open(tmp_path / "src.npy", "shared") as m:
        m[...] = x
    return tmp_path / "src.npy"


def _start(tmp_path: Path, src: Path, out: Path, log: Path, *, resume: bool,
           scale: str = "2.0", mode: str = "standardize",
           hold: int = 0) -> subprocess.Popen[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return subprocess.Popen([sys.executable, str(script), str(src), str(out), str(log),
                             "1" if resume else "0", scale, mode, str(hold)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _expr(src: Path, scale: float = 2.0, mode: str = "standardize") -> bigarr.LazyArray:
    x = bigarr.lazy(src)
    if mode == "filter":
        return x[x[:, 0] > -2.5] * scale
    return (x - x.mean(0)) / x.std(0) * scale + 1


def _logged_run(monkeypatch: pytest.MonkeyPatch, src: Path, out: Path, *,
                scale: float = 2.0, mode: str = "standardize") -> list[int]:
    """Run in this process (resume=True); the chunks each journal record names."""
    from bigarr._formats import journal

    seen: list[int] = []
    record = journal.Journal.record

    def logged(self: journal.Journal, chunks: Any, rows: int | None = None) -> None:
        chunks = list(chunks)
        record(self, chunks, rows)
        seen.extend(chunks)

    monkeypatch.setattr(journal.Journal, "record", logged)
    _expr(src, scale, mode).to_npy(out, budget="4MiB", threads=2, progress=False,
                             resume=True).close()
    monkeypatch.undo()
    return seen


def _kill_after(tmp_path: Path, src: Path, out: Path, chunks: int,
                mode: str = "standardize") -> None:
    log = tmp_path / "run.log"  # a line of chunk numbers per journal record
    proc = _start(tmp_path, src, out, log, resume=True, mode=mode, hold=chunks)
    kill_after(proc, log, chunks)


def _crc(path: Path) -> int:
    return zlib.crc32(np.load(path).tobytes())


def _doubled(src: Path, mode: str) -> bigarr.LazyArray:
    """``src`` times 2, or its rows whose first value is not a multiple of 3 (``"filter"``)."""
    lx = bigarr.lazy(src)
    return lx[lx[:, 0] % 3 > 0] * 2 if mode == "filter" else lx * 2


def _interrupt(expr: bigarr.LazyArray, out: Path) -> None:
    """A resumable ``to_npy`` of ``expr`` stopped by an exception at its fourth progress event."""
    with pytest.raises(Stop):
        expr.to_npy(out, budget="1MiB", threads=1, resume=True, progress=stop_at(4))


def test_lazy_to_npy_resumes_after_kill_and_matches_a_clean_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(tmp_path)
    clean = tmp_path / "clean.npy"
    total = sorted(_logged_run(monkeypatch, src, clean))
    assert len(total) > 6 and total == list(range(len(total)))

    out = tmp_path / "out.npy"
    seed = random.randrange(1 << 30)
    # chunks journaled before the kill; the chunk count follows the planner, so draw from it
    kill_at = random.Random(seed).randint(1, len(total) - 2)
    _kill_after(tmp_path, src, out, kill_at)
    assert not out.exists(), seed  # the output's name appears only once complete
    parsed = read_journal(journal_path(str(out)))
    assert parsed is not None and parsed.done, seed
    done = set(parsed.done)

    again = _logged_run(monkeypatch, src, out)
    assert not done & set(again), seed  # journaled chunks are not written again
    assert sorted(done | set(again)) == total, seed
    assert _crc(out) == _crc(clean), seed
    np.testing.assert_array_equal(np.load(out), np.load(clean))
    assert not Path(journal_path(str(out))).exists()
    assert not list(tmp_path.glob(".out.npy.bigarr-*"))


def test_a_journal_of_another_expression_is_not_trusted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(tmp_path)
    out = tmp_path / "out.npy"
    _kill_after(tmp_path, src, out, 2)
    with pytest.warns(StaleJournalWarning):
        again = sorted(_logged_run(monkeypatch, src, out, scale=3.0))  # another constant
    assert again == list(range(len(again)))  # every chunk written again
    x = np.load(src)
    expected = (x - x.mean(0)) / x.std(0) * 3.0 + 1
    np.testing.assert_allclose(np.load(out), expected, rtol=1e-12, atol=1e-12)


def test_filtered_output_resumes_after_kill_and_matches_a_clean_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(tmp_path)
    clean = tmp_path / "clean.npy"
    total = sorted(_logged_run(monkeypatch, src, clean, mode="filter"))
    assert len(total) > 4 and total == list(range(len(total)))
    out = tmp_path / "out.npy"
    seed = random.randrange(1 << 30)
    _kill_after(tmp_path, src, out, random.Random(seed).randint(1, len(total) // 2), "filter")
    assert not out.exists(), seed
    pointer = read_journal(journal_path(str(out)))
    assert pointer is not None and pointer.header["kind"] == "lazy-append", seed
    partial = tmp_path / pointer.header["target"]["partial"]
    appends = read_journal(journal_path(str(partial)))
    assert appends is not None and appends.done, seed
    prefix = 0
    while prefix in appends.done:
        prefix += 1

    again = _logged_run(monkeypatch, src, out, mode="filter")
    assert min(again) == prefix, seed  # the journaled prefix of appends is kept
    assert _crc(out) == _crc(clean), seed
    np.testing.assert_array_equal(np.load(out), np.load(clean))
    assert not Path(journal_path(str(out))).exists()
    assert not list(tmp_path.glob(".out.npy.bigarr-*"))


def test_resume_is_refused_up_front_for_scans_in_the_written_expression(
        tmp_path: Path) -> None:
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    lx = bigarr.lazy(x)
    with pytest.raises(UnsupportedError, match="cumsum"):
        (lx.cumsum(0) + 1).to_npy(tmp_path / "c.npy", resume=True)
    with pytest.raises(UnsupportedError, match="diff"):
        np.diff(lx, axis=0).to_npy(tmp_path / "d.npy", resume=True)
    assert not list(tmp_path.iterdir())
    # a scan inside a reduction runs in an earlier pass: resumable
    with (lx - lx.cumsum(0).max(0)).to_npy(tmp_path / "r.npy", resume=True) as m:
        np.testing.assert_array_equal(m, x - x.cumsum(0).max(0))
    with lx[x[:, 0] > 3].to_npy(tmp_path / "f.npy", resume=True) as m:  # a filter
        np.testing.assert_array_equal(m, x[x[:, 0] > 3])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.npy", "r.npy"]


def test_a_run_without_resume_clears_an_interrupted_filtered_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _source(tmp_path)
    out = tmp_path / "out.npy"
    _kill_after(tmp_path, src, out, 2, "filter")
    assert Path(journal_path(str(out))).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stale journal is reported without resume
        _expr(src, mode="filter").to_npy(out, budget="4MiB", progress=False).close()
    x = np.load(src)
    np.testing.assert_array_equal(np.load(out), x[x[:, 0] > -2.5] * 2.0)
    assert not Path(journal_path(str(out))).exists()
    assert not list(tmp_path.glob(".out.npy.bigarr-*"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bigarr.open(out).close()  # no journal left to warn of


@pytest.mark.parametrize("mode", ["plain", "filter"])
def test_an_input_rewritten_in_place_with_its_mtime_set_back_is_not_trusted(
        tmp_path: Path, mode: str) -> None:
    # regression: `cp -p new.npy in.npy` (or `rsync --inplace -t`) rewrites the same inode and
    # sets the mtime back, so path, size, mtime and inode all matched the journal's, and the
    # resumed run kept chunks computed from the old contents
    src, out = tmp_path / "in.npy", tmp_path / "out.npy"
    x = np.arange(200_000, dtype=np.float64).reshape(-1, 4)
    np.save(src, x)

    _interrupt(_doubled(src, mode), out)
    assert read_journal(journal_path(str(out))) is not None
    st = src.stat()
    with open(src, "r+b") as f:  # the same inode, rewritten: other data of the same size
        f.seek(st.st_size - x.nbytes)
        f.write((x + 1).tobytes())
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.warns(StaleJournalWarning):
        got = _doubled(src, mode).to_npy(out, budget="1MiB", threads=1, resume=True, progress=False)
    y = x + 1
    with got:
        np.testing.assert_array_equal(got, y[y[:, 0] % 3 > 0] * 2 if mode == "filter" else y * 2)


@pytest.mark.parametrize("first,then", [("filter", "plain"), ("plain", "filter")])
def test_a_finished_run_leaves_no_journal_of_an_interrupted_run_of_another_kind(
        tmp_path: Path, first: str, then: str) -> None:
    # regression: a filtered run after an interrupted plain one left the plain run's journal
    # beside the finished output; a plain run after an interrupted filtered one left the
    # journal of the filtered run's (deleted) partial file under a hidden name for good
    src, out = tmp_path / "in.npy", tmp_path / "out.npy"
    x = np.arange(200_000, dtype=np.float64).reshape(-1, 4)
    np.save(src, x)

    _interrupt(_doubled(src, first), out)
    assert len(list(tmp_path.iterdir())) > 2
    _doubled(src, then).to_npy(out, budget="1MiB", threads=1, progress=False).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npy", "out.npy"]
    np.testing.assert_array_equal(np.load(out), np.asarray(_doubled(src, then).compute()))


def test_an_interrupted_filtered_run_leaves_the_older_output_complete(tmp_path: Path) -> None:
    # regression: the journal of an interrupted resumable filtered run (overwrite=True) made
    # the older, complete file at the output's name incomplete for check_complete and open
    src, out = tmp_path / "in.npy", tmp_path / "out.npy"
    x = np.arange(200_000, dtype=np.float64).reshape(-1, 4)
    np.save(src, x)
    np.save(out, np.zeros(3))

    lx = bigarr.lazy(src)
    with pytest.raises(Stop):
        lx[lx[:, 0] % 3 > 0].to_npy(out, budget="1MiB", threads=1, resume=True, overwrite=True,
                                    progress=stop_at(1))
    assert read_journal(journal_path(str(out))) is not None
    bigarr.check_complete(out)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with bigarr.open(out) as m:
            np.testing.assert_array_equal(m, np.zeros(3))
