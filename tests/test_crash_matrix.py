"""The crash matrix: kill -9 every durable operation at many points, then check its invariant.

``tests/crash_runner.py`` does the work in one subprocess (it forks a child per kill point, see
its docstring); this module runs it once and turns each (operation, invariant) pair into a test.

* By default a bounded matrix runs: a few named syscall boundaries per operation, one seeded
  random boundary and one seeded random delay (well under 30 s).
* ``BIGARR_CRASH_FULL=1`` runs the full matrix: a kill before every hooked call, a torn write at
  every write that spans a page boundary, and 20 random delays per operation; the counts are
  printed (run with ``-s``). ``BIGARR_CRASH_SEED`` changes the seed (default 11).

Pairs that fail are listed in ``KNOWN`` and marked ``xfail(strict=True)`` with the defect named
(none today); a fixed defect then fails as XPASS until its entry is removed.

What is checked after each kill (``crash_runner.py`` has the code; "rerun" is what a user would
run next, and its success is checked too):

* ``create``: the path is absent or a complete file; no hidden file is left after a rerun.
* ``map_blocks`` to a new file, without and with ``resume`` (one thread, two threads, and a
  resume that is itself killed): the output is absent or complete, never partial under its
  name; the rerun's file equals a clean run's byte for byte; a resume recomputes exactly the
  chunks its journal lacks; nothing hidden is left behind (except, when the kill came after
  the output was published and so nothing reruns it, the writer's empty, unheld lock file,
  which the next writer of that output removes).
* ``map_blocks`` in place (with and without ``resume``): the file is all-old, all-new, or
  flagged by ``check_complete``; the rerun equals a clean run; its journal is gone.
* ``map_blocks`` into an ``Appender`` with ``resume``: the file is a prefix of the result; the
  resumed run equals a clean run.
* ``Appender`` (bigarr's and numpy's headers): the file loads (numpy and bigarr agree) and
  holds exactly the first ``m`` rows appended, in order, with ``m`` at least the last commit
  that returned; a new Appender then grows it.
* private ``commit`` without a journal: the file holds a prefix, in file order, of the
  committed page runs, each page whole (a torn write splits only at page boundaries); the
  edits after that prefix are lost with the process. This is what holds, and it is checked.
* ``commit(journal=True)``, and ``recover_commit`` itself killed: after ``recover_commit`` the
  file is all-old or all-new (all-new once the journal was complete); a later commit lands.
* ``to_zarr``: the array is absent, complete, or refused by ``from_zarr``.
* ``from_zarr``: the ``.npy`` is absent or complete; nothing hidden is left after a rerun.
* ``bigarr convert`` (npy->npy, npy->zarr, zarr->npy): the target is absent or complete; a
  partial output is never accepted by a further ``convert``; rerunning the same command
  (``--overwrite`` only if the target exists) succeeds and leaves nothing hidden behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

import crash_runner

RUNNER = Path(__file__).with_name("crash_runner.py")
FULL = os.environ.get("BIGARR_CRASH_FULL") == "1"
SEED = int(os.environ.get("BIGARR_CRASH_SEED", "11"))

KNOWN: dict[tuple[str, str], str] = {
}


def _scratch_dir() -> str | None:
    """tmpfs when there is one: fsync costs nothing there, and a kill -9 (not a power loss) sees
    the same page cache on any file system."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


@pytest.fixture(scope="module")
def matrix() -> dict[str, Any]:
    args = [sys.executable, str(RUNNER), "--seed", str(SEED)]
    if FULL:
        args.append("--full")
    base = os.environ.get("BIGARR_CRASH_DIR") or _scratch_dir() or tempfile.gettempdir()
    args += ["--dir", base]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=7200 if FULL else 600,
                          env=dict(os.environ, OPENBLAS_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-5000:]
    summary: dict[str, Any] = json.loads(proc.stdout)
    if FULL:
        print("\n" + crash_runner.table(summary))
        print(f"reproduce: BIGARR_CRASH_SEED={SEED} python tests/crash_runner.py --full --table")
    return summary


PAIRS = [(op.name, inv) for op in crash_runner.OPS.values() for inv in op.invariants]


def test_every_operation_is_killed_and_a_clean_run_passes_its_checks(
    matrix: dict[str, Any],
) -> None:
    assert set(matrix["ops"]) == set(crash_runner.OPS)
    for name, op in matrix["ops"].items():
        assert op["calls"] > 0, name  # the hooks saw the operation's syscalls
        failed = {inv: why for inv, why in op["clean_run"].items() if (name, inv) not in KNOWN}
        assert failed == {}, (name, failed)  # the checks can pass (known defects: xfail below)
        assert op["killed"] >= 1, name
        assert op["op_errors"] == [], (name, op["op_errors"])


@pytest.mark.parametrize(
    ("op", "invariant"),
    [pytest.param(op, inv, id=f"{op}-{inv}",
                  marks=[pytest.mark.xfail(strict=True, reason=KNOWN[(op, inv)])]
                  if (op, inv) in KNOWN else [])
     for op, inv in PAIRS],
)
def test_invariant_holds_after_every_kill(matrix: dict[str, Any], op: str, invariant: str) -> None:
    entry = matrix["ops"][op]["invariants"][invariant]
    assert entry["runs"] > 0
    assert entry["violated"] == 0, (
        f"{op}: {invariant} violated in {entry['violated']} of {entry['runs']} kill runs; "
        f"examples (kill point, what was wrong): {entry['examples']}"
    )


def test_the_hooks_see_every_kind_of_durable_step(matrix: dict[str, Any]) -> None:
    # The harness itself: os-level calls and the msync/sync_file_range bigarr makes via ctypes.
    create = matrix["ops"]["create"]["per_name"]
    assert {"open", "pwrite", "posix_fallocate", "fsync", "link", "unlink"} <= set(create)
    map_blocks = set(matrix["ops"]["map_blocks"]["per_name"])
    assert "msync" in map_blocks and {"link", "replace"} & map_blocks
    # (a new file's map_blocks writes every page with O_DIRECT, pages shared by two chunks
    # too, so it may call no sync_file_range; writes through a mapping do)
    every = set().union(*(set(op["per_name"]) for op in matrix["ops"].values()))
    assert "sync_file_range" in every
    assert {"write", "fdatasync"} <= set(matrix["ops"]["map_blocks_resume"]["per_name"])
    assert "mkdir" in matrix["ops"]["to_zarr"]["per_name"]


def test_a_kill_at_a_named_call_is_exact(tmp_path: Path) -> None:
    # Killed just before create() links its finished unnamed file into place (link#1 is the
    # probe that linkat works here): the process dies by SIGKILL there, the target is absent
    # or complete, and the rerun leaves nothing hidden.
    proc = subprocess.run([sys.executable, str(RUNNER), "--ops", "create", "--spec",
                           "before:link#2", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["killed"] and "op_error" not in result
    assert result["violations"] == {}
