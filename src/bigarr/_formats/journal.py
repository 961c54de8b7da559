"""The resume journal: which chunks of an output are durable, recorded next to the output.

A chunked run that writes a file (``map_blocks(..., out=path)``) keeps a journal at
``<output>.bigarr-journal`` for as long as it runs. The journal is a small text file::

    bigarr-journal 1 {"shape": [...], "dtype": "<f4", "chunks": [...], "inputs": [...], ...}
    done 0
    done 3 4096
    done 1
    complete

* The first line holds a fingerprint of the run: output shape, dtype and order, the chunk
  boundaries, and each input file's path, size and modification time. A journal whose
  fingerprint differs from the new run's (other inputs, other chunking) is never trusted: the
  run starts over.
* ``done I [ROWS]`` records that chunk ``I`` is durable: its output pages were flushed with
  ``msync(MS_SYNC)`` *before* the record was written, and the record itself is ``fsync``'d
  before the run goes on. ``ROWS`` is the output length after the chunk, for outputs that grow
  (appendable outputs commit chunks in order). A torn last line (a crash while writing it) does
  not parse and is ignored, which only means that chunk is computed again.
* ``complete`` is written when every chunk is durable, just before the output is published.

Crash semantics (what a ``kill -9`` at any point leaves behind):

* A new output is written under a hidden partial name (``.<name>.bigarr-partial``) and renamed
  to its real name only when complete, so a crashed run never leaves a half-written file under
  the output's name.
* An existing array written in place is left with its journal next to it. The journal's
  presence is the "incomplete" marker: :func:`check_complete` (exported as
  ``bigarr.check_complete``) raises :class:`~bigarr.errors.IncompleteOutputError` for it.
* Running again with ``resume=True`` reads the journal, skips the chunks recorded done, and
  recomputes only the rest; the result is byte-identical to an uninterrupted run as long as the
  function is deterministic. Without ``resume`` a stale journal and partial file are discarded
  and everything is recomputed.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable
from typing import Any

from bigarr._os.durable import datasync, fsync_dir
from bigarr.errors import IncompleteOutputError

__all__ = [
    "JOURNAL_SUFFIX",
    "Journal",
    "check_complete",
    "input_identity",
    "journal_path",
    "partial_path",
    "read_journal",
]

JOURNAL_SUFFIX = ".bigarr-journal"
_MAGIC = "bigarr-journal 1 "


def journal_path(output: str) -> str:
    """The journal file of an output path."""
    return output + JOURNAL_SUFFIX


def partial_path(output: str) -> str:
    """The hidden file a new output is written to before it is complete."""
    folder, name = os.path.split(output)
    return os.path.join(folder, f".{name}.bigarr-partial")


def input_identity(path: str) -> list[Any]:
    """What identifies an input file's contents cheaply: path, size and mtime (ns)."""
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def read_journal(path: str) -> tuple[Any, dict[int, int | None], bool] | None:
    """Parse a journal file: (fingerprint, done chunks -> rows, complete), or None if unusable.
    """
    try:
        with open(path, encoding="utf8") as f:
            lines = f.read().split("\n")
    except (OSError, UnicodeDecodeError):
        return None
    if not lines or not lines[0].startswith(_MAGIC):
        return None
    try:
        fingerprint = json.loads(lines[0][len(_MAGIC):])
    except ValueError:
        return None
    done: dict[int, int | None] = {}
    complete = False
    # The last element is "" after a final newline, or a torn record: ignore it either way.
    for line in lines[1:-1]:
        parts = line.split()
        if parts == ["complete"]:
            complete = True
        elif len(parts) in (2, 3) and parts[0] == "done" and all(p.isdigit() for p in parts[1:]):
            done[int(parts[1])] = int(parts[2]) if len(parts) == 3 else None
    return fingerprint, done, complete


class Journal:
    """An open, append-only journal of durable chunks; thread-safe.

    Use :meth:`start` to open one for a run.
    """

    def __init__(self, path: str, fd: int, done: dict[int, int | None]) -> None:
        self.path = path
        self._fd = fd
        self._lock = threading.Lock()
        self.done: dict[int, int | None] = dict(done)
        """Chunks recorded durable, with the output length after each (growing outputs)."""

    @classmethod
    def start(cls, output: str, fingerprint: dict[str, Any], *, resume: bool) -> Journal:
        """Open the journal for a run writing ``output``.

        With ``resume`` and a journal whose fingerprint matches, the chunks it records are
        loaded into :attr:`done`; otherwise any old journal is replaced by an empty one.
        The journal (and its folder entry) is fsync'd before this returns.
        """
        path = journal_path(output)
        canonical = json.loads(json.dumps(fingerprint))
        if resume:
            old = read_journal(path)
            if old is not None and old[0] == canonical:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
                return cls(path, fd, old[1])
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0),
                     0o666)
        try:
            os.write(fd, (_MAGIC + json.dumps(canonical) + "\n").encode("utf8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        fsync_dir(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0))
        return cls(path, fd, {})

    def record(self, chunks: Iterable[int], rows: int | None = None) -> None:
        """Record ``chunks`` as durable and fsync the journal.

        Call only after the chunks' output pages have been flushed.
        """
        items = list(chunks)
        if not items:
            return
        tail = "" if rows is None else f" {rows}"
        text = "".join(f"done {i}{tail}\n" for i in items)
        with self._lock:
            os.write(self._fd, text.encode("ascii"))
            datasync(self._fd)
            for i in items:
                self.done[i] = rows

    def complete(self) -> None:
        """Record that every chunk is durable (written just before the output is published)."""
        with self._lock:
            os.write(self._fd, b"complete\n")
            os.fsync(self._fd)

    def close(self) -> None:
        """Close the journal file, keeping it on disk (the run did not finish)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def remove(self) -> None:
        """Close and delete the journal: the output is complete and published."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        fsync_dir(self.path)


def check_complete(path: str | os.PathLike[str]) -> None:
    """Refuse an output left behind by a chunked run that did not finish.

    Parameters
    ----------
    path
        An output file written by :func:`bigarr.map_blocks` (or any path).

    Raises
    ------
    IncompleteOutputError
        If a journal next to ``path`` says a run writing it was interrupted. Run the same
        ``map_blocks`` call again with ``resume=True`` to finish it, or delete the output and
        its ``.bigarr-journal`` file.
    """
    target = os.path.abspath(os.fsdecode(path))
    journal = journal_path(target)
    if not os.path.exists(journal):
        return
    parsed = read_journal(journal)
    if parsed is not None and parsed[2] and os.path.exists(target):
        return  # finished and published; only the journal's removal was interrupted
    done = "?" if parsed is None else str(len(parsed[1]))
    total = "?"
    if parsed is not None and isinstance(parsed[0], dict):
        total = str(len(parsed[0].get("chunks", []))) or "?"
    raise IncompleteOutputError(
        f"{target} is incomplete: a run writing it was interrupted after {done} of {total} "
        f"chunks (journal {journal}). Run the same map_blocks call with resume=True to finish "
        "it, or delete the output and the journal to start over."
    )
