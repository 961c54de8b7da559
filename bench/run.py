"""Run the benchmark cases and write a markdown table, JSON and a plot.

Usage (from the repository root)::

    python bench/run.py [--size 2GiB] [--repeat 5] [--cache warm|cold|both]
                        [--only PATTERN ...] [--data-dir DIR] [--out NAME]
    python -m bench.run ...          # the same

Every ``bench/cases_*.py`` is imported; the selected cases (plus the
baselines and machine limits they refer to) run ``--repeat`` times per cache
mode, each run in a fresh interpreter.  Results go to
``bench/results/NAME.{md,json,png}``; the table is also printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import importlib
import shlex
import shutil
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

# The harness modules are imported by their top-level names: ``python bench/run.py``
# has this folder as sys.path[0], and ``python -m bench.run`` gets it from
# bench/__init__.py.
from harness_core import CACHE_MODES, CaseSpec, format_size, parse_size, registered_cases
from harness_data import dataset_path, ensure_dataset
from harness_machine import machine_info
from harness_proc import ru_maxrss_kib
from harness_report import plot, summarize, to_markdown, write_json
from harness_runner import RunConfig, plan_runs, run_all

BENCH_DIR = Path(__file__).resolve().parent


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def discover(bench_dir: Path = BENCH_DIR) -> dict[str, CaseSpec]:
    """Import every ``cases_*.py`` in ``bench_dir`` and return the registry.

    A module that fails to import is reported and skipped, so one broken
    module does not stop the others.
    """
    for path in sorted(bench_dir.glob("cases_*.py")):
        try:
            importlib.import_module(path.stem)
        except Exception:
            tb = traceback.format_exc()
            _log(f"warning: could not import {path.name}; its cases are skipped:\n{tb}")
    return registered_cases()


def select(cases: dict[str, CaseSpec], patterns: Sequence[str]) -> list[CaseSpec]:
    """Return cases whose name or group matches any pattern (all without patterns).

    A pattern is an ``fnmatch`` glob; one without glob characters also
    matches as a substring of the name.
    """
    if not patterns:
        return list(cases.values())

    def hit(spec: CaseSpec, pat: str) -> bool:
        if any(ch in pat for ch in "*?["):
            return fnmatch.fnmatch(spec.name, pat) or fnmatch.fnmatch(spec.group, pat)
        return pat in spec.name or pat == spec.group

    return [spec for spec in cases.values() if any(hit(spec, p) for p in patterns)]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--size", default="2GiB", help="data size of each dataset, e.g. 512MiB (default 2GiB)"
    )
    p.add_argument("--repeat", type=int, default=5, help="runs per case and cache mode (default 5)")
    p.add_argument(
        "--cache",
        choices=("warm", "cold", "both"),
        default="both",
        help="page-cache state (default both)",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="case name/group glob or substring; repeatable",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=BENCH_DIR / ".data",
        help="dataset folder (default bench/.data)",
    )
    p.add_argument(
        "--out",
        default="latest",
        help="result name: bench/results/NAME.{md,json,png} (default latest)",
    )
    p.add_argument(
        "--timeout", type=float, default=900.0, help="seconds before a run is killed (default 900)"
    )
    p.add_argument("--list", action="store_true", help="list the cases and exit")
    p.add_argument(
        "--clean-data", action="store_true", help="delete the data folder's datasets and exit"
    )
    return p


def _command(args: argparse.Namespace) -> str:
    """Return the command that reproduces a result (without machine-specific paths)."""
    parts = [
        "python",
        "bench/run.py",
        "--size",
        args.size,
        "--repeat",
        str(args.repeat),
        "--cache",
        args.cache,
    ]
    for pat in args.only:
        parts += ["--only", pat]
    return shlex.join([*parts, "--out", args.out])


def _preamble(command: str, machine: dict[str, object], nbytes: int, repeat: int) -> list[str]:
    mem = machine.get("mem_total_bytes")
    return [
        f"Command: `{command}`",
        "",
        f"Machine: {machine.get('cpu_model')}, {machine.get('cpu_affinity')} CPUs, "
        f"{format_size(float(mem)) if isinstance(mem, int) else '?'} RAM, "
        f"Linux {machine.get('kernel')}, "
        f"{machine.get('data_fs')} (read_ahead_kb {machine.get('read_ahead_kb')}), "
        f"Python {machine.get('python')}, numpy {machine.get('numpy')}.",
        f"Data: {format_size(nbytes)} of float32 per dataset; {repeat} runs per row.",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (1 if any run failed unexpectedly)."""
    args = _parser().parse_args(argv)
    nbytes = parse_size(args.size) // 4 * 4
    if nbytes <= 0 or args.repeat < 1:
        _parser().error("--size must be at least 4 bytes and --repeat at least 1")
    data_dir: Path = args.data_dir
    if args.clean_data:
        for child in data_dir.glob("f32-*"):
            shutil.rmtree(child) if child.is_dir() else child.unlink()
        _log(f"removed datasets from {data_dir}")
        return 0
    cases = discover()
    if args.list:
        for spec in cases.values():
            caches = ",".join(spec.caches)
            print(f"{spec.name:28} {spec.group:10} {spec.peer:16} {caches:10} {spec.description}")
        return 0
    selected = select(cases, args.only)
    if not selected:
        _log(f"no case matches {args.only}; see --list")
        return 2
    modes = CACHE_MODES if args.cache == "both" else (args.cache,)
    try:
        plan = plan_runs(selected, modes, cases)
    except KeyError as exc:
        _log(f"error: {exc.args[0]}")
        return 2
    extra = sorted({s.name for s, _ in plan} - {s.name for s in selected})
    if extra:
        _log(f"also running baselines/limits: {', '.join(extra)}")

    kinds = sorted({kind for spec, _ in plan for kind in spec.data})
    paths = {}
    for kind in kinds:
        _log(f"dataset {kind}: {dataset_path(data_dir, kind, nbytes).name} ...")
        paths[kind], built = ensure_dataset(data_dir, kind, nbytes)
        _log("  built" if built else "  cached")

    cfg = RunConfig(data_dir=data_dir, nbytes=nbytes, repeat=args.repeat, timeout=args.timeout)
    records = run_all(plan, paths, cfg, log=_log)

    machine = machine_info(data_dir)
    machine["launcher_maxrss_kib"] = ru_maxrss_kib()
    rows = summarize(records, cases)
    command = _command(args)
    title = f"Benchmark results: {args.out}"
    markdown = to_markdown(rows, title, _preamble(command, machine, nbytes, args.repeat))

    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"{args.out}.md").write_text(markdown)
    write_json(
        out_dir / f"{args.out}.json",
        {
            "name": args.out,
            "command": command,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "config": {
                "size_bytes": nbytes,
                "repeat": args.repeat,
                "caches": list(modes),
                "only": args.only,
            },
            "machine": machine,
            "cases": [_spec_dict(cases[name]) for name in dict.fromkeys(r["case"] for r in rows)],
            "summary": rows,
            "runs": records,
        },
    )
    note = plot(rows, out_dir / f"{args.out}.png", title)
    print(markdown)
    if note:
        print(f"note: {note}")
    _log(f"wrote bench/results/{args.out}.md, .json" + ("" if note else ", .png"))
    unexpected = [r for r in records if r["status"] not in ("ok", "oom", "skipped")]
    return 1 if unexpected else 0


def _spec_dict(spec: CaseSpec) -> dict[str, object]:
    return {
        "name": spec.name,
        "group": spec.group,
        "peer": spec.peer,
        "baseline": spec.baseline,
        "data": list(spec.data),
        "caches": list(spec.caches),
        "limit": dict(spec.limit),
        "mem_limit_bytes": spec.mem_limit,
        "sample_dirty": spec.sample_dirty,
        "params": dict(spec.params),
        "module": spec.module,
        "description": spec.description,
    }


if __name__ == "__main__":
    sys.exit(main())
