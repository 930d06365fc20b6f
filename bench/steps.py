"""Step time of FAIR's local-feature sources, measured side by side in one run: `crops` vs `tokens`.

    python -m bench.steps --threads 1              # tiny model, CPU
    python -m bench.steps --model ViT-B-32 --batch 64 --device cuda

Prints per-step milliseconds (median of interleaved repeats) and the ratio crops/tokens. Random weights
are fine for speed; nothing is downloaded.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch


def build(model_name: str, source: str, batch: int, device: torch.device, precision: str, num_classes: int = 10):
    """A Student, heads and optimizer for one FAIR train_step on random data."""
    import open_clip
    import torch.nn.functional as F

    from fair import engine
    from fair.anchors import LearnableAnchors
    from fair.config import from_dict
    from fair.models import register_builtin_configs, trainable_visual_parameters
    from fair.precision import grad_scaler
    register_builtin_configs()
    cfg = from_dict({"model": {"name": model_name, "precision": precision}, "local": {"source": source},
                     "train": {"fair_momentum": 0.0}})
    clip = open_clip.create_model(model_name, device=device)
    size = open_clip.get_model_preprocess_cfg(clip)["size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    D = clip.text_projection.shape[1] if getattr(clip, "text_projection", None) is not None else clip.visual.output_dim
    w = F.normalize(torch.randn(num_classes, D, device=device), dim=-1)
    heads = engine.Heads(w, w, w, clip.logit_scale.exp().item(), use_locals=True)
    anchors = LearnableAnchors("prototype", w.cpu())
    params = trainable_visual_parameters(clip.visual, "norm")
    student = engine.Student(clip.visual, anchors).to(device)
    opt = torch.optim.AdamW([{"params": params}, {"params": list(anchors.parameters())}], lr=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    x = torch.randn(batch, 3, size, size, device=device)
    gen = torch.Generator().manual_seed(0)

    tr = engine.Training(cfg, student, heads, opt, sched, grad_scaler(precision, device), device, total_steps=1)

    def step():
        engine.train_step(tr, x, x, 0.5, gen)
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="fair-tiny-vit")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=5, help="steps per timed repeat")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--threads", type=int, help="torch CPU threads (1 avoids thread thrashing on a busy 2-core box)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    steps = {s: build(a.model, s, a.batch, device, a.precision) for s in ("crops", "tokens")}
    times = {s: [] for s in steps}
    for fn in steps.values():   # warm-up
        fn()
    for _ in range(a.repeats):   # interleaved, so machine noise hits both alike
        for s, fn in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(a.steps):
                fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[s].append((time.perf_counter() - t) / a.steps * 1000)
    med = {s: statistics.median(v) for s, v in times.items()}
    print(f"model {a.model}, batch {a.batch}, {a.device}, {a.precision}, K=8 crops (default)")
    print(f"{'source':8s} {'ms/step':>9s} {'img/s':>8s}")
    for s, m in med.items():
        print(f"{s:8s} {m:9.1f} {a.batch / m * 1000:8.0f}")
    print(f"ratio crops/tokens: {med['crops'] / med['tokens']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
