"""Locks: one writer per output, and one commit at a time per file.

**Output locks** (:class:`OutputLock`). A run that writes an output holds an exclusive
``flock`` for as long as it writes. A second writer of the same output, in another process or in
this one (``flock`` locks belong to an open file description, so two opens in one process
exclude each other too), does not wait: it raises :class:`~bigarr.errors.OutputLockedError` at
once. Waiting would turn a mistake (two jobs configured with the same output) into a hang. The
kernel drops ``flock`` locks with the last descriptor, so a ``kill -9`` never leaves an output
locked. Two kinds of writer lock two things:

* Writers *in place* (an open :class:`~bigarr.Appender`, ``map_blocks`` into a mapped file) lock
  the output file itself (``in_place=True``): its inode, through a descriptor of its own. No
  lock file is made, so a killed writer leaves nothing behind.
* Writers that *replace* the output (``create``, ``map_blocks`` to a path, ``from_zarr``, an
  Appender creating its file) lock the lock file ``.<name>.bigarr-lock`` next to the output
  (the output may not exist yet, and is replaced by ``rename``), and also the output file
  itself if one is there, so they exclude in-place writers of the file they replace. A killed
  replacing writer leaves the empty lock file, which the next writer of that output removes.

The lock file is created with ``O_NOFOLLOW`` and must be a regular file with one link: a
symbolic link, a device or a hard link planted at the name is refused
(:class:`~bigarr.errors.FileExistsError_`), never opened through. It is opened read-only and
never written, so even a file it wrongly names could not be changed. The holder unlinks it on
release; a writer that locked a file which was unlinked meanwhile notices (the name no longer
leads to the inode it locked) and starts over, so two writers never both believe they hold it.
Where the folder cannot be written (no lock file can be made), the output file itself is locked
instead.

**Commit locks** (:func:`commit_lock`). A private-mode ``commit`` (and ``recover_commit``)
holds an open-file-description write lock (``F_OFD_SETLKW``) on the target file while it
recovers, journals and writes, so two processes committing to one file, or a recovery running
beside a live commit, never interleave. Commits are short, so this lock waits. OFD locks and
``flock`` locks are independent on Linux, so a commit does not wait for an open Appender.

**Held directories** (:func:`held_directory`). A private hidden directory next to an output
(``.<name>.bigarr-<kind>-<16 hex>``), for files staged before the output is written (a lazy
``to_zarr`` of a filter), whose creator holds an ``flock`` on it for as long as it is used.
Every new one first removes the directories of that kind the kernel says no one holds (their
creator was killed: ``flock`` locks go with the process), and never one that is held, so
two concurrent writers never remove each other's. A directory is removed only after its
remover has locked it and checked the name still leads to it; a creator that finds its new
directory locked or gone (a sweep took it in the moment before it locked it) makes another.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import stat
import struct
import weakref
from collections.abc import Iterator

from bigarr._os.fileid import hidden_name, leftovers
from bigarr._os.paths import os_error
from bigarr.errors import FileExistsError_, OutputLockedError, ReadOnlyError

__all__ = ["OutputLock", "commit_lock", "held_directory", "lock_path", "sweep_directories"]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


def lock_path(target: str) -> str:
    """The lock file of an output: ``.<name>.bigarr-lock`` in the output's folder."""
    folder, name = os.path.split(target)
    return os.path.join(folder, f".{name}.bigarr-lock")


def _busy(target: str) -> OutputLockedError:
    return OutputLockedError(
        f"Another run is writing {target} (an open Appender or a map_blocks run, in this or "
        "another process, holds its lock). Writers of one output exclude each other: wait for "
        "that run to finish, or write to another path."
    )


class OutputLock:
    """An exclusive, non-waiting lock on an output path; a context manager.

    ``in_place=True`` for a writer that writes the existing file ``target`` (``fd``: a
    descriptor of it, so the lock is on the file written even if the name was replaced since);
    otherwise a writer that replaces ``target`` (see the module docstring).

    Raises
    ------
    OutputLockedError
        If another writer holds the output.
    FileExistsError_
        If something other than a lock file (a link, a special file) is at the lock name.
    """

    def __init__(self, target: str, *, in_place: bool = False, fd: int | None = None) -> None:
        self.target = target
        self.path = lock_path(target)
        self._fd = -1
        self._file_fd = -1
        self._own_file = True
        if in_place:
            self._lock_target(fd)
            return
        self._acquire()
        try:
            self._lock_existing()
        except BaseException:
            self.release()
            raise

    def _lock_existing(self) -> None:
        """A replacing writer also locks the file it replaces (excluding in-place writers)."""
        if not self._own_file:
            return  # the output itself is locked already (no lock file could be made)
        try:
            fd = os.open(self.target, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | _NONBLOCK)
        except OSError:
            return  # nothing (or nothing openable) there: nothing an in-place writer holds
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                return
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(self.target) from None
        self._file_fd = fd
        self._file_finalizer = weakref.finalize(self, os.close, fd)

    def _open(self) -> int | None:
        try:
            return os.open(self.path, os.O_RDONLY | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK,
                           0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise FileExistsError_(
                    f"{self.path} is a symbolic link, not bigarr's lock file for {self.target}; "
                    "bigarr never follows links at its own hidden names. Remove it."
                ) from None
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and os.path.exists(
                    self.target):
                return None  # no lock file can be made here: lock the output itself
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise ReadOnlyError(
                    f"Cannot create {self.path} to lock {self.target}: {exc.strerror}. Choose "
                    "a folder you can write to."
                ) from None
            raise os_error(exc, self.target, writing=True) from None  # named as the user did

    def _acquire(self) -> None:
        while True:
            fd = self._open()
            if fd is None:
                self._lock_target()
                return
            st = os.fstat(fd)
            if stat.S_ISREG(st.st_mode) and st.st_nlink == 0:
                os.close(fd)  # its holder unlinked it as we opened it: take the new one
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                os.close(fd)
                raise FileExistsError_(
                    f"{self.path} is not bigarr's lock file for {self.target} (a special file "
                    "or a file with other hard links). Remove it."
                )
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise _busy(self.target) from None
            try:
                now = os.lstat(self.path)
            except FileNotFoundError:
                now = None
            if now is not None and (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                self._hold(fd)
                return
            os.close(fd)  # the holder unlinked it as we opened it: take the new one

    def _lock_target(self, held: int | None = None) -> None:
        """Lock the output file itself: through a new open of ``held`` (a descriptor of it the
        writer has) where ``/proc`` allows, so the lock is on the very file written."""
        try:
            if held is not None and os.path.isdir("/proc/self/fd"):
                fd = os.open(f"/proc/self/fd/{held}", os.O_RDONLY | _CLOEXEC | _NONBLOCK)
            else:
                fd = os.open(self.target, os.O_RDONLY | _CLOEXEC | _NONBLOCK)
        except OSError as exc:
            raise ReadOnlyError(
                f"Cannot lock {self.target}: {exc.strerror}. Choose a folder you can write to."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(self.target) from None
        self._own_file = False
        self._hold(fd)

    def _hold(self, fd: int) -> None:
        self._fd = fd
        # A holder dropped without release() (an Appender never closed) unlocks when collected.
        self._finalizer = weakref.finalize(self, os.close, fd)

    @property
    def held(self) -> bool:
        """True until :meth:`release`."""
        return self._fd >= 0

    def release(self) -> None:
        """Unlink the lock file (while still holding it) and unlock. Idempotent."""
        if self._file_fd >= 0:
            self._file_fd = -1
            self._file_finalizer()
        if self._fd < 0:
            return
        fd, self._fd = self._fd, -1
        try:
            if self._own_file:
                with contextlib.suppress(OSError):
                    st, now = os.fstat(fd), os.lstat(self.path)
                    if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                        os.unlink(self.path)
        finally:
            self._finalizer()  # closes fd, which unlocks

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# struct flock on Linux: short l_type, short l_whence, off_t l_start, off_t l_len, pid_t l_pid
_FLOCK = struct.Struct("hhqqi4x")


@contextlib.contextmanager
def commit_lock(fd: int) -> Iterator[None]:
    """Hold a waiting, whole-file OFD write lock on ``fd`` (opened for writing).

    Falls back to no lock where OFD locks are unavailable (not Linux); the per-process commit
    lock of :mod:`bigarr._core.private` still orders commits within one process there.
    """
    cmd = getattr(fcntl, "F_OFD_SETLKW", None)
    unlock_cmd = getattr(fcntl, "F_OFD_SETLK", None)
    locked = False
    if cmd is not None and unlock_cmd is not None:
        try:
            fcntl.fcntl(fd, cmd, _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
            locked = True
        except OSError as exc:  # a file system without OFD locks: the in-process lock only
            if exc.errno not in (errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
                raise
    try:
        yield
    finally:
        if locked and unlock_cmd is not None:
            with contextlib.suppress(OSError):
                fcntl.fcntl(fd, unlock_cmd, _FLOCK.pack(fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))


_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def _lock_dir(path: str) -> int | None:
    """A descriptor of the directory ``path`` (never through a link), flocked, and still at
    ``path``; None if it is gone, held by another process, or not a directory we own."""
    try:
        fd = os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise BlockingIOError  # another user's: never ours to remove
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        now = os.lstat(path)
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise FileNotFoundError  # removed (and the name taken again) before we locked it
    except OSError:
        os.close(fd)
        return None
    return fd


def sweep_directories(target: str, kind: str) -> None:
    """Remove the hidden ``kind`` directories of ``target`` (:func:`held_directory`) that no
    live process holds; held ones, links and other users' are left alone."""
    for path in leftovers(target, (kind,)):
        fd = _lock_dir(path)
        if fd is None:
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


@contextlib.contextmanager
def held_directory(target: str, kind: str) -> Iterator[str]:
    """A new private hidden directory next to ``target``, held by this process while the block
    runs and removed after it (see the module docstring); what killed holders left is removed
    first.

    Raises
    ------
    ReadOnlyError, DiskFullError, PathError
        If the directory cannot be made in ``target``'s folder.
    """
    sweep_directories(target, kind)
    while True:
        path = hidden_name(target, kind)
        try:
            os.mkdir(path, 0o700)
        except OSError as exc:
            raise os_error(exc, target, writing=True) from None
        fd = _lock_dir(path)
        if fd is not None:
            break  # (else a sweep is removing it as a dead one's: make another)
    try:
        yield path
    finally:
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
