"""Mode names: bigarr's own and numpy's spellings, parsed once into a canonical value.

========================  ==========  =================================================
accepted spellings        canonical   meaning
========================  ==========  =================================================
r, readonly               readonly    MAP_SHARED, read-only: writes raise
r+, shared, readwrite     shared      MAP_SHARED: edits reach the file
c, private, copyonwrite   private     MAP_PRIVATE: copy-on-write edits in memory only
w+, write                 shared      create (or overwrite) the file, then as shared
========================  ==========  =================================================
"""

from __future__ import annotations

from typing import Literal

from bigarr.errors import ModeError

__all__ = ["Access", "NUMPY_MODE", "parse_mode"]

Access = Literal["readonly", "shared", "private"]

_MODES: dict[str, tuple[Access, bool]] = {
    "r": ("readonly", False),
    "readonly": ("readonly", False),
    "r+": ("shared", False),
    "shared": ("shared", False),
    "readwrite": ("shared", False),
    "c": ("private", False),
    "private": ("private", False),
    "copyonwrite": ("private", False),
    "w+": ("shared", True),
    "write": ("shared", True),
}

#: numpy.memmap's ``mode`` attribute value for each access mode.
NUMPY_MODE: dict[Access, str] = {"readonly": "r", "shared": "r+", "private": "c"}


def parse_mode(mode: str) -> tuple[Access, bool]:
    """Return ``(access, create)`` for a mode name.

    Raises
    ------
    ModeError
        For an unknown mode.
    """
    try:
        return _MODES[mode.strip().lower()] if isinstance(mode, str) else _MODES[mode]
    except (KeyError, TypeError):
        raise ModeError(
            "Expected mode 'r'/'readonly', 'r+'/'shared', 'c'/'private' or 'w+'. "
            f"Got {mode!r}."
        ) from None
