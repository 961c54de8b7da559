"""The I/O worker threads' one owner (``bigarr._os.workers``): lazy start, close, and forks."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bigarr._os.sink import Sink
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


def _in_child(check: Callable[[], bool]) -> int:
    """Run ``check`` in a forked child; its exit status (0: it held, 3: it failed), waited for
    at most 20 s (a hang fails the test)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 3
        try:
            code = 0 if check() else 3
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    pytest.fail("the forked child hung")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_is_refused_its_parents_threads_rather_than_left_waiting() -> None:
    workers = Workers(1, "bigarr-test-fork")
    assert workers.submit(lambda: 1).result() == 1  # the parent's thread is running

    def child() -> bool:
        try:
            workers.submit(lambda: 2).result()  # no thread in the child: would wait forever
        except UnsupportedError:
            pass
        else:
            return False
        workers.close()  # at once: the parent's threads are the parent's to wait for
        return True

    assert _in_child(child) == 0
    assert workers.submit(lambda: 3).result() == 3  # the parent's are untouched
    workers.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_sink_used_in_a_forked_child_raises_instead_of_hanging(tmp_path: Path) -> None:
    path = tmp_path / "out.bin"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 1 << 20)
        sink = Sink(fd, str(path), direct=True)
        if not sink.direct:  # buffered writes run in the caller's thread: no threads to miss
            sink.close()
            pytest.skip("O_DIRECT refused on this file system")
        data = np.arange(1 << 16, dtype=np.uint8)
        sink.write(data, 0).wait()  # the parent's writers are running

        def child() -> bool:
            try:
                sink.write(data, 1 << 16).wait()
            except UnsupportedError:
                return True
            return False

        assert _in_child(child) == 0
        sink.close()
        assert np.array_equal(np.fromfile(path, dtype=np.uint8, count=1 << 16), data)
        assert not np.fromfile(path, dtype=np.uint8)[1 << 16:2 << 16].any()  # none of the child's
    finally:
        os.close(fd)
