"""Built-in tables for sweep estimates: dataset sizes, per-image model costs, cloud instance prices.

Every number here is an ESTIMATE for planning (how many nodes, roughly how many hours and dollars), not a
measurement; `plan` says so in its output and prefers measured epoch times from earlier records.

- Dataset sizes: the unlabelled pool FAIR adapts on (CoOp's train+val split where the catalog reads
  CoOp's `split_zhou_*.json`, the official train split otherwise), the test split, and the class count.
- Model cost: milliseconds of one forward pass of one 224 px image at full use of one GPU (bf16/fp16,
  batch >= 64), from published CLIP inference throughputs scaled by FLOPs. A FAIR training image costs
  (4 + local.num_crops) forward-equivalents: the teacher's global view and crops without gradient (1 + K)
  and the student's strong view forward + backward (about 3). An evaluated image costs
  (1 + eval.local_views) forwards.
- Prices: approximate list prices in USD per hour (AWS us-east-1, GCP us-central1, Linux, 2026 list
  price pages); spot / pre-emptible prices vary by zone and hour, the values are typical.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class DatasetSize:
    pool: int          # unlabelled train images (before the labelled validation hold-out)
    test: int
    classes: int
    note: str = ""
    pool_per_class: int | None = None   # the pool kept per class after the hold-out (ImageNet: 50, spec)


DATASETS: dict[str, DatasetSize] = {
    "caltech101": DatasetSize(5777, 2465, 100, "CoOp train 4128 + val 1649"),
    "dtd": DatasetSize(3948, 1692, 47, "CoOp train 2820 + val 1128"),
    "eurosat": DatasetSize(18900, 8100, 10, "CoOp train 13500 + val 5400"),
    "fgvc_aircraft": DatasetSize(6667, 3333, 100, "official train 3334 + val 3333"),
    "flowers102": DatasetSize(5726, 2463, 102, "CoOp train 4093 + val 1633"),
    "food101": DatasetSize(70700, 30300, 101, "CoOp train 50500 + val 20200"),
    "oxford_pets": DatasetSize(3680, 3669, 37, "CoOp train 2944 + val 736"),
    "stanford_cars": DatasetSize(8144, 8041, 196, "CoOp train 6509 + val 1635"),
    "sun397": DatasetSize(19850, 19850, 397, "CoOp train 15880 + val 3970"),
    "ucf101": DatasetSize(9537, 3783, 101, "CoOp train 7639 + val 1898 (mid frames)"),
    "cub200": DatasetSize(5994, 5794, 200, "official train_test_split"),
    "birdsnap": DatasetSize(40000, 2443, 500, "about 40k of the 49.8k URLs still download"),
    "resisc45": DatasetSize(25200, 6300, 45, "80/20 split of 31.5k by a fixed seed"),
    "imagenet": DatasetSize(1281167, 50000, 1000, "official train / val; pool 50 per class", 50),
    "fashion_mnist": DatasetSize(60000, 10000, 10, "offline stand-in demo"),
    "fashion_mnist_shifted": DatasetSize(60000, 10000, 10, "offline stand-in demo"),
}
UNKNOWN_DATASET = DatasetSize(10000, 2000, 100, "unknown dataset: size assumed")

# Forward milliseconds per 224 px image at full use of one GPU. ViT-B-32 on an A10G is the anchor
# (~2900 img/s inference); other backbones scale by forward GFLOPs (RN50 4.1, ViT-B-32 4.4, RN101 7.8,
# ViT-B-16 17.6, ViT-L-14 81, ViT-L-14-336 191), other GPUs by a measured-throughput factor.
_ANCHOR_MS = 0.35
_GFLOPS = {"RN50": 4.1, "ViT-B-32": 4.4, "RN101": 7.8, "ViT-B-16": 17.6, "ViT-L-14": 81.0,
           "ViT-L-14-336": 191.0, "fair-tiny-vit": 0.05}
GPU_FACTOR = {"H100": 0.22, "A100": 0.4, "L4": 1.1, "A10G": 1.0, "T4": 2.5}
DEFAULT_GPU = "A10G"


def forward_ms(backbone: str, gpu: str) -> Optional[float]:
    """Estimated forward ms per image, or None for an unknown backbone / GPU."""
    key = next((k for k in _GFLOPS if k.lower() == backbone.lower().replace("/", "-")), None)
    if key is None or gpu not in GPU_FACTOR:
        return None
    return _ANCHOR_MS * _GFLOPS[key] / _GFLOPS["ViT-B-32"] * GPU_FACTOR[gpu]


@dataclass(frozen=True)
class Instance:
    cpus: int
    gpus: int
    accelerator: Optional[str]
    on_demand: float            # USD per hour
    spot: float                 # typical USD per hour (varies)
    memory_gib: int = 0


INSTANCES: dict[str, Instance] = {
    # AWS (us-east-1)
    "m5.xlarge": Instance(4, 0, None, 0.192, 0.07, 16),
    "g5.xlarge": Instance(4, 1, "A10G", 1.006, 0.40, 16),
    "g5.2xlarge": Instance(8, 1, "A10G", 1.212, 0.48, 32),
    "g5.4xlarge": Instance(16, 1, "A10G", 1.624, 0.62, 64),
    "g5.12xlarge": Instance(48, 4, "A10G", 5.672, 2.10, 192),
    "g6.4xlarge": Instance(16, 1, "L4", 1.323, 0.52, 64),
    "p4d.24xlarge": Instance(96, 8, "A100", 32.77, 12.0, 1152),
    # GCP (us-central1)
    "n2-standard-4": Instance(4, 0, None, 0.194, 0.05, 16),
    "g2-standard-16": Instance(16, 1, "L4", 1.147, 0.41, 64),
    "g2-standard-48": Instance(48, 4, "L4", 4.002, 1.44, 192),
    "a2-highgpu-4g": Instance(48, 4, "A100", 14.69, 4.41, 340),
    "n1-standard-16+t4": Instance(16, 1, "T4", 1.110, 0.36, 60),
}


def instance(name: str) -> Optional[Instance]:
    return INSTANCES.get(name)
