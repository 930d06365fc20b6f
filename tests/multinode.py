"""Multi-node Ray clusters on loopback for tests, shaped like cluster/aws-gpu.yaml.

- `GpuCluster`: `ray.cluster_utils.Cluster` with a head that offers no CPU to trials (the launcher's
  `head: {resources: {CPU: 0}}`) and worker nodes that declare logical GPUs (`num_gpus`) and a node-type
  resource (`gpu-small: 1`). Trials compute on the CPU (`model.device: cpu`) while holding GPU bundles.
- `LoopbackAutoscalingCluster`: `ray.cluster_utils.AutoscalingCluster` (Ray's fake multi-node provider:
  the autoscaler starts and stops real raylets on this machine) with GPU node types at `min_workers: 0`.
  Ray's own `start()` runs `ray stop --force`, which kills every Ray on the machine (other test runs
  included), and reads an example config the wheel does not ship; so this one starts its head in its own
  process group on free ports and stops only what it started.

Both must start AFTER SeaweedFS (tests.s3): their raylets, and so every trial, inherit its AWS_* env.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tune.ray_session import free_ports

HEAD_ARGS = {"num_cpus": 0, "include_dashboard": True, "dashboard_host": "127.0.0.1",
             "object_store_memory": 100 * 2**20}
GPU_NODE = {"num_cpus": 2, "num_gpus": 1, "resources": {"gpu-small": 1}, "object_store_memory": 100 * 2**20}
# the launcher's gpu-small / gpu-large, scaled down to what 2 cores hold (logical CPUs and GPUs)
AUTOSCALING_TYPES = {
    "gpu-small": {"resources": {"CPU": 2, "GPU": 1, "gpu-small": 1, "object_store_memory": 100 * 2**20},
                  "node_config": {}, "min_workers": 0, "max_workers": 2},
    "gpu-large": {"resources": {"CPU": 4, "GPU": 2, "gpu-large": 1, "object_store_memory": 100 * 2**20},
                  "node_config": {}, "min_workers": 0, "max_workers": 1},
}


def head_ports_args(gcs: int, dashboard: int) -> list[str]:
    """`ray start --head` port flags for a head beside other Rays on this machine: every port its own free
    one (a second head's dashboard agent on the default 52365 fails to bind, and the Jobs API then answers
    "No available agent to submit job")."""
    client, agent, agent_grpc, metrics, renv, nm, om = free_ports(7)
    return [f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
            f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={renv}", f"--node-manager-port={nm}", f"--object-manager-port={om}"]


class GpuCluster:
    """A head with no CPU for trials and `workers` GPU nodes; `replace(node)` is a pre-emption."""

    def __init__(self, workers: int = 2):
        from ray.cluster_utils import Cluster
        self.cluster = Cluster(initialize_head=True, shutdown_at_exit=True,
                               head_node_args={**HEAD_ARGS, "dashboard_port": free_ports(1)[0]})
        for _ in range(workers):
            self.add_worker()
        self.cluster.wait_for_nodes()

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_worker(self):
        return self.cluster.add_node(**GPU_NODE)

    def worker(self, node_id: str):
        """The worker node (cluster_utils Node) with this Ray node id."""
        found = [n for n in self.cluster.worker_nodes if n.node_id == node_id]
        assert found, f"node {node_id} is not a worker of this cluster (the head holds no trial)"
        return found[0]

    def remove(self, node_id: str) -> None:
        """Kill every process of that worker node at once (no graceful drain: a spot node just vanishes)."""
        self.cluster.remove_node(self.worker(node_id), allow_graceful=False)

    def shutdown(self) -> None:
        self.cluster.shutdown()


class LoopbackAutoscalingCluster:
    """What ray.cluster_utils.AutoscalingCluster starts (`ray start --head --autoscaling-config` of its
    fake multi-node config, RAY_FAKE_CLUSTER=1), on free loopback ports, stopped without `ray stop`."""

    def __init__(self, workdir: Path, worker_node_types: dict = AUTOSCALING_TYPES, idle_timeout_minutes=0.1):
        self.workdir = workdir
        self.port, self.dashboard_port = free_ports(2)
        self.config = self._config(worker_node_types, idle_timeout_minutes)
        self.proc: subprocess.Popen | None = None

    def _config(self, types: dict, idle_timeout_minutes: float) -> dict:
        """Ray's fake_multi_node/example.yaml (not in the wheel), as AutoscalingCluster fills it in."""
        return {
            "cluster_name": "fake_multinode", "max_workers": sum(t["max_workers"] for t in types.values()),
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{self.port}"},
            "available_node_types": {**types, "ray.head.default": {"resources": {"CPU": 0}, "node_config": {},
                                                                    "max_workers": 0}},
            "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
            "idle_timeout_minutes": idle_timeout_minutes, "docker": {}, "initialization_commands": [],
            "setup_commands": [], "head_setup_commands": [], "worker_setup_commands": [],
            "head_start_ray_commands": [], "worker_start_ray_commands": [], "file_mounts": {},
            "cluster_synced_files": [], "file_mounts_sync_continuously": False, "rsync_exclude": [],
            "rsync_filter": []}

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def config_file(self) -> Path:
        """The launcher config the autoscaler runs with (a sweep's ray.autoscaling_config)."""
        return self.workdir / "autoscaling.json"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.config_file
        config.write_text(json.dumps(self.config))
        ray_bin = str(Path(sys.executable).parent / "ray")
        cmd = [ray_bin, "start", "--head", "--block", f"--autoscaling-config={config}", "--num-cpus=0",
               *head_ports_args(self.port, self.dashboard_port),
               f"--temp-dir={self.workdir / 'ray'}", "--object-store-memory=104857600",
               "--disable-usage-stats"]
        env = {**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1",
               # a job's `python` is the one on the head's PATH: this venv's
               "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
        self.proc = subprocess.Popen(cmd, env=env, stdout=open(self.workdir / "head.log", "ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        import urllib.request
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, (self.workdir / "head.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"the autoscaling head did not answer within {timeout} s; see {self.workdir}/head.log")

    def shutdown(self) -> None:
        """SIGTERM the head's group (GCS, raylet, monitor, dashboard), then SIGKILL whatever of this cluster
        is left: the autoscaler's nodes run in groups of their own, found by this cluster's GCS port."""
        if self.proc is not None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.proc.pid, sig)
                    self.proc.wait(timeout=10)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def processes(self) -> list[int]:
        """Pids whose command line names this cluster's GCS address or temp dir (raylets, workers)."""
        marks = (f"127.0.0.1:{self.port}".encode(), str(self.workdir).encode())
        pids = []
        for proc in Path("/proc").iterdir():
            if proc.name.isdigit() and int(proc.name) != os.getpid():
                try:
                    cmd = (proc / "cmdline").read_bytes()
                except OSError:
                    continue
                if any(m in cmd for m in marks):
                    pids.append(int(proc.name))
        return pids


def worker_nodes() -> list[dict]:
    """Alive nodes other than the head of the connected cluster: [{node_id, resources}]."""
    import ray
    return [{"node_id": n["NodeID"], "resources": n["Resources"]} for n in ray.nodes()
            if n["Alive"] and "node:__internal_head__" not in n["Resources"]]


def hold_markers(sweep: str) -> list[Path]:
    """The `hold.marker` of a sweep (faults.hold_in_epoch: one trial holds, once): it names a Ray node id."""
    from tune.scratch import sweep_dir
    return sorted(sweep_dir(sweep).glob("hold.marker"))
