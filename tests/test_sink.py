"""The output sink (bigarr._os.sink): O_DIRECT writes of finished arrays into a new file, with
pages shared by two writes gathered and written whole, a bounded staging pool, and a
buffered fallback."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._os import sink as sink_mod
from bigarr._os.sink import DIRECT_ALIGN, Sink


def _new_file(path: Path, size: int) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    os.ftruncate(fd, size)
    return fd


def _write_pieces(fd: int, path: Path, pieces: list[tuple[int, bytes]], **kw: Any) -> Sink:
    with Sink(fd, str(path), **kw) as sink:
        pending = [sink.write(np.frombuffer(data, np.uint8), at) for at, data in pieces]
        for written in pending:
            written.wait()
        sink.sync()
    return sink


def _pieces(size: int, seed: int) -> tuple[bytes, list[tuple[int, bytes]]]:
    """Random bytes cut at random (mostly unaligned) offsets, in a shuffled order."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    cuts = sorted({0, size, *map(int, rng.integers(0, size, 9)), 3 * DIRECT_ALIGN})
    pieces = [(a, data[a:b]) for a, b in itertools.pairwise(cuts) if b > a]
    order = rng.permutation(len(pieces))
    return data, [pieces[i] for i in order]


@pytest.mark.parametrize("seed", [0, 1])
def test_direct_writes_equal_the_bytes_given(tmp_path: Path, seed: int) -> None:
    size = 5 * DIRECT_ALIGN * 7 + 1234  # not a multiple of the alignment: a buffered tail
    data, pieces = _pieces(size, seed)
    path = tmp_path / "out.bin"
    fd = _new_file(path, size)
    try:
        sink = _write_pieces(fd, path, pieces, staging=2 * DIRECT_ALIGN)  # tiny pieces
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert sink._made <= sink._nbuf  # the staging pool stayed within its bound


def test_pieces_larger_than_the_staging_pool(tmp_path: Path) -> None:
    """One array of many staging pieces: the writer waits for buffers, memory stays bounded."""
    size = 40 * DIRECT_ALIGN + 100
    data = np.arange(size, dtype=np.uint32).astype(np.uint8).tobytes()
    path = tmp_path / "big.bin"
    fd = _new_file(path, size + 50)
    try:
        sink = _write_pieces(fd, path, [(50, data)], staging=4 * DIRECT_ALIGN)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\0" * 50 + data
    assert sink._made <= sink._nbuf <= 4


def test_direct_is_used_on_a_disk_file_system(tmp_path: Path) -> None:
    path = tmp_path / "d.bin"
    fd = _new_file(path, DIRECT_ALIGN)
    try:
        with Sink(fd, str(path)) as sink:
            if not sink.direct:
                pytest.skip("this file system refuses O_DIRECT")
            sink.write(np.full(DIRECT_ALIGN, 7, np.uint8), 0).wait()
        with Sink(fd, str(path), direct=False) as plain:
            assert not plain.direct
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\7" * DIRECT_ALIGN


def test_refused_at_open_falls_back_to_buffered(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink_mod, "_reopen_direct", lambda fd, path: None)
    size = 3 * DIRECT_ALIGN + 17
    data, pieces = _pieces(size, 2)
    path = tmp_path / "b.bin"
    fd = _new_file(path, size)
    try:
        sink = _write_pieces(fd, path, pieces)
    finally:
        os.close(fd)
    assert not sink.direct
    assert path.read_bytes() == data


def test_refused_at_the_first_write_falls_back_to_buffered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Some file systems open with O_DIRECT but refuse the write itself (EINVAL)."""
    path = tmp_path / "e.bin"
    size = 6 * DIRECT_ALIGN + 5
    data, pieces = _pieces(size, 3)
    fd = _new_file(path, size)
    real = os.pwrite
    direct_fds: set[int] = set()

    def refusing(f: int, buf: Any, at: int) -> int:
        if f in direct_fds:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real(f, buf, at)

    monkeypatch.setattr(os, "pwrite", refusing)
    try:
        with Sink(fd, str(path), staging=2 * DIRECT_ALIGN) as sink:
            if sink._direct_fd is None:
                pytest.skip("this file system refuses O_DIRECT at open")
            direct_fds.add(sink._direct_fd)
            for written in [sink.write(np.frombuffer(d, np.uint8), at) for at, d in pieces]:
                written.wait()
            assert not sink.direct
    finally:
        os.close(fd)
    assert path.read_bytes() == data


@pytest.mark.parametrize("where", ["tmp", "shm"])
def test_map_blocks_through_the_sink_equals_numpy(tmp_path: Path, where: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of 24 bytes (no chunk boundary on a page), a tail, a small budget: many chunks,
    each with buffered head and tail bytes; on tmpfs too (/dev/shm)."""
    folder = tmp_path
    if where == "shm":
        if not os.path.isdir("/dev/shm") or not os.access("/dev/shm", os.W_OK):
            pytest.skip("no /dev/shm")
        folder = Path(os.environ.get("BIGARR_TEST_SHM", "/dev/shm")) / f"bigarr-sink-{os.getpid()}"
        folder.mkdir(exist_ok=True)
    writes: list[bool] = []
    original = Sink.write

    def spy(self: Sink, data: Any, offset: int, **kw: Any) -> Any:
        writes.append(self.direct)
        return original(self, data, offset, **kw)

    monkeypatch.setattr(Sink, "write", spy)
    try:
        x = np.random.default_rng(5).standard_normal((40_009, 3))
        src = folder / "x.npy"
        np.save(src, x)
        out = folder / "y.npy"
        y = bigarr.map_blocks(lambda b: b * 3 - 1, str(src), out=str(out), budget="2MiB",
                              threads=2, progress=False)
        try:
            np.testing.assert_array_equal(np.asarray(y), x * 3 - 1)
        finally:
            y.close()
        np.testing.assert_array_equal(np.load(out), x * 3 - 1)
        assert len(writes) > 4  # every chunk went through the sink
        if where == "tmp":
            with Sink(os.open(out, os.O_RDONLY), str(out)) as probe:
                can = probe.direct
            os.close(probe.fd)
            assert all(writes) == can
    finally:
        if where == "shm":
            for p in folder.iterdir():
                p.unlink()
            folder.rmdir()


def test_lent_arrays_are_written_from_their_own_memory(tmp_path: Path) -> None:
    """A lent array whose page-aligned middle is page-aligned in memory takes no staging buffer;
    one that is not aligned (or not lent) is copied; the file holds the same bytes either way."""
    import mmap

    size, at = 6 * DIRECT_ALIGN + 700, 300  # a buffered head and tail around the middle
    rng = np.random.default_rng(9)
    data = rng.integers(0, 256, size, dtype=np.uint8)
    mem = mmap.mmap(-1, size + 2 * DIRECT_ALIGN)  # page-aligned memory: place data at `at`
    aligned = np.frombuffer(mem, np.uint8)[at: at + size]
    aligned[:] = data
    unaligned = np.frombuffer(mem, np.uint8)[at + 16: at + 16 + size]
    path = tmp_path / "out.bin"
    fd = _new_file(path, 4 * size)
    try:
        with Sink(fd, str(path)) as sink:
            lent = sink.write(aligned, at, lend=True)
            lent.wait()
            made = sink._made  # no staging buffer for the lent, aligned array
            unaligned[:] = data  # (overwrites the memory `aligned` viewed: it was written)
            copied = sink.write(unaligned, size + at, lend=True)
            kept = sink.write(data.copy(), 3 * size, lend=False)
            copied.wait()
            kept.wait()
            direct = sink.direct
            sink.sync()
    finally:
        os.close(fd)
    del aligned, unaligned
    mem.close()
    body = path.read_bytes()
    assert body[at: at + size] == data.tobytes()
    assert body[size + at: 2 * size + at] == data.tobytes()
    assert body[3 * size: 4 * size] == data.tobytes()
    if direct:
        assert made == 0


def test_a_full_disk_is_a_disk_full_error_buffered_and_direct(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: ENOSPC mid-write (a sparse output on a full or copy-on-write file system)
    came out of the sink as a bare OSError, not bigarr's DiskFullError."""
    fd = os.open("/dev/full", os.O_WRONLY)  # every write: ENOSPC
    try:
        with Sink(fd, "/dev/full", direct=False) as sink, \
                pytest.raises(bigarr.errors.DiskFullError):
            sink.write(np.ones(1000), 8).wait()
    finally:
        os.close(fd)
    path = tmp_path / "d.bin"
    fd = _new_file(path, 8 * DIRECT_ALIGN)
    real = os.pwrite
    direct_fds: set[int] = set()

    def full(f: int, buf: Any, at: int) -> int:
        if f in direct_fds:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, buf, at)

    monkeypatch.setattr(os, "pwrite", full)
    try:
        with Sink(fd, str(path), staging=2 * DIRECT_ALIGN) as sink:
            if sink._direct_fd is None:
                pytest.skip("this file system refuses O_DIRECT at open")
            direct_fds.add(sink._direct_fd)
            with pytest.raises(bigarr.errors.DiskFullError) as info:
                sink.write(np.zeros(4 * DIRECT_ALIGN, np.uint8), 0).wait()
            assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.mark.parametrize("direct", [True, False])
def test_a_write_that_makes_no_progress_raises_not_hangs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, direct: bool) -> None:
    """Regression: a pwrite returning 0 (some FUSE file systems) looped for ever."""
    path = tmp_path / "z.bin"
    fd = _new_file(path, 8 * DIRECT_ALIGN)
    monkeypatch.setattr(os, "pwrite", lambda f, buf, at: 0)
    try:
        with Sink(fd, str(path), direct=direct, staging=2 * DIRECT_ALIGN) as sink, \
                pytest.raises(bigarr.errors.DiskFullError):
            sink.write(np.zeros(4 * DIRECT_ALIGN, np.uint8), 0).wait()
    finally:
        os.close(fd)


def test_a_page_shared_by_two_writes_is_written_whole_and_direct(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The end of one array and the start of the next share a page: gathered and written with
    O_DIRECT once both are there, with no buffered write (a buffered one waits for every
    direct write in flight); a shared page waited for before its other bytes come is written
    buffered, and the bytes that come later too. The file holds the bytes given either way."""
    size = 8 * DIRECT_ALIGN
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, size, dtype=np.uint8)
    path = tmp_path / "shared.bin"
    fd = _new_file(path, size)
    buffered: list[tuple[int, int]] = []
    real = sink_mod.pwrite_all

    def counting(f: int, piece: Any, at: int) -> None:
        buffered.append((at, int(piece.nbytes)))
        real(f, piece, at)

    monkeypatch.setattr(sink_mod, "pwrite_all", counting)
    cut, late = 3 * DIRECT_ALIGN + 100, 6 * DIRECT_ALIGN + 40
    try:
        with Sink(fd, str(path)) as sink:
            if not sink.direct:
                pytest.skip("this file system refuses O_DIRECT at open")
            first = sink.write(data[:cut].copy(), 0)
            second = sink.write(data[cut:late].copy(), cut)
            assert not buffered  # the shared page is gathered, not written buffered
            first.wait()  # its page is full: on the disk with O_DIRECT
            assert not buffered
            second.wait()  # its last page is still open: written buffered now
            assert buffered == [(6 * DIRECT_ALIGN, 40)]
            sink.write(data[late:].copy(), late).wait()  # the rest of that page: buffered too
            assert buffered[-1] == (late, DIRECT_ALIGN - 40)
            assert not sink._pages
            sink.sync()
    finally:
        os.close(fd)
    assert path.read_bytes() == data.tobytes()


def test_a_full_disk_at_a_shared_page_is_a_disk_full_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC of a gathered page's direct write reaches both writes' wait() as DiskFullError."""
    path = tmp_path / "p.bin"
    fd = _new_file(path, 4 * DIRECT_ALIGN)
    real = os.pwrite
    direct_fds: set[int] = set()

    def full(f: int, buf: Any, at: int) -> int:
        if f in direct_fds and len(buf) == DIRECT_ALIGN:  # the shared page only
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(f, buf, at)

    monkeypatch.setattr(os, "pwrite", full)
    try:
        with Sink(fd, str(path)) as sink:
            if sink._direct_fd is None:
                pytest.skip("this file system refuses O_DIRECT at open")
            direct_fds.add(sink._direct_fd)
            cut = 2 * DIRECT_ALIGN + 8
            first = sink.write(np.ones(cut, np.uint8), 0)
            second = sink.write(np.ones(2 * DIRECT_ALIGN - 8, np.uint8), cut)
            for written in (first, second):
                with pytest.raises(bigarr.errors.DiskFullError):
                    written.wait()
    finally:
        os.close(fd)


@pytest.mark.parametrize("direct", [True, False])
def test_write_from_fills_staging_with_the_bytes_asked_for(tmp_path: Path, direct: bool) -> None:
    """Sink.write_from: ranges at unaligned offsets, their bytes produced by a callback
    straight into the staging buffers (and shared pages), equal the bytes given."""
    size = 9 * DIRECT_ALIGN + 321
    data, pieces = _pieces(size, 4)
    src = np.frombuffer(data, np.uint8)
    path = tmp_path / "f.bin"
    fd = _new_file(path, size)
    asked: list[tuple[int, int]] = []
    try:
        with Sink(fd, str(path), direct=direct, staging=2 * DIRECT_ALIGN) as sink:
            pending = []
            for at, piece in pieces:
                def fill(dest: np.ndarray[Any, Any], start: int, at: int = at) -> None:
                    asked.append((at + start, dest.nbytes))
                    dest[:] = src[at + start: at + start + dest.nbytes]
                pending.append(sink.write_from(fill, at, len(piece)))
            for written in pending:
                written.wait()
            sink.sync()
            assert sink._made <= sink._nbuf
    finally:
        os.close(fd)
    assert path.read_bytes() == data
    assert sum(n for _, n in asked) == size  # each byte asked for once
    if direct and sink._direct_fd is not None:
        assert max(n for _, n in asked) <= sink._piece  # never more than one staging buffer


def test_write_from_errors_reach_the_caller_and_free_the_buffer(tmp_path: Path) -> None:
    path = tmp_path / "g.bin"
    fd = _new_file(path, 4 * DIRECT_ALIGN)

    def broken(dest: np.ndarray[Any, Any], start: int) -> None:
        raise FileNotFoundError(errno.ENOENT, "gone", "chunk/3")

    try:
        with Sink(fd, str(path), staging=2 * DIRECT_ALIGN) as sink:
            if not sink.direct:
                pytest.skip("this file system refuses O_DIRECT at open")
            for _ in range(3):  # a buffer lost per failure would hang the third call
                with pytest.raises(FileNotFoundError):
                    sink.write_from(broken, 0, 2 * DIRECT_ALIGN)
            sink.write_from(lambda d, s: d.fill(7), 0, 4 * DIRECT_ALIGN).wait()
    finally:
        os.close(fd)
    assert path.read_bytes() == b"\x07" * (4 * DIRECT_ALIGN)
