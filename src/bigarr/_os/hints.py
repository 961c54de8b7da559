"""Access hints: the madvise vocabulary bigarr accepts, and what this platform supports.

Names are parsed once here into :class:`Hint` values; the mapping layer applies them. A hint the
platform lacks (macOS has no ``populate_read``; Windows has no madvise at all) is a documented
no-op: :meth:`bigarr.memmap.advise` returns ``False`` instead of raising, and
:func:`supported_hints` tells which names take effect here.
"""

from __future__ import annotations

import mmap
import sys
from dataclasses import dataclass

from bigarr.errors import HintError

__all__ = ["HINT_NAMES", "Hint", "parse_hint", "supported_hints"]

_LINUX = sys.platform.startswith("linux")

# Linux numbers Python 3.11's mmap module does not name (uapi/asm-generic/mman-common.h).
_LINUX_EXTRA = {"cold": 20, "pageout": 21, "populate_read": 22, "populate_write": 23}


@dataclass(frozen=True, slots=True)
class Hint:
    """One access hint, normalised."""

    name: str
    """Canonical lower-case name, e.g. ``"willneed"``."""
    advice: int | None
    """The ``madvise`` constant, or ``None`` where the platform lacks it (a no-op)."""
    drops_pages: bool
    """True when the hint can throw away page contents (private-mode scratch edits)."""
    needs_write: bool
    """True when the hint needs a writable mapping (``populate_write``)."""


def _advice(name: str) -> int | None:
    value = getattr(mmap, f"MADV_{name.upper()}", None)
    if value is None and _LINUX:
        value = _LINUX_EXTRA.get(name)
    return value


HINT_NAMES: tuple[str, ...] = (
    "normal",
    "sequential",
    "random",
    "willneed",
    "dontneed",
    "hugepage",
    "nohugepage",
    "populate_read",
    "populate_write",
    "cold",
    "pageout",
)
_DROPS = {"dontneed", "pageout"}
_TABLE = {
    name: Hint(name, _advice(name), name in _DROPS, name == "populate_write")
    for name in HINT_NAMES
}


def parse_hint(hint: str | Hint) -> Hint:
    """Normalise a hint name (case-insensitive; ``-`` and ``_`` are interchangeable).

    Raises
    ------
    HintError
        For a name not in :data:`HINT_NAMES`.
    """
    if isinstance(hint, Hint):
        return hint
    if not isinstance(hint, str):
        raise HintError(f"Expected a hint name such as 'sequential'. Got {hint!r}.")
    key = hint.strip().lower().replace("-", "_")
    if key.startswith("madv_"):
        key = key[5:]
    try:
        return _TABLE[key]
    except KeyError:
        raise HintError(
            f"Expected one of {', '.join(HINT_NAMES)}. Got {hint!r}."
        ) from None


def supported_hints() -> tuple[str, ...]:
    """Names of the hints that take effect on this platform; the others are no-ops here.

    The list reflects what Python and the OS name. An old kernel can still reject a named hint
    (for example ``populate_read`` before Linux 5.14); bigarr then treats it as a no-op too.
    """
    return tuple(name for name, hint in _TABLE.items() if hint.advice is not None)
