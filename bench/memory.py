"""Where a process's memory is: what glibc's allocator holds for it, in use and free, and in how many arenas.

A Python process's resident memory is more than its live objects: glibc gives each thread that allocates an
arena of its own (up to 8 per core) and returns freed memory to the system only from the top of each heap, so
a driver whose threads allocate (Ray's, storage clients', uploads') can hold hundreds of MB it does not use.
`malloc_held()` tells the two apart: bytes in use against bytes free but still held.

    held = malloc_held()    # {"in_use_mb", "free_mb", "mmap_mb", "arenas"}; {} where glibc is not the libc
"""
from __future__ import annotations

import ctypes
import ctypes.util
import re


class _Mallinfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (2.33+): every field a size_t."""
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
        return libc
    except (OSError, AttributeError):       # not glibc, or older than 2.33
        return None


def _arenas(libc) -> int:
    """Arenas glibc has made in this process, from malloc_info's XML (one <heap nr=...> per arena)."""
    buf, size = ctypes.c_char_p(), ctypes.c_size_t()
    libc.open_memstream.restype = ctypes.c_void_p
    stream = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    text = ctypes.string_at(buf, size.value).decode()
    libc.free(buf)
    return len(re.findall(r"<heap nr=", text))


def malloc_held() -> dict:
    """This process's allocator, summed over its arenas: MB in use (`in_use_mb`), MB freed but still held
    (`free_mb`), MB in its own mmaps (large blocks, `mmap_mb`), and the number of arenas; {} without glibc."""
    libc = _libc()
    if libc is None:
        return {}
    m = libc.mallinfo2()
    mb = 1 / 2**20
    return {"in_use_mb": m.uordblks * mb, "free_mb": m.fordblks * mb, "mmap_mb": m.hblkhd * mb,
            "arenas": _arenas(libc)}
