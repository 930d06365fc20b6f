"""bench/watch.py: a long bench.scale run says how far it got while it runs, and stops at its deadline."""
import json
import logging
import signal
import time

from bench.scale import slot_use
from bench.watch import Watch, read_trace, traced_work
from tune.simulate import Trace


def _trace(folder, trial, phases):
    with open(folder / f"{trial}.jsonl", "a") as fh:
        for phase, t0, t1 in phases:
            fh.write(json.dumps({"phase": phase, "t0": t0, "t1": t1, "slot": "n0:0"}) + "\n")


def test_traced_work_counts_phases_not_reports_and_the_part_after_since(tmp_path):
    _trace(tmp_path, "a", [("setup", 100, 102), ("epoch", 102, 106), ("report", 106, 107)])
    _trace(tmp_path, "b", [("epoch", 104, 110)])
    (tmp_path / "b.jsonl").open("a").write('{"phase": "epo')        # a line its trial is writing now
    assert traced_work(tmp_path, since=0, now=200) == (2, 12.0, 12.0)
    # after 105: 1 s of a's epoch, 5 s of b's
    assert traced_work(tmp_path, since=105, now=200) == (2, 12.0, 6.0)


def test_a_phase_still_running_counts_up_to_now(tmp_path):
    """tune.simulate's own trace: a phase writes an open line as it starts and its line as it ends; work still
    running at a progress line counts up to it (read only as phases end, a 30 s interval of 50 s epochs
    read 35-56 % busy on slots that were all busy)."""
    trace = Trace(str(tmp_path), "a")
    t0, t1 = trace.wait("setup", 0.0)
    trace("setup", t0, t1)
    t0, _ = trace.wait("epoch", 0.0)                 # its epoch started and has not ended
    work, reports, running = read_trace(tmp_path)
    assert [p["phase"] for p in work["a"]] == ["setup"] and running["a"]["phase"] == "epoch" and not reports
    trials, done, recent = traced_work(tmp_path, since=t0 + 5, now=t0 + 10)
    assert trials == 1 and 10.0 <= done <= 10.1 and recent == 5.0
    trace("epoch", t0, t0 + 20)                      # it ended: the phase's own line, nothing open
    assert read_trace(tmp_path)[2] == {}
    assert traced_work(tmp_path, since=t0 + 5, now=t0 + 30)[2] == 15.0


def test_a_cut_run_is_measured_to_the_cut(tmp_path):
    """bench.scale's slot use of a run cut at its deadline: phases clipped to the cut and those running then
    counted up to it, also a trial cut before it ended any phase."""
    _trace(tmp_path, "a", [("setup", 100, 102), ("epoch", 102, 130)])      # ended after the cut at 120
    _trace(tmp_path, "b", [("setup", 100, 105)])
    with open(tmp_path / "b.jsonl", "a") as fh:
        fh.write(json.dumps({"phase": "epoch", "t0": 105, "open": True, "slot": "n0:1"}) + "\n")
    with open(tmp_path / "c.jsonl", "a") as fh:                          # cut in its first phase
        fh.write(json.dumps({"phase": "setup", "t0": 110, "open": True, "slot": "n0:2"}) + "\n")
    work, _, running = read_trace(tmp_path)
    assert sorted(work) == ["a", "b"] and sorted(running) == ["b", "c"]
    use = slot_use(work, running, slots=3, t0=100, end=120)
    assert use["work"] == 50.0 and use["min_wall"] == 50.0 / 3
    assert traced_work(tmp_path, since=100, now=120)[0] == 3


def test_watch_logs_progress_and_interrupts_once_at_its_deadline(tmp_path, caplog):
    """Every `every` s a line with the slot time busy; at the deadline one SIGINT to this process (what Tune's
    handler turns into a graceful stop of the sweep), then lines go on until stop()."""
    got = []
    old = signal.signal(signal.SIGINT, lambda *_: got.append(time.time()))
    now = time.time()
    _trace(tmp_path, "a", [("epoch", now - 0.2, now + 0.2)])        # 0.4 s of work on 2 slots
    try:
        with caplog.at_level(logging.INFO, logger="bench.scale"):
            w = Watch(tmp_path, slots=2, every=0.3, deadline=0.5).start()
            time.sleep(1.2)
            w.stop()
    finally:
        signal.signal(signal.SIGINT, old)
    assert w.fired and len(got) == 1 and got[0] - w.t0 >= 0.5
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("deadline 0 s: interrupting the sweep") for m in lines), lines
    progress = [m for m in lines if "trials traced" in m]
    assert len(progress) >= 3, lines
    assert progress[0].split(": ", 1)[1].startswith("1 trials traced; slot time busy "), progress
    assert "driver CPU" in progress[-1] and "peak RSS" in progress[-1]
