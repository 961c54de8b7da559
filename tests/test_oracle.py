"""numpy is the oracle: every public numeric function of bigarr against numpy, under hypothesis.

Each test draws an array (every dtype family, C and F order, views, 0-d and empty, NaN, inf,
-0.0 and NaT anywhere; see ``strategies.py``), the function's arguments (every axis form,
keepdims, ddof, dtype=, bins, ...), a thread count (1 or 2) and a budget (64 KiB to 64 MiB;
the planner's smallest chunk and the merge tree's leaf are shrunk here, so small arrays are cut
into many chunks and many leaves), and compares bigarr's answer with numpy's. Where numpy
raises, bigarr must raise an exception of the same builtin class.

Run it deeper with ``ORACLE_EXAMPLES=1000 python -m pytest tests/test_oracle.py``.

Where bigarr deliberately differs from numpy
============================================

This table is the one place these rules are stated (the README's accuracy contract quotes it);
``_check_inexact`` and the other helpers below check exactly these rules. ``n`` is the number of
elements one result element reduces, ``eps`` is 2**-53 (float64), ``LEAF`` the merge tree's leaf
(16384 elements; smaller in this suite), ``ref`` a reference computed with ``math.fsum`` over the
values in float64 (exactly rounded sums; two-pass variance with an fsum'd mean), and
``gamma = (min(n, LEAF) + ceil(log2 n) + 2) * eps``, the error bound of a float64 sum that is
sequential within a leaf at worst and pairwise above it.

=============================  ==========================================  ====================
where                          bigarr                                      checked rule
=============================  ==========================================  ====================
sum, mean of float16,          accumulates in float64 (complex128) and     ``|b - ref| <=
float32, complex64 (or a       rounds once to numpy's result dtype;        |np - ref| + 2*d``,
float32 ``dtype=``)            numpy accumulates in the data's precision   ``d = gamma*S``
                               (float16 in float32)                        (``S = sum|x|``,
                                                                           over n for mean)
var, std of float16,           float64 two-pass per leaf (shifted by the   same, ``d = 8 *
float32, complex64             leaf's first element), Chan's merge;        gamma * (sum|x-m|^2
                               numpy computes in the data's precision      + max|x-m| *
                                                                           sum|x-m|) / (n-ddof)``
                                                                           (std: ``d/(2 std)``)
sum, mean, var, std with a     pairwise over leaves as numpy is pairwise,  ``|b - ref| <= max(
float64 or complex128 result   in another order: neither is always the     |np - ref|, d)``,
(also integer data's mean,     more accurate one, both are within the      ``d`` as above
var, std)                      same bound
overflow                       only when the result itself overflows       numpy's ``inf`` may
                               numpy's dtype; numpy may overflow in an     be a finite bigarr
                               intermediate float16/float32 sum            result, checked as
                                                                           above
min, max of +0.0 and -0.0      either zero (IEEE leaves the sign open;     ``b == np``, sign
                               numpy's own answer depends on the order)    not compared
histogram with ``weights=``    per-chunk weighted counts added in chunk    ``|b - np| <= n *
(and ``density=True``)         order                                       eps * sum|w|``
reduce_blocks                  your ``combine`` folds in chunk order:      integers exact;
                               results depend on the chunks exactly as     floats ``<= n * eps
                               your functions do                           * S``
=============================  ==========================================  ====================

Everything else is *exactly* numpy's answer, value, dtype and shape: integer and bool sums
(wrapping as numpy does), integer ``dtype=`` var/std (numpy's truncating integer computation),
timedelta sums and means, min, max, argmin, argmax (first occurrence; NaN and NaT win),
count_nonzero, histogram counts and edges, and map_blocks results. Signs of zero match numpy's
for sums and means; NaN and inf results match numpy's (same class and sign).

Results do not depend on the budget or the threads: floating results merge in a fixed tree
(``test_results_do_not_depend_on_budget_or_threads``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import bigarr
from bigarr._compute import partials as _partials
from bigarr._compute import reductions as _reductions
from bigarr._plan import budget as _budget
from strategies import (
    ALL,
    INTS,
    REAL,
    UINTS,
    ArrayCase,
    array_cases,
    axes_for,
    run_options,
)

EPS = 2.0**-53
EXAMPLES = int(os.environ.get("ORACLE_EXAMPLES", "12"))
oracle = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 12)


@pytest.fixture(autouse=True, scope="module")
def _many_chunks_and_leaves(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Page-sized chunks and 64-element leaves, so arrays of a few KiB have many of both; and
    a directory for the files examples write."""
    global _FILES
    _FILES = tmp_path_factory.mktemp("oracle")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_budget, "MIN_CHUNK_BYTES", 4096)
        mp.setattr(_partials, "SUB_BLOCK_BYTES", 1 << 10)
        mp.setattr(_reductions, "SCRATCH_BYTES", 4 << 10)
        yield


_FILES = Path()  # set by the module fixture


def _stored(case: ArrayCase, where: str) -> tuple[Any, Any]:
    """The array as bigarr gets it (in memory, or the same view of a mapped ``.npy`` file),
    and the mapping to close afterwards (or None)."""
    if where == "memory":
        return case.x, None
    base = case.base
    arr = bigarr.create(_FILES / "x.npy", base.shape, base.dtype, order=case.order,
                        overwrite=True)
    arr[...] = base
    arr.flush()
    return arr[case.key], arr


def _quiet(fn: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            return fn(), None
        except Exception as exc:
            return None, exc


def _same_failure(got: BaseException | None, want: BaseException | None,
                  got_value: Any) -> bool:
    """True when numpy raised (and bigarr raised the same builtin class); fails otherwise."""
    if want is None:
        assert got is None, f"numpy answers, bigarr raises {got!r}"
        return False
    assert got is not None, f"numpy raises {want!r}, bigarr answers {got_value!r}"
    builtin = next(c for c in type(want).__mro__ if c.__module__ == "builtins")
    assert isinstance(got, builtin), f"numpy raises {want!r}, bigarr {got!r}"
    return True


# ---- references ------------------------------------------------------------------------------
def _rows(x: np.ndarray[Any, Any], axis: Any) -> tuple[np.ndarray[Any, Any], tuple[int, ...]]:
    """``x`` as (result elements, reduced elements), and the result's shape (no keepdims)."""
    ndim = x.ndim
    if axis is None:
        axes = list(range(ndim))
    else:
        axes = sorted(a % ndim for a in ((axis,) if isinstance(axis, int) else axis))
    kept = [i for i in range(ndim) if i not in axes]
    moved = np.transpose(x, kept + axes)
    shape = tuple(x.shape[i] for i in kept)
    return moved.reshape(math.prod(shape), math.prod(x.shape[a] for a in axes)), shape


def _fsum(row: np.ndarray[Any, Any]) -> complex | float:
    if row.dtype.kind == "c":
        return complex(math.fsum(row.real.tolist()), math.fsum(row.imag.tolist()))
    return math.fsum(row.tolist())


def _reference(name: str, x: np.ndarray[Any, Any], axis: Any,
               ddof: float) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(reference, error allowance before the final rounding) per result element."""
    work = x.astype(np.complex128 if x.dtype.kind == "c" else np.float64)
    rows, shape = _rows(work, axis)
    n = rows.shape[1]
    leaf = _partials.SUB_BLOCK_BYTES // 16
    gamma = (min(n, leaf) + math.ceil(math.log2(max(n, 2))) + 2) * EPS
    refs, allow = [], []
    for row in rows:
        if n == 0:  # an empty reduction: 0 for sums, numpy's NaN (or error) otherwise
            refs.append(0.0 if name == "sum" else np.nan)
            allow.append(0.0 if name == "sum" else np.inf)
            continue
        if not np.isfinite(row).all():
            refs.append(np.nan)
            allow.append(np.inf)
            continue
        total = _fsum(row)
        size = math.fsum(np.abs(row).tolist())
        if name == "sum":
            refs.append(total)
            allow.append(gamma * size)
        elif name == "mean":
            refs.append(total / n)
            allow.append(gamma * size / n)
        else:
            m = total / n
            dev = np.abs(row - m)
            m2 = math.fsum((dev * dev).tolist())
            denom = max(n - ddof, 0)
            var = m2 / denom if denom else (np.inf if m2 else np.nan)
            d = 8 * gamma * (m2 + float(dev.max()) * math.fsum(dev.tolist()))
            d = d / denom if denom else np.inf
            if name == "var":
                refs.append(var)
                allow.append(d)
            else:
                std = math.sqrt(var) if np.isfinite(var) else var
                refs.append(std)
                allow.append(d / (2 * std) if std > 0 else math.sqrt(d))
    ref = np.array(refs, dtype=np.complex128 if name in ("sum", "mean") and
                   x.dtype.kind == "c" else np.float64)
    return ref.reshape(shape), np.array(allow, dtype=np.float64).reshape(shape)


def _check_inexact(name: str, x: np.ndarray[Any, Any], axis: Any, ddof: float, keepdims: bool,
                   got: Any, want: Any) -> None:
    """The accuracy rules of the table at the top, element by element."""
    g, w = np.asarray(got), np.asarray(want)
    assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
    ref, allow = _reference(name, x, axis, ddof)
    if keepdims:
        g, w = g.reshape(ref.shape), w.reshape(ref.shape)
    g64 = g.astype(ref.dtype)
    w64 = w.astype(ref.dtype)
    loose = g.dtype in (np.float16, np.float32, np.complex64)
    finfo = np.finfo(g.dtype)
    for idx in np.ndindex(ref.shape):
        r, a, gv, wv = ref[idx], allow[idx], g64[idx], w64[idx]
        if not np.isfinite(a):  # non-finite data or n - ddof <= 0: numpy's non-finite answer
            for gc, wc in ((gv.real, wv.real), (gv.imag, wv.imag)):
                if np.isfinite(wc):  # the finite part of a complex result next to an inf
                    assert np.isfinite(gc) and abs(gc - wc) <= 1e-3 * (1 + abs(wc)), (idx, gv, wv)
                else:
                    assert _same_special(gc, wc), (idx, gv, wv)
            continue
        representable = abs(r) <= float(finfo.max)
        if not np.isfinite(wv) and representable:  # numpy overflowed on the way; bigarr may not
            assert np.isfinite(gv) and abs(gv - r) <= 0.5 * _ulp(r, g.dtype) + 2 * a, (idx, gv, r)
            continue
        if not np.isfinite(wv):
            assert _same_special(gv, wv), (idx, gv, wv)
            continue
        err_b, err_np = abs(gv - r), abs(wv - r)
        bound = err_np + 2 * a if loose else max(err_np, a)
        assert err_b <= bound * (1 + 1e-9) + 1e-300, (
            f"{name} at {idx}: bigarr {gv!r} is {err_b:.3g} from the reference {r!r}, numpy "
            f"{wv!r} is {err_np:.3g}; allowed {bound:.3g}")
        if name in ("sum", "mean") and r == 0 and gv == 0 and wv == 0 and g.dtype.kind == "f":
            assert np.signbit(g[idx]) == np.signbit(w[idx]), (idx, g[idx], w[idx])


def _ulp(value: complex | float, dtype: np.dtype[Any]) -> float:
    real = np.dtype(np.float32 if dtype == np.complex64 else dtype) if dtype.kind == "c" else dtype
    v = abs(value)
    return float(np.spacing(np.asarray(v, dtype=real))) * (2 if dtype.kind == "c" else 1)


def _same_special(a: Any, b: Any) -> bool:
    a, b = complex(a), complex(b)
    if np.isnan(a) or np.isnan(b):
        return bool(np.isnan(a) and np.isnan(b))
    return a == b


def _check_exact(got: Any, want: Any, zero_sign: bool = True) -> None:
    g, w = np.asarray(got), np.asarray(want)
    assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
    assert type(got) is type(want) or isinstance(got, np.ndarray) == isinstance(want, np.ndarray)
    np.testing.assert_array_equal(g, w)
    if zero_sign and g.dtype.kind == "f":
        np.testing.assert_array_equal(np.signbit(g), np.signbit(w))


# ---- reductions ------------------------------------------------------------------------------
REDUCTIONS = ["sum", "mean", "var", "std", "min", "max", "argmin", "argmax", "count_nonzero"]
_NUMERIC = [d for d in ALL if not d.startswith("datetime")]
DTYPES = {
    "sum": [*_NUMERIC], "mean": [*_NUMERIC],
    "var": [d for d in _NUMERIC if not d.startswith("timedelta")],
    "std": [d for d in _NUMERIC if not d.startswith("timedelta")],
    "min": ALL, "max": ALL, "argmin": ALL, "argmax": ALL, "count_nonzero": ALL,
}


@st.composite
def reduction_calls(draw: st.DrawFn, name: str) -> tuple[ArrayCase, dict[str, Any], str]:
    case = draw(array_cases(DTYPES[name]))
    x = case.x
    kwargs: dict[str, Any] = {"axis": draw(axes_for(x.ndim, single=name.startswith("arg")))}
    kwargs["keepdims"] = draw(st.booleans())
    if name in ("var", "std"):
        kwargs["ddof"] = draw(st.sampled_from([0, 1, 2]))
    if name in ("sum", "mean", "var", "std"):
        # (numpy's var of complex data with a real dtype= drops the mean's imaginary part: a
        # combination with no meaning, left out)
        choices: list[Any] = [None, None, "complex128" if x.dtype.kind == "c" else "float64"]
        if x.dtype.kind in "fiub" and name in ("sum", "mean"):
            choices.append("float32")
        if x.dtype.kind in "iub" and name in ("sum", "var", "std"):
            choices.append("int64")
        kwargs["dtype"] = draw(st.sampled_from(choices))
    where = draw(st.sampled_from(["memory", "memory", "file"]))
    return case, kwargs, where


def _is_exact(name: str, x: np.ndarray[Any, Any], kwargs: dict[str, Any], want: Any) -> bool:
    if name not in ("sum", "mean", "var", "std"):
        return True
    return np.asarray(want).dtype.kind not in "fc"


@pytest.mark.parametrize("name", REDUCTIONS)
def test_reduction_matches_numpy(name: str) -> None:
    @oracle
    @given(call=reduction_calls(name), run=run_options)
    def check(call: tuple[ArrayCase, dict[str, Any], str], run: dict[str, Any]) -> None:
        case, kwargs, where = call
        x = case.x
        want, want_exc = _quiet(lambda: getattr(np, name)(x, **kwargs))
        a, mapped = _stored(case, where)
        try:
            got, got_exc = _quiet(lambda: getattr(bigarr, name)(a, **kwargs, progress=False,
                                                                **run))
        finally:
            if mapped is not None:
                mapped.close(force=True)
        if _same_failure(got_exc, want_exc, got):
            return
        if _is_exact(name, x, kwargs, want):
            _check_exact(got, want, zero_sign=name not in ("min", "max"))
        else:
            _check_inexact(name, x, kwargs["axis"], kwargs.get("ddof", 0),
                           kwargs["keepdims"], got, want)

    check()


# ---- histogram -------------------------------------------------------------------------------
@st.composite
def histogram_calls(draw: st.DrawFn) -> tuple[ArrayCase, dict[str, Any]]:
    case = draw(array_cases(REAL))
    x = case.x
    kwargs: dict[str, Any] = {}
    form = draw(st.sampled_from(["int", "0-d", "edges"]))
    count = draw(st.integers(1, 20))
    if form == "int":
        kwargs["bins"] = count
    elif form == "0-d":
        kwargs["bins"] = np.array(count)
    else:
        kwargs["bins"] = np.sort(np.array(draw(st.lists(
            st.floats(-30, 30, allow_nan=False), min_size=2, max_size=8, unique=True))))
    if draw(st.booleans()):
        low = draw(st.floats(-20, 5, allow_nan=False))
        kwargs["range"] = (low, low + draw(st.floats(0.5, 30)))
    if draw(st.booleans()):
        kwargs["weights"] = np.random.default_rng(draw(st.integers(0, 99))).random(x.shape)
    kwargs["density"] = draw(st.booleans())
    return case, kwargs


@oracle
@given(call=histogram_calls(), run=run_options)
def test_histogram_matches_numpy(call: tuple[ArrayCase, dict[str, Any]],
                                 run: dict[str, Any]) -> None:
    case, kwargs = call
    x = case.x
    want, want_exc = _quiet(lambda: np.histogram(x, **kwargs))
    got, got_exc = _quiet(lambda: bigarr.histogram(x, **kwargs, progress=False, **run))
    # With weights= the data and weights go by whole rows: a row larger than the chunk budget
    # is refused up front, as documented.
    assume(not (isinstance(got_exc, bigarr.errors.BudgetError) and "weights" in kwargs))
    if _same_failure(got_exc, want_exc, got):
        return
    np.testing.assert_array_equal(got[1], want[1])
    assert got[1].dtype == want[1].dtype and got[0].dtype == want[0].dtype
    if "weights" not in kwargs and not kwargs["density"]:
        np.testing.assert_array_equal(got[0], want[0])
        return
    weights = kwargs.get("weights", np.ones(x.shape))
    scale = x.size * EPS * float(np.abs(weights).sum())
    if kwargs["density"]:  # counts / widths / total: relative error of the counts, twice
        scale = 4 * scale * float(np.nanmax(np.abs(want[0]), initial=0)) / max(
            float(np.abs(weights).sum()), 1e-300)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=scale + 1e-300)


# ---- reduce_blocks and map_blocks ------------------------------------------------------------
@oracle
@given(case=array_cases([*INTS, *UINTS, "bool", "float64"], min_dims=1), run=run_options,
       pair=st.booleans())
def test_reduce_blocks_with_add_matches_numpy(case: ArrayCase, run: dict[str, Any],
                                              pair: bool) -> None:
    x = case.x
    assume(x.ndim >= 1)
    acc = np.float64 if x.dtype.kind == "f" else np.int64
    if pair:  # two inputs: chunks are rows of both
        y = x[::-1].copy()
        try:
            got = bigarr.reduce_blocks(lambda a, b: np.add.reduce(a * b, axis=None, dtype=acc),
                                       np.add, x, y, progress=False, **run)
        except bigarr.errors.BudgetError:
            assume(False)  # a row larger than the chunk budget: refused up front, as documented
            return
        with np.errstate(all="ignore"):
            want = np.add.reduce(x * y, axis=None, dtype=acc)
            values = np.abs((x * y).astype(np.float64)) if acc is np.float64 else None
    else:
        got = bigarr.reduce_blocks(lambda b: np.add.reduce(b, axis=None, dtype=acc), np.add, x,
                                   progress=False, **run)
        want = np.add.reduce(x, axis=None, dtype=acc)
        values = np.abs(x.astype(np.float64)) if acc is np.float64 else None
    if values is None:
        assert got == want and np.asarray(got).dtype == np.asarray(want).dtype
    elif not np.isfinite(want):
        assert _same_special(got, want)
    else:
        assert abs(got - want) <= 2 * x.size * EPS * float(values.sum())


def _elementwise(x: np.ndarray[Any, Any]) -> Callable[..., Any]:
    if x.dtype.kind == "M":
        return lambda b, *w: b + np.timedelta64(1, "s")
    return lambda b, *w: np.add(b, w[0]) if w else np.add(b, b)


@oracle
@given(case=array_cases(ALL, min_dims=1), run=run_options,
       out=st.sampled_from(["file", "array"]), broadcast=st.booleans())
def test_map_blocks_elementwise_matches_numpy(case: ArrayCase, run: dict[str, Any], out: str,
                                              broadcast: bool) -> None:
    x = case.x
    fn = _elementwise(x)
    extra = [x[0]] if broadcast and x.dtype.kind != "M" and len(x) else []
    want = fn(x, *extra)
    target: Any = (_FILES / "out.npy") if out == "file" else np.empty(want.shape, want.dtype)
    try:
        got = bigarr.map_blocks(fn, x, *extra, out=target, overwrite=True, progress=False,
                                **run)
    except bigarr.errors.BudgetError:
        assume(False)  # a row larger than the chunk budget: refused up front, as documented
        return
    try:
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(np.asarray(got), want)
    finally:
        if isinstance(got, bigarr.memmap):
            got.close()


# ---- chunk independence ----------------------------------------------------------------------
@pytest.mark.parametrize("leaf_bytes", [4 << 10, None], ids=["small-leaves", "default-leaves"])
def test_results_do_not_depend_on_budget_or_threads(
        leaf_bytes: int | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Regression: float16 column sums of a strided view varied by up to 300 (on sums of
    # 600-1,400) with the budget, and threads changed chunk sizes and so results.
    rows = 320
    if leaf_bytes is not None:  # leaves of 256 elements
        monkeypatch.setattr(_partials, "SUB_BLOCK_BYTES", leaf_bytes)
    else:  # the real leaf (16384 elements): arrays of several leaves
        monkeypatch.setattr(_partials, "SUB_BLOCK_BYTES", 256 << 10)
        rows = 1280
    rng = np.random.default_rng(16)
    base = rng.normal(1.0, 3.0, size=(2 * rows + 1, 68))
    def mapped(name: str, data: np.ndarray) -> bigarr.memmap:
        # Files: the budget cuts a mapped array into chunks (an in-memory one costs no budget).
        np.save(tmp_path / f"{name}.npy", data)
        return bigarr.open(tmp_path / f"{name}.npy")

    arrays = {
        "float32 C": mapped("c", base[:rows, :64].astype(np.float32)),
        "float32 F": mapped("f", np.asfortranarray(base[:rows, :64].astype(np.float32))),
        "float16 strided rows": mapped("h", (base[:, :64] / 16).astype(np.float16))[1::2],
        "float32 columns": mapped("cols", base[:rows].astype(np.float32))[:, 2:-2],
        "float32 long rows": mapped("long", base[:rows, :64].astype(np.float32).reshape(8, -1)),
    }
    for label, x in arrays.items():
        for name in ("sum", "mean", "var", "std"):
            for axis in (None, 0, 1):
                results, ran = set(), 0
                for budget in ("192KiB", "384KiB", "1MiB", "64MiB"):
                    for threads in (1, 2):
                        try:
                            got = getattr(bigarr, name)(x, axis=axis, budget=budget,
                                                        threads=threads, progress=False)
                        except bigarr.errors.BudgetError:
                            continue  # partial results of a long kept axis: refused up front
                        results.add(np.asarray(got).tobytes())
                        ran += 1
                assert ran >= 2 and len(results) == 1, (label, name, axis)


# ---- the nine differences of issue 16, one regression test each ------------------------------
def test_nat_in_a_later_chunk_wins_argmin_and_argmax(tmp_path: Path) -> None:
    t = np.full(50_000, np.datetime64("2020-01-01", "s"))
    t[5] = np.datetime64("2019-01-01")
    t[40_000] = np.datetime64("NaT")  # far beyond the first chunk
    np.save(tmp_path / "t.npy", t)
    t = bigarr.open(tmp_path / "t.npy")  # mapped: the budget cuts it into chunks
    opts: dict[str, Any] = {"budget": "64KiB", "threads": 2, "progress": False}
    for fn in ("argmin", "argmax"):
        assert getattr(bigarr, fn)(t, **opts) == getattr(np, fn)(t) == 40_000
        for x in (t.reshape(500, 100), t.view("int64").astype("m8[s]").reshape(500, 100)):
            np.testing.assert_array_equal(getattr(bigarr, fn)(x, axis=0, **opts),
                                          getattr(np, fn)(x, axis=0))


def test_zero_d_npy_files_reduce_like_numpy(tmp_path: Path) -> None:
    path = tmp_path / "scalar.npy"
    np.save(path, np.float64(2.5))
    for source in (path, bigarr.open(path)):
        for name in REDUCTIONS:
            _check_exact(getattr(bigarr, name)(source, progress=False),
                         getattr(np, name)(np.load(path)))


def test_zero_d_arrays_var_and_std_are_zero_like_numpy() -> None:
    for x in (np.asarray(np.float32(3.0)), np.asarray(7), np.asarray(1 + 2j)):
        for name in ("var", "std", "mean", "sum"):
            _check_exact(getattr(bigarr, name)(x, progress=False), getattr(np, name)(x))


def test_axis_0_and_minus_1_on_zero_d_as_numpy_and_axis_lists_refused() -> None:
    x = np.asarray(np.float64(4.0))
    for name in ("sum", "min", "max", "argmin", "argmax", "count_nonzero"):
        for axis in (0, -1):
            _check_exact(getattr(bigarr, name)(x, axis=axis, progress=False),
                         getattr(np, name)(x, axis=axis))
    m = np.ones((3, 4))
    for name in ("sum", "mean", "var", "std", "min", "max", "count_nonzero"):
        with pytest.raises(TypeError):
            getattr(np, name)(m, axis=[0, 1])
        with pytest.raises(bigarr.errors.ArgumentError, match="tuple"):
            getattr(bigarr, name)(m, axis=[0, 1], progress=False)


def test_var_and_std_with_an_integer_dtype_compute_as_numpy() -> None:
    x = np.arange(12).reshape(3, 4) * 7 + 3
    assert bigarr.var(x, dtype=np.int64, progress=False) == np.var(x, dtype=np.int64) == 584
    for axis in (None, 0, 1):
        _check_exact(bigarr.var(x, axis=axis, dtype=np.int64, progress=False),
                     np.var(x, axis=axis, dtype=np.int64))
    _check_exact(bigarr.std(x, dtype=np.int64, progress=False), np.std(x, dtype=np.int64))
    with pytest.raises(TypeError):
        np.std(x, axis=1, dtype=np.int64)
    with pytest.raises(bigarr.errors.DtypeError):
        bigarr.std(x, axis=1, dtype=np.int64, progress=False)
    big = np.random.default_rng(1).integers(0, 1000, size=40_000).astype(np.int32)
    _check_exact(bigarr.var(big, dtype=np.int64, budget="64KiB", progress=False),
                 np.var(big, dtype=np.int64))


def test_histogram_with_bins_as_a_zero_d_array_is_a_count() -> None:
    x = np.random.default_rng(2).normal(size=20_000)
    got = bigarr.histogram(x, bins=np.array(10), budget="64KiB", threads=2, progress=False)
    want = np.histogram(x, bins=np.array(10))
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(TypeError):
        np.histogram(x, bins=np.array(2.5))
    with pytest.raises(bigarr.errors.ArgumentError):
        bigarr.histogram(x, bins=np.array(2.5), progress=False)


def test_histogram_of_bool_data_bins_it_as_numpy() -> None:
    x = np.random.default_rng(3).random(20_000) > 0.3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy warns that it converts
        want = np.histogram(x, bins=3)
    got = bigarr.histogram(x, bins=3, budget="2MiB", progress=False)  # np.histogram's sort
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


def test_float32_sum_is_never_less_accurate_than_numpy() -> None:
    x = np.ones(8 * 2**20, np.float32)
    x[-1] = 1e8  # 8M-1 ones, then 1e8: the exact sum 108388607 rounds to 108388608 in float32
    exact = math.fsum(x.astype(np.float64).tolist())
    want = np.sum(x)
    for budget in ("1MiB", "4MiB", "64MiB"):
        got = bigarr.sum(x, budget=budget, threads=2, progress=False)
        assert got.dtype == np.float32
        assert abs(float(got) - exact) <= abs(float(want) - exact)
        assert got == np.float32(exact)


def test_operand_with_the_first_length_but_fewer_dims_is_broadcast(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    x = rng.random((128, 128, 64)).astype(np.float32)
    w = rng.random((128, 64)).astype(np.float32)  # first length 128 == N, but 2 dims
    for budget in ("600KiB", "2MiB", "64MiB"):
        out = bigarr.map_blocks(lambda a, b: a + b, x, w, out=tmp_path / "o.npy",
                                overwrite=True, budget=budget, progress=False)
        np.testing.assert_array_equal(np.asarray(out), x + w)
        out.close()


def test_accuracy_rules_are_checked_by_a_check_that_can_fail() -> None:
    # The float32 rule rejects a sum that is rounded in float32 chunk by chunk (the old bug).
    x = np.ones(70_000, np.float32)
    x[-1] = 1e8
    bad = np.float32(np.float32(math.fsum(x.tolist())) + np.float32(64))  # 8 ulps off
    with pytest.raises(AssertionError):
        _check_inexact("sum", x, None, 0, False, bad, np.sum(x))
    _check_inexact("sum", x, None, 0, False, bigarr.sum(x, progress=False), np.sum(x))

