"""Case registry, size parsing and the context handed to a running case.

A case is a plain function ``def my_case(ctx: Context) -> dict`` registered
with :func:`case`.  It runs in a fresh interpreter per run; it may do setup,
then wraps the part to be measured in ``with ctx.timer():`` and returns extra
metrics (JSON-serialisable).  Two keys of the returned dict mean something to
the harness:

``bytes_processed``
    Bytes the timed section worked through, for the throughput column.  When
    missing, the data size (``ctx.nbytes``) is used if the case declared data,
    else no throughput is shown.
``checksum``
    A number compared with ``ctx.expected_sum`` (relative tolerance
    :data:`CHECKSUM_RTOL`); the table shows the outcome in its ``check`` column.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness_proc import Delta, Snapshot

CACHE_MODES = ("warm", "cold")
"""Page-cache states a case can be run in."""

CHECKSUM_RTOL = 1e-5
"""Relative tolerance for ``checksum`` (covers float32 accumulation error)."""

Metrics = dict[str, Any]
CaseFn = Callable[["Context"], Metrics]

_UNIT_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: str | int) -> int:
    """Parse a byte count such as ``"512MiB"``, ``"2GiB"``, ``"1.5GB"`` or ``4096``.

    ``KiB``/``MiB``/``GiB``/``TiB`` (and the bare ``K``/``M``/``G``/``T``) are
    powers of 1024, ``KB``/``MB``/``GB``/``TB`` powers of 1000; case is ignored.

    Parameters
    ----------
    value : str or int
        The size.

    Returns
    -------
    int
        The size in bytes (fractions are rounded down).

    Raises
    ------
    ValueError
        If ``value`` is not a non-negative size in one of these forms.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"Expected a non-negative number of bytes. Got {value} instead.")
        return value
    match = _SIZE_RE.match(str(value))
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNIT_FACTORS:
        raise ValueError(
            f"Expected a size like '512MiB', '2GiB', '1.5GB' or a number of bytes. "
            f"Got {value!r} instead."
        )
    return int(float(match.group(1)) * _UNIT_FACTORS[unit])


def format_size(nbytes: float) -> str:
    """Format a byte count compactly with binary units (``"256MiB"``, ``"1.5GiB"``).

    Parameters
    ----------
    nbytes : float
        Size in bytes.

    Returns
    -------
    str
        The size with at most three significant digits after scaling.
    """
    for unit, factor in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(nbytes) >= factor:
            return f"{nbytes / factor:.3g}{unit}"
    return f"{nbytes:.0f}B"


@dataclass(frozen=True, slots=True)
class CaseSpec:
    """A registered case and everything the harness needs to run it."""

    name: str
    """Unique case name, conventionally ``group.what`` (e.g. ``baseline.memmap_sum``)."""
    fn: CaseFn
    """The case function."""
    module: str
    """Top-level module that defines the case (imported by the child process)."""
    group: str
    """Table section the case belongs to; ratios compare cases of one group."""
    peer: str
    """What the case stands for, e.g. ``numpy.memmap`` or ``bigarr``."""
    baseline: str | None
    """Case whose medians give the ratio columns (same cache mode)."""
    data: tuple[str, ...]
    """Dataset kinds the case reads (see ``harness_data``); evicted/warmed per run."""
    caches: tuple[str, ...]
    """Cache modes the case supports, a subset of :data:`CACHE_MODES`."""
    sample_dirty: bool
    """Sample the system's ``Dirty``/``Writeback`` maximum during the run."""
    limit: Mapping[str, str]
    """Per cache mode, the machine-limit case whose throughput is 100 %."""
    mem_limit: int | None
    """Run the child in a memory cgroup with this limit (bytes), or not at all."""
    params: Mapping[str, Any]
    """Free-form parameters passed on as ``ctx.params``."""
    description: str
    """First line of the case function's docstring."""


_REGISTRY: dict[str, CaseSpec] = {}


def case(
    name: str,
    *,
    group: str,
    peer: str,
    baseline: str | None = None,
    data: tuple[str, ...] = ("npy",),
    caches: tuple[str, ...] | None = None,
    sample_dirty: bool = False,
    limit: str | Mapping[str, str] | None = None,
    mem_limit: str | int | None = None,
    params: Mapping[str, Any] | None = None,
) -> Callable[[CaseFn], CaseFn]:
    """Register a benchmark case (decorator).

    Parameters
    ----------
    name : str
        Unique case name, e.g. ``"chunking.stream_sum"``.
    group : str
        Table section; ratio columns compare with ``baseline`` within it.
    peer : str
        What is being measured, e.g. ``"numpy.memmap"`` or ``"bigarr"``.
    baseline : str, optional
        Name of the case to compare with (ratios of medians, same cache mode).
    data : tuple of str
        Dataset kinds the case reads (``"npy"``, ``"raw"``, ...); ``()`` for none.
    caches : tuple of str, optional
        Cache modes to run in; default both, or only ``"cold"`` when
        ``mem_limit`` is set (warm pages are charged to another cgroup).
    sample_dirty : bool
        Record the maximum of ``Dirty``/``Writeback`` from ``/proc/meminfo``.
    limit : str or mapping of str to str, optional
        Machine-limit case (or one per cache mode) giving the "% of limit" column.
    mem_limit : str or int, optional
        Memory cgroup limit for the child, e.g. ``"256MiB"``.
    params : mapping, optional
        Free-form parameters, available as ``ctx.params``.

    Returns
    -------
    callable
        A decorator that registers the function and returns it unchanged.

    Raises
    ------
    ValueError
        If the name is taken or a cache mode is unknown.
    """
    limit_bytes = None if mem_limit is None else parse_size(mem_limit)
    if caches is None:
        caches = ("cold",) if limit_bytes is not None else CACHE_MODES
    bad = [c for c in caches if c not in CACHE_MODES]
    if bad or not caches:
        raise ValueError(f"Expected cache modes from {CACHE_MODES}. Got {caches!r} instead.")
    if isinstance(limit, str):
        limits: Mapping[str, str] = dict.fromkeys(CACHE_MODES, limit)
    else:
        limits = dict(limit or {})

    def register(fn: CaseFn) -> CaseFn:
        if name in _REGISTRY:
            raise ValueError(f"Case {name!r} is registered twice ({_REGISTRY[name].module}).")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = CaseSpec(
            name=name,
            fn=fn,
            module=fn.__module__,
            group=group,
            peer=peer,
            baseline=baseline,
            data=tuple(data),
            caches=tuple(caches),
            sample_dirty=sample_dirty,
            limit=limits,
            mem_limit=limit_bytes,
            params=dict(params or {}),
            description=doc[0] if doc else "",
        )
        return fn

    return register


def registered_cases() -> dict[str, CaseSpec]:
    """Return all registered cases by name, in registration order."""
    return dict(_REGISTRY)


@dataclass(slots=True)
class Context:
    """What a case receives: data, sizes, parameters and the :meth:`timer`."""

    case: str
    """Name of the running case."""
    cache: str
    """``"warm"`` or ``"cold"``: the page-cache state the harness prepared."""
    repeat: int
    """Index of this run (0-based)."""
    nbytes: int
    """Size of the array data in each dataset (bytes)."""
    dtype: str
    """Element type of the datasets (``"float32"``)."""
    paths: dict[str, Path]
    """Dataset kind to file (or folder) path, for the kinds the case declared."""
    scratch: Path
    """Empty folder for output files, on the data disk; deleted after the run."""
    params: dict[str, Any]
    """The case's registered parameters."""
    expected_sum: float
    """Exact sum of all elements of each dataset."""
    mem_limit: int | None
    """Memory cgroup limit the child runs under (bytes), if any."""
    timed: Delta | None = field(default=None)
    """Sum of all :meth:`timer` sections so far (``None`` before the first)."""
    sections: int = 0
    """Number of completed :meth:`timer` sections."""

    @property
    def n(self) -> int:
        """Number of elements in each dataset."""
        return self.nbytes // 4

    def path(self, kind: str = "npy") -> Path:
        """Return the path of dataset ``kind``.

        Raises
        ------
        KeyError
            If the case did not declare that dataset kind.
        """
        try:
            return self.paths[kind]
        except KeyError:
            raise KeyError(
                f"Case {self.case!r} did not declare dataset {kind!r}; "
                f"add it to data=(...) in @case. Declared: {sorted(self.paths)}."
            ) from None

    @contextmanager
    def timer(self) -> Iterator[None]:
        """Measure the enclosed block: wall and CPU time, faults and I/O bytes.

        Several sections are added up.  Without any section the harness
        measures the whole case call instead.
        """
        start = Snapshot.take()
        try:
            yield
        finally:
            delta = Delta.between(start, Snapshot.take())
            self.timed = delta if self.timed is None else self.timed + delta
            self.sections += 1
