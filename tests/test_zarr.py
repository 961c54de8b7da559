"""bigarr.to_zarr / bigarr.from_zarr: both directions, chunk geometry, codecs, edge cases."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
import zarr.codecs
from hypothesis import given, settings
from hypothesis import strategies as st
from zarr.storage import LocalStore, MemoryStore

import bigarr
from bigarr._interop.zarr_raw import raw_chunks
from bigarr.errors import (
    BudgetError,
    FileExistsError_,
    FileMissingError,
    FormatError,
    ShapeError,
)


def _data(shape: tuple[int, ...], dtype: str = "f4", order: str = "C") -> np.ndarray[Any, Any]:
    n = int(np.prod(shape))
    return np.asfortranarray(np.arange(n).reshape(shape).astype(dtype)) if order == "F" \
        else np.arange(n).reshape(shape).astype(dtype)


def _bigarr_file(tmp_path: Path, data: np.ndarray[Any, Any], name: str = "src.npy") -> Any:
    order = "F" if data.flags.f_contiguous and not data.flags.c_contiguous else "C"
    arr = bigarr.create(tmp_path / name, data.shape, data.dtype, order=order)
    arr[...] = data
    arr.flush()
    return arr


class _CountingStore(MemoryStore):
    """Records every chunk key zarr reads back (metadata excluded) and whether data came back."""

    def __init__(self) -> None:
        super().__init__()
        self.hits: list[str] = []

    async def get(self, key: str, prototype: Any, byte_range: Any = None) -> Any:
        got = await super().get(key, prototype, byte_range)
        if got is not None and not key.endswith((".json", ".zarray", ".zattrs", ".zgroup")):
            self.hits.append(key)
        return got


# ---- to_zarr -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "compressors",
    [None, "auto", zarr.codecs.BloscCodec(cname="lz4"), zarr.codecs.ZstdCodec(level=3)],
    ids=["raw", "default", "blosc", "zstd"],
)
def test_to_zarr_roundtrips_with_each_compressor(tmp_path: Path, compressors: Any) -> None:
    data = _data((301, 17))
    src = _bigarr_file(tmp_path, data)
    z = bigarr.to_zarr(src, tmp_path / "a.zarr", chunks=(40, 6), compressors=compressors)
    assert z.chunks == (40, 6)
    np.testing.assert_array_equal(zarr.open_array(tmp_path / "a.zarr", mode="r")[:], data)


def test_to_zarr_accepts_path_and_plain_numpy(tmp_path: Path) -> None:
    data = _data((64, 3), "i8")
    _bigarr_file(tmp_path, data).close()
    z = bigarr.to_zarr(tmp_path / "src.npy", MemoryStore(), chunks=(10, 3))
    np.testing.assert_array_equal(z[:], data)
    z2 = bigarr.to_zarr(data, MemoryStore(), chunks=(7, 2))
    np.testing.assert_array_equal(z2[:], data)


def test_to_zarr_never_reads_a_chunk_back(tmp_path: Path) -> None:
    # Edge chunks on both axes and a small budget (many batches): every chunk must still be
    # written whole, so zarr never finds existing data to merge (no read-modify-write).
    data = _data((1000, 37))
    store = _CountingStore()
    z = bigarr.to_zarr(data, store, chunks=(64, 10), budget=3 * 64 * 37 * 4 * 3)
    assert store.hits == []
    np.testing.assert_array_equal(z[:], data)
    assert store.hits  # the counter does see reads


def test_to_zarr_sharded_writes_whole_shards(tmp_path: Path) -> None:
    data = _data((1000, 37))
    store = _CountingStore()
    z = bigarr.to_zarr(data, store, chunks=(16, 10), shards=(64, 20), budget="1MiB")
    assert store.hits == []
    assert z.shards == (64, 20)
    np.testing.assert_array_equal(z[:], data)


def test_to_zarr_from_fortran_order_source(tmp_path: Path) -> None:
    data = _data((50, 40, 30), "f8", order="F")
    src = _bigarr_file(tmp_path, data)
    assert src.flags.f_contiguous
    z = bigarr.to_zarr(src, tmp_path / "f.zarr", chunks=(7, 9, 4), budget=3 * 8 * 50 * 40 * 4 * 2)
    np.testing.assert_array_equal(z[:], data)


def test_to_zarr_zero_size_and_zero_d(tmp_path: Path) -> None:
    empty = _bigarr_file(tmp_path, np.zeros((0, 5), "f4"), "e.npy")
    z = bigarr.to_zarr(empty, tmp_path / "e.zarr")
    assert z.shape == (0, 5)
    scalar = _bigarr_file(tmp_path, np.array(3.5), "s.npy")
    z0 = bigarr.to_zarr(scalar, tmp_path / "s.zarr")
    assert z0.shape == () and z0[()] == 3.5


def test_to_zarr_budget_too_small_is_refused_before_writing(tmp_path: Path) -> None:
    data = _data((100, 1000))
    with pytest.raises(BudgetError, match="budget") as info:
        bigarr.to_zarr(data, tmp_path / "b.zarr", chunks=(50, 1000), budget="100KiB")
    assert isinstance(info.value, ValueError)
    assert "100.0 KiB" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunks": (0, 10)}, "chunks"),  # was a ZeroDivisionError deep in zarr, array left
        ({"chunks": (10,)}, "chunks"),
        ({"chunks": (10, 10), "shards": (15, 10)}, "multiple"),
        ({"chunks": (10, 10), "shards": (20, 10), "zarr_format": 2}, "zarr_format"),
    ],
)
def test_to_zarr_bad_grids_are_bigarr_errors_before_anything_is_created(
    tmp_path: Path, kwargs: dict[str, Any], match: str
) -> None:
    # Regression: zarr's bare ValueError/ZeroDivisionError, and a zero chunk got as far as
    # creating the array on disk before the first write failed.
    dest = tmp_path / "g.zarr"
    with pytest.raises(ShapeError, match=match):
        bigarr.to_zarr(np.zeros((100, 10)), dest, progress=False, **kwargs)
    assert not dest.exists()


def test_to_zarr_refuses_to_overwrite(tmp_path: Path) -> None:
    data = _data((10, 2))
    bigarr.to_zarr(data, tmp_path / "o.zarr")
    with pytest.raises(FileExistsError_):
        bigarr.to_zarr(data, tmp_path / "o.zarr")
    z = bigarr.to_zarr(data * 2, tmp_path / "o.zarr", overwrite=True)
    np.testing.assert_array_equal(z[:], data * 2)


def test_to_zarr_releases_source_pages(tmp_path: Path) -> None:
    # The source's pages are dropped behind the stream: after the export, (almost) nothing of
    # the source mapping is resident in this process.
    data = _data((4096, 256))  # 4 MiB
    src = _bigarr_file(tmp_path, data)
    np.asarray(src).sum()  # fault every page in
    bigarr.to_zarr(src, tmp_path / "r.zarr", chunks=(256, 256), compressors=None,
                   budget="1MiB")
    assert _mapped_rss_kib(src) <= 4 * 1024 // 4  # at most a batch's worth (1 MiB) of 4 MiB


def _mapped_rss_kib(arr: Any) -> int:
    """Rss (KiB) of this process's mapping of ``arr``'s file, from /proc/self/smaps."""
    addr = arr._bigarr.addr
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("Rss:"):
                total += int(line.split()[1])
    return total


# ---- from_zarr -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "compressors", [None, "auto", zarr.codecs.BloscCodec(cname="zstd", clevel=1)],
    ids=["raw", "default", "blosc"],
)
def test_from_zarr_roundtrips(tmp_path: Path, compressors: Any) -> None:
    data = _data((257, 33), "f8")
    zarr.create_array(tmp_path / "a.zarr", data=data, chunks=(32, 11), compressors=compressors)
    out = bigarr.from_zarr(tmp_path / "a.zarr", tmp_path / "out.npy")
    assert isinstance(out, bigarr.memmap) and out.access == "readonly"
    np.testing.assert_array_equal(out, data)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), data)  # plain numpy reads it
    assert out.offset % 4096 == 0


def test_from_zarr_accepts_array_and_store(tmp_path: Path) -> None:
    data = _data((40, 4), "u2")
    store = MemoryStore()
    z = zarr.create_array(store, data=data, chunks=(8, 4))
    np.testing.assert_array_equal(bigarr.from_zarr(z, tmp_path / "a.npy"), data)
    np.testing.assert_array_equal(bigarr.from_zarr(store, tmp_path / "b.npy"), data)


@pytest.mark.parametrize("chunks", [(16, 8), (7, 30)], ids=["part-rows", "whole-rows"])
@pytest.mark.parametrize("compressors", [None, "auto"], ids=["raw-fast-path", "zstd"])
@pytest.mark.parametrize("fill", [0, 7.5, np.nan])
def test_from_zarr_missing_chunks_hold_fill_value(
    tmp_path: Path, compressors: Any, fill: float, chunks: tuple[int, int]
) -> None:
    # whole-row chunks (7 rows of 120 bytes: no chunk starts on a page) are read into the
    # O_DIRECT sink's staging buffers, a missing one as the fill value's bytes
    z = zarr.create_array(tmp_path / "m.zarr", shape=(100, 30), dtype="f4", chunks=chunks,
                          compressors=compressors, fill_value=fill)
    z[14:32, 8:16] = 1.0
    z[98:100, 24:30] = 2.0  # an edge chunk
    expected = np.full((100, 30), fill, dtype="f4")
    expected[14:32, 8:16] = 1.0
    expected[98:100, 24:30] = 2.0
    assert z.nchunks_initialized == (4 if chunks[1] == 30 else 3)  # the rest are missing
    out = bigarr.from_zarr(tmp_path / "m.zarr", tmp_path / "m.npy")
    np.testing.assert_array_equal(out, expected)


def test_from_zarr_sharded(tmp_path: Path) -> None:
    data = _data((300, 50), "i4")
    zarr.create_array(tmp_path / "s.zarr", data=data, chunks=(10, 25), shards=(40, 50))
    out = bigarr.from_zarr(tmp_path / "s.zarr", tmp_path / "s.npy", budget="64KiB")
    np.testing.assert_array_equal(out, data)


def test_from_zarr_zarr_v2(tmp_path: Path) -> None:
    data = _data((90, 7), "f4")
    zarr.create_array(tmp_path / "v2.zarr", data=data, chunks=(13, 7), zarr_format=2)
    np.testing.assert_array_equal(bigarr.from_zarr(tmp_path / "v2.zarr", tmp_path / "v.npy"),
                                  data)


def test_fast_path_only_for_uncompressed_local_unsharded(tmp_path: Path) -> None:
    data = _data((20, 4))
    raw = zarr.create_array(tmp_path / "r.zarr", data=data, chunks=(5, 4), compressors=None)
    packed = zarr.create_array(tmp_path / "p.zarr", data=data, chunks=(5, 4))
    sharded = zarr.create_array(tmp_path / "h.zarr", data=data, chunks=(5, 2), shards=(10, 4),
                                compressors=None)
    memory = zarr.create_array(MemoryStore(), data=data, chunks=(5, 4), compressors=None)
    assert raw_chunks(raw) is not None
    assert raw_chunks(packed) is None
    assert raw_chunks(sharded) is None
    assert raw_chunks(memory) is None


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "readinto"])
@pytest.mark.parametrize("chunks", [(8, 12), (8, 5), (3, 2)])
def test_fast_path_equals_zarr_path(
    tmp_path: Path, chunks: tuple[int, int], kernel_copy: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Chunks that span whole rows are read by the O_DIRECT sink into its staging buffers
    # (Sink.write_from); where O_DIRECT is refused, copied file to file (or read straight
    # into the output where copy_file_range is missing); others go through a buffer.
    if not kernel_copy:
        monkeypatch.delattr(os, "copy_file_range", raising=False)
    copies: list[int] = []
    real = bigarr._interop.zarr_raw._copy_file
    monkeypatch.setattr(bigarr._interop.zarr_raw, "_copy_file",
                        lambda *a: copies.append(a[2]) or real(*a))  # type: ignore[func-returns-value]
    reads: list[int] = []
    raw_reader = bigarr._interop.zarr_raw.RawChunks
    real_read = raw_reader.read_bytes
    monkeypatch.setattr(raw_reader, "read_bytes",
                        lambda self, first, dest: reads.append(dest.nbytes)
                        or real_read(self, first, dest))
    data = _data((50, 12), "i2")
    zarr.create_array(tmp_path / "r.zarr", data=data, chunks=chunks, compressors=None)
    out = bigarr.from_zarr(LocalStore(tmp_path / "r.zarr"), tmp_path / "r.npy",
                           budget="4KiB")
    np.testing.assert_array_equal(out, data)
    whole_rows = chunks[1] == 12
    # exactly whole-row chunks go file to file, each byte once, one way or the other
    assert bool(copies or reads) == whole_rows
    if whole_rows and (reads or (kernel_copy and hasattr(os, "copy_file_range"))):
        assert sum(copies) + sum(reads) == data.nbytes


def test_fast_path_detects_a_damaged_chunk(tmp_path: Path) -> None:
    data = _data((20, 4))
    zarr.create_array(tmp_path / "d.zarr", data=data, chunks=(5, 4), compressors=None)
    with open(tmp_path / "d.zarr" / "c" / "1" / "0", "r+b") as f:
        f.truncate(7)
    with pytest.raises(FormatError, match="bytes"):
        bigarr.from_zarr(tmp_path / "d.zarr", tmp_path / "d.npy")
    assert not (tmp_path / "d.npy").exists()  # nothing half-written is left at the path
    assert not [p for p in os.listdir(tmp_path) if "bigarr-tmp" in p]


def test_from_zarr_zero_size_and_zero_d(tmp_path: Path) -> None:
    zarr.create_array(tmp_path / "e.zarr", shape=(0, 3), dtype="f4")
    out = bigarr.from_zarr(tmp_path / "e.zarr", tmp_path / "e.npy")
    assert out.shape == (0, 3)
    z0 = zarr.create_array(tmp_path / "s.zarr", shape=(), dtype="i8")
    z0[()] = 42
    assert bigarr.from_zarr(tmp_path / "s.zarr", tmp_path / "s.npy")[()] == 42


def test_from_zarr_bad_sources(tmp_path: Path) -> None:
    with pytest.raises(FileMissingError):
        bigarr.from_zarr(tmp_path / "nope.zarr", tmp_path / "x.npy")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FormatError, match="Expected a zarr array") as info:
        bigarr.from_zarr(tmp_path / "plain", tmp_path / "x.npy")
    assert isinstance(info.value, ValueError)
    zarr.open_group(tmp_path / "group.zarr", mode="w")
    with pytest.raises(FormatError):
        bigarr.from_zarr(tmp_path / "group.zarr", tmp_path / "x.npy")
    assert not (tmp_path / "x.npy").exists()


def test_from_zarr_refuses_existing_output_unless_overwrite(tmp_path: Path) -> None:
    data = _data((10, 3))
    zarr.create_array(tmp_path / "a.zarr", data=data)
    (tmp_path / "taken.npy").write_bytes(b"keep")
    with pytest.raises(FileExistsError_):
        bigarr.from_zarr(tmp_path / "a.zarr", tmp_path / "taken.npy")
    assert (tmp_path / "taken.npy").read_bytes() == b"keep"
    out = bigarr.from_zarr(tmp_path / "a.zarr", tmp_path / "taken.npy", overwrite=True,
                           mode="shared")
    assert out.access == "shared"
    np.testing.assert_array_equal(out, data)


def test_roundtrip_both_directions(tmp_path: Path) -> None:
    data = _data((123, 5, 6), "f4")
    src = _bigarr_file(tmp_path, data)
    bigarr.to_zarr(src, tmp_path / "rt.zarr", chunks=(10, 5, 3), shards=(20, 5, 6))
    back = bigarr.from_zarr(tmp_path / "rt.zarr", tmp_path / "rt.npy")
    np.testing.assert_array_equal(back, data)


def test_progress_events_one_per_batch(tmp_path: Path) -> None:
    events: list[Any] = []
    data = _data((100, 8))
    bigarr.to_zarr(data, MemoryStore(), chunks=(10, 8), budget=3 * 10 * 8 * 4 * 2,
                   progress=events.append)
    chunks = [e for e in events if e.kind == "chunk"]
    assert len(chunks) == 5 and chunks[-1].done_bytes == data.nbytes


_RSS_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np, zarr, bigarr

    def hwm_kib():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1])

    folder = sys.argv[1]
    n = 32 << 20  # float32 elements: 128 MiB
    src = os.path.join(folder, "src.npy")
    bigarr.create(src, (n // 1024, 1024), "f4").close()
    with open(src, "r+b") as f:  # fill with pwrite so building does not raise our RSS
        off = bigarr.open(src).offset
        block = np.arange(1 << 20, dtype="f4").tobytes()
        for i in range(n // (1 << 20)):
            os.pwrite(f.fileno(), block, off + i * len(block))
    open("/proc/self/clear_refs", "w").write("5")
    base = hwm_kib()
    bigarr.to_zarr(src, os.path.join(folder, "a.zarr"), chunks=(1024, 1024),
                   compressors=None, budget="16MiB", progress=False)
    mid = hwm_kib()
    open("/proc/self/clear_refs", "w").write("5")
    base2 = hwm_kib()
    out = bigarr.from_zarr(os.path.join(folder, "a.zarr"), os.path.join(folder, "b.npy"),
                           budget="16MiB", progress=False)
    end = hwm_kib()
    print(mid - base, end - base2, float(out[-1, -1]))
    """
)


def test_peak_rss_stays_near_budget_both_directions(tmp_path: Path) -> None:
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs /proc/self/clear_refs to reset the peak RSS")
    res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    grow_out, grow_in, last = res.stdout.split()
    assert float(last) == float((32 << 20) - 1) % (1 << 20)
    # 128 MiB moved each way with a 16 MiB budget: peak growth stays far below the file size.
    assert int(grow_out) < 64 * 1024, res.stdout
    assert int(grow_in) < 64 * 1024, res.stdout


@st.composite
def _arrays_and_chunks(draw: Any) -> tuple[np.ndarray[Any, Any], tuple[int, ...], str]:
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim)))
    chunks = tuple(draw(st.integers(1, max(1, n + 1))) for n in shape)
    order = draw(st.sampled_from(["C", "F"]))
    dtype = draw(st.sampled_from(["u1", "i4", "f8"]))
    return _data(shape, dtype, order), chunks, order


@settings(max_examples=15, deadline=None)
@given(case=_arrays_and_chunks(), raw=st.booleans())
def test_roundtrip_property(case: tuple[np.ndarray[Any, Any], tuple[int, ...], str],
                            raw: bool) -> None:
    data, chunks, _order = case
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        src = _bigarr_file(tmp, data)
        bigarr.to_zarr(src, tmp / "p.zarr", chunks=chunks, compressors=None if raw else "auto",
                       budget="64KiB")
        back = bigarr.from_zarr(tmp / "p.zarr", tmp / "p.npy", budget="64KiB")
        np.testing.assert_array_equal(back, data)
        back.close()
        src.close()


@pytest.mark.parametrize("special", ["fifo", "dev-zero"])
def test_a_chunk_that_never_ends_is_refused_not_read(tmp_path: Path, special: str) -> None:
    """Regression: a FIFO at a chunk key hung from_zarr for ever (zarr's read_bytes blocks on
    it); a link to /dev/zero would have filled the memory."""
    import threading

    src = tmp_path / "a.zarr"
    bigarr.to_zarr(np.arange(40.0).reshape(10, 4), src, chunks=(5, 4), progress=False)
    chunk = src / "c" / "1" / "0"
    chunk.unlink()
    release = None
    if special == "fifo":
        os.mkfifo(chunk)
        # should the refusal regress, this writer ends the read (EOF) instead of a hang
        release = threading.Thread(target=lambda: open(chunk, "wb").close(), daemon=True)
        release.start()
    else:
        chunk.symlink_to("/dev/zero")
    try:
        with pytest.raises(bigarr.errors.NotAFileError, match="never end"):
            bigarr.from_zarr(src, tmp_path / "o.npy", progress=False)
        with pytest.raises(bigarr.errors.NotAFileError):
            bigarr.lazy(zarr.open_array(str(src), mode="r")).sum().compute(progress=False)
    finally:
        if release is not None:  # let the writer's open return
            os.close(os.open(chunk, os.O_RDONLY | os.O_NONBLOCK))
            release.join(5)
    assert not (tmp_path / "o.npy").exists()
