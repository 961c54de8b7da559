"""The builds of the native kernels (``_native`` for the x86-64 baseline, ``_native_avx2`` with
``-mavx2``, ``_native_avx512`` with AVX-512, the widest the CPU runs chosen at run time by
:mod:`bigarr._compute.native`) give the same bits.

Each build runs a representative set of kernels in a subprocess of its own (the build is chosen
once, at import, by ``BIGARR_NATIVE_ISA``): the fused chain (register strips, op-by-op passes,
the folded max), the one-sweep statistics, sums and variances, extremes, arg-extremes and
counts, both histogram kernels, the order-statistics kernels behind ``median`` and the radix
sort, on data with NaN, inf, -0.0 and subnormals. The results must be equal bit for bit across
the builds, and equal to numpy's wherever numpy defines the answer exactly. (One NaN payload
here: where + or * meets two NaNs, which one results is the compiler's choice, loop by loop, in
each build, and numpy promises none either.)
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bigarr._compute import native

_SCRIPT = r"""
import sys
import numpy as np
import bigarr
from bigarr._compute import fused, native

out = sys.argv[-1]
got = {"build": np.array(str(native.build))}
for src in sys.argv[1:-1]:
    key = src[-6:-4] + "_"  # f4_, f8_
    x = bigarr.open(src)
    a = np.load(src)
    lx = bigarr.lazy(src)
    m = np.linspace(-1, 1, a.shape[1], dtype=a.dtype)
    s = np.linspace(0.5, 2, a.shape[1], dtype=a.dtype)
    calls = fused.calls()
    res = {}
    res["six"] = (np.sqrt(abs((lx - m) / s * 1.7 + 0.3)) - 0.5).compute()
    res["two_max"] = ((lx - m) / s).max(axis=0).compute()
    res["cmp"] = bigarr.where(lx > m, lx * s, -lx).compute()
    res["fused_calls"] = fused.calls() - calls
    stats = bigarr.compute(lx.sum(axis=0), lx.min(axis=0), lx.max(axis=0), lx.std(axis=0))
    res |= dict(zip(("st_sum", "st_min", "st_max", "st_std"), stats))
    res["sum0"] = bigarr.sum(x, axis=0)
    res["sum"] = bigarr.sum(x)
    res["var0"] = bigarr.var(x, axis=0)
    res["min"] = bigarr.min(x)
    res["max"] = bigarr.max(x)
    res["argmax0"] = bigarr.argmax(x, axis=0)
    res["nonzero0"] = bigarr.count_nonzero(x, axis=0)
    np.save(src + ".fin.npy", a[np.isfinite(a)])
    res["hist8"] = bigarr.histogram(src + ".fin.npy", bins=8)[0]
    res["hist100"] = bigarr.histogram(src + ".fin.npy", bins=100)[0]
    res["median"] = bigarr.median(src + ".fin.npy")
    res["median0"] = bigarr.median(x, axis=0)
    flat = np.ascontiguousarray(a).ravel()
    sorted_ = np.empty_like(flat)
    res["radix_ok"] = native.radix_sort(flat, sorted_, np.empty_like(flat))
    res["radix"] = sorted_
    got |= {key + k: np.asarray(v) for k, v in res.items()}
np.savez(out, **got)
"""


def _data(dtype: Any) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(12)
    a = (rng.standard_normal((3001, 40)) * 100).astype(dtype)
    tiny = np.finfo(dtype).smallest_subnormal
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, tiny, -tiny, np.finfo(dtype).max],
                       dtype=dtype)
    a[:, 3] = 0.0  # a column of zeros (and -0.0)
    a[::2, 3] = -0.0
    some = a[:, 30:38]  # specials in a few columns only: the others keep finite sums and stds
    some.flat[rng.choice(some.size, 60, replace=False)] = rng.choice(special, 60)
    return a


def _run(tmp: Path, isa: str) -> dict[str, np.ndarray[Any, Any]]:
    env = {**os.environ, "BIGARR_NATIVE_ISA": isa}
    env.pop("BIGARR_NATIVE", None)
    out = tmp / f"{isa}.npz"
    subprocess.run([sys.executable, "-W", "ignore::RuntimeWarning", "-c", _SCRIPT,
                    str(tmp / "f4.npy"), str(tmp / "f8.npy"), str(out)], env=env, check=True,
                   timeout=120)
    with np.load(out) as f:
        return {k: f[k] for k in f.files}


def _usable() -> list[str]:
    """The builds this CPU runs that are built here, widest first."""
    features = native._cpu_features()
    return [name for name, (module, needs) in native.BUILDS.items()
            if all(features.get(f, False) for f in needs) and native._open(module) is not None]


@pytest.mark.skipif(len(_usable()) < 2, reason="only one build of the kernels is usable here")
def test_every_build_gives_the_same_bits(tmp_path: Path) -> None:
    data = {"f4": _data(np.float32), "f8": _data(np.float64)}
    for key, a in data.items():
        np.save(tmp_path / f"{key}.npy", a)
    builds = _usable()
    got = {isa: _run(tmp_path, isa) for isa in builds}
    for isa, res in got.items():
        assert str(res.pop("build")) == isa
    widest, base = got[builds[0]], got[builds[-1]]
    for isa in builds[1:]:
        other = got[isa]
        assert widest.keys() == other.keys()
        for name in widest:
            assert widest[name].dtype == other[name].dtype, (isa, name)
            assert widest[name].tobytes() == other[name].tobytes(), (isa, name)
    assert builds[-1] == "baseline" and base.keys() == widest.keys()
    for key, a in data.items():
        # the native kernels ran
        assert widest[f"{key}_fused_calls"] > 0 and bool(widest[f"{key}_radix_ok"])
        # and gave numpy's bits, where numpy defines the answer exactly
        m = np.linspace(-1, 1, a.shape[1], dtype=a.dtype)
        s = np.linspace(0.5, 2, a.shape[1], dtype=a.dtype)
        fin = a[np.isfinite(a)]
        with np.errstate(all="ignore"):
            want = {"six": np.sqrt(abs((a - m) / s * 1.7 + 0.3)) - 0.5,
                    "two_max": ((a - m) / s).max(axis=0),
                    "cmp": np.where(a > m, a * s, -a),
                    "st_min": a.min(axis=0), "st_max": a.max(axis=0),
                    "min": a.min(), "max": a.max(), "argmax0": a.argmax(axis=0),
                    "nonzero0": np.count_nonzero(a, axis=0),
                    "hist8": np.histogram(fin, bins=8)[0],
                    "hist100": np.histogram(fin, bins=100)[0],
                    "median": np.median(fin), "median0": np.median(a, axis=0),
                    "radix": np.sort(a.ravel(), kind="stable")}
        for name, w in want.items():
            res = widest[f"{key}_{name}"]
            assert res.dtype == np.asarray(w).dtype, name
            assert res.tobytes() == np.asarray(w).tobytes(), (key, name)


def test_the_widest_build_is_built_and_loaded_where_the_cpu_runs_it() -> None:
    # setup.py builds the wider ones on x86-64 wherever it builds the baseline; a silent
    # failure of such a build would leave every kernel on slower code
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if (os.environ.get("BIGARR_NATIVE", "1") == "0" or shutil.which(cc) is None
            or platform.machine().lower() not in ("x86_64", "amd64")
            or not native._cpu_features().get("AVX2")):
        pytest.skip("no C compiler, not x86-64, no AVX2, or the native kernels are off")
    features = native._cpu_features()
    runs = [name for name, (_, needs) in native.BUILDS.items()
            if all(features.get(f, False) for f in needs)]
    cap = os.environ.get("BIGARR_NATIVE_ISA", "")
    want = cap if cap in runs else runs[0]
    assert native.build == want


@pytest.mark.parametrize("cap", ["avx2", "baseline"])
def test_a_narrower_build_is_forced_by_the_environment(cap: str) -> None:
    if cap not in _usable():
        pytest.skip(f"the {cap} build is not built or not usable here")
    env = {**os.environ, "BIGARR_NATIVE_ISA": cap}
    version = subprocess.run([sys.executable, "-m", "bigarr", "--version"], env=env,
                             capture_output=True, text=True, check=True).stdout
    assert f"native ({cap} build)" in version


def test_an_unknown_cap_is_refused_with_a_warning() -> None:
    if native.build is None:
        pytest.skip("the native kernels are not built or are turned off")
    env = {**os.environ, "BIGARR_NATIVE_ISA": "sse9"}
    got = subprocess.run([sys.executable, "-m", "bigarr", "--version"], env=env,
                         capture_output=True, text=True, check=True)
    assert "BIGARR_NATIVE_ISA='sse9' is not one of avx512, avx2, baseline" in got.stderr
    assert f"native ({_usable()[0]} build)" in got.stdout
