"""The scratch limit: how much anonymous memory a private mapping's edits may take.

A private (copy-on-write) mapping is made with ``MAP_NORESERVE`` (see
:mod:`bigarr._os.mapping`), so a file larger than RAM + swap can be opened; the kernel then
charges nothing up front and each *scratch page* (a page this process wrote) becomes anonymous
memory when it is first written. Without swap that memory cannot be paged out: edits beyond
what RAM can hold end with the OOM killer, not an exception. ``bigarr.open(path, "private",
scratch_limit="2GiB")`` bounds them instead, with :class:`~bigarr.errors.ScratchLimitError`
(a ``MemoryError``).

What bigarr can and cannot intercept. The kernel copies a page on the first write to it, from
any code; no Python hook runs first for a plain numpy write into a view. So the limit is
enforced at the points bigarr sees:

* **before the write** (nothing is written when it refuses): item assignment on a bigarr array
  with basic indexing (``x[a:b] = v``, ``view[:] = v``, ``x[i, j] = v``), with a boolean mask
  over leading axes (``x[x > 3] = 3``) or integer row indices (``x[[1, 5]] = v``) of a
  C-contiguous array, ufuncs writing into one (``np.add(x, 1, out=x)``, ``x += 1``), numpy
  functions with ``out=`` one, ``np.copyto`` and the in-place methods ``fill``, ``sort``,
  ``partition``, ``byteswap(inplace=True)``, ``setfield``: the pages written are known in
  advance;
* **right after the write** (the edit is made, and kept: commit or discard it): item
  assignment with other fancy indexes (``x[rows, cols] = v``), whose pages are not known
  without evaluating the index, ``ufunc.at``, ``x.put`` and ``np.put``/``place``/``putmask``;
* **at each step of** ``x.iter_chunks()``: the chunk just handed out is scanned, so writes
  into it from any code (plain numpy views, numba, C) are counted, once per chunk;
* **on demand**: :func:`check_scratch` (``x.check_scratch()``) scans the whole mapping.

Writes that bypass all of these (a plain ``np.asarray(x)`` view written outside an
``iter_chunks`` loop) are found only at the next check; between checks they can exceed the
limit. ``commit()`` and ``discard()`` free scratch pages and recount.

The count. Exact counts come from ``/proc/self/pagemap`` (:func:`bigarr._core.dirtypages
.page_table`; 3-6 ms per GiB of mapping here, read in 8 MiB steps). To avoid a scan per
assignment, each mapping keeps an *upper bound* of its scratch bytes (the last exact count plus
every page each checked write spans since); only when that bound would pass the limit are the
target's pages scanned (pages already copied cost nothing), and then the whole mapping. So a
loop far from the limit costs no system calls, and one at the limit costs a scan of what it
writes. Where ``/proc/self/pagemap`` is missing (not Linux), counting compares pages with the
file instead, which reads the whole mapping: there a limit costs time in proportion to the file.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bigarr._core.dirtypages import page_table
from bigarr._core.private import _private_mapping
from bigarr._os.geometry import PAGE_SIZE, ByteSpan, format_bytes, parse_size
from bigarr._plan.regions import extent
from bigarr.errors import ModeError, ScratchLimitError

if TYPE_CHECKING:
    from bigarr._os.mapping import Mapping

__all__ = ["WRITING_METHODS", "ChunkCheck", "after_write", "before_write", "call_method",
           "check_scratch", "checked_ufunc", "function_writes", "parse_limit", "recount",
           "set_limit", "setitem"]


@dataclass(slots=True)
class _Scratch:
    limit: int
    """The most scratch bytes allowed."""
    bound: int
    """An upper bound of the scratch bytes (exact after a full scan), for bigarr-visible writes."""


_STATE: weakref.WeakKeyDictionary[Mapping, _Scratch] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def parse_limit(value: int | str | None, access: str) -> int | None:
    """Normalise ``scratch_limit=`` (bytes, or a string such as ``"2GiB"``) at the boundary.

    Raises
    ------
    ModeError
        For a limit in a mode other than private.
    BudgetError
        For a value that is not a positive size.
    """
    if value is None:
        return None
    if access != "private":
        raise ModeError(
            f"scratch_limit bounds private-mode edits; this file is opened {access}. Open it "
            "with mode='private', or drop scratch_limit."
        )
    return parse_size(value, name="scratch_limit")


def _count(m: Mapping, span: ByteSpan | None = None) -> int:
    """Exact scratch bytes (whole pages) of ``span`` of the mapping (all of it by default)."""
    _first, mask = page_table(m, ByteSpan(0, m.length) if span is None else span)
    return int(np.count_nonzero(mask)) * PAGE_SIZE


def set_limit(m: Mapping, limit: int | None) -> None:
    """Give the private mapping ``m``, just made (no scratch pages yet), a scratch limit."""
    if limit is not None:
        with _LOCK:
            _STATE[m] = _Scratch(limit, 0)


def _refuse(m: Mapping, st: _Scratch, now: int, more: int, made: bool) -> ScratchLimitError:
    if made:
        what = (f"Private-mode edits of {m.path} now hold {format_bytes(now)} of scratch pages, "
                f"over its scratch_limit of {format_bytes(st.limit)}. The edits are kept")
    else:
        what = (f"This write would add up to {format_bytes(more)} of scratch pages to the "
                f"{format_bytes(now)} that edits of {m.path} already hold, over its "
                f"scratch_limit of {format_bytes(st.limit)}. Nothing was written")
    return ScratchLimitError(
        f"{what}; commit() or discard() edits to free their pages, or open the file with a "
        "larger scratch_limit (scratch pages are anonymous memory: without swap they stay in "
        "RAM until committed or discarded)."
    )


def _target_span(m: Mapping, target: np.ndarray[Any, Any] | None) -> ByteSpan:
    if target is None or target.size == 0:
        return ByteSpan(0, 0)
    return extent(target, m).outward(PAGE_SIZE).clip(ByteSpan(0, m.length))


def before_write(m: Mapping, target: np.ndarray[Any, Any]) -> None:
    """Refuse, before anything is written, a write into ``target`` (a view of the private
    mapping ``m``) that could take its scratch pages past the limit.

    Raises
    ------
    ScratchLimitError
        If the pages ``target`` spans that are not scratch pages yet, added to the mapping's
        scratch pages, exceed the limit.
    """
    _reserve(m, _target_span(m, target), None)


def _reserve(m: Mapping, span: ByteSpan,
             pages: np.ndarray[Any, np.dtype[np.bool_]] | None) -> None:
    """Admit a write to the pages of ``span`` (``pages``: only those marked, one per page of
    ``span``), or refuse it: see :func:`before_write`."""
    st = _STATE.get(m)
    if st is None:
        return
    most = span.nbytes if pages is None else int(np.count_nonzero(pages)) * PAGE_SIZE
    with _LOCK:
        if st.bound + most <= st.limit:
            st.bound += most
            return
        fresh = 0
        if most:
            _first, copied = page_table(m, span)
            hit = ~copied if pages is None else pages & ~copied
            fresh = int(np.count_nonzero(hit)) * PAGE_SIZE
        if fresh == 0 or st.bound + fresh <= st.limit:
            st.bound += fresh
            return
        now = _count(m)
        if now + fresh > st.limit:
            st.bound = now
            raise _refuse(m, st, now, fresh, made=False)
        st.bound = now + fresh


_ROWS_STEP = 1 << 20  # index entries turned into pages per step
_ROW_PAGES = 64  # rows spanning more pages than this: a fancy write is checked after it


def _fancy_pages(arr: np.ndarray[Any, Any], m: Mapping,
                 index: Any) -> tuple[ByteSpan, np.ndarray[Any, np.dtype[np.bool_]]] | None:
    """The pages an ``arr[index] = v`` with a boolean mask or an integer array over the
    leading axes of a C-contiguous ``arr`` writes, as a mask over the pages of ``arr``'s span;
    ``None`` for any other fancy index (checked after the write)."""
    idx = index[0] if isinstance(index, tuple) and len(index) == 1 else index
    if not (isinstance(idx, (np.ndarray, list)) and arr.flags.c_contiguous and arr.ndim):
        return None
    idx = np.asarray(idx)
    if idx.dtype == bool:
        if idx.ndim == 0 or idx.shape != arr.shape[:idx.ndim]:
            return None
        lead = idx.ndim
    elif idx.dtype.kind in "iu":
        lead = 1
    else:
        return None
    row = int(np.prod(arr.shape[lead:], dtype=np.int64)) * arr.itemsize  # bytes per index
    if row == 0 or row > _ROW_PAGES * PAGE_SIZE:
        return None
    span = _target_span(m, arr)
    npages = -(-span.nbytes // PAGE_SIZE)  # the last page may be partial (the file's end)
    mask = np.zeros(npages + 1, dtype=bool)
    base, p0 = m.offset_of(arr), span.start // PAGE_SIZE
    flat = idx.reshape(-1)
    for a in range(0, flat.size, _ROWS_STEP):
        part = flat[a:a + _ROWS_STEP]
        rows = (np.flatnonzero(part) + a if idx.dtype == bool
                else part.astype(np.int64) % max(1, arr.shape[0]))
        first = (base + rows * row) // PAGE_SIZE - p0
        last = (base + (rows + 1) * row - 1) // PAGE_SIZE - p0
        for k in range(-(-row // PAGE_SIZE) + 1):
            mask[np.minimum(first + k, last)] = True
    return span, mask[:npages]


def _basic(index: Any) -> bool:
    """Whether ``index`` is basic indexing (ints, slices, ``...``, ``None``): a view."""
    parts = index if isinstance(index, tuple) else (index,)
    return all(p is None or p is Ellipsis
               or (isinstance(p, (slice, int, np.integer)) and not isinstance(p, bool))
               for p in parts)


def setitem(arr: np.ndarray[Any, Any], m: Mapping, index: Any, value: Any) -> None:
    """``arr[index] = value`` on a private mapping, checked against its scratch limit: before
    the write for basic indexing, after it for fancy and boolean indexing.

    Raises
    ------
    ScratchLimitError
        See :func:`before_write` and :func:`after_write`.
    """
    if m not in _STATE:
        np.ndarray.__setitem__(arr, index, value)
        return
    if _basic(index):
        parts = index if isinstance(index, tuple) else (index,)
        # a trailing ... makes even a single element a 0-d view (its address is the target's)
        target = np.ndarray.__getitem__(arr, parts if any(p is Ellipsis for p in parts)
                                        else (*parts, Ellipsis))
        before_write(m, target)
        np.ndarray.__setitem__(arr, index, value)
        return
    pages = _fancy_pages(arr, m, index)
    if pages is not None:
        _reserve(m, *pages)
        np.ndarray.__setitem__(arr, index, value)
        return
    np.ndarray.__setitem__(arr, index, value)
    after_write(m, arr)


@contextlib.contextmanager
def checked_ufunc(targets: Any, *, after: bool) -> Iterator[None]:
    """Check a ufunc's writes into private mappings: its ``out=`` arrays before it runs, or
    (``after``, for ``ufunc.at``, whose indices pick the elements) the array after it ran."""
    mapped = _mapped(targets)
    for m, target in mapped if not after else ():
        before_write(m, target)
    yield
    for m, target in mapped if after else ():
        after_write(m, target)


#: ndarray methods that write into the array they are called on: checked before the write
#: (they write the whole array), except ``put``, whose indices pick the elements (after it).
WRITING_METHODS = frozenset({"fill", "sort", "partition", "byteswap", "setfield", "put"})

#: numpy functions that write into their first argument, whose elements an index or a mask
#: picks (checked after the write); ``np.copyto`` writes all of it (before, unless ``where=``).
_WRITES_FIRST = ("copyto", "put", "place", "putmask", "fill_diagonal", "put_along_axis")


def _mapped(targets: Any) -> list[tuple[Mapping, np.ndarray[Any, Any]]]:
    """The private mappings with a limit among ``targets`` (bigarr arrays), with plain views."""
    return [(o._bigarr, np.ndarray.view(o, np.ndarray)) for o in targets or ()
            if getattr(o, "_bigarr", None) is not None and o._bigarr in _STATE]


def call_method(arr: Any, m: Mapping, impl: Any, name: str, args: Any, kwargs: Any) -> Any:
    """``arr.name(*args, **kwargs)`` (one of :data:`WRITING_METHODS`) on a private mapping:
    under its write lock, checked against its scratch limit.

    Raises
    ------
    ScratchLimitError
        See :func:`before_write` and :func:`after_write`.
    """
    from bigarr._core.private import write_lock

    if name == "byteswap" and not (args[0] if args else kwargs.get("inplace", False)):
        return impl(arr, *args, **kwargs)  # a copy: nothing is written into arr
    target = np.ndarray.view(arr, np.ndarray)
    with write_lock(m):
        if m in _STATE and name != "put":
            before_write(m, target)
        result = impl(arr, *args, **kwargs)
        if m in _STATE and name == "put":
            after_write(m, target)
    return result


def function_writes(func: Any, args: Any, kwargs: Any) -> tuple[list[Any], list[Any]]:
    """The bigarr arrays a numpy function call writes into: ``(before, after)`` -- those whose
    pages are all written (``out=``, ``np.copyto`` without ``where=``), checked before the
    call, and those an index or mask picks elements of, checked after it."""
    out = kwargs.get("out")
    before = list(out) if isinstance(out, tuple) else [out] if out is not None else []
    after: list[Any] = []
    name = getattr(func, "__name__", "")
    if args and name in _WRITES_FIRST and getattr(func, "__module__", "").startswith("numpy"):
        if name == "copyto" and kwargs.get("where", True) is True and len(args) < 4:
            before.append(args[0])
        else:
            after.append(args[0])
    keep = [o for o in before if getattr(o, "_bigarr", None) is not None]
    return keep, [o for o in after if getattr(o, "_bigarr", None) is not None]


def after_write(m: Mapping, target: np.ndarray[Any, Any] | None) -> None:
    """Account for a write already made somewhere in ``target`` (``None``: anywhere).

    Raises
    ------
    ScratchLimitError
        If the mapping's scratch pages now exceed the limit (the edits are kept).
    """
    st = _STATE.get(m)
    if st is None:
        return
    span = ByteSpan(0, m.length) if target is None else _target_span(m, target)
    with _LOCK:
        if st.bound + span.nbytes <= st.limit:
            st.bound += span.nbytes
            return
        _check(m, st)


def _check(m: Mapping, st: _Scratch) -> int:
    now = st.bound = _count(m)
    if now > st.limit:
        raise _refuse(m, st, now, 0, made=True)
    return now


def check_scratch(arr: Any) -> int:
    """Count the scratch pages of ``arr``'s whole mapping; refuse if over its scratch limit.

    Returns
    -------
    int
        Bytes of scratch pages of the mapping (whole pages).

    Raises
    ------
    ModeError, ClosedError
        If ``arr`` is not an open private-mode array.
    ScratchLimitError
        If the scratch pages exceed the ``scratch_limit`` the file was opened with.
    """
    m = _private_mapping(arr, "check_scratch")
    st = _STATE.get(m)
    if st is None:
        return _count(m)
    with _LOCK:
        return _check(m, st)


def recount(m: Mapping) -> None:
    """Reset the bound to an exact count (after a commit or discard freed pages)."""
    st = _STATE.get(m)
    if st is not None:
        with _LOCK:
            st.bound = _count(m)


class ChunkCheck:
    """The per-step check of an ``iter_chunks`` loop over a private mapping with a limit.

    :meth:`handing` is called with each view before the consumer gets it (its scratch bytes
    are counted), :meth:`returned` when the consumer asks for the next one: the growth of the
    chunk's scratch bytes (from any code) is added to the bound, which is checked.
    """

    def __init__(self, m: Mapping) -> None:
        self.m = m
        self.span = ByteSpan(0, 0)
        self.before = 0

    def handing(self, view: np.ndarray[Any, Any]) -> None:
        self.span = _target_span(self.m, view)
        self.before = _count(self.m, self.span) if self.span.nbytes else 0

    def returned(self) -> None:
        st = _STATE.get(self.m)
        if st is None or self.m.closed:
            return
        grew = (_count(self.m, self.span) if self.span.nbytes else 0) - self.before
        with _LOCK:
            st.bound += max(0, grew)
            if st.bound > st.limit:
                _check(self.m, st)

    @staticmethod
    def needed(m: Mapping) -> bool:
        """Whether an iteration over ``m`` needs per-step checks."""
        return m in _STATE
