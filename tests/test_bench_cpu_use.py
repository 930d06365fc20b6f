"""bench/cpu_use.py: CPU seconds by process group of the benchmark's tree, and pinning the tree to fewer cores."""
import json
import os
import subprocess
import sys

import pytest

from bench.cpu_use import group

BUSY = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\ntime.sleep(30)\n"


def test_group_names_the_driver_ray_workers_and_the_storage_server():
    assert group(os.getpid(), "python", ["python", "-m", "bench.scale"]) == "driver"
    assert group(1, "weed", ["weed", "mini"]) == "storage server"
    assert group(2, "python", ["ray::ImplicitFunc.train"]) == "trial processes"
    assert group(3, "raylet", ["/x/raylet", "--node_id=1"]) == "Ray system"


def test_cpu_use_counts_a_child_from_start_to_stop_only():
    """A child that burns 1 s of CPU after start() is counted once, in its group; CPU it used before start()
    is not; the machine's busy fraction is a fraction. Measured in a process of its own: a test worker's
    tree also holds other tests' servers."""
    script = f"""
import json, subprocess, sys, time
from bench.cpu_use import CpuUse, _psutil
BUSY = {BUSY!r}
before = subprocess.Popen([sys.executable, "-c", BUSY.format(s=0.6)])
def spent(p):
    t = _psutil().Process(p.pid).cpu_times()
    return t.user + t.system
deadline = time.monotonic() + 30
while spent(before) < 0.6 and time.monotonic() < deadline:
    time.sleep(0.1)                         # its 0.6 s spent before the measurement starts
use = CpuUse(every=0.2).start()
child = subprocess.Popen([sys.executable, "-c", BUSY.format(s=1.0)])
while spent(child) < 1.0 and time.monotonic() < deadline + 30:
    time.sleep(0.1)
out = use.stop()
child.kill(); before.kill()
print(json.dumps(out))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert 1.0 <= out["groups"]["Ray system"] < 1.6, out      # the plain children: neither ray:: nor weed
    assert out["groups"]["trial processes"] == 0 and out["groups"]["storage server"] == 0, out
    assert 0 < out["busy"] <= 1 and 0 <= out["saturated"] <= 1 and out["cores"] >= 1, out
    assert out["rss_peak_mb"] > 10, out     # this Python process, resident


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores to pin to fewer")
def test_pin_moves_every_thread_of_the_tree_and_later_children_inherit_it():
    """A child started before pin() (with a second thread) and one started after are both on the first core.
    Pinned in a process of its own: a test worker's tree also holds other tests' servers."""
    script = """
import json, os, subprocess, sys, time
from bench.cpu_use import pin
threads = "import threading, time\\nthreading.Thread(target=time.sleep, args=(30,)).start()\\ntime.sleep(30)\\n"
first = subprocess.Popen([sys.executable, "-c", threads])
time.sleep(1.0)
cores = pin(1)
second = subprocess.Popen([sys.executable, "-c", threads])
time.sleep(1.0)
seen = {p.pid: [sorted(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{p.pid}/task")]
        for p in (first, second)}
first.kill(); second.kill()
print(json.dumps({"cores": cores, "threads": list(seen.values())}))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["cores"] == sorted(os.sched_getaffinity(0))[:1], out
    for threads in out["threads"]:                 # both children, each with its second thread
        assert len(threads) >= 2 and all(t == out["cores"] for t in threads), out


def test_lower_holds_only_the_trial_processes_every_thread_at_the_niceness():
    """Every thread of a process titled ray::... (one started before CpuUse and one after, each with a second
    thread) at niceness 10; a plain child and the driver keep theirs. In a process of its own, as above."""
    script = """
import json, os, subprocess, sys, time
from bench.cpu_use import CpuUse
threads = "import threading, time\\nthreading.Thread(target=time.sleep, args=(30,)).start()\\ntime.sleep(30)\\n"
def start(title):
    return subprocess.Popen([title, "-c", threads], executable=sys.executable)
first, plain = start("ray::Trial"), start("python")
time.sleep(1.0)
use = CpuUse(every=0.2, lower=({"trial processes"}, 10)).start()
second = start("ray::Trial")
time.sleep(2.0)
use.stop()
nice = lambda pid: [os.getpriority(os.PRIO_PROCESS, int(t)) for t in os.listdir(f"/proc/{pid}/task")]
out = {"trials": [nice(first.pid), nice(second.pid)], "plain": nice(plain.pid), "driver": nice(os.getpid()),
       "base": os.getpriority(os.PRIO_PROCESS, 0)}
for p in (first, second, plain):
    p.kill()
print(json.dumps(out))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == 0, p.stderr[-2000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    for threads in out["trials"]:
        assert len(threads) >= 2 and set(threads) == {max(10, out["base"])}, out
    assert set(out["plain"]) == {out["base"]} and set(out["driver"]) == {out["base"]}, out

