"""bigarr._os.paths: OS refusals as bigarr errors, what an output may replace, hidden names."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest

from bigarr import errors
from bigarr._os.fileid import hidden_name
from bigarr._os.paths import check_output, os_error


@pytest.mark.parametrize(("code", "writing", "cls", "builtin"), [
    (errno.ENOENT, False, errors.FileMissingError, FileNotFoundError),
    (errno.EROFS, True, errors.ReadOnlyError, PermissionError),
    (errno.EACCES, True, errors.ReadOnlyError, PermissionError),
    (errno.EACCES, False, errors.AccessDeniedError, PermissionError),
    (errno.EPERM, False, errors.AccessDeniedError, PermissionError),
    (errno.ENOSPC, True, errors.DiskFullError, OSError),
    (errno.EDQUOT, True, errors.DiskFullError, OSError),
    (errno.EFBIG, True, errors.DiskFullError, OSError),
    (errno.ENOTDIR, False, errors.NotADirError, NotADirectoryError),
    (errno.EISDIR, False, errors.NotAFileError, IsADirectoryError),
    (errno.EEXIST, True, errors.FileExistsError_, FileExistsError),
    (errno.ELOOP, False, errors.PathError, OSError),
    (errno.ENAMETOOLONG, False, errors.PathError, OSError),
    (errno.EIO, False, errors.PathError, OSError),
])
def test_os_error_maps_each_errno_to_a_bigarr_error_and_its_builtin(
        code: int, writing: bool, cls: type[Exception], builtin: type[Exception]) -> None:
    exc = os_error(OSError(code, os.strerror(code), "/hidden/.x.bigarr-tmp-1"), "/data/x.npy",
                   writing=writing)
    assert type(exc) is cls and isinstance(exc, builtin) and isinstance(exc, errors.BigArrError)
    assert "/data/x.npy" in str(exc) and "bigarr-tmp" not in str(exc)
    assert "[Errno" not in str(exc)
    if isinstance(exc, OSError):
        assert exc.errno == code
    again = pickle.loads(pickle.dumps(exc))  # errors cross process boundaries (dask workers)
    assert type(again) is cls and str(again) == str(exc)
    already = errors.ShapeError("x")
    assert os_error(already, "/data/x.npy") is already  # type: ignore[arg-type]


def test_check_output(tmp_path: Path) -> None:
    assert check_output(str(tmp_path / "new.npy"), False) == "nothing"
    (tmp_path / "f.npy").write_bytes(b"x")
    with pytest.raises(errors.FileExistsError_, match="overwrite=True"):
        check_output(str(tmp_path / "f.npy"), False)
    assert check_output(str(tmp_path / "f.npy"), True) == "file"
    with pytest.raises(errors.NotAFileError, match="regular file"):
        check_output(str(tmp_path / "f.npy"), True, zarr=True)  # a zarr output replaces arrays
    (tmp_path / "empty").mkdir()
    assert check_output(str(tmp_path / "empty"), False, zarr=True) == "nothing"
    with pytest.raises(errors.NotAFileError, match="directory"):
        check_output(str(tmp_path / "empty"), True)
    with pytest.raises(errors.FileMissingError, match="create it first"):
        check_output(str(tmp_path / "no" / "x.npy"), True)
    assert check_output(str(tmp_path / "no" / "x.zarr"), True, zarr=True) == "nothing"
    with pytest.raises(errors.NotADirError):
        check_output(str(tmp_path / "f.npy" / "x.npy"), True)
    with pytest.raises(errors.InvalidPathError):
        check_output(str(tmp_path / "a\x00b"), True)


def test_hidden_names_stay_legal_for_the_longest_names(tmp_path: Path) -> None:
    name = "n" * 255  # NAME_MAX on Linux
    hidden = hidden_name(str(tmp_path / name), "partial")
    assert os.path.dirname(hidden) == str(tmp_path)
    assert os.path.basename(hidden).startswith(".nnn") and len(os.path.basename(hidden)) < 255
    Path(hidden).write_bytes(b"")  # the file system takes it
    # two long names sharing their first 100 characters never share hidden names (leftovers
    # of one must never be taken for the other's)
    other = hidden_name(str(tmp_path / (name[:-1] + "m")), "partial")
    assert os.path.basename(other)[:-16] != os.path.basename(hidden)[:-16]
