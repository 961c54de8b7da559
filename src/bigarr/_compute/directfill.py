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

Where userfaultfd cannot watch (before Linux 6.7, or not allowed to this process), nothing
would see a write into a chunk on its way, so the loop waits instead: the chunk is written and
mapped from the file again before the loop gets the next one (no overlap of filling and
writing; the disk is still written with ``O_DIRECT``). A later write through an old view then
lands in the file's mapping as without ``direct``: never lost, never a crash.

The bytes at the edges of the array that share a page with other data (never for an array
made by ``bigarr.create``, whose data is page-aligned, except the last partial page) stay
mapped from the file and are written through the page cache as usual.

Memory: chunks are planned at a third of the budget, at most :data:`CHUNK_MAX` (the disk
waits for the first one to be filled): the one being filled, the next one's memory made
ready by a helper thread (allocating fresh pages costs more CPU time than filling them), and
the rest of the budget in flight to the disk (a deeper queue evens out the loop's pace).
Under three chunks of :data:`SPARE_MIN`, chunks are half the budget and nothing is made
ahead. Nothing is prefetched or released (staged memory goes when its range is unstaged).

What the caller gives up (the reason this is opt-in): other mappings of the file, in this
process or others, see a chunk's bytes only once it is written; ``x.flush()`` does not write
the chunk in hand (the step after it, the loop's end and ``close()`` do); a write by another
thread into the chunk being written, in the instant between its last check and its unstaging,
is lost (without userfaultfd: a write by another thread while the chunk is written). Where
``O_DIRECT`` is refused (tmpfs, some FUSE file systems) the sink writes buffered instead,
with the same semantics.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from bigarr._os.geometry import PAGE_SIZE, ByteSpan
from bigarr._os.mapping import Mapping, Spare
from bigarr._os.sink import Sink, Written
from bigarr._os.workers import Workers
from bigarr._plan.chunks import Chunk
from bigarr.errors import BigArrError, UnsupportedError

if TYPE_CHECKING:
    from bigarr._core.tracking import WriteWatch

__all__ = ["CHUNK_MAX", "SPARE_MIN", "DirectFill", "staged"]

CHUNK_MAX = 32 << 20
"""Largest chunk of a direct fill (bytes). The disk waits for the first chunk to be filled,
and the rest of the budget holds more chunks in flight instead (a deeper queue)."""

SPARE_MIN = 4 << 20
"""Smallest chunk (bytes) whose memory a helper thread makes ready ahead; with a budget under
three of these, chunks are half the budget and no memory is made ahead."""


class DirectFill:
    """The staged chunks of one direct fill of a shared mapping, and the sink that writes them.

    :meth:`stage` before a chunk is handed out, :meth:`commit` when the loop leaves it,
    :meth:`finish` at the end (also run by the mapping's ``close()``). Thread-safe, idempotent.

    A forked child inherits the fill but not its threads (the sink's writers, the spare's
    maker; a lock one held stays held) nor its watches, and its staged chunk is the child's own
    copy: the file is the parent's to write. In the child :meth:`finish` (the loop or the array
    closed there) does nothing, and :meth:`stage` and :meth:`commit` raise
    :class:`~bigarr.errors.UnsupportedError`.
    """

    def __init__(self, mapping: Mapping, in_flight: int = 1, *, spares: bool = False) -> None:
        self.mapping = mapping
        self.in_flight = max(1, in_flight)
        # One chunk's memory made ready ahead by a helper thread (the budget holds it):
        # allocating fresh pages cost more CPU time than filling them (0.6-0.8 s per GiB of
        # 4 KiB pages here, against 0.08 s to fill them), time the loop would otherwise wait.
        self._maker = Workers(1, "bigarr-stage") if spares else None
        self._spare: Future[Spare] | None = None
        self.sink = Sink(mapping.fd, mapping.path, direct=True)
        self._lock = threading.RLock()
        self._current: ByteSpan | None = None  # staged, being filled
        # staged, on its way, watched for writes (None where nothing can watch: landed at once)
        self._flights: deque[tuple[ByteSpan, Written, WriteWatch | None]] = deque()
        self._finished = False
        self._pid = os.getpid()
        from bigarr._core.tracking import watch_writes  # (imported only by a direct fill)

        self._watch = watch_writes
        mapping.on_close(self.finish)

    def stage(self, view: Any) -> None:
        """Stage the pages of ``view`` (a contiguous chunk of the mapping) before it is used."""
        self._check_process()
        if not (view.flags.c_contiguous or view.flags.f_contiguous) or not view.nbytes:
            return  # a chunk of a strided view: through the mapping, as without direct
        with self._lock:
            start = self.mapping.offset_of(view)
            span = ByteSpan(start, start + int(view.nbytes))
            spare = self._take_spare(span.inward(PAGE_SIZE).nbytes)
            try:
                self._current = self.mapping.stage(span, spare)
            finally:
                if spare is not None:
                    spare.free()  # (not used: another size; a no-op when spent)

    def _take_spare(self, nbytes: int) -> Spare | None:
        """The spare made ready for this chunk (if any), and the next one ordered (chunks of
        a plan have one size but the first and the last)."""
        if self._maker is None or nbytes == 0:
            return None
        ready, self._spare = self._spare, self._maker.submit(Spare, nbytes)
        try:
            return ready.result() if ready is not None else None
        except (OSError, BigArrError):
            return None  # only memory made ahead: staging makes its own

    def commit(self) -> None:
        """The loop left the current chunk: start writing it, then put the oldest chunks
        beyond ``in_flight`` (waited for: on the disk) back on the file."""
        self._check_process()
        with self._lock:
            current, self._current = self._current, None
            if current is not None and current.nbytes:
                watch = self._watch(self.mapping.addr + current.start, current.nbytes)
                try:
                    written = self._write(current)
                except BaseException:  # kept staged: finish() tries again
                    if watch is not None:
                        watch.close()
                    self._current = current
                    raise
                self._flights.append((current, written, watch))
                if watch is None:
                    # nothing can see a late write into it (no userfaultfd): on the disk and
                    # mapped from the file again before the loop goes on, so a write through
                    # an old view lands in the mapping (as without direct), never lost
                    while self._flights:
                        self._land()
            while len(self._flights) > self.in_flight:
                self._land()

    def _write(self, pages: ByteSpan) -> Written:
        data = self.mapping.root[pages.start:pages.stop]
        return self.sink.write(data, self.mapping.map_offset + pages.start, lend=True)

    def _land(self) -> None:
        """Wait for the oldest chunk in flight, write its late pages, map the file again."""
        pages, written, watch = self._flights.popleft()
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
        if os.getpid() != self._pid:  # a forked child's copy: the parent finishes the fill
            self._finished = True
            return
        with self._lock:
            if self._finished:
                return
            self._finished = True
            try:
                self.commit()
                while self._flights:
                    self._land()
            finally:
                try:
                    self.sink.close()  # (waits for its writer threads)
                finally:
                    self._end_spares()
                    while self._flights:  # after a failure: no staged range stays behind
                        pages, _written, watch = self._flights.popleft()
                        if watch is not None:
                            watch.close()
                        self.mapping.unstage(pages)

    def _check_process(self) -> None:
        if os.getpid() != self._pid:
            raise UnsupportedError(
                "A direct fill (iter_chunks(direct=True)) cannot go on in a forked child: its "
                "writer threads stayed in the parent, and the file is the parent's to write. "
                "Fork before the loop, or open the file again in the child."
            )

    def _end_spares(self) -> None:
        maker, self._maker = self._maker, None
        if maker is not None:
            maker.close()
        spare, self._spare = self._spare, None
        if spare is not None:
            with contextlib.suppress(OSError, BigArrError):
                spare.result().free()


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
