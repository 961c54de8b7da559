"""A mapped array against an in-memory numpy model, across write / flush / close / reopen."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import bigarr

ROWS, COLS = 37, 5


class MappedVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name) / "m.npy"
        self.model = np.zeros((ROWS, COLS), dtype=np.int32)   # what the file should hold
        self.scratch: np.ndarray[Any, Any] | None = None       # what a private mapping shows
        self.arr = bigarr.create(self.path, (ROWS, COLS), np.int32)
        self.mode = "shared"

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

    @rule(mode=st.sampled_from(["r", "shared", "private"]))
    def close_and_reopen(self, mode: str) -> None:
        self.arr.close()
        assert np.array_equal(np.load(self.path), self.model)  # private edits never landed
        self.arr = bigarr.open(self.path, mode)
        self.mode = mode
        self.scratch = self.model.copy() if mode == "private" else None

    @invariant()
    def array_matches_model(self) -> None:
        expected = self.scratch if self.mode == "private" else self.model
        assert np.array_equal(self.arr, expected)


MappedVersusModel.TestCase.settings = settings(max_examples=40, stateful_step_count=25,
                                               deadline=None)
TestMappedVersusModel = MappedVersusModel.TestCase
