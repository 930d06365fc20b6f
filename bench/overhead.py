"""Orchestration overhead of a sweep: the same tiny config through `fair adapt` and through a 1-trial sweep.

    python -m bench.overhead [--epochs N] [--dataset fashion_mnist] [--num-cpus 2]

Prints both wall times and their ratio. The sweep side includes everything a trial costs (Tune trial actor,
Train controller, worker process start, per-epoch reports, checkpoint upload, record write) but not
ray.init / ray.shutdown, which a sweep pays once; those are printed separately.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path


def tiny_config(dataset: str, epochs: int) -> dict:
    return {"method": "fair", "seed": 0,
            "model": {"name": "fair-tiny-vit", "pretrained": "", "device": "cpu"},
            "data": {"dataset": dataset, "train_per_class": 8, "test_per_class": 4, "val_per_class": 3,
                     "num_workers": 0},
            "train": {"epochs": epochs, "batch_size": 16}, "local": {"num_crops": 2, "top_k": 2},
            "eval": {"local_views": 2, "batch_size": 64}, "run": {"progress": False}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.overhead", description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--num-cpus", type=float, default=2)
    a = p.parse_args(argv)
    from tune.cluster import set_env_defaults
    set_env_defaults()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from fair.adapt import adapt
    from fair.config import from_dict
    from tune.sweep import preflight, run
    from tune.sweep_config import RayOptions, load_sweep

    base = tiny_config(a.dataset, a.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        base["run"]["cache_root"] = str(Path(tmp) / "cache")
        adapt(from_dict({**base, "train": {**base["train"], "epochs": 0}}), Path(tmp) / "warm")  # warm caches
        t = time.perf_counter()
        adapt(from_dict(base), Path(tmp) / "adapt")
        t_adapt = time.perf_counter() - t

        sweep = load_sweep(None, mapping={
            "name": "overhead", "datasets": [a.dataset], "base": base, "space": {"train.lr": {"choice": [1e-4]}},
            "budget": {"trials_per_dataset": 1, "epochs": a.epochs}, "storage": str(Path(tmp) / "sweeps"),
            "resources": {"num_workers": 1, "per_worker": {"CPU": 1}},
            "ray": {"num_cpus": a.num_cpus, "controller_failure_limit": 0, "summary_every_s": 3600}})
        uri = preflight(sweep)
        import ray
        from tune import cluster
        t = time.perf_counter()
        cluster.init(None, RayOptions(num_cpus=a.num_cpus))
        t_init = time.perf_counter() - t
        logging.getLogger("tune").setLevel(logging.WARNING)
        t = time.perf_counter()
        result = run(sweep, uri)
        t_sweep = time.perf_counter() - t
        t = time.perf_counter()
        ray.shutdown()
        t_down = time.perf_counter() - t
    if result.errored:
        print("the sweep trial errored")
        return 1
    print(f"fair adapt ({a.epochs} epochs, tiny model): {t_adapt:6.1f} s")
    print(f"1-trial sweep (same config):          {t_sweep:6.1f} s   (+ ray.init {t_init:.1f} s, shutdown {t_down:.1f} s)")
    print(f"ratio sweep / adapt: {t_sweep / t_adapt:.2f}x  (overhead {t_sweep - t_adapt:+.1f} s per trial)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
