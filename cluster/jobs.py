"""A running Ray cluster seen through its Jobs API (the dashboard's HTTP port, 8265 by default).

Thin on purpose: `ray.job_submission.JobSubmissionClient` does the work; this module turns its
exceptions into one-line ClusterErrors that say what to do, streams logs, and reads the cluster's nodes
(State API) so that a sweep asking for resources no node has is refused before it hangs (Ray would
queue it forever, silently).
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from typing import Optional, TextIO

from cluster.errors import ClusterError
from cluster.resources import NodeType

log = logging.getLogger("cluster.jobs")

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
# Node type names in the autoscaler's status text: " 1 gpu-small" (`ray status` style, "Active:") and
# " - gpu-small: 1" (the legacy text, after "Worker node types:").
_ACTIVE_LINE = re.compile(r"^\s+\d+\s+([A-Za-z0-9_.-]+)\s*$", re.M)
_TYPE_LINE = re.compile(r"^\s+-\s+([A-Za-z0-9_.-]+):\s*\d+", re.M)


def node_type_names(status_text: str) -> set[str]:
    """Node type names mentioned in an autoscaler status text (see above)."""
    head, _, types = status_text.partition("Worker node types:")
    return set(_ACTIVE_LINE.findall(status_text)) | set(_TYPE_LINE.findall(types))
_READONLY_TYPE = re.compile(r"^node_[0-9a-f]+$")


def default_address() -> str:
    """$RAY_ADDRESS when it names a dashboard (http...), else the local dashboard port."""
    env = os.environ.get("RAY_ADDRESS", "")
    return env if env.startswith(("http://", "https://")) else DEFAULT_ADDRESS


def _env_defaults() -> None:
    # Ray rewrites 127.0.0.1 to the machine's outward IP unless this is set (before `import ray`), and a
    # client then cannot reach a loopback-only head.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def _quiet_ray_client() -> None:
    """Ray configures its loggers on import; the packaging chatter of an upload ("Uploading package",
    ".git is now ignored by default") and the websocket INFO lines only repeat what we print."""
    for name, level in (("ray", logging.WARNING), ("ray._private.runtime_env", logging.ERROR),
                        ("ray.dashboard", logging.WARNING)):
        logging.getLogger(name).setLevel(level)


def _auth_hint(msg: str) -> str:
    if "authentication" in msg.lower() or "401" in msg or "403" in msg:
        return ("; the cluster uses token auth: export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN "
                "(`ray get-auth-token` on the head)")
    return ""


class Cluster:
    """One cluster's Jobs API. Connecting checks that the address answers."""

    def __init__(self, address: Optional[str] = None):
        _env_defaults()
        self.address = (address or default_address()).rstrip("/")
        if "://" not in self.address:
            self.address = "http://" + self.address
        from ray.job_submission import JobSubmissionClient
        _quiet_ray_client()
        try:
            self.client = JobSubmissionClient(self.address)
        except ConnectionError:
            raise ClusterError(f"cannot reach a Ray cluster at {self.address}; start one with "
                               f"`ray up cluster/aws-gpu.yaml` (then `ray dashboard cluster/aws-gpu.yaml`) "
                               f"or pass --address") from None
        except Exception as e:  # noqa: BLE001 - auth errors, bad URLs
            line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ClusterError(f"cannot use the Ray cluster at {self.address}: {line}{_auth_hint(line)}") from None

    # ------------------------------------------------------------------------------------------ jobs
    def _call(self, fn, job_id: str, *args):
        try:
            return fn(job_id, *args)
        except RuntimeError as e:
            msg = str(e)
            if "404" in msg or "does not exist" in msg:
                raise ClusterError(f"no job {job_id!r} on the cluster at {self.address}; "
                                   f"`fair cluster list` shows its jobs") from None
            raise ClusterError(f"job {job_id}: {msg.splitlines()[0]}{_auth_hint(msg)}") from None
        except ConnectionError:
            raise ClusterError(f"lost the Ray cluster at {self.address}") from None

    def submit(self, entrypoint: str, runtime_env: dict, submission_id: Optional[str] = None,
               metadata: Optional[dict] = None) -> str:
        try:
            return self.client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env,
                                          submission_id=submission_id, metadata=metadata)
        except (RuntimeError, ValueError) as e:
            msg = str(e).splitlines()[0]
            raise ClusterError(f"submitting to {self.address} failed: {msg}{_auth_hint(msg)}") from None

    def info(self, job_id: str):
        return self._call(self.client.get_job_info, job_id)

    def status(self, job_id: str) -> str:
        st = self.info(job_id).status
        return str(getattr(st, "value", st))

    def logs(self, job_id: str) -> str:
        return self._call(self.client.get_job_logs, job_id)

    def stop(self, job_id: str) -> bool:
        return bool(self._call(self.client.stop_job, job_id))

    def list(self) -> list:
        return sorted(self.client.list_jobs(), key=lambda j: j.start_time or 0)

    def follow(self, job_id: str, out: Optional[TextIO] = None) -> str:
        """Stream the job's logs (to `out`, default the current sys.stdout) until it ends; returns its
        final status."""
        self.info(job_id)       # unknown ids fail here, as one line
        out = out or sys.stdout

        async def tail():
            async for chunk in self.client.tail_job_logs(job_id):
                out.write(chunk)
                out.flush()
        try:
            asyncio.run(tail())
        except RuntimeError as e:   # the websocket dropped (head restarted, network): fall back to polling
            log.warning("log stream of %s ended early (%s); waiting for its status", job_id, str(e).splitlines()[0])
        return self.wait(job_id)

    def wait(self, job_id: str, timeout_s: Optional[float] = None, poll_s: float = 1.0) -> str:
        """Poll until the job is in a terminal state (or `timeout_s` passes); returns the last status."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            status = self.status(job_id)
            if status in TERMINAL or (deadline is not None and time.monotonic() > deadline):
                return status
            time.sleep(poll_s)

    # -------------------------------------------------------------------------------------- resources
    def nodes(self, settle_s: float = 10.0) -> list[NodeType]:
        """The alive nodes and their logical resources (State API; needs ray[default] on the head).

        A head that has just started answers the Jobs API before it lists itself; since a live cluster
        always has its head, an empty answer is retried for up to `settle_s` seconds.
        """
        from ray.util.state import list_nodes
        deadline = time.monotonic() + settle_s
        while True:
            try:
                states = list_nodes(address=self.address, filters=[("state", "=", "ALIVE")],
                                    raise_on_missing_output=False)
            except Exception as e:  # noqa: BLE001 - an old head or a proxy without the State API
                log.warning("cannot list the nodes of %s (%s); resource checks skipped", self.address,
                            str(e).splitlines()[0] if str(e) else type(e).__name__)
                return []
            if states or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        return [NodeType(s.node_name or s.node_ip, dict(s.resources_total or {}), max_workers=1)
                for s in states]

    def autoscaling(self) -> Optional[bool]:
        """True when an autoscaler manages this cluster's node types, False when only Ray's read-only
        monitor reports on it (a plain `ray start --head` cluster), None when nothing says.

        Checked on Ray 2.60: the dashboard's /api/cluster_status returns the v1 autoscaler's status (a
        text, and a JSON report mapping node ids to node types). A `ray up` autoscaler names its
        configured node types there (head, gpu-small, ...); the read-only monitor of a hand-started cluster
        names anonymous `node_<id>` types, or none yet. The v2 autoscaler (KubeRay) publishes neither.
        """
        try:
            r = self.client._do_request("GET", "/api/cluster_status")   # same auth headers as every call
            data = r.json().get("data") or {}
        except Exception:  # noqa: BLE001
            return None
        types = node_type_names(str(data.get("autoscalingStatus") or ""))
        # The JSON report's keys are camel-cased by the dashboard ("node_ab12" -> "nodeAb12"); the values
        # of nodeTypeMapping (node id -> node type) are not.
        report = (data.get("clusterStatus") or {}).get("autoscalerReport") or {}
        if isinstance(report.get("nodeTypeMapping"), dict):
            types |= {str(v) for v in report["nodeTypeMapping"].values()}
        if not types:
            return None
        return any(not _READONLY_TYPE.match(t) for t in types)
