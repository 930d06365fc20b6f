"""Ambiguity-aware sample weights (spec §5): none | agreement | margin, raised to a power, with a floor."""
from __future__ import annotations

import torch

from fair.precision import full_precision


@full_precision
def ambiguity_weights(mode: str, p_fix: torch.Tensor, p_las: torch.Tensor, p: torch.Tensor,
                      y: torch.Tensor, power: float = 1.0, minimum: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample weights w in [0, 1] and the keep mask (w >= minimum), in fp32.

    agreement: (p_fix[y] / max p_fix) * (p_las[y] / max p_las) — 1 when both heads pick y.
    margin:    1 - p_(2) / p_(1) on the mixed p — 0 for a tie between the top two classes.
    """
    if mode == "none":
        w = torch.ones_like(y, dtype=p.dtype)
    elif mode == "agreement":
        gather = lambda q: q.gather(1, y.unsqueeze(1)).squeeze(1) / q.max(dim=1).values  # noqa: E731
        w = gather(p_fix) * gather(p_las)
    elif mode == "margin":
        top2 = p.topk(2, dim=1).values
        w = 1 - top2[:, 1] / top2[:, 0].clamp_min(1e-12)
    else:
        raise ValueError(f"unknown weighting mode {mode!r}")
    w = w.clamp(0, 1) ** power
    keep = w >= minimum
    return w * keep, keep
