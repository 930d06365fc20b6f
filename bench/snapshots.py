"""What Tune's forced experiment-state snapshots cost the sweep driver, side by side in one run.

    python -m bench.snapshots [--trials 50 200] [--epochs 3] [--storage DIR_OR_S3_URI]

With `CheckpointConfig(num_to_keep)` set, Tune snapshots its whole experiment state (every trial, the
searcher) after each trial checkpoint, so that a restored sweep never points at a deleted checkpoint. Under
`resources.runner: direct` every epoch of every trial checkpoints through Tune (the `trainer` runner's
checkpoints are Ray Train's and force nothing). This runs the same sweep of instant dummy trials (Optuna,
2 in flight, a checkpoint per epoch) with `num_to_keep=1` and without it, and prints the wall times, their
ratio, and the cost of one forced snapshot early and late in the run (it grows with the trials held).
Dummy trials take no time, so the ratio is the worst case: with real epochs the same snapshot cost is
spread over seconds to minutes of training.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def _instrument(samples: list) -> None:
    """Time each forced `sync_up_experiment_state` of the driver into `samples` (seconds)."""
    from ray.tune.execution import experiment_state
    orig = experiment_state._ExperimentCheckpointManager.sync_up_experiment_state

    def timed(self, save_fn, force=False, wait=False):
        forced = force or self._should_force_sync_up
        t = time.perf_counter()
        out = orig(self, save_fn, force=force, wait=wait)
        if forced:
            samples.append(time.perf_counter() - t)
        return out
    experiment_state._ExperimentCheckpointManager.sync_up_experiment_state = timed


def _dummy_trial(config: dict) -> None:
    from ray import tune
    d = tempfile.mkdtemp()
    with open(os.path.join(d, "last.pt"), "w") as f:
        f.write("x")
    for epoch in range(config["epochs"]):
        tune.report({"val_top1": config["a"] * epoch}, checkpoint=tune.Checkpoint.from_directory(d))


def run_once(trials: int, epochs: int, keep: int | None, storage: str, samples: list) -> float:
    """Wall seconds of one Tune run of `trials` dummy trials; forced snapshot times appended to `samples`."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch
    del samples[:]
    t0 = time.perf_counter()
    tune.Tuner(
        _dummy_trial,
        param_space={"a": tune.uniform(0, 1), "b": tune.choice(["x", "y"]), "epochs": epochs},
        tune_config=tune.TuneConfig(num_samples=trials, metric="val_top1", mode="max", reuse_actors=True,
                                    search_alg=ConcurrencyLimiter(OptunaSearch(), 2)),
        run_config=tune.RunConfig(storage_path=storage, name=f"snap-{trials}-{keep}-{time.time_ns()}",
                                  verbose=0, checkpoint_config=tune.CheckpointConfig(num_to_keep=keep)),
    ).fit()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, nargs="+", default=[50, 200])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--storage", default=None, help="local folder or s3:// URI (default: a temporary folder)")
    a = ap.parse_args(argv)
    import logging

    import ray
    logging.getLogger("ray").setLevel(logging.ERROR)
    storage = a.storage or tempfile.mkdtemp(prefix="fair-snapshots-")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    samples: list = []
    _instrument(samples)
    rows = []
    for n in a.trials:
        kept = run_once(n, a.epochs, 1, storage, samples)
        forced, k = list(samples), max(1, len(samples) // 5)
        free = run_once(n, a.epochs, None, storage, samples)
        rows.append((n, kept, free, len(forced), sum(forced), sum(forced[:k]) / k, sum(forced[-k:]) / k))
    ray.shutdown()
    print(f"{'trials':>6} {'keep=1 s':>9} {'no keep s':>9} {'ratio':>6} {'forced':>6} {'in them s':>9} "
          f"{'first ms':>8} {'last ms':>8}")
    for n, kept, free, nf, tot, first, last in rows:
        print(f"{n:>6} {kept:>9.1f} {free:>9.1f} {kept / free:>5.2f}x {nf:>6} {tot:>9.2f} {first * 1e3:>8.1f} "
              f"{last * 1e3:>8.1f}")
    print(f"({a.epochs} checkpoints per trial; 'first'/'last': mean forced snapshot over the first/last fifth)")


if __name__ == "__main__":
    sys.exit(main())
