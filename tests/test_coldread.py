"""The cold-read path (issue 15): input chunks not in the page cache are read with preadv into
reused buffers (optionally O_DIRECT), resident ones are used through the mapping.

What is checked: results equal numpy's; a cold file is read from storage once (``read_bytes``
of /proc/self/io) and left as uncached as it was found, while pages cached before stay cached;
buffers a function keeps are never reused under it; O_DIRECT falls back where refused; peak
RSS stays within budget + 64 MiB in a subprocess.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._compute.coldread import ColdReads
from bigarr._compute.operands import parse_operand
from bigarr._os.pread import Buffer, BufferPool, RangeReader
from bigarr.errors import FileChangedError

MiB = 1 << 20


def _read_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1])
    raise AssertionError("no read_bytes in /proc/self/io")


def _make(path: Path, n: int, *, shape: tuple[int, ...] | None = None) -> np.ndarray[Any, Any]:
    data = (np.arange(n, dtype=np.int64) % 1009).astype(np.float32) - 500.0
    data[::997] = -0.0
    if shape is not None:
        data = data.reshape(shape)
    x = bigarr.create(path, data.shape, np.float32)
    x[...] = data
    x.close()
    return data


def _resident(path: Path) -> float:
    with bigarr.open(path) as x:
        return x.resident().fraction


def _cold_possible(path: Path, evict: Callable[[Path], None]) -> None:
    evict(path)
    if _resident(path) > 0.05:
        pytest.skip("this file system keeps the file cached (tmpfs?): no cold reads to test")


@pytest.mark.parametrize("mode", ["buffered", "direct"])
def test_cold_scan_reads_the_file_once_and_leaves_it_uncached(
        tmp_path: Path, evict: Callable[[Path], None], monkeypatch: pytest.MonkeyPatch,
        mode: str) -> None:
    path = tmp_path / "x.npy"
    data = _make(path, (24 * MiB) // 4)
    _cold_possible(path, evict)
    monkeypatch.setenv("BIGARR_COLD_READS", mode)
    before = _read_bytes()
    total = bigarr.sum(path, budget="8MiB", threads=2, progress=False)
    read = _read_bytes() - before
    assert total == np.sum(data, dtype=np.float32) or np.isclose(total, data.sum(dtype=np.float64))
    size = os.path.getsize(path)
    assert size - 64 * 1024 <= read <= size + 256 * 1024, (read, size)
    assert _resident(path) < 0.05  # the mapping path leaves the whole file cached (below)


def test_the_mapping_path_is_still_there_when_turned_off(
        tmp_path: Path, evict: Callable[[Path], None], monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "x.npy"
    _make(path, (16 * MiB) // 4)
    _cold_possible(path, evict)
    monkeypatch.setenv("BIGARR_COLD_READS", "off")
    bigarr.sum(path, budget="8MiB", threads=2, progress=False)
    assert _resident(path) > 0.9


def test_pages_cached_before_stay_cached_and_resident_chunks_are_mapped(
        tmp_path: Path, evict: Callable[[Path], None]) -> None:
    path = tmp_path / "x.npy"
    n = (24 * MiB) // 4
    data = _make(path, n)
    _cold_possible(path, evict)
    with bigarr.open(path) as x:  # warm the first third with a read of exactly that
        evict(path)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            os.pread(fd, 8 * MiB, 0)
        finally:
            os.close(fd)
        assert x.resident(slice(0, n // 4)).fraction > 0.9
        assert x.resident(slice(n // 2, n)).fraction < 0.05
    got = bigarr.reduce_blocks(lambda b: float(b.sum(dtype=np.float64)), lambda a, b: a + b,
                               path, budget="8MiB", threads=2, progress=False)
    assert got == pytest.approx(float(data.sum(dtype=np.float64)), rel=1e-12)
    with bigarr.open(path) as x:
        assert x.resident(slice(0, n // 4)).fraction > 0.9  # not evicted by the run
        assert x.resident(slice(n // 2, n)).fraction < 0.05  # read, then dropped again


def test_reductions_lazy_sort_and_linalg_inputs_match_numpy(
        tmp_path: Path, evict: Callable[[Path], None]) -> None:
    path = tmp_path / "m.npy"
    rows, cols = (12 * MiB) // 4 // 8, 8
    data = _make(path, rows * cols, shape=(rows, cols))
    _cold_possible(path, evict)
    kw: dict[str, Any] = {"budget": "8MiB", "threads": 2, "progress": False}
    np.testing.assert_allclose(bigarr.mean(path, axis=0, **kw), data.mean(axis=0, dtype=np.float64),
                               rtol=1e-6)
    evict(path)
    assert int(bigarr.argmax(path, **kw)) == int(np.argmax(data))
    evict(path)
    lz = bigarr.lazy(path)
    got = np.asarray(bigarr.compute(((lz - 1.0) * 2.0).sum(axis=0), **kw)).reshape(-1)
    np.testing.assert_allclose(got, ((data.astype(np.float64) - 1.0) * 2.0).sum(axis=0),
                               rtol=1e-5)
    evict(path)
    np.testing.assert_allclose(bigarr.linalg.gram(path, **kw),
                               data.astype(np.float64).T @ data.astype(np.float64), rtol=1e-5)
    flat = tmp_path / "flat.npy"
    values = _make(flat, (4 * MiB) // 4)
    evict(flat)
    out = bigarr.sort(flat, out=tmp_path / "sorted.npy", **kw)
    np.testing.assert_array_equal(np.asarray(out), np.sort(values))
    out.close()


def test_a_block_the_function_keeps_is_never_overwritten(
        tmp_path: Path, evict: Callable[[Path], None]) -> None:
    path = tmp_path / "x.npy"
    data = _make(path, (16 * MiB) // 4)
    _cold_possible(path, evict)

    def keep(b: np.ndarray[Any, Any], block_info: dict[str, Any]) -> list[Any]:
        return [(block_info["rows"], b[::1024])]  # a view: the buffer must not be reused

    with bigarr.open(path) as x:  # open while the kept views of mapped chunks are checked
        kept = bigarr.reduce_blocks(keep, lambda a, b: a + b, x, budget="8MiB", threads=2,
                                    progress=False)
        assert len(kept) > 4
        for (start, stop), view in kept:
            np.testing.assert_array_equal(view, data[start:stop:1024])
        del kept, view


def test_cold_blocks_are_read_only_like_the_mapping_they_stand_for(
        tmp_path: Path, evict: Callable[[Path], None]) -> None:
    path = tmp_path / "x.npy"
    _make(path, (8 * MiB) // 4)
    _cold_possible(path, evict)
    flags = bigarr.reduce_blocks(lambda b: [b.flags.writeable], lambda a, b: a + b, path,
                                 budget="4MiB", threads=2, progress=False)
    assert not any(flags)


def test_only_read_only_inputs_not_written_by_the_run_qualify(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    _make(path, (4 * MiB) // 4)
    ro = parse_operand(str(path))
    assert ColdReads.for_run([ro], 3, "buffered") is not None
    assert ColdReads.for_run([ro], 3, "off") is None
    out = parse_operand(str(path), output=True)  # the same file, written by the run
    assert ColdReads.for_run([ro, out], 3, "buffered") is None
    with bigarr.open(path, "r+") as shared:
        assert ColdReads.for_run([parse_operand(shared)], 3, "buffered") is None
    with bigarr.open(path, "c") as private:
        assert ColdReads.for_run([parse_operand(private)], 3, "buffered") is None
    for s in (ro, out):
        s.close()


def test_buffer_pool_reuses_only_idle_buffers() -> None:
    pool = BufferPool(10_000, keep=2)
    a = pool.take()
    assert a.nbytes % 4096 == 0 and a.nbytes >= 10_000
    block = a.array[:4096].view(np.float32)
    pool.give(a, block)
    assert pool.take() is not a  # the block is alive: a new buffer
    kept_view = block[1:]
    del block
    pool.give(a)
    assert pool.take() is not a  # a view of it is alive
    del kept_view
    pool.give(a)
    assert pool.take() is a
    assert pool.take(1 << 20).nbytes >= 1 << 20


def test_reader_reads_ranges_and_refuses_a_short_file(tmp_path: Path) -> None:
    path = tmp_path / "raw.bin"
    payload = np.random.default_rng(1).integers(0, 255, 3 * 4096 + 100, dtype=np.uint8)
    path.write_bytes(payload.tobytes())
    fd = os.open(path, os.O_RDONLY)
    try:
        for direct in (False, True):
            reader = RangeReader(fd, str(path), direct=direct)
            buf = Buffer(4 * 4096)
            reader.read(buf, 4096, 4096 + 10, 3 * 4096 + 100, direct=direct)
            np.testing.assert_array_equal(buf.array[10:2 * 4096 + 100], payload[4096 + 10:])
            with pytest.raises(FileChangedError):
                reader.read(buf, 4096, 4096, 5 * 4096 - 1, direct=direct)
            reader.close()
    finally:
        os.close(fd)


def test_direct_falls_back_where_the_file_system_refuses_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK):
        pytest.skip("no tmpfs to refuse O_DIRECT")
    path = shm / f"bigarr-coldread-{os.getpid()}.npy"
    try:
        data = _make(path, (4 * MiB) // 4)
        fd = os.open(path, os.O_RDONLY)
        reader = RangeReader(fd, str(path), direct=True)
        os.close(fd)
        reader.close()
        monkeypatch.setenv("BIGARR_COLD_READS", "direct")
        # tmpfs pages are always resident: the mapping is used, and the result is right
        assert float(bigarr.sum(path, budget="4MiB", progress=False)) == pytest.approx(
            float(data.sum(dtype=np.float64)))
    finally:
        path.unlink(missing_ok=True)


def test_peak_rss_of_a_cold_scan_stays_within_the_budget(
        tmp_path: Path, evict: Callable[[Path], None],
        run_py: Callable[..., CompletedProcess[str]]) -> None:
    path = tmp_path / "x.npy"
    n = (64 * MiB) // 4
    x = bigarr.create(path, (n,), np.float32, fill=1.0)
    x.close()
    _cold_possible(path, evict)
    proc = run_py(f"""
        import numpy as np, bigarr
        import bigarr._compute.reductions, bigarr._compute.coldread
        def hwm():
            return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) << 10
        before = hwm()
        total = float(bigarr.sum({str(path)!r}, budget="16MiB", threads=2, progress=False))
        with bigarr.open({str(path)!r}) as x:
            resident = x.resident().fraction
        print(total, hwm() - before, resident)
    """)
    assert proc.returncode == 0, proc.stderr
    total, grew, resident = proc.stdout.split()
    assert float(total) == n
    assert int(grew) <= (16 + 64) * MiB, int(grew) >> 20
    assert float(resident) < 0.05


@pytest.mark.parametrize("op", [
    "bigarr.mean(P, axis=0, **KW)",
    pytest.param("bigarr.argmax(P, **KW)", marks=pytest.mark.slow),
    pytest.param("bigarr.quantile(P, 0.5, axis=0, **KW)", marks=pytest.mark.slow),
    pytest.param("bigarr.linalg.gram(P, **KW)", marks=pytest.mark.slow),
    pytest.param("bigarr.compute(((bigarr.lazy(P) - 1.0) * 2.0).std(axis=0), **KW)",
                 marks=pytest.mark.slow),
])
def test_kernels_on_cold_inputs_stay_within_the_budget(
        tmp_path: Path, evict: Callable[[Path], None],
        run_py: Callable[..., CompletedProcess[str]], op: str) -> None:
    # A kernel that kept views of its read blocks would pin whole buffers (the pool never
    # reuses a buffer something points into): peak RSS would then grow with the file.
    path = tmp_path / "m.npy"
    rows = (64 * MiB) // 4 // 8
    x = bigarr.create(path, (rows, 8), np.float32, fill=1.0)
    x.close()
    _cold_possible(path, evict)
    proc = run_py(f"""
        import numpy as np, bigarr, bigarr.linalg
        import bigarr._compute.reductions, bigarr._compute.coldread, bigarr._compute.order
        import bigarr._compute.lazyrun, bigarr._compute.linalg
        def hwm():
            return int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) << 10
        P = {str(path)!r}
        KW = dict(budget="8MiB", threads=2, progress=False)
        before = hwm()
        {op}
        print(hwm() - before)
    """)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.split()[-1]) <= (8 + 64) * MiB, int(proc.stdout.split()[-1]) >> 20
