"""I/O worker threads: one owner of the threads that move bytes beside the engine's.

The engine (:mod:`bigarr._compute.engine`) runs every chunk's work on its own pool. Beside it,
a few objects keep threads of their own that wait on the disk: a sink's writers
(:mod:`bigarr._os.sink`), a run's cold readers (:mod:`bigarr._compute.coldread`), a direct
fill's staging (:mod:`bigarr._compute.directfill`) and the order statistics' sample
(:mod:`bigarr._compute.ordersample`). Each holds a :class:`Workers`:

* its threads start on the first :meth:`Workers.submit`, so an object that never needs them
  costs none, and are named for their owner (``bigarr-sink``, ``bigarr-read``, ...);
* :meth:`Workers.close` waits for the running work (and with ``cancel=True`` drops the queued
  work first; with ``wait=False`` it does not wait); it is idempotent, and a submit after it
  is refused;
* a forked child inherits the object but not its threads: work submitted there would wait
  forever for a thread that does not exist. :meth:`Workers.submit` in a child refuses with
  :class:`~bigarr.errors.UnsupportedError` instead, and :meth:`Workers.close` there returns at
  once (the parent's threads are the parent's to wait for).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from bigarr.errors import UnsupportedError

__all__ = ["Workers"]

T = TypeVar("T")


class Workers:
    """Up to ``n`` threads named ``name``, started on first use (module docstring)."""

    def __init__(self, n: int, name: str) -> None:
        self.n, self.name = max(1, n), name
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._closed = False

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on one of the threads.

        Raises
        ------
        UnsupportedError
            In a forked child of the process that made these workers, or after :meth:`close`.
        """
        if os.getpid() != self._pid:
            raise UnsupportedError(
                f"The {self.name} threads of this object belong to the process that made it; "
                "a forked child cannot use them: open the array again in the child.")
        with self._lock:
            if self._closed:
                raise UnsupportedError(f"The {self.name} threads are closed.")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.n, thread_name_prefix=self.name)
            return self._pool.submit(fn, *args)

    def close(self, *, cancel: bool = False, wait: bool = True) -> None:
        """Wait for the work running (``cancel``: drop the work queued first), then stop the
        threads; ``wait=False``: return at once, the threads ending when their work does.
        Idempotent; at once in a forked child."""
        if os.getpid() != self._pid:
            return
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel)
