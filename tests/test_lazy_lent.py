"""A lazy expression written to a file (``LazyArray.to_npy``) hands each chunk's result to the
O_DIRECT sink without a copy, and the pages two chunks share are written whole with O_DIRECT.

Guards the fast path of the lazy standardize-to-file benchmark (bench/README.md, "Lazy
standardize and the demo, fifth session against the fourth"): a result wrongly judged shared
(``placed.unshared``) would be copied through the sink's staging buffers, and a chunk boundary
written buffered would wait for the direct writes in flight; both are counted here, not timed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr._compute import lazyeval, placed
from bigarr._os.sink import Sink

pytestmark = pytest.mark.skipif(not placed.available(), reason="the _alloc extension is not built")


@pytest.mark.parametrize("tile_bytes", [lazyeval.TILE_BYTES, 0], ids=["tiles", "whole chunks"])
def test_standardize_to_npy_lends_every_chunk_and_writes_shared_pages_direct(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tile_bytes: int) -> None:
    monkeypatch.setattr(lazyeval, "TILE_BYTES", tile_bytes)
    seen: list[tuple[bool, int, bool]] = []  # (lent, bytes, placed for its file offset)
    sinks: list[Sink] = []
    direct: list[bool] = []
    buffered: list[int] = []
    write, put_buffered = Sink.write, Sink._buffered

    def spy_write(self: Sink, data: Any, offset: int, *, lend: bool = False) -> Any:
        seen.append((lend, data.nbytes, (data.ctypes.data - offset) % 4096 == 0))
        sinks.append(self)
        direct.append(self.direct)  # (False once the sink is closed)
        return write(self, data, offset, lend=lend)

    def spy_buffered(self: Sink, done: Any, raw: Any, offset: int) -> None:
        buffered.append(offset)
        put_buffered(self, done, raw, offset)

    monkeypatch.setattr(Sink, "write", spy_write)
    monkeypatch.setattr(Sink, "_buffered", spy_buffered)
    # 100,001 rows of 128 bytes after numpy's 128-byte header: chunk boundaries (cut on the
    # input's pages) fall inside the output's pages, and its last page is partial; 8 MiB
    # gives chunks of about 640 KiB, above the 256 KiB from which results are placed
    x = np.random.default_rng(12).standard_normal((100_001, 32)).astype(np.float32) * 3 + 7
    np.save(tmp_path / "x.npy", x)
    lx = bigarr.lazy(str(tmp_path / "x.npy"))
    z = (lx - lx.mean(axis=0)) / lx.std(axis=0)
    z.to_npy(str(tmp_path / "z.npy"), budget="8MiB", threads=2, progress=False).close()

    w = x.astype(np.float64)  # the oracle in float64 (numpy's float32 mean drifts by 1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "z.npy"), (w - w.mean(axis=0)) / w.std(axis=0),
                               rtol=1e-5, atol=1e-5)
    assert len(seen) > 4 and all(lent for lent, _, _ in seen)  # placed.unshared held
    # results of 256 KiB or more are placed where their O_DIRECT writes take them as they are
    big = [at_page for _, nbytes, at_page in seen if nbytes >= 256 << 10]
    assert len(big) > 4 and all(big)
    if not all(direct):
        pytest.skip("O_DIRECT refused here: everything is written buffered")
    if len(big) == len(seen):
        assert all(s._made == 0 for s in set(sinks))  # no staging buffer: nothing was copied
    # only the file's last, partial page (a direct write never extends the file) is buffered
    assert len(buffered) <= 1
