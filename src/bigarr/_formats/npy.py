"""The file format: page-aligned ``.npy`` headers, read strictly and written atomically.

This module is the only place that reads or writes ``.npy`` header bytes. A bigarr file is an
ordinary NPY file (format versions 1.0-3.0, as specified in numpy's ``numpy.lib.format``)
whose header is padded so that the data starts on an ``align``-byte boundary::

    offset        size      content
    0             6         magic b"\\x93NUMPY"
    6             1         major version (1, 2 or 3)
    7             1         minor version (0)
    8             2 or 4    HEADER_LEN, little-endian: uint16 for 1.0, uint32 for 2.0 and 3.0
    10 or 12      HEADER_LEN  an ASCII (1.0, 2.0) or UTF-8 (3.0) Python dict literal with the keys
                            'descr', 'fortran_order' and 'shape', padded with spaces, ending "\\n"
    data_offset   nbytes    the array's bytes in C or Fortran order

``data_offset = prefix + HEADER_LEN`` is a multiple of ``align`` (default: the page size, never
less than 4096), which is also a multiple of numpy's own 64-byte alignment. numpy writes a 64- or
128-byte header, so its data never starts on a page; bigarr's does, which lets a chunk of rows be
mapped, advised and flushed without touching its neighbour's pages.

Why 4096 and 8192 stay loadable by plain numpy: ``np.load`` refuses headers longer than
``max_header_size=10000`` bytes. With 16 KiB pages (some arm64 machines) the default header is
16 KiB and ``np.load`` needs ``max_header_size=20000``; bigarr itself reads it either way.

Reading is strict because headers are untrusted input: any malformed byte raises
:class:`~bigarr.errors.HeaderError` (never another exception), and a data section shorter than
the header promises raises :class:`~bigarr.errors.TruncatedFileError` before anything is mapped.
"""

from __future__ import annotations

import ast
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npformat

from bigarr._os.geometry import align_up, default_alignment
from bigarr.errors import DtypeError, HeaderError, ShapeError, TruncatedFileError

__all__ = [
    "MAGIC",
    "MAX_DIMS",
    "MAX_HEADER_BYTES",
    "NpyHeader",
    "build_header",
    "check_dtype",
    "check_shape",
    "parse_header",
    "parse_order",
    "read_header",
    "rewrite_shape",
]

MAGIC = b"\x93NUMPY"
#: Largest header dictionary bigarr will parse. Real headers are under 10 kB (numpy's own
#: limit); anything far larger is corrupt or hostile, and literal_eval on it would be slow.
MAX_HEADER_BYTES = 1 << 20
#: numpy's NPY_MAXDIMS (64 since numpy 2.0): an array with more dimensions, its dtype's subarray
#: dimensions included, cannot be built, so such a shape is refused before anything is mapped.
MAX_DIMS = 64
_KEYS = {"descr", "fortran_order", "shape"}


@dataclass(frozen=True, slots=True)
class NpyHeader:
    """What an ``.npy`` header says about the array that follows it."""

    shape: tuple[int, ...]
    """Array shape."""
    dtype: np.dtype[Any]
    """Element type, already checked to be mappable."""
    fortran_order: bool
    """True when the data is laid out in Fortran (column-major) order."""
    data_offset: int
    """Byte offset of the first data byte in the file."""
    version: tuple[int, int]
    """NPY format version."""

    @property
    def nbytes(self) -> int:
        """Size of the data section in bytes."""
        return _count(self.shape) * self.dtype.itemsize

    @property
    def order(self) -> str:
        """``"F"`` or ``"C"``."""
        return "F" if self.fortran_order else "C"


def _count(shape: Iterable[int]) -> int:
    n = 1
    for dim in shape:
        n *= dim
    return n


def check_dtype(dtype: Any) -> np.dtype[Any]:
    """Normalise ``dtype`` and refuse types that cannot live in a mapped file.

    Raises
    ------
    DtypeError
        For object dtypes (pointers are meaningless on disk), structured types containing
        objects, and anything numpy cannot interpret as a dtype.
    """
    try:
        dt: np.dtype[Any] = np.dtype(dtype)
    except (TypeError, ValueError) as exc:
        raise DtypeError(f"Expected a numpy dtype. Got {dtype!r} ({exc}).") from None
    if dt.hasobject:
        raise DtypeError(
            f"Expected a dtype without Python objects. Got {dt}: object references cannot be "
            "stored in or mapped from a file; use fixed-size strings or numbers."
        )
    if dt.itemsize == 0 and dt.names is None and dt.kind in "SUV":
        raise DtypeError(f"Expected a sized dtype. Got {dt} with itemsize 0; use e.g. 'S16'.")
    if dt.kind == "T":  # StringDType keeps pointers to heap memory
        raise DtypeError(f"Expected a fixed-size dtype. Got {dt}; use fixed-size 'U' or 'S'.")
    return dt


def check_shape(shape: Any, dtype: np.dtype[Any]) -> tuple[int, ...]:
    """Normalise ``shape`` to a tuple of non-negative ints whose byte size fits an address space.

    Raises
    ------
    ShapeError
        For negative, non-integer or overflowing shapes, and for more than :data:`MAX_DIMS`
        dimensions (counting those of a subarray ``dtype``).
    """
    if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
        shape = (shape,)
    try:
        dims = tuple(shape)
    except TypeError:
        raise ShapeError(f"Expected a shape as a tuple of ints. Got {shape!r}.") from None
    out = []
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise ShapeError(f"Expected a shape of integers. Got {shape!r}.")
        if dim < 0:
            raise ShapeError(f"Expected non-negative dimensions. Got {shape!r}.")
        out.append(int(dim))
    if len(out) + dtype.ndim > MAX_DIMS:
        raise ShapeError(
            f"Expected at most {MAX_DIMS} dimensions (numpy's limit). Got {len(out)}"
            + (f" plus {dtype.ndim} of the dtype {dtype}" if dtype.ndim else "")
            + "; reshape the array to fewer dimensions."
        )
    # numpy refuses a shape whose *nonzero* dimensions times the itemsize overflow intp, even
    # when another dimension is 0 (so the array is empty): check what numpy checks.
    nbytes = _count(d for d in out if d) * max(dtype.itemsize, 1)
    if nbytes > np.iinfo(np.intp).max:
        empty = " (although it is empty)" if 0 in out else ""
        raise ShapeError(
            f"Shape {tuple(out)} of {dtype} spans {nbytes} bytes{empty}, more than this "
            f"platform can address ({np.iinfo(np.intp).max}); use smaller dimensions."
        )
    return tuple(out)


def parse_order(order: str) -> str:
    """Normalise a memory order to ``"C"`` or ``"F"`` (case-insensitive).

    Raises
    ------
    ShapeError
        For anything else.
    """
    if not isinstance(order, str) or order.upper() not in ("C", "F"):
        raise ShapeError(f"Expected order 'C' or 'F'. Got {order!r}.")
    return order.upper()


def _header_dict(shape: tuple[int, ...], dtype: np.dtype[Any], fortran_order: bool) -> str:
    descr = npformat.dtype_to_descr(dtype)
    return f"{{'descr': {descr!r}, 'fortran_order': {fortran_order}, 'shape': {shape!r}, }}"


def build_header(
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    fortran_order: bool = False,
    *,
    align: int | None = None,
    total: int | None = None,
) -> bytes:
    """Encode an ``.npy`` header whose length is a multiple of ``align``, or exactly ``total``.

    ``total`` is for rewriting the header of an existing file in place (the data must not move).

    Raises
    ------
    HeaderError
        If the header cannot fit in ``total`` bytes.
    """
    text = _header_dict(shape, dtype, fortran_order)
    try:
        encoded = text.encode("latin1")
        version = (1, 0)
    except UnicodeEncodeError:  # field names outside latin1 need format 3.0
        encoded, version = text.encode("utf8"), (3, 0)
    prefix = 10
    if total is None:
        alignment = align or default_alignment()
        total = align_up(prefix + len(encoded) + 1, alignment)
    if total - prefix > 0xFFFF or version == (3, 0):
        prefix, version = 12, (version[0] if version[0] == 3 else 2, 0)
    header_len = total - prefix
    if header_len < len(encoded) + 1:
        raise HeaderError(f"Header for shape {shape} needs {len(encoded) + 1} bytes; only "
                          f"{header_len} are available before the data.")
    body = encoded + b" " * (header_len - len(encoded) - 1) + b"\n"
    lenfmt = "<H" if prefix == 10 else "<I"
    return MAGIC + bytes(version) + struct.pack(lenfmt, header_len) + body


def parse_header(prefix: bytes) -> NpyHeader:
    """Decode the header at the start of ``prefix`` (the first bytes of a file).

    ``prefix`` must hold the whole header; the data section need not be present.

    Raises
    ------
    HeaderError
        For a wrong magic, an unknown version, a header longer than ``prefix`` or
        ``MAX_HEADER_BYTES``, or a header dict that is not exactly numpy's.
    DtypeError, ShapeError
        For a dtype or shape the header names that bigarr cannot map.
    """
    if len(prefix) < 10 or prefix[:6] != MAGIC:
        raise HeaderError("Expected a .npy file starting with b'\\x93NUMPY'. Got other bytes.")
    version = (prefix[6], prefix[7])
    if version == (1, 0):
        start, (hlen,) = 10, struct.unpack("<H", prefix[8:10])
    elif version in ((2, 0), (3, 0)):
        if len(prefix) < 12:
            raise HeaderError("Truncated .npy header: the length field is cut off.")
        start, (hlen,) = 12, struct.unpack("<I", prefix[8:12])
    else:
        raise HeaderError(f"Expected .npy format version 1.0, 2.0 or 3.0. Got {version}.")
    if hlen > MAX_HEADER_BYTES:
        raise HeaderError(
            f"Header claims {hlen} bytes, more than the {MAX_HEADER_BYTES} bigarr accepts."
        )
    if len(prefix) < start + hlen:
        raise HeaderError(
            f"Truncated .npy header: it claims {hlen} bytes but the file has "
            f"{max(0, len(prefix) - start)}."
        )
    raw = prefix[start : start + hlen]
    try:
        text = raw.decode("utf8" if version == (3, 0) else "latin1")
        meta = ast.literal_eval(text)
    except Exception as exc:  # SyntaxError, ValueError, MemoryError, RecursionError, ...
        raise HeaderError(f"Cannot parse the .npy header dict: {type(exc).__name__}.") from None
    if not isinstance(meta, dict) or set(meta) != _KEYS:
        raise HeaderError(f"Expected a header dict with keys {sorted(_KEYS)}. Got {text[:80]!r}.")
    if not isinstance(meta["fortran_order"], bool):
        raise HeaderError(f"Expected fortran_order True or False. Got {meta['fortran_order']!r}.")
    if not isinstance(meta["shape"], tuple):
        raise HeaderError(f"Expected the shape as a tuple. Got {meta['shape']!r}.")
    try:
        dtype = npformat.descr_to_dtype(meta["descr"])
    except Exception as exc:
        descr = meta["descr"]
        raise HeaderError(f"Unknown dtype descr {descr!r} ({type(exc).__name__}).") from None
    dtype = check_dtype(dtype)
    shape = check_shape(meta["shape"], dtype)
    return NpyHeader(shape, dtype, meta["fortran_order"], start + hlen, version)


def read_header(f: BinaryIO, file_size: int, *, name: str = "file") -> NpyHeader:
    """Read and validate the header of an open ``.npy`` file of ``file_size`` bytes.

    Raises
    ------
    HeaderError, DtypeError, ShapeError
        As :func:`parse_header`.
    TruncatedFileError
        If the file is shorter than header plus data.
    """
    f.seek(0)
    head = f.read(12)
    if len(head) < 10 or head[:6] != MAGIC:
        raise HeaderError(f"{name} is not a .npy file (it does not start with b'\\x93NUMPY').")
    if head[6] == 1:
        hlen = struct.unpack("<H", head[8:10])[0] + 10
    else:
        hlen = struct.unpack("<I", head[8:12])[0] + 12 if len(head) == 12 else 12
    f.seek(0)
    header = parse_header(f.read(min(hlen, MAX_HEADER_BYTES + 12)))
    need = header.data_offset + header.nbytes
    if file_size < need:
        raise TruncatedFileError(
            f"{name} is truncated: its header describes {header.nbytes} data bytes from offset "
            f"{header.data_offset} ({need} bytes in all), but the file has {file_size} bytes."
        )
    return header


def rewrite_shape(fd: int, header: NpyHeader, shape: tuple[int, ...]) -> NpyHeader:
    """Rewrite the shape in an existing header in place, keeping ``data_offset`` unchanged.

    The caller is responsible for durability ordering (data first, then the header).
    """
    raw = build_header(shape, header.dtype, header.fortran_order, total=header.data_offset)
    os.pwrite(fd, raw, 0)
    return NpyHeader(shape, header.dtype, header.fortran_order, header.data_offset,
                     (raw[6], raw[7]))
