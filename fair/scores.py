"""The alignment scores of spec §4, S_fix and S_las: used by the teacher, the student and evaluation alike.

Both are cosine similarities [B, C] of L2-normalised features (the caller multiplies by the logit scale),
computed in fp32 whatever the autocast (fair.precision.full_precision): the encoders may run in bf16, the
scores that decide pseudo-labels, weights and predictions do not.
"""
from __future__ import annotations

import torch
from torch import nn

from fair.local import mix
from fair.precision import full_precision


@full_precision
def s_fix(f_loc: torch.Tensor, w_fix: torch.Tensor) -> torch.Tensor:
    """S_fix(x, c) = <f_loc, W_fix[c]>: the fixed (WCA) alignment score of the pooled local feature.

    The same inner product scores the global feature against the template head (zero-shot CLIP)."""
    return f_loc @ w_fix.t()


@full_precision
def s_las(anchors: nn.Module, f: torch.Tensor, f_loc: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
    """S_las(x, c) = score(f_mix, c) through the learnable anchors, f_mix = normalize(beta f + (1 - beta) f_loc).

    f_loc None: the global feature alone (the student's logits, the `global` predictor, selftrain's teacher).
    """
    return anchors(f if f_loc is None else mix(f, f_loc, beta))
