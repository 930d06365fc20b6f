"""The versioned schema of the two parquet tables, `trials` and `epochs`, and how a record becomes rows.

A record (docs/record.md) is checked field by field; a missing or mistyped field is a `ResultsError` that
names it. The tables never hold credentials: only what the record itself carries.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa

from results.errors import ResultsError

SCHEMA_VERSION = 1            # version of the parquet tables written here
RECORD_VERSIONS = (1,)        # record.json versions this reader understands
DEFAULT_SWEEP = "runs"        # sweep partition of plain `fair adapt` runs
HP_PREFIX = "hp."             # flattened hyperparameters become columns `hp.<dotted key>`
PARTITION_COLUMNS = ("sweep", "dataset")
TABLES = ("trials", "epochs")
STATUSES = ("completed", "failed", "stopped_early")   # stopped_early: a scheduler (ASHA) cut the trial short
STAGES = ("search", "final")   # search trials (absent: search / a single run) and final-seed re-runs
KEYS = {"trials": ("trial_id",), "epochs": ("trial_id", "epoch")}
VERSION_COLUMN = {"trials": "created_at", "epochs": "record_created_at"}  # the latest version of a row wins

# Hyperparameters that do not define a configuration: seeds (averaged over) and where a run wrote its files.
_NOT_CONFIG_LEAVES = {"seed", "root", "dir", "run_dir", "output_dir", "out_dir"}
_NOT_CONFIG_PREFIXES = ("output.",)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")

_ARROW = {"str": pa.string(), "int": pa.int64(), "float": pa.float64(), "int32": pa.int32(),
          "strlist": pa.list_(pa.string())}
HP_KINDS = {"float": pa.float64(), "int": pa.int64(), "str": pa.string(), "bool": pa.bool_()}  # hparam_types


@dataclass(frozen=True)
class Field:
    """One fixed column: its name, kind (str|int|float|strlist) and path in the record (None: derived)."""

    name: str
    kind: str
    path: tuple[str, ...] | None = None
    required: bool = False


def _metric(name: str, kind: str = "float", required: bool = False) -> Field:
    return Field(name, kind, ("metrics", name), required)


def _timing(name: str, column: str | None = None, kind: str = "float") -> Field:
    return Field(column or name, kind, ("timings", name))


def _prov(name: str, kind: str = "str") -> Field:
    return Field(name, kind, ("provenance", name))


TRIAL_FIELDS: tuple[Field, ...] = (
    # identity
    Field("schema_version", "int32"),
    Field("trial_id", "str"),
    Field("run_id", "str", ("run_id",), True),
    Field("study", "str"),
    Field("method", "str", ("method",), True),
    Field("backbone", "str", ("backbone",), True),
    Field("pretrained", "str", ("pretrained",), True),
    Field("seed", "int", ("seed",), True),
    Field("stage", "str", ("stage",)),                  # "search" (also when absent) or "final" (a re-run seed)
    Field("picked_from", "str", ("picked_from",)),      # a final re-run: the search trial it re-runs
    Field("status", "str", ("status",), True),
    Field("error", "str", ("error",)),
    Field("config_key", "str"),
    Field("hparams_json", "str"),
    # metrics (percent, except head_agreement 0-1)
    _metric("val_top1", required=True), _metric("val_top1_global"), _metric("val_top1_las"),
    _metric("val_size", "int"), _metric("val_stderr"),
    _metric("test_top1", required=True), _metric("test_mean_per_class"), _metric("predictor", "str"),
    _metric("test_top1_global"), _metric("test_mean_per_class_global"),
    _metric("test_top1_las"), _metric("test_mean_per_class_las"),
    _metric("zeroshot_top1"), _metric("zeroshot_mean_per_class"),
    _metric("wca_top1"), _metric("wca_mean_per_class"),
    _metric("gain_over_zeroshot"), _metric("pseudo_label_acc"), _metric("head_agreement"),
    _metric("final_loss"),
    # per-test-image outcomes of the reported predictor, for paired comparisons (results/intervals.py)
    Field("test_ids_sha", "str", ("test_outcomes", "ids_sha")), Field("test_n", "int", ("test_outcomes", "n")),
    Field("test_correct", "str", ("test_outcomes", "correct")),
    # cost
    _timing("wall_s"), _timing("setup_s"), _timing("train_s"), _timing("eval_s"), _timing("gpu_s"),
    _timing("images_per_s"), _timing("peak_mem_mb"), _timing("epochs", "n_epochs", "int"),
    # provenance
    Field("packages_json", "str"),
    _prov("git_commit"), _prov("descriptions_sha256"), _prov("split_sha256"), _prov("host"),
    _prov("python"), _prov("device"), _prov("num_processes", "int"), _prov("created_at"),
    Field("fallback_classes", "strlist", ("fallback_classes",)),
    Field("source", "str"),
)

_EPOCH_FLOATS = ("loss", "loss_ce", "loss_fair", "lr", "gamma", "mean_weight", "frac_kept", "pseudo_label_acc",
                 "head_agreement", "val_top1", "images_per_s", "epoch_s")
EPOCH_FIELDS: tuple[Field, ...] = (
    Field("schema_version", "int32"),
    Field("trial_id", "str"),
    Field("run_id", "str"),
    Field("record_created_at", "str"),
    Field("epoch", "int", ("epoch",), True),
    *(Field(name, "float", (name,)) for name in _EPOCH_FLOATS),
    Field("bad_images", "int", ("bad_images",)),
    Field("extra_json", "str"),
)
FIELDS = {"trials": TRIAL_FIELDS, "epochs": EPOCH_FIELDS}


# ----------------------------------------------------------------------------------------------- checking

def _type_ok(value: Any, kind: str) -> bool:
    if kind == "str":
        return isinstance(value, str)
    if kind in ("int", "int32"):
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "strlist":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    raise AssertionError(kind)


_KIND_WORDS = {"str": "a string", "int": "an integer", "int32": "an integer", "float": "a number",
               "strlist": "a list of strings", "dict": "an object"}


def _get(obj: dict, path: tuple[str, ...], where: str, required: bool) -> Any:
    """Value at `path` in `obj`; a missing required value raises, a missing optional one is None."""
    cur: Any = obj
    for i, key in enumerate(path):
        if cur is None and not required:
            return None
        if not isinstance(cur, dict):
            dotted = ".".join(path[:i])
            raise ResultsError(f"{where}: field '{dotted}' should be an object, got {type(cur).__name__}")
        if key not in cur or (cur[key] is None and required):
            if required:
                raise ResultsError(f"{where}: field '{'.'.join(path)}' is missing; fix the record or rerun "
                                   "the trial (`--skip-invalid` skips such records)")
            return None
        cur = cur[key]
    return cur


def _typed(value: Any, kind: str, field: str, where: str) -> Any:
    if value is None:
        return None
    if not _type_ok(value, kind):
        shown = json.dumps(value)[:40] if _jsonable(value) else type(value).__name__
        raise ResultsError(f"{where}: field '{field}' should be {_KIND_WORDS[kind]}, got "
                           f"{type(value).__name__} {shown}; fix the record or rerun the trial")
    if kind == "float":
        return float(value)
    return value


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def canonical_json(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) used for hashes and JSON columns."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)


def check_partition_value(value: str, what: str, where: str) -> str:
    """A sweep or dataset name must be a plain path segment (it becomes `sweep=<name>/`)."""
    if not isinstance(value, str) or not _SAFE_NAME.match(value):
        raise ResultsError(f"{where}: {what} name {value!r} is not a plain name (letters, digits, '._+-'); "
                           "rename it")
    return value


def config_key(hparams: dict) -> str:
    """Identity of a configuration: a hash of the hyperparameters without the seed and output paths."""
    kept = {k: v for k, v in hparams.items()
            if k.rsplit(".", 1)[-1] not in _NOT_CONFIG_LEAVES and not k.startswith(_NOT_CONFIG_PREFIXES)}
    return hashlib.sha256(canonical_json(kept).encode()).hexdigest()[:16]


def config_hparams(hparams: dict) -> dict:
    """The hyperparameters that define a configuration (what `config_key` hashes)."""
    return {k: v for k, v in hparams.items()
            if k.rsplit(".", 1)[-1] not in _NOT_CONFIG_LEAVES and not k.startswith(_NOT_CONFIG_PREFIXES)}


# ------------------------------------------------------------------------------------------ record -> rows

@dataclass
class RecordRows:
    """What one record contributes: its partition, one trial row and its epoch rows."""

    sweep: str
    dataset: str
    trial: dict
    epochs: list[dict]
    hp_types: dict[str, pa.DataType]    # arrow type of each `hp.` column of `trial` (see `_record_hp_type`)


def record_to_rows(record: Any, source: str, sweep_hint: str | None = None,
                   epoch_lines: Iterable[dict] | None = None) -> RecordRows:
    """Check one record (docs/record.md) and turn it into table rows.

    `sweep_hint` names the sweep when the record has none (from its path, else `DEFAULT_SWEEP`);
    `epoch_lines` are the rows of an `epochs.jsonl` next to the record, used when it embeds no `epochs`.
    """
    where = f"record {source}"
    if not isinstance(record, dict):
        raise ResultsError(f"{where}: is not a JSON object; is this a record.json?")
    version = _get(record, ("schema_version",), where, True)
    if version not in RECORD_VERSIONS:
        raise ResultsError(f"{where}: schema_version {version!r} is unknown to this reader (knows "
                           f"{', '.join(map(str, RECORD_VERSIONS))}); upgrade fair-sweeps")
    status = _typed(_get(record, ("status",), where, True), "str", "status", where)
    if status not in STATUSES:
        raise ResultsError(f"{where}: field 'status' should be one of {', '.join(STATUSES)}, got {status!r}")
    stage = _typed(record.get("stage"), "str", "stage", where)
    if stage is not None and stage not in STAGES:
        raise ResultsError(f"{where}: field 'stage' should be one of {', '.join(STAGES)} or absent, got {stage!r}")
    sweep = _get(record, ("sweep",), where, False)
    if sweep is not None and not isinstance(sweep, dict):
        raise ResultsError(f"{where}: field 'sweep' should be an object or null, got {type(sweep).__name__}")
    hparams = _get(record, ("hparams",), where, True)
    if not isinstance(hparams, dict):
        raise ResultsError(f"{where}: field 'hparams' should be an object, got {type(hparams).__name__}")
    for k, v in hparams.items():
        if v is not None and not isinstance(v, (str, int, float, bool)):
            raise ResultsError(f"{where}: field 'hparams.{k}' should be a scalar, got {type(v).__name__}")
    declared = _declared_types(record, where)
    completed = status == "completed"
    if completed or "metrics" in record:
        metrics = _get(record, ("metrics",), where, completed)
        if metrics is not None and not isinstance(metrics, dict):
            raise ResultsError(f"{where}: field 'metrics' should be an object, got {type(metrics).__name__}")

    row: dict[str, Any] = {}
    for f in TRIAL_FIELDS:
        if f.path is None:
            continue
        row[f.name] = _typed(_get(record, f.path, where, f.required and (completed or f.path[0] != "metrics")),
                             f.kind, ".".join(f.path), where)
    sweep_name = sweep.get("name") if sweep else None
    trial_id = sweep.get("trial_id") if sweep else None
    _typed(sweep_name, "str", "sweep.name", where)
    _typed(trial_id, "str", "sweep.trial_id", where)
    row["study"] = _typed(sweep.get("study") if sweep else None, "str", "sweep.study", where)
    row["trial_id"] = trial_id or row["run_id"]
    row["schema_version"] = SCHEMA_VERSION
    row["config_key"] = config_key(hparams)
    row["hparams_json"] = canonical_json(hparams)
    packages = _get(record, ("provenance", "packages"), where, False)
    if packages is not None and not isinstance(packages, dict):
        raise ResultsError(f"{where}: field 'provenance.packages' should be an object")
    row["packages_json"] = canonical_json(packages) if packages is not None else None
    row["source"] = source
    for k, v in hparams.items():
        row[HP_PREFIX + k] = v

    dataset = check_partition_value(_typed(_get(record, ("dataset",), where, True), "str", "dataset", where),
                                    "dataset", where)
    sweep_value = check_partition_value(sweep_name or sweep_hint or DEFAULT_SWEEP, "sweep", where)

    hp_types = {HP_PREFIX + k: _record_hp_type(v, declared.get(k)) for k, v in hparams.items()}
    embedded = record.get("epochs")
    if embedded is not None and not isinstance(embedded, list):
        raise ResultsError(f"{where}: field 'epochs' should be a list of objects")
    lines = embedded if embedded is not None else list(epoch_lines or [])
    epochs = [_epoch_row(line, i, row, where) for i, line in enumerate(lines)]
    return RecordRows(sweep_value, dataset, row, epochs, hp_types)


def _declared_types(record: dict, where: str) -> dict[str, str]:
    """The record's optional `hparam_types` ({"train.lr": "float", ...}; older records have none)."""
    declared = record.get("hparam_types")
    if declared is None:
        return {}
    if not isinstance(declared, dict):
        raise ResultsError(f"{where}: field 'hparam_types' should be an object, got {type(declared).__name__}")
    for k, kind in declared.items():
        if kind not in HP_KINDS:
            raise ResultsError(f"{where}: field 'hparam_types.{k}' should be one of {', '.join(HP_KINDS)}, "
                               f"got {json.dumps(kind)[:40]}; fix the record or rerun the trial")
    return declared


def _record_hp_type(value: Any, declared: str | None) -> pa.DataType:
    """The declared type of a hyperparameter when its value fits it (null always does); else the value's own
    type (pa.null() for a null: no type known). A failed trial's refused config may hold a misfit value."""
    if declared is None:
        return _value_type(value)
    fits = value is None or (isinstance(value, bool) if declared == "bool" else _type_ok(value, declared))
    return HP_KINDS[declared] if fits else _value_type(value)


def _epoch_row(line: Any, i: int, trial: dict, where: str) -> dict:
    if not isinstance(line, dict):
        raise ResultsError(f"{where}: epochs[{i}] should be an object, got {type(line).__name__}")
    row = {"schema_version": SCHEMA_VERSION, "trial_id": trial["trial_id"], "run_id": trial["run_id"],
           "record_created_at": trial["created_at"]}
    known = set()
    for f in EPOCH_FIELDS:
        if f.path is None:
            continue
        known.add(f.path[0])
        value = line.get(f.path[0])
        if f.required and value is None:
            raise ResultsError(f"{where}: field 'epochs[{i}].{f.path[0]}' is missing")
        if f.kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        row[f.name] = _typed(value, f.kind, f"epochs[{i}].{f.path[0]}", where)
    extra = {k: v for k, v in line.items() if k not in known}
    row["extra_json"] = canonical_json(extra) if extra else None
    return row


# ------------------------------------------------------------------------------------------ rows -> arrow

def _value_type(v: Any) -> pa.DataType:
    if v is None:
        return pa.null()
    if isinstance(v, bool):
        return pa.bool_()
    return pa.int64() if isinstance(v, int) else pa.float64() if isinstance(v, float) else pa.string()


def _hp_type(values: list[Any]) -> pa.DataType:
    """The type of a hyperparameter column inferred from its values (null when all are null)."""
    return functools.reduce(_merge_type, map(_value_type, values), pa.null())


def _merge_type(a: pa.DataType, b: pa.DataType) -> pa.DataType:
    """One type for a column that is `a` in some rows or files and `b` in others."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):       # no value and no declaration yet: the other side decides
        return b
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in (a, b)):
        return pa.float64()
    return pa.string()


def merge_hp_types(*types: dict[str, pa.DataType]) -> dict[str, pa.DataType]:
    """Merge column -> type maps: null gives way to any type, int and float give float64, other clashes
    give string (the values written as canonical JSON)."""
    out: dict[str, pa.DataType] = {}
    for t in types:
        for name, typ in t.items():
            out[name] = _merge_type(out[name], typ) if name in out else typ
    return out


def hp_types_of(schema: pa.Schema) -> dict[str, pa.DataType]:
    """The hyperparameter columns of a table schema and their types."""
    return {f.name: f.type for f in schema if f.name.startswith(HP_PREFIX)}


def has_columns(schema: pa.Schema, table: str, hp_types: dict[str, pa.DataType]) -> bool:
    """Whether a part's schema is exactly the one `rows_to_table(table, ..., hp_types)` writes."""
    names = [f.name for f in FIELDS[table]] + sorted(hp_types)
    return schema.names == names and hp_types_of(schema) == hp_types


def _hp_value(v: Any, typ: pa.DataType) -> Any:
    if v is None:
        return None
    if pa.types.is_string(typ):
        return v if isinstance(v, str) else canonical_json(v)
    if pa.types.is_floating(typ):
        return float(v)
    return v


def rows_to_table(table: str, rows: list[dict], hp_types: dict[str, pa.DataType] | None = None) -> pa.Table:
    """An arrow table of `rows` (without the partition columns), in the fixed column order, sorted by key.

    Hyperparameter columns take the types in `hp_types` (merged with what the values need); a column of
    `hp_types` that no row has is a column of typed nulls, so every part of a store can share one schema.
    """
    fields = FIELDS[table]
    rows = sorted(rows, key=lambda r: tuple(r[k] for k in KEYS[table]))
    arrays, names = [], []
    for f in fields:
        arrays.append(pa.array([r.get(f.name) for r in rows], type=_ARROW[f.kind]))
        names.append(f.name)
    in_rows = {k for r in rows for k in r if k.startswith(HP_PREFIX)}
    inferred = {name: _hp_type([r.get(name) for r in rows]) for name in in_rows}
    types = merge_hp_types(hp_types or {}, inferred)
    for name in sorted(types):
        arrays.append(pa.array([_hp_value(r.get(name), types[name]) for r in rows], type=types[name]))
        names.append(name)
    return pa.Table.from_arrays(arrays, names=names)


def check_table(table: pa.Table, name: str, where: str) -> None:
    """Refuse a parquet file whose schema_version is missing or unknown to this reader."""
    if "schema_version" not in table.column_names:
        raise ResultsError(f"{where}: has no schema_version column; is it a {name} table of fair-sweeps?")
    versions = set(table.column("schema_version").to_pylist())
    unknown = sorted(v for v in versions if v != SCHEMA_VERSION)
    if unknown:
        raise ResultsError(f"{where}: schema_version {unknown[0]} is unknown to this reader (knows "
                           f"{SCHEMA_VERSION}); upgrade fair-sweeps or re-collect the records")
    missing = [k for k in KEYS[name] if k not in table.column_names]
    if missing:
        raise ResultsError(f"{where}: column '{missing[0]}' is missing; re-collect the records")


def unify(tables: list[pa.Table]) -> pa.Table:
    """Concatenate tables whose columns differ: a missing column becomes nulls, clashing types merge as in
    `merge_hp_types`."""
    if not tables:
        return pa.table({})
    target = merge_hp_types(*({f.name: f.type for f in t.schema} for t in tables))
    out = []
    for t in tables:
        cols = []
        for name, typ in target.items():
            if name not in t.column_names:
                cols.append(pa.nulls(len(t), type=typ))
            elif t.column(name).type != typ:
                cols.append(pa.array([_hp_value(v, typ) for v in t.column(name).to_pylist()], type=typ))
            else:
                cols.append(t.column(name))
        out.append(pa.Table.from_arrays(cols, names=list(target)))
    return pa.concat_tables(out)


def dedupe_rows(table: str, rows: list[dict]) -> list[dict]:
    """One row per key: the one from the latest record (then the larger canonical JSON), sorted by key.

    The choice depends only on the rows, never on the order in which files were read.
    """
    best: dict[tuple, tuple] = {}
    version = VERSION_COLUMN[table]
    for r in rows:
        key = tuple(r.get(k) for k in KEYS[table])
        rank = (r.get(version) or "", canonical_json({k: _json_safe(v) for k, v in r.items()}))
        if key not in best or rank > best[key][0]:
            best[key] = (rank, r)
    return [best[k][1] for k in sorted(best, key=lambda k: tuple("" if v is None else v for v in k))]


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and math.isnan(v):
        return "NaN"
    return v
