"""A sweep trial, run one of two ways (`resources.runner`):

- `trainer` (default): a Tune function (`run_trial`, the trial driver) builds and fits a Ray Train
  TorchTrainer whose workers (`train_worker`) each call `fair.adapt.adapt`. DDP over `num_workers`
  processes, worker-level retries from the last checkpoint. Ray 2.60 runs Train V2, where
  `Tuner(TorchTrainer)` is refused; this driver-builds-trainer shape is the supported one. The library
  does DDP and data sharding itself under torch.distributed, so the workers call adapt() directly.
- `direct`: the Tune trial itself calls adapt() (`run_trial_direct`), one process, reporting and
  checkpointing through Tune. Train starts about seven processes per trial (controller, worker, sync actor,
  placement-group cleaner, dataset manager, ...); on a small node that is tens of seconds per trial
  (docs/sweeps.md, "Overhead"). For single-worker trials (small backbones, fractional GPUs) `direct`
  keeps the same records, checkpoints, resume and retries (trial-level) without that cost.

Both share `adapt_trial`: only where reports go, where the checkpoint comes from, and the rank differ.

Reports: every epoch on every rank (Train requires all ranks to report the same number of times), rank 0
attaches the epoch's checkpoint. The last epoch's report is held back until the final evaluation is done,
so the last result Tune and Optuna see carries the trial's real objective (the record's) plus `final_*`
copies of the record's metrics, and the epoch counter never passes budget.epochs (ASHA's max_t).
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tune import gpu_share, scratch, storage

log = logging.getLogger("tune.trainable")


@dataclass
class TrialPlan:
    """Everything a trial needs besides its sampled values; shipped to the trial and its workers."""
    sweep: str
    storage: str                     # resolved storage URI
    study_configs: dict              # study (method/dataset) -> nested FAIR config (before the searched values)
    objective: str
    num_workers: int
    per_worker: dict
    use_gpu: bool
    backend: str
    worker_max_failures: int
    controller_failure_limit: int
    checkpoints_to_keep: int
    crash_worker_in_epoch: Optional[int] = None
    runner: str = "trainer"          # trainer | direct (see the module docstring)
    hold_in_epoch: Optional[int] = None   # fault injection: rank 0 pauses once in this epoch (node-loss tests)
    hold_s: float = 0.0
    simulate: Optional[dict] = None  # bench.scale: adapt() replaced by tune.simulate's timed stand-in


# ------------------------------------------------------------- the process that runs adapt() (both runners)


class EpochReporter:
    """The `report` callback given to adapt(): epoch rows -> the session's report (ray.train or ray.tune)."""

    def __init__(self, send: Callable[[dict, Optional[Path]], None], objective: str, study: str, epochs: int,
                 resumed_from_epoch: int, crash_in_epoch: Optional[int], crash_marker: Optional[Path],
                 hold: Optional[tuple[int, float, Path]] = None):
        self.send = send
        self.objective, self.study, self.epochs = objective, study, epochs
        self.resumed_from_epoch = resumed_from_epoch
        self.crash_in_epoch, self.crash_marker = crash_in_epoch, crash_marker
        self.hold = hold                             # (epoch, seconds, marker): see _maybe_hold
        self.held: Optional[tuple[dict, Optional[Path]]] = None

    def metrics(self, row: dict) -> dict:
        out = {k: v for k, v in row.items() if isinstance(v, (int, float, str, bool)) or v is None}
        out.update(study=self.study, resumed_from_epoch=self.resumed_from_epoch)
        if row.get(self.objective) is not None:      # absent rather than None: searchers read it as a number
            out["objective"] = row[self.objective]
        return out

    def __call__(self, row: dict, checkpoint_dir: Optional[Path]) -> None:
        self._maybe_hold(row["epoch"])
        self._maybe_crash(row["epoch"])
        if row["epoch"] >= self.epochs:
            self.held = (row, checkpoint_dir)        # reported by finish() with the final record's metrics
            return
        self.send(self.metrics(row), checkpoint_dir)

    def finish(self, record: dict) -> None:
        row, ckpt = self.held if self.held else ({"epoch": self.epochs}, None)
        out = self.metrics(row)
        m = record.get("metrics") or {}
        out.update({f"final_{k}": v for k, v in m.items() if isinstance(v, (int, float)) or v is None})
        if m.get(self.objective) is not None:
            out["objective"] = m[self.objective]     # the record's objective: val split picks the predictor
        self.send(out, ckpt)

    def _maybe_hold(self, epoch: int) -> None:
        """Fault injection (tests): rank 0 pauses once, in epoch `hold[0]` before reporting it, for `hold[1]`
        seconds, after writing the id of its Ray node to the marker `hold[2]`: a test removes that node
        while the trial is mid-epoch (pre-emption), and the resumed attempt does not pause again."""
        if self.hold is None or epoch != self.hold[0] or self.hold[2].exists():
            return
        import time

        import ray
        self.hold[2].parent.mkdir(parents=True, exist_ok=True)
        self.hold[2].write_text(ray.get_runtime_context().get_node_id())
        log.warning("fault injection: holding in epoch %d for %g s", epoch, self.hold[1])
        time.sleep(self.hold[1])

    def _maybe_crash(self, epoch: int) -> None:
        """Fault injection (tests): rank 0 dies hard once, in epoch `crash_in_epoch`, before reporting it."""
        if self.crash_in_epoch is None or epoch != self.crash_in_epoch or self.crash_marker is None:
            return
        if self.crash_marker.exists():
            return
        self.crash_marker.parent.mkdir(parents=True, exist_ok=True)
        self.crash_marker.write_text("crashed\n")
        # ray.train.report only queues a result; the controller picks it up (and registers the checkpoint)
        # at its next poll. Tiny test epochs are shorter than that, so give the previous report time to land,
        # as it would have in any real epoch. (ray.tune.report, under `direct`, is synchronous.)
        import time
        time.sleep(max(2.0, 5 * float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "2"))))
        log.warning("fault injection: worker exits in epoch %d", epoch)
        os._exit(1)


@dataclass
class Session:
    """What differs between a Train worker and a Tune trial that runs adapt() itself."""
    rank: int
    checkpoint: object                                   # the ray Checkpoint to resume from, or None
    send: Callable[[dict, Optional[Path]], None]         # report(metrics, checkpoint_dir)


def _train_session() -> Session:
    """Inside a Ray Train worker: reports and checkpoints go through ray.train."""
    import ray.train

    def send(metrics: dict, checkpoint_dir: Optional[Path]) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        # keep adapt's checkpoints folder: it is adapt's own state, Ray only copies it to storage
        ray.train.report(metrics, checkpoint=ckpt, delete_local_checkpoint_after_upload=False)
    return Session(ray.train.get_context().get_world_rank(), ray.train.get_checkpoint(), send)


def _tune_session() -> Session:
    """Inside a Tune trial (runner `direct`): reports and checkpoints go through ray.tune."""
    import ray.tune

    def send(metrics: dict, checkpoint_dir: Optional[Path]) -> None:
        ckpt = ray.tune.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=ckpt)       # copies to storage; adapt's folder stays
    return Session(0, ray.tune.get_checkpoint(), send)


def _restore_checkpoint(ckpt, work: Path, simulated: bool = False) -> tuple[Optional[Path], int]:
    """Download checkpoint `ckpt` (if any) into `work`; (path of last.pt, its epoch)."""
    if ckpt is None:
        return None, 0
    shutil.rmtree(work, ignore_errors=True)
    ckpt.to_directory(str(work))
    path = work / "last.pt"
    if not path.is_file():
        raise RuntimeError(f"checkpoint {ckpt.path} holds no last.pt")
    if simulated:
        from tune.simulate import checkpoint_epoch
        return path, checkpoint_epoch(path)
    import torch
    epoch = int(torch.load(path, map_location="cpu", weights_only=False)["epoch"])
    return path, epoch


def _adapt_fn(plan: TrialPlan) -> Callable:
    """fair.adapt.adapt, or under a sweep's `simulate:` section its timed stand-in (bench.scale)."""
    if plan.simulate is None:
        from fair.adapt import adapt
        return adapt
    from functools import partial
    from tune.simulate import simulated_adapt
    return partial(simulated_adapt, spec=plan.simulate)


def adapt_trial(payload: dict, session: Session) -> None:
    """One adapt() of the trial's config on this process, resumed from the session's checkpoint; rank 0
    writes the record to the sweep's storage."""
    from fair.config import from_dict, set_by_path
    plan: TrialPlan = payload["plan"]
    trial_id, study, rank = payload["trial_id"], payload["study"], session.rank
    # Each rank has its own, empty folder (tune.scratch): adapt() looks for checkpoints/last.pt in its run
    # folder, and a leftover from a failed attempt must not be picked up instead of the checkpoint Ray hands us.
    work = scratch.claim(plan.sweep, trial_id, rank)
    run_dir = work / "run"
    resume_from, resumed_epoch = _restore_checkpoint(session.checkpoint, work / "resume",
                                                     plan.simulate is not None)
    if resume_from:
        log.info("trial %s rank %d resumes after epoch %d", trial_id, rank, resumed_epoch)

    cfg_dict = payload["config"]
    set_by_path(cfg_dict, "run.name", trial_id)
    set_by_path(cfg_dict, "run.out_dir", str(work))
    set_by_path(cfg_dict, "model.device", trial_device(plan, cfg_dict))
    cfg = from_dict(cfg_dict)

    # faults, once per sweep (the markers live in the sweep's folder on this node): hold (pre-emption tests), crash
    markers = scratch.sweep_dir(plan.sweep)
    hold = (plan.hold_in_epoch, plan.hold_s, markers / "hold.marker") if plan.hold_in_epoch and rank == 0 else None
    reporter = EpochReporter(session.send, plan.objective, study, cfg.train.epochs, resumed_epoch,
                             plan.crash_worker_in_epoch if rank == 0 else None,
                             markers / "crash.marker", hold)
    # a shared GPU (per_worker.GPU < 1): this process keeps to its share, and runs out of memory alone
    cap = gpu_share.apply_memory_cap(float(plan.per_worker.get("GPU", 0)), cfg.model.device)
    record = gpu_share.out_of_memory_guarded(
        lambda: _adapt_fn(plan)(cfg, run_dir, report=reporter, resume_from=resume_from), cap, cfg)
    record["provenance"]["gpu_memory_cap"] = cap.as_dict() if cap else None
    if rank == 0:
        stamp_record(record, plan, trial_id, payload["tune_config"])
        path = storage.write_json(plan.storage, record_key(plan, study, trial_id), record)
        log.info("trial %s: record %s", trial_id, path)
    reporter.finish(record)
    scratch.release()            # the record is in storage and the checkpoints are Ray's


def trial_device(plan: TrialPlan, cfg_dict: dict) -> str:
    """The torch device of this process: the GPU Ray gave it when the trial holds GPUs, else the CPU.
    `model.device: cpu` set in the sweep keeps it on the CPU even then: the GPUs are only a scheduling
    request (logical GPUs of a test cluster, or a node reserved whole for a CPU run)."""
    if not plan.use_gpu or (cfg_dict.get("model") or {}).get("device") == "cpu":
        return "cpu"
    if plan.runner == "direct":
        return "cuda"                      # Ray has set CUDA_VISIBLE_DEVICES for the trial
    import ray.train.torch
    return str(ray.train.torch.get_device())


def train_worker(payload: dict) -> None:
    """Runs in every RayTrainWorker (runner `trainer`)."""
    adapt_trial(payload, _train_session())


# ------------------------------------------------------------------------------------- trial driver


def trial_config(plan: TrialPlan, config: dict) -> dict:
    """A trial's nested FAIR config from its Tune config (tune.searcher.StudySearcher): its study's base
    config with the sampled values, and for a final-seed re-run its seed."""
    from tune.space import apply
    cfg = apply(plan.study_configs[config["study"]], config.get("hparams") or {})
    if config.get("seed") is not None:
        cfg["seed"] = config["seed"]
    return cfg


def record_key(plan: TrialPlan, study: str, trial_id: str) -> str:
    """Where a trial's record goes: under its study's dataset, named by the trial id."""
    from tune.studies import study_dataset
    return storage.record_key(plan.sweep, study_dataset(study), trial_id)


def stamp_record(record: dict, plan: TrialPlan, trial_id: str, config: dict) -> dict:
    """A trial's record as the sweep stores it, from its Tune `config`: named by the trial id, with its
    sweep, trial and study, and its `stage` ("search", or "final" for a re-run of the study's picked
    configuration, which also names that search trial in `picked_from`). `method`, `dataset` and `seed`
    are the record's own (its config's)."""
    from tune.studies import FINAL, stage_of
    record["run_id"] = trial_id
    record["sweep"] = {"name": plan.sweep, "trial_id": trial_id, "study": config["study"]}
    record["stage"] = stage_of(config)
    if record["stage"] == FINAL:
        record["picked_from"] = config["picked_from"]
    return record


def _payload(config: dict, plan: TrialPlan) -> dict:
    """The trial's id, study, Tune config and FAIR config (the study's base config with the sampled values)."""
    import ray.tune
    return {"plan": plan, "trial_id": ray.tune.get_context().get_trial_id(), "study": config["study"],
            "tune_config": dict(config), "config": trial_config(plan, config)}


def run_trial_direct(config: dict, plan: TrialPlan) -> None:
    """The Tune trial runs adapt() itself (runner `direct`); Ray has set CUDA_VISIBLE_DEVICES for it."""
    adapt_trial(_payload(config, plan), _tune_session())


def run_trial(config: dict, plan: TrialPlan) -> None:
    """The Tune trial (runner `trainer`): fit a TorchTrainer whose workers run adapt(); their reports reach
    Tune through tune.train_reports."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from tune.train_reports import ForwardReports, fit_and_forward, reports_queue

    payload = _payload(config, plan)
    trial_id = payload["trial_id"]
    backend = plan.backend if plan.backend != "auto" else ("nccl" if plan.use_gpu else "gloo")
    queue = reports_queue()
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=payload,
        torch_config=TorchConfig(backend=backend),
        scaling_config=ray.train.ScalingConfig(num_workers=plan.num_workers, use_gpu=plan.use_gpu,
                                               resources_per_worker=dict(plan.per_worker)),
        run_config=ray.train.RunConfig(
            # no timestamp: a resumed sweep reruns this trial under the same name, and Train finds the
            # checkpoints of the interrupted attempt there
            name=f"train-{trial_id}",
            storage_path=storage.join(plan.storage, plan.sweep),
            failure_config=ray.train.FailureConfig(max_failures=plan.worker_max_failures,
                                                   controller_failure_limit=plan.controller_failure_limit),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=plan.checkpoints_to_keep),
            callbacks=[ForwardReports(queue)],
        ),
    )
    fit_and_forward(trainer, queue)
