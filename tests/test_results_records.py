"""Records -> rows: the record contract (docs/record.md) as `results` reads it, and its error messages.

Also holds the record factory the other `test_results_*` modules import.
"""
from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from results.errors import ResultsError
from results.schema import DEFAULT_SWEEP, SCHEMA_VERSION, config_key, record_to_rows

REPO = Path(__file__).resolve().parents[1]


def make_record(*, dataset="fashion_mnist", method="fair", seed=0, sweep="grid", trial=None, hparams=None,
                val=70.0, test=71.0, zeroshot=60.0, wca=62.0, backbone="ViT-B-32", status="completed",
                created_at="2026-11-28T21:00:00Z", epochs=None, **metrics_extra) -> dict:
    """A record in the shape of docs/record.md (schema_version 1)."""
    hparams = dict(hparams if hparams is not None else {"weighting.power": 1.0, "anchors.mode": "set"})
    hparams.setdefault("seed", seed)
    trial = trial or f"{method}-{hashlib.sha1(json.dumps(hparams, sort_keys=True).encode()).hexdigest()[:6]}-s{seed}"
    metrics = None
    if status == "completed":
        metrics = {"test_top1": test, "test_mean_per_class": test - 0.4, "predictor": "las",
                   "test_top1_global": test - 1, "test_mean_per_class_global": test - 1.5,
                   "test_top1_las": test, "test_mean_per_class_las": test - 0.4,
                   "val_top1": val, "val_top1_global": val - 1, "val_top1_las": val, "val_size": 100,
                   "val_stderr": 4.6, "zeroshot_top1": zeroshot, "zeroshot_mean_per_class": zeroshot - 0.8,
                   "wca_top1": wca, "wca_mean_per_class": wca - 0.5,
                   "gain_over_zeroshot": None if test is None or zeroshot is None else test - zeroshot,
                   "pseudo_label_acc": 66.0, "head_agreement": 0.83, "final_loss": 1.23, **metrics_extra}
    rec = {
        "schema_version": 1, "run_id": f"{dataset}-{trial}", "status": status,
        "error": None if status == "completed" else "CUDA out of memory",
        "method": method, "dataset": dataset, "backbone": backbone, "pretrained": "openai", "seed": seed,
        "sweep": {"name": sweep, "trial_id": trial, "study": dataset} if sweep else None,
        "config": {"seed": seed}, "hparams": hparams, "metrics": metrics,
        "timings": {"wall_s": 120.0, "setup_s": 10.0, "train_s": 100.0, "eval_s": 10.0, "gpu_s": 0.0,
                    "images_per_s": 250.0, "peak_mem_mb": 1500.0, "epochs": 2},
        "provenance": {"packages": {"torch": "2.14.1", "fair-sweeps": "0.1.0"}, "git_commit": "abc123",
                       "descriptions_sha256": "d" * 64, "split_sha256": "s" * 64, "host": "box", "python": "3.11.7",
                       "device": "cpu", "num_processes": 1, "created_at": created_at},
        "fallback_classes": [],
    }
    if epochs is not None:
        rec["epochs"] = epochs
    return rec


def epoch_rows(n=2, val=60.0) -> list[dict]:
    """Per-epoch rows in the shape of epochs.jsonl."""
    return [{"epoch": e, "loss": 1.0 / e, "loss_ce": 0.5, "loss_fair": 0.5 / e, "lr": 1e-3, "gamma": 0.9,
             "mean_weight": 0.7, "frac_kept": 0.8, "pseudo_label_acc": None, "head_agreement": 0.8,
             "val_top1": val + e, "images_per_s": 100.0, "epoch_s": 3.0, "bad_images": 0} for e in range(1, n + 1)]


def write_sweep(storage: Path, records: list[dict]) -> Path:
    """Lay `records` out as sweeps do: <storage>/<sweep>/records/dataset=<d>/<trial_id>.json."""
    for r in records:
        d = storage / r["sweep"]["name"] / "records" / f"dataset={r['dataset']}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{r['sweep']['trial_id']}.json").write_text(json.dumps(r))
    return storage


def write_run(run_dir: Path, record: dict, epochs: list[dict] | None = None) -> Path:
    """Lay a record out as `fair adapt` does: <run_dir>/record.json and epochs.jsonl."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "record.json").write_text(json.dumps(record, indent=2))
    if epochs is not None:
        (run_dir / "epochs.jsonl").write_text("".join(json.dumps(e) + "\n" for e in epochs))
    return run_dir


# ------------------------------------------------------------------------------------------------ tests

def test_record_becomes_one_trial_row_with_flattened_hparams():
    rec = make_record(trial="t7", seed=3, hparams={"optim.lr": 0.001, "anchors.mode": "set"},
                      epochs=epoch_rows(3))
    rows = record_to_rows(rec, "mem://t7.json")
    assert (rows.sweep, rows.dataset) == ("grid", "fashion_mnist")
    t = rows.trial
    assert t["trial_id"] == "t7" and t["run_id"] == rec["run_id"] and t["study"] == "fashion_mnist"
    assert t["schema_version"] == SCHEMA_VERSION and t["seed"] == 3
    assert t["test_top1"] == 71.0 and t["val_top1"] == 70.0 and t["wca_top1"] == 62.0
    assert t["hp.optim.lr"] == 0.001 and t["hp.anchors.mode"] == "set" and t["hp.seed"] == 3
    assert t["wall_s"] == 120.0 and t["n_epochs"] == 2 and t["peak_mem_mb"] == 1500.0
    assert json.loads(t["packages_json"]) == {"torch": "2.14.1", "fair-sweeps": "0.1.0"}
    assert t["git_commit"] == "abc123" and t["source"] == "mem://t7.json"
    assert [e["epoch"] for e in rows.epochs] == [1, 2, 3]
    assert all(e["trial_id"] == "t7" for e in rows.epochs)


def test_config_key_ignores_the_seed_only():
    a = config_key({"optim.lr": 0.1, "seed": 0, "data.root": "/x"})
    assert a == config_key({"optim.lr": 0.1, "seed": 5, "data.root": "/y"})
    assert a != config_key({"optim.lr": 0.2, "seed": 0})


def test_plain_run_without_sweep_gets_the_default_or_given_sweep():
    rec = make_record(sweep=None)
    assert record_to_rows(rec, "r").sweep == DEFAULT_SWEEP
    assert record_to_rows(rec, "r", sweep_hint="adhoc").sweep == "adhoc"
    assert record_to_rows(rec, "r").trial["trial_id"] == rec["run_id"]


def test_failed_record_needs_no_metrics():
    rows = record_to_rows(make_record(status="failed"), "f")
    assert rows.trial["status"] == "failed" and rows.trial["test_top1"] is None
    assert rows.trial["error"] == "CUDA out of memory"


@pytest.mark.parametrize("path", [("seed",), ("dataset",), ("metrics", "test_top1"), ("metrics", "val_top1"),
                                  ("run_id",), ("hparams",)])
def test_missing_field_is_named(path):
    rec = make_record()
    target = rec
    for k in path[:-1]:
        target = target[k]
    del target[path[-1]]
    with pytest.raises(ResultsError) as e:
        record_to_rows(rec, "sweeps/x.json")
    msg = str(e.value)
    assert f"'{'.'.join(path)}'" in msg and "missing" in msg and "sweeps/x.json" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("path,value", [(("seed",), "0"), (("metrics", "val_top1"), "70.0"),
                                        (("metrics", "test_top1"), True), (("timings", "wall_s"), [1]),
                                        (("provenance", "host"), 3), (("sweep", "trial_id"), 7)])
def test_mistyped_field_is_named(path, value):
    rec = make_record()
    target = rec
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    with pytest.raises(ResultsError) as e:
        record_to_rows(rec, "r.json")
    assert f"'{'.'.join(path)}'" in str(e.value) and "should be" in str(e.value)


def test_unknown_record_schema_version_is_refused():
    rec = make_record()
    rec["schema_version"] = 99
    with pytest.raises(ResultsError, match="schema_version 99 is unknown"):
        record_to_rows(rec, "r.json")


def test_bad_epoch_row_is_named():
    rows = epoch_rows(2)
    rows[1]["loss"] = "nan?"
    with pytest.raises(ResultsError, match=r"epochs\[1\]\.loss"):
        record_to_rows(make_record(epochs=rows), "r.json")


def test_unsafe_partition_names_are_refused():
    with pytest.raises(ResultsError, match="not a plain name"):
        record_to_rows(make_record(dataset="../etc"), "r.json")


def test_factory_records_are_independent():
    a = make_record()
    b = copy.deepcopy(a)
    b["metrics"]["test_top1"] = 1.0
    assert a["metrics"]["test_top1"] == 71.0


def test_results_imports_without_torch_ray_or_fair():
    code = ("import sys, results, results.cli, results.collect, results.tables, results.plots, "
            "results.importance, results.store\n"
            "bad = [m for m in ('torch', 'ray', 'fair', 'tune', 'optuna') if m in sys.modules]\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
