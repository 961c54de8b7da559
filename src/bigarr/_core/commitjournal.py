"""The commit path of private mode: scratch page runs written to the file, plainly or through
a redo journal, and the recovery of an interrupted journaled commit (:func:`recover_commit`).

Crash during a commit. Pages are written in ascending file order, then ``fdatasync``; the scratch
copies are dropped (by :func:`bigarr._core.private.commit`) only after that. If the process dies
mid-commit, every ``pwrite`` that returned is in the page cache and reaches the disk, the rest of
the file keeps its old bytes: the file holds a prefix (by offset) of the committed pages, each
page whole, and the remaining edits are lost with the process. A power loss before
``fdatasync`` returns can leave any subset of the written pages on disk. ``journal=True`` gives
an all-or-nothing commit: the pages go to a redo journal (``.<name>.bigarr-commit``, fsync'd)
before the file is touched, and :func:`recover_commit` replays a complete journal or drops a
torn one, so the file holds all of the commit or none. A journal is replayed only into the file
it was written for (its identity, size and header bytes; never a file re-created under the
name), and only inside the array's data; any other is removed unused with a
:class:`~bigarr.errors.StaleJournalWarning`. Commits and recoveries of one file, in any
processes, hold an OFD lock on it (:func:`bigarr._os.lock.commit_lock`), so they never
interleave.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import struct
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._core.dirtypages import Runs
from bigarr._formats.journal import (
    COMMIT_MAGIC,
    COMMIT_MAGIC_V1,
    commit_journal_path,
    user_stacklevel,
)
from bigarr._formats.npy import read_header
from bigarr._os.durable import Paced, datasync, fsync_dir
from bigarr._os.fileid import (
    FileId,
    NotARegularFile,
    create_unnamed,
    discard_unnamed,
    file_id,
    install,
    leftovers,
    open_regular,
    remove_leftovers,
)
from bigarr._os.lock import commit_lock
from bigarr.errors import (
    DiskFullError,
    FileMissingError,
    NotAFileError,
    ReadOnlyError,
    StaleJournalWarning,
)

if TYPE_CHECKING:
    from bigarr._os.mapping import Mapping

__all__ = ["journal_path", "journaled_write", "recover", "recover_commit", "write_runs"]

_CHUNK = 16 << 20  # bytes read or written per step; bounds temporary memory


def write_runs(fd: int, m: Mapping, runs: Runs) -> int:
    """``pwrite`` each run from the mapping to the file, in ascending order; bytes written.

    Paced (:class:`~bigarr._os.durable.Paced`): at most a window of the commit is dirty in the
    page cache at a time, instead of all of it until the ``fdatasync`` (issue 17).
    """
    root, base, total = m.root, m.map_offset, 0
    paced = Paced(fd)
    for start, stop in runs:
        for pos in range(start, stop, _CHUNK):
            paced.write(root[pos : min(stop, pos + _CHUNK)], base + pos)
        total += stop - start
    return total


_JOURNAL_MAGIC = COMMIT_MAGIC  # (bigarr._formats.journal reads the header too)
_OLD_MAGIC = COMMIT_MAGIC_V1
_LENGTH = struct.Struct("<I")  # bytes of the JSON header that follows the magic
_RECORD = struct.Struct("<QQ")  # file offset, byte count; then the bytes
_TRAILER = b"END!"
_HEAD_BYTES = 64 << 10  # bytes before the data section digested into the journal (the header)


def journal_path(path: str) -> str:
    """Where a journaled commit of ``path`` keeps its journal: ``.<name>.bigarr-commit``."""
    return commit_journal_path(path)


def _write_all(fd: int, data: Any, paced: Paced | None = None) -> None:
    """``os.write`` all of ``data``, in pieces of at most ``_CHUNK`` bytes paced by ``paced``."""
    view = memoryview(data).cast("B")
    while len(view):
        at = os.lseek(fd, 0, os.SEEK_CUR) if paced is not None else 0
        n = os.write(fd, view[:_CHUNK])
        if paced is not None:
            paced.wrote(at, n)
        view = view[n:]


def _pread_bytes(fd: int, nbytes: int, offset: int) -> bytes:
    out = bytearray()
    while len(out) < nbytes:
        piece = os.pread(fd, nbytes - len(out), offset + len(out))
        if not piece:
            break
        out += piece
    return bytes(out)


def _identity(fd: int, lo: int, hi: int) -> dict[str, Any]:
    """What a commit journal records of its file: identity, size, data section, header bytes."""
    head = _pread_bytes(fd, min(lo, _HEAD_BYTES), 0)
    return {"id": file_id(fd).to_json(), "size": os.fstat(fd).st_size, "data": [lo, hi],
            "head": hashlib.sha256(head).hexdigest()}


def journaled_write(fd: int, m: Mapping, runs: Runs) -> int:
    """All-or-nothing commit: a redo journal made durable first, then the pages, then unlink.

    The journal names the file it is for (:func:`_identity`: device, inode, birth time,
    generation, size, data section and a digest of the bytes before it) and holds every page run
    (file offset, length, bytes) and a BLAKE2b digest of all of it. It is written as an unnamed
    file (``O_TMPFILE``; elsewhere a new random hidden name made with
    ``O_CREAT|O_EXCL|O_NOFOLLOW``) and renamed to its place once synced, so a link planted at
    the journal's name is replaced, never written through. A crash before the rename leaves
    the file untouched and no journal; a crash after it
    leaves a journal that :func:`recover_commit` replays, so the file ends with all of the
    commit or none of it.
    """
    jpath = journal_path(m.path)
    lo, hi = m.map_offset + m.data_start, m.map_offset + m.length
    head = json.dumps(_identity(fd, lo, hi)).encode("ascii")
    digest = hashlib.blake2b(digest_size=16)
    try:
        jfd, tmp = create_unnamed(jpath, mode=0o600)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ReadOnlyError(
                f"commit(journal=True) keeps its journal next to {m.path}, but that folder "
                f"cannot be written ({exc.strerror}). Nothing was written; commit with "
                "journal=False, or make the folder writable."
            ) from None
        raise
    try:
        for piece in (_JOURNAL_MAGIC, _LENGTH.pack(len(head)), head):
            digest.update(piece)
            _write_all(jfd, piece)
        paced = Paced(jfd)  # the journal's dirty pages bounded too, like the commit's
        for start, stop in runs:
            record = _RECORD.pack(m.map_offset + start, stop - start)
            for part in (record, m.root[start:stop].data):
                digest.update(part)
                _write_all(jfd, part, paced)
        _write_all(jfd, _TRAILER + digest.digest())
        os.fsync(jfd)
    except BaseException as exc:  # the file is untouched: drop the unfinished journal
        discard_unnamed(jfd, tmp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"No room for the commit journal {jpath} ({sum(b - a for a, b in runs)} bytes "
                f"of pages): {exc.strerror}. Nothing was written to {m.path}; the edits are "
                "still scratch edits. Free space, or commit with journal=False."
            ) from None
        raise
    os.close(install(jfd, tmp, jpath))
    fsync_dir(jpath)
    written = write_runs(fd, m, runs)
    datasync(fd)
    os.unlink(jpath)
    fsync_dir(jpath)
    return written


class _Journal:
    """A commit journal as read from disk: ``header`` and ``(offset, nbytes, at)`` records."""

    def __init__(self, header: dict[str, Any], records: list[tuple[int, int, int]]) -> None:
        self.header = header
        self.records = records


def _journal_records(jfd: int, size: int) -> _Journal | None:
    """Parse and verify a journal; None if it is torn (its digest does not match)."""
    digest = hashlib.blake2b(digest_size=16)
    magic = os.pread(jfd, len(_JOURNAL_MAGIC), 0)
    if magic != _JOURNAL_MAGIC:
        return None
    digest.update(magic)
    pos = len(magic)
    length = os.pread(jfd, _LENGTH.size, pos)
    if len(length) < _LENGTH.size:
        return None
    (nhead,) = _LENGTH.unpack(length)
    digest.update(length)
    pos += _LENGTH.size
    tail = len(_TRAILER) + digest.digest_size
    if pos + nhead + tail > size or nhead > 1 << 20:
        return None
    raw = os.pread(jfd, nhead, pos)
    digest.update(raw)
    pos += nhead
    records = []
    while pos + tail < size:
        head = os.pread(jfd, _RECORD.size, pos)
        if len(head) < _RECORD.size:
            return None
        offset, nbytes = _RECORD.unpack(head)
        digest.update(head)
        body = pos + _RECORD.size
        if body + nbytes + tail > size:
            return None
        for a in range(body, body + nbytes, _CHUNK):
            digest.update(os.pread(jfd, min(_CHUNK, body + nbytes - a), a))
        records.append((offset, nbytes, body))
        pos = body + nbytes
    if pos + tail != size or os.pread(jfd, tail, pos) != _TRAILER + digest.digest():
        return None
    try:
        header = json.loads(raw)
    except ValueError:
        return None
    return _Journal(header, records) if isinstance(header, dict) else None


def _why_not(journal: _Journal, fd: int, target: str) -> str | None:
    """Why a complete journal must not be replayed into the open file ``fd``; None if it may.

    The journal must name this very file (identity, size, the bytes before the data section)
    and every record must lie inside the data section it names, which must lie inside the
    file and, for a ``.npy`` file, inside the data section its header describes.
    """
    header = journal.header
    data = header.get("data")
    if (not isinstance(data, list) or len(data) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in data)):
        return "it names no data section"
    lo, hi = data
    mine = _identity(fd, lo, hi) if 0 <= lo <= hi else None
    if mine is None or FileId.from_json(header.get("id")) != file_id(fd):
        return f"it was written for another file that had the name {target}"
    if header.get("size") != mine["size"] or header.get("head") != mine["head"]:
        return f"{target} changed since (its size or header differs)"
    if hi > mine["size"]:
        return "its data section lies beyond the end of the file"
    try:
        with os.fdopen(os.dup(fd), "rb") as f:
            npy = read_header(f, mine["size"], name=target)
    except (ValueError, OSError):
        npy = None  # a headerless (open_raw) file: its data section is what the journal says
    if npy is not None and not (npy.data_offset <= lo and hi <= npy.data_offset + npy.nbytes):
        return "its data section is not the array's data (it would overwrite the .npy header)"
    for offset, nbytes, _at in journal.records:
        if not (lo <= offset and offset + nbytes <= hi):
            return (f"a record ({nbytes} bytes at {offset}) lies outside the data section "
                    f"[{lo}, {hi})")
    return None


def _drop_journal(jpath: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(jpath)
    fsync_dir(jpath)


def _reject(jpath: str, target: str, why: str) -> str:
    warnings.warn(
        f"Not replaying the commit journal {jpath}: {why}. Nothing was written to {target}; "
        "the journal was removed.", StaleJournalWarning, stacklevel=user_stacklevel())
    _drop_journal(jpath)
    return "rejected"


def recover(target: str, fd: int | None) -> str | None:
    """Recover ``target``'s journal; ``fd`` is the file open for writing (and commit-locked),
    or None when the file is gone."""
    jpath = journal_path(target)
    try:
        jfd = open_regular(jpath)
    except NotARegularFile as exc:
        return _reject(jpath, target, f"it is {exc.what}, not a journal bigarr wrote")
    if jfd is None:
        return None
    try:
        jst = os.fstat(jfd)
        if fd is not None and jst.st_uid not in (os.geteuid(), os.fstat(fd).st_uid):
            return _reject(jpath, target, "it belongs to another user than the file or this "
                           "process")
        if os.pread(jfd, len(_OLD_MAGIC), 0) == _OLD_MAGIC:
            return _reject(jpath, target, "it was written by bigarr 0.1, which recorded no "
                           "file identity, so it cannot be told to be this file's")
        journal = _journal_records(jfd, jst.st_size)
        if journal is None:
            outcome = "dropped"  # torn: nothing was written to any file from it
        elif fd is None:
            raise FileMissingError(
                f"{target} is gone, but its commit journal {jpath} holds a complete "
                "interrupted commit. Restore the file, then run recover_commit() again; "
                "delete the journal to abandon the commit."
            )
        else:
            why = _why_not(journal, fd, target)
            if why is not None:
                return _reject(jpath, target, why)
            paced = Paced(fd)
            for offset, nbytes, body in journal.records:
                for a in range(0, nbytes, _CHUNK):
                    chunk = os.pread(jfd, min(_CHUNK, nbytes - a), body + a)
                    paced.write(np.frombuffer(chunk, np.uint8), offset + a)
            datasync(fd)
            outcome = "replayed"
    finally:
        os.close(jfd)
    _drop_journal(jpath)
    return outcome


def recover_commit(path: str | os.PathLike[str]) -> str | None:
    """Finish or roll back a journaled commit of ``path`` that a crash interrupted.

    Run it after a crash, before trusting the file (a later ``commit`` of the file runs it too).
    A journal is replayed only into the file it was written for: the same file (device, inode,
    birth time and generation, so not a file re-created under the name), of the same size and
    header bytes, with every record inside the array's data. Any other journal is reported with
    a :class:`~bigarr.errors.StaleJournalWarning`, removed, and nothing is written. Recovery
    holds the file's commit lock, so it never runs beside another process's commit.

    Returns
    -------
    str or None
        ``"replayed"`` (the journal was complete: the whole commit is now in the file),
        ``"dropped"`` (the crash hit while the journal was being written: the file was never
        touched and still holds none of the commit), ``"rejected"`` (the journal does not
        belong to this file, or is not one bigarr wrote: it was removed unused) or ``None``
        (no journal).

    Raises
    ------
    FileMissingError
        If a complete journal remains but the file is gone (the journal is kept).
    ReadOnlyError
        If a journal remains but the file cannot be opened for writing.
    NotAFileError
        If ``path`` is a directory.
    """
    target = os.path.abspath(os.fspath(path))
    jpath = journal_path(target)
    if not os.path.lexists(jpath) and not leftovers(jpath):
        return None
    try:
        fd = os.open(target, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return recover(target, None)
    except IsADirectoryError:
        raise NotAFileError(
            f"{target} is a directory; a commit journal {jpath} is next to it. Delete the "
            "journal if it is not yours."
        ) from None
    except PermissionError:
        raise ReadOnlyError(
            f"{target} is not writable, so the interrupted commit in its journal "
            f"{jpath} cannot be finished. Make the file writable and run "
            "recover_commit() again."
        ) from None
    try:
        with commit_lock(fd):
            # a journal a kill left under its hidden name, never installed: the file was
            # never touched by that commit (it starts only once the journal is named)
            remove_leftovers(jpath)
            return recover(target, fd)
    finally:
        os.close(fd)
