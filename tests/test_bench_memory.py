"""bench/memory.py: what glibc's allocator holds for a process, and what its Python heap grew by, where."""
import json
import os
import subprocess
import sys
import time

import pytest

from bench.memory import Growth


def test_malloc_held_tells_memory_in_use_from_memory_freed_but_still_held():
    """Threads that allocate get arenas of their own; what they free between blocks still in use stays held by
    the process (free_mb: fragments glibc cannot give back), not in use. In a process of its own: a test
    worker's allocator holds every earlier test's memory."""
    script = """
import json
from concurrent.futures import ThreadPoolExecutor
from bench.memory import malloc_held
before = malloc_held()
kept = []
def churn(_):
    blocks = [bytearray(1000) for _ in range(20000)]        # 20 MB each, malloc'd in the thread's arena
    kept.append(blocks[::100])                              # one in 100 stays; the rest is freed on return
with ThreadPoolExecutor(4) as pool:
    list(pool.map(churn, range(8)))
print(json.dumps([before, malloc_held()]))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == 0, p.stderr[-2000:]
    before, after = json.loads(p.stdout.strip().splitlines()[-1])
    if not before:
        pytest.skip("not glibc 2.33+: no mallinfo2")
    assert after["arenas"] > before["arenas"] >= 1, (before, after)
    assert after["free_mb"] > before["free_mb"] + 10, (before, after)      # freed, still the process's
    assert after["in_use_mb"] < before["in_use_mb"] + 10, (before, after)  # ... and not counted in use


def test_growth_names_the_line_whose_objects_a_run_kept():
    """Objects a run keeps between the first and the last snapshot are the top growth, at the line that made
    them; what it allocated and let go is not."""
    growth = Growth(every=0.2).start()
    kept = []

    def keep_some(i):
        kept.append([{"i": i, "n": n} for n in range(2000)])    # kept: ~0.5 MB a round
        return len([{"i": i} for _ in range(2000)])             # made and let go
    for i in range(15):
        keep_some(i)
        time.sleep(0.05)
    lines = growth.stop(top=3)
    line_no = keep_some.__code__.co_firstlineno + 1
    assert f"test_bench_memory.py:{line_no}" in lines[0].split("blocks")[1].split(" < ")[0], lines
    assert float(lines[0].split("MB")[0]) > 2, lines
