from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bigarr._os.geometry import ByteSpan, align_down, align_up, format_bytes, parse_size
from bigarr.errors import BudgetError, RegionError

PAGES = st.sampled_from([4096, 16384, 65536])


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 20), PAGES)
def test_outward_contains_and_is_aligned(start: int, length: int, page: int) -> None:
    span = ByteSpan(start, start + length)
    out = span.outward(page)
    assert out.start % page == 0 and out.stop % page == 0
    if length:
        assert out.start <= span.start and out.stop >= span.stop
        assert out.start > span.start - page and out.stop < span.stop + page


@given(st.integers(0, 1 << 40), st.integers(0, 1 << 20), PAGES)
def test_inward_is_contained_and_aligned(start: int, length: int, page: int) -> None:
    span = ByteSpan(start, start + length)
    inner = span.inward(page)
    assert inner.start % page == 0 and inner.stop % page == 0
    assert span.start <= inner.start <= inner.stop <= span.stop or inner.nbytes == 0


def test_clip_and_pages() -> None:
    assert ByteSpan(10, 100).clip(ByteSpan(50, 60)) == ByteSpan(50, 60)
    assert ByteSpan(0, 10).clip(ByteSpan(20, 30)).nbytes == 0
    assert list(ByteSpan(4095, 4097).pages(4096)) == [0, 1]
    assert align_up(1, 4096) == 4096 and align_down(4097, 4096) == 4096


def test_bad_span() -> None:
    with pytest.raises(RegionError):
        ByteSpan(5, 4)
    with pytest.raises(IndexError):
        ByteSpan(-1, 4)


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [("256MiB", 256 << 20), ("2 GiB", 2 << 30), ("1.5KiB", 1536), ("10MB", 10_000_000),
     (4096, 4096), ("4096", 4096)],
)
def test_parse_size(text: str | int, nbytes: int) -> None:
    assert parse_size(text) == nbytes


@pytest.mark.parametrize("bad", ["", "12 parsecs", "-1MiB", 0, -5, True, 1.5, "MiB"])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(BudgetError) as info:
        parse_size(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_format_bytes() -> None:
    assert format_bytes(3 << 20) == "3.0 MiB"
    assert format_bytes(12) == "12 B"
