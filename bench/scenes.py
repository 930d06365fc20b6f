"""Zero-shot, WCA (crops, tokens) and FAIR with local features on, on the stand-in's scenes target.

    python -m bench.scenes              # 3 seeds, the grids below
    python -m bench.scenes --quick      # 3 seeds, smaller splits and fewer steps (what 2 shared cores allow)

STAND-IN RESULTS, NOT CLIP RESULTS: `fashion_mnist_scenes` puts each Fashion-MNIST item at about a third of
an 84-px canvas among faint fragments of other items; the stand-in (fair-standin-minilm-scenes-small) was
pretrained on whole items filling that canvas. Here localized features should matter (notes, lesson 10).

Honest selection: the grids are fixed in this file before any run; per method the candidate with the best
mean *validation* top-1 over the seeds is picked, and only then its test top-1 is reported (mean ± std, with
the per-seed values). FAIR's candidates all use local features (local.beta < 1). Two controls change one
setting of FAIR's pick: local features off (beta 1), and the frozen teacher (pseudo.teacher: frozen); two
change how WCA's and FAIR's picks rank the locals (local.select: anchors, by their best match to W_fix).
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from pathlib import Path

from bench.accuracy import NO_AUG, fmt, run_one, scenes_config, summarise

STANDIN_NOTE = "stand-in model (fair-standin-minilm-scenes-small on Fashion-MNIST scenes) — not CLIP results"

# Crops sized to the item: it spans about a third of the side, so a crop of 0.3-0.5 of the side can frame it.
ITEM_CROPS = {"local.source": "crops", "local.crop_min": 0.3, "local.crop_max": 0.5}
SPEC_CROPS = {"local.source": "crops", "local.crop_min": 0.4, "local.crop_max": 0.8}
# FAIR's settings that the 28-px stand-in picked (docs/standin.md), with local features on.
FAIR_BASE = {**NO_AUG, "pseudo.gamma_start": 0.5, "pseudo.gamma_end": 0.0, "weighting.mode": "none",
             "anchors.mode": "prototype", "local.beta": 0.0}
GRIDS = {   # fixed before the first run; do not edit after looking at results
    "zeroshot": [{}],
    "wca crops": [{**ITEM_CROPS, "local.top_k": 2}, {**SPEC_CROPS, "local.top_k": 2}],
    "wca tokens": [{"local.source": "tokens", "local.top_k": 4}, {"local.source": "tokens", "local.top_k": 8}],
    "fair": [
        {**ITEM_CROPS, "local.top_k": 2},                                    # spec defaults, item-sized crops
        {**FAIR_BASE, **ITEM_CROPS, "local.top_k": 2},
        {**FAIR_BASE, "local.source": "tokens", "local.top_k": 8},
        {**FAIR_BASE, "local.source": "tokens", "local.top_k": 8, "local.beta": 0.5},
    ],
}
METHOD = {"zeroshot": "zeroshot", "wca crops": "wca", "wca tokens": "wca", "fair": "fair"}


def controls(picked: dict[str, dict]) -> dict[str, tuple[str, dict]]:
    """One-setting changes of the picks, {name: (method, candidate)}: FAIR with locals off, with the frozen
    teacher, and WCA crops and FAIR with the locals ranked by the fixed head (local.select: anchors) instead
    of by their likeness to the whole image."""
    fair, wca = picked["fair"], picked["wca crops"]
    return {"fair: local features off (beta 1)": ("fair", {**fair, "local.beta": 1.0}),
            "fair: teacher frozen": ("fair", {**fair, "pseudo.teacher": "frozen"}),
            "wca crops: locals ranked by W_fix": ("wca", {**wca, "local.select": "anchors"}),
            "fair: locals ranked by W_fix": ("fair", {**fair, "local.select": "anchors"})}


def _seeds_of(records: list[dict]) -> str:
    """Per seed: test top-1 and the predictor validation chose (global feature, or las with locals)."""
    return " ".join(f"{r['metrics']['test_top1']:.1f} ({r['metrics'].get('predictor', '-')})" for r in records)


def _las_test(records: list[dict]) -> str:
    """Mean test top-1 of the las predictor (local features), whichever predictor validation chose."""
    xs = [r["metrics"].get("test_top1_las") for r in records]
    return "–" if any(x is None for x in xs) else f"{sum(xs) / len(xs):.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller splits and fewer steps")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="runs/bench-scenes", help="run folders and the results JSON")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    base = scenes_config(a.quick)
    seeds = list(range(a.seeds))
    t0 = time.perf_counter()
    rows, picked, log_lines = [], {}, []

    def run(name: str, cand: dict, method: str) -> tuple[dict, list[dict]]:
        recs = [run_one(base, method, cand, s, out) for s in seeds]
        summ = summarise(recs)
        line = f"  {name:10s} {json.dumps(cand)} val {fmt(summ['val'])} ({time.perf_counter() - t0:.0f} s)"
        print(line, flush=True)
        log_lines.append(line)
        (out / "progress.txt").write_text("\n".join(log_lines) + "\n")
        return summ, recs

    for name, grid in GRIDS.items():
        best = None
        for cand in grid:
            summ, recs = run(name, cand, METHOD[name])
            if best is None or summ["val"][0] > best[1]["val"][0]:    # validation picks; test never looked at
                best = (cand, summ, recs)
        picked[name] = best[0]
        rows.append((name, best[0], best[1], best[2], len(grid)))
    for name, (method, cand) in controls(picked).items():
        summ, recs = run(name, cand, method)
        rows.append((name, cand, summ, recs, 1))
    zs = rows[0][2]["top1"][0]
    print(f"\nTarget: Fashion-MNIST scenes test split ({base['data']['test_per_class']} per class), seeds {seeds}, "
          f"{base['train']['epochs']} epochs x {base['train']['max_steps_per_epoch']} steps; {STANDIN_NOTE}.")
    print("| method | candidates | test top-1 | per seed (predictor) | gain vs zero-shot | las test | val top-1 "
          "| wall s/run |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name, cand, s, recs, n in rows:
        print(f"| {name} | {n} | {fmt(s['top1'])} | {_seeds_of(recs)} | {s['top1'][0] - zs:+.1f} | {_las_test(recs)} "
              f"| {fmt(s['val'])} | {s['wall']:.0f} |")
    print("\npicked on validation:")
    for m, c in picked.items():
        print(f"  {m}: {json.dumps(c) if c else 'defaults'}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    (out / "summary.json").write_text(json.dumps(
        {"rows": [(n, c, s, [r["metrics"]["test_top1"] for r in recs]) for n, c, s, recs, _ in rows],
         "picked": picked, "seeds": seeds, "base": copy.deepcopy(base)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
