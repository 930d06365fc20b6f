"""`tent`: entropy minimisation of the student's predictions with a batch-diversity term, no pseudo-labels.

The control every adaptation method must beat: the same trainable parameters (visual LayerNorms and the
learnable class head, started from the templates), optimizer and schedule as the others, and the loss

    L = mean_b H(p_b) - lambda H(pbar),   p_b = softmax(s <f(x_b), normalize(Z)>),   pbar = mean_b p_b

on one view (tent.view; weak by default, docs/method.md). Process-count invariant under DDP as FAIR's loss.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from fair.config import TentConfig
from fair.engine import Training, optimize
from fair.losses import all_reduce_sum, global_pbar, world_size
from fair.precision import autocast, full_precision


def entropy(p: torch.Tensor) -> torch.Tensor:
    """H(p) = -sum_c p_c log p_c over the last dimension (0 log 0 = 0)."""
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


@dataclass
class TentLossParts:
    loss: torch.Tensor          # what to backpropagate (scaled for DDP averaging)
    value: torch.Tensor         # the global objective's value (detached)
    entropy: torch.Tensor       # mean_b H(p_b)
    diversity: torch.Tensor     # H(pbar)


@full_precision
def tent_loss(logits: torch.Tensor, diversity: float) -> TentLossParts:
    """mean_b H(p_b) - diversity H(pbar) over every process's batch: each process returns P x its share of the
    mean entropy - diversity P H(pbar) with only its own rows carrying gradient into pbar."""
    P = world_size()
    p = torch.softmax(logits, dim=-1)
    h = entropy(p)
    sums = all_reduce_sum(torch.stack([h.sum(), torch.tensor(float(len(h)), device=h.device)]))
    n = sums[1]
    h_bar = entropy(global_pbar(p, n))
    loss = P * h.sum() / n - diversity * P * h_bar
    mean_h = sums[0] / n
    return TentLossParts(loss, mean_h - diversity * h_bar.detach(), mean_h, h_bar.detach())


class Tent:
    """tent as a training method (fair.engine.TrainingMethod): no state besides the model's."""

    def __init__(self, cfg: TentConfig):
        self.cfg = cfg

    def start(self, tr: Training, images, pipeline, progress: bool) -> None:
        pass

    def step(self, tr: Training, weak, strong, indices, generator, crops) -> dict:
        with autocast(tr.cfg.model.precision, tr.device):
            logits = tr.heads.scale * tr.ddp_student(weak if self.cfg.view == "weak" else strong)
        parts = tent_loss(logits, self.cfg.diversity)
        optimize(tr, parts.loss)
        B = len(logits)
        ones = torch.full((), B, device=logits.device)
        # rows: loss_ce is the mean entropy, loss_fair -H(pbar); pseudo_label_acc the accuracy of the trained
        # view's predictions; no second head, so no head agreement
        return {"loss": parts.value, "ce": parts.entropy, "fair": -parts.diversity, "w_sum": ones, "kept": ones,
                "y": logits.argmax(1).detach(), "agree": None}

    def end_epoch(self, tr: Training) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        pass
