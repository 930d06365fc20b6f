"""Class Description Anchors: the fixed (WCA-style) head and the learnable anchors (spec §2).

All features here are L2-normalised; scores are cosine similarities (the caller multiplies by the
model's logit scale).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_NEG = -1e4  # masked logits: large negative but finite in fp16


def description_weights(desc_emb: torch.Tensor, desc_mask: torch.Tensor, class_emb: torch.Tensor,
                        tau_text: float) -> torch.Tensor:
    """v_cj = softmax_j(tau_text * cos(t_cj, t_c)) over each class's real descriptions -> [C, M].

    tau_text = 0 gives the plain average.
    """
    cos = torch.einsum("cmd,cd->cm", desc_emb, class_emb)
    return torch.softmax((tau_text * cos).masked_fill(~desc_mask, _NEG), dim=1) * desc_mask


def fixed_head(desc_emb: torch.Tensor, desc_mask: torch.Tensor, class_emb: torch.Tensor,
               tau_text: float) -> torch.Tensor:
    """W_fix[c] = normalize(sum_j v_cj t_cj) -> [C, D] (frozen)."""
    v = description_weights(desc_emb, desc_mask, class_emb, tau_text)
    return F.normalize(torch.einsum("cm,cmd->cd", v, desc_emb), dim=-1)


def set_score(z: torch.Tensor, anchors: torch.Tensor, mask: torch.Tensor, tau_anchor: float) -> torch.Tensor:
    """score(z, c) = sum_j softmax_j(tau * <z, A_cj>) <z, A_cj> over real descriptions -> [B, C].

    The image decides which of its class's descriptions it matches (the cross-modal interaction).
    """
    sims = torch.einsum("bd,cmd->bcm", z, anchors)
    att = torch.softmax((tau_anchor * sims).masked_fill(~mask, _NEG), dim=-1)
    return (att * sims).sum(-1)


class LearnableAnchors(nn.Module):
    """The adaptive classifier of the Learned Alignment Score.

    prototype: one vector per class, initialised to W_fix; score = <z, normalize(A_c)>.
    set:       every description kept, A_cj initialised to t_cj; score = set_score with normalize(A_cj).
    Anchors are re-normalised in both modes so that training moves directions, not scales; with one
    description per class the two modes therefore give identical scores at any parameter value.
    """

    def __init__(self, mode: str, init: torch.Tensor, mask: torch.Tensor | None = None, tau_anchor: float = 10.0):
        super().__init__()
        if mode not in ("prototype", "set"):
            raise ValueError(f"anchors mode must be prototype or set, got {mode!r}")
        if mode == "set" and (init.dim() != 3 or mask is None):
            raise ValueError("set anchors need init [C, M, D] and a mask [C, M]")
        self.mode = mode
        self.tau_anchor = float(tau_anchor)
        self.weight = nn.Parameter(init.detach().clone().float())
        self.register_buffer("mask", mask.clone() if mask is not None else torch.ones(init.shape[0], 1, dtype=torch.bool))

    @property
    def num_classes(self) -> int:
        return self.weight.shape[0]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Alignment scores [B, C] of normalised features z [B, D]."""
        A = F.normalize(self.weight, dim=-1).to(z.dtype)
        if self.mode == "prototype":
            return z @ A.t()
        return set_score(z, A, self.mask, self.tau_anchor)
