"""`fair results collect`: gather run records into the `trials` and `epochs` tables of a store.

A source is a sweep storage (local or `s3://bucket/prefix`; every `<sweep>/records/dataset=<d>/<id>.json`
below it), a sweep root, a `fair adapt` run folder (its `record.json`, with `epochs.jsonl` beside it), a
record file, or a glob of any of these. Collecting the same records again leaves the tables byte-identical.
"""
from __future__ import annotations

import glob as globlib
import json
import logging
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from results.errors import ResultsError
from results.parquet import compact, table_hp_types, unify_parts, write_rows
from results.schema import RecordRows, merge_hp_types, record_to_rows
from results.store import LocalStore, S3Options, S3Store, Store, open_store, s3_uri

log = logging.getLogger(__name__)
_SWEEP_RECORD = re.compile(r"(?:^|/)(?P<sweep>[^/]+)/records/dataset=[^/]+/[^/]+\.json$")
_ANY_SWEEP_RECORD = re.compile(r"(?:^|/)records/dataset=[^/]+/[^/]+\.json$")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class FoundRecord:
    """A record file found in a source: the store that holds it and its key there."""

    store: Store
    key: str

    @property
    def source(self) -> str:
        return self.store.describe(self.key)

    @property
    def sweep_hint(self) -> str | None:
        m = _SWEEP_RECORD.search(self.source)
        return m["sweep"] if m else None


def _is_record_key(key: str) -> bool:
    return key.rsplit("/", 1)[-1] == "record.json" or bool(_ANY_SWEEP_RECORD.search(key))


def find_records(sources: list[str], options: S3Options | None = None) -> list[FoundRecord]:
    """Every record file in `sources`, in a deterministic order; a source with none is a ResultsError."""
    found: dict[str, FoundRecord] = {}
    for source in sources:
        hits = _find_in(source, options)
        if not hits:
            raise ResultsError(f"no records in {source}: expected <sweep>/records/dataset=<d>/<trial>.json or "
                               "<run_dir>/record.json below it")
        for rec in hits:
            found.setdefault(rec.source, rec)
    return [found[k] for k in sorted(found)]


def _find_in(source: str, options: S3Options | None) -> list[FoundRecord]:
    s3 = s3_uri(source)
    if s3 is not None:
        bucket, _, prefix = s3[5:].partition("/")
        store = open_store(f"s3://{bucket}", options)
        if prefix.endswith(".json"):
            return [FoundRecord(store, prefix)] if store.exists(prefix) else []
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        return [FoundRecord(store, k) for k in store.list(prefix) if _is_record_key(k)]
    if "://" in source:
        raise ResultsError(f"unsupported source {source!r}: use a local path, a glob or s3://BUCKET/PREFIX")
    if _GLOB_CHARS & set(source):
        paths = sorted(globlib.glob(source, recursive=True))
        if not paths:
            raise ResultsError(f"no files match {source!r}")
        return [r for p in paths for r in _find_local(Path(p), explicit=False)]
    path = Path(source)
    if not path.exists():
        raise ResultsError(f"source {source} does not exist; give a sweep storage, a run folder or a record.json")
    return _find_local(path, explicit=True)


def _find_local(path: Path, explicit: bool) -> list[FoundRecord]:
    if path.is_file():
        if path.suffix != ".json":
            if explicit:
                raise ResultsError(f"{path} is not a .json record")
            return []
        return [FoundRecord(LocalStore(os.path.normpath(path.parent)), path.name)]
    store = LocalStore(os.path.normpath(path))
    return [FoundRecord(store, k) for k in store.list() if _is_record_key(k)]


def _load(rec: FoundRecord, sweep_default: str | None) -> RecordRows:
    text = rec.store.get(rec.key)
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ResultsError(f"record {rec.source} is not valid JSON ({e.__class__.__name__} at "
                           f"line {getattr(e, 'lineno', '?')}); fix or delete it") from None
    lines = None
    if rec.key.rsplit("/", 1)[-1] == "record.json" and isinstance(record, dict) and record.get("epochs") is None:
        lines = _epoch_lines(rec)
    return record_to_rows(record, rec.source, rec.sweep_hint or sweep_default, lines)


def _epoch_lines(rec: FoundRecord) -> list[dict]:
    key = rec.key.rsplit("/", 1)[0] + "/epochs.jsonl" if "/" in rec.key else "epochs.jsonl"
    if not rec.store.exists(key):
        return []
    lines = []
    for n, line in enumerate(rec.store.get(key).decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            raise ResultsError(f"{rec.store.describe(key)} line {n} is not valid JSON; fix or delete it") from None
    return lines


def _map(fn: Callable, items: list, parallel: bool) -> list:
    if not parallel or len(items) < 8:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=8) as pool:  # S3 reads are latency-bound
        return list(pool.map(fn, items))


def collect(sources: list[str], store_uri: str, options: S3Options | None = None, sweep: str | None = None,
            skip_invalid: bool = False) -> dict:
    """Collect the records of `sources` into the tables at `store_uri`; return counts.

    `sweep` names the sweep partition of records that carry none (plain `fair adapt` runs; default "runs").
    With `skip_invalid`, a record with a bad field is skipped with a warning instead of stopping the run.
    """
    store = open_store(store_uri, options)
    if isinstance(store, S3Store):
        store.check()  # a missing bucket or bad credentials fail before any work (some servers auto-create)
    found = find_records(sources, options)

    def load(rec: FoundRecord) -> RecordRows | None:
        try:
            return _load(rec, sweep)
        except ResultsError as e:
            if not skip_invalid:
                raise
            log.warning("skipping: %s", e)
            return None

    loaded = [r for r in _map(load, found, any(r.source.startswith("s3://") for r in found)) if r is not None]
    trials: dict[tuple[str, str], list[dict]] = defaultdict(list)
    epochs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for rows in loaded:
        trials[(rows.sweep, rows.dataset)].append(rows.trial)
        epochs[(rows.sweep, rows.dataset)].extend(rows.epochs)
    # One schema for every trials part: the store's hyperparameter columns and the new records' (declared)
    # types, so pandas / pyarrow.dataset / DuckDB read all partitions. Epochs have fixed columns.
    cache: dict = {}
    hp_types = merge_hp_types(table_hp_types(store, "trials", cache), *(r.hp_types for r in loaded))
    for (sw, ds) in sorted(trials):
        write_rows(store, "trials", sw, ds, trials[(sw, ds)], hp_types)
        compact(store, "trials", sw, ds, hp_types)
        if epochs[(sw, ds)]:
            write_rows(store, "epochs", sw, ds, epochs[(sw, ds)])
            compact(store, "epochs", sw, ds)
    unify_parts(store, "trials", hp_types, cache)
    summary = {"records": len(loaded), "skipped": len(found) - len(loaded), "partitions": len(trials),
               "epochs": sum(len(v) for v in epochs.values()), "store": store.uri}
    log.info("collected %(records)d records (%(skipped)d skipped) into %(partitions)d partitions of %(store)s",
             summary)
    return summary
