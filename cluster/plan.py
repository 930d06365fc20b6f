"""What a sweep will cost before it runs: trials, concurrency, GPU-hours, wall time, dollars, node types.

    from cluster.plan import plan, estimate, calibration_from_records
    from tune.sweep_config import read_sweep
    sweep = read_sweep("configs/sweeps/paper13-vitb32.yaml")   # tune's SweepConfig, the one reader
    print(plan(sweep))                                          # built-in cost table (cluster/costs.py)
    print(plan(sweep, calibration_from_records(recs)))          # measured costs of earlier runs

A sweep runs one study per method x dataset (tune.studies): `budget.trials_per_dataset` search trials, then
`budget.final_seeds` re-runs of the study's best configuration, which run their full epochs (no ASHA).
A training-free method (zeroshot, wca) costs its set-up and evaluation only.
The cost model, per trial (all in GPU-seconds at full use of one GPU):
    orchestration + setup + epochs x (train images x t_train + val images x t_eval) + test images x t_eval
with orchestration the seconds a trial holds its resources before adapt() starts (RUNNER_OVERHEAD_S),
with t_train = forward_ms x (4 + local.num_crops) and t_eval = forward_ms x (1 + eval.local_views)
(see costs.py; both averaged over the search space: a `tokens` trial cuts no crops), or t_train measured
(1 / timings.images_per_s of earlier records, times the GPU share they ran with). Every FAIR value comes
from each dataset's FairConfig as the sweep builds it (SweepConfig.fair_config). A trial holding a fraction g of a GPU runs about 1/g times slower than alone, so the
GPU-hours do not depend on the packing while the wall time does. The wall time is the sweep's schedule,
simulated (cluster.schedule): its trials on `trials at once` slots in the order the searcher hands them out,
each study's final re-runs after its last search trial; that is work / slots plus the tail those re-runs
make. ASHA early stopping is estimated for the ideal case (1/reduction_factor of trials pass each rung).
Everything printed is an estimate; the sweep's own records give the measured numbers afterwards.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from cluster import costs
from cluster.errors import ClusterError
from cluster.schedule import Schedule, StudyLoad, rung_epochs, simulate
from cluster.resources import NodeType, describe, missing_resources
from tune.study_order import asha_rungs

if TYPE_CHECKING:
    from fair.config import FairConfig
    from tune.space import Param, SearchSpace
    from tune.sweep_config import EarlyStopping, Resources, SweepConfig

log = logging.getLogger("cluster.plan")

SETUP_S = 60.0                 # model load, text encoding of the class prompts, dataset index (per trial)
# Seconds per trial before adapt() starts, by resources.runner: Ray Train's per-trial processes vs none
# (`python -m bench.overhead` on 2 cores: +19 to +24 s and +0.3 to +2.5 s; docs/sweeps.md).
RUNNER_OVERHEAD_S = {"trainer": 20.0, "direct": 2.0}
NODE_START_S = 600.0           # a cold GPU node: boot, image pull, setup_commands (autoscaler)
DEFAULT_LAUNCHER = Path(__file__).with_name("aws-gpu.yaml")


# ----------------------------------------------------------------------------------- per-dataset work

@dataclass
class DatasetWork:
    """One study's (method x dataset) share of a sweep: image counts and per-trial GPU-seconds."""
    name: str                       # the study: <method>/<dataset>
    train_images: int               # per epoch (after caps and max_steps_per_epoch)
    val_images: int
    test_images: int
    trials: int                     # search trials
    trial_gpu_s: float              # one trial with the full epoch budget
    trial_gpu_s_asha: float         # one trial, ASHA-expected epochs
    source: str                     # "table" | "measured"
    note: str = ""
    final_trials: int = 0           # final-seed re-runs of the picked configuration (full epochs)
    epoch_gpu_s: float = 0.0        # one epoch (training + validation); bench.scale waits these
    setup_gpu_s: float = 0.0        # before the first epoch, orchestration excluded
    eval_gpu_s: float = 0.0         # the final evaluation on the test split

    def gpu_s(self, asha: bool = False) -> float:
        """All its trials: search trials (ASHA-expected epochs with `asha`) and final re-runs (full)."""
        return (self.trial_gpu_s_asha if asha else self.trial_gpu_s) * self.trials + self.trial_gpu_s * self.final_trials


def _mean_value(param: Optional[Param], default: float) -> float:
    """The mean of a searched numeric value: a range's middle, a choice's average, a fixed value itself."""
    if param is None:
        return float(default)
    if param.kind == "fixed":
        return float(param.value) if _is_number(param.value) else float(default)
    if param.kind == "choice":
        nums = [float(x) for x in param.choices if _is_number(x)]
        return sum(nums) / len(nums) if nums else float(default)
    return (float(param.low) + float(param.high)) / 2


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _share_of(param: Optional[Param], value: str, default: str) -> float:
    """The fraction of trials in which a searched value equals `value` (a choice is sampled uniformly)."""
    if param is not None and param.kind == "choice":
        return param.choices.count(value) / len(param.choices)
    return 1.0 if (param.value if param is not None else default) == value else 0.0


def local_views(space: SearchSpace, cfg: FairConfig) -> tuple[float, float]:
    """(train crops, eval crop views) per image, averaged over the trials the search space draws: a
    `tokens` trial cuts no crops, and a searched local.num_crops counts at its mean."""
    params = {p.name: p for p in space.params}
    crops_share = _share_of(params.get("local.source"), "crops", cfg.local.source)
    crops = _mean_value(params.get("local.num_crops"), cfg.local.num_crops)
    views = _mean_value(params.get("eval.local_views"), cfg.eval.local_views)
    return crops_share * crops, crops_share * views


def asha_epochs(epochs: int, early_stopping: Optional[EarlyStopping]) -> float:
    """Expected epochs per trial under ASHA in the ideal case: a 1/rf fraction passes each rung
    (ASHA's rungs: tune.study_order.asha_rungs)."""
    if early_stopping is None:
        return float(epochs)
    total, reached, start = 0.0, 1.0, 0
    for rung in asha_rungs(epochs, early_stopping.grace_period, early_stopping.reduction_factor):
        total += reached * (rung - start)
        reached /= early_stopping.reduction_factor
        start = rung
    return total + reached * (epochs - start)


# ------------------------------------------------------------------------------------------ calibration

def _get(d: dict, dotted: str, default=None):
    """d["a"]["b"] of a run record for "a.b" (`default` where missing or null)."""
    for part in dotted.split("."):
        if not isinstance(d, dict) or d.get(part) is None:
            return default
        d = d[part]
    return d


def load_records(paths: Iterable[str | Path]) -> list[dict]:
    """Run records (record.json / <trial_id>.json, docs/record.md) from files or folders (recursively)."""
    out = []
    for p in map(Path, paths):
        files = sorted(p.rglob("*.json")) if p.is_dir() else [p]
        for f in files:
            try:
                rec = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(rec, dict) and "schema_version" in rec and "timings" in rec:
                out.append(rec)
    return out


def calibration_from_records(records: Iterable[dict], gpu_fraction: float = 1.0) -> dict:
    """Measured per-image training cost per backbone from earlier records.

    GPU-seconds per training image = gpu_fraction / timings.images_per_s, where gpu_fraction is the GPU
    share those runs had (1 for `fair adapt` on a GPU, 0.25 for trials packed four to a GPU). Medians over
    completed records; setup seconds likewise.
    """
    per_image: dict[str, list[float]] = {}
    setup: dict[str, list[float]] = {}
    devices = set()
    n = 0
    for rec in records:
        t = rec.get("timings") or {}
        ips = t.get("images_per_s")
        if rec.get("status") != "completed" or not ips:
            continue
        backbone = rec.get("backbone") or _get(rec, "config.model.name") or "unknown"
        per_image.setdefault(backbone, []).append(gpu_fraction / float(ips))
        if t.get("setup_s") is not None:
            setup.setdefault(backbone, []).append(float(t["setup_s"]))
        devices.add(_get(rec, "provenance.device", "unknown"))
        n += 1
    if any(str(d).startswith("cpu") for d in devices):
        log.warning("some records were measured on the CPU: their per-image costs are not a GPU's; re-plan with "
                    "records from the GPU type the sweep will use (e.g. after its --smoke-test)")
    return {"train_image_s": {k: statistics.median(v) for k, v in per_image.items()},
            "setup_s": {k: statistics.median(v) for k, v in setup.items()},
            "source": f"{n} record(s) measured on {', '.join(sorted(map(str, devices))) or 'unknown'}"}


# ------------------------------------------------------------------------------------------------ plan

@dataclass
class NodeUse:
    node: NodeType
    trials_per_node: float
    nodes: int = 0

    @property
    def price(self) -> tuple[float, float]:
        inst = costs.instance(self.node.instance)
        return (inst.on_demand, inst.spot) if inst else (float("nan"), float("nan"))


@dataclass
class Estimate:
    """All numbers of a plan (what `plan` prints)."""
    name: str
    backbone: str
    accelerator: str
    request: Resources                    # one trial's request: the sweep's `resources`
    datasets: list[DatasetWork]
    epochs: int
    asha_epochs: float
    trials: int
    concurrency: int
    node_use: list[NodeUse] = field(default_factory=list)
    unfit: list[str] = field(default_factory=list)
    calibration_source: Optional[str] = None
    head: Optional[NodeType] = None
    max_workers: Optional[int] = None     # the launcher's top-level cap on all worker nodes together
    capped: bool = False                  # that cap, not the node types or the sweep, bounds concurrency
    needs_max_concurrent: bool = False    # budget.max_concurrent null and resources.check_cluster false
    views: tuple = (0.0, 0.0)             # (train crops, eval crop views) per image, mean over the space
    methods: list = field(default_factory=list)   # the sweep's methods (one study per method x dataset)
    final_seeds: int = 0                  # final re-runs per study
    grace_period: Optional[int] = None    # budget.early_stopping's (None: no early stopping)
    reduction_factor: float = 0.0
    order: str = "critical_path"          # search.order: which study gets the next slot (tune.study_order)
    max_running: Optional[int] = None     # search.max_running_share's cap on one study's trials in flight
    early_finals: bool = True             # search.early_finals: finals may start before their search ends
    speculative_finals: bool = True       # search.speculative_finals: ... from a trial past ASHA's last rung
    _schedules: dict = field(default_factory=dict, init=False, repr=False, compare=False)   # asha -> Schedule

    @property
    def trials_per_gpu(self) -> float:
        g = self.request.gpus
        return 1.0 / g if 0 < g <= 1 else 0.0

    def gpu_hours(self, asha: bool = False) -> float:
        """Busy GPU-hours (independent of packing)."""
        return sum(d.gpu_s(asha) for d in self.datasets) / 3600

    def schedule(self, asha: bool = False) -> Schedule:
        """The sweep's trials list-scheduled on `concurrency` slots in the searcher's order (`search.order`,
        cluster.schedule), each study's final re-runs after its last search trial. A trial holding a
        fraction g of a GPU lasts 1/g of its GPU-seconds. Simulated once per `asha` (wall time, dollars and
        the printed plan all read it)."""
        if asha in self._schedules:
            return self._schedules[asha]
        g = self.request.gpus or 1.0          # CPU-only trials: per-trial cost counted as one "GPU"
        grace = self.grace_period if asha else None
        loads = []
        for d in self.datasets:
            fixed = d.trial_gpu_s - self.epochs * d.epoch_gpu_s
            search = [(fixed + e * d.epoch_gpu_s) / g
                      for e in rung_epochs(d.trials, self.epochs, grace, self.reduction_factor)]
            rungs = asha_rungs(self.epochs, grace, self.reduction_factor) if self.speculative_finals else []
            settled = (d.setup_gpu_s + rungs[-1] * d.epoch_gpu_s) / g if rungs else None
            loads.append(StudyLoad(d.name, search, d.trial_gpu_s / g, d.final_trials, settled))
        self._schedules[asha] = simulate(loads, self.concurrency, self.order, self.max_running,
                                          self.early_finals)
        return self._schedules[asha]

    def wall_hours(self, asha: bool = False) -> float:
        """Estimated wall time with `concurrency` trials at once (the simulated schedule: work / slots plus the
        tail of final re-runs waiting for their study's search), plus one cold node start."""
        return (self.schedule(asha).wall_s + (NODE_START_S if self.node_use else 0)) / 3600

    def dollars(self, asha: bool = False, spot: Optional[bool] = None) -> float:
        """Node-hours x price for the nodes holding `concurrency` trials, head included. spot=None: each
        node type as configured; True/False: all workers spot / on-demand."""
        wall = self.wall_hours(asha)
        total = 0.0
        for u in self.node_use:
            on_demand, spot_price = u.price
            use_spot = u.node.spot if spot is None else spot
            total += u.nodes * wall * (spot_price if use_spot else on_demand)
        head = costs.instance(self.head.instance) if self.head else None
        return total + (head.on_demand * wall if head else 0.0)


def _accelerator(nodes: list[NodeType], req: Resources) -> str:
    for n in nodes:
        if n.accelerator and n.workers_per_node(req) >= 1:
            return n.accelerator
    return costs.DEFAULT_GPU


def _image_costs(backbone: str, accelerator: str, num_crops: float, views: float,
                 calibration: Optional[dict]) -> tuple[float, float, float, str]:
    """(GPU-s per train image, per evaluated image, setup s, source)."""
    ratio = (1 + views) / (4 + num_crops)
    measured = ((calibration or {}).get("train_image_s") or {}).get(backbone)
    setup = ((calibration or {}).get("setup_s") or {}).get(backbone, SETUP_S)
    if measured:
        return measured, measured * ratio, setup, "measured"
    fwd = costs.forward_ms(backbone, accelerator)
    if fwd is None:
        log.warning("no cost for backbone %s on %s in the built-in table; using ViT-B-32's", backbone, accelerator)
        fwd = costs.forward_ms("ViT-B-32", accelerator) or costs.forward_ms("ViT-B-32", costs.DEFAULT_GPU)
    return fwd * (4 + num_crops) / 1000, fwd * (1 + views) / 1000, setup, "table"


def _fill_nodes(req: Resources, nodes: list[NodeType], wanted: int,
                max_workers: Optional[int] = None) -> tuple[list[NodeUse], int, bool]:
    """Spread `wanted` concurrent trials over the worker node types, cheapest per trial slot first (what
    the autoscaler roughly does for pending bundles), at most `max_workers` nodes of all types together
    (the launcher's top-level cap; None: no cap). Returns the uses, how many trials fit at once, and
    whether the cap kept nodes out that the sweep wanted and the node types allowed."""
    uses = [NodeUse(n, n.trials_per_node(req)) for n in nodes if n.max_workers > 0]
    uses = [u for u in uses if u.trials_per_node > 0]
    uses.sort(key=lambda u: (u.price[1] if u.node.spot else u.price[0]) / u.trials_per_node
              if not math.isnan(u.price[0]) else float("inf"))
    left, placed, capped = wanted, 0.0, False
    nodes_left = max_workers if max_workers is not None else sum(u.node.max_workers for u in uses)
    for u in uses:
        if left <= 0:
            break
        wanted_nodes = min(u.node.max_workers, math.ceil(left / u.trials_per_node - 1e-9))
        u.nodes = min(wanted_nodes, nodes_left)
        capped = capped or u.nodes < wanted_nodes
        nodes_left -= u.nodes
        cap = u.nodes * u.trials_per_node
        placed += min(cap, left)
        left -= cap
    return [u for u in uses if u.nodes], int(math.floor(placed + 1e-9)), capped


def _dataset_work(sweep: SweepConfig, study: str, cfg: FairConfig, e_asha: float, accelerator: str,
                  calibration: Optional[dict]) -> DatasetWork:
    """One study's images per epoch and per-trial GPU-seconds, from its FairConfig `cfg` in the sweep."""
    from tune.studies import TRAINING_FREE, belongs, split_study
    method, ds = split_study(study)
    req = sweep.resources
    size = costs.DATASETS.get(ds, costs.UNKNOWN_DATASET)
    val = cfg.data.val_per_class * size.classes
    train = max(0, size.pool - val)
    if size.pool_per_class:
        train = min(train, size.pool_per_class * size.classes)
    if cfg.data.train_per_class:
        train = min(train, cfg.data.train_per_class * size.classes)
    test = size.test
    if cfg.data.test_per_class:
        test = min(test, cfg.data.test_per_class * size.classes)
    if cfg.train.max_steps_per_epoch:
        train = min(train, cfg.train.max_steps_per_epoch * cfg.train.batch_size)
    # a method that reads no local.* keys (selftrain, dpa, tent) cuts no crops
    crops, views = local_views(sweep.search_space(method), cfg) if belongs(method, "local.num_crops") else (0.0, 0.0)
    t_train, t_eval, setup, source = _image_costs(cfg.model.name, accelerator if accelerator != "CPU"
                                                  else costs.DEFAULT_GPU, crops, views, calibration)
    share = req.gpus if req.gpus > 0 else 1.0
    per_epoch = 0.0 if method in TRAINING_FREE else train * t_train + val * t_eval
    fixed = (setup + RUNNER_OVERHEAD_S[req.runner]) * share + test * t_eval
    return DatasetWork(study, train, val, test, sweep.budget.trials_per_dataset, fixed + cfg.train.epochs * per_epoch,
                       fixed + e_asha * per_epoch, source, size.note, final_trials=sweep.budget.final_seeds,
                       epoch_gpu_s=per_epoch, setup_gpu_s=setup * share, eval_gpu_s=test * t_eval)


def estimate(sweep: SweepConfig, calibration: Optional[dict] = None,
             node_types: Optional[list[NodeType]] = None, max_workers: Optional[int] = None) -> Estimate:
    """The numbers behind `plan` (see the module docstring) for a sweep as tune.sweep_config reads it.
    `max_workers`: the launcher's top-level cap on worker nodes of all types together (None with
    node_types None: cluster/aws-gpu.yaml's)."""
    if node_types is None:
        node_types = default_node_types()
        max_workers = default_max_workers() if max_workers is None else max_workers
    budget, req = sweep.budget, sweep.resources
    configs = {k: sweep.fair_config(k) for k in sweep.studies}
    e_asha = asha_epochs(budget.epochs, budget.early_stopping)
    accelerator = _accelerator(node_types, req) if req.gpus > 0 else "CPU"
    works = [_dataset_work(sweep, k, cfg, e_asha, accelerator, calibration) for k, cfg in configs.items()]
    backbone = ", ".join(dict.fromkeys(cfg.model.name for cfg in configs.values()))

    trials = sweep.total_trials
    wanted = min(trials, budget.max_concurrent or trials)
    workers = [n for n in node_types if n.max_workers > 0]
    head = next((n for n in node_types if n.max_workers == 0), None)
    uses, fit, capped = _fill_nodes(req, workers, wanted, max_workers)
    unfit = missing_resources(req, workers) if workers else ["no worker node types"]
    concurrency = min(wanted, fit) if uses else 0
    # The sweep leaves its concurrency to a cluster it cannot see (budget.max_concurrent null on an
    # autoscaling cluster, resources.check_cluster false): only the plan knows the full size.
    needs_max_concurrent = budget.max_concurrent is None and not req.check_cluster
    first = sweep.studies[0]
    return Estimate(sweep.name, backbone, accelerator, req, works, budget.epochs, e_asha, trials, concurrency, uses,
                    unfit, (calibration or {}).get("source"), head, max_workers, capped, needs_max_concurrent,
                    local_views(sweep.search_space(sweep.method_names[0]), configs[first]),
                    sweep.method_names, budget.final_seeds,
                    es.grace_period if (es := budget.early_stopping) else None, es.reduction_factor if es else 0.0,
                    sweep.search.order, sweep.search.max_running(budget.trials_per_dataset),
                    sweep.search.early_finals, sweep.search.speculative_finals)


def trial_durations(sweep: SweepConfig) -> Optional[dict[str, tuple[float, float]]]:
    """Each study's expected (search, full-length) trial GPU-seconds under the sweep's budget, on the
    default node types: the prior `fair sweep` gives search.order (tune.study_order.durations), so that its
    first trials already favour the long studies. None when no plan can be made (the order then waits for
    measured durations)."""
    try:
        est = estimate(sweep)
    except (ClusterError, ValueError, KeyError, OSError) as e:   # a sweep the cost model cannot price still runs
        log.info("no expected trial durations for sweep %s (%s); search.order measures them", sweep.name, e)
        return None
    asha = sweep.budget.early_stopping is not None
    return {d.name: (d.trial_gpu_s_asha if asha else d.trial_gpu_s, d.trial_gpu_s) for d in est.datasets}


def default_node_types() -> list[NodeType]:
    """The worker types of cluster/aws-gpu.yaml (the plan's default cluster)."""
    from cluster.validate import node_types, read_yaml
    return node_types(read_yaml(DEFAULT_LAUNCHER))


def default_max_workers() -> Optional[int]:
    """The top-level max_workers of cluster/aws-gpu.yaml (the plan's default cluster)."""
    from cluster.validate import read_yaml, worker_cap
    return worker_cap(read_yaml(DEFAULT_LAUNCHER))


def _hours(h: float) -> str:
    return f"{h * 60:.0f} min" if h < 1 else f"{h:.1f} h"


def format_estimate(e: Estimate, launcher: str = "") -> str:
    """The human-readable plan."""
    lines = [f"Plan for sweep '{e.name}' -- ESTIMATES, not measurements "
             f"({'per-image costs measured: ' + e.calibration_source if e.calibration_source else 'built-in per-image costs, cluster/costs.py'}).",
             f"  backbone {e.backbone} on {e.accelerator}; methods {', '.join(e.methods)}; "
             f"{len(e.datasets)} studies (method x dataset)"]
    asha = e.asha_epochs < e.epochs
    per_study = e.datasets[0].trials if e.datasets else 0
    lines.append(f"  trials: {len(e.datasets)} studies x ({per_study} search + {e.final_seeds} final seeds) = "
                 f"{e.trials}, {e.epochs} epochs each" +
                 (f" (ASHA: ~{e.asha_epochs:.1f} epochs/search trial expected)" if asha else ""))
    per_gpu = f"; {e.trials_per_gpu:g} trials per GPU" if e.trials_per_gpu else ""
    lines.append(f"  per trial: {describe(e.request)} = {e.request.gpus:g} GPU{per_gpu}")
    lines.append(f"  local crops per image: {e.views[0]:.1f} in training, {e.views[1]:.1f} in evaluation (mean over "
                 f"{e.methods[0] if e.methods else 'the'}'s search space; `tokens` trials cut none)")
    lines.append(f"  node types{' (' + launcher + ')' if launcher else ''}:")
    for u in e.node_use:
        od, sp = u.price
        lines.append(f"    {u.node.name:<10} {u.node.instance:<14} {u.node.resources}  {u.trials_per_node:g} trials/node  "
                     f"x{u.nodes} (max {u.node.max_workers})  ${od:.2f}/h on-demand, ~${sp:.2f}/h spot"
                     f"{'  [spot]' if u.node.spot else ''}")
    if not e.node_use:
        lines.append(f"    none can hold one trial: {'; '.join(e.unfit)}")
    lines.append(f"  concurrency: {e.concurrency} trials at once (the autoscaler starts the nodes above from zero "
                 f"as trials queue; idle nodes go after idle_timeout_minutes)")
    if e.capped:
        lines.append(f"    capped by the launcher's top-level max_workers: {e.max_workers} (all worker nodes "
                     f"together); raise it to use more of the node types' max_workers")
    if e.needs_max_concurrent and e.concurrency:
        lines.append(f"  set budget.max_concurrent: {e.concurrency} in the sweep file (resources.check_cluster "
                     f"is false: the sweep cannot see how far the autoscaler will grow the cluster)")
    lines.append("")
    unit = "GPU" if e.request.gpus > 0 else "trial"     # CPU-only trials: hours of one whole trial
    w = max([16] + [len(d.name) + 2 for d in e.datasets])
    lines.append(f"  {'study':<{w}}{'train img':>10}{'test img':>10}{unit + '-min/trial':>16}{'trials':>8}"
                 f"{unit + '-h':>9}{'  cost source'}")
    for d in e.datasets:
        lines.append(f"  {d.name:<{w}}{d.train_images:>10}{d.test_images:>10}{d.trial_gpu_s / 60:>16.1f}"
                     f"{d.trials + d.final_trials:>8}{d.gpu_s() / 3600:>9.1f}  {d.source}")
    lines.append("")
    scen = [("full budget", False)] + ([("with ASHA (ideal)", True)] if asha else [])
    for label, a in scen:
        sched = e.schedule(a)
        line = (f"  {label:<18} {unit}-hours {e.gpu_hours(a):7.1f}   wall ~{_hours(e.wall_hours(a))} "
                f"(work / slots {_hours(sched.spread_s / 3600)}, final re-runs' tail {_hours(max(0.0, sched.wall_s - sched.spread_s) / 3600)})")
        if e.node_use:
            line += (f"   ~${e.dollars(a, spot=False):,.0f} on-demand / ~${e.dollars(a, spot=True):,.0f} spot"
                     f" (as configured: ~${e.dollars(a):,.0f})")
        lines.append(line)
    sched = e.schedule(asha)
    if sched.peak_running:
        top = max(sched.peak_running, key=sched.peak_running.get)
        cap = f"; cap {e.max_running} from search.max_running_share" if e.max_running else ""
        lines.append(f"  search.order {e.order}: up to {sched.peak_running[top]} trials of one study at once ({top}{cap}); "
                     f"a search trial starts with {sched.running_at_handout:.1f} of its study's running on average "
                     f"(tune/study_order.py)")
    lines.append("  Estimates: dataset sizes, per-image costs and prices are approximate (cluster/costs.py); "
                 "measure with a few trials and re-plan with their records.")
    return "\n".join(lines)


def plan(sweep: SweepConfig, calibration: Optional[dict] = None, node_types: Optional[list[NodeType]] = None,
         launcher: str = "", max_workers: Optional[int] = None) -> str:
    """Printable plan of a sweep (tune.sweep_config.read_sweep): trials, concurrency, GPU-hours, wall time, cost, node types.

    `calibration`: from `calibration_from_records` (measured costs); None uses the built-in table.
    `node_types`: a launcher config's (cluster.validate.node_types); None uses cluster/aws-gpu.yaml's.
    `max_workers`: that launcher's top-level cap on all worker nodes (cluster.validate.worker_cap).
    """
    if node_types is None and not launcher:
        launcher = str(DEFAULT_LAUNCHER.relative_to(DEFAULT_LAUNCHER.parents[1]))
    return format_estimate(estimate(sweep, calibration, node_types, max_workers), launcher)
