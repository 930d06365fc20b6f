"""One typed config for a FAIR run: dataclasses, loaded from YAML, overridden with `--set key=value`.

Every option the specification leaves open is a named field here; those fields are what sweeps search.
Unknown keys and values of the wrong type are errors that name the key (FairError, one line). The typed
builder, `build`, is shared: tune's SweepConfig is built by it too.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, get_args, get_origin

import yaml

from fair.errors import FairError

Method = Literal["zeroshot", "wca", "selftrain", "fair", "dpa", "tent"]
TRAINING_METHODS = ("fair", "selftrain", "dpa", "tent")   # the methods that adapt the model (the others only score)


@dataclass
class ModelConfig:
    name: str = "ViT-B-32"                 # any open_clip architecture (or one registered by fair)
    pretrained: str = "openai"             # an open_clip pretrained tag, or a local .pt/.bin/.safetensors path
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"   # autocast dtype; trainable params stay fp32
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    cache_dir: Optional[str] = None        # where open_clip keeps downloaded weights (hf-hub: the HF cache)
    config: Optional[str] = None           # your own open_clip architecture JSON; model.name = its file name
    # Image preprocessing; None: what the weights were trained with (docs/method.md "Models"):
    mean: Optional[list[float]] = None     # per channel (R, G, B), in [0, 1]; e.g. [0.5, 0.5, 0.5]
    std: Optional[list[float]] = None      # per channel, > 0
    interpolation: Optional[Literal["bicubic", "bilinear"]] = None
    resize_mode: Optional[Literal["shortest", "longest", "squash"]] = None   # how an image becomes square


PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")   # the model.<key> that override preprocessing


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"         # a name from fair.data.catalog, or "imagefolder"
    root: Optional[str] = None             # dataset folder; default: the catalog's default location
    descriptions: Optional[str] = None     # CuPL JSON; default: the catalog's file for the dataset
    templates: Optional[list[str]] = None  # default: the catalog's templates
    description_fallback: bool = False     # classes without descriptions fall back to templates (recorded)
    val_per_class: int = 10                # labelled validation images held out of train (selection only)
    train_per_class: Optional[int] = None  # cap on unlabelled train images per class (None: all)
    test_per_class: Optional[int] = None   # cap on test images per class (None: all)
    num_workers: int = 2                   # DataLoader workers
    max_bad_images: float = 0.01           # fraction of unreadable images tolerated (skipped and counted)
    pipeline: Literal["pil", "device"] = "pil"   # pil: PIL + torchvision per image (reference); device:
                                           # decoded cache + batched views on the device (docs/speed.md)
    strong_scale_min: float = 0.3          # strong view: RandomResizedCrop scale (strong_scale_min, 1)
    randaug_ops: int = 2                   # strong view: RandAugment ops per image (0: none)
    randaug_magnitude: int = 9             # strong view: RandAugment magnitude (0..30)
    cache_size: Optional[int] = None       # device pipeline: side S of the training squares the strong view
                                           # and crops are cut from (None: input * 8/7); test/weak: input size


@dataclass
class AnchorsConfig:
    mode: Literal["prototype", "set"] = "set"
    tau_text: float = 0.0                  # description weights v = softmax(tau_text * cos(t_cj, t_c))
    tau_anchor: float = 10.0               # set mode: softmax temperature over a class's descriptions
    lr_mult: float = 10.0                  # anchors' learning rate = train.lr * lr_mult


@dataclass
class LocalConfig:
    source: Literal["crops", "tokens"] = "crops"
    num_crops: int = 8                     # K random crops (crops source)
    crop_min: float = 0.4                  # crop side ~ U(crop_min, crop_max) * min(H, W)
    crop_max: float = 0.8
    top_k: int = 4                         # keep the top_k locals most similar to the global feature
    tau_local: float = 10.0                # a_i = softmax(tau_local * cos(f_i, f))
    select: Literal["global", "anchors"] = "global"   # relevance of a local: cos to f(x) (spec, WCA), or its
    #                                        best cos to the fixed head W_fix (the locals that look like some
    #                                        class: for small objects in clutter, where the locals most like
    #                                        the whole image are background; docs/standin.md)
    beta: float = 0.0                      # f_mix = normalize(beta * f + (1 - beta) * f_loc)


@dataclass
class PseudoConfig:
    gamma_start: float = 1.0               # weight of the fixed score p_fix at the first epoch
    gamma_end: float = 0.5                 # ... and at the last epoch
    gamma_schedule: Literal["constant", "linear", "cosine"] = "linear"
    teacher: Literal["student", "frozen"] = "student"   # the tower S_fix's f and f_loc come from: the adapting
    #                                        one (DPA) or a frozen copy of the pretrained one (the WCA prior;
    #                                        one more forward of the weak view + crops per step, docs/method.md)


@dataclass
class WeightingConfig:
    mode: Literal["none", "agreement", "margin"] = "agreement"
    power: float = 1.0
    min: float = 0.0                       # drop samples whose weight is below this


@dataclass
class TrainConfig:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-4
    lr_min: float = 2e-6                   # cosine schedule floor
    warmup_steps: int = 0
    weight_decay: float = 0.1
    lambda_fair: float = 1.0               # fairness (class-balance) term
    fair_momentum: Optional[float] = None  # running average of the batch-mean prediction pbar; None: auto
    #                                        (fair.losses.fair_momentum_for: 0.9 once a batch is expected
    #                                        to miss > 1% of the classes, e.g. C >= 15 at batch 64; else 0)
    trainable: Literal["norm", "norm+proj"] = "norm"   # visual LayerNorms (+ projection) and the anchors
    grad_clip: float = 0.0                 # 0: off
    max_steps_per_epoch: Optional[int] = None   # cap for smoke tests
    compile: bool = False                  # torch.compile the image tower (CUDA only; ignored on the CPU)


@dataclass
class EvalConfig:
    predictor: Literal["auto", "global", "las"] = "auto"   # auto: the validation split chooses
    local_views: int = 8                   # crops per test image for the `las` predictor
    batch_size: int = 128
    val_every_epoch: bool = True


@dataclass
class DpaConfig:
    """The `dpa` baseline (dpa-method.md); read only when method is dpa."""
    init: Literal["templates", "descriptions"] = "templates"   # text prototypes Z start from t_c or W_fix
    da_len: int = 32                       # distribution alignment: batch means of p_T kept
    alpha: float = 0.5                     # p = alpha p_P + (1 - alpha) p~_T
    reg: float = 1.0                       # weight of the fairness term -(1/C) sum_c log pbar_c
    align: float = 1.0                     # weight of the prototype alignment (InfoNCE over classes)
    align_scale: float = 100.0             # its logit scale (DPA's settings: 100 or 1)


@dataclass
class TentConfig:
    """The `tent` control: entropy minimisation with a batch-diversity term; read only when method is tent."""
    diversity: float = 1.0                 # lambda in mean_b H(p_b) - lambda H(pbar)
    view: Literal["weak", "strong"] = "weak"   # the view whose predictions are sharpened (docs/method.md)


@dataclass
class RunConfig:
    out_dir: str = "runs"
    name: Optional[str] = None             # run folder name; default <dataset>-<method>-s<seed>
    resume: bool = False                   # continue an existing run folder from its checkpoint
    overwrite: bool = False                # replace an existing run folder
    cache_root: str = "~/.cache/fair"      # text embeddings, decoded data, stand-in weights
    checkpoint_every: int = 1              # epochs between checkpoints
    progress: bool = True


@dataclass
class FairConfig:
    method: Method = "fair"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    anchors: AnchorsConfig = field(default_factory=AnchorsConfig)
    local: LocalConfig = field(default_factory=LocalConfig)
    pseudo: PseudoConfig = field(default_factory=PseudoConfig)
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    dpa: DpaConfig = field(default_factory=DpaConfig)
    tent: TentConfig = field(default_factory=TentConfig)
    run: RunConfig = field(default_factory=RunConfig)


# ----------------------------------------------------------------------------------------- typing

_UNIONS = (typing.Union, types.UnionType)


def _choices(tp: Any) -> str:
    """A Literal's values as a reader would list them: `a, b or c`."""
    names = [str(a) for a in get_args(tp)]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def parse_number(value: Any) -> float | int | None:
    """A YAML number, or a string YAML 1.1 left unparsed (it reads 1e-4, with no dot, as text); else None."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value


def _coerce(value: Any, tp: Any, key: str, what: str) -> Any:
    """Check `value` against the annotation `tp`; convert where lossless (int -> float). Errors name
    `what` key `key`."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in _UNIONS:  # Optional[X]
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, args[0], key, what)
    if origin is Literal:
        if value not in get_args(tp):
            close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise FairError(f"{what} key '{key}' must be {_choices(tp)}, got {value!r}{hint}")
        return value
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise FairError(f"{what} key '{key}' must be a mapping, got {type(value).__name__} {value!r}")
        item_tp = get_args(tp)[1] if origin is dict else Any
        return {k: _coerce(v, item_tp, f"{key}.{k}", what) for k, v in value.items()}
    if tp is list or origin is list:
        if not isinstance(value, (list, tuple)):
            raise FairError(f"{what} key '{key}' must be a list, got {type(value).__name__} {value!r}")
        item_tp = get_args(tp)[0] if origin is list else Any
        return [_coerce(v, item_tp, f"{key}[{i}]", what) for i, v in enumerate(value)]
    if tp is float:
        number = parse_number(value)
        if number is None:
            raise FairError(f"{what} key '{key}' must be a number, got {type(value).__name__} {value!r}")
        return float(number)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise FairError(f"{what} key '{key}' must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise FairError(f"{what} key '{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise FairError(f"{what} key '{key}' must be a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _section(tp: Any) -> Optional[type]:
    """The dataclass a field holds, also inside Optional (None: a plain value)."""
    args = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in _UNIONS else [tp]
    return args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None


def build(cls: type, data: Any, prefix: str = "", what: str = "config") -> Any:
    """Dataclass `cls` from a nested mapping, checked against its annotations (int, float, bool, str,
    Literal, Optional, list[X], dict[str, X], Any and nested dataclasses): a wrong type, a Literal value
    that is not allowed or an unknown key is a one-line FairError naming the `what` key (with "did you
    mean"). Missing keys take their defaults; a section that is null takes its defaults too, unless the
    field is Optional (then it stays None). Fields with init=False are not keys. A field's metadata
    "note" is added to its type errors (why the allowed values are what they are)."""
    if not isinstance(data, dict):
        raise FairError(f"{what} section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known keys: {', '.join(fields)}"
        raise FairError(f"unknown {what} key '{prefix}{k}'{hint}")
    kwargs = {}
    for name, value in data.items():
        tp, section = hints[name], _section(hints[name])
        if section is not None and (value is not None or section is tp):
            kwargs[name] = build(section, value or {}, f"{prefix}{name}.", what)
            continue
        try:
            kwargs[name] = _coerce(value, tp, f"{prefix}{name}", what)
        except FairError as e:
            note = fields[name].metadata.get("note")
            if not note:
                raise
            raise FairError(f"{e}; {note}") from None
    return cls(**kwargs)


def require(ok: bool, message: str) -> None:
    """A range or cross-field check of a validate(): FairError(message) unless `ok`."""
    if not ok:
        raise FairError(message)


# ------------------------------------------------------------------------------------ public API


def to_dict(cfg: FairConfig) -> dict:
    """The config as a nested plain dict (what is saved beside every result)."""
    return dataclasses.asdict(cfg)


def from_dict(data: dict | None) -> FairConfig:
    """A validated config from a nested dict; missing keys take their defaults."""
    cfg = build(FairConfig, dict(data or {}))
    validate(cfg)
    return cfg


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> {"a.b": value} with dotted keys (lists kept as values)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def changed_keys(old: dict, new: dict, ignore: tuple[str, ...] = ()) -> list[str]:
    """Dotted keys whose values differ between two nested dicts (keys under an `ignore` prefix left out);
    for errors that say what changed, e.g. `train.lr 0.001 -> 0.002`."""
    a, b = flatten(old), flatten(new)
    out = []
    for k in sorted(set(a) | set(b)):
        if k.startswith(ignore) or a.get(k) == b.get(k):
            continue
        out.append(f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}")
    return out


_SCALAR_KINDS = {float: "float", int: "int", str: "str", bool: "bool"}


def _kind(tp: Any) -> str | None:
    """float | int | str | bool for a scalar annotation (Optional[X] is X's, a Literal its values'); else None."""
    if get_origin(tp) is typing.Union:
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
        return _kind(tp)
    if get_origin(tp) is Literal:
        kinds = {_SCALAR_KINDS.get(type(a)) for a in get_args(tp)}
        return kinds.pop() if len(kinds) == 1 else None
    return _SCALAR_KINDS.get(tp)


def hparam_kinds(cls: type = FairConfig, prefix: str = "") -> dict[str, str]:
    """The declared type of every scalar config key, dotted as `flatten` writes it ({"train.lr": "float"}).

    Records carry it (`hparam_types`), so a results table types a hyperparameter column by its declaration
    even where every value is null (an auto setting of a failed trial). List-valued keys have none.
    """
    out = {}
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(hparam_kinds(tp, f"{prefix}{name}."))
        elif (kind := _kind(tp)) is not None:
            out[f"{prefix}{name}"] = kind
    return out


def set_by_path(data: dict, dotted: str, value: Any) -> None:
    """data["a"]["b"] = value for dotted = "a.b", creating sections as needed."""
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise FairError(f"config key '{dotted}': '{p}' is a value, not a section")
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`key.sub=value` -> ("key.sub", value), the value parsed as YAML (so 1e-4, true, [a, b] work)."""
    if "=" not in text:
        raise FairError(f"override {text!r} must look like section.key=value, e.g. --set train.epochs=3")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise FairError(f"override {text!r} has no key; use section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def merge_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply `--set` overrides to a nested config dict (returns a new dict)."""
    import copy
    data = copy.deepcopy(data or {})
    for text in overrides or []:
        key, value = parse_override(text)
        set_by_path(data, key, value)
    return data


def read_yaml(path: str | Path) -> dict:
    """A YAML file as a dict, with one-line errors for a missing or malformed file."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FairError(f"config file {str(p)!r} not found; pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise FairError(f"config file {str(p)!r} is not valid YAML{where}; fix the syntax") from None
    if not isinstance(data, dict):
        raise FairError(f"config file {str(p)!r} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict | None = None) -> FairConfig:
    """Defaults <- `base` dict <- YAML file <- `--set` overrides, validated."""
    data = dict(base or {})
    if path is not None:
        data = deep_merge(data, read_yaml(path))
    return from_dict(merge_overrides(data, overrides))


def deep_merge(a: dict, b: dict) -> dict:
    """`b` merged into `a`, section by section (a new dict; values of `b` win)."""
    out = dict(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def save_config(cfg: FairConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from fair.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def needs_descriptions(cfg: FairConfig) -> bool:
    """Whether the method reads the class descriptions (fair, wca, dpa started from W_fix): their file must then
    cover every class, unless data.description_fallback."""
    return cfg.method in ("fair", "wca") or (cfg.method == "dpa" and cfg.dpa.init == "descriptions")


def validate(cfg: FairConfig) -> None:
    """Value ranges and cross-field checks that types alone cannot express."""
    validate_model(cfg.model)
    require(cfg.train.epochs >= 0, "config key 'train.epochs' must be >= 0")
    require(cfg.train.batch_size >= 1, "config key 'train.batch_size' must be >= 1")
    require(cfg.train.lr > 0, "config key 'train.lr' must be > 0")
    require(0 < cfg.local.crop_min <= cfg.local.crop_max <= 1,
            "config keys 'local.crop_min' <= 'local.crop_max' must lie in (0, 1]")
    require(cfg.local.num_crops >= 1, "config key 'local.num_crops' must be >= 1")
    require(cfg.local.top_k >= 1, "config key 'local.top_k' must be >= 1")
    require(0 <= cfg.local.beta <= 1, "config key 'local.beta' must lie in [0, 1]")
    for k in ("gamma_start", "gamma_end"):
        require(0 <= getattr(cfg.pseudo, k) <= 1, f"config key 'pseudo.{k}' must lie in [0, 1]")
    require(0 <= cfg.weighting.min < 1, "config key 'weighting.min' must lie in [0, 1)")
    require(cfg.weighting.power >= 0, "config key 'weighting.power' must be >= 0")
    require(cfg.data.val_per_class >= 0, "config key 'data.val_per_class' must be >= 0")
    for key in ("train_per_class", "test_per_class"):
        cap = getattr(cfg.data, key)
        require(cap is None or cap >= 1, f"config key 'data.{key}' must be >= 1, or null for every image")
    require(0 <= cfg.data.max_bad_images <= 1, "config key 'data.max_bad_images' must lie in [0, 1]")
    require(cfg.train.fair_momentum is None or 0 <= cfg.train.fair_momentum < 1,
            "config key 'train.fair_momentum' must lie in [0, 1), or be null (auto, by the number of classes)")
    require(cfg.eval.local_views >= 1, "config key 'eval.local_views' must be >= 1")
    require(0 < cfg.data.strong_scale_min <= 1, "config key 'data.strong_scale_min' must lie in (0, 1]")
    require(0 <= cfg.data.randaug_magnitude <= 30, "config key 'data.randaug_magnitude' must lie in [0, 30]")
    require(cfg.data.randaug_ops >= 0, "config key 'data.randaug_ops' must be >= 0")
    require(cfg.data.cache_size is None or cfg.data.cache_size >= 8, "config key 'data.cache_size' must be >= 8")
    require(cfg.dpa.da_len >= 1, "config key 'dpa.da_len' must be >= 1")
    require(0 <= cfg.dpa.alpha <= 1, "config key 'dpa.alpha' must lie in [0, 1]")
    for k in ("reg", "align"):
        require(getattr(cfg.dpa, k) >= 0, f"config key 'dpa.{k}' must be >= 0")
    require(cfg.dpa.align_scale > 0, "config key 'dpa.align_scale' must be > 0 (DPA uses 100 or 1)")
    require(cfg.tent.diversity >= 0, "config key 'tent.diversity' must be >= 0")
    name = cfg.run.name
    require(name is None or (name.strip() not in ("", ".", "..") and not name.startswith("/")),
            f"config key 'run.name' must name a folder inside run.out_dir, got {name!r}; e.g. --set run.name=dtd-try2")


def validate_model(m: ModelConfig) -> None:
    """model.mean / model.std are three fractions of 255 (std > 0); model.config is a .json named model.name."""
    for key in ("mean", "std"):
        v = getattr(m, key)
        if v is None:
            continue
        require(len(v) == 3, f"config key 'model.{key}' must be 3 numbers (R, G, B), got {len(v)}: {v}; "
                             f"e.g. [0.5, 0.5, 0.5]")
        rule = "lie in (0, 1] (it divides; no zeros)" if key == "std" else "lie in [0, 1]"
        require(all(0 < x <= 1 if key == "std" else 0 <= x <= 1 for x in v),
                f"config key 'model.{key}' must {rule}, as fractions of 255, got {v}; e.g. [0.5, 0.5, 0.5]")
    if m.config is not None:
        path = Path(m.config)
        require(path.suffix == ".json",
                f"config key 'model.config' must be an open_clip architecture .json file, got {m.config!r}")
        require(path.stem == m.name,
                f"config key 'model.name' must be {path.stem!r}, the architecture model.config {m.config} defines "
                f"(open_clip names it after its file); set model.name={path.stem}")
