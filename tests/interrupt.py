"""An interrupted run for resume tests: a progress callback that raises at a chosen event."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Stop(Exception):
    """Raised by :func:`stop_at`'s callback: the run ends there, its journal as it was."""


def stop_at(n: int) -> Callable[[Any], None]:
    """A progress callback that raises :class:`Stop` at its ``n``-th event."""
    seen = 0

    def stop(event: Any) -> None:
        nonlocal seen
        seen += 1
        if seen == n:
            raise Stop

    return stop
