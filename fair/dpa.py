"""DPA, the baseline FAIR must beat (dpa-method.md): memory bank, image prototypes, distribution alignment,
ranking weight and DPA's loss, and the training method that steps with them.

Text prototypes `Z` are the student's anchors in `prototype` mode (scores `<f, normalize(Z)>`); image
prototypes `P` are class means of the memory bank's weak-view features. Every formula runs in fp32 whatever
the autocast (fair.precision.full_precision), as FAIR's do.

Under DDP each term is process-count invariant, as FAIR's (fair.losses): the distribution alignment keeps
the global batch mean of `p_T`, the loss scales its batch terms so that DDP's gradient average is the
gradient of the one-process objective on the whole batch, and the memory bank is synchronised at every
epoch's end so that every process computes the same `P`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from fair import local
from fair.config import DpaConfig, FairConfig
from fair.data.views import as_pipeline, batch_indices
from fair.engine import Training, make_loader, optimize
from fair.losses import all_reduce_sum, fairness_term, global_mean_rows, global_pbar, world_size
from fair.precision import autocast, full_precision
from fair.scores import s_fix, s_las
from fair.weighting import ambiguity_weights

# ----------------------------------------------------------------------------------------- formulas


@full_precision
def image_prototypes(features: torch.Tensor, labels: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """P[c] = normalize(mean of the features labelled c) -> [C, D]; a class with no member takes
    normalize(Z[c]). Labels < 0 (entries never written: unreadable images) count for no class."""
    C = z.shape[0]
    valid = labels >= 0
    sums = torch.zeros(C, features.shape[1], device=features.device).index_add_(0, labels[valid], features[valid])
    counts = torch.bincount(labels[valid], minlength=C)
    return torch.where((counts > 0).unsqueeze(1), F.normalize(sums, dim=-1), F.normalize(z, dim=-1))


@full_precision
def align_distribution(p: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """p~ = normalize_rows(p / mean(means)): `means` [K, C] are the kept batch means of p."""
    q = p / means.mean(0).clamp_min(1e-12)
    return q / q.sum(1, keepdim=True)


class DistributionAlignment:
    """The last `length` batch means of p_T (the global batch's under DDP) and the alignment by them."""

    def __init__(self, length: int):
        self.length = length
        self.means: torch.Tensor | None = None     # [K <= length, C], oldest first

    def __call__(self, p_text: torch.Tensor) -> torch.Tensor:
        """Keep this batch's mean of p_T, then return p~_T (the current batch counts among the means)."""
        mean = global_mean_rows(p_text).unsqueeze(0)
        self.means = mean if self.means is None else torch.cat([self.means, mean])[-self.length:]
        return align_distribution(p_text, self.means)


@dataclass
class DpaTeacher:
    """DPA's view of a batch (weak view, no gradient)."""
    p_text: torch.Tensor      # p_T [B, C], raw
    p_image: torch.Tensor     # p_P [B, C]
    p: torch.Tensor           # alpha p_P + (1 - alpha) p~_T
    y: torch.Tensor           # argmax p
    w: torch.Tensor           # the ranking weight


@full_precision
def dpa_pseudo_labels(s_text: torch.Tensor, s_image: torch.Tensor, scale: float, alpha: float,
                      da: DistributionAlignment) -> DpaTeacher:
    """p_T = softmax(s <f, normalize(Z)>), p_P = softmax(s <f, P>), p = alpha p_P + (1 - alpha) p~_T,
    y = argmax p, w = (p_P[y] / max p_P) (p_T[y] / max p_T) with the raw p_T (FAIR's `agreement`)."""
    p_text = torch.softmax(scale * s_text, dim=-1)
    p_image = torch.softmax(scale * s_image, dim=-1)
    p = alpha * p_image + (1 - alpha) * da(p_text)
    y = p.argmax(dim=-1)
    w, _ = ambiguity_weights("agreement", p_image, p_text, p, y)
    return DpaTeacher(p_text, p_image, p, y, w)


@full_precision
def prototype_alignment(align_logits: torch.Tensor) -> torch.Tensor:
    """CE(s_align <P, normalize(Z)>ᵀ-rows, [1..C]): each image prototype against every text prototype,
    its own class the target (an InfoNCE over classes). `align_logits` [C, C] = s_align <P_c, normalize(Z_k)>."""
    return F.cross_entropy(align_logits, torch.arange(len(align_logits), device=align_logits.device))


@dataclass
class DpaLossParts:
    loss: torch.Tensor          # what to backpropagate (batch terms scaled for DDP averaging)
    value: torch.Tensor         # the global objective's value (detached)
    ce: torch.Tensor            # mean_b(w CE)
    fair: torch.Tensor          # -(1/C) sum_c log pbar_c
    align: torch.Tensor         # the prototype alignment


@full_precision
def dpa_loss(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor, align_logits: torch.Tensor, reg: float,
             align: float) -> DpaLossParts:
    """L = mean_b(w CE(logits, y)) + reg (-(1/C) sum_c log pbar_c) + align prototype_alignment(align_logits).

    With P processes each returns P x (its share of the batch mean) + reg P L_fair(global pbar, local
    gradient) + align L_align (the same on every process): DDP's gradient average is then the gradient of
    the one-process objective on the whole batch.
    """
    P = world_size()
    ce = F.cross_entropy(logits, y, reduction="none")
    sums = all_reduce_sum(torch.stack([(w * ce).sum(), torch.tensor(float(len(y)), device=w.device)]))
    n = sums[1]
    l_fair = fairness_term(global_pbar(torch.softmax(logits, dim=-1), n))
    l_align = prototype_alignment(align_logits)
    loss = P * (w * ce).sum() / n + reg * P * l_fair + align * l_align
    ce_value = sums[0] / n
    value = ce_value + reg * l_fair.detach() + align * l_align.detach()
    return DpaLossParts(loss, value, ce_value, l_fair.detach(), l_align.detach())


# -------------------------------------------------------------------------------------- memory bank


class MemoryBank:
    """For every unlabelled training image, its latest weak-view feature and pseudo-label (-1: none yet).

    Under DDP a process writes its own batches' entries; `synchronise` then gives every process every entry's
    latest write. A write is stamped (write count x processes + rank), so that the newest write of an entry
    wins (a tie within one step, possible only when the sampler pads, goes to the higher rank).
    """

    def __init__(self, size: int, dim: int, device: torch.device):
        self.features = torch.zeros(size, dim, device=device)
        self.labels = torch.full((size,), -1, dtype=torch.long, device=device)
        self.stamps = torch.zeros(size, dtype=torch.long, device=device)
        self.clock = 0              # writes so far (the same on every process: they step in lockstep)

    def write(self, indices: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Overwrite the entries `indices` with this batch's features and pseudo-labels."""
        self.clock += 1
        indices = indices.to(self.features.device)
        self.features[indices] = features.float()
        self.labels[indices] = labels
        rank = dist.get_rank() if world_size() > 1 else 0
        self.stamps[indices] = self.clock * world_size() + rank

    def synchronise(self) -> None:
        """Every process takes every entry from the process that wrote it last (identity in one process)."""
        P = world_size()
        if P == 1:
            return
        newest = self.stamps.clone()
        dist.all_reduce(newest, op=dist.ReduceOp.MAX)
        mine = (self.stamps == newest) & (newest % P == dist.get_rank())
        self.features = all_reduce_sum(self.features * mine.unsqueeze(1))
        self.labels = all_reduce_sum((self.labels + 1) * mine) - 1
        self.stamps = newest

    def state_dict(self) -> dict:
        return {"features": self.features.cpu(), "labels": self.labels.cpu(), "stamps": self.stamps.cpu(),
                "clock": self.clock}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.features, self.labels = state["features"].to(device), state["labels"].to(device)
        self.stamps, self.clock = state["stamps"].to(device), int(state["clock"])


# ------------------------------------------------------------------------------------------ method


class Dpa:
    """DPA as a training method (fair.engine.TrainingMethod): the bank, P and the distribution alignment
    live here and travel with checkpoints."""

    def __init__(self, cfg: DpaConfig, num_images: int, dim: int, device: torch.device):
        self.cfg = cfg
        self.bank = MemoryBank(num_images, dim, device)
        self.da = DistributionAlignment(cfg.da_len)
        self.prototypes: torch.Tensor | None = None     # P [C, D]

    def start(self, tr: Training, images, pipeline, progress: bool) -> None:
        """Fill the bank by one zero-shot pass over the train split (pseudo-label: argmax of the Z scores at
        CLIP's scale), then compute P. Every process passes over the whole split (identical banks)."""
        fill_bank(self.bank, tr, images, pipeline, progress)
        self.update_prototypes(tr)

    def update_prototypes(self, tr: Training) -> None:
        self.prototypes = image_prototypes(self.bank.features, self.bank.labels, tr.student.anchors.weight.detach())

    def step(self, tr: Training, weak, strong, indices, generator, crops) -> dict:
        """Teacher on the weak view (bank write, pseudo-labels, weights), student on the strong view."""
        cfg, heads, anchors = tr.cfg, tr.heads, tr.student.anchors
        with torch.no_grad():
            with autocast(cfg.model.precision, tr.device):
                f = local.encode(tr.student.visual, weak)
            t = dpa_pseudo_labels(s_las(anchors, f), s_fix(f, self.prototypes), heads.scale, self.cfg.alpha,
                                  self.da)
        self.bank.write(indices, f, t.y)
        with autocast(cfg.model.precision, tr.device):
            logits = heads.scale * tr.ddp_student(strong)
        align_logits = self.cfg.align_scale * s_las(anchors, self.prototypes)   # P is a constant
        parts = dpa_loss(logits, t.y, t.w, align_logits, self.cfg.reg, self.cfg.align)
        optimize(tr, parts.loss)
        B = len(t.y)
        return {"loss": parts.value, "ce": parts.ce, "fair": parts.fair, "w_sum": t.w.sum(),
                "kept": torch.full((), B, device=t.w.device), "y": t.y,
                "agree": (t.p_image.argmax(1) == t.p_text.argmax(1)).sum(), "extra": {"loss_align": parts.align}}

    def end_epoch(self, tr: Training) -> None:
        """Gather the bank's entries across processes, then recompute P from it."""
        self.bank.synchronise()
        self.update_prototypes(tr)

    def state_dict(self) -> dict:
        return {"bank": self.bank.state_dict(), "prototypes": self.prototypes.cpu(),
                "da_means": None if self.da.means is None else self.da.means.cpu()}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.bank.load_state_dict(state["bank"], device)
        self.prototypes = state["prototypes"].to(device)
        self.da.means = None if state["da_means"] is None else state["da_means"].to(device)


@torch.no_grad()
def fill_bank(bank: MemoryBank, tr: Training, images, pipeline, progress: bool) -> None:
    """The zero-shot pass: every train image's feature (the test view: the device pipeline's weak view is
    that view, the pil one's differs by its random crop's jitter) and argmax of its Z scores."""
    cfg: FairConfig = tr.cfg
    tr.student.visual.eval()
    pipeline = as_pipeline(pipeline)
    loader = make_loader(pipeline.dataset(images, train=False), cfg.eval.batch_size, False,
                         pipeline.loader_workers(cfg.data.num_workers), seed=cfg.seed, shard=False)
    for batch, _ in loader:
        if batch is None:
            continue
        x, _, _ = pipeline.test_batch(batch, tr.device, None, 0, 0.0, 0.0)
        with autocast(cfg.model.precision, tr.device):
            f = local.encode(tr.student.visual, x)
        bank.write(batch_indices(batch), f, s_las(tr.student.anchors, f).argmax(1))
    bank.stamps.zero_()          # the pass is the same on every process: one entry, no newer write
    bank.clock = 0
