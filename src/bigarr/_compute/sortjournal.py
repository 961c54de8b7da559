"""Resumable external sorts: the journal of a sort's finished runs.

A sort to a file with ``resume=True`` keeps the resume journal of its output
(:mod:`bigarr._formats.journal`, ``<out>.bigarr-journal``, the same file format and rules as
``map_blocks``) with a header of kind ``"sort-runs"``:

``run``
    the sort's fingerprint: the operation (``sort``/``argsort``), the key columns, the record
    dtype, the source's identity (a file's :func:`~bigarr._formats.journal.input_identity`:
    path, size, mtime, ctime and FileId; an in-memory array's digest), the chunk boundaries of
    phase 1 and the temporary folder;
``target.runs``
    for each phase-1 chunk whose run is durable: the run file's hidden name, its identity
    (:class:`bigarr._os.fileid.FileId`: device, inode, birth time, generation) and its record
    count;
``target.merged``
    once an intermediate merge pass has finished (a merge of more runs than the budget buffers
    at once): the pass's number and its merged runs in source order, each as above. It
    replaces ``target.runs``: the runs it merged are removed once it is journaled.

A run is recorded only after ``fdatasync``; the journal is rewritten (a new file, synced, renamed
over the old) for each record. A killed sort (``kill -9``) leaves its runs and journal; the next
run of the same sort with ``resume=True`` takes every run whose file is still the very file
recorded (identity and size) and sorts only the other chunks; or, when a finished merge pass
is journaled and all its runs are intact, starts from that pass's runs. A journal of another
sort (another source file, even one renamed into place with the same size and mtime) is not
used: with ``resume=True`` it is reported with a ``StaleJournalWarning``, as by ``map_blocks``.
Anything else that killed sorts of this output left (runs the journal does not name, a hidden
output) is removed, under the output's lock. A finished sort removes its journal and runs; a
failed one without ``resume`` removes them too.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import warnings
from typing import Any

import numpy as np

from bigarr._compute.mapblocks import _identity
from bigarr._compute.operands import Stream
from bigarr._compute.runs import Run, TempRuns
from bigarr._formats.journal import (
    Journal,
    canonical,
    journal_path,
    read_journal,
    user_stacklevel,
)
from bigarr._os.durable import datasync
from bigarr._os.fileid import FileId, file_id, open_regular, remove_leftovers
from bigarr.errors import StaleJournalWarning

__all__ = ["KIND", "RunJournal", "fingerprint"]

KIND = "sort-runs"


def _source_identity(stream: Stream) -> Any:
    """A file's input identity (path, size, mtime, ctime, FileId); an in-memory array's digest
    (never a lazy source's)."""
    if stream.mapping is None and stream.array is not None:
        arr = np.ascontiguousarray(stream.array)
        digest = hashlib.sha256(arr.reshape(-1).view(np.uint8).data).hexdigest()
        return ["ndarray", list(arr.shape), arr.dtype.str, digest]
    if stream.mapping is None:
        return ["unresumable", os.getpid(), id(stream)]
    return _identity(stream)


def fingerprint(stream: Stream, name: str, by: list[int] | None, dtype: np.dtype[Any],
                chunks: list[tuple[int, int]], folder: str) -> dict[str, Any]:
    """What makes two sorts the same sort (module docstring)."""
    return {"op": name, "by": by, "record": str(dtype.descr), "source": _source_identity(stream),
            "chunks": [list(c) for c in chunks], "folder": folder}


class RunJournal:
    """The finished runs of one sort to ``target`` (module docstring); the caller holds the
    output's lock."""

    def __init__(self, target: str, temp: TempRuns, run: dict[str, Any], resume: bool) -> None:
        self.target, self.temp, self.run, self.resume = target, temp, run, resume
        self.entries: dict[str, list[Any]] = {}
        self.merged: dict[str, Any] | None = None
        self.journal: Journal | None = None
        #: The finished merge pass adopted by :meth:`adopt` (0: none) and its runs.
        self.adopted_pass = 0
        self.adopted_merged: list[Run] = []

    def _header(self) -> dict[str, Any]:
        target: dict[str, Any] = {"runs": self.entries}
        if self.merged is not None:
            target["merged"] = self.merged
        return {"kind": KIND, "run": self.run, "target": target}

    def _rewrite(self) -> None:
        assert self.journal is not None
        self.journal.close()
        self.journal = Journal.create(self.target, self._header(), durable=True)

    def adopt(self, dtype: np.dtype[Any]) -> dict[int, Run]:
        """The durable runs of an interrupted run of this sort (with ``resume``), opened; and
        the leftovers of killed sorts of this output removed. When the interrupted run had
        journaled a finished merge pass whose runs are all intact, they are adopted instead
        (:attr:`adopted_pass`, :attr:`adopted_merged`) and no phase-1 run is returned."""
        old = read_journal(journal_path(self.target))
        adopted: dict[int, Run] = {}
        ours = (old is not None and old.version == 2 and isinstance(old.header, dict)
                and old.header.get("kind") == KIND)
        same = ours and old is not None and old.header.get("run") == canonical(self.run)
        recorded = ours and old is not None and isinstance(old.header.get("target"), dict) \
            and bool(old.header["target"].get("runs"))
        if self.resume and recorded and not same:
            warnings.warn(f"Not resuming from {journal_path(self.target)}: it journals another "
                          "sort (another source, key, chunking or folder). Its runs are "
                          "removed and the sort starts over.", StaleJournalWarning,
                          stacklevel=user_stacklevel())
        if same and self.resume and old is not None:
            target = old.header.get("target")
            merged = target.get("merged") if isinstance(target, dict) else None
            if self._adopt_merged(merged, dtype):
                target = None  # the phase-1 runs it replaced are leftovers
            runs = target.get("runs", {}) if isinstance(target, dict) else {}
            for key, entry in (runs.items() if isinstance(runs, dict) else ()):
                run = self._open(key, entry, dtype)
                if run is not None:
                    adopted[int(key)] = run
                    self.entries[key] = entry
        remove_leftovers(self.temp.anchor, ("run",),
                         keep=[self.temp.name_of(r)
                               for r in [*adopted.values(), *self.adopted_merged]])
        if self.resume:
            self.journal = Journal.create(self.target, self._header(), durable=True)
        elif ours:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(journal_path(self.target))
        return adopted

    def _adopt_merged(self, merged: Any, dtype: np.dtype[Any]) -> bool:
        """Open the runs of a journaled merge pass, all or none."""
        if not (isinstance(merged, dict) and isinstance(merged.get("pass"), int)
                and isinstance(merged.get("runs"), list) and merged["runs"]):
            return False
        opened: list[Run] = []
        for entry in merged["runs"]:
            run = self._open("0", entry, dtype)
            if run is None:
                for r in opened:
                    self.temp.forget(r)
                return False
            opened.append(run)
        self.merged = merged
        self.adopted_pass, self.adopted_merged = int(merged["pass"]), opened
        return True

    def _open(self, key: Any, entry: Any, dtype: np.dtype[Any]) -> Run | None:
        if not (isinstance(key, str) and key.isdecimal() and isinstance(entry, list)
                and len(entry) == 3 and isinstance(entry[0], str) and isinstance(entry[2], int)):
            return None
        name, ident, size = entry
        if os.path.basename(name) != name or not name.startswith("."):
            return None  # a run is a hidden name in the temporary folder, nothing else
        path = os.path.join(self.temp.folder, name)
        try:
            fd = open_regular(path)
        except OSError:
            return None
        if fd is None:
            return None
        if file_id(fd) != FileId.from_json(ident) or os.fstat(fd).st_size != size * dtype.itemsize:
            os.close(fd)
            return None
        return self.temp.adopt(path, fd, size, dtype)

    def finished(self, index: int, run: Run) -> None:
        """Record chunk ``index``'s run as durable (with ``resume``; else nothing)."""
        if self.journal is None:
            return
        datasync(run.fd)
        self.entries[str(index)] = self._entry(run)
        self._rewrite()

    def _entry(self, run: Run) -> list[Any]:
        return [os.path.basename(self.temp.name_of(run)), file_id(run.fd).to_json(), run.size]

    def pass_finished(self, number: int, runs: list[Run]) -> None:
        """Record merge pass ``number``'s ``runs`` (in source order) as durable, replacing
        the runs it merged (with ``resume``; else nothing)."""
        if self.journal is None:
            return
        for run in runs:
            datasync(run.fd)
        self.entries = {}
        self.merged = {"pass": number, "runs": [self._entry(r) for r in runs]}
        self._rewrite()

    def success(self) -> None:
        if self.journal is not None:
            self.journal.remove()
            self.journal = None

    def failure(self) -> None:
        """Keep the runs and the journal for a resumed run (with ``resume``)."""
        if self.journal is not None:
            self.journal.close()
            self.journal = None
            self.temp.keep()
