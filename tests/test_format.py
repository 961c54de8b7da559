"""The .npy header reader and writer, including fuzzing with random and mutated bytes."""

from __future__ import annotations

import contextlib
import io
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bigarr
from bigarr import errors
from bigarr._formats.npy import MAGIC, build_header, check_shape, parse_header, read_header


@pytest.mark.parametrize("align", [64, 4096, 8192, 65536, 1 << 17])
@pytest.mark.parametrize("dtype", ["<f4", ">i8", "u1", "c16", [("a", "<i4"), ("b", "S3")]])
def test_build_then_parse(align: int, dtype: object) -> None:
    dt = np.dtype(dtype)  # type: ignore[call-overload]
    raw = build_header((3, 0, 5), dt, True, align=align)
    assert len(raw) % align == 0
    head = parse_header(raw)
    assert head.shape == (3, 0, 5) and head.dtype == dt and head.fortran_order
    assert head.data_offset == len(raw)


def test_numpy_reads_our_header_at_page_alignment() -> None:
    raw = build_header((4,), np.dtype("<f8"), False, align=4096)
    data = np.arange(4, dtype="<f8").tobytes()
    arr = np.load(io.BytesIO(raw + data))
    assert arr.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_rewrite_keeps_total_length() -> None:
    raw = build_header((1,), np.dtype("f4"), align=4096)
    bigger = build_header((10**15, 3), np.dtype("f4"), total=len(raw))
    assert len(bigger) == len(raw) and parse_header(bigger).shape == (10**15, 3)
    with pytest.raises(errors.HeaderError):
        build_header((1,) * 40, np.dtype("f4"), total=64)


def _header(text: bytes, version: int = 1) -> bytes:
    lenfmt = "<H" if version == 1 else "<I"
    return MAGIC + bytes([version, 0]) + struct.pack(lenfmt, len(text)) + text


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"PK\x03\x04 not npy at all",
        MAGIC + b"\x09\x00" + b"\x00" * 10,  # unknown version
        _header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }")[:-5],  # cut
        _header(b"{'descr': '<f4', 'fortran_order': False}\n"),  # missing key
        _header(b"{'descr': '<f4', 'fortran_order': 0, 'shape': (3,)}\n"),
        _header(b"{'descr': '<f4', 'fortran_order': False, 'shape': [3]}\n"),
        _header(b"{'descr': 'not-a-dtype', 'fortran_order': False, 'shape': (3,)}\n"),
        _header(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}\n"),
        _header(b"__import__('os').system('echo pwned')\n"),
        _header(b"(" * 5000 + b")" * 5000),
        MAGIC + b"\x02\x00" + struct.pack("<I", 1 << 30),  # oversized header length
    ],
)
def test_corrupt_headers_raise_header_error(raw: bytes) -> None:
    with pytest.raises(errors.HeaderError) as info:
        parse_header(raw)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (b"{'descr': '|O', 'fortran_order': False, 'shape': (3,)}\n", errors.DtypeError),
        (b"{'descr': [('a', '|O')], 'fortran_order': False, 'shape': (3,)}\n", errors.DtypeError),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (-3,)}\n", errors.ShapeError),
        (b"{'descr': '<f4', 'fortran_order': False, 'shape': (2.5,)}\n", errors.ShapeError),
        (b"{'descr': '<f8', 'fortran_order': False, "
         b"'shape': (4611686018427387904, 4611686018427387904)}\n",
         errors.ShapeError),
    ],
)
def test_unmappable_headers(text: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_header(_header(text))


def test_more_than_64_dimensions_is_a_shape_error_not_valueerror(tmp_path: Path) -> None:
    # Regression: a header (or create/open_raw shape) with more dimensions than numpy allows
    # passed every check, was mapped, then failed in numpy with a bare ValueError; create()
    # had already written the file.
    with pytest.raises(errors.ShapeError, match="at most 64"):
        parse_header(build_header((1,) * 65, np.dtype("u1"), align=64))
    with pytest.raises(errors.ShapeError, match="of the dtype"):
        parse_header(_header(b"{'descr': ('u1', (1, 1, 1, 1, 1)), 'fortran_order': False, "
                             b"'shape': (" + b"1, " * 60 + b")}\n"))
    with pytest.raises(errors.ShapeError):
        bigarr.create(tmp_path / "x.npy", (1,) * 65, "u1")
    assert not list(tmp_path.iterdir())
    assert bigarr.create(tmp_path / "y.npy", (1,) * 64, "u1").ndim == 64


@pytest.mark.parametrize("shape", [(0, 2**70), (0, 2**62, 4), (3, 0, 2**62)])
def test_empty_shape_with_unaddressable_dims_is_a_shape_error(shape: tuple[int, ...]) -> None:
    # Regression: the size check multiplied every dimension, so a 0 hid the others and numpy
    # then raised a bare ValueError ("array is too big", "Maximum allowed dimension exceeded").
    with pytest.raises(errors.ShapeError, match="although it is empty"):
        check_shape(shape, np.dtype("u1"))
    assert check_shape((2**62, 0), np.dtype("u1")) == (2**62, 0)


def test_truncated_data_section() -> None:
    raw = build_header((100,), np.dtype("f8"), align=4096)
    with pytest.raises(errors.TruncatedFileError) as info:
        read_header(io.BytesIO(raw + b"\0" * 799), len(raw) + 799)
    assert "800 data bytes" in str(info.value)


VALID = build_header((7, 3), np.dtype("<i2"), False, align=64)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_random_bytes_only_raise_bigarr_errors(raw: bytes) -> None:
    with contextlib.suppress(errors.BigArrError):
        parse_header(raw)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), max_size=6),
       st.integers(0, len(VALID)))
def test_fuzz_mutated_headers_only_raise_bigarr_errors(
    edits: list[tuple[int, int]], cut: int
) -> None:
    raw = bytearray(VALID)
    for pos, value in edits:
        raw[pos] = value
    try:
        head = parse_header(bytes(raw[:cut]))
    except errors.BigArrError:
        return
    assert head.data_offset <= cut


_DESCRS = ["'<f4'", "'|V0'", "'<U0'", "[]", "[('a', '<i4', (70,))]", "('u1', (2, 3))",
           "('u1', (1,) * 3)", "'|O'", "'<M8[D]'", "'<m8'", "'?'", "[('', '<f8')]", "'S0'"]


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(_DESCRS),
       st.integers(0, 70).flatmap(
           lambda n: st.lists(st.sampled_from([1, 1, 1, 0, 2, 2**62]), min_size=n, max_size=n)),
       st.booleans(),
       st.integers(0, 64))
def test_fuzz_opening_header_dicts_only_raises_bigarr_errors(
    tmp_path_factory: pytest.TempPathFactory, descr: str, shape: list[int], fortran: bool,
    data: int,
) -> None:
    # Headers that parse must also map: every failure of bigarr.open is a bigarr error.
    text = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {tuple(shape)!r}}}\n"
    path = tmp_path_factory.mktemp("fuzz") / "f.npy"
    path.write_bytes(_header(text.encode()) + b"\0" * data)
    with contextlib.suppress(errors.BigArrError):
        bigarr.open(path).close()
