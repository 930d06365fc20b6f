"""The one precision helper: autocast contexts and the gradient scaler, by config name.

Trainable parameters stay fp32 (they are few: LayerNorms and anchors); the forward runs in the autocast
dtype. fp16 needs a gradient scaler on CUDA; bf16 does not.
"""
from __future__ import annotations

import contextlib

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
