"""Alignment arithmetic: byte spans, page rounding and sizes, as pure functions and values.

Every page or alignment computation in bigarr lives here, so that the mapping, chunk planning and
flush code never round by hand. Spans are half-open ``[start, stop)`` byte ranges.

Why rounding matters: ``madvise`` and ``msync`` need a page-aligned start (Linux returns EINVAL
otherwise). A hint is rounded *outward* (it may cover a little more than asked, never less), a
destructive operation such as dropping pages is rounded *inward* when partial pages belong to
someone else, and both are clipped to the mapping so they never go past it.
"""

from __future__ import annotations

import mmap
import numbers
import re
from dataclasses import dataclass

from bigarr.errors import BudgetError, RegionError

__all__ = [
    "ByteSpan",
    "PAGE_SIZE",
    "TABLE_SPAN",
    "align_down",
    "align_up",
    "default_alignment",
    "format_bytes",
    "parse_size",
]

#: The virtual-memory page size of this machine, in bytes.
PAGE_SIZE: int = mmap.PAGESIZE


def _table_span() -> int:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") as f:
            size = int(f.read())
    except (OSError, ValueError):
        size = 0
    # 2 MiB with 4 KiB pages; where the PMD is far larger (512 MiB with 64 KiB pages) dropping
    # whole units would cost too many re-faults, so 2 MiB stands in (still a page multiple).
    return size if PAGE_SIZE <= size <= 32 << 20 else max(PAGE_SIZE, 2 << 20)


#: Bytes of address space one page table maps (a PMD entry: 2 MiB with 4 KiB pages). A page
#: fault never maps pages across such a boundary (fault-around and large page-cache folios stay
#: within one page table), and a file's 2 MiB folio is mapped by one PMD entry only when the
#: whole unit is mapped; dropping part of one splits it into 512 small entries. Release-behind
#: therefore drops whole units (:meth:`bigarr._os.mapping.Mapping.table_span`).
TABLE_SPAN: int = _table_span()


def default_alignment() -> int:
    """Return the default data alignment for new files: the page size, never less than 4096."""
    return max(PAGE_SIZE, 4096)


def align_down(value: int, alignment: int) -> int:
    """Round ``value`` down to a multiple of ``alignment`` (a positive integer)."""
    return value - value % alignment


def align_up(value: int, alignment: int) -> int:
    """Round ``value`` up to a multiple of ``alignment`` (a positive integer)."""
    return -(-value // alignment) * alignment


@dataclass(frozen=True, slots=True)
class ByteSpan:
    """A half-open byte range ``[start, stop)``."""

    start: int
    """First byte of the span."""
    stop: int
    """One past the last byte of the span; ``stop >= start``."""

    def __post_init__(self) -> None:
        if self.start < 0 or self.stop < self.start:
            raise RegionError(
                f"Expected a byte span with 0 <= start <= stop. Got [{self.start}, {self.stop})."
            )

    @property
    def nbytes(self) -> int:
        """Length of the span in bytes."""
        return self.stop - self.start

    def outward(self, page: int = PAGE_SIZE) -> ByteSpan:
        """The smallest page-aligned span that contains this one."""
        if self.nbytes == 0:
            return ByteSpan(align_down(self.start, page), align_down(self.start, page))
        return ByteSpan(align_down(self.start, page), align_up(self.stop, page))

    def inward(self, page: int = PAGE_SIZE) -> ByteSpan:
        """The largest page-aligned span contained in this one (possibly empty)."""
        start, stop = align_up(self.start, page), align_down(self.stop, page)
        return ByteSpan(start, max(start, stop))

    def clip(self, other: ByteSpan) -> ByteSpan:
        """The intersection with ``other`` (empty at ``other``'s edge when they do not meet)."""
        start = min(max(self.start, other.start), other.stop)
        return ByteSpan(start, max(start, min(self.stop, other.stop)))

    def shift(self, delta: int) -> ByteSpan:
        """The same span moved by ``delta`` bytes."""
        return ByteSpan(self.start + delta, self.stop + delta)

    def pages(self, page: int = PAGE_SIZE) -> range:
        """Indices of the pages this span touches (page ``i`` covers ``[i*page, (i+1)*page)``)."""
        outer = self.outward(page)
        return range(outer.start // page, outer.stop // page)


_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | numbers.Integral | str, *, name: str = "size") -> int:
    """Normalise a byte count given as an int (Python's or numpy's) or a string such as
    ``"256MiB"`` or ``"2 GB"``.

    Binary units (KiB, MiB, GiB, TiB) are powers of 1024, decimal ones (kB, MB, GB, TB) powers
    of 1000; a bare number is bytes.

    Raises
    ------
    BudgetError
        If the value is not a positive size.
    """
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str)):
        shown = repr(value) if isinstance(value, (bool, numbers.Number)) else type(value).__name__
        raise BudgetError(f"Expected {name} as bytes or a string like '256MiB'. Got {shown}.")
    if isinstance(value, numbers.Integral):  # numpy integers too (numpy.bool_ is not one)
        nbytes = int(value)
    else:
        match = _SIZE_RE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise BudgetError(
                f"Expected {name} like '512MiB', '2GiB' or a number of bytes. Got {value!r}."
            )
        nbytes = int(float(match.group(1)) * _UNITS[unit])
    if nbytes <= 0:
        raise BudgetError(f"Expected a positive {name}. Got {value!r}.")
    return nbytes


def format_bytes(nbytes: float) -> str:
    """Render a byte count with a binary unit, e.g. ``format_bytes(3 << 20) == '3.0 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")
