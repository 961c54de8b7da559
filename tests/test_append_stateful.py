"""The Appender against an in-memory numpy model: append, commit, discard, truncate, reopen.

The model keeps the committed rows (what the header describes, so what ``np.load``,
``bigarr.open`` and a crash see) and the pending rows (written after them, published at the next
commit). Every step checks that readers see exactly the committed rows and that the Appender's
counts agree. Appends include zero rows, single rows (shape ``row_shape``) and batches that run
past the space reserved so far (the file grows in 1 MiB steps); dtypes include byte-swapped,
bool, fixed-size unicode, complex, zero-size rows and structured types with a subarray field.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import bigarr

KINDS: list[tuple[Any, tuple[int, ...]]] = [
    ("<f8", (3,)),
    ("<i2", ()),
    (">u4", (2, 2)),
    ("?", ()),
    ("<U3", ()),
    ("<c8", (1,)),
    ("<f4", (0,)),
    ([("a", "<i4"), ("b", "<f8", (2,)), ("c", "S2")], ()),
]
STEP = 1 << 20  # the Appender reserves disk space in whole MiB
# Every commit is two fdatasyncs: on tmpfs they cost nothing, and the model is the same there.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def make_rows(dtype: np.dtype[Any], shape: tuple[int, ...], start: int) -> np.ndarray[Any, Any]:
    """Distinct, exactly representable values of ``dtype`` numbered from ``start``."""
    if dtype.names:
        out = np.zeros(shape, dtype)
        for k, name in enumerate(dtype.names):
            field = dtype.fields[name][0]  # type: ignore[index]
            out[name] = make_rows(field.base, shape + field.shape, start + k)
        return out
    base = np.arange(start, start + int(np.prod(shape, dtype=np.int64))).reshape(shape) % 30011
    if dtype.kind == "U" or dtype.kind == "S":
        return base.astype(dtype)
    if dtype.kind == "b":
        return base % 2 == 1
    if dtype.kind == "c":
        return (base + 1j * (base % 7)).astype(dtype)
    return base.astype(dtype)


class AppenderVersusModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory(dir=SCRATCH)
        self.path = Path(self.dir.name) / "a.npy"
        self.app: bigarr.Appender | None = None
        self.counter = 0

    @initialize(kind=st.sampled_from(range(len(KINDS))), initial=st.integers(0, 5),
                made_by=st.sampled_from(["appender", "numpy"]),
                commit_every=st.sampled_from([None, 1, 4096, 100_000]))
    def start(self, kind: int, initial: int, made_by: str, commit_every: int | None) -> None:
        dtype, row_shape = KINDS[kind]
        self.dtype: np.dtype[Any] = np.dtype(dtype)
        self.row_shape = row_shape
        self.row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.commit_every = commit_every or STEP
        rows = self.new_rows(initial)
        if made_by == "numpy":  # numpy's own 64-byte-aligned header, grown in place
            np.save(self.path, rows)
        else:
            with bigarr.Appender(self.path, self.dtype, row_shape) as app:
                app.append(rows)
        self.committed = rows
        self.pending = rows[:0]
        self.reopen()

    def new_rows(self, n: int) -> np.ndarray[Any, Any]:
        rows = make_rows(self.dtype, (n, *self.row_shape), self.counter)
        self.counter += n + 1
        return rows

    def reopen(self, by_name: bool = False) -> None:
        if by_name:
            self.app = bigarr.Appender(self.path, self.dtype, self.row_shape, step=STEP,
                                       commit_every=self.commit_every)
        else:
            self.app = bigarr.Appender(self.path, step=STEP, commit_every=self.commit_every)

    def teardown(self) -> None:
        if self.app is not None:
            self.app.close()
        self.dir.cleanup()

    # ---- rules ---------------------------------------------------------------------------
    def _append(self, rows: np.ndarray[Any, Any], single: bool = False) -> None:
        assert self.app is not None
        length = self.app.append(rows[0] if single else rows)
        self.pending = np.concatenate([self.pending, rows])
        if len(self.pending) * self.row_bytes >= self.commit_every:  # auto-commit
            self.committed = np.concatenate([self.committed, self.pending])
            self.pending = self.pending[:0]
        assert length == len(self.committed) + len(self.pending)

    @rule(n=st.integers(0, 40))
    def append(self, n: int) -> None:
        self._append(self.new_rows(n))

    @rule()
    def append_one_row(self) -> None:
        self._append(self.new_rows(1), single=True)

    @precondition(lambda self: self.row_bytes > 0)
    @rule(extra=st.integers(1, 3))
    def append_past_the_reservation(self, extra: int) -> None:
        size = os.path.getsize(self.path)
        header = _data_offset(self.path)
        end = header + (len(self.committed) + len(self.pending)) * self.row_bytes
        free_rows = max(0, size - end) // self.row_bytes
        self._append(self.new_rows(free_rows + extra))

    @rule()
    def commit(self) -> None:
        assert self.app is not None
        self.committed = np.concatenate([self.committed, self.pending])
        self.pending = self.pending[:0]
        assert self.app.commit() == len(self.committed)

    @rule()
    def discard(self) -> None:
        assert self.app is not None
        self.app.discard()
        self.pending = self.pending[:0]

    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        assert self.app is not None
        rows = data.draw(st.integers(0, len(self.committed)))
        self.app.truncate(rows)
        self.committed = self.committed[:rows]
        self.pending = self.pending[:0]

    @rule(by_name=st.booleans())
    def close_and_reopen(self, by_name: bool) -> None:
        assert self.app is not None
        self.app.close()
        assert self.app.closed
        self.committed = np.concatenate([self.committed, self.pending])
        self.pending = self.pending[:0]
        expected_size = _data_offset(self.path) + len(self.committed) * self.row_bytes
        assert os.path.getsize(self.path) == expected_size  # close trims the reservation
        self.reopen(by_name)

    # ---- what readers see ----------------------------------------------------------------
    @invariant()
    def readers_see_exactly_the_committed_rows(self) -> None:
        if self.app is None:
            return
        assert self.app.committed == len(self.committed)
        assert len(self.app) == len(self.committed) + len(self.pending)
        got = np.load(self.path)
        assert got.dtype == self.dtype and got.shape == self.committed.shape
        assert np.array_equal(got, self.committed)
        with bigarr.open(self.path) as arr:
            assert arr.shape == self.committed.shape
            assert np.array_equal(np.asarray(arr), self.committed)


def _data_offset(path: Path) -> int:
    """Where the data starts (bytes): numpy's memmap ``offset`` of the file's mapping."""
    with bigarr.open(path) as arr:
        return int(arr.offset)


AppenderVersusModel.TestCase.settings = settings(max_examples=30, stateful_step_count=20,
                                                 deadline=None)
TestAppenderVersusModel = AppenderVersusModel.TestCase
