"""Hyperparameter importance for the validation objective of one group of trials.

With optuna importable, a study is rebuilt from the trial rows and `optuna.importance` (fANOVA, seeded)
ranks the parameters; otherwise (or if that fails) a simple, deterministic correlation importance is used:
|Spearman rho| for numeric parameters, the correlation ratio (eta) for categorical ones, normalised to sum 1.
"""
from __future__ import annotations

import json
import logging
import math

import pandas as pd

from results.schema import config_hparams

log = logging.getLogger(__name__)


def varying_hparams(trials: pd.DataFrame) -> pd.DataFrame:
    """One column per hyperparameter that takes more than one value across `trials` (seed excluded)."""
    hps = pd.DataFrame([config_hparams(json.loads(s)) for s in trials["hparams_json"]], index=trials.index)
    keep = [c for c in sorted(hps.columns) if hps[c].map(lambda v: json.dumps(v)).nunique() > 1]
    return hps[keep]


def correlation_importance(params: pd.DataFrame, target: pd.Series) -> dict[str, float]:
    """|Spearman rho| (numeric) or eta (categorical) of each parameter with `target`, normalised to sum 1."""
    scores = {}
    y = target.astype(float)
    for name in params.columns:
        col = params[name]
        ok = col.notna() & y.notna()
        x, yy = col[ok], y[ok]
        if len(x) < 3 or yy.std(ddof=0) == 0:
            scores[name] = 0.0
            continue
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x)
        if numeric:
            rho = x.astype(float).rank().corr(yy.rank())
            scores[name] = 0.0 if rho is None or math.isnan(rho) else abs(float(rho))
        else:
            groups = yy.groupby(x.map(lambda v: json.dumps(v)))
            between = sum(len(g) * (g.mean() - yy.mean()) ** 2 for _, g in groups)
            total = ((yy - yy.mean()) ** 2).sum()
            scores[name] = math.sqrt(between / total) if total > 0 else 0.0
    total = sum(scores.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in sorted(scores.items())}


def _optuna_importance(params: pd.DataFrame, target: pd.Series) -> dict[str, float]:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {}
    for name in params.columns:
        values = [v for v in params[name] if v is not None]
        if values and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            dists[name] = FloatDistribution(float(min(values)), float(max(values)))
        else:
            dists[name] = CategoricalDistribution(sorted({json.dumps(v) for v in values}))
    study = optuna.create_study(direction="maximize")
    for (_, row), value in zip(params.iterrows(), target):
        if value is None or math.isnan(value) or any(v is None for v in row):
            continue
        p = {n: (float(v) if isinstance(dists[n], FloatDistribution) else json.dumps(v)) for n, v in row.items()}
        study.add_trial(optuna.trial.create_trial(params=p, distributions=dists, value=float(value)))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    result = optuna.importance.get_param_importances(study, evaluator=evaluator, normalize=True)
    return {k: float(result.get(k, 0.0)) for k in sorted(params.columns)}


def param_importance(trials: pd.DataFrame, target: str = "val_top1", use_optuna: bool = True) -> dict[str, float]:
    """Importance of each varying hyperparameter for `target` over `trials` (empty if fewer than 3 trials)."""
    rows = trials[trials[target].notna()]
    params = varying_hparams(rows)
    if len(rows) < 3 or params.empty:
        return {}
    if use_optuna:
        try:
            return _optuna_importance(params, rows[target])
        except ImportError:
            pass
        except Exception as e:  # noqa: BLE001 - any optuna trouble falls back to the simple method
            log.info("optuna importance failed (%s); using correlation importance", type(e).__name__)
    return correlation_importance(params, rows[target])
