"""Training throughput of the reference-style data path against ours, side by side in one process.

    python -m bench.throughput --quick           # about a minute on a laptop CPU (tiny model)
    python -m bench.throughput                   # longer CPU run
    python -m bench.throughput --gpu-defaults    # ViT-B-32 (random weights) at 224 px, 2000 JPEGs, bf16

Both styles run the same model, data and FAIR step (fair.engine.train_one_epoch), for `crops` and `tokens`:

* reference: PIL decode + torchvision weak/strong transforms per image every epoch in DataLoader
  workers, fp32, and for `crops` the K local crops cut per image with PIL (crop + bicubic resize), as
  research code does;
* ours: the decoded cache (memory-mapped uint8, built once - its build time is reported apart), views and
  K crops made in batches on the device (fair.data.device_views), bf16 autocast on a GPU that has it.

Epochs are interleaved (ref-crops, ours-crops, ref-tokens, ours-tokens, repeat) so machine noise hits
all alike; the table gives images/s of the median epoch, the median and the fastest epoch (on a shared
machine the fastest is the better estimate of what the code can do). On a GPU it also reports utilisation (sampled in a thread)
and model FLOP utilisation against a nominal peak (FLOPs counted with FlopCounterMode over one step).
Random weights are fine for speed; nothing is downloaded. The data is a synthetic JPEG folder written to
a temporary directory (or Fashion-MNIST with --data fashion-mnist).
"""
from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

# Nominal dense bf16 tensor-core peaks (TFLOP/s, no sparsity), by a substring of the device name.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10": 125.0, "RTX 4090": 165.0, "V100": 125.0}


# ------------------------------------------------------------------------------------------------ data


def synthetic_jpegs(root: Path, n: int, width: int, height: int, classes: int = 10, seed: int = 0):
    """n JPEGs (smooth colour fields plus noise) under root/<class>/; returns an ImageSet."""
    from PIL import Image

    from fair.data.images import ImageSet
    rng = np.random.default_rng(seed)
    refs, labels = [], []
    for i in range(n):
        c = i % classes
        d = root / f"c{c}"
        d.mkdir(parents=True, exist_ok=True)
        low = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BILINEAR)
        img = np.clip(np.asarray(low, np.int16) + rng.integers(-20, 20, (height, width, 3)), 0, 255).astype(np.uint8)
        p = d / f"{i:05d}.jpg"
        Image.fromarray(img).save(p, quality=90)
        refs.append(p)
        labels.append(c)
    return ImageSet(refs, np.array(labels, dtype=np.int64))


def fashion_mnist(n: int):
    from fair.data import fashion_mnist
    from fair.data.images import ImageSet
    x, y = fashion_mnist.read_split("train")
    return ImageSet(list(range(n)), y[:n], x[:n])


# --------------------------------------------------------------------------------- reference style


class ReferenceDataset(Dataset):
    """Research-code style items: PIL weak and strong views, and K PIL crops of the image (each cropped,
    bicubic-resized and normalised on its own)."""

    def __init__(self, images, views: dict, size: int, mean, std, k: int, crop_min: float, crop_max: float):
        from torchvision.transforms import v2 as T
        self.images, self.views, self.size, self.k = images, views, size, k
        self.crop_min, self.crop_max = crop_min, crop_max
        self.finish = T.Compose([T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image
        img = self.images.load(i)
        out = [self.views["weak"](img), self.views["strong"](img)]
        if self.k:
            w, h = img.size
            crops = []
            for _ in range(self.k):
                side = random.uniform(self.crop_min, self.crop_max) * min(w, h)
                x0, y0 = random.uniform(0, w - side), random.uniform(0, h - side)
                crop = img.crop((int(x0), int(y0), int(x0 + side), int(y0 + side)))
                crops.append(self.finish(crop.resize((self.size, self.size), Image.BICUBIC)))
            out.append(torch.stack(crops))
        return (*out, int(self.images.labels[i]), i)


class ReferencePipeline:
    """The fair.data.views pipeline interface over ReferenceDataset (crops come with the batch)."""
    name = "reference"

    def __init__(self, views: dict, size: int, mean, std, k: int, crop_min: float, crop_max: float, workers: int):
        self.args = (views, size, mean, std, k, crop_min, crop_max)
        self.workers = workers
        self.k = k

    def loader_workers(self, num_workers: int) -> int:
        return self.workers

    def dataset(self, images, train: bool):
        return ReferenceDataset(images, *self.args)

    @staticmethod
    def generator(seed: int, device):
        return torch.Generator().manual_seed(seed)

    def train_batch(self, batch, device, generator, num_crops, crop_min, crop_max):
        if self.k:
            weak, strong, crops, labels, _ = batch
            crops = crops.to(device, non_blocking=True)
        else:
            (weak, strong, labels, _), crops = batch, None
        return weak.to(device, non_blocking=True), strong.to(device, non_blocking=True), labels.to(device), crops


# ----------------------------------------------------------------------------------------- helpers


class UtilSampler:
    """GPU utilisation samples (%, via NVML or nvidia-smi) in a background thread, with timestamps."""

    def __init__(self, device: torch.device, every_s: float = 0.1):
        self.device, self.every_s = device, every_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:  # noqa: BLE001 - no pynvml: ask nvidia-smi
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", str(self.device.index or 0)], capture_output=True, text=True, timeout=5)
                return float(out.stdout.strip().splitlines()[0])
            except Exception:  # noqa: BLE001
                return None

    def _run(self):
        while not self._stop.is_set():
            v = self._read()
            if v is not None:
                self.samples.append((time.perf_counter(), v))
            self._stop.wait(self.every_s)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(timeout=10)

    def mean_between(self, windows: list[tuple[float, float]]) -> float | None:
        vals = [v for t, v in self.samples if any(a <= t <= b for a, b in windows)]
        return statistics.mean(vals) if vals else None


def host_syncs(run) -> int:
    """How many synchronising CUDA calls `run()` makes (torch's sync debug mode warns on each one)."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def peak_flops(device: torch.device, given_tflops: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s, label): the one passed, else the nominal table's entry for this GPU."""
    if given_tflops:
        return given_tflops * 1e12, f"{given_tflops:.0f} TFLOP/s (given)"
    if device.type != "cuda":
        return None, "n/a on CPU"
    name = torch.cuda.get_device_name(device)
    for key, tf in PEAK_TFLOPS.items():
        if key in name:
            return tf * 1e12, f"{tf:.0f} TFLOP/s nominal dense bf16 ({name})"
    return None, f"unknown peak for {name}; pass --peak-tflops"


# -------------------------------------------------------------------------------------------- main


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a minute-long version")
    p.add_argument("--gpu-defaults", action="store_true", help="ViT-B-32 at 224 px, 2000 JPEGs 400x300, bf16")
    p.add_argument("--model", default=None)
    p.add_argument("--data", choices=["synthetic", "fashion-mnist"], default="synthetic")
    p.add_argument("--images", type=int, default=None, help="images per epoch")
    p.add_argument("--width", type=int, default=400)
    p.add_argument("--height", type=int, default=300)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--crops", type=int, default=8, help="K local crops (crops source)")
    p.add_argument("--repeats", type=int, default=None, help="timed epochs per variant")
    p.add_argument("--workers", type=int, default=None, help="reference DataLoader workers")
    p.add_argument("--device", default=None)
    p.add_argument("--precision", default=None, help="ours: bf16 on a GPU that has it, else fp32")
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the image tower (ours, CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads of the main process "
                   "(1 is steadier on a shared, oversubscribed CPU)")
    p.add_argument("--sources", default="crops,tokens")
    p.add_argument("--workdir", default=None, help="where the JPEGs and the cache go (default: a temp dir)")
    a = p.parse_args(argv)
    gpu = a.gpu_defaults
    a.device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    a.model = a.model or ("ViT-B-32" if gpu else "fair-tiny-vit")
    a.images = a.images or (2000 if gpu else 256 if a.quick else 768)
    a.batch = a.batch or (128 if gpu else 32)
    a.repeats = a.repeats or (3 if gpu else 2 if a.quick else 3)
    a.workers = a.workers if a.workers is not None else min(16, os.cpu_count() or 1)
    if a.precision is None:
        a.precision = "bf16" if a.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return a


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING)
    a = parse(argv)
    import open_clip
    import torch.nn.functional as F

    from fair import engine
    from fair.anchors import LearnableAnchors
    from fair.config import from_dict
    from fair.data.device_views import DevicePipeline
    from fair.data.views import build_views
    from fair.models import register_builtin_configs, trainable_visual_parameters
    from fair.precision import grad_scaler

    register_builtin_configs()
    device = a.device
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    random.seed(0)
    work = Path(a.workdir) if a.workdir else Path(tempfile.mkdtemp(prefix="fair-bench-"))
    t = time.perf_counter()
    images = fashion_mnist(a.images) if a.data == "fashion-mnist" else \
        synthetic_jpegs(work / "jpegs", a.images, a.width, a.height)
    gen_s = time.perf_counter() - t

    clip = open_clip.create_model(a.model, pretrained=None, device=device)
    pp = open_clip.get_model_preprocess_cfg(clip)
    size = pp["size"][0] if isinstance(pp["size"], (tuple, list)) else pp["size"]
    C = 10
    D = clip.visual.output_dim
    w = F.normalize(torch.randn(C, D, device=device), dim=-1)
    heads = engine.Heads(w, w, w, clip.logit_scale.exp().item(), use_locals=True)
    anchors = LearnableAnchors("prototype", w.cpu())
    params = trainable_visual_parameters(clip.visual, "norm")
    student = engine.Student(clip.visual, anchors).to(device)
    del clip
    if a.compile and device.type == "cuda":
        student.visual.compile()
    opt = torch.optim.AdamW([{"params": params}, {"params": list(anchors.parameters())}], lr=1e-5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    crop_min, crop_max = 0.4, 0.8
    ref = ReferencePipeline(build_views(size, pp["mean"], pp["std"]), size, pp["mean"], pp["std"], a.crops,
                            crop_min, crop_max, a.workers)
    ref_tokens = ReferencePipeline(build_views(size, pp["mean"], pp["std"]), size, pp["mean"], pp["std"], 0,
                                   crop_min, crop_max, a.workers)
    ours = DevicePipeline(size, pp["mean"], pp["std"], work / "cache", progress=False)
    t = time.perf_counter()
    ours_set = ours.dataset(images, train=True)
    cache_s = time.perf_counter() - t

    variants = []
    for source in a.sources.split(","):
        for style, pipe, precision in (("reference", ref if source == "crops" else ref_tokens, "fp32"),
                                       ("ours", ours, a.precision)):
            cfg = from_dict({"model": {"name": a.model, "precision": precision},
                             "local": {"source": source, "num_crops": a.crops, "crop_min": crop_min,
                                       "crop_max": crop_max},
                             "train": {"batch_size": a.batch, "fair_momentum": 0.0}, "run": {"progress": False}})
            dataset = ours_set if pipe is ours else pipe.dataset(images, train=True)
            variants.append({"style": style, "source": source, "precision": precision, "cfg": cfg,
                             "pipe": pipe, "dataset": dataset, "times": [], "windows": []})

    def training(v):
        return engine.Training(v["cfg"], student, heads, opt, sched, grad_scaler(v["precision"], device), device,
                               total_steps=10_000)

    def epoch(v, seed: int, max_steps: int | None = None):
        cfg = v["cfg"]
        cfg.train.max_steps_per_epoch = max_steps
        loader = engine.make_loader(v["dataset"], a.batch, True, v["pipe"].loader_workers(0), seed, drop_last=True)
        return engine.train_one_epoch(training(v), loader, seed, v["pipe"], progress=False)

    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, model {a.model} (random weights) at {size} px, batch {a.batch}, "
          f"K={a.crops} crops, {len(images)} images"
          f"{'' if a.data != 'synthetic' else f' ({a.width}x{a.height} JPEG)'}, reference workers {a.workers}, "
          f"{a.repeats} timed epochs per variant, {torch.get_num_threads()} torch threads", flush=True)
    sides = "/".join(str(c.size) for c in ours_set.caches)
    print(f"one-time costs: synthetic data {gen_s:.1f} s, decoded caches (S={sides}) {cache_s:.1f} s", flush=True)
    for v in variants:                    # warm-up: allocator, kernels, worker start-up code paths
        epoch(v, 1, max_steps=2)
    sampler = UtilSampler(device).start() if device.type == "cuda" else None
    for r in range(a.repeats):
        for v in variants:
            t0 = time.perf_counter()
            row = epoch(v, 2 + r)
            v["times"].append(row["epoch_s"])
            v["windows"].append((t0, time.perf_counter()))
            print(f"  {v['style']:9s} {v['source']:6s} epoch {r + 1}: {row['epoch_s']:.2f} s", flush=True)
    if sampler:
        sampler.stop()

    peak, peak_label = peak_flops(device, a.peak_tflops)
    steps = len(images) // a.batch
    if device.type == "cuda":       # FLOPs of one step of each variant (matmuls and convolutions)
        from torch.utils.flop_counter import FlopCounterMode
        for v in variants:
            loader = engine.make_loader(v["dataset"], a.batch, True, v["pipe"].loader_workers(0), 0, drop_last=True)
            batch, _ = next(iter(loader))
            gen = v["pipe"].generator(0, device)
            k = engine.pipeline_crops(v["cfg"], True, a.crops)
            weak, strong, labels, crops = v["pipe"].train_batch(batch, device, gen, k, crop_min, crop_max)
            with FlopCounterMode(display=False) as fc:
                engine.train_step(training(v), weak, strong, 0.5, gen, crops)
            v["flops_per_step"] = fc.get_total_flops()

    print()
    head = f"{'style':10s} {'source':7s} {'prec':5s} {'img/s':>9s} {'s/epoch':>8s} {'best s':>7s}"
    if device.type == "cuda":
        head += f" {'GPU util %':>10s} {'TFLOP/s':>8s} {'MFU %':>6s}"
    print(head)
    for v in variants:
        med = statistics.median(v["times"])
        v["med"] = med
        line = (f"{v['style']:10s} {v['source']:7s} {v['precision']:5s} {steps * a.batch / med:9.1f} {med:8.2f} "
                f"{min(v['times']):7.2f}")
        if device.type == "cuda":
            util = sampler.mean_between(v["windows"]) if sampler else None
            achieved = v.get("flops_per_step", 0) * steps / med
            mfu = f"{100 * achieved / peak:6.1f}" if peak else f"{'-':>6s}"
            line += f" {util if util is not None else float('nan'):10.0f} {achieved / 1e12:8.1f} {mfu}"
        print(line)
    by = {(v["style"], v["source"]): v["med"] for v in variants}
    print()
    for source in a.sources.split(","):
        if ("reference", source) in by and ("ours", source) in by:
            print(f"speed-up ours/reference ({source}): {by[('reference', source)] / by[('ours', source)]:.2f}x")
    for style in ("reference", "ours"):
        if (style, "crops") in by and (style, "tokens") in by:
            print(f"speed-up tokens/crops ({style}): {by[(style, 'crops')] / by[(style, 'tokens')]:.2f}x")
    if device.type == "cuda":
        # Per-step host synchronisations: epochs of 2 and of 6 steps differ only by their last 4 steps, so
        # the difference / 4 leaves out what an epoch does once (the loader start, the metric copy at its end).
        print("host syncs per step (torch.cuda sync debug mode; 0 means the GPU never waits on the host):")
        extra = min(6, steps) - 2
        for v in variants:
            try:
                short, long_ = (host_syncs(lambda n=n: epoch(v, 0, max_steps=n)) for n in (2, 2 + extra))
                per_step = f"{(long_ - short) / extra:.1f}" if extra > 0 else "n/a (fewer than 3 steps)"
                print(f"  {v['style']:9s} {v['source']:6s} {per_step}  ({short} in a 2-step epoch)")
            except Exception as e:  # noqa: BLE001 - a diagnostic; the table above is already printed
                print(f"  {v['style']:9s} {v['source']:6s} not measured ({type(e).__name__}: {e})")
    if device.type == "cuda":
        print(f"MFU peak: {peak_label}; FLOPs counted by torch.utils.flop_counter over one step "
              f"(matmuls/convolutions: the views' resampling is not counted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
