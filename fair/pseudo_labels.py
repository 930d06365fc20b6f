"""Scores and pseudo-labels on the weak view (spec §4): p = gamma p_fix + (1 - gamma) p_las, y = argmax p."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fair.precision import full_precision


def gamma_at(start: float, end: float, schedule: str, progress: float) -> float:
    """gamma at training progress in [0, 1] (0: first step, 1: last step)."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "constant":
        return start
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown gamma schedule {schedule!r}")


@dataclass
class Teacher:
    """The teacher's view of a batch: both heads' probabilities, their mix and the pseudo-labels."""
    p_fix: torch.Tensor   # [B, C]
    p_las: torch.Tensor   # [B, C]
    p: torch.Tensor       # [B, C]
    y: torch.Tensor       # [B]


@full_precision
def pseudo_labels(s_fix: torch.Tensor, s_las: torch.Tensor, scale: float, gamma: float) -> Teacher:
    """Softmax both alignment scores at the logit scale, mix with gamma, take the argmax (in fp32)."""
    p_fix = torch.softmax(scale * s_fix, dim=-1)
    p_las = torch.softmax(scale * s_las, dim=-1)
    p = gamma * p_fix + (1 - gamma) * p_las
    return Teacher(p_fix, p_las, p, p.argmax(dim=-1))
