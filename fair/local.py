"""Localized image features (spec §3): random crops, or MaskCLIP value tokens, pooled into f_loc.

Both sources return, for a batch of normalised view tensors, the global feature f(x) [B, D] and the
local features [B, L, D] (all L2-normalised), from batched tensor ops on the device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from fair.errors import FairError
from fair.precision import full_precision


def crop_boxes(batch: int, k: int, height: int, width: int, crop_min: float, crop_max: float,
               generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """K random square boxes per image, side ~ U(crop_min, crop_max) * min(H, W): [B*K, 5] for roi_align."""
    side = torch.empty(batch, k).uniform_(crop_min, crop_max, generator=generator) * min(height, width)
    x0 = torch.rand(batch, k, generator=generator) * (width - side)
    y0 = torch.rand(batch, k, generator=generator) * (height - side)
    idx = torch.arange(batch, dtype=torch.float32).unsqueeze(1).expand(batch, k)
    boxes = torch.stack([idx, x0, y0, x0 + side, y0 + side], dim=-1).reshape(-1, 5)
    return boxes.to(device) if device is not None else boxes


def random_crops(images: torch.Tensor, k: int, crop_min: float, crop_max: float,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, C, H, W] -> [B*K, C, H, W]: K crops per image, each resized back to the input size (bilinear).

    One sample per output pixel is exact because a crop is never larger than the image (upsampling).
    """
    B, _, H, W = images.shape
    boxes = crop_boxes(B, k, H, W, crop_min, crop_max, generator, images.device).to(images.dtype)
    return roi_align(images, boxes, output_size=(H, W), spatial_scale=1.0, sampling_ratio=1, aligned=True)


def encode(visual: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """L2-normalised global image features [B, D]."""
    return F.normalize(visual(images).float(), dim=-1)


def crop_features(visual: nn.Module, images: torch.Tensor, k: int, crop_min: float, crop_max: float,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Global features [B, D] and K crop features [B, K, D] in one batched forward pass."""
    B = images.shape[0]
    crops = random_crops(images, k, crop_min, crop_max, generator)
    feats = encode(visual, torch.cat([images, crops]))
    return feats[:B], feats[B:].view(B, k, -1)


def token_features(visual: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Global features [B, D] and one local feature per patch [B, P, D] from the same forward pass.

    Plain last-layer patch tokens align poorly with text; MaskCLIP's fix takes the last block's attention
    value vectors (through the attention output projection, skipping the residual and MLP), then the
    final LayerNorm and projection.
    """
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is None or getattr(visual, "attn_pool", None) is not None:
        raise FairError(f"local.source=tokens needs a plain open_clip ViT image tower, not "
                        f"{type(visual).__name__}; use local.source=crops")
    last = blocks[-1]
    captured = {}

    def grab(module, args, kwargs):
        captured["x"] = args[0] if args else kwargs["q_x"]

    handle = last.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        glob = visual(images)
    finally:
        handle.remove()
    x = captured["x"]
    if not getattr(visual.transformer, "batch_first", True):
        x = x.transpose(0, 1)
    attn = last.attn
    D = x.shape[-1]
    v = F.linear(last.ln_1(x), attn.in_proj_weight[2 * D:], None if attn.in_proj_bias is None else attn.in_proj_bias[2 * D:])
    v = last.ls_1(attn.out_proj(v))
    n_prefix = 1 if getattr(visual, "class_embedding", None) is not None else 0
    tokens = visual.ln_post(v[:, n_prefix:])
    if visual.proj is not None:
        tokens = tokens @ visual.proj
    return F.normalize(glob.float(), dim=-1), F.normalize(tokens.float(), dim=-1)


def local_features(visual: nn.Module, images: torch.Tensor, source: str, k: int, crop_min: float,
                   crop_max: float, generator: torch.Generator | None = None):
    """Dispatch on `local.source`: (global [B, D], locals [B, L, D])."""
    if source == "crops":
        return crop_features(visual, images, k, crop_min, crop_max, generator)
    if source == "tokens":
        return token_features(visual, images)
    raise ValueError(f"unknown local source {source!r}")


@full_precision
def pool_locals(f_global: torch.Tensor, f_locals: torch.Tensor, top_k: int, tau_local: float,
                w_select: torch.Tensor | None = None) -> torch.Tensor:
    """f_loc = normalize(sum_i a_i f_i) over the top_k most relevant locals, a = softmax(tau * relevance);
    in fp32 (its softmax weights, like the scores, must not round).

    Relevance is cos(f_i, f(x)) (spec §3, as WCA: the locals most like the whole image), or with `w_select`
    [C, D] (`local.select: anchors`) max_c cos(f_i, w_select[c]): the locals that best match some class's
    prior. On a small object in clutter the locals most like the whole image are background (docs/standin.md)."""
    if w_select is None:
        rel = torch.einsum("bld,bd->bl", f_locals, f_global)
    else:
        rel = torch.einsum("bld,cd->blc", f_locals, w_select).amax(-1)
    k = min(top_k, f_locals.shape[1])
    top, idx = rel.topk(k, dim=1)
    a = torch.softmax(tau_local * top, dim=1)
    chosen = torch.gather(f_locals, 1, idx.unsqueeze(-1).expand(-1, -1, f_locals.shape[-1]))
    return F.normalize((a.unsqueeze(-1) * chosen).sum(1), dim=-1)


def mix(f_global: torch.Tensor, f_loc: torch.Tensor, beta: float) -> torch.Tensor:
    """f_mix = normalize(beta * f + (1 - beta) * f_loc)."""
    return F.normalize(beta * f_global + (1 - beta) * f_loc, dim=-1)
