"""create / open / open_raw: modes, validation before mapping, atomic preallocated creation."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bigarr
from bigarr import errors


def test_create_is_page_aligned_and_numpy_loadable(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    arr = bigarr.create(path, (1000, 3), "f4", fill=1.5)
    assert arr.offset % max(bigarr.PAGE_SIZE, 4096) == 0
    arr[0, 0] = 7
    arr.close()
    plain = np.load(path, mmap_mode="r")
    assert plain.shape == (1000, 3) and plain.dtype == np.float32
    assert plain[0, 0] == 7 and plain[1:].sum() == 1.5 * 2997
    assert np.load(path).sum() == plain.sum()


def test_create_is_preallocated_not_sparse(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    bigarr.create(path, (4 << 20,), "u1").close()
    st = os.stat(path)
    assert st.st_blocks * 512 >= 4 << 20


@pytest.mark.parametrize("order", ["C", "F"])
def test_create_order_roundtrip(tmp_path: Path, order: str) -> None:
    path = tmp_path / "a.npy"
    with bigarr.create(path, (5, 4), "i8", order=order) as arr:
        arr[...] = np.arange(20).reshape(5, 4)
    back = np.load(path)
    assert back.tolist() == np.arange(20).reshape(5, 4).tolist()
    assert back.flags.f_contiguous == (order == "F")
    with bigarr.open(path) as again:
        assert again.flags.f_contiguous == (order == "F")
        assert again.tolist() == back.tolist()


def test_create_never_overwrites_unless_asked(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    path.write_bytes(b"precious")
    with pytest.raises(errors.FileExistsError_) as info:
        bigarr.create(path, 10, "f4")
    assert isinstance(info.value, FileExistsError)
    assert path.read_bytes() == b"precious"
    bigarr.create(path, 10, "f4", overwrite=True).close()
    assert np.load(path).shape == (10,)


def test_create_leaves_no_temporary_files(tmp_path: Path) -> None:
    bigarr.create(tmp_path / "a.npy", 10, "f4").close()
    with pytest.raises(errors.ShapeError):
        bigarr.create(tmp_path / "b.npy", (-1,), "f4")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npy"]


def test_crash_during_create_never_leaves_final_name(tmp_path: Path, run_py) -> None:  # type: ignore[no-untyped-def]
    # Kill the process while it fills a file: the final name must not exist.
    target = tmp_path / "big.npy"
    proc = run_py(f"""
        import os, signal, bigarr._core.files as f
        real = f._fill
        def dying_fill(*a, **k):
            os.kill(os.getpid(), signal.SIGKILL)
        f._fill = dying_fill
        import bigarr
        bigarr.create({str(target)!r}, (1 << 20,), 'f4', fill=3.0)
    """)
    assert proc.returncode == -9
    assert not target.exists()


@contextlib.contextmanager
def _tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs where we can mount one (root on Linux); else None."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                        capture_output=True).returncode == 0 if os.geteuid() == 0 else False
    try:
        yield mnt if ok else None  # type: ignore[misc]
    finally:
        if ok:
            subprocess.run(["umount", str(mnt)], check=False)


def test_create_on_full_disk_raises_disk_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _tiny_filesystem(tmp_path) as mnt:
        if mnt is None:  # not root: simulate the file system's answer instead
            def enospc(fd: int, offset: int, length: int) -> None:
                raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(os, "posix_fallocate", enospc)
            mnt = tmp_path
        with pytest.raises(errors.DiskFullError) as info:
            bigarr.create(mnt / "big.npy", (4 << 20,), "f4")
        assert isinstance(info.value, OSError) and info.value.errno == errno.ENOSPC
        assert "needs" in str(info.value)
        assert not any(mnt.iterdir())


def test_fallback_without_fallocate_checks_free_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "posix_fallocate")
    monkeypatch.setattr(os, "statvfs", lambda _p: os.statvfs_result((4096, 4096, 10, 10, 10,
                                                                       10, 10, 10, 0, 255)))
    with pytest.raises(errors.DiskFullError):
        bigarr.create(tmp_path / "a.npy", (1 << 20,), "f4")
    monkeypatch.undo()


def test_open_numpy_written_file_every_mode(npy_path: Path) -> None:
    expect = np.load(npy_path)
    for mode in ["r", "readonly", "shared", "r+", "private", "c", "copyonwrite", "readwrite"]:
        with bigarr.open(npy_path, mode) as arr:
            assert arr.offset == 128 and arr.tolist() == expect.tolist()
    with bigarr.open(npy_path, "r") as arr:
        assert arr.access == "readonly" and arr.mode == "r"
        with pytest.raises(ValueError):
            arr[0, 0] = 1


def test_shared_edits_reach_file_private_edits_do_not(npy_path: Path) -> None:
    with bigarr.open(npy_path, "private") as arr:
        arr[0, 0] = -1
        assert arr[0, 0] == -1
        arr.flush()
    assert np.load(npy_path)[0, 0] == 0
    with bigarr.open(npy_path, "shared") as arr:
        arr[0, 0] = -2
    assert np.load(npy_path)[0, 0] == -2


def test_open_raw(tmp_path: Path) -> None:
    path = tmp_path / "raw.bin"
    data = np.arange(1000, dtype="<u2")
    path.write_bytes(b"HEADER!!" + data.tobytes())
    with bigarr.open_raw(path, "<u2", offset=8) as arr:
        assert arr.shape == (1000,) and (arr == data).all()
    with bigarr.open_raw(path, "<u2", (10, 100), offset=8, order="F") as arr:
        assert arr.flags.f_contiguous and arr[3, 2] == data.reshape(10, 100, order="F")[3, 2]
    with pytest.raises(errors.TruncatedFileError):
        bigarr.open_raw(path, "<u2", (1001,), offset=8)
    new = tmp_path / "new.bin"
    with bigarr.open_raw(new, "f8", (3, 3), mode="w+") as arr:
        arr[...] = 2
    assert np.fromfile(new, "f8").sum() == 18
    with pytest.raises(errors.FileExistsError_):
        bigarr.open_raw(new, "f8", (3, 3), mode="w+")


def test_memmap_constructor_is_numpy_compatible(tmp_path: Path) -> None:
    path = tmp_path / "m.dat"
    mine = bigarr.memmap(path, dtype="f4", mode="w+", shape=(4, 5))
    mine[:] = 1
    mine.flush()
    theirs = np.memmap(path, dtype="f4", mode="r", shape=(4, 5))
    assert theirs.sum() == 20
    again = bigarr.memmap(path, dtype="f4", mode="r")
    assert again.shape == (20,) and isinstance(again, np.memmap)
    again2 = bigarr.memmap(path, dtype="f4", mode="readonly", offset=16, shape=(4, 4))
    assert again2.offset == 16 and again2.sum() == 16


# ---- bad input -------------------------------------------------------------------------------
def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(errors.FileMissingError) as info:
        bigarr.open(tmp_path / "nope.npy")
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(errors.NotAFileError) as info2:
        bigarr.open(tmp_path)
    assert isinstance(info2.value, IsADirectoryError)
    with pytest.raises(errors.NotAFileError):
        bigarr.create(tmp_path, 3, "f4")


def test_not_npy(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    path.write_text("hello world, not an array\n")
    with pytest.raises(errors.HeaderError) as info:
        bigarr.open(path)
    assert isinstance(info.value, ValueError)
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(errors.HeaderError):
        bigarr.open(tmp_path / "empty.npy")


def test_truncated_file_refused_before_mapping(npy_path: Path) -> None:
    size = npy_path.stat().st_size
    os.truncate(npy_path, size - 1)
    with pytest.raises(errors.TruncatedFileError) as info:
        bigarr.open(npy_path, "shared")
    assert "2800 data bytes" in str(info.value)


def test_object_and_unmappable_dtypes(tmp_path: Path) -> None:
    np.save(tmp_path / "obj.npy", np.array([1, "a", None], dtype=object), allow_pickle=True)
    with pytest.raises(errors.DtypeError) as info:
        bigarr.open(tmp_path / "obj.npy")
    assert isinstance(info.value, TypeError)
    for bad in [object, "O", [("a", "O")], "not-a-type", np.dtypes.StringDType()]:
        with pytest.raises(errors.DtypeError):
            bigarr.create(tmp_path / "x.npy", 3, bad)


@pytest.mark.parametrize("shape", [(-1,), (2.5,), ("3",), (True,), (1 << 40, 1 << 40)])
def test_bad_shapes(tmp_path: Path, shape: tuple[object, ...]) -> None:
    with pytest.raises(errors.ShapeError) as info:
        bigarr.create(tmp_path / "x.npy", shape, "f8")  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_shared_mode_on_read_only_file(npy_path: Path) -> None:
    os.chmod(npy_path, 0o444)
    if os.geteuid() == 0:  # root may write anything; drop write permission via an attribute
        pytest.importorskip("fcntl")
        r = subprocess.run(["chattr", "+i", str(npy_path)], capture_output=True)
        if r.returncode != 0:
            pytest.skip("cannot make a file read-only for root here")
    try:
        with pytest.raises(errors.ReadOnlyError) as info:
            bigarr.open(npy_path, "shared")
        assert isinstance(info.value, PermissionError)
        with bigarr.open(npy_path, "private") as arr:  # copy-on-write still works
            arr[0, 0] = 5
    finally:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(npy_path)], check=False)


def test_bad_mode_and_order(npy_path: Path, tmp_path: Path) -> None:
    with pytest.raises(errors.ModeError):
        bigarr.open(npy_path, "rw")
    with pytest.raises(errors.ModeError):
        bigarr.open(npy_path, "w+")
    with pytest.raises(errors.ShapeError):
        bigarr.create(tmp_path / "x.npy", 3, "f4", order="K")
    with pytest.raises(errors.FormatError):
        bigarr.create(tmp_path / "x.npy", 3, "f4", align=1000)


@pytest.mark.parametrize("shape", [(0,), (0, 5), (5, 0), (3, 0, 2)])
@pytest.mark.parametrize("mode", ["r", "shared", "private"])
def test_zero_size_arrays(tmp_path: Path, shape: tuple[int, ...], mode: str) -> None:
    path = tmp_path / "z.npy"
    bigarr.create(path, shape, "f4").close()
    assert np.load(path).shape == shape
    with bigarr.open(path, mode) as arr:
        assert arr.shape == shape and arr.sum() == 0 and arr[1:].size == 0
        arr.flush()
    np.save(tmp_path / "np0.npy", np.zeros(shape, "f4"))
    with bigarr.open(tmp_path / "np0.npy", mode) as arr:
        assert arr.shape == shape


def test_open_warns_about_an_interrupted_in_place_output(npy_path: Path) -> None:
    from bigarr._formats.journal import Journal
    from bigarr._os.fileid import path_id

    ident = path_id(str(npy_path))
    assert ident is not None
    journal = Journal.create(str(npy_path), {"kind": "in-place", "target": {
        "id": ident.to_json()}, "run": {"chunks": [[0, 50], [50, 100]]}})
    journal.record([0])
    journal.close()  # what a killed run leaves behind
    with pytest.warns(errors.IncompleteOutputWarning, match="1 of 2 chunks"):
        bigarr.open(npy_path).close()
    with pytest.raises(errors.IncompleteOutputError):
        bigarr.check_complete(npy_path)
    journal.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bigarr.open(npy_path).close()  # no warning once the journal is gone


def test_unreadable_file_is_access_denied_not_a_bare_permission_error(
    npy_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Regression: a file bigarr may not read raised the OS's bare PermissionError (stat, header
    # read), or a ReadOnlyError saying it "cannot be opened for writing" in read-only mode.
    # Simulated, since root may read anything.
    import builtins

    real_stat, real_open, real_os_open = os.stat, builtins.open, os.open
    target = str(npy_path)

    def deny(real: Any) -> Any:
        def call(path: Any, *args: Any, **kwargs: Any) -> Any:
            if str(path) == target:
                raise PermissionError(13, "Permission denied", target)
            return real(path, *args, **kwargs)
        return call

    for name, module, real in (("stat", os, real_stat), ("open", builtins, real_open),
                               ("open", os, real_os_open)):
        with monkeypatch.context() as m:
            m.setattr(module, name, deny(real))
            for mode in ("r", "c"):
                with pytest.raises(errors.AccessDeniedError, match="Permission denied") as info:
                    bigarr.open(npy_path, mode)
                assert isinstance(info.value, PermissionError)
                if module is not builtins:
                    with pytest.raises(errors.AccessDeniedError):
                        bigarr.open_raw(npy_path, "u1", mode=mode)


# ---- written_in_order: the sequential outputs' one protocol (sort, argsort, take) ---------------
def test_written_in_order_installs_only_a_complete_file(tmp_path: Path) -> None:
    from bigarr._core.files import written_in_order

    target = str(tmp_path / "out.npy")
    np.save(target, np.arange(3.0))
    data = np.arange(12, dtype=np.int32).reshape(6, 2)
    with pytest.raises(RuntimeError), written_in_order(
            target, (6, 2), np.dtype(np.int32), overwrite=True, kind="test") as sink:
        sink(data[:2])
        raise RuntimeError("the writer failed half way")
    assert np.array_equal(np.load(target), np.arange(3.0))  # the old file, untouched
    assert sorted(os.listdir(tmp_path)) == ["out.npy"]  # and no hidden file left
    with pytest.raises(bigarr.errors.ShapeError), written_in_order(
            target, (6, 2), np.dtype(np.int32), overwrite=True, kind="test") as sink:
        sink(data[:5])  # a short output is never installed
    assert np.array_equal(np.load(target), np.arange(3.0))
    with written_in_order(target, (6, 2), np.dtype(np.int32), overwrite=True,
                          kind="test") as sink:
        sink(data[:4])
        sink(data[4:])
    assert np.array_equal(np.load(target), data)
    assert sorted(os.listdir(tmp_path)) == ["out.npy"]


def test_written_in_order_never_clobbers_a_file_that_appeared(tmp_path: Path) -> None:
    from bigarr._core.files import written_in_order

    target = str(tmp_path / "new.npy")
    with pytest.raises(FileExistsError), written_in_order(
            target, (2,), np.dtype(np.float64), overwrite=False, kind="test") as sink:
        sink(np.ones(2))
        np.save(target, np.zeros(5))  # someone else's file, created meanwhile
    assert np.array_equal(np.load(target), np.zeros(5))
    assert sorted(os.listdir(tmp_path)) == ["new.npy"]


# ---- the output protocol (files.NewOutput) -----------------------------------------------------
def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_new_output_publishes_only_when_complete(tmp_path: Path) -> None:
    from bigarr._core.files import NewOutput

    target = tmp_path / "out.npy"
    np.save(target, np.arange(3))
    with NewOutput(str(target), overwrite=True) as output:
        output.build("new")
        with output.create((4,), np.int64) as m:
            m[...] = 7
        assert np.load(target).tolist() == [0, 1, 2]  # not yet
        output.publish()
    assert np.load(target).tolist() == [7, 7, 7, 7]
    assert _hidden(tmp_path) == []


def test_new_output_failure_leaves_the_old_file_and_no_hidden_one(tmp_path: Path) -> None:
    from bigarr._core.files import NewOutput

    target = tmp_path / "out.npy"
    np.save(target, np.arange(3))
    with pytest.raises(RuntimeError), NewOutput(str(target), overwrite=True) as output:
        output.build("partial")
        output.create((4,), np.int64).close()
        raise RuntimeError("the run failed")
    assert np.load(target).tolist() == [0, 1, 2]
    assert _hidden(tmp_path) == []
    with NewOutput(str(target), overwrite=True):  # the lock was released
        pass


def test_new_output_never_publishes_a_file_that_took_its_hidden_name(tmp_path: Path) -> None:
    """Regression: a file renamed onto the hidden name while the run wrote (map_blocks' partial)
    was published as the output: the user got another file's bytes, silently."""
    from bigarr._core.files import NewOutput

    target = tmp_path / "out.npy"
    np.save(target, np.arange(3))
    np.save(tmp_path / "other.npy", np.full(4, 9))
    with pytest.raises(errors.FileChangedError), \
            NewOutput(str(target), overwrite=True) as output:
        building = output.build("partial")
        with output.create((4,), np.int64) as m:
            m[...] = 7
        os.replace(tmp_path / "other.npy", building)
        output.publish()
    assert np.load(target).tolist() == [0, 1, 2]  # the old output, as it was
    assert np.load(building).tolist() == [9, 9, 9, 9]  # not ours: left alone


def test_new_output_never_removes_a_file_that_took_its_hidden_name(tmp_path: Path) -> None:
    from bigarr._core.files import NewOutput

    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError), NewOutput(str(target), overwrite=False) as output:
        building = output.build("partial")
        output.create((4,), np.int64).close()
        other = tmp_path / "other"
        other.write_bytes(b"not ours")
        os.replace(other, building)  # another file, same name: not the one created
        raise RuntimeError("the run failed")
    assert Path(building).read_bytes() == b"not ours"
    assert not target.exists()


def test_new_output_keeps_a_resumable_partial_and_refuses_a_file_that_appeared(
        tmp_path: Path) -> None:
    from bigarr._core.files import NewOutput

    target = tmp_path / "out.npy"
    with pytest.raises(RuntimeError), NewOutput(str(target), overwrite=False) as output:
        kept = output.build("partial", keep=True)
        output.create((2,), np.int64).close()
        raise RuntimeError("killed, resumable")
    assert os.path.exists(kept)
    with NewOutput(str(target), overwrite=False) as output:
        output.build("partial", adopt=kept)
        target.write_bytes(b"appeared meanwhile")
        with pytest.raises(errors.FileExistsError_, match="appeared"):
            output.publish()
    assert target.read_bytes() == b"appeared meanwhile"
    assert not os.path.exists(kept)  # a failed publish of an adopted partial: not resumable
