"""The one precision helper: autocast contexts, the gradient scaler, and the fp32 guard of the formulas.

Trainable parameters stay fp32 (they are few: LayerNorms and anchors); the encoders' forward runs in the
autocast dtype. fp16 needs a gradient scaler on CUDA; bf16 does not. What the method computes from the
encoders' features (scores, softmaxes, mixing, weights, the loss) runs in fp32 whatever the autocast
(`full_precision`): at CLIP's logit scale of 100 one bf16 step near cos 0.3 (0.002) is 0.2 logits, enough
to flip near-tied pseudo-labels or tie them exactly (a margin weight of 0).
"""
from __future__ import annotations

import contextlib
import functools

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: str, device: torch.device):
    """An autocast context for `precision` on `device` (a no-op context for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler that is enabled only for fp16 on CUDA."""
    return torch.amp.GradScaler(device.type, enabled=(precision == "fp16" and device.type == "cuda"))


def full_precision(fn):
    """Decorator: `fn` runs in fp32 whatever the autocast around it (autocast off on the device of its tensor
    arguments, their floating-point ones cast to float32; gradients flow through the cast). In fp32 runs
    it changes nothing."""
    @functools.wraps(fn)
    def in_fp32(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        device_type = tensors[0].device.type if tensors else "cpu"
        args = tuple(_fp32(a) for a in args)
        kwargs = {k: _fp32(v) for k, v in kwargs.items()}
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*args, **kwargs)
    return in_fp32


def _fp32(x):
    return x.float() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
