"""Print `export ...` lines that point the S3 code path at Google Cloud Storage, from the node's identity.

Sweep storage goes through the S3 API (Ray's pyarrow, results/store.py's boto3). GCS speaks it at
https://storage.googleapis.com, but only with HMAC keys. So that no key sits in any file or image, a GCP
node fetches them at `ray start` from Secret Manager with its own service account (metadata server
token), and the raylet (hence every trial) inherits them as environment variables:

    eval "$(python -m cluster.gcp_storage_env)"; ray start ...

Secrets (created once, see cluster/README.md): `fair-sweeps-hmac-id` and `fair-sweeps-hmac-secret`
(override with --id-secret / --key-secret). Standard library only: it runs before anything else.
"""
from __future__ import annotations

import argparse
import base64
import json
import shlex
import sys
import urllib.request

_METADATA = "http://metadata.google.internal/computeMetadata/v1"


def _get(url: str, headers: dict) -> dict | str:
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read().decode()
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return body


def secret(project: str, name: str, token: str) -> str:
    url = f"https://secretmanager.googleapis.com/v1/projects/{project}/secrets/{name}/versions/latest:access"
    data = _get(url, {"Authorization": f"Bearer {token}"})
    return base64.b64decode(data["payload"]["data"]).decode().strip()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cluster.gcp_storage_env", description=__doc__.split("\n\n")[0])
    p.add_argument("--id-secret", default="fair-sweeps-hmac-id")
    p.add_argument("--key-secret", default="fair-sweeps-hmac-secret")
    a = p.parse_args(argv)
    flavor = {"Metadata-Flavor": "Google"}
    try:
        project = _get(f"{_METADATA}/project/project-id", flavor)
        token = _get(f"{_METADATA}/instance/service-accounts/default/token", flavor)["access_token"]
        env = {"AWS_ACCESS_KEY_ID": secret(project, a.id_secret, token),
               "AWS_SECRET_ACCESS_KEY": secret(project, a.key_secret, token),
               "AWS_ENDPOINT_URL": "https://storage.googleapis.com",
               "AWS_REGION": "auto"}
    except Exception as e:  # noqa: BLE001 - the node still starts; storage then fails with a clear error
        print(f"# gcp_storage_env: no GCS HMAC credentials ({type(e).__name__}: {e})", file=sys.stderr)
        return 0
    for k, v in env.items():
        print(f"export {k}={shlex.quote(str(v))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
