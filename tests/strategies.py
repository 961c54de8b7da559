"""Hypothesis strategies for the differential (numpy-as-oracle) suite, ``test_oracle.py``.

An example is an :class:`ArrayCase`: an array of any dtype family, C or F order, possibly a view
(column slice or strided rows), 0-d or empty, with NaN, inf, -0.0 or NaT placed anywhere, stored
in memory or in a ``.npy`` file. Values come from a seeded numpy generator, so arrays of
thousands of elements (many chunks and many merge-tree leaves) stay cheap to draw; the special
values are drawn by hypothesis, so it shrinks towards the one that matters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

#: Every dtype family the suite covers, by name.
FLOATS = ["float16", "float32", "float64"]
COMPLEX = ["complex64", "complex128"]
INTS = ["int8", "int16", "int32", "int64"]
UINTS = ["uint8", "uint16", "uint32", "uint64"]
TIMES = ["datetime64[s]", "timedelta64[ms]"]
ALL = ["bool", *INTS, *UINTS, *FLOATS, *COMPLEX, *TIMES]
REAL = ["bool", *INTS, *UINTS, *FLOATS]

#: Budgets from 64 KiB to 64 MiB; the suite shrinks the planner's smallest chunk so small arrays
#: under small budgets are cut into many chunks.
BUDGETS = ["64KiB", "100KiB", "256KiB", "1MiB", "64MiB"]

MAX_ELEMENTS = 6000


@dataclass
class ArrayCase:
    """One drawn array and how it is laid out."""

    x: np.ndarray[Any, Any]
    """The array numpy sees: ``base[key]``."""
    base: np.ndarray[Any, Any]
    """The whole array (C or F order) that ``x`` is a view of."""
    key: tuple[slice, ...]
    order: str
    view: str
    values: str
    specials: list[tuple[float, str]]

    def __repr__(self) -> str:
        return (f"ArrayCase(shape={self.x.shape}, dtype={self.x.dtype}, order={self.order}, "
                f"view={self.view}, values={self.values}, specials={self.specials}, "
                f"strides={self.x.strides})")


def _fill(shape: tuple[int, ...], dtype: np.dtype[Any], seed: int, values: str) -> Any:
    rng = np.random.default_rng(seed)
    kind = dtype.kind
    if kind == "b":
        return rng.random(shape) < (0.5 if values != "ties" else 0.05)
    if kind in "iu":
        info = np.iinfo(dtype)
        if values == "wide":  # the whole range: sums wrap, as numpy's do
            return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        low = 0 if kind == "u" else -3
        return rng.integers(low, 4, size=shape).astype(dtype)  # many ties
    if kind in "mM":
        step = rng.integers(-1000, 1000, size=shape) if values != "ties" else rng.integers(
            0, 3, size=shape)
        return (step + 1_600_000_000).astype(np.int64).view(dtype) if kind == "M" else \
            step.astype(np.int64).view(dtype)
    real_dtype = np.dtype(np.float32 if dtype == np.complex64 else np.float64) if kind == "c" \
        else dtype
    small = dtype in (np.float16,)

    def one() -> Any:
        if values == "ties":
            return rng.integers(-2, 3, size=shape).astype(real_dtype)
        if values == "ones":  # the float32 accuracy trap: many ones, then a large value
            out = np.ones(shape, dtype=real_dtype)
            if out.size:
                out.reshape(-1)[-1] = 1e3 if small else 1e8
            return out
        if values == "offset":  # small spread on a large offset: var's cancellation trap
            base = 100.0 if small else 1e4
            return (base + rng.normal(0, 1, size=shape)).astype(real_dtype)
        if values == "wide":  # magnitudes over six decades, both signs
            scale = 10.0 ** rng.uniform(-3, 1 if small else 3, size=shape)
            return (rng.normal(size=shape) * scale).astype(real_dtype)
        return rng.normal(0, 1 if small else 10, size=shape).astype(real_dtype)

    if kind == "c":
        return (one() + 1j * one()).astype(dtype)
    return one()


_SPECIAL = {
    "f": ["nan", "inf", "-inf", "-0.0"],
    "c": ["nan", "inf", "-0.0"],
    "m": ["nat"],
    "M": ["nat"],
}


def _special(name: str, dtype: np.dtype[Any]) -> Any:
    if name == "nat":
        return np.array("NaT", dtype=dtype)
    value = float(name)
    return complex(value, 0.0) if dtype.kind == "c" else value


@st.composite
def shapes(draw: st.DrawFn, min_dims: int = 0, max_dims: int = 3,
           allow_empty: bool = True) -> tuple[int, ...]:
    """Shapes of up to :data:`MAX_ELEMENTS` elements: 1-d long, 2-d wide or tall, 3-d."""
    ndim = draw(st.integers(min_dims, max_dims))
    dims = []
    budget = MAX_ELEMENTS
    for i in range(ndim):
        left = ndim - i - 1
        most = max(1, budget // (3 ** left))
        n = draw(st.integers(0 if allow_empty else 1, most) if draw(st.booleans())
                 else st.integers(1, min(most, 9)))
        dims.append(n)
        budget = max(1, budget // max(n, 1))
    return tuple(dims)


@st.composite
def array_cases(draw: st.DrawFn, dtypes: list[str] | None = None, min_dims: int = 0,
                max_dims: int = 3, allow_empty: bool = True, specials: bool = True,
                values: list[str] | None = None) -> ArrayCase:
    """An :class:`ArrayCase` of one of ``dtypes`` (default: every family)."""
    dtype = np.dtype(draw(st.sampled_from(dtypes or ALL)))
    shape = draw(shapes(min_dims, max_dims, allow_empty))
    order = draw(st.sampled_from("CF"))
    value_kind = draw(st.sampled_from(values or ["normal", "ties", "wide", "ones", "offset"]))
    seed = draw(st.integers(0, 2**32 - 1))
    view = draw(st.sampled_from(["whole", "columns", "strided rows"])) if shape else "whole"
    # Draw the base larger than the view, so the view has the drawn shape (or close to it).
    base_shape = list(shape)
    if view == "columns" and len(shape) >= 2:
        base_shape[-1] += 2
    elif view == "strided rows":
        base_shape[0] = base_shape[0] * 2 + 1
    base = np.asarray(_fill(tuple(base_shape), dtype, seed, value_kind), dtype=dtype)
    base = np.asfortranarray(base) if order == "F" else np.ascontiguousarray(base)
    key: tuple[slice, ...] = tuple(slice(None) for _ in shape)
    if view == "columns" and len(shape) >= 2:
        key = (*key[:-1], slice(1, -1))
    elif view == "strided rows":
        key = (slice(1, None, 2), *key[1:])
    else:
        view = "whole"
    x = base[key]
    placed: list[tuple[float, str]] = []
    names = _SPECIAL.get(dtype.kind, [])
    if specials and names and x.size:
        placed = draw(st.lists(st.tuples(st.floats(0, 1, exclude_max=True),
                                         st.sampled_from(names)), max_size=3))
        flat_positions = [min(int(f * x.size), x.size - 1) for f, _ in placed]
        for pos, (_f, name) in zip(flat_positions, placed, strict=True):
            x[np.unravel_index(pos, x.shape)] = _special(name, dtype)
    return ArrayCase(x, base, key, order, view, value_kind, placed)


def axes_for(ndim: int, single: bool = False) -> st.SearchStrategy[Any]:
    """numpy's axis forms for ``ndim`` dimensions: None, an int (negative too), a tuple."""
    if ndim == 0:
        return st.sampled_from([None, 0, -1]) if single else st.sampled_from([None, 0, -1, ()])
    one = st.integers(-ndim, ndim - 1)
    if single:
        return st.one_of(st.none(), one)
    many = st.lists(st.integers(0, ndim - 1), min_size=1, max_size=ndim, unique=True).flatmap(
        lambda axes: st.permutations(axes).map(
            lambda perm: tuple(a - ndim if i % 2 else a for i, a in enumerate(perm))))
    return st.one_of(st.none(), one, many)


def reduced_count(shape: tuple[int, ...], axis: Any) -> int:
    """How many elements each result element reduces."""
    if axis is None:
        return math.prod(shape)
    axes = (axis,) if isinstance(axis, int) else axis
    return math.prod(shape[a] for a in axes)


run_options = st.fixed_dictionaries({
    "threads": st.sampled_from([1, 2]),
    "budget": st.sampled_from(BUDGETS),
})
