"""A sweep checked against the nodes of the Ray cluster it runs on, before any trial starts.

Ray places each bundle of a trial (the Tune trial driver, each Train worker; under runner `direct` the
trial itself) on ONE node, and waits silently and forever for a bundle that no node can hold: Tune's
own check compares against the cluster's summed resources and only warns, and Train's worker group
retries its start without end by default. So each bundle is checked here against every kind of node
the cluster has or can get:

- a fixed cluster: its live nodes;
- an autoscaling cluster (Ray 2.60's autoscaler publishes node type names, not their resources): the
  node types of its launcher config, `ray.autoscaling_config` (by default where `ray up` puts it on the
  head, ~/ray_bootstrap_config.yaml), plus the live nodes; without that file the check is skipped with
  a warning (the autoscaler would log "No available node types can fulfill resource request").

And a local storage path on a cluster of more than one node is refused unless the sweep says it is a
shared file system (`storage_shared: true`): each node would keep its own trials' checkpoints and
records on its own disk, where neither the driver nor a trial resumed on another node finds them.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Optional

from fair.errors import FairError

log = logging.getLogger("tune.nodes")
_ANONYMOUS_TYPE = re.compile(r"^node_[0-9a-f]+$")   # the read-only monitor's name for a hand-started node
_BOOKKEEPING = ("memory", "object_store_memory")


def live_nodes() -> list[dict]:
    """Total resources of each alive node of the connected cluster (node:<ip> and memory left out)."""
    import ray
    return [{k: float(v) for k, v in n["Resources"].items() if k not in _BOOKKEEPING and not k.startswith("node:")}
            for n in ray.nodes() if n.get("Alive")]


def autoscaling() -> bool:
    """Whether an autoscaler manages the connected cluster: its status in the GCS names node types of a
    launcher config, not the anonymous `node_<id>` types of a cluster started by hand."""
    from ray.experimental.internal_kv import _internal_kv_get
    try:
        status = json.loads(_internal_kv_get("__autoscaling_status") or b"{}")
    except Exception:  # noqa: BLE001 - no monitor (yet): nothing says it autoscales
        return False
    mapping = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return any(not _ANONYMOUS_TYPE.match(str(t)) for t in mapping.values())


def launcher_node_types(path: str) -> Optional[dict[str, dict]]:
    """{type name: resources} of the worker types an autoscaler may start (max_workers > 0), read from
    its launcher config (YAML or JSON); None when the file is not there."""
    import yaml
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    types = (yaml.safe_load(p.read_text()) or {}).get("available_node_types") or {}
    return {name: {k: float(v) for k, v in (t.get("resources") or {}).items() if k not in _BOOKKEEPING}
            for name, t in types.items() if int(t.get("max_workers", 0) or 0) > 0}


def trial_bundles(resources) -> list[dict[str, float]]:
    """The bundles one trial asks Ray for, each to be placed on one node (`resources`: the sweep's)."""
    worker = {k: float(v) for k, v in resources.per_worker.items() if v}
    if resources.runner == "direct":
        return [worker]
    return [{"CPU": float(resources.trial_driver_cpu)}] + [worker] * resources.num_workers


def _fits(bundle: dict[str, float], node: dict[str, float]) -> bool:
    return all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items())


def _fmt(d: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in d.items()) + "}"


def unplaceable(bundles: list[dict], nodes: list[dict]) -> Optional[str]:
    """The first bundle that fits none of `nodes`, with what the largest node has of it; None: all fit."""
    for b in bundles:
        if not any(_fits(b, n) for n in nodes):
            short = [f"{k} {v:g} (largest node: {max((n.get(k, 0.0) for n in nodes), default=0):g})"
                     for k, v in b.items() if not any(n.get(k, 0.0) + 1e-9 >= v for n in nodes)]
            return f"{_fmt(b)} on one node: {', '.join(short) or 'no node has all of it at once'}"
    return None


def check(cfg, uri: str) -> None:
    """Refuse, in one line, a sweep whose trials no node can hold or whose local storage the other nodes
    cannot see (see the module docstring). Call it connected to the cluster, before the Tuner starts."""
    nodes, scales = live_nodes(), autoscaling()
    if "://" not in uri and not cfg.storage_shared and (len(nodes) > 1 or scales):
        size = "autoscales" if scales else f"has {len(nodes)} nodes"
        raise FairError(f"storage {uri} is a local path but the cluster {size}: each node would keep its "
                        f"trials' checkpoints and records on its own disk; use storage: s3://bucket/prefix, or "
                        f"set storage_shared: true if that path is a shared file system on every node")
    kinds, where = nodes, "no node of the cluster"
    if scales:
        types = launcher_node_types(cfg.ray.autoscaling_config)
        if types is None:
            log.warning("the cluster autoscales but its launcher config %s is not here: cannot check that a "
                        "node type holds a trial (set ray.autoscaling_config)", cfg.ray.autoscaling_config)
            return
        kinds, where = nodes + list(types.values()), f"no node type of {cfg.ray.autoscaling_config}"
    missing = unplaceable(trial_bundles(cfg.resources), kinds)
    if missing:
        raise FairError(f"a trial asks for {missing}, and {where} can ever hold it (Ray would wait forever); "
                        f"lower resources.per_worker or add a node type that has it")
