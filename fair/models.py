"""open_clip loading (pretrained tag or local checkpoint), freezing for adaptation, device choice."""
from __future__ import annotations

import difflib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from torch import nn

from fair.config import ModelConfig
from fair.errors import FairError
from fair.io import sha256_file

log = logging.getLogger(__name__)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
_registered = False


def register_builtin_configs() -> None:
    """Make fair's own open_clip configs (tiny test models, the offline stand-in) known to open_clip."""
    global _registered
    if _registered:
        return
    open_clip.add_model_config(Path(__file__).parent / "model_configs")
    try:
        from fair.standin import register_standin_configs
        register_standin_configs()
    except ImportError:  # the stand-in needs `transformers`; everything else works without it
        pass
    _registered = True


def resolve_device(spec: str) -> torch.device:
    """`auto` -> cuda when available (the local rank's GPU under torch.distributed), else cpu."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise FairError(f"config key 'model.device' {spec!r} is not a device; use auto, cpu or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FairError(f"model.device={spec} but no CUDA GPU is visible; use model.device=auto or cpu")
    return dev


def is_checkpoint_path(pretrained: str) -> bool:
    """A local file rather than an open_clip pretrained tag."""
    return os.sep in pretrained or pretrained.endswith(_CHECKPOINT_SUFFIXES) or pretrained.startswith("~")


def weights_id(cfg: ModelConfig) -> str:
    """A string that changes whenever the weights do: the tag, or the checkpoint's content hash."""
    p = cfg.pretrained
    if p and is_checkpoint_path(p):
        return f"{cfg.name}@sha256:{sha256_file(Path(p).expanduser())}"
    return f"{cfg.name}@{p or 'random'}"


def _check_name_and_weights(cfg: ModelConfig) -> None:
    models = open_clip.list_models()
    if cfg.name not in models:
        close = difflib.get_close_matches(cfg.name, models, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see open_clip.list_models()"
        raise FairError(f"unknown model name {cfg.name!r} (config key model.name){hint}")
    p = cfg.pretrained
    if not p or p in ("none", "random"):
        return
    if is_checkpoint_path(p):
        if not Path(p).expanduser().is_file():
            raise FairError(f"checkpoint {p!r} (model.pretrained) does not exist; pass an existing .pt or "
                            f".safetensors file or an open_clip tag")
        return
    tags = open_clip.list_pretrained_tags_by_model(cfg.name)
    if p not in tags:
        raise FairError(f"{p!r} is not a pretrained tag of {cfg.name} (model.pretrained); known tags: "
                        f"{', '.join(tags) or 'none'}; or pass a local checkpoint path")


def resolve_pretrained(cfg: ModelConfig, cache_root: str) -> ModelConfig:
    """`pretrained: standin` (or `standin-small`) -> the offline stand-in's checkpoint, built on first use.

    The architecture (model.name) says which stand-in: fair-standin-minilm[-small] for the shifted target,
    fair-standin-minilm-scenes[-small] for the scenes target."""
    if cfg.pretrained not in ("standin", "standin-small"):
        return cfg
    from dataclasses import replace
    from fair.standin import build_standin, size_of_model
    try:
        size = size_of_model(cfg.name)
    except ValueError as e:
        raise FairError(f"model.pretrained={cfg.pretrained} needs a stand-in architecture (model.name): {e}") from None
    return replace(cfg, pretrained=str(build_standin(Path(cache_root).expanduser(), size=size)))


def load_clip(cfg: ModelConfig, device: torch.device):
    """(model, tokenizer, preprocess_cfg) for an open_clip model with a tag, a checkpoint, or random init.

    Weights always load in fp32: autocast (fair.precision) handles reduced precision.
    """
    register_builtin_configs()
    _check_name_and_weights(cfg)
    p = cfg.pretrained
    pretrained = None if (not p or p in ("none", "random")) else str(Path(p).expanduser()) \
        if is_checkpoint_path(p) else p
    if pretrained is None:
        log.warning("model.pretrained is empty: %s starts from random weights (tests and speed checks only)",
                    cfg.name)
    try:
        model = open_clip.create_model(cfg.name, pretrained=pretrained, precision="fp32", device=device,
                                       cache_dir=cfg.cache_dir)
    except RuntimeError as e:
        msg = str(e)
        if "state_dict" in msg or "size mismatch" in msg or "Missing key" in msg:
            first = next((ln.strip() for ln in msg.splitlines()[1:] if ln.strip()), msg.splitlines()[0])
            raise FairError(f"checkpoint {p!r} does not match architecture {cfg.name} ({first[:160]}); "
                            f"set model.name to the architecture it was trained with") from None
        raise FairError(f"could not load {cfg.name} with weights {p!r}: {msg.splitlines()[0][:200]}") from None
    except (OSError, ValueError) as e:
        where = "download them once with network access, or pass a local checkpoint path" \
            if not is_checkpoint_path(p or "") else "check that the file is a complete checkpoint"
        raise FairError(f"could not load weights {p!r} for {cfg.name} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]}); {where}") from None
    tokenizer = open_clip.get_tokenizer(cfg.name)
    return model, tokenizer, open_clip.get_model_preprocess_cfg(model)


_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)


def trainable_visual_parameters(visual: nn.Module, trainable: str) -> list[nn.Parameter]:
    """Freeze the image tower except its normalisation layers (and the projection for 'norm+proj')."""
    for prm in visual.parameters():
        prm.requires_grad_(False)
    params = []
    for m in visual.modules():
        if isinstance(m, _NORMS):
            for prm in m.parameters(recurse=False):
                prm.requires_grad_(True)
                params.append(prm)
    if trainable == "norm+proj" and isinstance(getattr(visual, "proj", None), nn.Parameter):
        visual.proj.requires_grad_(True)
        params.append(visual.proj)
    if not params:
        raise FairError(f"{type(visual).__name__} has no normalisation layers to adapt; "
                        f"use a ViT backbone or train.trainable=norm+proj")
    return params


@dataclass
class ModelInfo:
    """What a run records about the backbone."""
    name: str
    weights: str
    image_size: int
    mean: tuple
    std: tuple
    logit_scale: float

