"""adapt(config) -> record: the one entry point for a FAIR run; `fair adapt` and every sweep trial call it.

The library never knows whether it runs under Ray: it takes a `report(row, checkpoint_dir)` callback that
is called after every epoch on every process (checkpoint_dir is set on rank 0 only), and it resumes
from a checkpoint file when one is given or found in the run folder.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import platform
import resource
import socket
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from fair import __version__, engine
from fair.anchors import LearnableAnchors, fixed_head
from fair.config import FairConfig, flatten, hparam_kinds, save_config, to_dict
from fair.data import PreparedData, prepare_data
from fair.data.device_views import DevicePipeline
from fair.data.views import PilPipeline, build_views
from fair.errors import FairError
from fair.io import atomic_write_text, sha256_json, write_json
from fair.local import mix
from fair.losses import fair_momentum_for, world_size
from fair.models import (PREPROCESS_KEYS, load_clip, preprocess_record, resolve_device, resolve_pretrained,
                         trainable_visual_parameters, weights_id)
from fair.precision import grad_scaler
from fair.text import build_text_embeddings, load_descriptions

log = logging.getLogger(__name__)
SCHEMA_VERSION = 1
Report = Callable[[dict, Optional[Path]], None]


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


# Config keys that do not change a run's result (left out of config_digest; a resume may change them).
DIGEST_IGNORES = ("run.", "eval.val_every_epoch", "data.num_workers", "train.compile")
# train.fair_momentum of runs started before it could be auto (null): a resumed one keeps it.
LEGACY_FAIR_MOMENTUM = 0.0


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
    return d


def config_digest(cfg: FairConfig) -> str:
    """Hash of everything that changes the training trajectory (the `run` section excluded)."""
    return sha256_json(result_config(to_dict(cfg)))


def resume_source(run_dir: Path, resume_from: str | Path | None) -> Path | None:
    """The checkpoint a run resumes from: `resume_from`, else the run folder's last.pt when there is one."""
    last = Path(run_dir) / "checkpoints" / "last.pt"
    return Path(resume_from) if resume_from else (last if last.is_file() else None)


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
            "provenance": {"created_at": _now()}}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def adapt(cfg: FairConfig, run_dir: str | Path, report: Report | None = None,
          resume_from: str | Path | None = None) -> dict:
    """Run one adaptation in `run_dir` and return the final record (also written as record.json).

    Resumes from `resume_from` (a checkpoint file), else from `run_dir/checkpoints/last.pt` when it exists.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    is_main = rank() == 0
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run_dir / "config.yaml")
    engine.seed_everything(cfg.seed)
    device = resolve_device(cfg.model.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    progress = cfg.run.progress and is_main

    # --- set-up: data, model, text embeddings (then the text tower is dropped) -------------------------
    data = prepare_data(cfg.data)
    # Settings that depend on the data are resolved once it is known, so the saved config, the checkpoint
    # digest and the record all carry the value used. A resumed run keeps the value it started with.
    cfg = copy.deepcopy(cfg)
    src = resume_source(run_dir, resume_from)
    if cfg.train.fair_momentum is None and src is not None:
        started = engine.checkpoint_resolved(src)
        cfg.train.fair_momentum = float(started.get("train.fair_momentum", LEGACY_FAIR_MOMENTUM))
    cfg.train.fair_momentum = fair_momentum_for(cfg.train.fair_momentum, len(data.classnames), cfg.train.batch_size)
    if is_main:
        save_config(cfg, run_dir / "config.yaml")
    model_cfg = resolve_pretrained(cfg.model, cfg.run.cache_root)
    clip, tokenizer, pp = load_clip(model_cfg, device)
    wid = weights_id(model_cfg)
    needs_desc = cfg.method in ("fair", "wca")
    descriptions = load_descriptions(data.descriptions_path if (needs_desc or data.descriptions_path) else None,
                                     data.classnames, fallback=cfg.data.description_fallback or not needs_desc)
    te = build_text_embeddings(clip, tokenizer, data.classnames, data.templates, descriptions, wid,
                               cfg.run.cache_root, device)
    visual = clip.visual
    scale = float(clip.logit_scale.exp().item())
    del clip  # frees the text tower
    views = build_pipeline(cfg, pp, progress)

    class_emb = te.class_emb.to(device)
    have_desc = descriptions.sha256 is not None
    w_desc = fixed_head(te.desc_emb, te.desc_mask, te.class_emb, cfg.anchors.tau_text).to(device) if have_desc else None
    if cfg.method == "selftrain":
        heads = engine.Heads(class_emb, class_emb, w_desc, scale, use_locals=False)
        anchors = LearnableAnchors("prototype", te.class_emb)
    else:
        w_fix = fixed_head(te.desc_emb, te.desc_mask, te.class_emb, cfg.anchors.tau_text).to(device)
        heads = engine.Heads(class_emb, w_fix, w_desc, scale, use_locals=True)
        anchors = LearnableAnchors("prototype", w_fix.cpu()) if cfg.anchors.mode == "prototype" else \
            LearnableAnchors("set", te.desc_emb, te.desc_mask, cfg.anchors.tau_anchor)
    visual_params = trainable_visual_parameters(visual, cfg.train.trainable)
    maybe_compile(visual, cfg.train.compile, device)
    student = engine.Student(visual, anchors).to(device)
    setup_s = time.perf_counter() - t_start

    # --- baselines of the same run on the test split: zero-shot (templates) and WCA (fixed score) --------
    t_eval = time.perf_counter()
    base_heads = {"zeroshot": lambda f, fl: f @ heads.class_emb.t()}
    if w_desc is not None:
        base_heads["wca"] = lambda f, fl: fl @ w_desc.t()
    base, bad_test = engine.predict(visual, data.test, base_heads, cfg, heads, device, views,
                                    need_locals="wca" in base_heads, desc="baselines", progress=progress)
    C = len(data.classnames)
    metrics = {}
    for k, (p, y) in base.items():
        metrics[f"{k}_top1"], metrics[f"{k}_mean_per_class"] = engine.accuracy(p, y, C)
    metrics.setdefault("wca_top1", None)
    metrics.setdefault("wca_mean_per_class", None)
    eval_s = time.perf_counter() - t_eval
    _check_bad(bad_test, len(data.test), cfg, "test")

    # --- training ---------------------------------------------------------------------------------------
    rows: list[dict] = []
    train_s = 0.0
    trains = cfg.method in ("fair", "selftrain") and cfg.train.epochs > 0
    if trains:
        rows, train_s = _train(cfg, student, visual_params, heads, data, views, device, run_dir, report,
                               resume_from, progress)

    # --- final evaluation: global and las predictors on val and test; the val split picks ----------------
    t_eval = time.perf_counter()
    final = _final_heads(cfg, student, heads)
    need_locals = heads.use_locals and any(k != "global" for k in final)
    val_preds, _ = engine.predict(visual, data.val, final, cfg, heads, device, views, need_locals,
                                  desc="val", progress=progress) if len(data.val) else ({}, 0)
    test_preds, _ = engine.predict(visual, data.test, final, cfg, heads, device, views, need_locals,
                                   desc="test", progress=progress)
    for k in final:
        metrics[f"test_top1_{k}"], metrics[f"test_mean_per_class_{k}"] = engine.accuracy(*test_preds[k], C)
        metrics[f"val_top1_{k}"] = engine.accuracy(*val_preds[k], C)[0] if k in val_preds else None
    predictor = _pick_predictor(cfg, metrics, list(final))
    metrics.update({
        "predictor": predictor,
        "test_top1": metrics[f"test_top1_{predictor}"],
        "test_mean_per_class": metrics[f"test_mean_per_class_{predictor}"],
        "val_top1": metrics[f"val_top1_{predictor}"],
        "val_size": len(data.val),
    })
    v = metrics["val_top1"]
    metrics["val_stderr"] = 100 * math.sqrt(max(v / 100 * (1 - v / 100), 0) / len(data.val)) \
        if v is not None and len(data.val) else None
    metrics["gain_over_zeroshot"] = metrics["test_top1"] - metrics["zeroshot_top1"]
    last = rows[-1] if rows else {}
    metrics["pseudo_label_acc"] = last.get("pseudo_label_acc")
    metrics["head_agreement"] = last.get("head_agreement")
    metrics["final_loss"] = last.get("loss")
    eval_s += time.perf_counter() - t_eval

    wall = time.perf_counter() - t_start
    n_train_imgs = sum(r.get("images_per_s", 0) * r.get("epoch_s", 0) for r in rows)
    record = {
        **record_identity(cfg),
        "status": "completed",
        "error": None,
        "metrics": metrics,
        "timings": {
            "wall_s": wall, "setup_s": setup_s, "train_s": train_s, "eval_s": eval_s,
            "gpu_s": wall * world_size() if device.type == "cuda" else 0.0,
            "images_per_s": n_train_imgs / train_s if train_s > 0 else None,
            "peak_mem_mb": _peak_mem_mb(device), "epochs": len(rows),
        },
        "provenance": {**provenance(data, descriptions.sha256, device), "preprocess": preprocess_record(pp)},
        "fallback_classes": descriptions.fallback_classes if needs_desc else [],
        "epochs": rows,
    }
    if is_main:
        write_json(run_dir / "record.json", record)
    log.info("%s: test top-1 %.2f (%s) | zero-shot %.2f | gain %+.2f | %.0f s", record["run_id"],
             metrics["test_top1"], predictor, metrics["zeroshot_top1"], metrics["gain_over_zeroshot"], wall)
    return record


def build_pipeline(cfg: FairConfig, pp: dict, progress: bool = True):
    """The data path of `data.pipeline`: pil (reference) or device (decoded cache + views on the device),
    with the model's preprocessing `pp` (load_clip's: size, mean, std, interpolation, resize_mode)."""
    size = int(pp["size"][0] if isinstance(pp["size"], (tuple, list)) else pp["size"])
    strong = {"strong_scale": (cfg.data.strong_scale_min, 1.0), "randaug_magnitude": cfg.data.randaug_magnitude,
              "randaug_ops": cfg.data.randaug_ops}
    if cfg.data.pipeline == "device":
        if pp["resize_mode"] != "shortest":
            log.warning("data.pipeline=device centre-crops non-square images (its cache keeps the centre square), "
                        "not resize_mode=%s; use data.pipeline=pil for the exact preprocessing", pp["resize_mode"])
        return DevicePipeline(size, pp["mean"], pp["std"], cfg.run.cache_root, cfg.data.cache_size, progress,
                              interpolation=pp["interpolation"], **strong)
    return PilPipeline(build_views(size, pp["mean"], pp["std"], interpolation=pp["interpolation"],
                                   resize_mode=pp["resize_mode"], **strong))


def maybe_compile(visual: torch.nn.Module, enabled: bool, device: torch.device) -> None:
    """train.compile: torch.compile the image tower in place (parameter names, so checkpoints, unchanged).

    CUDA only: on the CPU inductor needs a C++ toolchain and gains little, so the flag is ignored there.
    """
    if not enabled:
        return
    if device.type != "cuda":
        log.info("train.compile ignored on %s (CUDA only)", device.type)
        return
    visual.compile()


def _train(cfg, student, visual_params, heads, data: PreparedData, views, device, run_dir: Path,
           report: Report | None, resume_from, progress):
    """The epoch loop with per-epoch rows, validation, checkpoints and resume."""
    is_main = rank() == 0
    ddp_student = student
    if world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ddp_student = DDP(student, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW([
        {"params": visual_params, "lr": cfg.train.lr},
        {"params": list(student.anchors.parameters()), "lr": cfg.train.lr * cfg.anchors.lr_mult},
    ], weight_decay=cfg.train.weight_decay)
    train_set = views.dataset(data.train, train=True)
    per_proc_batch = max(1, cfg.train.batch_size // world_size())
    drop_last = len(data.train) // world_size() >= per_proc_batch
    n_batches = len(engine.make_loader(train_set, per_proc_batch, True, 0, 0, drop_last))
    steps_per_epoch = n_batches if cfg.train.max_steps_per_epoch is None else min(n_batches, cfg.train.max_steps_per_epoch)
    total = max(1, steps_per_epoch * cfg.train.epochs)
    warm = cfg.train.warmup_steps
    floor = cfg.train.lr_min / cfg.train.lr

    def lr_lambda(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        prog = (step - warm) / max(1, total - warm)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    scaler = grad_scaler(cfg.model.precision, device)
    digest = config_digest(cfg)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    src = resume_source(run_dir, resume_from)
    state: dict = {}
    rows: list[dict] = []
    start_epoch = 1
    if src is not None:
        blob = engine.load_checkpoint(src, student, optimizer, scheduler, scaler, digest)
        rows, start_epoch = list(blob["rows"]), blob["epoch"] + 1
        if blob.get("running_pbar") is not None:
            state["running_pbar"] = blob["running_pbar"].to(device)
        log.info("resumed from %s after epoch %d", src, blob["epoch"])
    train_s = sum(r.get("epoch_s", 0.0) for r in rows)
    val_head = {"global": lambda f, fl: student.anchors(f)}
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        seed = engine.epoch_seed(cfg.seed, epoch)
        engine.seed_everything(seed)
        loader = engine.make_loader(train_set, per_proc_batch, True, views.loader_workers(cfg.data.num_workers),
                                    seed, drop_last)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        row = engine.train_one_epoch(student, ddp_student, loader, optimizer, scheduler, scaler, cfg, heads,
                                     epoch, total, device, state, progress, pipeline=views)
        _check_bad(row["bad_images"], len(data.train), cfg, "train")
        train_s += row["epoch_s"]
        row["val_top1"] = None
        if cfg.eval.val_every_epoch and len(data.val):
            preds, _ = engine.predict(student.visual, data.val, val_head, cfg, heads, device, views, False,
                                      desc="val", progress=False)
            row["val_top1"] = engine.accuracy(*preds["global"], student.anchors.num_classes)[0]
        rows.append(row)
        log.info("epoch %d/%d loss %.4f pl-acc %s val %s w %.3f %.0f img/s", epoch, cfg.train.epochs, row["loss"],
                 _fmt(row["pseudo_label_acc"]), _fmt(row["val_top1"]), row["mean_weight"], row["images_per_s"])
        ckpt_dir = None
        if is_main:
            # rewritten whole (atomically): a resumed run never duplicates or half-writes a row
            atomic_write_text(run_dir / "epochs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            if epoch % cfg.run.checkpoint_every == 0 or epoch == cfg.train.epochs:
                engine.save_checkpoint(ckpt_path, student, optimizer, scheduler, scaler, epoch, rows, state, digest,
                                       {"train.fair_momentum": cfg.train.fair_momentum})
                ckpt_dir = ckpt_path.parent
        if report is not None:
            report(dict(row), ckpt_dir)
    return rows, train_s


def _final_heads(cfg: FairConfig, student, heads) -> dict:
    """The predictors reported for the adapted model (spec §8), or the baseline's for training-free methods."""
    if cfg.method == "zeroshot":
        return {"global": lambda f, fl: f @ heads.class_emb.t()}
    if cfg.method == "wca":
        return {"las": lambda f, fl: fl @ heads.w_fix.t()}
    out = {"global": lambda f, fl: student.anchors(f)}
    if heads.use_locals:
        out["las"] = lambda f, fl: student.anchors(mix(f, fl, cfg.local.beta))
    return out


def _pick_predictor(cfg: FairConfig, metrics: dict, names: list[str]) -> str:
    """eval.predictor, or in auto mode the one with the best validation accuracy (ties: global, cheaper)."""
    if cfg.eval.predictor != "auto":
        if cfg.eval.predictor not in names:
            raise FairError(f"eval.predictor={cfg.eval.predictor} is not available for method {cfg.method}; "
                            f"use one of {names} or auto")
        return cfg.eval.predictor
    vals = {k: metrics.get(f"val_top1_{k}") for k in names}
    if any(v is None for v in vals.values()):
        return names[0]
    return max(names, key=lambda k: (vals[k], k == "global"))


def _check_bad(bad: int, total: int, cfg: FairConfig, split: str) -> None:
    if bad and total and bad / total > cfg.data.max_bad_images:
        raise FairError(f"{bad} of {total} {split} images are unreadable (more than data.max_bad_images="
                        f"{cfg.data.max_bad_images}); fix or remove them, or raise data.max_bad_images")
    if bad:
        log.warning("skipped %d unreadable %s images", bad, split)


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _peak_mem_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def git_commit() -> str | None:
    """The code's git commit, when it runs from a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(data: PreparedData, descriptions_sha: str | None, device: torch.device) -> dict:
    from importlib.metadata import PackageNotFoundError, version
    pk = {}
    for name in ("torch", "torchvision", "open_clip_torch", "numpy", "ray", "optuna"):
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
        "num_processes": world_size(), "created_at": _now(),
        "pid": os.getpid(),
    }
