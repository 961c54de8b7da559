"""Pass 1's sample of a mapped file: read with ``preadv`` on a thread of its own, while the
pass starts (issue 13's one-pass median).

The sample only places the windows pass 1 gathers, so every answer is checked against numpy
whatever the data does to the sample (sorted, reversed, all equal, few values, NaN, values
planted exactly where the sample reads), with the passes within what the plan reports.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bigarr
from bigarr._compute import order, ordersample
from test_order import METHODS, same


def sample_starts(n: int) -> np.ndarray[Any, Any]:
    """Where the sample's pieces start, in values (as :func:`ordersample.sample_windows`)."""
    size = min(ordersample.SAMPLE, n // 16)
    piece = -(-size // ordersample.PIECES)
    return np.linspace(0, n - piece, ordersample.PIECES).astype(np.int64), piece


def write(tmp: Path, x: np.ndarray[Any, Any], name: str = "x.npy") -> Path:
    path = tmp / name
    np.save(path, x)
    return path


def test_sample_is_read_from_the_file_and_equals_the_mapped_values(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """C and Fortran order, NaN bit patterns kept: the bytes read are the mapped bytes."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 400)).astype(np.float32)
    x.reshape(-1)[rng.integers(0, x.size, 50)] = np.float32("nan")
    read: list[bool] = []
    real = ordersample.read_pieces

    def check(stream: Any, views: list[np.ndarray[Any, Any]], *rest: Any) -> Any:
        got = real(stream, views, *rest)
        read.append(got is not None)
        if got is not None:
            assert np.array_equal(got.view(np.uint32), np.concatenate(views).view(np.uint32))
        return got

    monkeypatch.setattr(ordersample, "read_pieces", check)
    for i, a in enumerate((x, np.asfortranarray(x))):
        path = write(tmp_path, a, f"x{i}.npy")
        with bigarr.open(path) as arr:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert same(bigarr.nanmedian(arr, budget="16MiB", progress=False),
                            np.nanmedian(a))
            assert order.LAST_PASSES[0] == 1
    assert read == [True, True]


def test_a_failing_sample_raises_in_the_caller(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, np.arange(200_000, dtype=np.float64))

    def boom(*args: Any) -> Any:
        raise RuntimeError("sample failed")

    monkeypatch.setattr(ordersample, "sample_windows", boom)
    with pytest.raises(RuntimeError, match="sample failed"):
        bigarr.median(path, budget="16MiB", progress=False)


def test_private_mapping_samples_its_own_edits() -> None:
    """A private (copy-on-write) mapping's edits are not in the file: the sample reads the
    mapping, and the answer is the edited data's."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = write(Path(tmp), np.zeros(200_000, dtype=np.float32))
        with bigarr.open(path, mode="c") as arr:
            arr[:] = np.arange(200_000, dtype=np.float32)
            assert ordersample.read_pieces(bigarr_stream(arr), [arr[:10]]) is None
            assert same(bigarr.median(arr, budget="16MiB", progress=False),
                        np.median(np.arange(200_000, dtype=np.float32)))


def bigarr_stream(arr: Any) -> Any:
    from bigarr._compute.operands import parse_operand

    return parse_operand(arr)


KINDS = ["random", "sorted", "reverse", "equal", "few", "nan", "planted"]


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(KINDS), n=st.integers(65_536, 131_072),
       dtype=st.sampled_from(["float32", "float64", "int32"]),
       q=st.lists(st.floats(0, 1), min_size=1, max_size=3),
       method=st.sampled_from(METHODS), seed=st.integers(0, 2**16))
def test_hypothesis_mapped_quantiles_equal_numpy(tmp_path: Path, kind: str, n: int, dtype: str,
                                                 q: list[float], method: str,
                                                 seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 100).astype(dtype)
    if kind == "sorted":
        x.sort()
    elif kind == "reverse":
        x = np.sort(x)[::-1].copy()
    elif kind == "equal":
        x[:] = x[0]
    elif kind == "few":
        x = x[rng.integers(0, 3, n)]
    elif kind == "nan" and x.dtype.kind == "f":
        x[rng.random(n) < 0.3] = np.nan
    elif kind == "planted":  # the sample sees only a far value: its windows miss
        starts, piece = sample_starts(n)
        for s in starts:
            x[s:s + piece] = x.dtype.type(10_000)
    path = write(tmp_path, x)
    plan = bigarr.lazy(bigarr.open(path)).quantile(q, method=method).explain(budget="16MiB")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = np.nanquantile(x, q, method=method)
        got = bigarr.nanquantile(path, q, method=method, budget="16MiB", progress=False)
    assert same(got, want), (kind, got, want)
    assert plan.passes == 1
    assert order.LAST_PASSES[0] <= 2  # the plan's "2 passes when the sample misleads"
