"""Private mode as a scratch workspace: edit 1% of an array, then make the edits durable.

Each run copies the ``npy`` dataset (float32, numpy's header, so data does not start on a page)
into its scratch folder (not timed, ``fsync``'d, and evicted for the cold cache mode), views it
as rows of ``row`` float32, sets ``fraction`` of the rows, chosen at random, to -1, and makes
that durable. Timed end to end: open, edit, write back.

``private.full_copy`` (baseline)
    ``np.array(np.load(mmap_mode="r"))``: the whole array in memory, edit, then ``pwrite`` the
    whole data section back and ``fsync``. What numpy offers when the edits must be tried
    without touching the file first.
``private.shared_flush``
    ``bigarr.open(path, "shared")``: edit in place, then ``flush()`` (``msync`` of everything;
    the kernel writes only the dirty pages). The edits reach the file as they are made: no
    way to throw them away.
``private.commit``
    ``bigarr.open(path, "private")``: edit scratch pages, then ``commit()`` (``pwrite`` of each
    scratch page run, ``fdatasync``, drop the copies).

Two groups: ``private`` edits rows of 256 float32 (1 KiB: about 26,000 scattered pages of a
2 GiB file), ``private_64k`` rows of 16384 float32 (64 KiB: runs of 16-17 pages). Both bigarr
cases advise ``random`` first (``hint`` parameter), so a cold fault reads one page, not 8 MiB.

Extra measures in the JSON: ``modified_bytes`` (the edited rows), ``modified_page_bytes`` (the
file pages they touch), ``write_ratio`` (``write_bytes`` of the timed section over
``modified_page_bytes``; the target for ``commit`` is at most 1.1), ``commit_ratio`` (bytes
``commit()`` wrote over ``modified_page_bytes``) and ``device_write_bytes`` /
``device_write_ratio``: sectors written to the file's block device during the timed section
(from ``/sys/dev/block/M:m/stat``; device-wide, so other processes' writes inflate it). The
device figure is the cross-check that matters on kernels whose page cache uses large folios:
``/proc/self/io`` charges a whole folio (up to 2 MiB) to ``write_bytes`` when one page of it is
dirtied, even though ext4 writes back only the dirty blocks after a ``pwrite``; a page dirtied
through a *shared mapping* marks the whole folio dirty, and the whole folio is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from harness import Context, case, evict

_PARAMS = {"row": 256, "fraction": 0.01, "seed": 5, "hint": "random"}
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _copy(ctx: Context) -> Path:
    """Copy the dataset into the scratch folder (not timed) and put it in the cache state."""
    src, dst = ctx.path("npy"), ctx.scratch / "work.npy"
    size = os.path.getsize(src)
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        done = 0
        while done < size:
            n = os.copy_file_range(fi.fileno(), fo.fileno(), size - done)
            if n <= 0:
                raise OSError(f"copy_file_range stopped at {done} of {size} bytes")
            done += n
        os.fsync(fo.fileno())
    if ctx.cache == "cold":
        evict([dst])
    return dst


def _plan(ctx: Context, data_offset: int) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
    row = int(ctx.params["row"])
    nrows = ctx.n // row
    rng = np.random.default_rng(int(ctx.params["seed"]))
    rows = np.sort(rng.choice(nrows, int(nrows * float(ctx.params["fraction"])), replace=False))
    first = (data_offset + rows * row * 4) // _PAGE
    last = (data_offset + (rows + 1) * row * 4 - 1) // _PAGE
    # rows are sorted and disjoint: neighbours can share at most one page
    npages = int((last - first + 1).sum() - (last[:-1] == first[1:]).sum())
    return rows, {
        "edited_rows": int(rows.size),
        "modified_bytes": int(rows.size * row * 4),
        "modified_page_bytes": npages * _PAGE,
    }


def _device_written(path: Path) -> int | None:
    """Bytes written so far to the block device holding ``path`` (all processes), or None."""
    st = os.stat(path)
    try:
        with open(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat") as f:
            return int(f.read().split()[6]) * 512
    except (OSError, ValueError, IndexError):
        return None


class _Device:
    """Device-level bytes written during a block: a cross-check of ``write_bytes``."""

    def __init__(self, path: Path) -> None:
        self.path, self.nbytes = path, None

    def __enter__(self) -> _Device:
        self.start = _device_written(self.path)
        return self

    def __exit__(self, *exc: object) -> None:
        stop = _device_written(self.path)
        if stop is not None and self.start is not None:
            self.nbytes = stop - self.start


def _data_offset(path: Path) -> int:
    with open(path, "rb") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        return f.tell()


def _finish(ctx: Context, path: Path, rows: np.ndarray[Any, Any], info: dict[str, Any],
            offset: int) -> dict[str, Any]:
    """Check the edits are in the file (not timed) and add the write ratio."""
    row = int(ctx.params["row"])
    disk = np.load(path, mmap_mode="r").reshape(-1, row)
    sample = rows[:: max(1, rows.size // 64)]
    assert (np.asarray(disk[sample]) == -1.0).all(), "edits missing from the file"
    untouched = np.setdiff1d(np.arange(0, disk.shape[0], 997), rows)[:64]
    expect = (np.arange(row)[None, :] + untouched[:, None] * row) % 251
    assert (np.asarray(disk[untouched]) == expect).all(), "unedited rows changed"
    del disk
    written = ctx.timed.write_bytes if ctx.timed is not None else None
    if written is not None:
        info["write_ratio"] = round(written / info["modified_page_bytes"], 4)
    device = info.get("device_write_bytes")
    if device is not None:
        info["device_write_ratio"] = round(device / info["modified_page_bytes"], 4)
    info["data_offset"] = offset
    return info


def full_copy(ctx: Context) -> dict[str, Any]:
    """numpy: copy everything into memory, edit 1% of rows, write the whole array back."""
    path = _copy(ctx)
    offset = _data_offset(path)
    rows, info = _plan(ctx, offset)
    row = int(ctx.params["row"])
    with _Device(path) as dev, ctx.timer():
        a = np.array(np.load(path, mmap_mode="r"))
        a.reshape(-1, row)[rows] = -1.0
        fd = os.open(path, os.O_WRONLY)
        try:
            view, done = memoryview(a).cast("B"), 0
            while done < len(view):
                done += os.pwrite(fd, view[done : done + (64 << 20)], offset + done)
            os.fsync(fd)
        finally:
            os.close(fd)
        del a
    info["device_write_bytes"] = dev.nbytes
    return _finish(ctx, path, rows, info, offset)


def shared_flush(ctx: Context) -> dict[str, Any]:
    """bigarr shared mode: edit 1% of rows in place, then flush everything."""
    import bigarr

    path = _copy(ctx)
    offset = _data_offset(path)
    rows, info = _plan(ctx, offset)
    row = int(ctx.params["row"])
    with _Device(path) as dev, ctx.timer():
        arr = bigarr.open(path, "shared")
        arr.advise(str(ctx.params["hint"]))
        arr.reshape(-1, row)[rows] = -1.0
        arr.flush()
        arr.close()
    info["device_write_bytes"] = dev.nbytes
    return _finish(ctx, path, rows, info, offset)


def private_commit(ctx: Context) -> dict[str, Any]:
    """bigarr private mode: edit 1% of rows as scratch edits, then commit()."""
    import bigarr

    path = _copy(ctx)
    offset = _data_offset(path)
    rows, info = _plan(ctx, offset)
    row = int(ctx.params["row"])
    with _Device(path) as dev, ctx.timer():
        arr = bigarr.open(path, "private")
        arr.advise(str(ctx.params["hint"]))
        arr.reshape(-1, row)[rows] = -1.0
        scratch = arr.scratch_bytes()
        committed = arr.commit()
        left = arr.scratch_bytes()
        arr.close()
    info.update(scratch_bytes=scratch, commit_bytes=committed, scratch_after=left,
                device_write_bytes=dev.nbytes, commit_ratio=round(committed /
                                                                  info["modified_page_bytes"], 4))
    return _finish(ctx, path, rows, info, offset)


# Two edit granularities: 1 KiB rows (scattered 4 KiB page writes: bound by the disk's random
# write rate) and 64 KiB rows (runs of 16-17 pages).
for _group, _row in (("private", 256), ("private_64k", 16384)):
    _params = {**_PARAMS, "row": _row}
    case(f"{_group}.full_copy", group=_group, peer="np.array copy + full write",
         data=("npy",), params=_params)(full_copy)
    case(f"{_group}.shared_flush", group=_group, peer="bigarr shared + flush",
         baseline=f"{_group}.full_copy", data=("npy",), params=_params)(shared_flush)
    case(f"{_group}.commit", group=_group, peer="bigarr private + commit",
         baseline=f"{_group}.full_copy", data=("npy",), params=_params)(private_commit)
