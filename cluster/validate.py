"""Offline checks of `ray up` launcher configs against Ray's own schema, and the node types they declare.

Ray validates a launcher YAML only when `ray up` runs, after it has started talking to the cloud. The same
code path runs offline here: `prepare_config` (merges the provider's defaults.yaml, as `ray up` does)
and `validate_config` (jsonschema against ray/autoscaler/ray-schema.json). Both are private Ray API, so
the Ray version is pinned (constraints.txt) and the tests re-check them on every upgrade.

A cluster only works when the client and every node run the same Ray, so each image a config names must
carry this client's `ray.__version__` in its tag.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from cluster import costs
from cluster.errors import ClusterError
from cluster.resources import NodeType

log = logging.getLogger("cluster.validate")

_VERSION_IN_TAG = re.compile(r"(\d+\.\d+\.\d+)")


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from `path`; fair's reader, with its one-line errors raised as ClusterError."""
    from fair.config import read_yaml as fair_read_yaml
    from fair.errors import FairError
    try:
        return fair_read_yaml(path)
    except FairError as e:
        raise ClusterError(str(e).replace("config file", "file").replace(" to --config", "")) from None


def _schema_error(e: Exception) -> str:
    """jsonschema's multi-line error as `at <path>: <message>`."""
    path = ".".join(str(p) for p in getattr(e, "absolute_path", []) or [])
    msg = str(getattr(e, "message", e)).splitlines()[0]
    return f"at {path}: {msg}" if path else msg


def prepare(config: dict, source: str = "config") -> dict:
    """The config as `ray up` would see it (defaults merged), validated against Ray's schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config
    if "provider" not in config or not isinstance(config["provider"], dict) or "type" not in config["provider"]:
        raise ClusterError(f"{source}: a launcher config needs provider.type (aws, gcp, ...)")
    try:
        prepared = prepare_config(config)
        validate_config(prepared)
    except ClusterError:
        raise
    except Exception as e:  # noqa: BLE001 - jsonschema, KeyError, ValueError from Ray's own checks
        raise ClusterError(f"{source} fails Ray's cluster config schema {_schema_error(e)}") from None
    return prepared


def images(config: dict) -> list[str]:
    """Every container image a launcher config names (global and per node type)."""
    found = []
    docker = config.get("docker") or {}
    found += [docker[k] for k in ("image", "head_image", "worker_image") if docker.get(k)]
    for nt in (config.get("available_node_types") or {}).values():
        d = (nt or {}).get("docker") or {}
        found += [d[k] for k in ("worker_image", "head_image") if d.get(k)]
    return found


def check_ray_version(image_names: list[str], source: str = "config") -> None:
    """Each image tag must name this client's Ray version (rayproject/ray:2.60.0-py311-gpu, or a project
    image tagged ...-ray2.60.0)."""
    import ray
    for image in image_names:
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        versions = _VERSION_IN_TAG.findall(tag)
        if ray.__version__ not in versions:
            raise ClusterError(f"{source}: image {image!r} does not pin Ray {ray.__version__} (this client's "
                               f"version) in its tag; client and nodes must run the same Ray")


def validate_file(path: str | Path) -> dict:
    """`fair cluster validate`: schema + Ray version of one launcher YAML; returns the prepared config."""
    data = read_yaml(path)
    prepared = prepare(data, str(path))
    check_ray_version(images(data), str(path))
    if not images(data):
        log.warning("%s names no docker image; nodes then need Ray %s installed by setup_commands",
                    path, __import__("ray").__version__)
    return prepared


def _accelerator(node_config: dict, inst: costs.Instance | None) -> str | None:
    for acc in node_config.get("guestAccelerators") or []:
        kind = str(acc.get("acceleratorType", "")).lower()
        for name in costs.GPU_FACTOR:
            if name.lower() in kind:
                return name
    return inst.accelerator if inst else None


def _is_spot(node_config: dict) -> bool:
    if (node_config.get("InstanceMarketOptions") or {}).get("MarketType") == "spot":
        return True
    sched = node_config.get("scheduling")
    items = sched if isinstance(sched, list) else [sched or {}]
    return any(i.get("preemptible") or i.get("provisioningModel") == "SPOT" for i in items if isinstance(i, dict))


def instance_name(node_config: dict) -> str:
    """AWS InstanceType or GCP machineType (with '+t4' for an N1 machine with a T4 attached)."""
    name = node_config.get("InstanceType") or node_config.get("machineType") or ""
    accs = node_config.get("guestAccelerators") or []
    if name.startswith("n1-") and accs:
        name += "+" + str(accs[0].get("acceleratorType", "")).replace("nvidia-tesla-", "")
    return name


def worker_cap(config: dict) -> int | None:
    """The launcher's top-level max_workers: Ray's cap on worker nodes of all types together (None when
    the file does not set it; a prepared config always does, from the provider's defaults.yaml)."""
    cap = config.get("max_workers")
    if cap is None:
        return None
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 0:
        raise ClusterError(f"launcher key 'max_workers' must be an integer >= 0, got {cap!r}")
    return cap


def node_types(config: dict) -> list[NodeType]:
    """The worker node types of a launcher config (resources as declared, else from the instance table)."""
    head = config.get("head_node_type")
    out = []
    for name, nt in (config.get("available_node_types") or {}).items():
        nt = nt or {}
        nc = nt.get("node_config") or {}
        inst_name = instance_name(nc)
        inst = costs.instance(inst_name)
        res: dict[str, Any] = dict(nt.get("resources") or {})
        if not res and inst:          # AWS auto-detects CPU/GPU from the instance type
            res = {"CPU": inst.cpus, **({"GPU": inst.gpus} if inst.gpus else {})}
        max_workers = 0 if name == head else int(nt.get("max_workers", config.get("max_workers", 0)))
        out.append(NodeType(name, res, max_workers, inst_name, _accelerator(nc, inst), _is_spot(nc)))
    return out
