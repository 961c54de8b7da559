"""sort, median(axis=0) and unique of files larger than a memory cgroup's limit (issue 13).

Each operation runs in a child interpreter moved into a fresh child memory cgroup (cgroup v1's
``memory.limit_in_bytes``, or cgroup v2's ``memory.max``, swap disabled where the controller
offers it), with its input dropped from the page cache first: pages cached earlier stay charged
to the cgroup that read them, which would make the limit look more lenient than it is. The
operation must exit 0 without an OOM kill, and its answer must equal numpy's.

The answers are checked without holding the data in the test process: the data are a
pseudo-random permutation (``i -> (A*i + B) mod n``, ``A`` odd, ``n`` a power of two) of
values ``g(j)`` that are monotone in ``j`` in numpy's sort order (ties, ``-0.0`` among the
zeros, ``-inf`` first and NaN last), so ``np.sort`` of the data is ``g(arange(n))``, checked
chunk by chunk; small cases check the constructions against numpy itself. A control shows
that the limit bites: loading the data as numpy does is killed under the same limit.

Default run: a 64 MiB sort under a 40 MiB limit (the interpreter with numpy and bigarr is
charged about 22 MiB of it, so the data are about 3.5 times what the limit leaves; a 32 MiB
limit left too little for the sort's 11-13 MiB of peak RSS growth at a 6 MiB budget).
``-m slow``: the issue's cases, 2 GiB under 512 MiB: sort, ``median(axis=0)`` and ``unique``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from pagecache import evict as evict_path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="memory cgroups are Linux's")

MiB = 1 << 20
A, B = 0x9E3779B1, 12345  # the permutation i -> (A*i + B) mod n (A odd: a bijection mod 2**k)


# ---- the cgroup ----------------------------------------------------------------------------
def _mount(fstype: str, option: str | None) -> str | None:
    """Mount point of a cgroup file system (``cgroup`` with controller ``option``, or
    ``cgroup2``), from ``/proc/self/mountinfo``; the root it shows, joined to the mount."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            parts, after = pre.split(), post.split()
            if len(after) < 3 or after[0] != fstype:
                continue
            if option is not None and option not in after[2].split(","):
                continue
            return parts[4] + "\x00" + parts[3]
    return None


def _own(controller: str | None) -> str | None:
    """This process's cgroup path in the hierarchy of ``controller`` (None: cgroup v2)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            hid, controllers, path = line.rstrip("\n").split(":", 2)
            if controller is None and hid == "0" and not controllers:
                return path
            if controller is not None and controller in controllers.split(","):
                return path
    return None


def _folder(mount: str, path: str) -> Path:
    mnt, root = mount.split("\x00")
    inner = path[len(root):] if root != "/" and path.startswith(root) else path
    return Path(mnt) / inner.lstrip("/")


@contextlib.contextmanager
def memory_cgroup(limit: int) -> Iterator[tuple[Path, str]]:
    """A fresh child memory cgroup limited to ``limit`` bytes: (folder, version); skips with
    the reason where neither cgroup v1 nor v2 offers one to this process."""
    reasons = []
    made: tuple[Path, str] | None = None
    v1, own1 = _mount("cgroup", "memory"), _own("memory")
    if v1 is not None and own1 is not None:
        parent = _folder(v1, own1)
        made = _make(parent, "v1", limit, reasons)
    if made is None:
        v2, own2 = _mount("cgroup2", None), _own(None)
        if v2 is not None and own2 is not None:
            parent = _folder(v2, own2)
            try:
                enabled = "memory" in (parent / "cgroup.subtree_control").read_text().split()
            except OSError:
                enabled = False
            if enabled:
                made = _make(parent, "v2", limit, reasons)
            else:
                reasons.append(f"cgroup v2 at {parent} does not delegate the memory controller")
        elif v1 is None:
            reasons.append("no cgroup v1 memory controller and no cgroup v2 mounted")
    if made is None:
        pytest.skip("no memory cgroup to run in: " + "; ".join(reasons))
    folder, version = made
    try:
        yield folder, version
    finally:
        for _ in range(100):  # the children we started (a timed-out one may linger)
            for pid in (folder / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            try:
                folder.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def _make(parent: Path, version: str, limit: int, reasons: list[str]) -> tuple[Path, str] | None:
    folder = parent / f"bigarr-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        folder.mkdir()
    except OSError as exc:
        reasons.append(f"cannot create a cgroup {version} child of {parent}: {exc.strerror}")
        return None
    try:
        if version == "v1":
            (folder / "memory.limit_in_bytes").write_text(str(limit))
            with contextlib.suppress(OSError):  # absent or off: no swap to escape into
                (folder / "memory.memsw.limit_in_bytes").write_text(str(limit))
        else:
            (folder / "memory.max").write_text(str(limit))
            with contextlib.suppress(OSError):
                (folder / "memory.swap.max").write_text("0")
    except OSError as exc:
        folder.rmdir()
        reasons.append(f"cannot limit a cgroup {version}: {exc.strerror}")
        return None
    return folder, version


def _oom_kills(folder: Path, version: str) -> int:
    name = "memory.oom_control" if version == "v1" else "memory.events"
    for line in (folder / name).read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill":
            return int(value)
    return 0


def run_limited(code: str, limit: int, evict: list[Path], cwd: Path,
                timeout: float) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run ``code`` in a fresh interpreter inside a new cgroup of ``limit`` bytes; the process
    and the number of OOM kills in the cgroup."""
    with memory_cgroup(limit) as (folder, version):
        for path in evict:
            evict_path(path)
        # the shell moves itself into the cgroup, then becomes the interpreter
        argv = ["sh", "-c", 'echo $$ > "$1" && exec "$2" -c "$3"', "sh",
                str(folder / "cgroup.procs"), sys.executable, textwrap.dedent(code)]
        env = dict(os.environ, PYTHONFAULTHANDLER="1")
        proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, check=False)
        return proc, _oom_kills(folder, version)


# ---- the data ------------------------------------------------------------------------------
def perm(i: np.ndarray[Any, Any], n: int) -> np.ndarray[Any, Any]:
    return (i.astype(np.uint64) * np.uint64(A) + np.uint64(B)) & np.uint64(n - 1)


def g(j: np.ndarray[Any, Any], n: int, col: int = 0, specials: bool = True,
      ) -> np.ndarray[Any, Any]:
    """Monotone in ``j`` in numpy's order: steps of 0.5 in triples of ties, ``-0.0`` for odd
    ``j`` among the zeros, and (with ``specials``) 1000 ``-inf`` first and 1000 NaN last."""
    v = (np.floor((j.astype(np.int64) - n // 2) / 3) * 0.5 + col).astype(np.float32)
    v[(v == 0) & (j % 2 == 1)] = -0.0
    if specials:
        v[j < 1000] = -np.inf
        v[j >= n - 1000] = np.nan
    return v


def make_floats(path: Path, n: int, cols: int = 1) -> None:
    """``x[i, c] = g(perm(i), c)``: each column a permutation of ``g(arange(n))``."""
    shape = (n,) if cols == 1 else (n, cols)
    with bigarr.create(path, shape, "float32", overwrite=True) as x:
        for chunk, view in x.iter_chunks("32MiB", progress=False, prefetch=False):
            j = perm(np.arange(chunk.rows.start, chunk.rows.stop), n)
            if cols == 1:
                view[:] = g(j, n)
            else:
                for c in range(cols):
                    view[:, c] = g(j, n, c, specials=False)


def make_ints(path: Path, n: int, distinct: int) -> None:
    """``x[i] = perm(i) mod distinct``: every value in ``range(distinct)``, known counts."""
    with bigarr.create(path, (n,), "int32", overwrite=True) as x:
        for chunk, view in x.iter_chunks("32MiB", progress=False, prefetch=False):
            view[:] = perm(np.arange(chunk.rows.start, chunk.rows.stop), n) % distinct


def check_sorted(path: Path, n: int) -> None:
    """The sorted file is ``g(arange(n))``, chunk by chunk (``-0.0`` equal to ``0.0``, NaN
    equal to NaN: numpy leaves their order among the zeros open)."""
    with bigarr.open(path) as got:
        assert got.shape == (n,) and got.dtype == np.float32
        step = 8 << 20
        for start in range(0, n, step):
            stop = min(start + step, n)
            np.testing.assert_array_equal(np.asarray(got[start:stop]),
                                          g(np.arange(start, stop), n))


def expected_median(n: int, cols: int) -> np.ndarray[Any, Any]:
    """numpy's median of each column: the mean of its two middle values (``n`` even)."""
    mid = np.array([n // 2 - 1, n // 2])
    return np.array([np.median(g(mid, n, c, specials=False)) for c in range(cols)],
                    dtype=np.float32)


# ---- the cases -----------------------------------------------------------------------------
def sort_under_limit(tmp_path: Path, n: int, limit: int, budget: int, timeout: float) -> None:
    floats, out = tmp_path / "floats.npy", tmp_path / "sorted.npy"
    proc, kills = run_limited(f"""
        import bigarr
        bigarr.sort({str(floats)!r}, {str(out)!r}, budget={budget}, progress=False).close()
        """, limit, [floats], tmp_path, timeout)
    assert proc.returncode == 0 and kills == 0, (proc.returncode, kills, proc.stderr[-2000:])
    check_sorted(out, n)
    out.unlink()


def test_sort_under_a_memory_cgroup(tmp_path: Path) -> None:
    """32 MiB of float32 sort under a 40 MiB cgroup (budget 6 MiB; the interpreter with numpy
    and bigarr is charged about 22 MiB of it) into numpy's order, while loading the data as
    numpy would (the data and np.sort's copy, 64 MiB) is killed under the same limit."""
    n = (32 * MiB) // 4
    make_floats(tmp_path / "floats.npy", n)
    np.testing.assert_array_equal(np.sort(np.load(tmp_path / "floats.npy")),
                                  g(np.arange(n), n))  # the construction, against numpy
    sort_under_limit(tmp_path, n, 40 * MiB, 6 * MiB, timeout=120)
    assert [p.name for p in tmp_path.iterdir()] == ["floats.npy"]  # no runs left
    proc, kills = run_limited(f"""
        import numpy as np
        np.sort(np.load({str(tmp_path / 'floats.npy')!r}))
        """, 40 * MiB, [tmp_path / "floats.npy"], tmp_path, timeout=120)
    assert proc.returncode == -signal.SIGKILL and kills >= 1, (proc.returncode, kills)


@pytest.mark.slow
def test_2gib_sort_median_unique_under_512mib_cgroup(tmp_path: Path) -> None:
    """The issue's case: 2 GiB of float32 (sort; median(axis=0) of 8 columns) and of int32
    (unique, 100 000 distinct values) under a 512 MiB cgroup, budget 256 MiB; numpy's answers
    checked chunk by chunk."""
    size, limit, budget, timeout = 2048 * MiB, 512 * MiB, 256 * MiB, 1800
    n, cols, d = size // 4, 8, 100_000
    floats, table, ints = tmp_path / "floats.npy", tmp_path / "table.npy", tmp_path / "ints.npy"
    make_floats(floats, n)
    sort_under_limit(tmp_path, n, limit, budget, timeout)
    floats.unlink()

    make_floats(table, n // cols, cols)
    proc, kills = run_limited(f"""
        import bigarr, json
        m = bigarr.median({str(table)!r}, axis=0, budget={budget}, progress=False)
        print(json.dumps([float(v) for v in m]))
        """, limit, [table], tmp_path, timeout)
    assert proc.returncode == 0 and kills == 0, (proc.returncode, kills, proc.stderr[-2000:])
    got = np.array(json.loads(proc.stdout.splitlines()[-1]), dtype=np.float32)
    np.testing.assert_array_equal(got, expected_median(n // cols, cols))
    table.unlink()

    make_ints(ints, n, d)
    proc, kills = run_limited(f"""
        import bigarr, numpy as np
        v, c = bigarr.unique({str(ints)!r}, return_counts=True, budget={budget}, progress=False)
        np.save('unique.npy', np.stack([v.astype(np.int64), c.astype(np.int64)]))
        """, limit, [ints], tmp_path, timeout)
    assert proc.returncode == 0 and kills == 0, (proc.returncode, kills, proc.stderr[-2000:])
    values, counts = np.load(tmp_path / "unique.npy")
    np.testing.assert_array_equal(values, np.arange(d))
    np.testing.assert_array_equal(counts, n // d + (np.arange(d) < n % d))
    ints.unlink()


def test_constructions_are_numpys(tmp_path: Path) -> None:
    """The slow test's expected medians and unique counts are numpy's own (small sizes)."""
    n, cols, d = 1 << 15, 3, 1000
    j = perm(np.arange(n), n)
    x = np.stack([g(j, n, c, specials=False) for c in range(cols)], axis=1)
    np.testing.assert_array_equal(np.median(x, axis=0), expected_median(n, cols))
    make_ints(tmp_path / "ints.npy", n, d)
    values, counts = np.unique(np.load(tmp_path / "ints.npy"), return_counts=True)
    np.testing.assert_array_equal(values, np.arange(d))
    np.testing.assert_array_equal(counts, n // d + (np.arange(d) < n % d))
