"""Hostile review, sixth session: each test is a defect found by trying to break the code."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr


def test_eager_reductions_of_a_0d_file_refuse_a_bad_axis_as_a_bigarr_error(
        tmp_path: Path) -> None:
    """numpy accepts axis 0 and -1 of a 0-d array in ufunc reductions (sum, max) but not a
    tuple, nor in mean/var/std: bigarr.sum(axis=(0,)) and bigarr.mean(axis=0) of a 0-d file let
    numpy's bare AxisError out of the dtype probe."""
    np.save(tmp_path / "z.npy", np.array(3.0))
    p = str(tmp_path / "z.npy")
    assert bigarr.sum(p, axis=0, progress=False) == np.sum(np.array(3.0), axis=0)
    for call in (lambda: bigarr.sum(p, axis=(0,), progress=False),
                 lambda: bigarr.mean(p, axis=0, progress=False),
                 lambda: bigarr.var(p, axis=-1, progress=False),
                 lambda: bigarr.std(p, axis=0, progress=False)):
        with pytest.raises(bigarr.errors.AxisError) as info:
            call()
        assert isinstance(info.value, np.exceptions.AxisError)


@pytest.mark.parametrize("name", ["sum", "prod", "max", "min", "any", "all", "nansum", "nanmax",
                                  "nanmin", "nanmean", "nanvar", "argmax", "count_nonzero",
                                  "mean", "var", "std"])
def test_lazy_reductions_of_a_0d_array_follow_numpys_axis_rule(tmp_path: Path,
                                                                 name: str) -> None:
    """np.sum(x, axis=0) of a 0-d array is numpy's 3.0 (ufunc reductions take axis 0 and -1
    of 0-d data); the lazy one raised AxisError, unlike numpy and the eager bigarr.sum. Where
    numpy refuses (mean, var, tuples) the lazy one raises bigarr's AxisError."""
    a = np.array(3.0)
    np.save(tmp_path / "z.npy", a)
    fn = getattr(np, name)
    for axis in (0, -1, (0,)):
        if name in ("argmax",) and axis == (0,):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                want = fn(a, axis=axis)
            except np.exceptions.AxisError:
                with pytest.raises(bigarr.errors.AxisError):
                    fn(bigarr.lazy(str(tmp_path / "z.npy")), axis=axis)
                continue
            got = fn(bigarr.lazy(str(tmp_path / "z.npy")), axis=axis).compute()
        assert np.asarray(got).dtype == np.asarray(want).dtype
        np.testing.assert_array_equal(got, want)


def test_numpy_functions_lazy_arrays_compute_first_raise_bigarr_errors(tmp_path: Path) -> None:
    """np.sort, np.ptp, np.nanprod ... of a LazyArray run numpy on its computed values; numpy's
    refusals came out bare (numpy's AxisError, TypeError), not as bigarr errors."""
    np.save(tmp_path / "x.npy", np.arange(6.0).reshape(3, 2))
    x = bigarr.lazy(str(tmp_path / "x.npy"))
    np.testing.assert_array_equal(np.ptp(x, axis=0), [4.0, 4.0])
    for call in (lambda: np.sort(x, axis=2), lambda: np.ptp(x, axis=-3),
                 lambda: np.nanprod(x, axis=(0, 5))):
        with pytest.raises(bigarr.errors.AxisError):
            call()
    with pytest.raises(bigarr.errors.BigArrError) as info:
        np.nancumsum(x, axis=(0,))
    assert isinstance(info.value, TypeError)
    with pytest.raises(bigarr.errors.BigArrError) as info2:
        np.reshape(x, (5,))
    assert isinstance(info2.value, ValueError)


def _outcome(call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call``'s result, or the exception it raised (whose kind is compared)."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            res = call(*args, **kwargs)
            return res.compute() if isinstance(res, bigarr.LazyArray) else res
        except Exception as exc:
            return exc


@pytest.mark.parametrize("dtype", [np.bool_, np.float32, np.int8])
@pytest.mark.parametrize("name", ["quantile", "nanquantile", "percentile", "nanpercentile"])
def test_order_statistics_of_no_values_are_numpys(tmp_path: Path, dtype: type,
                                                  name: str) -> None:
    """numpy's nanquantile of no values is NaN whatever the dtype (bool included, whose
    non-empty quantiles it refuses), and its quantile of none an IndexError: bigarr refused
    the empty bool one as a DtypeError, and let numpy's bare IndexError out of the others."""
    q = 0.5 if "quantile" in name else 50.0
    for shape, axis in (((0, 3), None), ((0, 3), 0), ((0,), None), ((2, 0), None)):
        a = np.zeros(shape, dtype)
        np.save(tmp_path / "e.npy", a)
        p = str(tmp_path / "e.npy")
        want = _outcome(getattr(np, name), a, q, axis=axis)
        got = [_outcome(getattr(bigarr, name), p, q, axis=axis, progress=False),
               _outcome(getattr(bigarr.lazy(p), name), q, axis=axis)]
        for g in got:
            if isinstance(want, Exception):
                assert isinstance(g, bigarr.errors.BigArrError), (shape, axis, g)
                assert isinstance(g, type(want)), (shape, axis, g)
            else:
                assert not isinstance(g, Exception), (shape, axis, g)
                assert np.asarray(g).dtype == np.asarray(want).dtype, (shape, axis)
                np.testing.assert_array_equal(g, want)


def test_lazy_quantile_of_float32_with_a_python_float_keeps_float32(tmp_path: Path) -> None:
    """numpy's quantile of float32 data at a Python float q is float32 (q is weak); the lazy one
    made q an array first, so its result was float64, and percentile's values differed."""
    a = np.random.default_rng(0).standard_normal((101, 3)).astype(np.float32)
    np.save(tmp_path / "f.npy", a)
    x = bigarr.lazy(str(tmp_path / "f.npy"))
    for name, q in (("quantile", 0.3), ("nanquantile", 0.7), ("percentile", 33),
                    ("nanpercentile", 12.5)):
        for axis in (None, 0):
            want = getattr(np, name)(a, q, axis=axis)
            got = getattr(x, name)(q, axis=axis)
            assert got.dtype == want.dtype
            res = got.compute()
            assert np.asarray(res).dtype == want.dtype
            np.testing.assert_array_equal(res, want)


_FORK_IN_A_DIRECT_FILL = r"""
import os, signal, sys, numpy as np, bigarr
p = sys.argv[1]
r, w = os.pipe()
with bigarr.create(p, (4 << 20,), "u1", overwrite=True) as x:
    for chunk, view in x.iter_chunks("3MiB", direct=True, progress=False):
        view[:] = 1
        if chunk.index == 1:
            pid = os.fork()
            if pid == 0:  # the child leaves the loop and the with block once the parent is done
                signal.alarm(20)  # a hung child ends, and fails the test
                os.close(w)
                os.read(r, 1)
                raise SystemExit(0)
            view[:] = 2
os.close(w)
_, status = os.waitpid(pid, 0)
a = np.load(p)
print(os.waitstatus_to_exitcode(status), int((a == 2).sum()), int((a == 1).sum()))
"""


def test_a_forked_child_leaving_a_direct_fill_writes_nothing(tmp_path: Path) -> None:
    """A child forked inside an iter_chunks(direct=True) loop inherits the fill's staged
    chunk (its own copy), its sink with no writer threads and its parent's watches. Leaving the
    loop (closing the array) in the child finished the parent's fill: it wrote its stale copy
    of the chunk into the parent's file, waited on writes no thread would do, or raised a bare
    PermissionError from the parent's userfaultfd watch (printed as ignored). The child must
    leave the parent's file to the parent."""
    import subprocess
    import sys

    p = tmp_path / "d.npy"
    run = subprocess.run([sys.executable, "-c", _FORK_IN_A_DIRECT_FILL, str(p)],
                         capture_output=True, text=True, timeout=60,
                         env={**__import__("os").environ, "PYTHONPATH": str(
                             Path(bigarr.__file__).parents[1])})
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    child, twos, ones = map(int, run.stdout.split())
    a = np.load(p)
    assert child == 0
    chunk = int((a == 2).sum())
    assert chunk > 0 and twos == chunk and ones == a.size - chunk



_FORK_WHILE_PLACING = r"""
import ctypes, os, signal, threading, time, numpy as np
from bigarr._compute import placed
assert placed.available()
hold = placed._placed.dll.bigarr_placed_hold
hold.argtypes = [ctypes.c_int64]
with placed.results(0):
    mine = np.empty(1 << 20, np.uint8)  # placed, freed in the child
t = threading.Thread(target=hold, args=(300_000,))  # the lock held 0.3 s, without the GIL
t.start()
time.sleep(0.1)
pid = os.fork()
if pid == 0:
    signal.alarm(5)  # a hung child ends, and fails the test
    del mine
    with placed.results(0):
        c = np.ones(1 << 20, np.uint8)
    os._exit(0 if int(c.sum()) == 1 << 20 else 3)
t.join()
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_a_fork_while_another_thread_is_in_the_placed_allocator() -> None:
    """numpy allocates a sort's copy of a strided lane with the GIL released, so a thread can
    be inside _alloc.c's lock when another forks. The child inherited it held and hung at its
    first placed array (or free of an inherited one): the lock is now taken around forks."""
    import subprocess
    import sys

    from bigarr._compute import placed

    if not placed.available():
        pytest.skip("the placed allocator is not built here")
    run = subprocess.run([sys.executable, "-c", _FORK_WHILE_PLACING], capture_output=True,
                         text=True, timeout=60, env={**__import__("os").environ, "PYTHONPATH":
                                                     str(Path(bigarr.__file__).parents[1])})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0"], run.stdout


@pytest.mark.parametrize("dtype", [">f8", ">i8", ">u2", ">f4"])
def test_unique_and_topk_of_big_endian_data_keep_its_dtype(tmp_path: Path, dtype: str) -> None:
    """numpy's unique and sort of big-endian data are big-endian; bigarr's unique and topk
    returned native-order values (the scan swaps each block's bytes for its kernels)."""
    a = np.array([3, 1, 2, 3, 0, 1, 7, 2], dtype=dtype)
    np.save(tmp_path / "b.npy", a)
    p = str(tmp_path / "b.npy")
    want = np.unique(a)
    got = bigarr.unique(p, progress=False)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    vals, counts = bigarr.unique(p, return_counts=True, progress=False)
    assert vals.dtype == want.dtype
    np.testing.assert_array_equal(counts, np.unique(a, return_counts=True)[1])
    for largest in (True, False):
        top, index = bigarr.topk(p, 3, largest=largest, progress=False)
        order = np.argsort(-a.astype(np.float64) if largest else a, kind="stable")[:3]
        assert top.dtype == a.dtype
        np.testing.assert_array_equal(top, a[order])
        np.testing.assert_array_equal(index, order)
    top0, _ = bigarr.topk(p, 0, progress=False)
    assert top0.dtype == a.dtype


def test_lazy_column_index_out_of_range_is_an_index_error(tmp_path: Path) -> None:
    """numpy's x[:, [3]] of 3 columns is an IndexError; the lazy one raised ShapeError, a
    ValueError, which `except IndexError` does not catch."""
    a = np.zeros((5, 3))
    np.save(tmp_path / "x.npy", a)
    x = bigarr.lazy(str(tmp_path / "x.npy"))
    for key in ((slice(None), [3]), (slice(None), [-4]), (slice(None), 5),
                (slice(None), slice(None), 0), (0, 0, 0)):
        with pytest.raises(IndexError):
            a[key]
        with pytest.raises(bigarr.errors.RegionError):
            x[key]
