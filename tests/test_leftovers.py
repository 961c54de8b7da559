"""What a killed writer leaves behind, and who removes it (issue 11 points 1 and 8).

A new file is written unnamed (``O_TMPFILE``) where the kernel allows, so a kill leaves nothing;
elsewhere it has a hidden ``new`` name, and the next writer of the same target, holding that
target's output lock, removes what a killed writer left. Hidden names of long file names carry a
digest of the whole name, so one target's leftovers are never taken for another's.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import bigarr
from bigarr import errors
from bigarr._os import fileid

Run = Callable[..., subprocess.CompletedProcess[str]]

_KILLED_CREATE = """
    import os, signal, bigarr
    from bigarr._os import fileid
    {setup}
    real = os.posix_fallocate
    def dying(*args):
        os.kill(os.getpid(), signal.SIGKILL)
    os.posix_fallocate = dying
    bigarr.create({path!r}, (1 << 16,), 'f8')
"""


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "hidden-name"])
def test_a_killed_create_leaves_nothing_the_next_create_keeps(tmp_path: Path, run_py: Run,
                                                             unnamed: bool) -> None:
    path = tmp_path / "c.npy"
    setup = "" if unnamed else "fileid._TMPFILE = 0  # as on a file system without O_TMPFILE"
    proc = run_py(_KILLED_CREATE.format(setup=setup, path=str(path)))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    left = sorted(os.listdir(tmp_path))
    if unnamed and fileid.unnamed_supported(str(path)):
        assert left == [".c.npy.bigarr-lock"]  # (the lock is empty and removed by the rerun)
    else:
        assert any(".c.npy.bigarr-new-" in n for n in left), left  # the full-size temporary
    assert not path.exists()
    bigarr.create(path, (10,), "f8").close()
    assert sorted(os.listdir(tmp_path)) == ["c.npy"]


def test_leftovers_of_another_target_are_never_removed(tmp_path: Path) -> None:
    # two long names sharing their first 100 characters: one's leftovers are not the other's
    a, b = "x" * 150 + "a.npy", "x" * 150 + "b.npy"
    other = Path(fileid.hidden_name(str(tmp_path / b), "new"))
    other.write_bytes(b"a live writer's file")
    fileid.remove_leftovers(str(tmp_path / a), ("new", "partial"))
    assert other.exists()
    fileid.remove_leftovers(str(tmp_path / b), ("new",))
    assert not other.exists()


def test_a_planted_link_at_a_leftover_name_is_left_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    planted = Path(fileid.hidden_name(str(tmp_path / "o.npy"), "partial"))
    os.link(victim, planted)  # a hard link: two links, not bigarr's
    bigarr.map_blocks(lambda x: x + 1, np.zeros(10), out=tmp_path / "o.npy", progress=False)
    assert planted.exists() and victim.read_text() == "precious"


def test_create_refuses_while_another_writer_holds_the_output(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    with bigarr.Appender(path, "f8", ()) as app:
        app.append(np.arange(3.0))
        with pytest.raises(errors.OutputLockedError):
            bigarr.create(path, (5,), "f8", overwrite=True)
    np.testing.assert_array_equal(np.load(path), np.arange(3.0))


def test_to_zarr_overwrite_swaps_the_array_in_whole(tmp_path: Path) -> None:
    import zarr

    dst = tmp_path / "a.zarr"
    bigarr.to_zarr(np.zeros((100, 4)), dst, chunks=(10, 4))
    bigarr.to_zarr(np.ones((50, 2)), dst, chunks=(10, 2), overwrite=True)
    got = zarr.open_array(dst, mode="r")
    np.testing.assert_array_equal(got[:], np.ones((50, 2)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]  # nothing hidden left
    with pytest.raises(errors.FileExistsError_):
        bigarr.to_zarr(np.ones(3), dst)


def test_recover_commit_removes_a_journal_that_was_never_installed(tmp_path: Path) -> None:
    # Found by the full crash matrix: a commit killed between naming its finished journal
    # (a hidden name) and renaming it into place left that hidden journal after recovery. The
    # file was never touched (a commit starts writing only once its journal has its name).
    path = tmp_path / "p.npy"
    bigarr.create(path, (4096,), "u1").close()
    leftover = Path(fileid.hidden_name(str(tmp_path / ".p.npy.bigarr-commit"), "new"))
    leftover.write_bytes(b"bigarr-commit-journal 2\n...")
    assert bigarr.recover_commit(path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.npy"]


def test_to_zarr_into_an_empty_mount_point_writes_in_place(tmp_path: Path) -> None:
    # A sibling directory would be on the parent's file system: renaming it onto the mount
    # point fails (EXDEV/EBUSY), so such a destination is written in place (marker-guarded).
    import zarr

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        bigarr.to_zarr(np.arange(100.0), mnt, chunks=(10,))
        np.testing.assert_array_equal(zarr.open_array(mnt, mode="r")[:], np.arange(100.0))
        assert zarr.open_array(mnt, mode="r").attrs["bigarr"] == {"complete": True}
        assert sorted(p.name for p in tmp_path.iterdir()) == ["mnt"]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
