"""Offline checks of `ray up` launcher configs against Ray's own schema, and the node types they declare.

Ray validates a launcher YAML only when `ray up` runs, after it has started talking to the cloud. The same
code path runs offline here: `prepare_config` (merges the provider's defaults.yaml, as `ray up` does)
and `validate_config` (jsonschema against ray/autoscaler/ray-schema.json). Both are private Ray API, so
the Ray version is pinned (constraints.txt) and the tests re-check them on every upgrade.

A cluster only works when the client and every node run the same Ray, so each image a config names must
carry this client's `ray.__version__` in its tag. A node boots fast and runs torch's CUDA wheel only when
(1) its container image already carries the project and torch (cluster/Dockerfile), so a launcher must name
one, and (2) its machine image has an NVIDIA driver new enough for that wheel: an AWS node type without
ImageId gets Ray's built-in default (Deep Learning AMI Ubuntu 18.04 V71, CUDA 11.2 driver), so every node
type must name one; a GCP GPU node type on a Deep Learning VM family must name a driver branch of at least
MIN_NVIDIA_DRIVER (the `-nvidia-NNN` of families such as common-cu129-ubuntu-2204-nvidia-580).
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

# torch 2.14.1's Linux wheel (constraints.txt) is built for CUDA 13.0 (`torch.version.cuda`); CUDA 13.0 needs
# an R580 driver or newer (tests/test_cluster_configs.py ties this to the installed torch).
MIN_NVIDIA_DRIVER = 580
# The recommended machine images, named in messages and used by the shipped launchers (the tests check both).
# AWS publishes the newest "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04)" of each region under
# this public SSM parameter; EC2 resolves `resolve:ssm:<name>` at launch (docs/cluster.md, "Machine images").
AWS_GPU_AMI = "resolve:ssm:/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
GCP_GPU_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu129-ubuntu-2204-nvidia-580"
PROJECT_IMAGE_HINT = "the project image built from cluster/Dockerfile (ghcr.io/your-org/fair-sweeps:<version>-ray<ray>-py311-gpu)"
_AMI = re.compile(r"^(ami-[0-9a-f]{8,17}|resolve:ssm:/\S+)$")
_DLVM_DRIVER = re.compile(r"^projects/deeplearning-platform-release/global/images/(?:family/)?(?P<name>[\w.-]+)$")
_DRIVER_BRANCH = re.compile(r"-nvidia-(\d+)")


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


def check_images(config: dict, source: str = "config") -> None:
    """A launcher must name a container image: without one every cold node pip-installs torch and the
    project (gigabytes) before its first trial, on whatever Python the machine image has."""
    found = images(config)
    if not found:
        raise ClusterError(f"{source} names no docker image; set docker.image to {PROJECT_IMAGE_HINT}, "
                           f"which carries Ray {__import__('ray').__version__}, torch and the project")
    for image in found:
        if image.split(":", 1)[0] in ("rayproject/ray", "docker.io/rayproject/ray"):
            log.warning("%s: image %s is Ray's own and carries no torch, so every cold node installs it in "
                        "setup_commands; name %s instead", source, image, PROJECT_IMAGE_HINT)


def _gcp_boot_image(node_config: dict) -> str:
    for disk in node_config.get("disks") or []:
        if isinstance(disk, dict) and disk.get("boot"):
            return str((disk.get("initializeParams") or {}).get("sourceImage") or "")
    return ""


def check_machine_images(config: dict, source: str = "config") -> None:
    """Every node type boots a machine image whose NVIDIA driver runs torch's CUDA wheel (see the module
    docstring): AWS node types name an ImageId, GCP node types a boot image, GPU ones a new enough driver."""
    provider = (config.get("provider") or {}).get("type")
    if provider not in ("aws", "gcp"):
        return
    gpus = {n.name: n.gpus for n in node_types(config)}
    for name, nt in (config.get("available_node_types") or {}).items():
        nc = (nt or {}).get("node_config") or {}
        if provider == "aws":
            ami = str(nc.get("ImageId") or "")
            if not _AMI.match(ami):
                what = f"ImageId {ami!r} is not an AMI id or resolve:ssm: parameter" if ami else "sets no ImageId"
                raise ClusterError(f"{source}: node type {name!r} {what}, and Ray's fallback AMI (Ubuntu 18.04, "
                                   f"CUDA 11.2 driver) cannot run torch's CUDA wheel; set node_config.ImageId: "
                                   f"{AWS_GPU_AMI} (or the ami-... it resolves to in your region)")
            continue
        image = _gcp_boot_image(nc)
        if not image:
            raise ClusterError(f"{source}: node type {name!r} names no boot disk sourceImage; set "
                               f"node_config.disks[0].initializeParams.sourceImage: {GCP_GPU_IMAGE}")
        dlvm = _DLVM_DRIVER.match(image)
        if gpus.get(name) and dlvm:          # a Deep Learning VM image: its name carries the driver branch
            branch = _DRIVER_BRANCH.search(dlvm.group("name"))
            if not branch or int(branch.group(1)) < MIN_NVIDIA_DRIVER:
                raise ClusterError(f"{source}: GPU node type {name!r} boots {dlvm.group('name')!r}, whose NVIDIA "
                                   f"driver is not R{MIN_NVIDIA_DRIVER}+ as torch's CUDA wheel needs; use "
                                   f"sourceImage: {GCP_GPU_IMAGE}")


def validate_file(path: str | Path) -> dict:
    """`fair cluster validate` (and submit/plan --cluster-config): schema, Ray version, a container image,
    machine images with a new enough driver; returns the prepared config."""
    data = read_yaml(path)
    prepared = prepare(data, str(path))
    check_images(data, str(path))
    check_ray_version(images(data), str(path))
    check_machine_images(data, str(path))
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
