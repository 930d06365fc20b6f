"""The loop and nothing else: one training epoch, evaluation of heads, checkpoints with exact resume."""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler
from tqdm.auto import tqdm

from fair import local
from fair.config import FairConfig
from fair.data.views import as_pipeline, batch_indices, collate
from fair.errors import FairError
from fair.io import atomic_torch_save
from fair.losses import all_reduce_sum, student_loss, world_size
from fair.precision import autocast, grad_scaler
from fair.pseudo_labels import gamma_at, pseudo_labels
from fair.scores import s_fix, s_las
from fair.weighting import ambiguity_weights

log = logging.getLogger(__name__)
# (f_global [B, D], f_loc [B, D]) -> scores [B, C]: one way of predicting from an image's features
Predictor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Student(nn.Module):
    """What trains: the image tower (only its norms are trainable) and the learnable anchors."""

    def __init__(self, visual: nn.Module, anchors: nn.Module):
        super().__init__()
        self.visual = visual
        self.anchors = anchors

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Alignment scores [B, C] of the global features (the student's logits before the scale)."""
        return s_las(self.anchors, local.encode(self.visual, images))


@dataclass
class Heads:
    """Frozen pieces the teacher and the baselines need, on the device."""
    class_emb: torch.Tensor          # zero-shot head [C, D]
    w_fix: torch.Tensor              # the teacher's fixed head [C, D]
    w_desc: torch.Tensor | None      # the description head for the WCA baseline (None: no descriptions)
    scale: float                     # the model's logit scale
    use_locals: bool                 # fair/wca: local features; selftrain: global only
    frozen_visual: nn.Module | None = None   # pseudo.teacher=frozen: the pretrained tower S_fix is computed
    #                                          with (eval mode, no gradient); None: the student's tower


@dataclass
class Training:
    """The state of a training run that every step reads or changes (besides the batch).

    `cfg` has its "auto" keys resolved (fair.adapt.resolve_auto); `ddp_student` is the student as the
    backward pass sees it (its DistributedDataParallel wrapper, or the student itself).
    """
    cfg: FairConfig
    student: Student
    heads: Heads
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    device: torch.device
    total_steps: int
    ddp_student: nn.Module | None = None
    running_pbar: torch.Tensor | None = None   # the running mean prediction (train.fair_momentum > 0)
    method: TrainingMethod | None = None       # another method's step and state (dpa, tent); None: train_step

    def __post_init__(self):
        if self.cfg.train.fair_momentum is None:
            raise FairError("train.fair_momentum is auto (null) here; resolve it first (fair.adapt.resolve_auto) "
                            "or set a number")
        self.ddp_student = self.ddp_student or self.student


class TrainingMethod(Protocol):
    """A training method other than FAIR's own step (fair.methods builds one per method: fair.dpa, fair.tent).

    It steps on the batch's views and keeps its own state across steps and epochs, which checkpoints carry.
    """

    def start(self, tr: Training, images, pipeline, progress: bool) -> None:
        """Before the first epoch of a run (not on resume)."""

    def step(self, tr: Training, weak: torch.Tensor, strong: torch.Tensor, indices: torch.Tensor, generator,
             crops: torch.Tensor | None) -> dict:
        """One optimisation step; the statistics train_step returns ("agree" may be None, "extra" adds
        per-sample means to the epoch row)."""

    def end_epoch(self, tr: Training) -> None:
        """After the last step of every epoch, on every process."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict, device: torch.device) -> None: ...


def make_training(cfg: FairConfig, student: Student, visual_params: list, heads: Heads, device: torch.device,
                  total_steps: int, method: TrainingMethod | None = None) -> Training:
    """AdamW over the trainable norms and the anchors (lr x anchors.lr_mult), warm-up then cosine to
    train.lr_min, the precision's gradient scaler, and DDP across processes when there are several."""
    ddp_student = student
    if world_size() > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        ddp_student = DDP(student, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW([
        {"params": visual_params, "lr": cfg.train.lr},
        {"params": list(student.anchors.parameters()), "lr": cfg.train.lr * cfg.anchors.lr_mult},
    ], weight_decay=cfg.train.weight_decay)
    floor = cfg.train.lr_min / cfg.train.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.train.warmup_steps, total_steps, floor))
    return Training(cfg, student, heads, optimizer, scheduler, grad_scaler(cfg.model.precision, device), device,
                    total_steps, ddp_student, method=method)


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """The learning rate at `step` as a fraction of train.lr: linear warm-up, then cosine down to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    prog = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))


def epoch_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A seed per (run seed, epoch): resuming at an epoch boundary replays exactly the same randomness."""
    return (seed * 1_000_003 + epoch * 7919 + salt) % (2**31 - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int, drop_last: bool = False,
                shard: bool = True):
    """A DataLoader whose order and worker seeds depend only on `seed`.

    Under torch.distributed a training loader is sharded across processes; evaluation loaders are not
    (shard=False), so every process computes the same metrics. A dataset with `batched = True` (the
    decoded cache) is indexed by a whole batch of indices at once and returns the batch itself.
    """
    g = torch.Generator().manual_seed(seed)
    sampler = None
    if shard and world_size() > 1:
        from torch.utils.data.distributed import DistributedSampler
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
        shuffle = False
    if getattr(dataset, "batched", False):
        base = sampler or (RandomSampler(dataset, generator=g) if shuffle else SequentialSampler(dataset))
        return DataLoader(dataset, batch_size=None, sampler=BatchSampler(base, batch_size, drop_last),
                          num_workers=num_workers, collate_fn=dataset.collate, generator=g,
                          persistent_workers=False, pin_memory=torch.cuda.is_available())
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate, generator=g, drop_last=drop_last, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def teacher_features(visual, images, cfg: FairConfig, heads: Heads, generator, local_k: int,
                     crops: torch.Tensor | None = None):
    """Global features and (for fair/wca) the pooled local feature f_loc of a batch of views.

    `crops` [B, K, 3, H, W]: local crops the data pipeline already made (the device pipeline cuts them
    from the decoded cache); else fair.local cuts them from `images`.
    """
    if not heads.use_locals:
        f = local.encode(visual, images)
        return f, f
    return pooled_local_features(visual, images, cfg, generator, local_k, crops, heads.w_fix)


def pooled_local_features(visual, images, cfg: FairConfig, generator, local_k: int,
                          crops: torch.Tensor | None = None, w_fix: torch.Tensor | None = None):
    """(f [B, D], f_loc [B, D]): global and pooled local features, from given crops or fair.local's.
    `w_fix`: the fixed head, which ranks the locals under `local.select: anchors`."""
    if crops is not None and cfg.local.source == "crops":
        B, K = crops.shape[:2]
        feats = local.encode(visual, torch.cat([images, crops.flatten(0, 1)]))   # one batched forward pass
        f, locs = feats[:B], feats[B:].view(B, K, -1)
    else:
        f, locs = local.local_features(visual, images, cfg.local.source, local_k, cfg.local.crop_min,
                                       cfg.local.crop_max, generator)
    w_select = select_head(cfg, w_fix)
    return f, local.pool_locals(f, locs, cfg.local.top_k, cfg.local.tau_local, w_select)


def select_head(cfg: FairConfig, w_fix: torch.Tensor | None) -> torch.Tensor | None:
    """The head that ranks locals (`local.select: anchors`: W_fix), or None (`global`: cos to f(x))."""
    if cfg.local.select == "global":
        return None
    if w_fix is None:
        raise FairError("local.select: anchors needs the fixed head W_fix here; pass it (fair.engine.Heads.w_fix)")
    return w_fix


def pipeline_crops(cfg: FairConfig, need_locals: bool, k: int) -> int:
    """How many local crops a pipeline must make per image (0: none needed)."""
    return k if need_locals and cfg.local.source == "crops" else 0


@torch.no_grad()
def teacher_scores(tr: Training, weak: torch.Tensor, generator, crops: torch.Tensor | None = None):
    """(S_fix, S_las) [B, C] of the weak view, without gradient (spec §4).

    S_las: the student's tower and anchors. S_fix: the fixed head on the teacher tower's f_loc, which is the
    student's tower (pseudo.teacher=student) or the frozen pretrained copy (frozen; Heads.frozen_visual).
    """
    cfg, heads, k = tr.cfg, tr.heads, tr.cfg.local.num_crops
    frozen = heads.frozen_visual
    with autocast(cfg.model.precision, tr.device):
        if frozen is not None and crops is None and pipeline_crops(cfg, heads.use_locals, k):
            # cut once, as crop_features would, so that both towers see the same crops
            crops = local.random_crops(weak, k, cfg.local.crop_min, cfg.local.crop_max, generator).unflatten(
                0, (len(weak), k))
        f, f_loc = teacher_features(tr.student.visual, weak, cfg, heads, generator, k, crops)
        learned = s_las(tr.student.anchors, f, f_loc if heads.use_locals else None, cfg.local.beta)
        if frozen is not None:
            f, f_loc = teacher_features(frozen, weak, cfg, heads, generator, k, crops)
        return s_fix(f_loc, heads.w_fix), learned


def train_step(tr: Training, weak: torch.Tensor, strong: torch.Tensor, gamma: float, generator,
               crops: torch.Tensor | None = None) -> dict:
    """One FAIR step: teacher on the weak view (no gradient), weights, student on the strong view."""
    cfg, heads = tr.cfg, tr.heads
    t = pseudo_labels(*teacher_scores(tr, weak, generator, crops), heads.scale, gamma)
    w, keep = ambiguity_weights(cfg.weighting.mode, t.p_fix, t.p_las, t.p, t.y, cfg.weighting.power,
                                cfg.weighting.min)
    with autocast(cfg.model.precision, tr.device):
        logits = heads.scale * tr.ddp_student(strong)
    momentum = cfg.train.fair_momentum
    parts = student_loss(logits, t.y, w, cfg.train.lambda_fair, tr.running_pbar, momentum)
    if momentum > 0:
        tr.running_pbar = parts.pbar
    optimize(tr, parts.loss)
    # Statistics stay on the device as tensors: no per-step host synchronisation.
    return {"loss": parts.value, "ce": parts.ce, "fair": parts.fair, "w_sum": w.sum(), "kept": keep.sum(),
            "agree": (t.p_fix.argmax(1) == t.p_las.argmax(1)).sum(), "y": t.y}


def optimize(tr: Training, loss: torch.Tensor) -> None:
    """Backward, gradient clipping (train.grad_clip), the optimizer and schedule step: every method's update."""
    tr.optimizer.zero_grad(set_to_none=True)
    tr.scaler.scale(loss).backward()
    if tr.cfg.train.grad_clip > 0:
        tr.scaler.unscale_(tr.optimizer)
        torch.nn.utils.clip_grad_norm_([p for g in tr.optimizer.param_groups for p in g["params"]],
                                       tr.cfg.train.grad_clip)
    tr.scaler.step(tr.optimizer)
    tr.scaler.update()
    tr.scheduler.step()


def train_one_epoch(tr: Training, loader, epoch: int, pipeline=None, progress: bool = True) -> dict:
    """One epoch of FAIR self-training; returns the flat metric row (without validation).

    `pipeline` turns the loader's batches into views on the device (default: the pil pipeline's batches).
    """
    cfg, device = tr.cfg, tr.device
    tr.student.train()
    pipeline = pipeline or as_pipeline({})
    gen = pipeline.generator(epoch_seed(cfg.seed, epoch, salt=1), device)
    k = pipeline_crops(cfg, tr.heads.use_locals, cfg.local.num_crops)
    steps_per_epoch = len(loader) if cfg.train.max_steps_per_epoch is None else \
        min(len(loader), cfg.train.max_steps_per_epoch)
    sums = torch.zeros(8, dtype=torch.float64, device=device)  # loss, ce, fair, w, kept, pl_correct, agree, n
    extra: dict[str, torch.Tensor] = {}                        # a method's own per-sample means, times B
    has_agree = True
    bad, t0 = 0, time.perf_counter()
    gamma = cfg.pseudo.gamma_start
    bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch}", disable=None if progress else True, leave=False)
    for step, (batch, bad_idx) in enumerate(loader):
        if step >= steps_per_epoch:
            break
        bad += len(bad_idx)
        if batch is None:
            continue
        weak, strong, labels, crops = pipeline.train_batch(batch, device, gen, k, cfg.local.crop_min,
                                                           cfg.local.crop_max)
        global_step = (epoch - 1) * steps_per_epoch + step
        gamma = gamma_at(cfg.pseudo.gamma_start, cfg.pseudo.gamma_end, cfg.pseudo.gamma_schedule,
                         global_step / max(tr.total_steps - 1, 1))
        if tr.method is None:
            stats = train_step(tr, weak, strong, gamma, gen, crops)
        else:
            stats = tr.method.step(tr, weak, strong, batch_indices(batch), gen, crops)
        B = len(labels)
        has_agree = has_agree and stats["agree"] is not None
        agree = stats["agree"] if stats["agree"] is not None else torch.zeros((), device=device)
        sums += torch.stack([stats["loss"] * B, stats["ce"] * B, stats["fair"] * B, stats["w_sum"], stats["kept"],
                             (stats["y"] == labels).sum(), agree,
                             torch.full((), B, device=device)]).double()   # a fill, not a host copy
        for key, value in stats.get("extra", {}).items():
            extra[key] = extra.get(key, 0) + value.double() * B
        bar.update(1)
    bar.close()
    if tr.method is not None:
        tr.method.end_epoch(tr)
    extra_keys = sorted(extra)
    sums = torch.cat([sums, *[extra[k].view(1) for k in extra_keys]])
    sums = (all_reduce_sum(sums) if world_size() > 1 else sums).cpu()
    n = max(sums[7].item(), 1.0)
    has_labels = bool((loader.dataset.images.labels >= 0).all())
    elapsed = time.perf_counter() - t0
    return {
        "epoch": epoch, "loss": sums[0].item() / n, "loss_ce": sums[1].item() / n, "loss_fair": sums[2].item() / n,
        "lr": tr.optimizer.param_groups[0]["lr"], "gamma": gamma if tr.method is None else None,
        "mean_weight": sums[3].item() / n,
        "frac_kept": sums[4].item() / n, "pseudo_label_acc": 100.0 * sums[5].item() / n if has_labels else None,
        "head_agreement": sums[6].item() / n if has_agree else None,
        "images_per_s": sums[7].item() / max(elapsed, 1e-9),
        "epoch_s": elapsed, "bad_images": bad,
        **{k: sums[8 + i].item() / n for i, k in enumerate(extra_keys)},
    }


@torch.no_grad()
def predict(visual: nn.Module, images, predictors: dict[str, Predictor], cfg: FairConfig, device, views,
            need_locals: bool, desc: str = "eval", progress: bool = True,
            w_fix: torch.Tensor | None = None) -> tuple[dict, int]:
    """Run `visual` over an ImageSet once; returns {predictor: (pred, labels)} and the bad-image count.

    Crops use a fixed generator so evaluation is repeatable; `w_fix` ranks the locals under
    `local.select: anchors`. `views`: a pipeline
    (fair.data.views.PilPipeline, fair.data.device_views.DevicePipeline) or a build_views() dict.
    """
    visual.eval()
    pipeline = as_pipeline(views)
    loader = make_loader(pipeline.dataset(images, train=False), cfg.eval.batch_size, False,
                         pipeline.loader_workers(cfg.data.num_workers), seed=cfg.seed, shard=False)
    gen = pipeline.generator(epoch_seed(cfg.seed, 0, salt=2), device)
    n_crops = pipeline_crops(cfg, need_locals, cfg.eval.local_views)
    preds = {k: [] for k in predictors}
    labels, bad = [], 0
    for batch, bad_idx in tqdm(loader, desc=desc, disable=None if progress else True, leave=False):
        bad += len(bad_idx)
        if batch is None:
            continue
        x, y, crops = pipeline.test_batch(batch, device, gen, n_crops, cfg.local.crop_min,
                                          cfg.local.crop_max)
        with autocast(cfg.model.precision, device):
            if need_locals:
                f, f_loc = pooled_local_features(visual, x, cfg, gen, cfg.eval.local_views, crops, w_fix)
            else:
                f = local.encode(visual, x)
                f_loc = f
            for k, predictor in predictors.items():
                preds[k].append(predictor(f, f_loc).argmax(1).cpu())
        labels.append(y)
    y = torch.cat(labels) if labels else torch.empty(0, dtype=torch.long)
    return {k: (torch.cat(v) if v else torch.empty(0, dtype=torch.long), y) for k, v in preds.items()}, bad


def correctness(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per image, whether the prediction is right (bool, in the order of the evaluated images)."""
    return pred == labels


def accuracy(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """(top-1 %, mean per-class accuracy %) over the classes present in `labels`."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    correct = correctness(pred, labels).float()
    per_class = [correct[labels == c].mean().item() for c in range(num_classes) if (labels == c).any()]
    return 100.0 * correct.mean().item(), 100.0 * float(np.mean(per_class))


# ---------------------------------------------------------------------------------- checkpoints


def trainable_state(student: Student) -> dict:
    """Only what training changes: the trainable parameters by name (small, even for ViT-L)."""
    return {n: p.detach().cpu().clone() for n, p in student.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, tr: Training, epoch: int, rows: list, config_digest: str,
                    resolved: dict | None = None) -> None:
    """Full training state after `epoch`, written atomically. `resolved`: the values that "auto" config keys
    took when the run started, which a resumed run must keep (checkpoint_resolved)."""
    blob = {
        "epoch": epoch, "trainable": trainable_state(tr.student), "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.scheduler.state_dict(), "scaler": tr.scaler.state_dict(), "rows": rows,
        "running_pbar": tr.running_pbar, "method_state": tr.method.state_dict() if tr.method else None,
        "config_digest": config_digest, "resolved": resolved or {},
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
    }
    atomic_torch_save(blob, path)


def checkpoint_resolved(path: Path) -> dict:
    """The `resolved` values saved with a checkpoint ({} for one written before they were saved); the
    tensors are memory-mapped, not read."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:  # noqa: BLE001 - load_checkpoint reports an unreadable file with its fix
        return {}
    return dict(blob.get("resolved") or {})


def load_checkpoint(path: Path, tr: Training, config_digest: str) -> dict:
    """Restore a checkpoint into the live training state; returns it (epoch, rows, ...)."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise FairError(f"checkpoint {str(path)!r} is unreadable ({type(e).__name__}); delete it to restart "
                        f"the run or restore it from storage") from None
    if blob.get("config_digest") != config_digest:
        raise FairError(f"checkpoint {str(path)!r} was made with a different config; resume with the same "
                        f"config, or start a new run (run.name=... or run.overwrite=true)")
    params = dict(tr.student.named_parameters())
    with torch.no_grad():
        for n, t in blob["trainable"].items():
            params[n].copy_(t)
    tr.optimizer.load_state_dict(blob["optimizer"])
    tr.scheduler.load_state_dict(blob["scheduler"])
    tr.scaler.load_state_dict(blob["scaler"])
    if blob.get("running_pbar") is not None:
        tr.running_pbar = blob["running_pbar"].to(tr.device)
    if tr.method is not None:
        if blob.get("method_state") is None:
            raise FairError(f"checkpoint {str(path)!r} holds no {tr.cfg.method} state (memory bank, ...); "
                            f"start the run again (run.overwrite=true)")
        tr.method.load_state_dict(blob["method_state"], tr.device)
    return blob
