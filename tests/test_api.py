"""The public API's surface: names, module, docstrings, signatures, dir() and help() (issue 10)."""

from __future__ import annotations

import doctest
import inspect
import pickle
import pydoc
import types
import typing
from pathlib import Path
from typing import Any

import pytest

import bigarr
from bigarr import errors

PUBLIC = {name: getattr(bigarr, name) for name in bigarr.__all__}
CALLABLES = {n: o for n, o in PUBLIC.items() if callable(o)}
CLASSES = {n: o for n, o in PUBLIC.items() if isinstance(o, type)}


def _own_methods(cls: type) -> dict[str, Any]:
    """Public methods and properties a bigarr class defines itself (not numpy's)."""
    out = {}
    for name, attr in vars(cls).items():
        if name.startswith("_"):
            continue
        fn = attr.fget if isinstance(attr, property) else attr
        if isinstance(fn, (types.FunctionType, classmethod, staticmethod)):
            code = getattr(getattr(fn, "__func__", fn), "__code__", None)
            if code is not None and "bigarr" in code.co_filename:
                out[name] = attr if isinstance(attr, property) else getattr(fn, "__func__", fn)
    return out


def test_all_is_sorted_and_complete() -> None:
    assert list(bigarr.__all__) == sorted(bigarr.__all__)
    assert all(hasattr(bigarr, n) for n in bigarr.__all__)


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_public_names_report_module_bigarr(name: str) -> None:
    obj = CALLABLES[name]
    assert obj.__module__ == "bigarr"
    assert obj is getattr(bigarr, obj.__name__)  # what __module__ + __name__ names is this


def test_errors_stay_in_bigarr_errors() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert cls.__module__ == "bigarr.errors" and cls.__doc__, name


def test_classes_still_pickle_and_resolve_their_hints() -> None:
    for name, cls in CLASSES.items():
        assert pickle.loads(pickle.dumps(cls)) is cls, name
    assert typing.get_type_hints(bigarr.Chunk)["index"] is int
    assert "element_runs" in typing.get_type_hints(bigarr.DirtyRegions)


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_public_names_have_docstrings_of_their_own(name: str) -> None:
    doc = inspect.getdoc(CALLABLES[name]) or ""
    assert doc, f"{name} has no docstring"
    assert "bigarr._" not in doc, f"{name}'s docstring sends the reader to a private module"


def _methods() -> list[tuple[str, Any]]:
    return [(f"{c}.{m}", f) for c, cls in sorted(CLASSES.items())
            for m, f in sorted(_own_methods(cls).items())]


@pytest.mark.parametrize(("name", "method"), _methods(), ids=[n for n, _ in _methods()])
def test_public_methods_carry_their_own_docstrings(name: str, method: Any) -> None:
    doc = inspect.getdoc(method) or ""
    assert doc, f"{name} has no docstring"
    assert "see bigarr._" not in doc.lower() and "bigarr._" not in doc, name


MEMMAP_API = ("plan", "iter_chunks", "advise", "resident", "dirty", "commit", "discard",
              "scratch_bytes", "track_writes", "written", "flush_written", "close", "flush")


@pytest.mark.parametrize("name", MEMMAP_API)
def test_memmap_methods_document_parameters_returns_and_raises(name: str) -> None:
    method = getattr(bigarr.memmap, name)
    doc = inspect.getdoc(method) or ""
    params = [p for p in inspect.signature(method).parameters if p != "self"]
    for section in (["Parameters"] if params else []) + ["Raises"]:
        assert f"{section}\n--" in doc, f"memmap.{name} lacks a {section} section"
    for p in params:
        assert f"\n{p}\n" in doc, f"memmap.{name} does not document {p}"
    returns = inspect.signature(method).return_annotation
    if returns not in ("None", None):
        assert "Returns\n--" in doc, f"memmap.{name} lacks a Returns section"


# ``reduce_blocks`` returns what its ``combine`` returns (a TypeVar); the rest name a type.
@pytest.mark.parametrize("name", sorted(set(CALLABLES) - set(CLASSES)))
def test_public_signatures_do_not_return_any(name: str) -> None:
    returns = inspect.signature(CALLABLES[name]).return_annotation
    assert returns is not inspect.Signature.empty, f"{name} has no return annotation"
    assert str(returns).replace("typing.", "") != "Any", f"{name} returns Any"


def test_precise_return_types_of_the_named_offenders() -> None:
    hints = {n: typing.get_type_hints(getattr(bigarr, n)) for n in ("mean", "sum", "argmax")}
    for n, h in hints.items():
        assert h["return"] != Any, n
    assert "memmap" in inspect.signature(bigarr.map_blocks).return_annotation
    assert inspect.signature(bigarr.to_dask).return_annotation == "DaskArray"


def test_dir_shows_the_public_api_only() -> None:
    assert dir(bigarr) == sorted(bigarr.__all__)
    assert not any(n.startswith("_") and n != "__version__" for n in dir(bigarr))


def test_help_opens_with_an_overview() -> None:
    text = pydoc.render_doc(bigarr, renderer=pydoc.plaintext)
    doc = bigarr.__doc__ or ""
    name, description = text.split("NAME\n", 1)[1].split("DESCRIPTION\n", 1)
    assert name.strip() == f"bigarr - {doc.splitlines()[0]}"
    assert description.split("\n\n", 1)[0].split()[:4] == doc.split("\n\n")[1].split()[:4]
    for needle in ("Example", ">>> ", "Where things live", "bigarr.errors", "iter_chunks"):
        assert needle in doc
    assert "bigarr._" not in description  # the overview names no private module


def test_the_overview_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    parser = doctest.DocTestParser()
    test = parser.get_doctest(bigarr.__doc__ or "", {}, "bigarr", "bigarr/__init__.py", 0)
    assert len(test.examples) >= 4
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    result = runner.run(test)
    assert result.failed == 0
    assert (tmp_path / "root.npy").exists()
