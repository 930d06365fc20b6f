"""Helpers of the sweep tests on a real Ray (tests/test_tune_*.py): a tiny sweep mapping, a sweep's records
and studies as stored, and a `fair sweep` driver process to kill. The Ray and SeaweedFS fixtures are in
conftest.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from tune import storage as sweep_storage

ROOT = Path(__file__).resolve().parent.parent
BASE = {"method": "fair", "seed": 0,
        "model": {"name": "fair-tiny-vit", "pretrained": "", "device": "cpu"},
        "data": {"train_per_class": 4, "test_per_class": 3, "val_per_class": 2, "num_workers": 0},
        "train": {"batch_size": 8}, "local": {"num_crops": 2, "top_k": 2},
        "eval": {"local_views": 2, "batch_size": 64}}
SPACE = {"anchors.mode": {"choice": ["prototype", "set"]},
         "anchors.tau_anchor": {"loguniform": [1, 100], "when": {"anchors.mode": "set"}},
         "train.lr": {"loguniform": [1.0e-4, 1.0e-2]}}


def sweep_dict(name: str, storage: str, datasets=("fashion_mnist", "fashion_mnist_shifted"), trials=2,
               epochs=1, final_seeds=1, runner: str = "trainer", **over) -> dict:
    d = {"name": f"{name}-{uuid.uuid4().hex[:6]}", "datasets": list(datasets), "base": BASE, "space": SPACE,
         "budget": {"trials_per_dataset": trials, "epochs": epochs, "max_steps_per_epoch": 2,
                    "max_concurrent": 2, "final_seeds": final_seeds},
         "resources": {"num_workers": 1, "per_worker": {"CPU": 1}, "runner": runner},
         "storage": storage,
         "ray": {"worker_start_timeout_s": 30, "controller_failure_limit": 0, "summary_every_s": 3600}}
    d.update(over)
    return d


def sweep_records(uri: str, name: str) -> list[dict]:
    """Every record a sweep wrote."""
    return [sweep_storage.read_json(uri, sweep_storage.record_key(name, d, tid))
            for d, ids in sweep_storage.list_records(uri, name).items() for tid in ids]


def sweep_studies(uri: str, name: str) -> dict:
    """Each study of the sweep as its Optuna storage holds it (tune.optuna_storage), with `tune_ids`: Tune
    trial id -> the study's trial number."""
    from tune.optuna_storage import load_studies
    from tune.searcher import TUNE_ATTR
    out = load_studies(uri, name)
    for study in out.values():
        study.tune_ids = {t.user_attrs[TUNE_ATTR]: t.number for t in study.trials if TUNE_ATTR in t.user_attrs}
    return out


def start_driver(sweep_file: Path, address: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "fair.cli", "sweep", "-c", str(sweep_file), "--address", address],
                            cwd=ROOT, env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def kill_driver_after_first_record(d: dict, address: str, tmp_path: Path, timeout: float) -> tuple[Path, Path, dict]:
    """Start `fair sweep` on the sweep mapping `d` as its own process, SIGKILL it once the first record is
    stored (the kill lands mid-sweep); the sweep file and the driver's log, for the resume, and the records
    stored before the kill."""
    sweep_file, log = tmp_path / "sweep.yaml", tmp_path / "driver.log"
    sweep_file.write_text(yaml.safe_dump(d))
    proc = start_driver(sweep_file, address, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not sum(map(len, sweep_storage.list_records(d["storage"], d["name"]).values())):
        assert proc.poll() is None, log.read_text()[-3000:]
        time.sleep(0.5)
    first = sweep_storage.list_records(d["storage"], d["name"])
    assert sum(map(len, first.values())) >= 1, log.read_text()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return sweep_file, log, first
