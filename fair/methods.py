"""The one dispatch by method: which training method steps a run (fair.engine.TrainingMethod), and the
class head the student starts from.

fair and selftrain step with fair.engine.train_step (None here); dpa with fair.dpa.Dpa, tent with
fair.tent.Tent. zeroshot and wca do not train (fair.config.TRAINING_METHODS).
"""
from __future__ import annotations

import torch

from fair.anchors import LearnableAnchors
from fair.config import FairConfig
from fair.dpa import Dpa
from fair.engine import TrainingMethod
from fair.tent import Tent


def uses_locals(cfg: FairConfig) -> bool:
    """Whether the method scores local features (fair, wca; zeroshot builds the same heads): selftrain, dpa
    and tent score the global feature only."""
    return cfg.method not in ("selftrain", "dpa", "tent")


def training_method(cfg: FairConfig, num_images: int, dim: int, device: torch.device) -> TrainingMethod | None:
    """The step and state of `cfg.method` for a train split of `num_images` (None: FAIR's train_step)."""
    if cfg.method == "dpa":
        return Dpa(cfg.dpa, num_images, dim, device)
    if cfg.method == "tent":
        return Tent(cfg.tent)
    return None


def global_head(cfg: FairConfig, class_emb: torch.Tensor, w_fix: torch.Tensor | None) -> LearnableAnchors:
    """The learnable class head of the methods that score global features only (selftrain, dpa, tent): one
    prototype per class from the templates' t_c, or for dpa.init=descriptions from W_fix."""
    if cfg.method == "dpa" and cfg.dpa.init == "descriptions":
        return LearnableAnchors("prototype", w_fix)
    return LearnableAnchors("prototype", class_emb)
