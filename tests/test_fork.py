"""fork: per-process state (write tracking, private-mode locks, chunk loops) in a forked child.

Each case forks inside a fresh interpreter (``run_py``), never in the pytest process: the child
reports on stdout and leaves with ``os._exit``; the parent waits at most a few seconds for it,
so a child that would hang is killed and reported instead of stalling the suite.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import pytest

from bigarr._core import tracking as _tracking

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="no fork")

METHODS = ["uffd", "checksum"] if _tracking.uffd_available() else ["checksum"]

# Runs ``child()`` in a forked child; prints its JSON result or "HUNG"/"DIED".
FORK = """
import json, os, signal, sys, time, traceback

def in_child(child):
    pid = os.fork()
    if pid == 0:
        try:
            out = child()
        except BaseException as exc:
            out = {"error": type(exc).__name__, "message": str(exc)}
        sys.stdout.write(json.dumps(out) + "\\n")
        sys.stdout.flush()
        os._exit(0)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.02)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print(json.dumps({"error": "HUNG"}))
"""


def _results(res: Any) -> list[dict[str, Any]]:
    assert res.returncode == 0, res.stderr
    return [json.loads(line) for line in res.stdout.splitlines()]


@pytest.mark.parametrize("method", METHODS)
def test_write_tracking_works_in_a_forked_child(run_py: Callable[..., Any], method: str) -> None:
    # Regression (issue 11): with "uffd" the child got [] after writing a page (its inherited
    # descriptors acted on the parent's memory), so flush_written() would have skipped the
    # page, and the child's flush_written() reset the parent's mark.
    res = run_py(FORK + f"""
import bigarr, numpy as np
a = bigarr.create("t.npy", 1 << 18, np.float32)   # 1 MiB: 16 checksum blocks, 256 pages
assert a.track_writes({method!r}) == {method!r}
a[0] = 1                                          # parent: byte 0, before the fork

def pages(report):
    return [[s.start - a.offset, s.stop - a.offset] for s in report.pages]

def child():
    a[1 << 17] = 2                                # child: byte 512 KiB
    first = pages(a.written())
    flushed = pages(a.flush_written())
    a[(1 << 17) + 20000] = 3                      # child: byte 512 KiB + 80000
    second = pages(a.written())
    a.close()
    return {{"first": first, "flushed": flushed, "second": second}}

in_child(child)
method = bigarr._core.tracking.tracking_method(a)
print(json.dumps({{"parent": pages(a.written()), "method": method}}))
""")
    child, parent = _results(res)
    assert "error" not in child, child
    size, half = 1 << 20, 1 << 19
    # The child's first report covers the child's write, and the parent's write since the mark.
    assert any(a <= half < b for a, b in child["first"]) and any(a == 0 for a, _ in child["first"])
    assert child["flushed"] == child["first"]
    hit = half + 80000
    assert any(a <= hit < b for a, b in child["second"])  # tracked again after the new mark
    assert not any(a <= 0 < b for a, b in child["second"])
    if method == "uffd":
        assert child["first"] == [[0, size]]  # what the parent wrote is unknown: everything
        assert child["second"] == [[hit // 4096 * 4096, hit // 4096 * 4096 + 4096]]
        assert parent["parent"] == [[0, 4096]]  # the parent's mark was left alone
    else:
        assert child["first"] == [[0, 65536], [half, half + 65536]]
        assert [0, 65536] in parent["parent"]
    assert parent["method"] == method


def test_private_mode_locks_held_by_another_thread_do_not_hang_the_child(
    run_py: Callable[..., Any],
) -> None:
    # A thread holds the private-mode write lock and the commit lock while the main thread
    # forks: without fresh locks in the child, its next write or commit waits forever.
    res = run_py(FORK + """
import threading
import bigarr, numpy as np
from bigarr._core import private as _private
bigarr.create("p.npy", 4096, np.float32).close()
a = bigarr.open("p.npy", "private")
held, done = threading.Event(), threading.Event()

def hold():
    with _private._file_lock(a._bigarr), _private.write_lock(a._bigarr):
        held.set()
        done.wait()

t = threading.Thread(target=hold)
t.start()
held.wait()

def child():
    a[0] = 7
    written = a.commit()
    return {"written": written, "on_disk": float(np.load("p.npy")[0])}

in_child(child)
done.set()
t.join()
print(json.dumps({"parent_reads": float(a[0]), "parent_dirty": bool(a.dirty())}))
""")
    child, parent = _results(res)
    assert child == {"written": 4096, "on_disk": 7.0}
    # The child's scratch edit was its own; the parent's private mapping shows the file, which
    # now holds the child's commit.
    assert parent == {"parent_reads": 7.0, "parent_dirty": False}


def test_a_chunk_loop_resumed_in_a_forked_child_refuses(run_py: Callable[..., Any]) -> None:
    res = run_py(FORK + """
import bigarr, numpy as np
a = bigarr.create("c.npy", (64, 1024), np.float32, fill=1.0)
it = a.iter_chunks("64KiB", progress=False)
first = float(next(it)[1].sum())

def child():
    try:
        next(it)
    except bigarr.errors.UnsupportedError as exc:
        fresh = sum(float(v.sum()) for _, v in a.iter_chunks("64KiB", progress=False))
        return {"refused": "another process" in str(exc), "fresh": fresh}
    return {"refused": False}

in_child(child)
rest = sum(float(v.sum()) for _, v in it)  # the parent's loop goes on
a.close()
print(json.dumps({"rest": rest + first, "first": first}))
""")
    child, parent = _results(res)
    assert child == {"refused": True, "fresh": 65536.0}
    assert parent["rest"] == 65536.0 and parent["first"] < 65536.0


def test_a_mapping_is_the_childs_own_after_fork(run_py: Callable[..., Any]) -> None:
    # The child writes and closes its copy; the parent's mapping stays open and sees the write.
    res = run_py(FORK + """
import bigarr, numpy as np
a = bigarr.create("m.npy", 1024, np.int64)

def child():
    a[5] = 55
    a.close()
    return {"closed": a.closed}

in_child(child)
print(json.dumps({"closed": a.closed, "value": int(a[5])}))
a.close()
""")
    assert _results(res) == [{"closed": True}, {"closed": False, "value": 55}]


def test_io_workers_refuse_a_forked_child_rather_than_leave_it_waiting(
    run_py: Callable[..., Any],
) -> None:
    # A forked child has none of its parent's I/O threads: work it submitted would wait
    # forever. Workers refuse there (UnsupportedError), close at once, and a sink's direct
    # write in the child raises instead of hanging; the parent's threads go on.
    res = run_py(FORK + """
import os
import numpy as np
from bigarr._os.sink import Sink
from bigarr._os.workers import Workers
workers = Workers(1, "bigarr-test-fork")
assert workers.submit(lambda: 1).result() == 1        # the parent's thread is running
fd = os.open("out.bin", os.O_RDWR | os.O_CREAT, 0o644)
os.ftruncate(fd, 1 << 20)
sink = Sink(fd, "out.bin", direct=True)
data = np.arange(1 << 16, dtype=np.uint8)
sink.write(data, 0).wait()                            # the parent's writers are running

def child():
    out = {}
    try:
        workers.submit(lambda: 2).result()
        out["workers"] = "ran"
    except Exception as exc:
        out["workers"] = type(exc).__name__
    workers.close()                                   # at once: the threads are the parent's
    if sink.direct:                                   # (buffered writes run in the caller)
        try:
            sink.write(data, 1 << 16).wait()
            out["sink"] = "wrote"
        except Exception as exc:
            out["sink"] = type(exc).__name__
    return out

in_child(child)
after = workers.submit(lambda: 3).result()
workers.close()
sink.close()
os.close(fd)
written = np.fromfile("out.bin", dtype=np.uint8)
print(json.dumps({"after": after, "first": bool((written[:1 << 16] == data).all()),
                  "second": int(written[1 << 16:2 << 16].any())}))
""")
    child, parent = _results(res)
    assert child["workers"] == "UnsupportedError", child
    assert child.get("sink", "UnsupportedError") == "UnsupportedError", child
    assert parent == {"after": 3, "first": True, "second": 0}
