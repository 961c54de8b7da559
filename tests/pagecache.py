"""Page-cache eviction for tests that must read what the disk holds (one helper for all)."""

from __future__ import annotations

import os
from pathlib import Path


def evict(path: Path) -> None:
    """Drop ``path`` from the page cache (clean pages no process maps), after writing it back."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
