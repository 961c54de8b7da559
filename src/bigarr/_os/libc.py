"""The C library, loaded once, with the prototypes of every function bigarr calls through ctypes.

``ctypes.CDLL(None)`` returns a new handle each time, and prototypes (``argtypes``/``restype``)
belong to the handle, so loading it in several modules means several half-configured copies.
This module loads it once; :data:`libc` is ``None`` where there is no C library to load (not
POSIX), and a function that this platform lacks is simply absent (check with ``hasattr``).
"""

from __future__ import annotations

import ctypes
import os
from typing import Any

__all__ = ["libc"]

_c_int, _c_void_p, _c_size_t = ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t

#: name -> (restype, argtypes)
_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "mmap": (_c_void_p, [_c_void_p, _c_size_t, _c_int, _c_int, _c_int, ctypes.c_int64]),
    "munmap": (_c_int, [_c_void_p, _c_size_t]),
    "madvise": (_c_int, [_c_void_p, _c_size_t, _c_int]),
    "msync": (_c_int, [_c_void_p, _c_size_t, _c_int]),
    "mprotect": (_c_int, [_c_void_p, _c_size_t, _c_int]),
    # Linux's mremap is variadic; the fifth argument (the new address) is read with
    # MREMAP_FIXED only.
    "mremap": (_c_void_p, [_c_void_p, _c_size_t, _c_size_t, _c_int, _c_void_p]),
    "mincore": (_c_int, [_c_void_p, _c_size_t, _c_void_p]),
    "ioctl": (_c_int, [_c_int, ctypes.c_ulong, _c_void_p]),
    "sync_file_range": (_c_int, [_c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]),
    "renameat2": (_c_int, [_c_int, ctypes.c_char_p, _c_int, ctypes.c_char_p, ctypes.c_uint]),
}


def _load() -> Any:
    if os.name != "posix":  # pragma: no cover - Windows
        return None
    lib = ctypes.CDLL(None, use_errno=True)
    for name, (restype, argtypes) in _PROTOTYPES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError:  # pragma: no cover - not on this platform
            continue
        fn.restype, fn.argtypes = restype, argtypes
    # syscall is variadic: only its result type is fixed.
    if hasattr(lib, "syscall"):
        lib.syscall.restype = ctypes.c_long
    return lib


libc: Any = _load()
"""The process's C library (``None`` where there is none)."""
