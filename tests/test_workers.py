"""The I/O worker threads' one owner (``bigarr._os.workers``): lazy start and close (forked
children: ``tests/test_fork.py``)."""

from __future__ import annotations

import threading
import time

import pytest

from bigarr._os.workers import Workers
from bigarr.errors import BigArrError, UnsupportedError


def _named(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def test_threads_start_on_first_use_and_close_waits_for_them() -> None:
    workers = Workers(2, "bigarr-test-lazy")
    assert not _named("bigarr-test-lazy")  # none until work comes
    done: list[int] = []
    futures = [workers.submit(lambda i: (time.sleep(0.02), done.append(i)), i) for i in range(4)]
    assert 1 <= len(_named("bigarr-test-lazy")) <= 2
    workers.close()
    assert sorted(done) == [0, 1, 2, 3] and all(f.done() for f in futures)
    assert not _named("bigarr-test-lazy")
    workers.close()  # idempotent
    with pytest.raises(UnsupportedError) as err:
        workers.submit(print)
    assert isinstance(err.value, (BigArrError, NotImplementedError))


def test_close_with_cancel_drops_the_queued_work() -> None:
    workers = Workers(1, "bigarr-test-cancel")
    gate = threading.Event()
    ran: list[int] = []
    first = workers.submit(lambda: (gate.wait(5), ran.append(0)))
    queued = [workers.submit(ran.append, i) for i in range(1, 5)]
    closer = threading.Thread(target=workers.close, kwargs={"cancel": True})
    closer.start()
    time.sleep(0.05)
    gate.set()
    closer.join(5)
    assert not closer.is_alive() and first.done()
    assert ran == [0] and all(f.cancelled() for f in queued)


def test_close_without_waiting_lets_the_work_finish() -> None:
    workers = Workers(1, "bigarr-test-nowait")
    gate = threading.Event()
    future = workers.submit(lambda: gate.wait(5) and 7)
    workers.close(wait=False)  # returns while the work still waits
    assert not future.done()
    gate.set()
    assert future.result(timeout=5) == 7
