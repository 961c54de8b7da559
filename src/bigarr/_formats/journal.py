"""The resume journal: which chunks of an output are durable, and of *which* file and run.

A chunked run that writes a file (``map_blocks(..., out=path)``) keeps a journal at
``<output>.bigarr-journal`` for as long as it runs. The journal is a small text file::

    bigarr-journal 2 {"kind": "file", "target": {...}, "run": {...}}
    done 0
    grow 4096
    done 3 4096
    complete

* The first line says what the journal is about. ``target`` names the file the records describe
  by its *identity* (:class:`bigarr._os.fileid.FileId`: device, inode, birth time, generation),
  not by its name, plus what of it was written: the hidden partial file of a new output
  (``kind "file"``, with the partial's random name), the byte offset, shape and strides of the
  view written in place (``"in-place"``), or the Appender file and the rows it held when the
  run began (``"append"``). ``run`` is the fingerprint of the run: output shape, dtype and
  order, the chunk boundaries, each input file's path, size, modification and change times and
  identity (:func:`input_identity`), the operands passed whole, and the function
  (:func:`bigarr._compute.token.function_token`, or the caller's ``token=``).
* A journal is trusted only if its target is the very file being written *and* its run is
  this run; otherwise none of its fields is used (see ``map_blocks``: it is reported with a
  :class:`~bigarr.errors.StaleJournalWarning` and replaced, or the run is refused when
  replacing it would hide an unfinished write of another region).
* ``done I [ROWS]`` records that chunk ``I`` is durable: its output pages were flushed with
  ``msync(MS_SYNC)``/``fdatasync`` *before* the record was written, and the record itself is
  synced before the run goes on. ``ROWS`` is the output length after the chunk, for outputs
  that grow. ``grow ROWS`` is written (and synced) *before* an Appender commit to ``ROWS``
  rows: a resumed run rolls back only rows a journaled commit could have added, and refuses a
  file that grew beyond them (rows appended by someone else). A torn last line (a crash while
  writing it) does not parse and is ignored.
* ``complete`` is written when every chunk is durable, just before the output is published.

The journal is written as an unnamed file (``O_TMPFILE``; elsewhere under an unguessable
hidden name created with ``O_CREAT|O_EXCL|O_NOFOLLOW``), synced, and renamed over the journal's
name, so a planted link at that name is replaced, never
written through; it is read with ``O_NOFOLLOW`` and only if it is a regular file with one link.

Crash semantics (what a ``kill -9`` at any point leaves behind):

* A new output is written under a hidden partial name (``.<name>.bigarr-partial-<random>``)
  named by the journal, and renamed to its real name only when complete, so a crashed run never
  leaves a half-written file under the output's name. The next run of the same output finds
  the partial through the journal: it resumes into it (``resume=True``, same run, same file),
  or deletes it.
* An existing array written in place is left with its journal next to it. The journal's
  presence is the "incomplete" marker: :func:`check_complete` (exported as
  ``bigarr.check_complete``) raises :class:`~bigarr.errors.IncompleteOutputError` for it.
* Running again with ``resume=True`` reads the journal, skips the chunks recorded done, and
  recomputes only the rest; the result is byte-identical to an uninterrupted run as long as the
  function is deterministic. Without ``resume`` a journal of the same output is discarded and
  everything is recomputed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import sys
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

from bigarr._os.durable import datasync, fsync_dir
from bigarr._os.fileid import (
    FileId,
    NotARegularFile,
    create_unnamed,
    discard_unnamed,
    file_id,
    install,
    open_regular,
    path_id,
)
from bigarr._os.paths import os_error
from bigarr.errors import IncompleteOutputError, ReadOnlyError

__all__ = [
    "COMMIT_MAGIC",
    "COMMIT_MAGIC_V1",
    "JOURNAL_SUFFIX",
    "Journal",
    "Parsed",
    "check_complete",
    "commit_journal_path",
    "commit_pending",
    "input_identity",
    "journal_path",
    "read_journal",
    "user_stacklevel",
]

JOURNAL_SUFFIX = ".bigarr-journal"
_MAGIC_V1 = "bigarr-journal 1 "
_MAGIC = "bigarr-journal 2 "
_MAX_BYTES = 64 << 20  # a journal longer than this is not one bigarr wrote (6M chunks)


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning name the first caller outside bigarr.

    Call it from the function that calls ``warnings.warn``.
    """
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("bigarr."):
        frame, level = frame.f_back, level + 1  # type: ignore[assignment]
    return level


def journal_path(output: str) -> str:
    """The journal file of an output path."""
    return output + JOURNAL_SUFFIX


def input_identity(path: str, fd: int | None = None) -> list[Any]:
    """What identifies an input file's contents cheaply: path, size, mtime and ctime (ns) and
    the file's identity (:class:`~bigarr._os.fileid.FileId`: device, inode, birth time,
    generation); of the open file ``fd`` when given (the one the run reads), else of ``path``.

    The identity matters: a file replaced by a rename with another of the same size, its mtime
    set back (``os.utime``, ``cp -p``, ``rsync -t``), has the same path, size and mtime but is
    another inode, and resuming from its journal would mix the old file's results into the new.
    The ctime matters too: ``cp -p`` (or ``rsync --inplace -t``) over an existing file rewrites
    that same inode and sets its mtime to the source's, but no one can set a ctime back.
    """
    own = fd is None
    if fd is None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
                     | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        return [path, st.st_size, st.st_mtime_ns, file_id(fd).to_json(), st.st_ctime_ns]
    finally:
        if own:
            os.close(fd)


def canonical(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons."""
    return json.loads(json.dumps(value))


class Parsed(NamedTuple):
    """A journal as read from disk; nothing in it is trusted until its header is matched."""

    header: Any
    """Version 2: the header dict (``kind``, ``target``, ``run`` ...); version 1: its
    fingerprint."""
    done: dict[int, int | None]
    """Chunks recorded durable, with the output length after each (growing outputs)."""
    complete: bool
    """A ``complete`` record was written."""
    grows: list[int]
    """Lengths announced by ``grow`` records, in order."""
    version: int
    """The format version (1: bigarr 0.1, which named no file identity)."""


def read_journal(path: str) -> Parsed | None:
    """Parse a journal file, or None if there is none or it is unusable.

    Unusable: not a regular file with one link (a planted symbolic link, device or hard link is
    never opened through), not UTF-8, no known first line, or implausibly long.
    """
    try:
        fd = open_regular(path)
    except (NotARegularFile, OSError):
        return None
    if fd is None:
        return None
    try:
        if os.fstat(fd).st_size > _MAX_BYTES:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            text = f.read(_MAX_BYTES).decode("utf8")
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)
    lines = text.split("\n")
    version = 2 if lines[0].startswith(_MAGIC) else 1 if lines[0].startswith(_MAGIC_V1) else 0
    if not version:
        return None
    try:
        header = json.loads(lines[0][len(_MAGIC):])
    except ValueError:
        return None
    if version == 2 and not isinstance(header, dict):
        return None
    done: dict[int, int | None] = {}
    grows: list[int] = []
    complete = False
    # The last element is "" after a final newline, or a torn record: ignore it either way.
    for line in lines[1:-1]:
        parts = line.split(" ")
        if parts == ["complete"]:
            complete = True
        elif len(parts) == 2 and parts[0] == "grow" and parts[1].isdecimal():
            grows.append(int(parts[1]))
        elif (len(parts) in (2, 3) and parts[0] == "done"
              and all(p.isdecimal() and p.isascii() for p in parts[1:])):
            done[int(parts[1])] = int(parts[2]) if len(parts) == 3 else None
    return Parsed(header, done, complete, grows, version)


class Journal:
    """An open, append-only journal of durable chunks; thread-safe.

    Use :meth:`create` to write a new one for a run.
    """

    def __init__(self, path: str, fd: int, done: dict[int, int | None],
                 durable: bool = True) -> None:
        self.path = path
        self._fd = fd
        self._durable = durable
        st = os.fstat(fd)
        self._ident = (st.st_dev, st.st_ino)
        self._lock = threading.Lock()
        self.done: dict[int, int | None] = dict(done)
        """Chunks recorded durable, with the output length after each (growing outputs)."""

    @classmethod
    def create(cls, output: str, header: dict[str, Any],
               done: dict[int, int | None] | None = None, *, durable: bool = True) -> Journal:
        """Write a new journal for ``output``: ``header`` and the records of ``done``.

        It is written as a new unnamed file (see :func:`bigarr._os.fileid.create_unnamed`), synced,
        and renamed over any old journal (or anything else at the name, which is replaced, never
        followed); its folder is synced before this returns. The returned journal appends to
        that same file. With ``durable=False`` nothing is synced (a journal that only has to
        survive the process, not the machine: one that names a partial file to clean up).
        """
        path = journal_path(output)
        done = dict(done or {})
        text = _MAGIC + json.dumps(canonical(header)) + "\n" + "".join(
            f"done {i}\n" if r is None else f"done {i} {r}\n" for i, r in sorted(done.items()))
        try:
            fd, tmp = create_unnamed(path)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ReadOnlyError(
                    f"Cannot write the journal {path}: {exc.strerror}. A run writing {output} "
                    "keeps its journal next to it; use a folder you can write to."
                ) from None
            raise os_error(exc, path, writing=True) from None
        try:
            try:
                _write(fd, text.encode("utf8"))
                if durable:
                    os.fsync(fd)
            except BaseException:
                discard_unnamed(fd, tmp)
                raise
            fd = install(fd, tmp, path)
            if durable:
                fsync_dir(path)
        except OSError as exc:  # a full disk (ENOSPC), EIO: a bigarr error naming the journal
            raise os_error(exc, path, writing=True) from exc
        return cls(path, fd, done, durable)

    def _append(self, text: str, *, full: bool = False) -> None:
        try:
            _write(self._fd, text.encode("ascii"))
            if full:
                os.fsync(self._fd)
            else:
                datasync(self._fd)
        except OSError as exc:  # a full disk (ENOSPC), EIO: a bigarr error naming the journal
            raise os_error(exc, self.path, writing=True) from exc

    def record(self, chunks: Iterable[int], rows: int | None = None) -> None:
        """Record ``chunks`` as durable and sync the journal.

        Call only after the chunks' output pages have been flushed.
        """
        items = list(chunks)
        if not items:
            return
        tail = "" if rows is None else f" {rows}"
        with self._lock:
            self._append("".join(f"done {i}{tail}\n" for i in items))
            for i in items:
                self.done[i] = rows

    def intend(self, rows: int) -> None:
        """Record (synced) that the output may grow to ``rows`` rows before the next record."""
        with self._lock:
            self._append(f"grow {rows}\n")

    def complete(self) -> None:
        """Record that every chunk is durable (written just before the output is published)."""
        with self._lock:
            if self._durable:
                self._append("complete\n", full=True)
            else:
                _write(self._fd, b"complete\n")

    def close(self) -> None:
        """Close the journal file, keeping it on disk (the run did not finish)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def remove(self) -> None:
        """Delete the journal (if its name still holds it) and close: the output is complete."""
        self.close()
        with contextlib.suppress(OSError):
            now = os.lstat(self.path)
            if (now.st_dev, now.st_ino) == self._ident:
                os.unlink(self.path)
                if self._durable:
                    fsync_dir(self.path)


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while len(view):
        view = view[os.write(fd, view):]


def target_id(parsed: Parsed) -> FileId | None:
    """The file identity a version-2 journal names (not yet trusted), or None."""
    if parsed.version != 2:
        return None
    target = parsed.header.get("target")
    return FileId.from_json(target.get("id")) if isinstance(target, dict) else None


#: First bytes of a private-mode commit's redo journal (its format is owned by
#: :mod:`bigarr._core.private`; only its name and header are read here).
COMMIT_MAGIC = b"bigarr-commit-journal 2\n"
COMMIT_MAGIC_V1 = b"bigarr-commit-journal 1\n"


def commit_journal_path(path: str) -> str:
    """Where a journaled commit of ``path`` keeps its redo journal: ``.<name>.bigarr-commit``."""
    folder, name = os.path.split(path)
    return os.path.join(folder, f".{name}.bigarr-commit")


def commit_pending(target: str) -> str | None:
    """The commit journal next to ``target`` if it may describe a half-done commit of it.

    A commit journal gets its name only once it is complete and synced, and is removed once
    the commit is in the file, so a journal under the name means the file may hold part of a
    commit (interrupted, or running now in another process) until :func:`bigarr.recover_commit`
    runs. It counts when its header names this very file (its identity), or when it is from
    bigarr 0.1 (no identity recorded: it cannot be told not to be this file's). One header
    read; the records are not verified here.
    """
    jpath = commit_journal_path(target)
    try:
        fd = open_regular(jpath)
    except (NotARegularFile, OSError):
        return None  # a link or special file: not a journal bigarr wrote
    if fd is None:
        return None
    try:
        head = os.pread(fd, len(COMMIT_MAGIC) + 4, 0)
        if head.startswith(COMMIT_MAGIC_V1):
            return jpath
        if len(head) < len(COMMIT_MAGIC) + 4 or not head.startswith(COMMIT_MAGIC):
            return None
        size = int.from_bytes(head[len(COMMIT_MAGIC):], "little")
        if size > 1 << 20:
            return None
        header = json.loads(os.pread(fd, size, len(head)))
        named = FileId.from_json(header.get("id")) if isinstance(header, dict) else None
        return jpath if named is not None and named == path_id(target) else None
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)


def check_complete(path: str | os.PathLike[str]) -> None:
    """Refuse an output left behind by a chunked run that did not finish.

    A journal next to ``path`` makes it incomplete when it names this very file (its identity,
    not just its name) as written in place or appended to by a run that did not record
    ``complete``, or when the output of a new-file run was never published. A journal that
    names another file (the name was re-created since) does not make this file incomplete; one
    that cannot be read (malformed, a planted link) does, to be safe.

    Parameters
    ----------
    path
        An output file written by :func:`bigarr.map_blocks` (or any path).

    A journaled private-mode ``commit`` interrupted midway (its redo journal
    ``.<name>.bigarr-commit`` names this file, see :func:`commit_pending`) makes it incomplete
    too, until :func:`bigarr.recover_commit` finishes or rolls back the commit.

    Raises
    ------
    IncompleteOutputError
        If a journal next to ``path`` says a run writing it was interrupted. Run the same
        ``map_blocks`` call again with ``resume=True`` to finish it, or delete the output and
        its ``.bigarr-journal`` file; for an interrupted commit, run ``recover_commit``.
    """
    target = os.path.abspath(os.fsdecode(path))
    pending = commit_pending(target)
    if pending is not None:
        raise IncompleteOutputError(
            f"{target} may hold only part of a journaled commit: the commit was interrupted "
            f"(or is running in another process), and its redo journal {pending} is still "
            f"there. Run bigarr.recover_commit({target!r}) to finish it (or roll it back) "
            "before reading the file."
        )
    journal = journal_path(target)
    try:
        if not stat.S_ISREG(os.lstat(journal).st_mode):
            return  # a link or special file: nothing bigarr writes (it renames regular files)
    except OSError:
        return
    parsed = read_journal(journal)
    if parsed is not None and parsed.version == 2:
        kind = parsed.header.get("kind")
        if kind in ("file", "lazy-append") and os.path.exists(target):
            return  # a new-file run (lazy to_npy's appended one too) only renames a complete
            #         file onto the name
        if kind in ("in-place", "append"):
            named = target_id(parsed)
            if named is None or named != path_id(target):
                return  # the journal is about another file that had this name
    if parsed is not None and parsed.complete and os.path.exists(target):
        return  # finished and published; only the journal's removal was interrupted
    done = "?" if parsed is None else str(len(parsed.done))
    total = "?"
    run = None if parsed is None else (
        parsed.header.get("run") if parsed.version == 2 else parsed.header)
    if isinstance(run, dict) and isinstance(run.get("chunks"), list):
        total = str(len(run["chunks"]))
    raise IncompleteOutputError(
        f"{target} is incomplete: a run writing it was interrupted after {done} of {total} "
        f"chunks (journal {journal}). Run the same map_blocks call with resume=True to finish "
        "it, or delete the output and the journal to start over."
    )
