"""What a node type offers, and how many trials of a sweep fit on a node.

A trial of `fair sweep` is a Tune trial driver (a tiny CPU request, `resources.trial_driver_cpu`) plus a
Ray Train worker group of `resources.num_workers` bundles of `resources.per_worker` each, e.g.
{CPU: 2, GPU: 0.25}: four ViT-B trials share one GPU. Pending bundles are what makes the autoscaler add
nodes, so the arithmetic here is the same one the autoscaler does, kept small enough to print in a plan.
The request itself is the sweep's `resources` section as tune reads it (tune.sweep_config.Resources).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from tune.sweep_config import Resources

# Resources that Ray reports but that no trial of ours requests; ignored in fit checks.
_BOOKKEEPING = ("memory", "object_store_memory")


def describe(req: Resources) -> str:
    """One trial's request in words, e.g. `1 worker(s) x {CPU: 2, GPU: 0.25} + driver {CPU: 0.01}`."""
    bundle = ", ".join(f"{k}: {v:g}" for k, v in req.per_worker.items() if v)
    driver = " (runner direct)" if req.runner == "direct" else f" + driver {{CPU: {req.trial_driver_cpu:g}}}"
    return f"{req.num_workers} worker(s) x {{{bundle}}}{driver}"


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

    def workers_per_node(self, req: Resources) -> int:
        """How many of the request's worker bundles one node holds (0: a worker does not fit)."""
        fits = [math.floor(float(self.resources.get(k, 0)) / v + 1e-9) for k, v in req.per_worker.items() if v > 0]
        return min(fits) if fits else 0

    def trials_per_node(self, req: Resources) -> float:
        """Trials one node runs at once. Whole trials for single-worker trials (driver included); for DDP
        trials a fraction when one trial spans nodes (Train packs its bundles, then spreads them)."""
        if req.num_workers == 1:
            fits = [math.floor(float(self.resources.get(k, 0)) / v + 1e-9) for k, v in req.per_trial().items() if v > 0]
            return float(min(fits)) if fits else 0.0
        return self.workers_per_node(req) / req.num_workers


def missing_resources(req: Resources, nodes: list[NodeType]) -> list[str]:
    """Why no node of `nodes` can hold a bundle of one trial of `req` (empty: each fits one); the same check
    `fair sweep` runs against the live cluster (tune.nodes.unplaceable)."""
    from tune.nodes import trial_bundles, unplaceable
    why = unplaceable(trial_bundles(req), [n.resources for n in nodes])
    return [why] if why else []


def totals(nodes: list[NodeType]) -> dict[str, float]:
    """Summed resources of a list of (live) nodes, bookkeeping resources left out."""
    out: dict[str, float] = {}
    for n in nodes:
        for k, v in n.resources.items():
            if k not in _BOOKKEEPING and not k.startswith("node:"):
                out[k] = out.get(k, 0.0) + float(v)
    return out
