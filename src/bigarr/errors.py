"""The bigarr exception tree.

Every error bigarr raises derives from :class:`BigArrError`, and each one also derives from the
builtin exception a user would already catch, so ``except ValueError`` or ``except OSError`` code
keeps working::

    BigArrError (Exception)
    ├── FormatError (ValueError)            the bytes are not a usable .npy file
    │   ├── HeaderError                     magic, version or header dict is corrupt or oversized
    │   └── TruncatedFileError              the data section is shorter than the header says
    ├── DtypeError (TypeError)              object dtypes and others that cannot be mapped
    ├── ShapeError (ValueError)             negative, non-integer or overflowing shapes
    ├── ModeError (ValueError)              unknown mode, or a mode that cannot apply here
    ├── RegionError (IndexError)            a region outside the array, or not expressible
    ├── AxisError (numpy.exceptions.AxisError: ValueError, IndexError)  an axis out of range
    ├── HintError (ValueError)              an unknown access hint, or one refused in this mode
    ├── BudgetError (ValueError)            a memory plan that cannot fit its budget
    ├── NonFiniteError (numpy.linalg.LinAlgError, a ValueError)  NaN or inf data a
    │                                       decomposition cannot use
    ├── ClosedError (ValueError)            use of a closed array (like I/O on a closed file)
    ├── MappingBusyError (BufferError)      close() while other views still point into the mapping
    ├── ReadOnlyError (PermissionError)     writing through a read-only file or mapping
    ├── AccessDeniedError (PermissionError) the file (or a directory on its path) cannot be read
    ├── FileMissingError (FileNotFoundError)
    ├── NotAFileError (IsADirectoryError)   a directory or other non-regular file
    ├── FileExistsError_ (FileExistsError)  create() would replace an existing path
    ├── PathError (OSError)                 a path the OS refuses: symlink loop, name too long
    │   └── NotADirError (NotADirectoryError)  a part of the path that must be a directory is not
    ├── InvalidPathError (ValueError)       a path no file can have (an embedded NUL byte)
    ├── DiskFullError (OSError)             no room on disk to preallocate a new file
    ├── MappingError (OSError)              the OS refused to map, advise or sync a range
    ├── FileChangedError (OSError)          the file shrank or changed under an open array
    ├── PickleError_ (TypeError)            an array that cannot be pickled by reference
    ├── ArgumentError (TypeError)           an argument of a type bigarr cannot use
    ├── ArgumentValueError (ValueError)     an argument's value refused, where numpy raises
    │                                       ValueError (histogram bins=0, a range not finite)
    ├── IncompleteOutputError (RuntimeError)  an output left behind by a run that did not finish
    ├── OutputLockedError (BlockingIOError)  another run (process or thread) is writing the output
    ├── ScratchLimitError (MemoryError)     private-mode edits would exceed their scratch_limit
    ├── MissingExtraError (ImportError)     an optional extra (dask) is not installed
    └── UnsupportedError (NotImplementedError)  a feature this platform or kernel lacks

    IncompleteOutputWarning (UserWarning)   open() of an output whose writing run did not finish
    StaleJournalWarning (UserWarning)       a journal that does not describe this file or run was
                                            set aside (never trusted)
"""

from __future__ import annotations

import errno as _errno

import numpy as _np
from numpy.linalg import LinAlgError as _LinAlgError

__all__ = [
    "AccessDeniedError",
    "ArgumentError",
    "ArgumentOverflowError",
    "ArgumentValueError",
    "AxisError",
    "BigArrError",
    "BudgetError",
    "ClosedError",
    "DiskFullError",
    "DtypeError",
    "FileChangedError",
    "FileExistsError_",
    "FileMissingError",
    "FormatError",
    "HeaderError",
    "HintError",
    "IncompleteOutputError",
    "IncompleteOutputWarning",
    "InvalidPathError",
    "MappingBusyError",
    "MappingError",
    "MissingExtraError",
    "ModeError",
    "NonFiniteError",
    "NotADirError",
    "NotAFileError",
    "PathError",
    "OutputLockedError",
    "PickleError_",
    "ReadOnlyError",
    "RegionError",
    "ScratchLimitError",
    "ShapeError",
    "StaleJournalWarning",
    "TruncatedFileError",
    "UnsupportedError",
]


class BigArrError(Exception):
    """Root of every error raised by bigarr."""

    def __str__(self) -> str:
        # OSError subclasses built as (errno, message) show the message alone, without the
        # "[Errno N]" prefix: the message already says what happened.
        if isinstance(self, OSError) and self.errno is not None and self.filename is None:
            return str(self.strerror)
        return super().__str__()


class FormatError(BigArrError, ValueError):
    """The file is not a ``.npy`` file bigarr can map."""


class HeaderError(FormatError):
    """The ``.npy`` magic, version or header dictionary is corrupt, unsupported or oversized."""


class TruncatedFileError(FormatError):
    """The file's data section is shorter than its header (or the caller) says.

    Raised *before* mapping, because touching a mapped page past the end of a file kills the
    process with SIGBUS.
    """


class DtypeError(BigArrError, TypeError):
    """The dtype holds Python objects or otherwise cannot live in a memory-mapped file."""


class ShapeError(BigArrError, ValueError):
    """A shape that is negative, not made of integers, or whose byte size overflows."""


class ModeError(BigArrError, ValueError):
    """An unknown mode name, or a mode that does not apply to this operation."""


class RegionError(BigArrError, IndexError):
    """A region that lies outside the array or cannot be expressed as a byte range, or an index
    (a row mask) that does not fit the array."""


class AxisError(BigArrError, _np.exceptions.AxisError):
    """An ``axis`` out of range for the array's dimensions, as numpy's ``AxisError`` (so also a
    ``ValueError`` and an ``IndexError``); ``axis`` and ``ndim`` are set as numpy sets them.
    """


class HintError(BigArrError, ValueError):
    """An unknown access hint, or a hint refused in this mode (it would lose scratch edits)."""


class BudgetError(BigArrError, ValueError):
    """A memory plan that cannot fit within its budget; the message quotes both numbers."""


class NonFiniteError(BigArrError, _LinAlgError):
    """The data hold NaN or inf values where a decomposition needs finite ones.

    Also a :class:`numpy.linalg.LinAlgError` (so a ``ValueError``), as numpy's ``svd`` and
    :func:`bigarr.linalg.svd` raise for such data.
    """


class ClosedError(BigArrError, ValueError):
    """The array's mapping has been closed."""


class MappingBusyError(BigArrError, BufferError):
    """``close()`` was called while other views still point into the mapping."""


class ReadOnlyError(BigArrError, PermissionError):
    """A write through a read-only file or a read-only mapping."""


class AccessDeniedError(BigArrError, PermissionError):
    """The OS denies reading the file, or searching a directory on its path."""


class FileMissingError(BigArrError, FileNotFoundError):
    """The path does not exist."""


class NotAFileError(BigArrError, IsADirectoryError):
    """The path is a directory or another kind of non-regular file."""


class FileExistsError_(BigArrError, FileExistsError):
    """Creating the file would replace an existing path; pass ``overwrite=True`` to allow it."""


class DiskFullError(BigArrError, OSError):
    """There is no room on the file system to preallocate a new file."""

    def __init__(self, message: str, code: int = _errno.ENOSPC) -> None:
        # ``code``: the OS's errno (ENOSPC, or EDQUOT or EFBIG for a quota or a file size limit)
        super().__init__(code, message)

    def __reduce__(self) -> tuple[type[DiskFullError], tuple[str, int]]:
        # OSError pickles as (errno, strerror); this constructor takes them the other way round
        return type(self), (str(self.strerror), int(self.errno or _errno.ENOSPC))


class PathError(BigArrError, OSError):
    """The OS refuses the path itself: a symlink loop, a name too long, an I/O error on it.

    ``errno`` is the OS's code (``ELOOP``, ``ENAMETOOLONG``, ...).
    """


class NotADirError(PathError, NotADirectoryError):
    """A part of the path that must be a directory is a file (``ENOTDIR``)."""


class InvalidPathError(BigArrError, ValueError):
    """A path no file can have, such as one with an embedded NUL byte."""


class MappingError(BigArrError, OSError):
    """The operating system refused to map, advise, sync or inspect a range."""


class FileChangedError(BigArrError, OSError):
    """The file changed (for example shrank) under an open array."""


class PickleError_(BigArrError, TypeError):
    """The array cannot be pickled as a file reference (for example private-mode scratch edits)."""


class ArgumentError(BigArrError, TypeError):
    """An argument of a type bigarr cannot use (for example ``progress=42``)."""


class ArgumentValueError(BigArrError, ValueError):
    """An argument of the right type whose value bigarr refuses where numpy raises
    ``ValueError`` (``histogram`` with ``bins=0``, or a ``range`` that is not finite or not
    increasing); the message keeps numpy's meaning.
    """


class ArgumentOverflowError(BigArrError, OverflowError):
    """An argument whose value does not fit where numpy raises ``OverflowError`` (a Python
    integer out of the bounds of an integer array's dtype, NEP 50: ``int8 data + 300``)."""


class IncompleteOutputError(BigArrError, RuntimeError):
    """An output file left behind by a run that did not finish."""


class OutputLockedError(BigArrError, BlockingIOError):
    """Another run (in this or another process) is writing the same output; it holds its lock.

    Writers of one output exclude each other instead of waiting: wait for the other run to
    finish, or write to another path.
    """

    def __init__(self, message: str) -> None:
        super().__init__(_errno.EAGAIN, message)

    def __str__(self) -> str:
        return str(self.args[1])


class ScratchLimitError(BigArrError, MemoryError):
    """Private-mode edits would take (or took) the scratch pages past the ``scratch_limit``
    given to :func:`bigarr.open`; ``commit()`` or ``discard()`` frees them.

    Raised before the write for writes whose pages bigarr sees in advance, and at the next
    check otherwise; see :mod:`bigarr._core.scratch` for which is which.
    """


class StaleJournalWarning(UserWarning):
    """A journal next to a file does not describe that file (or this run) and was not trusted.

    It names another file (the name was re-created or replaced), another region, another
    function or other inputs, or it is malformed or crafted. None of its records is used; the
    message says what was done with it (replaced, or removed).
    """


class IncompleteOutputWarning(UserWarning):
    """Warned by :func:`bigarr.open` for a file that a chunked run was writing when it stopped.

    Reading is allowed (the data may be partly old, partly new); :func:`bigarr.check_complete`
    raises :class:`IncompleteOutputError` for code that must refuse such files.
    """


class MissingExtraError(BigArrError, ImportError):
    """An optional extra this feature needs is not installed; the message names the pip line."""


class UnsupportedError(BigArrError, NotImplementedError):
    """The platform or kernel lacks a feature this operation needs."""
