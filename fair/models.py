"""open_clip loading (pretrained tag, local checkpoint, your own architecture, hf-hub repository), the
image preprocessing the weights expect, freezing for adaptation, device choice."""
from __future__ import annotations

import copy
import difflib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.pretrained import download_pretrained_from_hf
from open_clip.transform import PreprocessCfg
from torch import nn

from fair.config import PREPROCESS_KEYS, ModelConfig
from fair.errors import FairError
from fair.io import sha256_file

log = logging.getLogger(__name__)
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".npz")
HF_HUB = "hf-hub:"
_registered = False
_own_architectures: set[str] = set()      # fair's own configs: trained here with open_clip's defaults
_user_configs: dict[str, Path] = {}       # model.config files registered in this process, by name


def register_builtin_configs() -> None:
    """Make fair's own open_clip configs (tiny test models, the offline stand-in) known to open_clip."""
    global _registered
    if _registered:
        return
    folder = Path(__file__).parent / "model_configs"
    open_clip.add_model_config(folder)
    _own_architectures.update(p.stem for p in folder.glob("*.json"))
    try:
        from fair.standin import register_standin_configs
        _own_architectures.update(register_standin_configs())   # every size, the scenes ones included
    except ImportError:  # the stand-in needs `transformers`; everything else works without it
        pass
    _registered = True


def register_config(cfg: ModelConfig) -> None:
    """`model.config: FILE.json`: make the architecture in FILE known to open_clip as model.name.

    A file that would replace an architecture open_clip already has under that name (a built-in, or
    another file in this process, e.g. an earlier sweep trial) is refused: it would change other runs.
    """
    if cfg.config is None:
        return
    path = Path(cfg.config).expanduser().resolve()
    key = "config key 'model.config'"
    if not path.is_file():
        raise FairError(f"{key}: {cfg.config} does not exist; pass an open_clip architecture .json file")
    try:
        arch = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FairError(f"{key}: {cfg.config} is not valid JSON ({e}); fix the file") from None
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(arch, dict) or k not in arch]
    if missing:
        raise FairError(f"{key}: {cfg.config} is not an open_clip architecture (no {', '.join(missing)}); "
                        f"start from a file in open_clip's model_configs folder")
    if open_clip.get_model_config(path.stem) == arch:
        return
    if path.stem in open_clip.list_models() and _user_configs.get(path.stem) != path:
        raise FairError(f"{key}: {cfg.config} would replace open_clip's architecture {path.stem!r}; rename the "
                        f"file (e.g. {path.stem}-ft.json) and set model.name to match")
    open_clip.add_model_config(path)      # re-adding a changed file of ours rescans it
    _user_configs[path.stem] = path


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
    """A string that changes whenever the weights do: the tag, the checkpoint's content hash, or the
    hf-hub repository's revision (the snapshot folder the cache resolved)."""
    p = cfg.pretrained
    if cfg.name.startswith(HF_HUB):
        return f"{cfg.name}@{_hub_file(cfg, 'open_clip_config.json').parent.name}"
    if p and is_checkpoint_path(p):
        return f"{cfg.name}@sha256:{sha256_file(Path(p).expanduser())}"
    return f"{cfg.name}@{p or 'random'}"


def _cache_dir(cfg: ModelConfig) -> str | None:
    """model.cache_dir with `~` expanded (open_clip and huggingface_hub take the path as it is)."""
    return str(Path(cfg.cache_dir).expanduser()) if cfg.cache_dir else None


def _hub_file(cfg: ModelConfig, filename: str) -> Path:
    """A file of an hf-hub repository, from the local Hugging Face cache (offline with HF_HUB_OFFLINE=1)."""
    repo = cfg.name[len(HF_HUB):]
    try:
        return Path(download_pretrained_from_hf(repo, filename=filename, cache_dir=_cache_dir(cfg)))
    except (FileNotFoundError, RuntimeError) as e:
        where = cfg.cache_dir or "the default Hugging Face cache"
        last = (str(e).splitlines() or [type(e).__name__])[-1][-120:]
        raise FairError(f"model.name {cfg.name}: {filename} is not in {where} and cannot be downloaded ({last}); "
                        f"run `huggingface-cli download {repo}` once with network access, or set model.cache_dir "
                        f"to the cache that holds it") from None


def hub_config(cfg: ModelConfig) -> dict:
    """The open_clip_config.json of an hf-hub repository ({"model_cfg": ..., "preprocess_cfg": ...})."""
    path = _hub_file(cfg, "open_clip_config.json")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise FairError(f"model.name {cfg.name}: {path} is not valid JSON ({e}); download it again") from None
    if not isinstance(data, dict) or "model_cfg" not in data:
        raise FairError(f"model.name {cfg.name}: its open_clip_config.json has no model_cfg; "
                        f"it is not an open_clip repository")
    return data


def _check_name_and_weights(cfg: ModelConfig) -> None:
    if cfg.name.startswith(HF_HUB):
        if cfg.pretrained not in ("", "openai"):   # "openai": the default, left as it is
            raise FairError(f"model.pretrained={cfg.pretrained!r} does not apply to model.name={cfg.name}: its "
                            f"weights come from that repository; leave model.pretrained unset")
        hub_config(cfg)
        return
    models = open_clip.list_models()
    if cfg.name not in models:
        close = difflib.get_close_matches(cfg.name, models, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else \
            "; see open_clip.list_models(), or give your own architecture JSON in model.config"
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


def native_image_size(name: str) -> int | None:
    """The input side (px) of open_clip architecture `name`, from its config; None when unknown."""
    register_builtin_configs()
    size = ((open_clip.get_model_config(name) or {}).get("vision_cfg") or {}).get("image_size")
    return size if isinstance(size, int) else (size[0] if isinstance(size, (list, tuple)) and size else None)


def load_clip(cfg: ModelConfig, device: torch.device):
    """(model, tokenizer, preprocess) for an open_clip model with a tag, a checkpoint, an hf-hub repository
    or random init. `preprocess` is open_clip's dict (size, mean, std, interpolation, resize_mode, ...)
    plus "source": where each of PREPROCESS_KEYS came from (resolve_preprocess).

    Weights always load in fp32: autocast (fair.precision) handles reduced precision.
    """
    register_builtin_configs()
    register_config(cfg)
    _check_name_and_weights(cfg)
    p = cfg.pretrained
    hub = cfg.name.startswith(HF_HUB)
    pretrained = None if (hub or not p or p in ("none", "random")) else str(Path(p).expanduser()) \
        if is_checkpoint_path(p) else p
    if pretrained is None and not hub:
        log.warning("model.pretrained is empty: %s starts from random weights (tests and speed checks only)",
                    cfg.name)
    values, sources = resolve_preprocess(cfg)
    try:
        model = open_clip.create_model(cfg.name, pretrained=pretrained, precision="fp32", device=device,
                                       cache_dir=_cache_dir(cfg), force_preprocess_cfg=values)
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
    except (TypeError, KeyError, AttributeError, AssertionError) as e:   # the constructor refused the JSON
        what = f"config key 'model.config': {cfg.config}" if cfg.config else f"model.name {cfg.name}"
        raise FairError(f"{what}: open_clip cannot build this architecture ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160] if str(e) else 'no message'}); fix the architecture JSON "
                        f"(start from one in open_clip's model_configs)") from None
    tokenizer = open_clip.get_tokenizer(cfg.name, cache_dir=_cache_dir(cfg))
    pp = dict(open_clip.get_model_preprocess_cfg(model))
    pp["source"] = sources
    return model, tokenizer, pp


def _plain(value):
    """Lists and tuples as tuples of floats (pretrained configs mix both), other values as they are."""
    return tuple(float(x) for x in value) if isinstance(value, (list, tuple)) else value


def _weights_preprocess(cfg: ModelConfig) -> tuple[dict, str, str | None]:
    """(settings the weights were trained with, where they are from, why the others are unknown or None).

    A tag: its pretrained config. An hf-hub repository: its open_clip_config.json. A checkpoint file: what
    every pretrained tag of its architecture agrees on (open_clip itself would use CLIP's defaults).
    Random weights and fair's own architectures: open_clip's defaults, nothing to warn about.
    """
    p = cfg.pretrained
    if cfg.name.startswith(HF_HUB):
        given = hub_config(cfg).get("preprocess_cfg") or {}
        return ({k: _plain(given[k]) for k in PREPROCESS_KEYS if k in given},
                f"open_clip_config.json of {cfg.name}", "its open_clip_config.json does not give")
    if not p or p in ("none", "random") or cfg.name in _own_architectures:
        return {}, "", None
    if not is_checkpoint_path(p):
        tag = open_clip.get_pretrained_cfg(cfg.name, p)
        return {k: _plain(tag[k]) for k in PREPROCESS_KEYS if k in tag}, f"pretrained tag {p}", None
    tags = open_clip.list_pretrained_tags_by_model(cfg.name)
    seen = {k: {_plain(open_clip.get_pretrained_cfg(cfg.name, t).get(k)) for t in tags} for k in PREPROCESS_KEYS}
    agreed = {k: v.pop() for k, v in seen.items() if len(v) == 1 and None not in v}
    why = f"{cfg.name} has no pretrained config to take" if not tags else \
        f"the pretrained tags of {cfg.name} ({', '.join(tags)}) disagree on"
    return agreed, f"pretrained configs of {cfg.name} (all {len(tags)} tags)", why


def resolve_preprocess(cfg: ModelConfig) -> tuple[dict, dict]:
    """The image preprocessing of PREPROCESS_KEYS: ({key: value}, {key: where it came from}).

    model.<key> wins; then what the weights were trained with (_weights_preprocess); a key still unknown
    takes open_clip's default (CLIP's mean/std, bicubic, shortest), with a warning naming the assumption.
    """
    default = asdict(PreprocessCfg())
    known, origin, why = _weights_preprocess(cfg)
    values, sources, assumed = {}, {}, []
    for k in PREPROCESS_KEYS:
        if getattr(cfg, k) is not None:
            values[k], sources[k] = _plain(getattr(cfg, k)), f"model.{k}"
        elif k in known:
            values[k], sources[k] = known[k], origin
        else:
            values[k], sources[k] = _plain(default[k]), "open_clip default"
            if why:
                assumed.append(k)
    if assumed:
        weights = cfg.name if cfg.name.startswith(HF_HUB) else f"checkpoint {cfg.pretrained}"
        log.warning("%s: %s %s; assuming open_clip's default %s; set %s to what it was trained with",
                    weights, why, ", ".join(f"model.{k}" for k in assumed),
                    ", ".join(f"{k}={values[k]}" for k in assumed), ", ".join(f"model.{k}" for k in assumed))
    return values, sources


def preprocess_record(pp: dict) -> dict:
    """What a record's provenance says about the image preprocessing (load_clip's `preprocess`)."""
    return {"size": pp["size"], **{k: pp[k] for k in PREPROCESS_KEYS}, "source": pp.get("source", {})}


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


def frozen_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` that never changes: eval mode, no parameter requires gradient (pseudo.teacher=frozen)."""
    return copy.deepcopy(module).eval().requires_grad_(False)


@dataclass
class ModelInfo:
    """What a run records about the backbone."""
    name: str
    weights: str
    image_size: int
    mean: tuple
    std: tuple
    logit_scale: float

