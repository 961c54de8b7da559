"""The uncompressed zarr fast path of :func:`bigarr.from_zarr`: chunk files read as bytes.

An uncompressed, unsharded zarr v3 array in a local directory keeps each chunk as a file of
its raw C-order bytes, so importing it needs no codec at all. Chunks that span whole rows
are the output's bytes one after another: :meth:`RawChunks.read_bytes` reads any byte range
of them (``preadv``), which the ``O_DIRECT`` output sink calls straight into its staging
buffers (:meth:`bigarr._os.sink.Sink.write_from`); where ``O_DIRECT`` is refused they are
copied file to file in the kernel (``copy_file_range``) or read into the mapped output. Other
chunks go through one reused buffer.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any

import numpy as np

from bigarr.errors import FormatError

__all__ = ["RawChunks", "raw_chunks"]


class RawChunks:
    """Reads the chunk files of an uncompressed, unsharded zarr v3 array in a local directory.

    Each chunk file is the raw C-order bytes of the full chunk shape. A chunk that spans every
    trailing dimension lands contiguously in the C-ordered output, so its bytes are read into
    the sink's staging (:meth:`read_bytes`), copied file to file (``copy_file_range``) or read
    straight into the mapped pages; other chunks go through one reused buffer.
    """

    def __init__(self, z: Any, root: str) -> None:
        self.z = z
        self.root = root
        self.chunks: tuple[int, ...] = tuple(z.chunks)
        self.dtype: np.dtype[Any] = z.dtype
        self.chunk_bytes = int(np.prod(self.chunks, dtype=object)) * self.dtype.itemsize
        fill = np.asarray(z.fill_value, dtype=self.dtype)
        self.fill: Any = None if not fill.tobytes().strip(b"\x00") else fill
        self.rows_whole = tuple(self.chunks[1:]) == tuple(z.shape[1:])
        self.buf = np.empty(0 if self.rows_whole else self.chunks, dtype=self.dtype)
        self.kernel_copy = True
        """Whether ``copy_file_range`` still looks usable (cleared after the first refusal)."""

    def _file(self, coords: tuple[int, ...]) -> str:
        key = self.z.metadata.encode_chunk_key(coords)
        return os.path.join(self.root, *key.split("/"))

    def read_rows(self, rows: slice, out: np.ndarray[Any, Any], fd: int, first: int) -> None:
        """Fill ``out`` (the output's rows ``rows``, whole chunk rows) from the chunk files.

        ``fd`` is the output file open for writing and ``first`` the file offset of ``out``'s
        first byte: chunks that span whole rows are copied file to file inside the kernel
        (``copy_file_range``: no user-space copy, no page faults), falling back to ``readinto``
        the mapped pages where the OS or file system cannot.
        """
        shape = self.z.shape
        row_bytes = out.nbytes // max(out.shape[0], 1)
        lo = rows.start // self.chunks[0]
        hi = -(-rows.stop // self.chunks[0])
        grids = [range(lo, hi)] + [range(-(-n // c)) for n, c in
                                   zip(shape[1:], self.chunks[1:], strict=True)]
        for coords in np.ndindex(*(len(g) for g in grids)):
            cidx = tuple(g[i] for g, i in zip(grids, coords, strict=True))
            sel = tuple(
                slice(i * c - (rows.start if d == 0 else 0),
                      min((i + 1) * c, n) - (rows.start if d == 0 else 0))
                for d, (i, c, n) in enumerate(zip(cidx, self.chunks, shape, strict=True))
            )
            self._read_chunk(cidx, out[sel], fd, first + sel[0].start * row_bytes)

    def read_bytes(self, first: int, dest: np.ndarray[Any, Any]) -> None:
        """Fill ``dest`` (``uint8``) with the array's C-order bytes from byte ``first`` on.

        Only for chunks that span whole rows (``rows_whole``): the array's bytes are then the
        chunk files' bytes one after another (the last chunk's file is cut at the array's end).
        A missing chunk reads as the fill value.
        """
        per = self.chunk_bytes  # bytes of one chunk, all rows in the file
        raw = dest.reshape(-1).data.cast("B")
        done, n = 0, int(dest.nbytes)
        while done < n:
            k, within = divmod(first + done, per)
            take = min(per - within, n - done)
            path = self._file((k,) + (0,) * (len(self.chunks) - 1))
            try:  # (open(), not os.open: a directory at a chunk's name is an error)
                f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
            except FileNotFoundError:
                self._fill_bytes(dest[done:done + take], within)
            else:
                with f:
                    size = os.fstat(f.fileno()).st_size
                    if size != per:
                        raise FormatError(
                            f"zarr chunk file {path} has {size} bytes; an uncompressed chunk "
                            f"of shape {self.chunks} and dtype {self.dtype} has {per}. The "
                            "array is damaged, or its metadata does not describe its chunks.")
                    got = 0
                    while got < take:
                        m = os.preadv(f.fileno(), [raw[done + got:done + take]], within + got)
                        if m <= 0:
                            raise FormatError(f"zarr chunk file {path} ended early.")
                        got += m
            done += take

    def _fill_bytes(self, dest: np.ndarray[Any, Any], within: int) -> None:
        """The fill value's bytes (zeros without one) for a missing chunk, from byte
        ``within`` of the chunk on."""
        if self.fill is None:
            dest[:] = 0
            return
        pattern = np.frombuffer(self.fill.tobytes(), np.uint8)
        phase = within % pattern.size
        dest[:] = np.resize(np.roll(pattern, -phase), dest.size)

    def _read_chunk(self, cidx: tuple[int, ...], dest: np.ndarray[Any, Any], fd: int,
                    at: int) -> None:
        path = self._file(cidx)
        try:
            f = open(path, "rb", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            if self.fill is not None:
                dest[...] = self.fill
            return  # the preallocated output already reads as zeros
        with f:
            size = os.fstat(f.fileno()).st_size
            if size != self.chunk_bytes:
                raise FormatError(
                    f"zarr chunk file {path} has {size} bytes; an uncompressed chunk of shape "
                    f"{self.chunks} and dtype {self.dtype} has {self.chunk_bytes}. The array "
                    "is damaged, or its metadata does not describe its chunks."
                )
            whole = self.rows_whole and dest.flags.c_contiguous
            if whole and self.kernel_copy and _copy_file(f.fileno(), fd, dest.nbytes, at):
                return
            if whole:
                self.kernel_copy = False
                got = f.readinto(dest.view(np.ndarray).reshape(-1).data.cast("B"))
                want = dest.nbytes
            else:
                got = f.readinto(self.buf.reshape(-1).data.cast("B"))
                want = self.chunk_bytes
                dest[...] = self.buf[tuple(slice(0, n) for n in dest.shape)]
            if got != want:
                raise FormatError(f"zarr chunk file {path} ended early ({got} of {want} bytes).")


def _copy_file(src: int, dst: int, nbytes: int, at: int) -> bool:
    """Copy ``nbytes`` from the start of ``src`` to offset ``at`` of ``dst`` in the kernel.

    Returns ``False`` (nothing copied) where ``copy_file_range`` is missing or refused
    (another OS, an old kernel, a file system pair that cannot), so the caller falls back.
    The written pages are the same page-cache pages the output mapping shows.
    """
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        return False
    done = 0
    try:
        while done < nbytes:
            n = copy(src, dst, nbytes - done, done, at + done)
            if n <= 0:
                raise FormatError(f"A zarr chunk file ended early ({done} of {nbytes} bytes).")
            done += n
    except OSError as exc:
        if done == 0 and exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL,
                                       errno.EOPNOTSUPP, errno.EBADF):
            return False
        raise
    return True


def raw_chunks(z: Any) -> RawChunks | None:
    """A fast reader when ``z`` is uncompressed, unsharded zarr v3 in a local directory."""
    try:
        from zarr.codecs import BytesCodec
        from zarr.storage import LocalStore

        store = z.store
        meta = z.metadata
        if not isinstance(store, LocalStore) or meta.zarr_format != 3 or z.shards is not None:
            return None
        codecs = tuple(meta.codecs)
        if len(codecs) != 1 or not isinstance(codecs[0], BytesCodec):
            return None
        endian = getattr(codecs[0].endian, "value", codecs[0].endian)
        dt = np.dtype(z.dtype)
        if dt.hasobject or not dt.isnative or dt.itemsize == 0:
            return None
        if dt.itemsize > 1 and endian not in (None, sys.byteorder):
            return None
        if not callable(getattr(meta, "encode_chunk_key", None)):
            return None
        root = os.path.join(str(store.root), *[p for p in z.store_path.path.split("/") if p])
        if not os.path.isdir(root):
            return None
        return RawChunks(z, root)
    except (ImportError, AttributeError, TypeError):
        return None
