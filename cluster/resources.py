"""What one trial asks of a cluster, what a node type offers, and how many trials fit on a node.

A trial of `fair sweep` is a Tune trial driver (a tiny CPU request, `resources.trial_driver_cpu`) plus a
Ray Train worker group of `resources.num_workers` bundles of `resources.per_worker` each, e.g.
{CPU: 2, GPU: 0.25}: four ViT-B trials share one GPU. Pending bundles are what makes the autoscaler add
nodes, so the arithmetic here is the same one the autoscaler does, kept small enough to print in a plan.

The sweep mapping is read tolerantly: the sweep file schema of `tune/sweep_config.py`
(`num_workers`, `per_worker`, `trial_driver_cpu`) and a flat one (`workers_per_trial`, `gpus_per_worker`,
`cpus_per_worker`) both work, so `plan` stays usable on hand-written dicts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from cluster.errors import ClusterError

# Resources that Ray reports but that no trial of ours requests; ignored in fit checks.
_BOOKKEEPING = ("memory", "object_store_memory")


@dataclass(frozen=True)
class TrialRequest:
    """Resources one trial holds while it runs."""
    num_workers: int = 1
    per_worker: dict = field(default_factory=lambda: {"CPU": 1.0})
    driver_cpu: float = 0.01
    runner: str = "trainer"          # resources.runner; `direct`: the trial is its one worker, no driver

    @property
    def gpus(self) -> float:
        """GPUs one trial holds (0.25: four trials share a GPU)."""
        return self.num_workers * float(self.per_worker.get("GPU", 0.0))

    def total(self) -> dict[str, float]:
        """The driver plus every worker bundle (what bounds concurrency on a cluster)."""
        out = {k: float(v) * self.num_workers for k, v in self.per_worker.items() if v}
        out["CPU"] = out.get("CPU", 0.0) + self.driver_cpu
        return out

    def describe(self) -> str:
        bundle = ", ".join(f"{k}: {v:g}" for k, v in self.per_worker.items())
        driver = " (runner direct)" if self.runner == "direct" else f" + driver {{CPU: {self.driver_cpu:g}}}"
        return f"{self.num_workers} worker(s) x {{{bundle}}}{driver}"


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ClusterError(f"sweep key 'resources.{key}' must be a number >= 0, got {value!r}")
    return float(value)


def trial_request(sweep: dict) -> TrialRequest:
    """The per-trial request of a sweep mapping (either schema, see the module docstring)."""
    r = sweep.get("resources") or {}
    if not isinstance(r, dict):
        raise ClusterError("sweep key 'resources' must be a mapping")
    workers = r.get("num_workers", r.get("workers_per_trial", 1))
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ClusterError(f"sweep key 'resources.num_workers' must be an integer >= 1, got {workers!r}")
    per_worker = r.get("per_worker") or {}
    if not isinstance(per_worker, dict):
        raise ClusterError("sweep key 'resources.per_worker' must map resource names to numbers, "
                           "e.g. {CPU: 2, GPU: 0.25}")
    per_worker = {str(k): _number(v, f"per_worker.{k}") for k, v in per_worker.items()}
    for flat, name in (("gpus_per_worker", "GPU"), ("cpus_per_worker", "CPU")):
        if r.get(flat) is not None:
            per_worker[name] = _number(r[flat], flat)
    per_worker.setdefault("CPU", 1.0)
    gpu = per_worker.get("GPU", 0.0)
    if gpu > 1 and gpu != int(gpu):
        raise ClusterError("sweep key 'resources.per_worker.GPU' must be a fraction <= 1 or a whole number")
    runner = str(r.get("runner") or "trainer")
    if runner not in ("trainer", "direct"):
        raise ClusterError(f"sweep key 'resources.runner' must be trainer or direct, got {runner!r}")
    # under the `direct` runner the Tune trial is the worker: no separate driver request
    driver = 0.0 if runner == "direct" else _number(r.get("trial_driver_cpu", 0.01), "trial_driver_cpu")
    return TrialRequest(workers, {k: v for k, v in per_worker.items() if v > 0} or {"CPU": 1.0}, driver, runner)


@dataclass(frozen=True)
class NodeType:
    """One kind of node a cluster can have (a launcher `available_node_types` entry, or a live node)."""
    name: str
    resources: dict                 # {"CPU": 16, "GPU": 1}
    max_workers: int = 0            # how many the autoscaler may start (0: the head, or a fixed node)
    instance: str = ""              # g5.4xlarge, g2-standard-16, ...
    accelerator: Optional[str] = None   # A10G, L4, A100, T4 (for per-image costs and prices)
    spot: bool = False

    @property
    def gpus(self) -> float:
        return float(self.resources.get("GPU", 0))

    def workers_per_node(self, req: TrialRequest) -> int:
        """How many of the request's worker bundles one node holds (0: a worker does not fit)."""
        fits = [math.floor(float(self.resources.get(k, 0)) / v + 1e-9) for k, v in req.per_worker.items() if v > 0]
        return min(fits) if fits else 0

    def trials_per_node(self, req: TrialRequest) -> float:
        """Trials one node runs at once. Whole trials for single-worker trials (driver included); for DDP
        trials a fraction when one trial spans nodes (Train packs its bundles, then spreads them)."""
        if req.num_workers == 1:
            fits = [math.floor(float(self.resources.get(k, 0)) / v + 1e-9) for k, v in req.total().items() if v > 0]
            return float(min(fits)) if fits else 0.0
        return self.workers_per_node(req) / req.num_workers


def missing_resources(req: TrialRequest, nodes: list[NodeType]) -> list[str]:
    """Human-readable reasons why no node type can hold a worker bundle of `req` (empty: it fits)."""
    if any(n.workers_per_node(req) >= 1 for n in nodes):
        return []
    reasons = []
    for k, v in req.per_worker.items():
        best = max((float(n.resources.get(k, 0)) for n in nodes), default=0.0)
        if best + 1e-9 < v:
            reasons.append(f"{k} {v:g} per worker (largest node has {best:g})")
    return reasons or [f"the bundle {req.per_worker} on one node"]


def totals(nodes: list[NodeType]) -> dict[str, float]:
    """Summed resources of a list of (live) nodes, bookkeeping resources left out."""
    out: dict[str, float] = {}
    for n in nodes:
        for k, v in n.resources.items():
            if k not in _BOOKKEEPING and not k.startswith("node:"):
                out[k] = out.get(k, 0.0) + float(v)
    return out
