"""Lazy array expressions: write numpy, run out of core.

``bigarr.lazy(source)`` wraps an array (a ``.npy`` path, a bigarr or numpy memmap, a zarr array,
an ndarray) in a :class:`LazyArray`. Operators, numpy ufuncs (through ``__array_ufunc__``) and
numpy functions (through ``__array_function__``: ``np.sum(x)``, ``np.where``, ``np.cumsum``,
...), ``astype``, ``clip``, :func:`where`, row slices (``x[a:b:step]``, ``x[i]``, pushed down to
the inputs by :mod:`bigarr._compute.lazyrows`), column slices, ``x @ w`` for a small ``w``,
reductions (:data:`REDUCTIONS`), scans along the rows (``cumsum``, ``cumprod``, ``diff``), row
filtering (``x[mask]``) and order statistics (``quantile``, ``median`` and nan variants) build a
DAG of :class:`Node` values; nothing is read until the expression is evaluated (``.compute()``,
``.to_npy()``, :func:`bigarr.compute`).

Evaluation (:mod:`bigarr._compute.lazyrun`) runs in passes over the inputs' rows (axis 0):
reductions an expression needs are computed first, all reductions of the same depth sharing one
pass, and the elementwise rest is fused per chunk in a final pass, with no full-size
temporaries. A reduction's result is small and held in memory; it broadcasts into later
expressions like any numpy array.

The nodes are plain frozen values: a :class:`Leaf` (an input), a :class:`Const` (a scalar or a
small array held whole), an :class:`Op` (a function of its arguments applied elementwise, or row
by row), an :class:`Index` (a selection along the axes after the first), a :class:`Reduce`, a
:class:`Scan` (``cumsum``, ``cumprod``, ``diff`` along axis 0, with state carried from chunk to
chunk) and a :class:`Filter` (the rows where a boolean mask is true).

*Row frames.* Chunks of every streamed expression are cut by the rows of its inputs; a node's
rows either are those rows (a plain frame), or lag them (``diff`` drops ``n`` leading rows), or
are the rows a mask keeps (a filter, whose length is known only on evaluation: its
``LazyArray.shape[0]`` is ``nan``, as dask's unknown lengths). Elementwise operations combine
only operands of one frame (:func:`frame`); anything else is refused when it is built.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bigarr._compute.lazybuild import (
    accumulate_node,
    clip_above,
    diff_node,
    no_objects,
    op_node,
    order_node,
    reduce_node,
)
from bigarr._compute.lazynodes import (
    ORDER_STATISTICS,
    REDUCTIONS,
    SCANS,
    Const,
    Filter,
    Frame,
    Index,
    Leaf,
    Node,
    Op,
    Reduce,
    Scan,
    frame,
    numpy_refusal,
    plain,
    rowed,
    unknown_rows,
)
from bigarr._compute.lazyrows import parse_row, take_rows
from bigarr._compute.operands import parse_operand
from bigarr.errors import (
    ArgumentError,
    RegionError,
    ShapeError,
    UnsupportedError,
)

__all__ = [
    "EXPORTERS",
    "ORDER_STATISTICS",
    "REDUCTIONS",
    "SCANS",
    "Const",
    "Filter",
    "Frame",
    "Index",
    "LazyArray",
    "Leaf",
    "Node",
    "Op",
    "Reduce",
    "Scan",
    "frame",
    "lazy",
    "plain",
    "register_exporter",
    "rowed",
    "unknown_rows",
    "where",
]

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
    if obj is None:  # a Python object, as numpy takes it (x + None is numpy's TypeError)
        return Const((), np.dtype(object), None)
    if isinstance(obj, (bool, int, float, complex)):
        return Const((), np.result_type(obj), obj)
    if isinstance(obj, (np.ndarray, np.generic)) and np.ndim(obj) == 0:
        arr = np.asarray(obj)
        return Const((), arr.dtype, arr[()])
    if isinstance(obj, np.ndarray) and not isinstance(obj, np.memmap):
        no_objects(obj.dtype, "an operand")
        return Const(tuple(obj.shape), obj.dtype, obj)
    if isinstance(obj, (list, tuple)):
        arr = np.asarray(obj)
        no_objects(arr.dtype, "an operand")
        return Const(tuple(arr.shape), arr.dtype, arr)
    return _leaf(obj)


def _op(func: Callable[..., Any], args: Sequence[Any], label: str, **kwargs: Any) -> LazyArray:
    return LazyArray(op_node(func, tuple(_node(a) for a in args), label, **kwargs))


def _binary(func: Callable[..., Any]) -> tuple[Callable[..., Any], Callable[..., Any]]:
    def forward(self: LazyArray, other: Any) -> LazyArray:
        return _op(func, (self, other), func.__name__)

    def backward(self: LazyArray, other: Any) -> LazyArray:
        return _op(func, (other, self), func.__name__)

    return forward, backward


def _reduce_method(kind: str) -> Callable[..., LazyArray]:
    takes_dtype, takes_ddof = REDUCTIONS[kind]
    method: Callable[..., LazyArray]
    if takes_ddof:
        def method(self: LazyArray, axis: int | Sequence[int] | None = None, dtype: Any = None,
                   *, keepdims: bool = False, ddof: float = 0) -> LazyArray:
            return self._reduce(kind, axis, dtype, keepdims, ddof)
    elif takes_dtype:
        def method(self: LazyArray, axis: int | Sequence[int] | None = None, dtype: Any = None,
                   *, keepdims: bool = False) -> LazyArray:
            return self._reduce(kind, axis, dtype, keepdims, 0)
    else:
        def method(self: LazyArray, axis: int | Sequence[int] | None = None, *,
                   keepdims: bool = False) -> LazyArray:
            return self._reduce(kind, axis, None, keepdims, 0)

    method.__name__ = kind
    method.__doc__ = (f"Lazy :func:`numpy.{kind}` over ``axis`` (None, int or tuple), with "
                      "``keepdims``" + (", ``dtype``" if takes_dtype else "")
                      + (" and ``ddof``" if takes_ddof else "") + ".")
    return method


def _order_method(kind: str) -> Callable[..., LazyArray]:
    method: Callable[..., LazyArray]
    if kind.endswith("median"):
        def method(self: LazyArray, axis: int | None = None, *,
                   keepdims: bool = False) -> LazyArray:
            return self._order(kind, None, axis, "linear", keepdims)
    else:
        def method(self: LazyArray, q: Any, axis: int | None = None, *,
                   method: str = "linear", keepdims: bool = False) -> LazyArray:
            return self._order(kind, q, axis, method, keepdims)

    method.__name__ = kind
    method.__doc__ = (f"Lazy exact :func:`numpy.{kind}` (computed by :func:`bigarr.{kind}` in "
                      "passes of its own) of an input or a column selection of one.")
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
    def shape(self) -> tuple[Any, ...]:
        """Shape of the result; a filter's number of rows, known only on evaluation, is
        ``nan`` (as dask's unknown lengths)."""
        if self.node.shape and unknown_rows(frame(self.node)):
            return (math.nan, *self.node.shape[1:])
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
    def size(self) -> Any:
        """Number of elements (``nan`` when the rows are known only on evaluation)."""
        if self.node.shape and unknown_rows(frame(self.node)):
            return math.nan
        return int(np.prod(self.node.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        """Bytes of the result (at most this many for a filter's)."""
        return int(np.prod(self.node.shape, dtype=np.int64)) * self.dtype.itemsize

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"

    def __bool__(self) -> bool:
        raise ShapeError("The truth value of a LazyArray is not known until it is computed "
                         "(and ambiguous for more than one element, as in numpy): call "
                         ".compute() first.")

    def __len__(self) -> int:
        if not self.shape:
            raise ShapeError("len() of a 0-d LazyArray.")
        if unknown_rows(frame(self.node)):
            raise ShapeError("len() of a filtered LazyArray is known only once it is computed.")
        return self.shape[0]  # type: ignore[no-any-return]

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

    def __matmul__(self, other: Any) -> LazyArray:
        """``x @ w`` for a small in-memory ``w`` (1-d or 2-d), row by row in the chunk pass.

        Raises
        ------
        ArgumentError
            When built, for a ``w`` whose dtype numpy cannot multiply with ``x``'s (strings).
        """
        if isinstance(other, LazyArray) or (not hasattr(other, "shape") \
                and not isinstance(other, (list, tuple))):
            raise UnsupportedError(
                "Expected x @ w with w a small in-memory array. Got a "
                f"{type(other).__name__}: compute it first (or use bigarr.linalg.gram)."
            )
        w = np.asarray(other)
        if self.ndim != 2 or w.ndim not in (1, 2) or w.shape[0] != self.node.shape[1]:
            raise ShapeError(f"Expected x of 2 dimensions and w of 1 or 2 with x.shape[1] == "
                             f"w.shape[0]. Got {self.shape} @ {w.shape}.")

        def matmul(a: Any) -> Any:
            return np.matmul(a, w)

        shape = (self.node.shape[0], *w.shape[1:])
        return _op(matmul, (self,), f"matmul by {w.shape}", shape=shape, rowwise=True)

    def __rmatmul__(self, other: Any) -> LazyArray:
        raise UnsupportedError("Expected x @ w with the LazyArray on the left; w @ x reduces "
                               "over the rows: use (x * w[:, None]).sum(axis=0) or "
                               "bigarr.linalg.")

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any,
                        **kwargs: Any) -> Any:
        if ufunc is np.matmul and method == "__call__" and not kwargs and len(inputs) == 2:
            if inputs[0] is self:
                return self @ inputs[1]
            return self.__rmatmul__(inputs[0])
        if method != "__call__" or "out" in kwargs or ufunc.nout != 1:
            raise UnsupportedError(
                f"Expected a plain elementwise call of a ufunc with one output on a LazyArray. "
                f"Got {ufunc.__name__}.{method} with {sorted(kwargs)}: compute() first."
            )
        return _op(ufunc, inputs, ufunc.__name__, **kwargs)

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        name = getattr(func, "__name__", "")
        if name in ("shape", "ndim", "size"):
            return getattr(lazy(args[0]), name)
        if name in REDUCTIONS or name in SCANS or name in ORDER_STATISTICS \
                or name in ("clip", "astype"):
            if kwargs.get("out") is not None:
                raise UnsupportedError(f"np.{name}(..., out=) of a LazyArray: compute() first.")
            kwargs = {k: v for k, v in kwargs.items() if k != "out"}
            target = lazy(args[0])
            method = getattr(target, name)
            try:  # numpy's arguments the lazy version lacks (where=, prepend=, weights=, ...)
                inspect.signature(method).bind(*args[1:], **kwargs)
            except TypeError as exc:
                raise ArgumentError(
                    f"np.{name} of a LazyArray does not take these arguments ({exc}); compute() "
                    "first, or see the lazy method's signature."
                ) from None
            return method(*args[1:], **kwargs)
        if name == "where" and len(args) + len(kwargs) == 3:
            return where(*args, **kwargs)
        # anything else: numpy on the computed values, as numpy does for objects with __array__
        def computed(a: Any) -> Any:
            if isinstance(a, LazyArray):
                return np.asarray(a)
            if isinstance(a, (list, tuple)):
                return type(a)(computed(b) for b in a)
            return a

        args = tuple(computed(a) for a in args)
        kwargs = {k: computed(v) for k, v in kwargs.items()}
        try:
            return func(*args, **kwargs)
        except (TypeError, ValueError, IndexError) as exc:  # numpy's refusal, as bigarr's
            raise numpy_refusal(exc, f"np.{name} of a LazyArray's values") from None

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
        """Clip elementwise to ``[min, max]``, as :func:`numpy.clip` (None: no bound)."""
        if min is None and max is None:
            return _op(np.clip, (self,), "clip", a_min=None, a_max=None)
        if min is None:
            return _op(clip_above, (self, max), "clip")
        if max is None:
            return _op(np.clip, (self, min), "clip", a_max=None)
        return _op(np.clip, (self, min, max), "clip")

    def __getitem__(self, key: Any) -> LazyArray:
        items = key if isinstance(key, tuple) else (key,)
        if not self.shape or not items:
            raise UnsupportedError(f"Expected an index of a LazyArray with rows. Got {key!r}.")
        first, rest = items[0], items[1:]
        out = self
        row: int | None = None
        if isinstance(first, slice) and first == slice(None):
            pass  # all rows
        elif isinstance(first, slice) or (isinstance(first, (int, np.integer))
                                          and not isinstance(first, (bool, np.bool_))):
            if unknown_rows(frame(self.node)):
                raise UnsupportedError(
                    f"Expected a row index of an expression over its inputs' rows. Got {key!r} "
                    "of a filtered expression (its rows are known only on evaluation): "
                    ".to_npy() it first and index the file.")
            window = parse_row(first, self.node.shape[0])
            if isinstance(first, slice):
                if window != (0, 1, self.node.shape[0]):
                    out = LazyArray(take_rows(self.node, window))
            else:
                row = window[0]
                out = LazyArray(take_rows(self.node, window))
        else:
            out = self._filter(first, key)
        if rest:
            if any(i is None or i is Ellipsis or isinstance(i, LazyArray) for i in rest):
                raise UnsupportedError(
                    f"Expected slices, ints or one list of columns. Got {key!r}.")
            probe = np.empty((0, *self.node.shape[1:]), dtype=np.uint8)
            try:
                shape = probe[(slice(None), *rest)].shape
            except IndexError as exc:
                raise RegionError(f"Index {key!r} of shape {self.shape}: {exc}") from None
            out = LazyArray(Index((out.node.shape[0], *shape[1:]), self.dtype, out.node,
                                  tuple(rest)))
        if row is not None:  # x[i]: the one row of the window, taken whole
            out = LazyArray(Index(out.node.shape[1:], self.dtype, out.node, (), 0))
        return out

    def _filter(self, mask: Any, key: Any) -> LazyArray:
        if isinstance(mask, LazyArray):
            m = mask.node
        elif isinstance(mask, (np.ndarray, list)) and not isinstance(mask, np.memmap):
            m = _node(np.asarray(mask))
        else:
            raise UnsupportedError(
                f"Expected x[a:b], x[i], x[:, cols] or x[mask] with a boolean mask over the "
                f"rows. Got {key!r}."
            )
        if m.dtype.kind in "iu":  # numpy's fancy indexing of rows, not a filter
            raise UnsupportedError(
                f"Expected x[mask] with a boolean mask over the rows. Got row numbers {key!r} "
                "(fancy indexing): use a boolean mask, or bigarr.take on the file.")
        if m.dtype != np.bool_ or len(m.shape) != 1 or m.shape[0] != self.node.shape[0]:
            # numpy's IndexError for a mask that does not fit, as a RegionError
            raise RegionError(f"Expected a 1-d boolean mask of {self.node.shape[0]} rows. Got "
                              f"{m.shape} {m.dtype}.")
        node = Filter(self.node.shape, self.dtype, self.node, m)
        if frame(self.node) != frame(m):
            raise ShapeError("Expected a mask over the same rows as the filtered array (built "
                             "from the same inputs, filtered and diffed the same way).")
        return LazyArray(node)

    # ---- reductions ------------------------------------------------------------------------
    def _reduce(self, kind: str, axis: int | Sequence[int] | None, dtype: Any,
                keepdims: bool, ddof: float) -> LazyArray:
        return LazyArray(reduce_node(self.node, kind, axis, dtype, keepdims, ddof))

    sum = _reduce_method("sum")
    prod = _reduce_method("prod")
    mean = _reduce_method("mean")
    var = _reduce_method("var")
    std = _reduce_method("std")
    min = _reduce_method("min")
    max = _reduce_method("max")
    argmin = _reduce_method("argmin")
    argmax = _reduce_method("argmax")
    any = _reduce_method("any")
    all = _reduce_method("all")
    count_nonzero = _reduce_method("count_nonzero")
    nansum = _reduce_method("nansum")
    nanmean = _reduce_method("nanmean")
    nanvar = _reduce_method("nanvar")
    nanstd = _reduce_method("nanstd")
    nanmin = _reduce_method("nanmin")
    nanmax = _reduce_method("nanmax")

    def _order(self, kind: str, q: Any, axis: int | None, method: str,
               keepdims: bool) -> LazyArray:
        return LazyArray(order_node(self.node, kind, q, axis, method, keepdims))

    quantile = _order_method("quantile")
    nanquantile = _order_method("nanquantile")
    percentile = _order_method("percentile")
    nanpercentile = _order_method("nanpercentile")
    median = _order_method("median")
    nanmedian = _order_method("nanmedian")

    # ---- scans -----------------------------------------------------------------------------
    def _accumulate(self, kind: str, axis: int | None, dtype: Any) -> LazyArray:
        return LazyArray(accumulate_node(self.node, kind, axis, dtype))

    def cumsum(self, axis: int | None = None, dtype: Any = None) -> LazyArray:
        """Lazy :func:`numpy.cumsum`; along axis 0 the running total is carried from chunk to
        chunk (chunks take their predecessor's total in order; see ``explain()``)."""
        return self._accumulate("cumsum", axis, dtype)

    def cumprod(self, axis: int | None = None, dtype: Any = None) -> LazyArray:
        """Lazy :func:`numpy.cumprod`, carried along axis 0 as :meth:`cumsum`."""
        return self._accumulate("cumprod", axis, dtype)

    def diff(self, n: int = 1, axis: int = -1) -> LazyArray:
        """Lazy :func:`numpy.diff` (``n``-th difference, numpy's default ``axis=-1``); along
        axis 0 each chunk takes the last ``n`` rows of its predecessor."""
        node = diff_node(self.node, n, axis)
        return self if node is self.node else LazyArray(node)

    # ---- evaluation ------------------------------------------------------------------------
    def compute(self, *, budget: int | str | None = None, threads: int | None = None,
                progress: Any = None,
                backend: str | None = None) -> np.ndarray[Any, Any] | np.generic:
        """Evaluate into a numpy array (a numpy scalar for a 0-d result).

        ``backend``: ``"numpy"`` (None, the default: numpy's results bit for bit) or
        ``"numexpr"`` (opt-in, ``pip install 'bigarr[fast]'``: floating chains of four
        operations or more go to numexpr, faster, but its results may differ from numpy's in
        the last bits).

        Raises
        ------
        ModeError, MissingExtraError
            For an unknown ``backend``, or ``"numexpr"`` without numexpr installed.
        ShapeError
            For a zero-size reduction without identity (``min``, ``argmax``, ... of no rows,
            or of a filter that kept none), as :func:`bigarr.min`.
        BudgetError
            If the result itself is larger than the budget (write it with :meth:`to_npy`),
            or the passes cannot fit it; a filter's result is refused as soon as its rows
            outgrow the budget.
        """
        from bigarr._compute.lazyrun import compute

        result: np.ndarray[Any, Any] | np.generic = compute(
            self, budget=budget, threads=threads, progress=progress, backend=backend)[0]
        return result

    def to_npy(self, path: str | os.PathLike[str], *, budget: int | str | None = None,
               threads: int | None = None, progress: Any = None,
               overwrite: bool = False, backend: str | None = None,
               resume: bool = False) -> Any:
        """Evaluate into a new page-aligned ``.npy`` file; return it as a read-only memmap.

        A result whose rows are known only on evaluation (a filter, ``x[mask]``) grows the
        file through :class:`bigarr.Appender`, chunk by chunk in order. Either way the file
        is written under a hidden name and given ``path`` only once complete: a run that fails
        leaves an older file at ``path`` as it was. ``backend`` as in :meth:`compute`.

        With ``resume=True`` the pass that writes the file journals its durable chunks as
        :func:`bigarr.map_blocks` does; after a crash (even ``kill -9``) the same call with
        ``resume=True`` recomputes any reductions the expression needs, then writes only the
        chunks not recorded. The journal is used only if the inputs are the same files (path,
        size, modification and change times and identity; in-memory arrays by their bytes, up
        to 16 MiB),
        the expression, its constants and functions, the backend, the budget's chunks and the
        partial file are the same; otherwise a ``StaleJournalWarning`` and the run starts over.
        A filtered result resumes its appends after the last journaled commit.

        Raises
        ------
        FileExistsError_
            If ``path`` exists and ``overwrite`` is not set.
        BudgetError
            If the passes cannot fit the budget (both numbers quoted), before anything runs.
        UnsupportedError
            For ``resume=True`` with a ``cumsum``, ``cumprod`` or ``diff`` along the rows in
            the written expression (each chunk needs all the chunks before it), before
            anything runs.
        """
        from bigarr._compute.lazyrun import to_npy

        return to_npy(self, path, budget=budget, threads=threads, progress=progress,
                      overwrite=overwrite, backend=backend, resume=resume)

    def to_zarr(self, store_or_path: Any, *, budget: int | str | None = None,
                threads: int | None = None, progress: Any = None, overwrite: bool = False,
                **zarr_options: Any) -> Any:
        """Evaluate into a new zarr array (``zarr_options`` as :func:`bigarr.to_zarr`'s:
        ``chunks``, ``shards``, ``compressors``, ``fill_value``, ``zarr_format``).

        After the passes for the reductions it needs, :func:`bigarr.to_zarr` pulls the
        result's rows in batches of whole zarr chunks, each evaluated from the inputs' rows
        as it is written: the result is written once and never staged. A result whose rows
        are known only on evaluation (a filter) or are not the inputs' (a ``diff`` along axis
        0) is evaluated into a hidden ``.npy`` file first (next to a local destination; in
        the temporary directory for other stores), streamed into zarr and deleted.
        """
        return _export("zarr", self, store_or_path, budget=budget, threads=threads,
                       progress=progress, overwrite=overwrite, **zarr_options)

    def to_dask(self, *, block_bytes: int | str | None = None) -> Any:
        """The expression as a dask array whose inputs are files by reference
        (:func:`bigarr.to_dask`): the graph holds paths and offsets, never data, so it runs
        on ``LocalCluster(processes=True)`` or any cluster that sees the same files.
        Reductions, scans and filters become dask's own; order statistics are refused (dask
        has no exact quantile)."""
        return _export("dask", self, block_bytes=block_bytes)

    def explain(self, *, budget: int | str | None = None, threads: int | None = None,
                backend: str | None = None) -> Any:
        """The plan of :meth:`compute`: passes over each input, what each computes, chunk
        sizes and predicted peak memory (``.passes`` is their number); ``backend`` as in
        :meth:`compute` (numexpr's temporaries differ)."""
        from bigarr._compute.lazyrun import explain

        return explain(self, budget=budget, threads=threads, backend=backend)


#: Exporters registered by the interop layer (which this layer may not import): ``"zarr"``
#: and ``"dask"``, each ``exporter(expr, *args, **kwargs)``.
EXPORTERS: dict[str, Callable[..., Any]] = {}


def register_exporter(name: str, exporter: Callable[..., Any]) -> None:
    """Make ``LazyArray.to_<name>`` call ``exporter`` (the interop modules register theirs)."""
    EXPORTERS[name] = exporter


def _export(name: str, expr: LazyArray, *args: Any, **kwargs: Any) -> Any:
    exporter = EXPORTERS.get(name)
    if exporter is None:  # only when the interop module was never imported
        raise UnsupportedError(f"to_{name} needs bigarr's interop layer: import bigarr first.")
    return exporter(expr, *args, **kwargs)


def lazy(source: Any) -> LazyArray:
    """Wrap ``source`` (a ``.npy`` path, bigarr or numpy memmap, zarr array, ndarray) lazily.

    Raises
    ------
    FileMissingError, FormatError
        For a path that cannot be opened as a ``.npy`` file.
    DtypeError
        For an array of Python objects.
    """
    if isinstance(source, LazyArray):
        return source
    if isinstance(source, np.ndarray) and not isinstance(source, np.memmap) and source.ndim:
        no_objects(source.dtype, "bigarr.lazy")
        return LazyArray(Leaf(tuple(source.shape), source.dtype, source, "ndarray"))
    return LazyArray(_node(source))


def where(condition: Any, x: Any, y: Any) -> LazyArray:
    """Lazy :func:`numpy.where` with three arguments: ``x`` where ``condition``, else ``y``."""
    return _op(np.where, (condition, x, y), "where")
