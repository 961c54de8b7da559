"""The one executor: every chunked operation's :class:`~bigarr._compute.runplan.RunPlan` runs here.

:func:`execute` walks a plan's chunks and hands each chunk's blocks of every stream (input and
output arrays, see :mod:`bigarr._compute.operands`) to a work function, either on a thread
pool (numpy releases the GIL in its loops) or, for an iteration, in the consumer itself. Around
that work it applies the three policies, each defined once, here:

* **Prefetch** (:func:`prefetch`). ``RunPlan.prefetch`` chunks ahead of the ones being worked on
  get ``MADV_WILLNEED`` on the pages their blocks touch (asynchronous readahead), so the disk
  works on chunk *i + k* while chunk *i* is computed. A worker pool also gets
  ``POPULATE_READ`` (Linux 5.14+; a no-op elsewhere) from the dispatcher thread for chunks not
  all in the page cache (``cachestat``), so workers do not stop on page faults that wait for
  the disk; it is issued *before* the chunk is submitted, so a fast worker can never release
  a chunk that is populated afterwards. Warm chunks are not populated: their faults are cheap
  (a 2 MiB folio per fault), and the populate's page-by-page walk cost the dispatcher more
  CPU than the workers' sum. A *warm run* (:attr:`RunPlan.warm`: every input page cached
  when planned) prefetches nothing at all and reads nothing through the cold-read path: its
  chunks are queued ``prefetch`` ahead all the same (so a worker finding its next chunk never
  waits for the dispatcher), but a queued chunk holds no memory until a worker maps it, which
  is what let the plan size chunks for the threads alone. Were pages evicted meanwhile, the
  workers fault them in, as a plain mapping would.
* **Release** (:func:`release`). When a chunk is done (its work returned; for an iteration, when
  the consumer asks for the next chunk), the pages its input blocks touched are written back
  if the mapping is shared (``sync_file_range``, waited for) and dropped from this process's
  resident set (``MADV_DONTNEED``); never on a private mapping, where that would throw away
  copy-on-write edits. Non-contiguous views release the pages of the parent they spanned.
* **Flush** (:class:`Writeback`, with the window of :func:`bigarr._os.durable.flush_window`,
  the policy's one tuned place). Output blocks are handed to the output file's
  :class:`~bigarr._os.sink.Sink` (no mapping, no page faults): a new file's are written with
  ``O_DIRECT`` from bounded staging buffers (``Writeback(direct=True)``), others with
  ``pwrite`` into the page cache, their writeback started at once
  (``sync_file_range(SYNC_FILE_RANGE_WRITE)`` on Linux); once ``flush_every`` bytes are
  pending the oldest are waited for. Outputs that are not contiguous in their file (or private
  mappings, or in-memory arrays) are assigned through numpy; shared mappings among them (and
  outputs filled by a kernel copy) have their writeback started when their chunk is done,
  are waited for and *then* released, and made durable at the end of the run. An iteration
  over a shared mapping does the same per chunk: the finished chunk's writeback starts when
  the consumer moves on, so it queues behind the one being waited for. When a run is
  journaled (``resume=True``), the flush ``msync``'s them and ``fdatasync``'s the files,
  and only then records the flushed chunks as done.

Results are yielded in chunk order whatever the thread timing, so merging partial results is
deterministic. At most ``threads + prefetch`` chunks are in flight.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from bigarr._compute import placed
from bigarr._compute.coldread import ColdReads
from bigarr._compute.operands import Stream
from bigarr._compute.progress import Progress
from bigarr._compute.runplan import RunPlan
from bigarr._os.durable import datasync, flush_window, start_writeback, wait_writeback
from bigarr._os.geometry import ByteSpan
from bigarr._os.hints import parse_hint
from bigarr._os.mapping import Mapping, check_mapped
from bigarr._os.sink import Sink, Written
from bigarr._plan.chunks import Chunk
from bigarr._plan.regions import extent
from bigarr.errors import BigArrError

__all__ = ["Writeback", "execute", "prefetch", "release"]

T = TypeVar("T")

_WILLNEED = parse_hint("willneed")
_POPULATE = parse_hint("populate_read")
_DONTNEED = parse_hint("dontneed")



# ---- the prefetch and release policies -------------------------------------------------------
def prefetch(streams: Sequence[Stream], chunk: Chunk, *, populate: bool,
             reads: ColdReads | None = None) -> None:
    """Read ahead the pages ``chunk``'s input blocks touch: ``WILLNEED``, then (``populate``)
    ``POPULATE_READ`` to map them into the page tables from the calling thread, for spans not
    all in the page cache before the ``WILLNEED``. Blocks the cold-read path reads instead
    (``reads``) are queued for reading."""
    spans: list[tuple[Mapping, ByteSpan]] = []
    for stream in streams:
        if stream.output or stream.mapping is None:
            continue
        if reads is not None and reads.start(stream, chunk):
            continue
        for span in stream.page_spans(stream.block(chunk)):
            # Asked before the readahead: cachestat counts pages still being read as cached.
            # Pages all cached already: the workers' own faults map them (one per 2 MiB folio
            # on a file system with large folios), while POPULATE_READ walks them page by page
            # on this thread (about 0.1 s of CPU per warm 2 GiB here, more than the sum's own
            # time on a quiet machine).
            warm = populate and stream.mapping.all_cached(span)
            stream.mapping.advise(_WILLNEED, span)  # asynchronous readahead
            if not warm:
                spans.append((stream.mapping, span))
    for mapping, span in spans if populate else ():
        mapping.advise(_POPULATE, span)


def release(stream: Stream, block: np.ndarray[Any, Any]) -> None:
    """Drop a finished input block's pages (:meth:`Stream.release`: written back if shared, then
    ``DONTNEED``; never on a private mapping)."""
    stream.release(block)


@dataclass(slots=True)
class _Pending:
    chunk: int
    nbytes: int
    ranges: list[tuple[int, int, int]] = field(default_factory=list)  # fd, offset, nbytes
    written: list[Written] = field(default_factory=list)  # through a Sink
    spans: list[tuple[Mapping, ByteSpan]] = field(default_factory=list)


class Writeback:
    """The flush policy for a run's outputs: bounded dirty bytes, flush then release.

    Parameters
    ----------
    every
        Most output bytes left pending: beyond it, the oldest chunks are flushed (their
        writeback waited for). ``None``: the flush policy's window
        (:func:`bigarr._os.durable.flush_window`), as for every writer.
    durable
        Also ``fdatasync`` the output files at each flush, then call ``on_durable``.
    on_durable
        Called with the indices of the chunks whose output is durable (the journal).
    direct
        The outputs are new files that nothing else maps or reads while the run writes them:
        contiguous blocks go through a :class:`~bigarr._os.sink.Sink` with ``O_DIRECT``
        (staging memory at most ``every`` bytes, which the plan holds for unflushed output),
        buffered where the file system refuses it. Otherwise they are written buffered, their
        writeback started at once. Call :meth:`close` when the run ends, however it ends.
    """

    def __init__(
        self,
        every: int | None = None,
        *,
        durable: bool = False,
        on_durable: Callable[[list[int]], None] | None = None,
        direct: bool = False,
    ) -> None:
        self.every = flush_window() if every is None else max(1, every)
        self.durable = durable
        self.on_durable = on_durable
        self.direct = direct
        self._sinks: dict[int, Sink] = {}  # by descriptor
        self._lock = threading.Lock()
        self._open: dict[int, _Pending] = {}
        self._pending: list[_Pending] = []
        self._pending_bytes = 0
        self._fds: set[int] = set()

    def _entry(self, chunk: int) -> _Pending:
        with self._lock:
            entry = self._open.get(chunk)
            if entry is None:
                entry = self._open[chunk] = _Pending(chunk, 0)
            return entry

    def write(self, chunk: int, stream: Stream, block: np.ndarray[Any, Any], value: Any,
              *, lend: bool = False) -> None:
        """Store ``value`` into ``block`` of output ``stream`` (part of chunk ``chunk``).

        ``lend``: the caller will not change ``value`` any more (a function's result), so an
        array placed by :func:`bigarr._compute.placed.results` for this block's file offset is
        written by the sink from its own memory, kept alive until written, with no copy."""
        entry = self._entry(chunk)
        mapping = stream.mapping
        offset = stream.file_offset(block) if block.flags.c_contiguous else None
        if mapping is not None and mapping.access == "shared" and offset is not None:
            data = np.ascontiguousarray(np.broadcast_to(np.asarray(value, block.dtype),
                                                        block.shape))
            sink = self.sink(mapping.fd, mapping.path)
            entry.written.append(sink.write(data, offset, lend=lend and placed.owns(data)))
            entry.nbytes += data.nbytes
            return
        block[...] = value
        if mapping is not None and mapping.access == "shared" and block.size:
            # The block's bounding bytes: for a strided block (rows of a Fortran-ordered file)
            # that includes other chunks' pages, which the flush writes if dirty and DONTNEED
            # unmaps without losing anything (dirty shared pages stay in the page cache).
            entry.spans.append((mapping, extent(block, mapping)))
            with self._lock:
                self._fds.add(mapping.fd)  # made durable at the end (drain)
        entry.nbytes += block.nbytes

    def write_from(self, chunk: int, stream: Stream, block: np.ndarray[Any, Any],
                   fill: Callable[[np.ndarray[Any, Any], int], None]) -> bool:
        """Write ``block`` of output ``stream`` (part of chunk ``chunk``) with the bytes that
        ``fill(dest, start)`` puts into ``dest`` (the block's bytes from ``start``), read by
        the sink straight into its staging buffers (:meth:`~bigarr._os.sink.Sink.write_from`).

        Returns False, having written nothing, where the block is not one run of bytes of a
        file the run writes through an ``O_DIRECT`` sink (the caller then writes it another
        way)."""
        mapping = stream.mapping
        offset = stream.file_offset(block) if block.flags.c_contiguous else None
        if not self.direct or mapping is None or mapping.access != "shared" or offset is None:
            return False
        sink = self.sink(mapping.fd, mapping.path)
        if not sink.direct:  # O_DIRECT refused: the caller's own way (a kernel copy) is better
            return False
        entry = self._entry(chunk)
        entry.written.append(sink.write_from(fill, offset, block.nbytes))
        entry.nbytes += block.nbytes
        return True

    def sink(self, fd: int, path: str | None = None) -> Sink:
        """The run's :class:`~bigarr._os.sink.Sink` for output file ``fd`` (made at first use:
        ``O_DIRECT`` if the run was made ``direct``)."""
        with self._lock:
            sink = self._sinks.get(fd)
            if sink is None:
                sink = self._sinks[fd] = Sink(fd, path, direct=self.direct, staging=self.every)
                self._fds.add(fd)
            return sink

    def close(self) -> None:
        """End the run's sinks (their writer threads, descriptors and staging buffers).
        Idempotent; call it however the run ends (after :meth:`drain` when it succeeded)."""
        with self._lock:
            sinks, self._sinks = list(self._sinks.values()), {}
        for sink in sinks:
            sink.close()

    def mapped(self, chunk: int, stream: Stream, block: np.ndarray[Any, Any]) -> None:
        """Account for ``block`` of output ``stream`` having been written by other means
        (through its mapping, or into its file by a kernel copy): at the flush its pages are
        written back (which also writes the file's other dirty pages in the range), then
        dropped."""
        entry = self._entry(chunk)
        mapping = stream.mapping
        if mapping is not None and mapping.access == "shared" and block.size:
            entry.spans.append((mapping, extent(block, mapping)))
            with self._lock:
                self._fds.add(mapping.fd)  # made durable at the end (drain)
        entry.nbytes += block.nbytes

    def wrote(self, chunk: int, fd: int, offset: int, nbytes: int) -> None:
        """Account for ``nbytes`` written at ``offset`` of ``fd`` by other means (a kernel copy)
        as part of chunk ``chunk``, and start their writeback."""
        entry = self._entry(chunk)
        start_writeback(fd, offset, nbytes)
        entry.ranges.append((fd, offset, nbytes))
        entry.nbytes += nbytes
        with self._lock:
            self._fds.add(fd)

    def chunk_done(self, chunk: int) -> None:
        """Mark chunk ``chunk``'s outputs complete; flush the oldest beyond ``every`` bytes.

        Only the oldest chunks are waited for, so up to ``every`` bytes stay queued for writeback
        and the disk never runs dry between flushes; unflushed output stays at most ``every``
        bytes plus the chunks still being written.
        """
        with self._lock:
            entry = self._open.pop(chunk, None) or _Pending(chunk, 0)
        for mapping, span in entry.spans:  # written through a mapping: start it now, too
            mapping.start_write_back(span)
        with self._lock:
            self._pending.append(entry)
            self._pending_bytes += entry.nbytes
            batch: list[_Pending] = []
            while self._pending and self._pending_bytes > self.every:
                oldest = self._pending.pop(0)
                self._pending_bytes -= oldest.nbytes
                batch.append(oldest)
        self._flush(batch)

    def drain(self) -> None:
        """Flush everything pending and end the sinks (the end of a run)."""
        with self._lock:
            batch, self._pending, self._pending_bytes = self._pending, [], 0
        self._flush(batch)
        if not self.durable:
            self.sync_files()
        self.close()

    def sync_files(self) -> None:
        """``fdatasync`` every output file written (with ``pwrite`` or through a mapping)."""
        with self._lock:
            fds = sorted(self._fds)
        for fd in fds:
            datasync(fd)

    def _flush(self, batch: list[_Pending]) -> None:
        if not batch:
            return
        for entry in batch:
            for written in entry.written:
                written.wait()
            for fd, offset, nbytes in entry.ranges:
                wait_writeback(fd, offset, nbytes)
            for mapping, span in entry.spans:
                # flush THEN release: the data is on disk before the drop (written back, and
                # made durable by msync when the run is journaled; else at the end of the run)
                if self.durable:
                    mapping.sync(span)
                else:
                    mapping.write_back(span)
                mapping.advise(_DONTNEED, span)
        if self.durable:
            if any(e.ranges or e.written for e in batch):
                self.sync_files()  # the file's metadata (extents, size) as well as its data
            if self.on_durable is not None:
                self.on_durable([e.chunk for e in batch])


class _Helper:
    """The helper thread of an iteration: prefetches ahead of the consumer and releases behind.

    Tasks run in the order they are queued, so a chunk is released before the one after next
    is fetched. A failed prefetch only turns prefetching off (it is a hint); a failed release
    (a flush that did not reach the disk) is re-raised in the consumer by :meth:`check`.
    """

    def __init__(self) -> None:
        self.todo: queue.SimpleQueue[tuple[str, Callable[[], None]] | None] = queue.SimpleQueue()
        self.failure: BaseException | None = None
        self.fetching = True
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="bigarr-prefetch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (task := self.todo.get()) is not None:
            kind, fn = task
            if kind == "fetch" and not self.fetching:
                continue
            try:
                fn()
            except (BigArrError, OSError) as exc:
                if kind == "release":
                    self.failure = self.failure or exc
                else:
                    self.fetching = False  # e.g. closed under us: prefetch is only a hint

    def put(self, kind: str, fn: Callable[[], None]) -> None:
        self.todo.put((kind, fn))

    def check(self) -> None:
        """Re-raise, in the consumer, the first error of a release done by the helper."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def stop(self) -> None:
        """Skip pending fetches, finish pending releases, and join the thread (idempotent)."""
        if self.stopped:
            return
        self.stopped = True
        self.fetching = False
        self.todo.put(None)
        self.thread.join()


def _scattered(streams: Sequence[Stream], todo: list[Chunk]) -> list[Stream]:
    """Input streams whose blocks are scattered runs of their file (column slices, rows of a
    Fortran file), now advised ``random`` for the run (:meth:`Stream.read_pattern`)."""
    out: list[Stream] = []
    for stream in streams if todo else ():
        if stream.mapping is not None and stream.scattered(stream.block(todo[0])):
            stream.read_pattern(True)
            out.append(stream)
    return out


def _release_all(pairs: list[tuple[Stream, np.ndarray[Any, Any]]]) -> None:
    for stream, block in pairs:
        release(stream, block)


class _Behind:
    """One finished chunk's release, done once: by the helper thread, or by the consumer if
    the helper has not reached it in time (see :func:`_inline`)."""

    __slots__ = ("done", "lock", "pairs")

    def __init__(self, pairs: list[tuple[Stream, np.ndarray[Any, Any]]]) -> None:
        self.pairs, self.lock, self.done = pairs, threading.Lock(), False

    def __call__(self) -> None:
        with self.lock:  # held while releasing: whoever comes second waits until it is done
            if not self.done:
                self.done = True
                _release_all(self.pairs)
            self.pairs = []


def _check_files(streams: Sequence[Stream]) -> None:
    """Refuse (a bigarr error, not SIGBUS) a chunk whose mapped files shrank; see
    :func:`bigarr._os.mapping.check_mapped`."""
    check_mapped(*(stream.mapping for stream in streams))


def execute(
    plan: RunPlan,
    work: Callable[[Chunk, list[np.ndarray[Any, Any]]], T],
    streams: Sequence[Stream],
    *,
    progress: Progress | None = None,
    writeback: Writeback | None = None,
    skip: Iterable[int] = (),
) -> Iterator[tuple[Chunk, T]]:
    """Run ``work(chunk, blocks)`` over the chunks of ``plan``; yield results in chunk order.

    ``blocks`` holds each stream's block of the chunk, in ``streams`` order. With
    ``plan.threads >= 1`` the work runs on a pool of that many threads, with at most
    ``threads + prefetch`` chunks in flight; with ``plan.threads == 0`` it runs in the consumer
    (an iteration), and the chunk is released only when the consumer asks for the next one.

    Parameters
    ----------
    plan
        The run plan: chunks, threads, prefetch, release.
    work
        Called per chunk; its return value is yielded with the chunk.
    streams
        The streams; output streams are written by ``work`` (usually through ``writeback``).
    progress
        Advanced by each chunk's bytes when it finishes.
    writeback
        Flush policy for outputs; :meth:`Writeback.chunk_done` is called after each chunk.
    skip
        Chunk indices not to run (already done in a resumed run).

    Raises
    ------
    Exception
        Whatever ``work`` raises, after the chunks already running have finished.
    FileChangedError
        If a mapped file shrinks under the run (checked before each chunk, not a SIGBUS).
    """
    skipped = set(skip)
    todo = [c for c in plan.chunks.chunks if c.index not in skipped]
    run = _inline if plan.threads == 0 else _pooled
    return _patterned(run(plan, work, streams, todo, progress, writeback), streams, todo)


def _patterned(results: Iterator[tuple[Chunk, T]], streams: Sequence[Stream],
               todo: list[Chunk]) -> Iterator[tuple[Chunk, T]]:
    """``results`` with scattered inputs advised ``random`` for the run (see
    :func:`_scattered`), back to ``normal`` at its end."""
    scattered = _scattered(streams, todo)
    try:
        yield from results
    finally:
        results.close()  # type: ignore[attr-defined]
        for stream in scattered:
            stream.read_pattern(False)


def _finish(chunk: Chunk, progress: Progress | None, writeback: Writeback | None) -> None:
    if writeback is not None:
        writeback.chunk_done(chunk.index)
    if progress is not None:
        progress.advance(chunk.index, chunk.nbytes)


def _inline(plan: RunPlan, work: Callable[[Chunk, list[np.ndarray[Any, Any]]], T],
            streams: Sequence[Stream], todo: list[Chunk], progress: Progress | None,
            writeback: Writeback | None) -> Iterator[tuple[Chunk, T]]:
    helper: _Helper | None = None
    fetched = 0  # chunks of todo prefetched so far (the first is read by the consumer)
    # Releases queued to the helper and maybe not done yet. Before chunk i is handed out, the
    # consumer does itself any release of a chunk before i - 1 that the helper has not reached:
    # a helper starved of CPU then costs overlap, never memory (issue 11: 460 MiB resident for
    # a 64 MiB budget once, under contention, while releases queued up behind the consumer).
    behind: deque[_Behind] = deque()
    try:
        if plan.prefetch and len(todo) > 1:
            helper = _Helper()
        for position, chunk in enumerate(todo):
            while len(behind) > 1:
                behind.popleft()()
            _check_files(streams)
            if helper is not None:
                fetched = max(fetched, position + 1)
                while fetched < min(len(todo), position + 1 + plan.prefetch):
                    helper.put("fetch", functools.partial(prefetch, streams, todo[fetched],
                                                          populate=False))
                    fetched += 1
            blocks = [s.block(chunk) for s in streams]
            yield chunk, work(chunk, blocks)
            if plan.release:
                pairs = [(s, b) for s, b in zip(streams, blocks, strict=True) if not s.output]
                for s, b in pairs:  # the disk starts on it while the last one is waited for
                    s.start_release(b)
                if helper is not None:
                    behind.append(_Behind(pairs))
                    helper.put("release", behind[-1])
                    helper.check()
                else:
                    _release_all(pairs)
            del blocks
            _finish(chunk, progress, writeback)
        if helper is not None:
            helper.stop()
            helper.check()
    finally:
        if helper is not None:
            helper.stop()


def _pooled(plan: RunPlan, work: Callable[[Chunk, list[np.ndarray[Any, Any]]], T],
            streams: Sequence[Stream], todo: list[Chunk], progress: Progress | None,
            writeback: Writeback | None) -> Iterator[tuple[Chunk, T]]:
    depth = max(1, plan.threads) + plan.prefetch
    # Input chunks not in memory are read rather than faulted in (bigarr._compute.coldread).
    # A warm run reads nothing ahead: its plan charged no memory for the chunks queued.
    reads = None if plan.warm else ColdReads.for_run(streams, depth, chunks=len(todo))

    def one(chunk: Chunk) -> tuple[Chunk, T]:
        check_mapped(*(s.mapping for s in streams))  # a file cut under us: an error, not SIGBUS
        if reads is None:
            blocks = [s.block(chunk) for s in streams]
            value = work(chunk, blocks)
            behind = list(zip(streams, blocks, strict=True))
        else:
            blocks = []
            try:
                for s in streams:
                    blocks.append(s.block(chunk) if s.output else reads.block(s, chunk))
                value = work(chunk, blocks)
            finally:  # read buffers go back to the pool, also after an error
                behind = [(s, b) for s, b in zip(streams, blocks, strict=False)
                          if not reads.done(s, b)]
        del blocks
        if plan.release:
            _release_all(behind)
        _finish(chunk, progress, writeback)
        return chunk, value

    def queued() -> Iterator[Chunk]:
        for position, chunk in enumerate(todo):
            _check_files(streams)
            if plan.prefetch and not plan.warm:
                # The first chunks start at once (their workers fault the pages in themselves);
                # later ones are populated while the workers are still busy with those before.
                prefetch(streams, chunk, populate=position >= plan.threads, reads=reads)
            yield chunk

    try:
        yield from ordered(queued(), one, max(1, plan.threads), depth)
    finally:
        if reads is not None:
            reads.close()


X = TypeVar("X")


def ordered(items: Iterable[X], work: Callable[[X], T], threads: int, depth: int = 0,
            name: str = "bigarr") -> Iterator[T]:
    """``work(item)`` for each of ``items``, run on ``threads`` worker threads, yielded in the
    items' order: the executor's window, shared by :func:`execute` and the sort's merge.

    At most ``depth`` (at least 1; 0: ``threads``) items are in flight: the next item is taken
    from ``items`` only once fewer are, after the consumer has had the oldest result. So a
    producer may cut its next item from memory the consumer gave back, and a producer's
    per-item preparation (prefetch, checks) runs just before the item is queued. With
    ``threads == 0`` each item runs in the consumer's thread, one at a time. When the
    consumer stops early or ``work`` raises, queued items are cancelled and the running ones
    finish before the error reaches the consumer.
    """
    if threads == 0:
        for item in items:
            yield work(item)
        return
    depth = max(1, depth or threads)
    window: deque[Future[T]] = deque()
    pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
    try:
        for item in items:
            window.append(pool.submit(work, item))
            while len(window) >= depth:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for future in window:
            future.cancel()
        with contextlib.suppress(Exception):
            pool.shutdown(wait=True, cancel_futures=True)
