"""A study is one method on one dataset: its key, the config keys each method reads, its default space.

A sweep compares methods on equal budgets: every method x dataset gets its own Optuna study (key
`<method>/<dataset>`, e.g. `fair/dtd`) with the same trial budget and epochs. Each method searches only
the config keys it reads (`METHOD_KEYS`, plus the `SHARED_KEYS` every method reads); a key of another
method's section (a `dpa.*` key under `fair`) is refused before anything starts, because searching a
value the method never reads would spend trials on noise.

Adding a method to the comparison takes one line in `METHOD_KEYS` (FairConfig's `Method` decides which
names exist; a method without a line searches the shared keys only).
"""
from __future__ import annotations

import typing
from typing import Any

from fair.config import TRAINING_METHODS
from fair.errors import FairError

# Config keys (dotted prefixes) every method reads.
SHARED_KEYS = ("train.", "data.", "model.", "eval.")
# The keys each method reads beyond the shared ones (fair/adapt.py, fair/engine.py): selftrain trains the
# prototype anchors on global features only; wca is training-free, but pools local crops with the
# description-weighted head.
METHOD_KEYS: dict[str, tuple[str, ...]] = {
    "fair": ("anchors.", "local.", "pseudo.", "weighting."),
    "selftrain": ("anchors.lr_mult", "pseudo.", "weighting."),
    "wca": ("anchors.tau_text", "local."),
    "zeroshot": (),
    "dpa": ("dpa.", "anchors.lr_mult", "anchors.tau_text"),   # tau_text: W_fix, with dpa.init=descriptions
    "tent": ("tent.", "anchors.lr_mult"),
}
# Methods that do not train: their trials cost setup and evaluation only (cluster plan).
TRAINING_FREE = tuple(m for m in METHOD_KEYS if m not in TRAINING_METHODS)
# Keys the sweep sets for every trial of a study (not searched in any method's space).
STUDY_OWNED = ("method", "seed")


def known_methods() -> tuple[str, ...]:
    """The method names FairConfig accepts (its `method` Literal)."""
    from fair.config import Method
    return typing.get_args(Method)


def check_method(method: Any) -> str:
    """`method` if FairConfig knows it, else a one-line error listing the ones it does."""
    names = known_methods()
    if method not in names:
        import difflib
        close = difflib.get_close_matches(str(method), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise FairError(f"method {method!r} does not exist{hint}; the sweep's methods must be some of "
                        f"{', '.join(names)}")
    return method


SEARCH, FINAL = "search", "final"   # a trial's `stage` in a study (its Tune config and its record)


def stage_of(config: dict | None) -> str:
    """The stage of a trial from its Tune config: FINAL for a final-seed re-run of the study's pick, else
    SEARCH."""
    return (config or {}).get("stage") or SEARCH


def study_key(method: str, dataset: str) -> str:
    return f"{method}/{dataset}"


def split_study(study: str) -> tuple[str, str]:
    """(method, dataset) of a study key."""
    method, _, dataset = study.partition("/")
    return method, dataset


def study_dataset(study: str) -> str:
    return split_study(study)[1]


def belongs(method: str, key: str) -> bool:
    """Whether the dotted config `key` is one the `method` reads."""
    prefixes = SHARED_KEYS + METHOD_KEYS.get(method, ())
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def check_keys(method: str, keys: list[str]) -> None:
    """A one-line error for the first space key that `method` does not read (which method's it is, too)."""
    for key in keys:
        if key in STUDY_OWNED:
            raise FairError(f"search space of {method}: '{key}' is set by the sweep for each study (the "
                            f"method by `methods`, seeds by the search and budget.final_seeds), not searched")
        if not belongs(method, key):
            owners = [m for m in METHOD_KEYS if m != method and belongs(m, key)]
            whose = f" (it is {', '.join(owners)}'s)" if owners else ""
            raise FairError(f"search space of {method}: '{key}' is not a key {method} reads{whose}; move it under "
                            f"that method in `methods`, or drop it")


def default_space(method: str) -> dict:
    """The spec's §9 space (tune.space.DEFAULT_SPACE) cut to the keys `method` reads; a parameter whose
    condition names a dropped parameter is dropped with it."""
    from tune.space import DEFAULT_SPACE
    out: dict = {}
    for name, spec in DEFAULT_SPACE.items():
        parents = (spec.get("when") or {}) if isinstance(spec, dict) else {}
        if belongs(method, name) and all(p in out for p in parents):
            out[name] = spec
    return out
