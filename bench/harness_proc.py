"""Process counters read from ``/proc`` and ``getrusage`` (Linux).

Everything a run measures about itself comes from here:

* ``/proc/self/io``: ``read_bytes``/``write_bytes`` are the bytes this process
  caused to be fetched from / sent to the storage layer (page-cache misses,
  including readahead and mmap faults; writeback of pages it dirtied).
  ``rchar``/``wchar`` count bytes passed through ``read``/``write``-like system
  calls, whether or not they hit the cache (and nothing for mmap access).
* ``/proc/self/status``: ``VmRSS`` (current) and ``VmHWM`` (peak) resident set
  of this address space, in KiB.  File pages mapped by the process count.
* ``getrusage(RUSAGE_SELF)``: CPU time, page faults and ``ru_maxrss`` (KiB).
  On Linux ``ru_maxrss`` survives ``exec``: a child started from a big parent
  reports at least the parent's peak, which is why the harness keeps its own
  process small and reports ``VmHWM`` as the primary peak.
* ``/proc/meminfo``: system-wide ``Dirty`` and ``Writeback`` (KiB), sampled by
  :class:`DirtySampler`.
"""

from __future__ import annotations

import resource
import threading
import time
from dataclasses import dataclass, fields
from types import TracebackType

IO_KEYS = ("read_bytes", "write_bytes", "rchar", "wchar")


def _read_keyed(path: str, keys: tuple[str, ...]) -> dict[str, int]:
    """Parse ``key: value [kB]`` lines of a ``/proc`` file.

    Parameters
    ----------
    path : str
        File to read, e.g. ``/proc/self/status``.
    keys : tuple of str
        Keys to keep.

    Returns
    -------
    dict of str to int
        The integer value of each key found; missing keys are left out, and an
        unreadable file gives an empty dict.
    """
    out: dict[str, int] = {}
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    out[key] = int(rest.split()[0])
    except OSError:
        return {}
    return out


def read_io() -> dict[str, int]:
    """Return this process's I/O counters from ``/proc/self/io`` (bytes).

    Returns
    -------
    dict of str to int
        ``read_bytes``, ``write_bytes``, ``rchar`` and ``wchar``; empty when the
        kernel has no task I/O accounting.
    """
    return _read_keyed("/proc/self/io", IO_KEYS)


def read_status_kib() -> dict[str, int]:
    """Return ``VmRSS`` and ``VmHWM`` of this process (KiB)."""
    return _read_keyed("/proc/self/status", ("VmRSS", "VmHWM"))


def read_meminfo_kib(keys: tuple[str, ...] = ("Dirty", "Writeback")) -> dict[str, int]:
    """Return selected system-wide ``/proc/meminfo`` fields (KiB)."""
    return _read_keyed("/proc/meminfo", keys)


def ru_maxrss_kib() -> int:
    """Return ``getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Counters of this process at one instant."""

    wall: float
    """``time.perf_counter()`` (seconds)."""
    cpu: float
    """User plus system CPU time of the process (seconds)."""
    majflt: int
    """Major page faults so far (faults that needed I/O)."""
    minflt: int
    """Minor page faults so far."""
    io: dict[str, int]
    """``/proc/self/io`` counters (bytes); empty without I/O accounting."""

    @classmethod
    def take(cls) -> Snapshot:
        """Read all counters now."""
        io = read_io()
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            wall=time.perf_counter(),
            cpu=ru.ru_utime + ru.ru_stime,
            majflt=ru.ru_majflt,
            minflt=ru.ru_minflt,
            io=io,
        )


@dataclass(frozen=True, slots=True)
class Delta:
    """Difference of two :class:`Snapshot` s, or a sum of such differences."""

    wall_s: float = 0.0
    """Elapsed wall time (seconds)."""
    cpu_s: float = 0.0
    """User plus system CPU time (seconds)."""
    majflt: int = 0
    """Major page faults."""
    minflt: int = 0
    """Minor page faults."""
    read_bytes: int | None = None
    """Bytes fetched from storage (``None`` without I/O accounting)."""
    write_bytes: int | None = None
    """Bytes sent to storage."""
    rchar: int | None = None
    """Bytes returned by read-like system calls."""
    wchar: int | None = None
    """Bytes passed to write-like system calls."""

    @classmethod
    def between(cls, start: Snapshot, stop: Snapshot) -> Delta:
        """Return ``stop - start``."""
        io: dict[str, int | None] = {
            k: (stop.io[k] - start.io[k]) if k in start.io and k in stop.io else None
            for k in IO_KEYS
        }
        return cls(
            wall_s=stop.wall - start.wall,
            cpu_s=stop.cpu - start.cpu,
            majflt=stop.majflt - start.majflt,
            minflt=stop.minflt - start.minflt,
            **io,
        )

    def __add__(self, other: Delta) -> Delta:
        """Add two deltas field by field (``None`` stays ``None``)."""
        values: dict[str, float | int | None] = {}
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            values[f.name] = None if a is None or b is None else a + b
        return Delta(**values)  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, float | int | None]:
        """Return the fields as a plain dict."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


class DirtySampler:
    """Track the maximum of ``Dirty`` and ``Writeback`` while active.

    A daemon thread reads ``/proc/meminfo`` every ``interval`` seconds.  The
    values are system-wide, so other processes' dirty pages count too.

    Parameters
    ----------
    interval : float
        Sampling period (seconds).
    """

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.max_kib: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dirty-sampler", daemon=True)

    def _sample(self) -> None:
        for key, value in read_meminfo_kib().items():
            self.max_kib[key] = max(value, self.max_kib.get(key, 0))

    def _loop(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> DirtySampler:
        """Start sampling."""
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop sampling and take one last sample."""
        self._stop.set()
        self._thread.join()
        self._sample()
