"""Run a child process under a memory limit (cgroup v1 memory controller).

:class:`MemoryCgroup` creates a child of this process's own memory cgroup
(found through ``/proc/self/cgroup`` and ``/proc/self/mountinfo``), sets
``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes`` where present,
so the child cannot escape into swap), moves a child process into it, reads the
``oom_kill`` counter of ``memory.oom_control`` and removes the cgroup on close.

Page-cache pages are charged to the cgroup that first read them, so evict the
child's input files first (``evict=`` of :func:`run_in_memory_cgroup`), or a
warm cache makes the limit look more lenient than it is.

When this cannot work (not Linux, cgroup v2 only, no memory controller, no
permission) :func:`cgroup_unavailable` returns the reason and
:func:`run_in_memory_cgroup` returns a result with ``available=False``, so
callers can skip cleanly.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from harness_cache import evict


class CgroupUnavailableError(OSError):
    """A memory cgroup cannot be created here; the message says why."""


def _own_memory_cgroup() -> Path:
    """Return the folder of this process's v1 memory cgroup.

    Raises
    ------
    CgroupUnavailableError
        If there is no cgroup v1 memory controller for this process.
    """
    try:
        own = Path("/proc/self/cgroup").read_text().splitlines()
        mountinfo = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError as exc:
        raise CgroupUnavailableError(f"cannot read /proc cgroup info ({exc})") from None
    rel = None
    for line in own:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            rel = path
    if rel is None:
        v2 = any(line.startswith("0::") for line in own)
        raise CgroupUnavailableError(
            "cgroup v2 (unified hierarchy) only; this helper supports cgroup v1"
            if v2
            else "no memory cgroup controller for this process"
        )
    for line in mountinfo:
        pre, _, post = line.partition(" - ")
        parts, after = pre.split(), post.split()
        if len(after) >= 3 and after[0] == "cgroup" and "memory" in after[2].split(","):
            root, mnt = parts[3], re.sub(r"\\(\d{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
            inner = rel[len(root) :] if rel.startswith(root) and root != "/" else rel
            folder = Path(mnt) / inner.lstrip("/")
            if (folder / "memory.limit_in_bytes").exists():
                return folder
            raise CgroupUnavailableError(f"memory cgroup folder {folder} not found")
    raise CgroupUnavailableError("cgroup v1 memory controller is not mounted")


def cgroup_unavailable() -> str | None:
    """Return why memory cgroups cannot be used here, or ``None`` if they can.

    Creating (and removing) a probe cgroup is the only reliable permission check.
    """
    try:
        with MemoryCgroup(64 << 20):
            pass
    except CgroupUnavailableError as exc:
        return str(exc)
    return None


class MemoryCgroup:
    """A temporary child memory cgroup with a limit (context manager).

    Parameters
    ----------
    limit_bytes : int
        Memory limit (bytes) for everything in the cgroup, page cache included.

    Raises
    ------
    CgroupUnavailableError
        If the cgroup cannot be created or limited.
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        parent = _own_memory_cgroup()
        self.path = parent / f"bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self.path.mkdir()
        except OSError as exc:
            who = "" if os.geteuid() == 0 else " (not root)"
            raise CgroupUnavailableError(
                f"cannot create a child memory cgroup{who}: {exc.strerror}"
            ) from None
        try:
            self._write("memory.limit_in_bytes", limit_bytes)
            if (self.path / "memory.memsw.limit_in_bytes").exists():
                # failing means swap accounting is off: nothing to escape into anyway
                with contextlib.suppress(OSError):
                    self._write("memory.memsw.limit_in_bytes", limit_bytes)
        except OSError as exc:
            self.close()
            raise CgroupUnavailableError(f"cannot set the memory limit: {exc}") from None

    def _write(self, name: str, value: int | str) -> None:
        (self.path / name).write_text(f"{value}\n")

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def add_self(self) -> None:
        """Move the calling process into the cgroup (use as ``preexec_fn``)."""
        self._write("cgroup.procs", os.getpid())

    def oom_kill_count(self) -> int:
        """Return the ``oom_kill`` counter of ``memory.oom_control`` (0 if absent)."""
        for line in self._read("memory.oom_control").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def max_usage_bytes(self) -> int:
        """Return ``memory.max_usage_in_bytes`` (peak charge, page cache included)."""
        return int(self._read("memory.max_usage_in_bytes"))

    def close(self) -> None:
        """Kill any process left in the cgroup and remove it."""
        if not self.path.exists():
            return
        for _ in range(50):
            try:
                pids = [int(p) for p in self._read("cgroup.procs").split()]
            except OSError:
                pids = []
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        self.path.rmdir()

    def __enter__(self) -> MemoryCgroup:
        """Return self."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Remove the cgroup."""
        self.close()


@dataclass(frozen=True, slots=True)
class CgroupRun:
    """Outcome of :func:`run_in_memory_cgroup`."""

    available: bool
    """Whether the command could be run under the limit at all."""
    reason: str
    """Why not, when ``available`` is false (``"unavailable: ..."``); else ``""``."""
    limit_bytes: int
    """The memory limit (bytes)."""
    returncode: int | None = None
    """Exit status; ``-9`` means SIGKILL (the OOM killer's signal)."""
    oom_killed: bool = False
    """Killed by SIGKILL while the cgroup's ``oom_kill`` counter rose."""
    oom_kill_count: int = 0
    """Rise of the ``oom_kill`` counter during the run."""
    max_usage_bytes: int | None = None
    """Peak memory charged to the cgroup (bytes, page cache included)."""
    timed_out: bool = False
    """Killed by the harness after ``timeout`` seconds."""
    wall_s: float = 0.0
    """Wall time of the child (seconds)."""
    stdout: str = ""
    """Captured standard output."""
    stderr: str = ""
    """Captured standard error."""


def run_in_memory_cgroup(
    argv: Sequence[str],
    limit_bytes: int,
    *,
    timeout: float | None = None,
    evict_paths: Sequence[Path] = (),
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> CgroupRun:
    """Run ``argv`` in a fresh memory cgroup limited to ``limit_bytes``.

    Parameters
    ----------
    argv : sequence of str
        Command to run.
    limit_bytes : int
        Memory limit (bytes).
    timeout : float, optional
        Kill the child after this many seconds.
    evict_paths : sequence of Path
        Files to drop from the page cache first (see the module docstring).
    cwd : Path, optional
        Working folder of the child.
    env : dict, optional
        Environment of the child.

    Returns
    -------
    CgroupRun
        The outcome; ``available`` is false (and nothing ran) when no cgroup
        could be made.
    """
    try:
        cgroup = MemoryCgroup(limit_bytes)
    except CgroupUnavailableError as exc:
        return CgroupRun(available=False, reason=f"unavailable: {exc}", limit_bytes=limit_bytes)
    with cgroup:
        evict(list(evict_paths))
        before = cgroup.oom_kill_count()
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=cwd,
            env=env,
            preexec_fn=cgroup.add_self,  # the harness runs no threads at this point
        )
        timed_out = False
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            timed_out = True
        wall = time.perf_counter() - t0
        kills = cgroup.oom_kill_count() - before
        return CgroupRun(
            available=True,
            reason="",
            limit_bytes=limit_bytes,
            returncode=proc.returncode,
            oom_killed=proc.returncode == -signal.SIGKILL and kills > 0,
            oom_kill_count=kills,
            max_usage_bytes=cgroup.max_usage_bytes(),
            timed_out=timed_out,
            wall_s=wall,
            stdout=out,
            stderr=err,
        )
