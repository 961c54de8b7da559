"""Outputs of unknown length: grow a ``.npy`` file along its first axis, crash-safely.

How a commit works, and why a crash always leaves a valid array:

1. New rows are written with ``pwrite`` *after* the rows the header describes. The header still
   says the old length, so readers (and a crash) see the old, valid array; the extra bytes are
   an unused tail, which ``np.load`` and :func:`bigarr.open` ignore.
2. Space is reserved in large steps (``step`` bytes, default 64 MiB) with ``posix_fallocate``,
   so a full disk is an exception at append time rather than a SIGBUS for a later reader, and
   the file does not grow by a few blocks per call.
3. :meth:`Appender.commit` makes the data durable first (``fdatasync``), and only then rewrites
   the shape in the header in place (:func:`bigarr._formats.npy.rewrite_shape`) and syncs again.
   The header is one small ``pwrite`` inside the first page; the data offset never moves,
   because bigarr's page-aligned header has thousands of spare bytes for a longer shape (and
   numpy's own headers reserve room for the first axis to grow).
4. :meth:`Appender.close` commits, then trims the reserved tail.

Only C-ordered arrays (or 1-D ones) can grow along axis 0 without moving data; Fortran-ordered
files are refused. So is a file whose header has no spare bytes for a longer shape: the rows a
header can record are computed when the Appender opens the file, and an append past them is
refused *before* any byte is written (issue 11: it used to fail only at commit, after the data
was written, and leak the descriptor and the reserved space).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._core.files import create_held, file_path, preallocate
from bigarr._formats.npy import NpyHeader, build_header, check_dtype, read_header, rewrite_shape
from bigarr._os.durable import datasync, pwrite_all
from bigarr._os.geometry import align_up, parse_size
from bigarr._os.lock import OutputLock
from bigarr._os.paths import os_error
from bigarr.errors import (
    DiskFullError,
    DtypeError,
    FileChangedError,
    FileMissingError,
    HeaderError,
    NotAFileError,
    ShapeError,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Appender", "append"]


class Appender:
    """Append rows to a ``.npy`` file along its first axis; a context manager.

    Parameters
    ----------
    path
        The ``.npy`` file. If it does not exist (or ``overwrite``), a page-aligned file of shape
        ``(0, *row_shape)`` is created; otherwise rows are added to the existing array, whose
        dtype and row shape must match any given here.
    dtype
        Element type; required when creating.
    row_shape
        Shape of one row (``()`` for a 1-D array); default ``()`` when creating.
    step
        Bytes reserved on disk at a time as the file grows (default ``"64MiB"``).
    commit_every
        Commit automatically once this many bytes are pending (default: ``step``).
    overwrite
        Replace an existing file with a new, empty one.

    Raises
    ------
    DtypeError, ShapeError
        For a dtype or row shape that does not match the existing file, or a Fortran-ordered
        file with more than one dimension.
    FileMissingError
        If the file does not exist and no ``dtype`` is given.
    OutputLockedError
        If another Appender or ``map_blocks`` run (in any process) is writing the file: an
        open Appender holds the file's output lock until :meth:`close`.

    Notes
    -----
    Rows become visible (and durable) at :meth:`commit`, automatically every ``commit_every``
    bytes, and at :meth:`close`; leaving a ``with`` block closes, so it commits too, also when
    the block raises. Use :meth:`discard` first to drop uncommitted rows instead.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        dtype: Any = None,
        row_shape: tuple[int, ...] | None = None,
        *,
        step: int | str = "64MiB",
        commit_every: int | str | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = file_path(path)
        self._step = parse_size(step, name="step")
        self._commit_every = parse_size(commit_every or step, name="commit_every")
        self._lock = threading.Lock()
        self._fd = -1
        if (overwrite or not os.path.lexists(self.path)) and dtype is None:
            raise FileMissingError(
                f"{self.path} does not exist; pass dtype= (and row_shape=) to create it."
            )
        self._output_lock: OutputLock | None = None
        try:
            if overwrite or not os.path.lexists(self.path):
                dt = check_dtype(dtype)
                shape = (0, *(row_shape or ()))
                with OutputLock(self.path):  # as a writer that replaces the file
                    create_held(self.path, shape, dt, overwrite=overwrite).close()
                    self._open_locked()
            else:
                self._open_locked()
            st = os.fstat(self._fd)
            with os.fdopen(os.dup(self._fd), "rb") as f:
                header = read_header(f, st.st_size, name=self.path)
            self._check(header, dtype, row_shape)
            self._max_rows = _header_capacity(header)
            if self._max_rows <= header.shape[0]:
                raise HeaderError(
                    f"{self.path}'s header has no spare bytes to record a longer shape than "
                    f"{header.shape}, and its data cannot move. Nothing was written; copy it "
                    "with 'bigarr convert' (which pads the header) and append to the copy."
                )
        except BaseException:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
            if self._output_lock is not None:
                self._output_lock.release()
            raise
        self._header: NpyHeader = header
        self.dtype: np.dtype[Any] = header.dtype
        """Element type."""
        self.row_shape: tuple[int, ...] = header.shape[1:]
        """Shape of one row."""
        self._row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        self._committed = header.shape[0]
        self._pending = 0
        self._allocated = os.fstat(self._fd).st_size

    def _open_locked(self) -> None:
        """Open the file and lock it (one writer at a time, across processes), as a writer in
        place: the lock is on the file itself, so a killed Appender leaves no lock file."""
        try:
            self._fd = os.open(self.path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:  # EROFS, EACCES, ELOOP, ENOTDIR, ...
            raise os_error(exc, self.path, writing=True) from None
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):  # a FIFO would block a header read
            raise NotAFileError(f"Expected a regular .npy file to append to. Got a directory "
                                f"or special file: {self.path}")
        self._output_lock = OutputLock(self.path, in_place=True, fd=self._fd)

    def _check(self, header: NpyHeader, dtype: Any, row_shape: tuple[int, ...] | None) -> None:
        if not header.shape:
            raise ShapeError(f"{self.path} holds a 0-d array; only arrays with rows can grow.")
        if header.fortran_order and len(header.shape) > 1:
            raise ShapeError(
                f"{self.path} is in Fortran order; growing it along axis 0 would move every "
                "column. Append to a C-ordered file instead."
            )
        if dtype is not None and check_dtype(dtype) != header.dtype:
            raise DtypeError(f"{self.path} holds {header.dtype}, not {np.dtype(dtype)}.")
        if row_shape is not None and tuple(row_shape) != header.shape[1:]:
            raise ShapeError(
                f"{self.path} has rows of shape {header.shape[1:]}, not {tuple(row_shape)}."
            )

    # ---- state -------------------------------------------------------------------------------
    @property
    def committed(self) -> int:
        """Rows the header describes: durable, and what a reader (or a crash) sees."""
        return self._committed

    def __len__(self) -> int:
        """Rows appended so far, committed or not."""
        return self._committed + self._pending

    def fileno(self) -> int:
        """The file descriptor of the open file (for identity checks; do not close it)."""
        self._check_open()
        return self._fd

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._fd < 0

    def _check_open(self) -> None:
        if self._fd < 0:
            from bigarr.errors import ClosedError

            raise ClosedError(f"The appender of {self.path} is closed.")

    # ---- writing -----------------------------------------------------------------------------
    def _rows(self, rows: Any) -> np.ndarray[Any, Any]:
        arr = np.asarray(rows)
        if not np.can_cast(arr.dtype, self.dtype, "same_kind"):
            raise DtypeError(
                f"Expected rows castable to {self.dtype} (same kind). Got {arr.dtype}."
            )
        if arr.ndim == len(self.row_shape):
            arr = arr[np.newaxis]
        if arr.shape[1:] != self.row_shape:
            raise ShapeError(
                f"Expected rows of shape (n, {', '.join(map(str, self.row_shape))}) for "
                f"{self.path}. Got an array of shape {arr.shape}."
            )
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def append(self, rows: Any) -> int:
        """Write ``rows`` after the existing ones; they become visible at the next commit.

        ``rows`` has shape ``(n, *row_shape)`` (or ``row_shape`` for a single row). Commits
        automatically once ``commit_every`` bytes are pending.

        Returns
        -------
        int
            The number of rows appended so far (committed or not).

        Raises
        ------
        DtypeError, ShapeError
            For rows of another kind of dtype or another row shape.
        DiskFullError
            If the disk has no room for the reserved space.
        """
        arr = self._rows(rows)
        with self._lock:
            self._check_open()
            total = self._committed + self._pending + arr.shape[0]
            if total > self._max_rows:
                raise HeaderError(
                    f"{self.path}'s header has room to record at most {self._max_rows} rows "
                    f"(its data cannot move); appending {arr.shape[0]} would make {total}. "
                    "Nothing was written; copy the file with 'bigarr convert' (which pads the "
                    "header) and append to the copy."
                )
            start = self._header.data_offset + (self._committed + self._pending) * self._row_bytes
            stop = start + arr.nbytes
            try:
                if stop > self._allocated:
                    self._reserve(stop)
                pwrite_all(self._fd, arr, start)
            except OSError as exc:
                raise os_error(exc, self.path, writing=True) from None
            self._pending += arr.shape[0]
            due = self._pending * self._row_bytes >= self._commit_every
        if due:
            self.commit()
        return len(self)

    def _reserve(self, stop: int) -> None:
        """Preallocate up to ``stop`` bytes, a ``step`` ahead when the disk has room for that."""
        grow = align_up(max(stop, self._allocated + self._step), 1 << 20)
        try:
            preallocate(self._fd, self._allocated, grow - self._allocated, self.path)
        except DiskFullError:
            if grow <= stop:
                raise
            grow = stop  # no room to reserve ahead: reserve what these rows need, no more
            preallocate(self._fd, self._allocated, grow - self._allocated, self.path)
        self._allocated = grow

    def commit(self) -> int:
        """Make pending rows durable, then publish them in the header.

        Returns
        -------
        int
            The committed number of rows.

        Raises
        ------
        FileChangedError
            If the file was replaced, removed or cut shorter under the Appender (by another
            process): nothing is published, and a replacing file is never touched.
        """
        with self._lock:
            self._check_open()
            if self._pending:
                try:
                    datasync(self._fd)  # the data is durable before the header may point at it
                    self._set_length(self._committed + self._pending)
                except OSError as exc:
                    raise os_error(exc, self.path, writing=True) from None
                self._pending = 0
            return self._committed

    def _check_same_file(self, rows: int, fd: int | None = None) -> None:
        """Refuse to publish ``rows`` unless ``path`` still names the file written and that
        file still holds them (another process may truncate or replace it under us).

        Raises
        ------
        FileChangedError
            If ``path`` now names another file (or none), or the file is too short for
            ``rows`` rows.
        """
        held = os.fstat(self._fd if fd is None else fd)
        need = self._header.data_offset + rows * self._row_bytes
        try:
            now: os.stat_result | None = os.stat(self.path)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino):
            raise FileChangedError(
                errno.ESTALE, f"{self.path} was replaced or removed while an Appender wrote "
                f"it; the {self._pending} uncommitted rows went to the old file and are not "
                "published, and the new file was not touched. Append to the new file anew."
            )
        if held.st_size < need:
            raise FileChangedError(
                errno.EIO, f"{self.path} was cut to {held.st_size} bytes while an Appender "
                f"wrote it; {rows} rows need {need}. Nothing was published (the header still "
                f"says {self._committed} rows); check the file and append anew."
            )

    def _set_length(self, rows: int) -> None:
        self._check_same_file(rows)
        self._header = rewrite_shape(self._fd, self._header, (rows, *self.row_shape))
        datasync(self._fd)
        self._committed = rows

    def truncate(self, rows: int) -> None:
        """Shrink the committed array to its first ``rows`` rows (drops pending rows too).

        Used to roll an output back to the length a resume journal recorded.

        Raises
        ------
        ShapeError
            If ``rows`` is negative or more than the committed rows.
        """
        with self._lock:
            self._check_open()
            if not 0 <= rows <= self._committed:
                raise ShapeError(f"Expected 0 <= rows <= {self._committed}. Got {rows}.")
            self._pending = 0
            if rows != self._committed:
                self._set_length(rows)

    def discard(self) -> None:
        """Forget rows appended since the last commit."""
        with self._lock:
            self._pending = 0

    def close(self) -> None:
        """Commit, trim the reserved tail, and close the file and release its lock. Idempotent.

        The descriptor is closed and the reserved tail trimmed even if the commit fails; the
        commit's error is then raised (the file keeps its last committed rows).
        """
        if self._fd < 0:
            return
        try:
            self.commit()
        finally:
            with self._lock:
                fd, self._fd = self._fd, -1
                try:
                    if fd >= 0:
                        end = self._header.data_offset + self._committed * self._row_bytes
                        with contextlib.suppress(OSError):  # a tail left is unused, never wrong
                            self._check_same_file(self._committed, fd)  # never cut another's file
                            if os.fstat(fd).st_size > end:
                                os.ftruncate(fd, end)
                                datasync(fd)
                finally:
                    if fd >= 0:
                        os.close(fd)
                    if self._output_lock is not None:
                        self._output_lock.release()

    def __enter__(self) -> Appender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} rows ({self._committed} committed)"
        return f"<bigarr.Appender {os.path.basename(self.path)} {self.dtype} {state}>"


def _header_capacity(header: NpyHeader) -> int:
    """The most rows a rewrite of ``header``'s shape in place can record (-1: none).

    The data must not move, so the rewritten header must fit in ``header.data_offset`` bytes;
    the shape's text grows by one character per decimal digit of the row count.
    """
    rows = header.shape[1:]
    best = -1
    for digits in range(1, 20):
        try:
            build_header((10**digits - 1, *rows), header.dtype, header.fortran_order,
                         total=header.data_offset)
        except HeaderError:
            break
        best = 10**digits - 1
    return best


def append(path: str | os.PathLike[str], rows: Any, *, dtype: Any = None) -> int:
    """Append ``rows`` to the ``.npy`` file at ``path`` (created if missing), durably.

    Parameters
    ----------
    path
        The file. A missing file is created with the rows' dtype (or ``dtype``) and row shape.
    rows
        Array-like of shape ``(n, *row_shape)``.
    dtype
        Element type for a new file (default: the rows' dtype).

    Returns
    -------
    int
        The array's length after the append.

    Raises
    ------
    DtypeError, ShapeError
        If the rows do not match the existing file.
    """
    arr = np.asarray(rows)
    target = file_path(path)
    if os.path.exists(target):
        with Appender(target) as app:
            app.append(arr)
            return app.commit()
    if arr.ndim == 0:
        raise ShapeError("Expected rows with at least one dimension to create a file from.")
    with Appender(target, dtype if dtype is not None else arr.dtype, arr.shape[1:]) as app:
        app.append(arr)
        return app.commit()
