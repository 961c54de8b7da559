"""The native fused elementwise kernel (fused.py, ``fused_f4``/``fused_f8`` in _native.c):
numpy's bits on random chains, and the fallback to numpy's ufuncs where it does not apply."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import bigarr
from bigarr._compute import fused, lazyflat, native
from bigarr._compute.lazyeval import Env
from bigarr._compute.lazyitems import item_of

needs_native = pytest.mark.skipif(native.fused_kernel(np.dtype(np.float32)) is None,
                                  reason="the native kernels are not built or are turned off")

_SPECIAL = [0.0, -0.0, 1.0, -1.0, np.nan, -np.nan, np.inf, -np.inf, 1e-40, 3e38, -2.5, 7.0]
_BIN = [np.add, np.subtract, np.multiply, np.true_divide, np.minimum, np.maximum]
_UN = [np.negative, np.absolute, np.sqrt, np.square, np.positive]
_CMP = [np.less, np.less_equal, np.greater, np.greater_equal, np.equal, np.not_equal]
_LOGIC = [np.logical_and, np.logical_or, np.logical_xor, np.bitwise_and, np.bitwise_or]
_SCALARS = [0.0, -0.0, 2.0, 0.1, -3, 7, True, np.inf, np.nan, 1e300]


def _where(c: Any, a: Any, b: Any) -> Any:
    lazy = any(isinstance(v, bigarr.LazyArray) for v in (c, a, b))
    return bigarr.where(c, a, b) if lazy else np.where(c, a, b)


def _floats(leaves: Any) -> Any:
    def grow(inner: Any) -> Any:
        return st.one_of(
            st.tuples(st.just("bin"), st.sampled_from(_BIN), inner, inner),
            st.tuples(st.just("un"), st.sampled_from(_UN), inner),
            st.tuples(st.just("where"), _bools(inner), inner, inner),
        )
    return st.recursive(leaves, grow, max_leaves=6)


def _bools(floats: Any) -> Any:
    cmp = st.tuples(st.just("cmp"), st.sampled_from(_CMP), floats, floats)
    return st.one_of(cmp, st.tuples(st.just("logic"), st.sampled_from(_LOGIC), cmp, cmp),
                     st.tuples(st.just("not"), cmp))


_LEAVES = st.one_of(st.just(("x",)), st.just(("y",)), st.just(("m",)),
                    st.tuples(st.just("s"), st.sampled_from(_SCALARS)))
RECIPES = st.tuples(st.sampled_from(_BIN), _floats(_LEAVES))


def _build(recipe: Any, env: dict[str, Any]) -> Any:
    kind = recipe[0]
    if kind in ("x", "y", "m"):
        return env[kind]
    if kind == "s":
        return recipe[1]
    if kind in ("bin", "cmp", "logic"):
        return recipe[1](_build(recipe[2], env), _build(recipe[3], env))
    if kind == "un":
        return recipe[1](_build(recipe[2], env))
    if kind == "not":
        return ~_build(recipe[1], env)
    return _where(*(_build(r, env) for r in recipe[1:]))


def _scalars_only(recipe: Any) -> bool:
    if recipe[0] in ("x", "y", "m"):
        return False
    return recipe[0] == "s" or all(_scalars_only(r) for r in recipe[1:] if isinstance(r, tuple))


def _scalar_op(recipe: Any) -> bool:
    """Whether some operation of ``recipe`` has only Python scalars below it (or, for a
    ``where``, as both of its values)."""
    if recipe[0] in ("x", "y", "m", "s"):
        return False
    if recipe[0] == "where" and _scalars_only(recipe[2]) and _scalars_only(recipe[3]):
        return True
    return _scalars_only(recipe) or any(_scalar_op(r) for r in recipe[1:] if isinstance(r, tuple))


def _data(shape: tuple[int, ...], dtype: str, seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal(shape) * 5).astype(dtype)
    special = rng.random(shape) < 0.2
    a[special] = rng.choice(np.array(_SPECIAL, dtype=dtype), int(special.sum()))
    return a


def assert_same_bits(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    """Equal values, NaN where numpy has NaN, and the same sign everywhere else (-0.0)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    nan = np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), nan)
    u = np.dtype(f"u{want.dtype.itemsize}")
    np.testing.assert_array_equal(got[~nan].view(u), want[~nan].view(u))


def assert_same_extremes(got: np.ndarray[Any, Any], want: np.ndarray[Any, Any]) -> None:
    """Equal values and NaN where numpy has NaN (the sign of a zero extreme is that of
    whichever zero came first, and numpy's own order of reduction decides it)."""
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


@needs_native
@settings(max_examples=int(os.environ.get("ORACLE_EXAMPLES", "40")), deadline=None)
@given(recipe=RECIPES, rows=st.integers(2, 300),
       k=st.sampled_from([0, 1, 3, 32, 100]), dtype=st.sampled_from(["float32", "float64"]),
       into=st.booleans(), seed=st.integers(0, 1000))
def test_random_chains_give_numpys_bits(recipe: Any, rows: int, k: int, dtype: str,
                                        into: bool, seed: int) -> None:
    top, tree = recipe
    shape = (rows, k) if k else (rows,)  # k = 0: a 1-d chain (m is then one element)
    x, y = _data(shape, dtype, seed), _data(shape, dtype, seed + 1)
    m = _data(shape[1:] or (1,), dtype, seed + 2)
    root = ("bin", top, ("x",), tree)
    with np.errstate(all="ignore"):
        try:
            want = np.asarray(_build(root, {"x": x, "y": y, "m": m}))
        except TypeError:  # numpy refuses it (-True, True - True)
            assume(False)
        lx, ly = bigarr.lazy(x), bigarr.lazy(y)
        expr = _build(root, {"x": lx, "y": ly, "m": m})
    flat = lazyflat.flat_plan(expr.node)
    if flat is None:  # a 1-d chain is taken only for the native kernel
        assert not k and _scalar_op(root)
        return
    # (an operation on Python scalars alone makes a numpy scalar, of a strong type: float32
    # chains then mix dtypes, and numpy's ufuncs run them)
    assert flat.native is not None or _scalar_op(root)
    item = item_of(expr.node)
    env = Env({i: x if i == id(lx.node) else y for i in item.rows}, {}, {}, slice(0, rows))
    out = np.empty(want.shape, want.dtype) if into else None
    before = fused.calls()
    got = flat.run(env, rows, out)
    if flat.native is None:
        assert fused.calls() == before
        if got is None:  # rows not a multiple of lazyflat's group: evaluated as usual
            return
    else:
        assert got is not None and fused.calls() == before + 1
    assert_same_bits(got, want)
    if out is not None:
        assert got is out
    if flat.native is not None:  # the chain's extremes along axis 0, folded as it goes
        for largest in (True, False):
            folded = flat.extreme(env, rows, largest)
            assert folded is not None and folded.dtype == want.dtype
            assert_same_extremes(folded, (want.max if largest else want.min)(
                axis=0, keepdims=True))


@needs_native
def test_minimum_maximum_of_zeros_and_nan_are_numpys() -> None:
    a = np.array([[0.0, -0.0, np.nan, 1.0, -np.inf, np.nan]] * 4, np.float32)
    b = np.array([[-0.0, 0.0, 1.0, np.nan, np.nan, -np.inf]] * 4, np.float32)
    for f in (np.minimum, np.maximum):
        got = f(bigarr.lazy(a), bigarr.lazy(b)).compute(progress=False)
        assert_same_bits(got, f(a, b))


@needs_native
@pytest.mark.parametrize("order", ["C", "F"])
def test_standardize_to_file_takes_the_fused_path_in_c_order(tmp_path: Path, order: str) -> None:
    a = np.asarray(_data((5003, 32), "float32", 0), order=order)
    a[np.isnan(a) | np.isinf(a)] = 1.0
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    mean, std = x.mean(axis=0), x.std(axis=0)
    m, s = (v.compute(progress=False) for v in (mean, std))
    before = fused.calls()
    with ((x - mean) / std).to_npy(tmp_path / "z.npy", budget="4MiB", threads=2,
                                   progress=False) as z:
        assert_same_bits(np.asarray(z), (a - m) / s)
    # an F-order file's rows are not contiguous: numpy's ufuncs run them, to the same bits
    taken = order == "C"
    assert (fused.calls() > before) == taken
    chain = (np.sqrt(abs((x - m) / s * 2.0 + 1.0)) - 0.5).max(axis=0)
    before = fused.calls()
    got = chain.compute(budget="4MiB", threads=2, progress=False)
    assert (fused.calls() > before) == taken
    assert_same_bits(got, (np.sqrt(abs((a - m) / s * 2.0 + 1.0)) - 0.5).max(axis=0))


def _arithmetic(x: Any, m: Any) -> Any:
    """A chain of arithmetic alone (the kernel runs it strip by strip in registers) whose
    intermediates are read again several operations later (stored, then reloaded)."""
    t = x - m
    u = t * t
    v = np.sqrt(abs(u - x) / (t + 2.0))
    return np.minimum(np.maximum(v, -t), u) + np.square(t) * 0.5


@needs_native
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_arithmetic_chains_in_registers_give_numpys_bits(dtype: str) -> None:
    for rows, k in ((1, 3), (7, 3), (64, 1), (700, 3), (2049, 5)):  # strips and their tails
        x = _data((rows, k), dtype, rows)
        m = _data((k,), dtype, rows + 1)
        with np.errstate(all="ignore"):
            want = np.asarray(_arithmetic(x, m))
        lx = bigarr.lazy(x)
        flat = lazyflat.flat_plan(_arithmetic(lx, m).node)
        assert flat is not None and flat.native is not None
        env = Env({i: x for i in item_of(flat.root).rows}, {}, {}, slice(0, rows))
        assert_same_bits(flat.run(env, rows, np.empty_like(want)), want)
        for largest in (True, False):
            got = flat.extreme(env, rows, largest)
            assert got is not None
            assert_same_extremes(got, (want.max if largest else want.min)(axis=0, keepdims=True))


@needs_native
def test_extremes_of_a_chain_fold_in_the_kernel_chunk_by_chunk(tmp_path: Path) -> None:
    # max/min along axis 0 of a fused chain never write the chain: the kernel folds each
    # chunk whole (no tiles: one call per chunk), NaN propagating as numpy's max/min
    a = _data((20011, 8), "float32", 3)
    a[np.isnan(a)] = 2.0
    a[7, 2] = a[19000, 5] = np.nan
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    m = np.linspace(-1, 1, 8, dtype=np.float32)
    for f in (np.max, np.min):
        expr = f(np.sqrt(abs((x - m) / 3.0)) * 2.0, axis=0)
        before = fused.calls()
        got = expr.compute(budget="2MiB", threads=2, progress=False)
        calls = fused.calls() - before
        plan = expr.explain(budget="2MiB", threads=2)
        with np.errstate(all="ignore"):
            assert_same_extremes(got, f(np.sqrt(abs((a - m) / 3.0)) * 2.0, axis=0))
        assert np.isnan(got[[2, 5]]).all()
        # one call per chunk (+ the planner's probes), and for each whose extreme is NaN, one
        # per fused.IN_ORDER_BYTES of it, taken again in row order
        step = plan.steps[-1]
        per = 1 + -(-step.chunk_bytes // fused.IN_ORDER_BYTES)
        assert 1 < calls <= per * (step.chunks + 3)


@pytest.mark.parametrize("build", [
    lambda x: x.astype(np.float64) * 2,             # another dtype inside the chain
    lambda x: np.clip(x, 0, 1),                      # an operation the kernel does not know
    lambda x: x * np.float64(2.0),                  # a strong float64 scalar: float64 math
    lambda x: _where(x > 0, x, np.ones(4, np.float64)),  # a vector of another dtype
    lambda x: (x > 0) * 1.0,                         # a bool used as a number
])
def test_other_chains_fall_back_to_numpy(build: Any) -> None:
    a = _data((6, 4), "float32", 1)
    with np.errstate(all="ignore"):
        expr = build(bigarr.lazy(a))
        want = np.asarray(build(a))
    flat = lazyflat.flat_plan(expr.node)
    assert flat is not None and flat.native is None
    assert_same_bits(expr.compute(progress=False), want)


def test_integers_fall_back_to_numpy() -> None:
    a = np.arange(24, dtype=np.int32).reshape(6, 4)
    flat = lazyflat.flat_plan((bigarr.lazy(a) * 3 + 1).node)
    assert flat is not None and flat.native is None


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # BIGARR_NATIVE=0 loads no library (native.lib is None): no program, numpy's ufuncs
    monkeypatch.setattr(native, "lib", None)
    a = np.ones((64, 8), np.float32)
    expr = (bigarr.lazy(a) - 1) * 2
    flat = lazyflat.flat_plan(expr.node)
    assert flat is not None and flat.native is None
    before = fused.calls()
    assert (expr.compute(progress=False) == 0).all()
    assert fused.calls() == before


@needs_native
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_arithmetic_chains_with_many_intermediates_give_numpys_bits(dtype: str) -> None:
    # a right-deep chain holds one intermediate per level: beyond the kernel's sub-block
    # buffers (FUSED_SCRATCH) it runs strip by strip, below them sub-block by sub-block
    for depth in (3, 15, 20):
        x = _data((1001, 3), dtype, depth)

        def deep(v: Any, depth: int = depth) -> Any:
            out = v * 0.5
            for i in range(depth):
                out = v * float(i + 2) - out
            return out

        with np.errstate(all="ignore"):
            want = np.asarray(deep(x))
        flat = lazyflat.flat_plan(deep(bigarr.lazy(x)).node)
        assert flat is not None and flat.native is not None
        env = Env({i: x for i in item_of(flat.root).rows}, {}, {}, slice(0, 1001))
        assert_same_bits(flat.run(env, 1001, np.empty_like(want)), want)
        got = flat.extreme(env, 1001, False)
        assert got is not None
        assert_same_extremes(got, want.min(axis=0, keepdims=True))


@needs_native
@settings(max_examples=int(os.environ.get("ORACLE_EXAMPLES", "25")), deadline=None)
@given(rows=st.integers(1, 3000), k=st.sampled_from([1, 3, 32]),
       dtype=st.sampled_from(["float32", "float64"]), kind=st.sampled_from(
           ["max", "min", "nanmax", "nanmin"]), nan_col=st.booleans(), seed=st.integers(0, 99))
def test_folded_extremes_of_a_chain_are_numpys(rows: int, k: int, dtype: str, kind: str,
                                              nan_col: bool, seed: int) -> None:
    # max/min/nanmax/nanmin along axis 0 folded in the kernel (sub-blocks, their tails, whole
    # blocks), NaN propagating or ignored as numpy's; a column all NaN gives NaN either way
    x = _data((rows, k), dtype, seed)
    if nan_col:
        x[:, 0] = np.nan
    m = _data((k,), dtype, seed + 1)
    lx = bigarr.lazy(x)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's all-NaN slice warning
        want = getattr(np, kind)(np.sqrt(abs((x - m) * 0.5)) - 1.0, axis=0)
        flat = lazyflat.flat_plan((np.sqrt(abs((lx - m) * 0.5)) - 1.0).node)
        assert flat is not None and flat.native is not None
        env = Env({i: x for i in item_of(flat.root).rows}, {}, {}, slice(0, rows))
        got = flat.extreme(env, rows, kind.endswith("max"), kind.startswith("nan"))
    assert got is not None
    assert_same_extremes(got.reshape(-1), want)


@needs_native
def test_nanmax_nanmin_of_a_chain_fold_in_the_kernel(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folds: list[bool] = []
    extreme = lazyflat.Flat.extreme

    def counted(self: Any, *args: Any) -> Any:
        got = extreme(self, *args)
        folds.append(got is not None and args[-1])
        return got

    monkeypatch.setattr(lazyflat.Flat, "extreme", counted)
    a = _data((20011, 8), "float32", 5)
    a[:, 3] = np.nan  # all NaN: NaN (and numpy's warning)
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(tmp_path / "x.npy")
    m = np.linspace(-1, 1, 8, dtype=np.float32)
    for f in (np.nanmax, np.nanmin):
        expr = f((x - m) / 3.0, axis=0)
        folds.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            got = expr.compute(budget="2MiB", threads=2, progress=False)
            with np.errstate(all="ignore"):
                want = f((a - m) / 3.0, axis=0)
        plan = expr.explain(budget="2MiB", threads=2)
        assert_same_extremes(got, want)
        assert np.isnan(got[3]) and not np.isnan(np.delete(got, 3)).any()
        assert plan.steps[-1].chunks <= sum(folds) and all(folds)  # every chunk folded


@needs_native
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_pair_of_operations_in_one_loop_gives_numpys_bits(dtype: str) -> None:
    # Two operations where the second reads the first's result run as one loop (f_pair in
    # _native.c), one loop per pair of opcodes and per side of the second's operand; a last
    # operation not in a pair folds straight into the max/min (f_opfold). Every pair, both
    # sides, stored and folded four ways, on whole sub-blocks and their tails.
    rows, k = 2000, 3  # blocks of 682 rows: the first copied into the fold, then folded
    x, y, z = (_data((rows, k), dtype, s) for s in (11, 12, 13))
    lx, ly, lz = (bigarr.lazy(a) for a in (x, y, z))
    ops = [(f, 2) for f in _BIN] + [(f, 1) for f in _UN]

    def first(f: Any, n: int, a: Any, b: Any) -> Any:
        return f(a, b) if n == 2 else f(a)

    cases: list[tuple[Any, int, Any, int, int]] = [
        (f1, n1, f2, n2, side) for f1, n1 in ops for f2, n2 in ops
        for side in ((0, 1) if n2 == 2 else (0,))]
    cases += [(f1, n1, None, 0, 0) for f1, n1 in ops]  # one operation: folded from its loop
    for f1, n1, f2, n2, side in cases:
        if f1 is np.positive and f2 is None:
            continue  # (no operation: the leaf itself)

        def chain(a: Any, b: Any, c: Any, f1: Any = f1, n1: int = n1, f2: Any = f2,
                  n2: int = n2, side: int = side) -> Any:
            t = first(f1, n1, a, b)
            if f2 is None:
                return t
            if n2 == 1:
                return f2(t)
            return f2(t, c) if side == 0 else f2(c, t)
        with np.errstate(all="ignore"):
            want = np.asarray(chain(x, y, z))
        flat = lazyflat.flat_plan(chain(lx, ly, lz).node)
        assert flat is not None and flat.native is not None
        arrays = {id(lx.node): x, id(ly.node): y, id(lz.node): z}
        env = Env({i: arrays[i] for i in item_of(flat.root).rows}, {}, {},
                  slice(0, rows))
        assert_same_bits(flat.run(env, rows, np.empty_like(want)), want)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            for kind in ("max", "min", "nanmax", "nanmin"):
                got = flat.extreme(env, rows, kind.endswith("max"),
                                   kind.startswith("nan"))
                assert got is not None
                assert_same_extremes(got.reshape(-1), getattr(np, kind)(want, axis=0))


@needs_native
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(3001, 3), (2500,), (700, 2, 3)])
@pytest.mark.parametrize("pair", [("max", "min"), ("min", "max"), ("max", "sum"),
                                  ("max", "mean"), ("min", "std"), ("max", "max")])
def test_a_folded_extreme_first_in_a_joint_group_is_numpys(dtype: str, shape: tuple[int, ...],
                                                           pair: tuple[str, str]) -> None:
    # The max/min of a chain along axis 0 folds in the kernel, unless it leads a joint group
    # (several statistics of the same values in one sweep, multistat.py): the group's tree
    # takes the chain's values, and a folded state handed to it raised ValueError
    a = _data(shape, dtype, 5)
    a[np.isnan(a)] = 1.0  # (numpy's sum/mean/std of NaN are NaN either way)
    a[np.isinf(a)] = -2.0
    z = bigarr.lazy(a) * 2 - 1
    got = bigarr.compute(*(getattr(z, k)(axis=0) for k in pair), progress=False)
    with np.errstate(all="ignore"):
        want = [getattr(a * 2 - 1, k)(axis=0) for k in pair]
    for g, w, k in zip(got, want, pair, strict=True):
        if k in ("max", "min"):
            assert_same_extremes(np.asarray(g), np.asarray(w))
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5 if dtype == "float32" else 1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [3, 32, 40])
def test_the_kernels_buffers_are_cache_line_aligned(dtype: str, k: int) -> None:
    # numpy's allocations are 16-byte aligned; the kernel's vectors would then straddle cache
    # lines in its row vectors, accumulator and intermediates (7% slower on the warm chain)
    a = _data((997, k), dtype, 5)
    a[np.isnan(a)] = 1.0
    lx = bigarr.lazy(a)
    m, s = np.linspace(-1, 1, k, dtype=dtype), np.linspace(0.5, 2, k, dtype=dtype)
    expr = np.sqrt(abs((lx - m) / s * 1.5 + 0.25)) - m * 0.5
    flat = lazyflat.flat_plan(expr.node)
    program = flat.native
    assert isinstance(program, fused.Program)
    env = Env({j: a for j in item_of(expr.node).rows}, {}, {}, slice(0, a.shape[0]))
    calls = fused.calls()
    out = flat.run(env, a.shape[0], np.empty_like(a))
    got = flat.extreme(env, a.shape[0], True)
    assert fused.calls() - calls == 2 and got is not None
    with np.errstate(all="ignore"):
        want = np.sqrt(abs((a - m) / s * 1.5 + 0.25)) - m * 0.5
    assert_same_bits(out, want)
    assert_same_extremes(got[0], want.max(axis=0))
    local = program.local
    buffers = [*program.filled.values(), local.buf, local.out, local.acc]
    assert len(program.filled) >= 3
    addresses = [b.ctypes.data for b in buffers]
    addresses += [int(v) for v in local.slots[program.nslots - program.temps:]]
    assert all(address % native.VECTOR_ALIGN == 0 for address in addresses), addresses


@needs_native
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ["max", "min", "nanmax", "nanmin"])
def test_folded_extremes_keep_numpys_zero_signs_and_nan_payloads(tmp_path: Path, dtype: str,
                                                                  name: str) -> None:
    # 0.0 and -0.0 are equal, as are NaNs of other payloads: numpy's max/min keep the later
    # of equal values and the first NaN, row by row (fmax/fmin, behind nanmax/nanmin: the
    # first of equal values, the last NaN). The kernel's accumulator holds rows a block
    # apart, so these columns are taken again in row order (fused.Program.extreme).
    rng = np.random.default_rng(21)
    a = np.where(rng.random((20011, 8)) < 0.5, 0.0, -0.0).astype(dtype)
    a[:, 0] = rng.standard_normal(20011).astype(dtype)  # an ordinary column beside them
    a[:, 1] = -a[:, 1] - 1.0  # all negative: min/nanmin column of no zero
    nan, neg = np.array([np.nan, -np.nan], dtype=dtype)
    a[3000, 2], a[5000, 2] = neg, nan  # two payloads in one column: the first or last
    a[::2, 3], a[1::2, 3] = nan, neg  # all NaN, payloads alternating
    np.save(tmp_path / "x.npy", a)
    m = np.zeros(8, dtype=dtype)
    f = getattr(np, name)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        want = f((a - m) * 2.0, axis=0)
        x = bigarr.lazy(tmp_path / "x.npy")
        before = fused.calls()
        got = f((x - m) * 2.0, axis=0).compute(budget="2MiB", threads=2, progress=False)
    assert fused.calls() > before
    u = np.dtype(f"u{a.dtype.itemsize}")
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got.view(u), want.view(u))
