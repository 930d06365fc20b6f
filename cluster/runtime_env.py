"""The runtime environment a submitted sweep runs in: the project's working tree, and non-secret settings.

Ray uploads `working_dir` to the cluster (once per content hash) and starts the job's entrypoint and every
trial and Train worker inside it, so the code that runs is the code on the submitter's disk, while the
dependencies come from the cluster's image (cluster/Dockerfile, which every launcher and manifest names).

Credentials never travel with a job: on a cloud cluster they come from the nodes' own identity (an IAM
instance profile, a GCP service account, IRSA / workload identity on Kubernetes). Only the settings that
say *where* storage is (AWS_ENDPOINT_URL, AWS_REGION) pass through from the submitter's environment, and
any variable that looks like a secret is refused.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional

from cluster.errors import ClusterError

log = logging.getLogger("cluster.runtime_env")

# Never uploaded: environments, VCS data, local outputs, caches (uploads are capped at a few hundred MB).
# gitignore syntax: a leading "/" anchors at the working dir, so configs/sweeps/ still travels.
DEFAULT_EXCLUDES = ["/.venv", "/venv", "/.git", "/runs", "/sweeps", "/results_out", "/.cache", "__pycache__",
                    "*.egg-info", "/.pytest_cache"]
PASS_THROUGH = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION")
_SECRET = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|SESSION|CREDENTIAL|PRIVATE|API_KEY", re.I)
RUNTIME_ENV_FILE = Path("cluster") / "runtime_env.yaml"


def project_root(start: Optional[Path] = None) -> Path:
    """The checkout to ship: the nearest folder at or above `start` (cwd) holding the project's
    pyproject.toml, else the one this package was imported from."""
    here = (start or Path.cwd()).resolve()
    candidates = [here, *here.parents, Path(__file__).resolve().parents[1]]
    for d in candidates:
        py = d / "pyproject.toml"
        if py.is_file() and 'name = "fair-sweeps"' in py.read_text(errors="replace"):
            return d
    raise ClusterError("not inside a fair-sweeps checkout; run from the project folder or pass --working-dir")


def check_no_secrets(env_vars: dict) -> None:
    bad = sorted(k for k in env_vars if _SECRET.search(str(k)))
    if bad:
        raise ClusterError(f"refusing to send {', '.join(bad)} to the cluster: credentials come from the "
                           f"cluster's own identity (instance profile / service account), never from a job")


def build(working_dir: Path, file: Optional[Path] = None, extra_env: Optional[dict] = None,
          environ: Optional[dict] = None) -> dict:
    """The runtime_env dict for JobSubmissionClient.submit_job.

    `file`: a `ray job submit --runtime-env` style YAML (working_dir, excludes, env_vars, pip, ...); its
    excludes add to DEFAULT_EXCLUDES and its relative working_dir is taken from the project root.
    """
    import yaml
    spec: dict = {}
    if file is not None:
        try:
            spec = yaml.safe_load(Path(file).read_text()) or {}
        except OSError as e:
            raise ClusterError(f"runtime env file {file}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ClusterError(f"runtime env file {file}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(spec, dict):
            raise ClusterError(f"runtime env file {file}: expected a mapping")
    env = dict(spec.get("env_vars") or {})
    environ = os.environ if environ is None else environ
    env.update({k: environ[k] for k in PASS_THROUGH if environ.get(k)})
    env.update(extra_env or {})
    env = {str(k): str(v) for k, v in env.items()}
    check_no_secrets(env)
    wd = Path(spec["working_dir"]) if spec.get("working_dir") else working_dir
    if not wd.is_absolute():
        wd = working_dir / wd
    if not wd.is_dir():
        raise ClusterError(f"working_dir {wd} is not a folder")
    excludes = list(dict.fromkeys(DEFAULT_EXCLUDES + list(spec.get("excludes") or [])))
    out = {k: v for k, v in spec.items() if k not in ("working_dir", "excludes", "env_vars")}
    out.update({"working_dir": str(wd), "excludes": excludes})
    if env:
        out["env_vars"] = env
    return out


def default_file(root: Path) -> Optional[Path]:
    p = root / RUNTIME_ENV_FILE
    return p if p.is_file() else None
