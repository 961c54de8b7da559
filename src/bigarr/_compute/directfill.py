"""Direct fills: ``iter_chunks(direct=True)`` writes each chunk with ``O_DIRECT`` as it is left.

Issue 17 asks a fill through ``iter_chunks`` to reach the disk's write rate. Stores through a
shared mapping land in page-cache pages that the kernel must allocate, dirty, write back and
reclaim one 4 KiB page at a time; on this project's virtio disk that ran at 0.19x the disk's
``O_DIRECT`` rate. A direct fill keeps the mapping but takes the page cache out of the path:

1. before a chunk is handed out, the whole pages of its range in the mapping are *staged*
   (:meth:`bigarr._os.mapping.Mapping.stage`): anonymous memory holding the file's current
   bytes is put at the same addresses. ``view`` and ``x`` still alias each other: whatever
   the loop writes, through either, lands in the staged memory and reads back as written;
2. when the loop moves on (or ends, breaks, raises, or ``x.close()`` is called), the chunk's
   staged memory is handed to the file's :class:`~bigarr._os.sink.Sink`, which writes it with
   ``O_DIRECT`` from that memory (no copy, two 16 MiB writes in flight) while the loop fills
   the next chunk. Meanwhile the chunk is *watched*: an asynchronous userfaultfd
   write-protection (:func:`bigarr._core.tracking.watch_writes`) notes every page written
   into it (through an old view, or ``x``), at no cost until such a write;
3. at the step after, once those writes are on the disk, the pages written meanwhile are
   written again (until none is left), and the range is mapped from the file again
   (:meth:`~bigarr._os.mapping.Mapping.unstage`). The direct write dropped the file's cached
   pages of the range (the kernel invalidates them, and unmaps them from every mapping), so
   reads through the mapping then show the written bytes.

Where userfaultfd cannot watch (before Linux 6.7, or not allowed to this process), the chunk
is made read-only instead while it is written: a write into it then crashes the process
(SIGSEGV) rather than being lost.

The bytes at the edges of the array that share a page with other data (never for an array
made by ``bigarr.create``, whose data is page-aligned, except the last partial page) stay
mapped from the file and are written through the page cache as usual.

Memory: at most two chunks are staged at once (the one being filled and the one being
written), so chunks are planned at half the budget; nothing is prefetched or released (the
staged memory goes when its range is unstaged).

What the caller gives up (the reason this is opt-in): other mappings of the file, in this
process or others, see a chunk's bytes only once it is written; ``x.flush()`` does not write
the chunk in hand (the step after it, the loop's end and ``close()`` do); a write by another
thread into the chunk being written, in the instant between its last check and its unstaging,
is lost; and without userfaultfd, the crash above. Where ``O_DIRECT`` is refused (tmpfs, some
FUSE file systems) the sink writes buffered instead, with the same semantics.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from bigarr._os.geometry import ByteSpan
from bigarr._os.mapping import Mapping
from bigarr._os.sink import Sink, Written
from bigarr._plan.chunks import Chunk

if TYPE_CHECKING:
    from bigarr._core.tracking import WriteWatch

__all__ = ["DirectFill", "staged"]


class DirectFill:
    """The staged chunks of one direct fill of a shared mapping, and the sink that writes them.

    :meth:`stage` before a chunk is handed out, :meth:`commit` when the loop leaves it,
    :meth:`finish` at the end (also run by the mapping's ``close()``). Thread-safe, idempotent.
    """

    def __init__(self, mapping: Mapping) -> None:
        self.mapping = mapping
        self.sink = Sink(mapping.fd, mapping.path, direct=True)
        self._lock = threading.RLock()
        self._current: ByteSpan | None = None  # staged, being filled
        # staged, on its way, watched for writes (or read-only where nothing can watch)
        self._flight: tuple[ByteSpan, Written, WriteWatch | None] | None = None
        self._finished = False
        from bigarr._core.tracking import watch_writes  # (imported only by a direct fill)

        self._watch = watch_writes
        mapping.on_close(self.finish)

    def stage(self, view: Any) -> None:
        """Stage the pages of ``view`` (a contiguous chunk of the mapping) before it is used."""
        if not (view.flags.c_contiguous or view.flags.f_contiguous) or not view.nbytes:
            return  # a chunk of a strided view: through the mapping, as without direct
        with self._lock:
            start = self.mapping.offset_of(view)
            self._current = self.mapping.stage(ByteSpan(start, start + int(view.nbytes)))

    def commit(self) -> None:
        """The loop left the current chunk: start writing it, then put the previous one (now
        on the disk) back on the file."""
        with self._lock:
            current, self._current = self._current, None
            flight = None
            if current is not None and current.nbytes:
                watch = self._watch(self.mapping.addr + current.start, current.nbytes)
                if watch is None:  # no userfaultfd: a late write must fail, not vanish
                    self.mapping.protect(current, writable=False)
                try:
                    written = self._write(current)
                except BaseException:  # kept staged and writable: finish() tries again
                    if watch is None:
                        self.mapping.protect(current, writable=True)
                    else:
                        watch.close()
                    self._current = current
                    raise
                flight = (current, written, watch)
            try:
                self._land()
            finally:
                self._flight = flight

    def _write(self, pages: ByteSpan) -> Written:
        data = self.mapping.root[pages.start:pages.stop]
        return self.sink.write_from(data, self.mapping.map_offset + pages.start)

    def _land(self) -> None:
        flight, self._flight = self._flight, None
        if flight is None:
            return
        pages, written, watch = flight
        try:
            written.wait()
            # Pages written into the chunk while it was on its way (through an old view, or
            # x): written again, until none is left (each scan protects what it reports).
            while watch is not None and (late := watch.scan(reset=True)):
                for start, stop in late:
                    self._write(ByteSpan(pages.start + start, pages.start + stop)).wait()
        finally:  # written, or failed (EIO, ENOSPC: raised): the range maps the file again
            if watch is not None:
                watch.close()
            self.mapping.unstage(pages)

    def finish(self) -> None:
        """Write what is staged, wait for it, map the file again and end the sink."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            try:
                self.commit()
                self._land()
            finally:
                self.sink.close()


def staged(steps: Iterator[tuple[Chunk, Any]], fill: DirectFill) -> Iterator[tuple[Chunk, Any]]:
    """``steps`` with each chunk staged before it is handed out and committed when the
    consumer asks for the next; the last one, and one left by a break or an exception, are
    written when the iteration ends (or the mapping closes)."""
    try:
        for chunk, view in steps:
            fill.stage(view)
            yield chunk, view
            fill.commit()
    finally:
        try:
            steps.close()  # type: ignore[attr-defined]
        finally:
            fill.finish()
