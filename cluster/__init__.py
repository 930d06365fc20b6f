"""Cloud GPU clusters for sweeps, and submitting sweeps to them (`fair cluster ...`).

Modules: errors (ClusterError), resources (what one trial asks of a cluster, what a node holds, packing),
costs (built-in estimate tables: dataset sizes, per-image costs, instance prices), plan (trials,
concurrency, GPU-hours, node types: `fair cluster plan` / `fair sweep --plan`), validate (launcher YAMLs
against Ray's own schema), runtime_env (the project + config shipped with a job), jobs (the Ray Jobs API),
cli. Data files: aws-gpu.yaml, gcp-gpu.yaml (`ray up`), kuberay/ (RayCluster, RayJob), Dockerfile,
runtime_env.yaml. Nothing here imports torch.
"""
from cluster.errors import ClusterError

__all__ = ["ClusterError"]
