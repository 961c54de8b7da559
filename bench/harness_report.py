"""Summaries of raw run records: medians, ratios, markdown, JSON and a plot."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness_core import CaseSpec, format_size

MEASURES = (
    "wall_s",
    "cpu_s",
    "throughput_gbs",
    "bytes_processed",
    "vmhwm_kib",
    "maxrss_kib",
    "rss_base_kib",
    "read_bytes",
    "write_bytes",
    "rchar",
    "wchar",
    "majflt",
    "minflt",
    "residency_before",
    "dirty_max_kib",
    "writeback_max_kib",
    "cg_max_usage_bytes",
)
"""Record fields summarised by median, min and max over successful runs."""

_MIN_READ_FOR_RATIO = 1 << 20  # below 1 MiB read by the baseline a read ratio is noise

Summary = dict[str, Any]


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def _median(row: Summary | None, measure: str) -> float | None:
    if row is None or measure not in row["stats"]:
        return None
    return float(row["stats"][measure]["median"])


def _ratio(a: float | None, b: float | None, floor: float = 0.0) -> float | None:
    if a is None or b is None or b <= floor:
        return None
    return a / b


def summarize(records: Sequence[dict[str, Any]], cases: dict[str, CaseSpec]) -> list[Summary]:
    """Aggregate records per ``(case, cache)`` and compute ratio columns.

    Parameters
    ----------
    records : sequence of dict
        Raw run records from ``harness_runner``.
    cases : dict of str to CaseSpec
        The registry (for groups, baselines and limits).

    Returns
    -------
    list of dict
        One row per ``(case, cache)`` in first-run order: ``stats`` (median,
        min, max per measure over ``ok`` runs), ``runs``, ``ok``, ``statuses``,
        ``ratios`` (``time``, ``rss``, ``read`` vs the baseline's medians in the
        same cache mode), ``limit_case``, ``limit_fraction`` and ``checksum_ok``.
    """
    keyed: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for rec in records:
        keyed.setdefault((rec["case"], rec["cache"]), []).append(rec)
    rows: dict[tuple[str, str], Summary] = {}
    for (name, cache), recs in keyed.items():
        ok = [r for r in recs if r["status"] == "ok"]
        stats = {}
        for m in MEASURES:
            values = [float(r[m]) for r in ok if r.get(m) is not None]
            if values:
                stats[m] = _stats(values)
        checks = [r["checksum_ok"] for r in ok if r.get("checksum_ok") is not None]
        statuses: dict[str, int] = {}
        for r in recs:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        spec = cases[name]
        rows[(name, cache)] = {
            "case": name,
            "group": spec.group,
            "peer": spec.peer,
            "cache": cache,
            "baseline": spec.baseline,
            "limit_case": spec.limit.get(cache),
            "mem_limit_bytes": spec.mem_limit,
            "runs": len(recs),
            "ok": len(ok),
            "statuses": statuses,
            "errors": sorted(
                {str(r["error"]).strip().splitlines()[-1] for r in recs if r.get("error")}
            ),
            "checksum_ok": all(checks) if checks else None,
            "stats": stats,
        }
    for (_, cache), row in rows.items():
        base = rows.get((row["baseline"], cache)) if row["baseline"] else None
        row["ratios"] = {
            "time": _ratio(_median(row, "wall_s"), _median(base, "wall_s")),
            "rss": _ratio(_median(row, "vmhwm_kib"), _median(base, "vmhwm_kib")),
            "read": _ratio(
                _median(row, "read_bytes"), _median(base, "read_bytes"), _MIN_READ_FOR_RATIO
            ),
        }
        limit = row["limit_case"]
        limit_row = rows.get((limit, cache)) or next(
            (r for (n, _), r in rows.items() if n == limit), None
        )
        row["limit_fraction"] = _ratio(
            _median(row, "throughput_gbs"), _median(limit_row, "throughput_gbs")
        )
        if limit_row is not None:
            row["limit_ratios"] = limit_ratios(keyed.get((row["case"], cache), []),
                                               keyed.get((limit, limit_row["cache"]), []))
    return list(rows.values())


def limit_ratios(runs: Sequence[dict[str, Any]],
                 limits: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """A case's throughput against its limit case's, counted two ways (issue 15).

    Per repeat: each ok run's throughput divided by that of the limit case's ok run of the
    same repeat (runs go round-robin, so the two were minutes apart at most); the median,
    min and max of those ratios, and how many reach 0.9. In aggregate: total bytes over total
    time of the case's ok runs, against the same for the limit case. ``None`` without a pair.
    """
    def ok(r: dict[str, Any]) -> bool:
        return bool(r["status"] == "ok" and r.get("wall_s") and r.get("bytes_processed"))

    mine = {r["repeat"]: r for r in runs if ok(r)}
    theirs = {r["repeat"]: r for r in limits if ok(r)}
    pairs = [(mine[k], theirs[k]) for k in sorted(mine.keys() & theirs.keys())]
    if not pairs:
        return None
    per = [(a["bytes_processed"] / a["wall_s"]) / (b["bytes_processed"] / b["wall_s"])
           for a, b in pairs]
    agg_a = sum(a["bytes_processed"] for a, _ in pairs) / sum(a["wall_s"] for a, _ in pairs)
    agg_b = sum(b["bytes_processed"] for _, b in pairs) / sum(b["wall_s"] for _, b in pairs)
    return {"repeats": len(pairs), "per_repeat": per, **_stats(per),
            "at_least_0_9": sum(1 for v in per if v >= 0.9), "aggregate": agg_a / agg_b}


def _fmt(value: float | None, spec: str = ".2f", scale: float = 1.0) -> str:
    return "-" if value is None else format(value / scale, spec)


def _cell(row: Summary, measure: str, spec: str = ".0f", scale: float = 1.0) -> str:
    return _fmt(_median(row, measure), spec, scale)


def _runs_cell(row: Summary) -> str:
    bad = {k: v for k, v in row["statuses"].items() if k != "ok"}
    extra = " ".join(f"{k}" for k in sorted(bad))
    return f"{row['ok']}/{row['runs']}" + (f" {extra}" if extra else "")


def to_markdown(rows: Sequence[Summary], title: str, preamble: Sequence[str]) -> str:
    """Render summary rows as markdown: one table per group.

    Parameters
    ----------
    rows : sequence of dict
        From :func:`summarize`.
    title : str
        Top heading.
    preamble : sequence of str
        Lines printed under the heading (command, machine, ...).

    Returns
    -------
    str
        The document.
    """
    out = [f"# {title}", "", *preamble, ""]
    header = (
        "| case | peer | cache | resident | time s (min-max) | GB/s | % limit | peak RSS MiB "
        "| read MiB | written MiB | x time | x RSS | x read | runs | check |"
    )
    notes: list[str] = []
    for group in dict.fromkeys(r["group"] for r in rows):
        out += [f"## {group}", "", header, "|" + "---|" * header.count(" | ") + "---|"]
        for r in (r for r in rows if r["group"] == group):
            time_s = r["stats"].get("wall_s")
            time_cell = (
                f"{time_s['median']:.3f} ({time_s['min']:.3f}-{time_s['max']:.3f})"
                if time_s
                else "-"
            )
            frac = r["limit_fraction"]
            check = {True: "ok", False: "FAIL", None: ""}[r["checksum_ok"]]
            out.append(
                "| "
                + " | ".join(
                    [
                        r["case"]
                        + (
                            f" ({format_size(r['mem_limit_bytes'])} cgroup)"
                            if r["mem_limit_bytes"]
                            else ""
                        ),
                        r["peer"],
                        r["cache"],
                        _cell(r, "residency_before", ".0%"),
                        time_cell,
                        _cell(r, "throughput_gbs", ".2f"),
                        "-" if frac is None else f"{frac:.0%}",
                        _cell(r, "vmhwm_kib", ".0f", 1024),
                        _cell(r, "read_bytes", ".0f", 2**20),
                        _cell(r, "write_bytes", ".0f", 2**20),
                        _fmt(r["ratios"]["time"]),
                        _fmt(r["ratios"]["rss"]),
                        _fmt(r["ratios"]["read"]),
                        _runs_cell(r),
                        check,
                    ]
                )
                + " |"
            )
            notes += [f"- `{r['case']}` [{r['cache']}]: {e}" for e in r["errors"]]
        out.append("")
    if notes:
        out += ["Failures and skips:", "", *notes, ""]
    paired = [r for r in rows if r.get("limit_ratios")]
    if paired:
        out += [
            "## limit ratios (per repeat and in aggregate)", "",
            "| case | cache | limit | per-repeat median (min-max) | repeats >= 0.9 | aggregate |",
            "|---|---|---|---|---|---|",
        ]
        for r in paired:
            lr = r["limit_ratios"]
            out.append(
                f"| {r['case']} | {r['cache']} | {r['limit_case']} | {lr['median']:.2f} "
                f"({lr['min']:.2f}-{lr['max']:.2f}) | {lr['at_least_0_9']}/{lr['repeats']} "
                f"| {lr['aggregate']:.2f} |"
            )
        out += [
            "",
            "Per repeat: each run's throughput over the limit case's run of the same repeat. "
            "Aggregate: total bytes over total time, against the same for the limit case.",
            "",
        ]
    out += [
        "Medians over successful runs. time/GB/s/read/written: the timed section; peak RSS: "
        "VmHWM of the run's own process; x: ratio to the group baseline's median (same cache "
        "mode); % limit: throughput over the named machine-limit case. See bench/README.md.",
        "",
    ]
    return "\n".join(out)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON."""
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")


def _spread(row: Summary, measure: str, scale: float) -> tuple[float, float, float]:
    """Return median, median - min and max - median of a measure, scaled (0 if absent)."""
    s = row["stats"].get(measure)
    if s is None:
        return 0.0, 0.0, 0.0
    return s["median"] / scale, (s["median"] - s["min"]) / scale, (s["max"] - s["median"]) / scale


def plot(rows: Sequence[Summary], path: Path, title: str) -> str | None:
    """Draw time, peak RSS and disk-read bars per ``(case, cache)`` to a PNG.

    Returns
    -------
    str or None
        A note when the plot was skipped (matplotlib missing, nothing to plot).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: plot skipped (pip install matplotlib)"
    shown = list(rows)
    if not any(r["ok"] for r in shown):
        return "no successful runs: plot skipped"
    labels = [
        f"{r['case']} [{r['cache']}]" + ("" if r["ok"] else f" ({_runs_cell(r)})") for r in shown
    ]
    colors = ["tab:blue" if r["cache"] == "cold" else "tab:orange" for r in shown]
    panels = (
        ("wall_s", "time (s)", 1.0),
        ("vmhwm_kib", "peak RSS (MiB)", 1024.0),
        ("read_bytes", "read from disk (MiB)", 2.0**20),
    )
    fig, axes = plt.subplots(1, len(panels), sharey=True, figsize=(13, 1.2 + 0.38 * len(shown)))
    ys = list(range(len(shown)))[::-1]
    for ax, (measure, label, scale) in zip(axes, panels, strict=True):
        spread = [_spread(r, measure, scale) for r in shown]
        med = [m for m, _, _ in spread]
        lo = [lo for _, lo, _ in spread]
        hi = [hi for _, _, hi in spread]
        ax.barh(ys, med, color=colors, xerr=[lo, hi], capsize=2)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(ys, labels, fontsize=8)
    fig.suptitle(
        f"{title}  (orange: warm cache, blue: cold; bars: median, whiskers: min-max)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
