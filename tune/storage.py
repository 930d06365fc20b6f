"""A sweep's files in its storage (a local folder or `s3://bucket/prefix`), written through results' store.

Layout under `<storage>/<sweep name>/`:
    experiment_state-*.json, tuner.pkl, searcher-state-*.pkl    Ray Tune (resume)
    <trial dirs>/                                               Tune results per trial
    train-<trial_id>/checkpoint_*/last.pt                       Ray Train checkpoints (worker retries)
    records/dataset=<dataset>/<trial_id>.json                   one final record per finished trial
    sweep.json, progress.json                                   the resolved sweep config, its progress

Ray reads and writes its own files from the URI. Everything the sweep itself stores goes through
`results.store` (atomic writes, bounded S3 retries, credentials only from the AWS chain, one-line scrubbed
`ResultsError`s), so tune has no storage code of its own: only this layout and the paths Ray needs.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from results.errors import ResultsError
from results.store import open_store, s3_uri

log = logging.getLogger("tune.storage")


def resolve(storage: str, base_dir: str | Path | None = None) -> str:
    """A storage URI Ray accepts: s3:// kept (scheme in lower case); local paths made absolute (Ray needs
    that). A location the store refuses is a one-line ResultsError."""
    open_store(storage)                  # the one check of a location (no I/O)
    s3 = s3_uri(storage)
    if s3 is not None or "://" in storage:
        return (s3 or storage).rstrip("/")
    p = Path(storage).expanduser()
    if not p.is_absolute():
        p = Path(base_dir or os.getcwd()) / p
    return str(p.resolve())


def join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))


def record_key(sweep: str, dataset: str, trial_id: str) -> str:
    return f"{sweep}/records/dataset={dataset}/{trial_id}.json"


def write_json(uri: str, key: str, obj: dict) -> str:
    """Write `obj` as `<uri>/<key>` in one atomic write (readers never see half a record; a retried trial
    overwrites the same key, so the write is idempotent); return its full location."""
    store = open_store(uri)
    store.put(key, json.dumps(obj, indent=1, default=str).encode())
    return store.describe(key)


def read_json(uri: str, key: str) -> dict:
    """The JSON object at `<uri>/<key>`; a missing key is `results.store.MissingKey`."""
    return json.loads(open_store(uri).get(key))


def list_records(uri: str, sweep: str) -> dict[str, list[str]]:
    """{dataset: [trial_id, ...]} of the records a sweep has written (an unreadable storage: none)."""
    out: dict[str, list[str]] = {}
    try:
        keys = open_store(uri).list(f"{sweep}/records/")
    except ResultsError as e:
        log.warning("cannot list the records of sweep %s: %s", sweep, e)
        return out
    for key in keys:
        parent, name = key.rsplit("/", 2)[-2:]
        if parent.startswith("dataset=") and name.endswith(".json"):
            out.setdefault(parent[len("dataset="):], []).append(name[:-len(".json")])
    return {k: sorted(v) for k, v in out.items()}


def probe(uri: str, sweep: str) -> None:
    """Write, read back and delete a marker under `<uri>/<sweep>/`: an unreachable endpoint, a missing
    bucket or bad credentials fail here, before anything starts (credentials never appear in the message)."""
    open_store(uri).probe(sweep)
