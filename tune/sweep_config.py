"""The sweep file: datasets, base FAIR config, search space, budget, resources, storage, objective.

    name: demo                                  # a plain path segment: <storage>/<name>/...
    datasets: [fashion_mnist, fashion_mnist_shifted]
    base: {model: {...}, data: {...}}           # inline FAIR config, or a path to a FAIR YAML (relative to
                                                # the sweep file)
    per_dataset: {fashion_mnist_shifted: {data: {val_per_class: 5}}}   # merged over base for one dataset
    space: default                              # the space of base.method (one method): a mapping, see tune.space
    methods: {fair: default, selftrain: {...}}  # or several methods, each with its own space (tune.studies):
                                                # one Optuna study per method x dataset, equal budgets
    search: {sampler: tpe, seed: 0}             # tpe | tpe-multivariate | random; order: critical_path | round_robin
    budget: {trials_per_dataset: 8, epochs: 10, early_stopping: {grace_period: 2, reduction_factor: 3},
             final_seeds: 3,                    # each study's best configuration re-run with 3 new seeds
             max_concurrent: null}              # null: as many trials as the resources allow (required
                                                # with check_cluster false: `fair cluster plan` prints it)
    resources: {num_workers: 1, per_worker: {CPU: 1}, trial_driver_cpu: 0.01, backend: auto,
                check_cluster: true,            # false on an autoscaling cluster that starts small
                runner: trainer}                # or direct: adapt() inside the Tune trial (1 worker)
    objective: {metric: val_top1, mode: max}    # or head_agreement (label-free)
    storage: ./sweeps                           # or s3://bucket/prefix (AWS_ENDPOINT_URL honoured)
    storage_shared: false                       # true: the local storage path is a shared file system on
                                                # every node (else refused on a multi-node cluster)
    ray: {num_cpus: null, worker_start_timeout_s: 60, controller_failure_limit: -1,
          worker_max_failures: 2, trial_max_failures: 1, summary_every_s: 60,
          autoscaling_config: ~/ray_bootstrap_config.yaml}   # node types a trial must fit (autoscaling)
    tracking: {mlflow: {tracking_uri: http://mlflow:5000, experiment: null},   # off unless named
               wandb: {project: fair, entity: null, mode: online}}             # (tune.tracking)
    optuna: {storage: null}                     # the studies' Optuna storage: null = <storage>/<name>/optuna.db,
                                                # or postgresql://user@host/db (tune.optuna_storage)

This module is the one reader of sweep files (`fair sweep` and `fair cluster` both read them here).
Reading applies `--set key=value` overrides (dotted, to the sweep file itself) and `--smoke-test`, and
builds the typed SweepConfig with fair.config.build (types, allowed values, unknown keys: FairError, one
line, naming the key); loading then checks everything else that can be checked without Ray.
"""
from __future__ import annotations

import copy
import logging
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from fair.config import (FairConfig, build, deep_merge, from_dict, merge_overrides, needs_descriptions, read_yaml,
                         require)
from fair.errors import FairError
from tune import studies
from tune.space import SearchSpace, parse_space, validate_against

log = logging.getLogger("tune.sweep_config")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class EarlyStopping:
    """ASHA, one instance per dataset (accuracies of different datasets are not comparable)."""
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass
class Budget:
    trials_per_dataset: int = 8            # search trials per study (method x dataset)
    epochs: int = 15                       # sets train.epochs of every trial
    max_steps_per_epoch: Optional[int] = None
    early_stopping: Optional[EarlyStopping] = None
    max_concurrent: Optional[int] = None   # None: bounded by resources only
    final_seeds: int = 3                   # re-runs of each study's best configuration: seeds seed+1..seed+n


@dataclass
class Resources:
    num_workers: int = 1                   # DDP processes per trial
    per_worker: dict[str, float] = field(default_factory=lambda: {"CPU": 1}, metadata={
        "note": "it maps resource names to numbers, e.g. {CPU: 2, GPU: 0.25}"})
    trial_driver_cpu: float = 0.01         # the Tune function that drives a TorchTrainer (must be > 0)
    backend: Literal["auto", "gloo", "nccl"] = "auto"   # auto: nccl with GPUs, else gloo
    check_cluster: bool = True             # refuse requests the cluster cannot hold right now
    runner: Literal["trainer", "direct"] = "trainer"    # trainer: a Ray Train TorchTrainer per trial |
    #                                        direct: the Tune trial runs adapt() itself (1 worker; no Train)

    @property
    def use_gpu(self) -> bool:
        return self.per_worker.get("GPU", 0) > 0

    @property
    def gpus(self) -> float:
        """GPUs one trial holds (0.25: four trials share a GPU)."""
        return self.num_workers * float(self.per_worker.get("GPU", 0))

    def per_trial(self) -> dict[str, float]:
        """Everything one trial holds: its driver plus its workers (what decides concurrency).
        Under the `direct` runner the trial is its one worker: no separate driver."""
        out = {k: float(v) * self.num_workers for k, v in self.per_worker.items() if v}
        if self.runner != "direct":
            out["CPU"] = out.get("CPU", 0.0) + self.trial_driver_cpu
        return out


@dataclass
class Objective:
    metric: Literal["val_top1", "head_agreement"] = field(
        default="val_top1", metadata={"note": "test accuracy never drives the search"})
    mode: Literal["max", "min"] = "max"


@dataclass
class Search:
    sampler: Literal["tpe", "tpe-multivariate", "random"] = "tpe"
    seed: int = 0
    # which study gets the next free slot (tune.study_order): critical_path ends the longest studies' search
    # in time for their final re-runs; round_robin runs fewer trials of a study at once
    order: Literal["critical_path", "round_robin"] = "critical_path"
    # the most search trials of one study in flight at once, as a share of its search budget (at least 1):
    # a study that runs most of its trials at once suggests them before any has ended, and its sampler is
    # then random search (bench.search_concurrency: 0.4 costs nothing measurable, 0.8 all TPE's gain). A study
    # at its cap takes a slot only when no other study can use it: the cap never idles a slot
    max_running_share: float = 0.4
    # a slot that no study can use (the sweep's tail) runs a final of a study's current pick before its last
    # search trials end; a later pick supersedes it (stopped, its seed run again): tune.searcher
    early_finals: bool = True
    # with early stopping, those finals may also re-run, beside the pick's, a search trial still running once
    # it has passed ASHA's last rung ahead of the pick there (no rung stops it any more): if it ends the best,
    # the chain is the pick up to that rung, then its final; if not, its finals are superseded (tune.searcher)
    speculative_finals: bool = True

    def max_running(self, trials: int) -> int:
        """The cap on one study's search trials in flight, for a search budget of `trials` per study."""
        return max(1, int(self.max_running_share * trials + 1e-9))

    def seed_for(self, dataset: str) -> int:
        """Each study its own seed, stable when datasets are added or reordered."""
        return (self.seed * 1_000_003 + zlib.crc32(dataset.encode())) % (2**31)


@dataclass
class RayOptions:
    num_cpus: Optional[float] = None       # local clusters only; None: all cores
    worker_start_timeout_s: float = 60.0   # RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S
    controller_failure_limit: int = -1     # Train controller retries of worker-group start (-1: forever)
    worker_max_failures: int = 2           # a trial's workers restarted from the last checkpoint
    trial_max_failures: int = 1            # Tune retries of a whole trial
    summary_every_s: float = 60.0          # progress summary table period
    checkpoints_to_keep: int = 2
    autoscaling_config: str = "~/ray_bootstrap_config.yaml"   # an autoscaling cluster's launcher config
    #                                      (where `ray up` puts it on the head): its node types must hold a trial
    reuse_actors: bool = False             # a finished trial's process runs the next trial (bench.scale)


@dataclass
class Faults:
    """Fault injection for tests: kill rank 0 once per sweep (on a node), in the first trial to reach epoch
    `crash_worker_in_epoch` (after the previous epoch's checkpoint was reported); or pause rank 0 once per
    sweep, `hold_s` seconds in epoch `hold_in_epoch`, writing its node id to `hold.marker` in the sweep's
    scratch folder (a test removes that node: pre-emption)."""
    crash_worker_in_epoch: Optional[int] = None
    hold_in_epoch: Optional[int] = None
    hold_s: float = 60.0


@dataclass
class MLflowTracking:
    tracking_uri: Optional[str] = None     # None: MLFLOW_TRACKING_URI (checked before the first trial)
    experiment: Optional[str] = None       # None: the sweep's name


@dataclass
class WandbTracking:
    project: Optional[str] = None          # None: WANDB_PROJECT
    entity: Optional[str] = None           # None: the API key's default entity
    mode: Literal["online", "offline", "disabled"] = "online"   # offline: run folders to `wandb sync` later


@dataclass
class TrackingConfig:
    """Experiment trackers, each off unless its section is present: one tracker run per trial
    (tune.tracking). TensorBoard event files are written for every sweep regardless."""
    mlflow: Optional[MLflowTracking] = None
    wandb: Optional[WandbTracking] = None


@dataclass
class OptunaOptions:
    """Where the Optuna studies live (tune.optuna_storage): null, a SQLite file the sweep keeps beside its
    state; or a database URL (password from the environment: PGPASSWORD or ${VAR}); or a journal file (.log)."""
    storage: Optional[str] = None


@dataclass
class SweepConfig:
    name: str
    datasets: list[str] = field(metadata={"note": "it lists distinct dataset names, e.g. [dtd, eurosat]"})
    base: dict = field(default_factory=dict,   # a path in the file is read into the mapping
                       metadata={"note": "it is a FAIR config mapping or the path of a FAIR YAML file"})
    per_dataset: dict[str, Optional[dict]] = field(
        default_factory=dict, metadata={"note": "it maps dataset names to FAIR config mappings"})
    space: Any = "default"                               # checked by tune.space.parse_space
    methods: Optional[dict[str, Any]] = field(default=None, metadata={
        "note": "it maps method names to search spaces, e.g. {fair: default, selftrain: {train.lr: ...}}"})
    search: Search = field(default_factory=Search)
    budget: Budget = field(default_factory=Budget)
    resources: Resources = field(default_factory=Resources)
    objective: Objective = field(default_factory=Objective)
    storage: str = "./sweeps"
    storage_shared: bool = False                         # a local storage path is a shared file system
    #                                                      (NFS, EFS) at the same path on every node
    ray: RayOptions = field(default_factory=RayOptions)
    faults: Faults = field(default_factory=Faults)
    optuna: OptunaOptions = field(default_factory=OptunaOptions)
    simulate: Optional[dict] = None   # bench.scale only: timed stand-in for adapt() (tune/simulate.py)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    source: Optional[str] = field(default=None, init=False)   # the sweep file (set by from_mapping)

    def method_spaces(self) -> dict[str, Any]:
        """{method: its raw search space}: `methods`, or the one-method form `space` for base.method."""
        if self.methods is not None:
            return {m: "default" if sp is None else sp for m, sp in self.methods.items()}
        return {self.base.get("method") or "fair": self.space}

    @property
    def method_names(self) -> list[str]:
        return list(self.method_spaces())

    @property
    def studies(self) -> list[str]:
        """Every study key (`<method>/<dataset>`), methods outer, datasets inner."""
        return [studies.study_key(m, d) for m in self.method_names for d in self.datasets]

    def study_config(self, study: str) -> dict:
        """The nested FAIR config of one study's trials (`<method>/<dataset>`), before the searched values."""
        method, dataset = studies.split_study(study)
        d = deep_merge(copy.deepcopy(self.base), copy.deepcopy(self.per_dataset.get(dataset) or {}))
        d = deep_merge(d, {"method": method, "data": {"dataset": dataset}, "train": {"epochs": self.budget.epochs},
                            "run": {"progress": False}})
        if self.budget.max_steps_per_epoch is not None:
            d["train"]["max_steps_per_epoch"] = self.budget.max_steps_per_epoch
        # Trials run in Ray's own working folders: a relative cache root would be a new, empty cache per
        # trial (decoded images, text embeddings, the stand-in rebuilt each time). Anchor it at the driver.
        root = (d.get("run") or {}).get("cache_root")
        if isinstance(root, str) and root and not root.startswith(("~", "/", "s3://")):
            d["run"]["cache_root"] = str(Path(root).resolve())
        return d

    def fair_config(self, study: str) -> FairConfig:
        """The validated FairConfig of one study's trials, before the searched values (FAIR's own defaults
        for every key the sweep leaves unset)."""
        return from_dict(self.study_config(study))

    def final_seeds_of(self, study: str) -> list[int]:
        """The seeds a study's picked configuration re-runs with: new ones (seed+1..seed+n), so that the
        final runs are not the search trial that won, whose result is biased upwards by the pick."""
        seed = int(self.study_config(study).get("seed") or 0)
        return [seed + k for k in range(1, self.budget.final_seeds + 1)]

    @property
    def total_trials(self) -> int:
        """Search trials and final-seed re-runs of every study."""
        return (self.budget.trials_per_dataset + self.budget.final_seeds) * len(self.studies)

    def search_space(self, method: Optional[str] = None) -> SearchSpace:
        """The parsed search space of `method` (None: the first); "default" is tune.studies.default_space."""
        spaces = self.method_spaces()
        method = method or next(iter(spaces))
        raw = spaces[method]
        return parse_space(studies.default_space(method) if raw in (None, "default") else raw)


# --------------------------------------------------------------------------------------------- loading

def _load_base(raw: Any, sweep_file: Optional[Path]) -> Any:
    """`base:` as a mapping: a path is read, relative to the sweep file (an absolute path as it is)."""
    if not isinstance(raw, str):
        return {} if raw is None else raw
    p = Path(raw).expanduser()
    if not p.is_absolute() and sweep_file is not None:
        p = sweep_file.parent / p
    return read_yaml(p)


def from_mapping(data: dict, sweep_file: Optional[Path] = None) -> SweepConfig:
    """A SweepConfig from the sweep file's mapping (after overrides): built by fair.config.build (types,
    allowed values, unknown keys), then its own values checked (check_values); validate() does the rest."""
    data = copy.deepcopy(data)
    for req in ("name", "datasets"):
        if not data.get(req):
            raise FairError(f"sweep file needs '{req}'")
    if isinstance(data["datasets"], str):
        data["datasets"] = [data["datasets"]]
    data["base"] = _load_base(data.get("base"), sweep_file)
    if data.get("storage") is None:
        data["storage"] = "./sweeps"
    cfg = build(SweepConfig, data, what="sweep")
    cfg.source = str(sweep_file) if sweep_file else None
    if not _NAME.match(cfg.name):
        raise FairError(f"sweep name {cfg.name!r} must be a plain path segment (letters, digits, _ . -)")
    if len(set(cfg.datasets)) != len(cfg.datasets):
        raise FairError("sweep key 'datasets' must be a list of distinct dataset names")
    check_values(cfg)
    check_methods(cfg)
    unused = [k for k in cfg.per_dataset if k not in cfg.datasets]
    if unused:   # e.g. `--set datasets=[dtd]` on the paper sweep: its sun397 entry is simply not needed
        log.warning("per_dataset entries for datasets not in this sweep are ignored: %s", ", ".join(unused))
        cfg.per_dataset = {k: v for k, v in cfg.per_dataset.items() if k in cfg.datasets}
    return cfg


def check_values(cfg: SweepConfig) -> None:
    """The ranges, and the rules between the sweep's own keys, that SweepConfig's types cannot express."""
    b, r = cfg.budget, cfg.resources
    require(b.trials_per_dataset >= 1, "sweep key 'budget.trials_per_dataset' must be >= 1")
    require(b.epochs >= 1, "sweep key 'budget.epochs' must be >= 1")
    require(b.final_seeds >= 1, "sweep key 'budget.final_seeds' must be >= 1 (the re-runs of each study's best "
            "configuration with new seeds; 1 re-runs it once)")
    require(b.max_concurrent is None or b.max_concurrent >= 1, "sweep key 'budget.max_concurrent' must be >= 1 "
            "or null (as many trials as the resources allow)")
    es = b.early_stopping
    require(es is None or (1 <= es.grace_period <= b.epochs and es.reduction_factor > 1),
            "sweep key 'budget.early_stopping' needs 1 <= grace_period <= budget.epochs and reduction_factor > 1")
    require(0 < cfg.search.max_running_share <= 1, "sweep key 'search.max_running_share' must be in (0, 1]: the "
            "share of a study's search budget that may run at once (1: no cap)")
    require(r.num_workers >= 1, "sweep key 'resources.num_workers' must be >= 1")
    require(all(v >= 0 for v in r.per_worker.values()), "sweep key 'resources.per_worker' must map resource "
            "names to numbers >= 0, e.g. {CPU: 2, GPU: 0.25}")
    gpu = r.per_worker.get("GPU", 0)
    require(gpu <= 1 or gpu == int(gpu), "sweep key 'resources.per_worker.GPU' must be a fraction <= 1 or a "
            "whole number")
    require(r.trial_driver_cpu > 0, "sweep key 'resources.trial_driver_cpu' must be > 0 (Ray refuses a zero "
            "request); use 0.01")
    require(r.runner != "direct" or r.num_workers == 1, "sweep key 'resources.runner' is direct (adapt() runs "
            "inside the trial process), so resources.num_workers must be 1; use runner trainer for DDP across workers")
    require(not cfg.ray.reuse_actors or r.runner == "direct", "sweep key 'ray.reuse_actors' is true but "
            "resources.runner is trainer: a stopped trial's Train run could outlive it in the reused process; "
            "use runner direct (single-worker trials) or reuse_actors false")
    from tune.optuna_storage import check_value
    check_value(cfg.optuna.storage)
    require(r.backend != "nccl" or r.use_gpu, "sweep key 'resources.backend' is nccl but resources.per_worker "
            "has no GPU")


def check_methods(cfg: SweepConfig) -> None:
    """`methods`: known method names, each space's keys ones its method reads (tune.studies)."""
    if cfg.methods is not None:
        require(bool(cfg.methods), "sweep key 'methods' must name at least one method, e.g. {fair: default}")
        require(cfg.space == "default", "sweep keys 'space' and 'methods' are exclusive: put the space under its "
                "method in 'methods' (methods: {fair: {...}})")
    for method, raw in cfg.method_spaces().items():
        studies.check_method(method)
        if isinstance(raw, dict):
            studies.check_keys(method, [str(k) for k in raw])


def read_sweep(path: Optional[str], overrides: list[str] | None = None, smoke_test: bool = False,
               mapping: Optional[dict] = None) -> SweepConfig:
    """Read a sweep file (or take `mapping`), apply overrides and --smoke-test; not validate()d yet: what
    `fair cluster plan` reads (the plan is how to find a missing budget.max_concurrent)."""
    sweep_file = Path(path).expanduser().resolve() if path else None
    data = read_yaml(sweep_file) if sweep_file else copy.deepcopy(mapping or {})
    cfg = from_mapping(merge_overrides(data, overrides), sweep_file)
    if smoke_test:
        shrink_for_smoke_test(cfg)
    return cfg


def load_sweep(path: Optional[str], overrides: list[str] | None = None, smoke_test: bool = False,
               mapping: Optional[dict] = None) -> SweepConfig:
    """read_sweep, then validate offline (what `fair sweep` and `fair cluster submit` run)."""
    cfg = read_sweep(path, overrides, smoke_test, mapping)
    validate(cfg)
    return cfg


def shrink_for_smoke_test(cfg: SweepConfig) -> None:
    """About a minute on a laptop: 1 trial per dataset, 1 epoch, a few steps, small data caps, no ASHA."""
    if not cfg.name.endswith("-smoke"):      # idempotent: `--resume NAME-smoke --smoke-test` is that sweep
        cfg.name = f"{cfg.name}-smoke"
    cfg.budget.trials_per_dataset = 1
    cfg.budget.final_seeds = 1
    cfg.budget.epochs = 1
    cfg.budget.max_steps_per_epoch = 2
    cfg.budget.early_stopping = None
    caps = {"train_per_class": 4, "test_per_class": 4, "val_per_class": 2}
    for d in [cfg.base, *[v for v in cfg.per_dataset.values() if v]]:
        data = d.setdefault("data", {})
        for k, v in caps.items():
            data[k] = min(v, data.get(k) or v)
    cfg.base.setdefault("eval", {})["local_views"] = 2


def validate(cfg: SweepConfig) -> None:
    """Every check beyond the file's own values (from_mapping) that needs neither Ray nor the storage
    (those are in tune.ray_session / tune.storage): the concurrency of an autoscaling cluster, the storage URI,
    the dataset names, and every dataset's FAIR config, alone and with every value of the search space."""
    b, r = cfg.budget, cfg.resources
    base_train = cfg.base.get("train") or {}
    for key, value in (("epochs", b.epochs), ("max_steps_per_epoch", b.max_steps_per_epoch)):
        if base_train.get(key) is not None and base_train[key] != value and (key == "epochs" or value is not None):
            log.warning("base.train.%s=%s is replaced by budget.%s=%s: set the budget to change it",
                        key, base_train[key], key, value)
    require(r.check_cluster or b.max_concurrent is not None, "sweep key 'budget.max_concurrent' must be set when "
            "resources.check_cluster is false (an autoscaling cluster): the sweep cannot see how large the cluster "
            "will grow; use the concurrency `fair cluster plan` prints")
    from results.store import open_store
    open_store(cfg.storage)             # a location the store cannot read is refused here (no I/O)
    from fair.data.catalog import get_spec
    for ds in cfg.datasets:
        get_spec(ds)                    # an unknown name fails here, not in every trial on the cluster
    spaces = {m: cfg.search_space(m) for m in cfg.method_names}
    for study in cfg.studies:
        method, ds = studies.split_study(study)
        fcfg = cfg.fair_config(study)   # the study's base config itself must be valid
        if cfg.objective.metric == "val_top1" and fcfg.data.val_per_class < 1:
            raise FairError(f"objective val_top1 needs a validation split, but data.val_per_class is 0 for {ds}; "
                            f"raise it or use objective.metric=head_agreement")
        validate_against(spaces[method], cfg.study_config(study), study)


def check_datasets(cfg: SweepConfig) -> None:
    """`fair data check` for every dataset of the sweep (on the driver's machine), and its descriptions file
    where the method needs one: a missing file or class would otherwise fail every trial once the cluster is
    up. Every dataset is checked; the one error names all that are not ready."""
    problems = []
    for ds in cfg.datasets:
        try:
            check_dataset_ready(cfg, ds)
        except FairError as e:
            problems.append(str(e))
    if problems:
        lead = f"{len(problems)} of {len(cfg.datasets)} datasets are not ready: " if len(problems) > 1 else ""
        raise FairError(lead + " | ".join(problems))


def check_dataset_ready(cfg: SweepConfig, ds: str) -> None:
    """One dataset of the sweep: its files, and a descriptions file that covers every class where one of
    the sweep's methods reads one (fair.config.needs_descriptions)."""
    from fair.data import descriptions_path
    from fair.data.catalog import check_dataset, get_spec
    from fair.descriptions.cupl import load_descriptions
    configs = [cfg.fair_config(studies.study_key(m, ds)) for m in cfg.method_names]
    fcfg = next((c for c in configs if needs_descriptions(c)), configs[0])
    base = check_dataset(ds, fcfg.data.root)
    if not needs_descriptions(fcfg) or fcfg.data.description_fallback:
        return
    path = descriptions_path(fcfg.data, base=base)
    if path is None or not path.is_file():
        where = str(path) if path else f"{base}/descriptions.json"
        raise FairError(f"dataset {ds} has no descriptions file ({where} not found); make it with `fair "
                        f"descriptions import|generate --dataset {ds}`, set base.data.descriptions, or set "
                        f"base.data.description_fallback=true")
    spec = get_spec(ds)
    try:
        load_descriptions(path, spec.reader(spec, base).classnames, fallback=False)
    except FairError as e:
        raise FairError(f"dataset {ds}: {e}") from None
