"""Run cases, each run in its own fresh interpreter, and collect raw records.

Parent side (:func:`plan_runs`, :func:`run_once`, :func:`run_all`): prepare
the page cache for the run's data files, start ``python -c ...`` (inside a
memory cgroup when the case has ``mem_limit``), wait, and turn the child's
JSON report into a flat record.  Child side (:func:`child_main`): import the
case's module, call the case with a :class:`~harness_core.Context`, and
report counters, peak RSS and the case's metrics.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness_cache import prepare
from harness_cgroup import run_in_memory_cgroup
from harness_core import CACHE_MODES, CHECKSUM_RTOL, CaseSpec, Context, registered_cases
from harness_data import expected_sum
from harness_proc import Delta, DirtySampler, Snapshot, read_status_kib, ru_maxrss_kib

BENCH_DIR = Path(__file__).resolve().parent
_CHILD_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); import harness_runner; "
    "sys.exit(harness_runner.child_main(sys.argv[2]))"
)

Record = dict[str, Any]


@dataclass(frozen=True, slots=True)
class RunConfig:
    """Settings shared by all runs of one benchmark invocation."""

    data_dir: Path
    """Folder with the datasets; scratch folders are made below it."""
    nbytes: int
    """Data size of each dataset (bytes)."""
    repeat: int
    """Runs per case and cache mode."""
    timeout: float
    """Seconds before a child is killed."""


def plan_runs(
    selected: Sequence[CaseSpec], modes: Sequence[str], cases: dict[str, CaseSpec]
) -> list[tuple[CaseSpec, str]]:
    """Return ``(case, cache mode)`` pairs to run, dependencies included.

    A selected case's baseline and machine-limit cases are added so ratios
    and "% of limit" come from the same invocation.  A case runs in each of
    ``modes`` it supports; a dependency that supports none of them runs in
    its first supported mode.

    Raises
    ------
    KeyError
        If a case names a baseline or limit case that is not registered.
    """
    plan: dict[tuple[str, str], CaseSpec] = {}

    def add(spec: CaseSpec, mode: str, dependency: bool) -> None:
        if mode in spec.caches:
            plan.setdefault((spec.name, mode), spec)
        elif dependency and not any(m in spec.caches for m in modes):
            plan.setdefault((spec.name, spec.caches[0]), spec)

    for spec in selected:
        for mode in modes:
            if mode not in spec.caches:
                continue
            add(spec, mode, False)
            for dep in (spec.baseline, spec.limit.get(mode)):
                if dep is None:
                    continue
                if dep not in cases:
                    raise KeyError(f"Case {spec.name!r} refers to unknown case {dep!r}.")
                add(cases[dep], mode, True)
    order = {name: i for i, name in enumerate(cases)}
    return sorted(
        ((spec, mode) for (_, mode), spec in plan.items()),
        key=lambda item: (CACHE_MODES.index(item[1]), order[item[0].name]),
    )


def _jsonable(obj: object) -> object:
    item = getattr(obj, "item", None)  # numpy scalars
    return item() if callable(item) else str(obj)


def child_main(spec_file: str) -> int:
    """Run one case as described by the JSON file ``spec_file`` (child side).

    Returns
    -------
    int
        Exit status: 0 on success, 1 if the case raised.
    """
    spec = json.loads(Path(spec_file).read_text())
    report: dict[str, Any] = {}
    rc = 0
    try:
        importlib.import_module(spec["module"])
        case_spec = registered_cases()[spec["case"]]
        ctx = Context(
            case=spec["case"],
            cache=spec["cache"],
            repeat=spec["repeat"],
            nbytes=spec["nbytes"],
            dtype="float32",
            paths={k: Path(v) for k, v in spec["paths"].items()},
            scratch=Path(spec["scratch"]),
            params=dict(case_spec.params),
            expected_sum=spec["expected_sum"],
            mem_limit=spec["mem_limit"],
        )
        report["rss_base_kib"] = read_status_kib().get("VmRSS")
        sampler = DirtySampler() if case_spec.sample_dirty else None
        start = Snapshot.take()
        with sampler if sampler is not None else contextlib.nullcontext():
            metrics = case_spec.fn(ctx)
        call = Delta.between(start, Snapshot.take())
        report["timed"] = (ctx.timed or call).as_dict()
        report["call"] = call.as_dict()
        report["sections"] = ctx.sections
        report["metrics"] = dict(metrics or {})
        if sampler is not None:
            report["dirty_max_kib"] = sampler.max_kib.get("Dirty")
            report["writeback_max_kib"] = sampler.max_kib.get("Writeback")
    except BaseException:
        report["error"] = traceback.format_exc()
        rc = 1
    report["maxrss_kib"] = ru_maxrss_kib()
    report["vmhwm_kib"] = read_status_kib().get("VmHWM")
    Path(spec["result"]).write_text(json.dumps(report, default=_jsonable))
    return rc


def _status(returncode: int | None, oom: bool, timed_out: bool) -> str:
    if timed_out:
        return "timeout"
    if oom:
        return "oom"
    if returncode == 0:
        return "ok"
    if returncode is not None and returncode < 0:
        try:
            return f"killed:{signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed:{-returncode}"
    return "error"


def _record_from_report(
    record: Record, report: dict[str, Any], spec: CaseSpec, cfg: RunConfig
) -> None:
    timed = report.get("timed") or {}
    record.update({k: timed.get(k) for k in Delta().as_dict()})
    for key in ("rss_base_kib", "maxrss_kib", "vmhwm_kib", "dirty_max_kib", "writeback_max_kib"):
        record[key] = report.get(key)
    record["timed_sections"] = report.get("sections")
    metrics: dict[str, Any] = report.get("metrics") or {}
    record["metrics"] = metrics
    nbytes = metrics.get("bytes_processed", cfg.nbytes if spec.data else None)
    record["bytes_processed"] = nbytes
    wall = record.get("wall_s")
    record["throughput_gbs"] = nbytes / wall / 1e9 if nbytes and wall else None
    checksum = metrics.get("checksum")
    if isinstance(checksum, int | float) and spec.data:
        expected = expected_sum(cfg.nbytes // 4)
        record["checksum_ok"] = math.isclose(checksum, expected, rel_tol=CHECKSUM_RTOL)
    if report.get("error"):
        record["error"] = report["error"]


def run_once(
    spec: CaseSpec, mode: str, repeat: int, paths: dict[str, Path], cfg: RunConfig
) -> Record:
    """Run one case once in a fresh interpreter and return its flat record.

    Parameters
    ----------
    spec : CaseSpec
        The case.
    mode : {"warm", "cold"}
        Cache state to prepare for the case's datasets.
    repeat : int
        Run index.
    paths : dict of str to Path
        Dataset kind to path, for (at least) the kinds the case declares.
    cfg : RunConfig
        Shared settings.

    Returns
    -------
    dict
        Identity, status, ``residency_before``, timed-section counters
        (``wall_s``, ``cpu_s``, ``majflt``, ``minflt``, ``read_bytes``,
        ``write_bytes``, ``rchar``, ``wchar``), ``bytes_processed``,
        ``throughput_gbs``, peak RSS (``vmhwm_kib``, ``maxrss_kib``),
        ``rss_base_kib``, dirty-page maxima, cgroup figures and ``metrics``.
    """
    record: Record = {
        "case": spec.name,
        "group": spec.group,
        "peer": spec.peer,
        "cache": mode,
        "repeat": repeat,
        "mem_limit_bytes": spec.mem_limit,
    }
    data = {kind: paths[kind] for kind in spec.data}
    scratch = cfg.data_dir / "scratch" / f"{spec.name}-{mode}-{repeat}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    try:
        record["residency_before"] = prepare(data.values(), mode)
        with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
            result_file = Path(tmp) / "result.json"
            spec_file = Path(tmp) / "spec.json"
            spec_file.write_text(
                json.dumps(
                    {
                        "module": spec.module,
                        "case": spec.name,
                        "cache": mode,
                        "repeat": repeat,
                        "nbytes": cfg.nbytes,
                        "paths": {k: str(v) for k, v in data.items()},
                        "scratch": str(scratch),
                        "expected_sum": expected_sum(cfg.nbytes // 4),
                        "mem_limit": spec.mem_limit,
                        "result": str(result_file),
                    }
                )
            )
            argv = [sys.executable, "-c", _CHILD_CODE, str(BENCH_DIR), str(spec_file)]
            _launch(argv, spec, cfg, record)
            if result_file.exists():
                _record_from_report(record, json.loads(result_file.read_text()), spec, cfg)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return record


def _launch(argv: list[str], spec: CaseSpec, cfg: RunConfig, record: Record) -> None:
    """Start the child (under a cgroup if asked) and fill in status fields."""
    if spec.mem_limit is not None:
        cg = run_in_memory_cgroup(argv, spec.mem_limit, timeout=cfg.timeout)
        if not cg.available:
            record.update(status="skipped", error=cg.reason, returncode=None)
            return
        record.update(
            returncode=cg.returncode,
            status=_status(cg.returncode, cg.oom_killed, cg.timed_out),
            oom_kill_count=cg.oom_kill_count,
            cg_max_usage_bytes=cg.max_usage_bytes,
        )
        stderr = cg.stderr
    else:
        try:
            proc = subprocess.run(
                argv, capture_output=True, text=True, timeout=cfg.timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            record.update(returncode=None, status="timeout")
            stderr = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        else:
            record.update(returncode=proc.returncode, status=_status(proc.returncode, False, False))
            stderr = proc.stderr
    if record["status"] != "ok" and stderr.strip():
        record["stderr_tail"] = stderr.strip()[-2000:]


def run_all(
    plan: Sequence[tuple[CaseSpec, str]],
    paths: dict[str, Path],
    cfg: RunConfig,
    log: Callable[[str], None] = print,
) -> list[Record]:
    """Run every planned ``(case, mode)`` ``cfg.repeat`` times.

    Runs go round-robin (mode, then repeat, then case), so slow drift of the
    machine spreads over all cases instead of hitting one.

    Returns
    -------
    list of dict
        One record per run (see :func:`run_once`).
    """
    records: list[Record] = []
    for mode in CACHE_MODES:
        todo = [spec for spec, m in plan if m == mode]
        for rep in range(cfg.repeat):
            for spec in todo:
                rec = run_once(spec, mode, rep, paths, cfg)
                records.append(rec)
                log(_progress_line(rec, cfg.repeat))
    return records


def _progress_line(rec: Record, repeat: int) -> str:
    head = f"[{rec['cache']} {rec['repeat'] + 1}/{repeat}] {rec['case']}: {rec['status']}"
    if rec["status"] != "ok":
        return head
    parts = [head, f"{rec.get('wall_s') or 0:.3f} s"]
    if rec.get("throughput_gbs"):
        parts.append(f"{rec['throughput_gbs']:.2f} GB/s")
    if rec.get("vmhwm_kib") is not None:
        parts.append(f"peak RSS {rec['vmhwm_kib'] / 1024:.0f} MiB")
    if rec.get("read_bytes") is not None:
        parts.append(f"read {rec['read_bytes'] / 2**20:.0f} MiB")
    if rec.get("residency_before") is not None:
        parts.append(f"resident before {rec['residency_before']:.0%}")
    return ", ".join(parts)
