"""Durable artifacts are tied to the right file and never clobber (issue 11, points 1-3).

* One writer per output: two runs of one ``map_blocks`` output, or two Appenders of one file,
  exclude each other (processes and threads), and a killed writer leaves no lock behind.
* Journals name their file's identity, the region written and the function: a journal of
  another file (re-created under the name), another region, another function, or a crafted
  one is never trusted for any field.
* Links planted at bigarr's hidden names are never followed.

Each test is a regression test: it fails on the code before the fix (the data assertions come
first where the old code lost or clobbered data).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr import errors
from bigarr._core import commitjournal as _commitjournal
from bigarr._core import private as _private
from bigarr._formats.journal import input_identity, journal_path, read_journal
from interrupt import Stop, stop_at

PAGE = bigarr.PAGE_SIZE
# A budget under the inputs' 320 KB, so that in-memory inputs are cut into several chunks.
OPTS: dict[str, Any] = {"budget": "256KiB", "threads": 1, "flush_every": 1, "progress": False}


class Switch:
    """A failure switch with a constant repr, so it does not change the function's token."""

    def __init__(self) -> None:
        self.on = True

    def __repr__(self) -> str:
        return "Switch"


def _stale(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if w.category.__name__ == "StaleJournalWarning"]


# ---- 1. one writer per output ------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import bigarr

    out, value, started, go = sys.argv[1:]

    def func(block):
        with open(started, "a") as fh:
            fh.write("x\\n")
        while value == "2" and not os.path.exists(go):  # the first run waits for the test
            time.sleep(0.005)
        return np.full_like(block, float(value))

    try:
        bigarr.map_blocks(func, np.zeros((20_000, 4)), out=out, budget="1MiB", threads=1,
                          progress=False).close()
        print("done")
    except Exception as e:
        print("refused", type(e).__name__, e)
""")


def test_two_processes_writing_one_output_exclude_each_other(tmp_path: Path) -> None:
    # Regression: both runs shared one fixed partial name; the second renamed the first's
    # half-written file into place and the first failed with a bare FileNotFoundError.
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    out, started, go = tmp_path / "o.npy", tmp_path / "started", tmp_path / "go"

    def start(value: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, str(script), str(out), value, str(started),
                                 str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    first = start("2")
    deadline = time.monotonic() + 60
    while not started.exists():  # the first run holds the output and is computing
        assert first.poll() is None, first.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    second_out, second_err = start("3").communicate(timeout=60)
    go.write_text("")
    first_out, first_err = first.communicate(timeout=60)
    assert first_out.strip() == "done", first_err
    np.testing.assert_array_equal(np.load(out), np.full((20_000, 4), 2.0))
    assert second_out.startswith("refused OutputLockedError"), second_out + second_err
    assert "Another run is writing" in second_out
    assert not list(tmp_path.glob(".o.npy.bigarr-*"))  # no hidden file left behind


def test_two_threads_writing_one_output_exclude_each_other(tmp_path: Path) -> None:
    out = tmp_path / "o.npy"
    entered, release = threading.Event(), threading.Event()
    results: list[Any] = []

    def slow(block: np.ndarray) -> np.ndarray:
        entered.set()
        release.wait(60)
        return block + 1

    def run() -> None:
        results.append(bigarr.map_blocks(slow, np.zeros((1000, 4)), out=out, progress=False))

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert entered.wait(60)
        with pytest.raises(errors.OutputLockedError, match="Another run") as info:
            bigarr.map_blocks(lambda b: b + 2, np.zeros((1000, 4)), out=out, progress=False)
        assert isinstance(info.value, BlockingIOError)
    finally:
        release.set()
        worker.join(60)
    results[0].close()
    np.testing.assert_array_equal(np.load(out), np.ones((1000, 4)))
    with bigarr.map_blocks(lambda b: b + 2, np.zeros((1000, 4)), out=out, overwrite=True,
                           progress=False) as again:  # the lock was released
        assert float(again[0, 0]) == 2.0


def test_in_place_runs_of_one_file_exclude_each_other(tmp_path: Path) -> None:
    target = bigarr.create(tmp_path / "o.npy", (1000, 4), np.float64)
    entered, release = threading.Event(), threading.Event()

    def slow(block: np.ndarray) -> np.ndarray:
        entered.set()
        release.wait(60)
        return block[:, :2] + 1

    worker = threading.Thread(target=lambda: bigarr.map_blocks(
        slow, np.zeros((1000, 4)), out=target[:, :2], progress=False))
    worker.start()
    try:
        assert entered.wait(60)
        with pytest.raises(errors.OutputLockedError):
            bigarr.map_blocks(lambda b: b[:, 2:] + 2, np.zeros((1000, 4)), out=target[:, 2:],
                              progress=False)
    finally:
        release.set()
        worker.join(60)
    target.close(force=True)


def test_appenders_of_one_file_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    with bigarr.Appender(path, np.int32, ()) as app:
        app.append(np.arange(3))
        with pytest.raises(errors.OutputLockedError):
            bigarr.Appender(path)
        with pytest.raises(errors.OutputLockedError):
            bigarr.append(path, np.arange(2))
    assert bigarr.append(path, np.arange(2)) == 5  # released at close
    assert not (tmp_path / ".a.npy.bigarr-lock").exists()  # and the lock file removed


def test_a_killed_writer_leaves_no_lock(tmp_path: Path,
                                        run_py: Callable[..., subprocess.CompletedProcess[str]]
                                        ) -> None:
    path = tmp_path / "a.npy"
    proc = run_py(f"""
        import os, signal, numpy as np, bigarr
        app = bigarr.Appender({str(path)!r}, np.int32, ())
        app.append(np.arange(3)); app.commit()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    assert proc.returncode == -signal.SIGKILL
    # an Appender locks the file itself, so nothing is left behind (it used to leave
    # .a.npy.bigarr-lock, which nothing removed unless another writer came)
    assert sorted(os.listdir(tmp_path)) == ["a.npy"]
    assert bigarr.append(path, np.arange(2)) == 5


def test_partial_names_are_unpredictable_and_found_through_the_journal(tmp_path: Path) -> None:
    x = np.arange(40_000, dtype=np.float64).reshape(10_000, 4)
    switch = Switch()

    def f(block: np.ndarray) -> np.ndarray:
        if switch.on and block[0, 0] >= 20_000:
            raise RuntimeError("crash half way")
        return block * 2

    names = []
    for i in range(2):
        out = tmp_path / f"o{i}.npy"
        with pytest.raises(RuntimeError):
            bigarr.map_blocks(f, x, out=out, resume=True, **OPTS)
        (partial,) = tmp_path.glob(f".o{i}.npy.bigarr-partial-*")
        parsed = read_journal(journal_path(str(out)))
        assert parsed is not None and parsed.header["target"]["partial"] == partial.name
        names.append(partial.name.rsplit("-", 1)[1])
    assert names[0] != names[1] and all(len(n) == 16 for n in names)
    switch.on = False
    with bigarr.map_blocks(f, x, out=tmp_path / "o0.npy", resume=True, **OPTS) as got:
        np.testing.assert_array_equal(got, x * 2)
    assert not list(tmp_path.glob(".o0.npy.bigarr-*"))


def test_a_failed_run_without_resume_leaves_no_hidden_file(tmp_path: Path) -> None:
    def f(block: np.ndarray) -> np.ndarray:
        if block[0, 0] >= 20_000:
            raise RuntimeError("boom")
        return block

    with pytest.raises(RuntimeError):
        bigarr.map_blocks(f, np.arange(40_000.0).reshape(10_000, 4), out=tmp_path / "o.npy",
                          **OPTS)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---- 2. journals name their file, region and function ------------------------------------------
def test_resume_with_another_function_starts_over(tmp_path: Path) -> None:
    # Regression: the function was not part of the fingerprint; the chunks journaled with
    # block * 2 were kept and the rest computed with block * 3.
    x = np.arange(40_000, dtype=np.float64).reshape(10_000, 4)
    out = tmp_path / "o.npy"

    def double(block: np.ndarray) -> np.ndarray:
        if block[0, 0] >= 20_000:
            raise RuntimeError("crash half way")
        return block * 2

    with pytest.raises(RuntimeError):
        bigarr.map_blocks(double, x, out=out, resume=True, **OPTS)
    parsed = read_journal(journal_path(str(out)))
    assert parsed is not None and parsed[1]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = bigarr.map_blocks(lambda b: b * 3, x, out=out, resume=True, **OPTS)
    np.testing.assert_array_equal(got, x * 3)
    got.close()
    assert any("another run" in m for m in _stale(caught))


def test_token_overrides_the_function_digest(tmp_path: Path) -> None:
    x = np.arange(40_000, dtype=np.float64).reshape(10_000, 4)
    out = tmp_path / "o.npy"

    def first(block: np.ndarray) -> np.ndarray:
        if block[0, 0] >= 20_000:
            raise RuntimeError("crash half way")
        return block * 2

    calls = []

    def second(block: np.ndarray, block_info: dict[str, Any]) -> np.ndarray:
        if not block_info["probe"]:  # the call that measures temporaries is not a chunk
            calls.append(int(block[0, 0]))
        return block * 2

    with pytest.raises(RuntimeError):
        bigarr.map_blocks(first, x, out=out, resume=True, token="v1", **OPTS)
    parsed = read_journal(journal_path(str(out)))
    assert parsed is not None
    done = len(parsed[1])
    with bigarr.map_blocks(second, x, out=out, resume=True, token="v1", **OPTS) as got:
        np.testing.assert_array_equal(got, x * 2)
    assert done > 0 and len(calls) == len(parsed.header["run"]["chunks"]) - done
    with pytest.raises(errors.ArgumentError):
        bigarr.map_blocks(second, x, out=tmp_path / "p.npy", token=3,  # type: ignore[arg-type]
                          progress=False)


def test_in_place_resume_does_not_adopt_another_regions_journal(tmp_path: Path) -> None:
    # Regression: the in-place fingerprint held the path, the view's shape and dtype, so a run
    # into out[:, 2:4] adopted the journal of a killed run into out[:, 0:2] and skipped chunks.
    x = np.arange(40_000, dtype=np.float64).reshape(10_000, 4)
    target = bigarr.create(tmp_path / "o.npy", (10_000, 4), np.float64)
    switch = Switch()

    def f(block: np.ndarray) -> np.ndarray:
        if switch.on and block[0, 0] >= 20_000:
            raise RuntimeError("crash half way")
        return block[:, :2] + 1

    with pytest.raises(RuntimeError):
        bigarr.map_blocks(f, x, out=target[:, 0:2], resume=True, **OPTS)
    switch.on = False
    with pytest.raises(errors.IncompleteOutputError, match="another region"):
        bigarr.map_blocks(f, x, out=target[:, 2:4], resume=True, **OPTS)
    assert not np.asarray(target[:, 2:4]).any()  # nothing written
    bigarr.map_blocks(f, x, out=target[:, 0:2], resume=True, **OPTS)  # finish the first
    bigarr.map_blocks(f, x, out=target[:, 2:4], resume=True, **OPTS)  # then the other is free
    expected = np.concatenate([x[:, :2] + 1, x[:, :2] + 1], axis=1)
    np.testing.assert_array_equal(target, expected)
    target.close(force=True)
    bigarr.check_complete(tmp_path / "o.npy")


def test_in_place_resume_into_a_recreated_file_recomputes(tmp_path: Path) -> None:
    # Regression: a journal named its file by path only, so a file deleted and created again
    # under the name (ext4 even reuses the inode number) had chunks skipped: zeros.
    x = np.arange(40_000, dtype=np.float64).reshape(10_000, 4)
    path = tmp_path / "o.npy"
    switch = Switch()

    def f(block: np.ndarray) -> np.ndarray:
        if switch.on and block[0, 0] >= 20_000:
            raise RuntimeError("crash half way")
        return block + 1

    target = bigarr.create(path, (10_000, 4), np.float64)
    with pytest.raises(RuntimeError):
        bigarr.map_blocks(f, x, out=target, resume=True, **OPTS)
    target.close(force=True)
    os.unlink(path)
    target = bigarr.create(path, (10_000, 4), np.float64)  # another file, same name and shape
    bigarr.check_complete(path)  # the old journal is not this file's
    switch.on = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bigarr.map_blocks(f, x, out=target, resume=True, **OPTS)
    np.testing.assert_array_equal(target, x + 1)
    target.close(force=True)
    assert any("another file" in m for m in _stale(caught))


def test_appender_resume_never_truncates_rows_the_journal_does_not_account_for(
        tmp_path: Path) -> None:
    # Regression: the Appender's resume read `base` from a journal whose fingerprint it had
    # rejected and truncated 1000 rows appended later by hand.
    path = tmp_path / "a.npy"
    bigarr.append(path, np.full((3, 4), -1.0, np.float32))
    x = np.arange(40_000, dtype=np.float32).reshape(10_000, 4)

    def keep(block: np.ndarray) -> np.ndarray:
        if block[0, 0] >= 20_000:
            raise RuntimeError("crash half way")
        return block[::2]

    with pytest.raises(RuntimeError), bigarr.Appender(path) as app:
        bigarr.map_blocks(keep, x, out=app, resume=True, **OPTS)
    bigarr.append(path, np.full((1000, 4), 7.0, np.float32))  # by hand, after the crash
    before = np.load(path)
    assert before.shape[0] > 1003

    # The same run again: the file grew beyond what the journal's commits could add.
    with pytest.raises((OSError, RuntimeError)) as info, bigarr.Appender(path) as app:
        bigarr.map_blocks(keep, x, out=app, resume=True, **OPTS)
    np.testing.assert_array_equal(np.load(path), before)  # nothing truncated
    assert isinstance(info.value, errors.FileChangedError)
    assert "added or removed" in str(info.value)

    # Another run: the journal is not trusted for anything, so nothing is truncated.
    with warnings.catch_warnings(record=True) as caught, bigarr.Appender(path) as app:
        warnings.simplefilter("always")
        bigarr.map_blocks(lambda b: b[:1], x, out=app, resume=True, **OPTS)
    got = np.load(path)
    np.testing.assert_array_equal(got[: len(before)], before)
    assert len(got) > len(before)
    assert _stale(caught)


def test_appender_resume_rolls_back_only_its_own_rows(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    bigarr.append(path, np.full((3, 4), -1.0, np.float32))
    x = np.arange(40_000, dtype=np.float32).reshape(10_000, 4)
    switch = Switch()

    def keep(block: np.ndarray) -> np.ndarray:
        if switch.on and block[0, 0] >= 20_000:
            raise RuntimeError("crash half way")
        return block[::2]

    with pytest.raises(RuntimeError), bigarr.Appender(path) as app:
        bigarr.map_blocks(keep, x, out=app, resume=True, **OPTS)
    switch.on = False
    with bigarr.Appender(path) as app:
        bigarr.map_blocks(keep, x, out=app, resume=True, **OPTS)
    np.testing.assert_array_equal(np.load(path), np.concatenate(
        [np.full((3, 4), -1.0, np.float32), x[::2]]))


_CRASH_AFTER_JOURNAL = """
    import os, bigarr
    from bigarr._core import commitjournal as _commitjournal
    from bigarr._core import dirtypages as _dirtypages
    from bigarr._core import private as _private
    def crash(fd, m, runs):
        os._exit(9)  # the journal is durable; the file has none of the commit yet
    _commitjournal.write_runs = crash
    a = bigarr.open({path!r}, "private")
    a[0] = 1; a[{far}] = 2
    a.commit(journal=True)
"""


def _on_disk(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8)[PAGE:]


def test_a_commit_journal_is_not_replayed_into_a_recreated_file(
        tmp_path: Path, run_py: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    # Regression: the journal named its file by path only; after the file was re-created the
    # next ordinary commit replayed the old journal into the new file.
    path = tmp_path / "j.npy"
    bigarr.create(path, (PAGE * 20,), np.uint8).close()
    res = run_py(_CRASH_AFTER_JOURNAL.format(path=str(path), far=PAGE * 10))
    assert res.returncode == 9, res.stderr
    assert os.path.exists(_private.journal_path(str(path)))
    os.unlink(path)
    bigarr.create(path, (PAGE * 20,), np.uint8, fill=5).close()  # another file, same name
    arr = bigarr.open(path, "private")
    arr[PAGE * 15] = 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arr.commit()
    arr.close()
    disk = _on_disk(path)
    assert (int(disk[0]), int(disk[PAGE * 10]), int(disk[PAGE * 15])) == (5, 5, 3)
    assert any("another file" in m for m in _stale(caught))
    assert not os.path.lexists(_private.journal_path(str(path)))


def test_a_crafted_commit_journal_with_a_valid_checksum_writes_nothing(tmp_path: Path) -> None:
    # Regression: a crafted journal of the old format with a matching (unkeyed) BLAKE2b
    # checksum overwrote the .npy header and grew the file (to 1 TiB in the report).
    import hashlib
    import struct

    path = tmp_path / "c.npy"
    bigarr.create(path, (PAGE,), np.uint8, fill=1).close()
    original = path.read_bytes()
    body = b"bigarr-commit-journal 1\n"
    for offset, data in ((0, b"\x93NUMPY garbage header"), (1 << 33, b"far away")):
        body += struct.pack("<QQ", offset, len(data)) + data
    digest = hashlib.blake2b(body, digest_size=16).digest()
    Path(_private.journal_path(str(path))).write_bytes(body + b"END!" + digest)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        outcome = bigarr.recover_commit(path)
    assert path.read_bytes() == original  # neither the header nor the size changed
    assert outcome == "rejected" and _stale(caught)


def _craft_v2(path: Path, header: dict[str, Any], records: list[tuple[int, bytes]]) -> None:
    import hashlib
    import struct

    head = json.dumps(header).encode()
    body = b"bigarr-commit-journal 2\n" + struct.pack("<I", len(head)) + head
    for offset, data in records:
        body += struct.pack("<QQ", offset, len(data)) + data
    digest = hashlib.blake2b(body, digest_size=16).digest()
    Path(_private.journal_path(str(path))).write_bytes(body + b"END!" + digest)


@pytest.mark.parametrize("case", ["header record", "far record", "data section lie"])
def test_a_crafted_journal_naming_the_file_still_cannot_write_outside_its_data(
        tmp_path: Path, case: str) -> None:
    path = tmp_path / "c.npy"
    bigarr.create(path, (PAGE,), np.uint8, fill=1).close()
    original = path.read_bytes()
    fd = os.open(path, os.O_RDONLY)
    try:
        honest = _commitjournal._identity(fd, PAGE, 2 * PAGE)  # the file's true identity
        lie = _commitjournal._identity(fd, 0, 2 * PAGE)
    finally:
        os.close(fd)
    header, records = {
        "header record": (honest, [(0, b"\x93NUMPY overwritten")]),
        "far record": (honest, [(1 << 33, b"x")]),
        "data section lie": (lie, [(0, b"\x93NUMPY overwritten")]),
    }[case]
    _craft_v2(path, header, records)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert bigarr.recover_commit(path) == "rejected"
    assert path.read_bytes() == original
    assert _stale(caught)
    _craft_v2(path, honest, [(PAGE + 10, b"\x07")])  # the same journal, honest: replayed
    assert bigarr.recover_commit(path) == "replayed"
    assert path.read_bytes()[PAGE + 10] == 7


def test_a_crafted_resume_journal_cannot_name_a_file_outside_the_output(tmp_path: Path) -> None:
    victim = tmp_path / "victim.npy"
    np.save(victim, np.arange(10.0))
    original = victim.read_bytes()
    out = tmp_path / "o.npy"
    Path(journal_path(str(out))).write_text(
        'bigarr-journal 2 {"kind": "file", "target": {"partial": "victim.npy", "id": null}, '
        '"run": {}}\ndone 0\n')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = bigarr.map_blocks(lambda b: b + 1, np.zeros((100, 2)), out=out, resume=True,
                                progress=False)
    np.testing.assert_array_equal(got, np.ones((100, 2)))
    got.close()
    assert victim.read_bytes() == original
    assert _stale(caught)


# ---- 3. links planted at bigarr's names are never followed -------------------------------------
def _plant(link: Path, target: Path) -> None:
    os.symlink(target, link)


@pytest.mark.parametrize("kind", ["file", "in-place", "append"])
@pytest.mark.parametrize("where", ["victim", "dangling", "fifo"])
def test_map_blocks_resume_never_writes_through_planted_links(tmp_path: Path, kind: str,
                                                              where: str) -> None:
    # Regression: the journal's temporary name (and the partial's) were opened with
    # O_CREAT|O_TRUNC at a fixed name, so a planted link there overwrote its target or created
    # a file at a dangling link's target.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dangling = tmp_path / "nowhere.txt"
    aim = victim if where == "victim" else dangling
    out = tmp_path / "o.npy"
    if kind == "in-place":
        bigarr.create(out, (1000, 3), np.float64).close()
    elif kind == "append":
        bigarr.append(out, np.zeros((2, 3)))
    for name in (journal_path(str(out)), journal_path(str(out)) + ".tmp",  # the old fixed names
                 str(tmp_path / ".o.npy.bigarr-partial")):
        _plant(Path(name), aim)
    if where == "fifo":  # a FIFO at the journal's name: reading it must not block
        os.unlink(journal_path(str(out)))
        os.mkfifo(journal_path(str(out)))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        if kind == "file":
            bigarr.map_blocks(lambda b: b * 2, np.ones((1000, 3)), out=out, resume=True,
                              **OPTS).close()
        elif kind == "in-place":
            with bigarr.open(out, "shared") as target:
                bigarr.map_blocks(lambda b: b * 2, np.ones((1000, 3)), out=target,
                                  resume=True, **OPTS)
        else:
            with bigarr.Appender(out) as app:
                bigarr.map_blocks(lambda b: b * 2, np.ones((1000, 3)), out=app, resume=True,
                                  **OPTS)
    assert victim.read_text() == "precious"
    assert not dangling.exists()
    got = np.load(out)
    np.testing.assert_array_equal(got[-1000:], np.full((1000, 3), 2.0))
    assert not os.path.lexists(journal_path(str(out)))  # the link was replaced, then removed


def test_in_place_run_replaces_a_planted_journal_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = bigarr.create(tmp_path / "o.npy", (1000, 3), np.float64)
    _plant(Path(journal_path(str(tmp_path / "o.npy"))), victim)
    bigarr.check_complete(tmp_path / "o.npy")  # a link is not a journal bigarr wrote
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        bigarr.map_blocks(lambda b: b + 1, np.ones((1000, 3)), out=target, resume=True, **OPTS)
    assert victim.read_text() == "precious"
    np.testing.assert_array_equal(target, np.full((1000, 3), 2.0))
    target.close()


@pytest.mark.parametrize("where", ["victim", "dangling", "fifo"])
def test_journaled_commit_never_writes_through_a_planted_link(tmp_path: Path, where: str) -> None:
    # Regression: the commit journal was opened with O_CREAT|O_TRUNC at its fixed name: a link
    # there overwrote its target, or created a file at a dangling link's target.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dangling = tmp_path / "nowhere.txt"
    path = tmp_path / "p.npy"
    bigarr.create(path, (PAGE * 4,), np.uint8).close()
    if where == "fifo":
        os.mkfifo(_private.journal_path(str(path)))  # reading it must not block the commit
    else:
        _plant(Path(_private.journal_path(str(path))), victim if where == "victim" else dangling)
    arr = bigarr.open(path, "private")
    arr[PAGE] = 9
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert arr.commit(journal=True) > 0
    arr.close()
    assert victim.read_text() == "precious"
    assert not dangling.exists()
    assert int(_on_disk(path)[PAGE]) == 9
    assert not os.path.lexists(_private.journal_path(str(path)))


@pytest.mark.parametrize("kind", ["symlink", "dangling", "hardlink", "fifo"])
def test_a_planted_lock_name_is_refused_and_never_touched(tmp_path: Path, kind: str) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = tmp_path / ".o.npy.bigarr-lock"
    if kind == "hardlink":
        os.link(victim, lock)
    elif kind == "fifo":
        os.mkfifo(lock)  # opening it for reading must not block
    else:
        _plant(lock, victim if kind == "symlink" else tmp_path / "nowhere.txt")
    with pytest.raises(errors.FileExistsError_, match="lock"):
        bigarr.map_blocks(lambda b: b, np.ones((10, 2)), out=tmp_path / "o.npy", progress=False)
    with pytest.raises(errors.FileExistsError_, match="lock"):
        bigarr.Appender(tmp_path / "o.npy", np.int32, ())
    assert victim.read_text() == "precious"
    assert not (tmp_path / "nowhere.txt").exists()
    assert not (tmp_path / "o.npy").exists()


def test_create_never_writes_through_a_link_at_its_target(tmp_path: Path) -> None:
    # A link at the target is refused with or without overwrite (bigarr._os.paths.check_output:
    # overwrite replaces only a regular file); neither the link nor what it names is touched.
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    dangling = tmp_path / "nowhere.npy"
    _plant(tmp_path / "a.npy", victim)
    _plant(tmp_path / "b.npy", dangling)
    with pytest.raises(errors.NotAFileError):
        bigarr.create(tmp_path / "b.npy", (4,), np.int8)
    with pytest.raises(errors.NotAFileError):
        bigarr.create(tmp_path / "a.npy", (4,), np.int8, overwrite=True)
    assert victim.read_text() == "precious"
    assert os.readlink(tmp_path / "a.npy") == str(victim)
    assert not dangling.exists()


# ---- journals are born complete ------------------------------------------------------------------
def test_a_crash_while_the_commit_journal_is_written_leaves_nothing(
        tmp_path: Path, run_py: Callable[..., subprocess.CompletedProcess[str]]) -> None:
    path = tmp_path / "k.npy"
    bigarr.create(path, (PAGE * 8,), np.uint8).close()
    res = run_py(f"""
        import os, bigarr
        from bigarr._core import commitjournal as _commitjournal
        from bigarr._core import dirtypages as _dirtypages
        from bigarr._core import private as _private
        real, seen = _commitjournal._write_all, []
        def dying(fd, data, *paced):
            seen.append(1)
            if len(seen) > 3:
                os._exit(9)  # half of the journal is written
            real(fd, data, *paced)
        _commitjournal._write_all = dying
        a = bigarr.open({str(path)!r}, "private")
        a[0] = 1; a[PAGE * 4] = 2
        a.commit(journal=True)
    """.replace("PAGE", str(PAGE)))
    assert res.returncode == 9, res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.npy"]  # no journal, no temporary
    assert not np.load(path).any()
    assert bigarr.recover_commit(path) is None


@pytest.mark.parametrize("missing", ["O_TMPFILE", "linkat"])
def test_journals_without_unnamed_files_still_work(tmp_path: Path, missing: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from bigarr._os import fileid as _fileid

    if missing == "O_TMPFILE":
        monkeypatch.setattr(_fileid, "_TMPFILE", 0)  # as on a system without O_TMPFILE
    else:
        def refuse(*args: Any, **kwargs: Any) -> None:
            raise OSError(errno.EPERM, "linkat refused")  # as in some sandboxes

        monkeypatch.setattr(_fileid.os, "link", refuse)
    path = tmp_path / "p.npy"
    bigarr.create(path, (PAGE * 4,), np.uint8).close()
    arr = bigarr.open(path, "private")
    arr[PAGE] = 4
    assert arr.commit(journal=True) > 0
    arr.close()
    assert int(_on_disk(path)[PAGE]) == 4
    x = np.arange(40_000, dtype=np.float64).reshape(10_000, 4)

    def f(block: np.ndarray) -> np.ndarray:
        if block[0, 0] >= 20_000:
            raise RuntimeError("crash half way")
        return block + 1

    with pytest.raises(RuntimeError):
        bigarr.map_blocks(f, x, out=tmp_path / "o.npy", resume=True, **OPTS)
    assert read_journal(journal_path(str(tmp_path / "o.npy"))) is not None
    assert not list(tmp_path.glob("*bigarr-new-*"))  # every temporary was renamed into place


def test_an_appender_dropped_without_close_releases_its_lock(tmp_path: Path) -> None:
    import gc

    path = tmp_path / "a.npy"
    app = bigarr.Appender(path, np.int32, ())
    app.append(np.arange(3))
    app.commit()
    del app
    gc.collect()
    assert bigarr.append(path, np.arange(2)) == 5


# ---- the function's identity ---------------------------------------------------------------------
_TOKEN_SCRIPT = """
    import functools, numpy as np
    from bigarr._compute.token import function_token
    K = 2
    SCALE = np.arange(4.0)
    def helper(b):
        return b * K
    def f(b, offset=1):
        return helper(b) * SCALE + offset
    def make(n):
        return lambda b: b + n
    print(function_token(f), function_token(make(2)), function_token(functools.partial(f, 1)),
          function_token(np.sqrt))
"""

K = 2


def _helper(b: np.ndarray) -> np.ndarray:
    return b * K


def _uses_helper(b: np.ndarray) -> np.ndarray:
    return _helper(b) + 1


def test_function_tokens_are_stable_across_processes_and_see_what_changes(
        run_py: Callable[..., subprocess.CompletedProcess[str]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from bigarr._compute.token import function_token

    runs = [run_py(_TOKEN_SCRIPT) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    assert runs[0].stdout.split() == runs[1].stdout.split()  # another process, same tokens
    assert len(set(runs[0].stdout.split())) == 4

    before = function_token(_uses_helper)
    monkeypatch.setattr(sys.modules[__name__], "K", 3)  # a global the helper reads changed
    assert function_token(_uses_helper) != before
    assert function_token(lambda b: b + 1) != function_token(lambda b: b + 2)

    def closing(n: int) -> Callable[[np.ndarray], np.ndarray]:
        return lambda b: b + n

    assert function_token(closing(1)) != function_token(closing(2))
    assert function_token(closing(1)) == function_token(closing(1))


_MALFORMED = [
    b"",
    b"\xff\xfe not utf-8\n",
    b"bigarr-journal 2 [1, 2]\ndone 0\n",
    b'bigarr-journal 2 {"kind": "append", "target": 5, "run": 7}\ndone 0 999999\n',
    b'bigarr-journal 2 {"kind": "in-place", "target": {"id": [1, 2, 3]}}\ndone 0\n',
    b'bigarr-journal 2 {"kind": "file", "target": {"partial": "../x", "id": "no"}}\ndone 0\n',
    b'bigarr-journal 1 {"chunks": [[0, 10]]}\ndone 0\ndone 1 -5\ndone \xd9\xa3\ncomplete\n',
]


@pytest.mark.parametrize("kind", ["file", "in-place", "append"])
@pytest.mark.parametrize("text", _MALFORMED, ids=range(len(_MALFORMED)))
def test_malformed_resume_journals_give_bigarr_errors_or_correct_results(
        tmp_path: Path, kind: str, text: bytes) -> None:
    x = np.arange(400, dtype=np.float32).reshape(100, 4)
    path = tmp_path / "o.npy"
    if kind == "in-place":
        bigarr.create(path, (100, 4), np.float32).close()
    elif kind == "append":
        bigarr.append(path, np.full((3, 4), -1.0, np.float32))
    Path(journal_path(str(path))).write_bytes(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            if kind == "file":
                bigarr.map_blocks(lambda b: b + 1, x, out=path, resume=True,
                                  progress=False).close()
            elif kind == "in-place":
                with bigarr.open(path, "shared") as target:
                    bigarr.map_blocks(lambda b: b + 1, x, out=target, resume=True,
                                      progress=False)
            else:
                with bigarr.Appender(path) as app:
                    bigarr.map_blocks(lambda b: b + 1, x, out=app, resume=True,
                                      progress=False)
        except errors.BigArrError:
            assert kind == "in-place"  # only an in-place run refuses an unverifiable journal
            np.testing.assert_array_equal(np.load(path), np.zeros((100, 4), np.float32))
            return
    expected = x + 1
    if kind == "append":
        expected = np.concatenate([np.full((3, 4), -1.0, np.float32), x + 1])
    np.testing.assert_array_equal(np.load(path), expected)
    assert not os.path.lexists(journal_path(str(path)))


def test_a_link_swapped_in_for_the_partial_is_never_opened(tmp_path: Path) -> None:
    x = np.arange(40_000, dtype=np.float64).reshape(10_000, 4)
    out = tmp_path / "o.npy"
    switch = Switch()

    def f(block: np.ndarray) -> np.ndarray:
        if switch.on and block[0, 0] >= 20_000:
            raise RuntimeError("crash half way")
        return block * 2

    with pytest.raises(RuntimeError):
        bigarr.map_blocks(f, x, out=out, resume=True, **OPTS)
    (partial,) = tmp_path.glob(".o.npy.bigarr-partial-*")
    victim = tmp_path / "victim.npy"
    np.save(victim, np.full((10_000, 4), 5.0))
    original = victim.read_bytes()
    partial.unlink()
    partial.symlink_to(victim)  # someone who read the journal swaps a link in
    switch.on = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = bigarr.map_blocks(f, x, out=out, resume=True, **OPTS)
    np.testing.assert_array_equal(got, x * 2)  # recomputed, nothing taken from the victim
    got.close()
    assert victim.read_bytes() == original
    assert _stale(caught)


def test_a_recovery_never_runs_beside_another_process_s_commit(tmp_path: Path) -> None:
    # Regression: recover_commit (or any commit, which recovers first) in another process took
    # a live commit's complete journal for an interrupted one, replayed and unlinked it; the
    # committing process then failed on its own unlink.
    path = tmp_path / "c.npy"
    bigarr.create(path, (PAGE * 8,), np.uint8).close()
    ready, go = tmp_path / "ready", tmp_path / "go"
    script = tmp_path / "committer.py"
    script.write_text(textwrap.dedent(f"""
        import os, time, bigarr
        from bigarr._core import commitjournal as _commitjournal
        from bigarr._core import dirtypages as _dirtypages
        from bigarr._core import private as _private
        real = _commitjournal.write_runs
        def slow(fd, m, runs):
            open({str(ready)!r}, "w").close()  # the journal is durable now
            while not os.path.exists({str(go)!r}):
                time.sleep(0.005)
            return real(fd, m, runs)
        _commitjournal.write_runs = slow
        a = bigarr.open({str(path)!r}, "private")
        a[0] = 1; a[{PAGE * 4}] = 2
        a.commit(journal=True)
        print("committed")
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.005)
    outcome: list[str | None] = []
    recovery = threading.Thread(target=lambda: outcome.append(bigarr.recover_commit(path)))
    recovery.start()
    recovery.join(0.5)  # (old code: replays and unlinks the live journal meanwhile)
    go.write_text("")  # the recovery waits for the commit's lock until here
    out, err = proc.communicate(timeout=60)
    recovery.join(60)
    assert proc.returncode == 0 and out.strip() == "committed", err
    assert outcome == [None]  # the commit finished and removed its journal first
    disk = np.fromfile(path, dtype=np.uint8)[PAGE:]
    assert (int(disk[0]), int(disk[PAGE * 4])) == (1, 2)


def test_output_locks_exclude_under_racing_acquire_and_release(tmp_path: Path) -> None:
    # The holder unlinks the lock file on release; a writer that opened the old file must
    # notice and take the new one, so that two writers never hold the lock at once.
    from bigarr._os.lock import OutputLock

    target = str(tmp_path / "o.npy")
    inside, worst, held = [0], [0], [0]
    failures: list[BaseException] = []
    guard = threading.Lock()

    def writer() -> None:
        for _ in range(200):
            try:
                lock = OutputLock(target)
            except errors.OutputLockedError:
                continue
            except BaseException as exc:  # any other error fails the test
                failures.append(exc)
                return
            with guard:
                inside[0] += 1
                worst[0] = max(worst[0], inside[0])
                held[0] += 1
            with guard:
                inside[0] -= 1
            lock.release()

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert failures == []
    assert worst[0] == 1 and held[0] > 0
    assert not os.path.lexists(tmp_path / ".o.npy.bigarr-lock")


def test_a_lock_won_on_a_file_its_holder_just_unlinked_is_taken_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fcntl

    from bigarr._os import lock as _lock

    target = str(tmp_path / "o.npy")
    first = _lock.OutputLock(target)
    real = fcntl.flock

    def release_first_then_lock(fd: int, op: int) -> None:
        if first.held:
            first.release()  # the holder finishes between our open and our flock
        real(fd, op)

    monkeypatch.setattr(_lock.fcntl, "flock", release_first_then_lock)
    second = _lock.OutputLock(target)  # locked the unlinked file first: must notice, retry
    monkeypatch.setattr(_lock.fcntl, "flock", real)
    with pytest.raises(errors.OutputLockedError):
        _lock.OutputLock(target)  # so a third writer finds the lock held
    second.release()


@pytest.fixture
def sealed(tmp_path: Path) -> Any:
    """A folder holding ``a.npy`` that refuses new entries (chmod, or chattr +i as root)."""
    folder = tmp_path / "sealed"
    folder.mkdir()
    bigarr.create(folder / "a.npy", (PAGE * 4,), np.uint8).close()
    folder.chmod(0o500)
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:  # root ignores mode bits; an immutable directory refuses new entries even to root
        locked = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if locked.returncode != 0:
            folder.chmod(0o700)
            pytest.skip("running as root on a file system without chattr +i")
    try:
        yield folder
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(folder)], check=False)
        folder.chmod(0o700)


def test_a_folder_that_refuses_new_files_gives_bigarr_errors(sealed: Path) -> None:
    path = sealed / "a.npy"
    arr = bigarr.open(path, "private")
    arr[PAGE] = 3
    with pytest.raises(errors.ReadOnlyError, match="journal"):
        arr.commit(journal=True)
    assert not np.load(path).any()  # nothing was written
    assert arr.commit() > 0  # without a journal it needs no new file
    arr.close()
    assert int(np.load(path)[PAGE]) == 3
    with bigarr.Appender(path) as app:  # no lock file can be made: the file itself is locked
        app.append(np.ones(3, np.uint8))
        with pytest.raises(errors.OutputLockedError):
            bigarr.Appender(path)
    assert np.load(path).shape == (PAGE * 4 + 3,)
    with bigarr.open(path, "shared") as target, pytest.raises(errors.ReadOnlyError,
                                                              match="journal"):
        bigarr.map_blocks(lambda b: b + 1, np.zeros(PAGE * 4 + 3, np.uint8), out=target,
                          progress=False)


def test_input_identity_tells_a_renamed_in_file_with_same_size_and_mtime(tmp_path: Path) -> None:
    # regression: path, size and mtime alone named a replaced input the same, so map_blocks and
    # sort resumed with the old file's results
    src = tmp_path / "x.npy"
    np.save(src, np.arange(1000.0))
    before = input_identity(str(src))
    st = src.stat()
    np.save(tmp_path / "y.npy", -np.arange(1000.0))
    os.replace(tmp_path / "y.npy", src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert before[:3] == input_identity(str(src))[:3]  # the old identity could not tell them
    assert before != input_identity(str(src))
    assert input_identity(str(src)) == input_identity(str(src))


def test_map_blocks_resume_refuses_a_renamed_in_input_with_same_size_and_mtime(
        tmp_path: Path) -> None:
    src, out = tmp_path / "x.npy", tmp_path / "y.npy"
    np.save(src, np.arange(200_000.0))

    with pytest.raises(Stop):
        bigarr.map_blocks(lambda b: b * 2, src, out=out, budget="1MiB", threads=1,
                          resume=True, progress=stop_at(4))
    st = src.stat()
    new = np.random.default_rng(0).random(200_000)
    np.save(tmp_path / "z.npy", new)
    os.replace(tmp_path / "z.npy", src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.warns(errors.StaleJournalWarning):
        got = bigarr.map_blocks(lambda b: b * 2, src, out=out, budget="1MiB", threads=1,
                                resume=True, progress=False)
    with got:
        np.testing.assert_array_equal(got, new * 2)


@pytest.mark.parametrize("where", ["create", "record"])
def test_a_full_disk_under_the_journal_is_a_disk_full_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
    """Regression: ENOSPC writing a journal (map_blocks to a nearly full disk) was a bare
    OSError, not bigarr's DiskFullError."""
    from bigarr._formats import journal as journal_mod

    def full(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    out = str(tmp_path / "o.npy")
    if where == "record":
        j = journal_mod.Journal.create(out, {"kind": "file"})
    monkeypatch.setattr(journal_mod, "_write", full)
    with pytest.raises(bigarr.errors.DiskFullError):
        if where == "create":
            journal_mod.Journal.create(out, {"kind": "file"})
        else:
            j.record([0])
    if where == "record":
        j.close()
    assert not [n for n in os.listdir(tmp_path) if "bigarr-new" in n]
