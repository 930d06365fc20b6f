"""Starting or attaching to Ray, and the resource arithmetic that keeps a sweep from hanging.

Ray 2.60 on a small machine (docs/sweeps.md): ports must stay on loopback, token auth is off for a
throwaway local cluster, the dashboard must run (Train's placement-group cleanup after an early stop
needs the State API), and a resource request the cluster cannot hold hangs silently; so the request is
checked here and concurrency is derived from it.
"""
from __future__ import annotations

import logging
import math
import os
import socket

from fair.errors import FairError

log = logging.getLogger("tune.ray_session")

LOCAL_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",   # bind every Ray port to 127.0.0.1
    "RAY_AUTH_MODE": "disabled",                # a local, single-user cluster
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1", # report latency is one poll interval (2 s by default)
    "RAY_AIR_NEW_OUTPUT": "0",                  # with verbose=0: Tune prints nothing of its own
}


def ray_psutil():
    """psutil as Ray ships it (ray/thirdparty_files, put on sys.path by `import ray`): no dependency of ours."""
    import importlib
    importlib.import_module("ray")
    return importlib.import_module("psutil")


def set_env_defaults(ray_opts=None, local: bool = True) -> dict:
    """Environment for Ray, set before `import ray` (setdefault: the user's values win). Returns the
    variables the Train controllers and workers must see (passed as runtime_env when attaching)."""
    if local:
        for k, v in LOCAL_ENV.items():
            os.environ.setdefault(k, v)
    # Tune snapshots the experiment state at every trial checkpoint when num_to_keep is set (runner direct;
    # the trainer runner's checkpoints are Train's) and warns when two come within 5 s, i.e. in every sweep
    # with short epochs. The frequency costs little: about 0.28 ms per trial held, 56 ms at 200 trials
    # (python -m bench.snapshots; docs/sweeps.md). Ray's warning for a really slow snapshot (>30 s) stays on.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    train_env = {}
    if ray_opts is not None:
        train_env["RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"] = str(ray_opts.worker_start_timeout_s)
        os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", str(ray_opts.worker_start_timeout_s))
    return train_env


def free_ports(n: int) -> list[int]:
    """n distinct free loopback ports from the OS's ephemeral range (outside Ray's worker range 10002-19999)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    """One free loopback port (free_ports)."""
    return free_ports(1)[0]


def init(address: str | None, ray_opts) -> bool:
    """Start a local Ray (or attach to `address`). Returns True when this call started it (so the caller
    shuts it down), False when Ray was already up in this process or we attached."""
    env = set_env_defaults(ray_opts, local=address is None)
    import ray
    if ray.is_initialized():
        return False
    if address:
        # On an existing cluster the resources are the cluster's; only the env the controllers need.
        ray.init(address=address, log_to_driver=False, logging_level="WARNING",
                 runtime_env={"env_vars": env} if env else None)
        return False
    # "local": a Ray of our own, never the cluster another `ray start` (or a test cluster) on this machine
    # advertises in /tmp/ray/ray_current_cluster, which a bare ray.init() would join
    ray.init(address="local", num_cpus=ray_opts.num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             dashboard_port=free_port(), log_to_driver=False, logging_level="WARNING",
             object_store_memory=256 * 2**20)
    return True


def max_concurrent(per_trial: dict[str, float], check: bool, cap: int | None) -> int:
    """How many trials can hold their resources at once on this cluster (bounded by `cap`).

    Raises FairError when even one trial does not fit (and `check` is on): Ray would wait forever.
    Tune itself only sees the trial driver's tiny request, so without this bound it would start every
    trial and leave their worker groups queueing. Without `check` (an autoscaling cluster, which starts
    small and grows as trials queue) the resources seen now say nothing of the cluster's full size: the
    bound is `cap` (budget.max_concurrent, which the sweep config requires then).
    """
    if not check and cap:
        return cap
    import ray
    total = ray.cluster_resources()
    fits = []
    for res, need in per_trial.items():
        if need <= 0:
            continue
        have = float(total.get(res, 0))
        if need > have + 1e-9:
            if check:
                raise FairError(f"one trial needs {need:g} {res} (resources.num_workers x resources.per_worker "
                                f"+ trial_driver_cpu) but the cluster has {have:g}; lower the request, or set "
                                f"resources.check_cluster=false on an autoscaling cluster")
            fits.append(1)
        else:
            fits.append(math.floor(have / need + 1e-9))
    n = max(1, min(fits) if fits else 1)
    return min(n, cap) if cap else n
