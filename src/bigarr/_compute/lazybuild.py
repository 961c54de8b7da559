"""The nodes of lazy expressions, built and checked: numpy's shapes, dtypes and refusals.

:class:`~bigarr._compute.lazy.LazyArray` is the thin user-facing type; what one of its
operations builds lives here, as functions of nodes that return nodes: :func:`op_node` (an
elementwise or row-local operation, its dtype numpy's on one-element stand-ins),
:func:`reduce_node`, :func:`order_node` (the quantile family), :func:`accumulate_node` and
:func:`diff_node` (the scans). Each refuses, when built, what numpy would refuse, as a bigarr
error that subclasses numpy's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bigarr._compute.lazynodes import (
    REDUCTIONS,
    Const,
    Index,
    Leaf,
    Node,
    Op,
    Reduce,
    Scan,
    frame,
    unknown_rows,
)
from bigarr._compute.reductions import _axes, _numpy_dtype
from bigarr.errors import (
    ArgumentError,
    ArgumentOverflowError,
    ArgumentValueError,
    AxisError,
    DtypeError,
    RegionError,
    ShapeError,
    UnsupportedError,
)


def no_objects(dtype: np.dtype[Any], what: str) -> None:
    """Refuse Python objects (numpy's own errors on them are bare, and nothing streams them)."""
    if dtype.hasobject:
        raise DtypeError(f"Expected bool, numeric or other fixed-size data in {what}. Got a "
                         f"dtype with Python objects ({dtype}); use numpy on it.")


def probe(node: Node) -> Any:
    """A one-element stand-in of ``node`` for dtype inference (scalars stay Python scalars)."""
    if isinstance(node, Const) and node.shape == () and not isinstance(node.value, np.generic):
        return node.value
    return np.ones((1,) * len(node.shape), dtype=node.dtype)


def quiet(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return func(*args, **kwargs)


def op_node(func: Callable[..., Any], nodes: tuple[Node, ...], label: str, *,
            shape: tuple[int, ...] | None = None, rowwise: bool = False,
            **kwargs: Any) -> Op:
    """An :class:`Op` of ``func`` over ``nodes``: its shape (broadcast, unless given) and
    dtype (numpy's, on one-element stand-ins), refused when built where numpy would refuse."""
    if shape is None:
        try:
            shape = tuple(np.broadcast_shapes(*(n.shape for n in nodes)))
        except ValueError:
            raise ShapeError(
                f"Expected operands that broadcast together. Got shapes "
                f"{', '.join(str(n.shape) for n in nodes)} for {label}."
            ) from None
    if rowwise:
        probes = [np.ones((2, *n.shape[1:]), dtype=n.dtype) if n.shape else probe(n)
                  for n in nodes]
    else:
        probes = [probe(n) for n in nodes]
    try:
        dtype = np.asarray(quiet(func, *probes, **kwargs)).dtype
    except TypeError as exc:  # numpy's UFuncTypeError and friends, refused when built
        raise ArgumentError(
            f"Expected operands numpy can combine in {label}. Got dtypes "
            f"{', '.join(str(n.dtype) for n in nodes)}: {exc}"
        ) from None
    except OverflowError as exc:  # NEP 50: a Python int out of an integer dtype's bounds
        raise ArgumentOverflowError(f"{label} of {', '.join(str(n.dtype) for n in nodes)}: "
                                    f"{exc}") from None
    except ValueError as exc:  # numpy's refusals of values (integers to negative powers)
        raise ArgumentValueError(f"{label} of {', '.join(str(n.dtype) for n in nodes)}: "
                                 f"{exc}") from None
    except IndexError as exc:  # numpy's quantile of no values
        raise RegionError(f"{label} of {', '.join(str(n.shape) for n in nodes)}: {exc}") \
            from None
    no_objects(dtype, label)
    node = Op(tuple(shape), dtype, func, nodes, tuple(kwargs.items()), label, rowwise)
    frame(node)  # refuses operands over rows of different origins
    return node


def quantile_of_rows(a: Any, *, kind: str, q: Any, **kwargs: Any) -> Any:
    """``numpy.<kind>(a, q, **kwargs)`` (``q`` is positional in numpy, a keyword in an
    :class:`Op`): a row-local quantile, chunk by chunk."""
    return getattr(np, kind)(a, q, **kwargs)


def clip_above(a: Any, hi: Any) -> Any:
    """``numpy.clip(a, None, hi)`` (its bounds are positional in an :class:`Op`)."""
    return np.clip(a, None, hi)


def reduce_node(node: Node, kind: str, axis: int | Sequence[int] | None, dtype: Any,
                keepdims: bool, ddof: float) -> Node:
    """The node of lazy ``numpy.<kind>`` of ``node`` (a reduction, or row-local: an op)."""
    ndim = len(node.shape)
    takes_dtype, takes_ddof = REDUCTIONS[kind]
    arg = kind in ("argmin", "argmax")
    if arg and axis is not None and (isinstance(axis, bool)
                                     or not isinstance(axis, (int, np.integer))):
        raise ArgumentError(f"Expected axis as an int or None for {kind}. Got {axis!r}.")
    kwargs: dict[str, Any] = {"dtype": dtype} if takes_dtype else {}
    if takes_ddof:
        kwargs["ddof"] = ddof
    if ndim == 0 and axis is not None:
        # numpy's rule for 0-d data: ufunc reductions (sum, max, nanmean, ...) take axis 0
        # and -1 as the whole array; mean, var and tuples refuse
        try:
            quiet(getattr(np, kind), np.zeros((), dtype=node.dtype), axis=axis, **kwargs)
        except np.exceptions.AxisError as exc:
            raise AxisError(str(exc)) from None
        except (TypeError, ValueError):
            pass  # refused below, as for any other array
        else:
            axis = None
    axes = _axes(axis, ndim)
    out = _numpy_dtype(getattr(np, kind), np.empty((1,) * ndim, dtype=node.dtype), **kwargs)
    fr = frame(node)
    shape = tuple(1 if i in axes else n for i, n in enumerate(node.shape)) \
        if keepdims else tuple(n for i, n in enumerate(node.shape) if i not in axes)
    if ndim and 0 not in axes:
        # Row-local: each row's result needs only that row, so it is computed chunk by
        # chunk like an elementwise operation (fused into the pass that reads the rows,
        # written to a file when large), by numpy's own function on the chunk's rows:
        # the same values as numpy's over the whole array.
        if arg:
            kwargs["axis"] = int(axis)  # type: ignore[arg-type]
        else:
            kwargs["axis"] = axes if len(axes) != 1 else axes[0]
        return op_node(getattr(np, kind), (node,), f"{kind}(axis={kwargs['axis']})",
                       shape=shape, rowwise=True, keepdims=keepdims, **kwargs)
    if arg and unknown_rows(fr):
        raise UnsupportedError(f"{kind} of a filtered expression (its row numbers are known "
                               "only on evaluation): to_npy it first.")
    given = int(axis) if arg and isinstance(axis, (int, np.integer)) else None
    return Reduce(shape, out, node, kind, axes, keepdims, ddof,
                  None if dtype is None else np.dtype(dtype), axis=given)


def order_node(node: Node, kind: str, q: Any, axis: int | None, method: str,
               keepdims: bool) -> Node:
    """The node of lazy exact ``numpy.<kind>`` (a quantile family member) of ``node``."""
    ndim = len(node.shape)
    if ndim > 1 and isinstance(axis, (int, np.integer)) and not isinstance(axis, bool) \
            and -ndim <= axis < ndim and int(axis) % ndim != 0 \
            and (q is None or np.ndim(q) == 0):
        # row-local (one quantile per row): numpy's on each chunk's rows, as _reduce's
        ax = int(axis) % ndim
        shape = tuple(1 if i == ax else n for i, n in enumerate(node.shape)) \
            if keepdims else tuple(n for i, n in enumerate(node.shape) if i != ax)
        fn = getattr(np, kind)
        rkw: dict[str, Any] = {"axis": ax, "keepdims": keepdims}
        if q is not None:
            rkw["method"] = method
        label = f"{kind}(axis={ax})"
        if q is None:
            return op_node(fn, (node,), label, shape=shape, rowwise=True, **rkw)
        return op_node(quantile_of_rows, (node,), label, shape=shape, rowwise=True,
                       kind=kind, q=q, **rkw)
    base = node.child if isinstance(node, Index) else node
    if not isinstance(base, Leaf):
        raise UnsupportedError(
            f"Expected {kind} of an input or of a column selection of one (x[:, cols]). Got "
            "an expression: write it to a file with .to_npy() first, then take its "
            f"{kind}."
        )
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, (int, np.integer))):
        raise ArgumentError(f"Expected axis as an int or None for {kind}. Got {axis!r}.")
    if isinstance(node, Index) and not all(isinstance(k, (slice, int, np.integer))
                                           for k in node.key):
        raise UnsupportedError(f"Expected {kind} of x[:, a:b] or x[:, i] (a view). Got a "
                               "list of columns: take each column's on its own.")
    if axis is not None and int(axis) % max(ndim, 1) != 0:
        raise UnsupportedError(f"Expected axis=None or axis=0 for {kind}. Got {axis!r}.")
    axes = _axes(axis, ndim)
    # a Python float q stays one: numpy's result is then of the data's dtype (float32)
    qs = None if q is None else q if type(q) in (int, float) else np.asarray(q)
    fn = getattr(np, kind)
    sample = np.zeros(tuple(min(n, 1) for n in node.shape), dtype=node.dtype)
    kw: dict[str, Any] = {"axis": axis, "keepdims": keepdims}
    if qs is not None:
        kw["method"] = method
    try:
        res = quiet(fn, sample, qs, **kw) if qs is not None else quiet(fn, sample, **kw)
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"{kind} of {node.dtype} data: {exc}") from None
    except IndexError as exc:  # numpy's quantile of no values
        raise RegionError(f"{kind} of no values (shape {node.shape}): {exc}") from None
    red = tuple(1 if i in axes else n for i, n in enumerate(node.shape)) if keepdims \
        else tuple(n for i, n in enumerate(node.shape) if i not in axes)
    shape = (*(() if qs is None else np.shape(qs)), *red)
    return Reduce(shape, np.asarray(res).dtype, node, kind, axes, keepdims,
                  q=qs, method=method, axis=None if axis is None else int(axis))


def scan_axis(node: Node, kind: str, axis: int | None) -> int:
    """The axis a scan of ``node`` runs along (numpy's rules, as bigarr errors)."""
    ndim = len(node.shape)
    if axis is None:
        if ndim != 1:
            raise UnsupportedError(f"{kind} with axis=None flattens: pass axis=0 (or "
                                   "another axis) for an array of more than 1 dimension.")
        return 0
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ArgumentError(f"Expected axis as an int or None for {kind}. Got {axis!r}.")
    if not -ndim <= axis < ndim:
        raise AxisError(int(axis), ndim)
    return int(axis) % ndim


def accumulate_node(node: Node, kind: str, axis: int | None, dtype: Any) -> Node:
    """The node of lazy ``numpy.<kind>`` (cumsum or cumprod) of ``node``."""
    ndim = len(node.shape)
    fn = getattr(np, kind)
    if not ndim and axis is None:  # numpy's: the one value, flattened to shape (1,)
        return op_node(fn, (node,), kind, shape=(1,), dtype=dtype)
    ax = scan_axis(node, kind, axis)
    if ax:
        return op_node(fn, (node,), kind, shape=node.shape, rowwise=True, axis=ax,
                       dtype=dtype)
    out = np.asarray(quiet(fn, np.ones((1,) * ndim, dtype=node.dtype), axis=0,
                            dtype=dtype)).dtype
    return Scan(node.shape, out, node, kind, 1, None if dtype is None else np.dtype(dtype))


def diff_node(node: Node, n: int, axis: int) -> Node:
    """The node of lazy ``numpy.diff`` of ``node`` (``node`` itself for ``n == 0``)."""
    ndim = len(node.shape)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ArgumentError(f"Expected n as a non-negative int. Got {n!r}.")
    if n < 0:  # numpy's ValueError: "order must be non-negative"
        raise ArgumentValueError(f"Expected n as a non-negative int (order must be "
                                 f"non-negative). Got {n!r}.")
    if not ndim:
        raise ShapeError("diff requires input that is at least one dimensional.")
    ax = scan_axis(node, "diff", axis)
    if n == 0:
        return node
    shape = tuple(max(s - n, 0) if i == ax else s for i, s in enumerate(node.shape))
    if ax:
        return op_node(np.diff, (node,), "diff", shape=shape, rowwise=True, n=int(n), axis=ax)
    dtype = np.diff(np.ones((2, *(1,) * (ndim - 1)), dtype=node.dtype), axis=0).dtype
    return Scan(shape, dtype, node, "diff", int(n))
