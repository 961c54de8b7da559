"""What closing means for arrays: closed arrays raise, and views lent to loops do not block.

Two pieces of :class:`bigarr.memmap`'s behaviour around ``close()``, kept out of the thin array
type:

* :func:`install_guards` wraps every ndarray method and data property of the array class with
  the closed check. numpy's own C methods read the buffer directly, without passing through
  ``__getitem__``, ``__array_function__`` or ``__array_ufunc__``; after ``close()`` that buffer
  holds anonymous zero pages, so each such method would silently return zeros.
* :func:`lending` passes an ``iter_chunks`` loop's pairs through, lending each view to the
  loop so that ``close()`` after the loop does not count the loop variable (see
  :meth:`bigarr._os.mapping.Mapping.lend`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from bigarr.errors import ClosedError, UnsupportedError

if TYPE_CHECKING:
    from bigarr._os.mapping import Mapping

__all__ = ["GUARD_EXEMPT", "closed_error", "install_guards", "lending"]

_P = TypeVar("_P")


def closed_error(m: Mapping) -> ClosedError:
    """The error every use of a closed mapping's data raises."""
    return ClosedError(
        f"The mapping of {m.path} is closed; its data can no longer be read or written. Open "
        "the file again (bigarr.open) to use it, or copy what you need before close()."
    )


# Every ndarray method and data property is guarded, except the ones below that only read
# metadata (len() and .shape stay valid, as numpy's metadata of an array whose buffer is gone
# would be). New numpy methods are guarded by default. What cannot be guarded (CPython and numpy
# call no Python code for them on an ndarray subclass): np.asarray(x), np.array(x) and the
# buffer protocol (memoryview, bytes, np.frombuffer); they read zeros, and close() makes the
# arrays read-only so that writes through them fail instead of vanishing.
GUARD_EXEMPT = frozenset({
    "base", "device", "dtype", "flags", "itemsize", "nbytes", "ndim", "shape", "size",
    "strides", "__array_namespace__", "__array_priority__", "__class_getitem__",
    "__dlpack_device__", "__len__", "__sizeof__", "__doc__", "__hash__", "__new__",
})
# Dunder methods that read data directly (operators go through ufuncs, which are guarded).
_DATA_DUNDERS = (
    "__array__", "__bool__", "__complex__", "__contains__", "__copy__", "__deepcopy__",
    "__dlpack__", "__float__", "__index__", "__int__", "__iter__", "__setstate__",
)


# ndarray methods that write into the array (bigarr._core.scratch.WRITING_METHODS, repeated
# here because scratch.py is imported only when a private array writes).
_WRITING = frozenset({"fill", "sort", "partition", "byteswap", "setfield", "put"})


def _guard_method(name: str, owner: str) -> Any:
    impl = getattr(np.ndarray, name)

    def method(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        m = self._bigarr
        if m is not None and m.closed:
            raise closed_error(m)
        if m is not None and name in _WRITING and m.access == "private":
            from bigarr._core.scratch import call_method  # x.fill(0): a scratch_limit's too

            return call_method(self, m, impl, name, args, kwargs)
        return impl(self, *args, **kwargs)

    method.__name__ = name
    method.__qualname__ = f"{owner}.{name}"
    method.__doc__ = impl.__doc__
    method.__wrapped__ = impl  # type: ignore[attr-defined]  # inspect.signature shows numpy's
    return method


def _guard_property(name: str) -> property:
    descr = vars(np.ndarray)[name]

    def get(self: Any) -> Any:
        m = self._bigarr
        if m is not None and m.closed:
            raise closed_error(m)
        return descr.__get__(self, type(self))

    def put(self: Any, value: Any) -> None:
        m = self._bigarr
        if m is not None and m.closed:
            raise closed_error(m)
        descr.__set__(self, value)

    return property(get, put, None, descr.__doc__)


def install_guards(cls: type[np.ndarray[Any, Any]]) -> tuple[str, ...]:
    """Wrap ndarray's data-reading methods and properties on ``cls``; return their names.

    ``cls`` has a ``_bigarr`` attribute (its mapping, or None for a detached copy). Names
    ``cls`` or :class:`numpy.memmap` define themselves are left to them.
    """
    done = []
    for name, attr in vars(np.ndarray).items():
        if name in GUARD_EXEMPT or name in vars(cls) or name in vars(np.memmap):
            continue
        if not callable(attr) and hasattr(attr, "__get__"):  # T, real, flat, ctypes, data, ...
            setattr(cls, name, _guard_property(name))
        elif callable(attr) and (not name.startswith("_") or name in _DATA_DUNDERS):
            setattr(cls, name, _guard_method(name, cls.__qualname__))
        else:
            continue
        done.append(name)
    return tuple(sorted(done))


def lending(inner: Iterator[tuple[_P, Any]]) -> Iterator[tuple[_P, Any]]:
    """Pass ``inner``'s ``(chunk, view)`` pairs through, lending each view to the loop.

    The view handed out last is not counted by ``close()`` (:meth:`Mapping.lend`): the loop
    variable keeps it alive after ``for chunk, view in x.iter_chunks(): ...``, and
    ``x.close()`` must work then. The mark moves on with each new view, so views the loop keeps
    elsewhere still make ``close()`` refuse. A lent view that outlives the close raises
    ``ClosedError``, as any other view.

    A loop resumed in a forked child raises :class:`~bigarr.errors.UnsupportedError`: its
    prefetch and release-behind thread stayed in the parent, and a lock that thread held at
    the fork would never be released in the child.
    """
    lent: Any = None
    pid = os.getpid()
    try:
        while True:
            if os.getpid() != pid:  # checked before the inner loop takes a step
                raise UnsupportedError(
                    "This iter_chunks() loop was started in another process (before a fork); "
                    "its helper thread did not come along. Start a new x.iter_chunks() in "
                    "this process."
                )
            try:
                chunk, view = next(inner)
            except StopIteration:
                return
            if lent is not None and lent._bigarr is not None:
                lent._bigarr.unlend(lent)
            lent = view
            if view._bigarr is not None:
                view._bigarr.lend(view)
            del view
            yield chunk, lent
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()
