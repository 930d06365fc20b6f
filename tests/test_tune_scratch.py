"""Trials' node-local scratch folders (tune.scratch): a folder stays while its process runs and goes once the
process is gone, whether the trial finished or Tune ended it mid-report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from tune import scratch


@pytest.fixture
def tmp_root(tmp_path, monkeypatch):
    """scratch.root() inside the test's folder, for this process and its children."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    yield tmp_path / "fair-sweeps"
    scratch.release()


def claim_in_child(sweep: str, trial: str) -> str:
    """Claim a folder in a process that then exits without releasing it (a trial Tune stopped)."""
    code = ("import sys; from tune import scratch; f = scratch.claim(sys.argv[1], sys.argv[2], 0); "
            "(f / 'run').mkdir(); (f / 'run' / 'last.pt').write_bytes(b'x' * 1000); print(f)")
    out = subprocess.run([sys.executable, "-c", code, sweep, trial], check=True, capture_output=True, text=True,
                         cwd=os.getcwd())
    return out.stdout.strip()


def test_a_dead_processs_folder_is_removed_and_a_live_ones_kept(tmp_root):
    from pathlib import Path
    dead = Path(claim_in_child("sw", "t1"))
    assert (dead / "run" / "last.pt").is_file()          # the child exited: nothing of it ran afterwards
    (tmp_root / "sw" / "hold.marker").write_text("node\n")
    mine = scratch.claim("sw", "t2", 0)                   # a claim prunes what is dead on the node
    assert not (tmp_root / "sw" / "t1").exists() and (tmp_root / "sw" / "hold.marker").is_file()
    assert mine.is_dir() and json.loads((mine / scratch.OWNER).read_text())["pid"] == os.getpid()
    assert scratch.prune() == 0 and mine.is_dir()         # alive: kept
    nxt = scratch.claim("sw", "t3", 0)                    # the next trial of a reused process
    assert not (tmp_root / "sw" / "t2").exists() and nxt.is_dir()
    scratch.release()
    assert sorted(p.name for p in (tmp_root / "sw").iterdir()) == ["hold.marker"]


def test_a_reused_pid_does_not_keep_a_dead_processs_folder(tmp_root):
    """The owner is a pid and its process's start time: another process given the same pid is not it."""
    folder = tmp_root / "sw" / "t1" / "rank1"
    folder.mkdir(parents=True)
    (folder / scratch.OWNER).write_text(json.dumps({"pid": os.getpid(), "started": 12345.0}))
    assert scratch.prune() == 1
    assert not tmp_root.joinpath("sw").exists()          # empty trial and sweep folders go too


def test_pruning_while_other_trials_come_and_go_never_fails(tmp_root):
    """Trials on a node claim and remove folders while another process (the driver, a new trial) prunes:
    folders vanishing mid-walk are skipped, and a claim whose just-made parent a pruner removed retries."""
    import threading
    import time
    assert scratch.prune() == 0                            # no folder at all yet
    errors, stop = [], threading.Event()

    def churn():
        from tune import scratch as s
        i = 0
        while not stop.is_set():
            try:
                folder = s.sweep_dir(f"sw{i % 3}") / f"t{i}" / "rank0"
                s.claim(f"sw{i % 3}", f"t{i}", 0)          # this process: alive, never pruned
                assert folder.is_dir()
                s.release()
            except Exception as e:                        # noqa: BLE001 - reported below
                errors.append(repr(e))
            i += 1

    worker = threading.Thread(target=churn)
    worker.start()
    deadline = time.monotonic() + 1.5
    try:
        while time.monotonic() < deadline:
            scratch.prune()
    finally:
        stop.set()
        worker.join()
    assert not errors, errors[:3]
