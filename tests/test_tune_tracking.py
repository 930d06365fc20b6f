"""Experiment trackers of a sweep (tune.tracking), offline: MLflow with a local store read back through
mlflow's client, W&B in offline mode whose run folders are read back, TensorBoard event files per trial;
bad tracking settings refused in one line before anything starts; a tracker that breaks mid-sweep fails
no trial."""
from __future__ import annotations

import glob
import json
import logging
import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fair.errors import FairError
from tests.sweeps import sweep_dict
from tune import storage as sweep_storage
from tune.ray_session import free_port
from tune.sweep_config import load_sweep


def _one_line_error(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------- bad input (no Ray)

def test_an_unknown_tracker_is_an_unknown_sweep_key(tmp_path):
    with pytest.raises(FairError) as e:
        load_sweep(None, mapping=sweep_dict("bad", str(tmp_path), tracking={"comet": {"project": "x"}}))
    msg = _one_line_error(e)
    assert "tracking.comet" in msg and "mlflow" in msg and "wandb" in msg


def test_a_tracker_whose_package_is_missing_names_the_extra(tmp_path, monkeypatch):
    import tune.tracking  # noqa: F401 - Ray's W&B module binds `wandb` once, at import: before it is hidden
    from tune.sweep import preflight
    cfg = load_sweep(None, mapping=sweep_dict("nopkg", str(tmp_path), tracking={"wandb": {"project": "p"}}))
    monkeypatch.setitem(sys.modules, "wandb", None)          # what an environment without wandb imports
    with pytest.raises(FairError) as e:
        preflight(cfg, data_check=False)
    msg = _one_line_error(e)
    assert "tracking.wandb" in msg and "fair-sweeps[track]" in msg


def test_an_unreachable_mlflow_server_is_refused_before_anything_starts(tmp_path):
    from tune.sweep import preflight
    port = free_port()                                       # a port nobody listens on
    uri = f"http://user:secret@127.0.0.1:{port}"
    cfg = load_sweep(None, mapping=sweep_dict("down", str(tmp_path), tracking={"mlflow": {"tracking_uri": uri}}))
    t = time.monotonic()
    with pytest.raises(FairError) as e:
        preflight(cfg, data_check=False)
    msg = _one_line_error(e)
    assert f"127.0.0.1:{port}" in msg and "tracking_uri" in msg and "secret" not in msg
    assert time.monotonic() - t < 60                         # one request, not the client's retries


def test_tracker_settings_missing_everywhere_are_named(tmp_path, monkeypatch):
    from tune.sweep import preflight
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    for tracking, key in (({"mlflow": {}}, "tracking.mlflow.tracking_uri"),
                          ({"wandb": {"mode": "offline"}}, "tracking.wandb.project")):
        cfg = load_sweep(None, mapping=sweep_dict("unset", str(tmp_path), tracking=tracking))
        with pytest.raises(FairError) as e:
            preflight(cfg, data_check=False)
        assert key in _one_line_error(e)


def test_online_wandb_without_a_login_is_refused(tmp_path, monkeypatch):
    from tune.sweep import preflight
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))                # no ~/.netrc, no wandb settings
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    cfg = load_sweep(None, mapping=sweep_dict("nokey", str(tmp_path), tracking={"wandb": {"project": "p"}}))
    with pytest.raises(FairError) as e:
        preflight(cfg, data_check=False)
    msg = _one_line_error(e)
    assert "WANDB_API_KEY" in msg and "offline" in msg


# ---------------------------------------------------------------------------- readers of what was written

def wandb_records(path: Path):
    """The protobuf records of a W&B run file (`run-<id>.wandb`, LevelDB log format: 32 KiB blocks of
    chunks with 7-byte headers); W&B itself ships no reader any more."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:                          # a block's tail too short for a header
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):                                   # FULL or LAST chunk: a whole record
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec
            buf = b""


def wandb_diagnosis(folder: Path, tid: str, kinds: dict) -> str:
    """What a W&B offline run folder holds, for a failed assertion: the record kinds read, the run file's
    size, the last lines of W&B's own logs (a run killed before wandb.finish() loses its buffered history)."""
    run = folder / f"run-{tid}.wandb"
    logs = "".join(f"\n--- {p.name}:\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                   for p in sorted((folder / "logs").glob("debug*.log")))
    return (f"{folder.name}: records {sorted((k, len(v)) for k, v in kinds.items())}, "
            f"{run.stat().st_size if run.exists() else 'no'} bytes{logs}")


def tensorboard_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of one TensorBoard event file (TFRecord: length, crc, event, crc)."""
    from tensorboardX.proto.event_pb2 import Event
    data, pos, out = path.read_bytes(), 0, {}
    while pos + 12 <= len(data):
        (n,) = struct.unpack("<Q", data[pos:pos + 8])
        ev = Event.FromString(data[pos + 12:pos + 12 + n])
        pos += 12 + n + 4
        for v in ev.summary.value:
            if v.HasField("simple_value"):
                out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_the_sweep_driver_checks_data_and_builds_its_callbacks_without_torch(tmp_path):
    """The driver checks every dataset's files and descriptions and builds the TensorBoard callback (whose
    tensorboardX imports torch if it can) without loading torch, which would hold ~460 MB of its memory for
    nothing; TensorBoard still writes scalars, and torch stays importable after. In a process of its own:
    the test session has torch loaded."""
    script = f"""
import sys
from pathlib import Path
from tests.sweeps import sweep_dict
from tests.test_tune_tracking import tensorboard_scalars
from tune.sweep import preflight
from tune.sweep_config import load_sweep
from tune.tracking import callbacks
cfg = load_sweep(None, mapping=sweep_dict("tb", {str(tmp_path)!r}))
callbacks(cfg, preflight(cfg, data_check=True))
from tensorboardX import SummaryWriter
w = SummaryWriter({str(tmp_path / 'tb')!r})
w.add_scalar("val/accuracy", 0.75, 3)
w.close()
assert "torch" not in sys.modules, "torch loaded by the driver"
print(tensorboard_scalars(next(Path({str(tmp_path / 'tb')!r}).glob("events.*")))["val/accuracy"])
import torch
print(torch.ones(2).sum().item())
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.split()[-3:] == ["[(3,", "0.75)]", "2.0"], p.stdout


# ----------------------------------------------------------------------------------- sweeps on Ray

@pytest.mark.ray
@pytest.mark.slow
def test_mlflow_wandb_and_tensorboard_hold_one_run_per_trial(ray_session, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from fair.record import git_commit
    from tune.sweep import preflight, run
    monkeypatch.delenv("WANDB_DIR", raising=False)
    db = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    d = sweep_dict("track", str(tmp_path / "sweeps"), trials=1, epochs=2, runner="direct",
                   tracking={"mlflow": {"tracking_uri": db}, "wandb": {"project": "fair-test", "mode": "offline"}})
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg, data_check=False)
    result = run(cfg, uri)
    assert not result.errored and result.trials == 4              # 1 search trial + 1 final seed per study
    recs = sweep_storage.list_records(uri, cfg.name)
    trials = {tid: ds for ds, ids in recs.items() for tid in ids}
    assert sorted(trials.values()) == ["fashion_mnist"] * 2 + ["fashion_mnist_shifted"] * 2
    records = {tid: sweep_storage.read_json(uri, sweep_storage.record_key(cfg.name, ds, tid)) for tid, ds in trials.items()}

    # MLflow: one run per trial, read back through its client
    client = MlflowClient(db)
    exp = client.get_experiment_by_name(cfg.name)            # the experiment defaults to the sweep's name
    runs = {r.data.tags["trial_id"]: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == set(trials)
    for tid, r in runs.items():
        ds, rec = trials[tid], records[tid]
        assert r.info.run_name == f"{cfg.name}/fair/{ds}/{tid}" and r.info.status == "FINISHED"
        assert r.data.tags["sweep"] == cfg.name and r.data.tags["git_commit"] == (git_commit() or "unknown")
        assert r.data.params["dataset"] == ds
        assert {"dataset", "anchors.mode", "train.lr"} <= set(r.data.params)     # the searched values
        assert float(r.data.params["train.lr"]) == pytest.approx(rec["config"]["train"]["lr"])
        assert r.data.params["anchors.mode"] == rec["config"]["anchors"]["mode"]
        hist = client.get_metric_history(r.info.run_id, "loss")
        assert [m.step for m in hist] == [1, 2]              # per epoch, the epoch as the step
        assert r.data.metrics["final_test_top1"] == pytest.approx(rec["metrics"]["test_top1"])
        assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["record.json"]
        art = Path(client.download_artifacts(r.info.run_id, "record.json", str(tmp_path / tid)))
        assert json.loads(art.read_text())["run_id"] == tid

    # W&B offline: one run folder per trial under the sweep, its history holding every epoch
    for tid, ds in trials.items():
        (folder,) = glob.glob(str(Path(uri) / cfg.name / "wandb" / f"offline-run-*-{tid}"))
        kinds: dict[str, list] = {}
        for rec in wandb_records(Path(folder) / f"run-{tid}.wandb"):
            kinds.setdefault(rec.WhichOneof("record_type"), []).append(rec)
        assert {"run", "history", "artifact"} <= set(kinds), wandb_diagnosis(Path(folder), tid, kinds)
        (head,) = kinds["run"]
        assert head.run.display_name == f"{cfg.name}/fair/{ds}/{tid}" and head.run.project == "fair-test"
        assert f"sweep:{cfg.name}" in head.run.tags
        config = {c.key: json.loads(c.value_json) for c in head.run.config.update}
        assert config["dataset"] == ds and config["sweep"] == cfg.name and "train.lr" in config
        history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in h.history.item}
                   for h in kinds["history"]]
        assert [h["epoch"] for h in history] == [1, 2]
        assert history[-1]["final_test_top1"] == pytest.approx(records[tid]["metrics"]["test_top1"])
        (art,) = kinds["artifact"]
        assert art.artifact.type == "record" and [m.path for m in art.artifact.manifest.contents] == ["record.json"]

    # TensorBoard: event files in every trial's folder, with the per-epoch metrics
    events = sorted(glob.glob(str(Path(uri) / cfg.name / "*" / "events.out.tfevents.*")))
    assert len(events) == 4                                  # every trial, search and final
    for path in events:
        scalars = tensorboard_scalars(Path(path))
        assert [step for step, _ in scalars["ray/tune/loss"]] == [1, 2]


@pytest.mark.ray
@pytest.mark.slow
def test_a_tracker_that_breaks_mid_sweep_is_logged_once_and_fails_no_trial(ray_session, tmp_path, caplog):
    from tune.sweep import preflight, run
    path = tmp_path / "mlflow.db"
    d = sweep_dict("broken", str(tmp_path / "sweeps"), datasets=["fashion_mnist"], trials=2, epochs=2, runner="direct",
                   tracking={"mlflow": {"tracking_uri": f"sqlite:///{path}"}})
    d["budget"]["max_concurrent"] = 1
    cfg = load_sweep(None, mapping=d)
    uri = preflight(cfg, data_check=False)                   # the store works now ...
    done = threading.Event()

    def break_store_after_the_first_record():
        while not done.is_set() and not sweep_storage.list_records(uri, cfg.name):
            time.sleep(0.1)
        with sqlite3.connect(path) as db:                    # ... and loses its tables mid-sweep
            db.executescript("DROP TABLE latest_metrics; DROP TABLE metrics; DROP TABLE params;")

    watcher = threading.Thread(target=break_store_after_the_first_record, daemon=True)
    watcher.start()
    with caplog.at_level(logging.WARNING, logger="tune.tracking"):
        try:
            result = run(cfg, uri)
        finally:
            done.set()
            watcher.join()
    assert not result.errored and result.trials == 3 and result.complete     # 2 search trials + 1 final seed
    assert sum(map(len, sweep_storage.list_records(uri, cfg.name).values())) == 3
    failures = [r for r in caplog.records if r.name == "tune.tracking" and "tracker mlflow failed" in r.message]
    assert len(failures) == 1 and "\n" not in failures[0].message
