"""Misuse that kills a numpy.memmap user's interpreter must not kill a bigarr user's.

Each case runs in a subprocess so that a crash fails the test instead of the test run. The one
case bigarr cannot prevent, touching pages of a file another process truncated *after* mapping,
is pinned here too so its documentation stays true.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable

Run = Callable[..., subprocess.CompletedProcess[str]]


def test_numpy_memmap_close_under_a_view_would_segfault(run_py: Run) -> None:
    # The motivating bug: numpy.memmap has no safe close. (Pinned so the claim stays true.)
    proc = run_py("""
        import numpy as np
        m = np.memmap('x.dat', dtype='f8', mode='w+', shape=(1 << 16,))
        v = m[10:]
        m._mmap.close()
        print(v.sum())
    """)
    assert proc.returncode == -signal.SIGSEGV


def test_close_with_live_views_does_not_kill(run_py: Run) -> None:
    proc = run_py("""
        import numpy as np, bigarr
        a = bigarr.create('x.npy', (1 << 16,), 'f8', fill=1.0)
        v = a[10:]
        raw = np.asarray(a)[5:]
        try:
            a.close()
        except bigarr.errors.MappingBusyError as e:
            print('busy', e)
        print('still usable', v.sum(), raw.sum())
        a.close(force=True)
        try:
            v.sum()
        except bigarr.errors.ClosedError:
            print('closed error')
        print('raw pointer reads', raw.sum(), raw.view(np.ndarray)[:3])
        raw[:] = 5   # a stray write after close lands in retired memory, not in the file
        del a, v, raw
        import gc; gc.collect()
        print('file', np.load('x.npy').sum())
    """)
    assert proc.returncode == 0, proc.stderr
    assert "busy" in proc.stdout and "closed error" in proc.stdout
    assert "still usable 65526.0 65531.0" in proc.stdout
    assert "raw pointer reads 0.0" in proc.stdout
    assert "file 65536.0" in proc.stdout


def test_truncated_under_open_array_is_detected_by_bigarr_operations(run_py: Run) -> None:
    proc = run_py("""
        import os, bigarr
        a = bigarr.create('x.npy', (1 << 20,), 'f4', fill=1.0)
        a[0] = 2
        os.truncate('x.npy', 8192)          # another process shrinks the file
        for op in (a.flush, a.close):
            try:
                op()
            except bigarr.errors.FileChangedError as e:
                print('refused', op.__name__, isinstance(e, OSError))
        print('closed', a.closed)
        try:
            bigarr.open('x.npy')
        except bigarr.errors.TruncatedFileError:
            print('open refused')
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("refused") == 3 and "closed True" in proc.stdout


def test_touching_pages_truncated_after_mapping_is_the_documented_sigbus(run_py: Run) -> None:
    # Not preventable: the kernel raises SIGBUS on the access itself and Python cannot recover.
    # bigarr validates sizes before mapping and before its own flush/close; see the README.
    proc = run_py("""
        import os, bigarr
        a = bigarr.create('x.npy', (1 << 20,), 'f4')
        os.truncate('x.npy', 8192)
        print(a[-1])
    """)
    assert proc.returncode == -signal.SIGBUS


def test_exit_while_a_daemon_thread_reads_does_not_segfault(run_py: Run) -> None:
    # Regression: the mapping's unmap ran as an atexit finalizer, so a daemon thread still
    # reading the array (numpy loops run without the GIL) segfaulted while the process exited.
    proc = run_py("""
        import threading, time, numpy as np, bigarr
        a = bigarr.create('x.npy', (1 << 22,), 'f8', fill=1.0)
        started = threading.Event()
        def work():
            started.set()
            while True:
                a.view(np.ndarray).copy()
        threading.Thread(target=work, daemon=True).start()
        started.wait()
        time.sleep(0.1)
        print('exit')
    """)
    assert proc.returncode == 0, proc.stderr
    assert "exit" in proc.stdout
