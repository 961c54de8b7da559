"""Closed means closed: every use of a closed array's data raises ClosedError (issue 11, 6).

Before the fix, ndarray's own C methods (copy, tolist, tobytes, astype, item, dot, ...) read the
retired range directly and returned zeros. Metadata (shape, dtype, len) stays readable, as for
numpy: ``len(x)`` is ``x.shape[0]``. ``repr``/``str`` name the closed file instead of data:
they never raise, because tracebacks, debuggers and loggers call them.
"""

from __future__ import annotations

import copy
import io
import operator
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._core.array import GUARDED
from bigarr.errors import ClosedError

Use = Callable[[Any], Any]

USES: dict[str, Use] = {
    # the ones issue 11 names
    "copy": lambda x: x.copy(),
    "copy.copy": copy.copy,
    "copy.deepcopy": copy.deepcopy,
    "tolist": lambda x: x.tolist(),
    "tobytes": lambda x: x.tobytes(),
    "astype": lambda x: x.astype(np.float32),
    "item": lambda x: x.item(0),
    "dot": lambda x: x.dot(np.ones(3)),
    # ufuncs, operators, reductions
    "ufunc": np.sqrt,
    "ufunc out=": lambda x: np.add(1, 1, out=x),
    "ufunc.reduce": np.add.reduce,
    "operator": lambda x: x + 1,
    "in-place operator": lambda x: operator.iadd(x, 1),
    "matmul": lambda x: x @ np.ones(3),
    "comparison": lambda x: x == 1,
    "sum": lambda x: x.sum(),
    "np.sum": np.sum,
    "mean": lambda x: x.mean(),
    "std": lambda x: x.std(),
    "max": lambda x: x.max(),
    "argmax": lambda x: x.argmax(),
    "cumsum": lambda x: x.cumsum(),
    "any": lambda x: x.any(),
    "nonzero": lambda x: x.nonzero(),
    "searchsorted": lambda x: x[0].searchsorted(1),
    # numpy functions (through __array_function__)
    "np.copy": np.copy,
    "np.concatenate": lambda x: np.concatenate([x, x]),
    "np.array_equal": lambda x: np.array_equal(x, x),
    # indexing, iteration, conversion
    "index": lambda x: x[0],
    "setitem": lambda x: x.__setitem__(0, 1),
    "iteration": list,
    "in": lambda x: 1.0 in x,
    "bool": lambda x: bool(x[:1, :1]),
    "float": float,
    "int": int,
    "format spec": lambda x: format(x, ".2f"),
    "pickle": pickle.dumps,
    # views and layout
    "T": lambda x: x.T,
    "mT": lambda x: x.mT,
    "real": lambda x: x.real,
    "imag": lambda x: x.imag,
    "view": lambda x: x.view(np.ndarray),
    "reshape": lambda x: x.reshape(-1),
    "ravel": lambda x: x.ravel(),
    "flatten": lambda x: x.flatten(),
    "transpose": lambda x: x.transpose(),
    "take": lambda x: x.take([0]),
    "repeat": lambda x: x.repeat(2),
    "compress": lambda x: x.compress([True], axis=0),
    "byteswap": lambda x: x.byteswap(),
    # raw access and writes that bypassed every check before
    "flat": lambda x: x.flat[0],
    "ctypes": lambda x: x.ctypes.data,
    "data": lambda x: x.data,
    "__array_interface__": lambda x: x.__array_interface__,
    "__array__": lambda x: x.__array__(),
    "__dlpack__": lambda x: x.__dlpack__(),
    "fill": lambda x: x.fill(1),
    "put": lambda x: x.put([0], [1]),
    "sort": lambda x: x.sort(),
    "setflags": lambda x: x.setflags(write=True),
    "tofile": lambda x: x.tofile(io.BytesIO()),
    "dumps": lambda x: x.dumps(),
    "flush": lambda x: x.flush(),
    "advise": lambda x: x.advise("willneed"),
    "iter_chunks": lambda x: next(iter(x.iter_chunks("4KiB", progress=False))),
}


@pytest.fixture(params=["array", "view"])
def closed(request: pytest.FixtureRequest, tmp_path: Path) -> bigarr.memmap:
    """A closed (4, 3) float64 array of ones, or a view of one closed by force."""
    np.save(tmp_path / "c.npy", np.ones((4, 3)))  # no fsync: cheaper than bigarr.create
    x = bigarr.open(tmp_path / "c.npy", "shared")
    if request.param == "view":
        v = x[:, :]
        x.close(force=True)
        return v
    x.close()
    return x


@pytest.mark.parametrize("use", USES.values(), ids=USES.keys())
def test_every_use_of_a_closed_array_raises(closed: bigarr.memmap, use: Use) -> None:
    with pytest.raises(ClosedError, match="is closed"):
        use(closed)


def test_metadata_stays_readable(closed: bigarr.memmap) -> None:
    assert closed.closed
    assert (closed.shape, closed.dtype, closed.ndim, closed.size) == ((4, 3), np.float64, 2, 12)
    assert len(closed) == 4 and closed.nbytes == 96 and closed.itemsize == 8
    assert closed.filename.endswith("c.npy") and closed.mode == "r+"
    assert repr(closed) == str(closed) == format(closed) == "<closed bigarr.memmap of c.npy>"
    closed.close()  # idempotent


def test_the_unguardable_paths_read_zeros_and_refuse_writes(closed: bigarr.memmap) -> None:
    # np.asarray / np.array / the buffer protocol call no Python code on an ndarray subclass,
    # so no ClosedError is possible there: they read zeros (never crash), and writes through
    # them fail, because close() makes the arrays read-only.
    for raw in (np.asarray(closed), np.array(closed), np.frombuffer(closed)):
        assert not raw.any()
    assert bytes(memoryview(closed)) == bytes(96)
    with pytest.raises(ValueError, match="read-only"):
        np.asarray(closed)[0, 0] = 5


def test_every_data_method_of_ndarray_is_guarded() -> None:
    # A numpy upgrade that adds a method is guarded by default; this pins the classification.
    callables = {n for n, v in vars(np.ndarray).items() if callable(v) and not n.startswith("_")}
    assert callables <= set(GUARDED)
    for name in ("copy", "tolist", "tobytes", "astype", "item", "dot", "__copy__",
                 "__deepcopy__", "__iter__", "__array_interface__", "T", "flat"):
        assert name in GUARDED


def test_open_arrays_are_unaffected(tmp_path: Path) -> None:
    with bigarr.create(tmp_path / "o.npy", (4, 3), "f8", fill=2.0) as x:
        assert x.copy().tolist() == [[2.0] * 3] * 4 and x.item(0) == 2.0
        assert x.tobytes() == np.full((4, 3), 2.0).tobytes()
        assert type(copy.deepcopy(x)) is bigarr.memmap and copy.copy(x).closed is False
        assert float(x.dot(np.ones(3))[0]) == 6.0 and x.astype(np.float32).dtype == np.float32
        assert list(x.flat)[:2] == [2.0, 2.0] and x.T.shape == (3, 4)
        assert format(x[0, 0], ".1f") == "2.0" and f"{x[:1, :1]}" == "[[2.]]"
