"""The ``bigarr`` command line (also ``python -m bigarr``): info, create, convert, verify, demo.

Every subcommand is a thin layer over the public API; this module only parses arguments, calls
the library and prints. Errors a user can cause (a missing file, a corrupt header, a bad shape,
a full disk) print one line, ``bigarr: error: ...``, and exit with status 1 (2 for bad command
line arguments); only unexpected failures show a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import stat
import sys
import warnings
import zlib
from collections.abc import Sequence
from typing import Any, NoReturn

import numpy as np

from bigarr._formats.npy import NpyHeader, check_dtype, read_header
from bigarr._os.geometry import PAGE_SIZE, align_up, format_bytes, parse_size
from bigarr.errors import (
    BigArrError,
    BudgetError,
    DtypeError,
    FileExistsError_,
    FileMissingError,
    FormatError,
    NotAFileError,
    ShapeError,
)

__all__ = ["main"]

_EXIT_ERROR = 1
_EXIT_USAGE = 2
_BAR_CELLS = 40


class _UsageError(Exception):
    """A command-line argument that does not make sense (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        sub = self.prog.split(" ", 1)[1] + " " if " " in self.prog else ""
        self.exit(_EXIT_USAGE, f"bigarr: error: {message} (see 'bigarr {sub}--help')\n")


# ---- argument parsing at the boundary ----------------------------------------------------------
def parse_shape(text: str) -> tuple[int, ...]:
    """Parse ``"1000,3"``, ``"1000x3"``, ``"(1000, 3)"`` or ``"1000"`` into a shape tuple.

    ``"()"`` is the shape of a 0-d array; an empty string is refused (it is almost always an
    unset shell variable, not a request for a scalar).
    """
    if not text.strip():
        raise _UsageError("expected a shape of integers like 1000,3; got an empty string")
    body = text.strip().strip("()[]").strip()
    parts = re.split(r"\s*[,xX]\s*", body) if body else []
    if parts and parts[-1] == "" and len(parts) > 1:
        parts.pop()  # a trailing comma, as in "(1000,)"
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        raise _UsageError(f"expected a shape of integers like 1000,3; got {text!r}") from None
    if any(d < 0 for d in dims):
        raise _UsageError(f"expected non-negative dimensions in the shape; got {text!r}")
    return dims


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except BigArrError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _path_arg(text: str) -> str:
    """A file argument; a NUL byte (which no file name can hold) is a usage error."""
    if "\x00" in text:
        raise argparse.ArgumentTypeError(f"expected a file path without NUL bytes; got {text!r}")
    return text


def _dtype_arg(text: str) -> np.dtype[Any]:
    try:
        return check_dtype(text)
    except BigArrError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


_BOOLS = {"0": False, "false": False, "1": True, "true": True}


def parse_fill(text: str, dtype: np.dtype[Any]) -> np.ndarray[Any, Any]:
    """Parse ``--fill`` as one value of ``dtype``, refusing what would not survive the cast.

    numpy's own cast is lenient in ways that write wrong data: any non-empty string is
    ``True`` (so ``"0"`` would fill a bool array with ``True``), and out-of-range numbers wrap,
    overflow to infinity or are truncated. Numbers are parsed as Python numbers first, and a
    value that does not fit ``dtype`` exactly (integers), finitely (floats) or whole (strings)
    is a usage error.
    """
    kind = dtype.kind
    try:
        if kind == "b":
            value = np.asarray(_BOOLS[text.strip().lower()], dtype)
        elif kind in "iu":
            value = np.asarray(int(text), dtype)  # OverflowError when out of range
        elif kind in "fc":
            number = complex(text) if kind == "c" else float(text)
            with np.errstate(over="raise"):  # 1e40 as float32 is an error, not inf
                value = np.asarray(number, dtype)
        else:
            value = np.asarray(text, dtype)
            if kind in "SU" and value.item() != (text.encode("ascii") if kind == "S" else text):
                raise ValueError("truncated")
    except (KeyError, TypeError, ValueError, OverflowError, FloatingPointError):
        hint = " (0, 1, true or false)" if kind == "b" else ""
        raise _UsageError(f"expected --fill as one {dtype} value{hint}; got {text!r}") from None
    return value


def _dtype_text(dtype: np.dtype[Any]) -> str:
    """The dtype as numpy spells it in a .npy header (``'<f4'``, or a structured list)."""
    return dtype.str if dtype.names is None else str(dtype.descr)


def _progress(args: argparse.Namespace) -> bool | None:
    """``None`` lets the library decide (on for a terminal); the flags force it on or off."""
    value: bool | None = args.progress
    return value


def _add_progress(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="always show progress bars")
    group.add_argument("--no-progress", dest="progress", action="store_false",
                       help="never show progress bars (default: shown on a terminal)")


# ---- shared helpers ----------------------------------------------------------------------------
def _regular(path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileMissingError(f"no such file: {path}") from None
    if not stat.S_ISREG(st.st_mode):
        raise NotAFileError(f"expected a regular file, got a directory or special file: {path}")
    return st


def _header(path: str) -> tuple[NpyHeader, os.stat_result]:
    st = _regular(path)
    with open(path, "rb") as f:
        try:
            return read_header(f, st.st_size, name=path), st
        except (FormatError, DtypeError, ShapeError) as exc:
            if path in str(exc):
                raise
            raise type(exc)(f"{path}: {exc}") from None


def _alignment(offset: int) -> int:
    """The largest power of two (up to 1 MiB) that divides ``offset``."""
    if offset == 0:
        return 1 << 20
    return min(offset & -offset, 1 << 20)


def _bar(fractions: Sequence[float]) -> str:
    """One character per cell: none, some, most or all of the cell's pages are resident."""
    chars = "░▒▓█"
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        chars.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        chars = ".:+#"
    out = []
    for f in fractions:
        out.append(chars[0] if f <= 0 else chars[3] if f >= 1 else chars[1 if f < 0.5 else 2])
    return "".join(out)


def _print(text: str = "") -> None:
    try:
        print(text, flush=True)
    except UnicodeEncodeError:  # a file name the terminal's encoding cannot show
        encoding = sys.stdout.encoding or "ascii"
        print(text.encode(encoding, "backslashreplace").decode(encoding), flush=True)


# ---- info --------------------------------------------------------------------------------------
def _cmd_info(args: argparse.Namespace) -> int:
    from bigarr._core.files import open as bigarr_open

    path = args.file
    if args.cells < 1:
        raise _UsageError(f"expected --cells of at least 1; got {args.cells}")
    if os.path.isdir(path) and _is_zarr(path):
        return _zarr_info(path, args)
    header, st = _header(path)
    disk = st.st_blocks * 512 if hasattr(st, "st_blocks") else st.st_size
    align = _alignment(header.data_offset)
    with bigarr_open(path, "r") as arr:
        res = _residency(arr, args.cells)
    resident = res.fraction if res.total_pages else 0.0
    cells = _fold(res.chunks, max(1, min(args.cells, res.total_pages)))
    info = {
        "file": path,
        "shape": list(header.shape),
        "dtype": _dtype_text(header.dtype),
        "order": header.order,
        "version": f"{header.version[0]}.{header.version[1]}",
        "data_offset": header.data_offset,
        "alignment": align,
        "page_aligned": header.data_offset % PAGE_SIZE == 0,
        "data_bytes": header.nbytes,
        "file_bytes": st.st_size,
        "disk_bytes": disk,
        "sparse": disk < st.st_size,
        "resident_fraction": resident,
        "resident_pages": res.resident_pages,
        "pages": res.total_pages,
        "resident_cells": cells,
    }
    if args.json:
        _print(json.dumps(info))
        return 0
    aligned = ("page-aligned" if info["page_aligned"]
               else "not page-aligned; 'bigarr convert' re-aligns it")
    _print(path)
    _print(f"  shape        {header.shape}")
    _print(f"  dtype        {header.dtype} ({info['dtype']})")
    _print(f"  order        {header.order}")
    _print(f"  format       .npy {info['version']}")
    _print(f"  data offset  {header.data_offset} bytes (aligned to {align}: {aligned})")
    _print(f"  data         {format_bytes(header.nbytes)} ({header.nbytes} bytes)")
    sparse = "sparse" if info["sparse"] else "not sparse"
    _print(f"  file         {format_bytes(st.st_size)} apparent, {format_bytes(disk)} on disk "
           f"({sparse})")
    _print(f"  resident     {resident:.1%} of {res.total_pages} pages in the page cache")
    if cells:
        _print(f"               |{_bar(cells)}|  (one cell per "
               f"{format_bytes(header.nbytes / len(cells))} chunk: {_bar([0.0])} none, "
               f"{_bar([0.4])} some, {_bar([0.6])} most, {_bar([1.0])} all resident)")
    return 0


def _residency(arr: Any, cells: int) -> Any:
    """``arr.resident()`` over a plan of about ``cells`` chunks (one bar cell per chunk)."""
    budget = max(PAGE_SIZE, align_up(-(-arr.nbytes // max(cells, 1)), PAGE_SIZE))
    for _ in range(64):
        try:
            return arr.resident(budget=budget)
        except BudgetError:  # rows that cannot be cut that finely: coarser cells
            budget *= 2
    return arr.resident(budget=arr.nbytes)


def _fold(chunks: Sequence[Any], cells: int) -> list[float]:
    """Per-chunk residency as at most ``cells`` fractions (neighbouring chunks pooled)."""
    if len(chunks) <= cells:
        return [c.fraction for c in chunks]
    edges = np.linspace(0, len(chunks), cells + 1).astype(np.int64)
    out = []
    for a, b in itertools.pairwise(edges):
        total = sum(c.total_pages for c in chunks[a:b])
        out.append(sum(c.resident_pages for c in chunks[a:b]) / total if total else 1.0)
    return out


def _is_zarr(path: str) -> bool:
    return any(os.path.exists(os.path.join(path, name)) for name in ("zarr.json", ".zarray"))


def _zarr_info(path: str, args: argparse.Namespace) -> int:
    from bigarr._interop.zarr import _open_zarr, check_zarr_complete
    from bigarr.errors import IncompleteOutputError, IncompleteOutputWarning

    z = _open_zarr(path)  # a corrupt zarr.json is a FormatError naming the path
    try:
        check_zarr_complete(z, path)
        complete = True
    except IncompleteOutputError as exc:  # shown, like an interrupted .npy output, as a warning
        warnings.warn(str(exc), IncompleteOutputWarning, stacklevel=1)
        complete = False
    info = {"file": path, "format": "zarr", "shape": list(z.shape), "dtype": str(z.dtype),
            "chunks": list(z.chunks), "complete": complete}
    if args.json:
        _print(json.dumps(info))
        return 0
    _print(path)
    _print("  format       zarr array")
    _print(f"  shape        {tuple(z.shape)}")
    _print(f"  dtype        {z.dtype}")
    _print(f"  chunks       {tuple(z.chunks)}")
    if not complete:
        _print("  complete     no: a bigarr run stopped while writing it")
    return 0


# ---- create ------------------------------------------------------------------------------------
def _cmd_create(args: argparse.Namespace) -> int:
    from bigarr._core.files import create, file_path
    from bigarr._os.paths import check_output

    shape = parse_shape(args.shape)
    dtype = args.dtype
    fill = None if args.fill is None else parse_fill(args.fill, dtype)
    try:  # the library's one rule for what --overwrite may replace (never a device or link)
        check_output(file_path(args.file), args.overwrite)
    except FileExistsError_:
        raise FileExistsError_(f"{args.file} exists; pass --overwrite to replace it") from None
    with create(args.file, shape, dtype, fill=fill, order=args.order,
                overwrite=args.overwrite) as arr:
        header, _st = _header(str(arr.filename))
    _print(f"created {args.file}: shape {header.shape} {header.dtype}, order {header.order}, "
           f"{format_bytes(header.nbytes)} of data at offset {header.data_offset}")
    return 0


# ---- verify ------------------------------------------------------------------------------------
class _Crc32:
    """zlib.crc32 behind hashlib's ``update``/``hexdigest`` interface."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: Any) -> None:
        self.value = zlib.crc32(data, self.value)

    def hexdigest(self) -> str:
        return f"{self.value:08x}"


_CHECKSUMS = ("crc32", "blake2b")


def _hasher(name: str) -> Any:
    import hashlib

    if name == "crc32":
        return _Crc32()
    return hashlib.blake2b(digest_size=16)


def _verify_args(args: argparse.Namespace) -> None:
    """Normalise ``verify``'s FILE and ``--checksum [ALGORITHM]`` in place.

    ``--checksum`` takes an optional value, so in ``bigarr verify --checksum data.npy`` argparse
    hands the file name to ``--checksum``; a value that is not an algorithm, with no FILE
    given, is the file.
    """
    if args.checksum is not None and args.checksum not in _CHECKSUMS:
        if args.file is not None:
            raise _UsageError(f"argument --checksum: invalid choice: {args.checksum!r} (choose "
                              f"from {', '.join(_CHECKSUMS)})")
        args.file, args.checksum = args.checksum, _CHECKSUMS[0]
    if args.file is None:
        raise _UsageError("the following arguments are required: file")
    try:
        _path_arg(args.file)
    except argparse.ArgumentTypeError as exc:
        raise _UsageError(str(exc)) from None


def _data_bytes(view: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The view's bytes in file order, as a flat uint8 array (no copy for a contiguous view)."""
    if view.flags.c_contiguous:
        flat = view.reshape(-1)
    elif view.flags.f_contiguous:
        flat = view.T.reshape(-1)
    else:  # pragma: no cover - chunks of a mapped array are contiguous
        flat = np.ascontiguousarray(view).reshape(-1)
    return flat.view(np.uint8)


def _cmd_verify(args: argparse.Namespace) -> int:
    from bigarr._core.files import open as bigarr_open
    from bigarr._formats.journal import check_complete

    _verify_args(args)
    if os.path.isdir(args.file) and _is_zarr(args.file):
        return _verify_zarr(args)
    header, st = _header(args.file)
    if not args.force:
        check_complete(args.file)  # an in-place output whose run was interrupted
    need = header.data_offset + header.nbytes
    extra = st.st_size - need
    summary = {
        "file": args.file,
        "ok": True,
        "shape": list(header.shape),
        "dtype": _dtype_text(header.dtype),
        "order": header.order,
        "data_offset": header.data_offset,
        "data_bytes": header.nbytes,
        "file_bytes": st.st_size,
        "trailing_bytes": extra,
    }
    rows: list[dict[str, Any]] = []
    if args.checksum:
        whole = _hasher(args.checksum)
        with bigarr_open(args.file, "r") as arr:
            for chunk, view in arr.iter_chunks(budget=args.budget, progress=_progress(args)):
                data = _data_bytes(view)
                h = _hasher(args.checksum)
                h.update(data)
                whole.update(data)
                rows.append({"chunk": len(rows), "rows": [chunk.rows.start, chunk.rows.stop],
                             "bytes": int(data.size), args.checksum: h.hexdigest()})
                del data, view
        summary["checksum"] = args.checksum
        summary["chunks"] = rows
        summary[args.checksum] = whole.hexdigest()
    if args.json:
        _print(json.dumps(summary))
        return 0
    note = f"; {extra} bytes after the data (preallocated room)" if extra else ""
    _print(f"{args.file}: OK - header and size agree: shape {header.shape} {header.dtype} "
           f"({header.order} order), {header.nbytes} data bytes at offset {header.data_offset}, "
           f"file {st.st_size} bytes{note}")
    if args.checksum:
        width = max([len(f"{r['rows'][0]}:{r['rows'][1]}") for r in rows], default=4)
        _print(f"{'chunk':>6}  {'rows':<{width}}  {'bytes':>12}  {args.checksum}")
        for r in rows:
            span = f"{r['rows'][0]}:{r['rows'][1]}"
            _print(f"{r['chunk']:>6}  {span:<{width}}  {r['bytes']:>12}  {r[args.checksum]}")
        _print(f"{'all':>6}  {'':<{width}}  {header.nbytes:>12}  {summary[args.checksum]}")
    return 0


def _verify_zarr(args: argparse.Namespace) -> int:
    """``verify`` of a zarr array: its metadata opens and bigarr's completion marker is set."""
    from bigarr._interop.zarr import _open_zarr, check_zarr_complete

    if args.checksum:
        raise _UsageError("--checksum reads .npy files; convert the zarr array first")
    z = _open_zarr(args.file)
    if not args.force:
        check_zarr_complete(z, args.file)
    summary = {"file": args.file, "ok": True, "format": "zarr", "shape": list(z.shape),
               "dtype": str(z.dtype), "chunks": list(z.chunks)}
    if args.json:
        _print(json.dumps(summary))
        return 0
    _print(f"{args.file}: OK - zarr array of shape {tuple(z.shape)} {z.dtype}, chunks "
           f"{tuple(z.chunks)}; not marked incomplete by an interrupted bigarr run")
    return 0


# ---- convert -----------------------------------------------------------------------------------
def _source_kind(args: argparse.Namespace) -> str:
    """``"zarr"``, ``"npy"`` or ``"raw"``: a zarr directory, a .npy file, or --dtype given."""
    src = args.src
    if os.path.isdir(src):
        if _is_zarr(src):
            return "zarr"
        raise NotAFileError(f"{src} is a directory but not a zarr array (no zarr.json or .zarray)")
    _regular(src)
    if args.dtype is not None:
        return "raw"
    with open(src, "rb") as f:
        if f.read(6) == b"\x93NUMPY":
            return "npy"
    raise _UsageError(f"{src} is neither a .npy file nor a zarr array; for a headerless file "
                      "pass --dtype (and --shape, --offset)")


def _cmd_convert(args: argparse.Namespace) -> int:
    kind = _source_kind(args)
    to = args.to or ("zarr" if args.dst.rstrip("/\\").endswith(".zarr") else "npy")
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        raise _UsageError("SRC and DST are the same path; convert writes a new file")
    if kind != "raw" and (args.shape is not None or args.offset):
        raise _UsageError("--shape and --offset describe a raw SRC; pass --dtype too")
    if kind == "zarr" and args.dtype is not None:
        raise _UsageError("--dtype describes a raw SRC, but SRC is a zarr array")
    if to != "zarr" and args.chunks is not None:
        raise _UsageError("--chunks is the chunk shape of a zarr DST; name DST *.zarr or pass "
                          "--to zarr")
    from bigarr._core.files import file_path
    from bigarr._os.paths import check_output

    try:  # the library's one rule for what --overwrite may replace (never a device or group)
        existing = check_output(file_path(args.dst), args.overwrite, zarr=to == "zarr")
    except FileExistsError_:
        raise FileExistsError_(f"{args.dst} exists; pass --overwrite to replace it") from None
    fresh = not os.path.lexists(args.dst)
    try:
        return _convert(args, kind, to)
    except BaseException as exc:
        if to == "zarr" and existing == "nothing" and os.path.isdir(args.dst):
            shutil.rmtree(args.dst, ignore_errors=True)  # chunks of a run that did not finish
            if not fresh:
                os.mkdir(args.dst)  # it was an empty directory: leave it as it was
        if (isinstance(exc, OSError) and not isinstance(exc, BigArrError) and exc.strerror
                and exc.filename is None):
            exc.filename = args.dst  # e.g. ENOSPC from zarr's writes names no file
            # (a bigarr error's message names its file already: a filename would turn its
            # str() into "[Errno 28] ...: 'path'")
        raise


def _convert(args: argparse.Namespace, kind: str, to: str) -> int:
    import time

    from bigarr._core import files as _files
    from bigarr._formats.journal import check_complete

    progress = _progress(args)
    started = time.perf_counter()
    if kind == "zarr":
        if to == "zarr":
            raise _UsageError("SRC is already a zarr array; convert it to .npy")
        from bigarr._interop.zarr import from_zarr

        with from_zarr(args.src, args.dst, progress=progress, budget=args.budget,
                       overwrite=args.overwrite, force=args.force) as out:
            shape, dtype, nbytes = out.shape, out.dtype, out.nbytes
    else:
        if kind == "raw":
            shape_arg = None if args.shape is None else parse_shape(args.shape)
            src = _files.open_raw(args.src, args.dtype, shape_arg, offset=args.offset,
                                  order=args.order)
        else:
            if not args.force:
                check_complete(args.src)  # a copy of half-written data would look complete
            src = _files.open(args.src, "r")
        try:
            shape, dtype, nbytes = src.shape, src.dtype, src.nbytes
            if to == "zarr":
                _to_zarr(src, args, progress)
            else:
                _copy_npy(src, args, progress)
        finally:
            # force: a failed run's traceback may still hold views of the source; we are done.
            src.close(force=True)
    seconds = max(time.perf_counter() - started, 1e-9)
    _print(f"converted {args.src} ({kind}) -> {args.dst} ({to}): shape {tuple(shape)} {dtype}, "
           f"{format_bytes(nbytes)} in {seconds:.2f} s ({format_bytes(nbytes / seconds)}/s)")
    return 0


def _to_zarr(src: Any, args: argparse.Namespace, progress: bool | None) -> None:
    from bigarr._interop.zarr import to_zarr

    chunks = None if args.chunks is None else parse_shape(args.chunks)
    if chunks is not None and (len(chunks) != src.ndim or 0 in chunks):
        raise _UsageError(f"expected --chunks of {src.ndim} positive integers for SRC of "
                          f"shape {tuple(src.shape)}; got {args.chunks!r}")
    to_zarr(src, args.dst, chunks=chunks, progress=progress, budget=args.budget,
            overwrite=args.overwrite)


def _copy_npy(src: Any, args: argparse.Namespace, progress: bool | None) -> None:
    """Stream ``src`` into a new page-aligned .npy file with bounded memory."""
    from bigarr._compute.mapblocks import map_blocks

    order = "F" if src.flags.f_contiguous and not src.flags.c_contiguous else "C"
    out = map_blocks(np.copy, src, out=args.dst, dtype=src.dtype, budget=args.budget,
                     progress=progress, order=order, overwrite=args.overwrite)
    out.close()


# ---- demo --------------------------------------------------------------------------------------
def _cmd_demo(args: argparse.Namespace) -> int:
    from bigarr._cli.demo import run_demo

    if args.threads < 1:
        raise _UsageError(f"expected --threads of at least 1; got {args.threads}")
    if args.size < 1 << 16:
        raise _UsageError(f"expected --size of at least 64KiB; got {args.size} bytes")
    return run_demo(size=args.size, directory=args.dir, keep=args.keep, budget=args.budget,
                    threads=args.threads, progress=_progress(args))


# ---- the parser --------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The ``bigarr`` argument parser."""
    parser = _Parser(prog="bigarr", description="Memory-mapped numpy arrays for data far "
                     "larger than RAM: inspect, create, convert and verify .npy files.")
    from bigarr import __version__
    from bigarr._compute import native

    kernels = (f"native ({native.build} build)" if native.available()
               else "numpy (no native build, or BIGARR_NATIVE=0)")
    parser.add_argument("--version", action="version",
                        version=f"bigarr {__version__}; reduction kernels: {kernels}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)

    p = sub.add_parser("info", help="shape, dtype, alignment, size on disk, page-cache residency")
    p.add_argument("file", type=_path_arg, help=".npy file (or a zarr array directory)")
    p.add_argument("--cells", type=int, default=_BAR_CELLS,
                   help=f"width of the residency bar, in characters (default {_BAR_CELLS})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("create", help="create a page-aligned .npy file, preallocated on disk")
    p.add_argument("file", type=_path_arg, help="the new .npy file")
    p.add_argument("--shape", required=True, help="e.g. 1000,3 or 1000x3; () for a 0-d array")
    p.add_argument("--dtype", type=_dtype_arg, default=np.dtype("f8"), help="e.g. f4 (default f8)")
    p.add_argument("--fill", help="value of every element, e.g. 1.5, or 0, 1, true, false for "
                   "bool; write --fill=-inf for values like -inf or -1e5 (default zeros)")
    p.add_argument("--order", choices=("C", "F"), default="C", type=str.upper,
                   help="memory order: C (row-major, default) or F (column-major)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.set_defaults(func=_cmd_create)

    p = sub.add_parser("verify", help="check that header and size agree (or that a zarr "
                       "array is complete); per-chunk checksums")
    p.add_argument("file", nargs="?", type=_path_arg,
                   help=".npy file, or a zarr array directory")
    p.add_argument("--checksum", nargs="?", const=_CHECKSUMS[0], metavar="{crc32,blake2b}",
                   help="checksum each chunk (default algorithm crc32)")
    p.add_argument("--budget", type=_size_arg, default=parse_size("64MiB"),
                   help="chunk size for checksums (default 64MiB)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--force", action="store_true", help="check a file that an interrupted "
                   "run left incomplete instead of failing on it")
    _add_progress(p)
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("convert", help="npy <-> zarr, raw -> npy, numpy alignment -> page "
                       "alignment (streamed, bounded memory)")
    p.add_argument("src", type=_path_arg,
                   help=".npy file, zarr array directory, or raw file (with --dtype)")
    p.add_argument("dst", type=_path_arg, help="output: .npy file, or a zarr directory (name "
                   "ends in .zarr or --to zarr)")
    p.add_argument("--to", choices=("npy", "zarr"), help="output format (default: from the name)")
    p.add_argument("--dtype", type=_dtype_arg, help="read SRC as a headerless raw file of this "
                   "dtype")
    p.add_argument("--shape", help="raw SRC shape, e.g. 1000,3 (default: 1-D, to the end)")
    p.add_argument("--offset", type=int, default=0, help="raw SRC data offset in bytes")
    p.add_argument("--order", choices=("C", "F"), default="C", type=str.upper,
                   help="raw SRC memory order")
    p.add_argument("--chunks", help="zarr output chunk shape, e.g. 65536,3")
    p.add_argument("--budget", type=_size_arg, default=parse_size("256MiB"),
                   help="memory budget for streaming (default 256MiB)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DST (a "
                   "regular file, or a zarr array; never a directory, group or device)")
    p.add_argument("--force", action="store_true", help="convert a SRC that an interrupted "
                   "run left incomplete (refused otherwise)")
    _add_progress(p)
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("demo", help="generate a dataset, run a pipeline, compare with "
                       "numpy.memmap (time and peak RSS)")
    p.add_argument("--size", type=_size_arg, default=parse_size("2GiB"),
                   help="dataset size (default 2GiB)")
    p.add_argument("--dir", type=_path_arg,
                   help="where to write the data (default: a new temporary directory)")
    p.add_argument("--keep", action="store_true", help="keep the generated files")
    p.add_argument("--budget", type=_size_arg, default=parse_size("256MiB"),
                   help="bigarr's memory budget (default 256MiB)")
    p.add_argument("--threads", type=int, default=2, help="bigarr's threads (default 2)")
    _add_progress(p)
    p.set_defaults(func=_cmd_demo)
    return parser


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings as one ``bigarr: warning: ...`` line, without the source line numpy-style."""
    print(f"bigarr: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except _UsageError as exc:
        print(f"bigarr: error: {exc}", file=sys.stderr)
        return _EXIT_USAGE
    except (BigArrError, OSError) as exc:
        if isinstance(exc, BudgetError) and "budget" in vars(args):
            print(f"bigarr: error: {exc} (see --budget)", file=sys.stderr)
            return _EXIT_ERROR
        if isinstance(exc, BrokenPipeError):
            with contextlib.suppress(OSError):
                sys.stdout.close()
            return _EXIT_ERROR
        message = exc.strerror if isinstance(exc, OSError) and not isinstance(
            exc, BigArrError) and exc.strerror else str(exc)
        if isinstance(exc, OSError) and not isinstance(exc, BigArrError) and exc.filename:
            message = f"{message}: {exc.filename}"
        print(f"bigarr: error: {message}", file=sys.stderr)
        return _EXIT_ERROR
    except KeyboardInterrupt:
        print("bigarr: interrupted", file=sys.stderr)
        return 130
