"""Sweep storage: a local folder or `s3://bucket/prefix`, through pyarrow.fs so both share one code path.

Layout under `<storage>/<sweep name>/`:
    experiment_state-*.json, tuner.pkl, searcher-state-*.pkl    Ray Tune (resume)
    <trial dirs>/                                               Tune results per trial
    train-<trial_id>/checkpoint_*/last.pt                       Ray Train checkpoints (worker retries)
    records/dataset=<dataset>/<trial_id>.json                   one final record per finished trial

S3 credentials come from the standard AWS chain (env, profile, instance role); AWS_ENDPOINT_URL points at
an S3-compatible server. Nothing here prints or stores a credential, and error messages are scrubbed.
"""
from __future__ import annotations

import json
import os
import re
import uuid
from pathlib import Path

from fair.errors import FairError

_SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def check_uri(storage: str) -> None:
    """A one-line FairError for a storage string that is neither a local folder nor s3://bucket/prefix."""
    if "://" in storage:
        scheme = storage.split("://", 1)[0]
        if scheme not in ("s3", "file"):
            raise FairError(f"storage {storage!r}: only local folders and s3://bucket/prefix are supported")
        if scheme == "s3" and not storage[5:].strip("/"):
            raise FairError("storage 's3://' needs a bucket: s3://bucket/prefix")
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]+:/", storage):
        # 's3:/bucket/x' would otherwise become a local folder named 's3:' and the sweep would write there
        raise FairError(f"storage {storage!r} is not a URI (one slash?); write s3://bucket/prefix, or a local "
                        f"folder without a scheme")


def resolve(storage: str, base_dir: str | Path | None = None) -> str:
    """A storage URI Ray accepts: s3:// kept as is; local paths made absolute (Ray needs that)."""
    check_uri(storage)
    if "://" in storage:
        return storage.rstrip("/")
    p = Path(storage).expanduser()
    if not p.is_absolute():
        p = Path(base_dir or os.getcwd()) / p
    return str(p.resolve())


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a storage URI, with short timeouts for S3 so that a dead
    endpoint fails in seconds instead of retrying for minutes."""
    import pyarrow.fs as pafs
    if is_s3(uri):
        # Credentials come from the standard chain inside the AWS SDK. The endpoint does not when the
        # filesystem is built directly (only FileSystem.from_uri reads AWS_ENDPOINT_URL), so pass it on.
        kw = dict(connect_timeout=5, request_timeout=30,
                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            scheme, _, rest = endpoint.rpartition("://")
            kw.update(endpoint_override=rest.rstrip("/"), scheme=scheme or "https")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kw["region"] = region
        return pafs.S3FileSystem(**kw), uri[len("s3://"):].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), uri


def join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))


def record_key(sweep: str, dataset: str, trial_id: str) -> str:
    return f"{sweep}/records/dataset={dataset}/{trial_id}.json"


def _scrub(msg: str) -> str:
    for k in _SECRET_ENV:
        v = os.environ.get(k)
        if v:
            msg = msg.replace(v, "***")
    return msg.splitlines()[0] if msg else msg


def write_json(uri: str, key: str, obj: dict) -> str:
    """Write `obj` as `<uri>/<key>` in one whole-object write (S3 PUT / local temp file + rename), so a
    reader never sees half a record and a retried trial overwrites the same key (idempotent)."""
    fs, root = filesystem(uri)
    path = join(root, key)
    data = json.dumps(obj, indent=1, default=str).encode()
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    if is_s3(uri):
        with fs.open_output_stream(path) as out:   # one PutObject for small bodies
            out.write(data)
    else:
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        with fs.open_output_stream(tmp) as out:
            out.write(data)
        fs.move(tmp, path)
    return path


def list_records(uri: str, sweep: str) -> dict[str, list[str]]:
    """{dataset: [trial_id, ...]} of the records a sweep has written (directory markers ignored)."""
    import pyarrow.fs as pafs
    fs, root = filesystem(uri)
    base = join(root, sweep, "records")
    out: dict[str, list[str]] = {}
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    except OSError:
        return out
    for info in infos:
        if info.type != pafs.FileType.File or not info.path.endswith(".json"):
            continue
        parent, name = info.path.rsplit("/", 2)[-2:]
        if parent.startswith("dataset="):
            out.setdefault(parent[len("dataset="):], []).append(name[:-len(".json")])
    return {k: sorted(v) for k, v in out.items()}


def read_json(uri: str, key: str) -> dict:
    fs, root = filesystem(uri)
    with fs.open_input_stream(join(root, key)) as fh:
        return json.loads(fh.read())


def probe(uri: str, sweep: str) -> None:
    """Write, read back and delete a marker under `<uri>/<sweep>/`: an unreachable endpoint, a missing
    bucket or bad credentials fail here, before anything starts (credentials never appear in the message)."""
    fs, root = filesystem(uri)
    path = join(root, sweep, f".probe-{uuid.uuid4().hex[:8]}")
    where = uri if is_s3(uri) else root
    try:
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as out:
            out.write(b"fair-sweep storage probe\n")
        with fs.open_input_stream(path) as fh:
            fh.read()
        fs.delete_file(path)
    except (OSError, ValueError) as e:
        hint = (" (check AWS_ENDPOINT_URL, the bucket and your AWS credentials/profile)" if is_s3(uri)
                else " (check the path and its permissions)")
        raise FairError(f"storage {where} is not usable: {_scrub(str(e))}{hint}") from None
