"""Progress as an event stream: the engine emits events, reporters (tqdm, callbacks) consume them.

The engine never talks to tqdm. It opens a :class:`Progress` for a run, calls
:meth:`Progress.advance` once per finished chunk (from any thread), and closes it. Each call
becomes a :class:`ProgressEvent` handed to every reporter:

* ``"start"`` when the context is entered,
* ``"chunk"`` once per finished chunk,
* ``"end"`` when the context exits (also after an exception).

What ``progress=`` means, everywhere bigarr takes it:

==============================  ===============================================================
``None`` (the default)          a tqdm bar on stderr only when stderr is a terminal (TTY)
``True``                        always a tqdm bar on stderr
``False``                       nothing
a callable, or a sequence       each is called with every event, and no bar is shown (add
of callables                    :class:`TqdmReporter` to the sequence to get both)
==============================  ===============================================================

An exception raised by a callback propagates to the engine, which stops: raising from a callback
is a way to cancel a run.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from bigarr.errors import ArgumentError

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["Progress", "ProgressCallback", "ProgressEvent", "TqdmReporter", "wants_bar"]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step of a run's progress."""

    kind: Literal["start", "chunk", "end"]
    """``"start"`` once, ``"chunk"`` per finished chunk, ``"end"`` once."""
    chunk: int
    """Index of the finished chunk for ``"chunk"`` events, -1 otherwise."""
    nbytes: int
    """Bytes of this chunk (0 for ``"start"`` and ``"end"``)."""
    done_bytes: int
    """Bytes finished so far, this chunk included."""
    total_bytes: int
    """Bytes the run will process in all."""
    done_chunks: int
    """Chunks finished so far, this one included."""
    total_chunks: int
    """Chunks in the run."""
    desc: str
    """Short description of the run (the bar's label)."""


ProgressCallback = Callable[[ProgressEvent], None]
"""A reporter: called with every event of a run."""

ProgressArg = bool | None | ProgressCallback | Sequence[ProgressCallback]
"""What users pass as ``progress=``."""


def wants_bar(progress: ProgressArg) -> bool:
    """Whether ``progress`` asks for a tqdm bar (``None``: only when stderr is a TTY)."""
    if progress is None:
        stream = sys.stderr
        return stream is not None and hasattr(stream, "isatty") and stream.isatty()
    return progress is True


class TqdmReporter:
    """A reporter that draws a tqdm bar in bytes per second; one bar update per chunk.

    Created on the ``"start"`` event and closed on ``"end"``. tqdm is imported lazily, so
    importing bigarr does not import it.
    """

    def __init__(self, **tqdm_kwargs: Any) -> None:
        self._kwargs = tqdm_kwargs
        self._bar: Any = None

    def __call__(self, event: ProgressEvent) -> None:
        if event.kind == "start":
            from tqdm.auto import tqdm

            options: dict[str, Any] = dict(
                total=event.total_bytes, desc=event.desc, unit="B", unit_scale=True,
                unit_divisor=1024, file=sys.stderr, dynamic_ncols=True, leave=True,
            )
            options.update(self._kwargs)
            self._bar = tqdm(**options)
        elif event.kind == "chunk" and self._bar is not None:
            self._bar.update(event.nbytes)
        elif event.kind == "end" and self._bar is not None:
            self._bar.close()
            self._bar = None


def _reporters(progress: ProgressArg) -> list[ProgressCallback]:
    if progress is None or isinstance(progress, bool):
        return [TqdmReporter()] if wants_bar(progress) else []
    if callable(progress):
        return [progress]
    if isinstance(progress, Sequence) and not isinstance(progress, (str, bytes)):
        out = list(progress)
        if all(callable(cb) for cb in out):
            return out
    raise ArgumentError(
        "Expected progress as None (bar on a TTY), True, False, a callable taking a "
        f"ProgressEvent, or a sequence of such callables. Got {progress!r}."
    )


class Progress:
    """The progress of one run: a context manager that emits events to its reporters.

    Parameters
    ----------
    progress
        ``None``, ``True``, ``False``, a callback or a sequence of callbacks (see the module
        docstring for what each means).
    total_bytes
        Bytes the run will process.
    total_chunks
        Chunks in the run.
    desc
        Label of the run.

    Raises
    ------
    ArgumentError
        If ``progress`` is none of the accepted forms (also a ``TypeError``).
    """

    def __init__(
        self,
        progress: ProgressArg,
        *,
        total_bytes: int,
        total_chunks: int,
        desc: str,
    ) -> None:
        self.reporters = _reporters(progress)
        self.total_bytes = int(total_bytes)
        self.total_chunks = int(total_chunks)
        self.desc = desc
        self.done_bytes = 0
        self.done_chunks = 0
        self._lock = threading.Lock()
        self._open = False

    def _emit(self, kind: Literal["start", "chunk", "end"], chunk: int, nbytes: int) -> None:
        event = ProgressEvent(kind, chunk, nbytes, self.done_bytes, self.total_bytes,
                              self.done_chunks, self.total_chunks, self.desc)
        for report in self.reporters:
            report(event)

    def advance(self, chunk: int, nbytes: int) -> None:
        """Record that chunk ``chunk`` (``nbytes`` bytes) is finished. Safe from any thread."""
        with self._lock:
            self.done_bytes += nbytes
            self.done_chunks += 1
            if self.reporters:
                self._emit("chunk", chunk, nbytes)

    def __enter__(self) -> Progress:
        with self._lock:
            self._open = True
            self._emit("start", -1, 0)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc: BaseException | None = None,
        tb: TracebackType | None = None,
    ) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
            self._emit("end", -1, 0)

    def close(self) -> None:
        """Emit ``"end"`` and close the bar, if not done already (idempotent)."""
        self.__exit__()
