"""Writing is bounded like reading (issue 17): peak RSS and dirty page cache of every write path.

Issue 17 filled a 32 GiB file through the chunk iterator in shared mode at a 256 MiB budget and
saw 0.56-1.59 GiB of peak RSS, and a 1.08 GB private commit left 3.0 GB of system-wide Dirty
memory. Each write path runs here in a fresh interpreter, and the growth of ``VmHWM`` while it
runs must stay within ``budget + 64 MiB`` (the slack covers allocator and thread overheads,
never the data): filling a new file through ``iter_chunks`` (the view is written; the finished
chunk is flushed with ``msync`` and dropped before the consumer gets more than one chunk ahead),
``map_blocks`` into a new file, into a shared array in place and into an ``Appender``, and a
private ``commit`` (which may add no more than the slack to the scratch pages it writes). Dirty
memory is system-wide (other processes write too), so it is pinned where bigarr controls it:
a :class:`~bigarr._os.durable.Paced` writer never has more than its window in flight, and a
commit writes through one.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import bigarr
from bigarr._os import durable
from bigarr._os.geometry import ByteSpan

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="VmHWM and clear_refs are Linux's")

BUDGET = 32 << 20
SLACK = 64 << 20

_SCRIPT = """
import numpy as np, bigarr

def status(key):
    return int(open('/proc/self/status').read().split(key + ':')[1].split()[0]) << 10

def reset():
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # VmHWM back to the current resident memory
    return status('VmRSS')

P, D, N, B = {path!r}, {folder!r}, {rows}, {budget}
{prepare}
base = reset()
{op}
print(status('VmHWM') - base)
{verify}
"""

#: name -> (preparation, the measured operation, a check of the result)
CASES = {
    "iter_chunks fill": (
        "x = bigarr.create(P, (N, 32), np.float32, overwrite=True)",
        "for chunk, view in x.iter_chunks(B, progress=False):\n"
        "    view[:] = np.arange(chunk.rows.start, chunk.rows.stop, dtype=np.float32)[:, None]\n"
        "x.close()",
        "y = bigarr.open(P)\n"
        "assert y[0, 0] == 0 and y[-1, 31] == N - 1 and y[N // 2, 3] == N // 2\n"
        "assert float(bigarr.sum(y[:, 0], dtype=np.float64, progress=False)) == N * (N - 1) / 2",
    ),
    "iter_chunks direct fill": (  # two chunks of half the budget staged, none mapped
        "x = bigarr.create(P, (N, 32), np.float32, overwrite=True)",
        "for chunk, view in x.iter_chunks(B, progress=False, direct=True):\n"
        "    view[:] = np.arange(chunk.rows.start, chunk.rows.stop, dtype=np.float32)[:, None]\n"
        "x.close()",
        "y = bigarr.open(P)\n"
        "assert y[0, 0] == 0 and y[-1, 31] == N - 1 and y[N // 2, 3] == N // 2\n"
        "assert float(bigarr.sum(y[:, 0], dtype=np.float64, progress=False)) == N * (N - 1) / 2",
    ),
    "map_blocks new file": (  # also in test_budget_rss (every input kind)
        "x = bigarr.create(P, (N, 32), np.float32, fill=1.0, overwrite=True); x.close()",
        "bigarr.map_blocks(lambda b: b * 3, P, out=D + '/out.npy', overwrite=True, budget=B,"
        " threads=2, progress=False).close()",
        "assert float(bigarr.sum(D + '/out.npy', dtype=np.float64, progress=False)) == 96 * N",
    ),
    "map_blocks in place": (
        "x = bigarr.create(P, (N, 32), np.float32, fill=1.0, overwrite=True)",
        "bigarr.map_blocks(lambda b: b + 1, x, out=x, budget=B, threads=2, progress=False)\n"
        "x.close()",
        "assert float(bigarr.sum(P, dtype=np.float64, progress=False)) == 64 * N",
    ),
    "map_blocks appender": (
        "x = bigarr.create(P, (N, 32), np.float32, fill=1.0, overwrite=True); x.close()\n"
        "app = bigarr.Appender(D + '/grow.npy', np.float32, (32,), overwrite=True)",
        "bigarr.map_blocks(lambda b: b * 2, P, out=app, budget=B, threads=2, progress=False)\n"
        "app.close()",
        "assert bigarr.open(D + '/grow.npy').shape == (N, 32)\n"
        "assert float(bigarr.sum(D + '/grow.npy', dtype=np.float64, progress=False)) == 64 * N",
    ),
    "private commit": (
        "x = bigarr.create(P, (N, 32), np.float32, overwrite=True); x.close()\n"
        "y = bigarr.open(P, 'private')\n"
        "y[:] = 5  # the scratch pages: resident before the commit is measured",
        "assert y.commit() == N * 128",
        "assert y.scratch_bytes() == 0\n"
        "assert float(bigarr.sum(P, dtype=np.float64, progress=False)) == 5 * 32 * N",
    ),
}


def _grew(tmp_path: Path, case: str, nbytes: int, budget: int) -> int:
    prepare, op, verify = CASES[case]
    code = _SCRIPT.format(path=str(tmp_path / "f.npy"), folder=str(tmp_path),
                          rows=nbytes // 128, budget=budget, prepare=prepare, op=op,
                          verify=verify)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return int(proc.stdout.split()[-1])


def _check(tmp_path: Path, case: str, nbytes: int, budget: int = BUDGET) -> None:
    grew = _grew(tmp_path, case, nbytes, budget)
    print(f"{case}: {nbytes >> 20} MiB at {budget >> 20} MiB grew {grew / 2**20:.1f} MiB")
    assert grew <= budget + SLACK, (
        f"{case} of {nbytes >> 20} MiB grew peak RSS by {grew >> 20} MiB; the budget is "
        f"{budget >> 20} MiB (+{SLACK >> 20} MiB slack)"
    )


def test_filling_a_file_through_iter_chunks_stays_within_budget(tmp_path: Path) -> None:
    _check(tmp_path, "iter_chunks fill", 256 << 20, budget=16 << 20)  # 16 times the budget


@pytest.mark.parametrize("case", ["iter_chunks direct fill", "map_blocks in place",
                                  "map_blocks appender", "private commit"])
def test_other_write_paths_stay_within_budget(tmp_path: Path, case: str) -> None:
    _check(tmp_path, case, 128 << 20, budget=16 << 20)  # holding the data: 128 > 16 + 64


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_two_gib_writes_stay_within_budget(tmp_path: Path, case: str) -> None:
    _check(tmp_path, case, 2 << 30)


# ---- dirty page cache: the Paced writer ------------------------------------------------------
def test_paced_writer_keeps_at_most_a_window_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if durable._sync_file_range is None:
        pytest.skip("no sync_file_range: pacing is a no-op here")
    flight: dict[int, int] = {}
    most = [0]
    real_start, real_wait = durable.start_writeback, durable.wait_writeback

    def start(fd: int, offset: int, nbytes: int) -> None:
        flight[offset] = nbytes
        most[0] = max(most[0], sum(flight.values()))
        real_start(fd, offset, nbytes)

    def wait(fd: int, offset: int, nbytes: int) -> None:
        assert flight.pop(offset) == nbytes  # the oldest first, as written
        real_wait(fd, offset, nbytes)

    monkeypatch.setattr(durable, "start_writeback", start)
    monkeypatch.setattr(durable, "wait_writeback", wait)
    piece = np.arange(1 << 18, dtype=np.uint8)  # 256 KiB
    fd = os.open(tmp_path / "p.bin", os.O_RDWR | os.O_CREAT)
    try:
        paced = durable.Paced(fd, window=1 << 20)
        for i in range(16):
            paced.write(piece, i * piece.nbytes)
        durable.datasync(fd)
    finally:
        os.close(fd)
    assert most[0] == (1 << 20) + piece.nbytes  # the window, plus the piece just written
    assert len(flight) == 4  # the last window is left to the final fdatasync
    data = np.fromfile(tmp_path / "p.bin", dtype=np.uint8)
    np.testing.assert_array_equal(data, np.tile(piece, 16))


@pytest.mark.parametrize("journal", [False, True])
def test_private_commit_is_paced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 journal: bool) -> None:
    # Regression (issue 17): a commit pwrote every page, then one fdatasync, so all of it was
    # dirty at once (3.0 GB of system Dirty for 1.08 GB committed).
    if durable._sync_file_range is None:
        pytest.skip("no sync_file_range: pacing is a no-op here")
    monkeypatch.setattr(durable, "WRITE_WINDOW", 1 << 20)
    waited: list[int] = []
    real_wait = durable.wait_writeback

    def wait(fd: int, offset: int, nbytes: int) -> None:
        waited.append(nbytes)
        real_wait(fd, offset, nbytes)

    monkeypatch.setattr(durable, "wait_writeback", wait)
    path = tmp_path / "c.npy"
    bigarr.create(path, (8 << 20,), np.uint8).close()
    with bigarr.open(path, "private") as x:
        x[::4096] = 1  # one byte per page: one 8 MiB run of scratch pages
        assert x.commit(journal=journal) == 8 << 20
    assert sum(waited) >= (6 << 20) * (2 if journal else 1)  # all but a window, waited for
    assert np.load(path)[::4096].all()


# ---- Mapping.write_back: what the release does in shared mode ------------------------------------
def test_write_back_reaches_the_file_and_refuses_a_shrunk_one(tmp_path: Path) -> None:
    path = tmp_path / "w.npy"
    x = bigarr.create(path, (1 << 20,), np.uint8)
    m = x._bigarr
    assert m is not None
    whole = ByteSpan(0, m.length)
    x[:] = 3
    m.write_back(whole)
    x.advise("dontneed")  # dropped after the writeback: the data stays in the file
    with open(path, "rb") as f:
        f.seek(m.map_offset + m.data_start)
        assert set(f.read(1 << 20)) == {3}
    os.truncate(path, m.map_offset + m.data_start)  # another process cuts the file
    with pytest.raises(bigarr.errors.FileChangedError):
        m.write_back(whole)  # an error, not SIGBUS
    with pytest.raises(bigarr.errors.FileChangedError):
        x.close()  # closes, then reports the cut
    with pytest.raises(bigarr.errors.ClosedError):
        m.write_back(whole)


def test_a_failed_writeback_is_a_bigarr_error() -> None:
    # It was ignored: sync_file_range's result was never looked at.
    if not durable.can_wait_writeback():
        pytest.skip("no sync_file_range here")
    with pytest.raises(bigarr.errors.MappingError, match="writeback") as info:
        durable.wait_writeback(-1, 0, 4096)  # no such descriptor: EBADF
    assert isinstance(info.value, OSError) and info.value.errno == errno.EBADF


# ---- the flush policy: one window, writeback started as soon as a chunk is done ---------------
def test_the_flush_window_is_one_number_every_writer_uses() -> None:
    assert durable.flush_window() == durable.WRITE_WINDOW
    assert durable.flush_window(64 << 20) == 16 << 20  # a quarter of a small budget
    assert durable.flush_window(1 << 40) == durable.WRITE_WINDOW
    assert durable.Paced(-1).window == durable.WRITE_WINDOW
    from bigarr._compute.engine import Writeback
    from bigarr._compute.mapblocks import _default_flush

    assert Writeback().every == durable.WRITE_WINDOW
    assert _default_flush(256 << 20) == durable.flush_window(256 << 20)


def test_a_filled_chunk_is_queued_for_writeback_when_the_consumer_moves_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Issue 17 point 2: the finished chunk's writeback began only when the helper thread got
    # to its release, after the one before had been written and dropped, so the disk idled
    # between chunks. Now it is started before the consumer gets the next chunk.
    from bigarr._os.mapping import Mapping

    events: list[tuple[str, int]] = []
    real_start, real_wait = Mapping.start_write_back, Mapping.write_back

    def start(self: Mapping, span: ByteSpan) -> None:
        events.append(("start", span.start))
        real_start(self, span)

    def wait(self: Mapping, span: ByteSpan) -> None:
        events.append(("wait", span.start))
        real_wait(self, span)

    monkeypatch.setattr(Mapping, "start_write_back", start)
    monkeypatch.setattr(Mapping, "write_back", wait)
    x = bigarr.create(tmp_path / "f.npy", (1 << 20, 8), np.float32)  # 32 MiB
    starts, rows = [], []
    for chunk, view in x.iter_chunks(8 << 20, progress=False):
        events.append(("got", chunk.index))
        view[:] = chunk.index
        starts.append(view.ctypes.data - x._bigarr.addr)  # type: ignore[union-attr]
        rows.append(chunk.rows.start)
    x.close()
    got = [i for kind, i in events if kind == "got"]
    assert len(got) >= 4
    for i, at in enumerate(starts[:-1]):
        began = events.index(("start", at))
        assert began < events.index(("got", i + 1))  # queued before the next chunk is handed out
        assert began < events.index(("wait", at))  # and only then waited for
    data = np.load(tmp_path / "f.npy", mmap_mode="r")
    assert [float(data[r, 0]) for r in rows] == list(map(float, range(len(got))))


def test_outputs_written_through_a_mapping_start_their_writeback_when_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bigarr._compute.engine import Writeback
    from bigarr._compute.operands import parse_operand
    from bigarr._os.mapping import Mapping

    started: list[int] = []
    real = Mapping.start_write_back

    def start(self: Mapping, span: ByteSpan) -> None:
        started.append(span.nbytes)
        real(self, span)

    monkeypatch.setattr(Mapping, "start_write_back", start)
    x = bigarr.create(tmp_path / "o.npy", (1 << 16, 16), np.float32)  # 4 MiB
    out = parse_operand(x, output=True, by_key=False)
    wb = Writeback(64 << 20)  # nothing is waited for: the window is larger than the output
    view = x[: 1 << 15]
    view[:] = 7
    wb.mapped(0, out, view)
    assert started == []
    wb.chunk_done(0)
    assert sum(started) >= view.nbytes  # started at once, not when the window overflows
    wb.drain()
    del out, view
    x.close()
    assert float(np.load(tmp_path / "o.npy")[: 1 << 15].sum()) == 7 * (1 << 15) * 16


def test_a_sort_output_bypasses_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The sequential outputs (sort, argsort, take) were pwritten whole and synced once at the
    # end: all of the output dirty at once; then paced. Now (written_in_order, and the sort's
    # runs) with O_DIRECT through the sink: only the bytes on either side of a block's page
    # boundaries go through the page cache; where O_DIRECT is refused, every buffered write
    # is waited for (write-behind), so the dirty data stays bounded either way.
    from bigarr._os import sink as sink_module

    buffered: list[int] = []
    waited: list[int] = []
    real_buffered, real_wait = sink_module.Sink._buffered, sink_module.wait_writeback

    def spy(self: sink_module.Sink, done: sink_module.Written, raw: np.ndarray, offset: int,
            ) -> None:
        buffered.append(int(raw.nbytes))
        real_buffered(self, done, raw, offset)

    def wait(fd: int, offset: int, nbytes: int) -> None:
        waited.append(nbytes)
        real_wait(fd, offset, nbytes)

    direct_bytes: list[int] = []
    real_lent = sink_module.Sink._put_lent

    def lent(self: sink_module.Sink, piece: np.ndarray, offset: int) -> None:
        direct_bytes.append(int(piece.nbytes))
        real_lent(self, piece, offset)

    monkeypatch.setattr(sink_module.Sink, "_buffered", spy)
    monkeypatch.setattr(sink_module.Sink, "_put_lent", lent)
    monkeypatch.setattr(sink_module, "wait_writeback", wait)
    probe = tmp_path / "probe"
    fd = os.open(probe, os.O_RDWR | os.O_CREAT)
    try:
        os.ftruncate(fd, 1 << 16)
        with sink_module.Sink(fd, str(probe)) as s:
            s.write(np.ones(1 << 14, np.float32), 0).wait()
            direct = s.direct
    finally:
        os.close(fd)
        probe.unlink()
    buffered.clear()
    waited.clear()
    direct_bytes.clear()
    values = np.random.default_rng(3).standard_normal(1 << 21).astype(np.float32)  # 8 MiB
    with bigarr.sort(values, tmp_path / "s.npy", budget="4MiB", progress=False) as out:
        np.testing.assert_array_equal(np.asarray(out), np.sort(values))
    if direct:
        assert sum(buffered) < 1 << 20  # of 8 MiB of runs and 8 MiB of output
        assert sum(direct_bytes) > 15 << 20  # the rest: runs and output, direct
    else:
        assert sum(waited) >= 6 << 20  # the buffered writes waited for as they were written
