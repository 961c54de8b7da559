"""Smoke-run every example in ``examples/`` at a small size, each in its own process.

Examples are found by globbing, so a new example is covered as soon as it exists. Each is run
with ``--size``, ``--dir``, ``--budget`` and ``--threads`` where it accepts them (read from its
source), in a fresh temporary working directory, and must exit 0 and print its ``summary: ...`` line
(with the peak RSS).
"""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SMALL = {"--size": "16MiB", "--budget": "4MiB", "--threads": "2"}
#: Examples whose reductions keep a long axis: the budget counts their partial results (for
#: image_stats, per-pixel partial states of 512 x 512 frames: 36 MiB for std's count, shift,
#: mean and M2 in float64, the merged one and one per chunk in flight).
BUDGET = {"image_stats.py": "48MiB"}
CLEANS_UP = {"standardize.py", "pca.py", "image_stats.py", "rank_and_dedup.py"}
#: The convention every example follows: its last words are one line "summary: ..." that
#: states the result, the throughput and the peak RSS against the file size.
_SUMMARY = re.compile(r"^summary: .*peak RSS", re.MULTILINE)


def _has_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def examples() -> list[Path]:
    return sorted(p for p in EXAMPLES.glob("*.py") if not p.name.startswith("_"))


def small_args(script: Path, workdir: Path) -> list[str]:
    """The small-size flags this example accepts (it declares each as '--flag' in its source)."""
    source = script.read_text(encoding="utf8")
    args: list[str] = []
    for flag, value in SMALL.items():
        if flag == "--budget":
            value = BUDGET.get(script.name, value)
        if f'"{flag}"' in source or f"'{flag}'" in source:
            args += [flag, value]
    if '"--dir"' in source or "'--dir'" in source:
        args += ["--dir", str(workdir)]
    return args


def run_example(script: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    data = tmp_path / "data"
    data.mkdir()
    env = dict(os.environ, MPLBACKEND="Agg", TMPDIR=str(tmp_path), PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, str(script), *small_args(script, data)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240,
                          check=False)


def test_examples_exist() -> None:
    names = {p.name for p in examples()}
    assert {"standardize.py", "pca.py", "image_stats.py"} <= names


#: Each example's smoke run, for the tests that check more of the same run's output.
_RUNS: dict[Path, subprocess.CompletedProcess[str]] = {}


@pytest.mark.parametrize("script", examples(), ids=lambda p: p.stem)
def test_example_runs_small(script: Path, tmp_path: Path) -> None:
    proc = _RUNS[script] = run_example(script, tmp_path)
    assert proc.returncode == 0, (f"{script.name} failed (exit {proc.returncode}):\n"
                                  f"{proc.stdout}\n{proc.stderr}")
    assert _SUMMARY.search(proc.stdout), f"{script.name} printed no summary:\n{proc.stdout}"
    assert "Traceback" not in proc.stderr
    if script.name in CLEANS_UP:  # these write only to a temporary directory under --dir
        assert list((tmp_path / "data").iterdir()) == []
    if script.name == "image_stats.py" and _has_matplotlib():
        png = tmp_path / "image_stats.png"
        assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_examples_readme_lists_every_example() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf8")
    for script in examples():
        assert script.name in readme, f"examples/README.md does not mention {script.name}"


def test_standardize_accumulates_in_float64(tmp_path: Path) -> None:
    # Regression: float32 column means of data centred near +-100 were off by ~1e-4 of a
    # standard deviation (numpy's float32 summation), and the example's own check showed it.
    script = EXAMPLES / "standardize.py"
    proc = _RUNS.get(script) or run_example(script, tmp_path)  # the smoke run's, if it ran
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"mean 0 and std 1 to within (\S+)$", proc.stdout, re.MULTILINE)
    assert match, proc.stdout
    assert float(match.group(1)) < 1e-6


@pytest.mark.parametrize("script", sorted(CLEANS_UP))
@pytest.mark.parametrize("args", [["--size", "abc"], ["--budget", "-1"], ["--dir", "missing"]])
def test_example_bad_arguments_are_usage_errors(script: str, args: list[str], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # Run as __main__ in this process (argparse refuses before any work; any other exception
    # escapes and fails the test, as a traceback would in a subprocess).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(EXAMPLES / script), *args])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(EXAMPLES / script), run_name="__main__")
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err
    assert f"{script}: error: " in err
