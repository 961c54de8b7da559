"""The ``bigarr`` command line: each subcommand at small sizes, and one-line errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import bigarr
from bigarr._cli.main import main, parse_shape


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m bigarr ARGS`` in a subprocess (errors must not show a traceback)."""
    return subprocess.run([sys.executable, "-m", "bigarr", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=300, check=False)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``main`` in this process; returns (status, stdout, stderr)."""
    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse usage errors and --help
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(err: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bigarr: error: "), err
    assert "Traceback" not in err


# ---- parsing ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "shape"), [
    ("1000,3", (1000, 3)), ("1000x3", (1000, 3)), ("(1000, 3)", (1000, 3)), ("7", (7,)),
    ("(5,)", (5,)), ("()", ()), ("2x3x4", (2, 3, 4)), ("0,4", (0, 4)),
])
def test_parse_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


def test_residency_bar_cells() -> None:
    from bigarr._cli.main import _bar

    bar = _bar([0.0, 0.2, 0.7, 1.0])
    assert len(bar) == 4 and len(set(bar)) == 4  # none, some, most, all
    assert _bar([0.0]) == bar[0] and _bar([1.0]) == bar[3]


# ---- create -------------------------------------------------------------------------------------
def test_create_makes_a_page_aligned_file(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.npy"
    status, out, _ = cli(capsys, "create", str(path), "--shape", "100,3", "--dtype", "f4",
                         "--fill", "1.5", "--order", "F")
    assert status == 0 and "created" in out
    loaded = np.load(path)
    assert loaded.shape == (100, 3) and loaded.dtype == np.float32
    assert loaded.flags.f_contiguous and np.all(loaded == 1.5)
    with bigarr.open(path) as arr:
        assert arr.offset % bigarr.PAGE_SIZE == 0


def test_create_refuses_to_overwrite_unless_asked(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.npy"
    assert cli(capsys, "create", str(path), "--shape", "4")[0] == 0
    status, _, err = cli(capsys, "create", str(path), "--shape", "8")
    assert status == 1
    assert_one_line_error(err)
    assert "--overwrite" in err
    assert np.load(path).shape == (4,)
    assert cli(capsys, "create", str(path), "--shape", "8", "--overwrite")[0] == 0
    assert np.load(path).shape == (8,)


@pytest.mark.parametrize("args", [
    ["--shape", "1,x"], ["--shape", "abc"], ["--shape", "3", "--dtype", "O"],
    ["--shape", "3", "--dtype", "nonsense"], ["--shape", "3", "--dtype", "i4", "--fill", "abc"],
    ["--shape", "3", "--order", "Z"], [],
])
def test_create_bad_arguments_are_one_line_errors(tmp_path: Path, args: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(capsys, "create", str(tmp_path / "a.npy"), *args)
    assert status == 2
    assert_one_line_error(err)
    assert not (tmp_path / "a.npy").exists()


# ---- info ---------------------------------------------------------------------------------------
def test_info_reports_geometry_and_residency(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.npy"
    with bigarr.create(path, (5000, 4), "f4") as arr:
        arr[:] = 1.0  # dirty pages are resident
    status, out, _ = cli(capsys, "info", str(path), "--json")
    assert status == 0
    info = json.loads(out)
    assert info["shape"] == [5000, 4] and info["dtype"] == "<f4" and info["order"] == "C"
    assert info["data_offset"] % bigarr.PAGE_SIZE == 0 and info["page_aligned"]
    assert info["data_bytes"] == 5000 * 4 * 4
    assert info["file_bytes"] == os.path.getsize(path)
    assert info["pages"] == -(-info["data_bytes"] // bigarr.PAGE_SIZE)
    assert 0.0 <= info["resident_fraction"] <= 1.0
    assert len(info["resident_cells"]) == min(40, info["pages"])
    status, out, _ = cli(capsys, "info", str(path))
    assert status == 0
    for word in ("shape", "(5000, 4)", "float32", "data offset", "page-aligned", "on disk",
                 "resident"):
        assert word in out


def test_info_sees_evicted_pages_and_numpy_alignment(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        evict: Callable[[Path], None]) -> None:
    path = tmp_path / "n.npy"
    np.save(path, np.arange(200_000, dtype=np.float64))
    evict(path)
    info = json.loads(cli(capsys, "info", str(path), "--json")[1])
    assert not info["page_aligned"] and info["data_offset"] == 128 and info["alignment"] == 128
    assert info["resident_fraction"] < 0.5  # evicted (a shared machine may read some back)


def test_info_reports_sparse_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "sparse.npy"
    with bigarr.create(path, (4 << 20,), "u1"):
        pass
    with open(path, "r+b") as f:  # punch the data out: a file that is all hole after the header
        header = f.read(bigarr.PAGE_SIZE)
        f.truncate(0)
        f.seek(0)
        f.write(header)
        f.truncate(bigarr.PAGE_SIZE + (4 << 20))
    info = json.loads(cli(capsys, "info", str(path), "--json")[1])
    assert info["sparse"] is True and info["disk_bytes"] < info["file_bytes"]


def test_info_of_a_zarr_array(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    zarr = pytest.importorskip("zarr")
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=(10, 3), chunks=(5, 3), dtype="i2")
    z[:] = 1
    status, out, _ = cli(capsys, "info", str(tmp_path / "a.zarr"))
    assert status == 0 and "zarr" in out and "(10, 3)" in out and "(5, 3)" in out


# ---- verify -------------------------------------------------------------------------------------
def test_verify_ok_and_per_chunk_checksums(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.npy"
    data = np.random.default_rng(1).standard_normal((40_000, 5)).astype(np.float32)
    with bigarr.create(path, data.shape, data.dtype) as arr:
        arr[:] = data
    status, out, _ = cli(capsys, "verify", str(path))
    assert status == 0 and "OK" in out
    status, out, _ = cli(capsys, "verify", str(path), "--checksum", "--budget", "64KiB",
                         "--json", "--no-progress")
    assert status == 0
    report = json.loads(out)
    assert report["ok"] and report["checksum"] == "crc32"
    assert report["crc32"] == f"{zlib.crc32(data.tobytes()):08x}"
    chunks = report["chunks"]
    assert len(chunks) > 10 and sum(c["bytes"] for c in chunks) == data.nbytes
    raw = data.tobytes()
    pos = 0
    for c in chunks:  # each chunk's checksum is that of its bytes, in file order
        assert c["crc32"] == f"{zlib.crc32(raw[pos:pos + c['bytes']]):08x}"
        assert c["bytes"] <= 64 << 10
        pos += c["bytes"]
    status, out, _ = cli(capsys, "verify", str(path), "--checksum", "blake2b", "--no-progress")
    assert status == 0 and "blake2b" in out and len(out.splitlines()) >= 3


def test_verify_checksums_follow_the_data(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.npy"
    with bigarr.create(path, (30_000,), "f8") as arr:
        arr[:] = 1
    before = json.loads(cli(capsys, "verify", str(path), "--checksum", "--json",
                            "--budget", "64KiB")[1])
    with bigarr.open(path, "shared") as arr:
        arr[-1] = 2
    after = json.loads(cli(capsys, "verify", str(path), "--checksum", "--json",
                           "--budget", "64KiB")[1])
    changed = [a["chunk"] for a, b in zip(after["chunks"], before["chunks"], strict=True)
               if a["crc32"] != b["crc32"]]
    assert changed == [len(after["chunks"]) - 1]


def test_verify_truncated_file_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.npy"
    with bigarr.create(path, (1000,), "f8"):
        pass
    os.truncate(path, os.path.getsize(path) - 8)
    status, _, err = cli(capsys, "verify", str(path))
    assert status == 1
    assert_one_line_error(err)
    assert "truncated" in err


def test_verify_refuses_an_interrupted_in_place_output(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = _interrupted_output(tmp_path)
    status, _, err = cli(capsys, "verify", str(out))
    assert status == 1
    assert_one_line_error(err)
    assert "incomplete" in err


# ---- convert ------------------------------------------------------------------------------------
def test_convert_numpy_alignment_to_page_alignment(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "n.npy", tmp_path / "p.npy"
    data = np.arange(3_000_000, dtype=np.int32).reshape(10_000, 300)
    np.save(src, data)
    status, out, _ = cli(capsys, "convert", str(src), str(dst), "--budget", "8MiB",
                         "--no-progress")
    assert status == 0 and "converted" in out
    assert np.array_equal(np.load(dst), data)
    with bigarr.open(dst) as arr:
        assert arr.offset % bigarr.PAGE_SIZE == 0


def test_convert_raw_to_npy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "data.bin", tmp_path / "out.npy"
    data = np.arange(6000, dtype="<u2").reshape(200, 30)
    src.write_bytes(b"HEADER!!" + data.tobytes())
    status, _, _ = cli(capsys, "convert", str(src), str(dst), "--dtype", "u2", "--shape",
                       "200,30", "--offset", "8")
    assert status == 0
    assert np.array_equal(np.load(dst), data)
    dst2 = tmp_path / "flat.npy"  # no shape: 1-D to the end of the file
    assert cli(capsys, "convert", str(src), str(dst2), "--dtype", "u2", "--offset", "8")[0] == 0
    assert np.array_equal(np.load(dst2), data.ravel())


def test_convert_npy_zarr_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("zarr")
    src, mid, back = tmp_path / "a.npy", tmp_path / "a.zarr", tmp_path / "b.npy"
    data = np.random.default_rng(2).integers(0, 1000, (500, 7)).astype(np.float64)
    np.save(src, data)
    assert cli(capsys, "convert", str(src), str(mid), "--chunks", "100,7")[0] == 0
    assert cli(capsys, "convert", str(mid), str(back))[0] == 0
    assert np.array_equal(np.load(back), data)


@pytest.mark.parametrize("case", ["missing", "exists", "not-npy", "same", "zarr-to-zarr"])
def test_convert_errors(tmp_path: Path, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    src, dst = tmp_path / "a.npy", tmp_path / "b.npy"
    np.save(src, np.zeros(10))
    args = {
        "missing": [str(tmp_path / "nope.npy"), str(dst)],
        "exists": [str(src), str(src.with_name("c.npy"))],
        "not-npy": [str(tmp_path / "junk.bin"), str(dst)],
        "same": [str(src), str(src)],
        "zarr-to-zarr": [str(tmp_path / "z.zarr"), str(tmp_path / "y.zarr")],
    }[case]
    (tmp_path / "junk.bin").write_bytes(b"not an array")
    np.save(tmp_path / "c.npy", np.ones(3))
    if case == "zarr-to-zarr":
        zarr = pytest.importorskip("zarr")
        zarr.create_array(str(tmp_path / "z.zarr"), shape=(4,), dtype="f4")
    status, _, err = cli(capsys, "convert", *args)
    assert status in (1, 2)
    assert_one_line_error(err)
    assert np.array_equal(np.load(tmp_path / "c.npy"), np.ones(3))


# ---- errors: one line, no traceback, in this process and in a real one -------------------------
_ERRORS = [
    ["info", "missing.npy"], ["verify", "missing.npy"], ["info", "corrupt.npy"],
    ["verify", "corrupt.npy"], ["info", "."], ["create", "x.npy", "--shape", "-1"],
    ["create", "x.npy", "--shape=-1,3"], ["nosuchcommand"], [],
    ["demo", "--size", "tiny"], ["verify", "corrupt.npy", "--checksum", "md5"],
]
#: One case per subcommand (and the parser's own errors) also runs as ``python -m bigarr``:
#: the process's exit path (status, nothing printed at exit) is the same for the others.
_IN_A_PROCESS = [0, 3, 5, 7, 8, 9]


@pytest.mark.parametrize("args", _ERRORS)
def test_errors_are_one_line_without_traceback(tmp_path: Path, args: list[str],
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY\x01\x00\x20\x00{'descr': '<f8', 'sh")
    monkeypatch.chdir(tmp_path)
    status, out, err = cli(capsys, *args)
    assert status != 0
    assert_one_line_error(err)
    assert out == ""


@pytest.mark.parametrize("args", [_ERRORS[i] for i in _IN_A_PROCESS])
def test_errors_in_a_real_process_are_one_line_without_traceback(tmp_path: Path,
                                                                 args: list[str]) -> None:
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY\x01\x00\x20\x00{'descr': '<f8', 'sh")
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode != 0
    assert_one_line_error(proc.stderr)
    assert proc.stdout == ""


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = cli(capsys, "--help")
    assert status == 0
    for name in ("info", "create", "convert", "verify", "demo"):
        assert name in out


def test_console_script_and_version(tmp_path: Path) -> None:
    exe = shutil.which("bigarr")
    if exe is None:
        pytest.skip("the bigarr console script is not installed")
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and bigarr.__version__ in proc.stdout
    proc = subprocess.run([exe, "create", str(tmp_path / "a.npy"), "--shape", "2,2"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and np.load(tmp_path / "a.npy").shape == (2, 2)


# ---- demo ---------------------------------------------------------------------------------------
def test_demo_tiny(tmp_path: Path) -> None:
    # 8 MiB (was 4): np.histogram's fixed temporaries (about 2 MiB per thread, in blocks of
    # 65536 values) now count in the budget, by design.
    proc = run("demo", "--size", "6MiB", "--dir", str(tmp_path), "--budget", "8MiB",
               "--no-progress")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "numpy.memmap" in out and "bigarr" in out and "peak RSS" in out
    assert "results agree" in out and "summary:" in out
    # Both sides accumulate in float64 (bigarr's mean of float32 data is float32 unless asked;
    # the demo once compared that with numpy's float64 mean, off by ~1e-5 of a std).
    mean_err = re.search(r"mean differs by (\S+) std", out)
    assert mean_err and float(mean_err.group(1)) < 1e-6, out
    # The lazy pipeline's plans: mean+std, z, min+max, histogram (numpy's code takes 6).
    assert "in 4 passes over the data" in out, out
    assert os.listdir(tmp_path) == []  # cleaned up without --keep


def test_demo_keep_and_disk_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    proc = run("demo", "--size", "1MiB", "--dir", str(tmp_path), "--keep", "--no-progress",
               "--threads", "1", "--budget", "4MiB")  # 4 (was 2): histogram temporaries count
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["features.npy", "z_bigarr.npy"]
    status, _, err = cli(capsys, "demo", "--size", "100TiB", "--dir", str(tmp_path / "big"))
    assert status == 1
    assert_one_line_error(err)
    assert "free" in err


def test_demo_refuses_a_tiny_budget_before_generating(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(capsys, "demo", "--size", "1MiB", "--dir", str(tmp_path), "--budget",
                         "64KiB")
    assert status == 1
    assert_one_line_error(err)
    assert "budget" in err
    assert os.listdir(tmp_path) == []


# ---- regressions found by running the CLI as a new user --------------------------------------
@pytest.mark.parametrize(("dtype", "fill", "expected"), [
    ("b1", "0", False), ("b1", "false", False), ("b1", "True", True), ("b1", "1", True),
    ("u1", "255", 255), ("i4", "-7", -7), ("f4", "1.5", 1.5), ("f8", "-inf", -np.inf),
    ("c8", "1+2j", 1 + 2j), ("S3", "abc", b"abc"),
])
def test_create_fill_is_parsed_as_the_dtype(tmp_path: Path, dtype: str, fill: str, expected: object,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.npy"
    status, _, err = cli(capsys, "create", str(path), "--shape", "3", "--dtype", dtype,
                         f"--fill={fill}")  # "--fill -inf" would read -inf as an option
    assert status == 0, err
    assert np.array_equal(np.load(path), np.full(3, expected, dtype=dtype))


@pytest.mark.parametrize(("dtype", "fill"), [
    ("u1", "300"), ("u1", "-1"), ("i1", "128"), ("f4", "1e40"), ("b1", "yes"), ("b1", "2"),
    ("S3", "toolong"), ("i4", "1.5"), ("f8", "abc"),
])
def test_create_fill_that_does_not_fit_is_a_usage_error(tmp_path: Path, dtype: str, fill: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(capsys, "create", str(tmp_path / "a.npy"), "--shape", "3", "--dtype",
                         dtype, "--fill", fill)
    assert status == 2
    assert_one_line_error(err)
    assert "--fill" in err
    assert not (tmp_path / "a.npy").exists()


def test_create_empty_shape_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(capsys, "create", str(tmp_path / "a.npy"), "--shape", "")
    assert status == 2
    assert_one_line_error(err)
    assert not (tmp_path / "a.npy").exists()


def test_verify_checksum_before_the_file(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.arange(100.0))
    status, out, err = cli(capsys, "verify", "--checksum", str(path), "--json")
    assert status == 0, err
    assert json.loads(out)["crc32"] == f"{zlib.crc32(np.arange(100.0).tobytes()):08x}"
    status, _, err = cli(capsys, "verify", str(path), "--checksum", "md5")
    assert status == 2
    assert_one_line_error(err)
    assert "md5" in err and "crc32" in err


def test_verify_checksum_of_an_empty_array_is_printed(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.zeros((0, 3)))
    status, out, _ = cli(capsys, "verify", str(path), "--checksum")
    assert status == 0
    assert f"{zlib.crc32(b''):08x}" in out


def test_verify_and_info_name_structured_dtypes_alike(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "a.npy"
    np.save(path, np.zeros(4, dtype=[("a", "<i4"), ("b", "<f8")]))
    info = json.loads(cli(capsys, "info", str(path), "--json")[1])
    verify = json.loads(cli(capsys, "verify", str(path), "--json")[1])
    assert info["dtype"] == verify["dtype"]
    assert np.dtype(eval(verify["dtype"])) == np.dtype([("a", "<i4"), ("b", "<f8")])


@pytest.mark.parametrize("chunks", ["10", "10,8,3", "0,8"])
def test_convert_bad_zarr_chunks_are_refused_before_writing(
        tmp_path: Path, chunks: str, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("zarr")
    src = tmp_path / "a.npy"
    np.save(src, np.zeros((100, 8), np.float32))
    status, _, err = cli(capsys, "convert", str(src), str(tmp_path / "a.zarr"), "--chunks", chunks)
    assert status == 2
    assert_one_line_error(err)
    assert "--chunks" in err
    assert not (tmp_path / "a.zarr").exists()


def test_convert_chunks_need_a_zarr_output(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "a.npy"
    np.save(src, np.zeros((100, 8), np.float32))
    status, _, err = cli(capsys, "convert", str(src), str(tmp_path / "b.npy"), "--chunks", "10,8")
    assert status == 2
    assert_one_line_error(err)
    assert not (tmp_path / "b.npy").exists()


def test_convert_failed_zarr_output_is_removed(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("zarr")
    import bigarr._interop.zarr

    src, dst = tmp_path / "a.npy", tmp_path / "a.zarr"
    np.save(src, np.zeros((100, 8), np.float32))

    def full_disk(*args: object, **kwargs: object) -> None:
        os.makedirs(dst / "c", exist_ok=True)  # zarr has written some chunks already
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bigarr._interop.zarr, "_stream_out", full_disk)
    status, _, err = cli(capsys, "convert", str(src), str(dst))
    assert status == 1
    assert_one_line_error(err)
    assert "No space left on device" in err and "a.zarr" in err
    assert not dst.exists()


@pytest.mark.parametrize("content", ["garbage", '{"zarr_format": 3, "node_type": "group"}'])
def test_info_of_a_corrupt_zarr_is_one_line(tmp_path: Path, content: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("zarr")
    (tmp_path / "bad.zarr").mkdir()
    (tmp_path / "bad.zarr" / "zarr.json").write_text(content)
    status, _, err = cli(capsys, "info", str(tmp_path / "bad.zarr"))
    assert status == 1
    assert_one_line_error(err)
    assert "bad.zarr" in err


_FULL_DISK_IN_ZARR = r"""
import asyncio, errno, sys
from zarr.storage import LocalStore
import bigarr._cli.main

original, calls = LocalStore.set, [0]

async def set_(self, key, value):
    calls[0] += 1
    if calls[0] == 5:
        raise OSError(errno.ENOSPC, "No space left on device")
    await asyncio.sleep(0.02)  # the other chunk writes are still in flight
    return await original(self, key, value)

LocalStore.set = set_
sys.exit(bigarr._cli.main.main(sys.argv[1:]))
"""


def test_convert_to_zarr_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    pytest.importorskip("zarr")
    src, dst = tmp_path / "a.npy", tmp_path / "a.zarr"
    np.save(src, np.ones((4000, 8), np.float32))
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK_IN_ZARR, "convert", str(src),
                           str(dst), "--chunks", "100,8", "--no-progress"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1
    assert_one_line_error(proc.stderr)  # no "Task was destroyed but it is pending!" screens
    assert "No space left on device" in proc.stderr
    assert not dst.exists()


def test_create_larger_than_the_file_system_allows_is_disk_full(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 800 TB: EFBIG on ext4 (16 TiB file limit), ENOSPC elsewhere; both are DiskFullError.
    with pytest.raises(bigarr.errors.DiskFullError):
        bigarr.create(tmp_path / "huge.npy", (10**14,), "f8")
    status, _, err = cli(capsys, "create", str(tmp_path / "huge.npy"), "--shape", str(10**14))
    assert status == 1
    assert_one_line_error(err)
    assert "huge.npy" in err
    assert os.listdir(tmp_path) == []


def test_create_in_a_directory_without_write_permission(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:  # root ignores mode bits; an immutable directory refuses new entries even to root
        locked = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False)
        if locked.returncode != 0:
            folder.chmod(0o700)
            pytest.skip("running as root on a file system without chattr +i")
    try:
        with pytest.raises(bigarr.errors.ReadOnlyError, match="locked"):
            bigarr.create(folder / "a.npy", (3,), "f8")
        status, _, err = cli(capsys, "create", str(folder / "a.npy"), "--shape", "3")
    finally:
        if as_root:
            subprocess.run(["chattr", "-i", str(folder)], check=False)
        folder.chmod(0o700)
    assert status == 1
    assert_one_line_error(err)
    assert "bigarr-tmp" not in err


def test_demo_never_overwrites_or_deletes_a_users_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: with --dir, the demo wrote its input over an existing features.npy and its
    # cleanup deleted it.
    mine = tmp_path / "features.npy"
    np.save(mine, np.arange(5))
    status, _, err = cli(capsys, "demo", "--size", "1MiB", "--dir", str(tmp_path),
                         "--no-progress")
    assert status == 1
    assert_one_line_error(err)
    assert "features.npy" in err
    assert np.array_equal(np.load(mine), np.arange(5))
    assert os.listdir(tmp_path) == ["features.npy"]


def test_demo_removes_a_dir_it_created(tmp_path: Path) -> None:
    proc = run("demo", "--size", "1MiB", "--dir", str(tmp_path / "new" / "dir"), "--budget",
               "4MiB", "--threads", "1", "--no-progress")  # 4 (was 2): histogram temporaries
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(tmp_path) == []


def _interrupted_output(tmp_path: Path) -> Path:
    src, out = tmp_path / "src.npy", tmp_path / "out.npy"
    np.save(src, np.arange(400_000, dtype=np.float64))
    with bigarr.create(out, (400_000,), "f8") as target:
        calls = []

        def func(block: np.ndarray) -> np.ndarray:
            calls.append(1)
            if len(calls) == 3:
                raise KeyboardInterrupt  # the run dies partway, as if killed
            return block * 2

        with pytest.raises(KeyboardInterrupt):
            bigarr.map_blocks(func, str(src), out=target, budget="4MiB", threads=1,
                              resume=True, progress=False)
    return out


def test_convert_refuses_an_interrupted_output(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: convert copied the half-written data under a new name with no journal, so
    # the copy looked complete.
    out = _interrupted_output(tmp_path)
    status, _, err = cli(capsys, "convert", str(out), str(tmp_path / "copy.npy"))
    assert status == 1
    assert_one_line_error(err)
    assert "incomplete" in err
    assert not (tmp_path / "copy.npy").exists()


def test_info_of_an_interrupted_output_warns_in_one_line(tmp_path: Path) -> None:
    out = _interrupted_output(tmp_path)
    proc = run("info", str(out))
    assert proc.returncode == 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bigarr: warning: "), proc.stderr
    assert "incomplete" in lines[0]


def test_convert_overwrite_never_empties_a_directory_that_is_not_zarr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: 'convert a.npy proj --to zarr --overwrite' deleted everything in proj/.
    src, folder = tmp_path / "a.npy", tmp_path / "proj"
    np.save(src, np.zeros(10))
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    for args in (["--to", "zarr"], []):
        status, _, err = cli(capsys, "convert", str(src), str(folder), "--overwrite", *args)
        assert status == 1
        assert_one_line_error(err)
        assert "directory" in err and "[Errno None]" not in err
        assert (folder / "notes.txt").read_text() == "precious"


def test_convert_overwrite_replaces_a_zarr_array(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("zarr")
    src, dst = tmp_path / "a.npy", tmp_path / "a.zarr"
    np.save(src, np.zeros(10))
    assert cli(capsys, "convert", str(src), str(dst))[0] == 0
    np.save(src, np.ones(10))
    assert cli(capsys, "convert", str(src), str(dst), "--overwrite")[0] == 0
    assert cli(capsys, "convert", str(dst), str(tmp_path / "b.npy"))[0] == 0
    assert np.array_equal(np.load(tmp_path / "b.npy"), np.ones(10))


def test_info_of_a_non_ascii_name_on_an_ascii_terminal(tmp_path: Path) -> None:
    np.save(tmp_path / "tür.npy", np.zeros(3))
    proc = subprocess.run([sys.executable, "-m", "bigarr", "info", "tür.npy"], cwd=tmp_path,
                          capture_output=True, env=dict(os.environ, PYTHONIOENCODING="ascii"),
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert b"t\\xfcr.npy" in proc.stdout and b"Traceback" not in proc.stderr
