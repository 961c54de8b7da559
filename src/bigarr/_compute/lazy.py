"""Lazy array expressions: write numpy, run out of core.

``bigarr.lazy(source)`` wraps an array (a ``.npy`` path, a bigarr or numpy memmap, a zarr array,
an ndarray) in a :class:`LazyArray`. Operators, numpy ufuncs (through ``__array_ufunc__``),
``astype``, ``clip``, :func:`where`, column slices and reductions (``sum``, ``mean``, ``var``,
``std``, ``min``, ``max``) build a DAG of :class:`Node` values; nothing is read until the
expression is evaluated (``.compute()``, ``.to_npy()``, :func:`bigarr.compute`).

Evaluation (:mod:`bigarr._compute.lazyrun`) runs in passes over the inputs' rows (axis 0):
reductions an expression needs are computed first, all reductions of the same depth sharing one
pass, and the elementwise rest is fused per chunk in a final pass, with no full-size
temporaries. A reduction's result is small and held in memory; it broadcasts into later
expressions like any numpy array.

The nodes are plain frozen values: a :class:`Leaf` (an input), a :class:`Const` (a scalar or a
small array held whole), an :class:`Op` (a function of its arguments applied elementwise), an
:class:`Index` (a selection along the axes after the first), and a :class:`Reduce`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bigarr._compute.operands import parse_operand
from bigarr._compute.reductions import _axes, _numpy_dtype
from bigarr.errors import ArgumentError, ShapeError, UnsupportedError

__all__ = ["Const", "Index", "LazyArray", "Leaf", "Node", "Op", "Reduce", "lazy", "where"]


@dataclass(frozen=True, eq=False)
class Node:
    """One node of an expression DAG (identity is the object: a node used twice is one node)."""

    shape: tuple[int, ...]
    """Shape of the node's value."""
    dtype: np.dtype[Any]
    """dtype of the node's value."""


@dataclass(frozen=True, eq=False)
class Leaf(Node):
    """An input array, read chunk by chunk."""

    source: Any = None
    """What was given to :func:`lazy` (a path, an array)."""
    name: str = ""
    """A short description for plans."""


@dataclass(frozen=True, eq=False)
class Const(Node):
    """A scalar or an in-memory array used whole (broadcast)."""

    value: Any = None
    """The value (a Python scalar keeps numpy's weak-scalar dtype rules)."""


@dataclass(frozen=True, eq=False)
class Op(Node):
    """``func(*args, **kwargs)`` applied elementwise (a ufunc, ``np.where``, ``astype``)."""

    func: Callable[..., Any] = np.positive
    """The elementwise function."""
    args: tuple[Node, ...] = ()
    """Its operands."""
    kwargs: tuple[tuple[str, Any], ...] = ()
    """Its keyword arguments."""
    label: str = ""
    """Its name in plans."""


@dataclass(frozen=True, eq=False)
class Index(Node):
    """``child[:, *key]``: a selection along the axes after the first (rows are kept whole)."""

    child: Node = field(default_factory=lambda: Const((), np.dtype(bool)))
    """The indexed node."""
    key: tuple[Any, ...] = ()
    """The index of the axes after the first."""


@dataclass(frozen=True, eq=False)
class Reduce(Node):
    """A reduction of ``child`` over ``axes``; its (small) result is computed in a pass."""

    child: Node = field(default_factory=lambda: Const((), np.dtype(bool)))
    """The reduced node."""
    kind: str = "sum"
    """``sum``, ``mean``, ``var``, ``std``, ``min`` or ``max``."""
    axes: tuple[int, ...] = ()
    """The reduced axes (normalised, sorted)."""
    keepdims: bool = False
    """Keep reduced axes as length 1."""
    ddof: float = 0
    """Delta degrees of freedom (``var``, ``std``)."""
    out_dtype: np.dtype[Any] | None = None
    """``dtype=`` of the reduction, as numpy's."""


def _describe(source: Any) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.path.basename(os.fspath(source))
    return type(source).__name__


def _leaf(source: Any) -> Leaf:
    stream = parse_operand(source)
    try:
        return Leaf(stream.shape, np.dtype(stream.dtype), source, _describe(source))
    finally:
        stream.close()


def _node(obj: Any) -> Node:
    """``obj`` as a node: lazy arrays are theirs, arrays with elements become leaves."""
    if isinstance(obj, LazyArray):
        return obj.node
    if isinstance(obj, (bool, int, float, complex)):
        return Const((), np.result_type(obj), obj)
    if isinstance(obj, (np.ndarray, np.generic)) and np.ndim(obj) == 0:
        arr = np.asarray(obj)
        return Const((), arr.dtype, arr[()])
    if isinstance(obj, np.ndarray) and not isinstance(obj, np.memmap):
        return Const(tuple(obj.shape), obj.dtype, obj)
    if isinstance(obj, (list, tuple)):
        arr = np.asarray(obj)
        return Const(tuple(arr.shape), arr.dtype, arr)
    return _leaf(obj)


def _probe(node: Node) -> Any:
    """A one-element stand-in of ``node`` for dtype inference (scalars stay Python scalars)."""
    if isinstance(node, Const) and node.shape == () and not isinstance(node.value, np.generic):
        return node.value
    return np.ones((1,) * len(node.shape), dtype=node.dtype)


def _op(func: Callable[..., Any], args: Sequence[Any], label: str,
        **kwargs: Any) -> LazyArray:
    nodes = tuple(_node(a) for a in args)
    try:
        shape = np.broadcast_shapes(*(n.shape for n in nodes))
    except ValueError:
        raise ShapeError(
            f"Expected operands that broadcast together. Got shapes "
            f"{', '.join(str(n.shape) for n in nodes)} for {label}."
        ) from None
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dtype = np.asarray(func(*(_probe(n) for n in nodes), **kwargs)).dtype
    return LazyArray(Op(tuple(shape), dtype, func, nodes, tuple(kwargs.items()), label))


def _binary(func: Callable[..., Any]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def forward(self: LazyArray, other: Any) -> LazyArray:
        return _op(func, (self, other), func.__name__)

    def backward(self: LazyArray, other: Any) -> LazyArray:
        return _op(func, (other, self), func.__name__)

    return forward, backward


def _reduce_method(kind: str) -> Callable[..., LazyArray]:
    def method(self: LazyArray, axis: int | Sequence[int] | None = None, dtype: Any = None, *,
               keepdims: bool = False, ddof: float = 0) -> LazyArray:
        return self._reduce(kind, axis, dtype, keepdims, ddof)

    method.__name__ = kind
    method.__doc__ = (f"Lazy :func:`numpy.{kind}` over ``axis`` (None, int or tuple), with "
                      "``dtype``, ``keepdims`` (and ``ddof`` for var/std).")
    return method


class LazyArray:
    """An array expression, evaluated chunk by chunk when asked (see the module docstring).

    Build one with :func:`bigarr.lazy`; evaluate with :meth:`compute`, :meth:`to_npy` or
    :func:`bigarr.compute`; see the plan with :meth:`explain`.
    """

    __slots__ = ("node",)

    def __init__(self, node: Node) -> None:
        self.node = node

    # ---- what it is ------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the result."""
        return self.node.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """dtype of the result."""
        return self.node.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.node.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.node.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the result."""
        return self.size * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"

    def __bool__(self) -> bool:
        raise ShapeError("The truth value of a LazyArray is not known until it is computed "
                         "(and ambiguous for more than one element, as in numpy): call "
                         ".compute() first.")

    def __len__(self) -> int:
        if not self.shape:
            raise ShapeError("len() of a 0-d LazyArray.")
        return self.shape[0]

    # ---- elementwise -----------------------------------------------------------------------
    __add__, __radd__ = _binary(np.add)
    __sub__, __rsub__ = _binary(np.subtract)
    __mul__, __rmul__ = _binary(np.multiply)
    __truediv__, __rtruediv__ = _binary(np.true_divide)
    __floordiv__, __rfloordiv__ = _binary(np.floor_divide)
    __mod__, __rmod__ = _binary(np.remainder)
    __pow__, __rpow__ = _binary(np.power)
    __and__, __rand__ = _binary(np.bitwise_and)
    __or__, __ror__ = _binary(np.bitwise_or)
    __xor__, __rxor__ = _binary(np.bitwise_xor)
    __lshift__, __rlshift__ = _binary(np.left_shift)
    __rshift__, __rrshift__ = _binary(np.right_shift)
    __lt__ = _binary(np.less)[0]
    __le__ = _binary(np.less_equal)[0]
    __gt__ = _binary(np.greater)[0]
    __ge__ = _binary(np.greater_equal)[0]
    __eq__ = _binary(np.equal)[0]  # type: ignore[assignment]
    __ne__ = _binary(np.not_equal)[0]  # type: ignore[assignment]
    __hash__ = None  # type: ignore[assignment]

    def __neg__(self) -> LazyArray:
        return _op(np.negative, (self,), "negative")

    def __pos__(self) -> LazyArray:
        return _op(np.positive, (self,), "positive")

    def __abs__(self) -> LazyArray:
        return _op(np.absolute, (self,), "absolute")

    def __invert__(self) -> LazyArray:
        return _op(np.invert, (self,), "invert")

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any,
                        **kwargs: Any) -> Any:
        if method != "__call__" or "out" in kwargs or ufunc.nout != 1:
            raise UnsupportedError(
                f"Expected a plain elementwise call of a ufunc with one output on a LazyArray. "
                f"Got {ufunc.__name__}.{method} with {sorted(kwargs)}: compute() first."
            )
        return _op(ufunc, inputs, ufunc.__name__, **kwargs)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray[Any, Any]:
        out = self.compute()
        return np.asarray(out, dtype=dtype)

    def astype(self, dtype: Any, casting: str = "unsafe") -> LazyArray:
        """Cast elementwise to ``dtype``, as :meth:`numpy.ndarray.astype`."""
        target = np.dtype(dtype)
        if not np.can_cast(self.dtype, target, casting=casting):  # type: ignore[arg-type]
            raise ArgumentError(f"Cannot cast {self.dtype} to {target} with casting={casting!r}.")

        def cast(a: Any) -> Any:
            return np.asarray(a).astype(target)

        cast.__name__ = f"astype({target})"
        return _op(cast, (self,), f"astype({target})")

    def clip(self, min: Any = None, max: Any = None) -> LazyArray:
        """Clip elementwise to ``[min, max]``, as :func:`numpy.clip`."""
        return _op(np.clip, (self, min, max), "clip")

    def __getitem__(self, key: Any) -> LazyArray:
        items = key if isinstance(key, tuple) else (key,)
        if not self.shape or not items or not (isinstance(items[0], slice)
                                               and items[0] == slice(None)):
            raise UnsupportedError(
                f"Expected an index that keeps every row, x[:, cols]. Got {key!r}: row selection "
                "is not supported on LazyArray yet."
            )
        rest = items[1:]
        if any(i is None or i is Ellipsis for i in rest):
            raise UnsupportedError(f"Expected slices, ints or one list of columns. Got {key!r}.")
        probe = np.empty((0, *self.shape[1:]), dtype=np.uint8)
        try:
            shape = probe[(slice(None), *rest)].shape
        except IndexError as exc:
            raise ShapeError(f"Index {key!r} of shape {self.shape}: {exc}") from None
        return LazyArray(Index((self.shape[0], *shape[1:]), self.dtype, self.node,
                               tuple(rest)))

    # ---- reductions ------------------------------------------------------------------------
    def _reduce(self, kind: str, axis: int | Sequence[int] | None, dtype: Any,
                keepdims: bool, ddof: float) -> LazyArray:
        axes = _axes(axis, self.ndim)
        fn = getattr(np, kind)
        kwargs: dict[str, Any] = {} if kind in ("min", "max") else {"dtype": dtype}
        if kind in ("var", "std"):
            kwargs["ddof"] = ddof
        out = _numpy_dtype(fn, np.empty((1,) * self.ndim, dtype=self.dtype), **kwargs)
        shape = tuple(1 if i in axes else n for i, n in enumerate(self.shape)) if keepdims \
            else tuple(n for i, n in enumerate(self.shape) if i not in axes)
        return LazyArray(Reduce(shape, out, self.node, kind, axes, keepdims, ddof,
                                None if dtype is None else np.dtype(dtype)))

    sum = _reduce_method("sum")
    mean = _reduce_method("mean")
    var = _reduce_method("var")
    std = _reduce_method("std")
    min = _reduce_method("min")
    max = _reduce_method("max")

    # ---- evaluation ------------------------------------------------------------------------
    def compute(self, *, budget: int | str | None = None, threads: int | None = None,
                progress: Any = None) -> np.ndarray[Any, Any] | np.generic:
        """Evaluate into a numpy array (a numpy scalar for a 0-d result).

        Raises
        ------
        BudgetError
            If the result itself is larger than the budget (write it with :meth:`to_npy`),
            or the passes cannot fit it.
        """
        from bigarr._compute.lazyrun import compute

        result: np.ndarray[Any, Any] | np.generic = compute(
            self, budget=budget, threads=threads, progress=progress)[0]
        return result

    def to_npy(self, path: str | os.PathLike[str], *, budget: int | str | None = None,
               threads: int | None = None, progress: Any = None,
               overwrite: bool = False) -> Any:
        """Evaluate into a new page-aligned ``.npy`` file; return it as a read-only memmap.

        Raises
        ------
        FileExistsError_
            If ``path`` exists and ``overwrite`` is not set.
        BudgetError
            If the passes cannot fit the budget (both numbers quoted), before anything runs.
        """
        from bigarr._compute.lazyrun import to_npy

        return to_npy(self, path, budget=budget, threads=threads, progress=progress,
                      overwrite=overwrite)

    def explain(self, *, budget: int | str | None = None, threads: int | None = None) -> Any:
        """The plan of :meth:`compute`: passes over each input, what each computes, chunk
        sizes and predicted peak memory (``.passes`` is their number)."""
        from bigarr._compute.lazyrun import explain

        return explain(self, budget=budget, threads=threads)


def lazy(source: Any) -> LazyArray:
    """Wrap ``source`` (a ``.npy`` path, bigarr or numpy memmap, zarr array, ndarray) lazily.

    Raises
    ------
    FileMissingError, FormatError
        For a path that cannot be opened as a ``.npy`` file.
    """
    if isinstance(source, LazyArray):
        return source
    if isinstance(source, np.ndarray) and not isinstance(source, np.memmap) and source.ndim:
        return LazyArray(Leaf(tuple(source.shape), source.dtype, source, "ndarray"))
    return LazyArray(_node(source))


def where(condition: Any, x: Any, y: Any) -> LazyArray:
    """Lazy :func:`numpy.where` with three arguments: ``x`` where ``condition``, else ``y``."""
    return _op(np.where, (condition, x, y), "where")



