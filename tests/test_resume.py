"""Resumable outputs: kill -9 a map_blocks run at a random point, run again, compare."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import bigarr
from bigarr._formats.journal import journal_path, read_journal
from bigarr.errors import IncompleteOutputError

ROWS = 200_000

WORKER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import bigarr

    src, out, log, resume, mode, budget = sys.argv[1:]

    # block_info["probe"] marks the call on a probe block that measures the function's
    # temporaries before the run (its result is discarded): not a chunk, so not logged.
    # Once the log holds BIGARR_TEST_HOLD calls, each call stops there (as if descheduled)
    # until the test kills the run, so the kill lands at the chosen point on any machine. (The
    # environment is not part of the function's identity: a resumed run without it is the
    # same function.)
    def func(block, block_info):
        if not block_info["probe"]:
            with open(log, "a") as fh:  # one line per call: the chunk's first row
                fh.write(f"{int(block[0, 0])}\\n")
            time.sleep(0.01)
            hold = int(os.environ.get("BIGARR_TEST_HOLD", "0"))
            while hold and len(open(log).read().split()) >= hold:
                time.sleep(1)  # wait here for the kill
        return np.sqrt(block) * 3 + 1

    def keep(block, block_info):
        func(block, block_info)
        return block[block[:, 1] % 3 == 0] + 0.5

    opts = dict(budget=budget, threads=2, resume=resume == "1", flush_every=1, progress=False)
    if mode == "file":
        bigarr.map_blocks(func, src, out=out, **opts).close()
    elif mode == "inplace":
        with bigarr.open(out, "shared") as target:
            bigarr.map_blocks(func, src, out=target, **opts)
    else:
        with bigarr.Appender(out, np.float32, (4,)) as app:
            bigarr.map_blocks(keep, src, out=app, **opts)
""")


def _partials(out: Path) -> list[Path]:
    """The hidden partial files of an output (random names: ``.<name>.bigarr-partial-*``)."""
    return sorted(out.parent.glob(f".{out.name}.bigarr-partial-*"))


def _source(tmp_path: Path) -> Path:
    x = np.arange(ROWS * 4, dtype=np.float32).reshape(ROWS, 4)
    x[:, 0] = np.arange(ROWS)  # the log names a chunk by its first row
    src = bigarr.create(tmp_path / "src.npy", x.shape, x.dtype)
    src[...] = x
    src.close()
    return tmp_path / "src.npy"


def _prepare(out: Path, mode: str) -> None:
    if mode == "inplace":
        bigarr.create(out, (ROWS, 4), np.float32, overwrite=True).close()
    elif mode == "append":
        bigarr.append(out, np.full((3, 4), -1.0, np.float32))  # rows from before the run


def _start(tmp_path: Path, src: Path, out: Path, log: Path, resume: bool, mode: str,
           budget: str = "2MiB", hold: int = 0) -> subprocess.Popen[str]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "BIGARR_TEST_HOLD": str(hold)}
    return subprocess.Popen(
        [sys.executable, str(script), str(src), str(out), str(log), "1" if resume else "0",
         mode, budget],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _finish(proc: subprocess.Popen[str]) -> None:
    _stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr


def _calls(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def _kill_after(proc: subprocess.Popen[str], log: Path, calls: int) -> None:
    deadline = time.monotonic() + 60
    while len(_calls(log)) < calls:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


_CLEAN: dict[tuple[str, str], tuple[np.ndarray, int]] = {}


@pytest.fixture(scope="module")
def clean_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the clean runs write; each (mode, budget) runs once per module (the source's
    values are the same in every test, so its result and chunk count are too)."""
    _CLEAN.clear()
    return tmp_path_factory.mktemp("clean")


def _clean_run(folder: Path, mode: str, budget: str = "2MiB") -> tuple[np.ndarray, int]:
    if (mode, budget) not in _CLEAN:
        src = folder / "src.npy" if (folder / "src.npy").exists() else _source(folder)
        out = folder / f"clean-{mode}-{budget}.npy"
        log = folder / f"clean-{mode}-{budget}.log"
        _prepare(out, mode)
        _finish(_start(folder, src, out, log, False, mode, budget))
        _CLEAN[mode, budget] = np.load(out), len(_calls(log))
    return _CLEAN[mode, budget]


@pytest.mark.parametrize(("mode", "seed"), [
    ("file", 0), ("inplace", 3), ("append", 4),
    # more kill points of the same file-mode path (the crash matrix kills it at others too)
    pytest.param("file", 1, marks=pytest.mark.slow),
    pytest.param("file", 2, marks=pytest.mark.slow),
])
def test_resume_after_kill_matches_a_clean_run(tmp_path: Path, clean_folder: Path, mode: str,
                                               seed: int) -> None:
    src = _source(tmp_path)
    expected, nchunks = _clean_run(clean_folder, mode)
    assert nchunks > 8
    out = tmp_path / "out.npy"
    _prepare(out, mode)
    kill_at = random.Random(seed).randint(1, nchunks - 2)
    # One log for both runs: the log's path is a global the function reads, so it is part of
    # the function's identity (another path would be another function, not resumed).
    log = tmp_path / "run.log"
    _kill_after(_start(tmp_path, src, out, log, True, mode, hold=kill_at), log, kill_at)
    before = len(_calls(log))

    # The interrupted output is detectable as incomplete.
    if mode == "file":
        assert not out.exists() and _partials(out)
    else:
        with pytest.raises(IncompleteOutputError, match="resume=True"):
            bigarr.check_complete(out)
    journal = read_journal(journal_path(str(out)))
    assert journal is not None
    done = set(journal[1])

    _finish(_start(tmp_path, src, out, log, True, mode))
    calls = _calls(log)[before:]
    if mode == "append":
        # Appends commit in chunk order: the journaled prefix is skipped.
        prefix = 0
        while prefix in done:
            prefix += 1
        assert len(calls) == nchunks - prefix
    else:
        assert len(calls) == nchunks - len(done)
        assert len(calls) == len(set(calls))  # no chunk computed twice
    assert (len(calls) < nchunks) == bool(done)
    got = np.load(out)
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(got, expected)
    bigarr.check_complete(out)
    assert not os.path.exists(journal_path(str(out)))
    assert not _partials(out)


def test_without_resume_a_crash_leaves_no_output_and_reruns_everything(
        tmp_path: Path, clean_folder: Path) -> None:
    src = _source(tmp_path)
    expected, nchunks = _clean_run(clean_folder, "file")
    out = tmp_path / "out.npy"
    _kill_after(_start(tmp_path, src, out, tmp_path / "first.log", False, "file",
                       hold=nchunks // 2), tmp_path / "first.log", nchunks // 2)
    assert not out.exists()
    log = tmp_path / "second.log"
    _finish(_start(tmp_path, src, out, log, True, "file"))
    assert len(_calls(log)) == nchunks  # nothing was journaled, so nothing is trusted
    np.testing.assert_array_equal(np.load(out), expected)


def test_a_journal_of_another_run_is_not_trusted(tmp_path: Path, clean_folder: Path) -> None:
    src = _source(tmp_path)
    out = tmp_path / "out.npy"
    first = tmp_path / "first.log"
    _kill_after(_start(tmp_path, src, out, first, True, "file", hold=6), first, 6)
    assert read_journal(journal_path(str(out))) is not None
    log = tmp_path / "second.log"
    # Another budget cuts other chunks: the old journal does not describe this run.
    _finish(_start(tmp_path, src, out, log, True, "file", budget="3MiB"))
    expected, nchunks = _clean_run(clean_folder, "file", "3MiB")
    assert len(_calls(log)) == nchunks  # every chunk of the new plan
    np.testing.assert_array_equal(np.load(out), expected)


def test_in_place_output_without_resume_is_marked_incomplete(tmp_path: Path) -> None:
    src = _source(tmp_path)
    out = tmp_path / "out.npy"
    _prepare(out, "inplace")
    first = tmp_path / "first.log"
    _kill_after(_start(tmp_path, src, out, first, False, "inplace", hold=4), first, 4)
    with pytest.raises(IncompleteOutputError, match="interrupted"):
        bigarr.check_complete(out)


def test_resume_in_place_over_an_input_is_refused(tmp_path: Path) -> None:
    x = bigarr.create(tmp_path / "x.npy", (1000,), np.float64, fill=1.0)
    with pytest.raises(ValueError, match="transformed twice"):
        bigarr.map_blocks(lambda b: b * 2, x, out=x, resume=True, progress=False)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.ones(1000))
    bigarr.map_blocks(lambda b: b * 2, x, out=x, progress=False)  # without resume: fine
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.full(1000, 2.0))


def test_journal_parsing_ignores_a_torn_last_record(tmp_path: Path) -> None:
    from bigarr._formats.journal import Journal

    out = str(tmp_path / "o.npy")
    header = {"kind": "file", "target": {"partial": "x", "id": None},
              "run": {"chunks": [[0, 1], [1, 2], [2, 3]]}}
    journal = Journal.create(out, header)
    journal.record([0, 2])
    journal.close()
    with open(journal_path(out), "a") as f:
        f.write("done 1")  # a crash in the middle of writing a record
    parsed = read_journal(journal_path(out))
    assert parsed is not None and set(parsed.done) == {0, 2} and not parsed.complete
    assert parsed.header == header
    again = Journal.create(out, header, parsed.done)  # carried over by a resumed run
    assert set(again.done) == {0, 2}
    again.complete()
    again.close()
    parsed = read_journal(journal_path(out))
    assert parsed is not None and set(parsed.done) == {0, 2} and parsed.complete
    with pytest.raises(IncompleteOutputError):
        bigarr.check_complete(out)  # a new-file run whose output was never published
    (tmp_path / "o.npy").write_bytes(b"")
    bigarr.check_complete(out)  # published, only the journal's removal was interrupted


def test_a_journal_of_a_run_with_other_broadcast_operands_is_not_trusted(tmp_path: Path) -> None:
    # Regression: broadcast operands were not part of the run's fingerprint, so resuming with
    # another scale factor kept the chunks journaled with the old one: a mixed output.
    x = np.arange(40_000, dtype=np.float64).reshape(10_000, 4)
    out = tmp_path / "o.npy"
    opts: dict[str, object] = {"out": out, "budget": "1MiB", "threads": 1, "resume": True,
                               "flush_every": 1, "progress": False}

    def scaled(block: np.ndarray, k: float) -> np.ndarray:
        if k == 2.0 and block[0, 0] >= 20_000:
            raise RuntimeError("crash half way")
        return block * k

    with pytest.raises(RuntimeError, match="half way"):
        bigarr.map_blocks(scaled, x, 2.0, **opts)  # type: ignore[arg-type]
    parsed = read_journal(journal_path(str(out)))
    assert parsed is not None and parsed[1]  # some chunks are journaled done
    with pytest.warns(bigarr.errors.StaleJournalWarning, match="another run") as caught, \
            bigarr.map_blocks(scaled, x, 3.0, **opts) as got:  # type: ignore[arg-type]
        np.testing.assert_array_equal(got, x * 3.0)
    assert caught[0].filename == __file__  # the warning names the caller's line
