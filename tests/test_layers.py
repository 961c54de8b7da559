"""The package's layers (docs/design.md): each imports only the layers below it, with no cycles.

Layers, lowest first: ``errors``, ``_os``, ``_formats``, ``_plan``, ``_core``, ``_compute``,
``_interop``, ``_cli``. The one sanctioned upward reference is the array type's methods
(``bigarr._core.array``), which are the public face of the compute layer and import it when
called, never at import time.
"""

from __future__ import annotations

import ast
import functools
import pathlib

import bigarr

LAYERS = ["errors", "_os", "_formats", "_plan", "_core", "_compute", "_interop", "_cli"]
ROOT = pathlib.Path(bigarr.__file__).parent
UPWARD_ALLOWED = {"bigarr._core.array"}


@functools.cache  # parsed once for the three tests (none changes the trees)
def _modules() -> dict[str, ast.Module]:
    out = {}
    for f in sorted(ROOT.rglob("*.py")):
        name = ".".join(("bigarr", *f.relative_to(ROOT).with_suffix("").parts))
        out[name.removesuffix(".__init__")] = ast.parse(f.read_text(encoding="utf8"))
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "bigarr" or len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return LAYERS.index(parts[1])


def _imports(tree: ast.Module, *, top_only: bool) -> list[tuple[str, int]]:
    nodes = tree.body if top_only else list(ast.walk(tree))
    found = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("bigarr"):
            found += [(node.module, node.lineno)]
            found += [(f"{node.module}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("bigarr")]
    return found


def test_every_module_sits_in_a_layer() -> None:
    stray = [m for m in _modules() if m not in ("bigarr", "bigarr.__main__", "bigarr.linalg")
             and _layer(m) is None]
    assert stray == []


def test_no_module_imports_a_higher_layer() -> None:
    bad = []
    for name, tree in _modules().items():
        mine = _layer(name)
        if mine is None:
            continue
        for target, line in _imports(tree, top_only=name in UPWARD_ALLOWED):
            theirs = _layer(target)
            if theirs is not None and theirs > mine:
                bad.append(f"{name}:{line} imports {target}")
    assert bad == []


def test_no_import_cycles_at_import_time() -> None:
    mods = _modules()
    graph = {name: {t for t, _ in _imports(tree, top_only=True) if t in mods and t != name}
             for name, tree in mods.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []
