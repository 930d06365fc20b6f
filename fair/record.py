"""The run record (docs/record.md): its identity fields, provenance, timings and the config digest.

This is the contract `results/` reads (as JSON; it never imports fair) and `tune/` writes failed records
with. torch is imported only where a device is described, so that tune's sweep driver reads
DIGEST_IGNORES and failed_record without loading it.
"""
from __future__ import annotations

import base64
import copy
import os
import platform
import resource
import socket
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from fair import __version__
from fair.config import PREPROCESS_KEYS, FairConfig, flatten, hparam_kinds, to_dict
from fair.io import sha256_json

SCHEMA_VERSION = 1
# Config keys that do not change a run's result (left out of config_digest; a resume may change them).
DIGEST_IGNORES = ("run.", "eval.val_every_epoch", "data.num_workers", "train.compile")
# Config sections read by one method only (dropped from the digest of every other method's runs).
METHOD_SECTIONS = ("dpa", "tent")
PACKAGES = ("torch", "torchvision", "open_clip_torch", "numpy", "ray", "optuna")


def result_config(config: dict) -> dict:
    """A nested config dict reduced to what changes a run's result: DIGEST_IGNORES dropped, and keys added
    after runs existed dropped at their old behaviour, so that older runs still compare equal. The one
    comparison behind both the checkpoint digest and the resume check of a run folder."""
    d = copy.deepcopy(config)
    for key in DIGEST_IGNORES:              # e.g. train.compile: the same computation, compiled or not
        section, _, name = key.rstrip(".").partition(".")
        (d.get(section) or {}).pop(name, None) if name else d.pop(section, None)
    data = d.get("data") or {}
    if data.get("pipeline", "pil") == "pil":
        data.pop("pipeline", None)
    if data.get("cache_size") is None:
        data.pop("cache_size", None)
    model = d.get("model") or {}
    for key in ("config", *PREPROCESS_KEYS):   # added later; None: what runs before them did
        if model.get(key) is None:
            model.pop(key, None)
    for section in METHOD_SECTIONS:         # a method's own options change only its own runs
        if d.get("method") != section:
            d.pop(section, None)
    pseudo = d.get("pseudo") or {}
    if pseudo.get("teacher", "student") == "student":
        pseudo.pop("teacher", None)
    return d


def config_digest(cfg: FairConfig) -> str:
    """Hash of everything that changes the training trajectory (the `run` section excluded)."""
    return sha256_json(result_config(to_dict(cfg)))


def run_name(cfg: FairConfig | dict) -> str:
    """run.name, else `<dataset>-<method>-s<seed>`; of a FairConfig or of its nested dict."""
    if isinstance(cfg, dict):
        name, dataset, method, seed = cfg["run"].get("name"), cfg["data"]["dataset"], cfg["method"], cfg["seed"]
    else:
        name, dataset, method, seed = cfg.run.name, cfg.data.dataset, cfg.method, cfg.seed
    return name or f"{dataset}-{method}-s{seed}"


def record_identity(cfg: FairConfig | dict) -> dict:
    """The fields of a record that say which run it is (docs/record.md); completed and failed alike. A
    nested dict is taken as is (a failed run's config may be one that FairConfig refuses)."""
    d = cfg if isinstance(cfg, dict) else to_dict(cfg)
    hparams = {k: v for k, v in flatten(d).items() if not k.startswith("run.") and not isinstance(v, (list, dict))}
    kinds = hparam_kinds()
    return {
        "schema_version": SCHEMA_VERSION, "run_id": run_name(d), "method": d["method"],
        "dataset": d["data"]["dataset"], "backbone": d["model"]["name"], "pretrained": d["model"]["pretrained"],
        "seed": d["seed"], "sweep": None, "config": d, "hparams": hparams,
        "hparam_types": {k: kinds[k] for k in hparams if k in kinds},   # typed columns even when all null
    }


def failed_record(cfg: FairConfig | dict, error: str) -> dict:
    """The record of a run that ended in error (status "failed", no metrics), so that results tables can
    say a dataset failed instead of leaving it out."""
    return {**record_identity(cfg), "status": "failed", "error": error, "metrics": None,
            "provenance": {"created_at": now()}}


def stopped_record(cfg: FairConfig | dict, last_epoch: dict) -> dict:
    """The record of a sweep trial that a scheduler stopped before its final evaluation (status
    "stopped_early", no metrics): `last_epoch` is its last epoch row, whose `val_top1` (global head, one
    view) is not comparable with a finished run's metrics and so is kept apart from them."""
    return {**record_identity(cfg), "status": "stopped_early", "error": None, "metrics": None,
            "last_epoch": last_epoch, "provenance": {"created_at": now()}}


def completed_record(cfg: FairConfig, metrics: dict, timings: dict, provenance: dict, fallback_classes: list,
                     rows: list[dict], outcomes: dict | None = None) -> dict:
    """The record of a finished run; `rows` are its epoch rows (epochs.jsonl), `outcomes` its
    `test_outcomes` (see `test_outcomes`)."""
    return {**record_identity(cfg), "status": "completed", "error": None, "metrics": metrics, "timings": timings,
            "provenance": provenance, "fallback_classes": fallback_classes, "test_outcomes": outcomes,
            "epochs": rows}


def test_ids(refs: list) -> list[str]:
    """Names of the test images that do not depend on where the dataset lies: a file's path relative to the
    folder all the test files share, or an in-memory image's index."""
    if not refs or not all(isinstance(r, (str, os.PathLike)) for r in refs):
        return [str(r) for r in refs]
    paths = [os.fspath(r) for r in refs]
    common = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0])
    return [Path(os.path.relpath(p, common)).as_posix() for p in paths]


def test_outcomes(refs: list, correct) -> dict:
    """The record's `test_outcomes` (docs/record.md): which test images (`ids_sha`, the sha256 of their ids
    in order), how many (`n`), and per image whether the reported predictor was right (`correct`: base64 of
    the bits, image i is bit i, most significant bit of each byte first), for paired comparisons."""
    import numpy as np
    bits = np.asarray(correct, dtype=bool)
    return {"ids_sha": sha256_json(test_ids(refs)), "n": int(len(bits)),
            "correct": base64.b64encode(np.packbits(bits).tobytes()).decode("ascii")}


def timings(wall_s: float, setup_s: float, train_s: float, eval_s: float, rows: list[dict], device) -> dict:
    """The record's `timings`: this attempt's phases, and training throughput over the epochs of all attempts."""
    from fair.losses import world_size
    n_train_imgs = sum(r.get("images_per_s", 0) * r.get("epoch_s", 0) for r in rows)
    return {
        "wall_s": wall_s, "setup_s": setup_s, "train_s": train_s, "eval_s": eval_s,
        "gpu_s": wall_s * world_size() if device.type == "cuda" else 0.0,
        "images_per_s": n_train_imgs / train_s if train_s > 0 else None,
        "peak_mem_mb": peak_mem_mb(device), "epochs": len(rows),
    }


def peak_mem_mb(device) -> float:
    """Peak GPU memory allocated on `device`, else the process's peak resident memory (MiB)."""
    import torch
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def provenance(data, descriptions_sha: str | None, device) -> dict:
    """Where a result came from: package versions, code commit, input hashes, host and device.
    `data`: the run's fair.data.PreparedData."""
    import torch
    from importlib.metadata import PackageNotFoundError, version

    from fair.losses import world_size
    pk = {}
    for name in PACKAGES:
        try:
            pk[name] = version(name)
        except PackageNotFoundError:
            pass
    pk["fair-sweeps"] = __version__
    return {
        "packages": pk, "git_commit": git_commit(), "descriptions_sha256": descriptions_sha,
        "split_sha256": data.split_sha256, "split_files_sha256": data.split_files,
        "host": socket.gethostname(), "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "num_processes": world_size(), "created_at": now(),
        "pid": os.getpid(),
    }


def git_commit() -> str | None:
    """The code's git commit, when it runs from a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def now() -> str:
    """The current UTC time as the record writes it."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
