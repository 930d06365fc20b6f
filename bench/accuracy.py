"""Accuracy of zero-shot, WCA, self-training, FAIR, DPA and tent on a stand-in target, each method with the
same search budget, picked on validation, re-run with final seeds, with 95% intervals.

    python -m bench.accuracy                 # fashion_mnist_shifted: 4 candidates per method, 3 final seeds
    python -m bench.accuracy --quick         # the small stand-in, smaller splits and fewer epochs
    python -m bench.accuracy --target fashion_mnist_scenes   # the scenes stand-in (local features matter)
    python -m bench.accuracy --pipelines     # FAIR under data.pipeline pil vs device, same seeds

STAND-IN RESULTS, NOT CLIP RESULTS: the model is fair's offline stand-in (a small CLIP-like model
pretrained here on Fashion-MNIST), the target one of its shifted Fashion-MNIST tasks.

Protocol (the same for every method, like a sweep's study: docs/sweeps.md):
- `CANDIDATES` below are fixed in this file before any run of this protocol; every training method (fair,
  selftrain, dpa, tent) and wca get the same number of candidates, zeroshot (nothing to tune) one. The settings
  FAIR's old pick won with that self-training reads too (no strong augmentation, gamma 0.5 -> 0, no weighting)
  are offered to self-training as well; dpa and tent get their own keys and the learning rate.
- each candidate runs once with the search seed (0); per method the candidate with the best *validation*
  top-1 is picked (ties: the earlier candidate); the test split is never looked at to choose.
- the pick re-runs with `--final-seeds` new seeds (1, 2, ...); the table reports those runs only: test top-1
  mean ± std over the seeds, a 95% interval over seeds and test images (results.intervals.seeds_interval on
  the records' test_outcomes), and the paired difference to the best baseline (the non-FAIR method with the
  best final validation top-1) with its 95% interval (results.intervals.paired_difference).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import statistics
import time
from pathlib import Path

STANDIN_NOTE = "stand-in model — not CLIP results"
TARGETS = ("fashion_mnist_shifted", "fashion_mnist_scenes")
SEARCH_SEED = 0

NO_AUG = {"data.strong_scale_min": 1.0, "data.randaug_ops": 0}
# The pseudo-label settings FAIR's earlier pick used (docs/standin.md); self-training reads them too.
HANDOVER = {**NO_AUG, "pseudo.gamma_start": 0.5, "pseudo.gamma_end": 0.0, "weighting.mode": "none"}
PICK1 = {**HANDOVER, "local.beta": 1.0}
TOKENS = {"local.source": "tokens", "local.top_k": 16}
FAIR_PICK = {**PICK1, **TOKENS, "anchors.mode": "prototype"}
# The pipeline check: the specification's defaults exercise every view the two pipelines make differently
# (RandomResizedCrop + RandAugment strong view, K crops); the pick is what a user of the stand-in would run.
PIPELINE_CHECK = {"spec defaults (crops, strong aug)": {}, "FAIR pick (tokens, prototype)": FAIR_PICK}

# FIXED BEFORE THE FIRST RUN OF THIS PROTOCOL (2026-12-01), hand-written; do not edit after seeing results.
# Four candidates per method (zeroshot: one); each names only keys its method reads (tests check it).
CANDIDATES: dict[str, list[dict]] = {
    "zeroshot": [{}],
    "wca": [
        {},                                                        # the target's crops (base config)
        {"local.crop_min": 0.4, "local.crop_max": 0.8},            # the specification's crops
        {"local.source": "tokens", "local.top_k": 4},
        {"anchors.tau_text": 10.0},                                # description weights from their similarity
    ],
    "selftrain": [
        {},                                                        # the specification's defaults
        NO_AUG,
        HANDOVER,
        {**HANDOVER, "train.lr": 3.0e-4},
    ],
    "fair": [
        {},                                                        # the specification's defaults
        PICK1,
        FAIR_PICK,
        {**HANDOVER, **TOKENS, "anchors.mode": "prototype"},       # FAIR_PICK with local features mixed in
    ],
    "dpa": [
        {},                                                        # templates init, DPA's defaults
        {"dpa.init": "descriptions"},
        {"train.lr": 3.0e-4},
        {**NO_AUG, "dpa.init": "descriptions"},
    ],
    "tent": [
        {},                                                        # weak view, diversity 1
        {"train.lr": 3.0e-4},
        {"tent.diversity": 3.0},
        {"tent.view": "strong"},
    ],
}
BASELINES = ("zeroshot", "wca", "selftrain", "dpa", "tent")   # the methods FAIR is compared against


def scenes_config(quick: bool) -> dict:
    """The scenes target's setting (also bench.scenes'): the scenes stand-in on its target, few epochs and capped steps (CPU is scarce)."""
    per = (60, 30, 30) if quick else (150, 60, 50)
    return {
        "model": {"name": "fair-standin-minilm-scenes-small", "pretrained": "standin", "device": "auto"},
        "data": {"dataset": "fashion_mnist_scenes", "train_per_class": per[0], "test_per_class": per[1],
                 "val_per_class": per[2], "num_workers": 0, "pipeline": "device"},
        "train": {"epochs": 2, "lr": 1.0e-3, "batch_size": 64, "max_steps_per_epoch": 12 if quick else 24},
        "local": {"num_crops": 4, "top_k": 2, "source": "crops", "crop_min": 0.3, "crop_max": 0.5},
        "eval": {"local_views": 6},
        "run": {"progress": False, "overwrite": True, "cache_root": ".cache/fair"},
    }


def base_config(quick: bool, target: str = "fashion_mnist_shifted") -> dict:
    """The shared setting of a target: its stand-in model, splits and crop ranges that fit its images."""
    if target == "fashion_mnist_scenes":
        return scenes_config(quick)
    if target != "fashion_mnist_shifted":
        raise SystemExit(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    per = (60, 40, 30) if quick else (300, 100, 50)
    # --quick takes the small stand-in (patch 7; ~1 min to build, against ~6 for the full one on 2 cores).
    model = "fair-standin-minilm-small" if quick else "fair-standin-minilm"
    return {
        "model": {"name": model, "pretrained": "standin", "device": "auto"},
        "data": {"dataset": "fashion_mnist_shifted", "train_per_class": per[0], "test_per_class": per[1],
                 "val_per_class": per[2], "num_workers": 0, "pipeline": "device"},
        "train": {"epochs": 2 if quick else 4, "lr": 1.0e-3},
        "local": {"num_crops": 4, "top_k": 2, "crop_min": 0.7, "crop_max": 1.0},
        "eval": {"local_views": 4},
        "run": {"progress": False, "overwrite": True, "cache_root": ".cache/fair"},
    }


def run_one(base: dict, method: str, overrides: dict, seed: int, out: Path) -> dict:
    """One adaptation with dotted-key overrides; returns its record."""
    from fair.commands import run_adapt
    from fair.config import from_dict, set_by_path
    d = copy.deepcopy(base)
    d["method"], d["seed"] = method, seed
    for k, v in overrides.items():
        set_by_path(d, k, v)
    tag = "-".join(f"{k.split('.')[-1]}{v}" for k, v in sorted(overrides.items())) or "default"
    set_by_path(d, "run.out_dir", str(out))
    set_by_path(d, "run.name", f"{method}-{tag}-s{seed}")
    return run_adapt(from_dict(d))


def summarise(records: list[dict]) -> dict:
    """Mean ± std over runs of test top-1, mean per-class and val top-1; mean wall seconds."""
    def stat(key):
        xs = [r["metrics"][key] for r in records if r["metrics"].get(key) is not None]
        if not xs:
            return None, None
        return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)
    return {"top1": stat("test_top1"), "mpc": stat("test_mean_per_class"), "val": stat("val_top1"),
            "wall": statistics.mean(r["timings"]["wall_s"] for r in records)}


def fmt(ms) -> str:
    m, s = ms
    return "–" if m is None else f"{m:.1f} ± {s:.1f}"


def pick(scored: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The (candidate, record) with the best validation top-1; the earlier one on a tie. Test is not read."""
    best = scored[0]
    for cand, rec in scored[1:]:
        if rec["metrics"]["val_top1"] > best[1]["metrics"]["val_top1"]:
            best = (cand, rec)
    return best


def outcomes_of(records: list[dict]) -> list:
    """The per-image test correctness of each record (one bool array per seed), all on the same images."""
    from results.intervals import decode_outcomes
    shas = {(r.get("test_outcomes") or {}).get("ids_sha") for r in records}
    if None in shas or len(shas) != 1:
        raise SystemExit("the runs carry no test_outcomes or were tested on different images; rerun them")
    return [decode_outcomes(r["test_outcomes"]) for r in records]


def best_baseline(finals: dict[str, list[dict]]) -> str:
    """The baseline whose final runs have the best mean validation top-1 (chosen on validation, too)."""
    present = [m for m in BASELINES if m in finals]
    return max(present, key=lambda m: statistics.mean(r["metrics"]["val_top1"] for r in finals[m]))


def table(picks: dict[str, tuple[dict, dict]], finals: dict[str, list[dict]]) -> list[str]:
    """The result table (markdown lines): per method the pick's validation, the final seeds' test top-1 with
    its interval, and the paired difference to the best baseline with its interval."""
    from results.intervals import paired_difference, seeds_interval
    ref = best_baseline(finals)
    ref_out = outcomes_of(finals[ref])
    lines = [f"| method | candidates | pick val top-1 | test top-1 (final seeds) | 95% interval | per seed "
             f"| vs {ref} (paired) | 95% interval |", "|---|---:|---:|---:|---:|---|---:|---:|"]
    for m, recs in finals.items():
        cand, rec = picks[m]
        s = summarise(recs)
        out = outcomes_of(recs)
        ci = seeds_interval(out)
        val = f"{rec['metrics']['val_top1']:.1f} ± {rec['metrics'].get('val_stderr') or 0:.1f}"
        per_seed = " ".join(f"{r['metrics']['test_top1']:.1f}" for r in recs)
        if m == ref:
            diff, dci = "reference", "–"
        else:
            d = paired_difference(out, ref_out)
            mark = "**" if d.excludes(0.0) else ""
            diff, dci = f"{mark}{d.estimate:+.1f}{mark}", f"[{d.low:+.1f}, {d.high:+.1f}]"
        lines.append(f"| {m} | {len(CANDIDATES[m])} | {val} | {fmt(s['top1'])} | [{ci.low:.1f}, {ci.high:.1f}] "
                     f"| {per_seed} | {diff} | {dci} |")
    return lines


def slim(record: dict) -> dict:
    """What the table reads of a record: metrics, timings and test_outcomes."""
    return {k: record.get(k) for k in ("run_id", "metrics", "timings", "test_outcomes")}


def pipeline_check(base: dict, seeds: list[int], out: Path) -> None:
    """FAIR under data.pipeline pil and device with the same config and seeds; prints paired differences.

    "Within noise" means the mean paired difference (device - pil) is small against the seed-to-seed spread
    of either pipeline: the two differ in how (not whether) they draw random views, so per-seed results move.
    """
    print(f"{'config':38s} {'pil top-1':>12s} {'device top-1':>12s} {'device - pil':>14s} {'per seed':>22s} "
          f"{'wall pil/device s':>18s}", flush=True)
    for name, cand in PIPELINE_CHECK.items():
        recs = {pipe: [run_one(base, "fair", {**cand, "data.pipeline": pipe}, s, out) for s in seeds]
                for pipe in ("pil", "device")}
        top1 = {pipe: [r["metrics"]["test_top1"] for r in rs] for pipe, rs in recs.items()}
        diffs = [d - p for p, d in zip(top1["pil"], top1["device"])]
        sd = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
        wall = {pipe: summarise(rs)["wall"] for pipe, rs in recs.items()}
        print(f"{name:38s} {fmt(summarise(recs['pil'])['top1']):>12s} {fmt(summarise(recs['device'])['top1']):>12s} "
              f"{statistics.mean(diffs):+8.1f} ± {sd:.1f} {' '.join(f'{x:+.1f}' for x in diffs):>22s} "
              f"{wall['pil']:8.0f}/{wall['device']:.0f}", flush=True)


def describe(base: dict, target: str, final_seeds: list[int]) -> str:
    d, t = base["data"], base["train"]
    steps = f" x {t['max_steps_per_epoch']} steps" if t.get("max_steps_per_epoch") else ""
    return (f"Target: {target} ({d['train_per_class']}/{d['val_per_class']}/{d['test_per_class']} per class "
            f"train/val/test), model {base['model']['name']}, {t['epochs']} epochs{steps}; search seed "
            f"{SEARCH_SEED}, final seeds {final_seeds}; {STANDIN_NOTE}.")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller splits and fewer epochs")
    p.add_argument("--target", default="fashion_mnist_shifted", choices=TARGETS)
    p.add_argument("--final-seeds", type=int, default=3, help="new seeds the pick of each method re-runs with")
    p.add_argument("--methods", default=",".join(CANDIDATES), help="comma-separated subset of the methods")
    p.add_argument("--out", default="runs/bench-accuracy", help="run folders, progress and the results JSON")
    p.add_argument("--pipelines", action="store_true",
                   help="only the pipeline check: FAIR under data.pipeline pil and device, same config and seeds")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(a.out) / a.target
    out.mkdir(parents=True, exist_ok=True)
    base = base_config(a.quick, a.target)
    final_seeds = list(range(SEARCH_SEED + 1, SEARCH_SEED + 1 + a.final_seeds))
    methods = [m for m in a.methods.split(",") if m]
    unknown = [m for m in methods if m not in CANDIDATES]
    if unknown:
        raise SystemExit(f"unknown method {unknown[0]!r} in --methods; choose from {', '.join(CANDIDATES)}")
    t0 = time.perf_counter()
    if a.pipelines:
        seeds = list(range(a.final_seeds))                 # seeds 0, 1, 2 as in docs/speed.md
        print(describe(base, a.target, seeds))
        pipeline_check(base, seeds, out)
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")
        return 0
    log: list[str] = []

    def note(line: str) -> None:
        print(line, flush=True)
        log.append(line)
        (out / "progress.txt").write_text("\n".join(log) + "\n")

    picks, finals = {}, {}
    for m in methods:
        scored = []
        for cand in CANDIDATES[m]:
            rec = run_one(base, m, cand, SEARCH_SEED, out)
            scored.append((cand, rec))
            note(f"  search {m:9s} {json.dumps(cand)} val {rec['metrics']['val_top1']:.1f} "
                 f"({time.perf_counter() - t0:.0f} s)")
        picks[m] = pick(scored)                        # validation picks; test never looked at
        finals[m] = [run_one(base, m, picks[m][0], s, out) for s in final_seeds]
        note(f"  final  {m:9s} test {fmt(summarise(finals[m])['top1'])} ({time.perf_counter() - t0:.0f} s)")
    (out / "records.json").write_text(json.dumps(      # what the table is made from (rebuild with --table-from)
        {"picks": {m: [c, slim(r)] for m, (c, r) in picks.items()},
         "finals": {m: [slim(r) for r in rs] for m, rs in finals.items()}}, default=str))
    lines = [describe(base, a.target, final_seeds), *table(picks, finals), "", "picked on validation:",
             *[f"  {m}: {json.dumps(c) if c else 'defaults'}" for m, (c, _) in picks.items()],
             f"\ntotal {time.perf_counter() - t0:.0f} s"]
    note("\n" + "\n".join(lines))
    (out / "summary.json").write_text(json.dumps(
        {"target": a.target, "base": base, "search_seed": SEARCH_SEED, "final_seeds": final_seeds,
         "picked": {m: c for m, (c, _) in picks.items()},
         "final_test_top1": {m: [r["metrics"]["test_top1"] for r in rs] for m, rs in finals.items()}},
        indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
