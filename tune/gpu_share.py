"""Trials that share a GPU (`resources.per_worker.GPU` < 1): each caps its CUDA memory to its share, and an
out-of-memory error becomes a failed trial that says so instead of a crash that takes its neighbours along.

Without a cap, every process's caching allocator grows until the GPU is full: one trial with many crops
then runs the trials beside it out of memory, and they fail for a configuration that is not theirs. With
`torch.cuda.set_per_process_memory_fraction` the allocator of a trial that outgrows its share raises
`torch.cuda.OutOfMemoryError` in that trial, at its cap, while its neighbours keep their memory.

The cap is the share of the GPU's memory less CONTEXT_HEADROOM: the allocator's limit counts only the
tensors it manages, not the CUDA context (about 0.5 GiB per process with lazy module loading) nor the
libraries' own buffers (NCCL, cuDNN/cuBLAS handles), which every process sharing the GPU pays on top. Four
trials at 0.25 capped at exactly a quarter each would overcommit the GPU by four contexts.

No Ray here: the trial code (tune.trainable) calls it, and bench/gpu_share.py runs it on a bare GPU machine.
"""
from __future__ import annotations

import gc
import logging
import re
import sys
import traceback
from dataclasses import dataclass
from typing import Callable, Optional

from fair.errors import FairError

log = logging.getLogger("tune.gpu_share")
GiB = 2**30
CONTEXT_HEADROOM = 1 * GiB     # per process, outside the allocator's cap (see the module docstring)


class GpuOutOfMemoryError(FairError):
    """A trial ran out of CUDA memory (within its cap on a shared GPU); the message says which settings
    to lower. The class name ends in Error so that tune.failures.error_line picks its line."""


@dataclass(frozen=True)
class MemoryCap:
    """A process's CUDA memory cap: `share` of a GPU of `total_bytes`, less the context headroom."""
    share: float
    total_bytes: int
    cap_bytes: int

    @property
    def fraction(self) -> float:
        """What torch.cuda.set_per_process_memory_fraction takes: the cap over the GPU's total memory."""
        return self.cap_bytes / self.total_bytes

    def describe(self) -> str:
        return f"cap {self.cap_bytes / GiB:.2f} GiB = share {self.share:g} of {self.total_bytes / GiB:.2f} GiB"

    def as_dict(self) -> dict:
        """The record's provenance.gpu_memory_cap."""
        return {"share": self.share, "cap_gib": round(self.cap_bytes / GiB, 3),
                "total_gib": round(self.total_bytes / GiB, 3), "fraction": round(self.fraction, 6)}


def memory_cap(share: float, total_bytes: int, headroom: int = CONTEXT_HEADROOM) -> Optional[MemoryCap]:
    """The cap of a process holding `share` of a GPU with `total_bytes`; None for a whole GPU (or none)."""
    if not share or share >= 1:
        return None
    cap = int(share * total_bytes) - headroom
    if cap <= 0:
        raise FairError(f"resources.per_worker.GPU={share:g} leaves {share * total_bytes / GiB:.2f} GiB of the "
                        f"{total_bytes / GiB:.2f} GiB GPU, not more than the {headroom / GiB:g} GiB each process "
                        f"needs for its CUDA context; raise the share")
    return MemoryCap(float(share), int(total_bytes), cap)


def apply_memory_cap(share: float, device: str) -> Optional[MemoryCap]:
    """Cap this process's CUDA memory on `device` (cuda, cuda:N) to its `share`; None (nothing done) on
    the CPU or with a whole GPU. Call it before the model is built."""
    if not str(device).startswith("cuda") or not share or share >= 1:
        return None        # decided without importing torch: a simulated trial (bench.scale) never does
    import torch
    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    cap = memory_cap(share, torch.cuda.get_device_properties(index).total_memory)
    torch.cuda.set_per_process_memory_fraction(cap.fraction, index)
    log.info("CUDA memory of cuda:%d capped: %s", index, cap.describe())
    return cap


def memory_settings(cfg) -> str:
    """The settings of a FairConfig that decide its memory use, as `key=value, ...`."""
    from fair.models import native_image_size
    crops = f", local.num_crops={cfg.local.num_crops}" if cfg.local.source == "crops" else ""
    return (f"model.name={cfg.model.name} ({native_image_size(cfg.model.name)} px), "
            f"model.precision={cfg.model.precision}, train.batch_size={cfg.train.batch_size}, "
            f"local.source={cfg.local.source}{crops}, eval.batch_size={cfg.eval.batch_size}, "
            f"eval.local_views={cfg.eval.local_views}")


def oom_message(cap: Optional[MemoryCap], cfg, torch_message: str = "") -> str:
    """The one line a CUDA out-of-memory trial fails with: its cap, its memory settings, what to change."""
    where = cap.describe() if cap else "no cap: the process had the whole GPU"
    tried = re.search(r"[Tt]ried to allocate ([\d.]+ \w+)", torch_message)
    if tried:
        where += f"; tried to allocate {tried.group(1)}"
    return (f"CUDA out of memory ({where}) with {memory_settings(cfg)}: lower train.batch_size or "
            f"local.num_crops (or use local.source=tokens), or raise resources.per_worker.GPU")


def out_of_memory_guarded(run: Callable[[], dict], cap: Optional[MemoryCap], cfg) -> dict:
    """`run()` (the adaptation of FairConfig `cfg`), with a torch.cuda.OutOfMemoryError from anywhere inside
    it turned into a GpuOutOfMemoryError (oom_message) once the memory it held is freed, so that the process
    exits cleanly and its failed record says why."""
    try:
        return run()
    except Exception as e:
        torch = sys.modules.get("torch")     # a torch error exists only if run() imported torch
        if torch is None or not isinstance(e, torch.cuda.OutOfMemoryError):
            raise
        # The traceback's frames hold the model, optimizer and activations: clear them, and raise the new
        # error outside this block so that it does not chain (and keep alive) the old one.
        traceback.clear_frames(e.__traceback__)
        torch_message = str(e)
    free_cuda_memory()
    raise GpuOutOfMemoryError(oom_message(cap, cfg, torch_message))


def free_cuda_memory() -> None:
    """Give what this process's allocator caches back to the GPU (after its tensors are unreachable)."""
    import torch
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
