"""The declarative search space of a sweep: YAML in, an Optuna define-by-run function out.

A space maps dotted FairConfig keys to a distribution:

    train.lr:            {loguniform: [1.0e-5, 1.0e-3]}
    weighting.power:     {uniform: [0.5, 3.0]}
    local.num_crops:     {int: [2, 8]}                # optional `step: 2`, `log: true`
    anchors.mode:        {choice: [prototype, set]}
    anchors.tau_anchor:  {loguniform: [1, 100], when: {anchors.mode: set}}   # conditional
    eval.predictor:      auto                          # a plain value: fixed for every trial

`when` names other parameters of the space and the value (or list of values) they must take; a conditional
parameter is neither sampled nor set when its condition is false, so Optuna's TPE sees the real tree
(define-by-run) instead of a flat space with dead dimensions.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from fair.errors import FairError

DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
# Keys a sweep owns itself (dataset, run folder, epochs come from the sweep file, not from the search).
FORBIDDEN = ("data.dataset", "data.root", "run.", "train.epochs")


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) parameter."""
    name: str
    kind: str                       # uniform | loguniform | int | choice | fixed
    low: Any = None
    high: Any = None
    step: Any = None
    log: bool = False
    choices: tuple = ()
    value: Any = None               # kind == fixed
    when: tuple = ()                # ((param, (allowed values...)), ...)

    def candidates(self) -> list:
        """Values that exercise the parameter's range (used to validate it against FairConfig)."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "choice":
            return list(self.choices)
        return [self.low, self.high]

    def active(self, values: dict) -> bool:
        return all(values.get(dep, _MISSING) in allowed for dep, allowed in self.when)

    def sample(self, trial) -> Any:
        """Ask the Optuna trial (or Ray's captor of it) for a value."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.kind == "loguniform",
                                   **({"step": self.step} if self.step else {}))


_MISSING = object()


@dataclass
class SearchSpace:
    """An ordered set of parameters; calling it with an Optuna trial samples one configuration.

    A plain (picklable) object rather than a closure, because OptunaSearch pickles its space with the
    searcher state that `fair sweep --resume` restores.
    """
    params: list[Param] = field(default_factory=list)

    def __call__(self, trial) -> dict | None:
        values: dict = {}
        fixed: dict = {}
        for p in self.params:                 # ordered so that every condition's parents come first
            if not p.active(values):
                continue
            values[p.name] = p.sample(trial)
            if p.kind == "fixed":
                fixed[p.name] = values[p.name]
        # Fixed values are returned, not suggested: Optuna only needs to model the searched ones.
        return fixed or None

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def describe(self) -> str:
        return ", ".join(f"{p.name}~{p.kind}" + (" (cond.)" if p.when else "") for p in self.params)


def _num(v: Any, name: str, what: str) -> float:
    from fair.config import parse_number
    number = parse_number(v)
    if number is None:
        raise FairError(f"search space '{name}': {what} must be a number, got {v!r}")
    return number


def parse_param(name: str, spec: Any) -> Param:
    """One YAML entry -> Param, with one-line errors for every malformed form."""
    if not isinstance(spec, dict):
        return Param(name, "fixed", value=spec)
    spec = dict(spec)
    when_raw = spec.pop("when", None)
    extra = {k: spec.pop(k) for k in ("step", "log") if k in spec}
    kinds = [k for k in spec if k in DISTRIBUTIONS]
    unknown = [k for k in spec if k not in DISTRIBUTIONS]
    if unknown or len(kinds) != 1:
        bad = unknown[0] if unknown else (", ".join(kinds) or "nothing")
        raise FairError(f"search space '{name}': expected exactly one of {', '.join(DISTRIBUTIONS)} "
                        f"(plus optional when/step/log), got {bad!r}; e.g. {name}: {{uniform: [0, 1]}}")
    kind = kinds[0]
    args = spec[kind]
    when = _parse_when(name, when_raw)
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise FairError(f"search space '{name}': choice needs a non-empty list, e.g. {{choice: [a, b]}}")
        for v in args:
            if not (v is None or isinstance(v, (bool, int, float, str))):
                raise FairError(f"search space '{name}': choice values must be scalars, got {v!r}")
        return Param(name, kind, choices=tuple(args), when=when)
    if not isinstance(args, list) or len(args) != 2:
        raise FairError(f"search space '{name}': {kind} needs [low, high], got {args!r}")
    low, high = (_num(a, name, "low/high") for a in args)
    if low > high:
        raise FairError(f"search space '{name}': low {low} is greater than high {high}")
    if kind == "loguniform" and low <= 0:
        raise FairError(f"search space '{name}': loguniform needs low > 0, got {low}")
    if kind == "int":
        if int(low) != low or int(high) != high:
            raise FairError(f"search space '{name}': int bounds must be integers, got [{low}, {high}]")
        low, high = int(low), int(high)
        if extra.get("log") and low <= 0:
            raise FairError(f"search space '{name}': int with log: true needs low >= 1")
    step = extra.get("step")
    if step is not None:
        step = _num(step, name, "step")
        if step <= 0:
            raise FairError(f"search space '{name}': step must be > 0, got {step}")
        if kind == "int":
            step = int(step)
    return Param(name, kind, low=low, high=high, step=step, log=bool(extra.get("log", False)), when=when)


def _parse_when(name: str, raw: Any) -> tuple:
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        raise FairError(f"search space '{name}': when must map a parameter to its value(s), "
                        f"e.g. when: {{anchors.mode: set}}")
    return tuple((dep, tuple(v) if isinstance(v, list) else (v,)) for dep, v in raw.items())


def parse_space(raw: Any) -> SearchSpace:
    """The `space:` mapping of a sweep file -> SearchSpace (checked for structure, ordered by dependencies).

    `raw` may be "default" (the spec's §9 list) or a mapping; an empty space is an error.
    """
    if raw in (None, "default"):
        raw = DEFAULT_SPACE
    if not isinstance(raw, dict) or not raw:
        raise FairError("sweep key 'space' must be a mapping of config keys to distributions, or 'default'")
    params = []
    for name, spec in raw.items():
        if not isinstance(name, str) or not name:
            raise FairError(f"search space key {name!r} must be a dotted config key, e.g. train.lr")
        for bad in FORBIDDEN:
            if name == bad or (bad.endswith(".") and name.startswith(bad)):
                raise FairError(f"search space '{name}': this key is set by the sweep itself "
                                f"(datasets, budget.epochs, storage), not searched")
        params.append(parse_param(name, spec))
    by_name = {p.name: p for p in params}
    for p in params:
        for dep, allowed in p.when:
            if dep not in by_name:
                raise FairError(f"search space '{p.name}': its condition names '{dep}', which is not in the space")
            parent = by_name[dep]
            if parent.kind == "choice":
                missing = [v for v in allowed if v not in parent.choices]
                if missing:
                    raise FairError(f"search space '{p.name}': condition value {missing[0]!r} is not one of "
                                    f"{dep}'s choices {list(parent.choices)}")
    return SearchSpace(_order(params))


def _order(params: list[Param]) -> list[Param]:
    """Parents before children (stable), so a condition is always decided by then; cycles are errors."""
    done: list[Param] = []
    names: set[str] = set()
    pending = list(params)
    while pending:
        ready = [p for p in pending if all(dep in names for dep, _ in p.when)]
        if not ready:
            raise FairError(f"search space: conditions form a cycle among {', '.join(p.name for p in pending)}")
        for p in ready:
            done.append(p)
            names.add(p.name)
        pending = [p for p in pending if p.name not in names]
    return done


def validate_against(space: SearchSpace, base: dict, label: str = "") -> None:
    """Apply every candidate value of every parameter to `base` through FairConfig: unknown keys, wrong
    types and out-of-range values fail here, before any trial starts (FairError names the key)."""
    from fair.config import from_dict, set_by_path
    for p in space.params:
        for v in p.candidates():
            d = copy.deepcopy(base)
            set_by_path(d, p.name, v)
            try:
                from_dict(d)
            except FairError as e:
                where = f" (study {label})" if label else ""
                raise FairError(f"search space '{p.name}' = {v!r}{where}: {e}") from None


def apply(base: dict, hparams: dict) -> dict:
    """A copy of the nested config `base` with the dotted `hparams` set."""
    from fair.config import set_by_path
    d = copy.deepcopy(base)
    for k, v in hparams.items():
        set_by_path(d, k, v)
    return d


# The spec's §9 list: weighting and anchor hyperparameters, the local view, the losses and learning rates.
DEFAULT_SPACE: dict = {
    "pseudo.gamma_start": {"uniform": [0.5, 1.0]},
    "pseudo.gamma_end": {"uniform": [0.0, 1.0]},
    "pseudo.gamma_schedule": {"choice": ["constant", "linear", "cosine"]},
    "weighting.mode": {"choice": ["none", "agreement", "margin"]},
    "weighting.power": {"uniform": [0.5, 3.0], "when": {"weighting.mode": ["agreement", "margin"]}},
    "weighting.min": {"uniform": [0.0, 0.5], "when": {"weighting.mode": ["agreement", "margin"]}},
    "anchors.mode": {"choice": ["prototype", "set"]},
    "anchors.tau_text": {"uniform": [0.0, 50.0]},
    "anchors.tau_anchor": {"loguniform": [1.0, 100.0], "when": {"anchors.mode": "set"}},
    "anchors.lr_mult": {"loguniform": [1.0, 100.0]},
    "local.source": {"choice": ["crops", "tokens"]},
    "local.num_crops": {"int": [4, 16], "when": {"local.source": "crops"}},
    "local.top_k": {"int": [1, 4]},
    "local.tau_local": {"loguniform": [1.0, 100.0]},
    "local.beta": {"uniform": [0.0, 1.0]},
    "train.lambda_fair": {"loguniform": [0.1, 10.0]},
    "train.lr": {"loguniform": [1.0e-5, 1.0e-3]},
}
