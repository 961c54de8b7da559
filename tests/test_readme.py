"""Every code block in README.md works.

Fenced ``python`` blocks run in order, in one namespace (a README builds on its earlier
blocks), in a subprocess whose working directory is a fresh temporary directory. Shell blocks
(``bash``, ``sh``, ``shell``, ``console``) are not run (they install packages or take minutes),
but every ``bigarr`` / ``python -m bigarr`` command in them must parse with the real command
line parser (so the subcommands and flags exist), and every script they name must exist.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bigarr._cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_FENCE = re.compile(r"^(```+|~~~+)[ \t]*([\w+-]*)[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)
_SHELL = {"bash", "sh", "shell", "console", "zsh"}

_RUNNER = r"""
import json, sys, traceback
blocks = json.load(open(sys.argv[1], encoding="utf8"))
namespace = {"__name__": "__readme__"}
for line, code in blocks:
    try:
        exec(compile(code, f"README.md:{line}", "exec"), namespace)
    except BaseException:
        print(f"README.md python block at line {line} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
print(f"ran {len(blocks)} blocks")
"""


def blocks(language: set[str]) -> list[tuple[int, str]]:
    """(line number, code) of each fenced block whose info string is in ``language``."""
    text = README.read_text(encoding="utf8")
    out = []
    for match in _FENCE.finditer(text):
        if match.group(2).lower() in language:
            out.append((text.count("\n", 0, match.start()) + 2, match.group(3)))
    return out


def commands(code: str) -> list[list[str]]:
    """The simple commands of a shell block: prompts and comments stripped, split on && ; |."""
    out = []
    text = code.replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        try:
            tokens = list(lexer)
        except ValueError:  # unbalanced quotes: not a command we can check
            continue
        words: list[str] = []
        for token in [*tokens, ";"]:
            if token and set(token) <= set("&|;()<>"):
                while words and re.match(r"^\w+=", words[0]):  # VAR=value prefixes
                    words = words[1:]
                if words:
                    out.append(words)
                words = []
            else:
                words.append(token)
    return out


def bigarr_args(words: list[str]) -> list[str] | None:
    """The arguments after ``bigarr`` or ``python -m bigarr``; None for other commands."""
    if words[0] == "bigarr":
        return words[1:]
    if Path(words[0]).name.startswith("python") and words[1:3] == ["-m", "bigarr"]:
        return words[3:]
    return None


def test_readme_exists_with_code() -> None:
    assert blocks({"python", "py"}) or blocks(_SHELL), "README.md has no code blocks"


def test_readme_python_blocks_run(tmp_path: Path) -> None:
    code = blocks({"python", "py"})
    if not code:
        pytest.skip("README.md has no python blocks")
    spec = tmp_path / "blocks.json"
    spec.write_text(json.dumps(code), encoding="utf8")
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([sys.executable, "-c", _RUNNER, str(spec)], cwd=work,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_shell_commands_exist() -> None:
    parser = build_parser()
    checked = 0
    for line, code in blocks(_SHELL):
        for words in commands(code):
            args = bigarr_args(words)
            if args is not None:
                if args in ([], ["--help"], ["-h"]):
                    continue
                try:
                    parser.parse_args(args)
                except SystemExit as exc:
                    raise AssertionError(
                        f"README.md line {line}: '{' '.join(words)}' is not a valid bigarr "
                        "command"
                    ) from exc
                checked += 1
            elif Path(words[0]).name.startswith("python") and len(words) > 1:
                script = words[1]
                if script.endswith(".py"):
                    assert (ROOT / script).exists(), f"README.md line {line}: no {script}"
                    checked += 1
    if not checked:
        pytest.skip("README.md shell blocks name no bigarr commands or scripts")


def test_commands_parser_helper() -> None:
    words = commands("$ pip install -e . && python -m bigarr demo --size 64MiB\n"
                     "X=1 bigarr info a.npy  # shape; --cells 4 is not run\n"
                     "bigarr verify 'a b.npy' \\\n  --checksum | head")
    assert words == [["pip", "install", "-e", "."],
                     ["python", "-m", "bigarr", "demo", "--size", "64MiB"],
                     ["bigarr", "info", "a.npy"],
                     ["bigarr", "verify", "a b.npy", "--checksum"], ["head"]]
    assert bigarr_args(words[1]) == ["demo", "--size", "64MiB"]
    assert bigarr_args(words[0]) is None
