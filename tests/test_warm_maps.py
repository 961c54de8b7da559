"""Warm data through the mapping: huge (PMD) mappings of the file's folios, whole-unit
release-behind, and residency answered by ``cachestat`` where it can be.

The huge-mapping test detects the feature first: it maps the same warm file plainly with
:class:`mmap.mmap` and skips, saying so, when even that shows no ``FilePmdMapped`` (a kernel or
file system without large page-cache folios, or transparent huge pages off).
"""

from __future__ import annotations

import mmap
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import bigarr
from bigarr._os.cachestat import cached_pages
from bigarr._os.geometry import PAGE_SIZE, TABLE_SPAN, ByteSpan
from bigarr._os.mapping import Mapping

MIB = 1 << 20
NBYTES = 16 * MIB
CHUNK = 4 * MIB


def _smaps(addr: int) -> dict[str, int]:
    """The kB fields of the ``/proc/self/smaps`` entry holding ``addr``."""
    out: dict[str, int] = {}
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            m = re.match(r"([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                if inside:
                    break
                inside = int(m.group(1), 16) <= addr < int(m.group(2), 16)
                continue
            if inside and line.endswith("kB\n"):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def _warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(8 * MIB):
            pass


@pytest.fixture(scope="module")
def made_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("warm") / "w.npy"
    x = bigarr.create(path, NBYTES // 4, np.float32, fill=1.0)
    x.close()
    return path


@pytest.fixture
def warm_file(made_file: Path) -> Path:
    _warm(made_file)
    return made_file


def test_table_span_widens_to_whole_units_in_address_space(warm_file: Path) -> None:
    size = os.path.getsize(warm_file)
    m = Mapping(str(warm_file), "readonly", 4096, size)
    try:
        for span in (ByteSpan(0, 1), ByteSpan(5 * MIB + 3, 9 * MIB), ByteSpan(size - 4097, size)):
            wide = m.table_span(span)
            assert wide.start <= span.start and wide.stop >= min(span.stop, m.length)
            for edge, end in ((wide.start, 0), (wide.stop, m.length)):
                assert edge == end or (m.addr + edge) % TABLE_SPAN == 0
            assert wide.start > span.start - TABLE_SPAN and wide.stop < span.stop + TABLE_SPAN
    finally:
        m.close()


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="no /proc/self/smaps")
def test_warm_chunks_are_huge_mapped_and_released(warm_file: Path) -> None:
    # Feature detection: does a plain whole-file mapping of this warm file get PMDs?
    with open(warm_file, "rb") as f:
        plain = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)
    view = np.frombuffer(plain, np.uint8)
    np.add.reduce(view[:: PAGE_SIZE])
    plain_pmd = _smaps(view.ctypes.data).get("FilePmdMapped", 0)
    del view
    plain.close()
    if plain_pmd == 0:
        pytest.skip("a plain mmap of a warm file shows FilePmdMapped 0 here (no large page-cache "
                    "folios or THP off): nothing for bigarr to match")
    x = bigarr.open(warm_file)
    seen_pmd, seen_rss = [], []
    total = 0.0
    for _chunk, block in x.iter_chunks(2 * CHUNK):  # chunks of CHUNK: two may be mapped
        total += float(np.add.reduce(block, dtype=np.float64))
        fields = _smaps(x._bigarr.addr)
        seen_pmd.append(fields.get("FilePmdMapped", 0))
        seen_rss.append(fields.get("Rss", 0))
    x.close()
    assert total == NBYTES // 4
    assert len(seen_pmd) >= 4
    # Each chunk holds at least one whole 2 MiB unit of the file, touched: a PMD each.
    assert min(seen_pmd[:-1]) >= TABLE_SPAN // 1024, seen_pmd
    # Release-behind keeps what is mapped to the chunks in flight plus the units at their
    # edges, never the file (16 MiB).
    assert max(seen_rss) * 1024 <= 2 * CHUNK + 2 * TABLE_SPAN + MIB, seen_rss


def test_residency_counts_without_mincore_when_all_or_none_cached(
    warm_file: Path, evict: Callable[[Path], None]
) -> None:
    size = os.path.getsize(warm_file)
    ro = Mapping(str(warm_file), "readonly", 4096, size)
    truth = Mapping(str(warm_file), "private", 4096, size)  # private: always mincore
    try:
        whole = ByteSpan(0, ro.length)
        fd = os.open(warm_file, os.O_RDONLY)
        try:
            counted = cached_pages(fd, 0, size)
        finally:
            os.close(fd)
        if counted is not None:
            assert counted == -(-size // PAGE_SIZE)  # every page of the warm file
        assert ro.residency(whole).all()
        evict(warm_file)
        assert not ro.residency(whole).any()
        assert not truth.residency(whole).any()
        _warm(warm_file)
        fd = os.open(warm_file, os.O_RDONLY)
        try:  # some cached, some not
            os.posix_fadvise(fd, 8 * MIB, 8 * MIB, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        got, want = ro.residency(whole), truth.residency(whole)
        assert np.array_equal(got, want)
    finally:
        ro.close()
        truth.close()
