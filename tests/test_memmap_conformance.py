"""bigarr.memmap against numpy.memmap, side by side: numpy's behaviour is the oracle.

Each case builds the same array with ``numpy.memmap`` and ``bigarr.memmap``, each in its own
directory holding the same files, and compares what numpy documents: values, shape, dtype,
order, ``mode``, ``filename``, ``offset``, the file's size afterwards (creation and extension),
the position a file object is left at, and, where numpy raises, the builtin exception class
(bigarr's error must be a bigarr error *and* an instance of it).

bigarr's deliberate differences are stated once, in ``DELIBERATE`` below, each with its reason;
every one of them is pinned by a case, so it is a decision, not an accident.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr.errors import BigArrError

IMPLS: dict[str, type[np.memmap[Any, Any]]] = {"numpy": np.memmap, "bigarr": bigarr.memmap}

#: bigarr's deliberate differences from numpy.memmap: case id -> the reason. The cases named
#: here check bigarr's documented answer instead of numpy's.
DELIBERATE: dict[str, str] = {
    "r-empty-file": "numpy raises because Python's mmap cannot map 0 bytes; bigarr maps "
                    "nothing and returns the empty array numpy would describe",
    "r-empty-shape0": "as r-empty-file",
    "c-empty-file": "as r-empty-file",
    "w+-hard-link": "'w+' puts a new file in place (rename) instead of truncating the old one, "
                    "so arrays still mapping the old file (here or in another process) keep "
                    "their pages instead of dying of SIGBUS; other hard links keep the old bytes",
    "object dtype": "numpy.memmap builds an object array over the file's bytes, which read as "
                    "pointers and crash the process (segfault); bigarr refuses with DtypeError",
    "pickle": "bigarr pickles a file reference (path, offset, shape, strides, mode), not the "
              "data: the unpickled array maps the same file; numpy pickles a detached copy",
}

DATA = np.arange(12, dtype="<f4")


@dataclass
class Case:
    """One constructor call, made on both sides."""

    id: str
    target: str
    """``str:NAME``, ``path:NAME``, ``tempfile``, ``tempfile+data``, ``named``,
    ``open:NAME:MODE``."""
    kwargs: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case("r-whole", "str:data.bin", {"dtype": "f4", "mode": "r"}),
    Case("r-default-dtype-mode", "str:data.bin"),
    Case("r-shape", "str:data.bin", {"dtype": "f4", "mode": "r", "shape": (3, 4)}),
    Case("r-shape-int", "str:data.bin", {"dtype": "f4", "mode": "r", "shape": 5}),
    Case("r-shape-list", "str:data.bin", {"dtype": "f4", "mode": "r", "shape": [2, 6]}),
    Case("r-shape-npint", "str:data.bin", {"dtype": "f4", "mode": "r", "shape": np.int64(5)}),
    Case("r-offset", "str:data.bin", {"dtype": "f4", "mode": "r", "offset": 8}),
    Case("r-offset-shape", "str:data.bin",
         {"dtype": "f4", "mode": "r", "offset": 4, "shape": (2,)}),
    Case("r-f8", "str:data.bin", {"dtype": "f8", "mode": "r"}),
    Case("r-structured", "str:data.bin", {"dtype": [("a", "<i4"), ("b", "<f4")], "mode": "r"}),
    Case("r-order-F", "str:data.bin", {"dtype": "f4", "mode": "r", "shape": (3, 4),
                                        "order": "F"}),
    Case("r-readonly", "str:data.bin", {"dtype": "f4", "mode": "readonly"}),
    Case("r-0d", "str:data.bin", {"dtype": "f4", "mode": "r", "shape": (), "offset": 8}),
    Case("r-subarray-dtype", "str:data.bin", {"dtype": ("<f4", (3,)), "mode": "r"}),
    Case("w+-order-F", "str:new.bin", {"dtype": "i2", "mode": "w+", "shape": (3, 2),
                                        "order": "F"}),
    Case("r+-big-endian", "str:data.bin", {"dtype": ">i4", "mode": "r+", "shape": (2, 3)}),
    Case("r-not-whole-items", "str:data.bin", {"dtype": "f8", "mode": "r", "offset": 4}),
    Case("r-too-short", "str:data.bin", {"dtype": "f4", "mode": "r", "shape": 100}),
    Case("r-offset-past-end", "str:data.bin",
         {"dtype": "f4", "mode": "r", "offset": 100, "shape": 1}),
    Case("r-missing", "str:missing.bin", {"dtype": "f4", "mode": "r"}),
    Case("r-path", "path:data.bin", {"dtype": "f4", "mode": "r"}),
    Case("bad-mode", "str:data.bin", {"dtype": "f4", "mode": "x"}),
    Case("c", "str:data.bin", {"dtype": "f4", "mode": "c", "shape": (3, 4)}),
    Case("c-copyonwrite", "str:data.bin", {"dtype": "f4", "mode": "copyonwrite"}),
    Case("r+", "str:data.bin", {"dtype": "f4", "mode": "r+", "shape": (3, 4)}),
    Case("r+-readwrite", "str:data.bin", {"dtype": "f4", "mode": "readwrite"}),
    Case("r+-extend", "str:data.bin", {"dtype": "f4", "mode": "r+", "shape": (20,)}),
    Case("r+-offset-extend", "str:data.bin",
         {"dtype": "f4", "mode": "r+", "offset": 100, "shape": 2}),
    Case("r+-empty-file-shape0", "str:empty.bin", {"dtype": "f4", "mode": "r+", "shape": (0,)}),
    Case("r+-missing", "str:missing.bin", {"dtype": "f4", "mode": "r+", "shape": 2}),
    Case("w+-new", "str:new.bin", {"dtype": "f8", "mode": "w+", "shape": (2, 3)}),
    Case("w+-existing", "str:data.bin", {"dtype": "f4", "mode": "w+", "shape": (2,)}),
    Case("w+-path", "path:new.bin", {"dtype": "f4", "mode": "w+", "shape": 3}),
    Case("w+-offset", "str:new.bin", {"dtype": "u1", "mode": "w+", "offset": 16, "shape": 4}),
    Case("w+-write", "str:new.bin", {"dtype": "f4", "mode": "write", "shape": 2}),
    Case("w+-no-shape", "str:new.bin", {"dtype": "f4", "mode": "w+"}),
    Case("w+-missing-dir", "str:nodir/new.bin", {"dtype": "f4", "mode": "w+", "shape": 2}),
    Case("w+-directory", "str:.", {"dtype": "f4", "mode": "w+", "shape": 2}),
    Case("w+-empty", "str:new.bin", {"dtype": "f4", "mode": "w+", "shape": (0, 3)}),
    Case("w+-symlink", "str:link.bin", {"dtype": "f4", "mode": "w+", "shape": (2,)}),
    Case("w+-hard-link", "str:data.bin", {"dtype": "f4", "mode": "w+", "shape": (2,)}),
    Case("r-empty-file", "str:empty.bin", {"dtype": "f4", "mode": "r"}),
    Case("r-empty-shape0", "str:empty.bin", {"dtype": "f4", "mode": "r", "shape": 0}),
    Case("c-empty-file", "str:empty.bin", {"dtype": "f4", "mode": "c"}),
    Case("tempfile-w+", "tempfile", {"dtype": "f4", "mode": "w+", "shape": (4,)}),
    Case("tempfile-r+-grow", "tempfile+data", {"dtype": "f4", "mode": "r+", "shape": 16}),
    Case("tempfile-r-buffered", "tempfile+data", {"dtype": "f4", "mode": "r"}),
    Case("tempfile-no-shape-w+", "tempfile", {"dtype": "f4", "mode": "w+"}),
    Case("named-tempfile-w+", "named", {"dtype": "f4", "mode": "w+", "shape": (4,)}),
    Case("open-w+b-r+", "open:new.bin:w+b", {"dtype": "f4", "mode": "r+", "shape": 4}),
    Case("open-w+b-w+", "open:new.bin:w+b", {"dtype": "i2", "mode": "w+", "shape": (2, 2)}),
    Case("open-r+b-r", "open:data.bin:r+b", {"dtype": "f4", "mode": "r"}),
    Case("open-rb-r", "open:data.bin:rb", {"dtype": "f4", "mode": "r", "shape": (2, 2)}),
    Case("open-rb-c", "open:data.bin:rb", {"dtype": "f4", "mode": "c"}),
    Case("open-rb-r+", "open:data.bin:rb", {"dtype": "f4", "mode": "r+"}),
]


@dataclass
class Side:
    """One implementation's directory and the objects to close after the case."""

    root: Path
    opened: list[Any] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)

    def target(self, spec: str) -> Any:
        kind, _, rest = spec.partition(":")
        if kind == "str":
            return str(self.root / rest)
        if kind == "path":
            return self.root / rest
        if kind in ("tempfile", "tempfile+data"):
            f = tempfile.TemporaryFile(dir=self.root)  # noqa: SIM115 - closed in close()
            if kind == "tempfile+data":
                f.write(DATA.tobytes())  # buffered: the constructor must flush it first
            self.opened.append(f)
            return f
        if kind == "named":
            f = tempfile.NamedTemporaryFile(dir=self.root)  # noqa: SIM115 - as above
            self.names[f.name] = "<named>"
            self.opened.append(f)
            return f
        name, _, mode = rest.partition(":")
        f = open(self.root / name, mode)  # noqa: SIM115 - closed in close()
        self.opened.append(f)
        return f

    def rel(self, filename: Any) -> Any:
        """``filename`` with this side's directory replaced, keeping its type."""
        if filename is None:
            return None
        text = self.names.get(os.fspath(filename), os.fspath(filename))
        text = text.replace(str(self.root), "<dir>")
        return (type(filename).__name__ if isinstance(filename, str) else "Path", text)

    def close(self) -> None:
        for f in self.opened:
            f.close()


def _setup(root: Path) -> Side:
    root.mkdir()
    (root / "data.bin").write_bytes(DATA.tobytes())
    (root / "empty.bin").write_bytes(b"")
    os.symlink("data.bin", root / "link.bin")
    return Side(root)


def _observe(impl: type[np.memmap[Any, Any]], side: Side, case: Case) -> dict[str, Any]:
    if case.id == "w+-hard-link":
        os.link(side.root / "data.bin", side.root / "other.bin")
    target = side.target(case.target)
    try:
        arr = impl(target, **case.kwargs)
    except Exception as exc:  # the class is the observation
        return {"error": exc}
    out = {
        "is_np_memmap": isinstance(arr, np.memmap),
        "shape": arr.shape,
        "dtype": arr.dtype,
        "values": np.array(arr).tobytes(),
        "mode": arr.mode,
        "filename": side.rel(arr.filename),
        "offset": arr.offset,
        "c_contiguous": arr.flags.c_contiguous,
        "f_contiguous": arr.flags.f_contiguous,
        "writeable": arr.flags.writeable,
    }
    del arr
    if hasattr(target, "read"):
        out["file_size"] = os.fstat(target.fileno()).st_size
        out["position"] = target.tell()
    files = sorted(p.name for p in side.root.iterdir() if not p.name.startswith("."))
    out["files"] = {side.names.get(str(side.root / n), n):
                    (os.path.islink(side.root / n), os.path.getsize(side.root / n))
                    for n in files}
    return out


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[dict[str, Side]]:
    made = {name: _setup(tmp_path / name) for name in IMPLS}
    yield made
    for s in made.values():
        s.close()


def _builtin(exc: BaseException) -> type[BaseException]:
    """The first builtin class in ``exc``'s MRO (numpy raises builtins, or io's)."""
    return next(c for c in type(exc).__mro__ if c.__module__ in ("builtins", "io"))


@pytest.mark.parametrize("case", [c for c in CASES if c.id not in DELIBERATE], ids=lambda c: c.id)
def test_constructor_matches_numpy(sides: dict[str, Side], case: Case) -> None:
    want = _observe(np.memmap, sides["numpy"], case)
    got = _observe(bigarr.memmap, sides["bigarr"], case)
    if "error" in want:
        assert "error" in got, f"numpy raised {want['error']!r}; bigarr returned {got}"
        assert isinstance(got["error"], BigArrError), repr(got["error"])
        assert isinstance(got["error"], _builtin(want["error"])), (want["error"], got["error"])
        return
    assert "error" not in got, f"numpy returned {want}; bigarr raised {got['error']!r}"
    assert got == want


def test_deliberate_empty_arrays_in_read_modes(sides: dict[str, Side]) -> None:
    for case in (c for c in CASES if c.id in ("r-empty-file", "r-empty-shape0", "c-empty-file")):
        want = _observe(np.memmap, sides["numpy"], case)
        assert isinstance(want["error"], ValueError)  # numpy: "cannot mmap an empty file"
        got = _observe(bigarr.memmap, sides["bigarr"], case)
        assert got["shape"] == (0,) and got["values"] == b"" and got["offset"] == 0
        assert got["mode"] == case.kwargs["mode"] and got["files"]["empty.bin"] == (False, 0)


def test_deliberate_w_plus_replaces_the_file_not_its_bytes(sides: dict[str, Side]) -> None:
    case = next(c for c in CASES if c.id == "w+-hard-link")
    want = _observe(np.memmap, sides["numpy"], case)
    got = _observe(bigarr.memmap, sides["bigarr"], case)
    assert got["files"]["data.bin"] == want["files"]["data.bin"] == (False, 8)
    assert want["files"]["other.bin"] == (False, 8)  # numpy truncated the shared inode
    assert got["files"]["other.bin"] == (False, 48)  # bigarr: the other link keeps its bytes
    assert {k: v for k, v in got.items() if k != "files"} \
        == {k: v for k, v in want.items() if k != "files"}


def test_w_plus_keeps_an_array_of_the_old_file_alive(tmp_path: Path) -> None:
    # The reason for the difference above: numpy's in-place truncation would make `old` fault
    # (SIGBUS) on its next read; bigarr's replacement leaves it its pages.
    (tmp_path / "d.bin").write_bytes(np.arange(4096, dtype="f4").tobytes())
    old = bigarr.memmap(tmp_path / "d.bin", "f4", "r")
    new = bigarr.memmap(tmp_path / "d.bin", "f4", "w+", shape=2)
    assert float(old[-1]) == 4095.0 and new.tolist() == [0.0, 0.0]


@pytest.fixture(params=list(IMPLS))
def impl(request: pytest.FixtureRequest) -> type[np.memmap[Any, Any]]:
    return IMPLS[request.param]


def _kind(x: Any, impl: type[Any]) -> str:
    if type(x) is impl:
        return "memmap"
    return type(x).__name__


def test_result_types_match_numpy(tmp_path: Path) -> None:
    def observe(impl: type[np.memmap[Any, Any]]) -> dict[str, Any]:
        path = tmp_path / f"{impl.__module__}.bin"
        path.write_bytes(DATA.tobytes())
        x = impl(path, dtype="f4", mode="r+", shape=(3, 4))
        results: dict[str, Callable[[], Any]] = {
            "slice": lambda: x[1:3], "row": lambda: x[1], "element": lambda: x[1, 2],
            "T": lambda: x.T, "reshape": lambda: x.reshape(-1), "ravel": lambda: x.ravel(),
            "ufunc": lambda: x + 1, "sqrt": lambda: np.sqrt(x), "fancy": lambda: x[[0, 2]],
            "mask": lambda: x[x > 3], "sum": lambda: x.sum(), "np.sum": lambda: np.sum(x),
            "sum0": lambda: x.sum(axis=0), "max": lambda: x.max(), "mean1": lambda: x.mean(1),
            "asarray": lambda: np.asarray(x), "copy": lambda: x.copy(),
            "astype": lambda: x.astype("f8"), "concat": lambda: np.concatenate([x, x]),
        }
        out: dict[str, Any] = {
            k: (_kind(r := f(), impl), getattr(r, "dtype", None), np.asarray(r).tolist())
            for k, f in results.items()
        }
        view, copied = x[1:], x.copy()
        out["view attrs"] = (view.filename == x.filename, view.offset, view.mode)
        out["copy attrs"] = (copied.filename, copied.offset, copied.mode)
        out["iadd"] = _kind(x.__iadd__(1), impl)
        return out

    assert observe(bigarr.memmap) == observe(np.memmap)


@pytest.mark.parametrize("mode", ["r+", "w+", "c", "r"])
def test_writes_flush_and_reopen_match_numpy(tmp_path: Path, mode: str) -> None:
    def observe(impl: type[np.memmap[Any, Any]]) -> tuple[Any, ...]:
        path = tmp_path / f"{impl.__module__}-{mode}.bin"
        path.write_bytes(DATA.tobytes())
        x = impl(path, dtype="f4", mode=mode, shape=(3, 4))
        try:
            x[1, 1] = -5
            wrote: Any = True
        except ValueError as exc:
            wrote = type(exc).__name__
        flushed = x.flush()
        x[1:].flush()  # a view flushes too
        seen = x.tolist()
        del x
        again = impl(path, dtype="f4", mode="r", shape=(3, 4))
        return wrote, flushed, seen, again.tolist(), np.fromfile(path, "f4").tolist()

    assert observe(bigarr.memmap) == observe(np.memmap)


def test_file_objects_may_be_closed_after_mapping(impl: type[np.memmap[Any, Any]]) -> None:
    with tempfile.TemporaryFile() as f:
        x = impl(f, dtype="i4", mode="w+", shape=(1024,))
    x[:] = 7  # the mapping outlives the file object, as with numpy
    assert int(x.sum()) == 7 * 1024 and x.filename is None


def test_pickling(tmp_path: Path, impl: type[np.memmap[Any, Any]]) -> None:
    path = tmp_path / "p.bin"
    path.write_bytes(DATA.tobytes())
    x = impl(path, dtype="f4", mode="r+", shape=(3, 4))
    back = pickle.loads(pickle.dumps(x))
    assert type(back) is impl and np.array_equal(back, x)  # both: an equal array of its type
    back[0, 0] = 99  # deliberate difference (DELIBERATE["pickle"]): what does it write to?
    if impl is np.memmap:
        assert back.filename is None and x[0, 0] == 0  # a detached copy
    else:
        assert back.filename == x.filename and x[0, 0] == 99  # the same file
        assert len(pickle.dumps(x)) < 600  # a reference, not the data


def test_unnamed_files_refuse_pickling_by_reference() -> None:
    with tempfile.TemporaryFile() as f:
        x = bigarr.memmap(f, dtype="f4", mode="w+", shape=(4,))
    with pytest.raises(bigarr.errors.PickleError_, match="no path"):
        pickle.dumps(x)
    assert pickle.loads(pickle.dumps(np.asarray(x).copy())).tolist() == [0.0] * 4


def test_deliberate_object_dtypes_are_refused(tmp_path: Path) -> None:
    (tmp_path / "d.bin").write_bytes(DATA.tobytes())
    with pytest.raises(bigarr.errors.DtypeError):  # not run with numpy: it would segfault
        bigarr.memmap(tmp_path / "d.bin", dtype=object, mode="r", shape=2)


def test_special_files_are_refused_not_opened_or_truncated(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for mode in ("r", "r+", "c", "w+"):  # numpy.memmap would block on the FIFO's open
        with pytest.raises(bigarr.errors.NotAFileError):
            bigarr.memmap(fifo, "u1", mode, shape=4)
    assert fifo.is_fifo()
    with pytest.raises(bigarr.errors.NotAFileError):
        bigarr.memmap(tmp_path, "u1", "r")


def test_bigarr_extras_hold_on_arrays_made_like_numpy(tmp_path: Path) -> None:
    x = bigarr.memmap(tmp_path / "e.bin", "f4", "w+", shape=(4, 4))
    x[:] = 1
    v = x[1:]
    with pytest.raises(bigarr.errors.MappingBusyError):
        x.close()
    del v
    x.close()  # flushes
    assert np.fromfile(tmp_path / "e.bin", "f4").sum() == 16
    with pytest.raises(bigarr.errors.ClosedError):
        x.sum()


def test_unnamed_files_support_bigarr_modes_locally_but_never_travel() -> None:
    with tempfile.TemporaryFile() as f:
        f.write(bytes(3 * 4096))
        x = bigarr.memmap(f, dtype="u1", mode="c")  # private mode: commit writes the file
        x[5000] = 7
        assert x.commit() == 4096 and not x.dirty()
        f.seek(5000)
        assert f.read(1) == b"\x07"
        pytest.importorskip("dask.array")
        with pytest.raises(bigarr.errors.ModeError, match="without a path"):
            bigarr.to_dask(bigarr.memmap(f, dtype="u1", mode="r"))
        x.close()


@pytest.mark.parametrize("mode", ["r", "r+", "w+"])
def test_unusable_paths_raise_bigarr_errors(tmp_path: Path, mode: str) -> None:
    (tmp_path / "file").write_bytes(b"x" * 8)
    os.symlink("loop", tmp_path / "loop")
    for bad in (tmp_path / "file" / "below", tmp_path / ("n" * 300), tmp_path / "loop"):
        with pytest.raises(BigArrError) as info:
            bigarr.memmap(bad, "u1", mode, shape=4)
        assert isinstance(info.value, OSError), repr(info.value)
