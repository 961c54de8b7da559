"""Hostile conditions around durable writes: two writers, a full disk, a file cut or replaced.

Cases bigarr must turn into a bigarr error (or handle), never into lost rows, a corrupt file or
a SIGBUS.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import bigarr
from bigarr.errors import BigArrError, DiskFullError, FileChangedError

Run = Callable[..., subprocess.CompletedProcess[str]]


def _offset(path: Path) -> int:
    with bigarr.open(path) as arr:
        return int(arr.offset)


# ---- two Appenders on one file -----------------------------------------------------------------
def test_two_appenders_on_one_file_never_lose_rows(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    bigarr.append(path, np.arange(10.0))
    first = bigarr.Appender(path)
    try:
        second = bigarr.Appender(path)
    except BigArrError:  # refusing the second writer is a correct answer
        first.close()
        return
    first.append(np.arange(100.0, 105.0))
    second.append(np.arange(200.0, 203.0))
    first.close()
    second.close()
    got = np.load(path)
    assert sorted(got.tolist()) == sorted([*range(10), *range(100, 105), *range(200, 203)])


def test_closing_an_appender_never_cuts_rows_another_committed(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    bigarr.append(path, np.arange(10.0))
    idle = bigarr.Appender(path)
    try:
        busy = bigarr.Appender(path)
    except BigArrError:
        idle.close()
        return
    busy.append(np.arange(100.0))
    busy.close()
    idle.close()  # appended nothing
    got = np.load(path)  # the file must stay valid
    np.testing.assert_array_equal(got, np.concatenate([np.arange(10.0), np.arange(100.0)]))


# ---- the file changes under a live Appender ----------------------------------------------------
def test_appender_refuses_a_file_truncated_under_it(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    bigarr.append(path, np.arange(100.0))
    app = bigarr.Appender(path)
    app.append(np.arange(50.0))
    offset = _offset(path)
    os.truncate(path, offset + 10 * 8)  # another process cuts it to 10 rows
    try:
        with pytest.raises(FileChangedError):
            app.commit()
    finally:
        with contextlib.suppress(BigArrError):
            app.close()
    # The Appender publishes nothing for rows that are gone: the header still says the 100 rows
    # it said before, and the file is as the other process left it (bigarr does not repair
    # another writer's cut; np.load reports the short file itself).
    with open(path, "rb") as f:
        assert np.lib.format.read_array_header_1_0(
            (np.lib.format.read_magic(f), f)[1])[0] == (100,)
    assert os.path.getsize(path) == offset + 10 * 8


def test_appender_refuses_a_file_replaced_under_it(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    bigarr.append(path, np.arange(100.0))
    app = bigarr.Appender(path)
    app.append(np.arange(50.0))
    np.save(tmp_path / "other.npy", np.arange(3.0))
    os.replace(tmp_path / "other.npy", path)  # someone replaced the file
    try:
        with pytest.raises(FileChangedError):
            app.commit()
    finally:
        with contextlib.suppress(BigArrError):
            app.close()
    np.testing.assert_array_equal(np.load(path), np.arange(3.0))  # the new file is untouched


# ---- a small file system, filled up ------------------------------------------------------------
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs mounted for this test (root only), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _free(folder: Path) -> int:
    st = os.statvfs(folder)
    return st.f_bavail * st.f_frsize


def _fill(folder: Path, leave: int) -> None:
    """Fill ``folder``'s file system until about ``leave`` bytes are free."""
    with open(folder / "filler", "wb") as f:
        f.write(b"\xff" * max(0, _free(folder) - leave))


def test_disk_full_mid_append_is_a_clean_error(small_fs: Path) -> None:
    path = small_fs / "a.npy"
    rows = 0
    with bigarr.Appender(path, "f8", (), step="1MiB") as app:
        with pytest.raises(DiskFullError) as err:
            for _ in range(10):  # 800 KB at a time: the third or fourth reservation fails
                app.append(np.arange(rows, rows + 100_000, dtype="f8"))
                rows += 100_000
        assert isinstance(err.value, OSError) and "a.npy" in str(err.value)
        assert len(app) == rows  # the failed batch is not counted
        assert app.commit() == rows
        np.testing.assert_array_equal(np.load(path), np.arange(rows, dtype="f8"))
    np.testing.assert_array_equal(np.load(path), np.arange(rows, dtype="f8"))
    assert os.path.getsize(path) == _offset(path) + rows * 8  # the reservation was released
    assert _free(small_fs) > 0


def test_a_small_append_fits_a_nearly_full_disk(small_fs: Path) -> None:
    path = small_fs / "a.npy"
    with bigarr.Appender(path, "f8", (), step="1MiB") as app:  # (the default step: 64 MiB)
        app.append(np.arange(10.0))
    _fill(small_fs, leave=256 << 10)
    assert bigarr.append(path, np.arange(10.0)) == 20
    assert np.load(path).shape == (20,)


def test_create_on_a_full_disk_raises_disk_full(small_fs: Path) -> None:
    _fill(small_fs, leave=0)
    with pytest.raises(DiskFullError):
        bigarr.create(small_fs / "c.npy", (10,), "f8")
    with pytest.raises(DiskFullError):
        bigarr.Appender(small_fs / "d.npy", "f8", ())
    assert sorted(os.listdir(small_fs)) == ["filler"]  # nothing half-made is left


# ---- an input truncated while a chunked operation maps it ------------------------------------
_TRUNCATE_MID_RUN = {
    "map_blocks": """
        def cut(event):
            os.truncate('in.npy', 8192)   # another process shrinks the input mid-run
        bigarr.map_blocks(lambda x: x * 2, 'in.npy', out='o.npy', budget='1MiB', threads=1,
                          progress=cut)
    """,
    "sum": """
        def cut(event):
            os.truncate('in.npy', 8192)
        with bigarr.open('in.npy') as a:
            bigarr.sum(a, budget='1MiB', progress=cut)
    """,
    "to_zarr": """
        def cut(event):
            os.truncate('in.npy', 8192)
        bigarr.to_zarr('in.npy', 'o.zarr', chunks=(1024, 8), budget='1MiB', progress=cut)
    """,
    "lazy_to_zarr": """
        def cut(event):
            os.truncate('in.npy', 8192)
        (bigarr.lazy('in.npy') * 2).to_zarr('o.zarr', chunks=(1024, 8), budget='1MiB',
                                             threads=1, progress=cut)
    """,
}


# The cut happens between chunks (in a progress callback): each chunk loop checks the size of
# every mapped file before touching a chunk (bigarr._os.mapping.check_mapped). A cut *inside* a
# chunk, after the check (say, by the function itself, before it reads its block), still
# raises SIGBUS: no check can close that race, and bigarr documents it rather than hide it.
@pytest.mark.parametrize("op", sorted(_TRUNCATE_MID_RUN))
def test_input_truncated_mid_run_is_a_bigarr_error_not_sigbus(run_py: Run, op: str) -> None:
    body = textwrap.indent(textwrap.dedent(_TRUNCATE_MID_RUN[op]).strip("\n"), "    ")
    proc = run_py(f"""
import os, numpy as np, bigarr
np.save('in.npy', np.ones((65536, 8)))
try:
{body}
    print('finished without an error')
except bigarr.errors.BigArrError as exc:
    print('bigarr error', type(exc).__name__)
""")
    assert proc.returncode != -signal.SIGBUS, "killed by SIGBUS"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "bigarr error" in proc.stdout


# ---- a journaled commit interrupted, read before anyone recovers it ---------------------------
def test_a_half_done_journaled_commit_is_never_read_silently(tmp_path: Path, run_py: Run) -> None:
    path = tmp_path / "p.npy"
    bigarr.create(path, (64 * 512,), "f8", fill=0.25).close()
    proc = run_py("""
        import os, signal, bigarr
        real, calls = os.pwrite, [0]
        def pwrite(*args):
            calls[0] += 1
            if calls[0] == 3:  # two of the five page runs are in the file
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args)
        with bigarr.open('p.npy', 'private') as a:
            for page in (1, 10, 20, 40, 63):
                a[page * 512:(page + 1) * 512] = 9.0
            os.pwrite = pwrite
            a.commit(journal=True)
    """)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert len(os.listdir(tmp_path)) > 1  # its redo journal is still there
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            bigarr.open(path).close()
            refused = False
        except BigArrError:
            refused = True  # refusing is as good as warning
    assert refused or any(issubclass(w.category, bigarr.errors.IncompleteOutputWarning)
                          for w in seen)
    with pytest.raises(bigarr.errors.IncompleteOutputError, match="recover_commit"):
        bigarr.check_complete(path)
    cli = subprocess.run([sys.executable, "-m", "bigarr", "verify", str(path)],
                         capture_output=True, text=True)
    assert cli.returncode != 0, cli.stdout
    assert bigarr.recover_commit(path) == "replayed"  # then the whole commit is there
    bigarr.check_complete(path)
    got = np.load(path)
    assert (got.reshape(64, 512)[[1, 10, 20, 40, 63]] == 9.0).all()
    cli = subprocess.run([sys.executable, "-m", "bigarr", "verify", str(path)],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
