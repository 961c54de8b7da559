"""Cold reads: input chunks that are not in memory are read with ``preadv``, not faulted in.

Page faults plus the kernel's readahead do not keep a disk busy the way large reads do
(issue 15: a cold scan through the mapping reached 51-66% of a 16 MiB ``readinto`` loop).
So for each chunk of a read-only input the engine asks this module for the chunk's block,
and the choice between the two ways of getting it is made here, once per chunk:

* **mapped** (zero-copy): the chunk's pages are mostly in the page cache (``mincore``, at
  least :data:`COLD_FRACTION` of them), or its block is not one contiguous run of the file,
  or it is smaller than :data:`MIN_COLD_BYTES`. The block is the view into the mapping, and
  the engine prefetches and releases it as before.
* **read**: the chunk's bytes are read with ``preadv`` into a reused, page-aligned buffer
  (:class:`bigarr._os.pread.BufferPool`), in pieces of :data:`PIECE_BYTES` by :data:`READERS`
  threads, so the disk always has requests queued. By default (``BIGARR_COLD_READS=direct``)
  with ``O_DIRECT``: no page cache and no copy, so a cold scan leaves the cache as it found it;
  only chunks with at most :data:`DIRECT_FRACTION` of their pages resident go this way (the
  others' cached pages would be read from the disk again), and file systems that refuse
  ``O_DIRECT`` (tmpfs, some network and FUSE file systems) get buffered reads. Buffered reads
  (``BIGARR_COLD_READS=buffered``, or where ``O_DIRECT`` is refused) go through a descriptor
  of the run's own with readahead off (``POSIX_FADV_RANDOM``), and each piece's pages that
  were not cached when the run started are dropped again at once (``POSIX_FADV_DONTNEED``);
  what readahead still brings in past them is dropped when the run ends. The block is
  read-only, like the view of a read-only mapping it stands for.

Measured here (issue 15, a shared 2-vCPU VM, 512 MiB): 4 threads reading 8 MiB pieces with
``O_DIRECT`` reached 1.3-1.6x a 16 MiB ``readinto`` loop in 4 of 5 interleaved repeats, and
buffered pieces 1.05-1.3x; see bench/README.md for the streaming numbers.

Only inputs of a read-only mapping qualify (``bigarr.open(path)``, paths, re-mapped
``numpy.memmap`` files): a shared mapping's user may write through its blocks, and a private
mapping's edits live only in memory. An input whose file is also an output of the run (an
in-place ``map_blocks``) always uses its mapping. Iterations (``iter_chunks``) hand the user
views of the mapping and never come here.

When the engine prefetches a chunk (:meth:`ColdReads.start`), its read is queued on one I/O
thread, in chunk order, so the disk sees one sequential stream of large reads while the
workers compute; a worker taking the block waits for that read. Without prefetch the worker
reads the block itself. Buffers in use are at most the chunks in flight, which the memory
plan already charges as the chunk's pages would have been; a buffer is reused only when
nothing still points into it (a function that keeps its input block keeps correct data).

``BIGARR_COLD_READS`` (read when a run starts): ``direct`` (the default), ``buffered``, or
``off`` (always the mapping, as before this path existed; for comparisons).
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from bigarr._compute.operands import Stream
from bigarr._os.geometry import PAGE_SIZE, ByteSpan, align_down, align_up
from bigarr._os.mapping import Mapping
from bigarr._os.pread import Buffer, BufferPool, RangeReader
from bigarr._os.workers import Workers
from bigarr._plan.chunks import Chunk
from bigarr.errors import MappingError, UnsupportedError

__all__ = ["COLD_FRACTION", "MIN_COLD_BYTES", "ColdReads", "cold_read_mode"]

#: A chunk is read (not mapped) when less than this share of its pages is resident.
COLD_FRACTION = 0.5

#: With ``BIGARR_COLD_READS=direct``, chunks with at most this share of resident pages are
#: read with ``O_DIRECT`` (the resident ones again from the disk), others buffered.
DIRECT_FRACTION = 1 / 16

#: Blocks smaller than this are always used through the mapping: a buffer and a read's fixed
#: costs buy nothing there.
MIN_COLD_BYTES = 1 << 20

#: Each block is read in pieces of this many bytes, by :data:`READERS` threads at once, so the
#: disk always has requests queued while earlier pieces are copied (a single large read with
#: readahead off leaves the disk idle while the kernel copies; readahead on spills into the
#: next chunk's pages, which then could not be told apart from pages cached before).
PIECE_BYTES = 8 << 20

#: Threads reading pieces: the reads in flight.
READERS = 4

#: Runs of fewer chunks use the mapping. A read block is used only once all of it has arrived,
#: so reads overlap computing only across chunks; with one or two chunks the mapping, whose
#: page faults let the computation follow the disk page by page, was faster (issue 15: a
#: 64 MiB file, one chunk at the default budget, 5 interleaved repeats on the shared VM,
#: throughput over a 16 MiB ``readinto`` loop of the same repeat: mapping 0.40-2.68x,
#: ``O_DIRECT`` 0.17-0.73x). Buffers cost too: faulting in a fresh 64 MiB buffer took about
#: 140 ms there and freeing it 35 ms, paid once per run and spread over its chunks.
MIN_COLD_CHUNKS = 4

_MODES = ("buffered", "direct", "off")


def cold_read_mode() -> str:
    """The cold-read mode of runs started now: ``BIGARR_COLD_READS``, ``direct`` by
    default (an unknown value counts as the default)."""
    mode = os.environ.get("BIGARR_COLD_READS", "direct").strip().lower()
    return mode if mode in _MODES else "direct"


@dataclass(frozen=True, slots=True)
class _Plan:
    """How one chunk's block is read: file bytes ``start:stop``, and the page-cache ranges
    (file offsets) to drop afterwards: the pages that were not resident before."""

    start: int
    stop: int
    direct: bool
    drop: tuple[tuple[int, int], ...]


@dataclass(slots=True)
class _Read:
    """A block's read in progress: its buffer (byte 0 is file offset ``base``) and pieces."""

    chunk: Chunk
    buf: Buffer
    base: int
    plan: _Plan
    pieces: list[Future[None]]


class _Input:
    """The cold-read state of one input stream in one run."""

    def __init__(self, stream: Stream, reader: RangeReader, keep: int) -> None:
        self.stream = stream
        self.reader = reader
        self.pool = BufferPool(PAGE_SIZE, keep)
        self.lock = threading.Lock()
        self.plans: dict[int, _Plan | None] = {}
        self.started: dict[int, _Read] = {}
        self.lent: dict[int, Buffer] = {}
        self.reads = 0
        """Chunks read (not mapped) so far."""
        # Which pages were in the page cache when the run started, one bit per page. Taken
        # now, not per chunk: reads bring in more than they ask for (a page marked for
        # readahead by an earlier read of the file starts asynchronous readahead, which the
        # read's own POSIX_FADV_RANDOM does not stop), and those pages must not count as
        # cached before, or the chunks after them would be mapped and never dropped.
        assert stream.mapping is not None and stream.array is not None
        whole = stream.span(stream.array)
        assert whole is not None
        self.first = align_down(whole.start, PAGE_SIZE)
        self.before = _snapshot(stream.mapping, ByteSpan(self.first, whole.stop))

    def plan(self, chunk: Chunk) -> _Plan | None:
        """The chunk's read, or ``None`` for the mapping: decided once, on first asking."""
        with self.lock:
            if chunk.index in self.plans:
                return self.plans[chunk.index]
        plan = self._decide(chunk)
        with self.lock:
            return self.plans.setdefault(chunk.index, plan)

    def _decide(self, chunk: Chunk) -> _Plan | None:
        stream, mapping = self.stream, self.stream.mapping
        assert mapping is not None
        view = stream.block(chunk)
        if view.nbytes < MIN_COLD_BYTES or not (view.flags.c_contiguous
                                                or view.flags.f_contiguous):
            return None
        span = stream.span(view)
        if span is None or mapping.closed:
            return None
        lo = (align_down(span.start, PAGE_SIZE) - self.first) // PAGE_SIZE
        hi = (align_up(span.stop, PAGE_SIZE) - self.first) // PAGE_SIZE
        bits = np.unpackbits(self.before[lo // 8:-(-hi // 8)])  # only this chunk's bytes
        resident = bits[lo % 8:lo % 8 + hi - lo].astype(bool)
        if resident.size == 0 or np.count_nonzero(resident) >= COLD_FRACTION * resident.size:
            self.pool.clear()  # mapped pages take the place of idle buffers in the budget
            return None
        start = mapping.map_offset + span.start
        stop = start + span.nbytes
        first = mapping.map_offset + align_down(span.start, PAGE_SIZE)
        # runs of pages that were not resident: edges where residency changes
        cold = ~resident
        edges = np.flatnonzero(np.diff(cold.astype(np.int8))) + 1
        bounds = [0, *edges.tolist(), resident.size]
        drop = tuple((first + a * PAGE_SIZE, first + b * PAGE_SIZE)
                     for a, b in itertools.pairwise(bounds) if cold[a])
        # O_DIRECT reads cached pages from the disk again, so only nearly cold chunks use it.
        # Any buffered read could start readahead into the chunks after it (see above), whose
        # pages O_DIRECT would then read a second time.
        direct = bool(self.reader.can_direct
                      and np.count_nonzero(resident) <= DIRECT_FRACTION * resident.size)
        return _Plan(start, stop, direct, drop)

    def restore(self) -> None:
        """Drop from the page cache every page of the input that was not cached when the run
        started (what the reads' own drops missed: readahead past the last chunk read, reads
        cut short by an error)."""
        mapping = self.stream.mapping
        if self.reads == 0 or mapping is None or mapping.closed:
            return
        cold = ~np.unpackbits(self.before).astype(bool)
        edges = np.flatnonzero(np.diff(cold.astype(np.int8))) + 1
        bounds = [0, *edges.tolist(), cold.size]
        base = mapping.map_offset + self.first
        for a, b in itertools.pairwise(bounds):
            if cold[a]:
                self.reader.drop(base + a * PAGE_SIZE, base + b * PAGE_SIZE)

    def submit(self, chunk: Chunk, plan: _Plan, io: Workers) -> _Read:
        """Queue the reads of ``chunk``'s block, in pieces, on ``io``."""
        base = align_down(plan.start, PAGE_SIZE)
        buf = self.pool.take(align_up(plan.stop, PAGE_SIZE) - base)
        cuts = [plan.start, *range(base + PIECE_BYTES, plan.stop, PIECE_BYTES), plan.stop]
        pieces = [io.submit(self._piece, buf, base, a, b, plan)
                  for a, b in itertools.pairwise(cuts)]
        return _Read(chunk, buf, base, plan, pieces)

    def _piece(self, buf: Buffer, base: int, start: int, stop: int, plan: _Plan) -> None:
        self.reader.read(buf, base, start, stop, direct=plan.direct)
        if not plan.direct:  # what this piece brought into the page cache goes again
            for a, b in plan.drop:
                lo, hi = max(a, align_down(start, PAGE_SIZE)), min(b, align_up(stop, PAGE_SIZE))
                if lo < hi:
                    self.reader.drop(lo, hi)

    def finish(self, read: _Read) -> np.ndarray[Any, Any]:
        """Wait for a read's pieces; the block over its buffer (read-only)."""
        try:
            for piece in read.pieces:
                piece.result()
        except BaseException:
            for piece in read.pieces:  # the buffer is free only when no piece writes it
                if not piece.cancel():
                    piece.exception()
            self.pool.give(read.buf)
            raise
        view = self.stream.block(read.chunk)
        block: np.ndarray[Any, Any] = np.ndarray(view.shape, view.dtype, buffer=read.buf.array,
                                                 offset=read.plan.start - read.base,
                                                 strides=view.strides)
        block.flags.writeable = False
        with self.lock:
            self.lent[id(block)] = read.buf
            self.reads += 1
        return block

    def done(self, block: np.ndarray[Any, Any]) -> bool:
        with self.lock:
            buf = self.lent.pop(id(block), None)
        if buf is None:
            return False
        self.pool.give(buf, block)
        return True


def _snapshot(mapping: Mapping, span: ByteSpan) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """Residency of ``span``'s pages, packed one bit per page (``mincore`` a GiB at a time:
    about 10 ms and 256 KiB of scratch per GiB; the bits keep 32 KiB per GiB)."""
    parts = []
    step = 1 << 30
    for start in range(span.start, span.stop, step):
        parts.append(np.packbits(mapping.residency(ByteSpan(start, min(span.stop,
                                                                       start + step)))))
    return np.concatenate(parts) if parts else np.zeros(0, np.uint8)


class ColdReads:
    """The cold-read path of one run (see the module docstring); :meth:`for_run` makes it."""

    def __init__(self, inputs: dict[int, _Input]) -> None:
        self._inputs = inputs
        self._io = Workers(READERS, "bigarr-read")  # the reader threads, started on first use

    @classmethod
    def for_run(cls, streams: Sequence[Stream], in_flight: int, mode: str | None = None, *,
                chunks: int = MIN_COLD_CHUNKS) -> ColdReads | None:
        """The cold reads of a run over ``streams`` with ``in_flight`` chunks at once and
        ``chunks`` chunks in all, or ``None`` when no stream qualifies, the mode is ``off``,
        or the run has fewer than :data:`MIN_COLD_CHUNKS` chunks."""
        mode = cold_read_mode() if mode is None else mode
        if mode == "off" or chunks < MIN_COLD_CHUNKS:
            return None
        written: set[tuple[int, int]] = set()
        for s in streams:
            if s.output and s.mapping is not None and not s.mapping.closed:
                st = os.fstat(s.mapping.fd)
                written.add((st.st_dev, st.st_ino))
        inputs: dict[int, _Input] = {}
        for s in streams:
            m = s.mapping
            if (s.output or m is None or s.array is None or m.closed or m.length == 0
                    or m.access != "readonly" or s.nbytes < MIN_COLD_BYTES):
                continue
            st = os.fstat(m.fd)
            if (st.st_dev, st.st_ino) in written:
                continue
            try:
                reader = RangeReader(m.fd, m.path if m.named else None,
                                     direct=mode == "direct")
            except (UnsupportedError, OSError):
                continue
            try:
                inputs[id(s)] = _Input(s, reader, max(1, in_flight))
            except (UnsupportedError, MappingError):  # no mincore here: the mapping it is
                reader.close()
        return cls(inputs) if inputs else None

    def _input(self, stream: Stream, chunk: Chunk) -> tuple[_Input, _Plan] | None:
        entry = self._inputs.get(id(stream))
        if entry is None:
            return None
        plan = entry.plan(chunk)
        return None if plan is None else (entry, plan)

    def start(self, stream: Stream, chunk: Chunk) -> bool:
        """Prefetch: queue the reads of ``chunk``'s block. ``False`` when the chunk uses the
        mapping (the caller then prefetches its pages)."""
        found = self._input(stream, chunk)
        if found is None:
            return False
        entry, plan = found
        read = entry.submit(chunk, plan, self._io)
        with entry.lock:
            entry.started[chunk.index] = read
        return True

    def block(self, stream: Stream, chunk: Chunk) -> np.ndarray[Any, Any]:
        """``chunk``'s block of ``stream``: read (waiting for queued reads) or mapped."""
        found = self._input(stream, chunk)
        if found is None:
            return stream.block(chunk)
        entry, plan = found
        with entry.lock:
            read = entry.started.pop(chunk.index, None)
        if read is None:
            read = entry.submit(chunk, plan, self._io)
        return entry.finish(read)

    def done(self, stream: Stream, block: np.ndarray[Any, Any]) -> bool:
        """Give a read block's buffer back; ``False`` for a mapped block (the caller then
        releases its pages)."""
        entry = self._inputs.get(id(stream))
        return entry is not None and entry.done(block)

    def reads(self) -> int:
        """Chunk blocks read (not mapped) so far, over all streams."""
        return sum(e.reads for e in self._inputs.values())

    def close(self) -> None:
        """Cancel queued reads, wait for those running, stop the reader threads, then free the
        buffers and close the descriptors."""
        self._io.close(cancel=True)
        for entry in self._inputs.values():
            with entry.lock:
                started, entry.started = list(entry.started.values()), {}
            for read in started:
                for piece in read.pieces:
                    if not piece.cancel():
                        piece.exception()  # wait: it is writing into the buffer
            entry.pool.clear()
            entry.restore()
            entry.reader.close()
