"""A mapped array against an in-memory numpy model, across write / flush / close / reopen.

In private mode the machine also commits and discards scratch edits (whole array or row
regions, with and without a journal), interrupts journaled commits after their journal is
durable (as a crash would), recovers them, and re-creates the file under the same name while a
journal is pending, which must then never be replayed into the new file.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import bigarr
from bigarr._core import commitjournal as _commitjournal
from bigarr._core import private as _private

ROWS, COLS = 37, 300  # 1200-byte rows: regions end inside pages, pages hold parts of rows


class Interrupted(BaseException):
    """Raised in place of a commit's page writes: the journal is durable, the file untouched."""


class MappedVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "m.npy"
        self.model = np.zeros((ROWS, COLS), dtype=np.int32)   # what the file should hold
        self.scratch: np.ndarray[Any, Any] | None = None       # what a private mapping shows
        self.arr = bigarr.create(self.path, (ROWS, COLS), np.int32)
        self.mode = "shared"
        self.pending: tuple[slice, np.ndarray[Any, Any]] | None = None  # an interrupted commit
        self.stale = False  # a journal that belongs to a file no longer at the path

    def teardown(self) -> None:
        self.arr.close(force=True)
        self.dir.cleanup()

    @rule(start=st.integers(0, ROWS), length=st.integers(0, ROWS), value=st.integers(-9, 9))
    def write_rows(self, start: int, length: int, value: int) -> None:
        if self.mode == "r":
            return
        self.arr[start : start + length] = value
        target = self.model if self.mode == "shared" else self.scratch
        assert target is not None
        target[start : start + length] = value

    @rule(row=st.integers(0, ROWS - 1), col=st.integers(0, COLS - 1), value=st.integers())
    def write_element(self, row: int, col: int, value: int) -> None:
        value = int(np.int32(value % (1 << 31)))
        if self.mode == "r":
            return
        self.arr[row, col] = value
        target = self.model if self.mode == "shared" else self.scratch
        assert target is not None
        target[row, col] = value

    @precondition(lambda self: self.mode == "shared")
    @rule(start=st.integers(0, ROWS), stop=st.integers(0, ROWS))
    def flush_region(self, start: int, stop: int) -> None:
        self.arr.flush(slice(start, stop))

    @precondition(lambda self: self.pending is None and not self.stale)
    @rule(mode=st.sampled_from(["r", "shared", "private"]))
    def close_and_reopen(self, mode: str) -> None:
        self.arr.close()
        assert np.array_equal(np.load(self.path), self.model)  # private edits never landed
        self.arr = bigarr.open(self.path, mode)
        self.mode = mode
        self.scratch = self.model.copy() if mode == "private" else None

    # ---- private mode: commit, discard, journal, crash, recovery ---------------------------
    def _recovered(self, outcome: str | None) -> None:
        """Check a recovery's outcome against the model, and apply a replayed commit."""
        if self.stale:
            assert outcome == "rejected"
        elif self.pending is not None:
            assert outcome == "replayed"
            rows, values = self.pending
            self.model[rows] = values
        else:
            assert outcome is None
        self.pending, self.stale = None, False

    @precondition(lambda self: self.mode == "private")
    @rule(start=st.integers(0, ROWS), stop=st.integers(0, ROWS), journal=st.booleans(),
          whole=st.booleans())
    def commit(self, start: int, stop: int, journal: bool, whole: bool) -> None:
        assert self.scratch is not None
        rows = slice(None) if whole else slice(start, stop)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            recovery = os.path.lexists(_private.journal_path(str(self.path)))
            self.arr.commit(None if whole else rows, journal=journal)
        if recovery:  # a commit first recovers an interrupted one
            self._recovered("rejected" if caught else "replayed")
        self.model[rows] = self.scratch[rows]

    @precondition(lambda self: self.mode == "private" and self.pending is None
                  and not self.stale)
    @rule(start=st.integers(0, ROWS), stop=st.integers(0, ROWS))
    def discard(self, start: int, stop: int) -> None:
        assert self.scratch is not None
        self.arr.discard(slice(start, stop))
        self.scratch[start:stop] = self.model[start:stop]

    @initialize(mode=st.sampled_from(["shared", "private"]))
    def start_in(self, mode: str) -> None:
        self.close_and_reopen(mode)

    @precondition(lambda self: self.mode == "private" and self.pending is None
                  and not self.stale)
    @rule(start=st.integers(0, ROWS - 1), length=st.integers(1, ROWS), value=st.integers(-9, 9))
    def interrupted_commit(self, start: int, length: int, value: int) -> None:
        """Edit rows, then commit them with a journal and die after the journal is durable."""
        assert self.scratch is not None
        stop = min(ROWS, start + length)
        self.write_rows(start, stop - start, value)
        real = _commitjournal.write_runs

        def crash(fd: int, m: Any, runs: Any) -> int:
            raise Interrupted

        _commitjournal.write_runs = crash
        try:
            self.arr.commit(slice(start, stop), journal=True)
        except Interrupted:
            self.pending = (slice(start, stop), self.scratch[start:stop].copy())
        else:  # nothing to commit: no journal
            assert not os.path.lexists(_private.journal_path(str(self.path)))
        finally:
            _commitjournal.write_runs = real
        assert np.array_equal(np.load(self.path), self.model)  # all or nothing: nothing yet

    @precondition(lambda self: self.mode == "private")
    @rule()
    def recover(self) -> None:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            outcome = bigarr.recover_commit(self.path)
        self._recovered(outcome)

    @precondition(lambda self: self.pending is not None)
    @rule(fill=st.integers(-9, 9))
    def recreate_file(self, fill: int) -> None:
        """Delete the file and create another under its name while a journal is pending."""
        self.arr.close(force=True)
        os.unlink(self.path)
        bigarr.create(self.path, (ROWS, COLS), np.int32, fill=fill).close()
        self.model = np.full((ROWS, COLS), fill, dtype=np.int32)
        self.pending, self.stale = None, True
        self.arr = bigarr.open(self.path, "private")
        self.mode = "private"
        self.scratch = self.model.copy()

    @invariant()
    def file_matches_model(self) -> None:
        assert np.array_equal(np.load(self.path), self.model)

    @invariant()
    def array_matches_model(self) -> None:
        expected = self.scratch if self.mode == "private" else self.model
        assert np.array_equal(self.arr, expected)


MappedVersusModel.TestCase.settings = settings(max_examples=40, stateful_step_count=30,
                                               deadline=None)
TestMappedVersusModel = MappedVersusModel.TestCase
