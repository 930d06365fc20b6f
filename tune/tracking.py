"""Experiment trackers of a sweep: MLflow and Weights & Biases runs per trial, TensorBoard event files.

    tracking:
      mlflow: {tracking_uri: http://mlflow:5000, experiment: null}   # null: the sweep's name
      wandb: {project: fair, entity: null, mode: online}              # or offline: run folders, `wandb sync`

Each tracker is off unless its section is there, and is one of Ray's own logger callbacks on the driver
(`MLflowLoggerCallback`, `WandbLoggerCallback`) with this sweep's conventions: one tracker run per trial,
named `<sweep>/<method>/<dataset>/<trial id>`, with the trial's searched values (its method and dataset) as parameters,
every epoch's metrics (step: the epoch) and the final `final_*` ones, the trial's record as an artifact
(`record.json`), and the sweep's name and git commit as tags. A resumed sweep continues the same runs
(MLflow: found by the trial's tag; W&B: the trial id is the run id).

TensorBoard needs no section: Ray's `TBXLoggerCallback` writes every trial's event files into its trial
folder under `<storage>/<name>/`, so `tensorboard --logdir <storage>/<name>` shows a sweep.

Bad input is refused in one line before Ray starts (`check`): an unknown tracker is an unknown sweep key,
a tracker whose package is missing names the extra to install, and a tracking server that cannot be
reached (or a W&B login that is missing) is found by one request. A tracker that fails during the sweep
is logged once and switched off for the rest of the run (`Guarded`): it never fails a trial, and the
records in the sweep's storage stay complete.
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Optional

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor
from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback

from fair.errors import FairError
from tune.studies import split_study, stage_of

log = logging.getLogger("tune.tracking")
EXTRA = "pip install 'fair-sweeps[track]'"
PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}          # tracker -> the module its client imports
RECORD_ARTIFACT = "record.json"
# Tune's bookkeeping in every result: not metrics (W&B's callback files most of them under config itself)
_NOT_METRICS = {"config", "done", "should_checkpoint", "timestamp", "pid", "date", "hostname", "node_ip",
                "trial_id", "experiment_id", "experiment_tag", "checkpoint_dir_name", "study"}
# a tracking server that goes away mid-sweep stalls the driver's loop for the length of the client's
# retries once (then the tracker is off): MLflow's defaults (7 retries, 120 s each) are minutes
_MLFLOW_DRIVER_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


# ------------------------------------------------------------------------------ settings and checks

def mlflow_uri(m) -> str:
    """The MLflow tracking URI of a `tracking.mlflow` section (or MLFLOW_TRACKING_URI)."""
    uri = m.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        raise FairError("sweep key 'tracking.mlflow.tracking_uri' is not set (nor MLFLOW_TRACKING_URI); set it to "
                        "a server (http://host:5000) or a local store (sqlite:////abs/path/mlflow.db)")
    return uri


def wandb_project(w) -> str:
    """The W&B project of a `tracking.wandb` section (or WANDB_PROJECT)."""
    project = w.project or os.environ.get("WANDB_PROJECT")
    if not project:
        raise FairError("sweep key 'tracking.wandb.project' is not set (nor WANDB_PROJECT); name the W&B project")
    return project


def enabled(tracking) -> list[str]:
    """Names of the trackers a `tracking` section turns on."""
    return [name for name in PACKAGES if getattr(tracking, name) is not None]


def check(tracking) -> None:
    """Before Ray starts, on the driver's machine: every tracker's package installed, its settings
    complete, its server reachable. One-line FairErrors."""
    for name in enabled(tracking):
        try:
            __import__(PACKAGES[name])
        except ImportError:
            raise FairError(f"sweep key 'tracking.{name}' needs the {PACKAGES[name]} package on this machine; "
                            f"install the tracking extra: {EXTRA}") from None
    if tracking.mlflow is not None:
        _check_mlflow(mlflow_uri(tracking.mlflow))
    if tracking.wandb is not None:
        wandb_project(tracking.wandb)
        if tracking.wandb.mode == "online":
            _check_wandb()


@contextmanager
def _env(values: dict):
    """Environment variables set for the length of a block (and restored after)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _scrub(text: str) -> str:
    """Text with the user:password@ of any URL in it taken out."""
    return re.sub(r"//[^/@\s]+@", "//***@", text)


def _first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message as one short, scrubbed line."""
    text = _scrub(str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _check_mlflow(uri: str) -> None:
    """One request to the tracking store, without the client's minutes of retries."""
    from mlflow.tracking import MlflowClient
    try:
        with _env({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure of the store is the same answer: not usable
        raise FairError(f"sweep key 'tracking.mlflow.tracking_uri' {_scrub(uri)} cannot be used: "
                        f"{type(e).__name__}: {_first_line(e)}; start the server or fix the URI") from None


def _check_wandb() -> None:
    """The API key and the server (WANDB_BASE_URL) of an online W&B, with one request."""
    import wandb
    try:
        wandb.Api(timeout=10).viewer
    except Exception as e:  # noqa: BLE001 - no key, a bad key or no server: the same fix
        raise FairError(f"W&B (tracking.wandb, mode online) cannot be used: {type(e).__name__}: {_first_line(e)}; "
                        f"set WANDB_API_KEY (or run `wandb login`), or set tracking.wandb.mode=offline") from None


# ------------------------------------------------------------------------------------ one trial's run

class SweepRuns:
    """What every tracker says about a trial: its run name, parameters, tags and record."""

    def __init__(self, sweep: str, storage: str, git_commit: Optional[str]):
        self.sweep, self.storage, self.git_commit = sweep, storage, git_commit

    @staticmethod
    def study(trial) -> str:
        """The trial's study, `<method>/<dataset>`."""
        return (trial.config or {}).get("study", "?/?")

    def dataset(self, trial) -> str:
        return split_study(self.study(trial))[1]

    def method(self, trial) -> str:
        return split_study(self.study(trial))[0]

    def name(self, trial) -> str:
        return f"{self.sweep}/{self.study(trial)}/{trial.trial_id}"

    def params(self, trial) -> dict:
        """The trial's searched values by their dotted FAIR keys, its method and dataset."""
        return {"method": self.method(trial), "dataset": self.dataset(trial),
                **((trial.config or {}).get("hparams") or {})}

    def tags(self, trial) -> dict:
        return {"sweep": self.sweep, "method": self.method(trial), "dataset": self.dataset(trial),
                "stage": stage_of(trial.config), "trial_id": trial.trial_id,
                "git_commit": self.git_commit or "unknown"}

    @staticmethod
    def metrics(result: dict) -> dict:
        return {k: v for k, v in result.items() if k not in _NOT_METRICS}

    @staticmethod
    def step(result: dict) -> int:
        from ray.tune.result import TRAINING_ITERATION
        return int(result.get("epoch") or result.get(TRAINING_ITERATION) or 0)

    def record(self, trial) -> Optional[dict]:
        """The trial's record in the sweep's storage (completed, or failed: FailedTrialRecords runs first);
        None for a trial stopped early, which has none."""
        from results.store import MissingKey
        from tune import storage
        try:
            return storage.read_json(self.storage, storage.record_key(self.sweep, self.dataset(trial), trial.trial_id))
        except MissingKey:
            return None


class MLflowRuns(MLflowLoggerCallback):
    """Ray's MLflow callback with this sweep's run names, parameters, tags, epoch steps and record artifact;
    a resumed trial continues its run."""

    def __init__(self, tracking_uri: str, experiment: str, runs: SweepRuns):
        super().__init__(tracking_uri, experiment_name=experiment)
        self.runs = runs

    def setup(self, *args, **kwargs):
        for k, v in _MLFLOW_DRIVER_ENV.items():
            os.environ.setdefault(k, v)
        self.mlflow_util.setup_mlflow(tracking_uri=self.tracking_uri, experiment_name=self.experiment_name,
                                      artifact_location=_artifact_location(self.tracking_uri))
        self.tags, self._trial_runs = {}, {}

    def log_trial_start(self, trial):
        if trial in self._trial_runs:          # a trial retried by Tune: the same run
            return
        run_id = self._existing_run(trial.trial_id)
        if run_id is None:
            from mlflow.entities import Param
            run_id = self.mlflow_util.start_run(run_name=self.runs.name(trial), tags=self.runs.tags(trial)).info.run_id
            params = [Param(k, str(v)) for k, v in self.runs.params(trial).items()]
            self.mlflow_util._get_client().log_batch(run_id, params=params)
        self._trial_runs[trial] = run_id

    def _existing_run(self, trial_id: str) -> Optional[str]:
        """The run of this trial from before a resume, if any (trial ids are unique per sweep)."""
        client = self.mlflow_util._get_client()
        found = client.search_runs([self.mlflow_util.experiment_id], max_results=1,
                                   filter_string=f"tags.sweep = '{self.runs.sweep}' and tags.trial_id = '{trial_id}'")
        return found[0].info.run_id if found else None

    def log_trial_result(self, iteration, trial, result):
        if trial not in self._trial_runs:
            self.log_trial_start(trial)
        # one request per result (Ray's callback makes one per metric: seconds per epoch on a busy store)
        from mlflow.entities import Metric
        now, step = int(time.time() * 1000), self.runs.step(result)
        metrics = [Metric(k, float(v), now, step) for k, v in self.runs.metrics(result).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.mlflow_util._get_client().log_batch(self._trial_runs[trial], metrics=metrics)

    def log_trial_end(self, trial, failed: bool = False):
        if trial not in self._trial_runs:
            return
        run_id = self._trial_runs.pop(trial)
        record = self.runs.record(trial)
        if record is not None:
            self.mlflow_util._get_client().log_text(run_id, json.dumps(record, indent=1, default=str),
                                                    RECORD_ARTIFACT)
        self.mlflow_util.end_run(run_id=run_id, status="FAILED" if failed else "FINISHED")


def _artifact_location(uri: str) -> Optional[str]:
    """A local store keeps its artifacts beside its database (MLflow's default is the driver's working
    folder); a server decides for itself."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).expanduser().resolve().parent / "mlartifacts").as_uri()
    return None


class _RecordLoggingActor(_WandbLoggingActor):
    """Ray's W&B logging actor (one per trial, on the driver's node). Checkpoints are not uploaded, so the
    queue's checkpoint item carries the trial's record file instead: logged as an artifact."""

    def run(self):
        try:
            super().run()                  # logs until the END item, then wandb.finish()
        finally:
            # Ray kills this actor as soon as run() returns, so W&B's atexit teardown never runs; without it
            # the W&B service process can die before it has written the run's last records to disk
            self._wandb.teardown()

    def _handle_checkpoint(self, path: str):
        artifact = self._wandb.Artifact(name=f"record-{self.kwargs.get('id')}", type="record")
        artifact.add_file(path, name=RECORD_ARTIFACT)    # copied into W&B's staging area here
        self._wandb.log_artifact(artifact)
        Path(path).unlink(missing_ok=True)


class WandbRuns(WandbLoggerCallback):
    """Ray's W&B callback with this sweep's run names (run id: the trial id), group (the sweep), job type
    (the dataset), tags, config and record artifact. Run folders go to `<storage>/<name>/wandb/` for a
    local storage (else W&B's own default, WANDB_DIR or ./wandb)."""

    _logger_actor_cls = _RecordLoggingActor

    def __init__(self, project: str, entity: Optional[str], mode: str, runs: SweepRuns, folder: Optional[str]):
        super().__init__(project=project, entity=entity, mode=mode, upload_timeout=300)
        self.mode, self.runs, self.folder = mode, runs, folder

    def setup(self, *args, **kwargs):
        if self.mode == "online":      # the API key (Ray checks it; offline needs none)
            super().setup(*args, **kwargs)

    def log_trial_start(self, trial):
        if self.folder:
            Path(self.folder).mkdir(parents=True, exist_ok=True)
        config = {**self.runs.params(trial), "sweep": self.runs.sweep, "git_commit": self.runs.git_commit}
        tags = [t[:64] for t in (f"sweep:{self.runs.sweep}", f"study:{self.runs.study(trial)}",
                                 f"git:{(self.runs.git_commit or 'unknown')[:12]}")]    # W&B's limit: 64
        self._start_logging_actor(
            trial, [*self._exclude_results, *(_NOT_METRICS - set(self.AUTO_CONFIG_KEYS))],
            id=trial.trial_id, name=self.runs.name(trial), resume="allow", allow_val_change=True,
            project=self.project, group=self.runs.sweep, job_type=self.runs.study(trial), tags=tags, config=config,
            **({"dir": self.folder} if self.folder else {}), **self.kwargs)

    def log_trial_end(self, trial, failed: bool = False):
        record = self.runs.record(trial)
        if record is not None and trial in self._trial_queues:
            fd, path = tempfile.mkstemp(prefix=f"record-{trial.trial_id}-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(record, f, indent=1, default=str)
            self._trial_queues[trial].put((_QueueItem.CHECKPOINT, path))
        super().log_trial_end(trial, failed)


# ------------------------------------------------------------------------------------- the callbacks

class Guarded(Callback):
    """A tracker's callback that can fail without failing the sweep: its first exception is logged once and
    the tracker is off for the rest of this run. (An exception in a driver callback would end the whole
    Tune run.) The tracker is built in setup(), so the Tuner's saved state holds only its settings."""

    def __init__(self, name: str, build):
        self.name, self.build = name, build
        self.inner: Optional[Callback] = None
        self.off = False

    def __getstate__(self) -> dict:
        return {**self.__dict__, "inner": None, "off": False}

    def _call(self, hook: str, *args, **kwargs) -> None:
        if self.off:
            return
        try:
            if self.inner is None:
                self.inner = self.build()
            getattr(self.inner, hook)(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - a tracker never takes the sweep down
            self.off = True
            log.warning("tracker %s failed (%s: %s); it is off for the rest of this sweep, whose trials and "
                        "records are not affected", self.name, type(e).__name__, _first_line(e))

    # every hook Tune calls on a callback, forwarded through _call
    def setup(self, *a, **k): self._call("setup", *a, **k)                              # noqa: E704
    def on_step_begin(self, *a, **k): self._call("on_step_begin", *a, **k)              # noqa: E704
    def on_step_end(self, *a, **k): self._call("on_step_end", *a, **k)                  # noqa: E704
    def on_trial_start(self, *a, **k): self._call("on_trial_start", *a, **k)            # noqa: E704
    def on_trial_restore(self, *a, **k): self._call("on_trial_restore", *a, **k)        # noqa: E704
    def on_trial_save(self, *a, **k): self._call("on_trial_save", *a, **k)              # noqa: E704
    def on_trial_result(self, *a, **k): self._call("on_trial_result", *a, **k)          # noqa: E704
    def on_trial_complete(self, *a, **k): self._call("on_trial_complete", *a, **k)      # noqa: E704
    def on_trial_recover(self, *a, **k): self._call("on_trial_recover", *a, **k)        # noqa: E704
    def on_trial_error(self, *a, **k): self._call("on_trial_error", *a, **k)            # noqa: E704
    def on_checkpoint(self, *a, **k): self._call("on_checkpoint", *a, **k)              # noqa: E704
    def on_experiment_end(self, *a, **k): self._call("on_experiment_end", *a, **k)      # noqa: E704


@contextmanager
def torch_hidden():
    """Imports made inside see no torch unless it is loaded already. tensorboardX imports torch only to
    accept its tensors, which the driver never hands it (Tune logs floats); loading torch there would cost
    the sweep's driver ~460 MB of resident memory (the CUDA build) for nothing. Trials import it anyway."""
    if "torch" in sys.modules:
        yield
        return
    sys.modules["torch"] = None                 # `import torch` raises ImportError, as if not installed
    try:
        yield
    finally:
        if "torch" in sys.modules and sys.modules["torch"] is None:
            del sys.modules["torch"]


def callbacks(cfg, uri: str) -> list[Callback]:
    """The Tune callbacks of a sweep's trackers: TensorBoard always, MLflow and W&B when configured (after
    the sweep's own callbacks, so a failed trial's record is written before a tracker reads it)."""
    from fair.record import git_commit
    from results.store import s3_uri
    t = cfg.tracking
    runs = SweepRuns(cfg.name, uri, git_commit())
    with torch_hidden():
        out: list[Callback] = [TBXLoggerCallback()]
    if t.mlflow is not None:
        target, experiment = mlflow_uri(t.mlflow), t.mlflow.experiment or cfg.name
        out.append(Guarded("mlflow", partial(MLflowRuns, target, experiment, runs)))
    if t.wandb is not None:
        w, project = t.wandb, wandb_project(t.wandb)
        local = s3_uri(uri) is None and "://" not in uri
        folder = None if os.environ.get("WANDB_DIR") or not local else str(Path(uri) / cfg.name)
        out.append(Guarded("wandb", partial(WandbRuns, project, w.entity, w.mode, runs, folder)))
    if out[1:]:
        log.info("tracking sweep %s with %s (one run per trial)", cfg.name, ", ".join(enabled(t)))
    return out
