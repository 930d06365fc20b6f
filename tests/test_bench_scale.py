"""`python -m bench.scale --quick`: the real sweep path on a simulated 2-node cluster, counts only (no timings)."""
import io
import os
import re
import subprocess
import sys
from contextlib import redirect_stdout

import pytest


@pytest.mark.slow
@pytest.mark.ray
def test_scale_quick_every_trial_has_one_record():
    """2 datasets x (4 search trials + 1 final seed), ASHA, simulated adapt(): every study gets its 5 records
    (completed or stopped early, one per trial id; and early finals of an earlier pick), `results collect`
    reads them all, the sweep exits 0 (bench.scale checks these and exits 1 with a PROBLEM line otherwise);
    in a local folder and then, with `--compare s3`, in a SeaweedFS bucket (records, checkpoints and Tune's
    state), whose server's CPU time is measured."""
    from tests.s3 import weed_binary
    s3 = weed_binary() is not None           # without weed: the local folder only
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    p = subprocess.run([sys.executable, "-m", "bench.scale", "--quick"] + (["--compare", "s3"] if s3 else []),
                       capture_output=True, text=True, timeout=600, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    assert "PROBLEM" not in out
    assert ("storage local folder vs SeaweedFS S3" if s3 else "storage local folder") in p.stdout, out[-3000:]
    columns = {line[:44].strip(): line[44:].split("  ") for line in p.stdout.splitlines() if len(line) > 44}
    columns = {k: [c.strip() for c in v if c.strip()] for k, v in columns.items()}
    assert columns["run"] == (["base", "s3"] if s3 else ["base"]), out[-3000:]
    assert columns["count check"] == ["ok"] * len(columns["run"]), out[-3000:]
    storage = columns["storage (server CPU s)"]
    assert storage[0] == "folder", out[-3000:]
    if s3:
        assert float(re.fullmatch(r"S3 \(([\d.]+)\)", storage[1]).group(1)) > 0, out[-3000:]
        # the server counted at least every trial's record (a PUT each) and the snapshots' uploads
        put = float(columns["S3 requests per trial (PUT / GET / DELETE)"][1].split(" / ")[0])
        assert put >= 1, out[-3000:]
    for i, label in enumerate(columns["run"]):
        # an early final that a later pick superseded (tune.searcher) is one more trial with its record
        superseded = int(columns["early finals superseded (count, slot s)"][i].split(",")[0])
        assert columns["results collect s (records)"][i].endswith(f"({10 + superseded})"), out[-3000:]
        # the floor it measures besides work / slots: each study's pick and then its final re-run, which no
        # schedule beats; a sweep that reads no records or traces would print 0
        # every snapshot uploads Tune's state through tune.state_sync: at least one file per trial (params.json)
        files = columns["files snapshots uploaded (per trial)"][i]
        assert float(re.fullmatch(r"\d+ \(([\d.]+)\)", files).group(1)) >= 1, out[-3000:]
        # the trial processes' CPU is counted (the sampler sees the Ray workers), the cores' busy share is a share
        trials_cpu = float(columns["CPU s: trial processes / Ray system"][i].split(" / ")[0])
        busy = re.fullmatch(r"(\d+): (\d+)% \((\d+)%\)", columns["cores: busy (samples saturated)"][i])
        assert trials_cpu > 0 and busy and 0 < int(busy.group(2)) <= 100, out[-3000:]
        # every report traced: a checkpoint upload (timed in the trial process; S3's takes requests) and the
        # round trip through the driver, which takes the result before the trial goes on
        upload, wait = (tuple(map(float, columns[f"in a report: {k} (med/p90)"][i].split(" / ")))
                        for k in ("checkpoint upload", "wait for the driver"))
        assert wait[1] > 0 and (upload[1] > 0 or label == "base"), out[-3000:]
        chain, wall = (float(columns[k][i]) for k in ("chain bound s (a study's pick, then final)", "wall s"))
        assert 0 < chain <= wall, out[-3000:]
        # and which study's pick and finals ended it, from the same records and traces
        assert re.search(rf"^what ended the sweep \({label}\): fair/\w+: its pick ran \d+-\d+ s, past its last "
                         r"rung at \d+ s; its finals \d+-\d+ s", p.stdout, re.M), out[-3000:]


@pytest.mark.slow
@pytest.mark.ray
def test_scale_cut_at_its_deadline_tabulates_the_part_that_ran():
    """`--deadline`: the sweep is interrupted as Ctrl-C does (fair sweep stops its trials and returns 130), and
    bench.scale goes on to its table over what ran instead of failing its count check: a run on a machine lent
    for one call of limited length returns numbers even when the sweep would outlast the call. Progress lines
    come meanwhile."""
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    p = subprocess.run([sys.executable, "-m", "bench.scale", "--quick", "--deadline", "8", "--progress", "2"],
                       capture_output=True, text=True, timeout=600, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "PROBLEM" not in out, out[-3000:]
    assert "deadline 8 s: interrupting the sweep" in out and re.search(r"bench.scale: \d+ s: \d+ trials traced", out)
    assert "fair sweep: interrupted with" in out, out[-3000:]
    # trials cut before their first report are unfinished, not "stopped early" in a study without a name
    assert not re.search(r"^\? +\d", p.stdout, re.M), p.stdout[-3000:]
    count = next(line for line in p.stdout.splitlines() if line.startswith("count check"))
    records = int(re.search(r"cut at 8 s: (\d+) records, stopped \d+ s later$", count).group(1))
    assert records < 10, count                       # 2 studies x (4 search trials + 1 final) uncut
    # measured to the cut, per trial started; the plan is of the whole sweep, nothing to set beside the part
    rows = {line[:44].strip(): line[44:].strip() for line in p.stdout.splitlines() if len(line) > 44}
    assert 8 <= float(rows["wall s"]) < 12, rows["wall s"]
    started = int(re.fullmatch(r"4 x (\d+) started of 10", rows["slots x trials"]).group(1))
    assert records <= started <= 10, rows["slots x trials"]
    assert rows["simulated wall / --plan"] == "-", rows


def test_scale_plan_only_says_what_a_run_takes_before_it_starts():
    """`--plan-only`: the time scale and --plan's predicted wall, whether a --deadline cuts the run; no cluster
    (what to check before spending a lent machine's one call)."""
    from bench.scale import main
    for deadline, says in (("1", "--deadline 1 s will cut it"), ("100000", "ends before --deadline 100000 s")):
        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["--quick", "--plan-only", "--deadline", deadline]) == 0
        line = out.getvalue().strip()
        assert re.fullmatch(r"4 slots x 10 trials, time scale [\d.]+ \(epochs [\d.]+-[\d.]+ s\): --plan predicts "
                            r"\d+ s; " + re.escape(says) + r".*", line), line
