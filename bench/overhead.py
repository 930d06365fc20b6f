"""Orchestration overhead of a sweep: the same tiny config through `fair adapt` and through a sweep trial.

    python -m bench.overhead [--epochs 10] [--train-per-class 150] [--repeats 1] [--num-cpus 2]
                             [--runners trainer,direct]

Both sides are what a user runs. The bare side is the `fair adapt` command in a fresh process (its
imports, model and data set-up, training, evaluation, record). The sweep side is a trial of `fair sweep` (per
trial of its two, the search trial and its final-seed re-run, one after the other) on a running local Ray: the Tune trial, the Train controller and worker processes, every per-epoch report
and checkpoint upload, and the record written to the sweep's storage. `ray.init`/`ray.shutdown`, which a
sweep pays once for all its trials, are printed separately. Both trial runners are measured
(`resources.runner`: `trainer`, a Ray Train TorchTrainer per trial; `direct`, adapt() inside the Tune
trial). Caches (text embeddings, decoded images) are
warmed first, so both sides find them. The aim (issue 4): the sweep trial costs at most 10% more than the
bare run once the run is longer than a minute. `--repeats N` alternates the two sides N times and keeps
each side's fastest run (the machine is shared; the minimum is the least disturbed measurement).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def tiny_config(dataset: str, epochs: int, train_per_class: int) -> dict:
    """A config whose work scales with `train_per_class` x `epochs` (tiny model, no downloads)."""
    return {"method": "fair", "seed": 0,
            "model": {"name": "fair-tiny-vit", "pretrained": "", "device": "cpu"},
            "data": {"dataset": dataset, "train_per_class": train_per_class, "test_per_class": 20,
                     "val_per_class": 10, "num_workers": 0},
            "train": {"epochs": epochs, "batch_size": 32}, "local": {"num_crops": 2, "top_k": 2},
            "eval": {"local_views": 2, "batch_size": 128}, "run": {"progress": False}}


def run_bare(base: dict, tmp: Path, tag: str) -> tuple[float, dict]:
    """`fair adapt` in a fresh process: (wall seconds of the command, its record)."""
    import yaml
    cfg_path = tmp / f"{tag}.yaml"
    cfg_path.write_text(yaml.safe_dump({**base, "run": {**base["run"], "out_dir": str(tmp / "runs"),
                                                        "name": tag}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "fair.cli", "adapt", "--config", str(cfg_path), "--quiet"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    return wall, json.loads((tmp / "runs" / tag / "record.json").read_text())


def run_sweep(base: dict, tmp: Path, tag: str, dataset: str, epochs: int, num_cpus: float,
              runner: str) -> tuple[float, float]:
    """A sweep of one search trial and its one final-seed re-run (the least a sweep runs), one after the
    other, on the running Ray: (wall seconds per trial, adapt() seconds per trial from the records)."""
    from tune.storage import list_records, read_json, record_key
    from tune.sweep import preflight, run
    from tune.sweep_config import load_sweep
    sweep = load_sweep(None, mapping={
        "name": tag, "datasets": [dataset], "base": base, "space": {"train.lr": {"choice": [1e-4]}},
        "budget": {"trials_per_dataset": 1, "epochs": epochs, "final_seeds": 1, "max_concurrent": 1},
        "storage": str(tmp / "sweeps"),
        "resources": {"num_workers": 1, "per_worker": {"CPU": 1}, "runner": runner},
        "ray": {"num_cpus": num_cpus, "controller_failure_limit": 0, "summary_every_s": 3600}})
    uri = preflight(sweep)
    t = time.perf_counter()
    result = run(sweep, uri)
    wall = time.perf_counter() - t
    if result.errored:
        raise SystemExit(f"the sweep trial errored; see {uri}/{tag}")
    trials = list_records(uri, tag)[dataset]
    adapt_s = [read_json(uri, record_key(tag, dataset, t))["timings"]["wall_s"] for t in trials]
    return wall / len(trials), sum(adapt_s) / len(trials)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-per-class", type=int, default=150)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--num-cpus", type=float, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--runners", default="trainer,direct", help="resources.runner values to measure")
    a = p.parse_args(argv)
    from tune.ray_session import set_env_defaults
    set_env_defaults()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from tune import ray_session
    from tune.sweep_config import RayOptions

    base = tiny_config(a.dataset, a.epochs, a.train_per_class)
    runners = [r for r in a.runners.split(",") if r]
    bare, swept = [], {r: [] for r in runners}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base["run"]["cache_root"] = str(tmp / "cache")
        run_bare({**base, "train": {**base["train"], "epochs": 0}}, tmp, "warm")  # fills the caches
        import ray
        t = time.perf_counter()
        ray_session.init(None, RayOptions(num_cpus=a.num_cpus))
        t_init = time.perf_counter() - t
        logging.getLogger("tune").setLevel(logging.WARNING)
        for i in range(a.repeats):
            bare.append(run_bare(base, tmp, f"bare{i}"))
            for r in runners:
                swept[r].append(run_sweep(base, tmp, f"sweep-{r}{i}", a.dataset, a.epochs, a.num_cpus, r))
        t = time.perf_counter()
        ray.shutdown()
        t_down = time.perf_counter() - t
    tb, rb = min(bare, key=lambda x: x[0])
    ab = rb["timings"]["wall_s"]
    print(f"workload: tiny model, {a.dataset}, {a.train_per_class} images/class, {a.epochs} epochs; "
          f"fastest of {a.repeats}")
    print(f"{'':34s} {'wall s':>8s} {'adapt() s':>10s} {'outside adapt() s':>18s} {'vs bare':>8s}")
    print(f"{'fair adapt (command)':34s} {tb:8.1f} {ab:10.1f} {tb - ab:18.1f} {'':>8s}")
    for r in runners:
        ts, as_ = min(swept[r])
        print(f"{'sweep trial, runner ' + r:34s} {ts:8.1f} {as_:10.1f} {ts - as_:18.1f} {ts / tb:7.3f}x")
    print(f"ray.init {t_init:.1f} s and ray.shutdown {t_down:.1f} s are paid once per sweep, not per trial")
    for r in runners:
        ts = min(t for t, _ in swept[r])
        print(f"runner {r}: sweep / adapt {ts / tb:.3f}x  (overhead {100 * (ts / tb - 1):+.1f}%, "
              f"{ts - tb:+.1f} s per trial)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
