"""Where a process's memory is: what glibc's allocator holds for it, in use and free, and in how many arenas.

A Python process's resident memory is more than its live objects: glibc gives each thread that allocates an
arena of its own (up to 8 per core) and returns freed memory to the system only from the top of each heap, so
a driver whose threads allocate (Ray's, storage clients', uploads') can hold hundreds of MB it does not use.
`malloc_held()` tells the two apart: bytes in use against bytes free but still held.

    held = malloc_held()    # {"in_use_mb", "free_mb", "mmap_mb", "arenas"}; {} where glibc is not the libc
    growth = Growth(every=60).start(); ...; print("\n".join(growth.stop()))   # what the Python heap gained, where

`python -m bench.memory` prints the sweep driver's memory after building its callbacks with torch kept out
of tensorboardX's import and with it let in, side by side (tune.tracking.torch_hidden).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
import threading


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


class Growth:
    """What the Python heap gained while a run went on, by where it was allocated: tracemalloc from start(),
    a snapshot every `every` seconds from a thread, and at stop() the growth from the first snapshot to the
    last (the last one a run took, not one after it released its objects). Slows allocation: for finding
    what grows, not for timing."""

    def __init__(self, every: float = 60.0, frames: int = 12):
        self.every, self.frames = every, frames
        self._first = self._last = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _take(self):
        import tracemalloc
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
        if self._first is None:
            self._first = snap
        else:
            self._last = snap

    def start(self) -> "Growth":
        import tracemalloc
        tracemalloc.start(self.frames)
        self._thread = threading.Thread(target=self._loop, name="memory-growth", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._take()

    def stop(self, top: int = 12, depth: int = 6) -> list[str]:
        """The `top` allocation sites that grew most between the first and the last snapshot, each with its
        growth in MB and in blocks, and its innermost `depth` frames, innermost first."""
        import tracemalloc
        self._stop.set()
        self._thread.join()
        tracemalloc.stop()
        if self._first is None or self._last is None:
            return [f"(the run ended before two snapshots {self.every:.0f} s apart)"]
        lines = []
        for d in self._last.compare_to(self._first, "traceback")[:top]:
            frames = [f"{_short(f.filename)}:{f.lineno}" for f in d.traceback]
            lines.append(f"{d.size_diff / 2**20:+8.1f} MB {d.count_diff:+8d} blocks  " + " < ".join(frames[-depth:][::-1]))
        return lines


def _short(filename: str) -> str:
    """A file's path from its package down (site-packages/, the standard library's folder, this checkout)."""
    for marker in ("site-packages/", f"{os.sep}lib{os.sep}python3.", os.getcwd() + os.sep):
        if marker in filename:
            rest = filename.split(marker, 1)[1]
            return rest.split(os.sep, 1)[1] if marker.endswith("python3.") else rest
    return filename


_CALLBACKS = """
import sys
from contextlib import nullcontext
import tune.tracking as tracking
from tests.sweeps import sweep_dict
from tune.sweep_config import load_sweep
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
before = rss()
if sys.argv[1] == "plain":
    tracking.torch_hidden = nullcontext         # tensorboardX as it imports on its own
tracking.callbacks(load_sweep(None, mapping=sweep_dict("m", sys.argv[2])), sys.argv[2])
print(before, rss(), "torch" in sys.modules)
"""


def main() -> int:
    """The sweep driver's resident memory after building its Tune callbacks, torch hidden from tensorboardX
    against tensorboardX importing it, each in a fresh process, side by side."""
    import subprocess
    import sys
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for mode in ("hidden", "plain"):
            p = subprocess.run([sys.executable, "-c", _CALLBACKS, mode, tmp], capture_output=True, text=True,
                               check=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
            before, after, torch = p.stdout.split()
            rows[mode] = float(after)
            print(f"{mode:>7}: RSS {float(before):6.0f} MB with the sweep's modules, {float(after):6.0f} MB with its "
                  f"callbacks (torch loaded: {torch})")
    print(f"torch hidden saves {rows['plain'] - rows['hidden']:.0f} MB ({rows['plain'] / rows['hidden']:.2f}x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
