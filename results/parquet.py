"""The hive-partitioned parquet tables in a store: `<table>/sweep=<s>/dataset=<d>/part-<hash>.parquet`.

Each part file is named by the SHA-256 of its bytes, so

- writing the same rows twice writes the same object once (idempotent) and re-running `collect` gives
  byte-identical files;
- concurrent writers never overwrite each other: each writes its own content-addressed part, and a
  compaction merges the parts of a partition into one (a row is identified by its trial id, plus the epoch
  in `epochs`) and only then deletes the parts it merged, so no row is ever lost;
- a part whose bytes do not parse is skipped with a warning naming it, and the rest of the table loads;
- every part of a table has the same columns with the same types (`unify_parts`): a hyperparameter one
  sweep lacks is a column of typed nulls there.

The layout is plain hive partitioning: pandas, pyarrow.dataset and DuckDB read it with no project code, and
since the parts share one schema none of them drops a column or fails on a type.
"""
from __future__ import annotations

import hashlib
import io
import logging
import re
import warnings
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq

from results.errors import ResultsError
from results.schema import (TABLES, check_table, dedupe_rows, has_columns, hp_types_of, merge_hp_types,
                            rows_to_table, unify)
from results.store import MissingKey, Store

log = logging.getLogger(__name__)
_PART = re.compile(r"^(?P<table>[a-z]+)/sweep=(?P<sweep>[^/]+)/dataset=(?P<dataset>[^/]+)/"
                   r"part-(?P<hash>[0-9a-f]{16})\.parquet$")


class CorruptPartWarning(UserWarning):
    """A parquet part could not be read; it was skipped."""


def encode(table: pa.Table) -> bytes:
    """The parquet bytes of `table`; the same table always gives the same bytes."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd", write_statistics=True)
    return buf.getvalue()


def partition_prefix(table: str, sweep: str, dataset: str) -> str:
    """The key prefix of one partition."""
    return f"{table}/sweep={sweep}/dataset={dataset}/"


def part_key(table: str, sweep: str, dataset: str, data: bytes) -> str:
    """The content-addressed key of a part file."""
    return f"{partition_prefix(table, sweep, dataset)}part-{hashlib.sha256(data).hexdigest()[:16]}.parquet"


HpTypes = dict[str, pa.DataType]


def write_rows(store: Store, table: str, sweep: str, dataset: str, rows: list[dict],
               hp_types: HpTypes | None = None) -> str:
    """Write `rows` of one partition as one part file (atomic, idempotent) and return its key.

    `hp_types`: the hyperparameter columns and types of the whole table (`rows_to_table`)."""
    data = encode(rows_to_table(table, dedupe_rows(table, rows), hp_types))
    key = part_key(table, sweep, dataset, data)
    if not store.exists(key):
        store.put(key, data)
        log.debug("wrote %s (%d rows)", store.describe(key), len(rows))
    return key


def list_parts(store: Store, table: str, sweeps: list[str] | None = None) -> dict[tuple[str, str], list[str]]:
    """The part keys of `table`, by (sweep, dataset), optionally only those of `sweeps`."""
    if table not in TABLES:
        raise ResultsError(f"unknown table {table!r}; the tables are {', '.join(TABLES)}")
    prefixes = [f"{table}/sweep={s}/" for s in sweeps] if sweeps else [f"{table}/"]
    parts: dict[tuple[str, str], list[str]] = defaultdict(list)
    for prefix in prefixes:
        for key in store.list(prefix):
            m = _PART.match(key)
            if m:
                parts[(m["sweep"], m["dataset"])].append(key)
    return {k: sorted(v) for k, v in sorted(parts.items())}


_VANISHED = object()  # a part listed a moment ago that a concurrent compaction has since merged and removed


def _read_part(store: Store, table: str, key: str):
    """The part as a table; None when corrupt (warned); `_VANISHED` when it no longer exists."""
    try:
        data = store.get(key)
    except MissingKey:
        return _VANISHED
    try:
        # On this thread only: pq.read_table pre-buffers on arrow's I/O thread, which can then hold the last
        # reference to the reader; dropping it there needs the GIL, and if the interpreter is exiting by then,
        # the process aborts ("terminate called without an active exception", ~1 in 100 `collect` processes).
        with pq.ParquetFile(pa.BufferReader(data), pre_buffer=False) as f:
            t = f.read(use_threads=False)
    except (pa.ArrowException, OSError, ValueError) as e:
        msg = f"skipping corrupt parquet file {store.describe(key)} ({type(e).__name__}); re-run collect"
        log.warning(msg)
        warnings.warn(msg, CorruptPartWarning, stacklevel=3)
        return None
    check_table(t, table, store.describe(key))
    return t


def _merged_rows(tables: list[pa.Table], table: str) -> list[dict]:
    return dedupe_rows(table, [r for t in tables for r in t.to_pylist()])


def _types(tables: list[pa.Table], hp_types: HpTypes | None = None) -> HpTypes:
    return merge_hp_types(hp_types or {}, *(hp_types_of(t.schema) for t in tables))


def compact(store: Store, table: str, sweep: str, dataset: str, hp_types: HpTypes | None = None) -> str | None:
    """Merge the parts of one partition into one part; delete the merged parts only after it is written.

    The merged part keeps its parts' column types (merged with `hp_types`), declared ones included."""
    keys = list_parts(store, table, [sweep]).get((sweep, dataset), [])
    if len(keys) <= 1:
        return keys[0] if keys else None
    read = {k: _read_part(store, table, k) for k in keys}
    good = [k for k, t in read.items() if isinstance(t, pa.Table)]  # vanished parts: merged by another writer
    tables = [read[k] for k in good]
    merged = write_rows(store, table, sweep, dataset, _merged_rows(tables, table), _types(tables, hp_types))
    for k in good:
        if k != merged:
            store.delete(k)
    return merged


def _read_partition(store: Store, table: str, sweep: str, dataset: str, keys: list[str]) -> list[pa.Table]:
    """The readable parts of one partition; if a part vanished under a concurrent compaction, list again
    (its rows are in the part that replaced it)."""
    for _ in range(10):
        read = [_read_part(store, table, k) for k in keys]
        if not any(t is _VANISHED for t in read):
            return [t for t in read if t is not None]
        keys = list_parts(store, table, [sweep]).get((sweep, dataset), [])
    raise ResultsError(f"{store.describe(partition_prefix(table, sweep, dataset))} keeps changing while being "
                       "read (another collect running?); try again")


def read_table(store: Store, table: str, sweeps: list[str] | None = None) -> pa.Table:
    """All rows of `table` (one per key and partition), with `sweep` and `dataset` columns, sorted."""
    pieces = []
    for (sweep, dataset), keys in list_parts(store, table, sweeps).items():
        tables = _read_partition(store, table, sweep, dataset, keys)
        if not tables:
            continue
        t = tables[0] if len(tables) == 1 else rows_to_table(table, _merged_rows(tables, table), _types(tables))
        n = len(t)
        t = t.append_column("sweep", pa.array([sweep] * n, pa.string()))
        t = t.append_column("dataset", pa.array([dataset] * n, pa.string()))
        pieces.append(t)
    return unify(pieces)


def read_parts(store: Store, table: str, cache: dict[str, pa.Table]) -> dict[tuple[str, str], dict[str, pa.Table]]:
    """Every readable part of `table`, by partition and key. `cache` holds parts read before: a part's key is
    the hash of its bytes, so a cached part is still what the key names."""
    out: dict[tuple[str, str], dict[str, pa.Table]] = {}
    for partition, keys in list_parts(store, table).items():
        for key in keys:
            if key not in cache:
                cache[key] = _read_part(store, table, key)
            if isinstance(cache[key], pa.Table):
                out.setdefault(partition, {})[key] = cache[key]
    return out


def table_hp_types(store: Store, table: str, cache: dict[str, pa.Table]) -> HpTypes:
    """The hyperparameter columns of every part of `table`, with their merged types."""
    return _types([t for parts in read_parts(store, table, cache).values() for t in parts.values()])


def unify_parts(store: Store, table: str, hp_types: HpTypes | None = None,
                cache: dict[str, pa.Table] | None = None) -> int:
    """Give every part of `table` one schema: the hyperparameter columns of all parts (and `hp_types`) with
    their merged types. A part that differs is rewritten (missing columns as typed nulls) and then deleted.
    Returns how many parts were rewritten.

    Two collects adding different columns at the same moment can each miss the other's: the next collect
    unifies them (the project's own readers unify on read regardless)."""
    cache = {} if cache is None else cache
    parts = read_parts(store, table, cache)
    target = _types([t for p in parts.values() for t in p.values()], hp_types)
    rewritten = 0
    for (sweep, dataset), tables in parts.items():
        for key, t in tables.items():
            if has_columns(t.schema, table, target):
                continue
            new = write_rows(store, table, sweep, dataset, t.to_pylist(), target)
            if new != key:
                store.delete(key)
            rewritten += 1
    if rewritten:
        log.info("unified the columns of %d part(s) of %s", rewritten, store.describe(table))
    return rewritten
