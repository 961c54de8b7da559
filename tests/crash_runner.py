"""Crash matrix runner: kill -9 every durable bigarr operation at many points, check invariants.

Run it as a script (``tests/test_crash_matrix.py`` does, in a subprocess)::

    python tests/crash_runner.py                      # bounded matrix, JSON summary on stdout
    python tests/crash_runner.py --full --table       # every syscall boundary, plus delays
    python tests/crash_runner.py --ops appender --trace   # list an operation's hooked calls

How one run works. The runner process imports numpy, bigarr and zarr once, then forks:

1. a *setup* child writes each operation's inputs and reference results into a template folder;
2. per kill point, an *op* child (in a fresh copy of the template, always at the same path, so
   that a journal naming an input's absolute path stays valid) installs the hooks and runs the
   operation; it dies by ``SIGKILL``:

   * ``before:N`` -- just before the N-th hooked call (deterministic; ``before:NAME#K`` names
     the K-th call of one syscall);
   * ``torn:N`` -- the N-th call is a ``pwrite``/``write`` spanning a page boundary: the bytes
     up to a page boundary are written, then the process kills itself (what a kill during a
     large write can leave; a write within one page cannot be torn by a kill);
   * ``delay:S`` -- the runner sends ``SIGKILL`` ``S`` seconds after the operation started
     (seeded; the seed is reported);

3. a *check* child looks at what the kill left, reruns what a user would rerun, and reports
   violated invariants by name.

Hooked calls (the boundaries where durable state changes): ``os.pwrite``, ``os.write``,
``os.fsync``, ``os.fdatasync``, ``os.replace``, ``os.rename``, ``os.link``, ``os.unlink``,
``os.posix_fallocate``, ``os.ftruncate``, ``os.mkdir``, ``os.open`` with ``O_CREAT``, and the
``msync``, ``sync_file_range`` and ``renameat2`` that bigarr calls through ctypes. Library code
is not changed: the hooks replace those names on the ``os`` module (and bigarr's ctypes
handles) in the child.

The summary (``--json``, the default) maps each operation to its invariants, each with the runs
that checked it, how many held, and examples of violations with the kill point that caused them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import select
import shutil
import signal
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

if __name__ == "__main__":  # one BLAS thread: the runner forks, and fork keeps only one thread
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

import bigarr

with contextlib.suppress(ImportError):
    import zarr  # noqa: F401  (imported before forking; its I/O loop starts lazily per child)


def _import_all() -> list[Any]:
    """Import every bigarr module (so the hooks can reach the ctypes handles they hold)."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(bigarr.__path__, "bigarr."):
        if not info.name.endswith("__main__"):
            with contextlib.suppress(ImportError):
                importlib.import_module(info.name)
    return [m for name, m in sorted(sys.modules.items())
            if m is not None and (name == "bigarr" or name.startswith("bigarr."))]


MODULES = _import_all()


def _find(name: str) -> Any:
    """A function of bigarr's by name, wherever the package layout keeps it (or None)."""
    import types

    for module in MODULES:
        fn = getattr(module, name, None)
        if callable(fn) and not isinstance(fn, types.ModuleType):
            return fn
    return None


def cli_main() -> Callable[[list[str]], int]:
    """``bigarr``'s command-line entry point (``main(argv) -> status``)."""
    import importlib

    for name in ("bigarr._cli.main", "bigarr._cli"):
        with contextlib.suppress(ImportError):
            fn = getattr(importlib.import_module(name), "main", None)
            if callable(fn):
                return fn  # type: ignore[no-any-return]
    raise RuntimeError("cannot find bigarr's command-line main()")


PAGE = 4096
HOOKED = ("pwrite", "write", "fsync", "fdatasync", "replace", "rename", "link", "unlink",
          "posix_fallocate", "ftruncate", "mkdir", "open")
TEARABLE = ("pwrite", "write")
CHILD_TIMEOUT = 120  # seconds any forked child may run

_REAL: dict[str, Callable[..., Any]] = {name: getattr(os, name) for name in HOOKED}
_real_kill = os.kill


# ---- the hooks (installed in op children only) ---------------------------------------------------
class Hooks:
    """Count hooked calls; kill the process at the chosen one; optionally trace them all."""

    def __init__(self, kind: str, target: int | tuple[str, int] | None, trace: bool) -> None:
        self.kind, self.target, self.trace = kind, target, trace
        self.total = 0
        self.per_name: dict[str, int] = {}
        self.calls: list[list[Any]] = []

    def _hit(self, name: str) -> bool:
        if self.target is None:
            return False
        if isinstance(self.target, tuple):
            return self.target == (name, self.per_name[name])
        return self.target == self.total

    def tick(self, name: str, args: tuple[Any, ...]) -> None:
        self.total += 1
        self.per_name[name] = self.per_name.get(name, 0) + 1
        if self.trace:
            self.calls.append([self.total, name, self.per_name[name], _describe(name, args),
                               _tear_point(name, args) is not None])
        if self._hit(name):
            if self.kind == "torn":
                cut = _tear_point(name, args)
                if cut is not None:
                    _partial_write(name, args, cut)
            _real_kill(os.getpid(), signal.SIGKILL)

    def install(self) -> None:
        for name in HOOKED:
            setattr(os, name, self._wrap(name, _REAL[name]))
        # bigarr calls msync, sync_file_range and renameat2 (a publishing rename, a swap of zarr
        # arrays) through ctypes: wrap every module-level handle
        # (a libc object, or a bare sync_file_range function) in whichever modules hold one.
        hooked = 0
        for module in MODULES:
            for attr, value in list(vars(module).items()):
                if attr in ("libc", "_libc") and value is not None and hasattr(value, "msync"):
                    setattr(module, attr, _LibcProxy(value, {
                        n: self._wrap(n, getattr(value, n))
                        for n in ("msync", "sync_file_range", "renameat2")
                        if hasattr(value, n)}))
                    hooked += 1
                elif attr == "_sync_file_range" and callable(value):
                    setattr(module, attr, self._wrap("sync_file_range", value))
                    hooked += 1
        if not hooked:
            raise RuntimeError("found no ctypes libc handle in bigarr to hook msync on")

    def _wrap(self, name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def hooked(*args: Any, **kwargs: Any) -> Any:
            if name == "open" and not (len(args) > 1 and args[1] & os.O_CREAT):
                return real(*args, **kwargs)
            self.tick(name, args)
            return real(*args, **kwargs)

        return hooked


class _LibcProxy:
    """bigarr's ctypes libc handle with some functions replaced."""

    def __init__(self, libc: Any, replaced: dict[str, Callable[..., Any]]) -> None:
        self._libc = libc
        self.__dict__.update(replaced)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._libc, name)


def _nbytes(data: Any) -> int:
    return memoryview(data).nbytes


def _position(name: str, args: tuple[Any, ...]) -> int | None:
    try:
        if name == "pwrite":
            return int(args[2])
        fd = args[0]
        import fcntl

        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND:
            return os.fstat(fd).st_size
        return os.lseek(fd, 0, os.SEEK_CUR)
    except (OSError, IndexError, TypeError):
        return None


def _tear_point(name: str, args: tuple[Any, ...]) -> int | None:
    """Bytes of the buffer written before a kill tears this write at a page boundary."""
    if name not in TEARABLE:
        return None
    pos = _position(name, args)
    if pos is None:
        return None
    n = _nbytes(args[1])
    cut = (pos + n // 2) // PAGE * PAGE
    if cut <= pos:
        cut = (pos // PAGE + 1) * PAGE
    return cut - pos if cut < pos + n else None


def _partial_write(name: str, args: tuple[Any, ...], cut: int) -> None:
    view = memoryview(args[1]).cast("B")[:cut]
    if name == "pwrite":
        _REAL["pwrite"](args[0], view, args[2])
    else:
        _REAL["write"](args[0], view)


def _describe(name: str, args: tuple[Any, ...]) -> str:
    def short(a: Any) -> str:
        if isinstance(a, (bytes, bytearray, memoryview, np.ndarray)):
            return f"<{_nbytes(a)} bytes>"
        if isinstance(a, (str, os.PathLike)):
            return os.path.basename(os.fsdecode(a))
        return repr(a) if isinstance(a, int) else type(a).__name__

    if name in TEARABLE and len(args) > 1:
        return f"fd={args[0]} {short(args[1])}" + (f" at {args[2]}" if name == "pwrite" else "")
    return " ".join(short(a) for a in args[:2])


# ---- helpers for operations and checks -----------------------------------------------------------
def hidden(folder: Path) -> list[str]:
    """Names of hidden files and zarr's temporary chunk files under ``folder``."""
    found = []
    for root, dirs, files in os.walk(folder):
        for name in files + dirs:
            if name.startswith(".") or name.endswith(".partial"):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def same_file(a: Path, b: Path) -> bool:
    return a.read_bytes() == b.read_bytes()


def loads_as(path: Path, expected: np.ndarray[Any, Any]) -> str | None:
    """None if ``path`` is a valid .npy (numpy and bigarr agree) holding ``expected``."""
    try:
        got = np.load(path)
        with bigarr.open(path) as arr:
            mapped = np.array(arr)
    except Exception as exc:
        return f"{path.name} does not load: {type(exc).__name__}: {exc}"
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return (f"{path.name} has {got.shape} {got.dtype}, expected {expected.shape} "
                f"{expected.dtype}")
    if not np.array_equal(got, expected) or not np.array_equal(mapped, expected):
        bad = int(np.sum(np.any(got != expected, axis=tuple(range(1, got.ndim))))) if got.ndim \
            else 1
        return f"{path.name} differs from the expected result in {bad} rows"
    return None


Violations = dict[str, str]


class Op:
    """One durable operation: inputs, the call to kill, and the invariants to check after."""

    name = ""
    invariants: tuple[str, ...] = ()

    def setup(self, ref: Path, work: Path) -> None:
        """Write inputs into ``work`` and reference results into ``ref`` (not killed)."""

    def run(self, ref: Path, work: Path, note: Callable[[str], None]) -> None:
        """The operation; runs with hooks installed; ``note`` records what it reported done."""
        raise NotImplementedError

    def check(self, ref: Path, work: Path, notes: list[str]) -> Violations:
        """Invariant name -> what was wrong, for each violated invariant (empty: all held)."""
        raise NotImplementedError


def _rows(n0: int, n1: int, cols: int = 4) -> np.ndarray[Any, Any]:
    """Rows ``n0..n1`` of the appended pattern: row i holds i, i + 1/4, ... (exact in f8)."""
    i = np.arange(n0, n1, dtype=np.float64)[:, None]
    return i + np.arange(cols, dtype=np.float64)[None, :] / cols


def _source() -> np.ndarray[Any, Any]:
    return np.arange(8192 * 8, dtype=np.float64).reshape(8192, 8) * 0.5 - 3.0


FUNC_CALLS = [0]  # calls of _func in this process (chunks computed)


def _func(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    FUNC_CALLS[0] += 1
    return x * 2.0 + 1.0


_MAP_KW: dict[str, Any] = {"budget": "1MiB", "threads": 1, "progress": False}


# ---- create ----------------------------------------------------------------------------------
class Create(Op):
    name = "create"
    invariants = ("absent_or_complete", "no_strays_after_rerun")
    shape, fill = (4096, 16), 7.0

    def run(self, ref: Path, work: Path, note: Callable[[str], None]) -> None:
        bigarr.create(work / "c.npy", self.shape, "f8", fill=self.fill).close()

    def check(self, ref: Path, work: Path, notes: list[str]) -> Violations:
        out: Violations = {}
        path = work / "c.npy"
        expected = np.full(self.shape, self.fill)
        if path.exists() and (err := loads_as(path, expected)):
            out["absent_or_complete"] = err
        bigarr.create(path, self.shape, "f8", fill=self.fill, overwrite=True).close()
        if strays := hidden(work):
            out["no_strays_after_rerun"] = f"left behind after a successful rerun: {strays}"
        return out


# ---- map_blocks ------------------------------------------------------------------------------
class MapNew(Op):
    name = "map_blocks"
    resume = False
    invariants = ("absent_or_complete", "rerun_equals_clean_run", "no_strays_after_rerun")
    kw: ClassVar[dict[str, Any]] = _MAP_KW

    def setup(self, ref: Path, work: Path) -> None:
        np.save(work / "in.npy", _source())
        FUNC_CALLS[0] = 0
        bigarr.map_blocks(_func, work / "in.npy", out=ref / "o.npy", resume=self.resume,
                          **self.kw).close()
        (ref / "chunks").write_text(str(FUNC_CALLS[0]))  # chunks of the plan

    def run(self, ref: Path, work: Path, note: Callable[[str], None]) -> None:
        bigarr.map_blocks(_func, work / "in.npy", out=work / "o.npy", resume=self.resume,
                          **self.kw).close()

    def check(self, ref: Path, work: Path, notes: list[str]) -> Violations:
        out: Violations = {}
        path = work / "o.npy"
        expected = _func(_source())
        if path.exists():
            if err := loads_as(path, expected):
                out["absent_or_complete"] = err
            try:
                bigarr.check_complete(path)
            except bigarr.errors.IncompleteOutputError as exc:
                out["absent_or_complete"] = f"published output is flagged incomplete: {exc}"
        done = None
        read_journal = _find("read_journal")
        journals = [p for p in work.iterdir() if "journal" in p.name]
        if self.resume and read_journal and len(journals) == 1 and _has_partial(work):
            parsed = read_journal(str(journals[0]))
            done = set(parsed[1]) if parsed is not None else set()
        reran = not (self.resume and path.exists())
        if reran:  # a published output is complete: no rerun
            FUNC_CALLS[0] = 0
            bigarr.map_blocks(_func, work / "in.npy", out=path, resume=self.resume,
                              overwrite=not self.resume, **self.kw).close()
            chunks = int((ref / "chunks").read_text())
            if done and FUNC_CALLS[0] != chunks - len(done):
                out["resume_computes_only_missing_chunks"] = (
                    f"the journal recorded chunks {sorted(done)} done, but the rerun computed "
                    f"{FUNC_CALLS[0]} of {chunks} chunks")
        if not same_file(path, ref / "o.npy"):
            out["rerun_equals_clean_run"] = "the rerun's file differs from a clean run's bytes"
        strays = hidden(work)
        if not reran:  # killed after publishing, before unlinking its lock: see _unheld_lock
            strays = [s for s in strays if not _unheld_lock(work / s)]
        if strays:
            out["no_strays_after_rerun"] = f"left behind after a successful rerun: {strays}"
        return out


def _unheld_lock(path: Path) -> bool:
    """An empty output lock file nobody holds: what a writer killed after publishing its output
    and before unlinking its lock leaves (the last steps cannot be one syscall). Nothing reruns
    a published output, so it stays until the next writer of that output removes it; it is
    allowed only then, and only empty and unheld."""
    import fcntl

    if not path.name.endswith(".bigarr-lock") or path.is_symlink() or path.stat().st_size:
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _has_partial(work: Path) -> bool:
    return any(p.name.startswith(".") and "partial" in p.name for p in work.iterdir())


def _journals(work: Path) -> list[str]:
    return sorted(p.name for p in work.iterdir() if "journal" in p.name)


class MapResume(MapNew):
    name = "map_blocks_resume"
    resume = True
    invariants = (*MapNew.invariants, "resume_computes_only_missing_chunks")


def _killed_run(op: Op, ref: Path, work: Path, spec: str) -> None:
    """Run ``op`` once in a child killed at ``spec`` (a first crash, for nested cases)."""
    kind, target = _parse_spec(spec)
    pid = os.fork()
    if pid == 0:
        try:
            Hooks(kind, target, trace=False).install()
            op.run(ref, work, lambda s: None)
        finally:
            os._exit(1)
    _pid, status = os.waitpid(pid, 0)
    if not os.WIFSIGNALED(status):
        raise RuntimeError(f"{op.name} was expected to be killed at {spec}")


class MapResumeThreads(MapResume):
    """Resume with two worker threads: chunks finish out of order (kill points vary per run)."""

    name = "map_blocks_resume_threads"
    kw: ClassVar[dict[str, Any]] = dict(_MAP_KW, threads=2, budget="2MiB")


class MapResumeTwice(MapResume):
    """A resumed run killed again: the second resume must still equal a clean run."""

    name = "map_blocks_resume_twice"

    def setup(self, ref: Path, work: Path) -> None:
        super().setup(ref, work)
        _killed_run(self, ref, work, "before:write#3")  # two chunks journaled, then killed
        assert _journals(work), "the first run was expected to leave its journal"


class MapInPlace(Op):
    """map_blocks(resume=True) writing in place into a mapped file."""

    name = "map_blocks_inplace_resume"
    resume = True
    invariants = ("old_or_new_or_flagged", "rerun_equals_clean_run", "no_strays_after_rerun")

    def setup(self, ref: Path, work: Path) -> None:
        np.save(work / "in.npy", _source())
        bigarr.create(work / "o.npy", _source().shape, "f8", fill=-1.0).close()
        shutil.copy(work / "o.npy", ref / "old.npy")
        shutil.copy(work / "o.npy", ref / "o.npy")
        self.run(ref, ref, lambda s: None, inp=work / "in.npy")

    def run(self, ref: Path, work: Path, note: Callable[[str], None],
            inp: Path | None = None) -> None:
        with bigarr.open(work / "o.npy", "shared") as out:
            bigarr.map_blocks(_func, inp or work / "in.npy", out=out, resume=self.resume,
                              **_MAP_KW)

    def check(self, ref: Path, work: Path, notes: list[str]) -> Violations:
        out: Violations = {}
        path = work / "o.npy"
        try:
            bigarr.check_complete(path)
            flagged = False
        except bigarr.errors.IncompleteOutputError:
            flagged = True
        if not flagged and not (same_file(path, ref / "old.npy") or same_file(path, ref / "o.npy")):
            out["old_or_new_or_flagged"] = "partly written in place, and check_complete accepts it"
        with bigarr.open(path, "shared") as arr:
            bigarr.map_blocks(_func, work / "in.npy", out=arr, resume=self.resume, **_MAP_KW)
        if not same_file(path, ref / "o.npy"):
            out["rerun_equals_clean_run"] = "the rerun's file differs from a clean run's bytes"
        if strays := sorted(set(hidden(work) + _journals(work))):
            out["no_strays_after_rerun"] = f"left behind after a successful rerun: {strays}"
        return out


class MapAppender(Op):
    """map_blocks(resume=True) into an Appender (a filter: results of any length)."""

    name = "map_blocks_appender_resume"
    invariants = ("valid_prefix_of_result", "rerun_equals_clean_run", "no_strays_after_rerun")

    @staticmethod
    def _filter(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return x[x[:, 0] % 3 == 0] * 2.0

    def setup(self, ref: Path, work: Path) -> None:
        np.save(work / "in.npy", _source())
        bigarr.append(work / "a.npy", np.full((5, 8), -1.0))
        shutil.copy(work / "a.npy", ref / "a.npy")
        self.run(ref, ref, lambda s: None, inp=work / "in.npy")

    def run(self, ref: Path, work: Path, note: Callable[[str], None],
            inp: Path | None = None) -> None:
        with bigarr.Appender(work / "a.npy") as app:
            bigarr.map_blocks(self._filter, inp or work / "in.npy", out=app, resume=True,
                              flush_every="64KiB", **_MAP_KW)

    def check(self, ref: Path, work: Path, notes: list[str]) -> Violations:
        out: Violations = {}
        path = work / "a.npy"
        want = np.load(ref / "a.npy")
        try:
            got = np.load(path)
            if got.shape[0] > want.shape[0] or not np.array_equal(got, want[:got.shape[0]]):
                out["valid_prefix_of_result"] = f"{got.shape} is not a prefix of the result"
        except Exception as exc:
            out["valid_prefix_of_result"] = f"does not load: {type(exc).__name__}: {exc}"
        if _journals(work) or not np.array_equal(np.load(path), want):
            self.run(ref, work, lambda s: None)  # resume it (or run it: it never started)
        if not np.array_equal(np.load(path), want):
            out["rerun_equals_clean_run"] = "the resumed appender output differs from a clean run"
        if strays := sorted(set(hidden(work) + _journals(work))):
            out["no_strays_after_rerun"] = f"left behind after a successful rerun: {strays}"
        return out


class MapInPlaceNoResume(MapInPlace):
    """In place without resume: the journal still marks the file incomplete until the end."""

    name = "map_blocks_inplace"
    resume = False


# ---- Appender --------------------------------------------------------------------------------
class Append(Op):
    name = "appender"
    invariants = ("valid_prefix_of_appended_rows", "committed_rows_survive", "reopen_and_grow")
    base = 100
    batches = (1, 300, 0, 5000, 40000, 7, 20000, 9000, 3)  # 2.4 MB: past two 1 MiB steps
    numpy_header = False

    def setup(self, ref: Path, work: Path) -> None:
        if self.numpy_header:
            np.save(work / "a.npy", _rows(0, self.base))
        else:
            bigarr.append(work / "a.npy", _rows(0, self.base))

    def run(self, ref: Path, work: Path, note: Callable[[str], None]) -> None:
        n = self.base
        with bigarr.Appender(work / "a.npy", step="1MiB", commit_every="256KiB") as app:
            for i, count in enumerate(self.batches):
                app.append(_rows(n, n + count))
                n += count
                note(f"appended {n}")
                if app.committed:
                    note(f"committed {app.committed}")
                if i % 3 == 2:
                    note(f"committed {app.commit()}")
        note(f"committed {n}")

    def check(self, ref: Path, work: Path, notes: list[str]) -> Violations:
        out: Violations = {}
        path = work / "a.npy"
        total = self.base + sum(self.batches)
        committed = max([int(s.split()[1]) for s in notes if s.startswith("committed")] +
                        [self.base])
        try:
            got = np.load(path)
            with bigarr.open(path) as arr:
                mapped = np.array(arr)
        except Exception as exc:
            out["valid_prefix_of_appended_rows"] = f"does not load: {type(exc).__name__}: {exc}"
            return out
        m = got.shape[0]
        if got.shape[1:] != (4,) or not self.base <= m <= total or \
                not np.array_equal(got, _rows(0, m)) or not np.array_equal(mapped, got):
            out["valid_prefix_of_appended_rows"] = (
                f"{got.shape} rows are not the first rows appended (0..{total})")
        if m < committed:
            out["committed_rows_survive"] = f"{m} rows after a commit of {committed} returned"
        try:
            with bigarr.Appender(path) as app:
                app.append(_rows(m, m + 10))
            if not np.array_equal(np.load(path), _rows(0, m + 10)):
                out["reopen_and_grow"] = "rows appended after the crash did not land after the rest"
        except Exception as exc:
            out["reopen_and_grow"] = f"{type(exc).__name__}: {exc}"
        return out


class AppendNumpyHeader(Append):
    name = "appender_numpy_header"
    numpy_header = True


# ---- private commit --------------------------------------------------------------------------
_EDIT_PAGES = (1, 2, 3, 10, 20, 21, 22, 23, 24, 25, 40, 63)


def _edited(base: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    new = base.copy()
    per_page = PAGE // 8
    for p in _EDIT_PAGES:
        new[p * per_page:(p + 1) * per_page] = p + 1.5
    return new


class Commit(Op):
    name = "commit"
    journal = False
    invariants = ("whole_pages_prefix_by_offset", "recover_then_commit_again")
    n = 64 * PAGE // 8

    def setup(self, ref: Path, work: Path) -> None:
        bigarr.create(work / "p.npy", (self.n,), "f8", fill=0.25).close()

    def run(self, ref: Path, work: Path, note: Callable[[str], None]) -> None:
        per_page = PAGE // 8
        with bigarr.open(work / "p.npy", "private") as arr:
            for p in _EDIT_PAGES:  # only these pages become scratch pages
                arr[p * per_page:(p + 1) * per_page] = p + 1.5
            arr.commit(journal=self.journal)

    def check(self, ref: Path, work: Path, notes: list[str]) -> Violations:
        out: Violations = {}
        path = work / "p.npy"
        old = np.full(self.n, 0.25)
        new = _edited(old)
        bigarr.recover_commit(path)
        got = np.load(path)
        pages = got.reshape(-1, PAGE // 8)
        is_new = [bool(np.array_equal(pages[p], new.reshape(-1, PAGE // 8)[p]))
                  for p in _EDIT_PAGES]
        whole = all(np.array_equal(pages[p], old.reshape(-1, PAGE // 8)[p]) or is_new[i]
                    for i, p in enumerate(_EDIT_PAGES))
        untouched = np.array_equal(np.delete(pages, list(_EDIT_PAGES), axis=0),
                                   np.delete(old.reshape(-1, PAGE // 8), list(_EDIT_PAGES), axis=0))
        if self.journal:
            if not (all(is_new) or not any(is_new)) or not whole or not untouched:
                out["all_or_nothing_after_recover"] = (
                    f"after recover_commit {sum(is_new)} of {len(is_new)} edited pages are new")
        elif not whole or not untouched or is_new != sorted(is_new, reverse=True):
            out["whole_pages_prefix_by_offset"] = f"new pages (in offset order): {is_new}"
        if strays := hidden(work):
            out["recover_then_commit_again"] = f"still there after recovery: {strays}"
        try:
            with bigarr.open(path, "private") as arr:
                arr[:] = old  # a commit after recovery, both ways, must land whole
                arr.commit(journal=self.journal)
                arr[:] = new
                arr.commit(journal=self.journal)
            if not np.array_equal(np.load(path), new):
                out["recover_then_commit_again"] = "a later commit did not land"
        except Exception as exc:
            out["recover_then_commit_again"] = f"{type(exc).__name__}: {exc}"
        if strays := hidden(work):
            out["recover_then_commit_again"] = f"left behind: {strays}"
        return out


class CommitJournal(Commit):
    name = "commit_journal"
    journal = True
    invariants = ("all_or_nothing_after_recover", "recover_then_commit_again")


class Recover(Commit):
    """A crash during recover_commit itself, after a commit died with its journal complete."""

    name = "recover_commit"
    journal = True
    invariants = ("all_new_after_second_recover", "recover_then_commit_again")

    def setup(self, ref: Path, work: Path) -> None:
        super().setup(ref, work)
        # the commit, killed just before its first write to the file itself
        _killed_run(CommitJournal(), ref, work, "before:pwrite#1")
        assert hidden(work), "the killed commit was expected to leave its journal"

    def run(self, ref: Path, work: Path, note: Callable[[str], None]) -> None:
        bigarr.recover_commit(work / "p.npy")

    def check(self, ref: Path, work: Path, notes: list[str]) -> Violations:
        out = super().check(ref, work, notes)
        if "all_or_nothing_after_recover" in out:
            out["all_new_after_second_recover"] = out.pop("all_or_nothing_after_recover")
        return out


# ---- zarr ------------------------------------------------------------------------------------
class ToZarr(Op):
    name = "to_zarr"
    invariants = ("absent_complete_or_refused", "no_strays_after_rerun")

    def setup(self, ref: Path, work: Path) -> None:
        np.save(work / "in.npy", _source())

    def run(self, ref: Path, work: Path, note: Callable[[str], None]) -> None:
        with bigarr.open(work / "in.npy") as src:
            bigarr.to_zarr(src, str(work / "o.zarr"), chunks=(512, 8), budget="256KiB",
                           progress=False)

    def check(self, ref: Path, work: Path, notes: list[str]) -> Violations:
        import zarr

        out: Violations = {}
        path = work / "o.zarr"
        if path.exists():
            try:
                complete = np.array_equal(zarr.open_array(str(path), mode="r")[:], _source())
            except Exception:
                complete = False
            if not complete:
                try:
                    with bigarr.from_zarr(str(path), work / "back.npy"):
                        pass
                    out["absent_complete_or_refused"] = (
                        "from_zarr accepted an interrupted to_zarr output")
                except bigarr.errors.BigArrError:
                    pass
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(work / "back.npy")
        with bigarr.open(work / "in.npy") as src:
            bigarr.to_zarr(src, str(path), chunks=(512, 8), budget="256KiB", progress=False,
                           overwrite=True)
        if strays := hidden(work):
            out["no_strays_after_rerun"] = f"left behind after a successful rerun: {strays}"
        return out


class FromZarr(Op):
    name = "from_zarr"
    invariants = ("absent_or_complete", "no_strays_after_rerun")

    def setup(self, ref: Path, work: Path) -> None:
        import zarr

        z = zarr.create_array(str(work / "in.zarr"), shape=(8192, 8), dtype="f8",
                              chunks=(512, 8))
        z[:] = _source()

    def run(self, ref: Path, work: Path, note: Callable[[str], None]) -> None:
        bigarr.from_zarr(str(work / "in.zarr"), work / "o.npy", budget="128KiB",
                         progress=False).close()

    def check(self, ref: Path, work: Path, notes: list[str]) -> Violations:
        out: Violations = {}
        path = work / "o.npy"
        if path.exists() and (err := loads_as(path, _source())):
            out["absent_or_complete"] = err
        bigarr.from_zarr(str(work / "in.zarr"), path, budget="128KiB", progress=False,
                         overwrite=True).close()
        if strays := hidden(work):
            out["no_strays_after_rerun"] = f"left behind after a successful rerun: {strays}"
        return out


# ---- the CLI's convert -----------------------------------------------------------------------
def _cli(*argv: str) -> int:
    """Run ``bigarr ARGV`` in this process; its exit status (errors are status 1 or 2)."""
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            return cli_main()(list(argv))
        except SystemExit as exc:
            return int(exc.code or 0)


class Convert(Op):
    invariants = ("absent_or_complete", "partial_never_accepted", "rerun_succeeds",
                  "no_strays_after_rerun")
    src, dst = "in.npy", "o.npy"

    def __init__(self, src: str, dst: str) -> None:
        self.src, self.dst = src, dst
        self.name = f"convert_{src.split('.')[1]}_to_{dst.split('.')[1]}"

    def setup(self, ref: Path, work: Path) -> None:
        if self.src.endswith(".zarr"):
            import zarr

            z = zarr.create_array(str(work / self.src), shape=(8192, 8), dtype="f8",
                                  chunks=(512, 8))
            z[:] = _source()
        else:
            np.save(work / self.src, _source())

    def _args(self, work: Path, *extra: str) -> list[str]:
        args = ["convert", str(work / self.src), str(work / self.dst), "--budget", "1MiB",
                "--no-progress", *extra]
        if self.dst.endswith(".zarr"):
            args += ["--chunks", "512,8"]
        return args

    def run(self, ref: Path, work: Path, note: Callable[[str], None]) -> None:
        note(f"exit {_cli(*self._args(work))}")

    def _read(self, path: Path) -> np.ndarray[Any, Any] | None:
        if self.dst.endswith(".zarr"):
            import zarr

            try:
                return np.asarray(zarr.open_array(str(path), mode="r")[:])
            except Exception:
                return None
        try:
            return np.load(path)
        except Exception:
            return None

    def check(self, ref: Path, work: Path, notes: list[str]) -> Violations:
        out: Violations = {}
        path = work / self.dst
        if path.exists():
            got = self._read(path)
            if got is None or got.shape != _source().shape or not np.array_equal(got, _source()):
                out["absent_or_complete"] = f"{self.dst} exists but is not the complete output"
                back = "back.npy" if self.dst.endswith(".zarr") else "back.zarr"
                if _cli("convert", str(path), str(work / back), "--no-progress") == 0:
                    out["partial_never_accepted"] = (
                        f"'bigarr convert {self.dst} {back}' accepted the interrupted output")
                with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                    shutil.rmtree(work / back) if back.endswith(".zarr") \
                        else os.unlink(work / back)
        extra = ("--overwrite",) if os.path.lexists(path) else ()  # as a user would rerun it
        status = _cli(*self._args(work, *extra))
        if status != 0:
            out["rerun_succeeds"] = f"the same convert {' '.join(extra)} then exited {status}"
        elif strays := hidden(work):
            out["no_strays_after_rerun"] = f"left behind after a successful rerun: {strays}"
        return out


OPS: dict[str, Op] = {op.name: op for op in (
    Create(), MapNew(), MapResume(), MapResumeThreads(), MapResumeTwice(), MapInPlace(),
    MapInPlaceNoResume(), MapAppender(), Append(),
    AppendNumpyHeader(), Commit(), CommitJournal(), Recover(), ToZarr(), FromZarr(),
    Convert("in.npy", "o.npy"), Convert("in.npy", "o.zarr"), Convert("in.zarr", "o.npy"))}

# Kill points of the bounded (CI) matrix: named boundaries that matter, plus a few seeded ones.
BOUNDED: dict[str, list[str]] = {
    "create": ["before:posix_fallocate#1", "torn:pwrite#2"],
    "map_blocks": ["before:fdatasync#1", "before:replace#1"],
    "map_blocks_resume": ["before:fdatasync#3", "before:replace#2"],
    "map_blocks_resume_twice": ["torn:pwrite#1", "before:write#2"],
    "map_blocks_inplace": ["torn:pwrite#2"],
    "map_blocks_inplace_resume": ["before:write#3", "before:unlink#1"],
    "map_blocks_appender_resume": ["before:write#3"],
    "appender": ["torn:pwrite#4", "before:fdatasync#2", "before:ftruncate#1"],
    "appender_numpy_header": ["before:pwrite#3"],
    "commit": ["torn:pwrite#3"],
    "commit_journal": ["torn:write#3", "before:pwrite#2"],
    "recover_commit": ["before:pwrite#3"],
    "to_zarr": ["before:replace#6"],
    "from_zarr": ["before:msync#3"],
    "convert_npy_to_npy": ["before:replace#1"],
    "convert_npy_to_zarr": ["before:mkdir#2", "before:replace#5"],
    "convert_zarr_to_npy": ["before:msync#2"],
}


# ---- running ---------------------------------------------------------------------------------
def _parse_spec(spec: str) -> tuple[str, Any]:
    kind, _, where = spec.partition(":")
    if kind == "delay":
        return kind, float(where)
    if kind == "none":
        return kind, None
    if "#" in where:
        name, _, k = where.partition("#")
        return kind, (name, int(k))
    return kind, int(where)


def _read_lines(fd: int) -> list[str]:
    data = b""
    while chunk := os.read(fd, 65536):
        data += chunk
    return [line for line in data.decode().split("\n") if line]


def _child(fn: Callable[[Callable[[str], None]], Any]) -> tuple[int, list[str]]:
    """Fork; run ``fn(note)`` in the child; return (wait status, notes)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        signal.alarm(CHILD_TIMEOUT)  # a hung child dies (SIGALRM) and is reported, never waited on
        code = 0
        try:
            def note(text: str) -> None:
                _REAL["write"](w, (text.replace("\n", " ") + "\n").encode())

            fn(note)
        except BaseException:
            _REAL["write"](w, ("error " + traceback.format_exc().replace("\n", " | ")
                               + "\n").encode())
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    notes = _read_lines(r)
    os.close(r)
    _pid, status = os.waitpid(pid, 0)
    return status, notes


def run_one(op: Op, template: Path, spec: str, base: Path, trace: bool = False
            ) -> dict[str, Any]:
    """One kill run of ``op`` at ``spec``; returns what happened and the violations."""
    ref, work = template / "ref", template / "work"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(template / "pristine", work, symlinks=True)  # copy2: same mtimes
    kind, target = _parse_spec(spec)
    started = time.perf_counter()
    if kind == "delay":
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            signal.alarm(CHILD_TIMEOUT)
            code = 0
            try:
                _REAL["write"](w, b"S\n")
                op.run(ref, work, lambda text: _REAL["write"](w, (text + "\n").encode()))
            except BaseException:
                code = 3
            finally:
                os._exit(code)
        os.close(w)
        assert os.read(r, 2) == b"S\n"
        data = b""
        deadline = time.perf_counter() + target
        while (left := deadline - time.perf_counter()) > 0:
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 65536)
                if not chunk:
                    break  # the child finished (its pipe closed) before the kill
                data += chunk
        with contextlib.suppress(ProcessLookupError):
            _real_kill(pid, signal.SIGKILL)
        while chunk := os.read(r, 65536):
            data += chunk
        os.close(r)
        notes = [line for line in data.decode().split("\n") if line]
        _pid, status = os.waitpid(pid, 0)
    else:
        hooks = Hooks(kind, target, trace)

        def body(note: Callable[[str], None]) -> None:
            hooks.install()
            op.run(ref, work, note)
            note("calls " + json.dumps({"total": hooks.total, "per_name": hooks.per_name,
                                        "trace": hooks.calls}))

        status, notes = _child(body)
    elapsed = time.perf_counter() - started
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    result: dict[str, Any] = {"spec": spec, "killed": killed, "seconds": round(elapsed, 4)}
    calls = [n for n in notes if n.startswith("calls ")]
    if calls:
        result["calls"] = json.loads(calls[0][6:])
    errors = [n for n in notes if n.startswith("error ")]
    if errors or not (killed or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0)):
        result["op_error"] = errors[0] if errors else f"wait status {status}"
    def check(note: Callable[[str], None]) -> None:
        with warnings.catch_warnings():  # an interrupted output is expected to warn on open
            warnings.simplefilter("ignore", bigarr.errors.IncompleteOutputWarning)
            note("result " + json.dumps(op.check(ref, work, notes)))

    status, check_notes = _child(check)
    results = [n for n in check_notes if n.startswith("result ")]
    if results:
        result["violations"] = json.loads(results[0][7:])
    else:
        result["violations"] = {"checker_crashed": " ".join(check_notes)[-2000:]
                                or f"wait status {status}"}
    return result


def prepare(op: Op, base: Path) -> Path:
    template = base / op.name
    (template / "ref").mkdir(parents=True)
    (template / "work").mkdir()
    status, notes = _child(lambda note: op.setup(template / "ref", template / "work"))
    os.rename(template / "work", template / "pristine")
    if status != 0:
        raise RuntimeError(f"setup of {op.name} failed: {notes}")
    return template


def matrix(ops: list[str], full: bool, seed: int, delays: int, base: Path,
           log: Callable[[str], None]) -> dict[str, Any]:
    rng = random.Random(seed)
    summary: dict[str, Any] = {"seed": seed, "full": full, "ops": {}}
    for name in ops:
        op = OPS[name]
        template = prepare(op, base)
        clean = run_one(op, template, "none:", base, trace=True)
        calls = clean.get("calls", {"total": 0, "trace": []})
        specs: list[str]
        if full:
            specs = [f"before:{i}" for i in range(1, calls["total"] + 1)]
            specs += [f"torn:{c[0]}" for c in calls["trace"] if c[4]]
        else:
            specs = list(BOUNDED.get(name, []))
            if calls["total"] and len(specs) < 2:  # plus one seeded boundary
                specs += [f"before:{rng.randint(1, calls['total'])}"]
        duration = max(clean["seconds"], 0.01)
        specs += [f"delay:{rng.uniform(0, duration):.4f}" for _ in range(delays)]
        inv: dict[str, dict[str, Any]] = {
            k: {"runs": 0, "held": 0, "violated": 0, "examples": []} for k in op.invariants}
        op_summary: dict[str, Any] = {"calls": calls["total"], "per_name": calls.get("per_name"),
                                      "clean_run": clean["violations"], "runs": 0, "killed": 0,
                                      "op_errors": [], "invariants": inv}
        if clean.get("op_error"):
            op_summary["op_errors"].append(["none:", clean["op_error"]])
        for spec in specs:
            res = run_one(op, template, spec, base)
            op_summary["runs"] += 1
            op_summary["killed"] += res["killed"]
            if res.get("op_error"):
                op_summary["op_errors"].append([spec, res["op_error"][:500]])
            for key, why in res["violations"].items():
                entry = inv.setdefault(key, {"runs": 0, "held": 0, "violated": 0,
                                             "examples": []})
                if len(entry["examples"]) < 5:
                    entry["examples"].append([spec, why[:500]])
            for key, entry in inv.items():
                entry["runs"] += 1
                if key in res["violations"]:
                    entry["violated"] += 1
                else:
                    entry["held"] += 1
        summary["ops"][name] = op_summary
        shutil.rmtree(template, ignore_errors=True)
        log(f"{name}: {op_summary['runs']} runs, {op_summary['killed']} killed, "
            + ", ".join(f"{k} {v['held']}/{v['runs']}" for k, v in inv.items()))
    return summary


def table(summary: dict[str, Any]) -> str:
    lines = [f"crash matrix (seed {summary['seed']}, {'full' if summary['full'] else 'bounded'})",
             f"{'operation':28} {'calls':>5} {'runs':>5} {'killed':>6}  invariant: held/runs"]
    for name, s in summary["ops"].items():
        invs = "; ".join(f"{k} {v['held']}/{v['runs']}" for k, v in s["invariants"].items())
        lines.append(f"{name:28} {s['calls']:>5} {s['runs']:>5} {s['killed']:>6}  {invs}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", default=",".join(OPS), help="comma-separated operations")
    parser.add_argument("--full", action="store_true",
                        help="every hooked call (before and torn), not the bounded set")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--delays", type=int, default=None,
                        help="random-delay kills per operation (default 1, or 20 with --full)")
    parser.add_argument("--spec", help="run one kill point (e.g. before:12) of one operation")
    parser.add_argument("--trace", action="store_true", help="print an operation's hooked calls")
    parser.add_argument("--table", action="store_true", help="print a table, not JSON")
    parser.add_argument("--dir", help="scratch folder (default: a new temporary one)")
    args = parser.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        parser.error(f"unknown operations {unknown}; known: {', '.join(OPS)}")
    base = Path(tempfile.mkdtemp(prefix="bigarr-crash-", dir=args.dir))
    try:
        if args.trace or args.spec:  # one run per operation; its result as one JSON line
            for name in ops:
                template = prepare(OPS[name], base)
                res = run_one(OPS[name], template, args.spec or "none:", base, trace=True)
                if args.trace:
                    for call in res.get("calls", {}).get("trace", []):
                        print(f"{name:26} {call[0]:>4} {call[1]}#{call[2]:<4} {call[3]}"
                              + ("  (tearable)" if call[4] else ""))
                print(json.dumps(dict(res, op=name)))
            return 0
        delays = args.delays if args.delays is not None else (20 if args.full else 1)
        summary = matrix(ops, args.full, args.seed, delays, base,
                         lambda s: print(s, file=sys.stderr, flush=True))
        print(table(summary) if args.table else json.dumps(summary, indent=1))
        if args.table:
            for name, s in summary["ops"].items():
                for key, v in s["invariants"].items():
                    for spec, why in v["examples"][:2]:
                        print(f"  {name} {key} violated at {spec}: {why}")
                for spec, err in s["op_errors"][:2]:
                    print(f"  {name} op error at {spec}: {err[:300]}")
        return 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
