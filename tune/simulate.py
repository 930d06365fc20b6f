"""Simulated trial work: a stand-in for `fair.adapt.adapt` inside a real sweep trial (`python -m bench.scale`).

A sweep with a `simulate:` section runs every trial through the real path (trial driver or direct trial,
EpochReporter, reports and checkpoints through Ray, records through results.store, failure and
stopped-early records, ASHA, the limiter, the progress callback); only adapt() itself is replaced by
`simulated_adapt`, which per epoch waits the epoch's duration, reports a validation objective that is a
fixed, noisy function of the hyperparameters (TPE has a signal to follow, ASHA something to stop), saves a
checkpoint of a given size, and returns a valid `completed` record (fair.record's builder, synthetic
metrics). It imports neither torch nor open_clip: their import is part of the setup time it waits.

The `simulate:` mapping (bench.scale writes it from cluster plan's cost model, already scaled down):
    setup_s: {dataset: s}      model load, prompts, zero-shot evaluation, before epoch 1
    epoch_s: {dataset: s}      one epoch (training + validation)
    eval_s: {dataset: s}       the final evaluation (val and test, every predictor)
    checkpoint_mb: 1.0         bytes of each epoch's last.pt (FAIR's trainable state is small: norm layers)
    noise: 1.0                 std of the objective's noise, in accuracy points
    space: {name: {low, high, log} | {choices: [...]}}   the searched parameters, to place the optimum
    trace_dir: /path           optional: one JSON line per phase and trial (start, end, slot) for bench.scale,
                               and per report its time and the checkpoint upload's share of it
"""
from __future__ import annotations

import json
import math
import os
import pickle
import random
import time
import zlib
from pathlib import Path
from typing import Callable, Optional

ACCURACY_GAIN = 12.0     # points between the worst and the best hyperparameters at the end of training


def _unit(name: str, salt: str) -> float:
    """A fixed number in [0, 1) for (name, salt): where a dataset's optimum of a parameter lies."""
    return (zlib.crc32(f"{salt}/{name}".encode()) % 10007) / 10007


def quality(hparams: dict, space: dict, dataset: str) -> float:
    """How good a configuration is for `dataset`, in [0, 1]: 1 at a fixed, dataset-specific optimum,
    falling off quadratically (numbers, on the log scale when searched so) or by choice (categories)."""
    scores = []
    for name, spec in space.items():
        if name not in hparams:
            continue                         # a conditional parameter not asked for
        v = hparams[name]
        if "choices" in spec:
            choices = list(spec["choices"])
            best = choices[int(_unit(name, dataset) * len(choices))]
            scores.append(1.0 if v == best else 0.4)
            continue
        lo, hi = float(spec["low"]), float(spec["high"])
        if spec.get("log") and lo > 0:
            lo, hi, v = math.log(lo), math.log(hi), math.log(max(float(v), 1e-30))
        x = (float(v) - lo) / (hi - lo) if hi > lo else 0.5
        scores.append(max(0.0, 1.0 - 2.0 * (x - (0.15 + 0.7 * _unit(name, dataset))) ** 2))
    return sum(scores) / len(scores) if scores else 0.5


def objective(hparams: dict, space: dict, dataset: str, epoch: int, epochs: int, noise: float,
              trial_id: str) -> float:
    """Validation accuracy (percent) after `epoch` of `epochs`: a dataset base, plus a gain that grows with
    training and with the configuration's quality, plus noise fixed by (trial, epoch)."""
    base = 40.0 + 40.0 * _unit("base", dataset)
    progress = 1.0 - math.exp(-3.0 * epoch / max(1, epochs))
    rng = random.Random(zlib.crc32(f"{trial_id}/{epoch}".encode()))
    return base + ACCURACY_GAIN * (quality(hparams, space, dataset) - 0.5) * 2 * progress + rng.gauss(0, noise)


class Trace:
    """Appends one JSON line per phase of a trial (start, end, slot) to `<trace_dir>/<trial>.jsonl`, and, as a
    phase of work starts, an open line (`"open": true`, its start) that the phase's own line closes: a reader
    counts the work still running at a progress line or when a run is cut (bench/watch.py)."""

    def __init__(self, trace_dir: Optional[str], trial: str):
        self.path = Path(trace_dir) / f"{trial}.jsonl" if trace_dir else None
        self.slot = _slot() if self.path else ""

    def __call__(self, phase: str, t0: float, t1: float, **extra) -> None:
        self._write({"phase": phase, "t0": t0, "t1": t1, "slot": self.slot, **extra})

    def wait(self, phase: str, seconds: float) -> tuple[float, float]:
        """Sleep `seconds` of simulated work, its start traced as open; (start, end) for the closing line."""
        t0 = time.time()
        self._write({"phase": phase, "t0": t0, "open": True, "slot": self.slot})
        time.sleep(max(0.0, seconds))
        return t0, time.time()

    def _write(self, line: dict) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as fh:
            fh.write(json.dumps(line) + "\n")


_UPLOADS: list[float] = []   # seconds of each checkpoint upload in this process (_time_uploads)


def _time_uploads() -> None:
    """Time each checkpoint upload of this process into _UPLOADS (wraps Ray's StorageContext
    .persist_current_checkpoint once, behaviour unchanged): a traced report is the upload and then the wait
    for the driver to take the result (Tune's function trainables report synchronously)."""
    from ray.train._internal.storage import StorageContext
    orig = StorageContext.persist_current_checkpoint
    if getattr(orig, "timed", False):
        return

    def persist(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return orig(self, *args, **kwargs)
        finally:
            _UPLOADS.append(time.perf_counter() - t)
    persist.timed = True
    StorageContext.persist_current_checkpoint = persist


def _slot() -> str:
    """The node and logical GPUs this process holds (one trial slot on the simulated cluster)."""
    try:
        import ray
        ctx = ray.get_runtime_context()
        return f"{ctx.get_node_id()[:8]}/{','.join(map(str, ray.get_gpu_ids())) or 'cpu' + str(os.getpid())}"
    except Exception:  # noqa: BLE001 - outside Ray (unit tests): no slot
        return f"pid{os.getpid()}"


def _save_checkpoint(folder: Path, epoch: int, rows: list, size_mb: float) -> None:
    """adapt()'s checkpoints/last.pt: the epoch (what a resume reads), the rows, and `size_mb` of payload
    (pickled: torch is not loaded here; tune.trainable reads it with checkpoint_epoch)."""
    folder.mkdir(parents=True, exist_ok=True)
    blob = {"epoch": epoch, "rows": rows, "state": os.urandom(int(size_mb * 2**20))}
    tmp = folder / "last.pt.tmp"
    with open(tmp, "wb") as fh:
        pickle.dump(blob, fh, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, folder / "last.pt")


def _read_checkpoint(path) -> dict:
    with open(path, "rb") as fh:
        return pickle.load(fh)


def checkpoint_epoch(path) -> int:
    """The epoch of a simulated last.pt (what tune.trainable reads before a resume)."""
    return int(_read_checkpoint(path)["epoch"])


def _resumed_rows(resume_from) -> tuple[list, int]:
    if not resume_from:
        return [], 0
    blob = _read_checkpoint(resume_from)
    return list(blob["rows"]), int(blob["epoch"])


def simulated_adapt(cfg, run_dir, report: Optional[Callable] = None, resume_from=None, *, spec: dict) -> dict:
    """adapt()'s contract (config in, epoch reports with checkpoints, completed record out) with waits for
    the work. `spec`: the sweep's `simulate:` mapping (module docstring)."""
    from fair.config import flatten, to_dict
    from fair.record import completed_record, now
    t_start = time.time()
    d = to_dict(cfg)
    dataset, epochs, trial = cfg.data.dataset, cfg.train.epochs, cfg.run.name or "trial"
    hparams = {k: v for k, v in flatten(d).items() if k in spec.get("space", {})}
    trace = Trace(spec.get("trace_dir"), trial)
    if trace.path is not None and report is not None:
        _time_uploads()
    run_dir = Path(run_dir)
    rows, start = _resumed_rows(resume_from)
    setup = trace.wait("setup", spec["setup_s"][dataset])
    trace("setup", *setup)
    noise = float(spec.get("noise", 1.0))
    for epoch in range(start + 1, epochs + 1):
        t0, t1 = trace.wait("epoch", spec["epoch_s"][dataset])
        val = objective(hparams, spec.get("space", {}), dataset, epoch, epochs, noise, trial)
        row = {"epoch": epoch, "loss": 5.0 - val / 25, "val_top1": val, "head_agreement": val / 100,
               "epoch_s": t1 - t0, "images_per_s": None, "bad_images": 0}
        rows.append(row)
        _save_checkpoint(run_dir / "checkpoints", epoch, rows, float(spec.get("checkpoint_mb", 1.0)))
        trace("epoch", t0, t1, epoch=epoch)
        if report is not None:
            n, r0 = len(_UPLOADS), time.time()
            report(row, run_dir / "checkpoints")
            trace("report", r0, time.time(), epoch=epoch, upload_s=sum(_UPLOADS[n:]))
    ev = trace.wait("eval", spec["eval_s"][dataset])
    trace("eval", *ev)
    val = rows[-1]["val_top1"] if rows else objective(hparams, spec.get("space", {}), dataset, 0, epochs, noise, trial)
    test = val - 1.0
    zeroshot = 40.0 + 40.0 * _unit("base", dataset)
    metrics = {"predictor": "global", "val_top1": val, "val_top1_global": val, "test_top1": test,
               "test_top1_global": test, "test_mean_per_class": test, "zeroshot_top1": zeroshot,
               "gain_over_zeroshot": test - zeroshot, "head_agreement": val / 100, "final_loss": rows[-1]["loss"]
               if rows else None, "pseudo_label_acc": None, "val_size": cfg.data.val_per_class}
    wall = time.time() - t_start
    timings = {"wall_s": wall, "setup_s": setup[1] - setup[0], "train_s": sum(r["epoch_s"] for r in rows),
               "eval_s": ev[1] - ev[0], "gpu_s": 0.0, "images_per_s": None, "peak_mem_mb": None,
               "epochs": len(rows)}
    provenance = {"packages": {}, "git_commit": None, "host": "simulated", "device": "simulated",
                  "num_processes": 1, "created_at": now(), "pid": os.getpid()}
    return completed_record(cfg, metrics, timings, provenance, [], rows)
