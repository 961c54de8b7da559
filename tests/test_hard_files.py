"""Hostile file conditions (issue 11, points 4, 5, 8, 9, 10).

What ``overwrite`` may replace, interrupted zarr outputs, full and read-only file systems, the
Appender's header room, and hostile paths fed to every public entry point. Mounting needs root
(tmpfs, ext4 on a loop device); those tests skip cleanly where it is impossible.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr import errors
from bigarr._cli.main import main

zarr = pytest.importorskip("zarr")

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # zarr's unstable-dtype notes


# ---- helpers -----------------------------------------------------------------------------------
def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run the command line in this process; return (status, stderr)."""
    try:
        status = main(list(args))
    except SystemExit as exc:
        status = int(exc.code or 0)
    return status, capsys.readouterr().err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bigarr: error: "), err
    return lines[0]


def _mount(args: list[str], where: Path) -> bool:
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not sys.platform.startswith("linux"):
        return False
    where.mkdir(exist_ok=True)
    return subprocess.run(["mount", *args, str(where)], capture_output=True,
                          check=False).returncode == 0


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` for the block; skips where we cannot mount."""
    if not _mount(["-t", "tmpfs", "-o", f"size={size}", "tmpfs"], where):
        pytest.skip("cannot mount a tmpfs here (needs root on Linux)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@contextlib.contextmanager
def ext4(where: Path, image: Path, size: int) -> Iterator[Path]:
    """A small ext4 file system on a loop device (it keeps blocks fallocate got before ENOSPC)."""
    mkfs = shutil.which("mkfs.ext4")
    if mkfs is None:
        pytest.skip("no mkfs.ext4")
    with open(image, "wb") as f:
        f.truncate(size)
    if subprocess.run([mkfs, "-q", "-F", str(image)], capture_output=True,
                      check=False).returncode != 0 or not _mount(["-o", "loop", str(image)], where):
        pytest.skip("cannot mount an ext4 image here (needs root and loop devices)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def identity(path: Path) -> tuple[int, int, int]:
    st = os.lstat(path)
    return st.st_ino, st.st_mode, st.st_rdev


# ---- 4. overwrite replaces only what it says ---------------------------------------------------
def _make_node(kind: str, path: Path, tmp_path: Path) -> Any:
    """Put a ``kind`` of non-regular node at ``path``; return what keeps it alive."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":  # a twin of /dev/null (1, 3), made here, never the real one
        if os.geteuid() != 0:
            pytest.skip("creating a device node needs root")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return sock
    elif kind == "symlink":
        (tmp_path / "target.npy").write_bytes(b"the link's target")
        os.symlink(tmp_path / "target.npy", path)
    elif kind == "directory":
        path.mkdir()
        (path / "notes.txt").write_text("precious")
    return None


def _write(entry: str, dst: Path, src: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Write an output at ``dst`` with overwrite=True through one public entry point."""
    if entry == "create":
        bigarr.create(dst, 10, "f8", overwrite=True)
    elif entry == "open_raw":
        bigarr.open_raw(dst, "f8", (10,), mode="w+", overwrite=True)
    elif entry == "map_blocks":
        bigarr.map_blocks(np.negative, src, out=dst, overwrite=True, progress=False)
    elif entry == "from_zarr":
        bigarr.from_zarr(bigarr.to_zarr(np.zeros(10), zarr.storage.MemoryStore()), dst,
                         overwrite=True, progress=False)
    elif entry == "to_zarr":
        bigarr.to_zarr(src, dst, overwrite=True, progress=False)
    elif entry == "appender":
        bigarr.Appender(dst, "f8", overwrite=True)
    else:  # the command line
        args = {"cli create": ["create", str(dst), "--shape", "10"],
                "cli convert npy": ["convert", str(src), str(dst), "--to", "npy"],
                "cli convert zarr": ["convert", str(src), str(dst), "--to", "zarr"]}[entry]
        status, err = cli(capsys, *args, "--overwrite")
        assert status == 1
        raise errors.NotAFileError(one_line(err))


@pytest.mark.parametrize("kind", ["fifo", "device", "socket", "symlink", "directory"])
@pytest.mark.parametrize("entry", ["create", "open_raw", "map_blocks", "from_zarr", "to_zarr",
                                   "appender", "cli create", "cli convert npy",
                                   "cli convert zarr"])
def test_overwrite_never_replaces_what_is_not_a_file(
        tmp_path: Path, kind: str, entry: str, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression (issue 11.4): 'bigarr convert x.npy /dev/null --overwrite', as root, replaced
    # the device node with a regular file. Only a regular file (or a zarr array) is replaced.
    src = tmp_path / "x.npy"
    np.save(src, np.arange(10.0))
    dst = tmp_path / "node"
    keep = _make_node(kind, dst, tmp_path)
    before = identity(dst)
    try:
        with pytest.raises(errors.NotAFileError, match="node"):
            _write(entry, dst, src, capsys)
    finally:
        if keep is not None:
            keep.close()
    assert identity(dst) == before
    if kind == "symlink":
        assert (tmp_path / "target.npy").read_bytes() == b"the link's target"
    if kind == "directory":
        assert os.listdir(dst) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _group(path: Path) -> None:
    group = zarr.open_group(path, mode="w")
    group.create_array("a", shape=(4,), dtype="f8")[:] = 1.0
    group.create_array("b", shape=(4,), dtype="i4")[:] = 2
    (path / "NOTES.txt").write_text("precious")


def _group_intact(path: Path) -> None:
    assert (path / "NOTES.txt").read_text() == "precious"
    group = zarr.open_group(path, mode="r")
    assert group["a"][:].tolist() == [1.0] * 4 and group["b"][:].tolist() == [2] * 4


def test_overwrite_never_deletes_a_zarr_group(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Regression (issue 11.4): converting onto a zarr group deleted both of its arrays and an
    # unrelated NOTES.txt.
    src, dst = tmp_path / "x.npy", tmp_path / "g.zarr"
    np.save(src, np.arange(10.0))
    _group(dst)
    status, err = cli(capsys, "convert", str(src), str(dst), "--overwrite")
    assert status == 1
    assert "zarr group" in one_line(err)
    _group_intact(dst)
    for target in (dst, zarr.storage.LocalStore(dst)):
        with pytest.raises(errors.NotAFileError, match="group"):
            bigarr.to_zarr(src, target, overwrite=True)
        _group_intact(dst)
    memory = zarr.storage.MemoryStore()
    zarr.open_group(memory, mode="w").create_array("a", shape=(2,), dtype="f8")
    with pytest.raises(errors.NotAFileError, match="group"):
        bigarr.to_zarr(src, memory, overwrite=True)
    assert "a" in zarr.open_group(memory, mode="r")


def test_overwrite_never_deletes_files_inside_a_zarr_array(tmp_path: Path) -> None:
    dst = tmp_path / "a.zarr"
    bigarr.to_zarr(np.zeros(10), dst)
    (dst / "NOTES.txt").write_text("precious")
    with pytest.raises(errors.NotAFileError, match=r"other files \(NOTES.txt\)"):
        bigarr.to_zarr(np.ones(10), dst, overwrite=True)
    assert (dst / "NOTES.txt").read_text() == "precious"
    assert zarr.open_array(dst, mode="r")[:].tolist() == [0.0] * 10


def test_overwrite_replaces_a_zarr_array_with_zarr_s_own_debris(tmp_path: Path) -> None:
    # A write killed inside zarr's local store leaves "<name>.<uuid hex>.partial"; that is
    # zarr's, not the user's, and must not block replacing the array.
    dst = tmp_path / "a.zarr"
    bigarr.to_zarr(np.zeros(10), dst)
    (dst / "zarr.0123456789abcdef0123456789abcdef.partial").write_text("{")
    bigarr.to_zarr(np.ones(10), dst, overwrite=True)
    assert sorted(os.listdir(dst)) == ["c", "zarr.json"]


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_overwrite_replaces_a_file_and_a_zarr_array(tmp_path: Path, zarr_format: int) -> None:
    path = tmp_path / "a.npy"
    path.write_bytes(b"old")
    bigarr.create(path, 4, "i2", fill=7, overwrite=True).close()
    assert np.load(path).tolist() == [7] * 4
    dst = tmp_path / "a.zarr"
    bigarr.to_zarr(np.zeros(10), dst, zarr_format=zarr_format)  # type: ignore[arg-type]
    bigarr.to_zarr(np.ones(10), dst, overwrite=True, zarr_format=zarr_format)  # type: ignore[arg-type]
    assert zarr.open_array(dst, mode="r")[:].tolist() == [1.0] * 10
    with bigarr.from_zarr(dst, tmp_path / "b.npy") as back:
        assert back.tolist() == [1.0] * 10


# ---- 5. interrupted outputs are never accepted as input ----------------------------------------
_KILL_EVERY_WRITE = r"""
import os, signal, sys
import numpy as np
import bigarr, zarr
from zarr.storage import LocalStore

fmt, base = int(sys.argv[1]), sys.argv[2]
data = np.arange(4000, dtype=np.float64).reshape(400, 10)
original = LocalStore.set
for k in range(1, 64):
    pid = os.fork()  # before zarr's I/O thread exists: each child is a fresh run
    if pid == 0:
        calls = [0]
        async def dying_set(self, key, value):
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGKILL)  # kill -9 just before this write
            return await original(self, key, value)
        LocalStore.set = dying_set
        try:
            bigarr.to_zarr(data, f"{base}/k{k:02d}.zarr", chunks=(100, 10), zarr_format=fmt,
                           compressors=None, progress=False, budget="24KiB")  # a chunk a batch
        except BaseException as exc:
            print(repr(exc), file=sys.stderr, flush=True)
            os._exit(3)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status):  # k was past the last write: the run completed
        sys.exit(os.WEXITSTATUS(status) or print(k))
"""


@pytest.mark.parametrize("zarr_format", [3, 2])
def test_to_zarr_killed_at_every_write_is_never_read_as_complete(
        tmp_path: Path, zarr_format: int) -> None:
    # Regression (issue 11.5): 'convert x.npy x.zarr' was killed after 4 of 64 chunks, and
    # 'convert x.zarr b.npy' then exited 0 with 94% of the rows zero. Here the run is killed
    # before each of its store writes in turn (metadata and chunks, one SIGKILL per run).
    proc = subprocess.run([sys.executable, "-c", _KILL_EVERY_WRITE, str(zarr_format),
                           str(tmp_path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    writes = int(proc.stdout.split()[-1]) - 1
    assert writes >= 6  # metadata, four chunks, the completion marker (v2: more metadata)
    expected = np.arange(4000, dtype=np.float64).reshape(400, 10)
    outcomes = []
    for k in range(1, writes + 2):
        out = tmp_path / f"k{k:02d}.npy"
        try:
            with bigarr.from_zarr(tmp_path / f"k{k:02d}.zarr", out, progress=False) as got:
                np.testing.assert_array_equal(got, expected)  # accepted only when complete
            outcomes.append("complete")
        except errors.IncompleteOutputError:
            outcomes.append("incomplete")
        except (errors.FileMissingError, errors.FormatError):
            outcomes.append("nothing")  # killed before the array's metadata existed
            assert not out.exists()
    assert outcomes[-1] == "complete"  # the run that was not killed
    # A local array is written in a hidden sibling directory and renamed into place when
    # complete, so a killed run leaves nothing at the destination (the marker still guards
    # arrays written into other stores, in place).
    assert set(outcomes[:-1]) == {"nothing"}, outcomes
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".zarr")) == [
        f"k{writes + 1:02d}.zarr"]


def test_zarr_refusals_of_arguments_are_bigarr_errors_before_anything_exists(
        tmp_path: Path) -> None:
    data = np.arange(10.0)
    for kwargs in ({"compressors": "bogus"}, {"fill_value": "x"}, {"zarr_format": 4}):
        with pytest.raises(errors.ArgumentError):
            bigarr.to_zarr(data, tmp_path / "a.zarr", **kwargs)
    with pytest.raises(errors.ArgumentError, match="store"):
        bigarr.to_zarr(data, 42)
    assert not any(tmp_path.iterdir())


def test_to_zarr_refuses_the_budget_before_creating_anything(tmp_path: Path) -> None:
    with pytest.raises(errors.BudgetError, match="budget"):
        bigarr.to_zarr(np.zeros((1000, 100)), tmp_path / "a.zarr", budget="64KiB")
    with pytest.raises(errors.BudgetError, match="budget"):  # zarr's own chunk choice too
        bigarr.to_zarr(np.zeros((1000, 1000)), tmp_path / "a.zarr", chunks="auto", budget=1)
    assert not any(tmp_path.iterdir())


def _interrupted_zarr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Any]:
    """A zarr array as an interrupted to_zarr leaves it in a store it writes in place (any store
    but a local directory, which to_zarr writes aside and renames): marked incomplete, two of
    its five batches written."""
    data = np.arange(5000, dtype=np.float64).reshape(500, 10)
    dst = tmp_path / "x.zarr"
    z = zarr.create_array(dst, shape=data.shape, dtype=data.dtype, chunks=(100, 10),
                          attributes={"bigarr": {"complete": False}})
    z[:200] = data[:200]
    return dst, data


def test_from_zarr_convert_and_verify_refuse_an_incomplete_array(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    dst, data = _interrupted_zarr(tmp_path, monkeypatch)
    assert zarr.open_array(dst, mode="r").attrs["bigarr"] == {"complete": False}
    with pytest.raises(errors.IncompleteOutputError, match="incomplete"):
        bigarr.from_zarr(dst, tmp_path / "a.npy")
    assert not (tmp_path / "a.npy").exists()
    with bigarr.from_zarr(dst, tmp_path / "a.npy", force=True) as got:
        np.testing.assert_array_equal(got[:200], data[:200])
        assert not got[200:].any()  # what the interrupted run never wrote
    for args in (["convert", str(dst), str(tmp_path / "b.npy")], ["verify", str(dst)]):
        status, err = cli(capsys, *args)
        assert status == 1 and "incomplete" in one_line(err)
        assert cli(capsys, *args, "--force")[0] == 0
    assert np.load(tmp_path / "b.npy")[:200].tolist() == data[:200].tolist()


_CONVERT_KILLED = r"""
import os, signal, sys
from zarr.storage import LocalStore
import bigarr._cli.main

original, calls = LocalStore.set, [0]

async def set_(self, key, value):
    calls[0] += 1
    if calls[0] == 6:  # the array's metadata and four of its 64 chunks are written
        os.kill(os.getpid(), signal.SIGKILL)
    return await original(self, key, value)

LocalStore.set = set_
sys.exit(bigarr._cli.main.main(sys.argv[1:]))
"""


def test_convert_killed_midway_leaves_nothing_at_the_target(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression (issue 11.5), as reported: 'convert x.npy x.zarr' killed after 4 of 64
    # chunks; 'convert x.zarr b.npy' then exited 0 with 94% of the rows zero. The array is now
    # written in a hidden sibling directory and renamed into place when complete.
    src, dst = tmp_path / "x.npy", tmp_path / "x.zarr"
    np.save(src, np.arange(6400.0).reshape(640, 10) + 1)
    args = ["convert", str(src), str(dst), "--chunks", "10,10", "--budget", "64KiB",
            "--no-progress"]
    proc = subprocess.run([sys.executable, "-c", _CONVERT_KILLED, *args],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == -9, proc.stderr
    assert not dst.exists()  # not a partial array
    for again in (["convert", str(dst), str(tmp_path / "b.npy")], ["verify", str(dst)]):
        status, err = cli(capsys, *again)
        assert status == 1 and "no such file" in one_line(err).lower()
    assert not (tmp_path / "b.npy").exists()
    assert cli(capsys, *args)[0] == 0  # the same command again: it removes what the kill left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "x.zarr"]
    np.testing.assert_array_equal(zarr.open_array(dst, mode="r")[:], np.load(src))


def test_complete_and_foreign_zarr_arrays_are_accepted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = np.arange(30.0).reshape(10, 3)
    z = bigarr.to_zarr(data, tmp_path / "mine.zarr")
    assert z.attrs["bigarr"] == {"complete": True}
    zarr.create_array(tmp_path / "theirs.zarr", data=data)  # written without bigarr
    for name in ("mine", "theirs"):
        assert cli(capsys, "verify", str(tmp_path / f"{name}.zarr"))[0] == 0
        with bigarr.from_zarr(tmp_path / f"{name}.zarr", tmp_path / f"{name}.npy") as got:
            np.testing.assert_array_equal(got, data)


# ---- 8. space ----------------------------------------------------------------------------------
def test_oversized_create_is_refused_before_allocating(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression (issue 11.8): posix_fallocate keeps what it got before ENOSPC, so an oversized
    # create filled the whole file system for a while (996 failed writes elsewhere), and the
    # message then said "(0 free)" while 50 MiB was free.
    with tmpfs(tmp_path / "mnt", "50m") as mnt:
        free = free_bytes(mnt)
        calls: list[tuple[int, int, int]] = []
        real = os.posix_fallocate

        def spy(fd: int, offset: int, length: int) -> None:
            calls.append((fd, offset, length))
            real(fd, offset, length)

        monkeypatch.setattr(os, "posix_fallocate", spy)
        with pytest.raises(errors.DiskFullError) as info:
            bigarr.create(mnt / "big.npy", (100 << 20,), "u1")
        assert calls == []  # refused before a single block was taken
        assert f"{100 << 20} more bytes" in str(info.value)
        quoted = int(str(info.value).split("file system has ")[1].split()[0])
        assert free - (64 << 10) <= quoted <= free  # the free space as it was, not "0"
        assert info.value.errno == errno.ENOSPC
        assert free_bytes(mnt) == free and not any(mnt.iterdir())
        bigarr.create(mnt / "fits.npy", (40 << 20,), "u1").close()  # what fits still works
        assert calls


def test_enospc_during_allocation_gives_the_space_back_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # If the space vanishes between the check and the allocation (another writer), ext4 keeps
    # the blocks fallocate got before ENOSPC; bigarr cuts the file back before it raises.
    import bigarr._core.files

    with ext4(tmp_path / "mnt", tmp_path / "fs.img", 64 << 20) as mnt:
        monkeypatch.setattr(bigarr._core.files, "_free", lambda _path: None)  # the check is fooled
        free = free_bytes(mnt)
        path = mnt / "log.npy"
        with bigarr.Appender(path, np.uint8, step="1MiB") as app:
            size = os.path.getsize(path)
            with pytest.raises(errors.DiskFullError):
                app.append(np.zeros(100 << 20, np.uint8))
            assert os.path.getsize(path) == size  # still open: the space is already back
            assert free_bytes(mnt) > free - (2 << 20)
            app.append(np.ones(10, np.uint8))  # and the appender still works
        assert np.load(path).tolist() == [1] * 10


def test_appender_reserves_only_what_fits_on_a_small_disk(tmp_path: Path) -> None:
    # The default 64 MiB step does not fit on a 16 MiB file system; rows that fit still go in.
    with tmpfs(tmp_path / "mnt", "16m") as mnt:
        with bigarr.Appender(mnt / "a.npy", np.uint8) as app:
            app.append(np.ones(1 << 20, np.uint8))
            assert os.path.getsize(mnt / "a.npy") <= 4096 + (1 << 20)
        assert np.load(mnt / "a.npy").sum() == 1 << 20


def test_a_sparse_file_on_a_full_disk_is_refused_for_writing_not_a_sigbus(
        tmp_path: Path) -> None:
    # Regression: numpy's open_memmap writes sparse files; opened shared on a full disk, the
    # first write into a hole killed the process with SIGBUS.
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        path = mnt / "sparse.npy"
        np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(1 << 18,))
        with open(mnt / "fill", "wb") as f, contextlib.suppress(OSError):
            while True:
                f.write(b"x" * 65536)
                f.flush()
        with pytest.raises(errors.DiskFullError, match="sparse"):
            bigarr.open(path, "shared")
        with pytest.raises(errors.DiskFullError, match="sparse"):
            bigarr.open_raw(path, np.float64, mode="r+", offset=4096)
        with bigarr.open(path) as x:  # reading is fine
            assert x.shape == (1 << 18,)
        os.unlink(mnt / "fill")
        with bigarr.open(path, "shared") as x:  # with room, it opens
            x[:] = 1.0
        assert np.load(path).sum() == 1 << 18


def test_a_full_disk_error_names_the_output_never_a_hidden_file(tmp_path: Path) -> None:
    # Regression: map_blocks, lazy to_npy (a filter's too), take and matmul build their output
    # under a hidden name; DiskFullError named that (".out.npy.bigarr-partial-..."), not the
    # user's path.
    src = tmp_path / "src.npy"
    np.save(src, np.ones((1 << 18, 2)))  # 4 MiB
    with tmpfs(tmp_path / "mnt", "2m") as mnt:
        out = mnt / "out.npy"
        writers: list[Callable[[], Any]] = [
            lambda: bigarr.map_blocks(lambda b: b * 2, src, out=out, progress=False),
            lambda: (bigarr.lazy(src) * 2).to_npy(out, progress=False),
            lambda: bigarr.lazy(src)[bigarr.lazy(src)[:, 0] > 0].to_npy(out, progress=False),
            lambda: bigarr.take(src, np.arange(1 << 18), out, progress=False),
            lambda: bigarr.linalg.matmul(src, np.ones((2, 2)), out=out, progress=False),
        ]
        for write in writers:
            with pytest.raises(errors.DiskFullError) as info:
                write()
            assert str(out) in str(info.value) and "bigarr-" not in str(info.value)
        assert os.listdir(mnt) == []


def test_convert_on_a_full_disk_prints_the_bigarr_message_as_it_is(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: convert set the DiskFullError's filename, so its str() became
    # "[Errno 28] No room on disk for out.npy: ...: '.../out.npy'".
    src = tmp_path / "src.npy"
    np.save(src, np.ones((1 << 18, 2)))  # 4 MiB
    with tmpfs(tmp_path / "mnt", "2m") as mnt:
        status, err = cli(capsys, "convert", str(src), str(mnt / "out.npy"), "--no-progress")
        assert status == 1
        line = one_line(err)
        assert "[Errno" not in line and line.count("out.npy") == 1 and "No room" in line


def test_failed_map_blocks_without_resume_leaves_no_partial_file(tmp_path: Path) -> None:
    # Regression (issue 11.8): a failed run without resume left a full-size hidden partial file.
    src = tmp_path / "src.npy"
    np.save(src, np.arange(1 << 18, dtype=np.float64))
    calls = []

    def func(block: np.ndarray[Any, Any], block_info: dict[str, Any]) -> np.ndarray[Any, Any]:
        calls.append(0 if block_info["probe"] else 1)  # the probe measures temporaries
        if sum(calls) == 3:
            raise RuntimeError("the function failed")
        return block * 2

    for resume in (False, True):
        calls.clear()
        with pytest.raises(RuntimeError, match="failed"):
            bigarr.map_blocks(func, src, out=tmp_path / "out.npy", budget="2MiB", threads=1,
                              resume=resume, progress=False)
        hidden = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
        assert bool(hidden) == resume  # kept only for a resume to continue from
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "out.npy.bigarr-journal", "src.npy"]


def test_from_zarr_refuses_the_budget_before_creating_the_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Regression (issue 11.8): from_zarr preallocated the full output, then raised BudgetError.
    zarr.create_array(tmp_path / "a.zarr", data=np.zeros((1000, 100)), chunks=(500, 100))
    allocated: list[int] = []
    monkeypatch.setattr(os, "posix_fallocate", lambda fd, off, n: allocated.append(n))
    with pytest.raises(errors.BudgetError, match="budget"):
        bigarr.from_zarr(tmp_path / "a.zarr", tmp_path / "a.npy", budget="1MiB")
    assert allocated == [] and sorted(os.listdir(tmp_path)) == ["a.zarr"]


# ---- 9. the Appender's header room -------------------------------------------------------------
def _tight_npy(path: Path, rows: int) -> bytes:
    """A valid .npy file of ``rows`` float64 whose header has no spare byte."""
    from bigarr._formats.npy import _header_dict, build_header

    dt = np.dtype("<f8")
    text = _header_dict((rows,), dt, False)
    header = build_header((rows,), dt, total=10 + len(text) + 1)
    body = header + np.arange(rows, dtype=dt).tobytes()
    path.write_bytes(body)
    np.testing.assert_array_equal(np.load(path), np.arange(rows))  # numpy reads it
    return body


def test_appender_refuses_a_header_without_room_up_front(tmp_path: Path) -> None:
    # Regression (issue 11.9): a valid file whose header has no spare bytes failed only after
    # the data was written, and leaving the with block leaked an fd and a 64 MiB reservation.
    path = tmp_path / "tight.npy"
    body = _tight_npy(path, 9)  # "(9,)": no room for a two-digit length
    fds = open_fds()
    with pytest.raises(errors.HeaderError, match="no spare bytes"):
        bigarr.Appender(path)
    with pytest.raises(errors.HeaderError):
        bigarr.append(path, np.ones(3))
    assert open_fds() == fds and path.read_bytes() == body


def test_appender_refuses_an_append_the_header_cannot_record_before_writing(
        tmp_path: Path) -> None:
    path = tmp_path / "tight.npy"
    body = _tight_npy(path, 5)  # "(5,)": up to 9 rows fit
    fds = open_fds()
    with bigarr.Appender(path) as app:
        with pytest.raises(errors.HeaderError, match="at most 9 rows"):
            app.append(np.ones(10))
        assert path.read_bytes() == body  # nothing written, nothing reserved
        app.append(np.full(4, 7.0))
    assert open_fds() == fds
    np.testing.assert_array_equal(np.load(path), [0, 1, 2, 3, 4, 7, 7, 7, 7])


def test_appender_closes_its_file_when_the_final_commit_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bigarr._core.append

    path = tmp_path / "a.npy"
    bigarr.append(path, np.arange(3.0))
    fds = open_fds()
    app = bigarr.Appender(path, step="1MiB")
    app.append(np.ones(5))

    def eio(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(bigarr._core.append, "datasync", eio)
    with pytest.raises(errors.PathError, match="Input/output error"):
        app.close()
    assert app.closed and open_fds() == fds
    assert os.path.getsize(path) < 1 << 20  # the reserved step was trimmed
    np.testing.assert_array_equal(np.load(path), np.arange(3.0))


# ---- 10. every error is a bigarr error ---------------------------------------------------------
def test_read_only_file_system_is_read_only_error(tmp_path: Path) -> None:
    # Regression (issue 11.10): EROFS escaped as a bare OSError from open(p, "shared") and the
    # Appender.
    with tmpfs(tmp_path / "mnt", "4m") as mnt:
        path = mnt / "a.npy"
        bigarr.append(path, np.arange(4.0))
        zarr.create_array(mnt / "z.zarr", data=np.arange(4.0))
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        attempts: list[Callable[[], Any]] = [
            lambda: bigarr.open(path, "shared"),
            lambda: bigarr.Appender(path),
            lambda: bigarr.append(path, np.ones(2)),
            lambda: bigarr.create(mnt / "new.npy", 3),
            lambda: bigarr.map_blocks(np.negative, tmp_path / "src.npy", out=mnt / "o.npy"),
            lambda: bigarr.to_zarr(np.zeros(3), mnt / "new.zarr"),
            lambda: bigarr.from_zarr(mnt / "z.zarr", mnt / "new.npy"),
        ]
        np.save(tmp_path / "src.npy", np.zeros(10))
        for attempt in attempts:
            with pytest.raises(errors.ReadOnlyError) as info:
                attempt()
            assert isinstance(info.value, PermissionError)
        with bigarr.open(path) as arr:  # reading is fine
            assert arr.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_reductions_of_a_zero_byte_dtype_match_numpy(tmp_path: Path) -> None:
    # Regression (issue 11.10): AssertionError from count_nonzero, min and argmax on dtype=[].
    bigarr.create(tmp_path / "e.npy", (5, 2), dtype=[]).close()
    with bigarr.open(tmp_path / "e.npy") as arr:
        plain = np.zeros((5, 2), dtype=[])
        assert bigarr.count_nonzero(arr) == np.count_nonzero(plain) == 0
        with pytest.raises(TypeError):  # numpy cannot cast dtype([]) to bool along an axis
            np.count_nonzero(plain, axis=0)
        with pytest.raises(errors.DtypeError):
            bigarr.count_nonzero(arr, axis=0)
        for name in ("min", "max", "argmin", "argmax", "sum", "mean", "var"):
            with pytest.raises(TypeError):  # numpy has no such reduction for this dtype
                getattr(np, name)(plain)
            with pytest.raises(errors.DtypeError, match=name):
                getattr(bigarr, name)(arr)


def test_to_zarr_on_a_full_disk_raises_disk_full_and_closes_its_source(tmp_path: Path) -> None:
    # Regression (issue 11.10): the cleanup's MappingBusyError hid the ENOSPC from zarr's
    # writes, and the source stayed mapped.
    src = tmp_path / "x.npy"
    np.save(src, np.random.default_rng(0).random((4096, 64)))  # 2 MiB, incompressible enough
    with tmpfs(tmp_path / "mnt", "1m") as mnt:
        with pytest.raises(errors.DiskFullError) as info:
            bigarr.to_zarr(src, mnt / "x.zarr", chunks=(256, 64), compressors=None,
                           progress=False)
        assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
        with open("/proc/self/maps") as maps:
            assert str(src) not in maps.read()  # closed although the traceback is alive


def test_from_zarr_with_a_chunk_that_is_a_directory(tmp_path: Path) -> None:
    # Regression (issue 11.10): a bare IsADirectoryError escaped from from_zarr.
    bigarr.to_zarr(np.arange(100.0), tmp_path / "a.zarr", chunks=(10,), compressors=None)
    chunk = tmp_path / "a.zarr" / "c" / "3"
    chunk.unlink()
    chunk.mkdir()
    with pytest.raises(errors.NotAFileError, match="c/3"):
        bigarr.from_zarr(tmp_path / "a.zarr", tmp_path / "a.npy")
    assert not (tmp_path / "a.npy").exists()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_from_zarr_of_a_damaged_chunk_is_a_format_error(tmp_path: Path, zarr_format: int) -> None:
    bigarr.to_zarr(np.arange(1000.0), tmp_path / "a.zarr", chunks=(100,),
                   zarr_format=zarr_format)  # type: ignore[arg-type]
    chunk = tmp_path / "a.zarr" / ("c/3" if zarr_format == 3 else "3")
    chunk.write_bytes(b"not a compressed chunk")
    with pytest.raises(errors.FormatError, match="damaged"):
        bigarr.from_zarr(tmp_path / "a.zarr", tmp_path / "a.npy", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["a.zarr"]


def test_structured_dtype_with_a_subarray_is_unsupported_for_zarr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression (issue 11.10): 'convert' of such a dtype printed a zarr traceback.
    dt = np.dtype([("a", "f4", (3,)), ("b", "i4")])
    np.save(tmp_path / "s.npy", np.zeros(4, dt))
    with pytest.raises(errors.UnsupportedError, match="subarray"):
        bigarr.to_zarr(tmp_path / "s.npy", tmp_path / "s.zarr")
    status, err = cli(capsys, "convert", str(tmp_path / "s.npy"), str(tmp_path / "s.zarr"))
    assert status == 1 and "subarray" in one_line(err)
    assert sorted(os.listdir(tmp_path)) == ["s.npy"]


def test_numpy_integers_are_sizes(tmp_path: Path) -> None:
    # Regression (issue 11.10): budget=np.int64(...) was refused while threads=np.int32(2) was
    # accepted.
    data = np.arange(1000.0)
    assert bigarr.sum(data, budget=np.int64(1 << 20), threads=np.int32(2)) == data.sum()
    bigarr.to_zarr(data, tmp_path / "a.zarr", budget=np.int64(1 << 20))
    bigarr.from_zarr(tmp_path / "a.zarr", tmp_path / "a.npy", budget=np.uint32(1 << 20)).close()
    with pytest.raises(errors.BudgetError):
        bigarr.sum(data, budget=np.bool_(True))


# ---- the sweep: hostile paths at every public entry point --------------------------------------
_ENTRIES: dict[str, Callable[[Path, Path], Any]] = {
    "open": lambda p, src: bigarr.open(p),
    "open shared": lambda p, src: bigarr.open(p, "shared"),
    "create": lambda p, src: bigarr.create(p, 3),
    "create overwrite": lambda p, src: bigarr.create(p, 3, overwrite=True),
    "open_raw": lambda p, src: bigarr.open_raw(p, "u1"),
    "open_raw w+": lambda p, src: bigarr.open_raw(p, "u1", 3, mode="w+", overwrite=True),
    "from_zarr source": lambda p, src: bigarr.from_zarr(p, src.parent / "out.npy"),
    "from_zarr output": lambda p, src: bigarr.from_zarr(
        bigarr.to_zarr(np.zeros(3), zarr.storage.MemoryStore()), p, overwrite=True),
    "to_zarr source": lambda p, src: bigarr.to_zarr(p, src.parent / "out.zarr"),
    "to_zarr output": lambda p, src: bigarr.to_zarr(src, p, overwrite=True),
    "map_blocks input": lambda p, src: bigarr.map_blocks(np.negative, p,
                                                         out=src.parent / "out.npy"),
    "map_blocks out": lambda p, src: bigarr.map_blocks(np.negative, src, out=p,
                                                       overwrite=True),
    "append": lambda p, src: bigarr.append(p, np.ones(3)),
    "Appender": lambda p, src: bigarr.Appender(p, "f8", overwrite=True),
    "sum": lambda p, src: bigarr.sum(p),
}
_CLI = {
    "cli info": lambda p, src: ["info", str(p)],
    "cli create": lambda p, src: ["create", str(p), "--shape", "3", "--overwrite"],
    "cli convert source": lambda p, src: ["convert", str(p), str(src.parent / "out.npy")],
    "cli convert output": lambda p, src: ["convert", str(src), str(p), "--overwrite"],
    "cli convert zarr output": lambda p, src: ["convert", str(src), str(p), "--to", "zarr",
                                               "--overwrite"],
    "cli verify": lambda p, src: ["verify", str(p)],
}


def _hostile(kind: str, tmp_path: Path) -> tuple[Path, Any]:
    """A path of ``kind`` and the builtin exception class the bigarr error must also be."""
    if kind == "symlink loop":
        os.symlink(tmp_path / "loop", tmp_path / "loop")
        return tmp_path / "loop", OSError
    if kind == "directory":
        (tmp_path / "dir").mkdir()
        (tmp_path / "dir" / "notes.txt").write_text("precious")
        return tmp_path / "dir", OSError
    if kind == "fifo":
        os.mkfifo(tmp_path / "fifo")
        return tmp_path / "fifo", OSError
    if kind == "name too long":
        return tmp_path / ("n" * 300), OSError
    if kind == "NUL byte":
        return Path(str(tmp_path / "a") + "\x00b"), ValueError
    if kind == "missing parent":
        return tmp_path / "no" / "such" / "x.npy", OSError
    if kind == "file as a directory":
        (tmp_path / "f").write_bytes(b"x")
        return tmp_path / "f" / "x.npy", OSError
    if kind == "immutable directory":
        if os.geteuid() != 0:
            pytest.skip("root only: chattr +i")
        (tmp_path / "ro").mkdir()
        np.save(tmp_path / "ro" / "x.npy", np.zeros(3))
        if subprocess.run(["chattr", "+i", str(tmp_path / "ro")], capture_output=True,
                          check=False).returncode != 0:
            pytest.skip("no chattr +i on this file system")
        return tmp_path / "ro" / "new.npy", OSError
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["symlink loop", "directory", "fifo", "name too long",
                                  "NUL byte", "missing parent", "file as a directory",
                                  "immutable directory"])
@pytest.mark.parametrize("entry", sorted([*_ENTRIES, *_CLI]))
def test_hostile_paths_are_bigarr_errors_at_every_entry_point(
        tmp_path: Path, kind: str, entry: str, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "src.npy"
    np.save(src, np.arange(6.0))
    path, builtin = _hostile(kind, tmp_path)
    if kind == "missing parent" and entry in ("to_zarr output", "cli convert zarr output"):
        pytest.skip("zarr creates the missing folders of a new array, as zarr itself does")
    try:
        if entry in _CLI:
            status, err = cli(capsys, *_CLI[entry](path, src))
            assert status in (1, 2)  # 2: argparse refuses a NUL byte in argv-like input
            assert one_line(err) and "Traceback" not in err
        else:
            with pytest.raises(errors.BigArrError) as info:
                _ENTRIES[entry](path, src)
            if entry == "from_zarr source" and kind in ("directory", "fifo"):
                builtin = errors.FormatError  # it exists, but holds no zarr array
            assert isinstance(info.value, builtin), type(info.value).__mro__
    finally:
        if kind == "immutable directory":
            subprocess.run(["chattr", "-i", str(tmp_path / "ro")], check=False)
    if kind == "fifo":
        assert stat.S_ISFIFO(os.lstat(path).st_mode)
    if kind == "directory":
        assert os.listdir(path) == ["notes.txt"]


def test_a_fifo_as_input_never_blocks(tmp_path: Path) -> None:
    # A FIFO as an input is refused without reading it (a read would block forever).
    os.mkfifo(tmp_path / "fifo")
    code = textwrap.dedent(f"""
        import bigarr, numpy as np
        for call in (lambda: bigarr.open({str(tmp_path / 'fifo')!r}),
                     lambda: bigarr.append({str(tmp_path / 'fifo')!r}, np.ones(3))):
            try:
                call()
            except bigarr.errors.BigArrError as exc:
                print(type(exc).__name__)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, check=False)
    assert proc.returncode == 0 and proc.stdout.split() == ["NotAFileError"] * 2, proc.stderr
