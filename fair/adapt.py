"""adapt(config) -> record: the one entry point for a FAIR run; `fair adapt` and every sweep trial call it.

The library never knows whether it runs under Ray: it takes a `report(row, checkpoint_dir)` callback that
is called after every epoch on every process (checkpoint_dir is set on rank 0 only), and it resumes
from a checkpoint file when one is given or found in the run folder. The record it returns is built by
fair.record; the loop it drives is fair.engine's.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist

from fair import engine, methods, record
from fair.anchors import LearnableAnchors, fixed_head
from fair.config import TRAINING_METHODS, FairConfig, needs_descriptions, save_config
from fair.data import PreparedData, prepare_data
from fair.data.device_views import DevicePipeline
from fair.data.views import PilPipeline, build_views
from fair.errors import FairError
from fair.io import atomic_write_text, write_json
from fair.losses import fair_momentum_for, world_size
from fair.models import (frozen_copy, load_clip, preprocess_record, resolve_device, resolve_pretrained,
                         trainable_visual_parameters, weights_id)
from fair.scores import s_fix, s_las
from fair.descriptions.cupl import Descriptions, load_descriptions
from fair.text import build_text_embeddings

log = logging.getLogger(__name__)
Report = Callable[[dict, Optional[Path]], None]
# train.fair_momentum of runs started before it could be auto (null): a resumed one keeps it.
LEGACY_FAIR_MOMENTUM = 0.0


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@dataclass
class Setup:
    """What set-up builds for a run, on its device; the text tower is gone by then."""
    student: engine.Student          # the image tower and the learnable anchors
    visual_params: list              # the image tower's trainable parameters (train.trainable)
    heads: engine.Heads
    views: object                    # the data pipeline of data.pipeline (build_pipeline)
    descriptions: Descriptions
    device: torch.device
    progress: bool                   # progress bars (run.progress, rank 0 only)
    preprocess: dict                 # the image preprocessing used, as the record says it (preprocess_record)


def adapt(cfg: FairConfig, run_dir: str | Path, report: Report | None = None,
          resume_from: str | Path | None = None) -> dict:
    """Run one adaptation in `run_dir` and return the final record (also written as record.json).

    Resumes from `resume_from` (a checkpoint file), else from `run_dir/checkpoints/last.pt` when it exists.
    """
    t_start = time.perf_counter()
    run_dir = Path(run_dir)
    device = start(cfg, run_dir)
    data = prepare_data(cfg.data)
    src = resume_source(run_dir, resume_from)
    cfg = resolve_auto(cfg, len(data.classnames), src)
    if rank() == 0:
        save_config(cfg, run_dir / "config.yaml")
    setup = set_up(cfg, data, device)
    setup_s = time.perf_counter() - t_start

    t_eval = time.perf_counter()
    metrics = baseline_metrics(cfg, setup, data)
    eval_s = time.perf_counter() - t_eval
    trains = cfg.method in TRAINING_METHODS and cfg.train.epochs > 0
    rows, train_s = train(cfg, setup, data, run_dir, report, src) if trains else ([], 0.0)
    t_eval = time.perf_counter()
    metrics, outcomes = final_metrics(cfg, setup, data, rows, metrics)
    eval_s += time.perf_counter() - t_eval

    wall = time.perf_counter() - t_start
    needs_desc = needs_descriptions(cfg)
    rec = record.completed_record(
        cfg, metrics, record.timings(wall, setup_s, train_s, eval_s, rows, device),
        {**record.provenance(data, setup.descriptions.sha256, device), "preprocess": setup.preprocess},
        setup.descriptions.fallback_classes if needs_desc else [], rows, outcomes)
    if rank() == 0:
        write_json(run_dir / "record.json", rec)
    # validation only: what a person reads while choosing what to try next (test is in the record)
    log.info("%s: val top-1 %s (%s) | %.0f s", rec["run_id"], _fmt(metrics["val_top1"]), metrics["predictor"], wall)
    return rec


def start(cfg: FairConfig, run_dir: Path) -> torch.device:
    """Seed, create the run folder (rank 0), pick the device and reset its memory statistics."""
    if rank() == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    engine.seed_everything(cfg.seed)
    device = resolve_device(cfg.model.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.cuda.reset_peak_memory_stats(device)
    return device


def resume_source(run_dir: Path, resume_from: str | Path | None) -> Path | None:
    """The checkpoint a run resumes from: `resume_from`, else the run folder's last.pt when there is one."""
    last = Path(run_dir) / "checkpoints" / "last.pt"
    return Path(resume_from) if resume_from else (last if last.is_file() else None)


def resolve_auto(cfg: FairConfig, num_classes: int, resume_from: Path | None) -> FairConfig:
    """A copy of `cfg` with every "auto" (null) key set to the value the run uses, so that config.yaml, the
    checkpoint digest and the record all carry it; a resumed run keeps the value it started with. The one
    place such keys are resolved (train.fair_momentum: by the number of classes)."""
    cfg = copy.deepcopy(cfg)
    if cfg.train.fair_momentum is None and resume_from is not None:
        started = engine.checkpoint_resolved(resume_from)
        cfg.train.fair_momentum = float(started.get("train.fair_momentum", LEGACY_FAIR_MOMENTUM))
    cfg.train.fair_momentum = fair_momentum_for(cfg.train.fair_momentum, num_classes, cfg.train.batch_size)
    return cfg


def resolved_values(cfg: FairConfig) -> dict:
    """The values resolve_auto chose, as saved with a checkpoint (engine.checkpoint_resolved reads them)."""
    return {"train.fair_momentum": cfg.train.fair_momentum}


def set_up(cfg: FairConfig, data: PreparedData, device: torch.device) -> Setup:
    """Load the model, embed templates and descriptions (cached), build the heads, anchors and views."""
    progress = cfg.run.progress and rank() == 0
    model_cfg = resolve_pretrained(cfg.model, cfg.run.cache_root)
    clip, tokenizer, pp = load_clip(model_cfg, device)
    needs_desc = needs_descriptions(cfg)
    descriptions = load_descriptions(data.descriptions_path if (needs_desc or data.descriptions_path) else None,
                                     data.classnames, fallback=cfg.data.description_fallback or not needs_desc)
    te = build_text_embeddings(clip, tokenizer, data.classnames, data.templates, descriptions, weights_id(model_cfg),
                               cfg.run.cache_root, device)
    visual = clip.visual
    scale = float(clip.logit_scale.exp().item())
    del clip  # frees the text tower
    views = build_pipeline(cfg, pp, progress)

    class_emb = te.class_emb.to(device)
    w_desc = fixed_head(te.desc_emb, te.desc_mask, te.class_emb, cfg.anchors.tau_text).to(device) \
        if descriptions.sha256 is not None else None
    if not methods.uses_locals(cfg):
        heads = engine.Heads(class_emb, class_emb, w_desc, scale, use_locals=False)
        anchors = methods.global_head(cfg, te.class_emb, None if w_desc is None else w_desc.cpu())
    else:
        w_fix = fixed_head(te.desc_emb, te.desc_mask, te.class_emb, cfg.anchors.tau_text).to(device)
        heads = engine.Heads(class_emb, w_fix, w_desc, scale, use_locals=True)
        anchors = LearnableAnchors("prototype", w_fix.cpu()) if cfg.anchors.mode == "prototype" else \
            LearnableAnchors("set", te.desc_emb, te.desc_mask, cfg.anchors.tau_anchor)
    if cfg.pseudo.teacher == "frozen" and cfg.method in ("fair", "selftrain"):
        heads.frozen_visual = frozen_copy(visual)   # the pretrained weights, rebuilt on resume: never saved
        maybe_compile(heads.frozen_visual, cfg.train.compile, device)
    visual_params = trainable_visual_parameters(visual, cfg.train.trainable)
    maybe_compile(visual, cfg.train.compile, device)
    student = engine.Student(visual, anchors).to(device)
    return Setup(student, visual_params, heads, views, descriptions, device, progress, preprocess_record(pp))


def build_pipeline(cfg: FairConfig, pp: dict, progress: bool = True):
    """The data path of `data.pipeline`: pil (reference) or device (decoded cache + views on the device),
    with the model's preprocessing `pp` (load_clip's: size, mean, std, interpolation, resize_mode)."""
    size = int(pp["size"][0] if isinstance(pp["size"], (tuple, list)) else pp["size"])
    kw = {"strong_scale": (cfg.data.strong_scale_min, 1.0), "randaug_magnitude": cfg.data.randaug_magnitude,
          "randaug_ops": cfg.data.randaug_ops, "interpolation": pp["interpolation"], "resize_mode": pp["resize_mode"]}
    if cfg.data.pipeline == "device":
        return DevicePipeline(size, pp["mean"], pp["std"], cfg.run.cache_root, cfg.data.cache_size, progress, **kw)
    return PilPipeline(build_views(size, pp["mean"], pp["std"], **kw))


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


def baseline_metrics(cfg: FairConfig, setup: Setup, data: PreparedData) -> dict:
    """Zero-shot (templates) and WCA (fixed score; null without descriptions) accuracy on the test split."""
    heads = setup.heads
    predictors = {"zeroshot": lambda f, fl: s_fix(f, heads.class_emb)}
    if heads.w_desc is not None:
        predictors["wca"] = lambda f, fl: s_fix(fl, heads.w_desc)
    preds, bad = engine.predict(setup.student.visual, data.test, predictors, cfg, setup.device, setup.views,
                                need_locals="wca" in predictors, desc="baselines", progress=setup.progress,
                                w_fix=heads.w_fix)
    metrics = {}
    for k, (p, y) in preds.items():
        metrics[f"{k}_top1"], metrics[f"{k}_mean_per_class"] = engine.accuracy(p, y, len(data.classnames))
    metrics.setdefault("wca_top1", None)
    metrics.setdefault("wca_mean_per_class", None)
    _check_bad(bad, len(data.test), cfg, "test")
    return metrics


def train(cfg: FairConfig, setup: Setup, data: PreparedData, run_dir: Path, report: Report | None,
          src: Path | None) -> tuple[list[dict], float]:
    """The epoch loop with per-epoch rows, validation, checkpoints and resume from `src`; returns the epoch
    rows of the whole run and its training seconds (every attempt's)."""
    train_set = setup.views.dataset(data.train, train=True)
    per_proc_batch = max(1, cfg.train.batch_size // world_size())
    drop_last = len(data.train) // world_size() >= per_proc_batch
    n_batches = len(engine.make_loader(train_set, per_proc_batch, True, 0, 0, drop_last))
    steps_per_epoch = n_batches if cfg.train.max_steps_per_epoch is None else min(n_batches, cfg.train.max_steps_per_epoch)
    method = methods.training_method(cfg, len(data.train), setup.heads.class_emb.shape[1], setup.device)
    tr = engine.make_training(cfg, setup.student, setup.visual_params, setup.heads, setup.device,
                              max(1, steps_per_epoch * cfg.train.epochs), method)
    digest = record.config_digest(cfg)
    rows: list[dict] = []
    start_epoch = 1
    if src is not None:
        blob = engine.load_checkpoint(src, tr, digest)
        rows, start_epoch = list(blob["rows"]), blob["epoch"] + 1
        log.info("resumed from %s after epoch %d", src, blob["epoch"])
    elif method is not None:
        method.start(tr, data.train, setup.views, setup.progress)
    for epoch in range(start_epoch, cfg.train.epochs + 1):
        seed = engine.epoch_seed(cfg.seed, epoch)
        engine.seed_everything(seed)
        loader = engine.make_loader(train_set, per_proc_batch, True, setup.views.loader_workers(cfg.data.num_workers),
                                    seed, drop_last)
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        row = engine.train_one_epoch(tr, loader, epoch, setup.views, setup.progress)
        _check_bad(row["bad_images"], len(data.train), cfg, "train")
        row["val_top1"] = validate(cfg, setup, data) if cfg.eval.val_every_epoch else None
        rows.append(row)
        log.info("epoch %d/%d loss %.4f pl-acc %s val %s w %.3f %.0f img/s", epoch, cfg.train.epochs, row["loss"],
                 _fmt(row["pseudo_label_acc"]), _fmt(row["val_top1"]), row["mean_weight"], row["images_per_s"])
        ckpt_dir = save_epoch(run_dir, tr, rows, digest) if rank() == 0 else None
        if report is not None:
            report(dict(row), ckpt_dir)
    return rows, sum(r.get("epoch_s", 0.0) for r in rows)


def validate(cfg: FairConfig, setup: Setup, data: PreparedData) -> float | None:
    """Top-1 % of the global predictor on the validation split (None without one)."""
    if not len(data.val):
        return None
    anchors = setup.student.anchors
    preds, _ = engine.predict(setup.student.visual, data.val, {"global": lambda f, fl: s_las(anchors, f)}, cfg,
                              setup.device, setup.views, False, desc="val", progress=False)
    return engine.accuracy(*preds["global"], anchors.num_classes)[0]


def save_epoch(run_dir: Path, tr: engine.Training, rows: list[dict], digest: str) -> Path | None:
    """Write epochs.jsonl, and the checkpoint when one is due (run.checkpoint_every, the last epoch); returns
    the checkpoint's folder when one was written."""
    # rewritten whole (atomically): a resumed run never duplicates or half-writes a row
    atomic_write_text(run_dir / "epochs.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    epoch, cfg = rows[-1]["epoch"], tr.cfg
    if epoch % cfg.run.checkpoint_every and epoch != cfg.train.epochs:
        return None
    path = run_dir / "checkpoints" / "last.pt"
    engine.save_checkpoint(path, tr, epoch, rows, digest, resolved_values(cfg))
    return path.parent


def final_metrics(cfg: FairConfig, setup: Setup, data: PreparedData, rows: list[dict],
                  baselines: dict) -> tuple[dict, dict | None]:
    """The record's metrics: `baselines`, the adapted model's predictors on val and test, the one the val
    split picks, its gain over zero-shot, and the last epoch's diagnostics; and the reported predictor's
    per-image `test_outcomes` (None when unreadable images were skipped: the bits would not line up)."""
    predictors = _final_predictors(cfg, setup)
    need_locals = setup.heads.use_locals and any(k != "global" for k in predictors)
    evaluate = lambda images, desc: engine.predict(  # noqa: E731
        setup.student.visual, images, predictors, cfg, setup.device, setup.views, need_locals, desc=desc,
        progress=setup.progress, w_fix=setup.heads.w_fix)[0]
    val_preds = evaluate(data.val, "val") if len(data.val) else {}
    test_preds = evaluate(data.test, "test")
    C, metrics = len(data.classnames), dict(baselines)
    for k in predictors:
        metrics[f"test_top1_{k}"], metrics[f"test_mean_per_class_{k}"] = engine.accuracy(*test_preds[k], C)
        metrics[f"val_top1_{k}"] = engine.accuracy(*val_preds[k], C)[0] if k in val_preds else None
    predictor = _pick_predictor(cfg, metrics, list(predictors))
    v = metrics[f"val_top1_{predictor}"]
    last = rows[-1] if rows else {}
    correct = engine.correctness(*test_preds[predictor]).cpu().numpy()
    outcomes = record.test_outcomes(data.test.refs, correct) if len(correct) == len(data.test) else None
    return {**metrics,
            "predictor": predictor,
            "test_top1": metrics[f"test_top1_{predictor}"],
            "test_mean_per_class": metrics[f"test_mean_per_class_{predictor}"],
            "val_top1": v,
            "val_size": len(data.val),
            "val_stderr": 100 * math.sqrt(max(v / 100 * (1 - v / 100), 0) / len(data.val))
            if v is not None and len(data.val) else None,
            "gain_over_zeroshot": metrics[f"test_top1_{predictor}"] - metrics["zeroshot_top1"],
            "pseudo_label_acc": last.get("pseudo_label_acc"),
            "head_agreement": last.get("head_agreement"),
            "final_loss": last.get("loss")}, outcomes


def _final_predictors(cfg: FairConfig, setup: Setup) -> dict[str, engine.Predictor]:
    """The predictors reported for the adapted model (spec §8), or the baseline's for training-free methods."""
    heads, anchors = setup.heads, setup.student.anchors
    if cfg.method == "zeroshot":
        return {"global": lambda f, fl: s_fix(f, heads.class_emb)}
    if cfg.method == "wca":
        return {"las": lambda f, fl: s_fix(fl, heads.w_fix)}
    out = {"global": lambda f, fl: s_las(anchors, f)}
    if heads.use_locals:
        out["las"] = lambda f, fl: s_las(anchors, f, fl, cfg.local.beta)
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
